//! Writing an [`Ibft`] back to raw bytes, in the layouts real producers use.
//!
//! sanroot never writes a table to firmware; this exists so tests and fuzz
//! seeds can make tables that iPXE will not (EDK2's layout, two paths,
//! VLANs, IPv6, long control structures) and so that parse(emit(x)) == x can
//! be checked.

use super::model::*;
use super::wire::{self, Structure, Table, control, header, id, shdr};

/// Where structures and strings go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// iPXE: structures packed after the control structure, strings after
    /// them, table exactly as long as needed; absent addresses all-zero.
    Ipxe,
    /// EDK2 IScsiDxe: a fixed 2048-byte table, strings packed downward from
    /// the end, absent IPv4 addresses written as ::ffff:0.0.0.0.
    Edk2,
}

struct Heap {
    layout: Layout,
    buf: Vec<u8>,
    /// Next free byte (growing up for iPXE, the lowest used byte for EDK2).
    next: usize,
}

impl Heap {
    /// Store a string with its NUL; returns (length, offset).
    fn put(&mut self, s: &[u8]) -> (u16, u16) {
        if s.is_empty() {
            return (0, 0);
        }
        let off = match self.layout {
            Layout::Ipxe => {
                let off = self.next;
                self.next += s.len() + 1;
                if self.buf.len() < self.next {
                    self.buf.resize(self.next, 0);
                }
                off
            }
            Layout::Edk2 => {
                self.next -= s.len() + 1;
                self.next
            }
        };
        self.buf[off..off + s.len()].copy_from_slice(s);
        self.buf[off + s.len()] = 0;
        (s.len() as u16, off as u16)
    }
}

fn align16(n: usize) -> usize {
    (n + 15) & !15
}

fn addr(layout: Layout, a: Option<std::net::IpAddr>) -> [u8; 16] {
    match (layout, a) {
        (Layout::Edk2, None) => {
            let mut b = [0u8; 16];
            b[10] = 0xff;
            b[11] = 0xff;
            b
        }
        (_, a) => encode_addr(a),
    }
}

/// Emit a table. Structures are written with the flags in their `place`
/// (valid + boot-selected when zero), indexes as given.
pub fn emit(ibft: &Ibft, layout: Layout) -> Vec<u8> {
    let pairs = ibft.nics.len().max(ibft.targets.len()).max(2);
    let clen = control::OFFSETS_START + 2 * (1 + 2 * pairs);
    let mut pos = align16(control::OFFSET + clen);
    let init_off = ibft.initiator.as_ref().map(|_| {
        let o = pos;
        pos = align16(pos + wire::initiator::LEN);
        o
    });
    let nic_offs: Vec<usize> = ibft
        .nics
        .iter()
        .map(|_| {
            let o = pos;
            pos = align16(pos + wire::nic::LEN);
            o
        })
        .collect();
    let tgt_offs: Vec<usize> = ibft
        .targets
        .iter()
        .map(|_| {
            let o = pos;
            pos = align16(pos + wire::target::LEN);
            o
        })
        .collect();
    let (total, next) = match layout {
        Layout::Ipxe => (pos, pos),
        Layout::Edk2 => (2048, 2048),
    };
    let mut heap = Heap {
        layout,
        buf: vec![0u8; total],
        next,
    };

    // Strings first (the heap may grow the buffer for iPXE).
    let init_name = ibft
        .initiator
        .as_ref()
        .map(|i| heap.put(i.name.as_deref().unwrap_or("").as_bytes()));
    let nic_hosts: Vec<(u16, u16)> = ibft
        .nics
        .iter()
        .map(|n| heap.put(n.hostname.as_deref().unwrap_or("").as_bytes()))
        .collect();
    let tgt_strings: Vec<[(u16, u16); 5]> = ibft
        .targets
        .iter()
        .map(|t| {
            [
                heap.put(t.name.as_bytes()),
                heap.put(t.chap_name.as_deref().unwrap_or("").as_bytes()),
                heap.put(t.chap_secret.as_ref().map(|s| s.expose()).unwrap_or(b"")),
                heap.put(t.rchap_name.as_deref().unwrap_or("").as_bytes()),
                heap.put(t.rchap_secret.as_ref().map(|s| s.expose()).unwrap_or(b"")),
            ]
        })
        .collect();
    let mut buf = heap.buf;
    let total = buf.len();

    let flags_of = |p: &Place| {
        if p.flags == 0 {
            wire::flags::BLOCK_VALID | wire::flags::FW_BOOT_SELECTED
        } else {
            p.flags
        }
    };

    // Control.
    {
        let mut c = Structure::new_unchecked(&mut buf[control::OFFSET..control::OFFSET + clen]);
        c.set_header(id::CONTROL, 1, clen as u16, 0, 0);
        c.set_u16_at(control::EXTENSIONS, ibft.extensions);
        c.set_u16_at(control::INITIATOR, init_off.unwrap_or(0) as u16);
        for (i, o) in nic_offs.iter().enumerate() {
            let at = control::OFFSETS_START + 2 * (1 + 2 * i);
            c.set_u16_at(at..at + 2, *o as u16);
        }
        for (i, o) in tgt_offs.iter().enumerate() {
            let at = control::OFFSETS_START + 2 * (2 + 2 * i);
            c.set_u16_at(at..at + 2, *o as u16);
        }
    }
    if let (Some(i), Some(off), Some((nl, no))) = (&ibft.initiator, init_off, init_name) {
        use wire::initiator as f;
        let mut s = Structure::new_unchecked(&mut buf[off..off + f::LEN]);
        s.set_header(id::INITIATOR, 1, f::LEN as u16, i.index, flags_of(&i.place));
        s.set_bytes_at(f::ISNS, &addr(layout, i.isns));
        s.set_bytes_at(f::SLP, &addr(layout, i.slp));
        s.set_bytes_at(f::PRI_RADIUS, &addr(layout, i.pri_radius));
        s.set_bytes_at(f::SEC_RADIUS, &addr(layout, i.sec_radius));
        s.set_string_ref_at(f::NAME, nl, no);
    }
    for ((n, off), (hl, ho)) in ibft.nics.iter().zip(&nic_offs).zip(&nic_hosts) {
        use wire::nic as f;
        let mut s = Structure::new_unchecked(&mut buf[*off..*off + f::LEN]);
        s.set_header(id::NIC, 1, f::LEN as u16, n.index, flags_of(&n.place));
        s.set_bytes_at(f::IP, &addr(layout, n.ip));
        s.set_u8_at(f::PREFIX_LEN, n.prefix_len);
        s.set_u8_at(f::ORIGIN, n.origin.to_u8());
        s.set_bytes_at(f::GATEWAY, &addr(layout, n.gateway));
        s.set_bytes_at(f::PRIMARY_DNS, &addr(layout, n.primary_dns));
        s.set_bytes_at(f::SECONDARY_DNS, &addr(layout, n.secondary_dns));
        s.set_bytes_at(f::DHCP, &addr(layout, n.dhcp_server));
        s.set_u16_at(f::VLAN, n.vlan_raw);
        s.set_bytes_at(f::MAC, &n.mac);
        s.set_u16_at(f::PCI_BDF, n.pci_bdf.unwrap_or(0));
        s.set_string_ref_at(f::HOSTNAME, *hl, *ho);
    }
    for ((t, off), strs) in ibft.targets.iter().zip(&tgt_offs).zip(&tgt_strings) {
        use wire::target as f;
        let mut s = Structure::new_unchecked(&mut buf[*off..*off + f::LEN]);
        s.set_header(id::TARGET, 1, f::LEN as u16, t.index, flags_of(&t.place));
        s.set_bytes_at(f::IP, &addr(layout, t.ip));
        s.set_u16_at(f::PORT, t.port);
        s.set_bytes_at(f::LUN, &t.lun.raw);
        s.set_u8_at(f::CHAP_TYPE, t.chap.to_u8());
        s.set_u8_at(f::NIC_ASSOC, t.nic_index);
        for (at, (l, o)) in [
            f::NAME,
            f::CHAP_NAME,
            f::CHAP_SECRET,
            f::RCHAP_NAME,
            f::RCHAP_SECRET,
        ]
        .into_iter()
        .zip(strs)
        {
            s.set_string_ref_at(at, *l, *o);
        }
    }

    let mut t = Table::new_unchecked(&mut buf[..]);
    t.set_signature(*ibft.header.signature.as_bytes());
    t.set_length(total as u32);
    t.set_revision(ibft.header.revision);
    let mut oem = [b' '; 6];
    for (d, s) in oem.iter_mut().zip(ibft.header.oem_id.bytes()) {
        *d = s;
    }
    t.set_oem_id(&oem);
    let mut oemt = [0u8; 8];
    for (d, s) in oemt.iter_mut().zip(ibft.header.oem_table_id.bytes()) {
        *d = s;
    }
    t.set_oem_table_id(&oemt);
    t.fill_checksum(total);
    debug_assert!(header::LEN + shdr::LEN < total);
    buf
}
