//! The NBD bridge: the kernel's NBD driver talks to us over one end of a
//! socketpair, configured through the "nbd" generic-netlink family.
//!
//! Never the NBD_DO_IT ioctl: it parks a thread in the kernel for the life
//! of the device and systemd's SIGSTOP/SIGCONT sweep at switch-root breaks
//! it (the kernel then shuts the sockets down). With netlink the daemon
//! only serves a socket, and a dead socket can be replaced with
//! NBD_CMD_RECONFIGURE while the kernel holds I/O for the dead-connection
//! timeout.
//!
//! Batching (every system call is expensive in a guest without KVM): the
//! server reads the socket 64 KiB at a time and submits the requests of
//! one read under a session plug ([`session::plug`]), so their SCSI
//! commands leave in one write; replies are queued and one vectored write
//! per batch sends them (each reply's data right behind its header, a
//! read's data straight from its buffer), written when the session's
//! reader has handled everything it received ([`session::at_reader_idle`]).
//!
//! Wire protocol (the kernel is the client, big-endian): request = magic
//! 0x25609513, u16 flags + u16 type, 8-byte handle, u64 offset, u32 length
//! (+ data for writes); reply = magic 0x67446698, u32 error (errno), handle
//! (+ data for successful reads).

use std::fmt;
use std::io::{self, BufReader, IoSlice, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Backend, BlockError, BlockOp};
use crate::completion::{Done, Sink, Slots};
use crate::iscsi::session;
use crate::netlink::{self, GenlSocket, MsgBuilder, NLM_F_ACK, NLM_F_REQUEST, NetlinkError, Reply};

// include/uapi/linux/nbd-netlink.h
pub const NBD_GENL_FAMILY_NAME: &str = "nbd";
pub const NBD_GENL_VERSION: u8 = 1;
pub const NBD_CMD_CONNECT: u8 = 1;
pub const NBD_CMD_DISCONNECT: u8 = 2;
pub const NBD_CMD_RECONFIGURE: u8 = 3;
pub const NBD_ATTR_INDEX: u16 = 1;
pub const NBD_ATTR_SIZE_BYTES: u16 = 2;
pub const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
pub const NBD_ATTR_TIMEOUT: u16 = 4;
pub const NBD_ATTR_SERVER_FLAGS: u16 = 5;
pub const NBD_ATTR_CLIENT_FLAGS: u16 = 6;
pub const NBD_ATTR_SOCKETS: u16 = 7;
pub const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
pub const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
pub const NBD_SOCK_ITEM: u16 = 1;
pub const NBD_SOCK_FD: u16 = 1;

// include/uapi/linux/nbd.h: transmission flags.
pub const NBD_FLAG_HAS_FLAGS: u64 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u64 = 1 << 1;
pub const NBD_FLAG_SEND_FLUSH: u64 = 1 << 2;
pub const NBD_FLAG_SEND_FUA: u64 = 1 << 3;
pub const NBD_FLAG_SEND_TRIM: u64 = 1 << 5;
pub const NBD_FLAG_SEND_WRITE_ZEROES: u64 = 1 << 6;

pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
pub const NBD_REPLY_MAGIC: u32 = 0x6744_6698;
pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;
pub const NBD_CMD_TRIM: u16 = 4;
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;

pub const REQUEST_LEN: usize = 28;
pub const REPLY_LEN: usize = 16;
/// Largest request we accept (the kernel splits below its max_sectors).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Each request buffer's size, and the device's largest request (its
/// max_sectors_kb, set when it is made): 32 buffers of it are 8 MiB, and
/// 256 KiB requests are as fast as larger ones over one iSCSI session.
pub const BUFFER_BYTES: usize = 256 << 10;

/// One request from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub cmd: u16,
    pub handle: [u8; 8],
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub fn parse(b: &[u8; REQUEST_LEN]) -> Result<Request, String> {
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != NBD_REQUEST_MAGIC {
            return Err(format!("bad NBD request magic 0x{magic:08x}"));
        }
        let mut handle = [0u8; 8];
        handle.copy_from_slice(&b[8..16]);
        Ok(Request {
            flags: u16::from_be_bytes([b[4], b[5]]),
            cmd: u16::from_be_bytes([b[6], b[7]]),
            handle,
            offset: u64::from_be_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]),
            len: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
        })
    }

    pub fn emit(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.cmd.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle);
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

pub fn reply_header(error: u32, handle: &[u8; 8]) -> [u8; REPLY_LEN] {
    let mut b = [0u8; REPLY_LEN];
    b[0..4].copy_from_slice(&NBD_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(handle);
    b
}

/// Map a request to a block operation on `block_size`-byte blocks.
pub fn to_op(r: &Request, block_size: u32) -> Result<BlockOp, BlockError> {
    let bs = u64::from(block_size);
    let aligned = r.offset.is_multiple_of(bs) && u64::from(r.len).is_multiple_of(bs);
    let lba = r.offset / bs;
    let blocks = (u64::from(r.len) / bs) as u32;
    match r.cmd {
        NBD_CMD_FLUSH => Ok(BlockOp::Flush),
        _ if !aligned => Err(BlockError::Io(format!(
            "request at {}+{} is not aligned to {block_size}-byte blocks",
            r.offset, r.len
        ))),
        NBD_CMD_READ => Ok(BlockOp::Read { lba, blocks }),
        NBD_CMD_WRITE => Ok(BlockOp::Write {
            lba,
            blocks,
            fua: r.flags & NBD_CMD_FLAG_FUA != 0,
        }),
        NBD_CMD_TRIM => Ok(BlockOp::Discard { lba, blocks }),
        NBD_CMD_WRITE_ZEROES => Ok(BlockOp::WriteZeroes { lba, blocks }),
        other => Err(BlockError::Io(format!("unknown NBD command {other}"))),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct NbdOptions {
    /// A specific /dev/nbdN, or the first free one.
    pub index: Option<u32>,
    /// How long the kernel holds I/O when our socket dies, waiting for a
    /// RECONFIGURE with a new one (a restarted daemon).
    pub dead_conn_timeout: Duration,
    /// Per-request timeout in the kernel; zero: requests never fail on time
    /// (for a root disk the daemon decides when to give up).
    pub io_timeout: Duration,
    /// Request buffers, allocated up front ([`BUFFER_BYTES`] each): how
    /// many requests can be in flight to the target at once.
    pub buffers: usize,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            index: None,
            dead_conn_timeout: Duration::from_secs(3600),
            io_timeout: Duration::ZERO,
            buffers: 32,
        }
    }
}

#[derive(Debug)]
pub enum NbdError {
    Netlink(NetlinkError),
    Io(String),
}

impl fmt::Display for NbdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdError::Netlink(e) => write!(f, "NBD: {e}"),
            NbdError::Io(m) => write!(f, "NBD: {m}"),
        }
    }
}

impl std::error::Error for NbdError {}

impl From<NetlinkError> for NbdError {
    fn from(e: NetlinkError) -> Self {
        NbdError::Netlink(e)
    }
}

/// Why NBD's queues get the short request timer ([`super::QUEUE_TIMEOUT`]):
/// requests the kernel had sent over a socket that died with its daemon
/// (SIGKILL, crash) are not resent when a new daemon gives the device a new
/// socket (NBD_CMD_RECONFIGURE); the driver resends them only when the block
/// layer's timer for each fires and it sees the socket changed. With our NBD
/// timeout of 0 that timer is the queue's default, 30 s: a filesystem stalled
/// ~30 s after every take-over. At 5 s they are resent within 5 s. It cannot
/// fail I/O: with the NBD timeout 0 the driver only re-arms the timer of a
/// request on a live socket (and logs "Possible stuck request", every 5 s now
/// while a reconnect takes long) and never errors it out on time.
///
/// Only when the device is made, never after a RECONFIGURE: writing it then
/// deadlocked in an earlier experiment. A RECONFIGURE without
/// NBD_ATTR_TIMEOUT keeps the value set here.
fn set_queue_timeout(index: u32) {
    super::set_queue_timeout(&format!("nbd{index}"));
}

/// Cap the device's requests at the request buffers' size; the kernel
/// splits larger I/O. Without it a larger request is served from a buffer
/// allocated for it.
fn set_max_request(index: u32, bytes: usize) {
    let path = format!("/sys/block/nbd{index}/queue/max_sectors_kb");
    if let Err(e) = std::fs::write(&path, (bytes >> 10).to_string()) {
        log::warn!("{path}: cannot set {} KiB: {e}", bytes >> 10);
    }
}

/// A connected /dev/nbdN being served.
pub struct NbdDevice {
    index: u32,
    family: u16,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    ctl: UnixStream,
}

/// The transmission flags for what the backend can do.
pub fn server_flags(b: &dyn Backend) -> u64 {
    let i = b.info();
    flags_for(&Caps {
        write_cache: i.write_cache,
        fua: i.fua,
        read_only: i.write_protected,
        unmap: i.can_unmap(),
        write_zeroes: i.can_write_same(),
    })
}

/// What the LU can do, as NBD's transmission flags say it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caps {
    /// WCE of the caching mode page; `None` when the LU did not say.
    pub write_cache: Option<bool>,
    pub fua: bool,
    pub read_only: bool,
    pub unmap: bool,
    pub write_zeroes: bool,
}

/// Flush and FUA only for a volatile write cache (WCE, or unknown: a
/// needless flush costs a round trip, a missing one loses data); without
/// them the kernel treats the device as write-through, as ublk's
/// VOLATILE_CACHE attribute does.
pub fn flags_for(c: &Caps) -> u64 {
    let mut f = NBD_FLAG_HAS_FLAGS;
    if c.write_cache != Some(false) {
        f |= NBD_FLAG_SEND_FLUSH;
        if c.fua {
            f |= NBD_FLAG_SEND_FUA;
        }
    }
    if c.read_only {
        f |= NBD_FLAG_READ_ONLY;
    }
    if c.unmap {
        f |= NBD_FLAG_SEND_TRIM;
    }
    if c.write_zeroes {
        f |= NBD_FLAG_SEND_WRITE_ZEROES;
    }
    f
}

impl NbdDevice {
    /// Connect a free (or the given) NBD device to `backend` and serve it.
    pub fn create(
        backend: Arc<dyn Backend>,
        opts: NbdOptions,
        identifier: &str,
    ) -> Result<NbdDevice, NbdError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| NbdError::Io(format!("socketpair: {e}")))?;
        let mut nl = GenlSocket::open()?;
        let family = nl.family_id(NBD_GENL_FAMILY_NAME)?;
        let info = backend.info();
        let size = info
            .capacity
            .bytes()
            .ok_or_else(|| NbdError::Io("the LU is larger than 16 EiB".into()))?;
        let seq = nl.next_seq();
        let mut m = MsgBuilder::genl(
            family,
            NBD_CMD_CONNECT,
            NBD_GENL_VERSION,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        );
        if let Some(i) = opts.index {
            m.u32(NBD_ATTR_INDEX, i);
        }
        m.u64(NBD_ATTR_SIZE_BYTES, size)
            .u64(NBD_ATTR_BLOCK_SIZE_BYTES, u64::from(info.block_size()))
            .u64(NBD_ATTR_TIMEOUT, opts.io_timeout.as_secs())
            .u64(NBD_ATTR_DEAD_CONN_TIMEOUT, opts.dead_conn_timeout.as_secs())
            .u64(NBD_ATTR_SERVER_FLAGS, server_flags(backend.as_ref()))
            .u64(NBD_ATTR_CLIENT_FLAGS, 0)
            .string(NBD_ATTR_BACKEND_IDENTIFIER, identifier);
        m.begin_nested(NBD_ATTR_SOCKETS)
            .begin_nested(NBD_SOCK_ITEM)
            .u32(NBD_SOCK_FD, theirs.as_raw_fd() as u32)
            .end_nested()
            .end_nested();
        let replies = nl.request(&m.finish(), "NBD_CMD_CONNECT")?;
        let index = replies
            .iter()
            .find_map(|r| match r {
                Reply::Genl { attrs, .. } => netlink::attr(attrs, NBD_ATTR_INDEX)
                    .and_then(|v| v.get(0..4))
                    .map(|v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]])),
                _ => None,
            })
            .or(opts.index)
            .ok_or_else(|| {
                NbdError::Io("the kernel did not say which /dev/nbdN it connected".into())
            })?;
        // The kernel holds its own reference to its end now.
        drop(theirs);
        let ctl = ours
            .try_clone()
            .map_err(|e| NbdError::Io(format!("socket: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let server = spawn_server(ours, backend, opts.buffers, Arc::clone(&stop))?;
        log::info!("/dev/nbd{index} connected ({size} bytes)");
        set_queue_timeout(index);
        set_max_request(index, BUFFER_BYTES);
        // The driver scans partitions on the first open, not on connect:
        // open once so /dev/nbdNp1 exists when the caller says "ready" (an
        // initramfs without udev would otherwise wait for it forever).
        if let Err(e) = std::fs::File::open(format!("/dev/nbd{index}")) {
            log::warn!("/dev/nbd{index}: opening for the partition scan: {e}");
        }
        Ok(NbdDevice {
            index,
            family,
            stop,
            server: Some(server),
            ctl,
        })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn path(&self) -> String {
        format!("/dev/nbd{}", self.index)
    }

    /// Ask the kernel to disconnect the device (it sends NBD_CMD_DISC after
    /// the requests in flight), then wait for the server to finish.
    pub fn disconnect(mut self) -> Result<(), NbdError> {
        let r = disconnect(self.family, self.index);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        let _ = self.ctl.shutdown(std::net::Shutdown::Both);
        r
    }

    /// Serve until the kernel disconnects us.
    pub fn wait(&mut self) {
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

/// NBD_CMD_DISCONNECT for /dev/nbd`index` (from any process: `detach`).
pub fn disconnect(family: u16, index: u32) -> Result<(), NbdError> {
    let mut nl = GenlSocket::open()?;
    let seq = nl.next_seq();
    let m = MsgBuilder::genl(
        family,
        NBD_CMD_DISCONNECT,
        NBD_GENL_VERSION,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
    .u32(NBD_ATTR_INDEX, index)
    .finish();
    nl.request(&m, "NBD_CMD_DISCONNECT")?;
    Ok(())
}

/// NBD_CMD_DISCONNECT by device index, looking the family up.
pub fn disconnect_index(index: u32) -> Result<(), NbdError> {
    let family = GenlSocket::open()?.family_id(NBD_GENL_FAMILY_NAME)?;
    disconnect(family, index)
}

/// Give a connected device a new size (NBD_CMD_RECONFIGURE with
/// NBD_ATTR_SIZE_BYTES, Linux 5.3+): the kernel updates the capacity and
/// tells udev. `identifier` as for [`reconfigure`].
pub fn resize(index: u32, bytes: u64, identifier: &str) -> Result<(), NbdError> {
    let (mut nl, mut m) = reconfigure_request(index, identifier)?;
    m.u64(NBD_ATTR_SIZE_BYTES, bytes);
    nl.request(&m.finish(), "NBD_CMD_RECONFIGURE (size)")?;
    Ok(())
}

/// An NBD_CMD_RECONFIGURE for /dev/nbd`index` carrying the backend
/// `identifier` (the kernel refuses one without it), and the socket to
/// send it on; the caller adds what changes.
fn reconfigure_request(index: u32, identifier: &str) -> Result<(GenlSocket, MsgBuilder), NbdError> {
    let mut nl = GenlSocket::open()?;
    let family = nl.family_id(NBD_GENL_FAMILY_NAME)?;
    let seq = nl.next_seq();
    let mut m = MsgBuilder::genl(
        family,
        NBD_CMD_RECONFIGURE,
        NBD_GENL_VERSION,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    );
    m.u32(NBD_ATTR_INDEX, index)
        .string(NBD_ATTR_BACKEND_IDENTIFIER, identifier);
    Ok((nl, m))
}

/// Give a connected device a new socket (NBD_CMD_RECONFIGURE), e.g. after
/// the daemon restarted, and serve it.
/// `identifier` must be the one the device was connected with (the
/// kernel refuses a reconfigure without it: "must specify backend").
pub fn reconfigure(
    index: u32,
    backend: Arc<dyn Backend>,
    buffers: usize,
    identifier: &str,
) -> Result<JoinHandle<()>, NbdError> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| NbdError::Io(format!("socketpair: {e}")))?;
    let (mut nl, mut m) = reconfigure_request(index, identifier)?;
    m.begin_nested(NBD_ATTR_SOCKETS)
        .begin_nested(NBD_SOCK_ITEM)
        .u32(NBD_SOCK_FD, theirs.as_raw_fd() as u32)
        .end_nested()
        .end_nested();
    nl.request(&m.finish(), "NBD_CMD_RECONFIGURE")?;
    drop(theirs);
    spawn_server(ours, backend, buffers, Arc::new(AtomicBool::new(false)))
}

fn spawn_server(
    sock: UnixStream,
    backend: Arc<dyn Backend>,
    buffers: usize,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, NbdError> {
    crate::threads::named("nbd-rx")
        .spawn(move || {
            crate::daemon::io_thread();
            if let Err(e) = serve(sock, backend.as_ref(), buffers, &stop)
                && !stop.load(Ordering::SeqCst)
            {
                log::error!("NBD server stopped: {e}");
            }
        })
        .map_err(|e| NbdError::Io(format!("thread: {e}")))
}

/// The buffers of the requests in flight: a fixed set, allocated and
/// touched before the first request (the daemon's memory is locked, and a
/// root disk's server that allocates to write back dirty pages can
/// deadlock). When every buffer is in use the reader waits for one to come
/// back: the kernel's requests queue on the socket meanwhile.
struct Pool {
    free: Mutex<Free>,
    returned: Condvar,
    /// Each buffer's capacity: the device's largest request.
    bytes: usize,
}

/// The buffers not in use, and whether the reader waits for one: a
/// completion wakes it only then (a futex wake is a system call even
/// with nobody waiting, and there is one per batch of replies).
struct Free {
    bufs: Vec<Vec<u8>>,
    waiting: bool,
}

/// How long the reader waits for a buffer before it allocates one more: a
/// buffer a backend never gave back must not stop the device.
const POOL_WAIT: Duration = Duration::from_secs(2);

impl Pool {
    fn new(count: usize, bytes: usize) -> Pool {
        // Non-zero fill: zero pages would be mapped only at first use.
        let free = (0..count).map(|_| vec![0x5au8; bytes]).collect();
        Pool {
            free: Mutex::new(Free {
                bufs: free,
                waiting: false,
            }),
            returned: Condvar::new(),
            bytes,
        }
    }

    /// A buffer of `len` bytes; waits while all are in use. `idle` runs
    /// before a wait (it sends the requests held back, whose completions
    /// bring buffers back).
    fn get(&self, len: usize, idle: impl FnOnce()) -> Vec<u8> {
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if f.bufs.is_empty() {
            drop(f);
            idle();
            f = self.free.lock().unwrap_or_else(|p| p.into_inner());
            f.waiting = true;
            let (mut g, _) = self
                .returned
                .wait_timeout_while(f, POOL_WAIT, |f| f.bufs.is_empty())
                .unwrap_or_else(|p| p.into_inner());
            g.waiting = false;
            f = g;
        }
        let mut b = f.bufs.pop().unwrap_or_else(|| {
            log::warn!(
                "NBD: no request buffer came back within {} s: allocating one more",
                POOL_WAIT.as_secs()
            );
            Vec::with_capacity(self.bytes)
        });
        drop(f);
        if len > b.capacity() {
            log::warn!("NBD: a {len}-byte request above the device's largest: allocating");
        }
        // Same allocation when large enough (the whole buffer was
        // initialised, so this only moves the length).
        b.resize(len, 0);
        b
    }

    fn put_all(&self, bufs: impl Iterator<Item = Vec<u8>>) {
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for mut b in bufs {
            // One that grew for an oversized request goes back to size.
            if b.capacity() > self.bytes {
                b.clear();
                b.shrink_to(self.bytes);
            }
            f.bufs.push(b);
        }
        let wake = f.waiting;
        drop(f);
        if wake {
            self.returned.notify_one();
        }
    }
}

/// A reply waiting to be written: its header, and the request's buffer
/// (sent after the header for a successful read, else only returned to
/// the pool).
struct Outgoing {
    hdr: [u8; REPLY_LEN],
    buf: Vec<u8>,
    with_data: bool,
}

/// Replies on their way to the kernel, written in batches: a completion
/// queues its reply, and one write (header and data of every reply in the
/// batch, each reply's data right after its header) sends all that queued
/// up meanwhile. Completions run on the session's reader thread, which
/// writes the batch when it has handled what it received (see
/// [`session::at_reader_idle`]); anywhere else the reply is written at
/// once.
struct Replies {
    /// Held for a whole batch: batches never interleave on the socket.
    sock: Mutex<UnixStream>,
    queue: Mutex<ReplyQueue>,
    pool: Arc<Pool>,
    /// Requests with the backend, by slot (one per buffer: no more can be
    /// in flight), so a completion allocates nothing.
    sent: Slots<Request>,
}

impl session::Idle for Replies {
    fn idle(self: Arc<Self>) {
        self.write();
    }
}

impl Sink<Result<(), BlockError>> for Replies {
    fn done(self: Arc<Self>, token: usize, r: Result<(), BlockError>, buf: Vec<u8>) {
        if let Some(req) = self.sent.finish(token, "NBD") {
            self.push(&req, r, buf);
        }
    }
}

struct ReplyQueue {
    items: Vec<Outgoing>,
    /// A write of the queue is due (a reader thread will do it): later
    /// replies join that batch.
    scheduled: bool,
    /// The previous batch's vector, kept for its allocation.
    spare: Vec<Outgoing>,
}

impl Replies {
    fn push(self: &Arc<Self>, req: &Request, res: Result<(), BlockError>, buf: Vec<u8>) {
        let err = match &res {
            Ok(()) => 0,
            Err(e) => (-e.errno()) as u32,
        };
        let with_data = req.cmd == NBD_CMD_READ && res.is_ok();
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.items.push(Outgoing {
                hdr: reply_header(err, &req.handle),
                buf,
                with_data,
            });
            if q.scheduled {
                return;
            }
            q.scheduled = true;
        }
        if let Err(job) = session::at_reader_idle(session::IdleJob::Wake(self.clone())) {
            job.run();
        }
    }

    /// Write every queued reply.
    fn write(&self) {
        let mut sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let mut items = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.scheduled = false;
            let spare = std::mem::take(&mut q.spare);
            std::mem::replace(&mut q.items, spare)
        };
        if items.is_empty() {
            return;
        }
        let r = {
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(items.len() * 2);
            for o in &items {
                iov.push(IoSlice::new(&o.hdr));
                if o.with_data && !o.buf.is_empty() {
                    iov.push(IoSlice::new(&o.buf));
                }
            }
            crate::iscsi::conn::write_all_vectored(&mut *sock, &mut iov)
        };
        drop(sock);
        if let Err(e) = r {
            log::error!(
                "NBD: cannot reply to the kernel ({} replies lost): {e}",
                items.len()
            );
        }
        self.pool.put_all(items.drain(..).map(|o| o.buf));
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.spare.capacity() < items.capacity() {
            q.spare = items;
        }
    }
}

fn serve(
    sock: UnixStream,
    backend: &dyn Backend,
    buffers: usize,
    stop: &AtomicBool,
) -> io::Result<()> {
    let pool = Arc::new(Pool::new(buffers, BUFFER_BYTES));
    let replies = Arc::new(Replies {
        sock: Mutex::new(sock.try_clone()?),
        queue: Mutex::new(ReplyQueue {
            items: Vec::with_capacity(buffers),
            scheduled: false,
            spare: Vec::with_capacity(buffers),
        }),
        pool: Arc::clone(&pool),
        sent: Slots::with_capacity(buffers),
    });
    let mut r = BufReader::with_capacity(64 * 1024, sock);
    let bs = backend.info().block_size();
    // Requests that arrived together (one read from the socket) go to the
    // target together: the commands are held back until the next read
    // would block.
    let plug = session::plug();
    loop {
        if r.buffer().len() < REQUEST_LEN {
            plug.flush();
        }
        let mut hdr = [0u8; REQUEST_LEN];
        if let Err(e) = r.read_exact(&mut hdr) {
            if stop.load(Ordering::SeqCst) || e.kind() == io::ErrorKind::UnexpectedEof {
                return Ok(());
            }
            return Err(e);
        }
        let req =
            Request::parse(&hdr).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if req.cmd == NBD_CMD_DISC {
            log::info!("NBD: the kernel disconnected");
            return Ok(());
        }
        // Only reads and writes carry data; a discard may span gigabytes.
        if matches!(req.cmd, NBD_CMD_READ | NBD_CMD_WRITE) && req.len > MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("NBD request of {} bytes above {MAX_REQUEST}", req.len),
            ));
        }
        let len = match req.cmd {
            NBD_CMD_READ | NBD_CMD_WRITE => req.len as usize,
            _ => 0,
        };
        let mut buf = pool.get(len, || plug.flush());
        if req.cmd == NBD_CMD_WRITE {
            if r.buffer().len() < buf.len() {
                plug.flush();
            }
            r.read_exact(&mut buf)?;
        }
        let op = match to_op(&req, bs) {
            Ok(op) => op,
            Err(e) => {
                log::error!("NBD: {e}");
                replies.push(&req, Err(e), buf);
                continue;
            }
        };
        let slot = replies.sent.insert(req);
        backend.submit(op, buf, Done::slot(replies.clone(), slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_and_fua_follow_the_write_cache() {
        let caps = |write_cache| Caps {
            write_cache,
            fua: true,
            ..Caps::default()
        };
        let both = NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA;
        assert_eq!(flags_for(&caps(Some(true))) & both, both);
        assert_eq!(flags_for(&caps(None)) & both, both, "unknown: volatile");
        assert_eq!(flags_for(&caps(Some(false))) & both, 0, "write-through");
        let no_fua = Caps {
            fua: false,
            ..caps(Some(true))
        };
        assert_eq!(flags_for(&no_fua) & both, NBD_FLAG_SEND_FLUSH);
    }

    #[test]
    fn request_round_trip() {
        let r = Request {
            flags: NBD_CMD_FLAG_FUA,
            cmd: NBD_CMD_WRITE,
            handle: *b"handle01",
            offset: 4096 * 7,
            len: 8192,
        };
        assert_eq!(Request::parse(&r.emit()), Ok(r));
        let mut bad = r.emit();
        bad[0] = 0;
        assert!(Request::parse(&bad).is_err());
        let h = reply_header(5, b"handle01");
        assert_eq!(&h[0..4], &NBD_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&h[4..8], &5u32.to_be_bytes());
    }

    #[test]
    fn replies_carry_read_data_right_behind_their_header() {
        let (ours, mut kernel) = UnixStream::pair().unwrap();
        let pool = Arc::new(Pool::new(0, 8));
        let replies = Arc::new(Replies {
            sock: Mutex::new(ours),
            queue: Mutex::new(ReplyQueue {
                items: Vec::new(),
                scheduled: false,
                spare: Vec::new(),
            }),
            pool: Arc::clone(&pool),
            sent: Slots::with_capacity(0),
        });
        let req = |cmd: u16, h: &[u8; 8]| Request {
            flags: 0,
            cmd,
            handle: *h,
            offset: 0,
            len: 8,
        };
        // Not on a session's reader thread: each reply is written at once.
        replies.push(&req(NBD_CMD_READ, b"read-ok!"), Ok(()), vec![7u8; 8]);
        replies.push(&req(NBD_CMD_WRITE, b"write-ok"), Ok(()), vec![1u8; 8]);
        replies.push(
            &req(NBD_CMD_READ, b"read-bad"),
            Err(BlockError::Io("x".into())),
            vec![9u8; 8],
        );
        let mut got = vec![0u8; 3 * REPLY_LEN + 8];
        kernel.read_exact(&mut got).unwrap();
        let mut want = reply_header(0, b"read-ok!").to_vec();
        want.extend_from_slice(&[7u8; 8]);
        want.extend_from_slice(&reply_header(0, b"write-ok"));
        want.extend_from_slice(&reply_header(5, b"read-bad"));
        assert_eq!(got, want);
        assert_eq!(
            pool.free.lock().unwrap().bufs.len(),
            3,
            "buffers back in the pool"
        );
        assert!(!replies.queue.lock().unwrap().scheduled);
    }

    #[test]
    fn pool_wakes_a_waiting_reader_when_a_buffer_comes_back() {
        let pool = Arc::new(Pool::new(1, 16));
        let first = pool.get(8, || {});
        assert_eq!(first.len(), 8);
        assert!(!pool.free.lock().unwrap().waiting);
        let p = Arc::clone(&pool);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            // Every buffer is out: the idle hook runs, then it waits.
            let b = p.get(16, || tx.send(()).unwrap());
            b.len()
        });
        rx.recv().unwrap();
        // Give it back only once the reader waits (not a timing: the
        // loop ends when the flag is seen, however long that takes).
        while !pool.free.lock().unwrap().waiting {
            std::thread::yield_now();
        }
        pool.put_all(std::iter::once(first));
        assert_eq!(reader.join().unwrap(), 16);
        let f = pool.free.lock().unwrap();
        assert!(!f.waiting && f.bufs.is_empty());
    }

    #[test]
    fn ops() {
        let mut r = Request {
            flags: 0,
            cmd: NBD_CMD_READ,
            handle: [0; 8],
            offset: 1024,
            len: 2048,
        };
        assert_eq!(to_op(&r, 512), Ok(BlockOp::Read { lba: 2, blocks: 4 }));
        assert!(to_op(&r, 4096).is_err(), "unaligned for 4K blocks");
        r.cmd = NBD_CMD_WRITE;
        r.flags = NBD_CMD_FLAG_FUA;
        assert_eq!(
            to_op(&r, 512),
            Ok(BlockOp::Write {
                lba: 2,
                blocks: 4,
                fua: true
            })
        );
        r.cmd = NBD_CMD_TRIM;
        assert_eq!(to_op(&r, 512), Ok(BlockOp::Discard { lba: 2, blocks: 4 }));
        r.cmd = NBD_CMD_FLUSH;
        assert_eq!(to_op(&r, 512), Ok(BlockOp::Flush));
        r.cmd = 99;
        assert!(to_op(&r, 512).is_err());
    }
}
