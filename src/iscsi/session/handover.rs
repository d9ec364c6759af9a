//! Handing the receive side to another thread's event loop.
//!
//! A session's answers are read by its reader thread, and a completion
//! runs there. A bridge whose completions must be committed by a thread
//! of its own (ublk: only the queue's own task may commit a request) then
//! pays a second wake-up per request: the reader wakes for the answer and
//! wakes the queue thread, which takes the completion. At one request at
//! a time that hop is most of the latency the bridge adds.
//!
//! So such a thread may take the receive side over: it asks
//! ([`Session::request_rx`]); the reader parks at its next PDU boundary
//! (before it would wait for a header: the next answer or liveness ping
//! gets it there) and tells the asker, who takes an [`Rx`]
//! ([`Session::take_rx`]). The asker polls [`Rx::fd`] in its own loop and
//! calls [`Rx::pump`] when it is readable: the PDUs already there are
//! handled and completed on its thread, with no wake-up of another. Within
//! a PDU a read may still wait for the rest of it; the socket's receive
//! timeout bounds that by the session's own liveness limits. Dropping the
//! `Rx` gives the receive side back to the parked reader, which carries
//! on where the `Rx` left off (or ends, if the session failed meanwhile).
//!
//! The pumping thread must not itself wait for a free task slot of the
//! session (only its own pumping frees one): a bridge takes the receive
//! side over only when the session has more slots than the bridge can
//! have requests in flight ([`Session::depth`]).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// The hand-over state of one session.
pub(super) struct Handover {
    /// Someone asked for the receive side: the reader parks at its next
    /// PDU boundary.
    asked: AtomicBool,
    /// Session::stop, or the session failed on a taken receive side: a
    /// parked reader ends.
    stopping: AtomicBool,
    slot: Mutex<Slot>,
    /// The reader waits here while parked.
    back: Condvar,
}

#[derive(Default)]
struct Slot {
    /// The receive side while the reader is parked and nobody took it
    /// yet, or after it was given back.
    reader: Option<PduReader<TcpStream>>,
    /// Told when the reader parks.
    notify: Option<Arc<dyn Idle>>,
}

impl Handover {
    pub(super) fn new() -> Handover {
        Handover {
            asked: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            slot: Mutex::new(Slot::default()),
            back: Condvar::new(),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the reader should park before its next header.
    pub(super) fn asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    /// The session stops: a parked reader ends.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _g = self.slot();
        self.back.notify_all();
    }
}

/// On the reader thread, at a PDU boundary, when asked: finish what the
/// PDUs so far left to do, leave the receive side for the asker and wait
/// until it comes back. `None`: the session stopped or failed meanwhile
/// (the reader ends).
pub(super) fn park(shared: &Shared, r: PduReader<TcpStream>) -> Option<PduReader<TcpStream>> {
    if let Err(e) = reader_idle(shared) {
        fail(shared, e);
    }
    let h = &shared.handover;
    let mut slot = h.slot();
    slot.reader = Some(r);
    let notify = slot.notify.clone();
    drop(slot);
    log::debug!("session reader parked: the receive side is handed over");
    if let Some(n) = notify {
        n.idle();
    }
    let mut slot = h.slot();
    loop {
        if h.stopping.load(Ordering::Acquire) {
            return None;
        }
        // Back: given back (or never taken, and no longer wanted).
        if !h.asked() && slot.reader.is_some() {
            log::debug!("session reader resumes");
            return slot.reader.take();
        }
        slot = h.back.wait(slot).unwrap_or_else(|p| p.into_inner());
    }
}

impl Session {
    /// Task slots: commands (and control tasks) in flight at most.
    pub fn depth(&self) -> usize {
        usize::from(self.shared.opts.queue_depth.max(1))
    }

    /// Ask for the receive side (see the module documentation of
    /// `handover`): the reader parks at its next PDU boundary and calls
    /// `notify` (on the reader's thread: it must only post); then
    /// [`Session::take_rx`] returns it.
    pub fn request_rx(&self, notify: Arc<dyn Idle>) {
        let h = &self.shared.handover;
        h.slot().notify = Some(notify);
        h.asked.store(true, Ordering::Release);
    }

    /// No longer want the receive side asked for (and not taken): a
    /// parked reader carries on.
    pub fn withdraw_rx(&self) {
        let h = &self.shared.handover;
        let mut slot = h.slot();
        h.asked.store(false, Ordering::Release);
        slot.notify = None;
        h.back.notify_all();
    }

    /// The receive side, if the reader has parked for it since
    /// [`Session::request_rx`].
    pub fn take_rx(&self) -> Option<Rx> {
        let h = &self.shared.handover;
        if !h.asked() {
            return None;
        }
        let reader = h.slot().reader.take()?;
        // A read inside a PDU may wait for its rest: never longer than a
        // write may block (the target stopped sending).
        let timeout = write_timeout(lock(&self.shared.state).ping_timeout);
        let _ = self.shared.socket.set_read_timeout(Some(timeout));
        // This thread now reads the target's answers: it must never wait
        // on a socket to send (see `writer::flush_with`).
        RECEIVER.with(|r| r.set(true));
        Some(Rx {
            shared: Arc::clone(&self.shared),
            reader: Some(reader),
            spent: false,
        })
    }
}

/// The receive side of a session, taken over by another thread's loop
/// (see the module documentation of `handover`). Dropping it gives it back
/// to the session's reader thread.
pub struct Rx {
    shared: Arc<Shared>,
    /// Taken only when the `Rx` drops (given back).
    reader: Option<PduReader<TcpStream>>,
    /// The session failed on it.
    spent: bool,
}

/// While a thread pumps: completions run as on a reader thread (their
/// follow-up work waits for the end of the batch), and the reader's idle
/// points do not wait for batches of answers (the thread's own loop
/// waits). Restores the thread's state at the end, running jobs left over.
struct Pumping {
    was_reader: bool,
}

impl Pumping {
    fn enter() -> Pumping {
        PUMPING.with(|p| p.set(true));
        Pumping {
            was_reader: ON_READER.with(|r| r.replace(true)),
        }
    }
}

impl Drop for Pumping {
    fn drop(&mut self) {
        PUMPING.with(|p| p.set(false));
        if !self.was_reader {
            ON_READER.with(|r| r.set(false));
            let left = AT_IDLE.with(|q| std::mem::take(&mut *q.borrow_mut()));
            for j in left {
                j.run();
            }
        }
    }
}

impl Rx {
    /// The socket to poll for input (readable: call [`Rx::pump`]).
    pub fn fd(&self) -> RawFd {
        self.shared.socket.as_raw_fd()
    }

    /// Whether the socket has bytes to read now (a look that does not
    /// wait): for a caller whose poll reported readiness that a pump since
    /// may have taken (see [`Rx::pump`]'s `readable`).
    pub fn readable_now(&self) -> bool {
        sockinfo::readable(self.fd(), 0)
    }

    /// Bytes read from the socket and not yet handled: call
    /// [`Rx::pump`] for them, the socket's poll will not report them.
    pub fn buffered(&self) -> usize {
        self.reader.as_ref().map_or(0, |r| r.buffered())
    }

    /// Handle the PDUs the target has sent, at most `budget` of them: the
    /// ones buffered, and with `readable` (the socket polled readable, and
    /// nothing read from it since: else see [`Rx::readable_now`]) what the
    /// socket has; a stale `readable` would wait for the target's next
    /// PDU. Never waits for a PDU to begin (without `readable`), may wait
    /// for the rest of one that began. `Ok(true)`:
    /// more is buffered (call again; the socket's poll does not see it).
    /// An error is the session's failure: it has been failed (every
    /// command in flight completed with it); the `Rx` is spent.
    pub fn pump(&mut self, budget: usize, readable: bool) -> Result<bool, SessionError> {
        let shared = Arc::clone(&self.shared);
        let Some(r) = self.reader.as_mut().filter(|_| !self.spent) else {
            return Err(lock(&shared.state)
                .failed
                .clone()
                .unwrap_or(SessionError::Closed));
        };
        let _pumping = Pumping::enter();
        let plug = plug();
        let header = BHS_LEN + if shared.params.header_digest { 4 } else { 0 };
        let mut failed = None;
        for i in 0..budget {
            // What the poll reported is read once; after that only what
            // is buffered (the poll, armed again, reports what comes
            // next: no system call here to look).
            if r.buffered() == 0 && !(readable && i == 0) {
                break;
            }
            idle_before(&shared, r, header);
            if let Err(e) = rx_one(&shared, r) {
                failed = Some(rx_failure(&shared, e));
                break;
            }
        }
        let more = r.buffered() > 0;
        let r = match failed {
            None => reader_idle(&shared).map(|()| more),
            Some(e) => Err(e),
        };
        drop(plug);
        if let Err(e) = &r {
            rx_ended(&shared, e.clone());
            self.spent = true;
        }
        r
    }
}

impl Drop for Rx {
    fn drop(&mut self) {
        let _ = self.shared.socket.set_read_timeout(None);
        let h = &self.shared.handover;
        let mut slot = h.slot();
        if self.spent {
            // The session failed on it (and that was handled here): the
            // reader ends without reading what is left.
            h.stopping.store(true, Ordering::Release);
        } else {
            slot.reader = self.reader.take();
        }
        h.asked.store(false, Ordering::Release);
        slot.notify = None;
        h.back.notify_all();
    }
}
