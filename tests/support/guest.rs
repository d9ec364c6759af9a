//! What every QEMU guest test needs from the host side: the repository,
//! and the static binary the guests run (included with `#[path]` by the
//! guest tests, which use nothing else of `support`).

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
