//! The commands behind `sanroot SUBCOMMAND`. `main.rs` parses the command
//! line into these argument structs; each module does the work and returns
//! an exit code (see `crate::exit`).

/// `println!` that does not panic when stdout is a closed pipe
/// (`sanroot ls | head -1`): the output is simply cut short.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod attach;
pub mod bench;
pub mod common;
pub mod cp;
pub mod discover;
pub mod ibft;
pub mod ls;
pub mod node;
