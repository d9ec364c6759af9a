//! Records of what this host has attached, under /run/sanroot/devices
//! (`$SANROOT_RUN_DIR` overrides): one JSON file per device, written by the
//! daemon that serves it, read by `sanroot status` and `sanroot detach`.
//! World-readable, and never holding a secret.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// "/dev/nbd0", "/dev/ublkb0".
    pub device: String,
    /// "nbd" or "ublk".
    pub bridge: String,
    /// NBD index or ublk device id.
    pub index: u32,
    pub target: String,
    /// The portal the session is on now.
    pub portal: String,
    /// Every path to the LU (the one in use among them), so a daemon taking
    /// the device back (`attach --recover`) knows them all. Records written
    /// before this field existed have none: the `portal` alone then.
    #[serde(default)]
    pub portals: Vec<PathRecord>,
    pub lun: u64,
    pub initiator: String,
    /// Hex ISID and the TSIH the target gave the session.
    pub isid: String,
    pub tsih: u16,
    /// The serving daemon.
    pub pid: u32,
    /// Its start time (/proc/PID/stat field 22, clock ticks since boot),
    /// so that a PID the kernel has given to another process since is
    /// never taken for the daemon ([`DeviceRecord::daemon_alive`]). 0 in
    /// records written before this field existed.
    #[serde(default)]
    pub pid_start: u64,
    /// "running", "reconnecting", "failed", ...
    pub state: String,
    /// The LU's identity (VPD 0x83/0x80), to refuse another disk later.
    pub lu_id: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub read_only: bool,
    /// Whether the kernel would let the daemon dump core (its
    /// PR_GET_DUMPABLE, read when it wrote this record): false once it has
    /// hardened itself. Not visible from outside for a root process.
    /// `null` in records written before this field existed.
    #[serde(default)]
    pub dumpable: Option<bool>,
    /// Every path as it is now (`sanroot status --json`'s `paths`): one
    /// entry per portal, with a session on each at once when there are
    /// several. Records written before this field existed have none.
    #[serde(default)]
    pub paths: Vec<PathState>,
}

/// One path of a device as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathState {
    /// "IP:PORT" ("\[v6\]:PORT").
    pub portal: String,
    /// The target portal group tag the login reported; `null` before a
    /// login (or when the target did not say).
    pub tpgt: Option<u16>,
    /// "active/optimized", "active/non-optimized", "standby",
    /// "unavailable", "transitioning" (and SPC's other states); `null`
    /// for a LU without ALUA or a path not logged in.
    pub alua: Option<String>,
    /// "up", "down" or "connecting".
    pub state: String,
    /// I/O goes to it now.
    pub active: bool,
}

/// One path of a device: where and under which name to log in. Never a
/// secret: CHAP settings come from whoever takes the device back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRecord {
    /// "IP:PORT" ("\[v6\]:PORT").
    pub portal: String,
    pub target: String,
    /// Hex ISID of this path's session when every path has one at once
    /// (a daemon taking the device back logs in with it, so the target
    /// replaces the dead daemon's session); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub isid: String,
}

pub fn run_dir() -> PathBuf {
    std::env::var_os("SANROOT_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/sanroot"))
}

fn devices_dir(run: &Path) -> PathBuf {
    run.join("devices")
}

fn file_for(run: &Path, device: &str) -> PathBuf {
    devices_dir(run).join(record_name(device))
}

/// A directory a daemon holds open for its life and writes in through the
/// descriptor (openat, renameat), so its files keep landing there after
/// the mount holding it moved. At switch-root the initramfs' /run (and
/// /proc) move into the real root while the boot daemon stays behind in
/// the old root, where "/run/sanroot" then names nothing: through the
/// descriptor its records still reach the /run that `sanroot status` and
/// boot.json readers see. Without a descriptor (it could not be opened)
/// the path is used.
pub struct PinnedDir {
    path: PathBuf,
    fd: Option<std::os::fd::OwnedFd>,
}

impl PinnedDir {
    /// Pin `path` (made if missing).
    pub fn open(path: &Path) -> PinnedDir {
        use nix::fcntl::{OFlag, open};
        use nix::sys::stat::Mode;
        let _ = fs::create_dir_all(path);
        let fd = open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| log::warn!("cannot hold {} open: {e}", path.display()))
        .ok();
        PinnedDir {
            path: path.to_path_buf(),
            fd,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace `dir/name` with `bytes` (mode 0644) atomically, making
    /// `dir` (one level, under the pinned directory) if needed.
    pub fn write(&self, dir: Option<&str>, name: &str, bytes: &[u8]) -> io::Result<()> {
        use nix::fcntl::{OFlag, openat, renameat};
        use nix::sys::stat::{Mode, mkdirat};
        use std::io::Write;
        let Some(fd) = &self.fd else {
            let d = match dir {
                Some(d) => self.path.join(d),
                None => self.path.clone(),
            };
            fs::create_dir_all(&d)?;
            let tmp = d.join(format!("{name}.tmp"));
            fs::write(&tmp, bytes)?;
            return fs::rename(tmp, d.join(name));
        };
        let rel = |n: &str| match dir {
            Some(d) => format!("{d}/{n}"),
            None => n.to_string(),
        };
        if let Some(d) = dir {
            match mkdirat(fd, d, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let tmp = rel(&format!("{name}.tmp"));
        let f = openat(
            fd,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?;
        fs::File::from(f).write_all(bytes)?;
        renameat(fd, tmp.as_str(), fd, rel(name).as_str())?;
        Ok(())
    }

    /// The content of `dir/name`.
    pub fn read(&self, dir: Option<&str>, name: &str) -> io::Result<Vec<u8>> {
        use nix::fcntl::{OFlag, openat};
        use nix::sys::stat::Mode;
        use std::io::Read;
        let rel = match dir {
            Some(d) => format!("{d}/{name}"),
            None => name.to_string(),
        };
        let Some(fd) = &self.fd else {
            return fs::read(self.path.join(rel));
        };
        let f = openat(
            fd,
            rel.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut v = Vec::new();
        fs::File::from(f).read_to_end(&mut v)?;
        Ok(v)
    }

    /// Remove `dir/name` (nothing if it is not there).
    pub fn remove(&self, dir: Option<&str>, name: &str) {
        use nix::unistd::{UnlinkatFlags, unlinkat};
        let rel = match dir {
            Some(d) => format!("{d}/{name}"),
            None => name.to_string(),
        };
        match &self.fd {
            Some(fd) => {
                let _ = unlinkat(fd, rel.as_str(), UnlinkatFlags::NoRemoveDir);
            }
            None => {
                let _ = fs::remove_file(self.path.join(rel));
            }
        }
    }
}

/// The file name of `device`'s record under `devices/`.
fn record_name(device: &str) -> String {
    format!(
        "{}.json",
        device.trim_start_matches("/dev/").replace('/', "_")
    )
}

/// Write (or replace) a record atomically, in a pinned run directory.
pub fn save_pinned(run: &PinnedDir, r: &DeviceRecord) -> io::Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(io::Error::other)?;
    run.write(Some("devices"), &record_name(&r.device), text.as_bytes())
}

/// [`remove`] in a pinned run directory.
pub fn remove_pinned(run: &PinnedDir, device: &str) {
    run.remove(Some("devices"), &record_name(device));
}

pub fn remove(run: &Path, device: &str) {
    let _ = fs::remove_file(file_for(run, device));
}

pub fn load(run: &Path, device: &str) -> Option<DeviceRecord> {
    let text = fs::read_to_string(file_for(run, device)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every record, sorted by device.
pub fn load_all(run: &Path) -> Vec<DeviceRecord> {
    let mut v: Vec<DeviceRecord> = fs::read_dir(devices_dir(run))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a: &DeviceRecord, b| a.device.cmp(&b.device));
    v
}

/// Whether process `pid` is alive. A zombie (state Z, or X while it is
/// being reaped) has already dropped its device and sockets, so it counts
/// as dead: `--recover` must be able to take over from it at once.
pub fn alive(pid: u32) -> bool {
    live_stat(pid).is_some()
}

/// /proc/PID/stat of a live (not zombie) process.
fn live_stat(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (!matches!(proc_state(&stat), Some('Z' | 'X' | 'x') | None)).then_some(stat)
}

/// The state letter of a /proc/PID/stat line: the field after the
/// parenthesised command name, which may itself hold ") ".
fn proc_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Field 22 of a /proc/PID/stat line: the start time in clock ticks.
fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// When process `pid` started (clock ticks since boot).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl DeviceRecord {
    /// Whether the daemon this record names is still running: its PID is
    /// alive and is the same process (same start time; for an old record
    /// without one, a process whose argv\[0\] is sanroot's). A PID reused by
    /// another process is not the daemon: nothing may signal it.
    pub fn daemon_alive(&self) -> bool {
        let Some(stat) = live_stat(self.pid) else {
            return false;
        };
        if self.pid_start != 0 {
            return stat_start_time(&stat) == Some(self.pid_start);
        }
        fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| {
            let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
            argv0 == b"@sanroot" || argv0.ends_with(b"sanroot")
        })
    }
}

/// A daemon's memory as the kernel counts it (`/proc/PID/status`), for
/// `sanroot status`: what it holds now, the most it ever held, and how
/// much of it is locked (all of it, for a hardened daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryUse {
    /// VmRSS.
    pub resident_bytes: u64,
    /// VmHWM: the peak resident size since the daemon started.
    pub resident_peak_bytes: u64,
    /// VmLck.
    pub locked_bytes: u64,
}

impl MemoryUse {
    /// Read from the text of `/proc/PID/status`; None when a field is
    /// missing (kernel threads, or not a status file).
    pub fn parse(status: &str) -> Option<MemoryUse> {
        let kib = |key: &str| {
            status.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.strip_prefix(':')?.trim();
                let n: u64 = v.strip_suffix("kB")?.trim().parse().ok()?;
                n.checked_mul(1024)
            })
        };
        Some(MemoryUse {
            resident_bytes: kib("VmRSS")?,
            resident_peak_bytes: kib("VmHWM")?,
            locked_bytes: kib("VmLck")?,
        })
    }

    pub fn of(pid: u32) -> Option<MemoryUse> {
        MemoryUse::parse(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_state_letters() {
        assert_eq!(proc_state("42 (sanroot) S 1 42"), Some('S'));
        assert_eq!(proc_state("42 (a) Z (b)) Z 1 42"), Some('Z'));
        assert_eq!(proc_state("42 (broken"), None);
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }

    #[test]
    fn a_reused_pid_is_not_the_daemon() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert!(start > 0);
        let mut r: DeviceRecord = serde_json::from_str(
            r#"{"device":"/dev/nbd0","bridge":"nbd","index":0,"target":"iqn.x:y","portal":"p",
                "lun":0,"initiator":"i","isid":"","tsih":0,"pid":1,"state":"running",
                "lu_id":"","size_bytes":0,"block_size":512,"read_only":false}"#,
        )
        .unwrap();
        assert_eq!(r.pid_start, 0, "old records have no start time");
        r.pid = me;
        r.pid_start = start;
        assert!(r.daemon_alive());
        // The same PID, another start: another process.
        r.pid_start = start + 1;
        assert!(!r.daemon_alive());
        // No start time recorded: only a process named sanroot counts
        // (this test binary is not).
        r.pid_start = 0;
        assert!(!r.daemon_alive());
        r.pid = u32::MAX;
        assert!(!r.daemon_alive());
        let stat = "42 (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123456 19";
        assert_eq!(stat_start_time(stat), Some(123456));
    }

    #[test]
    fn zombie_is_not_alive() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not waited for: it stays a zombie until `child` is reaped.
        for _ in 0..200 {
            if !alive(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!alive(pid));
        let mut child = child;
        child.wait().unwrap();
    }

    #[test]
    fn a_pinned_directory_is_followed_when_it_moves() {
        let base = std::env::temp_dir().join(format!("sanroot-pin-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let run = base.join("initramfs-run");
        let pin = PinnedDir::open(&run);
        // switch-root: the directory goes elsewhere, an empty one takes
        // its old name.
        let moved = base.join("sysroot-run");
        fs::rename(&run, &moved).unwrap();
        fs::create_dir_all(&run).unwrap();
        pin.write(None, "boot.json", b"{}").unwrap();
        pin.write(Some("devices"), "ublkb0.json", b"{\"a\":1}")
            .unwrap();
        assert_eq!(fs::read(moved.join("boot.json")).unwrap(), b"{}");
        assert_eq!(
            pin.read(Some("devices"), "ublkb0.json").unwrap(),
            b"{\"a\":1}"
        );
        assert!(
            moved.join("devices/ublkb0.json").exists(),
            "written where it moved"
        );
        assert!(!run.join("boot.json").exists() && !run.join("devices").exists());
        pin.remove(Some("devices"), "ublkb0.json");
        assert!(!moved.join("devices/ublkb0.json").exists());
        assert!(!moved.join("devices/ublkb0.json.tmp").exists());
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn round_trip() {
        let d = std::env::temp_dir().join(format!("sanroot-state-{}", std::process::id()));
        let r = DeviceRecord {
            device: "/dev/nbd0".into(),
            bridge: "nbd".into(),
            index: 0,
            target: "iqn.x:y".into(),
            portal: "10.0.2.2:3260".into(),
            portals: vec![
                PathRecord {
                    portal: "10.0.2.2:3260".into(),
                    target: "iqn.x:y".into(),
                    isid: "80aabbccddee".into(),
                },
                PathRecord {
                    portal: "[fd00::2]:3261".into(),
                    target: "iqn.x:z".into(),
                    isid: String::new(),
                },
            ],
            lun: 1,
            initiator: "iqn.i".into(),
            isid: "80aabbccddee".into(),
            tsih: 7,
            pid: 1,
            pid_start: 0,
            state: "running".into(),
            lu_id: "naa.1".into(),
            size_bytes: 1 << 30,
            block_size: 512,
            read_only: false,
            dumpable: Some(false),
            paths: vec![PathState {
                portal: "10.0.2.2:3260".into(),
                tpgt: Some(1),
                alua: Some("active/optimized".into()),
                state: "up".into(),
                active: true,
            }],
        };
        save_pinned(&PinnedDir::open(&d), &r).unwrap();
        assert_eq!(load(&d, "/dev/nbd0"), Some(r.clone()));
        assert_eq!(load_all(&d), vec![r]);
        remove(&d, "/dev/nbd0");
        assert!(load_all(&d).is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn record_keys_and_old_records() {
        // A record written before `portals` existed still loads (no paths
        // beyond `portal`), and the keys others read keep their names.
        let old = r#"{"device":"/dev/ublkb0","bridge":"ublk","index":0,
            "target":"iqn.x:y","portal":"10.0.2.2:3260","lun":1,
            "initiator":"iqn.i","isid":"80aabbccddee","tsih":7,"pid":1,
            "state":"running","lu_id":"naa.1","size_bytes":1073741824,
            "block_size":512,"read_only":false}"#;
        let r: DeviceRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.portal, "10.0.2.2:3260");
        assert!(r.portals.is_empty());
        assert_eq!(r.dumpable, None, "unknown in old records");
        let d = std::env::temp_dir().join(format!("sanroot-state-old-{}", std::process::id()));
        fs::create_dir_all(devices_dir(&d)).unwrap();
        fs::write(file_for(&d, "/dev/ublkb0"), old).unwrap();
        assert_eq!(load(&d, "/dev/ublkb0"), Some(r.clone()));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["portal"], "10.0.2.2:3260");
        assert_eq!(v["portals"], serde_json::json!([]));
        assert_eq!(v["dumpable"], serde_json::Value::Null);
        let _ = fs::remove_dir_all(&d);
    }
    #[test]
    fn memory_use_reads_proc_status() {
        let st = "Name:\tsanroot\nVmHWM:\t   11200 kB\nVmRSS:\t   10240 kB\nVmLck:\t   10236 kB\nThreads:\t9\n";
        assert_eq!(
            MemoryUse::parse(st),
            Some(MemoryUse {
                resident_bytes: 10240 * 1024,
                resident_peak_bytes: 11200 * 1024,
                locked_bytes: 10236 * 1024,
            })
        );
        // A kernel thread has no Vm lines; garbage is no number.
        assert_eq!(MemoryUse::parse("Name:\tkworker\nThreads:\t1\n"), None);
        assert_eq!(
            MemoryUse::parse("VmRSS: x kB\nVmHWM: 1 kB\nVmLck: 1 kB\n"),
            None
        );
        assert_eq!(
            MemoryUse::parse("VmRSS: 99999999999999999999 kB\nVmHWM: 1 kB\nVmLck: 1 kB\n"),
            None
        );
        let me = MemoryUse::of(std::process::id()).expect("our own status");
        assert!(me.resident_bytes > 0 && me.resident_peak_bytes >= me.resident_bytes);
    }
}
