//! Byte-level views over the iSCSI Boot Firmware Table (iBFT, spec 1.03).
//!
//! This module knows where every field sits and nothing else: no I/O, no
//! allocation, no policy. [`Table`] and [`Structure`] are typed views whose
//! checked constructors refuse a buffer shorter than the layout needs, so the
//! accessors after them never read out of bounds. What the fields *mean*
//! (absent addresses, LUN encodings, which target boots) lives in the parent
//! module, which turns these views into plain values.
//!
//! All integers are little-endian.

use byteorder::{ByteOrder, LittleEndian};

/// A field is a byte range relative to the start of its structure.
pub type Field = core::ops::Range<usize>;

/// The 48-byte table header (an ACPI table header plus reserved bytes).
pub mod header {
    use super::Field;
    pub const SIGNATURE: Field = 0..4;
    pub const LENGTH: Field = 4..8;
    pub const REVISION: usize = 8;
    pub const CHECKSUM: usize = 9;
    pub const OEM_ID: Field = 10..16;
    pub const OEM_TABLE_ID: Field = 16..24;
    /// Header plus reserved bytes; the control structure starts here.
    pub const LEN: usize = 48;
}

/// The 6-byte header every structure starts with.
pub mod shdr {
    use super::Field;
    pub const ID: usize = 0;
    pub const VERSION: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const INDEX: usize = 4;
    pub const FLAGS: usize = 5;
    pub const LEN: usize = 6;
}

/// Control structure (id 1), always at offset 0x30.
pub mod control {
    use super::Field;
    pub const OFFSET: usize = 0x30;
    pub const EXTENSIONS: Field = 6..8;
    /// First of the u16 structure offsets: initiator, nic0, target0, nic1,
    /// target1, then any further NIC/target pairs in a longer structure.
    pub const OFFSETS_START: usize = 8;
    pub const INITIATOR: Field = 8..10;
    pub const MIN_LEN: usize = 18;
}

/// Initiator structure (id 2).
pub mod initiator {
    use super::Field;
    pub const ISNS: Field = 6..22;
    pub const SLP: Field = 22..38;
    pub const PRI_RADIUS: Field = 38..54;
    pub const SEC_RADIUS: Field = 54..70;
    pub const NAME: usize = 70;
    pub const LEN: usize = 74;
}

/// NIC structure (id 3).
pub mod nic {
    use super::Field;
    pub const IP: Field = 6..22;
    pub const PREFIX_LEN: usize = 22;
    pub const ORIGIN: usize = 23;
    pub const GATEWAY: Field = 24..40;
    pub const PRIMARY_DNS: Field = 40..56;
    pub const SECONDARY_DNS: Field = 56..72;
    pub const DHCP: Field = 72..88;
    pub const VLAN: Field = 88..90;
    pub const MAC: Field = 90..96;
    pub const PCI_BDF: Field = 96..98;
    pub const HOSTNAME: usize = 98;
    pub const LEN: usize = 102;
}

/// Target structure (id 4).
pub mod target {
    use super::Field;
    pub const IP: Field = 6..22;
    pub const PORT: Field = 22..24;
    pub const LUN: Field = 24..32;
    pub const CHAP_TYPE: usize = 32;
    pub const NIC_ASSOC: usize = 33;
    pub const NAME: usize = 34;
    pub const CHAP_NAME: usize = 38;
    pub const CHAP_SECRET: usize = 42;
    pub const RCHAP_NAME: usize = 46;
    pub const RCHAP_SECRET: usize = 50;
    pub const LEN: usize = 54;
}

/// Structure ids from the spec.
pub mod id {
    pub const CONTROL: u8 = 1;
    pub const INITIATOR: u8 = 2;
    pub const NIC: u8 = 3;
    pub const TARGET: u8 = 4;
    pub const EXTENSIONS: u8 = 5;
}

/// Flag bits in every structure header.
pub mod flags {
    pub const BLOCK_VALID: u8 = 1 << 0;
    pub const FW_BOOT_SELECTED: u8 = 1 << 1;
    /// NIC: address is global rather than link-local.
    pub const NIC_GLOBAL: u8 = 1 << 2;
    /// Target: CHAP secret comes from RADIUS.
    pub const TGT_RADIUS_CHAP: u8 = 1 << 2;
    /// Target: reverse CHAP secret comes from RADIUS.
    pub const TGT_RADIUS_RCHAP: u8 = 1 << 3;
}

/// Why a view could not be made over a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewError {
    /// The buffer holds `have` bytes where `need` are required.
    Truncated { need: usize, have: usize },
}

/// A typed view over the whole table.
#[derive(Debug, Clone, Copy)]
pub struct Table<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Table<T> {
    /// Wrap a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Table<T> {
        Table { buffer }
    }

    /// Wrap a buffer, refusing one too short for the 48-byte header.
    pub fn new_checked(buffer: T) -> Result<Table<T>, ViewError> {
        let have = buffer.as_ref().len();
        if have < header::LEN {
            return Err(ViewError::Truncated {
                need: header::LEN,
                have,
            });
        }
        Ok(Table { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn signature(&self) -> [u8; 4] {
        let mut s = [0u8; 4];
        s.copy_from_slice(&self.buffer.as_ref()[header::SIGNATURE]);
        s
    }

    pub fn length(&self) -> u32 {
        LittleEndian::read_u32(&self.buffer.as_ref()[header::LENGTH])
    }

    pub fn revision(&self) -> u8 {
        self.buffer.as_ref()[header::REVISION]
    }

    pub fn checksum(&self) -> u8 {
        self.buffer.as_ref()[header::CHECKSUM]
    }

    pub fn oem_id(&self) -> &[u8] {
        &self.buffer.as_ref()[header::OEM_ID]
    }

    pub fn oem_table_id(&self) -> &[u8] {
        &self.buffer.as_ref()[header::OEM_TABLE_ID]
    }

    /// Sum of the first `len` bytes mod 256 (0 for a good table).
    pub fn byte_sum(&self, len: usize) -> u8 {
        let buf = self.buffer.as_ref();
        buf.iter()
            .take(len)
            .fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// The whole buffer.
    pub fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Table<T> {
    pub fn set_signature(&mut self, sig: [u8; 4]) {
        self.buffer.as_mut()[header::SIGNATURE].copy_from_slice(&sig);
    }
    pub fn set_length(&mut self, len: u32) {
        LittleEndian::write_u32(&mut self.buffer.as_mut()[header::LENGTH], len);
    }
    pub fn set_revision(&mut self, rev: u8) {
        self.buffer.as_mut()[header::REVISION] = rev;
    }
    pub fn set_checksum(&mut self, sum: u8) {
        self.buffer.as_mut()[header::CHECKSUM] = sum;
    }
    pub fn set_oem_id(&mut self, id: &[u8; 6]) {
        self.buffer.as_mut()[header::OEM_ID].copy_from_slice(id);
    }
    pub fn set_oem_table_id(&mut self, id: &[u8; 8]) {
        self.buffer.as_mut()[header::OEM_TABLE_ID].copy_from_slice(id);
    }
    /// Set the checksum byte so the first `len` bytes sum to zero.
    pub fn fill_checksum(&mut self, len: usize) {
        self.set_checksum(0);
        let sum = self.byte_sum(len);
        self.set_checksum(0u8.wrapping_sub(sum));
    }
}

/// A typed view over one structure (control, initiator, NIC or target).
///
/// The buffer is exactly the structure's bytes, i.e. `declared length`
/// bytes starting at its offset in the table.
#[derive(Debug, Clone, Copy)]
pub struct Structure<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Structure<T> {
    pub const fn new_unchecked(buffer: T) -> Structure<T> {
        Structure { buffer }
    }

    /// Wrap a buffer, refusing one shorter than `min_len` (the layout of the
    /// structure kind the caller expects, at least the 6-byte header).
    pub fn new_checked(buffer: T, min_len: usize) -> Result<Structure<T>, ViewError> {
        let need = min_len.max(shdr::LEN);
        let have = buffer.as_ref().len();
        if have < need {
            return Err(ViewError::Truncated { need, have });
        }
        Ok(Structure { buffer })
    }

    pub fn id(&self) -> u8 {
        self.buffer.as_ref()[shdr::ID]
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[shdr::VERSION]
    }
    pub fn length(&self) -> u16 {
        LittleEndian::read_u16(&self.buffer.as_ref()[shdr::LENGTH])
    }
    pub fn index(&self) -> u8 {
        self.buffer.as_ref()[shdr::INDEX]
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[shdr::FLAGS]
    }
    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A byte at `at`. Callers only pass offsets inside the minimum length
    /// given to `new_checked`.
    pub fn u8_at(&self, at: usize) -> u8 {
        self.buffer.as_ref()[at]
    }
    pub fn u16_at(&self, field: Field) -> u16 {
        LittleEndian::read_u16(&self.buffer.as_ref()[field])
    }
    pub fn bytes_at(&self, field: Field) -> &[u8] {
        &self.buffer.as_ref()[field]
    }
    /// A 16-byte address field.
    pub fn addr_at(&self, field: Field) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field]);
        a
    }
    /// A (length, offset) string reference starting at `at`.
    pub fn string_ref_at(&self, at: usize) -> (u16, u16) {
        let b = self.buffer.as_ref();
        (
            LittleEndian::read_u16(&b[at..at + 2]),
            LittleEndian::read_u16(&b[at + 2..at + 4]),
        )
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Structure<T> {
    pub fn set_header(&mut self, id: u8, version: u8, length: u16, index: u8, flags: u8) {
        let b = self.buffer.as_mut();
        b[shdr::ID] = id;
        b[shdr::VERSION] = version;
        LittleEndian::write_u16(&mut b[shdr::LENGTH], length);
        b[shdr::INDEX] = index;
        b[shdr::FLAGS] = flags;
    }
    pub fn set_u8_at(&mut self, at: usize, v: u8) {
        self.buffer.as_mut()[at] = v;
    }
    pub fn set_u16_at(&mut self, field: Field, v: u16) {
        LittleEndian::write_u16(&mut self.buffer.as_mut()[field], v);
    }
    pub fn set_bytes_at(&mut self, field: Field, v: &[u8]) {
        self.buffer.as_mut()[field].copy_from_slice(v);
    }
    pub fn set_string_ref_at(&mut self, at: usize, len: u16, off: u16) {
        let b = self.buffer.as_mut();
        LittleEndian::write_u16(&mut b[at..at + 2], len);
        LittleEndian::write_u16(&mut b[at + 2..at + 4], off);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_are_refused() {
        assert_eq!(
            Table::new_checked(&[0u8; 47][..]).err(),
            Some(ViewError::Truncated { need: 48, have: 47 })
        );
        assert!(Structure::new_checked(&[0u8; 53][..], target::LEN).is_err());
        assert!(Structure::new_checked(&[0u8; 54][..], target::LEN).is_ok());
    }

    #[test]
    fn header_fields_round_trip() {
        let mut buf = [0u8; 64];
        let mut t = Table::new_checked(&mut buf[..]).unwrap();
        t.set_signature(*b"iBFT");
        t.set_length(64);
        t.set_revision(1);
        t.set_oem_id(b"FENSYS");
        t.set_oem_table_id(b"iPXE\0\0\0\0");
        t.fill_checksum(64);
        assert_eq!(&t.signature(), b"iBFT");
        assert_eq!(t.length(), 64);
        assert_eq!(t.revision(), 1);
        assert_eq!(t.oem_id(), b"FENSYS");
        assert_eq!(t.byte_sum(64), 0);
    }

    #[test]
    fn structure_header_round_trip() {
        let mut buf = [0u8; target::LEN];
        let mut s = Structure::new_checked(&mut buf[..], target::LEN).unwrap();
        s.set_header(id::TARGET, 1, target::LEN as u16, 1, 3);
        s.set_u16_at(target::PORT, 3260);
        s.set_string_ref_at(target::NAME, 10, 0x200);
        assert_eq!(s.id(), id::TARGET);
        assert_eq!(s.length(), 54);
        assert_eq!(s.index(), 1);
        assert_eq!(s.flags(), 3);
        assert_eq!(s.u16_at(target::PORT), 3260);
        assert_eq!(s.string_ref_at(target::NAME), (10, 0x200));
    }
}
