//! The control path: commands to `/dev/ublk-control`, one at a time, as
//! `IORING_OP_URING_CMD` on a ring of 128-byte SQEs (see the module
//! documentation of [`super`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};
use nix::errno::Errno;
use zerocopy::{FromZeros, IntoBytes};

use super::UblkError;
use super::ring::{Ring, push, submit_and_wait};
use super::uapi::{self, CtrlCmd, DevInfo, Params};

pub(super) const CONTROL: &str = "/dev/ublk-control";

/// The control commands we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmd {
    GetFeatures,
    GetDevInfo,
    AddDev,
    DelDev,
    StartDev,
    StopDev,
    SetParams,
    GetParams,
    StartUserRecovery,
    EndUserRecovery,
    UpdateSize,
}

impl Cmd {
    fn op(self) -> u32 {
        match self {
            Cmd::GetFeatures => uapi::UBLK_U_CMD_GET_FEATURES,
            Cmd::GetDevInfo => uapi::UBLK_U_CMD_GET_DEV_INFO,
            Cmd::AddDev => uapi::UBLK_U_CMD_ADD_DEV,
            Cmd::DelDev => uapi::UBLK_U_CMD_DEL_DEV,
            Cmd::StartDev => uapi::UBLK_U_CMD_START_DEV,
            Cmd::StopDev => uapi::UBLK_U_CMD_STOP_DEV,
            Cmd::SetParams => uapi::UBLK_U_CMD_SET_PARAMS,
            Cmd::GetParams => uapi::UBLK_U_CMD_GET_PARAMS,
            Cmd::StartUserRecovery => uapi::UBLK_U_CMD_START_USER_RECOVERY,
            Cmd::EndUserRecovery => uapi::UBLK_U_CMD_END_USER_RECOVERY,
            Cmd::UpdateSize => uapi::UBLK_U_CMD_UPDATE_SIZE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cmd::GetFeatures => "GET_FEATURES",
            Cmd::GetDevInfo => "GET_DEV_INFO",
            Cmd::AddDev => "ADD_DEV",
            Cmd::DelDev => "DEL_DEV",
            Cmd::StartDev => "START_DEV",
            Cmd::StopDev => "STOP_DEV",
            Cmd::SetParams => "SET_PARAMS",
            Cmd::GetParams => "GET_PARAMS",
            Cmd::StartUserRecovery => "START_USER_RECOVERY",
            Cmd::EndUserRecovery => "END_USER_RECOVERY",
            Cmd::UpdateSize => "UPDATE_SIZE",
        }
    }
}

/// /dev/ublk-control and a ring to send it commands.
pub(super) struct Control {
    ring: Ring,
    file: File,
}

impl Control {
    pub(super) fn open() -> Result<Control, UblkError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(|e| UblkError::os(format!("open {CONTROL}"), &e))?;
        let ring = Ring::builder()
            .build(4)
            .map_err(|e| UblkError::os("io_uring setup for ublk control", &e))?;
        Ok(Control { ring, file })
    }

    /// Run one command and wait for its result. `buf` (the command's
    /// `addr`/`len`) is borrowed until the kernel is done with it.
    pub(super) fn run(
        &mut self,
        cmd: Cmd,
        dev_id: u32,
        data0: u64,
        buf: Option<&mut [u8]>,
    ) -> Result<i32, UblkError> {
        let fail = |errno: Errno| UblkError::Command {
            cmd: cmd.name(),
            dev_id: (dev_id != u32::MAX).then_some(dev_id),
            errno,
        };
        let (addr, len) = match buf {
            Some(b) => (
                b.as_mut_ptr() as u64,
                u16::try_from(b.len()).map_err(|_| fail(Errno::EINVAL))?,
            ),
            None => (0, 0),
        };
        let hdr = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len,
            addr,
            data: [data0],
            ..CtrlCmd::default()
        };
        let mut area = [0u8; 80];
        area[..size_of::<CtrlCmd>()].copy_from_slice(hdr.as_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), cmd.op())
            .cmd(area)
            .build()
            .user_data(0);
        let os = |e: io::Error| UblkError::os(format!("{}: io_uring", cmd.name()), &e);
        push(&mut self.ring, &sqe).map_err(os)?;
        loop {
            submit_and_wait(&self.ring).map_err(os)?;
            if let Some(cqe) = self.ring.completion().next() {
                let res = cqe.result();
                return if res < 0 {
                    Err(fail(Errno::from_raw(-res)))
                } else {
                    Ok(res)
                };
            }
        }
    }

    pub(super) fn features(&mut self) -> Result<u64, UblkError> {
        let mut f = 0u64;
        self.run(Cmd::GetFeatures, u32::MAX, 0, Some(f.as_mut_bytes()))?;
        Ok(f)
    }

    pub(super) fn dev_info(&mut self, dev_id: u32) -> Result<DevInfo, UblkError> {
        let mut info = DevInfo::new_zeroed();
        self.run(Cmd::GetDevInfo, dev_id, 0, Some(info.as_mut_bytes()))?;
        Ok(info)
    }

    pub(super) fn params(&mut self, dev_id: u32) -> Result<Params, UblkError> {
        let mut p = Params::new_zeroed();
        p.len = size_of::<Params>() as u32;
        self.run(Cmd::GetParams, dev_id, 0, Some(p.as_mut_bytes()))?;
        Ok(p)
    }

    /// A command whose "no such device" means the job is already done.
    pub(super) fn run_gone_ok(&mut self, cmd: Cmd, dev_id: u32) -> Result<(), UblkError> {
        match self.run(cmd, dev_id, 0, None) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ublk::ring::test_ring;

    #[test]
    fn control_commands_go_through_a_128_byte_sqe_ring() {
        // A pipe has no uring_cmd: the kernel answers EOPNOTSUPP, which
        // shows the command was built, submitted and reaped.
        let Some(ring) = test_ring() else { return };
        let (rx, _tx) = io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(rx));
        let mut c = Control { ring, file };
        let mut f = 0u64;
        let e = c
            .run(Cmd::GetFeatures, u32::MAX, 0, Some(f.as_mut_bytes()))
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EOPNOTSUPP), "{e}");
        assert_eq!(
            e.to_string(),
            "GET_FEATURES failed: Operation not supported"
        );
        let e = c.run_gone_ok(Cmd::StopDev, 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            "STOP_DEV (ublk device 7) failed: Operation not supported"
        );
        // Linux 6.x's /dev/null takes any uring_cmd and answers 0.
        let Some(ring) = test_ring() else { return };
        let mut c = Control {
            ring,
            file: File::open("/dev/null").unwrap(),
        };
        match c.run(Cmd::StopDev, 7, 0, None) {
            Ok(r) => assert_eq!(r, 0),
            Err(e) => assert_eq!(e.errno(), Some(Errno::EOPNOTSUPP)),
        }
    }
}
