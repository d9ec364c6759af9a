//! What a session does about a SCSI command that gets no answer: the
//! ladder the kernel's SCSI error handler climbs, as pure functions of the
//! session's state so the policy is tested without a socket.
//!
//! 1. The command's timeout passes: **ABORT TASK** for it. When the
//!    target answers "function complete" or "task does not exist", the
//!    command is sent again (a new ITT and CmdSN, its data from the start).
//! 2. The abort gets no answer within the TMF timeout, is refused, or the
//!    retried command times out again: **LOGICAL UNIT RESET**. When it
//!    completes, every command of that LU on the wire is sent again (the
//!    reset ended them at the target).
//! 3. The reset gets no answer or is refused, or a command times out a
//!    third time: the connection is dropped
//!    ([`SessionError::CommandTimeout`](super::session::SessionError)),
//!    and the recovery layer above logs in again and retries, or fails
//!    the command with that message.
//!
//! One step runs at a time (as in the kernel's error handler): while a
//! TMF is out, other overdue commands wait for its outcome.

use std::time::{Duration, Instant};

/// Times a command has been sent again after a timeout before the next
/// timeout drops the connection (once after ABORT TASK, once after
/// LOGICAL UNIT RESET).
pub const MAX_RETRIES: u8 = 2;

/// The task management function out for an overdue command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// ABORT TASK for the command in `slot` (with its generation, so a
    /// new command in the same slot is not mistaken for it).
    Abort {
        slot: u16,
        generation: u16,
        lun: [u8; 8],
        opcode: u8,
        /// The TMF's own task slot.
        tmf: u16,
        since: Instant,
    },
    /// LOGICAL UNIT RESET for the LU of an overdue command.
    Reset {
        lun: [u8; 8],
        opcode: u8,
        tmf: u16,
        since: Instant,
    },
}

impl Pending {
    /// The task slot of the TMF itself.
    pub fn tmf(&self) -> u16 {
        match self {
            Pending::Abort { tmf, .. } | Pending::Reset { tmf, .. } => *tmf,
        }
    }
}

/// The oldest SCSI command on the wire, as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oldest {
    pub slot: u16,
    pub lun: [u8; 8],
    pub opcode: u8,
    /// Times it was sent again after a timeout.
    pub retries: u8,
    pub sent: Instant,
}

/// What the session does next about overdue commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing is due: wake up again after this long at most (`None`: no
    /// deadline is running).
    Wait(Option<Duration>),
    /// Send ABORT TASK for the command in this slot.
    Abort { slot: u16 },
    /// Send LOGICAL UNIT RESET for this LU.
    Reset { lun: [u8; 8], opcode: u8 },
    /// Give up on the connection: what was tried, in words.
    Fail { opcode: u8, tried: String },
}

/// The next step, given the TMF out (if any) and the oldest command on
/// the wire (if any).
pub fn next_step(
    pending: Option<&Pending>,
    oldest: Option<Oldest>,
    cmd_timeout: Duration,
    tmf_timeout: Duration,
    now: Instant,
) -> Step {
    if let Some(p) = pending {
        let since = match p {
            Pending::Abort { since, .. } | Pending::Reset { since, .. } => *since,
        };
        let waited = now.saturating_duration_since(since);
        if waited < tmf_timeout {
            return Step::Wait(Some(tmf_timeout - waited));
        }
        return match *p {
            Pending::Abort { lun, opcode, .. } => Step::Reset { lun, opcode },
            Pending::Reset { opcode, .. } => Step::Fail {
                opcode,
                tried: format!(
                    "LOGICAL UNIT RESET got no answer within {} s",
                    secs(tmf_timeout)
                ),
            },
        };
    }
    let Some(o) = oldest else {
        return Step::Wait(None);
    };
    let waited = now.saturating_duration_since(o.sent);
    if waited < cmd_timeout {
        return Step::Wait(Some(cmd_timeout - waited));
    }
    match o.retries {
        0 => Step::Abort { slot: o.slot },
        1 => Step::Reset {
            lun: o.lun,
            opcode: o.opcode,
        },
        _ => Step::Fail {
            opcode: o.opcode,
            tried: "also after ABORT TASK and LOGICAL UNIT RESET".into(),
        },
    }
}

/// What the target's answer to the pending TMF leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send the aborted command again, if the slot still holds it.
    Retry { slot: u16, generation: u16 },
    /// Send every command of the LU that was on the wire again.
    RetryLun { lun: [u8; 8] },
    /// The abort was refused: reset the LU.
    Reset { lun: [u8; 8], opcode: u8 },
    /// The reset was refused: give up on the connection.
    Fail { opcode: u8, tried: String },
}

/// The TMF response `response` (RFC 7143 §11.6.1) to `pending`.
pub fn answered(pending: &Pending, response: u8) -> Answer {
    match *pending {
        // "Task does not exist": it ended before the abort reached it (its
        // answer, if any, came first on the connection).
        Pending::Abort {
            slot, generation, ..
        } if response == 0 || response == 1 => Answer::Retry { slot, generation },
        Pending::Abort { lun, opcode, .. } => {
            log::warn!(
                "ABORT TASK refused ({}): resetting the LU",
                super::session::tmf_response_name(response)
            );
            Answer::Reset { lun, opcode }
        }
        Pending::Reset { lun, .. } if response == 0 => Answer::RetryLun { lun },
        Pending::Reset { opcode, .. } => Answer::Fail {
            opcode,
            tried: format!(
                "LOGICAL UNIT RESET refused: {}",
                super::session::tmf_response_name(response)
            ),
        },
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().round()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMD: Duration = Duration::from_secs(30);
    const TMF: Duration = Duration::from_secs(10);
    const LUN: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

    fn oldest(t0: Instant, retries: u8) -> Option<Oldest> {
        Some(Oldest {
            slot: 7,
            lun: LUN,
            opcode: 0x28,
            retries,
            sent: t0,
        })
    }

    #[test]
    fn nothing_on_the_wire_sets_no_deadline() {
        let now = Instant::now();
        assert_eq!(next_step(None, None, CMD, TMF, now), Step::Wait(None));
    }

    #[test]
    fn a_command_within_its_timeout_waits_for_the_rest_of_it() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(12);
        assert_eq!(
            next_step(None, oldest(t0, 0), CMD, TMF, now),
            Step::Wait(Some(Duration::from_secs(18)))
        );
    }

    #[test]
    fn the_ladder_climbs_abort_reset_then_the_connection() {
        let t0 = Instant::now();
        let late = t0 + CMD;
        assert_eq!(
            next_step(None, oldest(t0, 0), CMD, TMF, late),
            Step::Abort { slot: 7 }
        );
        assert_eq!(
            next_step(None, oldest(t0, 1), CMD, TMF, late),
            Step::Reset {
                lun: LUN,
                opcode: 0x28
            }
        );
        match next_step(None, oldest(t0, MAX_RETRIES), CMD, TMF, late) {
            Step::Fail { opcode, tried } => {
                assert_eq!(opcode, 0x28);
                assert!(
                    tried.contains("ABORT TASK and LOGICAL UNIT RESET"),
                    "{tried}"
                );
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn an_unanswered_tmf_escalates_after_the_tmf_timeout() {
        let t0 = Instant::now();
        let abort = Pending::Abort {
            slot: 7,
            generation: 3,
            lun: LUN,
            opcode: 0x2a,
            tmf: 9,
            since: t0,
        };
        // Meanwhile other overdue commands wait for the outcome.
        assert_eq!(
            next_step(Some(&abort), oldest(t0, 0), CMD, TMF, t0 + TMF / 2),
            Step::Wait(Some(TMF / 2))
        );
        assert_eq!(
            next_step(Some(&abort), None, CMD, TMF, t0 + TMF),
            Step::Reset {
                lun: LUN,
                opcode: 0x2a
            }
        );
        let reset = Pending::Reset {
            lun: LUN,
            opcode: 0x2a,
            tmf: 9,
            since: t0,
        };
        match next_step(Some(&reset), None, CMD, TMF, t0 + TMF) {
            Step::Fail {
                opcode: 0x2a,
                tried,
            } => {
                assert!(tried.contains("no answer within 10 s"), "{tried}")
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn answers_retry_reset_or_give_up() {
        let t0 = Instant::now();
        let abort = Pending::Abort {
            slot: 7,
            generation: 3,
            lun: LUN,
            opcode: 0x28,
            tmf: 9,
            since: t0,
        };
        for ok in [0, 1] {
            assert_eq!(
                answered(&abort, ok),
                Answer::Retry {
                    slot: 7,
                    generation: 3
                }
            );
        }
        for refused in [2, 5, 6, 255] {
            assert_eq!(
                answered(&abort, refused),
                Answer::Reset {
                    lun: LUN,
                    opcode: 0x28
                }
            );
        }
        let reset = Pending::Reset {
            lun: LUN,
            opcode: 0x28,
            tmf: 9,
            since: t0,
        };
        assert_eq!(answered(&reset, 0), Answer::RetryLun { lun: LUN });
        match answered(&reset, 5) {
            Answer::Fail { tried, .. } => assert!(tried.contains("not supported"), "{tried}"),
            a => panic!("{a:?}"),
        }
        assert_eq!(abort.tmf(), 9);
    }
}
