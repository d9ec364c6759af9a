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
    /// "running", "reconnecting", "failed", ...
    pub state: String,
    /// The LU's identity (VPD 0x83/0x80), to refuse another disk later.
    pub lu_id: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub read_only: bool,
}

/// One path of a device: where and under which name to log in. Never a
/// secret: CHAP settings come from whoever takes the device back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRecord {
    /// "IP:PORT" ("[v6]:PORT").
    pub portal: String,
    pub target: String,
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
    let name = device.trim_start_matches("/dev/").replace('/', "_");
    devices_dir(run).join(format!("{name}.json"))
}

/// Write (or replace) a record atomically.
pub fn save(run: &Path, r: &DeviceRecord) -> io::Result<()> {
    fs::create_dir_all(devices_dir(run))?;
    let p = file_for(run, &r.device);
    let tmp = p.with_extension("tmp");
    let text = serde_json::to_string_pretty(r).map_err(io::Error::other)?;
    fs::write(&tmp, text)?;
    fs::rename(tmp, p)
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
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(proc_state(&stat), Some('Z' | 'X' | 'x')),
        Err(_) => false,
    }
}

/// The state letter of a /proc/PID/stat line: the field after the
/// parenthesised command name, which may itself hold ") ".
fn proc_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
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
                },
                PathRecord {
                    portal: "[fd00::2]:3261".into(),
                    target: "iqn.x:z".into(),
                },
            ],
            lun: 1,
            initiator: "iqn.i".into(),
            isid: "80aabbccddee".into(),
            tsih: 7,
            pid: 1,
            state: "running".into(),
            lu_id: "naa.1".into(),
            size_bytes: 1 << 30,
            block_size: 512,
            read_only: false,
        };
        save(&d, &r).unwrap();
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
        let d = std::env::temp_dir().join(format!("sanroot-state-old-{}", std::process::id()));
        fs::create_dir_all(devices_dir(&d)).unwrap();
        fs::write(file_for(&d, "/dev/ublkb0"), old).unwrap();
        assert_eq!(load(&d, "/dev/ublkb0"), Some(r.clone()));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["portal"], "10.0.2.2:3260");
        assert_eq!(v["portals"], serde_json::json!([]));
        let _ = fs::remove_dir_all(&d);
    }
}
