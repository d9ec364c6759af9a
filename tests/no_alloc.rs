//! The data path allocates nothing per request. A root-disk daemon writes
//! dirty pages back when memory is short; if that needed the heap it could
//! wait on the very writeback it is doing. Every heap allocation in this
//! process is counted while block requests (4 KiB reads and writes, 8 in
//! flight) run against tgtd through the two stacks the daemon serves a
//! disk with: recovery over one session (a single path), and the path set
//! over two sessions (multipath). After a warm-up, a request must not
//! allocate: at most one allocation per hundred requests is tolerated (a
//! target's rare BUSY or unit attention is retried through a timer, which
//! may allocate).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sanroot::bridge::pathset::{Connect, PathSet, Timing};
use sanroot::bridge::recover::{PathSpec, Reconnect, RecoveringBackend, RecoveryPolicy};
use sanroot::bridge::sessionpath::SessionConnector;
use sanroot::bridge::{Backend, BlockDone, BlockError, BlockOp, IscsiBackend};
use sanroot::completion::Sink;
use sanroot::iscsi::initiator::{self, InitiatorConfig};
use sanroot::iscsi::login::{Portal, random_isid};
use sanroot::lun::Lun;
use sanroot::pathset::policy::PathPolicy;
use support::tgtd::{LunSpec, Tgtd};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Inside `count` (its own backtraces allocate, uncounted).
    static IN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Where the first few counted allocations were made: the failure says.
static WHERE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn count() {
    if !COUNTING.load(Ordering::Relaxed) || IN.with(|i| i.replace(true)) {
        return;
    }
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    if WHERE.lock().unwrap().len() < 3 {
        let b = std::backtrace::Backtrace::force_capture().to_string();
        let ours: Vec<&str> = b
            .lines()
            .filter(|l| l.contains("sanroot::"))
            .take(8)
            .collect();
        WHERE.lock().unwrap().push(ours.join("\n"));
    }
    IN.with(|i| i.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const IQN: &str = "iqn.2026-12.org.sanroot.test:noalloc";
const INITIATOR: &str = "iqn.2026-12.org.sanroot.test:initiator";
const IO: usize = 4096;
const QD: usize = 8;
const WARM_UP: usize = 1000;
const MEASURED: usize = 6000;

/// The test's own end of the requests: buffers come back into a list
/// sized up front, so the driver itself allocates nothing either.
struct Returned {
    bufs: Mutex<(Vec<Vec<u8>>, u64)>,
    cv: Condvar,
}

impl Sink<Result<(), BlockError>> for Returned {
    fn done(self: Arc<Self>, _: usize, r: Result<(), BlockError>, buf: Vec<u8>) {
        let mut g = self.bufs.lock().unwrap();
        if r.is_err() {
            g.1 += 1;
        }
        g.0.push(buf);
        self.cv.notify_one();
    }
}

/// Run `n` requests, QD at a time: alternately a read and a write of 4 KiB
/// at LBAs spread over the LU.
fn drive(b: &dyn Backend, ret: &Arc<Returned>, n: usize, seed: &mut u64) {
    let blocks = (IO / b.info().block_size() as usize) as u32;
    let span = b.info().blocks() / u64::from(blocks);
    for i in 0..n {
        let buf = {
            let mut g = ret.bufs.lock().unwrap();
            loop {
                if let Some(buf) = g.0.pop() {
                    break buf;
                }
                g = ret.cv.wait(g).unwrap();
            }
        };
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let lba = (*seed >> 33) % span * u64::from(blocks);
        let op = if i % 2 == 0 {
            BlockOp::Read { lba, blocks }
        } else {
            BlockOp::Write {
                lba,
                blocks,
                fua: false,
            }
        };
        b.submit(op, buf, BlockDone::slot(ret.clone(), 0));
    }
    // All back before the count stops.
    let mut g = ret.bufs.lock().unwrap();
    while g.0.len() < QD {
        g = ret.cv.wait(g).unwrap();
    }
}

/// Allocations per request through `b` after a warm-up.
fn measure(name: &str, b: &dyn Backend) {
    let ret = Arc::new(Returned {
        bufs: Mutex::new((Vec::with_capacity(QD), 0)),
        cv: Condvar::new(),
    });
    ret.bufs
        .lock()
        .unwrap()
        .0
        .extend((0..QD).map(|_| vec![0u8; IO]));
    let mut seed = 1;
    drive(b, &ret, WARM_UP, &mut seed);
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    drive(b, &ret, MEASURED, &mut seed);
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let errors = ret.bufs.lock().unwrap().1;
    println!(
        "{name}: {allocs} heap allocations in {MEASURED} requests ({:.3} per request), {errors} errors",
        allocs as f64 / MEASURED as f64
    );
    assert_eq!(errors, 0, "{name}: requests failed");
    let at = std::mem::take(&mut *WHERE.lock().unwrap()).join("\n--\n");
    assert!(
        allocs * 100 < MEASURED as u64,
        "{name}: {allocs} heap allocations in {MEASURED} requests: the data path allocates; the first were at\n{at}"
    );
}

fn config() -> InitiatorConfig {
    let mut cfg = InitiatorConfig::new(INITIATOR);
    cfg.isid = Some(random_isid());
    // No pings: only the requests' own work is counted.
    cfg.session.nop_interval = None;
    cfg
}

#[test]
fn block_requests_do_not_allocate() {
    let t = Tgtd::start();
    t.target(1, IQN);
    t.lun(
        1,
        1,
        &LunSpec {
            null: true,
            size: 64 << 20,
            ..Default::default()
        },
    );
    let portal = Portal::new("127.0.0.1", t.port);
    let spec = PathSpec {
        portal: portal.clone(),
        target: IQN.into(),
        auth: None,
    };

    // One path: recovery over one session, as a single-path root is served.
    let cfg = config();
    let c = initiator::connect(&portal, IQN, &cfg, None).expect("login");
    let s = Arc::new(c.session);
    let info = Lun::open(Arc::clone(&s), 1).expect("LUN 1").info;
    let single = RecoveringBackend::new(
        IscsiBackend::new(s, info.clone()),
        Reconnect {
            paths: vec![spec.clone()],
            lun: 1,
            cfg,
            session_events: None,
            on_ua: None,
        },
        RecoveryPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            give_up_after: Some(Duration::from_secs(30)),
        },
        None,
    );
    measure("one path (recovery over a session)", &*single);

    // Two paths: the path set over two sessions, round robin.
    let paths = vec![spec.clone(), spec];
    let connector = Arc::new(SessionConnector {
        isids: paths.iter().map(|_| random_isid()).collect(),
        paths,
        lun: 1,
        cfg: config(),
        first: info.clone(),
        on_ua: None,
        events: None,
    });
    let joined = (0..2)
        .map(|i| Some(connector.connect(i).expect("both paths log in")))
        .collect();
    let set = PathSet::new(
        info,
        PathPolicy::RoundRobin,
        joined,
        connector,
        Timing {
            backoff: (Duration::from_millis(200), Duration::from_secs(1)),
            alua_poll: Duration::from_secs(3600),
        },
        None,
    );
    measure("two paths (the path set)", &*set);
}
