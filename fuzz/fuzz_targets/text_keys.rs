//! Fuzz target `text_keys`: see `sanroot_fuzz::text_keys` (fuzz/src/lib.rs) for the
//! input layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sanroot_fuzz::text_keys(data));
