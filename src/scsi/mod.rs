//! SCSI: CDBs, sense data and the parameter data sanroot reads from a LUN.
//!
//! A pure codec for the small part of SPC-4 / SBC-3 a boot-time initiator
//! needs, in the same shape as the rest of the wire code:
//!
//! - [`cdb`]: command descriptor blocks ([`Cdb`]), built from plain
//!   arguments, and the [`DataDirection`] each one implies;
//! - [`sense`]: the status byte ([`Status`]), fixed and descriptor format
//!   sense data ([`Sense`]), ASC/ASCQ names, and [`disposition`], the
//!   classification the engine's retry logic runs on;
//! - [`data`]: parameter data a target returns (standard INQUIRY, VPD pages
//!   0x00/0x80/0x83/0xB0/0xB2, READ CAPACITY, REPORT LUNS, MODE SENSE), as
//!   plain values with `parse` and `emit`;
//! - [`alua`]: REPORT TARGET PORT GROUPS data, asymmetric access states
//!   and the sense codes of their changes.
//!
//! What it is not: no I/O, no transport, no timers, no retry loop. It does
//! not know about iSCSI (the engine strips the 2-byte SenseLength prefix
//! before it hands sense bytes over, and turns a [`DataDirection`] into PDU
//! flags) nor about block devices.
//!
//! Everything parsed here comes from a target and is treated as hostile:
//! no parser panics on any input, and each failure is a [`ParseError`]
//! naming the structure ([`Context`]), the byte offset and what was wrong.

use std::fmt;

pub mod alua;
pub mod cdb;
pub mod data;
pub mod sense;

pub use cdb::{Cdb, DataDirection};
pub use data::{
    BlockLimits, Caching, Capacity, Designator, DeviceId, Inquiry, LogicalBlockProvisioning, Lun,
    ModePage, ModeSense, Peripheral, ProvisioningType, ReadCapacity10, ReadCapacity16, ReportLuns,
    SupportedPages, UnitSerial, lun_number, lun_to_bytes,
};
pub use sense::{
    Disposition, Sense, SenseKey, Status, UnitAttentionReason, asc_description, disposition,
};

/// Which structure a [`ParseError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Sense data (SPC-4 "Sense data", 4.5).
    Sense,
    /// Standard INQUIRY data (SPC-4 6.4.2).
    Inquiry,
    /// A vital product data page, by page code (SPC-4 "Vital product data").
    Vpd(u8),
    /// READ CAPACITY(10) parameter data (SBC-3 "READ CAPACITY (10) command").
    ReadCapacity10,
    /// READ CAPACITY(16) parameter data (SBC-3 "READ CAPACITY (16) command").
    ReadCapacity16,
    /// REPORT LUNS parameter data (SPC-4 6.33).
    ReportLuns,
    /// MODE SENSE(6) parameter data (SPC-4 "Mode parameter list format").
    ModeSense6,
    /// MODE SENSE(10) parameter data (SPC-4 "Mode parameter list format").
    ModeSense10,
    /// One mode page inside MODE SENSE data: page code, subpage code.
    ModePage(u8, u8),
    /// REPORT TARGET PORT GROUPS parameter data (SPC-5 6.36).
    ReportTargetPortGroups,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Context::Sense => f.write_str("sense data"),
            Context::Inquiry => f.write_str("standard INQUIRY data"),
            Context::Vpd(page) => write!(f, "VPD page 0x{page:02x}"),
            Context::ReadCapacity10 => f.write_str("READ CAPACITY(10) data"),
            Context::ReadCapacity16 => f.write_str("READ CAPACITY(16) data"),
            Context::ReportLuns => f.write_str("REPORT LUNS data"),
            Context::ModeSense6 => f.write_str("MODE SENSE(6) data"),
            Context::ModeSense10 => f.write_str("MODE SENSE(10) data"),
            Context::ModePage(page, 0) => write!(f, "mode page 0x{page:02x}"),
            Context::ModePage(page, sub) => write!(f, "mode page 0x{page:02x}/0x{sub:02x}"),
            Context::ReportTargetPortGroups => f.write_str("REPORT TARGET PORT GROUPS data"),
        }
    }
}

/// What was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The buffer ends before the structure does: `need` bytes are
    /// required, `have` were given. For data cut short by a small
    /// allocation length, `need` is what to ask for next time.
    Truncated { need: usize, have: usize },
    /// A VPD page came back with a different page code than was asked for.
    PageCode { expected: u8, found: u8 },
    /// The sense data response code is not one of 0x70..=0x73.
    ResponseCode(u8),
    /// A field holds a value that cannot be right (a length running past
    /// its container, a block length of zero, ...).
    Invalid(&'static str),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Truncated { need, have } => {
                write!(f, "truncated: need {need} bytes, have {have}")
            }
            ErrorKind::PageCode { expected, found } => write!(
                f,
                "page code 0x{found:02x} where 0x{expected:02x} was asked for"
            ),
            ErrorKind::ResponseCode(code) => {
                write!(f, "unsupported response code 0x{code:02x}")
            }
            ErrorKind::Invalid(why) => f.write_str(why),
        }
    }
}

/// A structure from a target could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    pub context: Context,
    /// Byte offset, from the start of the buffer handed to the parser, of
    /// the field at fault (for truncation: where the missing bytes start).
    pub offset: usize,
    pub kind: ErrorKind,
}

impl ParseError {
    pub(crate) const fn new(context: Context, offset: usize, kind: ErrorKind) -> ParseError {
        ParseError {
            context,
            offset,
            kind,
        }
    }

    pub(crate) const fn invalid(context: Context, offset: usize, why: &'static str) -> ParseError {
        ParseError::new(context, offset, ErrorKind::Invalid(why))
    }

    /// Refuse `buf` unless it holds at least `need` bytes.
    pub(crate) fn need(context: Context, buf: &[u8], need: usize) -> Result<(), ParseError> {
        if buf.len() < need {
            return Err(ParseError::new(
                context,
                buf.len(),
                ErrorKind::Truncated {
                    need,
                    have: buf.len(),
                },
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: {}", self.context, self.offset, self.kind)
    }
}

impl std::error::Error for ParseError {}

/// Test helpers shared by the submodules.
#[cfg(test)]
pub(crate) mod testutil {
    /// A small deterministic generator (xorshift64*) for garbage inputs.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// `len` random bytes, `len` below `max`.
        pub fn bytes(&mut self, max: usize) -> Vec<u8> {
            let len = (self.next() % max as u64) as usize;
            (0..len).map(|_| self.next() as u8).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_names_structure_offset_and_cause() {
        let e = ParseError::new(
            Context::Vpd(0x83),
            8,
            ErrorKind::Truncated { need: 24, have: 8 },
        );
        assert_eq!(
            e.to_string(),
            "VPD page 0x83 at byte 8: truncated: need 24 bytes, have 8"
        );
        let e = ParseError::invalid(Context::ModePage(8, 0), 2, "page too short");
        assert_eq!(e.to_string(), "mode page 0x08 at byte 2: page too short");
    }
}
