//! Parameter data a target returns: INQUIRY and VPD pages, READ CAPACITY,
//! REPORT LUNS, MODE SENSE.
//!
//! Each structure is a plain value with `parse(&[u8])` (the data-in bytes
//! actually received, not the allocation length) and `emit(&mut Vec<u8>)`
//! (for tests and mock targets). Field offsets live in one `mod` per
//! structure, next to the spec table they come from.
//!
//! How short data is handled, since the initiator chooses the allocation
//! length and may choose too little:
//! - fixed-size data (standard INQUIRY's first 36 bytes, READ CAPACITY)
//!   shorter than needed: [`ErrorKind::Truncated`];
//! - VPD pages shorter than their PAGE LENGTH says: `Truncated`, whose
//!   `need` is the allocation length to ask for next time;
//! - REPORT LUNS and MODE SENSE shorter than their own length field: what
//!   fits is returned with `truncated: true` (asking again with a larger
//!   allocation length is the caller's choice);
//! - lengths inside the data that contradict each other (a designator or
//!   mode page running past its page): [`ErrorKind::Invalid`], with the
//!   byte offset of the offending header.
//!
//! Not here: deciding which pages to ask for, or what to do with them.

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

use super::{Context, ErrorKind, ParseError};

/// Printable text from a space- or NUL-padded ASCII field: padding trimmed
/// at both ends, anything outside printable ASCII replaced by '?', so a
/// hostile string cannot smuggle escape sequences into a terminal or log.
fn ascii_field(bytes: &[u8]) -> String {
    let pad = |b: &u8| *b == b' ' || *b == 0;
    let start = bytes.iter().position(|b| !pad(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !pad(b)).map_or(start, |i| i + 1);
    bytes[start..end]
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// `s` padded with spaces (or cut) to exactly `len` bytes.
fn padded(s: &str, len: usize) -> impl Iterator<Item = u8> + '_ {
    s.bytes().chain(std::iter::repeat(b' ')).take(len)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Peripheral qualifier and device type
// ---------------------------------------------------------------------------

/// Byte 0 of INQUIRY data: PERIPHERAL QUALIFIER (bits 7-5) and PERIPHERAL
/// DEVICE TYPE (bits 4-0) (SPC-4 6.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peripheral {
    /// 0: an LU of this type is connected; 1: the target could support
    /// one here but none is connected; 3: no LU can be here.
    pub qualifier: u8,
    pub device_type: u8,
}

/// Device type codes used by callers.
pub mod device_type {
    pub const DISK: u8 = 0x00;
    pub const CD_DVD: u8 = 0x05;
    pub const ENCLOSURE: u8 = 0x0d;
    /// Simplified direct access (RBC), which Linux's sd drives as a disk.
    pub const RBC: u8 = 0x0e;
    pub const WELL_KNOWN_LU: u8 = 0x1e;
    pub const UNKNOWN: u8 = 0x1f;
}

impl Peripheral {
    pub const fn from_u8(b: u8) -> Peripheral {
        Peripheral {
            qualifier: b >> 5,
            device_type: b & 0x1f,
        }
    }

    pub const fn to_u8(self) -> u8 {
        (self.qualifier << 5) | (self.device_type & 0x1f)
    }

    /// Whether an LU is actually there (qualifier 0).
    pub const fn is_connected(self) -> bool {
        self.qualifier == 0
    }

    /// A connected direct-access block device: something to boot from.
    pub const fn is_disk(self) -> bool {
        self.qualifier == 0 && self.device_type == device_type::DISK
    }

    /// Short name, "no device" when the qualifier says nothing is there.
    pub fn name(self) -> &'static str {
        match self.qualifier {
            0 => device_type_name(self.device_type),
            1 => "not connected",
            3 => "no device",
            _ => "reserved qualifier",
        }
    }
}

impl fmt::Display for Peripheral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Short name of a PERIPHERAL DEVICE TYPE (SPC-4 "Peripheral device type").
pub fn device_type_name(t: u8) -> &'static str {
    match t & 0x1f {
        0x00 => "disk",
        0x01 => "tape",
        0x02 => "printer",
        0x03 => "processor",
        0x04 => "worm",
        0x05 => "cd/dvd",
        0x06 => "scanner",
        0x07 => "optical",
        0x08 => "medium changer",
        0x09 => "communications",
        0x0c => "storage array",
        0x0d => "enclosure",
        0x0e => "simplified disk",
        0x0f => "optical card",
        0x10 => "bridge",
        0x11 => "object storage",
        0x12 => "automation/drive",
        0x13 => "security manager",
        0x14 => "zoned block",
        0x1e => "well-known lu",
        0x1f => "unknown",
        _ => "reserved",
    }
}

// ---------------------------------------------------------------------------
// Standard INQUIRY data
// ---------------------------------------------------------------------------

/// Standard INQUIRY data fields (SPC-4 6.4.2, table "Standard INQUIRY
/// data format").
mod inq {
    use core::ops::Range;
    pub const PERIPHERAL: usize = 0;
    pub const RMB: usize = 1;
    pub const VERSION: usize = 2;
    /// NORMACA 0x20, HISUP 0x10, RESPONSE DATA FORMAT 0x0f.
    pub const FLAGS3: usize = 3;
    pub const ADDITIONAL_LEN: usize = 4;
    /// SCCS 0x80, ACC 0x40, TPGS 0x30, 3PC 0x08, PROTECT 0x01.
    pub const FLAGS5: usize = 5;
    /// ENCSERV 0x40, MULTIP 0x10.
    pub const FLAGS6: usize = 6;
    /// CMDQUE 0x02.
    pub const FLAGS7: usize = 7;
    pub const VENDOR: Range<usize> = 8..16;
    pub const PRODUCT: Range<usize> = 16..32;
    pub const REVISION: Range<usize> = 32..36;
    /// SPC-4: standard INQUIRY data is at least 36 bytes.
    pub const LEN: usize = 36;
}

/// Standard INQUIRY data (SPC-4 6.4.2): a plain value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    pub peripheral: Peripheral,
    /// RMB: removable medium.
    pub removable: bool,
    /// VERSION: 0x05 SPC-3, 0x06 SPC-4, 0x07 SPC-5.
    pub version: u8,
    pub normaca: bool,
    /// HISUP: hierarchical LUN addressing.
    pub hisup: bool,
    pub response_data_format: u8,
    /// ADDITIONAL LENGTH as sent (bytes after byte 4).
    pub additional_len: u8,
    /// SCCS: embedded storage array controller.
    pub sccs: bool,
    /// TPGS: 0 no ALUA, 1 implicit, 2 explicit, 3 both.
    pub tpgs: u8,
    /// 3PC: third-party copy (EXTENDED COPY / XCOPY).
    pub third_party_copy: bool,
    /// PROTECT: protection information supported.
    pub protect: bool,
    pub encserv: bool,
    pub multip: bool,
    /// CMDQUE: full task management (command queueing).
    pub cmdque: bool,
    /// T10 VENDOR IDENTIFICATION, trimmed.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION, trimmed.
    pub product: String,
    /// PRODUCT REVISION LEVEL, trimmed.
    pub revision: String,
}

impl Inquiry {
    /// Parse standard INQUIRY data; the first 36 bytes are required.
    pub fn parse(buf: &[u8]) -> Result<Inquiry, ParseError> {
        ParseError::need(Context::Inquiry, buf, inq::LEN)?;
        let b3 = buf[inq::FLAGS3];
        let b5 = buf[inq::FLAGS5];
        let b6 = buf[inq::FLAGS6];
        Ok(Inquiry {
            peripheral: Peripheral::from_u8(buf[inq::PERIPHERAL]),
            removable: buf[inq::RMB] & 0x80 != 0,
            version: buf[inq::VERSION],
            normaca: b3 & 0x20 != 0,
            hisup: b3 & 0x10 != 0,
            response_data_format: b3 & 0x0f,
            additional_len: buf[inq::ADDITIONAL_LEN],
            sccs: b5 & 0x80 != 0,
            tpgs: (b5 >> 4) & 0x03,
            third_party_copy: b5 & 0x08 != 0,
            protect: b5 & 0x01 != 0,
            encserv: b6 & 0x40 != 0,
            multip: b6 & 0x10 != 0,
            cmdque: buf[inq::FLAGS7] & 0x02 != 0,
            vendor: ascii_field(&buf[inq::VENDOR]),
            product: ascii_field(&buf[inq::PRODUCT]),
            revision: ascii_field(&buf[inq::REVISION]),
        })
    }

    /// Emit the 36-byte form (ADDITIONAL LENGTH 31).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let bit = |set: bool, mask: u8| if set { mask } else { 0 };
        out.extend_from_slice(&[
            self.peripheral.to_u8(),
            bit(self.removable, 0x80),
            self.version,
            bit(self.normaca, 0x20) | bit(self.hisup, 0x10) | (self.response_data_format & 0x0f),
            (inq::LEN - 5) as u8,
            bit(self.sccs, 0x80)
                | ((self.tpgs & 0x03) << 4)
                | bit(self.third_party_copy, 0x08)
                | bit(self.protect, 0x01),
            bit(self.encserv, 0x40) | bit(self.multip, 0x10),
            bit(self.cmdque, 0x02),
        ]);
        out.extend(padded(&self.vendor, 8));
        out.extend(padded(&self.product, 16));
        out.extend(padded(&self.revision, 4));
    }
}

/// `disk LIO-ORG disk0 4.0`
impl fmt::Display for Inquiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.peripheral, self.vendor, self.product, self.revision
        )
    }
}

// ---------------------------------------------------------------------------
// VPD pages
// ---------------------------------------------------------------------------

/// VPD page codes.
pub mod vpd {
    pub const SUPPORTED_PAGES: u8 = 0x00;
    pub const UNIT_SERIAL: u8 = 0x80;
    pub const DEVICE_ID: u8 = 0x83;
    pub const BLOCK_LIMITS: u8 = 0xb0;
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xb1;
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xb2;
    /// Bytes of the header every VPD page starts with.
    pub const HEADER_LEN: usize = 4;
}

/// Check a VPD page's header and return the whole page (header included,
/// trailing bytes past PAGE LENGTH dropped). VPD pages 0x00, 0x80, 0xB0
/// and 0xB2 have a 1-byte PAGE LENGTH in byte 3 with byte 2 reserved;
/// 0x83 has a 2-byte one in bytes 2..4. Reading both as a 16-bit length
/// is what SPC-4 specifies for every page today.
fn vpd_page(buf: &[u8], code: u8) -> Result<&[u8], ParseError> {
    let ctx = Context::Vpd(code);
    ParseError::need(ctx, buf, vpd::HEADER_LEN)?;
    if buf[1] != code {
        return Err(ParseError::new(
            ctx,
            1,
            ErrorKind::PageCode {
                expected: code,
                found: buf[1],
            },
        ));
    }
    let len = vpd::HEADER_LEN + usize::from(BigEndian::read_u16(&buf[2..4]));
    ParseError::need(ctx, buf, len)?;
    Ok(&buf[..len])
}

/// Emit a VPD page header for a connected disk, then `body`.
fn emit_vpd(out: &mut Vec<u8>, code: u8, body: &[u8]) {
    // Bodies here are bounded well below 64 KiB by their constructors;
    // saturate rather than wrap if a caller builds a silly one.
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&[0, code]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body[..usize::from(len)]);
}

/// VPD 0x00, Supported VPD Pages (SPC-4 "Supported VPD Pages VPD page").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SupportedPages {
    pub pages: Vec<u8>,
}

impl SupportedPages {
    pub fn parse(buf: &[u8]) -> Result<SupportedPages, ParseError> {
        let page = vpd_page(buf, vpd::SUPPORTED_PAGES)?;
        Ok(SupportedPages {
            pages: page[vpd::HEADER_LEN..].to_vec(),
        })
    }

    pub fn supports(&self, code: u8) -> bool {
        self.pages.contains(&code)
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        emit_vpd(out, vpd::SUPPORTED_PAGES, &self.pages);
    }
}

/// VPD 0x80, Unit Serial Number (SPC-4 "Unit Serial Number VPD page").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitSerial {
    /// PRODUCT SERIAL NUMBER, trimmed.
    pub serial: String,
}

impl UnitSerial {
    pub fn parse(buf: &[u8]) -> Result<UnitSerial, ParseError> {
        let page = vpd_page(buf, vpd::UNIT_SERIAL)?;
        Ok(UnitSerial {
            serial: ascii_field(&page[vpd::HEADER_LEN..]),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        emit_vpd(out, vpd::UNIT_SERIAL, self.serial.as_bytes());
    }
}

/// CODE SET of a designator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSet {
    Binary,
    Ascii,
    Utf8,
    Other(u8),
}

impl CodeSet {
    pub const fn from_u8(b: u8) -> CodeSet {
        match b & 0x0f {
            1 => CodeSet::Binary,
            2 => CodeSet::Ascii,
            3 => CodeSet::Utf8,
            other => CodeSet::Other(other),
        }
    }

    pub const fn to_u8(self) -> u8 {
        match self {
            CodeSet::Binary => 1,
            CodeSet::Ascii => 2,
            CodeSet::Utf8 => 3,
            CodeSet::Other(b) => b & 0x0f,
        }
    }
}

/// ASSOCIATION of a designator: what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Association {
    LogicalUnit,
    TargetPort,
    TargetDevice,
    Reserved,
}

impl Association {
    pub const fn from_u8(b: u8) -> Association {
        match b & 0x03 {
            0 => Association::LogicalUnit,
            1 => Association::TargetPort,
            2 => Association::TargetDevice,
            _ => Association::Reserved,
        }
    }

    pub const fn to_u8(self) -> u8 {
        match self {
            Association::LogicalUnit => 0,
            Association::TargetPort => 1,
            Association::TargetDevice => 2,
            Association::Reserved => 3,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Association::LogicalUnit => "lu",
            Association::TargetPort => "target port",
            Association::TargetDevice => "target device",
            Association::Reserved => "reserved",
        }
    }
}

/// DESIGNATOR TYPE (SPC-4 "Device Identification VPD page").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesignatorType {
    VendorSpecific,
    T10VendorId,
    Eui64,
    Naa,
    RelativeTargetPort,
    TargetPortGroup,
    LuGroup,
    Md5LuId,
    ScsiNameString,
    ProtocolSpecificPortId,
    Uuid,
    Other(u8),
}

impl DesignatorType {
    pub const fn from_u8(b: u8) -> DesignatorType {
        match b & 0x0f {
            0x0 => DesignatorType::VendorSpecific,
            0x1 => DesignatorType::T10VendorId,
            0x2 => DesignatorType::Eui64,
            0x3 => DesignatorType::Naa,
            0x4 => DesignatorType::RelativeTargetPort,
            0x5 => DesignatorType::TargetPortGroup,
            0x6 => DesignatorType::LuGroup,
            0x7 => DesignatorType::Md5LuId,
            0x8 => DesignatorType::ScsiNameString,
            0x9 => DesignatorType::ProtocolSpecificPortId,
            0xa => DesignatorType::Uuid,
            other => DesignatorType::Other(other),
        }
    }

    pub const fn to_u8(self) -> u8 {
        match self {
            DesignatorType::VendorSpecific => 0x0,
            DesignatorType::T10VendorId => 0x1,
            DesignatorType::Eui64 => 0x2,
            DesignatorType::Naa => 0x3,
            DesignatorType::RelativeTargetPort => 0x4,
            DesignatorType::TargetPortGroup => 0x5,
            DesignatorType::LuGroup => 0x6,
            DesignatorType::Md5LuId => 0x7,
            DesignatorType::ScsiNameString => 0x8,
            DesignatorType::ProtocolSpecificPortId => 0x9,
            DesignatorType::Uuid => 0xa,
            DesignatorType::Other(b) => b & 0x0f,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DesignatorType::VendorSpecific => "vendor specific",
            DesignatorType::T10VendorId => "T10 vendor id",
            DesignatorType::Eui64 => "EUI-64",
            DesignatorType::Naa => "NAA",
            DesignatorType::RelativeTargetPort => "relative target port",
            DesignatorType::TargetPortGroup => "target port group",
            DesignatorType::LuGroup => "LU group",
            DesignatorType::Md5LuId => "MD5 LU id",
            DesignatorType::ScsiNameString => "SCSI name string",
            DesignatorType::ProtocolSpecificPortId => "protocol specific port id",
            DesignatorType::Uuid => "UUID",
            DesignatorType::Other(_) => "reserved",
        }
    }
}

/// One designation descriptor of VPD page 0x83.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designator {
    /// PROTOCOL IDENTIFIER (5 = iSCSI), meaningful when `piv` is set.
    pub protocol_id: u8,
    pub code_set: CodeSet,
    /// PIV: `protocol_id` is valid.
    pub piv: bool,
    pub association: Association,
    pub kind: DesignatorType,
    /// The DESIGNATOR bytes.
    pub id: Vec<u8>,
}

impl Designator {
    /// The canonical text of an identifier, in the form Linux puts in
    /// `/sys/block/*/device/wwid`: "naa." or "eui." and lowercase hex;
    /// "t10." and the vendor and vendor-specific text (non-printables as
    /// `\xNN`); or the SCSI name string itself ("iqn...", "naa...").
    /// `None` for other types and malformed lengths.
    pub fn id_string(&self) -> Option<String> {
        match self.kind {
            DesignatorType::Naa if matches!(self.id.len(), 8 | 16) => {
                Some(format!("naa.{}", hex(&self.id)))
            }
            DesignatorType::Eui64 if matches!(self.id.len(), 8 | 12 | 16) => {
                Some(format!("eui.{}", hex(&self.id)))
            }
            DesignatorType::T10VendorId if !self.id.is_empty() => {
                let mut s = String::from("t10.");
                for &b in &self.id {
                    if (0x20..0x7f).contains(&b) && b != b'\\' {
                        s.push(b as char);
                    } else {
                        s.push_str(&format!("\\x{b:02x}"));
                    }
                }
                Some(s)
            }
            DesignatorType::ScsiNameString => {
                // UTF-8, NUL-terminated and NUL-padded to a multiple of 4.
                let end = self
                    .id
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(self.id.len());
                let s: String = String::from_utf8_lossy(&self.id[..end])
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect();
                (!s.is_empty()).then_some(s)
            }
            _ => None,
        }
    }

    /// The 16-bit number of a relative target port, target port group or
    /// LU group designator (4 bytes, the number in the last two).
    pub fn port_or_group(&self) -> Option<u16> {
        match (self.kind, self.id.as_slice()) {
            (
                DesignatorType::RelativeTargetPort
                | DesignatorType::TargetPortGroup
                | DesignatorType::LuGroup,
                [_, _, hi, lo],
            ) => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }
}

/// `lu NAA naa.6001405...`
impl fmt::Display for Designator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.association.name(), self.kind.name())?;
        if let Some(s) = self.id_string() {
            return f.write_str(&s);
        }
        if let Some(n) = self.port_or_group() {
            return write!(f, "{n}");
        }
        f.write_str(&hex(&self.id))
    }
}

/// VPD 0x83, Device Identification (SPC-4 "Device Identification VPD
/// page").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceId {
    pub designators: Vec<Designator>,
}

impl DeviceId {
    pub fn parse(buf: &[u8]) -> Result<DeviceId, ParseError> {
        let page = vpd_page(buf, vpd::DEVICE_ID)?;
        let mut designators = Vec::new();
        let mut at = vpd::HEADER_LEN;
        while at < page.len() {
            // Designation descriptor: code set, association/type, reserved,
            // DESIGNATOR LENGTH, then the designator.
            let header = page.get(at..at + 4).ok_or(ParseError::invalid(
                Context::Vpd(vpd::DEVICE_ID),
                at,
                "designation descriptor header runs past the page length",
            ))?;
            let end = at + 4 + usize::from(header[3]);
            let id = page.get(at + 4..end).ok_or(ParseError::invalid(
                Context::Vpd(vpd::DEVICE_ID),
                at,
                "designator runs past the page length",
            ))?;
            designators.push(Designator {
                protocol_id: header[0] >> 4,
                code_set: CodeSet::from_u8(header[0]),
                piv: header[1] & 0x80 != 0,
                association: Association::from_u8(header[1] >> 4),
                kind: DesignatorType::from_u8(header[1]),
                id: id.to_vec(),
            });
            at = end;
        }
        Ok(DeviceId { designators })
    }

    /// The designators that name the logical unit itself.
    pub fn lu_designators(&self) -> impl Iterator<Item = &Designator> {
        self.designators
            .iter()
            .filter(|d| d.association == Association::LogicalUnit)
    }

    /// The port this page was read through: its relative target port
    /// identifier and target port group (ALUA), from the designators
    /// associated with the target port.
    pub fn port(&self) -> (Option<u16>, Option<u16>) {
        let find = |kind| {
            self.designators
                .iter()
                .filter(|d| d.association == Association::TargetPort && d.kind == kind)
                .find_map(Designator::port_or_group)
        };
        (
            find(DesignatorType::RelativeTargetPort),
            find(DesignatorType::TargetPortGroup),
        )
    }

    /// The best stable identifier of the LU, as text (see
    /// [`Designator::id_string`]). Preference: NAA (16-byte IEEE
    /// Registered Extended before 8-byte), then EUI-64 (longer first),
    /// then SCSI name string, then T10 vendor id: globally unique binary
    /// identifiers first, vendor-assigned text last. Ties go to the
    /// first one listed. Only LU-associated designators count: port and
    /// target names are the same for every LU behind them.
    pub fn lu_id(&self) -> Option<String> {
        let rank = |d: &Designator| match d.kind {
            DesignatorType::Naa => 400 + d.id.len(),
            DesignatorType::Eui64 => 300 + d.id.len(),
            DesignatorType::ScsiNameString => 200,
            DesignatorType::T10VendorId => 100,
            _ => 0,
        };
        let mut best: Option<(usize, String)> = None;
        for d in self.lu_designators() {
            let r = rank(d);
            if r == 0 || best.as_ref().is_some_and(|(b, _)| r <= *b) {
                continue;
            }
            if let Some(s) = d.id_string() {
                best = Some((r, s));
            }
        }
        best.map(|(_, s)| s)
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        for d in &self.designators {
            let len = d.id.len().min(255);
            body.push((d.protocol_id << 4) | d.code_set.to_u8());
            body.push(if d.piv { 0x80 } else { 0 } | (d.association.to_u8() << 4) | d.kind.to_u8());
            body.push(0);
            body.push(len as u8);
            body.extend_from_slice(&d.id[..len]);
        }
        emit_vpd(out, vpd::DEVICE_ID, &body);
    }
}

/// Block Limits fields (SBC-3 "Block Limits VPD page").
mod bl {
    use core::ops::Range;
    pub const WSNZ: usize = 4;
    pub const MAX_COMPARE_AND_WRITE: usize = 5;
    pub const OPTIMAL_GRANULARITY: Range<usize> = 6..8;
    pub const MAX_TRANSFER: Range<usize> = 8..12;
    pub const OPTIMAL_TRANSFER: Range<usize> = 12..16;
    pub const MAX_PREFETCH: Range<usize> = 16..20;
    pub const MAX_UNMAP_LBA_COUNT: Range<usize> = 20..24;
    pub const MAX_UNMAP_DESCRIPTORS: Range<usize> = 24..28;
    pub const OPTIMAL_UNMAP_GRANULARITY: Range<usize> = 28..32;
    /// UGAVALID is bit 7 of the first byte.
    pub const UNMAP_GRANULARITY_ALIGNMENT: Range<usize> = 32..36;
    pub const MAX_WRITE_SAME: Range<usize> = 36..44;
    /// Full SBC-3 page: PAGE LENGTH 0x3C.
    pub const LEN: usize = 64;
}

/// VPD 0xB0, Block Limits (SBC-3 "Block Limits VPD page"). Counts are in
/// logical blocks; 0 means "no limit reported". Older targets send a
/// shorter page (PAGE LENGTH 0x0C, up to OPTIMAL TRANSFER LENGTH); fields
/// past its end read as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockLimits {
    /// WSNZ: WRITE SAME with 0 blocks ("to the end") is refused.
    pub wsnz: bool,
    pub max_compare_and_write: u8,
    pub optimal_transfer_granularity: u16,
    pub max_transfer_length: u32,
    pub optimal_transfer_length: u32,
    pub max_prefetch_length: u32,
    pub max_unmap_lba_count: u32,
    pub max_unmap_descriptor_count: u32,
    pub optimal_unmap_granularity: u32,
    /// UNMAP GRANULARITY ALIGNMENT, when UGAVALID is set.
    pub unmap_granularity_alignment: Option<u32>,
    pub max_write_same_length: u64,
}

impl BlockLimits {
    pub fn parse(buf: &[u8]) -> Result<BlockLimits, ParseError> {
        let page = vpd_page(buf, vpd::BLOCK_LIMITS)?;
        // Fields past a short page read as 0.
        let mut b = [0u8; bl::LEN];
        let n = page.len().min(bl::LEN);
        b[..n].copy_from_slice(&page[..n]);
        let uga = BigEndian::read_u32(&b[bl::UNMAP_GRANULARITY_ALIGNMENT]);
        Ok(BlockLimits {
            wsnz: b[bl::WSNZ] & 0x01 != 0,
            max_compare_and_write: b[bl::MAX_COMPARE_AND_WRITE],
            optimal_transfer_granularity: BigEndian::read_u16(&b[bl::OPTIMAL_GRANULARITY]),
            max_transfer_length: BigEndian::read_u32(&b[bl::MAX_TRANSFER]),
            optimal_transfer_length: BigEndian::read_u32(&b[bl::OPTIMAL_TRANSFER]),
            max_prefetch_length: BigEndian::read_u32(&b[bl::MAX_PREFETCH]),
            max_unmap_lba_count: BigEndian::read_u32(&b[bl::MAX_UNMAP_LBA_COUNT]),
            max_unmap_descriptor_count: BigEndian::read_u32(&b[bl::MAX_UNMAP_DESCRIPTORS]),
            optimal_unmap_granularity: BigEndian::read_u32(&b[bl::OPTIMAL_UNMAP_GRANULARITY]),
            unmap_granularity_alignment: (uga & 0x8000_0000 != 0).then_some(uga & 0x7fff_ffff),
            max_write_same_length: BigEndian::read_u64(&b[bl::MAX_WRITE_SAME]),
        })
    }

    /// Emit the full 64-byte page.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; bl::LEN];
        b[bl::WSNZ] = u8::from(self.wsnz);
        b[bl::MAX_COMPARE_AND_WRITE] = self.max_compare_and_write;
        BigEndian::write_u16(
            &mut b[bl::OPTIMAL_GRANULARITY],
            self.optimal_transfer_granularity,
        );
        BigEndian::write_u32(&mut b[bl::MAX_TRANSFER], self.max_transfer_length);
        BigEndian::write_u32(&mut b[bl::OPTIMAL_TRANSFER], self.optimal_transfer_length);
        BigEndian::write_u32(&mut b[bl::MAX_PREFETCH], self.max_prefetch_length);
        BigEndian::write_u32(&mut b[bl::MAX_UNMAP_LBA_COUNT], self.max_unmap_lba_count);
        BigEndian::write_u32(
            &mut b[bl::MAX_UNMAP_DESCRIPTORS],
            self.max_unmap_descriptor_count,
        );
        BigEndian::write_u32(
            &mut b[bl::OPTIMAL_UNMAP_GRANULARITY],
            self.optimal_unmap_granularity,
        );
        if let Some(a) = self.unmap_granularity_alignment {
            BigEndian::write_u32(&mut b[bl::UNMAP_GRANULARITY_ALIGNMENT], 0x8000_0000 | a);
        }
        BigEndian::write_u64(&mut b[bl::MAX_WRITE_SAME], self.max_write_same_length);
        emit_vpd(out, vpd::BLOCK_LIMITS, &b[vpd::HEADER_LEN..]);
    }
}

/// PROVISIONING TYPE of VPD 0xB2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisioningType {
    /// 0: not reported, or fully provisioned.
    Full,
    /// 1: resource provisioned.
    Resource,
    /// 2: thin provisioned.
    Thin,
    Reserved(u8),
}

impl ProvisioningType {
    pub const fn from_u8(b: u8) -> ProvisioningType {
        match b & 0x07 {
            0 => ProvisioningType::Full,
            1 => ProvisioningType::Resource,
            2 => ProvisioningType::Thin,
            other => ProvisioningType::Reserved(other),
        }
    }

    pub const fn to_u8(self) -> u8 {
        match self {
            ProvisioningType::Full => 0,
            ProvisioningType::Resource => 1,
            ProvisioningType::Thin => 2,
            ProvisioningType::Reserved(b) => b & 0x07,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            ProvisioningType::Full => "full",
            ProvisioningType::Resource => "resource",
            ProvisioningType::Thin => "thin",
            ProvisioningType::Reserved(_) => "reserved",
        }
    }
}

/// VPD 0xB2, Logical Block Provisioning (SBC-3 "Logical Block
/// Provisioning VPD page").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalBlockProvisioning {
    pub threshold_exponent: u8,
    /// LBPU: UNMAP is supported.
    pub lbpu: bool,
    /// LBPWS: WRITE SAME(16) with UNMAP=1 is supported.
    pub lbpws: bool,
    /// LBPWS10: WRITE SAME(10) with UNMAP=1 is supported.
    pub lbpws10: bool,
    /// LBPRZ (3 bits in SBC-4, 1 bit in SBC-3): bit 0 set means unmapped
    /// blocks read as zeroes; see [`Self::unmapped_reads_zero`].
    pub lbprz: u8,
    /// ANC_SUP: anchored LBAs supported.
    pub anc_sup: bool,
    /// DP: a provisioning group descriptor follows.
    pub dp: bool,
    pub provisioning_type: ProvisioningType,
}

impl LogicalBlockProvisioning {
    /// Bytes 4..8 are required (PAGE LENGTH >= 4).
    pub fn parse(buf: &[u8]) -> Result<LogicalBlockProvisioning, ParseError> {
        let page = vpd_page(buf, vpd::LOGICAL_BLOCK_PROVISIONING)?;
        ParseError::need(Context::Vpd(vpd::LOGICAL_BLOCK_PROVISIONING), page, 8)?;
        let b5 = page[5];
        Ok(LogicalBlockProvisioning {
            threshold_exponent: page[4],
            lbpu: b5 & 0x80 != 0,
            lbpws: b5 & 0x40 != 0,
            lbpws10: b5 & 0x20 != 0,
            lbprz: (b5 >> 2) & 0x07,
            anc_sup: b5 & 0x02 != 0,
            dp: b5 & 0x01 != 0,
            provisioning_type: ProvisioningType::from_u8(page[6]),
        })
    }

    /// Unmapped blocks read back as zeroes (LBPRZ xx1b).
    pub fn unmapped_reads_zero(&self) -> bool {
        self.lbprz & 0x01 != 0
    }

    /// Emit the 8-byte page (no provisioning group descriptor).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let bit = |set: bool, mask: u8| if set { mask } else { 0 };
        let b5 = bit(self.lbpu, 0x80)
            | bit(self.lbpws, 0x40)
            | bit(self.lbpws10, 0x20)
            | ((self.lbprz & 0x07) << 2)
            | bit(self.anc_sup, 0x02)
            | bit(self.dp, 0x01);
        emit_vpd(
            out,
            vpd::LOGICAL_BLOCK_PROVISIONING,
            &[
                self.threshold_exponent,
                b5,
                self.provisioning_type.to_u8(),
                0,
            ],
        );
    }
}

// ---------------------------------------------------------------------------
// READ CAPACITY
// ---------------------------------------------------------------------------

/// The size of a logical unit, from either READ CAPACITY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Number of logical blocks (returned last LBA + 1).
    pub blocks: u64,
    /// Logical block length in bytes (never 0).
    pub block_size: u32,
    /// Logical blocks per physical block, as a power of two.
    pub physical_block_exponent: u8,
    /// First LBA aligned to a physical block.
    pub lowest_aligned_lba: u16,
    /// LBPME: thin provisioning (UNMAP / WRITE SAME UNMAP) is enabled.
    pub thin_provisioned: bool,
    /// LBPRZ: unmapped blocks read as zeroes.
    pub unmapped_reads_zero: bool,
    /// Protection type 1..=3 when PROT_EN is set.
    pub protection_type: Option<u8>,
}

impl Capacity {
    fn new(ctx: Context, last_lba: u64, block_size: u32) -> Result<Capacity, ParseError> {
        let blocks = last_lba.checked_add(1).ok_or(ParseError::invalid(
            ctx,
            0,
            "last LBA is the largest u64",
        ))?;
        if block_size == 0 {
            let at = if ctx == Context::ReadCapacity10 { 4 } else { 8 };
            return Err(ParseError::invalid(ctx, at, "logical block length is 0"));
        }
        Ok(Capacity {
            blocks,
            block_size,
            physical_block_exponent: 0,
            lowest_aligned_lba: 0,
            thin_provisioned: false,
            unmapped_reads_zero: false,
            protection_type: None,
        })
    }

    /// Size in bytes; `None` if it does not fit a u64.
    pub fn bytes(&self) -> Option<u64> {
        self.blocks.checked_mul(u64::from(self.block_size))
    }

    /// Physical block size in bytes; `None` if it does not fit a u32.
    pub fn physical_block_size(&self) -> Option<u32> {
        1u32.checked_shl(u32::from(self.physical_block_exponent))
            .and_then(|n| n.checked_mul(self.block_size))
    }
}

/// `2097152 blocks of 512 bytes (1073741824 bytes)`
impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} blocks of {} bytes", self.blocks, self.block_size)?;
        match self.bytes() {
            Some(b) => write!(f, " ({b} bytes)"),
            None => f.write_str(" (over 16 EiB)"),
        }
    }
}

/// READ CAPACITY(10) parameter data (SBC-3 "READ CAPACITY (10) parameter
/// data"): 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCapacity10 {
    /// RETURNED LOGICAL BLOCK ADDRESS: the last LBA, 0xFFFFFFFF when the
    /// LU is too large and READ CAPACITY(16) must be used.
    pub last_lba: u32,
    /// LOGICAL BLOCK LENGTH IN BYTES.
    pub block_len: u32,
}

impl ReadCapacity10 {
    pub const LEN: usize = 8;

    pub fn parse(buf: &[u8]) -> Result<ReadCapacity10, ParseError> {
        ParseError::need(Context::ReadCapacity10, buf, Self::LEN)?;
        Ok(ReadCapacity10 {
            last_lba: BigEndian::read_u32(&buf[0..4]),
            block_len: BigEndian::read_u32(&buf[4..8]),
        })
    }

    /// The LU has 2^32 blocks or more: ask READ CAPACITY(16).
    pub fn needs_16(&self) -> bool {
        self.last_lba == u32::MAX
    }

    /// The capacity; an error when [`Self::needs_16`] or the block
    /// length is 0.
    pub fn capacity(&self) -> Result<Capacity, ParseError> {
        if self.needs_16() {
            return Err(ParseError::invalid(
                Context::ReadCapacity10,
                0,
                "last LBA 0xFFFFFFFF: the capacity needs READ CAPACITY(16)",
            ));
        }
        Capacity::new(
            Context::ReadCapacity10,
            u64::from(self.last_lba),
            self.block_len,
        )
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.last_lba.to_be_bytes());
        out.extend_from_slice(&self.block_len.to_be_bytes());
    }
}

/// READ CAPACITY(16) parameter data fields (SBC-3 "READ CAPACITY (16)
/// parameter data").
mod rc16 {
    use core::ops::Range;
    pub const LAST_LBA: Range<usize> = 0..8;
    pub const BLOCK_LEN: Range<usize> = 8..12;
    /// P_TYPE bits 3-1, PROT_EN bit 0.
    pub const PROT: usize = 12;
    /// P_I_EXPONENT bits 7-4, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT
    /// bits 3-0.
    pub const EXPONENTS: usize = 13;
    /// LBPME bit 7, LBPRZ bit 6, LOWEST ALIGNED LBA bits 13-8 in 5-0.
    pub const LBP: Range<usize> = 14..16;
    /// What must be there: the LBA and the block length.
    pub const MIN_LEN: usize = 12;
    pub const LEN: usize = 32;
}

/// READ CAPACITY(16) parameter data (SBC-3): a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadCapacity16 {
    /// RETURNED LOGICAL BLOCK ADDRESS: the last LBA.
    pub last_lba: u64,
    /// LOGICAL BLOCK LENGTH IN BYTES.
    pub block_len: u32,
    /// P_TYPE: protection type - 1, meaningful with `prot_en`.
    pub p_type: u8,
    pub prot_en: bool,
    pub p_i_exponent: u8,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT.
    pub lbppbe: u8,
    /// LBPME: logical block provisioning management enabled (thin).
    pub lbpme: bool,
    /// LBPRZ: unmapped blocks read as zeroes.
    pub lbprz: bool,
    pub lowest_aligned_lba: u16,
}

impl ReadCapacity16 {
    /// Parse; the LBA and block length (12 bytes) are required, the
    /// protection and provisioning bytes read as 0 when cut off.
    pub fn parse(buf: &[u8]) -> Result<ReadCapacity16, ParseError> {
        ParseError::need(Context::ReadCapacity16, buf, rc16::MIN_LEN)?;
        let mut b = [0u8; rc16::LEN];
        let n = buf.len().min(rc16::LEN);
        b[..n].copy_from_slice(&buf[..n]);
        let lbp = BigEndian::read_u16(&b[rc16::LBP]);
        Ok(ReadCapacity16 {
            last_lba: BigEndian::read_u64(&b[rc16::LAST_LBA]),
            block_len: BigEndian::read_u32(&b[rc16::BLOCK_LEN]),
            p_type: (b[rc16::PROT] >> 1) & 0x07,
            prot_en: b[rc16::PROT] & 0x01 != 0,
            p_i_exponent: b[rc16::EXPONENTS] >> 4,
            lbppbe: b[rc16::EXPONENTS] & 0x0f,
            lbpme: lbp & 0x8000 != 0,
            lbprz: lbp & 0x4000 != 0,
            lowest_aligned_lba: lbp & 0x3fff,
        })
    }

    pub fn capacity(&self) -> Result<Capacity, ParseError> {
        let mut c = Capacity::new(Context::ReadCapacity16, self.last_lba, self.block_len)?;
        c.physical_block_exponent = self.lbppbe;
        c.lowest_aligned_lba = self.lowest_aligned_lba;
        c.thin_provisioned = self.lbpme;
        c.unmapped_reads_zero = self.lbprz;
        c.protection_type = self.prot_en.then_some(self.p_type + 1);
        Ok(c)
    }

    /// Emit the 32-byte form.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; rc16::LEN];
        BigEndian::write_u64(&mut b[rc16::LAST_LBA], self.last_lba);
        BigEndian::write_u32(&mut b[rc16::BLOCK_LEN], self.block_len);
        b[rc16::PROT] = ((self.p_type & 0x07) << 1) | u8::from(self.prot_en);
        b[rc16::EXPONENTS] = (self.p_i_exponent << 4) | (self.lbppbe & 0x0f);
        let lbp = if self.lbpme { 0x8000 } else { 0 }
            | if self.lbprz { 0x4000 } else { 0 }
            | (self.lowest_aligned_lba & 0x3fff);
        BigEndian::write_u16(&mut b[rc16::LBP], lbp);
        out.extend_from_slice(&b);
    }
}

// ---------------------------------------------------------------------------
// REPORT LUNS and LUN numbers
// ---------------------------------------------------------------------------

/// The number of an 8-byte LUN (SAM-5 "Logical unit number"), as the
/// rest of sanroot (and the iBFT code) counts them.
///
/// A single-level LUN in peripheral (method 00) or flat space (method 01)
/// addressing is `(byte0 & 0x3f) << 8 | byte1`: the number users type.
/// Anything else (multi-level, LUN addressing, extended) is Linux's
/// `scsilun_to_int`: 16-bit big-endian groups, first level lowest.
pub fn lun_number(raw: &[u8; 8]) -> u64 {
    let single_level = raw[2..].iter().all(|b| *b == 0);
    let method = raw[0] >> 6;
    if single_level && method <= 1 {
        return (u64::from(raw[0] & 0x3f) << 8) | u64::from(raw[1]);
    }
    raw.chunks_exact(2).enumerate().fold(0u64, |acc, (i, c)| {
        acc | (u64::from(u16::from_be_bytes([c[0], c[1]])) << (16 * i))
    })
}

/// The 8 bytes for LUN `n`: peripheral addressing below 256, flat space
/// below 16384, else Linux `int_to_scsilun` 16-bit groups.
///
/// `lun_number(&lun_to_bytes(n)) == n` for every `n` that `lun_number`
/// can return; numbers 0x4000..=0x7FFF with nothing above them cannot be
/// (their group form is the flat encoding of n - 0x4000).
pub fn lun_to_bytes(n: u64) -> [u8; 8] {
    let mut raw = [0u8; 8];
    if n < 256 {
        raw[1] = n as u8;
    } else if n < 0x4000 {
        raw[0] = 0x40 | (n >> 8) as u8;
        raw[1] = n as u8;
    } else {
        for (i, chunk) in raw.chunks_exact_mut(2).enumerate() {
            chunk.copy_from_slice(&((n >> (16 * i)) as u16).to_be_bytes());
        }
    }
    raw
}

/// One LUN of a REPORT LUNS list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lun {
    pub raw: [u8; 8],
    /// [`lun_number`] of `raw`.
    pub number: u64,
}

impl Lun {
    pub fn from_raw(raw: [u8; 8]) -> Lun {
        Lun {
            raw,
            number: lun_number(&raw),
        }
    }

    pub fn from_number(n: u64) -> Lun {
        Lun {
            raw: lun_to_bytes(n),
            number: n,
        }
    }
}

impl fmt::Display for Lun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number)
    }
}

/// REPORT LUNS parameter data (SPC-4 6.33).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportLuns {
    /// LUN LIST LENGTH as sent: bytes of LUNs the target has, which
    /// may be more than were returned.
    pub list_len: u32,
    /// The LUNs that fit in the data received.
    pub luns: Vec<Lun>,
    /// The list was cut by the allocation length: ask again with
    /// [`Self::alloc_len_needed`].
    pub truncated: bool,
}

impl ReportLuns {
    pub const HEADER_LEN: usize = 8;

    /// Parse; only the 8-byte header is required. A LUN LIST LENGTH that
    /// is not a multiple of 8 is rounded down (the partial entry ignored).
    pub fn parse(buf: &[u8]) -> Result<ReportLuns, ParseError> {
        ParseError::need(Context::ReportLuns, buf, Self::HEADER_LEN)?;
        let list_len = BigEndian::read_u32(&buf[0..4]);
        let have = buf.len() - Self::HEADER_LEN;
        let declared = usize::try_from(list_len).unwrap_or(usize::MAX);
        let luns = buf[Self::HEADER_LEN..Self::HEADER_LEN + have.min(declared)]
            .chunks_exact(8)
            .map(|c| {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(c);
                Lun::from_raw(raw)
            })
            .collect();
        Ok(ReportLuns {
            list_len,
            luns,
            truncated: declared / 8 * 8 > have,
        })
    }

    /// The allocation length that would return the whole list.
    pub fn alloc_len_needed(&self) -> u32 {
        self.list_len.saturating_add(Self::HEADER_LEN as u32)
    }

    /// Emit header and every LUN (LUN LIST LENGTH = 8 * luns).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.luns.len() * 8).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for lun in &self.luns {
            out.extend_from_slice(&lun.raw);
        }
    }
}

// ---------------------------------------------------------------------------
// MODE SENSE
// ---------------------------------------------------------------------------

/// Device-specific parameter bits for direct-access devices (SBC-3
/// "Mode parameters").
const WP: u8 = 0x80;
const DPOFUA: u8 = 0x10;
/// PS and SPF bits of a mode page's first byte.
const PS: u8 = 0x80;
const SPF: u8 = 0x40;

/// Page code of the Caching mode page.
pub const CACHING_PAGE: u8 = 0x08;

/// One mode page (SPC-4 "Mode page format"): page_0 format when
/// `subpage` is 0 and SPF clear, sub_page format otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModePage {
    pub code: u8,
    pub subpage: u8,
    /// SPF: sub_page format (4-byte header).
    pub spf: bool,
    /// PS: the page can be saved.
    pub ps: bool,
    /// The page bytes after its header.
    pub data: Vec<u8>,
}

/// The Caching mode page 0x08 (SBC-3 "Caching mode page"), the bits that
/// matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caching {
    /// WCE: write cache enabled, so writes need SYNCHRONIZE CACHE / FUA
    /// to be durable.
    pub wce: bool,
    /// RCD: read cache disabled.
    pub rcd: bool,
}

impl Caching {
    fn parse(page: &ModePage, at: usize) -> Result<Caching, ParseError> {
        // Byte 2 of the page is the first data byte of a page_0 header.
        let b = *page.data.first().ok_or(ParseError::invalid(
            Context::ModePage(page.code, page.subpage),
            at,
            "caching mode page has no WCE/RCD byte",
        ))?;
        Ok(Caching {
            wce: b & 0x04 != 0,
            rcd: b & 0x01 != 0,
        })
    }
}

/// MODE SENSE(6) or (10) parameter data (SPC-4 "Mode parameter list
/// format"): header, block descriptors, pages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModeSense {
    /// MODE DATA LENGTH as sent (bytes after the length field).
    pub mode_data_len: u16,
    pub medium_type: u8,
    /// DEVICE-SPECIFIC PARAMETER; see [`Self::write_protected`] and
    /// [`Self::dpofua`].
    pub device_specific: u8,
    /// LONGLBA (MODE SENSE(10) only).
    pub long_lba: bool,
    /// BLOCK DESCRIPTOR LENGTH as sent.
    pub block_descriptor_len: u16,
    /// The block descriptors, raw.
    pub block_descriptors: Vec<u8>,
    pub pages: Vec<ModePage>,
    /// Caching mode page 0x08, if it was among the pages.
    pub caching: Option<Caching>,
    /// The data received was shorter than MODE DATA LENGTH says (small
    /// allocation length); pages cut off are not in `pages`.
    pub truncated: bool,
}

impl ModeSense {
    /// WP: the medium is write-protected.
    pub fn write_protected(&self) -> bool {
        self.device_specific & WP != 0
    }

    /// DPOFUA: the target honours DPO and FUA bits.
    pub fn dpofua(&self) -> bool {
        self.device_specific & DPOFUA != 0
    }

    /// Parse MODE SENSE(6) data: 4-byte header.
    pub fn parse_6(buf: &[u8]) -> Result<ModeSense, ParseError> {
        let ctx = Context::ModeSense6;
        ParseError::need(ctx, buf, 4)?;
        let mut m = ModeSense {
            mode_data_len: u16::from(buf[0]),
            medium_type: buf[1],
            device_specific: buf[2],
            block_descriptor_len: u16::from(buf[3]),
            ..ModeSense::default()
        };
        m.parse_body(ctx, buf, 1, 4)?;
        Ok(m)
    }

    /// Parse MODE SENSE(10) data: 8-byte header.
    pub fn parse_10(buf: &[u8]) -> Result<ModeSense, ParseError> {
        let ctx = Context::ModeSense10;
        ParseError::need(ctx, buf, 8)?;
        let mut m = ModeSense {
            mode_data_len: BigEndian::read_u16(&buf[0..2]),
            medium_type: buf[2],
            device_specific: buf[3],
            long_lba: buf[4] & 0x01 != 0,
            block_descriptor_len: BigEndian::read_u16(&buf[6..8]),
            ..ModeSense::default()
        };
        m.parse_body(ctx, buf, 2, 8)?;
        Ok(m)
    }

    /// Block descriptors and pages, after a header of `header_len` bytes
    /// whose MODE DATA LENGTH field is `len_field` bytes long.
    fn parse_body(
        &mut self,
        ctx: Context,
        buf: &[u8],
        len_field: usize,
        header_len: usize,
    ) -> Result<(), ParseError> {
        let declared = len_field + usize::from(self.mode_data_len);
        self.truncated = buf.len() < declared;
        let truncated = self.truncated;
        let buf = &buf[..declared.min(buf.len())];
        // A run past the end is a cut-off if the data was truncated in
        // transit, and a lie if the target's own length ends there.
        let past_end = |at: usize, what: &'static str| -> Result<(), ParseError> {
            if truncated {
                Ok(())
            } else {
                Err(ParseError::invalid(ctx, at, what))
            }
        };
        let bd_end = header_len + usize::from(self.block_descriptor_len);
        let Some(bd) = buf.get(header_len..bd_end) else {
            if buf.len() < header_len && !truncated {
                return Err(ParseError::invalid(
                    ctx,
                    0,
                    "mode data length is shorter than the header",
                ));
            }
            return past_end(
                header_len,
                "block descriptors run past the mode data length",
            );
        };
        self.block_descriptors = bd.to_vec();
        let mut at = bd_end;
        while at < buf.len() {
            let b0 = buf[at];
            let spf = b0 & SPF != 0;
            let (subpage, hlen, plen) = if spf {
                match buf.get(at..at + 4) {
                    Some(h) => (h[1], 4, usize::from(BigEndian::read_u16(&h[2..4]))),
                    None => return past_end(at, "mode page header runs past the mode data length"),
                }
            } else {
                match buf.get(at + 1) {
                    Some(&l) => (0, 2, usize::from(l)),
                    None => return past_end(at, "mode page header runs past the mode data length"),
                }
            };
            let Some(data) = buf.get(at + hlen..at + hlen + plen) else {
                return past_end(at, "mode page runs past the mode data length");
            };
            let page = ModePage {
                code: b0 & 0x3f,
                subpage,
                spf,
                ps: b0 & PS != 0,
                data: data.to_vec(),
            };
            if page.code == CACHING_PAGE && page.subpage == 0 && self.caching.is_none() {
                self.caching = Some(Caching::parse(&page, at)?);
            }
            self.pages.push(page);
            at += hlen + plen;
        }
        Ok(())
    }

    /// Block descriptors and pages, as they follow either header.
    fn emit_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block_descriptors);
        for p in &self.pages {
            let b0 = (p.code & 0x3f) | if p.ps { PS } else { 0 };
            if p.spf || p.subpage != 0 {
                let len = p.data.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&[b0 | SPF, p.subpage]);
                out.extend_from_slice(&(len as u16).to_be_bytes());
                out.extend_from_slice(&p.data[..len]);
            } else {
                let len = p.data.len().min(255);
                out.extend_from_slice(&[b0, len as u8]);
                out.extend_from_slice(&p.data[..len]);
            }
        }
    }

    /// Emit MODE SENSE(6) data; lengths are computed from the contents
    /// (and saturate at the 8-bit fields).
    pub fn emit_6(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let bdl = self.block_descriptors.len().min(255) as u8;
        out.extend_from_slice(&[0, self.medium_type, self.device_specific, bdl]);
        self.emit_body(out);
        out[start] = (out.len() - start - 1).min(255) as u8;
    }

    /// Emit MODE SENSE(10) data.
    pub fn emit_10(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let bdl = self.block_descriptors.len().min(usize::from(u16::MAX)) as u16;
        out.extend_from_slice(&[0, 0, self.medium_type, self.device_specific]);
        out.extend_from_slice(&[u8::from(self.long_lba), 0]);
        out.extend_from_slice(&bdl.to_be_bytes());
        self.emit_body(out);
        let mdl = (out.len() - start - 2).min(usize::from(u16::MAX)) as u16;
        out[start..start + 2].copy_from_slice(&mdl.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::testutil::Rng;

    /// Standard INQUIRY from a LIO block backstore (36 bytes of 96).
    #[rustfmt::skip]
    const LIO_INQUIRY: [u8; 36] = [
        0x00, 0x00, 0x06, 0x12, 0x5b, 0x18, 0x10, 0x02,
        b'L', b'I', b'O', b'-', b'O', b'R', b'G', b' ',
        b'd', b'i', b's', b'k', b'0', b' ', b' ', b' ',
        b' ', b' ', b' ', b' ', b' ', b' ', b' ', b' ',
        b'4', b'.', b'0', b' ',
    ];

    /// VPD 0x83 shaped like LIO's: NAA 6 (LU), T10 vendor id (LU),
    /// relative target port and target port group (port, iSCSI), SCSI
    /// name string of the target port, LU group.
    #[rustfmt::skip]
    const LIO_VPD83: [u8; 108] = [
        0x00, 0x83, 0x00, 0x68,
        // NAA IEEE Registered Extended, binary, LU.
        0x01, 0x03, 0x00, 0x10,
        0x60, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x12,
        0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12,
        // T10 vendor id, ASCII, LU: "LIO-ORG " + "abcdef12".
        0x02, 0x01, 0x00, 0x10,
        b'L', b'I', b'O', b'-', b'O', b'R', b'G', b' ',
        b'a', b'b', b'c', b'd', b'e', b'f', b'1', b'2',
        // Relative target port 1, iSCSI, PIV, target port.
        0x51, 0x94, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
        // Target port group 0.
        0x51, 0x95, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00,
        // SCSI name string, UTF-8, target port: 28 bytes.
        0x53, 0x98, 0x00, 0x1c,
        b'i', b'q', b'n', b'.', b'2', b'0', b'0', b'3',
        b'-', b'0', b'1', b'.', b'o', b'r', b'g', b':',
        b't', b',', b't', b',', b'0', b'x', b'0', b'0',
        b'0', b'1', 0x00, 0x00,
        // LU group 0.
        0x01, 0x06, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00,
        // Vendor specific, binary, LU.
        0x01, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef,
    ];

    /// VPD 0xB0 as LIO sends it for a thin fileio backstore.
    #[rustfmt::skip]
    const LIO_VPD_B0: [u8; 64] = [
        0x00, 0xb0, 0x00, 0x3c, 0x01, 0x01, 0x00, 0x01,
        0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x20, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x08,
        0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    const LIO_VPD_B2: [u8; 8] = [0x00, 0xb2, 0x00, 0x04, 0x00, 0xe4, 0x02, 0x00];

    /// READ CAPACITY(16): 2^33 blocks of 512, 4K physical, thin, LBPRZ.
    #[rustfmt::skip]
    const RC16: [u8; 32] = [
        0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff,
        0x00, 0x00, 0x02, 0x00, 0x00, 0x03, 0xc0, 0x00,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// REPORT LUNS with LUN 0, 1 and flat 300.
    #[rustfmt::skip]
    const REPORT_LUNS: [u8; 32] = [
        0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x41, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// MODE SENSE(6) of the caching page, DBD=0: one 8-byte block
    /// descriptor, DPOFUA, WCE set.
    #[rustfmt::skip]
    const MODE_SENSE6_CACHING: [u8; 32] = [
        0x1f, 0x00, 0x10, 0x08,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
        0x08, 0x12, 0x14, 0x00, 0xff, 0xff, 0x00, 0x00,
        0xff, 0xff, 0xff, 0xff, 0x80, 0x14, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
    ];

    fn every_truncation<T>(whole: &[u8], parse: impl Fn(&[u8]) -> Result<T, ParseError>) {
        for n in 0..=whole.len() {
            let _ = parse(&whole[..n]);
        }
    }

    #[test]
    fn inquiry_lio() {
        let i = Inquiry::parse(&LIO_INQUIRY).unwrap();
        assert!(i.peripheral.is_disk());
        assert_eq!(i.peripheral.name(), "disk");
        assert_eq!(i.version, 0x06);
        assert!(i.hisup);
        assert!(!i.normaca);
        assert_eq!(i.response_data_format, 2);
        assert_eq!(i.tpgs, 1);
        assert!(i.third_party_copy);
        assert!(!i.protect);
        assert!(i.multip);
        assert!(i.cmdque);
        assert_eq!(i.vendor, "LIO-ORG");
        assert_eq!(i.product, "disk0");
        assert_eq!(i.revision, "4.0");
        assert_eq!(i.to_string(), "disk LIO-ORG disk0 4.0");
        let mut out = Vec::new();
        i.emit(&mut out);
        // Same bytes but the ADDITIONAL LENGTH of a 36-byte answer.
        let mut want = LIO_INQUIRY;
        want[4] = 31;
        assert_eq!(out, want);
        let e = Inquiry::parse(&LIO_INQUIRY[..35]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Truncated { need: 36, have: 35 });
        assert_eq!(e.context, Context::Inquiry);
        every_truncation(&LIO_INQUIRY, Inquiry::parse);
    }

    #[test]
    fn peripheral_names() {
        assert_eq!(Peripheral::from_u8(0x7f).name(), "no device");
        assert_eq!(Peripheral::from_u8(0x05).name(), "cd/dvd");
        assert_eq!(Peripheral::from_u8(0x0d).name(), "enclosure");
        assert_eq!(Peripheral::from_u8(0x1e).name(), "well-known lu");
        assert_eq!(Peripheral::from_u8(0x20).name(), "not connected");
        assert_eq!(Peripheral::from_u8(0x7f).to_u8(), 0x7f);
    }

    #[test]
    fn hostile_strings_are_tamed() {
        assert_eq!(ascii_field(b"  \x1b[2Jx\0\0"), "?[2Jx");
        assert_eq!(ascii_field(b"\0\0\0"), "");
        assert_eq!(ascii_field(&[0xff, b'a']), "?a");
    }

    #[test]
    fn vpd_supported_and_serial() {
        let buf = [0x00, 0x00, 0x00, 0x05, 0x00, 0x80, 0x83, 0xb0, 0xb2];
        let p = SupportedPages::parse(&buf).unwrap();
        assert!(p.supports(0xb2));
        assert!(!p.supports(0xb1));
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(out, buf);

        let buf = b"\x00\x80\x00\x0c abc-123 \0\0\0";
        let s = UnitSerial::parse(buf).unwrap();
        assert_eq!(s.serial, "abc-123");

        // Wrong page, short page.
        let e = UnitSerial::parse(&[0, 0x83, 0, 0]).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::PageCode {
                expected: 0x80,
                found: 0x83
            }
        );
        assert_eq!(e.offset, 1);
        let e = UnitSerial::parse(&buf[..10]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Truncated { need: 16, have: 10 });
        assert_eq!(
            e.to_string(),
            "VPD page 0x80 at byte 10: truncated: need 16 bytes, have 10"
        );
    }

    #[test]
    fn vpd83_lio() {
        let d = DeviceId::parse(&LIO_VPD83).unwrap();
        assert_eq!(d.designators.len(), 7);
        let naa = &d.designators[0];
        assert_eq!(naa.kind, DesignatorType::Naa);
        assert_eq!(naa.code_set, CodeSet::Binary);
        assert_eq!(naa.association, Association::LogicalUnit);
        assert_eq!(
            naa.id_string().unwrap(),
            "naa.6001405abcdef0123456789abcdef012"
        );
        assert_eq!(
            d.designators[1].id_string().unwrap(),
            "t10.LIO-ORG abcdef12"
        );
        let port = &d.designators[2];
        assert_eq!(port.kind, DesignatorType::RelativeTargetPort);
        assert_eq!(port.association, Association::TargetPort);
        assert!(port.piv);
        assert_eq!(port.protocol_id, 5);
        assert_eq!(port.port_or_group(), Some(1));
        assert_eq!(
            d.designators[4].id_string().unwrap(),
            "iqn.2003-01.org:t,t,0x0001"
        );
        assert_eq!(d.designators[5].kind, DesignatorType::LuGroup);
        assert_eq!(d.lu_id().unwrap(), "naa.6001405abcdef0123456789abcdef012");
        let group = d.designators[3].port_or_group();
        assert_eq!(d.designators[3].kind, DesignatorType::TargetPortGroup);
        assert_eq!(
            d.port(),
            (Some(1), group),
            "this path's port and ALUA group"
        );
        assert_eq!(
            d.designators[0].to_string(),
            "lu NAA naa.6001405abcdef0123456789abcdef012"
        );
        assert_eq!(d.designators[6].to_string(), "lu vendor specific deadbeef");

        let mut out = Vec::new();
        d.emit(&mut out);
        assert_eq!(out, LIO_VPD83);
        every_truncation(&LIO_VPD83, DeviceId::parse);
    }

    #[test]
    fn vpd83_preference() {
        let des = |kind, association, id: &[u8]| Designator {
            protocol_id: 0,
            code_set: CodeSet::Binary,
            piv: false,
            association,
            kind,
            id: id.to_vec(),
        };
        let lu = Association::LogicalUnit;
        let mut d = DeviceId {
            designators: vec![
                des(DesignatorType::T10VendorId, lu, b"VENDOR  x\x01"),
                des(
                    DesignatorType::ScsiNameString,
                    Association::TargetPort,
                    b"iqn.x\0\0\0",
                ),
            ],
        };
        assert_eq!(d.lu_id().unwrap(), "t10.VENDOR  x\\x01");
        d.designators
            .push(des(DesignatorType::ScsiNameString, lu, b"naa.600A\0\0\0\0"));
        assert_eq!(d.lu_id().unwrap(), "naa.600A");
        d.designators.push(des(
            DesignatorType::Eui64,
            lu,
            &[0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77],
        ));
        assert_eq!(d.lu_id().unwrap(), "eui.0011223344556677");
        // A malformed NAA does not win.
        d.designators
            .push(des(DesignatorType::Naa, lu, &[0x50, 1, 2]));
        assert_eq!(d.lu_id().unwrap(), "eui.0011223344556677");
        d.designators
            .push(des(DesignatorType::Naa, lu, &[0x50, 1, 2, 3, 4, 5, 6, 7]));
        d.designators
            .push(des(DesignatorType::Naa, lu, &[0x51, 1, 2, 3, 4, 5, 6, 7]));
        // First of two equal NAAs.
        assert_eq!(d.lu_id().unwrap(), "naa.5001020304050607");
        assert_eq!(DeviceId::default().lu_id(), None);
    }

    #[test]
    fn vpd83_designator_past_page_is_refused() {
        // Page length 8, designator claims 16 bytes.
        let buf = [
            0x00, 0x83, 0x00, 0x08, 0x01, 0x03, 0x00, 0x10, 0x60, 0x01, 0x40, 0x5a,
        ];
        let e = DeviceId::parse(&buf).unwrap_err();
        assert_eq!(e.context, Context::Vpd(0x83));
        assert_eq!(e.offset, 4);
        assert_eq!(
            e.to_string(),
            "VPD page 0x83 at byte 4: designator runs past the page length"
        );
        // Page length leaves 2 stray bytes: a header cut in half.
        let buf = [0x00, 0x83, 0x00, 0x02, 0x01, 0x03];
        assert_eq!(DeviceId::parse(&buf).unwrap_err().offset, 4);
    }

    #[test]
    fn vpd_b0_lio() {
        let b = BlockLimits::parse(&LIO_VPD_B0).unwrap();
        assert!(b.wsnz);
        assert_eq!(b.max_compare_and_write, 1);
        assert_eq!(b.optimal_transfer_granularity, 1);
        assert_eq!(b.max_transfer_length, 0x2000);
        assert_eq!(b.optimal_transfer_length, 0x2000);
        assert_eq!(b.max_prefetch_length, 0);
        assert_eq!(b.max_unmap_lba_count, 0x40_0000);
        assert_eq!(b.max_unmap_descriptor_count, 1);
        assert_eq!(b.optimal_unmap_granularity, 8);
        assert_eq!(b.unmap_granularity_alignment, Some(0));
        assert_eq!(b.max_write_same_length, 0xffff);
        let mut out = Vec::new();
        b.emit(&mut out);
        assert_eq!(out, LIO_VPD_B0);
        every_truncation(&LIO_VPD_B0, BlockLimits::parse);

        // An SBC-2 era page (length 0x0C) is fine; the rest reads as 0.
        let mut short = LIO_VPD_B0[..16].to_vec();
        short[3] = 0x0c;
        let b = BlockLimits::parse(&short).unwrap();
        assert_eq!(b.max_transfer_length, 0x2000);
        assert_eq!(b.max_unmap_lba_count, 0);
        assert_eq!(b.unmap_granularity_alignment, None);
    }

    #[test]
    fn vpd_b2_lio() {
        let p = LogicalBlockProvisioning::parse(&LIO_VPD_B2).unwrap();
        assert!(p.lbpu && p.lbpws && p.lbpws10);
        assert!(p.unmapped_reads_zero());
        assert!(!p.anc_sup && !p.dp);
        assert_eq!(p.provisioning_type, ProvisioningType::Thin);
        assert_eq!(p.provisioning_type.name(), "thin");
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(out, LIO_VPD_B2);
        every_truncation(&LIO_VPD_B2, LogicalBlockProvisioning::parse);
        // A page length too short for the fields.
        let e = LogicalBlockProvisioning::parse(&[0, 0xb2, 0, 2, 0, 0xe0]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Truncated { need: 8, have: 6 });
    }

    #[test]
    fn read_capacity_10() {
        let r = ReadCapacity10::parse(&[0x00, 0x1f, 0xff, 0xff, 0x00, 0x00, 0x02, 0x00]).unwrap();
        assert!(!r.needs_16());
        let c = r.capacity().unwrap();
        assert_eq!(c.blocks, 0x20_0000);
        assert_eq!(c.block_size, 512);
        assert_eq!(c.bytes(), Some(1 << 30));
        assert_eq!(
            c.to_string(),
            "2097152 blocks of 512 bytes (1073741824 bytes)"
        );
        let mut out = Vec::new();
        r.emit(&mut out);
        assert_eq!(out, [0x00, 0x1f, 0xff, 0xff, 0x00, 0x00, 0x02, 0x00]);

        let big = ReadCapacity10::parse(&[0xff; 8]).unwrap();
        assert!(big.needs_16());
        assert!(matches!(
            big.capacity().unwrap_err().kind,
            ErrorKind::Invalid(_)
        ));
        let zero = ReadCapacity10::parse(&[0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
        assert_eq!(zero.capacity().unwrap_err().offset, 4);
        every_truncation(&[0u8; 8], ReadCapacity10::parse);
    }

    #[test]
    fn read_capacity_16() {
        let r = ReadCapacity16::parse(&RC16).unwrap();
        assert_eq!(r.last_lba, 0x1_ffff_ffff);
        assert_eq!(r.block_len, 512);
        assert_eq!(r.lbppbe, 3);
        assert!(r.lbpme && r.lbprz);
        assert!(!r.prot_en);
        let c = r.capacity().unwrap();
        assert_eq!(c.blocks, 1 << 33);
        assert_eq!(c.bytes(), Some(1 << 42));
        assert_eq!(c.physical_block_size(), Some(4096));
        assert!(c.thin_provisioned && c.unmapped_reads_zero);
        assert_eq!(c.protection_type, None);
        let mut out = Vec::new();
        r.emit(&mut out);
        assert_eq!(out, RC16);

        // Only the first 12 bytes are required.
        let short = ReadCapacity16::parse(&RC16[..12]).unwrap();
        assert_eq!(short.last_lba, r.last_lba);
        assert!(!short.lbpme);
        assert_eq!(
            ReadCapacity16::parse(&RC16[..11]).unwrap_err().kind,
            ErrorKind::Truncated { need: 12, have: 11 }
        );
        every_truncation(&RC16, ReadCapacity16::parse);

        // Overflowing sizes are errors or None, never wraps.
        let mut huge = [0xffu8; 32];
        huge[8..12].copy_from_slice(&512u32.to_be_bytes());
        let r = ReadCapacity16::parse(&huge).unwrap();
        assert!(r.capacity().is_err());
        huge[7] = 0xfe;
        let c = ReadCapacity16::parse(&huge).unwrap().capacity().unwrap();
        assert_eq!(c.bytes(), None);
        assert_eq!(c.physical_block_size(), Some(512 << 15));
        assert_eq!(c.protection_type, Some(8));
        assert_eq!(
            c.to_string(),
            "18446744073709551615 blocks of 512 bytes (over 16 EiB)"
        );
    }

    #[test]
    fn report_luns() {
        let r = ReportLuns::parse(&REPORT_LUNS).unwrap();
        assert!(!r.truncated);
        let numbers: Vec<u64> = r.luns.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [0, 1, 300]);
        let mut out = Vec::new();
        r.emit(&mut out);
        assert_eq!(out, REPORT_LUNS);

        // A 16-byte allocation length: one LUN, and the size to ask for.
        let r = ReportLuns::parse(&REPORT_LUNS[..16]).unwrap();
        assert!(r.truncated);
        assert_eq!(r.luns.len(), 1);
        assert_eq!(r.alloc_len_needed(), 32);
        // A list length far beyond the data is a truncation, not an error.
        let mut lie = REPORT_LUNS;
        lie[0] = 0xff;
        let r = ReportLuns::parse(&lie).unwrap();
        assert!(r.truncated);
        assert_eq!(r.luns.len(), 3);
        // A ragged list length: the partial entry is ignored.
        let mut ragged = REPORT_LUNS.to_vec();
        ragged[3] = 0x13;
        let r = ReportLuns::parse(&ragged[..27]).unwrap();
        assert_eq!(r.luns.len(), 2);
        assert!(!r.truncated);
        assert_eq!(
            ReportLuns::parse(&REPORT_LUNS[..7]).unwrap_err().kind,
            ErrorKind::Truncated { need: 8, have: 7 }
        );
        every_truncation(&REPORT_LUNS, ReportLuns::parse);
    }

    #[test]
    fn lun_numbers() {
        assert_eq!(lun_to_bytes(0), [0; 8]);
        assert_eq!(lun_to_bytes(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(lun_to_bytes(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        assert_eq!(lun_to_bytes(0x8001), [0x80, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            lun_to_bytes(0x0002_0001_0000_0005),
            [0x00, 0x05, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02]
        );
        // Peripheral addressing with a bus number.
        assert_eq!(lun_number(&[0x01, 0x05, 0, 0, 0, 0, 0, 0]), 0x105);
        // Multi-level: Linux scsilun_to_int.
        assert_eq!(
            lun_number(&[0x00, 0x01, 0x00, 0x02, 0, 0, 0, 0]),
            0x0002_0001
        );
        let mut rng = Rng(42);
        for _ in 0..10_000 {
            let raw = rng.next().to_be_bytes();
            let n = lun_number(&raw);
            assert_eq!(lun_number(&lun_to_bytes(n)), n, "{raw:02x?}");
        }
        for n in (0..0x4000).chain(0x8000..0x1_0000) {
            assert_eq!(lun_number(&lun_to_bytes(n)), n);
        }
    }

    #[test]
    fn lun_numbers_agree_with_ibft() {
        let mut rng = Rng(7);
        for _ in 0..10_000 {
            let raw = rng.next().to_be_bytes();
            assert_eq!(lun_number(&raw), crate::ibft::model::sam_lun_number(&raw));
            let n = rng.next() >> (rng.next() % 64);
            assert_eq!(lun_to_bytes(n), crate::ibft::model::Lun::from_number(n).raw);
        }
    }

    #[test]
    fn mode_sense_6_caching() {
        let m = ModeSense::parse_6(&MODE_SENSE6_CACHING).unwrap();
        assert_eq!(m.mode_data_len, 0x1f);
        assert!(!m.write_protected());
        assert!(m.dpofua());
        assert_eq!(m.block_descriptor_len, 8);
        assert_eq!(m.block_descriptors.len(), 8);
        assert_eq!(m.pages.len(), 1);
        assert_eq!(m.pages[0].code, CACHING_PAGE);
        assert_eq!(m.pages[0].data.len(), 0x12);
        assert_eq!(
            m.caching,
            Some(Caching {
                wce: true,
                rcd: false
            })
        );
        assert!(!m.truncated);
        let mut out = Vec::new();
        m.emit_6(&mut out);
        assert_eq!(out, MODE_SENSE6_CACHING);
        every_truncation(&MODE_SENSE6_CACHING, ModeSense::parse_6);

        // Cut by a small allocation length: header and descriptors only.
        let m = ModeSense::parse_6(&MODE_SENSE6_CACHING[..20]).unwrap();
        assert!(m.truncated);
        assert!(m.pages.is_empty());
        assert_eq!(m.caching, None);
    }

    #[test]
    fn mode_sense_10_round_trip_and_lies() {
        let m = ModeSense {
            medium_type: 0,
            device_specific: WP | DPOFUA,
            long_lba: false,
            pages: vec![
                ModePage {
                    code: CACHING_PAGE,
                    subpage: 0,
                    spf: false,
                    ps: true,
                    data: vec![0x01; 18],
                },
                ModePage {
                    code: 0x0a,
                    subpage: 0x01,
                    spf: true,
                    ps: false,
                    data: vec![0; 28],
                },
            ],
            ..ModeSense::default()
        };
        let mut out = Vec::new();
        m.emit_10(&mut out);
        let back = ModeSense::parse_10(&out).unwrap();
        assert!(back.write_protected());
        assert_eq!(back.pages, m.pages);
        assert_eq!(
            back.caching,
            Some(Caching {
                wce: false,
                rcd: true
            })
        );
        assert_eq!(usize::from(back.mode_data_len), out.len() - 2);
        every_truncation(&out, ModeSense::parse_10);

        // A page longer than the target's own mode data length.
        let mut lie = out.clone();
        lie[1] -= 4;
        lie.truncate(lie.len() - 4);
        let e = ModeSense::parse_10(&lie).unwrap_err();
        assert_eq!(e.context, Context::ModeSense10);
        assert_eq!(e.offset, 8 + 20);
        // A caching page with no data byte.
        let buf = [0x05, 0x00, 0x00, 0x00, 0x08, 0x00];
        let e = ModeSense::parse_6(&buf).unwrap_err();
        assert_eq!(e.context, Context::ModePage(8, 0));
        // Block descriptor length past the mode data.
        let buf = [0x03, 0x00, 0x00, 0x08];
        assert!(ModeSense::parse_6(&buf).is_err());
        // Mode data length shorter than the header itself.
        let buf = [0x00, 0x00, 0x00, 0x00];
        assert!(ModeSense::parse_6(&buf).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0xdead_beef);
        for _ in 0..20_000 {
            let mut buf = rng.bytes(160);
            // Give the VPD parsers a fighting chance past the page check.
            if buf.len() > 3 {
                buf[2] = 0;
            }
            let _ = Inquiry::parse(&buf).map(|i| i.to_string());
            for code in [0x00, 0x80, 0x83, 0xb0, 0xb2] {
                if let Some(b) = buf.get_mut(1) {
                    *b = code;
                }
                let _ = SupportedPages::parse(&buf);
                let _ = UnitSerial::parse(&buf);
                if let Ok(d) = DeviceId::parse(&buf) {
                    let _ = d.lu_id();
                    for des in &d.designators {
                        let _ = des.to_string();
                    }
                }
                let _ = BlockLimits::parse(&buf);
                let _ = LogicalBlockProvisioning::parse(&buf);
            }
            let _ = ReadCapacity10::parse(&buf).and_then(|r| r.capacity());
            let _ = ReadCapacity16::parse(&buf).and_then(|r| r.capacity());
            let _ = ReportLuns::parse(&buf);
            let _ = ModeSense::parse_6(&buf);
            let _ = ModeSense::parse_10(&buf);
        }
    }
}
