//! Real tables captured from Debian's iPXE under QEMU (qemu/make-ibft-fixtures),
//! each checked two ways: against what the kernel's /sys/firmware/ibft
//! showed in the same boot, and against what the capture script asked iPXE
//! to do (the .meta file).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sanroot::ibft::{self, ChapType, Ibft, ParseOptions, Severity};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ibft")
}

/// Every captured case, by base name.
fn cases() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(fixture_dir())
        .expect("tests/fixtures/ibft exists")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".bin").map(str::to_string))
        .collect();
    v.sort();
    v
}

fn meta(case: &str) -> BTreeMap<String, String> {
    let text = fs::read_to_string(fixture_dir().join(format!("{case}.meta"))).expect("meta file");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Rebuild the captured sysfs tree in a temporary directory.
fn sysfs_tree(case: &str) -> PathBuf {
    let text = fs::read_to_string(fixture_dir().join(format!("{case}.sysfs"))).expect("sysfs file");
    let dir = std::env::temp_dir().join(format!("sanroot-fixture-{case}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for line in text.lines() {
        let Some((path, value)) = line.split_once('\t') else {
            continue;
        };
        let p = dir.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, format!("{value}\n")).expect("write");
    }
    dir
}

fn raw(case: &str) -> Ibft {
    let b = fs::read(fixture_dir().join(format!("{case}.bin"))).expect("bin file");
    ibft::parse(&b, ParseOptions::default()).unwrap_or_else(|e| panic!("{case}: {e}"))
}

#[test]
fn all_cases_are_present() {
    let c = cases();
    for want in [
        "bios-none-dhcp",
        "bios-chap-static",
        "bios-mutual-dhcp",
        "uefi-none-static",
        "uefi-chap-dhcp",
        "uefi-mutual-static",
    ] {
        assert!(
            c.iter().any(|x| x == want),
            "fixture {want} missing: run `sudo qemu/make-ibft-fixtures`"
        );
    }
}

#[test]
fn captured_tables_are_clean() {
    for case in cases() {
        let t = raw(&case);
        let bad: Vec<_> = t
            .problems
            .iter()
            .filter(|p| p.severity >= Severity::Warning)
            .collect();
        assert!(bad.is_empty(), "{case}: {bad:?}");
        assert_eq!(t.header.oem_id, "FENSYS", "{case}");
        assert_eq!(t.header.oem_table_id, "iPXE", "{case}");
        assert_eq!(t.targets.len(), 1, "{case}");
        assert!(t.targets[0].boot, "{case}");
    }
}

#[test]
fn raw_tables_agree_with_the_kernel_view() {
    for case in cases() {
        let t = raw(&case);
        let k = ibft::sysfs::read_dir(&sysfs_tree(&case)).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(
            t.initiator_name(),
            k.initiator_name(),
            "{case}: initiator name"
        );
        assert_eq!(t.nics.len(), k.nics.len(), "{case}: NIC count");
        for (a, b) in t.nics.iter().zip(&k.nics) {
            assert_eq!(a.index, b.index, "{case}");
            assert_eq!(a.mac, b.mac, "{case}: mac");
            assert_eq!(a.ip, b.ip, "{case}: ip");
            assert_eq!(a.prefix_len, b.prefix_len, "{case}: prefix");
            assert_eq!(a.origin, b.origin, "{case}: origin");
            assert_eq!(a.gateway, b.gateway, "{case}: gateway");
            assert_eq!(a.primary_dns, b.primary_dns, "{case}: dns");
            assert_eq!(a.secondary_dns, b.secondary_dns, "{case}: dns2");
            assert_eq!(a.dhcp_server, b.dhcp_server, "{case}: dhcp");
            assert_eq!(a.vlan, b.vlan, "{case}: vlan");
            assert_eq!(a.hostname, b.hostname, "{case}: hostname");
            assert_eq!(a.place.flags, b.place.flags, "{case}: nic flags");
        }
        assert_eq!(t.targets.len(), k.targets.len(), "{case}: target count");
        for (a, b) in t.targets.iter().zip(&k.targets) {
            assert_eq!(a.index, b.index, "{case}");
            assert_eq!(a.ip, b.ip, "{case}: target ip");
            assert_eq!(a.port, b.port, "{case}: port");
            assert_eq!(a.lun.raw, b.lun.raw, "{case}: lun bytes");
            assert_eq!(a.lun.number, b.lun.number, "{case}: lun");
            assert_eq!(a.name, b.name, "{case}: target name");
            assert_eq!(a.chap, b.chap, "{case}: chap type");
            assert_eq!(a.nic_index, b.nic_index, "{case}: nic assoc");
            assert_eq!(a.chap_name, b.chap_name, "{case}: chap name");
            assert_eq!(a.chap_secret, b.chap_secret, "{case}: chap secret");
            assert_eq!(a.rchap_name, b.rchap_name, "{case}: reverse chap name");
            assert_eq!(
                a.rchap_secret, b.rchap_secret,
                "{case}: reverse chap secret"
            );
            assert_eq!(a.place.flags, b.place.flags, "{case}: target flags");
        }
    }
}

#[test]
fn raw_tables_say_what_the_capture_asked_for() {
    for case in cases() {
        let t = raw(&case);
        let m = meta(&case);
        let get = |k: &str| {
            m.get(k)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("{case}: meta lacks {k}"))
        };
        assert_eq!(t.initiator_name(), Some(get("initiator_iqn")), "{case}");
        let tg = t.boot_target().expect("boot target");
        assert_eq!(tg.name, get("target_iqn"), "{case}");
        assert_eq!(tg.port.to_string(), get("target_port"), "{case}");
        assert_eq!(tg.lun.number.to_string(), get("lun"), "{case}");
        assert_eq!(
            tg.ip.map(|a| a.to_string()).as_deref(),
            Some("10.0.2.2"),
            "{case}"
        );
        let want_chap = match get("auth") {
            "none" => ChapType::None,
            "chap" => ChapType::OneWay,
            "mutual" => ChapType::Mutual,
            other => panic!("{case}: auth {other}"),
        };
        assert_eq!(tg.chap, want_chap, "{case}");
        if want_chap != ChapType::None {
            assert_eq!(tg.chap_name.as_deref(), Some(get("chap_user")), "{case}");
            assert_eq!(
                tg.chap_secret.as_ref().map(|s| s.expose()),
                Some(get("chap_secret").as_bytes()),
                "{case}"
            );
        }
        if want_chap == ChapType::Mutual {
            assert_eq!(tg.rchap_name.as_deref(), Some(get("rchap_user")), "{case}");
            assert_eq!(
                tg.rchap_secret.as_ref().map(|s| s.expose()),
                Some(get("rchap_secret").as_bytes()),
                "{case}"
            );
        }
        let nic = t.nic_for(tg).expect("the boot target's NIC");
        assert_eq!(nic.mac_string().len(), 17, "{case}");
        match get("addr") {
            "static" => {
                assert_eq!(
                    nic.ip.map(|a| a.to_string()).as_deref(),
                    Some(get("ip")),
                    "{case}"
                );
                assert_eq!(nic.hostname.as_deref(), Some(get("hostname")), "{case}");
                assert_eq!(nic.origin.name(), "manual", "{case}");
            }
            "dhcp" => {
                assert_eq!(nic.origin.name(), "dhcp", "{case}");
                assert!(nic.ip.is_some(), "{case}");
            }
            other => panic!("{case}: addr {other}"),
        }
        if let Some(gw) = m.get("gateway") {
            assert_eq!(
                nic.gateway.map(|a| a.to_string()).as_ref(),
                Some(gw),
                "{case}"
            );
        }
        assert_eq!(nic.prefix_len, 24, "{case}");
    }
}
