//! The path set's paths over real iSCSI sessions: a [`Path`] is a
//! logged-in session with its LU ([`IscsiBackend`]), and the connector
//! logs a path in with its own ISID (TSIH 0: the target reinstates the
//! path's old session instead of keeping it), checks it reaches the same
//! disk, and reads its ALUA state.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::pathset::{Connect, ConnectError, Joined, Path};
use super::recover::{PathSpec, same_disk};
use super::{Backend, BlockDone, BlockOp, IscsiBackend, UaHook};
use crate::iscsi::initiator::{self, InitiatorConfig};
use crate::iscsi::session::{Session, SessionEvent};
use crate::lun::{self, Lun, LunInfo};
use crate::scsi::alua::AccessState;

/// A path over one session.
pub struct SessionPath {
    backend: RwLock<Arc<IscsiBackend>>,
    /// Its relative target port and target port group (VPD 0x83).
    port: (Option<u16>, Option<u16>),
}

impl SessionPath {
    /// A path over `backend`'s session; `port` as [`lun::path_port`] read
    /// it.
    pub fn new(backend: IscsiBackend, port: (Option<u16>, Option<u16>)) -> SessionPath {
        SessionPath {
            backend: RwLock::new(Arc::new(backend)),
            port,
        }
    }

    fn backend(&self) -> Arc<IscsiBackend> {
        Arc::clone(&self.backend.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Path for SessionPath {
    fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone) {
        self.backend().submit(op, buf, done)
    }

    fn fence(&self) -> Result<(), String> {
        let b = self.backend();
        b.session()
            .lun_reset(b.info().lun)
            .map_err(|e| e.to_string())
    }

    fn cut(&self) {
        self.backend().session().abort("the path was given up on");
    }

    fn access_state(&self) -> Result<Option<(AccessState, bool)>, String> {
        let b = self.backend();
        if b.info().inquiry.tpgs == 0 {
            return Ok(None);
        }
        let groups =
            lun::report_target_port_groups(b.session(), b.info().lun).map_err(|e| e.to_string())?;
        Ok(port_state(&groups, self.port))
    }

    fn close(&self, within: Duration) -> Result<(), String> {
        self.backend()
            .session()
            .close(within)
            .map_err(|e| e.to_string())
    }

    fn session(&self) -> Option<Arc<Session>> {
        Some(Arc::clone(self.backend().session()))
    }

    fn resized(&self, info: &LunInfo) {
        let mut g = self.backend.write().unwrap_or_else(|p| p.into_inner());
        *g = Arc::new(g.with_info(info.clone()));
    }
}

/// The state and PREF bit of the group holding `port` (relative target
/// port, else the target port group VPD 0x83 named).
fn port_state(
    groups: &crate::scsi::alua::TargetPortGroups,
    (port, group): (Option<u16>, Option<u16>),
) -> Option<(AccessState, bool)> {
    port.and_then(|p| groups.group_of_port(p))
        .or_else(|| group.and_then(|g| groups.group(g)))
        .map(|g| (g.state, g.preferred))
}

/// This path's ALUA state: its port's group in REPORT TARGET PORT
/// GROUPS (the port from VPD 0x83). `None` when the LU has no ALUA (TPGS
/// 0) or does not say.
pub fn alua_state(session: &Session, info: &LunInfo) -> Option<AccessState> {
    if info.inquiry.tpgs == 0 {
        return None;
    }
    let port = lun::path_port(session, info.lun).ok()?;
    let groups = lun::report_target_port_groups(session, info.lun).ok()?;
    port_state(&groups, port).map(|(s, _)| s)
}

/// Logs the paths of one LU in.
pub struct SessionConnector {
    pub paths: Vec<PathSpec>,
    /// One ISID per path, kept for the device's life.
    pub isids: Vec<[u8; 6]>,
    pub lun: u64,
    /// Initiator name, digests, timeouts…; CHAP comes from each path.
    pub cfg: InitiatorConfig,
    /// The LU as first read: every path must reach this disk.
    pub first: LunInfo,
    pub on_ua: Option<UaHook>,
    /// Receives each path's session events, with the path's index.
    pub events: Option<Sender<(usize, SessionEvent)>>,
}

impl SessionConnector {
    /// A path already logged in (the first login): its LU is `info`.
    pub fn join(&self, session: Arc<Session>, tpgt: Option<u16>, info: LunInfo) -> Joined {
        self.joined(session, info, tpgt)
    }

    fn joined(&self, session: Arc<Session>, info: LunInfo, tpgt: Option<u16>) -> Joined {
        let (port, groups) = if info.inquiry.tpgs != 0 {
            let port = lun::path_port(&session, info.lun).unwrap_or((None, None));
            let groups = lun::report_target_port_groups(&session, info.lun).ok();
            (port, groups)
        } else {
            ((None, None), None)
        };
        let state = groups.as_ref().and_then(|g| port_state(g, port));
        let backend = IscsiBackend::new(session, info).with_ua_hook(self.on_ua.clone());
        Joined {
            io: Arc::new(SessionPath::new(backend, port)),
            alua: state.map(|s| s.0),
            preferred: state.is_some_and(|s| s.1),
            tpgt,
        }
    }
}

/// A sender for one session's events that hands them to `out` tagged
/// with the path's `index` (through a small thread that ends with the
/// session).
pub fn tagged(out: &Sender<(usize, SessionEvent)>, index: usize) -> Option<Sender<SessionEvent>> {
    let out = out.clone();
    let (tx, rx) = mpsc::channel::<SessionEvent>();
    crate::threads::named("sanroot-path-events")
        .spawn(move || {
            for e in rx {
                if out.send((index, e)).is_err() {
                    return;
                }
            }
        })
        .ok()?;
    Some(tx)
}

impl Connect for SessionConnector {
    fn connect(&self, index: usize) -> Result<Joined, ConnectError> {
        let retry = ConnectError::Retry;
        let path = self
            .paths
            .get(index)
            .ok_or_else(|| retry(format!("no path {index}")))?;
        let mut cfg = path.config(&self.cfg);
        cfg.isid = self.isids.get(index).copied();
        let c = initiator::connect(
            &path.portal,
            &path.target,
            &cfg,
            self.events.as_ref().and_then(|out| tagged(out, index)),
        )
        .map_err(|e| retry(format!("{}: {e}", path.portal)))?;
        let tpgt = c.tpgt;
        let session = Arc::new(c.session);
        let lu = match Lun::open(Arc::clone(&session), self.lun) {
            Ok(lu) => lu,
            Err(e) => {
                let _ = session.close(Duration::from_secs(2));
                return Err(retry(format!("{}: LUN {}: {e}", path.portal, self.lun)));
            }
        };
        if let Err(e) = same_disk(&self.first, &lu.info) {
            // Loudly, and never again: a path to another disk would
            // corrupt both.
            let _ = session.close(Duration::from_secs(2));
            return Err(ConnectError::Refused(format!(
                "{} ({} LUN {}): {e}",
                path.portal, path.target, self.lun
            )));
        }
        let info = lu.info.clone();
        drop(lu);
        Ok(self.joined(session, info, tpgt))
    }
}
