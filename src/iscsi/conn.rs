//! PDU framing over a byte stream: BHS, AHS, header digest, data segment,
//! padding, data digest (RFC 7143 §11.1, §13.1).
//!
//! The reader hands the data segment straight into the caller's buffer (a
//! read buffer of a SCSI command, say), so Data-In payload is copied once,
//! from the socket to its destination. The writer sends a whole PDU, or
//! several, with one vectored write. Everything read is bounded by what was
//! negotiated: a target declaring a larger data segment than we accept is a
//! protocol error, not an allocation.

use std::fmt;
use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};

use super::digest;
use super::pdu::{BHS_LEN, Bhs, Framing, Opcode, Pdu, PduError, pad4};

/// What the connection needs to know to frame PDUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The largest data segment we accept (our MaxRecvDataSegmentLength).
    pub max_recv_data_segment: usize,
}

impl FrameParams {
    /// Before and during login: no digests, and the RFC's 8192-byte default
    /// raised to what we declare (targets stay below it during login).
    pub fn login(max_recv_data_segment: usize) -> FrameParams {
        FrameParams {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment,
        }
    }
}

/// Failure to read or write a PDU.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    /// The peer closed the connection (EOF at a PDU boundary).
    Closed,
    Pdu(PduError),
    HeaderDigest {
        opcode: u8,
        got: u32,
        want: u32,
    },
    DataDigest {
        opcode: Opcode,
        itt: u32,
        got: u32,
        want: u32,
    },
    /// A data segment longer than we declared we accept.
    Oversized {
        opcode: Opcode,
        len: usize,
        max: usize,
    },
    /// The caller's buffer does not match the segment (a session bug or a
    /// hostile target; reported, never a panic).
    LengthMismatch {
        opcode: Opcode,
        len: usize,
        buffer: usize,
    },
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "connection error: {e}"),
            ConnError::Closed => write!(f, "the target closed the connection"),
            ConnError::Pdu(e) => write!(f, "bad PDU from target: {e}"),
            ConnError::HeaderDigest { opcode, got, want } => write!(
                f,
                "header digest error on a PDU with opcode 0x{opcode:02x} (got 0x{got:08x}, computed 0x{want:08x}): the network corrupts data"
            ),
            ConnError::DataDigest {
                opcode,
                itt,
                got,
                want,
            } => write!(
                f,
                "data digest error on {} itt=0x{itt:x} (got 0x{got:08x}, computed 0x{want:08x}): the network corrupts data",
                opcode.name()
            ),
            ConnError::Oversized { opcode, len, max } => write!(
                f,
                "{} with a {len}-byte data segment, above the {max} bytes we negotiated: protocol violation by the target",
                opcode.name()
            ),
            ConnError::LengthMismatch {
                opcode,
                len,
                buffer,
            } => write!(
                f,
                "{} data segment of {len} bytes does not fit its {buffer}-byte destination",
                opcode.name()
            ),
        }
    }
}

impl std::error::Error for ConnError {}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ConnError::Closed
        } else {
            ConnError::Io(e)
        }
    }
}

/// A received header: the parsed value, the raw bytes (for Reject data and
/// logs) and the length of the data segment still to be read.
#[derive(Debug, Clone)]
pub struct RxHeader {
    pub pdu: Pdu,
    pub raw: [u8; BHS_LEN],
    pub data_len: usize,
}

/// A reader that counts the bytes it has read.
struct Counted<R> {
    r: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Reads PDUs from the target.
pub struct PduReader<R: Read> {
    r: BufReader<Counted<R>>,
    params: FrameParams,
    /// Opcode and ITT of the header whose data is pending, for messages.
    pending: Option<(Opcode, u32, usize)>,
    /// The last data segment was large (see [`DIRECT_MIN`]): read what
    /// follows it (header, padding, digest) without filling the buffer.
    direct: bool,
}

/// Large enough to take several small PDUs per read() call; large data
/// segments bypass it and land directly in the destination.
const READ_BUFFER: usize = 64 * 1024;
/// Data segments at least this long are read from the socket straight
/// into their destination; after one, the next header is read on its own,
/// since a buffered read would pull the start of the next large segment
/// into the buffer, to be copied a second time.
const DIRECT_MIN: usize = 16 * 1024;
/// AHS we read and skip (we never ask for one); bounded by the 8-bit
/// TotalAHSLength field anyway (1020 bytes).
const MAX_AHS: usize = 255 * 4;

impl<R: Read> PduReader<R> {
    pub fn new(r: R, params: FrameParams) -> PduReader<R> {
        PduReader {
            r: BufReader::with_capacity(READ_BUFFER, Counted { r, n: 0 }),
            params,
            pending: None,
            direct: false,
        }
    }

    pub fn set_params(&mut self, params: FrameParams) {
        self.params = params;
    }

    pub fn params(&self) -> FrameParams {
        self.params
    }

    pub fn get_ref(&self) -> &R {
        &self.r.get_ref().r
    }

    /// Bytes read from the connection so far (buffered or consumed).
    pub fn received(&self) -> u64 {
        self.r.get_ref().n
    }

    /// Bytes already read from the socket and not yet consumed: when 0,
    /// the next read blocks on the network.
    pub fn buffered(&self) -> usize {
        self.r.buffer().len()
    }

    /// Read the next header. Any data segment of the previous PDU must have
    /// been consumed with `read_data`/`read_data_vec`/`skip_data`.
    pub fn read_header(&mut self) -> Result<RxHeader, ConnError> {
        if let Some((op, itt, len)) = self.pending.take() {
            // A caller forgot the data: skip it rather than misframe.
            log::warn!(
                "skipping unread {len}-byte data segment of {} itt=0x{itt:x}",
                op.name()
            );
            self.skip(op, itt, len)?;
        }
        let mut raw = [0u8; BHS_LEN];
        if self.direct && self.buffered() < BHS_LEN {
            let done = self.take_buffered(&mut raw);
            read_exact_or_closed(self.r.get_mut(), &mut raw, done)?;
        } else {
            read_exact_or_closed(&mut self.r, &mut raw, 0)?;
        }
        let bhs = Bhs::new_unchecked(&raw[..]);
        // Refuse garbage before trusting any length in it: an unknown
        // opcode must not make us swallow up to 1 KiB of "AHS".
        let pdu = Pdu::parse_from_target(&raw).map_err(ConnError::Pdu)?;
        let framing = Framing::of(&bhs);
        let mut ahs = [0u8; MAX_AHS];
        let ahs = &mut ahs[..framing.ahs_len.min(MAX_AHS)];
        self.read_small(ahs)?;
        if self.params.header_digest {
            let mut d = [0u8; 4];
            self.read_small(&mut d)?;
            let got = digest::from_wire(d);
            let want = digest::crc32c(&[&raw, ahs]);
            if got != want {
                return Err(ConnError::HeaderDigest {
                    opcode: raw[0] & 0x3f,
                    got,
                    want,
                });
            }
        }
        let data_len = framing.data_len;
        if data_len > self.params.max_recv_data_segment {
            return Err(ConnError::Oversized {
                opcode: pdu.opcode(),
                len: data_len,
                max: self.params.max_recv_data_segment,
            });
        }
        if data_len > 0 {
            self.pending = Some((pdu.opcode(), bhs.itt(), data_len));
        } else {
            // Headers without data (R2Ts, write responses) come in runs:
            // buffered reads take many at once.
            self.direct = false;
        }
        Ok(RxHeader { pdu, raw, data_len })
    }

    /// Read the pending data segment into `dst`, which must be exactly as
    /// long as the segment; then the padding and the data digest.
    pub fn read_data(&mut self, dst: &mut [u8]) -> Result<(), ConnError> {
        let Some((op, itt, len)) = self.segment_for(dst.len())? else {
            return Ok(());
        };
        self.read_payload(dst)?;
        let mut pad = [0u8; 3];
        let pad = &mut pad[..pad4(len) - len];
        self.read_small(pad)?;
        if self.params.data_digest {
            let mut d = [0u8; 4];
            self.read_small(&mut d)?;
            let got = digest::from_wire(d);
            let want = digest::crc32c(&[dst, pad]);
            if got != want {
                return Err(ConnError::DataDigest {
                    opcode: op,
                    itt,
                    got,
                    want,
                });
            }
        }
        Ok(())
    }

    /// The pending data segment (opcode, ITT, length), which a caller
    /// will read into a destination of `dst_len` bytes: None when there
    /// is none and the destination is empty; an error (after consuming
    /// the segment, to keep framing) when the lengths differ.
    fn segment_for(&mut self, dst_len: usize) -> Result<Option<(Opcode, u32, usize)>, ConnError> {
        let Some((op, itt, len)) = self.pending.take() else {
            return if dst_len == 0 {
                Ok(None)
            } else {
                Err(ConnError::LengthMismatch {
                    opcode: Opcode::Reject,
                    len: 0,
                    buffer: dst_len,
                })
            };
        };
        if dst_len != len {
            self.skip(op, itt, len)?;
            return Err(ConnError::LengthMismatch {
                opcode: op,
                len,
                buffer: dst_len,
            });
        }
        Ok(Some((op, itt, len)))
    }

    /// Read the pending data segment into a new vector (text, sense,
    /// login data: small and bounded by the negotiated maximum).
    pub fn read_data_vec(&mut self) -> Result<Vec<u8>, ConnError> {
        let len = self.pending.map(|p| p.2).unwrap_or(0);
        let mut v = vec![0u8; len];
        self.read_data(&mut v)?;
        Ok(v)
    }

    /// Discard the pending data segment (still checking its digest).
    pub fn skip_data(&mut self) -> Result<(), ConnError> {
        if let Some((op, itt, len)) = self.pending.take() {
            self.skip(op, itt, len)?;
        }
        Ok(())
    }

    /// Move what is buffered (up to `dst`'s length) into `dst`.
    fn take_buffered(&mut self, dst: &mut [u8]) -> usize {
        let b = self.r.buffer();
        let n = b.len().min(dst.len());
        dst[..n].copy_from_slice(&b[..n]);
        self.r.consume(n);
        n
    }

    /// Fill `dst`, a few bytes framing a PDU: through the buffer, except
    /// after a large segment, when no byte past `dst` is read.
    fn read_small(&mut self, dst: &mut [u8]) -> io::Result<()> {
        if !self.direct || self.buffered() >= dst.len() {
            return self.r.read_exact(dst);
        }
        let done = self.take_buffered(dst);
        self.r.get_mut().read_exact(&mut dst[done..])
    }

    /// Fill `dst` with a data segment: a large one straight from the
    /// socket once the buffer is drained (one copy, and no byte of what
    /// follows is read into the buffer).
    fn read_payload(&mut self, dst: &mut [u8]) -> io::Result<()> {
        self.direct = dst.len() >= DIRECT_MIN;
        if !self.direct {
            return self.r.read_exact(dst);
        }
        let done = self.take_buffered(dst);
        self.r.get_mut().read_exact(&mut dst[done..])
    }

    fn skip(&mut self, op: Opcode, itt: u32, len: usize) -> Result<(), ConnError> {
        self.direct = false;
        let mut left = pad4(len);
        let mut crc = 0u32;
        let mut buf = [0u8; 4096];
        while left > 0 {
            let n = left.min(buf.len());
            self.r.read_exact(&mut buf[..n])?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            left -= n;
        }
        if self.params.data_digest && len > 0 {
            let mut d = [0u8; 4];
            self.r.read_exact(&mut d)?;
            let got = digest::from_wire(d);
            if got != crc {
                return Err(ConnError::DataDigest {
                    opcode: op,
                    itt,
                    got,
                    want: crc,
                });
            }
        }
        Ok(())
    }
}

impl PduReader<std::net::TcpStream> {
    /// [`PduReader::read_data`] for a segment of a read into a bridge's
    /// request (see [`crate::direct`]): without a data digest, a large
    /// one's bytes still on the socket go through [`DirectRx::receive`]
    /// (byte `off` of request `token`), which may take them straight into
    /// the request instead of `dst`.
    ///
    /// [`DirectRx::receive`]: crate::direct::DirectRx::receive
    pub fn read_data_direct(
        &mut self,
        to: &dyn crate::direct::DirectRx,
        token: usize,
        off: usize,
        dst: &mut [u8],
    ) -> Result<(), ConnError> {
        if self.params.data_digest {
            // The bytes must be checked before anyone sees them.
            return self.read_data(dst);
        }
        let Some((_, _, len)) = self.segment_for(dst.len())? else {
            return Ok(());
        };
        if len < DIRECT_MIN {
            self.read_payload(dst)?;
        } else {
            self.direct = true;
            let n = self.take_buffered(dst);
            if n < len {
                let mut src = SocketSource(self.r.get_mut());
                to.receive(token, off + n, &mut src, &mut dst[n..])?;
            }
        }
        let mut pad = [0u8; 3];
        let pad = &mut pad[..pad4(len) - len];
        self.read_small(pad)?;
        Ok(())
    }
}

/// The socket under a [`PduReader`], for a bridge reading from it.
struct SocketSource<'a>(&'a mut Counted<std::net::TcpStream>);

impl crate::direct::Source for SocketSource<'_> {
    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.r.as_raw_fd()
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        self.0.r.read_timeout().ok().flatten()
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        Read::read_exact(self.0, buf)
    }

    fn count(&mut self, n: usize) {
        self.0.n += n as u64;
    }
}

/// Fill `buf` from `done` on; end of stream before its first byte is
/// [`ConnError::Closed`].
fn read_exact_or_closed<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    mut done: usize,
) -> Result<(), ConnError> {
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Err(ConnError::Closed),
            Ok(0) => {
                return Err(ConnError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {done} bytes of a PDU header"),
                )));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One PDU ready to send: its BHS and the parts of its data segment.
pub struct TxPdu<'a> {
    pub bhs: [u8; BHS_LEN],
    pub data: &'a [&'a [u8]],
}

/// Writes PDUs to the target.
pub struct PduWriter<W: Write> {
    w: W,
    params: FrameParams,
}

const ZERO_PAD: [u8; 3] = [0; 3];

impl<W: Write> PduWriter<W> {
    pub fn new(w: W, params: FrameParams) -> PduWriter<W> {
        PduWriter { w, params }
    }

    pub fn set_params(&mut self, params: FrameParams) {
        self.params = params;
    }

    pub fn get_ref(&self) -> &W {
        &self.w
    }

    /// Send one PDU: `pdu` is emitted with the data length of `data`.
    pub fn send(&mut self, pdu: &Pdu, data: &[&[u8]]) -> io::Result<()> {
        let len: usize = data.iter().map(|d| d.len()).sum();
        let mut bhs = [0u8; BHS_LEN];
        pdu.emit(&mut bhs, 0, len);
        self.send_batch(&[TxPdu { bhs, data }])
    }

    /// Send several PDUs with as few system calls as the kernel allows.
    /// Each BHS must already carry its data segment length.
    pub fn send_batch(&mut self, pdus: &[TxPdu<'_>]) -> io::Result<()> {
        // Digests live here so the slices below can point at them.
        let mut hdig: Vec<[u8; 4]> = Vec::with_capacity(pdus.len());
        let mut ddig: Vec<[u8; 4]> = Vec::with_capacity(pdus.len());
        // CRC32C over every payload byte costs as much as the copy the
        // data path avoids: compute only what the connection negotiated.
        for p in pdus {
            hdig.push(if self.params.header_digest {
                digest::to_wire(digest::crc32c(&[&p.bhs]))
            } else {
                [0; 4]
            });
            ddig.push(if self.params.data_digest {
                let len: usize = p.data.iter().map(|d| d.len()).sum();
                let crc = digest::crc32c(p.data);
                digest::to_wire(crc32c::crc32c_append(crc, &ZERO_PAD[..pad4(len) - len]))
            } else {
                [0; 4]
            });
        }
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(pdus.len() * 6);
        for (i, p) in pdus.iter().enumerate() {
            iov.push(IoSlice::new(&p.bhs));
            if self.params.header_digest {
                iov.push(IoSlice::new(&hdig[i]));
            }
            let len: usize = p.data.iter().map(|d| d.len()).sum();
            for d in p.data {
                if !d.is_empty() {
                    iov.push(IoSlice::new(d));
                }
            }
            if len > 0 {
                if pad4(len) > len {
                    iov.push(IoSlice::new(&ZERO_PAD[..pad4(len) - len]));
                }
                if self.params.data_digest {
                    iov.push(IoSlice::new(&ddig[i]));
                }
            }
        }
        write_all_vectored(&mut self.w, &mut iov)?;
        Ok(())
    }

    /// Send PDUs given as (BHS already carrying its data segment length,
    /// the data segment), `CHUNK` at most per vectored write, without
    /// allocating: the session's writer sends every batch this way.
    pub fn send_each<'a, I>(&mut self, pdus: I) -> io::Result<()>
    where
        I: IntoIterator<Item = (&'a [u8; BHS_LEN], &'a [u8])>,
    {
        const NONE: (&[u8; BHS_LEN], &[u8]) = (&[0; BHS_LEN], &[]);
        let mut it = pdus.into_iter();
        loop {
            let mut chunk = [NONE; CHUNK];
            let mut n = 0;
            while n < CHUNK
                && let Some(p) = it.next()
            {
                chunk[n] = p;
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            self.send_chunk(&chunk[..n])?;
        }
    }

    /// One vectored write of up to [`CHUNK`] PDUs, with their digests.
    fn send_chunk(&mut self, pdus: &[(&[u8; BHS_LEN], &[u8])]) -> io::Result<()> {
        let (hd, dd) = (self.params.header_digest, self.params.data_digest);
        let mut hdig = [[0u8; 4]; CHUNK];
        let mut ddig = [[0u8; 4]; CHUNK];
        for (i, (bhs, data)) in pdus.iter().enumerate() {
            if hd {
                hdig[i] = digest::to_wire(digest::crc32c(&[&bhs[..]]));
            }
            if dd && !data.is_empty() {
                let crc = digest::crc32c(&[data]);
                let pad = &ZERO_PAD[..pad4(data.len()) - data.len()];
                ddig[i] = digest::to_wire(crc32c::crc32c_append(crc, pad));
            }
        }
        let mut iov = [IoSlice::new(&[]); CHUNK * 5];
        let mut k = 0;
        for (i, (bhs, data)) in pdus.iter().enumerate() {
            push_iov(&mut iov, &mut k, &bhs[..]);
            if hd {
                push_iov(&mut iov, &mut k, &hdig[i]);
            }
            push_iov(&mut iov, &mut k, data);
            push_iov(&mut iov, &mut k, &ZERO_PAD[..pad4(data.len()) - data.len()]);
            if dd && !data.is_empty() {
                push_iov(&mut iov, &mut k, &ddig[i]);
            }
        }
        write_all_vectored(&mut self.w, &mut iov[..k])
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// PDUs per vectored write in [`PduWriter::send_each`]: its I/O vector
/// lives on the stack.
const CHUNK: usize = 32;

/// Append `s` to the I/O vector `iov[..*k]`, unless it is empty.
fn push_iov<'a>(iov: &mut [IoSlice<'a>], k: &mut usize, s: &'a [u8]) {
    if !s.is_empty() {
        iov[*k] = IoSlice::new(s);
        *k += 1;
    }
}

/// `write_all` for vectored writes (std's is unstable). Writes at most
/// IOV_MAX slices per call.
pub fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    while !bufs.is_empty() {
        let n = bufs.len().min(IOV_MAX);
        match w.write_vectored(&bufs[..n]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the connection accepted no more data",
                ));
            }
            Ok(written) => IoSlice::advance_slices(&mut bufs, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{NopIn, RESERVED_TAG, TargetSn, TextResponse};

    fn frame(pdu: &Pdu, data: &[u8], params: FrameParams) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = PduWriter::new(&mut out, params);
        w.send(pdu, &[data]).unwrap();
        out
    }

    fn text_resp() -> Pdu {
        Pdu::TextResponse(TextResponse {
            final_: true,
            cont: false,
            itt: 7,
            ttt: RESERVED_TAG,
            sn: TargetSn::default(),
        })
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            let p = FrameParams {
                header_digest: hd,
                data_digest: dd,
                max_recv_data_segment: 8192,
            };
            let data = b"TargetName=iqn.x\0abc";
            let bytes = frame(&text_resp(), data, p);
            assert_eq!(
                bytes.len(),
                48 + if hd { 4 } else { 0 } + pad4(data.len()) + if dd { 4 } else { 0 }
            );
            let mut r = PduReader::new(&bytes[..], p);
            let h = r.read_header().unwrap();
            assert_eq!(h.pdu, text_resp());
            assert_eq!(h.data_len, data.len());
            assert_eq!(r.read_data_vec().unwrap(), data);
            assert!(matches!(r.read_header(), Err(ConnError::Closed)));
        }
    }

    #[test]
    fn corrupted_digests_are_caught() {
        let p = FrameParams {
            header_digest: true,
            data_digest: true,
            max_recv_data_segment: 8192,
        };
        let good = frame(&text_resp(), b"abcdef", p);
        let mut bad = good.clone();
        bad[20] ^= 1;
        assert!(matches!(
            PduReader::new(&bad[..], p).read_header(),
            Err(ConnError::HeaderDigest { .. })
        ));
        let mut bad = good.clone();
        bad[53] ^= 1;
        let mut r = PduReader::new(&bad[..], p);
        r.read_header().unwrap();
        assert!(matches!(
            r.read_data_vec(),
            Err(ConnError::DataDigest { .. })
        ));
    }

    #[test]
    fn oversized_and_short_input() {
        let p = FrameParams::login(16);
        let bytes = frame(&text_resp(), &[b'x'; 17], FrameParams::login(1 << 20));
        assert!(matches!(
            PduReader::new(&bytes[..], p).read_header(),
            Err(ConnError::Oversized {
                len: 17,
                max: 16,
                ..
            })
        ));
        // A header cut short is an I/O error, not a panic.
        assert!(matches!(
            PduReader::new(&bytes[..20], p).read_header(),
            Err(ConnError::Io(_))
        ));
        // Data cut short.
        let bytes = frame(&text_resp(), b"0123456789", p);
        let mut r = PduReader::new(&bytes[..52], p);
        r.read_header().unwrap();
        assert!(r.read_data_vec().is_err());
    }

    #[test]
    fn unread_data_is_skipped() {
        let p = FrameParams::login(8192);
        let mut bytes = frame(&text_resp(), b"some data", p);
        let nop = Pdu::NopIn(NopIn {
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt: 5,
            sn: TargetSn::default(),
        });
        bytes.extend(frame(&nop, b"", p));
        let mut r = PduReader::new(&bytes[..], p);
        r.read_header().unwrap();
        assert_eq!(r.read_header().unwrap().pdu, nop);
    }

    /// A stream that hands out at most `max` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        max: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.max).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn large_and_small_segments_keep_framing_in_any_read_sizes() {
        let segs: Vec<Vec<u8>> = [DIRECT_MIN + 5, 0, 5, DIRECT_MIN * 2, 3, 0]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        for (hd, dd) in [(false, false), (true, true)] {
            let p = FrameParams {
                header_digest: hd,
                data_digest: dd,
                max_recv_data_segment: 1 << 20,
            };
            // 40 PDUs: more than one vectored write's worth.
            let bhs = |n: usize| {
                let mut b = [0u8; BHS_LEN];
                text_resp().emit(&mut b, 0, n);
                b
            };
            let heads: Vec<[u8; BHS_LEN]> = (0..40).map(|i| bhs(segs[i % 6].len())).collect();
            let mut wire = Vec::new();
            PduWriter::new(&mut wire, p)
                .send_each((0..40).map(|i| (&heads[i], &segs[i % 6][..])))
                .unwrap();
            for max in [1, 7, 1000, 70_000, usize::MAX] {
                let mut r = PduReader::new(Trickle { data: &wire, max }, p);
                for i in 0..40 {
                    let h = r.read_header().unwrap();
                    assert_eq!(h.data_len, segs[i % 6].len(), "PDU {i}, reads of {max}");
                    let mut got = vec![0u8; h.data_len];
                    r.read_data(&mut got).unwrap();
                    assert_eq!(got, segs[i % 6], "PDU {i}, reads of {max}");
                }
                assert!(matches!(r.read_header(), Err(ConnError::Closed)));
                assert_eq!(r.received(), wire.len() as u64);
            }
        }
    }

    #[test]
    fn wrong_destination_length_keeps_framing() {
        let p = FrameParams::login(8192);
        let mut bytes = frame(&text_resp(), b"12345", p);
        bytes.extend(frame(&text_resp(), b"", p));
        let mut r = PduReader::new(&bytes[..], p);
        r.read_header().unwrap();
        let mut small = [0u8; 2];
        assert!(matches!(
            r.read_data(&mut small),
            Err(ConnError::LengthMismatch { .. })
        ));
        assert_eq!(r.read_header().unwrap().data_len, 0);
    }
}
