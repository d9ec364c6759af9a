//! The full-feature phase of a session (RFC 7143 §4, §11): many SCSI
//! commands in flight over one connection.
//!
//! Three parts:
//! - the **task table**: one slot per command in flight, addressed by the
//!   Initiator Task Tag (slot number plus a generation, so a late or forged
//!   answer to a finished command is caught instead of completing a new one);
//! - the **writer thread**: sends commands in CmdSN order while the target's
//!   window (ExpCmdSN..MaxCmdSN) is open, Data-Out for R2Ts and unsolicited
//!   data, NOP-Out answers and pings, task management and logout. It batches
//!   whatever is queued into one vectored write;
//! - the **reader thread**: parses every PDU from the target, checks it
//!   against the task it names, reads Data-In payload straight into the
//!   command's buffer and completes commands.
//!
//! A command's buffer is owned by the session while the command runs and
//! handed back with its completion: nothing on the data path is copied
//! between the socket and the caller's buffer.
//!
//! When the connection fails every command in flight completes with the
//! error (recovery lives above this layer). Hostile input — an unknown ITT,
//! Data-In beyond the buffer, DataSN out of order, an R2T for a read — is a
//! protocol error that drops the connection with a message naming the PDU.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::conn::{ConnError, FrameParams, PduReader, PduWriter, TxPdu};
use super::escalate::{self, Step};
use super::pdu::*;

/// What a session negotiated that the full-feature phase needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FfpParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we accept.
    pub max_recv_data_segment: u32,
    /// Largest data segment the target accepts (its MaxRecvDataSegmentLength).
    pub max_send_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
}

/// Sequence numbers at the end of login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnState {
    pub cmd_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Tunables of the full-feature phase.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Commands in flight at most (task slots).
    pub queue_depth: u16,
    /// Send a NOP-Out ping after this much silence from the target.
    pub nop_interval: Option<Duration>,
    /// Declare the connection dead when a ping is unanswered this long.
    pub nop_timeout: Duration,
    /// A SCSI command sent this long ago without a final answer (a target
    /// that answers pings but not commands) is handled as the kernel's
    /// SCSI error handling does ([`super::escalate`]): ABORT TASK and a
    /// retry, LOGICAL UNIT RESET and a retry, then the connection is
    /// dropped: every command in flight fails with
    /// [`SessionError::CommandTimeout`] and the recovery layer retries
    /// them on a new connection. `None`: wait for ever.
    pub cmd_timeout: Option<Duration>,
    /// How long a task management function of that handling may go
    /// unanswered before the next step.
    pub tmf_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            queue_depth: 128,
            nop_interval: Some(Duration::from_secs(5)),
            nop_timeout: Duration::from_secs(10),
            cmd_timeout: Some(DEFAULT_CMD_TIMEOUT),
            tmf_timeout: DEFAULT_TMF_TIMEOUT,
        }
    }
}

/// Target pings (NOP-In with a TTT) waiting for our NOP-Out at most.
const MAX_NOP_REPLIES: usize = 16;

/// An R2T for the write in `slot` may be queued only while fewer than
/// MaxOutstandingR2T (as negotiated) of that task's R2T bursts still wait
/// to be sent: a target that asks for more breaks the negotiated limit
/// (RFC 7143 §13.17), and its requests must not pile up in memory.
/// Unsolicited data (TTT 0xffffffff) is not an R2T.
fn check_outstanding_r2t(queue: &VecDeque<Ctl>, slot: u16, max: u32) -> Result<(), String> {
    let waiting = queue
        .iter()
        .filter(|c| matches!(c, Ctl::DataOut { slot: s, ttt, .. } if *s == slot && *ttt != RESERVED_TAG))
        .count();
    if waiting as u64 >= u64::from(max.max(1)) {
        return Err(format!(
            "an R2T while {waiting} of its R2Ts wait for data (MaxOutstandingR2T={max})"
        ));
    }
    Ok(())
}

/// [`SessionOptions::cmd_timeout`] by default: the kernel's sd uses 30 s.
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// [`SessionOptions::tmf_timeout`] by default: the kernel's SCSI error
/// handler waits 10 s for an abort or a reset.
pub const DEFAULT_TMF_TIMEOUT: Duration = Duration::from_secs(10);

/// Asynchronous messages (and Rejects that name no task of ours) a target
/// may send in a burst before the rest are dropped, and how many more it
/// earns per second: each is logged, and a flood must neither fill the
/// log nor the event queue.
const EVENT_BURST: u32 = 16;

/// Why a command or the session failed.
#[derive(Debug, Clone)]
pub enum SessionError {
    /// The connection is gone (I/O error, closed, or dropped by us).
    ConnectionLost(String),
    /// The target broke the protocol; the connection was dropped.
    Protocol(String),
    /// The target rejected the PDU (Reject reason code).
    Rejected { reason: u8, what: &'static str },
    /// iSCSI response "target failure" (not a SCSI status).
    TargetFailure(u8),
    /// A task management function was refused (response code).
    TaskManagement(u8),
    /// The session was logged out or is closing.
    Closed,
    /// NOP-Out ping not answered in time.
    PingTimeout(Duration),
    /// A SCSI command (its CDB's operation code) had no answer in time,
    /// and what was tried about it (ABORT TASK, LOGICAL UNIT RESET: see
    /// [`super::escalate`]) did not help; the connection was dropped.
    CommandTimeout {
        opcode: u8,
        after: Duration,
        tried: String,
    },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::ConnectionLost(m) => write!(f, "connection lost: {m}"),
            SessionError::Protocol(m) => write!(f, "protocol error from target: {m}"),
            SessionError::Rejected { reason, what } => {
                write!(f, "target rejected the PDU: {what} (reason 0x{reason:02x})")
            }
            SessionError::TargetFailure(r) => {
                write!(f, "target failure (iSCSI response 0x{r:02x})")
            }
            SessionError::TaskManagement(r) => write!(
                f,
                "task management function failed: {}",
                tmf_response_name(*r)
            ),
            SessionError::Closed => write!(f, "session closed"),
            SessionError::PingTimeout(d) => {
                write!(f, "target did not answer a NOP-Out ping within {d:?}")
            }
            SessionError::CommandTimeout {
                opcode,
                after,
                tried,
            } => {
                write!(
                    f,
                    "a SCSI command (operation code 0x{opcode:02x}) got no answer within {} s",
                    after.as_secs_f64().round()
                )?;
                if !tried.is_empty() {
                    write!(f, " ({tried})")?;
                }
                write!(f, "; the connection was dropped")
            }
        }
    }
}

impl std::error::Error for SessionError {}

pub fn tmf_response_name(r: u8) -> &'static str {
    match r {
        0 => "function complete",
        1 => "task does not exist",
        2 => "LUN does not exist",
        3 => "task still allegiant",
        4 => "task allegiance reassignment not supported",
        5 => "task management function not supported",
        6 => "function authorization failed",
        255 => "function rejected",
        _ => "unknown response",
    }
}

fn reject_reason_name(r: u8) -> &'static str {
    match r {
        0x02 => "data (payload) digest error",
        0x03 => "SNACK reject",
        0x04 => "protocol error",
        0x05 => "command not supported",
        0x06 => "immediate command rejected: too many immediate commands",
        0x07 => "task in progress",
        0x08 => "invalid data ACK",
        0x09 => "invalid PDU field",
        0x0a => "long operation reject: out of resources",
        0x0c => "waiting for logout",
        _ => "unknown reason",
    }
}

/// How much of the transfer did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    /// The target moved this many bytes fewer than expected.
    Under(u32),
    /// The target wanted to move this many bytes more than expected.
    Over(u32),
}

/// The outcome of a SCSI command that reached the target and got status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResult {
    /// SCSI status byte (0 GOOD, 2 CHECK CONDITION, 8 BUSY, ...).
    pub status: u8,
    /// Sense data (without iSCSI's 2-byte SenseLength), when present.
    pub sense: Option<Vec<u8>>,
    pub residual: Residual,
    /// Bytes of Data-In received (reads).
    pub data_in: usize,
}

/// Direction and size of a command's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    None,
    /// Read up to this many bytes into the buffer.
    Read(u32),
    /// Write this many bytes from the buffer.
    Write(u32),
}

/// A SCSI command to run.
#[derive(Debug, Clone)]
pub struct Command {
    pub lun: u64,
    pub cdb: [u8; 16],
    pub dir: DataDir,
    /// Task attribute (1 simple, 2 ordered, 3 head of queue).
    pub attr: u8,
}

/// Called once when a command ends, with its buffer handed back. Runs on a
/// session thread: it must be quick (send on a channel, post a completion).
pub type Completion = Box<dyn FnOnce(Result<ScsiResult, SessionError>, Vec<u8>) + Send>;

/// Things the target told us outside any command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// AsyncEvent 0: a SCSI asynchronous event, with its sense data (e.g.
    /// REPORTED LUNS DATA HAS CHANGED, CAPACITY DATA HAS CHANGED).
    ScsiEvent { lun: [u8; 8], sense: Vec<u8> },
    /// AsyncEvent 1: the target asks us to log out within `within` seconds.
    LogoutRequested { within: u16 },
    /// AsyncEvent 2/3: the target is dropping the connection or session.
    Dropping {
        event: u8,
        time2wait: u16,
        time2retain: u16,
    },
    /// AsyncEvent 4: the target wants to renegotiate.
    NegotiationRequested,
    /// The connection failed; every command in flight has been failed.
    Failed(String),
}

enum TaskKind {
    Scsi,
    Ping,
    Tmf,
    Logout,
}

struct Task {
    generation: u16,
    kind: TaskKind,
    lun: [u8; 8],
    cdb: [u8; 16],
    dir: DataDir,
    attr: u8,
    /// The data buffer; `None` while the reader or writer is using it.
    buf: Option<Vec<u8>>,
    done: Option<Completion>,
    /// For control tasks (ping, TMF, logout): how to report the outcome.
    ctl_done: Option<Sender<Result<u8, SessionError>>>,
    cmd_sn: u32,
    next_data_sn: u32,
    data_in: usize,
    /// A result that arrived while the buffer was lent out.
    parked: Option<Result<ScsiResult, SessionError>>,
    /// Bytes already covered by immediate/unsolicited data (writes).
    unsolicited: u32,
    /// When the command went on the wire (SCSI tasks): its timeout runs
    /// from there, not from a wait for the command window.
    sent: Option<Instant>,
    /// R2Ts received (with the Data-In PDUs: what ExpDataSN counts).
    r2ts: u32,
    /// Times the command was sent again after a timeout.
    retries: u8,
}

enum Ctl {
    /// Answer a target NOP-In that asked for one.
    NopReply {
        ttt: u32,
        lun: [u8; 8],
        data: Vec<u8>,
    },
    /// Send Data-Out for a write: an R2T's burst or unsolicited data.
    DataOut {
        slot: u16,
        ttt: u32,
        offset: u32,
        len: u32,
    },
    /// An immediate control task already in the table (ping, TMF, logout).
    Immediate { slot: u16, pdu: Pdu },
}

struct State {
    tasks: Vec<Option<Task>>,
    free: Vec<u16>,
    next_gen: u16,
    cmd_queue: VecDeque<u16>,
    ctl_queue: VecDeque<Ctl>,
    sn: SnState,
    failed: Option<SessionError>,
    closing: bool,
    last_rx: Instant,
    ping_out: Option<(u16, Instant)>,
    events: Option<Sender<SessionEvent>>,
    /// Async messages the target may still send now (see [`EVENT_BURST`]).
    event_tokens: Tokens,
    /// The task management function out for an overdue command.
    escalation: Option<escalate::Pending>,
    /// Threads waiting on `slot_free` (a notify is a system call even with
    /// nobody waiting: skip it then).
    slot_waiters: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Writer: something to send, or the window opened.
    wake_writer: Condvar,
    /// Submitters: a slot became free.
    slot_free: Condvar,
    params: FfpParams,
    opts: SessionOptions,
    /// For shutting the socket down to unblock the threads.
    socket: TcpStream,
    /// The transmit side. Whoever holds it assigns CmdSNs and writes, so
    /// wire order is CmdSN order. Submitters write directly when it is
    /// free (no thread hop); the writer thread takes over when it is busy.
    tx: Mutex<PduWriter<TcpStream>>,
}

/// A logged-in session in its full-feature phase.
pub struct Session {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the table half-updated
    // in a way that matters more than losing the session; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn itt_of(slot: u16, generation: u16) -> u32 {
    (u32::from(generation) << 16) | u32::from(slot)
}

fn slot_of(itt: u32) -> (u16, u16) {
    ((itt & 0xffff) as u16, (itt >> 16) as u16)
}

impl Session {
    /// Start the full-feature phase on a logged-in connection. `reader`
    /// carries whatever it already buffered from the login exchange.
    pub fn start(
        socket: TcpStream,
        reader: PduReader<TcpStream>,
        params: FfpParams,
        sn: SnState,
        opts: SessionOptions,
        events: Option<Sender<SessionEvent>>,
    ) -> io::Result<Session> {
        let depth = opts.queue_depth.max(1);
        let frame = FrameParams {
            header_digest: params.header_digest,
            data_digest: params.data_digest,
            max_recv_data_segment: params.max_recv_data_segment as usize,
        };
        let mut reader = reader;
        reader.set_params(frame);
        let writer = PduWriter::new(socket.try_clone()?, frame);
        let _ = socket.set_nodelay(true);
        // A write blocked this long means the target stopped reading: the
        // connection is dead, and recovery must not wait forever on it.
        let _ = socket.set_write_timeout(Some(opts.nop_timeout.max(Duration::from_secs(5)) * 3));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                tasks: (0..depth).map(|_| None).collect(),
                free: (0..depth).rev().collect(),
                next_gen: 1,
                cmd_queue: VecDeque::with_capacity(usize::from(depth)),
                ctl_queue: VecDeque::new(),
                sn,
                failed: None,
                closing: false,
                last_rx: Instant::now(),
                ping_out: None,
                events,
                event_tokens: Tokens::new(EVENT_BURST, Instant::now()),
                escalation: None,
                slot_waiters: 0,
            }),
            wake_writer: Condvar::new(),
            slot_free: Condvar::new(),
            params,
            opts,
            socket: socket.try_clone()?,
            tx: Mutex::new(writer),
        });
        let r = Arc::clone(&shared);
        let reader_t = std::thread::Builder::new()
            .name("iscsi-rx".into())
            .spawn(move || reader_loop(r, reader))?;
        let w = Arc::clone(&shared);
        let writer_t = std::thread::Builder::new()
            .name("iscsi-tx".into())
            .spawn(move || writer_loop(w))?;
        Ok(Session {
            shared,
            threads: vec![reader_t, writer_t],
        })
    }

    pub fn params(&self) -> &FfpParams {
        &self.shared.params
    }

    /// The session's error, if it has failed.
    pub fn failure(&self) -> Option<SessionError> {
        lock(&self.shared.state).failed.clone()
    }

    /// Queue a SCSI command; `done` runs when it ends. Blocks while every
    /// task slot is busy. For a read, `buf` must be at least the read
    /// length; for a write, it holds the data.
    pub fn submit(&self, cmd: Command, buf: Vec<u8>, done: Completion) {
        let need = match cmd.dir {
            DataDir::None => 0,
            DataDir::Read(n) | DataDir::Write(n) => n as usize,
        };
        if buf.len() < need {
            done(
                Err(SessionError::Protocol(format!(
                    "buffer of {} bytes for a {need}-byte transfer",
                    buf.len()
                ))),
                buf,
            );
            return;
        }
        let mut st = lock(&self.shared.state);
        loop {
            if let Some(e) = st.failed.clone() {
                drop(st);
                done(Err(e), buf);
                return;
            }
            if st.closing {
                drop(st);
                done(Err(SessionError::Closed), buf);
                return;
            }
            if !st.free.is_empty() {
                break;
            }
            if PLUGGED.with(|p| p.borrow().is_some()) {
                // Commands this thread holds back may be what occupies the
                // slots: send them before waiting for one.
                drop(st);
                send_now(&self.shared);
                st = lock(&self.shared.state);
                if !st.free.is_empty() || st.failed.is_some() || st.closing {
                    continue;
                }
            }
            st.slot_waiters += 1;
            st = self
                .shared
                .slot_free
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
            st.slot_waiters -= 1;
        }
        let Some(slot) = alloc_slot(&mut st) else {
            drop(st);
            done(Err(SessionError::Closed), buf);
            return;
        };
        let generation = next_generation(&mut st);
        st.tasks[usize::from(slot)] = Some(Task {
            generation,
            kind: TaskKind::Scsi,
            lun: lun_field(cmd.lun),
            cdb: cmd.cdb,
            dir: cmd.dir,
            attr: cmd.attr,
            buf: Some(buf),
            done: Some(done),
            ctl_done: None,
            cmd_sn: 0,
            next_data_sn: 0,
            data_in: 0,
            parked: None,
            unsolicited: 0,
            sent: None,
            r2ts: 0,
            retries: 0,
        });
        st.cmd_queue.push_back(slot);
        drop(st);
        self.kick();
    }

    /// Get queued PDUs onto the wire: under a [`Plug`] (a reader thread is
    /// always plugged), leave them for the plug's batch; otherwise send
    /// them now.
    fn kick(&self) {
        let held = PLUGGED.with(|p| match p.borrow_mut().as_mut() {
            Some(list) => {
                if !list.iter().any(|s| Arc::ptr_eq(s, &self.shared)) {
                    list.push(Arc::clone(&self.shared));
                }
                true
            }
            None => false,
        });
        if !held {
            send_now(&self.shared);
        }
    }

    /// Run a command and wait for it.
    pub fn execute(
        &self,
        cmd: Command,
        buf: Vec<u8>,
    ) -> (Result<ScsiResult, SessionError>, Vec<u8>) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            cmd,
            buf,
            Box::new(move |r, b| {
                let _ = tx.send((r, b));
            }),
        );
        rx.recv().unwrap_or((Err(SessionError::Closed), Vec::new()))
    }

    /// Send an immediate control PDU that occupies a task slot and wait for
    /// its answer (ping, TMF, logout).
    fn control(
        &self,
        kind: TaskKind,
        make: impl FnOnce(u32, &SnState) -> Pdu,
        wait: Duration,
    ) -> Result<u8, SessionError> {
        let (tx, rx) = mpsc::channel();
        {
            let mut st = lock(&self.shared.state);
            if let Some(e) = st.failed.clone() {
                return Err(e);
            }
            let Some(slot) = alloc_slot(&mut st) else {
                return Err(SessionError::Protocol(
                    "no free task slot for a control command".into(),
                ));
            };
            let generation = next_generation(&mut st);
            let itt = itt_of(slot, generation);
            let pdu = make(itt, &st.sn);
            st.tasks[usize::from(slot)] = Some(Task::control(generation, kind, Some(tx)));
            st.ctl_queue.push_back(Ctl::Immediate { slot, pdu });
        }
        self.kick();
        match rx.recv_timeout(wait) {
            Ok(r) => r,
            Err(_) => Err(SessionError::ConnectionLost(format!(
                "no answer within {wait:?}"
            ))),
        }
    }

    /// LOGICAL UNIT RESET (RFC 7143 §11.5.1 function 5).
    pub fn lun_reset(&self, lun: u64) -> Result<(), SessionError> {
        let r = self.control(
            TaskKind::Tmf,
            |itt, sn| {
                Pdu::TaskMgmtRequest(TaskMgmtRequest {
                    function: TmfFunction::LogicalUnitReset,
                    lun: lun_field(lun),
                    itt,
                    ref_task_tag: RESERVED_TAG,
                    cmd_sn: sn.cmd_sn,
                    exp_stat_sn: sn.exp_stat_sn,
                    ref_cmd_sn: 0,
                    exp_data_sn: 0,
                })
            },
            Duration::from_secs(30),
        )?;
        if r == 0 {
            Ok(())
        } else {
            Err(SessionError::TaskManagement(r))
        }
    }

    /// ABORT TASK for a command still in flight, by its ITT.
    pub fn abort_task(&self, lun: u64, itt: u32, ref_cmd_sn: u32) -> Result<(), SessionError> {
        let r = self.control(
            TaskKind::Tmf,
            |t, sn| {
                Pdu::TaskMgmtRequest(TaskMgmtRequest {
                    function: TmfFunction::AbortTask,
                    lun: lun_field(lun),
                    itt: t,
                    ref_task_tag: itt,
                    cmd_sn: sn.cmd_sn,
                    exp_stat_sn: sn.exp_stat_sn,
                    ref_cmd_sn,
                    exp_data_sn: 0,
                })
            },
            Duration::from_secs(30),
        )?;
        // "Task does not exist" means it already completed: fine.
        if r == 0 || r == 1 {
            Ok(())
        } else {
            Err(SessionError::TaskManagement(r))
        }
    }

    /// Ping the target (NOP-Out with a reply requested) and wait.
    pub fn ping(&self, wait: Duration) -> Result<Duration, SessionError> {
        let t0 = Instant::now();
        self.control(TaskKind::Ping, ping_pdu, wait)?;
        Ok(t0.elapsed())
    }

    /// Log out (close the session) after the commands in flight finish, and
    /// stop the threads. The connection is closed either way.
    pub fn logout(mut self, wait: Duration) -> Result<(), SessionError> {
        let r = self.close(wait);
        self.stop();
        r
    }

    /// Log out (after the commands in flight finish) without owning the
    /// session: for a session shared by a bridge. The threads end when the
    /// target closes the connection; dropping the session joins them.
    pub fn close(&self, wait: Duration) -> Result<(), SessionError> {
        let deadline = Instant::now() + wait;
        // Let the commands in flight end first.
        {
            let mut st = lock(&self.shared.state);
            while st.failed.is_none() && st.tasks.iter().any(|t| t.is_some()) {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st.slot_waiters += 1;
                st = self
                    .shared
                    .slot_free
                    .wait_timeout(st, deadline - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                st.slot_waiters -= 1;
            }
        }
        let r = self.control(
            TaskKind::Logout,
            |itt, sn| {
                Pdu::LogoutRequest(LogoutRequest {
                    reason: LogoutReason::CloseSession,
                    itt,
                    cid: 0,
                    cmd_sn: sn.cmd_sn,
                    exp_stat_sn: sn.exp_stat_sn,
                })
            },
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        );
        {
            let mut st = lock(&self.shared.state);
            st.closing = true;
        }
        let _ = self.shared.socket.shutdown(Shutdown::Both);
        self.shared.wake_writer.notify_all();
        match r {
            Ok(0) => Ok(()),
            Ok(code) => Err(SessionError::Protocol(format!("logout response {code}"))),
            Err(e) => Err(e),
        }
    }

    fn stop(&mut self) {
        {
            let mut st = lock(&self.shared.state);
            st.closing = true;
            if st.failed.is_none() {
                st.failed = Some(SessionError::Closed);
            }
        }
        let _ = self.shared.socket.shutdown(Shutdown::Both);
        self.shared.wake_writer.notify_all();
        self.shared.slot_free.notify_all();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // The last owner may be a completion running on one of the
            // session's own threads (a path set dropping a dead path):
            // that thread ends by itself; joining it would deadlock.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        fail_all(&self.shared, SessionError::Closed);
    }

    /// Drop the connection at once, without a logout: an abortive
    /// disconnect (connect(2) with AF_UNSPEC: the kernel resets the
    /// connection and purges its send queue), so a command we had queued
    /// but the network had not carried yet never reaches the target, not
    /// even by retransmission. Every command in flight fails with
    /// `reason`. For a path given up on (see `bridge::pathset`).
    pub fn abort(&self, reason: &str) {
        use std::os::fd::AsRawFd;
        let fd = self.shared.socket.as_raw_fd();
        // SAFETY: a plain sockaddr of family AF_UNSPEC, valid for the
        // call; `fd` stays open as long as `shared` lives.
        let addr = nix::libc::sockaddr {
            sa_family: nix::libc::AF_UNSPEC as nix::libc::sa_family_t,
            sa_data: [0; 14],
        };
        let r = unsafe {
            nix::libc::connect(
                fd,
                &addr,
                std::mem::size_of::<nix::libc::sockaddr>() as nix::libc::socklen_t,
            )
        };
        if r != 0 {
            log::debug!("abortive disconnect: {}", io::Error::last_os_error());
        }
        fail(
            &self.shared,
            SessionError::ConnectionLost(reason.to_string()),
        );
    }

    /// Commands in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state)
            .tasks
            .iter()
            .filter(|t| t.is_some())
            .count()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

fn alloc_slot(st: &mut State) -> Option<u16> {
    st.free.pop()
}

/// The generation for the next task: 1..=0x7fff, so an ITT is never the
/// reserved 0xffffffff.
fn next_generation(st: &mut State) -> u16 {
    let g = st.next_gen;
    st.next_gen = if g >= 0x7fff { 1 } else { g + 1 };
    g
}

impl Task {
    /// A task with no SCSI data: a ping, TMF or logout.
    fn control(
        generation: u16,
        kind: TaskKind,
        ctl_done: Option<Sender<Result<u8, SessionError>>>,
    ) -> Task {
        Task {
            generation,
            kind,
            lun: [0; 8],
            cdb: [0; 16],
            dir: DataDir::None,
            attr: 0,
            buf: None,
            done: None,
            ctl_done,
            cmd_sn: 0,
            next_data_sn: 0,
            data_in: 0,
            parked: None,
            unsolicited: 0,
            sent: None,
            r2ts: 0,
            retries: 0,
        }
    }
}

fn ping_pdu(itt: u32, sn: &SnState) -> Pdu {
    Pdu::NopOut(NopOut {
        lun: [0; 8],
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: sn.cmd_sn,
        exp_stat_sn: sn.exp_stat_sn,
    })
}

/// Mark the session failed and fail every task. Idempotent.
fn fail(shared: &Shared, err: SessionError) {
    // The first recorded cause wins: a later "connection closed" from the
    // other thread is a consequence, not the reason.
    let (first, err) = {
        let mut st = lock(&shared.state);
        match &st.failed {
            None => {
                st.failed = Some(err.clone());
                (true, err)
            }
            Some(e) => (false, e.clone()),
        }
    };
    if first {
        if !matches!(err, SessionError::Closed) {
            log::error!("iSCSI session failed: {err}");
        }
        let _ = shared.socket.shutdown(Shutdown::Both);
        let events = lock(&shared.state).events.clone();
        if let Some(ev) = events {
            let _ = ev.send(SessionEvent::Failed(err.to_string()));
        }
    }
    fail_all(shared, err);
    shared.wake_writer.notify_all();
    shared.slot_free.notify_all();
}

/// Complete every task that still has its buffer with `err`. Tasks whose
/// buffer is lent out are completed by the thread that returns it.
fn fail_all(shared: &Shared, err: SessionError) {
    let mut done: Vec<(Completion, Vec<u8>)> = Vec::new();
    let mut ctl: Vec<Sender<Result<u8, SessionError>>> = Vec::new();
    {
        let mut st = lock(&shared.state);
        st.cmd_queue.clear();
        st.ctl_queue.clear();
        for i in 0..st.tasks.len() {
            let lent = matches!(&st.tasks[i], Some(t) if t.buf.is_none() && matches!(t.kind, TaskKind::Scsi));
            if lent {
                if let Some(t) = st.tasks[i].as_mut() {
                    t.parked = Some(Err(err.clone()));
                }
                continue;
            }
            if let Some(mut t) = st.tasks[i].take() {
                if let Some(d) = t.done.take() {
                    done.push((d, t.buf.take().unwrap_or_default()));
                }
                if let Some(c) = t.ctl_done.take() {
                    ctl.push(c);
                }
                st.free.push(i as u16);
            }
        }
    }
    for (d, b) in done {
        d(Err(err.clone()), b);
    }
    for c in ctl {
        let _ = c.send(Err(err.clone()));
    }
    shared.slot_free.notify_all();
}

/// Finish task `slot`: free the slot and run its completion (outside the
/// lock: the caller passes the guard in and gets nothing back).
fn finish(
    shared: &Shared,
    mut st: MutexGuard<'_, State>,
    slot: u16,
    result: Result<ScsiResult, SessionError>,
) {
    let i = usize::from(slot);
    let Some(task) = st.tasks.get_mut(i).and_then(|t| t.as_mut()) else {
        return;
    };
    if task.buf.is_none() && matches!(task.kind, TaskKind::Scsi) {
        // The writer still has the buffer (a target answered a write before
        // taking all its data); it completes the task when it returns it.
        task.parked = Some(result);
        return;
    }
    let Some(mut task) = st.tasks[i].take() else {
        return;
    };
    st.free.push(slot);
    let waiters = st.slot_waiters > 0;
    drop(st);
    if waiters {
        shared.slot_free.notify_one();
    }
    if let Some(d) = task.done.take() {
        d(result, task.buf.take().unwrap_or_default());
    } else if let Some(c) = task.ctl_done.take() {
        let _ = c.send(result.map(|r| r.status));
    }
}

// ---------------------------------------------------------------- writer

/// One PDU being assembled by the writer, owning what its data refers to.
struct Out {
    bhs: [u8; BHS_LEN],
    /// (slot, range of the task's buffer) when the data is a command's.
    data: OutData,
}

enum OutData {
    None,
    Owned(Vec<u8>),
    Task { slot: u16, start: usize, end: usize },
}

fn writer_loop(shared: Arc<Shared>) {
    // This thread may carry the I/O of the filesystem the machine runs on.
    crate::daemon::io_thread();
    loop {
        {
            let mut st = lock(&shared.state);
            loop {
                if st.failed.is_some() {
                    return;
                }
                if has_work(&st) {
                    break;
                }
                let timeout = match timers_due(&mut st, &shared) {
                    Ok(t) => t,
                    Err(e) => {
                        drop(st);
                        fail(&shared, e);
                        return;
                    }
                };
                if has_work(&st) {
                    break;
                }
                st = match timeout {
                    Some(t) => shared
                        .wake_writer
                        .wait_timeout(st, t)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0),
                    None => shared
                        .wake_writer
                        .wait(st)
                        .unwrap_or_else(|e| e.into_inner()),
                };
            }
        }
        let mut w = shared.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = flush(&shared, &mut w) {
            drop(w);
            fail(&shared, e);
            return;
        }
    }
}

/// Something can be sent now: control PDUs, or commands within the window.
fn has_work(st: &State) -> bool {
    !st.ctl_queue.is_empty() || (!st.cmd_queue.is_empty() && sn_le(st.sn.cmd_sn, st.sn.max_cmd_sn))
}

thread_local! {
    /// Set on a session's reader thread (see [`at_reader_idle`]).
    static ON_READER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Under a [`Plug`] (and always on a reader thread): the sessions this
    /// thread queued commands on without sending them yet.
    static PLUGGED: RefCell<Option<Vec<Arc<Shared>>>> = const { RefCell::new(None) };
    /// Jobs a reader thread runs before it next waits for its target.
    static AT_IDLE: RefCell<Vec<IdleJob>> = const { RefCell::new(Vec::new()) };
}

/// Work for a reader thread's idle point: see [`at_reader_idle`].
pub type IdleJob = Box<dyn FnOnce()>;

/// Commands submitted on this thread while a `Plug` lives are queued but
/// not sent; dropping it (or [`Plug::flush`]) sends them, several commands
/// in one write. For a thread that takes a burst of requests at once (a
/// block-device bridge reading many requests per system call). Plugs nest:
/// only the outermost sends. A submission that has to wait for a free task
/// slot sends what is held first.
pub struct Plug {
    outer: bool,
}

/// Start holding back this thread's submissions (see [`Plug`]).
pub fn plug() -> Plug {
    let outer = PLUGGED.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_some() {
            false
        } else {
            *p = Some(Vec::new());
            true
        }
    });
    Plug { outer }
}

impl Plug {
    /// Send what is held, and keep holding back what comes next.
    pub fn flush(&self) {
        if self.outer {
            send_plugged();
        }
    }
}

impl Drop for Plug {
    fn drop(&mut self) {
        if self.outer {
            send_plugged();
            PLUGGED.with(|p| p.borrow_mut().take());
        }
    }
}

/// Send the commands this thread's plug holds.
fn send_plugged() {
    let held = PLUGGED.with(|p| p.borrow_mut().as_mut().map(std::mem::take));
    for s in held.unwrap_or_default() {
        send_now(&s);
    }
}

/// Send whatever `shared` has queued: here if the transmit side is free,
/// else by the writer thread.
fn send_now(shared: &Shared) {
    match shared.tx.try_lock() {
        Ok(mut w) => {
            if let Err(e) = flush(shared, &mut w) {
                drop(w);
                fail(shared, e);
            }
        }
        Err(_) => shared.wake_writer.notify_one(),
    }
}

/// On a session's reader thread (where completions run): run `job` once
/// the reader has handled everything it has received so far, just before
/// it may wait for the target again (or when it ends). A completion can so
/// leave its output for one batch (e.g. one write for many replies)
/// instead of a system call each. Elsewhere the job comes back, to be run
/// by the caller.
pub fn at_reader_idle(job: IdleJob) -> Result<(), IdleJob> {
    if !ON_READER.with(|r| r.get()) {
        return Err(job);
    }
    AT_IDLE.with(|q| q.borrow_mut().push(job));
    Ok(())
}

/// Before the reader reads `need` more bytes: if fewer are buffered the
/// read may wait for the target, so this is an idle point. (Not only
/// between PDUs: a read often ends inside one, and completions must not
/// wait for the target's next batch.) A failed send fails the session,
/// which the next read reports.
fn idle_before(shared: &Shared, r: &PduReader<TcpStream>, need: usize) {
    if r.buffered() < need
        && let Err(e) = reader_idle(shared)
    {
        fail(shared, e);
    }
}

/// What a data segment of `len` bytes takes on the wire.
fn segment_bytes(shared: &Shared, len: usize) -> usize {
    match len {
        0 => 0,
        n => pad4(n) + if shared.params.data_digest { 4 } else { 0 },
    }
}

/// The reader's idle point: run the jobs completions left, then send what
/// they and the PDUs just handled queued, for every session (a completion
/// may resubmit on another one). Until nothing is left.
fn reader_idle(shared: &Shared) -> Result<(), SessionError> {
    loop {
        let jobs = AT_IDLE.with(|q| std::mem::take(&mut *q.borrow_mut()));
        let ran = !jobs.is_empty();
        for j in jobs {
            j();
        }
        let held = PLUGGED.with(|p| p.borrow_mut().as_mut().map(std::mem::take));
        for s in held.unwrap_or_default() {
            if !std::ptr::eq(Arc::as_ptr(&s), shared) {
                send_now(&s);
            }
        }
        if has_work(&lock(&shared.state)) {
            let mut w = shared.tx.lock().unwrap_or_else(|p| p.into_inner());
            flush(shared, &mut w)?;
        }
        if !ran && AT_IDLE.with(|q| q.borrow().is_empty()) {
            return Ok(());
        }
    }
}

/// Send everything that can be sent now, in as few writes as possible.
/// The caller holds the transmit lock, which keeps CmdSN order equal to
/// wire order.
fn flush(shared: &Shared, w: &mut PduWriter<TcpStream>) -> Result<(), SessionError> {
    let p = shared.params;
    let max_seg = p.max_send_data_segment.max(512) as usize;
    loop {
        let mut outs: Vec<Out> = Vec::new();
        // Buffers lent out for this batch, by slot.
        let mut lent: Vec<(u16, Vec<u8>)> = Vec::new();
        {
            let mut st = lock(&shared.state);
            if st.failed.is_some() || !has_work(&st) {
                return Ok(());
            }
            // Control first: NOP answers, Data-Out bursts, immediate tasks.
            while let Some(c) = st.ctl_queue.pop_front() {
                match c {
                    Ctl::NopReply { ttt, lun, data } => {
                        let pdu = Pdu::NopOut(NopOut {
                            lun,
                            itt: RESERVED_TAG,
                            ttt,
                            cmd_sn: st.sn.cmd_sn,
                            exp_stat_sn: st.sn.exp_stat_sn,
                        });
                        outs.push(out(&pdu, OutData::Owned(data)));
                    }
                    Ctl::Immediate { slot, mut pdu } => {
                        // Immediate PDUs carry the current CmdSN without
                        // advancing it (RFC 7143 §3.2.2.1); refresh it now.
                        let (cs, es) = (st.sn.cmd_sn, st.sn.exp_stat_sn);
                        match &mut pdu {
                            Pdu::NopOut(n) => {
                                n.cmd_sn = cs;
                                n.exp_stat_sn = es;
                            }
                            Pdu::TaskMgmtRequest(t) => {
                                t.cmd_sn = cs;
                                t.exp_stat_sn = es;
                            }
                            Pdu::LogoutRequest(l) => {
                                l.cmd_sn = cs;
                                l.exp_stat_sn = es;
                            }
                            _ => {}
                        }
                        if matches!(pdu, Pdu::NopOut(_)) {
                            st.ping_out = Some((slot, Instant::now()));
                        }
                        outs.push(out(&pdu, OutData::None));
                    }
                    Ctl::DataOut {
                        slot,
                        ttt,
                        offset,
                        len,
                    } => {
                        let exp_stat_sn = st.sn.exp_stat_sn;
                        let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) else {
                            continue;
                        };
                        if t.buf.is_none() && !lent.iter().any(|(s, _)| *s == slot) {
                            continue;
                        }
                        if let Some(b) = t.buf.take() {
                            lent.push((slot, b));
                        }
                        data_out_pdus(
                            &mut outs,
                            t.lun,
                            itt_of(slot, t.generation),
                            ttt,
                            exp_stat_sn,
                            offset,
                            len,
                            max_seg,
                            slot,
                        );
                    }
                }
            }
            // Commands while the window is open, in order.
            while sn_le(st.sn.cmd_sn, st.sn.max_cmd_sn) {
                let Some(slot) = st.cmd_queue.pop_front() else {
                    break;
                };
                let cmd_sn = st.sn.cmd_sn;
                st.sn.cmd_sn = cmd_sn.wrapping_add(1);
                let exp_stat_sn = st.sn.exp_stat_sn;
                let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) else {
                    continue;
                };
                t.cmd_sn = cmd_sn;
                t.sent = Some(Instant::now());
                let itt = itt_of(slot, t.generation);
                let (read, write, len) = match t.dir {
                    DataDir::None => (false, false, 0),
                    DataDir::Read(n) => (true, false, n),
                    DataDir::Write(n) => (false, true, n),
                };
                // Immediate data (ImmediateData=Yes): up to FirstBurstLength
                // and the target's segment limit, in the command PDU itself.
                let immediate = if write && p.immediate_data {
                    len.min(p.first_burst).min(max_seg as u32)
                } else {
                    0
                };
                // Unsolicited Data-Out (InitialR2T=No): the rest of the
                // first burst, without waiting for an R2T.
                let unsolicited_end = if write && !p.initial_r2t {
                    len.min(p.first_burst)
                } else {
                    immediate
                };
                t.unsolicited = unsolicited_end;
                let pdu = Pdu::ScsiCommand(ScsiCommand {
                    immediate: false,
                    final_: unsolicited_end == immediate,
                    read,
                    write,
                    attr: t.attr,
                    lun: t.lun,
                    itt,
                    expected_len: len,
                    cmd_sn,
                    exp_stat_sn,
                    cdb: t.cdb,
                });
                let lun = t.lun;
                if write && unsolicited_end > 0 {
                    if let Some(b) = t.buf.take() {
                        lent.push((slot, b));
                    }
                    outs.push(out(
                        &pdu,
                        OutData::Task {
                            slot,
                            start: 0,
                            end: immediate as usize,
                        },
                    ));
                    if unsolicited_end > immediate {
                        data_out_pdus(
                            &mut outs,
                            lun,
                            itt,
                            RESERVED_TAG,
                            exp_stat_sn,
                            immediate,
                            unsolicited_end - immediate,
                            max_seg,
                            slot,
                        );
                    }
                } else {
                    outs.push(out(&pdu, OutData::None));
                }
                if outs.len() >= 256 {
                    break;
                }
            }
        }

        // Send the batch without holding the state lock.
        let result = send_outs(w, &outs, &lent);

        // Return the buffers; complete tasks answered meanwhile.
        let mut st = lock(&shared.state);
        let mut to_finish = Vec::new();
        for (slot, b) in lent {
            if let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) {
                t.buf = Some(b);
                if let Some(r) = t.parked.take() {
                    to_finish.push((slot, r));
                }
            }
        }
        drop(st);
        for (slot, r) in to_finish {
            finish(shared, lock(&shared.state), slot, r);
        }
        result.map_err(|e| SessionError::ConnectionLost(format!("sending: {e}")))?;
    }
}

/// The liveness ping and the commands' timeouts ([`ping_due`],
/// [`command_due`]): how long the writer may sleep, or why the session
/// fails now.
fn timers_due(st: &mut State, shared: &Shared) -> Result<Option<Duration>, SessionError> {
    let cmd = command_due(st, &shared.opts, Instant::now())?;
    let ping = ping_due(st, shared)?;
    Ok(match (cmd, ping) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// The oldest SCSI command on the wire. One pass over the task table (its
/// size is the queue depth).
fn oldest_sent(st: &State) -> Option<escalate::Oldest> {
    st.tasks
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, t.as_ref()?)))
        .filter(|(_, t)| matches!(t.kind, TaskKind::Scsi))
        .filter_map(|(i, t)| {
            Some(escalate::Oldest {
                slot: i as u16,
                lun: t.lun,
                opcode: t.cdb[0],
                retries: t.retries,
                sent: t.sent?,
            })
        })
        .min_by_key(|o| o.sent)
}

/// Overdue commands: take the next step of [`escalate::next_step`] (queue
/// ABORT TASK or LOGICAL UNIT RESET, or fail the session with
/// [`SessionError::CommandTimeout`]); otherwise the time until the next
/// deadline.
fn command_due(
    st: &mut State,
    opts: &SessionOptions,
    now: Instant,
) -> Result<Option<Duration>, SessionError> {
    let Some(timeout) = opts.cmd_timeout else {
        return Ok(None);
    };
    let step = escalate::next_step(
        st.escalation.as_ref(),
        oldest_sent(st),
        timeout,
        opts.tmf_timeout,
        now,
    );
    let fail = |opcode, tried| SessionError::CommandTimeout {
        opcode,
        after: timeout,
        tried,
    };
    match step {
        Step::Wait(d) => Ok(d),
        Step::Abort { slot } => {
            let opcode = st_opcode(st, slot);
            start_abort(st, slot, now).map_err(|m| fail(opcode, m))?;
            Ok(Some(opts.tmf_timeout))
        }
        Step::Reset { lun, opcode } => {
            log::warn!(
                "a SCSI command (operation code 0x{opcode:02x}) is overdue: LOGICAL UNIT RESET"
            );
            start_reset(st, lun, opcode, now).map_err(|m| fail(opcode, m))?;
            Ok(Some(opts.tmf_timeout))
        }
        Step::Fail { opcode, tried } => Err(fail(opcode, tried)),
    }
}

fn st_opcode(st: &State, slot: u16) -> u8 {
    match st.tasks.get(usize::from(slot)) {
        Some(Some(t)) => t.cdb[0],
        _ => 0,
    }
}

/// Queue ABORT TASK for the overdue command in `slot`.
fn start_abort(st: &mut State, slot: u16, now: Instant) -> Result<(), String> {
    let Some(Some(t)) = st.tasks.get(usize::from(slot)) else {
        return Ok(());
    };
    let (generation, lun, opcode, ref_cmd_sn) = (t.generation, t.lun, t.cdb[0], t.cmd_sn);
    let itt = itt_of(slot, generation);
    log::warn!(
        "a SCSI command (operation code 0x{opcode:02x}, task 0x{itt:08x}) is overdue: ABORT TASK"
    );
    let tmf = queue_tmf(st, TmfFunction::AbortTask, lun, itt, ref_cmd_sn)
        .ok_or_else(|| "no task slot free for ABORT TASK".to_string())?;
    st.escalation = Some(escalate::Pending::Abort {
        slot,
        generation,
        lun,
        opcode,
        tmf,
        since: now,
    });
    Ok(())
}

/// Queue LOGICAL UNIT RESET for `lun`.
fn start_reset(st: &mut State, lun: [u8; 8], opcode: u8, now: Instant) -> Result<(), String> {
    let tmf = queue_tmf(st, TmfFunction::LogicalUnitReset, lun, RESERVED_TAG, 0)
        .ok_or_else(|| "no task slot free for LOGICAL UNIT RESET".to_string())?;
    st.escalation = Some(escalate::Pending::Reset {
        lun,
        opcode,
        tmf,
        since: now,
    });
    Ok(())
}

/// Queue a task management request the session sends on its own (its
/// answer goes to [`tmf_answered`]); `None` when no task slot is free.
fn queue_tmf(
    st: &mut State,
    function: TmfFunction,
    lun: [u8; 8],
    ref_task_tag: u32,
    ref_cmd_sn: u32,
) -> Option<u16> {
    let slot = alloc_slot(st)?;
    let generation = next_generation(st);
    st.tasks[usize::from(slot)] = Some(Task::control(generation, TaskKind::Tmf, None));
    let pdu = Pdu::TaskMgmtRequest(TaskMgmtRequest {
        function,
        lun,
        itt: itt_of(slot, generation),
        ref_task_tag,
        cmd_sn: st.sn.cmd_sn,
        exp_stat_sn: st.sn.exp_stat_sn,
        ref_cmd_sn,
        exp_data_sn: 0,
    });
    st.ctl_queue.push_back(Ctl::Immediate { slot, pdu });
    Some(slot)
}

/// The target answered the session's own TMF: retry what it ended, or
/// take the next step.
fn tmf_answered(
    st: &mut State,
    pending: escalate::Pending,
    response: u8,
    timeout: Duration,
) -> Result<(), SessionError> {
    let fail = |opcode, tried| SessionError::CommandTimeout {
        opcode,
        after: timeout,
        tried,
    };
    match escalate::answered(&pending, response) {
        escalate::Answer::Retry { slot, generation } => {
            if matches!(st.tasks.get(usize::from(slot)), Some(Some(t)) if t.generation == generation)
            {
                log::warn!("the overdue command was aborted: sending it again");
                retry_task(st, slot)?;
            }
        }
        escalate::Answer::RetryLun { lun } => {
            let on_wire: Vec<u16> = (0..st.tasks.len() as u16)
                .filter(|&i| {
                    matches!(&st.tasks[usize::from(i)],
                        Some(t) if matches!(t.kind, TaskKind::Scsi) && t.lun == lun && t.sent.is_some())
                })
                .collect();
            log::warn!(
                "the LU was reset: sending its {} commands in flight again",
                on_wire.len()
            );
            for slot in on_wire {
                retry_task(st, slot)?;
            }
        }
        escalate::Answer::Reset { lun, opcode } => {
            start_reset(st, lun, opcode, Instant::now()).map_err(|m| fail(opcode, m))?;
        }
        escalate::Answer::Fail { opcode, tried } => return Err(fail(opcode, tried)),
    }
    Ok(())
}

/// Send the command in `slot` again after the target ended it (abort or
/// reset): a new ITT (a late PDU for the old one is caught as unknown) and
/// CmdSN, first in line; its data from the start.
fn retry_task(st: &mut State, slot: u16) -> Result<(), SessionError> {
    let generation = next_generation(st);
    let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) else {
        return Ok(());
    };
    if t.buf.is_none() {
        // The writer is sending its data right now: let recovery retry it.
        return Err(SessionError::ConnectionLost(format!(
            "the target ended an overdue command (operation code 0x{:02x}) while its data was being sent: logging in again to retry it",
            t.cdb[0]
        )));
    }
    t.generation = generation;
    t.next_data_sn = 0;
    t.data_in = 0;
    t.r2ts = 0;
    t.unsolicited = 0;
    t.sent = None;
    t.parked = None;
    t.retries = t.retries.saturating_add(1);
    st.ctl_queue
        .retain(|c| !matches!(c, Ctl::DataOut { slot: s, .. } if *s == slot));
    st.cmd_queue.push_front(slot);
    Ok(())
}

/// Check the liveness ping: send one after `nop_interval` of silence, fail
/// the session when one goes unanswered past `nop_timeout`. Returns how
/// long the writer may sleep.
fn ping_due(st: &mut State, shared: &Shared) -> Result<Option<Duration>, SessionError> {
    let Some(interval) = shared.opts.nop_interval else {
        return Ok(None);
    };
    let now = Instant::now();
    if let Some((_, sent)) = st.ping_out {
        let waited = now.saturating_duration_since(sent);
        if waited >= shared.opts.nop_timeout {
            return Err(SessionError::PingTimeout(shared.opts.nop_timeout));
        }
        return Ok(Some(shared.opts.nop_timeout - waited));
    }
    let idle = now.saturating_duration_since(st.last_rx);
    if idle < interval {
        return Ok(Some(interval - idle));
    }
    // Queue a ping as a control task in the table.
    let Some(slot) = alloc_slot(st) else {
        return Ok(Some(interval));
    };
    let generation = next_generation(st);
    st.tasks[usize::from(slot)] = Some(Task::control(generation, TaskKind::Ping, None));
    let pdu = ping_pdu(itt_of(slot, generation), &st.sn);
    st.ctl_queue.push_back(Ctl::Immediate { slot, pdu });
    Ok(Some(shared.opts.nop_timeout))
}

fn out(pdu: &Pdu, data: OutData) -> Out {
    Out {
        bhs: pdu.to_bytes(0),
        data,
    }
}

#[allow(clippy::too_many_arguments)]
fn data_out_pdus(
    outs: &mut Vec<Out>,
    lun: [u8; 8],
    itt: u32,
    ttt: u32,
    exp_stat_sn: u32,
    offset: u32,
    len: u32,
    max_seg: usize,
    slot: u16,
) {
    let mut data_sn = 0u32;
    let mut at = offset as usize;
    let end = offset as usize + len as usize;
    while at < end {
        let n = (end - at).min(max_seg);
        let pdu = Pdu::DataOut(DataOut {
            final_: at + n == end,
            lun,
            itt,
            ttt,
            exp_stat_sn,
            data_sn,
            buffer_offset: at as u32,
        });
        outs.push(out(
            &pdu,
            OutData::Task {
                slot,
                start: at,
                end: at + n,
            },
        ));
        data_sn += 1;
        at += n;
    }
}

fn send_outs(
    w: &mut PduWriter<TcpStream>,
    outs: &[Out],
    lent: &[(u16, Vec<u8>)],
) -> io::Result<()> {
    // Resolve each PDU's data to a slice; fix up the BHS data length.
    let mut slices: Vec<[&[u8]; 1]> = Vec::with_capacity(outs.len());
    let mut bhss: Vec<[u8; BHS_LEN]> = Vec::with_capacity(outs.len());
    for o in outs {
        let data: &[u8] = match &o.data {
            OutData::None => &[],
            OutData::Owned(v) => v,
            OutData::Task { slot, start, end } => lent
                .iter()
                .find(|(s, _)| s == slot)
                .and_then(|(_, b)| b.get(*start..*end))
                .unwrap_or(&[]),
        };
        let mut bhs = o.bhs;
        let mut v = Bhs::new_unchecked(&mut bhs[..]);
        v.set_data_segment_len(data.len());
        bhss.push(bhs);
        slices.push([data]);
    }
    let tx: Vec<TxPdu<'_>> = bhss
        .iter()
        .zip(slices.iter())
        .map(|(b, d)| TxPdu {
            bhs: *b,
            data: if d[0].is_empty() { &[] } else { &d[..] },
        })
        .collect();
    w.send_batch(&tx)
}

// ---------------------------------------------------------------- reader

fn reader_loop(shared: Arc<Shared>, mut r: PduReader<TcpStream>) {
    ON_READER.with(|f| f.set(true));
    PLUGGED.with(|p| *p.borrow_mut() = Some(Vec::new()));
    crate::daemon::io_thread();
    let header = BHS_LEN + if shared.params.header_digest { 4 } else { 0 };
    let err = loop {
        // Before waiting for the target: first what completions left for
        // now (replies, resubmissions, Data-Out for R2Ts, NOP answers), in
        // one batch.
        idle_before(&shared, &r, header);
        let e = match rx_one(&shared, &mut r) {
            Ok(()) => continue,
            Err(e) => e,
        };
        let closing = lock(&shared.state).closing;
        break match e {
            RxError::Conn(ConnError::Closed) if closing => SessionError::Closed,
            RxError::Conn(ConnError::Io(_)) if closing => SessionError::Closed,
            RxError::Conn(c) => SessionError::ConnectionLost(c.to_string()),
            RxError::Protocol(m) => SessionError::Protocol(m),
            RxError::Session(e) => e,
        };
    };
    fail(&shared, err);
    // The failed commands' completions may have left work too (and other
    // sessions may have been given commands).
    let _ = reader_idle(&shared);
}

enum RxError {
    Conn(ConnError),
    Protocol(String),
    /// The session fails for a reason of its own (a command timeout).
    Session(SessionError),
}

impl From<ConnError> for RxError {
    fn from(e: ConnError) -> Self {
        RxError::Conn(e)
    }
}

fn proto(m: String) -> RxError {
    RxError::Protocol(m)
}

/// Update ExpStatSN and the command window from a target PDU (RFC 7143
/// §4.2.2.1: MaxCmdSN/ExpCmdSN only move forward, and a MaxCmdSN below
/// ExpCmdSN - 1 is ignored).
fn update_sn(st: &mut State, pdu: &Pdu) -> bool {
    let Some(sn) = pdu.target_sn() else {
        return false;
    };
    let carries_status = match pdu {
        Pdu::DataIn(d) => d.has_status,
        Pdu::R2t(_) => false,
        Pdu::NopIn(n) => n.itt != RESERVED_TAG,
        _ => true,
    };
    if carries_status && sn_le(st.sn.exp_stat_sn, sn.stat_sn) {
        st.sn.exp_stat_sn = sn.stat_sn.wrapping_add(1);
    }
    let mut opened = false;
    if sn_le(sn.exp_cmd_sn.wrapping_sub(1), sn.max_cmd_sn) {
        if sn_lt(st.sn.exp_cmd_sn, sn.exp_cmd_sn) {
            st.sn.exp_cmd_sn = sn.exp_cmd_sn;
        }
        if sn_lt(st.sn.max_cmd_sn, sn.max_cmd_sn) {
            st.sn.max_cmd_sn = sn.max_cmd_sn;
            opened = true;
        }
    }
    opened
}

/// The task a target PDU names, checked: slot in range, generation
/// current, kind as expected.
fn lookup<'a>(st: &'a mut State, itt: u32, what: &str) -> Result<&'a mut Task, RxError> {
    let (slot, generation) = slot_of(itt);
    match st.tasks.get_mut(usize::from(slot)) {
        Some(Some(t)) if t.generation == generation => Ok(t),
        _ => Err(proto(format!("{what} for unknown task tag 0x{itt:08x}"))),
    }
}

fn rx_one(shared: &Shared, r: &mut PduReader<TcpStream>) -> Result<(), RxError> {
    let h = r.read_header()?;
    let mut st = lock(&shared.state);
    st.last_rx = Instant::now();
    // A window that opened is used by the reader's next flush.
    update_sn(&mut st, &h.pdu);
    match h.pdu {
        Pdu::DataIn(d) => {
            let len = h.data_len;
            let t = lookup(&mut st, d.itt, "Data-In")?;
            let DataDir::Read(want) = t.dir else {
                return Err(proto(format!(
                    "Data-In for task 0x{:08x}, which reads nothing",
                    d.itt
                )));
            };
            if d.data_sn != t.next_data_sn {
                return Err(proto(format!(
                    "Data-In DataSN {} for task 0x{:08x}, expected {} (ERL 0 cannot recover)",
                    d.data_sn, d.itt, t.next_data_sn
                )));
            }
            let off = d.buffer_offset as usize;
            if off.checked_add(len).is_none_or(|end| end > want as usize) {
                return Err(proto(format!(
                    "Data-In for task 0x{:08x} at offset {off}+{len} beyond the {want}-byte transfer",
                    d.itt
                )));
            }
            // DataPDUInOrder=Yes and DataSequenceInOrder=Yes (we offer Yes,
            // and both results are OR functions): the data comes in one
            // contiguous ascending run, so `data_in` is exactly the bytes
            // of the buffer the target wrote. An overlap or a hole would
            // leave bytes of an earlier request in the buffer.
            if off != t.data_in {
                return Err(proto(format!(
                    "Data-In for task 0x{:08x} at offset {off}, expected {} (DataPDUInOrder=Yes: contiguous and ascending; an overlap or a hole)",
                    d.itt, t.data_in
                )));
            }
            t.next_data_sn = t.next_data_sn.wrapping_add(1);
            let mut buf = t.buf.take().unwrap_or_default();
            drop(st);
            idle_before(shared, r, segment_bytes(shared, len));
            // The payload goes straight into the command's buffer.
            let rd = match buf.get_mut(off..off + len) {
                Some(dst) => r.read_data(dst),
                None => Err(ConnError::LengthMismatch {
                    opcode: Opcode::DataIn,
                    len,
                    buffer: buf.len(),
                }),
            };
            let mut st = lock(&shared.state);
            let slot = slot_of(d.itt).0;
            if let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) {
                t.buf = Some(buf);
                t.data_in += len;
            }
            rd?;
            if d.has_status {
                let data_in = match st.tasks.get(usize::from(slot)) {
                    Some(Some(t)) => t.data_in,
                    _ => 0,
                };
                let residual = residual(d.overflow, d.underflow, d.residual);
                check_read_length(d.itt, want, data_in, residual).map_err(proto)?;
                finish(
                    shared,
                    st,
                    slot,
                    Ok(ScsiResult {
                        status: d.status,
                        sense: None,
                        residual,
                        data_in,
                    }),
                );
            }
        }
        Pdu::ScsiResponse(resp) => {
            let t = lookup(&mut st, resp.itt, "SCSI Response")?;
            if !matches!(t.kind, TaskKind::Scsi) {
                return Err(proto(format!(
                    "SCSI Response for non-SCSI task 0x{:08x}",
                    resp.itt
                )));
            }
            check_exp_data_sn(resp.itt, resp.exp_data_sn, t.next_data_sn, t.r2ts).map_err(proto)?;
            let data_in = t.data_in;
            let read_len = match t.dir {
                DataDir::Read(want) => Some(want),
                _ => None,
            };
            drop(st);
            idle_before(shared, r, segment_bytes(shared, h.data_len));
            let data = r.read_data_vec()?;
            // Only a GOOD read promises its data; a CHECK CONDITION may
            // come after part of it (and its buffer is not used).
            if let Some(want) = read_len
                && resp.response == 0
                && resp.status == 0
            {
                let res = residual(resp.overflow, resp.underflow, resp.residual);
                check_read_length(resp.itt, want, data_in, res).map_err(proto)?;
            }
            let st = lock(&shared.state);
            let slot = slot_of(resp.itt).0;
            let result = if resp.response != 0 {
                Err(SessionError::TargetFailure(resp.response))
            } else {
                // Sense data: 2-byte SenseLength, then the sense bytes.
                let sense = if data.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
                    data.get(2..2 + n.min(data.len() - 2))
                        .map(|s| s.to_vec())
                        .filter(|s| !s.is_empty())
                } else {
                    None
                };
                Ok(ScsiResult {
                    status: resp.status,
                    sense,
                    residual: residual(resp.overflow, resp.underflow, resp.residual),
                    data_in,
                })
            };
            finish(shared, st, slot, result);
        }
        Pdu::R2t(r2t) => {
            let max_burst = shared.params.max_burst;
            let t = lookup(&mut st, r2t.itt, "R2T")?;
            let DataDir::Write(total) = t.dir else {
                return Err(proto(format!(
                    "R2T for task 0x{:08x}, which writes nothing",
                    r2t.itt
                )));
            };
            let end = u64::from(r2t.buffer_offset) + u64::from(r2t.desired_len);
            if end > u64::from(total) || r2t.desired_len == 0 {
                return Err(proto(format!(
                    "R2T for task 0x{:08x} asks for {}+{} of a {total}-byte write",
                    r2t.itt, r2t.buffer_offset, r2t.desired_len
                )));
            }
            if r2t.desired_len > max_burst {
                return Err(proto(format!(
                    "R2T desired length {} above MaxBurstLength {max_burst}",
                    r2t.desired_len
                )));
            }
            let slot = slot_of(r2t.itt).0;
            check_outstanding_r2t(&st.ctl_queue, slot, shared.params.max_outstanding_r2t)
                .map_err(|m| proto(format!("task 0x{:08x}: {m}", r2t.itt)))?;
            if let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) {
                t.r2ts = t.r2ts.wrapping_add(1);
            }
            st.ctl_queue.push_back(Ctl::DataOut {
                slot,
                ttt: r2t.ttt,
                offset: r2t.buffer_offset,
                len: r2t.desired_len,
            });
        }
        Pdu::NopIn(n) => {
            drop(st);
            idle_before(shared, r, segment_bytes(shared, h.data_len));
            let data = r.read_data_vec()?;
            let mut st = lock(&shared.state);
            if n.itt != RESERVED_TAG {
                let t = lookup(&mut st, n.itt, "NOP-In")?;
                if !matches!(t.kind, TaskKind::Ping) {
                    return Err(proto(format!(
                        "NOP-In answering task 0x{:08x}, which is not a ping",
                        n.itt
                    )));
                }
                let slot = slot_of(n.itt).0;
                if st.ping_out.is_some_and(|(s, _)| s == slot) {
                    st.ping_out = None;
                }
                finish(shared, st, slot, Ok(ScsiResult::default()));
            } else if n.ttt != RESERVED_TAG {
                // The target pings us: answer with its TTT and its data.
                // A target that pings faster than we can answer is
                // flooding us: the queue does not grow without bound.
                let pending = st
                    .ctl_queue
                    .iter()
                    .filter(|c| matches!(c, Ctl::NopReply { .. }))
                    .count();
                if pending >= MAX_NOP_REPLIES {
                    return Err(proto(format!(
                        "more than {MAX_NOP_REPLIES} NOP-In pings waiting for an answer: the target floods us"
                    )));
                }
                st.ctl_queue.push_back(Ctl::NopReply {
                    ttt: n.ttt,
                    lun: n.lun,
                    data,
                });
            }
        }
        Pdu::TaskMgmtResponse(tm) => {
            let t = lookup(&mut st, tm.itt, "Task Management Response")?;
            if !matches!(t.kind, TaskKind::Tmf) {
                return Err(proto(format!("TMF response for task 0x{:08x}", tm.itt)));
            }
            let slot = slot_of(tm.itt).0;
            if let Some(p) = st.escalation.filter(|p| p.tmf() == slot) {
                st.escalation = None;
                let timeout = shared.opts.cmd_timeout.unwrap_or(DEFAULT_CMD_TIMEOUT);
                tmf_answered(&mut st, p, tm.response, timeout).map_err(RxError::Session)?;
                shared.wake_writer.notify_one();
            }
            finish(
                shared,
                st,
                slot,
                Ok(ScsiResult {
                    status: tm.response,
                    ..Default::default()
                }),
            );
        }
        Pdu::LogoutResponse(lr) => {
            let t = lookup(&mut st, lr.itt, "Logout Response")?;
            if !matches!(t.kind, TaskKind::Logout) {
                return Err(proto(format!("Logout Response for task 0x{:08x}", lr.itt)));
            }
            let slot = slot_of(lr.itt).0;
            st.closing = true;
            finish(
                shared,
                st,
                slot,
                Ok(ScsiResult {
                    status: lr.response,
                    ..Default::default()
                }),
            );
        }
        Pdu::AsyncMessage(a) => {
            let events = st.events.clone();
            let admitted = st
                .event_tokens
                .take(Instant::now(), "asynchronous messages");
            drop(st);
            idle_before(shared, r, segment_bytes(shared, h.data_len));
            let data = r.read_data_vec()?;
            let ev = match a.event {
                0 => {
                    let sense = if data.len() >= 2 {
                        let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
                        data.get(2..2 + n.min(data.len() - 2))
                            .unwrap_or(&[])
                            .to_vec()
                    } else {
                        Vec::new()
                    };
                    SessionEvent::ScsiEvent { lun: a.lun, sense }
                }
                1 => SessionEvent::LogoutRequested { within: a.param3 },
                2 | 3 => SessionEvent::Dropping {
                    event: a.event,
                    time2wait: a.param2,
                    time2retain: a.param3,
                },
                4 => SessionEvent::NegotiationRequested,
                _ if !admitted => return Ok(()),
                other => {
                    log::info!("ignoring async event {other} from target");
                    return Ok(());
                }
            };
            if !admitted {
                return Ok(());
            }
            log::warn!("target async event: {ev:?}");
            if let Some(tx) = events {
                let _ = tx.send(ev);
            }
        }
        Pdu::Reject(rj) => {
            let admitted = st.event_tokens.take(Instant::now(), "Rejects");
            drop(st);
            idle_before(shared, r, segment_bytes(shared, h.data_len));
            let data = r.read_data_vec()?;
            // The data segment is the rejected PDU's header: find its ITT.
            let itt = Bhs::new_checked(&data[..]).map(|b| b.itt()).ok();
            let what = reject_reason_name(rj.reason);
            if admitted {
                log::error!("target rejected a PDU: {what} (reason 0x{:02x})", rj.reason);
            }
            let mut st = lock(&shared.state);
            match itt {
                Some(itt) if itt != RESERVED_TAG => {
                    let slot = slot_of(itt).0;
                    if lookup(&mut st, itt, "Reject").is_ok() {
                        finish(
                            shared,
                            st,
                            slot,
                            Err(SessionError::Rejected {
                                reason: rj.reason,
                                what,
                            }),
                        );
                    }
                }
                _ => {}
            }
        }
        other => {
            return Err(proto(format!(
                "unexpected {} in the full-feature phase",
                other.opcode().name()
            )));
        }
    }
    Ok(())
}

/// ExpDataSN of a SCSI Response (RFC 7143 §11.4.8): the number of Data-In
/// and R2T PDUs the target sent for the command. Anything else means a PDU
/// of the command was lost or invented. 0 is taken as "not counted":
/// Linux's LIO and tgtd leave the field 0 in every response.
fn check_exp_data_sn(itt: u32, exp: u32, data_ins: u32, r2ts: u32) -> Result<(), String> {
    let sent = data_ins.wrapping_add(r2ts);
    if exp != 0 && exp != sent {
        return Err(format!(
            "SCSI Response for task 0x{itt:08x} says ExpDataSN {exp}, but {data_ins} Data-In and {r2ts} R2T PDUs arrived"
        ));
    }
    Ok(())
}

/// A read that ends with status: the bytes that arrived must be exactly
/// the transfer less what the target reported as not sent (underflow). A
/// shortfall it did not report, or a residual that does not match, means
/// part of the buffer holds bytes the target never sent: a protocol error
/// (the connection is dropped and the command retried through recovery),
/// never a completed read. A reported underflow is passed on (the
/// caller fails the read: it asked for every byte).
fn check_read_length(itt: u32, want: u32, data_in: usize, res: Residual) -> Result<(), String> {
    let expected = match res {
        Residual::Under(n) if n > want => {
            return Err(format!(
                "read task 0x{itt:08x}: underflow residual {n} above the {want}-byte transfer"
            ));
        }
        Residual::Under(n) => (want - n) as usize,
        Residual::None | Residual::Over(_) => want as usize,
    };
    if data_in != expected {
        return Err(format!(
            "read task 0x{itt:08x}: {data_in} of {want} bytes arrived, {expected} expected (residual {res:?}): short read"
        ));
    }
    Ok(())
}

fn residual(over: bool, under: bool, count: u32) -> Residual {
    if under {
        Residual::Under(count)
    } else if over {
        Residual::Over(count)
    } else {
        Residual::None
    }
}

/// A token bucket for what a target may send unasked (asynchronous
/// messages, Rejects): [`EVENT_BURST`] at once, one more per second; the
/// rest are read and dropped, with one warning per flood.
#[derive(Debug, Clone, Copy)]
struct Tokens {
    left: u32,
    burst: u32,
    refilled: Instant,
    dropped: u64,
}

impl Tokens {
    fn new(burst: u32, now: Instant) -> Tokens {
        Tokens {
            left: burst,
            burst,
            refilled: now,
            dropped: 0,
        }
    }

    /// Take one token: `false` when the caller drops what it is for.
    fn take(&mut self, now: Instant, what: &str) -> bool {
        let secs = now.saturating_duration_since(self.refilled).as_secs();
        if secs > 0 {
            self.left = (u64::from(self.left) + secs).min(u64::from(self.burst)) as u32;
            self.refilled = now;
        }
        if self.left == 0 {
            self.dropped += 1;
            if self.dropped == 1 {
                log::warn!(
                    "the target floods us with {what}: dropping them (at most {} at once, then one a second)",
                    self.burst
                );
            }
            return false;
        }
        if self.dropped > 0 {
            log::warn!("dropped {} unasked PDUs from the target", self.dropped);
            self.dropped = 0;
        }
        self.left -= 1;
        true
    }
}

/// Receive target events without blocking the caller's threads.
pub fn event_channel() -> (Sender<SessionEvent>, Receiver<SessionEvent>) {
    mpsc::channel()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outstanding_r2ts_are_bounded_by_the_negotiated_limit() {
        let burst = |slot, ttt| Ctl::DataOut {
            slot,
            ttt,
            offset: 0,
            len: 512,
        };
        let mut q = VecDeque::new();
        assert!(check_outstanding_r2t(&q, 3, 1).is_ok());
        // Unsolicited data and other tasks' bursts do not count.
        q.push_back(burst(3, RESERVED_TAG));
        q.push_back(burst(4, 0x10));
        assert!(check_outstanding_r2t(&q, 3, 1).is_ok());
        q.push_back(burst(3, 0x11));
        let e = check_outstanding_r2t(&q, 3, 1).unwrap_err();
        assert!(e.contains("MaxOutstandingR2T=1"), "{e}");
        assert!(check_outstanding_r2t(&q, 3, 2).is_ok());
    }

    #[test]
    fn unasked_pdus_are_admitted_at_a_bounded_rate() {
        let t0 = Instant::now();
        let mut b = Tokens::new(3, t0);
        assert!((0..3).all(|_| b.take(t0, "x")));
        assert!(!b.take(t0, "x"));
        assert!(!b.take(t0 + Duration::from_millis(900), "x"));
        assert_eq!(b.dropped, 2);
        assert!(b.take(t0 + Duration::from_secs(1), "x"));
        assert!(!b.take(t0 + Duration::from_secs(1), "x"));
        // A long quiet time refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.take(later, "x")));
        assert!(!b.take(later, "x"));
    }

    #[test]
    fn exp_data_sn_counts_data_in_and_r2t() {
        assert!(check_exp_data_sn(1, 0, 5, 0).is_ok(), "0: not counted");
        assert!(check_exp_data_sn(1, 5, 5, 0).is_ok());
        assert!(check_exp_data_sn(1, 2, 0, 2).is_ok());
        let e = check_exp_data_sn(0x10, 4, 3, 0).unwrap_err();
        assert!(e.contains("ExpDataSN 4") && e.contains("3 Data-In"), "{e}");
        assert!(
            check_exp_data_sn(1, 1, 0, 0).is_err(),
            "no data, yet counted"
        );
    }

    fn plugged() -> bool {
        PLUGGED.with(|p| p.borrow().is_some())
    }

    #[test]
    fn plugs_nest_and_idle_jobs_are_for_readers_only() {
        assert!(!plugged());
        let outer = plug();
        let inner = plug();
        drop(inner);
        assert!(plugged(), "an inner plug leaves the outer one in place");
        outer.flush();
        assert!(plugged());
        drop(outer);
        assert!(!plugged());
        // Not a reader thread: the job comes back to be run by the caller.
        let ran = std::rc::Rc::new(std::cell::Cell::new(false));
        let r = std::rc::Rc::clone(&ran);
        match at_reader_idle(Box::new(move || r.set(true))) {
            Ok(()) => panic!("queued on a thread that is no reader"),
            Err(job) => job(),
        }
        assert!(ran.get());
    }
}
