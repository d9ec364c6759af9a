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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::{Backend, BlockDone, BlockError, BlockOp};
use crate::completion::{Done, SLOTS, Sink, Slots};
use crate::iscsi::session::Session;
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
    /// This path's ALUA state and its group's PREF bit, read now (REPORT
    /// TARGET PORT GROUPS); `None` for a LU without ALUA.
    fn access_state(&self) -> Result<Option<(AccessState, bool)>, String> {
        Ok(None)
    }
    /// Log out, letting the commands in flight finish for up to `within`.
    fn close(&self, within: Duration) -> Result<(), String> {
        let _ = within;
        Ok(())
    }
    /// The session under the path (to read the LU again on).
    fn session(&self) -> Option<Arc<Session>> {
        None
    }
    /// The LU was read again: requests are checked against `info` now.
    fn resized(&self, info: &LunInfo) {
        let _ = info;
    }
}

/// A path logged in (again).
pub struct Joined {
    pub io: Arc<dyn Path>,
    /// Its ALUA state (`None`: the LU has no ALUA).
    pub alua: Option<AccessState>,
    /// Its target port group's PREF bit.
    pub preferred: bool,
    /// The target portal group tag the login reported.
    pub tpgt: Option<u16>,
}

impl Joined {
    /// A path of a LU without ALUA.
    pub fn plain(io: Arc<dyn Path>) -> Joined {
        Joined {
            io,
            alua: None,
            preferred: false,
            tpgt: None,
        }
    }
}

/// Why a path could not be logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Try again later: no route, target down, login refused for now.
    Retry(String),
    /// Never use this path: it reaches another LU than the others.
    Refused(String),
}

/// Logs a path in again.
pub trait Connect: Send + Sync {
    /// Log in on path `index` and check it reaches the same LU.
    fn connect(&self, index: usize) -> Result<Joined, ConnectError>;
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
    /// The path reaches another LU: it is never used.
    Refused {
        index: usize,
        reason: String,
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
    /// A path's ALUA state changed.
    Alua {
        index: usize,
        state: Option<AccessState>,
    },
    /// The paths I/O goes to changed (empty: none, I/O is held).
    Active {
        paths: Vec<usize>,
    },
}

/// A path as `sanroot status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStatus {
    pub link: Link,
    pub alua: Option<AccessState>,
    pub preferred: bool,
    pub tpgt: Option<u16>,
    /// I/O goes to it now.
    pub active: bool,
    /// It reaches another LU and is never used.
    pub refused: bool,
}

type Parked = (BlockOp, Vec<u8>, BlockDone);

struct Slot {
    link: Link,
    alua: Option<AccessState>,
    preferred: bool,
    tpgt: Option<u16>,
    refused: bool,
    in_flight: usize,
    writes: usize,
    io: Option<Arc<dyn Path>>,
    /// Bumped when the path dies or logs in again: a completion from an
    /// older session is recognised as such.
    generation: u64,
}

struct Inner {
    slots: Vec<Slot>,
    /// The paths as the chooser sees them, filled for each request (kept
    /// for its room).
    views: Vec<PathView>,
    sel: Selector,
    /// Requests waiting for a usable path, or for the fence.
    held: Vec<Parked>,
    /// A dead path had writes in flight: nothing is sent until a LU reset
    /// through a live path has ended them.
    fence_needed: bool,
    fencing: bool,
    /// A thread is sending the held requests.
    releasing: bool,
    /// A thread is reading the groups' states; `refresh_again`: once more
    /// after it (a change came in while it read).
    refreshing: bool,
    refresh_again: bool,
    /// The paths I/O went to, as last reported.
    active: Vec<usize>,
    /// Logged out for good: no path logs in again.
    closed: bool,
    /// Why every request fails now (the LU became another disk).
    failed: Option<String>,
}

/// Timings of a path set.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Reconnect backoff: first, most.
    pub backoff: (Duration, Duration),
    /// How often the groups' states are read when the LU has ALUA.
    pub alua_poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff: (Duration::from_millis(250), Duration::from_secs(10)),
            alua_poll: Duration::from_secs(1),
        }
    }
}

/// Requests sent on a path, by slot: which path and generation took each,
/// without an allocation per request.
struct Sent {
    me: Weak<PathSet>,
    slots: Slots<(usize, u64, BlockOp, BlockDone)>,
}

impl Sink<Result<(), BlockError>> for Sent {
    fn done(self: Arc<Self>, token: usize, r: Result<(), BlockError>, buf: Vec<u8>) {
        let Some((i, generation, op, done)) = self.slots.finish(token, "path set") else {
            return;
        };
        match self.me.upgrade() {
            Some(me) => me.completed(i, generation, op, r, buf, done),
            None => done.call(r, buf),
        }
    }
}

pub struct PathSet {
    me: Weak<PathSet>,
    sent: Arc<Sent>,
    info: LunInfo,
    /// The LU's size in blocks as last read.
    blocks: AtomicU64,
    policy: PathPolicy,
    inner: Mutex<Inner>,
    connector: Arc<dyn Connect>,
    timing: Timing,
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
        timing: Timing,
        events: Option<Sender<PathEvent>>,
    ) -> Arc<PathSet> {
        let down: Vec<usize> = (0..paths.len()).filter(|&i| paths[i].is_none()).collect();
        let slots: Vec<Slot> = paths
            .into_iter()
            .map(|p| Slot {
                link: if p.is_some() { Link::Up } else { Link::Down },
                alua: p.as_ref().and_then(|j| j.alua),
                preferred: p.as_ref().is_some_and(|j| j.preferred),
                tpgt: p.as_ref().and_then(|j| j.tpgt),
                refused: false,
                in_flight: 0,
                writes: 0,
                io: p.map(|j| j.io),
                generation: 1,
            })
            .collect();
        let set = Arc::new_cyclic(|me| PathSet {
            me: me.clone(),
            sent: Arc::new(Sent {
                me: me.clone(),
                slots: Slots::with_capacity(SLOTS),
            }),
            blocks: AtomicU64::new(info.blocks()),
            info,
            policy,
            inner: Mutex::new(Inner {
                views: Vec::with_capacity(slots.len()),
                slots,
                sel: Selector::default(),
                held: Vec::new(),
                fence_needed: false,
                fencing: false,
                releasing: false,
                refreshing: false,
                refresh_again: false,
                active: Vec::new(),
                closed: false,
                failed: None,
            }),
            connector,
            timing,
            events,
        });
        set.note_active();
        for i in down {
            set.reconnect(i, Duration::ZERO);
        }
        if set.info.inquiry.tpgs != 0 {
            set.watch();
        }
        set
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, e: PathEvent) {
        // Paths are numbered from 1 in what people read, as `--portal`s
        // and iBFT targets are listed; the owner names them by portal in
        // the kernel log (path lost, back, refused; where I/O goes).
        match &e {
            PathEvent::Down { index, reason } => {
                log::debug!("path {} lost ({reason})", index + 1)
            }
            PathEvent::Up { index } => log::debug!("path {} is back", index + 1),
            PathEvent::Refused { index, reason } => {
                log::debug!("path {} is not used: {reason}", index + 1)
            }
            PathEvent::Fenced { via, retried } => log::warn!(
                "LU reset through path {}: the dead path's writes are ended; {retried} command(s) sent again",
                via + 1
            ),
            PathEvent::FenceFailed { via, error } => log::error!(
                "LU reset through path {} failed ({error}): holding I/O, trying again",
                via + 1
            ),
            PathEvent::Alua { index, state } => log::info!(
                "path {}: ALUA state {}",
                index + 1,
                state.map(AccessState::name).unwrap_or("none")
            ),
            PathEvent::Active { paths } => log::debug!(
                "I/O goes to path(s) {:?}",
                paths.iter().map(|i| i + 1).collect::<Vec<_>>()
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

    /// Every path as `sanroot status` shows it.
    pub fn status(&self) -> Vec<PathStatus> {
        let g = self.lock();
        let active = policy::active(&views(&g.slots), self.policy, &g.sel);
        g.slots
            .iter()
            .enumerate()
            .map(|(i, s)| PathStatus {
                link: s.link,
                alua: s.alua,
                preferred: s.preferred,
                tpgt: s.tpgt,
                active: active.contains(&i),
                refused: s.refused,
            })
            .collect()
    }

    /// A session of a path that is up (to read the LU again on).
    pub fn session(&self) -> Option<Arc<Session>> {
        self.ios().iter().find_map(|io| io.session())
    }

    /// The paths that are up (taken out of the lock: a path's own calls
    /// may lock it).
    fn ios(&self) -> Vec<Arc<dyn Path>> {
        self.lock()
            .slots
            .iter()
            .filter_map(|s| s.io.clone())
            .collect()
    }

    /// The LU was read again (it grew or shrank): every path checks
    /// requests against `info` from now on.
    pub fn resized(&self, info: &LunInfo) {
        self.blocks.store(info.blocks(), Ordering::SeqCst);
        let ios: Vec<Arc<dyn Path>> = self
            .lock()
            .slots
            .iter()
            .filter_map(|s| s.io.clone())
            .collect();
        for io in ios {
            io.resized(info);
        }
    }

    /// The LU's size in blocks as last read.
    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::SeqCst)
    }

    /// Why every request fails, once [`Self::give_up`] was called.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Refuse every request from now on, the held ones too (the LU became
    /// another disk).
    pub fn give_up(&self, m: String) {
        let held = {
            let mut g = self.lock();
            g.failed = Some(m.clone());
            std::mem::take(&mut g.held)
        };
        for (_, buf, done) in held {
            done.call(Err(BlockError::Io(m.clone())), buf);
        }
    }

    /// Report the paths I/O goes to when they changed.
    fn note_active(&self) {
        let now = {
            let mut g = self.lock();
            let now = policy::active(&views(&g.slots), self.policy, &g.sel);
            if now == g.active {
                return;
            }
            g.active = now.clone();
            now
        };
        self.emit(PathEvent::Active { paths: now });
    }

    /// A path's ALUA state changed (REPORT TARGET PORT GROUPS read again):
    /// held requests may have somewhere to go now.
    pub fn set_alua(&self, index: usize, state: Option<AccessState>, preferred: bool) {
        let changed = match self.lock().slots.get_mut(index) {
            Some(s) => {
                let changed = s.alua != state;
                s.alua = state;
                s.preferred = preferred;
                changed
            }
            None => return,
        };
        if changed {
            self.emit(PathEvent::Alua { index, state });
        }
        self.note_active();
        self.release();
    }

    /// Read every path's ALUA state again, off the I/O path: on a unit
    /// attention that says they changed, on a path's NOT READY for its
    /// state, when a path comes or goes, and now and then. One reading at
    /// a time; a request meanwhile makes one more.
    pub fn refresh_alua(&self) {
        {
            let mut g = self.lock();
            if self.info.inquiry.tpgs == 0 || g.closed {
                return;
            }
            if g.refreshing {
                g.refresh_again = true;
                return;
            }
            g.refreshing = true;
        }
        let me = self.me.clone();
        let spawned = crate::threads::named("sanroot-alua").spawn(move || {
            while let Some(set) = me.upgrade() {
                set.read_states();
                let mut g = set.lock();
                if !std::mem::take(&mut g.refresh_again) {
                    g.refreshing = false;
                    return;
                }
            }
        });
        if spawned.is_err() {
            self.lock().refreshing = false;
        }
    }

    fn read_states(&self) {
        let up: Vec<(usize, u64, Arc<dyn Path>)> = self
            .lock()
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.io.clone().map(|io| (i, s.generation, io)))
            .collect();
        for (i, generation, io) in up {
            match io.access_state() {
                Ok(Some((state, pref))) => {
                    let current = self.lock().slots[i].generation == generation;
                    if current {
                        self.set_alua(i, Some(state), pref);
                    }
                }
                Ok(None) => {}
                // A path that does not answer is found dead by its
                // session (ping timeout); nothing to decide here.
                Err(e) => log::debug!("path {}: REPORT TARGET PORT GROUPS: {e}", i + 1),
            }
        }
    }

    /// Read the groups' states every `alua_poll` for as long as the set
    /// lives: standby and unavailable paths are watched this way, and a
    /// change nobody reported (an idle path misses its unit attention)
    /// moves I/O within one period.
    fn watch(&self) {
        let me = self.me.clone();
        let every = self.timing.alua_poll;
        let _ = crate::threads::named("sanroot-alua-poll").spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(set) = me.upgrade() else { return };
                if set.lock().closed {
                    return;
                }
                set.refresh_alua();
            }
        });
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
        let spawned = crate::threads::named("sanroot-resend").spawn(move || {
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
        match r {
            Err(BlockError::Transport(reason)) => {
                if current {
                    // Marked dead under the same lock that saw it current:
                    // the path's other failing commands see it old.
                    let io = mark_lost(&mut g, index, writes);
                    drop(g);
                    self.lost(index, io, reason);
                    g = self.lock();
                }
            }
            Err(BlockError::PortState(state, why)) => {
                // Not run: this port's group cannot take it now. Another
                // path may; the groups' states are read again.
                drop(g);
                log::info!("path {}: {why}: sending it through another path", index + 1);
                if current {
                    self.set_alua(index, Some(state), false);
                }
                self.refresh_alua();
                g = self.lock();
            }
            r => {
                drop(g);
                return done.call(r, buf);
            }
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

    /// Path `index` died (marked so by [`mark_lost`]): cut it, log it in
    /// again.
    fn lost(&self, index: usize, io: Option<Arc<dyn Path>>, reason: String) {
        if let Some(io) = io {
            io.cut();
        }
        self.emit(PathEvent::Down { index, reason });
        self.note_active();
        self.reconnect(index, Duration::ZERO);
        self.refresh_alua();
    }

    /// The target asked for path `index`'s session to end (a logout
    /// request, or it is going away): no new I/O goes to it, the commands
    /// in flight finish for up to `within`, it logs out, waits `pause`
    /// (the target's Time2Wait) and logs in again. A command that did not
    /// finish is sent again elsewhere: the logout ended it on the target,
    /// so no fence is needed.
    pub fn renew(&self, index: usize, within: Duration, pause: Duration) {
        let io = {
            let mut g = self.lock();
            let Some(s) = g.slots.get_mut(index) else {
                return;
            };
            let Some(io) = s.io.take() else { return };
            s.link = Link::Connecting;
            s.generation += 1;
            s.in_flight = 0;
            s.writes = 0;
            io
        };
        self.note_active();
        let me = self.me.clone();
        let _ = crate::threads::named("sanroot-renew").spawn(move || {
            if let Err(e) = io.close(within.max(Duration::from_secs(1))) {
                log::warn!("path {}: logout before logging in again: {e}", index + 1);
            }
            drop(io);
            if let Some(set) = me.upgrade() {
                set.reconnect(index, pause);
            }
        });
    }

    /// Log out of every path (after the final flush); no path logs in
    /// again afterwards.
    pub fn close(&self, within: Duration) {
        let ios: Vec<(usize, Arc<dyn Path>)> = {
            let mut g = self.lock();
            g.closed = true;
            g.slots
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| {
                    s.link = Link::Down;
                    s.generation += 1;
                    s.io.take().map(|io| (i, io))
                })
                .collect()
        };
        let waits: Vec<_> = ios
            .into_iter()
            .filter_map(|(i, io)| {
                let close = {
                    let io = Arc::clone(&io);
                    move || {
                        if let Err(e) = io.close(within) {
                            log::warn!("path {}: logout: {e}", i + 1);
                        }
                    }
                };
                match crate::threads::spawn("sanroot-logout", close) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        // Log out here instead, one path after the other.
                        log::warn!("{e}");
                        if let Err(e) = io.close(within) {
                            log::warn!("path {}: logout: {e}", i + 1);
                        }
                        None
                    }
                }
            })
            .collect();
        for w in waits {
            let _ = w.join();
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
        let _ = crate::threads::named("sanroot-fence").spawn(move || me.fence(via.0, via.1));
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
                std::thread::sleep(self.timing.backoff.0);
                self.lock().fencing = false;
                self.start_fence();
            }
        }
    }

    /// Log path `index` in again in the background after `pause`, with
    /// backoff, for as long as the set lives (a root disk waits for its
    /// paths for ever), unless it reaches another LU.
    fn reconnect(&self, index: usize, pause: Duration) {
        self.lock().slots[index].link = Link::Connecting;
        let me = self.me.clone();
        let (first, most) = self.timing.backoff;
        let _ = crate::threads::named("sanroot-path").spawn(move || {
            std::thread::sleep(pause);
            let mut wait = first;
            let mut attempt = 0u32;
            loop {
                attempt = attempt.saturating_add(1);
                // Not kept alive by its own reconnect thread.
                let Some(set) = me.upgrade() else {
                    return;
                };
                if set.lock().closed {
                    return;
                }
                match set.connector.connect(index) {
                    Ok(j) => return set.path_up(index, j),
                    Err(ConnectError::Refused(reason)) => return set.refused(index, reason),
                    // The first failures, then one in 30 (about every
                    // 5 min at the longest backoff): a path down for
                    // days does not fill the kernel log.
                    Err(ConnectError::Retry(e)) if attempt <= 3 || attempt.is_multiple_of(30) => {
                        log::warn!(
                            "path {}: logging in again (attempt {attempt}): {e}",
                            index + 1
                        )
                    }
                    Err(ConnectError::Retry(e)) => {
                        log::debug!(
                            "path {}: logging in again (attempt {attempt}): {e}",
                            index + 1
                        )
                    }
                }
                drop(set);
                std::thread::sleep(wait);
                wait = (wait * 2).min(most);
            }
        });
    }

    fn refused(&self, index: usize, reason: String) {
        {
            let mut g = self.lock();
            let s = &mut g.slots[index];
            s.link = Link::Down;
            s.refused = true;
        }
        self.emit(PathEvent::Refused { index, reason });
    }

    fn path_up(&self, index: usize, j: Joined) {
        let stale = {
            let mut g = self.lock();
            if g.closed {
                Some(j.io)
            } else {
                let s = &mut g.slots[index];
                s.io = Some(j.io);
                s.alua = j.alua;
                s.preferred = j.preferred;
                s.tpgt = j.tpgt.or(s.tpgt);
                s.link = Link::Up;
                s.generation += 1;
                None
            }
        };
        if let Some(io) = stale {
            let _ = io.close(Duration::from_secs(5));
            return;
        }
        self.emit(PathEvent::Up { index });
        self.note_active();
        self.refresh_alua();
        self.start_fence();
        self.release();
    }
}

/// Path `index` died with `writes` writes on its wire: no more I/O to
/// it, a fence before its commands go elsewhere if any was a write.
/// Returns its connection, to cut.
fn mark_lost(g: &mut Inner, index: usize, writes: usize) -> Option<Arc<dyn Path>> {
    let s = &mut g.slots[index];
    let io = s.io.take();
    s.link = Link::Down;
    s.generation += 1;
    s.in_flight = 0;
    s.writes = 0;
    g.fence_needed |= writes > 0;
    io
}

fn views(slots: &[Slot]) -> Vec<PathView> {
    let mut v = Vec::with_capacity(slots.len());
    fill_views(slots, &mut v);
    v
}

/// [`views`] into `v`, which keeps its room: for every request.
fn fill_views(slots: &[Slot], v: &mut Vec<PathView>) {
    v.clear();
    v.extend(slots.iter().map(|s| PathView {
        link: s.link,
        alua: s.alua,
        preferred: s.preferred,
        in_flight: s.in_flight,
    }));
}

impl Backend for PathSet {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    fn sessions(&self, into: &mut Vec<Arc<Session>>) {
        into.extend(self.ios().iter().filter_map(|io| io.session()));
    }

    fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone) {
        let mut g = self.lock();
        if let Some(m) = g.failed.clone() {
            drop(g);
            return done.call(Err(BlockError::Io(m)), buf);
        }
        if g.fence_needed || g.fencing {
            g.held.push((op, buf, done));
            return;
        }
        let Inner {
            slots, views, sel, ..
        } = &mut *g;
        fill_views(slots, views);
        let Some(i) = policy::choose(views, self.policy, sel) else {
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
        let slot = self.sent.slots.insert((i, generation, op, done));
        io.submit(op, buf, Done::slot(self.sent.clone(), slot));
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
                d.call(Err(BlockError::Transport("connection lost".into())), b);
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
                done.call(Ok(()), buf);
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
        fn connect(&self, index: usize) -> Result<Joined, ConnectError> {
            if !self.allowed.load(Ordering::SeqCst) {
                return Err(ConnectError::Retry("no route".into()));
            }
            Ok(Joined::plain(Scripted::new(index + 10, &self.trace)))
        }
    }

    fn timing() -> Timing {
        Timing {
            backoff: (Duration::from_millis(5), Duration::from_millis(20)),
            alua_poll: Duration::from_millis(20),
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
                .map(|p| Some(Joined::plain(Arc::clone(p) as Arc<dyn Path>)))
                .collect(),
            Arc::clone(&connector) as Arc<dyn Connect>,
            timing(),
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
            BlockDone::new(move |r, _| {
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

    /// A path whose ALUA state is scripted and whose commands fail with
    /// that state's NOT READY while it is not active.
    struct AluaPath {
        name: usize,
        trace: Trace,
        state: Mutex<AccessState>,
    }

    impl Path for AluaPath {
        fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone) {
            let st = *self.state.lock().unwrap();
            if let BlockOp::Read { lba, .. } = op {
                self.trace
                    .lock()
                    .unwrap()
                    .push(format!("{} read {lba}", self.name));
            }
            match st {
                AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => {
                    done.call(Ok(()), buf)
                }
                other => done.call(Err(BlockError::PortState(other, "NOT READY".into())), buf),
            }
        }
        fn fence(&self) -> Result<(), String> {
            Ok(())
        }
        fn cut(&self) {}
        fn access_state(&self) -> Result<Option<(AccessState, bool)>, String> {
            Ok(Some((*self.state.lock().unwrap(), false)))
        }
    }

    fn alua_info() -> LunInfo {
        let mut i = info();
        let mut inq = vec![0u8; 36];
        inq[4] = 31;
        inq[5] = 0x10; // TPGS: implicit ALUA
        i.inquiry = crate::scsi::Inquiry::parse(&inq).unwrap();
        i
    }

    fn alua_rig(states: [AccessState; 2]) -> (Arc<PathSet>, Vec<Arc<AluaPath>>, Rig) {
        let r = rig(1, PathPolicy::RoundRobin);
        let paths: Vec<Arc<AluaPath>> = states
            .iter()
            .enumerate()
            .map(|(name, st)| {
                Arc::new(AluaPath {
                    name,
                    trace: Arc::clone(&r.trace),
                    state: Mutex::new(*st),
                })
            })
            .collect();
        let (tx, events) = mpsc::channel();
        let set = PathSet::new(
            alua_info(),
            PathPolicy::RoundRobin,
            paths
                .iter()
                .zip(states)
                .map(|(p, st)| {
                    Some(Joined {
                        io: Arc::clone(p) as Arc<dyn Path>,
                        alua: Some(st),
                        preferred: false,
                        tpgt: Some(p.name as u16 + 1),
                    })
                })
                .collect(),
            Arc::clone(&r.connector) as Arc<dyn Connect>,
            timing(),
            Some(tx),
        );
        let r = Rig { events, ..r };
        (set, paths, r)
    }

    #[test]
    fn a_standby_refusal_moves_the_command_and_the_path_leaves_the_tier() {
        // Path 0 was optimized at login and went to standby since: its
        // NOT READY 04/0B sends the read to path 1, and the polling agrees.
        let (set, paths, r) =
            alua_rig([AccessState::ActiveOptimized, AccessState::ActiveOptimized]);
        *paths[0].state.lock().unwrap() = AccessState::Standby;
        ok(go(&set, read(1)));
        assert_eq!(trace(&r), ["0 read 1", "1 read 1"]);
        let st = set.status();
        assert_eq!(st[0].alua, Some(AccessState::Standby));
        assert!(!st[0].active && st[1].active, "{st:?}");
        assert_eq!((st[0].tpgt, st[1].tpgt), (Some(1), Some(2)));
        wait_event(&r, |e| *e == PathEvent::Active { paths: vec![1] });
    }

    #[test]
    fn a_state_change_found_by_polling_moves_io() {
        let (set, paths, r) = alua_rig([AccessState::ActiveOptimized, AccessState::Standby]);
        ok(go(&set, read(1)));
        // The groups swap on the target; nobody tells us but the poll.
        *paths[0].state.lock().unwrap() = AccessState::ActiveNonOptimized;
        *paths[1].state.lock().unwrap() = AccessState::ActiveOptimized;
        wait_event(&r, |e| *e == PathEvent::Active { paths: vec![1] });
        ok(go(&set, read(2)));
        ok(go(&set, read(3)));
        assert_eq!(trace(&r), ["0 read 1", "1 read 2", "1 read 3"]);
    }

    #[test]
    fn a_path_to_another_lu_is_refused_for_good() {
        struct Other;
        impl Connect for Other {
            fn connect(&self, _: usize) -> Result<Joined, ConnectError> {
                Err(ConnectError::Refused("another disk".into()))
            }
        }
        let trace: Trace = Arc::default();
        let (tx, events) = mpsc::channel();
        let set = PathSet::new(
            info(),
            PathPolicy::RoundRobin,
            vec![Some(Joined::plain(Scripted::new(0, &trace))), None],
            Arc::new(Other),
            timing(),
            Some(tx),
        );
        let e = loop {
            match events
                .recv_timeout(Duration::from_secs(5))
                .expect("an event")
            {
                e @ PathEvent::Refused { .. } => break e,
                _ => continue,
            }
        };
        assert_eq!(
            e,
            PathEvent::Refused {
                index: 1,
                reason: "another disk".into()
            }
        );
        let st = set.status();
        assert!(st[1].refused && st[1].link == Link::Down && !st[1].active);
        ok(go(&set, read(0)));
        ok(go(&set, read(1)));
        assert_eq!(*trace.lock().unwrap(), ["0 read 0", "0 read 1"]);
    }

    #[test]
    fn close_logs_out_every_path_and_none_logs_in_again() {
        let r = rig(2, PathPolicy::RoundRobin);
        r.connector.allowed.store(true, Ordering::SeqCst);
        r.set.close(Duration::from_secs(1));
        assert!(r.set.status().iter().all(|s| s.link == Link::Down));
        std::thread::sleep(Duration::from_millis(50));
        assert!(r.set.status().iter().all(|s| s.link == Link::Down));
    }

    #[test]
    fn a_renewed_path_takes_no_io_until_it_is_back() {
        let r = rig(2, PathPolicy::RoundRobin);
        r.set
            .renew(0, Duration::from_secs(1), Duration::from_millis(30));
        ok(go(&r.set, read(1)));
        ok(go(&r.set, read(2)));
        assert_eq!(trace(&r), ["1 read 1", "1 read 2"]);
        r.connector.allowed.store(true, Ordering::SeqCst);
        wait_event(&r, |e| *e == PathEvent::Up { index: 0 });
        assert_eq!(r.set.status()[0].link, Link::Up);
    }

    #[test]
    fn an_io_error_is_not_a_path_failure() {
        struct Failing;
        impl Path for Failing {
            fn submit(&self, _: BlockOp, buf: Vec<u8>, done: BlockDone) {
                done.call(Err(BlockError::Io("MEDIUM ERROR".into())), buf)
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
            vec![Some(Joined::plain(Arc::new(Failing) as Arc<dyn Path>))],
            Arc::clone(&r.connector) as Arc<dyn Connect>,
            timing(),
            None,
        );
        let rx = go(&set, read(0));
        let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(e, Err(BlockError::Io("MEDIUM ERROR".into())));
        assert_eq!(set.views().0[0].link, Link::Up);
    }
}
