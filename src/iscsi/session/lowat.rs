//! Waking the reader once per batch of answers rather than once per
//! answer (SO_RCVLOWAT).
//!
//! With many commands in flight, a reader woken by every answer spends
//! more on sleeping and waking (and on the small writes that follow each
//! wake) than on the answers themselves. Before the reader may wait for
//! the target, it asks the kernel to wake it only once about a quarter of
//! the answers on the wire could have arrived, and polls with a short
//! timeout: the estimate counts good answers, and a shorter one (an error,
//! sense data, an R2T the target waits on) must not wait long. The
//! threshold is in place for that poll only: reads run with the default
//! of one byte, and the bytes the poll left waiting are counted so that
//! reading them is no idle point. When the poll times out, batching rests
//! for a while (a slow target whose answers trickle in gains nothing by
//! it).

use std::cell::Cell;
use std::os::fd::AsRawFd;

use super::*;

/// How long the reader waits for a batch before it takes what came: this
/// long, plus the time to carry the batch at 2 GB/s ([`wait_ns`]).
const WAIT_NS: i64 = 150_000;
/// Waits that skip batching after one timed out.
const REST: u32 = 64;
/// The smallest batch worth waiting for: smaller ones (the bare headers
/// answering writes) mostly come in one segment anyway, and the poll
/// would cost more than it saves.
const MIN_BATCH: usize = 4096;
/// Waits between two looks at the socket's receive buffer.
const REFIT: u32 = 32;
/// The largest threshold.
const MAX: usize = 1024 * 1024;

#[derive(Clone, Copy)]
struct Lowat {
    /// The threshold [`threshold`] asked for last, and what [`fit`] made
    /// of it (the receive buffer is asked for again only when that
    /// changes, or after [`REFIT`] waits: the kernel grows it).
    asked: usize,
    fitted: usize,
    waits: u32,
    /// Waits left before batching is tried again.
    rest: u32,
    /// The reader's byte count (see [`PduReader::received`]) up to which
    /// the bytes were counted in the socket after the last wait: reading
    /// them cannot block, so it is no idle point.
    there: u64,
}

thread_local! {
    static LOWAT: Cell<Lowat> = const {
        Cell::new(Lowat {
            asked: 1,
            fitted: 1,
            waits: 0,
            rest: 0,
            there: 0,
        })
    };
}

/// Whether the next `need` bytes from the connection are known to be
/// there already (counted after the last wait).
pub(super) fn already_there(r: &PduReader<TcpStream>, need: usize) -> bool {
    r.received() + need as u64 <= LOWAT.with(|c| c.get().there)
}

/// Before the reader waits for `need` more bytes: wait (briefly) for a
/// batch of answers to what is in flight. The threshold is in place for
/// the poll only, never for a read: a read with a threshold would wait
/// for it even when fewer bytes are all that is coming.
pub(super) fn before_wait(shared: &Shared, r: &PduReader<TcpStream>, need: usize) {
    let mut l = LOWAT.with(|c| c.get());
    let asked = if l.rest > 0 {
        l.rest -= 1;
        1
    } else {
        threshold(&lock(&shared.state), need)
    };
    let fd = shared.socket.as_raw_fd();
    l.waits = l.waits.wrapping_add(1);
    if asked != l.asked || l.waits.is_multiple_of(REFIT) {
        l.asked = asked;
        l.fitted = fit(fd, asked, need);
    }
    if l.fitted > 1 && set_lowat(fd, l.fitted) {
        let ready = sockinfo::readable(fd, wait_ns(l.fitted));
        set_lowat(fd, 1);
        // Readable is not always the threshold reached (the kernel also
        // wakes a reader whose receive window is nearly closed): count.
        let there = queued(fd);
        if there >= need {
            l.there = r.received() + there as u64;
        }
        if !ready {
            l.rest = REST;
        }
    }
    LOWAT.with(|c| c.set(l));
}

/// `want` within a third of the socket's receive buffer, and at least
/// `need` and [`MIN_BATCH`] (else 1). A larger threshold would make the
/// kernel grow the buffer and clamp the TCP window to the threshold
/// itself, which can stall the connection: the target could not send the
/// batch the reader waits for.
fn fit(fd: i32, want: usize, need: usize) -> usize {
    if want <= 1 {
        return 1;
    }
    let cap = rcvbuf(fd) / 3;
    match want.min(cap) {
        w if w >= need && w >= MIN_BATCH => w,
        _ => 1,
    }
}

/// The threshold for the commands on the wire now (see [`batch_bytes`]).
fn threshold(st: &State, need: usize) -> usize {
    let answers = st
        .tasks
        .iter()
        .flatten()
        .filter(|t| matches!(t.kind, TaskKind::Scsi) && t.sent.is_some())
        .map(answer_bytes);
    batch_bytes(answers, need)
}

/// Bytes a quarter of the commands on the wire (at least one, when two or
/// more are) answer with when all goes well, given what each answers
/// with, and at least `need`, at most [`MAX`]; 1 when batching cannot
/// help (see [`MIN_BATCH`]).
fn batch_bytes(answers: impl Iterator<Item = usize>, need: usize) -> usize {
    let (on_wire, least) = answers.fold((0usize, usize::MAX), |(n, l), a| (n + 1, l.min(a)));
    if on_wire < 2 {
        return 1;
    }
    let batch = (on_wire / 4).max(1).saturating_mul(least);
    if batch < MIN_BATCH {
        return 1;
    }
    batch.max(need).min(MAX)
}

/// What a command still has to receive when it succeeds: the rest of a
/// read's data and a header; a header otherwise (a response or an R2T).
fn answer_bytes(t: &Task) -> usize {
    match t.dir {
        DataDir::Read(n) => (n as usize).saturating_sub(t.data_in) + BHS_LEN,
        _ => BHS_LEN,
    }
}

/// SO_RCVLOWAT: the kernel wakes a reader (and poll reports the socket
/// readable) once this many bytes wait.
fn set_lowat(fd: i32, bytes: usize) -> bool {
    let v = bytes.min(i32::MAX as usize) as nix::libc::c_int;
    // SAFETY: `v` lives across the call and its size is passed; `fd` is
    // the session's socket, open as long as `shared` lives.
    let r = unsafe {
        nix::libc::setsockopt(
            fd,
            nix::libc::SOL_SOCKET,
            nix::libc::SO_RCVLOWAT,
            (&v as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    r == 0
}

/// How long to wait for a batch of `bytes`.
fn wait_ns(bytes: usize) -> i64 {
    WAIT_NS + (bytes / 2) as i64
}

/// SIOCINQ (FIONREAD): bytes waiting to be read from the socket now.
fn queued(fd: i32) -> usize {
    sockinfo::queued(fd, nix::libc::FIONREAD).unwrap_or(0)
}

/// SO_RCVBUF: the socket's receive buffer now, in bytes (0 if unknown).
fn rcvbuf(fd: i32) -> usize {
    sockinfo::option(fd, nix::libc::SO_RCVBUF).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_quarter_of_the_smallest_answers() {
        let reads = |n: usize, each: usize| std::iter::repeat_n(each, n);
        // One command (or none): nothing to batch.
        assert_eq!(batch_bytes(reads(0, 4144), 48), 1);
        assert_eq!(batch_bytes(reads(1, 4144), 48), 1);
        // Two or three: one whole answer.
        assert_eq!(batch_bytes(reads(3, 4144), 48), 4144);
        // 32 reads of 4 KiB: 8 answers.
        assert_eq!(batch_bytes(reads(32, 4144), 48), 8 * 4144);
        // A write in flight (its answer may be a bare header) sets the
        // pace: a batch of headers is not worth a wait.
        let mixed = reads(31, 4144).chain([48]);
        assert_eq!(batch_bytes(mixed, 48), 1);
        assert_eq!(batch_bytes(reads(128, 48), 48), 1);
        // At least what the read at hand needs, at most MAX.
        assert_eq!(batch_bytes(reads(8, 4144), 65536), 65536);
        assert_eq!(batch_bytes(reads(64, 1 << 20), 48), MAX);
    }

    #[test]
    fn the_wait_grows_with_the_batch_and_stays_under_a_second() {
        assert!(wait_ns(1) >= WAIT_NS);
        assert!(wait_ns(MAX) > wait_ns(4096));
        assert!(wait_ns(MAX) < 1_000_000_000);
    }
}
