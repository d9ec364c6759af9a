//! [`UblkError`]: why a ublk device could not be set up or served, in words
//! that say what to do about it.

use std::{fmt, io};

use nix::errno::Errno;

/// Why a ublk device could not be set up or served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UblkError {
    /// A control command failed.
    Command {
        cmd: &'static str,
        dev_id: Option<u32>,
        errno: Errno,
    },
    /// A system call outside the control commands failed.
    Os { what: String, errno: Errno },
    /// The LU or the device cannot be served this way.
    Unsupported(String),
    /// A queue thread could not start (`q_id` None: which one is unknown).
    Queue { q_id: Option<u16>, reason: String },
}

impl UblkError {
    pub(super) fn os(what: impl Into<String>, e: &io::Error) -> UblkError {
        UblkError::Os {
            what: what.into(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)),
        }
    }

    /// The errno behind the error, if there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            UblkError::Command { errno, .. } | UblkError::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// strerror(3) wording (nix calls EOPNOTSUPP "... on transport endpoint").
pub(super) fn describe(e: Errno) -> &'static str {
    match e {
        Errno::EOPNOTSUPP => "Operation not supported",
        e => e.desc(),
    }
}

fn command_hint(cmd: &str, errno: Errno) -> &'static str {
    match (cmd, errno) {
        (_, Errno::EPERM | Errno::EACCES) => " (are you root? ublk needs CAP_SYS_ADMIN)",
        ("ADD_DEV", Errno::EOPNOTSUPP | Errno::EINVAL) => {
            " (is the kernel older than 6.3, without ioctl-encoded ublk commands?)"
        }
        ("ADD_DEV", Errno::EEXIST) => " (that device number is taken)",
        ("START_USER_RECOVERY", Errno::EBUSY) => {
            " (the old daemon still holds the device, or it is not quiesced)"
        }
        ("START_USER_RECOVERY", Errno::EINVAL) => {
            " (the device was not created with USER_RECOVERY)"
        }
        (_, Errno::ENODEV) => " (no such ublk device)",
        _ => "",
    }
}

fn os_hint(what: &str, errno: Errno) -> &'static str {
    match errno {
        Errno::ENOENT if what.contains("ublk-control") => {
            " (is ublk_drv loaded? try: modprobe ublk_drv)"
        }
        Errno::EACCES | Errno::EPERM if what.contains("io_uring") => {
            " (is io_uring disabled? see sysctl kernel.io_uring_disabled)"
        }
        Errno::ENOSYS => " (kernel built without io_uring)",
        Errno::EACCES | Errno::EPERM => " (are you root?)",
        _ => "",
    }
}

impl fmt::Display for UblkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UblkError::Command { cmd, dev_id, errno } => {
                write!(f, "{cmd}")?;
                if let Some(id) = dev_id {
                    write!(f, " (ublk device {id})")?;
                }
                write!(
                    f,
                    " failed: {}{}",
                    describe(*errno),
                    command_hint(cmd, *errno)
                )
            }
            UblkError::Os { what, errno } => {
                write!(f, "{what}: {}{}", describe(*errno), os_hint(what, *errno))
            }
            UblkError::Unsupported(m) => write!(f, "{m}"),
            UblkError::Queue {
                q_id: Some(q),
                reason,
            } => write!(f, "ublk queue {q}: {reason}"),
            UblkError::Queue { q_id: None, reason } => write!(f, "ublk queues: {reason}"),
        }
    }
}

impl std::error::Error for UblkError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ublk::ctrl::CONTROL;

    #[test]
    fn errors_read_well() {
        let e = UblkError::Command {
            cmd: "ADD_DEV",
            dev_id: None,
            errno: Errno::EPERM,
        };
        assert_eq!(
            e.to_string(),
            "ADD_DEV failed: Operation not permitted (are you root? ublk needs CAP_SYS_ADMIN)"
        );
        let e = UblkError::Os {
            what: format!("open {CONTROL}"),
            errno: Errno::ENOENT,
        };
        assert_eq!(
            e.to_string(),
            "open /dev/ublk-control: No such file or directory (is ublk_drv loaded? try: modprobe ublk_drv)"
        );
        let e = UblkError::Command {
            cmd: "START_DEV",
            dev_id: Some(3),
            errno: Errno::EINVAL,
        };
        assert_eq!(
            e.to_string(),
            "START_DEV (ublk device 3) failed: Invalid argument"
        );
    }
}
