//! `sanroot attach`, `detach` and `status`: a LUN as a kernel block device,
//! served by a daemon that lives as long as the device.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use super::common::{self, CmdError, ConnectArgs};
use crate::bridge::nbd::{self, NbdDevice, NbdOptions};
use crate::bridge::recover::{Reconnect, RecoveringBackend, RecoveryEvent, RecoveryPolicy};
use crate::bridge::ublk::{self, UblkDevice, UblkOptions};
use crate::bridge::{Backend, BlockOp, IscsiBackend};
use crate::iscsi::initiator;
use crate::iscsi::session::SessionEvent;
use crate::lun::Lun;
use crate::state::{self, DeviceRecord};
use crate::{daemon, exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeKind {
    Auto,
    Ublk,
    Nbd,
}

#[derive(Debug, Clone)]
pub struct AttachArgs {
    pub target: String,
    pub bridge: BridgeKind,
    pub foreground: bool,
    pub connect: ConnectArgs,
}

enum Event {
    Signal(Signal),
    DeviceGone,
    Session(SessionEvent),
    Recovery(RecoveryEvent),
}

pub fn attach(args: &AttachArgs) -> i32 {
    if args.foreground {
        return common::report(serve(args, None));
    }
    // Fork before any thread exists; the parent waits for the child to say
    // which device it made (or why it failed), prints it and exits.
    let (rd, wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return common::report(Err(CmdError::new(exit::FAILURE, format!("pipe: {e}")))),
    };
    // SAFETY: no other thread exists yet (main has only parsed arguments
    // and set up logging), so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => common::report(Err(CmdError::new(exit::FAILURE, format!("fork: {e}")))),
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(wr);
            let mut s = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut s);
            match s.split_once(' ') {
                Some(("ok", dev)) => {
                    crate::outln!("{}", dev.trim());
                    exit::OK
                }
                Some(("err", rest)) => {
                    let (code, msg) = rest.split_once(' ').unwrap_or(("1", rest));
                    eprintln!("sanroot: {}", msg.trim());
                    code.parse().unwrap_or(exit::FAILURE)
                }
                _ => {
                    eprintln!("sanroot: the attach daemon died before it was ready");
                    exit::FAILURE
                }
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            let _ = nix::unistd::setsid();
            let code = common::report(serve(args, Some(wr)));
            std::process::exit(code);
        }
    }
}

/// Tell the parent (if any) the outcome, then detach from its terminal.
fn ready(pipe: &mut Option<OwnedFd>, msg: &str) {
    if let Some(fd) = pipe.take() {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(msg.as_bytes());
        drop(f);
        // stdin/stdout/stderr to /dev/null: the parent's terminal is not ours.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors of this process.
                unsafe {
                    nix::libc::dup2(null.as_raw_fd(), fd);
                }
            }
        }
    }
}

fn serve(args: &AttachArgs, pipe: Option<OwnedFd>) -> Result<(), CmdError> {
    let mut pipe = pipe;
    let r = setup_and_serve(args, &mut pipe);
    if let Err(e) = &r {
        ready(&mut pipe, &format!("err {} {}\n", e.code, e.message));
    }
    r
}

fn setup_and_serve(args: &AttachArgs, pipe: &mut Option<OwnedFd>) -> Result<(), CmdError> {
    // Signals are taken by one thread with sigwait: block them everywhere
    // before any thread starts.
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        sigs.add(s);
    }
    let _ = sigs.thread_block();

    let (url, portal) = common::resolve_target(&args.target)?;
    let lun_n = url
        .lun
        .ok_or_else(|| CmdError::usage(format!("{url}: name the LUN (…/target-iqn/LUN)")))?;
    let mut cfg = common::initiator_config(&args.connect, Some(&url))?;
    // One ISID for the life of the device: a reconnect with it (and TSIH 0)
    // reinstates the session on the target instead of leaking the old one.
    cfg.isid = Some(crate::iscsi::login::random_isid());
    let (ev_tx, ev_rx) = mpsc::channel::<Event>();
    let (sess_tx, sess_rx) = mpsc::channel::<SessionEvent>();
    let conn = initiator::connect(&portal, &url.target, &cfg, Some(sess_tx.clone()))
        .map_err(common::login_error)?;
    let (isid, tsih, portal_s) = (conn.isid, conn.tsih, conn.portal.to_string());
    let session = Arc::new(conn.session);
    let lun = Lun::open(Arc::clone(&session), lun_n)
        .map_err(|e| CmdError::new(exit::IO, format!("{url}: {e}")))?;
    let info = lun.info.clone();
    drop(lun);
    let (rec_tx, rec_rx) = mpsc::channel::<RecoveryEvent>();
    let recovering = RecoveringBackend::new(
        IscsiBackend::new(session, info.clone()),
        Reconnect {
            portals: vec![portal.clone()],
            target: url.target.clone(),
            lun: lun_n,
            cfg: cfg.clone(),
            session_events: Some(sess_tx),
        },
        RecoveryPolicy::default(),
        Some(rec_tx),
    );
    let backend: Arc<dyn Backend> = recovering.clone();

    let kind = match args.bridge {
        BridgeKind::Auto => {
            if ublk::available() {
                BridgeKind::Ublk
            } else {
                BridgeKind::Nbd
            }
        }
        k => k,
    };
    // ublk's daemon gets its own mount namespace: its exit must never wait
    // on a mount of the device it serves.
    daemon::harden(kind == BridgeKind::Ublk);
    let ident = format!("sanroot:{}:{}", url.target, lun_n);
    let dev = match kind {
        BridgeKind::Ublk => {
            if let Err(why) = ublk::availability() {
                return Err(CmdError::new(
                    exit::FAILURE,
                    format!("ublk is not usable here: {why} (try --bridge nbd)"),
                ));
            }
            let opts = UblkOptions {
                // Memory is locked: keep the per-tag buffers modest.
                // One queue per CPU (up to 4), sharing the session's
                // command window between them.
                queues: UblkOptions::default().queues,
                depth: (cfg.session.queue_depth / UblkOptions::default().queues.max(1))
                    .clamp(8, 128),
                max_io_bytes: 256 * 1024,
                // Requests a killed daemon had taken are sent again by the
                // next one (same ISID: the session is reinstated), instead
                // of failing with EIO and aborting a journal.
                reissue: true,
                ..UblkOptions::default()
            };
            Device::Ublk(Box::new(
                UblkDevice::create(Arc::clone(&backend), opts).map_err(|e| {
                    CmdError::new(
                        exit::FAILURE,
                        format!("{e} (is ublk_drv loaded? run as root)"),
                    )
                })?,
            ))
        }
        _ => Device::nbd(
            NbdDevice::create(Arc::clone(&backend), NbdOptions::default(), &ident).map_err(
                |e| {
                    CmdError::new(
                        exit::FAILURE,
                        format!("{e} (is the nbd module loaded? run as root)"),
                    )
                },
            )?,
        ),
    };
    let path = dev.path();
    let record = DeviceRecord {
        device: path.clone(),
        bridge: dev.kind().into(),
        index: dev.index(),
        target: url.target.clone(),
        portal: portal_s,
        lun: lun_n,
        initiator: cfg.initiator_name.clone(),
        isid: state::hex(&isid),
        tsih,
        pid: std::process::id(),
        state: "running".into(),
        lu_id: info.identity(),
        size_bytes: info.capacity.bytes().unwrap_or(0),
        block_size: info.block_size(),
        read_only: info.write_protected,
    };
    let run = state::run_dir();
    if let Err(e) = state::save(&run, &record) {
        log::warn!("cannot write {}: {e}", run.display());
    }
    log::info!("{path}: serving {url} LUN {lun_n} ({})", info.capacity);
    if args.foreground {
        crate::outln!("{path}");
    }
    ready(pipe, &format!("ok {path}\n"));

    // Forward signals, session events and the end of the device.
    {
        let tx = ev_tx.clone();
        std::thread::spawn(move || {
            while let Ok(s) = sigs.wait() {
                if tx.send(Event::Signal(s)).is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = ev_tx.clone();
        std::thread::spawn(move || {
            for e in sess_rx {
                if tx.send(Event::Session(e)).is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = ev_tx.clone();
        std::thread::spawn(move || {
            for e in rec_rx {
                if tx.send(Event::Recovery(e)).is_err() {
                    return;
                }
            }
        });
    }
    let dev = Arc::new(dev);
    let waiter = {
        let tx = ev_tx.clone();
        let d = Arc::clone(&dev);
        std::thread::spawn(move || {
            d.wait();
            let _ = tx.send(Event::DeviceGone);
        })
    };
    drop(ev_tx);
    let mut rec = record;
    loop {
        match ev_rx.recv() {
            Ok(Event::Signal(s)) => {
                log::info!("{path}: {s:?}: detaching");
                if let Err(e) = dev.shut_down() {
                    log::error!("{path}: {e}");
                }
                let _ = waiter.join();
                break;
            }
            Ok(Event::DeviceGone) | Err(_) => {
                log::info!("{path}: disconnected by the kernel");
                break;
            }
            Ok(Event::Session(SessionEvent::Failed(m))) => {
                // The recovering backend takes it from here.
                log::error!("{path}: the iSCSI session failed: {m}");
            }
            Ok(Event::Recovery(e)) => {
                rec.state = match &e {
                    RecoveryEvent::Lost { .. } | RecoveryEvent::Retrying { .. } => {
                        "reconnecting".into()
                    }
                    RecoveryEvent::Recovered { tsih, .. } => {
                        rec.tsih = *tsih;
                        "running".into()
                    }
                    RecoveryEvent::Failed(_) => "failed".into(),
                };
                let _ = state::save(&run, &rec);
            }
            Ok(Event::Session(SessionEvent::LogoutRequested { within })) => {
                // The target wants this session gone: finish what is in
                // flight, flush and log out cleanly rather than be cut off.
                log::warn!("{path}: the target asks us to log out within {within} s: detaching");
                if let Err(e) = dev.shut_down() {
                    log::error!("{path}: {e}");
                }
                let _ = waiter.join();
                break;
            }
            Ok(Event::Session(e)) => log::warn!("{path}: target event: {e:?}"),
        }
    }
    if let Ok(d) = Arc::try_unwrap(dev)
        && let Err(e) = d.finish()
    {
        log::warn!("{path}: {e}");
    }
    // Everything acknowledged is on the target; make the target's cache
    // stable too, then log out.
    let (ftx, frx) = mpsc::channel();
    backend.submit(
        BlockOp::Flush,
        Vec::new(),
        Box::new(move |r, _| {
            let _ = ftx.send(r);
        }),
    );
    match frx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("{path}: final SYNCHRONIZE CACHE: {e}"),
        Err(_) => log::warn!("{path}: final SYNCHRONIZE CACHE did not complete in 30 s"),
    }
    state::remove(&run, &path);
    if let Err(e) = recovering
        .current()
        .session()
        .close(Duration::from_secs(10))
    {
        log::warn!("{path}: logout: {e}");
    }
    Ok(())
}

/// The device being served, whichever bridge.
enum Device {
    Nbd(std::sync::Mutex<Option<NbdDevice>>, u32, String),
    Ublk(Box<UblkDevice>),
}

impl Device {
    fn nbd(d: NbdDevice) -> Device {
        let (i, p) = (d.index(), d.path());
        Device::Nbd(std::sync::Mutex::new(Some(d)), i, p)
    }
    fn path(&self) -> String {
        match self {
            Device::Nbd(_, _, p) => p.clone(),
            Device::Ublk(u) => u.path(),
        }
    }
    fn index(&self) -> u32 {
        match self {
            Device::Nbd(_, i, _) => *i,
            Device::Ublk(u) => u.dev_id(),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Device::Nbd(..) => "nbd",
            Device::Ublk(_) => "ublk",
        }
    }
    /// Serve until the device goes away.
    fn wait(&self) {
        match self {
            Device::Nbd(m, _, _) => {
                // Take the server out so waiting does not hold the lock.
                let taken = m.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(mut d) = taken {
                    d.wait();
                }
            }
            Device::Ublk(u) => u.wait(),
        }
    }
    /// Ask the kernel to stop the device (from another thread than wait()).
    fn shut_down(&self) -> Result<(), String> {
        match self {
            Device::Nbd(_, i, _) => nbd::disconnect_index(*i).map_err(|e| e.to_string()),
            Device::Ublk(u) => u.shutdown().map_err(|e| e.to_string()),
        }
    }
    /// Release what is left once serving ended.
    fn finish(self) -> Result<(), String> {
        match self {
            Device::Nbd(..) => Ok(()),
            Device::Ublk(u) => u.stop().map_err(|e| e.to_string()),
        }
    }
}

pub fn detach(device: &str) -> i32 {
    common::report(detach_inner(device))
}

fn detach_inner(device: &str) -> Result<(), CmdError> {
    let run = state::run_dir();
    let dev = if device.starts_with("/dev/") {
        device.to_string()
    } else {
        format!("/dev/{device}")
    };
    let rec = state::load(&run, &dev).ok_or_else(|| {
        CmdError::usage(format!(
            "{dev} is not attached by sanroot (see `sanroot status`)"
        ))
    })?;
    if state::alive(rec.pid) {
        kill(Pid::from_raw(rec.pid as i32), Signal::SIGTERM).map_err(|e| {
            CmdError::new(
                exit::FAILURE,
                format!("signalling the daemon (pid {}): {e}", rec.pid),
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while state::alive(rec.pid) {
            if Instant::now() > deadline {
                return Err(CmdError::new(
                    exit::FAILURE,
                    format!("the daemon (pid {}) did not stop within 60 s", rec.pid),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else if rec.bridge == "nbd" {
        // The daemon is gone: disconnect the device ourselves.
        nbd::disconnect_index(rec.index)
            .map_err(|e| CmdError::new(exit::FAILURE, e.to_string()))?;
    }
    state::remove(&run, &dev);
    eprintln!("sanroot: detached {dev}");
    Ok(())
}

pub fn status(json_out: bool) -> i32 {
    let recs = state::load_all(&state::run_dir());
    let live = |r: &DeviceRecord| {
        if state::alive(r.pid) {
            r.state.clone()
        } else {
            "daemon-gone".to_string()
        }
    };
    if json_out {
        let v: Vec<_> = recs
            .iter()
            .map(|r| {
                let mut j = serde_json::to_value(r).unwrap_or(json!({}));
                j["state"] = json!(live(r));
                j
            })
            .collect();
        crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        crate::outln!(
            "{:<12} {:<6} {:<8} {:<22} {:<4} {:<8} {:<12} {}",
            "DEVICE",
            "BRIDGE",
            "STATE",
            "PORTAL",
            "LUN",
            "PID",
            "ISID/TSIH",
            "TARGET"
        );
        for r in &recs {
            crate::outln!(
                "{:<12} {:<6} {:<8} {:<22} {:<4} {:<8} {:<12} {}",
                r.device,
                r.bridge,
                live(r),
                r.portal,
                r.lun,
                r.pid,
                format!("{}/{}", &r.isid[..r.isid.len().min(12)], r.tsih),
                r.target
            );
        }
    }
    exit::OK
}
