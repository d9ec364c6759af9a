//! The writer's timers: the liveness ping, and overdue commands climbing
//! the error-handling ladder of [`super::super::escalate`].

use super::*;

/// The liveness ping and the commands' timeouts ([`ping_due`],
/// [`command_due`]): how long the writer may sleep, or why the session
/// fails now.
pub(super) fn timers_due(
    st: &mut State,
    shared: &Shared,
) -> Result<Option<Duration>, SessionError> {
    let cmd = command_due(st, &shared.opts, Instant::now())?;
    let ping = ping_due(st)?;
    Ok(match (cmd, ping) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// The oldest SCSI command on the wire. One pass over the task table (its
/// size is the queue depth).
pub(super) fn oldest_sent(st: &State) -> Option<escalate::Oldest> {
    st.tasks
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, t.as_ref()?)))
        .filter(|(_, t)| matches!(t.kind, TaskKind::Scsi))
        .filter_map(|(i, t)| {
            Some(escalate::Oldest {
                slot: i as u16,
                lun: t.lun,
                opcode: t.cdb[0],
                retries: t.retries,
                sent: t.sent?,
            })
        })
        .min_by_key(|o| o.sent)
}

/// Overdue commands: take the next step of [`escalate::next_step`] (queue
/// ABORT TASK or LOGICAL UNIT RESET, or fail the session with
/// [`SessionError::CommandTimeout`]); otherwise the time until the next
/// deadline.
pub(super) fn command_due(
    st: &mut State,
    opts: &SessionOptions,
    now: Instant,
) -> Result<Option<Duration>, SessionError> {
    let Some(timeout) = opts.cmd_timeout else {
        return Ok(None);
    };
    let step = escalate::next_step(
        st.escalation.as_ref(),
        oldest_sent(st),
        timeout,
        opts.tmf_timeout,
        now,
    );
    let fail = |opcode, tried| SessionError::CommandTimeout {
        opcode,
        after: timeout,
        tried,
    };
    match step {
        Step::Wait(d) => Ok(d),
        Step::Abort { slot } => {
            let opcode = st_opcode(st, slot);
            start_abort(st, slot, now).map_err(|m| fail(opcode, m))?;
            Ok(Some(opts.tmf_timeout))
        }
        Step::Reset { lun, opcode } => {
            log::warn!(
                "a SCSI command (operation code 0x{opcode:02x}) is overdue: LOGICAL UNIT RESET"
            );
            start_reset(st, lun, opcode, now).map_err(|m| fail(opcode, m))?;
            Ok(Some(opts.tmf_timeout))
        }
        Step::Fail { opcode, tried } => Err(fail(opcode, tried)),
    }
}

pub(super) fn st_opcode(st: &State, slot: u16) -> u8 {
    match st.tasks.get(usize::from(slot)) {
        Some(Some(t)) => t.cdb[0],
        _ => 0,
    }
}

/// Queue ABORT TASK for the overdue command in `slot`.
pub(super) fn start_abort(st: &mut State, slot: u16, now: Instant) -> Result<(), String> {
    let Some(Some(t)) = st.tasks.get(usize::from(slot)) else {
        return Ok(());
    };
    let (generation, lun, opcode, ref_cmd_sn) = (t.generation, t.lun, t.cdb[0], t.cmd_sn);
    let itt = itt_of(slot, generation);
    log::warn!(
        "a SCSI command (operation code 0x{opcode:02x}, task 0x{itt:08x}) is overdue: ABORT TASK"
    );
    let tmf = queue_tmf(st, TmfFunction::AbortTask, lun, itt, ref_cmd_sn)
        .ok_or_else(|| "no task slot free for ABORT TASK".to_string())?;
    st.escalation = Some(escalate::Pending::Abort {
        slot,
        generation,
        lun,
        opcode,
        tmf,
        since: now,
    });
    Ok(())
}

/// Queue LOGICAL UNIT RESET for `lun`.
pub(super) fn start_reset(
    st: &mut State,
    lun: [u8; 8],
    opcode: u8,
    now: Instant,
) -> Result<(), String> {
    let tmf = queue_tmf(st, TmfFunction::LogicalUnitReset, lun, RESERVED_TAG, 0)
        .ok_or_else(|| "no task slot free for LOGICAL UNIT RESET".to_string())?;
    st.escalation = Some(escalate::Pending::Reset {
        lun,
        opcode,
        tmf,
        since: now,
    });
    Ok(())
}

/// Queue a task management request the session sends on its own (its
/// answer goes to [`tmf_answered`]); `None` when no task slot is free.
pub(super) fn queue_tmf(
    st: &mut State,
    function: TmfFunction,
    lun: [u8; 8],
    ref_task_tag: u32,
    ref_cmd_sn: u32,
) -> Option<u16> {
    let slot = alloc_slot(st)?;
    let generation = next_generation(st);
    st.tasks[usize::from(slot)] = Some(Task::control(generation, TaskKind::Tmf, None));
    let pdu = tmf_pdu(
        function,
        lun,
        itt_of(slot, generation),
        (ref_task_tag, ref_cmd_sn),
        &st.sn,
    );
    st.ctl_queue.push_back(Ctl::Immediate { slot, pdu });
    Some(slot)
}

/// The target answered the session's own TMF: retry what it ended, or
/// take the next step.
pub(super) fn tmf_answered(
    st: &mut State,
    pending: escalate::Pending,
    response: u8,
    timeout: Duration,
) -> Result<(), SessionError> {
    let fail = |opcode, tried| SessionError::CommandTimeout {
        opcode,
        after: timeout,
        tried,
    };
    match escalate::answered(&pending, response) {
        escalate::Answer::Retry { slot, generation } => {
            if matches!(st.tasks.get(usize::from(slot)), Some(Some(t)) if t.generation == generation)
            {
                log::warn!("the overdue command was aborted: sending it again");
                retry_task(st, slot)?;
            }
        }
        escalate::Answer::RetryLun { lun } => retry_lun(st, lun)?,
        escalate::Answer::Reset { lun, opcode } => {
            start_reset(st, lun, opcode, Instant::now()).map_err(|m| fail(opcode, m))?;
        }
        escalate::Answer::Fail { opcode, tried } => return Err(fail(opcode, tried)),
    }
    Ok(())
}

/// The LU `lun` was reset (by the session's own ladder or a caller's
/// LOGICAL UNIT RESET): the reset ended this session's commands to it
/// that were on the wire, and their answers came before the reset's (the
/// target answers in order on the connection), so each still here is
/// sent again.
pub(super) fn retry_lun(st: &mut State, lun: [u8; 8]) -> Result<(), SessionError> {
    let on_wire: Vec<u16> = (0..st.tasks.len() as u16)
        .filter(|&i| {
            matches!(&st.tasks[usize::from(i)],
                Some(t) if matches!(t.kind, TaskKind::Scsi) && t.lun == lun && t.sent.is_some())
        })
        .collect();
    if !on_wire.is_empty() {
        log::warn!(
            "the LU was reset: sending its {} commands in flight again",
            on_wire.len()
        );
    }
    for slot in on_wire {
        retry_task(st, slot)?;
    }
    Ok(())
}

/// Send the command in `slot` again after the target ended it (abort or
/// reset): a new ITT (a late PDU for the old one is caught as unknown) and
/// CmdSN, first in line; its data from the start.
pub(super) fn retry_task(st: &mut State, slot: u16) -> Result<(), SessionError> {
    let generation = next_generation(st);
    let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) else {
        return Ok(());
    };
    let old = itt_of(slot, t.generation);
    if t.buf.is_none() {
        // The writer is sending its data right now: let recovery retry it.
        return Err(SessionError::ConnectionLost(format!(
            "the target ended an overdue command (operation code 0x{:02x}) while its data was being sent: logging in again to retry it",
            t.cdb[0]
        )));
    }
    t.generation = generation;
    t.next_data_sn = 0;
    t.data_in = 0;
    t.r2ts = 0;
    t.unsolicited = 0;
    t.sent = None;
    t.parked = None;
    t.retries = t.retries.saturating_add(1);
    st.ctl_queue
        .retain(|c| !matches!(c, Ctl::DataOut { slot: s, .. } if *s == slot));
    st.cmd_queue.push_front(slot);
    retire(st, old);
    Ok(())
}

/// Check the liveness ping: send one after `nop_interval` of silence, fail
/// the session when one goes unanswered past `nop_timeout`. Returns how
/// long the writer may sleep.
pub(super) fn ping_due(st: &mut State) -> Result<Option<Duration>, SessionError> {
    let Some(interval) = st.ping_every else {
        return Ok(None);
    };
    let timeout = st.ping_timeout;
    let now = Instant::now();
    if let Some((_, sent)) = st.ping_out {
        let waited = now.saturating_duration_since(sent);
        if waited >= timeout {
            return Err(SessionError::PingTimeout(timeout));
        }
        return Ok(Some(timeout - waited));
    }
    let idle = now.saturating_duration_since(st.last_rx);
    if idle < interval {
        return Ok(Some(interval - idle));
    }
    // Queue a ping as a control task in the table.
    let Some(slot) = alloc_slot(st) else {
        return Ok(Some(interval));
    };
    let generation = next_generation(st);
    st.tasks[usize::from(slot)] = Some(Task::control(generation, TaskKind::Ping, None));
    let pdu = ping_pdu(itt_of(slot, generation), &st.sn);
    st.ctl_queue.push_back(Ctl::Immediate { slot, pdu });
    Ok(Some(timeout))
}
