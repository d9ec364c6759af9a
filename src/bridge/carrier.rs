//! What carries a served device's requests: one session, logged in again
//! when it is lost ([`RecoveringBackend`]), or a session on every path at
//! once ([`PathSet`]). The serving loop talks to either through this.

use std::sync::Arc;
use std::time::Duration;

use super::Backend;
use super::pathset::PathSet;
use super::recover::RecoveringBackend;
use crate::iscsi::session::Session;
use crate::lun::LunInfo;
use crate::pathset::policy::Link;
use crate::scsi::alua::AccessState;
use crate::state::{DeviceRecord, PathState};

pub enum Carrier {
    /// One path at a time.
    One {
        backend: Arc<RecoveringBackend>,
        /// The first session's ALUA state and portal group tag.
        alua: Option<AccessState>,
        tpgt: Option<u16>,
    },
    /// A session on every path; `portals` names them, in order.
    Set {
        set: Arc<PathSet>,
        portals: Vec<String>,
    },
}

impl Carrier {
    pub fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Carrier::One { backend, .. } => backend.clone(),
            Carrier::Set { set, .. } => set.clone(),
        }
    }

    /// A session to read the LU again on.
    pub fn session(&self) -> Option<Arc<Session>> {
        match self {
            Carrier::One { backend, .. } => Some(Arc::clone(backend.current().session())),
            Carrier::Set { set, .. } => set.session(),
        }
    }

    /// The LU was read again on `session`: check requests against `info`.
    /// False when that session is no longer the one in use.
    pub fn resized(&self, session: &Arc<Session>, info: LunInfo) -> bool {
        match self {
            Carrier::One { backend, .. } => backend.resized(session, info),
            Carrier::Set { set, .. } => {
                set.resized(&info);
                true
            }
        }
    }

    /// The LU's size in blocks as last read.
    pub fn blocks(&self) -> u64 {
        match self {
            Carrier::One { backend, .. } => backend.blocks(),
            Carrier::Set { set, .. } => set.blocks(),
        }
    }

    pub fn failure(&self) -> Option<String> {
        match self {
            Carrier::One { backend, .. } => backend.failure(),
            Carrier::Set { set, .. } => set.failure(),
        }
    }

    /// Refuse every request from now on.
    pub fn give_up(&self, m: String) {
        match self {
            Carrier::One { backend, .. } => backend.give_up(m),
            Carrier::Set { set, .. } => set.give_up(m),
        }
    }

    /// The target wants path `index`'s session gone (for one path: the
    /// session in use): finish, log out, wait `pause`, log in again.
    pub fn renew(&self, index: Option<usize>, reason: String, within: Duration, pause: Duration) {
        match (self, index) {
            (Carrier::One { backend, .. }, _) => backend.renew(reason, within, pause),
            (Carrier::Set { set, .. }, Some(i)) => set.renew(i, within, pause),
            (Carrier::Set { .. }, None) => {}
        }
    }

    /// Log out of every session.
    pub fn close(&self, within: Duration) -> Result<(), String> {
        match self {
            Carrier::One { backend, .. } => backend
                .current()
                .session()
                .close(within)
                .map_err(|e| e.to_string()),
            Carrier::Set { set, .. } => {
                set.close(within);
                Ok(())
            }
        }
    }

    /// Every path as it is now, for the record.
    pub fn paths(&self, record: &DeviceRecord) -> Vec<PathState> {
        match self {
            Carrier::One { alua, tpgt, .. } => {
                let state = match record.state.as_str() {
                    "running" => "up",
                    "reconnecting" => "connecting",
                    _ => "down",
                };
                vec![PathState {
                    portal: record.portal.clone(),
                    tpgt: *tpgt,
                    alua: alua.filter(|_| state == "up").map(|a| a.name().to_string()),
                    state: state.into(),
                    active: state == "up",
                }]
            }
            Carrier::Set { set, portals } => set
                .status()
                .iter()
                .zip(portals)
                .map(|(s, portal)| PathState {
                    portal: portal.clone(),
                    tpgt: s.tpgt,
                    alua: s
                        .alua
                        .filter(|_| s.link == Link::Up)
                        .map(|a| a.name().to_string()),
                    state: s.link.name().into(),
                    active: s.active,
                })
                .collect(),
        }
    }
}
