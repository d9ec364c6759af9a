//! sanroot: a boot-time iSCSI initiator.
//!
//! Layers, each knowing nothing of the ones above it:
//! - [`ibft`]: the iSCSI Boot Firmware Table;
//! - [`scsi`]: CDBs, sense data, INQUIRY/VPD/capacity parsing;
//! - [`iscsi`]: the RFC 7143 initiator (PDUs, text keys, login, session);
//! - [`cmd`]: the commands the binary offers;
//! - [`secret`]: CHAP secrets that never leak into logs.

pub mod cmd;
pub mod exit;
pub mod ibft;
pub mod iscsi;
pub mod logging;
pub mod lun;
pub mod nodes;
pub mod scsi;
pub mod secret;
pub mod url;
