//! What every command that talks to a target needs: the initiator name,
//! CHAP credentials, digests and queue depth from the command line, the
//! environment or files; and the target from a URL or a saved node record.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::exit;
pub use crate::exit::{CmdError, report};
use crate::iscsi::chap::{AuthConfig, MutualConfig};
use crate::iscsi::initiator::InitiatorConfig;
pub use crate::iscsi::initiator::{INITIATORNAME_FILE, initiator_name};
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
    /// Credentials for discovery sessions (SendTargets), for the commands
    /// that run them (`discover`, `attach`). `None`: this command runs no
    /// discovery, and neither `--discovery-*` nor SANROOT_DISCOVERY_* is
    /// read.
    pub discovery: Option<DiscoveryArgs>,
}

/// CHAP for discovery sessions when it differs from the session's
/// (Kubernetes' chapAuthDiscovery next to chapAuthSession, open-iscsi's
/// `discovery.sendtargets.auth.*` next to `node.session.auth.*`).
#[derive(Debug, Clone, Default)]
pub struct DiscoveryArgs {
    pub chap_user: Option<String>,
    pub chap_secret_file: Option<PathBuf>,
    pub target_chap_user: Option<String>,
    pub target_chap_secret_file: Option<PathBuf>,
}

/// Read a secret from a file that only its owner may read (mode 0600 or
/// stricter): the first line, without its newline. A file that others can
/// read is refused, its content unread.
pub fn read_private_secret_file(path: &Path) -> Result<Secret, CmdError> {
    use std::io::Read;
    let err = |e: std::io::Error| {
        CmdError::new(exit::USAGE, format!("secret file {}: {e}", path.display()))
    };
    let mut f = fs::File::open(path).map_err(err)?;
    // The mode of the file opened, not of whatever the path names later.
    let mode = f.metadata().map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CmdError::usage(format!(
            "secret file {} is readable by other users (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    let mut bytes = Vec::new();
    let read = f.read_to_end(&mut bytes);
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let secret = Secret::new(first.to_vec());
    // The rest of the file may hold secrets too: wipe the copy.
    drop(Secret::new(bytes));
    read.map_err(err)?;
    if secret.is_empty() {
        return Err(CmdError::usage(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(secret)
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
    auth_configs(args, url).map(|(session, _)| session)
}

/// The session's CHAP credentials ([`auth_config`]) and, when `args`
/// asks for them, the discovery sessions' (`read_discovery_auth_config`):
/// both read before the environment is wiped (a wiped variable reads as
/// empty).
pub fn auth_configs(
    args: &ConnectArgs,
    url: Option<&IscsiUrl>,
) -> Result<(Option<AuthConfig>, Option<AuthConfig>), CmdError> {
    let r = read_auth_config(args, url).and_then(|session| {
        let discovery = match &args.discovery {
            Some(d) => read_discovery_auth_config(d)?,
            None => None,
        };
        Ok((session, discovery))
    });
    match secret::wipe_from_proc() {
        Ok(0) => {}
        Ok(n) => log::debug!("wiped {n} secret(s) from /proc/self/environ and cmdline"),
        Err(e) => log::warn!(
            "cannot wipe secrets from /proc/self/environ and cmdline ({e}): pass them in a file (--chap-secret-file) instead"
        ),
    }
    if matches!(&r, Ok((s, d)) if s.is_some() || d.is_some()) {
        secret::no_core_dumps();
    }
    r
}

/// How one set of CHAP credentials is named on the command line and in
/// the environment, for reading it and for the messages about it.
struct AuthNames {
    /// "CHAP" or "discovery CHAP".
    label: &'static str,
    user_env: &'static str,
    secret_file_opt: &'static str,
    secret_file_env: &'static str,
    /// Tried in order; the first one is the one messages name.
    secret_env: &'static [&'static str],
    target_user_env: &'static str,
    target_secret_file_opt: &'static str,
    target_secret_file_env: &'static str,
    target_secret_env: &'static str,
    /// Before a configuration error (empty name, same secret both ways).
    prefix: &'static str,
}

const SESSION_AUTH: AuthNames = AuthNames {
    label: "CHAP",
    user_env: "SANROOT_CHAP_USER",
    secret_file_opt: "--chap-secret-file",
    secret_file_env: "SANROOT_CHAP_SECRET_FILE",
    secret_env: &["SANROOT_CHAP_SECRET", "LIBISCSI_CHAP_PASSWORD"],
    target_user_env: "SANROOT_TARGET_CHAP_USER",
    target_secret_file_opt: "--target-chap-secret-file",
    target_secret_file_env: "SANROOT_TARGET_CHAP_SECRET_FILE",
    target_secret_env: "SANROOT_TARGET_CHAP_SECRET",
    prefix: "",
};

const DISCOVERY_AUTH: AuthNames = AuthNames {
    label: "discovery CHAP",
    user_env: "SANROOT_DISCOVERY_CHAP_USER",
    secret_file_opt: "--discovery-chap-secret-file",
    secret_file_env: "SANROOT_DISCOVERY_CHAP_SECRET_FILE",
    secret_env: &["SANROOT_DISCOVERY_CHAP_SECRET"],
    target_user_env: "SANROOT_DISCOVERY_TARGET_CHAP_USER",
    target_secret_file_opt: "--discovery-target-chap-secret-file",
    target_secret_file_env: "SANROOT_DISCOVERY_TARGET_CHAP_SECRET_FILE",
    target_secret_env: "SANROOT_DISCOVERY_TARGET_CHAP_SECRET",
    prefix: "discovery credentials: ",
};

fn read_auth_config(
    args: &ConnectArgs,
    url: Option<&IscsiUrl>,
) -> Result<Option<AuthConfig>, CmdError> {
    read_auth(
        &SESSION_AUTH,
        url.and_then(|u| u.user.clone()),
        url.and_then(|u| u.password.clone()),
        args.chap_user.as_deref(),
        args.chap_secret_file.as_deref(),
        args.target_chap_user.as_deref(),
        args.target_chap_secret_file.as_deref(),
    )
}

/// CHAP credentials for discovery sessions, from (first found wins) the
/// command line (`--discovery-chap-user`, `--discovery-chap-secret-file`)
/// and the environment (SANROOT_DISCOVERY_CHAP_USER /
/// SANROOT_DISCOVERY_CHAP_SECRET_FILE / SANROOT_DISCOVERY_CHAP_SECRET);
/// mutual CHAP likewise with `--discovery-target-chap-*` and
/// SANROOT_DISCOVERY_TARGET_CHAP_*. A secret file must be 0600. `None`
/// when none is given: discovery then uses the session's credentials.
/// The caller wipes the environment ([`auth_configs`] does).
fn read_discovery_auth_config(d: &DiscoveryArgs) -> Result<Option<AuthConfig>, CmdError> {
    read_auth(
        &DISCOVERY_AUTH,
        None,
        None,
        d.chap_user.as_deref(),
        d.chap_secret_file.as_deref(),
        d.target_chap_user.as_deref(),
        d.target_chap_secret_file.as_deref(),
    )
}

fn read_auth(
    n: &AuthNames,
    url_user: Option<String>,
    url_secret: Option<Secret>,
    user: Option<&str>,
    secret_file: Option<&Path>,
    target_user: Option<&str>,
    target_secret_file: Option<&Path>,
) -> Result<Option<AuthConfig>, CmdError> {
    // A secret file others can read is refused, its content unread.
    let read_file = read_private_secret_file;
    let user = url_user
        .or_else(|| user.map(str::to_string))
        .or_else(|| env(n.user_env));
    let secret = match url_secret {
        Some(s) => Some(s),
        None => match secret_file {
            Some(p) => Some(read_file(p)?),
            None => match env(n.secret_file_env) {
                Some(p) => Some(read_file(Path::new(&p))?),
                None => n.secret_env.iter().find_map(|name| env_secret(name)),
            },
        },
    };
    let t_user = target_user
        .map(str::to_string)
        .or_else(|| env(n.target_user_env));
    let t_secret = match target_secret_file {
        Some(p) => Some(read_file(p)?),
        None => match env(n.target_secret_file_env) {
            Some(p) => Some(read_file(Path::new(&p))?),
            None => env_secret(n.target_secret_env),
        },
    };
    let mutual = match (t_user, t_secret) {
        (name, Some(secret)) => Some(MutualConfig {
            target_name: name,
            secret,
        }),
        (Some(_), None) => {
            return Err(CmdError::usage(format!(
                "a target {} user was given without its secret ({} or {})",
                n.label, n.target_secret_file_opt, n.target_secret_env
            )));
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
            a.validate()
                .map_err(|e| CmdError::usage(format!("{}{e}", n.prefix)))?;
            Ok(Some(a))
        }
        (Some(u), None) => Err(CmdError::usage(format!(
            "{} user \"{u}\" given without a secret: use {}, {} or {}",
            n.label, n.secret_file_opt, n.secret_file_env, n.secret_env[0]
        ))),
        (None, Some(_)) => Err(CmdError::usage(format!(
            "a {} secret was given without a user name",
            n.label
        ))),
        (None, None) if mutual.is_some() => Err(CmdError::usage(format!(
            "mutual {} needs the initiator's {} user and secret too",
            n.label, n.label
        ))),
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

/// The initiator configuration for these arguments. Discovery sessions
/// use the discovery credentials when `args.discovery` gives any, else the
/// session's (see [`InitiatorConfig::discovery_auth`]).
pub fn initiator_config(
    args: &ConnectArgs,
    url: Option<&IscsiUrl>,
) -> Result<InitiatorConfig, CmdError> {
    let mut c = InitiatorConfig::new(initiator_name(args.initiator_name.as_deref()));
    (c.auth, c.discovery_auth) = auth_configs(args, url)?;
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
