//! Builders for synthetic iBFTs shared by the integration tests.
#![allow(dead_code)]

use std::net::IpAddr;

use sanroot::ibft::emit::{Layout, emit};
use sanroot::ibft::*;
use sanroot::secret::Secret;

pub fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("test address"))
}

pub fn header(sig: Signature) -> TableHeader {
    TableHeader {
        signature: sig,
        length: 0,
        revision: 1,
        checksum: 0,
        checksum_ok: Some(true),
        oem_id: "SANRT".into(),
        oem_table_id: "TEST".into(),
    }
}

pub fn nic(index: u8) -> Nic {
    Nic {
        place: Place::default(),
        index,
        ip: ip(&format!("192.168.{index}.10")),
        prefix_len: 24,
        origin: Origin::Manual,
        gateway: ip(&format!("192.168.{index}.1")),
        primary_dns: ip("192.168.0.53"),
        secondary_dns: None,
        dhcp_server: None,
        vlan: 0,
        vlan_raw: 0,
        mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x50 + index],
        pci_bdf: Some(3 << 3),
        hostname: Some(format!("host{index}")),
    }
}

pub fn target(index: u8) -> Target {
    Target {
        place: Place::default(),
        index,
        ip: ip(&format!("192.168.{index}.2")),
        port: 3260,
        lun: Lun::from_number(1),
        chap: ChapType::None,
        nic_index: index,
        name: format!("iqn.2026-11.org.sanroot:disk{index}"),
        chap_name: None,
        chap_secret: None,
        rchap_name: None,
        rchap_secret: None,
        boot: false,
        second_path: false,
    }
}

pub fn with_chap(mut t: Target, mutual: bool) -> Target {
    t.chap = if mutual {
        ChapType::Mutual
    } else {
        ChapType::OneWay
    };
    t.chap_name = Some("alice".into());
    t.chap_secret = Some(Secret::from("alice-secret-12"));
    if mutual {
        t.rchap_name = Some("target-bob".into());
        t.rchap_secret = Some(Secret::from("bob-secret-3456"));
    }
    t
}

pub fn table(nics: Vec<Nic>, targets: Vec<Target>) -> Ibft {
    Ibft {
        header: header(Signature::Ibft),
        control_len: 18,
        extensions: 0,
        initiator: Some(Initiator {
            place: Place::default(),
            index: 0,
            isns: None,
            slp: None,
            pri_radius: None,
            sec_radius: None,
            name: Some("iqn.2026-11.org.sanroot:initiator".into()),
        }),
        nics,
        targets,
        problems: vec![],
        lost_fields: vec![],
    }
}

/// The simplest good table: one NIC, one target.
pub fn simple() -> Ibft {
    table(vec![nic(0)], vec![target(0)])
}

pub fn bytes(t: &Ibft) -> Vec<u8> {
    emit(t, Layout::Ipxe)
}

pub fn parse_ok(b: &[u8]) -> Ibft {
    parse(b, ParseOptions::default()).unwrap_or_else(|e| panic!("table should parse: {e}"))
}

pub fn parse_err(b: &[u8]) -> IbftError {
    match parse(b, ParseOptions::default()) {
        Ok(t) => panic!("table should be refused, got {t:?}"),
        Err(e) => e,
    }
}

/// Recompute the checksum after a test edited the bytes.
pub fn fix_checksum(b: &mut [u8]) {
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let len = len.min(b.len());
    b[9] = 0;
    let sum = b[..len].iter().fold(0u8, |a, x| a.wrapping_add(*x));
    b[9] = 0u8.wrapping_sub(sum);
}

pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn get_u16(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

/// Offsets of the control structure's pointers.
pub const CTRL_INITIATOR: usize = 0x30 + 8;
pub const CTRL_NIC0: usize = 0x30 + 10;
pub const CTRL_TARGET0: usize = 0x30 + 12;
pub const CTRL_NIC1: usize = 0x30 + 14;
pub const CTRL_TARGET1: usize = 0x30 + 16;

/// Normalise what a round trip cannot keep (offsets, default flags,
/// problems) so two tables can be compared.
pub fn comparable(mut t: Ibft) -> Ibft {
    t.header.length = 0;
    t.header.checksum = 0;
    t.header.checksum_ok = Some(true);
    t.problems.clear();
    t.control_len = 0;
    if let Some(i) = &mut t.initiator {
        i.place = Place::default();
    }
    for n in &mut t.nics {
        n.place = Place::default();
    }
    for g in &mut t.targets {
        g.place = Place::default();
        g.boot = false;
        g.second_path = false;
    }
    t
}
