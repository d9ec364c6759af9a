//! Which path the next command goes to, as a pure function of the paths'
//! states: no sockets, no clocks, so every rule is a unit test.
//!
//! The rules (issue 15, as the kernel's scsi_dh_alua and multipath-tools'
//! `prio alua` rank paths):
//! - a path that is not up never gets I/O;
//! - ALUA: active/optimized paths first (a LU without ALUA counts as
//!   active/optimized on every path); active/non-optimized only when no
//!   optimized path is up; standby, unavailable, offline, transitioning,
//!   logical-block-dependent and reserved states never;
//! - among the best tier: round-robin, the shortest queue, or (failover)
//!   one path kept until it leaves the tier, the preferred (PREF) group
//!   first;
//! - no usable path: `None`, and the caller holds the I/O until one
//!   returns.

use crate::scsi::alua::AccessState;

/// How I/O is spread over the usable paths of the best tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathPolicy {
    /// Each command to the next path in turn.
    #[default]
    RoundRobin,
    /// Each command to the path with the fewest commands in flight.
    QueueDepth,
    /// One path at a time; another only when it stops being usable.
    Failover,
}

impl PathPolicy {
    /// Its `--path-policy` name.
    pub fn name(self) -> &'static str {
        match self {
            PathPolicy::RoundRobin => "round-robin",
            PathPolicy::QueueDepth => "queue-depth",
            PathPolicy::Failover => "failover",
        }
    }
}

/// A path's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    Down,
    Connecting,
}

impl Link {
    /// The name `sanroot status` shows (its JSON's `state`).
    pub fn name(self) -> &'static str {
        match self {
            Link::Up => "up",
            Link::Down => "down",
            Link::Connecting => "connecting",
        }
    }
}

/// What the choice looks at for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathView {
    pub link: Link,
    /// The path's target port group state; `None` for a LU without ALUA.
    pub alua: Option<AccessState>,
    /// The group's PREF bit.
    pub preferred: bool,
    /// Commands in flight on the path.
    pub in_flight: usize,
}

/// 0 for the best tier, 1 for the fallback tier, `None` for no I/O.
fn tier(p: &PathView) -> Option<u8> {
    if p.link != Link::Up {
        return None;
    }
    match p.alua {
        None | Some(AccessState::ActiveOptimized) => Some(0),
        Some(AccessState::ActiveNonOptimized) => Some(1),
        Some(_) => None,
    }
}

/// The paths I/O may go to now: the best tier's, in path order.
pub fn usable(paths: &[PathView]) -> Vec<usize> {
    let best = paths.iter().filter_map(tier).min();
    paths
        .iter()
        .enumerate()
        .filter(|(_, p)| best.is_some() && tier(p) == best)
        .map(|(i, _)| i)
        .collect()
}

/// A path that gets no I/O but is watched (TEST UNIT READY or REPORT
/// TARGET PORT GROUPS now and then) to see it become usable.
pub fn watched(p: &PathView) -> bool {
    p.link == Link::Up && tier(p).is_none()
}

/// The chooser's memory between commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Selector {
    /// The path after which round-robin continues.
    last: Option<usize>,
    /// Failover: the path in use.
    active: Option<usize>,
}

impl Selector {
    /// The path failover uses now (for `sanroot status`'s `active`).
    pub fn active(&self) -> Option<usize> {
        self.active
    }
}

/// The path for the next command, or `None` to hold it. Allocates
/// nothing: it runs for every request.
pub fn choose(paths: &[PathView], policy: PathPolicy, sel: &mut Selector) -> Option<usize> {
    let best = paths.iter().filter_map(tier).min()?;
    let ok = |i: &usize| tier(&paths[*i]) == Some(best);
    let all = || (0..paths.len()).filter(ok);
    let pick = match policy {
        PathPolicy::RoundRobin => next_after(all(), sel.last)?,
        PathPolicy::QueueDepth => {
            // Fewest in flight; ties go round-robin.
            let least = all().map(|i| paths[i].in_flight).min()?;
            next_after(all().filter(|&i| paths[i].in_flight == least), sel.last)?
        }
        PathPolicy::Failover => match sel.active {
            Some(a) if a < paths.len() && ok(&a) => a,
            _ => all()
                .find(|&i| paths[i].preferred)
                .or_else(|| all().next())?,
        },
    };
    sel.last = Some(pick);
    sel.active = Some(pick);
    Some(pick)
}

/// The paths I/O goes to now (`sanroot status`'s `active`): the best
/// tier's, or under failover the one path kept (the one the next command
/// would take when none is kept yet).
pub fn active(paths: &[PathView], policy: PathPolicy, sel: &Selector) -> Vec<usize> {
    let ok = usable(paths);
    if policy != PathPolicy::Failover {
        return ok;
    }
    let kept = sel.active.filter(|a| ok.contains(a));
    let pick = kept.or_else(|| {
        ok.iter()
            .copied()
            .find(|&i| paths[i].preferred)
            .or(ok.first().copied())
    });
    pick.into_iter().collect()
}

/// The first of `ok` (ascending) after `last`, wrapping round.
fn next_after(ok: impl Iterator<Item = usize> + Clone, last: Option<usize>) -> Option<usize> {
    let first = ok.clone().next()?;
    Some(match last {
        Some(l) => ok.clone().find(|&i| i > l).unwrap_or(first),
        None => first,
    })
}

/// Whether a new path reaches the LU the first one did: the VPD 0x83 LU
/// designator when both have one, else the unit serial number (VPD 0x80).
/// A path that reaches another LU, or one that cannot be told apart,
/// must never get I/O (the error says why).
pub fn same_lu(
    first: (Option<&str>, Option<&str>),
    other: (Option<&str>, Option<&str>),
) -> Result<(), String> {
    match (first, other) {
        ((Some(a), _), (Some(b), _)) if a == b => Ok(()),
        ((Some(a), _), (Some(b), _)) => Err(format!(
            "this path reaches LU {b}, the others LU {a}: a different disk"
        )),
        ((_, Some(a)), (_, Some(b))) if a == b => Ok(()),
        ((_, Some(a)), (_, Some(b))) => Err(format!(
            "this path reaches the LU with serial {b:?}, the others serial {a:?}: a different disk"
        )),
        _ => Err(
            "the LU reports neither a VPD 0x83 designator nor a serial number on both paths: \
             cannot prove they reach the same disk"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessState::*;

    fn p(link: Link, alua: Option<AccessState>) -> PathView {
        PathView {
            link,
            alua,
            preferred: false,
            in_flight: 0,
        }
    }

    fn up(alua: AccessState) -> PathView {
        p(Link::Up, Some(alua))
    }

    #[test]
    fn active_is_the_tier_or_the_one_failover_keeps() {
        let paths = [
            up(ActiveNonOptimized),
            up(ActiveOptimized),
            up(ActiveOptimized),
        ];
        let mut sel = Selector::default();
        assert_eq!(active(&paths, PathPolicy::RoundRobin, &sel), [1, 2]);
        assert_eq!(active(&paths, PathPolicy::Failover, &sel), [1]);
        sel.active = Some(2);
        assert_eq!(active(&paths, PathPolicy::Failover, &sel), [2]);
        let none = [up(Standby), p(Link::Down, None)];
        assert!(active(&none, PathPolicy::Failover, &sel).is_empty());
    }

    #[test]
    fn optimized_first_non_optimized_only_without_it() {
        let paths = [up(ActiveNonOptimized), up(ActiveOptimized), up(Standby)];
        assert_eq!(usable(&paths), [1]);
        let paths = [
            up(ActiveNonOptimized),
            p(Link::Down, Some(ActiveOptimized)),
            up(Standby),
        ];
        assert_eq!(usable(&paths), [0]);
        assert!(watched(&paths[2]));
        assert!(
            !watched(&paths[1]),
            "a down path is reconnected, not watched"
        );
    }

    #[test]
    fn inaccessible_states_and_dead_links_hold_the_io() {
        for s in [
            Standby,
            Unavailable,
            Offline,
            Transitioning,
            LbaDependent,
            Reserved(7),
        ] {
            let paths = [up(s), p(Link::Down, None), p(Link::Connecting, None)];
            assert!(usable(&paths).is_empty(), "{s:?}");
            assert_eq!(
                choose(&paths, PathPolicy::RoundRobin, &mut Selector::default()),
                None
            );
        }
    }

    #[test]
    fn without_alua_every_up_path_is_active() {
        let paths = [p(Link::Up, None), p(Link::Down, None), p(Link::Up, None)];
        let mut sel = Selector::default();
        let order: Vec<_> = (0..4)
            .map(|_| choose(&paths, PathPolicy::RoundRobin, &mut sel).unwrap())
            .collect();
        assert_eq!(order, [0, 2, 0, 2]);
    }

    #[test]
    fn queue_depth_picks_the_shortest_queue() {
        let mut paths = [
            up(ActiveOptimized),
            up(ActiveOptimized),
            up(ActiveOptimized),
        ];
        paths[0].in_flight = 4;
        paths[1].in_flight = 1;
        paths[2].in_flight = 1;
        let mut sel = Selector::default();
        assert_eq!(choose(&paths, PathPolicy::QueueDepth, &mut sel), Some(1));
        assert_eq!(
            choose(&paths, PathPolicy::QueueDepth, &mut sel),
            Some(2),
            "ties rotate"
        );
        assert_eq!(choose(&paths, PathPolicy::QueueDepth, &mut sel), Some(1));
    }

    #[test]
    fn failover_keeps_one_path_until_it_goes() {
        let mut paths = [up(ActiveOptimized), up(ActiveOptimized)];
        paths[1].preferred = true;
        let mut sel = Selector::default();
        assert_eq!(
            choose(&paths, PathPolicy::Failover, &mut sel),
            Some(1),
            "PREF first"
        );
        assert_eq!(choose(&paths, PathPolicy::Failover, &mut sel), Some(1));
        paths[1].link = Link::Down;
        assert_eq!(choose(&paths, PathPolicy::Failover, &mut sel), Some(0));
        // It comes back: failover stays where it is (no ping-pong) ...
        paths[1].link = Link::Up;
        assert_eq!(choose(&paths, PathPolicy::Failover, &mut sel), Some(0));
        // ... until ALUA moves the optimized group to it.
        paths[0].alua = Some(ActiveNonOptimized);
        assert_eq!(choose(&paths, PathPolicy::Failover, &mut sel), Some(1));
        assert_eq!(sel.active(), Some(1));
    }

    #[test]
    fn a_state_change_moves_round_robin_at_once() {
        let mut paths = [up(ActiveOptimized), up(ActiveNonOptimized)];
        let mut sel = Selector::default();
        assert_eq!(choose(&paths, PathPolicy::RoundRobin, &mut sel), Some(0));
        assert_eq!(choose(&paths, PathPolicy::RoundRobin, &mut sel), Some(0));
        paths.swap(0, 1);
        assert_eq!(choose(&paths, PathPolicy::RoundRobin, &mut sel), Some(1));
        assert_eq!(choose(&paths, PathPolicy::RoundRobin, &mut sel), Some(1));
    }

    #[test]
    fn paths_must_reach_the_same_lu() {
        let id = Some("naa.6001405abcdef");
        assert!(
            same_lu((id, Some("s1")), (id, Some("s2"))).is_ok(),
            "the designator wins"
        );
        let e = same_lu((id, None), (Some("naa.600140500000"), None)).unwrap_err();
        assert!(e.contains("different disk"), "{e}");
        assert!(same_lu((None, Some("s1")), (None, Some("s1"))).is_ok());
        assert!(same_lu((None, Some("s1")), (None, Some("s2"))).is_err());
        assert!(
            same_lu((id, None), (None, Some("s1")))
                .unwrap_err()
                .contains("cannot prove")
        );
        assert!(same_lu((None, None), (None, None)).is_err());
    }

    #[test]
    fn link_names_are_the_status_contract() {
        let names: Vec<_> = [Link::Up, Link::Down, Link::Connecting]
            .iter()
            .map(|l| l.name())
            .collect();
        assert_eq!(names, ["up", "down", "connecting"]);
    }
}
