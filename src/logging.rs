//! Where log lines go.
//!
//! At a shell: stderr through env_logger (`-v` raises the level, RUST_LOG
//! overrides). Inside an initramfs (/etc/initrd-release exists) or with
//! `SANROOT_LOG=kmsg`: /dev/kmsg, with the kernel's priority prefix, so
//! the lines land in the journal next to the kernel's own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Kmsg {
    file: Mutex<File>,
    level: LevelFilter,
}

impl Log for Kmsg {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // syslog priorities: err 3, warning 4, info 6, debug 7.
        let prio = match r.level() {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        let line = format!("<{prio}>sanroot[{}]: {}\n", std::process::id(), r.args());
        if let Ok(mut f) = self.file.lock() {
            // One write per line: /dev/kmsg takes each write as one record.
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Set up logging once, at start. `verbosity` counts `-v` flags.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let want_kmsg = std::env::var("SANROOT_LOG")
        .map(|v| v == "kmsg")
        .unwrap_or(false)
        || Path::new("/etc/initrd-release").exists();
    if want_kmsg && let Ok(file) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let logger = Kmsg {
            file: Mutex::new(file),
            level: level.max(LevelFilter::Info),
        };
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(level.max(LevelFilter::Info));
            return;
        }
    }
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_timestamp(None)
        .try_init();
}
