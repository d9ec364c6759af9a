//! Operational parameter negotiation (RFC 7143 §6.2, §13), pure: what we
//! offer, how a target's answers combine with it, what we answer to keys the
//! target offers on its own.
//!
//! Use:
//! 1. [`OperationalParams`] holds what we want (defaults below, each
//!    explained); [`OperationalParams::start`] checks it and gives a
//!    [`Negotiated`] holding the RFC defaults.
//! 2. The first Login request carries [`OperationalParams::identity_keys`]
//!    (InitiatorName, SessionType, TargetName; with `AuthMethod` when there
//!    is a security stage); the first request of the operational stage
//!    carries [`OperationalParams::offer_keys`]. Without a security stage
//!    both go in the first request.
//! 3. Every Login response's keys go through [`Negotiated::receive`]
//!    (= [`Negotiated::apply_answer`] + [`Negotiated::respond_to_target_offers`]),
//!    which returns what we still have to send back (possibly nothing).
//!    Security keys (AuthMethod, CHAP_*) and TargetAddress are ignored here:
//!    the login layer handles them.
//! 4. When the target moves to full feature phase, [`Negotiated::finish`].
//!
//! We send every key explicitly, in a stable order, instead of relying on
//! defaults: targets disagree on them (iPXE does the same, for OpenSolaris,
//! QNAP and LIO quirks), and an explicit key makes the target's choice
//! visible in the answer.
//!
//! Not here: PDUs, the login stage machine, CHAP (`chap`), text format
//! (`text`). Only ErrorRecoveryLevel 0 and one connection per session.

use std::fmt;

use super::text::{
    self, IRRELEVANT, NOT_UNDERSTOOD, REJECT, Special, TextKeys, ValueError, format_bool,
    parse_bool, parse_list, parse_number_in, printable,
};

/// Key names (RFC 7143 §13).
pub mod key {
    pub const HEADER_DIGEST: &str = "HeaderDigest";
    pub const DATA_DIGEST: &str = "DataDigest";
    pub const MAX_CONNECTIONS: &str = "MaxConnections";
    pub const SEND_TARGETS: &str = "SendTargets";
    pub const TARGET_NAME: &str = "TargetName";
    pub const INITIATOR_NAME: &str = "InitiatorName";
    pub const TARGET_ALIAS: &str = "TargetAlias";
    pub const INITIATOR_ALIAS: &str = "InitiatorAlias";
    pub const TARGET_ADDRESS: &str = "TargetAddress";
    pub const TARGET_PORTAL_GROUP_TAG: &str = "TargetPortalGroupTag";
    pub const INITIAL_R2T: &str = "InitialR2T";
    pub const IMMEDIATE_DATA: &str = "ImmediateData";
    pub const MAX_RECV_DATA_SEGMENT_LENGTH: &str = "MaxRecvDataSegmentLength";
    pub const MAX_BURST_LENGTH: &str = "MaxBurstLength";
    pub const FIRST_BURST_LENGTH: &str = "FirstBurstLength";
    pub const DEFAULT_TIME2WAIT: &str = "DefaultTime2Wait";
    pub const DEFAULT_TIME2RETAIN: &str = "DefaultTime2Retain";
    pub const MAX_OUTSTANDING_R2T: &str = "MaxOutstandingR2T";
    pub const DATA_PDU_IN_ORDER: &str = "DataPDUInOrder";
    pub const DATA_SEQUENCE_IN_ORDER: &str = "DataSequenceInOrder";
    pub const ERROR_RECOVERY_LEVEL: &str = "ErrorRecoveryLevel";
    pub const SESSION_TYPE: &str = "SessionType";
    pub const AUTH_METHOD: &str = "AuthMethod";
    pub const TASK_REPORTING: &str = "TaskReporting";
    pub const ISCSI_PROTOCOL_LEVEL: &str = "iSCSIProtocolLevel";
    // Obsoleted by RFC 7143 §13.26, still sent by RFC 3720 peers.
    pub const IF_MARKER: &str = "IFMarker";
    pub const OF_MARKER: &str = "OFMarker";
    pub const IF_MARK_INT: &str = "IFMarkInt";
    pub const OF_MARK_INT: &str = "OFMarkInt";
}

/// 512 to 2^24-1: the range of the three length keys (RFC 7143 §13.12-14).
const LEN_MIN: u64 = 512;
const LEN_MAX: u64 = (1 << 24) - 1;
/// DefaultTime2Wait/Retain: 0 to 3600 seconds.
const TIME_MAX: u64 = 3600;
/// RFC 7143 §13.12: MaxRecvDataSegmentLength when not declared.
pub const DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
/// The iSCSIProtocolLevel we implement (RFC 7143 is level 1).
const PROTOCOL_LEVEL: u64 = 1;
/// TargetAlias is a text-value: at most 255 bytes.
const MAX_ALIAS_LEN: usize = 255;

/// Normal (a disk) or Discovery (SendTargets only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

impl SessionType {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Normal => "Normal",
            SessionType::Discovery => "Discovery",
        }
    }
}

impl fmt::Display for SessionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What we offer for HeaderDigest / DataDigest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestOffer {
    /// "None": no digest.
    None,
    /// "CRC32C,None": a digest if the target agrees.
    PreferCrc32c,
    /// "CRC32C": a digest or no session.
    RequireCrc32c,
}

impl DigestOffer {
    pub fn as_str(self) -> &'static str {
        match self {
            DigestOffer::None => "None",
            DigestOffer::PreferCrc32c => "CRC32C,None",
            DigestOffer::RequireCrc32c => "CRC32C",
        }
    }
}

/// What we want from a session, and who we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationalParams {
    /// InitiatorName (declarative, first Login request).
    pub initiator_name: String,
    /// InitiatorAlias (declarative, optional).
    pub initiator_alias: Option<String>,
    /// TargetName (declarative, first Login request; required for Normal).
    pub target_name: Option<String>,
    /// Default None: with TCP's checksum and Ethernet's CRC, digests mostly
    /// cost CPU; RHEL disables DataDigest (block-layer races when pages
    /// change under a write). Offer CRC32C,None where paths are untrusted.
    pub header_digest: DigestOffer,
    pub data_digest: DigestOffer,
    /// 1: one connection per session, like open-iscsi.
    pub max_connections: u16,
    /// No: writes may send their first burst unsolicited, saving a round
    /// trip (libiscsi, open-iscsi). Result is OR: the target can force Yes.
    pub initial_r2t: bool,
    /// Yes: small writes travel inside the command PDU. Result is AND.
    pub immediate_data: bool,
    /// Declarative: the largest data segment we accept in one PDU. 256 KiB
    /// (libiscsi; a 128 KiB read arrives in one Data-In).
    pub max_recv_data_segment_length: u32,
    /// 16776192 (open-iscsi's): bursts as large as the target allows.
    /// Result is the minimum.
    pub max_burst_length: u32,
    /// 256 KiB unsolicited data (libiscsi). Result is the minimum, and
    /// must not exceed MaxBurstLength.
    pub first_burst_length: u32,
    /// 0 s: after a lost connection, log in again at once (a root disk
    /// cannot wait; we do ERL 0 so nothing is retained). Result is max.
    pub default_time2wait: u16,
    /// 0 s: ERL 0 reassigns no tasks, so the target need keep nothing.
    /// Result is min.
    pub default_time2retain: u16,
    /// 1 (RFC default and what every target supports). Result is min.
    pub max_outstanding_r2t: u16,
    /// Yes (RFC default; we reassemble in order anyway). Result is OR.
    pub data_pdu_in_order: bool,
    /// Yes (RFC default). Result is OR.
    pub data_sequence_in_order: bool,
    /// 0: the only level we implement (like the kernel and libiscsi).
    pub error_recovery_level: u8,
}

impl OperationalParams {
    /// Our defaults (see each field).
    pub fn new(initiator_name: impl Into<String>) -> OperationalParams {
        OperationalParams {
            initiator_name: initiator_name.into(),
            initiator_alias: None,
            target_name: None,
            header_digest: DigestOffer::None,
            data_digest: DigestOffer::None,
            max_connections: 1,
            initial_r2t: false,
            immediate_data: true,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16_776_192,
            first_burst_length: 262_144,
            default_time2wait: 0,
            default_time2retain: 0,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }

    /// Check our own settings against the RFC ranges.
    pub fn validate(&self, session_type: SessionType) -> Result<(), NegotiationError> {
        let config = |problem: String| Err(NegotiationError::Config { problem });
        if self.initiator_name.is_empty() {
            return config("empty InitiatorName".into());
        }
        if session_type == SessionType::Normal
            && self.target_name.as_deref().is_none_or(str::is_empty)
        {
            return config("a Normal session needs a TargetName".into());
        }
        for (name, v, min, max) in [
            (
                key::MAX_RECV_DATA_SEGMENT_LENGTH,
                u64::from(self.max_recv_data_segment_length),
                LEN_MIN,
                LEN_MAX,
            ),
            (
                key::MAX_BURST_LENGTH,
                u64::from(self.max_burst_length),
                LEN_MIN,
                LEN_MAX,
            ),
            (
                key::FIRST_BURST_LENGTH,
                u64::from(self.first_burst_length),
                LEN_MIN,
                LEN_MAX,
            ),
            (
                key::MAX_CONNECTIONS,
                u64::from(self.max_connections),
                1,
                65535,
            ),
            (
                key::MAX_OUTSTANDING_R2T,
                u64::from(self.max_outstanding_r2t),
                1,
                65535,
            ),
            (
                key::DEFAULT_TIME2WAIT,
                u64::from(self.default_time2wait),
                0,
                TIME_MAX,
            ),
            (
                key::DEFAULT_TIME2RETAIN,
                u64::from(self.default_time2retain),
                0,
                TIME_MAX,
            ),
            (
                key::ERROR_RECOVERY_LEVEL,
                u64::from(self.error_recovery_level),
                0,
                0,
            ),
        ] {
            if v < min || v > max {
                return config(if min == max {
                    format!("{name}={v} is not supported, only {min}")
                } else {
                    format!("{name}={v} is out of range, must be {min} to {max}")
                });
            }
        }
        if self.first_burst_length > self.max_burst_length {
            return config(format!(
                "FirstBurstLength={} exceeds MaxBurstLength={}",
                self.first_burst_length, self.max_burst_length
            ));
        }
        Ok(())
    }

    /// The declaratives of the first Login request: InitiatorName,
    /// InitiatorAlias (if set), SessionType, TargetName (Normal only). The
    /// caller adds AuthMethod when it starts with a security stage.
    pub fn identity_keys(&self, session_type: SessionType) -> TextKeys {
        let mut k = TextKeys::new();
        k.push(key::INITIATOR_NAME, self.initiator_name.as_str());
        if let Some(alias) = &self.initiator_alias {
            k.push(key::INITIATOR_ALIAS, alias.as_str());
        }
        k.push(key::SESSION_TYPE, session_type.as_str());
        if session_type == SessionType::Normal
            && let Some(t) = &self.target_name
        {
            k.push(key::TARGET_NAME, t.as_str());
        }
        k
    }

    /// Every operational key we send, explicitly, in a stable order.
    ///
    /// Discovery sessions get only the keys that apply to them: the keys
    /// RFC 7143 §13 marks "Irrelevant when: SessionType=Discovery"
    /// (MaxConnections, InitialR2T, ImmediateData, MaxBurstLength,
    /// FirstBurstLength, MaxOutstandingR2T, DataPDUInOrder,
    /// DataSequenceInOrder) are left out. FirstBurstLength is also left out
    /// when we offer InitialR2T=Yes and ImmediateData=No: the results are
    /// then necessarily Yes (OR) and No (AND), which makes it irrelevant.
    pub fn offer_keys(&self, session_type: SessionType) -> TextKeys {
        let normal = session_type == SessionType::Normal;
        let mut k = TextKeys::new();
        k.push(key::HEADER_DIGEST, self.header_digest.as_str());
        k.push(key::DATA_DIGEST, self.data_digest.as_str());
        if normal {
            k.push(key::MAX_CONNECTIONS, self.max_connections.to_string());
            k.push(key::INITIAL_R2T, format_bool(self.initial_r2t));
            k.push(key::IMMEDIATE_DATA, format_bool(self.immediate_data));
        }
        k.push(
            key::MAX_RECV_DATA_SEGMENT_LENGTH,
            self.max_recv_data_segment_length.to_string(),
        );
        if normal {
            k.push(key::MAX_BURST_LENGTH, self.max_burst_length.to_string());
            if !self.initial_r2t || self.immediate_data {
                k.push(key::FIRST_BURST_LENGTH, self.first_burst_length.to_string());
            }
        }
        k.push(key::DEFAULT_TIME2WAIT, self.default_time2wait.to_string());
        k.push(
            key::DEFAULT_TIME2RETAIN,
            self.default_time2retain.to_string(),
        );
        if normal {
            k.push(
                key::MAX_OUTSTANDING_R2T,
                self.max_outstanding_r2t.to_string(),
            );
            k.push(key::DATA_PDU_IN_ORDER, format_bool(self.data_pdu_in_order));
            k.push(
                key::DATA_SEQUENCE_IN_ORDER,
                format_bool(self.data_sequence_in_order),
            );
        }
        k.push(
            key::ERROR_RECOVERY_LEVEL,
            self.error_recovery_level.to_string(),
        );
        k
    }

    /// Validate and begin a negotiation: RFC defaults until the target
    /// answers.
    pub fn start(&self, session_type: SessionType) -> Result<Negotiated, NegotiationError> {
        self.validate(session_type)?;
        Ok(Negotiated {
            session_type,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: self.max_recv_data_segment_length,
            max_send_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            // A key the target leaves unanswered (or calls Irrelevant)
            // takes its RFC default, combined with our offer by the key's
            // own result function: never more than we offered.
            max_burst_length: self.max_burst_length.min(262_144),
            first_burst_length: self.first_burst_length.min(65_536),
            // InitialR2T: our offer OR default Yes = Yes.
            initial_r2t: true,
            // ImmediateData: our offer AND default Yes = our offer.
            immediate_data: self.immediate_data,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
            target_alias: None,
            target_portal_group_tag: None,
            offered: self.offer_keys(session_type),
            offer: self.clone(),
            answered: Vec::new(),
        })
    }
}

/// Negotiation failed; each variant names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiationError {
    /// Our own parameters are wrong.
    Config { problem: String },
    /// A value that does not parse or is outside the key's RFC range.
    Value(ValueError),
    /// The answer is not a possible result of what we offered (a list
    /// value we did not offer, a min/max/AND/OR result that cannot come
    /// from our offer).
    NotOffered {
        key: &'static str,
        value: String,
        offered: String,
        rule: &'static str,
    },
    /// The target does not know a key every RFC 7143 target must know.
    NotUnderstood { key: &'static str },
    /// The target answered Reject to a key we need.
    Rejected { key: &'static str, offered: String },
    /// An answer we cannot work with (ErrorRecoveryLevel above 0).
    Unsupported {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    /// The target answered the same key twice.
    AnsweredTwice { key: &'static str },
}

impl fmt::Display for NegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NegotiationError::Config { problem } => {
                write!(f, "login parameters: {problem}")
            }
            NegotiationError::Value(e) => write!(f, "target answered {e}"),
            NegotiationError::NotOffered {
                key,
                value,
                offered,
                rule,
            } => write!(
                f,
                "target answered {key}={value}, which cannot result from our offer {key}={offered} ({rule})"
            ),
            NegotiationError::NotUnderstood { key } => write!(
                f,
                "target answered {key}=NotUnderstood; every RFC 7143 target must support {key}"
            ),
            NegotiationError::Rejected { key, offered } => {
                write!(f, "target rejected {key}={offered}")
            }
            NegotiationError::Unsupported { key, value, why } => {
                write!(f, "target answered {key}={value}: {why}")
            }
            NegotiationError::AnsweredTwice { key } => {
                write!(f, "target answered {key} twice")
            }
        }
    }
}

impl std::error::Error for NegotiationError {}

impl From<ValueError> for NegotiationError {
    fn from(e: ValueError) -> NegotiationError {
        NegotiationError::Value(e)
    }
}

/// The session parameters in force: RFC defaults, then the target's
/// answers and declarations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub session_type: SessionType,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Ours, as declared: the largest data segment the target may send us.
    pub max_recv_data_segment_length: u32,
    /// The target's MaxRecvDataSegmentLength: the largest data segment we
    /// may send in one PDU (8192 if it never declared one).
    pub max_send_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_connections: u16,
    pub target_alias: Option<String>,
    pub target_portal_group_tag: Option<u16>,
    /// What we sent, to check answers against.
    offered: TextKeys,
    offer: OperationalParams,
    /// Offered keys the target has answered.
    answered: Vec<&'static str>,
}

/// Every negotiated key we may offer, for matching a received name to a
/// `&'static str`.
const NEGOTIATED_KEYS: &[&str] = &[
    key::HEADER_DIGEST,
    key::DATA_DIGEST,
    key::MAX_CONNECTIONS,
    key::INITIAL_R2T,
    key::IMMEDIATE_DATA,
    key::MAX_BURST_LENGTH,
    key::FIRST_BURST_LENGTH,
    key::DEFAULT_TIME2WAIT,
    key::DEFAULT_TIME2RETAIN,
    key::MAX_OUTSTANDING_R2T,
    key::DATA_PDU_IN_ORDER,
    key::DATA_SEQUENCE_IN_ORDER,
    key::ERROR_RECOVERY_LEVEL,
];

/// Keys that are never answered here: declarations (no answer needed,
/// RFC 7143 §6.2), security keys and redirection (the login layer's), and
/// keys only an initiator sends.
fn not_ours_to_answer(k: &str) -> bool {
    matches!(
        k,
        key::INITIATOR_NAME
            | key::INITIATOR_ALIAS
            | key::TARGET_NAME
            | key::TARGET_ALIAS
            | key::TARGET_ADDRESS
            | key::TARGET_PORTAL_GROUP_TAG
            | key::SESSION_TYPE
            | key::SEND_TARGETS
            | key::MAX_RECV_DATA_SEGMENT_LENGTH
            | key::AUTH_METHOD
    ) || k.starts_with("CHAP_")
}

impl Negotiated {
    /// Apply one login response's keys: answers to our offers and the
    /// target's declarations (TargetAlias, TargetPortalGroupTag,
    /// MaxRecvDataSegmentLength). Keys we did not offer are left to
    /// [`Negotiated::respond_to_target_offers`].
    pub fn apply_answer(&mut self, keys: &TextKeys) -> Result<(), NegotiationError> {
        for (k, v) in keys.iter() {
            self.apply_one(k, v)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, k: &str, v: &str) -> Result<(), NegotiationError> {
        match k {
            key::TARGET_ALIAS => {
                if v.len() > MAX_ALIAS_LEN {
                    return Err(ValueError::new(k, v, "longer than 255 bytes").into());
                }
                self.target_alias = Some(v.to_string());
                return Ok(());
            }
            key::TARGET_PORTAL_GROUP_TAG => {
                let tag = parse_number_in(k, v, 0, 65535)?;
                self.target_portal_group_tag = u16::try_from(tag).ok();
                return Ok(());
            }
            key::MAX_RECV_DATA_SEGMENT_LENGTH => {
                if let Some(s) = Special::from_value(v) {
                    // A declaration needs no answer; a target that says
                    // NotUnderstood to ours leaves its own at the default.
                    log::debug!("target answered MaxRecvDataSegmentLength={s}");
                    return Ok(());
                }
                let n = parse_number_in(k, v, LEN_MIN, LEN_MAX)?;
                self.max_send_data_segment_length = u32::try_from(n).unwrap_or(u32::MAX);
                return Ok(());
            }
            _ => {}
        }
        let Some(&name) = NEGOTIATED_KEYS.iter().find(|&&n| n == k) else {
            return Ok(());
        };
        let Some(offered) = self.offered.get(name).map(str::to_string) else {
            // Known but not offered: the target's own offer.
            return Ok(());
        };
        if self.answered.contains(&name) {
            return Err(NegotiationError::AnsweredTwice { key: name });
        }
        self.answered.push(name);
        match Special::from_value(v) {
            Some(Special::Irrelevant) => {
                log::debug!("target answered {name}=Irrelevant; keeping {name} at its default");
                return Ok(());
            }
            Some(Special::NotUnderstood) => {
                return Err(NegotiationError::NotUnderstood { key: name });
            }
            Some(Special::Reject) => {
                return Err(NegotiationError::Rejected { key: name, offered });
            }
            None => {}
        }
        let not_offered = |rule: &'static str| NegotiationError::NotOffered {
            key: name,
            value: printable(v, 64),
            offered: offered.clone(),
            rule,
        };
        let o = &self.offer;
        match name {
            key::HEADER_DIGEST | key::DATA_DIGEST => {
                // A list key: the answer is one item of our list.
                let ours = parse_list(name, &offered)?;
                let Some(pick) = ours.iter().find(|c| c.eq_ignore_ascii_case(v)) else {
                    return Err(not_offered("must be one of the values offered"));
                };
                let on = pick.eq_ignore_ascii_case("CRC32C");
                if name == key::HEADER_DIGEST {
                    self.header_digest = on;
                } else {
                    self.data_digest = on;
                }
            }
            key::MAX_CONNECTIONS => {
                let n = min_result(name, v, 1, 65535, o.max_connections.into(), not_offered)?;
                self.max_connections = narrow(n);
            }
            key::MAX_BURST_LENGTH => {
                let n = min_result(
                    name,
                    v,
                    LEN_MIN,
                    LEN_MAX,
                    o.max_burst_length.into(),
                    not_offered,
                )?;
                self.max_burst_length = narrow(n);
            }
            key::FIRST_BURST_LENGTH => {
                let n = min_result(
                    name,
                    v,
                    LEN_MIN,
                    LEN_MAX,
                    o.first_burst_length.into(),
                    not_offered,
                )?;
                self.first_burst_length = narrow(n);
            }
            key::DEFAULT_TIME2RETAIN => {
                let n = min_result(
                    name,
                    v,
                    0,
                    TIME_MAX,
                    o.default_time2retain.into(),
                    not_offered,
                )?;
                self.default_time2retain = narrow(n);
            }
            key::MAX_OUTSTANDING_R2T => {
                let n = min_result(name, v, 1, 65535, o.max_outstanding_r2t.into(), not_offered)?;
                self.max_outstanding_r2t = narrow(n);
            }
            key::ERROR_RECOVERY_LEVEL => {
                let n = parse_number_in(name, v, 0, 2)?;
                if n > u64::from(o.error_recovery_level) {
                    return Err(NegotiationError::Unsupported {
                        key: name,
                        value: n.to_string(),
                        why: "sanroot implements ErrorRecoveryLevel 0 only (result function Minimum)",
                    });
                }
                self.error_recovery_level = narrow(n);
            }
            key::DEFAULT_TIME2WAIT => {
                let n = parse_number_in(name, v, 0, TIME_MAX)?;
                if n < u64::from(o.default_time2wait) {
                    return Err(not_offered(
                        "result function Maximum: the answer cannot be lower",
                    ));
                }
                self.default_time2wait = narrow(n);
            }
            key::INITIAL_R2T => {
                self.initial_r2t = or_result(name, v, o.initial_r2t, not_offered)?;
            }
            key::DATA_PDU_IN_ORDER => {
                self.data_pdu_in_order = or_result(name, v, o.data_pdu_in_order, not_offered)?;
            }
            key::DATA_SEQUENCE_IN_ORDER => {
                self.data_sequence_in_order =
                    or_result(name, v, o.data_sequence_in_order, not_offered)?;
            }
            key::IMMEDIATE_DATA => {
                // AND: a target may turn it off, never on if we said No.
                let b = parse_bool(name, v)?;
                if b && !o.immediate_data {
                    return Err(not_offered(
                        "result function AND: cannot be Yes when we offered No",
                    ));
                }
                self.immediate_data = b;
            }
            _ => {}
        }
        Ok(())
    }

    /// Our answers to keys the target offers on its own (keys we did not
    /// offer): `Irrelevant` for operational keys that do not apply (a
    /// Discovery session), `No` for the obsolete IFMarker/OFMarker and
    /// `Reject` for IFMarkInt/OFMarkInt (RFC 7143 §13.26), our values for
    /// TaskReporting and iSCSIProtocolLevel, `NotUnderstood` for anything
    /// else. Answers to our offers, declarations (they need no answer) and
    /// special values (an answer is never answered) produce nothing.
    pub fn respond_to_target_offers(&self, keys: &TextKeys) -> TextKeys {
        let mut out = TextKeys::new();
        for (k, v) in keys.iter() {
            if self.offered.contains(k) || not_ours_to_answer(k) || Special::from_value(v).is_some()
            {
                continue;
            }
            if out.contains(k) {
                continue;
            }
            let answer: String = match k {
                _ if NEGOTIATED_KEYS.contains(&k) => IRRELEVANT.into(),
                key::IF_MARKER | key::OF_MARKER => "No".into(),
                key::IF_MARK_INT | key::OF_MARK_INT => REJECT.into(),
                key::TASK_REPORTING => match parse_list(k, v) {
                    Ok(items) if items.contains(&"RFC3720") => "RFC3720".into(),
                    _ => REJECT.into(),
                },
                key::ISCSI_PROTOCOL_LEVEL => match text::parse_number_in(k, v, 0, 31) {
                    Ok(n) => n.min(PROTOCOL_LEVEL).to_string(),
                    Err(_) => REJECT.into(),
                },
                _ => {
                    log::debug!(
                        "target offered unknown key {}; answering NotUnderstood",
                        printable(k, text::MAX_KEY_LEN)
                    );
                    NOT_UNDERSTOOD.into()
                }
            };
            out.push(k, answer);
        }
        out
    }

    /// [`Negotiated::apply_answer`], then
    /// [`Negotiated::respond_to_target_offers`]: the keys to send back.
    pub fn receive(&mut self, keys: &TextKeys) -> Result<TextKeys, NegotiationError> {
        self.apply_answer(keys)?;
        Ok(self.respond_to_target_offers(keys))
    }

    /// Keys we offered that the target has not answered (they keep their
    /// RFC default, which the target uses too).
    pub fn unanswered(&self) -> Vec<&'static str> {
        NEGOTIATED_KEYS
            .iter()
            .copied()
            .filter(|k| self.offered.contains(k) && !self.answered.contains(k))
            .collect()
    }

    /// Whether FirstBurstLength matters: not when InitialR2T=Yes and
    /// ImmediateData=No (RFC 7143 §13.14), since then no unsolicited data
    /// is ever sent.
    pub fn first_burst_relevant(&self) -> bool {
        !self.initial_r2t || self.immediate_data
    }

    /// End of negotiation: log unanswered keys and make the results
    /// consistent. FirstBurstLength above MaxBurstLength (RFC 7143 §13.14
    /// forbids it; it arises when a target answers both independently) is
    /// lowered to MaxBurstLength: sending less unsolicited data than
    /// allowed is always safe.
    pub fn finish(&mut self) {
        let missing = self.unanswered();
        if !missing.is_empty() {
            log::debug!(
                "target did not answer {}; RFC defaults apply",
                missing.join(", ")
            );
        }
        if self.first_burst_relevant() && self.first_burst_length > self.max_burst_length {
            log::warn!(
                "target negotiated FirstBurstLength={} above MaxBurstLength={}; using {}",
                self.first_burst_length,
                self.max_burst_length,
                self.max_burst_length
            );
            self.first_burst_length = self.max_burst_length;
        }
    }
}

/// A numeric answer for a key whose result function is Minimum: in range,
/// and not above our offer.
fn min_result(
    name: &'static str,
    v: &str,
    min: u64,
    max: u64,
    ours: u64,
    not_offered: impl Fn(&'static str) -> NegotiationError,
) -> Result<u64, NegotiationError> {
    let n = parse_number_in(name, v, min, max)?;
    if n > ours {
        return Err(not_offered(
            "result function Minimum: the answer cannot be higher",
        ));
    }
    Ok(n)
}

/// A boolean answer for a key whose result function is OR: Yes if we said
/// Yes.
fn or_result(
    name: &'static str,
    v: &str,
    ours: bool,
    not_offered: impl Fn(&'static str) -> NegotiationError,
) -> Result<bool, NegotiationError> {
    let b = parse_bool(name, v)?;
    if ours && !b {
        return Err(not_offered(
            "result function OR: cannot be No when we offered Yes",
        ));
    }
    Ok(b)
}

/// A value already range-checked to fit `T`.
fn narrow<T: TryFrom<u64> + Default>(n: u64) -> T {
    T::try_from(n).unwrap_or_default()
}

impl fmt::Display for Negotiated {
    /// One line, RFC key names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = |on: bool| if on { "CRC32C" } else { "None" };
        write!(
            f,
            "SessionType={} HeaderDigest={} DataDigest={} MaxRecvDataSegmentLength={} TargetMaxRecvDataSegmentLength={}",
            self.session_type,
            digest(self.header_digest),
            digest(self.data_digest),
            self.max_recv_data_segment_length,
            self.max_send_data_segment_length,
        )?;
        if self.session_type == SessionType::Normal {
            write!(
                f,
                " MaxBurstLength={} FirstBurstLength={} InitialR2T={} ImmediateData={} MaxOutstandingR2T={} DataPDUInOrder={} DataSequenceInOrder={} MaxConnections={}",
                self.max_burst_length,
                self.first_burst_length,
                format_bool(self.initial_r2t),
                format_bool(self.immediate_data),
                self.max_outstanding_r2t,
                format_bool(self.data_pdu_in_order),
                format_bool(self.data_sequence_in_order),
                self.max_connections,
            )?;
        }
        write!(
            f,
            " ErrorRecoveryLevel={} DefaultTime2Wait={} DefaultTime2Retain={}",
            self.error_recovery_level, self.default_time2wait, self.default_time2retain,
        )?;
        if let Some(alias) = &self.target_alias {
            write!(f, " TargetAlias=\"{}\"", printable(alias, 64))?;
        }
        if let Some(tag) = self.target_portal_group_tag {
            write!(f, " TargetPortalGroupTag={tag}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IQN: &str = "iqn.2024-01.org.example:host";
    const TARGET: &str = "iqn.2003-01.org.linux-iscsi.srv:disk0";

    fn params() -> OperationalParams {
        OperationalParams {
            target_name: Some(TARGET.into()),
            ..OperationalParams::new(IQN)
        }
    }

    fn keys(s: &[u8]) -> TextKeys {
        TextKeys::parse(s).unwrap()
    }

    #[test]
    fn offer_normal_every_key_in_order() {
        let k = params().offer_keys(SessionType::Normal);
        assert_eq!(
            String::from_utf8(k.to_bytes()).unwrap(),
            "HeaderDigest=None\0DataDigest=None\0MaxConnections=1\0InitialR2T=No\0\
ImmediateData=Yes\0MaxRecvDataSegmentLength=262144\0MaxBurstLength=16776192\0\
FirstBurstLength=262144\0DefaultTime2Wait=0\0DefaultTime2Retain=0\0MaxOutstandingR2T=1\0\
DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0ErrorRecoveryLevel=0\0"
        );
        let id = params().identity_keys(SessionType::Normal);
        assert_eq!(
            id.to_string(),
            format!("InitiatorName={IQN} SessionType=Normal TargetName={TARGET}")
        );
    }

    #[test]
    fn offer_discovery_only_what_applies() {
        let p = OperationalParams {
            header_digest: DigestOffer::PreferCrc32c,
            initiator_alias: Some("boot".into()),
            ..params()
        };
        assert_eq!(
            p.offer_keys(SessionType::Discovery).to_string(),
            "HeaderDigest=CRC32C,None DataDigest=None MaxRecvDataSegmentLength=262144 \
DefaultTime2Wait=0 DefaultTime2Retain=0 ErrorRecoveryLevel=0"
        );
        assert_eq!(
            p.identity_keys(SessionType::Discovery).to_string(),
            format!("InitiatorName={IQN} InitiatorAlias=boot SessionType=Discovery")
        );
        // No TargetName needed for discovery.
        assert!(
            OperationalParams::new(IQN)
                .start(SessionType::Discovery)
                .is_ok()
        );
    }

    #[test]
    fn first_burst_not_offered_when_irrelevant() {
        let p = OperationalParams {
            initial_r2t: true,
            immediate_data: false,
            ..params()
        };
        let k = p.offer_keys(SessionType::Normal);
        assert!(!k.contains("FirstBurstLength"));
        let mut n = p.start(SessionType::Normal).unwrap();
        let back = n
            .receive(&keys(
                b"FirstBurstLength=65536\0InitialR2T=Yes\0ImmediateData=No\0",
            ))
            .unwrap();
        assert_eq!(back.to_string(), "FirstBurstLength=Irrelevant");
        assert!(!n.first_burst_relevant());
    }

    #[test]
    fn config_validation() {
        let bad = |p: OperationalParams| p.start(SessionType::Normal).unwrap_err().to_string();
        assert!(bad(OperationalParams::new(IQN)).contains("TargetName"));
        assert!(
            bad(OperationalParams {
                first_burst_length: 1 << 20,
                max_burst_length: 1 << 19,
                ..params()
            })
            .contains("FirstBurstLength=1048576 exceeds MaxBurstLength=524288")
        );
        assert!(
            bad(OperationalParams {
                max_recv_data_segment_length: 1 << 24,
                ..params()
            })
            .contains("MaxRecvDataSegmentLength=16777216 is out of range")
        );
        assert!(
            bad(OperationalParams {
                error_recovery_level: 1,
                ..params()
            })
            .contains("ErrorRecoveryLevel")
        );
    }

    #[test]
    fn rfc_defaults_before_any_answer() {
        let n = params().start(SessionType::Normal).unwrap();
        assert_eq!(n.max_send_data_segment_length, 8192);
        assert_eq!(n.max_recv_data_segment_length, 262144);
        assert_eq!((n.max_burst_length, n.first_burst_length), (262144, 65536));
        assert!(n.initial_r2t && n.immediate_data);
        assert_eq!((n.default_time2wait, n.default_time2retain), (2, 20));
        assert_eq!(n.unanswered().len(), 13);
    }

    // What tgtd 1.0.x answers to our Normal-session offer: its own defaults
    // through the result functions (InitialR2T=Yes wins the OR,
    // DefaultTime2Wait=2 the max, MaxBurstLength 262144 the min), its
    // MaxRecvDataSegmentLength declared, the portal group tag.
    const TGTD_ANSWER: &[u8] = b"HeaderDigest=None\0DataDigest=None\0MaxConnections=1\0\
InitialR2T=Yes\0ImmediateData=Yes\0MaxRecvDataSegmentLength=8192\0MaxBurstLength=262144\0\
FirstBurstLength=65536\0DefaultTime2Wait=2\0DefaultTime2Retain=0\0MaxOutstandingR2T=1\0\
DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0ErrorRecoveryLevel=0\0TargetPortalGroupTag=1\0";

    #[test]
    fn tgtd_answer() {
        let mut n = params().start(SessionType::Normal).unwrap();
        let back = n.receive(&keys(TGTD_ANSWER)).unwrap();
        assert!(back.is_empty(), "{back}");
        n.finish();
        assert!(n.unanswered().is_empty());
        assert!(!n.header_digest && !n.data_digest);
        assert!(n.initial_r2t && n.immediate_data);
        assert_eq!(n.max_send_data_segment_length, 8192);
        assert_eq!(n.max_burst_length, 262144);
        assert_eq!(n.first_burst_length, 65536);
        assert_eq!(n.default_time2wait, 2);
        assert_eq!(n.default_time2retain, 0);
        assert_eq!(n.target_portal_group_tag, Some(1));
        assert_eq!(
            n.to_string(),
            "SessionType=Normal HeaderDigest=None DataDigest=None MaxRecvDataSegmentLength=262144 \
TargetMaxRecvDataSegmentLength=8192 MaxBurstLength=262144 FirstBurstLength=65536 InitialR2T=Yes \
ImmediateData=Yes MaxOutstandingR2T=1 DataPDUInOrder=Yes DataSequenceInOrder=Yes MaxConnections=1 \
ErrorRecoveryLevel=0 DefaultTime2Wait=2 DefaultTime2Retain=0 TargetPortalGroupTag=1"
        );
    }

    #[test]
    fn lio_answer_over_two_pdus() {
        // LIO sends TargetAlias and TargetPortalGroupTag in its first login
        // response (here: the security stage), then answers in the
        // operational stage, and offers the obsolete markers on its own.
        let mut n = params().start(SessionType::Normal).unwrap();
        let first = keys(b"AuthMethod=None\0TargetAlias=LIO Target\0TargetPortalGroupTag=1\0");
        assert!(n.receive(&first).unwrap().is_empty());
        let op = keys(
            b"HeaderDigest=None\0DataDigest=None\0MaxConnections=1\0InitialR2T=No\0\
ImmediateData=Yes\0MaxRecvDataSegmentLength=262144\0MaxBurstLength=1048576\0\
FirstBurstLength=65536\0DefaultTime2Wait=2\0DefaultTime2Retain=0\0MaxOutstandingR2T=1\0\
DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0ErrorRecoveryLevel=0\0IFMarker=No\0OFMarker=No\0\
OFMarkInt=2048~65535\0X-com.example.Vendor=1\0",
        );
        let back = n.receive(&op).unwrap();
        assert_eq!(
            back.to_string(),
            "IFMarker=No OFMarker=No OFMarkInt=Reject X-com.example.Vendor=NotUnderstood"
        );
        n.finish();
        assert!(!n.initial_r2t && n.immediate_data);
        assert_eq!(n.max_send_data_segment_length, 262144);
        assert_eq!(n.max_burst_length, 1048576);
        assert_eq!(n.target_alias.as_deref(), Some("LIO Target"));
        assert!(n.to_string().contains("TargetAlias=\"LIO Target\""));
    }

    #[test]
    fn crc32c_chosen() {
        let p = OperationalParams {
            header_digest: DigestOffer::PreferCrc32c,
            data_digest: DigestOffer::PreferCrc32c,
            ..params()
        };
        let mut n = p.start(SessionType::Normal).unwrap();
        n.apply_answer(&keys(b"HeaderDigest=CRC32C\0DataDigest=None\0"))
            .unwrap();
        assert!(n.header_digest);
        assert!(!n.data_digest);
        assert!(
            n.to_string()
                .contains("HeaderDigest=CRC32C DataDigest=None")
        );
    }

    fn answer_err(p: OperationalParams, answer: &[u8]) -> NegotiationError {
        let mut n = p.start(SessionType::Normal).unwrap();
        n.apply_answer(&keys(answer)).unwrap_err()
    }

    #[test]
    fn answers_we_did_not_offer() {
        let e = answer_err(params(), b"HeaderDigest=CRC32C\0");
        assert_eq!(
            e.to_string(),
            "target answered HeaderDigest=CRC32C, which cannot result from our offer HeaderDigest=None (must be one of the values offered)"
        );
        let req = OperationalParams {
            data_digest: DigestOffer::RequireCrc32c,
            ..params()
        };
        assert!(matches!(
            answer_err(req, b"DataDigest=None\0"),
            NegotiationError::NotOffered {
                key: "DataDigest",
                ..
            }
        ));
        let list = OperationalParams {
            header_digest: DigestOffer::PreferCrc32c,
            ..params()
        };
        assert!(matches!(
            answer_err(list, b"HeaderDigest=CRC32C,None\0"),
            NegotiationError::NotOffered { .. }
        ));
        let e = answer_err(params(), b"MaxBurstLength=16777215\0");
        assert!(e.to_string().contains("Minimum"), "{e}");
        let e = answer_err(params(), b"MaxConnections=2\0");
        assert!(matches!(
            e,
            NegotiationError::NotOffered {
                key: "MaxConnections",
                ..
            }
        ));
        let e = answer_err(params(), b"DataPDUInOrder=No\0");
        assert!(e.to_string().contains("result function OR"), "{e}");
        let no_imm = OperationalParams {
            immediate_data: false,
            ..params()
        };
        let e = answer_err(no_imm, b"ImmediateData=Yes\0");
        assert!(e.to_string().contains("result function AND"), "{e}");
        let wait = OperationalParams {
            default_time2wait: 5,
            ..params()
        };
        let e = answer_err(wait, b"DefaultTime2Wait=2\0");
        assert!(e.to_string().contains("Maximum"), "{e}");
        let e = answer_err(params(), b"DefaultTime2Retain=20\0");
        assert!(matches!(
            e,
            NegotiationError::NotOffered {
                key: "DefaultTime2Retain",
                ..
            }
        ));
    }

    #[test]
    fn error_recovery_level_above_zero() {
        let e = answer_err(params(), b"ErrorRecoveryLevel=1\0");
        assert_eq!(
            e,
            NegotiationError::Unsupported {
                key: "ErrorRecoveryLevel",
                value: "1".into(),
                why: "sanroot implements ErrorRecoveryLevel 0 only (result function Minimum)",
            }
        );
        let e = answer_err(params(), b"ErrorRecoveryLevel=3\0");
        assert!(e.to_string().contains("ErrorRecoveryLevel=\"3\""), "{e}");
    }

    #[test]
    fn out_of_range_and_malformed() {
        for (answer, needle) in [
            (
                &b"MaxRecvDataSegmentLength=511\0"[..],
                "MaxRecvDataSegmentLength=\"511\"",
            ),
            (b"MaxRecvDataSegmentLength=16777216\0", "out of range"),
            (b"MaxBurstLength=100\0", "MaxBurstLength=\"100\""),
            (b"DefaultTime2Wait=3601\0", "DefaultTime2Wait"),
            (b"MaxOutstandingR2T=0\0", "MaxOutstandingR2T"),
            (
                b"InitialR2T=Maybe\0",
                "InitialR2T=\"Maybe\": expected Yes or No",
            ),
            (b"TargetPortalGroupTag=65536\0", "TargetPortalGroupTag"),
            (b"MaxBurstLength=lots\0", "MaxBurstLength"),
        ] {
            let e = answer_err(params(), answer);
            assert!(e.to_string().contains(needle), "{e}");
        }
        // Hex numbers are numbers.
        let mut n = params().start(SessionType::Normal).unwrap();
        n.apply_answer(&keys(b"MaxRecvDataSegmentLength=0x10000\0"))
            .unwrap();
        assert_eq!(n.max_send_data_segment_length, 65536);
    }

    #[test]
    fn special_values() {
        let e = answer_err(params(), b"MaxBurstLength=NotUnderstood\0");
        assert_eq!(
            e,
            NegotiationError::NotUnderstood {
                key: "MaxBurstLength"
            }
        );
        let e = answer_err(params(), b"ImmediateData=Reject\0");
        assert_eq!(e.to_string(), "target rejected ImmediateData=Yes");
        let mut n = params().start(SessionType::Normal).unwrap();
        let back = n
            .receive(&keys(
                b"FirstBurstLength=Irrelevant\0MaxRecvDataSegmentLength=NotUnderstood\0",
            ))
            .unwrap();
        assert!(back.is_empty());
        assert_eq!(n.first_burst_length, 65536);
        assert_eq!(n.max_send_data_segment_length, 8192);
        // A special value for a key we never sent is not answered.
        assert!(
            n.respond_to_target_offers(&keys(b"X-Foo=NotUnderstood\0"))
                .is_empty()
        );
    }

    #[test]
    fn answered_twice() {
        let mut n = params().start(SessionType::Normal).unwrap();
        n.apply_answer(&keys(b"MaxBurstLength=262144\0")).unwrap();
        assert_eq!(
            n.apply_answer(&keys(b"MaxBurstLength=65536\0")),
            Err(NegotiationError::AnsweredTwice {
                key: "MaxBurstLength"
            })
        );
        // Declarations may be repeated.
        n.apply_answer(&keys(b"TargetPortalGroupTag=1\0")).unwrap();
        n.apply_answer(&keys(b"TargetPortalGroupTag=1\0")).unwrap();
    }

    #[test]
    fn discovery_session_target_offers() {
        let mut n = params().start(SessionType::Discovery).unwrap();
        let back = n
            .receive(&keys(
                b"HeaderDigest=None\0DataDigest=None\0DefaultTime2Wait=2\0DefaultTime2Retain=0\0\
ErrorRecoveryLevel=0\0MaxRecvDataSegmentLength=8192\0MaxBurstLength=262144\0InitialR2T=Yes\0\
TaskReporting=ResponseFence,RFC3720\0iSCSIProtocolLevel=2\0CHAP_A=5\0",
            ))
            .unwrap();
        assert_eq!(
            back.to_string(),
            "MaxBurstLength=Irrelevant InitialR2T=Irrelevant TaskReporting=RFC3720 iSCSIProtocolLevel=1"
        );
        n.finish();
        assert_eq!(n.max_send_data_segment_length, 8192);
        assert!(n.to_string().starts_with("SessionType=Discovery"));
        assert!(!n.to_string().contains("MaxBurstLength"));
    }

    #[test]
    fn first_burst_clamped_to_max_burst() {
        let mut n = params().start(SessionType::Normal).unwrap();
        n.apply_answer(&keys(b"MaxBurstLength=32768\0FirstBurstLength=65536\0"))
            .unwrap();
        n.finish();
        assert_eq!(n.first_burst_length, 32768);
    }

    #[test]
    fn case_lenient_values() {
        let p = OperationalParams {
            header_digest: DigestOffer::PreferCrc32c,
            ..params()
        };
        let mut n = p.start(SessionType::Normal).unwrap();
        n.apply_answer(&keys(b"HeaderDigest=crc32c\0InitialR2T=yes\0"))
            .unwrap();
        assert!(n.header_digest && n.initial_r2t);
    }
}
