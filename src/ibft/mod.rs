//! The iSCSI Boot Firmware Table: finding it, validating it, showing it.
//!
//! - [`wire`]: byte-level views (where each field is);
//! - [`mod@parse`]: validation of a raw table into [`Ibft`];
//! - [`emit`]: raw tables from values (tests, fuzz seeds);
//! - [`sysfs`]: the kernel's parsed view, as a last resort;
//! - [`source`]: which of ACPI, low memory and sysfs has the table;
//! - [`render`]: text, JSON and dracut arguments.
//!
//! Not here: acting on the table (bringing up the NIC, logging in); that is
//! the boot flow's job.

pub mod emit;
pub mod model;
pub mod parse;
pub mod render;
pub mod source;
pub mod sysfs;
pub mod wire;

pub use model::*;
pub use parse::{IbftError, ParseOptions, parse};
pub use source::{FindError, FindOptions, Found, SourceKind, find};
