//! `sanroot boot`: the root disk from the iBFT or dracut's command line.
//!
//! - [`cmdline`]: dracut's `netroot=iscsi:…`, `ip=`, `rd.iscsi.*` options
//!   parsed into [`BootPath`]s (pure).
//! - [`handoff`]: what is left under /run for the real root: the session
//!   record, and the settings that keep open-iscsi and the network managers
//!   away from the boot session and NIC.
//! - the flow itself (this file): source → NIC → login (second path on
//!   failure) → bridge → partitions → hand-off → resident daemon.
//! - [`init`]: the same as the whole initramfs: sanroot as /init (PID 1)
//!   and as the shutdown program power-off returns to; [`modules`] loads
//!   its module list.

pub mod cmdline;
pub mod flow;
pub mod handoff;
pub mod hide;
pub mod init;
pub mod modules;
pub mod nm;
pub mod openiscsi;
pub mod parts;
pub mod poweroff;
pub mod rootdev;

use std::net::IpAddr;

use crate::iscsi::chap::AuthConfig;
use crate::net::NicConfig;

/// How the boot NIC got its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicOrigin {
    /// Set by hand (iBFT origin manual, or `ip=<addr>:…:none`).
    Static,
    /// The firmware's DHCP lease, applied as is (iBFT origin dhcp).
    FirmwareDhcp,
    /// Already configured before sanroot ran (dracut's network module,
    /// `ip=dhcp`); sanroot only uses it.
    External,
}

impl NicOrigin {
    pub fn name(self) -> &'static str {
        match self {
            NicOrigin::Static => "static",
            NicOrigin::FirmwareDhcp => "dhcp",
            NicOrigin::External => "external",
        }
    }
}

/// The network side of a path.
#[derive(Debug, Clone)]
pub struct BootNic {
    /// What to configure. The MAC may be unknown (all zero) when the
    /// command line names an interface instead: [`BootNic::ifname`].
    pub config: NicConfig,
    /// Interface named by the source (`ip=…:eth0:…`, netroot's netdev).
    pub ifname: Option<String>,
    pub origin: NicOrigin,
    pub hostname: Option<String>,
    /// DNS search domain when the source gives one.
    pub domain: Option<String>,
    pub mtu: Option<u32>,
}

/// One way to reach the root LUN: a NIC (or none when the network is
/// already up), a portal, a target, a LUN and its CHAP settings.
#[derive(Debug, Clone)]
pub struct BootPath {
    pub nic: Option<BootNic>,
    /// Portal address: an IP literal.
    pub host: IpAddr,
    pub port: u16,
    pub target: String,
    pub lun: u64,
    /// No LUN was given: `lun` if it is a disk, else the target's first
    /// disk ([`crate::lun::pick_disk`]).
    pub lun_auto: bool,
    pub auth: Option<AuthConfig>,
}

/// Everything `sanroot boot` needs, whichever source it came from.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// "ibft (acpi /sys/firmware/acpi/tables/iBFT)", "cmdline", …
    pub source: String,
    pub initiator: Option<String>,
    /// The boot path first, then the others (second iBFT target, more
    /// netroot= arguments), tried in order.
    pub paths: Vec<BootPath>,
}

/// Undo a backslash escape of one byte in three characters: mountinfo's
/// `\\ooo` and udev's `\\xHH`. `decode` gets the three characters after the
/// backslash; anything it refuses is kept as written.
pub(crate) fn unescape_byte3(s: &str, decode: impl Fn(&[u8]) -> Option<u8>) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'\\'
            && let Some(v) = b.get(i + 1..i + 4).and_then(&decode)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the hand-off lives: "/" (its files are under /run), or
/// `$SANROOT_HANDOFF_ROOT` for tests.
pub fn handoff_root() -> std::path::PathBuf {
    std::env::var_os("SANROOT_HANDOFF_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/"))
}

/// The boot session's device and daemon pid when (`target`, `host`) is
/// the target this machine booted from (per the hand-off record).
pub fn boot_session_for(target: &str, host: &str) -> Option<(String, u32)> {
    // Any portal of the boot target counts: with the same initiator name a
    // second session either reinstates ours (same ISID) or shows the disk
    // twice (another ISID).
    let rec = handoff::read(&handoff_root())?;
    (handoff::is_boot_target(&rec, target, host) || rec.target.eq_ignore_ascii_case(target.trim()))
        .then(|| (rec.device.clone(), rec.pid))
}
