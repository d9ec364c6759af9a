//! Read data that goes straight into a block request's own pages.
//!
//! A bridge that can receive a read's data into the kernel's request
//! (ublk with `UBLK_F_AUTO_BUF_REG | UBLK_F_USER_COPY`) registers a
//! [`DirectRx`] here, naming the request buffers it lends to the layers
//! below. The session, about to receive a large Data-In segment into a
//! task's buffer, asks [`find`] whether that buffer is such a request's;
//! if it is, the bytes still on the socket go through the bridge, which
//! may read them straight into the request instead of into the buffer
//! (see `iscsi::session`'s `on_data_in`).
//!
//! The rule that keeps this safe: every byte of a read attempt is either
//! in the buffer or, where the bridge took it, in the request, and the
//! bridge remembers where it took them. [`DirectRx::begin`] (at each
//! attempt's first Data-In, from any session) makes it forget an earlier
//! attempt's. When the request ends, the bridge copies the rest from the
//! buffer.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where the rest of a data segment comes from: the connection's socket.
pub trait Source {
    /// The socket, for a read the bridge does itself (then it reports the
    /// bytes with [`Source::count`]).
    fn fd(&self) -> RawFd;
    /// How long a read may wait for bytes (None: no limit).
    fn timeout(&self) -> Option<Duration>;
    /// Fill `buf` from the socket (counted by the connection).
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// `n` bytes were read from the socket behind the connection's back.
    fn count(&mut self, n: usize);
}

/// A bridge that takes read data straight into its requests.
pub trait DirectRx: Send + Sync {
    /// The request whose buffer starts at `addr`, if it is one of ours.
    fn lookup(&self, addr: usize) -> Option<usize>;
    /// A read attempt on `token` begins (its Data-In at offset 0): what
    /// an earlier one put into the request no longer counts.
    fn begin(&self, token: usize);
    /// The next `scratch.len()` bytes of `src`, for byte `off` of the
    /// request: read into `scratch` (that part of the request's buffer),
    /// or straight into the request (then remembered).
    fn receive(
        &self,
        token: usize,
        off: usize,
        src: &mut dyn Source,
        scratch: &mut [u8],
    ) -> io::Result<()>;
}

static BRIDGES: RwLock<Vec<Arc<dyn DirectRx>>> = RwLock::new(Vec::new());
/// Registered bridges: with none (the usual case on the NBD bridge and on
/// kernels without zero copy), [`find`] takes no lock.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Start answering [`find`] for `d`'s buffers.
pub fn register(d: Arc<dyn DirectRx>) {
    let mut g = BRIDGES.write().unwrap_or_else(|p| p.into_inner());
    g.push(d);
    COUNT.store(g.len(), Ordering::Release);
}

/// Stop answering for `d` (by identity).
pub fn unregister(d: &Arc<dyn DirectRx>) {
    let mut g = BRIDGES.write().unwrap_or_else(|p| p.into_inner());
    g.retain(|x| !Arc::ptr_eq(x, d));
    COUNT.store(g.len(), Ordering::Release);
}

/// The bridge and request that lent the buffer starting at `addr`.
pub fn find(addr: usize) -> Option<(Arc<dyn DirectRx>, usize)> {
    if COUNT.load(Ordering::Acquire) == 0 {
        return None;
    }
    let g = BRIDGES.read().unwrap_or_else(|p| p.into_inner());
    g.iter()
        .find_map(|d| d.lookup(addr).map(|t| (Arc::clone(d), t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Fake {
        addr: usize,
        got: Mutex<Vec<(usize, Vec<u8>)>>,
    }

    impl DirectRx for Fake {
        fn lookup(&self, addr: usize) -> Option<usize> {
            (addr == self.addr).then_some(7)
        }
        fn begin(&self, _: usize) {}
        fn receive(
            &self,
            _: usize,
            off: usize,
            src: &mut dyn Source,
            scratch: &mut [u8],
        ) -> io::Result<()> {
            src.read_exact(scratch)?;
            self.got.lock().unwrap().push((off, scratch.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn only_registered_buffers_are_found() {
        let f: Arc<dyn DirectRx> = Arc::new(Fake {
            addr: 0x1000,
            got: Mutex::new(Vec::new()),
        });
        assert!(find(0x1000).is_none());
        register(Arc::clone(&f));
        assert_eq!(find(0x1000).map(|(_, t)| t), Some(7));
        assert!(find(0x2000).is_none());
        unregister(&f);
        assert!(find(0x1000).is_none());
    }
}
