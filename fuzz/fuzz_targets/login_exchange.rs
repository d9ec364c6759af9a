//! Fuzz target `login_exchange`: see `sanroot_fuzz::login_exchange`
//! (fuzz/src/lib.rs) for the input layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sanroot_fuzz::login_exchange(data));
