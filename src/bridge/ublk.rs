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
//! commands in one write. The backend's `done` posts (tag, result, buffer)
//! to the queue's mailbox and wakes the thread through a pipe that always
//! has a read queued in the ring; from a session's reader thread the
//! wake-up waits for the reader's idle point ([`session::at_reader_idle`]),
//! so one batch of answers from the target wakes the queue once. Each
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, PipeReader, PipeWriter, Write};
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{fmt, thread};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use nix::errno::Errno;
use zerocopy::{FromZeros, IntoBytes};

use super::{Backend, BlockDone, BlockError, BlockOp};
use crate::completion::Sink;
use crate::iscsi::session;
use crate::lun::LunInfo;

use uapi::{CtrlCmd, DevInfo, IoCmd, IoDesc, Params};

/// The ublk UAPI (include/uapi/linux/ublk_cmd.h, Linux 6.12), declared by
/// hand.
pub mod uapi {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    const IOC_WRITE: u32 = 1;
    const IOC_READ: u32 = 2;

    /// `_IOC(dir, 'u', nr, size)` (asm-generic/ioctl.h: nr in bits 0-7,
    /// type 8-15, size 16-29, direction 30-31).
    const fn ioc(dir: u32, nr: u8, size: usize) -> u32 {
        (dir << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr as u32
    }
    const fn iowr(nr: u8, size: usize) -> u32 {
        ioc(IOC_READ | IOC_WRITE, nr, size)
    }
    const fn ior(nr: u8, size: usize) -> u32 {
        ioc(IOC_READ, nr, size)
    }

    const CTRL: usize = size_of::<CtrlCmd>();
    const IO: usize = size_of::<IoCmd>();

    // Control commands. The header encodes the getters with _IOR and the
    // rest with _IOWR; the driver dispatches on _IOC_NR except for
    // GET_FEATURES, which it compares whole.
    pub const UBLK_U_CMD_GET_QUEUE_AFFINITY: u32 = ior(0x01, CTRL);
    pub const UBLK_U_CMD_GET_DEV_INFO: u32 = ior(0x02, CTRL);
    pub const UBLK_U_CMD_ADD_DEV: u32 = iowr(0x04, CTRL);
    pub const UBLK_U_CMD_DEL_DEV: u32 = iowr(0x05, CTRL);
    pub const UBLK_U_CMD_START_DEV: u32 = iowr(0x06, CTRL);
    pub const UBLK_U_CMD_STOP_DEV: u32 = iowr(0x07, CTRL);
    pub const UBLK_U_CMD_SET_PARAMS: u32 = iowr(0x08, CTRL);
    pub const UBLK_U_CMD_GET_PARAMS: u32 = ior(0x09, CTRL);
    pub const UBLK_U_CMD_START_USER_RECOVERY: u32 = iowr(0x10, CTRL);
    pub const UBLK_U_CMD_END_USER_RECOVERY: u32 = iowr(0x11, CTRL);
    pub const UBLK_U_CMD_GET_DEV_INFO2: u32 = ior(0x12, CTRL);
    pub const UBLK_U_CMD_GET_FEATURES: u32 = ior(0x13, CTRL);
    pub const UBLK_U_CMD_DEL_DEV_ASYNC: u32 = ior(0x14, CTRL);
    /// Linux 6.16+ (with UBLK_F_UPDATE_SIZE): data[0] = new size in
    /// 512-byte sectors.
    pub const UBLK_U_CMD_UPDATE_SIZE: u32 = iowr(0x15, CTRL);

    // I/O commands on /dev/ublkcN.
    pub const UBLK_U_IO_FETCH_REQ: u32 = iowr(0x20, IO);
    pub const UBLK_U_IO_COMMIT_AND_FETCH_REQ: u32 = iowr(0x21, IO);
    pub const UBLK_U_IO_NEED_GET_DATA: u32 = iowr(0x22, IO);

    /// GET_FEATURES wants exactly this many bytes.
    pub const UBLK_FEATURES_LEN: u16 = 8;

    /// Results of FETCH / COMMIT_AND_FETCH completions.
    pub const UBLK_IO_RES_OK: i32 = 0;
    pub const UBLK_IO_RES_NEED_GET_DATA: i32 = 1;
    pub const UBLK_IO_RES_ABORT: i32 = -19; // -ENODEV

    pub const UBLKSRV_CMD_BUF_OFFSET: u64 = 0;
    pub const UBLK_MAX_QUEUE_DEPTH: u16 = 4096;

    // Device flags (ublksrv_ctrl_dev_info.flags).
    pub const UBLK_F_SUPPORT_ZERO_COPY: u64 = 1 << 0;
    pub const UBLK_F_URING_CMD_COMP_IN_TASK: u64 = 1 << 1;
    pub const UBLK_F_NEED_GET_DATA: u64 = 1 << 2;
    pub const UBLK_F_USER_RECOVERY: u64 = 1 << 3;
    pub const UBLK_F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
    pub const UBLK_F_UNPRIVILEGED_DEV: u64 = 1 << 5;
    pub const UBLK_F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
    pub const UBLK_F_USER_COPY: u64 = 1 << 7;
    pub const UBLK_F_ZONED: u64 = 1 << 8;
    /// Linux 6.16+: UBLK_U_CMD_UPDATE_SIZE resizes a live device.
    pub const UBLK_F_UPDATE_SIZE: u64 = 1 << 10;

    // Device states (ublksrv_ctrl_dev_info.state).
    pub const UBLK_S_DEV_DEAD: u16 = 0;
    pub const UBLK_S_DEV_LIVE: u16 = 1;
    pub const UBLK_S_DEV_QUIESCED: u16 = 2;
    pub const UBLK_S_DEV_FAIL_IO: u16 = 3;

    // Request ops (low 8 bits of ublksrv_io_desc.op_flags) and flags (the
    // rest; the constants are positions in op_flags itself).
    pub const UBLK_IO_OP_READ: u8 = 0;
    pub const UBLK_IO_OP_WRITE: u8 = 1;
    pub const UBLK_IO_OP_FLUSH: u8 = 2;
    pub const UBLK_IO_OP_DISCARD: u8 = 3;
    pub const UBLK_IO_OP_WRITE_SAME: u8 = 4;
    pub const UBLK_IO_OP_WRITE_ZEROES: u8 = 5;
    pub const UBLK_IO_F_FAILFAST_DEV: u32 = 1 << 8;
    pub const UBLK_IO_F_FAILFAST_TRANSPORT: u32 = 1 << 9;
    pub const UBLK_IO_F_FAILFAST_DRIVER: u32 = 1 << 10;
    pub const UBLK_IO_F_META: u32 = 1 << 11;
    pub const UBLK_IO_F_FUA: u32 = 1 << 13;
    pub const UBLK_IO_F_NOUNMAP: u32 = 1 << 15;
    pub const UBLK_IO_F_SWAP: u32 = 1 << 16;

    // ublk_param_basic.attrs
    pub const UBLK_ATTR_READ_ONLY: u32 = 1 << 0;
    pub const UBLK_ATTR_ROTATIONAL: u32 = 1 << 1;
    pub const UBLK_ATTR_VOLATILE_CACHE: u32 = 1 << 2;
    pub const UBLK_ATTR_FUA: u32 = 1 << 3;

    // ublk_params.types
    pub const UBLK_PARAM_TYPE_BASIC: u32 = 1 << 0;
    pub const UBLK_PARAM_TYPE_DISCARD: u32 = 1 << 1;
    pub const UBLK_PARAM_TYPE_DEVT: u32 = 1 << 2;
    pub const UBLK_PARAM_TYPE_ZONED: u32 = 1 << 3;

    /// struct ublksrv_ctrl_cmd: in the SQE's command area.
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct CtrlCmd {
        pub dev_id: u32,
        /// u16::MAX unless the command is for one queue.
        pub queue_id: u16,
        pub len: u16,
        pub addr: u64,
        pub data: [u64; 1],
        pub dev_path_len: u16,
        pub pad: u16,
        pub reserved: u32,
    }

    /// struct ublksrv_ctrl_dev_info
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct DevInfo {
        pub nr_hw_queues: u16,
        pub queue_depth: u16,
        pub state: u16,
        pub pad0: u16,
        pub max_io_buf_bytes: u32,
        pub dev_id: u32,
        pub ublksrv_pid: i32,
        pub pad1: u32,
        pub flags: u64,
        pub ublksrv_flags: u64,
        pub owner_uid: u32,
        pub owner_gid: u32,
        pub reserved1: u64,
        pub reserved2: u64,
    }

    /// struct ublksrv_io_cmd: in the SQE's command area (16 bytes).
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct IoCmd {
        pub q_id: u16,
        pub tag: u16,
        pub result: i32,
        pub addr: u64,
    }

    /// struct ublksrv_io_desc: one per tag in the mmapped array.
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct IoDesc {
        pub op_flags: u32,
        /// nr_sectors (nr_zones for REPORT_ZONES).
        pub nr_sectors: u32,
        pub start_sector: u64,
        pub addr: u64,
    }

    impl IoDesc {
        pub fn op(&self) -> u8 {
            (self.op_flags & 0xff) as u8
        }
    }

    /// struct ublk_param_basic
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct ParamBasic {
        pub attrs: u32,
        pub logical_bs_shift: u8,
        pub physical_bs_shift: u8,
        pub io_opt_shift: u8,
        pub io_min_shift: u8,
        pub max_sectors: u32,
        pub chunk_sectors: u32,
        pub dev_sectors: u64,
        pub virt_boundary_mask: u64,
    }

    /// struct ublk_param_discard
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct ParamDiscard {
        pub discard_alignment: u32,
        pub discard_granularity: u32,
        pub max_discard_sectors: u32,
        pub max_write_zeroes_sectors: u32,
        pub max_discard_segments: u16,
        pub reserved0: u16,
    }

    /// struct ublk_param_devt (read-only: filled by GET_PARAMS).
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct ParamDevt {
        pub char_major: u32,
        pub char_minor: u32,
        pub disk_major: u32,
        pub disk_minor: u32,
    }

    /// struct ublk_param_zoned
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct ParamZoned {
        pub max_open_zones: u32,
        pub max_active_zones: u32,
        pub max_zone_append_sectors: u32,
        pub reserved: [u8; 20],
    }

    /// struct ublk_params as of Linux 6.12 (112 bytes; the C struct's
    /// trailing padding is spelled out). `len` tells the kernel how much of
    /// it we pass: older kernels take a prefix, newer ones leave their later
    /// members zero.
    #[repr(C)]
    #[derive(
        Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
    )]
    pub struct Params {
        pub len: u32,
        pub types: u32,
        pub basic: ParamBasic,
        pub discard: ParamDiscard,
        pub devt: ParamDevt,
        pub zoned: ParamZoned,
        pub tail_pad: [u8; 4],
    }
}

const CONTROL: &str = "/dev/ublk-control";
/// PR_SET_IO_FLUSHER (include/uapi/linux/prctl.h, Linux 5.6).
const PR_SET_IO_FLUSHER: nix::libc::c_int = 57;
/// Largest per-request buffer we offer (the driver's UBLK_IO_BUF_BITS).
const MAX_IO_BYTES: u32 = 32 << 20;
/// Discard / write-zeroes cap when the LU reports no limit (Linux sd's
/// SD_MAX_WS16_BLOCKS).
const DEFAULT_MAX_UNMAP_BLOCKS: u32 = 0x7f_ffff;
/// user_data of the wake-up read (tags are below 4096).
const WAKE: u64 = u64::MAX;
/// user_data of the cancel of the wake-up read.
const CANCEL: u64 = u64::MAX - 1;

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
        }
    }
}

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
    fn os(what: impl Into<String>, e: &io::Error) -> UblkError {
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
fn describe(e: Errno) -> &'static str {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
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

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// Queue one SQE, submitting first when the queue is full.
fn push(ring: &mut Ring, e: &squeue::Entry128) -> io::Result<()> {
    for _ in 0..2 {
        // SAFETY: every SQE we build refers only to memory that stays valid
        // until its completion is reaped: a tag buffer (owned by the queue,
        // not touched while the command is queued, leaked if the queue gives
        // up), the queue's wake-up buffer (same rule), or a control command's
        // buffer (borrowed for the whole of `Control::run`, which waits for
        // the completion).
        if unsafe { ring.submission().push(e) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
    Err(io::Error::other("submission queue stays full"))
}

/// Submit and wait for at least one completion, riding out signals.
fn submit_and_wait(ring: &Ring) -> io::Result<()> {
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => return Ok(()),
            Err(e) => match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                Errno::EINTR => continue,
                // Completions must be reaped first: the caller does.
                Errno::EAGAIN | Errno::EBUSY => return Ok(()),
                _ => return Err(e),
            },
        }
    }
}

/// The control commands we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    GetFeatures,
    GetDevInfo,
    AddDev,
    DelDev,
    StartDev,
    StopDev,
    SetParams,
    GetParams,
    StartUserRecovery,
    EndUserRecovery,
    UpdateSize,
}

impl Cmd {
    fn op(self) -> u32 {
        match self {
            Cmd::GetFeatures => uapi::UBLK_U_CMD_GET_FEATURES,
            Cmd::GetDevInfo => uapi::UBLK_U_CMD_GET_DEV_INFO,
            Cmd::AddDev => uapi::UBLK_U_CMD_ADD_DEV,
            Cmd::DelDev => uapi::UBLK_U_CMD_DEL_DEV,
            Cmd::StartDev => uapi::UBLK_U_CMD_START_DEV,
            Cmd::StopDev => uapi::UBLK_U_CMD_STOP_DEV,
            Cmd::SetParams => uapi::UBLK_U_CMD_SET_PARAMS,
            Cmd::GetParams => uapi::UBLK_U_CMD_GET_PARAMS,
            Cmd::StartUserRecovery => uapi::UBLK_U_CMD_START_USER_RECOVERY,
            Cmd::EndUserRecovery => uapi::UBLK_U_CMD_END_USER_RECOVERY,
            Cmd::UpdateSize => uapi::UBLK_U_CMD_UPDATE_SIZE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cmd::GetFeatures => "GET_FEATURES",
            Cmd::GetDevInfo => "GET_DEV_INFO",
            Cmd::AddDev => "ADD_DEV",
            Cmd::DelDev => "DEL_DEV",
            Cmd::StartDev => "START_DEV",
            Cmd::StopDev => "STOP_DEV",
            Cmd::SetParams => "SET_PARAMS",
            Cmd::GetParams => "GET_PARAMS",
            Cmd::StartUserRecovery => "START_USER_RECOVERY",
            Cmd::EndUserRecovery => "END_USER_RECOVERY",
            Cmd::UpdateSize => "UPDATE_SIZE",
        }
    }
}

/// /dev/ublk-control and a ring to send it commands.
struct Control {
    ring: Ring,
    file: File,
}

impl Control {
    fn open() -> Result<Control, UblkError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(|e| UblkError::os(format!("open {CONTROL}"), &e))?;
        let ring = Ring::builder()
            .build(4)
            .map_err(|e| UblkError::os("io_uring setup for ublk control", &e))?;
        Ok(Control { ring, file })
    }

    /// Run one command and wait for its result. `buf` (the command's
    /// `addr`/`len`) is borrowed until the kernel is done with it.
    fn run(
        &mut self,
        cmd: Cmd,
        dev_id: u32,
        data0: u64,
        buf: Option<&mut [u8]>,
    ) -> Result<i32, UblkError> {
        let fail = |errno: Errno| UblkError::Command {
            cmd: cmd.name(),
            dev_id: (dev_id != u32::MAX).then_some(dev_id),
            errno,
        };
        let (addr, len) = match buf {
            Some(b) => (
                b.as_mut_ptr() as u64,
                u16::try_from(b.len()).map_err(|_| fail(Errno::EINVAL))?,
            ),
            None => (0, 0),
        };
        let hdr = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len,
            addr,
            data: [data0],
            ..CtrlCmd::default()
        };
        let mut area = [0u8; 80];
        area[..size_of::<CtrlCmd>()].copy_from_slice(hdr.as_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), cmd.op())
            .cmd(area)
            .build()
            .user_data(0);
        let os = |e: io::Error| UblkError::os(format!("{}: io_uring", cmd.name()), &e);
        push(&mut self.ring, &sqe).map_err(os)?;
        loop {
            submit_and_wait(&self.ring).map_err(os)?;
            if let Some(cqe) = self.ring.completion().next() {
                let res = cqe.result();
                return if res < 0 {
                    Err(fail(Errno::from_raw(-res)))
                } else {
                    Ok(res)
                };
            }
        }
    }

    fn features(&mut self) -> Result<u64, UblkError> {
        let mut f = 0u64;
        self.run(Cmd::GetFeatures, u32::MAX, 0, Some(f.as_mut_bytes()))?;
        Ok(f)
    }

    fn dev_info(&mut self, dev_id: u32) -> Result<DevInfo, UblkError> {
        let mut info = DevInfo::new_zeroed();
        self.run(Cmd::GetDevInfo, dev_id, 0, Some(info.as_mut_bytes()))?;
        Ok(info)
    }

    fn params(&mut self, dev_id: u32) -> Result<Params, UblkError> {
        let mut p = Params::new_zeroed();
        p.len = size_of::<Params>() as u32;
        self.run(Cmd::GetParams, dev_id, 0, Some(p.as_mut_bytes()))?;
        Ok(p)
    }

    /// A command whose "no such device" means the job is already done.
    fn run_gone_ok(&mut self, cmd: Cmd, dev_id: u32) -> Result<(), UblkError> {
        match self.run(cmd, dev_id, 0, None) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What the bridge needs to know about the LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    block_size: u32,
    blocks: u64,
    physical_exponent: u8,
    write_protected: bool,
    write_cache: Option<bool>,
    fua: bool,
    can_unmap: bool,
    can_write_same: bool,
    /// Blocks; 0 = no limit reported.
    max_transfer_blocks: u32,
    /// Blocks; 0 = not reported.
    optimal_transfer_blocks: u32,
    /// Blocks; 0 or 0xffffffff = no limit reported.
    max_unmap_blocks: u32,
    unmap_granularity_blocks: u32,
    unmap_alignment_blocks: Option<u32>,
    /// Blocks; 0 = no limit reported.
    max_write_same_blocks: u64,
}

impl Geometry {
    fn from_lun(info: &LunInfo) -> Geometry {
        let l = info.limits;
        Geometry {
            block_size: info.block_size(),
            blocks: info.blocks(),
            physical_exponent: info.capacity.physical_block_exponent,
            write_protected: info.write_protected,
            write_cache: info.write_cache,
            fua: info.fua,
            can_unmap: info.can_unmap(),
            can_write_same: info.can_write_same(),
            max_transfer_blocks: info.max_transfer_blocks(),
            optimal_transfer_blocks: l.map(|l| l.optimal_transfer_length).unwrap_or(0),
            max_unmap_blocks: l.map(|l| l.max_unmap_lba_count).unwrap_or(0),
            unmap_granularity_blocks: l.map(|l| l.optimal_unmap_granularity).unwrap_or(0),
            unmap_alignment_blocks: l.and_then(|l| l.unmap_granularity_alignment),
            max_write_same_blocks: l.map(|l| l.max_write_same_length).unwrap_or(0),
        }
    }

    /// log2 of the block size, which must be a power of two from 512 to the
    /// page size (the driver's limits for logical_bs_shift).
    fn block_shift(&self, page: usize) -> Result<u8, UblkError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || bs < 512 || bs as usize > page {
            return Err(UblkError::Unsupported(format!(
                "a {bs}-byte block size cannot be served over ublk (it needs a power of two from 512 to {page})"
            )));
        }
        Ok(bs.trailing_zeros() as u8)
    }

    /// The per-request buffer size: the wanted size within [page, 32 MiB],
    /// capped by the LU's maximum transfer, rounded down to the page size.
    fn max_io_bytes(&self, want: u32, page: usize) -> Result<u32, UblkError> {
        self.block_shift(page)?;
        let page32 = page as u32;
        let mut m = want.clamp(page32, MAX_IO_BYTES);
        if self.max_transfer_blocks > 0 {
            m = m.min(self.max_transfer_blocks.saturating_mul(self.block_size));
        }
        m -= m % page32;
        if m < page32 {
            return Err(UblkError::Unsupported(format!(
                "the LU's maximum transfer ({} blocks of {}) is below a page",
                self.max_transfer_blocks, self.block_size
            )));
        }
        Ok(m)
    }

    fn sectors(&self) -> Result<u64, UblkError> {
        self.blocks
            .checked_mul(u64::from(self.block_size / 512))
            .ok_or_else(|| {
                UblkError::Unsupported(format!(
                    "{} blocks do not fit in 64-bit sectors",
                    self.blocks
                ))
            })
    }

    /// SET_PARAMS for this LU with buffers of `max_io` bytes (what ADD_DEV
    /// answered).
    fn params(&self, max_io: u32, page: usize) -> Result<Params, UblkError> {
        let shift = self.block_shift(page)?;
        let bs = self.block_size;
        let physical = (shift + self.physical_exponent.min(15)).clamp(shift, 16.max(shift));
        let io_opt = match u64::from(self.optimal_transfer_blocks) * u64::from(bs) {
            n if n.is_power_of_two() && n >= u64::from(bs) && n <= u64::from(max_io) => {
                n.trailing_zeros() as u8
            }
            _ => physical,
        };
        let mut attrs = 0;
        if self.write_protected {
            attrs |= uapi::UBLK_ATTR_READ_ONLY;
        }
        if self.write_cache != Some(false) {
            attrs |= uapi::UBLK_ATTR_VOLATILE_CACHE;
            if self.fua {
                attrs |= uapi::UBLK_ATTR_FUA;
            }
        }
        let mut p = Params {
            len: size_of::<Params>() as u32,
            types: uapi::UBLK_PARAM_TYPE_BASIC,
            basic: uapi::ParamBasic {
                attrs,
                logical_bs_shift: shift,
                physical_bs_shift: physical,
                io_opt_shift: io_opt,
                io_min_shift: physical,
                max_sectors: max_io >> 9,
                chunk_sectors: 0,
                dev_sectors: self.sectors()?,
                virt_boundary_mask: 0,
            },
            ..Params::default()
        };
        let sectors_per_block = bs / 512;
        let to_sectors = |blocks: u64| {
            u32::try_from(blocks.saturating_mul(u64::from(sectors_per_block))).unwrap_or(u32::MAX)
        };
        if self.can_unmap || self.can_write_same {
            let gran = u64::from(self.unmap_granularity_blocks.max(1)) * u64::from(bs);
            let gran = u32::try_from(gran).unwrap_or(bs);
            let align = self
                .unmap_alignment_blocks
                .map(|a| (u64::from(a) * u64::from(bs) % u64::from(gran)) as u32)
                .unwrap_or(0);
            p.types |= uapi::UBLK_PARAM_TYPE_DISCARD;
            p.discard = uapi::ParamDiscard {
                discard_alignment: align,
                discard_granularity: gran,
                max_discard_sectors: if self.can_unmap {
                    to_sectors(u64::from(match self.max_unmap_blocks {
                        0 | u32::MAX => DEFAULT_MAX_UNMAP_BLOCKS,
                        n => n,
                    }))
                } else {
                    0
                },
                max_write_zeroes_sectors: if self.can_write_same {
                    to_sectors(match self.max_write_same_blocks {
                        0 => u64::from(DEFAULT_MAX_UNMAP_BLOCKS),
                        n => n.min(u64::from(u32::MAX)),
                    })
                } else {
                    0
                },
                // The driver takes single-range discards only.
                max_discard_segments: 1,
                reserved0: 0,
            };
        }
        Ok(p)
    }
}

/// A request as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    op: BlockOp,
    /// Bytes of the tag's buffer the backend gets (the data length for reads
    /// and writes, 0 otherwise).
    len: usize,
    /// The result to commit when the backend succeeds.
    ok: i32,
}

/// Turn a descriptor into a request on an LU with 2^`shift`-byte blocks, or
/// the negative errno to complete it with.
fn decode(d: &IoDesc, shift: u8, max_io: usize) -> Result<Request, i32> {
    let einval = -(Errno::EINVAL as i32);
    // Sectors per block, as a shift and a mask.
    let s = u32::from(shift.saturating_sub(9));
    let mask = (1u64 << s) - 1;
    let aligned = d.start_sector & mask == 0 && u64::from(d.nr_sectors) & mask == 0;
    let lba = d.start_sector >> s;
    let blocks = d.nr_sectors >> s;
    let bytes = d.nr_sectors as usize * 512;
    let rw = |op: BlockOp| {
        if !aligned || blocks == 0 || bytes > max_io {
            return Err(einval);
        }
        Ok(Request {
            op,
            len: bytes,
            ok: i32::try_from(bytes).map_err(|_| einval)?,
        })
    };
    let range = |op: BlockOp| {
        if !aligned || blocks == 0 {
            return Err(einval);
        }
        Ok(Request { op, len: 0, ok: 0 })
    };
    match d.op() {
        uapi::UBLK_IO_OP_READ => rw(BlockOp::Read { lba, blocks }),
        uapi::UBLK_IO_OP_WRITE => rw(BlockOp::Write {
            lba,
            blocks,
            fua: d.op_flags & uapi::UBLK_IO_F_FUA != 0,
        }),
        uapi::UBLK_IO_OP_FLUSH => Ok(Request {
            op: BlockOp::Flush,
            len: 0,
            ok: 0,
        }),
        uapi::UBLK_IO_OP_DISCARD => range(BlockOp::Discard { lba, blocks }),
        uapi::UBLK_IO_OP_WRITE_ZEROES => range(BlockOp::WriteZeroes { lba, blocks }),
        // WRITE_SAME (gone from the block layer since 5.18), zoned ops, and
        // whatever comes next.
        _ => Err(-(Errno::EOPNOTSUPP as i32)),
    }
}

/// A finished backend request on its way back to its queue.
struct Done {
    tag: u16,
    res: Result<(), BlockError>,
    buf: Vec<u8>,
}

/// Where the backend's completions for one queue go, and how the queue's
/// thread is woken: a pipe whose read end always has a read queued in the
/// ring. `armed` is true while a wake-up byte is in the pipe or about to be;
/// only the thread clears it (when that byte's read completes), so at most
/// one byte is ever in the pipe and a write never blocks.
struct Mailbox {
    done: Mutex<Vec<Done>>,
    armed: AtomicBool,
    quit: AtomicBool,
    tx: PipeWriter,
    rx: PipeReader,
}

impl Mailbox {
    fn new() -> io::Result<Mailbox> {
        let (rx, tx) = io::pipe()?;
        Ok(Mailbox {
            done: Mutex::new(Vec::new()),
            armed: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            tx,
            rx,
        })
    }

    /// Hand a completion to the queue thread. On a session's reader thread
    /// the wake-up waits until the reader has handled all it received, so
    /// the completions of one batch from the target wake the queue once.
    fn post(self: &Arc<Self>, d: Done) {
        lock(&self.done).push(d);
        if !self.armed.swap(true, Ordering::AcqRel)
            && let Err(job) = session::at_reader_idle(session::IdleJob::Wake(self.clone()))
        {
            job.run();
        }
    }

    fn kick(&self) {
        if let Err(e) = (&self.tx).write_all(&[1]) {
            log::error!("ublk: cannot wake a queue thread: {e}");
        }
    }

    /// The thread's wake-up read completed: clear `armed` and take what is
    /// there.
    fn woken(&self, into: &mut Vec<Done>) {
        self.armed.store(false, Ordering::Release);
        self.take(into);
    }

    fn take(&self, into: &mut Vec<Done>) {
        into.append(&mut lock(&self.done));
    }

    /// Make the thread give up (only when the device cannot be stopped the
    /// normal way).
    fn quit(&self) {
        self.quit.store(true, Ordering::Release);
        self.kick();
    }
}

impl session::Idle for Mailbox {
    fn idle(self: Arc<Self>) {
        self.kick();
    }
}

/// The backend's completions name their tag: no allocation per request.
impl Sink<Result<(), BlockError>> for Mailbox {
    fn done(self: Arc<Self>, tag: usize, res: Result<(), BlockError>, buf: Vec<u8>) {
        // Our own tags, below the queue depth.
        let tag = tag as u16;
        self.post(Done { tag, res, buf });
    }
}

/// Live queue threads, for [`UblkDevice::wait`].
struct Life {
    live: Mutex<usize>,
    cv: Condvar,
}

struct LiveGuard(Arc<Life>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut n = lock(&self.0.live);
        *n = n.saturating_sub(1);
        self.0.cv.notify_all();
    }
}

/// The queue threads of a device.
struct Queues {
    handles: Mutex<Vec<JoinHandle<()>>>,
    mailboxes: Vec<Arc<Mailbox>>,
    life: Arc<Life>,
    ready: Mutex<Option<mpsc::Receiver<Result<(), UblkError>>>>,
    /// A thread that could not be started (reported by `await_ready`).
    spawn_err: Mutex<Option<UblkError>>,
}

/// What a queue thread serves.
struct QueueConfig {
    dev_id: u32,
    q_id: u16,
    depth: u16,
    buf_bytes: usize,
    block_shift: u8,
    page: usize,
    cdev: Arc<File>,
    backend: Arc<dyn Backend>,
    mailbox: Arc<Mailbox>,
}

impl Queues {
    /// Open /dev/ublkcN and start one thread per queue. The threads (and a
    /// failure to start one) report through [`Queues::await_ready`].
    fn spawn(
        dev_id: u32,
        info: &DevInfo,
        block_shift: u8,
        backend: &Arc<dyn Backend>,
    ) -> Result<Queues, UblkError> {
        let cdev = Arc::new(open_char_dev(dev_id)?);
        let page = page_size();
        let life = Arc::new(Life {
            live: Mutex::new(0),
            cv: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        let mut mailboxes = Vec::new();
        let mut spawn_err = None;
        for q_id in 0..info.nr_hw_queues {
            let mailbox = match Mailbox::new() {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    spawn_err = Some(UblkError::os("pipe", &e));
                    break;
                }
            };
            let cfg = QueueConfig {
                dev_id,
                q_id,
                depth: info.queue_depth,
                buf_bytes: info.max_io_buf_bytes as usize,
                block_shift,
                page,
                cdev: Arc::clone(&cdev),
                backend: Arc::clone(backend),
                mailbox: Arc::clone(&mailbox),
            };
            *lock(&life.live) += 1;
            let guard = LiveGuard(Arc::clone(&life));
            let tx = tx.clone();
            match crate::threads::named(format!("ublk{dev_id}q{q_id}"))
                .spawn(move || queue_main(cfg, tx, guard))
            {
                Ok(h) => {
                    handles.push(h);
                    mailboxes.push(mailbox);
                }
                Err(e) => {
                    // The closure (and its guard) was dropped.
                    spawn_err = Some(UblkError::os("spawn a ublk queue thread", &e));
                    break;
                }
            }
        }
        Ok(Queues {
            handles: Mutex::new(handles),
            mailboxes,
            life,
            ready: Mutex::new(Some(rx)),
            spawn_err: Mutex::new(spawn_err),
        })
    }

    /// Wait until every thread has queued its fetches (or failed to).
    fn await_ready(&self) -> Result<(), UblkError> {
        let Some(rx) = lock(&self.ready).take() else {
            return Ok(());
        };
        let mut first = lock(&self.spawn_err).take();
        for _ in 0..self.mailboxes.len() {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first.get_or_insert(e);
                }
                Err(_) => {
                    first.get_or_insert(UblkError::Queue {
                        q_id: None,
                        reason: "a queue thread ended during setup".into(),
                    });
                    break;
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn wait(&self) {
        let mut n = lock(&self.life.live);
        while *n > 0 {
            n = self.life.cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn join(&self) {
        let handles = std::mem::take(&mut *lock(&self.handles));
        for h in handles {
            let name = h.thread().name().unwrap_or("ublk queue").to_string();
            if h.join().is_err() {
                log::error!("{name} panicked");
            }
        }
    }

    fn quit(&self) {
        for m in &self.mailboxes {
            m.quit();
        }
    }
}

/// Open /dev/ublkcN, giving devtmpfs (or udev) a moment to create it and
/// making the node from sysfs if nobody does.
fn open_char_dev(dev_id: u32) -> Result<File, UblkError> {
    let path = format!("/dev/ublkc{dev_id}");
    let sys = format!("/sys/class/ublk-char/ublkc{dev_id}/dev");
    let start = Instant::now();
    let mut made = false;
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                if !made && start.elapsed() > Duration::from_millis(500) {
                    made = true;
                    make_node(&path, &sys, nix::sys::stat::SFlag::S_IFCHR);
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(UblkError::os(format!("open {path}"), &e)),
        }
    }
}

/// The block device's name under /sys/block and /dev: "ublkbN".
fn disk_name(dev_id: u32) -> String {
    format!("ublkb{dev_id}")
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

/// Make sure /dev/ublkbN exists once the disk is added (an initramfs
/// without devtmpfs or udev would not have it).
fn ensure_block_node(dev_id: u32) {
    let path = format!("/dev/ublkb{dev_id}");
    let start = Instant::now();
    while !Path::new(&path).exists() {
        if start.elapsed() > Duration::from_millis(500) {
            let sys = format!("/sys/class/block/ublkb{dev_id}/dev");
            make_node(&path, &sys, nix::sys::stat::SFlag::S_IFBLK);
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// mknod `path` from the "major:minor" in `sys`.
fn make_node(path: &str, sys: &str, kind: nix::sys::stat::SFlag) {
    use nix::sys::stat::{Mode, makedev, mknod};
    let Ok(s) = fs::read_to_string(sys) else {
        log::warn!("{path} does not appear and {sys} cannot be read");
        return;
    };
    let Some((maj, min)) = s.trim().split_once(':') else {
        return;
    };
    let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
        return;
    };
    match mknod(
        path,
        kind,
        Mode::from_bits_truncate(0o600),
        makedev(maj, min),
    ) {
        Ok(()) => log::info!("created {path} ({maj}:{min}): neither devtmpfs nor udev did"),
        Err(e) => log::warn!("cannot create {path}: {e}"),
    }
}

fn set_io_flusher(what: &str) {
    // SAFETY: prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) passes no pointers; it
    // only marks the calling thread.
    let r = unsafe {
        nix::libc::prctl(
            PR_SET_IO_FLUSHER,
            1 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
        )
    };
    if r != 0 {
        log::warn!(
            "{what}: prctl(PR_SET_IO_FLUSHER): {} (memory reclaim may deadlock on this device)",
            Errno::last()
        );
    }
}

/// The queue's read-only view of its descriptor array.
struct Descriptors {
    ptr: NonNull<IoDesc>,
    len: usize,
    depth: u16,
}

impl Descriptors {
    fn map(cdev: &File, q_id: u16, depth: u16, page: usize) -> Result<Descriptors, UblkError> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        let desc = size_of::<IoDesc>();
        let len = round_up(usize::from(depth) * desc, page);
        let stride = round_up(usize::from(uapi::UBLK_MAX_QUEUE_DEPTH) * desc, page);
        let offset = uapi::UBLKSRV_CMD_BUF_OFFSET + (usize::from(q_id) * stride) as u64;
        let what = || format!("mmap the descriptors of ublk queue {q_id}");
        let Some(nz) = NonZeroUsize::new(len) else {
            return Err(UblkError::Unsupported(what()));
        };
        let offset =
            nix::libc::off_t::try_from(offset).map_err(|_| UblkError::Unsupported(what()))?;
        // SAFETY: a fresh read-only shared mapping of the driver's
        // descriptor pages, placed by the kernel; nothing else aliases it.
        // Its length and offset are the ones ublk_ch_mmap() checks.
        let p = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
                cdev,
                offset,
            )
        }
        .map_err(|errno| UblkError::Os {
            what: what(),
            errno,
        })?;
        Ok(Descriptors {
            ptr: p.cast(),
            len,
            depth,
        })
    }

    fn get(&self, tag: u16) -> IoDesc {
        assert!(tag < self.depth);
        // SAFETY: tag < depth and the mapping holds `depth` descriptors; it
        // is page aligned, so every 24-byte descriptor is 8-byte aligned.
        // The kernel wrote this one before completing the command we just
        // reaped and leaves it alone until we commit; a volatile read
        // because the memory is shared with the kernel.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(usize::from(tag))) }
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no reference into
        // it outlives `get`.
        if let Err(e) = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) } {
            log::warn!("munmap ublk descriptors: {e}");
        }
    }
}

/// Where a tag's buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A FETCH or COMMIT_AND_FETCH is queued: the kernel may write the
    /// buffer.
    Kernel,
    /// The backend has the buffer.
    Backend,
    /// Done: aborted or failed.
    Retired,
}

struct Slot {
    /// None while the backend has it.
    buf: Option<Vec<u8>>,
    /// The address the kernel was last given.
    addr: usize,
    state: State,
    /// Whether the queued command is the first FETCH (for messages).
    fetching: bool,
    /// The request the backend has: what it is (for messages) and the
    /// result a success commits (bytes transferred, or 0).
    op: BlockOp,
    ok: i32,
}

/// How a queue thread ended.
enum Exit {
    /// Every tag retired and nothing with the backend.
    Done,
    /// Gave up with commands possibly still queued.
    Abandoned(String),
}

struct Queue {
    cfg: QueueConfig,
    ring: Ring,
    descs: Descriptors,
    slots: Vec<Slot>,
    in_kernel: usize,
    in_backend: usize,
    wake_buf: Box<[u8; 64]>,
    wake_queued: bool,
    wake_errors: u32,
    /// Requests handed to the backend.
    served: u64,
}

fn io_cmd(cdev: &File, op: u32, q_id: u16, tag: u16, result: i32, addr: u64) -> squeue::Entry128 {
    let cmd = IoCmd {
        q_id,
        tag,
        result,
        addr,
    };
    let mut area = [0u8; 80];
    area[..size_of::<IoCmd>()].copy_from_slice(cmd.as_bytes());
    opcode::UringCmd80::new(types::Fd(cdev.as_raw_fd()), op)
        .cmd(area)
        .build()
        .user_data(u64::from(tag))
}

fn queue_main(cfg: QueueConfig, ready: mpsc::Sender<Result<(), UblkError>>, guard: LiveGuard) {
    let name = format!("ublkb{} queue {}", cfg.dev_id, cfg.q_id);
    set_io_flusher(&name);
    let q_id = cfg.q_id;
    let setup_err = |reason: String| UblkError::Queue {
        q_id: Some(q_id),
        reason,
    };
    let entries = u32::from(cfg.depth) + 2;
    let ring = match Ring::builder().build(entries) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(setup_err(
                UblkError::os("io_uring setup", &e).to_string(),
            )));
            return;
        }
    };
    let descs = match Descriptors::map(&cfg.cdev, cfg.q_id, cfg.depth, cfg.page) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(setup_err(e.to_string())));
            return;
        }
    };
    // Every buffer up front, every page touched (non-zero fill: calloc'd
    // zero pages would only be allocated at the first request).
    let slots = (0..cfg.depth)
        .map(|_| {
            let buf = vec![0x5au8; cfg.buf_bytes];
            Slot {
                addr: buf.as_ptr() as usize,
                buf: Some(buf),
                state: State::Retired,
                fetching: true,
                op: BlockOp::Flush,
                ok: 0,
            }
        })
        .collect();
    let mut q = Queue {
        cfg,
        ring,
        descs,
        slots,
        in_kernel: 0,
        in_backend: 0,
        wake_buf: Box::new([0u8; 64]),
        wake_queued: false,
        wake_errors: 0,
        served: 0,
    };
    let r = q.start();
    let started = r.is_ok();
    let _ = ready.send(r.map_err(setup_err));
    drop(ready);
    let exit = if started || q.in_kernel > 0 {
        q.serve()
    } else {
        Exit::Abandoned("setup failed".into())
    };
    q.finish(exit, &name);
    drop(guard);
}

impl Queue {
    /// Queue the wake-up read and a FETCH for every tag.
    fn start(&mut self) -> Result<(), String> {
        self.queue_wake().map_err(|e| format!("io_uring: {e}"))?;
        for tag in 0..self.cfg.depth {
            let slot = &mut self.slots[usize::from(tag)];
            let Some(buf) = slot.buf.as_mut() else {
                continue;
            };
            let e = io_cmd(
                &self.cfg.cdev,
                uapi::UBLK_U_IO_FETCH_REQ,
                self.cfg.q_id,
                tag,
                0,
                buf.as_mut_ptr() as u64,
            );
            push(&mut self.ring, &e).map_err(|e| format!("io_uring: {e}"))?;
            slot.state = State::Kernel;
            self.in_kernel += 1;
        }
        self.ring
            .submit()
            .map_err(|e| format!("io_uring submit: {e}"))?;
        // The driver handles FETCH_REQ inline: failures are already here
        // (a request cannot arrive before START_DEV / END_USER_RECOVERY).
        let mut failed = None;
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut done = Vec::new();
        for (ud, res) in cqes {
            if ud < u64::from(self.cfg.depth) && res < 0 {
                failed.get_or_insert(res);
            }
            self.dispatch(ud, res, &mut done)?;
        }
        // (Nothing can have been posted yet; if it was, serve() sees it.)
        lock(&self.cfg.mailbox.done).append(&mut done);
        match failed {
            None => Ok(()),
            Some(res) => Err(format!(
                "FETCH_REQ failed: {}",
                describe(Errno::from_raw(-res))
            )),
        }
    }

    fn queue_wake(&mut self) -> io::Result<()> {
        let e = opcode::Read::new(
            types::Fd(self.cfg.mailbox.rx.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            self.wake_buf.len() as u32,
        )
        .build()
        .user_data(WAKE);
        push(&mut self.ring, &e.into())?;
        self.wake_queued = true;
        Ok(())
    }

    fn serve(&mut self) -> Exit {
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(usize::from(self.cfg.depth) + 2);
        let mut done = Vec::new();
        loop {
            // Completions the backend posted (possibly inline, from our own
            // submit) go out with the next submission.
            self.cfg.mailbox.take(&mut done);
            for d in done.drain(..) {
                if let Err(e) = self.commit(d) {
                    return Exit::Abandoned(format!("io_uring: {e}"));
                }
            }
            if self.cfg.mailbox.quit.load(Ordering::Acquire) {
                return Exit::Abandoned("told to quit".into());
            }
            if self.in_kernel == 0 && self.in_backend == 0 {
                return Exit::Done;
            }
            if let Err(e) = submit_and_wait(&self.ring) {
                return Exit::Abandoned(format!("io_uring: {e}"));
            }
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            // The requests of one wake-up go to the target together.
            let plug = session::plug();
            for (ud, res) in cqes.drain(..) {
                if let Err(why) = self.dispatch(ud, res, &mut done) {
                    return Exit::Abandoned(why);
                }
            }
            drop(plug);
        }
    }

    /// One completion: the wake-up read, or a tag's command.
    fn dispatch(&mut self, ud: u64, res: i32, done: &mut Vec<Done>) -> Result<(), String> {
        if ud != WAKE {
            return self.on_cqe(ud, res).map_err(|e| format!("io_uring: {e}"));
        }
        self.wake_queued = false;
        if res < 0 {
            self.wake_errors += 1;
            log::warn!(
                "ublkb{} queue {}: wake-up read: {}",
                self.cfg.dev_id,
                self.cfg.q_id,
                Errno::from_raw(-res)
            );
            if self.wake_errors > 16 {
                return Err("the wake-up pipe keeps failing".into());
            }
        } else {
            self.wake_errors = 0;
        }
        self.cfg.mailbox.woken(done);
        self.queue_wake().map_err(|e| format!("io_uring: {e}"))
    }

    /// A FETCH / COMMIT_AND_FETCH completed.
    fn on_cqe(&mut self, ud: u64, res: i32) -> io::Result<()> {
        let (dev, q) = (self.cfg.dev_id, self.cfg.q_id);
        let Some(tag) = u16::try_from(ud).ok().filter(|t| *t < self.cfg.depth) else {
            if ud != CANCEL {
                log::warn!("ublkb{dev} queue {q}: unexpected completion {ud:#x} ({res})");
            }
            return Ok(());
        };
        let slot = &mut self.slots[usize::from(tag)];
        if slot.state != State::Kernel {
            log::error!("ublkb{dev} queue {q}: tag {tag} completed twice");
            return Ok(());
        }
        self.in_kernel -= 1;
        let what = if slot.fetching {
            "FETCH_REQ"
        } else {
            "COMMIT_AND_FETCH_REQ"
        };
        slot.fetching = false;
        match res {
            uapi::UBLK_IO_RES_OK => return self.request(tag),
            uapi::UBLK_IO_RES_ABORT => {
                log::debug!("ublkb{dev} queue {q}: tag {tag} aborted");
                slot.state = State::Retired;
            }
            uapi::UBLK_IO_RES_NEED_GET_DATA => {
                log::error!(
                    "ublkb{dev} queue {q}: tag {tag}: NEED_GET_DATA, which we did not ask for"
                );
                slot.state = State::Retired;
            }
            r => {
                let errno = if r < 0 {
                    Errno::from_raw(-r)
                } else {
                    Errno::UnknownErrno
                };
                log::error!(
                    "ublkb{dev} queue {q}: tag {tag}: {what} failed: {}",
                    describe(errno)
                );
                slot.state = State::Retired;
            }
        }
        Ok(())
    }

    /// A request arrived on `tag`: hand it to the backend or answer it.
    fn request(&mut self, tag: u16) -> io::Result<()> {
        let d = self.descs.get(tag);
        let req = match decode(&d, self.cfg.block_shift, self.cfg.buf_bytes) {
            Ok(r) => r,
            Err(errno) => {
                log::warn!(
                    "ublkb{} queue {}: refusing request op {} at sector {} for {} sectors: {}",
                    self.cfg.dev_id,
                    self.cfg.q_id,
                    d.op(),
                    d.start_sector,
                    d.nr_sectors,
                    describe(Errno::from_raw(-errno))
                );
                return self.queue_commit(tag, errno);
            }
        };
        let slot = &mut self.slots[usize::from(tag)];
        let Some(mut buf) = slot.buf.take() else {
            log::error!(
                "ublkb{} queue {}: tag {tag} has no buffer",
                self.cfg.dev_id,
                self.cfg.q_id
            );
            slot.state = State::Retired;
            return Ok(());
        };
        set_data_len(&mut buf, req.len, self.cfg.buf_bytes);
        slot.state = State::Backend;
        self.in_backend += 1;
        self.served += 1;
        slot.op = req.op;
        slot.ok = req.ok;
        let done = BlockDone::slot(self.cfg.mailbox.clone(), usize::from(tag));
        self.cfg.backend.submit(req.op, buf, done);
        Ok(())
    }

    /// The backend finished a request: commit it and fetch the next.
    fn commit(&mut self, d: Done) -> io::Result<()> {
        let buf_bytes = self.cfg.buf_bytes;
        let Some(slot) = self.slots.get_mut(usize::from(d.tag)) else {
            return Ok(());
        };
        if slot.state != State::Backend {
            log::error!(
                "ublkb{} queue {}: tag {} came back from the backend twice",
                self.cfg.dev_id,
                self.cfg.q_id,
                d.tag
            );
            return Ok(());
        }
        self.in_backend -= 1;
        let mut buf = d.buf;
        if buf.as_ptr() as usize != slot.addr || buf.capacity() < buf_bytes {
            // Not the Vec we lent: make its first buf_bytes initialised
            // (keeping what a read put there) and lend that from now on.
            log::debug!(
                "ublk: the backend returned another buffer for tag {}",
                d.tag
            );
            if buf.len() < buf_bytes {
                buf.resize(buf_bytes, 0);
            }
            slot.addr = buf.as_ptr() as usize;
        }
        slot.buf = Some(buf);
        let result = match d.res {
            Ok(()) => slot.ok,
            Err(e) => {
                log::warn!("ublkb{}: {:?} failed: {e}", self.cfg.dev_id, slot.op);
                e.errno()
            }
        };
        self.queue_commit(d.tag, result)
    }

    fn queue_commit(&mut self, tag: u16, result: i32) -> io::Result<()> {
        let slot = &mut self.slots[usize::from(tag)];
        let addr = match slot.buf.as_mut() {
            Some(b) => b.as_mut_ptr() as u64,
            None => return Err(io::Error::other("commit without a buffer")),
        };
        let e = io_cmd(
            &self.cfg.cdev,
            uapi::UBLK_U_IO_COMMIT_AND_FETCH_REQ,
            self.cfg.q_id,
            tag,
            result,
            addr,
        );
        slot.state = State::Kernel;
        self.in_kernel += 1;
        push(&mut self.ring, &e)
    }

    /// Tear down. After a clean end only the wake-up read is queued: cancel
    /// it and free everything. Otherwise close the ring and leak whatever
    /// the kernel may still write into.
    fn finish(mut self, exit: Exit, name: &str) {
        let clean = match &exit {
            Exit::Done => {
                log::info!("{name}: stopped after {} requests", self.served);
                self.cancel_wake()
            }
            Exit::Abandoned(why) => {
                log::warn!("{name}: giving up: {why}");
                false
            }
        };
        let Queue {
            ring,
            descs,
            slots,
            wake_buf,
            wake_queued,
            ..
        } = self;
        drop(ring);
        drop(descs);
        if !clean && wake_queued {
            std::mem::forget(wake_buf);
        }
        let mut leaked = 0usize;
        for slot in slots {
            if !clean && slot.state == State::Kernel {
                std::mem::forget(slot.buf);
                leaked += 1;
            }
        }
        if leaked > 0 {
            log::warn!("{name}: leaked {leaked} buffers the kernel may still write into");
        }
    }

    /// Cancel the wake-up read and wait for it; false if that fails.
    fn cancel_wake(&mut self) -> bool {
        if !self.wake_queued {
            return true;
        }
        let e = opcode::AsyncCancel::new(WAKE).build().user_data(CANCEL);
        if push(&mut self.ring, &e.into()).is_err() {
            return false;
        }
        for _ in 0..100 {
            if submit_and_wait(&self.ring).is_err() {
                return false;
            }
            let cqes: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (ud, _) in cqes {
                if ud == WAKE {
                    self.wake_queued = false;
                }
            }
            if !self.wake_queued {
                return true;
            }
        }
        false
    }
}

/// Give `buf` a length of `len` for the backend. Growing it exposes bytes
/// the kernel wrote (a write request's data).
fn set_data_len(buf: &mut Vec<u8>, len: usize, initialised: usize) {
    if len <= buf.len() {
        buf.truncate(len);
        return;
    }
    assert!(len <= initialised && initialised <= buf.capacity());
    // SAFETY: the first `initialised` bytes of this allocation were
    // initialised when it was made (vec![..; initialised], or resized to it
    // when the backend handed back a different Vec; see `commit`); since
    // then only the kernel (copying request data into the buffer at the
    // address we gave it) and the backend (through the Vec) wrote to them,
    // and neither makes bytes uninitialised. len <= initialised <= capacity.
    unsafe { buf.set_len(len) }
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
                flags &= !uapi::UBLK_F_UPDATE_SIZE;
            }
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
            match info.state {
                uapi::UBLK_S_DEV_QUIESCED => break info,
                uapi::UBLK_S_DEV_LIVE if !dead_seen && !pid_alive(info.ublksrv_pid) => {
                    // Gone, but the kernel has not noticed yet: 6.12 does
                    // only when a held request's timer fires if the dead
                    // daemon held every tag of a queue.
                    dead_seen = true;
                    let timer =
                        super::queue_timeout(&disk_name(dev_id)).unwrap_or(Duration::from_secs(30));
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
    use super::uapi::*;
    use super::*;
    use std::io::Read;
    use std::mem::offset_of;

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

    #[test]
    fn struct_layouts_match_the_uapi() {
        assert_eq!(size_of::<CtrlCmd>(), 32);
        assert_eq!(offset_of!(CtrlCmd, queue_id), 4);
        assert_eq!(offset_of!(CtrlCmd, len), 6);
        assert_eq!(offset_of!(CtrlCmd, addr), 8);
        assert_eq!(offset_of!(CtrlCmd, data), 16);
        assert_eq!(offset_of!(CtrlCmd, dev_path_len), 24);
        assert_eq!(offset_of!(CtrlCmd, reserved), 28);

        assert_eq!(size_of::<DevInfo>(), 64);
        assert_eq!(offset_of!(DevInfo, state), 4);
        assert_eq!(offset_of!(DevInfo, max_io_buf_bytes), 8);
        assert_eq!(offset_of!(DevInfo, dev_id), 12);
        assert_eq!(offset_of!(DevInfo, ublksrv_pid), 16);
        assert_eq!(offset_of!(DevInfo, flags), 24);
        assert_eq!(offset_of!(DevInfo, ublksrv_flags), 32);
        assert_eq!(offset_of!(DevInfo, owner_uid), 40);
        assert_eq!(offset_of!(DevInfo, reserved1), 48);

        assert_eq!(size_of::<IoCmd>(), 16);
        assert_eq!(offset_of!(IoCmd, tag), 2);
        assert_eq!(offset_of!(IoCmd, result), 4);
        assert_eq!(offset_of!(IoCmd, addr), 8);

        assert_eq!(size_of::<IoDesc>(), 24);
        assert_eq!(offset_of!(IoDesc, nr_sectors), 4);
        assert_eq!(offset_of!(IoDesc, start_sector), 8);
        assert_eq!(offset_of!(IoDesc, addr), 16);

        assert_eq!(size_of::<ParamBasic>(), 32);
        assert_eq!(offset_of!(ParamBasic, logical_bs_shift), 4);
        assert_eq!(offset_of!(ParamBasic, io_min_shift), 7);
        assert_eq!(offset_of!(ParamBasic, max_sectors), 8);
        assert_eq!(offset_of!(ParamBasic, dev_sectors), 16);
        assert_eq!(offset_of!(ParamBasic, virt_boundary_mask), 24);
        assert_eq!(size_of::<ParamDiscard>(), 20);
        assert_eq!(offset_of!(ParamDiscard, max_discard_segments), 16);
        assert_eq!(size_of::<ParamDevt>(), 16);
        assert_eq!(size_of::<ParamZoned>(), 32);

        // 6.12: len, types, basic (8-aligned), discard, devt, zoned, padding
        // to 8.
        assert_eq!(offset_of!(Params, basic), 8);
        assert_eq!(offset_of!(Params, discard), 40);
        assert_eq!(offset_of!(Params, devt), 60);
        assert_eq!(offset_of!(Params, zoned), 76);
        assert_eq!(size_of::<Params>(), 112);
        assert_eq!(align_of::<Params>(), 8);
    }

    #[test]
    fn opcodes_match_an_independent_encoding() {
        // nix's own _IOR/_IOWR.
        let ctrl = size_of::<CtrlCmd>();
        let io = size_of::<IoCmd>();
        let rw = |nr: u8, sz: usize| nix::request_code_readwrite!(b'u', nr, sz) as u32;
        let r = |nr: u8, sz: usize| nix::request_code_read!(b'u', nr, sz) as u32;
        assert_eq!(UBLK_U_CMD_GET_QUEUE_AFFINITY, r(0x01, ctrl));
        assert_eq!(UBLK_U_CMD_GET_DEV_INFO, r(0x02, ctrl));
        assert_eq!(UBLK_U_CMD_ADD_DEV, rw(0x04, ctrl));
        assert_eq!(UBLK_U_CMD_DEL_DEV, rw(0x05, ctrl));
        assert_eq!(UBLK_U_CMD_START_DEV, rw(0x06, ctrl));
        assert_eq!(UBLK_U_CMD_STOP_DEV, rw(0x07, ctrl));
        assert_eq!(UBLK_U_CMD_SET_PARAMS, rw(0x08, ctrl));
        assert_eq!(UBLK_U_CMD_GET_PARAMS, r(0x09, ctrl));
        assert_eq!(UBLK_U_CMD_START_USER_RECOVERY, rw(0x10, ctrl));
        assert_eq!(UBLK_U_CMD_END_USER_RECOVERY, rw(0x11, ctrl));
        assert_eq!(UBLK_U_CMD_GET_DEV_INFO2, r(0x12, ctrl));
        assert_eq!(UBLK_U_CMD_GET_FEATURES, r(0x13, ctrl));
        assert_eq!(UBLK_U_CMD_DEL_DEV_ASYNC, r(0x14, ctrl));
        assert_eq!(UBLK_U_CMD_UPDATE_SIZE, rw(0x15, ctrl));
        assert_eq!(UBLK_U_IO_FETCH_REQ, rw(0x20, io));
        assert_eq!(UBLK_U_IO_COMMIT_AND_FETCH_REQ, rw(0x21, io));
        assert_eq!(UBLK_U_IO_NEED_GET_DATA, rw(0x22, io));

        // Worked by hand: dir << 30 | size << 16 | 'u' (0x75) << 8 | nr,
        // _IOWR = 3, _IOR = 2, sizes 0x20 and 0x10.
        assert_eq!(UBLK_U_CMD_ADD_DEV, 0xc020_7504);
        assert_eq!(UBLK_U_CMD_START_DEV, 0xc020_7506);
        assert_eq!(UBLK_U_CMD_STOP_DEV, 0xc020_7507);
        assert_eq!(UBLK_U_CMD_GET_FEATURES, 0x8020_7513);
        assert_eq!(UBLK_U_CMD_GET_DEV_INFO, 0x8020_7502);
        assert_eq!(UBLK_U_IO_FETCH_REQ, 0xc010_7520);
        assert_eq!(UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc010_7521);
        assert_eq!(UBLK_IO_RES_ABORT, -(Errno::ENODEV as i32));
    }

    fn geo() -> Geometry {
        Geometry {
            block_size: 512,
            blocks: 2 << 20,
            physical_exponent: 3,
            write_protected: false,
            write_cache: Some(true),
            fua: true,
            can_unmap: true,
            can_write_same: true,
            max_transfer_blocks: 0,
            optimal_transfer_blocks: 0,
            max_unmap_blocks: u32::MAX,
            unmap_granularity_blocks: 8,
            unmap_alignment_blocks: Some(0),
            max_write_same_blocks: 0,
        }
    }

    #[test]
    fn params_from_a_thin_lu() {
        let p = geo().params(512 << 10, 4096).unwrap();
        assert_eq!(p.len, 112);
        assert_eq!(p.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD);
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.io_min_shift, 12);
        assert_eq!(p.basic.io_opt_shift, 12);
        assert_eq!(p.basic.max_sectors, 1024);
        assert_eq!(p.basic.dev_sectors, 2 << 20);
        assert_eq!(p.basic.attrs, UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA);
        assert_eq!(p.discard.discard_granularity, 4096);
        assert_eq!(p.discard.max_discard_sectors, DEFAULT_MAX_UNMAP_BLOCKS);
        assert_eq!(p.discard.max_write_zeroes_sectors, DEFAULT_MAX_UNMAP_BLOCKS);
        assert_eq!(p.discard.max_discard_segments, 1);
    }

    #[test]
    fn params_from_a_read_only_4k_lu_without_cache_or_unmap() {
        let g = Geometry {
            block_size: 4096,
            blocks: 1000,
            physical_exponent: 0,
            write_protected: true,
            write_cache: Some(false),
            can_unmap: false,
            can_write_same: false,
            max_transfer_blocks: 64,
            optimal_transfer_blocks: 16,
            ..geo()
        };
        let max_io = g.max_io_bytes(512 << 10, 4096).unwrap();
        assert_eq!(max_io, 256 << 10);
        let p = g.params(max_io, 4096).unwrap();
        assert_eq!(p.types, UBLK_PARAM_TYPE_BASIC);
        assert_eq!(p.basic.attrs, UBLK_ATTR_READ_ONLY);
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.io_opt_shift, 16);
        assert_eq!(p.basic.max_sectors, 512);
        assert_eq!(p.basic.dev_sectors, 8000);
        assert_eq!(p.discard, ParamDiscard::default());
        // An unknown cache is treated as volatile.
        let p = Geometry {
            write_cache: None,
            fua: false,
            ..g
        }
        .params(max_io, 4096)
        .unwrap();
        assert_eq!(
            p.basic.attrs,
            UBLK_ATTR_READ_ONLY | UBLK_ATTR_VOLATILE_CACHE
        );
    }

    #[test]
    fn write_same_only_lu_gets_write_zeroes_without_discard() {
        let g = Geometry {
            can_unmap: false,
            max_write_same_blocks: 1 << 16,
            unmap_granularity_blocks: 0,
            ..geo()
        };
        let p = g.params(512 << 10, 4096).unwrap();
        assert_eq!(p.discard.max_discard_sectors, 0);
        assert_eq!(p.discard.max_write_zeroes_sectors, 1 << 16);
        assert_eq!(p.discard.discard_granularity, 512);
    }

    #[test]
    fn unusable_block_sizes_and_transfer_limits() {
        for bs in [520, 256, 8192] {
            let g = Geometry {
                block_size: bs,
                ..geo()
            };
            assert!(
                matches!(g.params(512 << 10, 4096), Err(UblkError::Unsupported(_))),
                "{bs}"
            );
        }
        let g = Geometry {
            max_transfer_blocks: 4,
            ..geo()
        };
        assert!(g.max_io_bytes(512 << 10, 4096).is_err());
        assert_eq!(geo().max_io_bytes(100, 4096).unwrap(), 4096);
        assert_eq!(geo().max_io_bytes(u32::MAX, 4096).unwrap(), MAX_IO_BYTES);
        assert_eq!(geo().max_io_bytes(300_000, 4096).unwrap(), 299_008);
    }

    fn desc(op: u8, flags: u32, start: u64, n: u32) -> IoDesc {
        IoDesc {
            op_flags: u32::from(op) | flags,
            nr_sectors: n,
            start_sector: start,
            addr: 0,
        }
    }

    #[test]
    fn requests_become_block_ops() {
        let max = 512 << 10;
        // 512-byte blocks: sectors are blocks.
        assert_eq!(
            decode(&desc(UBLK_IO_OP_READ, 0, 7, 3), 9, max),
            Ok(Request {
                op: BlockOp::Read { lba: 7, blocks: 3 },
                len: 1536,
                ok: 1536
            })
        );
        // 4 KiB blocks: 8 sectors each, FUA carried.
        assert_eq!(
            decode(&desc(UBLK_IO_OP_WRITE, UBLK_IO_F_FUA, 16, 24), 12, max),
            Ok(Request {
                op: BlockOp::Write {
                    lba: 2,
                    blocks: 3,
                    fua: true
                },
                len: 12288,
                ok: 12288
            })
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_WRITE, UBLK_IO_F_META, 0, 8), 12, max).map(|r| r.op),
            Ok(BlockOp::Write {
                lba: 0,
                blocks: 1,
                fua: false
            })
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_FLUSH, 0, 0, 0), 12, max),
            Ok(Request {
                op: BlockOp::Flush,
                len: 0,
                ok: 0
            })
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_DISCARD, 0, 8, 8 << 20), 12, max),
            Ok(Request {
                op: BlockOp::Discard {
                    lba: 1,
                    blocks: 1 << 20
                },
                len: 0,
                ok: 0
            })
        );
        assert_eq!(
            decode(
                &desc(UBLK_IO_OP_WRITE_ZEROES, UBLK_IO_F_NOUNMAP, 0, 16),
                12,
                max
            )
            .map(|r| r.op),
            Ok(BlockOp::WriteZeroes { lba: 0, blocks: 2 })
        );
    }

    #[test]
    fn bad_requests_get_errnos() {
        let max = 512 << 10;
        let einval = -(Errno::EINVAL as i32);
        // Not aligned to 4 KiB blocks, in start or length.
        assert_eq!(
            decode(&desc(UBLK_IO_OP_READ, 0, 1, 8), 12, max),
            Err(einval)
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_WRITE, 0, 8, 4), 12, max),
            Err(einval)
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_DISCARD, 0, 8, 9), 12, max),
            Err(einval)
        );
        // Empty, or bigger than the buffer.
        assert_eq!(decode(&desc(UBLK_IO_OP_READ, 0, 0, 0), 9, max), Err(einval));
        assert_eq!(
            decode(&desc(UBLK_IO_OP_READ, 0, 0, 1025), 9, max),
            Err(einval)
        );
        // Unknown and obsolete ops.
        let eopnotsupp = -(Errno::EOPNOTSUPP as i32);
        assert_eq!(
            decode(&desc(UBLK_IO_OP_WRITE_SAME, 0, 0, 8), 9, max),
            Err(eopnotsupp)
        );
        assert_eq!(decode(&desc(13, 0, 0, 8), 9, max), Err(eopnotsupp));
    }

    #[test]
    fn data_length_grows_over_initialised_bytes() {
        let mut b = vec![7u8; 8192];
        let p = b.as_ptr();
        set_data_len(&mut b, 512, 8192);
        assert_eq!(b.len(), 512);
        // What "the kernel" wrote past the length shows when it grows back.
        set_data_len(&mut b, 4096, 8192);
        assert_eq!(b.len(), 4096);
        assert!(b.iter().all(|&x| x == 7));
        assert_eq!(b.as_ptr(), p);
    }

    #[test]
    fn mailbox_wakes_once_per_batch() {
        let m = Arc::new(Mailbox::new().unwrap());
        let poster = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                for tag in 0..100 {
                    m.post(Done {
                        tag,
                        res: Ok(()),
                        buf: Vec::new(),
                    });
                }
            })
        };
        poster.join().unwrap();
        // One byte for the whole batch.
        let mut byte = [0u8; 64];
        assert_eq!((&m.rx).read(&mut byte).unwrap(), 1);
        let mut got = Vec::new();
        m.woken(&mut got);
        assert_eq!(got.len(), 100);
        // The next post wakes again.
        m.post(Done {
            tag: 1,
            res: Err(BlockError::Io("EIO".into())),
            buf: Vec::new(),
        });
        assert_eq!((&m.rx).read(&mut byte).unwrap(), 1);
        m.woken(&mut got);
        assert_eq!(got.len(), 101);
    }

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

    /// A ring, or a skip (a failure under CI=true: CI's machine has
    /// io_uring, so a skip there would hide a broken test).
    fn test_ring() -> Option<Ring> {
        match Ring::builder().build(8) {
            Ok(r) => Some(r),
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI: no io_uring here ({e})"
                );
                eprintln!("no io_uring here ({e}); skipping");
                None
            }
        }
    }

    #[test]
    fn control_commands_go_through_a_128_byte_sqe_ring() {
        // A pipe has no uring_cmd: the kernel answers EOPNOTSUPP, which
        // shows the command was built, submitted and reaped.
        let Some(ring) = test_ring() else { return };
        let (rx, _tx) = io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(rx));
        let mut c = Control { ring, file };
        let mut f = 0u64;
        let e = c
            .run(Cmd::GetFeatures, u32::MAX, 0, Some(f.as_mut_bytes()))
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EOPNOTSUPP), "{e}");
        assert_eq!(
            e.to_string(),
            "GET_FEATURES failed: Operation not supported"
        );
        let e = c.run_gone_ok(Cmd::StopDev, 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            "STOP_DEV (ublk device 7) failed: Operation not supported"
        );
        // Linux 6.x's /dev/null takes any uring_cmd and answers 0.
        let Some(ring) = test_ring() else { return };
        let mut c = Control {
            ring,
            file: File::open("/dev/null").unwrap(),
        };
        match c.run(Cmd::StopDev, 7, 0, None) {
            Ok(r) => assert_eq!(r, 0),
            Err(e) => assert_eq!(e.errno(), Some(Errno::EOPNOTSUPP)),
        }
    }

    #[test]
    fn wake_up_read_and_its_cancel_through_io_uring() {
        let Some(mut ring) = test_ring() else { return };
        let m = Arc::new(Mailbox::new().unwrap());
        let mut buf = Box::new([0u8; 64]);
        let read = opcode::Read::new(types::Fd(m.rx.as_raw_fd()), buf.as_mut_ptr(), 64)
            .build()
            .user_data(WAKE);
        push(&mut ring, &read.clone().into()).unwrap();
        ring.submit().unwrap();
        let poster = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                m.post(Done {
                    tag: 3,
                    res: Ok(()),
                    buf: vec![1; 8],
                })
            })
        };
        submit_and_wait(&ring).unwrap();
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        assert_eq!(cqes, vec![(WAKE, 1)]);
        poster.join().unwrap();
        let mut got = Vec::new();
        m.woken(&mut got);
        assert_eq!(
            (got[0].tag, got[0].res.is_ok(), got[0].buf.len()),
            (3, true, 8)
        );
        // Re-armed, then cancelled on the way out.
        push(&mut ring, &read.into()).unwrap();
        let cancel = opcode::AsyncCancel::new(WAKE).build().user_data(CANCEL);
        push(&mut ring, &cancel.into()).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            submit_and_wait(&ring).unwrap();
            seen.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        }
        seen.sort();
        assert_eq!(seen, vec![(CANCEL, 0), (WAKE, -(Errno::ECANCELED as i32))]);
    }

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
