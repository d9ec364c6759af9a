pub mod cli;
pub mod fake_target;
pub mod parked;
pub mod tgtd;
