//! The path set's paths over real iSCSI sessions: a [`Path`] is a
//! logged-in session with its LU ([`IscsiBackend`]), and the connector
//! logs a path in again with its own ISID (TSIH 0: the target reinstates
//! the path's old session instead of keeping it), checks it reaches the
//! same disk, and reads its ALUA state.

use std::sync::Arc;

use super::pathset::{Connect, Joined, Path};
use super::recover::{PathSpec, same_disk};
use super::{Backend, BlockDone, BlockOp, IscsiBackend, UaHook};
use crate::iscsi::initiator::{self, InitiatorConfig};
use crate::iscsi::session::Session;
use crate::lun::{self, Lun, LunInfo};
use crate::scsi::alua::AccessState;

/// A path over one session.
pub struct SessionPath {
    backend: IscsiBackend,
}

impl SessionPath {
    pub fn new(backend: IscsiBackend) -> SessionPath {
        SessionPath { backend }
    }

    pub fn session(&self) -> &Arc<Session> {
        self.backend.session()
    }
}

impl Path for SessionPath {
    fn submit(&self, op: BlockOp, buf: Vec<u8>, done: BlockDone) {
        self.backend.submit(op, buf, done)
    }

    fn fence(&self) -> Result<(), String> {
        self.backend
            .session()
            .lun_reset(self.backend.info().lun)
            .map_err(|e| e.to_string())
    }

    fn cut(&self) {
        self.backend.session().abort("the path was given up on");
    }
}

/// This path's ALUA access state: its port's group in REPORT TARGET PORT
/// GROUPS (the port from VPD 0x83). `None` when the LU has no ALUA (TPGS
/// 0) or does not say.
pub fn alua_state(session: &Session, info: &LunInfo) -> Option<AccessState> {
    if info.inquiry.tpgs == 0 {
        return None;
    }
    let (port, group) = lun::path_port(session, info.lun).ok()?;
    let groups = lun::report_target_port_groups(session, info.lun).ok()?;
    port.and_then(|p| groups.group_of_port(p))
        .or_else(|| group.and_then(|g| groups.group(g)))
        .map(|g| g.state)
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
}

impl Connect for SessionConnector {
    fn connect(&self, index: usize) -> Result<Joined, String> {
        let path = self
            .paths
            .get(index)
            .ok_or_else(|| format!("no path {index}"))?;
        let mut cfg = path.config(&self.cfg);
        cfg.isid = self.isids.get(index).copied();
        let c = initiator::connect(&path.portal, &path.target, &cfg, None)
            .map_err(|e| format!("{}: {e}", path.portal))?;
        let session = Arc::new(c.session);
        let lu = Lun::open(Arc::clone(&session), self.lun)
            .map_err(|e| format!("{}: LUN {}: {e}", path.portal, self.lun))?;
        same_disk(&self.first, &lu.info).map_err(|e| format!("{}: {e}", path.portal))?;
        let alua = alua_state(&session, &lu.info);
        let backend = IscsiBackend::new(session, lu.info).with_ua_hook(self.on_ua.clone());
        Ok((Arc::new(SessionPath::new(backend)), alua))
    }
}
