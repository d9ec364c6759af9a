//! What a process serving a root filesystem must do to survive memory
//! pressure, switch-root and shutdown (see boot-handoff.md):
//! - lock its memory (mlockall) so serving I/O never waits on paging to the
//!   very device it serves;
//! - oom_score_adj -1000 so the OOM killer never picks it;
//! - PR_SET_IO_FLUSHER on every I/O thread so the kernel's memory reclaim
//!   does not recurse into its I/O;
//! - chdir("/") and its own mount namespace, so it holds nothing of the
//!   filesystem it serves (and, for ublk, its exit cannot deadlock on it);
//! - argv[0] starting with '@' when started from an initramfs, so systemd
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

/// If we were started from an initramfs and argv[0] does not start with
/// '@', exec ourselves again with "@sanroot" as argv[0]. Returns only when
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
    if own_mount_namespace {
        use nix::mount::{MsFlags, mount};
        use nix::sched::{CloneFlags, unshare};
        match unshare(CloneFlags::CLONE_NEWNS) {
            Ok(()) => {
                // Keep mounts made later outside from propagating in.
                if let Err(e) = mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                ) {
                    log::warn!("making the private mount namespace private: {e}");
                }
            }
            Err(e) => log::warn!("own mount namespace: {e}"),
        }
    }
    if let Err(e) = std::env::set_current_dir("/") {
        log::warn!("chdir /: {e}");
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
