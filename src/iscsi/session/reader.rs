//! The reader: parses every PDU from the target, checks it against the
//! task it names, reads Data-In straight into the command's buffer and
//! completes commands.

use super::*;

// ---------------------------------------------------------------- reader

pub(super) fn reader_loop(shared: Arc<Shared>, mut r: PduReader<TcpStream>) {
    ON_READER.with(|f| f.set(true));
    PLUGGED.with(|p| *p.borrow_mut() = Some(Vec::new()));
    crate::daemon::io_thread();
    let header = BHS_LEN + if shared.params.header_digest { 4 } else { 0 };
    let err = loop {
        // Another thread wants to receive (see `handover`): at this PDU
        // boundary, until it gives the receive side back.
        if shared.handover.asked() {
            match handover::park(&shared, r) {
                Some(back) => {
                    r = back;
                    continue;
                }
                None => return,
            }
        }
        // Before waiting for the target: first what completions left for
        // now (replies, resubmissions, Data-Out for R2Ts, NOP answers), in
        // one batch.
        idle_before(&shared, &r, header);
        match rx_one(&shared, &mut r) {
            Ok(()) => continue,
            Err(e) => break rx_failure(&shared, e),
        }
    };
    rx_ended(&shared, err);
}

/// The receive side ended with `err` (on the reader thread or a thread
/// that took it over): the session fails, and what the failed commands'
/// completions left is done (other sessions may have been given
/// commands).
pub(super) fn rx_ended(shared: &Shared, err: SessionError) {
    fail(shared, err);
    let _ = reader_idle(shared);
}

/// The session error a receive error means (a connection closed or shut
/// down while the session closes is the close, not a loss).
pub(super) fn rx_failure(shared: &Shared, e: RxError) -> SessionError {
    let closing = lock(&shared.state).closing;
    match e {
        RxError::Conn(ConnError::Closed) if closing => SessionError::Closed,
        RxError::Conn(ConnError::Io(_)) if closing => SessionError::Closed,
        RxError::Conn(c) => SessionError::ConnectionLost(c.to_string()),
        RxError::Protocol(m) => SessionError::Protocol(m),
        RxError::Session(e) => e,
    }
}

pub(super) enum RxError {
    Conn(ConnError),
    Protocol(String),
    /// The session fails for a reason of its own (a command timeout).
    Session(SessionError),
}

impl From<ConnError> for RxError {
    fn from(e: ConnError) -> Self {
        RxError::Conn(e)
    }
}

pub(super) fn proto(m: String) -> RxError {
    RxError::Protocol(m)
}

/// Update ExpStatSN and the command window from a target PDU (RFC 7143
/// §4.2.2.1: MaxCmdSN/ExpCmdSN only move forward, and a MaxCmdSN below
/// ExpCmdSN - 1 is ignored).
pub(super) fn update_sn(st: &mut State, pdu: &Pdu) -> bool {
    let Some(sn) = pdu.target_sn() else {
        return false;
    };
    let carries_status = match pdu {
        Pdu::DataIn(d) => d.has_status,
        Pdu::R2t(_) => false,
        Pdu::NopIn(n) => n.itt != RESERVED_TAG,
        _ => true,
    };
    if carries_status && sn_le(st.sn.exp_stat_sn, sn.stat_sn) {
        st.sn.exp_stat_sn = sn.stat_sn.wrapping_add(1);
    }
    let mut opened = false;
    if sn_le(sn.exp_cmd_sn.wrapping_sub(1), sn.max_cmd_sn) {
        if sn_lt(st.sn.exp_cmd_sn, sn.exp_cmd_sn) {
            st.sn.exp_cmd_sn = sn.exp_cmd_sn;
        }
        if sn_lt(st.sn.max_cmd_sn, sn.max_cmd_sn) {
            st.sn.max_cmd_sn = sn.max_cmd_sn;
            opened = true;
        }
    }
    opened
}

/// The task a target PDU names, checked: slot in range, generation
/// current, kind as expected.
pub(super) fn lookup<'a>(st: &'a mut State, itt: u32, what: &str) -> Result<&'a mut Task, RxError> {
    let (slot, generation) = slot_of(itt);
    match st.tasks.get_mut(usize::from(slot)) {
        Some(Some(t)) if t.generation == generation => Ok(t),
        _ => Err(proto(format!("{what} for unknown task tag 0x{itt:08x}"))),
    }
}

pub(super) fn rx_one(shared: &Shared, r: &mut PduReader<TcpStream>) -> Result<(), RxError> {
    let h = r.read_header()?;
    let mut st = lock(&shared.state);
    if st.last_rx_bytes != r.received() {
        st.last_rx_bytes = r.received();
        st.last_rx = Instant::now();
    }
    // A window that opened is used by the reader's next flush.
    update_sn(&mut st, &h.pdu);
    let itt = match &h.pdu {
        Pdu::DataIn(d) => Some(d.itt),
        Pdu::ScsiResponse(resp) => Some(resp.itt),
        Pdu::R2t(r2t) => Some(r2t.itt),
        _ => None,
    };
    if let Some(itt) = itt.filter(|&i| is_retired(&st, i)) {
        // The answer to a command already sent again: nothing of it may
        // reach the command's buffer now; read it and drop it.
        drop(st);
        log::info!(
            "a late {} for task 0x{itt:08x}, already sent again: dropped",
            h.pdu.opcode().name()
        );
        idle_before(shared, r, segment_bytes(shared, h.data_len));
        r.skip_data()?;
        return Ok(());
    }
    match h.pdu {
        Pdu::DataIn(d) => on_data_in(shared, r, st, d, h.data_len),
        Pdu::ScsiResponse(resp) => on_scsi_response(shared, r, st, resp, h.data_len),
        Pdu::R2t(r2t) => on_r2t(shared, st, r2t),
        Pdu::NopIn(n) => on_nop_in(shared, r, st, n, h.data_len),
        Pdu::TaskMgmtResponse(tm) => on_tmf_response(shared, st, tm),
        Pdu::LogoutResponse(lr) => on_logout_response(shared, st, lr),
        Pdu::AsyncMessage(a) => on_async_message(shared, r, st, a, h.data_len),
        Pdu::Reject(rj) => on_reject(shared, r, st, rj, h.data_len),
        other => Err(proto(format!(
            "unexpected {} in the full-feature phase",
            other.opcode().name()
        ))),
    }
}

/// Data-In: checked against its task (direction, DataSN, offset and
/// length: contiguous and ascending), read straight into the task's
/// buffer; with status, the read ends (exactly its bytes, less a reported
/// underflow). The reader's lock is held on entry.
fn on_data_in(
    shared: &Shared,
    r: &mut PduReader<TcpStream>,
    mut st: MutexGuard<'_, State>,
    d: DataIn,
    data_len: usize,
) -> Result<(), RxError> {
    let len = data_len;
    let t = lookup(&mut st, d.itt, "Data-In")?;
    let DataDir::Read(want) = t.dir else {
        return Err(proto(format!(
            "Data-In for task 0x{:08x}, which reads nothing",
            d.itt
        )));
    };
    if d.data_sn != t.next_data_sn {
        return Err(proto(format!(
            "Data-In DataSN {} for task 0x{:08x}, expected {} (ERL 0 cannot recover)",
            d.data_sn, d.itt, t.next_data_sn
        )));
    }
    let off = d.buffer_offset as usize;
    if off.checked_add(len).is_none_or(|end| end > want as usize) {
        return Err(proto(format!(
            "Data-In for task 0x{:08x} at offset {off}+{len} beyond the {want}-byte transfer",
            d.itt
        )));
    }
    // DataPDUInOrder=Yes and DataSequenceInOrder=Yes (we offer Yes,
    // and both results are OR functions): the data comes in one
    // contiguous ascending run, so `data_in` is exactly the bytes
    // of the buffer the target wrote. An overlap or a hole would
    // leave bytes of an earlier request in the buffer.
    if off != t.data_in {
        return Err(proto(format!(
            "Data-In for task 0x{:08x} at offset {off}, expected {} (DataPDUInOrder=Yes: contiguous and ascending; an overlap or a hole)",
            d.itt, t.data_in
        )));
    }
    t.next_data_sn = t.next_data_sn.wrapping_add(1);
    let mut buf = t.buf.take().unwrap_or_default();
    if off == 0 {
        t.direct = direct_attempt(&buf, r.params().data_digest);
    }
    let direct = t.direct.clone();
    drop(st);
    idle_before(shared, r, segment_bytes(shared, len));
    // The payload goes straight into the command's buffer, or into the
    // bridge's request that lent it.
    let rd = match buf.get_mut(off..off + len) {
        Some(dst) => match &direct {
            Some((to, token)) => r.read_data_direct(&**to, *token, off, dst),
            None => r.read_data(dst),
        },
        None => Err(ConnError::LengthMismatch {
            opcode: Opcode::DataIn,
            len,
            buffer: buf.len(),
        }),
    };
    let mut st = lock(&shared.state);
    let slot = slot_of(d.itt).0;
    if let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) {
        t.buf = Some(buf);
        t.data_in += len;
    }
    rd?;
    if d.has_status {
        let data_in = match st.tasks.get(usize::from(slot)) {
            Some(Some(t)) => t.data_in,
            _ => 0,
        };
        let residual = residual(d.overflow, d.underflow, d.residual);
        check_read_length(d.itt, want, data_in, residual).map_err(proto)?;
        finish(
            shared,
            st,
            slot,
            Ok(ScsiResult {
                status: d.status,
                sense: None,
                residual,
                data_in,
            }),
        );
    }
    Ok(())
}

/// A read attempt begins (its Data-In at offset 0) into `buf`: when a
/// bridge lent it (see [`crate::direct`]), the attempt's data goes to the
/// bridge's request, unless a data digest has to be checked over it first.
/// The bridge hears of every attempt, so one that fills `buf` after one
/// that went straight through is not mistaken for it.
fn direct_attempt(
    buf: &[u8],
    data_digest: bool,
) -> Option<(Arc<dyn crate::direct::DirectRx>, usize)> {
    let (to, token) = crate::direct::find(buf.as_ptr() as usize)?;
    to.begin(token);
    (!data_digest).then_some((to, token))
}

/// SCSI Response: ExpDataSN and, for a GOOD read, the bytes that arrived
/// are checked; the task ends with its status and sense.
fn on_scsi_response(
    shared: &Shared,
    r: &mut PduReader<TcpStream>,
    mut st: MutexGuard<'_, State>,
    resp: ScsiResponse,
    data_len: usize,
) -> Result<(), RxError> {
    let t = lookup(&mut st, resp.itt, "SCSI Response")?;
    if !matches!(t.kind, TaskKind::Scsi) {
        return Err(proto(format!(
            "SCSI Response for non-SCSI task 0x{:08x}",
            resp.itt
        )));
    }
    check_exp_data_sn(resp.itt, resp.exp_data_sn, t.next_data_sn, t.r2ts).map_err(proto)?;
    let data_in = t.data_in;
    let read_len = match t.dir {
        DataDir::Read(want) => Some(want),
        _ => None,
    };
    drop(st);
    idle_before(shared, r, segment_bytes(shared, data_len));
    let data = r.read_data_vec()?;
    // Only a GOOD read promises its data; a CHECK CONDITION may
    // come after part of it (and its buffer is not used).
    if let Some(want) = read_len
        && resp.response == 0
        && resp.status == 0
    {
        let res = residual(resp.overflow, resp.underflow, resp.residual);
        check_read_length(resp.itt, want, data_in, res).map_err(proto)?;
    }
    let st = lock(&shared.state);
    let slot = slot_of(resp.itt).0;
    let result = if resp.response != 0 {
        Err(SessionError::TargetFailure(resp.response))
    } else {
        // Sense data: 2-byte SenseLength, then the sense bytes.
        let sense = if data.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
            data.get(2..2 + n.min(data.len() - 2))
                .map(|s| s.to_vec())
                .filter(|s| !s.is_empty())
        } else {
            None
        };
        Ok(ScsiResult {
            status: resp.status,
            sense,
            residual: residual(resp.overflow, resp.underflow, resp.residual),
            data_in,
        })
    };
    finish(shared, st, slot, result);
    Ok(())
}

/// R2T: within the write and MaxBurstLength, and no more outstanding
/// than MaxOutstandingR2T; queued for the writer.
fn on_r2t(shared: &Shared, mut st: MutexGuard<'_, State>, r2t: R2t) -> Result<(), RxError> {
    let max_burst = shared.params.max_burst;
    let t = lookup(&mut st, r2t.itt, "R2T")?;
    let DataDir::Write(total) = t.dir else {
        return Err(proto(format!(
            "R2T for task 0x{:08x}, which writes nothing",
            r2t.itt
        )));
    };
    let end = u64::from(r2t.buffer_offset) + u64::from(r2t.desired_len);
    if end > u64::from(total) || r2t.desired_len == 0 {
        return Err(proto(format!(
            "R2T for task 0x{:08x} asks for {}+{} of a {total}-byte write",
            r2t.itt, r2t.buffer_offset, r2t.desired_len
        )));
    }
    if r2t.desired_len > max_burst {
        return Err(proto(format!(
            "R2T desired length {} above MaxBurstLength {max_burst}",
            r2t.desired_len
        )));
    }
    let slot = slot_of(r2t.itt).0;
    check_outstanding_r2t(&st.ctl_queue, slot, shared.params.max_outstanding_r2t)
        .map_err(|m| proto(format!("task 0x{:08x}: {m}", r2t.itt)))?;
    if let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) {
        t.r2ts = t.r2ts.wrapping_add(1);
    }
    st.ctl_queue.push_back(Ctl::DataOut {
        slot,
        ttt: r2t.ttt,
        offset: r2t.buffer_offset,
        len: r2t.desired_len,
    });
    Ok(())
}

/// NOP-In: the answer to our ping, or the target's ping (answered, at
/// most [`MAX_NOP_REPLIES`] waiting).
fn on_nop_in(
    shared: &Shared,
    r: &mut PduReader<TcpStream>,
    st: MutexGuard<'_, State>,
    n: NopIn,
    data_len: usize,
) -> Result<(), RxError> {
    drop(st);
    idle_before(shared, r, segment_bytes(shared, data_len));
    let data = r.read_data_vec()?;
    let mut st = lock(&shared.state);
    if n.itt != RESERVED_TAG {
        let t = lookup(&mut st, n.itt, "NOP-In")?;
        if !matches!(t.kind, TaskKind::Ping) {
            return Err(proto(format!(
                "NOP-In answering task 0x{:08x}, which is not a ping",
                n.itt
            )));
        }
        let slot = slot_of(n.itt).0;
        let answered = st.ping_out.take_if(|(s, _)| *s == slot).is_some();
        finish(shared, st, slot, Ok(ScsiResult::default()));
        if answered {
            // The writer sleeps until the ping's timeout: wake it to
            // schedule the next one an interval after this answer, not
            // a timeout after the ping (which made a silent loss take
            // interval + 2 × timeout to notice instead of interval +
            // timeout).
            shared.wake_writer.notify_all();
        }
    } else if n.ttt != RESERVED_TAG {
        // The target pings us: answer with its TTT and its data.
        // A target that pings faster than we can answer is
        // flooding us: the queue does not grow without bound.
        let pending = st
            .ctl_queue
            .iter()
            .filter(|c| matches!(c, Ctl::NopReply { .. }))
            .count();
        if pending >= MAX_NOP_REPLIES {
            return Err(proto(format!(
                "more than {MAX_NOP_REPLIES} NOP-In pings waiting for an answer: the target floods us"
            )));
        }
        st.ctl_queue.push_back(Ctl::NopReply {
            ttt: n.ttt,
            lun: n.lun,
            data,
        });
    }
    Ok(())
}

/// Task Management Response: to a caller's TMF, or to the session's own
/// step of the error-handling ladder ([`tmf_answered`]).
fn on_tmf_response(
    shared: &Shared,
    mut st: MutexGuard<'_, State>,
    tm: TaskMgmtResponse,
) -> Result<(), RxError> {
    let t = lookup(&mut st, tm.itt, "Task Management Response")?;
    if !matches!(t.kind, TaskKind::Tmf) {
        return Err(proto(format!("TMF response for task 0x{:08x}", tm.itt)));
    }
    let (lun, function) = (t.lun, t.cdb[0]);
    let slot = slot_of(tm.itt).0;
    if let Some(p) = st.escalation.filter(|p| p.tmf() == slot) {
        st.escalation = None;
        let timeout = shared.opts.cmd_timeout.unwrap_or(DEFAULT_CMD_TIMEOUT);
        if let Err(e) = tmf_answered(&mut st, p, tm.response, timeout) {
            // The session fails once this lock is released; until then
            // the step stays pending, so the writer cannot see an overdue
            // command with no step taken and start the ladder again.
            st.escalation = Some(p);
            return Err(RxError::Session(e));
        }
        shared.wake_writer.notify_one();
    } else if function == TmfFunction::LogicalUnitReset as u8 && tm.response == 0 {
        // A caller's reset (the path set's fence) ended our own commands
        // to the LU as well.
        retry_lun(&mut st, lun).map_err(RxError::Session)?;
        shared.wake_writer.notify_one();
    }
    finish(
        shared,
        st,
        slot,
        Ok(ScsiResult {
            status: tm.response,
            ..Default::default()
        }),
    );
    Ok(())
}

/// Logout Response: the session closes.
fn on_logout_response(
    shared: &Shared,
    mut st: MutexGuard<'_, State>,
    lr: LogoutResponse,
) -> Result<(), RxError> {
    let t = lookup(&mut st, lr.itt, "Logout Response")?;
    if !matches!(t.kind, TaskKind::Logout) {
        return Err(proto(format!("Logout Response for task 0x{:08x}", lr.itt)));
    }
    let slot = slot_of(lr.itt).0;
    st.closing = true;
    finish(
        shared,
        st,
        slot,
        Ok(ScsiResult {
            status: lr.response,
            ..Default::default()
        }),
    );
    Ok(())
}

/// Asynchronous message: an event for the owner, within the token
/// bucket.
fn on_async_message(
    shared: &Shared,
    r: &mut PduReader<TcpStream>,
    mut st: MutexGuard<'_, State>,
    a: AsyncMessage,
    data_len: usize,
) -> Result<(), RxError> {
    let events = st.events.clone();
    let admitted = st
        .event_tokens
        .take(Instant::now(), "asynchronous messages");
    drop(st);
    idle_before(shared, r, segment_bytes(shared, data_len));
    let data = r.read_data_vec()?;
    let ev = match a.event {
        0 => {
            let sense = if data.len() >= 2 {
                let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
                data.get(2..2 + n.min(data.len() - 2))
                    .unwrap_or(&[])
                    .to_vec()
            } else {
                Vec::new()
            };
            SessionEvent::ScsiEvent { lun: a.lun, sense }
        }
        1 => SessionEvent::LogoutRequested { within: a.param3 },
        2 | 3 => SessionEvent::Dropping {
            event: a.event,
            time2wait: a.param2,
            time2retain: a.param3,
        },
        4 => SessionEvent::NegotiationRequested,
        _ if !admitted => return Ok(()),
        other => {
            log::info!("ignoring async event {other} from target");
            return Ok(());
        }
    };
    if !admitted {
        return Ok(());
    }
    log::warn!("target async event: {ev:?}");
    if let Some(tx) = events {
        let _ = tx.send(ev);
    }
    Ok(())
}

/// Reject: the task it names fails; logged within the token bucket.
fn on_reject(
    shared: &Shared,
    r: &mut PduReader<TcpStream>,
    mut st: MutexGuard<'_, State>,
    rj: Reject,
    data_len: usize,
) -> Result<(), RxError> {
    let admitted = st.event_tokens.take(Instant::now(), "Rejects");
    drop(st);
    idle_before(shared, r, segment_bytes(shared, data_len));
    let data = r.read_data_vec()?;
    // The data segment is the rejected PDU's header: find its ITT.
    let itt = Bhs::new_checked(&data[..]).map(|b| b.itt()).ok();
    let what = reject_reason_name(rj.reason);
    if admitted {
        log::error!("target rejected a PDU: {what} (reason 0x{:02x})", rj.reason);
    }
    let mut st = lock(&shared.state);
    match itt {
        Some(itt) if itt != RESERVED_TAG => {
            let slot = slot_of(itt).0;
            if lookup(&mut st, itt, "Reject").is_ok() {
                finish(
                    shared,
                    st,
                    slot,
                    Err(SessionError::Rejected {
                        reason: rj.reason,
                        what,
                    }),
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// ExpDataSN of a SCSI Response (RFC 7143 §11.4.8): the number of Data-In
/// and R2T PDUs the target sent for the command. Anything else means a PDU
/// of the command was lost or invented. 0 is taken as "not counted":
/// Linux's LIO and tgtd leave the field 0 in every response.
pub(super) fn check_exp_data_sn(
    itt: u32,
    exp: u32,
    data_ins: u32,
    r2ts: u32,
) -> Result<(), String> {
    let sent = data_ins.wrapping_add(r2ts);
    if exp != 0 && exp != sent {
        return Err(format!(
            "SCSI Response for task 0x{itt:08x} says ExpDataSN {exp}, but {data_ins} Data-In and {r2ts} R2T PDUs arrived"
        ));
    }
    Ok(())
}

/// A read that ends with status: the bytes that arrived must be exactly
/// the transfer less what the target reported as not sent (underflow). A
/// shortfall it did not report, or a residual that does not match, means
/// part of the buffer holds bytes the target never sent: a protocol error
/// (the connection is dropped and the command retried through recovery),
/// never a completed read. A reported underflow is passed on (the
/// caller fails the read: it asked for every byte).
pub(super) fn check_read_length(
    itt: u32,
    want: u32,
    data_in: usize,
    res: Residual,
) -> Result<(), String> {
    let expected = match res {
        Residual::Under(n) if n > want => {
            return Err(format!(
                "read task 0x{itt:08x}: underflow residual {n} above the {want}-byte transfer"
            ));
        }
        Residual::Under(n) => (want - n) as usize,
        Residual::None | Residual::Over(_) => want as usize,
    };
    if data_in != expected {
        return Err(format!(
            "read task 0x{itt:08x}: {data_in} of {want} bytes arrived, {expected} expected (residual {res:?}): short read"
        ));
    }
    Ok(())
}

pub(super) fn residual(over: bool, under: bool, count: u32) -> Residual {
    if under {
        Residual::Under(count)
    } else if over {
        Residual::Over(count)
    } else {
        Residual::None
    }
}

/// A token bucket for what a target may send unasked (asynchronous
/// messages, Rejects): [`EVENT_BURST`] at once, one more per second; the
/// rest are read and dropped, with one warning per flood.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tokens {
    left: u32,
    burst: u32,
    refilled: Instant,
    pub(super) dropped: u64,
}

impl Tokens {
    pub(super) fn new(burst: u32, now: Instant) -> Tokens {
        Tokens {
            left: burst,
            burst,
            refilled: now,
            dropped: 0,
        }
    }

    /// Take one token: `false` when the caller drops what it is for.
    pub(super) fn take(&mut self, now: Instant, what: &str) -> bool {
        let secs = now.saturating_duration_since(self.refilled).as_secs();
        if secs > 0 {
            self.left = (u64::from(self.left) + secs).min(u64::from(self.burst)) as u32;
            self.refilled = now;
        }
        if self.left == 0 {
            self.dropped += 1;
            if self.dropped == 1 {
                log::warn!(
                    "the target floods us with {what}: dropping them (at most {} at once, then one a second)",
                    self.burst
                );
            }
            return false;
        }
        if self.dropped > 0 {
            log::warn!("dropped {} unasked PDUs from the target", self.dropped);
            self.dropped = 0;
        }
        self.left -= 1;
        true
    }
}
