//! Process exit codes. Documented in the README; scripts depend on them.

/// Success.
pub const OK: i32 = 0;
/// Something failed that has no more specific code (I/O, internal).
pub const FAILURE: i32 = 1;
/// The command line was wrong (clap uses 2 as well).
pub const USAGE: i32 = 2;
/// No iBFT was found in any source that was tried.
pub const NO_IBFT: i32 = 3;
/// An iBFT was found but is invalid as a whole (or, with --strict, any part).
pub const INVALID_IBFT: i32 = 4;
