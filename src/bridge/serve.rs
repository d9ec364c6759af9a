//! Serving a LUN as a kernel block device for as long as the device lives:
//! log in (trying each path in turn), open the LU, create the ublk or NBD
//! device over a [`RecoveringBackend`], record it under /run, tell whoever
//! started us that it is ready, then follow signals, session and recovery
//! events until the device goes; finally flush and log out.
//!
//! Shared by `sanroot attach` (one path from a URL) and `sanroot boot`
//! (the iBFT's or the command line's paths, with a hand-off once ready).
//! [`daemonize`] runs such a server in a background child and returns when
//! the child reports ready or failed.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use super::carrier::Carrier;
use super::nbd::{self, NbdDevice, NbdOptions};
use super::pathset::{Joined, PathEvent, PathSet, Timing};
use super::recover::{PathSpec, Reconnect, RecoveringBackend, RecoveryEvent, RecoveryPolicy};
use super::sessionpath::SessionConnector;
use super::ublk::{self, UblkDevice, UblkOptions};
use super::{Backend, BlockOp, IscsiBackend};
use crate::exit::{CmdError, report};
use crate::iscsi::initiator::{self, Connection, InitiatorConfig};
use crate::iscsi::session::{Session, SessionEvent};
use crate::lun::{Lun, LunInfo};
use crate::pathset::policy::PathPolicy;
use crate::scsi::sense::UnitAttentionReason;
use crate::state::{self, DeviceRecord};
use crate::{daemon, exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeKind {
    Auto,
    Ublk,
    Nbd,
}

impl BridgeKind {
    /// `Auto` made concrete: ublk when this kernel and process can use it.
    pub fn resolve(self) -> BridgeKind {
        match self {
            BridgeKind::Auto if ublk::available() => BridgeKind::Ublk,
            BridgeKind::Auto => BridgeKind::Nbd,
            k => k,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BridgeKind::Auto => "auto",
            BridgeKind::Ublk => "ublk",
            BridgeKind::Nbd => "nbd",
        }
    }
}

/// What to serve and how.
#[derive(Clone)]
pub struct ServeSpec {
    /// Tried in order for the first login; all of them for reconnects.
    pub paths: Vec<PathSpec>,
    pub lun: u64,
    /// The description names no LUN: serve `lun` if it is a disk, else the
    /// first disk the target reports ([`crate::lun::pick_disk`]), chosen
    /// once at the first login.
    pub lun_auto: bool,
    /// Initiator name, digests, session options; `auth` comes from each
    /// path and the ISID is fixed here for the life of the device.
    pub cfg: InitiatorConfig,
    pub bridge: BridgeKind,
    /// Keep retrying the first login (transient errors only) this long.
    pub login_wait: Duration,
    /// Print the device path on stdout when ready (foreground mode).
    pub print_path: bool,
    /// Ignore stop signals while the device is in use (mounted, held):
    /// the root disk must outlive every stray SIGTERM until the very end.
    pub keep_while_in_use: bool,
    /// Take back a device whose daemon died instead of making a new one.
    pub take_over: Option<TakeOver>,
    /// How I/O is spread over several paths.
    pub policy: PathPolicy,
    /// One session at a time even with several paths: the next path only
    /// when the session is lost (a target that refuses a second session
    /// from one initiator).
    pub single_session: bool,
    /// The boot session's record (/run/sanroot/boot.json), whose `paths`
    /// follow the paths' states.
    pub boot_record: Option<std::path::PathBuf>,
}

/// A device left by a daemon that died (killed, crashed): the kernel holds
/// its I/O (ublk user recovery, NBD's dead-connection timeout) until a new
/// daemon takes it back.
#[derive(Debug, Clone)]
pub struct TakeOver {
    pub bridge: BridgeKind,
    /// ublk device id or NBD index.
    pub index: u32,
    /// The dead daemon's ISID: logging in with it (TSIH 0) makes the
    /// target drop the dead session instead of keeping both.
    pub isid: [u8; 6],
    /// Its ISID on each portal, when every path had a session.
    pub isids: Vec<(String, [u8; 6])>,
    /// The LU's identity then: another disk is refused.
    pub lu_id: String,
    /// The device's size then (0: unknown, an old record).
    pub size_bytes: u64,
}

impl TakeOver {
    /// From the dead daemon's record of `device`.
    pub fn from_record(r: &DeviceRecord) -> Result<TakeOver, CmdError> {
        let bridge = match r.bridge.as_str() {
            "ublk" => BridgeKind::Ublk,
            "nbd" => BridgeKind::Nbd,
            b => {
                return Err(CmdError::new(
                    exit::FAILURE,
                    format!("{}: unknown bridge \"{b}\" in its record", r.device),
                ));
            }
        };
        let Some(isid) = parse_isid(&r.isid) else {
            return Err(CmdError::new(
                exit::FAILURE,
                format!(
                    "{}: the record's ISID \"{}\" is not 6 hex bytes",
                    r.device, r.isid
                ),
            ));
        };
        let isids = r
            .portals
            .iter()
            .filter_map(|p| parse_isid(&p.isid).map(|i| (p.portal.clone(), i)))
            .collect();
        if r.daemon_alive() {
            return Err(CmdError::usage(format!(
                "{} is still served by pid {}: nothing to take over",
                r.device, r.pid
            )));
        }
        Ok(TakeOver {
            bridge,
            index: r.index,
            isid,
            isids,
            lu_id: r.lu_id.clone(),
            size_bytes: r.size_bytes,
        })
    }
}

/// An ISID as a record writes it: 12 hex digits.
fn parse_isid(hex: &str) -> Option<[u8; 6]> {
    let mut isid = [0u8; 6];
    let ok = hex.len() == 12
        && isid.iter_mut().enumerate().all(|(i, b)| {
            hex.get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|v| *b = v)
                .is_some()
        });
    ok.then_some(isid)
}

/// Whether something holds the device: a mounted filesystem (on it or a
/// partition), a device-mapper or MD holder. The kernel refuses an
/// exclusive open of the whole disk then.
pub fn in_use(device: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    matches!(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(device),
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY)
    )
}

/// Called before the first login attempt through `paths[i]` (e.g. to bring
/// its NIC up). An error skips the path.
pub type PreparePath<'a> = dyn FnMut(usize) -> Result<(), String> + 'a;
/// Called once the device exists, before the starter is told it is ready
/// (e.g. to wait for partitions and write a hand-off). An error tears the
/// device down and fails the start.
pub type OnReady<'a> = dyn FnMut(&mut DeviceRecord, usize) -> Result<(), CmdError> + 'a;

enum Event {
    Signal(Signal),
    DeviceGone,
    Session(SessionEvent),
    Recovery(RecoveryEvent),
    /// A session event of one path of a path set.
    PathSession(usize, SessionEvent),
    Path(PathEvent),
    /// The LU may have changed (a unit attention or an async event said
    /// so): read it again.
    Rescan(UnitAttentionReason),
    /// The LU as read again, on this session.
    Probed(Option<Arc<Session>>, Result<LunInfo, String>),
}

/// Whether an async event's sense data says the LU may have changed
/// (CAPACITY DATA HAS CHANGED, REPORTED LUNS DATA HAS CHANGED — tgtd's
/// signal when a LU was replaced —, INQUIRY DATA HAS CHANGED).
fn lu_changed(sense: &[u8]) -> Option<UnitAttentionReason> {
    let s = crate::scsi::sense::Sense::parse(sense).ok()?;
    Some(UnitAttentionReason::from_asc(s.asc, s.ascq)).filter(|r| r.lu_may_have_changed())
}

/// Re-reads of the LU: one at a time; a request while one runs makes one
/// more run after it (the first may have read the LU before the change).
#[derive(Default)]
struct Rescans {
    running: bool,
    again: bool,
}

impl Rescans {
    fn request(&mut self, start: impl FnOnce()) {
        if self.running {
            self.again = true;
        } else {
            self.running = true;
            start();
        }
    }

    fn finished(&mut self, start: impl FnOnce()) {
        self.running = false;
        if std::mem::take(&mut self.again) {
            self.request(start);
        }
    }
}

/// Read the LU again on a session in use, off the I/O path, and post
/// the result to the serving loop.
fn probe(carrier: &Carrier, lun: u64, tx: &mpsc::Sender<Event>) {
    let Some(session) = carrier.session() else {
        let _ = tx.send(Event::Probed(None, Err("no path is up".into())));
        return;
    };
    let tx = tx.clone();
    let spawned = crate::threads::named("sanroot-rescan").spawn(move || {
        let r = Lun::open(Arc::clone(&session), lun)
            .map(|l| l.info)
            .map_err(|e| e.to_string());
        let _ = tx.send(Event::Probed(Some(session), r));
    });
    if let Err(e) = spawned {
        log::error!("cannot start a thread to re-read the LU: {e}");
    }
}

/// Run `body` in a background child and wait for it to report ready (or
/// fail); then print the device it names and return its exit code. With
/// `foreground`, run `body` here. Must be called before any thread exists.
pub fn daemonize(
    foreground: bool,
    body: impl FnOnce(Option<OwnedFd>) -> Result<(), CmdError>,
) -> i32 {
    if foreground {
        return report(body(None));
    }
    let (rd, wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return report(Err(CmdError::new(exit::FAILURE, format!("pipe: {e}")))),
    };
    // SAFETY: the caller guarantees no other thread exists yet, so the
    // child may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => report(Err(CmdError::new(exit::FAILURE, format!("fork: {e}")))),
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
                    eprintln!("sanroot: the daemon died before it was ready");
                    exit::FAILURE
                }
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            let _ = nix::unistd::setsid();
            let wr = Some(wr);
            let code = report(body(wr));
            std::process::exit(code);
        }
    }
}

/// Tell the starter (if any) the outcome, then leave its terminal.
pub fn ready(pipe: &mut Option<OwnedFd>, msg: &str) {
    if let Some(fd) = pipe.take() {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(msg.as_bytes());
        drop(f);
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            crate::daemon::stdio_to(&null);
        }
    }
}

/// Report a failure to the starter too.
pub fn fail(pipe: &mut Option<OwnedFd>, e: &CmdError) {
    ready(pipe, &format!("err {} {}\n", e.code, e.message));
}

/// Block the signals the daemon takes with sigwait (before any thread).
fn block_signals() -> SigSet {
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        sigs.add(s);
    }
    let _ = sigs.thread_block();
    sigs
}

/// The first login: each path in turn, again and again while the errors
/// are transient (no route yet, target still starting) and time is left.
/// Path `i` logs in with `isids[i]` when given (else `cfg`'s) and hands
/// its session events to `events(i)`. Returns the connection and the
/// index of the path that carried it.
pub fn first_login(
    paths: &[PathSpec],
    cfg: &InitiatorConfig,
    isids: &[[u8; 6]],
    wait: Duration,
    prepare: &mut PreparePath<'_>,
    events: &dyn Fn(usize) -> Option<mpsc::Sender<SessionEvent>>,
) -> Result<(Connection, usize), CmdError> {
    if paths.is_empty() {
        return Err(CmdError::usage("no path to the target"));
    }
    let deadline = Instant::now() + wait;
    let mut prepared = vec![None::<Result<(), String>>; paths.len()];
    let mut errors: Vec<String> = vec![String::new(); paths.len()];
    let mut backoff = Duration::from_millis(250);
    let mut tried_login = false;
    loop {
        let mut any_transient = false;
        for (i, p) in paths.iter().enumerate() {
            let ok = prepared[i].get_or_insert_with(|| prepare(i)).clone();
            if let Err(m) = ok {
                errors[i] = format!("path {} ({}): {m}", i + 1, p.portal);
                continue;
            }
            tried_login = true;
            let mut c = p.config(cfg);
            if let Some(isid) = isids.get(i) {
                c.isid = Some(*isid);
            }
            match initiator::connect(&p.portal, &p.target, &c, events(i)) {
                Ok(c) => {
                    if i > 0 {
                        log::warn!(
                            "logged in through path {} ({}) after the first failed: {}",
                            i + 1,
                            p.portal,
                            errors[0]
                        );
                    }
                    return Ok((c, i));
                }
                Err(e) => {
                    any_transient |= e.is_transient();
                    log::warn!("login to {} at {}: {e}", p.target, p.portal);
                    errors[i] = format!("path {} ({}): {e}", i + 1, p.portal);
                }
            }
        }
        if !any_transient || Instant::now() + backoff > deadline {
            // No path even got to a login: the network is the problem.
            let code = if tried_login {
                exit::LOGIN
            } else {
                exit::FAILURE
            };
            return Err(CmdError::new(code, errors.join("; ")));
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Log in, create the device and serve it until it goes away. `pipe`
/// reaches the starter (see [`daemonize`]); it is told "ok DEVICE" once
/// the device exists and `on_ready` succeeded, or the error.
pub fn serve(
    spec: &ServeSpec,
    pipe: &mut Option<OwnedFd>,
    prepare: &mut PreparePath<'_>,
    on_ready: &mut OnReady<'_>,
) -> Result<(), CmdError> {
    let r = serve_inner(spec, pipe, prepare, on_ready);
    if let Err(e) = &r {
        fail(pipe, e);
    }
    r
}

/// The sessions of a path set ping a silent target after 1 s and give
/// an unanswered ping 2 s: a path that went silent is found dead within
/// about 3 s and its commands move (issue 15's budget: 5 s from the loss
/// to the next completed write; LIO and tgtd answer a ping in
/// milliseconds even under load). One path alone keeps the gentler
/// defaults: there is nowhere to move to.
fn multipath_timeouts(o: &mut crate::iscsi::session::SessionOptions) {
    o.nop_interval = Some(Duration::from_secs(1));
    o.nop_timeout = Duration::from_secs(2);
}

/// One ISID per path when each has a session of its own (a dead daemon's
/// for the portals its record names, so the target replaces its sessions
/// instead of keeping them), else the device's one ISID for every path.
fn path_isids(spec: &ServeSpec, cfg: &InitiatorConfig, several: bool) -> Vec<[u8; 6]> {
    let one = cfg.isid.unwrap_or_else(crate::iscsi::login::random_isid);
    if !several {
        return vec![one; spec.paths.len()];
    }
    spec.paths
        .iter()
        .map(|p| {
            let portal = p.portal.to_string();
            spec.take_over
                .as_ref()
                .and_then(|t| t.isids.iter().find(|(q, _)| *q == portal))
                .map(|(_, isid)| *isid)
                .unwrap_or_else(crate::iscsi::login::random_isid)
        })
        .collect()
}

/// LU-changed and ALUA unit attentions seen by I/O: handled by the
/// serving loop, never on the session's threads.
fn ua_hook(ev_tx: &mpsc::Sender<Event>) -> super::UaHook {
    let tx = std::sync::Mutex::new(ev_tx.clone());
    Arc::new(move |reason| {
        let _ = tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Event::Rescan(reason));
    })
}

/// What the first login brought, for building the carrier.
struct FirstLogin {
    session: Arc<Session>,
    tpgt: Option<u16>,
    used: usize,
    info: LunInfo,
}

/// The carrier, every path (with one session, the first login's first)
/// and their ISIDs.
type Carried = (Carrier, Vec<PathSpec>, Vec<[u8; 6]>);

/// The carrier of the device's requests: a path set when there are
/// several paths (given, or learnt from SendTargets) and not one session
/// at a time ([`path_set`]), else one recovering session
/// ([`one_session`]). Its events are forwarded to `ev_tx`. Returns it with
/// every path and their ISIDs; fails (exit::FAILURE) only when a thread
/// forwarding its events cannot be started.
#[allow(clippy::too_many_arguments)]
fn carrier(
    spec: &ServeSpec,
    cfg: &InitiatorConfig,
    first: FirstLogin,
    isids: Vec<[u8; 6]>,
    prepare: &mut PreparePath<'_>,
    ev_tx: &mpsc::Sender<Event>,
    sess_tx: mpsc::Sender<SessionEvent>,
    path_sessions: mpsc::Sender<(usize, SessionEvent)>,
) -> Result<Carried, CmdError> {
    // The given paths, then the target's other portals from SendTargets
    // (multipath targets list them all), asked through the path that
    // worked first.
    let mut all = spec.paths.clone();
    all.extend(super::recover::discover_other_portals(
        &spec.paths[first.used],
        &spec.paths,
        cfg,
    ));
    if all.len() == 1 || spec.single_session {
        let (one, all) = one_session(spec, cfg, first, all, ev_tx, sess_tx)?;
        return Ok((one, all, isids));
    }
    path_set(spec, cfg, first, all, isids, prepare, ev_tx, path_sessions)
}

/// The first login's session, kept by a [`RecoveringBackend`] that logs
/// in again through `all` (the path that carried the first login first)
/// when it is lost. Session events go to `sess_tx`, recovery events and
/// unit attentions to `ev_tx`. Returns the carrier and the paths in the
/// order reconnects try them; fails (exit::FAILURE) when the thread
/// forwarding recovery events cannot be started.
fn one_session(
    spec: &ServeSpec,
    cfg: &InitiatorConfig,
    first: FirstLogin,
    all: Vec<PathSpec>,
    ev_tx: &mpsc::Sender<Event>,
    sess_tx: mpsc::Sender<SessionEvent>,
) -> Result<(Carrier, Vec<PathSpec>), CmdError> {
    let FirstLogin {
        session,
        tpgt,
        used,
        info,
    } = first;
    let on_ua = ua_hook(ev_tx);
    let all = used_first(&all, used);
    let (rec_tx, rec_rx) = mpsc::channel::<RecoveryEvent>();
    forward(ev_tx, rec_rx, Event::Recovery)?;
    let alua = super::sessionpath::alua_state(&session, &info);
    let backend = RecoveringBackend::new(
        IscsiBackend::new(session, info).with_ua_hook(Some(Arc::clone(&on_ua))),
        Reconnect {
            paths: all.clone(),
            lun: spec.lun,
            cfg: cfg.clone(),
            session_events: Some(sess_tx),
            on_ua: Some(on_ua),
        },
        RecoveryPolicy::default(),
        Some(rec_tx),
    );
    Ok((
        Carrier::One {
            backend,
            alua,
            tpgt,
        },
        all,
    ))
}

/// `paths` with `paths[used]` first, the others after it in their order.
fn used_first(paths: &[PathSpec], used: usize) -> Vec<PathSpec> {
    let mut order = vec![paths[used].clone()];
    order.extend(
        paths
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != used)
            .map(|(_, p)| p.clone()),
    );
    order
}

/// A session on each of `all`: the first login's joins as its path, the
/// other given paths are prepared (a failure is only logged) and the set
/// logs every other path in, with its quick pings. Paths beyond `isids`
/// get a new ISID. The sessions it logs in send their events to
/// `path_sessions` tagged with their path; path events and unit
/// attentions go to `ev_tx`. Returns the carrier, `all` (in its order)
/// and every path's ISID; fails (exit::FAILURE) when the thread
/// forwarding path events cannot be started.
#[allow(clippy::too_many_arguments)]
fn path_set(
    spec: &ServeSpec,
    cfg: &InitiatorConfig,
    first: FirstLogin,
    all: Vec<PathSpec>,
    mut isids: Vec<[u8; 6]>,
    prepare: &mut PreparePath<'_>,
    ev_tx: &mpsc::Sender<Event>,
    path_sessions: mpsc::Sender<(usize, SessionEvent)>,
) -> Result<Carried, CmdError> {
    let FirstLogin {
        session,
        tpgt,
        used,
        info,
    } = first;
    let on_ua = ua_hook(ev_tx);
    while isids.len() < all.len() {
        isids.push(crate::iscsi::login::random_isid());
    }
    let mut pcfg = cfg.clone();
    multipath_timeouts(&mut pcfg.session);
    // The first session may have logged in as the only path (more portals
    // were found through it): it now needs the quick pings of every path.
    session.set_ping(pcfg.session.nop_interval, pcfg.session.nop_timeout);
    let connector = Arc::new(SessionConnector {
        paths: all.clone(),
        isids: isids.clone(),
        lun: spec.lun,
        cfg: pcfg,
        first: info.clone(),
        on_ua: Some(on_ua),
        events: Some(path_sessions),
    });
    let mut joined: Vec<Option<Joined>> = (0..all.len()).map(|_| None).collect();
    joined[used] = Some(connector.join(session, tpgt, info.clone()));
    // The other paths' NICs (boot) come up before they log in.
    for i in (0..spec.paths.len()).filter(|&i| i != used) {
        if let Err(m) = prepare(i) {
            log::warn!("path {} ({}): {m}", i + 1, spec.paths[i].portal);
        }
    }
    let (pe_tx, pe_rx) = mpsc::channel::<PathEvent>();
    forward(ev_tx, pe_rx, Event::Path)?;
    let set = PathSet::new(
        info,
        spec.policy,
        joined,
        connector,
        Timing::default(),
        Some(pe_tx),
    );
    log::info!(
        "{} LUN {}: a session on each of {} paths ({}), policy {}",
        spec.paths[used].target,
        spec.lun,
        all.len(),
        all.iter()
            .map(|p| p.portal.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        spec.policy.name()
    );
    let portals = all.iter().map(|p| p.portal.to_string()).collect();
    Ok((Carrier::Set { set, portals }, all, isids))
}

/// Log in, open the LU, build the carrier, make (or take back) the device,
/// record it and tell the starter, then serve it until it goes; finally
/// flush and log out. Fails before the device is ready when the login,
/// the LU, the device or `on_ready` fails; after, only when a thread
/// cannot be started.
fn serve_inner(
    spec: &ServeSpec,
    pipe: &mut Option<OwnedFd>,
    prepare: &mut PreparePath<'_>,
    on_ready: &mut OnReady<'_>,
) -> Result<(), CmdError> {
    // Signals are taken by one thread with sigwait: block them everywhere
    // before any thread starts.
    let sigs = block_signals();
    let (cfg, several) = device_config(spec);
    let isids = path_isids(spec, &cfg, several);
    let (ev_tx, ev_rx) = mpsc::channel::<Event>();
    let (sess_tx, sess_rx) = mpsc::channel::<SessionEvent>();
    let (psess_tx, psess_rx) = mpsc::channel::<(usize, SessionEvent)>();
    let mut prepared: Vec<Option<Result<(), String>>> = vec![None; spec.paths.len()];
    let mut prep = |i: usize| prepared[i].get_or_insert_with(|| prepare(i)).clone();
    let (session, login) = log_in(spec, &cfg, &isids, &mut prep, several, &sess_tx, &psess_tx)?;
    let target = &spec.paths[login.used].target;
    let chosen = choose_lun(spec, &session, target)?;
    let spec = chosen.as_ref().unwrap_or(spec);
    let first = read_lu(spec, session, &login, target)?;
    let info = first.info.clone();
    let (carrier, all_paths, isids) = carrier(
        spec, &cfg, first, isids, &mut prep, &ev_tx, sess_tx, psess_tx,
    )?;
    let backend = carrier.backend();
    let ident = format!("sanroot:{target}:{}", spec.lun);
    let dev = make_device(spec, &backend, &cfg, &info, &ident)?;
    let dev_path = dev.path();
    let (lu_bytes, dev_bytes) = device_size(spec, &info, &dev_path);
    let mut record = device_record(&dev, target, &login, &cfg, &info, dev_bytes);
    record.portals = path_records(&all_paths, &isids, matches!(carrier, Carrier::Set { .. }));
    record.paths = carrier.paths(&record);
    let dev = Arc::new(dev);
    if let Err(e) = on_ready(&mut record, login.used) {
        log::error!("{dev_path}: {e}: removing the device");
        remove_device(dev, &carrier);
        return Err(e);
    }
    // The threads first: a failure is still the starter's to hear (after
    // publish it has been told "ok"), and the device is removed.
    let grew = lu_bytes > dev_bytes;
    let waiter = match start_event_threads(sigs, &ev_tx, sess_rx, psess_rx, &dev, grew) {
        Ok(w) => w,
        Err(e) => {
            log::error!("{dev_path}: {e}: removing the device");
            remove_device(dev, &carrier);
            return Err(e);
        }
    };
    let (run, boot_record) = publish(spec, target, &record, &dev_path, &info, pipe);
    let mut serving = Serving {
        spec,
        dev_path: &dev_path,
        dev: &dev,
        carrier: &carrier,
        first_path: login.used,
        info: &info,
        ident: &ident,
        run: &run,
        boot_record,
        record,
        dev_bytes,
        rescans: Rescans::default(),
        probe_tx: ev_tx,
    };
    // Detach (a signal) or Gone (the waiter saw the device go): either way
    // the waiter's wait has returned or is returning; its handle to the
    // device must be dropped before ours can be the last, or the device's
    // release (for ublk: DEL_DEV) would be skipped.
    let _ = serving.run(&ev_rx);
    let _ = waiter.join();
    if let Ok(d) = Arc::try_unwrap(dev)
        && let Err(e) = d.finish()
    {
        log::warn!("{dev_path}: {e}");
    }
    flush_and_log_out(&backend, &carrier, &dev_path, &run);
    Ok(())
}

/// The session settings for the life of the device. Returns them with
/// one ISID fixed (the dead daemon's when taking over), and whether each
/// path has a session of its own (then with the path set's quick pings).
fn device_config(spec: &ServeSpec) -> (InitiatorConfig, bool) {
    let mut cfg = spec.cfg.clone();
    if let Some(t) = &spec.take_over {
        // The dead daemon's ISID: the target replaces its session.
        cfg.isid = Some(t.isid);
    }
    // One ISID for the life of the device (per path, with several): a
    // reconnect with it (and TSIH 0) reinstates the session on the target
    // instead of leaking the old one.
    cfg.isid
        .get_or_insert_with(crate::iscsi::login::random_isid);
    let several = spec.paths.len() > 1 && !spec.single_session;
    if several {
        multipath_timeouts(&mut cfg.session);
    }
    (cfg, several)
}

/// The first login, its session aside: where it went (for the carrier)
/// and what the device record keeps of it.
struct Login {
    /// The index of the path that carried it.
    used: usize,
    portal: String,
    isid: [u8; 6],
    tsih: u16,
    tpgt: Option<u16>,
}

/// The first login ([`first_login`]), each session's events going to
/// `sess_tx`, or with `several` tagged with its path's index to
/// `psess_tx`. Returns the session and the login's facts; fails as
/// [`first_login`] does.
fn log_in(
    spec: &ServeSpec,
    cfg: &InitiatorConfig,
    isids: &[[u8; 6]],
    prep: &mut PreparePath<'_>,
    several: bool,
    sess_tx: &mpsc::Sender<SessionEvent>,
    psess_tx: &mpsc::Sender<(usize, SessionEvent)>,
) -> Result<(Arc<Session>, Login), CmdError> {
    let events_for = |i: usize| {
        if several {
            super::sessionpath::tagged(psess_tx, i)
        } else {
            Some(sess_tx.clone())
        }
    };
    let (conn, used) = first_login(&spec.paths, cfg, isids, spec.login_wait, prep, &events_for)?;
    let login = Login {
        used,
        portal: conn.portal.to_string(),
        isid: conn.isid,
        tsih: conn.tsih,
        tpgt: conn.tpgt,
    };
    log::info!(
        "logged in to {} at {} (ISID {}, TSIH {})",
        spec.paths[used].target,
        login.portal,
        state::hex(&login.isid),
        login.tsih
    );
    Ok((Arc::new(conn.session), login))
}

/// With `lun_auto`, the spec serving the LUN asked for if it is a disk,
/// else the first disk the target reports (asked on `session`). Returns
/// None when the spec names its LUN; fails (exit::IO) when the target
/// cannot say.
fn choose_lun(
    spec: &ServeSpec,
    session: &Session,
    target: &str,
) -> Result<Option<ServeSpec>, CmdError> {
    if !spec.lun_auto {
        return Ok(None);
    }
    let n = crate::lun::pick_disk(session, spec.lun)
        .map_err(|e| CmdError::new(exit::IO, format!("{target}: {e}")))?;
    if n != spec.lun {
        log::warn!(
            "{target}: no LUN given and LUN {} is not a disk: serving LUN {n}, the first disk the target reports",
            spec.lun
        );
    }
    Ok(Some(ServeSpec {
        lun: n,
        lun_auto: false,
        ..spec.clone()
    }))
}

/// Read the LU on the first session. Returns what the carrier is built
/// from; fails (exit::IO) when the LU cannot be read, or when it is not
/// the disk a device taken back was.
fn read_lu(
    spec: &ServeSpec,
    session: Arc<Session>,
    login: &Login,
    target: &str,
) -> Result<FirstLogin, CmdError> {
    let lun = Lun::open(Arc::clone(&session), spec.lun)
        .map_err(|e| CmdError::new(exit::IO, format!("{target} LUN {}: {e}", spec.lun)))?;
    let info = lun.info.clone();
    drop(lun);
    same_disk_as_taken_over(spec, target, &info)?;
    Ok(FirstLogin {
        session,
        tpgt: login.tpgt,
        used: login.used,
        info,
    })
}

/// Make the device over `backend`, or take back the one a dead daemon
/// left. Returns it; fails (exit::FAILURE) when the bridge cannot.
fn make_device(
    spec: &ServeSpec,
    backend: &Arc<dyn Backend>,
    cfg: &InitiatorConfig,
    info: &LunInfo,
    ident: &str,
) -> Result<Device, CmdError> {
    let kind = match &spec.take_over {
        Some(t) => t.bridge,
        None => spec.bridge.resolve(),
    };
    // ublk's daemon gets its own mount namespace: its exit must never wait
    // on a mount of the device it serves.
    daemon::harden(kind == BridgeKind::Ublk);
    let dev = match &spec.take_over {
        Some(t) => Device::take_over(t, backend, cfg, ident)?,
        None => Device::create(kind, backend, cfg, info, ident)?,
    };
    if spec.take_over.is_some() {
        log::warn!(
            "{}: taken back from the daemon that died; its held requests are served now",
            dev.path()
        );
    }
    Ok(dev)
}

/// The LU's size and the device's in the kernel: a device taken back
/// keeps the one it was made (or last grown) with. A device larger than
/// the LU is logged as an error. Returns (LU bytes, device bytes).
fn device_size(spec: &ServeSpec, info: &LunInfo, dev_path: &str) -> (u64, u64) {
    let lu_bytes = info.capacity.bytes().unwrap_or(0);
    let dev_bytes = match &spec.take_over {
        Some(t) if t.size_bytes > 0 => t.size_bytes,
        _ => lu_bytes,
    };
    if dev_bytes > lu_bytes {
        log::error!(
            "{dev_path}: {}",
            super::recover::shrink_message(
                dev_bytes / u64::from(info.block_size().max(1)),
                info.blocks(),
                info.block_size()
            )
        );
    }
    (lu_bytes, dev_bytes)
}

/// `on_ready` failed: stop and release the device, then log out. Errors
/// are ignored: the start fails with `on_ready`'s.
fn remove_device(dev: Arc<Device>, carrier: &Carrier) {
    let _ = dev.shut_down();
    if let Ok(d) = Arc::try_unwrap(dev) {
        let _ = d.finish();
    }
    let _ = carrier.close(Duration::from_secs(5));
}

/// Write the device's record under /run, say it is served, and tell the
/// starter it is ready. Returns the records' directories (/run's and
/// boot.json's with its name), held open: the boot daemon keeps updating
/// them after switch-root moved /run away from under it. Never fails: a
/// record that cannot be written is logged.
fn publish(
    spec: &ServeSpec,
    target: &str,
    record: &DeviceRecord,
    dev_path: &str,
    info: &LunInfo,
    pipe: &mut Option<OwnedFd>,
) -> (state::PinnedDir, Option<(state::PinnedDir, String)>) {
    let run = state::PinnedDir::open(&state::run_dir());
    let boot_record = spec.boot_record.as_ref().and_then(|b| {
        let name = b.file_name()?.to_string_lossy().into_owned();
        Some((state::PinnedDir::open(b.parent()?), name))
    });
    if let Err(e) = state::save_pinned(&run, record) {
        log::warn!("cannot write {}: {e}", run.path().display());
    }
    log::info!(
        "{dev_path}: serving {target} LUN {} ({})",
        spec.lun,
        info.capacity
    );
    if spec.print_path {
        crate::outln!("{dev_path}");
    }
    ready(pipe, &format!("ok {dev_path}\n"));
    (run, boot_record)
}

/// Start the threads that feed the serving loop on `ev_tx`: signals, the
/// sessions' events and the end of the device; first, when the LU `grew`
/// while no daemon served it, ask for it to be read again. Returns the
/// thread waiting for the device's end; fails (exit::FAILURE) when a
/// thread cannot be started.
fn start_event_threads(
    sigs: SigSet,
    ev_tx: &mpsc::Sender<Event>,
    sess_rx: mpsc::Receiver<SessionEvent>,
    psess_rx: mpsc::Receiver<(usize, SessionEvent)>,
    dev: &Arc<Device>,
    grew: bool,
) -> Result<std::thread::JoinHandle<()>, CmdError> {
    {
        let tx = ev_tx.clone();
        crate::threads::spawn("sanroot-signals", move || {
            while let Ok(s) = sigs.wait() {
                if tx.send(Event::Signal(s)).is_err() {
                    return;
                }
            }
        })
        .map_err(thread_error)?;
    }
    forward(ev_tx, sess_rx, Event::Session)?;
    forward(ev_tx, psess_rx, |(i, e)| Event::PathSession(i, e))?;
    if grew {
        // The LU grew while no daemon served it.
        let _ = ev_tx.send(Event::Rescan(UnitAttentionReason::CapacityChanged));
    }
    let tx = ev_tx.clone();
    let d = Arc::clone(dev);
    crate::threads::spawn("sanroot-devwait", move || {
        d.wait();
        let _ = tx.send(Event::DeviceGone);
    })
    .map_err(thread_error)
}

/// The record's paths: where to log in again, with each path's ISID
/// when each has a session of its own.
fn path_records(paths: &[PathSpec], isids: &[[u8; 6]], own: bool) -> Vec<state::PathRecord> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| state::PathRecord {
            portal: p.portal.to_string(),
            target: p.target.clone(),
            isid: isids
                .get(i)
                .filter(|_| own)
                .map(|id| state::hex(id))
                .unwrap_or_default(),
        })
        .collect()
}

/// The device's record in /run (what `status`, `detach` and
/// `attach --recover` read). No secret.
fn device_record(
    dev: &Device,
    target: &str,
    login: &Login,
    cfg: &InitiatorConfig,
    info: &LunInfo,
    size_bytes: u64,
) -> DeviceRecord {
    DeviceRecord {
        device: dev.path(),
        bridge: dev.kind().into(),
        index: dev.index(),
        target: target.to_string(),
        portal: login.portal.clone(),
        portals: Vec::new(),
        lun: info.lun,
        initiator: cfg.initiator_name.clone(),
        isid: state::hex(&login.isid),
        tsih: login.tsih,
        pid: std::process::id(),
        pid_start: state::start_time(std::process::id()).unwrap_or(0),
        state: "running".into(),
        lu_id: info.identity(),
        size_bytes,
        block_size: info.block_size(),
        read_only: info.write_protected,
        dumpable: crate::secret::dumpable(),
        paths: Vec::new(),
    }
}

/// A device taken back from a dead daemon must still be the disk it was.
fn same_disk_as_taken_over(spec: &ServeSpec, target: &str, info: &LunInfo) -> Result<(), CmdError> {
    match &spec.take_over {
        Some(t) if !t.lu_id.is_empty() && t.lu_id != info.identity() => Err(CmdError::new(
            exit::FAILURE,
            format!(
                "{target} LUN {} is now {}, not {} as when the device was made: refusing to serve another disk under it",
                spec.lun,
                info.identity(),
                t.lu_id
            ),
        )),
        _ => Ok(()),
    }
}

/// Everything acknowledged is on the target; make the target's cache
/// stable too, drop the device's record, then log out of every path.
fn flush_and_log_out(
    backend: &Arc<dyn Backend>,
    carrier: &Carrier,
    dev_path: &str,
    run: &state::PinnedDir,
) {
    let (ftx, frx) = mpsc::channel();
    backend.submit(
        BlockOp::Flush,
        Vec::new(),
        super::BlockDone::new(move |r, _| {
            let _ = ftx.send(r);
        }),
    );
    match frx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("{dev_path}: final SYNCHRONIZE CACHE: {e}"),
        Err(_) => log::warn!("{dev_path}: final SYNCHRONIZE CACHE did not complete in 30 s"),
    }
    state::remove_pinned(run, dev_path);
    if let Err(e) = carrier.close(Duration::from_secs(10)) {
        log::warn!("{dev_path}: logout: {e}");
    }
}

/// What the serving loop does after an event.
enum Flow {
    Serve,
    /// A signal: the device is shut down; wait for the kernel to let go.
    Detach,
    /// The kernel took the device away.
    Gone,
}

/// The daemon's state while it serves the device: what each event
/// changes (the record in /run, the device's size, the session).
struct Serving<'a> {
    spec: &'a ServeSpec,
    dev_path: &'a str,
    dev: &'a Arc<Device>,
    carrier: &'a Carrier,
    /// The path of the first login (its session events come untagged).
    first_path: usize,
    /// The LU as first read (its identity is checked on every re-read).
    info: &'a LunInfo,
    ident: &'a str,
    run: &'a state::PinnedDir,
    /// boot.json's directory (held open) and name, for a boot disk.
    boot_record: Option<(state::PinnedDir, String)>,
    record: DeviceRecord,
    /// The device's size in the kernel now.
    dev_bytes: u64,
    rescans: Rescans,
    probe_tx: mpsc::Sender<Event>,
}

impl Serving<'_> {
    /// Handle events until the device goes. Returns how it went:
    /// [`Flow::Detach`] after a signal, [`Flow::Gone`] when the kernel took
    /// it away (or every event's sender is gone).
    fn run(&mut self, events: &mpsc::Receiver<Event>) -> Flow {
        loop {
            match events.recv() {
                Ok(ev) => match self.handle(ev) {
                    Flow::Serve => {}
                    end => return end,
                },
                Err(_) => {
                    log::info!("{}: disconnected by the kernel", self.dev_path);
                    return Flow::Gone;
                }
            }
        }
    }

    /// One event: what it changes, and whether serving goes on.
    fn handle(&mut self, ev: Event) -> Flow {
        let dev_path = self.dev_path;
        match ev {
            Event::Signal(s) if self.spec.keep_while_in_use && in_use(dev_path) => {
                log::warn!(
                    "{dev_path}: {s:?} ignored: the device is in use (a mounted filesystem); it is served until it is released"
                );
            }
            Event::Signal(s) => {
                log::info!("{dev_path}: {s:?}: detaching");
                if let Err(e) = self.dev.shut_down() {
                    log::error!("{dev_path}: {e}");
                }
                return Flow::Detach;
            }
            Event::DeviceGone => {
                log::info!("{dev_path}: disconnected by the kernel");
                return Flow::Gone;
            }
            Event::Recovery(e) => {
                recovery_state(&mut self.record, &e);
                self.paths_changed();
            }
            Event::Session(e) => self.session_event(self.first_path, e),
            Event::PathSession(i, e) => self.session_event(i, e),
            Event::Path(e) => {
                self.path_event(&e);
                self.paths_changed();
            }
            Event::Rescan(reason) if reason.access_states_changed() => {
                if let Carrier::Set { set, .. } = self.carrier {
                    log::info!(
                        "{dev_path}: unit attention ({reason:?}): reading the paths' ALUA states again"
                    );
                    set.refresh_alua();
                }
            }
            Event::Rescan(reason) => {
                log::info!("{dev_path}: unit attention ({reason:?}): reading the LU again");
                self.rescan();
            }
            Event::Probed(session, r) => self.probed(session.as_ref(), r),
        }
        Flow::Serve
    }

    fn rescan(&mut self) {
        let (carrier, lun, tx) = (self.carrier, self.spec.lun, &self.probe_tx);
        self.rescans.request(|| probe(carrier, lun, tx));
    }

    /// The paths' states changed: the record (and the boot record) say so.
    fn paths_changed(&mut self) {
        self.record.paths = self.carrier.paths(&self.record);
        if let Carrier::Set { .. } = self.carrier {
            let up = self.record.paths.iter().any(|p| p.state == "up");
            if self.record.state != "failed" {
                self.record.state = if up { "running" } else { "reconnecting" }.into();
            }
        }
        let _ = state::save_pinned(self.run, &self.record);
        if let Some((dir, name)) = &self.boot_record
            && let Err(e) = update_boot_paths(dir, name, &self.record.paths)
        {
            log::warn!("{}/{name}: {e}", dir.path().display());
        }
    }

    /// A path of a path set was lost, came back, or I/O moved: said in the
    /// kernel log too.
    fn path_event(&self, e: &PathEvent) {
        let dev = self.dev_path;
        let Carrier::Set { set, portals } = self.carrier else {
            return;
        };
        let name = |i: &usize| portals.get(*i).cloned().unwrap_or_else(|| format!("#{i}"));
        match e {
            PathEvent::Down { index, reason } => crate::logging::kernel(
                log::Level::Error,
                &format!("{dev}: path {} lost: {reason}", name(index)),
            ),
            PathEvent::Up { index } => crate::logging::kernel(
                log::Level::Warn,
                &format!("{dev}: path {} rejoined", name(index)),
            ),
            PathEvent::Refused { index, reason } => crate::logging::kernel(
                log::Level::Error,
                &format!("{dev}: path {} refused, never used: {reason}", name(index)),
            ),
            PathEvent::Active { paths } if paths.is_empty() => crate::logging::kernel(
                log::Level::Error,
                &format!("{dev}: no usable path: I/O is held until one returns"),
            ),
            PathEvent::Active { paths } => {
                let st = set.status();
                let state = paths
                    .first()
                    .and_then(|i| st.get(*i))
                    .and_then(|s| s.alua)
                    .map(|a| a.name())
                    .unwrap_or("no ALUA");
                crate::logging::kernel(
                    log::Level::Warn,
                    &format!(
                        "{dev}: I/O now goes to {} ({state})",
                        paths.iter().map(name).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            _ => {}
        }
    }

    /// What the target said outside any command, on path `path`.
    fn session_event(&mut self, path: usize, e: SessionEvent) {
        let dev_path = self.dev_path;
        match e {
            SessionEvent::Failed(m) => match self.carrier {
                // The path set moves its commands and logs it in again.
                Carrier::Set { portals, .. } => log::warn!(
                    "{dev_path}: the session through {} failed: {m}",
                    portals.get(path).map(String::as_str).unwrap_or("a path")
                ),
                // The recovering backend takes it from here.
                Carrier::One { .. } => log::error!("{dev_path}: the iSCSI session failed: {m}"),
            },
            SessionEvent::LogoutRequested { within } => {
                // The target wants this session gone (maintenance, moving
                // the portal): finish what is in flight, log out cleanly and
                // log in again — the device stays.
                log::warn!(
                    "{dev_path}: the target asks us to log out within {within} s: renewing the session"
                );
                self.carrier.renew(
                    Some(path),
                    "the target asked for a logout".into(),
                    Duration::from_secs(u64::from(within)),
                    Duration::from_secs(2),
                );
            }
            SessionEvent::Dropping {
                event, time2wait, ..
            } => {
                log::warn!(
                    "{dev_path}: the target is dropping the {} (async event {event}): logging in again after {time2wait} s",
                    if event == 2 { "connection" } else { "session" }
                );
                self.carrier.renew(
                    Some(path),
                    "the target is going away".into(),
                    Duration::from_secs(2),
                    Duration::from_secs(u64::from(time2wait)),
                );
            }
            SessionEvent::ScsiEvent { sense, .. } if let Some(reason) = lu_changed(&sense) => {
                log::info!(
                    "{dev_path}: async event from the target ({reason:?}): reading the LU again"
                );
                self.rescan();
            }
            e => log::warn!("{dev_path}: target event: {e:?}"),
        }
    }

    /// The LU as read again: grow or shrink the device, or stop serving
    /// another disk.
    fn probed(&mut self, session: Option<&Arc<Session>>, r: Result<LunInfo, String>) {
        let dev_path = self.dev_path;
        match (session, r) {
            (Some(session), Ok(now)) => {
                if let Some(bytes) = lu_changed_size(
                    dev_path,
                    self.dev,
                    self.carrier,
                    session,
                    self.info,
                    now,
                    self.dev_bytes,
                    self.ident,
                ) {
                    self.dev_bytes = bytes;
                    self.record.size_bytes = bytes;
                }
                if self.carrier.failure().is_some() {
                    self.record.state = "failed".into();
                }
                let _ = state::save_pinned(self.run, &self.record);
            }
            (_, r) => log::warn!(
                "{dev_path}: reading the LU again: {}; the device keeps {} bytes (a reconnect reads it again)",
                r.err().unwrap_or_default(),
                self.dev_bytes
            ),
        }
        let (carrier, lun, tx) = (self.carrier, self.spec.lun, &self.probe_tx);
        self.rescans.finished(|| probe(carrier, lun, tx));
    }
}

/// The boot record's `paths` as they are now (its other keys kept).
fn update_boot_paths(
    dir: &state::PinnedDir,
    name: &str,
    paths: &[state::PathState],
) -> std::io::Result<()> {
    let text = dir.read(None, name)?;
    let mut v: serde_json::Value = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
    v["paths"] = serde_json::to_value(paths).map_err(std::io::Error::other)?;
    let out = serde_json::to_string_pretty(&v).map_err(std::io::Error::other)? + "\n";
    dir.write(None, name, out.as_bytes())
}

/// The record's `state` (and portal, TSIH) after a recovery event.
fn recovery_state(record: &mut DeviceRecord, e: &RecoveryEvent) {
    record.state = match e {
        RecoveryEvent::Lost { .. } | RecoveryEvent::Retrying { .. } => "reconnecting".into(),
        RecoveryEvent::Recovered { tsih, portal, .. } => {
            record.tsih = *tsih;
            record.portal = portal.clone();
            "running".into()
        }
        RecoveryEvent::Failed(_) => "failed".into(),
    };
}

/// The LU read again (`now`) on `session`: refuse another disk or block
/// size, serve a shrunk LU up to its end, grow the device for a grown one.
/// Returns the device's new size when it grew.
#[allow(clippy::too_many_arguments)]
fn lu_changed_size(
    dev_path: &str,
    dev: &Device,
    carrier: &Carrier,
    session: &Arc<Session>,
    first: &LunInfo,
    now: LunInfo,
    dev_bytes: u64,
    ident: &str,
) -> Option<u64> {
    if let Err(m) = super::recover::same_disk(first, &now) {
        log::error!("{dev_path}: {m}");
        carrier.give_up(m);
        return None;
    }
    let bs = first.block_size();
    let was = carrier.blocks();
    let blocks = now.blocks();
    let Some(lu_bytes) = now.capacity.bytes() else {
        log::error!(
            "{dev_path}: the LU now reports more than 16 EiB; the device keeps {dev_bytes} bytes"
        );
        return None;
    };
    if !carrier.resized(session, now) {
        log::info!(
            "{dev_path}: the session changed while the LU was read again; the reconnect read it itself"
        );
        return None;
    }
    if blocks < was {
        log::error!(
            "{dev_path}: {}",
            super::recover::shrink_message(was, blocks, bs)
        );
    }
    if lu_bytes <= dev_bytes {
        if blocks == was {
            log::info!("{dev_path}: the LU's size is unchanged ({lu_bytes} bytes)");
        }
        return None;
    }
    match dev.grow(lu_bytes, ident) {
        Ok(true) => {
            log::warn!("{dev_path}: grew from {dev_bytes} to {lu_bytes} bytes");
            Some(lu_bytes)
        }
        Ok(false) => {
            log::warn!(
                "{dev_path}: the LU grew from {dev_bytes} to {lu_bytes} bytes, but this kernel cannot resize a live ublk device (UBLK_U_CMD_UPDATE_SIZE, Linux 6.16+): the device keeps {dev_bytes} bytes; the new size appears after it is detached and attached again (or with --bridge nbd)"
            );
            None
        }
        Err(e) => {
            log::error!(
                "{dev_path}: the LU grew from {dev_bytes} to {lu_bytes} bytes but the device could not be resized: {e}; it keeps {dev_bytes} bytes"
            );
            None
        }
    }
}

fn forward<T: Send + 'static>(
    tx: &mpsc::Sender<Event>,
    rx: mpsc::Receiver<T>,
    wrap: fn(T) -> Event,
) -> Result<(), CmdError> {
    let tx = tx.clone();
    crate::threads::spawn("sanroot-events", move || {
        for e in rx {
            if tx.send(wrap(e)).is_err() {
                return;
            }
        }
    })
    .map(drop)
    .map_err(thread_error)
}

fn thread_error(e: std::io::Error) -> CmdError {
    CmdError::new(exit::FAILURE, format!("{e}: out of memory or threads"))
}

/// The device being served, whichever bridge.
enum Device {
    Nbd(std::sync::Mutex<Option<NbdDevice>>, u32, String),
    /// An NBD device taken back with RECONFIGURE: only its server thread.
    NbdThread(
        std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
        u32,
        String,
    ),
    Ublk(Box<UblkDevice>),
}

fn ublk_options(cfg: &InitiatorConfig) -> UblkOptions {
    UblkOptions {
        // The daemon's memory is locked, and ublk wants a buffer of the
        // largest request for every tag: tags x 256 KiB, all of it
        // resident. One queue, whose tags every CPU shares, with as many
        // tags as the session lets commands be in flight (up to 32): 8 MiB.
        // Queues per CPU would split those tags, and a single submitter
        // would see a fraction of them; the one TCP connection is what
        // orders the I/O anyway.
        queues: 1,
        depth: cfg.session.queue_depth.clamp(8, UBLK_TAGS),
        max_io_bytes: 256 * 1024,
        // Requests a killed daemon had taken are sent again by the next
        // one (same ISID: the session is reinstated), instead of failing
        // with EIO and aborting a journal.
        reissue: true,
        // Zero copy, where the kernel has it, on request
        // (SANROOT_UBLK_ZERO_COPY=1): see UblkOptions::zero_copy.
        zero_copy: std::env::var_os("SANROOT_UBLK_ZERO_COPY").is_some_and(|v| v == "1"),
        ..UblkOptions::default()
    }
}

/// Tags of the served ublk device, at most.
const UBLK_TAGS: u16 = 32;

impl Device {
    fn take_over(
        t: &TakeOver,
        backend: &Arc<dyn Backend>,
        cfg: &InitiatorConfig,
        ident: &str,
    ) -> Result<Device, CmdError> {
        match t.bridge {
            BridgeKind::Ublk => {
                let d = UblkDevice::recover(t.index, Arc::clone(backend), ublk_options(cfg))
                    .map_err(|e| {
                        CmdError::new(
                            exit::FAILURE,
                            format!("taking back /dev/ublkb{}: {e}", t.index),
                        )
                    })?;
                Ok(Device::Ublk(Box::new(d)))
            }
            _ => {
                let h = nbd::reconfigure(
                    t.index,
                    Arc::clone(backend),
                    NbdOptions::default().buffers,
                    ident,
                )
                .map_err(|e| {
                    CmdError::new(
                        exit::FAILURE,
                        format!("taking back /dev/nbd{}: {e}", t.index),
                    )
                })?;
                Ok(Device::NbdThread(
                    std::sync::Mutex::new(Some(h)),
                    t.index,
                    format!("/dev/nbd{}", t.index),
                ))
            }
        }
    }

    fn create(
        kind: BridgeKind,
        backend: &Arc<dyn Backend>,
        cfg: &InitiatorConfig,
        _info: &LunInfo,
        ident: &str,
    ) -> Result<Device, CmdError> {
        match kind {
            BridgeKind::Ublk => {
                if let Err(why) = ublk::availability() {
                    return Err(CmdError::new(
                        exit::FAILURE,
                        format!("ublk is not usable here: {why} (try --bridge nbd)"),
                    ));
                }
                let d =
                    UblkDevice::create(Arc::clone(backend), ublk_options(cfg)).map_err(|e| {
                        CmdError::new(
                            exit::FAILURE,
                            format!("{e} (is ublk_drv loaded? run as root)"),
                        )
                    })?;
                Ok(Device::Ublk(Box::new(d)))
            }
            _ => {
                let d = NbdDevice::create(Arc::clone(backend), NbdOptions::default(), ident)
                    .map_err(|e| {
                        CmdError::new(
                            exit::FAILURE,
                            format!("{e} (is the nbd module loaded? run as root)"),
                        )
                    })?;
                let (i, p) = (d.index(), d.path());
                Ok(Device::Nbd(std::sync::Mutex::new(Some(d)), i, p))
            }
        }
    }
    fn path(&self) -> String {
        match self {
            Device::Nbd(_, _, p) | Device::NbdThread(_, _, p) => p.clone(),
            Device::Ublk(u) => u.path(),
        }
    }
    fn index(&self) -> u32 {
        match self {
            Device::Nbd(_, i, _) | Device::NbdThread(_, i, _) => *i,
            Device::Ublk(u) => u.dev_id(),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Device::Nbd(..) | Device::NbdThread(..) => "nbd",
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
            Device::NbdThread(m, _, _) => {
                let taken = m.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(h) = taken {
                    let _ = h.join();
                }
            }
            Device::Ublk(u) => u.wait(),
        }
    }
    /// Give the device a new size. Ok(false): this kernel cannot (ublk
    /// before Linux 6.16).
    fn grow(&self, bytes: u64, ident: &str) -> Result<bool, String> {
        match self {
            Device::Nbd(_, i, _) | Device::NbdThread(_, i, _) => nbd::resize(*i, bytes, ident)
                .map(|()| true)
                .map_err(|e| e.to_string()),
            Device::Ublk(u) => u.update_size(bytes).map_err(|e| e.to_string()),
        }
    }
    /// Ask the kernel to stop the device (from another thread than wait()).
    fn shut_down(&self) -> Result<(), String> {
        match self {
            Device::Nbd(_, i, _) | Device::NbdThread(_, i, _) => {
                nbd::disconnect_index(*i).map_err(|e| e.to_string())
            }
            Device::Ublk(u) => u.shutdown().map_err(|e| e.to_string()),
        }
    }
    /// Release what is left once serving ended.
    fn finish(self) -> Result<(), String> {
        match self {
            Device::Nbd(..) | Device::NbdThread(..) => Ok(()),
            Device::Ublk(u) => u.stop().map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_follows_recovery() {
        let mut r: DeviceRecord = serde_json::from_str(
            r#"{"device":"/dev/ublkb0","bridge":"ublk","index":0,"target":"t","portal":"10.0.2.2:3260",
                "lun":0,"initiator":"i","isid":"00","tsih":1,"pid":1,"state":"running","lu_id":"naa.1",
                "size_bytes":512,"block_size":512,"read_only":false}"#,
        )
        .unwrap();
        let lost = RecoveryEvent::Lost {
            reason: "reset".into(),
            parked: 3,
        };
        recovery_state(&mut r, &lost);
        assert_eq!(r.state, "reconnecting");
        let back = RecoveryEvent::Recovered {
            attempt: 2,
            replayed: 3,
            portal: "10.0.2.3:3260".into(),
            tsih: 9,
        };
        recovery_state(&mut r, &back);
        assert_eq!(
            (r.state.as_str(), r.tsih, r.portal.as_str()),
            ("running", 9, "10.0.2.3:3260")
        );
        recovery_state(&mut r, &RecoveryEvent::Failed("another disk".into()));
        assert_eq!(r.state, "failed");
    }
}
