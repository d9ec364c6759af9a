//! How a request's end is reported, without a heap allocation per request.
//!
//! A request goes down a stack of layers (a bridge, recovery, the path set,
//! the SCSI backend, the session), and each layer above the session wants
//! to hear how it ended. A boxed closure per layer per request would cost
//! a heap allocation each time, on the path that writes dirty pages back:
//! a root-disk daemon must not need free memory to do that. So a layer on
//! the data path keeps what it must remember of a request in its own
//! [`Slots`], allocated up front, and hands the layer below a [`Done`] that
//! names the slot: an `Arc` of the layer (a reference count, no allocation)
//! and the slot's index. Control paths and tests still pass closures.

use std::sync::{Arc, Mutex};

/// A layer that hears the end of its requests by slot ([`Done::slot`]).
pub trait Sink<R>: Send + Sync {
    /// The request in slot `token` ended with `r`; `buf` is its buffer,
    /// handed back. Called once per [`Done`]; must be quick (it runs on a
    /// session thread).
    fn done(self: Arc<Self>, token: usize, r: R, buf: Vec<u8>);
}

/// Called once when a request ends, with its buffer handed back.
pub enum Done<R> {
    /// A closure: one heap allocation; for control paths and tests.
    Call(Box<dyn FnOnce(R, Vec<u8>) + Send>),
    /// A slot in the caller's own table: no allocation.
    Slot(Arc<dyn Sink<R>>, usize),
}

impl<R> Done<R> {
    /// Run `f` when the request ends.
    pub fn new(f: impl FnOnce(R, Vec<u8>) + Send + 'static) -> Done<R> {
        Done::Call(Box::new(f))
    }

    /// Tell `sink` about slot `token` when the request ends.
    pub fn slot(sink: Arc<dyn Sink<R>>, token: usize) -> Done<R> {
        Done::Slot(sink, token)
    }

    /// The request ended with `r`.
    pub fn call(self, r: R, buf: Vec<u8>) {
        match self {
            Done::Call(f) => f(r, buf),
            Done::Slot(sink, token) => sink.done(token, r, buf),
        }
    }
}

/// Slots every layer sizes its table to: the deepest bridge queue (32
/// tags or buffers) several times over. A table grows past it if it must,
/// once; it never shrinks, so later bursts of that size allocate nothing.
pub const SLOTS: usize = 128;

/// What a layer remembers of its requests in flight, by index, with the
/// room allocated up front.
pub struct Slots<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    items: Vec<Option<T>>,
    /// Free indices; its capacity is kept at `items.len()`, so giving a
    /// slot back never allocates.
    free: Vec<usize>,
}

impl<T> Slots<T> {
    /// A table with `n` free slots.
    pub fn with_capacity(n: usize) -> Slots<T> {
        let mut items = Vec::with_capacity(n);
        items.resize_with(n, || None);
        Slots {
            inner: Mutex::new(Inner {
                items,
                free: (0..n).rev().collect(),
            }),
        }
    }

    /// Keep `t`; returns its slot.
    pub fn insert(&self, t: T) -> usize {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = g.free.pop() {
            g.items[i] = Some(t);
            return i;
        }
        g.items.push(Some(t));
        let n = g.items.len();
        let more = n - g.free.len();
        g.free.reserve(more);
        n - 1
    }

    /// Take back what slot `i` holds (`None` if it is free: a second
    /// completion of one request, which the caller reports).
    pub fn take(&self, i: usize) -> Option<T> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = g.items.get_mut(i)?.take()?;
        g.free.push(i);
        Some(t)
    }

    /// [`Slots::take`] for a completion: a free slot means the layer below
    /// completed one request twice, which is logged (as `who`) and ignored.
    pub fn finish(&self, i: usize, who: &str) -> Option<T> {
        let t = self.take(i);
        if t.is_none() {
            log::error!("{who}: request slot {i} was completed twice; the second ignored");
        }
        t
    }

    /// Slots in use (for the tests: no layer needs to know).
    #[cfg(test)]
    fn in_use(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.items.len() - g.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn slots_are_reused_and_grow_when_full() {
        let s = Slots::with_capacity(2);
        let a = s.insert("a");
        let b = s.insert("b");
        assert_ne!(a, b);
        let c = s.insert("c");
        assert_eq!(c, 2, "a full table grows");
        assert_eq!(s.in_use(), 3);
        assert_eq!(s.take(b), Some("b"));
        assert_eq!(s.take(b), None, "a slot is given back once");
        assert_eq!(s.insert("d"), b, "a free slot is reused");
        assert_eq!(s.take(7), None, "an index past the end is nobody's");
        assert_eq!(s.take(a), Some("a"));
        assert_eq!(s.take(c), Some("c"));
        assert_eq!(s.in_use(), 1);
    }

    struct Counter(AtomicUsize);

    impl Sink<u32> for Counter {
        fn done(self: Arc<Self>, token: usize, r: u32, buf: Vec<u8>) {
            self.0
                .fetch_add(token * 100 + r as usize + buf.len(), Ordering::SeqCst);
        }
    }

    #[test]
    fn done_reaches_its_closure_or_its_slot() {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        Done::slot(c.clone(), 3).call(4, vec![0; 5]);
        assert_eq!(c.0.load(Ordering::SeqCst), 309);
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        Done::new(move |r: u32, b: Vec<u8>| {
            s.store(r as usize + b.len(), Ordering::SeqCst);
        })
        .call(1, vec![0; 2]);
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }
}
