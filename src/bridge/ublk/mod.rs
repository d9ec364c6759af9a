//! The ublk bridge: a LUN as `/dev/ublkbN`, served through the kernel's
//! userspace block driver (drivers/block/ublk_drv.c) over io_uring.
//!
//! # Design
//!
//! **Control path.** `/dev/ublk-control` takes commands as
//! `IORING_OP_URING_CMD` on a ring set up with 128-byte SQEs (the driver
//! refuses control commands on 64-byte SQEs); the 32-byte
//! [`uapi::CtrlCmd`] sits in the SQE's 80-byte command area and `cmd_op` is
//! the ioctl-encoded `UBLK_U_CMD_*` number. The driver runs control commands
//! in io_uring's worker threads, so a command that blocks in the kernel
//! (START_DEV waiting for the queues, DEL_DEV waiting for the daemon to let
//! go of `/dev/ublkcN`) does not stop the caller from serving I/O on the
//! queue threads. One command is in flight at a time; the caller waits for
//! its completion, so a buffer the kernel fills (ADD_DEV's device info,
//! GET_PARAMS) is a borrow that outlives the command.
//!
//! [`UblkDevice::create`]: GET_FEATURES (Linux 6.5+; on older kernels the
//! wanted flags are sent anyway and the kernel's answer to ADD_DEV says what
//! it took), ADD_DEV, SET_PARAMS, then the queue threads, then START_DEV with
//! our pid once every queue has queued a FETCH_REQ for every tag (the
//! kernel's START_DEV waits for exactly that; we wait for the threads' own
//! reports first, so a queue that fails to start makes `create` fail instead
//! of hanging START_DEV). START_DEV scans the partition table, i.e. does I/O
//! through the queues, before it completes. Any failure after ADD_DEV ends
//! with DEL_DEV, which also aborts the queues' pending fetches.
//!
//! Flags: `UBLK_F_USER_RECOVERY | UBLK_F_CMD_IOCTL_ENCODE`. With
//! USER_RECOVERY, a daemon that dies leaves the device quiesced, holding new
//! I/O, until a new daemon runs [`UblkDevice::recover`] (the alternative is
//! the kernel deleting the root disk under the filesystem). Requests the dead
//! daemon had already taken fail with EIO. `UBLK_F_USER_RECOVERY_REISSUE`
//! would instead hand them to the new daemon; that is what a root
//! filesystem would prefer (an EIO on a journal write aborts the journal),
//! but it means a write the old daemon may already have sent is sent again.
//! For a block device that is a rewrite of the same data at the same LBA of a
//! request nobody was told had completed, safe as long as the new session
//! reinstates the old one (same ISID) so the target has dropped the old
//! session's tasks. It is opt-in ([`UblkOptions::reissue`]) until the
//! recovery tests exercise it. (On 6.12, a write in flight when the daemon
//! is killed fails with EIO, "lost async page write"; with REISSUE it lands
//! once the next daemon has recovered the device.) On 6.12 the driver sees
//! its daemon die through the cancellation of the daemon's queued FETCH
//! commands; a queue whose every tag the dead daemon held has none, and then
//! only the block layer's timer of a held request tells it (30 s by
//! default): the device's `io_timeout` is set to [`super::QUEUE_TIMEOUT`],
//! and [`UblkDevice::recover`] waits that long for a daemon known dead
//! (newer kernels notice when `/dev/ublkcN` closes). No zero copy, no user
//! copy, no NEED_GET_DATA:
//! each tag owns one buffer whose address goes with every FETCH/COMMIT and
//! the kernel copies request data in and out of it.
//!
//! Parameters come from the LU: logical block size (a power of two from 512
//! to the page size, or we refuse), physical block size, capacity in
//! 512-byte sectors, `max_sectors` from the per-request buffer size (512 KiB
//! by default, capped by the LU's MAXIMUM TRANSFER LENGTH), READ_ONLY when
//! the LU is write protected, VOLATILE_CACHE unless the LU says its write
//! cache is off (an unknown cache is treated as volatile: a needless flush
//! costs little, a missing one loses data), FUA with it when the LU honours
//! DPOFUA, and discard / write-zeroes limits only when the LU can UNMAP /
//! WRITE SAME.
//!
//! **Queues.** One thread per hardware queue, each with its own ring (SQEs
//! of 128 bytes, depth + 2 entries: one command per tag plus the wake-up
//! read). `/dev/ublkcN` is opened once (the driver allows a single opener)
//! and shared by the threads; each maps its queue's descriptor array
//! read-only at `q_id * round_up(4096 * 24, PAGE_SIZE)` (the stride is the
//! maximum queue depth, not ours; the length is `round_up(depth * 24,
//! PAGE_SIZE)`). Every thread sets PR_SET_IO_FLUSHER, allocates and touches
//! its buffers, queues FETCH_REQ for every tag, then reports ready.
//!
//! A completion with result 0 means a request for that tag: its descriptor
//! says what. Sectors are 512 bytes; the request becomes a [`BlockOp`] in LU
//! blocks (a request not aligned to the LU block size completes with
//! -EINVAL). The tag's buffer, cut to the request's length, moves into
//! [`Backend::submit`]; the requests of one wake-up are submitted under a
//! session plug ([`session::plug`]), so an iSCSI backend sends their
//! commands in one write. The backend's `done` names the queue's mailbox
//! and the tag (no allocation per request: [`crate::completion`]); it
//! posts (tag, result, buffer) there and wakes the thread through a pipe that always
//! has a read queued in the ring; from a session's reader thread the
//! wake-up waits for the reader's idle point ([`session::at_reader_idle`]),
//! so one batch of answers from the target wakes the queue once. Queue 0
//! does better for the sessions it can: it takes their receive side over
//! (`receive.rs`, [`session::Rx`]), polls their sockets in its own ring
//! and handles the answers itself, so a completion it posts needs no
//! wake-up at all (one sleep per request instead of two). Each
//! wake-up reaps every completion and queues every commit, and one
//! io_uring_enter submits them all and waits. The thread answers with
//! COMMIT_AND_FETCH_REQ: bytes transferred for reads and writes, 0 for
//! flush / discard / write zeroes, or a negative errno
//! ([`BlockError::errno`]). A write is acknowledged to the kernel only after
//! the backend's `done(Ok)`. A flush the LU refuses with ILLEGAL REQUEST
//! completes with 0, any other refusal with an error: the shared backend
//! decides that for both bridges, as the kernel's sd does
//! ([`crate::scsi::sense::flush_not_needed`]).
//!
//! Buffer ownership, per tag: while a FETCH/COMMIT is queued the kernel may
//! copy into the buffer at any time (in our thread's task work) and we do not
//! touch it; after its completion the thread owns it and moves it to the
//! backend; when it comes back it goes out again with the next COMMIT. The
//! kernel copies request data only within `max_io_buf_bytes`, all of which
//! was initialised at allocation, so growing the `Vec`'s length over data the
//! kernel wrote is sound. The buffers are plain `Vec<u8>`s, so not page
//! aligned (a `Vec` cannot be, soundly); the kernel's copy does not need it.
//! If a queue must give up with commands still queued (a broken ring), their
//! buffers are leaked rather than freed under the kernel.
//!
//! A completion with UBLK_IO_RES_ABORT (-ENODEV) retires its tag: the device
//! is stopping (STOP_DEV here or in another process, DEL_DEV) or the queue is
//! being torn down. A thread exits when no tag is with the kernel or with the
//! backend, and the device's [`UblkDevice::wait`] returns when every thread
//! has.
//!
//! **Lifecycle.** [`UblkDevice::stop`]: STOP_DEV (the kernel first waits
//! for in-flight requests, which the queues still serve, then aborts the
//! fetches), join the threads (which unmaps and closes `/dev/ublkcN`), then
//! DEL_DEV, which waits for exactly that close. [`detach`] does STOP_DEV +
//! DEL_DEV from another process. Dropping a `UblkDevice` does nothing: the
//! threads keep serving the device.
//!
//! [`UblkDevice::recover`] takes a device back after its daemon died:
//! GET_DEV_INFO (the queue count, depth and buffer size are the device's, not
//! the options'), a check that the LU has the same block size, then
//! START_USER_RECOVERY (retried while the old daemon's `/dev/ublkcN` is still
//! being released), the queues, and END_USER_RECOVERY with our pid.
//!
//! **UAPI.** Declared by hand in [`uapi`] from include/uapi/linux/ublk_cmd.h;
//! the unit tests check every struct size and field offset and every opcode
//! against independently derived values.
//!
//! **Files.** This file: the options, the device's life (create, stop,
//! detach) and [`availability`]; `recover.rs`: [`UblkDevice::recover`];
//! `ctrl.rs`: the control ring and its commands; `params.rs`: SET_PARAMS
//! from the LU; `queue.rs`: the queue threads and their tags' buffers;
//! `request.rs`: the descriptor array and a descriptor as a block request;
//! `mailbox.rs`: completions back to a queue thread, and its wake-up;
//! `receive.rs`: queue 0 receiving its sessions' answers itself;
//! `ring.rs`: the 128-byte-SQE io_uring both paths use; `node.rs`:
//! `/dev/ublkcN` and `/dev/ublkbN`; `error.rs`: [`UblkError`]; [`uapi`].
//!
//! [`BlockOp`]: super::BlockOp
//! [`BlockError::errno`]: super::BlockError::errno
//! [`session::plug`]: crate::iscsi::session::plug
//! [`session::at_reader_idle`]: crate::iscsi::session::at_reader_idle
//! [`session::Rx`]: crate::iscsi::session::Rx

mod ctrl;
mod direct;
mod error;
mod mailbox;
mod node;
mod params;
mod queue;
mod receive;
mod recover;
mod request;
mod ring;
pub mod uapi;

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use std::{fmt, thread};

use zerocopy::IntoBytes;

use super::Backend;
use ctrl::{CONTROL, Cmd, Control};
use node::{disk_name, ensure_block_node};
use params::Geometry;
use queue::Queues;
use ring::Ring;
use uapi::DevInfo;

pub use error::UblkError;

/// How a device is set up. Memory: `queues * depth * max_io_bytes` of
/// buffers, allocated and touched up front (128 MiB with the defaults on four
/// CPUs).
#[derive(Debug, Clone)]
pub struct UblkOptions {
    /// Hardware queues, one thread each (default min(CPUs, 4); the kernel
    /// caps it at the number of CPUs).
    pub queues: u16,
    /// Tags per queue (default 64, at most 4096).
    pub depth: u16,
    /// Largest request in bytes, and the size of each tag's buffer (default
    /// 512 KiB; capped by the LU's maximum transfer length, rounded down to
    /// the page size).
    pub max_io_bytes: u32,
    /// Ask for UBLK_F_USER_RECOVERY_REISSUE: requests a dead daemon had taken
    /// are sent again by the next one instead of failing with EIO (see the
    /// module documentation).
    pub reissue: bool,
    /// A specific device number, or any.
    pub dev_id: Option<u32>,
    /// How long [`UblkDevice::recover`] waits for the old daemon's hold on
    /// the device to go away.
    pub recover_wait: Duration,
    /// Zero copy when the kernel offers it (UBLK_F_AUTO_BUF_REG with
    /// UBLK_F_USER_COPY, Linux 6.16): reads the queue thread receives go
    /// from the socket into the request (see `direct`). Default false:
    /// the daemon then copies every other request's data itself, and under
    /// TCG that outweighed the copy saved (see the README's measurements).
    pub zero_copy: bool,
}

impl Default for UblkOptions {
    fn default() -> Self {
        let cpus = thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        UblkOptions {
            queues: cpus.min(4) as u16,
            depth: 64,
            max_io_bytes: 512 << 10,
            reissue: false,
            dev_id: None,
            recover_wait: Duration::from_secs(10),
            zero_copy: false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    }
}

/// Whether ublk can be used here: see [`availability`].
pub fn available() -> bool {
    availability().is_ok()
}

/// Whether ublk can be used here, or why not: /dev/ublk-control exists and
/// opens, io_uring is not disabled (kernel.io_uring_disabled = 2 blocks it
/// for everyone; 1 only for the unprivileged, which the setup probe
/// answers), and an io_uring with 128-byte SQEs can be set up.
pub fn availability() -> Result<(), String> {
    if !Path::new(CONTROL).exists() {
        return Err(format!("{CONTROL} does not exist (ublk_drv not loaded?)"));
    }
    if let Ok(s) = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        && s.trim() == "2"
    {
        return Err("io_uring is disabled (kernel.io_uring_disabled = 2)".into());
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(|e| UblkError::os(format!("open {CONTROL}"), &e).to_string())?;
    Ring::builder()
        .build(2)
        .map_err(|e| UblkError::os("io_uring setup", &e).to_string())?;
    Ok(())
}

/// A LUN served as /dev/ublkbN.
pub struct UblkDevice {
    dev_id: u32,
    flags: u64,
    ctrl: Mutex<Control>,
    queues: Queues,
}

impl fmt::Debug for UblkDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UblkDevice")
            .field("dev_id", &self.dev_id)
            .field("flags", &format_args!("{:#x}", self.flags))
            .field("queues", &self.queues.mailboxes.len())
            .finish()
    }
}

impl UblkDevice {
    /// Create /dev/ublkbN for the LU behind `backend` and serve it.
    pub fn create(backend: Arc<dyn Backend>, opts: UblkOptions) -> Result<UblkDevice, UblkError> {
        let geo = Geometry::from_lun(backend.info());
        let page = page_size();
        let shift = geo.block_shift(page)?;
        let max_io = geo.max_io_bytes(opts.max_io_bytes, page)?;
        let mut ctrl = Control::open()?;

        let mut flags = uapi::UBLK_F_USER_RECOVERY | uapi::UBLK_F_CMD_IOCTL_ENCODE;
        if opts.reissue {
            flags |= uapi::UBLK_F_USER_RECOVERY_REISSUE;
        }
        // Live resize when the kernel has it (6.16+); masked off below
        // when GET_FEATURES does not list it.
        flags |= uapi::UBLK_F_UPDATE_SIZE;
        let zero_copy = uapi::UBLK_F_AUTO_BUF_REG | uapi::UBLK_F_USER_COPY;
        if opts.zero_copy {
            flags |= zero_copy;
        }
        match ctrl.features() {
            Ok(f) => {
                log::debug!("ublk features: {f:#x}");
                if f & uapi::UBLK_F_USER_RECOVERY == 0 {
                    log::warn!(
                        "ublk: the kernel cannot recover devices: a daemon restart will lose the device"
                    );
                }
                flags &= f | uapi::UBLK_F_CMD_IOCTL_ENCODE;
            }
            Err(e) => {
                log::info!("{e}; assuming a kernel before 6.5");
                flags &= !(uapi::UBLK_F_UPDATE_SIZE | zero_copy);
            }
        }
        // Both or neither: USER_COPY alone would only move the driver's
        // copy into the daemon (6.5 to 6.15 have it without AUTO_BUF_REG).
        if flags & zero_copy != zero_copy {
            flags &= !zero_copy;
        }

        let want_id = opts.dev_id.unwrap_or(u32::MAX);
        let default = UblkOptions::default();
        let mut info = DevInfo {
            nr_hw_queues: if opts.queues == 0 {
                default.queues
            } else {
                opts.queues
            },
            queue_depth: opts.depth.clamp(1, uapi::UBLK_MAX_QUEUE_DEPTH),
            max_io_buf_bytes: max_io,
            dev_id: want_id,
            flags,
            ..DevInfo::default()
        };
        ctrl.run(Cmd::AddDev, want_id, 0, Some(info.as_mut_bytes()))?;
        let dev_id = info.dev_id;
        log::info!(
            "ublk device {dev_id}: {} queues of {} tags, {} KiB requests, flags {:#x}",
            info.nr_hw_queues,
            info.queue_depth,
            info.max_io_buf_bytes >> 10,
            info.flags
        );
        if info.flags & uapi::UBLK_F_USER_RECOVERY == 0 {
            log::warn!(
                "ublk device {dev_id}: no USER_RECOVERY: a daemon restart will lose the device"
            );
        }
        if info.flags & zero_copy == zero_copy {
            log::info!(
                "ublk device {dev_id}: zero copy: read data goes from the socket into the request"
            );
        }

        // From here on a failure deletes the device.
        let mut params = match geo.params(info.max_io_buf_bytes, page) {
            Ok(p) => p,
            Err(e) => {
                abandon(&mut ctrl, dev_id, None);
                return Err(e);
            }
        };
        if let Err(e) = ctrl.run(Cmd::SetParams, dev_id, 0, Some(params.as_mut_bytes())) {
            abandon(&mut ctrl, dev_id, None);
            return Err(e);
        }
        let queues = match Queues::spawn(dev_id, &info, shift, &backend) {
            Ok(q) => q,
            Err(e) => {
                abandon(&mut ctrl, dev_id, None);
                return Err(e);
            }
        };
        if let Err(e) = queues.await_ready() {
            abandon(&mut ctrl, dev_id, Some(&queues));
            return Err(e);
        }
        if let Err(e) = ctrl.run(Cmd::StartDev, dev_id, u64::from(std::process::id()), None) {
            abandon(&mut ctrl, dev_id, Some(&queues));
            return Err(e);
        }
        Ok(UblkDevice::serving(
            dev_id, info.flags, ctrl, queues, "is up",
        ))
    }

    /// The device once its queues serve (after START_DEV or
    /// END_USER_RECOVERY): its node, the block layer's request timer (only
    /// now that requests flow: a sysfs write may freeze the queue on newer
    /// kernels, which waits for held requests; a device made by an older
    /// sanroot still has the 30 s default), and the log line.
    fn serving(dev_id: u32, flags: u64, ctrl: Control, queues: Queues, what: &str) -> UblkDevice {
        ensure_block_node(dev_id);
        super::set_queue_timeout(&disk_name(dev_id));
        log::info!("/dev/{} {what}", disk_name(dev_id));
        UblkDevice {
            dev_id,
            flags,
            ctrl: Mutex::new(ctrl),
            queues,
        }
    }

    /// The block device: "/dev/ublkbN".
    pub fn path(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    /// The UBLK_F_* flags the kernel granted.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// Give the live device a new size (UPDATE_SIZE, Linux 6.16+). Ok(false)
    /// when this kernel cannot: the device keeps its size until it is made
    /// again.
    pub fn update_size(&self, bytes: u64) -> Result<bool, UblkError> {
        if self.flags & uapi::UBLK_F_UPDATE_SIZE == 0 {
            return Ok(false);
        }
        lock(&self.ctrl).run(Cmd::UpdateSize, self.dev_id, bytes / 512, None)?;
        Ok(true)
    }

    /// STOP_DEV without waiting: the block device goes away, the queues
    /// finish what is in flight and exit, and [`UblkDevice::wait`] returns.
    pub fn shutdown(&self) -> Result<(), UblkError> {
        lock(&self.ctrl).run_gone_ok(Cmd::StopDev, self.dev_id)
    }

    /// Block until every queue thread has exited (after [`UblkDevice::shutdown`],
    /// [`UblkDevice::stop`], or a STOP_DEV / DEL_DEV from another process).
    pub fn wait(&self) {
        self.queues.wait();
    }

    /// STOP_DEV, wait for the queues, then DEL_DEV.
    pub fn stop(self) -> Result<(), UblkError> {
        self.shutdown()?;
        self.queues.join();
        lock(&self.ctrl).run_gone_ok(Cmd::DelDev, self.dev_id)?;
        log::info!("/dev/ublkb{} removed", self.dev_id);
        Ok(())
    }
}

/// Delete device `dev_id` after a failed setup: DEL_DEV aborts the queues'
/// fetches, the threads exit and close /dev/ublkcN, which DEL_DEV waits for.
/// If DEL_DEV itself fails, the threads are told to give up.
fn abandon(ctrl: &mut Control, dev_id: u32, queues: Option<&Queues>) {
    if let Err(e) = ctrl.run_gone_ok(Cmd::DelDev, dev_id) {
        log::error!("{e}: ublk device {dev_id} is left behind");
        if let Some(q) = queues {
            q.quit();
        }
    }
    if let Some(q) = queues {
        q.join();
    }
}

/// Stop and delete device `dev_id` from outside the daemon serving it
/// (`sanroot detach`): STOP_DEV, then DEL_DEV, which returns once the daemon's
/// queues have exited.
pub fn detach(dev_id: u32) -> Result<(), UblkError> {
    let mut ctrl = Control::open()?;
    ctrl.run(Cmd::StopDev, dev_id, 0, None)?;
    ctrl.run_gone_ok(Cmd::DelDev, dev_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_handle_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<UblkDevice>();
        send_sync::<UblkError>();
    }

    #[test]
    fn availability_explains_itself() {
        // Without ublk the answer must say so, not panic; with it (a
        // Debian kernel with ublk_drv loaded) it must be usable.
        if Path::new(CONTROL).exists() {
            assert_eq!(availability(), Ok(()));
            assert!(available());
        } else {
            let why = availability().unwrap_err();
            assert!(why.contains("ublk_drv"), "{why}");
            assert!(!available());
        }
    }
}
