//! Plugs (a burst of submissions sent in one write) and the reader's
//! idle point (completions' follow-up work before it waits again).

use super::*;

thread_local! {
    /// Set on a session's reader thread (see [`at_reader_idle`]).
    pub(super) static ON_READER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Under a [`Plug`] (and always on a reader thread): the sessions this
    /// thread queued commands on without sending them yet.
    pub(super) static PLUGGED: RefCell<Option<Vec<Arc<Shared>>>> = const { RefCell::new(None) };
    /// Jobs a reader thread runs before it next waits for its target.
    pub(super) static AT_IDLE: RefCell<Vec<IdleJob>> = const { RefCell::new(Vec::new()) };
    /// The other half of each of the two lists above: a list is swapped
    /// with its spare when it is worked through, so both keep their
    /// capacity and a burst allocates nothing once one of its size has
    /// been seen.
    static SPARE_PLUGGED: RefCell<Vec<Arc<Shared>>> = const { RefCell::new(Vec::new()) };
    static SPARE_IDLE: RefCell<Vec<IdleJob>> = const { RefCell::new(Vec::new()) };
    /// Set while a thread pumps a session's receive side it took over
    /// (see `handover`): its idle points do not wait for batches.
    pub(super) static PUMPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set on a thread that took a session's receive side over: it never
    /// waits on a socket to send (see `writer::flush_with`).
    pub(super) static RECEIVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A long-lived object with work for a reader's idle point (a bridge's
/// queue to wake, replies to write): queued as an `Arc`, no allocation.
pub trait Idle: Send + Sync {
    fn idle(self: Arc<Self>);
}

/// Work for a reader thread's idle point: see [`at_reader_idle`].
pub enum IdleJob {
    /// A closure: one heap allocation.
    Call(Box<dyn FnOnce()>),
    Wake(Arc<dyn Idle>),
}

impl IdleJob {
    pub fn run(self) {
        match self {
            IdleJob::Call(f) => f(),
            IdleJob::Wake(w) => w.idle(),
        }
    }
}

/// This thread's held sessions, for sending; an empty list (the spare)
/// takes their place.
fn take_plugged() -> Option<Vec<Arc<Shared>>> {
    PLUGGED.with(|p| {
        let mut p = p.borrow_mut();
        let held = p.as_mut()?;
        let spare = SPARE_PLUGGED.with(|s| std::mem::take(&mut *s.borrow_mut()));
        Some(std::mem::replace(held, spare))
    })
}

/// A list from [`take_plugged`], worked through: kept as the next spare.
fn give_back_plugged(mut v: Vec<Arc<Shared>>) {
    v.clear();
    SPARE_PLUGGED.with(|s| *s.borrow_mut() = v);
}

/// Commands submitted on this thread while a `Plug` lives are queued but
/// not sent; dropping it (or [`Plug::flush`]) sends them, several commands
/// in one write. For a thread that takes a burst of requests at once (a
/// block-device bridge reading many requests per system call). Plugs nest:
/// only the outermost sends. A submission that has to wait for a free task
/// slot sends what is held first.
pub struct Plug {
    outer: bool,
}

/// Start holding back this thread's submissions (see [`Plug`]).
pub fn plug() -> Plug {
    let outer = PLUGGED.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_some() {
            false
        } else {
            *p = Some(SPARE_PLUGGED.with(|s| std::mem::take(&mut *s.borrow_mut())));
            true
        }
    });
    Plug { outer }
}

impl Plug {
    /// Send what is held, and keep holding back what comes next.
    pub fn flush(&self) {
        if self.outer {
            send_plugged();
        }
    }
}

impl Drop for Plug {
    fn drop(&mut self) {
        if self.outer {
            send_plugged();
            if let Some(v) = PLUGGED.with(|p| p.borrow_mut().take()) {
                give_back_plugged(v);
            }
        }
    }
}

/// Send the commands this thread's plug holds.
pub(super) fn send_plugged() {
    let Some(mut held) = take_plugged() else {
        return;
    };
    for s in held.drain(..) {
        send_now(&s);
    }
    give_back_plugged(held);
}

/// Send whatever `shared` has queued: here if the transmit side is free,
/// else by the writer thread.
pub(super) fn send_now(shared: &Shared) {
    if let Err(e) = send_here(shared) {
        fail(shared, e);
    }
}

/// [`send_now`], the failure returned. Here if the transmit side is free
/// (and, on a thread that receives for sessions, as far as the socket
/// takes it without waiting), else by whoever holds it (the writer, or a
/// thread whose flush takes what is queued; the writer sees it when it
/// looks again). Never waits for the transmit side: a writer blocked by a
/// target that reads nothing while its own send is blocked (tgtd retries
/// a full socket in a loop) may be waiting for this very thread to read.
fn send_here(shared: &Shared) -> Result<(), SessionError> {
    let mut w = match shared.tx.try_lock() {
        Ok(w) => w,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            shared.wake_writer.notify_one();
            return Ok(());
        }
    };
    flush_with(shared, &mut w, !RECEIVER.with(|r| r.get()))
}

/// On a session's reader thread (where completions run): run `job` once
/// the reader has handled everything it has received so far, just before
/// it may wait for the target again (or when it ends). A completion can so
/// leave its output for one batch (e.g. one write for many replies)
/// instead of a system call each. Elsewhere the job comes back, to be run
/// by the caller.
pub fn at_reader_idle(job: IdleJob) -> Result<(), IdleJob> {
    if !ON_READER.with(|r| r.get()) {
        return Err(job);
    }
    AT_IDLE.with(|q| q.borrow_mut().push(job));
    Ok(())
}

/// Before the reader reads `need` more bytes: if fewer are buffered (or
/// known to wait in the socket, see [`lowat`]) the read may wait for the
/// target, so this is an idle point. (Not only
/// between PDUs: a read often ends inside one, and completions must not
/// wait for the target's next batch.) A failed send fails the session,
/// which the next read reports.
pub(super) fn idle_before(shared: &Shared, r: &PduReader<TcpStream>, need: usize) {
    let buffered = r.buffered();
    if buffered >= need || lowat::already_there(r, need - buffered) {
        return;
    }
    match reader_idle(shared) {
        // A pumping thread waits in its own loop, never here for a batch.
        Ok(()) if PUMPING.with(|p| p.get()) => {}
        Ok(()) => lowat::before_wait(shared, r, need - buffered),
        Err(e) => fail(shared, e),
    }
}

/// What a data segment of `len` bytes takes on the wire.
pub(super) fn segment_bytes(shared: &Shared, len: usize) -> usize {
    match len {
        0 => 0,
        n => pad4(n) + if shared.params.data_digest { 4 } else { 0 },
    }
}

/// The reader's idle point: run the jobs completions left, then send what
/// they and the PDUs just handled queued, for every session (a completion
/// may resubmit on another one). Until nothing is left.
pub(super) fn reader_idle(shared: &Shared) -> Result<(), SessionError> {
    loop {
        let mut jobs = AT_IDLE.with(|q| {
            let spare = SPARE_IDLE.with(|s| std::mem::take(&mut *s.borrow_mut()));
            std::mem::replace(&mut *q.borrow_mut(), spare)
        });
        let ran = !jobs.is_empty();
        for j in jobs.drain(..) {
            j.run();
        }
        SPARE_IDLE.with(|s| *s.borrow_mut() = jobs);
        if let Some(mut held) = take_plugged() {
            for s in held.drain(..) {
                if !std::ptr::eq(Arc::as_ptr(&s), shared) {
                    send_now(&s);
                }
            }
            give_back_plugged(held);
        }
        if has_work(&lock(&shared.state)) {
            // The receive side never waits for the transmit side.
            send_here(shared)?;
        }
        if !ran && AT_IDLE.with(|q| q.borrow().is_empty()) {
            return Ok(());
        }
    }
}
