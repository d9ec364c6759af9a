//! CHAP for iSCSI login (RFC 1994, RFC 7143 §12.1.3), MD5 only (`CHAP_A=5`),
//! one-way and mutual, as a pure state machine: text keys in, text keys out,
//! no I/O.
//!
//! The exchange in the security negotiation stage, after `AuthMethod=CHAP`
//! has been agreed (see [`auth_method_offer`] / [`check_auth_method`]):
//!
//! ```text
//! I -> T  CHAP_A=5                                [`ChapInitiator::start`]
//! T -> I  CHAP_A=5 CHAP_I=<id> CHAP_C=<challenge>
//! I -> T  CHAP_N=<user> CHAP_R=<response>         [`ChapInitiator::on_challenge`]
//!         (+ CHAP_I=<our id> CHAP_C=<our challenge> when mutual)
//! T -> I  (mutual only) CHAP_N=<target> CHAP_R=<its response>
//!                                                 [`ChapInitiator::on_target_response`]
//! ```
//!
//! Not here: sending PDUs, the login stage machine, where secrets come from.
//!
//! Secrets are [`Secret`]s: they never appear in `Debug`, logs or errors.
//! Neither do response values (`CHAP_R`): with the challenge they allow an
//! offline dictionary attack on the secret.

use std::fmt;

use md5::{Digest, Md5};

use super::text::{self, TextKeys, ValueError, encode_hex, parse_binary, parse_list, printable};
use crate::secret::Secret;

/// The only algorithm we do: MD5 (RFC 1994 / IANA PPP auth algorithm 5).
pub const CHAP_A_MD5: &str = "5";
/// The shortest challenge we answer (RFC 1994: at least one byte).
pub const MIN_CHALLENGE_LEN: usize = 1;
/// The longest challenge we answer: RFC 7143 §12.1.3 bounds `CHAP_C` at
/// 1024 bytes.
pub const MAX_CHALLENGE_LEN: usize = 1024;
/// The length of the challenge we send in mutual CHAP (RFC 7143 §12.1.3
/// recommends at least the size of the MD5 output).
pub const OUR_CHALLENGE_LEN: usize = 16;
/// RFC 7143 §12.1.3: secrets of at least 96 bits when the connection is not
/// encrypted. tgtd and LIO accept shorter ones, so we only warn.
pub const RECOMMENDED_SECRET_LEN: usize = 12;
/// The longest CHAP_N we accept from a target (RFC 7143 §6.1 text-value).
const MAX_NAME_LEN: usize = 255;
/// An MD5 response is 16 bytes.
const RESPONSE_LEN: usize = 16;

/// What the initiator knows to authenticate itself, and optionally the
/// target.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Our CHAP name (CHAP_N); often the initiator IQN.
    pub user: String,
    /// Our secret, proving us to the target.
    pub secret: Secret,
    /// Mutual CHAP: authenticate the target too.
    pub mutual: Option<MutualConfig>,
}

/// Mutual (bidirectional) CHAP settings.
#[derive(Debug, Clone)]
pub struct MutualConfig {
    /// The CHAP_N the target must send; `None` accepts any name (the
    /// response is still verified).
    pub target_name: Option<String>,
    /// The target's secret (must differ from ours: RFC 7143 §12.1.3).
    pub secret: Secret,
}

impl AuthConfig {
    /// Check the configuration: a user name, non-empty secrets, and
    /// different secrets in the two directions (RFC 7143 §12.1.3: "Any CHAP
    /// secret used for initiator authentication MUST NOT be configured for
    /// authentication of any target"). Short secrets are logged as warnings
    /// (length only).
    pub fn validate(&self) -> Result<(), ChapError> {
        if self.user.is_empty() {
            return Err(ChapError::Config("empty CHAP user name"));
        }
        if self.user.len() > MAX_NAME_LEN || self.user.contains('\0') {
            return Err(ChapError::Config(
                "CHAP user name longer than 255 bytes or containing NUL",
            ));
        }
        if self.secret.is_empty() {
            return Err(ChapError::Config("empty CHAP secret"));
        }
        warn_short("CHAP secret", &self.secret);
        if let Some(m) = &self.mutual {
            if m.secret.is_empty() {
                return Err(ChapError::Config("empty mutual (target) CHAP secret"));
            }
            if ct_eq(m.secret.expose(), self.secret.expose()) {
                return Err(ChapError::SameSecretBothWays);
            }
            warn_short("mutual (target) CHAP secret", &m.secret);
        }
        Ok(())
    }
}

fn warn_short(what: &str, secret: &Secret) {
    if secret.len() < RECOMMENDED_SECRET_LEN {
        log::warn!(
            "{what} is {} bytes long; RFC 7143 asks for at least {RECOMMENDED_SECRET_LEN} (96 bits)",
            secret.len()
        );
    }
}

/// Why CHAP failed. No variant carries a secret or a response value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChapError {
    /// The configuration is unusable.
    Config(&'static str),
    /// Mutual CHAP configured with the same secret in both directions.
    SameSecretBothWays,
    /// The target's AuthMethod answer is not one we offered.
    AuthMethod { answer: String },
    /// The target's CHAP_A does not include MD5 (5).
    UnsupportedAlgorithm { offered: String },
    /// A key the step needs is absent.
    MissingKey { key: &'static str },
    /// A value that does not decode or is out of range.
    Malformed(ValueError),
    /// The target's challenge is shorter than 1 or longer than 1024 bytes.
    ChallengeLength { len: usize },
    /// The target sent back a challenge we sent (reflection attack, RFC
    /// 7143 §12.1.3).
    ReflectedChallenge,
    /// Mutual CHAP: the target did not answer our challenge.
    TargetDidNotAnswer { missing: &'static str },
    /// Mutual CHAP: the target's CHAP_N is not the one configured.
    WrongTargetName { expected: String, got: String },
    /// Mutual CHAP: the target's CHAP_R is wrong: it does not know the
    /// secret, it is not the target we think.
    TargetAuthFailed,
    /// The system random source failed.
    Random(String),
    /// The state machine was driven out of order (a bug in the caller).
    OutOfOrder { step: &'static str },
}

impl fmt::Display for ChapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChapError::Config(what) => write!(f, "CHAP configuration: {what}"),
            ChapError::SameSecretBothWays => write!(
                f,
                "CHAP configuration: the mutual (target) secret equals the initiator secret; RFC 7143 forbids using one secret in both directions"
            ),
            ChapError::AuthMethod { answer } => write!(
                f,
                "target answered AuthMethod={answer}, which is not a method we offered"
            ),
            ChapError::UnsupportedAlgorithm { offered } => write!(
                f,
                "target offers CHAP_A={offered}; only MD5 (5) is supported"
            ),
            ChapError::MissingKey { key } => {
                write!(f, "CHAP: the target did not send {key}")
            }
            ChapError::Malformed(e) => write!(f, "CHAP: {e}"),
            ChapError::ChallengeLength { len } => write!(
                f,
                "CHAP: target challenge (CHAP_C) is {len} bytes, must be {MIN_CHALLENGE_LEN} to {MAX_CHALLENGE_LEN}"
            ),
            ChapError::ReflectedChallenge => write!(
                f,
                "CHAP: the target's challenge (CHAP_C) equals one we sent: reflection attack refused"
            ),
            ChapError::TargetDidNotAnswer { missing } => write!(
                f,
                "mutual CHAP: the target did not answer our challenge ({missing} missing)"
            ),
            ChapError::WrongTargetName { expected, got } => write!(
                f,
                "mutual CHAP: the target calls itself CHAP_N=\"{got}\", expected \"{expected}\""
            ),
            ChapError::TargetAuthFailed => write!(
                f,
                "mutual CHAP: authentication of the target failed (wrong CHAP_R: the target does not know the mutual secret)"
            ),
            ChapError::Random(e) => write!(f, "CHAP: no random numbers: {e}"),
            ChapError::OutOfOrder { step } => {
                write!(f, "CHAP: {step} called out of order")
            }
        }
    }
}

impl std::error::Error for ChapError {}

impl From<ValueError> for ChapError {
    fn from(e: ValueError) -> ChapError {
        ChapError::Malformed(e)
    }
}

/// The `AuthMethod` value to offer in the first login request: `None`
/// without credentials, `CHAP,None` for one-way CHAP (the target decides
/// whether it wants to authenticate us; a downgrade to None only hurts the
/// target), and `CHAP` alone for mutual CHAP (offering None would let an
/// impostor skip proving itself).
pub fn auth_method_offer(config: Option<&AuthConfig>) -> &'static str {
    match config {
        None => "None",
        Some(c) if c.mutual.is_none() => "CHAP,None",
        Some(_) => "CHAP",
    }
}

/// The method the target picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    None,
    Chap,
}

/// Check the target's `AuthMethod` answer against [`auth_method_offer`].
pub fn check_auth_method(
    config: Option<&AuthConfig>,
    answer: &str,
) -> Result<AuthMethod, ChapError> {
    let offered = auth_method_offer(config);
    let picked = match answer {
        "None" => AuthMethod::None,
        "CHAP" => AuthMethod::Chap,
        _ => {
            return Err(ChapError::AuthMethod {
                answer: printable(answer, 64),
            });
        }
    };
    if !offered.split(',').any(|m| m == answer) {
        return Err(ChapError::AuthMethod {
            answer: printable(answer, 64),
        });
    }
    Ok(picked)
}

/// `MD5(id || secret || challenge)` (RFC 1994 §4.1).
pub fn chap_response(id: u8, secret: &Secret, challenge: &[u8]) -> [u8; RESPONSE_LEN] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret.expose());
    h.update(challenge);
    h.finalize().into()
}

/// Compare without an early exit, so timing does not tell how many leading
/// bytes of a forged response were right.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Our answer to a target's challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapAnswer {
    /// CHAP_N.
    pub name: String,
    /// CHAP_R, the MD5 response.
    pub response: [u8; RESPONSE_LEN],
}

impl fmt::Debug for ChapAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChapAnswer")
            .field("name", &self.name)
            .field("response", &"<not shown>")
            .finish()
    }
}

/// Answer a target's CHAP_I/CHAP_C (initiator authentication). `sent` are
/// challenges we sent to this target (this or an earlier connection): a
/// target challenge equal to any of them is refused (RFC 7143 §12.1.3).
pub fn answer_challenge(
    id: u8,
    challenge: &[u8],
    name: &str,
    secret: &Secret,
    sent: &[&[u8]],
) -> Result<ChapAnswer, ChapError> {
    if !(MIN_CHALLENGE_LEN..=MAX_CHALLENGE_LEN).contains(&challenge.len()) {
        return Err(ChapError::ChallengeLength {
            len: challenge.len(),
        });
    }
    if sent.iter().any(|s| ct_eq(s, challenge)) {
        return Err(ChapError::ReflectedChallenge);
    }
    Ok(ChapAnswer {
        name: name.to_string(),
        response: chap_response(id, secret, challenge),
    })
}

/// The identifier and challenge we send to the target in mutual CHAP.
#[derive(Clone, PartialEq, Eq)]
pub struct MutualChallenge {
    pub id: u8,
    pub challenge: [u8; OUR_CHALLENGE_LEN],
}

impl fmt::Debug for MutualChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MutualChallenge {{ id: {}, challenge: {} }}",
            self.id,
            encode_hex(&self.challenge)
        )
    }
}

/// Random bytes for a challenge from the kernel's CSPRNG. Early in an
/// initramfs on a machine with no entropy source (a VM without virtio-rng)
/// the kernel may not be seeded for minutes, and a blocking read would
/// hang the boot with no word: wait up to 10 s, saying so, then take the
/// kernel's not-yet-seeded output (GRND_INSECURE) with a loud warning.
fn challenge_random(buf: &mut [u8]) -> std::io::Result<()> {
    const GRND_NONBLOCK: nix::libc::c_uint = 0x1;
    const GRND_INSECURE: nix::libc::c_uint = 0x4;
    let get = |buf: &mut [u8], flags| -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: the pointer and length describe `rest`, owned here.
            let n = unsafe { nix::libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), flags) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(())
    };
    let not_ready = |e: &std::io::Error| e.raw_os_error() == Some(nix::libc::EAGAIN);
    match get(buf, GRND_NONBLOCK) {
        Err(e) if not_ready(&e) => {}
        r => return r,
    }
    log::warn!(
        "waiting (up to 10 s) for the kernel's random number generator to be seeded, for the mutual CHAP challenge; a VM wants virtio-rng"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        match get(buf, GRND_NONBLOCK) {
            Err(e) if not_ready(&e) => {}
            r => return r,
        }
    }
    log::error!(
        "the kernel's random number generator is still not seeded after 10 s: using its unseeded output for the mutual CHAP challenge (weaker against a target impostor); give the machine an entropy source (virtio-rng, RDRAND)"
    );
    match get(buf, GRND_INSECURE) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => get(buf, 0),
        r => r,
    }
}

impl MutualChallenge {
    /// A random identifier and a random 16-byte challenge.
    pub fn generate() -> Result<MutualChallenge, ChapError> {
        let mut buf = [0u8; 1 + OUR_CHALLENGE_LEN];
        challenge_random(&mut buf).map_err(|e| ChapError::Random(e.to_string()))?;
        let (id, rest) = buf.split_at(1);
        let mut challenge = [0u8; OUR_CHALLENGE_LEN];
        challenge.copy_from_slice(rest);
        Ok(MutualChallenge {
            id: id.first().copied().unwrap_or(0),
            challenge,
        })
    }

    /// Verify the target's answer: its CHAP_N against `expected_name` (any
    /// name when `None`), its CHAP_R against `MD5(id || secret || challenge)`
    /// in constant time.
    pub fn verify(
        &self,
        expected_name: Option<&str>,
        secret: &Secret,
        name: &str,
        response: &[u8],
    ) -> Result<(), ChapError> {
        if let Some(expected) = expected_name
            && name != expected
        {
            return Err(ChapError::WrongTargetName {
                expected: expected.to_string(),
                got: printable(name, 64),
            });
        }
        let want = chap_response(self.id, secret, &self.challenge);
        if !ct_eq(&want, response) {
            return Err(ChapError::TargetAuthFailed);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    SentAlgorithm,
    SentResponse,
    Done,
}

/// The initiator side of CHAP for one login, one-way or mutual.
#[derive(Debug)]
pub struct ChapInitiator {
    config: AuthConfig,
    /// Our challenge, chosen up front so that a target echoing it in its
    /// own challenge is caught.
    ours: Option<MutualChallenge>,
    /// Challenges sent earlier (e.g. on a previous connection) that the
    /// target must not reflect either.
    sent_before: Vec<Vec<u8>>,
    state: State,
}

impl ChapInitiator {
    /// Validate `config` and, for mutual CHAP, draw our challenge.
    pub fn new(config: AuthConfig) -> Result<ChapInitiator, ChapError> {
        let ours = match config.mutual {
            Some(_) => Some(MutualChallenge::generate()?),
            None => None,
        };
        ChapInitiator::build(config, ours)
    }

    /// Like [`ChapInitiator::new`] with a given mutual challenge (tests,
    /// reproducible traces). Ignored unless `config.mutual` is set.
    pub fn with_challenge(
        config: AuthConfig,
        ours: MutualChallenge,
    ) -> Result<ChapInitiator, ChapError> {
        let ours = config.mutual.as_ref().map(|_| ours);
        ChapInitiator::build(config, ours)
    }

    fn build(
        config: AuthConfig,
        ours: Option<MutualChallenge>,
    ) -> Result<ChapInitiator, ChapError> {
        config.validate()?;
        Ok(ChapInitiator {
            config,
            ours,
            sent_before: Vec::new(),
            state: State::Start,
        })
    }

    /// Also refuse this challenge from the target (one we sent on an
    /// earlier connection). At most a few are kept.
    pub fn remember_sent_challenge(&mut self, challenge: &[u8]) {
        if self.sent_before.len() >= 8 {
            self.sent_before.remove(0);
        }
        self.sent_before.push(challenge.to_vec());
    }

    pub fn is_mutual(&self) -> bool {
        self.ours.is_some()
    }

    /// Our mutual challenge, for the caller to remember across connections.
    pub fn our_challenge(&self) -> Option<&MutualChallenge> {
        self.ours.as_ref()
    }

    /// Whether the exchange has completed (for mutual CHAP: the target
    /// proved itself).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The first CHAP request: `CHAP_A=5`.
    pub fn start(&mut self) -> Result<TextKeys, ChapError> {
        if self.state != State::Start {
            return Err(ChapError::OutOfOrder { step: "start" });
        }
        self.state = State::SentAlgorithm;
        let mut k = TextKeys::new();
        k.push("CHAP_A", CHAP_A_MD5);
        Ok(k)
    }

    /// Handle the target's `CHAP_A`, `CHAP_I`, `CHAP_C`; return `CHAP_N`,
    /// `CHAP_R` and, for mutual CHAP, our `CHAP_I`, `CHAP_C`. With one-way
    /// CHAP the exchange is complete after this.
    pub fn on_challenge(&mut self, target: &TextKeys) -> Result<TextKeys, ChapError> {
        if self.state != State::SentAlgorithm {
            return Err(ChapError::OutOfOrder {
                step: "on_challenge",
            });
        }
        // RFC 7143 §12.1.3: the target answers with the algorithm it picked
        // from our list. Accept a list containing 5 (lenient), and a missing
        // CHAP_A (we offered only 5, and compute MD5 whatever it says).
        match target.get("CHAP_A") {
            Some(a) => {
                let algs =
                    parse_list("CHAP_A", a).map_err(|_| ChapError::UnsupportedAlgorithm {
                        offered: printable(a, 64),
                    })?;
                if !algs.contains(&CHAP_A_MD5) {
                    return Err(ChapError::UnsupportedAlgorithm {
                        offered: printable(a, 64),
                    });
                }
            }
            None => log::debug!("CHAP: target sent no CHAP_A with its challenge; assuming 5"),
        }
        let id_value = target
            .get("CHAP_I")
            .ok_or(ChapError::MissingKey { key: "CHAP_I" })?;
        let id = u8::try_from(text::parse_number_in("CHAP_I", id_value, 0, 255)?)
            .map_err(|_| ValueError::new("CHAP_I", id_value, "must be 0 to 255"))?;
        let c_value = target
            .get("CHAP_C")
            .ok_or(ChapError::MissingKey { key: "CHAP_C" })?;
        let challenge = decode_challenge(c_value)?;

        let mut sent: Vec<&[u8]> = self.sent_before.iter().map(Vec::as_slice).collect();
        if let Some(ours) = &self.ours {
            sent.push(&ours.challenge);
        }
        let answer = answer_challenge(
            id,
            &challenge,
            &self.config.user,
            &self.config.secret,
            &sent,
        )?;

        let mut out = TextKeys::new();
        out.push("CHAP_N", answer.name);
        out.push("CHAP_R", encode_hex(&answer.response));
        match &self.ours {
            Some(ours) => {
                out.push("CHAP_I", ours.id.to_string());
                out.push("CHAP_C", encode_hex(&ours.challenge));
                self.state = State::SentResponse;
            }
            None => self.state = State::Done,
        }
        Ok(out)
    }

    /// Mutual CHAP: verify the target's `CHAP_N`/`CHAP_R` (the login
    /// response that ends the security stage). For one-way CHAP, after
    /// [`ChapInitiator::on_challenge`], this accepts anything (there is
    /// nothing to verify).
    pub fn on_target_response(&mut self, target: &TextKeys) -> Result<(), ChapError> {
        if self.state == State::Done && self.ours.is_none() {
            if target.contains("CHAP_R") {
                log::debug!("CHAP: target sent CHAP_R though we did not challenge it; ignored");
            }
            return Ok(());
        }
        let (State::SentResponse, Some(ours), Some(mutual)) =
            (self.state, &self.ours, &self.config.mutual)
        else {
            return Err(ChapError::OutOfOrder {
                step: "on_target_response",
            });
        };
        let name = target
            .get("CHAP_N")
            .ok_or(ChapError::TargetDidNotAnswer { missing: "CHAP_N" })?;
        let r_value = target
            .get("CHAP_R")
            .ok_or(ChapError::TargetDidNotAnswer { missing: "CHAP_R" })?;
        if name.len() > MAX_NAME_LEN {
            return Err(ValueError::new("CHAP_N", name, "longer than 255 bytes").into());
        }
        let response = parse_binary("CHAP_R", r_value, MAX_CHALLENGE_LEN)?;
        if response.len() != RESPONSE_LEN {
            return Err(ValueError::new(
                "CHAP_R",
                r_value,
                format!("{} bytes, an MD5 response is 16", response.len()),
            )
            .into());
        }
        ours.verify(
            mutual.target_name.as_deref(),
            &mutual.secret,
            name,
            &response,
        )?;
        self.state = State::Done;
        Ok(())
    }
}

fn decode_challenge(value: &str) -> Result<Vec<u8>, ChapError> {
    // Decode with a little slack so an over-long challenge is reported by
    // its length, not as a generic decode error.
    match parse_binary("CHAP_C", value, MAX_CHALLENGE_LEN + 1) {
        Ok(c) if c.len() > MAX_CHALLENGE_LEN => Err(ChapError::ChallengeLength { len: c.len() }),
        Ok(c) => Ok(c),
        Err(e) if value.len() > 2 * MAX_CHALLENGE_LEN + 4 => {
            log::debug!("{e}");
            Err(ChapError::ChallengeLength {
                len: value.len().saturating_sub(2) / 2,
            })
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        parse_binary("t", &format!("0x{s}"), 4096).unwrap()
    }

    fn keys(pairs: &[(&str, &str)]) -> TextKeys {
        pairs.iter().copied().collect()
    }

    fn one_way() -> AuthConfig {
        AuthConfig {
            user: "iqn.2024-01.org.example:host".into(),
            secret: Secret::from("initiatorsecret1"),
            mutual: None,
        }
    }

    fn mutual(target_name: Option<&str>) -> AuthConfig {
        AuthConfig {
            mutual: Some(MutualConfig {
                target_name: target_name.map(str::to_string),
                secret: Secret::from("swordfish-12"),
            }),
            ..one_way()
        }
    }

    const OUR_CHALLENGE: &str = "d7f3a1c04e9b28116a5f0c3e7b9d2a48";

    fn our_challenge() -> MutualChallenge {
        let mut challenge = [0u8; 16];
        challenge.copy_from_slice(&hex(OUR_CHALLENGE));
        MutualChallenge {
            id: 0x42,
            challenge,
        }
    }

    // Vectors computed independently with
    // python3 -c 'import hashlib; print(hashlib.md5(bytes([id]) + secret + challenge).hexdigest())'
    #[test]
    fn md5_known_vectors() {
        let r = chap_response(
            1,
            &Secret::from("initiatorsecret1"),
            &hex("0123456789abcdef0123456789abcdef"),
        );
        assert_eq!(encode_hex(&r), "0xb9dd11329faf915ee8bdf537615997f8");
        let r = chap_response(0, &Secret::from("abc"), &[0]);
        assert_eq!(encode_hex(&r), "0xd6f5f95f45da69cbb0d5dbafe4d3f672");
        let c: Vec<u8> = (0..16).collect();
        let r = chap_response(255, &Secret::from("targetsecret12"), &c);
        assert_eq!(encode_hex(&r), "0xd39c562c698f79daa4100a1b031e6563");
        let r = chap_response(0x42, &Secret::from("swordfish-12"), &hex(OUR_CHALLENGE));
        assert_eq!(encode_hex(&r), "0xe68b2715b889ec0003429c7c19769151");
    }

    #[test]
    fn one_way_exchange() {
        let mut chap = ChapInitiator::new(one_way()).unwrap();
        assert!(!chap.is_mutual());
        assert_eq!(chap.start().unwrap().to_string(), "CHAP_A=5");
        let out = chap
            .on_challenge(&keys(&[
                ("CHAP_A", "5"),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x0123456789abcdef0123456789abcdef"),
            ]))
            .unwrap();
        assert_eq!(out.get("CHAP_N"), Some("iqn.2024-01.org.example:host"));
        assert_eq!(
            out.get("CHAP_R"),
            Some("0xb9dd11329faf915ee8bdf537615997f8")
        );
        assert_eq!(out.len(), 2);
        assert!(chap.is_done());
        chap.on_target_response(&TextKeys::new()).unwrap();
    }

    #[test]
    fn challenge_as_base64_and_hex_id() {
        let mut chap = ChapInitiator::new(one_way()).unwrap();
        chap.start().unwrap();
        // base64 of 01 23 45 67 89 ab cd ef 01 23 45 67 89 ab cd ef
        let out = chap
            .on_challenge(&keys(&[
                ("CHAP_A", "5"),
                ("CHAP_I", "0x01"),
                ("CHAP_C", "0bASNFZ4mrze8BI0VniavN7w=="),
            ]))
            .unwrap();
        assert_eq!(
            out.get("CHAP_R"),
            Some("0xb9dd11329faf915ee8bdf537615997f8")
        );
    }

    #[test]
    fn mutual_exchange() {
        let mut chap = ChapInitiator::with_challenge(
            mutual(Some("iqn.2003-01.org.example:tgt")),
            our_challenge(),
        )
        .unwrap();
        chap.start().unwrap();
        let out = chap
            .on_challenge(&keys(&[
                ("CHAP_A", "5"),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x0123456789abcdef0123456789abcdef"),
            ]))
            .unwrap();
        assert_eq!(out.get("CHAP_I"), Some("66"));
        assert_eq!(out.get("CHAP_C"), Some(&*format!("0x{OUR_CHALLENGE}")));
        assert!(!chap.is_done());
        chap.on_target_response(&keys(&[
            ("CHAP_N", "iqn.2003-01.org.example:tgt"),
            ("CHAP_R", "0xE68B2715B889EC0003429C7C19769151"),
        ]))
        .unwrap();
        assert!(chap.is_done());
    }

    fn mutual_after_challenge(config: AuthConfig) -> ChapInitiator {
        let mut chap = ChapInitiator::with_challenge(config, our_challenge()).unwrap();
        chap.start().unwrap();
        chap.on_challenge(&keys(&[
            ("CHAP_A", "5"),
            ("CHAP_I", "7"),
            ("CHAP_C", "0x00112233445566778899aabbccddeeff"),
        ]))
        .unwrap();
        chap
    }

    #[test]
    fn mutual_failures() {
        let good_r = "0xe68b2715b889ec0003429c7c19769151";
        // No expected name: any name, response still checked.
        let mut c = mutual_after_challenge(mutual(None));
        c.on_target_response(&keys(&[("CHAP_N", "whatever"), ("CHAP_R", good_r)]))
            .unwrap();

        let mut c = mutual_after_challenge(mutual(Some("tgt")));
        assert_eq!(
            c.on_target_response(&keys(&[("CHAP_N", "impostor"), ("CHAP_R", good_r)])),
            Err(ChapError::WrongTargetName {
                expected: "tgt".into(),
                got: "impostor".into()
            })
        );
        let mut c = mutual_after_challenge(mutual(Some("tgt")));
        let e = c
            .on_target_response(&keys(&[
                ("CHAP_N", "tgt"),
                ("CHAP_R", "0xe68b2715b889ec0003429c7c19769150"),
            ]))
            .unwrap_err();
        assert_eq!(e, ChapError::TargetAuthFailed);
        assert!(!c.is_done());
        let mut c = mutual_after_challenge(mutual(Some("tgt")));
        assert_eq!(
            c.on_target_response(&TextKeys::new()),
            Err(ChapError::TargetDidNotAnswer { missing: "CHAP_N" })
        );
        let mut c = mutual_after_challenge(mutual(Some("tgt")));
        assert_eq!(
            c.on_target_response(&keys(&[("CHAP_N", "tgt")])),
            Err(ChapError::TargetDidNotAnswer { missing: "CHAP_R" })
        );
        let mut c = mutual_after_challenge(mutual(Some("tgt")));
        let e = c
            .on_target_response(&keys(&[("CHAP_N", "tgt"), ("CHAP_R", "0x1234")]))
            .unwrap_err();
        assert!(matches!(e, ChapError::Malformed(_)));
        assert!(!e.to_string().contains("1234"), "{e}");
        let mut c = mutual_after_challenge(mutual(Some("tgt")));
        assert!(matches!(
            c.on_target_response(&keys(&[("CHAP_N", "tgt"), ("CHAP_R", "junk")])),
            Err(ChapError::Malformed(_))
        ));
    }

    #[test]
    fn bad_challenges() {
        let run = |pairs: &[(&str, &str)]| {
            let mut chap = ChapInitiator::with_challenge(mutual(None), our_challenge()).unwrap();
            chap.start().unwrap();
            chap.on_challenge(&keys(pairs))
        };
        let c = "0x0123456789abcdef";
        assert_eq!(
            run(&[("CHAP_A", "7"), ("CHAP_I", "1"), ("CHAP_C", c)]),
            Err(ChapError::UnsupportedAlgorithm {
                offered: "7".into()
            })
        );
        assert_eq!(
            run(&[("CHAP_A", "Reject")]),
            Err(ChapError::UnsupportedAlgorithm {
                offered: "Reject".into()
            })
        );
        assert!(run(&[("CHAP_A", "7,5"), ("CHAP_I", "1"), ("CHAP_C", c)]).is_ok());
        assert!(run(&[("CHAP_I", "1"), ("CHAP_C", c)]).is_ok());
        assert_eq!(
            run(&[("CHAP_A", "5"), ("CHAP_C", c)]),
            Err(ChapError::MissingKey { key: "CHAP_I" })
        );
        assert_eq!(
            run(&[("CHAP_A", "5"), ("CHAP_I", "1")]),
            Err(ChapError::MissingKey { key: "CHAP_C" })
        );
        let e = run(&[("CHAP_A", "5"), ("CHAP_I", "256"), ("CHAP_C", c)]).unwrap_err();
        assert!(e.to_string().contains("CHAP_I=\"256\""), "{e}");
        let e = run(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0xzz")]).unwrap_err();
        assert!(e.to_string().contains("CHAP_C"), "{e}");
        // One byte is the minimum; 1024 the maximum.
        assert!(run(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x01")]).is_ok());
        assert!(matches!(
            run(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x")]),
            Err(ChapError::Malformed(_))
        ));
        let max = format!("0x{}", "ab".repeat(1024));
        assert!(run(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", &max)]).is_ok());
        let long = format!("0x{}", "ab".repeat(1025));
        assert_eq!(
            run(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", &long)]),
            Err(ChapError::ChallengeLength { len: 1025 })
        );
        let huge = format!("0x{}", "ab".repeat(4000));
        assert!(matches!(
            run(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", &huge)]),
            Err(ChapError::ChallengeLength { .. })
        ));
        // The target reflects our own challenge back at us.
        let ours = format!("0x{OUR_CHALLENGE}");
        assert_eq!(
            run(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", &ours)]),
            Err(ChapError::ReflectedChallenge)
        );
    }

    #[test]
    fn reflection_of_an_earlier_challenge() {
        let mut chap = ChapInitiator::new(one_way()).unwrap();
        chap.remember_sent_challenge(&hex("cafebabe"));
        chap.start().unwrap();
        assert_eq!(
            chap.on_challenge(&keys(&[
                ("CHAP_A", "5"),
                ("CHAP_I", "1"),
                ("CHAP_C", "0xcafebabe")
            ])),
            Err(ChapError::ReflectedChallenge)
        );
        let prev = hex("cafebabe");
        assert_eq!(
            answer_challenge(1, &prev, "u", &Secret::from("s"), &[&prev]),
            Err(ChapError::ReflectedChallenge)
        );
    }

    #[test]
    fn config_checks() {
        assert!(one_way().validate().is_ok());
        let mut same = mutual(None);
        if let Some(m) = same.mutual.as_mut() {
            m.secret = Secret::from("initiatorsecret1");
        }
        assert_eq!(same.validate(), Err(ChapError::SameSecretBothWays));
        assert!(ChapInitiator::new(same).is_err());
        let empty = AuthConfig {
            secret: Secret::from(""),
            ..one_way()
        };
        assert!(matches!(empty.validate(), Err(ChapError::Config(_))));
        let no_user = AuthConfig {
            user: String::new(),
            ..one_way()
        };
        assert!(matches!(no_user.validate(), Err(ChapError::Config(_))));
        // Short secrets are allowed (tgtd and LIO take them), with a warning.
        let short = AuthConfig {
            secret: Secret::from("short"),
            ..one_way()
        };
        assert!(short.validate().is_ok());
    }

    #[test]
    fn secrets_never_shown() {
        let cfg = mutual(Some("tgt"));
        let chap = ChapInitiator::new(cfg.clone()).unwrap();
        let shown = format!("{cfg:?} {chap:?}");
        assert!(!shown.contains("initiatorsecret1"), "{shown}");
        assert!(!shown.contains("swordfish"), "{shown}");
        let answer = answer_challenge(1, &[1, 2, 3], "u", &cfg.secret, &[]).unwrap();
        assert!(!format!("{answer:?}").contains(&encode_hex(&answer.response)[2..]));
        let all_errors = [
            ChapError::SameSecretBothWays,
            ChapError::TargetAuthFailed,
            ChapError::ReflectedChallenge,
        ];
        for e in all_errors {
            assert!(!e.to_string().contains("swordfish"));
        }
    }

    #[test]
    fn random_challenges_differ() {
        let a = MutualChallenge::generate().unwrap();
        let b = MutualChallenge::generate().unwrap();
        assert_ne!(a.challenge, b.challenge);
    }

    #[test]
    fn out_of_order_calls() {
        let mut chap = ChapInitiator::new(mutual(None)).unwrap();
        assert!(matches!(
            chap.on_challenge(&TextKeys::new()),
            Err(ChapError::OutOfOrder { .. })
        ));
        assert!(matches!(
            chap.on_target_response(&TextKeys::new()),
            Err(ChapError::OutOfOrder { .. })
        ));
        chap.start().unwrap();
        assert!(matches!(chap.start(), Err(ChapError::OutOfOrder { .. })));
    }

    #[test]
    fn auth_method() {
        assert_eq!(auth_method_offer(None), "None");
        let ow = one_way();
        let mu = mutual(None);
        assert_eq!(auth_method_offer(Some(&ow)), "CHAP,None");
        assert_eq!(auth_method_offer(Some(&mu)), "CHAP");
        assert_eq!(check_auth_method(Some(&ow), "CHAP"), Ok(AuthMethod::Chap));
        assert_eq!(check_auth_method(Some(&ow), "None"), Ok(AuthMethod::None));
        assert_eq!(check_auth_method(None, "None"), Ok(AuthMethod::None));
        assert!(check_auth_method(None, "CHAP").is_err());
        // Mutual CHAP: a target that skips authentication is refused.
        assert!(check_auth_method(Some(&mu), "None").is_err());
        assert!(check_auth_method(Some(&mu), "Reject").is_err());
        assert!(check_auth_method(Some(&mu), "SRP").is_err());
    }
}
