//! Fuzz target `root_probe`: see `sanroot_fuzz::root_probe` (fuzz/src/lib.rs) for the
//! input layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sanroot_fuzz::root_probe(data));
