//! `sanroot boot` in a real 6.12 kernel (QEMU, TCG), from iBFT files built
//! here, against a tgtd on the host: the second path taken when the first
//! is down, CHAP, the hand-off under /run, the refusal of a second login,
//! the daemon named '@sanroot' that outlives a SIGTERM while the disk is
//! mounted, and a clean detach (flush, logout) once it is not. The bytes
//! written in the guest are checked in the target's backing file.
//!
//! Needs root, tgtd and QEMU (`sudo qemu/install-deps`); runs in CI.

mod common;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sanroot::ibft::Origin;
use support::tgtd::Tgtd;

const IQN: &str = "iqn.2026-11.org.sanroot:boot-guest";
const INITIATOR: &str = "iqn.2026-11.org.sanroot:boot-guest-initiator";

fn bin() -> PathBuf {
    std::env::var_os("SANROOT_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-unknown-linux-musl/release/sanroot")
        })
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A 96 MiB disk: MBR, one Linux partition at 1 MiB holding ext4.
fn disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    let f = fs::File::create(&p).expect("disk");
    f.set_len(96 << 20).expect("size");
    drop(f);
    let mut sf = Command::new("sfdisk");
    sf.args(["-q", p.to_str().expect("utf8")])
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"start=2048, type=83\n")
        .expect("sfdisk input");
    assert!(child.wait().expect("sfdisk").success());
    run(Command::new("mkfs.ext4").args([
        "-q",
        "-F",
        "-E",
        "offset=1048576",
        p.to_str().expect("utf8"),
        "94M",
    ]));
    p
}

/// The guest NIC as QEMU makes it, with the address iPXE would record.
fn guest_nic() -> sanroot::ibft::Nic {
    let mut n = nic(0);
    n.mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    n.ip = ip("10.0.2.15");
    n.prefix_len = 24;
    n.gateway = ip("10.0.2.2");
    n.primary_dns = ip("10.0.2.3");
    n.origin = Origin::Dhcp;
    n
}

struct Outcome {
    log: String,
}

impl Outcome {
    fn get(&self, key: &str) -> Option<String> {
        let k = format!("@{key}=");
        self.log.lines().find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&k).map(str::to_string))
        })
    }
    fn want(&self, key: &str, value: &str) {
        assert_eq!(
            self.get(key).as_deref(),
            Some(value),
            "@{key} in the guest log:\n{}",
            tail(&self.log)
        );
    }
    fn section(&self, name: &str) -> String {
        let start = format!("===SECTION {name}===");
        let Some(i) = self.log.find(&start) else {
            return String::new();
        };
        let rest = &self.log[i + start.len()..];
        let end = rest.find("===SECTION ").unwrap_or(rest.len());
        rest[..end].to_string()
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn boot(table: &[u8], bridge: &str, dir: &Path) -> Outcome {
    let t = dir.join("ibft.bin");
    fs::write(&t, table).expect("table");
    let o = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu/boot-guest"))
        .arg(&t)
        .arg(bridge)
        .arg(bin())
        .output()
        .expect("qemu/boot-guest");
    let log = String::from_utf8_lossy(&o.stdout).into_owned();
    let _ = fs::write(dir.join("console.log"), &log);
    assert!(
        o.status.success(),
        "the guest did not run to its end:\n{}\n{}",
        tail(&log),
        String::from_utf8_lossy(&o.stderr)
    );
    Outcome { log }
}

fn debugfs_cat(disk: &Path, file: &str, dir: &Path) -> String {
    let part = dir.join("part.img");
    run(Command::new("dd").args([
        &format!("if={}", disk.display()),
        &format!("of={}", part.display()),
        "bs=1M",
        "skip=1",
        "status=none",
    ]));
    let out = run(Command::new("debugfs").args([
        "-R",
        &format!("cat {file}"),
        part.to_str().expect("utf8"),
    ]));
    run(Command::new("e2fsck").args(["-fn", part.to_str().expect("utf8")]));
    out
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sanroot-bootg-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("tmpdir");
    d
}

fn kmsg_has(o: &Outcome, what: &str) -> bool {
    let k = o.section("kmsg");
    assert!(k.contains(what), "{what:?} not in the daemon's log:\n{k}");
    true
}

fn common_checks(o: &Outcome, dev_prefix: &str, tgt: &Tgtd, disk: &Path, dir: &Path) {
    o.want("boot_rc", "0");
    let dev = o.get("device").expect("device");
    assert!(dev.starts_with(dev_prefix), "{dev}");
    o.want("part", &format!("{dev}p1"));
    o.want("argv0", "@sanroot");
    // The hand-off: the record and the settings for the real root. No
    // udev runs in this guest: sanroot gives the NIC (virtio-net in slot 3
    // of QEMU's pc machine, kernel name eth0) the name udev would, ens3,
    // before bringing it up.
    let files = o.section("handoff");
    for f in [
        "/run/sanroot/boot.json",
        "/run/systemd/system/iscsi.service.d/50-sanroot.conf",
        "/run/systemd/system/open-iscsi.service.d/50-sanroot.conf",
        "/run/udev/rules.d/61-sanroot-ublk.rules",
        "/run/sendsigs.omit.d/sanroot",
        "/run/NetworkManager/conf.d/90-sanroot.conf",
        "/run/systemd/network/05-sanroot-ens3.network",
        "/run/systemd/system/networking.service.d/50-sanroot.conf",
        "/run/sanroot/ifupdown.env",
        "/run/systemd/system/ifup@ens3.service.d/50-sanroot.conf",
        "/run/net-ens3.conf",
        "/run/initramfs/open-iscsi.interface",
    ] {
        assert!(files.contains(f), "{f} missing from the hand-off:\n{files}");
    }
    let rec = o.section("boot.json");
    for k in [
        format!("\"target\": \"{IQN}\""),
        format!("\"initiator\": \"{INITIATOR}\""),
        format!("\"portal\": \"10.0.2.2:{}\"", tgt.port),
        "\"origin\": \"dhcp\"".to_string(),
        "\"10.0.2.15/24\"".to_string(),
    ] {
        assert!(rec.contains(&k), "{k} not in boot.json:\n{rec}");
    }
    let net = o.section("net");
    assert!(net.contains("inet 10.0.2.15/24"), "{net}");
    assert!(net.contains("default via 10.0.2.2"), "{net}");
    assert!(
        o.section("status").contains("boot disk: "),
        "{}",
        o.section("status")
    );
    // A second login to the boot target is refused.
    o.want("second_login_rc", "1");
    assert!(o.section("login").contains("is the boot disk's target"));
    // SIGTERM while mounted: ignored; detach refuses; the disk still reads.
    o.want("mount_rc", "0");
    // The daemon SIGKILLed mid-write; `boot --recover` takes the disk back.
    o.want("killed", "1");
    o.want("recover_rc", "0");
    o.want("recover_write_done", "1");
    o.want("recover_md5_ok", "1");
    o.want("new_daemon", "1");
    assert!(kmsg_has(o, "taken back from the daemon that died"));
    o.want("alive_after_term", "1");
    assert_ne!(o.get("detach_mounted_rc").as_deref(), Some("0"));
    o.want("read_after_term", "1");
    o.want("umount_rc", "0");
    o.want("detach_rc", "0");
    o.want("alive_after_detach", "0");
    let kmsg = o.section("kmsg");
    assert!(
        kmsg.contains(&format!("root disk {dev} is ready")),
        "{kmsg}"
    );
    assert!(kmsg.contains("ignored: the device is in use"), "{kmsg}");
    // The bytes written through the bridge are on the target, fsck clean.
    let token = o.get("token").expect("token");
    assert_eq!(debugfs_cat(disk, "/token", dir).trim(), token);
    // Logged out: no session left on the target.
    assert_eq!(tgt.sessions(1), 0);
}

#[test]
fn boot_takes_the_second_path_when_the_first_is_down_ublk_chap() {
    let dir = tmpdir("ublk");
    let tgt = Tgtd::start();
    tgt.target(1, IQN);
    let d = disk(&dir);
    tgt.lun_file(1, 1, &d);
    tgt.chap(1, "boot-user", "boot-secret-1234");
    // Path 1: nothing listens there. Path 2: the target, with CHAP.
    let mut first = with_chap(target(0), false);
    first.name = IQN.into();
    first.ip = ip("10.0.2.2");
    first.port = support::tgtd::free_port();
    first.chap_name = Some("boot-user".into());
    first.chap_secret = Some(sanroot::secret::Secret::from("boot-secret-1234"));
    let mut second = first.clone();
    second.index = 1;
    second.port = tgt.port;
    second.nic_index = 0;
    first.nic_index = 0;
    let mut t = table(vec![guest_nic()], vec![first, second]);
    if let Some(i) = t.initiator.as_mut() {
        i.name = Some(INITIATOR.into());
    }
    t.assign_boot_roles();
    let o = boot(&bytes(&t), "ublk", &dir);
    common_checks(&o, "/dev/ublkb", &tgt, &d, &dir);
    let kmsg = o.section("kmsg");
    assert!(kmsg.contains("logged in through path 2"), "{kmsg}");
    assert!(o.section("boot.json").contains("\"auth\": \"chap\""));
    assert!(
        !o.log.contains("boot-secret-1234"),
        "the CHAP secret reached the console"
    );
}

#[test]
fn boot_over_nbd_without_auth() {
    let dir = tmpdir("nbd");
    let tgt = Tgtd::start();
    tgt.target(1, IQN);
    let d = disk(&dir);
    tgt.lun_file(1, 1, &d);
    let mut tg = target(0);
    tg.name = IQN.into();
    tg.ip = ip("10.0.2.2");
    tg.port = tgt.port;
    let mut t = table(vec![guest_nic()], vec![tg]);
    if let Some(i) = t.initiator.as_mut() {
        i.name = Some(INITIATOR.into());
    }
    t.assign_boot_roles();
    let o = boot(&bytes(&t), "nbd", &dir);
    common_checks(&o, "/dev/nbd", &tgt, &d, &dir);
    assert!(o.section("boot.json").contains("\"auth\": \"none\""));
}
