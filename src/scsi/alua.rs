//! Asymmetric logical unit access (ALUA, SPC-5 5.16): the REPORT TARGET
//! PORT GROUPS parameter data, the access states, and the sense codes that
//! say a state changed. A pure codec: which path to use is decided
//! elsewhere, from these values.
//!
//! Whether a LU has ALUA at all is standard INQUIRY's TPGS field
//! ([`super::Inquiry::tpgs`]); which group a path's port belongs to comes
//! from its VPD 0x83 target port group designator
//! ([`super::Designator::port_or_group`]).

use std::fmt;

use super::sense::{Sense, SenseKey};
use super::{Context, ParseError};

/// An asymmetric access state (SPC-5 table "Asymmetric access state").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessState {
    ActiveOptimized,
    ActiveNonOptimized,
    Standby,
    Unavailable,
    /// Logical block dependent (per-LBA states): handled as unavailable.
    LbaDependent,
    Offline,
    Transitioning,
    /// A reserved value, kept as sent.
    Reserved(u8),
}

impl AccessState {
    pub fn from_u8(v: u8) -> AccessState {
        match v & 0x0f {
            0x0 => AccessState::ActiveOptimized,
            0x1 => AccessState::ActiveNonOptimized,
            0x2 => AccessState::Standby,
            0x3 => AccessState::Unavailable,
            0x4 => AccessState::LbaDependent,
            0xe => AccessState::Offline,
            0xf => AccessState::Transitioning,
            other => AccessState::Reserved(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::LbaDependent => 0x4,
            AccessState::Offline => 0xe,
            AccessState::Transitioning => 0xf,
            AccessState::Reserved(v) => v & 0x0f,
        }
    }

    /// The name `sanroot status` shows (and its JSON's `alua` value).
    pub fn name(self) -> &'static str {
        match self {
            AccessState::ActiveOptimized => "active/optimized",
            AccessState::ActiveNonOptimized => "active/non-optimized",
            AccessState::Standby => "standby",
            AccessState::Unavailable => "unavailable",
            AccessState::LbaDependent => "lba-dependent",
            AccessState::Offline => "offline",
            AccessState::Transitioning => "transitioning",
            AccessState::Reserved(_) => "reserved",
        }
    }

    /// Reads and writes may be sent through a port in this state.
    pub fn serves_io(self) -> bool {
        matches!(
            self,
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized
        )
    }
}

impl fmt::Display for AccessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One target port group descriptor of REPORT TARGET PORT GROUPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    /// PREF: the group is preferred for I/O.
    pub preferred: bool,
    pub state: AccessState,
    /// SUPPORTED states byte as sent (T, O, L, U, S, N, A bits).
    pub supported: u8,
    pub id: u16,
    /// STATUS CODE: 0 none, 1 altered by SET TARGET PORT GROUPS, 2 altered
    /// by an implicit transition.
    pub status: u8,
    pub vendor: u8,
    /// The relative target port identifiers in the group.
    pub ports: Vec<u16>,
}

/// The parameter data of REPORT TARGET PORT GROUPS (SPC-5 6.36), in the
/// length-only or the extended header format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetPortGroups {
    /// IMPLICIT TRANSITION TIME in seconds (extended format only).
    pub transition_time: Option<u8>,
    pub groups: Vec<PortGroup>,
    /// RETURN DATA LENGTH as sent: the bytes of the descriptor list (after
    /// the 4- or 8-byte header); more than the buffer held when the
    /// allocation length was too small (see [`Self::alloc_len_needed`]).
    pub data_len: u32,
    /// The buffer ended before the data did.
    pub truncated: bool,
}

/// Descriptor sizes.
const GROUP_LEN: usize = 8;
const PORT_LEN: usize = 4;
/// The extended header's FORMAT TYPE (byte 4 bits 6:4) value.
const EXTENDED: u8 = 0x10;

impl TargetPortGroups {
    /// Parse what came back. A descriptor cut off by the buffer's end
    /// (the allocation length was too small) ends the list, with
    /// `truncated` set; a descriptor claiming more ports than the data
    /// length holds is an error.
    pub fn parse(buf: &[u8]) -> Result<TargetPortGroups, ParseError> {
        const CTX: Context = Context::ReportTargetPortGroups;
        ParseError::need(CTX, buf, 4)?;
        let data_len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let (header, transition_time): (usize, _) = match buf.get(4) {
            Some(b) if b & 0x70 == EXTENDED => {
                ParseError::need(CTX, buf, 8)?;
                (8, Some(buf[5]))
            }
            _ => (4, None),
        };
        // RETURN DATA LENGTH counts the descriptor list only, in both
        // formats (SPC-5 6.36.1; LIO's target_core_alua.c does so too): in
        // the extended format the list starts 4 bytes later.
        let full = header.saturating_add(data_len as usize);
        let end = full.min(buf.len());
        let truncated = end < full;
        let mut groups = Vec::new();
        let mut at = header;
        while at < end {
            let Some(d) = buf
                .get(at..at + GROUP_LEN)
                .filter(|_| at + GROUP_LEN <= end)
            else {
                if truncated {
                    break;
                }
                return Err(ParseError::invalid(
                    CTX,
                    at,
                    "a target port group descriptor runs past the data length",
                ));
            };
            let count = usize::from(d[7]);
            let ports_end = at + GROUP_LEN + count * PORT_LEN;
            if ports_end > end {
                if truncated {
                    break;
                }
                return Err(ParseError::invalid(
                    CTX,
                    at + 7,
                    "TARGET PORT COUNT runs past the data length",
                ));
            }
            let ports = buf[at + GROUP_LEN..ports_end]
                .chunks_exact(PORT_LEN)
                .map(|p| u16::from_be_bytes([p[2], p[3]]))
                .collect();
            groups.push(PortGroup {
                preferred: d[0] & 0x80 != 0,
                state: AccessState::from_u8(d[0]),
                supported: d[1],
                id: u16::from_be_bytes([d[2], d[3]]),
                status: d[5],
                vendor: d[6],
                ports,
            });
            at = ports_end;
        }
        Ok(TargetPortGroups {
            transition_time,
            groups,
            data_len,
            truncated,
        })
    }

    /// The allocation length that fetches all of it.
    pub fn alloc_len_needed(&self) -> u32 {
        let header = if self.transition_time.is_some() { 8 } else { 4 };
        self.data_len.saturating_add(header)
    }

    /// Emit the data (extended format when `transition_time` is set).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        if let Some(t) = self.transition_time {
            out.extend_from_slice(&[EXTENDED, t, 0, 0]);
        }
        let list = out.len();
        for g in &self.groups {
            let count = g.ports.len().min(255);
            out.extend_from_slice(&[
                if g.preferred { 0x80 } else { 0 } | g.state.to_u8(),
                g.supported,
            ]);
            out.extend_from_slice(&g.id.to_be_bytes());
            out.extend_from_slice(&[0, g.status, g.vendor, count as u8]);
            for p in &g.ports[..count] {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
        let len = (out.len() - list) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The group with this id.
    pub fn group(&self, id: u16) -> Option<&PortGroup> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// The group a relative target port belongs to.
    pub fn group_of_port(&self, port: u16) -> Option<&PortGroup> {
        self.groups.iter().find(|g| g.ports.contains(&port))
    }
}

/// What a sense code says about ALUA (SPC-5 "Asymmetric access state
/// changes" and the NOT READY codes of inaccessible states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AluaSense {
    /// NOT READY 04/0A: the LU is transitioning between states: retry
    /// with backoff on the same path.
    Transitioning,
    /// NOT READY 04/0B: this path's group is in standby.
    Standby,
    /// NOT READY 04/0C: this path's group is unavailable.
    Unavailable,
    /// UNIT ATTENTION 2A/06: ASYMMETRIC ACCESS STATE CHANGED.
    StateChanged,
    /// UNIT ATTENTION 2A/07: IMPLICIT ASYMMETRIC ACCESS STATE TRANSITION
    /// FAILED.
    TransitionFailed,
}

impl AluaSense {
    pub fn of(sense: &Sense) -> Option<AluaSense> {
        match (sense.key, sense.asc, sense.ascq) {
            (SenseKey::NotReady, 0x04, 0x0a) => Some(AluaSense::Transitioning),
            (SenseKey::NotReady, 0x04, 0x0b) => Some(AluaSense::Standby),
            (SenseKey::NotReady, 0x04, 0x0c) => Some(AluaSense::Unavailable),
            (SenseKey::UnitAttention, 0x2a, 0x06) => Some(AluaSense::StateChanged),
            (SenseKey::UnitAttention, 0x2a, 0x07) => Some(AluaSense::TransitionFailed),
            _ => None,
        }
    }

    /// The groups' states must be read again (REPORT TARGET PORT GROUPS).
    pub fn reread_states(self) -> bool {
        !matches!(self, AluaSense::Transitioning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TargetPortGroups {
        TargetPortGroups {
            transition_time: None,
            groups: vec![
                PortGroup {
                    preferred: true,
                    state: AccessState::ActiveOptimized,
                    supported: 0x8f,
                    id: 1,
                    status: 0,
                    vendor: 0,
                    ports: vec![1],
                },
                PortGroup {
                    preferred: false,
                    state: AccessState::Standby,
                    supported: 0x8f,
                    id: 2,
                    status: 2,
                    vendor: 0,
                    ports: vec![2, 3],
                },
            ],
            data_len: 0,
            truncated: false,
        }
    }

    fn round_trip(t: &TargetPortGroups) -> TargetPortGroups {
        let mut out = Vec::new();
        t.emit(&mut out);
        let back = TargetPortGroups::parse(&out).expect("emitted data parses");
        assert_eq!(back.alloc_len_needed() as usize, out.len());
        back
    }

    #[test]
    fn both_header_formats_round_trip() {
        let t = sample();
        let back = round_trip(&t);
        assert_eq!(back.groups, t.groups);
        assert_eq!(back.transition_time, None);
        let ext = TargetPortGroups {
            transition_time: Some(60),
            ..sample()
        };
        let back = round_trip(&ext);
        assert_eq!(back.groups, t.groups);
        assert_eq!(back.transition_time, Some(60));
        assert_eq!(back.group_of_port(3).map(|g| g.id), Some(2));
        assert_eq!(
            back.group(1).map(|g| g.state),
            Some(AccessState::ActiveOptimized)
        );
        assert!(back.group(9).is_none());
    }

    /// Two groups in the extended format as LIO sends them (the preferred
    /// default group with port 1, group 7 in standby after an implicit
    /// transition, with port 2): RETURN DATA LENGTH counts the 24 bytes of
    /// descriptors, not the extended header's 4. (A first version counted
    /// them; LIO in tests/lio_guest.rs showed it wrong.)
    #[test]
    fn two_groups_in_the_extended_format() {
        let buf = [
            0, 0, 0, 24, 0x10, 0, 0, 0, // header
            0x80, 0x0f, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, // default_tg_pt_gp, port 1
            0x02, 0x0f, 0, 7, 0, 2, 0, 1, 0, 0, 0, 2, // group 7 standby, port 2
        ];
        let t = TargetPortGroups::parse(&buf).unwrap();
        assert_eq!(t.transition_time, Some(0));
        assert!(!t.truncated);
        assert_eq!(t.groups.len(), 2);
        assert!(t.groups[0].preferred);
        assert_eq!(t.groups[1].state, AccessState::Standby);
        assert_eq!(t.groups[1].status, 2);
        assert_eq!(t.group_of_port(2).map(|g| g.id), Some(7));
    }

    #[test]
    fn a_short_buffer_is_truncated_not_an_error() {
        let mut out = Vec::new();
        sample().emit(&mut out);
        for cut in 4..out.len() {
            let t = TargetPortGroups::parse(&out[..cut]).unwrap();
            assert!(t.truncated, "cut at {cut}");
            assert!(t.groups.len() < 2);
            assert_eq!(t.alloc_len_needed() as usize, out.len());
        }
        assert!(TargetPortGroups::parse(&out[..3]).is_err());
    }

    #[test]
    fn a_port_count_beyond_the_data_is_refused() {
        let mut out = Vec::new();
        sample().emit(&mut out);
        out[4 + 7] = 200; // the first group claims 200 ports
        let e = TargetPortGroups::parse(&out).unwrap_err();
        assert_eq!(e.offset, 11);
        assert!(e.to_string().contains("TARGET PORT COUNT"), "{e}");
    }

    #[test]
    fn state_names_are_the_status_contract() {
        let names: Vec<&str> = [0u8, 1, 2, 3, 0xf]
            .iter()
            .map(|v| AccessState::from_u8(*v).name())
            .collect();
        assert_eq!(
            names,
            [
                "active/optimized",
                "active/non-optimized",
                "standby",
                "unavailable",
                "transitioning"
            ]
        );
        for v in 0..16u8 {
            assert_eq!(AccessState::from_u8(v).to_u8(), v);
        }
        assert!(AccessState::ActiveNonOptimized.serves_io());
        assert!(!AccessState::Transitioning.serves_io());
    }

    #[test]
    fn alua_sense_codes() {
        let s = |key, asc, ascq| AluaSense::of(&Sense::new(key, asc, ascq));
        assert_eq!(
            s(SenseKey::NotReady, 4, 0x0a),
            Some(AluaSense::Transitioning)
        );
        assert_eq!(s(SenseKey::NotReady, 4, 0x0b), Some(AluaSense::Standby));
        assert_eq!(s(SenseKey::NotReady, 4, 0x0c), Some(AluaSense::Unavailable));
        assert_eq!(
            s(SenseKey::UnitAttention, 0x2a, 6),
            Some(AluaSense::StateChanged)
        );
        assert_eq!(
            s(SenseKey::UnitAttention, 0x2a, 7),
            Some(AluaSense::TransitionFailed)
        );
        assert_eq!(s(SenseKey::UnitAttention, 0x2a, 9), None);
        assert!(!AluaSense::Transitioning.reread_states());
        assert!(AluaSense::StateChanged.reread_states());
    }
}
