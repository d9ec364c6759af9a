//! Bounds on one exchange with a target (a login, a SendTargets): a
//! deadline for the whole exchange and a cap on the PDUs it may take.
//!
//! A per-read socket timeout alone does not bound an exchange: a target
//! that answers every request with another empty continuation (C bit set,
//! no data) resets it each time and keeps us looping for ever, and the
//! byte limits only count continuations that carry data. So every read
//! of the exchange gets the time that is left of one deadline, and every
//! response PDU counts against a fixed number. Errors name the exchange
//! and the limit it hit.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Budget {
    what: &'static str,
    start: Instant,
    limit: Duration,
    pdus: u32,
    max_pdus: u32,
}

impl Budget {
    /// `what` names the exchange in errors ("login", "SendTargets").
    pub fn new(what: &'static str, limit: Duration, max_pdus: u32) -> Budget {
        Budget::starting(what, limit, max_pdus, Instant::now())
    }

    fn starting(what: &'static str, limit: Duration, max_pdus: u32, start: Instant) -> Budget {
        Budget {
            what,
            start,
            limit,
            pdus: 0,
            max_pdus,
        }
    }

    /// Count one response PDU.
    pub fn pdu(&mut self) -> Result<(), String> {
        self.pdus += 1;
        if self.pdus > self.max_pdus {
            return Err(format!(
                "{}: more than {} response PDUs (a target that keeps continuing its answer); giving up",
                self.what, self.max_pdus
            ));
        }
        Ok(())
    }

    /// The time left at `now`; `None` once the deadline has passed.
    pub fn remaining_at(&self, now: Instant) -> Option<Duration> {
        self.limit
            .checked_sub(now.saturating_duration_since(self.start))
            .filter(|d| !d.is_zero())
    }

    /// Before a read: the socket's read timeout becomes the time left, or
    /// the error says the exchange timed out.
    pub fn before_read(&self, socket: &TcpStream) -> io::Result<()> {
        let left = self
            .remaining_at(Instant::now())
            .ok_or_else(|| self.timed_out())?;
        socket.set_read_timeout(Some(left))
    }

    /// The error for a deadline that passed (or a read that timed out).
    pub fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{}: no complete answer from the target within {} s; it may be overloaded or not an iSCSI target",
                self.what,
                self.limit.as_secs_f64().round()
            ),
        )
    }

    /// `e` in words when it is a read timeout, else `e` itself.
    pub fn explain(&self, e: io::Error) -> io::Error {
        if is_timeout(&e) { self.timed_out() } else { e }
    }
}

/// A socket read or write that ran out of time (SO_RCVTIMEO gives
/// EAGAIN, "Resource temporarily unavailable").
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdus_are_capped_and_named() {
        let mut b = Budget::new("login", Duration::from_secs(15), 3);
        for _ in 0..3 {
            b.pdu().unwrap();
        }
        let e = b.pdu().unwrap_err();
        assert!(e.starts_with("login: more than 3 response PDUs"), "{e}");
    }

    #[test]
    fn the_deadline_is_for_the_whole_exchange() {
        let t0 = Instant::now();
        let b = Budget::starting("SendTargets", Duration::from_secs(30), 8, t0);
        assert_eq!(b.remaining_at(t0), Some(Duration::from_secs(30)));
        assert_eq!(
            b.remaining_at(t0 + Duration::from_secs(29)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(b.remaining_at(t0 + Duration::from_secs(30)), None);
        assert_eq!(b.remaining_at(t0 + Duration::from_secs(99)), None);
        let e = b.timed_out().to_string();
        assert!(
            e.starts_with("SendTargets: no complete answer from the target within 30 s"),
            "{e}"
        );
    }

    #[test]
    fn timeouts_are_explained_other_errors_kept() {
        let b = Budget::new("login", Duration::from_secs(15), 8);
        let e = b.explain(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("within 15 s"), "{e}");
        let e = b.explain(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
