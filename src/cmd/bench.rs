//! `sanroot bench URL`: measure the SAN path before booting from it.
//!
//! Keeps `--qd` commands in flight on one session (the engine's own
//! pipelining, no thread per command), for `--seconds`, and reports IOPS,
//! throughput, latency percentiles and CPU time per I/O. Reads by default;
//! `--write` overwrites the LUN's data.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::{self, CmdError, ConnectArgs};
use crate::completion::{Done, Sink, Slots};
use crate::exit;
use crate::iscsi::initiator;
use crate::iscsi::session::{Command, DataDir, ScsiResult, Session, SessionError};
use crate::lun::{Lun, pad16};
use crate::scsi::cdb;

#[derive(Debug, Clone, Default)]
pub struct Args {
    pub url: String,
    pub write: bool,
    pub random: bool,
    pub bs: Option<usize>,
    pub qd: Option<usize>,
    pub seconds: Option<f64>,
    pub json: bool,
    pub connect: ConnectArgs,
}

pub fn run(args: &Args) -> i32 {
    common::report(bench(args))
}

/// xorshift64*: fast, good enough to spread offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

struct Stats {
    lat_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

/// One benchmark run, shared by the completions that drive it.
struct Run {
    session: Arc<Session>,
    lun: u64,
    write: bool,
    random: bool,
    io: usize,
    blocks_per_io: u64,
    span: u64,
    end: Instant,
    rng: Mutex<Rng>,
    seq: AtomicU64,
    stats: Mutex<Stats>,
    outstanding: AtomicUsize,
    all_done: Mutex<Option<mpsc::Sender<()>>>,
    /// When each I/O in flight was submitted, by slot.
    started: Slots<Instant>,
}

/// Submit one I/O at time `t`; its completion ([`Run::done`]) records the
/// latency and submits the next.
fn issue(run: &Arc<Run>, buf: Vec<u8>, t: Instant) {
    let slot = if run.random {
        run.rng.lock().unwrap_or_else(|p| p.into_inner()).next() % run.span
    } else {
        run.seq.fetch_add(1, Ordering::Relaxed) % run.span
    };
    let lba = slot * run.blocks_per_io;
    let n = run.blocks_per_io as u32;
    let (c, dir) = if run.write {
        (cdb::write(lba, n, false), DataDir::Write(run.io as u32))
    } else {
        (cdb::read(lba, n, false), DataDir::Read(run.io as u32))
    };
    let me = Arc::clone(run);
    let started = run.started.insert(t);
    run.session.submit(
        Command {
            lun: run.lun,
            cdb: pad16(&c),
            dir,
            attr: 1,
        },
        buf,
        Done::slot(me, started),
    );
}

impl Sink<Result<ScsiResult, SessionError>> for Run {
    /// Record the latency and submit the next I/O (at the completion's own
    /// time) until the time is up.
    fn done(self: Arc<Self>, token: usize, r: Result<ScsiResult, SessionError>, b: Vec<u8>) {
        let now = Instant::now();
        let Some(t) = self.started.finish(token, "bench") else {
            return;
        };
        {
            let mut st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(res) if res.status == 0 => st
                    .lat_us
                    .push(now.duration_since(t).as_micros().min(u128::from(u32::MAX)) as u32),
                Ok(res) => {
                    st.errors += 1;
                    st.first_error
                        .get_or_insert_with(|| format!("SCSI status 0x{:02x}", res.status));
                }
                Err(e) => {
                    st.errors += 1;
                    st.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        if now < self.end && self.session.failure().is_none() {
            issue(&self, b, now);
        } else if self.outstanding.fetch_sub(1, Ordering::SeqCst) == 1
            && let Some(tx) = self
                .all_done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        {
            let _ = tx.send(());
        }
    }
}

fn bench(args: &Args) -> Result<(), CmdError> {
    let (url, portal) = common::resolve_target(&args.url)?;
    let lun_n = url
        .lun
        .ok_or_else(|| CmdError::usage(format!("{url}: name the LUN (…/target-iqn/LUN)")))?;
    let mut cfg = common::initiator_config(&args.connect, Some(&url))?;
    let qd = args.qd.unwrap_or(32).clamp(1, 1024);
    cfg.session.queue_depth = (qd as u16).saturating_add(4);
    let conn = initiator::connect(&portal, &url.target, &cfg, None).map_err(common::login_error)?;
    let lun = Lun::open(Arc::new(conn.session), lun_n)
        .map_err(|e| CmdError::new(exit::IO, format!("{url}: {e}")))?;
    if args.write && lun.info.write_protected {
        return Err(CmdError::new(exit::IO, format!("{url} is write-protected")));
    }
    let bsz = lun.info.block_size() as usize;
    let io = args.bs.unwrap_or(4096).max(bsz) / bsz * bsz;
    let blocks_per_io = (io / bsz) as u64;
    let span = lun.info.blocks() / blocks_per_io;
    if span == 0 {
        return Err(CmdError::usage(format!(
            "the LUN is smaller than one {io}-byte I/O"
        )));
    }
    let secs = args.seconds.unwrap_or(10.0).max(0.1);
    let session = Arc::clone(lun.session());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let t0 = Instant::now();
    let state = Arc::new(Run {
        session: Arc::clone(&session),
        lun: lun_n,
        write: args.write,
        random: args.random,
        io,
        blocks_per_io,
        span,
        end: t0 + Duration::from_secs_f64(secs),
        rng: Mutex::new(Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()))),
        seq: AtomicU64::new(0),
        stats: Mutex::new(Stats {
            lat_us: Vec::with_capacity(1 << 20),
            errors: 0,
            first_error: None,
        }),
        outstanding: AtomicUsize::new(qd),
        all_done: Mutex::new(Some(done_tx)),
        started: Slots::with_capacity(qd),
    });
    let cpu0 = cpu_time();
    // Buffers are allocated once and travel with their commands; each
    // completion submits the next I/O from the session's own thread.
    for i in 0..qd {
        let fill = if args.write {
            (i as u8).wrapping_mul(37)
        } else {
            0
        };
        issue(&state, vec![fill; io], Instant::now());
    }
    if done_rx
        .recv_timeout(Duration::from_secs_f64(secs) + Duration::from_secs(60))
        .is_err()
    {
        return Err(CmdError::new(
            exit::IO,
            "I/Os did not complete within 60 s of the end: the target stopped answering",
        ));
    }
    let mut stats = std::mem::replace(
        &mut *state.stats.lock().unwrap_or_else(|p| p.into_inner()),
        Stats {
            lat_us: Vec::new(),
            errors: 0,
            first_error: None,
        },
    );
    let (mut lat_us, errors, first_error) = (
        std::mem::take(&mut stats.lat_us),
        stats.errors,
        stats.first_error.take(),
    );
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu0);
    let ios = lat_us.len() as u64;
    if ios == 0 {
        return Err(CmdError::new(
            exit::IO,
            format!(
                "no I/O completed: {}",
                first_error.unwrap_or_else(|| "unknown error".into())
            ),
        ));
    }
    lat_us.sort_unstable();
    let pct = |p: f64| lat_us[((lat_us.len() as f64 - 1.0) * p).round() as usize];
    let mean = lat_us.iter().map(|v| u64::from(*v)).sum::<u64>() as f64 / ios as f64;
    let iops = ios as f64 / elapsed;
    let bytes = ios as f64 * io as f64;
    let cpu_us = cpu.as_secs_f64() * 1e6 / ios as f64;
    let mode = if args.write { "write" } else { "read" };
    let pattern = if args.random { "random" } else { "sequential" };
    if args.json {
        let v = json!({
            "url": url.to_string(),
            "mode": mode,
            "pattern": pattern,
            "bs": io,
            "qd": qd,
            "seconds": elapsed,
            "ios": ios,
            "errors": errors,
            "iops": iops,
            "mb_per_s": bytes / elapsed / 1e6,
            "mib_per_s": bytes / elapsed / 1048576.0,
            "latency_us": {
                "mean": mean,
                "p50": pct(0.5),
                "p90": pct(0.9),
                "p99": pct(0.99),
                "p999": pct(0.999),
                "max": lat_us[lat_us.len() - 1],
            },
            "cpu_us_per_io": cpu_us,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        crate::outln!("{url}: {pattern} {mode}, {io}-byte I/O, {qd} in flight, {elapsed:.1} s");
        crate::outln!(
            "  {iops:.0} IOPS, {:.1} MB/s, {ios} I/Os, {errors} errors",
            bytes / elapsed / 1e6
        );
        crate::outln!(
            "  latency us: mean {mean:.0}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            lat_us[lat_us.len() - 1]
        );
        crate::outln!("  CPU {cpu_us:.1} us per I/O");
    }
    if let Some(e) = first_error {
        eprintln!("sanroot: {errors} I/O errors, first: {e}");
    }
    drop(lun);
    Ok(())
}
