//! `sanroot boot --dry-run` as the dracut module and a user run it: what it
//! would do for the six real iBFT captures, for synthetic two-path and VLAN
//! tables, and for dracut's netroot= command line; secrets never printed;
//! exit codes for broken or missing descriptions.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sanroot-boot-{}-{}", name, std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("tmpdir");
    d
}

fn boot(args: &[&str], cmdline: &str, dir: &Path) -> Output {
    boot_with_files(args, cmdline, dir, None, None)
}

/// `sanroot boot ARGS --cmdline` with the initramfs' secrets file and
/// open-iscsi's settings file at these paths (none: a path that does not
/// exist, so the host's own files never count).
fn boot_with_files(
    args: &[&str],
    cmdline: &str,
    dir: &Path,
    secrets: Option<&Path>,
    iscsi_initramfs: Option<&Path>,
) -> Output {
    let cl = dir.join("cmdline");
    fs::write(&cl, cmdline).expect("cmdline");
    Command::new(env!("CARGO_BIN_EXE_sanroot"))
        .arg("boot")
        .arg("--cmdline")
        .arg(&cl)
        .args(args)
        .env_remove("RUST_LOG")
        .env("SANROOT_HANDOFF_ROOT", dir)
        .env("SANROOT_RUN_DIR", dir.join("run-sanroot"))
        .env(
            "SANROOT_SECRETS_FILE",
            secrets.map_or_else(|| dir.join("no-secrets"), Path::to_path_buf),
        )
        .env(
            "SANROOT_ISCSI_INITRAMFS",
            iscsi_initramfs.map_or_else(|| dir.join("no-iscsi.initramfs"), Path::to_path_buf),
        )
        .output()
        .expect("run sanroot")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn meta(path: &Path) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .expect("meta")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(m: &'a [(String, String)], k: &str) -> &'a str {
    m.iter()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("meta has no {k}"))
}

#[test]
fn dry_run_on_every_captured_table() {
    let dir = tmpdir("fixtures");
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ibft");
    let mut seen = 0;
    for e in fs::read_dir(&fx).expect("fixtures") {
        let p = e.expect("entry").path();
        if p.extension().and_then(|x| x.to_str()) != Some("bin") {
            continue;
        }
        seen += 1;
        let m = meta(&p.with_extension("meta"));
        let o = boot(
            &["--dry-run", "--ibft-file", p.to_str().expect("utf8")],
            "BOOT_IMAGE=/vmlinuz root=UUID=0bd4f7a6 rd.iscsi.firmware rw",
            &dir,
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{}: {out}{err}", p.display());
        let auth = match get(&m, "auth") {
            "none" => "none",
            "chap" => "chap",
            "mutual" => "mutual-chap",
            a => panic!("unknown auth {a}"),
        };
        let want = format!(
            "  login: {} at {}:{} (auth {auth})",
            get(&m, "target_iqn"),
            get(&m, "target_ip"),
            get(&m, "target_port")
        );
        assert!(
            out.contains(&want),
            "{}: missing {want:?} in\n{out}",
            p.display()
        );
        assert!(out.contains(&format!("  LUN: {}", get(&m, "lun"))), "{out}");
        assert!(
            out.contains(&format!("initiator: {}", get(&m, "initiator_iqn"))),
            "{out}"
        );
        assert!(out.contains("source: the iBFT (file "), "{out}");
        assert!(out.contains("path 1 (boot):"), "{out}");
        // The NIC is named by its MAC (no such link here) or planned.
        assert!(
            out.contains(&format!("MAC {}", get(&m, "mac"))) || out.contains("network: "),
            "{out}"
        );
        for k in ["chap_secret", "rchap_secret"] {
            if let Some((_, s)) = m.iter().find(|(a, _)| a == k) {
                assert!(
                    !out.contains(s.as_str()) && !err.contains(s.as_str()),
                    "{k} printed"
                );
            }
        }
        // A dry run changes nothing: no hand-off.
        assert!(!dir.join("run/sanroot/boot.json").exists());
    }
    assert_eq!(seen, 6, "the six captured tables");
}

#[test]
fn dry_run_orders_the_boot_target_then_the_second_path() {
    let dir = tmpdir("two-paths");
    let mut second = with_chap(target(1), true);
    second.port = 3261;
    let mut t = table(
        vec![nic(0), nic(1)],
        vec![with_chap(target(0), false), second],
    );
    t.assign_boot_roles();
    let f = dir.join("ibft.bin");
    fs::write(&f, bytes(&t)).expect("table");
    let o = boot(
        &["--dry-run", "--ibft-file", f.to_str().expect("utf8")],
        "",
        &dir,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let p1 = out.find("path 1 (boot):").expect("path 1");
    let p2 = out
        .find("path 2 (a session of its own too; it must reach the same LU):")
        .expect("path 2");
    assert!(p1 < p2);
    assert!(
        out.contains("paths: a session on each of the 2 at once, one device"),
        "{out}"
    );
    assert!(
        out.contains("login: iqn.2026-11.org.sanroot:disk0 at 192.168.0.2:3260 (auth chap)"),
        "{out}"
    );
    assert!(
        out.contains("login: iqn.2026-11.org.sanroot:disk1 at 192.168.1.2:3261 (auth mutual-chap)"),
        "{out}"
    );
    assert!(
        out.contains("MAC 52:54:00:12:34:50") && out.contains("MAC 52:54:00:12:34:51"),
        "{out}"
    );
    for s in ["alice-secret-12", "bob-secret-3456"] {
        assert!(!out.contains(s) && !err.contains(s), "secret printed");
    }
}

#[test]
fn chap_without_a_secret_skips_that_target() {
    let dir = tmpdir("chap-no-secret");
    let mut broken = with_chap(target(0), false);
    broken.chap_secret = None;
    let mut t = table(vec![nic(0), nic(1)], vec![broken, target(1)]);
    t.assign_boot_roles();
    let f = dir.join("ibft.bin");
    fs::write(&f, bytes(&t)).expect("table");
    let o = boot(
        &["--dry-run", "--ibft-file", f.to_str().expect("utf8"), "-v"],
        "",
        &dir,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("no CHAP secret"), "{err}");
    assert!(out.contains("disk1") && !out.contains("disk0"), "{out}");
    // With no usable target at all: invalid iBFT, exit 4.
    let mut only = with_chap(target(0), false);
    only.chap_secret = None;
    let mut t = table(vec![nic(0)], vec![only]);
    t.assign_boot_roles();
    fs::write(&f, bytes(&t)).expect("table");
    let o = boot(
        &["--dry-run", "--ibft-file", f.to_str().expect("utf8")],
        "",
        &dir,
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("no usable target"), "{err}");
}

#[test]
fn broken_and_missing_tables_have_their_exit_codes() {
    let dir = tmpdir("broken");
    let f = dir.join("ibft.bin");
    let mut b = bytes(&simple());
    b[9] ^= 0x55; // checksum
    fs::write(&f, &b).expect("table");
    let o = boot(
        &["--dry-run", "--ibft-file", f.to_str().expect("utf8")],
        "",
        &dir,
    );
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    let o = boot(&["--dry-run", "--ibft-file", "/nonexistent/ibft"], "", &dir);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    // rd.sanroot=0: nothing to do, success.
    let o = boot(&["--dry-run"], "root=/dev/sda1 rd.sanroot=0", &dir);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
}

/// CHAP settings from the initramfs' secrets file (here
/// $SANROOT_SECRETS_FILE), not from /proc/cmdline: used, never printed;
/// a bad file is a usage error that names the line, not the value.
#[test]
fn secrets_file_gives_the_chap_settings() {
    let dir = tmpdir("secrets");
    let secrets = dir.join("secrets");
    fs::write(
        &secrets,
        "rd.iscsi.username=alice\nrd.iscsi.password=alice-secret-12\n\
         rd.iscsi.in.username=tgt\nrd.iscsi.in.password=tgt-secret-3456\n",
    )
    .unwrap();
    let cl = "root=LABEL=r ip=192.168.50.10::192.168.50.1:255.255.255.0:c:eth7:none \
              netroot=iscsi:192.168.50.2::3261::iqn.2026-11.org.sanroot:disk";
    let run = |file: &Path| boot_with_files(&["--dry-run"], cl, &dir, Some(file), None);
    let o = run(&secrets);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("login: iqn.2026-11.org.sanroot:disk at 192.168.50.2:3261 (auth mutual-chap)"),
        "{out}"
    );
    for s in ["alice-secret-12", "tgt-secret-3456"] {
        assert!(!out.contains(s) && !err.contains(s), "secret printed");
    }
    // Without the file: no CHAP.
    let o = run(&dir.join("none"));
    let (out, _) = text(&o);
    assert!(out.contains("(auth none)"), "{out}");
    // A line that is not key=value.
    fs::write(&secrets, "alice-secret-12\n").unwrap();
    let o = run(&secrets);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("line 1: not key=value"), "{err}");
    assert!(!err.contains("alice-secret-12") && !out.contains("alice-secret-12"));
}

#[test]
fn dry_run_from_dracut_netroot() {
    let dir = tmpdir("netroot");
    let cl = "root=LABEL=sanroot rd.iscsi.initiator=iqn.2026-11.org.sanroot:client \
              ip=192.168.50.10::192.168.50.1:255.255.255.0:client:eth7:none \
              netroot=iscsi:alice:alice-secret-12:bob:bob-secret-3456@192.168.50.2::3261::iqn.2026-11.org.sanroot:disk \
              netroot=iscsi:192.168.60.2::::iqn.2026-11.org.sanroot:disk rd.sanroot.bridge=nbd";
    let o = boot(&["--dry-run"], cl, &dir);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("source: the kernel command line (netroot=)"),
        "{out}"
    );
    assert!(
        out.contains("initiator: iqn.2026-11.org.sanroot:client"),
        "{out}"
    );
    assert!(
        out.contains("login: iqn.2026-11.org.sanroot:disk at 192.168.50.2:3261 (auth mutual-chap)"),
        "{out}"
    );
    assert!(
        out.contains("login: iqn.2026-11.org.sanroot:disk at 192.168.60.2:3260"),
        "{out}"
    );
    assert!(out.contains("interface eth7"), "{out}");
    assert!(out.contains("bridge: nbd"), "{out}");
    for s in ["alice-secret-12", "bob-secret-3456"] {
        assert!(!out.contains(s) && !err.contains(s), "secret printed");
    }
    // A host name cannot be resolved by a static binary: a usage error.
    let o = boot(
        &["--dry-run"],
        "netroot=iscsi:san.example::::iqn.2026-11.x:y",
        &dir,
    );
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}

/// iPXE writes CHAP only into the entry of a path that logged in: a path
/// that was down at boot has none. It borrows the CHAP of the entry for
/// the same target name (else it could never log in again).
#[test]
fn a_path_without_chap_borrows_it_from_the_same_target() {
    let dir = tmpdir("borrow-chap");
    let first = with_chap(target(0), false);
    let mut second = target(1);
    second.name = first.name.clone();
    second.port = 3261;
    let mut t = table(vec![nic(0), nic(1)], vec![first, second]);
    t.assign_boot_roles();
    let f = dir.join("ibft.bin");
    fs::write(&f, bytes(&t)).expect("table");
    let o = boot(
        &["--dry-run", "--ibft-file", f.to_str().expect("utf8")],
        "",
        &dir,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(out.matches("(auth chap)").count(), 2, "{out}");
    assert!(!out.contains("(auth none)"), "{out}");
}

/// Debian open-iscsi's initramfs settings (issue 17): /etc/iscsi.initramfs
/// (here $SANROOT_ISCSI_INITRAMFS) names the target, its two portals and
/// the CHAP account; the command line's `iscsi_target_port=` wins over the
/// file's. Two paths to LUN 0, the secret never printed; a bad line is a
/// usage error naming the file and line, not the value.
#[test]
fn open_iscsi_initramfs_settings() {
    let dir = tmpdir("open-iscsi");
    let file = dir.join("iscsi.initramfs");
    fs::write(
        &file,
        "# written by the installer\n\
         ISCSI_TARGET_NAME=iqn.2026-11.org.sanroot:disk\n\
         export ISCSI_TARGET_IP=\"192.168.50.2 192.168.50.3\"\n\
         ISCSI_TARGET_PORT=3260\n\
         ISCSI_USERNAME='alice'\n\
         ISCSI_PASSWORD='alice-secret-12'\n",
    )
    .unwrap();
    let cl = "root=LABEL=r ip=192.168.50.10::192.168.50.1:255.255.255.0:c:eth7:none iscsi_target_port=3261";
    let run = |file: &Path| boot_with_files(&["--dry-run"], cl, &dir, None, Some(file));
    let o = run(&file);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    for portal in ["192.168.50.2:3261", "192.168.50.3:3261"] {
        assert!(
            out.contains(&format!(
                "login: iqn.2026-11.org.sanroot:disk at {portal} (auth chap)"
            )),
            "{portal}: {out}"
        );
    }
    assert!(
        !out.contains("alice-secret-12") && !err.contains("alice-secret-12"),
        "secret printed"
    );
    fs::write(
        &file,
        "ISCSI_TARGET_NAME=iqn.2026-11.org.sanroot:disk\nISCSI_PASSWORD=$(cat alice-secret-12)\n",
    )
    .unwrap();
    let o = run(&file);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("alice-secret-12"), "secret printed: {err}");
}
