//! Several sessions to one LU, offered to a bridge as one [`Backend`]
//! (issue 15): each command goes to the path [`policy::choose`] picks;
//! when a path dies its commands are sent again on another one, and it is
//! logged in again in the background and rejoins.
//!
//! **No stale write overtakes a newer one.** A write that was on the wire
//! of dead path A may still be in the target's queue (a silent loss: the
//! target has not noticed), and would then run after the same block was
//! written again through B. So before A's commands go anywhere else, and
//! while any of them was a write:
//! 1. A's connection is cut hard ([`Path::cut`]: an abortive close, so our
//!    kernel discards what it had not sent yet and retransmits nothing);
//! 2. a LOGICAL UNIT RESET is sent through a live path ([`Path::fence`]):
//!    it ends every task at the LU, A's included, whichever I_T nexus they
//!    came in on;
//! 3. only then are A's commands, and everything submitted meanwhile,
//!    sent (new I/O is held during the fence: a new write through B must
//!    not overtake a stale one either).
//!
//! Without a live path the fence waits for the first path that logs in
//! again. Reads alone need no fence (a stale read changes nothing). A LU
//! reset also ends other initiators' tasks on a shared LU (they see a unit
//! attention and retry): the price of a root disk that never silently
//! loses a write; persistent reservations (PREEMPT AND ABORT) would be
//! the finer tool where they are in use.
//!
//! Unit-tested with scripted paths; the sessions behind a real [`Path`]
//! and the connector are the bridge's.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::{Backend, BlockDone, BlockError, BlockOp};
use crate::lun::LunInfo;
use crate::pathset::policy::{self, Link, PathPolicy, PathView, Selector};
use crate::scsi::alua::AccessState;

/// One way to the LU, logged in.
pub trait Path: Send + Sync {
    /// Start a request on this path (as [`Backend::submit`]).
    fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone);
    /// LOGICAL UNIT RESET through this path; waits for the answer.
    fn fence(&self) -> Result<(), String>;
    /// Close the connection at once, discarding what was not sent.
    fn cut(&self);
}

/// A logged-in path and its ALUA state (`None`: the LU has no ALUA).
pub type Joined = (Arc<dyn Path>, Option<AccessState>);

/// Logs a path in again.
pub trait Connect: Send + Sync {
    /// Log in on path `index` again and check it reaches the same LU;
    /// its ALUA state, if the LU has ALUA.
    fn connect(&self, index: usize) -> Result<Joined, String>;
}

/// What the path set tells its owner (for the kernel log and `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    Down {
        index: usize,
        reason: String,
    },
    Up {
        index: usize,
    },
    /// The fence before commands of a dead path were sent again.
    Fenced {
        via: usize,
        retried: usize,
    },
    FenceFailed {
        via: usize,
        error: String,
    },
}

type Parked = (BlockOp, Vec<u8>, BlockDone);

struct Slot {
    link: Link,
    alua: Option<AccessState>,
    preferred: bool,
    in_flight: usize,
    writes: usize,
    io: Option<Arc<dyn Path>>,
    /// Bumped when the path dies or logs in again: a completion from an
    /// older session is recognised as such.
    generation: u64,
}

struct Inner {
    slots: Vec<Slot>,
    sel: Selector,
    /// Requests waiting for a usable path, or for the fence.
    held: Vec<Parked>,
    /// A dead path had writes in flight: nothing is sent until a LU reset
    /// through a live path has ended them.
    fence_needed: bool,
    fencing: bool,
    /// A thread is sending the held requests.
    releasing: bool,
}

pub struct PathSet {
    me: Weak<PathSet>,
    info: LunInfo,
    policy: PathPolicy,
    inner: Mutex<Inner>,
    connector: Arc<dyn Connect>,
    /// Reconnect backoff: first, most.
    backoff: (Duration, Duration),
    events: Option<Sender<PathEvent>>,
}

fn is_write(op: &BlockOp) -> bool {
    !matches!(op, BlockOp::Read { .. })
}

impl PathSet {
    /// A path set over `paths` (logged in, with their ALUA states);
    /// `None` for a path that is down now (it is logged in in the
    /// background).
    pub fn new(
        info: LunInfo,
        policy: PathPolicy,
        paths: Vec<Option<Joined>>,
        connector: Arc<dyn Connect>,
        backoff: (Duration, Duration),
        events: Option<Sender<PathEvent>>,
    ) -> Arc<PathSet> {
        let down: Vec<usize> = (0..paths.len()).filter(|&i| paths[i].is_none()).collect();
        let slots = paths
            .into_iter()
            .map(|p| Slot {
                link: if p.is_some() { Link::Up } else { Link::Down },
                alua: p.as_ref().and_then(|(_, a)| *a),
                preferred: false,
                in_flight: 0,
                writes: 0,
                io: p.map(|(io, _)| io),
                generation: 1,
            })
            .collect();
        let set = Arc::new_cyclic(|me| PathSet {
            me: me.clone(),
            info,
            policy,
            inner: Mutex::new(Inner {
                slots,
                sel: Selector::default(),
                held: Vec::new(),
                fence_needed: false,
                fencing: false,
                releasing: false,
            }),
            connector,
            backoff,
            events,
        });
        for i in down {
            set.reconnect(i);
        }
        set
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, e: PathEvent) {
        match &e {
            PathEvent::Down { index, reason } => {
                log::error!("path {index} lost ({reason}): its commands go to another path")
            }
            PathEvent::Up { index } => log::warn!("path {index} is back"),
            PathEvent::Fenced { via, retried } => log::warn!(
                "LU reset through path {via}: the dead path's writes are ended; {retried} command(s) sent again"
            ),
            PathEvent::FenceFailed { via, error } => log::error!(
                "LU reset through path {via} failed ({error}): holding I/O, trying again"
            ),
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// The paths as the policy sees them, and which one failover uses.
    pub fn views(&self) -> (Vec<PathView>, Option<usize>) {
        let g = self.lock();
        (views(&g.slots), g.sel.active())
    }

    /// A path's ALUA state changed (REPORT TARGET PORT GROUPS read again):
    /// held requests may have somewhere to go now.
    pub fn set_alua(&self, index: usize, state: Option<AccessState>, preferred: bool) {
        if let Some(s) = self.lock().slots.get_mut(index) {
            s.alua = state;
            s.preferred = preferred;
        }
        self.release();
    }

    /// Send what is held, unless a fence holds it: on a thread of its own,
    /// never on the session thread that reported a failure (a submission
    /// may wait for a free task slot of another session whose own thread
    /// could be waiting the same way).
    fn release(&self) {
        {
            let mut g = self.lock();
            if g.fence_needed || g.fencing || g.releasing || g.held.is_empty() {
                return;
            }
            g.releasing = true;
        }
        let me = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("sanroot-resend".into())
            .spawn(move || {
                while let Some(set) = me.upgrade() {
                    let held = {
                        let mut g = set.lock();
                        // Nowhere to go: what is held stays held until a
                        // path comes back or changes state (no busy loop).
                        if g.fence_needed
                            || g.fencing
                            || g.held.is_empty()
                            || policy::usable(&views(&g.slots)).is_empty()
                        {
                            g.releasing = false;
                            return;
                        }
                        std::mem::take(&mut g.held)
                    };
                    for (op, buf, done) in held {
                        set.submit(op, buf, done);
                    }
                }
            });
        if spawned.is_err() {
            self.lock().releasing = false;
            log::error!("cannot start a thread to send held requests");
        }
    }

    fn completed(
        &self,
        index: usize,
        generation: u64,
        op: BlockOp,
        r: Result<(), BlockError>,
        buf: Vec<u8>,
        done: BlockDone,
    ) {
        let mut g = self.lock();
        let s = &mut g.slots[index];
        let current = s.generation == generation;
        let writes = s.writes;
        if current {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.writes = s.writes.saturating_sub(usize::from(is_write(&op)));
        }
        let Err(BlockError::Transport(reason)) = r else {
            drop(g);
            return done(r, buf);
        };
        if current {
            // The path died with `writes` writes on its wire (this one
            // counted): cut it, fence if any, log it in again.
            let s = &mut g.slots[index];
            let io = s.io.take();
            s.link = Link::Down;
            s.generation += 1;
            s.in_flight = 0;
            s.writes = 0;
            g.fence_needed |= writes > 0;
            drop(g);
            if let Some(io) = io {
                io.cut();
            }
            self.emit(PathEvent::Down { index, reason });
            self.reconnect(index);
            g = self.lock();
        }
        g.held.push((op, buf, done));
        let fence = g.fence_needed && !g.fencing;
        drop(g);
        if fence {
            self.start_fence();
        } else {
            self.release();
        }
    }

    /// Fence through the first usable path, off the I/O path. Without one
    /// the fence waits for a path to come back ([`Self::path_up`]).
    fn start_fence(&self) {
        let via = {
            let mut g = self.lock();
            if g.fencing || !g.fence_needed {
                return;
            }
            let Some(&via) = policy::usable(&views(&g.slots)).first() else {
                return;
            };
            let Some(io) = g.slots[via].io.clone() else {
                return;
            };
            g.fencing = true;
            (via, io)
        };
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("sanroot-fence".into())
            .spawn(move || me.fence(via.0, via.1));
    }

    fn fence(&self, via: usize, io: Arc<dyn Path>) {
        match io.fence() {
            Ok(()) => {
                let retried = {
                    let mut g = self.lock();
                    g.fencing = false;
                    g.fence_needed = false;
                    g.held.len()
                };
                self.emit(PathEvent::Fenced { via, retried });
                self.release();
            }
            Err(error) => {
                self.emit(PathEvent::FenceFailed { via, error });
                std::thread::sleep(self.backoff.0);
                self.lock().fencing = false;
                self.start_fence();
            }
        }
    }

    /// Log path `index` in again in the background, with backoff, for as
    /// long as the set lives (a root disk waits for its paths for ever).
    fn reconnect(&self, index: usize) {
        self.lock().slots[index].link = Link::Connecting;
        let me = self.me.clone();
        let mut wait = self.backoff.0;
        let _ = std::thread::Builder::new()
            .name("sanroot-path".into())
            .spawn(move || {
                loop {
                    // Not kept alive by its own reconnect thread.
                    let Some(set) = me.upgrade() else {
                        return;
                    };
                    match set.connector.connect(index) {
                        Ok((io, alua)) => return set.path_up(index, io, alua),
                        Err(e) => log::warn!("path {index}: logging in again: {e}"),
                    }
                    let most = set.backoff.1;
                    drop(set);
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(most);
                }
            });
    }

    fn path_up(&self, index: usize, io: Arc<dyn Path>, alua: Option<AccessState>) {
        {
            let mut g = self.lock();
            let s = &mut g.slots[index];
            s.io = Some(io);
            s.alua = alua;
            s.link = Link::Up;
            s.generation += 1;
        }
        self.emit(PathEvent::Up { index });
        self.start_fence();
        self.release();
    }
}

fn views(slots: &[Slot]) -> Vec<PathView> {
    slots
        .iter()
        .map(|s| PathView {
            link: s.link,
            alua: s.alua,
            preferred: s.preferred,
            in_flight: s.in_flight,
        })
        .collect()
}

impl Backend for PathSet {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone) {
        let mut g = self.lock();
        if g.fence_needed || g.fencing {
            g.held.push((op, buf, done));
            return;
        }
        let v = views(&g.slots);
        let Some(i) = policy::choose(&v, self.policy, &mut g.sel) else {
            g.held.push((op, buf, done));
            return;
        };
        let s = &mut g.slots[i];
        let Some(io) = s.io.clone() else {
            g.held.push((op, buf, done));
            return;
        };
        s.in_flight += 1;
        s.writes += usize::from(is_write(&op));
        let generation = s.generation;
        drop(g);
        let me = self.me.clone();
        io.submit(
            op,
            buf,
            Box::new(move |r, b| match me.upgrade() {
                Some(me) => me.completed(i, generation, op, r, b, done),
                None => done(r, b),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;

    /// What a scripted path saw, in order: "read 5", "write 5", "fence".
    type Trace = Arc<Mutex<Vec<String>>>;

    /// A path that completes requests at once, or holds them (to fail
    /// them later, as a dying connection does).
    struct Scripted {
        name: usize,
        trace: Trace,
        hold: AtomicBool,
        held: Mutex<Vec<(Vec<u8>, BlockDone)>>,
        /// Fences refused before one succeeds.
        fence_fails: AtomicUsize,
    }

    impl Scripted {
        fn new(name: usize, trace: &Trace) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                trace: Arc::clone(trace),
                hold: AtomicBool::new(false),
                held: Mutex::new(Vec::new()),
                fence_fails: AtomicUsize::new(0),
            })
        }

        /// The connection dies: every held request fails.
        fn die(&self) {
            let held = std::mem::take(&mut *self.held.lock().unwrap());
            for (b, d) in held {
                d(Err(BlockError::Transport("connection lost".into())), b);
            }
        }
    }

    impl Path for Scripted {
        fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone) {
            let what = match op {
                BlockOp::Read { lba, .. } => format!("{} read {lba}", self.name),
                BlockOp::Write { lba, .. } => format!("{} write {lba}", self.name),
                other => format!("{} {other:?}", self.name),
            };
            self.trace.lock().unwrap().push(what);
            if self.hold.load(Ordering::SeqCst) {
                self.held.lock().unwrap().push((buf, done));
            } else {
                done(Ok(()), buf);
            }
        }
        fn fence(&self) -> Result<(), String> {
            self.trace
                .lock()
                .unwrap()
                .push(format!("{} fence", self.name));
            match self
                .fence_fails
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            {
                Ok(_) => Err("task management function not supported".into()),
                Err(_) => Ok(()),
            }
        }
        fn cut(&self) {
            self.trace
                .lock()
                .unwrap()
                .push(format!("{} cut", self.name));
        }
    }

    /// Logs path `index` in again as a fresh scripted path, when allowed.
    struct Connector {
        trace: Trace,
        allowed: AtomicBool,
    }

    impl Connect for Connector {
        fn connect(&self, index: usize) -> Result<Joined, String> {
            if !self.allowed.load(Ordering::SeqCst) {
                return Err("no route".into());
            }
            Ok((Scripted::new(index + 10, &self.trace), None))
        }
    }

    fn info() -> LunInfo {
        let mut inq = vec![0u8; 36];
        inq[4] = 31;
        let cap = crate::scsi::ReadCapacity10::parse(&[0, 0, 0x07, 0xff, 0, 0, 2, 0])
            .and_then(|r| r.capacity())
            .unwrap();
        LunInfo {
            lun: 0,
            inquiry: crate::scsi::Inquiry::parse(&inq).unwrap(),
            capacity: cap,
            write_protected: false,
            fua: false,
            write_cache: None,
            serial: None,
            lu_id: None,
            limits: None,
            provisioning: None,
        }
    }

    struct Rig {
        set: Arc<PathSet>,
        trace: Trace,
        paths: Vec<Arc<Scripted>>,
        connector: Arc<Connector>,
        events: mpsc::Receiver<PathEvent>,
    }

    fn rig(n: usize, policy: PathPolicy) -> Rig {
        let trace: Trace = Arc::default();
        let paths: Vec<Arc<Scripted>> = (0..n).map(|i| Scripted::new(i, &trace)).collect();
        let connector = Arc::new(Connector {
            trace: Arc::clone(&trace),
            allowed: AtomicBool::new(false),
        });
        let (tx, events) = mpsc::channel();
        let set = PathSet::new(
            info(),
            policy,
            paths
                .iter()
                .map(|p| Some((Arc::clone(p) as Arc<dyn Path>, None)))
                .collect(),
            Arc::clone(&connector) as Arc<dyn Connect>,
            (Duration::from_millis(5), Duration::from_millis(20)),
            Some(tx),
        );
        Rig {
            set,
            trace,
            paths,
            connector,
            events,
        }
    }

    /// Submit and return a receiver for the result.
    fn go(set: &PathSet, op: BlockOp) -> mpsc::Receiver<Result<(), BlockError>> {
        let (tx, rx) = mpsc::channel();
        set.submit(
            op,
            vec![0u8; 512],
            Box::new(move |r, _| {
                let _ = tx.send(r);
            }),
        );
        rx
    }

    fn read(lba: u64) -> BlockOp {
        BlockOp::Read { lba, blocks: 1 }
    }

    fn write(lba: u64) -> BlockOp {
        BlockOp::Write {
            lba,
            blocks: 1,
            fua: false,
        }
    }

    fn ok(rx: mpsc::Receiver<Result<(), BlockError>>) {
        let r = rx.recv_timeout(Duration::from_secs(5)).expect("completed");
        assert_eq!(r, Ok(()));
    }

    fn trace(r: &Rig) -> Vec<String> {
        r.trace.lock().unwrap().clone()
    }

    fn wait_event(r: &Rig, want: impl Fn(&PathEvent) -> bool) -> PathEvent {
        loop {
            let e = r
                .events
                .recv_timeout(Duration::from_secs(5))
                .expect("an event");
            if want(&e) {
                return e;
            }
        }
    }

    #[test]
    fn round_robin_spreads_over_every_path() {
        let r = rig(2, PathPolicy::RoundRobin);
        for lba in 0..4 {
            ok(go(&r.set, read(lba)));
        }
        assert_eq!(trace(&r), ["0 read 0", "1 read 1", "0 read 2", "1 read 3"]);
    }

    #[test]
    fn a_dead_paths_write_is_fenced_before_it_goes_elsewhere() {
        let r = rig(2, PathPolicy::Failover);
        r.paths[0].hold.store(true, Ordering::SeqCst);
        let w = go(&r.set, write(7));
        r.paths[0].die();
        ok(w);
        let e = wait_event(&r, |e| matches!(e, PathEvent::Fenced { .. }));
        assert_eq!(e, PathEvent::Fenced { via: 1, retried: 1 });
        // Cut the dead connection, reset the LU through the live one, and
        // only then the write again.
        assert_eq!(trace(&r), ["0 write 7", "0 cut", "1 fence", "1 write 7"]);
    }

    #[test]
    fn new_io_waits_for_the_fence() {
        let r = rig(2, PathPolicy::RoundRobin);
        r.paths[0].hold.store(true, Ordering::SeqCst);
        let w = go(&r.set, write(1));
        // Path 0 dies with the write on its wire: the fence starts, and a
        // write submitted now must wait for it.
        r.paths[0].die();
        let later = go(&r.set, write(2));
        ok(w);
        ok(later);
        let t = trace(&r);
        let fence = t.iter().position(|s| s == "1 fence").expect("fenced");
        let second = t.iter().position(|s| s == "1 write 2").expect("sent");
        let retried = t.iter().position(|s| s == "1 write 1").expect("retried");
        assert!(
            fence < second && fence < retried,
            "nothing overtook the fence: {t:?}"
        );
    }

    #[test]
    fn a_refused_fence_holds_the_write_and_is_tried_again() {
        let r = rig(2, PathPolicy::Failover);
        r.paths[1].fence_fails.store(2, Ordering::SeqCst);
        r.paths[0].hold.store(true, Ordering::SeqCst);
        let w = go(&r.set, write(5));
        r.paths[0].die();
        ok(w);
        let e = wait_event(&r, |e| matches!(e, PathEvent::FenceFailed { .. }));
        assert!(matches!(e, PathEvent::FenceFailed { via: 1, .. }), "{e:?}");
        assert_eq!(
            trace(&r),
            [
                "0 write 5",
                "0 cut",
                "1 fence",
                "1 fence",
                "1 fence",
                "1 write 5"
            ]
        );
    }

    #[test]
    fn reads_alone_need_no_fence() {
        let r = rig(2, PathPolicy::Failover);
        r.paths[0].hold.store(true, Ordering::SeqCst);
        let rd = go(&r.set, read(3));
        r.paths[0].die();
        ok(rd);
        assert_eq!(trace(&r), ["0 read 3", "0 cut", "1 read 3"]);
    }

    #[test]
    fn without_a_path_io_is_held_until_one_returns() {
        let r = rig(1, PathPolicy::RoundRobin);
        r.paths[0].hold.store(true, Ordering::SeqCst);
        let w = go(&r.set, write(9));
        r.paths[0].die();
        let more = go(&r.set, read(4));
        std::thread::sleep(Duration::from_millis(50));
        assert!(w.try_recv().is_err() && more.try_recv().is_err(), "held");
        r.connector.allowed.store(true, Ordering::SeqCst);
        ok(w);
        ok(more);
        wait_event(&r, |e| matches!(e, PathEvent::Fenced { via: 0, .. }));
        let t = trace(&r);
        assert_eq!(&t[..3], ["0 write 9", "0 cut", "10 fence"], "{t:?}");
        assert!(t.contains(&"10 write 9".to_string()) && t.contains(&"10 read 4".to_string()));
    }

    #[test]
    fn standby_paths_get_no_io_and_a_state_change_moves_it() {
        let r = rig(2, PathPolicy::RoundRobin);
        r.set.set_alua(0, Some(AccessState::ActiveOptimized), false);
        r.set.set_alua(1, Some(AccessState::Standby), false);
        ok(go(&r.set, read(1)));
        ok(go(&r.set, read(2)));
        r.set.set_alua(0, Some(AccessState::Standby), false);
        let held = go(&r.set, read(3));
        std::thread::sleep(Duration::from_millis(20));
        assert!(held.try_recv().is_err(), "no path may serve I/O");
        r.set.set_alua(1, Some(AccessState::ActiveOptimized), true);
        ok(held);
        assert_eq!(trace(&r), ["0 read 1", "0 read 2", "1 read 3"]);
        let (v, _) = r.set.views();
        assert!(v[1].preferred);
    }

    #[test]
    fn an_io_error_is_not_a_path_failure() {
        struct Failing;
        impl Path for Failing {
            fn submit(&self, _: BlockOp, buf: Vec<u8>, done: BlockDone) {
                done(Err(BlockError::Io("MEDIUM ERROR".into())), buf)
            }
            fn fence(&self) -> Result<(), String> {
                Ok(())
            }
            fn cut(&self) {}
        }
        let r = rig(1, PathPolicy::RoundRobin);
        let set = PathSet::new(
            info(),
            PathPolicy::RoundRobin,
            vec![Some((Arc::new(Failing) as Arc<dyn Path>, None))],
            Arc::clone(&r.connector) as Arc<dyn Connect>,
            (Duration::from_millis(5), Duration::from_millis(20)),
            None,
        );
        let rx = go(&set, read(0));
        let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(e, Err(BlockError::Io("MEDIUM ERROR".into())));
        assert_eq!(set.views().0[0].link, Link::Up);
    }
}
