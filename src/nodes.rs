//! Node records: targets found by discovery, kept so later commands can
//! name a target by its IQN, and exported in open-iscsi's format so an
//! installer can copy them to the installed system (as anaconda does with
//! iscsiadm's database).
//!
//! Our own records live in `$SANROOT_STATE_DIR` (default
//! /var/lib/sanroot), one small `key = value` file per target portal under
//! `nodes/<target>/<host>,<port>,<tpgt>`. They hold no secret.
//!
//! The export goes to the database the installed open-iscsi reads
//! ([`detect_node_db`]), and the records of the target this machine boots
//! from ([`boot_targets`]) are always `node.startup = manual`: sanroot
//! keeps the boot session from the initramfs, and a login by open-iscsi as
//! well would show the root disk twice (or make the target drop the boot
//! session).

use std::fs;
use std::io::{self, Read};
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
            match parse_record(&text).map(|r| check_record(&r).map(|()| r)) {
                Some(Ok(r)) => out.push(r),
                Some(Err(why)) => log::warn!("ignoring node record {}: {why}", path.display()),
                None => log::warn!("ignoring unreadable node record {}", path.display()),
            }
        }
    }
    out.sort_by(|a, b| (&a.target, &a.host, a.port).cmp(&(&b.target, &b.host, b.port)));
    Ok(out)
}

/// A saved record is data someone could have planted: its target must be
/// an iSCSI name and its hosts names or addresses before it is used or
/// exported (an open-iscsi record is key = value lines).
fn check_record(r: &NodeRecord) -> Result<(), String> {
    crate::iscsi::text::check_iscsi_name(&r.target)
        .map_err(|e| format!("target {:?} is not an iSCSI name: {e}", r.target))?;
    for h in [&r.host, &r.discovery_host] {
        if h.len() > 255 || !h.bytes().all(|b| b.is_ascii_graphic()) || h.contains('/') {
            return Err(format!("host {h:?} is not a name or address"));
        }
    }
    Ok(())
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
/// layout, as stored under `DB/nodes/<iqn>/<ip>,<port>,<tpgt>/default`, DB
/// being /etc/iscsi or /var/lib/iscsi: see [`detect_node_db`]).
/// Only the keys that differ from open-iscsi's defaults or identify the
/// node are written; iscsiadm fills in the rest when it reads the file.
pub fn open_iscsi_record(r: &NodeRecord, startup: Startup) -> String {
    record_text(r, startup, "")
}

/// The record of a target this machine boots from: `node.startup =
/// manual` (and the connection's) whatever the other records get, and
/// comment lines saying why (open-iscsi's parser skips lines that start
/// with '#'; `iscsiadm -o update` drops them, the value stays).
pub fn open_iscsi_boot_record(r: &NodeRecord, boot: &BootTarget) -> String {
    let name = printable(&r.target);
    let why = format!(
        "# sanroot: {name} is the target this machine boots from ({}).\n\
         # sanroot logs in to it from the initramfs and keeps that session; a login\n\
         # by open-iscsi as well would show the root disk twice (or make the target\n\
         # drop the boot session). Keep node.startup = manual.\n",
        boot.sources.join(", ")
    );
    record_text(r, Startup::Manual, &why)
}

/// `comment` goes right after the BEGIN line: whole lines, each starting
/// with '#'.
fn record_text(r: &NodeRecord, startup: Startup, comment: &str) -> String {
    let s = startup.as_str();
    format!(
        "# BEGIN RECORD 2.1.8\n\
         {comment}\
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

/// `s` without control characters (a name from the command line or the
/// firmware, going into a comment line).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A target this machine boots from, and how we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTarget {
    pub iqn: String,
    /// Where it was learnt, as the installed system would name it:
    /// [`FROM_OPTION`], [`FROM_HANDOFF`], [`FROM_IBFT`].
    pub sources: Vec<&'static str>,
}

pub const FROM_OPTION: &str = "--boot-target";
pub const FROM_HANDOFF: &str = "/run/sanroot/boot.json";
pub const FROM_IBFT: &str = "the iBFT";

/// Whether two iSCSI names are the same (RFC 3722: case-insensitive).
pub fn same_iqn(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// The boot target among `boot`, if `target` is one.
pub fn boot_target_of<'a>(boot: &'a [BootTarget], target: &str) -> Option<&'a BootTarget> {
    boot.iter().find(|b| same_iqn(&b.iqn, target))
}

/// The targets the kernel's iBFT view names under `host_root`
/// (`sys/firmware/ibft/target*/target-name`), sorted.
pub fn ibft_targets(host_root: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(host_root.join("sys/firmware/ibft")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("target"))
        .filter_map(|e| fs::read_to_string(e.path().join("target-name")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    out.sort();
    out
}

/// The targets this machine boots from: each of `given` (`--boot-target`),
/// `handoff` (the target of `host_root`/run/sanroot/boot.json, when this
/// boot is sanroot's: the caller reads it), and the iBFT's
/// (`host_root`/sys/firmware/ibft). One entry per name (compared
/// case-insensitively), with every place it was found.
pub fn boot_targets(given: &[String], handoff: Option<&str>, host_root: &Path) -> Vec<BootTarget> {
    let mut found: Vec<(String, &'static str)> = given
        .iter()
        .map(|g| (g.trim().to_string(), FROM_OPTION))
        .collect();
    if let Some(target) = handoff {
        found.push((target.trim().to_string(), FROM_HANDOFF));
    }
    found.extend(ibft_targets(host_root).into_iter().map(|t| (t, FROM_IBFT)));
    let mut out: Vec<BootTarget> = Vec::new();
    for (iqn, source) in found {
        if iqn.is_empty() {
            continue;
        }
        match out.iter_mut().find(|b| same_iqn(&b.iqn, &iqn)) {
            Some(b) => {
                if !b.sources.contains(&source) {
                    b.sources.push(source);
                }
            }
            None => out.push(BootTarget {
                iqn,
                sources: vec![source],
            }),
        }
    }
    out
}

/// open-iscsi's database, relative to a root: since 2.1.9 (Debian 13's
/// 2.1.11) and in Fedora and RHEL all along.
pub const DB_VAR: &str = "var/lib/iscsi";
/// Before 2.1.9 (Debian 12's 2.1.8, SUSE).
pub const DB_ETC: &str = "etc/iscsi";
/// Where an installed system keeps iscsiadm, relative to its root.
pub const ISCSIADM: [&str; 2] = ["usr/sbin/iscsiadm", "sbin/iscsiadm"];
/// iscsiadm is a few hundred KiB; read no more than this of it.
const ISCSIADM_MAX: u64 = 8 << 20;

/// The node database an installed open-iscsi reads, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDb {
    /// ROOT/var/lib/iscsi or ROOT/etc/iscsi.
    pub dir: PathBuf,
    /// One line for the log: how it was chosen.
    pub reason: String,
}

/// Which database the open-iscsi installed under `root` uses: the one its
/// iscsiadm names ("/var/lib/iscsi/nodes" or "/etc/iscsi/nodes" among its
/// bytes) when it names only one; else var/lib/iscsi if ROOT/var/lib/iscsi/nodes
/// exists, else etc/iscsi. An iscsiadm reached through a symlink that
/// leaves `root` (an absolute /sbin -> /usr/sbin seen from outside) is not
/// the installed one and is not read.
pub fn detect_node_db(root: &Path) -> NodeDb {
    let mut notes = Vec::new();
    for rel in ISCSIADM {
        let path = root.join(rel);
        let bytes = match read_inside(root, &path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                notes.push(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        let var = contains(&bytes, b"/var/lib/iscsi/nodes");
        let etc = contains(&bytes, b"/etc/iscsi/nodes");
        let (db, abs) = match (var, etc) {
            (true, false) => (DB_VAR, "/var/lib/iscsi"),
            (false, true) => (DB_ETC, "/etc/iscsi"),
            (true, true) => {
                notes.push(format!(
                    "{} names both /var/lib/iscsi/nodes and /etc/iscsi/nodes",
                    path.display()
                ));
                continue;
            }
            (false, false) => {
                notes.push(format!(
                    "{} names neither /var/lib/iscsi/nodes nor /etc/iscsi/nodes",
                    path.display()
                ));
                continue;
            }
        };
        return NodeDb {
            dir: root.join(db),
            reason: format!(
                "open-iscsi at {} keeps its records in {abs}",
                path.display()
            ),
        };
    }
    if notes.is_empty() {
        notes.push(format!(
            "no iscsiadm under {} ({})",
            root.display(),
            ISCSIADM.join(", ")
        ));
    }
    let var_nodes = root.join(DB_VAR).join("nodes");
    let (db, why) = if var_nodes.is_dir() {
        (DB_VAR, format!("{} exists", var_nodes.display()))
    } else {
        (DB_ETC, format!("no {}", var_nodes.display()))
    };
    NodeDb {
        dir: root.join(db),
        reason: format!("{}; {why}", notes.join("; ")),
    }
}

/// The first [`ISCSIADM_MAX`] bytes of `path`, if it resolves inside
/// `root`.
fn read_inside(root: &Path, path: &Path) -> io::Result<Vec<u8>> {
    let real = fs::canonicalize(path)?;
    let real_root = fs::canonicalize(root)?;
    if !real.starts_with(&real_root) {
        return Err(io::Error::other(format!(
            "it resolves to {}, outside {}",
            real.display(),
            root.display()
        )));
    }
    let mut bytes = Vec::new();
    fs::File::open(&real)?
        .take(ISCSIADM_MAX)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
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

/// A file [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    /// A boot target's node record (written `manual` whatever was asked).
    pub boot: Option<BootTarget>,
}

/// Write records in open-iscsi's layout under `db` (an installed
/// system's /etc/iscsi or /var/lib/iscsi, or any directory): `nodes/...`
/// and `send_targets/...`. Records of a target in `boot` get
/// [`open_iscsi_boot_record`], the others `startup`.
pub fn export(
    db: &Path,
    records: &[NodeRecord],
    startup: Startup,
    boot: &[BootTarget],
) -> io::Result<Vec<Written>> {
    let mut written = Vec::new();
    for r in records {
        let dir = db
            .join("nodes")
            .join(component(&r.target))
            .join(component(&format!("{},{},{}", r.host, r.port, r.tpgt)));
        fs::create_dir_all(&dir)?;
        let f = dir.join("default");
        let bt = boot_target_of(boot, &r.target);
        let text = match bt {
            Some(b) => open_iscsi_boot_record(r, b),
            None => open_iscsi_record(r, startup),
        };
        fs::write(&f, text)?;
        written.push(Written {
            path: f,
            boot: bt.cloned(),
        });
        if !r.discovery_host.is_empty() {
            let d = db.join("send_targets").join(component(&format!(
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
                written.push(Written {
                    path: f,
                    boot: None,
                });
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

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sanroot-nodes-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// The keys open-iscsi's parser would see: '#' lines skipped,
    /// `key = value` lines.
    fn keys(text: &str) -> Vec<(String, String)> {
        text.lines()
            .map(str::trim_start)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect()
    }

    fn key<'a>(kv: &'a [(String, String)], k: &str) -> Option<&'a str> {
        kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    fn boot(iqn: &str) -> BootTarget {
        BootTarget {
            iqn: iqn.into(),
            sources: vec![FROM_OPTION],
        }
    }

    #[test]
    fn boot_target_record_is_manual_and_says_why() {
        let t = open_iscsi_boot_record(&rec(), &boot("IQN.2026-11.ORG.EXAMPLE:DISK"));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "# BEGIN RECORD 2.1.8");
        assert_eq!(
            lines[1],
            "# sanroot: iqn.2026-11.org.example:disk is the target this machine boots from (--boot-target)."
        );
        // The comment comes right after BEGIN, every line of it a comment,
        // and it ends with the advice.
        let comment: Vec<&str> = lines[1..]
            .iter()
            .take_while(|l| l.starts_with('#'))
            .copied()
            .collect();
        assert_eq!(comment.len(), 4, "{t}");
        assert!(comment[3].ends_with("Keep node.startup = manual."), "{t}");
        assert!(t.contains("show the root disk twice"));
        let kv = keys(&t);
        assert_eq!(key(&kv, "node.startup"), Some("manual"));
        assert_eq!(key(&kv, "node.conn[0].startup"), Some("manual"));
        assert_eq!(key(&kv, "node.name"), Some("iqn.2026-11.org.example:disk"));
        assert_eq!(key(&kv, "node.conn[0].address"), Some("10.0.0.2"));
        assert!(!t.contains("automatic"));
        assert!(t.ends_with("# END RECORD\n"));
    }

    #[test]
    fn other_target_record_keeps_the_startup_asked() {
        let t = open_iscsi_record(&rec(), Startup::Automatic);
        assert!(!t.contains("sanroot"), "{t}");
        let kv = keys(&t);
        assert_eq!(key(&kv, "node.startup"), Some("automatic"));
        assert_eq!(key(&kv, "node.conn[0].startup"), Some("automatic"));
        // The same keys as the boot record, only the startup differs.
        let b = keys(&open_iscsi_boot_record(
            &rec(),
            &boot("iqn.2026-11.org.example:disk"),
        ));
        assert_eq!(kv.len(), b.len());
        for ((k1, v1), (k2, v2)) in kv.iter().zip(&b) {
            assert_eq!(k1, k2);
            if !k1.ends_with("startup") {
                assert_eq!(v1, v2);
            }
        }
    }

    #[test]
    fn control_characters_stay_out_of_the_comment() {
        let mut r = rec();
        r.target = "iqn.x\nnode.startup = automatic".into();
        let t = open_iscsi_boot_record(&r, &boot("iqn.x"));
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .starts_with("# sanroot: iqn.x?node.startup")
        );
    }

    #[test]
    fn export_writes_the_boot_target_manual_and_the_others_as_asked() {
        let d = tmp("export");
        let mut other = rec();
        other.target = "iqn.2026-11.org.example:data".into();
        let written = export(
            &d,
            &[rec(), other],
            Startup::Automatic,
            &[boot("IQN.2026-11.org.example:Disk")],
        )
        .unwrap();
        let boot_file = d.join("nodes/iqn.2026-11.org.example:disk/10.0.0.2,3260,1/default");
        let other_file = d.join("nodes/iqn.2026-11.org.example:data/10.0.0.2,3260,1/default");
        let st = d.join("send_targets/10.0.0.2,3260/st_config");
        let paths: Vec<&PathBuf> = written.iter().map(|w| &w.path).collect();
        assert_eq!(paths, vec![&boot_file, &st, &other_file]);
        assert!(written[0].boot.is_some());
        assert!(written[1].boot.is_none() && written[2].boot.is_none());
        let b = fs::read_to_string(&boot_file).unwrap();
        assert_eq!(key(&keys(&b), "node.startup"), Some("manual"));
        assert!(b.contains("# sanroot: iqn.2026-11.org.example:disk is the target"));
        let o = fs::read_to_string(&other_file).unwrap();
        assert_eq!(key(&keys(&o), "node.startup"), Some("automatic"));
        assert_eq!(key(&keys(&o), "node.conn[0].startup"), Some("automatic"));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn boot_targets_from_the_option_the_handoff_and_the_ibft() {
        let host = tmp("boot-targets");
        assert!(boot_targets(&[], None, &host).is_empty());
        fs::create_dir_all(host.join("run/sanroot")).unwrap();
        let rec = serde_json::json!({
            "version": 1, "source": "ibft", "target": "iqn.2026-11.org.example:Root",
            "portal": "10.0.2.2:3260", "lun": 1, "initiator": "iqn.2026-11.org.example:m",
            "isid": "80aabbccddee", "tsih": 1, "device": "/dev/ublkb0", "partitions": [],
            "bridge": "ublk", "pid": 1, "nic": null, "auth": "none"
        });
        fs::write(host.join("run/sanroot/boot.json"), rec.to_string()).unwrap();
        for (t, name) in [
            ("target0", "iqn.2026-11.org.example:root\n"),
            ("target1", "iqn.2026-11.org.example:mirror\n"),
            ("initiator", "iqn.2026-11.org.example:not-a-target\n"),
        ] {
            fs::create_dir_all(host.join("sys/firmware/ibft").join(t)).unwrap();
            fs::write(
                host.join("sys/firmware/ibft").join(t).join("target-name"),
                name,
            )
            .unwrap();
        }
        assert_eq!(
            ibft_targets(&host),
            vec![
                "iqn.2026-11.org.example:mirror".to_string(),
                "iqn.2026-11.org.example:root".to_string()
            ]
        );
        let handoff = crate::boot::handoff::read(&host).map(|r| r.target);
        let got = boot_targets(
            &[
                "IQN.2026-11.ORG.EXAMPLE:ROOT".into(),
                "iqn.2026-11.org.example:x".into(),
                " ".into(),
            ],
            handoff.as_deref(),
            &host,
        );
        assert_eq!(
            got,
            vec![
                BootTarget {
                    iqn: "IQN.2026-11.ORG.EXAMPLE:ROOT".into(),
                    sources: vec![FROM_OPTION, FROM_HANDOFF, FROM_IBFT],
                },
                BootTarget {
                    iqn: "iqn.2026-11.org.example:x".into(),
                    sources: vec![FROM_OPTION],
                },
                BootTarget {
                    iqn: "iqn.2026-11.org.example:mirror".into(),
                    sources: vec![FROM_IBFT],
                },
            ]
        );
        assert!(boot_target_of(&got, "iqn.2026-11.org.example:Mirror").is_some());
        assert!(boot_target_of(&got, "iqn.2026-11.org.example:data").is_none());
        assert!(boot_target_of(&got, "").is_none());
        let _ = fs::remove_dir_all(&host);
    }

    fn fake_iscsiadm(root: &Path, rel: &str, strings: &[&str]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut bytes = b"\x7fELF\x02\x01\x01\0".to_vec();
        for s in strings {
            bytes.extend_from_slice(s.as_bytes());
            bytes.push(0);
        }
        bytes.extend_from_slice(b"iscsiadm: No records found\0");
        fs::write(p, bytes).unwrap();
    }

    #[test]
    fn layout_from_the_installed_iscsiadm() {
        let r = tmp("layout-var");
        fake_iscsiadm(&r, "usr/sbin/iscsiadm", &["/var/lib/iscsi/nodes"]);
        // Its own word wins over which directories exist.
        fs::create_dir_all(r.join("etc/iscsi/nodes")).unwrap();
        let db = detect_node_db(&r);
        assert_eq!(db.dir, r.join("var/lib/iscsi"));
        assert_eq!(
            db.reason,
            format!(
                "open-iscsi at {} keeps its records in /var/lib/iscsi",
                r.join("usr/sbin/iscsiadm").display()
            )
        );

        let r = tmp("layout-etc");
        fake_iscsiadm(&r, "usr/sbin/iscsiadm", &["/etc/iscsi/nodes/%s"]);
        fs::create_dir_all(r.join("var/lib/iscsi/nodes")).unwrap();
        let db = detect_node_db(&r);
        assert_eq!(db.dir, r.join("etc/iscsi"));
        assert!(
            db.reason.ends_with("keeps its records in /etc/iscsi"),
            "{}",
            db.reason
        );

        // Not merged /usr: /sbin/iscsiadm.
        let r = tmp("layout-sbin");
        fake_iscsiadm(&r, "sbin/iscsiadm", &["/etc/iscsi/nodes"]);
        let db = detect_node_db(&r);
        assert_eq!(db.dir, r.join("etc/iscsi"));
        assert!(db.reason.contains("sbin/iscsiadm"), "{}", db.reason);
    }

    #[test]
    fn layout_falls_back_to_the_directories() {
        for (name, strings) in [
            ("both", &["/var/lib/iscsi/nodes", "/etc/iscsi/nodes"][..]),
            ("neither", &["/etc/iscsi/iscsid.conf"][..]),
            ("none", &[][..]),
        ] {
            let r = tmp(&format!("layout-{name}"));
            if name != "none" {
                fake_iscsiadm(&r, "usr/sbin/iscsiadm", strings);
            }
            let db = detect_node_db(&r);
            assert_eq!(db.dir, r.join("etc/iscsi"), "{name}");
            assert!(
                db.reason
                    .ends_with(&format!("no {}", r.join("var/lib/iscsi/nodes").display()))
            );
            let first = match name {
                "both" => "names both",
                "neither" => "names neither",
                _ => "no iscsiadm under",
            };
            assert!(db.reason.contains(first), "{name}: {}", db.reason);
            fs::create_dir_all(r.join("var/lib/iscsi/nodes")).unwrap();
            let db = detect_node_db(&r);
            assert_eq!(db.dir, r.join("var/lib/iscsi"), "{name}");
            assert!(
                db.reason.ends_with("/var/lib/iscsi/nodes exists"),
                "{}",
                db.reason
            );
            let _ = fs::remove_dir_all(&r);
        }
    }

    #[test]
    fn layout_ignores_an_iscsiadm_outside_the_root() {
        let outside = tmp("layout-outside");
        fake_iscsiadm(&outside, "iscsiadm", &["/var/lib/iscsi/nodes"]);
        let r = tmp("layout-link");
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        std::os::unix::fs::symlink(outside.join("iscsiadm"), r.join("usr/sbin/iscsiadm")).unwrap();
        // A link inside the root is followed (merged /usr: sbin -> usr/sbin).
        fake_iscsiadm(&r, "usr/bin/iscsiadm", &["/etc/iscsi/nodes"]);
        std::os::unix::fs::symlink("usr/bin", r.join("sbin")).unwrap();
        let db = detect_node_db(&r);
        assert_eq!(db.dir, r.join("etc/iscsi"), "{}", db.reason);
        assert!(db.reason.contains("sbin/iscsiadm keeps"), "{}", db.reason);
        let _ = fs::remove_dir_all(&r);
        let _ = fs::remove_dir_all(&outside);
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
