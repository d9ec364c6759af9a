//! The io_uring both the control path and the queues use: 128-byte SQEs
//! (for `IORING_OP_URING_CMD` with an 80-byte command area).

use std::io;

use io_uring::{IoUring, cqueue, squeue};
use nix::errno::Errno;

pub(super) type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// Queue one SQE, submitting first when the queue is full.
pub(super) fn push(ring: &mut Ring, e: &squeue::Entry128) -> io::Result<()> {
    for _ in 0..2 {
        // SAFETY: every SQE we build refers only to memory that stays valid
        // until its completion is reaped: a tag buffer (owned by the queue,
        // not touched while the command is queued, leaked if the queue gives
        // up), the queue's wake-up buffer (same rule), or a control command's
        // buffer (borrowed for the whole of `Control::run`, which waits for
        // the completion).
        if unsafe { ring.submission().push(e) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
    Err(io::Error::other("submission queue stays full"))
}

/// Queue `chain` in one submission: a linked chain (an operation and its
/// LINK_TIMEOUT, copies and the commit they must precede) must not be
/// split by a submit, or its links are cut.
pub(super) fn push_chain(ring: &mut Ring, chain: &[squeue::Entry128]) -> io::Result<()> {
    let room = {
        let sq = ring.submission();
        sq.capacity() - sq.len()
    };
    if room < chain.len() {
        ring.submit()?;
    }
    // SAFETY: as in `push`; and the chain fits now (a submit leaves the
    // whole queue free: the kernel consumed what it was given), or the
    // push fails.
    let ok = unsafe { ring.submission().push_multiple(chain) }.is_ok();
    if ok {
        Ok(())
    } else {
        Err(io::Error::other("submission queue stays full"))
    }
}

/// Submit and wait for at least one completion, riding out signals.
pub(super) fn submit_and_wait(ring: &Ring) -> io::Result<()> {
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => return Ok(()),
            Err(e) => match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                Errno::EINTR => continue,
                // Completions must be reaped first: the caller does.
                Errno::EAGAIN | Errno::EBUSY => return Ok(()),
                _ => return Err(e),
            },
        }
    }
}

/// A ring, or a skip (a failure under CI=true: CI's machine has
/// io_uring, so a skip there would hide a broken test).
#[cfg(test)]
pub(super) fn test_ring() -> Option<Ring> {
    match Ring::builder().build(8) {
        Ok(r) => Some(r),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: no io_uring here ({e})"
            );
            eprintln!("no io_uring here ({e}); skipping");
            None
        }
    }
}
