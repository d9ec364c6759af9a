//! qemu/vlan-switch, the 802.1Q access port the VLAN boots of
//! `sanboot_e2e.rs` go through (issue 18), checked alone: its self-test
//! plays QEMU's part over UDP and checks tagged ARP, ICMP, TCP and IPv6
//! neighbour discovery both ways, and that untagged frames, other VLANs
//! and QinQ are dropped and counted. Needs root (a network namespace and a
//! TAP device), like every QEMU test here.

use std::process::Command;

#[path = "support/guest.rs"]
mod guest;
use guest::{repo, tail};

#[test]
fn vlan_switch_selftest() {
    for vid in ["100", "4093"] {
        let out = Command::new(repo().join("qemu/vlan-switch-selftest"))
            .arg(vid)
            .output()
            .expect("run qemu/vlan-switch-selftest");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let passes = stdout.lines().filter(|l| l.starts_with("PASS:")).count();
        eprintln!("vlan-switch selftest, VLAN {vid}: {passes} checks passed");
        assert!(
            out.status.success()
                && !stdout.contains("FAIL")
                && stdout.contains(&format!("PASS: vlan-switch selftest (VID {vid})")),
            "qemu/vlan-switch-selftest {vid}: {}\n{}\n{}",
            out.status,
            tail(&stdout, 40),
            tail(&stderr, 20)
        );
    }
}
