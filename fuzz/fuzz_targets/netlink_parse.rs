//! Fuzz target `netlink_parse`: see `sanroot_fuzz::netlink_parse`
//! (fuzz/src/lib.rs) for the input layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sanroot_fuzz::netlink_parse(data));
