//! Block-device bridges: a LUN as a kernel block device (/dev/ublkbN over
//! ublk, /dev/nbdN over NBD), so a root filesystem can live on it.
//!
//! A bridge only moves block requests between the kernel and a [`Backend`]:
//! it does not know iSCSI. [`IscsiBackend`] is the backend that turns block
//! requests into SCSI commands on a session, without blocking and without
//! copying: the request's buffer travels with the command and comes back
//! with its completion.
//!
//! - [`nbd`]: the kernel NBD driver over its generic-netlink interface and a
//!   socketpair (never the blocking NBD_DO_IT ioctl, which systemd's
//!   switch-root breaks);
//! - [`ublk`]: the ublk driver through io_uring;

pub mod carrier;
pub mod detach;
pub mod nbd;
pub mod pathset;
pub mod recover;
pub mod serve;
pub mod sessionpath;
pub mod ublk;

use std::collections::BinaryHeap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::completion::{Done, SLOTS, Sink, Slots};
use crate::iscsi::session::{Command, DataDir, ScsiResult, Session, SessionError};
use crate::lun::{LunInfo, RetryPolicy, backoff, pad16};
use crate::scsi::alua::{AccessState, AluaSense};
use crate::scsi::cdb::{self, Cdb};
use crate::scsi::sense::{
    Disposition, Sense, Status, UnitAttentionReason, disposition, flush_not_needed,
};

/// One block request, in logical blocks of the LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    Read { lba: u64, blocks: u32 },
    Write { lba: u64, blocks: u32, fua: bool },
    Flush,
    Discard { lba: u64, blocks: u32 },
    WriteZeroes { lba: u64, blocks: u32 },
}

/// Why a block request failed (what the kernel sees is EIO/ENOSPC/...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    /// The device is read-only or the LU refused writes.
    ReadOnly,
    /// Outside the device.
    OutOfRange,
    /// The operation is not supported by the LU.
    NotSupported,
    /// The session to the target failed (connection lost, ping timeout,
    /// protocol error): the command may be replayed on a new session.
    Transport(String),
    /// This path's target port group cannot take the command now (ALUA
    /// NOT READY 04/0B standby, 04/0C unavailable, or 04/0A transitioning
    /// past its retries): it was not run; another path may take it.
    PortState(AccessState, String),
    /// Anything else, with a readable reason.
    Io(String),
}

impl BlockError {
    /// The negative errno a bridge reports to the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            BlockError::ReadOnly => -(nix::errno::Errno::EROFS as i32),
            BlockError::OutOfRange => -(nix::errno::Errno::ENOSPC as i32),
            BlockError::NotSupported => -(nix::errno::Errno::EOPNOTSUPP as i32),
            BlockError::Io(_) | BlockError::Transport(_) | BlockError::PortState(..) => {
                -(nix::errno::Errno::EIO as i32)
            }
        }
    }
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::ReadOnly => write!(f, "the device is read-only"),
            BlockError::OutOfRange => write!(f, "beyond the end of the device"),
            BlockError::NotSupported => write!(f, "not supported by the LU"),
            BlockError::Io(m) => write!(f, "{m}"),
            BlockError::Transport(m) => write!(f, "{m}"),
            BlockError::PortState(_, m) => write!(f, "{m}"),
        }
    }
}

/// Called once when a request ends, with its buffer handed back. Runs on a
/// backend thread: it must be quick (post a completion, write a reply).
/// On the data path it names a slot of the caller's ([`Done::slot`]), so a
/// request allocates nothing on its way down and back.
pub type BlockDone = Done<Result<(), BlockError>>;

/// What a bridge needs from the storage behind it.
pub trait Backend: Send + Sync {
    /// Geometry and capabilities.
    fn info(&self) -> &LunInfo;
    /// Start a request. For reads `buf` must hold `blocks * block_size`
    /// bytes and is filled; for writes it holds the data. `done` is called
    /// exactly once. Never blocks for long (at most for a free slot).
    fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone);
    /// The sessions whose answers complete requests now, for a bridge that
    /// receives them on its own thread (see `Session::request_rx`). None
    /// by default.
    fn sessions(&self, into: &mut Vec<Arc<Session>>) {
        let _ = into;
    }
}

/// Told about unit attentions that mean the LU changed under us (capacity,
/// the target's LUN inventory, INQUIRY data): the owner re-reads the LU
/// outside the I/O path. Runs on a session thread: it must only post.
pub type UaHook = Arc<dyn Fn(UnitAttentionReason) + Send + Sync>;

/// Block requests as SCSI commands on an iSCSI session.
///
/// A write is acknowledged (its `done` called with Ok) only after the
/// target's GOOD status. Unit attentions are retried at once, BUSY and the
/// like after a backoff on a small timer thread, so no session thread ever
/// sleeps.
pub struct IscsiBackend {
    session: Arc<Session>,
    info: LunInfo,
    retry: RetryPolicy,
    timer: Arc<Timer>,
    on_ua: Option<UaHook>,
    /// Requests in the session, shared by every `with_info` copy.
    table: Arc<PendingTable>,
}

impl IscsiBackend {
    pub fn new(session: Arc<Session>, info: LunInfo) -> IscsiBackend {
        IscsiBackend {
            session,
            info,
            retry: RetryPolicy::default(),
            timer: Timer::start(),
            on_ua: None,
            table: Arc::new(PendingTable {
                slots: Slots::with_capacity(SLOTS),
            }),
        }
    }

    /// Report LU-changed unit attentions to `hook`.
    pub fn with_ua_hook(mut self, hook: Option<UaHook>) -> IscsiBackend {
        self.on_ua = hook;
        self
    }

    /// The same session with the LU as re-read (a new size): requests are
    /// checked against it from now on.
    pub fn with_info(&self, info: LunInfo) -> IscsiBackend {
        IscsiBackend {
            session: Arc::clone(&self.session),
            info,
            retry: self.retry,
            timer: Arc::clone(&self.timer),
            on_ua: self.on_ua.clone(),
            table: Arc::clone(&self.table),
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

/// A request in flight with its retry count.
struct Pending {
    session: Arc<Session>,
    lun: u64,
    cdb: Cdb,
    dir: DataDir,
    retry: RetryPolicy,
    timer: Arc<Timer>,
    on_ua: Option<UaHook>,
    attempts: u32,
    uas: u32,
    done: BlockDone,
    table: Arc<PendingTable>,
}

/// Where a request waits while the session has its command: the session's
/// completion names the slot, so sending allocates nothing.
struct PendingTable {
    slots: Slots<Pending>,
}

impl Sink<Result<ScsiResult, SessionError>> for PendingTable {
    fn done(self: Arc<Self>, token: usize, r: Result<ScsiResult, SessionError>, buf: Vec<u8>) {
        if let Some(p) = self.slots.finish(token, "SCSI backend") {
            completed(p, r, buf);
        }
    }
}

/// The block layer's request timer on our queues, shorter than the kernel's
/// 30 s default. Both drivers only re-arm it while their daemon lives, so it
/// never fails I/O; what it buys is how soon the kernel notices a dead
/// daemon's requests (NBD resends them on the new socket, ublk on 6.12 lets
/// go of the device for `attach --recover` only then when the dead daemon
/// held every tag of a queue; see `nbd` and `ublk`).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Set /sys/block/DISK/queue/io_timeout to [`QUEUE_TIMEOUT`]; a failure
/// is logged, not fatal.
fn set_queue_timeout(disk: &str) {
    let path = format!("/sys/block/{disk}/queue/io_timeout");
    let ms = QUEUE_TIMEOUT.as_millis();
    if let Err(e) = std::fs::write(&path, ms.to_string()) {
        log::warn!(
            "{path}: cannot set {ms} ms: {e}; after a daemon restart, held requests wait for the kernel's default (30 s)"
        );
    }
}

/// The block layer's request timer of DISK, if sysfs says.
fn queue_timeout(disk: &str) -> Option<Duration> {
    let path = format!("/sys/block/{disk}/queue/io_timeout");
    let ms = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Said once per process: the LU refuses SYNCHRONIZE CACHE.
static FLUSH_REFUSED_WARNED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn send(p: Pending, buf: Vec<u8>) {
    let session = Arc::clone(&p.session);
    let table = Arc::clone(&p.table);
    let cmd = Command {
        lun: p.lun,
        cdb: pad16(&p.cdb),
        dir: p.dir,
        attr: 1,
    };
    let slot = table.slots.insert(p);
    session.submit(cmd, buf, Done::slot(table, slot));
}

fn completed(mut p: Pending, r: Result<ScsiResult, SessionError>, buf: Vec<u8>) {
    let res = match r {
        Ok(res) => res,
        Err(e) => {
            let err = match e {
                SessionError::ConnectionLost(_)
                | SessionError::Protocol(_)
                | SessionError::Closed
                | SessionError::PingTimeout(_)
                | SessionError::CommandTimeout { .. } => BlockError::Transport(e.to_string()),
                other => BlockError::Io(other.to_string()),
            };
            p.done.call(Err(err), buf);
            return;
        }
    };
    let status = Status::from_u8(res.status);
    let sense = res.sense.as_deref().and_then(|s| Sense::parse(s).ok());
    if flush_not_needed(p.cdb.opcode(), status, sense.as_ref()) {
        if !FLUSH_REFUSED_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "{}: the LU refuses it with ILLEGAL REQUEST ({}); completing flushes without it, as the kernel's sd does",
                p.cdb.name(),
                sense.as_ref().map(ToString::to_string).unwrap_or_default()
            );
        }
        p.done.call(Ok(()), buf);
        return;
    }
    let d = disposition(status, sense.as_ref());
    if let (Disposition::UnitAttention { reason }, Some(hook)) = (d, &p.on_ua)
        && (reason.lu_may_have_changed() || reason.access_states_changed())
    {
        hook(reason);
    }
    // This port's group cannot run it: another path may (the path set
    // moves it and reads the groups' states again). Transitioning is
    // retried here first, as below.
    let port = match sense.as_ref().and_then(AluaSense::of) {
        Some(AluaSense::Standby) => Some(AccessState::Standby),
        Some(AluaSense::Unavailable) => Some(AccessState::Unavailable),
        Some(AluaSense::Transitioning) if p.attempts >= p.retry.backoff_retries => {
            Some(AccessState::Transitioning)
        }
        _ => None,
    };
    if let (Some(state), Some(s)) = (port, &sense) {
        let what = format!("{} failed: {status}: {s}", p.cdb.name());
        p.done.call(Err(BlockError::PortState(state, what)), buf);
        return;
    }
    match d {
        Disposition::Done => {
            if let DataDir::Read(n) = p.dir
                && res.data_in < n as usize
            {
                p.done.call(
                    Err(BlockError::Io(format!(
                        "{}: short read: {} of {n} bytes arrived with GOOD status",
                        p.cdb.name(),
                        res.data_in
                    ))),
                    buf,
                );
                return;
            }
            p.done.call(Ok(()), buf)
        }
        Disposition::UnitAttention { reason } if p.uas < p.retry.unit_attention_retries => {
            p.uas += 1;
            log::info!("{}: unit attention ({reason:?}); retrying", p.cdb.name());
            send(p, buf);
        }
        Disposition::RetryAfterBackoff if p.attempts < p.retry.backoff_retries => {
            let d = backoff(&p.retry, p.attempts);
            p.attempts += 1;
            let timer = Arc::clone(&p.timer);
            timer.after(d, Box::new(move || send(p, buf)));
        }
        Disposition::WriteProtected => p.done.call(Err(BlockError::ReadOnly), buf),
        Disposition::Unsupported => p.done.call(Err(BlockError::NotSupported), buf),
        _ => {
            let what = match &sense {
                Some(s) => format!("{} failed: {status}: {s}", p.cdb.name()),
                None => format!("{} failed: {status}", p.cdb.name()),
            };
            log::error!("{what}");
            p.done.call(Err(BlockError::Io(what)), buf)
        }
    }
}

impl Backend for IscsiBackend {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    fn sessions(&self, into: &mut Vec<Arc<Session>>) {
        into.push(Arc::clone(&self.session));
    }

    fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone) {
        let bs = self.info.block_size();
        let end_ok = |lba: u64, blocks: u32| {
            lba.checked_add(u64::from(blocks))
                .is_some_and(|e| e <= self.info.blocks())
        };
        let (c, dir, buf) = match op {
            BlockOp::Read { lba, blocks } => {
                if !end_ok(lba, blocks) {
                    return done.call(Err(BlockError::OutOfRange), buf);
                }
                (
                    cdb::read(lba, blocks, false),
                    DataDir::Read(blocks * bs),
                    buf,
                )
            }
            BlockOp::Write { lba, blocks, fua } => {
                if self.info.write_protected {
                    return done.call(Err(BlockError::ReadOnly), buf);
                }
                if !end_ok(lba, blocks) {
                    return done.call(Err(BlockError::OutOfRange), buf);
                }
                (
                    cdb::write(lba, blocks, fua && self.info.fua),
                    DataDir::Write(blocks * bs),
                    buf,
                )
            }
            BlockOp::Flush => {
                let c = if self.info.blocks() > u64::from(u32::MAX) {
                    cdb::sync_cache_16(0, 0)
                } else {
                    cdb::sync_cache(0, 0)
                };
                (c, DataDir::None, buf)
            }
            BlockOp::Discard { lba, blocks } => {
                if !self.info.can_unmap() {
                    return done.call(Err(BlockError::NotSupported), buf);
                }
                if !end_ok(lba, blocks) {
                    return done.call(Err(BlockError::OutOfRange), buf);
                }
                // Split by the LU's limits (VPD B0): blocks per descriptor,
                // descriptors per UNMAP. The kernel may discard gigabytes
                // at once (mkfs does).
                let limits = self.info.limits.unwrap_or_default();
                let per_desc = match limits.max_unmap_lba_count {
                    0 => u32::MAX,
                    n => n,
                };
                let per_cmd = match limits.max_unmap_descriptor_count {
                    0 => 256,
                    n => n.min(cdb::UNMAP_MAX_DESCRIPTORS as u32),
                } as usize;
                let ranges = split(lba, blocks, per_desc);
                let mut cmds = std::collections::VecDeque::new();
                for group in ranges.chunks(per_cmd.max(1)) {
                    let list = match cdb::unmap_parameter_list(group) {
                        Ok(l) => l,
                        Err(_) => return done.call(Err(BlockError::NotSupported), buf),
                    };
                    let len = list.len() as u16;
                    cmds.push_back((cdb::unmap(len), DataDir::Write(u32::from(len)), list));
                }
                return self.chain(cmds, buf, done);
            }
            BlockOp::WriteZeroes { lba, blocks } => {
                if !self.info.can_write_same() {
                    return done.call(Err(BlockError::NotSupported), buf);
                }
                if !end_ok(lba, blocks) {
                    return done.call(Err(BlockError::OutOfRange), buf);
                }
                // WRITE SAME(16) with one zeroed block of data, unmapping
                // when the LU reads unmapped blocks back as zeros; split by
                // MAXIMUM WRITE SAME LENGTH.
                let unmap = self.info.can_unmap()
                    && self
                        .info
                        .provisioning
                        .is_some_and(|p| p.unmapped_reads_zero());
                let max = match self
                    .info
                    .limits
                    .map(|l| l.max_write_same_length)
                    .unwrap_or(0)
                {
                    0 => u64::from(u32::MAX),
                    n => n.min(u64::from(u32::MAX)),
                } as u32;
                let cmds = split(lba, blocks, max)
                    .into_iter()
                    .map(|(l, n)| {
                        (
                            cdb::write_same_16(l, n, unmap, false),
                            DataDir::Write(bs),
                            vec![0u8; bs as usize],
                        )
                    })
                    .collect();
                return self.chain(cmds, buf, done);
            }
        };
        send(self.pending(c, dir, done), buf);
    }
}

/// (lba, blocks) split into ranges of at most `max` blocks.
fn split(lba: u64, blocks: u32, max: u32) -> Vec<(u64, u32)> {
    let max = max.max(1);
    let mut out = Vec::new();
    let (mut at, mut left) = (lba, blocks);
    while left > 0 {
        let n = left.min(max);
        out.push((at, n));
        at += u64::from(n);
        left -= n;
    }
    out
}

impl IscsiBackend {
    /// Run commands one after another (each with its own small buffer);
    /// `done` gets the caller's buffer back after the last, or the first
    /// failure.
    fn chain(
        &self,
        mut cmds: std::collections::VecDeque<(Cdb, DataDir, Vec<u8>)>,
        caller_buf: Vec<u8>,
        done: BlockDone,
    ) {
        let Some((c, dir, data)) = cmds.pop_front() else {
            return done.call(Ok(()), caller_buf);
        };
        let next = self.with_info(self.info.clone());
        let step = BlockDone::new(move |r, _data| match r {
            Ok(()) => next.chain(cmds, caller_buf, done),
            Err(e) => done.call(Err(e), caller_buf),
        });
        send(self.pending(c, dir, step), data);
    }

    fn pending(&self, cdb: Cdb, dir: DataDir, done: BlockDone) -> Pending {
        Pending {
            session: Arc::clone(&self.session),
            lun: self.info.lun,
            cdb,
            dir,
            retry: self.retry,
            timer: Arc::clone(&self.timer),
            on_ua: self.on_ua.clone(),
            attempts: 0,
            uas: 0,
            done,
            table: Arc::clone(&self.table),
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct Timed {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    // Earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Runs jobs after a delay on one thread (retries with backoff are rare:
/// one thread for all of them).
pub struct Timer {
    q: Mutex<(BinaryHeap<Timed>, u64)>,
    cv: Condvar,
}

impl Timer {
    pub fn start() -> Arc<Timer> {
        let t = Arc::new(Timer {
            q: Mutex::new((BinaryHeap::new(), 0)),
            cv: Condvar::new(),
        });
        let w = Arc::downgrade(&t);
        let _ = crate::threads::named("sanroot-retry").spawn(move || {
            loop {
                let Some(t) = w.upgrade() else { return };
                let mut g = t.q.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let due = g.0.peek().is_some_and(|j| j.at <= now);
                if due {
                    if let Some(j) = g.0.pop() {
                        drop(g);
                        (j.job)();
                    }
                    continue;
                }
                let wait =
                    g.0.peek()
                        .map(|j| j.at - now)
                        .unwrap_or(Duration::from_secs(1));
                let _ = t.cv.wait_timeout(g, wait);
            }
        });
        t
    }

    pub fn after(&self, d: Duration, job: Job) {
        let mut g = self.q.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        let seq = g.1;
        g.0.push(Timed {
            at: Instant::now() + d,
            seq,
            job,
        });
        self.cv.notify_one();
    }
}
