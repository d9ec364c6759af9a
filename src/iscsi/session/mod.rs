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
//! Files: this one (the types, the task table, submission, control tasks,
//! failing and finishing tasks), `writer.rs`, `reader.rs`, `timers.rs`
//! (the liveness ping and overdue commands), `plug.rs` (batched
//! submission and the reader's idle point), `lowat.rs` (the reader
//! woken once per batch of answers) and `handover.rs` (the receive side
//! lent to another thread's event loop: a ublk queue).
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

use super::conn::{ConnError, FrameParams, PduReader, PduWriter};
use super::escalate::{self, Step};
use super::pdu::*;
use crate::completion::Done;

mod handover;
mod lowat;
mod plug;
mod reader;
mod sockinfo;
mod timers;
mod writer;

pub use handover::Rx;
use plug::*;
pub use plug::{Idle, IdleJob, Plug, at_reader_idle, plug};
use reader::*;
use timers::*;
use writer::*;

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
pub type Completion = Done<Result<ScsiResult, SessionError>>;

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
    /// The current read attempt's data goes straight into a bridge's
    /// request (see [`crate::direct`]): decided at its first Data-In.
    direct: Option<(Arc<dyn crate::direct::DirectRx>, usize)>,
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
    /// The reader's byte count (`PduReader::received`) at `last_rx`: a
    /// header taken from what an earlier read buffered needs no new time.
    last_rx_bytes: u64,
    ping_out: Option<(u16, Instant)>,
    /// The liveness ping's timings: the options' at login, changed by
    /// [`Session::set_ping`].
    ping_every: Option<Duration>,
    ping_timeout: Duration,
    events: Option<Sender<SessionEvent>>,
    /// Async messages the target may still send now (see [`EVENT_BURST`]).
    event_tokens: Tokens,
    /// The task management function out for an overdue command.
    escalation: Option<escalate::Pending>,
    /// Threads waiting on `slot_free` (a notify is a system call even with
    /// nobody waiting: skip it then).
    slot_waiters: usize,
    /// A batch waits in the transmit side for the writer (see
    /// `writer::flush_with`).
    held: bool,
    /// Task tags of commands sent again after the target ended them (an
    /// abort, a LU reset), with when: a late answer for one is read and
    /// dropped instead of failing the session. LIO answers a command that
    /// a LU reset could not stop after the reset's own answer (its task
    /// management answers overtake its command answers). At most
    /// [`RETIRED_MAX`], each for [`RETIRED_FOR`].
    retired: VecDeque<(u32, Instant)>,
}

/// How many retired task tags are remembered, and for how long.
const RETIRED_MAX: usize = 256;
const RETIRED_FOR: Duration = Duration::from_secs(60);

/// Remember `itt` as retired (see [`State::retired`]).
fn retire(st: &mut State, itt: u32) {
    let now = Instant::now();
    while st
        .retired
        .front()
        .is_some_and(|(_, t)| now.saturating_duration_since(*t) > RETIRED_FOR)
        || st.retired.len() >= RETIRED_MAX
    {
        st.retired.pop_front();
    }
    st.retired.push_back((itt, now));
}

/// Whether a PDU for `itt` is a late answer for a retired command: no live
/// task has that tag, and it was retired recently.
fn is_retired(st: &State, itt: u32) -> bool {
    let (slot, generation) = slot_of(itt);
    let live =
        matches!(st.tasks.get(usize::from(slot)), Some(Some(t)) if t.generation == generation);
    !live
        && st
            .retired
            .iter()
            .any(|(r, t)| *r == itt && t.elapsed() <= RETIRED_FOR)
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
    tx: Mutex<Tx>,
    /// The receive side handed to another thread (see `handover`).
    handover: handover::Handover,
}

/// A logged-in session in its full-feature phase.
pub struct Session {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A write blocked this long means the target stopped reading.
fn write_timeout(ping_timeout: Duration) -> Duration {
    ping_timeout.max(Duration::from_secs(5)) * 3
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
        let _ = socket.set_write_timeout(Some(write_timeout(opts.nop_timeout)));
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
                last_rx_bytes: 0,
                ping_out: None,
                ping_every: opts.nop_interval,
                ping_timeout: opts.nop_timeout,
                events,
                event_tokens: Tokens::new(EVENT_BURST, Instant::now()),
                escalation: None,
                retired: VecDeque::new(),
                slot_waiters: 0,
                held: false,
            }),
            wake_writer: Condvar::new(),
            slot_free: Condvar::new(),
            params,
            opts,
            socket: socket.try_clone()?,
            tx: Mutex::new(Tx::new(writer, usize::from(depth))),
            handover: handover::Handover::new(),
        });
        let r = Arc::clone(&shared);
        let reader_t = crate::threads::named("iscsi-rx").spawn(move || reader_loop(r, reader))?;
        let w = Arc::clone(&shared);
        let writer_t = crate::threads::named("iscsi-tx").spawn(move || writer_loop(w))?;
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

    /// Ping after `every` of silence and give up on the connection when a
    /// ping goes unanswered for `timeout` (and a write blocks for a few
    /// times that), from now on: for a session logged in before it was
    /// known to be one path of several, which want loss noticed sooner.
    pub fn set_ping(&self, every: Option<Duration>, timeout: Duration) {
        let _ = self
            .shared
            .socket
            .set_write_timeout(Some(write_timeout(timeout)));
        let mut st = lock(&self.shared.state);
        st.ping_every = every;
        st.ping_timeout = timeout;
        drop(st);
        // The writer sleeps until the next ping is due: by the old timings.
        self.shared.wake_writer.notify_all();
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
            done.call(
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
                done.call(Err(e), buf);
                return;
            }
            if st.closing {
                drop(st);
                done.call(Err(SessionError::Closed), buf);
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
            done.call(Err(SessionError::Closed), buf);
            return;
        };
        let generation = next_generation(&mut st);
        st.tasks[usize::from(slot)] = Some(Task {
            lun: lun_field(cmd.lun),
            cdb: cmd.cdb,
            dir: cmd.dir,
            attr: cmd.attr,
            buf: Some(buf),
            done: Some(done),
            ..Task::control(generation, TaskKind::Scsi, None)
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
            Done::new(move |r, b| {
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
        self.control_on(kind, None, make, wait)
    }

    /// [`Self::control`] for a task management function `tmf`: (its LUN
    /// field, its function code), kept with the task for its answer.
    fn control_on(
        &self,
        kind: TaskKind,
        tmf: Option<([u8; 8], TmfFunction)>,
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
            let mut task = Task::control(generation, kind, Some(tx));
            if let Some((lun, function)) = tmf {
                task.lun = lun;
                task.cdb[0] = function as u8;
            }
            st.tasks[usize::from(slot)] = Some(task);
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

    /// LOGICAL UNIT RESET (RFC 7143 §11.5.1 function 5). The reset ends
    /// this session's own commands to the LU too: once it is done they
    /// are sent again, as after the session's own reset.
    pub fn lun_reset(&self, lun: u64) -> Result<(), SessionError> {
        let r = self.control_on(
            TaskKind::Tmf,
            Some((lun_field(lun), TmfFunction::LogicalUnitReset)),
            |itt, sn| {
                tmf_pdu(
                    TmfFunction::LogicalUnitReset,
                    lun_field(lun),
                    itt,
                    (RESERVED_TAG, 0),
                    sn,
                )
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
                tmf_pdu(
                    TmfFunction::AbortTask,
                    lun_field(lun),
                    t,
                    (itt, ref_cmd_sn),
                    sn,
                )
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
        self.shared.handover.stop();
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
            direct: None,
        }
    }
}

/// A task management request (immediate: it carries the current CmdSN,
/// refreshed by the writer) for `reference`: the referenced task's ITT
/// and CmdSN (reserved tag and 0 for a function on the whole LU).
fn tmf_pdu(
    function: TmfFunction,
    lun: [u8; 8],
    itt: u32,
    (ref_task_tag, ref_cmd_sn): (u32, u32),
    sn: &SnState,
) -> Pdu {
    Pdu::TaskMgmtRequest(TaskMgmtRequest {
        function,
        lun,
        itt,
        ref_task_tag,
        cmd_sn: sn.cmd_sn,
        exp_stat_sn: sn.exp_stat_sn,
        ref_cmd_sn,
        exp_data_sn: 0,
    })
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
        d.call(Err(err.clone()), b);
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
        d.call(result, task.buf.take().unwrap_or_default());
    } else if let Some(c) = task.ctl_done.take() {
        let _ = c.send(result.map(|r| r.status));
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
        match at_reader_idle(IdleJob::Call(Box::new(move || r.set(true)))) {
            Ok(()) => panic!("queued on a thread that is no reader"),
            Err(job) => job.run(),
        }
        assert!(ran.get());
    }
}
