//! The queue threads: one per hardware queue, each with its own ring, serving
//! FETCH_REQ / COMMIT_AND_FETCH_REQ for every tag and lending each tag's
//! buffer to the backend in between (see the module documentation of
//! [`super`] for the protocol and the buffer-ownership rules).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types};
use nix::errno::Errno;
use zerocopy::IntoBytes;

use super::direct::{self, ZeroCopy};
use super::error::describe;
use super::mailbox::{CANCEL, Done, Mailbox, WAKE};
use super::node::open_char_dev;
use super::receive::{self, Receivers};
use super::request::{Descriptors, decode};
use super::ring::{Ring, push, push_chain, submit_and_wait};
use super::uapi::{self, DevInfo, IoCmd};
use super::{UblkError, lock, page_size};
use crate::bridge::{Backend, BlockDone, BlockOp};
use crate::iscsi::session;

/// PR_SET_IO_FLUSHER (include/uapi/linux/prctl.h, Linux 5.6).
const PR_SET_IO_FLUSHER: nix::libc::c_int = 57;

/// Live queue threads, for [`UblkDevice::wait`](super::UblkDevice::wait).
struct Life {
    live: Mutex<usize>,
    cv: Condvar,
}

struct LiveGuard(Arc<Life>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut n = lock(&self.0.live);
        *n = n.saturating_sub(1);
        self.0.cv.notify_all();
    }
}

/// The queue threads of a device.
pub(super) struct Queues {
    handles: Mutex<Vec<JoinHandle<()>>>,
    pub(super) mailboxes: Vec<Arc<Mailbox>>,
    life: Arc<Life>,
    ready: Mutex<Option<mpsc::Receiver<Result<(), UblkError>>>>,
    /// A thread that could not be started (reported by `await_ready`).
    spawn_err: Mutex<Option<UblkError>>,
    /// With UBLK_F_USER_COPY: the requests, as the layers below see them
    /// (registered with `crate::direct` while the queues run).
    pub(super) zc: Option<Arc<ZeroCopy>>,
}

/// What a queue thread serves.
struct QueueConfig {
    dev_id: u32,
    q_id: u16,
    depth: u16,
    buf_bytes: usize,
    block_shift: u8,
    page: usize,
    cdev: Arc<File>,
    backend: Arc<dyn Backend>,
    mailbox: Arc<Mailbox>,
    zc: Option<Arc<ZeroCopy>>,
}

impl Queues {
    /// Open /dev/ublkcN and start one thread per queue. The threads (and a
    /// failure to start one) report through [`Queues::await_ready`].
    pub(super) fn spawn(
        dev_id: u32,
        info: &DevInfo,
        block_shift: u8,
        backend: &Arc<dyn Backend>,
    ) -> Result<Queues, UblkError> {
        let cdev = Arc::new(open_char_dev(dev_id)?);
        let page = page_size();
        let life = Arc::new(Life {
            live: Mutex::new(0),
            cv: Condvar::new(),
        });
        let zc = (info.flags & uapi::UBLK_F_USER_COPY != 0).then(|| {
            Arc::new(ZeroCopy::new(
                info.nr_hw_queues,
                info.queue_depth,
                info.flags & uapi::UBLK_F_AUTO_BUF_REG != 0,
            ))
        });
        if let Some(z) = &zc {
            // The copies into requests run inline in the submission only
            // on a file io_uring may try without blocking (which ublk's
            // reads and writes never do); else each goes to a worker
            // thread. FETCH and COMMIT do not look at the flag.
            use nix::fcntl::{FcntlArg, OFlag, fcntl};
            let nonblocking = fcntl(&*cdev, FcntlArg::F_GETFL).and_then(|f| {
                let f = OFlag::from_bits_retain(f) | OFlag::O_NONBLOCK;
                fcntl(&*cdev, FcntlArg::F_SETFL(f))
            });
            if let Err(e) = nonblocking {
                log::warn!("ublk device {dev_id}: O_NONBLOCK on /dev/ublkc{dev_id}: {e}");
            }
            crate::direct::register(z.clone());
        }
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        let mut mailboxes = Vec::new();
        let mut spawn_err = None;
        for q_id in 0..info.nr_hw_queues {
            let mailbox = match Mailbox::new() {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    spawn_err = Some(UblkError::os("pipe", &e));
                    break;
                }
            };
            let cfg = QueueConfig {
                dev_id,
                q_id,
                depth: info.queue_depth,
                buf_bytes: info.max_io_buf_bytes as usize,
                block_shift,
                page,
                cdev: Arc::clone(&cdev),
                backend: Arc::clone(backend),
                mailbox: Arc::clone(&mailbox),
                zc: zc.clone(),
            };
            *lock(&life.live) += 1;
            let guard = LiveGuard(Arc::clone(&life));
            let tx = tx.clone();
            match crate::threads::named(format!("ublk{dev_id}q{q_id}"))
                .spawn(move || queue_main(cfg, tx, guard))
            {
                Ok(h) => {
                    handles.push(h);
                    mailboxes.push(mailbox);
                }
                Err(e) => {
                    // The closure (and its guard) was dropped.
                    spawn_err = Some(UblkError::os("spawn a ublk queue thread", &e));
                    break;
                }
            }
        }
        Ok(Queues {
            handles: Mutex::new(handles),
            mailboxes,
            life,
            ready: Mutex::new(Some(rx)),
            spawn_err: Mutex::new(spawn_err),
            zc,
        })
    }

    /// Wait until every thread has queued its fetches (or failed to).
    pub(super) fn await_ready(&self) -> Result<(), UblkError> {
        let Some(rx) = lock(&self.ready).take() else {
            return Ok(());
        };
        let mut first = lock(&self.spawn_err).take();
        for _ in 0..self.mailboxes.len() {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first.get_or_insert(e);
                }
                Err(_) => {
                    first.get_or_insert(UblkError::Queue {
                        q_id: None,
                        reason: "a queue thread ended during setup".into(),
                    });
                    break;
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub(super) fn wait(&self) {
        let mut n = lock(&self.life.live);
        while *n > 0 {
            n = self.life.cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        drop(n);
        self.retire();
    }

    pub(super) fn join(&self) {
        let handles = std::mem::take(&mut *lock(&self.handles));
        for h in handles {
            let name = h.thread().name().unwrap_or("ublk queue").to_string();
            if h.join().is_err() {
                log::error!("{name} panicked");
            }
        }
        self.retire();
    }

    pub(super) fn quit(&self) {
        for m in &self.mailboxes {
            m.quit();
        }
    }

    /// The queues ended (or never will serve): sessions stop handing read
    /// data to them.
    fn retire(&self) {
        if let Some(z) = &self.zc {
            z.retire();
            let z: Arc<dyn crate::direct::DirectRx> = z.clone();
            crate::direct::unregister(&z);
        }
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        self.retire();
    }
}

fn set_io_flusher(what: &str) {
    // SAFETY: prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) passes no pointers; it
    // only marks the calling thread.
    let r = unsafe {
        nix::libc::prctl(
            PR_SET_IO_FLUSHER,
            1 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
        )
    };
    if r != 0 {
        log::warn!(
            "{what}: prctl(PR_SET_IO_FLUSHER): {} (memory reclaim may deadlock on this device)",
            Errno::last()
        );
    }
}

/// Where a tag's buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A FETCH or COMMIT_AND_FETCH is queued: the kernel may write the
    /// buffer.
    Kernel,
    /// A write's data is being read from the request into the buffer (with
    /// UBLK_F_USER_COPY): the kernel writes the buffer.
    Filling,
    /// The backend has the buffer.
    Backend,
    /// Done: aborted or failed.
    Retired,
}

struct Slot {
    /// None while the backend has it.
    buf: Option<Vec<u8>>,
    /// The address the kernel was last given.
    addr: usize,
    state: State,
    /// Whether the queued command is the first FETCH (for messages).
    fetching: bool,
    /// Copies into the request are linked ahead of the queued commit.
    copying: bool,
    /// The request the backend has: what it is (for messages) and the
    /// result a success commits (bytes transferred, or 0).
    op: BlockOp,
    ok: i32,
}

/// How a queue thread ended.
enum Exit {
    /// Every tag retired and nothing with the backend.
    Done,
    /// Gave up with commands possibly still queued.
    Abandoned(String),
}

struct Queue {
    cfg: QueueConfig,
    ring: Ring,
    descs: Descriptors,
    slots: Vec<Slot>,
    in_kernel: usize,
    in_backend: usize,
    wake_buf: Box<[u8; 64]>,
    wake_queued: bool,
    wake_errors: u32,
    /// Requests handed to the backend.
    served: u64,
    /// The sessions this queue receives for.
    rx: Receivers,
    /// Completions reaped by a read into a request (see `direct`) that
    /// were not its own: handled with the next batch.
    stash: Vec<(u64, i32)>,
    /// Room for a commit's copies (`queue_commit`).
    parts: Vec<(u32, u32)>,
    chain: Vec<squeue::Entry128>,
}

/// A FETCH_REQ or COMMIT_AND_FETCH_REQ for `tag`: without
/// UBLK_F_USER_COPY it lends the tag's buffer at `addr`; with it, no
/// buffer, and with `auto_reg` the request's pages go to the ring's buffer
/// table at index `tag`.
fn io_cmd(cfg: &QueueConfig, op: u32, tag: u16, result: i32, addr: u64) -> squeue::Entry128 {
    let cmd = IoCmd {
        q_id: cfg.q_id,
        tag,
        result,
        addr: if cfg.zc.is_some() { 0 } else { addr },
    };
    let mut area = [0u8; 80];
    area[..size_of::<IoCmd>()].copy_from_slice(cmd.as_bytes());
    let mut e = opcode::UringCmd80::new(types::Fd(cfg.cdev.as_raw_fd()), op).cmd(area);
    if cfg.zc.as_ref().is_some_and(|z| z.auto_reg) {
        e = e.addr(Some(uapi::auto_buf_reg(tag, true)));
    }
    e.build().user_data(u64::from(tag))
}

fn queue_main(cfg: QueueConfig, ready: mpsc::Sender<Result<(), UblkError>>, guard: LiveGuard) {
    let name = format!("ublkb{} queue {}", cfg.dev_id, cfg.q_id);
    set_io_flusher(&name);
    let q_id = cfg.q_id;
    let setup_err = |reason: String| UblkError::Queue {
        q_id: Some(q_id),
        reason,
    };
    // A commit per tag, the wake-up read and its cancel, a poll and a
    // cancel per session received for.
    let entries = u32::from(cfg.depth) + 2 + 2 * receive::MAX_SESSIONS as u32;
    let ring = match Ring::builder().build(entries) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(setup_err(
                UblkError::os("io_uring setup", &e).to_string(),
            )));
            return;
        }
    };
    let descs = match Descriptors::map(&cfg.cdev, cfg.q_id, cfg.depth, cfg.page) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(setup_err(e.to_string())));
            return;
        }
    };
    // Every buffer up front, every page touched (non-zero fill: calloc'd
    // zero pages would only be allocated at the first request).
    let slots: Vec<Slot> = (0..cfg.depth)
        .map(|_| {
            let buf = vec![0x5au8; cfg.buf_bytes];
            Slot {
                addr: buf.as_ptr() as usize,
                buf: Some(buf),
                state: State::Retired,
                fetching: true,
                copying: false,
                op: BlockOp::Flush,
                ok: 0,
            }
        })
        .collect();
    if let Some(z) = &cfg.zc {
        if z.auto_reg
            && let Err(e) = ring
                .submitter()
                .register_buffers_sparse(u32::from(cfg.depth))
        {
            let _ = ready.send(Err(setup_err(
                UblkError::os("io_uring: a buffer table for the requests' pages", &e).to_string(),
            )));
            return;
        }
        for (tag, s) in slots.iter().enumerate() {
            let s: &Slot = s;
            z.lend(cfg.q_id, tag as u16, None, s.addr);
        }
    }
    cfg.mailbox.serve_here();
    let rx = Receivers::new(&cfg.mailbox, cfg.q_id == 0, usize::from(cfg.depth));
    let mut q = Queue {
        rx,
        cfg,
        ring,
        descs,
        slots,
        in_kernel: 0,
        in_backend: 0,
        wake_buf: Box::new([0u8; 64]),
        wake_queued: false,
        wake_errors: 0,
        served: 0,
        stash: Vec::with_capacity(entries as usize),
        parts: Vec::with_capacity(direct::MAX_PARTS + 1),
        chain: Vec::with_capacity(direct::MAX_PARTS + 2),
    };
    let r = q.start();
    let started = r.is_ok();
    let _ = ready.send(r.map_err(setup_err));
    drop(ready);
    let exit = if started || q.in_kernel > 0 {
        q.serve()
    } else {
        Exit::Abandoned("setup failed".into())
    };
    q.finish(exit, &name);
    drop(guard);
}

impl Queue {
    /// Queue the wake-up read and a FETCH for every tag.
    fn start(&mut self) -> Result<(), String> {
        self.queue_wake().map_err(|e| format!("io_uring: {e}"))?;
        for tag in 0..self.cfg.depth {
            let slot = &mut self.slots[usize::from(tag)];
            let Some(buf) = slot.buf.as_mut() else {
                continue;
            };
            let e = io_cmd(
                &self.cfg,
                uapi::UBLK_U_IO_FETCH_REQ,
                tag,
                0,
                buf.as_mut_ptr() as u64,
            );
            push(&mut self.ring, &e).map_err(|e| format!("io_uring: {e}"))?;
            slot.state = State::Kernel;
            self.in_kernel += 1;
        }
        self.ring
            .submit()
            .map_err(|e| format!("io_uring submit: {e}"))?;
        // The driver handles FETCH_REQ inline: failures are already here
        // (a request cannot arrive before START_DEV / END_USER_RECOVERY).
        let mut failed = None;
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut done = Vec::new();
        for (ud, res) in cqes {
            if ud < u64::from(self.cfg.depth) && res < 0 {
                failed.get_or_insert(res);
            }
            self.dispatch(ud, res, &mut done)?;
        }
        // (Nothing can have been posted yet; if it was, serve() sees it.)
        lock(&self.cfg.mailbox.done).append(&mut done);
        match failed {
            None => Ok(()),
            Some(res) => Err(format!(
                "FETCH_REQ failed: {}",
                describe(Errno::from_raw(-res))
            )),
        }
    }

    fn queue_wake(&mut self) -> io::Result<()> {
        let e = opcode::Read::new(
            types::Fd(self.cfg.mailbox.rx.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            self.wake_buf.len() as u32,
        )
        .build()
        .user_data(WAKE);
        push(&mut self.ring, &e.into())?;
        self.wake_queued = true;
        Ok(())
    }

    fn serve(&mut self) -> Exit {
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(usize::from(self.cfg.depth) + 2);
        let mut done = Vec::new();
        loop {
            // Completions the backend posted (possibly inline, from our own
            // submit) go out with the next submission.
            self.cfg.mailbox.take(&mut done);
            for d in done.drain(..) {
                if let Err(e) = self.commit(d) {
                    return Exit::Abandoned(format!("io_uring: {e}"));
                }
            }
            if self.cfg.mailbox.quit.load(Ordering::Acquire) {
                return Exit::Abandoned("told to quit".into());
            }
            if self.in_kernel == 0 && self.in_backend == 0 {
                return Exit::Done;
            }
            // Answers handled or still buffered: go round without waiting.
            let r = match self
                .rx
                .prepare(&*self.cfg.backend, &mut self.ring, &mut self.stash)
            {
                // (Completions a read into a request reaped wait too.)
                Ok(false) if self.stash.is_empty() => submit_and_wait(&self.ring),
                Ok(_) => self.ring.submit().map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                return Exit::Abandoned(format!("io_uring: {e}"));
            }
            cqes.append(&mut self.stash);
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            // The requests of one wake-up go to the target together.
            let plug = session::plug();
            for (ud, res) in cqes.drain(..) {
                if let Err(why) = self.dispatch(ud, res, &mut done) {
                    return Exit::Abandoned(why);
                }
            }
            drop(plug);
        }
    }

    /// One completion: the wake-up read, a session's socket poll, or a
    /// tag's command.
    fn dispatch(&mut self, ud: u64, res: i32, done: &mut Vec<Done>) -> Result<(), String> {
        if ud == direct::READ || ud == direct::READ_TIMEOUT {
            // Left over from a read into a request that gave up.
            return Ok(());
        }
        if ud & !0xffff == direct::FILL {
            return self
                .filled((ud & 0xffff) as u16, res)
                .map_err(|e| format!("io_uring: {e}"));
        }
        if ud & !0xffff == direct::COPY {
            if res < 0 {
                log::warn!(
                    "ublkb{} queue {}: tag {}: copying a read's data into the request: {}",
                    self.cfg.dev_id,
                    self.cfg.q_id,
                    ud & 0xffff,
                    Errno::from_raw(-res)
                );
            }
            return Ok(());
        }
        if receive::is_poll(ud) {
            self.rx.on_poll(ud, res, &mut self.ring, &mut self.stash);
            return Ok(());
        }
        if ud != WAKE {
            return self.on_cqe(ud, res).map_err(|e| format!("io_uring: {e}"));
        }
        self.wake_queued = false;
        self.rx.recheck();
        if res < 0 {
            self.wake_errors += 1;
            log::warn!(
                "ublkb{} queue {}: wake-up read: {}",
                self.cfg.dev_id,
                self.cfg.q_id,
                Errno::from_raw(-res)
            );
            if self.wake_errors > 16 {
                return Err("the wake-up pipe keeps failing".into());
            }
        } else {
            self.wake_errors = 0;
        }
        self.cfg.mailbox.woken(done);
        self.queue_wake().map_err(|e| format!("io_uring: {e}"))
    }

    /// A FETCH / COMMIT_AND_FETCH completed.
    fn on_cqe(&mut self, ud: u64, res: i32) -> io::Result<()> {
        let (dev, q) = (self.cfg.dev_id, self.cfg.q_id);
        let Some(tag) = u16::try_from(ud).ok().filter(|t| *t < self.cfg.depth) else {
            if ud != CANCEL {
                log::warn!("ublkb{dev} queue {q}: unexpected completion {ud:#x} ({res})");
            }
            return Ok(());
        };
        let slot = &mut self.slots[usize::from(tag)];
        if slot.state != State::Kernel {
            log::error!("ublkb{dev} queue {q}: tag {tag} completed twice");
            return Ok(());
        }
        self.in_kernel -= 1;
        if std::mem::take(&mut slot.copying) && res == -(Errno::ECANCELED as i32) {
            // A copy linked ahead of the commit failed (or came up short),
            // and took the commit with it: the read fails instead.
            log::error!(
                "ublkb{dev} queue {q}: tag {tag}: the read's data could not be copied into the request: it fails with EIO"
            );
            return self.queue_commit(tag, -(Errno::EIO as i32));
        }
        let what = if slot.fetching {
            "FETCH_REQ"
        } else {
            "COMMIT_AND_FETCH_REQ"
        };
        slot.fetching = false;
        match res {
            uapi::UBLK_IO_RES_OK => return self.request(tag),
            uapi::UBLK_IO_RES_ABORT => {
                log::debug!("ublkb{dev} queue {q}: tag {tag} aborted");
                slot.state = State::Retired;
            }
            uapi::UBLK_IO_RES_NEED_GET_DATA => {
                log::error!(
                    "ublkb{dev} queue {q}: tag {tag}: NEED_GET_DATA, which we did not ask for"
                );
                slot.state = State::Retired;
            }
            r => {
                let errno = if r < 0 {
                    Errno::from_raw(-r)
                } else {
                    Errno::UnknownErrno
                };
                log::error!(
                    "ublkb{dev} queue {q}: tag {tag}: {what} failed: {}",
                    describe(errno)
                );
                slot.state = State::Retired;
            }
        }
        Ok(())
    }

    /// A request arrived on `tag`: hand it to the backend or answer it.
    fn request(&mut self, tag: u16) -> io::Result<()> {
        let d = self.descs.get(tag);
        let req = match decode(&d, self.cfg.block_shift, self.cfg.buf_bytes) {
            Ok(r) => r,
            Err(errno) => {
                log::warn!(
                    "ublkb{} queue {}: refusing request op {} at sector {} for {} sectors: {}",
                    self.cfg.dev_id,
                    self.cfg.q_id,
                    d.op(),
                    d.start_sector,
                    d.nr_sectors,
                    describe(Errno::from_raw(-errno))
                );
                return self.queue_commit(tag, errno);
            }
        };
        let slot = &mut self.slots[usize::from(tag)];
        let Some(mut buf) = slot.buf.take() else {
            log::error!(
                "ublkb{} queue {}: tag {tag} has no buffer",
                self.cfg.dev_id,
                self.cfg.q_id
            );
            slot.state = State::Retired;
            return Ok(());
        };
        set_data_len(&mut buf, req.len, self.cfg.buf_bytes);
        slot.op = req.op;
        slot.ok = req.ok;
        if let Some(z) = &self.cfg.zc {
            z.arrived(
                self.cfg.q_id,
                tag,
                d.op_flags & uapi::UBLK_IO_F_NEED_REG_BUF == 0,
            );
            if let BlockOp::Write { .. } = req.op {
                return self.fill(tag, buf);
            }
        }
        self.hand_over(tag, buf);
        Ok(())
    }

    /// With UBLK_F_USER_COPY, read a write's data from the request into
    /// `buf` (its length) by a READ on /dev/ublkcN in the ring: it runs in
    /// the next submission, which the queue makes anyway, and its
    /// completion hands the request to the backend (`filled`).
    fn fill(&mut self, tag: u16, mut buf: Vec<u8>) -> io::Result<()> {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let e = opcode::Read::new(types::Fd(self.cfg.cdev.as_raw_fd()), buf.as_mut_ptr(), len)
            .offset(uapi::user_copy_offset(self.cfg.q_id, tag, 0))
            .build()
            .user_data(direct::FILL | u64::from(tag));
        let slot = &mut self.slots[usize::from(tag)];
        slot.buf = Some(buf);
        slot.state = State::Filling;
        self.in_kernel += 1;
        push(&mut self.ring, &e.into())
    }

    /// A write's data is in its buffer (`res`: the READ's result).
    fn filled(&mut self, tag: u16, res: i32) -> io::Result<()> {
        let Some(slot) = self
            .slots
            .get_mut(usize::from(tag))
            .filter(|s| s.state == State::Filling)
        else {
            log::error!(
                "ublkb{} queue {}: tag {tag}: a write's data arrived for no write",
                self.cfg.dev_id,
                self.cfg.q_id
            );
            return Ok(());
        };
        self.in_kernel -= 1;
        slot.state = State::Retired;
        let want = slot.buf.as_ref().map_or(0, Vec::len);
        if usize::try_from(res).ok() != Some(want) {
            log::warn!(
                "ublkb{} queue {}: tag {tag}: reading the write's data from the request: {}",
                self.cfg.dev_id,
                self.cfg.q_id,
                if res < 0 {
                    Errno::from_raw(-res).to_string()
                } else {
                    format!("{res} of {want} bytes")
                }
            );
            return self.queue_commit(tag, -(Errno::EIO as i32));
        }
        match slot.buf.take() {
            Some(buf) => self.hand_over(tag, buf),
            None => slot.state = State::Retired,
        }
        Ok(())
    }

    /// Give the request on `tag` (its op and result already in the slot)
    /// to the backend with its buffer.
    fn hand_over(&mut self, tag: u16, buf: Vec<u8>) {
        let slot = &mut self.slots[usize::from(tag)];
        slot.state = State::Backend;
        self.in_backend += 1;
        self.served += 1;
        let done = BlockDone::slot(self.cfg.mailbox.clone(), usize::from(tag));
        self.cfg.backend.submit(slot.op, buf, done);
    }

    /// The backend finished a request: commit it and fetch the next.
    fn commit(&mut self, d: Done) -> io::Result<()> {
        let buf_bytes = self.cfg.buf_bytes;
        let Some(slot) = self.slots.get_mut(usize::from(d.tag)) else {
            return Ok(());
        };
        if slot.state != State::Backend {
            log::error!(
                "ublkb{} queue {}: tag {} came back from the backend twice",
                self.cfg.dev_id,
                self.cfg.q_id,
                d.tag
            );
            return Ok(());
        }
        self.in_backend -= 1;
        let mut buf = d.buf;
        if buf.as_ptr() as usize != slot.addr || buf.capacity() < buf_bytes {
            // Not the Vec we lent: make its first buf_bytes initialised
            // (keeping what a read put there) and lend that from now on.
            log::debug!(
                "ublk: the backend returned another buffer for tag {}",
                d.tag
            );
            if buf.len() < buf_bytes {
                buf.resize(buf_bytes, 0);
            }
            if let Some(z) = &self.cfg.zc {
                z.lend(self.cfg.q_id, d.tag, Some(slot.addr), buf.as_ptr() as usize);
            }
            slot.addr = buf.as_ptr() as usize;
        }
        let result = match d.res {
            Ok(()) => slot.ok,
            Err(e) => {
                log::warn!("ublkb{}: {:?} failed: {e}", self.cfg.dev_id, slot.op);
                e.errno()
            }
        };
        slot.buf = Some(buf);
        self.queue_commit(d.tag, result)
    }

    /// Commit `result` for `tag` and fetch its next request. With
    /// UBLK_F_USER_COPY a read's data (what the session did not put
    /// straight into the request, see `direct`) goes in first: copied from
    /// the tag's buffer by writes on /dev/ublkcN linked ahead of the
    /// commit, in the same submission. Should a copy fail, the commit is
    /// cancelled with it (see `on_cqe`).
    fn queue_commit(&mut self, tag: u16, result: i32) -> io::Result<()> {
        let q_id = self.cfg.q_id;
        let slot = &mut self.slots[usize::from(tag)];
        let Some(base) = slot.buf.as_mut().map(|b| b.as_mut_ptr()) else {
            return Err(io::Error::other("commit without a buffer"));
        };
        self.parts.clear();
        if let Some(z) = &self.cfg.zc
            && result > 0
            && matches!(slot.op, BlockOp::Read { .. })
        {
            z.rest(q_id, tag, result.unsigned_abs(), &mut self.parts);
        }
        let fd = types::Fd(self.cfg.cdev.as_raw_fd());
        self.chain.clear();
        for &(start, end) in &self.parts {
            // SAFETY (of the pointer): start < end <= result <= the
            // buffer's initialised length (the read's), so the range is
            // inside the Vec, which stays in the slot, untouched, until
            // this tag's next request: after the commit the write precedes.
            let w = opcode::Write::new(fd, base.wrapping_add(start as usize), end - start)
                .offset(uapi::user_copy_offset(q_id, tag, start as usize))
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(direct::COPY | u64::from(tag));
            self.chain.push(w.into());
        }
        slot.copying = !self.parts.is_empty();
        slot.state = State::Kernel;
        self.in_kernel += 1;
        let e = io_cmd(
            &self.cfg,
            uapi::UBLK_U_IO_COMMIT_AND_FETCH_REQ,
            tag,
            result,
            base as u64,
        );
        self.chain.push(e);
        push_chain(&mut self.ring, &self.chain)
    }

    /// Tear down. After a clean end only the wake-up read is queued: cancel
    /// it and free everything. Otherwise close the ring and leak whatever
    /// the kernel may still write into.
    fn finish(mut self, exit: Exit, name: &str) {
        let clean = match &exit {
            Exit::Done => {
                log::info!(
                    "{name}: stopped after {} requests ({} completed on this thread)",
                    self.served,
                    self.cfg.mailbox.own.load(Ordering::Relaxed)
                );
                if let Some(z) = self.cfg.zc.as_ref().filter(|_| self.cfg.q_id == 0) {
                    log::info!(
                        "{name}: zero copy: {} data segments ({} KiB) read into requests",
                        z.fixed_reads.load(Ordering::Relaxed),
                        z.fixed_bytes.load(Ordering::Relaxed) >> 10
                    );
                }
                self.cancel_wake()
            }
            Exit::Abandoned(why) => {
                log::warn!("{name}: giving up: {why}");
                false
            }
        };
        if let Some(z) = &self.cfg.zc {
            z.forget_queue(self.cfg.q_id);
        }
        let Queue {
            ring,
            descs,
            slots,
            wake_buf,
            wake_queued,
            ..
        } = self;
        drop(ring);
        drop(descs);
        if !clean && wake_queued {
            std::mem::forget(wake_buf);
        }
        let mut leaked = 0usize;
        for slot in slots {
            if !clean && matches!(slot.state, State::Kernel | State::Filling) {
                std::mem::forget(slot.buf);
                leaked += 1;
            }
        }
        if leaked > 0 {
            log::warn!("{name}: leaked {leaked} buffers the kernel may still write into");
        }
    }

    /// Cancel the wake-up read and wait for it; false if that fails.
    fn cancel_wake(&mut self) -> bool {
        if !self.wake_queued {
            return true;
        }
        let e = opcode::AsyncCancel::new(WAKE).build().user_data(CANCEL);
        if push(&mut self.ring, &e.into()).is_err() {
            return false;
        }
        for _ in 0..100 {
            if submit_and_wait(&self.ring).is_err() {
                return false;
            }
            let cqes: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (ud, _) in cqes {
                if ud == WAKE {
                    self.wake_queued = false;
                }
            }
            if !self.wake_queued {
                return true;
            }
        }
        false
    }
}

/// Give `buf` a length of `len` for the backend. Growing it exposes bytes
/// the kernel wrote (a write request's data).
fn set_data_len(buf: &mut Vec<u8>, len: usize, initialised: usize) {
    if len <= buf.len() {
        buf.truncate(len);
        return;
    }
    assert!(len <= initialised && initialised <= buf.capacity());
    // SAFETY: the first `initialised` bytes of this allocation were
    // initialised when it was made (vec![..; initialised], or resized to it
    // when the backend handed back a different Vec; see `commit`); since
    // then only the kernel (copying request data into the buffer at the
    // address we gave it) and the backend (through the Vec) wrote to them,
    // and neither makes bytes uninitialised. len <= initialised <= capacity.
    unsafe { buf.set_len(len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_length_grows_over_initialised_bytes() {
        let mut b = vec![7u8; 8192];
        let p = b.as_ptr();
        set_data_len(&mut b, 512, 8192);
        assert_eq!(b.len(), 512);
        // What "the kernel" wrote past the length shows when it grows back.
        set_data_len(&mut b, 4096, 8192);
        assert_eq!(b.len(), 4096);
        assert!(b.iter().all(|&x| x == 7));
        assert_eq!(b.as_ptr(), p);
    }
}
