//! How a backend's completions get back to their queue thread: a mailbox
//! and a pipe whose read end always has a read queued in the queue's ring.

use std::io::{self, PipeReader, PipeWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;
use crate::bridge::BlockError;
use crate::completion::Sink;
use crate::iscsi::session;

/// user_data of the wake-up read (tags are below 4096).
pub(super) const WAKE: u64 = u64::MAX;
/// user_data of the cancel of the wake-up read.
pub(super) const CANCEL: u64 = u64::MAX - 1;

/// A finished backend request on its way back to its queue.
pub(super) struct Done {
    pub(super) tag: u16,
    pub(super) res: Result<(), BlockError>,
    pub(super) buf: Vec<u8>,
}

/// Where the backend's completions for one queue go, and how the queue's
/// thread is woken: a pipe whose read end always has a read queued in the
/// ring. `armed` is true while a wake-up byte is in the pipe or about to be;
/// only the thread clears it (when that byte's read completes), so at most
/// one byte is ever in the pipe and a write never blocks.
pub(super) struct Mailbox {
    pub(super) done: Mutex<Vec<Done>>,
    armed: AtomicBool,
    pub(super) quit: AtomicBool,
    /// Completions the queue thread posted itself (answers it received).
    pub(super) own: AtomicU64,
    tx: PipeWriter,
    pub(super) rx: PipeReader,
}

impl Mailbox {
    pub(super) fn new() -> io::Result<Mailbox> {
        let (rx, tx) = io::pipe()?;
        Ok(Mailbox {
            done: Mutex::new(Vec::new()),
            armed: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            own: AtomicU64::new(0),
            tx,
            rx,
        })
    }

    /// Mark the calling thread as this mailbox's queue thread: what it
    /// posts itself (completions of the answers it receives) needs no
    /// wake-up, its loop takes them before it waits again.
    pub(super) fn serve_here(self: &Arc<Self>) {
        OWN.with(|o| o.set(Arc::as_ptr(self) as usize));
    }

    /// Hand a completion to the queue thread. On a session's reader thread
    /// the wake-up waits until the reader has handled all it received, so
    /// the completions of one batch from the target wake the queue once.
    pub(super) fn post(self: &Arc<Self>, d: Done) {
        lock(&self.done).push(d);
        if OWN.with(|o| o.get()) == Arc::as_ptr(self) as usize {
            self.own.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.armed.swap(true, Ordering::AcqRel)
            && let Err(job) = session::at_reader_idle(session::IdleJob::Wake(self.clone()))
        {
            job.run();
        }
    }

    fn kick(&self) {
        if let Err(e) = (&self.tx).write_all(&[1]) {
            log::error!("ublk: cannot wake a queue thread: {e}");
        }
    }

    /// The thread's wake-up read completed: clear `armed` and take what is
    /// there.
    pub(super) fn woken(&self, into: &mut Vec<Done>) {
        self.armed.store(false, Ordering::Release);
        self.take(into);
    }

    pub(super) fn take(&self, into: &mut Vec<Done>) {
        into.append(&mut lock(&self.done));
    }

    /// Make the thread give up (only when the device cannot be stopped the
    /// normal way).
    pub(super) fn quit(&self) {
        self.quit.store(true, Ordering::Release);
        self.kick();
    }
}

impl session::Idle for Mailbox {
    fn idle(self: Arc<Self>) {
        self.kick();
    }
}

thread_local! {
    /// The mailbox whose queue thread this is (its address), or 0.
    static OWN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Wakes the queue thread (once, like a post) with nothing posted: a
/// session's reader parked for the queue to take its receive side.
pub(super) struct Nudge(pub(super) Arc<Mailbox>);

impl session::Idle for Nudge {
    fn idle(self: Arc<Self>) {
        if !self.0.armed.swap(true, Ordering::AcqRel) {
            self.0.kick();
        }
    }
}

/// The backend's completions name their tag: no allocation per request.
impl Sink<Result<(), BlockError>> for Mailbox {
    fn done(self: Arc<Self>, tag: usize, res: Result<(), BlockError>, buf: Vec<u8>) {
        // Our own tags, below the queue depth.
        let tag = tag as u16;
        self.post(Done { tag, res, buf });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ublk::ring::{push, submit_and_wait, test_ring};
    use io_uring::{opcode, types};
    use nix::errno::Errno;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::thread;

    #[test]
    fn mailbox_wakes_once_per_batch() {
        let m = Arc::new(Mailbox::new().unwrap());
        let poster = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                for tag in 0..100 {
                    m.post(Done {
                        tag,
                        res: Ok(()),
                        buf: Vec::new(),
                    });
                }
            })
        };
        poster.join().unwrap();
        // One byte for the whole batch.
        let mut byte = [0u8; 64];
        assert_eq!((&m.rx).read(&mut byte).unwrap(), 1);
        let mut got = Vec::new();
        m.woken(&mut got);
        assert_eq!(got.len(), 100);
        // The next post wakes again.
        m.post(Done {
            tag: 1,
            res: Err(BlockError::Io("EIO".into())),
            buf: Vec::new(),
        });
        assert_eq!((&m.rx).read(&mut byte).unwrap(), 1);
        m.woken(&mut got);
        assert_eq!(got.len(), 101);
    }

    #[test]
    fn wake_up_read_and_its_cancel_through_io_uring() {
        let Some(mut ring) = test_ring() else { return };
        let m = Arc::new(Mailbox::new().unwrap());
        let mut buf = Box::new([0u8; 64]);
        let read = opcode::Read::new(types::Fd(m.rx.as_raw_fd()), buf.as_mut_ptr(), 64)
            .build()
            .user_data(WAKE);
        push(&mut ring, &read.clone().into()).unwrap();
        ring.submit().unwrap();
        let poster = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                m.post(Done {
                    tag: 3,
                    res: Ok(()),
                    buf: vec![1; 8],
                })
            })
        };
        submit_and_wait(&ring).unwrap();
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        assert_eq!(cqes, vec![(WAKE, 1)]);
        poster.join().unwrap();
        let mut got = Vec::new();
        m.woken(&mut got);
        assert_eq!(
            (got[0].tag, got[0].res.is_ok(), got[0].buf.len()),
            (3, true, 8)
        );
        // Re-armed, then cancelled on the way out.
        push(&mut ring, &read.into()).unwrap();
        let cancel = opcode::AsyncCancel::new(WAKE).build().user_data(CANCEL);
        push(&mut ring, &cancel.into()).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            submit_and_wait(&ring).unwrap();
            seen.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        }
        seen.sort();
        assert_eq!(seen, vec![(CANCEL, 0), (WAKE, -(Errno::ECANCELED as i32))]);
    }
}
