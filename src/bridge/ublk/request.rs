//! What the kernel asks of a queue: its descriptor array, mapped read-only
//! from `/dev/ublkcN`, and a descriptor turned into a [`BlockOp`].

use std::fs::File;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::errno::Errno;

use super::UblkError;
use super::uapi::{self, IoDesc};
use crate::bridge::BlockOp;

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// The queue's read-only view of its descriptor array.
pub(super) struct Descriptors {
    ptr: NonNull<IoDesc>,
    len: usize,
    depth: u16,
}

impl Descriptors {
    pub(super) fn map(
        cdev: &File,
        q_id: u16,
        depth: u16,
        page: usize,
    ) -> Result<Descriptors, UblkError> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        let desc = size_of::<IoDesc>();
        let len = round_up(usize::from(depth) * desc, page);
        let stride = round_up(usize::from(uapi::UBLK_MAX_QUEUE_DEPTH) * desc, page);
        let offset = uapi::UBLKSRV_CMD_BUF_OFFSET + (usize::from(q_id) * stride) as u64;
        let what = || format!("mmap the descriptors of ublk queue {q_id}");
        let Some(nz) = NonZeroUsize::new(len) else {
            return Err(UblkError::Unsupported(what()));
        };
        let offset =
            nix::libc::off_t::try_from(offset).map_err(|_| UblkError::Unsupported(what()))?;
        // SAFETY: a fresh read-only shared mapping of the driver's
        // descriptor pages, placed by the kernel; nothing else aliases it.
        // Its length and offset are the ones ublk_ch_mmap() checks.
        let p = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
                cdev,
                offset,
            )
        }
        .map_err(|errno| UblkError::Os {
            what: what(),
            errno,
        })?;
        Ok(Descriptors {
            ptr: p.cast(),
            len,
            depth,
        })
    }

    pub(super) fn get(&self, tag: u16) -> IoDesc {
        assert!(tag < self.depth);
        // SAFETY: tag < depth and the mapping holds `depth` descriptors; it
        // is page aligned, so every 24-byte descriptor is 8-byte aligned.
        // The kernel wrote this one before completing the command we just
        // reaped and leaves it alone until we commit; a volatile read
        // because the memory is shared with the kernel.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(usize::from(tag))) }
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no reference into
        // it outlives `get`.
        if let Err(e) = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) } {
            log::warn!("munmap ublk descriptors: {e}");
        }
    }
}

/// A request as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) op: BlockOp,
    /// Bytes of the tag's buffer the backend gets (the data length for reads
    /// and writes, 0 otherwise).
    pub(super) len: usize,
    /// The result to commit when the backend succeeds.
    pub(super) ok: i32,
}

/// Turn a descriptor into a request on an LU with 2^`shift`-byte blocks, or
/// the negative errno to complete it with.
pub(super) fn decode(d: &IoDesc, shift: u8, max_io: usize) -> Result<Request, i32> {
    let einval = -(Errno::EINVAL as i32);
    // Sectors per block, as a shift and a mask.
    let s = u32::from(shift.saturating_sub(9));
    let mask = (1u64 << s) - 1;
    let aligned = d.start_sector & mask == 0 && u64::from(d.nr_sectors) & mask == 0;
    let lba = d.start_sector >> s;
    let blocks = d.nr_sectors >> s;
    let bytes = d.nr_sectors as usize * 512;
    let rw = |op: BlockOp| {
        if !aligned || blocks == 0 || bytes > max_io {
            return Err(einval);
        }
        Ok(Request {
            op,
            len: bytes,
            ok: i32::try_from(bytes).map_err(|_| einval)?,
        })
    };
    let range = |op: BlockOp| {
        if !aligned || blocks == 0 {
            return Err(einval);
        }
        Ok(Request { op, len: 0, ok: 0 })
    };
    match d.op() {
        uapi::UBLK_IO_OP_READ => rw(BlockOp::Read { lba, blocks }),
        uapi::UBLK_IO_OP_WRITE => rw(BlockOp::Write {
            lba,
            blocks,
            fua: d.op_flags & uapi::UBLK_IO_F_FUA != 0,
        }),
        uapi::UBLK_IO_OP_FLUSH => Ok(Request {
            op: BlockOp::Flush,
            len: 0,
            ok: 0,
        }),
        uapi::UBLK_IO_OP_DISCARD => range(BlockOp::Discard { lba, blocks }),
        uapi::UBLK_IO_OP_WRITE_ZEROES => range(BlockOp::WriteZeroes { lba, blocks }),
        // WRITE_SAME (gone from the block layer since 5.18), zoned ops, and
        // whatever comes next.
        _ => Err(-(Errno::EOPNOTSUPP as i32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ublk::uapi::*;

    fn desc(op: u8, flags: u32, start: u64, n: u32) -> IoDesc {
        IoDesc {
            op_flags: u32::from(op) | flags,
            nr_sectors: n,
            start_sector: start,
            addr: 0,
        }
    }

    #[test]
    fn requests_become_block_ops() {
        let max = 512 << 10;
        // 512-byte blocks: sectors are blocks.
        assert_eq!(
            decode(&desc(UBLK_IO_OP_READ, 0, 7, 3), 9, max),
            Ok(Request {
                op: BlockOp::Read { lba: 7, blocks: 3 },
                len: 1536,
                ok: 1536
            })
        );
        // 4 KiB blocks: 8 sectors each, FUA carried.
        assert_eq!(
            decode(&desc(UBLK_IO_OP_WRITE, UBLK_IO_F_FUA, 16, 24), 12, max),
            Ok(Request {
                op: BlockOp::Write {
                    lba: 2,
                    blocks: 3,
                    fua: true
                },
                len: 12288,
                ok: 12288
            })
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_WRITE, UBLK_IO_F_META, 0, 8), 12, max).map(|r| r.op),
            Ok(BlockOp::Write {
                lba: 0,
                blocks: 1,
                fua: false
            })
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_FLUSH, 0, 0, 0), 12, max),
            Ok(Request {
                op: BlockOp::Flush,
                len: 0,
                ok: 0
            })
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_DISCARD, 0, 8, 8 << 20), 12, max),
            Ok(Request {
                op: BlockOp::Discard {
                    lba: 1,
                    blocks: 1 << 20
                },
                len: 0,
                ok: 0
            })
        );
        assert_eq!(
            decode(
                &desc(UBLK_IO_OP_WRITE_ZEROES, UBLK_IO_F_NOUNMAP, 0, 16),
                12,
                max
            )
            .map(|r| r.op),
            Ok(BlockOp::WriteZeroes { lba: 0, blocks: 2 })
        );
    }

    #[test]
    fn bad_requests_get_errnos() {
        let max = 512 << 10;
        let einval = -(Errno::EINVAL as i32);
        // Not aligned to 4 KiB blocks, in start or length.
        assert_eq!(
            decode(&desc(UBLK_IO_OP_READ, 0, 1, 8), 12, max),
            Err(einval)
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_WRITE, 0, 8, 4), 12, max),
            Err(einval)
        );
        assert_eq!(
            decode(&desc(UBLK_IO_OP_DISCARD, 0, 8, 9), 12, max),
            Err(einval)
        );
        // Empty, or bigger than the buffer.
        assert_eq!(decode(&desc(UBLK_IO_OP_READ, 0, 0, 0), 9, max), Err(einval));
        assert_eq!(
            decode(&desc(UBLK_IO_OP_READ, 0, 0, 1025), 9, max),
            Err(einval)
        );
        // Unknown and obsolete ops.
        let eopnotsupp = -(Errno::EOPNOTSUPP as i32);
        assert_eq!(
            decode(&desc(UBLK_IO_OP_WRITE_SAME, 0, 0, 8), 9, max),
            Err(eopnotsupp)
        );
        assert_eq!(decode(&desc(13, 0, 0, 8), 9, max), Err(eopnotsupp));
    }
}
