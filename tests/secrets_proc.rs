//! Secrets handed to sanroot in its environment or argv leave no trace in
//! /proc (issue 14): while `sanroot ls` waits on a login, its
//! /proc/PID/environ and cmdline hold zeros where the CHAP secrets were,
//! and it may dump no core.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const URL_SECRET: &str = "url-secret-0123";
const ENV_SECRET: &str = "env-secret-4567";
const TARGET_SECRET: &str = "target-secret-89ab";

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn secrets_are_wiped_from_environ_and_cmdline() {
    // A portal that accepts and never answers: the login waits there.
    let l = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = l.local_addr().expect("addr").port();
    let url = format!("iscsi://alice%{URL_SECRET}@127.0.0.1:{port}/iqn.2026-11.org.example:x/0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sanroot"))
        .args(["ls", &url])
        .env("SANROOT_CHAP_SECRET", ENV_SECRET)
        .env("SANROOT_TARGET_CHAP_SECRET", TARGET_SECRET)
        .env("SANROOT_OTHER", "kept")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sanroot ls");
    let pid = child.id();
    let (conn, _) = l.accept().expect("the login connects");
    let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).expect(what);
    let environ = read("environ");
    let cmdline = read("cmdline");
    let limits = String::from_utf8_lossy(&read("limits")).into_owned();
    drop(conn);
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    for s in [URL_SECRET, ENV_SECRET, TARGET_SECRET] {
        assert!(!contains(&environ, s), "{s} in /proc/PID/environ");
        assert!(!contains(&cmdline, s), "{s} in /proc/PID/cmdline");
        assert!(!err.contains(s), "{s} in stderr: {err}");
    }
    // The rest is untouched: the names, other variables, the URL.
    assert!(contains(&environ, "SANROOT_OTHER=kept"));
    assert!(contains(&environ, "SANROOT_CHAP_SECRET="));
    assert!(contains(&cmdline, "iscsi://alice%"));
    assert!(contains(&cmdline, &format!("@127.0.0.1:{port}/")));
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
}
