//! Device nodes: `/dev/ublkcN` and `/dev/ublkbN`, made from sysfs when
//! neither devtmpfs nor udev does (an initramfs may have neither).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::UblkError;

/// Open /dev/ublkcN, giving devtmpfs (or udev) a moment to create it and
/// making the node from sysfs if nobody does.
pub(super) fn open_char_dev(dev_id: u32) -> Result<File, UblkError> {
    let path = format!("/dev/ublkc{dev_id}");
    let sys = format!("/sys/class/ublk-char/ublkc{dev_id}/dev");
    let start = Instant::now();
    let mut made = false;
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                if !made && start.elapsed() > Duration::from_millis(500) {
                    made = true;
                    make_node(&path, &sys, nix::sys::stat::SFlag::S_IFCHR);
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(UblkError::os(format!("open {path}"), &e)),
        }
    }
}

/// The block device's name under /sys/block and /dev: "ublkbN".
pub(super) fn disk_name(dev_id: u32) -> String {
    format!("ublkb{dev_id}")
}

/// Make sure /dev/ublkbN exists once the disk is added (an initramfs
/// without devtmpfs or udev would not have it).
pub(super) fn ensure_block_node(dev_id: u32) {
    let path = format!("/dev/ublkb{dev_id}");
    let start = Instant::now();
    while !Path::new(&path).exists() {
        if start.elapsed() > Duration::from_millis(500) {
            let sys = format!("/sys/class/block/ublkb{dev_id}/dev");
            make_node(&path, &sys, nix::sys::stat::SFlag::S_IFBLK);
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// mknod `path` from the "major:minor" in `sys`.
fn make_node(path: &str, sys: &str, kind: nix::sys::stat::SFlag) {
    use nix::sys::stat::{Mode, makedev, mknod};
    let Ok(s) = fs::read_to_string(sys) else {
        log::warn!("{path} does not appear and {sys} cannot be read");
        return;
    };
    let Some((maj, min)) = s.trim().split_once(':') else {
        return;
    };
    let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
        return;
    };
    match mknod(
        path,
        kind,
        Mode::from_bits_truncate(0o600),
        makedev(maj, min),
    ) {
        Ok(()) => log::info!("created {path} ({maj}:{min}): neither devtmpfs nor udev did"),
        Err(e) => log::warn!("cannot create {path}: {e}"),
    }
}
