//! The commands behind `sanroot SUBCOMMAND`. `main.rs` parses the command
//! line into these argument structs; each module does the work and returns
//! an exit code (see `crate::exit`).

pub mod ibft;
