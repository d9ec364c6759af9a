//! Told when a session's reader parked for a receive side asked for
//! (`Session::request_rx`): the tests that take it over wait for this.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct Parked(AtomicBool);

impl Parked {
    /// Whether the reader has parked.
    pub fn parked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl sanroot::iscsi::session::Idle for Parked {
    fn idle(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}
