//! Finding the root filesystem named by the kernel command line's `root=`
//! without udev or blkid, for the initramfs in which sanroot is /init.
//!
//! - [`RootSpec::parse`]: `root=UUID=…`, `LABEL=…`, `PARTUUID=…`,
//!   `PARTLABEL=…`, `/dev/disk/by-*/…` and `/dev/<name>` (pure).
//! - [`probe`]: ext2/3/4, XFS and btrfs superblocks: type, UUID, label, as
//!   blkid reports them (pure).
//! - [`find`]: the only I/O. Walks /sys/class/block, reads the first
//!   [`PROBE_BYTES`] of each device (and of each partitioned disk, for its
//!   partition table: [`super::parts`]) and returns the one device that
//!   matches.
//!
//! Whole disks with partitions are not probed for filesystems (a stale
//! superblock there is not what blkid/udev would report either), and a
//! name matched by two devices is an error, except for the devices of one
//! multi-device btrfs.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use super::parts::{self, bytes16_at, u16_at, u16_be_at, u32_at, u32_be_at};

/// What `root=` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    Uuid(String),
    Label(String),
    PartUuid(String),
    PartLabel(String),
    Path(PathBuf),
}

const NAME_HINT: &str = "write root=UUID=<uuid>, LABEL=<label>, PARTUUID=<uuid>, \
     PARTLABEL=<name> or /dev/<kernel name> (e.g. /dev/ublkb0p1)";

impl RootSpec {
    /// Parse the value of root= (without "root="). The keywords are upper
    /// case, as the kernel (PARTUUID=, PARTLABEL=), dracut and systemd
    /// accept them. dracut's `block:` prefix and a pair of quotes around
    /// the whole value or the part after the keyword (systemd) are
    /// accepted. A PARTUUID's `/PARTNROFF=n` suffix is refused.
    pub fn parse(s: &str) -> Result<RootSpec, String> {
        let s = unquote(s.trim());
        let s = s.strip_prefix("block:").unwrap_or(s);
        if s.is_empty() {
            return Err(format!("root= is empty: {NAME_HINT}"));
        }
        if s.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("iscsi:")) {
            return Err(format!(
                "root={s}: the iSCSI target goes in netroot=iscsi:…; root= names the \
                 filesystem on it: {NAME_HINT}"
            ));
        }
        for kw in ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL="] {
            if let Some(v) = s.strip_prefix(kw) {
                return tagged(kw, unquote(v));
            }
            if let Some(p) = s.get(..kw.len())
                && p.eq_ignore_ascii_case(kw)
            {
                let rest = s.get(kw.len()..).unwrap_or("");
                return Err(format!(
                    "root={s}: the keyword is upper case: write root={kw}{rest}"
                ));
            }
        }
        if let Some(rel) = s.strip_prefix("/dev/") {
            return dev_path(s, rel);
        }
        if is_devno(s) {
            return Err(format!(
                "root={s}: device numbers are not supported: {NAME_HINT}"
            ));
        }
        Err(format!(
            "root={s} is not a block device sanroot can find: {NAME_HINT}"
        ))
    }
}

impl fmt::Display for RootSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootSpec::Uuid(v) => write!(f, "UUID={v}"),
            RootSpec::Label(v) => write!(f, "LABEL={}", escape_udev(v)),
            RootSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            RootSpec::PartLabel(v) => write!(f, "PARTLABEL={}", escape_udev(v)),
            RootSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `s` without one pair of double or single quotes around it.
fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// `KEYWORD=value`, keyword already matched.
fn tagged(kw: &str, v: &str) -> Result<RootSpec, String> {
    let kind = kw.trim_end_matches('=');
    if v.is_empty() {
        return Err(format!(
            "root={kw} has no value: write root={kw}<{}> (blkid shows it)",
            kind.to_ascii_lowercase()
        ));
    }
    match kw {
        "UUID=" => uuid_value(kind, v).map(RootSpec::Uuid),
        "PARTUUID=" => {
            if let Some((_, off)) = v.split_once('/') {
                return Err(format!(
                    "root={kw}{v}: \"/{off}\" (the kernel's PARTNROFF) is not supported: \
                     name the partition itself, root=PARTUUID=<its own PARTUUID> \
                     (blkid -s PARTUUID -o value /dev/<partition>)"
                ));
            }
            uuid_value(kind, v).map(RootSpec::PartUuid)
        }
        // udev's and dracut's escapes ("my\x20root"): a kernel command
        // line cannot hold a space or a trailing blank otherwise.
        "LABEL=" => Ok(RootSpec::Label(unescape_udev(v))),
        _ => Ok(RootSpec::PartLabel(unescape_udev(v))),
    }
}

/// A UUID as written: hex digits and dashes (also the short vfat/NTFS
/// forms and MBR PARTUUIDs); compared case-insensitively later.
fn uuid_value(kind: &str, v: &str) -> Result<String, String> {
    if v.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(v.to_string())
    } else {
        let label = if kind == "PARTUUID" {
            "PARTLABEL"
        } else {
            "LABEL"
        };
        Err(format!(
            "root={kind}={v}: not a UUID (hex digits and dashes, e.g. \
             3f2a9c4e-0b1d-4e8a-9f00-123456789abc); for a name write root={label}={v}"
        ))
    }
}

/// `/dev/…` (`rel` is the part after /dev/).
fn dev_path(s: &str, rel: &str) -> Result<RootSpec, String> {
    if let Some(link) = rel.strip_prefix("disk/") {
        let (dir, name) = link.split_once('/').unwrap_or((link, ""));
        if !name.is_empty() && !name.contains('/') {
            let v = unescape_udev(name);
            match dir {
                "by-uuid" => return uuid_value("UUID", &v).map(RootSpec::Uuid),
                "by-partuuid" => return uuid_value("PARTUUID", &v).map(RootSpec::PartUuid),
                "by-label" => return Ok(RootSpec::Label(v)),
                "by-partlabel" => return Ok(RootSpec::PartLabel(v)),
                _ => {}
            }
        }
        return Err(format!(
            "root={s}: there is no udev in this initramfs to make /dev/disk links: {NAME_HINT}"
        ));
    }
    let ok = !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !rel.ends_with('/');
    if !ok {
        return Err(format!("root={s} is not a device path: {NAME_HINT}"));
    }
    if rel == "nfs" {
        return Err(format!(
            "root={s} is an NFS root; sanroot mounts block devices: {NAME_HINT}"
        ));
    }
    Ok(RootSpec::Path(PathBuf::from(s)))
}

/// Escape a label as udev names /dev/disk links ("my\x20root"): blanks,
/// quotes, backslashes and control characters as \xHH, so that the
/// result is one kernel command-line word that [`unescape_udev`] turns
/// back into the label.
fn escape_udev(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii()
            && (c.is_ascii_whitespace() || c.is_ascii_control() || matches!(c, '\\' | '"' | '\''))
        {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Undo udev's escaping of /dev/disk link names ("my\x20root").
fn unescape_udev(s: &str) -> String {
    super::unescape_byte3(s, |h| {
        let hex = h.strip_prefix(b"x")?;
        u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    })
}

/// "8:1", "0801", "fe01": the kernel's device-number forms.
fn is_devno(s: &str) -> bool {
    match s.split_once(':') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.chars().all(|c| c.is_ascii_digit())
                && b.chars().all(|c| c.is_ascii_digit())
        }
        None => s.chars().all(|c| c.is_ascii_hexdigit()),
    }
}

/// A filesystem found by its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// The name mount(2) wants: "ext4", "ext3", "ext2", "xfs", "btrfs".
    pub fstype: &'static str,
    /// Lowercase 8-4-4-4-12; None when the superblock's is all zero.
    pub uuid: Option<String>,
    /// Up to the first NUL, trailing whitespace removed (as blkid); None
    /// when empty.
    pub label: Option<String>,
}

/// The superblock layouts, in one place.
mod ext {
    use std::ops::Range;
    /// Superblock offset on the device, and its length.
    pub const SB: usize = 1024;
    pub const SB_LEN: usize = 1024;
    // Within the superblock.
    pub const MAGIC: usize = 0x38;
    pub const MAGIC_VALUE: u16 = 0xEF53;
    pub const FEATURE_COMPAT: usize = 0x5C;
    pub const FEATURE_INCOMPAT: usize = 0x60;
    pub const FEATURE_RO_COMPAT: usize = 0x64;
    pub const UUID: usize = 0x68;
    pub const VOLUME_NAME: Range<usize> = 0x78..0x88;
    pub const CHECKSUM: usize = 0x3FC;

    pub const COMPAT_HAS_JOURNAL: u32 = 0x0004;
    pub const INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
    pub const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
    /// What ext2 (and ext3) may have and still be called that by blkid:
    /// sparse_super, large_file, btree_dir.
    pub const RO_COMPAT_EXT23: u32 = 0x0007;
    /// filetype, meta_bg.
    pub const INCOMPAT_EXT2: u32 = 0x0012;
    /// filetype, recover, meta_bg.
    pub const INCOMPAT_EXT3: u32 = 0x0016;
}

mod xfs {
    use std::ops::Range;
    /// Superblock offset on the device; big-endian fields.
    pub const SB: usize = 0;
    pub const MAGIC: Range<usize> = 0..4;
    pub const MAGIC_VALUE: [u8; 4] = *b"XFSB";
    pub const BLOCKSIZE: usize = 4;
    pub const UUID: usize = 32;
    pub const AGCOUNT: usize = 88;
    pub const SECTSIZE: usize = 102;
    pub const INODESIZE: usize = 104;
    pub const FNAME: Range<usize> = 108..120;
    pub const BLOCKLOG: usize = 120;
    pub const SECTLOG: usize = 121;
    pub const INODELOG: usize = 122;
    pub const INPROGRESS: usize = 126;
    pub const LEN: usize = 128;
}

mod btrfs {
    use std::ops::Range;
    /// Superblock offset on the device (the primary copy), and its length.
    pub const SB: usize = 0x10000;
    pub const SB_LEN: usize = 0x1000;
    // Within the superblock.
    pub const FSID: usize = 0x20;
    pub const MAGIC: Range<usize> = 0x40..0x48;
    pub const MAGIC_VALUE: [u8; 8] = *b"_BHRfS_M";
    /// dev_item (at 0xc9) .uuid: this device's UUID (blkid's UUID_SUB).
    pub const DEV_UUID: usize = 0xc9 + 0x42;
    pub const LABEL: Range<usize> = 0x12b..0x22b;
}

/// Bytes `probe` wants from the start of a device (enough for btrfs's
/// superblock at 64 KiB).
pub const PROBE_BYTES: usize = btrfs::SB + btrfs::SB_LEN;

/// A superblock's findings, with what [`find`] needs beyond [`FsInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probed {
    info: FsInfo,
    /// btrfs: this device's own UUID, to tell the devices of one
    /// multi-device filesystem from copies of one device.
    dev_uuid: Option<String>,
}

/// Identify the filesystem whose first bytes are `head` (may be shorter
/// than [`PROBE_BYTES`]: then only the filesystems whose superblock fits).
/// None when nothing is recognised, and when two signatures are (blkid
/// calls that ambivalent and reports neither).
pub fn probe(head: &[u8]) -> Option<FsInfo> {
    let mut all = probe_all(head);
    if all.len() == 1 {
        all.pop().map(|p| p.info)
    } else {
        None
    }
}

fn probe_all(head: &[u8]) -> Vec<Probed> {
    [probe_xfs(head), probe_ext(head), probe_btrfs(head)]
        .into_iter()
        .flatten()
        .collect()
}

fn field(b: &[u8], base: usize, r: Range<usize>) -> Option<&[u8]> {
    b.get(base.checked_add(r.start)?..base.checked_add(r.end)?)
}

/// A fixed-size label field: up to the first NUL, lossy UTF-8, trailing
/// whitespace trimmed like blkid; None when that leaves nothing.
fn label(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(raw.get(..end)?);
    let t = s.trim_end();
    (!t.is_empty()).then(|| t.to_string())
}

fn uuid(b: &[u8], off: usize) -> Option<String> {
    let u = bytes16_at(b, off)?;
    (u != [0; 16]).then(|| parts::uuid_string(&u))
}

fn probe_ext(head: &[u8]) -> Option<Probed> {
    let sb = head.get(ext::SB..ext::SB + ext::SB_LEN)?;
    if u16_at(sb, ext::MAGIC)? != ext::MAGIC_VALUE {
        return None;
    }
    let compat = u32_at(sb, ext::FEATURE_COMPAT)?;
    let incompat = u32_at(sb, ext::FEATURE_INCOMPAT)?;
    let ro_compat = u32_at(sb, ext::FEATURE_RO_COMPAT)?;
    if incompat & ext::INCOMPAT_JOURNAL_DEV != 0 {
        return None; // an external journal, not a filesystem
    }
    if ro_compat & ext::RO_COMPAT_METADATA_CSUM != 0 {
        // ext4 stores crc32c without the final inversion.
        let want = u32_at(sb, ext::CHECKSUM)?;
        if !crc32c::crc32c(sb.get(..ext::CHECKSUM)?) != want {
            return None;
        }
    }
    let journal = compat & ext::COMPAT_HAS_JOURNAL != 0;
    // blkid's order: anything ext3 could not mount is ext4; then the
    // journal tells ext3 from ext2.
    let fstype = if ro_compat & !ext::RO_COMPAT_EXT23 != 0 || incompat & !ext::INCOMPAT_EXT3 != 0 {
        "ext4"
    } else if journal {
        "ext3"
    } else if incompat & !ext::INCOMPAT_EXT2 == 0 {
        "ext2"
    } else {
        return None; // needs recovery but has no journal: blkid gives up too
    };
    Some(Probed {
        info: FsInfo {
            fstype,
            uuid: uuid(sb, ext::UUID),
            label: label(sb.get(ext::VOLUME_NAME)?),
        },
        dev_uuid: None,
    })
}

fn probe_xfs(head: &[u8]) -> Option<Probed> {
    let sb = head.get(xfs::SB..xfs::SB + xfs::LEN)?;
    if sb.get(xfs::MAGIC)? != xfs::MAGIC_VALUE {
        return None;
    }
    // A few of xfs_verify_sb's sanity checks, so that stray "XFSB" bytes
    // are not taken for a filesystem.
    let log_ok = |size: u32, log_at: usize, min: u32, max: u32| {
        size.is_power_of_two()
            && (min..=max).contains(&size)
            && sb
                .get(log_at)
                .is_some_and(|l| u32::from(*l) == size.trailing_zeros())
    };
    let blocksize = u32_be_at(sb, xfs::BLOCKSIZE)?;
    let sectsize = u32::from(u16_be_at(sb, xfs::SECTSIZE)?);
    let inodesize = u32::from(u16_be_at(sb, xfs::INODESIZE)?);
    if !log_ok(blocksize, xfs::BLOCKLOG, 512, 65536)
        || !log_ok(sectsize, xfs::SECTLOG, 512, 32768)
        || !log_ok(inodesize, xfs::INODELOG, 256, 2048)
        || u32_be_at(sb, xfs::AGCOUNT)? == 0
        || *sb.get(xfs::INPROGRESS)? != 0
    {
        return None;
    }
    Some(Probed {
        info: FsInfo {
            fstype: "xfs",
            uuid: uuid(sb, xfs::UUID),
            label: label(sb.get(xfs::FNAME)?),
        },
        dev_uuid: None,
    })
}

fn probe_btrfs(head: &[u8]) -> Option<Probed> {
    if field(head, btrfs::SB, btrfs::MAGIC)? != btrfs::MAGIC_VALUE {
        return None;
    }
    let sb = head.get(btrfs::SB..btrfs::SB.checked_add(btrfs::LABEL.end)?)?;
    Some(Probed {
        info: FsInfo {
            fstype: "btrfs",
            uuid: uuid(sb, btrfs::FSID),
            label: label(sb.get(btrfs::LABEL)?),
        },
        dev_uuid: uuid(sb, btrfs::DEV_UUID),
    })
}

/// A block device that matched.
#[derive(Debug, Clone)]
pub struct Found {
    /// The kernel's name: "ublkb0p1".
    pub name: String,
    /// `dev_dir.join(name)` (a "!" in the kernel name is a "/" here).
    pub dev: PathBuf,
    pub fs: Option<FsInfo>,
}

/// The Discoverable Partitions Specification's root partition type for
/// x86-64.
pub const DPS_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

/// DPS attribute: "do not mount this automatically".
const GPT_FLAG_NO_AUTO: u64 = 1 << 63;

/// One entry of /sys/class/block.
#[derive(Debug, Clone)]
struct BlockDev {
    name: String,
    /// Partition number, for partitions.
    partition: Option<u32>,
    /// The disk a partition is on.
    parent: Option<String>,
}

impl BlockDev {
    fn dev(&self, dev_dir: &Path) -> PathBuf {
        dev_dir.join(self.name.replace('!', "/"))
    }
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The devices under `sys` with a non-zero size (unknown size counts as
/// non-zero), sorted by name; and the disks that have partitions.
fn list_devices(sys: &Path) -> (Vec<BlockDev>, BTreeSet<String>) {
    let mut devs = Vec::new();
    let mut parents = BTreeSet::new();
    let entries = match fs::read_dir(sys) {
        Ok(e) => e,
        Err(e) => {
            log::debug!("{}: {e}", sys.display());
            return (devs, parents);
        }
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = sys.join(&name);
        let partition = read_trimmed(&dir.join("partition")).and_then(|s| s.parse().ok());
        let parent = partition.and_then(|_| {
            // The partition's directory sits inside its disk's.
            let real = fs::canonicalize(&dir).ok()?;
            Some(real.parent()?.file_name()?.to_str()?.to_string())
        });
        if let Some(p) = &parent {
            parents.insert(p.clone());
        }
        if read_trimmed(&dir.join("size")).as_deref() == Some("0") {
            log::debug!("{name}: size 0, skipped");
            continue;
        }
        if partition.is_some() && parent.is_none() {
            log::debug!("{name}: partition without a parent disk in sysfs");
        }
        devs.push(BlockDev {
            name,
            partition,
            parent,
        });
    }
    devs.sort_by(|a, b| a.name.cmp(&b.name));
    (devs, parents)
}

/// The first [`PROBE_BYTES`] of `path` (fewer if it is shorter); None,
/// logged, when it cannot be opened or read.
fn read_head(path: &Path) -> Option<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path);
    let mut buf = Vec::with_capacity(PROBE_BYTES);
    match f.and_then(|f| f.take(PROBE_BYTES as u64).read_to_end(&mut buf)) {
        Ok(_) => Some(buf),
        Err(e) => {
            log::debug!("{}: {e}", path.display());
            None
        }
    }
}

/// Disk heads, each read at most once per [`find`].
struct Heads<'a> {
    dev_dir: &'a Path,
    sys: &'a Path,
    cache: HashMap<String, Option<(Vec<u8>, u32)>>,
}

impl Heads<'_> {
    /// The disk's first bytes and the block size its GPT is at (the
    /// kernel's logical block size when sysfs says, else where a header
    /// is found, else 512).
    fn disk(&mut self, disk: &str) -> Option<&(Vec<u8>, u32)> {
        let (dev_dir, sys) = (self.dev_dir, self.sys);
        self.cache
            .entry(disk.to_string())
            .or_insert_with(|| {
                let head = read_head(&dev_dir.join(disk.replace('!', "/")))?;
                let bs = read_trimmed(&sys.join(disk).join("queue/logical_block_size"))
                    .and_then(|s| s.parse().ok())
                    .or_else(|| parts::gpt_block_size(&head))
                    .unwrap_or(512);
                Some((head, bs))
            })
            .as_ref()
    }
}

/// Partition `d`'s GPT entry, or its MBR PARTUUID.
enum PartId {
    Gpt(parts::GptEntry),
    Mbr(String),
}

fn part_id(heads: &mut Heads, d: &BlockDev) -> Option<PartId> {
    let (n, disk) = (d.partition?, d.parent.as_deref()?);
    let (head, bs) = heads.disk(disk)?;
    if let Some(e) = parts::gpt_entry(head, *bs, n) {
        return Some(PartId::Gpt(e));
    }
    parts::mbr_disk_signature(head).map(|sig| PartId::Mbr(parts::mbr_partuuid(sig, n)))
}

/// Look through `sys_class_block` (normally /sys/class/block) for the
/// device `spec` names, reading superblocks and partition tables from
/// `dev_dir` (normally /dev). Ok(None): not there (yet); the caller polls.
/// Err only for something the user must fix: two devices match.
///
/// For a multi-device btrfs the first of its devices is returned; the
/// caller must have the kernel scan the others before mounting.
pub fn find(
    spec: &RootSpec,
    sys_class_block: &Path,
    dev_dir: &Path,
) -> Result<Option<Found>, String> {
    let (devs, parents) = list_devices(sys_class_block);
    let mut heads = Heads {
        dev_dir,
        sys: sys_class_block,
        cache: HashMap::new(),
    };
    let mut hits: Vec<(&BlockDev, Option<Probed>)> = Vec::new();
    match spec {
        RootSpec::Path(p) => return Ok(find_path(p, &devs, sys_class_block, dev_dir)),
        RootSpec::Uuid(_) | RootSpec::Label(_) => {
            for d in &devs {
                if d.partition.is_none() && parents.contains(&d.name) {
                    continue; // a partitioned disk: its partitions count
                }
                let Some(head) = read_head(&d.dev(dev_dir)) else {
                    continue;
                };
                let all = probe_all(&head);
                if all.len() > 1 {
                    log::debug!("{}: more than one filesystem signature, skipped", d.name);
                    continue;
                }
                if let Some(p) = all.into_iter().next()
                    && fs_matches(spec, &p.info)
                {
                    hits.push((d, Some(p)));
                }
            }
        }
        RootSpec::PartUuid(want) | RootSpec::PartLabel(want) => {
            for d in &devs {
                let hit = match (spec, part_id(&mut heads, d)) {
                    (RootSpec::PartUuid(_), Some(PartId::Gpt(e))) => {
                        parts::guid_string(&e.unique_guid).eq_ignore_ascii_case(want)
                    }
                    (RootSpec::PartUuid(_), Some(PartId::Mbr(u))) => u.eq_ignore_ascii_case(want),
                    (RootSpec::PartLabel(_), Some(PartId::Gpt(e))) => {
                        e.name.trim_end() == want.trim_end()
                    }
                    _ => false,
                };
                if hit {
                    hits.push((d, None));
                }
            }
        }
    }
    let multi_btrfs = hits.len() > 1 && {
        let subs: BTreeSet<_> = hits
            .iter()
            .filter_map(|(_, p)| p.as_ref())
            .filter(|p| p.info.fstype == "btrfs")
            .filter_map(|p| p.dev_uuid.clone())
            .collect();
        subs.len() == hits.len()
    };
    if hits.len() > 1 && !multi_btrfs {
        let names: Vec<String> = hits
            .iter()
            .map(|(d, _)| d.dev(dev_dir).display().to_string())
            .collect();
        return Err(format!(
            "root={spec} matches {} devices: {}. Give the copies distinct \
             identities, or name the device itself: root={}",
            hits.len(),
            names.join(", "),
            names.first().map(String::as_str).unwrap_or("/dev/<name>")
        ));
    }
    let Some((d, p)) = hits.into_iter().next() else {
        return Ok(None);
    };
    let fs = match p {
        Some(p) => Some(p.info),
        None => read_head(&d.dev(dev_dir)).and_then(|h| probe(&h)),
    };
    Ok(Some(Found {
        name: d.name.clone(),
        dev: d.dev(dev_dir),
        fs,
    }))
}

fn fs_matches(spec: &RootSpec, fs: &FsInfo) -> bool {
    match spec {
        RootSpec::Uuid(want) => fs
            .uuid
            .as_ref()
            .is_some_and(|u| u.eq_ignore_ascii_case(want)),
        // Labels are read with trailing blanks trimmed, as blkid does.
        RootSpec::Label(want) => fs.label.as_ref().is_some_and(|l| l == want.trim_end()),
        _ => false,
    }
}

/// root=/dev/…: by kernel name ("/" in the path is "!" in sysfs), through
/// a symlink under `dev_dir` when there is one, and /dev/mapper/<name>
/// by the device-mapper name sysfs shows.
fn find_path(p: &Path, devs: &[BlockDev], sys: &Path, dev_dir: &Path) -> Option<Found> {
    let rel = p.strip_prefix("/dev").ok()?;
    let mut names = vec![rel.to_string_lossy().replace('/', "!")];
    if let Ok(target) = fs::read_link(dev_dir.join(rel)) {
        let base = dev_dir.join(rel);
        let abs = base.parent().map(|d| d.join(&target)).unwrap_or(target);
        if let Some(n) = abs.file_name().and_then(|n| n.to_str()) {
            names.push(n.to_string());
        }
    }
    let dm_name = rel
        .strip_prefix("mapper")
        .ok()
        .map(|n| n.to_string_lossy().into_owned());
    let d = devs.iter().find(|d| {
        names.contains(&d.name)
            || dm_name.as_ref().is_some_and(|want| {
                read_trimmed(&sys.join(&d.name).join("dm/name")).as_ref() == Some(want)
            })
    })?;
    let head = read_head(&d.dev(dev_dir))?;
    Some(Found {
        name: d.name.clone(),
        dev: d.dev(dev_dir),
        fs: probe(&head),
    })
}

/// For a missing root=: the partition on `disk` whose GPT type is the
/// Discoverable Partitions Specification's x86-64 root
/// ([`DPS_ROOT_X86_64`]) and that is not marked no-auto. With several,
/// the first (logged).
pub fn discoverable_root(disk: &str, sys_class_block: &Path, dev_dir: &Path) -> Option<Found> {
    let (devs, _) = list_devices(sys_class_block);
    let mut heads = Heads {
        dev_dir,
        sys: sys_class_block,
        cache: HashMap::new(),
    };
    let roots: Vec<&BlockDev> = devs
        .iter()
        .filter(|d| d.parent.as_deref() == Some(disk))
        .filter(|d| {
            matches!(part_id(&mut heads, d), Some(PartId::Gpt(e))
                if parts::guid_string(&e.type_guid) == DPS_ROOT_X86_64
                    && e.attributes & GPT_FLAG_NO_AUTO == 0)
        })
        .collect();
    let d = roots.first()?;
    if roots.len() > 1 {
        log::info!(
            "{disk}: {} root partitions (DPS x86-64), using {}",
            roots.len(),
            d.name
        );
    }
    let head = read_head(&d.dev(dev_dir))?;
    Some(Found {
        name: d.name.clone(),
        dev: d.dev(dev_dir),
        fs: probe(&head),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const U1: [u8; 16] = [
        0x3f, 0x2a, 0x9c, 0x4e, 0x0b, 0x1d, 0x4e, 0x8a, 0x9f, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9a,
        0xbc,
    ];
    const U1_STR: &str = "3f2a9c4e-0b1d-4e8a-9f00-123456789abc";

    fn put(b: &mut [u8], off: usize, v: &[u8]) {
        b[off..off + v.len()].copy_from_slice(v);
    }

    /// An ext superblock (device head of 2048 bytes).
    fn ext_sb(uuid: [u8; 16], label: &[u8], compat: u32, incompat: u32, ro: u32) -> Vec<u8> {
        let mut d = vec![0u8; 2048];
        let s = ext::SB;
        put(&mut d, s + ext::MAGIC, &0xEF53u16.to_le_bytes());
        put(&mut d, s + ext::FEATURE_COMPAT, &compat.to_le_bytes());
        put(&mut d, s + ext::FEATURE_INCOMPAT, &incompat.to_le_bytes());
        put(&mut d, s + ext::FEATURE_RO_COMPAT, &ro.to_le_bytes());
        put(&mut d, s + ext::UUID, &uuid);
        put(&mut d, s + ext::VOLUME_NAME.start, label);
        if ro & ext::RO_COMPAT_METADATA_CSUM != 0 {
            let c = !crc32c::crc32c(&d[s..s + ext::CHECKSUM]);
            put(&mut d, s + ext::CHECKSUM, &c.to_le_bytes());
        }
        d
    }

    fn ext4(uuid: [u8; 16], label: &[u8]) -> Vec<u8> {
        // has_journal | ext_attr | resize_inode | dir_index; filetype |
        // extents | 64bit | flex_bg; sparse_super | large_file | huge_file
        // | dir_nlink | extra_isize | metadata_csum.
        ext_sb(uuid, label, 0x3c, 0x2c2, 0x46b)
    }

    fn xfs_sb(uuid: [u8; 16], label: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 4096];
        put(&mut d, xfs::MAGIC.start, b"XFSB");
        put(&mut d, xfs::BLOCKSIZE, &4096u32.to_be_bytes());
        put(&mut d, xfs::UUID, &uuid);
        put(&mut d, xfs::AGCOUNT, &4u32.to_be_bytes());
        put(&mut d, xfs::SECTSIZE, &512u16.to_be_bytes());
        put(&mut d, xfs::INODESIZE, &512u16.to_be_bytes());
        put(&mut d, xfs::FNAME.start, label);
        d[xfs::BLOCKLOG] = 12;
        d[xfs::SECTLOG] = 9;
        d[xfs::INODELOG] = 9;
        d
    }

    fn btrfs_sb(fsid: [u8; 16], dev_uuid: [u8; 16], label: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; PROBE_BYTES];
        let s = btrfs::SB;
        put(&mut d, s + btrfs::FSID, &fsid);
        put(&mut d, s + btrfs::MAGIC.start, b"_BHRfS_M");
        put(&mut d, s + btrfs::DEV_UUID, &dev_uuid);
        put(&mut d, s + btrfs::LABEL.start, label);
        d
    }

    fn info(fstype: &'static str, uuid: &str, label: Option<&str>) -> FsInfo {
        FsInfo {
            fstype,
            uuid: Some(uuid.to_string()),
            label: label.map(str::to_string),
        }
    }

    // ---- RootSpec ----

    fn ok(s: &str) -> RootSpec {
        RootSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match RootSpec::parse(s) {
            Ok(r) => panic!("{s}: accepted as {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_tags() {
        assert_eq!(ok(&format!("UUID={U1_STR}")), RootSpec::Uuid(U1_STR.into()));
        assert_eq!(ok("UUID=ABCD-1234"), RootSpec::Uuid("ABCD-1234".into()));
        assert_eq!(ok("LABEL=root fs"), RootSpec::Label("root fs".into()));
        assert_eq!(ok("LABEL=a=b/c"), RootSpec::Label("a=b/c".into()));
        assert_eq!(
            ok("PARTUUID=1234abcd-01"),
            RootSpec::PartUuid("1234abcd-01".into())
        );
        assert_eq!(ok("PARTLABEL=rootfs"), RootSpec::PartLabel("rootfs".into()));
        // Quotes (systemd), dracut's block: prefix, surrounding blanks.
        assert_eq!(ok("LABEL=\"my root\""), RootSpec::Label("my root".into()));
        assert_eq!(ok("\"LABEL=my root\""), RootSpec::Label("my root".into()));
        assert_eq!(ok("block:LABEL=r"), RootSpec::Label("r".into()));
        assert_eq!(ok(" UUID=ab "), RootSpec::Uuid("ab".into()));
    }

    #[test]
    fn labels_round_trip_through_the_command_line() {
        for label in ["my root", "root ", "a\\b", "tab\there", "q\"uote'", "ünï"] {
            for spec in [
                RootSpec::Label(label.into()),
                RootSpec::PartLabel(label.into()),
            ] {
                let word = spec.to_string();
                assert!(!word.contains(' ') && !word.contains('"'), "{word}");
                assert_eq!(ok(&word), spec, "{word}");
            }
        }
        // As udev writes them, and as dracut passes them on.
        assert_eq!(ok("LABEL=my\\x20root"), RootSpec::Label("my root".into()));
        assert_eq!(ok("LABEL=root\\x20"), RootSpec::Label("root ".into()));
        assert_eq!(ok("\"LABEL=root \""), RootSpec::Label("root ".into()));
    }

    #[test]
    fn parses_dev_paths() {
        assert_eq!(
            ok(&format!("/dev/disk/by-uuid/{U1_STR}")),
            RootSpec::Uuid(U1_STR.into())
        );
        assert_eq!(
            ok("/dev/disk/by-label/my\\x20root\\x2fa"),
            RootSpec::Label("my root/a".into())
        );
        assert_eq!(
            ok("/dev/disk/by-partuuid/1234abcd-02"),
            RootSpec::PartUuid("1234abcd-02".into())
        );
        assert_eq!(
            ok("/dev/disk/by-partlabel/root\\x2dx86"),
            RootSpec::PartLabel("root-x86".into())
        );
        // A broken escape stays as written.
        assert_eq!(
            ok("/dev/disk/by-label/a\\xZ"),
            RootSpec::Label("a\\xZ".into())
        );
        assert_eq!(ok("/dev/ublkb0p1"), RootSpec::Path("/dev/ublkb0p1".into()));
        assert_eq!(
            ok("/dev/mapper/vg-root"),
            RootSpec::Path("/dev/mapper/vg-root".into())
        );
    }

    #[test]
    fn refuses_with_hints() {
        assert!(err("").contains("empty"));
        assert!(err("iscsi:10.0.0.1::3260:0:iqn.x").contains("netroot="));
        assert!(err("ISCSI:x").contains("netroot="));
        assert!(err("uuid=abc").contains("root=UUID=abc"));
        assert!(err("Label=x").contains("root=LABEL=x"));
        assert!(err("partuuid=1-2").contains("root=PARTUUID=1-2"));
        assert!(err("PARTUUID=abcd-01/PARTNROFF=1").contains("PARTNROFF"));
        assert!(err("UUID=").contains("no value"));
        assert!(err("UUID=my-root").contains("LABEL=my-root"));
        assert!(err("PARTUUID=root").contains("PARTLABEL=root"));
        assert!(err("/dev/disk/by-id/scsi-0x1").contains("no udev"));
        assert!(err("/dev/disk/by-path/ip-1").contains("no udev"));
        assert!(err("/dev/disk/by-uuid/zz").contains("not a UUID"));
        assert!(err("/dev/../etc/passwd").contains("not a device path"));
        assert!(err("/dev/").contains("not a device path"));
        assert!(err("/dev/sda1/").contains("not a device path"));
        assert!(err("/dev/nfs").contains("NFS"));
        assert!(err("8:1").contains("device numbers"));
        assert!(err("0801").contains("device numbers"));
        assert!(err("nfs:10.0.0.1:/x").contains("UUID="));
        assert!(err("zfs=rpool").contains("UUID="));
    }

    #[test]
    fn displays_as_written() {
        for s in [
            "UUID=ABCD-1234",
            "LABEL=root",
            "PARTUUID=1234abcd-01",
            "PARTLABEL=r",
            "/dev/ublkb0p1",
        ] {
            assert_eq!(ok(s).to_string(), s);
        }
    }

    #[test]
    fn parse_never_panics() {
        for s in [
            "UUé=",
            "UUID\u{e9}",
            "\u{e9}",
            "\"",
            "'",
            "\"\"",
            "block:",
            "/dev/disk/",
            "/dev/disk/by-uuid/",
            "PARTUUID=/",
            "\\x",
            "/dev/disk/by-label/\\x",
            "/dev/disk/by-label/\\x\u{e9}\u{e9}",
            "/dev/disk/by-label/\\xe9",
            "iscs",
            "LABEL=\0",
        ] {
            let _ = RootSpec::parse(s);
        }
        let mut x = 0x12345678u32;
        for _ in 0..2000 {
            let s: Vec<u8> = (0..(x % 24))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    b"UIDLABEPRT=/\\x2f-:\"' devbyk\xc3\xa9"[(x % 27) as usize]
                })
                .collect();
            if let Err(e) = RootSpec::parse(&String::from_utf8_lossy(&s)) {
                assert!(!e.is_empty());
            }
        }
    }

    // ---- probe ----

    #[test]
    fn ext_types_like_blkid() {
        let e4 = ext4(U1, b"root");
        assert_eq!(probe(&e4), Some(info("ext4", U1_STR, Some("root"))));
        // ext4 without a journal is still ext4 (extents).
        let e4nj = ext_sb(U1, b"", 0, 0x40, 0);
        assert_eq!(probe(&e4nj).unwrap().fstype, "ext4");
        assert_eq!(probe(&e4nj).unwrap().label, None);
        let e3 = ext_sb(U1, b"r3", 0x4, 0x2, 0x3);
        assert_eq!(probe(&e3).unwrap().fstype, "ext3");
        let e3r = ext_sb(U1, b"r3", 0x4, 0x6, 0x3); // needs recovery
        assert_eq!(probe(&e3r).unwrap().fstype, "ext3");
        let e2 = ext_sb(U1, b"r2", 0, 0x2, 0x3);
        assert_eq!(probe(&e2).unwrap().fstype, "ext2");
        // Recover without a journal: blkid names nothing.
        assert_eq!(probe(&ext_sb(U1, b"", 0, 0x6, 0)), None);
        // An external journal is not a filesystem.
        assert_eq!(probe(&ext_sb(U1, b"", 0x4, 0x8, 0)), None);
    }

    #[test]
    fn ext4_checksum_is_checked() {
        let mut d = ext4(U1, b"root");
        d[ext::SB + ext::VOLUME_NAME.start] = b'R';
        assert_eq!(probe(&d), None, "stale checksum");
    }

    #[test]
    fn labels_and_uuids_edge_cases() {
        // 16 bytes, no NUL: all of it.
        let d = ext_sb(U1, b"0123456789abcdef", 0, 0x2, 0);
        assert_eq!(
            probe(&d).unwrap().label.as_deref(),
            Some("0123456789abcdef")
        );
        // Trailing blanks trimmed, text after a NUL ignored.
        let d = ext_sb(U1, b"root  \0junk", 0, 0x2, 0);
        assert_eq!(probe(&d).unwrap().label.as_deref(), Some("root"));
        // Not UTF-8: lossy.
        let d = ext_sb(U1, b"r\xffot", 0, 0x2, 0);
        assert_eq!(probe(&d).unwrap().label.as_deref(), Some("r\u{fffd}ot"));
        // A zero UUID is none.
        let d = ext_sb([0; 16], b"x", 0, 0x2, 0);
        assert_eq!(probe(&d).unwrap().uuid, None);
    }

    #[test]
    fn xfs() {
        let d = xfs_sb(U1, b"xfsroot");
        assert_eq!(probe(&d), Some(info("xfs", U1_STR, Some("xfsroot"))));
        let d = xfs_sb(U1, b"twelve-chars");
        assert_eq!(probe(&d).unwrap().label.as_deref(), Some("twelve-chars"));
        assert_eq!(probe(&d[..xfs::LEN]).unwrap().fstype, "xfs");
        assert_eq!(probe(&d[..100]), None, "truncated");
        // Stray magic without a sane superblock.
        let mut bad = xfs_sb(U1, b"");
        bad[xfs::BLOCKLOG] = 11;
        assert_eq!(probe(&bad), None);
        let mut bad = xfs_sb(U1, b"");
        put(&mut bad, xfs::AGCOUNT, &0u32.to_be_bytes());
        assert_eq!(probe(&bad), None);
        let mut bad = xfs_sb(U1, b"");
        bad[xfs::INPROGRESS] = 1;
        assert_eq!(probe(&bad), None);
    }

    #[test]
    fn btrfs() {
        let d = btrfs_sb(U1, [7; 16], b"broot");
        assert_eq!(probe(&d), Some(info("btrfs", U1_STR, Some("broot"))));
        assert_eq!(
            probe_all(&d)[0].dev_uuid.as_deref(),
            Some("07070707-0707-0707-0707-070707070707")
        );
        // 256-byte label without NUL.
        let long = [b'L'; 256];
        let d = btrfs_sb(U1, [7; 16], &long);
        assert_eq!(probe(&d).unwrap().label.map(|l| l.len()), Some(256));
        // Truncated before the label: nothing claimed.
        assert_eq!(probe(&d[..btrfs::SB + 0x100]), None);
        assert_eq!(probe(&d[..btrfs::SB]), None);
    }

    #[test]
    fn two_signatures_are_ambivalent() {
        let mut d = btrfs_sb(U1, [7; 16], b"b");
        put(&mut d, 0, &xfs_sb(U1, b"x")[..512]);
        assert_eq!(probe_all(&d).len(), 2);
        assert_eq!(probe(&d), None);
    }

    #[test]
    fn garbage_and_truncation_do_not_panic() {
        assert_eq!(probe(&[]), None);
        assert_eq!(probe(&[0u8; PROBE_BYTES]), None);
        assert_eq!(probe(&[0xffu8; PROBE_BYTES]), None);
        let images = [
            ext4(U1, b"root"),
            xfs_sb(U1, b"x"),
            btrfs_sb(U1, [1; 16], b"b"),
        ];
        for img in &images {
            for n in (0..img.len()).step_by(97).chain([img.len()]) {
                let _ = probe(&img[..n]);
            }
        }
        let mut x = 0x9e3779b9u32;
        for img in &images {
            let mut d = img.clone();
            for _ in 0..3000 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % d.len();
                d[i] = (x >> 8) as u8;
                if let Some(fs) = probe(&d) {
                    assert!(fs.uuid.is_none_or(|u| u.len() == 36));
                }
            }
        }
    }

    // ---- find ----

    /// A fake /sys/class/block + /dev.
    struct Fake {
        root: PathBuf,
    }

    impl Fake {
        fn new(name: &str) -> Fake {
            let root =
                std::env::temp_dir().join(format!("sanroot-rootdev-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for d in ["sys/devices", "sys/class/block", "dev"] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            Fake { root }
        }
        fn sys(&self) -> PathBuf {
            self.root.join("sys/class/block")
        }
        fn dev(&self) -> PathBuf {
            self.root.join("dev")
        }
        fn disk(&self, name: &str, data: &[u8]) {
            let d = self.root.join("sys/devices").join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("size"), format!("{}\n", data.len() / 512)).unwrap();
            symlink(format!("../../devices/{name}"), self.sys().join(name)).unwrap();
            fs::write(self.dev().join(name), data).unwrap();
        }
        fn part(&self, disk: &str, n: u32, data: &[u8]) -> String {
            let name = parts::part_name(disk, n);
            let d = self.root.join("sys/devices").join(disk).join(&name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("partition"), format!("{n}\n")).unwrap();
            fs::write(d.join("size"), format!("{}\n", data.len() / 512)).unwrap();
            symlink(
                format!("../../devices/{disk}/{name}"),
                self.sys().join(&name),
            )
            .unwrap();
            fs::write(self.dev().join(&name), data).unwrap();
            name
        }
        fn find(&self, spec: &str) -> Result<Option<Found>, String> {
            find(&ok(spec), &self.sys(), &self.dev())
        }
        fn found(&self, spec: &str) -> String {
            self.find(spec)
                .unwrap_or_else(|e| panic!("{spec}: {e}"))
                .unwrap_or_else(|| panic!("{spec}: not found"))
                .name
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    const DPS_ROOT: [u8; 16] = [
        0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7,
        0x09,
    ];
    const ESP: [u8; 16] = [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];

    /// A GPT disk head (512-byte blocks): entries (type, unique GUID as
    /// stored, name, attributes).
    fn gpt_disk(entries: &[([u8; 16], [u8; 16], &str, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; 34 * 512];
        d[446 + 4] = 0xEE;
        d[510] = 0x55;
        d[511] = 0xAA;
        put(&mut d, 512, b"EFI PART");
        put(&mut d, 512 + 72, &2u64.to_le_bytes());
        put(&mut d, 512 + 80, &128u32.to_le_bytes());
        put(&mut d, 512 + 84, &128u32.to_le_bytes());
        for (i, (ty, uniq, name, attrs)) in entries.iter().enumerate() {
            let o = 1024 + i * 128;
            put(&mut d, o, ty);
            put(&mut d, o + 16, uniq);
            put(&mut d, o + 48, &attrs.to_le_bytes());
            for (k, u) in name.encode_utf16().enumerate() {
                put(&mut d, o + 56 + 2 * k, &u.to_le_bytes());
            }
        }
        d
    }

    fn mbr_disk(sig: u32) -> Vec<u8> {
        let mut d = vec![0u8; 1024];
        put(&mut d, 440, &sig.to_le_bytes());
        d[446 + 4] = 0x83;
        d[446 + 16 + 4] = 0x83;
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    }

    // Unique GUID 11223344-5566-7788-99aa-bbccddeeff00, as stored.
    const PU: [u8; 16] = [
        0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x77, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
        0x00,
    ];

    fn gpt_fake(name: &str) -> Fake {
        let f = Fake::new(name);
        let disk = gpt_disk(&[
            (ESP, [0x01; 16], "EFI System", 0),
            (DPS_ROOT, PU, "rootfs", 0),
        ]);
        f.disk("ublkb0", &disk);
        f.part("ublkb0", 1, &[0u8; 4096]);
        f.part("ublkb0", 2, &ext4(U1, b"root"));
        f
    }

    #[test]
    fn finds_by_uuid_label_partuuid_partlabel() {
        let f = gpt_fake("gpt");
        assert_eq!(f.found(&format!("UUID={U1_STR}")), "ublkb0p2");
        assert_eq!(
            f.found(&format!("UUID={}", U1_STR.to_uppercase())),
            "ublkb0p2"
        );
        assert_eq!(f.found("LABEL=root"), "ublkb0p2");
        assert_eq!(f.find("LABEL=Root").unwrap().map(|x| x.name), None);
        assert_eq!(
            f.found("PARTUUID=11223344-5566-7788-99AA-bbccddeeff00"),
            "ublkb0p2"
        );
        assert_eq!(f.found("PARTLABEL=rootfs"), "ublkb0p2");
        assert_eq!(f.found("PARTLABEL=EFI System"), "ublkb0p1");
        let got = f.find("PARTLABEL=rootfs").unwrap().unwrap();
        assert_eq!(got.dev, f.dev().join("ublkb0p2"));
        assert_eq!(got.fs, Some(info("ext4", U1_STR, Some("root"))));
        assert!(f.find("UUID=0000").unwrap().is_none());
        assert!(f.find("PARTLABEL=nope").unwrap().is_none());
        // Entry 2's GUID is not any other partition's.
        assert!(
            f.find("PARTUUID=01010101-0101-0101-0101-010101010101")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn finds_mbr_partuuid_and_whole_disk_fs() {
        let f = Fake::new("mbr");
        // A stale superblock left behind the MBR of a partitioned disk is
        // not a second match: only the partitions are probed.
        let mut disk = ext_sb(U1, b"xr", 0, 0x2, 0);
        disk[..1024].copy_from_slice(&mbr_disk(0x1234abcd));
        assert!(probe(&disk).is_some());
        f.disk("nbd0", &disk);
        f.part("nbd0", 1, &[0u8; 2048]);
        f.part("nbd0", 2, &xfs_sb(U1, b"xr"));
        assert_eq!(f.found(&format!("UUID={U1_STR}")), "nbd0p2");
        assert_eq!(f.found("PARTUUID=1234ABCD-02"), "nbd0p2");
        assert!(f.find("PARTUUID=1234abcd-03").unwrap().is_none());
        assert!(
            f.find("PARTLABEL=xr").unwrap().is_none(),
            "MBR has no names"
        );
        assert_eq!(f.found("LABEL=xr"), "nbd0p2");
        // A filesystem on a whole, unpartitioned disk.
        f.disk("ublkb1", &btrfs_sb([9; 16], [1; 16], b"whole"));
        assert_eq!(f.found("LABEL=whole"), "ublkb1");
    }

    #[test]
    fn finds_paths_by_name_and_symlink() {
        let f = gpt_fake("path");
        assert_eq!(f.found("/dev/ublkb0p2"), "ublkb0p2");
        assert_eq!(
            f.find("/dev/ublkb0p2").unwrap().unwrap().fs.unwrap().fstype,
            "ext4"
        );
        assert!(f.find("/dev/sda1").unwrap().is_none());
        symlink("ublkb0p2", f.dev().join("root")).unwrap();
        assert_eq!(f.found("/dev/root"), "ublkb0p2");
        // A path whose node is missing from /dev: not there yet.
        fs::remove_file(f.dev().join("ublkb0p1")).unwrap();
        assert!(f.find("/dev/ublkb0p1").unwrap().is_none());
        // device-mapper by its name.
        f.disk("dm-0", &xfs_sb(U1, b""));
        fs::create_dir_all(f.root.join("sys/devices/dm-0/dm")).unwrap();
        fs::write(f.root.join("sys/devices/dm-0/dm/name"), "vg-root\n").unwrap();
        assert_eq!(f.found("/dev/mapper/vg-root"), "dm-0");
    }

    #[test]
    fn duplicates_are_an_error_naming_both() {
        let f = gpt_fake("dup");
        // The same LUN through a second session.
        f.disk("ublkb1", &fs::read(f.dev().join("ublkb0")).unwrap());
        f.part("ublkb1", 2, &ext4(U1, b"root"));
        for spec in [
            format!("UUID={U1_STR}"),
            "LABEL=root".to_string(),
            "PARTUUID=11223344-5566-7788-99aa-bbccddeeff00".to_string(),
        ] {
            let e = f.find(&spec).unwrap_err();
            assert!(e.contains("ublkb0p2") && e.contains("ublkb1p2"), "{e}");
        }
    }

    #[test]
    fn multi_device_btrfs_is_not_a_duplicate() {
        let f = Fake::new("btrfs");
        f.disk("ublkb0", &btrfs_sb(U1, [1; 16], b"pool"));
        f.disk("ublkb1", &btrfs_sb(U1, [2; 16], b"pool"));
        assert_eq!(f.found("LABEL=pool"), "ublkb0");
        // The same device twice (same dev UUID) is.
        f.disk("ublkb2", &btrfs_sb(U1, [2; 16], b"pool"));
        assert!(f.find(&format!("UUID={U1_STR}")).is_err());
    }

    #[test]
    fn skips_empty_and_unreadable_devices() {
        let f = Fake::new("skip");
        // An unconnected nbd: size 0 (and unreadable).
        f.disk("nbd0", &[]);
        fs::write(f.dev().join("nbd0"), ext4(U1, b"root")).unwrap();
        // A device without a node in /dev.
        f.disk("loop0", &ext4(U1, b"root"));
        fs::remove_file(f.dev().join("loop0")).unwrap();
        assert!(f.find("LABEL=root").unwrap().is_none());
        assert!(f.find("/dev/nbd0").unwrap().is_none());
        f.disk("ublkb0", &ext4(U1, b"root"));
        assert_eq!(f.found("LABEL=root"), "ublkb0");
        // No sysfs at all: nothing, no error.
        let none = find(&ok("LABEL=root"), &f.root.join("nope"), &f.dev()).unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn gpt_entries_beyond_the_head_are_not_found() {
        let f = Fake::new("far");
        let mut disk = gpt_disk(&[]);
        // Entries at LBA 200: past what find reads.
        put(&mut disk, 512 + 72, &200u64.to_le_bytes());
        f.disk("ublkb0", &disk);
        f.part("ublkb0", 1, &[0u8; 1024]);
        assert!(f.find("PARTLABEL=x").unwrap().is_none());
    }

    #[test]
    fn discoverable_root_partition() {
        let f = gpt_fake("dps");
        let got = discoverable_root("ublkb0", &f.sys(), &f.dev()).unwrap();
        assert_eq!(got.name, "ublkb0p2");
        assert_eq!(got.fs.unwrap().fstype, "ext4");
        assert!(discoverable_root("ublkb9", &f.sys(), &f.dev()).is_none());
        // no-auto set: not discovered.
        let g = Fake::new("dps-noauto");
        g.disk(
            "ublkb0",
            &gpt_disk(&[(DPS_ROOT, PU, "r", GPT_FLAG_NO_AUTO)]),
        );
        g.part("ublkb0", 1, &ext4(U1, b"root"));
        assert!(discoverable_root("ublkb0", &g.sys(), &g.dev()).is_none());
    }

    /// Real mkfs output: checks the probes, and the superblock builders the
    /// other tests use, against what the tools write. qemu/install-deps
    /// installs e2fsprogs, xfsprogs and btrfs-progs; a missing tool fails.
    #[test]
    fn agrees_with_mkfs() {
        let uuid = "6b1f0c2e-9d4a-4c3b-8e7f-0a1b2c3d4e5f";
        let label = "sanroot-root";
        for (tool, fstype, args) in [
            (
                "mkfs.ext4",
                "ext4",
                vec!["-q", "-F", "-U", uuid, "-L", label],
            ),
            (
                "mkfs.ext3",
                "ext3",
                vec!["-q", "-F", "-U", uuid, "-L", label],
            ),
            (
                "mkfs.ext2",
                "ext2",
                vec!["-q", "-F", "-U", uuid, "-L", label],
            ),
            (
                "mkfs.xfs",
                "xfs",
                vec!["-q", "-f", "-m", &format!("uuid={uuid}"), "-L", label],
            ),
            (
                "mkfs.btrfs",
                "btrfs",
                vec!["-q", "-f", "-U", uuid, "-L", label],
            ),
        ] {
            let f = Fake::new(&format!("mkfs-{tool}"));
            let img = f.dev().join("img");
            // 4 MiB is below mkfs.xfs's and mkfs.btrfs's minimum.
            let mib = if fstype.starts_with("ext") { 4 } else { 300 };
            fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
            let out = std::process::Command::new(tool)
                .args(&args)
                .arg(&img)
                .output()
                .unwrap_or_else(|e| panic!("{tool}: {e} (run qemu/install-deps)"));
            assert!(
                out.status.success(),
                "{tool}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let head = read_head(&img).unwrap();
            assert_eq!(
                probe(&head),
                Some(info(fstype, uuid, Some(label))),
                "{tool}"
            );
        }
    }
    /// Partition tables written by sfdisk (fdisk, from qemu/install-deps).
    #[test]
    fn agrees_with_sfdisk() {
        let f = Fake::new("sfdisk");
        let gpt = "label: gpt\n\
            start=2048, size=2048, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, \
            uuid=11223344-5566-7788-99AA-BBCCDDEEFF00, name=\"root fs\"\n";
        let dos = "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=2048, type=83\n\
            start=4096, size=2048, type=83\n";
        for (disk, script) in [("ublkb0", gpt), ("nbd0", dos)] {
            let img = f.dev().join(disk);
            fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
            let child = std::process::Command::new("sfdisk")
                .args(["-q", "--no-reread", "--no-tell-kernel"])
                .arg(&img)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn();
            let mut child = child.expect("sfdisk (run qemu/install-deps)");
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let d = f.root.join("sys/devices").join(disk);
            fs::create_dir_all(&d).unwrap();
            symlink(format!("../../devices/{disk}"), f.sys().join(disk)).unwrap();
        }
        f.part("ublkb0", 1, &ext4(U1, b"a"));
        f.part("nbd0", 2, &ext4(U1, b"b"));
        assert_eq!(
            f.found("PARTUUID=11223344-5566-7788-99aa-bbccddeeff00"),
            "ublkb0p1"
        );
        assert_eq!(f.found("PARTLABEL=root fs"), "ublkb0p1");
        assert_eq!(f.found("PARTUUID=1234abcd-02"), "nbd0p2");
        let got = discoverable_root("ublkb0", &f.sys(), &f.dev()).unwrap();
        assert_eq!(got.name, "ublkb0p1");
    }
}
