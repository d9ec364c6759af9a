//! `sanroot node export` as an installer runs it (issue 13): the boot
//! target's records are written `node.startup = manual` with a comment
//! saying why, whoever names it (--boot-target, /run/sanroot/boot.json,
//! the iBFT); the other targets get --startup; and the records go to the
//! database the installed open-iscsi reads (told by its iscsiadm), unless
//! --dir says where.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// In the iBFT (sys/firmware/ibft/target0/target-name).
const IBFT: &str = "iqn.2026-11.org.sanroot:ibft-root";
/// In /run/sanroot/boot.json (spelt in upper case there).
const HANDOFF: &str = "iqn.2026-11.org.sanroot:handoff-root";
/// Given with --boot-target.
const GIVEN: &str = "iqn.2026-11.org.sanroot:given-root";
/// Not a boot target.
const OTHER: &str = "iqn.2026-11.org.sanroot:data";

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sanroot-node-export-{}-{}",
        name,
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("tmpdir");
    d
}

/// A record as `sanroot discover` saves it (src/nodes.rs `save`).
fn saved(state: &Path, target: &str, host: &str) {
    let d = state.join("nodes").join(target);
    fs::create_dir_all(&d).expect("state dir");
    fs::write(
        d.join(format!("{host},3260,1")),
        format!(
            "target = {target}\nhost = {host}\nport = 3260\ntpgt = 1\ndiscovery_host = 10.0.2.2\ndiscovery_port = 3260\n"
        ),
    )
    .expect("saved record");
}

fn state_with(targets: &[&str]) -> PathBuf {
    let state = tmpdir(&format!("state-{}", targets.len()));
    for (i, t) in targets.iter().enumerate() {
        saved(&state, t, &format!("10.0.2.{}", i + 2));
    }
    state
}

fn export(state: &Path, host_root: &Path, args: &[&str]) -> (Output, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sanroot"))
        .args(["node", "export", "--host-root"])
        .arg(host_root)
        .args(args)
        .env_remove("RUST_LOG")
        .env("SANROOT_STATE_DIR", state)
        .output()
        .expect("run sanroot");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o, out, err)
}

/// The node record file of `target` (saved with `host`) under `db`.
fn node_file(db: &Path, target: &str, host: &str) -> PathBuf {
    db.join("nodes")
        .join(target)
        .join(format!("{host},3260,1"))
        .join("default")
}

/// `key = value` as open-iscsi's parser reads it ('#' lines skipped).
fn value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

fn assert_boot_record(path: &Path, target: &str, source: &str) {
    let t = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(value(&t, "node.startup").as_deref(), Some("manual"), "{t}");
    assert_eq!(
        value(&t, "node.conn[0].startup").as_deref(),
        Some("manual"),
        "{t}"
    );
    assert_eq!(value(&t, "node.name").as_deref(), Some(target), "{t}");
    let mut lines = t.lines();
    assert_eq!(lines.next(), Some("# BEGIN RECORD 2.1.8"));
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "# sanroot: {target} is the target this machine boots from ("
        )) && first.contains(source),
        "{t}"
    );
    assert!(t.contains("Keep node.startup = manual."), "{t}");
    assert!(!t.contains("automatic"), "{t}");
}

fn assert_other_record(path: &Path, startup: &str) {
    let t = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(value(&t, "node.startup").as_deref(), Some(startup), "{t}");
    assert_eq!(
        value(&t, "node.conn[0].startup").as_deref(),
        Some(startup),
        "{t}"
    );
    assert!(!t.contains("# sanroot"), "{t}");
}

fn fake_iscsiadm(root: &Path, strings: &[&str]) {
    let p = root.join("usr/sbin/iscsiadm");
    fs::create_dir_all(p.parent().expect("parent")).expect("usr/sbin");
    let mut bytes = b"\x7fELF\x02\x01\x01\0".to_vec();
    for s in strings {
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
    }
    fs::write(p, bytes).expect("iscsiadm");
}

#[test]
fn boot_targets_are_manual_with_a_comment_and_others_automatic() {
    let state = state_with(&[IBFT, HANDOFF, GIVEN, OTHER]);
    let host = tmpdir("host");
    fs::create_dir_all(host.join("run/sanroot")).expect("run");
    let rec = serde_json::json!({
        "version": 1, "source": "ibft: test", "target": HANDOFF.to_uppercase(),
        "portal": "10.0.2.3:3260", "lun": 1, "initiator": "iqn.2026-11.org.sanroot:machine",
        "isid": "80aabbccddee", "tsih": 1, "device": "/dev/ublkb0",
        "partitions": ["/dev/ublkb0p1"], "bridge": "ublk", "pid": 1, "nic": null, "auth": "none"
    });
    fs::write(host.join("run/sanroot/boot.json"), rec.to_string()).expect("boot.json");
    fs::create_dir_all(host.join("sys/firmware/ibft/target0")).expect("ibft");
    fs::write(
        host.join("sys/firmware/ibft/target0/target-name"),
        format!("{IBFT}\n"),
    )
    .expect("target-name");
    let db = tmpdir("db");
    let (o, out, err) = export(
        &state,
        &host,
        &[
            "--dir",
            db.to_str().expect("utf-8"),
            "--boot-target",
            &GIVEN.to_uppercase(),
        ],
    );
    assert!(o.status.success(), "{err}");

    let ibft = node_file(&db, IBFT, "10.0.2.2");
    let handoff = node_file(&db, HANDOFF, "10.0.2.3");
    let given = node_file(&db, GIVEN, "10.0.2.4");
    let other = node_file(&db, OTHER, "10.0.2.5");
    assert_boot_record(&ibft, IBFT, "the iBFT");
    assert_boot_record(&handoff, HANDOFF, "/run/sanroot/boot.json");
    assert_boot_record(&given, GIVEN, "--boot-target");
    assert_other_record(&other, "automatic");
    let st = db.join("send_targets/10.0.2.2,3260/st_config");
    assert!(
        fs::read_to_string(&st)
            .expect("st_config")
            .contains("discovery.sendtargets.address = 10.0.2.2\n")
    );

    // Every file on stdout, one line per forced record on stderr.
    for f in [&ibft, &handoff, &given, &other, &st] {
        assert!(
            out.lines().any(|l| l == f.to_str().expect("utf-8")),
            "{out}"
        );
    }
    let forced: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("node.startup = manual"))
        .collect();
    assert_eq!(forced.len(), 3, "{err}");
    for f in [&ibft, &handoff, &given] {
        assert!(
            forced
                .iter()
                .any(|l| l.contains(f.to_str().expect("utf-8")) && l.contains("boot target")),
            "{err}"
        );
    }
    assert!(!err.contains(other.to_str().expect("utf-8")), "{err}");

    // --startup onboot: only the others get it.
    let db2 = tmpdir("db-onboot");
    let (o, _, err) = export(
        &state,
        &host,
        &["--dir", db2.to_str().expect("utf-8"), "--startup", "onboot"],
    );
    assert!(o.status.success(), "{err}");
    assert_boot_record(&node_file(&db2, IBFT, "10.0.2.2"), IBFT, "the iBFT");
    assert_other_record(&node_file(&db2, GIVEN, "10.0.2.4"), "onboot");
    assert_other_record(&node_file(&db2, OTHER, "10.0.2.5"), "onboot");
    for d in [state, host, db, db2] {
        let _ = fs::remove_dir_all(d);
    }
}

/// `--root` with the installed iscsiadm naming `string`: the records land
/// in ROOT/`db` and nowhere else.
fn layout(name: &str, string: &str, db: &str, not: &str) {
    let state = tmpdir(&format!("state-{name}"));
    saved(&state, OTHER, "10.0.2.5");
    saved(&state, GIVEN, "10.0.2.4");
    let empty = tmpdir(&format!("nohost-{name}"));
    let root = tmpdir(&format!("root-{name}"));
    fake_iscsiadm(&root, &[string]);
    let (o, out, err) = export(
        &state,
        &empty,
        &[
            "--root",
            root.to_str().expect("utf-8"),
            "--boot-target",
            GIVEN,
        ],
    );
    assert!(o.status.success(), "{err}");
    let other = node_file(&root.join(db), OTHER, "10.0.2.5");
    assert_other_record(&other, "automatic");
    assert_boot_record(
        &node_file(&root.join(db), GIVEN, "10.0.2.4"),
        GIVEN,
        "--boot-target",
    );
    assert!(
        root.join(db)
            .join("send_targets/10.0.2.2,3260/st_config")
            .is_file()
    );
    assert!(!root.join(not).exists(), "{out}");
    assert!(
        out.lines().any(|l| l == other.to_str().expect("utf-8")),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "node export: open-iscsi at {} keeps its records in /{db}",
            root.join("usr/sbin/iscsiadm").display()
        )),
        "{err}"
    );
    for d in [state, empty, root] {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn root_with_open_iscsi_2_1_9_or_later_gets_var_lib_iscsi() {
    layout("var", "/var/lib/iscsi/nodes", "var/lib/iscsi", "etc/iscsi");
}

#[test]
fn root_with_open_iscsi_before_2_1_9_gets_etc_iscsi() {
    layout("etc", "/etc/iscsi/nodes/%s", "etc/iscsi", "var/lib/iscsi");
}

#[test]
fn root_without_a_telling_iscsiadm_goes_by_the_directories() {
    let state = tmpdir("state-fallback");
    saved(&state, OTHER, "10.0.2.5");
    let empty = tmpdir("nohost-fallback");
    let root = tmpdir("root-fallback");
    fake_iscsiadm(&root, &["/var/lib/iscsi/nodes", "/etc/iscsi/nodes"]);
    fs::create_dir_all(root.join("var/lib/iscsi/nodes")).expect("nodes");
    let (o, _, err) = export(&state, &empty, &["--root", root.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{err}");
    assert_other_record(
        &node_file(&root.join("var/lib/iscsi"), OTHER, "10.0.2.5"),
        "automatic",
    );
    assert!(!root.join("etc/iscsi").exists());
    assert!(err.contains("names both"), "{err}");
    for d in [state, empty, root] {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn dir_overrides_the_detected_layout() {
    let state = tmpdir("state-dir");
    saved(&state, OTHER, "10.0.2.5");
    let empty = tmpdir("nohost-dir");
    let root = tmpdir("root-dir");
    fake_iscsiadm(&root, &["/var/lib/iscsi/nodes"]);
    let dir = tmpdir("dir-dir");
    let (o, _, err) = export(
        &state,
        &empty,
        &[
            "--root",
            root.to_str().expect("utf-8"),
            "--dir",
            dir.to_str().expect("utf-8"),
        ],
    );
    assert!(o.status.success(), "{err}");
    assert_other_record(&node_file(&dir, OTHER, "10.0.2.5"), "automatic");
    assert!(!root.join("var/lib/iscsi").exists());
    assert!(!root.join("etc/iscsi").exists());
    assert!(!err.contains("keeps its records"), "{err}");
    for d in [state, empty, root, dir] {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn a_missing_root_is_a_usage_error() {
    let state = tmpdir("state-noroot");
    saved(&state, OTHER, "10.0.2.5");
    let empty = tmpdir("nohost-noroot");
    let root = empty.join("no-such-root");
    let (o, _, err) = export(&state, &empty, &["--root", root.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not a directory"), "{err}");
    assert!(!root.exists());
    for d in [state, empty] {
        let _ = fs::remove_dir_all(d);
    }
}
