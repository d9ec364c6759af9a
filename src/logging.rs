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
    file: Mutex<KmsgFile>,
    level: LevelFilter,
}

/// The kernel lets each open /dev/kmsg write 10 lines per 5 s unless
/// printk.devkmsg=on, and drops the rest silently. Info lines past that
/// are left to the kernel's limit (it says how many it suppressed); a
/// warning or error — a lost path, "root disk … is ready" — is worth a
/// fresh descriptor so it is never the one dropped.
struct KmsgFile {
    file: File,
    window: std::time::Instant,
    lines: u32,
}

const KMSG_BURST: u32 = 10;
const KMSG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

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
        if let Ok(mut k) = self.file.lock() {
            if k.window.elapsed() >= KMSG_INTERVAL {
                k.window = std::time::Instant::now();
                k.lines = 0;
            }
            k.lines += 1;
            if k.lines > KMSG_BURST
                && r.level() <= Level::Warn
                && let Ok(f) = OpenOptions::new().write(true).open("/dev/kmsg")
            {
                k.file = f;
                k.window = std::time::Instant::now();
                k.lines = 1;
            }
            // One write per line: /dev/kmsg takes each write as one record.
            let _ = k.file.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Whether log lines go to /dev/kmsg already.
static TO_KMSG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line for the kernel log whatever the logger (a path lost or back,
/// I/O moved to other paths: what an admin reads in `dmesg`), and for the
/// logger too when that is not the kernel log.
pub fn kernel(level: Level, line: &str) {
    log::log!(level, "{line}");
    if TO_KMSG.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let prio = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    if let Ok(mut f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ =
            f.write_all(format!("<{prio}>sanroot[{}]: {line}\n", std::process::id()).as_bytes());
    }
}

/// Set up logging once, at start. `verbosity` counts `-v` flags.
pub fn init(verbosity: u8) {
    init_with(verbosity, false)
}

/// Logging to /dev/kmsg whatever the environment: sanroot as /init or as
/// the shutdown program, where the console is the kernel's.
pub fn init_kmsg(verbosity: u8) {
    init_with(verbosity, true)
}

fn init_with(verbosity: u8, force_kmsg: bool) {
    let level = match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let want_kmsg = force_kmsg
        || std::env::var("SANROOT_LOG")
            .map(|v| v == "kmsg")
            .unwrap_or(false)
        || Path::new("/etc/initrd-release").exists();
    if want_kmsg && let Ok(file) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let logger = Kmsg {
            file: Mutex::new(KmsgFile {
                file,
                window: std::time::Instant::now(),
                lines: 0,
            }),
            level: level.max(LevelFilter::Info),
        };
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            TO_KMSG.store(true, std::sync::atomic::Ordering::Relaxed);
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
