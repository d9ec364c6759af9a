//! What every QEMU guest test needs from the host side: the repository,
//! and the static binary the guests run (included with `#[path]` by the
//! guest tests, which use nothing else of `support`), and reading what
//! their scripts print. Not every test uses every function.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `$SANROOT_STATIC_BIN`, else the release build's; it must exist.
pub fn static_bin() -> PathBuf {
    let p = std::env::var_os("SANROOT_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/x86_64-unknown-linux-musl/release/sanroot"));
    assert!(
        p.exists(),
        "no static sanroot at {}: run `cargo build --release` (tests/run does) or set SANROOT_STATIC_BIN",
        p.display()
    );
    p
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `KEY=VALUE` lines a guest script printed on stdout.
pub fn results(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// CASE's result KEY (`CASE.KEY`), or why it is missing: the case hung
/// (its `CASE.hung=1`: the guest's watchdog stopped it) or never said.
pub fn case_result<'a>(
    results: &'a BTreeMap<String, String>,
    case: &str,
    key: &str,
) -> Result<&'a str, String> {
    let k = format!("{case}.{key}");
    match results.get(&k) {
        Some(v) => Ok(v),
        None if results.get(&format!("{case}.hung")).map(String::as_str) == Some("1") => Err(
            format!("the case hung (the guest's watchdog stopped it) before reporting {k}"),
        ),
        None => Err(format!("no result {k}")),
    }
}
