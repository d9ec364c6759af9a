//! What the real root finds under /run after `sanroot boot`: the record of
//! the boot session, and the settings that keep open-iscsi and the network
//! managers away from that session and its NIC.
//!
//! /run survives switch-root (it is moved, not recreated), so everything
//! here is per boot: nothing is written to the real root's /etc.
//!
//! Files, all 0644 (NetworkManager's keyfiles 0600) in 0755 directories,
//! written atomically (a hidden
//! temporary file, then rename), the record last so that its presence
//! means the hand-off is complete:
//!
//! | file | why |
//! | --- | --- |
//! | `run/systemd/system/{iscsi,open-iscsi}.service.d/50-sanroot.conf` | open-iscsi must not log in to the boot target again |
//! | `run/udev/rules.d/61-sanroot-ublk.rules` | by-uuid/by-label names for ublk disks (systemd < 254 has none) |
//! | `run/udev/rules.d/62-sanroot-second-login.rules` | a disk of a second login to the boot target is logged and kept from the root's names |
//! | `run/NetworkManager/conf.d/90-sanroot.conf` | NetworkManager leaves every boot NIC unmanaged (`rd.sanroot.nm=unmanaged`, the default); native: carrier ignored, a VLAN's parent unmanaged |
//! | `run/NetworkManager/system-connections/sanroot-<if>.nmconnection` (0600), `run/NetworkManager/devices/<ifindex>` | `rd.sanroot.nm=native`: NetworkManager assumes each boot NIC with the firmware's configuration ([`super::nm`]) |
//! | `run/systemd/network/05-sanroot-<if>.network` | systemd-networkd leaves each unmanaged |
//! | `run/systemd/system/networking.service.d/50-sanroot.conf`, `run/sanroot/ifupdown.env` | ifupdown's `ifup -a`/`ifdown -a` skip them (`EXCLUDE_INTERFACES`) |
//! | `run/systemd/system/ifup@<if>.service.d/50-sanroot.conf` | ifupdown's hotplug unit for each does not start |
//! | `run/net-<if>.conf`, `run/net6-<if>.conf` | Debian's initramfs convention (klibc ipconfig's format), read by open-iscsi's interface handler and cloud-init |
//! | `run/initramfs/open-iscsi.interface` | Debian's open-iscsi keeps ifupdown off that interface (the first boot NIC's) |
//! | `run/sanroot/boot.json` | the session: target, portal, device, daemon pid, NICs |
//!
//! The boot NICs are [`BootRecord::nic`] and [`BootRecord::nics`] (every
//! path's NIC: a dual-fabric SAN reaches its portals through two), each
//! interface once, with a VLAN's parent. Unmanaged (or assumed by
//! NetworkManager, [`super::nm`]), each keeps the addresses and routes the
//! boot gave it (its gateway, the host route to its portal), so every path
//! stays up in the real root.
//!
//! No file holds a secret: the record says which kind of CHAP was used
//! ([`auth_kind`]), never a name's secret.
//!
//! What open-iscsi does in a real root, and so what the drop-in does:
//! - Debian 12 (open-iscsi 2.1.8): `open-iscsi.service` (alias
//!   `iscsi.service`) runs `iscsiadm -m node --loginall=automatic`; no
//!   firmware login in the real root (the initramfs' `iscsistart -b`
//!   is the only one). Its udev rules only start iscsid for disks whose
//!   ID_PATH has "-iscsi-" (not ublk) and run `net-interface-handler`,
//!   which reads `open-iscsi.interface` (below).
//! - Fedora/RHEL (iscsi-initiator-utils): `iscsi.service` runs
//!   `--loginall=automatic` (and again on reload, from the NetworkManager
//!   dispatcher `04-iscsi`); `iscsi-onboot.service` only marks nodes of
//!   kernel sessions `onboot`; no udev rule logs in.
//! - SUSE and upstream's older template: `iscsi.service` runs
//!   `--loginall=automatic`, `--loginall=onboot` and `iscsiadm -m fw -l`.
//!
//! Node records are what `--loginall` reads: the boot target's are hidden
//! from the whole real root just before the switch to it
//! ([`super::hide`]; nothing is written to the disk), so that an
//! installer's `node.startup = automatic` record does not log in again.
//!
//! A drop-in cannot remove one `ExecStart=` line (only reset them all,
//! which would also drop Debian's `activate-storage.sh` through the
//! alias), so it hides the firmware tables from the unit instead
//! (`TemporaryFileSystem=/sys/firmware`: `-m fw -l` then behaves as on a
//! machine without an iBFT). Other targets log in as before.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BootNic;
use super::nm::{self, NmMode};
use crate::ibft::model::{format_mac, prefix_to_mask};
use crate::iscsi::chap::AuthConfig;
use crate::net::parse_mac;

/// [`BootRecord::version`] this code writes.
pub const VERSION: u32 = 1;
/// The record, relative to the hand-off root.
pub const RECORD: &str = "run/sanroot/boot.json";
/// Shared with the dracut module, which installs it in the initramfs.
const UBLK_RULES: &str = include_str!("../../dracut/90sanroot/61-sanroot-ublk.rules");
/// The units that log in to targets in a real root (see the module doc):
/// upstream's, Fedora's and SUSE's name, and Debian's.
const ISCSI_UNITS: [&str; 2] = ["iscsi.service", "open-iscsi.service"];
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// The boot session, for the real root (`/run/sanroot/boot.json`). No
/// secrets.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BootRecord {
    /// [`VERSION`].
    pub version: u32,
    /// "ibft", "cmdline", with detail.
    pub source: String,
    pub target: String,
    /// "10.0.2.2:3260", "\[fd00::2\]:3260" ([`portal`]).
    pub portal: String,
    pub lun: u64,
    pub initiator: String,
    /// Hex.
    pub isid: String,
    pub tsih: u16,
    /// "/dev/ublkb0".
    pub device: String,
    pub partitions: Vec<String>,
    /// "ublk" or "nbd".
    pub bridge: String,
    /// The daemon serving the device.
    pub pid: u32,
    /// The NIC of the path that logged in first.
    pub nic: Option<NicRecord>,
    /// Every NIC the boot brought up, one per interface: the first path's
    /// (`nic`) first, then the other paths' in path order. A dual-fabric
    /// SAN has one per fabric, and the hand-off keeps the real root's
    /// network managers off each. Empty in a record from before this
    /// field: then `nic` is the only one.
    #[serde(default)]
    pub nics: Vec<NicRecord>,
    /// "none", "chap" or "mutual-chap" ([`auth_kind`]): the kind only.
    pub auth: String,
    /// The boot target's open-iscsi node record directories hidden for
    /// this boot ("/etc/iscsi/nodes/IQN"), by the pre-pivot step
    /// ([`super::hide`]).
    #[serde(default)]
    pub hidden_node_records: Vec<String>,
    /// Every path to the root LU as it is now (`sanroot status --json`'s
    /// `paths`); the daemon keeps it current.
    #[serde(default)]
    pub paths: Vec<crate::state::PathState>,
    /// How the hand-off treats NetworkManager: "native" (a profile per boot
    /// NIC that it assumes) or "unmanaged" ([`NmMode`], `rd.sanroot.nm=`).
    /// A record from before this field was "unmanaged".
    #[serde(default = "unmanaged")]
    pub networkmanager: String,
}

/// What a record without [`BootRecord::networkmanager`] did.
fn unmanaged() -> String {
    NmMode::Unmanaged.name().to_string()
}

/// The boot NIC as configured.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NicRecord {
    /// The interface carrying the address (the VLAN interface for a VLAN).
    pub ifname: String,
    /// "52:54:00:12:34:56"; all zero or empty when unknown.
    pub mac: String,
    /// 0 = untagged.
    pub vlan: u16,
    /// "10.0.2.15/24", "fd00::15/64".
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    /// [`super::NicOrigin::name`]: "static", "dhcp", "external".
    pub origin: String,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    /// The physical NIC when `ifname` is a VLAN.
    pub parent: Option<String>,
    /// The kernel's index of `ifname` (NetworkManager's device state file
    /// is named by it); absent from older records.
    #[serde(default)]
    pub ifindex: Option<u32>,
    /// The portal address this NIC has its host route to; absent from
    /// older records.
    #[serde(default)]
    pub target: Option<String>,
}

impl NicRecord {
    /// The record of `nic` as brought up on `ifname` (and `parent`, for a
    /// VLAN).
    pub fn from_boot_nic(nic: &BootNic, ifname: &str, parent: Option<&str>) -> NicRecord {
        let c = &nic.config;
        NicRecord {
            ifname: ifname.to_string(),
            mac: format_mac(&c.mac),
            vlan: c.vlan,
            addresses: c.addr.iter().map(|(a, p)| format!("{a}/{p}")).collect(),
            gateway: c.gateway.map(|g| g.to_string()),
            dns: c.dns.iter().map(IpAddr::to_string).collect(),
            origin: nic.origin.name().to_string(),
            hostname: nic.hostname.clone(),
            domain: nic.domain.clone(),
            parent: parent.map(str::to_string),
            ifindex: None,
            target: c.target.map(|t| t.to_string()),
        }
    }
}

/// The kind of CHAP a session used, for [`BootRecord::auth`].
pub fn auth_kind(auth: Option<&AuthConfig>) -> &'static str {
    match auth {
        None => "none",
        Some(a) if a.mutual.is_some() => "mutual-chap",
        Some(_) => "chap",
    }
}

/// "ip:port", IPv6 in brackets.
pub fn portal(host: IpAddr, port: u16) -> String {
    SocketAddr::new(host, port).to_string()
}

/// Write every hand-off file under `root` (normally "/", tests pass a
/// temporary directory). Returns the paths written, the record last.
///
/// Everything is checked before anything is written: an interface name
/// or an address that would not be safe in a unit, rule or shell file is
/// refused (`InvalidInput`) and nothing is left half-done.
pub fn write(root: &Path, rec: &BootRecord) -> io::Result<Vec<PathBuf>> {
    write_files(root, rec, false)
}

/// Write again the hand-off files that are missing under `root`, not the
/// record: another initramfs script may remove one after `sanroot boot`
/// (Debian open-iscsi's initramfs-tools `local-bottom/iscsi` deletes
/// `run/initramfs/open-iscsi.interface` when it finds no iSCSI disk of the
/// kernel's). Returns the paths written.
pub fn restore_missing(root: &Path, rec: &BootRecord) -> io::Result<Vec<PathBuf>> {
    write_files(root, rec, true)
}

fn write_files(root: &Path, rec: &BootRecord, missing_only: bool) -> io::Result<Vec<PathBuf>> {
    let files = plan(rec).map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    let mut written = Vec::with_capacity(files.len());
    for (rel, content, mode) in files {
        let path = root.join(&rel);
        if missing_only && (rel == RECORD || path.symlink_metadata().is_ok()) {
            continue;
        }
        if let Some(dir) = Path::new(&rel).parent() {
            create_dirs(root, dir)?;
        }
        write_atomic(&path, content.as_bytes(), mode)?;
        written.push(path);
    }
    Ok(written)
}

/// Rewrite the record alone (after [`write()`], e.g. with
/// [`BootRecord::hidden_node_records`] filled in).
pub fn write_record(root: &Path, rec: &BootRecord) -> io::Result<()> {
    let json = serde_json::to_string_pretty(rec)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("the record: {e}")))?;
    write_atomic(&root.join(RECORD), (json + "\n").as_bytes(), FILE_MODE)
}

/// The record, if the hand-off under `root` is complete and readable.
pub fn read(root: &Path) -> Option<BootRecord> {
    let text = fs::read_to_string(root.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a login to (`target`, `host`) would be a second login to the
/// boot session: the same target (iSCSI names compare case-insensitively,
/// RFC 3722) at the same portal address (compared as IP addresses, so
/// "::ffff:10.0.2.2" is 10.0.2.2; `host` may be bracketed or carry a
/// port). A `host` that is no IP literal is compared as text.
pub fn is_boot_target(rec: &BootRecord, target: &str, host: &str) -> bool {
    if !rec.target.trim().eq_ignore_ascii_case(target.trim()) {
        return false;
    }
    match (host_ip(&rec.portal), host_ip(host)) {
        (Some(a), Some(b)) => a.to_canonical() == b.to_canonical(),
        _ => bare_host(&rec.portal).eq_ignore_ascii_case(bare_host(host)),
    }
}

/// The address in "ip", "[v6]", "ip:port" or "[v6]:port".
pub(super) fn host_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|x| x.strip_suffix(']'))?
                .parse()
                .ok()
        })
}

/// "host" from "host", "host:port", "[host]" or "[host]:port".
fn bare_host(s: &str) -> &str {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('[') {
        return inner.split(']').next().unwrap_or(inner);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => s,
    }
}

/// The files of the hand-off: (path relative to the root, content, mode),
/// the record last. Errors are phrases naming the bad field.
fn plan(rec: &BootRecord) -> Result<Vec<(String, String, u32)>, String> {
    let mut out = plan_0644(rec)?
        .into_iter()
        .map(|(p, c)| (p, c, FILE_MODE))
        .collect::<Vec<_>>();
    let nics = checked_nics(rec)?;
    if !nics.is_empty() {
        // NetworkManager's files right after the sendsigs file, where the
        // unmanaged configuration always was (and before the record,
        // whose presence means the hand-off is complete).
        let nm_files = match NmMode::of_record(rec)? {
            NmMode::Unmanaged => vec![(
                "run/NetworkManager/conf.d/90-sanroot.conf".to_string(),
                networkmanager_conf(rec, &nics),
                FILE_MODE,
            )],
            NmMode::Native => nm::native_files(rec, &nics)?,
        };
        let at = out
            .iter()
            .position(|(p, _, _)| p == "run/sendsigs.omit.d/sanroot")
            .map_or(0, |i| i + 1);
        out.splice(at..at, nm_files);
    }
    Ok(out)
}

/// The files of [`plan`] written 0644, NetworkManager's aside, the record
/// last.
fn plan_0644(rec: &BootRecord) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for unit in ISCSI_UNITS {
        out.push((
            format!("run/systemd/system/{unit}.d/50-sanroot.conf"),
            iscsi_dropin(rec),
        ));
    }
    out.push((
        "run/udev/rules.d/61-sanroot-ublk.rules".to_string(),
        UBLK_RULES.to_string(),
    ));
    if let Some(rules) = second_login_rules(rec) {
        out.push((SECOND_LOGIN_RULES.to_string(), rules));
    }
    // A sysvinit real root: Debian's sendsigs leaves the pids listed here
    // alone at shutdown (as it does for iscsid, mdmon, multipathd), so the
    // daemon serves the root until it is remounted read-only. systemd
    // spares it by its '@' instead.
    out.push((
        "run/sendsigs.omit.d/sanroot".to_string(),
        format!("{}\n", rec.pid),
    ));
    let nics = checked_nics(rec)?;
    if let Some(first) = nics.first() {
        for (name, content) in networkd_files(rec, &nics) {
            out.push((format!("run/systemd/network/{name}"), content));
        }
        out.extend(ifupdown_files(rec, &nics));
        for (i, n) in nics.iter().enumerate() {
            for (name, content) in klibc_files(rec, n, &root_server(rec, n, i == 0)) {
                out.push((format!("run/{name}"), content));
            }
        }
        // Only the first NIC's name: Debian's net-interface-handler reads
        // the first line with `read`, so this file cannot start with a
        // comment nor list several.
        out.push((
            "run/initramfs/open-iscsi.interface".to_string(),
            format!("{}\n", first.ifname),
        ));
    }
    let json = serde_json::to_string_pretty(rec).map_err(|e| format!("the record: {e}"))?;
    out.push((RECORD.to_string(), json + "\n"));
    Ok(out)
}

/// `nics` in order, each interface once (the first record of a name is
/// kept): what [`BootRecord::nics`] holds.
pub fn unique_nics<'a>(nics: impl IntoIterator<Item = &'a NicRecord>) -> Vec<NicRecord> {
    let mut out: Vec<NicRecord> = Vec::new();
    for n in nics {
        if !out.iter().any(|o| o.ifname == n.ifname) {
            out.push(n.clone());
        }
    }
    out
}

/// The boot NICs of `rec`, every record checked: `nic` first, then
/// `nics` (which normally starts with the same NIC), each interface once.
/// Just `nic` in a record without `nics`.
pub(super) fn checked_nics(rec: &BootRecord) -> Result<Vec<Nic<'_>>, String> {
    let labelled = rec.nic.iter().map(|n| ("nic".to_string(), n)).chain(
        rec.nics
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("nics[{i}]"), n)),
    );
    let mut out: Vec<Nic<'_>> = Vec::new();
    for (field, r) in labelled {
        let n = Nic::check(&field, r)?;
        if !out.iter().any(|o| o.ifname == n.ifname) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Every link the network managers must leave alone, each once, in
/// order: a NIC's interface (with its MAC, unless it is a VLAN, which
/// shares its parent's), then its VLAN parent (with the MAC). Two VLANs
/// on one parent, or a VLAN beside its untagged parent, name it once.
fn all_links<'a>(nics: &[Nic<'a>]) -> Vec<(&'a str, Option<[u8; 6]>)> {
    let mut out: Vec<(&'a str, Option<[u8; 6]>)> = Vec::new();
    for n in nics {
        let vlan = n.parent.is_some();
        let own = (n.ifname, if vlan { None } else { n.mac });
        for (name, mac) in std::iter::once(own).chain(n.parent.map(|p| (p, n.mac))) {
            if !out.iter().any(|(o, _)| *o == name) {
                out.push((name, mac));
            }
        }
    }
    out
}

/// klibc's `ROOTSERVER` for `n`: the boot portal for the first NIC (as
/// for a single one); for another, the first portal of the boot (the
/// record's, then its paths') on one of that NIC's IPv4 subnets, else
/// the boot portal. IPv4 only, empty otherwise.
fn root_server(rec: &BootRecord, n: &Nic<'_>, first: bool) -> String {
    let v4 = |s: &str| match host_ip(s).map(|a| a.to_canonical()) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let boot = v4(&rec.portal);
    let on_link = |t: Ipv4Addr| {
        n.addrs.iter().any(|(a, p)| match a {
            IpAddr::V4(a) => {
                let m = u32::from(prefix_to_mask(*p));
                u32::from(*a) & m == u32::from(t) & m
            }
            IpAddr::V6(_) => false,
        })
    };
    let local = if first {
        None
    } else {
        std::iter::once(rec.portal.as_str())
            .chain(rec.paths.iter().map(|p| p.portal.as_str()))
            .filter_map(v4)
            .find(|t| on_link(*t))
    };
    local.or(boot).map(|a| a.to_string()).unwrap_or_default()
}

/// A [`NicRecord`] checked for use in config files.
pub(super) struct Nic<'a> {
    pub(super) ifname: &'a str,
    pub(super) parent: Option<&'a str>,
    /// `None` when unknown (empty or all zero).
    pub(super) mac: Option<[u8; 6]>,
    pub(super) vlan: u16,
    pub(super) addrs: Vec<(IpAddr, u8)>,
    pub(super) gateway: Option<IpAddr>,
    pub(super) dns: Vec<IpAddr>,
    pub(super) origin: &'a str,
    pub(super) hostname: Option<&'a str>,
    pub(super) domain: Option<&'a str>,
    pub(super) ifindex: Option<u32>,
    /// [`NicRecord::target`].
    pub(super) target: Option<IpAddr>,
}

impl<'a> Nic<'a> {
    /// The interface and, for a VLAN, its parent: what every network
    /// manager must leave alone.
    fn links(&self) -> impl Iterator<Item = &'a str> {
        std::iter::once(self.ifname).chain(self.parent)
    }

    /// `field` names the record in errors: "nic", "nics[1]".
    fn check(field: &str, r: &'a NicRecord) -> Result<Nic<'a>, String> {
        check_ifname(&format!("{field}.ifname"), &r.ifname)?;
        if let Some(p) = &r.parent {
            check_ifname(&format!("{field}.parent"), p)?;
        }
        let mac = if r.mac.is_empty() {
            None
        } else {
            let m = parse_mac(&r.mac).ok_or_else(|| {
                format!(
                    "{field}.mac \"{}\" is not a MAC address",
                    r.mac.escape_debug()
                )
            })?;
            (m != [0; 6]).then_some(m)
        };
        let mut addrs = Vec::new();
        for a in &r.addresses {
            let parsed = a.split_once('/').and_then(|(ip, p)| {
                let ip: IpAddr = ip.parse().ok()?;
                let p: u8 = p.parse().ok()?;
                (p <= if ip.is_ipv4() { 32 } else { 128 }).then_some((ip, p))
            });
            addrs.push(parsed.ok_or_else(|| {
                format!(
                    "{field}.addresses: \"{}\" is not <address>/<prefix length>",
                    a.escape_debug()
                )
            })?);
        }
        let ip = |what: &str, s: &str| {
            s.parse::<IpAddr>().map_err(|_| {
                format!(
                    "{field}.{what} \"{}\" is not an IP address",
                    s.escape_debug()
                )
            })
        };
        let gateway = r.gateway.as_deref().map(|g| ip("gateway", g)).transpose()?;
        let target = r
            .target
            .as_deref()
            .map(|t| ip("target", t).map(|a| a.to_canonical()))
            .transpose()?;
        let dns = r
            .dns
            .iter()
            .map(|d| ip("dns", d))
            .collect::<Result<Vec<_>, _>>()?;
        for (what, v) in [("hostname", &r.hostname), ("domain", &r.domain)] {
            if let Some(v) = v
                && v.chars().any(char::is_control)
            {
                return Err(format!("{field}.{what} holds a control character"));
            }
        }
        Ok(Nic {
            ifname: &r.ifname,
            parent: r.parent.as_deref(),
            mac,
            vlan: r.vlan,
            addrs,
            gateway,
            dns,
            origin: &r.origin,
            hostname: r.hostname.as_deref().filter(|h| !h.is_empty()),
            domain: r.domain.as_deref().filter(|d| !d.is_empty()),
            ifindex: r.ifindex,
            target,
        })
    }
}

/// An interface name usable in a file name and in every config format
/// here: the kernel's rules (1-15 bytes, no '/', ':', whitespace) and, to
/// stay clear of globs, separators and quoting, only letters, digits and
/// `. _ - @ +`.
fn check_ifname(field: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} \"{}\" is not an interface name this hand-off can write (1-15 of A-Z a-z 0-9 . _ - @ +)",
            s.escape_debug()
        ))
    }
}

/// Record text for a comment: one line, printable.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The first lines of every file that can hold a comment.
pub(super) fn header(rec: &BootRecord, lead: &str, why: &[&str]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{lead} Written by sanroot boot in the initramfs, for this boot only."
    );
    let _ = writeln!(
        s,
        "{lead} The root disk {} is served by the sanroot daemon (pid {}) over its",
        clean(&rec.device),
        rec.pid
    );
    let _ = writeln!(
        s,
        "{lead} own iSCSI session to {} at {}.",
        clean(&rec.target),
        clean(&rec.portal)
    );
    for line in why {
        let _ = writeln!(s, "{lead} {line}");
    }
    s
}

fn iscsi_dropin(rec: &BootRecord) -> String {
    let mut s = header(
        rec,
        "#",
        &[
            "open-iscsi cannot see that session. A second login to that target",
            "(iscsiadm -m fw -l, or a node login) would either make the target",
            "drop the boot session (same initiator name and ISID) or show the",
            "disk twice (another ISID). Logins to other targets are unchanged.",
        ],
    );
    s.push_str("[Service]\n");
    s.push_str(
        "# No firmware tables for this unit: iscsiadm -m fw -l finds no iBFT, as on\n\
         # a machine without one. Node logins do not read them.\n\
         TemporaryFileSystem=/sys/firmware\n",
    );
    // Node records of the boot target (an installer's, node.startup =
    // automatic) are hidden from every process of the real root by the
    // pre-pivot step (boot::hide): nothing is written to the root disk.
    s.push_str(
        "# The boot target's node records are hidden for this boot (an empty\n\
         # read-only tmpfs over /etc/iscsi/nodes/<target> and\n\
         # /var/lib/iscsi/nodes/<target>; see hidden_node_records in\n\
         # /run/sanroot/boot.json), so --loginall does not log in to it again.\n",
    );
    s
}

/// Where `second_login_rules` go.
pub const SECOND_LOGIN_RULES: &str = "run/udev/rules.d/62-sanroot-second-login.rules";

/// A name usable in a udev glob and a shell word unquoted: the characters
/// of iSCSI names (RFC 3720 §3.2.6.3: `iqn.`, `eui.`, `naa.` use only
/// these), none of udev's glob characters (`* ? [ ] |`).
fn plain_iscsi_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 223
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
}

/// A disk of a second login to the boot target (the kernel's initiator,
/// after an `iscsiadm` login the hidden node records did not prevent: a
/// discovery typed by hand, a record written after boot): say so in the
/// kernel log, and keep it from taking the root's /dev/disk/by-* names
/// (lowest link priority) and from systemd's and udisks' use (its
/// partitions inherit ID_PATH, so they match too). After
/// 60-persistent-storage.rules, which sets ID_PATH
/// ("ip-ADDR:PORT-iscsi-IQN-lun-N"), and before 99-systemd.rules.
/// `None` when the target's name is not a plain iSCSI name.
fn second_login_rules(rec: &BootRecord) -> Option<String> {
    let t = rec.target.trim();
    let dev_ok = rec
        .device
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'/');
    if !plain_iscsi_name(t) || !dev_ok {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    let names = if lower == t {
        t.to_string()
    } else {
        format!("{t}|{lower}")
    };
    let glob: Vec<String> = names
        .split('|')
        .map(|n| format!("*-iscsi-{n}-lun-*"))
        .collect();
    let mut s = header(
        rec,
        "#",
        &[
            "A disk that the kernel's initiator brings from that target is a second",
            "login to the root disk: the same LUN behind two caches. It is logged",
            "and kept away from the root's /dev/disk/by-* names, systemd and udisks.",
            "Log that session out: iscsiadm -m session -r N -u.",
        ],
    );
    let _ = writeln!(
        s,
        "ACTION==\"add\", SUBSYSTEM==\"block\", ENV{{ID_PATH}}==\"{glob}\", \
         OPTIONS+=\"link_priority=-100\", ENV{{SYSTEMD_READY}}=\"0\", ENV{{UDISKS_IGNORE}}=\"1\", \
         RUN+=\"/bin/sh -c 'echo sanroot: /dev/%k is a second login to the boot target {t} whose LUN is the root disk {dev}: log that session out with iscsiadm -m session -u and keep its node records manual >/dev/kmsg'\"",
        glob = glob.join("|"),
        dev = rec.device.trim(),
    );
    Some(s)
}

/// `match-device` for every boot NIC (and VLAN parent): per NIC its
/// interface names, then its MAC; each spec once. NetworkManager's device
/// specs are a list that matches when any entry does, so one section
/// covers them all.
fn nm_match(nics: &[Nic<'_>]) -> String {
    let mut specs: Vec<String> = Vec::new();
    for n in nics {
        let macs = n.mac.map(|m| format!("mac:{}", format_mac(&m)));
        for spec in n
            .links()
            .map(|l| format!("interface-name:={l}"))
            .chain(macs)
        {
            if !specs.contains(&spec) {
                specs.push(spec);
            }
        }
    }
    specs.join(",")
}

fn networkmanager_conf(rec: &BootRecord, nics: &[Nic<'_>]) -> String {
    let mut s = header(
        rec,
        "#",
        &[
            "NetworkManager must leave the NIC carrying it alone: an unmanaged device",
            "keeps the addresses and routes it has (no DHCP restart, no flush, not",
            "taken down), and the initrd's connection profiles are not applied to it.",
            "A [device-*] section with managed=0 rather than [keyfile]",
            "unmanaged-devices=: a later file setting that list replaces ours whole,",
            "while no other file touches a section of our own, and managed=0 also",
            "wins over udev's NM_UNMANAGED.",
        ],
    );
    let _ = write!(
        s,
        "[device-sanroot-boot]\nmatch-device={}\nmanaged=0\n",
        nm_match(nics)
    );
    s
}

/// `05-sanroot-<if>.network` for each boot NIC's interface and, for a
/// VLAN, its parent ([`all_links`]).
///
/// `[Link] Unmanaged=yes` rather than `[Network] KeepConfiguration=yes`
/// (systemd.network(5), v252): unmanaged, networkd does not bring the
/// link up or down, does not flush its addresses and routes, and does not
/// react to a carrier loss (which, for a managed link without
/// IgnoreCarrierLoss=, drops its configuration: the classic root-on-iSCSI
/// hang); KeepConfiguration= only protects addresses and routes at
/// networkd's start and stop and leaves the link managed otherwise, and
/// defaults to "yes" only for a network filesystem root, not for ext4 on
/// an iSCSI disk. The cost: systemd-networkd-wait-online ignores the
/// link. The "05-" prefix sorts before netplan's and cloud-init's
/// "10-netplan-*"/"10-cloud-init-*" and systemd-network-generator's
/// "70-*": networkd applies the first matching file.
fn networkd_files(rec: &BootRecord, nics: &[Nic<'_>]) -> Vec<(String, String)> {
    let why = [
        "systemd-networkd must not configure the NIC carrying it (Unmanaged=yes:",
        "no up/down, no address or route flush, no reaction to carrier loss).",
    ];
    // A VLAN interface shares its parent's MAC: it is matched by name
    // only (all_links gives it no MAC).
    all_links(nics)
        .into_iter()
        .map(|(name, mac)| {
            let mut s = header(rec, "#", &why);
            let _ = writeln!(s, "[Match]\nName={name}");
            if let Some(m) = mac {
                let _ = writeln!(s, "MACAddress={}", format_mac(&m));
            }
            s.push_str("\n[Link]\nUnmanaged=yes\n");
            (format!("05-sanroot-{name}.network"), s)
        })
        .collect()
}

/// Where `ifupdown_files` puts `EXCLUDE_INTERFACES` for networking.service.
pub const IFUPDOWN_ENV: &str = "run/sanroot/ifupdown.env";

/// Debian's ifupdown under systemd (`/etc/network/interfaces`, the
/// installer's default) would otherwise run its DHCP client on the boot
/// NIC and, at shutdown, take it down while the root is still mounted:
/// - `networking.service` runs `ifup -a` at boot and `ifdown -a` when it
///   stops, both with `--read-environment`, which honours
///   `EXCLUDE_INTERFACES` (space separated). A drop-in adds an
///   `EnvironmentFile=` after Debian's `/etc/default/networking`, so ours
///   is read last: an `EXCLUDE_INTERFACES` set there is replaced for this
///   boot (the README says to list the boot NIC there too).
/// - `allow-hotplug` interfaces come up through udev as
///   `ifup@<if>.service`, which stops (`ifdown <if>`) at shutdown; a
///   condition keeps the boot NIC's instance from starting while the boot
///   record exists, so it never runs and never stops.
///
/// Both cover every boot NIC and VLAN parent ([`all_links`]): the env
/// file is one `EXCLUDE_INTERFACES` line naming them all, space separated
/// as ifupdown reads it; one hotplug drop-in per interface. An interface
/// that ifupdown never brought up is not in its state, so `ifdown` leaves
/// it alone.
/// sysvinit's `/etc/init.d/networking` reads only `/etc/default/networking`.
fn ifupdown_files(rec: &BootRecord, nics: &[Nic<'_>]) -> Vec<(String, String)> {
    let names: Vec<&str> = all_links(nics).into_iter().map(|(l, _)| l).collect();
    let why = [
        "ifupdown must not configure the NIC carrying it: no DHCP client on it at",
        "boot, and no ifdown at shutdown while the root is still mounted.",
    ];
    let mut out = Vec::new();
    let mut env = header(rec, "#", &why);
    let _ = writeln!(env, "EXCLUDE_INTERFACES=\"{}\"", names.join(" "));
    let mut dropin = header(rec, "#", &why);
    let _ = writeln!(
        dropin,
        "[Service]\n# Read after /etc/default/networking: it replaces an EXCLUDE_INTERFACES\n\
         # set there, for this boot.\nEnvironmentFile=-/{IFUPDOWN_ENV}"
    );
    out.push((
        "run/systemd/system/networking.service.d/50-sanroot.conf".to_string(),
        dropin,
    ));
    out.push((IFUPDOWN_ENV.to_string(), env));
    for name in names {
        let mut s = header(rec, "#", &why);
        let _ = writeln!(
            s,
            "[Unit]\n# Skipped (not failed) while the boot record exists, so it never\n\
             # runs ifdown at shutdown either.\nConditionPathExists=!/{RECORD}"
        );
        out.push((
            format!(
                "run/systemd/system/ifup@{}.service.d/50-sanroot.conf",
                unit_escape(name)
            ),
            s,
        ));
    }
    out
}

/// `systemd-escape` of a unit instance: letters, digits, `:`, `_` and a
/// `.` that does not lead are kept, `/` becomes `-`, anything else `\xNN`.
fn unit_escape(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i > 0 => out.push('.'),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' => out.push(char::from(b)),
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// A value quoted as klibc ipconfig writes it: in single quotes, with
/// `'` and `!` written outside them.
fn kq(s: &str) -> String {
    let mut q = String::from("'");
    for c in s.chars() {
        match c {
            '\'' | '!' => {
                q.push_str("'\\");
                q.push(c);
                q.push('\'');
            }
            c => q.push(c),
        }
    }
    q.push('\'');
    q
}

/// `net-<if>.conf` (IPv4, and the DHCP/unknown case) and/or
/// `net6-<if>.conf` (IPv6): Debian's initramfs-tools writes the first
/// through klibc ipconfig, Ubuntu's the second for DHCPv6; Debian's
/// open-iscsi net-interface-handler reads both (DNS for resolvconf), and
/// cloud-init turns both into its network config (it accepts only
/// none/dhcp/dhcp6 as the protocol). A static NIC is "none"; one whose
/// address came from DHCP (the firmware's lease, or someone else's) is
/// "dhcp"/"dhcp6", as Debian's open-iscsi writes for a DHCP iBFT. One
/// NIC's files, with its own gateway; `root_server` is [`root_server`]'s.
fn klibc_files(rec: &BootRecord, n: &Nic<'_>, root_server: &str) -> Vec<(String, String)> {
    let dynamic = n.origin != "static";
    let v4 = n.addrs.iter().find(|(a, _)| a.is_ipv4()).copied();
    let v6 = n.addrs.iter().find(|(a, _)| a.is_ipv6()).copied();
    let dns = |want_v4: bool| -> Vec<String> {
        n.dns
            .iter()
            .filter(|d| d.is_ipv4() == want_v4)
            .map(IpAddr::to_string)
            .collect()
    };
    let why = [
        "Debian's initramfs convention (klibc ipconfig's format): open-iscsi's",
        "net-interface-handler and cloud-init read it.",
    ];
    let host = n.hostname.unwrap_or("");
    let domain = n.domain.unwrap_or("");
    let mut out = Vec::new();
    if v4.is_some() || v6.is_none() {
        let (addr, bcast, mask) = match v4 {
            Some((IpAddr::V4(a), p)) => {
                let m = prefix_to_mask(p);
                let b = Ipv4Addr::from(u32::from(a) | !u32::from(m));
                (a.to_string(), b.to_string(), m.to_string())
            }
            _ => Default::default(),
        };
        let gw = n
            .gateway
            .filter(IpAddr::is_ipv4)
            .map(|g| g.to_string())
            .unwrap_or_default();
        let d = dns(true);
        let mut s = header(rec, "#", &why);
        for (k, v) in [
            ("DEVICE", n.ifname),
            ("PROTO", if dynamic { "dhcp" } else { "none" }),
            ("IPV4ADDR", &addr),
            ("IPV4BROADCAST", &bcast),
            ("IPV4NETMASK", &mask),
            ("IPV4GATEWAY", &gw),
            ("IPV4DNS0", d.first().map_or("", String::as_str)),
            ("IPV4DNS1", d.get(1).map_or("", String::as_str)),
            ("HOSTNAME", host),
            ("DNSDOMAIN", domain),
            ("NISDOMAIN", ""),
            ("ROOTSERVER", root_server),
            ("ROOTPATH", ""),
            ("filename", ""),
            ("UPTIME", "0"),
            ("DHCPLEASETIME", "0"),
            ("DOMAINSEARCH", domain),
        ] {
            let _ = writeln!(s, "{k}={}", kq(v));
        }
        out.push((format!("net-{}.conf", n.ifname), s));
    }
    if let Some((a, p)) = v6 {
        let gw = n
            .gateway
            .filter(IpAddr::is_ipv6)
            .map(|g| g.to_string())
            .unwrap_or_default();
        let d = dns(false);
        let mut s = header(rec, "#", &why);
        for (k, v) in [
            ("DEVICE6", n.ifname),
            ("IPV6PROTO", if dynamic { "dhcp6" } else { "none" }),
            ("IPV6ADDR", &a.to_string()),
            ("IPV6NETMASK", &p.to_string()),
            ("IPV6GATEWAY", &gw),
            ("IPV6DNS0", d.first().map_or("", String::as_str)),
            ("IPV6DNS1", d.get(1).map_or("", String::as_str)),
            ("IPV6DOMAINSEARCH", domain),
            ("HOSTNAME", host),
            ("DNSDOMAIN", domain),
        ] {
            let _ = writeln!(s, "{k}={}", kq(v));
        }
        out.push((format!("net6-{}.conf", n.ifname), s));
    }
    out
}

/// Create `rel` (a relative directory) under `root`, each missing level
/// 0755 whatever the umask; existing directories are left as they are.
fn create_dirs(root: &Path, rel: &Path) -> io::Result<()> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(part) = c else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a plain relative path", rel.display()),
            ));
        };
        p.push(part);
        match DirBuilder::new().mode(DIR_MODE).create(&p) {
            Ok(()) => fs::set_permissions(&p, Permissions::from_mode(DIR_MODE))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        }
    }
    Ok(())
}

/// Write `path` through a hidden temporary file in the same directory
/// (named so that no reader's glob — *.conf, *.rules, *.network,
/// net-*.conf, *.nmconnection — can pick it up) and a rename, with
/// `mode` (0644; NetworkManager's keyfiles 0600, set before any byte is
/// written).
fn write_atomic(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: no file name", path.display()),
        ));
    };
    let tmp = dir.join(format!(".{}.sanroot-tmp", name.to_string_lossy()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // Whatever the umask, and for a left-over file of another mode.
        f.set_permissions(Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::boot::NicOrigin;
    use crate::iscsi::chap::MutualConfig;
    use crate::net::NicConfig;
    use crate::secret::Secret;

    const SECRET: &str = "planted-Secret-7f3a";

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("sanroot-handoff-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn auth() -> AuthConfig {
        AuthConfig {
            user: "iqn.2010-04.org.ipxe:client".into(),
            secret: Secret::from(SECRET),
            mutual: Some(MutualConfig {
                target_name: Some("iqn.2026-11.org.example:root".into()),
                secret: Secret::from("other-Secret-9b1c"),
            }),
        }
    }

    /// A boot record for tests (also [`super::super::nm`]'s).
    pub(crate) fn record(nic: Option<NicRecord>) -> BootRecord {
        BootRecord {
            version: VERSION,
            source: "ibft: acpi /sys/firmware/acpi/tables/iBFT".into(),
            target: "iqn.2026-11.org.example:root".into(),
            portal: portal("10.0.2.2".parse().unwrap(), 3260),
            lun: 1,
            initiator: "iqn.2010-04.org.ipxe:client".into(),
            isid: "80aabbccddee".into(),
            tsih: 7,
            device: "/dev/ublkb0".into(),
            partitions: vec!["/dev/ublkb0p1".into(), "/dev/ublkb0p2".into()],
            bridge: "ublk".into(),
            pid: 4242,
            nic,
            nics: Vec::new(),
            auth: auth_kind(Some(&auth())).into(),
            hidden_node_records: Vec::new(),
            paths: Vec::new(),
            networkmanager: "unmanaged".into(),
        }
    }

    fn static_nic() -> NicRecord {
        let mut c = NicConfig::new([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        c.addr = Some(("10.0.2.15".parse().unwrap(), 24));
        c.gateway = Some("10.0.2.2".parse().unwrap());
        c.dns = vec!["10.0.2.3".parse().unwrap()];
        let nic = BootNic {
            config: c,
            ifname: None,
            origin: NicOrigin::Static,
            hostname: Some("myhost".into()),
            domain: Some("example.org".into()),
            mtu: None,
        };
        NicRecord::from_boot_nic(&nic, "eth0", None)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn rel(root: &Path, paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// Every file and directory under `dir`.
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            }
            out.push(p);
        }
    }

    fn check_tree(root: &Path) {
        let mut all = Vec::new();
        walk(root, &mut all);
        for p in &all {
            let name = p.file_name().unwrap().to_string_lossy();
            assert!(
                !name.ends_with(".sanroot-tmp"),
                "left over: {}",
                p.display()
            );
            if p.is_dir() {
                assert_eq!(mode(p), 0o755, "{}", p.display());
            } else {
                let keyfile = name.ends_with(".nmconnection");
                assert_eq!(
                    mode(p),
                    if keyfile { 0o600 } else { 0o644 },
                    "{}",
                    p.display()
                );
                let text = fs::read_to_string(p).unwrap();
                assert!(!text.contains(SECRET), "{} holds the secret", p.display());
                assert!(
                    !text.contains("other-Secret"),
                    "{} holds the secret",
                    p.display()
                );
            }
        }
    }

    /// rd.sanroot.nm=native: NetworkManager's profile (0600, written 0600
    /// from the start) and device state instead of the unmanaged file; the
    /// other network managers' files as in unmanaged mode; the mode in the
    /// record. A bad mode in a record is refused before anything is written.
    #[test]
    fn native_networkmanager_hand_off() {
        let t = TempDir::new("nm-native");
        let mut nic = static_nic();
        nic.ifindex = Some(2);
        let mut rec = record(Some(nic));
        rec.networkmanager = "native".into();
        let paths = write(&t.0, &rec).unwrap();
        assert_eq!(
            rel(&t.0, &paths),
            [
                "run/systemd/system/iscsi.service.d/50-sanroot.conf",
                "run/systemd/system/open-iscsi.service.d/50-sanroot.conf",
                "run/udev/rules.d/61-sanroot-ublk.rules",
                "run/udev/rules.d/62-sanroot-second-login.rules",
                "run/sendsigs.omit.d/sanroot",
                "run/NetworkManager/system-connections/sanroot-eth0.nmconnection",
                "run/NetworkManager/devices/2",
                "run/NetworkManager/conf.d/90-sanroot.conf",
                "run/systemd/network/05-sanroot-eth0.network",
                "run/systemd/system/networking.service.d/50-sanroot.conf",
                "run/sanroot/ifupdown.env",
                "run/systemd/system/ifup@eth0.service.d/50-sanroot.conf",
                "run/net-eth0.conf",
                "run/initramfs/open-iscsi.interface",
                "run/sanroot/boot.json",
            ]
        );
        check_tree(&t.0);
        let k =
            t.0.join("run/NetworkManager/system-connections/sanroot-eth0.nmconnection");
        assert_eq!(mode(&k), 0o600);
        let text = fs::read_to_string(&k).unwrap();
        assert!(text.contains("\n[ipv4]\nmethod=manual\naddress1=10.0.2.15/24\ngateway=10.0.2.2\ndns=10.0.2.3;\ndns-search=example.org;\nroute1=10.0.2.2/32\nmay-fail=false\n"), "{text}");
        let conf =
            fs::read_to_string(t.0.join("run/NetworkManager/conf.d/90-sanroot.conf")).unwrap();
        assert!(conf.ends_with("[device-sanroot-boot]\nmatch-device=interface-name:=eth0\nignore-carrier=yes\nkeep-configuration=yes\n"), "{conf}");
        assert!(!conf.contains("managed=0"), "{conf}");
        assert!(
            fs::read_to_string(t.0.join(RECORD))
                .unwrap()
                .contains("\"networkmanager\": \"native\"")
        );
        assert_eq!(read(&t.0), Some(rec.clone()));
        // Written again: the same files, the keyfile still 0600.
        fs::set_permissions(&k, Permissions::from_mode(0o644)).unwrap();
        assert_eq!(write(&t.0, &rec).unwrap(), paths);
        check_tree(&t.0);

        let t2 = TempDir::new("nm-bad-mode");
        rec.networkmanager = "off".into();
        let e = write(&t2.0, &rec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("networkmanager \"off\""), "{e}");
        assert!(fs::read_dir(&t2.0).unwrap().next().is_none());
    }

    #[test]
    fn restore_missing_writes_back_only_what_was_removed() {
        let t = TempDir::new("restore");
        let rec = record(Some(static_nic()));
        write(&t.0, &rec).unwrap();
        let iface = t.0.join("run/initramfs/open-iscsi.interface");
        let nm = t.0.join("run/NetworkManager/conf.d/90-sanroot.conf");
        fs::remove_file(&iface).unwrap();
        fs::write(&nm, "edited\n").unwrap();
        let restored = restore_missing(&t.0, &rec).unwrap();
        assert_eq!(rel(&t.0, &restored), ["run/initramfs/open-iscsi.interface"]);
        assert_eq!(fs::read_to_string(&iface).unwrap(), "eth0\n");
        assert_eq!(fs::read_to_string(&nm).unwrap(), "edited\n");
        assert!(restore_missing(&t.0, &rec).unwrap().is_empty());
        check_tree(&t.0);
    }

    #[test]
    fn static_ipv4_hand_off() {
        let t = TempDir::new("v4");
        let rec = record(Some(static_nic()));
        let paths = write(&t.0, &rec).unwrap();
        assert_eq!(
            rel(&t.0, &paths),
            [
                "run/systemd/system/iscsi.service.d/50-sanroot.conf",
                "run/systemd/system/open-iscsi.service.d/50-sanroot.conf",
                "run/udev/rules.d/61-sanroot-ublk.rules",
                "run/udev/rules.d/62-sanroot-second-login.rules",
                "run/sendsigs.omit.d/sanroot",
                "run/NetworkManager/conf.d/90-sanroot.conf",
                "run/systemd/network/05-sanroot-eth0.network",
                "run/systemd/system/networking.service.d/50-sanroot.conf",
                "run/sanroot/ifupdown.env",
                "run/systemd/system/ifup@eth0.service.d/50-sanroot.conf",
                "run/net-eth0.conf",
                "run/initramfs/open-iscsi.interface",
                "run/sanroot/boot.json",
            ]
        );
        check_tree(&t.0);
        let read_back = |r: &str| fs::read_to_string(t.0.join(r)).unwrap();
        let head = "# Written by sanroot boot in the initramfs, for this boot only.\n\
                    # The root disk /dev/ublkb0 is served by the sanroot daemon (pid 4242) over its\n\
                    # own iSCSI session to iqn.2026-11.org.example:root at 10.0.2.2:3260.\n";

        let dropin = read_back("run/systemd/system/iscsi.service.d/50-sanroot.conf");
        assert_eq!(
            dropin,
            format!(
                "{head}\
                 # open-iscsi cannot see that session. A second login to that target\n\
                 # (iscsiadm -m fw -l, or a node login) would either make the target\n\
                 # drop the boot session (same initiator name and ISID) or show the\n\
                 # disk twice (another ISID). Logins to other targets are unchanged.\n\
                 [Service]\n\
                 # No firmware tables for this unit: iscsiadm -m fw -l finds no iBFT, as on\n\
                 # a machine without one. Node logins do not read them.\n\
                 TemporaryFileSystem=/sys/firmware\n\
                 # The boot target's node records are hidden for this boot (an empty\n\
                 # read-only tmpfs over /etc/iscsi/nodes/<target> and\n\
                 # /var/lib/iscsi/nodes/<target>; see hidden_node_records in\n\
                 # /run/sanroot/boot.json), so --loginall does not log in to it again.\n"
            )
        );
        assert_eq!(
            read_back("run/systemd/system/open-iscsi.service.d/50-sanroot.conf"),
            dropin
        );
        assert_eq!(
            read_back("run/udev/rules.d/61-sanroot-ublk.rules"),
            UBLK_RULES
        );
        assert!(UBLK_RULES.contains("KERNEL!=\"ublkb*\""));

        let nm = read_back("run/NetworkManager/conf.d/90-sanroot.conf");
        assert!(nm.starts_with(head), "{nm}");
        assert!(
            nm.ends_with(
                "[device-sanroot-boot]\n\
                 match-device=interface-name:=eth0,mac:52:54:00:12:34:56\n\
                 managed=0\n"
            ),
            "{nm}"
        );

        let why = "# ifupdown must not configure the NIC carrying it: no DHCP client on it at\n\
                   # boot, and no ifdown at shutdown while the root is still mounted.\n";
        assert_eq!(
            read_back("run/sanroot/ifupdown.env"),
            format!("{head}{why}EXCLUDE_INTERFACES=\"eth0\"\n")
        );
        assert_eq!(
            read_back("run/systemd/system/networking.service.d/50-sanroot.conf"),
            format!(
                "{head}{why}[Service]\n\
                 # Read after /etc/default/networking: it replaces an EXCLUDE_INTERFACES\n\
                 # set there, for this boot.\n\
                 EnvironmentFile=-/run/sanroot/ifupdown.env\n"
            )
        );
        assert_eq!(
            read_back("run/systemd/system/ifup@eth0.service.d/50-sanroot.conf"),
            format!(
                "{head}{why}[Unit]\n\
                 # Skipped (not failed) while the boot record exists, so it never\n\
                 # runs ifdown at shutdown either.\n\
                 ConditionPathExists=!/run/sanroot/boot.json\n"
            )
        );

        let nd = read_back("run/systemd/network/05-sanroot-eth0.network");
        assert_eq!(
            nd,
            format!(
                "{head}\
                 # systemd-networkd must not configure the NIC carrying it (Unmanaged=yes:\n\
                 # no up/down, no address or route flush, no reaction to carrier loss).\n\
                 [Match]\n\
                 Name=eth0\n\
                 MACAddress=52:54:00:12:34:56\n\
                 \n\
                 [Link]\n\
                 Unmanaged=yes\n"
            )
        );

        let klibc = read_back("run/net-eth0.conf");
        assert_eq!(
            klibc,
            format!(
                "{head}\
                 # Debian's initramfs convention (klibc ipconfig's format): open-iscsi's\n\
                 # net-interface-handler and cloud-init read it.\n\
                 DEVICE='eth0'\n\
                 PROTO='none'\n\
                 IPV4ADDR='10.0.2.15'\n\
                 IPV4BROADCAST='10.0.2.255'\n\
                 IPV4NETMASK='255.255.255.0'\n\
                 IPV4GATEWAY='10.0.2.2'\n\
                 IPV4DNS0='10.0.2.3'\n\
                 IPV4DNS1=''\n\
                 HOSTNAME='myhost'\n\
                 DNSDOMAIN='example.org'\n\
                 NISDOMAIN=''\n\
                 ROOTSERVER='10.0.2.2'\n\
                 ROOTPATH=''\n\
                 filename=''\n\
                 UPTIME='0'\n\
                 DHCPLEASETIME='0'\n\
                 DOMAINSEARCH='example.org'\n"
            )
        );
        assert_eq!(read_back("run/initramfs/open-iscsi.interface"), "eth0\n");

        let json = read_back(RECORD);
        assert!(json.contains("\"auth\": \"mutual-chap\""), "{json}");
        assert!(json.contains("\"portal\": \"10.0.2.2:3260\""), "{json}");
        assert_eq!(read(&t.0), Some(rec.clone()));

        // Writing again replaces every file in place.
        let again = write(&t.0, &rec).unwrap();
        assert_eq!(again, paths);
        check_tree(&t.0);
    }

    #[test]
    fn vlan_hand_off_covers_the_parent() {
        let t = TempDir::new("vlan");
        let mut nic = static_nic();
        nic.ifname = "eth0.100".into();
        nic.vlan = 100;
        nic.parent = Some("eth0".into());
        let rec = record(Some(nic));
        let paths = write(&t.0, &rec).unwrap();
        let names = rel(&t.0, &paths);
        assert!(names.contains(&"run/systemd/network/05-sanroot-eth0.100.network".to_string()));
        assert!(names.contains(&"run/systemd/network/05-sanroot-eth0.network".to_string()));
        assert!(names.contains(&"run/net-eth0.100.conf".to_string()));
        check_tree(&t.0);
        let get = |r: &str| fs::read_to_string(t.0.join(r)).unwrap();
        let v = get("run/systemd/network/05-sanroot-eth0.100.network");
        assert!(
            v.contains("[Match]\nName=eth0.100\n\n[Link]\nUnmanaged=yes\n"),
            "{v}"
        );
        assert!(!v.contains("MACAddress="), "{v}");
        let p = get("run/systemd/network/05-sanroot-eth0.network");
        assert!(
            p.contains("Name=eth0\nMACAddress=52:54:00:12:34:56\n"),
            "{p}"
        );
        let nm = get("run/NetworkManager/conf.d/90-sanroot.conf");
        assert!(
            nm.contains(
                "match-device=interface-name:=eth0.100,interface-name:=eth0,mac:52:54:00:12:34:56\n"
            ),
            "{nm}"
        );
        assert_eq!(get("run/initramfs/open-iscsi.interface"), "eth0.100\n");
        assert!(get("run/net-eth0.100.conf").contains("DEVICE='eth0.100'\n"));
        assert!(
            get("run/sanroot/ifupdown.env").ends_with("EXCLUDE_INTERFACES=\"eth0.100 eth0\"\n")
        );
        for unit in ["ifup@eth0.100.service", "ifup@eth0.service"] {
            assert!(names.contains(&format!("run/systemd/system/{unit}.d/50-sanroot.conf")));
        }
        assert_eq!(
            read(&t.0).unwrap().nic.unwrap().parent.as_deref(),
            Some("eth0")
        );
    }

    /// The second fabric's NIC: a VLAN on ens4, its own subnet and gateway.
    fn fabric_b_nic() -> NicRecord {
        let mut c = NicConfig::new([0x52, 0x54, 0, 0xab, 0xcd, 0x02]);
        c.vlan = 200;
        c.addr = Some(("192.168.20.15".parse().unwrap(), 24));
        c.gateway = Some("192.168.20.1".parse().unwrap());
        let nic = BootNic {
            config: c,
            ifname: None,
            origin: NicOrigin::FirmwareDhcp,
            hostname: None,
            domain: None,
            mtu: None,
        };
        NicRecord::from_boot_nic(&nic, "ens4.200", Some("ens4"))
    }

    fn path_state(portal: &str) -> crate::state::PathState {
        crate::state::PathState {
            portal: portal.into(),
            tpgt: Some(1),
            alua: None,
            state: "up".into(),
            active: true,
        }
    }

    /// A dual-fabric SAN: target 0 through eth0, target 1 through a VLAN
    /// on ens4. Both NICs (and the VLAN's parent) are left alone, each
    /// with its own gateway.
    #[test]
    fn every_boot_nic_is_handed_off() {
        let t = TempDir::new("two-nics");
        let a = static_nic();
        let b = fabric_b_nic();
        let mut rec = record(Some(a.clone()));
        rec.nics = vec![a.clone(), b.clone()];
        rec.paths = vec![path_state("10.0.2.2:3260"), path_state("192.168.20.2:3260")];
        let paths = write(&t.0, &rec).unwrap();
        assert_eq!(
            rel(&t.0, &paths),
            [
                "run/systemd/system/iscsi.service.d/50-sanroot.conf",
                "run/systemd/system/open-iscsi.service.d/50-sanroot.conf",
                "run/udev/rules.d/61-sanroot-ublk.rules",
                "run/udev/rules.d/62-sanroot-second-login.rules",
                "run/sendsigs.omit.d/sanroot",
                "run/NetworkManager/conf.d/90-sanroot.conf",
                "run/systemd/network/05-sanroot-eth0.network",
                "run/systemd/network/05-sanroot-ens4.200.network",
                "run/systemd/network/05-sanroot-ens4.network",
                "run/systemd/system/networking.service.d/50-sanroot.conf",
                "run/sanroot/ifupdown.env",
                "run/systemd/system/ifup@eth0.service.d/50-sanroot.conf",
                "run/systemd/system/ifup@ens4.200.service.d/50-sanroot.conf",
                "run/systemd/system/ifup@ens4.service.d/50-sanroot.conf",
                "run/net-eth0.conf",
                "run/net-ens4.200.conf",
                "run/initramfs/open-iscsi.interface",
                "run/sanroot/boot.json",
            ]
        );
        check_tree(&t.0);
        let get = |r: &str| fs::read_to_string(t.0.join(r)).unwrap();

        // One NetworkManager section lists every interface and MAC.
        let nm = get("run/NetworkManager/conf.d/90-sanroot.conf");
        assert!(
            nm.ends_with(
                "[device-sanroot-boot]\n\
                 match-device=interface-name:=eth0,mac:52:54:00:12:34:56,\
                 interface-name:=ens4.200,interface-name:=ens4,mac:52:54:00:ab:cd:02\n\
                 managed=0\n"
            ),
            "{nm}"
        );
        assert_eq!(
            nm.lines().filter(|l| l.starts_with("[device-")).count(),
            1,
            "{nm}"
        );

        // networkd: the VLAN by name, its parent and eth0 by name and MAC.
        let v = get("run/systemd/network/05-sanroot-ens4.200.network");
        assert!(
            v.contains("[Match]\nName=ens4.200\n\n[Link]\nUnmanaged=yes\n"),
            "{v}"
        );
        let p = get("run/systemd/network/05-sanroot-ens4.network");
        assert!(
            p.contains("Name=ens4\nMACAddress=52:54:00:ab:cd:02\n\n[Link]\nUnmanaged=yes\n"),
            "{p}"
        );
        let e = get("run/systemd/network/05-sanroot-eth0.network");
        assert!(
            e.contains("Name=eth0\nMACAddress=52:54:00:12:34:56\n"),
            "{e}"
        );

        // ifupdown: one variable naming all three, as ifupdown splits it.
        let env = get("run/sanroot/ifupdown.env");
        assert!(
            env.ends_with("EXCLUDE_INTERFACES=\"eth0 ens4.200 ens4\"\n"),
            "{env}"
        );
        assert_eq!(env.matches("EXCLUDE_INTERFACES=").count(), 1, "{env}");

        // klibc: each NIC with its own gateway (its routes) and its own
        // fabric's portal as the root server.
        let k0 = get("run/net-eth0.conf");
        for want in [
            "DEVICE='eth0'\n",
            "IPV4ADDR='10.0.2.15'\n",
            "IPV4GATEWAY='10.0.2.2'\n",
            "ROOTSERVER='10.0.2.2'\n",
        ] {
            assert!(k0.contains(want), "{want} not in {k0}");
        }
        let k1 = get("run/net-ens4.200.conf");
        for want in [
            "DEVICE='ens4.200'\n",
            "PROTO='dhcp'\n",
            "IPV4ADDR='192.168.20.15'\n",
            "IPV4NETMASK='255.255.255.0'\n",
            "IPV4GATEWAY='192.168.20.1'\n",
            "ROOTSERVER='192.168.20.2'\n",
        ] {
            assert!(k1.contains(want), "{want} not in {k1}");
        }
        // Debian's reader takes one line: the first NIC's.
        assert_eq!(get("run/initramfs/open-iscsi.interface"), "eth0\n");

        // The record carries every NIC and reads back whole.
        let json = get(RECORD);
        assert!(json.contains("\"nics\": ["), "{json}");
        assert!(json.contains("\"ifname\": \"ens4.200\""), "{json}");
        let back = read(&t.0).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.nics, [a, b]);
    }

    /// A NIC of another fabric whose portal is on no subnet of it (routed
    /// through its gateway) names the boot portal, as a single NIC does.
    #[test]
    fn root_server_falls_back_to_the_boot_portal() {
        let mut rec = record(Some(static_nic()));
        let b = fabric_b_nic();
        rec.nics = vec![static_nic(), b.clone()];
        let n = Nic::check("nics[1]", &b).unwrap();
        assert_eq!(root_server(&rec, &n, false), "10.0.2.2");
        rec.paths = vec![
            path_state("[fd00::2]:3260"),
            path_state("192.168.20.9:3260"),
        ];
        assert_eq!(root_server(&rec, &n, false), "192.168.20.9");
        // The first NIC always names the boot portal.
        assert_eq!(root_server(&rec, &n, true), "10.0.2.2");
        rec.portal = "[fd00::2]:3260".into();
        assert_eq!(root_server(&rec, &n, true), "");
    }

    /// Each interface once: the first path's NIC repeated in `nics`, two
    /// VLANs on one parent, a VLAN beside its untagged parent.
    #[test]
    fn every_interface_once() {
        let t = TempDir::new("dedupe");
        let a = static_nic();
        let mut v1 = a.clone();
        v1.ifname = "eth0.100".into();
        v1.vlan = 100;
        v1.parent = Some("eth0".into());
        v1.addresses = vec!["10.0.100.15/24".into()];
        let mut v2 = v1.clone();
        v2.ifname = "eth0.200".into();
        v2.vlan = 200;
        v2.addresses = vec!["10.0.200.15/24".into()];
        assert_eq!(
            unique_nics([&a, &v1, &a, &v2, &v1])
                .iter()
                .map(|n| n.ifname.as_str())
                .collect::<Vec<_>>(),
            ["eth0", "eth0.100", "eth0.200"]
        );
        let mut rec = record(Some(a.clone()));
        rec.nics = vec![a.clone(), v1, a, v2];
        let paths = write(&t.0, &rec).unwrap();
        let names = rel(&t.0, &paths);
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{names:?}");
        for f in [
            "run/systemd/network/05-sanroot-eth0.network",
            "run/systemd/network/05-sanroot-eth0.100.network",
            "run/systemd/network/05-sanroot-eth0.200.network",
            "run/net-eth0.conf",
            "run/net-eth0.100.conf",
            "run/net-eth0.200.conf",
        ] {
            assert!(names.contains(&f.to_string()), "{f} not in {names:?}");
        }
        let get = |r: &str| fs::read_to_string(t.0.join(r)).unwrap();
        assert!(
            get("run/sanroot/ifupdown.env")
                .ends_with("EXCLUDE_INTERFACES=\"eth0 eth0.100 eth0.200\"\n")
        );
        let nm = get("run/NetworkManager/conf.d/90-sanroot.conf");
        assert!(
            nm.contains(
                "match-device=interface-name:=eth0,mac:52:54:00:12:34:56,\
                 interface-name:=eth0.100,interface-name:=eth0.200\n"
            ),
            "{nm}"
        );
        // The parent keeps its MAC match although a VLAN named it first
        // elsewhere; the VLANs match by name only.
        assert!(get("run/systemd/network/05-sanroot-eth0.network").contains("MACAddress="));
        assert!(!get("run/systemd/network/05-sanroot-eth0.100.network").contains("MACAddress="));
    }

    /// A record written before `nics` existed reads back (with `nics`
    /// empty) and plans exactly as a one-NIC record does; `nics` holding
    /// just that NIC changes nothing but the record itself.
    #[test]
    fn a_record_without_nics_plans_as_before() {
        let rec = record(Some(static_nic()));
        let mut old = serde_json::to_value(&rec).unwrap();
        assert!(old.as_object_mut().unwrap().remove("nics").is_some());
        let old: BootRecord = serde_json::from_value(old).unwrap();
        assert!(old.nics.is_empty());
        assert_eq!(old, rec);
        let before = plan(&old).unwrap();
        assert_eq!(
            before
                .iter()
                .map(|(p, _, _)| p.as_str())
                .collect::<Vec<_>>(),
            [
                "run/systemd/system/iscsi.service.d/50-sanroot.conf",
                "run/systemd/system/open-iscsi.service.d/50-sanroot.conf",
                "run/udev/rules.d/61-sanroot-ublk.rules",
                "run/udev/rules.d/62-sanroot-second-login.rules",
                "run/sendsigs.omit.d/sanroot",
                "run/NetworkManager/conf.d/90-sanroot.conf",
                "run/systemd/network/05-sanroot-eth0.network",
                "run/systemd/system/networking.service.d/50-sanroot.conf",
                "run/sanroot/ifupdown.env",
                "run/systemd/system/ifup@eth0.service.d/50-sanroot.conf",
                "run/net-eth0.conf",
                "run/initramfs/open-iscsi.interface",
                "run/sanroot/boot.json",
            ]
        );
        let mut new = rec.clone();
        new.nics = vec![static_nic()];
        let after = plan(&new).unwrap();
        let n = before.len();
        assert_eq!(after.len(), n);
        assert_eq!(after[..n - 1], before[..n - 1]);
        assert!(after[n - 1].1.contains("\"nics\": ["));
        // The same, read from the JSON of an old record as text.
        let text = r#"{"version": 1, "source": "ibft", "target": "iqn.2026-11.org.example:root",
            "portal": "10.0.2.2:3260", "lun": 1, "initiator": "iqn.x:y", "isid": "80aabbccddee",
            "tsih": 7, "device": "/dev/ublkb0", "partitions": [], "bridge": "ublk", "pid": 1,
            "nic": {"ifname": "eth0", "mac": "52:54:00:12:34:56", "vlan": 0,
                    "addresses": ["10.0.2.15/24"], "gateway": "10.0.2.2", "dns": [],
                    "origin": "static", "hostname": null, "domain": null, "parent": null},
            "auth": "none"}"#;
        let old: BootRecord = serde_json::from_str(text).unwrap();
        assert!(old.nics.is_empty() && old.paths.is_empty());
        // Older records were written when every boot NIC was unmanaged.
        assert_eq!(old.networkmanager, "unmanaged");
        assert_eq!(old.nic.as_ref().unwrap().ifindex, None);
        let files = plan(&old).unwrap();
        assert!(files.iter().any(|(p, _, _)| p == "run/net-eth0.conf"));
        assert!(
            files
                .iter()
                .any(|(p, _, _)| p == "run/NetworkManager/conf.d/90-sanroot.conf")
        );
        assert_eq!(
            files
                .iter()
                .find(|(p, _, _)| p == "run/initramfs/open-iscsi.interface")
                .map(|(_, c, _)| c.as_str()),
            Some("eth0\n")
        );
    }

    #[test]
    fn a_bad_nic_in_nics_is_refused_before_writing() {
        let t = TempDir::new("unsafe-nics");
        let mut bad = fabric_b_nic();
        bad.gateway = Some("gw\nExecStart=/bin/evil".into());
        let mut rec = record(Some(static_nic()));
        rec.nics = vec![static_nic(), bad];
        let e = write(&t.0, &rec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("nics[1].gateway"), "{e}");
        let mut rec = record(None);
        let mut bad = fabric_b_nic();
        bad.parent = Some("../x".into());
        rec.nics = vec![bad];
        let e = write(&t.0, &rec).unwrap_err();
        assert!(e.to_string().contains("nics[0].parent"), "{e}");
        assert_eq!(
            fs::read_dir(&t.0).unwrap().count(),
            0,
            "something was written"
        );
    }

    #[test]
    fn ipv6_hand_off() {
        let t = TempDir::new("v6");
        let mut c = NicConfig::new([0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        c.addr = Some(("fd00::15".parse().unwrap(), 64));
        c.gateway = Some("fd00::1".parse().unwrap());
        c.dns = vec!["fd00::53".parse().unwrap(), "10.0.2.3".parse().unwrap()];
        let nic = BootNic {
            config: c,
            ifname: None,
            origin: NicOrigin::FirmwareDhcp,
            hostname: None,
            domain: None,
            mtu: None,
        };
        let mut rec = record(Some(NicRecord::from_boot_nic(&nic, "ens3", None)));
        rec.portal = portal("fd00::2".parse().unwrap(), 3260);
        rec.auth = auth_kind(None).into();
        assert_eq!(rec.portal, "[fd00::2]:3260");
        let paths = write(&t.0, &rec).unwrap();
        let names = rel(&t.0, &paths);
        assert!(
            names.contains(&"run/net6-ens3.conf".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"run/net-ens3.conf".to_string()),
            "{names:?}"
        );
        check_tree(&t.0);
        let k = fs::read_to_string(t.0.join("run/net6-ens3.conf")).unwrap();
        let body: Vec<&str> = k.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "DEVICE6='ens3'",
                "IPV6PROTO='dhcp6'",
                "IPV6ADDR='fd00::15'",
                "IPV6NETMASK='64'",
                "IPV6GATEWAY='fd00::1'",
                "IPV6DNS0='fd00::53'",
                "IPV6DNS1=''",
                "IPV6DOMAINSEARCH=''",
                "HOSTNAME=''",
                "DNSDOMAIN=''",
            ]
        );
        let back = read(&t.0).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.auth, "none");
        assert!(is_boot_target(
            &back,
            "IQN.2026-11.org.example:ROOT",
            "[fd00::2]"
        ));
        assert!(is_boot_target(
            &back,
            "iqn.2026-11.org.example:root",
            "fd00:0::2"
        ));
        assert!(!is_boot_target(
            &back,
            "iqn.2026-11.org.example:root",
            "fd00::3"
        ));
    }

    #[test]
    fn no_nic_writes_only_the_iscsi_files() {
        let t = TempDir::new("nonic");
        let mut rec = record(None);
        rec.target = "iqn.2026-11.org.Example:Root".into();
        let paths = write(&t.0, &rec).unwrap();
        assert_eq!(
            rel(&t.0, &paths),
            [
                "run/systemd/system/iscsi.service.d/50-sanroot.conf",
                "run/systemd/system/open-iscsi.service.d/50-sanroot.conf",
                "run/udev/rules.d/61-sanroot-ublk.rules",
                "run/udev/rules.d/62-sanroot-second-login.rules",
                "run/sendsigs.omit.d/sanroot",
                "run/sanroot/boot.json",
            ]
        );
        check_tree(&t.0);
        assert_eq!(
            fs::read_to_string(t.0.join("run/sendsigs.omit.d/sanroot")).unwrap(),
            format!("{}\n", rec.pid)
        );
        // A second login's disk: both spellings of the name, after
        // ID_PATH is known; logged, lowest link priority, not for systemd.
        let r = fs::read_to_string(&paths[3]).unwrap();
        let rule = r.lines().find(|l| l.starts_with("ACTION")).unwrap();
        assert!(
            rule.contains(r#"ENV{ID_PATH}=="*-iscsi-iqn.2026-11.org.Example:Root-lun-*|*-iscsi-iqn.2026-11.org.example:root-lun-*""#),
            "{rule}"
        );
        for want in [
            r#"OPTIONS+="link_priority=-100""#,
            r#"ENV{SYSTEMD_READY}="0""#,
            ">/dev/kmsg'\"",
            "root disk /dev/ublkb0",
        ] {
            assert!(rule.contains(want), "{want} not in {rule}");
        }
        // A name that is no plain iSCSI name gets no rule (it would be a
        // glob or a shell word); the rest of the hand-off is written.
        let mut odd = rec.clone();
        odd.target = "iqn.x:a*b".into();
        assert!(second_login_rules(&odd).is_none());
        odd.target = "iqn.x:a b'; reboot".into();
        assert!(second_login_rules(&odd).is_none());
        // Nothing edits the node database on the root disk.
        let d = fs::read_to_string(&paths[0]).unwrap();
        assert!(
            !d.contains("ExecStartPre") && !d.contains("-o update"),
            "{d}"
        );
    }

    #[test]
    fn unsafe_values_are_refused_before_writing() {
        let t = TempDir::new("unsafe");
        for (what, bad) in [
            ("nic.ifname", {
                let mut n = static_nic();
                n.ifname = "../../etc/x".into();
                n
            }),
            ("nic.parent", {
                let mut n = static_nic();
                n.parent = Some("eth 0".into());
                n
            }),
            ("nic.addresses", {
                let mut n = static_nic();
                n.addresses = vec!["10.0.2.15".into()];
                n
            }),
            ("nic.gateway", {
                let mut n = static_nic();
                n.gateway = Some("gw\nExecStart=/bin/evil".into());
                n
            }),
            ("nic.mac", {
                let mut n = static_nic();
                n.mac = "zz".into();
                n
            }),
            ("nic.hostname", {
                let mut n = static_nic();
                n.hostname = Some("h\n[Link]".into());
                n
            }),
        ] {
            let e = write(&t.0, &record(Some(bad))).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
        assert_eq!(
            fs::read_dir(&t.0).unwrap().count(),
            0,
            "something was written"
        );
        // A target name a unit file cannot carry is refused or inert.
        let mut rec = record(None);
        rec.target = "iqn.x:y%n\nExecStart=/bin/sh".into();
        write(&t.0, &rec).unwrap();
        let d = fs::read_to_string(t.0.join("run/systemd/system/iscsi.service.d/50-sanroot.conf"))
            .unwrap();
        assert!(
            !d.contains("ExecStartPre") && !d.contains("\nExecStart="),
            "{d}"
        );
        assert!(d.contains("TemporaryFileSystem=/sys/firmware"), "{d}");
    }

    #[test]
    fn unknown_mac_and_dynamic_origin() {
        let t = TempDir::new("nomac");
        let nic = NicRecord {
            ifname: "eth1".into(),
            mac: "00:00:00:00:00:00".into(),
            vlan: 0,
            addresses: Vec::new(),
            gateway: None,
            dns: Vec::new(),
            origin: "external".into(),
            hostname: None,
            domain: None,
            parent: None,
            ifindex: None,
            target: None,
        };
        write(&t.0, &record(Some(nic))).unwrap();
        check_tree(&t.0);
        let nm = fs::read_to_string(t.0.join("run/NetworkManager/conf.d/90-sanroot.conf")).unwrap();
        assert!(nm.contains("match-device=interface-name:=eth1\n"), "{nm}");
        let nd =
            fs::read_to_string(t.0.join("run/systemd/network/05-sanroot-eth1.network")).unwrap();
        assert!(!nd.contains("MACAddress"), "{nd}");
        let k = fs::read_to_string(t.0.join("run/net-eth1.conf")).unwrap();
        assert!(k.contains("PROTO='dhcp'\nIPV4ADDR=''\n"), "{k}");
    }

    #[test]
    fn read_is_none_without_a_complete_record() {
        let t = TempDir::new("read");
        assert_eq!(read(&t.0), None);
        create_dirs(&t.0, Path::new("run/sanroot")).unwrap();
        fs::write(t.0.join(RECORD), "{\"version\": 1").unwrap();
        assert_eq!(read(&t.0), None);
    }

    #[test]
    fn boot_target_comparison() {
        let rec = record(None);
        assert!(is_boot_target(
            &rec,
            "iqn.2026-11.org.example:root",
            "10.0.2.2"
        ));
        assert!(is_boot_target(
            &rec,
            " IQN.2026-11.ORG.EXAMPLE:ROOT ",
            "10.0.2.2:3260"
        ));
        assert!(is_boot_target(
            &rec,
            "iqn.2026-11.org.example:root",
            "::ffff:10.0.2.2"
        ));
        assert!(is_boot_target(
            &rec,
            "iqn.2026-11.org.example:root",
            "[::ffff:10.0.2.2]:3261"
        ));
        assert!(!is_boot_target(
            &rec,
            "iqn.2026-11.org.example:data",
            "10.0.2.2"
        ));
        assert!(!is_boot_target(
            &rec,
            "iqn.2026-11.org.example:root",
            "10.0.2.3"
        ));
        assert!(!is_boot_target(
            &rec,
            "iqn.2026-11.org.example:root",
            "san.example"
        ));
        let mut named = rec.clone();
        named.portal = "san.example:3260".into();
        assert!(is_boot_target(
            &named,
            "iqn.2026-11.org.example:root",
            "SAN.example"
        ));
        assert!(!is_boot_target(
            &named,
            "iqn.2026-11.org.example:root",
            "10.0.2.2"
        ));
    }

    #[test]
    fn helpers() {
        // As systemd-escape prints them.
        assert_eq!(unit_escape("ens3"), "ens3");
        assert_eq!(unit_escape("eth0.100"), "eth0.100");
        assert_eq!(unit_escape("br-lan"), "br\\x2dlan");
        assert_eq!(unit_escape("a@b+c_d:e"), "a\\x40b\\x2bc_d:e");
        assert_eq!(unit_escape(".x"), "\\x2ex");
        assert_eq!(kq("it's!"), "'it'\\''s'\\!''");
        assert_eq!(auth_kind(None), "none");
        let mut one_way = auth();
        one_way.mutual = None;
        assert_eq!(auth_kind(Some(&one_way)), "chap");
        assert_eq!(auth_kind(Some(&auth())), "mutual-chap");
        assert_eq!(bare_host("[fd00::2]:3260"), "fd00::2");
        assert_eq!(bare_host("h.example:3260"), "h.example");
        assert_eq!(bare_host("fd00::2"), "fd00::2");
        let r = NicRecord::from_boot_nic(
            &BootNic {
                config: NicConfig::new([1, 2, 3, 4, 5, 6]),
                ifname: Some("eth9".into()),
                origin: NicOrigin::External,
                hostname: None,
                domain: None,
                mtu: None,
            },
            "eth9",
            None,
        );
        assert_eq!(
            (r.mac.as_str(), r.origin.as_str()),
            ("01:02:03:04:05:06", "external")
        );
        assert!(r.addresses.is_empty());
    }
}
