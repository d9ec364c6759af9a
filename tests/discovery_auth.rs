//! Discovery credentials apart from session credentials (issue 15):
//! `--discovery-chap-user` / `--discovery-chap-secret-file` and
//! SANROOT_DISCOVERY_CHAP_* for `sanroot discover` and for the daemon's
//! SendTargets, against a fake target whose discovery sessions demand other
//! CHAP credentials than its normal sessions
//! ([`Behaviour::discovery_chap`]).
//!
//! The CLI cases run the built binary in a scratch directory (its own
//! SANROOT_STATE_DIR, HOME, a clean environment), secrets through the
//! environment or 0600 files, never argv, and check that no secret shows
//! in what it printed, even at -vvv. The daemon's case calls
//! `bridge::recover::ask_other_portals` in this process.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sanroot::bridge::recover::{self, PathSpec};
use sanroot::cmd::common::{self, ConnectArgs, DiscoveryArgs};
use sanroot::iscsi::chap::AuthConfig;
use sanroot::iscsi::initiator::InitiatorConfig;
use sanroot::secret::Secret;
use support::cli::{self, LIMIT, Run, Sandbox};
use support::fake_target::{Behaviour, ChapTarget, FakeTarget, TARGET_IQN};

const INITIATOR: &str = "iqn.2026-11.org.sanroot.test:discovery";
/// What normal sessions demand.
const S_USER: &str = "session-user";
const S_SECRET: &str = "session-secret-12";
/// What discovery sessions demand.
const D_USER: &str = "discovery-user";
const D_SECRET: &str = "discovery-secret-34";
/// Mutual CHAP in discovery: the target's name and secret.
const DT_USER: &str = "iqn.2026-11.org.sanroot.test:fake-discovery";
const DT_SECRET: &str = "discovery-target-56";
const WRONG_SECRET: &str = "wrong-discovery-78";
const SECRETS: [&str; 4] = [S_SECRET, D_SECRET, DT_SECRET, WRONG_SECRET];

/// A target whose normal sessions want S and discovery sessions want
/// `discovery`, listing itself and one more portal of its target.
fn target(discovery: ChapTarget) -> FakeTarget {
    // The fake's port is known only once it listens: it lists a fixed
    // other portal only.
    FakeTarget::start(
        Behaviour::default()
            .chap(ChapTarget::new(S_USER, S_SECRET))
            .discovery_chap(discovery)
            .answer_send_targets(&[
                &format!("TargetName={TARGET_IQN}"),
                "TargetAddress=127.0.0.9:3261,1",
            ]),
    )
}

// ---------------------------------------------------------------- child

/// `sanroot ARGS` in `sb` (see `support::cli::run`). No panic, and no
/// secret may show in its output, whatever the outcome.
fn run(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Run {
    let r = cli::run(sb, args, env);
    assert!(!r.stderr.contains("panicked"), "a panic: {r}");
    for s in SECRETS {
        assert!(
            !r.stdout.contains(s) && !r.stderr.contains(s),
            "the secret {s:?} was shown: {r}"
        );
    }
    r
}

/// `sanroot -vvv discover 127.0.0.1:PORT --no-save … EXTRA` (trace
/// logging: a secret must not reach even that).
fn discover(sb: &Sandbox, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let p = format!("127.0.0.1:{port}");
    let args = [
        &["-vvv", "discover", &p, "--initiator-name", INITIATOR][..],
        extra,
    ]
    .concat();
    run(sb, &args, env)
}

fn session_env() -> [(&'static str, &'static str); 2] {
    [
        ("SANROOT_CHAP_USER", S_USER),
        ("SANROOT_CHAP_SECRET", S_SECRET),
    ]
}

/// The CHAP names the discovery sessions logged in with.
fn discovery_chap_names(f: &FakeTarget) -> Vec<String> {
    let log = f.log();
    let mut out = Vec::new();
    let mut discovery = false;
    for k in &log.login_keys {
        if let Some(t) = k.get("SessionType") {
            discovery = t == "Discovery";
        }
        if discovery && let Some(n) = k.get("CHAP_N") {
            out.push(n.to_string());
        }
    }
    out
}

/// Success, and the portal the fake lists printed as iscsiadm does.
fn listed(r: &Run) {
    assert_eq!(r.code, Some(0), "expected success: {r}");
    assert!(
        r.stdout.contains(&format!("127.0.0.9:3261,1 {TARGET_IQN}")),
        "the other portal: {r}"
    );
}

fn failed_authentication(r: &Run) {
    assert_eq!(r.code, Some(5), "expected exit 5 (login): {r}");
    assert!(r.stderr.contains("authentication failed"), "{r}");
}

// ---------------------------------------------------------------- discover

/// (1) The discovery credentials from --discovery-chap-user and
/// SANROOT_DISCOVERY_CHAP_SECRET, the session's (different) ones in the
/// environment too: discovery logs in with D.
#[test]
fn discover_with_discovery_credentials_from_the_environment() {
    let sb = Sandbox::new("discovery-auth", "env");
    let f = target(ChapTarget::new(D_USER, D_SECRET));
    let mut env = session_env().to_vec();
    env.push(("SANROOT_DISCOVERY_CHAP_SECRET", D_SECRET));
    let r = discover(&sb, f.port, &["--discovery-chap-user", D_USER], &env);
    listed(&r);
    assert_eq!(discovery_chap_names(&f), [D_USER]);
    // Saved as node records, as without CHAP.
    assert!(
        fs::read_dir(sb.dir("state"))
            .expect("state")
            .next()
            .is_some(),
        "no node record saved: {r}"
    );
}

/// (1) The same with a 0600 secret file and the user from the environment.
#[test]
fn discover_with_a_discovery_secret_file() {
    let sb = Sandbox::new("discovery-auth", "file");
    let f = target(ChapTarget::new(D_USER, D_SECRET));
    let file = sb.secret_file("discovery", D_SECRET, 0o600);
    let mut env = session_env().to_vec();
    env.push(("SANROOT_DISCOVERY_CHAP_USER", D_USER));
    let file_s = file.to_string_lossy().into_owned();
    let r = discover(
        &sb,
        f.port,
        &["--no-save", "--discovery-chap-secret-file", &file_s],
        &env,
    );
    listed(&r);
    assert_eq!(discovery_chap_names(&f), [D_USER]);
    // And SANROOT_DISCOVERY_CHAP_SECRET_FILE.
    env.push(("SANROOT_DISCOVERY_CHAP_SECRET_FILE", &file_s));
    let r = discover(&sb, f.port, &["--no-save"], &env);
    listed(&r);
}

/// Mutual CHAP in discovery: the target must prove itself with DT.
#[test]
fn discover_with_mutual_discovery_chap() {
    let sb = Sandbox::new("discovery-auth", "mutual");
    let f = target(ChapTarget::new(D_USER, D_SECRET).mutual(DT_USER, DT_SECRET));
    let mut env = session_env().to_vec();
    env.extend([
        ("SANROOT_DISCOVERY_CHAP_USER", D_USER),
        ("SANROOT_DISCOVERY_CHAP_SECRET", D_SECRET),
        ("SANROOT_DISCOVERY_TARGET_CHAP_USER", DT_USER),
        ("SANROOT_DISCOVERY_TARGET_CHAP_SECRET", DT_SECRET),
    ]);
    let r = discover(&sb, f.port, &["--no-save"], &env);
    listed(&r);
    // The target answering with the wrong name is refused.
    let wrong = [
        &env[..4],
        &[
            (
                "SANROOT_DISCOVERY_TARGET_CHAP_USER",
                "iqn.2026-11.org.example:impostor",
            ),
            ("SANROOT_DISCOVERY_TARGET_CHAP_SECRET", DT_SECRET),
        ],
    ]
    .concat();
    let r = discover(&sb, f.port, &["--no-save"], &wrong);
    assert_eq!(r.code, Some(5), "{r}");
}

/// Without discovery credentials, discovery uses the session's, as it
/// always has: it works where discovery wants them, and fails where it
/// wants others.
#[test]
fn without_discovery_credentials_the_session_ones_are_used() {
    let sb = Sandbox::new("discovery-auth", "fallback");
    let same = target(ChapTarget::new(S_USER, S_SECRET));
    let r = discover(&sb, same.port, &["--no-save"], &session_env());
    listed(&r);
    assert_eq!(discovery_chap_names(&same), [S_USER]);
    let other = target(ChapTarget::new(D_USER, D_SECRET));
    let r = discover(&sb, other.port, &["--no-save"], &session_env());
    failed_authentication(&r);
    assert_eq!(discovery_chap_names(&other), [S_USER]);
}

/// (2) Only wrong discovery credentials: an authentication failure, exit 5.
#[test]
fn wrong_discovery_credentials_fail_authentication() {
    let sb = Sandbox::new("discovery-auth", "wrong");
    let f = target(ChapTarget::new(D_USER, D_SECRET));
    let r = discover(
        &sb,
        f.port,
        &["--discovery-chap-user", D_USER],
        &[("SANROOT_DISCOVERY_CHAP_SECRET", WRONG_SECRET)],
    );
    failed_authentication(&r);
    assert!(
        f.log().chap.iter().any(|l| l.contains("refused")),
        "{:?}",
        f.log().chap
    );
    // Nothing saved.
    assert!(
        fs::read_dir(sb.dir("state"))
            .expect("state")
            .next()
            .is_none()
    );
}

/// (3) A discovery secret file others can read is refused before any
/// connection, by option or by environment, and its content not shown.
#[test]
fn a_discovery_secret_file_readable_by_others_is_refused() {
    let sb = Sandbox::new("discovery-auth", "mode");
    let f = target(ChapTarget::new(D_USER, D_SECRET));
    for mode in [0o644, 0o640, 0o604] {
        let file = sb.secret_file("discovery", D_SECRET, mode);
        let file_s = file.to_string_lossy().into_owned();
        let r = discover(
            &sb,
            f.port,
            &[
                "--discovery-chap-user",
                D_USER,
                "--discovery-chap-secret-file",
                &file_s,
            ],
            &[],
        );
        assert_eq!(r.code, Some(2), "expected a usage error: {r}");
        assert!(r.stderr.contains("readable by other users"), "{r}");
        assert!(r.stderr.contains("chmod 600"), "{r}");
        let r = discover(
            &sb,
            f.port,
            &[],
            &[
                ("SANROOT_DISCOVERY_CHAP_USER", D_USER),
                ("SANROOT_DISCOVERY_CHAP_SECRET_FILE", &file_s),
            ],
        );
        assert_eq!(r.code, Some(2), "expected a usage error: {r}");
        assert!(r.stderr.contains("readable by other users"), "{r}");
    }
    assert_eq!(f.log().connections, 0, "connected although refused");
}

/// Half a configuration is a usage error naming what is missing.
#[test]
fn half_a_discovery_configuration_is_a_usage_error() {
    let sb = Sandbox::new("discovery-auth", "half");
    let f = target(ChapTarget::new(D_USER, D_SECRET));
    let r = discover(&sb, f.port, &["--discovery-chap-user", D_USER], &[]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.stderr
            .contains("discovery CHAP user \"discovery-user\" given without a secret"),
        "{r}"
    );
    let r = discover(
        &sb,
        f.port,
        &[],
        &[("SANROOT_DISCOVERY_CHAP_SECRET", D_SECRET)],
    );
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.stderr
            .contains("a discovery CHAP secret was given without a user name"),
        "{r}"
    );
    // The same secret both ways (RFC 7143).
    let r = discover(
        &sb,
        f.port,
        &[],
        &[
            ("SANROOT_DISCOVERY_CHAP_USER", D_USER),
            ("SANROOT_DISCOVERY_CHAP_SECRET", D_SECRET),
            ("SANROOT_DISCOVERY_TARGET_CHAP_SECRET", D_SECRET),
        ],
    );
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("discovery credentials:"), "{r}");
    assert_eq!(f.log().connections, 0);
}

/// (4) is checked by [`run`] in every case above (at -vvv); here, the
/// secret is not on the command line of a discover that works.
#[test]
fn discovery_secret_is_never_on_argv() {
    let out = Command::new(env!("CARGO_BIN_EXE_sanroot"))
        .args(["discover", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--discovery-chap-user"), "{help}");
    assert!(help.contains("--discovery-chap-secret-file"), "{help}");
    assert!(!help.contains("--discovery-chap-secret "), "{help}");
    let out = Command::new(env!("CARGO_BIN_EXE_sanroot"))
        .args(["discover", "127.0.0.1:1", "--discovery-chap-secret", "x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "an unknown option");
}

// ---------------------------------------------------------------- daemon

fn auth(user: &str, secret: &str) -> AuthConfig {
    AuthConfig {
        user: user.into(),
        secret: Secret::from(secret),
        mutual: None,
    }
}

fn via(f: &FakeTarget) -> PathSpec {
    PathSpec {
        portal: f.portal(),
        target: TARGET_IQN.into(),
        auth: Some(auth(S_USER, S_SECRET)),
    }
}

/// (5) The daemon's SendTargets with discovery credentials that fail:
/// no extra portals and a one-line note naming the portal and why, not an
/// error.
#[test]
fn daemon_discovery_refused_adds_nothing_and_leaves_a_note() {
    let f = target(ChapTarget::new(D_USER, D_SECRET));
    let path = via(&f);
    let mut base = InitiatorConfig::new(INITIATOR);
    base.discovery_auth = Some(auth(D_USER, WRONG_SECRET));
    let o = recover::ask_other_portals(&path, std::slice::from_ref(&path), &base);
    assert!(o.paths.is_empty(), "{:?}", o.paths);
    assert!(o.refused);
    let note = o.note.expect("a note");
    assert!(!note.contains('\n'), "one line: {note}");
    assert!(note.contains(&f.portal().to_string()), "{note}");
    assert!(note.contains("authentication failed"), "{note}");
    assert!(note.contains("check the discovery credentials"), "{note}");
    assert_eq!(discovery_chap_names(&f), [D_USER]);
    // The logging wrapper the daemon calls: nothing either, no panic.
    assert!(recover::discover_other_portals(&path, std::slice::from_ref(&path), &base).is_empty());

    // No discovery credentials: the path's (session) CHAP is tried, and
    // the note says discovery may need others.
    let base = InitiatorConfig::new(INITIATOR);
    let o = recover::ask_other_portals(&path, std::slice::from_ref(&path), &base);
    assert!(o.paths.is_empty() && o.refused);
    let note = o.note.expect("a note");
    assert!(note.contains("--discovery-chap-user"), "{note}");
    // (D twice: ask_other_portals, then discover_other_portals.)
    assert_eq!(discovery_chap_names(&f), [D_USER, D_USER, S_USER]);

    // A login refusal other than CHAP (not authorized, 0x0202) likewise.
    let refusing = FakeTarget::start(Behaviour::default().on_login(|t| t.refuse(2, 2)));
    let p = PathSpec {
        portal: refusing.portal(),
        target: TARGET_IQN.into(),
        auth: None,
    };
    let o = recover::ask_other_portals(&p, std::slice::from_ref(&p), &base);
    assert!(o.paths.is_empty() && o.refused, "{o:?}");
    assert!(o.note.expect("a note").contains("not authorized"));

    // A portal nobody listens on: a note, not a refusal.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let p = PathSpec {
        portal: sanroot::iscsi::login::Portal::new("127.0.0.1", port),
        target: TARGET_IQN.into(),
        auth: None,
    };
    let o = recover::ask_other_portals(&p, std::slice::from_ref(&p), &base);
    assert!(
        o.paths.is_empty() && !o.refused && o.note.is_some(),
        "{o:?}"
    );
}

/// The daemon's SendTargets with the right discovery credentials (read as
/// `attach` reads them: `common::initiator_config`), the session's in the
/// path: the other portal is learnt, with the path's session CHAP.
#[test]
fn daemon_discovery_uses_the_discovery_credentials() {
    let sb = Sandbox::new("discovery-auth", "daemon");
    let f = target(ChapTarget::new(D_USER, D_SECRET));
    let args = ConnectArgs {
        initiator_name: Some(INITIATOR.into()),
        chap_user: Some(S_USER.into()),
        chap_secret_file: Some(sb.secret_file("session", S_SECRET, 0o600)),
        discovery: Some(DiscoveryArgs {
            chap_user: Some(D_USER.into()),
            chap_secret_file: Some(sb.secret_file("discovery", D_SECRET, 0o600)),
            ..DiscoveryArgs::default()
        }),
        ..ConnectArgs::default()
    };
    let cfg = common::initiator_config(&args, None).expect("config");
    assert_eq!(cfg.auth.as_ref().map(|a| a.user.as_str()), Some(S_USER));
    assert_eq!(
        cfg.discovery_auth.as_ref().map(|a| a.user.as_str()),
        Some(D_USER)
    );
    let path = PathSpec {
        portal: f.portal(),
        target: TARGET_IQN.into(),
        auth: cfg.auth.clone(),
    };
    let o = recover::ask_other_portals(&path, std::slice::from_ref(&path), &cfg);
    assert!(o.note.is_none(), "{o:?}");
    let got: Vec<String> = o.paths.iter().map(|p| p.portal.to_string()).collect();
    assert_eq!(got, ["127.0.0.9:3261"]);
    assert_eq!(
        o.paths[0].auth.as_ref().map(|a| a.user.as_str()),
        Some(S_USER),
        "a discovered path logs in with the session's CHAP"
    );
    assert_eq!(discovery_chap_names(&f), [D_USER]);
    // Normal sessions still want S: a login through the path works.
    let c = sanroot::iscsi::initiator::connect(&path.portal, TARGET_IQN, &path.config(&cfg), None)
        .expect("session login with S");
    drop(c);
}

/// A 0600 file is accepted by `common::read_private_secret_file`, its
/// first line only; 0644 is refused without reading it.
#[test]
fn private_secret_file_is_read_once_private() {
    let sb = Sandbox::new("discovery-auth", "private");
    let p = sb.secret_file("s", "first-line-secret", 0o600);
    fs::write(&p, "first-line-secret\r\nsecond\n").expect("write");
    let s = common::read_private_secret_file(&p).expect("0600");
    assert_eq!(s.expose(), b"first-line-secret");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = common::read_private_secret_file(&p).expect_err("0644");
    assert!(
        e.message.contains("readable by other users (mode 644)"),
        "{e}"
    );
    assert!(!e.message.contains("first-line"), "{e}");
    let missing = Path::new("/nonexistent/sanroot-secret");
    assert!(common::read_private_secret_file(missing).is_err());
}

/// While `discover` waits on its discovery login, /proc/PID/environ
/// holds zeros where SANROOT_DISCOVERY_CHAP_SECRET and
/// SANROOT_DISCOVERY_TARGET_CHAP_SECRET were (and the session's), as for
/// the session secrets (`secrets_proc.rs`).
#[test]
fn discovery_secrets_are_wiped_from_environ() {
    use std::io::Read;
    // A portal that accepts and never answers: the login waits there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = l.local_addr().expect("addr").port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sanroot"))
        .args(["discover", &format!("127.0.0.1:{port}"), "--no-save"])
        .env("SANROOT_CHAP_USER", S_USER)
        .env("SANROOT_CHAP_SECRET", S_SECRET)
        .env("SANROOT_DISCOVERY_CHAP_USER", D_USER)
        .env("SANROOT_DISCOVERY_CHAP_SECRET", D_SECRET)
        .env("SANROOT_DISCOVERY_TARGET_CHAP_SECRET", DT_SECRET)
        .env("SANROOT_OTHER", "kept")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sanroot discover");
    let pid = child.id();
    let (conn, _) = l.accept().expect("the login connects");
    let environ = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    drop(conn);
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() && t0.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let has = |s: &str| environ.windows(s.len()).any(|w| w == s.as_bytes());
    for s in [S_SECRET, D_SECRET, DT_SECRET] {
        assert!(!has(s), "{s} in /proc/PID/environ");
        assert!(!err.contains(s), "{s} in stderr: {err}");
    }
    assert!(has("SANROOT_OTHER=kept"));
    assert!(has("SANROOT_DISCOVERY_CHAP_SECRET="));
    assert!(has(&format!("SANROOT_DISCOVERY_CHAP_USER={D_USER}")));
}

/// The session's secret files are held to the same rule as discovery's:
/// a file others can read is refused (exit 2) before any connection, its
/// content never read, whether named by option or by environment.
#[test]
fn a_session_secret_file_others_can_read_is_refused() {
    let sb = Sandbox::new("discovery-auth", "session-file");
    let file = sb.secret_file("session", S_SECRET, 0o644);
    let file_s = file.to_string_lossy().into_owned();
    // Port 9 on loopback: nothing is ever asked of it.
    let url = "iscsi://127.0.0.1:9/iqn.2026-12.org.sanroot.test:t/0";
    for (args, env) in [
        (
            vec![
                "ls",
                url,
                "--chap-user",
                S_USER,
                "--chap-secret-file",
                &file_s,
            ],
            vec![],
        ),
        (
            vec!["ls", url, "--chap-user", S_USER],
            vec![("SANROOT_CHAP_SECRET_FILE", file_s.as_str())],
        ),
    ] {
        let r = run(&sb, &args, &env);
        assert_eq!(r.code, Some(2), "{r}");
        assert!(
            r.stderr.contains("readable by other users (mode 644)"),
            "{r}"
        );
        assert!(
            !r.stderr.contains(S_SECRET) && !r.stdout.contains(S_SECRET),
            "{r}"
        );
    }
}
