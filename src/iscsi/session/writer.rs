//! The writer: sends commands in CmdSN order while the target's window
//! is open, Data-Out for R2Ts and unsolicited data, NOP-Out answers,
//! pings and task management, batched into vectored writes (of up to 32
//! PDUs each, with no allocation per batch).

use std::os::fd::AsRawFd;

use super::*;

// ---------------------------------------------------------------- writer

/// One PDU being assembled by the writer, owning what its data refers to.
pub(super) struct Out {
    bhs: [u8; BHS_LEN],
    /// (slot, range of the task's buffer) when the data is a command's.
    data: OutData,
}

pub(super) enum OutData {
    None,
    Owned(Vec<u8>),
    Task { slot: u16, start: usize, end: usize },
}

/// The transmit side: the connection's writer, and the lists a batch is
/// assembled in, kept from one batch to the next so that sending
/// allocates nothing.
pub(super) struct Tx {
    w: PduWriter<TcpStream>,
    outs: Vec<Out>,
    /// Buffers lent out for the batch, by slot.
    lent: Vec<(u16, Vec<u8>)>,
    /// Tasks answered while their buffer was lent out, finished once every
    /// buffer is back (kept for its room, like the two above).
    answered: Vec<(u16, Result<ScsiResult, SessionError>)>,
    /// `outs` and `lent` hold a batch taken off the queues by a thread
    /// that must not block on the socket, left for the writer: it goes
    /// out before anything else (see [`flush_with`]).
    held: bool,
    /// The socket's send buffer as last asked (it grows as the kernel
    /// tunes it), and the looks since (see [`room_for`]).
    sndbuf: usize,
    sndbuf_age: u32,
}

impl Tx {
    /// Room for a batch of every task slot's command (`depth`) and a
    /// Data-Out each, allocated now rather than on the I/O path.
    pub(super) fn new(w: PduWriter<TcpStream>, depth: usize) -> Tx {
        Tx {
            w,
            outs: Vec::with_capacity(2 * depth),
            lent: Vec::with_capacity(depth),
            answered: Vec::with_capacity(depth),
            held: false,
            sndbuf: 0,
            sndbuf_age: 0,
        }
    }
}

pub(super) fn writer_loop(shared: Arc<Shared>) {
    // This thread may carry the I/O of the filesystem the machine runs on.
    crate::daemon::io_thread();
    loop {
        {
            let mut st = lock(&shared.state);
            loop {
                if st.failed.is_some() {
                    // A batch left for us goes back to its tasks (the
                    // send fails at once), which then complete.
                    drop(st);
                    let mut w = shared.tx.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = send_held(&shared, &mut w);
                    return;
                }
                if has_work(&st) || st.held {
                    break;
                }
                let timeout = match timers_due(&mut st, &shared) {
                    Ok(t) => t,
                    Err(e) => {
                        drop(st);
                        fail(&shared, e);
                        return;
                    }
                };
                if has_work(&st) || st.held {
                    break;
                }
                st = match timeout {
                    Some(t) => shared
                        .wake_writer
                        .wait_timeout(st, t)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0),
                    None => shared
                        .wake_writer
                        .wait(st)
                        .unwrap_or_else(|e| e.into_inner()),
                };
            }
        }
        let mut w = shared.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = flush(&shared, &mut w) {
            drop(w);
            fail(&shared, e);
            return;
        }
    }
}

/// Something can be sent now: control PDUs, or commands within the window.
pub(super) fn has_work(st: &State) -> bool {
    !st.ctl_queue.is_empty() || (!st.cmd_queue.is_empty() && sn_le(st.sn.cmd_sn, st.sn.max_cmd_sn))
}

/// Send everything that can be sent now, in as few writes as possible.
/// The caller holds the transmit lock, which keeps CmdSN order equal to
/// wire order.
pub(super) fn flush(shared: &Shared, tx: &mut Tx) -> Result<(), SessionError> {
    flush_with(shared, tx, true)
}

/// [`flush`]; without `may_block`, for a thread that receives for
/// sessions (see `handover`): it must never wait on the socket, or
/// nothing reads the target's answers while the target, blocked on a
/// send of its own, reads nothing of ours. A batch the socket has no room
/// for is left in `tx` for the writer thread, which sends it first; so is
/// everything after it (wire order is CmdSN order).
pub(super) fn flush_with(
    shared: &Shared,
    tx: &mut Tx,
    may_block: bool,
) -> Result<(), SessionError> {
    if tx.held {
        if !may_block {
            return Ok(());
        }
        send_held(shared, tx)?;
    }
    loop {
        let mut outs = std::mem::take(&mut tx.outs);
        let mut lent = std::mem::take(&mut tx.lent);
        let more = fill_batch(shared, &mut outs, &mut lent);
        if more && !may_block && !room_for(shared, tx, &outs, &lent) {
            tx.outs = outs;
            tx.lent = lent;
            tx.held = true;
            let mut st = lock(&shared.state);
            if st.failed.is_some() {
                // No writer to leave it to: the send fails at once and the
                // buffers go back to their tasks.
                drop(st);
                return send_held(shared, tx);
            }
            st.held = true;
            shared.wake_writer.notify_one();
            return Ok(());
        }
        if !more {
            tx.outs = outs;
            tx.lent = lent;
            return Ok(());
        }
        send_batch(shared, tx, outs, lent)?;
    }
}

/// Send a batch, then keep its lists (emptied) in `tx` and give the
/// buffers it borrowed back to their tasks, whether or not it went out.
fn send_batch(
    shared: &Shared,
    tx: &mut Tx,
    mut outs: Vec<Out>,
    mut lent: Vec<(u16, Vec<u8>)>,
) -> Result<(), SessionError> {
    let result = send_outs(&mut tx.w, &mut outs, &lent);
    outs.clear();
    tx.outs = outs;
    give_back(shared, &mut lent, &mut tx.answered);
    tx.lent = lent;
    result.map_err(|e| SessionError::ConnectionLost(format!("sending: {e}")))
}

/// Send the batch left in `tx` (see [`flush_with`]), if any.
fn send_held(shared: &Shared, tx: &mut Tx) -> Result<(), SessionError> {
    if !std::mem::take(&mut tx.held) {
        return Ok(());
    }
    lock(&shared.state).held = false;
    let outs = std::mem::take(&mut tx.outs);
    let lent = std::mem::take(&mut tx.lent);
    send_batch(shared, tx, outs, lent)
}

/// Whether the socket takes the batch without blocking: what it still
/// holds (unsent or unacknowledged) and the batch, with room for the
/// kernel's overhead, within its send buffer. Unknown: no. The buffer's
/// size is asked again every [`SNDBUF_LOOKS`] looks, and before a no.
fn room_for(shared: &Shared, tx: &mut Tx, outs: &[Out], lent: &[(u16, Vec<u8>)]) -> bool {
    let digests =
        4 * (usize::from(shared.params.header_digest) + usize::from(shared.params.data_digest));
    let bytes: usize = outs
        .iter()
        .map(|o| BHS_LEN + pad4(data_of(o, lent).len()) + digests)
        .sum();
    let fd = shared.socket.as_raw_fd();
    let Some(queued) = sockinfo::queued(fd, nix::libc::TIOCOUTQ) else {
        return false;
    };
    let need = queued + bytes;
    let fits = |sndbuf: usize| need + need / 4 + 8192 <= sndbuf;
    tx.sndbuf_age += 1;
    if tx.sndbuf_age >= SNDBUF_LOOKS || !fits(tx.sndbuf) {
        tx.sndbuf = sockinfo::option(fd, nix::libc::SO_SNDBUF).unwrap_or(0);
        tx.sndbuf_age = 0;
    }
    fits(tx.sndbuf)
}

/// Looks at the send queue between two looks at the send buffer's size.
const SNDBUF_LOOKS: u32 = 64;

/// Return the buffers lent for a batch; complete the tasks answered
/// meanwhile.
fn give_back(
    shared: &Shared,
    lent: &mut Vec<(u16, Vec<u8>)>,
    answered: &mut Vec<(u16, Result<ScsiResult, SessionError>)>,
) {
    if lent.is_empty() {
        return;
    }
    let mut st = lock(&shared.state);
    for (slot, b) in lent.drain(..) {
        if let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) {
            t.buf = Some(b);
            if let Some(r) = t.parked.take() {
                answered.push((slot, r));
            }
        }
    }
    drop(st);
    for (slot, r) in answered.drain(..) {
        finish(shared, lock(&shared.state), slot, r);
    }
}

/// Take what can be sent now off the queues into `outs` (lending the
/// buffers their data is in): `false` when there is nothing.
fn fill_batch(shared: &Shared, outs: &mut Vec<Out>, lent: &mut Vec<(u16, Vec<u8>)>) -> bool {
    let p = shared.params;
    let max_seg = p.max_send_data_segment.max(512) as usize;
    let mut st = lock(&shared.state);
    if st.failed.is_some() || !has_work(&st) {
        return false;
    }
    take_ctl(&mut st, outs, lent, max_seg);
    take_cmds(&mut st, &p, outs, lent, max_seg);
    true
}

/// Control PDUs first: NOP answers, Data-Out bursts, immediate tasks.
fn take_ctl(st: &mut State, outs: &mut Vec<Out>, lent: &mut Vec<(u16, Vec<u8>)>, max_seg: usize) {
    while let Some(c) = st.ctl_queue.pop_front() {
        match c {
            Ctl::NopReply { ttt, lun, data } => {
                let pdu = Pdu::NopOut(NopOut {
                    lun,
                    itt: RESERVED_TAG,
                    ttt,
                    cmd_sn: st.sn.cmd_sn,
                    exp_stat_sn: st.sn.exp_stat_sn,
                });
                outs.push(out(&pdu, OutData::Owned(data)));
            }
            Ctl::Immediate { slot, mut pdu } => {
                // Immediate PDUs carry the current CmdSN without
                // advancing it (RFC 7143 §3.2.2.1); refresh it now.
                let (cs, es) = (st.sn.cmd_sn, st.sn.exp_stat_sn);
                match &mut pdu {
                    Pdu::NopOut(n) => {
                        n.cmd_sn = cs;
                        n.exp_stat_sn = es;
                    }
                    Pdu::TaskMgmtRequest(t) => {
                        t.cmd_sn = cs;
                        t.exp_stat_sn = es;
                    }
                    Pdu::LogoutRequest(l) => {
                        l.cmd_sn = cs;
                        l.exp_stat_sn = es;
                    }
                    _ => {}
                }
                if matches!(pdu, Pdu::NopOut(_)) {
                    st.ping_out = Some((slot, Instant::now()));
                }
                outs.push(out(&pdu, OutData::None));
            }
            Ctl::DataOut {
                slot,
                ttt,
                offset,
                len,
            } => {
                let exp_stat_sn = st.sn.exp_stat_sn;
                let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) else {
                    continue;
                };
                if t.buf.is_none() && !lent.iter().any(|(s, _)| *s == slot) {
                    continue;
                }
                if let Some(b) = t.buf.take() {
                    lent.push((slot, b));
                }
                data_out_pdus(
                    outs,
                    t.lun,
                    itt_of(slot, t.generation),
                    ttt,
                    exp_stat_sn,
                    offset,
                    len,
                    max_seg,
                    slot,
                );
            }
        }
    }
}

/// Commands while the window is open, in order, 256 PDUs at most.
fn take_cmds(
    st: &mut State,
    p: &FfpParams,
    outs: &mut Vec<Out>,
    lent: &mut Vec<(u16, Vec<u8>)>,
    max_seg: usize,
) {
    let mut now = None;
    while sn_le(st.sn.cmd_sn, st.sn.max_cmd_sn) {
        let Some(slot) = st.cmd_queue.pop_front() else {
            break;
        };
        let cmd_sn = st.sn.cmd_sn;
        st.sn.cmd_sn = cmd_sn.wrapping_add(1);
        let exp_stat_sn = st.sn.exp_stat_sn;
        let Some(Some(t)) = st.tasks.get_mut(usize::from(slot)) else {
            continue;
        };
        t.cmd_sn = cmd_sn;
        t.sent = Some(*now.get_or_insert_with(Instant::now));
        let itt = itt_of(slot, t.generation);
        let (read, write, len) = match t.dir {
            DataDir::None => (false, false, 0),
            DataDir::Read(n) => (true, false, n),
            DataDir::Write(n) => (false, true, n),
        };
        // Immediate data (ImmediateData=Yes): up to FirstBurstLength
        // and the target's segment limit, in the command PDU itself.
        let immediate = if write && p.immediate_data {
            len.min(p.first_burst).min(max_seg as u32)
        } else {
            0
        };
        // Unsolicited Data-Out (InitialR2T=No): the rest of the
        // first burst, without waiting for an R2T.
        let unsolicited_end = if write && !p.initial_r2t {
            len.min(p.first_burst)
        } else {
            immediate
        };
        t.unsolicited = unsolicited_end;
        let pdu = Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: unsolicited_end == immediate,
            read,
            write,
            attr: t.attr,
            lun: t.lun,
            itt,
            expected_len: len,
            cmd_sn,
            exp_stat_sn,
            cdb: t.cdb,
        });
        let lun = t.lun;
        if write && unsolicited_end > 0 {
            if let Some(b) = t.buf.take() {
                lent.push((slot, b));
            }
            outs.push(out(
                &pdu,
                OutData::Task {
                    slot,
                    start: 0,
                    end: immediate as usize,
                },
            ));
            if unsolicited_end > immediate {
                data_out_pdus(
                    outs,
                    lun,
                    itt,
                    RESERVED_TAG,
                    exp_stat_sn,
                    immediate,
                    unsolicited_end - immediate,
                    max_seg,
                    slot,
                );
            }
        } else {
            outs.push(out(&pdu, OutData::None));
        }
        if outs.len() >= 256 {
            break;
        }
    }
}

pub(super) fn out(pdu: &Pdu, data: OutData) -> Out {
    Out {
        bhs: pdu.to_bytes(0),
        data,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn data_out_pdus(
    outs: &mut Vec<Out>,
    lun: [u8; 8],
    itt: u32,
    ttt: u32,
    exp_stat_sn: u32,
    offset: u32,
    len: u32,
    max_seg: usize,
    slot: u16,
) {
    let mut data_sn = 0u32;
    let mut at = offset as usize;
    let end = offset as usize + len as usize;
    while at < end {
        let n = (end - at).min(max_seg);
        let pdu = Pdu::DataOut(DataOut {
            final_: at + n == end,
            lun,
            itt,
            ttt,
            exp_stat_sn,
            data_sn,
            buffer_offset: at as u32,
        });
        outs.push(out(
            &pdu,
            OutData::Task {
                slot,
                start: at,
                end: at + n,
            },
        ));
        data_sn += 1;
        at += n;
    }
}

/// Send a batch: each PDU's BHS gets the length of its data, which is
/// its own or a slice of a lent task buffer.
pub(super) fn send_outs(
    w: &mut PduWriter<TcpStream>,
    outs: &mut [Out],
    lent: &[(u16, Vec<u8>)],
) -> io::Result<()> {
    for o in outs.iter_mut() {
        let len = data_of(o, lent).len();
        Bhs::new_unchecked(&mut o.bhs[..]).set_data_segment_len(len);
    }
    w.send_each(outs.iter().map(|o| (&o.bhs, data_of(o, lent))))
}

/// The data segment of `o`: its own, or a slice of a lent task buffer.
fn data_of<'a>(o: &'a Out, lent: &'a [(u16, Vec<u8>)]) -> &'a [u8] {
    match &o.data {
        OutData::None => &[],
        OutData::Owned(v) => v,
        OutData::Task { slot, start, end } => lent
            .iter()
            .find(|(s, _)| s == slot)
            .and_then(|(_, b)| b.get(*start..*end))
            .unwrap_or(&[]),
    }
}
