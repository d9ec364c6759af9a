//! A SCSI logical unit reached through an iSCSI session: the block-target
//! interface (read, write, flush, discard, capacity) that the shell tools
//! and the block-device bridge use.
//!
//! `Lun::open` learns what the LU is and can do (INQUIRY, VPD 0x00/0x80/
//! 0x83/0xB0/0xB2, READ CAPACITY(16) falling back to (10), MODE SENSE for
//! write protection and FUA); every command goes through
//! [`Lun::run`], which retries what the sense data says is temporary
//! (UNIT ATTENTION at once, BUSY / TASK SET FULL / becoming ready with
//! backoff) and turns the rest into readable errors.
//!
//! Not here: the iSCSI protocol (`iscsi`), byte layouts (`scsi`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::iscsi::session::{Command, DataDir, ScsiResult, Session, SessionError};
use crate::scsi::alua::TargetPortGroups;
use crate::scsi::cdb::{self, Cdb};
use crate::scsi::data::{
    BlockLimits, Capacity, DeviceId, Inquiry, LogicalBlockProvisioning, ModeSense, Peripheral,
    ReadCapacity10, ReadCapacity16, ReportLuns, SupportedPages, UnitSerial,
};
use crate::scsi::sense::{
    Disposition, Sense, Status, UnitAttentionReason, disposition, flush_not_needed,
};
use crate::scsi::{ParseError, data};

/// Why a command on a LU failed.
#[derive(Debug, Clone)]
pub enum LunError {
    Session(SessionError),
    /// The command got a final SCSI status other than GOOD.
    Scsi {
        op: &'static str,
        status: Status,
        sense: Option<Sense>,
    },
    /// The LU's answer could not be parsed.
    Parse {
        op: &'static str,
        error: ParseError,
    },
    /// A request beyond the end of the LU.
    OutOfRange {
        lba: u64,
        blocks: u64,
        capacity: u64,
    },
    /// A write to a write-protected LU.
    ReadOnly,
    /// GOOD status, but fewer bytes than asked for (the target reported
    /// an underflow): the rest of the buffer is not the LU's data.
    ShortRead {
        got: usize,
        want: u32,
    },
    /// A buffer whose length is not a whole number of blocks.
    Unaligned {
        len: usize,
        block_size: u32,
    },
    /// The LU's identity changed under us (another disk at this LUN).
    IdentityChanged {
        was: String,
        now: String,
    },
    /// No LUN was named and none the target reports is a disk: each
    /// reported LUN with its INQUIRY peripheral byte (None: no answer).
    NoDisk {
        luns: Vec<(u64, Option<u8>)>,
    },
}

impl fmt::Display for LunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LunError::Session(e) => write!(f, "{e}"),
            LunError::Scsi {
                op,
                status,
                sense: Some(s),
            } => write!(f, "{op} failed: {status}: {s}"),
            LunError::Scsi {
                op,
                status,
                sense: None,
            } => write!(f, "{op} failed: {status}"),
            LunError::Parse { op, error } => {
                write!(f, "{op}: unusable answer from the target: {error}")
            }
            LunError::OutOfRange {
                lba,
                blocks,
                capacity,
            } => write!(
                f,
                "blocks {lba}..{} are beyond the end of the LU ({capacity} blocks)",
                lba + blocks
            ),
            LunError::ReadOnly => write!(f, "the LU is write-protected"),
            LunError::ShortRead { got, want } => write!(
                f,
                "short read: the target sent {got} of {want} bytes with GOOD status"
            ),
            LunError::Unaligned { len, block_size } => {
                write!(
                    f,
                    "{len} bytes is not a multiple of the {block_size}-byte block size"
                )
            }
            LunError::IdentityChanged { was, now } => write!(
                f,
                "the LU's identity changed from {was} to {now}: refusing I/O to what may be another disk"
            ),
            LunError::NoDisk { luns } => {
                let seen: Vec<String> = luns
                    .iter()
                    .map(|(n, p)| match p.map(Peripheral::from_u8) {
                        Some(p) => format!(
                            "LUN {n} peripheral type 0x{:02x} qualifier {}",
                            p.device_type, p.qualifier
                        ),
                        None => format!("LUN {n} no INQUIRY answer"),
                    })
                    .collect();
                write!(
                    f,
                    "no LUN was named and the target reports no disk ({}): name the LUN (netroot=iscsi:…:LUN:IQN) or give the target one",
                    if seen.is_empty() {
                        "REPORT LUNS lists none".to_string()
                    } else {
                        seen.join(", ")
                    }
                )
            }
        }
    }
}

impl std::error::Error for LunError {}

impl From<SessionError> for LunError {
    fn from(e: SessionError) -> Self {
        LunError::Session(e)
    }
}

/// How hard to try before reporting an error.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries of BUSY / TASK SET FULL / becoming-ready and the like.
    pub backoff_retries: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Unit attentions cleared by simply retrying.
    pub unit_attention_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // As qemu's iSCSI driver: a few quick retries growing to seconds.
        RetryPolicy {
            backoff_retries: 8,
            first_backoff: Duration::from_millis(8),
            max_backoff: Duration::from_secs(4),
            unit_attention_retries: 10,
        }
    }
}

/// What a LU is and can do.
#[derive(Debug, Clone)]
pub struct LunInfo {
    pub lun: u64,
    pub inquiry: Inquiry,
    pub capacity: Capacity,
    pub write_protected: bool,
    /// DPOFUA: the LU honours the FUA bit.
    pub fua: bool,
    /// Volatile write cache enabled (WCE in the caching mode page).
    pub write_cache: Option<bool>,
    pub serial: Option<String>,
    /// The best LU designator from VPD 0x83 ("naa.…", "eui.…", …).
    pub lu_id: Option<String>,
    pub limits: Option<BlockLimits>,
    pub provisioning: Option<LogicalBlockProvisioning>,
}

impl LunInfo {
    /// UNMAP may be sent (VPD B2 LBPU, and thin provisioning enabled).
    pub fn can_unmap(&self) -> bool {
        self.provisioning.is_some_and(|p| p.lbpu) && !self.write_protected
    }
    /// WRITE SAME(16) may be sent (VPD B0 lists a max length or B2 LBPWS).
    pub fn can_write_same(&self) -> bool {
        !self.write_protected
            && (self.provisioning.is_some_and(|p| p.lbpws)
                || self.limits.is_some_and(|l| l.max_write_same_length > 0))
    }
    /// Thin provisioned (LBPME in READ CAPACITY(16)).
    pub fn thin(&self) -> bool {
        self.capacity.thin_provisioned
    }
    /// Largest transfer in blocks per command (0 = no limit reported).
    pub fn max_transfer_blocks(&self) -> u32 {
        self.limits.map(|l| l.max_transfer_length).unwrap_or(0)
    }
    pub fn block_size(&self) -> u32 {
        self.capacity.block_size
    }
    pub fn blocks(&self) -> u64 {
        self.capacity.blocks
    }
    /// Identity for "is this still the same disk" checks.
    pub fn identity(&self) -> String {
        match (&self.lu_id, &self.serial) {
            (Some(id), _) => id.clone(),
            (None, Some(s)) => format!("serial {s}"),
            (None, None) => format!(
                "{} {} (no serial)",
                self.inquiry.vendor, self.inquiry.product
            ),
        }
    }
}

/// A logical unit and the session it lives on.
pub struct Lun {
    session: Arc<Session>,
    pub info: LunInfo,
    pub retry: RetryPolicy,
}

/// Run one command with the retry policy; returns the result and the
/// buffer. Unit attentions are reported through `on_ua`.
pub fn run_command(
    session: &Session,
    lun: u64,
    cdb: &Cdb,
    dir: DataDir,
    mut buf: Vec<u8>,
    retry: &RetryPolicy,
    mut on_ua: impl FnMut(UnitAttentionReason),
) -> (Result<ScsiResult, LunError>, Vec<u8>) {
    let mut backoffs = 0u32;
    let mut uas = 0u32;
    let mut cdb16 = [0u8; 16];
    let s = cdb.as_slice();
    cdb16[..s.len()].copy_from_slice(s);
    loop {
        let cmd = Command {
            lun,
            cdb: cdb16,
            dir,
            attr: 1,
        };
        let (r, b) = session.execute(cmd, buf);
        buf = b;
        let res = match r {
            Ok(res) => res,
            Err(e) => return (Err(LunError::Session(e)), buf),
        };
        let status = Status::from_u8(res.status);
        let sense = res.sense.as_deref().and_then(|s| Sense::parse(s).ok());
        match disposition(status, sense.as_ref()) {
            Disposition::Done => return (Ok(res), buf),
            Disposition::UnitAttention { reason } if uas < retry.unit_attention_retries => {
                uas += 1;
                log::info!("{}: unit attention ({reason:?}); retrying", cdb.name());
                on_ua(reason);
            }
            Disposition::RetryAfterBackoff if backoffs < retry.backoff_retries => {
                let d = backoff(retry, backoffs);
                backoffs += 1;
                log::info!(
                    "{}: {} ; retrying in {d:?}",
                    cdb.name(),
                    describe(status, sense.as_ref())
                );
                std::thread::sleep(d);
            }
            _ => {
                return (
                    Err(LunError::Scsi {
                        op: cdb.name(),
                        status,
                        sense,
                    }),
                    buf,
                );
            }
        }
    }
}

fn describe(status: Status, sense: Option<&Sense>) -> String {
    match sense {
        Some(s) => format!("{status}: {s}"),
        None => status.to_string(),
    }
}

/// Exponential backoff with ±25% jitter so many initiators do not retry in
/// lockstep.
pub fn backoff(p: &RetryPolicy, attempt: u32) -> Duration {
    let base = p
        .first_backoff
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(p.max_backoff);
    let mut r = [0u8; 2];
    crate::nonblocking_random(&mut r);
    let jitter = f64::from(u16::from_le_bytes(r)) / 65535.0 * 0.5 + 0.75;
    base.mul_f64(jitter)
}

impl Lun {
    /// Learn what LU `lun` is. Clears pending unit attentions first (a new
    /// session always starts with one).
    pub fn open(session: Arc<Session>, lun: u64) -> Result<Lun, LunError> {
        let retry = RetryPolicy::default();
        let info = probe(&session, lun, &retry)?;
        Ok(Lun {
            session,
            info,
            retry,
        })
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Run a command on this LU with retries.
    pub fn run(
        &self,
        cdb: &Cdb,
        dir: DataDir,
        buf: Vec<u8>,
    ) -> (Result<ScsiResult, LunError>, Vec<u8>) {
        run_command(
            &self.session,
            self.info.lun,
            cdb,
            dir,
            buf,
            &self.retry,
            |_| {},
        )
    }

    fn check_range(&self, lba: u64, len: usize) -> Result<u32, LunError> {
        let bs = self.info.block_size();
        if !len.is_multiple_of(bs as usize) {
            return Err(LunError::Unaligned {
                len,
                block_size: bs,
            });
        }
        let blocks = (len / bs as usize) as u64;
        if lba
            .checked_add(blocks)
            .is_none_or(|end| end > self.info.blocks())
        {
            return Err(LunError::OutOfRange {
                lba,
                blocks,
                capacity: self.info.blocks(),
            });
        }
        u32::try_from(blocks).map_err(|_| LunError::OutOfRange {
            lba,
            blocks,
            capacity: self.info.blocks(),
        })
    }

    /// Read `buf.len()` bytes at `lba` into `buf`.
    pub fn read(&self, lba: u64, buf: Vec<u8>) -> (Result<(), LunError>, Vec<u8>) {
        let blocks = match self.check_range(lba, buf.len()) {
            Ok(b) => b,
            Err(e) => return (Err(e), buf),
        };
        let len = buf.len() as u32;
        let (r, b) = self.run(&cdb::read(lba, blocks, false), DataDir::Read(len), buf);
        (r.and_then(|res| short_read(res, len)), b)
    }

    /// Write `buf` at `lba`; with `fua`, the data is on stable storage when
    /// this returns.
    pub fn write(&self, lba: u64, buf: Vec<u8>, fua: bool) -> (Result<(), LunError>, Vec<u8>) {
        if self.info.write_protected {
            return (Err(LunError::ReadOnly), buf);
        }
        let blocks = match self.check_range(lba, buf.len()) {
            Ok(b) => b,
            Err(e) => return (Err(e), buf),
        };
        let len = buf.len() as u32;
        let (r, b) = self.run(
            &cdb::write(lba, blocks, fua && self.info.fua),
            DataDir::Write(len),
            buf,
        );
        (r.map(|_| ()), b)
    }

    /// SYNCHRONIZE CACHE for the whole LU. A refusal with ILLEGAL REQUEST
    /// means there is nothing to flush ([`flush_not_needed`]).
    pub fn flush(&self) -> Result<(), LunError> {
        let c = if self.info.blocks() > u64::from(u32::MAX) {
            cdb::sync_cache_16(0, 0)
        } else {
            cdb::sync_cache(0, 0)
        };
        match self.run(&c, DataDir::None, Vec::new()).0 {
            Ok(_) => Ok(()),
            Err(LunError::Scsi { status, sense, .. })
                if flush_not_needed(c.opcode(), status, sense.as_ref()) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// UNMAP the given (lba, blocks) ranges.
    pub fn unmap(&self, ranges: &[(u64, u32)]) -> Result<(), LunError> {
        let list = cdb::unmap_parameter_list(ranges).map_err(|e| LunError::Parse {
            op: "UNMAP",
            error: ParseError::invalid(crate::scsi::Context::Inquiry, 0, unmap_err(e)),
        })?;
        let len = list.len() as u16;
        self.run(&cdb::unmap(len), DataDir::Write(u32::from(len)), list)
            .0
            .map(|_| ())
    }

    pub fn test_unit_ready(&self) -> Result<(), LunError> {
        self.run(&cdb::test_unit_ready(), DataDir::None, Vec::new())
            .0
            .map(|_| ())
    }
}

fn unmap_err(_: cdb::UnmapError) -> &'static str {
    "too many UNMAP descriptors"
}

fn short_read(res: ScsiResult, want: u32) -> Result<(), LunError> {
    if res.data_in < want as usize {
        return Err(LunError::ShortRead {
            got: res.data_in,
            want,
        });
    }
    Ok(())
}

/// Run a command that returns parameter data; the data trimmed to what
/// arrived.
fn fetch(
    session: &Session,
    lun: u64,
    c: &Cdb,
    alloc: u32,
    retry: &RetryPolicy,
) -> Result<Vec<u8>, LunError> {
    let (r, mut b) = run_command(
        session,
        lun,
        c,
        DataDir::Read(alloc),
        vec![0u8; alloc as usize],
        retry,
        |_| {},
    );
    let res = r?;
    b.truncate(res.data_in.min(alloc as usize));
    Ok(b)
}

fn probe(session: &Session, lun: u64, retry: &RetryPolicy) -> Result<LunInfo, LunError> {
    // A new I_T nexus starts with a POWER ON/RESET unit attention: clear
    // them with TEST UNIT READY (reporting, not failing, NOT READY).
    for _ in 0..retry.unit_attention_retries {
        let (r, _) = session.execute(
            Command {
                lun,
                cdb: pad16(&cdb::test_unit_ready()),
                dir: DataDir::None,
                attr: 1,
            },
            Vec::new(),
        );
        let res = r?;
        let sense = res.sense.as_deref().and_then(|s| Sense::parse(s).ok());
        match disposition(Status::from_u8(res.status), sense.as_ref()) {
            Disposition::UnitAttention { .. } => continue,
            _ => break,
        }
    }
    let inq = fetch(session, lun, &cdb::inquiry(96), 96, retry)?;
    let inquiry = Inquiry::parse(&inq).map_err(|error| LunError::Parse {
        op: "INQUIRY",
        error,
    })?;

    let vpd = |page: u8| -> Option<Vec<u8>> {
        match fetch(session, lun, &cdb::inquiry_vpd(page, 4096), 4096, retry) {
            Ok(v) => Some(v),
            Err(e) => {
                log::debug!("LUN {lun}: VPD page 0x{page:02x}: {e}");
                None
            }
        }
    };
    let pages = vpd(0x00).and_then(|v| SupportedPages::parse(&v).ok());
    let has = |p: u8| pages.as_ref().is_some_and(|s| s.supports(p));
    let serial = if has(0x80) {
        vpd(0x80)
            .and_then(|v| UnitSerial::parse(&v).ok())
            .map(|s| s.serial)
    } else {
        None
    };
    let lu_id = if has(0x83) {
        vpd(0x83)
            .and_then(|v| DeviceId::parse(&v).ok())
            .and_then(|d| d.lu_id())
    } else {
        None
    };
    let limits = if has(0xb0) {
        vpd(0xb0).and_then(|v| BlockLimits::parse(&v).ok())
    } else {
        None
    };
    let provisioning = if has(0xb2) {
        vpd(0xb2).and_then(|v| LogicalBlockProvisioning::parse(&v).ok())
    } else {
        None
    };

    // READ CAPACITY(16), falling back to (10) on targets without it.
    let capacity = match fetch(session, lun, &cdb::read_capacity_16(), 32, retry) {
        Ok(v) => ReadCapacity16::parse(&v)
            .and_then(|c| c.capacity())
            .map_err(|error| LunError::Parse {
                op: "READ CAPACITY(16)",
                error,
            })?,
        Err(e) => {
            log::debug!("LUN {lun}: READ CAPACITY(16): {e}; trying (10)");
            let v = fetch(session, lun, &cdb::read_capacity_10(), 8, retry)?;
            ReadCapacity10::parse(&v)
                .and_then(|c| c.capacity())
                .map_err(|error| LunError::Parse {
                    op: "READ CAPACITY(10)",
                    error,
                })?
        }
    };

    // MODE SENSE(10) for WP and DPOFUA (all pages, to see caching too),
    // falling back to MODE SENSE(6).
    let mode = match fetch(
        session,
        lun,
        &cdb::mode_sense_10(0x3f, 0, true, 4096),
        4096,
        retry,
    ) {
        Ok(v) => ModeSense::parse_10(&v).ok(),
        Err(_) => fetch(
            session,
            lun,
            &cdb::mode_sense_6(0x3f, 0, true, 255),
            255,
            retry,
        )
        .ok()
        .and_then(|v| ModeSense::parse_6(&v).ok()),
    };
    let write_protected = mode.as_ref().is_some_and(|m| m.write_protected());
    let fua = mode.as_ref().is_some_and(|m| m.dpofua());
    let write_cache = mode.as_ref().and_then(|m| m.caching).map(|c| c.wce);
    Ok(LunInfo {
        lun,
        inquiry,
        capacity,
        write_protected,
        fua,
        write_cache,
        serial,
        lu_id,
        limits,
        provisioning,
    })
}

pub fn pad16(c: &Cdb) -> [u8; 16] {
    let mut b = [0u8; 16];
    let s = c.as_slice();
    b[..s.len()].copy_from_slice(s);
    b
}

/// Whether an INQUIRY peripheral byte is a disk the bridges serve: an LU
/// that is connected (qualifier 0) and direct access (SBC, 0x00) or
/// simplified direct access (RBC, 0x0e), as Linux's sd drives them.
pub fn is_disk(peripheral: u8) -> bool {
    use crate::scsi::data::device_type::{DISK, RBC};
    let p = Peripheral::from_u8(peripheral);
    p.qualifier == 0 && (p.device_type == DISK || p.device_type == RBC)
}

/// The most LUNs [`pick_disk`] asks about.
pub const PICK_DISK_MAX: usize = 256;

/// The LU to serve when the description names none (open-iscsi's
/// `iscsi_target_*` words, or `netroot=` with an empty LUN field: both make
/// the kernel's initiator attach every LUN and let `root=` find the disk):
/// `preferred` when it is a disk, else the lowest-numbered LUN REPORT LUNS
/// lists that is one. tgtd, for one, keeps LUN 0 for its controller. Asks
/// INQUIRY of at most [`PICK_DISK_MAX`] LUNs.
pub fn pick_disk(session: &Session, preferred: u64) -> Result<u64, LunError> {
    let retry = RetryPolicy::default();
    let peripheral = |lun: u64| -> Option<u8> {
        match fetch(session, lun, &cdb::inquiry(36), 36, &retry) {
            Ok(v) => v.first().copied(),
            Err(e) => {
                log::debug!("LUN {lun}: INQUIRY: {e}");
                None
            }
        }
    };
    let first = peripheral(preferred);
    if first.is_some_and(is_disk) {
        return Ok(preferred);
    }
    let mut luns = report_luns(session)?;
    luns.sort_unstable();
    luns.dedup();
    let mut seen = Vec::new();
    for lun in luns.into_iter().take(PICK_DISK_MAX) {
        let p = if lun == preferred {
            first
        } else {
            peripheral(lun)
        };
        if p.is_some_and(is_disk) {
            return Ok(lun);
        }
        seen.push((lun, p));
    }
    Err(LunError::NoDisk { luns: seen })
}

/// REPORT LUNS: the LUN numbers the target offers (well-known LUs left out).
pub fn report_luns(session: &Session) -> Result<Vec<u64>, LunError> {
    let retry = RetryPolicy::default();
    let mut alloc = 4096u32;
    for _ in 0..3 {
        let v = fetch(session, 0, &cdb::report_luns(alloc), alloc, &retry)?;
        let r = ReportLuns::parse(&v).map_err(|error| LunError::Parse {
            op: "REPORT LUNS",
            error,
        })?;
        if r.truncated && r.alloc_len_needed() > alloc {
            alloc = r.alloc_len_needed().min(1 << 20);
            continue;
        }
        // Address method 11b (well-known LUs like REPORT LUNS itself).
        return Ok(r
            .luns
            .iter()
            .filter(|l| l.raw[0] >> 6 != 3)
            .map(|l| l.number)
            .collect());
    }
    Err(LunError::Parse {
        op: "REPORT LUNS",
        error: ParseError::invalid(
            crate::scsi::Context::ReportLuns,
            0,
            "LUN list keeps growing",
        ),
    })
}

/// The relative target port and target port group (VPD 0x83) through
/// which `session` reaches LU `lun`: where this path sits in ALUA's
/// groups. `(None, None)` when the LU has no such designators.
pub fn path_port(session: &Session, lun: u64) -> Result<(Option<u16>, Option<u16>), LunError> {
    let v = fetch(
        session,
        lun,
        &cdb::inquiry_vpd(0x83, 4096),
        4096,
        &RetryPolicy::default(),
    )?;
    let d = DeviceId::parse(&v).map_err(|error| LunError::Parse {
        op: "INQUIRY VPD 0x83",
        error,
    })?;
    Ok(d.port())
}

/// REPORT TARGET PORT GROUPS for LU `lun` (ALUA: ask only when INQUIRY's
/// TPGS field is non-zero): every group's access state and ports.
pub fn report_target_port_groups(
    session: &Session,
    lun: u64,
) -> Result<TargetPortGroups, LunError> {
    let retry = RetryPolicy::default();
    let mut alloc = 1024u32;
    for _ in 0..3 {
        let cdb = cdb::report_target_port_groups(alloc);
        let v = fetch(session, lun, &cdb, alloc, &retry)?;
        let t = TargetPortGroups::parse(&v).map_err(|error| LunError::Parse {
            op: "REPORT TARGET PORT GROUPS",
            error,
        })?;
        if t.truncated && t.alloc_len_needed() > alloc {
            alloc = t.alloc_len_needed().min(1 << 16);
            continue;
        }
        if t.truncated {
            // Room enough was given: the target sent less than it said.
            return Err(LunError::Parse {
                op: "REPORT TARGET PORT GROUPS",
                error: ParseError::invalid(
                    crate::scsi::Context::ReportTargetPortGroups,
                    v.len(),
                    "the data ends before its RETURN DATA LENGTH",
                ),
            });
        }
        return Ok(t);
    }
    Err(LunError::Parse {
        op: "REPORT TARGET PORT GROUPS",
        error: ParseError::invalid(
            crate::scsi::Context::ReportTargetPortGroups,
            0,
            "the group list keeps growing",
        ),
    })
}

pub use data::lun_to_bytes;
