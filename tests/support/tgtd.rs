//! A private tgtd for one test: its own iSCSI port on 127.0.0.1 and its own
//! control port, so tests run side by side and never touch a system target.
//!
//! tgtd is a real, independent target (Debian package tgt). Everything is
//! configured through tgtadm, as an administrator would. Test secrets do go
//! on tgtadm's command line: tgtadm has no other way to take them, and they
//! are throwaway values in a private daemon.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Tgtd {
    child: Child,
    pub port: u16,
    pub control: u16,
    pub dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// tgtd in the foreground on 127.0.0.1:`port`, logging (appending) to
/// `dir/tgtd.log`.
fn spawn(port: u16, control: u16, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("tgtd.log"))
        .expect("log");
    Command::new("tgtd")
        .args([
            "-f",
            "-C",
            &control.to_string(),
            "--iscsi",
            &format!("portal=127.0.0.1:{port}"),
        ])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start tgtd ({e}): install it with `sudo qemu/install-deps`")
        })
}

/// Options for one logical unit.
#[derive(Debug, Clone, Default)]
pub struct LunSpec {
    /// Size of a sparse backing file; ignored for `null`.
    pub size: u64,
    pub block_size: Option<u32>,
    pub readonly: bool,
    /// tgtd's "null" backing store: no I/O, reads return zeros.
    pub null: bool,
    pub thin: bool,
}

impl Tgtd {
    /// Start tgtd. Panics with a clear message when tgtd is missing (run
    /// `sudo qemu/install-deps`), since a test must not silently skip.
    pub fn start() -> Tgtd {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sanroot-tgtd-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tgtd dir");
        let port = free_port();
        // Control "ports" name an abstract unix socket; tgtd takes numbers
        // up to 32767. Pick one from the pid and a sequence number.
        let control = 1024 + ((std::process::id() * 64 + seq) % 31000) as u16;
        let mut t = Tgtd {
            child: spawn(port, control, &dir),
            port,
            control,
            dir,
        };
        t.wait_ready();
        t
    }

    /// Wait until tgtd answers tgtadm and accepts connections.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("tgtadm")
                .args([
                    "-C",
                    &self.control.to_string(),
                    "--lld",
                    "iscsi",
                    "--mode",
                    "target",
                    "--op",
                    "show",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tgtd did not come up; log in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Run tgtadm with these arguments; panics with its output on failure.
    pub fn adm(&self, args: &[&str]) -> String {
        let out = Command::new("tgtadm")
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .expect("run tgtadm");
        assert!(
            out.status.success(),
            "tgtadm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Create target `tid` named `iqn`, open to every initiator.
    pub fn target(&self, tid: u32, iqn: &str) {
        let t = tid.to_string();
        self.adm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            &t,
            "--targetname",
            iqn,
        ]);
        self.adm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            &t,
            "--initiator-address",
            "ALL",
        ]);
    }

    /// Add LUN `lun` to target `tid`; returns the backing file (None for null).
    pub fn lun(&self, tid: u32, lun: u32, spec: &LunSpec) -> Option<PathBuf> {
        let (t, l) = (tid.to_string(), lun.to_string());
        let mut args: Vec<String> = [
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            &t,
            "--lun",
            &l,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let backing = if spec.null {
            args.extend(["--bstype", "null", "--backing-store", "/dev/null"].map(String::from));
            None
        } else {
            let p = self.dir.join(format!("t{tid}-lun{lun}.img"));
            let f = std::fs::File::create(&p).expect("backing file");
            f.set_len(spec.size).expect("size backing file");
            args.extend(["--backing-store".to_string(), p.display().to_string()]);
            Some(p)
        };
        if let Some(bs) = spec.block_size {
            args.extend(["--blocksize".to_string(), bs.to_string()]);
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.adm(&a);
        if spec.readonly {
            self.adm(&[
                "--mode",
                "logicalunit",
                "--op",
                "update",
                "--tid",
                &t,
                "--lun",
                &l,
                "--params",
                "readonly=1",
            ]);
        }
        if spec.thin {
            self.adm(&[
                "--mode",
                "logicalunit",
                "--op",
                "update",
                "--tid",
                &t,
                "--lun",
                &l,
                "--params",
                "thin_provisioning=1",
            ]);
        }
        backing
    }

    /// One-way CHAP: the initiator must log in as `user`/`secret`.
    pub fn chap(&self, tid: u32, user: &str, secret: &str) {
        self.account(tid, user, secret, false);
    }

    /// Mutual CHAP: the target answers our challenge as `user`/`secret`.
    pub fn chap_outgoing(&self, tid: u32, user: &str, secret: &str) {
        self.account(tid, user, secret, true);
    }

    fn account(&self, tid: u32, user: &str, secret: &str, outgoing: bool) {
        self.adm(&[
            "--mode",
            "account",
            "--op",
            "new",
            "--user",
            user,
            "--password",
            secret,
        ]);
        let t = tid.to_string();
        let mut bind = vec![
            "--mode", "account", "--op", "bind", "--tid", &t, "--user", user,
        ];
        if outgoing {
            bind.push("--outgoing");
        }
        self.adm(&bind);
    }

    /// Number of I_T nexuses (sessions) on target `tid`.
    pub fn sessions(&self, tid: u32) -> usize {
        let out = self.adm(&["--mode", "target", "--op", "show"]);
        let mut in_target = false;
        let mut n = 0;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("Target ") {
                in_target = rest.split(':').next().map(|x| x.trim()) == Some(&tid.to_string());
            } else if in_target && line.trim_start().starts_with("I_T nexus:") {
                n += 1;
            }
        }
        n
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tgtd.log")).unwrap_or_default()
    }

    /// Kill tgtd (as a crash would: no logout, connections reset) and start
    /// a new one on the same ports; targets must be configured again.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.port, self.control, &self.dir);
        self.wait_ready();
    }

    /// Add LUN `lun` backed by an existing file (after a restart).
    pub fn lun_file(&self, tid: u32, lun: u32, path: &Path) {
        self.adm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            &tid.to_string(),
            "--lun",
            &lun.to_string(),
            "--backing-store",
            &path.display().to_string(),
        ]);
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Path of a file in a backing store, for byte comparisons.
pub fn read_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read backing file")
}
