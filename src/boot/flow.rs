//! The boot flow: where the root disk is described (iBFT, dracut's
//! command line, or Debian open-iscsi's words and /etc/iscsi.initramfs)
//! → the NIC → login (the next path when one fails) → the
//! bridge → the partitions → the hand-off → a resident daemon.

use std::cell::RefCell;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cmdline::{self, Cmdline};
use super::handoff::{self, BootRecord, NicRecord, auth_kind};
use super::parts;
use super::{BootNic, BootPath, BootSpec, NicOrigin};
use crate::bridge::recover::PathSpec;
use crate::bridge::serve::{self, BridgeKind, ServeSpec};
use crate::exit::{CmdError, report};
use crate::ibft::model::{ChapType, Ibft, Origin, format_mac};
use crate::ibft::{self, FindError, FindOptions, SourceKind};
use crate::iscsi::chap::{AuthConfig, MutualConfig};
use crate::iscsi::initiator::InitiatorConfig;
use crate::iscsi::initiator::initiator_name;
use crate::iscsi::login::Portal;
use crate::net::{self, NicConfig, RtnlSocket};
use crate::state::DeviceRecord;
use crate::{daemon, exit};

/// What `sanroot boot` was asked.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// A raw table or a sysfs-style directory instead of the firmware's.
    pub ibft_file: Option<PathBuf>,
    pub source: Option<SourceKind>,
    /// The kernel command line to read (default /proc/cmdline).
    pub cmdline: Option<PathBuf>,
    /// Overrides rd.sanroot.bridge=.
    pub bridge: Option<BridgeKind>,
    pub dry_run: bool,
    /// Serve in this process instead of leaving a daemon.
    pub foreground: bool,
    /// Accept a target that waives the CHAP the table asks for.
    pub allow_no_auth: bool,
    /// Take back the boot disk from a daemon that died.
    pub recover: bool,
    /// How I/O is spread over several paths.
    pub policy: crate::pathset::policy::PathPolicy,
}

/// How long the first login keeps trying through transient errors (the
/// switch port may still be blocking, the target still starting).
const DEFAULT_LOGIN_WAIT: Duration = Duration::from_secs(120);
/// How long the kernel gets to show the partitions the table lists.
const PARTITION_WAIT: Duration = Duration::from_secs(30);

/// Where the description came from, and the options around it.
struct Resolved {
    spec: BootSpec,
    bridge: BridgeKind,
    login_wait: Duration,
    /// "ibft" or "cmdline".
    kind: &'static str,
    /// `rd.sanroot.nm=`, else the default.
    nm: super::nm::NmMode,
}

pub fn run(opts: &BootOptions) -> i32 {
    let r = match resolve(opts) {
        Ok(Some(r)) => r,
        Ok(None) => {
            log::warn!("rd.sanroot=0: not booting from iSCSI");
            return exit::OK;
        }
        Err(e) => return report(Err(e)),
    };
    log::info!(
        "boot: {} path(s) from {}: {}",
        r.spec.paths.len(),
        r.spec.source,
        describe_paths(&r.spec.paths)
    );
    if opts.dry_run {
        return report(dry_run(&r, opts.policy));
    }
    let cfg = match initiator_config(&r.spec, opts) {
        Ok(c) => c,
        Err(e) => return report(Err(e)),
    };
    let Some((mut lun, mut lun_auto)) = r.spec.paths.first().map(|p| (p.lun, p.lun_auto)) else {
        return report(Err(CmdError::new(exit::NO_IBFT, "nothing to boot from")));
    };
    let take_over = if opts.recover {
        match take_over_boot_disk(lun, lun_auto) {
            Ok((t, was)) => {
                // The LUN the boot chose, when the description names none.
                (lun, lun_auto) = (was, false);
                Some(t)
            }
            Err(e) => return report(Err(e)),
        }
    } else {
        None
    };
    let serve_spec = ServeSpec {
        paths: r.spec.paths.iter().map(path_spec).collect(),
        lun,
        lun_auto,
        cfg,
        bridge: r.bridge,
        login_wait: r.login_wait,
        print_path: opts.foreground,
        keep_while_in_use: true,
        take_over,
        policy: opts.policy,
        single_session: false,
        boot_record: Some(super::handoff_root().join(super::handoff::RECORD)),
    };
    let spec = r.spec;
    let kind = r.kind;
    let nm_mode = r.nm;
    // Fork now, before any thread: the child brings the NIC up, logs in,
    // serves the device for the life of the machine; the parent returns
    // once the root disk is ready (or why it is not).
    serve::daemonize(opts.foreground, move |pipe| {
        let mut pipe = pipe;
        let nics: RefCell<Vec<Option<NicRecord>>> = RefCell::new(vec![None; spec.paths.len()]);
        let mut prepare = |i: usize| -> Result<(), String> {
            let Some(p) = spec.paths.get(i) else {
                return Ok(());
            };
            let rec = match &p.nic {
                Some(nic) => Some(bring_up(nic, p.host).map_err(|e| e.to_string())?),
                None => None,
            };
            if let Some(slot) = nics.borrow_mut().get_mut(i) {
                *slot = rec;
            }
            Ok(())
        };
        let mut on_ready = |dev: &mut DeviceRecord, used: usize| -> Result<(), CmdError> {
            let partitions = wait_partitions(&dev.device, dev.block_size)?;
            let path = spec.paths.get(used);
            // Every path was prepared before this: the NIC of the path
            // that logged in, then every other path's, each interface
            // once, so the hand-off keeps the real root off all of them.
            let (nic, boot_nics) = {
                let all = nics.borrow();
                let first = all.get(used).cloned().flatten();
                let every = handoff::unique_nics(first.iter().chain(all.iter().flatten()));
                (first, every)
            };
            let rec = BootRecord {
                version: 1,
                source: format!("{kind}: {}", spec.source),
                target: dev.target.clone(),
                portal: dev.portal.clone(),
                lun: dev.lun,
                initiator: dev.initiator.clone(),
                isid: dev.isid.clone(),
                tsih: dev.tsih,
                device: dev.device.clone(),
                partitions: partitions.clone(),
                bridge: dev.bridge.clone(),
                pid: std::process::id(),
                nic,
                nics: boot_nics,
                auth: auth_kind(path.and_then(|p| p.auth.as_ref())).into(),
                hidden_node_records: Vec::new(),
                paths: dev.paths.clone(),
                networkmanager: nm_mode.name().into(),
            };
            let root = super::handoff_root();
            match handoff::write(&root, &rec) {
                Ok(files) => log::info!("hand-off written: {}", list_paths(&files)),
                Err(e) => {
                    return Err(CmdError::new(
                        exit::FAILURE,
                        format!(
                            "writing the hand-off under {}: {e}",
                            root.join("run").display()
                        ),
                    ));
                }
            }
            log::warn!(
                "root disk {} is ready ({} LUN {} via {}, {}{})",
                dev.device,
                dev.target,
                dev.lun,
                dev.portal,
                dev.bridge,
                if partitions.is_empty() {
                    String::new()
                } else {
                    format!(", partitions {}", partitions.join(" "))
                }
            );
            Ok(())
        };
        serve::serve(&serve_spec, &mut pipe, &mut prepare, &mut on_ready)
    })
}

/// The boot disk of the hand-off, whose daemon must be gone, and its LUN
/// (the description's, or the one the boot chose when it names none).
fn take_over_boot_disk(lun: u64, lun_auto: bool) -> Result<(serve::TakeOver, u64), CmdError> {
    let root = super::handoff_root();
    let boot = handoff::read(&root).ok_or_else(|| {
        CmdError::usage(format!(
            "--recover: no boot record at {}",
            root.join(handoff::RECORD).display()
        ))
    })?;
    if boot.lun != lun && !lun_auto {
        return Err(CmdError::usage(format!(
            "--recover: the boot disk was LUN {}, the description now says LUN {lun}",
            boot.lun
        )));
    }
    let rec = crate::state::load(&crate::state::run_dir(), &boot.device).ok_or_else(|| {
        CmdError::usage(format!("--recover: {} has no device record", boot.device))
    })?;
    Ok((serve::TakeOver::from_record(&rec)?, boot.lun))
}

fn list_paths(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_paths(paths: &[BootPath]) -> String {
    paths
        .iter()
        .map(|p| {
            format!(
                "{} LUN {} at {} ({})",
                p.target,
                p.lun,
                portal_of(p),
                auth_kind(p.auth.as_ref())
            )
        })
        .collect::<Vec<_>>()
        .join("; then ")
}

fn portal_of(p: &BootPath) -> Portal {
    Portal::new(p.host.to_string(), p.port)
}

fn path_spec(p: &BootPath) -> PathSpec {
    PathSpec {
        portal: portal_of(p),
        target: p.target.clone(),
        auth: p.auth.clone(),
    }
}

fn initiator_config(spec: &BootSpec, opts: &BootOptions) -> Result<InitiatorConfig, CmdError> {
    let name = match &spec.initiator {
        Some(n) if !n.is_empty() => n.clone(),
        _ => initiator_name(None),
    };
    let mut c = InitiatorConfig::new(name);
    c.allow_no_auth = opts.allow_no_auth;
    // A root disk: notice a dead path in seconds even when idle.
    c.session.nop_interval = Some(Duration::from_secs(5));
    c.session.nop_timeout = Duration::from_secs(10);
    Ok(c)
}

/// The initramfs' secrets file ([`cmdline::SECRETS_FILE`], or
/// `$SANROOT_SECRETS_FILE`), if there is one. A file others may read is
/// used, with a warning: the boot must not fail over its mode.
fn read_secrets_file() -> Result<Option<cmdline::SecretsFile>, CmdError> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("SANROOT_SECRETS_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cmdline::SECRETS_FILE.into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CmdError::new(
                exit::FAILURE,
                format!("reading {}: {e}", path.display()),
            ));
        }
    };
    if let Ok(m) = std::fs::metadata(&path)
        && m.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "{} is readable by others (mode {:o}): make it 0600",
            path.display(),
            m.permissions().mode() & 0o777
        );
    }
    let f = cmdline::parse_secrets_file(&text)
        .map_err(|e| CmdError::usage(format!("{}: {e}", path.display())))?;
    log::info!("CHAP settings from {}", path.display());
    Ok(Some(f))
}

/// open-iscsi's settings in the initramfs ([`cmdline::OPEN_ISCSI_FILE`],
/// or `$SANROOT_ISCSI_INITRAMFS`), with the file's name for messages, if
/// there is such a file. Debian's hook copies the host's
/// /etc/iscsi/iscsi.initramfs there, so an image built with sanroot
/// instead of iscsistart boots from the same settings.
fn read_open_iscsi_file() -> Result<Option<(String, cmdline::OpenIscsiFile)>, CmdError> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("SANROOT_ISCSI_INITRAMFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmdline::OPEN_ISCSI_FILE.into());
    let Some(text) = read_bounded(&path, cmdline::MAX_OPEN_ISCSI_FILE)? else {
        return Ok(None);
    };
    let name = path.display().to_string();
    let f = cmdline::parse_open_iscsi_initramfs(&text)
        .map_err(|e| CmdError::usage(format!("{name}: {e}")))?;
    log::info!("open-iscsi settings from {name}");
    if !f.ignored.is_empty() {
        log::info!("{name}: not used: {}", f.ignored.join(", "));
    }
    // Only a file with a CHAP secret in it: the stock one holds none, and
    // a warning at every boot over nothing would teach people to skip it.
    if f.holds_secret()
        && let Ok(m) = std::fs::metadata(&path)
        && m.permissions().mode() & 0o044 != 0
    {
        log::warn!(
            "{name} holds a CHAP password and is readable by others (mode {:o}): make the host's /etc/iscsi/iscsi.initramfs 0600 and rebuild the initramfs",
            m.permissions().mode() & 0o777
        );
    }
    Ok(Some((name, f)))
}

/// A text file of at most `max` bytes (never more read into memory);
/// `None` when there is none.
fn read_bounded(path: &Path, max: usize) -> Result<Option<String>, CmdError> {
    let failed = |e: std::io::Error| {
        CmdError::new(exit::FAILURE, format!("reading {}: {e}", path.display()))
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let mut buf = Vec::new();
    f.take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(failed)?;
    if buf.len() > max {
        return Err(CmdError::usage(format!(
            "{}: more than {max} bytes: open-iscsi's settings are a few lines; is it the right file?",
            path.display()
        )));
    }
    String::from_utf8(buf).map(Some).map_err(|_| {
        CmdError::usage(format!(
            "{}: not UTF-8 text: write it as open-iscsi's NAME=value lines",
            path.display()
        ))
    })
}

/// The command line, with open-iscsi's settings file as defaults when
/// there is one; the file's name (for [`Cmdline::describe_source`]).
fn read_cmdline(text: &str) -> Result<(Cmdline, String), CmdError> {
    let file = read_open_iscsi_file()?;
    let cl = match &file {
        Some((name, f)) => cmdline::parse_with_defaults(name, &f.words, text),
        None => cmdline::parse(text),
    }
    .map_err(|e| CmdError::usage(e.to_string()))?;
    if !cl.ignored.is_empty() {
        log::info!("not acted on: {}", cl.ignored.join(", "));
    }
    let name = file.map_or_else(|| cmdline::OPEN_ISCSI_FILE.to_string(), |(n, _)| n);
    Ok((cl, name))
}

/// Read the command line and, unless it describes the root itself, the
/// iBFT. `None` when the command line turns sanroot off.
fn resolve(opts: &BootOptions) -> Result<Option<Resolved>, CmdError> {
    let text = match &opts.cmdline {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| CmdError::new(exit::FAILURE, format!("reading {}: {e}", p.display())))?,
        None => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    };
    // rd.sanroot=0 wins before any file is read (a broken one included).
    if cmdline::parse(&text).is_ok_and(|c| c.sanroot.enabled == Some(false)) {
        return Ok(None);
    }
    let (mut cl, open_iscsi_file) = read_cmdline(&text)?;
    if cl.sanroot.enabled == Some(false) {
        return Ok(None);
    }
    if let Some(f) = read_secrets_file()? {
        cl.add_secrets(f);
    }
    let bridge = opts
        .bridge
        .or(cl.sanroot.bridge)
        .unwrap_or(BridgeKind::Auto);
    let login_wait = cl
        .sanroot
        .timeout
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LOGIN_WAIT);
    let nm = cl.sanroot.nm.unwrap_or(super::nm::NmMode::DEFAULT);
    let use_ibft = opts.ibft_file.is_some() || cl.firmware || cl.netroots.is_empty();
    if !use_ibft {
        let paths = cl
            .boot_paths()
            .map_err(|e| CmdError::usage(e.to_string()))?;
        if let Some(g) = cl.open_iscsi.and_then(|t| t.group) {
            log::info!(
                "iscsi_target_group={g} noted: sanroot logs in without a portal group tag and takes the target's"
            );
        }
        return Ok(Some(Resolved {
            spec: BootSpec {
                source: cl.describe_source(&open_iscsi_file),
                initiator: cl.initiator.clone(),
                paths,
            },
            bridge,
            login_wait,
            kind: "cmdline",
            nm,
        }));
    }
    let found = ibft::find(&FindOptions {
        source: opts.source,
        file: opts.ibft_file.clone(),
        ..FindOptions::default()
    })
    .map_err(|e| {
        let code = match &e {
            FindError::NotFound(_) => exit::NO_IBFT,
            FindError::Invalid { .. } => exit::INVALID_IBFT,
            FindError::Io { .. } => exit::FAILURE,
        };
        let hint = if matches!(e, FindError::NotFound(_)) {
            " (boot through iPXE sanboot/sanhook or UEFI iSCSI, or describe the root with netroot=iscsi:…)"
        } else {
            ""
        };
        CmdError::new(code, format!("{e}{hint}"))
    })?;
    for p in found.ibft.errors() {
        log::warn!("iBFT: {p}");
    }
    let mut spec = spec_from_ibft(&found.ibft)?;
    spec.source = format!("the iBFT ({} {})", found.kind.name(), found.detail);
    if let Some(i) = cl.initiator.clone() {
        spec.initiator = Some(i);
    }
    Ok(Some(Resolved {
        spec,
        bridge,
        login_wait,
        kind: "ibft",
        nm,
    }))
}

/// The paths an iBFT describes: the boot target, then the second path,
/// then any other usable target.
pub fn spec_from_ibft(t: &Ibft) -> Result<BootSpec, CmdError> {
    let mut order: Vec<&crate::ibft::model::Target> = Vec::new();
    order.extend(t.boot_target());
    order.extend(t.second_path());
    for x in &t.targets {
        if !order.iter().any(|o| std::ptr::eq(*o, x)) {
            order.push(x);
        }
    }
    let mut paths = Vec::new();
    let mut skipped = Vec::new();
    for tg in order {
        let Some(host) = tg.ip else {
            skipped.push(format!("target {}: no address", tg.index));
            continue;
        };
        let auth = match ibft_auth(tg, t.initiator_name()) {
            Ok(a) => a,
            Err(m) => {
                skipped.push(format!("target {}: {m}", tg.index));
                continue;
            }
        };
        let nic = t.nic_for(tg).map(|n| BootNic {
            config: NicConfig::from_ibft(n, Some(host)),
            ifname: None,
            origin: if n.origin == Origin::Dhcp {
                NicOrigin::FirmwareDhcp
            } else {
                NicOrigin::Static
            },
            hostname: n.hostname.clone(),
            domain: None,
            mtu: None,
        });
        paths.push(BootPath {
            nic,
            host,
            port: if tg.port == 0 { 3260 } else { tg.port },
            target: tg.name.clone(),
            lun: tg.lun.number,
            lun_auto: false,
            auth,
        });
    }
    for s in &skipped {
        log::warn!("iBFT: {s}");
    }
    lend_chap(&mut paths);
    if paths.is_empty() {
        return Err(CmdError::new(
            exit::INVALID_IBFT,
            format!(
                "the iBFT describes no usable target{}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(": {}", skipped.join("; "))
                }
            ),
        ));
    }
    Ok(BootSpec {
        source: "the iBFT".into(),
        initiator: t.initiator_name().map(str::to_string),
        paths,
    })
}

/// iPXE writes CHAP into a target's entry only when that path asked for it
/// at its login: a path that was down at boot has none, and would never
/// log in to a target that wants CHAP. An entry without CHAP borrows the
/// credentials of another entry for the same target name.
fn lend_chap(paths: &mut [BootPath]) {
    for i in 0..paths.len() {
        if paths[i].auth.is_some() {
            continue;
        }
        let lender = paths
            .iter()
            .enumerate()
            .find(|(_, p)| p.auth.is_some() && p.target.eq_ignore_ascii_case(&paths[i].target));
        if let Some((j, p)) = lender {
            let auth = p.auth.clone();
            log::info!(
                "iBFT: target {} of {} has no CHAP; using the CHAP of target {} for the same name",
                i,
                paths[i].target,
                j
            );
            paths[i].auth = auth;
        }
    }
}

fn ibft_auth(
    tg: &crate::ibft::model::Target,
    initiator: Option<&str>,
) -> Result<Option<AuthConfig>, String> {
    if tg.chap == ChapType::None {
        return Ok(None);
    }
    let secret = tg
        .chap_secret
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or("the table asks for CHAP but holds no CHAP secret")?;
    // iPXE leaves the name empty when it is the initiator's own.
    let user = tg
        .chap_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| initiator.map(str::to_string))
        .ok_or("the table asks for CHAP but names no CHAP user")?;
    let mutual = if tg.chap == ChapType::Mutual {
        let secret = tg
            .rchap_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or("the table asks for mutual CHAP but holds no reverse secret")?;
        Some(MutualConfig {
            target_name: tg.rchap_name.clone().filter(|n| !n.is_empty()),
            secret,
        })
    } else {
        None
    };
    let a = AuthConfig {
        user,
        secret,
        mutual,
    };
    a.validate().map_err(|e| e.to_string())?;
    Ok(Some(a))
}

/// Bring one path's NIC up; what was configured, for the hand-off.
fn bring_up(nic: &BootNic, target: IpAddr) -> Result<NicRecord, String> {
    let mut cfg = nic.config.clone();
    if cfg.mac == [0; 6] {
        let name = nic
            .ifname
            .as_deref()
            .ok_or("neither a MAC address nor an interface name for the boot NIC")?;
        let mut s = RtnlSocket::open().map_err(|e| e.to_string())?;
        let link = net::link_by_final_name(&mut s, name).map_err(|e| e.to_string())?;
        cfg.mac = link
            .address
            .get(..6)
            .and_then(|m| m.try_into().ok())
            .ok_or_else(|| format!("{name} has no Ethernet address"))?;
    }
    cfg.target.get_or_insert(target);
    let mut rec = NicRecord {
        ifname: String::new(),
        mac: format_mac(&cfg.mac),
        vlan: cfg.vlan,
        addresses: Vec::new(),
        gateway: cfg.gateway.map(|g| g.to_string()),
        dns: cfg.dns.iter().map(IpAddr::to_string).collect(),
        origin: nic.origin.name().into(),
        hostname: nic.hostname.clone(),
        domain: nic.domain.clone(),
        parent: None,
        ifindex: None,
        target: cfg.target.map(|t| t.to_string()),
    };
    if nic.origin == NicOrigin::External {
        // Someone else (dracut's network module, ip=dhcp) configures it:
        // wait for an address on it, bounded.
        let (name, addrs) = wait_external(&cfg, nic.ifname.as_deref())?;
        rec.ifindex = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        rec.ifname = name;
        rec.addresses = addrs;
        return Ok(rec);
    }
    let applied = net::apply(&cfg).map_err(|e| e.to_string())?;
    rec.ifname = applied.ifname.clone();
    rec.ifindex = Some(applied.ifindex);
    rec.parent = applied.parent.clone();
    if let Some((a, p)) = applied.addr {
        rec.addresses.push(format!("{a}/{p}"));
    }
    if daemon::in_initramfs() && !cfg.dns.is_empty() {
        let text = net::resolv_conf(&cfg.dns, nic.domain.as_deref());
        if let Err(e) = std::fs::write("/etc/resolv.conf", text) {
            log::warn!("/etc/resolv.conf: {e}");
        }
    }
    Ok(rec)
}

fn wait_external(cfg: &NicConfig, ifname: Option<&str>) -> Result<(String, Vec<String>), String> {
    let deadline = Instant::now() + cfg.carrier_timeout;
    let mut s = RtnlSocket::open().map_err(|e| e.to_string())?;
    loop {
        let links = s.links().map_err(|e| e.to_string())?;
        let link = match ifname {
            Some(n) => links.iter().find(|l| l.name == n),
            None => net::find_link(&cfg.mac, &links).ok(),
        };
        if let Some(l) = link {
            let mut addrs = Vec::new();
            for fam in [nix::libc::AF_INET as u8, nix::libc::AF_INET6 as u8] {
                for a in s.addrs(fam).map_err(|e| e.to_string())? {
                    // Scopes 253 (link) and 254 (host) do not reach a target.
                    if let (true, true, Some(ip)) = (a.index == l.index, a.scope < 253, a.address) {
                        addrs.push(format!("{ip}/{}", a.prefix_len));
                    }
                }
            }
            if !addrs.is_empty() {
                return Ok((l.name.clone(), addrs));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} has no address after {:?}: the command line leaves the network to dracut's network module (ip=dhcp); is it in the initramfs?",
                ifname.unwrap_or("the boot NIC"),
                cfg.carrier_timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until the kernel shows every partition the disk's table lists.
fn wait_partitions(device: &str, block_size: u32) -> Result<Vec<String>, CmdError> {
    let disk = device.trim_start_matches("/dev/");
    let mut head = vec![0u8; parts::bytes_needed(block_size)];
    let table = match std::fs::File::open(device).and_then(|mut f| {
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }) {
        Ok(n) => parts::expected(&head[..n], block_size),
        Err(e) => {
            return Err(CmdError::new(
                exit::IO,
                format!("{device}: reading the partition table: {e}"),
            ));
        }
    };
    let want: Vec<String> = table
        .numbers()
        .iter()
        .map(|n| parts::part_name(disk, *n))
        .collect();
    let start = Instant::now();
    let mut rescanned = false;
    loop {
        let missing: Vec<&String> = want
            .iter()
            .filter(|p| !Path::new("/sys/class/block").join(p).exists())
            .collect();
        if missing.is_empty() {
            break;
        }
        if !rescanned && start.elapsed() > Duration::from_secs(5) {
            rescanned = true;
            log::warn!("{device}: partitions not seen after 5 s; asking the kernel to rescan");
            rescan(device);
        }
        if start.elapsed() > PARTITION_WAIT {
            return Err(CmdError::new(
                exit::IO,
                format!(
                    "{device}: the partition table lists {} but the kernel shows no {} after {:?}",
                    want.join(" "),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    PARTITION_WAIT
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(want.iter().map(|p| format!("/dev/{p}")).collect())
}

nix::ioctl_none!(blkrrpart, 0x12, 95);

fn rescan(device: &str) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(device) {
        // SAFETY: BLKRRPART takes no argument; the fd is open.
        if let Err(e) = unsafe { blkrrpart(f.as_raw_fd()) } {
            log::warn!("{device}: BLKRRPART: {e}");
        }
    }
}

/// `--dry-run`: every step, nothing done.
fn dry_run(r: &Resolved, policy: crate::pathset::policy::PathPolicy) -> Result<(), CmdError> {
    let out = |s: String| crate::outln!("{s}");
    out(format!("source: {}", r.spec.source));
    out(format!("networkmanager: {} (rd.sanroot.nm=)", r.nm.name()));
    out(format!(
        "initiator: {}",
        r.spec
            .initiator
            .clone()
            .unwrap_or_else(|| format!("{} (default)", initiator_name(None)))
    ));
    let links = RtnlSocket::open().and_then(|mut s| s.links()).ok();
    for (i, p) in r.spec.paths.iter().enumerate() {
        out(format!(
            "path {}{}:",
            i + 1,
            if i == 0 {
                " (boot)"
            } else {
                " (a session of its own too; it must reach the same LU)"
            }
        ));
        match &p.nic {
            None => out("  network: already configured (no NIC in this description)".into()),
            Some(n) if n.origin == NicOrigin::External => out(format!(
                "  network: wait for {} to get its address from someone else (ip= method)",
                n.ifname.as_deref().unwrap_or("the interface")
            )),
            Some(n) => {
                let mut cfg = n.config.clone();
                cfg.target.get_or_insert(p.host);
                if let Some(name) = &n.ifname {
                    out(format!("  network: interface {name} ({})", n.origin.name()));
                }
                out(format!(
                    "  network: MAC {} vlan {} address {} gateway {} dns {} ({})",
                    format_mac(&cfg.mac),
                    cfg.vlan,
                    cfg.addr
                        .map(|(a, p)| format!("{a}/{p}"))
                        .unwrap_or_else(|| "-".into()),
                    cfg.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into()),
                    if cfg.dns.is_empty() {
                        "-".to_string()
                    } else {
                        cfg.dns
                            .iter()
                            .map(IpAddr::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                    n.origin.name()
                ));
                if let (Some(l), true) = (&links, cfg.mac != [0; 6]) {
                    match net::plan(&cfg, l) {
                        Ok(steps) => {
                            for s in steps {
                                out(format!("  network step: {s}"));
                            }
                        }
                        Err(e) => out(format!("  network: not on this machine ({e})")),
                    }
                }
            }
        }
        out(format!(
            "  login: {} at {} (auth {})",
            p.target,
            portal_of(p),
            auth_kind(p.auth.as_ref())
        ));
        if p.lun_auto {
            out(format!(
                "  LUN: none given: {} if it is a disk, else the first disk REPORT LUNS lists",
                p.lun
            ));
        } else {
            out(format!("  LUN: {}", p.lun));
        }
    }
    if r.spec.paths.len() > 1 {
        out(format!(
            "paths: a session on each of the {} at once, one device; the first that logs in serves the root, the others join as they log in (policy {})",
            r.spec.paths.len(),
            policy.name()
        ));
    }
    let bridge = r.bridge.resolve();
    out(format!(
        "bridge: {}{}",
        bridge.name(),
        if r.bridge == BridgeKind::Auto {
            " (auto)"
        } else {
            ""
        }
    ));
    out("then: wait for the partitions the disk's table lists; write the hand-off under /run (sanroot/boot.json, open-iscsi and network-manager settings); stay resident as @sanroot".into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_bounded_reads_little_text_or_says_why() {
        let dir = std::env::temp_dir().join(format!("sanroot-flow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("iscsi.initramfs");
        assert!(read_bounded(&f, 16).unwrap().is_none(), "no file: nothing");
        std::fs::write(&f, "ISCSI_AUTO=true\n").unwrap();
        assert_eq!(
            read_bounded(&f, 16).unwrap().as_deref(),
            Some("ISCSI_AUTO=true\n")
        );
        let e = read_bounded(&f, 8).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.contains("more than 8 bytes"), "{}", e.message);
        std::fs::write(&f, b"A=\xff\n").unwrap();
        let e = read_bounded(&f, 16).unwrap_err();
        assert!(e.message.contains("not UTF-8"), "{}", e.message);
        // A directory: a read error other than "not found" fails the boot.
        let e = read_bounded(&dir, 16).unwrap_err();
        assert_eq!(e.code, exit::FAILURE);
        assert!(e.message.contains(&dir.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
