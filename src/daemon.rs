//! What a process serving a root filesystem must do to survive memory
//! pressure, switch-root and shutdown (see boot-handoff.md):
//! - lock its memory (mlockall) so serving I/O never waits on paging to the
//!   very device it serves;
//! - oom_score_adj -1000 so the OOM killer never picks it;
//! - PR_SET_IO_FLUSHER on every I/O thread so the kernel's memory reclaim
//!   does not recurse into its I/O;
//! - chdir("/") and its own mount namespace, so it holds nothing of the
//!   filesystem it serves (and, for ublk, its exit cannot deadlock on it);
//! - argv\[0\] starting with '@' when started from an initramfs, so systemd
//!   skips it in the kill sweeps at switch-root and shutdown.
//!
//! Each step logs a warning when it fails and carries on: an unprivileged
//! `sanroot attach` in a test still works, a root daemon gets all of it.

use std::ffi::OsString;
use std::path::Path;

/// True when running from an initramfs (systemd's convention).
pub fn in_initramfs() -> bool {
    Path::new("/etc/initrd-release").exists()
}

/// If we were started from an initramfs and argv\[0\] does not start with
/// '@', exec ourselves again with "@sanroot" as argv\[0\]. Returns only when
/// no re-exec was needed (or it failed).
pub fn ensure_at_argv0() {
    if !in_initramfs() {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    if argv0.to_string_lossy().starts_with('@') {
        return;
    }
    let rest: Vec<OsString> = args.collect();
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("/proc/self/exe")
        .arg0("@sanroot")
        .args(rest)
        .exec();
    log::warn!(
        "cannot re-exec with '@' in argv[0] ({err}); systemd may kill this daemon at switch-root"
    );
}

/// Harden the whole process. Call once, before serving I/O.
pub fn harden(own_mount_namespace: bool) {
    use nix::sys::mman::{MlockAllFlags, mlockall};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        log::warn!("mlockall: {e}: under memory pressure this daemon may be paged out");
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log::warn!("oom_score_adj -1000: {e}");
    }
    // It holds the session's CHAP secrets for the machine's life.
    crate::secret::no_core_dumps();
    if own_mount_namespace {
        own_mount_namespace_root();
    }
    if let Err(e) = std::env::set_current_dir("/") {
        log::warn!("chdir /: {e}");
    }
}

/// A mount namespace of our own whose root is a small tmpfs holding only
/// /dev, /proc, /sys and /run (bound from outside): no filesystem that may
/// live on the device we serve is mounted in it — not the root filesystem
/// when a daemon is (re)started from the real root, nor a copy of a mount
/// made before. Otherwise our exit would unmount such a copy and wait for
/// I/O that only we can serve, and an `umount` outside would leave the
/// device claimed. Falls back to a plain private namespace, logging why.
fn own_mount_namespace_root() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, unshare};
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        log::warn!("own mount namespace: {e}");
        return;
    }
    // Keep mounts made later outside from propagating in, and ours out.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        log::warn!("making the private mount namespace private: {e}");
        return;
    }
    let new = Path::new("/run/sanroot/.ns");
    let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let build = || -> Result<(), String> {
        std::fs::create_dir_all(new).map_err(|e| format!("mkdir {}: {e}", new.display()))?;
        step(
            "tmpfs",
            mount(
                Some("sanroot-ns"),
                new,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("mode=0700,size=1m"),
            ),
        )?;
        for d in ["dev", "proc", "sys", "run", "old"] {
            std::fs::create_dir(new.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
        }
        let bind = MsFlags::MS_BIND;
        step(
            "bind /dev",
            mount(
                Some("/dev"),
                &new.join("dev"),
                None::<&str>,
                bind | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
        step(
            "bind /sys",
            mount(
                Some("/sys"),
                &new.join("sys"),
                None::<&str>,
                bind | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
        // /run itself only (state and hand-off files), not what is below.
        step(
            "bind /run",
            mount(
                Some("/run"),
                &new.join("run"),
                None::<&str>,
                bind,
                None::<&str>,
            ),
        )?;
        step(
            "proc",
            mount(
                Some("proc"),
                &new.join("proc"),
                Some("proc"),
                MsFlags::empty(),
                None::<&str>,
            ),
        )?;
        step("pivot_root", nix::unistd::pivot_root(new, &new.join("old")))?;
        std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
        step("detach the old root", umount2("/old", MntFlags::MNT_DETACH))?;
        let _ = std::fs::remove_dir("/old");
        Ok(())
    };
    if let Err(e) = build() {
        // pivot_root cannot leave the initramfs's rootfs: there, drop our
        // copies of every block-device filesystem instead.
        log::debug!("own mount root: {e}; detaching block-device mounts instead");
        detach_block_mounts();
    }
}

/// Lazily unmount, in this (private) namespace, every filesystem mounted
/// from a block device, deepest first; "/" stays.
fn detach_block_mounts() {
    use nix::mount::{MntFlags, umount2};
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (src, dir) = (f.next()?, f.next()?);
            // /proc/self/mounts escapes spaces as \040; such names are
            // left alone rather than guessed.
            (src.starts_with("/dev/") && dir != "/" && !dir.contains('\\')).then(|| dir.to_string())
        })
        .collect();
    points.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in points {
        if let Err(e) = umount2(d.as_str(), MntFlags::MNT_DETACH) {
            log::warn!("own mount namespace: detaching {d}: {e}");
        }
    }
}

/// Make `file` this process's stdin, stdout and stderr (/dev/null once a
/// daemon has left its starter; /dev/console for /init).
pub fn stdio_to(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 of an open descriptor onto the standard ones of
        // this process; no Rust object owns descriptors 0-2 exclusively.
        unsafe {
            nix::libc::dup2(file.as_raw_fd(), fd);
        }
    }
}

/// Call at the start of every thread that serves I/O.
pub fn io_thread() {
    const PR_SET_IO_FLUSHER: nix::libc::c_int = 57;
    // SAFETY: prctl with integer arguments only; no pointers involved.
    let (one, zero): (nix::libc::c_ulong, nix::libc::c_ulong) = (1, 0);
    let r = unsafe { nix::libc::prctl(PR_SET_IO_FLUSHER, one, zero, zero, zero) };
    if r != 0 {
        log::debug!(
            "PR_SET_IO_FLUSHER: {} (needs CAP_SYS_RESOURCE and Linux 5.6)",
            std::io::Error::last_os_error()
        );
    }
}
