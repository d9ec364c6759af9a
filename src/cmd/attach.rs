//! `sanroot attach`, `detach` and `status`: a LUN as a kernel block device,
//! served by a daemon that lives as long as the device.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::common::{self, CmdError, ConnectArgs};
pub use crate::bridge::detach::{detach_device, device_path};
use crate::bridge::recover::PathSpec;
pub use crate::bridge::serve::BridgeKind;
use crate::bridge::serve::{self, ServeSpec};
use crate::exit;
use crate::iscsi::login::Portal;
use crate::state::{self, DeviceRecord};

#[derive(Debug, Clone)]
pub struct AttachArgs {
    pub target: String,
    pub bridge: BridgeKind,
    pub foreground: bool,
    /// More portals of the same target, for reconnects ("IP:PORT").
    pub portals: Vec<String>,
    /// Take back this device, whose daemon died, instead of making one.
    pub recover: Option<String>,
    /// How I/O is spread over several paths.
    pub policy: crate::pathset::policy::PathPolicy,
    /// One session at a time, the next portal only when it is lost.
    pub single_session: bool,
    pub connect: ConnectArgs,
}

pub fn attach(args: &AttachArgs) -> i32 {
    // Everything that can be checked without threads, before the fork.
    let spec = match spec(args) {
        Ok(s) => s,
        Err(e) => return common::report(Err(e)),
    };
    serve::daemonize(args.foreground, |pipe| {
        let mut pipe = pipe;
        serve::serve(&spec, &mut pipe, &mut |_| Ok(()), &mut |_, _| Ok(()))
    })
}

fn spec(args: &AttachArgs) -> Result<ServeSpec, CmdError> {
    let mut take_over = None;
    // The dead daemon's other paths (its record's `portals`).
    let mut recorded: Vec<state::PathRecord> = Vec::new();
    let target = match &args.recover {
        Some(dev) => {
            let dev = device_path(dev);
            let rec = state::load(&state::run_dir(), &dev).ok_or_else(|| {
                CmdError::usage(format!(
                    "{dev} has no record under {} (see `sanroot status`)",
                    state::run_dir().display()
                ))
            })?;
            take_over = Some(serve::TakeOver::from_record(&rec)?);
            recorded = rec.portals.clone();
            if args.target.is_empty() {
                format!("iscsi://{}/{}/{}", rec.portal, rec.target, rec.lun)
            } else {
                args.target.clone()
            }
        }
        None => args.target.clone(),
    };
    let (url, portal) = common::resolve_target(&target)?;
    let lun = url
        .lun
        .ok_or_else(|| CmdError::usage(format!("{url}: name the LUN (…/target-iqn/LUN)")))?;
    if take_over.is_none() {
        refuse_boot_target(&url.target, &url.host)?;
    }
    let cfg = common::initiator_config(&args.connect, Some(&url))?;
    let mut paths = vec![PathSpec {
        portal,
        target: url.target.clone(),
        auth: cfg.auth.clone(),
    }];
    // Every path the dead daemon had, with the credentials given to this
    // command (as for the first path: records hold no secret).
    for r in &recorded {
        let (host, port) = crate::url::split_host_port(&r.portal).map_err(|e| {
            CmdError::new(
                exit::FAILURE,
                format!(
                    "the record's portal \"{}\": {e} (name the paths with --portal)",
                    r.portal
                ),
            )
        })?;
        add_path(&mut paths, Portal::new(host, port), &r.target, &cfg);
    }
    for p in &args.portals {
        let (host, port) = crate::url::split_host_port(p)
            .map_err(|e| CmdError::usage(format!("--portal {p}: {e}")))?;
        add_path(&mut paths, Portal::new(host, port), &url.target, &cfg);
    }
    Ok(ServeSpec {
        paths,
        lun,
        lun_auto: false,
        cfg,
        bridge: args.bridge,
        login_wait: Duration::ZERO,
        print_path: args.foreground,
        keep_while_in_use: false,
        take_over,
        policy: args.policy,
        single_session: args.single_session,
        boot_record: None,
    })
}

/// Add a path unless the same portal and target is there already.
fn add_path(
    paths: &mut Vec<PathSpec>,
    portal: Portal,
    target: &str,
    cfg: &crate::iscsi::initiator::InitiatorConfig,
) {
    // Compared as shown: "[fd00::2]:3260" either way the host was written.
    let shown = portal.to_string();
    if !paths
        .iter()
        .any(|p| p.portal.to_string() == shown && p.target == target)
    {
        paths.push(PathSpec {
            portal,
            target: target.to_string(),
            auth: cfg.auth.clone(),
        });
    }
}

/// A second login to the target the machine booted from would either
/// reinstate (kill) the root disk's session or show the disk twice.
fn refuse_boot_target(target: &str, host: &str) -> Result<(), CmdError> {
    if let Some((device, pid)) = crate::boot::boot_session_for(target, host) {
        return Err(CmdError::new(
            exit::FAILURE,
            format!(
                "{target} at {host} is the boot disk's target, already served as {device} by sanroot (pid {pid}); \
                 a second login would take over or duplicate the root disk's session — use {device}"
            ),
        ));
    }
    Ok(())
}

pub fn detach(device: &str) -> i32 {
    common::report(detach_device(device))
}

/// The serving daemon's memory now; None when it is gone.
fn memory(r: &DeviceRecord) -> Option<state::MemoryUse> {
    r.daemon_alive()
        .then(|| state::MemoryUse::of(r.pid))
        .flatten()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

pub fn status(json_out: bool) -> i32 {
    let recs = state::load_all(&state::run_dir());
    let boot = crate::boot::handoff::read(&crate::boot::handoff_root());
    let is_boot = |r: &DeviceRecord| boot.as_ref().is_some_and(|b| b.device == r.device);
    let live = |r: &DeviceRecord| {
        if r.daemon_alive() {
            r.state.clone()
        } else {
            "daemon-gone".to_string()
        }
    };
    // Only a root session has to be logged out from an initramfs.
    let poweroff = boot
        .as_ref()
        .map(|_| crate::boot::poweroff::judge(&crate::boot::poweroff::facts(Path::new("/"))));
    let second = boot
        .as_ref()
        .map(|b| crate::boot::hide::kernel_sessions_to(std::path::Path::new("/sys"), &b.target))
        .unwrap_or_default();
    if let Some(b) = &boot {
        for s in &second {
            let n = s.trim_start_matches("session");
            eprintln!(
                "sanroot: WARNING: the kernel's initiator has a second session ({s}) to the boot target {}: the root LUN is attached twice; log it out (iscsiadm -m session -r {n} -u) and keep that target's node records node.startup = manual",
                b.target
            );
        }
    }
    if json_out {
        let v: Vec<_> = recs
            .iter()
            .map(|r| {
                let mut j = serde_json::to_value(r).unwrap_or(json!({}));
                j["state"] = json!(live(r));
                j["boot"] = json!(is_boot(r));
                j["memory"] = json!(memory(r));
                if let Some(b) = boot.as_ref().filter(|_| is_boot(r)) {
                    j["hidden_node_records"] = json!(b.hidden_node_records);
                    j["second_logins"] = json!(second);
                    j["poweroff"] = json!(poweroff);
                }
                j
            })
            .collect();
        crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        crate::outln!(
            "{:<12} {:<6} {:<8} {:<22} {:<4} {:<8} {:<12} {}",
            "DEVICE",
            "BRIDGE",
            "STATE",
            "PORTAL",
            "LUN",
            "PID",
            "ISID/TSIH",
            "TARGET"
        );
        for r in &recs {
            crate::outln!(
                "{:<12} {:<6} {:<8} {:<22} {:<4} {:<8} {:<12} {}",
                r.device,
                r.bridge,
                live(r),
                r.portal,
                r.lun,
                r.pid,
                format!("{}/{}", r.isid.chars().take(12).collect::<String>(), r.tsih),
                r.target
            );
            if let Some(m) = memory(r) {
                crate::outln!(
                    "  memory {:.1} MiB resident (peak {:.1}), {:.1} MiB locked",
                    mib(m.resident_bytes),
                    mib(m.resident_peak_bytes),
                    mib(m.locked_bytes)
                );
            }
            // Several paths: one line each under the device.
            if r.paths.len() > 1 {
                for p in &r.paths {
                    crate::outln!(
                        "  path {:<22} tpgt {:<5} {:<10} {:<20} {}",
                        p.portal,
                        p.tpgt.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                        p.state,
                        p.alua.as_deref().unwrap_or("no ALUA"),
                        if p.active { "active" } else { "" }
                    );
                }
            }
        }
        if let Some(b) = &boot {
            let nic = b
                .nic
                .as_ref()
                .map(|n| {
                    format!(
                        "; NIC {} {} ({})",
                        n.ifname,
                        n.addresses.join(" "),
                        n.origin
                    )
                })
                .unwrap_or_default();
            crate::outln!(
                "boot disk: {} {} (root session of {}, LUN {}{nic})",
                b.device,
                b.partitions.join(" "),
                b.target,
                b.lun
            );
            if let Some(p) = &poweroff {
                if p.logout {
                    crate::outln!("power-off: logs the root's session out ({})", p.how);
                } else {
                    crate::outln!("power-off: WARNING: no logout: {}", p.how);
                }
            }
            for h in &b.hidden_node_records {
                crate::outln!(
                    "hidden node records: {h} (open-iscsi does not log in to the boot target)"
                );
            }
        }
    }
    exit::OK
}
