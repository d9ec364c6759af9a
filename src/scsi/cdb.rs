//! Command descriptor blocks (SAM-5 "Command descriptor block").
//!
//! Builders for the handful of commands a boot-time initiator sends, each
//! returning a [`Cdb`]: a fixed 16-byte array and the length actually
//! used, so nothing here allocates. The CONTROL byte is always 0 (no NACA,
//! no linked commands), and GROUP NUMBER is 0.
//!
//! Not here: sending anything, or deciding *which* command to send beyond
//! the 10-vs-16 byte choice ([`read`], [`write()`], [`sync_cache`]).
//!
//! All multi-byte CDB fields are big-endian.

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

/// SCSI operation codes used here.
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16); READ CAPACITY(16) is its service action 0x10.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    /// MAINTENANCE IN; REPORT TARGET PORT GROUPS is its service action 0x0a.
    pub const MAINTENANCE_IN: u8 = 0xa3;
}

/// Service action of READ CAPACITY(16) under SERVICE ACTION IN(16).
pub const SA_READ_CAPACITY_16: u8 = 0x10;
/// Service action of REPORT TARGET PORT GROUPS under MAINTENANCE IN.
pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;

/// FUA (force unit access) in byte 1 of READ/WRITE(10)/(16).
const FUA: u8 = 0x08;
/// UNMAP bit in byte 1 of WRITE SAME(16).
const WS_UNMAP: u8 = 0x08;
/// NDOB (no data-out buffer) bit in byte 1 of WRITE SAME(16).
const WS_NDOB: u8 = 0x01;
/// DBD (disable block descriptors) in byte 1 of MODE SENSE(6)/(10).
const DBD: u8 = 0x08;

/// Bytes of one UNMAP block descriptor (SBC-3 "UNMAP parameter list").
pub const UNMAP_DESCRIPTOR_LEN: usize = 16;
/// Bytes of the UNMAP parameter list header.
pub const UNMAP_HEADER_LEN: usize = 8;
/// The most descriptors one UNMAP parameter list can carry: its length
/// must fit the 16-bit PARAMETER LIST LENGTH of the CDB. A target's own
/// limit (VPD 0xB0 MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT) is usually lower.
pub const UNMAP_MAX_DESCRIPTORS: usize =
    (u16::MAX as usize - UNMAP_HEADER_LEN) / UNMAP_DESCRIPTOR_LEN;

/// A command descriptor block: up to 16 bytes, `len` of them used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cdb {
    pub bytes: [u8; 16],
    pub len: u8,
}

/// Which way data moves for a command, and how much (the iSCSI Expected
/// Data Transfer Length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    /// No data phase.
    None,
    /// Data-in (target to initiator), at most this many bytes.
    Read(u32),
    /// Data-out (initiator to target), exactly this many bytes.
    Write(u32),
}

impl DataDirection {
    /// The expected data transfer length (0 for [`DataDirection::None`]).
    pub fn len(self) -> u32 {
        match self {
            DataDirection::None => 0,
            DataDirection::Read(n) | DataDirection::Write(n) => n,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

impl Cdb {
    /// A CDB of `len` bytes (6, 10, 12 or 16) starting with `opcode`.
    fn new(opcode: u8, len: u8) -> Cdb {
        let mut bytes = [0u8; 16];
        bytes[0] = opcode;
        Cdb { bytes, len }
    }

    /// The bytes to put in the iSCSI SCSI Command PDU.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(16)]
    }

    /// The operation code (byte 0).
    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// Human name of the command this CDB holds.
    pub fn name(&self) -> &'static str {
        match self.bytes[0] {
            opcode::TEST_UNIT_READY => "TEST UNIT READY",
            opcode::INQUIRY => "INQUIRY",
            opcode::MODE_SENSE_6 => "MODE SENSE(6)",
            opcode::READ_CAPACITY_10 => "READ CAPACITY(10)",
            opcode::READ_10 => "READ(10)",
            opcode::WRITE_10 => "WRITE(10)",
            opcode::SYNCHRONIZE_CACHE_10 => "SYNCHRONIZE CACHE(10)",
            opcode::UNMAP => "UNMAP",
            opcode::MODE_SENSE_10 => "MODE SENSE(10)",
            opcode::READ_16 => "READ(16)",
            opcode::WRITE_16 => "WRITE(16)",
            opcode::SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE CACHE(16)",
            opcode::WRITE_SAME_16 => "WRITE SAME(16)",
            opcode::SERVICE_ACTION_IN_16 if self.bytes[1] & 0x1f == SA_READ_CAPACITY_16 => {
                "READ CAPACITY(16)"
            }
            opcode::SERVICE_ACTION_IN_16 => "SERVICE ACTION IN(16)",
            opcode::REPORT_LUNS => "REPORT LUNS",
            opcode::MAINTENANCE_IN if self.bytes[1] & 0x1f == SA_REPORT_TARGET_PORT_GROUPS => {
                "REPORT TARGET PORT GROUPS"
            }
            opcode::MAINTENANCE_IN => "MAINTENANCE IN",
            _ => "unknown command",
        }
    }

    /// The data phase this CDB implies, for a LUN with `block_size`-byte
    /// logical blocks (only READ/WRITE/WRITE SAME look at it).
    ///
    /// `None` when the transfer does not fit the 32-bit iSCSI Expected
    /// Data Transfer Length, or the opcode is not one this module builds.
    pub fn direction(&self, block_size: u32) -> Option<DataDirection> {
        let b = &self.bytes;
        let blocks = |len: u32| len.checked_mul(block_size);
        let dir = match b[0] {
            opcode::TEST_UNIT_READY
            | opcode::SYNCHRONIZE_CACHE_10
            | opcode::SYNCHRONIZE_CACHE_16 => DataDirection::None,
            opcode::INQUIRY => DataDirection::Read(u32::from(BigEndian::read_u16(&b[3..5]))),
            opcode::MODE_SENSE_6 => DataDirection::Read(u32::from(b[4])),
            opcode::MODE_SENSE_10 => DataDirection::Read(u32::from(BigEndian::read_u16(&b[7..9]))),
            opcode::READ_CAPACITY_10 => DataDirection::Read(8),
            opcode::SERVICE_ACTION_IN_16 => DataDirection::Read(BigEndian::read_u32(&b[10..14])),
            opcode::REPORT_LUNS | opcode::MAINTENANCE_IN => {
                DataDirection::Read(BigEndian::read_u32(&b[6..10]))
            }
            opcode::READ_10 => {
                DataDirection::Read(blocks(u32::from(BigEndian::read_u16(&b[7..9])))?)
            }
            opcode::READ_16 => DataDirection::Read(blocks(BigEndian::read_u32(&b[10..14]))?),
            opcode::WRITE_10 => {
                DataDirection::Write(blocks(u32::from(BigEndian::read_u16(&b[7..9])))?)
            }
            opcode::WRITE_16 => DataDirection::Write(blocks(BigEndian::read_u32(&b[10..14]))?),
            opcode::UNMAP => DataDirection::Write(u32::from(BigEndian::read_u16(&b[7..9]))),
            // One block of data-out unless NDOB says there is none.
            opcode::WRITE_SAME_16 if b[1] & WS_NDOB != 0 => DataDirection::None,
            opcode::WRITE_SAME_16 => DataDirection::Write(block_size),
            _ => return None,
        };
        Some(match dir {
            DataDirection::Read(0) | DataDirection::Write(0) => DataDirection::None,
            d => d,
        })
    }
}

impl fmt::Debug for Cdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cdb({self})")
    }
}

/// `READ(10) 28 00 00 00 10 00 00 00 08 00`
impl fmt::Display for Cdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        for b in self.as_slice() {
            write!(f, " {b:02x}")?;
        }
        Ok(())
    }
}

/// TEST UNIT READY (SPC-4, "TEST UNIT READY command"): 6 bytes, no data.
pub fn test_unit_ready() -> Cdb {
    Cdb::new(opcode::TEST_UNIT_READY, 6)
}

/// INQUIRY for the standard INQUIRY data (SPC-4 6.4, EVPD=0).
///
/// Ask for at least 36 bytes: that is where vendor, product and revision
/// end. 96 covers the version descriptors too.
pub fn inquiry(alloc_len: u16) -> Cdb {
    let mut c = Cdb::new(opcode::INQUIRY, 6);
    BigEndian::write_u16(&mut c.bytes[3..5], alloc_len);
    c
}

/// INQUIRY for vital product data page `page` (SPC-4 6.4, EVPD=1).
pub fn inquiry_vpd(page: u8, alloc_len: u16) -> Cdb {
    let mut c = inquiry(alloc_len);
    c.bytes[1] = 0x01;
    c.bytes[2] = page;
    c
}

/// REPORT LUNS with SELECT REPORT 0 ("all LUNs but well-known ones";
/// SPC-4 6.33). SPC-4 requires `alloc_len` >= 16.
pub fn report_luns(alloc_len: u32) -> Cdb {
    let mut c = Cdb::new(opcode::REPORT_LUNS, 12);
    c.bytes[2] = 0x00;
    BigEndian::write_u32(&mut c.bytes[6..10], alloc_len);
    c
}

/// REPORT TARGET PORT GROUPS (SPC-5 6.36: MAINTENANCE IN, service action
/// 0x0a) in the length-only header format. Not the extended one: Linux
/// 6.12's LIO announces the extended format's descriptor list correctly
/// but transfers 4 bytes less than it (its length counts a 4-byte
/// header), cutting off the last group's last port (seen in
/// tests/lio_guest.rs). [`super::alua::TargetPortGroups::parse`] reads
/// both formats.
pub fn report_target_port_groups(alloc_len: u32) -> Cdb {
    let mut c = Cdb::new(opcode::MAINTENANCE_IN, 12);
    c.bytes[1] = SA_REPORT_TARGET_PORT_GROUPS;
    BigEndian::write_u32(&mut c.bytes[6..10], alloc_len);
    c
}

/// READ CAPACITY(10) (SBC-3, "READ CAPACITY (10) command"): 8 bytes back.
/// LBA and PMI stay 0 (both obsolete in SBC-3).
pub fn read_capacity_10() -> Cdb {
    Cdb::new(opcode::READ_CAPACITY_10, 10)
}

/// Bytes of READ CAPACITY(16) parameter data to ask for.
pub const READ_CAPACITY_16_LEN: u32 = 32;

/// READ CAPACITY(16) (SBC-3, "READ CAPACITY (16) command"): SERVICE
/// ACTION IN(16) 0x9E with service action 0x10, 32 bytes back.
pub fn read_capacity_16() -> Cdb {
    let mut c = Cdb::new(opcode::SERVICE_ACTION_IN_16, 16);
    c.bytes[1] = SA_READ_CAPACITY_16;
    BigEndian::write_u32(&mut c.bytes[10..14], READ_CAPACITY_16_LEN);
    c
}

/// The 10-byte form of READ/WRITE/SYNCHRONIZE CACHE: LBA 2..6, GROUP
/// NUMBER 6, length 7..9, CONTROL 9.
fn rw10(op: u8, flags: u8, lba: u32, blocks: u16) -> Cdb {
    let mut c = Cdb::new(op, 10);
    c.bytes[1] = flags;
    BigEndian::write_u32(&mut c.bytes[2..6], lba);
    BigEndian::write_u16(&mut c.bytes[7..9], blocks);
    c
}

/// The 16-byte form: LBA 2..10, length 10..14, GROUP NUMBER 14, CONTROL 15.
fn rw16(op: u8, flags: u8, lba: u64, blocks: u32) -> Cdb {
    let mut c = Cdb::new(op, 16);
    c.bytes[1] = flags;
    BigEndian::write_u64(&mut c.bytes[2..10], lba);
    BigEndian::write_u32(&mut c.bytes[10..14], blocks);
    c
}

/// Whether (lba, blocks) fits the 10-byte form.
fn fits_10(lba: u64, blocks: u32) -> Option<(u32, u16)> {
    Some((u32::try_from(lba).ok()?, u16::try_from(blocks).ok()?))
}

fn fua_bit(fua: bool) -> u8 {
    if fua { FUA } else { 0 }
}

/// READ(10) (SBC-3, "READ (10) command"). A transfer length of 0 reads
/// nothing (unlike READ(6)).
pub fn read_10(lba: u32, blocks: u16, fua: bool) -> Cdb {
    rw10(opcode::READ_10, fua_bit(fua), lba, blocks)
}

/// READ(16) (SBC-3, "READ (16) command").
pub fn read_16(lba: u64, blocks: u32, fua: bool) -> Cdb {
    rw16(opcode::READ_16, fua_bit(fua), lba, blocks)
}

/// READ of `blocks` logical blocks at `lba`: READ(10) when the LBA fits
/// 32 bits and `blocks` <= 65535, READ(16) otherwise. FUA makes the
/// target read from the medium rather than its cache.
pub fn read(lba: u64, blocks: u32, fua: bool) -> Cdb {
    match fits_10(lba, blocks) {
        Some((lba, blocks)) => read_10(lba, blocks, fua),
        None => read_16(lba, blocks, fua),
    }
}

/// WRITE(10) (SBC-3, "WRITE (10) command").
pub fn write_10(lba: u32, blocks: u16, fua: bool) -> Cdb {
    rw10(opcode::WRITE_10, fua_bit(fua), lba, blocks)
}

/// WRITE(16) (SBC-3, "WRITE (16) command").
pub fn write_16(lba: u64, blocks: u32, fua: bool) -> Cdb {
    rw16(opcode::WRITE_16, fua_bit(fua), lba, blocks)
}

/// WRITE of `blocks` logical blocks at `lba`, 10 or 16 bytes as for
/// [`read`]. FUA makes the command complete only once the data is on
/// non-volatile media (a REQ_FUA write from the block layer).
pub fn write(lba: u64, blocks: u32, fua: bool) -> Cdb {
    match fits_10(lba, blocks) {
        Some((lba, blocks)) => write_10(lba, blocks, fua),
        None => write_16(lba, blocks, fua),
    }
}

/// SYNCHRONIZE CACHE(10) (SBC-3, "SYNCHRONIZE CACHE (10) command").
/// IMMED=0: status comes back once the cache is flushed. `lba` 0 with
/// `blocks` 0 means the whole device.
pub fn sync_cache_10(lba: u32, blocks: u16) -> Cdb {
    rw10(opcode::SYNCHRONIZE_CACHE_10, 0, lba, blocks)
}

/// SYNCHRONIZE CACHE(16) (SBC-3, "SYNCHRONIZE CACHE (16) command").
pub fn sync_cache_16(lba: u64, blocks: u32) -> Cdb {
    rw16(opcode::SYNCHRONIZE_CACHE_16, 0, lba, blocks)
}

/// SYNCHRONIZE CACHE for a range, 10 bytes when it fits, else 16.
/// `sync_cache(0, 0)` flushes the whole device (blocks 0 = "to the end").
pub fn sync_cache(lba: u64, blocks: u32) -> Cdb {
    match fits_10(lba, blocks) {
        Some((lba, blocks)) => sync_cache_10(lba, blocks),
        None => sync_cache_16(lba, blocks),
    }
}

/// UNMAP (SBC-3, "UNMAP command") with a parameter list of
/// `param_len` bytes (see [`unmap_parameter_list_len`]). ANCHOR=0.
pub fn unmap(param_len: u16) -> Cdb {
    let mut c = Cdb::new(opcode::UNMAP, 10);
    BigEndian::write_u16(&mut c.bytes[7..9], param_len);
    c
}

/// Why an UNMAP parameter list could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmapError {
    /// More descriptors than a 16-bit parameter list length can carry
    /// ([`UNMAP_MAX_DESCRIPTORS`]).
    TooManyDescriptors(usize),
    /// The caller's buffer holds `have` bytes where `need` are required.
    BufferTooSmall { need: usize, have: usize },
}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnmapError::TooManyDescriptors(n) => write!(
                f,
                "{n} UNMAP block descriptors, at most {UNMAP_MAX_DESCRIPTORS} fit one command"
            ),
            UnmapError::BufferTooSmall { need, have } => {
                write!(
                    f,
                    "UNMAP parameter list needs {need} bytes, buffer has {have}"
                )
            }
        }
    }
}

impl std::error::Error for UnmapError {}

/// Bytes of the UNMAP parameter list for `descriptors` ranges.
pub fn unmap_parameter_list_len(descriptors: usize) -> Result<u16, UnmapError> {
    if descriptors > UNMAP_MAX_DESCRIPTORS {
        return Err(UnmapError::TooManyDescriptors(descriptors));
    }
    // Cannot overflow: bounded by UNMAP_MAX_DESCRIPTORS above.
    Ok((UNMAP_HEADER_LEN + descriptors * UNMAP_DESCRIPTOR_LEN) as u16)
}

/// Write the UNMAP parameter list (SBC-3, "UNMAP parameter list") for
/// `ranges` of (LBA, number of blocks) into the front of `buf`; returns
/// the number of bytes written, which is the `param_len` for [`unmap`].
///
/// Layout: UNMAP DATA LENGTH (bytes after itself, 2 bytes), UNMAP BLOCK
/// DESCRIPTOR DATA LENGTH (2 bytes), 4 reserved, then per range an
/// 8-byte LBA, a 4-byte block count and 4 reserved bytes.
pub fn emit_unmap_parameter_list(
    ranges: &[(u64, u32)],
    buf: &mut [u8],
) -> Result<usize, UnmapError> {
    let total = usize::from(unmap_parameter_list_len(ranges.len())?);
    if buf.len() < total {
        return Err(UnmapError::BufferTooSmall {
            need: total,
            have: buf.len(),
        });
    }
    let out = &mut buf[..total];
    out.fill(0);
    // total <= u16::MAX, so both lengths fit their 16-bit fields.
    BigEndian::write_u16(&mut out[0..2], (total - 2) as u16);
    BigEndian::write_u16(&mut out[2..4], (total - UNMAP_HEADER_LEN) as u16);
    for (desc, (lba, blocks)) in out[UNMAP_HEADER_LEN..]
        .chunks_exact_mut(UNMAP_DESCRIPTOR_LEN)
        .zip(ranges)
    {
        BigEndian::write_u64(&mut desc[0..8], *lba);
        BigEndian::write_u32(&mut desc[8..12], *blocks);
    }
    Ok(total)
}

/// [`emit_unmap_parameter_list`] into a new `Vec`.
pub fn unmap_parameter_list(ranges: &[(u64, u32)]) -> Result<Vec<u8>, UnmapError> {
    let mut v = vec![0u8; usize::from(unmap_parameter_list_len(ranges.len())?)];
    emit_unmap_parameter_list(ranges, &mut v)?;
    Ok(v)
}

/// WRITE SAME(16) (SBC-3, "WRITE SAME (16) command") of `blocks` blocks
/// at `lba` (0 blocks: to the end of the medium, if the target allows it).
///
/// `unmap`: the target may deallocate the blocks instead of writing them
/// (VPD 0xB2 LBPWS says it can). `ndob`: no data-out buffer, the blocks
/// read back as zeroes (SBC-4; a target without it answers ILLEGAL
/// REQUEST / INVALID FIELD IN CDB). Without NDOB the command carries one
/// logical block of data to replicate.
pub fn write_same_16(lba: u64, blocks: u32, unmap: bool, ndob: bool) -> Cdb {
    let mut flags = 0;
    if unmap {
        flags |= WS_UNMAP;
    }
    if ndob {
        flags |= WS_NDOB;
    }
    rw16(opcode::WRITE_SAME_16, flags, lba, blocks)
}

/// Page code that asks MODE SENSE for every page.
pub const MODE_PAGE_ALL: u8 = 0x3f;
/// Subpage code that asks for every subpage.
pub const MODE_SUBPAGE_ALL: u8 = 0xff;

/// MODE SENSE(6) (SPC-4 6.11) for the current values (PC=0) of page
/// `page` (6 bits), subpage `subpage`. `dbd` leaves out block descriptors.
pub fn mode_sense_6(page: u8, subpage: u8, dbd: bool, alloc_len: u8) -> Cdb {
    let mut c = Cdb::new(opcode::MODE_SENSE_6, 6);
    c.bytes[1] = if dbd { DBD } else { 0 };
    c.bytes[2] = page & 0x3f;
    c.bytes[3] = subpage;
    c.bytes[4] = alloc_len;
    c
}

/// MODE SENSE(10) (SPC-4, "MODE SENSE(10) command"): as
/// [`mode_sense_6`] with a 16-bit allocation length. LLBAA=0.
pub fn mode_sense_10(page: u8, subpage: u8, dbd: bool, alloc_len: u16) -> Cdb {
    let mut c = Cdb::new(opcode::MODE_SENSE_10, 10);
    c.bytes[1] = if dbd { DBD } else { 0 };
    c.bytes[2] = page & 0x3f;
    c.bytes[3] = subpage;
    BigEndian::write_u16(&mut c.bytes[7..9], alloc_len);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_commands() {
        assert_eq!(test_unit_ready().as_slice(), &[0u8; 6]);
        assert_eq!(inquiry(96).as_slice(), &[0x12, 0, 0, 0, 96, 0]);
        assert_eq!(
            inquiry_vpd(0x83, 0x1000).as_slice(),
            &[0x12, 1, 0x83, 0x10, 0x00, 0]
        );
        assert_eq!(
            report_luns(4096).as_slice(),
            &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]
        );
        assert_eq!(
            read_capacity_10().as_slice(),
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            read_capacity_16().as_slice(),
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]
        );
        assert_eq!(read_capacity_16().name(), "READ CAPACITY(16)");
    }

    #[test]
    fn read_write_choose_10_or_16() {
        let c = read(0x1000, 8, false);
        assert_eq!(c.as_slice(), &[0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0]);
        assert_eq!(c.direction(512), Some(DataDirection::Read(4096)));
        assert_eq!(c.to_string(), "READ(10) 28 00 00 00 10 00 00 00 08 00");

        let c = write(0x1000, 8, true);
        assert_eq!(c.as_slice(), &[0x2a, 0x08, 0, 0, 0x10, 0, 0, 0, 8, 0]);
        assert_eq!(c.direction(4096), Some(DataDirection::Write(32768)));

        // Edges of the 10-byte form.
        assert_eq!(read(u64::from(u32::MAX), 65535, false).len, 10);
        assert_eq!(read(u64::from(u32::MAX) + 1, 1, false).len, 16);
        assert_eq!(write(0, 65536, false).len, 16);

        let c = write(0x1_0000_0000, 0x10000, true);
        assert_eq!(
            c.as_slice(),
            &[0x8a, 0x08, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(c.direction(512), Some(DataDirection::Write(0x200_0000)));
        let c = read_16(7, 9, true);
        assert_eq!(
            c.as_slice(),
            &[0x88, 0x08, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0]
        );
        // A transfer over 4 GiB cannot be expressed to iSCSI.
        assert_eq!(read(0, u32::MAX, false).direction(512), None);
        assert_eq!(read(0, 0, false).direction(512), Some(DataDirection::None));
    }

    #[test]
    fn sync_cache_forms() {
        let c = sync_cache(0, 0);
        assert_eq!(c.as_slice(), &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.direction(512), Some(DataDirection::None));
        let c = sync_cache(1 << 40, 0);
        assert_eq!(
            c.as_slice(),
            &[0x91, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(sync_cache(5, 70000).len, 16);
    }

    #[test]
    fn unmap_list() {
        let ranges = [(0x10u64, 8u32), (0x1_0000_0000, 0x100)];
        let list = unmap_parameter_list(&ranges).unwrap();
        #[rustfmt::skip]
        let want: [u8; 40] = [
            0x00, 0x26, 0x00, 0x20, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0, 0,
            0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,
        ];
        assert_eq!(list, want);
        let c = unmap(list.len() as u16);
        assert_eq!(c.as_slice(), &[0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0]);
        assert_eq!(c.direction(512), Some(DataDirection::Write(40)));

        let mut small = [0u8; 39];
        assert_eq!(
            emit_unmap_parameter_list(&ranges, &mut small),
            Err(UnmapError::BufferTooSmall { need: 40, have: 39 })
        );
        let many = vec![(0u64, 1u32); UNMAP_MAX_DESCRIPTORS + 1];
        assert_eq!(
            unmap_parameter_list(&many),
            Err(UnmapError::TooManyDescriptors(UNMAP_MAX_DESCRIPTORS + 1))
        );
        let max = unmap_parameter_list(&many[1..]).unwrap();
        assert!(max.len() <= usize::from(u16::MAX));
        // An empty list is legal: just the header.
        assert_eq!(unmap_parameter_list(&[]).unwrap(), [0, 6, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn write_same() {
        let c = write_same_16(0x20, 0x800, true, false);
        assert_eq!(
            c.as_slice(),
            &[0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0x08, 0, 0, 0]
        );
        assert_eq!(c.direction(512), Some(DataDirection::Write(512)));
        let c = write_same_16(0, 1, true, true);
        assert_eq!(c.bytes[1], 0x09);
        assert_eq!(c.direction(512), Some(DataDirection::None));
    }

    #[test]
    fn mode_sense() {
        let c = mode_sense_6(0x08, 0, true, 0xff);
        assert_eq!(c.as_slice(), &[0x1a, 0x08, 0x08, 0, 0xff, 0]);
        assert_eq!(c.direction(512), Some(DataDirection::Read(255)));
        let c = mode_sense_10(MODE_PAGE_ALL, MODE_SUBPAGE_ALL, false, 0x200);
        assert_eq!(c.as_slice(), &[0x5a, 0, 0x3f, 0xff, 0, 0, 0, 2, 0, 0]);
        // Page codes are 6 bits.
        assert_eq!(mode_sense_6(0xc8, 0, false, 4).bytes[2], 0x08);
    }

    #[test]
    fn directions_of_inquiries() {
        assert_eq!(
            inquiry_vpd(0xb0, 64).direction(512),
            Some(DataDirection::Read(64))
        );
        assert_eq!(report_luns(16).direction(0), Some(DataDirection::Read(16)));
        let rtpg = report_target_port_groups(1024);
        assert_eq!(
            rtpg.as_slice(),
            [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0]
        );
        assert_eq!(rtpg.name(), "REPORT TARGET PORT GROUPS");
        assert_eq!(rtpg.direction(512), Some(DataDirection::Read(1024)));
        assert_eq!(
            read_capacity_16().direction(0),
            Some(DataDirection::Read(32))
        );
        assert_eq!(
            read_capacity_10().direction(0),
            Some(DataDirection::Read(8))
        );
        let mut odd = test_unit_ready();
        odd.bytes[0] = 0xff;
        assert_eq!(odd.direction(512), None);
        assert_eq!(odd.name(), "unknown command");
        assert_eq!(DataDirection::Read(5).len(), 5);
        assert!(DataDirection::None.is_empty());
    }
}
