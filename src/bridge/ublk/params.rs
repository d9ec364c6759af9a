//! The device's parameters (SET_PARAMS) from what the LU reports: block
//! sizes, capacity, request size, cache / FUA / read-only attributes, and
//! discard / write-zeroes limits.

use super::UblkError;
use super::uapi::{self, Params};
use crate::lun::LunInfo;

/// Largest per-request buffer we offer (the driver's UBLK_IO_BUF_BITS).
const MAX_IO_BYTES: u32 = 32 << 20;
/// Discard / write-zeroes cap when the LU reports no limit (Linux sd's
/// SD_MAX_WS16_BLOCKS).
const DEFAULT_MAX_UNMAP_BLOCKS: u32 = 0x7f_ffff;

/// What the bridge needs to know about the LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) block_size: u32,
    blocks: u64,
    physical_exponent: u8,
    write_protected: bool,
    write_cache: Option<bool>,
    fua: bool,
    can_unmap: bool,
    can_write_same: bool,
    /// Blocks; 0 = no limit reported.
    max_transfer_blocks: u32,
    /// Blocks; 0 = not reported.
    optimal_transfer_blocks: u32,
    /// Blocks; 0 or 0xffffffff = no limit reported.
    max_unmap_blocks: u32,
    unmap_granularity_blocks: u32,
    unmap_alignment_blocks: Option<u32>,
    /// Blocks; 0 = no limit reported.
    max_write_same_blocks: u64,
}

impl Geometry {
    pub(super) fn from_lun(info: &LunInfo) -> Geometry {
        let l = info.limits;
        Geometry {
            block_size: info.block_size(),
            blocks: info.blocks(),
            physical_exponent: info.capacity.physical_block_exponent,
            write_protected: info.write_protected,
            write_cache: info.write_cache,
            fua: info.fua,
            can_unmap: info.can_unmap(),
            can_write_same: info.can_write_same(),
            max_transfer_blocks: info.max_transfer_blocks(),
            optimal_transfer_blocks: l.map(|l| l.optimal_transfer_length).unwrap_or(0),
            max_unmap_blocks: l.map(|l| l.max_unmap_lba_count).unwrap_or(0),
            unmap_granularity_blocks: l.map(|l| l.optimal_unmap_granularity).unwrap_or(0),
            unmap_alignment_blocks: l.and_then(|l| l.unmap_granularity_alignment),
            max_write_same_blocks: l.map(|l| l.max_write_same_length).unwrap_or(0),
        }
    }

    /// log2 of the block size, which must be a power of two from 512 to the
    /// page size (the driver's limits for logical_bs_shift).
    pub(super) fn block_shift(&self, page: usize) -> Result<u8, UblkError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || bs < 512 || bs as usize > page {
            return Err(UblkError::Unsupported(format!(
                "a {bs}-byte block size cannot be served over ublk (it needs a power of two from 512 to {page})"
            )));
        }
        Ok(bs.trailing_zeros() as u8)
    }

    /// The per-request buffer size: the wanted size within [page, 32 MiB],
    /// capped by the LU's maximum transfer, rounded down to the page size.
    pub(super) fn max_io_bytes(&self, want: u32, page: usize) -> Result<u32, UblkError> {
        self.block_shift(page)?;
        let page32 = page as u32;
        let mut m = want.clamp(page32, MAX_IO_BYTES);
        if self.max_transfer_blocks > 0 {
            m = m.min(self.max_transfer_blocks.saturating_mul(self.block_size));
        }
        m -= m % page32;
        if m < page32 {
            return Err(UblkError::Unsupported(format!(
                "the LU's maximum transfer ({} blocks of {}) is below a page",
                self.max_transfer_blocks, self.block_size
            )));
        }
        Ok(m)
    }

    pub(super) fn sectors(&self) -> Result<u64, UblkError> {
        self.blocks
            .checked_mul(u64::from(self.block_size / 512))
            .ok_or_else(|| {
                UblkError::Unsupported(format!(
                    "{} blocks do not fit in 64-bit sectors",
                    self.blocks
                ))
            })
    }

    /// SET_PARAMS for this LU with buffers of `max_io` bytes (what ADD_DEV
    /// answered).
    pub(super) fn params(&self, max_io: u32, page: usize) -> Result<Params, UblkError> {
        let shift = self.block_shift(page)?;
        let bs = self.block_size;
        let physical = (shift + self.physical_exponent.min(15)).clamp(shift, 16.max(shift));
        let io_opt = match u64::from(self.optimal_transfer_blocks) * u64::from(bs) {
            n if n.is_power_of_two() && n >= u64::from(bs) && n <= u64::from(max_io) => {
                n.trailing_zeros() as u8
            }
            _ => physical,
        };
        let mut attrs = 0;
        if self.write_protected {
            attrs |= uapi::UBLK_ATTR_READ_ONLY;
        }
        if self.write_cache != Some(false) {
            attrs |= uapi::UBLK_ATTR_VOLATILE_CACHE;
            if self.fua {
                attrs |= uapi::UBLK_ATTR_FUA;
            }
        }
        let mut p = Params {
            len: size_of::<Params>() as u32,
            types: uapi::UBLK_PARAM_TYPE_BASIC,
            basic: uapi::ParamBasic {
                attrs,
                logical_bs_shift: shift,
                physical_bs_shift: physical,
                io_opt_shift: io_opt,
                io_min_shift: physical,
                max_sectors: max_io >> 9,
                chunk_sectors: 0,
                dev_sectors: self.sectors()?,
                virt_boundary_mask: 0,
            },
            ..Params::default()
        };
        let sectors_per_block = bs / 512;
        let to_sectors = |blocks: u64| {
            u32::try_from(blocks.saturating_mul(u64::from(sectors_per_block))).unwrap_or(u32::MAX)
        };
        if self.can_unmap || self.can_write_same {
            let gran = u64::from(self.unmap_granularity_blocks.max(1)) * u64::from(bs);
            let gran = u32::try_from(gran).unwrap_or(bs);
            let align = self
                .unmap_alignment_blocks
                .map(|a| (u64::from(a) * u64::from(bs) % u64::from(gran)) as u32)
                .unwrap_or(0);
            p.types |= uapi::UBLK_PARAM_TYPE_DISCARD;
            p.discard = uapi::ParamDiscard {
                discard_alignment: align,
                discard_granularity: gran,
                max_discard_sectors: if self.can_unmap {
                    to_sectors(u64::from(match self.max_unmap_blocks {
                        0 | u32::MAX => DEFAULT_MAX_UNMAP_BLOCKS,
                        n => n,
                    }))
                } else {
                    0
                },
                max_write_zeroes_sectors: if self.can_write_same {
                    to_sectors(match self.max_write_same_blocks {
                        0 => u64::from(DEFAULT_MAX_UNMAP_BLOCKS),
                        n => n.min(u64::from(u32::MAX)),
                    })
                } else {
                    0
                },
                // The driver takes single-range discards only.
                max_discard_segments: 1,
                reserved0: 0,
            };
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ublk::uapi::*;

    fn geo() -> Geometry {
        Geometry {
            block_size: 512,
            blocks: 2 << 20,
            physical_exponent: 3,
            write_protected: false,
            write_cache: Some(true),
            fua: true,
            can_unmap: true,
            can_write_same: true,
            max_transfer_blocks: 0,
            optimal_transfer_blocks: 0,
            max_unmap_blocks: u32::MAX,
            unmap_granularity_blocks: 8,
            unmap_alignment_blocks: Some(0),
            max_write_same_blocks: 0,
        }
    }

    #[test]
    fn params_from_a_thin_lu() {
        let p = geo().params(512 << 10, 4096).unwrap();
        assert_eq!(p.len, 112);
        assert_eq!(p.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD);
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.io_min_shift, 12);
        assert_eq!(p.basic.io_opt_shift, 12);
        assert_eq!(p.basic.max_sectors, 1024);
        assert_eq!(p.basic.dev_sectors, 2 << 20);
        assert_eq!(p.basic.attrs, UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA);
        assert_eq!(p.discard.discard_granularity, 4096);
        assert_eq!(p.discard.max_discard_sectors, DEFAULT_MAX_UNMAP_BLOCKS);
        assert_eq!(p.discard.max_write_zeroes_sectors, DEFAULT_MAX_UNMAP_BLOCKS);
        assert_eq!(p.discard.max_discard_segments, 1);
    }

    #[test]
    fn params_from_a_read_only_4k_lu_without_cache_or_unmap() {
        let g = Geometry {
            block_size: 4096,
            blocks: 1000,
            physical_exponent: 0,
            write_protected: true,
            write_cache: Some(false),
            can_unmap: false,
            can_write_same: false,
            max_transfer_blocks: 64,
            optimal_transfer_blocks: 16,
            ..geo()
        };
        let max_io = g.max_io_bytes(512 << 10, 4096).unwrap();
        assert_eq!(max_io, 256 << 10);
        let p = g.params(max_io, 4096).unwrap();
        assert_eq!(p.types, UBLK_PARAM_TYPE_BASIC);
        assert_eq!(p.basic.attrs, UBLK_ATTR_READ_ONLY);
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.io_opt_shift, 16);
        assert_eq!(p.basic.max_sectors, 512);
        assert_eq!(p.basic.dev_sectors, 8000);
        assert_eq!(p.discard, ParamDiscard::default());
        // An unknown cache is treated as volatile.
        let p = Geometry {
            write_cache: None,
            fua: false,
            ..g
        }
        .params(max_io, 4096)
        .unwrap();
        assert_eq!(
            p.basic.attrs,
            UBLK_ATTR_READ_ONLY | UBLK_ATTR_VOLATILE_CACHE
        );
    }

    #[test]
    fn write_same_only_lu_gets_write_zeroes_without_discard() {
        let g = Geometry {
            can_unmap: false,
            max_write_same_blocks: 1 << 16,
            unmap_granularity_blocks: 0,
            ..geo()
        };
        let p = g.params(512 << 10, 4096).unwrap();
        assert_eq!(p.discard.max_discard_sectors, 0);
        assert_eq!(p.discard.max_write_zeroes_sectors, 1 << 16);
        assert_eq!(p.discard.discard_granularity, 512);
    }

    #[test]
    fn unusable_block_sizes_and_transfer_limits() {
        for bs in [520, 256, 8192] {
            let g = Geometry {
                block_size: bs,
                ..geo()
            };
            assert!(
                matches!(g.params(512 << 10, 4096), Err(UblkError::Unsupported(_))),
                "{bs}"
            );
        }
        let g = Geometry {
            max_transfer_blocks: 4,
            ..geo()
        };
        assert!(g.max_io_bytes(512 << 10, 4096).is_err());
        assert_eq!(geo().max_io_bytes(100, 4096).unwrap(), 4096);
        assert_eq!(geo().max_io_bytes(u32::MAX, 4096).unwrap(), MAX_IO_BYTES);
        assert_eq!(geo().max_io_bytes(300_000, 4096).unwrap(), 299_008);
    }
}
