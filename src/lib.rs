//! sanroot: a boot-time iSCSI initiator.
//!
//! Layers, each knowing nothing of the ones above it:
//! - [`ibft`]: the iSCSI Boot Firmware Table;
//! - [`scsi`]: CDBs, sense data, INQUIRY/VPD/capacity parsing;
//! - [`iscsi`]: the RFC 7143 initiator (PDUs, text keys, login, session);
//! - [`cmd`]: the commands the binary offers;
//! - [`secret`]: CHAP secrets that never leak into logs.

pub mod boot;
pub mod bridge;
pub mod cmd;
pub mod completion;
pub mod daemon;
pub mod direct;
pub mod exit;
pub mod ibft;
pub mod iscsi;
pub mod kcmdline;
pub mod logging;
pub mod lun;
pub mod net;
pub mod netlink;
pub mod nodes;
pub mod pathset;
pub mod scsi;
pub mod secret;
pub mod state;
pub mod threads;
pub mod url;

/// Bytes that are unpredictable enough for identifiers and jitter (ISIDs,
/// backoff), from a source that never blocks: at early boot the kernel's
/// CRNG may not be ready and getrandom(2) would stall a SAN boot. Secrets
/// (CHAP challenges) use getrandom instead.
pub fn nonblocking_random(out: &mut [u8]) {
    // get_random_bytes() behind this file does not wait for the CRNG.
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut seed =
        crc32c::crc32c(uuid.as_bytes()) as u64 ^ (now as u64) ^ ((std::process::id() as u64) << 32);
    for b in out.iter_mut() {
        // splitmix64
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *b = (z ^ (z >> 31)) as u8;
    }
}
