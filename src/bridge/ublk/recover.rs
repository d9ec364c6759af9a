//! Taking a device back after the daemon that served it died: see
//! [`UblkDevice::recover`].

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::ctrl::{Cmd, Control};
use super::node::disk_name;
use super::params::Geometry;
use super::queue::Queues;
use super::{UblkDevice, UblkError, UblkOptions, page_size, uapi};
use crate::bridge::Backend;

impl UblkDevice {
    /// Take back device `dev_id` after the daemon that served it died (it
    /// must have been created with USER_RECOVERY). The device's own queue
    /// count, depth and buffer size are used; `opts` only says how long to
    /// wait for the old daemon to let go.
    pub fn recover(
        dev_id: u32,
        backend: Arc<dyn Backend>,
        opts: UblkOptions,
    ) -> Result<UblkDevice, UblkError> {
        let geo = Geometry::from_lun(backend.info());
        let page = page_size();
        let shift = geo.block_shift(page)?;
        let mut ctrl = Control::open()?;
        let mut deadline = Instant::now() + opts.recover_wait;
        let mut dead_seen = false;
        let info = loop {
            let info = ctrl.dev_info(dev_id)?;
            if info.flags & uapi::UBLK_F_USER_RECOVERY == 0 {
                return Err(UblkError::Unsupported(format!(
                    "ublk device {dev_id} was created without USER_RECOVERY: it cannot be taken over"
                )));
            }
            // How its requests' data moves was fixed at ADD_DEV: a mode
            // we do not serve would hand the kernel unread buffers.
            let moves = info.flags
                & (uapi::UBLK_F_SUPPORT_ZERO_COPY
                    | uapi::UBLK_F_NEED_GET_DATA
                    | uapi::UBLK_F_USER_COPY
                    | uapi::UBLK_F_AUTO_BUF_REG);
            if moves != 0 && moves != uapi::UBLK_F_USER_COPY | uapi::UBLK_F_AUTO_BUF_REG {
                return Err(UblkError::Unsupported(format!(
                    "ublk device {dev_id} moves data in a way this daemon does not serve (flags {:#x})",
                    info.flags
                )));
            }
            match info.state {
                uapi::UBLK_S_DEV_QUIESCED => break info,
                uapi::UBLK_S_DEV_LIVE if !dead_seen && !pid_alive(info.ublksrv_pid) => {
                    // Gone, but the kernel has not noticed yet: 6.12 does
                    // only when a held request's timer fires if the dead
                    // daemon held every tag of a queue.
                    dead_seen = true;
                    let timer = crate::bridge::queue_timeout(&disk_name(dev_id))
                        .unwrap_or(Duration::from_secs(30));
                    deadline = deadline.max(Instant::now() + timer + Duration::from_secs(5));
                }
                uapi::UBLK_S_DEV_LIVE if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100))
                }
                uapi::UBLK_S_DEV_LIVE if dead_seen => {
                    return Err(UblkError::Unsupported(format!(
                        "ublk device {dev_id}: its daemon (pid {}) is gone but the kernel still counts the device as served; \
                         it lets go when a held request's timer fires (/sys/block/ublkb{dev_id}/queue/io_timeout): try again",
                        info.ublksrv_pid
                    )));
                }
                uapi::UBLK_S_DEV_LIVE => {
                    return Err(UblkError::Unsupported(format!(
                        "ublk device {dev_id} is still served by pid {}",
                        info.ublksrv_pid
                    )));
                }
                uapi::UBLK_S_DEV_DEAD => {
                    return Err(UblkError::Unsupported(format!(
                        "ublk device {dev_id} is stopped: nothing to recover"
                    )));
                }
                s => {
                    return Err(UblkError::Unsupported(format!(
                        "ublk device {dev_id} is in state {s}, which we cannot recover"
                    )));
                }
            }
        };
        if info.nr_hw_queues != opts.queues || info.queue_depth != opts.depth {
            log::debug!(
                "ublk device {dev_id}: keeping its {} queues of {} tags",
                info.nr_hw_queues,
                info.queue_depth
            );
        }
        let params = ctrl.params(dev_id)?;
        if params.basic.logical_bs_shift != shift {
            return Err(UblkError::Unsupported(format!(
                "ublk device {dev_id} has {}-byte blocks but the LU has {}-byte blocks",
                1u64 << params.basic.logical_bs_shift.min(63),
                geo.block_size
            )));
        }
        let sectors = geo.sectors()?;
        if params.basic.dev_sectors != sectors {
            log::warn!(
                "ublk device {dev_id} has {} sectors but the LU now has {sectors}: the device keeps its size",
                params.basic.dev_sectors
            );
        }
        loop {
            match ctrl.run(Cmd::StartUserRecovery, dev_id, 0, None) {
                Ok(_) => break,
                Err(e) if e.errno() == Some(Errno::EBUSY) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100))
                }
                // 6.12 refuses a second START after a failed attempt left
                // no queue ready; the device is then already waiting for
                // fetches.
                Err(e) if e.errno() == Some(Errno::EINVAL) => {
                    log::info!("{e}; assuming an earlier attempt already started recovery");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let queues = Queues::spawn(dev_id, &info, shift, &backend)?;
        let ended = queues.await_ready().and_then(|()| {
            ctrl.run(
                Cmd::EndUserRecovery,
                dev_id,
                u64::from(std::process::id()),
                None,
            )
        });
        if let Err(e) = ended {
            // Not DEL_DEV: the device (maybe the root disk) stays, quiesced,
            // for another attempt.
            queues.quit();
            queues.join();
            return Err(e);
        }
        Ok(UblkDevice::serving(
            dev_id,
            info.flags,
            ctrl,
            queues,
            "recovered",
        ))
    }
}

/// Whether process `pid` (as the kernel recorded the daemon) still exists
/// and is not this one (a recorded pid the kernel has given us since).
fn pid_alive(pid: i32) -> bool {
    if pid <= 0 || u32::try_from(pid).is_ok_and(|p| p == std::process::id()) {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e != Errno::ESRCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_pid_counts_as_alive_only_for_another_live_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(!pid_alive(me), "our own pid is never the old daemon");
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
        assert!(pid_alive(1), "init is alive (EPERM counts as alive too)");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        assert!(!pid_alive(pid), "a reaped child is gone");
    }
}
