//! `sanroot boot --pre-pivot SYSROOT` (issue 13): the boot target's
//! open-iscsi node records are hidden from the real root by real tmpfs
//! mounts, in a private mount namespace (`unshare -m`) so that nothing
//! leaks to the host. Needs root; under CI=true anything short of root and
//! unshare is a failure, not a skip.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

const BOOT: &str = "iqn.2026-11.org.sanroot:sanboot-root";
const OTHER: &str = "iqn.2026-11.org.sanroot:data";

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sanroot-hide-{}-{}", name, std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("tmpdir");
    d
}

/// Whether this machine can run the test; under CI it must.
fn can_mount() -> bool {
    let ok = nix::unistd::Uid::effective().is_root()
        && Command::new("unshare")
            .args(["-m", "--propagation", "private", "true"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: this test needs root and unshare(1)"
        );
        eprintln!("skipped: needs root and unshare(1)");
    }
    ok
}

fn record(db: &Path, target: &str, portal: &str, startup: &str) {
    let d = db.join(target).join(portal);
    fs::create_dir_all(&d).unwrap();
    fs::write(
        d.join("default"),
        format!(
            "# BEGIN RECORD 2.1.8\nnode.name = {target}\nnode.startup = {startup}\n# END RECORD\n"
        ),
    )
    .unwrap();
}

fn boot_json(run: &Path, target: &str) {
    fs::create_dir_all(run.join("run/sanroot")).unwrap();
    let rec = serde_json::json!({
        "version": 1, "source": "ibft: test", "target": target, "portal": "10.0.2.2:3260",
        "lun": 1, "initiator": "iqn.2026-11.org.sanroot:machine", "isid": "80aabbccddee",
        "tsih": 1, "device": "/dev/ublkb0", "partitions": ["/dev/ublkb0p1"], "bridge": "ublk",
        "pid": 1, "nic": null, "auth": "chap"
    });
    fs::write(run.join("run/sanroot/boot.json"), rec.to_string()).unwrap();
}

/// Run `sanroot boot --pre-pivot SYSROOT` and then `script` (sh) in one
/// private mount namespace; returns (exit status of sanroot, script's
/// stdout, stderr of both).
fn in_namespace(run: &Path, sysroot: &Path, script: &str) -> (i32, String, String) {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "\"$SANROOT\" boot --pre-pivot \"$SYSROOT\"; echo \"rc=$?\"; {script}"
        ))
        .env("SANROOT", env!("CARGO_BIN_EXE_sanroot"))
        .env("SYSROOT", sysroot)
        .env("SANROOT_HANDOFF_ROOT", run)
        .env("RUST_LOG", "info")
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rc = stdout
        .lines()
        .find_map(|l| l.strip_prefix("rc="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rc: {stdout}\n{stderr}"));
    (rc, stdout, stderr)
}

fn hidden(run: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("run/sanroot/boot.json")).unwrap())
            .unwrap();
    v["hidden_node_records"]
        .as_array()
        .expect("hidden_node_records")
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_boot_targets_records_are_hidden_in_both_databases() {
    if !can_mount() {
        return;
    }
    let d = tmpdir("both");
    let (run, sys) = (d.join("run"), d.join("sysroot"));
    boot_json(&run, BOOT);
    // Debian 12's database with the installer's record and another
    // target's; Debian 13's with the boot target spelt in capitals.
    record(
        &sys.join("etc/iscsi/nodes"),
        BOOT,
        "10.0.2.2,3260,1",
        "automatic",
    );
    record(
        &sys.join("etc/iscsi/nodes"),
        OTHER,
        "10.0.2.2,3260,1",
        "automatic",
    );
    record(
        &sys.join("var/lib/iscsi/nodes"),
        &BOOT.to_ascii_uppercase(),
        "10.0.2.3,3260,2",
        "automatic",
    );
    let (rc, out, err) = in_namespace(
        &run,
        &sys,
        &format!(
            "echo boot-etc=$(ls -A \"$SYSROOT/etc/iscsi/nodes/{BOOT}\" | wc -l); \
             echo boot-var=$(ls -A \"$SYSROOT/var/lib/iscsi/nodes/{up}\" | wc -l); \
             echo other=$(ls -A \"$SYSROOT/etc/iscsi/nodes/{OTHER}\" | wc -l); \
             if mkdir \"$SYSROOT/etc/iscsi/nodes/{BOOT}/new\" 2>/dev/null; then echo write=yes; else echo write=no; fi; \
             echo source=$(findmnt -n -o SOURCE,FSTYPE \"$SYSROOT/etc/iscsi/nodes/{BOOT}\")",
            up = BOOT.to_ascii_uppercase()
        ),
    );
    assert_eq!(rc, 0, "{out}\n{err}");
    for want in [
        "boot-etc=0",
        "boot-var=0",
        "other=1",
        "write=no",
        "source=sanroot-hidden tmpfs",
    ] {
        assert!(out.lines().any(|l| l == want), "{want}:\n{out}\n{err}");
    }
    assert_eq!(
        hidden(&run),
        [
            format!("/etc/iscsi/nodes/{BOOT}"),
            format!("/var/lib/iscsi/nodes/{}", BOOT.to_ascii_uppercase())
        ]
    );
    assert!(err.contains("hidden for this boot"), "{err}");
    // Nothing of it is left outside the namespace, and nothing was written.
    assert_eq!(
        fs::read_dir(sys.join("etc/iscsi/nodes").join(BOOT))
            .unwrap()
            .count(),
        1
    );
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn symlinks_stay_inside_the_sysroot_and_are_not_mounted_over() {
    if !can_mount() {
        return;
    }
    let d = tmpdir("links");
    let (run, sys) = (d.join("run"), d.join("sysroot"));
    boot_json(&run, BOOT);
    // /etc/iscsi -> /var/lib/iscsi, absolute as a package would make it:
    // resolved inside the sysroot, and the one directory mounted over once.
    record(
        &sys.join("var/lib/iscsi/nodes"),
        BOOT,
        "10.0.2.2,3260,1",
        "automatic",
    );
    fs::create_dir_all(sys.join("etc")).unwrap();
    symlink("/var/lib/iscsi", sys.join("etc/iscsi")).unwrap();
    let (rc, out, err) = in_namespace(
        &run,
        &sys,
        &format!("echo mounts=$(findmnt -n -r -o TARGET | grep -c '{BOOT}')"),
    );
    assert_eq!(rc, 0, "{out}\n{err}");
    assert!(out.lines().any(|l| l == "mounts=1"), "{out}\n{err}");
    assert_eq!(hidden(&run), [format!("/etc/iscsi/nodes/{BOOT}")]);

    // A target entry that is a symlink (to anywhere) is not followed: it
    // is reported, and the exit status says so.
    let d2 = tmpdir("entrylink");
    let (run2, sys2) = (d2.join("run"), d2.join("sysroot"));
    boot_json(&run2, BOOT);
    fs::create_dir_all(sys2.join("etc/iscsi/nodes")).unwrap();
    fs::create_dir_all(d2.join("elsewhere")).unwrap();
    symlink(
        d2.join("elsewhere"),
        sys2.join("etc/iscsi/nodes").join(BOOT),
    )
    .unwrap();
    let (rc, out, err) = in_namespace(
        &run2,
        &sys2,
        "echo mounts=$(findmnt -n -r -o SOURCE | grep -c sanroot-hidden)",
    );
    assert_eq!(rc, 1, "{out}\n{err}");
    assert!(out.lines().any(|l| l == "mounts=0"), "{out}\n{err}");
    assert!(err.contains("cannot hide"), "{err}");
    assert!(hidden(&run2).is_empty());
    let _ = fs::remove_dir_all(&d);
    let _ = fs::remove_dir_all(&d2);
}

#[test]
fn without_a_sanroot_boot_there_is_nothing_to_do() {
    if !can_mount() {
        return;
    }
    let d = tmpdir("none");
    let sys = d.join("sysroot");
    record(
        &sys.join("etc/iscsi/nodes"),
        BOOT,
        "10.0.2.2,3260,1",
        "automatic",
    );
    let (rc, out, err) = in_namespace(
        &d.join("run"),
        &sys,
        "echo mounts=$(findmnt -n -r -o SOURCE | grep -c sanroot-hidden)",
    );
    assert_eq!(rc, 0, "{out}\n{err}");
    assert!(out.lines().any(|l| l == "mounts=0"), "{out}\n{err}");
    let _ = fs::remove_dir_all(&d);
}
