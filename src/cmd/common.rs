//! What every command that talks to a target needs: the initiator name,
//! CHAP credentials, digests and queue depth from the command line, the
//! environment or files; and the target from a URL or a saved node record.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::exit;
use crate::iscsi::chap::{AuthConfig, MutualConfig};
use crate::iscsi::initiator::InitiatorConfig;
use crate::iscsi::login::Portal;
use crate::iscsi::negotiate::DigestOffer;
use crate::nodes;
use crate::secret::{self, Secret};
use crate::url::IscsiUrl;

/// Options shared by commands that log in.
#[derive(Debug, Clone, Default)]
pub struct ConnectArgs {
    pub initiator_name: Option<String>,
    pub chap_user: Option<String>,
    pub chap_secret_file: Option<PathBuf>,
    pub target_chap_user: Option<String>,
    pub target_chap_secret_file: Option<PathBuf>,
    /// "none", "crc32c" or "prefer" (offer CRC32C,None).
    pub header_digest: Option<String>,
    pub data_digest: Option<String>,
    pub allow_no_auth: bool,
}

/// A failure a command reports and exits with.
#[derive(Debug)]
pub struct CmdError {
    pub code: i32,
    pub message: String,
}

impl CmdError {
    pub fn new(code: i32, message: impl Into<String>) -> CmdError {
        CmdError {
            code,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> CmdError {
        CmdError::new(exit::USAGE, message)
    }
}

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Print the error and return its code.
pub fn report(r: Result<(), CmdError>) -> i32 {
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("sanroot: {}", e.message);
            e.code
        }
    }
}

pub const INITIATORNAME_FILE: &str = "/etc/iscsi/initiatorname.iscsi";

/// The initiator name: `--initiator-name`, else /etc/iscsi/initiatorname.iscsi,
/// else one generated from /etc/machine-id (stable per machine), else random.
pub fn initiator_name(flag: Option<&str>) -> String {
    if let Some(n) = flag {
        return n.to_string();
    }
    if let Ok(text) = fs::read_to_string(INITIATORNAME_FILE) {
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("InitiatorName=") {
                let v = v.trim();
                if !v.is_empty() {
                    return v.to_string();
                }
            }
        }
    }
    let suffix = fs::read_to_string("/etc/machine-id")
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

/// Read a secret from a file: the first line, without its newline. Warns
/// when others can read the file.
pub fn read_secret_file(path: &Path) -> Result<Secret, CmdError> {
    let meta = fs::metadata(path)
        .map_err(|e| CmdError::new(exit::USAGE, format!("secret file {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "secret file {} is readable by other users; chmod 600 it",
            path.display()
        );
    }
    let bytes = fs::read(path)
        .map_err(|e| CmdError::new(exit::USAGE, format!("secret file {}: {e}", path.display())))?;
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    if first.is_empty() {
        return Err(CmdError::usage(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(first.to_vec()))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A secret from the environment, its bytes moved into the [`Secret`]
/// (no copy left behind to be freed unwiped).
fn env_secret(name: &str) -> Option<Secret> {
    use std::os::unix::ffi::OsStringExt;
    std::env::var_os(name)
        .map(|v| Secret::new(v.into_vec()))
        .filter(|s| !s.is_empty())
}

/// CHAP credentials, from (first found wins): the URL, the command line
/// (`--chap-user`, `--chap-secret-file`), the environment
/// (SANROOT_CHAP_USER / SANROOT_CHAP_SECRET / SANROOT_CHAP_SECRET_FILE,
/// and libiscsi's LIBISCSI_CHAP_PASSWORD). Mutual CHAP likewise with
/// `--target-chap-*` and SANROOT_TARGET_CHAP_*.
///
/// Once read, every secret this process was handed in its environment or
/// argv is wiped where /proc shows them ([`secret::wipe_from_proc`]), and
/// a process that holds one leaves no core dump.
pub fn auth_config(
    args: &ConnectArgs,
    url: Option<&IscsiUrl>,
) -> Result<Option<AuthConfig>, CmdError> {
    let r = read_auth_config(args, url);
    match secret::wipe_from_proc() {
        Ok(0) => {}
        Ok(n) => log::debug!("wiped {n} secret(s) from /proc/self/environ and cmdline"),
        Err(e) => log::warn!(
            "cannot wipe secrets from /proc/self/environ and cmdline ({e}): pass them in a file (--chap-secret-file) instead"
        ),
    }
    if matches!(r, Ok(Some(_))) {
        secret::no_core_dumps();
    }
    r
}

fn read_auth_config(
    args: &ConnectArgs,
    url: Option<&IscsiUrl>,
) -> Result<Option<AuthConfig>, CmdError> {
    let user = url
        .and_then(|u| u.user.clone())
        .or_else(|| args.chap_user.clone())
        .or_else(|| env("SANROOT_CHAP_USER"));
    let secret = match url.and_then(|u| u.password.clone()) {
        Some(s) => Some(s),
        None => match &args.chap_secret_file {
            Some(p) => Some(read_secret_file(p)?),
            None => match env("SANROOT_CHAP_SECRET_FILE") {
                Some(p) => Some(read_secret_file(Path::new(&p))?),
                None => env_secret("SANROOT_CHAP_SECRET")
                    .or_else(|| env_secret("LIBISCSI_CHAP_PASSWORD")),
            },
        },
    };
    let t_user = args
        .target_chap_user
        .clone()
        .or_else(|| env("SANROOT_TARGET_CHAP_USER"));
    let t_secret = match &args.target_chap_secret_file {
        Some(p) => Some(read_secret_file(p)?),
        None => match env("SANROOT_TARGET_CHAP_SECRET_FILE") {
            Some(p) => Some(read_secret_file(Path::new(&p))?),
            None => env_secret("SANROOT_TARGET_CHAP_SECRET"),
        },
    };
    let mutual = match (t_user, t_secret) {
        (name, Some(secret)) => Some(MutualConfig {
            target_name: name,
            secret,
        }),
        (Some(_), None) => {
            return Err(CmdError::usage(
                "a target CHAP user was given without its secret (--target-chap-secret-file or SANROOT_TARGET_CHAP_SECRET)",
            ));
        }
        (None, None) => None,
    };
    match (user, secret) {
        (Some(user), Some(secret)) => {
            let a = AuthConfig {
                user,
                secret,
                mutual,
            };
            a.validate().map_err(|e| CmdError::usage(e.to_string()))?;
            Ok(Some(a))
        }
        (Some(u), None) => Err(CmdError::usage(format!(
            "CHAP user \"{u}\" given without a secret: use --chap-secret-file, SANROOT_CHAP_SECRET_FILE or SANROOT_CHAP_SECRET"
        ))),
        (None, Some(_)) => Err(CmdError::usage(
            "a CHAP secret was given without a user name",
        )),
        (None, None) if mutual.is_some() => Err(CmdError::usage(
            "mutual CHAP needs the initiator's CHAP user and secret too",
        )),
        (None, None) => Ok(None),
    }
}

fn digest(v: Option<&str>, which: &str) -> Result<DigestOffer, CmdError> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("none") => Ok(DigestOffer::None),
        Some("crc32c") => Ok(DigestOffer::RequireCrc32c),
        Some("prefer") | Some("crc32c,none") => Ok(DigestOffer::PreferCrc32c),
        Some(other) => Err(CmdError::usage(format!(
            "--{which} {other}: expected none, crc32c or prefer"
        ))),
    }
}

/// The initiator configuration for these arguments.
pub fn initiator_config(
    args: &ConnectArgs,
    url: Option<&IscsiUrl>,
) -> Result<InitiatorConfig, CmdError> {
    let mut c = InitiatorConfig::new(initiator_name(args.initiator_name.as_deref()));
    c.auth = auth_config(args, url)?;
    c.allow_no_auth = args.allow_no_auth;
    c.header_digest = digest(args.header_digest.as_deref(), "header-digest")?;
    c.data_digest = digest(args.data_digest.as_deref(), "data-digest")?;
    Ok(c)
}

/// A target named by a URL, or by an IQN saved by `sanroot discover`.
pub fn resolve_target(spec: &str) -> Result<(IscsiUrl, Portal), CmdError> {
    if spec.starts_with("iscsi://") {
        let u = IscsiUrl::parse(spec).map_err(|e| CmdError::usage(e.to_string()))?;
        let p = Portal::new(u.host.clone(), u.port);
        return Ok((u, p));
    }
    // "IQN" or "IQN/LUN" from the node records.
    let (iqn, lun) = match spec.rsplit_once('/') {
        Some((i, l)) => (
            i,
            Some(
                l.parse::<u64>()
                    .map_err(|_| CmdError::usage(format!("LUN \"{l}\" is not a number")))?,
            ),
        ),
        None => (spec, None),
    };
    let recs = nodes::load_all(&nodes::state_dir()).map_err(|e| CmdError::new(exit::FAILURE, e))?;
    let rec = recs.iter().find(|r| r.target == iqn).ok_or_else(|| {
        CmdError::usage(format!(
            "\"{spec}\" is neither an iscsi:// URL nor a target found by `sanroot discover` (see `sanroot node list`)"
        ))
    })?;
    let url = IscsiUrl {
        user: None,
        password: None,
        host: rec.host.clone(),
        port: rec.port,
        target: rec.target.clone(),
        lun,
    };
    let p = Portal::new(rec.host.clone(), rec.port);
    Ok((url, p))
}

/// Login failures are exit code LOGIN; say what was tried.
pub fn login_error(e: crate::iscsi::login::LoginError) -> CmdError {
    CmdError::new(exit::LOGIN, e.to_string())
}
