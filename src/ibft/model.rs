//! Plain values for what an iBFT says, independent of where it came from.
//!
//! [`Ibft`] is what the rest of sanroot uses: the boot flow reads the boot
//! target and its NIC from it, `sanroot ibft` prints it. It is produced by the
//! raw-table parser (`parse.rs`) or by the kernel's sysfs view (`sysfs.rs`),
//! and can be emitted back to raw bytes (`emit.rs`) for tests and fuzzing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::secret::Secret;

/// Table signatures seen in the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// "iBFT", the spec's signature.
    Ibft,
    /// "IBFT", seen on some older firmware.
    IbftUpper,
    /// "BIFT", Broadcom offload firmware.
    Bift,
}

impl Signature {
    pub fn from_bytes(b: &[u8]) -> Option<Signature> {
        match b {
            b"iBFT" => Some(Signature::Ibft),
            b"IBFT" => Some(Signature::IbftUpper),
            b"BIFT" => Some(Signature::Bift),
            _ => None,
        }
    }
    pub fn as_bytes(self) -> &'static [u8; 4] {
        match self {
            Signature::Ibft => b"iBFT",
            Signature::IbftUpper => b"IBFT",
            Signature::Bift => b"BIFT",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Signature::Ibft => "iBFT",
            Signature::IbftUpper => "IBFT",
            Signature::Bift => "BIFT",
        }
    }
}

/// The ACPI-style header of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableHeader {
    pub signature: Signature,
    pub length: u32,
    pub revision: u8,
    pub checksum: u8,
    /// Whether the bytes sum to zero; `None` when unknown (sysfs source).
    pub checksum_ok: Option<bool>,
    pub oem_id: String,
    pub oem_table_id: String,
}

/// How a NIC got its address (iBFT "origin", from the IP prefix origin
/// values of RFC 4293).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Other,
    Manual,
    WellKnown,
    Dhcp,
    RouterAdvertisement,
    Unchanged,
    Unknown(u8),
}

impl Origin {
    pub fn from_u8(v: u8) -> Origin {
        match v {
            0 => Origin::Other,
            1 => Origin::Manual,
            2 => Origin::WellKnown,
            3 => Origin::Dhcp,
            4 => Origin::RouterAdvertisement,
            15 => Origin::Unchanged,
            n => Origin::Unknown(n),
        }
    }
    pub fn to_u8(self) -> u8 {
        match self {
            Origin::Other => 0,
            Origin::Manual => 1,
            Origin::WellKnown => 2,
            Origin::Dhcp => 3,
            Origin::RouterAdvertisement => 4,
            Origin::Unchanged => 15,
            Origin::Unknown(n) => n,
        }
    }
    /// The JSON / display name: "manual", "dhcp", "ra", ...
    pub fn name(self) -> String {
        match self {
            Origin::Other => "other".into(),
            Origin::Manual => "manual".into(),
            Origin::WellKnown => "well-known".into(),
            Origin::Dhcp => "dhcp".into(),
            Origin::RouterAdvertisement => "ra".into(),
            Origin::Unchanged => "unchanged".into(),
            Origin::Unknown(n) => format!("unknown-{n}"),
        }
    }
}

/// CHAP as the target structure asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapType {
    None,
    OneWay,
    Mutual,
}

impl ChapType {
    pub fn from_u8(v: u8) -> Option<ChapType> {
        match v {
            0 => Some(ChapType::None),
            1 => Some(ChapType::OneWay),
            2 => Some(ChapType::Mutual),
            _ => None,
        }
    }
    pub fn to_u8(self) -> u8 {
        match self {
            ChapType::None => 0,
            ChapType::OneWay => 1,
            ChapType::Mutual => 2,
        }
    }
    /// The JSON name: "none", "chap" or "mutual".
    pub fn name(self) -> &'static str {
        match self {
            ChapType::None => "none",
            ChapType::OneWay => "chap",
            ChapType::Mutual => "mutual",
        }
    }
}

/// How the 8 LUN bytes were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LunEncoding {
    /// SAM order (SAM-5 4.7), as iPXE and EDK2 write it.
    Sam,
    /// A little-endian quad word, as u-root and FreeBSD write it.
    LittleEndian,
    /// Could not be known exactly (sysfs prints the bytes ambiguously).
    Guessed,
}

impl LunEncoding {
    pub fn name(self) -> &'static str {
        match self {
            LunEncoding::Sam => "sam",
            LunEncoding::LittleEndian => "le64",
            LunEncoding::Guessed => "guessed",
        }
    }
}

/// A logical unit number: the raw 8 bytes and the number they stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lun {
    pub raw: [u8; 8],
    pub number: u64,
    pub encoding: LunEncoding,
}

impl Lun {
    /// Decode the 8 bytes of a target structure.
    ///
    /// SAM order is the norm (iPXE, EDK2). A few producers (u-root,
    /// FreeBSD) follow the spec text's "little endian quad word" instead.
    /// The two can only be told apart by shape: a small LUN N written
    /// little-endian is `N 00 00 ...`, which read as SAM would be LUN N*256
    /// (iPXE's 16-bit groups) or a peripheral address on bus N; targets
    /// almost never use such numbers, while LUNs 1..255 are everywhere. So
    /// exactly that shape is read as little-endian; everything else as SAM.
    /// The raw bytes are always kept so a wrong guess can be seen.
    pub fn decode(raw: [u8; 8]) -> Lun {
        let rest_zero = raw[1..].iter().all(|b| *b == 0);
        if rest_zero && raw[0] != 0 && raw[0] & 0xc0 == 0 {
            return Lun {
                raw,
                number: u64::from(raw[0]),
                encoding: LunEncoding::LittleEndian,
            };
        }
        Lun {
            raw,
            number: sam_lun_number(&raw),
            encoding: LunEncoding::Sam,
        }
    }

    /// The SAM encoding of LUN `n` (what iPXE writes): single-level
    /// peripheral addressing below 256, flat space addressing up to 16383,
    /// otherwise the Linux-style 16-bit groups.
    pub fn from_number(n: u64) -> Lun {
        Lun {
            raw: crate::scsi::data::lun_to_bytes(n),
            number: n,
            encoding: LunEncoding::Sam,
        }
    }

    pub fn raw_hex(&self) -> String {
        self.raw.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The LUN number of 8 SAM-ordered bytes.
///
/// Single-level peripheral (method 00) and flat space (method 01) addresses
/// give the number a user types; anything multi-level falls back to the
/// Linux `scsilun_to_int` form so it still round-trips with the kernel.
pub fn sam_lun_number(raw: &[u8; 8]) -> u64 {
    let single_level = raw[2..].iter().all(|b| *b == 0);
    let method = raw[0] >> 6;
    if single_level && (method == 0 || method == 1) {
        return (u64::from(raw[0] & 0x3f) << 8) | u64::from(raw[1]);
    }
    raw.chunks_exact(2).enumerate().fold(0u64, |acc, (i, c)| {
        acc | (u64::from(u16::from_be_bytes([c[0], c[1]])) << (16 * i))
    })
}

/// A structure's place in the raw table, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Place {
    /// Byte offset of the structure in the table (0 when not from a table).
    pub offset: usize,
    pub flags: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiator {
    pub place: Place,
    pub index: u8,
    pub isns: Option<IpAddr>,
    pub slp: Option<IpAddr>,
    pub pri_radius: Option<IpAddr>,
    pub sec_radius: Option<IpAddr>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub place: Place,
    pub index: u8,
    pub ip: Option<IpAddr>,
    pub prefix_len: u8,
    pub origin: Origin,
    pub gateway: Option<IpAddr>,
    pub primary_dns: Option<IpAddr>,
    pub secondary_dns: Option<IpAddr>,
    pub dhcp_server: Option<IpAddr>,
    /// The VLAN id (the field masked to 12 bits); 0 means untagged.
    pub vlan: u16,
    /// The field as written (some producers store the whole 802.1Q TCI).
    pub vlan_raw: u16,
    pub mac: [u8; 6],
    /// bus << 8 | device << 3 | function; `None` when unknown.
    pub pci_bdf: Option<u16>,
    pub hostname: Option<String>,
}

impl Nic {
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }

    /// DNS servers that are present, primary first.
    pub fn dns(&self) -> Vec<IpAddr> {
        [self.primary_dns, self.secondary_dns]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The dotted netmask for an IPv4 address.
    pub fn netmask(&self) -> Option<Ipv4Addr> {
        match self.ip {
            Some(IpAddr::V4(_)) if self.prefix_len <= 32 => Some(prefix_to_mask(self.prefix_len)),
            _ => None,
        }
    }

    /// "0000:BB:DD.F" form, as under /sys/bus/pci/devices (the table has no
    /// segment number: 0 is assumed).
    pub fn pci_address(&self) -> Option<String> {
        self.pci_bdf.map(|bdf| {
            format!(
                "0000:{:02x}:{:02x}.{}",
                bdf >> 8,
                (bdf >> 3) & 0x1f,
                bdf & 0x7
            )
        })
    }

    pub fn is_global(&self) -> bool {
        self.place.flags & super::wire::flags::NIC_GLOBAL != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub place: Place,
    pub index: u8,
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub lun: Lun,
    pub chap: ChapType,
    /// Header index of the NIC this target is reached through.
    pub nic_index: u8,
    pub name: String,
    pub chap_name: Option<String>,
    pub chap_secret: Option<Secret>,
    pub rchap_name: Option<String>,
    pub rchap_secret: Option<Secret>,
    /// The boot target (flag bit 1, else the first usable target).
    pub boot: bool,
    /// The other path to the boot LUN (the second usable target).
    pub second_path: bool,
}

impl Target {
    /// The firmware marked this target as the one it booted from.
    pub fn fw_boot_selected(&self) -> bool {
        self.place.flags & super::wire::flags::FW_BOOT_SELECTED != 0
    }
}

/// How bad a problem found while reading a table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing, changes nothing.
    Note,
    /// Something odd that was worked around; the data is still used.
    Warning,
    /// A structure or field was rejected and is not used.
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Something wrong with part of a table, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// "header", "control", "initiator", "nic0", "target1", ...
    pub structure: String,
    /// The field at fault, named as in the spec ("length", "chap_secret").
    pub field: &'static str,
    /// Absolute byte offset of that field in the table.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}.{} at byte 0x{:x}: {}",
            self.severity.name(),
            self.structure,
            self.field,
            self.offset,
            self.message
        )
    }
}

/// Everything a table says, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ibft {
    pub header: TableHeader,
    /// The control structure's length (18 in a standard table).
    pub control_len: u16,
    pub extensions: u16,
    pub initiator: Option<Initiator>,
    /// Usable NICs, in control-structure order.
    pub nics: Vec<Nic>,
    /// Usable targets, in control-structure order.
    pub targets: Vec<Target>,
    pub problems: Vec<Problem>,
    /// Fields the source could not express (the sysfs view loses some).
    pub lost_fields: Vec<String>,
}

impl Ibft {
    pub fn boot_target(&self) -> Option<&Target> {
        self.targets.iter().find(|t| t.boot)
    }
    pub fn second_path(&self) -> Option<&Target> {
        self.targets.iter().find(|t| t.second_path)
    }
    pub fn nic(&self, index: u8) -> Option<&Nic> {
        self.nics.iter().find(|n| n.index == index)
    }
    /// The NIC a target is reached through.
    pub fn nic_for(&self, target: &Target) -> Option<&Nic> {
        self.nic(target.nic_index)
    }
    pub fn initiator_name(&self) -> Option<&str> {
        self.initiator.as_ref().and_then(|i| i.name.as_deref())
    }
    /// Problems at error level: parts of the table that were rejected.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    /// Mark the boot target (firmware boot-selected flag, else the first
    /// usable one) and the second path (the next usable one).
    pub fn assign_boot_roles(&mut self) {
        for t in &mut self.targets {
            t.boot = false;
            t.second_path = false;
        }
        let boot =
            self.targets
                .iter()
                .position(Target::fw_boot_selected)
                .or(if self.targets.is_empty() {
                    None
                } else {
                    Some(0)
                });
        if let Some(b) = boot {
            self.targets[b].boot = true;
            if let Some(second) = (0..self.targets.len()).find(|i| *i != b) {
                self.targets[second].second_path = true;
            }
        }
    }
}

/// Parse "52:54:00:12:34:56" (or with '-'), any case: the one MAC parser
/// (sysfs, the command line, the hand-off record).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn prefix_to_mask(prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    let bits = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Ipv4Addr::from(bits)
}

/// Decode a 16-byte iBFT address: IPv4-mapped becomes IPv4; all-zero and
/// ::ffff:0.0.0.0 (EDK2's "unset") mean absent.
pub fn decode_addr(b: [u8; 16]) -> Option<IpAddr> {
    let v6 = Ipv6Addr::from(b);
    if v6.is_unspecified() {
        return None;
    }
    if let Some(v4) = v6.to_ipv4_mapped() {
        if v4.is_unspecified() {
            return None;
        }
        return Some(IpAddr::V4(v4));
    }
    Some(IpAddr::V6(v6))
}

/// The 16-byte form of an address (IPv4-mapped for IPv4, zero for absent).
pub fn encode_addr(a: Option<IpAddr>) -> [u8; 16] {
    match a {
        None => [0u8; 16],
        Some(IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
        Some(IpAddr::V6(v6)) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(decode_addr([0; 16]), None);
        let mut unset = [0u8; 16];
        unset[10] = 0xff;
        unset[11] = 0xff;
        assert_eq!(decode_addr(unset), None);
        let mut v4 = unset;
        v4[12..].copy_from_slice(&[10, 0, 2, 15]);
        assert_eq!(decode_addr(v4), Some("10.0.2.15".parse().unwrap()));
        let v6: Ipv6Addr = "fd00::15".parse().unwrap();
        assert_eq!(decode_addr(v6.octets()), Some(IpAddr::V6(v6)));
        assert_eq!(encode_addr(Some("10.0.2.15".parse().unwrap())), v4);
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_to_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_mask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_to_mask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(prefix_to_mask(200), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn luns() {
        // iPXE LUN 1.
        let l = Lun::decode([0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!((l.number, l.encoding), (1, LunEncoding::Sam));
        // LUN 0.
        assert_eq!(Lun::decode([0; 8]).number, 0);
        // Flat space LUN 300.
        let l = Lun::decode([0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        assert_eq!((l.number, l.encoding), (300, LunEncoding::Sam));
        // iPXE writes LUN 300 as 16-bit groups without the flat bit.
        assert_eq!(Lun::decode([0x01, 0x2c, 0, 0, 0, 0, 0, 0]).number, 300);
        // u-root style little-endian quad word LUN 1 and LUN 300.
        let l = Lun::decode([1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!((l.number, l.encoding), (1, LunEncoding::LittleEndian));
        // A multiple of 256 in iPXE's form is indistinguishable from it.
        assert_eq!(Lun::decode([1, 0, 0, 0, 0, 0, 0, 0]).number, 1);
        for n in [0u64, 1, 255, 256, 257, 300, 16383, 70000] {
            assert_eq!(Lun::decode(Lun::from_number(n).raw).number, n);
        }
    }

    #[test]
    fn boot_roles() {
        let t = |index: u8, flags: u8| Target {
            place: Place { offset: 0, flags },
            index,
            ip: None,
            port: 3260,
            lun: Lun::from_number(0),
            chap: ChapType::None,
            nic_index: 0,
            name: "iqn.x".into(),
            chap_name: None,
            chap_secret: None,
            rchap_name: None,
            rchap_secret: None,
            boot: false,
            second_path: false,
        };
        let mut ibft = Ibft {
            header: TableHeader {
                signature: Signature::Ibft,
                length: 0,
                revision: 1,
                checksum: 0,
                checksum_ok: Some(true),
                oem_id: String::new(),
                oem_table_id: String::new(),
            },
            control_len: 18,
            extensions: 0,
            initiator: None,
            nics: vec![],
            targets: vec![t(0, 1), t(1, 3)],
            problems: vec![],
            lost_fields: vec![],
        };
        ibft.assign_boot_roles();
        assert_eq!(ibft.boot_target().map(|t| t.index), Some(1));
        assert_eq!(ibft.second_path().map(|t| t.index), Some(0));
        ibft.targets[1].place.flags = 1;
        ibft.assign_boot_roles();
        assert_eq!(ibft.boot_target().map(|t| t.index), Some(0));
    }
}
