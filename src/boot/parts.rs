//! Which partitions the kernel should find on the boot disk: read from the
//! disk's own MBR or GPT, so that `sanroot boot` waits for exactly those
//! (and not a fixed time) before it says the root disk is ready.
//!
//! Pure: [`expected`] takes the first sectors' bytes. Logical partitions
//! inside an extended one are not waited for (their numbers depend on a
//! chain of EBRs); the extended container itself is.

/// What the first sectors say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// No partition table: the filesystem is on the whole disk.
    None,
    /// MBR primary partitions (numbers 1–4) in use.
    Mbr(Vec<u32>),
    /// GPT partitions in use (1-based entry numbers).
    Gpt(Vec<u32>),
}

impl Table {
    pub fn numbers(&self) -> &[u32] {
        match self {
            Table::None => &[],
            Table::Mbr(v) | Table::Gpt(v) => v,
        }
    }
}

/// The on-disk layout, in one place: offsets from the start of the disk
/// (MBR) or of the GPT header block and of one GPT entry.
mod mbr {
    use std::ops::Range;
    pub const DISK_SIGNATURE: usize = 440;
    pub const PARTITIONS: usize = 446;
    pub const ENTRY_LEN: usize = 16;
    /// Within a partition entry.
    pub const ENTRY_TYPE: usize = 4;
    pub const BOOT_SIGNATURE: Range<usize> = 510..512;
    pub const BOOT_MAGIC: [u8; 2] = [0x55, 0xAA];
    pub const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
}

mod gpt {
    use std::ops::Range;
    // Header (at block 1).
    pub const SIGNATURE: Range<usize> = 0..8;
    pub const MAGIC: [u8; 8] = *b"EFI PART";
    pub const ENTRIES_LBA: usize = 72;
    pub const ENTRY_COUNT: usize = 80;
    pub const ENTRY_SIZE: usize = 84;
    pub const HEADER_LEN: usize = 92;
    // Entry.
    pub const TYPE_GUID: usize = 0;
    pub const UNIQUE_GUID: usize = 16;
    pub const ATTRIBUTES: usize = 48;
    pub const NAME: Range<usize> = 56..128;
}

/// Bytes [`expected`] needs: the MBR and GPT header, and a GPT's entries
/// for at most 128 entries of 128 bytes (the standard layout puts them
/// at LBA 2).
pub fn bytes_needed(block_size: u32) -> usize {
    (block_size as usize) * 2 + 128 * 128
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off.checked_add(2)?)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Big-endian (XFS): the 2 bytes at `off`.
pub(crate) fn u16_be_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off.checked_add(2)?)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_be_bytes)
}

/// Big-endian (XFS): the 4 bytes at `off`.
pub(crate) fn u32_be_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off.checked_add(4)?)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
}

/// The 16 bytes at `off` (a UUID or GUID as stored).
pub(crate) fn bytes16_at(b: &[u8], off: usize) -> Option<[u8; 16]> {
    b.get(off..off.checked_add(16)?)
        .and_then(|s| s.try_into().ok())
}

/// Read the partition table in `head` (the disk's first bytes, at least
/// one block). A GPT whose entries lie beyond `head` yields the GPT with
/// the entries that were visible. Never fails: anything unreadable is
/// "no table" — the kernel will not find partitions there either.
pub fn expected(head: &[u8], block_size: u32) -> Table {
    let bs = block_size.max(512) as usize;
    if !has_mbr(head) {
        return Table::None;
    }
    let types = mbr_types(head);
    if types.contains(&mbr::TYPE_GPT_PROTECTIVE) {
        return gpt(head, bs).unwrap_or(Table::Mbr(Vec::new()));
    }
    let used = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t != 0)
        .map(|(i, _)| i as u32 + 1)
        .collect();
    Table::Mbr(used)
}

/// Where a GPT's entries are, from its header at block 1.
struct GptLayout {
    /// Byte offset of entry 0 from the start of the disk.
    start: usize,
    /// Entries (at most 1024).
    count: usize,
    /// Bytes per entry.
    size: usize,
}

fn gpt_layout(head: &[u8], bs: usize) -> Option<GptLayout> {
    let h = head.get(bs..bs.checked_add(gpt::HEADER_LEN)?)?;
    if h.get(gpt::SIGNATURE) != Some(&gpt::MAGIC[..]) {
        return None;
    }
    let entries_lba = u64_at(h, gpt::ENTRIES_LBA)?;
    let count = u32_at(h, gpt::ENTRY_COUNT)?.min(1024) as usize;
    let size = u32_at(h, gpt::ENTRY_SIZE)? as usize;
    // UEFI: 128 × 2^n bytes; anything else is not a table the kernel reads.
    if !(128..=4096).contains(&size) || !size.is_multiple_of(128) {
        return None;
    }
    let start = usize::try_from(entries_lba).ok()?.checked_mul(bs)?;
    Some(GptLayout { start, count, size })
}

fn gpt(head: &[u8], bs: usize) -> Option<Table> {
    let GptLayout { start, count, size } = gpt_layout(head, bs)?;
    let mut used = Vec::new();
    for i in 0..count {
        let Some(e) = start
            .checked_add(i.checked_mul(size)?)
            .and_then(|o| head.get(o..o + 16))
        else {
            break;
        };
        if e.iter().any(|b| *b != 0) {
            used.push(i as u32 + 1);
        }
    }
    Some(Table::Gpt(used))
}

fn has_mbr(head: &[u8]) -> bool {
    head.get(mbr::BOOT_SIGNATURE) == Some(&mbr::BOOT_MAGIC[..])
}

/// The four primary entries' type bytes (0 where `head` ends first).
fn mbr_types(head: &[u8]) -> [u8; 4] {
    let mut types = [0u8; 4];
    for (i, t) in types.iter_mut().enumerate() {
        let off = mbr::PARTITIONS + i * mbr::ENTRY_LEN + mbr::ENTRY_TYPE;
        *t = head.get(off).copied().unwrap_or(0);
    }
    types
}

/// Whether `head` starts with a protective MBR (the kernel then reads the
/// GPT, not the MBR's entries).
fn has_protective_mbr(head: &[u8]) -> bool {
    has_mbr(head) && mbr_types(head).contains(&mbr::TYPE_GPT_PROTECTIVE)
}

/// An MBR disk's signature (the "disk identifier" `fdisk -l` shows), the
/// first half of its partitions' PARTUUIDs. None for a GPT disk (its
/// partitions have GUIDs) and for a head without an MBR.
pub fn mbr_disk_signature(head: &[u8]) -> Option<u32> {
    if !has_mbr(head) || has_protective_mbr(head) {
        return None;
    }
    u32_at(head, mbr::DISK_SIGNATURE)
}

/// The PARTUUID the kernel and blkid give partition `n` of an MBR disk
/// with signature `sig`: "1234abcd-01" (logical partitions: 05, 06, …).
pub fn mbr_partuuid(sig: u32, n: u32) -> String {
    format!("{sig:08x}-{n:02x}")
}

/// One GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// Partition type GUID, as stored (mixed-endian: see [`guid_string`]).
    pub type_guid: [u8; 16],
    /// Unique partition GUID (the PARTUUID), as stored.
    pub unique_guid: [u8; 16],
    pub attributes: u64,
    /// The partition name (PARTLABEL): UTF-16LE up to the first NUL,
    /// unpaired surrogates replaced.
    pub name: String,
}

/// The block size at which `head` holds a GPT header: 512 or 4096 (512
/// first). For when the disk's logical block size is not known.
pub fn gpt_block_size(head: &[u8]) -> Option<u32> {
    if !has_protective_mbr(head) {
        return None;
    }
    [512u32, 4096]
        .into_iter()
        .find(|bs| gpt_layout(head, *bs as usize).is_some())
}

/// Entry `n` (1-based: the kernel's partition number) of the GPT in
/// `head`. None without a protective MBR and GPT header, when `n` is past
/// the table, the entry is unused (zero type GUID) or lies beyond `head`.
/// The header's CRCs are not checked (neither does [`expected`]).
pub fn gpt_entry(head: &[u8], block_size: u32, n: u32) -> Option<GptEntry> {
    if !has_protective_mbr(head) {
        return None;
    }
    let l = gpt_layout(head, block_size.max(512) as usize)?;
    let i = usize::try_from(n.checked_sub(1)?).ok()?;
    if i >= l.count {
        return None;
    }
    let off = l.start.checked_add(i.checked_mul(l.size)?)?;
    let e = head.get(off..off.checked_add(gpt::NAME.end)?)?;
    let type_guid = bytes16_at(e, gpt::TYPE_GUID)?;
    if type_guid == [0; 16] {
        return None;
    }
    let name_field = e.get(gpt::NAME)?;
    let units = (0..name_field.len() / 2)
        .map_while(|k| u16_at(name_field, k * 2))
        .take_while(|u| *u != 0);
    let name = char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    Some(GptEntry {
        type_guid,
        unique_guid: bytes16_at(e, gpt::UNIQUE_GUID)?,
        attributes: u64_at(e, gpt::ATTRIBUTES)?,
        name,
    })
}

/// A UUID in RFC 4122 byte order (filesystem superblocks) as blkid prints
/// it: lowercase 8-4-4-4-12.
pub fn uuid_string(b: &[u8; 16]) -> String {
    let hex = |r: std::ops::Range<usize>| -> String {
        b.get(r)
            .unwrap_or(&[])
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

/// A GUID as stored in a GPT (first three fields little-endian) as the
/// kernel and blkid print it.
pub fn guid_string(b: &[u8; 16]) -> String {
    const ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    uuid_string(&ORDER.map(|i| b.get(i).copied().unwrap_or(0)))
}

/// The kernel's name for partition `n` of disk `disk` ("ublkb0" → "ublkb0p1",
/// "sda" → "sda1").
pub fn part_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr(types: [u8; 4]) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        for (i, t) in types.iter().enumerate() {
            b[446 + i * 16 + 4] = *t;
        }
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn no_signature_is_no_table() {
        assert_eq!(expected(&[0u8; 512], 512), Table::None);
        assert_eq!(expected(&[], 512), Table::None);
    }

    #[test]
    fn mbr_primaries() {
        assert_eq!(
            expected(&mbr([0x83, 0, 0x82, 0]), 512),
            Table::Mbr(vec![1, 3])
        );
        // An extended container is waited for; its logicals are not.
        assert_eq!(
            expected(&mbr([0x83, 0x05, 0, 0]), 512),
            Table::Mbr(vec![1, 2])
        );
    }

    fn gpt_disk(bs: usize, used: &[usize]) -> Vec<u8> {
        let mut b = mbr([0xEE, 0, 0, 0]);
        b.resize(bytes_needed(bs as u32), 0);
        let h = &mut b[bs..bs + 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        for i in used {
            let o = 2 * bs + i * 128;
            b[o] = 0xAF;
        }
        b
    }

    #[test]
    fn gpt_entries_both_block_sizes() {
        assert_eq!(
            expected(&gpt_disk(512, &[0, 1, 4]), 512),
            Table::Gpt(vec![1, 2, 5])
        );
        let d = gpt_disk(4096, &[0]);
        assert_eq!(expected(&d, 4096), Table::Gpt(vec![1]));
    }

    #[test]
    fn hostile_gpt_headers_do_not_panic() {
        let mut d = gpt_disk(512, &[0]);
        d[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(expected(&d, 512), Table::Mbr(vec![]));
        let mut d = gpt_disk(512, &[0]);
        d[512 + 72..512 + 80].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(expected(&d, 512), Table::Gpt(vec![]));
        let mut d = gpt_disk(512, &[0]);
        d[512 + 84..512 + 88].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(expected(&d, 512), Table::Mbr(vec![]));
        let mut d = gpt_disk(512, &[0]);
        d[512 + 84..512 + 88].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(expected(&d, 512), Table::Mbr(vec![]));
        // Truncated after the header.
        let d = gpt_disk(512, &[0]);
        assert_eq!(expected(&d[..600], 512), Table::Mbr(vec![]));
    }

    fn put_entry(d: &mut [u8], bs: usize, n: usize, ty: [u8; 16], uniq: [u8; 16], name: &str) {
        let o = 2 * bs + (n - 1) * 128;
        d[o..o + 16].copy_from_slice(&ty);
        d[o + 16..o + 32].copy_from_slice(&uniq);
        d[o + 48..o + 56].copy_from_slice(&(1u64 << 63).to_le_bytes());
        for (k, u) in name.encode_utf16().enumerate() {
            d[o + 56 + 2 * k..o + 58 + 2 * k].copy_from_slice(&u.to_le_bytes());
        }
    }

    // 0fc63daf-8483-4772-8e79-3d69d8477de4 (Linux filesystem) as stored.
    const LINUX_FS: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];

    #[test]
    fn guid_is_mixed_endian_uuid_is_not() {
        assert_eq!(
            guid_string(&LINUX_FS),
            "0fc63daf-8483-4772-8e79-3d69d8477de4"
        );
        let b: [u8; 16] = core::array::from_fn(|i| i as u8 * 0x11);
        assert_eq!(uuid_string(&b), "00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn gpt_entries_read_back() {
        for bs in [512usize, 4096] {
            let mut d = gpt_disk(bs, &[]);
            put_entry(&mut d, bs, 2, LINUX_FS, [0x42; 16], "rootfs");
            assert_eq!(gpt_block_size(&d), Some(bs as u32));
            assert_eq!(gpt_entry(&d, bs as u32, 1), None, "unused entry");
            let e = gpt_entry(&d, bs as u32, 2).unwrap();
            assert_eq!(e.type_guid, LINUX_FS);
            assert_eq!(e.unique_guid, [0x42; 16]);
            assert_eq!(e.attributes, 1 << 63);
            assert_eq!(e.name, "rootfs");
            assert_eq!(gpt_entry(&d, bs as u32, 0), None);
            assert_eq!(gpt_entry(&d, bs as u32, 129), None);
            assert_eq!(gpt_entry(&d, bs as u32, u32::MAX), None);
            // Entry beyond the head.
            assert_eq!(gpt_entry(&d[..2 * bs + 200], bs as u32, 2), None);
            assert_eq!(
                mbr_disk_signature(&d),
                None,
                "GPT disks have no MBR PARTUUIDs"
            );
        }
    }

    #[test]
    fn gpt_names_full_width_and_odd_utf16() {
        let mut d = gpt_disk(512, &[]);
        let long: String = "abcdefghijklmnopqrstuvwxyz0123456789".into();
        put_entry(&mut d, 512, 1, LINUX_FS, [1; 16], &long);
        assert_eq!(
            gpt_entry(&d, 512, 1).unwrap().name,
            long,
            "36 units, no NUL"
        );
        put_entry(&mut d, 512, 2, LINUX_FS, [2; 16], "");
        let o = 2 * 512 + 128 + 56;
        d[o..o + 2].copy_from_slice(&0xD800u16.to_le_bytes()); // lone surrogate
        d[o + 2..o + 4].copy_from_slice(&u16::from(b'x').to_le_bytes());
        assert_eq!(gpt_entry(&d, 512, 2).unwrap().name, "\u{fffd}x");
    }

    #[test]
    fn mbr_signature_and_partuuid() {
        let mut d = mbr([0x83, 0, 0, 0]);
        d[440..444].copy_from_slice(&0x1234abcdu32.to_le_bytes());
        let sig = mbr_disk_signature(&d).unwrap();
        assert_eq!(mbr_partuuid(sig, 1), "1234abcd-01");
        assert_eq!(mbr_partuuid(sig, 5), "1234abcd-05");
        assert_eq!(mbr_partuuid(0xAB, 17), "000000ab-11");
        assert_eq!(mbr_disk_signature(&d[..500]), None);
        assert_eq!(mbr_disk_signature(&[0u8; 512]), None);
        assert_eq!(gpt_block_size(&d), None);
    }

    #[test]
    fn partition_names() {
        assert_eq!(part_name("ublkb0", 1), "ublkb0p1");
        assert_eq!(part_name("nbd12", 3), "nbd12p3");
        assert_eq!(part_name("sda", 2), "sda2");
    }
}
