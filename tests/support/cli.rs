//! Running the built `sanroot` binary as a child in a sandbox of its own
//! (state dir, HOME, working directory), with a hard time bound and its
//! peak memory (wait4's ru_maxrss): for the CLI tests (`hostile_cli.rs`,
//! `discovery_auth.rs`).
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A child outliving this is killed and the test fails: a hang bound, not
/// a speed claim.
pub const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- sandbox

/// A scratch world for one test: `state/` (SANROOT_STATE_DIR), `home/`
/// (HOME), `cwd/` (the working directory), `out/` (what a test asks the
/// command to write). Removed when dropped.
pub struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    /// `sanroot-PREFIX-NAME-PID` under the temporary directory.
    pub fn new(prefix: &str, name: &str) -> Sandbox {
        let root =
            std::env::temp_dir().join(format!("sanroot-{prefix}-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["state", "home", "cwd", "out"] {
            fs::create_dir_all(root.join(d)).expect("sandbox dir");
        }
        Sandbox { root }
    }

    pub fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// Every file and directory under `sub`, relative to it.
    pub fn tree(&self, sub: &str) -> Vec<PathBuf> {
        fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(base, &p, out);
                }
            }
        }
        let base = self.dir(sub);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    /// Nothing appeared in HOME, the working directory or next to the
    /// sandbox's own directories.
    pub fn assert_contained(&self) {
        for sub in ["home", "cwd"] {
            assert_eq!(self.tree(sub), Vec::<PathBuf>::new(), "written into {sub}/");
        }
        let mut top: Vec<_> = fs::read_dir(&self.root)
            .expect("sandbox")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        top.retain(|t| t != "secrets");
        assert_eq!(top, ["cwd", "home", "out", "state"], "sandbox top level");
    }

    /// A secret file under `secrets/` holding `secret` and a newline,
    /// with `mode`.
    pub fn secret_file(&self, name: &str, secret: &str, mode: u32) -> PathBuf {
        let dir = self.dir("secrets");
        fs::create_dir_all(&dir).expect("secrets dir");
        let p = dir.join(name);
        fs::write(&p, format!("{secret}\n")).expect("secret file");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------- child

/// How a child ended.
pub struct Run {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set, KiB (wait4's ru_maxrss).
    pub max_rss_kib: i64,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}`: exit {:?}, peak RSS {} KiB\n--- stdout\n{}--- stderr\n{}",
            self.what, self.code, self.max_rss_kib, self.stdout, self.stderr
        )
    }
}

fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Reap `pid`, killing it at `deadline`: (wait status, ru_maxrss in
/// KiB, killed).
///
/// ru_maxrss is an upper bound of the child's peak resident set: Linux
/// takes the larger of the child's own peak and the high-water mark of
/// the memory it replaced at exec (the test process's, at spawn). So a
/// bound on it never lets a greedy child pass; the test process itself
/// stays well below what the tests allow (the fake disks are mostly
/// untouched).
fn wait_bounded(pid: i32, deadline: Instant) -> (i32, i64, bool) {
    use nix::libc;
    let mut killed = false;
    loop {
        let mut status = 0;
        // SAFETY: plain C structs owned here; all-zero is a valid rusage.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` outlive the call; `pid` is our child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            return (status, ru.ru_maxrss, killed);
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if !killed && Instant::now() >= deadline {
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `sanroot ARGS` in `sb` with only `env` (and PATH, HOME,
/// SANROOT_STATE_DIR) in its environment; fail the test if it outlives
/// [`LIMIT`].
#[expect(clippy::zombie_processes, reason = "reaped by wait4 in wait_bounded")]
pub fn run(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sanroot"))
        .args(args)
        .current_dir(sb.dir("cwd"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", sb.dir("home"))
        .env("SANROOT_STATE_DIR", sb.dir("state"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sanroot");
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let pid = i32::try_from(child.id()).expect("pid");
    let (status, max_rss_kib, killed) = wait_bounded(pid, Instant::now() + LIMIT);
    let r = Run {
        what: format!("sanroot {}", args.join(" ")),
        code: nix::libc::WIFEXITED(status).then(|| nix::libc::WEXITSTATUS(status)),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        max_rss_kib,
    };
    assert!(!killed, "still running after {LIMIT:?}, killed: {r}");
    r
}
