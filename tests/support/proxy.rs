//! A fault-injecting TCP proxy between an iSCSI initiator and its target,
//! driven by the test: it listens on 127.0.0.1:<free port>, forwards every
//! connection to the target, and on command
//!
//! - cuts every connection now (RST: SO_LINGER 0, or FIN);
//! - cuts after N more bytes in one direction, so that the cut lands
//!   inside a PDU at an offset the test chose (from a seeded [`Rng`]);
//! - cuts right after a chosen PDU: it follows the 48-byte Basic Header
//!   Segments on both streams (opcode, TotalAHSLength, DataSegmentLength;
//!   no digests), e.g. right after an R2T reached the initiator (before its
//!   Data-Out) or after the first Login Request reached the target, then
//!   optionally after N more bytes of either direction;
//! - stalls: stops forwarding but keeps every socket open (and accepts new
//!   connections, which stall too), as a hung target would; resumes;
//! - refuses new connections (each is reset as soon as it is accepted: a
//!   path that is down), and allows them again;
//! - counts connections (accepted, live, refused) and PDUs per opcode.
//!
//! Every cut is reported with where it landed in the stream ("1234 bytes
//! into a Data-Out PDU of 8240 bytes"). Only std threads: one accept loop
//! and two forwarders per connection.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A direction of the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// Initiator to target (commands, Data-Out, Login Requests).
    ToTarget,
    /// Target to initiator (responses, Data-In, R2T, Login Responses).
    ToInitiator,
}

impl Dir {
    pub fn name(self) -> &'static str {
        match self {
            Dir::ToTarget => "initiator->target",
            Dir::ToInitiator => "target->initiator",
        }
    }
}

/// How a connection is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutKind {
    /// Abortive close (SO_LINGER 0): both peers see a reset.
    Reset,
    /// Orderly shutdown: both peers see end of stream.
    Fin,
}

/// iSCSI opcodes (byte 0 of the BHS & 0x3f) the tests name.
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const DATA_OUT: u8 = 0x05;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const DATA_IN: u8 = 0x25;
    pub const R2T: u8 = 0x31;
}

pub fn opcode_name(op: u8) -> String {
    match op {
        0x00 => "NOP-Out".into(),
        0x01 => "SCSI Command".into(),
        0x02 => "Task Management Request".into(),
        0x03 => "Login Request".into(),
        0x04 => "Text Request".into(),
        0x05 => "Data-Out".into(),
        0x06 => "Logout Request".into(),
        0x10 => "SNACK".into(),
        0x20 => "NOP-In".into(),
        0x21 => "SCSI Response".into(),
        0x22 => "Task Management Response".into(),
        0x23 => "Login Response".into(),
        0x24 => "Text Response".into(),
        0x25 => "Data-In".into(),
        0x26 => "Logout Response".into(),
        0x31 => "R2T".into(),
        0x32 => "Async Message".into(),
        0x3f => "Reject".into(),
        o => format!("opcode 0x{o:02x}"),
    }
}

/// When an armed fault fires.
#[derive(Clone, Debug)]
pub enum Trigger {
    /// After `after` more bytes forwarded in `dir` (0: before the next one),
    /// on whichever connection carries them.
    Bytes { dir: Dir, after: u64 },
    /// Right after the `nth` (1-based) whole PDU with `opcode` was forwarded
    /// in `dir`; with `then: Some((d, n))`, after `n` more bytes in `d` of
    /// the same connection instead.
    AfterPdu {
        dir: Dir,
        opcode: u8,
        nth: u32,
        then: Option<(Dir, u64)>,
    },
}

/// Where a fired fault cut the stream.
#[derive(Clone, Debug)]
pub struct CutReport {
    /// Connection number (1 = the first accepted).
    pub conn: u64,
    pub kind: CutKind,
    pub at: Instant,
    /// The direction whose byte count or PDU fired the fault.
    pub dir: Dir,
    /// Whether that direction was cut inside a PDU (not at a boundary).
    pub mid_pdu: bool,
    /// Human-readable position, e.g. "initiator->target: 1234 bytes into
    /// a Data-Out PDU of 8240 bytes".
    pub detail: String,
}

/// Counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Connections accepted and forwarded.
    pub accepted: u64,
    /// Connections reset at once because new connections were refused.
    pub refused: u64,
    /// Connections reset because the target did not accept ours.
    pub upstream_failed: u64,
    /// Connections alive now.
    pub live: usize,
    /// Bytes forwarded [to target, to initiator].
    pub bytes: [u64; 2],
    /// Whole PDUs forwarded, by direction and opcode.
    pub pdus: BTreeMap<(Dir, u8), u64>,
}

impl Stats {
    pub fn pdus(&self, dir: Dir, opcode: u8) -> u64 {
        self.pdus.get(&(dir, opcode)).copied().unwrap_or(0)
    }
}

/// A small deterministic generator (splitmix64) for fault parameters, so
/// that a failing run can be repeated from its printed seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The seed in `var` if set (decimal), else one from the clock.
    pub fn seed_from_env(var: &str) -> u64 {
        if let Some(s) = std::env::var(var).ok().and_then(|v| v.trim().parse().ok()) {
            return s;
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        t ^ (u64::from(std::process::id()) << 32)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next_u64() as usize % items.len()]
    }
}

// ---- the stream parser ----------------------------------------------------

const BHS: usize = 48;

/// Follows PDU boundaries on one direction of a connection.
#[derive(Clone)]
struct Parser {
    hdr: [u8; BHS],
    have: usize,
    /// Bytes of the current PDU after its BHS still to come.
    rest: u64,
    /// Length of the current PDU (once its BHS is complete).
    total: u64,
    opcode: u8,
    /// Opcode of the last whole PDU.
    last: Option<u8>,
}

impl Parser {
    fn new() -> Parser {
        Parser {
            hdr: [0; BHS],
            have: 0,
            rest: 0,
            total: 0,
            opcode: 0,
            last: None,
        }
    }

    /// Bytes until the current PDU (or its BHS) ends.
    fn until_step(&self) -> u64 {
        if self.have < BHS {
            (BHS - self.have) as u64
        } else {
            self.rest
        }
    }

    /// Consume `data` (at most `until_step()` bytes); the opcode of a PDU
    /// that ended with it.
    fn consume(&mut self, data: &[u8]) -> Option<u8> {
        if self.have < BHS {
            self.hdr[self.have..self.have + data.len()].copy_from_slice(data);
            self.have += data.len();
            if self.have < BHS {
                return None;
            }
            self.opcode = self.hdr[0] & 0x3f;
            let ahs = u64::from(self.hdr[4]) * 4;
            let dlen =
                u64::from(self.hdr[5]) << 16 | u64::from(self.hdr[6]) << 8 | u64::from(self.hdr[7]);
            self.rest = ahs + dlen.div_ceil(4) * 4;
            self.total = BHS as u64 + self.rest;
        } else {
            self.rest -= data.len() as u64;
        }
        if self.rest == 0 {
            self.have = 0;
            self.last = Some(self.opcode);
            return Some(self.opcode);
        }
        None
    }

    fn offset(&self) -> u64 {
        if self.have < BHS {
            self.have as u64
        } else {
            self.total - self.rest
        }
    }

    fn mid_pdu(&self) -> bool {
        self.have != 0
    }

    fn describe(&self, dir: Dir) -> String {
        let d = dir.name();
        if self.have == 0 {
            match self.last {
                Some(o) => format!("{d}: at a PDU boundary, right after a {}", opcode_name(o)),
                None => format!("{d}: before the first byte"),
            }
        } else if self.have < BHS {
            format!(
                "{d}: {} bytes into a Basic Header Segment (opcode {})",
                self.have,
                if self.have > 0 {
                    opcode_name(self.hdr[0] & 0x3f)
                } else {
                    "?".into()
                }
            )
        } else {
            format!(
                "{d}: {} bytes into a {} PDU of {} bytes",
                self.offset(),
                opcode_name(self.opcode),
                self.total
            )
        }
    }
}

// ---- the proxy ---------------------------------------------------------------

enum Armed {
    Bytes {
        dir: Dir,
        remaining: u64,
        conn: Option<u64>,
        kind: CutKind,
    },
    Pdu {
        dir: Dir,
        opcode: u8,
        left: u32,
        then: Option<(Dir, u64)>,
        kind: CutKind,
    },
}

struct Conn {
    id: u64,
    client: TcpStream,
    upstream: TcpStream,
    dead: AtomicBool,
    forwarders: AtomicU8,
}

impl Conn {
    /// Cut both sides; the sockets close when the forwarders let go.
    fn kill(&self, kind: CutKind) {
        if self.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        for s in [&self.client, &self.upstream] {
            match kind {
                CutKind::Reset => {
                    set_linger0(s);
                    // Wakes a blocked reader without sending anything; the
                    // reset goes out when the last descriptor closes.
                    let _ = s.shutdown(Shutdown::Read);
                }
                CutKind::Fin => {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

fn set_linger0(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(
        s,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

/// Bytes still in the socket's send queue (SIOCOUTQ).
fn unsent(s: &TcpStream) -> i32 {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one int to the pointer.
    let r = unsafe { nix::libc::ioctl(s.as_raw_fd(), nix::libc::TIOCOUTQ, &mut n) };
    if r < 0 { 0 } else { n }
}

struct State {
    stalled: bool,
    refusing: bool,
    closing: bool,
    conns: Vec<Arc<Conn>>,
    next_id: u64,
    armed: Option<Armed>,
    fired: Vec<CutReport>,
    stats: Stats,
}

struct Inner {
    target: SocketAddr,
    st: Mutex<State>,
    cv: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Proxy {
    inner: Arc<Inner>,
    pub port: u16,
    accept: Option<JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(100);

impl Proxy {
    /// Listen on 127.0.0.1:<free port> and forward to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("proxy: nonblocking listener");
        let port = listener.local_addr().expect("proxy: local address").port();
        let inner = Arc::new(Inner {
            target,
            st: Mutex::new(State {
                stalled: false,
                refusing: false,
                closing: false,
                conns: Vec::new(),
                next_id: 1,
                armed: None,
                fired: Vec::new(),
                stats: Stats::default(),
            }),
            cv: Condvar::new(),
        });
        let i = Arc::clone(&inner);
        let accept = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(i, listener))
            .expect("proxy: accept thread");
        Proxy {
            inner,
            port,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cut every live connection now; returns how many.
    pub fn cut_all(&self, kind: CutKind) -> usize {
        let st = self.inner.lock();
        cut_all_locked(&st, kind)
    }

    /// Arm a fault (replacing one not fired yet). Returns a ticket for
    /// [`Proxy::wait_fired`].
    pub fn arm(&self, trigger: Trigger, kind: CutKind) -> usize {
        let mut st = self.inner.lock();
        st.armed = Some(armed(trigger, kind));
        st.fired.len()
    }

    /// Cut every live connection and arm a fault, atomically: nothing the
    /// old connections still carry counts towards it, so it fires on the
    /// initiator's next connection (e.g. during its login).
    pub fn cut_all_and_arm(&self, cut: CutKind, trigger: Trigger, kind: CutKind) -> usize {
        let mut st = self.inner.lock();
        cut_all_locked(&st, cut);
        st.armed = Some(armed(trigger, kind));
        st.fired.len()
    }

    pub fn disarm(&self) -> bool {
        self.inner.lock().armed.take().is_some()
    }

    /// Wait until the fault armed with `ticket` fires.
    pub fn wait_fired(&self, ticket: usize, timeout: Duration) -> Option<CutReport> {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            if let Some(r) = st.fired.get(ticket) {
                return Some(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .inner
                .cv
                .wait_timeout(st, (deadline - now).min(POLL))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Stop forwarding in both directions; sockets stay open and new
    /// connections are accepted (and stall too).
    pub fn stall(&self) {
        self.inner.lock().stalled = true;
    }

    pub fn resume(&self) {
        self.inner.lock().stalled = false;
        self.inner.cv.notify_all();
    }

    /// Refuse (reset at once) new connections, or accept them again.
    pub fn refuse(&self, on: bool) {
        self.inner.lock().refusing = on;
    }

    pub fn stats(&self) -> Stats {
        let st = self.inner.lock();
        let mut s = st.stats.clone();
        s.live = st
            .conns
            .iter()
            .filter(|c| !c.dead.load(Ordering::SeqCst))
            .count();
        s
    }

    pub fn live(&self) -> usize {
        self.stats().live
    }

    pub fn accepted(&self) -> u64 {
        self.inner.lock().stats.accepted
    }

    /// Every fault that fired so far.
    pub fn fired(&self) -> Vec<CutReport> {
        self.inner.lock().fired.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut st = self.inner.lock();
            st.closing = true;
            st.stalled = false;
            cut_all_locked(&st, CutKind::Fin);
        }
        self.inner.cv.notify_all();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn armed(trigger: Trigger, kind: CutKind) -> Armed {
    match trigger {
        Trigger::Bytes { dir, after } => Armed::Bytes {
            dir,
            remaining: after,
            conn: None,
            kind,
        },
        Trigger::AfterPdu {
            dir,
            opcode,
            nth,
            then,
        } => Armed::Pdu {
            dir,
            opcode,
            left: nth.max(1),
            then,
            kind,
        },
    }
}

fn cut_all_locked(st: &State, kind: CutKind) -> usize {
    let mut n = 0;
    for c in &st.conns {
        if !c.dead.load(Ordering::SeqCst) {
            c.kill(kind);
            n += 1;
        }
    }
    n
}

fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        if inner.lock().closing {
            return;
        }
        let (client, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        if inner.lock().refusing {
            set_linger0(&client);
            inner.lock().stats.refused += 1;
            drop(client);
            continue;
        }
        let upstream = match TcpStream::connect_timeout(&inner.target, Duration::from_secs(2)) {
            Ok(u) => u,
            Err(_) => {
                set_linger0(&client);
                inner.lock().stats.upstream_failed += 1;
                drop(client);
                continue;
            }
        };
        for s in [&client, &upstream] {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(POLL));
            let _ = s.set_write_timeout(Some(POLL));
        }
        let conn = {
            let mut st = inner.lock();
            let id = st.next_id;
            st.next_id += 1;
            st.stats.accepted += 1;
            let conn = Arc::new(Conn {
                id,
                client,
                upstream,
                dead: AtomicBool::new(false),
                forwarders: AtomicU8::new(2),
            });
            st.conns.push(Arc::clone(&conn));
            conn
        };
        spawn_forwarders(&inner, &conn);
    }
}

fn spawn_forwarders(inner: &Arc<Inner>, conn: &Arc<Conn>) {
    for dir in [Dir::ToTarget, Dir::ToInitiator] {
        let (src, dst) = match dir {
            Dir::ToTarget => (conn.client.try_clone(), conn.upstream.try_clone()),
            Dir::ToInitiator => (conn.upstream.try_clone(), conn.client.try_clone()),
        };
        let (Ok(src), Ok(dst)) = (src, dst) else {
            conn.kill(CutKind::Reset);
            finish_forwarder(inner, conn);
            continue;
        };
        let i = Arc::clone(inner);
        let c = Arc::clone(conn);
        let spawned = std::thread::Builder::new()
            .name(format!("proxy-c{}-{dir:?}", conn.id))
            .spawn(move || {
                forward(&i, &c, dir, src, dst);
                finish_forwarder(&i, &c);
            });
        if spawned.is_err() {
            conn.kill(CutKind::Reset);
            finish_forwarder(inner, conn);
        }
    }
}

/// The last forwarder of a connection takes it out of the table (its
/// sockets close when the last descriptor goes).
fn finish_forwarder(inner: &Inner, conn: &Conn) {
    if conn.forwarders.fetch_sub(1, Ordering::SeqCst) == 1 {
        let mut st = inner.lock();
        st.conns.retain(|c| c.id != conn.id);
        // A byte budget bound to this connection goes on with the next.
        if let Some(Armed::Bytes { conn: c, .. }) = &mut st.armed
            && *c == Some(conn.id)
        {
            *c = None;
        }
        inner.cv.notify_all();
    }
}

/// Wait while the proxy is stalled; false when the connection died.
fn wait_unstalled(inner: &Inner, conn: &Conn) -> bool {
    let mut st = inner.lock();
    while st.stalled && !st.closing && !conn.dead.load(Ordering::SeqCst) {
        st = inner
            .cv
            .wait_timeout(st, POLL)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    !conn.dead.load(Ordering::SeqCst)
}

fn forward(inner: &Inner, conn: &Conn, dir: Dir, mut src: TcpStream, mut dst: TcpStream) {
    let mut parser = Parser::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !wait_unstalled(inner, conn) {
            return;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => {
                conn.kill(CutKind::Fin);
                return;
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::TimedOut
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                continue;
            }
            Err(_) => {
                conn.kill(CutKind::Reset);
                return;
            }
        };
        // Data read just as a stall began is held too.
        if !wait_unstalled(inner, conn) {
            return;
        }
        let (len, cut) = decide(inner, conn, dir, &mut parser, &buf[..n]);
        if write_all(conn, &mut dst, &buf[..len]).is_err() {
            conn.kill(CutKind::Reset);
            return;
        }
        if let Some((kind, mut report)) = cut {
            if kind == CutKind::Reset {
                // Let what was forwarded leave before the reset discards it.
                let until = Instant::now() + Duration::from_millis(500);
                while unsent(&dst) > 0 && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            conn.kill(kind);
            report.at = Instant::now();
            inner.lock().fired.push(report);
            inner.cv.notify_all();
            return;
        }
    }
}

fn write_all(conn: &Conn, dst: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        if conn.dead.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        match dst.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::TimedOut
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How much of `data` to forward, and whether to cut after it. Follows
/// the PDUs and counts towards the armed fault.
fn decide(
    inner: &Inner,
    conn: &Conn,
    dir: Dir,
    parser: &mut Parser,
    data: &[u8],
) -> (usize, Option<(CutKind, CutReport)>) {
    let mut st = inner.lock();
    if conn.dead.load(Ordering::SeqCst) {
        return (0, None);
    }
    let mut off = 0usize;
    loop {
        // A byte budget that ran out fires before the next byte.
        if let Some(Armed::Bytes {
            dir: d,
            remaining: 0,
            conn: c,
            kind,
        }) = st.armed
            && d == dir
            && c.is_none_or(|c| c == conn.id)
        {
            st.armed = None;
            let report = CutReport {
                conn: conn.id,
                kind,
                at: Instant::now(),
                dir,
                mid_pdu: parser.mid_pdu(),
                detail: parser.describe(dir),
            };
            return (off, Some((kind, report)));
        }
        if off == data.len() {
            break;
        }
        let mut step = (parser.until_step() as usize).min(data.len() - off);
        if let Some(Armed::Bytes {
            dir: d,
            remaining,
            conn: c,
            ..
        }) = &mut st.armed
            && *d == dir
            && c.is_none_or(|c| c == conn.id)
        {
            step = step.min(*remaining as usize);
            *remaining -= step as u64;
        }
        let ended = parser.consume(&data[off..off + step]);
        off += step;
        st.stats.bytes[dir as usize] += step as u64;
        if let Some(opcode) = ended {
            *st.stats.pdus.entry((dir, opcode)).or_default() += 1;
            let mut fire = None;
            if let Some(Armed::Pdu {
                dir: d,
                opcode: o,
                left,
                then,
                kind,
            }) = &mut st.armed
                && *d == dir
                && *o == opcode
            {
                *left -= 1;
                if *left == 0 {
                    fire = Some((*then, *kind));
                }
            }
            match fire {
                Some((None, kind)) => {
                    st.armed = None;
                    let report = CutReport {
                        conn: conn.id,
                        kind,
                        at: Instant::now(),
                        dir,
                        mid_pdu: false,
                        detail: parser.describe(dir),
                    };
                    return (off, Some((kind, report)));
                }
                Some((Some((d, n)), kind)) => {
                    st.armed = Some(Armed::Bytes {
                        dir: d,
                        remaining: n,
                        conn: Some(conn.id),
                        kind,
                    });
                }
                None => {}
            }
        }
    }
    (off, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(opcode: u8, dlen: usize) -> Vec<u8> {
        let mut v = vec![0u8; BHS + dlen.div_ceil(4) * 4];
        v[0] = opcode;
        v[5] = (dlen >> 16) as u8;
        v[6] = (dlen >> 8) as u8;
        v[7] = dlen as u8;
        v
    }

    #[test]
    fn parser_follows_boundaries() {
        let mut p = Parser::new();
        let mut s = pdu(op::SCSI_CMD, 5);
        s.extend(pdu(op::DATA_OUT, 8192));
        let mut ends = vec![];
        let mut off = 0;
        while off < s.len() {
            let n = (p.until_step() as usize).min(s.len() - off).min(7);
            if let Some(o) = p.consume(&s[off..off + n]) {
                ends.push((off + n, o));
            }
            off += n;
        }
        assert_eq!(
            ends,
            vec![(56, op::SCSI_CMD), (56 + 48 + 8192, op::DATA_OUT)]
        );
    }
}
