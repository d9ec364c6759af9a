//! Fuzz target `negotiate`: see `sanroot_fuzz::negotiate` (fuzz/src/lib.rs) for the
//! input layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sanroot_fuzz::negotiate(data));
