//! The initiator engine against a second, independent target: the Linux
//! kernel's own iSCSI target (LIO: target_core_mod, target_core_file,
//! iscsi_target_mod), configured through configfs in a QEMU guest (TCG)
//! that `qemu/lio-guest` boots (see qemu/guest-init/lio-init for what the
//! guest sets up). Discovery, REPORT LUNS, INQUIRY/capacity, write/read
//! round trips of 4 KiB to 8 MiB checked against the md5 of the guest's
//! backing files, CRC32C digests, logout; ALUA (TPGS, this path's port and
//! group from VPD 0x83, REPORT TARGET PORT GROUPS as configfs moves the
//! port's group through standby, non-optimized and unavailable, and the
//! standby path's NOT READY 04/0B); then a second guest with CHAP and
//! mutual CHAP. Needs root, qemu-system-x86, linux-image-6.12-amd64,
//! busybox-static and cpio (`sudo qemu/install-deps`). Never skips: a guest
//! that does not come up fails the test with the tail of its serial log.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use sanroot::iscsi::chap::{AuthConfig, MutualConfig};
use sanroot::iscsi::initiator::{self, InitiatorConfig};
use sanroot::iscsi::login::{LoginError, Portal};
use sanroot::iscsi::negotiate::DigestOffer;
use sanroot::iscsi::session::{Command as ScsiCommand, DataDir, Session};
use sanroot::lun::{self, Lun, LunError, pad16, report_luns};
use sanroot::scsi::alua::{AccessState, AluaSense};
use sanroot::scsi::cdb;
use sanroot::scsi::sense::{Sense, SenseKey};
use sanroot::secret::Secret;

const IQN: &str = "iqn.2026-11.org.sanroot.test:lio";
const INITIATOR: &str = "iqn.2026-11.org.sanroot.test:initiator";
const MIB: usize = 1 << 20;
/// LUN 0: 64 MiB of 512-byte blocks; LUN 1: 32 MiB of 4096-byte blocks.
const LUN0_SIZE: usize = 64 * MIB;
const LUN1_SIZE: usize = 32 * MIB;
/// Everything, both guests included; a watchdog ends the process after it.
const TOTAL_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// From spawning qemu/lio-guest to its port file.
const READY_DEADLINE: Duration = Duration::from_secs(6 * 60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8 ^ (i >> 17) as u8)
        .collect()
}

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b).replace('\r', "");
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// The process id of the running qemu/lio-guest, for the watchdog.
static GUEST_PID: AtomicI32 = AtomicI32::new(0);

fn terminate(pid: i32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // SIGTERM: the script's trap stops QEMU and keeps its work dir.
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
}

/// One run of qemu/lio-guest.
struct Guest {
    name: &'static str,
    child: Option<Child>,
    dir: PathBuf,
    serial: PathBuf,
    script_log: PathBuf,
    iscsi_port: u16,
    control_port: u16,
}

impl Guest {
    fn start(name: &'static str, kernel_args: &[&str]) -> Guest {
        let dir = std::env::temp_dir().join(format!("sanroot-lio-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let serial = dir.join("serial.log");
        let script_log = dir.join("lio-guest.log");
        let portfile = dir.join("ports");
        let log = fs::File::create(&script_log).expect("script log");
        let child = Command::new(repo().join("qemu/lio-guest"))
            .arg("run")
            .arg(&portfile)
            .args(kernel_args)
            .env("SR_LIO_LOG", &serial)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("run qemu/lio-guest (install the QEMU tools with `sudo qemu/install-deps`)");
        GUEST_PID.store(child.id() as i32, Ordering::SeqCst);
        let mut g = Guest {
            name,
            child: Some(child),
            dir,
            serial,
            script_log,
            iscsi_port: 0,
            control_port: 0,
        };
        let t0 = Instant::now();
        loop {
            if let Ok(s) = fs::read_to_string(&portfile) {
                for kv in s.split_whitespace() {
                    match kv.split_once('=') {
                        Some(("iscsi_port", v)) => g.iscsi_port = v.parse().unwrap_or(0),
                        Some(("control_port", v)) => g.control_port = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
                assert!(
                    g.iscsi_port != 0 && g.control_port != 0,
                    "bad port file {s:?}{}",
                    g.diag()
                );
                break;
            }
            if let Some(st) = g.child.as_mut().unwrap().try_wait().expect("try_wait") {
                g.child = None;
                panic!(
                    "LIO guest '{name}' did not come up: qemu/lio-guest exited ({st}){}",
                    g.diag()
                );
            }
            if t0.elapsed() > READY_DEADLINE {
                panic!(
                    "LIO guest '{name}' not ready after {:?}{}",
                    READY_DEADLINE,
                    g.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "lio guest '{name}' ready after {:.1}s: iSCSI 127.0.0.1:{}, control 127.0.0.1:{}",
            t0.elapsed().as_secs_f64(),
            g.iscsi_port,
            g.control_port
        );
        g
    }

    fn portal(&self) -> Portal {
        Portal::new("127.0.0.1", self.iscsi_port)
    }

    fn serial_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial).unwrap_or_default()).replace('\r', "")
    }

    /// The tails of the guest's serial log and of the script's output.
    fn diag(&self) -> String {
        format!(
            "\n--- guest serial log ({}), last lines ---\n{}\n--- qemu/lio-guest output, last lines ---\n{}\n---",
            self.serial.display(),
            tail(&self.serial, 40),
            tail(&self.script_log, 25)
        )
    }

    /// Send one command to the guest's control port; the answer without its
    /// final "OK". QEMU's forwarder accepts connections even when nothing
    /// listens in the guest (and then closes them): retry empty answers.
    fn ctl(&self, cmd: &str) -> String {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < Duration::from_secs(60) {
            match self.ctl_once(cmd) {
                Ok(out) => {
                    let lines: Vec<&str> = out.lines().collect();
                    match lines.last() {
                        Some(&"OK") => return lines[..lines.len() - 1].join("\n"),
                        Some(l) if l.starts_with("ERR") => {
                            panic!("guest control '{cmd}': {out}")
                        }
                        _ => last = format!("answer {out:?}"),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("guest control '{cmd}' got no answer ({last})")
    }

    fn ctl_once(&self, cmd: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.control_port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        let _ = s.shutdown(Shutdown::Write);
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// `md5 LUN [BYTES]` in the guest.
    fn md5(&self, lun: u32, bytes: Option<usize>) -> String {
        let cmd = match bytes {
            Some(n) => format!("md5 {lun} {n}"),
            None => format!("md5 {lun}"),
        };
        let out = self.ctl(&cmd);
        out.strip_prefix("md5 ")
            .unwrap_or_else(|| panic!("md5 answer {out:?}"))
            .trim()
            .to_string()
    }

    /// (established connections on the portal, sessions configfs lists).
    fn sessions(&self) -> (u32, u32) {
        let out = self.ctl("sessions");
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("sessions answer {out:?}"))
        };
        (get("connections "), get("sessions "))
    }

    /// Poll until `sessions()` gives `want` (the target notices a logout
    /// asynchronously).
    fn wait_sessions(&self, want: (u32, u32)) {
        let t0 = Instant::now();
        loop {
            let got = self.sessions();
            if got == want {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "guest reports (connections, sessions) = {got:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Ask the guest to power off and wait for qemu/lio-guest to end.
    fn stop(&mut self) {
        let _ = self.ctl("stop");
        let mut child = self.child.take().expect("guest running");
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                terminate(child.id() as i32);
                let _ = child.wait();
                panic!("the guest did not power off after 'stop'{}", self.diag());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        GUEST_PID.store(0, Ordering::SeqCst);
        assert!(
            st.success(),
            "qemu/lio-guest exited with {st}{}",
            self.diag()
        );
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id() as i32);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            GUEST_PID.store(0, Ordering::SeqCst);
            eprintln!(
                "lio guest '{}': files kept in {}",
                self.name,
                self.dir.display()
            );
        } else if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run `body` against a fresh guest; a failure carries the guest's logs.
fn with_guest(name: &'static str, kernel_args: &[&str], body: impl FnOnce(&Guest)) {
    let t0 = Instant::now();
    let mut g = Guest::start(name, kernel_args);
    let r = catch_unwind(AssertUnwindSafe(|| {
        body(&g);
        g.stop();
    }));
    if let Err(p) = r {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        match msg {
            Some(m) if m.contains("--- guest serial log") => resume_unwind(p),
            Some(m) => panic!("LIO guest '{name}': {m}{}", g.diag()),
            None => resume_unwind(p),
        }
    }
    eprintln!(
        "lio guest '{name}': done in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

fn watchdog() {
    std::thread::spawn(|| {
        std::thread::sleep(TOTAL_DEADLINE);
        eprintln!("lio_guest: total deadline of {TOTAL_DEADLINE:?} exceeded, stopping the guest");
        let pid = GUEST_PID.load(Ordering::SeqCst);
        if pid > 0 {
            terminate(pid);
            std::thread::sleep(Duration::from_secs(10));
        }
        std::process::exit(101);
    });
}

fn chap_cfg(user: &str, secret: &str, mutual: Option<(&str, &str)>) -> InitiatorConfig {
    let mut cfg = InitiatorConfig::new(INITIATOR);
    cfg.auth = Some(AuthConfig {
        user: user.into(),
        secret: Secret::from(secret),
        mutual: mutual.map(|(n, s)| MutualConfig {
            target_name: Some(n.into()),
            secret: Secret::from(s),
        }),
    });
    cfg
}

/// Write `data` at byte offset `at` of the LU (mirroring it into `model`),
/// read it back and compare.
fn write_read(lun: &Lun, model: &mut [u8], at: usize, data: &[u8]) {
    let bs = lun.info.block_size() as usize;
    assert_eq!(at % bs, 0);
    let lba = (at / bs) as u64;
    let (r, _) = lun.write(lba, data.to_vec(), false);
    r.unwrap_or_else(|e| panic!("write of {} bytes at LBA {lba}: {e:?}", data.len()));
    model[at..at + data.len()].copy_from_slice(data);
    let (r, back) = lun.read(lba, vec![0u8; data.len()]);
    r.unwrap_or_else(|e| panic!("read of {} bytes at LBA {lba}: {e:?}", data.len()));
    assert!(
        back == data,
        "read back {} bytes at LBA {lba}: differs from what was written",
        data.len()
    );
}

fn read_check(lun: &Lun, model: &[u8], at: usize, len: usize) {
    let bs = lun.info.block_size() as usize;
    let lba = (at / bs) as u64;
    let (r, back) = lun.read(lba, vec![0u8; len]);
    r.unwrap_or_else(|e| panic!("read of {len} bytes at LBA {lba}: {e:?}"));
    assert!(
        back[..] == model[at..at + len],
        "read of {len} bytes at LBA {lba} differs from the model"
    );
}

fn logout(s: Arc<Session>) {
    let s = Arc::try_unwrap(s)
        .ok()
        .expect("no other user of the session left");
    s.logout(Duration::from_secs(20)).expect("logout");
}

fn plain(g: &Guest) {
    let log = g.serial_log();
    let lun1_4k = log.contains("lun1 block_size 4096");
    eprintln!(
        "guest: {}",
        log.lines()
            .filter(|l| l.starts_with("lun1 block_size") || l.starts_with("auth:"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    // Discovery: LIO answers with its own address (10.0.2.15:3260 inside
    // QEMU's user network), not the forwarded one.
    let found = initiator::discover(&g.portal(), &InitiatorConfig::new(INITIATOR))
        .expect("SendTargets discovery");
    eprintln!("discovery: {found:?}");
    let t = found
        .iter()
        .find(|t| t.name == IQN)
        .unwrap_or_else(|| panic!("{IQN} not in the discovery answer {found:?}"));
    assert!(
        !t.portals.is_empty(),
        "no TargetAddress for {IQN}: {found:?}"
    );

    // Login without digests.
    let c = initiator::connect(&g.portal(), IQN, &InitiatorConfig::new(INITIATOR), None)
        .expect("login to LIO");
    eprintln!("negotiated: {}", c.negotiated);
    assert!(
        c.negotiated.contains("HeaderDigest=None DataDigest=None"),
        "{}",
        c.negotiated
    );
    let s = Arc::new(c.session);
    eprintln!("guest's view of the sessions: {}", g.ctl("info"));
    assert_eq!(g.sessions(), (1, 1), "the guest sees our session");

    let mut luns = report_luns(&s).expect("REPORT LUNS");
    eprintln!("REPORT LUNS (demo mode): {luns:?}");
    luns.sort_unstable();
    assert_eq!(luns, vec![0, 1], "LIO's LUNs");

    let l0 = Lun::open(Arc::clone(&s), 0).expect("open LUN 0");
    let i = &l0.info;
    eprintln!(
        "LUN 0: vendor {:?} product {:?} rev {:?} version {} tpgs {} serial {:?} lu_id {:?} \
         block {} blocks {} wp {} fua {} wce {:?} limits {:?} provisioning {:?}",
        i.inquiry.vendor,
        i.inquiry.product,
        i.inquiry.revision,
        i.inquiry.version,
        i.inquiry.tpgs,
        i.serial,
        i.lu_id,
        i.block_size(),
        i.blocks(),
        i.write_protected,
        i.fua,
        i.write_cache,
        i.limits,
        i.provisioning
    );
    assert_eq!(i.inquiry.vendor, "LIO-ORG");
    assert_eq!(i.block_size(), 512);
    assert_eq!(i.blocks(), (LUN0_SIZE / 512) as u64);
    assert!(!i.write_protected, "demo_mode_write_protect=0: writable");
    // lio-init sets a unit serial, as targetcli does; LIO then lists its VPD
    // pages (without one, page 0x00 is empty and nothing more is learnt).
    assert_eq!(i.serial.as_deref(), Some("sanroot-lio-lun0"), "VPD 0x80");
    assert!(i.lu_id.is_some(), "VPD 0x83 gives a LU name");
    assert!(
        i.max_transfer_blocks() == 0 || i.max_transfer_blocks() as usize * 512 >= 8 * MIB,
        "8 MiB fits in one command: {:?}",
        i.limits
    );

    // 16 MiB of pattern in pieces of 4 KiB, 1 MiB, 8 MiB (LIO's
    // FirstBurstLength is 64 KiB: most of it goes in answer to R2Ts) and
    // the rest, read back in other pieces, then compared with the guest's
    // backing file.
    let mut model0 = vec![0u8; LUN0_SIZE];
    let img = pattern(16 * MIB, 11);
    let pieces = [
        (0, 4096),
        (4096, MIB),
        (MIB + 4096, 8 * MIB),
        (9 * MIB + 4096, 7 * MIB - 4096),
    ];
    for (at, len) in pieces {
        let t0 = Instant::now();
        write_read(&l0, &mut model0, at, &img[at..at + len]);
        eprintln!(
            "LUN 0: {len} bytes at byte {at}: written and read back in {:.2}s",
            t0.elapsed().as_secs_f64()
        );
    }
    for at in (0..16 * MIB).step_by(4 * MIB) {
        read_check(&l0, &model0, at, 4 * MIB);
    }
    read_check(&l0, &model0, MIB - 512, MIB + 1024);
    // The last blocks of the LU.
    let last = LUN0_SIZE - 3 * 512;
    write_read(&l0, &mut model0, last, &pattern(3 * 512, 5));
    l0.flush().expect("SYNCHRONIZE CACHE");
    assert_eq!(
        g.md5(0, Some(16 * MIB)),
        md5_hex(&img),
        "the first 16 MiB of the guest's backing file are the pattern"
    );
    assert_eq!(
        g.md5(0, None),
        md5_hex(&model0),
        "the whole backing file of LUN 0 matches"
    );

    // Past the end: sanroot refuses before sending; sent anyway, LIO
    // answers CHECK CONDITION, ILLEGAL REQUEST.
    let (r, _) = l0.read(l0.info.blocks(), vec![0u8; 512]);
    assert!(matches!(r, Err(LunError::OutOfRange { .. })), "{r:?}");
    let (r, _) = l0.run(
        &cdb::read(l0.info.blocks(), 1, false),
        DataDir::Read(512),
        vec![0u8; 512],
    );
    eprintln!("READ past the end: {r:?}");
    match r {
        Err(LunError::Scsi {
            sense: Some(sense), ..
        }) => {
            assert_eq!(sense.key, SenseKey::IllegalRequest, "{sense:?}");
            assert_eq!(
                sense.asc, 0x21,
                "LOGICAL BLOCK ADDRESS OUT OF RANGE: {sense:?}"
            );
        }
        other => panic!("READ past the end: {other:?}"),
    }

    // LUN 1: 4096-byte blocks.
    let l1 = Lun::open(Arc::clone(&s), 1).expect("open LUN 1");
    let bs1 = l1.info.block_size() as usize;
    eprintln!("LUN 1: block {bs1} blocks {}", l1.info.blocks());
    assert_eq!(bs1, if lun1_4k { 4096 } else { 512 }, "LUN 1 block size");
    assert!(lun1_4k, "the guest could not set block_size=4096 on LUN 1");
    assert_eq!(l1.info.blocks(), (LUN1_SIZE / bs1) as u64);
    let mut model1 = vec![0u8; LUN1_SIZE];
    write_read(&l1, &mut model1, 5 * bs1, &pattern(3 * bs1, 21));
    write_read(&l1, &mut model1, 100 * bs1, &pattern(MIB, 22));
    write_read(&l1, &mut model1, LUN1_SIZE - bs1, &pattern(bs1, 23));
    let (r, _) = l1.write(0, vec![0u8; 512], false);
    assert!(matches!(r, Err(LunError::Unaligned { .. })), "{r:?}");
    l1.flush().expect("SYNCHRONIZE CACHE on LUN 1");
    assert_eq!(g.md5(1, None), md5_hex(&model1), "LUN 1's backing file");

    s.ping(Duration::from_secs(10)).expect("NOP-Out answered");
    drop(l0);
    drop(l1);
    logout(s);
    g.wait_sessions((0, 0));

    // CRC32C digests, both required, then header only.
    for (h, d, at, len) in [
        (
            DigestOffer::RequireCrc32c,
            DigestOffer::RequireCrc32c,
            16 * MIB,
            8 * MIB,
        ),
        (DigestOffer::PreferCrc32c, DigestOffer::None, 30 * MIB, MIB),
        (DigestOffer::None, DigestOffer::RequireCrc32c, 40 * MIB, MIB),
    ] {
        let mut cfg = InitiatorConfig::new(INITIATOR);
        cfg.header_digest = h;
        cfg.data_digest = d;
        let c = initiator::connect(&g.portal(), IQN, &cfg, None).expect("login with digests");
        eprintln!("negotiated ({h:?}, {d:?}): {}", c.negotiated);
        let on = |o: DigestOffer| {
            if o == DigestOffer::None {
                "None"
            } else {
                "CRC32C"
            }
        };
        let want = format!("HeaderDigest={} DataDigest={}", on(h), on(d));
        assert!(c.negotiated.contains(&want), "{want}: {}", c.negotiated);
        let s = Arc::new(c.session);
        let l = Lun::open(Arc::clone(&s), 0).expect("open LUN 0 with digests");
        let t0 = Instant::now();
        write_read(&l, &mut model0, at, &pattern(len, at as u8 ^ 0x5a));
        eprintln!(
            "LUN 0 with digests: {len} bytes written and read back in {:.2}s",
            t0.elapsed().as_secs_f64()
        );
        l.flush().expect("flush");
        drop(l);
        logout(s);
    }
    assert_eq!(
        g.md5(0, None),
        md5_hex(&model0),
        "LUN 0's backing file after the digest sessions"
    );
    g.wait_sessions((0, 0));
}

/// ALUA against LIO's own implementation: INQUIRY's TPGS, this path's
/// port and group from VPD 0x83, REPORT TARGET PORT GROUPS as the group's
/// state is changed through configfs, and the NOT READY sense a standby
/// path answers a READ with.
fn alua(g: &Guest) {
    let c = initiator::connect(&g.portal(), IQN, &InitiatorConfig::new(INITIATOR), None)
        .unwrap_or_else(|e| panic!("login for the ALUA checks: {e}"));
    let session = Arc::new(c.session);
    let lun = Lun::open(Arc::clone(&session), 0).expect("LUN 0");
    assert_ne!(lun.info.inquiry.tpgs, 0, "LIO reports ALUA support (TPGS)");
    drop(lun);
    let (port, group) = lun::path_port(&session, 0).expect("VPD 0x83");
    let port = port.expect("a relative target port designator");
    let t = lun::report_target_port_groups(&session, 0).expect("RTPG");
    eprintln!("alua: port {port}, group {group:?}, groups {:?}", t.groups);
    let ours = t.group_of_port(port).expect("this path's port in a group");
    assert_eq!(Some(ours.id), group, "VPD 0x83 and RTPG agree on the group");
    assert_eq!(
        ours.state,
        AccessState::ActiveOptimized,
        "LIO's default group"
    );
    for (v, want) in [
        (2, AccessState::Standby),
        (1, AccessState::ActiveNonOptimized),
        (3, AccessState::Unavailable),
        (0, AccessState::ActiveOptimized),
    ] {
        eprintln!("alua: {}", g.ctl(&format!("alua {v}")));
        let t = lun::report_target_port_groups(&session, 0).expect("RTPG");
        let ours = t.group_of_port(port).expect("this path's port in a group");
        assert_eq!((ours.id, ours.state), (7, want), "{:?}", t.groups);
        assert_eq!(lun::path_port(&session, 0).expect("VPD 0x83").1, Some(7));
        if want == AccessState::Standby {
            assert_eq!(read_sense(&session), Some(AluaSense::Standby));
        }
        if want == AccessState::ActiveNonOptimized {
            assert_eq!(
                read_sense(&session),
                None,
                "a non-optimized path serves I/O"
            );
        }
    }
    logout(session);
    g.wait_sessions((0, 0));
}

/// A 4 KiB READ of LUN 0 on `session`: the ALUA meaning of its sense, if
/// it failed. A unit attention (the state change itself) is read past.
fn read_sense(session: &Session) -> Option<AluaSense> {
    for _ in 0..4 {
        let cmd = ScsiCommand {
            lun: 0,
            cdb: pad16(&cdb::read(0, 8, false)),
            dir: DataDir::Read(4096),
            attr: 1,
        };
        let (r, _) = session.execute(cmd, vec![0u8; 4096]);
        let res = r.unwrap_or_else(|e| panic!("READ: {e}"));
        if res.status == 0 {
            return None;
        }
        let sense = res
            .sense
            .as_deref()
            .and_then(|s| Sense::parse(s).ok())
            .unwrap_or_else(|| panic!("status {} without sense", res.status));
        if sense.key == SenseKey::UnitAttention
            && AluaSense::of(&sense) != Some(AluaSense::TransitionFailed)
        {
            continue;
        }
        return Some(AluaSense::of(&sense).unwrap_or_else(|| panic!("READ failed: {sense}")));
    }
    panic!("unit attentions without end")
}

fn chap(g: &Guest) {
    let good = chap_cfg(
        "alice",
        "alice-secret-12",
        Some(("target-bob", "bob-secret-3456")),
    );
    let c = initiator::connect(&g.portal(), IQN, &good, None).unwrap_or_else(|e| {
        panic!(
            "mutual CHAP login: {e}\n--- guest dmesg ---\n{}\n--- guest info ---\n{}",
            g.ctl("dmesg 8"),
            g.ctl("info")
        )
    });
    eprintln!("negotiated (mutual CHAP): {}", c.negotiated);
    let s = Arc::new(c.session);
    assert_eq!(
        g.sessions(),
        (1, 1),
        "the guest sees our session (node ACL)"
    );
    // LIO lists a node ACL's mapped LUNs newest first ([1, 0] here): SPC
    // sets no order, so compare as a set.
    let mut luns = report_luns(&s).expect("REPORT LUNS");
    eprintln!("REPORT LUNS through the node ACL: {luns:?}");
    luns.sort_unstable();
    assert_eq!(luns, vec![0, 1]);
    let l = Lun::open(Arc::clone(&s), 0).expect("open LUN 0");
    let mut model0 = vec![0u8; LUN0_SIZE];
    write_read(&l, &mut model0, 8192, &pattern(64 * 1024, 77));
    l.flush().expect("flush");
    assert_eq!(g.md5(0, None), md5_hex(&model0), "LUN 0 after CHAP writes");
    drop(l);
    logout(s);
    g.wait_sessions((0, 0));

    // Wrong secret: refused, the secret is not in the message.
    let e = initiator::connect(
        &g.portal(),
        IQN,
        &chap_cfg("alice", "wrong-secret-99", None),
        None,
    )
    .err()
    .expect("a wrong secret must fail");
    eprintln!("wrong secret: {e}");
    let msg = e.to_string();
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(!msg.contains("wrong-secret-99"), "{msg}");

    // The target answers with another secret than we expect: we refuse it.
    let e = initiator::connect(
        &g.portal(),
        IQN,
        &chap_cfg(
            "alice",
            "alice-secret-12",
            Some(("target-bob", "not-bobs-secret")),
        ),
        None,
    )
    .err()
    .expect("a target answering with another secret must be refused");
    eprintln!("wrong target secret: {e}");
    assert!(matches!(e, LoginError::Auth(_)), "{e:?}");
    assert!(e.to_string().contains("authentication failed"), "{e}");

    // No credentials at all.
    let e = initiator::connect(&g.portal(), IQN, &InitiatorConfig::new(INITIATOR), None)
        .err()
        .expect("no credentials must fail");
    eprintln!("no credentials: {e}");
    eprintln!("guest dmesg: {}", g.ctl("dmesg 4"));
    // LIO drops the connection here instead of answering with a login
    // reject: all that counts is that it fails.
    let msg = e.to_string();
    assert!(
        msg.to_lowercase().contains("chap")
            || msg.contains("authentication")
            || msg.contains("closed the connection"),
        "{msg}"
    );

    // One-way CHAP against an ACL that has mutual credentials: mutual
    // CHAP is the initiator's choice (it sends CHAP_I/CHAP_C), and LIO
    // (iscsi_target_auth.c: "Initiator uses One way authentication") lets
    // an initiator that sends none log in with one-way CHAP.
    match initiator::connect(
        &g.portal(),
        IQN,
        &chap_cfg("alice", "alice-secret-12", None),
        None,
    ) {
        Ok(c) => c.session.logout(Duration::from_secs(20)).expect("logout"),
        Err(e) => panic!("one-way CHAP with mutual configured on LIO was refused: {e}"),
    }
    g.wait_sessions((0, 0));
}

#[test]
fn lio_in_a_guest_round_trips() {
    watchdog();
    let t0 = Instant::now();
    with_guest("plain", &[], |g| {
        plain(g);
        alua(g);
    });
    with_guest(
        "chap",
        &[
            "lio.chap=alice:alice-secret-12",
            "lio.mutual=target-bob:bob-secret-3456",
        ],
        chap,
    );
    eprintln!("lio_guest: total {:.1}s", t0.elapsed().as_secs_f64());
}
