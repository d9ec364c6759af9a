//! The initiator engine and the shell tools against a real, independent
//! target: a private tgtd on 127.0.0.1 per test.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use sanroot::iscsi::chap::{AuthConfig, MutualConfig};
use sanroot::iscsi::initiator::{self, InitiatorConfig};
use sanroot::iscsi::login::{LoginError, Portal};
use sanroot::iscsi::negotiate::DigestOffer;
use sanroot::lun::{Lun, LunError};
use sanroot::secret::Secret;
use support::tgtd::{LunSpec, Tgtd};

const IQN: &str = "iqn.2026-11.org.sanroot.test:disk";
const INITIATOR: &str = "iqn.2026-11.org.sanroot.test:initiator";

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn mib(n: u64) -> LunSpec {
    LunSpec {
        size: n << 20,
        ..Default::default()
    }
}

fn portal(t: &Tgtd) -> Portal {
    Portal::new("127.0.0.1", t.port)
}

fn open(t: &Tgtd, cfg: &InitiatorConfig, lun: u64) -> Lun {
    let c = initiator::connect(&portal(t), IQN, cfg, None).expect("login");
    Lun::open(Arc::new(c.session), lun).expect("open LUN")
}

/// Write `data` at `lba`, read it back, and check the backing file.
fn round_trip(lun: &Lun, backing: &Path, lba: u64, data: Vec<u8>) {
    let bs = lun.info.block_size() as usize;
    let (r, _) = lun.write(lba, data.clone(), false);
    r.expect("write");
    lun.flush().expect("flush");
    let (r, back) = lun.read(lba, vec![0u8; data.len()]);
    r.expect("read");
    assert!(back == data, "read back what was written");
    let file = std::fs::read(backing).expect("backing file");
    let at = lba as usize * bs;
    assert!(
        file[at..at + data.len()] == data[..],
        "the target's backing file holds exactly the bytes"
    );
}

#[test]
fn login_read_write_round_trip() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t.lun(1, 1, &mib(64)).unwrap();
    let lun = open(&t, &InitiatorConfig::new(INITIATOR), 1);
    assert_eq!(lun.info.block_size(), 512);
    assert_eq!(lun.info.blocks(), (64 << 20) / 512);
    assert_eq!(lun.info.inquiry.vendor, "IET");
    assert!(!lun.info.write_protected);
    round_trip(&lun, &backing, 2048, pattern(1 << 20, 7));
    // Odd sizes and the last block of the LU.
    round_trip(&lun, &backing, 1, pattern(512, 1));
    round_trip(&lun, &backing, lun.info.blocks() - 3, pattern(3 * 512, 2));
}

#[test]
fn large_transfers_need_r2t() {
    // tgtd's FirstBurstLength is 64 KiB: an 8 MiB write is mostly sent in
    // answer to R2Ts, and an 8 MiB read comes as many Data-In PDUs.
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t.lun(1, 1, &mib(64)).unwrap();
    let lun = open(&t, &InitiatorConfig::new(INITIATOR), 1);
    round_trip(&lun, &backing, 0, pattern(8 << 20, 3));
    // Many writes in flight at once, each needing R2Ts.
    let lun = Arc::new(lun);
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let l = Arc::clone(&lun);
            std::thread::spawn(move || {
                let d = pattern(1 << 20, i as u8);
                let (r, _) = l.write(20480 + i * 2048, d.clone(), false);
                r.expect("parallel write");
                let (r, back) = l.read(20480 + i * 2048, vec![0u8; 1 << 20]);
                r.expect("parallel read");
                assert!(back == d);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
}

#[test]
fn digests_on_and_off() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t.lun(1, 1, &mib(16)).unwrap();
    // tgtd offers only None unless told otherwise: requiring CRC32C then
    // fails with a message naming the key.
    let mut cfg = InitiatorConfig::new(INITIATOR);
    cfg.header_digest = DigestOffer::RequireCrc32c;
    let e = initiator::connect(&portal(&t), IQN, &cfg, None)
        .err()
        .expect("digest mismatch");
    assert!(e.to_string().contains("HeaderDigest"), "{e}");
    for key in ["HeaderDigest", "DataDigest"] {
        t.adm(&[
            "--mode",
            "target",
            "--op",
            "update",
            "--tid",
            "1",
            "--name",
            key,
            "--value",
            "CRC32C,None",
        ]);
    }
    for (h, d) in [
        (DigestOffer::RequireCrc32c, DigestOffer::RequireCrc32c),
        (DigestOffer::RequireCrc32c, DigestOffer::None),
        (DigestOffer::None, DigestOffer::RequireCrc32c),
        (DigestOffer::PreferCrc32c, DigestOffer::PreferCrc32c),
    ] {
        let mut cfg = InitiatorConfig::new(INITIATOR);
        cfg.header_digest = h;
        cfg.data_digest = d;
        let c = initiator::connect(&portal(&t), IQN, &cfg, None).expect("login with digests");
        assert!(c.negotiated.contains("HeaderDigest="), "{}", c.negotiated);
        let lun = Lun::open(Arc::new(c.session), 1).expect("open");
        round_trip(&lun, &backing, 100, pattern(300 * 1024, 9));
    }
}

#[test]
fn several_luns_readonly_and_4k_blocks() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let b1 = t.lun(1, 1, &mib(32)).unwrap();
    let b2 = t
        .lun(
            1,
            2,
            &LunSpec {
                size: 32 << 20,
                block_size: Some(4096),
                ..Default::default()
            },
        )
        .unwrap();
    t.lun(
        1,
        3,
        &LunSpec {
            size: 8 << 20,
            readonly: true,
            ..Default::default()
        },
    );
    t.lun(
        1,
        4,
        &LunSpec {
            null: true,
            ..Default::default()
        },
    );
    let c = initiator::connect(&portal(&t), IQN, &InitiatorConfig::new(INITIATOR), None)
        .expect("login");
    let s = Arc::new(c.session);
    let luns = sanroot::lun::report_luns(&s).expect("REPORT LUNS");
    assert_eq!(luns, vec![0, 1, 2, 3, 4]);
    // No LUN named (open-iscsi's words): LUN 0 is tgtd's controller, so
    // the first disk; a disk named as preferred is kept.
    assert_eq!(sanroot::lun::pick_disk(&s, 0).expect("pick a disk"), 1);
    assert_eq!(sanroot::lun::pick_disk(&s, 2).expect("keep LUN 2"), 2);

    let l1 = Lun::open(Arc::clone(&s), 1).unwrap();
    round_trip(&l1, &b1, 7, pattern(4096, 4));

    let l2 = Lun::open(Arc::clone(&s), 2).unwrap();
    assert_eq!(l2.info.block_size(), 4096);
    assert_eq!(l2.info.blocks(), (32 << 20) / 4096);
    round_trip(&l2, &b2, 5, pattern(3 * 4096, 5));
    let (r, _) = l2.write(0, vec![0u8; 512], false);
    assert!(matches!(r, Err(LunError::Unaligned { .. })), "{r:?}");

    let l3 = Lun::open(Arc::clone(&s), 3).unwrap();
    assert!(
        l3.info.write_protected,
        "tgtd readonly=1 shows as write-protected"
    );
    let (r, _) = l3.write(0, vec![1u8; 512], false);
    assert!(matches!(r, Err(LunError::ReadOnly)), "{r:?}");
    let (r, _) = l3.read(0, vec![0u8; 512]);
    r.expect("read-only LUN still reads");

    let l4 = Lun::open(Arc::clone(&s), 4).unwrap();
    let (r, _) = l4.write(0, pattern(65536, 1), false);
    r.expect("null LUN takes writes");
    let (r, b) = l4.read(0, vec![0xffu8; 65536]);
    r.expect("null LUN reads");
    assert_eq!(b.len(), 65536);

    // Past the end is refused before anything is sent.
    let (r, _) = l1.read(l1.info.blocks(), vec![0u8; 512]);
    assert!(matches!(r, Err(LunError::OutOfRange { .. })), "{r:?}");
}

/// A target with no disk at all (tgtd's controller LUN 0 only): no LUN is
/// picked, and the error lists what each LUN is.
#[test]
fn no_disk_to_pick() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let c = initiator::connect(&portal(&t), IQN, &InitiatorConfig::new(INITIATOR), None)
        .expect("login");
    let s = Arc::new(c.session);
    match sanroot::lun::pick_disk(&s, 0) {
        Err(e @ LunError::NoDisk { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("LUN 0 peripheral type 0x0c qualifier 0") && m.contains("name the LUN"),
                "{m}"
            );
        }
        r => panic!("expected NoDisk, got {r:?}"),
    }
}

fn chap_cfg(user: &str, secret: &str, mutual: Option<(&str, &str)>) -> InitiatorConfig {
    let mut cfg = InitiatorConfig::new(INITIATOR);
    cfg.auth = Some(AuthConfig {
        user: user.into(),
        secret: Secret::from(secret),
        mutual: mutual.map(|(n, s)| MutualConfig {
            target_name: Some(n.into()),
            secret: Secret::from(s),
        }),
    });
    cfg
}

#[test]
fn chap_one_way_and_wrong_secret() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t.lun(1, 1, &mib(8)).unwrap();
    t.chap(1, "alice", "alice-secret-12");
    let lun = open(&t, &chap_cfg("alice", "alice-secret-12", None), 1);
    round_trip(&lun, &backing, 0, pattern(8192, 1));

    let e = initiator::connect(
        &portal(&t),
        IQN,
        &chap_cfg("alice", "wrong-secret-99", None),
        None,
    )
    .err()
    .expect("a wrong secret must fail");
    assert!(
        matches!(
            e,
            LoginError::Status {
                class: 2,
                detail: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(
        !e.to_string().contains("wrong-secret-99"),
        "the secret is not in the message"
    );

    let e = initiator::connect(&portal(&t), IQN, &InitiatorConfig::new(INITIATOR), None)
        .err()
        .expect("no credentials must fail");
    assert!(
        e.to_string().to_lowercase().contains("chap") || e.to_string().contains("authentication"),
        "{e}"
    );
}

#[test]
fn chap_mutual_and_wrong_target_secret() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t.lun(1, 1, &mib(8)).unwrap();
    t.chap(1, "alice", "alice-secret-12");
    t.chap_outgoing(1, "target-bob", "bob-secret-3456");
    let lun = open(
        &t,
        &chap_cfg(
            "alice",
            "alice-secret-12",
            Some(("target-bob", "bob-secret-3456")),
        ),
        1,
    );
    round_trip(&lun, &backing, 0, pattern(8192, 2));

    // We expect another secret from the target: it cannot prove itself.
    let e = initiator::connect(
        &portal(&t),
        IQN,
        &chap_cfg(
            "alice",
            "alice-secret-12",
            Some(("target-bob", "not-bobs-secret")),
        ),
        None,
    )
    .err()
    .expect("a target answering with another secret must be refused");
    assert!(matches!(e, LoginError::Auth(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(
        !msg.contains("bob-secret-3456") && !msg.contains("not-bobs-secret"),
        "{msg}"
    );

    // Wrong expected name.
    let e = initiator::connect(
        &portal(&t),
        IQN,
        &chap_cfg(
            "alice",
            "alice-secret-12",
            Some(("target-carol", "bob-secret-3456")),
        ),
        None,
    )
    .err()
    .expect("wrong target name must be refused");
    assert!(
        e.to_string().contains("target-carol") || e.to_string().contains("name"),
        "{e}"
    );
}

#[test]
fn unknown_target_is_a_clear_error() {
    let t = Tgtd::start();
    t.target(1, IQN);
    t.lun(1, 1, &mib(8));
    let e = initiator::connect(
        &portal(&t),
        "iqn.2026-11.org.sanroot.test:nope",
        &InitiatorConfig::new(INITIATOR),
        None,
    )
    .err()
    .expect("unknown target");
    let msg = e.to_string();
    assert!(
        msg.contains("not found") && msg.contains("iqn.2026-11.org.sanroot.test:nope"),
        "{msg}"
    );
    // Nobody listening.
    let dead = Portal::new("127.0.0.1", support::tgtd::free_port());
    let e = initiator::connect(&dead, IQN, &InitiatorConfig::new(INITIATOR), None)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(e.is_transient());
}

#[test]
fn logout_leaves_no_session() {
    let t = Tgtd::start();
    t.target(1, IQN);
    t.lun(1, 1, &mib(8));
    let c = initiator::connect(&portal(&t), IQN, &InitiatorConfig::new(INITIATOR), None)
        .expect("login");
    assert_eq!(t.sessions(1), 1);
    c.session
        .ping(Duration::from_secs(5))
        .expect("NOP-Out ping answered");
    c.session.logout(Duration::from_secs(10)).expect("logout");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(t.sessions(1), 0, "the target dropped the session");
}

// ---- the command line ----

fn sanroot(args: &[&str], state: &Path, envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sanroot"));
    c.args(args)
        .env("SANROOT_STATE_DIR", state)
        .env_remove("SANROOT_CHAP_USER")
        .env_remove("SANROOT_CHAP_SECRET")
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run sanroot")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn cli_discover_ls_node_export() {
    let t = Tgtd::start();
    t.target(1, IQN);
    t.lun(1, 1, &mib(64));
    t.lun(
        1,
        2,
        &LunSpec {
            size: 16 << 20,
            readonly: true,
            block_size: Some(4096),
            ..Default::default()
        },
    );
    t.target(2, "iqn.2026-11.org.sanroot.test:second");
    t.lun(2, 1, &mib(8));
    let state = t.dir.join("state");
    let portal = format!("127.0.0.1:{}", t.port);

    // Exactly iscsiadm's lines.
    let out = ok(&sanroot(
        &["discover", &portal, "--initiator-name", INITIATOR],
        &state,
        &[],
    ));
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            format!("127.0.0.1:{},1 iqn.2026-11.org.sanroot.test:disk", t.port),
            format!("127.0.0.1:{},1 iqn.2026-11.org.sanroot.test:second", t.port),
        ]
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&sanroot(
        &["discover", &portal, "--json", "--no-save"],
        &state,
        &[],
    )))
    .unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(2));
    assert_eq!(v[0]["portals"][0]["port"], t.port);

    // Saved records: ls by IQN.
    let out = ok(&sanroot(&["node", "list"], &state, &[]));
    assert_eq!(out.lines().count(), 2);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&sanroot(&["ls", IQN, "--json"], &state, &[]))).unwrap();
    let luns = v.as_array().expect("array");
    assert_eq!(luns.len(), 3, "LUN 0 controller + 2 disks: {v}");
    assert_eq!(luns[1]["lun"], 1);
    assert_eq!(luns[1]["type"], "disk");
    assert_eq!(luns[1]["vendor"], "IET");
    assert_eq!(luns[1]["size_bytes"], 64u64 << 20);
    assert_eq!(luns[1]["block_size"], 512);
    assert_eq!(luns[1]["write_protected"], false);
    assert_eq!(luns[2]["block_size"], 4096);
    assert_eq!(luns[2]["write_protected"], true);
    assert!(luns[2]["thin_provisioned"].is_boolean());
    let human = ok(&sanroot(
        &["ls", &format!("iscsi://127.0.0.1:{}/{IQN}", t.port)],
        &state,
        &[],
    ));
    assert!(human.starts_with("LUN "), "{human}");
    assert!(human.contains("64M"), "{human}");

    // Export for an installed system in open-iscsi's layout.
    let root = t.dir.join("sysimage/etc/iscsi");
    ok(&sanroot(
        &[
            "node",
            "export",
            "--dir",
            root.to_str().unwrap(),
            "--target",
            IQN,
        ],
        &state,
        &[],
    ));
    let rec =
        std::fs::read_to_string(root.join(format!("nodes/{IQN}/127.0.0.1,{},1/default", t.port)))
            .expect("node record");
    assert!(rec.contains(&format!("node.name = {IQN}")), "{rec}");
    assert!(
        rec.contains(&format!("node.conn[0].port = {}", t.port)),
        "{rec}"
    );
    assert!(
        root.join(format!("send_targets/127.0.0.1,{}/st_config", t.port))
            .exists()
    );
}

#[test]
fn cli_cp_with_chap_from_environment() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t.lun(1, 1, &mib(16)).unwrap();
    t.chap(1, "alice", "alice-secret-12");
    let state = t.dir.join("state");
    let img = t.dir.join("installer.img");
    let data = pattern(5 * 1024 * 1024 + 1000, 11);
    std::fs::write(&img, &data).unwrap();
    let url = format!("iscsi://alice@127.0.0.1:{}/{IQN}/1", t.port);
    let env = [("SANROOT_CHAP_SECRET", "alice-secret-12")];
    let o = sanroot(
        &["cp", img.to_str().unwrap(), &url, "--verify"],
        &state,
        &env,
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("verified"), "{err}");
    assert!(
        err.contains("padded"),
        "a partial last block is reported: {err}"
    );
    let file = std::fs::read(&backing).unwrap();
    assert!(file[..data.len()] == data[..]);

    // Back up the LUN into a file.
    let backup = t.dir.join("backup.img");
    ok(&sanroot(
        &["cp", &url, backup.to_str().unwrap(), "--verify"],
        &state,
        &env,
    ));
    assert!(std::fs::read(&backup).unwrap() == file);

    // Bigger than the LUN: refused before writing.
    let big = t.dir.join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    let o = sanroot(&["cp", big.to_str().unwrap(), &url], &state, &env);
    assert_eq!(o.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&o.stderr).contains("past the end"));

    // A wrong secret: login error (exit 5), no secret in the output.
    let o = sanroot(
        &["ls", &url],
        &state,
        &[("SANROOT_CHAP_SECRET", "wrong-secret-99")],
    );
    assert_eq!(o.status.code(), Some(5));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("authentication failed"), "{all}");
    assert!(!all.contains("wrong-secret-99"));
}

#[test]
fn cli_bench_reports_json() {
    let t = Tgtd::start();
    t.target(1, IQN);
    t.lun(
        1,
        1,
        &LunSpec {
            null: true,
            ..Default::default()
        },
    );
    let state = t.dir.join("state");
    let url = format!("iscsi://127.0.0.1:{}/{IQN}/1", t.port);
    for extra in [
        &["--random"][..],
        &["--write", "--bs", "131072", "--qd", "4"][..],
    ] {
        let mut args = vec!["bench", url.as_str(), "--seconds", "1", "--json"];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(&sanroot(&args, &state, &[]))).unwrap();
        assert!(v["ios"].as_u64().unwrap_or(0) > 0, "{v}");
        assert_eq!(v["errors"], 0);
        for k in ["iops", "mb_per_s", "cpu_us_per_io"] {
            assert!(v[k].as_f64().unwrap_or(0.0) > 0.0, "{k}: {v}");
        }
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][k].is_u64(), "{k}: {v}");
        }
    }
}

type Answer = (
    Result<sanroot::iscsi::session::ScsiResult, sanroot::iscsi::session::SessionError>,
    Vec<u8>,
    std::thread::ThreadId,
);

/// Submit a read or write of `buf` at `lba` (512-byte blocks); its answer,
/// with the thread its completion ran on, arrives on `tx`.
fn submit_io(
    s: &sanroot::iscsi::session::Session,
    lba: u64,
    buf: Vec<u8>,
    write: bool,
    tx: &std::sync::mpsc::Sender<Answer>,
) {
    use sanroot::iscsi::session::{Command, DataDir};
    let blocks = (buf.len() / 512) as u32;
    let c = if write {
        sanroot::scsi::cdb::write(lba, blocks, false)
    } else {
        sanroot::scsi::cdb::read(lba, blocks, false)
    };
    let len = buf.len() as u32;
    let tx = tx.clone();
    s.submit(
        Command {
            lun: 1,
            cdb: c.bytes,
            dir: if write {
                DataDir::Write(len)
            } else {
                DataDir::Read(len)
            },
            attr: 1,
        },
        buf,
        sanroot::completion::Done::new(move |r, b| {
            let _ = tx.send((r, b, std::thread::current().id()));
        }),
    );
}

/// Pump `rx` until `n` answers arrived on `rx_done`; every one must have
/// completed on this thread.
fn pump_answers(
    rx: &mut sanroot::iscsi::session::Rx,
    done: &std::sync::mpsc::Receiver<Answer>,
    n: usize,
) -> Vec<(Vec<u8>, bool)> {
    let me = std::thread::current().id();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        assert!(std::time::Instant::now() < deadline, "answers within 30 s");
        let mut fds = [nix::libc::pollfd {
            fd: rx.fd(),
            events: nix::libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one pollfd that lives across the call.
        let n = unsafe { nix::libc::poll(fds.as_mut_ptr(), 1, 1000) };
        while rx.pump(16, n > 0).expect("pump") {}
        while let Ok((r, b, on)) = done.try_recv() {
            assert_eq!(on, me, "the completion ran on the pumping thread");
            let ok = matches!(r, Ok(ref s) if s.status == 0);
            got.push((b, ok));
        }
    }
    got
}

/// Ask for `s`'s receive side and take it once the reader parked: at its
/// next PDU boundary, which the answer to a read submitted now gets it to
/// (unless it was at one already: then the read is answered through the
/// receive side taken).
fn hand_over(
    s: &sanroot::iscsi::session::Session,
    tx: &std::sync::mpsc::Sender<Answer>,
    done: &std::sync::mpsc::Receiver<Answer>,
) -> sanroot::iscsi::session::Rx {
    let parked = Arc::new(support::parked::Parked::default());
    s.request_rx(parked.clone());
    submit_io(s, 0, vec![0u8; 4096], false, tx);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut answered = false;
    while !parked.parked() {
        assert!(std::time::Instant::now() < deadline, "the reader parks");
        if let Ok((r, _, _)) = done.recv_timeout(Duration::from_millis(5)) {
            r.expect("read before the hand-over");
            answered = true;
        }
    }
    let mut rx = s.take_rx().expect("the receive side");
    assert!(s.take_rx().is_none(), "taken once");
    if !answered && done.try_recv().is_err() {
        let a = pump_answers(&mut rx, done, 1);
        assert!(a[0].1, "the read answered through the receive side");
    }
    rx
}

#[test]
fn receive_side_handed_over_and_back() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t.lun(1, 1, &mib(64)).unwrap();
    let lun = open(&t, &InitiatorConfig::new(INITIATOR), 1);
    let s = Arc::clone(lun.session());
    let (tx, done) = std::sync::mpsc::channel::<Answer>();

    // Nobody asked: there is nothing to take.
    assert!(s.take_rx().is_none());
    let mut rx = hand_over(&s, &tx, &done);

    // Writes (1 MiB needs R2Ts: Data-Out goes out from the pump's idle
    // points) and reads, answered on this thread.
    let big = pattern(1 << 20, 11);
    submit_io(&s, 4096, big.clone(), true, &tx);
    for i in 0..8u64 {
        submit_io(&s, 8 * i, pattern(4096, i as u8), true, &tx);
    }
    let w = pump_answers(&mut rx, &done, 9);
    assert!(w.iter().all(|(_, ok)| *ok), "every write GOOD");
    // All answered: the socket has nothing (a poll's readiness from before
    // the last pump would be stale: a pump told "readable" would wait for
    // the target's next PDU), and a pump not told so returns at once.
    assert!(!rx.readable_now(), "nothing left on the socket");
    assert!(!rx.pump(16, false).expect("pump"), "nothing buffered");
    submit_io(&s, 4096, vec![0u8; 1 << 20], false, &tx);
    for i in 0..8u64 {
        submit_io(&s, 8 * i, vec![0u8; 4096], false, &tx);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !rx.readable_now() {
        assert!(std::time::Instant::now() < deadline, "answers within 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut reads = pump_answers(&mut rx, &done, 9);
    assert!(reads.iter().all(|(_, ok)| *ok), "every read GOOD");
    reads.sort_by_key(|(b, _)| b.len());
    let big_back = reads.pop().unwrap().0;
    assert!(big_back == big, "the 1 MiB read is what was written");
    let mut small: Vec<Vec<u8>> = reads.into_iter().map(|(b, _)| b).collect();
    let mut want: Vec<Vec<u8>> = (0..8u8).map(|i| pattern(4096, i)).collect();
    small.sort();
    want.sort();
    assert!(small == want, "the 4 KiB reads are what was written");
    let file = std::fs::read(&backing).expect("backing file");
    assert!(file[4096 * 512..4096 * 512 + (1 << 20)] == big[..]);

    // Given back: the reader answers again.
    drop(rx);
    let (r, b) = lun.read(4096, vec![0u8; 1 << 20]);
    r.expect("read after the hand-over");
    assert!(b == big);

    // Taken again, and the session fails under the pump: the command in
    // flight fails, the pump reports it, and nothing hangs.
    let mut rx = hand_over(&s, &tx, &done);
    submit_io(&s, 0, vec![0u8; 4096], false, &tx);
    s.abort("test: the path is given up");
    let (r, _, _) = done.recv_timeout(Duration::from_secs(30)).expect("answer");
    assert!(r.is_err(), "the read in flight fails with the session");
    let mut failed = false;
    for _ in 0..100 {
        match rx.pump(16, true) {
            Err(_) => {
                failed = true;
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(failed, "the pump reports the failed session");
    assert!(
        rx.pump(16, true).is_err(),
        "a spent receive side stays spent"
    );
    drop(rx);
    assert!(s.failure().is_some());
    // The reader thread ends, and the session drops without a hang.
    drop(s);
    drop(lun);
}
