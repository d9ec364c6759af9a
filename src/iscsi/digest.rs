//! CRC32C header and data digests (RFC 7143 §13.1, Castagnoli polynomial).
//!
//! The `crc32c` crate uses the SSE4.2 `crc32` instruction when the CPU has
//! it (runtime detection) and a table otherwise; libiscsi's byte-at-a-time
//! loop costs several cycles per byte on the data path. On the wire the
//! digest is little-endian: 32 zero bytes digest to `aa 36 91 8a`
//! (RFC 3720 Appendix B.4).

/// The digest of a sequence of slices, as if they were one.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0u32, |crc, p| crc32c::crc32c_append(crc, p))
}

/// The 4 bytes to put on the wire.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

pub fn from_wire(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3720_vectors() {
        // RFC 3720 Appendix B.4.
        assert_eq!(to_wire(crc32c(&[&[0u8; 32]])), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(to_wire(crc32c(&[&[0xffu8; 32]])), [0x43, 0xab, 0xa8, 0x62]);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(to_wire(crc32c(&[&inc])), [0x4e, 0x79, 0xdd, 0x46]);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(to_wire(crc32c(&[&dec])), [0x5c, 0xdb, 0x3f, 0x11]);
    }

    #[test]
    fn parts_equal_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(crc32c(&[&data]), crc32c(&[&data[..333], &data[333..]]));
    }
}
