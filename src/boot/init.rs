//! sanroot as the whole initramfs (initramfs/sanroot-mkinitramfs): the
//! binary is `/init`, PID 1, with no shell, udev or systemd beside it.
//!
//! At boot ([`run_init`]): mount /dev, /proc, /sys and /run; load the
//! image's module list ([`super::modules`]); run `sanroot boot` (as
//! '@sanroot', so the daemon it leaves is spared by systemd's kill sweeps)
//! with dracut's retry rules; find `root=` by its superblock or partition
//! table ([`super::rootdev`]); mount it (read-only unless `rw`, so the real
//! root's systemd-fsck-root checks it first); leave a copy of this binary
//! at /run/initramfs/shutdown; move the API filesystems into the root,
//! delete the initramfs's files and exec the real init.
//!
//! At power-off ([`run_shutdown`]): systemd-shutdown finds
//! /run/initramfs/shutdown, pivots into /run/initramfs with the old root at
//! /oldroot and runs it as PID 1 with the verb ("poweroff", "reboot",
//! "halt", "kexec"). We unmount /oldroot, have the daemon flush, log out
//! and remove the device (`sanroot detach`), and power off.
//!
//! Both are entered from `main` when the process is PID 1 and argv\[0\] is
//! `…/init` or `…/shutdown` ([`role`]).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::cmdline;
use super::handoff;
use super::modules;
use super::rootdev::{self, RootSpec};
use crate::exit;

/// Where the root filesystem is mounted before the switch.
const NEW_ROOT: &str = "/root";
/// systemd-shutdown runs `SHUTDOWN_DIR/shutdown` when it exists.
const SHUTDOWN_DIR: &str = "/run/initramfs";
/// How long the root device may take to show up once the LUN is attached
/// (or, without iSCSI, once the modules are loaded).
const ROOT_WAIT: Duration = Duration::from_secs(30);
/// dracut's initqueue job waits as long between tries (sanroot-boot.sh).
const RETRY_PAUSE: Duration = Duration::from_secs(3);
const DEFAULT_RETRIES: u32 = 5;
const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 90;
/// The kernel's own list when init= is not given or fails.
const INITS: [&str; 4] = ["/sbin/init", "/etc/init", "/bin/init", "/bin/sh"];
/// The API filesystems moved into the real root.
const API_DIRS: [&str; 4] = ["dev", "proc", "sys", "run"];

/// What this process is, when it is not the command-line tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The initramfs's /init.
    Init,
    /// /run/initramfs/shutdown, run by systemd-shutdown at power-off.
    Shutdown,
}

/// [`Role`] from the pid and argv\[0\]; `None` for the command-line tool.
pub fn role() -> Option<Role> {
    if std::process::id() != 1 {
        return None;
    }
    let argv0 = std::env::args_os().next()?;
    role_of(Path::new(&argv0))
}

fn role_of(argv0: &Path) -> Option<Role> {
    match argv0.file_name()?.to_str()? {
        "init" => Some(Role::Init),
        "shutdown" => Some(Role::Shutdown),
        _ => None,
    }
}

/// What the kernel command line asks of /init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// `root=`, as written.
    pub root: Option<String>,
    /// `rootfstype=`.
    pub fstype: Option<String>,
    /// `rootflags=`.
    pub rootflags: String,
    /// `ro` (the kernel's default) or `rw`, the last one wins.
    pub read_only: bool,
    /// `init=`.
    pub init: Option<String>,
    /// The command line asks for an iSCSI root (rd.iscsi.firmware,
    /// rd.iscsi.ibft, netroot=iscsi:…): a failed login is fatal. Without it,
    /// a machine with no iBFT boots from a local root= instead.
    pub iscsi_asked: bool,
    /// `rd.sanroot.retries=`.
    pub retries: u32,
    /// `rd.sanroot.shutdown_timeout=`.
    pub shutdown_timeout: u64,
}

impl InitOptions {
    /// Parse /proc/cmdline. An error is a command line `sanroot boot` would
    /// refuse too; its message names the option.
    pub fn parse(text: &str) -> Result<InitOptions, String> {
        let cl = cmdline::parse(text).map_err(|e| e.to_string())?;
        let mut o = InitOptions {
            root: None,
            fstype: None,
            rootflags: String::new(),
            read_only: true,
            init: None,
            iscsi_asked: cl.wants_iscsi() && cl.sanroot.enabled != Some(false),
            retries: cl.sanroot.retries.unwrap_or(DEFAULT_RETRIES),
            shutdown_timeout: cl
                .sanroot
                .shutdown_timeout
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        };
        for (key, val) in crate::kcmdline::split_args(text) {
            match (key, val) {
                ("root", Some(v)) if !v.is_empty() => o.root = Some(v.to_string()),
                ("rootfstype", Some(v)) if !v.is_empty() => o.fstype = Some(v.to_string()),
                ("rootflags", Some(v)) => o.rootflags = v.to_string(),
                ("ro", None) => o.read_only = true,
                ("rw", None) => o.read_only = false,
                ("init", Some(v)) if !v.is_empty() => o.init = Some(v.to_string()),
                _ => {}
            }
        }
        Ok(o)
    }
}

/// mount(2) flags and data for the root: `read_only` and the generic words
/// of `rootflags` (as mount(8) takes them) become flags; the rest is the
/// filesystem's own data.
pub fn mount_flags(read_only: bool, rootflags: &str) -> (MsFlags, String) {
    let mut flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let mut data = Vec::new();
    for w in rootflags
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        match w {
            "ro" => flags.insert(MsFlags::MS_RDONLY),
            "rw" => flags.remove(MsFlags::MS_RDONLY),
            "defaults" => {}
            "noatime" => flags.insert(MsFlags::MS_NOATIME),
            "nodiratime" => flags.insert(MsFlags::MS_NODIRATIME),
            "relatime" => flags.insert(MsFlags::MS_RELATIME),
            "strictatime" => flags.insert(MsFlags::MS_STRICTATIME),
            "lazytime" => flags.insert(MsFlags::MS_LAZYTIME),
            "nosuid" => flags.insert(MsFlags::MS_NOSUID),
            "nodev" => flags.insert(MsFlags::MS_NODEV),
            "noexec" => flags.insert(MsFlags::MS_NOEXEC),
            "sync" => flags.insert(MsFlags::MS_SYNCHRONOUS),
            "dirsync" => flags.insert(MsFlags::MS_DIRSYNC),
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// The outcome of the iSCSI step.
#[derive(Debug, PartialEq, Eq)]
enum Booted {
    /// The root LUN is attached (or rd.sanroot=0 said not to).
    Done,
    /// Nothing asked for iSCSI and there is no iBFT: a local root.
    NotAsked,
}

/// A step of /init that failed: what, and what the user can do.
type InitResult<T> = Result<T, String>;

/// /init. Returns only on failure (the exit status); PID 1 exiting makes
/// the kernel panic, which `panic=N` turns into a reboot.
pub fn run_init() -> i32 {
    let start = Instant::now();
    if let Err(e) = early_mounts() {
        // No /dev/kmsg yet: the console is all there is.
        eprintln!("sanroot init: {e}");
        return give_up(&e);
    }
    crate::logging::init_kmsg(1);
    log::warn!("init: sanroot {} as /init", env!("CARGO_PKG_VERSION"));
    match boot_to_root(start) {
        Ok(never) => match never {},
        Err(e) => give_up(&e),
    }
}

fn give_up(msg: &str) -> i32 {
    log::error!("init: {msg}");
    log::error!(
        "init: cannot go on; the kernel panics when /init exits (panic=N on the command line reboots after N seconds)"
    );
    eprintln!("sanroot init: {msg}");
    // Let the console show it before the panic message scrolls it away.
    std::thread::sleep(Duration::from_secs(2));
    exit::FAILURE
}

/// Everything after the early mounts; returns only with an error.
fn boot_to_root(start: Instant) -> InitResult<std::convert::Infallible> {
    let text = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let opts = InitOptions::parse(&text).map_err(|e| format!("kernel command line: {e}"))?;
    let spec = match &opts.root {
        Some(r) => Some(RootSpec::parse(r).map_err(|e| format!("root={r}: {e}"))?),
        None => None,
    };

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("reading /proc/sys/kernel/osrelease: {e}"))?
        .trim()
        .to_string();
    let mod_dir = Path::new("/lib/modules").join(&release);
    match modules::load_list(&mod_dir, &text) {
        Ok(_) => {}
        Err(e) => log::warn!("modules: {e}"),
    }

    let booted = run_boot(&opts)?;
    let boot_disk = handoff::read(Path::new("/")).map(|r| r.device);
    if booted == Booted::NotAsked {
        log::warn!(
            "init: no iSCSI root on the command line and no iBFT: looking for root= on the local disks"
        );
    }
    let (dev, fstype) = wait_root(spec.as_ref(), boot_disk.as_deref(), &opts)?;
    mount_root(&dev, &fstype, &opts)?;
    if booted != Booted::NotAsked {
        // An installer's node record of the boot target must not log in
        // again from the real root (dracut does this in its pre-pivot hook).
        let _ = super::hide::pre_pivot(Path::new(NEW_ROOT));
    }

    if let Err(e) = install_shutdown() {
        log::warn!(
            "init: {e}: power-off will not log the session out (the target drops it when the connection closes)"
        );
    }
    switch_root(Path::new(NEW_ROOT))?;
    log::warn!(
        "init: root {} ({fstype}) mounted {}; leaving the initramfs after {:.2} s",
        dev.display(),
        if opts.read_only {
            "read-only"
        } else {
            "read-write"
        },
        start.elapsed().as_secs_f64()
    );
    Err(exec_init(opts.init.as_deref()))
}

/// /dev, /proc, /sys, /run, the console, and the initrd marker that makes
/// `sanroot boot` log to /dev/kmsg and take '@' in argv[0].
fn early_mounts() -> InitResult<()> {
    let mounts: [(&str, &str, MsFlags, &str); 4] = [
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, "mode=0755"),
        (
            "proc",
            "/proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "",
        ),
        (
            "sysfs",
            "/sys",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "",
        ),
        // exec: systemd-shutdown runs /run/initramfs/shutdown from here.
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=0755",
        ),
    ];
    for (fs, dir, flags, data) in mounts {
        let _ = std::fs::create_dir_all(dir);
        match mount(Some(fs), dir, Some(fs), flags, Some(data)) {
            Ok(()) => {}
            // Mounted already (CONFIG_DEVTMPFS_MOUNT on some kernels).
            Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(format!("mounting {fs} on {dir}: {e}")),
        }
    }
    console_fds();
    if !Path::new("/etc/initrd-release").exists() {
        let _ = std::fs::create_dir_all("/etc");
        let _ = std::fs::write(
            "/etc/initrd-release",
            "NAME=\"sanroot initramfs\"\nID=sanroot\n",
        );
    }
    Ok(())
}

/// The kernel opens /dev/console for init only when the image has the
/// node; otherwise take it from devtmpfs now.
fn console_fds() {
    // SAFETY: fcntl F_GETFD on a descriptor number only queries it.
    let open = unsafe { nix::libc::fcntl(1, nix::libc::F_GETFD) } >= 0;
    if open {
        return;
    }
    if let Ok(c) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        crate::daemon::stdio_to(&c);
    }
}

/// `sanroot boot`, as dracut's initqueue job runs it: up to
/// `rd.sanroot.retries` times, 3 s apart, except for failures another try
/// cannot fix (usage, no or invalid iBFT).
fn run_boot(opts: &InitOptions) -> InitResult<Booted> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = Instant::now();
        // '@' in argv[0]: the daemon it leaves is skipped by systemd's kill
        // sweeps at switch-root and power-off.
        let status = std::process::Command::new("/proc/self/exe")
            .arg0("@sanroot")
            .arg("boot")
            .stdin(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("starting 'sanroot boot': {e}"))?;
        let code = status.code().unwrap_or(exit::FAILURE);
        match code {
            exit::OK => {
                log::info!(
                    "init: 'sanroot boot' done in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
                return Ok(Booted::Done);
            }
            exit::NO_IBFT if !opts.iscsi_asked => return Ok(Booted::NotAsked),
            exit::USAGE | exit::NO_IBFT | exit::INVALID_IBFT => {
                return Err(format!(
                    "'sanroot boot' failed with status {code} (see its messages above); another try would not help"
                ));
            }
            _ if attempt < opts.retries => {
                log::warn!(
                    "init: 'sanroot boot' failed with status {code} (attempt {attempt} of {}); trying again in {} s",
                    opts.retries,
                    RETRY_PAUSE.as_secs()
                );
                std::thread::sleep(RETRY_PAUSE);
            }
            _ => {
                return Err(format!(
                    "'sanroot boot' failed with status {code}; giving up after {attempt} attempts (rd.sanroot.retries=)"
                ));
            }
        }
    }
}

/// The root device and its filesystem type, once it is there.
fn wait_root(
    spec: Option<&RootSpec>,
    boot_disk: Option<&str>,
    opts: &InitOptions,
) -> InitResult<(PathBuf, String)> {
    let sys = Path::new("/sys/class/block");
    let dev = Path::new("/dev");
    let start = Instant::now();
    let mut next_note = Duration::from_secs(5);
    let what = match (spec, boot_disk) {
        (Some(s), _) => s.to_string(),
        (None, Some(d)) => format!("the root partition (GPT type x86-64 root) on {d}"),
        (None, None) => {
            return Err(
                "no root= on the kernel command line: add root=UUID=…, LABEL=…, PARTUUID=… or /dev/…"
                    .into(),
            );
        }
    };
    loop {
        let found = match (spec, boot_disk) {
            (Some(s), _) => rootdev::find(s, sys, dev)?,
            (None, Some(d)) => rootdev::discoverable_root(d.trim_start_matches("/dev/"), sys, dev),
            (None, None) => None,
        };
        if let Some(f) = found {
            let fstype = match (&opts.fstype, &f.fs) {
                (Some(t), _) => t.clone(),
                (None, Some(fs)) => fs.fstype.to_string(),
                (None, None) => {
                    return Err(format!(
                        "{what} is {}, but its filesystem type is not one sanroot recognizes: add rootfstype=",
                        f.dev.display()
                    ));
                }
            };
            if start.elapsed() > Duration::from_millis(200) {
                log::info!(
                    "init: {what} appeared after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
            }
            return Ok((f.dev, fstype));
        }
        if start.elapsed() >= ROOT_WAIT {
            return Err(format!(
                "{what} did not appear within {} s; block devices: {}",
                ROOT_WAIT.as_secs(),
                block_devices(sys)
            ));
        }
        if start.elapsed() >= next_note {
            next_note += Duration::from_secs(5);
            log::info!(
                "init: waiting for {what}: {:.0} s of {}",
                start.elapsed().as_secs_f64(),
                ROOT_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn block_devices(sys: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(sys)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

fn mount_root(dev: &Path, fstype: &str, opts: &InitOptions) -> InitResult<()> {
    let _ = std::fs::create_dir_all(NEW_ROOT);
    let (flags, data) = mount_flags(opts.read_only, &opts.rootflags);
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    let r = mount(Some(dev), NEW_ROOT, Some(fstype), flags, data_opt);
    match r {
        Ok(()) => {}
        // A write-protected LUN: the kernel's own root mount falls back to
        // read-only the same way.
        Err(nix::errno::Errno::EROFS | nix::errno::Errno::EACCES)
            if !flags.contains(MsFlags::MS_RDONLY) =>
        {
            log::warn!(
                "init: {} is write-protected; mounting it read-only",
                dev.display()
            );
            mount(
                Some(dev),
                NEW_ROOT,
                Some(fstype),
                flags | MsFlags::MS_RDONLY,
                data_opt,
            )
            .map_err(|e| mount_error(dev, fstype, e))?;
        }
        Err(e) => return Err(mount_error(dev, fstype, e)),
    }
    if !flags.contains(MsFlags::MS_RDONLY) {
        log::info!(
            "init: the root is mounted read-write with no fsck before it (rw on the command line); with ro, the real root's systemd-fsck-root checks it first"
        );
    }
    Ok(())
}

fn mount_error(dev: &Path, fstype: &str, e: nix::errno::Errno) -> String {
    let hint = match e {
        nix::errno::Errno::ENODEV => format!(
            ": the kernel has no {fstype} driver (is its module in the image? sanroot-mkinitramfs --fs {fstype})"
        ),
        nix::errno::Errno::EINVAL => ": wrong rootfstype= or rootflags=?".to_string(),
        _ => String::new(),
    };
    format!(
        "mounting {} ({fstype}) on {NEW_ROOT}: {e}{hint}",
        dev.display()
    )
}

/// `sanroot boot --install-shutdown`, from an initramfs that has no
/// shutdown program of its own (initramfs-tools): leave a copy of this
/// binary at /run/initramfs/shutdown, so that power-off comes back to it
/// and the root's session is logged out once the root is unmounted
/// ([`run_shutdown`]), and make /run exec (initramfs-tools mounts it
/// noexec and the real root keeps that mount; systemd-shutdown then finds
/// the program not executable and powers off without the logout). Only
/// when this boot is sanroot's (its hand-off record is there).
pub fn install_shutdown_program() -> i32 {
    if handoff::read(&super::handoff_root()).is_none() {
        log::info!("install-shutdown: no sanroot hand-off record: this boot is not sanroot's");
        return exit::OK;
    }
    let res = run_exec().and_then(|()| install_shutdown());
    match res {
        Ok(()) => {
            log::info!("power-off will come back to {SHUTDOWN_DIR}/shutdown to log out");
            exit::OK
        }
        Err(e) => {
            log::error!("{e}: power-off will not log the root's session out");
            exit::FAILURE
        }
    }
}

/// Remount /run without noexec, keeping nosuid, nodev and ro (a remount
/// that names no atime flag keeps the mount's own).
fn run_exec() -> InitResult<()> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let st = statvfs("/run").map_err(|e| format!("statvfs /run: {e}"))?;
    let f = st.flags();
    if !f.contains(FsFlags::ST_NOEXEC) {
        return Ok(());
    }
    let mut flags = MsFlags::MS_REMOUNT;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, "/run", None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("remounting /run exec: {e}"))?;
    log::info!(
        "/run remounted exec (it was noexec): systemd-shutdown runs {SHUTDOWN_DIR}/shutdown from it"
    );
    Ok(())
}

/// A copy of this binary at /run/initramfs/shutdown, unless something else
/// (dracut's shutdown module) put one there.
fn install_shutdown() -> InitResult<()> {
    let dir = Path::new(SHUTDOWN_DIR);
    let prog = dir.join("shutdown");
    if prog.exists() {
        return Ok(());
    }
    for d in ["oldroot", "dev", "proc", "sys", "run"] {
        std::fs::create_dir_all(dir.join(d))
            .map_err(|e| format!("mkdir {}: {e}", dir.join(d).display()))?;
    }
    let tmp = dir.join(".shutdown.new");
    std::fs::copy("/proc/self/exe", &tmp)
        .map_err(|e| format!("copying sanroot to {}: {e}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &prog).map_err(|e| format!("rename to {}: {e}", prog.display()))
}

/// Move the API filesystems into `new`, free the initramfs's memory and
/// make `new` the root (what switch_root(8) does: pivot_root cannot leave
/// the initramfs's rootfs).
fn switch_root(new: &Path) -> InitResult<()> {
    for d in API_DIRS {
        let from = Path::new("/").join(d);
        let to = new.join(d);
        if !to.is_dir() {
            log::warn!(
                "init: the root has no /{d}; its {d} is mounted by the real init (or missing)"
            );
            let _ = umount2(&from, MntFlags::MNT_DETACH);
            continue;
        }
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| format!("moving /{d} into the root: {e}"))?;
    }
    std::env::set_current_dir(new).map_err(|e| format!("chdir {}: {e}", new.display()))?;
    free_initramfs();
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {} onto /: {e}", new.display()))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Delete the initramfs's files (they would hold their memory for the life
/// of the machine). Only on a RAM filesystem, never across a mount point,
/// and the emptied API directories stay: the daemon's private mount
/// namespace still has its /dev, /proc, /sys and /run mounted on them, and
/// removing a directory removes the mounts on it in every namespace.
fn free_initramfs() {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    use std::os::unix::fs::MetadataExt;
    // linux/magic.h; nix names tmpfs's only.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    match statfs("/") {
        Ok(s) if s.filesystem_type() == RAMFS_MAGIC || s.filesystem_type() == TMPFS_MAGIC => {}
        Ok(_) => {
            log::warn!("init: / is not the initramfs's RAM filesystem; not deleting anything");
            return;
        }
        Err(e) => {
            log::warn!("init: statfs /: {e}; not deleting the initramfs's files");
            return;
        }
    }
    let Ok(root_dev) = std::fs::symlink_metadata("/").map(|m| m.dev()) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir("/") else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let keep_dir = e
            .file_name()
            .to_str()
            .is_some_and(|n| API_DIRS.contains(&n));
        remove_tree(&p, root_dev, !keep_dir);
    }
}

/// Remove `p` and what is below it on device `dev`; directories on other
/// devices (mount points) are left alone, and so is `p` itself when it is
/// a directory and `remove_self` is false.
fn remove_tree(p: &Path, dev: u64, remove_self: bool) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return;
    };
    if m.dev() != dev {
        return;
    }
    if m.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                remove_tree(&e.path(), dev, true);
            }
        }
        if remove_self {
            let _ = std::fs::remove_dir(p);
        }
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// Exec the real init (`init=`, then the kernel's list) with the
/// arguments and environment the kernel gave /init. Returns why none ran.
fn exec_init(wanted: Option<&str>) -> String {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut tried = Vec::new();
    for cand in wanted.into_iter().chain(INITS) {
        if !Path::new(cand).exists() {
            tried.push(format!("{cand}: not there"));
            continue;
        }
        let mut cmd = std::process::Command::new(cand);
        cmd.arg0(cand).args(&args);
        for (k, v) in std::env::vars_os() {
            if may_hold_secret(&k.to_string_lossy(), &v.to_string_lossy()) {
                cmd.env_remove(&k);
            }
        }
        let err = cmd.exec();
        log::warn!("init: exec {cand}: {err}");
        tried.push(format!("{cand}: {err}"));
    }
    format!(
        "no init to run in the root filesystem ({}); write init=/path/to/init",
        tried.join("; ")
    )
}

/// The kernel hands init every `key=value` argument it does not know and
/// whose key has no '.' as an environment variable: `netroot=iscsi:user:
/// secret@…` and dracut's old `iscsi_password=` among them. The real init
/// (and so everything it starts) does not get those.
fn may_hold_secret(key: &str, value: &str) -> bool {
    matches!(key, "netroot" | "iscsiroot")
        || key.starts_with("iscsi_")
        || (key == "root" && value.starts_with("iscsi:"))
}

/// The shutdown program. Never returns when the final reboot(2) works.
pub fn run_shutdown() -> i32 {
    crate::logging::init_kmsg(1);
    let verb = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "reboot".into());
    let timeout = InitOptions::parse(&crate::kcmdline::read())
        .map(|o| o.shutdown_timeout)
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    unmount_old_root();
    logout(Duration::from_secs(timeout));
    nix::unistd::sync();
    power_off(&verb)
}

/// A line on the console and in the kernel log, like dracut's shutdown
/// hook writes it.
fn say(msg: &str) {
    use std::io::Write;
    let line = format!("<5>sanroot-shutdown: {msg}\n");
    match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(_) => eprintln!("sanroot-shutdown: {msg}"),
    }
}

/// The mount points under `under` in `mountinfo` (/proc/self/mountinfo),
/// in an order they can be unmounted in: deepest path first, and among
/// equals the last mounted first (mountinfo's order is not the mount order
/// once mounts have been moved, as systemd-shutdown's pivot does).
pub fn mounts_under(mountinfo: &str, under: &str) -> Vec<String> {
    let mut out: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| {
            p == under
                || p.strip_prefix(under)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .collect();
    out.reverse();
    // Stable: the reversed order stays among paths of one depth.
    out.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    out
}

/// /proc/self/mountinfo writes space, tab, newline and backslash as \ooo.
fn unescape_mount_path(s: &str) -> String {
    super::unescape_byte3(s, |oct| {
        oct.iter().try_fold(0u8, |acc, d| {
            (b'0'..=b'7')
                .contains(d)
                .then(|| acc.checked_mul(8)?.checked_add(d - b'0'))?
        })
    })
}

/// Unmount the old root, deepest first. The old root's API filesystems
/// (/oldroot/dev, /proc, /sys, /run and what is below them) hold no data
/// and may still have a file open: they are detached when they do not
/// unmount, so that the root filesystem itself can be unmounted. What is
/// still busy after that is remounted read-only and detached.
fn unmount_old_root() {
    const OLD: &str = "/oldroot";
    let read = || std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let api = |p: &str| {
        API_DIRS.iter().any(|d| {
            p.strip_prefix(OLD)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.strip_prefix(d))
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        })
    };
    for _pass in 0..3 {
        let points = mounts_under(&read(), OLD);
        if points.is_empty() {
            break;
        }
        for p in points {
            if let Err(e) = umount2(p.as_str(), MntFlags::empty()) {
                log::debug!("shutdown: umount {p}: {e}");
                if api(&p) {
                    let _ = umount2(p.as_str(), MntFlags::MNT_DETACH);
                }
            }
        }
    }
    let left = mounts_under(&read(), OLD);
    for p in &left {
        let _ = mount(
            None::<&str>,
            p.as_str(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        match umount2(p.as_str(), MntFlags::MNT_DETACH) {
            // Gone with a mount above it.
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => log::warn!("shutdown: detaching {p}: {e}"),
        }
    }
    if left.is_empty() {
        say(&format!("Unmounted {OLD}"));
    } else {
        say(&format!(
            "{OLD}: {} mount(s) were busy ({}); remounted read-only and detached",
            left.len(),
            left.join(" ")
        ));
    }
}

/// Have the boot disk's daemon flush, log out and remove the device,
/// within `limit`.
fn logout(limit: Duration) {
    let Some(rec) = handoff::read(Path::new("/")) else {
        return;
    };
    let dev = rec.device.clone();
    if crate::state::load(&crate::state::run_dir(), &dev).is_none() {
        return;
    }
    let deadline = Instant::now() + limit;
    loop {
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dev.clone();
        let spawned = crate::threads::named("detach").spawn(move || {
            let _ = tx.send(crate::bridge::detach::detach_device(&d));
        });
        if let Err(e) = spawned {
            say(&format!("{dev}: cannot start the detach: {e}"));
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(())) => {
                say(&format!(
                    "{dev}: cache flushed, logged out of {}, device removed",
                    rec.target
                ));
                return;
            }
            Ok(Err(e))
                if e.message.contains("in use")
                    && Instant::now() + Duration::from_secs(1) < deadline =>
            {
                log::info!("shutdown: {dev} is still in use; trying again");
                std::thread::sleep(Duration::from_secs(1));
                unmount_old_root();
            }
            Ok(Err(e)) => {
                say(&format!("{dev}: detach failed: {}", e.message));
                return;
            }
            Err(_) => {
                say(&format!(
                    "{dev}: detach did not finish within {} s; powering off without a clean logout (rd.sanroot.shutdown_timeout=)",
                    limit.as_secs()
                ));
                return;
            }
        }
    }
}

fn power_off(verb: &str) -> i32 {
    use nix::sys::reboot::{RebootMode, reboot};
    let mode = match verb {
        "poweroff" => RebootMode::RB_POWER_OFF,
        "halt" => RebootMode::RB_HALT_SYSTEM,
        "kexec" => RebootMode::RB_KEXEC,
        "reboot" => RebootMode::RB_AUTOBOOT,
        other => {
            log::warn!("shutdown: unknown verb {other:?}: rebooting");
            RebootMode::RB_AUTOBOOT
        }
    };
    match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => {
            log::error!("shutdown: reboot({verb}): {e}");
            exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert_eq!(role_of(Path::new("/init")), Some(Role::Init));
        assert_eq!(role_of(Path::new("/shutdown")), Some(Role::Shutdown));
        assert_eq!(role_of(Path::new("/usr/sbin/sanroot")), None);
        assert_eq!(role_of(Path::new("@sanroot")), None);
    }

    #[test]
    fn options() {
        let o = InitOptions::parse(
            "BOOT_IMAGE=/vmlinuz root=UUID=5a17b007-0000-4000-8000-5a4e0000b007 rd.iscsi.firmware rw \
             rootflags=noatime,data=ordered rootfstype=ext4 init=/lib/systemd/systemd rd.sanroot.retries=2",
        )
        .unwrap();
        assert_eq!(
            o.root.as_deref(),
            Some("UUID=5a17b007-0000-4000-8000-5a4e0000b007")
        );
        assert_eq!(o.fstype.as_deref(), Some("ext4"));
        assert_eq!(o.rootflags, "noatime,data=ordered");
        assert!(!o.read_only && o.iscsi_asked);
        assert_eq!(o.init.as_deref(), Some("/lib/systemd/systemd"));
        assert_eq!((o.retries, o.shutdown_timeout), (2, 90));

        let o = InitOptions::parse("root=LABEL=r rw ro").unwrap();
        assert!(o.read_only && !o.iscsi_asked);
        assert_eq!(o.retries, 5);
        let o = InitOptions::parse("netroot=iscsi:10.0.0.1::::iqn.x:y rd.sanroot=0").unwrap();
        assert!(!o.iscsi_asked);
        assert!(
            InitOptions::parse("rd.sanroot.retries=x")
                .unwrap_err()
                .contains("rd.sanroot.retries")
        );
    }

    #[test]
    fn secrets_stay_out_of_the_real_inits_environment() {
        assert!(may_hold_secret("netroot", "iscsi:u:p@10.0.0.1::::iqn.x"));
        assert!(may_hold_secret("iscsi_password", "p"));
        assert!(may_hold_secret("root", "iscsi:u:p@10.0.0.1::::iqn.x"));
        assert!(!may_hold_secret("root", "UUID=x"));
        assert!(!may_hold_secret("TERM", "linux"));
        assert!(!may_hold_secret("BOOT_IMAGE", "/vmlinuz"));
    }

    #[test]
    fn flags() {
        let (f, d) = mount_flags(true, "noatime,data=ordered,,errors=remount-ro");
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOATIME));
        assert_eq!(d, "data=ordered,errors=remount-ro");
        let (f, d) = mount_flags(true, "rw,defaults");
        assert!(!f.contains(MsFlags::MS_RDONLY));
        assert_eq!(d, "");
        let (f, _) = mount_flags(false, "");
        assert!(f.is_empty());
    }

    #[test]
    fn old_root_mounts_topmost_first() {
        let mi = "\
22 1 0:21 / / rw - rootfs rootfs rw
29 30 0:4 / /oldroot/dev rw - devtmpfs udev rw
30 22 0:5 / /oldroot rw - ext4 /dev/ublkb0p1 rw
31 30 0:6 / /oldroot/run rw - tmpfs tmpfs rw
32 30 0:7 / /oldroot/my\\040disk rw - ext4 /dev/sdb1 rw
33 22 0:8 / /oldrootfs rw - tmpfs tmpfs rw
34 31 0:9 / /oldroot/run/user rw - tmpfs tmpfs rw
";
        // /oldroot/dev is listed before /oldroot itself (moved mounts).
        assert_eq!(
            mounts_under(mi, "/oldroot"),
            vec![
                "/oldroot/run/user",
                "/oldroot/my disk",
                "/oldroot/run",
                "/oldroot/dev",
                "/oldroot"
            ]
        );
        assert!(mounts_under(mi, "/nothing").is_empty());
        assert_eq!(unescape_mount_path("a\\134b\\0"), "a\\b\\0");
    }
}
