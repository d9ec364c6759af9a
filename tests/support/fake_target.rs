//! A scripted fake iSCSI target, for what a real target (tgtd) will not
//! do on request: redirect, refuse a login, negotiate oddly, ping the
//! initiator, send async events and unit attentions, or break the
//! protocol on purpose.
//!
//! It speaks iSCSI with the crate's own codec (`pdu`, `text`, `digest`)
//! on a `TcpListener` at 127.0.0.1:0, one thread per connection, and
//! serves one LUN backed by an in-memory disk (8 MiB of 512-byte blocks).
//! Every PDU the initiator sends in the full-feature phase is recorded in
//! the [`Log`], with every protocol rule the initiator broke
//! (`Log::violations`: segment above our MaxRecvDataSegmentLength, CmdSN
//! out of order, bad digest, Data-Out outside its burst, ...). A test
//! usually ends with [`FakeTarget::assert_clean`].
//!
//! Scripting, from coarse to fine:
//! - the plain fields of [`Behaviour`]: negotiation values, the TMF
//!   answer, the SendTargets data and how it is split;
//! - [`Behaviour::on_login`]: edit each Login Response before it goes out
//!   ([`LoginTurn::refuse`], [`LoginTurn::redirect`], `reply_keys.set`);
//! - [`Behaviour::on_ready`]: act once, when the connection reaches the
//!   full-feature phase (async messages, pings);
//! - [`Behaviour::on_pdu`]: see each full-feature PDU before the default
//!   handling and decide: [`Step::Default`] (let the disk answer),
//!   [`Step::Handled`] (you answered, or chose silence) or
//!   [`Step::HangUp`]. [`Ctx`] holds the building blocks: `send`,
//!   `send_raw`, `send_corrupt`, `respond`, `check_condition`, `data_in`,
//!   `execute` + `reply`, `nop_ping`, `async_event`, `default`.
//!
//! Fault injection (drop, delay, corrupt a PDU) belongs in `on_pdu` /
//! `Ctx`; the default handling stays a well-behaved RFC 7143 target.
//! [`Behaviour::on_command`] with [`Ctx::send_data_in`] /
//! [`Ctx::send_good`] scripts a hostile answer to one kind of command.
//!
//! CHAP ([`Behaviour::chap`], [`ChapTarget`]): the target demands
//! `AuthMethod=CHAP`, challenges with `CHAP_A=5 CHAP_I CHAP_C`, checks
//! `CHAP_N`/`CHAP_R` (MD5, RFC 1994) and refuses a wrong answer with
//! 0x0201; with mutual CHAP it answers the initiator's `CHAP_I`/`CHAP_C`.
//! [`ChapHostile`] makes it waive authentication, skip the mutual answer
//! or answer it wrongly. What it did is in `Log::chap`.
//! [`Behaviour::discovery_chap`] gives discovery sessions
//! (`SessionType=Discovery`) other credentials than normal ones.
//!
//! Not here: several connections per session, ErrorRecoveryLevel above 0,
//! SNACK, AHS.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sanroot::iscsi::chap::chap_response;
use sanroot::iscsi::digest;
use sanroot::iscsi::login::Portal;
use sanroot::iscsi::pdu::{
    AsyncMessage, BHS_LEN, Bhs, DataIn, DataOut, LoginRequest, LoginResponse, LogoutResponse,
    NopIn, Pdu, R2t, RESERVED_TAG, ScsiCommand, ScsiResponse, Stage, TargetSn, TaskMgmtResponse,
    TextRequest, TextResponse, pad4,
};
use sanroot::iscsi::text::{TextKeys, encode_hex, parse_binary, parse_number_in};
use sanroot::scsi::data::{
    Association, BlockLimits, CodeSet, Designator, DesignatorType, DeviceId, Inquiry,
    LogicalBlockProvisioning, Lun, ModePage, ModeSense, Peripheral, ProvisioningType,
    ReadCapacity10, ReadCapacity16, ReportLuns, SupportedPages, UnitSerial, lun_number,
};
use sanroot::scsi::sense::{Sense, SenseKey};
use sanroot::secret::Secret;

/// The target name the fake answers to by default.
pub const TARGET_IQN: &str = "iqn.2026-11.org.sanroot.test:fake";
pub const BLOCK: usize = 512;
pub const DISK_BYTES: usize = 8 << 20;
/// The unit serial number (VPD 0x80) of the fake disk.
pub const SERIAL: &str = "FAKE0001";

// ---------------------------------------------------------------- script

/// What a hook on a full-feature PDU decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run the default handling (the in-memory disk, NOP answers, ...).
    Default,
    /// The hook answered (or chose not to); do nothing more.
    Handled,
    /// Close the connection now.
    HangUp,
}

/// Which digest [`Ctx::send_corrupt`] spoils.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    None,
    HeaderDigest,
    DataDigest,
}

/// One Text Response's worth of SendTargets data.
#[derive(Debug, Clone)]
pub struct TextChunk {
    pub data: Vec<u8>,
    /// C bit: the text continues mid key=value in the next response.
    pub cont: bool,
}

/// Hooks are `Sync` because the `Behaviour` is shared by the connection
/// threads (a hook runs under a lock, one call at a time).
pub type LoginHook = Box<dyn FnMut(&mut LoginTurn<'_>) + Send + Sync>;
pub type ReadyHook = Box<dyn FnMut(&mut Ctx<'_>) + Send + Sync>;
pub type PduHook = Box<dyn FnMut(&mut Ctx<'_>, &Seen) -> Step + Send + Sync>;

/// How the fake target behaves. `Behaviour::default()` is a well-behaved
/// target with one 8 MiB LUN 0 and no CHAP.
pub struct Behaviour {
    pub target_name: String,
    pub lun: u64,
    /// Our MaxRecvDataSegmentLength declaration: the initiator must not
    /// send a larger data segment.
    pub max_recv_data_segment: u32,
    /// Our side of MaxBurstLength / FirstBurstLength (results: minimum).
    pub max_burst: u32,
    pub first_burst: u32,
    /// Our side of InitialR2T (result: OR) and ImmediateData (AND).
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// Command window: MaxCmdSN = ExpCmdSN + window - 1.
    pub cmd_window: u32,
    /// Final Data-In carries the status (S bit) instead of a separate
    /// SCSI Response.
    pub phase_collapse: bool,
    /// Response code of every Task Management Response.
    pub tmf_response: u8,
    /// The SendTargets answer, one chunk per Text Response; the initiator
    /// fetches the next with an empty Text Request carrying our TTT.
    pub send_targets: Vec<TextChunk>,
    /// Demand CHAP in the security stage (`None`: no authentication).
    pub chap: Option<ChapTarget>,
    /// Discovery sessions (`SessionType=Discovery` in the first Login
    /// Request) demand this CHAP instead of `chap`; `None`: the same as
    /// normal sessions.
    pub discovery_chap: Option<ChapTarget>,
    pub on_login: Option<LoginHook>,
    pub on_ready: Option<ReadyHook>,
    pub on_pdu: Option<PduHook>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            target_name: TARGET_IQN.into(),
            lun: 0,
            max_recv_data_segment: 262_144,
            max_burst: 1 << 20,
            first_burst: 65_536,
            initial_r2t: false,
            immediate_data: true,
            cmd_window: 32,
            phase_collapse: true,
            tmf_response: 0,
            send_targets: Vec::new(),
            chap: None,
            discovery_chap: None,
            on_login: None,
            on_ready: None,
            on_pdu: None,
        }
    }
}

impl Behaviour {
    pub fn chap(mut self, chap: ChapTarget) -> Self {
        self.chap = Some(chap);
        self
    }
    /// Discovery sessions demand `chap` (normal sessions keep `self.chap`).
    pub fn discovery_chap(mut self, chap: ChapTarget) -> Self {
        self.discovery_chap = Some(chap);
        self
    }
    /// Answer SendTargets with `lines` (`key=value`, each ended by a NUL)
    /// in one Text Response.
    pub fn answer_send_targets(mut self, lines: &[&str]) -> Self {
        let mut data = Vec::new();
        for l in lines {
            data.extend_from_slice(l.as_bytes());
            data.push(0);
        }
        self.send_targets = vec![TextChunk { data, cont: false }];
        self
    }
    /// The CHAP a session of this type must pass.
    fn chap_for(&self, discovery: bool) -> Option<&ChapTarget> {
        match &self.discovery_chap {
            Some(d) if discovery => Some(d),
            _ => self.chap.as_ref(),
        }
    }
    /// Answer every SCSI command `which` picks with `act`; the rest (and
    /// every other PDU) get the default handling.
    pub fn on_command(
        self,
        which: impl Fn(&ScsiCommand) -> bool + Send + Sync + 'static,
        mut act: impl FnMut(&mut Ctx<'_>, &ScsiCommand) + Send + Sync + 'static,
    ) -> Self {
        self.on_pdu(move |ctx, seen| match seen.command() {
            Some(c) if which(c) => {
                act(ctx, c);
                Step::Handled
            }
            _ => Step::Default,
        })
    }
    pub fn on_login(mut self, f: impl FnMut(&mut LoginTurn<'_>) + Send + Sync + 'static) -> Self {
        self.on_login = Some(Box::new(f));
        self
    }
    pub fn on_ready(mut self, f: impl FnMut(&mut Ctx<'_>) + Send + Sync + 'static) -> Self {
        self.on_ready = Some(Box::new(f));
        self
    }
    pub fn on_pdu(
        mut self,
        f: impl FnMut(&mut Ctx<'_>, &Seen) -> Step + Send + Sync + 'static,
    ) -> Self {
        self.on_pdu = Some(Box::new(f));
        self
    }
}

struct Hooks {
    on_login: Option<LoginHook>,
    on_ready: Option<ReadyHook>,
    on_pdu: Option<PduHook>,
}

/// One Login Response about to be sent, for [`Behaviour::on_login`] to
/// edit. `reply` and `reply_keys` hold the default answer.
pub struct LoginTurn<'a> {
    /// Connection number on this fake (0 for the first).
    pub conn: usize,
    /// The port this fake listens on (for a redirect to itself).
    pub local_port: u16,
    pub request: &'a LoginRequest,
    pub keys: &'a TextKeys,
    pub reply: LoginResponse,
    pub reply_keys: TextKeys,
}

impl LoginTurn<'_> {
    /// Answer with a non-zero status (RFC 7143 §11.13.5) and no keys.
    pub fn refuse(&mut self, class: u8, detail: u8) {
        refuse_reply(&mut self.reply, &mut self.reply_keys, class, detail);
    }

    /// "Target moved temporarily" (0x0101) to `target_address`
    /// (`host:port,tpgt`).
    pub fn redirect(&mut self, target_address: &str) {
        self.refuse(1, 1);
        self.reply_keys.push("TargetAddress", target_address);
    }

    pub fn security_stage(&self) -> bool {
        self.request.csg == Stage::Security
    }
}

// ---------------------------------------------------------------- log

/// One PDU the initiator sent, as the fake received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Connection number on this fake.
    pub conn: usize,
    pub pdu: Pdu,
    /// The data segment (immediate data, Data-Out payload, text, ping data).
    pub data: Vec<u8>,
}

impl Seen {
    pub fn command(&self) -> Option<&ScsiCommand> {
        match &self.pdu {
            Pdu::ScsiCommand(c) => Some(c),
            _ => None,
        }
    }
}

/// What the fake saw. Inspect with [`FakeTarget::log`].
#[derive(Debug, Default)]
pub struct Log {
    /// Connections accepted.
    pub connections: usize,
    /// Logins that reached the full-feature phase.
    pub logins: usize,
    /// The keys of every Login Request, in order.
    pub login_keys: Vec<TextKeys>,
    /// Every full-feature PDU from the initiator, in order.
    pub pdus: Vec<Seen>,
    /// R2Ts sent.
    pub r2ts: usize,
    /// Protocol rules the initiator broke.
    pub violations: Vec<String>,
    /// Connections that ended, and how.
    pub closed: Vec<(usize, String)>,
    /// What the CHAP target did, in words ("initiator authenticated",
    /// "refused: ...", "answered the mutual challenge", ...).
    pub chap: Vec<String>,
}

impl Log {
    pub fn commands(&self) -> impl Iterator<Item = (&ScsiCommand, &[u8])> {
        self.pdus.iter().filter_map(|s| match &s.pdu {
            Pdu::ScsiCommand(c) => Some((c, &s.data[..])),
            _ => None,
        })
    }
    pub fn data_outs(&self) -> impl Iterator<Item = (&DataOut, &[u8])> {
        self.pdus.iter().filter_map(|s| match &s.pdu {
            Pdu::DataOut(d) => Some((d, &s.data[..])),
            _ => None,
        })
    }
}

// ---------------------------------------------------------------- target

struct Shared {
    cfg: Behaviour,
    hooks: Mutex<Hooks>,
    disk: Mutex<Vec<u8>>,
    log: Mutex<Log>,
    port: u16,
    stop: AtomicBool,
    /// Clones of every accepted stream, to unblock their threads on drop.
    streams: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A failed assertion in a hook must not hide the log from the test.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake target; stops (closing every connection) when dropped.
pub struct FakeTarget {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeTarget {
    pub fn start(mut b: Behaviour) -> FakeTarget {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let hooks = Hooks {
            on_login: b.on_login.take(),
            on_ready: b.on_ready.take(),
            on_pdu: b.on_pdu.take(),
        };
        let shared = Arc::new(Shared {
            cfg: b,
            hooks: Mutex::new(hooks),
            disk: Mutex::new(vec![0u8; DISK_BYTES]),
            log: Mutex::new(Log::default()),
            port,
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("fake-target-{port}"))
            .spawn(move || accept_loop(s, listener))
            .expect("spawn accept thread");
        FakeTarget {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn portal(&self) -> Portal {
        Portal::new("127.0.0.1", self.port)
    }

    pub fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.shared.log)
    }

    pub fn disk(&self) -> MutexGuard<'_, Vec<u8>> {
        lock(&self.shared.disk)
    }

    /// Poll the log until `cond` holds or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&Log) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(&self.log()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Panic if the initiator broke a protocol rule the fake checks.
    pub fn assert_clean(&self) {
        let log = self.log();
        assert!(
            log.violations.is_empty(),
            "the initiator broke the protocol:\n  {}",
            log.violations.join("\n  ")
        );
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for s in lock(&self.shared.streams).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let id = {
                    let mut log = lock(&shared.log);
                    log.connections += 1;
                    log.connections - 1
                };
                if let Ok(c) = stream.try_clone() {
                    lock(&shared.streams).push(c);
                }
                // A stream accepted while stopping is closed at once.
                if shared.stop.load(Ordering::SeqCst) {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                let s = Arc::clone(&shared);
                let t = std::thread::Builder::new()
                    .name(format!("fake-conn-{id}"))
                    .spawn(move || serve(s, stream, id))
                    .expect("spawn connection thread");
                lock(&shared.threads).push(t);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

// ---------------------------------------------------------------- framing

/// Reads initiator PDUs (the crate's `PduReader` refuses initiator
/// opcodes, rightly, so the fake frames its side itself).
struct Reader {
    r: BufReader<TcpStream>,
    header_digest: bool,
    data_digest: bool,
}

enum RxError {
    /// The stream ended or failed (not a protocol matter).
    Closed(String),
    /// The initiator sent something wrong.
    Bad(String),
}

impl Reader {
    /// The next PDU and its data segment; `Ok(None)` at a clean EOF.
    fn read_pdu(&mut self) -> Result<Option<(Pdu, Vec<u8>)>, RxError> {
        let io = |what: &str, e: std::io::Error| RxError::Closed(format!("{what}: {e}"));
        let mut bhs = [0u8; BHS_LEN];
        loop {
            match self.r.read(&mut bhs[..1]) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("reading a header", e)),
            }
        }
        self.r
            .read_exact(&mut bhs[1..])
            .map_err(|e| io("header cut short", e))?;
        let view = Bhs::new_unchecked(&bhs[..]);
        let mut ahs = vec![0u8; view.total_ahs_len()];
        self.r.read_exact(&mut ahs).map_err(|e| io("AHS", e))?;
        if self.header_digest {
            let got = self.read_digest()?;
            let want = digest::crc32c(&[&bhs, &ahs]);
            if got != want {
                return Err(RxError::Bad(format!(
                    "header digest 0x{got:08x}, computed 0x{want:08x}"
                )));
            }
        }
        let len = view.data_segment_len();
        let mut data = vec![0u8; pad4(len)];
        self.r
            .read_exact(&mut data)
            .map_err(|e| io("data segment", e))?;
        if self.data_digest && len > 0 {
            let got = self.read_digest()?;
            let want = digest::crc32c(&[&data]);
            if got != want {
                return Err(RxError::Bad(format!(
                    "data digest 0x{got:08x}, computed 0x{want:08x}"
                )));
            }
        }
        data.truncate(len);
        let pdu = Pdu::parse(&bhs).map_err(|e| RxError::Bad(e.to_string()))?;
        if !pdu.opcode().is_initiator() {
            return Err(RxError::Bad(format!(
                "{} from the initiator",
                pdu.opcode().name()
            )));
        }
        Ok(Some((pdu, data)))
    }

    fn read_digest(&mut self) -> Result<u32, RxError> {
        let mut d = [0u8; 4];
        self.r
            .read_exact(&mut d)
            .map_err(|e| RxError::Closed(format!("digest: {e}")))?;
        Ok(digest::from_wire(d))
    }
}

/// A whole PDU as bytes: BHS, header digest, data, padding, data digest.
pub fn frame(
    pdu: &Pdu,
    data: &[u8],
    header_digest: bool,
    data_digest: bool,
    corrupt: Corrupt,
) -> Vec<u8> {
    let mut out = pdu.to_bytes(data.len()).to_vec();
    if header_digest {
        let mut crc = digest::crc32c(&[&out]);
        if corrupt == Corrupt::HeaderDigest {
            crc ^= 0x0100;
        }
        out.extend_from_slice(&digest::to_wire(crc));
    }
    if !data.is_empty() {
        let start = out.len();
        out.extend_from_slice(data);
        out.resize(start + pad4(data.len()), 0);
        if data_digest {
            let mut crc = digest::crc32c(&[&out[start..]]);
            if corrupt == Corrupt::DataDigest {
                crc ^= 0x0100;
            }
            out.extend_from_slice(&digest::to_wire(crc));
        }
    }
    out
}

// ---------------------------------------------------------------- connection

/// A write collecting its data: immediate, unsolicited, then R2T bursts.
struct WriteTask {
    cmd: ScsiCommand,
    buf: Vec<u8>,
    /// Bytes received so far (in order: DataPDUInOrder=Yes).
    got: usize,
    seq: Sequence,
    next_r2t_sn: u32,
}

enum Sequence {
    /// Unsolicited Data-Out (TTT 0xffffffff) up to FirstBurstLength.
    Unsolicited { data_sn: u32 },
    /// Answering our R2T `ttt`, up to byte `end`.
    Solicited { ttt: u32, end: usize, data_sn: u32 },
}

/// Per-connection state: framing, sequence numbers, tasks.
struct Conn {
    id: usize,
    w: TcpStream,
    header_digest: bool,
    data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: bound on what we send.
    peer_max_segment: usize,
    /// Ours as declared: bound on what we accept.
    max_segment: usize,
    max_burst: u32,
    first_burst: u32,
    initial_r2t: bool,
    immediate_data: bool,
    window: u32,
    stat_sn: u32,
    exp_cmd_sn: u32,
    writes: HashMap<u32, WriteTask>,
    /// SendTargets continuation: (our TTT, next chunk).
    text_next: Option<(u32, usize)>,
    next_ttt: u32,
    hung_up: bool,
}

/// What a hook works with: the connection and the fake's disk and log.
pub struct Ctx<'a> {
    conn: &'a mut Conn,
    shared: &'a Shared,
}

/// The result of running a CDB on the fake disk.
#[derive(Debug, Clone)]
pub enum Outcome {
    Good,
    Data(Vec<u8>),
    Check(Sense),
    /// Another status without sense (BUSY 0x08, TASK SET FULL 0x28, ...).
    Status(u8),
}

impl Ctx<'_> {
    pub fn conn_id(&self) -> usize {
        self.conn.id
    }

    pub fn cfg(&self) -> &Behaviour {
        &self.shared.cfg
    }

    pub fn disk(&self) -> MutexGuard<'_, Vec<u8>> {
        lock(&self.shared.disk)
    }

    pub fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.shared.log)
    }

    /// Record a protocol rule the initiator broke.
    pub fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("fake target: violation: {what}");
        self.log().violations.push(what);
    }

    /// The largest data segment we may send (the initiator's declaration).
    pub fn peer_max_segment(&self) -> usize {
        self.conn.peer_max_segment
    }

    /// Sequence numbers for a PDU that carries no status (StatSN not
    /// advanced).
    pub fn sn(&self) -> TargetSn {
        TargetSn {
            stat_sn: self.conn.stat_sn,
            exp_cmd_sn: self.conn.exp_cmd_sn,
            max_cmd_sn: self
                .conn
                .exp_cmd_sn
                .wrapping_add(self.conn.window)
                .wrapping_sub(1),
        }
    }

    /// Sequence numbers for a PDU that carries status: StatSN advances.
    pub fn status_sn(&mut self) -> TargetSn {
        let sn = self.sn();
        self.conn.stat_sn = self.conn.stat_sn.wrapping_add(1);
        sn
    }

    pub fn send(&mut self, pdu: &Pdu, data: &[u8]) {
        self.send_corrupt(pdu, data, Corrupt::None);
    }

    /// Send with the negotiated digests, one of them spoiled on request.
    pub fn send_corrupt(&mut self, pdu: &Pdu, data: &[u8], corrupt: Corrupt) {
        let bytes = frame(
            pdu,
            data,
            self.conn.header_digest,
            self.conn.data_digest,
            corrupt,
        );
        self.send_raw(&bytes);
    }

    /// Bytes straight onto the wire. Write errors are ignored: the reader
    /// sees the connection end next.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.conn.w.write_all(bytes);
    }

    /// Close the connection (both directions).
    pub fn hang_up(&mut self) {
        self.conn.hung_up = true;
        let _ = self.conn.w.shutdown(Shutdown::Both);
    }

    /// SCSI Response with `status` and optional sense data.
    pub fn respond(&mut self, cmd: &ScsiCommand, status: u8, sense: Option<&Sense>) {
        let mut data = Vec::new();
        if let Some(s) = sense {
            data.extend_from_slice(&[0, 0]);
            s.emit(&mut data);
            let n = (data.len() - 2) as u16;
            data[..2].copy_from_slice(&n.to_be_bytes());
        }
        // A read that failed moved no data.
        let under = status != 0 && cmd.read && cmd.expected_len > 0;
        let resp = Pdu::ScsiResponse(ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow: false,
            underflow: under,
            response: 0,
            status,
            itt: cmd.itt,
            sn: self.status_sn(),
            exp_data_sn: 0,
            bidi_residual: 0,
            residual: if under { cmd.expected_len } else { 0 },
        });
        self.send(&resp, &data);
    }

    pub fn check_condition(&mut self, cmd: &ScsiCommand, key: SenseKey, asc: u8, ascq: u8) {
        self.respond(cmd, 2, Some(&Sense::new(key, asc, ascq)));
    }

    /// Send `data` as Data-In (segments of at most the initiator's
    /// MaxRecvDataSegmentLength) with status GOOD, phase-collapsed unless
    /// `Behaviour::phase_collapse` is off. Residuals as SAM says.
    pub fn data_in(&mut self, cmd: &ScsiCommand, data: &[u8]) {
        let want = cmd.expected_len as usize;
        let n = data.len().min(want);
        let (over, under, residual) = match data.len().cmp(&want) {
            std::cmp::Ordering::Less => (false, true, want - data.len()),
            std::cmp::Ordering::Greater => (true, false, data.len() - want),
            std::cmp::Ordering::Equal => (false, false, 0),
        };
        let collapse = self.shared.cfg.phase_collapse && n > 0;
        let seg = self.conn.peer_max_segment.max(1);
        let mut off = 0;
        let mut data_sn = 0;
        while off < n {
            let len = (n - off).min(seg);
            let last = off + len == n;
            let status = last && collapse;
            let sn = if status { self.status_sn() } else { self.sn() };
            let pdu = Pdu::DataIn(DataIn {
                final_: last,
                ack: false,
                overflow: status && over,
                underflow: status && under,
                has_status: status,
                status: 0,
                lun: cmd.lun,
                itt: cmd.itt,
                ttt: RESERVED_TAG,
                sn,
                data_sn,
                buffer_offset: off as u32,
                residual: if status { residual as u32 } else { 0 },
            });
            self.send(&pdu, &data[off..off + len]);
            off += len;
            data_sn += 1;
        }
        if !collapse {
            let resp = Pdu::ScsiResponse(ScsiResponse {
                bidi_overflow: false,
                bidi_underflow: false,
                overflow: over,
                underflow: under,
                response: 0,
                status: 0,
                itt: cmd.itt,
                sn: self.status_sn(),
                exp_data_sn: data_sn,
                bidi_residual: 0,
                residual: residual as u32,
            });
            self.send(&resp, &[]);
        }
    }

    /// One Data-In for `cmd`, exactly as given: `last` makes it the final
    /// one with status GOOD (phase collapse) and no residual, whatever was
    /// sent before. The building block of hostile answers.
    pub fn send_data_in(
        &mut self,
        cmd: &ScsiCommand,
        data_sn: u32,
        offset: u32,
        data: &[u8],
        last: bool,
    ) {
        let sn = if last { self.status_sn() } else { self.sn() };
        self.send(&data_in_pdu(cmd, sn, data_sn, offset, last), data);
    }

    /// A SCSI Response with status GOOD, no residual and ExpDataSN 0.
    pub fn send_good(&mut self, cmd: &ScsiCommand) {
        let sn = self.status_sn();
        self.send(&good_pdu(cmd.itt, sn), &[]);
    }

    /// Answer a command with an [`Outcome`].
    pub fn reply(&mut self, cmd: &ScsiCommand, outcome: Outcome) {
        match outcome {
            Outcome::Good => self.respond(cmd, 0, None),
            Outcome::Status(s) => self.respond(cmd, s, None),
            Outcome::Check(sense) => self.respond(cmd, 2, Some(&sense)),
            Outcome::Data(d) if d.is_empty() => self.respond(cmd, 0, None),
            Outcome::Data(d) => self.data_in(cmd, &d),
        }
    }

    /// Ping the initiator: NOP-In with ITT 0xffffffff and our TTT; it must
    /// answer with a NOP-Out carrying the same TTT and data.
    pub fn nop_ping(&mut self, ttt: u32, data: &[u8]) {
        let pdu = Pdu::NopIn(NopIn {
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt,
            sn: self.sn(),
        });
        self.send(&pdu, data);
    }

    /// Async Message (RFC 7143 §11.9): event 0 carries `data` (SenseLength
    /// + sense), event 1 asks for logout within `param3` seconds.
    pub fn async_event(&mut self, event: u8, lun: [u8; 8], param3: u16, data: &[u8]) {
        let pdu = Pdu::AsyncMessage(AsyncMessage {
            lun,
            sn: self.status_sn(),
            event,
            vcode: 0,
            param1: 0,
            param2: 0,
            param3,
        });
        self.send(&pdu, data);
    }

    /// Run a non-write CDB on the fake disk (writes collect their data
    /// first; see the default handling).
    pub fn execute(&self, cmd: &ScsiCommand) -> Outcome {
        emulate(&self.disk(), &cmd.cdb)
    }

    /// The default handling of a full-feature PDU.
    pub fn default(&mut self, seen: &Seen) {
        match &seen.pdu {
            Pdu::ScsiCommand(c) => self.scsi_command(c, &seen.data),
            Pdu::DataOut(d) => self.data_out(d, &seen.data),
            Pdu::NopOut(n) => {
                // A ping (ITT set) gets an answer with its data; an answer
                // to our ping (ITT reserved) needs nothing.
                if n.itt != RESERVED_TAG {
                    let pdu = Pdu::NopIn(NopIn {
                        lun: n.lun,
                        itt: n.itt,
                        ttt: RESERVED_TAG,
                        sn: self.status_sn(),
                    });
                    self.send(&pdu, &seen.data);
                }
            }
            Pdu::TaskMgmtRequest(t) => {
                let pdu = Pdu::TaskMgmtResponse(TaskMgmtResponse {
                    response: self.shared.cfg.tmf_response,
                    itt: t.itt,
                    sn: self.status_sn(),
                });
                self.send(&pdu, &[]);
            }
            Pdu::TextRequest(t) => self.text(t, &seen.data),
            Pdu::LogoutRequest(l) => {
                let pdu = Pdu::LogoutResponse(LogoutResponse {
                    response: 0,
                    itt: l.itt,
                    sn: self.status_sn(),
                    time2wait: 0,
                    time2retain: 0,
                });
                self.send(&pdu, &[]);
                // RFC 7143 §11.15: the target closes after a logout.
                self.hang_up();
            }
            other => self.violation(format!(
                "unexpected {} in the full-feature phase",
                other.opcode().name()
            )),
        }
    }

    fn scsi_command(&mut self, c: &ScsiCommand, data: &[u8]) {
        if lun_number(&c.lun) != self.shared.cfg.lun {
            // LOGICAL UNIT NOT SUPPORTED.
            self.check_condition(c, SenseKey::IllegalRequest, 0x25, 0);
            return;
        }
        if c.write {
            self.start_write(c, data);
        } else {
            if !data.is_empty() {
                self.violation(format!("{} bytes of immediate data on a read", data.len()));
            }
            let out = self.execute(c);
            self.reply(c, out);
        }
    }

    fn start_write(&mut self, c: &ScsiCommand, imm: &[u8]) {
        let total = c.expected_len as usize;
        if !imm.is_empty() {
            if !self.conn.immediate_data {
                self.violation("immediate data although ImmediateData=No");
            }
            if imm.len() > self.conn.first_burst as usize {
                self.violation(format!(
                    "{} bytes of immediate data, above FirstBurstLength {}",
                    imm.len(),
                    self.conn.first_burst
                ));
            }
        }
        if imm.len() > total {
            self.violation(format!(
                "{} bytes of immediate data for a {total}-byte write",
                imm.len()
            ));
            self.check_condition(c, SenseKey::IllegalRequest, 0x24, 0);
            return;
        }
        let mut buf = vec![0u8; total];
        buf[..imm.len()].copy_from_slice(imm);
        let task = WriteTask {
            cmd: c.clone(),
            buf,
            got: imm.len(),
            seq: Sequence::Unsolicited { data_sn: 0 },
            next_r2t_sn: 0,
        };
        if !c.final_ {
            // Unsolicited Data-Out follows.
            if self.conn.initial_r2t {
                self.violation("unsolicited Data-Out announced (F=0) although InitialR2T=Yes");
            }
            self.conn.writes.insert(c.itt, task);
            return;
        }
        self.advance(task);
    }

    /// Ask for the next burst, or finish the write.
    fn advance(&mut self, mut task: WriteTask) {
        let total = task.buf.len();
        if task.got >= total {
            self.finish_write(task);
            return;
        }
        let ttt = self.conn.next_ttt;
        self.conn.next_ttt = self.conn.next_ttt.wrapping_add(1) & 0x7fff_ffff;
        let len = (total - task.got).min(self.conn.max_burst as usize);
        let pdu = Pdu::R2t(R2t {
            lun: task.cmd.lun,
            itt: task.cmd.itt,
            ttt,
            sn: self.sn(),
            r2t_sn: task.next_r2t_sn,
            buffer_offset: task.got as u32,
            desired_len: len as u32,
        });
        task.next_r2t_sn += 1;
        task.seq = Sequence::Solicited {
            ttt,
            end: task.got + len,
            data_sn: 0,
        };
        self.conn.writes.insert(task.cmd.itt, task);
        self.log().r2ts += 1;
        self.send(&pdu, &[]);
    }

    fn data_out(&mut self, d: &DataOut, data: &[u8]) {
        let Some(mut task) = self.conn.writes.remove(&d.itt) else {
            self.violation(format!("Data-Out for unknown ITT 0x{:08x}", d.itt));
            return;
        };
        let total = task.buf.len();
        let (want_ttt, data_sn, end) = match task.seq {
            Sequence::Unsolicited { data_sn } => (
                RESERVED_TAG,
                data_sn,
                total.min(self.conn.first_burst as usize),
            ),
            Sequence::Solicited { ttt, end, data_sn } => (ttt, data_sn, end),
        };
        let off = d.buffer_offset as usize;
        if d.ttt != want_ttt {
            self.violation(format!(
                "Data-Out TTT 0x{:08x}, expected 0x{want_ttt:08x}",
                d.ttt
            ));
        }
        if d.data_sn != data_sn {
            self.violation(format!("Data-Out DataSN {}, expected {data_sn}", d.data_sn));
        }
        if off != task.got {
            self.violation(format!(
                "Data-Out at offset {off}, expected {} (DataPDUInOrder=Yes)",
                task.got
            ));
        }
        if off + data.len() > end {
            self.violation(format!(
                "Data-Out {off}+{} beyond the burst ending at {end}",
                data.len()
            ));
        }
        if let Some(dst) = task.buf.get_mut(off..off + data.len()) {
            dst.copy_from_slice(data);
        }
        task.got = task.got.max(off + data.len()).min(total);
        let next = data_sn.wrapping_add(1);
        task.seq = match task.seq {
            Sequence::Unsolicited { .. } => Sequence::Unsolicited { data_sn: next },
            Sequence::Solicited { ttt, end, .. } => Sequence::Solicited {
                ttt,
                end,
                data_sn: next,
            },
        };
        if !d.final_ {
            self.conn.writes.insert(d.itt, task);
            return;
        }
        if task.got < end && matches!(task.seq, Sequence::Solicited { .. }) {
            self.violation(format!(
                "Data-Out sequence ended at {} before the R2T's end {end}",
                task.got
            ));
        }
        self.advance(task);
    }

    fn finish_write(&mut self, task: WriteTask) {
        let c = task.cmd;
        let cdb = c.cdb;
        let (lba, blocks) = match cdb[0] {
            0x2a => (
                u64::from(u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]])),
                u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
            ),
            0x8a => (
                u64::from_be_bytes([
                    cdb[2], cdb[3], cdb[4], cdb[5], cdb[6], cdb[7], cdb[8], cdb[9],
                ]),
                u64::from(u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]])),
            ),
            _ => {
                self.check_condition(&c, SenseKey::IllegalRequest, 0x20, 0);
                return;
            }
        };
        let disk_blocks = (DISK_BYTES / BLOCK) as u64;
        if lba.checked_add(blocks).is_none_or(|e| e > disk_blocks) {
            self.check_condition(&c, SenseKey::IllegalRequest, 0x21, 0);
            return;
        }
        let n = task.buf.len().min(blocks as usize * BLOCK);
        let at = lba as usize * BLOCK;
        self.disk()[at..at + n].copy_from_slice(&task.buf[..n]);
        self.respond(&c, 0, None);
    }

    fn text(&mut self, t: &TextRequest, data: &[u8]) {
        let idx = if t.ttt == RESERVED_TAG {
            let keys = TextKeys::parse(data).unwrap_or_default();
            if keys.get("SendTargets").is_none() {
                self.violation(format!("Text Request without SendTargets: {keys:?}"));
            }
            0
        } else {
            match self.conn.text_next {
                Some((ttt, i)) if ttt == t.ttt => {
                    if !data.is_empty() {
                        self.violation("continuing Text Request carries data");
                    }
                    i
                }
                _ => {
                    self.violation(format!("Text Request with unknown TTT 0x{:08x}", t.ttt));
                    return;
                }
            }
        };
        let chunks = &self.shared.cfg.send_targets;
        let (chunk, cont) = chunks
            .get(idx)
            .map(|c| (c.data.clone(), c.cont))
            .unwrap_or_default();
        let last = idx + 1 >= chunks.len();
        let ttt = if last {
            RESERVED_TAG
        } else {
            0x7e00 + idx as u32
        };
        self.conn.text_next = (!last).then_some((ttt, idx + 1));
        let pdu = Pdu::TextResponse(TextResponse {
            final_: last,
            cont: cont && !last,
            itt: t.itt,
            ttt,
            sn: self.status_sn(),
        });
        self.send(&pdu, &chunk);
    }
}

/// A Data-In for `cmd` with no residual; `last` sets F and S (GOOD).
pub fn data_in_pdu(cmd: &ScsiCommand, sn: TargetSn, data_sn: u32, offset: u32, last: bool) -> Pdu {
    Pdu::DataIn(DataIn {
        final_: last,
        ack: false,
        overflow: false,
        underflow: false,
        has_status: last,
        status: 0,
        lun: cmd.lun,
        itt: cmd.itt,
        ttt: RESERVED_TAG,
        sn,
        data_sn,
        buffer_offset: offset,
        residual: 0,
    })
}

/// A SCSI Response GOOD for task `itt`, no residual, ExpDataSN 0.
pub fn good_pdu(itt: u32, sn: TargetSn) -> Pdu {
    Pdu::ScsiResponse(ScsiResponse {
        bidi_overflow: false,
        bidi_underflow: false,
        overflow: false,
        underflow: false,
        response: 0,
        status: 0,
        itt,
        sn,
        exp_data_sn: 0,
        bidi_residual: 0,
        residual: 0,
    })
}

/// READ(10) or READ(16).
pub fn is_read(c: &ScsiCommand) -> bool {
    matches!(c.cdb[0], 0x28 | 0x88)
}

// ---------------------------------------------------------------- SCSI

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

fn illegal(asc: u8, ascq: u8) -> Outcome {
    Outcome::Check(Sense::new(SenseKey::IllegalRequest, asc, ascq))
}

fn truncated(mut d: Vec<u8>, alloc: usize) -> Outcome {
    d.truncate(alloc);
    Outcome::Data(d)
}

/// A small SBC disk: TUR, INQUIRY (standard, VPD 00/80/83/B0/B2), READ
/// CAPACITY(10)/(16), MODE SENSE(6)/(10), READ(10)/(16), SYNCHRONIZE
/// CACHE(10)/(16), REPORT LUNS. Anything else: ILLEGAL REQUEST 20/00.
pub fn emulate(disk: &[u8], cdb: &[u8; 16]) -> Outcome {
    let blocks = (disk.len() / BLOCK) as u64;
    let mut out = Vec::new();
    match cdb[0] {
        0x00 | 0x35 | 0x91 => Outcome::Good,
        0x12 if cdb[1] & 1 == 0 => {
            if cdb[2] != 0 {
                return illegal(0x24, 0);
            }
            Inquiry {
                peripheral: Peripheral::from_u8(0),
                removable: false,
                version: 6,
                normaca: false,
                hisup: true,
                response_data_format: 2,
                additional_len: 31,
                sccs: false,
                tpgs: 0,
                third_party_copy: false,
                protect: false,
                encserv: false,
                multip: false,
                cmdque: true,
                vendor: "SANROOT".into(),
                product: "FAKE DISK".into(),
                revision: "0001".into(),
            }
            .emit(&mut out);
            truncated(out, be16(&cdb[3..5]))
        }
        0x12 => {
            match cdb[2] {
                0x00 => SupportedPages {
                    pages: vec![0x00, 0x80, 0x83, 0xb0, 0xb2],
                }
                .emit(&mut out),
                0x80 => UnitSerial {
                    serial: SERIAL.into(),
                }
                .emit(&mut out),
                0x83 => DeviceId {
                    designators: vec![Designator {
                        protocol_id: 0,
                        code_set: CodeSet::Binary,
                        piv: false,
                        association: Association::LogicalUnit,
                        kind: DesignatorType::Naa,
                        id: vec![
                            0x60, 0x01, 0x40, 0x5a, 0x4b, 0x45, 0x44, 0x49, 0x53, 0x4b, 0, 0, 0, 0,
                            0, 1,
                        ],
                    }],
                }
                .emit(&mut out),
                0xb0 => BlockLimits {
                    max_transfer_length: 2048,
                    optimal_transfer_length: 256,
                    ..BlockLimits::default()
                }
                .emit(&mut out),
                0xb2 => LogicalBlockProvisioning {
                    threshold_exponent: 0,
                    lbpu: false,
                    lbpws: false,
                    lbpws10: false,
                    lbprz: 0,
                    anc_sup: false,
                    dp: false,
                    provisioning_type: ProvisioningType::Full,
                }
                .emit(&mut out),
                _ => return illegal(0x24, 0),
            }
            truncated(out, be16(&cdb[3..5]))
        }
        0x25 => {
            ReadCapacity10 {
                last_lba: (blocks - 1) as u32,
                block_len: BLOCK as u32,
            }
            .emit(&mut out);
            Outcome::Data(out)
        }
        0x9e if cdb[1] & 0x1f == 0x10 => {
            ReadCapacity16 {
                last_lba: blocks - 1,
                block_len: BLOCK as u32,
                ..ReadCapacity16::default()
            }
            .emit(&mut out);
            truncated(out, be32(&cdb[10..14]))
        }
        0x1a | 0x5a => {
            let m = ModeSense {
                device_specific: 0x10, // DPOFUA
                pages: vec![ModePage {
                    code: 0x08,
                    subpage: 0,
                    spf: false,
                    ps: false,
                    data: {
                        let mut p = vec![0u8; 18];
                        p[0] = 0x04; // WCE
                        p
                    },
                }],
                ..ModeSense::default()
            };
            if cdb[0] == 0x1a {
                m.emit_6(&mut out);
                truncated(out, usize::from(cdb[4]))
            } else {
                m.emit_10(&mut out);
                truncated(out, be16(&cdb[7..9]))
            }
        }
        0x28 | 0x88 => {
            let (lba, n) = if cdb[0] == 0x28 {
                (be32(&cdb[2..6]) as u64, be16(&cdb[7..9]) as u64)
            } else {
                (
                    u64::from_be_bytes([
                        cdb[2], cdb[3], cdb[4], cdb[5], cdb[6], cdb[7], cdb[8], cdb[9],
                    ]),
                    be32(&cdb[10..14]) as u64,
                )
            };
            if lba.checked_add(n).is_none_or(|e| e > blocks) {
                return illegal(0x21, 0);
            }
            let at = lba as usize * BLOCK;
            Outcome::Data(disk[at..at + n as usize * BLOCK].to_vec())
        }
        0xa0 => {
            ReportLuns {
                list_len: 8,
                luns: vec![Lun::from_number(0)],
                truncated: false,
            }
            .emit(&mut out);
            truncated(out, be32(&cdb[6..10]))
        }
        _ => illegal(0x20, 0),
    }
}

// ---------------------------------------------------------------- CHAP

/// How a CHAP target breaks the rules on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChapHostile {
    /// A well-behaved CHAP target.
    #[default]
    None,
    /// Answer `AuthMethod=None` whatever the initiator offered: skip
    /// authentication altogether.
    WaiveAuth,
    /// Check the initiator, then leave the security stage without
    /// answering its mutual challenge (no `CHAP_N`/`CHAP_R`).
    SkipMutualAnswer,
    /// Answer the mutual challenge with a `CHAP_R` from another secret.
    WrongMutualResponse,
}

/// The target side of CHAP (RFC 7143 §12.1.3, MD5 only).
#[derive(Debug, Clone)]
pub struct ChapTarget {
    /// The `CHAP_N` the initiator must send, and its secret.
    pub user: String,
    pub secret: String,
    /// Mutual CHAP: the name and secret this target answers the
    /// initiator's challenge with. `None`: an initiator challenge is
    /// refused with 0x0201.
    pub mutual: Option<(String, String)>,
    /// Send `CHAP_C` in base64 (`0b…`) instead of hex.
    pub base64: bool,
    pub hostile: ChapHostile,
}

impl ChapTarget {
    pub fn new(user: &str, secret: &str) -> ChapTarget {
        ChapTarget {
            user: user.into(),
            secret: secret.into(),
            mutual: None,
            base64: false,
            hostile: ChapHostile::None,
        }
    }
    pub fn mutual(mut self, name: &str, secret: &str) -> ChapTarget {
        self.mutual = Some((name.into(), secret.into()));
        self
    }
    pub fn hostile(mut self, h: ChapHostile) -> ChapTarget {
        self.hostile = h;
        self
    }
}

/// One connection's CHAP exchange so far.
#[derive(Default)]
struct ChapState {
    /// The identifier and challenge we sent.
    challenge: Option<(u8, Vec<u8>)>,
    /// The initiator proved itself (or the hostile target waived it).
    done: bool,
}

/// Turn a Login Response into a refusal with `class`/`detail` and no keys.
fn refuse_reply(reply: &mut LoginResponse, keys: &mut TextKeys, class: u8, detail: u8) {
    reply.status_class = class;
    reply.status_detail = detail;
    reply.transit = false;
    reply.tsih = 0;
    *keys = TextKeys::new();
}

/// 16 bytes no two connections share (not secret: a test target).
fn fresh_challenge() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    (0..2)
        .flat_map(|i: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.finish().to_be_bytes()
        })
        .collect()
}

fn encode_base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::from("0b");
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The CHAP part of one Login Response in the security stage: edits
/// `reply`/`rk` (the default answer) and returns what happened, for the
/// log. A wrong answer from the initiator is refused with 0x0201.
fn chap_turn(
    c: &ChapTarget,
    st: &mut ChapState,
    req: &LoginRequest,
    keys: &TextKeys,
    reply: &mut LoginResponse,
    rk: &mut TextKeys,
) -> Vec<String> {
    if reply.status_class != 0 || req.csg != Stage::Security {
        return Vec::new();
    }
    let mut said = Vec::new();
    if let Err(why) = chap_step(c, st, keys, rk, &mut said) {
        refuse_reply(reply, rk, 2, 1);
        said.push(format!("refused: {why}"));
        return said;
    }
    if req.transit && !st.done {
        refuse_reply(reply, rk, 2, 1);
        said.push("refused: leaving the security stage before CHAP".into());
    }
    said
}

fn chap_step(
    c: &ChapTarget,
    st: &mut ChapState,
    keys: &TextKeys,
    rk: &mut TextKeys,
    said: &mut Vec<String>,
) -> Result<(), String> {
    if keys.contains("AuthMethod") && c.hostile == ChapHostile::WaiveAuth {
        rk.set("AuthMethod", "None");
        st.done = true;
        said.push("waived authentication (AuthMethod=None)".into());
        return Ok(());
    }
    if let Some(a) = keys.get("CHAP_A") {
        if !a.split(',').any(|x| x == "5") {
            return Err(format!("CHAP_A={a} without MD5 (5)"));
        }
        let challenge = fresh_challenge();
        let id = challenge[0];
        rk.push("CHAP_A", "5");
        rk.push("CHAP_I", id.to_string());
        rk.push(
            "CHAP_C",
            if c.base64 {
                encode_base64(&challenge)
            } else {
                encode_hex(&challenge)
            },
        );
        st.challenge = Some((id, challenge));
        said.push("challenged the initiator".into());
    }
    if let Some(name) = keys.get("CHAP_N") {
        check_initiator(c, st, name, keys.get("CHAP_R"))?;
        said.push(format!("initiator authenticated as {name}"));
        st.done = true;
        answer_mutual(c, keys, rk, said)?;
    }
    Ok(())
}

/// The initiator's CHAP_N/CHAP_R against our user, secret and challenge.
fn check_initiator(
    c: &ChapTarget,
    st: &mut ChapState,
    name: &str,
    response: Option<&str>,
) -> Result<(), String> {
    let (id, challenge) = st.challenge.take().ok_or("CHAP_N before CHAP_A")?;
    let got = response
        .ok_or("CHAP_N without CHAP_R")
        .and_then(|r| parse_binary("CHAP_R", r, 1024).map_err(|_| "CHAP_R does not decode"))?;
    let want = chap_response(id, &Secret::from(c.secret.as_str()), &challenge);
    if name != c.user || got != want {
        return Err(format!("wrong CHAP_N ({name}) or CHAP_R"));
    }
    Ok(())
}

/// Mutual CHAP: answer the initiator's CHAP_I/CHAP_C (or, hostile, not,
/// or wrongly).
fn answer_mutual(
    c: &ChapTarget,
    keys: &TextKeys,
    rk: &mut TextKeys,
    said: &mut Vec<String>,
) -> Result<(), String> {
    let (id, challenge) = match (keys.get("CHAP_I"), keys.get("CHAP_C")) {
        (None, None) => return Ok(()),
        (Some(i), Some(ch)) => (i, ch),
        _ => return Err("CHAP_I without CHAP_C, or the reverse".into()),
    };
    let Some((name, secret)) = &c.mutual else {
        return Err("the initiator asks for mutual CHAP, not configured here".into());
    };
    let id = parse_number_in("CHAP_I", id, 0, 255).map_err(|e| e.to_string())? as u8;
    let challenge = parse_binary("CHAP_C", challenge, 1024).map_err(|e| e.to_string())?;
    let secret = match c.hostile {
        ChapHostile::SkipMutualAnswer => {
            said.push("skipped the answer to the mutual challenge".into());
            return Ok(());
        }
        ChapHostile::WrongMutualResponse => format!("{secret}-not-it"),
        _ => secret.clone(),
    };
    let r = chap_response(id, &Secret::from(secret.as_str()), &challenge);
    rk.push("CHAP_N", name.as_str());
    rk.push("CHAP_R", encode_hex(&r));
    said.push("answered the mutual challenge".into());
    Ok(())
}

// ---------------------------------------------------------------- login

fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

fn number(v: &str) -> u64 {
    v.parse().unwrap_or(0)
}

/// The answer a sensible target gives to each key of a Login Request.
fn default_login_answer(
    cfg: &Behaviour,
    chap: Option<&ChapTarget>,
    req: &LoginRequest,
    keys: &TextKeys,
    stat_sn: u32,
    first: bool,
    tsih: u16,
) -> (LoginResponse, TextKeys) {
    let mut rk = TextKeys::new();
    let mut status = (0u8, 0u8);
    let discovery = keys.get("SessionType") == Some("Discovery");
    for (k, v) in keys.iter() {
        let answer: String = match k {
            "InitiatorName" | "InitiatorAlias" | "SessionType" => continue,
            "TargetName" => {
                if !discovery && v != cfg.target_name {
                    status = (2, 3);
                }
                continue;
            }
            "AuthMethod" if chap.is_some() => {
                if v.split(',').any(|m| m == "CHAP") {
                    "CHAP".into()
                } else {
                    status = (2, 1);
                    continue;
                }
            }
            // Handled by `chap_turn`.
            "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R" if chap.is_some() => continue,
            "AuthMethod" => {
                if v.split(',').any(|m| m == "None") {
                    "None".into()
                } else {
                    status = (2, 1);
                    continue;
                }
            }
            // List keys: the initiator's first choice.
            "HeaderDigest" | "DataDigest" => v.split(',').next().unwrap_or("None").into(),
            "MaxConnections" | "MaxOutstandingR2T" => "1".into(),
            "InitialR2T" => yes_no(v == "Yes" || cfg.initial_r2t).into(),
            "ImmediateData" => yes_no(v == "Yes" && cfg.immediate_data).into(),
            "MaxRecvDataSegmentLength" => cfg.max_recv_data_segment.to_string(),
            "MaxBurstLength" => number(v).min(cfg.max_burst.into()).to_string(),
            "FirstBurstLength" => number(v).min(cfg.first_burst.into()).to_string(),
            "DefaultTime2Wait" => v.into(),
            "DefaultTime2Retain" => number(v).min(20).to_string(),
            "DataPDUInOrder" | "DataSequenceInOrder" => "Yes".into(),
            "ErrorRecoveryLevel" => "0".into(),
            _ => "NotUnderstood".into(),
        };
        rk.push(k, answer);
    }
    if first && !discovery && status.0 == 0 {
        rk.push("TargetPortalGroupTag", "1");
    }
    let ok = status.0 == 0;
    let done = ok && req.transit && req.nsg == Stage::FullFeature;
    let reply = LoginResponse {
        transit: req.transit && ok,
        cont: false,
        csg: req.csg,
        nsg: req.nsg,
        version_max: 0,
        version_active: 0,
        isid: req.isid,
        tsih: if done { tsih } else { 0 },
        itt: req.itt,
        sn: TargetSn {
            stat_sn,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn.wrapping_add(cfg.cmd_window).wrapping_sub(1),
        },
        status_class: status.0,
        status_detail: status.1,
    };
    if !ok {
        rk = TextKeys::new();
    }
    (reply, rk)
}

impl Conn {
    /// Settle the full-feature parameters from what we answered
    /// (`agreed`) and what the initiator declared (`declared`).
    fn apply(&mut self, agreed: &TextKeys, declared: &TextKeys) {
        let num = |k: &TextKeys, key: &str, default: u64| k.get(key).map_or(default, number);
        let flag = |key: &str, default: bool| agreed.get(key).map_or(default, |v| v == "Yes");
        self.header_digest = agreed.get("HeaderDigest") == Some("CRC32C");
        self.data_digest = agreed.get("DataDigest") == Some("CRC32C");
        self.initial_r2t = flag("InitialR2T", true);
        self.immediate_data = flag("ImmediateData", true);
        self.max_burst = num(agreed, "MaxBurstLength", 262_144) as u32;
        self.first_burst = (num(agreed, "FirstBurstLength", 65_536) as u32).min(self.max_burst);
        self.max_segment = num(agreed, "MaxRecvDataSegmentLength", 8192) as usize;
        self.peer_max_segment = num(declared, "MaxRecvDataSegmentLength", 8192) as usize;
    }
}

// ---------------------------------------------------------------- serve

fn serve(shared: Arc<Shared>, stream: TcpStream, id: usize) {
    let Ok(w) = stream.try_clone() else {
        return;
    };
    let mut reader = Reader {
        r: BufReader::with_capacity(64 * 1024, stream),
        header_digest: false,
        data_digest: false,
    };
    let mut conn = Conn {
        id,
        w,
        header_digest: false,
        data_digest: false,
        peer_max_segment: 8192,
        max_segment: 8192,
        max_burst: 262_144,
        first_burst: 65_536,
        initial_r2t: true,
        immediate_data: true,
        window: shared.cfg.cmd_window.max(1),
        // Not 0 or 1, so an initiator assuming a start value shows.
        stat_sn: 0x5000 + id as u32 * 0x100,
        exp_cmd_sn: 0,
        writes: HashMap::new(),
        text_next: None,
        next_ttt: 0x100,
        hung_up: false,
    };
    let end = match login(&shared, &mut reader, &mut conn) {
        Ok(true) => {
            reader.header_digest = conn.header_digest;
            reader.data_digest = conn.data_digest;
            full_feature(&shared, &mut reader, &mut conn)
        }
        Ok(false) => {
            // Refused or redirected: let the initiator read the answer and
            // close first.
            let _ = reader
                .r
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(5)));
            let mut sink = [0u8; 512];
            while matches!(reader.r.read(&mut sink), Ok(n) if n > 0) {}
            "login ended without the full-feature phase".to_string()
        }
        Err(e) => e,
    };
    let _ = conn.w.shutdown(Shutdown::Both);
    lock(&shared.log).closed.push((id, end));
}

/// The login phase; true when it reached the full-feature phase.
fn login(shared: &Shared, reader: &mut Reader, conn: &mut Conn) -> Result<bool, String> {
    let mut agreed = TextKeys::new();
    let mut declared = TextKeys::new();
    let mut first = true;
    let mut chap = ChapState::default();
    // The session type is declared in the first Login Request.
    let mut discovery = false;
    loop {
        let (pdu, data) = match reader.read_pdu() {
            Ok(Some(p)) => p,
            Ok(None) => return Err("initiator closed the connection during login".into()),
            Err(RxError::Closed(e)) => return Err(e),
            Err(RxError::Bad(e)) => {
                lock(&shared.log).violations.push(format!("login: {e}"));
                return Err(e);
            }
        };
        let Pdu::LoginRequest(req) = pdu else {
            let what = format!("{} during login", pdu.opcode().name());
            lock(&shared.log).violations.push(what.clone());
            return Err(what);
        };
        if req.cont {
            lock(&shared.log)
                .violations
                .push("Login Request with C=1 (the fake does not join them)".into());
        }
        let keys = TextKeys::parse(&data).unwrap_or_else(|e| {
            lock(&shared.log)
                .violations
                .push(format!("login keys do not parse: {e}"));
            TextKeys::new()
        });
        lock(&shared.log).login_keys.push(keys.clone());
        for (k, v) in keys.iter() {
            declared.set(k, v);
        }
        conn.exp_cmd_sn = req.cmd_sn;
        let tsih = 0x1000 + conn.id as u16;
        if first {
            discovery = keys.get("SessionType") == Some("Discovery");
        }
        let chap_cfg = shared.cfg.chap_for(discovery);
        let (mut reply, mut reply_keys) = default_login_answer(
            &shared.cfg,
            chap_cfg,
            &req,
            &keys,
            conn.stat_sn,
            first,
            tsih,
        );
        first = false;
        if let Some(c) = chap_cfg {
            let said = chap_turn(c, &mut chap, &req, &keys, &mut reply, &mut reply_keys);
            lock(&shared.log).chap.extend(said);
        }
        let mut turn = LoginTurn {
            conn: conn.id,
            local_port: shared.port,
            request: &req,
            keys: &keys,
            reply,
            reply_keys,
        };
        if let Some(h) = lock(&shared.hooks).on_login.as_mut() {
            h(&mut turn);
        }
        let LoginTurn {
            reply, reply_keys, ..
        } = turn;
        let bytes = frame(
            &Pdu::LoginResponse(reply.clone()),
            &reply_keys.to_bytes(),
            false,
            false,
            Corrupt::None,
        );
        conn.w
            .write_all(&bytes)
            .map_err(|e| format!("sending a Login Response: {e}"))?;
        conn.stat_sn = conn.stat_sn.wrapping_add(1);
        if reply.status_class != 0 {
            return Ok(false);
        }
        for (k, v) in reply_keys.iter() {
            agreed.set(k, v);
        }
        if reply.transit && reply.nsg == Stage::FullFeature {
            conn.apply(&agreed, &declared);
            lock(&shared.log).logins += 1;
            return Ok(true);
        }
    }
}

/// Immediate PDUs carry CmdSN without advancing it (RFC 7143 §3.2.2.1).
fn cmd_sn_of(pdu: &Pdu) -> Option<(u32, bool)> {
    match pdu {
        Pdu::ScsiCommand(c) => Some((c.cmd_sn, c.immediate)),
        Pdu::NopOut(n) => Some((n.cmd_sn, true)),
        Pdu::TaskMgmtRequest(t) => Some((t.cmd_sn, true)),
        Pdu::TextRequest(t) => Some((t.cmd_sn, true)),
        Pdu::LogoutRequest(l) => Some((l.cmd_sn, true)),
        _ => None,
    }
}

fn full_feature(shared: &Shared, reader: &mut Reader, conn: &mut Conn) -> String {
    if let Some(h) = lock(&shared.hooks).on_ready.as_mut() {
        h(&mut Ctx {
            conn: &mut *conn,
            shared,
        });
    }
    loop {
        if conn.hung_up {
            return "the fake hung up".into();
        }
        let (pdu, data) = match reader.read_pdu() {
            Ok(Some(p)) => p,
            Ok(None) => return "initiator closed the connection".into(),
            Err(RxError::Closed(e)) => return e,
            Err(RxError::Bad(e)) => {
                lock(&shared.log).violations.push(e.clone());
                return e;
            }
        };
        let mut ctx = Ctx {
            conn: &mut *conn,
            shared,
        };
        if data.len() > ctx.conn.max_segment {
            ctx.violation(format!(
                "{} with a {}-byte data segment, above our MaxRecvDataSegmentLength {}",
                pdu.opcode().name(),
                data.len(),
                ctx.conn.max_segment
            ));
        }
        if let Some((sn, immediate)) = cmd_sn_of(&pdu) {
            if sn != ctx.conn.exp_cmd_sn {
                ctx.violation(format!(
                    "{} with CmdSN {sn}, expected {}",
                    pdu.opcode().name(),
                    ctx.conn.exp_cmd_sn
                ));
            }
            if !immediate {
                ctx.conn.exp_cmd_sn = sn.wrapping_add(1);
            }
        }
        let seen = Seen {
            conn: ctx.conn.id,
            pdu,
            data,
        };
        lock(&shared.log).pdus.push(seen.clone());
        let step = match lock(&shared.hooks).on_pdu.as_mut() {
            Some(h) => h(&mut ctx, &seen),
            None => Step::Default,
        };
        match step {
            Step::Default => ctx.default(&seen),
            Step::Handled => {}
            Step::HangUp => ctx.hang_up(),
        }
    }
}

// ---------------------------------------------------------------- raw portal

/// A portal that hands each accepted connection to `handler` as is, no
/// iSCSI spoken for it: for a target that never answers, or answers with
/// bytes no codec would produce. Stops (closing every connection) when
/// dropped; `handler` should return once [`RawConn::stopped`].
pub struct RawPortal {
    pub port: u16,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

/// One connection of a [`RawPortal`].
pub struct RawConn {
    pub stream: TcpStream,
    stop: Arc<AtomicBool>,
}

impl RawConn {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Say nothing until the portal is dropped.
    pub fn hold(&self) {
        while !self.stopped() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Read one PDU from the initiator (BHS and data segment, no
    /// digests: the login phase); its header.
    pub fn read_pdu(&mut self) -> std::io::Result<[u8; BHS_LEN]> {
        let mut bhs = [0u8; BHS_LEN];
        self.stream.read_exact(&mut bhs)?;
        let view = Bhs::new_unchecked(&bhs[..]);
        let rest = view.total_ahs_len() + pad4(view.data_segment_len());
        std::io::copy(
            &mut (&mut self.stream).take(rest as u64),
            &mut std::io::sink(),
        )?;
        Ok(bhs)
    }
}

impl RawPortal {
    pub fn start(handler: impl Fn(RawConn) + Send + Sync + 'static) -> RawPortal {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (s, st) = (Arc::clone(&stop), Arc::clone(&streams));
        let handler = Arc::new(handler);
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                if let Ok(c) = stream.try_clone() {
                    lock(&st).push(c);
                }
                let (h, stop) = (Arc::clone(&handler), Arc::clone(&s));
                std::thread::spawn(move || h(RawConn { stream, stop }));
            }
        });
        RawPortal {
            port,
            stop,
            streams,
            accept: Some(accept),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.streams).len()
    }
}

impl Drop for RawPortal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in lock(&self.streams).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}
