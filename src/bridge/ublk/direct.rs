//! Zero copy: a read's data goes from the socket straight into the
//! kernel's request.
//!
//! With `UBLK_F_USER_COPY` the driver copies nothing between a request
//! and the tag's buffer: the daemon moves the bytes itself, by reading
//! and writing /dev/ublkcN at the request's offset. With
//! `UBLK_F_AUTO_BUF_REG` as well (Linux 6.16), the driver installs each
//! request's pages in the fetching ring's buffer table, at the tag's
//! index, until the tag's next COMMIT_AND_FETCH. Together:
//!
//! - A read's Data-In segment of 16 KiB or more that the queue's own
//!   thread receives (queue 0 pumps its sessions, see `receive`) is read
//!   from the socket with `IORING_OP_READ_FIXED` into the request's
//!   pages: the one copy, from the socket, that any read needs. Before,
//!   the bytes went to the tag's buffer and were copied again by the
//!   driver at commit.
//! - Every other byte of a read (bytes the session had buffered, small
//!   segments, a segment received on a reader thread) is in the tag's
//!   buffer, and goes into the request by an `IORING_OP_WRITE` on
//!   /dev/ublkcN linked ahead of the tag's COMMIT_AND_FETCH: the driver's
//!   copy, made in the same submission, with no system call of its own.
//! - A write's data is read from the request into the tag's buffer by an
//!   `IORING_OP_READ` on /dev/ublkcN when it arrives: again the driver's
//!   copy, in the queue's next submission.
//!
//! Which parts of a read went straight in is remembered per request (see
//! [`crate::direct`]); [`ZeroCopy::rest`] gives the commit the others.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use io_uring::{opcode, squeue, types};
use nix::errno::Errno;

use super::ring::{Ring, push, push_chain, submit_and_wait};
use crate::direct::{DirectRx, Source};

/// user_data of a READ_FIXED and of its linked timeout (below the
/// mailbox's WAKE and CANCEL, above the socket polls' range).
pub(super) const READ: u64 = u64::MAX - 16;
pub(super) const READ_TIMEOUT: u64 = u64::MAX - 15;
/// user_data of a copy into a request: this bit and the tag (not a socket
/// poll's: bit 32 is clear).
pub(super) const COPY: u64 = 1 << 33;
/// user_data of a write's data read from its request: this bit and the tag.
pub(super) const FILL: u64 = 1 << 34;

/// Segments shorter than this are read into the tag's buffer and copied:
/// a ring round trip costs more than copying a few KiB.
const MIN_FIXED: usize = 16 * 1024;
/// Parts of one read taken straight into the request, at most: a request
/// of 512 KiB in segments of 64 KiB, and a margin. Past it the rest of
/// the read goes through the buffer.
pub(super) const MAX_PARTS: usize = 12;

/// The parts of a request read straight into it: byte ranges, ascending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Took {
    parts: [(u32, u32); MAX_PARTS],
    n: usize,
}

impl Took {
    fn full(&self) -> bool {
        self.n == MAX_PARTS
    }

    /// [start, end) went in; false (and nothing kept) when it does not
    /// follow the last part or there is no room.
    fn add(&mut self, start: u32, end: u32) -> bool {
        if start >= end {
            return true;
        }
        if let Some(last) = self.n.checked_sub(1).map(|i| &mut self.parts[i]) {
            if start < last.1 {
                return false;
            }
            if start == last.1 {
                last.1 = end;
                return true;
            }
        }
        if self.full() {
            return false;
        }
        self.parts[self.n] = (start, end);
        self.n += 1;
        true
    }

    /// The ranges of [0, len) not taken, in order, into `out`.
    pub(super) fn rest(&self, len: u32, out: &mut Vec<(u32, u32)>) {
        out.clear();
        let mut at = 0;
        for &(s, e) in &self.parts[..self.n] {
            let (s, e) = (s.min(len), e.min(len));
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < len {
            out.push((at, len));
        }
    }
}

/// A device's requests, as the layers below see them (see the module
/// documentation).
pub(super) struct ZeroCopy {
    depth: u16,
    /// Whether requests' pages are installed in the queues' rings.
    pub(super) auto_reg: bool,
    /// Tag buffer address → token (queue × depth + tag).
    buffers: RwLock<HashMap<usize, usize>>,
    /// What the current read attempt put straight into the request.
    took: Vec<Mutex<Took>>,
    /// The request's pages are in its queue's buffer table.
    registered: Vec<AtomicBool>,
    /// Segments and bytes read from a socket into a request's pages.
    pub(super) fixed_reads: AtomicU64,
    pub(super) fixed_bytes: AtomicU64,
}

impl ZeroCopy {
    pub(super) fn new(queues: u16, depth: u16, auto_reg: bool) -> ZeroCopy {
        let n = usize::from(queues) * usize::from(depth);
        ZeroCopy {
            depth,
            auto_reg,
            buffers: RwLock::new(HashMap::with_capacity(n)),
            took: (0..n).map(|_| Mutex::new(Took::default())).collect(),
            registered: (0..n).map(|_| AtomicBool::new(false)).collect(),
            fixed_reads: AtomicU64::new(0),
            fixed_bytes: AtomicU64::new(0),
        }
    }

    fn token(&self, q_id: u16, tag: u16) -> usize {
        usize::from(q_id) * usize::from(self.depth) + usize::from(tag)
    }

    fn split(&self, token: usize) -> (u16, u16) {
        let d = usize::from(self.depth.max(1));
        ((token / d) as u16, (token % d) as u16)
    }

    fn took(&self, token: usize) -> std::sync::MutexGuard<'_, Took> {
        self.took[token].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The buffer of (`q_id`, `tag`) now starts at `addr` (instead of
    /// `old`, if it had one).
    pub(super) fn lend(&self, q_id: u16, tag: u16, old: Option<usize>, addr: usize) {
        let mut g = self.buffers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = old {
            g.remove(&o);
        }
        g.insert(addr, self.token(q_id, tag));
    }

    /// Forget the buffers of queue `q_id` (it ended).
    pub(super) fn forget_queue(&self, q_id: u16) {
        let d = usize::from(self.depth);
        let first = usize::from(q_id) * d;
        let mut g = self.buffers.write().unwrap_or_else(|p| p.into_inner());
        g.retain(|_, t| !(first..first + d).contains(t));
    }

    /// The queues ended: no buffer is lent any more.
    pub(super) fn retire(&self) {
        self.buffers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A request arrived on (`q_id`, `tag`); `reg` says whether its pages
    /// are in the queue's buffer table.
    pub(super) fn arrived(&self, q_id: u16, tag: u16, reg: bool) {
        let t = self.token(q_id, tag);
        *self.took(t) = Took::default();
        self.registered[t].store(reg && self.auto_reg, Ordering::Relaxed);
    }

    /// The ranges of the first `len` bytes of the read on (`q_id`, `tag`)
    /// that are still to be copied from its buffer, into `out`.
    pub(super) fn rest(&self, q_id: u16, tag: u16, len: u32, out: &mut Vec<(u32, u32)>) {
        self.took(self.token(q_id, tag)).rest(len, out);
    }
}

impl DirectRx for ZeroCopy {
    fn lookup(&self, addr: usize) -> Option<usize> {
        let g = self.buffers.read().unwrap_or_else(|p| p.into_inner());
        g.get(&addr).copied()
    }

    fn begin(&self, token: usize) {
        if token < self.took.len() {
            *self.took(token) = Took::default();
        }
    }

    fn receive(
        &self,
        token: usize,
        off: usize,
        src: &mut dyn Source,
        scratch: &mut [u8],
    ) -> io::Result<()> {
        let (q, tag) = self.split(token);
        let fixed = scratch.len() >= MIN_FIXED
            && self
                .registered
                .get(token)
                .is_some_and(|r| r.load(Ordering::Relaxed));
        if fixed
            && let Some(here) = HERE.get().filter(|h| h.q_id == q)
            && let (Ok(start), Ok(end)) = (u32::try_from(off), u32::try_from(off + scratch.len()))
        {
            let mut took = self.took(token);
            if !took.full() {
                // SAFETY: `HERE` is only set by `with_ring`, on this
                // thread, for the length of its closure, to a ring and a
                // stash that closure's caller lent it exclusively; we are
                // inside it.
                let (ring, stash) = unsafe { (&mut *here.ring, &mut *here.stash) };
                // A request's pages are addressed by their offset.
                let n = read_fixed(ring, stash, src, tag, u64::from(start), scratch.len())?;
                if took.add(start, end) {
                    self.fixed_reads.fetch_add(1, Ordering::Relaxed);
                    self.fixed_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(());
                }
                // (Not after the last part: the session would have failed
                // the read. Refuse rather than lose track.)
                return Err(io::Error::other(format!(
                    "ublk tag {tag}: data at {start} arrived out of order"
                )));
            }
        }
        src.read_exact(scratch)
    }
}

/// The ring of the queue thread that is pumping, for [`ZeroCopy::receive`].
#[derive(Clone, Copy)]
struct Here {
    ring: *mut Ring,
    stash: *mut Vec<(u64, i32)>,
    q_id: u16,
}

thread_local! {
    static HERE: Cell<Option<Here>> = const { Cell::new(None) };
}

/// Run `f` with the queue's ring lent to reads into requests. Completions
/// those reads reap that are not theirs go to `stash`, for the queue.
pub(super) fn with_ring<T>(
    ring: &mut Ring,
    stash: &mut Vec<(u64, i32)>,
    q_id: u16,
    f: impl FnOnce() -> T,
) -> T {
    struct Reset(Option<Here>);
    impl Drop for Reset {
        fn drop(&mut self) {
            HERE.set(self.0);
        }
    }
    let here = Here {
        ring: ring as *mut Ring,
        stash: stash as *mut _,
        q_id,
    };
    let _reset = Reset(HERE.replace(Some(here)));
    f()
}

/// Read `len` bytes from `src`'s socket into buffer `index` of the ring at
/// `at` (an offset, for a request's pages), with a deadline per read of
/// `src.timeout()`. Other completions go to `stash`.
fn read_fixed(
    ring: &mut Ring,
    stash: &mut Vec<(u64, i32)>,
    src: &mut dyn Source,
    index: u16,
    at: u64,
    len: usize,
) -> io::Result<usize> {
    let fd = types::Fd(src.fd());
    let ts = src.timeout().map(|t| {
        types::Timespec::new()
            .sec(t.as_secs())
            .nsec(t.subsec_nanos())
    });
    let mut done = 0;
    while done < len {
        let want = u32::try_from(len - done).unwrap_or(u32::MAX);
        let mut read = opcode::ReadFixed::new(fd, (at + done as u64) as *mut u8, want, index)
            .build()
            .user_data(READ);
        match &ts {
            Some(ts) => {
                read = read.flags(squeue::Flags::IO_LINK);
                let t = opcode::LinkTimeout::new(ts).build().user_data(READ_TIMEOUT);
                push_chain(ring, &[read.into(), t.into()])?;
            }
            None => push(ring, &read.into())?,
        }
        let mut res = None;
        let mut timer = ts.is_some();
        while res.is_none() || timer {
            submit_and_wait(ring)?;
            for c in ring.completion() {
                match c.user_data() {
                    READ => res = Some(c.result()),
                    READ_TIMEOUT => timer = false,
                    ud => stash.push((ud, c.result())),
                }
            }
        }
        match res.unwrap_or(0) {
            n if n > 0 => {
                let n = n as usize;
                src.count(n);
                done += n;
            }
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed {done} bytes into a {len}-byte data segment"),
                ));
            }
            e if e == -(Errno::ECANCELED as i32) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("data segment: no byte for the read timeout, {done} of {len} bytes in"),
                ));
            }
            e => return Err(io::Error::from_raw_os_error(-e)),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_queue_and_tag() {
        let z = ZeroCopy::new(2, 32, true);
        assert_eq!(z.token(1, 5), 37);
        assert_eq!(z.split(37), (1, 5));
        z.lend(1, 5, None, 0x1000);
        assert_eq!(z.lookup(0x1000), Some(37));
        z.lend(1, 5, Some(0x1000), 0x2000);
        assert_eq!(z.lookup(0x1000), None);
        assert_eq!(z.lookup(0x2000), Some(37));
        z.lend(0, 1, None, 0x3000);
        z.forget_queue(1);
        assert_eq!(z.lookup(0x2000), None);
        assert_eq!(z.lookup(0x3000), Some(1));
    }

    #[test]
    fn what_is_not_taken_is_copied() {
        let mut t = Took::default();
        let mut out = Vec::new();
        t.rest(4096, &mut out);
        assert_eq!(out, vec![(0, 4096)], "nothing taken: all copied");
        assert!(t.add(100, 20000));
        assert!(t.add(20000, 40000), "contiguous parts merge");
        assert!(t.add(50000, 65536));
        t.rest(65536, &mut out);
        assert_eq!(out, vec![(0, 100), (40000, 50000)]);
        assert!(!t.add(60000, 70000), "an overlap is refused");
        t.rest(131072, &mut out);
        assert_eq!(out, vec![(0, 100), (40000, 50000), (65536, 131072)]);
        // Full: no more parts, the rest stays with the buffer.
        let mut t = Took::default();
        for i in 0..MAX_PARTS as u32 {
            assert!(t.add(i * 10 + 1, i * 10 + 5));
        }
        assert!(t.full());
        assert!(!t.add(1000, 1001));
        t.rest(10 * MAX_PARTS as u32, &mut out);
        assert_eq!(out.len(), MAX_PARTS + 1);
        assert_eq!(out[0], (0, 1));
    }

    /// A socket as the session's connection would lend it.
    struct Sock(std::net::TcpStream, usize);

    impl Source for Sock {
        fn fd(&self) -> std::os::fd::RawFd {
            std::os::fd::AsRawFd::as_raw_fd(&self.0)
        }
        fn timeout(&self) -> Option<std::time::Duration> {
            self.0.read_timeout().unwrap()
        }
        fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
            io::Read::read_exact(&mut self.0, buf)
        }
        fn count(&mut self, n: usize) {
            self.1 += n;
        }
    }

    /// `read_fixed` with a buffer of our own in the table (registered by
    /// address, where a request's pages are by offset): a segment that
    /// comes in pieces arrives whole, completions that are not its own are
    /// kept, and a peer that stops sending mid-segment ends it at the
    /// socket's read timeout instead of hanging the queue.
    #[test]
    fn a_fixed_read_takes_pieces_keeps_others_and_times_out() {
        use std::io::Write;
        use std::time::Duration;
        let Some(mut ring) = super::super::ring::test_ring() else {
            return;
        };
        let mut buf = vec![0u8; 64 << 10];
        let iov = nix::libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `buf` outlives the ring's use of it (unregistered when
        // the ring drops at the end of the test, before `buf`).
        unsafe { ring.submitter().register_buffers(&[iov]) }.expect("register a buffer");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut src = Sock(s, 0);
        let data: Vec<u8> = (0..48 << 10).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            let mut p = peer.try_clone().unwrap();
            std::thread::spawn(move || {
                for chunk in data.chunks(5000) {
                    p.write_all(chunk).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        // Someone else's completion, reaped while the read waits.
        let nop = opcode::Nop::new().build().user_data(42);
        push(&mut ring, &nop.into()).unwrap();
        let mut stash = Vec::new();
        let base = buf.as_ptr() as u64;
        let n = read_fixed(&mut ring, &mut stash, &mut src, 0, base + 100, data.len()).unwrap();
        writer.join().unwrap();
        assert_eq!(n, data.len());
        assert_eq!(src.1, data.len(), "every byte counted");
        assert!(
            buf[100..100 + data.len()] == data[..],
            "the bytes landed at the offset"
        );
        assert_eq!(stash, vec![(42, 0)], "the other completion was kept");
        // 1 KiB of a 16 KiB segment, then silence. (Should the timeout
        // not work, the peer hangs up after a while: end of stream, not
        // a timeout, and the test fails instead of hanging.)
        peer.write_all(&[1u8; 1024]).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            let _ = peer.shutdown(std::net::Shutdown::Both);
        });
        let e = read_fixed(&mut ring, &mut stash, &mut src, 0, base, 16 << 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert_eq!(src.1, data.len() + 1024);
        drop(ring);
        drop(buf);
    }
}
