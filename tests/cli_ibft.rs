//! `sanroot ibft` as a user runs it: sources, output forms, secrets, exit
//! codes. Tables are synthetic; fake /sys and /dev trees stand in for the
//! machine through the hidden --sysroot option.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use sanroot::ibft::emit::{Layout, emit};

fn sanroot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sanroot"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sanroot")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sanroot-test-{}-{}", name, std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("tmpdir");
    d
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, bytes).expect("write");
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

fn chap_table() -> Vec<u8> {
    let mut t = table(vec![nic(0)], vec![with_chap(target(0), true)]);
    t.nics[0].origin = sanroot::ibft::Origin::Dhcp;
    bytes(&t)
}

#[test]
fn json_contract_keys() {
    let d = tmpdir("json");
    let f = d.join("t.bin");
    write(&f, &chap_table());
    let v = json(&sanroot(&["ibft", "--file", f.to_str().unwrap(), "--json"]));
    assert_eq!(v["source"], "file");
    assert_eq!(v["initiator"]["name"], "iqn.2026-11.org.sanroot:initiator");
    let n = &v["nics"][0];
    assert_eq!(n["index"], 0);
    assert_eq!(n["mac"], "52:54:00:12:34:50");
    assert_eq!(n["ip"], "192.168.0.10");
    assert_eq!(n["prefix_len"], 24);
    assert_eq!(n["netmask"], "255.255.255.0");
    assert_eq!(n["gateway"], "192.168.0.1");
    assert_eq!(n["origin"], "dhcp");
    assert_eq!(n["vlan"], 0);
    assert_eq!(n["hostname"], "host0");
    assert_eq!(n["dns"], serde_json::json!(["192.168.0.53"]));
    assert_eq!(n["pci"], "0000:00:03.0");
    let t = &v["targets"][0];
    assert_eq!(t["index"], 0);
    assert_eq!(t["ip"], "192.168.0.2");
    assert_eq!(t["port"], 3260);
    assert_eq!(t["lun"], 1);
    assert_eq!(t["lun_raw"], "0001000000000000");
    assert_eq!(t["name"], "iqn.2026-11.org.sanroot:disk0");
    assert_eq!(t["chap"], "mutual");
    assert_eq!(t["nic_index"], 0);
    assert_eq!(t["boot"], true);
    assert_eq!(t["chap_name"], "alice");
    assert_eq!(t["chap_secret"], "<hidden>");
    assert_eq!(t["reverse_chap_secret"], "<hidden>");
    assert_eq!(v["problems"], serde_json::json!([]));
}

#[test]
fn secrets_hidden_unless_asked() {
    let d = tmpdir("secrets");
    let f = d.join("t.bin");
    write(&f, &chap_table());
    let f = f.to_str().unwrap();
    for args in [
        vec!["ibft", "--file", f],
        vec!["ibft", "--file", f, "--json"],
        vec!["ibft", "--file", f, "--netroot"],
        vec!["ibft", "--file", f, "-vv"],
    ] {
        let out = sanroot(&args);
        assert!(out.status.success());
        let all = [out.stdout, out.stderr].concat();
        let all = String::from_utf8_lossy(&all);
        assert!(
            !all.contains("alice-secret-12"),
            "{args:?} leaked the secret:\n{all}"
        );
        assert!(
            !all.contains("bob-secret-3456"),
            "{args:?} leaked the reverse secret"
        );
        assert!(all.contains("<hidden>"), "{args:?} should say <hidden>");
    }
    let v = json(&sanroot(&["ibft", "--file", f, "--json", "--show-secrets"]));
    assert_eq!(v["targets"][0]["chap_secret"], "alice-secret-12");
    assert_eq!(v["targets"][0]["reverse_chap_secret"], "bob-secret-3456");
}

#[test]
fn human_output_names_the_source_and_boot_target() {
    let d = tmpdir("human");
    let f = d.join("t.bin");
    write(&f, &chap_table());
    let out = sanroot(&["ibft", "--file", f.to_str().unwrap()]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("iBFT from file ("), "{s}");
    assert!(
        s.contains("initiator  iqn.2026-11.org.sanroot:initiator"),
        "{s}"
    );
    assert!(
        s.contains("iqn.2026-11.org.sanroot:disk0  192.168.0.2:3260  lun 1  via nic 0  [boot]"),
        "{s}"
    );
    assert!(s.contains("auth mutual: name alice secret <hidden>"), "{s}");
}

#[test]
fn netroot_arguments() {
    let d = tmpdir("netroot");
    let f = d.join("t.bin");
    let mut t = table(vec![nic(0)], vec![with_chap(target(0), false)]);
    t.nics[0].vlan_raw = 7;
    write(&f, &bytes(&t));
    let out = sanroot(&[
        "ibft",
        "--file",
        f.to_str().unwrap(),
        "--netroot",
        "--show-secrets",
    ]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(
        lines,
        vec![
            "rd.iscsi.initiator=iqn.2026-11.org.sanroot:initiator",
            "ifname=ibft0:52:54:00:12:34:50",
            "vlan=ibft0.7:ibft0",
            "ip=192.168.0.10::192.168.0.1:255.255.255.0:host0:ibft0.7:none",
            "nameserver=192.168.0.53",
            "netroot=iscsi:alice:alice-secret-12@192.168.0.2::3260:1:iqn.2026-11.org.sanroot:disk0",
        ]
    );
}

#[test]
fn exit_codes() {
    let d = tmpdir("exit");
    // 3: nothing anywhere.
    let out = sanroot(&["ibft", "--sysroot", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no iBFT found"), "{err}");
    assert!(
        err.contains("acpi:") && err.contains("mem:") && err.contains("sysfs:"),
        "says what it tried: {err}"
    );
    // 4: a broken table, with the field and offset.
    let mut b = bytes(&simple());
    b[9] ^= 0x55;
    let f = d.join("bad.bin");
    write(&f, &b);
    let out = sanroot(&["ibft", "--file", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum at byte 0x9"), "{err}");
    // ... readable with --ignore-checksum.
    let out = sanroot(&["ibft", "--file", f.to_str().unwrap(), "--ignore-checksum"]);
    assert_eq!(out.status.code(), Some(0));
    // 0 with a partly bad table, 4 with --strict.
    let mut t = table(vec![nic(0), nic(1)], vec![target(0), target(1)]);
    t.targets[1].ip = None;
    let f = d.join("partial.bin");
    write(&f, &bytes(&t));
    let out = sanroot(&["ibft", "--file", f.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("target1.ip"), "{err}");
    assert!(err.contains("the rest was used"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["targets"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(v["problems"][0]["severity"], "error");
    assert_eq!(v["problems"][0]["field"], "ip");
    let out = sanroot(&["ibft", "--file", f.to_str().unwrap(), "--strict"]);
    assert_eq!(out.status.code(), Some(4));
    // 2: usage.
    assert_eq!(
        sanroot(&["ibft", "--source", "floppy"]).status.code(),
        Some(2)
    );
}

#[test]
fn acpi_names_in_order() {
    let d = tmpdir("acpi");
    let mut t = simple();
    t.header = header(sanroot::ibft::Signature::Bift);
    write(&d.join("sys/firmware/acpi/tables/BIFT"), &bytes(&t));
    let v = json(&sanroot(&[
        "ibft",
        "--sysroot",
        d.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["source"], "acpi");
    assert!(
        v["source_detail"]
            .as_str()
            .unwrap()
            .ends_with("tables/BIFT")
    );
    assert_eq!(v["header"]["signature"], "BIFT");
    // iBFT wins over BIFT.
    write(
        &d.join("sys/firmware/acpi/tables/iBFT"),
        &emit(&simple(), Layout::Edk2),
    );
    let v = json(&sanroot(&[
        "ibft",
        "--sysroot",
        d.to_str().unwrap(),
        "--json",
    ]));
    assert!(
        v["source_detail"]
            .as_str()
            .unwrap()
            .ends_with("tables/iBFT")
    );
    assert_eq!(v["header"]["length"], 2048);
}

/// A fake /dev/mem: 1 MiB, a decoy "iBFT" string (as in iPXE's own code)
/// before the real table at 0x9e620, as seen under QEMU.
#[test]
fn memory_scan_skips_decoys() {
    let d = tmpdir("mem");
    let mut mem = vec![0u8; 0x100000];
    mem[0x90000..0x90004].copy_from_slice(b"iBFT");
    mem[0x90004..0x90008].copy_from_slice(&0x300u32.to_le_bytes());
    let table = chap_table();
    mem[0x9e620..0x9e620 + table.len()].copy_from_slice(&table);
    // A copy in the VGA hole must be ignored.
    mem[0xa1000..0xa1000 + table.len()].copy_from_slice(&table);
    write(&d.join("dev/mem"), &mem);
    let v = json(&sanroot(&[
        "ibft",
        "--sysroot",
        d.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["source"], "mem");
    assert_eq!(v["source_detail"], "0x9e620");
    assert_eq!(v["targets"][0]["chap"], "mutual");

    // Only the VGA-hole copy: not found.
    mem[0x9e620..0x9e620 + table.len()].fill(0);
    write(&d.join("dev/mem"), &mem);
    let out = sanroot(&["ibft", "--sysroot", d.to_str().unwrap(), "--source", "mem"]);
    assert_eq!(out.status.code(), Some(3));
    // Above the hole it is found again.
    mem[0xc8000..0xc8000 + table.len()].copy_from_slice(&table);
    write(&d.join("dev/mem"), &mem);
    let v = json(&sanroot(&[
        "ibft",
        "--sysroot",
        d.to_str().unwrap(),
        "--json",
        "--source",
        "mem",
    ]));
    assert_eq!(v["source_detail"], "0xc8000");
    // A real table with a broken checksum is reported as broken (exit 4)
    // with its address, not as "not found".
    mem[0xc8009] ^= 0x11;
    write(&d.join("dev/mem"), &mem);
    let out = sanroot(&["ibft", "--sysroot", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checksum") && err.contains("mem 0xc8000"),
        "{err}"
    );
}

#[test]
fn sysfs_view_as_last_resort() {
    let d = tmpdir("sysfs");
    let base = d.join("sys/firmware/ibft");
    let files: &[(&str, &str)] = &[
        (
            "initiator/initiator-name",
            "iqn.2026-11.org.sanroot:sysfs\n",
        ),
        ("initiator/index", "0\n"),
        ("initiator/flags", "3\n"),
        ("ethernet0/index", "0\n"),
        ("ethernet0/flags", "3\n"),
        ("ethernet0/ip-addr", "10.0.2.15\n"),
        ("ethernet0/prefix-len", "24\n"),
        ("ethernet0/subnet-mask", "255.255.255.0\n"),
        ("ethernet0/origin", "3\n"),
        ("ethernet0/gateway", "10.0.2.2\n"),
        ("ethernet0/primary-dns", "10.0.2.3\n"),
        ("ethernet0/dhcp", "10.0.2.2\n"),
        ("ethernet0/vlan", "0\n"),
        ("ethernet0/mac", "52:54:00:12:34:56\n"),
        ("target0/index", "0\n"),
        ("target0/flags", "3\n"),
        ("target0/ip-addr", "10.0.2.2\n"),
        ("target0/port", "3260\n"),
        ("target0/lun", "01000000\n"),
        ("target0/nic-assoc", "0\n"),
        ("target0/target-name", "iqn.2026-11.org.sanroot:disk\n"),
        ("target0/chap-type", "1\n"),
        ("target0/chap-name", "alice\n"),
        ("target0/chap-secret", "alice-secret-12\n"),
        ("acpi_header/signature", "iBFT\n"),
        ("acpi_header/oem_id", "FENSYS\n"),
        ("acpi_header/oem_table_id", "iPXE\n"),
    ];
    for (p, v) in files {
        write(&base.join(p), v.as_bytes());
    }
    let v = json(&sanroot(&[
        "ibft",
        "--sysroot",
        d.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["source"], "sysfs");
    assert_eq!(v["initiator"]["name"], "iqn.2026-11.org.sanroot:sysfs");
    assert_eq!(v["nics"][0]["ip"], "10.0.2.15");
    assert_eq!(v["nics"][0]["origin"], "dhcp");
    assert_eq!(v["targets"][0]["lun"], 1);
    assert_eq!(v["targets"][0]["chap"], "chap");
    assert_eq!(v["targets"][0]["chap_secret"], "<hidden>");
    assert_eq!(v["targets"][0]["boot"], true);
    assert_eq!(v["header"]["oem_id"], "FENSYS");
    let lost: Vec<String> = serde_json::from_value(v["lost_fields"].clone()).unwrap();
    assert!(lost.iter().any(|l| l == "header.checksum"), "{lost:?}");
    assert!(lost.iter().any(|l| l == "nics[0].pci"), "{lost:?}");
    // The human form says what is lost.
    let out = sanroot(&["ibft", "--sysroot", d.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not available from this source"));
    // The raw table wins over sysfs when both exist.
    write(&d.join("sys/firmware/acpi/tables/iBFT"), &bytes(&simple()));
    let v = json(&sanroot(&[
        "ibft",
        "--sysroot",
        d.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["source"], "acpi");
    // ... unless sysfs is asked for.
    let v = json(&sanroot(&[
        "ibft",
        "--sysroot",
        d.to_str().unwrap(),
        "--json",
        "--source",
        "sysfs",
    ]));
    assert_eq!(v["source"], "sysfs");
}
