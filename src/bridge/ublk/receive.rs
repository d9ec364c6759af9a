//! The queue thread receiving its sessions' answers itself.
//!
//! Only a queue's own task may commit its requests. When a session's
//! reader thread receives an answer, it has to wake the queue thread to
//! commit it: at one request at a time, that second wake-up is most of
//! the latency the bridge adds (see the README's QD 1 table). So queue 0
//! takes over the receive side of every session its backend uses (see
//! `iscsi::session::handover`): it polls each session's socket in its own
//! ring and, when one is readable, handles the answers there, in its own
//! thread, and commits them before it next waits. The sessions' reader
//! threads park meanwhile; a session given up on (replaced by recovery,
//! dropped from a path set, failed) gets its receive side back.
//!
//! The queue thread must never wait for a task slot of a session it
//! receives for (only its own receiving frees one): a session is taken
//! over only when it has [`RESERVE`] slots more than the queue has tags.

use std::io;
use std::sync::Arc;

use io_uring::{opcode, types};

use super::direct::with_ring;
use super::mailbox::{CANCEL, Mailbox, Nudge};
use super::ring::{Ring, push};
use crate::bridge::Backend;
use crate::iscsi::session::{Rx, Session};

/// user_data of the socket polls: this bit plus a sequence number (below
/// the wake-up's and the cancel's, above any tag).
pub(super) const POLL: u64 = 1 << 32;
/// Sessions one queue receives for, at most (a path set's paths).
pub(super) const MAX_SESSIONS: usize = 8;
/// Task slots a session needs beyond the queue's tags: for pings, task
/// management, and commands other threads run on it (a re-read of the LU,
/// a path check).
const RESERVE: usize = 8;

/// Whether `ud` is a socket poll's.
pub(super) fn is_poll(ud: u64) -> bool {
    ud & POLL != 0 && ud < CANCEL
}

/// Where a session's receive side is.
enum Side {
    /// Asked for; its reader has not parked yet.
    Asked,
    Taken(Rx),
    /// The session failed under us: given back for its reader to end on,
    /// nothing more to take.
    Spent,
}

struct Entry {
    session: Arc<Session>,
    side: Side,
    /// The poll queued for it.
    poll: Option<u64>,
    /// A pump read from the socket while that poll was queued: the
    /// readiness it reports may be for bytes already taken.
    poll_stale: bool,
}

impl Entry {
    fn rx(&self) -> Option<&Rx> {
        match &self.side {
            Side::Taken(rx) => Some(rx),
            _ => None,
        }
    }

    /// Handle what the session received (see `Rx::pump`). False: the
    /// session failed, and the entry is spent.
    fn pump(&mut self, budget: usize, readable: bool) -> bool {
        let Side::Taken(rx) = &mut self.side else {
            return true;
        };
        match rx.pump(budget, readable) {
            Ok(_) => true,
            Err(err) => {
                log::debug!("ublk queue 0: the session it received for failed: {err}");
                self.side = Side::Spent;
                false
            }
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if matches!(self.side, Side::Asked) {
            self.session.withdraw_rx();
        }
        // A taken receive side goes back as the Rx drops.
    }
}

pub(super) struct Receivers {
    entries: Vec<Entry>,
    scratch: Vec<Arc<Session>>,
    nudge: Arc<Nudge>,
    next: u64,
    /// Look at the backend's sessions again before the next wait.
    stale: bool,
    /// Whether this queue receives at all (queue 0 does).
    enabled: bool,
    /// PDUs one pump handles at most before the queue looks at its ring.
    budget: usize,
    /// The queue's tags.
    tags: usize,
}

impl Receivers {
    pub(super) fn new(mailbox: &Arc<Mailbox>, enabled: bool, tags: usize) -> Receivers {
        Receivers {
            entries: Vec::with_capacity(MAX_SESSIONS),
            scratch: Vec::with_capacity(MAX_SESSIONS),
            nudge: Arc::new(Nudge(Arc::clone(mailbox))),
            next: 0,
            stale: true,
            enabled,
            budget: tags.max(1) * 2,
            tags,
        }
    }

    /// The backend may use other sessions now (the queue was woken from
    /// outside: a completion from another thread, a reader that parked).
    pub(super) fn recheck(&mut self) {
        self.stale = true;
    }

    /// Before the queue waits: follow the backend's sessions, take the
    /// receive sides that are ready, handle what they hold buffered, and
    /// poll each one taken. `Ok(true)`: it handled answers (their
    /// completions wait in the mailbox) or some are still buffered: the
    /// queue must go round once more without waiting.
    pub(super) fn prepare(
        &mut self,
        backend: &dyn Backend,
        ring: &mut Ring,
        stash: &mut Vec<(u64, i32)>,
    ) -> io::Result<bool> {
        let mut busy = false;
        if !self.enabled {
            return Ok(busy);
        }
        // Only a wake-up from outside changes what there is to take (the
        // sessions used, a reader that parked: its nudge wakes us).
        let look = std::mem::take(&mut self.stale);
        if look {
            self.follow(backend, ring)?;
        }
        for e in &mut self.entries {
            if look
                && matches!(e.side, Side::Asked)
                && let Some(rx) = e.session.take_rx()
            {
                e.side = Side::Taken(rx);
                log::info!("ublk queue 0: receiving a session's answers on its own thread");
            }
            // What is already buffered (the reader's, at the hand-over;
            // a pump's beyond its budget) no poll would report. Its
            // completions are in the mailbox now: the queue must go round
            // once more to commit them before it waits.
            if e.rx().is_some_and(|rx| rx.buffered() > 0) {
                busy = true;
                // (Left over from a pump that ran out of budget: it may
                // read on to the end of a PDU, and beyond, into the buffer.)
                e.poll_stale |= e.poll.is_some();
                let budget = self.budget;
                if !with_ring(ring, stash, 0, || e.pump(budget, false)) {
                    self.stale = true;
                    continue;
                }
            }
            let Some(rx) = e.rx() else { continue };
            if e.poll.is_none() {
                let ud = POLL | (self.next & 0xffff_ffff);
                self.next = self.next.wrapping_add(1);
                let p = opcode::PollAdd::new(types::Fd(rx.fd()), nix::libc::POLLIN as u32)
                    .build()
                    .user_data(ud);
                push(ring, &p.into())?;
                e.poll = Some(ud);
                e.poll_stale = false;
            }
        }
        Ok(busy)
    }

    /// Drop sessions the backend no longer uses, ask for new ones'.
    fn follow(&mut self, backend: &dyn Backend, ring: &mut Ring) -> io::Result<()> {
        self.scratch.clear();
        backend.sessions(&mut self.scratch);
        let mut i = 0;
        while i < self.entries.len() {
            let used = self
                .scratch
                .iter()
                .any(|s| Arc::ptr_eq(s, &self.entries[i].session));
            if used {
                i += 1;
                continue;
            }
            let e = self.entries.swap_remove(i);
            if let Some(ud) = e.poll {
                let c = opcode::AsyncCancel::new(ud).build().user_data(CANCEL);
                push(ring, &c.into())?;
            }
        }
        for s in self.scratch.drain(..) {
            if self.entries.len() >= MAX_SESSIONS {
                break;
            }
            if self.entries.iter().any(|e| Arc::ptr_eq(&e.session, &s)) {
                continue;
            }
            if s.depth() < self.tags + RESERVE {
                log::debug!(
                    "ublk: a session of {} task slots stays with its reader ({} tags)",
                    s.depth(),
                    self.tags
                );
                continue;
            }
            s.request_rx(self.nudge.clone());
            self.entries.push(Entry {
                session: s,
                side: Side::Asked,
                poll: None,
                poll_stale: false,
            });
        }
        Ok(())
    }

    /// A socket poll completed with `res` (its events, or an error):
    /// handle what the session received. Its completions are posted to
    /// this thread's mailbox without a wake-up.
    pub(super) fn on_poll(
        &mut self,
        ud: u64,
        res: i32,
        ring: &mut Ring,
        stash: &mut Vec<(u64, i32)>,
    ) {
        let Some(e) = self.entries.iter_mut().find(|e| e.poll == Some(ud)) else {
            return; // cancelled, for a session given up on
        };
        e.poll = None;
        // An error (not readiness) only re-arms the poll.
        if res <= 0 {
            log::debug!("ublk queue 0: a session socket's poll ended with {res}");
            return;
        }
        // What it reported may have been read already: a pump would then
        // wait for the target's next PDU, with requests waiting to be
        // committed (the next prepare polls again).
        if std::mem::take(&mut e.poll_stale) && e.rx().is_some_and(|rx| !rx.readable_now()) {
            return;
        }
        let budget = self.budget;
        if !with_ring(ring, stash, 0, || e.pump(budget, true)) {
            self.stale = true;
        }
    }
}
