//! Node records: targets found by discovery, kept so later commands can
//! name a target by its IQN, and exported in open-iscsi's format so an
//! installer can copy them to the installed system (as anaconda does with
//! iscsiadm's database).
//!
//! Our own records live in `$SANROOT_STATE_DIR` (default
//! /var/lib/sanroot), one small `key = value` file per target portal under
//! `nodes/<target>/<host>,<port>,<tpgt>`. They hold no secret.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::url::format_portal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub target: String,
    pub host: String,
    pub port: u16,
    pub tpgt: u16,
    /// The portal that was asked (SendTargets discovery address).
    pub discovery_host: String,
    pub discovery_port: u16,
}

impl NodeRecord {
    /// `HOST:PORT,TPGT TARGET-IQN`, as `iscsiadm -m discovery` prints.
    pub fn line(&self) -> String {
        format!(
            "{},{} {}",
            format_portal(&self.host, self.port),
            self.tpgt,
            self.target
        )
    }
}

pub fn state_dir() -> PathBuf {
    std::env::var_os("SANROOT_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/sanroot"))
}

/// A name safe as one path component (IQNs are; this is for hostile input
/// from a discovery answer).
fn component(s: &str) -> String {
    s.chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

fn record_path(dir: &Path, r: &NodeRecord) -> PathBuf {
    dir.join("nodes")
        .join(component(&r.target))
        .join(component(&format!("{},{},{}", r.host, r.port, r.tpgt)))
}

/// Save records (replacing the ones from the same discovery portal).
pub fn save(dir: &Path, records: &[NodeRecord]) -> io::Result<()> {
    for r in records {
        let p = record_path(dir, r);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        let text = format!(
            "target = {}\nhost = {}\nport = {}\ntpgt = {}\ndiscovery_host = {}\ndiscovery_port = {}\n",
            r.target, r.host, r.port, r.tpgt, r.discovery_host, r.discovery_port
        );
        let tmp = p.with_extension("tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &p)?;
    }
    Ok(())
}

/// Every saved record, sorted by target then portal.
pub fn load_all(dir: &Path) -> Result<Vec<NodeRecord>, String> {
    let nodes = dir.join("nodes");
    let mut out = Vec::new();
    let Ok(targets) = fs::read_dir(&nodes) else {
        return Ok(out);
    };
    for t in targets.flatten() {
        let Ok(portals) = fs::read_dir(t.path()) else {
            continue;
        };
        for p in portals.flatten() {
            let path = p.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                continue;
            }
            let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            match parse_record(&text) {
                Some(r) => out.push(r),
                None => log::warn!("ignoring unreadable node record {}", path.display()),
            }
        }
    }
    out.sort_by(|a, b| (&a.target, &a.host, a.port).cmp(&(&b.target, &b.host, b.port)));
    Ok(out)
}

fn parse_record(text: &str) -> Option<NodeRecord> {
    let get = |k: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(key, _)| key.trim() == k)
            .map(|(_, v)| v.trim().to_string())
    };
    Some(NodeRecord {
        target: get("target")?,
        host: get("host")?,
        port: get("port")?.parse().ok()?,
        tpgt: get("tpgt")?.parse().ok()?,
        discovery_host: get("discovery_host").unwrap_or_default(),
        discovery_port: get("discovery_port")
            .and_then(|p| p.parse().ok())
            .unwrap_or(3260),
    })
}

/// How an exported record should start in the installed system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    Manual,
    Automatic,
    /// Fedora's marker for the boot session: logged in by the initramfs,
    /// not by iscsi.service.
    Onboot,
}

impl Startup {
    pub fn as_str(self) -> &'static str {
        match self {
            Startup::Manual => "manual",
            Startup::Automatic => "automatic",
            Startup::Onboot => "onboot",
        }
    }
}

/// One record in open-iscsi's node format (`iscsiadm -m node -o show`
/// layout, as stored under /etc/iscsi/nodes/<iqn>/<ip>,<port>,<tpgt>/default).
/// Only the keys that differ from open-iscsi's defaults or identify the
/// node are written; iscsiadm fills in the rest when it reads the file.
pub fn open_iscsi_record(r: &NodeRecord, startup: Startup) -> String {
    let s = startup.as_str();
    format!(
        "# BEGIN RECORD 2.1.8\n\
         node.name = {target}\n\
         node.tpgt = {tpgt}\n\
         node.startup = {s}\n\
         node.leading_login = No\n\
         iface.iscsi_ifacename = default\n\
         iface.transport_name = tcp\n\
         node.discovery_address = {dhost}\n\
         node.discovery_port = {dport}\n\
         node.discovery_type = send_targets\n\
         node.session.auth.authmethod = None\n\
         node.conn[0].address = {host}\n\
         node.conn[0].port = {port}\n\
         node.conn[0].startup = {s}\n\
         # END RECORD\n",
        target = r.target,
        tpgt = r.tpgt,
        dhost = r.discovery_host,
        dport = r.discovery_port,
        host = r.host,
        port = r.port,
    )
}

/// The SendTargets discovery record (`/etc/iscsi/send_targets/<ip>,<port>/st_config`).
pub fn open_iscsi_discovery_record(host: &str, port: u16) -> String {
    format!(
        "# BEGIN RECORD 2.1.8\n\
         discovery.startup = manual\n\
         discovery.type = sendtargets\n\
         discovery.sendtargets.address = {host}\n\
         discovery.sendtargets.port = {port}\n\
         discovery.sendtargets.auth.authmethod = None\n\
         # END RECORD\n"
    )
}

/// Write records in open-iscsi's layout under `root` (an installed
/// system's /etc/iscsi, or any directory): `nodes/...` and `send_targets/...`.
/// Returns the files written.
pub fn export(root: &Path, records: &[NodeRecord], startup: Startup) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for r in records {
        let dir = root
            .join("nodes")
            .join(component(&r.target))
            .join(component(&format!("{},{},{}", r.host, r.port, r.tpgt)));
        fs::create_dir_all(&dir)?;
        let f = dir.join("default");
        fs::write(&f, open_iscsi_record(r, startup))?;
        written.push(f);
        if !r.discovery_host.is_empty() {
            let d = root.join("send_targets").join(component(&format!(
                "{},{}",
                r.discovery_host, r.discovery_port
            )));
            fs::create_dir_all(&d)?;
            let f = d.join("st_config");
            if !f.exists() {
                fs::write(
                    &f,
                    open_iscsi_discovery_record(&r.discovery_host, r.discovery_port),
                )?;
                written.push(f);
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> NodeRecord {
        NodeRecord {
            target: "iqn.2026-11.org.example:disk".into(),
            host: "10.0.0.2".into(),
            port: 3260,
            tpgt: 1,
            discovery_host: "10.0.0.2".into(),
            discovery_port: 3260,
        }
    }

    #[test]
    fn save_load_round_trip() {
        let d = std::env::temp_dir().join(format!("sanroot-nodes-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let mut v6 = rec();
        v6.host = "fd00::2".into();
        save(&d, &[rec(), v6.clone()]).unwrap();
        let all = load_all(&d).unwrap();
        assert_eq!(all, vec![rec(), v6]);
        assert_eq!(
            all[0].line(),
            "10.0.0.2:3260,1 iqn.2026-11.org.example:disk"
        );
        assert_eq!(
            all[1].line(),
            "[fd00::2]:3260,1 iqn.2026-11.org.example:disk"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn hostile_names_stay_inside() {
        let mut r = rec();
        r.target = "../../etc/passwd".into();
        let p = record_path(Path::new("/x"), &r);
        assert!(p.starts_with("/x/nodes"));
        assert!(!p.to_string_lossy().contains("/../"));
    }

    #[test]
    fn open_iscsi_format() {
        let t = open_iscsi_record(&rec(), Startup::Onboot);
        assert!(t.starts_with("# BEGIN RECORD"));
        assert!(t.contains("node.name = iqn.2026-11.org.example:disk\n"));
        assert!(t.contains("node.conn[0].address = 10.0.0.2\n"));
        assert!(t.contains("node.startup = onboot\n"));
        assert!(t.ends_with("# END RECORD\n"));
    }
}
