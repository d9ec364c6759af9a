//! The path set: several sessions to one LU, one per portal, offered to
//! the bridges as one device (issue 15). Built in steps; what is here:
//!
//! - [`policy`]: which path a command goes to, from the paths' link and
//!   ALUA states, and whether a new path reaches the same LU, as pure
//!   functions.
//!
//! ALUA's wire format (REPORT TARGET PORT GROUPS, access states, sense
//! codes) is in [`crate::scsi::alua`].

pub mod policy;
