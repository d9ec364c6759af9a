//! Every thread sanroot starts, with a stack sized for what it runs.
//!
//! The daemon locks its memory (`mlockall(MCL_CURRENT | MCL_FUTURE)`), and a
//! locked mapping is resident in full: with Rust's default 2 MiB stacks a
//! dozen threads would pin 24 MiB that they never touch. No thread here
//! recurses or keeps large arrays on its stack (buffers live on the heap),
//! so release builds give each 128 KiB. Unoptimized builds keep far larger
//! frames, so they get 1 MiB.

use std::io;
use std::thread::{Builder, JoinHandle};

/// Stack of every thread this crate starts, in bytes.
pub const STACK: usize = if cfg!(debug_assertions) {
    1 << 20
} else {
    128 << 10
};

/// A thread builder with a name (shown in `ps -L` and core dumps) and the
/// crate's stack size.
pub fn named(name: impl Into<String>) -> Builder {
    Builder::new().name(name.into()).stack_size(STACK)
}

/// Start a named thread; the error says which thread could not start.
pub fn spawn<F, T>(name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    named(name)
        .spawn(f)
        .map_err(|e| io::Error::new(e.kind(), format!("starting thread {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_runs_with_its_name() {
        let h = spawn("sr-test", || {
            std::thread::current().name().map(String::from)
        })
        .unwrap();
        assert_eq!(h.join().unwrap().as_deref(), Some("sr-test"));
    }
}
