//! The commands behind `sanroot SUBCOMMAND`. `main.rs` parses the command
//! line into these argument structs; each module does the work and returns
//! an exit code (see `crate::exit`).

pub mod bench;
pub mod common;
pub mod cp;
pub mod discover;
pub mod ibft;
pub mod ls;
pub mod node;
