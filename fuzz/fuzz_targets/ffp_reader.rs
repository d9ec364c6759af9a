//! Fuzz target `ffp_reader`: see `sanroot_fuzz::ffp_reader` (fuzz/src/lib.rs)
//! for the input layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sanroot_fuzz::ffp_reader(data));
