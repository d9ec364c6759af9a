//! Synthetic and broken iBFTs: what iPXE does not make, and what broken
//! firmware does. Every broken table must give a located error and never a
//! panic.

mod common;

use common::*;
use sanroot::ibft::emit::{Layout, emit};
use sanroot::ibft::*;

#[test]
fn ipxe_layout_round_trips() {
    let mut t = simple();
    t.targets[0] = with_chap(target(0), true);
    let b = bytes(&t);
    let back = parse_ok(&b);
    assert_eq!(back.problems, vec![], "no problems expected");
    assert_eq!(comparable(back.clone()), comparable(t));
    assert!(back.targets[0].boot);
    assert_eq!(back.header.length as usize, b.len());
}

#[test]
fn edk2_style_table() {
    // EDK2: 2048 bytes, strings packed down from the end, ::ffff:0.0.0.0
    // for every unset address, global bit on NICs, only index 0 boot-selected.
    let mut t = table(vec![nic(0), nic(1)], vec![target(0), target(1)]);
    t.nics[0].place.flags = 0x07;
    t.nics[1].place.flags = 0x05;
    t.targets[0].place.flags = 0x03;
    t.targets[1].place.flags = 0x01;
    t.nics[0].secondary_dns = None;
    t.nics[1].gateway = None;
    t.header.oem_id = "INTEL".into();
    let b = emit(&t, Layout::Edk2);
    assert_eq!(b.len(), 2048);
    // Strings really are at the end.
    let name_off = get_u16(&b, get_u16(&b, CTRL_TARGET0) + 36);
    assert!(
        name_off > 1800,
        "EDK2 strings sit at the end, got 0x{name_off:x}"
    );
    // The unset gateway really is ::ffff:0.0.0.0 on the wire.
    let nic1 = get_u16(&b, CTRL_NIC1);
    assert_eq!(
        &b[nic1 + 24..nic1 + 40],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
    );
    let back = parse_ok(&b);
    assert_eq!(back.nics[1].gateway, None);
    assert_eq!(back.nics[0].secondary_dns, None);
    assert!(back.nics[0].is_global());
    assert_eq!(back.boot_target().map(|t| t.index), Some(0));
    assert_eq!(back.second_path().map(|t| t.index), Some(1));
    assert_eq!(back.header.oem_id, "INTEL");
    assert!(back.errors().next().is_none());
}

#[test]
fn two_paths_boot_flag_on_second_target() {
    let mut t = table(vec![nic(0), nic(1)], vec![target(0), target(1)]);
    t.targets[0].place.flags = 0x01; // valid, not boot-selected
    t.targets[1].place.flags = 0x03; // valid, boot-selected
    let back = parse_ok(&bytes(&t));
    let boot = back.boot_target().expect("boot target");
    assert_eq!(boot.index, 1);
    assert_eq!(back.nic_for(boot).map(|n| n.index), Some(1));
    assert_eq!(back.second_path().map(|t| t.index), Some(0));
}

#[test]
fn no_boot_flag_falls_back_to_first_valid_target() {
    let mut t = table(vec![nic(0)], vec![target(0), target(1)]);
    t.targets[0].place.flags = 0x01;
    t.targets[1].place.flags = 0x01;
    t.targets[1].nic_index = 0;
    let back = parse_ok(&bytes(&t));
    assert_eq!(back.boot_target().map(|t| t.index), Some(0));
    assert_eq!(back.second_path().map(|t| t.index), Some(1));
}

#[test]
fn invalid_blocks_are_skipped_not_errors() {
    let mut t = table(vec![nic(0), nic(1)], vec![target(0), target(1)]);
    // EDK2 writes all slots and clears the valid flag of unused ones; a
    // flag byte of 0 is emitted as "valid" by the builder, so patch it.
    t.targets[1].place.flags = 0x01;
    let mut b = bytes(&t);
    let t1 = get_u16(&b, CTRL_TARGET1);
    b[t1 + 5] = 0;
    fix_checksum(&mut b);
    let back = parse_ok(&b);
    assert_eq!(back.targets.len(), 1);
    assert!(back.errors().next().is_none());
    assert!(
        back.problems
            .iter()
            .any(|p| p.structure == "target1" && p.severity == Severity::Note)
    );
}

#[test]
fn boot_selected_bit_alone_counts_as_valid() {
    let mut b = bytes(&simple());
    let t0 = get_u16(&b, CTRL_TARGET0);
    b[t0 + 5] = 0x02;
    fix_checksum(&mut b);
    let back = parse_ok(&b);
    assert_eq!(back.targets.len(), 1);
    assert!(back.targets[0].boot);
}

#[test]
fn control_structure_with_extra_pairs() {
    // Three NIC/target pairs: the control structure is 8 + 2*7 = 22 bytes.
    let t = table(
        vec![nic(0), nic(1), nic(2)],
        vec![target(0), target(1), target(2)],
    );
    let b = bytes(&t);
    assert_eq!(get_u16(&b, 0x30 + 2), 22);
    let back = parse_ok(&b);
    assert_eq!(back.nics.len(), 3);
    assert_eq!(back.targets.len(), 3);
    assert_eq!(back.targets[2].name, "iqn.2026-11.org.sanroot:disk2");
    assert_eq!(back.nic_for(&back.targets[2]).map(|n| n.index), Some(2));
    assert_eq!(back.control_len, 22);
}

#[test]
fn vlan_is_masked_to_twelve_bits() {
    let mut t = simple();
    t.nics[0].vlan_raw = 0x6064; // priority 3, VID 100
    let back = parse_ok(&bytes(&t));
    assert_eq!(back.nics[0].vlan, 100);
    assert_eq!(back.nics[0].vlan_raw, 0x6064);
    assert!(back.problems.iter().any(|p| p.field == "vlan"));
}

#[test]
fn ipv6_nic_and_target() {
    let mut t = simple();
    t.nics[0].ip = ip("fd00:5a4e::15");
    t.nics[0].prefix_len = 64;
    t.nics[0].gateway = ip("fd00:5a4e::1");
    t.nics[0].primary_dns = ip("fd00:5a4e::53");
    t.nics[0].origin = Origin::RouterAdvertisement;
    t.targets[0].ip = ip("fd00:5a4e::2");
    let back = parse_ok(&bytes(&t));
    assert_eq!(back.nics[0].ip, ip("fd00:5a4e::15"));
    assert_eq!(back.nics[0].netmask(), None);
    assert_eq!(back.nics[0].origin.name(), "ra");
    assert_eq!(back.targets[0].ip, ip("fd00:5a4e::2"));
}

#[test]
fn large_luns() {
    for n in [255u64, 256, 300, 1023, 16383, 65536 + 7] {
        let mut t = simple();
        t.targets[0].lun = Lun::from_number(n);
        let back = parse_ok(&bytes(&t));
        assert_eq!(back.targets[0].lun.number, n, "LUN {n}");
        assert_eq!(back.targets[0].lun.raw, Lun::from_number(n).raw);
    }
    // iPXE's own form for LUN 300: 16-bit big-endian groups, no flat bit.
    let mut t = simple();
    t.targets[0].lun = Lun::decode([0x01, 0x2c, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse_ok(&bytes(&t)).targets[0].lun.number, 300);
}

#[test]
fn little_endian_lun_from_uroot() {
    let mut t = simple();
    t.targets[0].lun = Lun::decode([3, 0, 0, 0, 0, 0, 0, 0]);
    let back = parse_ok(&bytes(&t));
    assert_eq!(back.targets[0].lun.number, 3);
    assert_eq!(back.targets[0].lun.encoding, LunEncoding::LittleEndian);
    assert!(back.problems.iter().any(|p| p.field == "lun"));
}

#[test]
fn bift_and_ibft_signatures() {
    for sig in [Signature::Bift, Signature::IbftUpper] {
        let mut t = simple();
        t.header = header(sig);
        let back = parse_ok(&bytes(&t));
        assert_eq!(back.header.signature, sig);
        assert_eq!(back.targets.len(), 1);
    }
}

#[test]
fn all_origins_have_names() {
    for (v, name) in [
        (0, "other"),
        (1, "manual"),
        (2, "well-known"),
        (3, "dhcp"),
        (4, "ra"),
        (15, "unchanged"),
    ] {
        assert_eq!(Origin::from_u8(v).name(), name);
    }
    assert_eq!(Origin::from_u8(9).name(), "unknown-9");
}

// ---- broken tables ----

#[test]
fn bad_checksum() {
    let mut b = bytes(&simple());
    b[9] = b[9].wrapping_add(1);
    let e = parse_err(&b);
    assert_eq!((e.field, e.offset), ("checksum", 9));
    assert!(e.to_string().contains("--ignore-checksum"));
    let t = parse(
        &b,
        ParseOptions {
            ignore_checksum: true,
        },
    )
    .expect("readable with ignore_checksum");
    assert_eq!(t.header.checksum_ok, Some(false));
    assert!(
        t.problems
            .iter()
            .any(|p| p.field == "checksum" && p.severity == Severity::Warning)
    );
}

#[test]
fn bad_signature() {
    let mut b = bytes(&simple());
    b[0..4].copy_from_slice(b"XSDT");
    let e = parse_err(&b);
    assert_eq!((e.field, e.offset), ("signature", 0));
    assert!(e.message.contains("XSDT"));
}

#[test]
fn truncated_tables() {
    let b = bytes(&simple());
    let e = parse_err(&b[..b.len() - 1]);
    assert_eq!(e.field, "length");
    assert!(e.message.contains("truncated"), "{e}");
    assert_eq!(parse_err(&b[..20]).field, "length");
    assert_eq!(parse_err(&[]).field, "length");
}

#[test]
fn length_field_too_small_or_absurd() {
    let mut b = bytes(&simple());
    b[4..8].copy_from_slice(&50u32.to_le_bytes());
    assert_eq!(parse_err(&b).field, "length");
    b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(parse_err(&b).field, "length");
}

#[test]
fn broken_control_structure() {
    let good = bytes(&simple());
    let mut b = good.clone();
    b[0x30] = 3;
    fix_checksum(&mut b);
    let e = parse_err(&b);
    assert_eq!((e.field, e.offset), ("control.id", 0x30));

    let mut b = good.clone();
    put_u16(&mut b, 0x32, 10);
    fix_checksum(&mut b);
    assert_eq!(parse_err(&b).field, "control.length");

    let mut b = good.clone();
    put_u16(&mut b, 0x32, 0xfff0);
    fix_checksum(&mut b);
    let e = parse_err(&b);
    assert_eq!(e.field, "control.length");
    assert!(e.message.contains("past the end"));
}

#[test]
fn structure_offset_outside_table() {
    let mut b = bytes(&simple());
    put_u16(&mut b, CTRL_TARGET0, 0xfff0);
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert!(t.targets.is_empty());
    let p = t.errors().next().expect("an error");
    assert_eq!(
        (p.structure.as_str(), p.field, p.offset),
        ("target0", "offset", CTRL_TARGET0)
    );
    // Pointing into the header is just as wrong.
    let mut b = bytes(&simple());
    put_u16(&mut b, CTRL_NIC0, 0x10);
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert!(t.nics.is_empty());
    assert!(
        t.errors()
            .any(|p| p.structure == "nic0" && p.field == "offset")
    );
}

#[test]
fn string_out_of_range() {
    let mut b = bytes(&simple());
    let t0 = get_u16(&b, CTRL_TARGET0);
    let len = b.len() as u16;
    put_u16(&mut b, t0 + 36, len - 4); // name offset near the end, length > 4
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert!(t.targets.is_empty());
    let p = t.errors().next().expect("error");
    assert_eq!(
        (p.structure.as_str(), p.field, p.offset),
        ("target0", "name", t0 + 34)
    );
    assert!(p.message.contains("outside the table"), "{p}");
}

#[test]
fn string_with_offset_zero_or_inner_nul() {
    let mut b = bytes(&simple());
    let n0 = get_u16(&b, CTRL_NIC0);
    put_u16(&mut b, n0 + 100, 0); // hostname offset 0, length kept
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert_eq!(
        t.nics[0].hostname, None,
        "the broken optional string is dropped"
    );
    assert!(t.errors().any(|p| p.field == "hostname"));

    let mut b = bytes(&simple());
    let t0 = get_u16(&b, CTRL_TARGET0);
    let name_off = get_u16(&b, t0 + 36);
    b[name_off + 3] = 0;
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert!(t.targets.is_empty());
    assert!(
        t.errors()
            .any(|p| p.field == "name" && p.message.contains("NUL"))
    );
}

#[test]
fn string_without_nul_is_warned_about() {
    let mut b = bytes(&simple());
    let t0 = get_u16(&b, CTRL_TARGET0);
    let name_off = get_u16(&b, t0 + 36);
    let name_len = get_u16(&b, t0 + 34);
    b[name_off + name_len] = b'x';
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert_eq!(t.targets.len(), 1);
    assert!(
        t.problems
            .iter()
            .any(|p| p.field == "name" && p.severity == Severity::Warning)
    );
}

#[test]
fn overlapping_structures() {
    let mut b = bytes(&simple());
    let n0 = get_u16(&b, CTRL_NIC0);
    put_u16(&mut b, CTRL_TARGET0, (n0 + 16) as u16);
    // Make the bytes there look like a target header, so only the overlap
    // check can catch it.
    b[n0 + 16] = 4;
    b[n0 + 17] = 1;
    put_u16(&mut b, n0 + 18, 54);
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert!(t.targets.is_empty());
    assert!(
        t.errors()
            .any(|p| p.structure == "target0" && p.message.contains("overlaps"))
    );
}

#[test]
fn same_structure_twice_is_an_overlap() {
    let mut b = bytes(&table(vec![nic(0)], vec![target(0)]));
    let n0 = get_u16(&b, CTRL_NIC0);
    put_u16(&mut b, CTRL_NIC1, n0 as u16);
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert_eq!(t.nics.len(), 1);
    assert!(t.errors().any(|p| p.structure == "nic1"));
}

#[test]
fn duplicate_indexes() {
    let mut t = table(vec![nic(0), nic(1)], vec![target(0), target(1)]);
    t.nics[1].index = 0;
    t.targets[1].index = 0;
    let back = parse_ok(&bytes(&t));
    assert_eq!(back.nics.len(), 1);
    assert_eq!(back.targets.len(), 1);
    assert!(
        back.errors()
            .any(|p| p.structure == "nic1" && p.field == "index")
    );
    assert!(
        back.errors()
            .any(|p| p.structure == "target1" && p.field == "index")
    );
}

#[test]
fn wrong_structure_lengths() {
    // Too short: rejected.
    let mut b = bytes(&simple());
    let n0 = get_u16(&b, CTRL_NIC0);
    put_u16(&mut b, n0 + 2, 100);
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert!(t.nics.is_empty());
    assert!(
        t.errors()
            .any(|p| p.structure == "nic0" && p.field == "length" && p.offset == n0 + 2)
    );
    // Longer than the spec: used, with a warning.
    let mut b = bytes(&simple());
    let t0 = get_u16(&b, CTRL_TARGET0);
    put_u16(&mut b, t0 + 2, 56);
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert_eq!(t.targets.len(), 1);
    assert!(
        t.problems
            .iter()
            .any(|p| p.field == "length" && p.severity == Severity::Warning)
    );
    // Past the end of the table: rejected.
    let mut b = bytes(&simple());
    let t0 = get_u16(&b, CTRL_TARGET0);
    put_u16(&mut b, t0 + 2, 0x4000);
    fix_checksum(&mut b);
    assert!(parse_ok(&b).targets.is_empty());
}

#[test]
fn wrong_structure_id() {
    let mut b = bytes(&simple());
    let t0 = get_u16(&b, CTRL_TARGET0);
    b[t0] = 3;
    fix_checksum(&mut b);
    let t = parse_ok(&b);
    assert!(t.targets.is_empty());
    let p = t.errors().next().expect("error");
    assert_eq!((p.field, p.offset), ("id", t0));
}

#[test]
fn one_bad_target_of_two_leaves_the_other_usable() {
    let mut t = table(vec![nic(0), nic(1)], vec![target(0), target(1)]);
    t.targets[0].place.flags = 0x03;
    t.targets[1].place.flags = 0x01;
    let mut b = bytes(&t);
    let t0 = get_u16(&b, CTRL_TARGET0);
    b[t0 + 32] = 7; // impossible CHAP type
    fix_checksum(&mut b);
    let back = parse_ok(&b);
    assert_eq!(back.targets.len(), 1);
    assert_eq!(
        back.boot_target().map(|t| t.index),
        Some(1),
        "the remaining target boots"
    );
    assert!(
        back.errors()
            .any(|p| p.field == "chap_type" && p.offset == t0 + 32)
    );
}

#[test]
fn chap_without_secret_is_rejected() {
    let mut t = simple();
    t.targets[0].chap = ChapType::OneWay;
    t.targets[0].chap_name = Some("alice".into());
    let back = parse_ok(&bytes(&t));
    assert!(back.targets.is_empty());
    assert!(back.errors().any(|p| p.field == "chap_secret"));
}

#[test]
fn target_without_address_or_name() {
    let mut t = simple();
    t.targets[0].ip = None;
    let back = parse_ok(&bytes(&t));
    assert!(back.targets.is_empty());
    assert!(back.errors().any(|p| p.field == "ip"));

    let mut t = simple();
    t.targets[0].name = String::new();
    let back = parse_ok(&bytes(&t));
    assert!(back.targets.is_empty());
    assert!(back.errors().any(|p| p.field == "name"));
}

#[test]
fn impossible_prefix_length() {
    let mut t = simple();
    t.nics[0].prefix_len = 40;
    let back = parse_ok(&bytes(&t));
    assert!(back.nics.is_empty());
    assert!(back.errors().any(|p| p.field == "prefix_len"));
}

#[test]
fn target_pointing_at_missing_nic_is_a_warning() {
    let mut t = simple();
    t.targets[0].nic_index = 5;
    let back = parse_ok(&bytes(&t));
    assert_eq!(back.targets.len(), 1);
    assert!(
        back.problems
            .iter()
            .any(|p| p.field == "nic_assoc" && p.severity == Severity::Warning)
    );
}

/// Cheap exhaustive robustness: every truncation and every single-byte
/// change of a real-shaped table parses or fails cleanly.
#[test]
fn no_truncation_or_byte_flip_panics() {
    let mut t = table(
        vec![nic(0), nic(1)],
        vec![with_chap(target(0), true), target(1)],
    );
    t.nics[1].ip = ip("fd00::1");
    for layout in [Layout::Ipxe, Layout::Edk2] {
        let good = emit(&t, layout);
        for cut in 0..good.len() {
            let _ = parse(&good[..cut], ParseOptions::default());
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse(
                    &b,
                    ParseOptions {
                        ignore_checksum: true,
                    },
                );
            }
        }
    }
}
