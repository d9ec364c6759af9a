pub mod tgtd;
