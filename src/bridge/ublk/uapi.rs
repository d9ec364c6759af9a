//! The ublk UAPI (include/uapi/linux/ublk_cmd.h, Linux 6.12), declared by
//! hand.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, 'u', nr, size)` (asm-generic/ioctl.h: nr in bits 0-7,
/// type 8-15, size 16-29, direction 30-31).
const fn ioc(dir: u32, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr as u32
}
const fn iowr(nr: u8, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, size)
}
const fn ior(nr: u8, size: usize) -> u32 {
    ioc(IOC_READ, nr, size)
}

const CTRL: usize = size_of::<CtrlCmd>();
const IO: usize = size_of::<IoCmd>();

// Control commands. The header encodes the getters with _IOR and the
// rest with _IOWR; the driver dispatches on _IOC_NR except for
// GET_FEATURES, which it compares whole.
pub const UBLK_U_CMD_GET_QUEUE_AFFINITY: u32 = ior(0x01, CTRL);
pub const UBLK_U_CMD_GET_DEV_INFO: u32 = ior(0x02, CTRL);
pub const UBLK_U_CMD_ADD_DEV: u32 = iowr(0x04, CTRL);
pub const UBLK_U_CMD_DEL_DEV: u32 = iowr(0x05, CTRL);
pub const UBLK_U_CMD_START_DEV: u32 = iowr(0x06, CTRL);
pub const UBLK_U_CMD_STOP_DEV: u32 = iowr(0x07, CTRL);
pub const UBLK_U_CMD_SET_PARAMS: u32 = iowr(0x08, CTRL);
pub const UBLK_U_CMD_GET_PARAMS: u32 = ior(0x09, CTRL);
pub const UBLK_U_CMD_START_USER_RECOVERY: u32 = iowr(0x10, CTRL);
pub const UBLK_U_CMD_END_USER_RECOVERY: u32 = iowr(0x11, CTRL);
pub const UBLK_U_CMD_GET_DEV_INFO2: u32 = ior(0x12, CTRL);
pub const UBLK_U_CMD_GET_FEATURES: u32 = ior(0x13, CTRL);
pub const UBLK_U_CMD_DEL_DEV_ASYNC: u32 = ior(0x14, CTRL);
/// Linux 6.16+ (with UBLK_F_UPDATE_SIZE): `data[0]` = new size in
/// 512-byte sectors.
pub const UBLK_U_CMD_UPDATE_SIZE: u32 = iowr(0x15, CTRL);

// I/O commands on /dev/ublkcN.
pub const UBLK_U_IO_FETCH_REQ: u32 = iowr(0x20, IO);
pub const UBLK_U_IO_COMMIT_AND_FETCH_REQ: u32 = iowr(0x21, IO);
pub const UBLK_U_IO_NEED_GET_DATA: u32 = iowr(0x22, IO);

/// GET_FEATURES wants exactly this many bytes.
pub const UBLK_FEATURES_LEN: u16 = 8;

/// Results of FETCH / COMMIT_AND_FETCH completions.
pub const UBLK_IO_RES_OK: i32 = 0;
pub const UBLK_IO_RES_NEED_GET_DATA: i32 = 1;
pub const UBLK_IO_RES_ABORT: i32 = -19; // -ENODEV

pub const UBLKSRV_CMD_BUF_OFFSET: u64 = 0;
pub const UBLK_MAX_QUEUE_DEPTH: u16 = 4096;
/// With UBLK_F_USER_COPY: pread/pwrite on /dev/ublkcN at this offset plus
/// [`user_copy_offset`] reach a request's pages.
pub const UBLKSRV_IO_BUF_OFFSET: u64 = 0x8000_0000;
const UBLK_TAG_OFF: u32 = 25;
const UBLK_QID_OFF: u32 = UBLK_TAG_OFF + 16;

/// Where byte `off` of request (`q_id`, `tag`) is, for pread/pwrite on
/// /dev/ublkcN (UBLK_F_USER_COPY; a request is at most 32 MiB).
pub fn user_copy_offset(q_id: u16, tag: u16, off: usize) -> u64 {
    UBLKSRV_IO_BUF_OFFSET
        + (u64::from(q_id) << UBLK_QID_OFF)
        + (u64::from(tag) << UBLK_TAG_OFF)
        + (off as u64 & ((1 << UBLK_TAG_OFF) - 1))
}

/// With UBLK_F_AUTO_BUF_REG, the SQE's `addr` of a FETCH_REQ or
/// COMMIT_AND_FETCH_REQ (struct ublk_auto_buf_reg): install the request's
/// pages at `index` of the ring's buffer table; with FALLBACK, deliver the
/// request anyway (flagged UBLK_IO_F_NEED_REG_BUF) when that fails.
pub fn auto_buf_reg(index: u16, fallback: bool) -> u64 {
    u64::from(index) | if fallback { 1 << 16 } else { 0 }
}

// Device flags (ublksrv_ctrl_dev_info.flags).
pub const UBLK_F_SUPPORT_ZERO_COPY: u64 = 1 << 0;
pub const UBLK_F_URING_CMD_COMP_IN_TASK: u64 = 1 << 1;
pub const UBLK_F_NEED_GET_DATA: u64 = 1 << 2;
pub const UBLK_F_USER_RECOVERY: u64 = 1 << 3;
pub const UBLK_F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
pub const UBLK_F_UNPRIVILEGED_DEV: u64 = 1 << 5;
pub const UBLK_F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
pub const UBLK_F_USER_COPY: u64 = 1 << 7;
pub const UBLK_F_ZONED: u64 = 1 << 8;
/// Linux 6.16+: UBLK_U_CMD_UPDATE_SIZE resizes a live device.
pub const UBLK_F_UPDATE_SIZE: u64 = 1 << 10;
/// Linux 6.16+: each request's pages are installed in the fetching ring's
/// buffer table (see [`auto_buf_reg`]), for io_uring's fixed-buffer ops.
pub const UBLK_F_AUTO_BUF_REG: u64 = 1 << 11;

// Device states (ublksrv_ctrl_dev_info.state).
pub const UBLK_S_DEV_DEAD: u16 = 0;
pub const UBLK_S_DEV_LIVE: u16 = 1;
pub const UBLK_S_DEV_QUIESCED: u16 = 2;
pub const UBLK_S_DEV_FAIL_IO: u16 = 3;

// Request ops (low 8 bits of ublksrv_io_desc.op_flags) and flags (the
// rest; the constants are positions in op_flags itself).
pub const UBLK_IO_OP_READ: u8 = 0;
pub const UBLK_IO_OP_WRITE: u8 = 1;
pub const UBLK_IO_OP_FLUSH: u8 = 2;
pub const UBLK_IO_OP_DISCARD: u8 = 3;
pub const UBLK_IO_OP_WRITE_SAME: u8 = 4;
pub const UBLK_IO_OP_WRITE_ZEROES: u8 = 5;
pub const UBLK_IO_F_FAILFAST_DEV: u32 = 1 << 8;
pub const UBLK_IO_F_FAILFAST_TRANSPORT: u32 = 1 << 9;
pub const UBLK_IO_F_FAILFAST_DRIVER: u32 = 1 << 10;
pub const UBLK_IO_F_META: u32 = 1 << 11;
pub const UBLK_IO_F_FUA: u32 = 1 << 13;
pub const UBLK_IO_F_NOUNMAP: u32 = 1 << 15;
pub const UBLK_IO_F_SWAP: u32 = 1 << 16;
/// UBLK_F_AUTO_BUF_REG with FALLBACK: the pages are not in the table.
pub const UBLK_IO_F_NEED_REG_BUF: u32 = 1 << 17;

// ublk_param_basic.attrs
pub const UBLK_ATTR_READ_ONLY: u32 = 1 << 0;
pub const UBLK_ATTR_ROTATIONAL: u32 = 1 << 1;
pub const UBLK_ATTR_VOLATILE_CACHE: u32 = 1 << 2;
pub const UBLK_ATTR_FUA: u32 = 1 << 3;

// ublk_params.types
pub const UBLK_PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const UBLK_PARAM_TYPE_DISCARD: u32 = 1 << 1;
pub const UBLK_PARAM_TYPE_DEVT: u32 = 1 << 2;
pub const UBLK_PARAM_TYPE_ZONED: u32 = 1 << 3;

/// struct ublksrv_ctrl_cmd: in the SQE's command area.
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct CtrlCmd {
    pub dev_id: u32,
    /// u16::MAX unless the command is for one queue.
    pub queue_id: u16,
    pub len: u16,
    pub addr: u64,
    pub data: [u64; 1],
    pub dev_path_len: u16,
    pub pad: u16,
    pub reserved: u32,
}

/// struct ublksrv_ctrl_dev_info
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct DevInfo {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub state: u16,
    pub pad0: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    pub ublksrv_pid: i32,
    pub pad1: u32,
    pub flags: u64,
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub reserved1: u64,
    pub reserved2: u64,
}

/// struct ublksrv_io_cmd: in the SQE's command area (16 bytes).
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IoCmd {
    pub q_id: u16,
    pub tag: u16,
    pub result: i32,
    pub addr: u64,
}

/// struct ublksrv_io_desc: one per tag in the mmapped array.
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IoDesc {
    pub op_flags: u32,
    /// nr_sectors (nr_zones for REPORT_ZONES).
    pub nr_sectors: u32,
    pub start_sector: u64,
    pub addr: u64,
}

impl IoDesc {
    pub fn op(&self) -> u8 {
        (self.op_flags & 0xff) as u8
    }
}

/// struct ublk_param_basic
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ParamBasic {
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    pub max_sectors: u32,
    pub chunk_sectors: u32,
    pub dev_sectors: u64,
    pub virt_boundary_mask: u64,
}

/// struct ublk_param_discard
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ParamDiscard {
    pub discard_alignment: u32,
    pub discard_granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_discard_segments: u16,
    pub reserved0: u16,
}

/// struct ublk_param_devt (read-only: filled by GET_PARAMS).
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ParamDevt {
    pub char_major: u32,
    pub char_minor: u32,
    pub disk_major: u32,
    pub disk_minor: u32,
}

/// struct ublk_param_zoned
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ParamZoned {
    pub max_open_zones: u32,
    pub max_active_zones: u32,
    pub max_zone_append_sectors: u32,
    pub reserved: [u8; 20],
}

/// struct ublk_params as of Linux 6.12 (112 bytes; the C struct's
/// trailing padding is spelled out). `len` tells the kernel how much of
/// it we pass: older kernels take a prefix, newer ones leave their later
/// members zero.
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Params {
    pub len: u32,
    pub types: u32,
    pub basic: ParamBasic,
    pub discard: ParamDiscard,
    pub devt: ParamDevt,
    pub zoned: ParamZoned,
    pub tail_pad: [u8; 4],
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use std::mem::offset_of;

    #[test]
    fn struct_layouts_match_the_uapi() {
        assert_eq!(size_of::<CtrlCmd>(), 32);
        assert_eq!(offset_of!(CtrlCmd, queue_id), 4);
        assert_eq!(offset_of!(CtrlCmd, len), 6);
        assert_eq!(offset_of!(CtrlCmd, addr), 8);
        assert_eq!(offset_of!(CtrlCmd, data), 16);
        assert_eq!(offset_of!(CtrlCmd, dev_path_len), 24);
        assert_eq!(offset_of!(CtrlCmd, reserved), 28);

        assert_eq!(size_of::<DevInfo>(), 64);
        assert_eq!(offset_of!(DevInfo, state), 4);
        assert_eq!(offset_of!(DevInfo, max_io_buf_bytes), 8);
        assert_eq!(offset_of!(DevInfo, dev_id), 12);
        assert_eq!(offset_of!(DevInfo, ublksrv_pid), 16);
        assert_eq!(offset_of!(DevInfo, flags), 24);
        assert_eq!(offset_of!(DevInfo, ublksrv_flags), 32);
        assert_eq!(offset_of!(DevInfo, owner_uid), 40);
        assert_eq!(offset_of!(DevInfo, reserved1), 48);

        assert_eq!(size_of::<IoCmd>(), 16);
        assert_eq!(offset_of!(IoCmd, tag), 2);
        assert_eq!(offset_of!(IoCmd, result), 4);
        assert_eq!(offset_of!(IoCmd, addr), 8);

        assert_eq!(size_of::<IoDesc>(), 24);
        assert_eq!(offset_of!(IoDesc, nr_sectors), 4);
        assert_eq!(offset_of!(IoDesc, start_sector), 8);
        assert_eq!(offset_of!(IoDesc, addr), 16);

        assert_eq!(size_of::<ParamBasic>(), 32);
        assert_eq!(offset_of!(ParamBasic, logical_bs_shift), 4);
        assert_eq!(offset_of!(ParamBasic, io_min_shift), 7);
        assert_eq!(offset_of!(ParamBasic, max_sectors), 8);
        assert_eq!(offset_of!(ParamBasic, dev_sectors), 16);
        assert_eq!(offset_of!(ParamBasic, virt_boundary_mask), 24);
        assert_eq!(size_of::<ParamDiscard>(), 20);
        assert_eq!(offset_of!(ParamDiscard, max_discard_segments), 16);
        assert_eq!(size_of::<ParamDevt>(), 16);
        assert_eq!(size_of::<ParamZoned>(), 32);

        // 6.12: len, types, basic (8-aligned), discard, devt, zoned, padding
        // to 8.
        assert_eq!(offset_of!(Params, basic), 8);
        assert_eq!(offset_of!(Params, discard), 40);
        assert_eq!(offset_of!(Params, devt), 60);
        assert_eq!(offset_of!(Params, zoned), 76);
        assert_eq!(size_of::<Params>(), 112);
        assert_eq!(align_of::<Params>(), 8);
    }

    #[test]
    fn opcodes_match_an_independent_encoding() {
        // nix's own _IOR/_IOWR.
        let ctrl = size_of::<CtrlCmd>();
        let io = size_of::<IoCmd>();
        let rw = |nr: u8, sz: usize| nix::request_code_readwrite!(b'u', nr, sz) as u32;
        let r = |nr: u8, sz: usize| nix::request_code_read!(b'u', nr, sz) as u32;
        assert_eq!(UBLK_U_CMD_GET_QUEUE_AFFINITY, r(0x01, ctrl));
        assert_eq!(UBLK_U_CMD_GET_DEV_INFO, r(0x02, ctrl));
        assert_eq!(UBLK_U_CMD_ADD_DEV, rw(0x04, ctrl));
        assert_eq!(UBLK_U_CMD_DEL_DEV, rw(0x05, ctrl));
        assert_eq!(UBLK_U_CMD_START_DEV, rw(0x06, ctrl));
        assert_eq!(UBLK_U_CMD_STOP_DEV, rw(0x07, ctrl));
        assert_eq!(UBLK_U_CMD_SET_PARAMS, rw(0x08, ctrl));
        assert_eq!(UBLK_U_CMD_GET_PARAMS, r(0x09, ctrl));
        assert_eq!(UBLK_U_CMD_START_USER_RECOVERY, rw(0x10, ctrl));
        assert_eq!(UBLK_U_CMD_END_USER_RECOVERY, rw(0x11, ctrl));
        assert_eq!(UBLK_U_CMD_GET_DEV_INFO2, r(0x12, ctrl));
        assert_eq!(UBLK_U_CMD_GET_FEATURES, r(0x13, ctrl));
        assert_eq!(UBLK_U_CMD_DEL_DEV_ASYNC, r(0x14, ctrl));
        assert_eq!(UBLK_U_CMD_UPDATE_SIZE, rw(0x15, ctrl));
        assert_eq!(UBLK_U_IO_FETCH_REQ, rw(0x20, io));
        assert_eq!(UBLK_U_IO_COMMIT_AND_FETCH_REQ, rw(0x21, io));
        assert_eq!(UBLK_U_IO_NEED_GET_DATA, rw(0x22, io));

        // Worked by hand: dir << 30 | size << 16 | 'u' (0x75) << 8 | nr,
        // _IOWR = 3, _IOR = 2, sizes 0x20 and 0x10.
        assert_eq!(UBLK_U_CMD_ADD_DEV, 0xc020_7504);
        assert_eq!(UBLK_U_CMD_START_DEV, 0xc020_7506);
        assert_eq!(UBLK_U_CMD_STOP_DEV, 0xc020_7507);
        assert_eq!(UBLK_U_CMD_GET_FEATURES, 0x8020_7513);
        assert_eq!(UBLK_U_CMD_GET_DEV_INFO, 0x8020_7502);
        assert_eq!(UBLK_U_IO_FETCH_REQ, 0xc010_7520);
        assert_eq!(UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc010_7521);
        assert_eq!(UBLK_IO_RES_ABORT, -(Errno::ENODEV as i32));
    }

    #[test]
    fn user_copy_offsets_and_auto_registration_encode_as_the_header_says() {
        // ublk_cmd.h: UBLKSRV_IO_BUF_OFFSET + (q_id << 41 | tag << 25 | off).
        assert_eq!(user_copy_offset(0, 0, 0), 0x8000_0000);
        assert_eq!(user_copy_offset(0, 1, 4096), 0x8000_0000 + (1 << 25) + 4096);
        assert_eq!(
            user_copy_offset(3, 63, 0x1_ffff),
            0x8000_0000 + (3 << 41) + (63 << 25) + 0x1_ffff
        );
        // ublk_sqe_addr_to_auto_buf_reg: index in bits 0-15, flags 16-23.
        assert_eq!(auto_buf_reg(5, false), 5);
        assert_eq!(auto_buf_reg(0xffff, true), 0x1_ffff);
    }
}
