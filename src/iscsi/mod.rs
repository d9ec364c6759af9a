//! iSCSI (RFC 7143): the initiator side.
//!
//! - [`pdu`]: the basic header segment and every opcode an initiator sends
//!   or receives, as typed views and plain values;
//! - [`digest`]: CRC32C header and data digests;
//! - [`text`]: key=value data segments and SendTargets responses;
//! - [`chap`]: CHAP (MD5) one-way and mutual;
//! - [`negotiate`]: operational parameter negotiation;
//! - [`login`], [`session`]: the protocol over a TCP connection;
//! - [`escalate`]: what a session does about a command without an answer.
//!
//! Not here: SCSI command formats (`crate::scsi`), block devices.

pub mod budget;
pub mod chap;
pub mod conn;
pub mod digest;
pub mod escalate;
pub mod initiator;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod session;
pub mod text;
