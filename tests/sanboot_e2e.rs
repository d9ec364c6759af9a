//! Root on iSCSI, end to end (issue 6): QEMU (TCG) boots through Debian's
//! iPXE from a private copy of the disk built by qemu/make-root-image
//! (Debian 12, systemd, NetworkManager, open-iscsi, dracut with
//! dracut/90sanroot), served by a private tgtd on the host. The initramfs
//! runs `sanroot boot`; the real root reaches multi-user, its check service
//! reports over a second serial port, writes a per-boot token and powers
//! off. qemu/sanboot drives one boot and prints key=value results; each test
//! here is one boot and asserts on them:
//!
//! - sanroot logged in: its `root disk … is ready` line is on the console;
//! - sessions on the target (tgtd's I_T nexuses, sampled every 0.25 s and
//!   at the two checkpoints): iPXE's, present when Linux starts (BIOS;
//!   UEFI iPXE closes it at ExitBootServices), and exactly
//!   one more, sanroot's, right after its ready line; the same one is still
//!   there once multi-user is reached with NetworkManager, iscsid and
//!   open-iscsi started; no other session at any time from Linux's start
//!   to power-off, never more than 2, all with the iBFT's initiator name;
//! - no second login (issue 13): the root carries an installer's automatic
//!   open-iscsi node records of the boot target and of an unrelated target
//!   (qemu/sanboot writes them); the kernel's initiator logs in to the
//!   unrelated one only, the boot target's records are hidden, a login by
//!   hand finds none, and one block device alone has the root's UUID. (iPXE's session itself may
//!   end: QEMU's user network retransmits iPXE's last unacknowledged
//!   segment, and Linux, which owns the address by then, resets the
//!   connection. The test prints a note when the count is 1 for that
//!   reason.)
//! - `/` is partition 1 of the device sanroot printed, with the image's
//!   UUID, mounted rw; the token the guest wrote is in the backing file once
//!   the machine is off (debugfs on the host);
//! - the boot NIC's IPv4 addresses and routes are the same before and after
//!   NetworkManager started, and are the iBFT's;
//! - `sanroot status` in the real root lists the device; the '@sanroot'
//!   daemon is still there before power-off;
//! - no I/O or ext4 errors in the kernel log (guest dmesg and the console);
//! - the guest powered off by itself (QEMU exited) and the file system is
//!   clean (e2fsck -fn of the backing file, no journal left to replay);
//! - at power-off (issue 5) systemd remounted / read-only, went back to the
//!   initramfs, which unmounted the old root, and then sanroot's shutdown
//!   hook flushed, logged out and removed the device (its line on the
//!   console), with nothing reported as failed on the way; sanroot's
//!   session was gone from the target while QEMU still ran (so not merely
//!   closed by QEMU's exit), and is not there afterwards;
//! - no CHAP secret anywhere but in the kernel's echo of its command line
//!   (the console, everything the guest reported).
//!
//! One boot has no iPXE and no iBFT: QEMU loads the kernel and initramfs,
//! and dracut's `netroot=iscsi:USER:SECRET@…`, `ip=` and
//! `rd.iscsi.initiator=` describe the root (issue 6).
//!
//! One boot has two paths to the root (issue 15): iPXE `sanboot` with two
//! URIs for the same LUN puts two targets in the iBFT; one portal is dead
//! at boot and comes up later, the other is cut once the first has
//! rejoined, while the guest keeps writing to the root (qemu/sanboot
//! --two-paths; `bios_sanboot_two_paths_one_dead_one_cut` says what is
//! checked).
//!
//! Two boots use the sanroot-only initramfs (initramfs/sanroot-mkinitramfs,
//! sanroot as /init): a BIOS sanboot through GRUB, and a direct boot from
//! netroot=. They also check /init's and its shutdown program's console
//! lines, the boot NIC's udev name without udev, and that no netroot=
//! reaches the real init's environment.
//!
//! QEMU runs with `-action shutdown=pause`: at the power-off it stops with
//! its TCP connections open, the target's sessions are sampled (sanroot's
//! must be gone: logged out, not closed), and then QEMU is ended.
//!
//! The boots spread firmware, authentication, bridge and initramfs flavour
//! instead of multiplying them. Needs root and what `qemu/install-deps`
//! installs; the first run builds the image (cached under
//! /var/cache/sanroot, or `$SANROOT_IMAGE_CACHE`, see qemu/make-root-image). The console log and the
//! results of each boot are kept as target/sanboot-NAME.log and .results.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[path = "support/guest.rs"]
mod guest;
use guest::{repo, results, static_bin, tail};

/// What one boot should look like.
struct Expect {
    /// "ublk" or "nbd": the device sanroot must have used.
    bridge: &'static str,
    /// The initramfs ran systemd.
    systemd_initrd: bool,
    /// GRUB was read from the LUN (iPXE sanboot).
    grub: bool,
    /// How many sessions of iPXE's own (at least, at most) are on the
    /// target when Linux starts: BIOS iPXE leaves its session behind; UEFI
    /// iPXE closes its connections when the kernel calls
    /// ExitBootServices, but tgtd may not have seen the close yet (under
    /// load it was seen only at power-off once); no iPXE, none.
    ipxe_sessions_at_kernel: (usize, usize),
    /// The root is described by the firmware's iBFT (rd.iscsi.firmware);
    /// otherwise by dracut's netroot=/ip= on the kernel command line.
    ibft: bool,
    /// The initramfs is sanroot alone (initramfs/sanroot-mkinitramfs):
    /// its /init ran and left for the real root.
    sanroot_init: bool,
    /// The initramfs is Debian's initramfs-tools with sanroot's hook and
    /// scripts (initramfs-tools/), asked by open-iscsi's `iscsi_auto`
    /// instead of rd.iscsi.firmware; its power-off goes to the copy of
    /// sanroot at /run/initramfs/shutdown, as with sanroot's /init.
    initramfs_tools: bool,
    /// The boot NIC's name in the real root, where it is known: on QEMU's
    /// pc machine (the BIOS boots; UEFI runs q35) udev calls the virtio NIC
    /// in slot 3 "ens3", and sanroot's /init, which has no udev, must give
    /// it the same name.
    nic_name: Option<&'static str>,
    /// The real root's ifupdown is given the boot NIC (`allow-hotplug` and
    /// `auto`, DHCP, as debian-installer writes it; the kernel argument
    /// `sanroot_check.ifupdown`): neither networking.service nor udev's
    /// ifup@ens3.service may touch it, at boot or at shutdown.
    ifupdown: bool,
    /// The root's network (issue 18).
    net: Net,
    /// The real root runs systemd-networkd instead of NetworkManager
    /// (issue 17; kernel arguments `systemd.mask=NetworkManager.service
    /// systemd.wants=systemd-networkd.service sanroot_check.networkd`).
    networkd: bool,
}

/// How the guest reaches its root (qemu/sanboot --ipv6, --vlan).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Net {
    /// IPv4 on QEMU's user network.
    V4,
    /// IPv6 only (QEMU's user network without IPv4).
    V6,
    /// IPv4 on this 802.1Q VLAN only (qemu/vlan-switch).
    Vlan(u16),
}

/// One run of qemu/sanboot.
struct Boot {
    name: String,
    r: BTreeMap<String, String>,
    stderr: String,
    log: PathBuf,
}

fn run(name: &str, args: &[&str]) -> Boot {
    run_env(name, args, &[])
}

/// One run of qemu/sanboot with more environment (e.g. its time limits).
fn run_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Boot {
    let log = repo().join(format!("target/sanboot-{name}.log"));
    let _ = std::fs::remove_file(&log);
    let out = Command::new(repo().join("qemu/sanboot"))
        .args(args)
        .env("SANROOT_BIN", static_bin())
        .env("SR_SANBOOT_LOG", &log)
        .envs(env.iter().copied())
        .output()
        .expect("run qemu/sanboot (install the tools with `sudo qemu/install-deps`)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::write(
        repo().join(format!("target/sanboot-{name}.results")),
        &out.stdout,
    );
    let r = results(&out.stdout);
    if !r.contains_key("boot.seconds") {
        panic!(
            "qemu/sanboot {args:?} failed before booting ({}):\n{}",
            out.status,
            tail(&stderr, 60)
        );
    }
    eprintln!(
        "sanboot {name}: QEMU ran {} s (image {} s, copy {} s), exit {}; log {}",
        r.get("boot.seconds").map(String::as_str).unwrap_or("?"),
        r.get("boot.image_seconds")
            .map(String::as_str)
            .unwrap_or("?"),
        r.get("boot.copy_seconds")
            .map(String::as_str)
            .unwrap_or("?"),
        out.status,
        log.display()
    );
    Boot {
        name: name.to_string(),
        r,
        stderr,
        log,
    }
}

impl Boot {
    fn fail(&self, msg: &str) -> ! {
        let console = std::fs::read_to_string(&self.log)
            .map(|s| s.replace('\r', ""))
            .unwrap_or_else(|e| format!("(no console log {}: {e})", self.log.display()));
        let guest: Vec<String> = self
            .r
            .iter()
            .filter(|(k, _)| !k.starts_with("guest.addr") && !k.starts_with("guest.route"))
            .map(|(k, v)| format!("{k}={}", v.chars().take(300).collect::<String>()))
            .collect();
        panic!(
            "sanboot {}: {msg}\n---- results ----\n{}\n---- qemu/sanboot (stderr, tail) ----\n{}\n---- console (tail; whole log {}) ----\n{}",
            self.name,
            guest.join("\n"),
            tail(&self.stderr, 30),
            self.log.display(),
            tail(&console, 80)
        )
    }

    /// tgtd's I_T nexus ids in a sessions result ("NAME#ID+NAME#ID", or
    /// comma-separated).
    fn ids(&self, k: &str) -> Vec<String> {
        self.get(k)
            .split(['+', ','])
            .filter(|s| !s.is_empty())
            .map(|s| s.rsplit('#').next().unwrap_or("").to_string())
            .collect()
    }

    fn get(&self, k: &str) -> &str {
        match self.r.get(k) {
            Some(v) => v,
            None => self.fail(&format!("no result {k}")),
        }
    }

    fn eq(&self, k: &str, want: &str, what: &str) {
        let got = self.get(k);
        if got != want {
            self.fail(&format!("{what}: {k} is {got:?}, expected {want:?}"));
        }
    }

    fn check(&self, ok: bool, msg: &str) {
        if !ok {
            self.fail(msg);
        }
    }

    fn json(&self, k: &str) -> Value {
        let v = self.get(k);
        serde_json::from_str(v)
            .unwrap_or_else(|e| self.fail(&format!("{k} is not JSON ({e}): {v:.300}")))
    }
}

/// The boot NIC (the one with the MAC QEMU gave it) in `ip -j addr`.
fn nic<'a>(addrs: &'a Value, mac: &str) -> Option<&'a Value> {
    addrs
        .as_array()?
        .iter()
        .find(|l| l["address"].as_str() == Some(mac))
}

/// The link called `name` in `ip -j addr`.
fn link<'a>(addrs: &'a Value, name: &str) -> Option<&'a Value> {
    addrs
        .as_array()?
        .iter()
        .find(|l| l["ifname"].as_str() == Some(name))
}

/// Every address of the link, "ADDR/PREFIX", dynamic ones marked, for
/// the log.
fn addr_list(link: &Value) -> String {
    link["addr_info"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|x| {
            let dynamic = x["dynamic"].as_bool().unwrap_or(false);
            format!(
                "{}/{}{}",
                x["local"].as_str().unwrap_or(""),
                x["prefixlen"],
                if dynamic { " (dynamic)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The link's addresses of the boot's family: (address, prefix, valid
/// lifetime, dynamic). IPv4: all of them. IPv6: the static global ones,
/// not the link-local one nor those a router advertisement made (QEMU's
/// user network sends them; the kernel adds its SLAAC address).
fn addrs(link: &Value, net: Net) -> Vec<(String, u64, String, bool)> {
    let v6 = net == Net::V6;
    let mut v: Vec<_> = link["addr_info"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter(|a| {
            if v6 {
                a["family"] == "inet6"
                    && a["scope"] == "global"
                    && !a["dynamic"].as_bool().unwrap_or(false)
            } else {
                a["family"] == "inet"
            }
        })
        .map(|a| {
            (
                a["local"].as_str().unwrap_or("").to_string(),
                a["prefixlen"].as_u64().unwrap_or(0),
                a["valid_life_time"].to_string(),
                a["dynamic"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    v.sort();
    v
}

/// The routes through DEV, without volatile fields.
fn routes(rs: &Value, dev: &str) -> Vec<String> {
    let mut v: Vec<String> = rs
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter(|r| r["dev"].as_str() == Some(dev))
        .map(|r| {
            format!(
                "table={} type={} dst={} gw={} proto={} scope={} src={} metric={}",
                r["table"],
                r["type"],
                r["dst"],
                r["gateway"],
                r["protocol"],
                r["scope"],
                r["prefsrc"],
                r["metric"]
            )
        })
        .collect();
    v.sort();
    v
}

/// The boot ran to its end by itself: the guest's check service finished.
fn ran_to_its_end(b: &Boot) {
    if b.r.get("guest_done").map(String::as_str) != Some("1") {
        let why =
            b.r.get("fatal")
                .map(|f| format!("fatal console line: {f}"))
                .unwrap_or_else(|| "it did not finish".into());
        b.fail(&format!(
            "the guest's check service did not run to its end ({why})"
        ));
    }
}

fn assert_boot(b: &Boot, e: Expect) {
    ran_to_its_end(b);
    b.check(
        b.r.contains_key("event.poweroff.t"),
        "no 'reboot: Power down' on the console: the guest did not power off cleanly",
    );
    b.eq(
        "boot.qemu_rc",
        "0",
        "QEMU exits by itself after the power-off",
    );
    if e.grub {
        b.check(
            b.r.contains_key("event.grub.t"),
            "GRUB's line is not on the console: GRUB was not read from the LUN",
        );
    }

    // sanroot logged in and said so.
    b.check(
        b.r.contains_key("event.sanroot_ready.t"),
        "no 'sanroot[PID]: root disk … is ready' line on the console",
    );
    let dev = b.get("ready_dev").to_string();
    let prefix = match e.bridge {
        "nbd" => "/dev/nbd",
        _ => "/dev/ublkb",
    };
    b.check(
        dev.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())),
        &format!("sanroot's device is {dev:?}, expected {prefix}N"),
    );

    // Sessions, by tgtd's I_T nexus id. iPXE's session (the one present
    // when Linux starts) stays unless its TCP connection gets reset (see
    // `sessions`); sanroot adds exactly one, and that same one is there
    // until power-off: nobody logs in again or reinstates it.
    let ids = |k: &str| b.ids(k);
    let ipxe = ids("event.kernel.nexus");
    let (lo, hi) = e.ipxe_sessions_at_kernel;
    b.check(
        (lo..=hi).contains(&ipxe.len()),
        &format!("{lo} to {hi} session(s) (iPXE's) when Linux starts: {ipxe:?}"),
    );
    let ours_at =
        |k: &str| -> Vec<String> { ids(k).into_iter().filter(|i| !ipxe.contains(i)).collect() };
    let ours = ours_at("initiators_at_ready");
    b.check(
        ours.len() == 1,
        &format!(
            "exactly one session besides iPXE's ({ipxe:?}) right after sanroot's ready line: {ours:?}"
        ),
    );
    b.check(
        ours_at("initiators_at_check") == ours,
        &format!(
            "once multi-user is reached and NetworkManager, iscsid, open-iscsi have started, sanroot's session {ours:?} is still the only one besides iPXE's: {:?}",
            ids("initiators_at_check")
        ),
    );
    let mut all = ids("nexus_since_kernel");
    all.sort();
    let mut want = ipxe.clone();
    want.push(ours[0].clone());
    want.sort();
    // A second login typed by hand (sanroot_check.second_login, after the
    // check point): exactly one more session, the kernel initiator's,
    // logged out again before power-off (nexus_last_alive).
    let by_hand = second_login_by_hand(b);
    let extra: Vec<String> = all.iter().filter(|i| !want.contains(i)).cloned().collect();
    b.check(
        want.iter().all(|i| all.contains(i)) && extra.len() == usize::from(by_hand),
        &format!("the sessions the target saw from Linux's start to power-off are iPXE's and sanroot's only{}: {all:?} (timeline {})", if by_hand { ", and the one logged in by hand" } else { "" }, b.get("sessions_timeline")),
    );
    b.check(
        !ids("nexus_last_alive").iter().any(|i| extra.contains(i)),
        &format!(
            "the session logged in by hand {extra:?} was logged out before power-off: {}",
            b.get("nexus_last_alive")
        ),
    );
    let max: u32 = b.get("sessions_max").parse().unwrap_or(99);
    let most = if by_hand { 3 } else { 2 };
    b.check(
        max <= most,
        &format!("at most {most} sessions at any time, saw {max}"),
    );
    for (k, n) in [
        ("sessions_at_ready", "initiators_at_ready"),
        ("sessions_at_check", "initiators_at_check"),
    ] {
        let c = b.get(k);
        if !ipxe.is_empty() && c != "2" {
            eprintln!(
                "sanboot {}: note: {k}={c} ({}): iPXE's session is gone; its TCP connection was reset (QEMU's user network retransmits iPXE's last unacknowledged segment, and Linux, owning the address now, answers with RST)",
                b.name,
                b.get(n)
            );
        }
    }
    let initiator = b.get("boot.initiator").to_string();
    for k in ["initiators_at_ready", "initiators_at_check"] {
        let names: Vec<&str> = b
            .get(k)
            .split(',')
            .map(|n| n.split('#').next().unwrap_or(""))
            .collect();
        b.check(
            names.iter().all(|n| *n == initiator),
            &format!("{k}: the sessions carry the boot's initiator name {initiator}: {names:?}"),
        );
    }
    assert_no_second_login(b, &dev);
    if by_hand {
        assert_second_login_by_hand(b, &dev);
    }
    assert_logout(b, &ours[0]);

    // The real root came up whole, with the incumbent's daemons running.
    b.eq(
        "guest.system_state",
        "running",
        "systemctl is-system-running in the real root",
    );
    b.eq("guest.failed_units", "", "failed units in the real root");
    b.eq(
        "guest.iscsid_active",
        "active",
        "iscsid started (and found nothing to take over)",
    );
    if e.networkd {
        b.eq(
            "guest.nm_active",
            "inactive",
            "NetworkManager is masked on this boot (systemd-networkd instead)",
        );
    } else {
        b.eq("guest.nm_active", "active", "NetworkManager started");
    }
    assert_ifupdown(b, e.ifupdown);

    // The root is the LUN, writable, and what was written reached the target.
    b.eq(
        "guest.root_source",
        &format!("{dev}p1"),
        "findmnt /: partition 1 of sanroot's device",
    );
    b.eq(
        "guest.root_uuid",
        b.get("boot.root_uuid"),
        "the root file system's UUID",
    );
    b.check(
        b.get("guest.root_options").split(',').any(|o| o == "rw"),
        &format!("/ is mounted read-write: {}", b.get("guest.root_options")),
    );
    b.eq("guest.token_write_rc", "0", "writing the token to the root");
    b.eq("guest.sync_rc", "0", "sync");
    b.eq(
        "host.token_found",
        b.get("host.token_expected"),
        "the per-boot token, read from the target's backing file after power-off",
    );

    // sanroot itself in the real root.
    b.eq("guest.status_rc", "0", "sanroot status in the real root");
    b.check(
        b.get("guest.status").contains(&dev),
        &format!("sanroot status lists {dev}: {}", b.get("guest.status")),
    );
    // Whichever initramfs booted, power-off will come back to one that
    // logs out, and status says so (issue 17).
    b.check(
        b.get("guest.status")
            .contains("power-off: logs the root's session out"),
        &format!(
            "sanroot status says power-off logs the root's session out: {}",
            b.get("guest.status")
        ),
    );
    b.check(
        !b.get("guest.daemons").is_empty() && !b.get("guest.daemons_end").is_empty(),
        "the resident '@sanroot' daemon is running in the real root",
    );

    // The boot NIC as the initramfs left it: NetworkManager changed nothing,
    // and it is what the iBFT says.
    let mac = b.get("boot.mac").to_string();
    let before = b.json("guest.addr_before");
    let after = b.json("guest.addr_after");
    let (Some(pb), Some(pa)) = (nic(&before, &mac), nic(&after, &mac)) else {
        b.fail(&format!(
            "no interface with MAC {mac} before/after NetworkManager"
        ))
    };
    let nic_if = pa["ifname"].as_str().unwrap_or("").to_string();
    b.check(pb["ifname"] == pa["ifname"], "the boot NIC kept its name");
    if let Some(want) = e.nic_name {
        b.check(
            nic_if == want,
            &format!("the boot NIC is called {want} in the real root, as udev names it: {nic_if}"),
        );
    }
    // The interface with the address: the NIC, or its VLAN (which has the
    // same MAC), named as udev's VLAN convention has it.
    let (nb, na, ifname) = match e.net {
        Net::Vlan(vid) => {
            let name = format!("{nic_if}.{vid}");
            let (Some(vb), Some(va)) = (link(&before, &name), link(&after, &name)) else {
                b.fail(&format!(
                    "no VLAN interface {name} before/after NetworkManager"
                ))
            };
            (vb, va, name)
        }
        Net::V4 | Net::V6 => (pb, pa, nic_if.clone()),
    };
    let family = if e.net == Net::V6 { "IPv6" } else { "IPv4" };
    let (a4b, a4a) = (addrs(nb, e.net), addrs(na, e.net));
    b.check(
        !a4a.is_empty(),
        &format!("the boot interface {ifname} has an {family} address"),
    );
    b.check(
        a4b == a4a,
        &format!(
            "the boot interface's {family} addresses changed when NetworkManager started: {a4b:?} -> {a4a:?}"
        ),
    );
    let (route_before, route_after) = if e.net == Net::V6 {
        ("guest.route6_before", "guest.route6_after")
    } else {
        ("guest.route_before", "guest.route_after")
    };
    let (rb, ra) = (
        routes(&b.json(route_before), &ifname),
        routes(&b.json(route_after), &ifname),
    );
    // Assumed by NetworkManager (rd.sanroot.nm=native), the NIC gets its
    // profile's routes too (NetworkManager's metric and protocol) beside
    // the boot's: every route of the boot's is still there (same table,
    // destination, gateway). Left alone, nothing changes at all.
    let kept = if nm_connected(b) {
        let ka: Vec<String> = ra.iter().map(|r| route_key(r)).collect();
        rb.iter().all(|r| ka.contains(&route_key(r)))
    } else {
        rb == ra
    };
    b.check(
        kept,
        &format!(
            "the boot interface's {family} routes changed when NetworkManager started:\nbefore {rb:#?}\nafter {ra:#?}"
        ),
    );
    if e.networkd {
        assert_networkd(b, &ifname);
    } else {
        assert_nm(b, &e);
    }
    // What the NIC should have: the iBFT's address, or ip='s.
    let (want, gw, from) = if e.ibft {
        b.eq("guest.ibft_rc", "0", "sanroot ibft --json in the real root");
        let ibft = b.json("guest.ibft");
        let inic = ibft["nics"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["mac"].as_str() == Some(mac.as_str())))
            .unwrap_or_else(|| b.fail("the iBFT has no NIC with the boot MAC"));
        (
            (
                inic["ip"].as_str().unwrap_or("").to_string(),
                inic["prefix_len"].as_u64().unwrap_or(0),
            ),
            inic["gateway"].as_str().map(str::to_string),
            "the iBFT",
        )
    } else {
        let ip = b.get("boot.guest_ip");
        let (a, p) = ip.split_once('/').unwrap_or((ip, ""));
        (
            (a.to_string(), p.parse().unwrap_or(0)),
            Some(b.get("boot.guest_gateway").to_string()),
            "ip=",
        )
    };
    b.check(
        a4a.iter().any(|(ip, p, _, _)| (ip.clone(), *p) == want),
        &format!("the boot NIC has {from}'s address {want:?}: {a4a:?}"),
    );
    if let Some(gw) = gw {
        b.check(
            ra.iter()
                .any(|r| r.contains("dst=\"default\"") && r.contains(&format!("gw=\"{gw}\""))),
            &format!("a default route via {from}'s gateway {gw}: {ra:#?}"),
        );
    }
    assert_net(b, &e, &ifname, &nic_if);
    // The record says where the description came from, without secrets.
    let source = b.json("guest.boot_json")["source"]
        .as_str()
        .unwrap_or("")
        .to_string();
    b.check(
        source.starts_with(if e.ibft { "ibft" } else { "cmdline" }),
        &format!("the hand-off's source: {source}"),
    );
    b.eq(
        "host.secret_leaks",
        "0",
        &format!(
            "CHAP secrets outside the kernel's echo of its command line (in: {})",
            b.get("host.secret_leak_where")
        ),
    );

    // No I/O errors anywhere; the file system is clean on the host.
    b.eq(
        "guest.kmsg_errors",
        "0",
        "I/O / ext4 errors in the kernel log at multi-user",
    );
    b.eq(
        "guest.kmsg_errors_end",
        "0",
        "I/O / ext4 errors in the kernel log before power-off",
    );
    b.eq(
        "host.console_io_errors",
        "0",
        "I/O / ext4 errors on the console (whole boot and shutdown)",
    );
    b.eq(
        "host.fsck_rc",
        "0",
        "e2fsck -fn of the root partition in the backing file after power-off",
    );
    b.eq(
        "host.fs_state",
        "clean",
        "the superblock says clean after power-off",
    );
    b.check(
        !b.get("host.fs_features").contains("needs_recovery"),
        "the journal needs no recovery after power-off",
    );

    // netroot= (with its CHAP secret) is not in the real init's environment
    // when sanroot's /init handed over, nor open-iscsi's iscsi_*= after
    // initramfs-tools with sanroot's scripts; with dracut it is the initramfs's
    // systemd that decides, reported only.
    let env_iscsi = b.get("guest.init_env_iscsi");
    if e.sanroot_init || e.initramfs_tools {
        b.eq(
            "guest.init_env_iscsi",
            "0",
            "netroot=/iscsi_* variables in the real init's environment (/proc/1/environ)",
        );
    } else if env_iscsi != "0" {
        eprintln!(
            "sanboot {}: note: the real root's PID 1 has {env_iscsi} netroot=/iscsi_* variable(s) in its environment (dracut)",
            b.name
        );
    }

    // The initramfs flavour.
    let console = std::fs::read_to_string(&b.log).unwrap_or_default();
    for (line, what) in [
        (
            "sanroot[1]: init: sanroot ",
            "sanroot's /init started as PID 1",
        ),
        (
            "sanroot[1]: init: root ",
            "sanroot's /init mounted the root and left",
        ),
    ] {
        b.check(
            console.contains(line) == e.sanroot_init,
            &format!(
                "{what}: {} expected on the console",
                if e.sanroot_init {
                    "its line is"
                } else {
                    "no such line"
                }
            ),
        );
    }
    let own_shutdown = e.sanroot_init || e.initramfs_tools;
    b.check(
        console.contains("sanroot-shutdown: Unmounted /oldroot") == own_shutdown,
        &format!(
            "power-off came back to sanroot's own shutdown program: {} expected on the console",
            if own_shutdown {
                "its line is"
            } else {
                "no such line"
            }
        ),
    );
    let analyze = b.get("guest.analyze");
    b.check(
        analyze.contains("(initrd)") == e.systemd_initrd,
        &format!(
            "systemd-analyze {} an initrd phase: {analyze}",
            if e.systemd_initrd {
                "shows"
            } else {
                "does not show"
            }
        ),
    );
    let cmdline = b.get("guest.cmdline");
    if e.ibft {
        let word = if e.initramfs_tools {
            "iscsi_auto"
        } else {
            "rd.iscsi.firmware"
        };
        b.check(
            cmdline.split_whitespace().any(|w| w == word),
            &format!(
                "the kernel command line asks for the firmware's iSCSI root with {word}: {cmdline}"
            ),
        );
    } else if e.initramfs_tools {
        b.check(
            cmdline.contains("iscsi_target_name=")
                && !cmdline.contains("netroot=")
                && !cmdline.contains("rd.iscsi.firmware")
                && !cmdline.split_whitespace().any(|w| w == "iscsi_auto"),
            &format!("the kernel command line describes the root with open-iscsi's iscsi_target_* words only: {cmdline}"),
        );
    } else {
        b.check(
            cmdline.contains("netroot=iscsi:") && !cmdline.contains("rd.iscsi.firmware"),
            &format!("the kernel command line describes the root with netroot= only: {cmdline}"),
        );
    }
}

/// What issue 18 adds for the IPv6 and VLAN boots (and checks of every
/// boot that hold for all): `sanroot ibft --netroot` in the real root
/// gives dracut's words for the firmware's table (or says there is none),
/// the hand-off's record and files name the interface with the address
/// (for a VLAN, and its parent), NetworkManager leaves both alone, and on
/// a VLAN the switch saw the guest's tagged traffic and no IPv4 outside
/// the VLAN (nothing configured the parent).
fn assert_net(b: &Boot, e: &Expect, ifname: &str, nic_if: &str) {
    let rec = b.json("guest.boot_json");
    let rnic = &rec["nic"];
    b.check(
        rnic["ifname"].as_str() == Some(ifname),
        &format!("boot.json's NIC is {ifname}: {rnic}"),
    );
    let netroot = b.get("guest.ibft_netroot");
    let port = b
        .get("boot.portal")
        .rsplit(':')
        .next()
        .unwrap_or("")
        .to_string();
    let target = b.get("boot.target").to_string();
    if e.ibft {
        b.eq("guest.ibft_netroot_rc", "0", "sanroot ibft --netroot");
        let portal = match e.net {
            Net::V4 => None,
            Net::V6 => Some("[fd00::2]"),
            Net::Vlan(_) => Some("192.168.100.1"),
        };
        if let Some(portal) = portal {
            b.check(
                netroot.contains(&format!("{portal}::{port}:1:{target}")),
                &format!("sanroot ibft --netroot gives netroot=iscsi:…{portal}::{port}:1:{target}: {netroot}"),
            );
        }
        let want = match e.net {
            Net::V4 => vec![],
            Net::V6 => vec![
                "ip=[fd00::15]::[fd00::2]:64:sanroot-guest:ibft0:none".to_string(),
                "nameserver=fd00::3".to_string(),
            ],
            Net::Vlan(vid) => vec![
                format!("vlan=ibft0.{vid}:ibft0"),
                format!(
                    "ip=192.168.100.15::192.168.100.1:255.255.255.0:sanroot-guest:ibft0.{vid}:none"
                ),
            ],
        };
        for w in want {
            b.check(
                netroot.split_whitespace().any(|l| l == w),
                &format!("sanroot ibft --netroot has {w}: {netroot}"),
            );
        }
    } else {
        b.check(
            b.get("guest.ibft_netroot_rc") != "0",
            &format!("sanroot ibft --netroot finds no table on a boot without one: {netroot}"),
        );
    }
    let files = b.get("guest.net_conf_files");
    let has = |f: &str| files.split(',').any(|x| x == f);
    match e.net {
        Net::V4 => {}
        Net::V6 => {
            b.check(
                has(&format!("net6-{ifname}.conf")) && !has(&format!("net-{ifname}.conf")),
                &format!("the hand-off writes /run/net6-{ifname}.conf (and no IPv4 one): {files}"),
            );
            let conf = b.get("guest.net6_conf");
            for w in [
                "IPV6ADDR='fd00::15'",
                "IPV6NETMASK='64'",
                "IPV6GATEWAY='fd00::2'",
            ] {
                b.check(
                    conf.contains(w),
                    &format!("/run/net6-{ifname}.conf has {w}: {conf}"),
                );
            }
            // The kernel's answer to QEMU's router advertisements is
            // reported, not judged: the static address must stay (above).
            let after = b.json("guest.addr_after");
            eprintln!(
                "sanboot {}: IPv6 on {ifname}: {} (sysctls {})",
                b.name,
                link(&after, ifname).map(addr_list).unwrap_or_default(),
                b.get("guest.ipv6_sysctls")
            );
        }
        Net::Vlan(vid) => {
            b.check(
                rnic["parent"].as_str() == Some(nic_if)
                    && rnic["vlan"].as_u64() == Some(vid.into()),
                &format!("boot.json's NIC is VLAN {vid} on {nic_if}: {rnic}"),
            );
            b.check(
                has(&format!("net-{ifname}.conf")),
                &format!("the hand-off writes /run/net-{ifname}.conf: {files}"),
            );
            b.check(
                b.get("guest.net_conf")
                    .contains(&format!("DEVICE='{ifname}'")),
                &format!(
                    "/run/net-{ifname}.conf names {ifname}: {}",
                    b.get("guest.net_conf")
                ),
            );
            // NetworkManager leaves the parent alone too.
            let devices = b.get("guest.nm_devices");
            b.check(
                devices
                    .split(';')
                    .any(|d| d == format!("{nic_if}:ethernet:unmanaged:")),
                &format!("NetworkManager leaves the VLAN's parent {nic_if} unmanaged: {devices}"),
            );
            let n = |k: &str| -> u64 { b.get(k).parse().unwrap_or(0) };
            b.check(
                n("vlan.tagged_in") > 0 && n("vlan.to_guest") > 0,
                "the switch carried the guest's tagged frames both ways",
            );
            b.eq(
                "vlan.dropped_untagged_ipv4",
                "0",
                "no IPv4 left the guest untagged (nothing configured the parent, no DHCP)",
            );
            b.eq("vlan.dropped_other_vid", "0", "no frame for another VLAN");
        }
    }
}

/// Power-off (issue 5): systemd-shutdown spares '@sanroot', remounts /
/// read-only and pivots into the initramfs dracut-shutdown.service unpacked;
/// dracut's /shutdown unmounts the old root; then sanroot's shutdown hook
/// has the daemon flush, log out and remove the device, and says so on the
/// console. The session `ours` (tgtd's nexus id) must be gone while QEMU is
/// still running: QEMU's exit closes its sockets and would end the session
/// on the target anyway, so only a sample taken before that proves the
/// logout.
fn assert_logout(b: &Boot, ours: &str) {
    if let Some(p) = b.r.get("shutdown_problem") {
        b.fail(&format!("the shutdown did not go cleanly: {p}"));
    }
    let at = |k: &str| -> Option<f64> { b.r.get(&format!("event.{k}.t"))?.parse().ok() };
    let Some(unmounted) = at("initramfs_shutdown") else {
        b.fail("no 'Unmounted /oldroot' on the console: power-off did not come back to the initramfs to unmount the root (dracut's shutdown module, dracut-shutdown.service, need_shutdown)")
    };
    let Some(logout) = at("sanroot_logout") else {
        b.fail("no 'sanroot-shutdown: DEV: cache flushed, logged out' line on the console at power-off")
    };
    let Some(ro) = at("remount_ro") else {
        b.fail("no 'EXT4-fs (DEV): re-mounted … ro' on the console: systemd-shutdown's final remount of / read-only did not succeed")
    };
    b.check(
        ro <= unmounted,
        "systemd-shutdown remounted / read-only before the initramfs unmounted it",
    );
    b.check(
        unmounted <= logout,
        &format!(
            "the old root was unmounted ({unmounted} s) before sanroot logged out ({logout} s)"
        ),
    );
    let ids = |k: &str| b.ids(k);
    b.check(
        b.get("qemu_alive_at_logout") != "1" || !ids("initiators_at_logout").iter().any(|i| i == ours),
        &format!(
            "sanroot's session {ours} is still on the target although its shutdown hook said it logged out: {}",
            b.get("initiators_at_logout")
        ),
    );
    b.check(
        !ids("nexus_last_alive").iter().any(|i| i == ours),
        &format!(
            "sanroot's session {ours} was on the target until QEMU exited (last sample while QEMU ran: {}): no logout",
            b.get("nexus_last_alive")
        ),
    );
    b.check(
        !ids("initiators_after_exit").iter().any(|i| i == ours),
        &format!(
            "sanroot's session {ours} is still on the target after QEMU exited: {}",
            b.get("initiators_after_exit")
        ),
    );
    b.check(
        b.get("ready_dev") == b.get("logout_dev"),
        &format!(
            "the device logged out at power-off ({}) is the root disk ({})",
            b.get("logout_dev"),
            b.get("ready_dev")
        ),
    );
}

/// No second login (issue 13): the root carries an installer's automatic
/// node records of the boot target (both open-iscsi databases, with its
/// CHAP credentials) and of an unrelated target. open-iscsi logged in to
/// the unrelated one only; the boot target's records were hidden by tmpfs
/// mounts (named in boot.json), a login by hand finds no record, and one
/// block device alone carries the root file system's UUID. (The target's
/// own count of sessions, checked above, shows no extra session either.)
fn assert_no_second_login(b: &Boot, dev: &str) {
    let target = b.get("boot.target").to_string();
    let data = b.get("boot.data_target").to_string();
    b.eq(
        "guest.iscsi_session_targets",
        &data,
        "the kernel's initiator has exactly one session, to the unrelated target (its automatic record still logs in)",
    );
    b.eq("guest.boot_target", &target, "boot.json's target");
    let nodes = b.get("guest.iscsiadm_nodes");
    b.check(
        nodes.contains(&data)
            && !nodes
                .to_ascii_lowercase()
                .contains(&target.to_ascii_lowercase()),
        &format!("iscsiadm -m node lists the unrelated target and not the boot target: {nodes}"),
    );
    let hidden = [
        format!("/etc/iscsi/nodes/{target}"),
        format!("/var/lib/iscsi/nodes/{target}"),
    ];
    let mounts = b.get("guest.hidden_mounts");
    for h in &hidden {
        b.check(
            mounts
                .split(';')
                .any(|m| m.starts_with(&format!("{h} tmpfs ro,"))),
            &format!("{h} is hidden by a read-only tmpfs: {mounts}"),
        );
    }
    let rec = b.json("guest.boot_json");
    let listed: Vec<&str> = rec["hidden_node_records"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    b.check(
        listed == hidden.iter().map(String::as_str).collect::<Vec<_>>(),
        &format!("boot.json's hidden_node_records: {listed:?}"),
    );
    b.eq(
        "guest.manual_login_rc",
        "21",
        "iscsiadm -m node -T BOOT-TARGET -l by hand finds no record (exit 21)",
    );
    b.eq(
        "guest.root_uuid_devices",
        &format!("{dev}p1"),
        "exactly one block device carries the root file system's UUID",
    );
}

/// The boot asked the guest to log in to the boot target by hand once its
/// checks are done (kernel argument `sanroot_check.second_login`).
fn second_login_by_hand(b: &Boot) -> bool {
    b.get("boot.kernel_extra")
        .split(' ')
        .any(|a| a == "sanroot_check.second_login")
}

/// A second login typed by hand (issue 13), after the admin took the hiding
/// mount away (`umount /etc/iscsi/nodes/IQN`) and ran `iscsiadm -m node -T
/// IQN -l`: it works, and then the hand-off's udev rule says so in the
/// kernel log, leaves /dev/disk/by-uuid/ROOT on sanroot's device and keeps
/// systemd off the second disk, and `sanroot status` warns and lists the
/// session; `iscsiadm -u` takes it away again.
fn assert_second_login_by_hand(b: &Boot, dev: &str) {
    b.eq(
        "guest.second_umount_rc",
        "0",
        "umount of the hidden records by hand",
    );
    b.eq(
        "guest.second_login_rc",
        "0",
        "iscsiadm -m node -T BOOT-TARGET -l by hand, once the record is visible again",
    );
    let disk = b.get("guest.second_disk").to_string();
    b.check(
        disk.starts_with("sd"),
        &format!("the second login's disk: {disk:?}"),
    );
    b.check(
        b.get("guest.second_kmsg").contains(&format!(
            "sanroot: /dev/{disk} is a second login to the boot target"
        )),
        &format!(
            "the kernel log names the second login: {}",
            b.get("guest.second_kmsg")
        ),
    );
    b.eq(
        "guest.second_uuid_link",
        &format!("{dev}p1"),
        "/dev/disk/by-uuid/ROOT-UUID still points at sanroot's partition",
    );
    b.check(
        b.get("guest.second_uuid_devices").split(',').count() == 2,
        &format!(
            "blkid sees the root's UUID twice while the second login lasts: {}",
            b.get("guest.second_uuid_devices")
        ),
    );
    b.eq(
        "guest.second_systemd_ready",
        "0",
        "SYSTEMD_READY of the second disk's partition",
    );
    b.check(
        b.get("guest.second_status_err")
            .contains("WARNING: the kernel's initiator has a second session"),
        &format!("sanroot status warns: {}", b.get("guest.second_status_err")),
    );
    b.check(
        b.get("guest.second_status_json").starts_with("[\"session"),
        &format!(
            "sanroot status --json: second_logins of the boot disk: {}",
            b.get("guest.second_status_json")
        ),
    );
    b.eq(
        "guest.second_logout_rc",
        "0",
        "iscsiadm -u of the session logged in by hand",
    );
}

/// NetworkManager has the boot NIC connected (with any profile) at
/// multi-user.
fn nm_connected(b: &Boot) -> bool {
    b.r.get("guest.nm_before_device")
        .is_some_and(|d| d.split(':').nth(2) == Some("connected"))
}

/// A route of `routes` without what NetworkManager sets its own way
/// (protocol, metric, scope, source): table, destination, gateway.
fn route_key(r: &str) -> String {
    r.split(' ')
        .filter(|w| w.starts_with("table=") || w.starts_with("dst=") || w.starts_with("gw="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// NetworkManager and the boot NIC (issue 17). With `rd.sanroot.nm=native`
/// NetworkManager assumes the hand-off's profile `sanroot-IF` (0600
/// keyfile under /run) on the live NIC: connected, the firmware's (or
/// ip='s) DNS in NetworkManager and resolv.conf, and `systemctl restart
/// NetworkManager` changes neither the link, the addresses nor the routes,
/// and the root does I/O after it. `nmcli networking off` is not tried
/// there: NetworkManager 1.42 takes a managed NIC down, and the root with
/// it. With `rd.sanroot.nm=unmanaged` (the default), or when ifupdown has
/// the NIC (NetworkManager's ifupdown plugin then leaves it unmanaged
/// whatever the hand-off says), the NIC is unmanaged and keeps its link,
/// addresses, routes and root I/O through networking off, on and the
/// restart.
fn assert_nm(b: &Boot, e: &Expect) {
    // rd.sanroot.nm= on the kernel command line, else sanroot's default.
    let mode = b
        .get("guest.cmdline")
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("rd.sanroot.nm="))
        .next_back()
        .unwrap_or(sanroot::boot::nm::NmMode::DEFAULT.name())
        .to_string();
    let mode = mode.as_str();
    b.eq(
        "guest.nm_mode",
        mode,
        "the hand-off's NetworkManager mode in boot.json (networkmanager)",
    );
    let ifname = b.get("guest.nm_if").to_string();
    let kind = match e.net {
        Net::Vlan(_) => "vlan",
        Net::V4 | Net::V6 => "ethernet",
    };
    let managed = mode == "native" && !e.ifupdown;
    let dev = b.get("guest.nm_before_device");
    let files = b.get("guest.nm_files");
    let keyfile = format!("sanroot-{ifname}.nmconnection");
    if managed {
        b.check(
            dev == format!("{ifname}:{kind}:connected:sanroot-{ifname}"),
            &format!("NetworkManager assumed the profile sanroot-{ifname} on {ifname}: nmcli device says {dev:?}"),
        );
        let profile = b.get("guest.nm_profile");
        b.check(
            profile.contains(&format!("sanroot-{ifname}:"))
                && profile.contains(&format!("/run/NetworkManager/system-connections/{keyfile}")),
            &format!("the profile comes from the hand-off's keyfile: {profile:?}"),
        );
        b.check(
            files.contains(&format!("-rw------- {keyfile}")),
            &format!("the keyfile is 0600: {files:?}"),
        );
        let user = b.get("guest.nm_user");
        b.check(
            user.starts_with("sanroot.origin="),
            &format!("the profile says where its configuration came from: {user:?}"),
        );
        // The firmware's (or ip='s) DNS servers reached NetworkManager and
        // its resolv.conf.
        let rec = b.json("guest.boot_json");
        let dns: Vec<&str> = rec["nic"]["dns"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        b.check(
            !dns.is_empty() || !e.ibft,
            "the iBFT gave the boot NIC a DNS server",
        );
        for d in dns.iter().filter(|d| !d.contains(':')) {
            b.check(
                b.get("guest.resolv_conf")
                    .split(';')
                    .any(|l| l.trim() == format!("nameserver {d}")),
                &format!(
                    "/etc/resolv.conf lists the boot's DNS server {d}: {}",
                    b.get("guest.resolv_conf")
                ),
            );
            b.check(
                b.get("guest.nm_dns").contains(d),
                &format!(
                    "NetworkManager has the boot's DNS server {d} on {ifname}: {}",
                    b.get("guest.nm_dns")
                ),
            );
        }
    } else {
        b.check(
            dev == format!("{ifname}:{kind}:unmanaged:"),
            &format!("{ifname} is unmanaged in NetworkManager: {dev:?}"),
        );
        b.check(
            !files.contains(&keyfile) || mode == "native",
            &format!("no profile is written in unmanaged mode: {files:?}"),
        );
    }
    if b.get("guest.cmdline").contains("sanroot_check.paths") {
        return;
    }
    let before = b.get("guest.nm_before_addr").to_string();
    let routes = b.get("guest.nm_before_routes").to_string();
    b.check(
        !before.is_empty(),
        &format!("{ifname} has an address before networking off"),
    );
    if managed {
        // NetworkManager 1.42 takes a managed NIC's link down and its
        // addresses away at `nmcli networking off`, and `networking on`
        // does not bring the root back (seen in this boot before the
        // guest stopped trying it): the guest does not try it here.
        b.eq(
            "guest.nm_toggle",
            "no",
            "networking off is not tried on a NIC NetworkManager manages",
        );
    } else {
        b.eq(
            "guest.nm_toggle",
            "yes",
            "networking off and on on the unmanaged NIC",
        );
        b.eq("guest.nm_off_rc", "0", "nmcli networking off");
        b.eq(
            "guest.nm_off_link",
            b.get("guest.nm_before_link"),
            "the unmanaged boot NIC's link flags at nmcli networking off",
        );
        b.eq(
            "guest.nm_off_addr",
            &before,
            "the unmanaged boot NIC's addresses at nmcli networking off",
        );
        b.eq(
            "guest.nm_off_routes",
            &routes,
            "the unmanaged boot NIC's routes at nmcli networking off",
        );
        b.eq(
            "guest.nm_off_io",
            "0",
            "a direct write + sync on the root while networking is off",
        );
        b.eq(
            "guest.nm_off_repaired",
            "no",
            "nothing to put back after networking off",
        );
        b.eq("guest.nm_on_rc", "0", "nmcli networking on");
        b.eq(
            "guest.nm_on_addr",
            &before,
            "the boot NIC's addresses after nmcli networking on",
        );
        b.eq(
            "guest.nm_on_routes",
            &routes,
            "the boot NIC's routes after nmcli networking on",
        );
        b.eq(
            "guest.nm_on_io",
            "0",
            "a direct write + sync on the root after networking on",
        );
        b.eq(
            "guest.nm_on_device",
            dev,
            "NetworkManager's view of the NIC after networking on",
        );
    }
    b.eq(
        "guest.nm_restart_rc",
        "0",
        "systemctl restart NetworkManager",
    );
    b.eq(
        "guest.nm_restart_addr",
        &before,
        "the boot NIC's addresses after restarting NetworkManager",
    );
    b.eq(
        "guest.nm_restart_routes",
        &routes,
        "the boot NIC's routes after restarting NetworkManager",
    );
    b.eq(
        "guest.nm_restart_link",
        b.get("guest.nm_before_link"),
        "the boot NIC's link flags after restarting NetworkManager",
    );
    b.eq(
        "guest.nm_restart_io",
        "0",
        "a direct write + sync on the root after restarting NetworkManager",
    );
    b.eq(
        "guest.nm_restart_device",
        dev,
        "NetworkManager's view of the NIC after its restart",
    );
    b.eq(
        "guest.nm_active_end",
        "active",
        "NetworkManager runs after its restart",
    );
}

/// systemd-networkd in the real root instead of NetworkManager (issue 17),
/// with netplan's "DHCP on every en* NIC" in /run/systemd/network: the
/// hand-off's `05-sanroot-IF.network` sorts first, so networkd leaves the
/// boot NIC unmanaged; its start (the addresses and
/// routes before and after, compared above), `networkctl reload` and a
/// restart of networkd change neither the link, the addresses nor the
/// routes, no DHCP lease is taken on it, and the root does I/O after each.
fn assert_networkd(b: &Boot, ifname: &str) {
    b.eq("guest.nd_active", "active", "systemd-networkd runs");
    // networkd reports no .network file for a link it leaves unmanaged
    // ("n/a"): that the link is unmanaged while netplan's file matches it
    // shows the hand-off's file, sorted first, won.
    let networks = b.get("guest.nd_networks");
    for f in [
        format!("05-sanroot-{ifname}.network"),
        "10-netplan-all-en.network".to_string(),
    ] {
        b.check(
            networks.split(',').any(|n| n == f),
            &format!("/run/systemd/network has {f}: {networks}"),
        );
    }
    let file = b.get("guest.nd_network_file");
    b.check(
        file == "n/a" || file == format!("/run/systemd/network/05-sanroot-{ifname}.network"),
        &format!("networkd applies no other .network file to {ifname}: {file}"),
    );
    let state = b.get("guest.nd_before_state").to_string();
    b.check(
        state.ends_with(":unmanaged"),
        &format!("networkctl shows {ifname} unmanaged: {state:?}"),
    );
    let before = b.get("guest.nd_before_addr").to_string();
    b.check(
        !before.is_empty(),
        &format!("{ifname} has an address under networkd"),
    );
    for (step, what) in [
        ("nd_reload", "networkctl reload"),
        ("nd_restart", "systemctl restart systemd-networkd"),
    ] {
        b.eq(&format!("guest.{step}_rc"), "0", what);
        for k in ["addr", "routes", "link", "state"] {
            b.eq(
                &format!("guest.{step}_{k}"),
                b.get(&format!("guest.nd_before_{k}")),
                &format!("the boot NIC's {k} after {what}"),
            );
        }
        b.eq(
            &format!("guest.{step}_io"),
            "0",
            &format!("a direct write + sync on the root after {what}"),
        );
    }
    b.eq(
        "guest.nd_active_end",
        "active",
        "networkd runs after its restart",
    );
    b.eq(
        "guest.nd_dhcp_leases",
        "",
        "networkd took no DHCP lease (on the boot NIC or anywhere)",
    );
}

/// ifupdown in the real root, on the boots that give it the boot NIC: it
/// ran (networking.service), udev asked for the NIC's hotplug unit and the
/// hand-off's condition skipped it (so no `ifdown` at shutdown either; the
/// logout checks prove the NIC stayed up to the end), and no DHCP client
/// runs. The addresses and routes are compared with the initramfs' above.
fn assert_ifupdown(b: &Boot, want: bool) {
    b.eq(
        "guest.ifupdown",
        if want { "yes" } else { "no" },
        "ifupdown was given the boot NIC (sanroot_check.ifupdown)",
    );
    if !want {
        return;
    }
    b.eq(
        "guest.networking_state",
        "active",
        "networking.service (ifup -a) ran",
    );
    // systemd's journal lines about the unit, '#'-separated.
    let unit = b.get("guest.ifup_ens3");
    b.check(
        unit.contains(
            "ifup@ens3.service - ifup for ens3 was skipped because of an unmet condition \
             check (ConditionPathExists=!/run/sanroot/boot.json)",
        ) && !unit.contains("Started")
            && !unit.contains("Finished"),
        &format!("udev asked for ifup@ens3.service and its condition skipped it: {unit}"),
    );
    b.eq(
        "guest.dhclients",
        "0",
        "no DHCP client runs in the real root",
    );
}

/// SeaBIOS → iPXE sanboot → GRUB from the LUN → dracut (systemd) → sanroot
/// (bridge of its choice: ublk) → multi-user. No authentication. After its
/// checks the guest logs in to the boot target by hand, as an admin who
/// took the hiding mount away would, and out again.
#[test]
fn bios_sanboot_no_auth() {
    let b = run(
        "bios-none",
        &[
            "--firmware",
            "bios",
            "--auth",
            "none",
            "--append",
            // NetworkManager's own way (issue 17).
            "sanroot_check.second_login rd.sanroot.nm=native",
        ],
    );
    assert_boot(&b, bios_sanboot_ublk());
}

/// A BIOS iPXE sanboot through dracut (systemd) onto ublk, the NIC ens3,
/// ifupdown not given the NIC.
fn bios_sanboot_ublk() -> Expect {
    Expect {
        bridge: "ublk",
        systemd_initrd: true,
        grub: true,
        ipxe_sessions_at_kernel: (1, 1),
        ibft: true,
        sanroot_init: false,
        initramfs_tools: false,
        nic_name: Some("ens3"),
        ifupdown: false,
        net: Net::V4,
        networkd: false,
    }
}

/// Debian 13 (trixie) as the real root (issue 17): SeaBIOS → iPXE sanboot
/// → GRUB from the LUN → trixie's own kernel (installed in the image) and
/// the initramfs the image's dracut-ng (106) built with dracut/90sanroot
/// (systemd) → sanroot with one-way CHAP onto ublk → systemd 257,
/// NetworkManager 1.52 and open-iscsi 2.1.11, which keeps its node records
/// in /var/lib/iscsi (the installer's records of the boot target are hidden
/// there and in an old /etc/iscsi). Every check of the Debian 12 boots,
/// with the logout at power-off through dracut-ng's shutdown module and a
/// second login typed by hand. NetworkManager's own hand-off
/// (`rd.sanroot.nm=native`): 1.52 assumes the profile `sanroot-ens3` on the
/// live NIC with the iBFT's DNS, and its restart leaves the root alone.
#[test]
fn bios_sanboot_debian13_dracut_chap() {
    let b = run(
        "bios-debian13-chap",
        &[
            "--distro",
            "13",
            "--firmware",
            "bios",
            "--auth",
            "chap",
            "--append",
            "sanroot_check.second_login rd.sanroot.nm=native",
        ],
    );
    b.eq(
        "boot.distro",
        "13",
        "qemu/sanboot booted the Debian 13 image",
    );
    assert_boot(&b, bios_sanboot_ublk());
    let os = b.get("guest.os_release");
    b.check(
        os.starts_with("debian 13 "),
        &format!("the real root is Debian 13: {os}"),
    );
    let kernel = b.get("guest.kernel");
    b.check(
        kernel == b.get("boot.kver") && kernel.contains("+deb13-"),
        &format!(
            "the guest runs trixie's kernel, the image's own ({}): {kernel}",
            b.get("boot.kver")
        ),
    );
    let pkgs = b.get("guest.packages");
    let version = |name: &str| {
        pkgs.split(',')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_string()
    };
    let dracut_major: u32 = version("dracut-core")
        .split(['-', '.', '+'])
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    b.check(
        dracut_major >= 100,
        &format!("the initramfs was built by dracut-ng (dracut-core 1xx): {pkgs}"),
    );
    b.check(
        version("open-iscsi").starts_with("2.1.11"),
        &format!("open-iscsi 2.1.11 (node records in /var/lib/iscsi): {pkgs}"),
    );
}

/// Debian 13 with systemd-networkd instead of NetworkManager, booted
/// through initramfs-tools (issue 17): SeaBIOS → iPXE sanboot → GRUB from
/// the LUN → trixie's kernel and the initramfs trixie's initramfs-tools
/// built with sanroot's hook and scripts (open-iscsi's `iscsi_auto`),
/// one-way CHAP → systemd 257 with NetworkManager masked and networkd
/// started (kernel arguments), netplan's "DHCP on every en* NIC" in
/// /run/systemd/network. Every check of a boot, initramfs-tools' own
/// (interface file, exec /run, sanroot's shutdown program) and networkd's
/// (`assert_networkd`).
#[test]
fn bios_sanboot_debian13_itools_networkd() {
    let b = run(
        "bios-debian13-itools-networkd",
        &[
            "--distro",
            "13",
            "--firmware",
            "bios",
            "--auth",
            "chap",
            "--initrd",
            "initramfs-tools",
            "--append",
            "systemd.mask=NetworkManager.service systemd.wants=systemd-networkd.service sanroot_check.networkd",
        ],
    );
    b.eq(
        "boot.distro",
        "13",
        "qemu/sanboot booted the Debian 13 image",
    );
    assert_boot(
        &b,
        Expect {
            systemd_initrd: false,
            initramfs_tools: true,
            networkd: true,
            ..bios_sanboot_ublk()
        },
    );
    b.check(
        b.get("guest.os_release").starts_with("debian 13 "),
        &format!("the real root is Debian 13: {}", b.get("guest.os_release")),
    );
    assert_itools(&b);
}

/// A user rebuilds the initramfs in the SAN-booted root and reboots (issue
/// 13): `dracut --force --hostonly` with the machine's dracut.conf.d files
/// but not the test image's module list (dracut-network, and so dracut's
/// own 95iscsi and Debian's `add_dracutmodules+=" ifcfg "`, is installed;
/// the root carries the installer's automatic node record of the boot
/// target)
/// replaces /boot/initrd.img-KVER; the image has sanroot and its pre-pivot
/// hook and nothing of open-iscsi, and initramfs-tools with open-iscsi's
/// hook would not log in either (no iscsi.initramfs). The next boot from
/// the same disk goes through that initramfs, with every check of a boot.
#[test]
fn bios_sanboot_chap_hostonly_rebuild() {
    let disk = repo().join("target/sanboot-rebuild-disk.img");
    let _ = std::fs::remove_file(&disk);
    let disk_arg = disk.to_str().expect("UTF-8 path");
    let b = run(
        "rebuild-1",
        &[
            "--firmware",
            "bios",
            "--auth",
            "chap",
            "--disk",
            disk_arg,
            "--append",
            "sanroot_check.rebuild",
        ],
    );
    b.eq(
        "boot.disk_initrd",
        "image",
        "the first boot uses the image's initramfs",
    );
    assert_boot(&b, bios_sanboot_ublk());
    b.eq(
        "guest.rebuild_rc",
        "0",
        "dracut --hostonly in the booted root",
    );
    let modules = b.get("guest.rebuild_modules");
    b.check(
        modules.split(',').any(|m| m == "sanroot") && !modules.split(',').any(|m| m == "iscsi"),
        &format!(
            "the host-only image has dracut's sanroot module and not its iscsi module: {modules}"
        ),
    );
    b.eq(
        "guest.rebuild_sanroot",
        "1",
        "sanroot is in the host-only image",
    );
    b.eq(
        "guest.rebuild_pre_pivot",
        "1",
        "sanroot's pre-pivot hook is in the host-only image",
    );
    b.eq(
        "guest.rebuild_open_iscsi",
        "0",
        "no iscsistart, iscsiadm, iscsid or iscsi.initramfs in the host-only image",
    );
    let cmdline = b.get("guest.rebuild_cmdline");
    b.check(
        !cmdline.contains("iscsi") && !cmdline.contains("netroot"),
        &format!("the host-only command line adds no iSCSI login: {cmdline}"),
    );
    b.eq(
        "guest.it_rc",
        "0",
        "mkinitramfs (initramfs-tools) in the booted root",
    );
    b.eq(
        "guest.it_iscsi_initramfs",
        "0",
        "initramfs-tools with open-iscsi's hook: no /etc/iscsi.initramfs, so its iscsistart does not log in",
    );
    eprintln!(
        "host-only rebuild: dracut took {} s in the guest; initramfs-tools' image has iscsistart: {}",
        b.get("guest.rebuild_seconds"),
        b.get("guest.it_iscsistart")
    );

    let b = run(
        "rebuild-2",
        &["--firmware", "bios", "--auth", "chap", "--disk", disk_arg],
    );
    b.eq(
        "boot.disk_initrd",
        "rebuilt",
        "the second boot loads the initramfs the first one rebuilt",
    );
    assert_boot(&b, bios_sanboot_ublk());
    let _ = std::fs::remove_file(&disk);
}

/// The same path with one-way CHAP, iPXE's DHCP lease as the iBFT's
/// address (origin dhcp), and the NBD bridge asked for on the kernel command
/// line (GRUB's environment block).
#[test]
fn bios_sanboot_chap_nbd() {
    let b = run(
        "bios-chap-nbd",
        &[
            "--firmware",
            "bios",
            "--auth",
            "chap",
            "--net",
            "dhcp",
            "--bridge",
            "nbd",
            "--append",
            "sanroot_check.ifupdown",
        ],
    );
    assert_boot(
        &b,
        Expect {
            bridge: "nbd",
            systemd_initrd: true,
            grub: true,
            ipxe_sessions_at_kernel: (1, 1),
            ibft: true,
            sanroot_init: false,
            initramfs_tools: false,
            nic_name: Some("ens3"),
            ifupdown: true,
            net: Net::V4,
            networkd: false,
        },
    );
}

/// OVMF → iPXE sanhook (iBFT as an ACPI table) → kernel and dracut
/// (systemd) over TFTP → sanroot with mutual CHAP.
#[test]
fn uefi_sanhook_mutual() {
    let b = run("uefi-mutual", &["--firmware", "uefi", "--auth", "mutual"]);
    assert_boot(
        &b,
        Expect {
            bridge: "ublk",
            systemd_initrd: true,
            grub: false,
            ipxe_sessions_at_kernel: (0, 1),
            ibft: true,
            sanroot_init: false,
            initramfs_tools: false,
            nic_name: None,
            ifupdown: false,
            net: Net::V4,
            networkd: false,
        },
    );
}

/// dracut without systemd (shell init, switch_root): SeaBIOS → iPXE sanhook
/// → kernel + the image's second initramfs over TFTP → sanroot with mutual
/// CHAP → the daemon outlives dracut's init. `rd.sanroot.nm=unmanaged`: the
/// boot NIC is unmanaged in NetworkManager, as before issue 17.
#[test]
fn bios_shell_initrd_mutual() {
    let b = run(
        "bios-shell-mutual",
        &[
            "--firmware",
            "bios",
            "--boot",
            "sanhook",
            "--initrd",
            "shell",
            "--auth",
            "mutual",
            // The old way (issue 17): every boot NIC unmanaged.
            "--append",
            "rd.sanroot.nm=unmanaged",
        ],
    );
    assert_boot(
        &b,
        Expect {
            bridge: "ublk",
            systemd_initrd: false,
            grub: false,
            ipxe_sessions_at_kernel: (1, 1),
            ibft: true,
            sanroot_init: false,
            initramfs_tools: false,
            nic_name: Some("ens3"),
            ifupdown: false,
            net: Net::V4,
            networkd: false,
        },
    );
}

/// The target is not there when the machine boots: dracut's shell init
/// with an iBFT from sanroot's emitter (-acpitable; iPXE would need the
/// target itself), whose portal is a forwarder that refuses connections
/// (qemu/sanboot --late-target). The first attempt gives up after
/// `rd.sanroot.timeout=5` with status 5 (LOGIN); the initqueue job queues
/// itself again; the host brings the portal up when the console shows it;
/// the second attempt logs in (the NIC already configured by the first)
/// and the boot is as any other: same checks (the NIC's name among them),
/// one session, no second login.
#[test]
fn late_target_shell_initrd_retries() {
    let b = run(
        "late-target-shell",
        &[
            "--boot",
            "acpitable",
            "--initrd",
            "shell",
            "--auth",
            "chap",
            "--late-target",
        ],
    );
    b.check(
        !b.r.contains_key("late.retry_timeout"),
        "the initramfs said it would try sanroot again (late.retry_line)",
    );
    let retry = b.get("late.retry_line");
    b.check(
        retry.contains("'sanroot boot' failed with status 5 (attempt 1 of 5); trying again"),
        &format!("the first attempt failed to log in (status 5) and is retried: {retry}"),
    );
    b.check(
        b.get("late.up_reply").contains("\"ok\": true"),
        &format!("the portal came up: {}", b.get("late.up_reply")),
    );
    let console = std::fs::read_to_string(&b.log)
        .unwrap_or_default()
        .replace('\r', "");
    let ready: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("sanroot: root LUN is "))
        .collect();
    // Both attempts used the NIC under udev's name (an attempt before the
    // coldplug's pass once took it as eth0, just before udev renamed it).
    let kernel_named: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("sanroot[") && l.contains("net: use eth0"))
        .collect();
    b.check(
        kernel_named.is_empty(),
        &format!("no attempt used the NIC under the kernel's name: {kernel_named:?}"),
    );
    b.check(
        ready.len() == 1 && ready[0].contains("(attempt 2)"),
        &format!("the root LUN came with the second attempt, once: {ready:?}"),
    );
    assert_boot(
        &b,
        Expect {
            systemd_initrd: false,
            ..no_ipxe(Net::V4, true, false, "ublk")
        },
    );
}

/// No iPXE and no iBFT: QEMU loads the image's kernel and dracut (systemd)
/// initramfs itself, and dracut's own command line describes the root:
/// `netroot=iscsi:USER:SECRET@10.0.2.2::PORT:1:IQN` (one-way CHAP, the
/// secret in netroot= as dracut has it), a static
/// `ip=10.0.2.15::10.0.2.2:255.255.255.0:HOST:ens3:none:DNS`, which sanroot
/// applies itself, and `rd.iscsi.initiator=`. Same checks as the firmware
/// boots; the secret shows nowhere but in the kernel's echo of its command
/// line.
#[test]
fn direct_netroot_chap() {
    let b = run(
        "direct-netroot-chap",
        // NetworkManager's own way (issue 17), with ip='s DNS.
        &[
            "--boot",
            "direct",
            "--auth",
            "chap",
            "--append",
            "rd.sanroot.nm=native",
        ],
    );
    assert_boot(&b, no_ipxe(Net::V4, false, false, "ublk"));
}

/// sanroot alone as the initramfs (initramfs/sanroot-mkinitramfs; issue 6's
/// boot-time aim): SeaBIOS → iPXE sanboot → GRUB from the LUN, which loads
/// the image's minimal initramfs (grubenv) → sanroot as /init, PID 1: its
/// module list, the iBFT, one-way CHAP, the NIC renamed to its predictable
/// name without udev, the root found by UUID and mounted ro → the real
/// root's systemd (fsck, remount rw). At power-off systemd-shutdown returns
/// to the copy of sanroot /init left at /run/initramfs/shutdown, which
/// unmounts the old root and logs out. Same checks as the dracut boots.
#[test]
fn bios_sanboot_sanroot_init_chap() {
    let b = run(
        "bios-sanboot-sanroot-init-chap",
        &[
            "--firmware",
            "bios",
            "--boot",
            "sanboot",
            "--initrd",
            "sanroot",
            "--auth",
            "chap",
            "--append",
            "sanroot_check.ifupdown",
        ],
    );
    assert_boot(
        &b,
        Expect {
            systemd_initrd: false,
            sanroot_init: true,
            ifupdown: true,
            net: Net::V4,
            networkd: false,
            ..bios_sanboot_ublk()
        },
    );
}

/// Debian's initramfs-tools with sanroot's hook and scripts installed the
/// way the README says (issue 17), open-iscsi's hook in the same image: a
/// BIOS iPXE sanboot through GRUB, one-way CHAP, open-iscsi's own
/// `iscsi_auto` on the command line. Every check of a boot (one session
/// only: open-iscsi's script found no iscsistart and did not log in), and
/// what initramfs-tools needs beyond dracut: the daemon is '@sanroot'
/// although initramfs-tools has no /etc/initrd-release, open-iscsi's
/// interface file (which its local-bottom script deletes) names the NIC
/// in the real root, /run is exec there, and power-off goes through the
/// copy of sanroot at /run/initramfs/shutdown to log out.
#[test]
fn bios_sanboot_initramfs_tools_chap() {
    let b = run(
        "bios-itools-chap",
        &[
            "--firmware",
            "bios",
            "--auth",
            "chap",
            "--initrd",
            "initramfs-tools",
            "--append",
            // iscsi_initiator= (open-iscsi's word, the iBFT's name) reaches
            // /init's environment: it must not reach the real init's.
            "sanroot_check.ifupdown iscsi_initiator=iqn.2026-11.org.sanroot:sanboot-machine",
        ],
    );
    assert_boot(
        &b,
        Expect {
            systemd_initrd: false,
            initramfs_tools: true,
            ifupdown: true,
            net: Net::V4,
            networkd: false,
            ..bios_sanboot_ublk()
        },
    );
    assert_itools(&b);
}

/// What initramfs-tools needs beyond dracut (issue 17): open-iscsi's
/// interface file (which its local-bottom script deletes) names the NIC in
/// the real root, /run is exec there, and sanroot's copy waits at
/// /run/initramfs/shutdown for power-off.
fn assert_itools(b: &Boot) {
    b.eq(
        "guest.iscsi_interface",
        "ens3",
        "/run/initramfs/open-iscsi.interface names the boot NIC in the real root",
    );
    let run_opts = b.get("guest.run_options");
    b.check(
        !run_opts.split(',').any(|o| o == "noexec"),
        &format!("/run is exec in the real root (systemd-shutdown runs /run/initramfs/shutdown from it): {run_opts}"),
    );
    b.eq(
        "guest.shutdown_program",
        "executable",
        "/run/initramfs/shutdown (sanroot's copy) is there for power-off",
    );
}

/// Debian's initramfs-tools with open-iscsi's own words and no iBFT
/// (issue 17): QEMU loads the image's kernel and its initramfs-tools image
/// (sanroot's hook and scripts), and `iscsi_target_name=`,
/// `iscsi_target_ip=`, `iscsi_target_port=`, `iscsi_initiator=`,
/// `iscsi_username=`, `iscsi_password=` with a static `ip=` describe the
/// root, as open-iscsi's initramfs script reads them. Those words name a
/// whole target and no LUN: tgtd's LUN 0 is its controller, so sanroot
/// serves the first disk REPORT LUNS lists (LUN 1) and says so. Every check
/// of a boot; the secret shows nowhere but in the kernel's echo of its
/// command line, and no iscsi_* variable reaches the real init.
#[test]
fn direct_itools_target_words_chap() {
    let b = run(
        "direct-itools-target-words-chap",
        &[
            "--boot",
            "direct",
            "--initrd",
            "initramfs-tools",
            "--auth",
            "chap",
        ],
    );
    assert_boot(
        &b,
        Expect {
            systemd_initrd: false,
            initramfs_tools: true,
            ..no_ipxe(Net::V4, false, false, "ublk")
        },
    );
    assert_itools(&b);
    let rec = b.json("guest.boot_json");
    b.check(
        rec["lun"].as_u64() == Some(1),
        &format!(
            "the hand-off records LUN 1, the target's first disk: {}",
            rec["lun"]
        ),
    );
    let console = std::fs::read_to_string(&b.log).unwrap_or_default();
    b.check(
        console.contains("no LUN given and LUN 0 is not a disk: serving LUN 1"),
        "sanroot says it serves LUN 1 because none was named and LUN 0 is no disk",
    );
}

/// sanroot alone as the initramfs with no iPXE and no iBFT: QEMU loads the
/// kernel and the minimal initramfs, and `netroot=iscsi:` with mutual CHAP,
/// a static `ip=…:ens3:none` and `rd.iscsi.initiator=` describe the root;
/// the bridge is NBD. /init has no udev: `ens3` exists only because sanroot
/// renames the kernel's `eth0` to the name udev would give it when the
/// command line names it. The secrets in netroot= show nowhere but in the
/// kernel's echo of its command line (and /init keeps netroot= out of the
/// real init's environment).
#[test]
fn direct_netroot_sanroot_init_mutual_nbd() {
    let b = run(
        "direct-netroot-sanroot-init-mutual-nbd",
        &[
            "--boot", "direct", "--initrd", "sanroot", "--auth", "mutual", "--bridge", "nbd",
        ],
    );
    assert_boot(&b, no_ipxe(Net::V4, false, true, "nbd"));
}

/// What the boots without iPXE share (QEMU loads the image's kernel and
/// initramfs: netroot=, or issue 18's iBFT through -acpitable), the NIC in
/// slot 3 (ens3); dracut with systemd unless the initramfs is sanroot.
fn no_ipxe(net: Net, ibft: bool, sanroot_init: bool, bridge: &'static str) -> Expect {
    Expect {
        bridge,
        systemd_initrd: !sanroot_init,
        grub: false,
        ipxe_sessions_at_kernel: (0, 0),
        ibft,
        sanroot_init,
        initramfs_tools: false,
        nic_name: Some("ens3"),
        ifupdown: false,
        net,
        networkd: false,
    }
}

/// IPv6 only (issue 18), described by the firmware: QEMU's user network
/// without IPv4 (prefix fd00::/64, the host fd00::2, whose [::1] tgtd
/// listens on), and an iBFT from sanroot's own emitter given to the guest
/// with -acpitable (iPXE writes no IPv6 into its table): a static
/// fd00::15/64 via fd00::2, DNS fd00::3, the portal [fd00::2]:PORT, one-way
/// CHAP; dracut with systemd, `rd.iscsi.firmware`. Every check of a boot
/// with IPv6 addresses and routes, the second target's installer record
/// (at [fd00::2]) logged in by open-iscsi over IPv6, `sanroot ibft
/// --netroot` and /run/net6-ens3.conf.
#[test]
fn ipv6_ibft_dracut_chap() {
    let b = run(
        "ipv6-ibft-dracut-chap",
        &["--boot", "acpitable", "--ipv6", "--auth", "chap"],
    );
    assert_boot(&b, no_ipxe(Net::V6, true, false, "ublk"));
}

/// IPv6 only (issue 18) in dracut's words, through the sanroot-only
/// initramfs: `netroot=iscsi:USER:SECRET:TUSER:TSECRET@[fd00::2]::PORT:1:IQN`
/// (mutual CHAP) and `ip=[fd00::15]::[fd00::2]:64:HOST:ens3:none`, no
/// iBFT. Same checks as the other IPv6 boot.
#[test]
fn ipv6_netroot_sanroot_init_mutual() {
    let b = run(
        "ipv6-netroot-sanroot-init-mutual",
        &[
            "--boot", "direct", "--ipv6", "--initrd", "sanroot", "--auth", "mutual",
        ],
    );
    assert_boot(&b, no_ipxe(Net::V6, false, true, "ublk"));
}

/// A root reachable only on 802.1Q VLAN 100 (issue 18): the guest's NIC is
/// a QEMU socket netdev to qemu/vlan-switch, an access port for VLAN 100
/// into a private network namespace where tgtd listens on
/// 192.168.100.1:PORT; untagged frames go nowhere. The iBFT (sanroot's
/// emitter, -acpitable; Debian's iPXE has no VLAN command) gives the VLAN
/// id, 192.168.100.15/24 and one-way CHAP; dracut with systemd. sanroot
/// creates ens3.100 on ens3; the real root keeps it, NetworkManager leaves
/// both unmanaged, the hand-off names the VLAN and its parent, and the
/// switch saw no untagged IPv4 from the guest.
#[test]
fn vlan_ibft_dracut_chap() {
    let b = run(
        "vlan-ibft-dracut-chap",
        &["--boot", "acpitable", "--vlan", "100", "--auth", "chap"],
    );
    assert_boot(&b, no_ipxe(Net::Vlan(100), true, false, "ublk"));
}

/// VLAN 100 from the iBFT (issue 18) through the sanroot-only initramfs,
/// the bridge NBD, and ifupdown given the parent NIC (`auto ens3`, DHCP, as
/// an installer writes it): neither ifupdown nor NetworkManager may touch
/// ens3 or ens3.100 (a DHCP client on the parent would show as untagged
/// IPv4 at the switch).
#[test]
fn vlan_ibft_sanroot_init_nbd() {
    let b = run(
        "vlan-ibft-sanroot-init-nbd",
        &[
            "--boot",
            "acpitable",
            "--vlan",
            "100",
            "--initrd",
            "sanroot",
            "--bridge",
            "nbd",
            "--append",
            "sanroot_check.ifupdown",
        ],
    );
    assert_boot(
        &b,
        Expect {
            ifupdown: true,
            ..no_ipxe(Net::Vlan(100), true, true, "nbd")
        },
    );
}

/// Issue 15: one LU behind two portals, as iPXE describes it when `sanboot`
/// is given two URIs for it (qemu/sanboot --two-paths): the iBFT has two
/// targets with the same IQN and LUN, 10.0.2.2:PORT_A and :PORT_B, both
/// forwarded to the one tgtd by qemu/tcp-proxy. Path A is dead at boot (its
/// port does not listen), so iPXE and then sanroot come up through B, and
/// sanroot keeps trying A. Once the real root is up the host brings A up
/// and waits for sanroot's `path 10.0.2.2:PORT_A rejoined`, then resets B's
/// connections and stops it listening, and waits for `path
/// 10.0.2.2:PORT_B lost`. All along the guest writes and fsyncs files on
/// the root; it writes once more after the cut. No write may fail, the
/// files must be on the target, the root must be clean, `sanroot status
/// --json` and boot.json must show both portals with the right states
/// before (B up, A not) and after (A up, B not), and power-off must log
/// out through A.
#[test]
fn bios_sanboot_two_paths_one_dead_one_cut() {
    let b = run_env(
        "bios-two-paths",
        &["--firmware", "bios", "--boot", "sanboot", "--two-paths"],
        // A hang fails the test instead of holding CI: the whole QEMU run,
        // and each of the host's two waits.
        &[
            ("SR_QEMU_TIMEOUT", "600"),
            ("SR_PATHS_REJOIN_MAX", "90"),
            ("SR_PATHS_LOST_MAX", "30"),
        ],
    );
    assert_two_paths(&b);
}

/// The `paths` list of a status or boot record: (portal, state, active,
/// tpgt) of each.
fn path_list(b: &Boot, v: &Value, what: &str) -> Vec<(String, String, bool, Value)> {
    let Some(paths) = v["paths"].as_array() else {
        b.fail(&format!("{what} has no \"paths\" list: {v}"))
    };
    paths
        .iter()
        .map(|p| {
            (
                p["portal"].as_str().unwrap_or("").to_string(),
                p["state"].as_str().unwrap_or("").to_string(),
                p["active"].as_bool().unwrap_or(false),
                p["tpgt"].clone(),
            )
        })
        .collect()
}

/// Path `up` is up and carries I/O, path `other` is not (down or
/// connecting, not active); nothing else is listed.
fn assert_paths_state(b: &Boot, v: &Value, what: &str, up: &str, other: &str) {
    let paths = path_list(b, v, what);
    let find = |portal: &str| paths.iter().find(|p| p.0 == portal);
    b.check(
        paths.len() == 2,
        &format!("{what}: two paths, {up} and {other}: {paths:?}"),
    );
    match find(up) {
        Some((_, state, active, tpgt)) => b.check(
            state == "up" && *active && tpgt.is_u64(),
            &format!("{what}: path {up} is up and active, with its TPGT: {paths:?}"),
        ),
        None => b.fail(&format!("{what}: no path {up}: {paths:?}")),
    }
    match find(other) {
        Some((_, state, active, _)) => b.check(
            (state == "down" || state == "connecting") && !*active,
            &format!("{what}: path {other} is down or connecting and not active: {paths:?}"),
        ),
        None => b.fail(&format!("{what}: no path {other}: {paths:?}")),
    }
}

/// The kernel log time of a console line "[  12.345678] …".
fn kmsg_time(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    rest.split(']').next()?.trim().parse().ok()
}

fn assert_two_paths(b: &Boot) {
    ran_to_its_end(b);
    b.check(
        b.r.contains_key("event.poweroff.t"),
        "no 'reboot: Power down' on the console",
    );
    b.eq(
        "boot.qemu_rc",
        "0",
        "QEMU exits by itself after the power-off",
    );
    b.check(
        b.r.contains_key("event.grub.t"),
        "GRUB was read from the LUN (through path B)",
    );
    let target = b.get("boot.target").to_string();
    let a = b.get("paths.a").to_string();
    let bb = b.get("paths.b").to_string();
    let port = |p: &str| p.rsplit(':').next().unwrap_or("").to_string();

    // The firmware's table: two targets, the same IQN and LUN, the two
    // portals; iPXE lists its URIs' paths in order (A, then B).
    let sysfs = b.get("guest.paths_sysfs_ibft").to_string();
    let targets: Vec<BTreeMap<String, String>> = sysfs
        .split(';')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect();
    b.check(
        targets.len() == 2,
        &format!("/sys/firmware/ibft has two targets: {sysfs}"),
    );
    for (i, (t, p)) in targets.iter().zip([&a, &bb]).enumerate() {
        let get = |k: &str| t.get(k).map(String::as_str).unwrap_or("");
        b.check(
            get("target-name") == target
                && get("ip-addr") == "10.0.2.2"
                && get("port") == port(p)
                && get("lun") == targets[0].get("lun").map(String::as_str).unwrap_or("?"),
            &format!(
                "/sys/firmware/ibft/target{i} is {target} LUN {} at {p}: {sysfs}",
                get("lun")
            ),
        );
    }
    b.eq("guest.ibft_rc", "0", "sanroot ibft --json in the real root");
    let ibft = b.json("guest.ibft");
    let portals: Vec<String> = ibft["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter(|t| t["name"] == target.as_str() && t["lun"] == 1)
                .map(|t| format!("{}:{}", t["ip"].as_str().unwrap_or(""), t["port"]))
                .collect()
        })
        .unwrap_or_default();
    b.check(
        portals == [a.clone(), bb.clone()],
        &format!(
            "sanroot ibft: LUN 1 of {target} at {a} and {bb}: {portals:?} ({})",
            ibft["targets"]
        ),
    );

    // Path A never listened before the guest was up; sanroot came up
    // through B.
    let proxy = |k: &str| b.json(k);
    let ready = proxy("paths.ready_proxy");
    b.check(
        ready["portals"]["a"]["accepted"] == 0 && ready["portals"]["a"]["listening"] == false,
        &format!("path A took no connection before the host brought it up: {ready}"),
    );
    b.check(
        b.r.contains_key("event.sanroot_ready.t"),
        "no 'sanroot[PID]: root disk … is ready' line on the console",
    );
    let dev = b.get("ready_dev").to_string();
    b.check(
        dev.starts_with("/dev/ublkb"),
        &format!("sanroot's device: {dev}"),
    );
    b.check(
        b.get("ready_line").contains(&bb),
        &format!(
            "sanroot's ready line names path B {bb}: {}",
            b.get("ready_line")
        ),
    );
    let status_of = |k: &str| -> Value {
        b.eq(&format!("{k}_rc"), "0", "sanroot status --json");
        let st = b.json(k);
        st.as_array()
            .and_then(|d| d.iter().find(|d| d["device"] == dev.as_str()))
            .cloned()
            .unwrap_or_else(|| b.fail(&format!("{k}: no device {dev}: {st}")))
    };
    assert_paths_state(
        b,
        &status_of("guest.status_json"),
        "sanroot status --json at multi-user",
        &bb,
        &a,
    );
    assert_paths_state(
        b,
        &b.json("guest.boot_json"),
        "/run/sanroot/boot.json at multi-user",
        &bb,
        &a,
    );

    // A came up and sanroot took it back; then B was cut and sanroot let
    // it go.
    if let Some(t) = b.r.get("paths.rejoin_timeout") {
        b.fail(&format!(
            "no 'path {a} rejoined' on the console within {t} s of path A listening"
        ));
    }
    let rejoin = b.get("paths.rejoin_line").to_string();
    let rejoined = b.json("paths.rejoin_proxy");
    b.check(
        rejoined["portals"]["a"]["live"].as_u64().unwrap_or(0) >= 1,
        &format!("path A has a connection once sanroot says it rejoined: {rejoined}"),
    );
    if let Some(t) = b.r.get("paths.lost_timeout") {
        b.fail(&format!(
            "no 'path {bb} lost' on the console within {t} s of path B's reset"
        ));
    }
    let lost = b.get("paths.lost_line").to_string();
    b.check(
        b.get("paths.b_cut_reply").contains("\"reset\": 1"),
        &format!(
            "the host reset path B's connection: {}",
            b.get("paths.b_cut_reply")
        ),
    );
    b.eq(
        "paths.after_cut_sessions",
        "1",
        "one session on the target once B is cut: sanroot's through A",
    );

    // The root kept working: every write before, during and after the cut
    // went through, and is on the target.
    b.eq(
        "guest.paths_write_errors",
        "0",
        "failed writes on the root while the paths changed",
    );
    b.eq("guest.paths_dd_errors", "", "dd's error output");
    b.eq(
        "guest.paths_after_cut_rc",
        "0",
        "a 4 MiB fsync'ed write after B was cut",
    );
    b.eq("guest.paths_sync_rc", "0", "sync after the cut");
    let writes: Vec<(f64, String, f64)> = b
        .get("guest.paths_writes_log")
        .split(',')
        .filter_map(|w| {
            let mut f = w.split(':');
            Some((
                f.next()?.parse().ok()?,
                f.next()?.to_string(),
                f.next()?.parse().ok()?,
            ))
        })
        .collect();
    let lost_at = kmsg_time(&lost).unwrap_or_else(|| b.fail(&format!("no time in {lost:?}")));
    let rejoin_at = kmsg_time(&rejoin).unwrap_or_else(|| b.fail(&format!("no time in {rejoin:?}")));
    let lost_after: f64 = b.get("paths.lost_seconds").parse().unwrap_or(0.0);
    // On the guest's clock the cut came about lost_after before the lost line.
    let cut_at = lost_at - lost_after;
    let after_cut = writes.iter().filter(|w| w.0 > lost_at).count();
    let stall = writes
        .iter()
        .filter(|w| w.0 + w.2 >= cut_at - 0.5 && w.0 <= lost_at + 1.0)
        .map(|w| w.2)
        .fold(0.0, f64::max);
    let longest = writes.iter().map(|w| w.2).fold(0.0, f64::max);
    b.check(
        writes.len() >= 10 && writes.iter().all(|w| w.1 == "0"),
        &format!("the writer's log: {} writes, all ok", writes.len()),
    );
    b.check(
        writes.iter().any(|w| w.0 < rejoin_at) && after_cut >= 3,
        &format!(
            "writes before A rejoined and after B was lost (at {lost_at} s): {after_cut} after"
        ),
    );
    b.check(
        stall < 30.0,
        &format!("the writes across B's cut took at most {stall:.2} s (I/O held for too long)"),
    );
    let files: usize = b.get("host.paths_files").parse().unwrap_or(0);
    b.check(
        files >= 17 && b.get("host.paths_files_ok") == files.to_string(),
        &format!(
            "the files the guest wrote are on the target (debugfs of the backing file): {} of {files}, bad: {}",
            b.get("host.paths_files_ok"),
            b.get("host.paths_files_bad")
        ),
    );
    b.eq(
        "guest.kmsg_errors",
        "0",
        "I/O / ext4 errors in the kernel log at multi-user",
    );
    b.eq(
        "guest.kmsg_errors_end",
        "0",
        "I/O / ext4 errors in the kernel log after the cut",
    );
    b.eq(
        "host.console_io_errors",
        "0",
        "I/O / ext4 errors on the console (whole boot and shutdown)",
    );
    b.eq(
        "guest.root_source",
        &format!("{dev}p1"),
        "findmnt /: partition 1 of sanroot's device",
    );

    // Power-off logged out through A; the file system is clean.
    if let Some(p) = b.r.get("shutdown_problem") {
        b.fail(&format!("the shutdown did not go cleanly: {p}"));
    }
    b.check(
        b.r.contains_key("event.sanroot_logout.t"),
        "no 'sanroot-shutdown: DEV: cache flushed, logged out' line on the console at power-off",
    );
    b.eq(
        "logout_dev",
        &dev,
        "the device logged out at power-off is the root disk",
    );
    b.check(
        b.ids("nexus_last_alive").is_empty(),
        &format!(
            "no session left on the target at power-off, QEMU still running: {}",
            b.get("nexus_last_alive")
        ),
    );
    b.eq(
        "host.token_found",
        b.get("host.token_expected"),
        "the per-boot token, read from the target's backing file after power-off",
    );
    b.eq(
        "host.fsck_rc",
        "0",
        "e2fsck -fn of the root partition in the backing file after power-off",
    );
    b.eq("host.fs_state", "clean", "the superblock says clean");

    eprintln!(
        "two paths: sanroot ready at {} s, multi-user reported at {} s (QEMU {} s in all); \
         A up at {} s, rejoined {} s later; B cut at {} s, lost {} s later; \
         {} writes ({after_cut} after the loss), the longest {longest:.2} s, across the cut {stall:.2} s",
        b.get("event.sanroot_ready.t"),
        b.get("event.check_ready.t"),
        b.get("boot.seconds"),
        b.get("paths.a_up.t"),
        b.get("paths.rejoin_seconds"),
        b.get("paths.b_cut.t"),
        b.get("paths.lost_seconds"),
        writes.len(),
    );

    // What sanroot says now: A up and carrying I/O, B not.
    assert_paths_state(
        b,
        &status_of("guest.paths_status_json"),
        "sanroot status --json after the cut",
        &a,
        &bb,
    );
    assert_paths_state(
        b,
        &b.json("guest.paths_boot_json"),
        "/run/sanroot/boot.json after the cut",
        &a,
        &bb,
    );
}
