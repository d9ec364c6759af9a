//! Losing the target mid-write and coming back: tgtd is killed (as a crash
//! would, connections reset) and restarted while writes are in flight.
//! Every write must complete, the data must be on the target, and the
//! target must show one session (reinstated by ISID, not leaked).

mod support;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use sanroot::bridge::recover::{
    PathSpec, Reconnect, RecoveringBackend, RecoveryEvent, RecoveryPolicy,
};
use sanroot::bridge::{Backend, BlockError, BlockOp, IscsiBackend};
use sanroot::iscsi::initiator::{self, InitiatorConfig};
use sanroot::iscsi::login::{Portal, random_isid};
use sanroot::lun::Lun;
use support::tgtd::{LunSpec, Tgtd};

const IQN: &str = "iqn.2026-11.org.sanroot.test:recover";
const INITIATOR: &str = "iqn.2026-11.org.sanroot.test:initiator";
const CHUNK: usize = 64 * 1024;

fn chunk(i: usize) -> Vec<u8> {
    (0..CHUNK)
        .map(|j| (i * 7 + j / 512) as u8 ^ (j as u8))
        .collect()
}

fn setup(t: &Tgtd) -> (Arc<RecoveringBackend>, mpsc::Receiver<RecoveryEvent>) {
    let portal = Portal::new("127.0.0.1", t.port);
    let mut cfg = InitiatorConfig::new(INITIATOR);
    cfg.isid = Some(random_isid());
    cfg.session.nop_interval = Some(Duration::from_secs(1));
    cfg.session.nop_timeout = Duration::from_secs(2);
    let c = initiator::connect(&portal, IQN, &cfg, None).expect("login");
    let s = Arc::new(c.session);
    let lun = Lun::open(Arc::clone(&s), 1).expect("open");
    let (tx, rx) = mpsc::channel();
    let b = RecoveringBackend::new(
        IscsiBackend::new(s, lun.info.clone()),
        Reconnect {
            paths: vec![PathSpec {
                portal,
                target: IQN.into(),
                auth: None,
            }],
            lun: 1,
            cfg,
            session_events: None,
            on_ua: None,
        },
        RecoveryPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            give_up_after: Some(Duration::from_secs(60)),
        },
        Some(tx),
    );
    (b, rx)
}

fn write_all(
    b: &Arc<RecoveringBackend>,
    n: usize,
    during: impl FnOnce(),
) -> Vec<Result<(), BlockError>> {
    let (tx, rx) = mpsc::channel();
    let blocks = (CHUNK / 512) as u32;
    let mut during = Some(during);
    for i in 0..n {
        let tx = tx.clone();
        b.submit(
            BlockOp::Write {
                lba: (i * CHUNK / 512) as u64,
                blocks,
                fua: false,
            },
            chunk(i),
            sanroot::bridge::BlockDone::new(move |r, _| {
                let _ = tx.send((i, r));
            }),
        );
        if i == n / 3
            && let Some(f) = during.take()
        {
            f();
        }
    }
    let mut out: Vec<Option<Result<(), BlockError>>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (i, r) = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("every write completes");
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.unwrap_or(Err(BlockError::Io("missing".into()))))
        .collect()
}

#[test]
fn target_restart_during_writes_loses_nothing() {
    let mut t = Tgtd::start();
    t.target(1, IQN);
    let backing = t
        .lun(
            1,
            1,
            &LunSpec {
                size: 64 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    let (b, events) = setup(&t);
    let n = 300;
    let results = write_all(&b, n, || {
        t.restart();
        t.target(1, IQN);
        t.lun_file(1, 1, &backing);
    });
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "write {i} failed: {r:?}");
    }
    let ev: Vec<RecoveryEvent> = events.try_iter().collect();
    assert!(
        ev.iter().any(|e| matches!(e, RecoveryEvent::Lost { .. })),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| matches!(e, RecoveryEvent::Recovered { .. })),
        "{ev:?}"
    );
    // Flush through the recovered session, then compare the target's bytes.
    let (tx, rx) = mpsc::channel();
    b.submit(
        BlockOp::Flush,
        Vec::new(),
        sanroot::bridge::BlockDone::new(move |r, _| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(Duration::from_secs(30))
        .expect("flush")
        .expect("flush ok");
    let file = std::fs::read(&backing).unwrap();
    for i in 0..n {
        assert!(
            file[i * CHUNK..(i + 1) * CHUNK] == chunk(i)[..],
            "chunk {i} is on the target"
        );
    }
    assert_eq!(t.sessions(1), 1, "one session on the target after recovery");
}

#[test]
fn another_disk_after_reconnect_is_refused() {
    let mut t = Tgtd::start();
    t.target(1, IQN);
    let backing = t
        .lun(
            1,
            1,
            &LunSpec {
                size: 16 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    let (b, events) = setup(&t);
    // After the restart the same name serves a different LU (another tid
    // gives it another serial and NAA designator).
    let results = write_all(&b, 30, || {
        t.restart();
        t.target(2, IQN);
        t.lun_file(2, 1, &backing);
    });
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert!(failed > 0, "writes after the swap must fail");
    let ev: Vec<RecoveryEvent> = events.try_iter().collect();
    let msg = ev
        .iter()
        .find_map(|e| match e {
            RecoveryEvent::Failed(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a Failed event: {ev:?}"));
    assert!(msg.contains("identity changed"), "{msg}");
}

#[test]
fn a_renewed_session_carries_on_without_a_failed_request() {
    // What the daemon does when the target asks for a logout or says it is
    // going away: hold, drain, log out, log in again with the same ISID.
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t
        .lun(
            1,
            1,
            &LunSpec {
                size: 64 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    let (b, events) = setup(&t);
    let n = 300;
    let b2 = Arc::clone(&b);
    let results = write_all(&b, n, move || {
        b2.renew(
            "the target asked for a logout".into(),
            Duration::from_secs(10),
            Duration::from_millis(200),
        );
    });
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "write {i} failed: {r:?}");
    }
    let ev: Vec<RecoveryEvent> = events.try_iter().collect();
    assert!(
        ev.iter()
            .any(|e| matches!(e, RecoveryEvent::Recovered { .. })),
        "{ev:?}"
    );
    let file = std::fs::read(&backing).unwrap();
    for i in 0..n {
        assert!(
            file[i * CHUNK..(i + 1) * CHUNK] == chunk(i)[..],
            "chunk {i} is on the target"
        );
    }
    assert_eq!(t.sessions(1), 1, "the old session logged out, one left");
}
