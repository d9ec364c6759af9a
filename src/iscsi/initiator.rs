//! The entry points the rest of sanroot uses: log in to a target and start
//! its session, or run a discovery session (SendTargets).
//!
//! This is where the pieces meet: an initiator name, credentials and
//! preferences become a [`LoginConfig`]; a login becomes a running
//! [`Session`]. Nothing here knows about block devices or the boot flow.

use std::time::Duration;

use super::budget::Budget;
use super::chap::AuthConfig;
use super::conn::{ConnError, PduWriter};
use super::login::{self, LoggedIn, LoginConfig, LoginError, Portal};
use super::negotiate::{DigestOffer, OperationalParams, SessionType};
use super::pdu::*;
use super::session::{Session, SessionEvent, SessionOptions};
use super::text::{self, DiscoveredTarget, TextKeys};
use std::sync::mpsc::Sender;

/// How to talk to targets.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    pub initiator_name: String,
    pub auth: Option<AuthConfig>,
    /// CHAP for discovery sessions (SendTargets) when they need other
    /// credentials than `auth` (Kubernetes' chapAuthDiscovery, open-iscsi's
    /// `discovery.sendtargets.auth.*`). `None`: discovery uses `auth`.
    pub discovery_auth: Option<AuthConfig>,
    pub allow_no_auth: bool,
    pub header_digest: DigestOffer,
    pub data_digest: DigestOffer,
    pub session: SessionOptions,
    pub connect_timeout: Duration,
    /// Bound on each login request/response round trip.
    pub login_timeout: Duration,
    /// Our MaxRecvDataSegmentLength.
    pub max_recv_data_segment: u32,
    /// Fixed ISID (reinstatement); random when None.
    pub isid: Option<[u8; 6]>,
}

impl InitiatorConfig {
    pub fn new(initiator_name: impl Into<String>) -> InitiatorConfig {
        InitiatorConfig {
            initiator_name: initiator_name.into(),
            auth: None,
            discovery_auth: None,
            allow_no_auth: false,
            header_digest: DigestOffer::None,
            data_digest: DigestOffer::None,
            session: SessionOptions::default(),
            connect_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(15),
            max_recv_data_segment: 256 * 1024,
            isid: None,
        }
    }

    /// Bound the connect and login timeouts to `d` (a quick try, a probe).
    pub fn cap_timeouts(&mut self, d: Duration) {
        self.connect_timeout = self.connect_timeout.min(d);
        self.login_timeout = self.login_timeout.min(d);
    }

    fn login_config(&self, target: Option<&str>, session_type: SessionType) -> LoginConfig {
        let mut p = OperationalParams::new(self.initiator_name.clone());
        p.target_name = target.map(str::to_string);
        p.header_digest = self.header_digest;
        p.data_digest = self.data_digest;
        p.max_recv_data_segment_length = self.max_recv_data_segment;
        let mut c = LoginConfig::new(
            p,
            session_type,
            self.isid.unwrap_or_else(login::random_isid),
        );
        c.auth = match (session_type, &self.discovery_auth) {
            (SessionType::Discovery, Some(d)) => Some(d.clone()),
            _ => self.auth.clone(),
        };
        c.allow_no_auth = self.allow_no_auth;
        c.connect_timeout = self.connect_timeout;
        c.io_timeout = self.login_timeout;
        c
    }
}

/// A running session and what its login settled.
pub struct Connection {
    pub session: Session,
    pub portal: Portal,
    pub tsih: u16,
    pub isid: [u8; 6],
    pub negotiated: String,
    /// The target portal group tag the target declared, if it did.
    pub tpgt: Option<u16>,
}

/// Log in to `target` at `portal` and start the full-feature phase.
pub fn connect(
    portal: &Portal,
    target: &str,
    cfg: &InitiatorConfig,
    events: Option<Sender<SessionEvent>>,
) -> Result<Connection, LoginError> {
    let lc = cfg.login_config(Some(target), SessionType::Normal);
    let l = login::login(portal, &lc)?;
    let params = l.ffp_params();
    let negotiated = l.negotiated.to_string();
    let tpgt = l.negotiated.target_portal_group_tag;
    let (tsih, portal) = (l.tsih, l.portal.clone());
    let session =
        Session::start(l.socket, l.reader, params, l.sn, cfg.session, events).map_err(|error| {
            LoginError::Connect {
                portal: portal.to_string(),
                error,
            }
        })?;
    Ok(Connection {
        session,
        portal,
        tsih,
        isid: lc.isid,
        negotiated,
        tpgt,
    })
}

/// Ask a portal which targets it offers (SendTargets=All, RFC 7143
/// Appendix C), then log out. The discovery session logs in with
/// `cfg.discovery_auth` when set, else with `cfg.auth`.
pub fn discover(
    portal: &Portal,
    cfg: &InitiatorConfig,
) -> Result<Vec<DiscoveredTarget>, LoginError> {
    let lc = cfg.login_config(None, SessionType::Discovery);
    let l = login::login(portal, &lc)?;
    let p = l.portal.clone();
    send_targets(l).map_err(|what| LoginError::Protocol {
        portal: p.to_string(),
        what,
    })
}

/// Bound on a SendTargets answer spread over Text Responses.
const MAX_SENDTARGETS: usize = 4 << 20;
/// Bound on the Text Responses of one SendTargets (empty continuations
/// carry no bytes to count): 4 MiB in 8 KiB segments is 512.
const MAX_SENDTARGETS_PDUS: u32 = 1024;
/// The whole SendTargets exchange, all continuations included.
const SENDTARGETS_TIMEOUT: Duration = Duration::from_secs(30);

/// A read error of the SendTargets exchange in words.
fn explain(budget: &Budget, e: ConnError) -> String {
    match e {
        ConnError::Io(io) => budget.explain(io).to_string(),
        other => other.to_string(),
    }
}

fn send_targets(l: LoggedIn) -> Result<Vec<DiscoveredTarget>, String> {
    let LoggedIn {
        socket,
        mut reader,
        sn,
        ..
    } = l;
    let params = reader.params();
    let mut budget = Budget::new("SendTargets", SENDTARGETS_TIMEOUT, MAX_SENDTARGETS_PDUS);
    let mut w = PduWriter::new(socket.try_clone().map_err(|e| e.to_string())?, params);
    let cmd_sn = sn.cmd_sn;
    let mut exp_stat_sn = sn.exp_stat_sn;
    let itt = 1u32;
    let mut ttt = RESERVED_TAG;
    let mut req = TextKeys::new();
    req.push("SendTargets", "All");
    let mut first = true;
    let mut collected = Vec::new();
    loop {
        let data = if first { req.to_bytes() } else { Vec::new() };
        first = false;
        let pdu = Pdu::TextRequest(TextRequest {
            final_: true,
            cont: false,
            itt,
            ttt,
            cmd_sn,
            exp_stat_sn,
        });
        // Text Requests go out immediate: CmdSN is carried, not consumed
        // (RFC 7143 §3.2.2.1).
        w.send(&pdu, &[&data])
            .map_err(|e| format!("sending SendTargets: {e}"))?;
        budget
            .before_read(reader.get_ref())
            .map_err(|e| e.to_string())?;
        let h = reader.read_header().map_err(|e| explain(&budget, e))?;
        budget.pdu()?;
        let resp = match h.pdu {
            Pdu::TextResponse(r) => r,
            Pdu::Reject(r) => {
                let _ = reader.skip_data();
                return Err(format!(
                    "target rejected SendTargets (reason 0x{:02x})",
                    r.reason
                ));
            }
            other => {
                return Err(format!(
                    "{} in answer to SendTargets",
                    other.opcode().name()
                ));
            }
        };
        let seg = reader.read_data_vec().map_err(|e| explain(&budget, e))?;
        exp_stat_sn = resp.sn.stat_sn.wrapping_add(1);
        if resp.itt != itt {
            return Err(format!("Text Response for ITT 0x{:x}", resp.itt));
        }
        if collected.len() + seg.len() > MAX_SENDTARGETS {
            return Err("SendTargets answer larger than 4 MiB".into());
        }
        collected.extend_from_slice(&seg);
        if resp.final_ && !resp.cont {
            break;
        }
        // More to come: continue with the target's TTT (RFC 7143 §11.10.4).
        ttt = resp.ttt;
    }
    let targets = text::parse_send_targets(&collected).map_err(|e| e.to_string())?;
    // Log out politely; a failure here does not spoil the answer.
    let logout = Pdu::LogoutRequest(LogoutRequest {
        reason: LogoutReason::CloseSession,
        itt: 2,
        cid: 0,
        cmd_sn,
        exp_stat_sn,
    });
    if w.send(&logout, &[]).is_ok() {
        match reader.read_header() {
            Ok(_) => {
                let _ = reader.skip_data();
            }
            Err(ConnError::Closed) => {}
            Err(e) => log::debug!("discovery logout: {e}"),
        }
    }
    Ok(targets)
}

/// Where open-iscsi keeps this machine's initiator name.
pub const INITIATORNAME_FILE: &str = "/etc/iscsi/initiatorname.iscsi";

/// The initiator name: `--initiator-name`, else /etc/iscsi/initiatorname.iscsi,
/// else one generated from /etc/machine-id (stable per machine), else random.
pub fn initiator_name(flag: Option<&str>) -> String {
    if let Some(n) = flag {
        return n.to_string();
    }
    if let Ok(text) = std::fs::read_to_string(INITIATORNAME_FILE) {
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("InitiatorName=") {
                let v = v.trim();
                if !v.is_empty() {
                    return v.to_string();
                }
            }
        }
    }
    let suffix = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|m| m.trim().chars().take(12).collect::<String>())
        .filter(|m| m.len() == 12 && m.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| {
            let mut r = [0u8; 6];
            crate::nonblocking_random(&mut r);
            r.iter().map(|b| format!("{b:02x}")).collect()
        });
    format!("iqn.2026-11.org.sanroot:{suffix}")
}
