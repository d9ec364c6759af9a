//! iSCSI text key=value data segments (RFC 7143 §6) as plain values.
//!
//! Login and Text PDUs carry a data segment of `key=value\0` pairs. This
//! module turns such a segment into an ordered [`TextKeys`] and back, and
//! decodes the value encodings of RFC 7143 §6.1 (numbers, booleans, lists,
//! binary values, the special values `NotUnderstood`, `Irrelevant` and
//! `Reject`). It also parses SendTargets responses (RFC 7143 Appendix C)
//! and `TargetAddress` values (SendTargets, login redirection §11.13).
//!
//! Not here: what a key means (`negotiate`, `chap`), PDU framing, or
//! reassembly of a segment split over several PDUs with the C bit (the login
//! layer concatenates the pieces and hands the whole segment to [`TextKeys::parse`]).
//!
//! Everything in a segment comes from the target and is hostile: every size
//! is bounded, nothing panics, and every error names the key and value at
//! fault. `CHAP_R` values are never shown (not in `Debug`, not in errors):
//! together with `CHAP_I`/`CHAP_C` they allow an offline dictionary attack on
//! the secret.

use std::fmt;
use std::net::Ipv6Addr;

/// RFC 7143 §6.1: a key name "MUST NOT exceed 63 characters".
pub const MAX_KEY_LEN: usize = 63;
/// RFC 7143 §6.1 limits most values to 255 bytes, but some are larger
/// (`large-binary-value`s such as `CHAP_C`, up to 1024 bytes, i.e. 2050 hex
/// characters; vendor keys). We accept up to 8192, the longest any key may
/// be per §6.1 ("text-value ... up to 8192 bytes" for some keys).
pub const MAX_VALUE_LEN: usize = 8192;
/// More pairs than this in one segment is refused. A SendTargets response
/// for a few hundred targets with a few portals each stays well below it.
pub const MAX_PAIRS: usize = 1024;
/// The IANA port for iSCSI, used when a `TargetAddress` has none.
pub const DEFAULT_PORT: u16 = 3260;
/// The portal group tag assumed when a `TargetAddress` has none.
pub const DEFAULT_TPGT: u16 = 1;

/// The special value a responder sends for a key it does not know.
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
/// The special value for a key that does not apply in this negotiation.
pub const IRRELEVANT: &str = "Irrelevant";
/// The special value for an offer the responder refuses.
pub const REJECT: &str = "Reject";

/// Keys whose values must never be shown (see the module comment).
const REDACTED_KEYS: &[&str] = &["CHAP_R"];

/// A segment could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// A pair at `offset` has no key (`=value`).
    EmptyKey { offset: usize },
    /// A pair at `offset` has no `=`.
    MissingEquals { offset: usize, pair: String },
    /// A key longer than [`MAX_KEY_LEN`] bytes.
    KeyTooLong {
        offset: usize,
        key: String,
        len: usize,
    },
    /// A key with a control character, space or non-ASCII byte.
    BadKey { offset: usize, key: String },
    /// A value longer than [`MAX_VALUE_LEN`] bytes.
    ValueTooLong { key: String, len: usize, max: usize },
    /// The pair at `offset` is not UTF-8.
    NotUtf8 { offset: usize },
    /// More than [`MAX_PAIRS`] pairs.
    TooManyPairs { max: usize },
    /// The same key twice in one negotiation segment (RFC 7143 §6.1: a key
    /// must not be sent more than once in a negotiation sequence).
    DuplicateKey {
        key: String,
        first: String,
        second: String,
    },
    /// A value that does not decode (see [`ValueError`]).
    Value(ValueError),
    /// A SendTargets response that is not TargetName/TargetAddress lines.
    SendTargets { reason: String },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::EmptyKey { offset } => {
                write!(f, "text segment: empty key at byte {offset}")
            }
            TextError::MissingEquals { offset, pair } => write!(
                f,
                "text segment: pair at byte {offset} has no '=': \"{pair}\""
            ),
            TextError::KeyTooLong { offset, key, len } => write!(
                f,
                "text segment: key \"{key}\" at byte {offset} is {len} bytes long, at most {MAX_KEY_LEN} allowed"
            ),
            TextError::BadKey { offset, key } => write!(
                f,
                "text segment: key \"{key}\" at byte {offset} has a character not allowed in a key name"
            ),
            TextError::ValueTooLong { key, len, max } => write!(
                f,
                "text segment: value of {key} is {len} bytes long, at most {max} allowed"
            ),
            TextError::NotUtf8 { offset } => {
                write!(f, "text segment: pair at byte {offset} is not UTF-8")
            }
            TextError::TooManyPairs { max } => {
                write!(f, "text segment: more than {max} key=value pairs")
            }
            TextError::DuplicateKey { key, first, second } => write!(
                f,
                "text segment: key {key} sent twice (\"{first}\" then \"{second}\")"
            ),
            TextError::Value(e) => write!(f, "{e}"),
            TextError::SendTargets { reason } => {
                write!(f, "SendTargets response: {reason}")
            }
        }
    }
}

impl std::error::Error for TextError {}

impl From<ValueError> for TextError {
    fn from(e: ValueError) -> TextError {
        TextError::Value(e)
    }
}

/// A value that does not decode as what its key requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub key: String,
    /// The value as shown to a human: shortened, escaped, redacted for
    /// `CHAP_R`.
    pub value: String,
    pub problem: String,
}

impl ValueError {
    pub fn new(key: &str, value: &str, problem: impl Into<String>) -> ValueError {
        ValueError {
            key: printable(key, MAX_KEY_LEN),
            value: shown_value(key, value),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=\"{}\": {}", self.key, self.value, self.problem)
    }
}

impl std::error::Error for ValueError {}

/// `s` escaped for a log line and cut to about `max` characters.
pub(crate) fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

/// A value as it may be shown in a log or an error.
pub(crate) fn shown_value(key: &str, value: &str) -> String {
    if REDACTED_KEYS.contains(&key) {
        format!("<{} bytes, not shown>", value.len())
    } else {
        printable(value, 64)
    }
}

/// An ordered list of key=value pairs: one data segment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TextKeys {
    pairs: Vec<(String, String)>,
}

impl TextKeys {
    pub fn new() -> TextKeys {
        TextKeys::default()
    }

    /// Parse a negotiation segment (Login or Text PDU): like
    /// [`TextKeys::parse_multi`], and a key sent twice is an error.
    pub fn parse(data: &[u8]) -> Result<TextKeys, TextError> {
        let keys = TextKeys::parse_multi(data)?;
        for (i, (k, v)) in keys.pairs.iter().enumerate() {
            if let Some((_, first)) = keys.pairs[..i].iter().find(|(k2, _)| k2 == k) {
                return Err(TextError::DuplicateKey {
                    key: printable(k, MAX_KEY_LEN),
                    first: shown_value(k, first),
                    second: shown_value(k, v),
                });
            }
        }
        Ok(keys)
    }

    /// Parse a segment where a key may repeat (a SendTargets response).
    ///
    /// Tolerates a missing final NUL, trailing zero padding and empty pairs
    /// (`\0\0`), which carry nothing. Refuses a pair without `=`, an empty
    /// key, a key over 63 bytes or with control characters, a value over
    /// 8192 bytes, anything not UTF-8, and more than 1024 pairs.
    pub fn parse_multi(data: &[u8]) -> Result<TextKeys, TextError> {
        let mut pairs = Vec::new();
        let mut offset = 0usize;
        for raw in data.split(|&b| b == 0) {
            let here = offset;
            offset += raw.len() + 1;
            if raw.is_empty() {
                continue;
            }
            if pairs.len() >= MAX_PAIRS {
                return Err(TextError::TooManyPairs { max: MAX_PAIRS });
            }
            let text = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8 { offset: here })?;
            let Some((key, value)) = text.split_once('=') else {
                return Err(TextError::MissingEquals {
                    offset: here,
                    pair: printable(text, 64),
                });
            };
            if key.is_empty() {
                return Err(TextError::EmptyKey { offset: here });
            }
            if key.len() > MAX_KEY_LEN {
                return Err(TextError::KeyTooLong {
                    offset: here,
                    key: printable(key, MAX_KEY_LEN),
                    len: key.len(),
                });
            }
            // RFC 7143 §6.1 allows letters, digits and ".-+@_" (and "X#"
            // prefixes); be lenient about the set but refuse anything that
            // could garble a log line.
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TextError::BadKey {
                    offset: here,
                    key: printable(key, MAX_KEY_LEN),
                });
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(TextError::ValueTooLong {
                    key: key.to_string(),
                    len: value.len(),
                    max: MAX_VALUE_LEN,
                });
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(TextKeys { pairs })
    }

    /// Append every pair as `key=value\0`.
    pub fn emit(&self, buf: &mut Vec<u8>) {
        for (k, v) in &self.pairs {
            buf.extend_from_slice(k.as_bytes());
            buf.push(b'=');
            buf.extend_from_slice(v.as_bytes());
            buf.push(0);
        }
    }

    /// The segment as bytes (no padding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.buffer_len());
        self.emit(&mut buf);
        buf
    }

    /// The number of bytes [`TextKeys::emit`] appends.
    pub fn buffer_len(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
    }

    /// The value of the first pair with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of this key, in order (for SendTargets responses).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Append a pair (no check for duplicates: the caller builds what it
    /// sends).
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.pairs.push((key.into(), value.into()));
    }

    /// Replace the value of `key`, or append it.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value,
            None => self.pairs.push((key.to_string(), value)),
        }
    }

    /// Append every pair of `other`.
    pub fn extend(&mut self, other: TextKeys) {
        self.pairs.extend(other.pairs);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The value of `key` as a number, `None` when absent.
    pub fn number(&self, key: &str) -> Result<Option<u64>, ValueError> {
        self.get(key).map(|v| parse_number(key, v)).transpose()
    }

    /// The value of `key` as Yes/No, `None` when absent.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ValueError> {
        self.get(key).map(|v| parse_bool(key, v)).transpose()
    }

    /// The value of `key` as a binary value, `None` when absent.
    pub fn binary(&self, key: &str, max_len: usize) -> Result<Option<Vec<u8>>, ValueError> {
        self.get(key)
            .map(|v| parse_binary(key, v, max_len))
            .transpose()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for TextKeys {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> TextKeys {
        TextKeys {
            pairs: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// Shows `CHAP_R` as its length only.
impl fmt::Debug for TextKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.pairs
                    .iter()
                    .map(|(k, v)| (printable(k, MAX_KEY_LEN), shown_value(k, v))),
            )
            .finish()
    }
}

/// `key=value key=value`, for log lines; `CHAP_R` is not shown.
impl fmt::Display for TextKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (k, v)) in self.pairs.iter().enumerate() {
            if n > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", printable(k, MAX_KEY_LEN), shown_value(k, v))?;
        }
        Ok(())
    }
}

/// The special values of RFC 7143 §6.2, which any key may carry in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// The responder does not know the key.
    NotUnderstood,
    /// The key does not apply (e.g. a Normal-only key in a Discovery session).
    Irrelevant,
    /// The responder refuses the offered value.
    Reject,
}

impl Special {
    pub fn from_value(value: &str) -> Option<Special> {
        match value {
            NOT_UNDERSTOOD => Some(Special::NotUnderstood),
            IRRELEVANT => Some(Special::Irrelevant),
            REJECT => Some(Special::Reject),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Special::NotUnderstood => NOT_UNDERSTOOD,
            Special::Irrelevant => IRRELEVANT,
            Special::Reject => REJECT,
        }
    }
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `numerical-value` (RFC 7143 §6.1): an unsigned integer below 2^64 as
/// a decimal constant, a `0x` hex constant, or a `0b` base64 constant of at
/// most 8 bytes.
pub fn parse_number(key: &str, value: &str) -> Result<u64, ValueError> {
    let err = |problem: &str| ValueError::new(key, value, problem);
    if let Some(hex) = strip_prefix2(value, "0x") {
        let hex = hex.trim_start_matches('0');
        if hex.len() > 16 {
            return Err(err("number does not fit in 64 bits"));
        }
        if hex.is_empty() {
            // "0x0" or "0x000": zero; "0x" alone is caught by the digit check.
            return if value.len() > 2 {
                Ok(0)
            } else {
                Err(err("hex constant without digits"))
            };
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("not a hex constant"));
        }
        return u64::from_str_radix(hex, 16).map_err(|_| err("not a hex constant"));
    }
    if let Some(b64) = strip_prefix2(value, "0b") {
        let bytes = decode_base64(b64).map_err(&err)?;
        let significant: &[u8] = match bytes.iter().position(|&b| b != 0) {
            Some(first) => bytes.get(first..).unwrap_or(&[]),
            None => &[],
        };
        if bytes.is_empty() {
            return Err(err("base64 constant without digits"));
        }
        if significant.len() > 8 {
            return Err(err("number does not fit in 64 bits"));
        }
        return Ok(significant
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)));
    }
    if value.is_empty() {
        return Err(err("empty number"));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("not a decimal, 0x hex or 0b base64 number"));
    }
    value
        .parse::<u64>()
        .map_err(|_| err("number does not fit in 64 bits"))
}

/// A number that must lie in `min..=max` (the key's range from RFC 7143 §13).
pub fn parse_number_in(key: &str, value: &str, min: u64, max: u64) -> Result<u64, ValueError> {
    let n = parse_number(key, value)?;
    if n < min || n > max {
        return Err(ValueError::new(
            key,
            value,
            format!("out of range, must be {min} to {max}"),
        ));
    }
    Ok(n)
}

/// A `boolean-value`: "Yes" or "No". Case is ignored, for targets that
/// write "yes" (RFC 7143 says values are case-sensitive; accepting more is
/// harmless).
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ValueError> {
    if value.eq_ignore_ascii_case("Yes") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("No") {
        Ok(false)
    } else {
        Err(ValueError::new(key, value, "expected Yes or No"))
    }
}

/// "Yes" or "No".
pub fn format_bool(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

/// A `list-of-values`: comma separated, no item empty.
pub fn parse_list<'a>(key: &str, value: &'a str) -> Result<Vec<&'a str>, ValueError> {
    let items: Vec<&str> = value.split(',').collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(ValueError::new(key, value, "empty item in list"));
    }
    Ok(items)
}

/// A `binary-value` (`0x` hex or `0b` base64, RFC 7143 §6.1) of 1 to
/// `max_len` bytes. An odd number of hex digits implies a leading zero.
pub fn parse_binary(key: &str, value: &str, max_len: usize) -> Result<Vec<u8>, ValueError> {
    let err = |problem: &str| ValueError::new(key, value, problem);
    let bytes = if let Some(hex) = strip_prefix2(value, "0x") {
        // Refuse before decoding so a hostile value costs nothing.
        if hex.len() / 2 > max_len.saturating_add(1) {
            return Err(ValueError::new(
                key,
                value,
                format!("longer than {max_len} bytes"),
            ));
        }
        decode_hex(hex).map_err(&err)?
    } else if let Some(b64) = strip_prefix2(value, "0b") {
        if b64.len() / 4 * 3 > max_len.saturating_add(3) {
            return Err(ValueError::new(
                key,
                value,
                format!("longer than {max_len} bytes"),
            ));
        }
        decode_base64(b64).map_err(&err)?
    } else {
        return Err(err("binary value must start with 0x (hex) or 0b (base64)"));
    };
    if bytes.is_empty() {
        return Err(err("binary value without digits"));
    }
    if bytes.len() > max_len {
        return Err(ValueError::new(
            key,
            value,
            format!("{} bytes long, at most {max_len} allowed", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// `0x` followed by lowercase hex: how we send binary values.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// `value` without a two-character prefix, ignoring its case ("0x"/"0X").
fn strip_prefix2<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..2)?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(2..)
    } else {
        None
    }
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, &'static str> {
    let digits = hex.as_bytes();
    let mut out = Vec::with_capacity(digits.len() / 2 + 1);
    // An odd count: the first digit stands alone (implied leading zero).
    let (head, rest) = digits.split_at(digits.len() % 2);
    if let Some(&c) = head.first() {
        out.push(hex_nibble(c).ok_or("not a hex digit")?);
    }
    for pair in rest.chunks_exact(2) {
        let (hi, lo) = match pair {
            [hi, lo] => (*hi, *lo),
            _ => return Err("not a hex digit"),
        };
        let hi = hex_nibble(hi).ok_or("not a hex digit")?;
        let lo = hex_nibble(lo).ok_or("not a hex digit")?;
        out.push((hi << 4) | lo);
    }
    Ok(out)
}

fn base64_sextet(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Base64 (RFC 4648 standard alphabet), with or without `=` padding.
fn decode_base64(s: &str) -> Result<Vec<u8>, &'static str> {
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 {
        return Err("too much base64 padding");
    }
    if body.len() % 4 == 1 {
        return Err("truncated base64");
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in body.bytes() {
        let v = base64_sextet(c).ok_or("not a base64 character")?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    Ok(out)
}

/// One `TargetAddress`: where a target can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// A DNS name, an IPv4 address, or an IPv6 address without brackets
    /// (possibly with a `%zone`).
    pub host: String,
    pub port: u16,
    /// Target portal group tag.
    pub tpgt: u16,
}

impl fmt::Display for Portal {
    /// `host:port,tpgt`, IPv6 in brackets: the `TargetAddress` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{},{}", self.host, self.port, self.tpgt)
        } else {
            write!(f, "{}:{},{}", self.host, self.port, self.tpgt)
        }
    }
}

/// A target from a SendTargets response, with its portals in the order
/// given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    pub portals: Vec<Portal>,
}

/// An IPv6 address, optionally with a `%zone` made of letters, digits and
/// `-_.` (interface names): anything else in a zone (say `]`) would make
/// the address unprintable in TargetAddress form.
fn valid_ipv6_with_zone(s: &str) -> bool {
    let (ip, zone) = match s.split_once('%') {
        Some((ip, z)) => (ip, Some(z)),
        None => (s, None),
    };
    ip.parse::<Ipv6Addr>().is_ok()
        && zone.is_none_or(|z| {
            !z.is_empty()
                && z.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Parse a `TargetAddress` value: `host[:port][,tpgt]` with IPv6 hosts in
/// brackets (RFC 7143 §13.8). An IPv6 address without brackets is accepted
/// as a host without a port. Port defaults to 3260, tag to 1.
pub fn parse_target_address(value: &str) -> Result<Portal, ValueError> {
    const KEY: &str = "TargetAddress";
    let err = |problem: &str| ValueError::new(KEY, value, problem);
    let (addr, tpgt) = match value.rsplit_once(',') {
        Some((addr, tag)) => (
            addr,
            u16::try_from(parse_number(KEY, tag)?)
                .map_err(|_| err("portal group tag above 65535"))?,
        ),
        None => (value, DEFAULT_TPGT),
    };
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(err("'[' without ']'"));
        };
        if !valid_ipv6_with_zone(host) {
            return Err(err("not an IPv6 address inside brackets"));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(err("unexpected text after ']'")),
            },
        };
        (host, port)
    } else if addr.matches(':').count() > 1 {
        // Bare IPv6 address: no way to carry a port.
        if !valid_ipv6_with_zone(addr) {
            return Err(err("not a host[:port]"));
        }
        (addr, None)
    } else {
        match addr.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (addr, None),
        }
    };
    if host.is_empty() {
        return Err(err("empty host"));
    }
    if host.len() > 255 || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err("host is not a name or address"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        // Digits only: `u16::from_str` would also take "+80".
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(err("port must be 1 to 65535")),
        },
    };
    Ok(Portal {
        host: host.to_string(),
        port,
        tpgt,
    })
}

/// Parse the data of a SendTargets response (RFC 7143 Appendix C): each
/// `TargetName` followed by zero or more `TargetAddress`. Other keys are
/// ignored; a `TargetAddress` before any `TargetName` is an error.
/// The longest iSCSI name (RFC 7143 §4.2.7.1).
pub const MAX_ISCSI_NAME: usize = 223;

/// Whether `name` is an iSCSI name (RFC 3720 §3.2.6.3, RFC 7143
/// §4.2.7.2): `iqn.`, `eui.` (16 hex digits) or `naa.` (16 or 32 hex
/// digits), at most 223 bytes, of letters, digits, '.', '-' and ':' only
/// (stringprep leaves nothing else; non-ASCII letters and digits are
/// allowed). A name from a target that fails this is data, not a name:
/// it could carry a path, a newline into a key = value record, or a
/// terminal escape.
pub fn check_iscsi_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ISCSI_NAME {
        return Err(format!("{} bytes, not 1 to {MAX_ISCSI_NAME}", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_alphanumeric() || matches!(c, '.' | '-' | ':')))
    {
        return Err(format!("the character {:?} is not allowed", c));
    }
    let lower = name.to_ascii_lowercase();
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if let Some(rest) = lower.strip_prefix("iqn.") {
        if rest.is_empty() {
            return Err("nothing after \"iqn.\"".into());
        }
        Ok(())
    } else if let Some(rest) = lower.strip_prefix("eui.") {
        if hex(rest, &[16]) {
            Ok(())
        } else {
            Err("\"eui.\" needs 16 hex digits".into())
        }
    } else if let Some(rest) = lower.strip_prefix("naa.") {
        if hex(rest, &[16, 32]) {
            Ok(())
        } else {
            Err("\"naa.\" needs 16 or 32 hex digits".into())
        }
    } else {
        Err("no \"iqn.\", \"eui.\" or \"naa.\" prefix".into())
    }
}

/// Targets from a SendTargets answer. A TargetName that is no iSCSI name
/// ([`check_iscsi_name`]) is left out with a warning that shows it
/// escaped, and so are the TargetAddresses that follow it.
pub fn parse_send_targets(data: &[u8]) -> Result<Vec<DiscoveredTarget>, TextError> {
    let keys = TextKeys::parse_multi(data)?;
    let mut targets: Vec<DiscoveredTarget> = Vec::new();
    // The current TargetName was refused: its addresses go with it.
    let mut refused = false;
    for (key, value) in keys.iter() {
        match key {
            "TargetName" => {
                if value.is_empty() {
                    return Err(TextError::SendTargets {
                        reason: "empty TargetName".to_string(),
                    });
                }
                if let Err(why) = check_iscsi_name(value) {
                    log::warn!(
                        "SendTargets: ignoring TargetName \"{}\": not an iSCSI name ({why})",
                        printable(value, MAX_ISCSI_NAME + 1)
                    );
                    refused = true;
                    continue;
                }
                refused = false;
                targets.push(DiscoveredTarget {
                    name: value.to_string(),
                    portals: Vec::new(),
                });
            }
            "TargetAddress" if refused => {}
            "TargetAddress" => {
                let portal = parse_target_address(value)?;
                match targets.last_mut() {
                    Some(t) => t.portals.push(portal),
                    None => {
                        return Err(TextError::SendTargets {
                            reason: format!(
                                "TargetAddress={} before any TargetName",
                                printable(value, 64)
                            ),
                        });
                    }
                }
            }
            other => log::debug!(
                "SendTargets response: ignoring {}",
                printable(other, MAX_KEY_LEN)
            ),
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_names_are_checked() {
        for ok in [
            "iqn.2026-11.org.sanroot:root",
            "IQN.2003-01.org.linux-iscsi.host.x8664:sn.1234",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert_eq!(check_iscsi_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "0 bytes"),
            ("../../x", "'/'"),
            ("iqn.x:a\nnode.startup = automatic", "'\\n'"),
            ("iqn.x:\u{1b}[2J", "'\\u{1b}'"),
            ("iqn.x y", "' '"),
            ("x.2026-11.org:y", "prefix"),
            ("iqn.", "nothing after"),
            ("eui.0200", "16 hex"),
            ("naa.zz004567BA64678D", "16 or 32"),
        ] {
            let e = check_iscsi_name(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("iqn.2026-11.org.x:{}", "a".repeat(220));
        assert!(check_iscsi_name(&long).unwrap_err().contains("bytes"));
    }

    #[test]
    fn send_targets_leaves_out_names_that_are_not_names() {
        let data = b"TargetName=../../etc/x\0TargetAddress=10.0.0.9:3260,1\0\
TargetName=iqn.2026-11.org.x:good\0TargetAddress=10.0.0.2:3260,1\0\
TargetName=iqn.2026-11.org.x:a\nnode.startup = automatic\0TargetAddress=10.0.0.3:3260,1\0";
        let t = parse_send_targets(data).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "iqn.2026-11.org.x:good");
        assert_eq!(t[0].portals.len(), 1);
        assert_eq!(t[0].portals[0].host, "10.0.0.2");
    }

    #[test]
    fn parse_and_emit_round_trip() {
        let data = b"InitiatorName=iqn.2024-01.org.example:host\0SessionType=Normal\0";
        let keys = TextKeys::parse(data).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get("SessionType"), Some("Normal"));
        assert_eq!(keys.get("Nope"), None);
        let mut out = Vec::new();
        keys.emit(&mut out);
        assert_eq!(out, data);
        assert_eq!(keys.buffer_len(), data.len());
    }

    #[test]
    fn tolerates_missing_final_nul_and_padding() {
        let a = TextKeys::parse(b"A=1\0B=2").unwrap();
        let b = TextKeys::parse(b"A=1\0B=2\0\0\0").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get("B"), Some("2"));
        assert!(TextKeys::parse(b"").unwrap().is_empty());
        assert!(TextKeys::parse(b"\0\0\0\0").unwrap().is_empty());
    }

    #[test]
    fn value_may_contain_equals_and_be_empty() {
        let k = TextKeys::parse(b"CHAP_C=0bAAE=\0SendTargets=\0").unwrap();
        assert_eq!(k.get("CHAP_C"), Some("0bAAE="));
        assert_eq!(k.get("SendTargets"), Some(""));
    }

    #[test]
    fn rejects_bad_segments() {
        assert_eq!(
            TextKeys::parse(b"A=1\0=2\0"),
            Err(TextError::EmptyKey { offset: 4 })
        );
        assert!(matches!(
            TextKeys::parse(b"A=1\0Garbage\0"),
            Err(TextError::MissingEquals { offset: 4, .. })
        ));
        let long_key = format!("{}=1", "K".repeat(64));
        assert!(matches!(
            TextKeys::parse(long_key.as_bytes()),
            Err(TextError::KeyTooLong { len: 64, .. })
        ));
        let ok_key = format!("{}=1", "K".repeat(63));
        assert!(TextKeys::parse(ok_key.as_bytes()).is_ok());
        let long_value = format!("A={}", "v".repeat(8193));
        assert!(matches!(
            TextKeys::parse(long_value.as_bytes()),
            Err(TextError::ValueTooLong { len: 8193, .. })
        ));
        assert_eq!(
            TextKeys::parse(b"A=1\0B=\xff\0"),
            Err(TextError::NotUtf8 { offset: 4 })
        );
        assert!(matches!(
            TextKeys::parse(b"A B=1\0"),
            Err(TextError::BadKey { .. })
        ));
        let many: Vec<u8> = (0..1025)
            .flat_map(|i| format!("K{i}=v\0").into_bytes())
            .collect();
        assert_eq!(
            TextKeys::parse_multi(&many),
            Err(TextError::TooManyPairs { max: 1024 })
        );
        let e = TextKeys::parse(b"HeaderDigest=None\0HeaderDigest=CRC32C\0").unwrap_err();
        assert!(matches!(&e, TextError::DuplicateKey { key, .. } if key == "HeaderDigest"));
        assert!(e.to_string().contains("HeaderDigest sent twice"));
    }

    #[test]
    fn parse_multi_keeps_repeats_in_order() {
        let k = TextKeys::parse_multi(b"A=1\0A=2\0B=3\0").unwrap();
        assert_eq!(k.get_all("A").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(k.get("A"), Some("1"));
    }

    #[test]
    fn chap_r_is_never_shown() {
        let k: TextKeys = [("CHAP_N", "user"), ("CHAP_R", "0x0123456789abcdef")]
            .into_iter()
            .collect();
        let shown = format!("{k} {k:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("CHAP_N=user"));
        let e = parse_binary("CHAP_R", "0xzz", 16).unwrap_err();
        assert!(!e.to_string().contains("zz"));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("K", "0"), Ok(0));
        assert_eq!(parse_number("K", "262144"), Ok(262144));
        assert_eq!(parse_number("K", "0x40000"), Ok(262144));
        assert_eq!(parse_number("K", "0X40000"), Ok(262144));
        assert_eq!(parse_number("K", "0x0"), Ok(0));
        assert_eq!(parse_number("K", "0xffffffffffffffff"), Ok(u64::MAX));
        assert_eq!(parse_number("K", "0x0000000000000000001"), Ok(1));
        assert_eq!(parse_number("K", "0bAAQAAA=="), Ok(0x040000));
        assert_eq!(
            parse_number("K", "18446744073709551615"),
            Ok(18446744073709551615)
        );
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1k",
            "0x",
            "0xg",
            "0x1ffffffffffffffff",
            "18446744073709551616",
            "0b",
        ] {
            let e = parse_number("MaxBurstLength", bad).unwrap_err();
            assert_eq!(e.key, "MaxBurstLength");
            assert!(e.to_string().starts_with("MaxBurstLength="), "{e}");
        }
        assert_eq!(parse_number_in("K", "512", 512, 16777215), Ok(512));
        let e = parse_number_in("MaxRecvDataSegmentLength", "511", 512, 16777215).unwrap_err();
        assert!(e.to_string().contains("512 to 16777215"), "{e}");
    }

    #[test]
    fn booleans_lists_specials() {
        assert_eq!(parse_bool("K", "Yes"), Ok(true));
        assert_eq!(parse_bool("K", "No"), Ok(false));
        assert_eq!(parse_bool("K", "yes"), Ok(true));
        assert!(parse_bool("InitialR2T", "Maybe").is_err());
        assert_eq!(format_bool(true), "Yes");
        assert_eq!(parse_list("K", "CRC32C,None"), Ok(vec!["CRC32C", "None"]));
        assert_eq!(parse_list("K", "None"), Ok(vec!["None"]));
        assert!(parse_list("K", "CRC32C,").is_err());
        assert_eq!(
            Special::from_value("NotUnderstood"),
            Some(Special::NotUnderstood)
        );
        assert_eq!(Special::from_value("Irrelevant"), Some(Special::Irrelevant));
        assert_eq!(Special::from_value("Reject"), Some(Special::Reject));
        assert_eq!(Special::from_value("reject"), None);
    }

    #[test]
    fn binary_values() {
        assert_eq!(parse_binary("K", "0x00ff10", 16), Ok(vec![0, 0xff, 0x10]));
        assert_eq!(parse_binary("K", "0XABC", 16), Ok(vec![0x0a, 0xbc]));
        // base64 of 00 01 02 03 04 with and without padding
        assert_eq!(parse_binary("K", "0bAAECAwQ=", 16), Ok(vec![0, 1, 2, 3, 4]));
        assert_eq!(parse_binary("K", "0bAAECAwQ", 16), Ok(vec![0, 1, 2, 3, 4]));
        assert_eq!(parse_binary("K", "0b+/+/", 16), Ok(vec![0xfb, 0xff, 0xbf]));
        assert!(parse_binary("K", "0x", 16).is_err());
        assert!(parse_binary("K", "0b", 16).is_err());
        assert!(parse_binary("K", "1234", 16).is_err());
        assert!(parse_binary("K", "0x12g4", 16).is_err());
        assert!(parse_binary("K", "0bA", 16).is_err());
        assert!(parse_binary("K", "0bAA===", 16).is_err());
        assert!(parse_binary("K", "0bAA*A", 16).is_err());
        assert!(parse_binary("CHAP_C", &format!("0x{}", "ab".repeat(17)), 16).is_err());
        assert!(parse_binary("K", &format!("0x{}", "ab".repeat(5000)), 1024).is_err());
        assert_eq!(encode_hex(&[0, 0xab, 0x10]), "0x00ab10");
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(parse_binary("K", &encode_hex(&bytes), 1024), Ok(bytes));
    }

    #[test]
    fn target_addresses() {
        let p = |s| parse_target_address(s).unwrap();
        assert_eq!(
            p("192.168.1.10:3260,1"),
            Portal {
                host: "192.168.1.10".into(),
                port: 3260,
                tpgt: 1
            }
        );
        assert_eq!(p("10.0.0.1").port, 3260);
        assert_eq!(p("10.0.0.1").tpgt, 1);
        assert_eq!(p("10.0.0.1,7").tpgt, 7);
        assert_eq!(p("san.example.com:3261").port, 3261);
        let v6 = p("[fe80::1%eth0]:3262,2");
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.tpgt),
            ("fe80::1%eth0", 3262, 2)
        );
        assert_eq!(v6.to_string(), "[fe80::1%eth0]:3262,2");
        let v6 = p("[2001:db8::5],3");
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.tpgt),
            ("2001:db8::5", 3260, 3)
        );
        assert_eq!(p("2001:db8::5,4").host, "2001:db8::5");
        for bad in [
            "",
            ":3260",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:x",
            "10.0.0.1:3260,65536",
            "10.0.0.1:3260,",
            "[fe80::1:3260",
            "[not-v6]:3260",
            "[::1]x",
            "a b:3260",
        ] {
            let e = parse_target_address(bad).unwrap_err();
            assert!(e.to_string().starts_with("TargetAddress="), "{bad}: {e}");
        }
    }

    #[test]
    fn send_targets_response() {
        // As tgtd and LIO answer SendTargets=All.
        let data = b"TargetName=iqn.2003-01.org.linux-iscsi.host:disk1\0\
TargetAddress=192.168.122.1:3260,1\0\
TargetAddress=[fe80::5054:ff:fe12:3456]:3260,1\0\
TargetName=iqn.2001-04.com.example:storage.disk2\0\
TargetName=iqn.2001-04.com.example:storage.disk3\0\
TargetAddress=10.1.1.1,2\0";
        let t = parse_send_targets(data).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].name, "iqn.2003-01.org.linux-iscsi.host:disk1");
        assert_eq!(t[0].portals.len(), 2);
        assert_eq!(t[0].portals[1].host, "fe80::5054:ff:fe12:3456");
        assert!(t[1].portals.is_empty());
        assert_eq!(
            t[2].portals,
            vec![Portal {
                host: "10.1.1.1".into(),
                port: 3260,
                tpgt: 2
            }]
        );
        assert!(parse_send_targets(b"").unwrap().is_empty());
        let e = parse_send_targets(b"TargetAddress=10.0.0.1\0TargetName=iqn.x:y\0").unwrap_err();
        assert!(e.to_string().contains("before any TargetName"), "{e}");
        let e =
            parse_send_targets(b"TargetName=iqn.x:y\0TargetAddress=10.0.0.1:99999\0").unwrap_err();
        assert!(
            e.to_string().contains("TargetAddress=\"10.0.0.1:99999\""),
            "{e}"
        );
    }

    #[test]
    fn hostile_input_never_panics() {
        // A cheap deterministic fuzz over short inputs.
        let alphabet = b"=\0aZ0x,:[]%\xff9b";
        let mut state = 0x2545F4914F6CDD1Du64;
        for _ in 0..20000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((state >> (i * 2)) as usize + i) % alphabet.len()])
                .collect();
            let _ = TextKeys::parse(&bytes);
            let _ = parse_send_targets(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse_number("K", s);
                let _ = parse_binary("K", s, 8);
                let _ = parse_target_address(s);
            }
        }
    }
}
