//! The shell commands against a hostile target, as an attacker would try
//! them (issue 14, "Done when"): `ls`, `cp`, `discover` and `node export`
//! run as child processes of the built binary against a scripted fake
//! target (`support/fake_target.rs`) on 127.0.0.1.
//!
//! Every child runs in a [`Sandbox`] (its own SANROOT_STATE_DIR, HOME and
//! working directory, a clean environment) under a hard wall-clock bound
//! (`support::cli::LIMIT`, a hang bound, not a speed claim); [`refused`] checks the
//! outcome a hostile target must get: a documented non-zero exit code, no
//! panic, the problem named in words on stderr, a bounded peak RSS, and
//! nothing written outside the state directory. For `cp`, the destination
//! holds no byte the target did not send for it.
//!
//! CHAP secrets go to the child through the environment, never argv.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sanroot::iscsi::pdu::{LoginResponse, Pdu, ScsiCommand, Stage, TargetSn, TextResponse};
use sanroot::iscsi::text::TextKeys;
use support::cli::{Run, Sandbox, run};
use support::fake_target::{
    BLOCK, Behaviour, ChapHostile, ChapTarget, Ctx, FakeTarget, RawConn, RawPortal, TARGET_IQN,
    TextChunk, data_in_pdu, is_read,
};

/// A child that has not exited by then hangs: it is killed and the test
/// fails. Generous: the slowest case waits out a 30 s SendTargets deadline.
/// Peak resident set of a child, KiB (a hostile target must not make us
/// allocate what it claims).
const MAX_RSS_KIB: i64 = 64 * 1024;
const INITIATOR: &str = "iqn.2026-11.org.sanroot.test:cli";
/// What `cp` destinations hold before the copy.
const MARKER: u8 = 0xee;
/// What hostile Data-In carries.
const HOSTILE: u8 = 0x5a;

/// The end every hostile case must get: a documented failure exit code
/// (not a panic's 101, not a signal), no panic message, stderr naming
/// the problem with each of `words`, memory bounded.
fn refused(r: &Run, words: &[&str]) {
    assert!(
        matches!(r.code, Some(1..=7)),
        "expected a documented failure exit code: {r}"
    );
    assert_sane(r);
    for w in words {
        assert!(r.stderr.contains(w), "stderr should mention {w:?}: {r}");
    }
}

/// No panic, memory bounded: whatever the outcome.
fn assert_sane(r: &Run) {
    assert!(!r.stderr.contains("panicked"), "a panic: {r}");
    assert!(
        r.max_rss_kib > 0 && r.max_rss_kib < MAX_RSS_KIB,
        "peak RSS above {MAX_RSS_KIB} KiB: {r}"
    );
}

fn succeeded(r: &Run) {
    assert_eq!(r.code, Some(0), "expected success: {r}");
    assert_sane(r);
}

fn url(port: u16, lun: Option<u64>) -> String {
    match lun {
        Some(l) => format!("iscsi://127.0.0.1:{port}/{TARGET_IQN}/{l}"),
        None => format!("iscsi://127.0.0.1:{port}/{TARGET_IQN}"),
    }
}

fn ls(sb: &Sandbox, port: u16, lun: Option<u64>, env: &[(&str, &str)]) -> Run {
    let u = url(port, lun);
    run(sb, &["ls", &u, "--initiator-name", INITIATOR], env)
}

fn discover(sb: &Sandbox, port: u16) -> Run {
    let p = format!("127.0.0.1:{port}");
    run(sb, &["discover", &p, "--initiator-name", INITIATOR], &[])
}

// ---------------------------------------------------------------- cp

/// Size of the copy, chunk per READ, and the READ the target answers
/// with hostility (the third).
const COPY: usize = 1 << 20;
const CHUNK: usize = 64 << 10;
const HOSTILE_LBA: u32 = (2 * CHUNK / BLOCK) as u32;

fn disk_byte(i: usize) -> u8 {
    (i as u8).wrapping_mul(13) ^ (i >> 9) as u8 ^ 0x11
}

fn read_lba(c: &ScsiCommand) -> u32 {
    u32::from_be_bytes([c.cdb[2], c.cdb[3], c.cdb[4], c.cdb[5]])
}

/// `cp` of the first MiB of a fake LUN whose third 64 KiB READ is
/// answered by `act`, into a file pre-filled with [`MARKER`]. Returns the
/// run and the file's bytes.
fn cp_hostile(
    name: &str,
    act: impl FnMut(&mut Ctx<'_>, &ScsiCommand) + Send + Sync + 'static,
) -> (Run, Vec<u8>) {
    let sb = Sandbox::new("hostile-cli", name);
    let f = FakeTarget::start(
        Behaviour::default().on_command(|c| is_read(c) && read_lba(c) == HOSTILE_LBA, act),
    );
    // Only what is copied: the test process stays small (see
    // `wait_bounded`).
    for (i, b) in f.disk()[..COPY].iter_mut().enumerate() {
        *b = disk_byte(i);
    }
    let dst = sb.dir("out").join("lun.img");
    fs::write(&dst, vec![MARKER; COPY]).expect("pre-fill the destination");
    let (src, bytes, chunk) = (url(f.port, Some(0)), COPY.to_string(), CHUNK.to_string());
    let args = [
        "cp",
        &src,
        dst.to_str().expect("utf-8 path"),
        "--bytes",
        &bytes,
    ];
    let more = [
        "--chunk",
        &chunk,
        "--qd",
        "4",
        "--initiator-name",
        INITIATOR,
    ];
    let r = run(&sb, &[&args[..], &more[..]].concat(), &[]);
    sb.assert_contained();
    assert_eq!(sb.tree("out"), [PathBuf::from("lun.img")], "{r}");
    let got = fs::read(&dst).expect("read the destination");
    (r, got)
}

/// Each chunk of the destination is either untouched or exactly the
/// LUN's data, and the chunk of the hostile READ is untouched: nothing
/// the target did not send for that place, nothing from a failed read.
fn only_sent_data(r: &Run, got: &[u8]) {
    assert_eq!(got.len(), COPY, "the destination changed size: {r}");
    for (n, chunk) in got.chunks(CHUNK).enumerate() {
        let at = n * CHUNK;
        let untouched = chunk.iter().all(|&b| b == MARKER);
        let lun_data = chunk
            .iter()
            .enumerate()
            .all(|(i, &b)| b == disk_byte(at + i));
        assert!(
            untouched || lun_data,
            "chunk at {at}: neither untouched nor the LUN's data: {r}"
        );
        if at == HOSTILE_LBA as usize * BLOCK {
            assert!(
                untouched,
                "the hostile READ's chunk at {at} was written: {r}"
            );
        }
    }
}

fn cp_refused(
    name: &str,
    words: &[&str],
    act: impl FnMut(&mut Ctx<'_>, &ScsiCommand) + Send + Sync + 'static,
) {
    let (r, got) = cp_hostile(name, act);
    refused(&r, words);
    assert_eq!(r.code, Some(6), "an I/O error: {r}");
    only_sent_data(&r, &got);
}

#[test]
fn cp_data_in_overlap() {
    cp_refused(
        "cp-overlap",
        &["Data-In", "offset 1024, expected 2048", "overlap"],
        |ctx, c| {
            ctx.send_data_in(c, 0, 0, &[HOSTILE; 2048], false);
            ctx.send_data_in(c, 1, 1024, &[HOSTILE; 3072], true);
        },
    );
}

#[test]
fn cp_data_in_gap() {
    cp_refused(
        "cp-gap",
        &["Data-In", "offset 2048, expected 1024", "hole"],
        |ctx, c| {
            ctx.send_data_in(c, 0, 0, &[HOSTILE; 1024], false);
            ctx.send_data_in(c, 1, 2048, &[HOSTILE; 2048], true);
        },
    );
}

#[test]
fn cp_short_read_without_residual() {
    cp_refused(
        "cp-short",
        &["2048 of 65536 bytes arrived", "short read"],
        |ctx, c| {
            ctx.send_data_in(c, 0, 0, &[HOSTILE; 2048], true);
        },
    );
}

#[test]
fn cp_oversized_data_segment() {
    cp_refused(
        "cp-oversized",
        &["16777215-byte data segment", "above the 262144 bytes"],
        |ctx, c| {
            let bhs = data_in_pdu(c, ctx.sn(), 0, 0, false).to_bytes(0xff_ffff);
            ctx.send_raw(&bhs);
            ctx.send_raw(&[HOSTILE; 4096]);
        },
    );
}

// ---------------------------------------------------------------- ls

/// `ls` (all LUNs: REPORT LUNS first) against a target that answers
/// REPORT LUNS with `act`.
fn ls_hostile(
    name: &str,
    act: impl FnMut(&mut Ctx<'_>, &ScsiCommand) + Send + Sync + 'static,
) -> Run {
    let sb = Sandbox::new("hostile-cli", name);
    let f = FakeTarget::start(Behaviour::default().on_command(|c| c.cdb[0] == 0xa0, act));
    let r = ls(&sb, f.port, None, &[]);
    sb.assert_contained();
    assert_eq!(sb.tree("state"), Vec::<PathBuf>::new(), "ls saves nothing");
    assert!(r.stdout.is_empty(), "ls printed a listing: {r}");
    r
}

#[test]
fn ls_data_in_overlap() {
    let r = ls_hostile("ls-overlap", |ctx, c| {
        ctx.send_data_in(c, 0, 0, &[HOSTILE; 16], false);
        ctx.send_data_in(c, 1, 8, &[HOSTILE; 16], true);
    });
    refused(&r, &["Data-In", "offset 8, expected 16", "overlap"]);
}

#[test]
fn ls_data_in_gap() {
    let r = ls_hostile("ls-gap", |ctx, c| {
        ctx.send_data_in(c, 0, 0, &[0; 8], false);
        ctx.send_data_in(c, 1, 16, &[HOSTILE; 8], true);
    });
    refused(&r, &["Data-In", "offset 16, expected 8", "hole"]);
}

/// REPORT LUNS is allowed a short answer (a residual says how short);
/// GOOD with half a LUN list and no residual is not.
#[test]
fn ls_short_transfer_without_residual() {
    let r = ls_hostile("ls-short", |ctx, c| {
        // A header promising 2 LUNs (16 bytes), then the GOOD status
        // with 12 bytes sent.
        let mut d = vec![0u8; 12];
        d[3] = 16;
        ctx.send_data_in(c, 0, 0, &d, true);
    });
    refused(&r, &["12 of 4096 bytes arrived"]);
}

#[test]
fn ls_oversized_data_segment() {
    let r = ls_hostile("ls-oversized", |ctx, c| {
        let bhs = data_in_pdu(c, ctx.sn(), 0, 0, false).to_bytes(0xff_ffff);
        ctx.send_raw(&bhs);
        ctx.send_raw(&[HOSTILE; 4096]);
    });
    refused(
        &r,
        &["16777215-byte data segment", "above the 262144 bytes"],
    );
}

/// `ls URL/0` sends no REPORT LUNS: INQUIRY is the first data it reads.
#[test]
fn ls_one_lun_hostile_inquiry() {
    let sb = Sandbox::new("hostile-cli", "ls-inquiry");
    let f = FakeTarget::start(Behaviour::default().on_command(
        |c| c.cdb[0] == 0x12,
        |ctx, c| {
            ctx.send_data_in(c, 0, 0, &[HOSTILE; 8], false);
            ctx.send_data_in(c, 1, 4, &[HOSTILE; 8], true);
        },
    ));
    let r = ls(&sb, f.port, Some(0), &[]);
    refused(&r, &["Data-In", "offset 4, expected 8", "overlap"]);
    sb.assert_contained();
    assert!(!r.stdout.contains("SANROOT"), "{r}");
}

// ---------------------------------------------------------------- login

/// `ls`, `cp` and `discover` against the portal, at once (each may wait
/// out a login deadline): the three runs.
fn every_command(name: &str, port: u16) -> Vec<Run> {
    let cmds: [(&str, Vec<String>); 3] = [
        ("ls", vec!["ls".into(), url(port, Some(0))]),
        (
            "cp",
            vec!["cp".into(), url(port, Some(0)), "out.img".into()],
        ),
        (
            "discover",
            vec!["discover".into(), format!("127.0.0.1:{port}")],
        ),
    ];
    std::thread::scope(|s| {
        let handles: Vec<_> = cmds
            .iter()
            .map(|(cmd, args)| {
                s.spawn(move || {
                    let sb = Sandbox::new("hostile-cli", &format!("{name}-{cmd}"));
                    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
                    a.extend(["--initiator-name", INITIATOR]);
                    let r = run(&sb, &a, &[]);
                    sb.assert_contained();
                    let state = sb.tree("state");
                    assert_eq!(state, Vec::<PathBuf>::new(), "saved: {r}");
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Every Login Response an empty continuation (C bit, no data), for
/// ever: the PDU cap of the login ends it.
#[test]
fn endless_login_continuation() {
    let f = FakeTarget::start(Behaviour::default().on_login(|t| {
        t.reply.cont = true;
        t.reply.transit = false;
        t.reply_keys = TextKeys::new();
    }));
    for r in every_command("login-cont", f.port) {
        refused(&r, &["login", "more than 64 response PDUs"]);
        assert_eq!(r.code, Some(5), "a login failure: {r}");
    }
}

/// A portal that accepts the connection and never says a word.
#[test]
fn login_never_answered() {
    let p = RawPortal::start(|c: RawConn| c.hold());
    for r in every_command("silent", p.port) {
        refused(&r, &["login", "no complete answer from the target within"]);
        assert!(!r.stderr.contains("temporarily unavailable"), "{r}");
        assert_eq!(r.code, Some(5), "a login failure: {r}");
    }
}

/// A Login Response header claiming 16 MiB of data.
#[test]
fn login_response_oversized_segment() {
    let p = RawPortal::start(|mut c: RawConn| {
        let Ok(req) = c.read_pdu() else { return };
        let resp = Pdu::LoginResponse(LoginResponse {
            transit: false,
            cont: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_active: 0,
            isid: req[8..14].try_into().unwrap_or_default(),
            tsih: 0,
            itt: u32::from_be_bytes([req[16], req[17], req[18], req[19]]),
            sn: TargetSn {
                stat_sn: 1,
                exp_cmd_sn: 1,
                max_cmd_sn: 1,
            },
            status_class: 0,
            status_detail: 0,
        });
        let _ = c.stream.write_all(&resp.to_bytes(0xff_ffff));
        let _ = c.stream.write_all(&[HOSTILE; 4096]);
        c.hold();
    });
    for r in every_command("login-oversized", p.port) {
        refused(&r, &["16777215"]);
        assert_eq!(r.code, Some(5), "a login failure: {r}");
    }
}

// ---------------------------------------------------------------- discover

#[test]
fn discover_endless_send_targets_continuation() {
    let sb = Sandbox::new("hostile-cli", "st-cont");
    let empty = TextChunk {
        data: Vec::new(),
        cont: true,
    };
    let f = FakeTarget::start(Behaviour {
        send_targets: vec![empty; 5000],
        ..Behaviour::default()
    });
    let r = discover(&sb, f.port);
    refused(&r, &["SendTargets", "more than 1024 response PDUs"]);
    sb.assert_contained();
    assert_eq!(sb.tree("state"), Vec::<PathBuf>::new(), "{r}");
    assert!(r.stdout.is_empty(), "{r}");
}

#[test]
fn discover_oversized_text_segment() {
    let sb = Sandbox::new("hostile-cli", "st-oversized");
    let f = FakeTarget::start(Behaviour::default().on_pdu(|ctx, seen| {
        let Pdu::TextRequest(t) = &seen.pdu else {
            return support::fake_target::Step::Default;
        };
        let resp = Pdu::TextResponse(TextResponse {
            final_: true,
            cont: false,
            itt: t.itt,
            ttt: 0xffff_ffff,
            sn: ctx.status_sn(),
        });
        ctx.send_raw(&resp.to_bytes(0xff_ffff));
        ctx.send_raw(&[HOSTILE; 4096]);
        support::fake_target::Step::Handled
    }));
    let r = discover(&sb, f.port);
    refused(&r, &["16777215"]);
    sb.assert_contained();
    assert_eq!(sb.tree("state"), Vec::<PathBuf>::new(), "{r}");
}

// ---------------------------------------------------------------- names

const GOOD: &str = "iqn.2026-11.org.sanroot.test:good";
/// TargetNames that are no iSCSI names, and how the warning shows each.
const BAD_NAMES: [(&str, &str); 4] = [
    ("../../x", "../../x"),
    (
        "iqn.2026-11.org.sanroot.test:a\nnode.startup = automatic",
        "a\\nnode.startup = automatic",
    ),
    (
        "iqn.2026-11.org.sanroot.test:\u{1b}[2Jclear",
        "\\u{1b}[2Jclear",
    ),
    ("iqn.2026-11.org.sanroot.test:b\r\u{7}", "b\\r\\u{7}"),
];

/// A SendTargets answer: one good target among hostile names, each with
/// an address.
fn hostile_send_targets() -> Vec<TextChunk> {
    let mut keys = TextKeys::new();
    for (name, _) in BAD_NAMES.iter().take(2) {
        keys.push("TargetName", *name);
        keys.push("TargetAddress", "127.0.0.9:3260,1");
    }
    keys.push("TargetName", GOOD);
    keys.push("TargetAddress", "127.0.0.1:3260,1");
    for (name, _) in BAD_NAMES.iter().skip(2) {
        keys.push("TargetName", *name);
        keys.push("TargetAddress", "127.0.0.9:3260,1");
    }
    vec![TextChunk {
        data: keys.to_bytes(),
        cont: false,
    }]
}

/// Every file under `dir` (relative paths), with the text of each.
fn files_with_text(sb: &Sandbox, sub: &str) -> Vec<(PathBuf, String)> {
    sb.tree(sub)
        .into_iter()
        .filter(|p| sb.dir(sub).join(p).is_file())
        .map(|p| {
            let t = fs::read_to_string(sb.dir(sub).join(&p)).expect("read a record");
            (p, t)
        })
        .collect()
}

/// Names that are no iSCSI names are left out of `discover`, with a
/// warning showing each escaped: no injected output line, no record
/// under a traversal path, only the good target saved.
#[test]
fn discover_refuses_names_that_are_not_names() {
    let sb = Sandbox::new("hostile-cli", "names");
    let f = FakeTarget::start(Behaviour {
        send_targets: hostile_send_targets(),
        ..Behaviour::default()
    });
    let r = discover(&sb, f.port);
    succeeded(&r);
    assert_eq!(r.stdout, format!("127.0.0.1:3260,1 {GOOD}\n"), "{r}");
    for (_, shown) in BAD_NAMES {
        let warning = r.stderr.lines().find(|l| l.contains(shown));
        let w = warning.unwrap_or_else(|| panic!("no warning showing {shown:?}: {r}"));
        assert!(w.contains("not an iSCSI name"), "{w}");
    }
    assert!(
        !r.stderr.contains('\u{1b}') && !r.stderr.contains('\r'),
        "{r}"
    );
    sb.assert_contained();
    let saved = files_with_text(&sb, "state");
    assert_eq!(saved.len(), 1, "one record: {saved:?}");
    assert!(
        saved[0].0.starts_with(Path::new("nodes").join(GOOD)),
        "{saved:?}"
    );
    assert!(
        saved[0].1.starts_with(&format!("target = {GOOD}\n")),
        "{saved:?}"
    );
}

/// A TargetAddress with a newline (a line for the record) is refused as
/// a whole: nothing printed, nothing saved.
#[test]
fn discover_refuses_an_address_with_a_newline() {
    let sb = Sandbox::new("hostile-cli", "address");
    let mut keys = TextKeys::new();
    keys.push("TargetName", GOOD);
    keys.push(
        "TargetAddress",
        "127.0.0.1\nnode.startup = automatic:3260,1",
    );
    let f = FakeTarget::start(Behaviour {
        send_targets: vec![TextChunk {
            data: keys.to_bytes(),
            cont: false,
        }],
        ..Behaviour::default()
    });
    let r = discover(&sb, f.port);
    refused(&r, &["TargetAddress", "not a name or address"]);
    assert!(r.stdout.is_empty(), "{r}");
    assert!(!r.stderr.contains("\nnode.startup"), "{r}");
    sb.assert_contained();
    assert_eq!(sb.tree("state"), Vec::<PathBuf>::new(), "{r}");
}

/// `node export` after a hostile discovery: the good target's record in
/// open-iscsi's layout under --dir, every key once, nothing else.
#[test]
fn node_export_after_a_hostile_discovery() {
    let sb = Sandbox::new("hostile-cli", "export");
    let f = FakeTarget::start(Behaviour {
        send_targets: hostile_send_targets(),
        ..Behaviour::default()
    });
    succeeded(&discover(&sb, f.port));
    let db = sb.dir("out").join("iscsi");
    let dir = db.to_str().expect("utf-8 path");
    let r = run(
        &sb,
        &["node", "export", "--dir", dir, "--host-root", dir],
        &[],
    );
    succeeded(&r);
    sb.assert_contained();
    let node = Path::new("iscsi/nodes")
        .join(GOOD)
        .join("127.0.0.1,3260,1/default");
    let st = Path::new("iscsi/send_targets").join(format!("127.0.0.1,{}/st_config", f.port));
    let written: Vec<PathBuf> = files_with_text(&sb, "out")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(written, [node.clone(), st], "{r}");
    let text = fs::read_to_string(sb.dir("out").join(&node)).expect("the record");
    for key in ["node.name", "node.startup", "node.conn[0].address"] {
        let n = text
            .lines()
            .filter(|l| l.starts_with(&format!("{key} =")))
            .count();
        assert_eq!(n, 1, "{key} once in:\n{text}");
    }
}

/// A record planted in the state directory with a traversal name (an
/// older sanroot saved it): the export stays under --dir.
#[test]
fn node_export_keeps_a_traversal_name_inside() {
    let sb = Sandbox::new("hostile-cli", "export-traversal");
    let rec = sb.dir("state").join("nodes/x/10.0.0.1,3260,1");
    fs::create_dir_all(rec.parent().expect("parent")).expect("state dir");
    let text = "target = ../../../../escaped\nhost = ../../../up\nport = 3260\ntpgt = 1\n\
                discovery_host = ../../d\ndiscovery_port = 3260\n";
    fs::write(&rec, text).expect("planted record");
    let db = sb.dir("out").join("db");
    let dir = db.to_str().expect("utf-8 path");
    let r = run(
        &sb,
        &["node", "export", "--dir", dir, "--host-root", dir],
        &[],
    );
    assert_sane(&r);
    sb.assert_contained();
    assert!(
        r.stderr.contains("is not an iSCSI name"),
        "the planted record is refused: {r}"
    );
    for (p, text) in files_with_text(&sb, "out") {
        assert!(
            !text.contains("escaped"),
            "the planted record was exported: {p:?}"
        );
        assert!(p.starts_with("db"), "{p:?} outside --dir: {r}");
        assert!(
            fs::canonicalize(sb.dir("out").join(&p))
                .expect("canonical")
                .starts_with(fs::canonicalize(&db).expect("canonical db"))
        );
    }
}

// ---------------------------------------------------------------- CHAP

const USER: &str = "alice";
const SECRET: &str = "alice-secret-12";
const TARGET_USER: &str = "iqn.2026-11.org.sanroot.test:fake";
const TARGET_SECRET: &str = "target-secret-34";

fn one_way() -> [(&'static str, &'static str); 2] {
    [("SANROOT_CHAP_USER", USER), ("SANROOT_CHAP_SECRET", SECRET)]
}

fn mutual() -> [(&'static str, &'static str); 4] {
    [
        ("SANROOT_CHAP_USER", USER),
        ("SANROOT_CHAP_SECRET", SECRET),
        ("SANROOT_TARGET_CHAP_USER", TARGET_USER),
        ("SANROOT_TARGET_CHAP_SECRET", TARGET_SECRET),
    ]
}

/// `ls URL/0` against a CHAP target, credentials from `env`, `extra`
/// arguments; no secret appears in what it printed.
fn ls_chap(
    name: &str,
    chap: ChapTarget,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (Run, Vec<String>) {
    let sb = Sandbox::new("hostile-cli", name);
    let f = FakeTarget::start(Behaviour::default().chap(chap));
    let u = url(f.port, Some(0));
    let r = run(
        &sb,
        &[&["ls", &u, "--initiator-name", INITIATOR], extra].concat(),
        env,
    );
    sb.assert_contained();
    for s in [SECRET, TARGET_SECRET] {
        assert!(
            !r.stdout.contains(s) && !r.stderr.contains(s),
            "a secret shown: {r}"
        );
    }
    let said = f.log().chap.clone();
    (r, said)
}

fn said(log: &[String], what: &str) -> bool {
    log.iter().any(|l| l.contains(what))
}

#[test]
fn chap_one_way_works() {
    let (r, log) = ls_chap("chap", ChapTarget::new(USER, SECRET), &one_way(), &[]);
    succeeded(&r);
    assert!(r.stdout.contains("FAKE DISK"), "{r}");
    assert!(said(&log, "initiator authenticated as alice"), "{log:?}");
}

/// Mutual CHAP, the target's challenge in hex and in base64.
#[test]
fn chap_mutual_works() {
    for base64 in [false, true] {
        let mut chap = ChapTarget::new(USER, SECRET).mutual(TARGET_USER, TARGET_SECRET);
        chap.base64 = base64;
        let (r, log) = ls_chap("chap-mutual", chap, &mutual(), &[]);
        succeeded(&r);
        assert!(r.stdout.contains("FAKE DISK"), "{r}");
        assert!(said(&log, "answered the mutual challenge"), "{log:?}");
    }
}

/// Mutual CHAP configured; the target checks us, then leaves the
/// security stage without proving itself: refused, even with
/// --allow-no-auth.
#[test]
fn chap_mutual_answer_skipped_is_refused() {
    let chap = ChapTarget::new(USER, SECRET)
        .mutual(TARGET_USER, TARGET_SECRET)
        .hostile(ChapHostile::SkipMutualAnswer);
    let (r, log) = ls_chap("chap-skip", chap, &mutual(), &["--allow-no-auth"]);
    refused(&r, &["mutual CHAP", "did not answer our challenge"]);
    assert_eq!(r.code, Some(5), "{r}");
    assert!(said(&log, "skipped the answer"), "{log:?}");
}

/// Mutual CHAP configured; the target answers AuthMethod=None: refused,
/// even with --allow-no-auth, saying why.
#[test]
fn chap_mutual_waived_is_refused_even_when_allowed() {
    let chap = ChapTarget::new(USER, SECRET)
        .mutual(TARGET_USER, TARGET_SECRET)
        .hostile(ChapHostile::WaiveAuth);
    let (r, log) = ls_chap("chap-waive", chap, &mutual(), &["--allow-no-auth"]);
    refused(
        &r,
        &[
            "mutual CHAP is configured",
            "refusing even with --allow-no-auth",
        ],
    );
    assert_eq!(r.code, Some(5), "{r}");
    assert!(said(&log, "waived authentication"), "{log:?}");
}

#[test]
fn chap_mutual_wrong_target_response_is_refused() {
    let chap = ChapTarget::new(USER, SECRET)
        .mutual(TARGET_USER, TARGET_SECRET)
        .hostile(ChapHostile::WrongMutualResponse);
    let (r, _) = ls_chap("chap-wrong-r", chap, &mutual(), &[]);
    refused(&r, &["mutual CHAP", "authentication of the target failed"]);
    assert_eq!(r.code, Some(5), "{r}");
}

/// Our secret is not the one the target knows: status 0x0201.
#[test]
fn chap_wrong_initiator_secret_is_an_authentication_failure() {
    let chap = ChapTarget::new(USER, "another-secret-56");
    let (r, log) = ls_chap("chap-wrong", chap, &one_way(), &[]);
    refused(&r, &["authentication failed", "0x0201"]);
    assert_eq!(r.code, Some(5), "{r}");
    assert!(said(&log, "refused: wrong CHAP_N"), "{log:?}");
}
