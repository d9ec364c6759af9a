pub mod fake_target;
pub mod tgtd;
