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
/// The target could not be reached or refused the login (connection,
/// authentication, unknown target, ...).
pub const LOGIN: i32 = 5;
/// A SCSI or I/O error on the LU, or on the local file, during a transfer.
pub const IO: i32 = 6;
/// `cp --verify` found the copy differs from the source.
pub const VERIFY: i32 = 7;

/// A failure a command reports and exits with.
#[derive(Debug)]
pub struct CmdError {
    pub code: i32,
    pub message: String,
}

impl CmdError {
    pub fn new(code: i32, message: impl Into<String>) -> CmdError {
        CmdError {
            code,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> CmdError {
        CmdError::new(USAGE, message)
    }
}

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Print the error and return its code.
pub fn report(r: Result<(), CmdError>) -> i32 {
    match r {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("sanroot: {}", e.message);
            e.code
        }
    }
}
