//! `sanroot cp SRC DST`: copy between an iSCSI LUN and a file, a block
//! device or stdin/stdout (or between two LUNs): writing an installer image
//! to a LUN, or backing a LUN up.
//!
//! The LUN side runs `--qd` commands in flight (one worker thread each, with
//! the LU layer's retries); the file side reads or writes sequentially with
//! positioned I/O. Nothing is written past the end of a LUN: a source
//! larger than the destination is refused before the first byte moves.
//! `--verify` reads the destination back and compares.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::{self, CmdError, ConnectArgs};
use crate::exit;
use crate::iscsi::initiator;
use crate::lun::Lun;

#[derive(Debug, Clone, Default)]
pub struct Args {
    pub src: String,
    pub dst: String,
    pub verify: bool,
    /// Bytes per command.
    pub chunk: Option<usize>,
    pub qd: Option<usize>,
    /// Copy at most this many bytes.
    pub bytes: Option<u64>,
    pub progress: Option<bool>,
    pub connect: ConnectArgs,
}

pub fn run(args: &Args) -> i32 {
    common::report(cp(args))
}

enum End {
    Lun(Arc<Lun>),
    File {
        file: File,
        path: String,
        seekable: bool,
    },
    Stdin,
    Stdout,
}

impl End {
    fn name(&self) -> String {
        match self {
            End::Lun(l) => format!("LUN {}", l.info.lun),
            End::File { path, .. } => path.clone(),
            End::Stdin => "stdin".into(),
            End::Stdout => "stdout".into(),
        }
    }
    /// Size in bytes when known.
    fn size(&mut self) -> Option<u64> {
        match self {
            End::Lun(l) => l.info.capacity.bytes(),
            End::File { file, seekable, .. } => {
                if !*seekable {
                    return None;
                }
                // Works for regular files and block devices alike.
                let n = file.seek(SeekFrom::End(0)).ok()?;
                file.seek(SeekFrom::Start(0)).ok()?;
                Some(n)
            }
            End::Stdin | End::Stdout => None,
        }
    }
}

fn open(spec: &str, write: bool, args: &Args) -> Result<End, CmdError> {
    if spec == "-" {
        return Ok(if write { End::Stdout } else { End::Stdin });
    }
    let names_target = ["iqn.", "eui.", "naa."].iter().any(|p| spec.starts_with(p))
        && !std::path::Path::new(spec).exists();
    if spec.starts_with("iscsi://") || names_target {
        let (url, portal) = common::resolve_target(spec)?;
        let lun = url
            .lun
            .ok_or_else(|| CmdError::usage(format!("{url}: name the LUN (…/target-iqn/LUN)")))?;
        let cfg = common::initiator_config(&args.connect, Some(&url))?;
        let c =
            initiator::connect(&portal, &url.target, &cfg, None).map_err(common::login_error)?;
        let l = Lun::open(Arc::new(c.session), lun)
            .map_err(|e| CmdError::new(exit::IO, format!("{url}: {e}")))?;
        if write && l.info.write_protected {
            return Err(CmdError::new(exit::IO, format!("{url} is write-protected")));
        }
        return Ok(End::Lun(Arc::new(l)));
    }
    let path = PathBuf::from(spec);
    let file = if write {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
    } else {
        File::open(&path)
    }
    .map_err(|e| CmdError::new(exit::IO, format!("{spec}: {e}")))?;
    let ft = file.metadata().map(|m| m.file_type()).ok();
    let seekable = ft.is_some_and(|t| {
        use std::os::unix::fs::FileTypeExt;
        t.is_file() || t.is_block_device()
    });
    Ok(End::File {
        file,
        path: spec.to_string(),
        seekable,
    })
}

struct Chunk {
    offset: u64,
    buf: Vec<u8>,
}

/// Shared state of one copy.
struct Job {
    total: Option<u64>,
    chunk: usize,
    qd: usize,
    done: AtomicU64,
    failed: Mutex<Option<CmdError>>,
    stop: AtomicBool,
}

impl Job {
    fn fail(&self, e: CmdError) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn cp(args: &Args) -> Result<(), CmdError> {
    let mut src = open(&args.src, false, args)?;
    let mut dst = open(&args.dst, true, args)?;
    if matches!(
        (&src, &dst),
        (
            End::File { .. } | End::Stdin,
            End::File { .. } | End::Stdout
        )
    ) {
        return Err(CmdError::usage(
            "one side of sanroot cp must be an iSCSI LUN (use cp or dd for files)",
        ));
    }
    let mut total = src.size();
    if let Some(limit) = args.bytes {
        total = Some(total.map_or(limit, |t| t.min(limit)));
    }
    // The block size the copy must respect: the LUN's (the larger of two).
    let bs = [&src, &dst]
        .iter()
        .filter_map(|e| match e {
            End::Lun(l) => Some(l.info.block_size() as usize),
            _ => None,
        })
        .max()
        .unwrap_or(512);
    if let (Some(t), End::Lun(l)) = (total, &dst) {
        let cap = l.info.capacity.bytes().unwrap_or(u64::MAX);
        let padded = t.div_ceil(bs as u64) * bs as u64;
        if padded > cap {
            return Err(CmdError::new(
                exit::IO,
                format!(
                    "{} holds {t} bytes but {} has only {cap}: refusing to write past the end",
                    src.name(),
                    dst.name()
                ),
            ));
        }
    }
    if let (Some(t), End::Lun(_)) = (total, &dst)
        && t % bs as u64 != 0
    {
        eprintln!(
            "sanroot: {} is not a multiple of the {bs}-byte block size; the last block is padded with zeros",
            src.name()
        );
    }
    let max_xfer = [&src, &dst]
        .iter()
        .filter_map(|e| match e {
            End::Lun(l) if l.info.max_transfer_blocks() > 0 => {
                Some(l.info.max_transfer_blocks() as usize * l.info.block_size() as usize)
            }
            _ => None,
        })
        .min()
        .unwrap_or(usize::MAX);
    let chunk = args.chunk.unwrap_or(1 << 20).min(max_xfer).max(bs) / bs * bs;
    let qd = args.qd.unwrap_or(8).clamp(1, 128);
    let job = Arc::new(Job {
        total,
        chunk,
        qd,
        done: AtomicU64::new(0),
        failed: Mutex::new(None),
        stop: AtomicBool::new(false),
    });

    let show = args.progress.unwrap_or_else(|| io::stderr().is_terminal());
    let t0 = Instant::now();
    let progress = show.then(|| spawn_progress(Arc::clone(&job)));
    let crcs = copy(&job, &mut src, &mut dst, bs);
    job.stop.store(true, Ordering::SeqCst);
    if let Some(p) = progress {
        let _ = p.join();
    }
    if let Some(e) = job.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let n = job.done.load(Ordering::SeqCst);
    let secs = t0.elapsed().as_secs_f64().max(1e-6);
    eprintln!(
        "sanroot: copied {n} bytes from {} to {} in {secs:.1} s ({:.1} MiB/s)",
        src.name(),
        dst.name(),
        n as f64 / secs / 1048576.0
    );
    if args.verify {
        verify(&mut src, &mut dst, n, chunk, bs, &crcs)?;
        eprintln!("sanroot: verified: {} matches {}", dst.name(), src.name());
    }
    if let End::Lun(l) = &dst {
        l.flush()
            .map_err(|e| CmdError::new(exit::IO, format!("flushing {}: {e}", dst.name())))?;
    }
    Ok(())
}

/// Run the copy; returns per-chunk CRC32C of what was read (for verifying
/// a source that cannot be read twice).
fn copy(job: &Arc<Job>, src: &mut End, dst: &mut End, bs: usize) -> Vec<(u64, u32)> {
    let (tx, rx) = sync_channel::<Chunk>(job.qd * 2);
    let crcs = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        let j = Arc::clone(job);
        let c = Arc::clone(&crcs);
        s.spawn(move || produce(&j, src, tx, &c));
        consume(job, dst, rx, bs);
    });
    let mut v = std::mem::take(&mut *crcs.lock().unwrap_or_else(|p| p.into_inner()));
    v.sort_unstable();
    v
}

fn produce(job: &Job, src: &mut End, tx: SyncSender<Chunk>, crcs: &Mutex<Vec<(u64, u32)>>) {
    let record = |c: &Chunk| {
        crcs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((c.offset, crc32c::crc32c(&c.buf)));
    };
    match src {
        End::Lun(l) => {
            let total = job.total.unwrap_or(0);
            let next = AtomicU64::new(0);
            std::thread::scope(|s| {
                for _ in 0..job.qd {
                    let tx = tx.clone();
                    let next = &next;
                    let l = Arc::clone(l);
                    s.spawn(move || {
                        let bs = l.info.block_size() as u64;
                        loop {
                            if job.stopped() {
                                return;
                            }
                            let off = next.fetch_add(job.chunk as u64, Ordering::SeqCst);
                            if off >= total {
                                return;
                            }
                            let len = (total - off).min(job.chunk as u64);
                            let rounded = len.div_ceil(bs) * bs;
                            let (r, mut buf) = l.read(off / bs, vec![0u8; rounded as usize]);
                            if let Err(e) = r {
                                job.fail(CmdError::new(
                                    exit::IO,
                                    format!("reading at byte {off}: {e}"),
                                ));
                                return;
                            }
                            buf.truncate(len as usize);
                            let c = Chunk { offset: off, buf };
                            record(&c);
                            if tx.send(c).is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        End::File { file, path, .. } => {
            let path = path.clone();
            sequential(job, &tx, &record, &path, |buf, off| {
                read_full_at(file, buf, off)
            });
        }
        End::Stdin => {
            let mut stdin = io::stdin().lock();
            sequential(job, &tx, &record, "stdin", |buf, _| {
                read_full(&mut stdin, buf)
            });
        }
        End::Stdout => job.fail(CmdError::usage("stdout cannot be a source")),
    }
}

/// Read a sequential source chunk by chunk into the pipeline until it ends
/// (a short read) or the job's byte count is reached.
fn sequential(
    job: &Job,
    tx: &SyncSender<Chunk>,
    record: &dyn Fn(&Chunk),
    name: &str,
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
) {
    let mut off = 0u64;
    loop {
        if job.stopped() || job.total.is_some_and(|t| off >= t) {
            return;
        }
        let want =
            job.total
                .map_or(job.chunk as u64, |t| (t - off).min(job.chunk as u64)) as usize;
        let mut buf = vec![0u8; want];
        let n = match read(&mut buf, off) {
            Ok(n) => n,
            Err(e) => {
                job.fail(CmdError::new(
                    exit::IO,
                    format!("reading {name} at byte {off}: {e}"),
                ));
                return;
            }
        };
        if n == 0 {
            return;
        }
        buf.truncate(n);
        let c = Chunk { offset: off, buf };
        record(&c);
        off += n as u64;
        if tx.send(c).is_err() || n < want {
            return;
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn consume(job: &Job, dst: &mut End, rx: Receiver<Chunk>, bs: usize) {
    match dst {
        End::Lun(l) => {
            let rx = Mutex::new(rx);
            let cap = l.info.capacity.bytes().unwrap_or(u64::MAX);
            std::thread::scope(|s| {
                for _ in 0..job.qd {
                    let rx = &rx;
                    let l = Arc::clone(l);
                    s.spawn(move || {
                        loop {
                            let c = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                                Ok(c) => c,
                                Err(_) => return,
                            };
                            if job.stopped() {
                                continue;
                            }
                            let len = c.buf.len() as u64;
                            let mut buf = c.buf;
                            buf.resize(buf.len().div_ceil(bs) * bs, 0);
                            if c.offset + buf.len() as u64 > cap {
                                job.fail(CmdError::new(
                                    exit::IO,
                                    format!("the input is larger than the LUN ({cap} bytes): stopped before writing past the end"),
                                ));
                                continue;
                            }
                            let (r, _) = l.write(c.offset / bs as u64, buf, false);
                            match r {
                                Ok(()) => {
                                    job.done.fetch_add(len, Ordering::SeqCst);
                                }
                                Err(e) => job.fail(CmdError::new(exit::IO, format!("writing at byte {}: {e}", c.offset))),
                            }
                        }
                    });
                }
            });
        }
        End::File {
            file,
            path,
            seekable,
        } => {
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0u64;
            for c in rx {
                if job.stopped() {
                    continue;
                }
                let r = if *seekable {
                    file.write_all_at(&c.buf, c.offset).map(|_| c.buf.len())
                } else {
                    // A pipe: write in order.
                    pending.insert(c.offset, c.buf);
                    let mut n = 0;
                    let mut res = Ok(0);
                    while let Some(b) = pending.remove(&next) {
                        if let Err(e) = file.write_all(&b) {
                            res = Err(e);
                            break;
                        }
                        next += b.len() as u64;
                        n += b.len();
                    }
                    res.map(|_| n)
                };
                match r {
                    Ok(n) => {
                        job.done.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) => job.fail(CmdError::new(exit::IO, format!("writing {path}: {e}"))),
                }
            }
            if let Err(e) = file.sync_all()
                && *seekable
            {
                job.fail(CmdError::new(exit::IO, format!("syncing {path}: {e}")));
            }
        }
        End::Stdout => {
            let mut out = io::stdout().lock();
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0u64;
            for c in rx {
                if job.stopped() {
                    continue;
                }
                pending.insert(c.offset, c.buf);
                while let Some(b) = pending.remove(&next) {
                    if let Err(e) = out.write_all(&b) {
                        job.fail(CmdError::new(exit::IO, format!("writing stdout: {e}")));
                        break;
                    }
                    next += b.len() as u64;
                    job.done.fetch_add(b.len() as u64, Ordering::SeqCst);
                }
            }
            let _ = out.flush();
        }
        End::Stdin => job.fail(CmdError::usage("stdin cannot be a destination")),
    }
}

/// Re-read the destination and compare with the source (or, for a source
/// read only once, with the CRC32C of each chunk taken while copying).
fn verify(
    src: &mut End,
    dst: &mut End,
    n: u64,
    chunk: usize,
    bs: usize,
    crcs: &[(u64, u32)],
) -> Result<(), CmdError> {
    let read = |e: &mut End, off: u64, len: usize| -> Result<Option<Vec<u8>>, CmdError> {
        match e {
            End::Lun(l) => {
                let b = l.info.block_size() as u64;
                let rounded = (len as u64).div_ceil(b) * b;
                let (r, mut buf) = l.read(off / b, vec![0u8; rounded as usize]);
                r.map_err(|e| {
                    CmdError::new(exit::IO, format!("verify: reading at byte {off}: {e}"))
                })?;
                buf.truncate(len);
                Ok(Some(buf))
            }
            End::File {
                file,
                seekable: true,
                path,
            } => {
                let mut buf = vec![0u8; len];
                let k = read_full_at(file, &mut buf, off)
                    .map_err(|e| CmdError::new(exit::IO, format!("verify: {path}: {e}")))?;
                buf.truncate(k);
                Ok(Some(buf))
            }
            _ => Ok(None),
        }
    };
    let _ = bs;
    let mut off = 0u64;
    while off < n {
        let len = (n - off).min(chunk as u64) as usize;
        let d = read(dst, off, len)?
            .ok_or_else(|| CmdError::usage("--verify needs a destination that can be read back"))?;
        match read(src, off, len)? {
            Some(s) => {
                if s != d {
                    let at = s.iter().zip(&d).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(CmdError::new(
                        exit::VERIFY,
                        format!(
                            "verify failed: the copy differs at byte {}",
                            off + at as u64
                        ),
                    ));
                }
            }
            None => {
                let want = crcs.iter().find(|(o, _)| *o == off).map(|(_, c)| *c);
                if want != Some(crc32c::crc32c(&d)) {
                    return Err(CmdError::new(
                        exit::VERIFY,
                        format!("verify failed: the copy differs in the chunk at byte {off}"),
                    ));
                }
            }
        }
        off += len as u64;
    }
    Ok(())
}

fn spawn_progress(job: Arc<Job>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut last_print = String::new();
        while !job.stopped() {
            std::thread::sleep(Duration::from_millis(250));
            let done = job.done.load(Ordering::SeqCst);
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            let rate = done as f64 / secs;
            let line = match job.total {
                Some(t) if t > 0 => {
                    let pct = done as f64 * 100.0 / t as f64;
                    let eta = if rate > 0.0 {
                        (t.saturating_sub(done)) as f64 / rate
                    } else {
                        0.0
                    };
                    let width = 30usize;
                    let filled = ((pct / 100.0) * width as f64) as usize;
                    format!(
                        "\r[{}{}] {:>5.1}% {} / {} {:>8.1} MiB/s ETA {}:{:02}",
                        "#".repeat(filled.min(width)),
                        " ".repeat(width - filled.min(width)),
                        pct,
                        super::ls::human_size(done),
                        super::ls::human_size(t),
                        rate / 1048576.0,
                        (eta as u64) / 60,
                        (eta as u64) % 60
                    )
                }
                _ => format!(
                    "\r{} copied {:>8.1} MiB/s",
                    super::ls::human_size(done),
                    rate / 1048576.0
                ),
            };
            if line != last_print {
                eprint!("{line}");
                last_print = line;
            }
        }
        if !last_print.is_empty() {
            eprintln!();
        }
    })
}
