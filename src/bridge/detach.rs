//! Detaching a device: stop the daemon that serves it (it flushes, logs
//! out and removes the device), or clean up after one that died. Used by
//! `sanroot detach` and by the sanroot-only initramfs's shutdown.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{nbd, serve, ublk};
use crate::exit::{self, CmdError};
use crate::state;

/// `/dev/NAME` for a bare device name.
pub fn device_path(device: &str) -> String {
    if device.starts_with("/dev/") {
        device.to_string()
    } else {
        format!("/dev/{device}")
    }
}

/// Stop the daemon serving `device` (it flushes, logs out and removes the
/// device), or clean up after one that died.
pub fn detach_device(device: &str) -> Result<(), CmdError> {
    let run = state::run_dir();
    let dev = device_path(device);
    let rec = state::load(&run, &dev).ok_or_else(|| {
        CmdError::usage(format!(
            "{dev} is not attached by sanroot (see `sanroot status`)"
        ))
    })?;
    if serve::in_use(&dev) {
        return Err(CmdError::new(
            exit::FAILURE,
            format!("{dev} is in use (a mounted filesystem or another holder): unmount it first"),
        ));
    }
    // Only the daemon itself is signalled: a PID the kernel gave to
    // another process since is not it (see DeviceRecord::daemon_alive).
    if rec.daemon_alive() {
        kill(Pid::from_raw(rec.pid as i32), Signal::SIGTERM).map_err(|e| {
            CmdError::new(
                exit::FAILURE,
                format!("signalling the daemon (pid {}): {e}", rec.pid),
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while rec.daemon_alive() {
            if Instant::now() > deadline {
                return Err(CmdError::new(
                    exit::FAILURE,
                    format!("the daemon (pid {}) did not stop within 60 s", rec.pid),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else if rec.bridge == "nbd" {
        // The daemon is gone: disconnect the device ourselves.
        nbd::disconnect_index(rec.index)
            .map_err(|e| CmdError::new(exit::FAILURE, e.to_string()))?;
    } else if rec.bridge == "ublk" {
        // The daemon is gone and the device waits, quiesced, for a new one
        // (`attach --recover`), holding its I/O: stop it (the held I/O
        // fails) and delete it.
        ublk::detach(rec.index).map_err(|e| {
            CmdError::new(
                exit::FAILURE,
                format!("{dev}: the daemon is gone, and removing the device failed: {e}"),
            )
        })?;
    }
    state::remove(&run, &dev);
    eprintln!("sanroot: detached {dev}");
    Ok(())
}
