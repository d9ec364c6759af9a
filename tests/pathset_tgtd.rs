//! The path set over real sessions: one tgtd LU reached through two
//! fault-injecting proxies (two paths, each its own session and ISID).
//! While a writer keeps 64 KiB writes in flight, path 0 is lost — reset,
//! or silent (its proxy stops forwarding) — and refuses new logins for a
//! while. Every write must complete without an error, the dead path's
//! writes must be fenced (a LOGICAL UNIT RESET through path 1) before they
//! are sent again, the bytes must be on the target, and path 0 must rejoin
//! once it accepts logins again: two sessions at the end, none leaked.

#[path = "support/proxy.rs"]
mod proxy;
mod support;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proxy::{CutKind, Proxy};
use sanroot::bridge::pathset::{Connect, PathEvent, PathSet, Timing};
use sanroot::bridge::recover::PathSpec;
use sanroot::bridge::sessionpath::SessionConnector;
use sanroot::bridge::{Backend, BlockError, BlockOp};
use sanroot::iscsi::initiator::{self, InitiatorConfig};
use sanroot::iscsi::login::{Portal, random_isid};
use sanroot::lun::Lun;
use sanroot::pathset::policy::{Link, PathPolicy};
use support::tgtd::{LunSpec, Tgtd};

const IQN: &str = "iqn.2026-12.org.sanroot.test:paths";
const INITIATOR: &str = "iqn.2026-12.org.sanroot.test:initiator";
const CHUNK: usize = 64 * 1024;

fn chunk(i: usize) -> Vec<u8> {
    (0..CHUNK)
        .map(|j| (i * 13 + j / 512) as u8 ^ (j as u8))
        .collect()
}

struct Rig {
    t: Tgtd,
    proxies: [Proxy; 2],
    set: Arc<PathSet>,
    events: mpsc::Receiver<PathEvent>,
    backing: std::path::PathBuf,
}

fn rig() -> Rig {
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
        .expect("a file-backed LUN");
    let target = format!("127.0.0.1:{}", t.port).parse().expect("address");
    let proxies = [Proxy::start(target), Proxy::start(target)];
    let paths: Vec<PathSpec> = proxies
        .iter()
        .map(|p| PathSpec {
            portal: Portal::new("127.0.0.1", p.port),
            target: IQN.into(),
            auth: None,
        })
        .collect();
    let mut cfg = InitiatorConfig::new(INITIATOR);
    cfg.session.nop_interval = Some(Duration::from_millis(500));
    cfg.session.nop_timeout = Duration::from_secs(2);
    // The LU as first read, through path 0.
    let c = initiator::connect(&paths[0].portal, IQN, &cfg, None).expect("first login");
    let first = Lun::open(Arc::new(c.session), 1).expect("LUN 1").info;
    let connector = Arc::new(SessionConnector {
        isids: paths.iter().map(|_| random_isid()).collect(),
        paths,
        lun: 1,
        cfg,
        first: first.clone(),
        on_ua: None,
        events: None,
    });
    let joined = (0..2)
        .map(|i| Some(connector.connect(i).expect("both paths log in")))
        .collect();
    let (tx, events) = mpsc::channel();
    let set = PathSet::new(
        first,
        PathPolicy::RoundRobin,
        joined,
        connector,
        Timing {
            backoff: (Duration::from_millis(200), Duration::from_secs(1)),
            alua_poll: Duration::from_secs(1),
        },
        Some(tx),
    );
    Rig {
        t,
        proxies,
        set,
        events,
        backing,
    }
}

/// `n` writes, `during` run after a third of them are submitted; each
/// result, and the longest any write took.
fn write_all(
    set: &PathSet,
    n: usize,
    during: impl FnOnce(),
) -> (Vec<Result<(), BlockError>>, Duration) {
    let (tx, rx) = mpsc::channel();
    let mut during = Some(during);
    for i in 0..n {
        let tx = tx.clone();
        let t0 = Instant::now();
        set.submit(
            BlockOp::Write {
                lba: (i * CHUNK / 512) as u64,
                blocks: (CHUNK / 512) as u32,
                fua: false,
            },
            chunk(i),
            sanroot::bridge::BlockDone::new(move |r, _| {
                let _ = tx.send((i, r, t0.elapsed()));
            }),
        );
        if i == n / 3
            && let Some(f) = during.take()
        {
            f();
        }
    }
    let mut out: Vec<Result<(), BlockError>> = (0..n)
        .map(|_| Err(BlockError::Io("missing".into())))
        .collect();
    let mut longest = Duration::ZERO;
    for _ in 0..n {
        let (i, r, took) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("every write completes");
        out[i] = r;
        longest = longest.max(took);
    }
    (out, longest)
}

fn flush(set: &PathSet) {
    let (tx, rx) = mpsc::channel();
    set.submit(
        BlockOp::Flush,
        Vec::new(),
        sanroot::bridge::BlockDone::new(move |r, _| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(Duration::from_secs(30))
        .expect("flush completes")
        .expect("flush ok");
}

/// Wait for an event matching `want`; every event seen, in order.
fn wait_for(r: &Rig, seen: &mut Vec<PathEvent>, want: impl Fn(&PathEvent) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(&want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match r.events.recv_timeout(left) {
            Ok(e) => seen.push(e),
            Err(_) => panic!("no such event within 30 s; saw {seen:?}"),
        }
    }
}

fn path_loss(silent: bool) {
    let r = rig();
    let n = 300;
    let (results, longest) = write_all(&r.set, n, || {
        // No new login on path 0 until the test says so.
        r.proxies[0].refuse(true);
        if silent {
            r.proxies[0].stall();
        } else {
            r.proxies[0].cut_all(CutKind::Reset);
        }
    });
    for (i, res) in results.iter().enumerate() {
        assert!(res.is_ok(), "write {i} failed: {res:?}");
    }
    eprintln!(
        "path 0 {} under {n} writes: the slowest write took {longest:?}",
        if silent { "went silent" } else { "was reset" }
    );
    let mut seen = Vec::new();
    wait_for(&r, &mut seen, |e| {
        matches!(e, PathEvent::Down { index: 0, .. })
    });
    wait_for(&r, &mut seen, |e| {
        matches!(e, PathEvent::Fenced { via: 1, .. })
    });
    assert_ne!(r.set.views().0[0].link, Link::Up, "path 0 refuses logins");
    flush(&r.set);
    let file = std::fs::read(&r.backing).expect("the backing file");
    for i in 0..n {
        assert!(
            file[i * CHUNK..(i + 1) * CHUNK] == chunk(i)[..],
            "write {i} is on the target"
        );
    }
    // Path 0 accepts logins again (the stalled connection is gone for
    // good: nothing it held is ever forwarded), and rejoins.
    if silent {
        r.proxies[0].cut_all(CutKind::Reset);
        r.proxies[0].resume();
    }
    r.proxies[0].refuse(false);
    wait_for(&r, &mut seen, |e| matches!(e, PathEvent::Up { index: 0 }));
    let (more, _) = write_all(&r.set, 20, || {});
    assert!(more.iter().all(Result::is_ok), "{more:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.t.sessions(1) != 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        r.t.sessions(1),
        2,
        "one session per path, the old one reinstated"
    );
    eprintln!("events: {seen:?}");
}

#[test]
fn a_reset_path_fails_over_without_an_error() {
    path_loss(false);
}

#[test]
fn a_silent_path_fails_over_without_an_error() {
    path_loss(true);
}

/// Block `b`'s content at generation `g` (4 KiB).
fn generation(b: usize, g: usize) -> Vec<u8> {
    let mut v = vec![(b * 31 + g) as u8; 4096];
    v[..16].copy_from_slice(&[(b as u64).to_le_bytes(), (g as u64).to_le_bytes()].concat());
    v
}

/// An overlapping write sequence through a path cut: 32 blocks each
/// rewritten 40 times, a block's next generation sent as soon as its last
/// one completed (as a filesystem rewrites a block), all 32 in flight at
/// once. Path 0 dies a third of the way through. At the end every block
/// must hold its last generation: a stale write from the dead path never
/// lands after a newer one sent through the live path.
fn overlapping(silent: bool) {
    const BLOCKS: usize = 32;
    const ROUNDS: usize = 40;
    let r = rig();
    let (tx, rx) = mpsc::channel::<(usize, usize, Result<(), BlockError>)>();
    let send = |b: usize, g: usize| {
        let tx = tx.clone();
        r.set.submit(
            BlockOp::Write {
                lba: (b * 8) as u64,
                blocks: 8,
                fua: false,
            },
            generation(b, g),
            sanroot::bridge::BlockDone::new(move |res, _| {
                let _ = tx.send((b, g, res));
            }),
        );
    };
    for b in 0..BLOCKS {
        send(b, 0);
    }
    let mut completed = 0;
    let mut cut = false;
    while completed < BLOCKS * ROUNDS {
        let (b, g, res) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("every write completes");
        assert!(res.is_ok(), "block {b} generation {g}: {res:?}");
        completed += 1;
        if g + 1 < ROUNDS {
            send(b, g + 1);
        }
        if !cut && completed == BLOCKS * ROUNDS / 3 {
            cut = true;
            r.proxies[0].refuse(true);
            if silent {
                r.proxies[0].stall();
            } else {
                r.proxies[0].cut_all(CutKind::Reset);
            }
        }
    }
    let mut seen = Vec::new();
    wait_for(&r, &mut seen, |e| {
        matches!(e, PathEvent::Down { index: 0, .. })
    });
    flush(&r.set);
    let file = std::fs::read(&r.backing).expect("the backing file");
    for b in 0..BLOCKS {
        let at = &file[b * 4096..(b + 1) * 4096];
        assert!(
            at == generation(b, ROUNDS - 1),
            "block {b} holds generation {} instead of its last, {}",
            u64::from_le_bytes(at[8..16].try_into().unwrap()),
            ROUNDS - 1
        );
    }
    eprintln!("events: {seen:?}");
}

#[test]
fn overlapping_writes_through_a_reset_end_with_the_newest() {
    overlapping(false);
}

#[test]
fn overlapping_writes_through_a_silent_loss_end_with_the_newest() {
    overlapping(true);
}
