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
}

/// Work for a reader thread's idle point: see [`at_reader_idle`].
pub type IdleJob = Box<dyn FnOnce()>;

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
            *p = Some(Vec::new());
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
            PLUGGED.with(|p| p.borrow_mut().take());
        }
    }
}

/// Send the commands this thread's plug holds.
pub(super) fn send_plugged() {
    let held = PLUGGED.with(|p| p.borrow_mut().as_mut().map(std::mem::take));
    for s in held.unwrap_or_default() {
        send_now(&s);
    }
}

/// Send whatever `shared` has queued: here if the transmit side is free,
/// else by the writer thread.
pub(super) fn send_now(shared: &Shared) {
    match shared.tx.try_lock() {
        Ok(mut w) => {
            if let Err(e) = flush(shared, &mut w) {
                drop(w);
                fail(shared, e);
            }
        }
        Err(_) => shared.wake_writer.notify_one(),
    }
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
        let jobs = AT_IDLE.with(|q| std::mem::take(&mut *q.borrow_mut()));
        let ran = !jobs.is_empty();
        for j in jobs {
            j();
        }
        let held = PLUGGED.with(|p| p.borrow_mut().as_mut().map(std::mem::take));
        for s in held.unwrap_or_default() {
            if !std::ptr::eq(Arc::as_ptr(&s), shared) {
                send_now(&s);
            }
        }
        if has_work(&lock(&shared.state)) {
            let mut w = shared.tx.lock().unwrap_or_else(|p| p.into_inner());
            flush(shared, &mut w)?;
        }
        if !ran && AT_IDLE.with(|q| q.borrow().is_empty()) {
            return Ok(());
        }
    }
}
