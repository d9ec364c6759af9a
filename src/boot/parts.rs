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

/// Bytes [`expected`] needs: the MBR and GPT header, and a GPT's entries
/// for at most 128 entries of 128 bytes (the standard layout puts them
/// at LBA 2).
pub fn bytes_needed(block_size: u32) -> usize {
    (block_size as usize) * 2 + 128 * 128
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Read the partition table in `head` (the disk's first bytes, at least
/// one block). A GPT whose entries lie beyond `head` yields the GPT with
/// the entries that were visible. Never fails: anything unreadable is
/// "no table" — the kernel will not find partitions there either.
pub fn expected(head: &[u8], block_size: u32) -> Table {
    let bs = block_size.max(512) as usize;
    if head.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return Table::None;
    }
    let types: Vec<u8> = (0..4)
        .map(|i| head.get(446 + i * 16 + 4).copied().unwrap_or(0))
        .collect();
    if types.contains(&0xEE) {
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

fn gpt(head: &[u8], bs: usize) -> Option<Table> {
    let h = head.get(bs..bs + 92)?;
    if &h[..8] != b"EFI PART" {
        return None;
    }
    let entries_lba = u64_at(h, 72)?;
    let count = u32_at(h, 80)?.min(1024) as usize;
    let size = u32_at(h, 84)? as usize;
    // UEFI: 128 × 2^n bytes; anything else is not a table the kernel reads.
    if !(128..=4096).contains(&size) || !size.is_multiple_of(128) {
        return None;
    }
    let start = usize::try_from(entries_lba).ok()?.checked_mul(bs)?;
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

    #[test]
    fn partition_names() {
        assert_eq!(part_name("ublkb0", 1), "ublkb0p1");
        assert_eq!(part_name("nbd12", 3), "nbd12p3");
        assert_eq!(part_name("sda", 2), "sda2");
    }
}
