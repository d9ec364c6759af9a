//! The initiator engine against a scripted fake target
//! (`support/fake_target.rs`): the cases a real target does not produce
//! on request — redirects, refusals, odd negotiation answers, pings,
//! async events, unit attentions and hostile PDUs.
//!
//! Every test runs under [`within`], a hard 20 s limit, so a hang fails the
//! test instead of stalling CI; errors are checked for text that names the
//! problem.

mod support;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sanroot::iscsi::initiator::{self, Connection, InitiatorConfig};
use sanroot::iscsi::login::LoginError;
use sanroot::iscsi::negotiate::DigestOffer;
use sanroot::iscsi::pdu::{
    Pdu, R2t, RESERVED_TAG, ScsiCommand, TaskMgmtResponse, TmfFunction, lun_field,
};
use sanroot::iscsi::session::{Command, DataDir, SessionError, SessionEvent, event_channel};
use sanroot::iscsi::text::{Portal as TextPortal, TextKeys};
use sanroot::lun::{self, Lun, pad16};
use sanroot::scsi::alua::{AccessState, PortGroup, TargetPortGroups};
use sanroot::scsi::cdb;
use sanroot::scsi::sense::{Sense, SenseKey};
use support::fake_target::{
    BLOCK, Behaviour, Corrupt, Ctx, FakeTarget, SERIAL, Step, TARGET_IQN, TextChunk, data_in_pdu,
    good_pdu, is_read,
};

const INITIATOR: &str = "iqn.2026-11.org.sanroot.test:initiator";
const LIMIT: Duration = Duration::from_secs(20);

/// Run `f` on its own thread and fail the test if it takes longer than
/// [`LIMIT`]; a panic inside `f` fails the test with its own message.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(v) => {
            let _ = worker.join();
            v
        }
        Err(RecvTimeoutError::Timeout) => {
            panic!("no result within {LIMIT:?}: the initiator hangs")
        }
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker ended without a result"),
        },
    }
}

fn config() -> InitiatorConfig {
    InitiatorConfig::new(INITIATOR)
}

fn digests() -> InitiatorConfig {
    let mut c = config();
    c.header_digest = DigestOffer::PreferCrc32c;
    c.data_digest = DigestOffer::PreferCrc32c;
    c
}

fn connect(fake: &FakeTarget, cfg: &InitiatorConfig) -> Connection {
    initiator::connect(&fake.portal(), TARGET_IQN, cfg, None)
        .unwrap_or_else(|e| panic!("login to the fake target: {e}"))
}

fn login_error(fake: &FakeTarget, target: &str, cfg: &InitiatorConfig) -> LoginError {
    match initiator::connect(&fake.portal(), target, cfg, None) {
        Ok(c) => panic!("login succeeded: {}", c.negotiated),
        Err(e) => e,
    }
}

/// How many pings (NOP-Outs with an ITT: ours, not answers to the
/// target's) the fake target has seen.
fn pings(f: &FakeTarget) -> usize {
    pings_in(&f.log())
}

/// [`pings`] in a log already taken.
fn pings_in(log: &support::fake_target::Log) -> usize {
    log.pdus
        .iter()
        .filter(|s| matches!(&s.pdu, Pdu::NopOut(o) if o.itt != RESERVED_TAG))
        .count()
}

fn open(c: Connection) -> Lun {
    Lun::open(Arc::new(c.session), 0).unwrap_or_else(|e| panic!("open LUN 0: {e}"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Write a pattern at `lba`, read it back, check both the answer and the
/// fake's disk.
fn round_trip(fake: &FakeTarget, lun: &Lun, lba: u64, len: usize, seed: u8) {
    let data = pattern(len, seed);
    let (r, _) = lun.write(lba, data.clone(), false);
    r.unwrap_or_else(|e| panic!("write {len} bytes at {lba}: {e}"));
    let at = lba as usize * BLOCK;
    assert!(
        fake.disk()[at..at + len] == data[..],
        "the target's disk holds what was written"
    );
    let (r, back) = lun.read(lba, vec![0u8; len]);
    r.unwrap_or_else(|e| panic!("read {len} bytes at {lba}: {e}"));
    assert!(back == data, "read back what was written");
}

fn read_lba(c: &ScsiCommand) -> u32 {
    u32::from_be_bytes([c.cdb[2], c.cdb[3], c.cdb[4], c.cdb[5]])
}

fn assert_mentions(msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "error should mention {w:?}: {msg}");
    }
}

/// With CHAP credentials configured, a target that waives authentication
/// (answers AuthMethod=None) may be an impostor: refused unless the user
/// allows it explicitly.
#[test]
fn waived_authentication_is_refused_unless_allowed() {
    within(|| {
        // We offer only CHAP; this target answers None anyway.
        let f = FakeTarget::start(Behaviour::default().on_login(|t| {
            if t.keys.get("AuthMethod").is_some() {
                t.reply.status_class = 0;
                t.reply.status_detail = 0;
                t.reply_keys.set("AuthMethod", "None");
            }
        }));
        let mut cfg = config();
        cfg.auth = Some(sanroot::iscsi::chap::AuthConfig {
            user: "alice".into(),
            secret: sanroot::secret::Secret::from("alice-secret-12"),
            mutual: None,
        });
        let e = login_error(&f, TARGET_IQN, &cfg);
        assert!(matches!(e, LoginError::AuthWaived), "{e:?}");
        assert_mentions(&e.to_string(), &["without authentication", "refusing"]);
        assert!(!e.to_string().contains("alice-secret-12"));
        // Allowed explicitly: we offer CHAP,None and take the None.
        cfg.allow_no_auth = true;
        let f = FakeTarget::start(Behaviour::default());
        let c = connect(&f, &cfg);
        c.session
            .ping(Duration::from_secs(5))
            .expect("the session works once allowed");
        // Mutual CHAP is never waived, even when allowed: we offer CHAP
        // alone, and a target that answers None is refused.
        cfg.auth = Some(sanroot::iscsi::chap::AuthConfig {
            user: "alice".into(),
            secret: sanroot::secret::Secret::from("alice-secret-12"),
            mutual: Some(sanroot::iscsi::chap::MutualConfig {
                target_name: None,
                secret: sanroot::secret::Secret::from("target-secret-34"),
            }),
        });
        let offered = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&offered);
        let f = FakeTarget::start(Behaviour::default().on_login(move |t| {
            if let Some(m) = t.keys.get("AuthMethod") {
                seen.lock().unwrap().push(m.to_string());
                t.reply.status_class = 0;
                t.reply.status_detail = 0;
                t.reply_keys.set("AuthMethod", "None");
            }
        }));
        let e = login_error(&f, TARGET_IQN, &cfg);
        assert!(matches!(e, LoginError::MutualAuthWaived), "{e:?}");
        assert_mentions(
            &e.to_string(),
            &["mutual CHAP", "refusing even with --allow-no-auth"],
        );
        assert_eq!(*offered.lock().unwrap(), ["CHAP"]);
    })
}

// ---------------------------------------------------------------- 1, 2, 3 login

/// A target that answers every Login Request with an empty continuation
/// (C bit, no data) for ever: no byte limit sees it; the PDU cap ends it.
#[test]
fn endless_empty_login_continuation_is_bounded() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_login(|turn| {
            turn.reply.cont = true;
            turn.reply.transit = false;
            turn.reply_keys = TextKeys::new();
        }));
        let e = login_error(&f, TARGET_IQN, &config()).to_string();
        assert_mentions(&e, &["login: more than 64 response PDUs"]);
    })
}

/// The same, slowly: one empty continuation every 300 ms, each well
/// within a read timeout; the whole login's deadline ends it.
#[test]
fn slow_endless_login_continuation_meets_the_deadline() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_login(|turn| {
            std::thread::sleep(Duration::from_millis(300));
            turn.reply.cont = true;
            turn.reply.transit = false;
            turn.reply_keys = TextKeys::new();
        }));
        let mut cfg = config();
        cfg.login_timeout = Duration::from_secs(2);
        let t0 = Instant::now();
        let e = login_error(&f, TARGET_IQN, &cfg).to_string();
        assert_mentions(
            &e,
            &["login: no complete answer from the target within 2 s"],
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    })
}

/// A portal that accepts the connection and never answers the login:
/// a timeout in words, not "Resource temporarily unavailable".
#[test]
fn silent_portal_login_times_out_in_words() {
    within(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_secs(4));
            drop(s);
        });
        let mut cfg = config();
        cfg.login_timeout = Duration::from_secs(1);
        let portal = sanroot::iscsi::login::Portal::new("127.0.0.1", port);
        let e = match initiator::connect(&portal, TARGET_IQN, &cfg, None) {
            Ok(_) => panic!("login to a silent portal succeeded"),
            Err(e) => e.to_string(),
        };
        assert_mentions(
            &e,
            &["login: no complete answer from the target within 1 s"],
        );
        assert!(!e.contains("temporarily unavailable"), "{e}");
        let _ = hold.join();
    })
}

/// SendTargets answered by an endless run of empty continuations (here
/// 5000, each with a new TTT): the PDU cap ends it.
#[test]
fn endless_empty_send_targets_continuation_is_bounded() {
    within(|| {
        let f = FakeTarget::start(Behaviour {
            send_targets: vec![
                TextChunk {
                    data: Vec::new(),
                    cont: true,
                };
                5000
            ],
            ..Behaviour::default()
        });
        let e = match initiator::discover(&f.portal(), &config()) {
            Ok(t) => panic!("discovery succeeded: {t:?}"),
            Err(e) => e.to_string(),
        };
        assert_mentions(&e, &["SendTargets: more than 1024 response PDUs"]);
    })
}

#[test]
fn login_redirect_is_followed() {
    within(|| {
        let b = FakeTarget::start(Behaviour::default());
        let to = format!("127.0.0.1:{},1", b.port);
        let a = FakeTarget::start(Behaviour::default().on_login(move |t| {
            if t.security_stage() {
                t.redirect(&to);
            }
        }));
        let c = connect(&a, &config());
        assert_eq!(
            c.portal.port, b.port,
            "logged in where the redirect pointed"
        );
        let lun = open(c);
        round_trip(&b, &lun, 8, 64 << 10, 3);
        assert_eq!(a.log().connections, 1);
        assert_eq!(a.log().logins, 0, "nothing logged in at the first portal");
        assert_eq!(b.log().logins, 1);
        a.assert_clean();
        b.assert_clean();
    })
}

#[test]
fn endless_redirects_end_quickly() {
    within(|| {
        let a = FakeTarget::start(Behaviour::default().on_login(|t| {
            let me = format!("127.0.0.1:{},1", t.local_port);
            t.redirect(&me);
        }));
        let t0 = Instant::now();
        let e = login_error(&a, TARGET_IQN, &config());
        assert!(matches!(e, LoginError::TooManyRedirects(8)), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_mentions(&e.to_string(), &["redirected 8 times", "redirect loop"]);
        // The first login and 8 redirections, then it stopped.
        assert!(a.wait_for(Duration::from_secs(2), |l| l.connections == 9));
    })
}

#[test]
fn login_status_errors_are_clear() {
    within(|| {
        let refused = |class: u8, detail: u8| {
            let f =
                FakeTarget::start(Behaviour::default().on_login(move |t| t.refuse(class, detail)));
            login_error(&f, TARGET_IQN, &config())
        };

        let e = refused(2, 1);
        assert_mentions(&e.to_string(), &["authentication failed", "0x0201"]);
        assert!(!e.is_transient());

        let e = refused(2, 2);
        assert_mentions(
            &e.to_string(),
            &["not authorized", INITIATOR, TARGET_IQN, "0x0202"],
        );
        assert!(!e.is_transient());

        // 0x0203 from the fake's own check of TargetName.
        let f = FakeTarget::start(Behaviour::default());
        let wrong = "iqn.2026-11.org.sanroot.test:no-such-disk";
        let e = login_error(&f, wrong, &config());
        assert!(
            matches!(
                e,
                LoginError::Status {
                    class: 2,
                    detail: 3,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_mentions(&e.to_string(), &["target not found", wrong, "0x0203"]);
        assert!(!e.is_transient());

        let e = refused(3, 1);
        assert_mentions(&e.to_string(), &["busy", "0x0301"]);
        assert!(e.is_transient(), "a busy target is worth retrying");
    })
}

// ---------------------------------------------------------------- 4 negotiation

/// A login where the target's operational answer has `key=value`.
fn negotiation_error(key: &'static str, value: &'static str) -> String {
    let f = FakeTarget::start(Behaviour::default().on_login(move |t| {
        if !t.security_stage() {
            t.reply_keys.set(key, value);
        }
    }));
    let e = login_error(&f, TARGET_IQN, &config());
    assert!(matches!(e, LoginError::Negotiation(_)), "{e:?}");
    e.to_string()
}

#[test]
fn digest_we_did_not_offer_is_refused() {
    within(|| {
        let m = negotiation_error("HeaderDigest", "CRC32C");
        assert_mentions(&m, &["HeaderDigest=CRC32C", "HeaderDigest=None"]);
    })
}

#[test]
fn error_recovery_level_2_is_refused() {
    within(|| {
        let m = negotiation_error("ErrorRecoveryLevel", "2");
        assert_mentions(&m, &["ErrorRecoveryLevel=2", "ErrorRecoveryLevel 0 only"]);
    })
}

#[test]
fn target_max_recv_data_segment_length_is_obeyed() {
    within(|| {
        let f = FakeTarget::start(Behaviour {
            max_recv_data_segment: 512,
            ..Behaviour::default()
        });
        let c = connect(&f, &config());
        assert!(
            c.negotiated.contains("TargetMaxRecvDataSegmentLength=512"),
            "{}",
            c.negotiated
        );
        let lun = open(c);
        // 64 KiB: immediate data and unsolicited Data-Out; 256 KiB: R2Ts too.
        round_trip(&f, &lun, 100, 64 << 10, 1);
        round_trip(&f, &lun, 1000, 256 << 10, 2);
        let log = f.log();
        let imm = log.commands().map(|(_, d)| d.len()).max().unwrap_or(0);
        let out: Vec<usize> = log.data_outs().map(|(_, d)| d.len()).collect();
        assert!(imm <= 512, "immediate data segment of {imm} bytes");
        assert!(!out.is_empty(), "the writes used Data-Out");
        assert!(out.iter().all(|&n| n <= 512), "Data-Out segments {out:?}");
        assert_eq!(
            out.iter().sum::<usize>() + log.commands().map(|(_, d)| d.len()).sum::<usize>(),
            (64 + 256) << 10,
            "every byte sent once"
        );
        assert!(log.r2ts > 0, "the 256 KiB write needed R2Ts");
        drop(log);
        f.assert_clean();
    })
}

#[test]
fn initial_r2t_without_immediate_data_writes_by_r2t_only() {
    within(|| {
        let f = FakeTarget::start(Behaviour {
            initial_r2t: true,
            immediate_data: false,
            max_burst: 4096,
            ..Behaviour::default()
        });
        let c = connect(&f, &config());
        for want in ["InitialR2T=Yes", "ImmediateData=No", "MaxBurstLength=4096"] {
            assert!(c.negotiated.contains(want), "{want}: {}", c.negotiated);
        }
        let lun = open(c);
        round_trip(&f, &lun, 40, 64 << 10, 9);
        let log = f.log();
        assert_eq!(log.r2ts, 16, "64 KiB in 4 KiB bursts");
        assert!(
            log.commands().all(|(c, d)| d.is_empty() && c.final_),
            "no immediate data, no unsolicited Data-Out announced"
        );
        assert!(
            log.data_outs().all(|(d, _)| d.ttt != RESERVED_TAG),
            "every Data-Out answers an R2T"
        );
        drop(log);
        f.assert_clean();
    })
}

#[test]
fn crc32c_digests_round_trip() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default());
        let c = connect(&f, &digests());
        assert!(
            c.negotiated
                .contains("HeaderDigest=CRC32C DataDigest=CRC32C"),
            "{}",
            c.negotiated
        );
        let lun = open(c);
        // Odd-sized INQUIRY data exercised padding in the digests already;
        // now bulk data both ways (the fake checks every digest it gets).
        round_trip(&f, &lun, 0, 128 << 10, 4);
        round_trip(&f, &lun, 3000, 512 << 10, 5);
        f.assert_clean();
    })
}

// ---------------------------------------------------------------- 5 NOP

type Ping = (u32, Vec<u8>);

#[test]
fn target_pings_are_answered_during_io() {
    within(|| {
        // (TTT, ping data) of every NOP-In the fake sent.
        let sent: Arc<Mutex<Vec<Ping>>> = Arc::default();
        let s = Arc::clone(&sent);
        let mut n = 0u32;
        let f = FakeTarget::start(Behaviour::default().on_pdu(move |ctx, seen| {
            if seen.command().is_some() {
                n += 1;
                let ttt = 0x5000 + n;
                // Odd lengths: the answer must keep the data, not the padding.
                let data = format!("ping #{n}").into_bytes();
                ctx.nop_ping(ttt, &data);
                s.lock().unwrap().push((ttt, data));
            }
            Step::Default
        }));
        let lun = open(connect(&f, &config()));
        round_trip(&f, &lun, 10, 32 << 10, 1);
        round_trip(&f, &lun, 200, 300 << 10, 2);
        let want = sent.lock().unwrap().clone();
        assert!(want.len() > 5);
        let answered = |log: &support::fake_target::Log| {
            want.iter().all(|(ttt, data)| {
                log.pdus.iter().any(|s| {
                    matches!(&s.pdu, Pdu::NopOut(o) if o.itt == RESERVED_TAG && o.ttt == *ttt)
                        && s.data == *data
                })
            })
        };
        assert!(
            f.wait_for(Duration::from_secs(5), answered),
            "every ping answered with its TTT and data"
        );
        f.assert_clean();
    })
}

/// A session logged in without pings (as the only path) that turns out to
/// be one of several gets the quick pings from then on (`set_ping`).
#[test]
fn pings_start_when_set_after_login() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default());
        let mut cfg = config();
        cfg.session.nop_interval = None;
        let c = connect(&f, &cfg);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(pings(&f), 0, "no pings before they are asked for");
        // The first ping is due 200 ms after this (the cadence after an
        // answer is `an_answered_ping_schedules_the_next_an_interval_later`).
        c.session
            .set_ping(Some(Duration::from_millis(200)), Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(c.session.failure().is_none(), "{:?}", c.session.failure());
        assert!(pings(&f) >= 1, "no ping in 1.5 s after set_ping");
        f.assert_clean();
    })
}

/// An answered ping schedules the next one an interval after the answer,
/// not a timeout after the ping: the writer sleeps until the ping's
/// timeout and must be woken when the answer comes. With a 150 ms interval
/// and a 30 s timeout, a writer that is not woken sends its second ping
/// 30 s after the first; this asks for four within 15 s (with the wake
/// they come about 150 ms apart).
#[test]
fn an_answered_ping_schedules_the_next_an_interval_later() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default());
        let mut cfg = config();
        cfg.session.nop_interval = Some(Duration::from_millis(150));
        cfg.session.nop_timeout = Duration::from_secs(30);
        let c = connect(&f, &cfg);
        let deadline = Instant::now() + Duration::from_secs(15);
        while pings(&f) < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            pings(&f) >= 4,
            "{} pings in 15 s with a 150 ms interval: the writer slept until the 30 s ping timeout after an answered ping",
            pings(&f)
        );
        assert!(c.session.failure().is_none(), "{:?}", c.session.failure());
        f.assert_clean();
    })
}

#[test]
fn liveness_pings_keep_a_live_session() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default());
        let mut cfg = config();
        cfg.session.nop_interval = Some(Duration::from_secs(1));
        cfg.session.nop_timeout = Duration::from_secs(2);
        let c = connect(&f, &cfg);
        std::thread::sleep(Duration::from_millis(3500));
        assert!(c.session.failure().is_none(), "{:?}", c.session.failure());
        let pings = pings(&f);
        assert!(pings >= 2, "{pings} pings in 3.5 s with a 1 s interval");
        let lun = open(c);
        lun.test_unit_ready().expect("the session still works");
        f.assert_clean();
    })
}

/// Log in with 1 s / 2 s NOP settings to a fake that swallows every PDU
/// after login, submit a read, and return its error, the time it took,
/// the session's own failure and the Failed event.
/// A target that answers every ping but never a READ: the command's
/// timeout starts the kernel's ladder (ABORT TASK and a retry, LOGICAL
/// UNIT RESET and a retry), then ends it, naming the command, the time and
/// what was tried; the connection is dropped. (Without a timeout, `sanroot
/// ls` waited for ever.)
#[test]
fn a_command_without_an_answer_times_out() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_pdu(|_, seen| match seen.command() {
            Some(c) if is_read(c) => Step::Handled,
            _ => Step::Default,
        }));
        let mut cfg = config();
        cfg.session.nop_interval = Some(Duration::from_millis(300));
        cfg.session.nop_timeout = Duration::from_secs(2);
        cfg.session.cmd_timeout = Some(Duration::from_secs(2));
        cfg.session.tmf_timeout = Duration::from_secs(2);
        let lun = open(connect(&f, &cfg));
        let (r, _) = lun.read(0, vec![0u8; 4096]);
        let e = r.expect_err("nothing answered the read").to_string();
        assert_mentions(
            &e,
            &[
                "operation code 0x28",
                "no answer within 2 s",
                "ABORT TASK and LOGICAL UNIT RESET",
            ],
        );
        assert!(lun.session().failure().is_some(), "{e}");
        let log = f.log();
        assert!(pings_in(&log) > 0, "the pings were answered meanwhile");
        let reads: Vec<u32> = log
            .commands()
            .filter(|(c, _)| is_read(c))
            .map(|(c, _)| c.itt)
            .collect();
        assert_eq!(
            reads.len(),
            3,
            "sent, retried after the abort and the reset"
        );
        assert_eq!(
            tmfs(&log),
            [
                (TmfFunction::AbortTask, reads[0]),
                (TmfFunction::LogicalUnitReset, RESERVED_TAG)
            ]
        );
        assert!(
            reads[0] != reads[1] && reads[1] != reads[2],
            "a retry has a new ITT: {reads:x?}"
        );
    })
}

/// The task management requests the fake saw: function and referenced task.
fn tmfs(log: &support::fake_target::Log) -> Vec<(TmfFunction, u32)> {
    log.pdus
        .iter()
        .filter_map(|s| match &s.pdu {
            Pdu::TaskMgmtRequest(t) => Some((t.function, t.ref_task_tag)),
            _ => None,
        })
        .collect()
}

/// A target that drops one READ (its answer lost inside the target): the
/// command is aborted and sent again, and the read returns the disk's
/// data; the session lives on. With `ignore_abort`, the abort goes
/// unanswered and a LOGICAL UNIT RESET ends the lost READ instead.
fn lost_read_is_retried(ignore_abort: bool) -> Vec<(TmfFunction, u32)> {
    within(move || {
        let mut first = true;
        let f = FakeTarget::start(Behaviour::default().on_pdu(move |_, seen| match &seen.pdu {
            Pdu::ScsiCommand(c) if is_read(c) && read_lba(c) == 64 && first => {
                first = false;
                Step::Handled
            }
            Pdu::TaskMgmtRequest(t) if ignore_abort && t.function == TmfFunction::AbortTask => {
                Step::Handled
            }
            _ => Step::Default,
        }));
        let mut cfg = config();
        cfg.session.cmd_timeout = Some(Duration::from_secs(1));
        cfg.session.tmf_timeout = Duration::from_secs(1);
        let lun = open(connect(&f, &cfg));
        let data = pattern(4096, 9);
        f.disk()[64 * BLOCK..64 * BLOCK + 4096].copy_from_slice(&data);
        let (r, back) = lun.read(64, vec![0u8; 4096]);
        r.unwrap_or_else(|e| panic!("the retried read: {e}"));
        assert!(back == data, "the retried read returns the disk's data");
        assert!(lun.session().failure().is_none(), "the session lives on");
        round_trip(&f, &lun, 8, 8192, 3);
        let log = f.log();
        let reads: Vec<&ScsiCommand> = log
            .commands()
            .filter(|(c, _)| is_read(c) && read_lba(c) == 64)
            .map(|(c, _)| c)
            .collect();
        assert_eq!(reads.len(), 2, "sent once, then again");
        assert!(reads[1].cmd_sn != reads[0].cmd_sn && reads[1].itt != reads[0].itt);
        let t = tmfs(&log);
        assert_eq!(t[0], (TmfFunction::AbortTask, reads[0].itt), "{t:?}");
        t
    })
}

#[test]
fn a_lost_read_is_aborted_and_sent_again() {
    assert_eq!(
        lost_read_is_retried(false).len(),
        1,
        "one ABORT TASK, no reset"
    );
}

#[test]
fn an_unanswered_abort_escalates_to_a_lun_reset() {
    let t = lost_read_is_retried(true);
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(t[1], (TmfFunction::LogicalUnitReset, RESERVED_TAG));
}

/// The same for a WRITE larger than the first burst (immediate data, then
/// R2Ts): the retry sends all of it again, and the disk holds it.
#[test]
fn a_lost_write_is_aborted_and_sent_again() {
    within(|| {
        let mut first = true;
        let f = FakeTarget::start(Behaviour::default().on_pdu(move |_, seen| match &seen.pdu {
            Pdu::ScsiCommand(c) if c.write && first => {
                first = false;
                Step::Handled
            }
            _ => Step::Default,
        }));
        let mut cfg = config();
        cfg.session.cmd_timeout = Some(Duration::from_secs(1));
        let lun = open(connect(&f, &cfg));
        round_trip(&f, &lun, 128, 256 << 10, 5);
        assert!(lun.session().failure().is_none(), "the session lives on");
        let log = f.log();
        let writes = log.commands().filter(|(c, _)| c.write).count();
        assert_eq!(writes, 2, "sent once, then again");
        assert_eq!(tmfs(&log).len(), 1, "one ABORT TASK");
        assert!(log.data_outs().count() > 0, "the retry took R2Ts");
        drop(log);
        f.assert_clean();
    })
}

/// A target that refuses both the abort and the reset: the connection is
/// dropped at once, and the error says what was refused.
#[test]
fn a_refused_lun_reset_drops_the_connection() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_pdu(|ctx, seen| match &seen.pdu {
            Pdu::ScsiCommand(c) if is_read(c) => Step::Handled,
            Pdu::TaskMgmtRequest(t) => {
                let r = if t.function == TmfFunction::AbortTask {
                    255
                } else {
                    5
                };
                let sn = ctx.status_sn();
                ctx.send(
                    &Pdu::TaskMgmtResponse(TaskMgmtResponse {
                        response: r,
                        itt: t.itt,
                        sn,
                    }),
                    &[],
                );
                Step::Handled
            }
            _ => Step::Default,
        }));
        let mut cfg = config();
        cfg.session.cmd_timeout = Some(Duration::from_secs(1));
        let lun = open(connect(&f, &cfg));
        let (r, _) = lun.read(0, vec![0u8; 4096]);
        let e = r.expect_err("nothing answered the read").to_string();
        assert_mentions(
            &e,
            &[
                "operation code 0x28",
                "LOGICAL UNIT RESET refused",
                "not supported",
            ],
        );
        assert!(lun.session().failure().is_some(), "{e}");
        let t = tmfs(&f.log());
        assert_eq!(t.len(), 2, "{t:?}");
    })
}

fn silent_target() -> (SessionError, Duration, SessionError, String) {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_pdu(|_, _| Step::Handled));
        let mut cfg = config();
        cfg.session.nop_interval = Some(Duration::from_secs(1));
        cfg.session.nop_timeout = Duration::from_secs(2);
        let (etx, erx) = event_channel();
        let c = initiator::connect(&f.portal(), TARGET_IQN, &cfg, Some(etx))
            .unwrap_or_else(|e| panic!("login: {e}"));
        let t0 = Instant::now();
        let (tx, rx) = mpsc::channel();
        c.session.submit(
            Command {
                lun: 0,
                cdb: pad16(&cdb::read(0, 8, false)),
                dir: DataDir::Read(4096),
                attr: 1,
            },
            vec![0u8; 4096],
            sanroot::completion::Done::new(move |r, _| {
                let _ = tx.send(r);
            }),
        );
        let r = rx
            .recv_timeout(Duration::from_secs(8))
            .expect("the in-flight read must complete");
        let took = t0.elapsed();
        let e = r.expect_err("nothing answered the read");
        let event = match erx.recv_timeout(Duration::from_secs(2)) {
            Ok(SessionEvent::Failed(m)) => m,
            other => panic!("expected a Failed event, got {other:?}"),
        };
        let failure = c.session.failure().expect("the session failed");
        assert!(pings(&f) > 0, "the initiator pinged");
        (e, took, failure, event)
    })
}

#[test]
fn silent_target_fails_the_session_by_ping_timeout() {
    let (_, took, failure, event) = silent_target();
    // nop_interval + nop_timeout, with slack either way.
    assert!(took > Duration::from_millis(2500), "failed after {took:?}");
    assert!(took < Duration::from_millis(4500), "failed after {took:?}");
    assert!(
        matches!(failure, SessionError::PingTimeout(_)),
        "{failure:?}"
    );
    assert_mentions(&failure.to_string(), &["NOP-Out ping"]);
    assert_mentions(&event, &["NOP-Out ping"]);
}

#[test]

fn silent_target_in_flight_command_names_the_ping_timeout() {
    // A race: about every second run loses it, so try a few times.
    for _ in 0..4 {
        let (e, _, _, _) = silent_target();
        assert!(matches!(e, SessionError::PingTimeout(_)), "{e:?}");
        assert_mentions(&e.to_string(), &["NOP-Out ping"]);
    }
}

// ---------------------------------------------------------------- 6 async

#[test]
fn async_events_reach_the_events_channel() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_ready(|ctx| {
            ctx.async_event(1, [0; 8], 7, &[]);
            let mut data = vec![0, 0];
            Sense::new(SenseKey::UnitAttention, 0x2a, 0x09).emit(&mut data);
            let n = (data.len() - 2) as u16;
            data[..2].copy_from_slice(&n.to_be_bytes());
            ctx.async_event(0, lun_field(0), 0, &data);
        }));
        let (etx, erx) = event_channel();
        let c = initiator::connect(&f.portal(), TARGET_IQN, &config(), Some(etx))
            .unwrap_or_else(|e| panic!("login: {e}"));
        let ev = erx.recv_timeout(Duration::from_secs(5)).expect("an event");
        assert_eq!(ev, SessionEvent::LogoutRequested { within: 7 });
        match erx.recv_timeout(Duration::from_secs(5)).expect("an event") {
            SessionEvent::ScsiEvent { lun, sense } => {
                assert_eq!(lun, lun_field(0));
                let s = Sense::parse(&sense).expect("sense data");
                assert_eq!(
                    (s.key, s.asc, s.ascq),
                    (SenseKey::UnitAttention, 0x2a, 0x09)
                );
            }
            other => panic!("expected a SCSI event, got {other:?}"),
        }
        let lun = open(c);
        lun.test_unit_ready().expect("the session still works");
        f.assert_clean();
    })
}

/// A target that floods asynchronous messages: a bounded number reaches
/// the events channel (and the log), the rest are read and dropped; the
/// session keeps working.
#[test]
fn an_async_event_flood_is_bounded() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_ready(|ctx| {
            for _ in 0..2000 {
                ctx.async_event(4, [0; 8], 0, &[]);
            }
        }));
        let (etx, erx) = event_channel();
        let c = initiator::connect(&f.portal(), TARGET_IQN, &config(), Some(etx))
            .unwrap_or_else(|e| panic!("login: {e}"));
        let lun = open(c);
        lun.test_unit_ready().expect("the session still works");
        let events = erx.try_iter().count();
        assert!((1..=20).contains(&events), "{events} events passed");
        assert!(lun.session().failure().is_none());
        f.assert_clean();
    })
}

// ---------------------------------------------------------------- 7 SCSI status

#[test]
fn unit_attention_busy_and_medium_error() {
    within(|| {
        let mut commands = 0;
        let mut busy_left = 2;
        let f = FakeTarget::start(Behaviour::default().on_pdu(move |ctx, seen| {
            let Some(c) = seen.command() else {
                return Step::Default;
            };
            commands += 1;
            if commands <= 2 {
                // POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
                ctx.check_condition(c, SenseKey::UnitAttention, 0x29, 0);
                return Step::Handled;
            }
            if is_read(c) && read_lba(c) == 50 && busy_left > 0 {
                busy_left -= 1;
                ctx.respond(c, 0x08, None);
                return Step::Handled;
            }
            if is_read(c) && read_lba(c) == 100 {
                // UNRECOVERED READ ERROR.
                ctx.check_condition(c, SenseKey::MediumError, 0x11, 0);
                return Step::Handled;
            }
            Step::Default
        }));
        let lun = open(connect(&f, &config()));
        assert_eq!(lun.info.serial.as_deref(), Some(SERIAL));
        assert_eq!(lun.info.blocks(), (8 << 20) / 512);

        let data = pattern(4096, 7);
        f.disk()[50 * BLOCK..50 * BLOCK + 4096].copy_from_slice(&data);
        let (r, back) = lun.read(50, vec![0u8; 4096]);
        r.unwrap_or_else(|e| panic!("BUSY twice, then the read: {e}"));
        assert!(back == data);

        let (r, _) = lun.read(100, vec![0u8; 4096]);
        let e = r.expect_err("a medium error fails the read");
        assert_mentions(&e.to_string(), &["MEDIUM ERROR", "READ(10)"]);

        let log = f.log();
        let reads_at = |lba| {
            log.commands()
                .filter(|(c, _)| is_read(c) && read_lba(c) == lba)
                .count()
        };
        assert_eq!(reads_at(50), 3, "BUSY retried");
        assert_eq!(reads_at(100), 1, "a medium error is not retried");
        drop(log);
        assert!(lun.session().failure().is_none());
        f.assert_clean();
    })
}

// ---------------------------------------------------------------- 8 hostile

/// Open the LUN normally, then answer a 4 KiB READ with `act`. The read
/// must fail, the session must drop the connection; returns the error text.
fn hostile(
    cfg: InitiatorConfig,
    mut act: impl FnMut(&mut Ctx<'_>, &ScsiCommand) + Send + Sync + 'static,
) -> String {
    within(move || {
        let f = FakeTarget::start(Behaviour::default().on_pdu(
            move |ctx, seen| match seen.command() {
                Some(c) if is_read(c) => {
                    act(ctx, c);
                    Step::Handled
                }
                _ => Step::Default,
            },
        ));
        let lun = open(connect(&f, &cfg));
        let (r, _) = lun.read(0, vec![0u8; 4096]);
        let msg = match r {
            Ok(()) => panic!("the read succeeded despite a hostile answer"),
            Err(e) => e.to_string(),
        };
        assert!(
            lun.session().failure().is_some(),
            "the session must drop the connection after: {msg}"
        );
        assert!(
            f.wait_for(Duration::from_secs(5), |l| !l.closed.is_empty()),
            "the connection must be closed after: {msg}"
        );
        msg
    })
}

#[test]
fn hostile_oversized_data_segment() {
    let m = hostile(config(), |ctx, c| {
        // A header claiming 16 MiB - 1 (the 24-bit maximum) of data.
        let bhs = data_in_pdu(c, ctx.sn(), 0, 0, false).to_bytes(0xff_ffff);
        ctx.send_raw(&bhs);
    });
    assert_mentions(&m, &["16777215-byte", "above the 262144 bytes"]);
}

#[test]
fn hostile_response_for_unknown_task() {
    let m = hostile(config(), |ctx, _| {
        let sn = ctx.status_sn();
        ctx.send(&good_pdu(0x7fff_7777, sn), &[]);
    });
    assert_mentions(&m, &["SCSI Response", "unknown task tag 0x7fff7777"]);
}

#[test]
fn hostile_data_in_beyond_the_buffer() {
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.status_sn();
        let off = c.expected_len - 256;
        ctx.send(&data_in_pdu(c, sn, 0, off, true), &[0xaa; 512]);
    });
    assert_mentions(&m, &["Data-In", "beyond the 4096-byte transfer"]);
}

#[test]
fn hostile_data_sn_out_of_order() {
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.sn();
        ctx.send(&data_in_pdu(c, sn, 0, 0, false), &[1; 512]);
        let sn = ctx.status_sn();
        ctx.send(&data_in_pdu(c, sn, 2, 512, true), &[2; 512]);
    });
    assert_mentions(&m, &["DataSN 2", "expected 1"]);
}

/// Data-In whose offsets overlap: without tracking which bytes arrived,
/// 5120 bytes "arrived" for a 4096-byte read whose last 2048... were never
/// all sent, and the read completed GOOD over stale buffer bytes.
#[test]
fn hostile_data_in_overlap() {
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.sn();
        ctx.send(&data_in_pdu(c, sn, 0, 0, false), &[1; 2048]);
        let sn = ctx.status_sn();
        ctx.send(&data_in_pdu(c, sn, 1, 1024, true), &[2; 3072]);
    });
    assert_mentions(&m, &["Data-In", "offset 1024, expected 2048", "overlap"]);
}

#[test]
fn hostile_data_in_gap() {
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.sn();
        ctx.send(&data_in_pdu(c, sn, 0, 0, false), &[1; 1024]);
        let sn = ctx.status_sn();
        ctx.send(&data_in_pdu(c, sn, 1, 2048, true), &[2; 2048]);
    });
    assert_mentions(&m, &["Data-In", "offset 2048, expected 1024", "hole"]);
}

/// Half the data with status GOOD and no underflow reported, in the last
/// Data-In (phase collapse) or in a SCSI Response after it.
#[test]
fn hostile_short_read_without_residual() {
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.status_sn();
        ctx.send(&data_in_pdu(c, sn, 0, 0, true), &[1; 2048]);
    });
    assert_mentions(&m, &["2048 of 4096 bytes arrived", "short read"]);
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.sn();
        ctx.send(&data_in_pdu(c, sn, 0, 0, false), &[1; 2048]);
        let sn = ctx.status_sn();
        ctx.send(&good_pdu(c.itt, sn), &[]);
    });
    assert_mentions(&m, &["2048 of 4096 bytes arrived", "short read"]);
}

/// A SCSI Response whose ExpDataSN counts Data-In PDUs that never came
/// (or a write's R2Ts that never came): a lost or invented PDU.
#[test]
fn hostile_exp_data_sn_that_does_not_count_what_arrived() {
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.sn();
        ctx.send(&data_in_pdu(c, sn, 0, 0, false), &[1; 4096]);
        let sn = ctx.status_sn();
        let mut p = good_pdu(c.itt, sn);
        if let Pdu::ScsiResponse(r) = &mut p {
            r.exp_data_sn = 3;
        }
        ctx.send(&p, &[]);
    });
    assert_mentions(&m, &["ExpDataSN 3", "1 Data-In and 0 R2T"]);
}

/// A residual that does not match what arrived.
#[test]
fn hostile_underflow_residual_that_does_not_add_up() {
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.status_sn();
        let mut p = data_in_pdu(c, sn, 0, 0, true);
        if let Pdu::DataIn(d) = &mut p {
            d.underflow = true;
            d.residual = 1024;
        }
        ctx.send(&p, &[1; 2048]);
    });
    assert_mentions(
        &m,
        &["2048 of 4096 bytes arrived, 3072 expected", "short read"],
    );
}

/// SYNCHRONIZE CACHE refused: with ILLEGAL REQUEST (nothing to flush, as
/// sd sees it) the flush succeeds; with anything else it fails, on the
/// backend both bridges share.
#[test]
fn a_refused_flush_succeeds_only_for_illegal_request() {
    use sanroot::bridge::{Backend, BlockOp, IscsiBackend};
    let flush = |key: SenseKey, asc: u8| {
        within(move || {
            let f =
                FakeTarget::start(Behaviour::default().on_pdu(
                    move |ctx, seen| match seen.command() {
                        Some(c) if c.cdb[0] == 0x35 => {
                            ctx.check_condition(c, key, asc, 0);
                            Step::Handled
                        }
                        _ => Step::Default,
                    },
                ));
            let c = connect(&f, &config());
            let s = Arc::new(c.session);
            let lun = Lun::open(Arc::clone(&s), 0).expect("open LUN 0");
            let b = IscsiBackend::new(s, lun.info.clone());
            let (tx, rx) = mpsc::channel();
            b.submit(
                BlockOp::Flush,
                Vec::new(),
                sanroot::completion::Done::new(move |r, _| {
                    let _ = tx.send(r);
                }),
            );
            let r = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the flush completes");
            // `sanroot cp` flushes through Lun: the same rule.
            assert_eq!(r.is_ok(), lun.flush().is_ok(), "{r:?}");
            r.map_err(|e| e.to_string())
        })
    };
    assert_eq!(flush(SenseKey::IllegalRequest, 0x20), Ok(()));
    assert_eq!(flush(SenseKey::IllegalRequest, 0x25), Ok(()));
    let e = flush(SenseKey::MediumError, 0x0c).unwrap_err();
    assert_mentions(&e, &["SYNCHRONIZE CACHE"]);
}

/// ALUA on the backend the bridges share: NOT READY 04/0B (standby) and
/// 04/0C (unavailable) fail a read at once as this port's state (the path
/// set sends it through another path), 04/0A (transitioning) is retried
/// with backoff first, and the unit attention ASYMMETRIC ACCESS STATE
/// CHANGED reaches the owner's hook (it reads the groups' states again)
/// and the command is retried.
#[test]
fn alua_sense_is_the_ports_state_and_state_changes_reach_the_hook() {
    use sanroot::bridge::{Backend, BlockError, BlockOp, IscsiBackend};
    use sanroot::scsi::alua::AccessState;
    use sanroot::scsi::sense::UnitAttentionReason;
    within(|| {
        let mut ua_sent = false;
        let f = FakeTarget::start(Behaviour::default().on_pdu(
            move |ctx, seen| match seen.command() {
                Some(c) if is_read(c) && read_lba(c) == 1 => {
                    ctx.check_condition(c, SenseKey::NotReady, 0x04, 0x0b);
                    Step::Handled
                }
                Some(c) if is_read(c) && read_lba(c) == 2 => {
                    ctx.check_condition(c, SenseKey::NotReady, 0x04, 0x0c);
                    Step::Handled
                }
                Some(c) if is_read(c) && read_lba(c) == 3 => {
                    ctx.check_condition(c, SenseKey::NotReady, 0x04, 0x0a);
                    Step::Handled
                }
                Some(c) if is_read(c) && read_lba(c) == 4 && !ua_sent => {
                    ua_sent = true;
                    ctx.check_condition(c, SenseKey::UnitAttention, 0x2a, 0x06);
                    Step::Handled
                }
                _ => Step::Default,
            },
        ));
        let c = connect(&f, &config());
        let s = Arc::new(c.session);
        let lun = Lun::open(Arc::clone(&s), 0).expect("open LUN 0");
        let (htx, hrx) = mpsc::channel();
        let htx = std::sync::Mutex::new(htx);
        let hook: sanroot::bridge::UaHook = Arc::new(move |r| {
            let _ = htx.lock().unwrap().send(r);
        });
        let b = IscsiBackend::new(s, lun.info.clone()).with_ua_hook(Some(hook));
        let read = |lba: u64| {
            let (tx, rx) = mpsc::channel();
            b.submit(
                BlockOp::Read { lba, blocks: 1 },
                vec![0u8; BLOCK],
                sanroot::completion::Done::new(move |r, _| {
                    let _ = tx.send(r);
                }),
            );
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the read completes")
        };
        let port = |r: Result<(), BlockError>| match r {
            Err(BlockError::PortState(st, why)) => {
                assert_mentions(&why, &["NOT READY"]);
                st
            }
            other => panic!("expected the port's state, got {other:?}"),
        };
        assert_eq!(port(read(1)), AccessState::Standby);
        assert_eq!(port(read(2)), AccessState::Unavailable);
        assert_eq!(port(read(3)), AccessState::Transitioning);
        assert_eq!(read(4), Ok(()));
        assert_eq!(
            hrx.recv_timeout(Duration::from_secs(5)),
            Ok(UnitAttentionReason::AccessStateChanged)
        );
        let log = f.log();
        let reads_at = |lba| {
            log.commands()
                .filter(|(c, _)| is_read(c) && read_lba(c) == lba)
                .count()
        };
        assert_eq!(
            (reads_at(1), reads_at(2)),
            (1, 1),
            "standby is not retried here"
        );
        assert!(
            reads_at(3) > 1,
            "transitioning is retried with backoff first"
        );
        assert_eq!(reads_at(4), 2, "the unit attention is retried");
        drop(log);
        f.assert_clean();
    })
}

/// A properly reported underflow (U bit, residual 2048, 2048 bytes sent):
/// no protocol error, the session stays, but the read fails as a short
/// read: its last 2048 bytes are not the LU's data.
#[test]
fn reported_underflow_is_a_short_read_not_success() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_pdu(
            move |ctx, seen| match seen.command() {
                Some(c) if is_read(c) => {
                    ctx.data_in(c, &[7; 2048]);
                    Step::Handled
                }
                _ => Step::Default,
            },
        ));
        let lun = open(connect(&f, &config()));
        let (r, _) = lun.read(0, vec![0u8; 4096]);
        let msg = r.expect_err("a short read must fail").to_string();
        assert_mentions(&msg, &["short read", "2048 of 4096"]);
        assert!(lun.session().failure().is_none(), "{msg}");
    })
}

#[test]
fn hostile_r2t_for_a_read() {
    let m = hostile(config(), |ctx, c| {
        let pdu = Pdu::R2t(R2t {
            lun: c.lun,
            itt: c.itt,
            ttt: 0x99,
            sn: ctx.sn(),
            r2t_sn: 0,
            buffer_offset: 0,
            desired_len: 512,
        });
        ctx.send(&pdu, &[]);
    });
    assert_mentions(&m, &["R2T", "writes nothing"]);
}

#[test]
fn hostile_header_cut_short() {
    let m = hostile(config(), |ctx, c| {
        let sn = ctx.status_sn();
        let bhs = good_pdu(c.itt, sn).to_bytes(0);
        ctx.send_raw(&bhs[..20]);
        ctx.hang_up();
    });
    assert_mentions(&m, &["closed", "20 bytes of a PDU header"]);
}

#[test]
fn hostile_header_digest_error() {
    let m = hostile(digests(), |ctx, c| {
        let sn = ctx.status_sn();
        ctx.send_corrupt(&good_pdu(c.itt, sn), &[], Corrupt::HeaderDigest);
    });
    assert_mentions(&m, &["header digest error"]);
}

#[test]
fn hostile_data_digest_error() {
    let m = hostile(digests(), |ctx, c| {
        let sn = ctx.status_sn();
        let data = pattern(4096, 1);
        ctx.send_corrupt(&data_in_pdu(c, sn, 0, 0, true), &data, Corrupt::DataDigest);
    });
    assert_mentions(&m, &["data digest error", "Data-In"]);
}

/// 48 bytes from a fixed xorshift, opcode byte forced to the unassigned
/// 0x1d.
fn garbage() -> [u8; 48] {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut g = [0u8; 48];
    for b in g.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    g[0] = 0x1d;
    g
}

#[test]
fn hostile_garbage_without_ahs() {
    let m = hostile(config(), |ctx, _| {
        let mut g = garbage();
        g[4] = 0; // TotalAHSLength
        ctx.send_raw(&g);
        // And keep the connection open: the initiator must not wait.
    });
    assert_mentions(&m, &["unknown PDU opcode 0x1d"]);
}

#[test]

fn hostile_garbage() {
    assert_ne!(garbage()[4], 0, "random garbage claims an AHS");
    // NOPs off, as open-iscsi advises for a root disk: nothing else can
    // break a wait.
    let mut cfg = config();
    cfg.session.nop_interval = None;
    let m = hostile(cfg, |ctx, _| {
        ctx.send_raw(&garbage());
        // And keep the connection open: the initiator must not wait.
    });
    assert_mentions(&m, &["unknown PDU opcode 0x1d"]);
}

// ---------------------------------------------------------------- ALUA

/// REPORT TARGET PORT GROUPS through the engine: a list longer than the
/// first allocation length is fetched again at its full length.
#[test]
fn report_target_port_groups_fetches_the_whole_list() {
    within(|| {
        let groups = TargetPortGroups {
            transition_time: Some(10),
            groups: (0..200u16)
                .map(|id| PortGroup {
                    preferred: id == 1,
                    state: if id == 1 {
                        AccessState::ActiveOptimized
                    } else {
                        AccessState::Standby
                    },
                    supported: 0x0f,
                    id,
                    status: 0,
                    vendor: 0,
                    ports: vec![id, id + 1000],
                })
                .collect(),
            data_len: 0,
            truncated: false,
        };
        let mut bytes = Vec::new();
        groups.emit(&mut bytes);
        assert!(bytes.len() > 1024, "longer than the first allocation");
        let f = FakeTarget::start(Behaviour::default().on_pdu(
            move |ctx, seen| match seen.command() {
                Some(c) if c.cdb[0] == 0xa3 && c.cdb[1] & 0x1f == 0x0a => {
                    let n = bytes.len().min(c.expected_len as usize);
                    ctx.data_in(c, &bytes[..n]);
                    Step::Handled
                }
                _ => Step::Default,
            },
        ));
        let c = connect(&f, &config());
        let t = lun::report_target_port_groups(&c.session, 0).expect("RTPG");
        assert!(!t.truncated);
        assert_eq!(t.groups.len(), 200);
        assert_eq!(t.transition_time, Some(10));
        let g = t.group_of_port(1001).expect("port 1001");
        assert_eq!(
            (g.id, g.state, g.preferred),
            (1, AccessState::ActiveOptimized, true)
        );
        let asks: Vec<u32> = f
            .log()
            .commands()
            .filter(|(c, _)| c.cdb[0] == 0xa3)
            .map(|(c, _)| c.expected_len)
            .collect();
        assert_eq!(asks, [1024, t.alloc_len_needed()]);
        f.assert_clean();
    })
}

/// A target that sends less than the RETURN DATA LENGTH it announces,
/// with room enough given (Linux 6.12's LIO does so in the extended
/// format, 4 bytes short): an error naming it, not a list missing a port.
#[test]
fn report_target_port_groups_cut_short_is_an_error() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default().on_pdu(|ctx, seen| {
            match seen.command() {
                Some(c) if c.cdb[0] == 0xa3 => {
                    // Extended header, one group of one port, cut 4 bytes short.
                    let data = [0, 0, 0, 12, 0x10, 0, 0, 0, 0, 0xcf, 0, 0, 0, 0, 0, 1];
                    ctx.data_in(c, &data);
                    Step::Handled
                }
                _ => Step::Default,
            }
        }));
        let c = connect(&f, &config());
        let e = lun::report_target_port_groups(&c.session, 0).expect_err("cut short");
        assert_mentions(
            &e.to_string(),
            &["REPORT TARGET PORT GROUPS", "RETURN DATA LENGTH"],
        );
        assert!(c.session.failure().is_none());
        f.assert_clean();
    })
}

// ---------------------------------------------------------------- 9 TMF

#[test]
fn lun_reset_answers() {
    within(|| {
        let f = FakeTarget::start(Behaviour::default());
        let c = connect(&f, &config());
        c.session
            .lun_reset(0)
            .expect("TMF response 0: function complete");
        assert!(f.log().pdus.iter().any(|s| matches!(
            &s.pdu,
            Pdu::TaskMgmtRequest(t) if t.function == TmfFunction::LogicalUnitReset && t.lun == lun_field(0)
        )));
        f.assert_clean();

        let f = FakeTarget::start(Behaviour {
            tmf_response: 5,
            ..Behaviour::default()
        });
        let c = connect(&f, &config());
        let e = c.session.lun_reset(0).expect_err("TMF response 5");
        assert!(matches!(e, SessionError::TaskManagement(5)), "{e:?}");
        assert_mentions(&e.to_string(), &["not supported"]);
        assert!(
            c.session.failure().is_none(),
            "a refused TMF keeps the session"
        );
        f.assert_clean();
    })
}

/// Read block 7 while a caller's LOGICAL UNIT RESET goes out (once the
/// READ is on the wire); the READ must succeed well before the 30 s
/// command timeout. Its bytes.
fn read_across_a_lun_reset(f: &FakeTarget, lun: &Arc<Lun>) -> Vec<u8> {
    let l = Arc::clone(lun);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(l.read(7, vec![0u8; BLOCK]));
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while f
        .log()
        .commands()
        .filter(|(c, _)| is_read(c) && read_lba(c) == 7)
        .count()
        == 0
    {
        assert!(Instant::now() < deadline, "the READ was never sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    lun.session().lun_reset(0).expect("function complete");
    let (r, data) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the READ is answered");
    r.expect("the READ sent again succeeds");
    data
}

/// A caller's LOGICAL UNIT RESET (the path set's fence) ends this
/// session's own commands to the LU too, and the target sends no answer
/// for them: they are sent again as soon as the reset is done, not after
/// the command timeout.
#[test]
fn a_callers_lun_reset_sends_the_sessions_own_commands_again() {
    within(|| {
        let mut first = true;
        let f = FakeTarget::start(Behaviour::default().on_pdu(
            move |_, seen| match seen.command() {
                // The first READ is ended by the reset, unanswered.
                Some(c) if is_read(c) && read_lba(c) == 7 && first => {
                    first = false;
                    Step::Handled
                }
                _ => Step::Default,
            },
        ));
        let lun = Arc::new(open(connect(&f, &config())));
        read_across_a_lun_reset(&f, &lun);
        let log = f.log();
        assert_eq!(
            log.commands()
                .filter(|(c, _)| is_read(c) && read_lba(c) == 7)
                .count(),
            2,
            "sent once, then again after the reset"
        );
        drop(log);
        assert!(lun.session().failure().is_none());
        f.assert_clean();
    })
}

/// As LIO does: the reset's answer comes first, then the answer to a
/// command the reset did not stop. The command was already sent again:
/// the late answer is read and dropped (its bytes never reach the read's
/// buffer), the session lives on, and the retry's answer is the one used.
#[test]
fn a_late_answer_after_a_lun_reset_is_dropped() {
    within(|| {
        let mut held: Option<ScsiCommand> = None;
        let mut first = true;
        let f = FakeTarget::start(
            Behaviour::default().on_pdu(move |ctx, seen| match &seen.pdu {
                Pdu::ScsiCommand(c) if is_read(c) && read_lba(c) == 7 && first => {
                    first = false;
                    held = Some(c.clone());
                    Step::Handled
                }
                Pdu::TaskMgmtRequest(t) if t.function == TmfFunction::LogicalUnitReset => {
                    let sn = ctx.status_sn();
                    ctx.send(
                        &Pdu::TaskMgmtResponse(TaskMgmtResponse {
                            response: 0,
                            itt: t.itt,
                            sn,
                        }),
                        &[],
                    );
                    if let Some(c) = held.take() {
                        ctx.data_in(&c, &[0xee; BLOCK]);
                    }
                    Step::Handled
                }
                _ => Step::Default,
            }),
        );
        f.disk()[7 * BLOCK..8 * BLOCK].copy_from_slice(&[0x5a; BLOCK]);
        let lun = Arc::new(open(connect(&f, &config())));
        let data = read_across_a_lun_reset(&f, &lun);
        assert!(
            data == [0x5a; BLOCK],
            "only the retry's bytes are in the buffer"
        );
        assert!(lun.session().failure().is_none(), "the session lives on");
        let (r, _) = lun.read(0, vec![0u8; BLOCK]);
        r.expect("and keeps working");
    })
}

// ---------------------------------------------------------------- 10 discovery

const SEND_TARGETS: &[u8] = b"TargetName=iqn.2026-11.org.sanroot.test:one\0\
TargetAddress=127.0.0.1:3260,1\0\
TargetAddress=[fd00::5]:3261,2\0\
TargetName=iqn.2026-11.org.sanroot.test:two\0\
TargetAddress=10.0.0.2:3262,3\0\
TargetName=iqn.2026-11.org.sanroot.test:three\0\
TargetAddress=10.0.0.3,4\0";

/// Discover through a fake whose SendTargets answer is split at `at`;
/// check the answer and the continuation; return the protocol violations
/// the fake saw.
fn discover_split(at: usize, cont: bool) -> Vec<String> {
    within(move || {
        let f = FakeTarget::start(Behaviour {
            send_targets: vec![
                TextChunk {
                    data: SEND_TARGETS[..at].to_vec(),
                    cont,
                },
                TextChunk {
                    data: SEND_TARGETS[at..].to_vec(),
                    cont: false,
                },
            ],
            ..Behaviour::default()
        });
        let targets = initiator::discover(&f.portal(), &config())
            .unwrap_or_else(|e| panic!("discovery: {e}"));
        let p = |host: &str, port, tpgt| TextPortal {
            host: host.into(),
            port,
            tpgt,
        };
        let got: Vec<(&str, &[TextPortal])> = targets
            .iter()
            .map(|t| (t.name.as_str(), &t.portals[..]))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "iqn.2026-11.org.sanroot.test:one",
                    &[p("127.0.0.1", 3260, 1), p("fd00::5", 3261, 2)][..]
                ),
                (
                    "iqn.2026-11.org.sanroot.test:two",
                    &[p("10.0.0.2", 3262, 3)][..]
                ),
                (
                    "iqn.2026-11.org.sanroot.test:three",
                    &[p("10.0.0.3", 3260, 4)][..]
                ),
            ]
        );
        let log = f.log();
        assert_eq!(log.login_keys[0].get("SessionType"), Some("Discovery"));
        let texts: Vec<_> = log
            .pdus
            .iter()
            .filter_map(|s| match &s.pdu {
                Pdu::TextRequest(t) => Some((t.ttt, s.data.len())),
                _ => None,
            })
            .collect();
        assert_eq!(texts.len(), 2, "{texts:x?}");
        assert_eq!(texts[0].0, RESERVED_TAG);
        assert_eq!(texts[1], (0x7e00, 0), "an empty Text Request with our TTT");
        assert!(
            log.pdus
                .iter()
                .any(|s| matches!(s.pdu, Pdu::LogoutRequest(_))),
            "discovery logs out"
        );
        log.violations.clone()
    })
}

/// Violations other than the known engine bug that
/// `discovery_text_requests_carry_the_current_cmd_sn` shows.
fn unexpected(violations: Vec<String>) -> Vec<String> {
    violations
        .into_iter()
        .filter(|v| !v.contains("with CmdSN"))
        .collect()
}

#[test]
fn discovery_over_two_text_responses() {
    // Split between two key=value pairs: F=0, C=0, a TTT.
    let second = b"TargetName=iqn.2026-11.org.sanroot.test:two";
    let at = SEND_TARGETS
        .windows(second.len())
        .position(|w| w == second)
        .expect("split point");
    let v = unexpected(discover_split(at, false));
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn discovery_text_continued_mid_value() {
    // Split inside "[fd00::5]": F=0, C=1.
    let at = SEND_TARGETS
        .windows(4)
        .position(|w| w == b"fd00")
        .expect("split point")
        + 2;
    let v = unexpected(discover_split(at, true));
    assert!(v.is_empty(), "{v:#?}");
}

#[test]

fn discovery_text_requests_carry_the_current_cmd_sn() {
    // Text and Logout Requests go out with the I bit, so each must carry
    // the current CmdSN and not advance it (RFC 7143 §3.2.2.1); the fake
    // expects CmdSN 1 on all three, the engine sends 1, 2, 3.
    let v = discover_split(20, false);
    assert!(v.is_empty(), "{v:#?}");
}

/// A multipath target lists its other portals in SendTargets: sanroot
/// learns them after the login and, when the portal in use goes away,
/// reconnects through one of them with the same ISID; the writes held
/// meanwhile land on the other portal's side.
#[test]
fn reconnects_use_the_portals_that_discovery_lists() {
    use sanroot::bridge::recover::{
        PathSpec, Reconnect, RecoveringBackend, RecoveryEvent, RecoveryPolicy,
        discover_other_portals,
    };
    use sanroot::bridge::{Backend, BlockOp, IscsiBackend};
    within(|| {
        let second = FakeTarget::start(Behaviour::default());
        let name = Behaviour::default().target_name;
        let answer = format!(
            "TargetName={name}\0TargetAddress=127.0.0.1:{},1\0TargetName=iqn.2026-11.org.sanroot.test:else\0TargetAddress=127.0.0.1:1,1\0",
            second.port
        );
        let first = FakeTarget::start(Behaviour {
            send_targets: vec![TextChunk {
                data: answer.into_bytes(),
                cont: false,
            }],
            ..Behaviour::default()
        });
        let via = PathSpec {
            portal: first.portal(),
            target: name.clone(),
            auth: None,
        };
        let mut cfg = config();
        cfg.isid = Some(sanroot::iscsi::login::random_isid());
        let more = discover_other_portals(&via, std::slice::from_ref(&via), &cfg);
        let got: Vec<String> = more.iter().map(|p| p.portal.to_string()).collect();
        assert_eq!(got, [second.portal().to_string()]);

        let c = initiator::connect(&via.portal, &name, &cfg, None).expect("login");
        let s = Arc::new(c.session);
        let lun = Lun::open(Arc::clone(&s), 0).expect("open LUN 0");
        let (tx, events) = mpsc::channel();
        let mut paths = vec![via];
        paths.extend(more);
        let b = RecoveringBackend::new(
            IscsiBackend::new(s, lun.info.clone()),
            Reconnect {
                paths,
                lun: 0,
                cfg,
                session_events: None,
                on_ua: None,
            },
            RecoveryPolicy {
                first_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                give_up_after: Some(Duration::from_secs(15)),
            },
            Some(tx),
        );
        // The first portal goes away: connections closed, nothing listens.
        drop(first);
        let (done_tx, done) = mpsc::channel();
        b.submit(
            BlockOp::Write {
                lba: 8,
                blocks: 1,
                fua: false,
            },
            vec![0xa5; 512],
            sanroot::completion::Done::new(move |r, _| {
                let _ = done_tx.send(r);
            }),
        );
        done.recv_timeout(Duration::from_secs(15))
            .expect("the write completes")
            .expect("the write succeeds through the other portal");
        assert!(second.disk()[8 * 512..9 * 512].iter().all(|&x| x == 0xa5));
        let ev: Vec<RecoveryEvent> = events.try_iter().collect();
        assert!(
            ev.iter().any(|e| matches!(e, RecoveryEvent::Recovered { portal, .. } if *portal == second.portal().to_string())),
            "{ev:?}"
        );
        second.assert_clean();
    });
}

// ------------------------------------------------- reads into a bridge

/// A bridge that lent one buffer (see `sanroot::direct`): the segments it
/// took straight from the socket (offset, bytes), and how many read
/// attempts began.
struct Lender {
    addr: usize,
    took: Mutex<Vec<(usize, Vec<u8>)>>,
    begun: Mutex<usize>,
}

impl sanroot::direct::DirectRx for Lender {
    fn lookup(&self, addr: usize) -> Option<usize> {
        (addr == self.addr).then_some(3)
    }
    fn begin(&self, token: usize) {
        assert_eq!(token, 3);
        *self.begun.lock().unwrap() += 1;
        self.took.lock().unwrap().clear();
    }
    fn receive(
        &self,
        token: usize,
        off: usize,
        src: &mut dyn sanroot::direct::Source,
        scratch: &mut [u8],
    ) -> std::io::Result<()> {
        assert_eq!(token, 3);
        // Not through `scratch`: the test shows those bytes never touch
        // the task's buffer.
        let mut own = vec![0u8; scratch.len()];
        src.read_exact(&mut own)?;
        self.took.lock().unwrap().push((off, own));
        Ok(())
    }
}

/// Read `len` bytes at LBA 0 into a buffer a [`Lender`] lent, with `cfg`:
/// (the buffer handed back, the lender, the data written).
fn read_lent(cfg: InitiatorConfig, len: usize) -> (Vec<u8>, Arc<Lender>, Vec<u8>) {
    let f = FakeTarget::start(Behaviour::default());
    let lun = open(connect(&f, &cfg));
    let data = pattern(len, 9);
    let (r, _) = lun.write(0, data.clone(), false);
    r.expect("write the pattern");
    let buf = vec![0xeeu8; len];
    let lender = Arc::new(Lender {
        addr: buf.as_ptr() as usize,
        took: Mutex::new(Vec::new()),
        begun: Mutex::new(0),
    });
    let as_rx: Arc<dyn sanroot::direct::DirectRx> = lender.clone();
    sanroot::direct::register(Arc::clone(&as_rx));
    let (r, back) = lun.read(0, buf);
    sanroot::direct::unregister(&as_rx);
    r.expect("read the pattern back");
    f.assert_clean();
    (back, lender, data)
}

/// Zero copy's contract on the session side: a read into a buffer that a
/// bridge lent offers the bridge every large segment's bytes still on the
/// socket; what the bridge takes never touches the buffer, and the buffer
/// holds every other byte. Together they are the data.
#[test]
fn read_data_goes_to_the_bridge_that_lent_the_buffer() {
    within(|| {
        let len = 384 << 10;
        let (back, lender, data) = read_lent(config(), len);
        assert_eq!(*lender.begun.lock().unwrap(), 1, "one attempt");
        let took = lender.took.lock().unwrap();
        assert!(!took.is_empty(), "the bridge was offered the socket");
        let mut whole = back.clone();
        let mut taken = 0;
        for (off, bytes) in took.iter() {
            assert!(
                back[*off..off + bytes.len()].iter().all(|&b| b == 0xee),
                "bytes the bridge took at {off} went into the buffer too"
            );
            whole[*off..off + bytes.len()].copy_from_slice(bytes);
            taken += bytes.len();
        }
        assert!(whole == data, "buffer and bridge together hold the data");
        eprintln!("the bridge took {taken} of {len} bytes");
    })
}

/// With a data digest the session must check the bytes before anyone
/// sees them: the bridge hears the attempt began (so it copies the
/// buffer), and the data goes into the buffer.
#[test]
fn with_a_data_digest_read_data_stays_in_the_buffer() {
    within(|| {
        let len = 128 << 10;
        let (back, lender, data) = read_lent(digests(), len);
        assert_eq!(*lender.begun.lock().unwrap(), 1, "one attempt");
        assert!(
            lender.took.lock().unwrap().is_empty(),
            "nothing went to the bridge"
        );
        assert!(back == data, "the buffer holds the data");
    })
}

/// An answer the big-exchange tests collect: write or read, status, buffer.
type Big = (bool, Result<u8, SessionError>, Vec<u8>);

/// Submit a READ(10) or WRITE(10) of `buf` at `lba` on LUN 0; its answer
/// goes to `tx`.
fn submit_big(
    s: &sanroot::iscsi::session::Session,
    lba: u64,
    buf: Vec<u8>,
    write: bool,
    tx: &mpsc::Sender<Big>,
) {
    let blocks = (buf.len() / BLOCK) as u32;
    let (c, dir) = if write {
        (
            cdb::write(lba, blocks, false),
            DataDir::Write(buf.len() as u32),
        )
    } else {
        (
            cdb::read(lba, blocks, false),
            DataDir::Read(buf.len() as u32),
        )
    };
    let tx = tx.clone();
    s.submit(
        Command {
            lun: 0,
            cdb: c.bytes,
            dir,
            attr: 1,
        },
        buf,
        sanroot::completion::Done::new(
            move |r: Result<sanroot::iscsi::session::ScsiResult, SessionError>, b: Vec<u8>| {
                let _ = tx.send((write, r.map(|s| s.status), b));
            },
        ),
    );
}

const BIG_READ: usize = 16 << 20;
const BIG_WRITE: usize = 256 << 10;

/// A fake target that answers a read of [`BIG_READ`] bytes after half a
/// second, reading nothing meanwhile (as tgtd does while a send of its own
/// is blocked: it retries the full socket in a loop), and takes writes of
/// [`BIG_WRITE`] bytes as immediate data.
fn deaf_while_sending() -> FakeTarget {
    FakeTarget::start(
        Behaviour {
            first_burst: BIG_WRITE as u32,
            cmd_window: 128,
            ..Behaviour::default()
        }
        .on_command(
            |c| is_read(c) && c.expected_len as usize == BIG_READ,
            |ctx, c| {
                std::thread::sleep(Duration::from_millis(500));
                ctx.data_in(c, &pattern(BIG_READ, 7));
            },
        ),
    )
}

/// `n` answers from `done`, each GOOD, the big read with the target's
/// bytes.
fn all_good(done: &mpsc::Receiver<Big>, n: usize, mut pump: impl FnMut()) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = 0;
    while got < n {
        pump();
        match done.recv_timeout(Duration::from_millis(5)) {
            Ok((write, r, b)) => {
                assert_eq!(r.as_ref().ok(), Some(&0), "GOOD (write {write})");
                if !write {
                    assert!(b == pattern(BIG_READ, 7), "the read has the target's bytes");
                }
                got += 1;
            }
            Err(_) => assert!(
                Instant::now() < deadline,
                "{got} of {n} commands answered in 15 s: reader and target wait for each other"
            ),
        }
    }
}

/// The receive side never waits for the transmit side. The target answers
/// a 16 MiB read without reading anything meanwhile, and the initiator has
/// 16 MiB of writes (immediate data) on the way to it: the thread sending
/// them blocks on the full socket, holding the connection's transmit
/// side, and more writes wait to be sent. The reader reaches idle points
/// (between Data-In segments) with those writes waiting: if it waited
/// there for the transmit side, reader and target would each wait for the
/// other until a timeout broke the session. Every command must complete
/// GOOD, the read with the target's bytes.
#[test]
fn the_reader_never_waits_for_a_blocked_writer() {
    within(|| {
        let f = deaf_while_sending();
        let s = Arc::new(connect(&f, &config()).session);
        let (tx, done) = mpsc::channel();
        submit_big(&s, 0, vec![0u8; BIG_READ], false, &tx);
        assert!(
            f.wait_for(Duration::from_secs(5), |l| l
                .commands()
                .any(|(c, _)| is_read(c))),
            "the target has the read"
        );
        // Two submitters: the first blocks in the socket write, holding
        // the transmit side; the second's writes are queued behind it.
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let (s, tx) = (Arc::clone(&s), tx.clone());
                std::thread::spawn(move || {
                    if t == 1 {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    for i in 0..32u64 {
                        let lba = i * (BIG_WRITE / BLOCK) as u64;
                        submit_big(&s, lba, pattern(BIG_WRITE, i as u8), true, &tx);
                    }
                })
            })
            .collect();
        all_good(&done, 65, || {});
        for w in writers {
            w.join().unwrap();
        }
        assert!(s.failure().is_none(), "the session lives");
        f.assert_clean();
    })
}

/// A thread that took a session's receive side over (a ublk queue) and
/// submits on it never waits on the socket to send: there it would stop
/// reading the target's answers, and a target that reads nothing while
/// its own send is blocked would never read the rest of the commands.
/// Against the same target as above, this thread submits the read and 16
/// MiB of writes itself, then pumps: what the socket cannot take at once
/// is left to the session's writer. Every command must complete GOOD.
#[test]
fn a_receiving_thread_never_waits_to_send() {
    within(|| {
        let f = deaf_while_sending();
        let s = Arc::new(connect(&f, &config()).session);
        let (tx, done) = mpsc::channel();
        // The reader parks at its next PDU boundary: a small read's answer.
        let parked = Arc::new(support::parked::Parked::default());
        s.request_rx(parked.clone());
        submit_big(&s, 0, vec![0u8; 4096], false, &tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !parked.parked() {
            assert!(Instant::now() < deadline, "the reader parks");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut rx = s.take_rx().expect("the receive side");
        let mut pump = move || {
            let mut p = nix::libc::pollfd {
                fd: rx.fd(),
                events: nix::libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd living across the call.
            let n = unsafe { nix::libc::poll(&mut p, 1, 5) };
            while rx.pump(64, n > 0).expect("pump") {}
        };
        // The small read's answer came to the reader or comes to us.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (w, r, _) = loop {
            if let Ok(a) = done.try_recv() {
                break a;
            }
            assert!(Instant::now() < deadline, "the small read is answered");
            pump();
        };
        assert!(!w && r.is_ok());
        submit_big(&s, 0, vec![0u8; BIG_READ], false, &tx);
        for i in 0..64u64 {
            let lba = (i % 32) * (BIG_WRITE / BLOCK) as u64;
            submit_big(&s, lba, pattern(BIG_WRITE, i as u8), true, &tx);
        }
        all_good(&done, 65, &mut pump);
        drop(pump);
        assert!(s.failure().is_none(), "the session lives");
        f.assert_clean();
    })
}
