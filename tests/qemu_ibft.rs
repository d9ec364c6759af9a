//! The static binary in a real kernel: QEMU (TCG) boots Debian's 6.12
//! kernel with a tiny initramfs holding `sanroot`, which reads the iBFT
//! there (qemu/ibft-guest-test). Needs root, qemu-system-x86, ipxe-qemu,
//! tgt and linux-image-6.12-amd64 (`sudo qemu/install-deps`); `tests/run`
//! builds the static binary first and sets SANROOT_STATIC_BIN.

use std::collections::BTreeMap;
use std::process::Command;

#[path = "support/elf.rs"]
mod elf;
#[path = "support/guest.rs"]
mod guest;
use guest::{repo, static_bin};

/// Run the guest test; returns the JSON and the #meta lines.
fn guest(mode: &str) -> (serde_json::Value, BTreeMap<String, String>) {
    let out = Command::new(repo().join("qemu/ibft-guest-test"))
        .arg(mode)
        .arg(static_bin())
        .output()
        .expect("run qemu/ibft-guest-test (install the QEMU tools with `sudo qemu/install-deps`)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "qemu/ibft-guest-test {mode} failed:\n{err}"
    );
    let meta = err
        .lines()
        .filter_map(|l| l.strip_prefix("#meta "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let json =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("guest JSON: {e}\n{err}"));
    (json, meta)
}

fn fixture_meta(case: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(repo().join(format!("tests/fixtures/ibft/{case}.meta")))
        .expect("fixture meta")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn acpitable_table_is_read_in_guest() {
    let (v, _) = guest("acpitable");
    let m = fixture_meta("uefi-chap-dhcp");
    assert_eq!(v["source"], "acpi");
    assert!(
        v["source_detail"]
            .as_str()
            .unwrap_or("")
            .contains("/sys/firmware/acpi/tables/iBFT"),
        "{v}"
    );
    assert_eq!(
        v["header"]["checksum_ok"], true,
        "QEMU rewrote the checksum consistently"
    );
    assert_eq!(v["initiator"]["name"], m["initiator_iqn"].as_str());
    let t = &v["targets"][0];
    assert_eq!(t["name"], m["target_iqn"].as_str());
    assert_eq!(t["ip"], "10.0.2.2");
    assert_eq!(t["port"].to_string(), m["target_port"]);
    assert_eq!(t["lun"], 1);
    assert_eq!(t["chap"], "chap");
    assert_eq!(t["chap_name"], m["chap_user"].as_str());
    assert_eq!(t["chap_secret"], "<hidden>");
    assert_eq!(t["boot"], true);
    let n = &v["nics"][0];
    assert_eq!(n["mac"], m["mac"].as_str());
    assert_eq!(n["origin"], "dhcp");
    assert_eq!(t["nic_index"], n["index"]);
}

#[test]
fn sanhook_table_is_read_in_guest() {
    let (v, m) = guest("sanhook");
    assert_eq!(
        v["source"], "mem",
        "BIOS iPXE leaves the table in low memory: {v}"
    );
    let addr = u64::from_str_radix(
        v["source_detail"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("0x"),
        16,
    )
    .unwrap_or(0);
    assert!((0x80000..0xa0000).contains(&addr), "table at 0x{addr:x}");
    assert_eq!(v["initiator"]["name"], m["initiator_iqn"].as_str());
    let t = &v["targets"][0];
    assert_eq!(t["name"], m["target_iqn"].as_str());
    assert_eq!(t["port"].to_string(), m["target_port"]);
    assert_eq!(t["ip"], "10.0.2.2");
    assert_eq!(t["lun"], 1);
    assert_eq!(t["chap"], "none");
    assert_eq!(t["boot"], true);
    let n = &v["nics"][0];
    assert_eq!(n["ip"], m["ip"].as_str());
    assert_eq!(n["prefix_len"].to_string(), m["prefix_len"]);
    assert_eq!(n["gateway"], m["gateway"].as_str());
    assert_eq!(n["dns"][0], m["dns"].as_str());
    assert_eq!(n["hostname"], m["hostname"].as_str());
    assert_eq!(n["mac"], m["mac"].as_str());
    assert_eq!(n["origin"], "manual");
}

/// The release binary runs in any initramfs: no PT_INTERP (no dynamic
/// loader), no DT_NEEDED libraries, and no NSS machinery linked in.
#[test]
fn release_binary_is_static() {
    let bin = std::fs::read(static_bin()).expect("read the binary");
    let elf = elf::parse_elf(&bin);
    assert!(
        !elf.program_types.contains(&elf::PT_INTERP),
        "PT_INTERP present: the binary needs a dynamic loader"
    );
    // static-pie has a PT_DYNAMIC for relocations, but no DT_NEEDED.
    assert!(
        !elf.dynamic_tags.contains(&elf::DT_NEEDED),
        "DT_NEEDED present: the binary links a shared library"
    );
    let text = String::from_utf8_lossy(&bin);
    assert!(!text.contains("libnss_"), "NSS modules referenced");
}
