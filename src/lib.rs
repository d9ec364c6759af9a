//! sanroot: a boot-time iSCSI initiator.
//!
//! Layers, each knowing nothing of the ones above it:
//! - [`ibft`]: the iSCSI Boot Firmware Table;
//! - [`cmd`]: the commands the binary offers;
//! - [`secret`]: CHAP secrets that never leak into logs.

pub mod cmd;
pub mod exit;
pub mod ibft;
pub mod logging;
pub mod secret;
