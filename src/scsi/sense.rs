//! SCSI status, sense data and what the initiator should do about them.
//!
//! - [`Status`]: the status byte of a completed command (SAM-5 "Status").
//! - [`Sense`]: fixed (0x70/0x71) and descriptor (0x72/0x73) format sense
//!   data (SPC-4 4.5), parsed from the bytes the iSCSI layer hands over
//!   with the 2-byte SenseLength prefix already stripped.
//! - [`asc_description`]: names of the ASC/ASCQ pairs seen in practice.
//! - [`disposition`]: the retry classification the engine runs on.
//!
//! Not here: the retry loop itself, timers, or logging.
//!
//! Sense data is parsed leniently where that loses nothing: only the byte
//! holding the sense key is required, so a target that sends short sense
//! data still gets its command classified. Fields past the end of what was
//! sent read as 0 / absent. What *is* refused: an unknown response code,
//! and a descriptor whose length runs past the additional sense length the
//! target itself declared.

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

use super::{Context, ErrorKind, ParseError};

/// The status byte of a completed SCSI command (SAM-5 "Status").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Good,
    CheckCondition,
    ConditionMet,
    Busy,
    ReservationConflict,
    TaskSetFull,
    AcaActive,
    TaskAborted,
    /// Any other (obsolete or reserved) value.
    Other(u8),
}

impl Status {
    pub const fn from_u8(b: u8) -> Status {
        match b {
            0x00 => Status::Good,
            0x02 => Status::CheckCondition,
            0x04 => Status::ConditionMet,
            0x08 => Status::Busy,
            0x18 => Status::ReservationConflict,
            0x28 => Status::TaskSetFull,
            0x30 => Status::AcaActive,
            0x40 => Status::TaskAborted,
            other => Status::Other(other),
        }
    }

    pub const fn to_u8(self) -> u8 {
        match self {
            Status::Good => 0x00,
            Status::CheckCondition => 0x02,
            Status::ConditionMet => 0x04,
            Status::Busy => 0x08,
            Status::ReservationConflict => 0x18,
            Status::TaskSetFull => 0x28,
            Status::AcaActive => 0x30,
            Status::TaskAborted => 0x40,
            Status::Other(b) => b,
        }
    }

    /// The name SAM uses.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Good => "GOOD",
            Status::CheckCondition => "CHECK CONDITION",
            Status::ConditionMet => "CONDITION MET",
            Status::Busy => "BUSY",
            Status::ReservationConflict => "RESERVATION CONFLICT",
            Status::TaskSetFull => "TASK SET FULL",
            Status::AcaActive => "ACA ACTIVE",
            Status::TaskAborted => "TASK ABORTED",
            Status::Other(_) => "unknown status",
        }
    }
}

impl From<u8> for Status {
    fn from(b: u8) -> Status {
        Status::from_u8(b)
    }
}

impl From<Status> for u8 {
    fn from(s: Status) -> u8 {
        s.to_u8()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Other(b) => write!(f, "status 0x{b:02x}"),
            s => f.write_str(s.name()),
        }
    }
}

/// The SENSE KEY field (SPC-4 "Sense key and additional sense code
/// definitions"). All 16 values are defined, so this is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    VendorSpecific = 0x9,
    CopyAborted = 0xa,
    AbortedCommand = 0xb,
    /// 0xC: obsolete (was EQUAL), reserved in SPC-4.
    Reserved = 0xc,
    VolumeOverflow = 0xd,
    Miscompare = 0xe,
    Completed = 0xf,
}

impl SenseKey {
    /// The key from the low 4 bits of `b`.
    pub const fn from_u8(b: u8) -> SenseKey {
        match b & 0x0f {
            0x0 => SenseKey::NoSense,
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0x8 => SenseKey::BlankCheck,
            0x9 => SenseKey::VendorSpecific,
            0xa => SenseKey::CopyAborted,
            0xb => SenseKey::AbortedCommand,
            0xc => SenseKey::Reserved,
            0xd => SenseKey::VolumeOverflow,
            0xe => SenseKey::Miscompare,
            _ => SenseKey::Completed,
        }
    }

    pub const fn to_u8(self) -> u8 {
        self as u8
    }

    /// The name SPC uses.
    pub const fn name(self) -> &'static str {
        match self {
            SenseKey::NoSense => "NO SENSE",
            SenseKey::RecoveredError => "RECOVERED ERROR",
            SenseKey::NotReady => "NOT READY",
            SenseKey::MediumError => "MEDIUM ERROR",
            SenseKey::HardwareError => "HARDWARE ERROR",
            SenseKey::IllegalRequest => "ILLEGAL REQUEST",
            SenseKey::UnitAttention => "UNIT ATTENTION",
            SenseKey::DataProtect => "DATA PROTECT",
            SenseKey::BlankCheck => "BLANK CHECK",
            SenseKey::VendorSpecific => "VENDOR SPECIFIC",
            SenseKey::CopyAborted => "COPY ABORTED",
            SenseKey::AbortedCommand => "ABORTED COMMAND",
            SenseKey::Reserved => "RESERVED (0xC)",
            SenseKey::VolumeOverflow => "VOLUME OVERFLOW",
            SenseKey::Miscompare => "MISCOMPARE",
            SenseKey::Completed => "COMPLETED",
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ASC/ASCQ pairs worth a name (SPC-4 "ASC and ASCQ assignments").
const ASC_TABLE: &[(u8, u8, &str)] = &[
    (0x00, 0x00, "no additional sense information"),
    (0x04, 0x00, "logical unit not ready, cause not reportable"),
    (0x04, 0x01, "logical unit is in process of becoming ready"),
    (
        0x04,
        0x02,
        "logical unit not ready, initializing command required",
    ),
    (
        0x04,
        0x03,
        "logical unit not ready, manual intervention required",
    ),
    (0x04, 0x04, "logical unit not ready, format in progress"),
    (0x04, 0x05, "logical unit not ready, rebuild in progress"),
    (
        0x04,
        0x06,
        "logical unit not ready, recalculation in progress",
    ),
    (0x04, 0x07, "logical unit not ready, operation in progress"),
    (0x04, 0x08, "logical unit not ready, long write in progress"),
    (0x04, 0x09, "logical unit not ready, self-test in progress"),
    (
        0x04,
        0x0a,
        "logical unit not accessible, asymmetric access state transition",
    ),
    (
        0x04,
        0x0b,
        "logical unit not accessible, target port in standby state",
    ),
    (
        0x04,
        0x0c,
        "logical unit not accessible, target port in unavailable state",
    ),
    (
        0x04,
        0x11,
        "logical unit not ready, notify (enable spinup) required",
    ),
    (0x04, 0x12, "logical unit not ready, offline"),
    (
        0x04,
        0x14,
        "logical unit not ready, space allocation in progress",
    ),
    (0x0c, 0x00, "write error"),
    (0x10, 0x01, "logical block guard check failed"),
    (0x10, 0x02, "logical block application tag check failed"),
    (0x10, 0x03, "logical block reference tag check failed"),
    (0x11, 0x00, "unrecovered read error"),
    (0x1a, 0x00, "parameter list length error"),
    (0x20, 0x00, "invalid command operation code"),
    (0x21, 0x00, "logical block address out of range"),
    (0x24, 0x00, "invalid field in CDB"),
    (0x25, 0x00, "logical unit not supported"),
    (0x26, 0x00, "invalid field in parameter list"),
    (0x26, 0x01, "parameter not supported"),
    (0x26, 0x02, "parameter value invalid"),
    (0x27, 0x00, "write protected"),
    (0x27, 0x01, "hardware write protected"),
    (0x27, 0x02, "logical unit software write protected"),
    (0x27, 0x07, "space allocation failed write protect"),
    (
        0x28,
        0x00,
        "not ready to ready change, medium may have changed",
    ),
    (0x29, 0x00, "power on, reset, or bus device reset occurred"),
    (0x29, 0x01, "power on occurred"),
    (0x29, 0x02, "SCSI bus reset occurred"),
    (0x29, 0x03, "bus device reset function occurred"),
    (0x29, 0x04, "device internal reset"),
    (0x29, 0x05, "transceiver mode changed to single-ended"),
    (0x29, 0x06, "transceiver mode changed to LVD"),
    (0x29, 0x07, "I_T nexus loss occurred"),
    (0x2a, 0x00, "parameters changed"),
    (0x2a, 0x01, "mode parameters changed"),
    (0x2a, 0x03, "reservations preempted"),
    (0x2a, 0x04, "reservations released"),
    (0x2a, 0x05, "registrations preempted"),
    (0x2a, 0x06, "asymmetric access state changed"),
    (0x2a, 0x09, "capacity data has changed"),
    (0x2c, 0x00, "command sequence error"),
    (0x2f, 0x00, "commands cleared by another initiator"),
    (0x38, 0x07, "thin provisioning soft threshold reached"),
    (0x3a, 0x00, "medium not present"),
    (0x3e, 0x01, "logical unit failure"),
    (0x3e, 0x02, "timeout on logical unit"),
    (0x3f, 0x00, "target operating conditions have changed"),
    (0x3f, 0x01, "microcode has been changed"),
    (0x3f, 0x03, "inquiry data has changed"),
    (0x3f, 0x0e, "reported luns data has changed"),
    (0x44, 0x00, "internal target failure"),
    (0x47, 0x00, "SCSI parity error"),
    (0x4b, 0x00, "data phase error"),
    (0x4e, 0x00, "overlapped commands attempted"),
    (0x55, 0x03, "insufficient resources"),
    (0x5d, 0x00, "failure prediction threshold exceeded"),
];

/// The SPC name of an ASC/ASCQ pair, if it is one that matters in practice.
pub fn asc_description(asc: u8, ascq: u8) -> Option<&'static str> {
    ASC_TABLE
        .iter()
        .find(|(a, q, _)| *a == asc && *q == ascq)
        .map(|(_, _, name)| *name)
}

/// Sense data field offsets.
mod field {
    /// Byte 0: VALID (fixed only) and RESPONSE CODE.
    pub const RESPONSE_CODE: usize = 0;

    /// Fixed format (SPC-4 4.5.3).
    pub mod fixed {
        use core::ops::Range;
        pub const SENSE_KEY: usize = 2;
        pub const INFORMATION: Range<usize> = 3..7;
        pub const ADDITIONAL_LEN: usize = 7;
        pub const COMMAND_SPECIFIC: Range<usize> = 8..12;
        pub const ASC: usize = 12;
        pub const ASCQ: usize = 13;
        pub const FRU: usize = 14;
        pub const SKS: Range<usize> = 15..18;
        pub const LEN: usize = 18;
    }

    /// Descriptor format (SPC-4 4.5.2).
    pub mod desc {
        pub const SENSE_KEY: usize = 1;
        pub const ASC: usize = 2;
        pub const ASCQ: usize = 3;
        pub const ADDITIONAL_LEN: usize = 7;
        pub const DESCRIPTORS: usize = 8;
    }

    /// Sense data descriptor types.
    pub const DESC_INFORMATION: u8 = 0x00;
    pub const DESC_COMMAND_SPECIFIC: u8 = 0x01;
    pub const DESC_SENSE_KEY_SPECIFIC: u8 = 0x02;
    pub const DESC_FRU: u8 = 0x03;
}

/// VALID bit of fixed format byte 0 / the information descriptor.
const VALID: u8 = 0x80;
/// SKSV: the sense-key-specific bytes are valid.
const SKSV: u8 = 0x80;

/// The sense data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenseFormat {
    Fixed,
    Descriptor,
}

/// The 3 sense-key-specific bytes (SPC-4 "Sense key specific"), SKSV set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenseKeySpecific(pub [u8; 3]);

/// Where ILLEGAL REQUEST found the bad field (sense-key-specific field
/// pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// In the CDB (C/D=1) rather than the parameter list.
    pub in_cdb: bool,
    /// Byte of the field at fault.
    pub byte: u16,
    /// Bit of the field at fault, when BPV says it is given.
    pub bit: Option<u8>,
}

impl SenseKeySpecific {
    /// For ILLEGAL REQUEST: the field pointer.
    pub fn field_pointer(self) -> FieldPointer {
        let [b0, b1, b2] = self.0;
        FieldPointer {
            in_cdb: b0 & 0x40 != 0,
            byte: u16::from_be_bytes([b1, b2]),
            bit: (b0 & 0x08 != 0).then_some(b0 & 0x07),
        }
    }

    /// For NOT READY / NO SENSE: progress of a long operation, 0..=65535
    /// standing for 0..100%.
    pub fn progress(self) -> u16 {
        u16::from_be_bytes([self.0[1], self.0[2]])
    }
}

/// Decoded sense data (SPC-4 4.5): a plain value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    /// RESPONSE CODE: 0x70..=0x73.
    pub response_code: u8,
    pub format: SenseFormat,
    /// The error is about an earlier command (0x71/0x73), not this one.
    pub deferred: bool,
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION (usually the first failing LBA), when marked valid:
    /// fixed bytes 3..7 with VALID set, or descriptor type 0x00.
    pub information: Option<u64>,
    /// COMMAND-SPECIFIC INFORMATION (fixed bytes 8..12 or descriptor type
    /// 0x01), when not zero.
    pub command_specific: Option<u64>,
    /// FIELD REPLACEABLE UNIT CODE, when not zero.
    pub fru: Option<u8>,
    /// Sense-key-specific bytes, when SKSV is set.
    pub sense_key_specific: Option<SenseKeySpecific>,
    /// The sense data was shorter than its own additional sense length
    /// said (fields past the end read as absent).
    pub truncated: bool,
}

impl Sense {
    /// A current, fixed-format sense with just key and ASC/ASCQ.
    pub fn new(key: SenseKey, asc: u8, ascq: u8) -> Sense {
        Sense {
            response_code: 0x70,
            format: SenseFormat::Fixed,
            deferred: false,
            key,
            asc,
            ascq,
            information: None,
            command_specific: None,
            fru: None,
            sense_key_specific: None,
            truncated: false,
        }
    }

    /// Parse sense data (SenseLength prefix already stripped).
    pub fn parse(buf: &[u8]) -> Result<Sense, ParseError> {
        ParseError::need(Context::Sense, buf, 1)?;
        let code = buf[field::RESPONSE_CODE] & 0x7f;
        match code {
            0x70 | 0x71 => Sense::parse_fixed(buf, code),
            0x72 | 0x73 => Sense::parse_descriptor(buf, code),
            _ => Err(ParseError::new(
                Context::Sense,
                field::RESPONSE_CODE,
                ErrorKind::ResponseCode(code),
            )),
        }
    }

    /// The bytes the sense data declares for itself (header + additional
    /// sense length), cut to what was sent; and whether it was cut.
    fn declared(buf: &[u8], additional_len_at: usize) -> (&[u8], bool) {
        match buf.get(additional_len_at) {
            Some(&n) => {
                let declared = additional_len_at + 1 + usize::from(n);
                (&buf[..declared.min(buf.len())], buf.len() < declared)
            }
            None => (buf, true),
        }
    }

    fn parse_fixed(buf: &[u8], code: u8) -> Result<Sense, ParseError> {
        use field::fixed::*;
        ParseError::need(Context::Sense, buf, SENSE_KEY + 1)?;
        let (buf, truncated) = Sense::declared(buf, ADDITIONAL_LEN);
        let byte = |i: usize| buf.get(i).copied().unwrap_or(0);
        let information = match buf.get(INFORMATION) {
            Some(info) if buf[0] & VALID != 0 => Some(u64::from(BigEndian::read_u32(info))),
            _ => None,
        };
        let command_specific = buf
            .get(COMMAND_SPECIFIC)
            .map(|b| u64::from(BigEndian::read_u32(b)))
            .filter(|v| *v != 0);
        let sense_key_specific = buf
            .get(SKS)
            .filter(|b| b[0] & SKSV != 0)
            .map(|b| SenseKeySpecific([b[0], b[1], b[2]]));
        Ok(Sense {
            response_code: code,
            format: SenseFormat::Fixed,
            deferred: code == 0x71,
            key: SenseKey::from_u8(buf[SENSE_KEY]),
            asc: byte(ASC),
            ascq: byte(ASCQ),
            information,
            command_specific,
            fru: Some(byte(FRU)).filter(|f| *f != 0),
            sense_key_specific,
            truncated,
        })
    }

    fn parse_descriptor(buf: &[u8], code: u8) -> Result<Sense, ParseError> {
        use field::desc::*;
        ParseError::need(Context::Sense, buf, SENSE_KEY + 1)?;
        let (buf, truncated) = Sense::declared(buf, ADDITIONAL_LEN);
        let byte = |i: usize| buf.get(i).copied().unwrap_or(0);
        let mut sense = Sense {
            response_code: code,
            format: SenseFormat::Descriptor,
            deferred: code == 0x73,
            key: SenseKey::from_u8(buf[SENSE_KEY]),
            asc: byte(ASC),
            ascq: byte(ASCQ),
            information: None,
            command_specific: None,
            fru: None,
            sense_key_specific: None,
            truncated,
        };
        let mut at = DESCRIPTORS;
        while at < buf.len() {
            // Each descriptor: type, ADDITIONAL LENGTH, then that many bytes.
            let Some(&len) = buf.get(at + 1) else {
                return Sense::bad_descriptor(at, truncated, sense);
            };
            let end = at + 2 + usize::from(len);
            let Some(d) = buf.get(at..end) else {
                return Sense::bad_descriptor(at, truncated, sense);
            };
            match d[0] {
                // VALID bit, reserved, 8-byte INFORMATION.
                field::DESC_INFORMATION if d.len() >= 12 && d[2] & VALID != 0 => {
                    sense.information = Some(BigEndian::read_u64(&d[4..12]));
                }
                field::DESC_COMMAND_SPECIFIC if d.len() >= 12 => {
                    sense.command_specific = Some(BigEndian::read_u64(&d[4..12]));
                }
                field::DESC_SENSE_KEY_SPECIFIC if d.len() >= 7 && d[4] & SKSV != 0 => {
                    sense.sense_key_specific = Some(SenseKeySpecific([d[4], d[5], d[6]]));
                }
                field::DESC_FRU if d.len() >= 4 => {
                    sense.fru = Some(d[3]).filter(|f| *f != 0);
                }
                // Other descriptor types (ATA return, progress, ...) and
                // short known ones carry nothing we act on: skip them.
                _ => {}
            }
            at = end;
        }
        Ok(sense)
    }

    /// A descriptor at `at` runs past the end. If the data was cut short
    /// in transit, keep what came before it; if the target's own
    /// additional sense length ends inside it, the sense data is garbage.
    fn bad_descriptor(at: usize, truncated: bool, sense: Sense) -> Result<Sense, ParseError> {
        if truncated {
            Ok(sense)
        } else {
            Err(ParseError::invalid(
                Context::Sense,
                at,
                "sense data descriptor runs past the additional sense length",
            ))
        }
    }

    /// The SPC name of the ASC/ASCQ pair, if known.
    pub fn description(&self) -> Option<&'static str> {
        asc_description(self.asc, self.ascq)
    }

    /// Emit in this sense's format (response code as stored) to the end
    /// of `out`: 18 bytes for fixed format; for descriptor format an
    /// 8-byte header plus information / command-specific / sense-key-
    /// specific descriptors for the fields present. Fixed format can only
    /// carry 32-bit information and command-specific values; larger ones
    /// are dropped (VALID=0).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let code = self.response_code & 0x7f;
        match self.format {
            SenseFormat::Fixed => {
                use field::fixed::*;
                let mut b = [0u8; LEN];
                b[0] = code;
                b[SENSE_KEY] = self.key.to_u8();
                if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
                    b[0] |= VALID;
                    BigEndian::write_u32(&mut b[INFORMATION], info);
                }
                b[ADDITIONAL_LEN] = (LEN - ADDITIONAL_LEN - 1) as u8;
                if let Some(cs) = self.command_specific.and_then(|i| u32::try_from(i).ok()) {
                    BigEndian::write_u32(&mut b[COMMAND_SPECIFIC], cs);
                }
                b[ASC] = self.asc;
                b[ASCQ] = self.ascq;
                b[FRU] = self.fru.unwrap_or(0);
                if let Some(SenseKeySpecific(s)) = self.sense_key_specific {
                    b[SKS].copy_from_slice(&s);
                    b[SKS.start] |= SKSV;
                }
                out.extend_from_slice(&b);
            }
            SenseFormat::Descriptor => {
                use field::desc::*;
                let start = out.len();
                out.extend_from_slice(&[code, self.key.to_u8(), self.asc, self.ascq, 0, 0, 0, 0]);
                if let Some(info) = self.information {
                    out.extend_from_slice(&[field::DESC_INFORMATION, 0x0a, VALID, 0]);
                    out.extend_from_slice(&info.to_be_bytes());
                }
                if let Some(cs) = self.command_specific {
                    out.extend_from_slice(&[field::DESC_COMMAND_SPECIFIC, 0x0a, 0, 0]);
                    out.extend_from_slice(&cs.to_be_bytes());
                }
                if let Some(SenseKeySpecific(s)) = self.sense_key_specific {
                    out.extend_from_slice(&[field::DESC_SENSE_KEY_SPECIFIC, 0x06, 0, 0]);
                    out.extend_from_slice(&[s[0] | SKSV, s[1], s[2], 0]);
                }
                if let Some(fru) = self.fru {
                    out.extend_from_slice(&[field::DESC_FRU, 0x02, 0, fru]);
                }
                // At most 4 descriptors of <= 12 bytes: fits the u8.
                out[start + ADDITIONAL_LEN] = (out.len() - start - DESCRIPTORS) as u8;
            }
        }
    }
}

/// `ILLEGAL REQUEST: logical block address out of range (ASC 0x21 ASCQ 0x00)`
impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.deferred {
            f.write_str("deferred error: ")?;
        }
        match self.description() {
            Some(d) => write!(
                f,
                "{}: {d} (ASC 0x{:02x} ASCQ 0x{:02x})",
                self.key, self.asc, self.ascq
            )?,
            None => write!(
                f,
                "{}: ASC 0x{:02x} ASCQ 0x{:02x}",
                self.key, self.asc, self.ascq
            )?,
        }
        if let Some(info) = self.information {
            write!(f, ", information 0x{info:x}")?;
        }
        if let (SenseKey::IllegalRequest, Some(sks)) = (self.key, self.sense_key_specific) {
            let p = sks.field_pointer();
            let place = if p.in_cdb { "CDB" } else { "parameter list" };
            write!(f, ", {place} byte {}", p.byte)?;
            if let Some(bit) = p.bit {
                write!(f, " bit {bit}")?;
            }
        }
        Ok(())
    }
}

/// Why a unit attention was raised, for the conditions the engine reacts
/// to beyond retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAttentionReason {
    /// 2A/09 CAPACITY DATA HAS CHANGED: re-read the capacity.
    CapacityChanged,
    /// 3F/03 INQUIRY DATA HAS CHANGED: re-read INQUIRY / VPD.
    InquiryChanged,
    /// 3F/0E REPORTED LUNS DATA HAS CHANGED: re-run REPORT LUNS.
    ReportedLunsChanged,
    /// 29/xx power on, reset, I_T nexus loss: state the initiator set up
    /// on the LU (reservations, mode pages) may be gone.
    Reset,
    /// 2A/06 ASYMMETRIC ACCESS STATE CHANGED, 2A/07 IMPLICIT ASYMMETRIC
    /// ACCESS STATE TRANSITION FAILED: read the target port groups' states
    /// again (REPORT TARGET PORT GROUPS).
    AccessStateChanged,
    /// Anything else (mode parameters changed, ...).
    Other { asc: u8, ascq: u8 },
}

impl UnitAttentionReason {
    /// The reason a unit attention's ASC/ASCQ give.
    pub fn from_asc(asc: u8, ascq: u8) -> UnitAttentionReason {
        match (asc, ascq) {
            (0x2a, 0x09) => UnitAttentionReason::CapacityChanged,
            (0x3f, 0x03) => UnitAttentionReason::InquiryChanged,
            (0x3f, 0x0e) => UnitAttentionReason::ReportedLunsChanged,
            (0x29, _) => UnitAttentionReason::Reset,
            (0x2a, 0x06 | 0x07) => UnitAttentionReason::AccessStateChanged,
            _ => UnitAttentionReason::Other { asc, ascq },
        }
    }

    /// Whether the LU may have changed under us (its size, its INQUIRY
    /// data, the target's LUN inventory): read it again.
    pub fn lu_may_have_changed(self) -> bool {
        matches!(
            self,
            UnitAttentionReason::CapacityChanged
                | UnitAttentionReason::InquiryChanged
                | UnitAttentionReason::ReportedLunsChanged
        )
    }

    /// Whether the paths' ALUA states may have changed.
    pub fn access_states_changed(self) -> bool {
        self == UnitAttentionReason::AccessStateChanged
    }
}

/// What the initiator should do with a completed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The command succeeded.
    Done,
    /// The target is temporarily unable: retry the same command after a
    /// delay, within the engine's retry budget.
    RetryAfterBackoff,
    /// A unit attention: the command was not executed and may be retried
    /// at once (the condition is reported once and then cleared). The
    /// reason says whether cached LU state must be refreshed first.
    UnitAttention { reason: UnitAttentionReason },
    /// The LU refuses writes (DATA PROTECT, ASC 0x27): stop writing,
    /// report read-only.
    WriteProtected,
    /// The LU does not support this command or a field of it (ILLEGAL
    /// REQUEST, 20/00 INVALID COMMAND OPERATION CODE or 24/00 INVALID
    /// FIELD IN CDB): fall back (READ CAPACITY(16) -> (10)) or stop using
    /// the feature (UNMAP, WRITE SAME), do not retry.
    Unsupported,
    /// Retrying will not help: report the error.
    Fatal,
}

/// Classify a completed command by its status and, for CHECK CONDITION,
/// its sense data. The reasoning for each outcome:
///
/// - GOOD, CONDITION MET: success (CONDITION MET is PRE-FETCH's GOOD).
/// - BUSY, TASK SET FULL: the target is out of task slots; the command
///   was not run (SAM-5). Back off and retry.
/// - ACA ACTIVE: we never set NACA, so another initiator's ACA blocks
///   the task set; it clears without us. Back off and retry.
/// - TASK ABORTED: another I_T nexus aborted our task (TAS=1). The
///   command did not complete; reads and writes are idempotent, so retry.
/// - RESERVATION CONFLICT: another initiator holds a reservation; that
///   does not go away by retrying. Fatal.
/// - CHECK CONDITION without sense data: nothing to base a decision on.
///   Fatal.
/// - Deferred sense (0x71/0x73): the error is about an *earlier* command,
///   typically a cached write the target acknowledged and then lost.
///   That cannot be fixed by retrying anything; Fatal.
/// - ASC/ASCQ 55/03 INSUFFICIENT RESOURCES (under any key): temporary by
///   definition. Back off and retry.
/// - UNIT ATTENTION: the command was not executed; see
///   [`UnitAttentionReason`].
/// - NOT READY 04/01 becoming ready and the other "in progress" causes
///   (04/04-09, 04/11, 04/14) and 04/0A ALUA transition: the LU will be
///   ready; back off and retry, as Linux does. Other NOT READY causes
///   (04/00, manual intervention, standby/unavailable port, medium not
///   present): Fatal for this path.
/// - RECOVERED ERROR, COMPLETED: the command completed (with a warning
///   worth logging). Done.
/// - NO SENSE under CHECK CONDITION: the target reports nothing wrong but
///   did not say GOOD, so whether data moved is unknown. Retry (bounded).
/// - ABORTED COMMAND: the target aborted the command (transport error,
///   parity, data phase, internal timeout): retry after backoff. Except
///   ASC 0x10 (protection information check failed): data integrity,
///   Fatal.
/// - DATA PROTECT with ASC 0x27: WriteProtected. Other DATA PROTECT
///   (access not authorized, security): Fatal.
/// - ILLEGAL REQUEST 20/00 and 24/00: Unsupported. Other ILLEGAL REQUEST
///   (LBA out of range, LU not supported, parameter list errors): our
///   request is wrong, Fatal.
/// - MEDIUM ERROR, HARDWARE ERROR, BLANK CHECK, VENDOR SPECIFIC, COPY
///   ABORTED, VOLUME OVERFLOW, MISCOMPARE, reserved: the target already
///   did its own retries, or the outcome is final. Fatal.
/// - Any other status byte: unknown, Fatal.
pub fn disposition(status: Status, sense: Option<&Sense>) -> Disposition {
    use Disposition::*;
    let sense = match status {
        Status::Good | Status::ConditionMet => return Done,
        Status::Busy | Status::TaskSetFull | Status::AcaActive | Status::TaskAborted => {
            return RetryAfterBackoff;
        }
        Status::ReservationConflict | Status::Other(_) => return Fatal,
        Status::CheckCondition => match sense {
            Some(s) => s,
            None => return Fatal,
        },
    };
    if sense.deferred {
        return Fatal;
    }
    let (asc, ascq) = (sense.asc, sense.ascq);
    if (asc, ascq) == (0x55, 0x03) {
        return RetryAfterBackoff;
    }
    match sense.key {
        SenseKey::UnitAttention => UnitAttention {
            reason: UnitAttentionReason::from_asc(asc, ascq),
        },
        SenseKey::NotReady => match (asc, ascq) {
            (0x04, 0x01 | 0x04..=0x0a | 0x11 | 0x14) => RetryAfterBackoff,
            _ => Fatal,
        },
        SenseKey::RecoveredError | SenseKey::Completed => Done,
        SenseKey::NoSense => RetryAfterBackoff,
        SenseKey::AbortedCommand if asc == 0x10 => Fatal,
        SenseKey::AbortedCommand => RetryAfterBackoff,
        SenseKey::DataProtect if asc == 0x27 => WriteProtected,
        SenseKey::IllegalRequest if (asc, ascq) == (0x20, 0) || (asc, ascq) == (0x24, 0) => {
            Unsupported
        }
        _ => Fatal,
    }
}

/// A SYNCHRONIZE CACHE the LU refused with ILLEGAL REQUEST (any ASC: an
/// LU without the command, or without a cache to flush) has nothing to
/// flush: the flush succeeds, as the kernel's sd treats it. Any other
/// refusal (MEDIUM ERROR, HARDWARE ERROR, NOT READY past its retries, …)
/// is an error: the data may not be on stable storage.
pub fn flush_not_needed(opcode: u8, status: Status, sense: Option<&Sense>) -> bool {
    matches!(opcode, 0x35 | 0x91)
        && status == Status::CheckCondition
        && sense.is_some_and(|s| s.key == SenseKey::IllegalRequest)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_flush_refused_with_illegal_request_has_nothing_to_flush() {
        let sense = |key| Some(Sense::new(key, 0x20, 0));
        let cc = Status::CheckCondition;
        for op in [0x35, 0x91] {
            assert!(flush_not_needed(
                op,
                cc,
                sense(SenseKey::IllegalRequest).as_ref()
            ));
            assert!(!flush_not_needed(
                op,
                cc,
                sense(SenseKey::MediumError).as_ref()
            ));
            assert!(!flush_not_needed(
                op,
                cc,
                sense(SenseKey::HardwareError).as_ref()
            ));
            assert!(!flush_not_needed(op, cc, None));
            assert!(!flush_not_needed(op, Status::Busy, None));
        }
        // Not a flush: an ILLEGAL REQUEST on a write is an error.
        assert!(!flush_not_needed(
            0x2a,
            cc,
            sense(SenseKey::IllegalRequest).as_ref()
        ));
    }
    use crate::scsi::testutil::Rng;

    /// LIO answering READ(16) past the end: fixed format, ILLEGAL REQUEST
    /// 21/00, information = the LBA.
    #[rustfmt::skip]
    const FIXED_LBA_OUT_OF_RANGE: [u8; 18] = [
        0xf0, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x0a,
        0x00, 0x00, 0x00, 0x00, 0x21, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ];

    /// Invalid field in CDB, pointer to CDB byte 1 bit 3 (FUA on a
    /// target that refuses it).
    #[rustfmt::skip]
    const FIXED_INVALID_FIELD: [u8; 18] = [
        0x70, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x0a,
        0x00, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0xcb,
        0x00, 0x01,
    ];

    /// Descriptor format medium error with a 64-bit information
    /// descriptor and a sense-key-specific descriptor.
    #[rustfmt::skip]
    const DESCRIPTOR_MEDIUM: [u8; 28] = [
        0x72, 0x03, 0x11, 0x00, 0x00, 0x00, 0x00, 0x14,
        0x00, 0x0a, 0x80, 0x00, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45, 0x67, 0x89,
        0x02, 0x06, 0x00, 0x00, 0x80, 0x00, 0x10, 0x00,
    ];

    /// Capacity changed unit attention, as sent after a LUN resize.
    #[rustfmt::skip]
    const UA_CAPACITY: [u8; 18] = [
        0x70, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x0a,
        0x00, 0x00, 0x00, 0x00, 0x2a, 0x09, 0x00, 0x00,
        0x00, 0x00,
    ];

    #[test]
    fn status_round_trip() {
        for b in 0..=255u8 {
            assert_eq!(Status::from(b).to_u8(), b);
        }
        assert_eq!(Status::from(0x02), Status::CheckCondition);
        assert_eq!(Status::from(0x18).to_string(), "RESERVATION CONFLICT");
        assert_eq!(Status::from(0x22).to_string(), "status 0x22");
    }

    #[test]
    fn sense_key_total() {
        for b in 0..16u8 {
            assert_eq!(SenseKey::from_u8(b).to_u8(), b);
        }
        assert_eq!(SenseKey::from_u8(0xf6), SenseKey::UnitAttention);
        assert_eq!(SenseKey::MediumError.to_string(), "MEDIUM ERROR");
    }

    #[test]
    fn fixed_lba_out_of_range() {
        let s = Sense::parse(&FIXED_LBA_OUT_OF_RANGE).unwrap();
        assert_eq!(s.response_code, 0x70);
        assert_eq!(s.format, SenseFormat::Fixed);
        assert!(!s.deferred);
        assert_eq!(s.key, SenseKey::IllegalRequest);
        assert_eq!((s.asc, s.ascq), (0x21, 0x00));
        assert_eq!(s.information, Some(0x1_0000));
        assert_eq!(s.sense_key_specific, None);
        assert!(!s.truncated);
        assert_eq!(
            s.to_string(),
            "ILLEGAL REQUEST: logical block address out of range (ASC 0x21 ASCQ 0x00), information 0x10000"
        );
        assert_eq!(
            disposition(Status::CheckCondition, Some(&s)),
            Disposition::Fatal
        );
        let mut out = Vec::new();
        s.emit(&mut out);
        assert_eq!(out, FIXED_LBA_OUT_OF_RANGE);
    }

    #[test]
    fn fixed_field_pointer() {
        let s = Sense::parse(&FIXED_INVALID_FIELD).unwrap();
        let p = s.sense_key_specific.unwrap().field_pointer();
        assert_eq!(
            p,
            FieldPointer {
                in_cdb: true,
                byte: 1,
                bit: Some(3)
            }
        );
        assert_eq!(
            s.to_string(),
            "ILLEGAL REQUEST: invalid field in CDB (ASC 0x24 ASCQ 0x00), CDB byte 1 bit 3"
        );
        assert_eq!(
            disposition(Status::CheckCondition, Some(&s)),
            Disposition::Unsupported
        );
        let mut out = Vec::new();
        s.emit(&mut out);
        assert_eq!(out, FIXED_INVALID_FIELD);
    }

    #[test]
    fn descriptor_medium_error() {
        let s = Sense::parse(&DESCRIPTOR_MEDIUM).unwrap();
        assert_eq!(s.format, SenseFormat::Descriptor);
        assert_eq!(s.key, SenseKey::MediumError);
        assert_eq!((s.asc, s.ascq), (0x11, 0x00));
        assert_eq!(s.information, Some(0x01_2345_6789));
        assert_eq!(s.sense_key_specific.unwrap().progress(), 0x0010);
        let mut out = Vec::new();
        s.emit(&mut out);
        assert_eq!(out, DESCRIPTOR_MEDIUM);
        assert_eq!(Sense::parse(&out).unwrap(), s);
    }

    #[test]
    fn unit_attention_reasons() {
        let s = Sense::parse(&UA_CAPACITY).unwrap();
        assert_eq!(
            disposition(Status::CheckCondition, Some(&s)),
            Disposition::UnitAttention {
                reason: UnitAttentionReason::CapacityChanged
            }
        );
        let ua = |asc, ascq| {
            disposition(
                Status::CheckCondition,
                Some(&Sense::new(SenseKey::UnitAttention, asc, ascq)),
            )
        };
        let reason = |r| Disposition::UnitAttention { reason: r };
        assert_eq!(ua(0x3f, 0x03), reason(UnitAttentionReason::InquiryChanged));
        assert_eq!(
            ua(0x3f, 0x0e),
            reason(UnitAttentionReason::ReportedLunsChanged)
        );
        assert_eq!(ua(0x29, 0x07), reason(UnitAttentionReason::Reset));
        assert_eq!(
            ua(0x2a, 0x01),
            reason(UnitAttentionReason::Other {
                asc: 0x2a,
                ascq: 0x01
            })
        );
    }

    #[test]
    fn dispositions() {
        let cc =
            |key, asc, ascq| disposition(Status::CheckCondition, Some(&Sense::new(key, asc, ascq)));
        use Disposition::*;
        assert_eq!(disposition(Status::Good, None), Done);
        assert_eq!(disposition(Status::ConditionMet, None), Done);
        assert_eq!(disposition(Status::Busy, None), RetryAfterBackoff);
        assert_eq!(disposition(Status::TaskSetFull, None), RetryAfterBackoff);
        assert_eq!(disposition(Status::ReservationConflict, None), Fatal);
        assert_eq!(disposition(Status::CheckCondition, None), Fatal);
        assert_eq!(disposition(Status::Other(0x22), None), Fatal);
        assert_eq!(cc(SenseKey::NotReady, 0x04, 0x01), RetryAfterBackoff);
        assert_eq!(cc(SenseKey::NotReady, 0x04, 0x0a), RetryAfterBackoff);
        assert_eq!(cc(SenseKey::NotReady, 0x04, 0x03), Fatal);
        assert_eq!(cc(SenseKey::NotReady, 0x3a, 0x00), Fatal);
        assert_eq!(cc(SenseKey::AbortedCommand, 0x47, 0x00), RetryAfterBackoff);
        assert_eq!(cc(SenseKey::AbortedCommand, 0x10, 0x01), Fatal);
        assert_eq!(cc(SenseKey::IllegalRequest, 0x55, 0x03), RetryAfterBackoff);
        assert_eq!(cc(SenseKey::DataProtect, 0x27, 0x00), WriteProtected);
        assert_eq!(cc(SenseKey::DataProtect, 0x27, 0x07), WriteProtected);
        assert_eq!(cc(SenseKey::DataProtect, 0x74, 0x71), Fatal);
        assert_eq!(cc(SenseKey::IllegalRequest, 0x20, 0x00), Unsupported);
        assert_eq!(cc(SenseKey::IllegalRequest, 0x25, 0x00), Fatal);
        assert_eq!(cc(SenseKey::RecoveredError, 0x5d, 0x00), Done);
        assert_eq!(cc(SenseKey::MediumError, 0x11, 0x00), Fatal);
        let mut deferred = Sense::new(SenseKey::MediumError, 0x0c, 0x00);
        deferred.deferred = true;
        deferred.response_code = 0x71;
        assert_eq!(disposition(Status::CheckCondition, Some(&deferred)), Fatal);
        assert_eq!(
            deferred.to_string(),
            "deferred error: MEDIUM ERROR: write error (ASC 0x0c ASCQ 0x00)"
        );
    }

    #[test]
    fn unknown_asc_falls_back_to_numbers() {
        let s = Sense::new(SenseKey::HardwareError, 0x99, 0x01);
        assert_eq!(s.to_string(), "HARDWARE ERROR: ASC 0x99 ASCQ 0x01");
        assert_eq!(
            asc_description(0x04, 0x01),
            Some("logical unit is in process of becoming ready")
        );
        for ascq in 0..=0x0c {
            assert!(asc_description(0x04, ascq).is_some(), "04/{ascq:02x}");
        }
        for ascq in 0..=0x07 {
            assert!(asc_description(0x29, ascq).is_some(), "29/{ascq:02x}");
        }
    }

    #[test]
    fn bad_response_codes_and_empty() {
        assert_eq!(
            Sense::parse(&[]).unwrap_err().kind,
            ErrorKind::Truncated { need: 1, have: 0 }
        );
        let e = Sense::parse(&[0x7f, 0, 0, 0]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ResponseCode(0x7f));
        assert_eq!(e.offset, 0);
        assert_eq!(
            e.to_string(),
            "sense data at byte 0: unsupported response code 0x7f"
        );
    }

    #[test]
    fn descriptor_running_past_declared_length_is_refused() {
        // Additional length 4, but the descriptor claims 10 more bytes.
        let buf = [0x72, 0x05, 0x24, 0x00, 0, 0, 0, 4, 0x00, 0x0a, 0x80, 0x00];
        let e = Sense::parse(&buf).unwrap_err();
        assert_eq!(e.offset, 8);
        assert!(matches!(e.kind, ErrorKind::Invalid(_)));
        // The same descriptor cut short in transit is dropped instead.
        let mut cut = DESCRIPTOR_MEDIUM.to_vec();
        cut.truncate(14);
        let s = Sense::parse(&cut).unwrap();
        assert!(s.truncated);
        assert_eq!(s.key, SenseKey::MediumError);
        assert_eq!(s.information, None);
    }

    #[test]
    fn every_truncation_parses_or_errs() {
        for whole in [
            &FIXED_LBA_OUT_OF_RANGE[..],
            &FIXED_INVALID_FIELD[..],
            &DESCRIPTOR_MEDIUM[..],
            &UA_CAPACITY[..],
        ] {
            for n in 0..whole.len() {
                match Sense::parse(&whole[..n]) {
                    // The key survives any cut that keeps its byte.
                    Ok(s) => assert_eq!(s.key, Sense::parse(whole).unwrap().key),
                    Err(e) => assert!(matches!(e.kind, ErrorKind::Truncated { .. })),
                }
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x5eed_5e45e);
        for _ in 0..20_000 {
            let mut buf = rng.bytes(64);
            if let Some(b) = buf.first_mut() {
                *b = 0x70 | (*b & 0x83);
            }
            if let Ok(s) = Sense::parse(&buf) {
                let _ = s.to_string();
                let _ = disposition(Status::CheckCondition, Some(&s));
                let mut out = Vec::new();
                s.emit(&mut out);
                Sense::parse(&out).unwrap();
            }
        }
    }
}
