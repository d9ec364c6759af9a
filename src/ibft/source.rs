//! Finding the iBFT that firmware left behind.
//!
//! Three places, tried in this order unless the user names one:
//! 1. the raw ACPI table (`/sys/firmware/acpi/tables/iBFT`, `IBFT`, `BIFT`),
//!    which UEFI producers and QEMU `-acpitable` provide;
//! 2. physical memory 0x80000-0xFFFFF (less the VGA hole 0xA0000-0xBFFFF)
//!    through /dev/mem, where BIOS iPXE leaves it: 16-byte steps, and a
//!    candidate only counts if it validates (iPXE's own code contains the
//!    string "iBFT");
//! 3. the kernel's parsed view under /sys/firmware/ibft (module iscsi_ibft),
//!    which loses some fields: they are listed in `lost_fields`.
//!
//! All paths are relative to a `sysroot` so tests can point at a fake tree.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::model::Ibft;
use super::parse::{self, IbftError, ParseOptions};
use super::sysfs;

/// Where a table was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Acpi,
    Mem,
    Sysfs,
    File,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Acpi => "acpi",
            SourceKind::Mem => "mem",
            SourceKind::Sysfs => "sysfs",
            SourceKind::File => "file",
        }
    }
}

/// A table and where it came from.
#[derive(Debug, Clone)]
pub struct Found {
    pub kind: SourceKind,
    /// The file read, or the physical address for a memory scan.
    pub detail: String,
    pub ibft: Ibft,
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct FindOptions {
    /// Only this source.
    pub source: Option<SourceKind>,
    /// Read this file (a raw table, or a directory laid out like
    /// /sys/firmware/ibft) instead of looking.
    pub file: Option<PathBuf>,
    /// Prefix for /sys and /dev (tests).
    pub sysroot: PathBuf,
    pub parse: ParseOptions,
}

impl Default for FindOptions {
    fn default() -> Self {
        FindOptions {
            source: None,
            file: None,
            sysroot: PathBuf::from("/"),
            parse: ParseOptions::default(),
        }
    }
}

/// Why no table could be had.
#[derive(Debug)]
pub enum FindError {
    /// No source had a table. Each entry says what was looked at and why
    /// it gave nothing.
    NotFound(Vec<String>),
    /// A table was found and is broken.
    Invalid {
        kind: SourceKind,
        detail: String,
        error: IbftError,
    },
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for FindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FindError::NotFound(tried) => {
                write!(f, "no iBFT found")?;
                for t in tried {
                    write!(f, "\n  {t}")?;
                }
                write!(
                    f,
                    "\n  (the firmware did not boot from iSCSI, or the table is hidden: try --source, or --file with a saved table)"
                )
            }
            FindError::Invalid {
                kind,
                detail,
                error,
            } => write!(f, "{} ({} {})", error, kind.name(), detail),
            FindError::Io { path, error } => write!(f, "cannot read {}: {}", path.display(), error),
        }
    }
}

impl std::error::Error for FindError {}

pub const ACPI_NAMES: [&str; 3] = ["iBFT", "IBFT", "BIFT"];

/// The physical ranges Linux scans for a BIOS-placed table.
pub const MEM_RANGES: [(u64, u64); 2] = [(0x80000, 0xA0000), (0xC0000, 0x100000)];

fn under(sysroot: &Path, abs: &str) -> PathBuf {
    sysroot.join(abs.trim_start_matches('/'))
}

/// Find and parse the table.
pub fn find(opts: &FindOptions) -> Result<Found, FindError> {
    if let Some(path) = &opts.file {
        return from_file(path, opts);
    }
    let order: Vec<SourceKind> = match opts.source {
        Some(k) => vec![k],
        None => vec![SourceKind::Acpi, SourceKind::Mem, SourceKind::Sysfs],
    };
    let mut tried = Vec::new();
    for kind in order {
        let r = match kind {
            SourceKind::Acpi => from_acpi(opts, &mut tried),
            SourceKind::Mem => from_mem(opts, &mut tried),
            SourceKind::Sysfs => from_sysfs(opts, &mut tried),
            SourceKind::File => continue,
        };
        if let Some(r) = r {
            return r;
        }
    }
    Err(FindError::NotFound(tried))
}

fn from_file(path: &Path, opts: &FindOptions) -> Result<Found, FindError> {
    let detail = path.display().to_string();
    if path.is_dir() {
        let ibft = sysfs::read_dir(path).map_err(|error| FindError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        return Ok(Found {
            kind: SourceKind::File,
            detail,
            ibft,
        });
    }
    let bytes = read_limited(path).map_err(|error| FindError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let ibft = parse::parse(&bytes, opts.parse).map_err(|error| FindError::Invalid {
        kind: SourceKind::File,
        detail: detail.clone(),
        error,
    })?;
    Ok(Found {
        kind: SourceKind::File,
        detail,
        ibft,
    })
}

/// Read a file of at most `parse::MAX_TABLE_LEN` bytes (+1 to notice more).
fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path)?
        .take(parse::MAX_TABLE_LEN as u64 + 1)
        .read_to_end(&mut v)?;
    Ok(v)
}

fn from_acpi(opts: &FindOptions, tried: &mut Vec<String>) -> Option<Result<Found, FindError>> {
    for name in ACPI_NAMES {
        let path = under(&opts.sysroot, &format!("/sys/firmware/acpi/tables/{name}"));
        match read_limited(&path) {
            Ok(bytes) => {
                let detail = path.display().to_string();
                log::debug!("read {} bytes from {}", bytes.len(), detail);
                return Some(match parse::parse(&bytes, opts.parse) {
                    Ok(ibft) => Ok(Found {
                        kind: SourceKind::Acpi,
                        detail,
                        ibft,
                    }),
                    Err(error) => Err(FindError::Invalid {
                        kind: SourceKind::Acpi,
                        detail,
                        error,
                    }),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tried.push(format!("acpi: {}: {}", path.display(), e)),
        }
    }
    tried.push(format!(
        "acpi: no {} under {}",
        ACPI_NAMES.join("/"),
        under(&opts.sysroot, "/sys/firmware/acpi/tables").display()
    ));
    None
}

/// Scan low memory. A region is read in pages; a page that cannot be read
/// is treated as zeros so one hole does not hide a table elsewhere.
fn from_mem(opts: &FindOptions, tried: &mut Vec<String>) -> Option<Result<Found, FindError>> {
    let path = under(&opts.sysroot, "/dev/mem");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            tried.push(format!("mem: {}: {}", path.display(), e));
            return None;
        }
    };
    let mut rejected = Vec::new();
    for (start, end) in MEM_RANGES {
        let region = read_region(&file, start, end);
        match scan_region(&region, start, opts.parse) {
            ScanResult::Found(addr, ibft) => {
                return Some(Ok(Found {
                    kind: SourceKind::Mem,
                    detail: format!("0x{addr:x}"),
                    ibft: *ibft,
                }));
            }
            ScanResult::NotFound(mut r) => rejected.append(&mut r),
        }
    }
    if rejected.is_empty() {
        tried.push(format!(
            "mem: no iBFT/BIFT table in {}",
            MEM_RANGES
                .iter()
                .map(|(s, e)| format!("0x{s:x}-0x{:x}", e - 1))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        None
    } else {
        // Something shaped like a table is there and is broken: that is
        // the firmware's table, and saying exactly what is wrong with it
        // helps more than "not found".
        let (addr, error) = rejected.remove(0);
        for (a, e) in rejected {
            log::warn!("another broken iBFT candidate at 0x{a:x}: {e}");
        }
        Some(Err(FindError::Invalid {
            kind: SourceKind::Mem,
            detail: format!("0x{addr:x}"),
            error,
        }))
    }
}

fn read_region(file: &File, start: u64, end: u64) -> Vec<u8> {
    const PAGE: usize = 4096;
    let mut region = vec![0u8; (end - start) as usize];
    for (i, page) in region.chunks_mut(PAGE).enumerate() {
        let at = start + (i * PAGE) as u64;
        if let Err(e) = file.read_exact_at(page, at) {
            log::debug!("/dev/mem at 0x{at:x}: {e}");
            page.fill(0);
        }
    }
    region
}

/// The outcome of scanning one memory region.
pub enum ScanResult {
    Found(u64, Box<Ibft>),
    /// Candidates whose signature matched but which did not validate.
    NotFound(Vec<(u64, IbftError)>),
}

/// Scan `region` (physical address `base`) in 16-byte steps for a table
/// that validates. Pure, so it can be tested on captured memory.
///
/// A signature alone is not a table: iPXE's own code holds the string
/// "iBFT". Only a candidate whose length fits the region and which has a
/// control structure (id 1) at 0x30 counts as a table; if such a candidate
/// fails validation it is reported, anything else is skipped as a decoy.
pub fn scan_region(region: &[u8], base: u64, opts: ParseOptions) -> ScanResult {
    let mut rejected = Vec::new();
    let mut pos = 0usize;
    while pos + 4 <= region.len() {
        let sig = &region[pos..pos + 4];
        if ACPI_NAMES.iter().any(|n| n.as_bytes() == sig) {
            let at = base + pos as u64;
            let rest = &region[pos..];
            if !looks_like_table(rest) {
                log::debug!(
                    "\"{}\" at 0x{at:x} is not a table header; skipped",
                    String::from_utf8_lossy(sig)
                );
            } else {
                match parse::parse(rest, opts) {
                    Ok(ibft) => return ScanResult::Found(at, Box::new(ibft)),
                    Err(e) => {
                        log::debug!("candidate at 0x{at:x}: {e}");
                        rejected.push((at, e));
                    }
                }
            }
        }
        pos += 16;
    }
    ScanResult::NotFound(rejected)
}

fn looks_like_table(rest: &[u8]) -> bool {
    let len = rest
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0);
    len >= 0x30 + 18 && len <= rest.len() && rest.get(0x30) == Some(&1)
}

fn from_sysfs(opts: &FindOptions, tried: &mut Vec<String>) -> Option<Result<Found, FindError>> {
    let dir = under(&opts.sysroot, "/sys/firmware/ibft");
    if !dir.is_dir() {
        tried.push(format!(
            "sysfs: {} does not exist (is the iscsi_ibft module loaded?)",
            dir.display()
        ));
        return None;
    }
    Some(
        sysfs::read_dir(&dir)
            .map(|ibft| Found {
                kind: SourceKind::Sysfs,
                detail: dir.display().to_string(),
                ibft,
            })
            .map_err(|error| FindError::Io { path: dir, error }),
    )
}
