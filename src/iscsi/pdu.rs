//! iSCSI PDUs (RFC 7143 §11): the 48-byte basic header segment (BHS) of
//! every opcode an initiator sends or receives.
//!
//! [`Bhs`] is a typed view over the 48 bytes with named fields; [`Pdu`] is
//! the plain value for each opcode with [`Pdu::parse`] and [`Pdu::emit`].
//! The data segment, AHS, padding and digests are framing, handled by the
//! connection; [`Framing`] says how long each part of a PDU is.
//!
//! No I/O here: a PDU from the target is parsed from bytes already read,
//! and every value in it is hostile until the session has checked it
//! against its own state (ITT known, lengths within what was negotiated).

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

/// Length of the basic header segment.
pub const BHS_LEN: usize = 48;
/// The "reserved" tag value (RFC 7143 §11.1): no ITT/TTT.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Field positions in the BHS (RFC 7143 §11.2.1 and the per-opcode layouts).
pub mod field {
    pub type Field = core::ops::Range<usize>;
    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const B2: usize = 2;
    pub const B3: usize = 3;
    pub const TOTAL_AHS_LEN: usize = 4;
    pub const DATA_SEGMENT_LEN: Field = 5..8;
    pub const LUN: Field = 8..16;
    pub const ISID: Field = 8..14;
    pub const TSIH: Field = 14..16;
    pub const ITT: Field = 16..20;
    pub const TTT: Field = 20..24;
    pub const CID: Field = 20..22;
    pub const EXP_XFER_LEN: Field = 20..24;
    pub const REF_TASK_TAG: Field = 20..24;
    pub const CMD_SN: Field = 24..28;
    pub const STAT_SN: Field = 24..28;
    pub const EXP_STAT_SN: Field = 28..32;
    pub const EXP_CMD_SN: Field = 28..32;
    pub const MAX_CMD_SN: Field = 32..36;
    pub const CDB: Field = 32..48;
    pub const REF_CMD_SN: Field = 32..36;
    pub const DATA_SN: Field = 36..40;
    pub const EXP_DATA_SN: Field = 36..40;
    pub const R2T_SN: Field = 36..40;
    pub const STATUS_CLASS: usize = 36;
    pub const STATUS_DETAIL: usize = 37;
    pub const ASYNC_EVENT: usize = 36;
    pub const ASYNC_VCODE: usize = 37;
    pub const PARAM1: Field = 38..40;
    pub const PARAM2: Field = 40..42;
    pub const PARAM3: Field = 42..44;
    pub const BUFFER_OFFSET: Field = 40..44;
    pub const TIME2WAIT: Field = 40..42;
    pub const TIME2RETAIN: Field = 42..44;
    pub const BIDI_RESIDUAL: Field = 40..44;
    pub const DESIRED_LEN: Field = 44..48;
    pub const RESIDUAL: Field = 44..48;
}

/// Opcodes (RFC 7143 §11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => Snack,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Opcode::*;
        match self {
            NopOut => "NOP-Out",
            ScsiCommand => "SCSI Command",
            TaskMgmtRequest => "Task Management Request",
            LoginRequest => "Login Request",
            TextRequest => "Text Request",
            DataOut => "SCSI Data-Out",
            LogoutRequest => "Logout Request",
            Snack => "SNACK",
            NopIn => "NOP-In",
            ScsiResponse => "SCSI Response",
            TaskMgmtResponse => "Task Management Response",
            LoginResponse => "Login Response",
            TextResponse => "Text Response",
            DataIn => "SCSI Data-In",
            LogoutResponse => "Logout Response",
            R2t => "R2T",
            AsyncMessage => "Async Message",
            Reject => "Reject",
        }
    }
}

/// Why a BHS could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PduError {
    /// Fewer than 48 bytes.
    Truncated(usize),
    /// An opcode no target may send (or no opcode at all).
    UnknownOpcode(u8),
    /// An initiator opcode arrived from the target, or vice versa.
    WrongDirection(Opcode),
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PduError::Truncated(n) => write!(f, "PDU header of {n} bytes, 48 needed"),
            PduError::UnknownOpcode(o) => write!(f, "unknown PDU opcode 0x{o:02x}"),
            PduError::WrongDirection(o) => {
                write!(
                    f,
                    "{} (opcode 0x{:02x}) is never sent by a target",
                    o.name(),
                    *o as u8
                )
            }
        }
    }
}

impl std::error::Error for PduError {}

/// A typed view over a basic header segment.
#[derive(Debug, Clone, Copy)]
pub struct Bhs<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Bhs<T> {
    pub fn new_checked(buffer: T) -> Result<Bhs<T>, PduError> {
        let n = buffer.as_ref().len();
        if n < BHS_LEN {
            return Err(PduError::Truncated(n));
        }
        Ok(Bhs { buffer })
    }
    pub const fn new_unchecked(buffer: T) -> Bhs<T> {
        Bhs { buffer }
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn raw_opcode(&self) -> u8 {
        self.b()[field::OPCODE] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.b()[field::OPCODE] & 0x40 != 0
    }
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }
    pub fn byte(&self, at: usize) -> u8 {
        self.b()[at]
    }
    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub fn total_ahs_len(&self) -> usize {
        usize::from(self.b()[field::TOTAL_AHS_LEN]) * 4
    }
    pub fn data_segment_len(&self) -> usize {
        BigEndian::read_u24(&self.b()[field::DATA_SEGMENT_LEN]) as usize
    }
    pub fn u16_at(&self, f: field::Field) -> u16 {
        BigEndian::read_u16(&self.b()[f])
    }
    pub fn u32_at(&self, f: field::Field) -> u32 {
        BigEndian::read_u32(&self.b()[f])
    }
    pub fn u64_at(&self, f: field::Field) -> u64 {
        BigEndian::read_u64(&self.b()[f])
    }
    pub fn lun(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.b()[field::LUN]);
        l
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(field::ITT)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bhs<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_opcode(&mut self, op: Opcode, immediate: bool) {
        self.m()[field::OPCODE] = op as u8 | if immediate { 0x40 } else { 0 };
    }
    pub fn set_byte(&mut self, at: usize, v: u8) {
        self.m()[at] = v;
    }
    pub fn set_total_ahs_len(&mut self, bytes: usize) {
        self.m()[field::TOTAL_AHS_LEN] = (bytes / 4) as u8;
    }
    pub fn set_data_segment_len(&mut self, len: usize) {
        BigEndian::write_u24(&mut self.m()[field::DATA_SEGMENT_LEN], len as u32);
    }
    pub fn set_u16_at(&mut self, f: field::Field, v: u16) {
        BigEndian::write_u16(&mut self.m()[f], v);
    }
    pub fn set_u32_at(&mut self, f: field::Field, v: u32) {
        BigEndian::write_u32(&mut self.m()[f], v);
    }
    pub fn set_lun(&mut self, lun: [u8; 8]) {
        self.m()[field::LUN].copy_from_slice(&lun);
    }
    pub fn set_bytes(&mut self, f: field::Field, v: &[u8]) {
        self.m()[f].copy_from_slice(v);
    }
}

/// The lengths of the parts of a PDU after its BHS, as the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub ahs_len: usize,
    pub data_len: usize,
}

impl Framing {
    pub fn of<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Framing {
        Framing {
            ahs_len: bhs.total_ahs_len(),
            data_len: bhs.data_segment_len(),
        }
    }
    /// The data segment padded to a 4-byte boundary.
    pub fn padded_data_len(&self) -> usize {
        pad4(self.data_len)
    }
}

/// `n` rounded up to a multiple of 4 (RFC 7143 §11.1: segments are padded).
pub const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Login stages (CSG/NSG, RFC 7143 §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    pub fn from_bits(v: u8) -> Option<Stage> {
        match v & 3 {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        }
    }
}

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask = 1,
    AbortTaskSet = 2,
    ClearAca = 3,
    ClearTaskSet = 4,
    LogicalUnitReset = 5,
    TargetWarmReset = 6,
    TargetColdReset = 7,
    TaskReassign = 8,
}

/// Logout reasons (RFC 7143 §11.14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutReason {
    CloseSession = 0,
    CloseConnection = 1,
    RemoveConnectionForRecovery = 2,
}

// ---- initiator -> target ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute: 0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA.
    pub attr: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub function: TmfFunction,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ref_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    pub final_: bool,
    pub cont: bool,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub reason: LogoutReason,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

// ---- target -> initiator ----

/// Sequence numbers every target PDU of these kinds carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetSn {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopIn {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sn: TargetSn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// iSCSI service response: 0 command completed at target, 1 target failure.
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub sn: TargetSn,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    /// 0 complete, 1 task does not exist, 2 LUN does not exist, 3 task
    /// still allegiant, 4 reassignment unsupported, 5 function not
    /// supported, 6 authorization failed, 255 rejected.
    pub response: u8,
    pub itt: u32,
    pub sn: TargetSn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub sn: TargetSn,
    pub status_class: u8,
    pub status_detail: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub cont: bool,
    pub itt: u32,
    pub ttt: u32,
    pub sn: TargetSn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIn {
    pub final_: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// Phase-collapsed status: `status` and `sn.stat_sn` are valid.
    pub has_status: bool,
    pub status: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sn: TargetSn,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutResponse {
    /// 0 closed, 1 CID not found, 2 recovery unsupported, 3 cleanup failed.
    pub response: u8,
    pub itt: u32,
    pub sn: TargetSn,
    pub time2wait: u16,
    pub time2retain: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2t {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sn: TargetSn,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: [u8; 8],
    pub sn: TargetSn,
    /// 0 SCSI event (sense in data), 1 logout requested, 2 connection
    /// dropped, 3 session dropped, 4 negotiation requested, 5 task
    /// termination, 255 vendor.
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub sn: TargetSn,
    pub data_sn: u32,
}

/// One PDU's basic header, as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

fn target_sn<T: AsRef<[u8]>>(b: &Bhs<T>) -> TargetSn {
    TargetSn {
        stat_sn: b.u32_at(field::STAT_SN),
        exp_cmd_sn: b.u32_at(field::EXP_CMD_SN),
        max_cmd_sn: b.u32_at(field::MAX_CMD_SN),
    }
}

fn set_target_sn<T: AsRef<[u8]> + AsMut<[u8]>>(b: &mut Bhs<T>, sn: &TargetSn) {
    b.set_u32_at(field::STAT_SN, sn.stat_sn);
    b.set_u32_at(field::EXP_CMD_SN, sn.exp_cmd_sn);
    b.set_u32_at(field::MAX_CMD_SN, sn.max_cmd_sn);
}

fn stage(v: u8) -> Stage {
    // Stage 2 is reserved; a target sending it is answered by the login
    // layer's checks. Map it to Operational so parse stays total.
    Stage::from_bits(v).unwrap_or(Stage::Operational)
}

fn isid_of<T: AsRef<[u8]>>(b: &Bhs<T>) -> [u8; 6] {
    let mut i = [0u8; 6];
    i.copy_from_slice(&b.b()[field::ISID]);
    i
}

fn tmf_function(v: u8) -> TmfFunction {
    match v & 0x7f {
        2 => TmfFunction::AbortTaskSet,
        3 => TmfFunction::ClearAca,
        4 => TmfFunction::ClearTaskSet,
        5 => TmfFunction::LogicalUnitReset,
        6 => TmfFunction::TargetWarmReset,
        7 => TmfFunction::TargetColdReset,
        8 => TmfFunction::TaskReassign,
        _ => TmfFunction::AbortTask,
    }
}

fn logout_reason(v: u8) -> LogoutReason {
    match v & 0x7f {
        1 => LogoutReason::CloseConnection,
        2 => LogoutReason::RemoveConnectionForRecovery,
        _ => LogoutReason::CloseSession,
    }
}

impl Pdu {
    /// Parse any PDU header (both directions; tests and a fake target use
    /// the initiator opcodes).
    pub fn parse(bytes: &[u8]) -> Result<Pdu, PduError> {
        let b = Bhs::new_checked(bytes)?;
        let op = Opcode::from_u8(b.raw_opcode()).ok_or(PduError::UnknownOpcode(b.raw_opcode()))?;
        let f = b.flags();
        Ok(match op {
            Opcode::NopOut => Pdu::NopOut(NopOut {
                lun: b.lun(),
                itt: b.itt(),
                ttt: b.u32_at(field::TTT),
                cmd_sn: b.u32_at(field::CMD_SN),
                exp_stat_sn: b.u32_at(field::EXP_STAT_SN),
            }),
            Opcode::ScsiCommand => Pdu::ScsiCommand(ScsiCommand {
                immediate: b.immediate(),
                final_: f & 0x80 != 0,
                read: f & 0x40 != 0,
                write: f & 0x20 != 0,
                attr: f & 0x07,
                lun: b.lun(),
                itt: b.itt(),
                expected_len: b.u32_at(field::EXP_XFER_LEN),
                cmd_sn: b.u32_at(field::CMD_SN),
                exp_stat_sn: b.u32_at(field::EXP_STAT_SN),
                cdb: {
                    let mut c = [0u8; 16];
                    c.copy_from_slice(&bytes[field::CDB]);
                    c
                },
            }),
            Opcode::TaskMgmtRequest => Pdu::TaskMgmtRequest(TaskMgmtRequest {
                function: tmf_function(f),
                lun: b.lun(),
                itt: b.itt(),
                ref_task_tag: b.u32_at(field::REF_TASK_TAG),
                cmd_sn: b.u32_at(field::CMD_SN),
                exp_stat_sn: b.u32_at(field::EXP_STAT_SN),
                ref_cmd_sn: b.u32_at(field::REF_CMD_SN),
                exp_data_sn: b.u32_at(field::EXP_DATA_SN),
            }),
            Opcode::LoginRequest => Pdu::LoginRequest(LoginRequest {
                transit: f & 0x80 != 0,
                cont: f & 0x40 != 0,
                csg: stage((f >> 2) & 3),
                nsg: stage(f & 3),
                isid: isid_of(&b),
                tsih: b.u16_at(field::TSIH),
                itt: b.itt(),
                cid: b.u16_at(field::CID),
                cmd_sn: b.u32_at(field::CMD_SN),
                exp_stat_sn: b.u32_at(field::EXP_STAT_SN),
            }),
            Opcode::TextRequest => Pdu::TextRequest(TextRequest {
                final_: f & 0x80 != 0,
                cont: f & 0x40 != 0,
                itt: b.itt(),
                ttt: b.u32_at(field::TTT),
                cmd_sn: b.u32_at(field::CMD_SN),
                exp_stat_sn: b.u32_at(field::EXP_STAT_SN),
            }),
            Opcode::DataOut => Pdu::DataOut(DataOut {
                final_: f & 0x80 != 0,
                lun: b.lun(),
                itt: b.itt(),
                ttt: b.u32_at(field::TTT),
                exp_stat_sn: b.u32_at(field::EXP_STAT_SN),
                data_sn: b.u32_at(field::DATA_SN),
                buffer_offset: b.u32_at(field::BUFFER_OFFSET),
            }),
            Opcode::LogoutRequest => Pdu::LogoutRequest(LogoutRequest {
                reason: logout_reason(f),
                itt: b.itt(),
                cid: b.u16_at(field::CID),
                cmd_sn: b.u32_at(field::CMD_SN),
                exp_stat_sn: b.u32_at(field::EXP_STAT_SN),
            }),
            Opcode::Snack => return Err(PduError::UnknownOpcode(op as u8)),
            Opcode::NopIn => Pdu::NopIn(NopIn {
                lun: b.lun(),
                itt: b.itt(),
                ttt: b.u32_at(field::TTT),
                sn: target_sn(&b),
            }),
            Opcode::ScsiResponse => Pdu::ScsiResponse(ScsiResponse {
                bidi_overflow: f & 0x10 != 0,
                bidi_underflow: f & 0x08 != 0,
                overflow: f & 0x04 != 0,
                underflow: f & 0x02 != 0,
                response: b.byte(field::B2),
                status: b.byte(field::B3),
                itt: b.itt(),
                sn: target_sn(&b),
                exp_data_sn: b.u32_at(field::EXP_DATA_SN),
                bidi_residual: b.u32_at(field::BIDI_RESIDUAL),
                residual: b.u32_at(field::RESIDUAL),
            }),
            Opcode::TaskMgmtResponse => Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: b.byte(field::B2),
                itt: b.itt(),
                sn: target_sn(&b),
            }),
            Opcode::LoginResponse => Pdu::LoginResponse(LoginResponse {
                transit: f & 0x80 != 0,
                cont: f & 0x40 != 0,
                csg: stage((f >> 2) & 3),
                nsg: stage(f & 3),
                version_max: b.byte(field::B2),
                version_active: b.byte(field::B3),
                isid: isid_of(&b),
                tsih: b.u16_at(field::TSIH),
                itt: b.itt(),
                sn: target_sn(&b),
                status_class: b.byte(field::STATUS_CLASS),
                status_detail: b.byte(field::STATUS_DETAIL),
            }),
            Opcode::TextResponse => Pdu::TextResponse(TextResponse {
                final_: f & 0x80 != 0,
                cont: f & 0x40 != 0,
                itt: b.itt(),
                ttt: b.u32_at(field::TTT),
                sn: target_sn(&b),
            }),
            Opcode::DataIn => Pdu::DataIn(DataIn {
                final_: f & 0x80 != 0,
                ack: f & 0x40 != 0,
                overflow: f & 0x04 != 0,
                underflow: f & 0x02 != 0,
                has_status: f & 0x01 != 0,
                status: b.byte(field::B3),
                lun: b.lun(),
                itt: b.itt(),
                ttt: b.u32_at(field::TTT),
                sn: target_sn(&b),
                data_sn: b.u32_at(field::DATA_SN),
                buffer_offset: b.u32_at(field::BUFFER_OFFSET),
                residual: b.u32_at(field::RESIDUAL),
            }),
            Opcode::LogoutResponse => Pdu::LogoutResponse(LogoutResponse {
                response: b.byte(field::B2),
                itt: b.itt(),
                sn: target_sn(&b),
                time2wait: b.u16_at(field::TIME2WAIT),
                time2retain: b.u16_at(field::TIME2RETAIN),
            }),
            Opcode::R2t => Pdu::R2t(R2t {
                lun: b.lun(),
                itt: b.itt(),
                ttt: b.u32_at(field::TTT),
                sn: target_sn(&b),
                r2t_sn: b.u32_at(field::R2T_SN),
                buffer_offset: b.u32_at(field::BUFFER_OFFSET),
                desired_len: b.u32_at(field::DESIRED_LEN),
            }),
            Opcode::AsyncMessage => Pdu::AsyncMessage(AsyncMessage {
                lun: b.lun(),
                sn: target_sn(&b),
                event: b.byte(field::ASYNC_EVENT),
                vcode: b.byte(field::ASYNC_VCODE),
                param1: b.u16_at(field::PARAM1),
                param2: b.u16_at(field::PARAM2),
                param3: b.u16_at(field::PARAM3),
            }),
            Opcode::Reject => Pdu::Reject(Reject {
                reason: b.byte(field::B2),
                sn: target_sn(&b),
                data_sn: b.u32_at(field::DATA_SN),
            }),
        })
    }

    /// Parse a PDU that arrived from a target: initiator opcodes are refused.
    pub fn parse_from_target(bytes: &[u8]) -> Result<Pdu, PduError> {
        let p = Pdu::parse(bytes)?;
        if p.opcode().is_initiator() {
            return Err(PduError::WrongDirection(p.opcode()));
        }
        Ok(p)
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Pdu::NopOut(_) => Opcode::NopOut,
            Pdu::ScsiCommand(_) => Opcode::ScsiCommand,
            Pdu::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Pdu::LoginRequest(_) => Opcode::LoginRequest,
            Pdu::TextRequest(_) => Opcode::TextRequest,
            Pdu::DataOut(_) => Opcode::DataOut,
            Pdu::LogoutRequest(_) => Opcode::LogoutRequest,
            Pdu::NopIn(_) => Opcode::NopIn,
            Pdu::ScsiResponse(_) => Opcode::ScsiResponse,
            Pdu::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Pdu::LoginResponse(_) => Opcode::LoginResponse,
            Pdu::TextResponse(_) => Opcode::TextResponse,
            Pdu::DataIn(_) => Opcode::DataIn,
            Pdu::LogoutResponse(_) => Opcode::LogoutResponse,
            Pdu::R2t(_) => Opcode::R2t,
            Pdu::AsyncMessage(_) => Opcode::AsyncMessage,
            Pdu::Reject(_) => Opcode::Reject,
        }
    }

    /// The sequence numbers a target PDU carries, if it carries them.
    /// (Data-In without status carries ExpCmdSN/MaxCmdSN but no StatSN.)
    pub fn target_sn(&self) -> Option<&TargetSn> {
        match self {
            Pdu::NopIn(p) => Some(&p.sn),
            Pdu::ScsiResponse(p) => Some(&p.sn),
            Pdu::TaskMgmtResponse(p) => Some(&p.sn),
            Pdu::LoginResponse(p) => Some(&p.sn),
            Pdu::TextResponse(p) => Some(&p.sn),
            Pdu::DataIn(p) => Some(&p.sn),
            Pdu::LogoutResponse(p) => Some(&p.sn),
            Pdu::R2t(p) => Some(&p.sn),
            Pdu::AsyncMessage(p) => Some(&p.sn),
            Pdu::Reject(p) => Some(&p.sn),
            _ => None,
        }
    }

    /// Write the BHS into `out`, with the given AHS and data segment lengths.
    pub fn emit(&self, out: &mut [u8; BHS_LEN], ahs_len: usize, data_len: usize) {
        out.fill(0);
        let mut b = Bhs::new_unchecked(&mut out[..]);
        b.set_total_ahs_len(ahs_len);
        b.set_data_segment_len(data_len);
        match self {
            Pdu::NopOut(p) => {
                b.set_opcode(Opcode::NopOut, true);
                b.set_byte(field::FLAGS, 0x80);
                b.set_lun(p.lun);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::TTT, p.ttt);
                b.set_u32_at(field::CMD_SN, p.cmd_sn);
                b.set_u32_at(field::EXP_STAT_SN, p.exp_stat_sn);
            }
            Pdu::ScsiCommand(p) => {
                b.set_opcode(Opcode::ScsiCommand, p.immediate);
                let flags = (if p.final_ { 0x80 } else { 0 })
                    | (if p.read { 0x40 } else { 0 })
                    | (if p.write { 0x20 } else { 0 })
                    | (p.attr & 7);
                b.set_byte(field::FLAGS, flags);
                b.set_lun(p.lun);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::EXP_XFER_LEN, p.expected_len);
                b.set_u32_at(field::CMD_SN, p.cmd_sn);
                b.set_u32_at(field::EXP_STAT_SN, p.exp_stat_sn);
                b.set_bytes(field::CDB, &p.cdb);
            }
            Pdu::TaskMgmtRequest(p) => {
                b.set_opcode(Opcode::TaskMgmtRequest, true);
                b.set_byte(field::FLAGS, 0x80 | p.function as u8);
                b.set_lun(p.lun);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::REF_TASK_TAG, p.ref_task_tag);
                b.set_u32_at(field::CMD_SN, p.cmd_sn);
                b.set_u32_at(field::EXP_STAT_SN, p.exp_stat_sn);
                b.set_u32_at(field::REF_CMD_SN, p.ref_cmd_sn);
                b.set_u32_at(field::EXP_DATA_SN, p.exp_data_sn);
            }
            Pdu::LoginRequest(p) => {
                b.set_opcode(Opcode::LoginRequest, true);
                let flags = (if p.transit { 0x80 } else { 0 })
                    | (if p.cont { 0x40 } else { 0 })
                    | ((p.csg as u8) << 2)
                    | if p.transit { p.nsg as u8 } else { 0 };
                b.set_byte(field::FLAGS, flags);
                // Version-max and Version-min: 0, the only version (§11.12.4).
                b.set_bytes(field::ISID, &p.isid);
                b.set_u16_at(field::TSIH, p.tsih);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u16_at(field::CID, p.cid);
                b.set_u32_at(field::CMD_SN, p.cmd_sn);
                b.set_u32_at(field::EXP_STAT_SN, p.exp_stat_sn);
            }
            Pdu::TextRequest(p) => {
                b.set_opcode(Opcode::TextRequest, true);
                b.set_byte(
                    field::FLAGS,
                    (if p.final_ { 0x80 } else { 0 }) | if p.cont { 0x40 } else { 0 },
                );
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::TTT, p.ttt);
                b.set_u32_at(field::CMD_SN, p.cmd_sn);
                b.set_u32_at(field::EXP_STAT_SN, p.exp_stat_sn);
            }
            Pdu::DataOut(p) => {
                b.set_opcode(Opcode::DataOut, false);
                b.set_byte(field::FLAGS, if p.final_ { 0x80 } else { 0 });
                b.set_lun(p.lun);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::TTT, p.ttt);
                b.set_u32_at(field::EXP_STAT_SN, p.exp_stat_sn);
                b.set_u32_at(field::DATA_SN, p.data_sn);
                b.set_u32_at(field::BUFFER_OFFSET, p.buffer_offset);
            }
            Pdu::LogoutRequest(p) => {
                b.set_opcode(Opcode::LogoutRequest, true);
                b.set_byte(field::FLAGS, 0x80 | p.reason as u8);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u16_at(field::CID, p.cid);
                b.set_u32_at(field::CMD_SN, p.cmd_sn);
                b.set_u32_at(field::EXP_STAT_SN, p.exp_stat_sn);
            }
            Pdu::NopIn(p) => {
                b.set_opcode(Opcode::NopIn, false);
                b.set_byte(field::FLAGS, 0x80);
                b.set_lun(p.lun);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::TTT, p.ttt);
                set_target_sn(&mut b, &p.sn);
            }
            Pdu::ScsiResponse(p) => {
                b.set_opcode(Opcode::ScsiResponse, false);
                let flags = 0x80
                    | (if p.bidi_overflow { 0x10 } else { 0 })
                    | (if p.bidi_underflow { 0x08 } else { 0 })
                    | (if p.overflow { 0x04 } else { 0 })
                    | if p.underflow { 0x02 } else { 0 };
                b.set_byte(field::FLAGS, flags);
                b.set_byte(field::B2, p.response);
                b.set_byte(field::B3, p.status);
                b.set_u32_at(field::ITT, p.itt);
                set_target_sn(&mut b, &p.sn);
                b.set_u32_at(field::EXP_DATA_SN, p.exp_data_sn);
                b.set_u32_at(field::BIDI_RESIDUAL, p.bidi_residual);
                b.set_u32_at(field::RESIDUAL, p.residual);
            }
            Pdu::TaskMgmtResponse(p) => {
                b.set_opcode(Opcode::TaskMgmtResponse, false);
                b.set_byte(field::FLAGS, 0x80);
                b.set_byte(field::B2, p.response);
                b.set_u32_at(field::ITT, p.itt);
                set_target_sn(&mut b, &p.sn);
            }
            Pdu::LoginResponse(p) => {
                b.set_opcode(Opcode::LoginResponse, false);
                let flags = (if p.transit { 0x80 } else { 0 })
                    | (if p.cont { 0x40 } else { 0 })
                    | ((p.csg as u8) << 2)
                    | if p.transit { p.nsg as u8 } else { 0 };
                b.set_byte(field::FLAGS, flags);
                b.set_byte(field::B2, p.version_max);
                b.set_byte(field::B3, p.version_active);
                b.set_bytes(field::ISID, &p.isid);
                b.set_u16_at(field::TSIH, p.tsih);
                b.set_u32_at(field::ITT, p.itt);
                set_target_sn(&mut b, &p.sn);
                b.set_byte(field::STATUS_CLASS, p.status_class);
                b.set_byte(field::STATUS_DETAIL, p.status_detail);
            }
            Pdu::TextResponse(p) => {
                b.set_opcode(Opcode::TextResponse, false);
                b.set_byte(
                    field::FLAGS,
                    (if p.final_ { 0x80 } else { 0 }) | if p.cont { 0x40 } else { 0 },
                );
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::TTT, p.ttt);
                set_target_sn(&mut b, &p.sn);
            }
            Pdu::DataIn(p) => {
                b.set_opcode(Opcode::DataIn, false);
                let flags = (if p.final_ { 0x80 } else { 0 })
                    | (if p.ack { 0x40 } else { 0 })
                    | (if p.overflow { 0x04 } else { 0 })
                    | (if p.underflow { 0x02 } else { 0 })
                    | if p.has_status { 0x01 } else { 0 };
                b.set_byte(field::FLAGS, flags);
                b.set_byte(field::B3, p.status);
                b.set_lun(p.lun);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::TTT, p.ttt);
                set_target_sn(&mut b, &p.sn);
                b.set_u32_at(field::DATA_SN, p.data_sn);
                b.set_u32_at(field::BUFFER_OFFSET, p.buffer_offset);
                b.set_u32_at(field::RESIDUAL, p.residual);
            }
            Pdu::LogoutResponse(p) => {
                b.set_opcode(Opcode::LogoutResponse, false);
                b.set_byte(field::FLAGS, 0x80);
                b.set_byte(field::B2, p.response);
                b.set_u32_at(field::ITT, p.itt);
                set_target_sn(&mut b, &p.sn);
                b.set_u16_at(field::TIME2WAIT, p.time2wait);
                b.set_u16_at(field::TIME2RETAIN, p.time2retain);
            }
            Pdu::R2t(p) => {
                b.set_opcode(Opcode::R2t, false);
                b.set_byte(field::FLAGS, 0x80);
                b.set_lun(p.lun);
                b.set_u32_at(field::ITT, p.itt);
                b.set_u32_at(field::TTT, p.ttt);
                set_target_sn(&mut b, &p.sn);
                b.set_u32_at(field::R2T_SN, p.r2t_sn);
                b.set_u32_at(field::BUFFER_OFFSET, p.buffer_offset);
                b.set_u32_at(field::DESIRED_LEN, p.desired_len);
            }
            Pdu::AsyncMessage(p) => {
                b.set_opcode(Opcode::AsyncMessage, false);
                b.set_byte(field::FLAGS, 0x80);
                b.set_lun(p.lun);
                b.set_u32_at(field::ITT, RESERVED_TAG);
                set_target_sn(&mut b, &p.sn);
                b.set_byte(field::ASYNC_EVENT, p.event);
                b.set_byte(field::ASYNC_VCODE, p.vcode);
                b.set_u16_at(field::PARAM1, p.param1);
                b.set_u16_at(field::PARAM2, p.param2);
                b.set_u16_at(field::PARAM3, p.param3);
            }
            Pdu::Reject(p) => {
                b.set_opcode(Opcode::Reject, false);
                b.set_byte(field::FLAGS, 0x80);
                b.set_byte(field::B2, p.reason);
                b.set_u32_at(field::ITT, RESERVED_TAG);
                set_target_sn(&mut b, &p.sn);
                b.set_u32_at(field::DATA_SN, p.data_sn);
            }
        }
    }

    /// Convenience: the BHS as a new array.
    pub fn to_bytes(&self, data_len: usize) -> [u8; BHS_LEN] {
        let mut out = [0u8; BHS_LEN];
        self.emit(&mut out, 0, data_len);
        out
    }
}

impl Opcode {
    /// Opcodes only an initiator sends.
    pub fn is_initiator(self) -> bool {
        (self as u8) < 0x20
    }
}

impl fmt::Display for Pdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pdu::ScsiCommand(p) => write!(
                f,
                "SCSI Command itt=0x{:x} cmdsn={} op=0x{:02x} len={}{}{}",
                p.itt,
                p.cmd_sn,
                p.cdb[0],
                p.expected_len,
                if p.read { " R" } else { "" },
                if p.write { " W" } else { "" }
            ),
            Pdu::ScsiResponse(p) => write!(
                f,
                "SCSI Response itt=0x{:x} statsn={} response={} status=0x{:02x} residual={}",
                p.itt, p.sn.stat_sn, p.response, p.status, p.residual
            ),
            Pdu::DataIn(p) => write!(
                f,
                "Data-In itt=0x{:x} datasn={} offset={}{}",
                p.itt,
                p.data_sn,
                p.buffer_offset,
                if p.has_status { " +status" } else { "" }
            ),
            Pdu::DataOut(p) => write!(
                f,
                "Data-Out itt=0x{:x} ttt=0x{:x} datasn={} offset={}{}",
                p.itt,
                p.ttt,
                p.data_sn,
                p.buffer_offset,
                if p.final_ { " F" } else { "" }
            ),
            Pdu::R2t(p) => write!(
                f,
                "R2T itt=0x{:x} ttt=0x{:x} r2tsn={} offset={} len={}",
                p.itt, p.ttt, p.r2t_sn, p.buffer_offset, p.desired_len
            ),
            Pdu::LoginResponse(p) => write!(
                f,
                "Login Response csg={:?} nsg={:?} T={} status=0x{:02x}{:02x} tsih={}",
                p.csg, p.nsg, p.transit, p.status_class, p.status_detail, p.tsih
            ),
            Pdu::AsyncMessage(p) => write!(
                f,
                "Async Message event={} params={}/{}/{}",
                p.event, p.param1, p.param2, p.param3
            ),
            Pdu::Reject(p) => write!(f, "Reject reason=0x{:02x}", p.reason),
            other => write!(f, "{}", other.opcode().name()),
        }
    }
}

/// A LUN number as the 8 bytes of the LUN field (SAM single level:
/// peripheral below 256, flat space below 16384).
pub fn lun_field(lun: u64) -> [u8; 8] {
    crate::scsi::data::lun_to_bytes(lun)
}

/// Serial number arithmetic (RFC 1982, 32 bits) as used for CmdSN/StatSN.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: Pdu) {
        let b = p.to_bytes(0);
        assert_eq!(Pdu::parse(&b).unwrap(), p);
    }

    #[test]
    fn every_opcode_round_trips() {
        let sn = TargetSn {
            stat_sn: 7,
            exp_cmd_sn: 8,
            max_cmd_sn: 40,
        };
        round_trip(Pdu::NopOut(NopOut {
            lun: [0; 8],
            itt: 1,
            ttt: RESERVED_TAG,
            cmd_sn: 3,
            exp_stat_sn: 4,
        }));
        round_trip(Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            attr: 1,
            lun: lun_field(1),
            itt: 0x10001,
            expected_len: 4096,
            cmd_sn: 9,
            exp_stat_sn: 7,
            cdb: [0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        }));
        round_trip(Pdu::TaskMgmtRequest(TaskMgmtRequest {
            function: TmfFunction::LogicalUnitReset,
            lun: lun_field(2),
            itt: 5,
            ref_task_tag: RESERVED_TAG,
            cmd_sn: 10,
            exp_stat_sn: 7,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        }));
        round_trip(Pdu::LoginRequest(LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            isid: [0x80, 0x53, 0x41, 0x4e, 0x00, 0x01],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }));
        round_trip(Pdu::TextRequest(TextRequest {
            final_: true,
            cont: false,
            itt: 2,
            ttt: RESERVED_TAG,
            cmd_sn: 1,
            exp_stat_sn: 1,
        }));
        round_trip(Pdu::DataOut(DataOut {
            final_: true,
            lun: lun_field(1),
            itt: 9,
            ttt: 77,
            exp_stat_sn: 7,
            data_sn: 2,
            buffer_offset: 65536,
        }));
        round_trip(Pdu::LogoutRequest(LogoutRequest {
            reason: LogoutReason::CloseSession,
            itt: 3,
            cid: 0,
            cmd_sn: 12,
            exp_stat_sn: 8,
        }));
        round_trip(Pdu::NopIn(NopIn {
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt: 0x1234,
            sn,
        }));
        round_trip(Pdu::ScsiResponse(ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow: false,
            underflow: true,
            response: 0,
            status: 2,
            itt: 9,
            sn,
            exp_data_sn: 1,
            bidi_residual: 0,
            residual: 512,
        }));
        round_trip(Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: 0,
            itt: 5,
            sn,
        }));
        round_trip(Pdu::LoginResponse(LoginResponse {
            transit: true,
            cont: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_active: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0x1234,
            itt: 0,
            sn,
            status_class: 2,
            status_detail: 1,
        }));
        round_trip(Pdu::TextResponse(TextResponse {
            final_: true,
            cont: false,
            itt: 2,
            ttt: RESERVED_TAG,
            sn,
        }));
        round_trip(Pdu::DataIn(DataIn {
            final_: true,
            ack: false,
            overflow: false,
            underflow: false,
            has_status: true,
            status: 0,
            lun: lun_field(1),
            itt: 9,
            ttt: RESERVED_TAG,
            sn,
            data_sn: 3,
            buffer_offset: 8192,
            residual: 0,
        }));
        round_trip(Pdu::LogoutResponse(LogoutResponse {
            response: 0,
            itt: 3,
            sn,
            time2wait: 2,
            time2retain: 20,
        }));
        round_trip(Pdu::R2t(R2t {
            lun: lun_field(1),
            itt: 9,
            ttt: 0x55,
            sn,
            r2t_sn: 0,
            buffer_offset: 0,
            desired_len: 262144,
        }));
        round_trip(Pdu::AsyncMessage(AsyncMessage {
            lun: [0; 8],
            sn,
            event: 1,
            vcode: 0,
            param1: 0,
            param2: 0,
            param3: 5,
        }));
        round_trip(Pdu::Reject(Reject {
            reason: 9,
            sn,
            data_sn: 0,
        }));
    }

    #[test]
    fn framing_and_lengths() {
        let mut b = [0u8; BHS_LEN];
        Pdu::TextRequest(TextRequest {
            final_: true,
            cont: false,
            itt: 1,
            ttt: RESERVED_TAG,
            cmd_sn: 1,
            exp_stat_sn: 0,
        })
        .emit(&mut b, 8, 0x012345);
        let v = Bhs::new_checked(&b[..]).unwrap();
        assert_eq!(
            Framing::of(&v),
            Framing {
                ahs_len: 8,
                data_len: 0x012345
            }
        );
        assert_eq!(pad4(0x012345), 0x012348);
        assert_eq!(pad4(0), 0);
        assert_eq!(pad4(4), 4);
    }

    #[test]
    fn hostile_headers() {
        assert_eq!(Pdu::parse(&[0u8; 47]), Err(PduError::Truncated(47)));
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x1f;
        assert_eq!(Pdu::parse(&b), Err(PduError::UnknownOpcode(0x1f)));
        b[0] = Opcode::ScsiCommand as u8;
        assert_eq!(
            Pdu::parse_from_target(&b),
            Err(PduError::WrongDirection(Opcode::ScsiCommand))
        );
        // Every opcode byte and flag combination parses or fails cleanly.
        for op in 0..=255u8 {
            for flags in [0u8, 0xff] {
                let mut b = [0xa5u8; BHS_LEN];
                b[0] = op;
                b[1] = flags;
                let _ = Pdu::parse(&b);
                let _ = Pdu::parse_from_target(&b);
            }
        }
    }

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fffe, 1));
        assert!(!sn_lt(1, 0xffff_fffe));
        assert!(sn_le(5, 5));
        assert!(!sn_lt(5, 5));
    }

    #[test]
    fn login_request_layout() {
        // A login request as iPXE/open-iscsi send it: byte 0 = 0x43
        // (immediate + opcode 3), byte 1 = 0x87 (T, CSG 1, NSG 3).
        let b = Pdu::LoginRequest(LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            isid: [0; 6],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
        })
        .to_bytes(0);
        assert_eq!(b[0], 0x43);
        assert_eq!(b[1], 0x87);
    }
}
