//! The login phase (RFC 7143 §6): TCP connect, security negotiation (CHAP
//! or none), operational negotiation, login redirection, and every failure
//! turned into a message a person can act on.
//!
//! Blocking and single-threaded: the login exchange is a strict
//! request/response dialogue. What it returns (the socket, the reader with
//! anything it buffered, the negotiated parameters and sequence numbers) is
//! handed to `session` for the full-feature phase, or used directly by a
//! discovery session.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6, TcpStream};
use std::time::Duration;

use super::budget::Budget;
use super::chap::{AuthConfig, ChapError, ChapInitiator};
use super::conn::{ConnError, FrameParams, PduReader, PduWriter, RxHeader};
use super::negotiate::{Negotiated, NegotiationError, OperationalParams, SessionType};
use super::pdu::*;
use super::session::{FfpParams, SnState};
use super::text::{self, TextError, TextKeys};

/// Where to connect: a host (IP literal) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    pub host: String,
    pub port: u16,
}

impl Portal {
    pub fn new(host: impl Into<String>, port: u16) -> Portal {
        Portal {
            host: host.into(),
            port,
        }
    }

    /// The socket address. Only IP literals: sanroot is static and does no
    /// NSS lookups; a name is refused with a message saying so. An IPv6
    /// address may carry its zone (`fe80::1%eth0`, or the interface's
    /// index): a link-local address must, since it means nothing without
    /// the link it is on.
    pub fn socket_addr(&self) -> Result<SocketAddr, LoginError> {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        let (addr, zone) = match h.split_once('%') {
            Some((a, z)) => (a, Some(z)),
            None => (h, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| LoginError::Resolve(self.host.clone()))?;
        let zone_error = |why: String| LoginError::Zone {
            host: self.host.clone(),
            why,
        };
        match (ip, zone) {
            (IpAddr::V6(v6), Some(z)) => {
                let scope = zone_index(z).map_err(zone_error)?;
                Ok(SocketAddr::V6(SocketAddrV6::new(v6, self.port, 0, scope)))
            }
            (IpAddr::V4(_), Some(_)) => Err(zone_error("an IPv4 address has no zone".into())),
            (IpAddr::V6(_), None) if crate::url::is_v6_link_local(&ip) => Err(zone_error(
                "a link-local IPv6 address needs the interface it is reached through: write it as fe80::…%IFNAME (%25IFNAME in an iscsi:// URL), or use the target's global or unique-local address".into(),
            )),
            _ => Ok(SocketAddr::new(ip, self.port)),
        }
    }
}

/// An IPv6 zone: an interface name, or its index.
fn zone_index(zone: &str) -> Result<u32, String> {
    if zone.is_empty() {
        return Err("nothing after '%': name the interface (fe80::…%eth0)".into());
    }
    if let Ok(n) = zone.parse::<u32>() {
        return if n == 0 {
            Err("zone 0 is no interface".into())
        } else {
            Ok(n)
        };
    }
    nix::net::if_::if_nametoindex(zone)
        .map_err(|e| format!("no interface \"{zone}\" on this machine for its zone ({e})"))
}

impl fmt::Display for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything a login needs.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// What we offer; `initiator_name` and `target_name` live in here too
    /// (`target_name` None for a discovery session).
    pub params: OperationalParams,
    pub session_type: SessionType,
    pub isid: [u8; 6],
    /// 0 for a new session; the old TSIH to reinstate... (RFC 7143 §6.3.5:
    /// session reinstatement uses TSIH 0 and the same ISID).
    pub tsih: u16,
    pub auth: Option<AuthConfig>,
    /// Accept a target that waives authentication although we have
    /// credentials (otherwise that is refused: it may be an impostor).
    pub allow_no_auth: bool,
    pub connect_timeout: Duration,
    /// Bound on each login request/response round trip.
    pub io_timeout: Duration,
    /// Login redirections followed before giving up.
    pub max_redirects: u8,
}

impl LoginConfig {
    pub fn new(params: OperationalParams, session_type: SessionType, isid: [u8; 6]) -> LoginConfig {
        LoginConfig {
            params,
            session_type,
            isid,
            tsih: 0,
            auth: None,
            allow_no_auth: false,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(15),
            max_redirects: 8,
        }
    }
}

/// A logged-in connection, ready for the full-feature phase.
pub struct LoggedIn {
    pub socket: TcpStream,
    pub reader: PduReader<TcpStream>,
    pub negotiated: Negotiated,
    pub tsih: u16,
    pub sn: SnState,
    /// Where we ended up (after redirections).
    pub portal: Portal,
    pub redirects: u8,
}

impl LoggedIn {
    pub fn ffp_params(&self) -> FfpParams {
        let n = &self.negotiated;
        FfpParams {
            header_digest: n.header_digest,
            data_digest: n.data_digest,
            max_recv_data_segment: n.max_recv_data_segment_length,
            max_send_data_segment: n.max_send_data_segment_length,
            max_burst: n.max_burst_length,
            first_burst: n.first_burst_length,
            initial_r2t: n.initial_r2t,
            immediate_data: n.immediate_data,
            max_outstanding_r2t: u32::from(n.max_outstanding_r2t),
        }
    }
}

/// Why a login failed.
#[derive(Debug)]
pub enum LoginError {
    Resolve(String),
    /// An IPv6 zone (`%eth0`) that names no interface, or a link-local
    /// address without one.
    Zone {
        host: String,
        why: String,
    },
    Connect {
        portal: String,
        error: io::Error,
    },
    Conn {
        portal: String,
        error: ConnError,
    },
    /// The target answered with a non-zero status class.
    Status {
        portal: String,
        class: u8,
        detail: u8,
        target: String,
        initiator: String,
        /// We offered CHAP credentials (for the message of 0x0201).
        chap: bool,
    },
    Auth(ChapError),
    /// We have credentials and the target waived authentication.
    AuthWaived,
    /// Mutual CHAP is configured and the target skipped authentication:
    /// refused even when a waiver is allowed.
    MutualAuthWaived,
    /// The target wants CHAP and we have no credentials.
    AuthRequired,
    Negotiation(NegotiationError),
    Text(TextError),
    Protocol {
        portal: String,
        what: String,
    },
    TooManyRedirects(u8),
}

impl LoginError {
    /// True when trying again later may succeed (target busy, out of
    /// resources, connection trouble), false when only a configuration
    /// change helps (bad credentials, unknown target).
    pub fn is_transient(&self) -> bool {
        match self {
            LoginError::Connect { .. } | LoginError::Conn { .. } => true,
            LoginError::Status { class, detail, .. } => {
                *class == 3 || (*class == 2 && (*detail == 0x04 || *detail == 0x06))
            }
            _ => false,
        }
    }
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Zone { host, why } => write!(f, "cannot use host \"{host}\": {why}"),
            LoginError::Resolve(h) => write!(
                f,
                "cannot use host \"{h}\": give the portal as an IP address (sanroot is static and does no name lookups)"
            ),
            LoginError::Connect { portal, error } => {
                write!(f, "cannot connect to {portal}: {error}")
            }
            LoginError::Conn { portal, error } => write!(f, "login to {portal} failed: {error}"),
            LoginError::Status {
                portal,
                class: 2,
                detail: 1,
                chap: false,
                ..
            } => write!(
                f,
                "login to {portal} refused: authentication failed: the target wants credentials and none were given for this path (status 0x0201)"
            ),
            LoginError::Status {
                portal,
                class,
                detail,
                target,
                initiator,
                ..
            } => {
                write!(
                    f,
                    "login to {portal} refused: {} (status 0x{class:02x}{detail:02x})",
                    status_message(*class, *detail, target, initiator)
                )
            }
            LoginError::Auth(e) => write!(f, "authentication failed: {e}"),
            LoginError::AuthWaived => write!(
                f,
                "the target accepted us without authentication although CHAP credentials are configured; refusing (it may not be the target you think). Allow it explicitly if this is intended"
            ),
            LoginError::MutualAuthWaived => write!(
                f,
                "mutual CHAP is configured, so the target must prove its identity, but it accepted us without authentication; refusing even with --allow-no-auth (it may not be the target you think)"
            ),
            LoginError::AuthRequired => write!(
                f,
                "the target requires CHAP authentication and no credentials were given"
            ),
            LoginError::Negotiation(e) => write!(f, "parameter negotiation failed: {e}"),
            LoginError::Text(e) => write!(f, "bad login data from target: {e}"),
            LoginError::Protocol { portal, what } => {
                write!(f, "login to {portal}: protocol error: {what}")
            }
            LoginError::TooManyRedirects(n) => {
                write!(f, "login redirected {n} times; giving up (redirect loop?)")
            }
        }
    }
}

impl std::error::Error for LoginError {}

/// A readable reason for a login status (RFC 7143 §11.13.5).
pub fn status_message(class: u8, detail: u8, target: &str, initiator: &str) -> String {
    match (class, detail) {
        (1, 1) => "target moved temporarily".into(),
        (1, 2) => "target moved permanently".into(),
        (2, 0) => "initiator error".into(),
        (2, 1) => "authentication failed: the target refused our CHAP name or secret (or CHAP is configured on only one side)".into(),
        (2, 2) => format!("not authorized: initiator {initiator} may not access {target} (check the target's ACL)"),
        (2, 3) => format!("target not found: no target named {target} at this portal"),
        (2, 4) => format!("target removed: {target} is no longer available"),
        (2, 5) => "unsupported iSCSI version".into(),
        (2, 6) => "too many connections on this session".into(),
        (2, 7) => "the target says a required parameter is missing".into(),
        (2, 8) => "cannot include this connection in the session".into(),
        (2, 9) => "session type not supported by the target".into(),
        (2, 10) => "session does not exist".into(),
        (2, 11) => "invalid request during login".into(),
        (3, 0) => "target error".into(),
        (3, 1) => "target busy (service unavailable); try again later".into(),
        (3, 2) => "target out of resources".into(),
        (c, d) => format!("unknown status class {c} detail {d}"),
    }
}

/// Log in to `portal`, following redirections.
pub fn login(portal: &Portal, cfg: &LoginConfig) -> Result<LoggedIn, LoginError> {
    let mut portal = portal.clone();
    let mut redirects = 0u8;
    loop {
        match login_once(&portal, cfg)? {
            Outcome::Done(mut l) => {
                l.redirects = redirects;
                return Ok(*l);
            }
            Outcome::Redirect(to) => {
                redirects += 1;
                if redirects > cfg.max_redirects {
                    return Err(LoginError::TooManyRedirects(redirects - 1));
                }
                log::info!("login redirected from {portal} to {to}");
                portal = to;
            }
        }
    }
}

enum Outcome {
    Done(Box<LoggedIn>),
    Redirect(Portal),
}

/// Bound on login round trips in one stage (a target that keeps answering
/// T=0 forever is broken).
const MAX_EXCHANGES: usize = 16;
/// Bound on a login response spread over continuation PDUs.
const MAX_LOGIN_DATA: usize = 64 * 1024;
/// Bound on Login Response PDUs in one login (all stages, continuations
/// included): empty continuations carry no bytes to count.
const MAX_LOGIN_PDUS: u32 = 64;

struct Dialogue {
    portal: Portal,
    w: PduWriter<TcpStream>,
    r: PduReader<TcpStream>,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    first: bool,
    target: String,
    initiator: String,
    /// CHAP credentials were configured.
    chap: bool,
    /// The whole login's deadline and PDU cap.
    budget: Budget,
}

struct Answer {
    resp: LoginResponse,
    keys: TextKeys,
}

impl Dialogue {
    fn conn_err(&self, e: ConnError) -> LoginError {
        LoginError::Conn {
            portal: self.portal.to_string(),
            error: e,
        }
    }

    /// The next response header, within the login's deadline and PDU cap.
    fn read_header(&mut self) -> Result<RxHeader, LoginError> {
        self.budget
            .before_read(self.r.get_ref())
            .map_err(|e| self.conn_err(ConnError::Io(e)))?;
        let h = self
            .r
            .read_header()
            .map_err(|e| self.conn_err(self.explain(e)))?;
        self.budget.pdu().map_err(|m| self.protocol(m))?;
        Ok(h)
    }

    /// The data of the header just read.
    fn read_data(&mut self) -> Result<Vec<u8>, LoginError> {
        self.r
            .read_data_vec()
            .map_err(|e| self.conn_err(self.explain(e)))
    }

    /// A read that timed out says which exchange and how long.
    fn explain(&self, e: ConnError) -> ConnError {
        match e {
            ConnError::Io(io) => ConnError::Io(self.budget.explain(io)),
            other => other,
        }
    }

    fn protocol(&self, what: impl Into<String>) -> LoginError {
        LoginError::Protocol {
            portal: self.portal.to_string(),
            what: what.into(),
        }
    }

    /// A Login Request header for this dialogue.
    fn request(&self, transit: bool, cont: bool, csg: Stage, nsg: Stage) -> Pdu {
        Pdu::LoginRequest(LoginRequest {
            transit,
            cont,
            csg,
            nsg,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        })
    }

    /// Send one login request with `keys` and collect the full answer
    /// (joining continuation PDUs).
    fn exchange(
        &mut self,
        csg: Stage,
        transit: bool,
        nsg: Stage,
        keys: &TextKeys,
    ) -> Result<Answer, LoginError> {
        let data = keys.to_bytes();
        let mut data_out: &[u8] = &data;
        let mut collected: Vec<u8> = Vec::new();
        loop {
            // Our own request may need continuation too (long CHAP values).
            let max = 8192;
            let (chunk, rest) = data_out.split_at(data_out.len().min(max));
            data_out = rest;
            let cont = !data_out.is_empty();
            let req = self.request(transit && !cont, cont, csg, nsg);
            self.w
                .send(&req, &[chunk])
                .map_err(|e| self.conn_err(ConnError::from(e)))?;
            let h = self.read_header()?;
            let resp = match h.pdu {
                Pdu::LoginResponse(r) => r,
                Pdu::Reject(rj) => {
                    let _ = self.r.skip_data();
                    return Err(self.protocol(format!(
                        "target rejected our Login Request (reason 0x{:02x})",
                        rj.reason
                    )));
                }
                other => {
                    return Err(self.protocol(format!("{} during login", other.opcode().name())));
                }
            };
            let seg = self.read_data()?;
            if resp.itt != self.itt {
                return Err(self.protocol(format!(
                    "Login Response for ITT 0x{:x}, we sent 0x{:x}",
                    resp.itt, self.itt
                )));
            }
            if !self.first && resp.status_class == 0 && resp.isid != self.isid {
                return Err(self.protocol("Login Response with another ISID"));
            }
            self.first = false;
            self.exp_stat_sn = resp.sn.stat_sn.wrapping_add(1);
            if collected.len() + seg.len() > MAX_LOGIN_DATA {
                return Err(
                    self.protocol(format!("login response data above {MAX_LOGIN_DATA} bytes"))
                );
            }
            collected.extend_from_slice(&seg);
            if resp.status_class != 0 {
                let keys = TextKeys::parse_multi(&collected).unwrap_or_default();
                return Ok(Answer { resp, keys });
            }
            if cont {
                // Target acknowledges our partial request with an empty
                // response; send the rest.
                continue;
            }
            if resp.cont {
                // The target has more: ask for it with an empty request.
                if !data_out.is_empty() {
                    return Err(self.protocol("target continued while we were continuing"));
                }
                let more = self.request(false, false, csg, nsg);
                self.w
                    .send(&more, &[])
                    .map_err(|e| self.conn_err(ConnError::from(e)))?;
                loop {
                    let h = self.read_header()?;
                    let Pdu::LoginResponse(r2) = h.pdu else {
                        return Err(self.protocol("expected a continued Login Response"));
                    };
                    let seg = self.read_data()?;
                    self.exp_stat_sn = r2.sn.stat_sn.wrapping_add(1);
                    if collected.len() + seg.len() > MAX_LOGIN_DATA {
                        return Err(self.protocol(format!(
                            "login response data above {MAX_LOGIN_DATA} bytes"
                        )));
                    }
                    collected.extend_from_slice(&seg);
                    if !r2.cont {
                        let keys = TextKeys::parse(&collected).map_err(LoginError::Text)?;
                        return Ok(Answer { resp: r2, keys });
                    }
                    self.w
                        .send(&more, &[])
                        .map_err(|e| self.conn_err(ConnError::from(e)))?;
                }
            }
            let keys = TextKeys::parse(&collected).map_err(LoginError::Text)?;
            return Ok(Answer { resp, keys });
        }
    }

    /// Turn a non-zero status into redirection or an error.
    fn check_status(&self, a: &Answer) -> Result<Option<Portal>, LoginError> {
        let r = &a.resp;
        match r.status_class {
            0 => Ok(None),
            1 => {
                let addr = a
                    .keys
                    .get("TargetAddress")
                    .ok_or_else(|| self.protocol("redirection without TargetAddress"))?;
                let p = text::parse_target_address(addr)
                    .map_err(|e| self.protocol(format!("bad TargetAddress: {e}")))?;
                Ok(Some(Portal::new(p.host, p.port)))
            }
            class => Err(LoginError::Status {
                portal: self.portal.to_string(),
                class,
                detail: r.status_detail,
                target: self.target.clone(),
                initiator: self.initiator.clone(),
                chap: self.chap,
            }),
        }
    }
}

fn login_once(portal: &Portal, cfg: &LoginConfig) -> Result<Outcome, LoginError> {
    let addr = portal.socket_addr()?;
    let socket = TcpStream::connect_timeout(&addr, cfg.connect_timeout).map_err(|error| {
        LoginError::Connect {
            portal: portal.to_string(),
            error,
        }
    })?;
    let _ = socket.set_nodelay(true);
    keepalive(&socket);
    socket
        .set_read_timeout(Some(cfg.io_timeout))
        .and_then(|_| socket.set_write_timeout(Some(cfg.io_timeout)))
        .map_err(|error| LoginError::Connect {
            portal: portal.to_string(),
            error,
        })?;
    let clone = |s: &TcpStream| {
        s.try_clone().map_err(|error| LoginError::Connect {
            portal: portal.to_string(),
            error,
        })
    };
    let frame = FrameParams::login(cfg.params.max_recv_data_segment_length as usize);
    let mut d = Dialogue {
        portal: portal.clone(),
        w: PduWriter::new(clone(&socket)?, frame),
        r: PduReader::new(clone(&socket)?, frame),
        isid: cfg.isid,
        tsih: cfg.tsih,
        itt: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        first: true,
        target: cfg
            .params
            .target_name
            .clone()
            .unwrap_or_else(|| "(discovery)".into()),
        initiator: cfg.params.initiator_name.clone(),
        chap: cfg.auth.is_some(),
        budget: Budget::new("login", cfg.io_timeout, MAX_LOGIN_PDUS),
    };
    let mut neg = cfg
        .params
        .start(cfg.session_type)
        .map_err(LoginError::Negotiation)?;

    // ---- security negotiation stage ----
    let mut keys = cfg.params.identity_keys(cfg.session_type);
    // Mutual CHAP is never waived: the point of it is that the target
    // proves who it is, so --allow-no-auth does not offer None then.
    let mutual = cfg.auth.as_ref().is_some_and(|a| a.mutual.is_some());
    let offer = match (&cfg.auth, cfg.allow_no_auth && !mutual) {
        (None, _) => "None",
        (Some(_), true) => "CHAP,None",
        (Some(_), false) => "CHAP",
    };
    keys.push("AuthMethod", offer);
    // Without credentials, ask to move on at once; with them, stay for CHAP.
    let a = d.exchange(
        Stage::Security,
        cfg.auth.is_none(),
        Stage::Operational,
        &keys,
    )?;
    if let Some(to) = d.check_status(&a)? {
        return Ok(Outcome::Redirect(to));
    }
    let mut back = neg.receive(&a.keys).map_err(LoginError::Negotiation)?;
    let method = a.keys.get("AuthMethod").unwrap_or("None").to_string();
    let mut last = a;
    match (method.as_str(), &cfg.auth) {
        ("None", Some(_)) if mutual => return Err(LoginError::MutualAuthWaived),
        ("None", Some(_)) if !cfg.allow_no_auth => return Err(LoginError::AuthWaived),
        ("None", _) => {}
        ("CHAP", None) => return Err(LoginError::AuthRequired),
        ("CHAP", Some(auth)) => {
            let mut chap = ChapInitiator::new(auth.clone()).map_err(LoginError::Auth)?;
            let mut k = chap.start().map_err(LoginError::Auth)?;
            k.extend(back);
            let a = d.exchange(Stage::Security, false, Stage::Operational, &k)?;
            if let Some(to) = d.check_status(&a)? {
                return Ok(Outcome::Redirect(to));
            }
            let mut answer = chap.on_challenge(&a.keys).map_err(LoginError::Auth)?;
            answer.extend(neg.receive(&a.keys).map_err(LoginError::Negotiation)?);
            let a = d.exchange(Stage::Security, true, Stage::Operational, &answer)?;
            if let Some(to) = d.check_status(&a)? {
                return Ok(Outcome::Redirect(to));
            }
            chap.on_target_response(&a.keys).map_err(LoginError::Auth)?;
            back = neg.receive(&a.keys).map_err(LoginError::Negotiation)?;
            last = a;
        }
        (other, _) => {
            return Err(d.protocol(format!(
                "target chose AuthMethod={}",
                parse_printable(other)
            )));
        }
    }
    // The target may need more security-stage rounds before it transits.
    let mut rounds = 0;
    while last.resp.csg == Stage::Security && !last.resp.transit {
        rounds += 1;
        if rounds > MAX_EXCHANGES {
            return Err(d.protocol("security negotiation does not end"));
        }
        let a = d.exchange(Stage::Security, true, Stage::Operational, &back)?;
        if let Some(to) = d.check_status(&a)? {
            return Ok(Outcome::Redirect(to));
        }
        back = neg.receive(&a.keys).map_err(LoginError::Negotiation)?;
        last = a;
    }

    // ---- operational negotiation stage ----
    let mut k = cfg.params.offer_keys(cfg.session_type);
    k.extend(back);
    let mut rounds = 0;
    loop {
        rounds += 1;
        if rounds > MAX_EXCHANGES {
            return Err(d.protocol("operational negotiation does not end"));
        }
        let a = d.exchange(Stage::Operational, true, Stage::FullFeature, &k)?;
        if let Some(to) = d.check_status(&a)? {
            return Ok(Outcome::Redirect(to));
        }
        k = neg.receive(&a.keys).map_err(LoginError::Negotiation)?;
        if a.resp.transit && a.resp.nsg == Stage::FullFeature {
            if a.resp.tsih == 0 {
                return Err(d.protocol("final Login Response with TSIH 0"));
            }
            neg.finish();
            let sn = SnState {
                cmd_sn: a.resp.sn.exp_cmd_sn,
                exp_cmd_sn: a.resp.sn.exp_cmd_sn,
                max_cmd_sn: a.resp.sn.max_cmd_sn,
                exp_stat_sn: d.exp_stat_sn,
            };
            log::debug!(
                "logged in to {} at {} (TSIH {}): {}",
                d.target,
                d.portal,
                a.resp.tsih,
                neg
            );
            socket
                .set_read_timeout(None)
                .and_then(|_| socket.set_write_timeout(None))
                .map_err(|error| LoginError::Connect {
                    portal: portal.to_string(),
                    error,
                })?;
            return Ok(Outcome::Done(Box::new(LoggedIn {
                socket,
                reader: d.r,
                negotiated: neg,
                tsih: a.resp.tsih,
                sn,
                portal: d.portal,
                redirects: 0,
            })));
        }
    }
}

/// Notice a dead path within seconds even when idle and even when the
/// kernel still has unacknowledged data queued: TCP keepalive (10 s idle,
/// 3 probes 5 s apart) and TCP_USER_TIMEOUT (30 s). The NOP-Out pings of
/// the session layer cover the iSCSI level on top.
fn keepalive(socket: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let r = setsockopt(socket, sockopt::KeepAlive, &true)
        .and_then(|_| setsockopt(socket, sockopt::TcpKeepIdle, &10))
        .and_then(|_| setsockopt(socket, sockopt::TcpKeepInterval, &5))
        .and_then(|_| setsockopt(socket, sockopt::TcpKeepCount, &3))
        .and_then(|_| setsockopt(socket, sockopt::TcpUserTimeout, &30_000));
    if let Err(e) = r {
        log::warn!("TCP keepalive/user timeout: {e}");
    }
}

fn parse_printable(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// An ISID (RFC 7143 §11.12.5) of type "random" (0x80 qualifier): 0x80,
/// then 3 bytes of `base` randomness, then a 16-bit qualifier. Reusing the
/// same ISID to the same target later reinstates the session (the target
/// drops the old one) rather than leaking it.
pub fn random_isid() -> [u8; 6] {
    let mut r = [0u8; 5];
    crate::nonblocking_random(&mut r);
    [0x80, r[0], r[1], r[2], r[3], r[4]]
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_zones() {
        let sa = |h: &str| Portal::new(h, 3260).socket_addr();
        let lo = nix::net::if_::if_nametoindex("lo").unwrap();
        match sa("fe80::1%lo").unwrap() {
            SocketAddr::V6(a) => assert_eq!((a.scope_id(), a.port()), (lo, 3260)),
            a => panic!("{a}"),
        }
        match sa("[fe80::1%7]").unwrap() {
            SocketAddr::V6(a) => assert_eq!(a.scope_id(), 7),
            a => panic!("{a}"),
        }
        assert_eq!(sa("fd00::2").unwrap().to_string(), "[fd00::2]:3260");
        for (h, want) in [
            ("fe80::1", "needs the interface"),
            ("fe80::1%", "nothing after '%'"),
            ("fe80::1%0", "zone 0"),
            ("fe80::1%no-such-nic9", "no interface \"no-such-nic9\""),
            ("10.0.0.1%lo", "IPv4 address has no zone"),
        ] {
            let e = sa(h).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(h), "{h}: {e}");
        }
        assert!(matches!(sa("target.example"), Err(LoginError::Resolve(_))));
    }
}
