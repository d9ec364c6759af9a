//! A reader of the ELF headers the tests check the static binary with:
//! program header types, dynamic tags and section names. Test code:
//! panics on a file it cannot read, with the offset.
#![allow(dead_code)]

use byteorder::{ByteOrder, LittleEndian as LE};

/// What the ELF headers say about linking: the program header types and
/// the section names (read through the section header string table).
pub struct Elf {
    pub program_types: Vec<u32>,
    pub dynamic_tags: Vec<u64>,
    pub sections: Vec<String>,
}

pub const PT_DYNAMIC: u32 = 2;
pub const PT_INTERP: u32 = 3;
pub const DT_NEEDED: u64 = 1;

/// A 64-bit little-endian ELF file's program headers, dynamic tags and
/// section names (panics, with the offset, on anything else: a test).
pub fn parse_elf(b: &[u8]) -> Elf {
    assert!(
        b.len() >= 64 && &b[..4] == b"\x7fELF" && b[4] == 2 && b[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let (phoff, shoff) = (
        LE::read_u64(&b[32..]) as usize,
        LE::read_u64(&b[40..]) as usize,
    );
    let (phentsize, phnum) = (
        usize::from(LE::read_u16(&b[54..])),
        usize::from(LE::read_u16(&b[56..])),
    );
    let (shentsize, shnum) = (
        usize::from(LE::read_u16(&b[58..])),
        usize::from(LE::read_u16(&b[60..])),
    );
    let shstrndx = usize::from(LE::read_u16(&b[62..]));
    let mut elf = Elf {
        program_types: Vec::new(),
        dynamic_tags: Vec::new(),
        sections: Vec::new(),
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let ty = LE::read_u32(&b[ph..]);
        elf.program_types.push(ty);
        if ty == PT_DYNAMIC {
            // Elf64_Dyn: d_tag, d_val; DT_NULL ends the table.
            let (off, size) = (
                LE::read_u64(&b[ph + 8..]) as usize,
                LE::read_u64(&b[ph + 32..]) as usize,
            );
            for at in (off..off + size).step_by(16) {
                let tag = LE::read_u64(&b[at..]);
                if tag == 0 {
                    break;
                }
                elf.dynamic_tags.push(tag);
            }
        }
    }
    if shnum > 0 {
        let strtab = shoff + shstrndx * shentsize;
        let str_off = LE::read_u64(&b[strtab + 24..]) as usize;
        for i in 0..shnum {
            let name = str_off + LE::read_u32(&b[shoff + i * shentsize..]) as usize;
            let end = b[name..]
                .iter()
                .position(|&c| c == 0)
                .unwrap_or_else(|| panic!("section name at offset {name} has no end"));
            elf.sections
                .push(String::from_utf8_lossy(&b[name..name + end]).into_owned());
        }
    }
    elf
}

impl Elf {
    /// Whether a symbol table or debug information is left in.
    pub fn has_symbols(&self) -> bool {
        self.sections
            .iter()
            .any(|s| s == ".symtab" || s.starts_with(".debug"))
    }
}
