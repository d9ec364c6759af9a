//! A backend that survives the loss of its session: when the connection to
//! the target dies, the requests it was carrying are parked, a new session
//! is logged in with the *same ISID and TSIH 0* (so the target reinstates
//! the session, dropping the old one instead of leaking it, RFC 7143
//! §6.3.5), the LU is checked to be the same disk (VPD 0x83/0x80 identity
//! and size), and the parked requests are sent again.
//!
//! Nothing acknowledged is lost and nothing is acknowledged twice: a
//! request is acknowledged only after GOOD status, and a request that did
//! not get it is replayed (reads and writes are idempotent). By default the
//! wait for the path is unbounded (a root disk must not see I/O errors
//! because a switch rebooted); [`RecoveryPolicy::give_up_after`] bounds it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Backend, BlockDone, BlockError, BlockOp, IscsiBackend, UaHook};
use crate::completion::{Done, SLOTS, Sink, Slots};
use crate::iscsi::chap::AuthConfig;
use crate::iscsi::initiator::{self, InitiatorConfig};
use crate::iscsi::login::{LoginError, Portal};
use crate::iscsi::session::{Session, SessionEvent};
use crate::iscsi::text::DiscoveredTarget;
use crate::lun::{Lun, LunInfo};

/// How to come back.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryPolicy {
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Fail parked requests after this long without a path; None waits
    /// forever (the default, for root disks).
    pub give_up_after: Option<Duration>,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(15),
            give_up_after: None,
        }
    }
}

/// What the recovering backend tells its owner (for logs and `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryEvent {
    /// The session was lost; requests are held.
    Lost { reason: String, parked: usize },
    /// A reconnection attempt failed.
    Retrying { attempt: u32, error: String },
    /// A new session carries the LU again; parked requests were replayed.
    Recovered {
        attempt: u32,
        replayed: usize,
        portal: String,
        tsih: u16,
    },
    /// Recovery is impossible (another disk answers, or the time ran out):
    /// every request now fails.
    Failed(String),
}

/// One way to the LU: a portal, the target's name there and its CHAP
/// settings (a second iBFT target has its own).
#[derive(Clone, Debug)]
pub struct PathSpec {
    pub portal: Portal,
    pub target: String,
    pub auth: Option<AuthConfig>,
}

impl PathSpec {
    /// The initiator configuration for this path: `base` with its CHAP.
    pub fn config(&self, base: &InitiatorConfig) -> InitiatorConfig {
        let mut c = base.clone();
        c.auth = self.auth.clone();
        c
    }
}

/// At most this many portals are taken from a SendTargets answer.
const MAX_DISCOVERED: usize = 8;

/// The other portals of `via`'s target that a SendTargets answer lists and
/// `paths` does not have yet, each reached with `via`'s credentials:
/// reconnects can use them when every configured path is down.
///
/// Left out: other targets; host names (a static binary has no resolver);
/// the unspecified address; loopback addresses unless `via` itself is on
/// loopback (a target behind NAT or a port forward often lists its own
/// 127.0.0.1, which from here would be this machine); IPv6 link-local
/// addresses. At most `MAX_DISCOVERED`.
pub fn discovered_paths(
    via: &PathSpec,
    paths: &[PathSpec],
    found: &[DiscoveredTarget],
) -> Vec<PathSpec> {
    let addr = |p: &Portal| p.socket_addr().ok();
    let via_loopback = addr(&via.portal).is_some_and(|a| a.ip().is_loopback());
    let mut known: Vec<std::net::SocketAddr> =
        paths.iter().filter_map(|p| addr(&p.portal)).collect();
    let mut out = Vec::new();
    for t in found.iter().filter(|t| t.name == via.target) {
        for tp in &t.portals {
            let portal = Portal::new(tp.host.clone(), tp.port);
            let Some(a) = addr(&portal) else { continue };
            // A zone ("fe80::1%eth0") does not parse: link-local is left
            // out whether or not the target names one.
            let ip = a.ip();
            if ip.is_unspecified()
                || (ip.is_loopback() && !via_loopback)
                || crate::net::is_v6_link_local(&ip)
                || tp.port == 0
                || known.contains(&a)
                || out.len() >= MAX_DISCOVERED
            {
                continue;
            }
            known.push(a);
            out.push(PathSpec {
                portal,
                target: via.target.clone(),
                auth: via.auth.clone(),
            });
        }
    }
    out
}

/// Ask `via`'s portal (a discovery session, bounded by short timeouts) for
/// the other portals of its target; see [`discovered_paths`]. Best effort:
/// a target that refuses discovery just adds nothing (see
/// [`ask_other_portals`] for the note it leaves). A target that waives
/// authentication for discovery is accepted here, since logins through
/// what it lists still need the path's CHAP.
pub fn discover_other_portals(
    via: &PathSpec,
    paths: &[PathSpec],
    base: &InitiatorConfig,
) -> Vec<PathSpec> {
    let o = ask_other_portals(via, paths, base);
    match &o.note {
        Some(note) if o.refused => log::warn!("{note}"),
        Some(note) => log::debug!("{note}"),
        None => {}
    }
    o.paths
}

/// What a SendTargets for other portals brought.
#[derive(Debug, Default)]
pub struct OtherPortals {
    /// New paths (none when the discovery failed).
    pub paths: Vec<PathSpec>,
    /// Why nothing was learnt from the portal, in one line naming it, when
    /// the discovery failed; never an error that stops attach or boot.
    pub note: Option<String>,
    /// The portal refused the discovery login (wrong or missing
    /// credentials, not authorized…), as opposed to being unreachable or
    /// not speaking SendTargets: worth a warning, the fix is configuration.
    pub refused: bool,
}

/// [`discover_other_portals`] without the logging. The discovery session
/// logs in with `base.discovery_auth` when set (`--discovery-chap-*`),
/// else with `via`'s own CHAP.
pub fn ask_other_portals(
    via: &PathSpec,
    paths: &[PathSpec],
    base: &InitiatorConfig,
) -> OtherPortals {
    let mut cfg = via.config(base);
    cfg.isid = None;
    cfg.allow_no_auth = true;
    cfg.cap_timeouts(DISCOVERY_TIMEOUT);
    match initiator::discover(&via.portal, &cfg) {
        Ok(found) => {
            let more = discovered_paths(via, paths, &found);
            if !more.is_empty() {
                log::info!(
                    "{}: other portals from SendTargets, for reconnects: {}",
                    via.target,
                    more.iter()
                        .map(|p| p.portal.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            OtherPortals {
                paths: more,
                note: None,
                refused: false,
            }
        }
        Err(e) => {
            let refused = login_refused(&e);
            let hint = if !refused {
                ""
            } else if cfg.discovery_auth.is_some() {
                "; check the discovery credentials"
            } else {
                "; if its discovery needs other credentials than the session, give them (--discovery-chap-user, SANROOT_DISCOVERY_CHAP_*)"
            };
            OtherPortals {
                paths: Vec::new(),
                note: Some(format!(
                    "SendTargets at {} skipped: {e} (no other portals learnt{hint})",
                    via.portal
                )),
                refused,
            }
        }
    }
}

/// The target said no to the login itself: a refusal status (class 2,
/// 0x0201 for CHAP) or an authentication that did not come through.
fn login_refused(e: &LoginError) -> bool {
    use LoginError as L;
    matches!(
        e,
        L::Status { class: 2, .. }
            | L::Auth(_)
            | L::AuthRequired
            | L::AuthWaived
            | L::MutualAuthWaived
    )
}

/// Connect and login timeouts of the discovery above.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Connect and login timeouts on the first round over several paths.
const QUICK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to log in again. The ISID in `cfg` must be fixed.
#[derive(Clone)]
pub struct Reconnect {
    /// Paths to try in turn (the one in use first, then the second path
    /// and other portals from discovery).
    pub paths: Vec<PathSpec>,
    pub lun: u64,
    /// Initiator name, ISID, digests…; `auth` is taken from each path.
    pub cfg: InitiatorConfig,
    /// Receives the new sessions' target events.
    pub session_events: Option<Sender<SessionEvent>>,
    /// Told of LU-changed unit attentions on the new sessions, and of a
    /// LU found grown by a reconnect (as CAPACITY DATA HAS CHANGED).
    pub on_ua: Option<UaHook>,
}

type Parked = (BlockOp, Vec<u8>, BlockDone);

/// Requests sent on a session, by slot: what one the session lost needs to
/// be sent again, without an allocation per request.
struct Sent {
    me: Weak<RecoveringBackend>,
    slots: Slots<(u64, BlockOp, BlockDone)>,
}

impl Sink<Result<(), BlockError>> for Sent {
    fn done(self: Arc<Self>, token: usize, r: Result<(), BlockError>, buf: Vec<u8>) {
        let Some((generation, op, done)) = self.slots.finish(token, "recovery") else {
            return;
        };
        match r {
            Err(BlockError::Transport(reason)) => match self.me.upgrade() {
                Some(me) => me.lost(generation, op, buf, done, reason),
                None => done.call(Err(BlockError::Transport(reason)), buf),
            },
            other => done.call(other, buf),
        }
    }
}

pub struct RecoveringBackend {
    me: Weak<RecoveringBackend>,
    sent: Arc<Sent>,
    info: LunInfo,
    /// The LU's size in blocks as last read (it may grow or shrink while
    /// the device lives): what a reconnect compares the LU with.
    blocks: AtomicU64,
    current: Mutex<(u64, Arc<IscsiBackend>)>,
    generation: AtomicU64,
    parked: Mutex<Vec<Parked>>,
    recovering: AtomicBool,
    /// Set once recovery gave up; `failed` then holds why. Checked on
    /// every request, so the data path reads the flag, not the lock.
    has_failed: AtomicBool,
    failed: Mutex<Option<String>>,
    reconnect: Reconnect,
    policy: RecoveryPolicy,
    events: Option<Sender<RecoveryEvent>>,
}

impl RecoveringBackend {
    pub fn new(
        first: IscsiBackend,
        reconnect: Reconnect,
        policy: RecoveryPolicy,
        events: Option<Sender<RecoveryEvent>>,
    ) -> Arc<RecoveringBackend> {
        Arc::new_cyclic(|me| RecoveringBackend {
            me: me.clone(),
            sent: Arc::new(Sent {
                me: me.clone(),
                slots: Slots::with_capacity(SLOTS),
            }),
            info: first.info().clone(),
            blocks: AtomicU64::new(first.info().blocks()),
            current: Mutex::new((1, Arc::new(first))),
            generation: AtomicU64::new(1),
            parked: Mutex::new(Vec::new()),
            recovering: AtomicBool::new(false),
            has_failed: AtomicBool::new(false),
            failed: Mutex::new(None),
            reconnect,
            policy,
            events,
        })
    }

    /// The backend now carrying requests (e.g. for a final flush).
    pub fn current(&self) -> Arc<IscsiBackend> {
        Arc::clone(&self.current.lock().unwrap_or_else(|p| p.into_inner()).1)
    }

    /// The LU's size in blocks as last read.
    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::SeqCst)
    }

    /// The LU was read again on `session` (after a capacity change): from
    /// now on requests are checked against `info` (I/O beyond a shrunk
    /// LU's end fails with ENOSPC). False when `session` is no longer the
    /// one in use (a reconnect re-read the LU itself meanwhile).
    pub fn resized(&self, session: &Arc<crate::iscsi::session::Session>, info: LunInfo) -> bool {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(g.1.session(), session) {
            return false;
        }
        self.blocks.store(info.blocks(), Ordering::SeqCst);
        g.1 = Arc::new(g.1.with_info(info));
        true
    }

    fn emit(&self, e: RecoveryEvent) {
        match &e {
            RecoveryEvent::Lost { reason, parked } => {
                log::error!(
                    "iSCSI path lost ({reason}); holding {parked} request(s) and reconnecting"
                )
            }
            RecoveryEvent::Retrying { attempt, error } => {
                log::warn!("reconnect attempt {attempt} failed: {error}")
            }
            RecoveryEvent::Recovered {
                attempt,
                replayed,
                portal,
                tsih,
            } => log::warn!(
                "reconnected to {portal} after {attempt} attempt(s) (TSIH {tsih}); replayed {replayed} request(s)"
            ),
            RecoveryEvent::Failed(m) => log::error!("recovery failed: {m}"),
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// A request failed on session `generation` because the session died.
    fn lost(&self, generation: u64, op: BlockOp, buf: Vec<u8>, done: BlockDone, reason: String) {
        if let Some(m) = self.failure() {
            return done.call(Err(BlockError::Io(m)), buf);
        }
        if generation < self.generation.load(Ordering::SeqCst)
            && !self.recovering.load(Ordering::SeqCst)
        {
            // A late failure from a session already replaced: just resend.
            return self.submit(op, buf, done);
        }
        let parked = {
            let mut p = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            p.push((op, buf, done));
            p.len()
        };
        if !self.recovering.swap(true, Ordering::SeqCst) {
            self.emit(RecoveryEvent::Lost { reason, parked });
            if let Some(me) = self.me.upgrade() {
                let _ = crate::threads::named("sanroot-recover").spawn(move || me.recover());
            }
        }
    }

    fn recover(&self) {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // The paths in their order (the boot path first), each in turn:
            // back to the first once it answers again.
            let n = self.reconnect.paths.len().max(1);
            let index = (attempt as usize - 1) % n;
            let Some(path) = self.reconnect.paths.get(index) else {
                return self.give_up("no path to reconnect through".into());
            };
            let portal = &path.portal;
            // With another path to go to, the first round over the paths
            // does not wait the full timeouts on a portal that went silent
            // (a blackholed route, a hung target): a healthy target answers
            // a connect and a login in milliseconds. Later rounds, when
            // every path failed once, wait the full time again.
            let quick = n > 1 && (attempt as usize) <= n;
            match self.try_once(path, quick) {
                Ok((backend, tsih, grew)) => {
                    let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                    *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
                        (generation, Arc::new(backend));
                    let parked: Vec<Parked> =
                        std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()));
                    self.recovering.store(false, Ordering::SeqCst);
                    let replayed = parked.len();
                    for (op, buf, done) in parked {
                        self.submit(op, buf, done);
                    }
                    // Requests parked while we were replaying.
                    let late: Vec<Parked> =
                        std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()));
                    for (op, buf, done) in late {
                        self.submit(op, buf, done);
                    }
                    self.emit(RecoveryEvent::Recovered {
                        attempt,
                        replayed,
                        portal: portal.to_string(),
                        tsih,
                    });
                    // The owner grows the device as for the unit attention
                    // (the new session carries it now).
                    if grew && let Some(hook) = &self.reconnect.on_ua {
                        hook(crate::scsi::sense::UnitAttentionReason::CapacityChanged);
                    }
                    return;
                }
                Err(Fatal(m)) => return self.give_up(m),
                Err(Retry(m)) => {
                    self.emit(RecoveryEvent::Retrying {
                        attempt,
                        error: m.clone(),
                    });
                    if let Some(limit) = self.policy.give_up_after
                        && start.elapsed() >= limit
                    {
                        return self.give_up(format!("no path to the target for {limit:?}: {m}"));
                    }
                }
            }
            let exp = self
                .policy
                .first_backoff
                .saturating_mul(1u32 << attempt.min(10))
                .min(self.policy.max_backoff);
            let mut r = [0u8; 1];
            crate::nonblocking_random(&mut r);
            std::thread::sleep(exp.mul_f64(0.75 + f64::from(r[0]) / 512.0));
        }
    }

    /// The target asked for this session to end (a logout request, or it
    /// is going away): hold new requests, let the ones in flight finish,
    /// log out, wait `pause` (its Time2Wait), and log in again — the next
    /// path first — with the same ISID. The filesystem sees nothing.
    pub fn renew(&self, reason: String, within: Duration, pause: Duration) {
        if self.failure().is_some() || self.recovering.swap(true, Ordering::SeqCst) {
            return;
        }
        self.emit(RecoveryEvent::Lost { reason, parked: 0 });
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let _ = crate::threads::named("sanroot-renew").spawn(move || {
            let old = me.current();
            if let Err(e) = old.session().close(within.max(Duration::from_secs(1))) {
                log::warn!("logout before renewing the session: {e}");
            }
            drop(old);
            std::thread::sleep(pause);
            me.recover();
        });
    }

    /// Why recovery gave up or requests are refused, if so.
    pub fn failure(&self) -> Option<String> {
        if !self.has_failed.load(Ordering::SeqCst) {
            return None;
        }
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Refuse every request from now on, the held ones too (no path
    /// left, or the LU became another disk).
    pub fn give_up(&self, m: String) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        self.has_failed.store(true, Ordering::SeqCst);
        self.emit(RecoveryEvent::Failed(m.clone()));
        let parked: Vec<Parked> =
            std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()));
        self.recovering.store(false, Ordering::SeqCst);
        for (_, buf, done) in parked {
            done.call(Err(BlockError::Io(m.clone())), buf);
        }
    }

    fn try_once(&self, path: &PathSpec, quick: bool) -> Result<(IscsiBackend, u16, bool), Outcome> {
        let r = &self.reconnect;
        let mut cfg = path.config(&r.cfg);
        if quick {
            cfg.cap_timeouts(QUICK_TIMEOUT);
        }
        let c = initiator::connect(&path.portal, &path.target, &cfg, r.session_events.clone())
            .map_err(|e| {
                if e.is_transient() {
                    Retry(e.to_string())
                } else {
                    // Wrong credentials or an unknown target now: keep trying
                    // all the same (a target being reconfigured says so too),
                    // but say it.
                    Retry(format!("{e} (not a network error)"))
                }
            })?;
        let tsih = c.tsih;
        let session = Arc::new(c.session);
        let lun = Lun::open(Arc::clone(&session), r.lun)
            .map_err(|e| Retry(format!("probing LUN {}: {e}", r.lun)))?;
        same_disk(&self.info, &lun.info).map_err(Fatal)?;
        // A grown LU is harmless (the owner grows the device); a shrunk one
        // is served up to its new end, as when the target reports it live.
        let (was, now) = (self.blocks(), lun.info.blocks());
        if now < was {
            log::error!("{}", shrink_message(was, now, self.info.block_size()));
        }
        self.blocks.store(now, Ordering::SeqCst);
        let b = IscsiBackend::new(session, lun.info).with_ua_hook(r.on_ua.clone());
        Ok((b, tsih, now > was))
    }
}

/// Whether `now` (the LU read again) is still the disk `first` was: the
/// same identity (VPD 0x83/0x80) and block size. Another block size changes
/// what every LBA means. Err: why I/O must stop.
pub fn same_disk(first: &LunInfo, now: &LunInfo) -> Result<(), String> {
    let (was, is) = (first.identity(), now.identity());
    if was != is {
        return Err(format!(
            "the LU's identity changed from {was} to {is}: refusing I/O to what may be another disk"
        ));
    }
    if now.block_size() != first.block_size() {
        return Err(format!(
            "the LU's block size changed from {} to {} bytes: refusing I/O until it is attached again",
            first.block_size(),
            now.block_size()
        ));
    }
    Ok(())
}

/// The loud error for a LU found smaller than it was.
pub fn shrink_message(was: u64, now: u64, block_size: u32) -> String {
    let bs = u64::from(block_size);
    format!(
        "the LU shrank from {} to {} bytes ({was} to {now} blocks of {block_size}): I/O beyond the new end fails (ENOSPC); what was stored there is gone from the target",
        was.saturating_mul(bs),
        now.saturating_mul(bs)
    )
}

enum Outcome {
    Retry(String),
    Fatal(String),
}
use Outcome::{Fatal, Retry};

impl Backend for RecoveringBackend {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    fn sessions(&self, into: &mut Vec<Arc<Session>>) {
        if !self.recovering.load(Ordering::SeqCst) {
            self.current().sessions(into);
        }
    }

    fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone) {
        if let Some(m) = self.failure() {
            return done.call(Err(BlockError::Io(m)), buf);
        }
        if self.recovering.load(Ordering::SeqCst) {
            self.parked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((op, buf, done));
            // Recovery may have finished between the check and the push.
            if !self.recovering.load(Ordering::SeqCst) {
                let late: Vec<Parked> =
                    std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()));
                for (op, buf, done) in late {
                    self.submit(op, buf, done);
                }
            }
            return;
        }
        let (generation, backend) = {
            let g = self.current.lock().unwrap_or_else(|p| p.into_inner());
            (g.0, Arc::clone(&g.1))
        };
        let slot = self.sent.slots.insert((generation, op, done));
        backend.submit(op, buf, Done::slot(self.sent.clone(), slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::text::Portal as TextPortal;

    fn path(host: &str, port: u16) -> PathSpec {
        PathSpec {
            portal: Portal::new(host, port),
            target: "iqn.2026-12.org.sanroot:t".into(),
            auth: None,
        }
    }

    fn answer(name: &str, portals: &[(&str, u16)]) -> DiscoveredTarget {
        DiscoveredTarget {
            name: name.into(),
            portals: portals
                .iter()
                .map(|(h, p)| TextPortal {
                    host: (*h).into(),
                    port: *p,
                    tpgt: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn discovery_adds_the_targets_other_portals_once() {
        let via = path("192.0.2.10", 3260);
        let paths = vec![via.clone(), path("192.0.2.11", 3260)];
        let found = vec![
            answer(
                "iqn.2026-12.org.sanroot:t",
                &[
                    ("192.0.2.10", 3260),   // the path in use
                    ("192.0.2.11", 3260),   // already configured
                    ("198.51.100.7", 3260), // new
                    ("198.51.100.7", 3260), // listed twice
                    ("2001:db8::7", 3261),  // new, IPv6
                    ("127.0.0.1", 3260),    // the target's own loopback
                    ("0.0.0.0", 3260),      // unspecified
                    ("fe80::1", 3260),      // link-local without a zone
                    ("san.example", 3260),  // a name: no resolver
                ],
            ),
            answer("iqn.2026-12.org.sanroot:other", &[("203.0.113.1", 3260)]),
        ];
        let more = discovered_paths(&via, &paths, &found);
        let got: Vec<String> = more.iter().map(|p| p.portal.to_string()).collect();
        assert_eq!(got, ["198.51.100.7:3260", "[2001:db8::7]:3261"]);
        assert!(more.iter().all(|p| p.target == via.target));
    }

    #[test]
    fn loopback_portals_are_kept_when_the_path_is_on_loopback() {
        let via = path("127.0.0.1", 3260);
        let found = vec![answer(
            "iqn.2026-12.org.sanroot:t",
            &[("127.0.0.1", 3260), ("127.0.0.2", 3261)],
        )];
        let more = discovered_paths(&via, std::slice::from_ref(&via), &found);
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].portal.to_string(), "127.0.0.2:3261");
    }

    #[test]
    fn discovery_adds_a_bounded_number() {
        let via = path("192.0.2.10", 3260);
        let many: Vec<(String, u16)> = (1..=40).map(|i| (format!("10.9.0.{i}"), 3260)).collect();
        let refs: Vec<(&str, u16)> = many.iter().map(|(h, p)| (h.as_str(), *p)).collect();
        let found = vec![answer("iqn.2026-12.org.sanroot:t", &refs)];
        assert_eq!(
            discovered_paths(&via, std::slice::from_ref(&via), &found).len(),
            MAX_DISCOVERED
        );
    }
}
