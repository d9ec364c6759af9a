//! Fuzz the raw iBFT parser, the memory scan and the renderers: see
//! `sanroot_fuzz::ibft_parse` (fuzz/src/lib.rs) for the input layout and
//! the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sanroot_fuzz::ibft_parse(data));
