//! dracut's kernel command line: `netroot=iscsi:…`, `ip=`, `nameserver=`,
//! `vlan=`, `ifname=` and the `rd.iscsi.*` options, read the way dracut
//! reads them (dracut.cmdline(7); the splitting rules of dracut's
//! `parse_iscsi_root` and `ip_to_var`), plus our own `rd.sanroot*`; and
//! Debian open-iscsi's initramfs-tools words (`iscsi_auto`,
//! `iscsi_target_name=`, `iscsi_target_ip=`, …) with their settings file,
//! /etc/iscsi.initramfs ([`parse_open_iscsi_initramfs`],
//! [`parse_with_defaults`]), so an image built with sanroot instead of
//! iscsistart boots from what an open-iscsi user already has.
//!
//! Pure: a `&str` in ([`parse`]), plain values out ([`Cmdline`],
//! [`Cmdline::boot_paths`]). No I/O, no logging; the caller reads
//! /proc/cmdline (and, if it wants dracut's behaviour exactly,
//! appends /etc/cmdline.d/*.conf) and the settings file, and logs what
//! [`Cmdline::ignored`] and [`OpenIscsiFile::ignored`] name.
//!
//! Not here: bringing a NIC up (`crate::net`), logging in, the iBFT.
//!
//! Secrets: CHAP passwords become [`Secret`]s as soon as they are split
//! out. No error message carries any part of a `netroot=` that holds
//! credentials (a password with an '@' or ':' in it lands in the wrong
//! field, so any field may hold a piece of it), and [`Cmdline::ignored`]
//! only ever holds option names.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::{BootNic, BootPath, NicOrigin};
use crate::bridge::serve::BridgeKind;
use crate::iscsi::chap::{AuthConfig, MutualConfig};
use crate::kcmdline::is_space;
pub use crate::kcmdline::split_args;
use crate::net::{NicConfig, parse_mac};
use crate::secret::Secret;

pub use super::openiscsi::{
    FileWord, MAX_OPEN_ISCSI_FILE, OPEN_ISCSI_FILE, OpenIscsiFile, parse_open_iscsi_initramfs,
};

/// The iSCSI well-known port (RFC 7143 §4.2): netroot's empty port.
pub const DEFAULT_PORT: u16 = 3260;
/// RFC 7143 §4.2.7.1: an iSCSI name is at most 223 bytes.
const MAX_ISCSI_NAME: usize = 223;
/// The addresses one `iscsi_target_ip=` may list: each is a session of
/// its own, and a root disk wants a few paths, not every portal.
const MAX_TARGET_IPS: usize = 16;
/// dracut's own bound for rd.iscsi.login_retry_max (getargnum 3 0 10000).
const MAX_LOGIN_RETRY: u32 = 10_000;

/// What the kernel command line says about an iSCSI root.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cmdline {
    /// Every `netroot=iscsi:…` in order (`root=iscsi:…` and the legacy
    /// `iscsiroot=` first, as dracut gives them precedence).
    pub netroots: Vec<Netroot>,
    /// Every `ip=`, in order.
    pub ips: Vec<IpArg>,
    /// `nameserver=`, in order.
    pub nameservers: Vec<IpAddr>,
    /// `vlan=<name>:<phys>`.
    pub vlans: Vec<Vlan>,
    /// `ifname=<name>:<mac>`: the name the interface with that MAC gets.
    pub ifnames: Vec<(String, [u8; 6])>,
    /// `rd.iscsi.initiator=` (old: `iscsi_initiator=`).
    pub initiator: Option<String>,
    /// The root comes from the firmware's table: `rd.iscsi.firmware[=1]`
    /// (old: `iscsi_firmware`), `rd.iscsi.ibft[=1]`, `ip=ibft`, and
    /// open-iscsi's `iscsi_auto` (ISCSI_AUTO=true in its file).
    pub firmware: bool,
    /// `rd.iscsi.ibft` or `ip=ibft`: the network itself comes from the
    /// iBFT (dracut's network module does this; sanroot reads NIC and
    /// target together, so this cannot be combined with `netroot=`).
    pub ibft_network: bool,
    /// `rd.iscsi.username=`: CHAP name for netroots that carry none.
    pub username: Option<String>,
    /// `rd.iscsi.password=`.
    pub password: Option<Secret>,
    /// `rd.iscsi.in.username=`: the name the target must answer with
    /// (mutual CHAP).
    pub in_username: Option<String>,
    /// `rd.iscsi.in.password=`: the target's secret (mutual CHAP).
    pub in_password: Option<Secret>,
    /// `rd.iscsi.login_retry_max=` (0..=10000).
    pub login_retry_max: Option<u32>,
    /// `rd.iscsi.waitnet=`: wait for every interface before logging in.
    pub waitnet: Option<bool>,
    /// `rd.iscsi.testroute=`: check a route to the target exists first.
    pub testroute: Option<bool>,
    /// `rd.iscsi.param=Key=Value`, in order (open-iscsi node settings).
    pub params: Vec<(String, String)>,
    /// `root=`. For `root=iscsi:…` (dracut's other spelling of netroot)
    /// only "iscsi": the target went to [`Cmdline::netroots`].
    pub root: Option<String>,
    /// Our own options.
    pub sanroot: SanrootOpts,
    /// The target open-iscsi's `iscsi_target_name=` and `iscsi_target_ip=`
    /// describe, when they do (and `iscsi_auto` is not given): it is the
    /// tail of [`Cmdline::netroots`].
    pub open_iscsi: Option<OpenIscsiTarget>,
    /// Options seen but not acted on, for the log: names only (with the
    /// scheme for a non-iSCSI `netroot=`), never values.
    pub ignored: Vec<String>,
}

/// The target Debian open-iscsi's words name (`iscsi_target_name=`,
/// `iscsi_target_ip=`, `iscsi_target_port=`, `iscsi_target_group=`, or
/// ISCSI_TARGET_NAME, … in its file): the last [`OpenIscsiTarget::paths`]
/// entries of [`Cmdline::netroots`], one per address, all LUN 0. open-iscsi
/// logs in to the whole target; sanroot serves one LUN, and takes LUN 0.
/// They carry no credentials of their own: `iscsi_username=` and the like
/// (as `rd.iscsi.username=` …) apply to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenIscsiTarget {
    pub paths: usize,
    /// `iscsi_target_group=`: the portal group tag open-iscsi hands
    /// iscsistart (default 1). Recorded only: sanroot logs in without one
    /// and takes the tag the target answers with.
    pub group: Option<u16>,
    /// The target name came from the settings file, not the command line.
    pub name_from_file: bool,
    /// The addresses came from the settings file, not the command line.
    pub ip_from_file: bool,
}

/// One `netroot=iscsi:…`.
#[derive(Debug, Clone, PartialEq)]
pub struct Netroot {
    /// The portal: an IP literal (the binary has no resolver).
    pub server: IpAddr,
    pub port: u16,
    pub lun: u64,
    /// No LUN was given (an empty LUN field; open-iscsi's words, which name
    /// a whole target): `lun` (0) if it is a disk, else the first disk the
    /// target reports (see [`crate::lun::pick_disk`]).
    pub lun_auto: bool,
    pub target: String,
    /// open-iscsi iface name (recorded; sanroot has no ifaces).
    pub iface: Option<String>,
    /// The interface to reach the target through.
    pub netdev: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Mutual CHAP: the target's name and secret.
    pub in_username: Option<String>,
    pub in_password: Option<Secret>,
}

impl Netroot {
    /// LUN 0 of `target` at `server`:`port`, with nothing else said.
    fn plain(server: IpAddr, port: u16, target: String) -> Netroot {
        Netroot {
            server,
            port,
            lun: 0,
            lun_auto: true,
            target,
            iface: None,
            netdev: None,
            username: None,
            password: None,
            in_username: None,
            in_password: None,
        }
    }
}

/// How an `ip=` configures its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpMethod {
    /// `none`, `off`: static (the address in the argument) or nothing.
    None,
    /// `dhcp`, `on`, `any`.
    Dhcp,
    Dhcp6,
    Auto6,
    Either6,
    Link6,
    SingleDhcp,
    /// `ibft`: from the firmware's table.
    Ibft,
}

impl IpMethod {
    fn parse(s: &str) -> Option<IpMethod> {
        Some(match s {
            "none" | "off" => IpMethod::None,
            "dhcp" | "on" | "any" => IpMethod::Dhcp,
            "dhcp6" => IpMethod::Dhcp6,
            "auto6" => IpMethod::Auto6,
            "either6" => IpMethod::Either6,
            "link6" => IpMethod::Link6,
            "single-dhcp" => IpMethod::SingleDhcp,
            "ibft" => IpMethod::Ibft,
            _ => return None,
        })
    }

    /// dracut's spelling.
    pub fn name(self) -> &'static str {
        match self {
            IpMethod::None => "none",
            IpMethod::Dhcp => "dhcp",
            IpMethod::Dhcp6 => "dhcp6",
            IpMethod::Auto6 => "auto6",
            IpMethod::Either6 => "either6",
            IpMethod::Link6 => "link6",
            IpMethod::SingleDhcp => "single-dhcp",
            IpMethod::Ibft => "ibft",
        }
    }

    /// Configured by a protocol (DHCP, router advertisements) rather than
    /// by the argument itself.
    pub fn is_dynamic(self) -> bool {
        !matches!(self, IpMethod::None | IpMethod::Ibft)
    }
}

/// One `ip=` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpArg {
    pub iface: Option<String>,
    pub method: IpMethod,
    /// Client address and prefix length.
    pub addr: Option<(IpAddr, u8)>,
    pub peer: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
    pub hostname: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// `…:none:<dns1>:<dns2>`.
    pub dns: Vec<IpAddr>,
}

/// `vlan=<name>:<phys>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vlan {
    pub name: String,
    pub parent: String,
    /// From the name, as dracut reads it: `vlan0005`, `vlan5`,
    /// `eth0.0005`, `eth0.5` are all VLAN 5.
    pub id: u16,
}

/// `rd.sanroot=0|1`, `rd.sanroot.bridge=`, `rd.sanroot.timeout=`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SanrootOpts {
    /// `rd.sanroot=0` turns sanroot off (dracut's own iscsi module may
    /// then act), `=1` on; absent: act when the command line or the
    /// firmware asks for an iSCSI root.
    pub enabled: Option<bool>,
    pub bridge: Option<BridgeKind>,
    /// Seconds the first login keeps trying.
    pub timeout: Option<u64>,
    /// `rd.sanroot.retries=`: how many times `sanroot boot` runs in all
    /// (dracut's initqueue job, the minimal init).
    pub retries: Option<u32>,
    /// `rd.sanroot.shutdown_timeout=`: seconds the logout at power-off
    /// may take.
    pub shutdown_timeout: Option<u64>,
    /// `rd.sanroot.nm=native|unmanaged`: how the hand-off treats
    /// NetworkManager ([`super::nm`]; default unmanaged).
    pub nm: Option<super::nm::NmMode>,
}

/// A command line sanroot cannot act on. `arg` is the option's name only;
/// `message` says what is wrong, where, and what to do, and never holds a
/// value that may be (part of) a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineError {
    pub arg: String,
    pub message: String,
    /// Set when the value at fault came from open-iscsi's settings file
    /// ([`parse_with_defaults`]), not from the command line.
    pub file: Option<FileSpot>,
}

/// Where in open-iscsi's settings file a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpot {
    /// The file's name, as the caller gave it.
    pub file: String,
    pub line: usize,
    /// The variable (ISCSI_TARGET_PORT, …).
    pub var: String,
}

impl CmdlineError {
    fn new(arg: &str, message: impl Into<String>) -> CmdlineError {
        CmdlineError {
            arg: arg.to_string(),
            message: message.into(),
            file: None,
        }
    }

    /// Say the value came from the settings file's `from`, if it did.
    fn at(mut self, file: &str, from: Option<&FileWord>) -> CmdlineError {
        if let (None, Some(w)) = (&self.file, from) {
            self.file = Some(FileSpot {
                file: file.to_string(),
                line: w.line,
                var: w.var.to_string(),
            });
        }
        self
    }
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            None => write!(f, "kernel command line, {}=: {}", self.arg, self.message),
            Some(s) => write!(
                f,
                "{}, line {}, {} (read as {}=): {}",
                s.file, s.line, s.var, self.arg, self.message
            ),
        }
    }
}

impl std::error::Error for CmdlineError {}

/// "1st", "2nd", …: which of several same-named options.
fn nth(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, r) if r != 11 => "st",
        (2, r) if r != 12 => "nd",
        (3, r) if r != 13 => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// dracut's getargbool: a bare flag is true, 0/no/off false, anything
/// else true.
fn dracut_bool(v: Option<&str>) -> bool {
    !matches!(v, Some("0" | "no" | "off" | "false"))
}

/// Our own booleans are strict: a typo must not pass silently.
fn strict_bool(arg: &str, v: Option<&str>) -> Result<bool, CmdlineError> {
    match v {
        None | Some("1" | "yes" | "on" | "true") => Ok(true),
        Some("0" | "no" | "off" | "false") => Ok(false),
        Some(other) => Err(CmdlineError::new(
            arg,
            format!("\"{other}\" is not a boolean: write {arg}=1 or {arg}=0"),
        )),
    }
}

/// A whole number of seconds.
fn seconds(arg: &str, v: Option<&str>) -> Result<u64, CmdlineError> {
    let v = need_value(arg, v, "<seconds>")?;
    v.parse::<u64>()
        .map_err(|_| CmdlineError::new(arg, format!("\"{v}\" is not a whole number of seconds")))
}

fn need_value<'a>(arg: &str, v: Option<&'a str>, form: &str) -> Result<&'a str, CmdlineError> {
    v.ok_or_else(|| CmdlineError::new(arg, format!("needs a value: {arg}={form}")))
}

/// Where the dracut module (and sanroot-mkinitramfs) put the secrets file
/// in the initramfs, from the host's file of the same name.
pub const SECRETS_FILE: &str = "/etc/sanroot/secrets";

/// The CHAP settings of a secrets file.
#[derive(Debug, Default)]
pub struct SecretsFile {
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub in_username: Option<String>,
    pub in_password: Option<Secret>,
}

/// A secrets file: `key=value` lines with the kernel arguments' names
/// (`rd.iscsi.username`, `rd.iscsi.password`, `rd.iscsi.in.username`,
/// `rd.iscsi.in.password`); the value is the rest of the line, spaces
/// included; blank lines and `#` comments are skipped. Errors name the
/// line, never a value.
pub fn parse_secrets_file(text: &str) -> Result<SecretsFile, String> {
    let mut f = SecretsFile::default();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            return Err(format!("line {}: not key=value", n + 1));
        };
        let value = value.strip_suffix('\r').unwrap_or(value);
        match key.trim() {
            "rd.iscsi.username" => f.username = non_empty(Some(value)),
            "rd.iscsi.password" => {
                f.password = non_empty(Some(value)).map(|p| Secret::from(p.as_str()))
            }
            "rd.iscsi.in.username" => f.in_username = non_empty(Some(value)),
            "rd.iscsi.in.password" => {
                f.in_password = non_empty(Some(value)).map(|p| Secret::from(p.as_str()))
            }
            other => {
                return Err(format!(
                    "line {}: unknown key \"{}\" (rd.iscsi.username, rd.iscsi.password, rd.iscsi.in.username, rd.iscsi.in.password)",
                    n + 1,
                    other.escape_debug()
                ));
            }
        }
    }
    Ok(f)
}

/// Parse a kernel command line (e.g. the content of /proc/cmdline).
pub fn parse(cmdline: &str) -> Result<Cmdline, CmdlineError> {
    let mut p = Parser::new(OPEN_ISCSI_FILE);
    for (key, val) in split_args(cmdline) {
        p.word(key, val, None)?;
    }
    p.finish()
}

/// Parse a kernel command line with the settings of open-iscsi's file
/// ([`parse_open_iscsi_initramfs`]) as defaults. The file's words are read
/// first, so a command-line word of the same meaning wins, as in
/// open-iscsi's own script. `file` is the file's name for messages: an
/// error over one of its values names the file, the line and the variable
/// ([`CmdlineError::file`]), never the value of a secret.
pub fn parse_with_defaults(
    file: &str,
    defaults: &[FileWord],
    cmdline: &str,
) -> Result<Cmdline, CmdlineError> {
    let mut p = Parser::new(file);
    for w in defaults {
        p.word(w.word, w.value.as_deref(), Some(w))?;
    }
    for (key, val) in split_args(cmdline) {
        p.word(key, val, None)?;
    }
    p.finish()
}

/// One parse under way: what is settled only once every option is read
/// (the last of several wins; `root=iscsi:` comes first; open-iscsi's
/// target words make netroots only when complete).
struct Parser<'a> {
    c: Cmdline,
    /// open-iscsi's settings file, for messages.
    file: &'a str,
    fw_flag: bool,
    ibft_flag: bool,
    bare_netroot: bool,
    root_netroots: Vec<Netroot>,
    netroot_n: usize,
    ip_n: usize,
    open_iscsi: OpenIscsiWords<'a>,
}

impl<'a> Parser<'a> {
    fn new(file: &'a str) -> Parser<'a> {
        Parser {
            c: Cmdline::default(),
            file,
            fw_flag: false,
            ibft_flag: false,
            bare_netroot: false,
            root_netroots: Vec::new(),
            netroot_n: 0,
            ip_n: 0,
            open_iscsi: OpenIscsiWords::default(),
        }
    }

    /// One option; `from` is the file's setting it stands for, if any.
    fn word(
        &mut self,
        key: &'a str,
        val: Option<&'a str>,
        from: Option<&'a FileWord>,
    ) -> Result<(), CmdlineError> {
        let r = match key {
            "netroot" | "root" | "iscsiroot" => self.root_option(key, val),
            "ip" | "nameserver" | "vlan" | "ifname" => self.network_option(key, val),
            k if k.starts_with("rd.sanroot") => self.sanroot_option(key, val),
            k if k.starts_with("rd.iscsi.") || k.starts_with("iscsi_") => {
                self.iscsi_option(key, val, from)
            }
            _ => Ok(()),
        };
        r.map_err(|e| e.at(self.file, from))
    }

    /// `netroot=`, `root=`, `iscsiroot=`.
    fn root_option(&mut self, key: &str, val: Option<&str>) -> Result<(), CmdlineError> {
        let c = &mut self.c;
        match key {
            "netroot" => {
                self.netroot_n += 1;
                match classify_netroot(val.unwrap_or("")) {
                    NetrootKind::Iscsi(rest) => {
                        c.netroots.push(parse_netroot(rest, self.netroot_n)?)
                    }
                    NetrootKind::Bare => self.bare_netroot = true,
                    NetrootKind::Other(scheme) => c.ignored.push(format!("netroot={scheme}")),
                }
            }
            "root" => {
                let v = need_value(key, val, "<device>")?;
                match classify_netroot(v) {
                    NetrootKind::Iscsi(rest) => {
                        self.root_netroots
                            .push(parse_netroot(rest, 0).map_err(|mut e| {
                                e.arg = "root".into();
                                e
                            })?);
                        c.root = Some("iscsi".into());
                    }
                    NetrootKind::Bare => {
                        self.bare_netroot = true;
                        c.root = Some("iscsi".into());
                    }
                    NetrootKind::Other(_) => c.root = Some(v.to_string()),
                }
            }
            _ => {
                // iscsiroot=: dracut's legacy spelling of
                // netroot=iscsi:$iscsiroot.
                let v = need_value(key, val, "<server>:<proto>:<port>:<LUN>:<target>")?;
                self.root_netroots
                    .push(parse_netroot(v, 0).map_err(|mut e| {
                        e.arg = "iscsiroot".into();
                        e
                    })?);
            }
        }
        Ok(())
    }

    /// `ip=`, `nameserver=`, `vlan=`, `ifname=`.
    fn network_option(&mut self, key: &str, val: Option<&str>) -> Result<(), CmdlineError> {
        let c = &mut self.c;
        match key {
            "ip" => {
                self.ip_n += 1;
                let v = need_value(key, val, "dhcp")?;
                let ip = parse_ip(v).map_err(|m| {
                    CmdlineError::new("ip", format!("the {} ip=\"{v}\": {m}", nth(self.ip_n)))
                })?;
                if ip.method == IpMethod::Ibft {
                    self.ibft_flag = true;
                }
                c.ips.push(ip);
            }
            "nameserver" => {
                let v = need_value(key, val, "<IP address>")?;
                let a = parse_addr_literal(v).ok_or_else(|| {
                    CmdlineError::new(
                        key,
                        format!("\"{v}\" is not an IP address (no resolver in the initramfs; IPv6 may be in brackets)"),
                    )
                })?;
                c.nameservers.push(a);
            }
            "vlan" => {
                let v = need_value(key, val, "<name>:<phys>")?;
                c.vlans.push(parse_vlan(v)?);
            }
            _ => {
                let v = need_value(key, val, "<name>:<MAC>")?;
                match parse_ifname(v)? {
                    Some(pair) => c.ifnames.push(pair),
                    // An InfiniBand hardware address (20 bytes): dracut
                    // knows it, sanroot's NIC code does not.
                    None => c.ignored.push("ifname (not an Ethernet MAC)".into()),
                }
            }
        }
        Ok(())
    }

    /// `rd.iscsi.*` and the older `iscsi_*` words (dracut's, and Debian
    /// open-iscsi's initramfs-tools ones).
    fn iscsi_option(
        &mut self,
        key: &'a str,
        val: Option<&'a str>,
        from: Option<&'a FileWord>,
    ) -> Result<(), CmdlineError> {
        let c = &mut self.c;
        match key {
            "rd.iscsi.initiator" | "iscsi_initiator" => {
                let v = need_value(key, val, "<IQN>")?;
                check_iscsi_name(v).map_err(|m| CmdlineError::new(key, m))?;
                c.initiator = Some(v.to_string());
            }
            // open-iscsi's iscsi_auto: the iBFT describes NIC and target,
            // which is what rd.iscsi.firmware asks for.
            "rd.iscsi.firmware" | "iscsi_firmware" | "iscsi_auto" => {
                self.fw_flag = dracut_bool(val)
            }
            "rd.iscsi.ibft" => self.ibft_flag = dracut_bool(val),
            "iscsi_target_name" | "iscsi_target_ip" | "iscsi_target_port"
            | "iscsi_target_group" => self.open_iscsi.set(key, val, from),
            "rd.iscsi.username" | "iscsi_username" => c.username = non_empty(val),
            "rd.iscsi.password" | "iscsi_password" => {
                c.password = non_empty(val).map(|p| Secret::from(p.as_str()))
            }
            "rd.iscsi.in.username" | "iscsi_in_username" => c.in_username = non_empty(val),
            "rd.iscsi.in.password" | "iscsi_in_password" => {
                c.in_password = non_empty(val).map(|p| Secret::from(p.as_str()))
            }
            "rd.iscsi.login_retry_max" => {
                let v = need_value(key, val, "<count>")?;
                let n = v.parse::<u32>().ok().filter(|n| *n <= MAX_LOGIN_RETRY);
                c.login_retry_max = Some(n.ok_or_else(|| {
                    CmdlineError::new(
                        key,
                        format!("\"{v}\" is not a number of retries from 0 to {MAX_LOGIN_RETRY}"),
                    )
                })?);
            }
            "rd.iscsi.waitnet" => c.waitnet = Some(dracut_bool(val)),
            "rd.iscsi.testroute" => c.testroute = Some(dracut_bool(val)),
            "rd.iscsi.param" | "iscsi_param" => {
                let v = need_value(key, val, "<key>=<value>")?;
                c.params.push(parse_param(key, v)?);
            }
            // dracut options sanroot does not implement (rd.iscsi.mp,
            // rd.iscsi.transport, rd.iscsi.target.*). Names only: a value
            // may be a secret.
            k if k.starts_with("rd.iscsi.") => c.ignored.push(k.to_string()),
            _ => {}
        }
        Ok(())
    }

    /// `rd.sanroot` and `rd.sanroot.*`.
    fn sanroot_option(&mut self, key: &str, val: Option<&str>) -> Result<(), CmdlineError> {
        let s = &mut self.c.sanroot;
        match key {
            "rd.sanroot" => s.enabled = Some(strict_bool(key, val)?),
            "rd.sanroot.bridge" => {
                let v = need_value(key, val, "auto|ublk|nbd")?;
                s.bridge = Some(match v {
                    "auto" => BridgeKind::Auto,
                    "ublk" => BridgeKind::Ublk,
                    "nbd" => BridgeKind::Nbd,
                    other => {
                        return Err(CmdlineError::new(
                            key,
                            format!("\"{other}\" is not a bridge: write auto, ublk or nbd"),
                        ));
                    }
                });
            }
            "rd.sanroot.timeout" => s.timeout = Some(seconds(key, val)?),
            "rd.sanroot.shutdown_timeout" => s.shutdown_timeout = Some(seconds(key, val)?),
            "rd.sanroot.nm" => {
                let v = need_value(key, val, "native|unmanaged")?;
                s.nm = Some(super::nm::NmMode::parse(v).ok_or_else(|| {
                    CmdlineError::new(
                        key,
                        format!("\"{v}\" is not a NetworkManager mode: write native or unmanaged"),
                    )
                })?);
            }
            "rd.sanroot.retries" => {
                let v = need_value(key, val, "<count>")?;
                s.retries = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| {
                            CmdlineError::new(key, format!("\"{v}\" is not a count from 1 to 100"))
                        })?,
                );
            }
            k if k.starts_with("rd.sanroot.") => {
                return Err(CmdlineError::new(
                    k,
                    "unknown sanroot option: the known ones are rd.sanroot=0|1, rd.sanroot.bridge=auto|ublk|nbd, rd.sanroot.timeout=<seconds>, rd.sanroot.retries=<count>, rd.sanroot.shutdown_timeout=<seconds>, rd.sanroot.nm=native|unmanaged",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<Cmdline, CmdlineError> {
        let mut c = self.c;
        c.firmware = self.fw_flag || self.ibft_flag;
        c.ibft_network = self.ibft_flag;
        if !self.root_netroots.is_empty() {
            let mut first = self.root_netroots;
            first.append(&mut c.netroots);
            c.netroots = first;
        }
        if self.bare_netroot && !c.firmware {
            return Err(CmdlineError::new(
                "netroot",
                "netroot=iscsi names no target: write netroot=iscsi:<server>::<port>:<LUN>:<target>, or add rd.iscsi.firmware to boot from the firmware's table",
            ));
        }
        // With iscsi_auto open-iscsi's script takes the iBFT alone and
        // never looks at the target words: neither does sanroot.
        if !c.firmware
            && let Some((mut netroots, target)) = self.open_iscsi.target(self.file)?
        {
            c.netroots.append(&mut netroots);
            c.open_iscsi = Some(target);
        }
        Ok(c)
    }
}

/// One of open-iscsi's target words, and the file's setting it came from
/// (`None`: the command line).
#[derive(Clone, Copy)]
struct Given<'a> {
    value: &'a str,
    from: Option<&'a FileWord>,
}

impl Given<'_> {
    fn error(&self, arg: &str, message: String, file: &str) -> CmdlineError {
        CmdlineError::new(arg, message).at(file, self.from)
    }

    /// "iscsi_target_name= (kernel command line)" or
    /// "ISCSI_TARGET_NAME (/etc/iscsi.initramfs, line 3)".
    fn origin(&self, arg: &str, file: &str) -> String {
        match self.from {
            Some(w) => format!("{} ({file}, line {})", w.var, w.line),
            None => format!("{arg}= (kernel command line)"),
        }
    }
}

/// `iscsi_target_name=`, `iscsi_target_ip=`, `iscsi_target_port=`,
/// `iscsi_target_group=`: the last of each, as open-iscsi's loop keeps it.
#[derive(Default)]
struct OpenIscsiWords<'a> {
    name: Option<Given<'a>>,
    ip: Option<Given<'a>>,
    port: Option<Given<'a>>,
    group: Option<Given<'a>>,
}

impl<'a> OpenIscsiWords<'a> {
    /// open-iscsi reads `word=value` only (a bare word is no assignment);
    /// an empty value unsets, as it does in the shell.
    fn set(&mut self, key: &str, val: Option<&'a str>, from: Option<&'a FileWord>) {
        let Some(value) = val else { return };
        let g = Some(Given { value, from }).filter(|_| !value.trim().is_empty());
        match key {
            "iscsi_target_name" => self.name = g,
            "iscsi_target_ip" => self.ip = g,
            "iscsi_target_port" => self.port = g,
            _ => self.group = g,
        }
    }

    /// The netroots the words describe, one per address, LUN 0 (open-iscsi
    /// logs in to the whole target; sanroot serves one LUN), or `None`
    /// when they name no target. Half a target is an error: open-iscsi
    /// would silently log in to nothing, and the boot stop later with no
    /// word of why.
    fn target(&self, file: &str) -> Result<Option<(Vec<Netroot>, OpenIscsiTarget)>, CmdlineError> {
        let (name, ip) = match (self.name, self.ip) {
            (None, None) => return Ok(None),
            (Some(n), Some(i)) => (n, i),
            (Some(n), None) => return Err(half_target(true, n, file)),
            (None, Some(i)) => return Err(half_target(false, i, file)),
        };
        check_iscsi_name(name.value).map_err(|m| name.error("iscsi_target_name", m, file))?;
        let servers = portal_addrs(ip.value).map_err(|m| ip.error("iscsi_target_ip", m, file))?;
        let port = match self.port {
            None => DEFAULT_PORT,
            Some(p) => p
                .value
                .parse::<u16>()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| {
                    let m = format!(
                        "{} is not a port: write 1 to 65535, or leave it out for 3260",
                        quoted(p.value)
                    );
                    p.error("iscsi_target_port", m, file)
                })?,
        };
        let group = match self.group {
            None => None,
            Some(g) => Some(g.value.parse::<u16>().map_err(|_| {
                let m = format!(
                    "{} is not a target portal group tag: write a number from 0 to 65535, or leave it out for 1",
                    quoted(g.value)
                );
                g.error("iscsi_target_group", m, file)
            })?),
        };
        let netroots: Vec<Netroot> = servers
            .into_iter()
            .map(|s| Netroot::plain(s, port, name.value.to_string()))
            .collect();
        let target = OpenIscsiTarget {
            paths: netroots.len(),
            group,
            name_from_file: name.from.is_some(),
            ip_from_file: ip.from.is_some(),
        };
        Ok(Some((netroots, target)))
    }
}

/// A target name without an address (`have_name`), or the other way
/// round: say which word is missing, where the other one was, and what to
/// write.
fn half_target(have_name: bool, given: Given<'_>, file: &str) -> CmdlineError {
    let (have, names, missing, var, form) = if have_name {
        (
            "iscsi_target_name",
            "the target",
            "iscsi_target_ip",
            "ISCSI_TARGET_IP",
            "<portal IP address>",
        )
    } else {
        (
            "iscsi_target_ip",
            "the portal",
            "iscsi_target_name",
            "ISCSI_TARGET_NAME",
            "<iqn. name>",
        )
    };
    CmdlineError::new(
        missing,
        format!(
            "{} names {names}, but no {missing}= goes with it: add {missing}={form} to the command line (or {var}= to {file}), or iscsi_auto to take the target from the iBFT (open-iscsi would silently log in to nothing here)",
            given.origin(have, file)
        ),
    )
}

/// The addresses of `iscsi_target_ip=`: IP literals (IPv6 with or without
/// brackets) separated by blanks, as open-iscsi's `for target_ip in
/// $ISCSI_TARGET_IP` splits them. Each is one path to the same LU; a
/// repeated one is dropped (two sessions through one portal are no second
/// path). The error completes "kernel command line, iscsi_target_ip=: …".
fn portal_addrs(v: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for a in v.split_ascii_whitespace() {
        let ip = parse_addr_literal(a).ok_or_else(|| {
            format!(
                "{} is not an IP address: write the portal's IPv4 or IPv6 address (several separated by spaces); there is no resolver in the initramfs",
                quoted(a)
            )
        })?;
        if out.contains(&ip) {
            continue;
        }
        if out.len() == MAX_TARGET_IPS {
            return Err(format!(
                "more than {MAX_TARGET_IPS} addresses: name the few portals the root disk is reached through"
            ));
        }
        out.push(ip);
    }
    if out.is_empty() {
        return Err("holds no address: write iscsi_target_ip=<portal IP address>".into());
    }
    Ok(out)
}

/// A value for a message: quoted, escaped, cut at 64 characters (a hostile
/// command line or file must not fill the log).
fn quoted(v: &str) -> String {
    let cut: String = v.chars().take(64).collect();
    let more = if v.chars().nth(64).is_some() {
        "…"
    } else {
        ""
    };
    format!("\"{}{more}\"", cut.escape_debug())
}

fn non_empty(v: Option<&str>) -> Option<String> {
    v.filter(|s| !s.is_empty()).map(str::to_string)
}

enum NetrootKind<'a> {
    /// After "iscsi:".
    Iscsi(&'a str),
    /// `netroot=iscsi` alone (with rd.iscsi.firmware).
    Bare,
    /// Another scheme, or an unrecognisable value: what to log.
    Other(String),
}

fn classify_netroot(v: &str) -> NetrootKind<'_> {
    if v == "iscsi" || v == "iscsi:" {
        return NetrootKind::Bare;
    }
    if let Some(rest) = v.strip_prefix("iscsi:") {
        return NetrootKind::Iscsi(rest);
    }
    // Log the scheme only ("nfs", "nbd", "dhcp"); anything else might be
    // a mistyped value holding a password.
    let scheme = v.split(':').next().unwrap_or("");
    let safe = !scheme.is_empty()
        && scheme.len() <= 16
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric());
    NetrootKind::Other(if safe {
        scheme.to_string()
    } else {
        "…".to_string()
    })
}

/// Parse what follows `iscsi:` the way dracut's parse_iscsi_root does:
///
/// 1. Credentials when the value has an '@' followed by at least four
///    ':': everything before the first '@', split on ':' into
///    user:password or user:password:in_user:in_password. So a password
///    can hold neither ':' nor '@' (dracut has the same limit); those
///    go in rd.iscsi.password=.
/// 2. The server: `[IPv6]:` or everything up to the next ':'.
/// 3. The target name: from the last ":iqn." (else ":eui.", else
///    ":naa.") to the end, so a name's own ':' are kept. What is left is
///    protocol:port, then LUN, netdev:LUN or iface:netdev:LUN.
/// 4. Without such a name: protocol:port, then iface:netdev when at least
///    four fields follow and the third is empty or a number, then the
///    LUN, and the rest (colons and all) is the target.
fn parse_netroot(v: &str, n: usize) -> Result<Netroot, CmdlineError> {
    // With credentials present, no field is echoed: a password holding
    // '@' or ':' is cut at the wrong place and lands in another field.
    let redact = v.contains('@');
    let which = if n == 0 {
        "the iSCSI root".to_string()
    } else {
        format!("the {} netroot=", nth(n))
    };
    // "the port \"99999\" is not a port: write …"; the value only
    // when no credentials are around.
    let err = |subject: &str, value: &str, rest: &str| {
        let shown = if redact || value.is_empty() {
            String::new()
        } else {
            format!(" \"{value}\"")
        };
        CmdlineError::new("netroot", format!("{which}: {subject}{shown} {rest}"))
    };

    let mut nr = Netroot::plain(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        DEFAULT_PORT,
        String::new(),
    );

    let mut rest = v;
    if let Some(at) = v.find('@') {
        let after = v.get(at + 1..).unwrap_or("");
        if after.matches(':').count() >= 4 {
            let auth = v.get(..at).unwrap_or("");
            rest = after;
            // dracut allows an empty "@" so a target name may hold one.
            if !auth.is_empty() {
                let f: Vec<&str> = auth.split(':').collect();
                match f.as_slice() {
                    [u, p] => {
                        nr.username = Some(u.to_string()).filter(|s| !s.is_empty());
                        nr.password = Some(Secret::from(*p)).filter(|s| !s.is_empty());
                    }
                    [u, p, iu, ip] => {
                        nr.username = Some(u.to_string()).filter(|s| !s.is_empty());
                        nr.password = Some(Secret::from(*p)).filter(|s| !s.is_empty());
                        nr.in_username = Some(iu.to_string()).filter(|s| !s.is_empty());
                        nr.in_password = Some(Secret::from(*ip)).filter(|s| !s.is_empty());
                    }
                    _ => {
                        return Err(CmdlineError::new(
                            "netroot",
                            format!(
                                "{which}: the credentials before '@' have {} ':'-separated fields; write user:password@ or user:password:target_user:target_password@ (a password containing ':' or '@' cannot be written here: use rd.iscsi.password= / rd.iscsi.in.password=)",
                                f.len()
                            ),
                        ));
                    }
                }
            }
        }
    }

    // The server.
    let server_str;
    let bracketed;
    if let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find("]:") else {
            return Err(err(
                "the IPv6 server",
                rest,
                "has no closing \"]:\": write it as [2001:db8::1]:",
            ));
        };
        server_str = inner.get(..close).unwrap_or("");
        rest = inner.get(close + 2..).unwrap_or("");
        bracketed = true;
    } else {
        let Some(colon) = rest.find(':') else {
            return Err(err(
                "the value",
                rest,
                "has too few fields: write netroot=iscsi:<server>:[<protocol>]:[<port>]:[<LUN>]:<target>",
            ));
        };
        server_str = rest.get(..colon).unwrap_or("");
        rest = rest.get(colon + 1..).unwrap_or("");
        bracketed = false;
    }
    nr.server = parse_server(server_str, bracketed).map_err(|problem| {
        if redact && server_str.contains('@') {
            CmdlineError::new(
                "netroot",
                format!(
                    "{which}: the server field holds an '@': a CHAP password containing '@' cannot be written in netroot= (dracut splits at the first '@'); put the credentials in rd.iscsi.username= and rd.iscsi.password="
                ),
            )
        } else {
            err("the server", server_str, problem)
        }
    })?;

    // The target name, and the fields before it.
    let named = [":iqn.", ":eui.", ":naa."]
        .iter()
        .find_map(|p| rest.rfind(p))
        .and_then(|pos| Some((rest.get(..pos)?, rest.get(pos + 1..)?)));
    let (proto, port, iface, netdev, lun, target);
    if let Some((fields, name)) = named {
        let f: Vec<&str> = fields.split(':').collect();
        proto = f.first().copied().unwrap_or("");
        port = f.get(1).copied().unwrap_or("");
        let more = f.get(2..).unwrap_or(&[]);
        (iface, netdev, lun) = match more {
            [] => ("", "", ""),
            [l] => ("", "", *l),
            [d, l] => ("", *d, *l),
            [i, d, l] => (*i, *d, *l),
            _ => {
                return Err(err(
                    "the fields before the target name",
                    fields,
                    "are too many: write <server>:<protocol>:<port>[:<iface>:<netdev>]:<LUN>:<target>",
                ));
            }
        };
        target = name.to_string();
    } else {
        // dracut's `set $v`: a trailing ':' makes no empty last field.
        let trimmed = rest.strip_suffix(':').unwrap_or(rest);
        let f: Vec<&str> = trimmed.split(':').collect();
        proto = f.first().copied().unwrap_or("");
        port = f.get(1).copied().unwrap_or("");
        let mut more = f.get(2..).unwrap_or(&[]);
        let mut i = "";
        let mut d = "";
        if let [a, b, c, _, ..] = more
            && !(a.is_empty() && b.is_empty())
            && (c.is_empty() || c.parse::<u64>().is_ok())
        {
            i = a;
            d = b;
            more = more.get(2..).unwrap_or(&[]);
        }
        iface = i;
        netdev = d;
        lun = more.first().copied().unwrap_or("");
        target = more.get(1..).unwrap_or(&[]).join(":");
    }

    match proto {
        "" | "6" => {}
        other => {
            return Err(err(
                "the protocol",
                other,
                "is not supported: only 6 (TCP) is; leave the field empty",
            ));
        }
    }
    if !port.is_empty() {
        nr.port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                err(
                    "the port",
                    port,
                    "is not a port: write 1 to 65535, or leave it empty for 3260",
                )
            })?;
    }
    if !lun.is_empty() {
        nr.lun = lun.parse::<u64>().map_err(|_| {
            err(
                "the LUN",
                lun,
                "is not a decimal number: write it as dracut reads it (0, 1, 2, …), or leave it empty for LUN 0 (or the target's first disk when LUN 0 is none)",
            )
        })?;
        nr.lun_auto = false;
    }
    nr.iface = Some(iface.to_string()).filter(|s| !s.is_empty());
    if !netdev.is_empty() {
        check_ifname(netdev).map_err(|m| {
            err(
                "the netdev",
                netdev,
                &format!("is not an interface name: {m}"),
            )
        })?;
        nr.netdev = Some(netdev.to_string());
    }
    if target.is_empty() {
        return Err(CmdlineError::new(
            "netroot",
            format!(
                "{which}: no target name: end netroot= with the target's iqn./eui./naa. name (discovery without one is not supported)"
            ),
        ));
    }
    check_iscsi_name(&target).map_err(|m| {
        if redact {
            CmdlineError::new(
                "netroot",
                format!("{which}: the target name is not valid: write an iqn., eui. or naa. name"),
            )
        } else {
            CmdlineError::new("netroot", format!("{which}: {m}"))
        }
    })?;
    nr.target = target;
    Ok(nr)
}

/// The portal address. The error completes "the server \"x\" …".
fn parse_server(s: &str, bracketed: bool) -> Result<IpAddr, &'static str> {
    if s.is_empty() {
        return Err(
            "is missing: sanroot needs the portal's address (discovery from the target name alone, RFC 4173's DHCP form, is not supported)",
        );
    }
    if s.contains('%') {
        return Err(
            "has a zone (%IFNAME): a boot path's interface comes from ip= and its portal must be routable, so link-local portals are not taken here; write the target's global or unique-local IPv6 address",
        );
    }
    if bracketed {
        let a = s.parse::<IpAddr>().map_err(
            |_| "is not an IP address: write an IPv6 address in brackets, e.g. [2001:db8::1]",
        )?;
        if crate::url::is_v6_link_local(&a) {
            return Err(
                "is a link-local IPv6 address: a boot path's portal must be routable (a link-local one needs a zone, which netroot= cannot carry); write the target's global or unique-local address",
            );
        }
        return Ok(a);
    }
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(IpAddr::V4(a));
    }
    if s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "is not an IP address: an IPv6 address must be in brackets, e.g. [2001:db8::1]",
        );
    }
    Err(
        "is a host name, not an IP address: sanroot is a static binary with no resolver in the initramfs; write the target's IPv4 address, or its IPv6 address in brackets",
    )
}

/// RFC 7143 §4.2.7: an iSCSI name is iqn./eui./naa., at most 223 bytes,
/// without spaces or control characters.
fn check_iscsi_name(s: &str) -> Result<(), String> {
    let lower = s.to_ascii_lowercase();
    if !(lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa.")) {
        return Err(format!(
            "\"{s}\" is not an iSCSI name: it must start with iqn., eui. or naa."
        ));
    }
    if s.len() > MAX_ISCSI_NAME {
        return Err(format!(
            "the iSCSI name is {} bytes long; RFC 7143 allows {MAX_ISCSI_NAME}",
            s.len()
        ));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "\"{}\" holds a space or a control character",
            s.escape_debug()
        ));
    }
    Ok(())
}

/// The kernel's dev_valid_name(): 1 to 15 bytes, not "." or "..", no
/// '/', ':' or whitespace.
fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err("an interface name is 1 to 15 bytes long".into());
    }
    if s == "." || s == ".." {
        return Err("\".\" and \"..\" are not interface names".into());
    }
    if s.bytes()
        .any(|b| b == b'/' || b == b':' || is_space(b) || b.is_ascii_control())
    {
        return Err("an interface name holds no '/', ':', space or control character".into());
    }
    Ok(())
}

/// An IP literal, IPv6 optionally in brackets.
fn parse_addr_literal(s: &str) -> Option<IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse().ok()
}

/// One ':'-separated field of ip=, with whether it was `[…]`.
#[derive(Clone, Copy)]
struct Field<'a> {
    text: &'a str,
    bracketed: bool,
}

/// Split ip='s value as dracut's ip_to_var does: on ':', except inside
/// `[…]`; a trailing ':' makes no empty last field.
fn ip_fields(v: &str) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let close = inner
                .find(']')
                .ok_or("a '[' without its ']': write IPv6 addresses as [2001:db8::1]")?;
            out.push(Field {
                text: inner.get(..close).unwrap_or(""),
                bracketed: true,
            });
            let after = inner.get(close + 1..).unwrap_or("");
            if after.is_empty() {
                break;
            }
            rest = after
                .strip_prefix(':')
                .ok_or("a ']' must be followed by ':' or the end")?;
        } else {
            match rest.find(':') {
                Some(i) => {
                    out.push(Field {
                        text: rest.get(..i).unwrap_or(""),
                        bracketed: false,
                    });
                    rest = rest.get(i + 1..).unwrap_or("");
                }
                None => {
                    out.push(Field {
                        text: rest,
                        bracketed: false,
                    });
                    rest = "";
                }
            }
        }
    }
    Ok(out)
}

fn field_ip(f: Option<&Field<'_>>, what: &str) -> Result<Option<IpAddr>, String> {
    let Some(f) = f else { return Ok(None) };
    if f.text.is_empty() {
        return Ok(None);
    }
    let ok = if f.bracketed {
        f.text.parse::<IpAddr>().ok()
    } else {
        f.text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    };
    ok.map(Some).ok_or_else(|| {
        format!(
            "the {what} \"{}\" is not an IP address (IPv6 goes in brackets; no host names)",
            f.text
        )
    })
}

fn looks_like_addr(f: &Field<'_>) -> bool {
    f.bracketed || f.text.parse::<Ipv4Addr>().is_ok()
}

/// Parse one ip= value (dracut.cmdline(7)):
/// `{dhcp|on|any|dhcp6|auto6|either6|link6|single-dhcp|ibft}`,
/// `<iface>:<method>[:[<mtu>][:<mac>]]`,
/// `<client>:[<peer>]:<gateway>:<netmask>:<hostname>:<iface>:<method>[:[<mtu>][:<mac>]]`
/// and `…:{none|off}:[<dns1>][:<dns2>]`. Errors are phrases.
fn parse_ip(v: &str) -> Result<IpArg, String> {
    let f = ip_fields(v)?;
    let text = |i: usize| f.get(i).map(|x| x.text).unwrap_or("");
    let mut ip = IpArg {
        iface: None,
        method: IpMethod::None,
        addr: None,
        peer: None,
        gateway: None,
        hostname: None,
        mtu: None,
        mac: None,
        dns: Vec::new(),
    };
    let method = |s: &str| -> Result<IpMethod, String> {
        // dracut also takes a list ("dhcp,dhcp6"): they are all "someone
        // else configures it" to sanroot, so the first one stands.
        let first = s.split(',').next().unwrap_or("");
        let m = IpMethod::parse(first).ok_or_else(|| {
            format!(
                "\"{s}\" is not a method: write none, off, dhcp, on, any, dhcp6, auto6, either6, link6, single-dhcp or ibft"
            )
        })?;
        if s.contains(',')
            && !s
                .split(',')
                .all(|x| IpMethod::parse(x).is_some_and(IpMethod::is_dynamic))
        {
            return Err(format!(
                "\"{s}\": only dynamic methods can be listed together"
            ));
        }
        Ok(m)
    };
    match f.as_slice() {
        [] => return Err(
            "empty: write ip=dhcp or ip=<client>::<gateway>:<netmask>:<hostname>:<interface>:none"
                .into(),
        ),
        [one] => {
            if one.text.parse::<Ipv4Addr>().is_ok() {
                return Err("the address-only form (anaconda's ip=<address> with gateway=, netmask=) is not supported: write ip=<client>::<gateway>:<netmask>:<hostname>:<interface>:none".into());
            }
            ip.method = method(one.text)?;
            return Ok(ip);
        }
        _ => {}
    }
    let second_is_method = f.get(1).is_some_and(|x| {
        !x.bracketed && IpMethod::parse(x.text.split(',').next().unwrap_or("")).is_some()
    });
    let extras_from;
    if second_is_method && !f.first().is_some_and(looks_like_addr) {
        // <iface>:<method>[:[<mtu>][:<mac>]]
        if !text(0).is_empty() {
            check_ifname(text(0)).map_err(|m| format!("the interface \"{}\": {m}", text(0)))?;
            ip.iface = Some(text(0).to_string());
        }
        ip.method = method(text(1))?;
        extras_from = 2;
    } else {
        // <client>:[<peer>]:<gateway>:<netmask>:<hostname>:<iface>:<method>
        let (client, inline_prefix) = match f.first() {
            Some(c) if !c.text.is_empty() => {
                let (a, p) = match c.text.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (c.text, None),
                };
                let addr = field_ip(
                    Some(&Field {
                        text: a,
                        bracketed: c.bracketed,
                    }),
                    "client address",
                )?;
                let prefix = match p {
                    Some(p) => Some(
                        p.parse::<u8>()
                            .map_err(|_| format!("the prefix length \"{p}\" is not a number"))?,
                    ),
                    None => None,
                };
                (addr, prefix)
            }
            _ => (None, None),
        };
        ip.peer = field_ip(f.get(1), "peer")?;
        ip.gateway = field_ip(f.get(2), "gateway")?;
        let mask = f.get(3).filter(|m| !m.text.is_empty());
        if let Some(a) = client {
            let prefix = match (mask, inline_prefix) {
                (Some(m), _) => parse_netmask(m, a)?,
                (None, Some(p)) => p,
                // `ip addr add` without a mask: a host address. The
                // gateway then gets the "onlink" flag (src/net).
                (None, None) => max_prefix(a),
            };
            if prefix > max_prefix(a) {
                return Err(format!("the prefix length {prefix} is too long for {a}"));
            }
            ip.addr = Some((a, prefix));
        } else if mask.is_some() {
            return Err("a netmask without a client address".into());
        }
        if let (Some((a, _)), Some(g)) = (ip.addr, ip.gateway)
            && a.is_ipv4() != g.is_ipv4()
        {
            return Err(format!(
                "the gateway {g} is not of the address {a}'s family"
            ));
        }
        if !text(4).is_empty() {
            ip.hostname = Some(text(4).to_string());
        }
        if !text(5).is_empty() {
            check_ifname(text(5)).map_err(|m| format!("the interface \"{}\": {m}", text(5)))?;
            ip.iface = Some(text(5).to_string());
        }
        ip.method = if text(6).is_empty() {
            if ip.addr.is_none() {
                return Err(
                    "no method: end the 7 fields with none (static), dhcp, dhcp6, auto6 or ibft"
                        .into(),
                );
            }
            IpMethod::None
        } else {
            method(text(6))?
        };
        // …:{none|off}:<dns1>[:<dns2>]
        if let Some(d) = f.get(7).filter(|d| looks_like_addr(d)) {
            ip.dns.extend(field_ip(Some(d), "DNS server")?);
            ip.dns.extend(field_ip(f.get(8), "second DNS server")?);
            if f.len() > 9 {
                return Err("too many fields after the two DNS servers".into());
            }
            return Ok(ip);
        }
        extras_from = 7;
    }
    // [:[<mtu>][:<macaddr>]]
    let extras = f.get(extras_from..).unwrap_or(&[]);
    if let Some(m) = extras.first().filter(|m| !m.text.is_empty()) {
        ip.mtu = Some(
            m.text
                .parse::<u32>()
                .ok()
                .filter(|n| (68..=65535).contains(n))
                .ok_or_else(|| {
                    format!("the MTU \"{}\" is not a number from 68 to 65535", m.text)
                })?,
        );
    }
    let mac_parts: Vec<&str> = extras
        .get(1..)
        .unwrap_or(&[])
        .iter()
        .map(|x| x.text)
        .collect();
    match mac_parts.len() {
        0 => {}
        1 | 6 => {
            let joined = mac_parts.join(":");
            if !joined.is_empty() {
                ip.mac = Some(parse_mac(&joined).ok_or_else(|| {
                    format!("\"{joined}\" is not a MAC address (write 52:54:00:12:34:56)")
                })?);
            }
        }
        _ => return Err("too many fields after the MTU: the MAC address is six hex bytes".into()),
    }
    Ok(ip)
}

fn max_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

/// A dotted (or IPv6) mask, or a prefix length, for address `a`.
fn parse_netmask(m: &Field<'_>, a: IpAddr) -> Result<u8, String> {
    if let Ok(p) = m.text.parse::<u8>() {
        return if p <= max_prefix(a) {
            Ok(p)
        } else {
            Err(format!("the prefix length {p} is too long for {a}"))
        };
    }
    let bits: u128 = match (a, m.text.parse::<IpAddr>()) {
        (IpAddr::V4(_), Ok(IpAddr::V4(mask))) => u128::from(u32::from(mask)) << 96,
        (IpAddr::V6(_), Ok(IpAddr::V6(mask))) => u128::from(mask),
        (_, Ok(_)) => {
            return Err(format!(
                "the netmask \"{}\" is not of the address {a}'s family",
                m.text
            ));
        }
        (_, Err(_)) => {
            return Err(format!(
                "the netmask \"{}\" is neither a mask (255.255.255.0) nor a prefix length (24)",
                m.text
            ));
        }
    };
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(format!("the netmask \"{}\" is not contiguous", m.text));
    }
    // u128::leading_ones() is at most 128.
    Ok(u8::try_from(ones).unwrap_or(128).min(max_prefix(a)))
}

/// `vlan=<name>:<phys>`; the id from the name as dracut's ifup reads it.
fn parse_vlan(v: &str) -> Result<Vlan, CmdlineError> {
    let err = |m: String| CmdlineError::new("vlan", format!("\"{v}\": {m}"));
    let (name, parent) = v.split_once(':').ok_or_else(|| {
        err("write vlan=<vlan name>:<physical interface>, e.g. vlan=eth0.100:eth0".into())
    })?;
    check_ifname(name).map_err(|m| err(format!("the VLAN name: {m}")))?;
    check_ifname(parent).map_err(|m| err(format!("the physical interface: {m}")))?;
    let digits = name
        .strip_prefix("vlan")
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .or_else(|| {
            name.rsplit_once('.')
                .map(|(_, d)| d)
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .ok_or_else(|| {
            err("the VLAN id cannot be read from the name: name it <phys>.<id> or vlan<id> (eth0.100, vlan0100)".into())
        })?;
    let id = digits
        .parse::<u16>()
        .ok()
        .filter(|id| (1..=4094).contains(id))
        .ok_or_else(|| err(format!("VLAN id {digits} is outside 1..4094")))?;
    Ok(Vlan {
        name: name.to_string(),
        parent: parent.to_string(),
        id,
    })
}

/// `ifname=<name>:<mac>`. `None` for a 20-byte InfiniBand address.
fn parse_ifname(v: &str) -> Result<Option<(String, [u8; 6])>, CmdlineError> {
    let err = |m: String| CmdlineError::new("ifname", format!("\"{v}\": {m}"));
    let (name, mac) = v.split_once(':').ok_or_else(|| {
        err("write ifname=<name>:<MAC>, e.g. ifname=bootnet:52:54:00:12:34:56".into())
    })?;
    check_ifname(name).map_err(|m| err(format!("the name: {m}")))?;
    if mac.split(':').count() == 20 {
        return Ok(None);
    }
    let mac = parse_mac(mac)
        .ok_or_else(|| err("not a MAC address: write six hex bytes, 52:54:00:12:34:56".into()))?;
    Ok(Some((name.to_string(), mac)))
}

/// `rd.iscsi.param=Key=Value`. CHAP settings are refused: they would end
/// up in a plain string, and netroot=/rd.iscsi.* already carry them.
fn parse_param(arg: &str, v: &str) -> Result<(String, String), CmdlineError> {
    let (k, val) = v.split_once('=').ok_or_else(|| {
        CmdlineError::new(
            arg,
            "write rd.iscsi.param=<key>=<value>, e.g. rd.iscsi.param=node.session.timeo.replacement_timeout=30",
        )
    })?;
    if k.is_empty() {
        return Err(CmdlineError::new(
            arg,
            "the open-iscsi key is empty: write rd.iscsi.param=<key>=<value>",
        ));
    }
    let lk = k.to_ascii_lowercase();
    if lk.contains("auth.") || lk.contains("password") || lk.contains("chap") {
        return Err(CmdlineError::new(
            arg,
            format!(
                "{k}: CHAP settings are not taken from rd.iscsi.param; use netroot=iscsi:<user>:<password>@… or rd.iscsi.username=/rd.iscsi.password="
            ),
        ));
    }
    Ok((k.to_string(), val.to_string()))
}

impl Cmdline {
    /// Take CHAP settings the command line does not give from the
    /// initramfs' secrets file ([`parse_secrets_file`]): a secret there
    /// is not in /proc/cmdline for every user of the machine to read.
    /// The command line wins where both give one.
    pub fn add_secrets(&mut self, f: SecretsFile) {
        if self.username.is_none() {
            self.username = f.username;
        }
        if self.password.is_none() {
            self.password = f.password;
        }
        if self.in_username.is_none() {
            self.in_username = f.in_username;
        }
        if self.in_password.is_none() {
            self.in_password = f.in_password;
        }
    }

    /// True when the command line asks for an iSCSI root at all.
    pub fn wants_iscsi(&self) -> bool {
        !self.netroots.is_empty() || self.firmware
    }

    /// The boot paths the netroot= arguments describe, one per netroot in
    /// order, with ip=/nameserver=/vlan=/ifname= applied and
    /// rd.iscsi.username/password (and in.) as defaults for netroots
    /// without credentials (per direction, as dracut does).
    ///
    /// The NIC of a path: with no ip= at all, `None` (the network is up
    /// already, or nobody's business). Otherwise the ip= naming the
    /// netroot's netdev, else the static ip= whose subnet holds the
    /// target, else the first static one, else the first. A static ip=
    /// (none/off) gives a [`NicOrigin::Static`] NIC with its address,
    /// gateway, DNS (plus nameserver=) and a host route to the target; a
    /// dynamic one (dhcp, auto6, …) a [`NicOrigin::External`] NIC without
    /// an address: someone else configures it, the flow waits for it.
    /// When the interface is a vlan=, [`BootNic::ifname`] is its physical
    /// parent and `config.vlan` its id (src/net creates `<parent>.<id>`).
    /// The MAC comes from ip='s macaddr, else ifname=, else stays zero
    /// (the flow finds the link by name).
    ///
    /// Paths from open-iscsi's words come last ([`Cmdline::open_iscsi`]).
    pub fn boot_paths(&self) -> Result<Vec<BootPath>, CmdlineError> {
        if !self.netroots.is_empty() {
            let ibft_ip = self.ips.iter().any(|i| i.method == IpMethod::Ibft);
            if ibft_ip || self.ibft_network {
                return Err(CmdlineError::new(
                    if ibft_ip { "ip" } else { "rd.iscsi.ibft" },
                    "the network from the iBFT cannot be combined with netroot=: sanroot reads the NIC and the target from the table together; use rd.iscsi.firmware and drop netroot=, or describe the NIC with ip=<client>::<gateway>:<netmask>:<hostname>:<interface>:none",
                ));
            }
        }
        let first_open_iscsi = self.first_open_iscsi();
        let mut paths = Vec::with_capacity(self.netroots.len());
        for (i, nr) in self.netroots.iter().enumerate() {
            let which = if i >= first_open_iscsi {
                format!("for iscsi_target_ip= {}", nr.server)
            } else {
                format!("for the {} netroot=", nth(i + 1))
            };
            paths.push(BootPath {
                nic: self.nic_for(nr),
                host: nr.server,
                port: nr.port,
                target: nr.target.clone(),
                lun: nr.lun,
                lun_auto: nr.lun_auto,
                auth: self.auth_for(nr, &which)?,
            });
        }
        Ok(paths)
    }

    /// Where in [`Cmdline::netroots`] those of open-iscsi's words start.
    fn first_open_iscsi(&self) -> usize {
        let n = self.open_iscsi.map_or(0, |t| t.paths);
        self.netroots.len().saturating_sub(n)
    }

    /// Where the netroots were written, for the log and the hand-off:
    /// "the kernel command line (netroot=)" for netroot= alone (a wording
    /// tests rely on), `file` or "the kernel command line
    /// (iscsi_target_name=)" for open-iscsi's words, both joined when
    /// both give paths. `file` is the settings file's name.
    pub fn describe_source(&self, file: &str) -> String {
        let mut parts = Vec::new();
        if self.first_open_iscsi() > 0 {
            parts.push("the kernel command line (netroot=)".to_string());
        }
        if let Some(t) = self.open_iscsi.filter(|t| t.paths > 0) {
            parts.push(match (t.name_from_file, t.ip_from_file) {
                (false, false) => "the kernel command line (iscsi_target_name=)".to_string(),
                (true, true) => file.to_string(),
                (true, false) => format!("{file} and the kernel command line (iscsi_target_ip=)"),
                (false, true) => format!("the kernel command line (iscsi_target_name=) and {file}"),
            });
        }
        parts.join(", then ")
    }

    fn nic_for(&self, nr: &Netroot) -> Option<BootNic> {
        if self.ips.is_empty() {
            return None;
        }
        let chosen = match &nr.netdev {
            Some(dev) => self
                .ips
                .iter()
                .find(|i| i.iface.as_deref() == Some(dev))
                .or_else(|| self.ips.iter().find(|i| i.iface.is_none())),
            None => self
                .ips
                .iter()
                .find(|i| {
                    i.method == IpMethod::None
                        && i.addr.is_some_and(|(a, p)| same_subnet(a, nr.server, p))
                })
                .or_else(|| {
                    self.ips
                        .iter()
                        .find(|i| i.method == IpMethod::None && i.addr.is_some())
                })
                .or_else(|| self.ips.first()),
        };
        let Some(ip) = chosen else {
            // The netdev has no ip= of its own: it is configured
            // elsewhere; wait for it.
            return Some(BootNic {
                config: self.link_config(nr.netdev.as_deref(), None),
                ifname: self.physical(nr.netdev.as_deref()),
                origin: NicOrigin::External,
                hostname: None,
                domain: None,
                mtu: None,
            });
        };
        let name = ip.iface.as_deref().or(nr.netdev.as_deref());
        if ip.method == IpMethod::None && ip.addr.is_none() && name.is_none() {
            // ip=off / ip=none alone: no network set-up asked for.
            return None;
        }
        let mut config = self.link_config(name, ip.mac);
        let origin = if ip.method.is_dynamic() {
            NicOrigin::External
        } else {
            config.addr = ip.addr;
            config.gateway = ip.gateway;
            config.target = ip.addr.map(|_| nr.server);
            NicOrigin::Static
        };
        for d in ip.dns.iter().chain(&self.nameservers) {
            if !config.dns.contains(d) {
                config.dns.push(*d);
            }
        }
        Some(BootNic {
            config,
            ifname: self.physical(name),
            origin,
            hostname: ip.hostname.clone(),
            domain: None,
            mtu: ip.mtu,
        })
    }

    /// The physical interface behind `name` (its vlan= parent, or itself).
    fn physical(&self, name: Option<&str>) -> Option<String> {
        let name = name?;
        Some(
            self.vlans
                .iter()
                .find(|v| v.name == name)
                .map_or(name, |v| v.parent.as_str())
                .to_string(),
        )
    }

    /// MAC (given, else from ifname=) and VLAN of the interface `name`.
    fn link_config(&self, name: Option<&str>, mac: Option<[u8; 6]>) -> NicConfig {
        let vlan = name.and_then(|n| self.vlans.iter().find(|v| v.name == n));
        let phys = self.physical(name);
        let mac = mac
            .or_else(|| {
                let p = phys.as_deref()?;
                self.ifnames.iter().find(|(n, _)| n == p).map(|(_, m)| *m)
            })
            .unwrap_or([0; 6]);
        let mut c = NicConfig::new(mac);
        c.vlan = vlan.map_or(0, |v| v.id);
        c
    }

    /// The CHAP settings of a netroot (`which` says which, in messages):
    /// its own credentials, else rd.iscsi.username/password, per
    /// direction.
    fn auth_for(&self, nr: &Netroot, which: &str) -> Result<Option<AuthConfig>, CmdlineError> {
        let own = nr.username.is_some() || nr.password.is_some();
        let (user, pass, arg) = if own {
            (&nr.username, &nr.password, "netroot")
        } else {
            (&self.username, &self.password, "rd.iscsi.username")
        };
        let own_in = nr.in_username.is_some() || nr.in_password.is_some();
        let (in_user, in_pass, in_arg) = if own_in {
            (&nr.in_username, &nr.in_password, "netroot")
        } else {
            (&self.in_username, &self.in_password, "rd.iscsi.in.username")
        };
        let (user, secret) = match (user, pass) {
            (None, None) => {
                if in_user.is_some() || in_pass.is_some() {
                    return Err(CmdlineError::new(
                        in_arg,
                        format!(
                            "{which}: mutual CHAP (the target's name and secret) without the initiator's own CHAP name and secret: add rd.iscsi.username= and rd.iscsi.password= (or user:password@ in netroot=)"
                        ),
                    ));
                }
                return Ok(None);
            }
            (Some(u), Some(p)) => (u.clone(), p.clone()),
            (Some(_), None) => {
                return Err(CmdlineError::new(
                    arg,
                    format!(
                        "{which}: a CHAP user name without a password: add rd.iscsi.password= (or user:password@ in netroot=)"
                    ),
                ));
            }
            (None, Some(_)) => {
                return Err(CmdlineError::new(
                    arg,
                    format!(
                        "{which}: a CHAP password without a user name: add rd.iscsi.username= (or user:password@ in netroot=)"
                    ),
                ));
            }
        };
        let mutual = match (in_user, in_pass) {
            (_, Some(p)) => Some(MutualConfig {
                target_name: in_user.clone(),
                secret: p.clone(),
            }),
            (Some(_), None) => {
                return Err(CmdlineError::new(
                    in_arg,
                    format!(
                        "{which}: the target's CHAP name without its secret: add rd.iscsi.in.password="
                    ),
                ));
            }
            (None, None) => None,
        };
        let auth = AuthConfig {
            user,
            secret,
            mutual,
        };
        auth.validate()
            .map_err(|e| CmdlineError::new(arg, format!("{which}: {e}")))?;
        Ok(Some(auth))
    }
}

/// Whether `b` is in `a`'s subnet of length `prefix`.
fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netroot_refuses_link_local_portals_with_a_reason() {
        for (v, want) in [
            (
                "netroot=iscsi:[fe80::1%eth0]::3260::iqn.2026-11.org.example:t",
                "has a zone",
            ),
            (
                "netroot=iscsi:[fe80::1]::3260::iqn.2026-11.org.example:t",
                "link-local",
            ),
        ] {
            let e = parse(v).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
        assert!(parse("netroot=iscsi:[fd00::2]::3260::iqn.2026-11.org.example:t").is_ok());
    }

    #[test]
    fn secrets_file_fills_what_the_command_line_leaves_out() {
        let f = parse_secrets_file(
            "# CHAP for the root\n\nrd.iscsi.username=alice\nrd.iscsi.password=pass word = 1\r\n\
             rd.iscsi.in.username=tgt\nrd.iscsi.in.password=target-secret-9\n",
        )
        .unwrap();
        assert_eq!(
            f.password.as_ref().map(|p| p.expose()),
            Some(&b"pass word = 1"[..])
        );
        let mut c =
            parse("netroot=iscsi:10.0.2.2::::iqn.2026-11.x:y rd.iscsi.username=bob").unwrap();
        c.add_secrets(f);
        assert_eq!(c.username.as_deref(), Some("bob"), "the command line wins");
        assert_eq!(
            c.password.as_ref().map(|p| p.expose()),
            Some(&b"pass word = 1"[..])
        );
        assert_eq!(c.in_username.as_deref(), Some("tgt"));
        assert!(c.in_password.is_some());
        let e = parse_secrets_file("rd.iscsi.password=x\nnetroot=iscsi:a:b@c\n").unwrap_err();
        assert!(e.starts_with("line 2: unknown key \"netroot\""), "{e}");
        let e = parse_secrets_file("just-a-secret\n").unwrap_err();
        assert_eq!(e, "line 1: not key=value");
        assert!(!e.contains("secret\n"));
    }

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }
    fn one(netroot: &str) -> Netroot {
        let c = parse(&format!("netroot={netroot}")).unwrap();
        assert_eq!(c.netroots.len(), 1, "{netroot}");
        c.netroots.into_iter().next().unwrap()
    }
    fn err(s: &str) -> CmdlineError {
        parse(s).expect_err(s)
    }

    // ---- Debian open-iscsi's words and /etc/iscsi.initramfs ----

    const IQN: &str = "iqn.2026-11.org.example:root";
    const FILE: &str = "/etc/iscsi.initramfs";

    fn with_file(file: &str, cmdline: &str) -> Result<Cmdline, CmdlineError> {
        let f = parse_open_iscsi_initramfs(file).unwrap();
        parse_with_defaults(FILE, &f.words, cmdline)
    }

    #[test]
    fn iscsi_auto_is_the_firmware_route() {
        let c = parse("iscsi_auto").unwrap();
        assert!(c.firmware && !c.ibft_network && c.wants_iscsi());
        assert!(c.ignored.is_empty() && c.netroots.is_empty());
        // open-iscsi's script then looks at no target word: neither do we,
        // half a target or a bad port included.
        let c = parse(&format!(
            "iscsi_auto iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2"
        ))
        .unwrap();
        assert!(c.firmware && c.netroots.is_empty() && c.open_iscsi.is_none());
        assert!(parse("iscsi_auto iscsi_target_name=x iscsi_target_port=0").is_ok());
        let c = with_file("ISCSI_AUTO=true\n", "").unwrap();
        assert!(c.firmware);
    }

    #[test]
    fn target_name_and_ip_make_a_netroot() {
        let c = parse(&format!(
            "root=UUID=1 iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2"
        ))
        .unwrap();
        assert_eq!(c.netroots.len(), 1);
        let n = &c.netroots[0];
        assert_eq!((n.server, n.port, n.lun), (v4("10.0.2.2"), 3260, 0));
        // open-iscsi logs in to the whole target: no LUN is named.
        assert!(n.lun_auto);
        assert_eq!(n.target, IQN);
        assert!(n.username.is_none() && n.password.is_none());
        assert!(c.ignored.is_empty() && c.wants_iscsi());
        assert_eq!(
            c.open_iscsi,
            Some(OpenIscsiTarget {
                paths: 1,
                group: None,
                name_from_file: false,
                ip_from_file: false
            })
        );
        assert_eq!(
            c.describe_source(FILE),
            "the kernel command line (iscsi_target_name=)"
        );
        let p = c.boot_paths().unwrap();
        assert_eq!((p[0].host, p[0].lun), (v4("10.0.2.2"), 0));
        assert!(p[0].nic.is_none() && p[0].auth.is_none());
        // Port and group alone name nothing: no error, no netroot.
        let c = parse("iscsi_target_port=3260 iscsi_target_group=1").unwrap();
        assert!(c.netroots.is_empty() && c.ignored.is_empty() && !c.wants_iscsi());
    }

    #[test]
    fn target_port_and_group_last_wins() {
        let c = parse(&format!(
            "iscsi_target_port=3262 iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2 \
             iscsi_target_port=3261 iscsi_target_group=2"
        ))
        .unwrap();
        assert_eq!(c.netroots[0].port, 3261);
        assert_eq!(c.open_iscsi.unwrap().group, Some(2));
        let c = parse(&format!(
            "iscsi_target_name=iqn.a.b:old iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2 \
             iscsi_target_group=65535 iscsi_target_group=0"
        ))
        .unwrap();
        assert_eq!(c.netroots[0].target, IQN);
        assert_eq!(c.open_iscsi.unwrap().group, Some(0));
    }

    #[test]
    fn netroot_comes_before_the_open_iscsi_target() {
        let c = parse(&format!(
            "iscsi_target_name={IQN} iscsi_target_ip=10.0.0.9 netroot=iscsi:10.0.0.1::::iqn.a.b:c"
        ))
        .unwrap();
        let s: Vec<IpAddr> = c.netroots.iter().map(|n| n.server).collect();
        assert_eq!(s, [v4("10.0.0.1"), v4("10.0.0.9")]);
        assert_eq!(
            c.describe_source(FILE),
            "the kernel command line (netroot=), then the kernel command line (iscsi_target_name=)"
        );
        let c = parse("netroot=iscsi:10.0.0.1::::iqn.a.b:c").unwrap();
        assert_eq!(
            c.describe_source(FILE),
            "the kernel command line (netroot=)"
        );
    }

    #[test]
    fn target_ip_ipv6_with_or_without_brackets() {
        for ip in ["[fd00::2]", "fd00::2", "[FD00::2]"] {
            let c = parse(&format!("iscsi_target_name={IQN} iscsi_target_ip={ip}")).unwrap();
            assert_eq!(c.netroots[0].server, v6("fd00::2"), "{ip}");
        }
    }

    #[test]
    fn several_addresses_are_several_paths() {
        // The kernel keeps a quoted argument whole.
        let c = parse(&format!(
            "iscsi_target_name={IQN} \"iscsi_target_ip=10.0.0.1  [fd00::2] 10.0.0.1\""
        ))
        .unwrap();
        let s: Vec<IpAddr> = c.netroots.iter().map(|n| n.server).collect();
        assert_eq!(s, [v4("10.0.0.1"), v6("fd00::2")], "a repeat is dropped");
        assert_eq!(c.open_iscsi.unwrap().paths, 2);
        let many: Vec<String> = (1..=17).map(|i| format!("10.0.0.{i}")).collect();
        let e = err(&format!(
            "iscsi_target_name={IQN} \"iscsi_target_ip={}\"",
            many.join(" ")
        ));
        assert_eq!(e.arg, "iscsi_target_ip");
        assert!(e.message.contains("more than 16"), "{e}");
    }

    #[test]
    fn open_iscsi_credentials_apply_to_its_target() {
        let c = parse(&format!(
            "iscsi_username=alice iscsi_password=alice-secret-1 iscsi_in_username=tgt \
             iscsi_in_password=target-secret-2 iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2"
        ))
        .unwrap();
        let p = c.boot_paths().unwrap();
        let a = p[0].auth.as_ref().unwrap();
        assert_eq!(
            (a.user.as_str(), a.secret.expose()),
            ("alice", &b"alice-secret-1"[..])
        );
        let m = a.mutual.as_ref().unwrap();
        assert_eq!(
            (m.target_name.as_deref(), m.secret.expose()),
            (Some("tgt"), &b"target-secret-2"[..])
        );
        let dbg = format!("{c:?} {p:?}");
        assert!(
            !dbg.contains("alice-secret-1") && !dbg.contains("target-secret-2"),
            "{dbg}"
        );
        // A CHAP mistake names the path by its address, not as a netroot=.
        let e = parse(&format!(
            "iscsi_username=alice iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2"
        ))
        .unwrap()
        .boot_paths()
        .unwrap_err();
        assert!(
            e.message.contains("for iscsi_target_ip= 10.0.2.2") && e.message.contains("password"),
            "{e}"
        );
    }

    #[test]
    fn half_a_target_is_an_error_that_says_why() {
        let e = err(&format!("iscsi_target_name={IQN}"));
        assert_eq!(e.arg, "iscsi_target_ip");
        assert!(
            e.message
                .contains("iscsi_target_name= (kernel command line)")
                && e.message.contains("add iscsi_target_ip=")
                && e.message.contains("iscsi_auto"),
            "{e}"
        );
        let e = err("iscsi_target_ip=10.0.2.2 iscsi_target_port=3260");
        assert_eq!(e.arg, "iscsi_target_name");
        assert!(e.message.contains("add iscsi_target_name="), "{e}");
        // An empty value unsets, as in open-iscsi's shell.
        let e = err(&format!(
            "iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2 iscsi_target_ip="
        ));
        assert_eq!(e.arg, "iscsi_target_ip");
        // A bare word is no assignment: open-iscsi's case ignores it.
        let c = parse(&format!(
            "iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2 iscsi_target_ip"
        ))
        .unwrap();
        assert_eq!(c.netroots.len(), 1);
    }

    #[test]
    fn target_word_errors_name_the_word() {
        let ok = format!("iscsi_target_name={IQN} iscsi_target_ip=10.0.2.2");
        for (extra, arg, want) in [
            ("iscsi_target_port=99999", "iscsi_target_port", "1 to 65535"),
            (
                "iscsi_target_port=0",
                "iscsi_target_port",
                "\"0\" is not a port",
            ),
            ("iscsi_target_port=x", "iscsi_target_port", "3260"),
            (
                "iscsi_target_group=70000",
                "iscsi_target_group",
                "0 to 65535",
            ),
            (
                "iscsi_target_group=-1",
                "iscsi_target_group",
                "portal group tag",
            ),
            ("iscsi_target_name=disk0", "iscsi_target_name", "iqn."),
            (
                "iscsi_target_ip=san.example",
                "iscsi_target_ip",
                "no resolver",
            ),
            ("iscsi_target_ip=10.0.2.256", "iscsi_target_ip", "not an IP"),
        ] {
            let e = err(&format!("{ok} {extra}"));
            assert_eq!(e.arg, arg, "{extra}");
            assert!(e.message.contains(want), "{extra}: {e}");
            assert!(e.file.is_none(), "{extra}");
            assert!(e.to_string().starts_with("kernel command line, "), "{e}");
        }
        // A hostile value is cut short in the message.
        let long = "x".repeat(5000);
        let e = err(&format!("{ok} iscsi_target_port={long}"));
        assert!(e.message.len() < 200, "{}", e.message.len());
    }

    #[test]
    fn settings_file_quotes_export_comments() {
        let text = "# open-iscsi's settings\n\
             \n\
             export ISCSI_INITIATOR=iqn.1993-08.org.debian:01:abc\n\
             \tISCSI_TARGET_NAME=\"iqn.2026-11.org.example:root\"\r\n\
             ISCSI_TARGET_IP='10.0.2.2 [fd00::2]'   # two portals\n\
             ISCSI_TARGET_PORT=3262\n\
             ISCSI_TARGET_PORT=3261\n\
             ISCSI_TARGET_GROUP=\n\
             ISCSI_USERNAME=al\\ ice\n\
             ISCSI_PASSWORD=\"pa ss\\\"wo\\rd\"\n\
             ISCSI_IN_USERNAME=tgt\n\
             ISCSI_IN_PASSWORD='in$ecret`1#'\n\
             FOO=bar\n\
             export ISCSI_FUTURE=1\n\
             FOO=again\n";
        let f = parse_open_iscsi_initramfs(text).unwrap();
        assert_eq!(f.ignored, vec!["FOO", "ISCSI_FUTURE"]);
        assert!(f.holds_secret());
        let words: Vec<(&str, usize)> = f.words.iter().map(|w| (w.var, w.line)).collect();
        assert_eq!(
            words,
            [
                ("ISCSI_INITIATOR", 3),
                ("ISCSI_TARGET_NAME", 4),
                ("ISCSI_TARGET_IP", 5),
                ("ISCSI_TARGET_PORT", 7),
                ("ISCSI_USERNAME", 9),
                ("ISCSI_PASSWORD", 10),
                ("ISCSI_IN_USERNAME", 11),
                ("ISCSI_IN_PASSWORD", 12),
            ]
        );
        let dbg = format!("{f:?}");
        assert!(!dbg.contains("wo\\rd") && !dbg.contains("ecret"), "{dbg}");

        let c = parse_with_defaults(FILE, &f.words, "root=UUID=1 quiet").unwrap();
        assert_eq!(
            c.initiator.as_deref(),
            Some("iqn.1993-08.org.debian:01:abc")
        );
        let s: Vec<(IpAddr, u16, u64)> = c
            .netroots
            .iter()
            .map(|n| (n.server, n.port, n.lun))
            .collect();
        assert_eq!(s, [(v4("10.0.2.2"), 3261, 0), (v6("fd00::2"), 3261, 0)]);
        let t = c.open_iscsi.unwrap();
        assert!(t.name_from_file && t.ip_from_file && t.group.is_none());
        assert_eq!(c.describe_source(FILE), FILE);
        let p = c.boot_paths().unwrap();
        for path in &p {
            let a = path.auth.as_ref().unwrap();
            assert_eq!(
                (a.user.as_str(), a.secret.expose()),
                ("al ice", &b"pa ss\"wo\\rd"[..])
            );
            let m = a.mutual.as_ref().unwrap();
            assert_eq!(m.secret.expose(), b"in$ecret`1#");
        }
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("wo\\rd") && !dbg.contains("ecret"), "{dbg}");
    }

    #[test]
    fn settings_file_errors_name_the_line_not_the_secret() {
        let secret = "Hunter2-pa55";
        for (text, want) in [
            (
                format!("ISCSI_USERNAME=a\nISCSI_PASSWORD={secret} x\n"),
                "line 2: the value of ISCSI_PASSWORD: more than one word",
            ),
            (
                format!("ISCSI_PASSWORD=\"{secret}\n\"\n"),
                "line 1: the value of ISCSI_PASSWORD: a quote is not closed",
            ),
            (
                format!("\n\nISCSI_PASSWORD='{secret}\n"),
                "line 3: the value of ISCSI_PASSWORD: a quote",
            ),
            (
                format!("ISCSI_PASSWORD={secret}$x\n"),
                "line 1: the value of ISCSI_PASSWORD: a $ or `",
            ),
            (
                format!("ISCSI_PASSWORD=\"{secret}`id`\"\n"),
                "shell expansion",
            ),
            (
                format!("ISCSI_PASSWORD={secret};reboot\n"),
                "shell operator",
            ),
            (format!("ISCSI_PASSWORD={secret}\\\n"), "continued lines"),
            (format!("# x\n{secret}\n"), "line 2: not a shell assignment"),
            (format!("my {secret}=1\n"), "line 1: not a shell assignment"),
            ("ISCSI_AUTO=false\n".to_string(), "line 1: ISCSI_AUTO: "),
            ("ISCSI_AUTO=0\n".to_string(), "write ISCSI_AUTO=true"),
        ] {
            let e = parse_open_iscsi_initramfs(&text).expect_err(&text);
            assert!(e.contains(want), "{want}: {e}");
            assert!(!e.contains("Hunter2"), "{e}");
        }
        let big = "#".repeat(MAX_OPEN_ISCSI_FILE + 1);
        let e = parse_open_iscsi_initramfs(&big).unwrap_err();
        assert!(e.contains("65536"), "{e}");
        // An empty ISCSI_AUTO is "not set", as open-iscsi's -n test has it.
        let f = parse_open_iscsi_initramfs("ISCSI_AUTO=true\nISCSI_AUTO=\n").unwrap();
        assert!(f.words.is_empty());
        // Unused names are kept few and short for the log.
        let many: String = (0..100).map(|i| format!("V{i}=1\n")).collect();
        let long = format!("{}=1\n", "L".repeat(1000));
        let f = parse_open_iscsi_initramfs(&format!("{long}{many}")).unwrap();
        assert_eq!(f.ignored.len(), 16);
        assert!(f.ignored[0].len() < 70);
    }

    #[test]
    fn errors_from_the_file_say_so() {
        let e = with_file(
            &format!(
                "ISCSI_TARGET_NAME={IQN}\nISCSI_TARGET_PORT=99999\nISCSI_TARGET_IP=10.0.0.1\n"
            ),
            "root=UUID=1",
        )
        .unwrap_err();
        assert_eq!(e.arg, "iscsi_target_port");
        assert_eq!(
            e.file,
            Some(FileSpot {
                file: FILE.into(),
                line: 2,
                var: "ISCSI_TARGET_PORT".into()
            })
        );
        assert!(
            e.to_string().starts_with(
                "/etc/iscsi.initramfs, line 2, ISCSI_TARGET_PORT (read as iscsi_target_port=): "
            ),
            "{e}"
        );
        // The command line's own value wins, so the file's bad one is moot.
        assert!(
            with_file(
                &format!(
                    "ISCSI_TARGET_NAME={IQN}\nISCSI_TARGET_PORT=99999\nISCSI_TARGET_IP=10.0.0.1\n"
                ),
                "iscsi_target_port=3260",
            )
            .is_ok()
        );
        // Checked as it is read, like the command line's.
        let e = with_file("\nISCSI_INITIATOR=myhost\n", "").unwrap_err();
        assert_eq!(e.arg, "iscsi_initiator");
        assert_eq!(e.file.as_ref().map(|s| s.line), Some(2));
        // Half a target: where the half that is there came from.
        let e = with_file(&format!("ISCSI_TARGET_NAME={IQN}\n"), "").unwrap_err();
        assert_eq!(e.arg, "iscsi_target_ip");
        assert!(
            e.message
                .contains("ISCSI_TARGET_NAME (/etc/iscsi.initramfs, line 1)")
                && e.message
                    .contains("ISCSI_TARGET_IP= to /etc/iscsi.initramfs"),
            "{e}"
        );
        // A command-line error stays the command line's.
        let e = with_file(
            &format!("ISCSI_TARGET_NAME={IQN}\n"),
            "iscsi_target_ip=h.example",
        )
        .unwrap_err();
        assert!(
            e.file.is_none() && e.to_string().starts_with("kernel command line"),
            "{e}"
        );
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let file = format!(
            "ISCSI_TARGET_NAME={IQN}\nISCSI_TARGET_IP=10.0.0.1\nISCSI_USERNAME=alice\n\
             ISCSI_PASSWORD=alice-secret-1\nISCSI_TARGET_GROUP=3\n"
        );
        let c = with_file(
            &file,
            "iscsi_target_ip=10.9.9.9 iscsi_username=bob rd.iscsi.password=bob-secret-22",
        )
        .unwrap();
        let s: Vec<IpAddr> = c.netroots.iter().map(|n| n.server).collect();
        assert_eq!(s, [v4("10.9.9.9")]);
        assert_eq!(c.open_iscsi.unwrap().group, Some(3));
        assert_eq!(
            c.describe_source(FILE),
            "/etc/iscsi.initramfs and the kernel command line (iscsi_target_ip=)"
        );
        let a = c.boot_paths().unwrap().remove(0).auth.unwrap();
        assert_eq!(
            (a.user.as_str(), a.secret.expose()),
            ("bob", &b"bob-secret-22"[..])
        );
        // iscsi_auto on the command line: the iBFT, the file's target unused.
        let c = with_file(&file, "iscsi_auto").unwrap();
        assert!(c.firmware && c.netroots.is_empty());
        // An empty word unsets the file's value.
        let e = with_file(&file, "iscsi_target_name=").unwrap_err();
        assert_eq!(e.arg, "iscsi_target_name");
        assert!(
            e.message
                .contains("ISCSI_TARGET_IP (/etc/iscsi.initramfs, line 2)"),
            "{e}"
        );
        // The file's other variables are no command-line words.
        let f = parse_open_iscsi_initramfs("root=/dev/sda1\nrd_sanroot=0\n").unwrap();
        assert!(f.words.is_empty());
        let c = parse_with_defaults(FILE, &f.words, "").unwrap();
        assert_eq!(c, Cmdline::default());
    }

    // ---- the kernel's splitting ----

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            split_args("  a=1\tb  \"c=d e\" f=\"g h\" i=j\"k l\"m \"n o\"\n"),
            vec![
                ("a", Some("1")),
                ("b", None),
                ("c", Some("d e")),
                ("f", Some("g h")),
                ("i", Some("j\"k l\"m")),
                ("n o", None),
            ]
        );
        assert_eq!(split_args(""), vec![]);
        assert_eq!(
            split_args("a= b=\"\""),
            vec![("a", Some("")), ("b", Some(""))]
        );
        // A lone quote: no panic, nothing lost that the kernel keeps.
        assert_eq!(split_args("\""), vec![("", None)]);
        assert_eq!(split_args("x=\""), vec![("x", Some(""))]);
        // Multi-byte text stays whole.
        assert_eq!(split_args("h=höst"), vec![("h", Some("höst"))]);
    }

    #[test]
    fn quoted_password_with_spaces() {
        let c = parse("rd.iscsi.username=u \"rd.iscsi.password=a b c d e f\"").unwrap();
        assert_eq!(c.password.unwrap().expose(), b"a b c d e f");
        let c = parse("rd.iscsi.password=\"p w\"").unwrap();
        assert_eq!(c.password.unwrap().expose(), b"p w");
    }

    // ---- netroot= ----

    #[test]
    fn netroot_minimal_with_defaults() {
        let n = one("iscsi:192.168.50.1::::iqn.2009-06.dracut:target0");
        assert_eq!(n.server, v4("192.168.50.1"));
        assert_eq!(n.port, 3260);
        assert_eq!(n.lun, 0);
        // An empty LUN field: 0, or the first disk when 0 is none.
        assert!(n.lun_auto);
        assert_eq!(n.target, "iqn.2009-06.dracut:target0");
        assert_eq!((n.iface.as_deref(), n.netdev.as_deref()), (None, None));
        assert!(n.username.is_none() && n.password.is_none());
    }

    #[test]
    fn netroot_all_fields() {
        let n = one("iscsi:10.0.2.2:6:3261:5:iqn.2026-11.org.example:root");
        assert_eq!((n.server, n.port, n.lun), (v4("10.0.2.2"), 3261, 5));
        assert!(!n.lun_auto);
        let n = one("iscsi:10.0.2.2::3260:0:iqn.2026-11.org.example:root");
        assert!(n.lun == 0 && !n.lun_auto, "LUN 0 named: {n:?}");
        assert_eq!(n.target, "iqn.2026-11.org.example:root");
    }

    #[test]
    fn netroot_ipv6() {
        let n = one("iscsi:[2001:DB8::1]::::iqn.2009-06.dracut:target0");
        assert_eq!(n.server, v6("2001:db8::1"));
        assert_eq!(n.target, "iqn.2009-06.dracut:target0");
        let n = one("iscsi:u:secret1234567@[fd00::2]::3260:1:iqn.x.y:z");
        assert_eq!((n.server, n.lun), (v6("fd00::2"), 1));
        assert_eq!(n.username.as_deref(), Some("u"));
    }

    #[test]
    fn netroot_credentials() {
        let n = one("iscsi:alice:secret-one-12@10.0.0.1::3260:0:iqn.2009-06.dracut:t");
        assert_eq!(n.username.as_deref(), Some("alice"));
        assert_eq!(n.password.as_ref().unwrap().expose(), b"secret-one-12");
        assert!(n.in_username.is_none() && n.in_password.is_none());
        let n = one(
            "iscsi:alice:secret-one-12:tgt:secret-two-34@10.0.0.1::3260:0:iqn.2009-06.dracut:t",
        );
        assert_eq!(n.in_username.as_deref(), Some("tgt"));
        assert_eq!(n.in_password.as_ref().unwrap().expose(), b"secret-two-34");
        assert_eq!(n.target, "iqn.2009-06.dracut:t");
        // Debug never shows a secret.
        let dbg = format!("{n:?}");
        assert!(
            !dbg.contains("secret-one-12") && !dbg.contains("secret-two-34"),
            "{dbg}"
        );
        // An empty "@" lets a target name hold one.
        let n = one("iscsi:@192.168.1.100::3260::iqn.2009-01.com.example:testdi@sk");
        assert_eq!(n.target, "iqn.2009-01.com.example:testdi@sk");
        assert!(n.username.is_none());
        // Without four ':' after it, an '@' belongs to the target name.
        let n = one("iscsi:192.168.1.100::3260::iqn.2009-01.com.example:testdi@sk");
        assert_eq!(n.target, "iqn.2009-01.com.example:testdi@sk");
    }

    #[test]
    fn netroot_iface_and_netdev() {
        let n = one("iscsi:10.0.0.1::3260:myiface:eth1:2:iqn.2009-06.dracut:t0");
        assert_eq!(n.iface.as_deref(), Some("myiface"));
        assert_eq!(n.netdev.as_deref(), Some("eth1"));
        assert_eq!(n.lun, 2);
        let n = one("iscsi:10.0.0.1::3260::eth1:2:iqn.2009-06.dracut:t0");
        assert_eq!(
            (n.iface.as_deref(), n.netdev.as_deref()),
            (None, Some("eth1"))
        );
        // dracut takes two fields before the name as netdev:LUN.
        let n = one("iscsi:10.0.0.1::3260:eth1:2:iqn.2009-06.dracut:t0");
        assert_eq!(
            (n.iface.as_deref(), n.netdev.as_deref(), n.lun),
            (None, Some("eth1"), 2)
        );
    }

    #[test]
    fn netroot_names_with_colons_eui_naa() {
        let n = one("iscsi:10.0.0.1::::iqn.2009-06.dracut:a:b:c");
        assert_eq!(n.target, "iqn.2009-06.dracut:a:b:c");
        let n = one("iscsi:10.0.0.1::3260:7:eui.02004567A425678D");
        assert_eq!((n.target.as_str(), n.lun), ("eui.02004567A425678D", 7));
        let n = one("iscsi:10.0.0.1::::naa.52004567BA64678D");
        assert_eq!(n.target, "naa.52004567BA64678D");
        // An upper-case IQN goes through dracut's generic split.
        let n = one("iscsi:10.0.0.1::3260:3:IQN.2009-06.dracut:t");
        assert_eq!((n.target.as_str(), n.lun), ("IQN.2009-06.dracut:t", 3));
        // Generic split with iface:netdev.
        let n = one("iscsi:10.0.0.1::3260:if0:eth0:4:IQN.2009-06.dracut:t");
        assert_eq!(
            (
                n.iface.as_deref(),
                n.netdev.as_deref(),
                n.lun,
                n.target.as_str()
            ),
            (Some("if0"), Some("eth0"), 4, "IQN.2009-06.dracut:t")
        );
    }

    #[test]
    fn netroot_errors_say_what_and_how() {
        let e = err("netroot=iscsi:san.example.com::3260:0:iqn.2009-06.dracut:t");
        assert_eq!(e.arg, "netroot");
        assert!(
            e.message.contains("host name") && e.message.contains("san.example.com"),
            "{e}"
        );
        let e = err("netroot=iscsi:fd00::2::3260:0:iqn.2009-06.dracut:t");
        assert!(e.message.contains("brackets"), "{e}");
        let e = err("netroot=iscsi:10.0.0.1:17:3260:0:iqn.2009-06.dracut:t");
        assert!(
            e.message.contains("protocol") && e.message.contains("only 6"),
            "{e}"
        );
        let e = err("netroot=iscsi:10.0.0.1::99999:0:iqn.2009-06.dracut:t");
        assert!(e.message.contains("port"), "{e}");
        let e = err("netroot=iscsi:10.0.0.1::3260:0x1:iqn.2009-06.dracut:t");
        assert!(
            e.message.contains("LUN") && e.message.contains("decimal"),
            "{e}"
        );
        let e = err("netroot=iscsi:::3260:0:iqn.2009-06.dracut:t");
        assert!(e.message.contains("the server is missing"), "{e}");
        let e = err("netroot=iscsi:10.0.0.1::3260:0:");
        assert!(e.message.contains("no target name"), "{e}");
        let e = err("netroot=iscsi:10.0.0.1::3260:0:mytarget");
        assert!(e.message.contains("iqn."), "{e}");
        let e = err("netroot=iscsi:[fd00::2::3260:0:iqn.2009-06.dracut:t");
        assert!(e.message.contains("]"), "{e}");
        let e = err("netroot=iscsi:10.0.0.1::1:2:3:4:5:iqn.2009-06.dracut:t");
        assert!(e.message.contains("too many"), "{e}");
        // Which one: the second.
        let e = err("netroot=iscsi:10.0.0.1::::iqn.a.b:c netroot=iscsi:h.example::::iqn.a.b:c");
        assert!(e.message.contains("2nd netroot="), "{e}");
        assert!(
            e.to_string().starts_with("kernel command line, netroot=: "),
            "{e}"
        );
        let e = err("netroot=iscsi");
        assert!(e.message.contains("rd.iscsi.firmware"), "{e}");
    }

    #[test]
    fn no_secret_in_any_error() {
        let secret = "Hunter2-pa55";
        let cases = [
            // A password with '@': the rest of it lands in the server.
            format!("netroot=iscsi:alice:{secret}@x@10.0.0.1::3260:0:iqn.2009-06.dracut:t"),
            // A password with ':': three fields.
            format!("netroot=iscsi:alice:{secret}:more@10.0.0.1::3260:0:iqn.2009-06.dracut:t"),
            // Fine credentials, broken elsewhere.
            format!("netroot=iscsi:alice:{secret}@10.0.0.1:9:3260:0:iqn.2009-06.dracut:t"),
            format!("netroot=iscsi:alice:{secret}@10.0.0.1::70000:0:iqn.2009-06.dracut:t"),
            format!("netroot=iscsi:alice:{secret}@10.0.0.1::3260:x:iqn.2009-06.dracut:t"),
            format!("netroot=iscsi:alice:{secret}@host.example::3260:0:iqn.2009-06.dracut:t"),
            format!("netroot=iscsi:alice:{secret}@10.0.0.1::3260:0:notaname"),
            format!("netroot=iscsi:alice:{secret}@[fd00::1::3260:0:iqn.2009-06.dracut:t"),
            format!(
                "netroot=iscsi:alice:{secret}:bob:{secret}@10.0.0.1::3260:0:iqn.2009-06.dracut:t"
            ),
            format!("netroot=iscsi:alice:{secret}:bob:@10.0.0.1::3260:0:iqn.2009-06.dracut:t"),
            format!("rd.iscsi.param=node.session.auth.password={secret}"),
            format!("rd.iscsi.password={secret} rd.iscsi.sneaky={secret}"),
            format!("netroot=cifs://alice:{secret}@srv/x netroot=iscsi"),
        ];
        for c in &cases {
            let shown = match parse(c) {
                Err(e) => format!("{e} {e:?}"),
                Ok(cl) => match cl.boot_paths() {
                    Err(e) => format!("{e} {e:?} {cl:?}"),
                    Ok(p) => format!("{cl:?} {p:?}"),
                },
            };
            assert!(!shown.contains("Hunter2"), "{c}: {shown}");
        }
        let e = err(&cases[0]);
        assert!(e.message.contains("rd.iscsi.password"), "{e}");
        let e = err(&cases[1]);
        assert!(e.message.contains("rd.iscsi.password"), "{e}");
        // Same-secret mutual CHAP is refused by AuthConfig::validate().
        let e = parse(&cases[8]).unwrap().boot_paths().unwrap_err();
        assert!(e.message.contains("RFC 7143"), "{e}");
    }

    #[test]
    fn non_iscsi_netroot_is_recorded_by_scheme_only() {
        let c =
            parse("netroot=nfs:10.0.0.1:/srv/root netroot=dhcp netroot=cifs://u:p@s/x").unwrap();
        assert!(c.netroots.is_empty());
        assert_eq!(
            c.ignored,
            vec!["netroot=nfs", "netroot=dhcp", "netroot=cifs"]
        );
        let c = parse("netroot=user:pass@x netroot=s3cr3t/x").unwrap();
        assert_eq!(c.ignored, vec!["netroot=user", "netroot=…"]);
        assert!(!c.wants_iscsi());
    }

    #[test]
    fn root_iscsi_and_iscsiroot_come_first() {
        let c = parse(
            "netroot=iscsi:10.0.0.2::::iqn.a.b:two root=iscsi:10.0.0.1::::iqn.a.b:one iscsiroot=10.0.0.3::::iqn.a.b:three",
        )
        .unwrap();
        let t: Vec<&str> = c.netroots.iter().map(|n| n.target.as_str()).collect();
        assert_eq!(t, ["iqn.a.b:one", "iqn.a.b:three", "iqn.a.b:two"]);
        assert_eq!(c.root.as_deref(), Some("iscsi"));
        let c = parse("root=UUID=1234-abcd rd.iscsi.firmware netroot=iscsi").unwrap();
        assert_eq!(c.root.as_deref(), Some("UUID=1234-abcd"));
        assert!(c.firmware && c.netroots.is_empty() && c.wants_iscsi());
    }

    // ---- ip= ----

    fn ip(s: &str) -> IpArg {
        parse_ip(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn ip_autoconf_forms() {
        assert_eq!(ip("dhcp").method, IpMethod::Dhcp);
        assert_eq!(ip("on").method, IpMethod::Dhcp);
        assert_eq!(ip("any").method, IpMethod::Dhcp);
        assert_eq!(ip("auto6").method, IpMethod::Auto6);
        assert_eq!(ip("either6").method, IpMethod::Either6);
        assert_eq!(ip("single-dhcp").method, IpMethod::SingleDhcp);
        assert_eq!(ip("ibft").method, IpMethod::Ibft);
        assert_eq!(ip("dhcp,dhcp6").method, IpMethod::Dhcp);
        let a = ip("eth0:dhcp6");
        assert_eq!(
            (a.iface.as_deref(), a.method),
            (Some("eth0"), IpMethod::Dhcp6)
        );
        let a = ip("eth0:dhcp:9000:52:54:00:12:34:56");
        assert_eq!(a.mtu, Some(9000));
        assert_eq!(a.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        let a = ip("eth0:dhcp::52-54-00-12-34-56");
        assert_eq!(
            (a.mtu, a.mac),
            (None, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]))
        );
        assert!(parse_ip("eth0:bogus").is_err());
        assert!(parse_ip("dhcp,none").is_err());
    }

    #[test]
    fn ip_static_v4() {
        let a = ip("10.0.2.15::10.0.2.2:255.255.255.0:myhost:eth0:none");
        assert_eq!(a.addr, Some((v4("10.0.2.15"), 24)));
        assert_eq!(a.gateway, Some(v4("10.0.2.2")));
        assert_eq!(a.hostname.as_deref(), Some("myhost"));
        assert_eq!(a.iface.as_deref(), Some("eth0"));
        assert_eq!(a.method, IpMethod::None);
        let a = ip("10.0.2.15:10.0.2.9:10.0.2.2:20::eth0:off:1500:52:54:00:12:34:56");
        assert_eq!(a.addr, Some((v4("10.0.2.15"), 20)));
        assert_eq!(a.peer, Some(v4("10.0.2.9")));
        assert_eq!((a.mtu, a.hostname.as_deref()), (Some(1500), None));
        assert!(a.mac.is_some());
        let a = ip("10.0.2.15::10.0.2.2:255.255.255.0::eth0:none:10.0.2.3:[2001:db8::53]");
        assert_eq!(a.dns, vec![v4("10.0.2.3"), v6("2001:db8::53")]);
        // No mask: a host address; an inline prefix.
        assert_eq!(
            ip("10.0.2.15::10.0.2.2:::eth0:none").addr,
            Some((v4("10.0.2.15"), 32))
        );
        assert_eq!(
            ip("10.0.2.15/23::10.0.2.2:::eth0:none").addr,
            Some((v4("10.0.2.15"), 23))
        );
        // The method may be left out when an address is given.
        assert_eq!(ip("10.0.2.15::10.0.2.2:24::eth0").method, IpMethod::None);
        // A hostname with DHCP.
        let a = ip("::::myhost:eth0:dhcp");
        assert_eq!(
            (a.addr, a.hostname.as_deref(), a.method),
            (None, Some("myhost"), IpMethod::Dhcp)
        );
    }

    #[test]
    fn ip_static_v6() {
        let a = ip("[2001:db8::15]::[2001:db8::1]:64:h6:eth1:none");
        assert_eq!(a.addr, Some((v6("2001:db8::15"), 64)));
        assert_eq!(a.gateway, Some(v6("2001:db8::1")));
        assert_eq!(a.iface.as_deref(), Some("eth1"));
        let a = ip("[fd00::15/56]::[fd00::1]:::eth1:none");
        assert_eq!(a.addr, Some((v6("fd00::15"), 56)));
    }

    #[test]
    fn ip_errors() {
        for (s, want) in [
            ("10.0.2.15", "anaconda"),
            ("10.0.2.15::10.0.2.2:255.0.255.0::eth0:none", "contiguous"),
            ("10.0.2.15::10.0.2.2:33::eth0:none", "too long"),
            ("10.0.2.15::[fd00::1]:24::eth0:none", "family"),
            ("10.0.2.15::gw.example:24::eth0:none", "not an IP"),
            ("[2001:db8::1::eth0:none", "]"),
            ("::::h:eth0:", "no method"),
            ("eth0:dhcp:10", "MTU"),
            ("eth0:dhcp:1500:52:54", "too many"),
            ("eth0:dhcp:1500:zz", "MAC"),
            ("this/is/bad:dhcp", "interface"),
        ] {
            let e = parse_ip(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
        let e = err("ip=dhcp ip=10.0.2.15::10.0.2.2:99::eth0:none");
        assert_eq!(e.arg, "ip");
        assert!(e.message.contains("2nd ip="), "{e}");
    }

    // ---- the rest ----

    #[test]
    fn options_and_aliases() {
        let c = parse(
            "BOOT_IMAGE=/vmlinuz quiet iscsi_initiator=iqn.1993-08.org.debian:01:abc \
             rd.iscsi.username=u rd.iscsi.password=p1234567890123 \
             rd.iscsi.in.username=t rd.iscsi.in.password=q1234567890123 \
             rd.iscsi.login_retry_max=7 rd.iscsi.waitnet=0 rd.iscsi.testroute \
             rd.iscsi.param=node.session.timeo.replacement_timeout=30 \
             nameserver=10.0.2.3 nameserver=[fd00::53] vlan=eth0.100:eth0 vlan=vlan0200:eth1 \
             ifname=bootnet:52:54:00:AB:CD:EF rd.iscsi.mp rd.iscsi.transport=bnx2i \
             rd.sanroot=1 rd.sanroot.bridge=nbd rd.sanroot.timeout=300 \
             rd.sanroot.retries=3 rd.sanroot.shutdown_timeout=20 rd.sanroot.nm=unmanaged",
        )
        .unwrap();
        assert_eq!(
            c.initiator.as_deref(),
            Some("iqn.1993-08.org.debian:01:abc")
        );
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.in_username.as_deref(), Some("t"));
        assert_eq!(c.login_retry_max, Some(7));
        assert_eq!((c.waitnet, c.testroute), (Some(false), Some(true)));
        assert_eq!(
            c.params,
            vec![(
                "node.session.timeo.replacement_timeout".to_string(),
                "30".to_string()
            )]
        );
        assert_eq!(c.nameservers, vec![v4("10.0.2.3"), v6("fd00::53")]);
        assert_eq!(
            c.vlans,
            vec![
                Vlan {
                    name: "eth0.100".into(),
                    parent: "eth0".into(),
                    id: 100
                },
                Vlan {
                    name: "vlan0200".into(),
                    parent: "eth1".into(),
                    id: 200
                },
            ]
        );
        assert_eq!(
            c.ifnames,
            vec![("bootnet".to_string(), [0x52, 0x54, 0, 0xab, 0xcd, 0xef])]
        );
        assert_eq!(c.ignored, vec!["rd.iscsi.mp", "rd.iscsi.transport"]);
        assert_eq!(
            c.sanroot,
            SanrootOpts {
                enabled: Some(true),
                bridge: Some(BridgeKind::Nbd),
                timeout: Some(300),
                retries: Some(3),
                shutdown_timeout: Some(20),
                nm: Some(crate::boot::nm::NmMode::Unmanaged),
            }
        );
        assert!(!c.firmware && !c.wants_iscsi());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("p1234567890123") && !dbg.contains("q1234567890123"));
    }

    #[test]
    fn firmware_switches() {
        assert!(parse("rd.iscsi.firmware").unwrap().firmware);
        assert!(parse("rd.iscsi.firmware=1").unwrap().firmware);
        assert!(parse("iscsi_firmware").unwrap().firmware);
        assert!(!parse("rd.iscsi.firmware=0").unwrap().firmware);
        // The last one wins, as with dracut's getargbool.
        assert!(
            !parse("rd.iscsi.firmware rd.iscsi.firmware=0")
                .unwrap()
                .firmware
        );
        let c = parse("rd.iscsi.ibft").unwrap();
        assert!(c.firmware && c.ibft_network && c.wants_iscsi());
        let c = parse("ip=ibft").unwrap();
        assert!(c.firmware && c.ibft_network);
    }

    #[test]
    fn option_errors() {
        for (s, arg, want) in [
            ("rd.sanroot=maybe", "rd.sanroot", "boolean"),
            (
                "rd.sanroot.bridge=loop",
                "rd.sanroot.bridge",
                "auto, ublk or nbd",
            ),
            ("rd.sanroot.timeout=5m", "rd.sanroot.timeout", "seconds"),
            ("rd.sanroot.brigde=nbd", "rd.sanroot.brigde", "known ones"),
            ("rd.sanroot.retries=0", "rd.sanroot.retries", "1 to 100"),
            ("rd.sanroot.nm=off", "rd.sanroot.nm", "native or unmanaged"),
            ("rd.sanroot.nm", "rd.sanroot.nm", "needs a value"),
            (
                "rd.sanroot.shutdown_timeout=1m",
                "rd.sanroot.shutdown_timeout",
                "seconds",
            ),
            (
                "rd.iscsi.login_retry_max=10001",
                "rd.iscsi.login_retry_max",
                "10000",
            ),
            ("rd.iscsi.initiator=myhost", "rd.iscsi.initiator", "iqn."),
            ("rd.iscsi.initiator", "rd.iscsi.initiator", "needs a value"),
            ("rd.iscsi.param=novalue", "rd.iscsi.param", "<key>=<value>"),
            ("nameserver=dns.example", "nameserver", "not an IP"),
            ("vlan=eth0", "vlan", "vlan=<vlan name>"),
            ("vlan=mgmt:eth0", "vlan", "VLAN id"),
            ("vlan=eth0.5000:eth0", "vlan", "1..4094"),
            ("ifname=boot:52:54", "ifname", "MAC"),
        ] {
            let e = err(s);
            assert_eq!(e.arg, arg, "{s}");
            assert!(e.message.contains(want), "{s}: {e}");
        }
        let c = parse("ifname=ib0:80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0f:2a:d5")
            .unwrap();
        assert!(c.ifnames.is_empty());
        assert_eq!(c.ignored, vec!["ifname (not an Ethernet MAC)"]);
    }

    // ---- boot_paths() ----

    #[test]
    fn paths_without_ip_have_no_nic() {
        let c = parse("netroot=iscsi:10.0.2.2::3260:1:iqn.2026-11.org.example:root").unwrap();
        let p = c.boot_paths().unwrap();
        assert_eq!(p.len(), 1);
        let p = &p[0];
        assert!(p.nic.is_none() && p.auth.is_none());
        assert_eq!((p.host, p.port, p.lun), (v4("10.0.2.2"), 3260, 1));
        assert_eq!(p.target, "iqn.2026-11.org.example:root");
    }

    #[test]
    fn static_ip_gives_a_static_nic() {
        let c = parse(
            "ifname=bootnet:52:54:00:12:34:56 ip=10.0.2.15::10.0.2.2:255.255.255.0:myhost:bootnet:none:10.0.2.3 \
             nameserver=10.0.2.4 nameserver=10.0.2.3 \
             netroot=iscsi:10.0.2.2::3260:0:iqn.2026-11.org.example:root",
        )
        .unwrap();
        let p = c.boot_paths().unwrap();
        let nic = p[0].nic.as_ref().unwrap();
        assert_eq!(nic.origin, NicOrigin::Static);
        assert_eq!(nic.ifname.as_deref(), Some("bootnet"));
        assert_eq!(nic.hostname.as_deref(), Some("myhost"));
        assert_eq!(nic.config.mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(nic.config.addr, Some((v4("10.0.2.15"), 24)));
        assert_eq!(nic.config.gateway, Some(v4("10.0.2.2")));
        assert_eq!(nic.config.dns, vec![v4("10.0.2.3"), v4("10.0.2.4")]);
        assert_eq!(nic.config.target, Some(v4("10.0.2.2")));
        assert_eq!(nic.config.vlan, 0);
    }

    #[test]
    fn vlan_nic_names_the_parent() {
        let c = parse(
            "vlan=eth0.100:eth0 ifname=eth0:52:54:00:12:34:56 ip=[fd00::15]::[fd00::1]:64::eth0.100:none:1400 \
             netroot=iscsi:[fd00::2]::3260:0:iqn.2026-11.org.example:root",
        )
        .unwrap();
        let nic = c.boot_paths().unwrap().remove(0).nic.unwrap();
        assert_eq!(nic.ifname.as_deref(), Some("eth0"));
        assert_eq!(nic.config.vlan, 100);
        assert_eq!(nic.config.mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(nic.config.addr, Some((v6("fd00::15"), 64)));
        assert_eq!(nic.mtu, Some(1400));
        assert_eq!(nic.config.target, Some(v6("fd00::2")));
    }

    #[test]
    fn dhcp_ip_gives_an_external_nic() {
        let c = parse(
            "ip=eth1:dhcp nameserver=10.0.2.3 netroot=iscsi:10.0.2.2::::iqn.2026-11.org.example:root",
        )
        .unwrap();
        let nic = c.boot_paths().unwrap().remove(0).nic.unwrap();
        assert_eq!(nic.origin, NicOrigin::External);
        assert_eq!(nic.ifname.as_deref(), Some("eth1"));
        assert_eq!(nic.config.addr, None);
        assert_eq!(nic.config.mac, [0; 6]);
        let c = parse("ip=dhcp netroot=iscsi:10.0.2.2::3260::eth2:0:iqn.2026-11.org.example:root")
            .unwrap();
        let nic = c.boot_paths().unwrap().remove(0).nic.unwrap();
        assert_eq!(
            (nic.origin, nic.ifname.as_deref()),
            (NicOrigin::External, Some("eth2"))
        );
        let c = parse("ip=off netroot=iscsi:10.0.2.2::::iqn.2026-11.org.example:root").unwrap();
        assert!(c.boot_paths().unwrap()[0].nic.is_none());
    }

    #[test]
    fn the_ip_on_the_targets_subnet_is_chosen() {
        let c = parse(
            "ip=192.168.1.5::192.168.1.1:24::eth0:none ip=10.9.0.5:::16::eth1:none \
             netroot=iscsi:10.9.3.3::::iqn.a.b:far netroot=iscsi:192.168.1.9::::iqn.a.b:near \
             netroot=iscsi:172.16.0.1::3260::eth1:0:iqn.a.b:bydev",
        )
        .unwrap();
        let p = c.boot_paths().unwrap();
        let ifs: Vec<&str> = p
            .iter()
            .map(|p| p.nic.as_ref().unwrap().ifname.as_deref().unwrap())
            .collect();
        assert_eq!(ifs, ["eth1", "eth0", "eth1"]);
    }

    #[test]
    fn ibft_network_with_netroot_is_refused() {
        let e = parse("ip=ibft netroot=iscsi:10.0.2.2::::iqn.a.b:c")
            .unwrap()
            .boot_paths()
            .unwrap_err();
        assert_eq!(e.arg, "ip");
        assert!(e.message.contains("rd.iscsi.firmware"), "{e}");
        let e = parse("rd.iscsi.ibft netroot=iscsi:10.0.2.2::::iqn.a.b:c")
            .unwrap()
            .boot_paths()
            .unwrap_err();
        assert_eq!(e.arg, "rd.iscsi.ibft");
        // Alone it is just the firmware route.
        assert!(parse("ip=ibft").unwrap().boot_paths().unwrap().is_empty());
    }

    #[test]
    fn credentials_defaults_and_mutual() {
        let c = parse(
            "rd.iscsi.username=alice rd.iscsi.password=alice-secret-1 \
             rd.iscsi.in.username=tgt rd.iscsi.in.password=target-secret-2 \
             netroot=iscsi:10.0.2.2::::iqn.a.b:one \
             netroot=iscsi:bob:bob-secret-333@10.0.2.2::3260:0:iqn.a.b:two \
             netroot=iscsi:bob:bob-secret-333:t2:t2-secret-4444@10.0.2.2::3260:0:iqn.a.b:three",
        )
        .unwrap();
        let p = c.boot_paths().unwrap();
        let a = p[0].auth.as_ref().unwrap();
        assert_eq!(a.user, "alice");
        assert_eq!(a.secret.expose(), b"alice-secret-1");
        let m = a.mutual.as_ref().unwrap();
        assert_eq!(
            (m.target_name.as_deref(), m.secret.expose()),
            (Some("tgt"), &b"target-secret-2"[..])
        );
        // Own one-way credentials, rd.iscsi.in.* still the mutual half.
        let a = p[1].auth.as_ref().unwrap();
        assert_eq!(
            (a.user.as_str(), a.secret.expose()),
            ("bob", &b"bob-secret-333"[..])
        );
        assert_eq!(
            a.mutual.as_ref().unwrap().target_name.as_deref(),
            Some("tgt")
        );
        let a = p[2].auth.as_ref().unwrap();
        let m = a.mutual.as_ref().unwrap();
        assert_eq!(
            (m.target_name.as_deref(), m.secret.expose()),
            (Some("t2"), &b"t2-secret-4444"[..])
        );
    }

    #[test]
    fn credential_errors() {
        let nr = "netroot=iscsi:10.0.2.2::::iqn.a.b:c";
        for (extra, arg, want) in [
            (
                "rd.iscsi.username=alice",
                "rd.iscsi.username",
                "without a password",
            ),
            (
                "rd.iscsi.password=abcdefabcdef",
                "rd.iscsi.username",
                "without a user name",
            ),
            (
                "rd.iscsi.in.password=abcdefabcdef",
                "rd.iscsi.in.username",
                "mutual CHAP",
            ),
            (
                "rd.iscsi.username=a rd.iscsi.password=abcdefabcdef rd.iscsi.in.username=t",
                "rd.iscsi.in.username",
                "rd.iscsi.in.password",
            ),
        ] {
            let e = parse(&format!("{extra} {nr}"))
                .unwrap()
                .boot_paths()
                .unwrap_err();
            assert_eq!(e.arg, arg, "{extra}");
            assert!(e.message.contains(want), "{extra}: {e}");
            assert!(e.message.contains("1st netroot="), "{e}");
        }
    }

    #[test]
    fn masks_and_subnets() {
        let f = |t| Field {
            text: t,
            bracketed: false,
        };
        assert_eq!(parse_netmask(&f("255.255.255.0"), v4("1.2.3.4")), Ok(24));
        assert_eq!(parse_netmask(&f("0.0.0.0"), v4("1.2.3.4")), Ok(0));
        assert_eq!(parse_netmask(&f("255.255.255.255"), v4("1.2.3.4")), Ok(32));
        assert_eq!(parse_netmask(&f("64"), v6("fd00::1")), Ok(64));
        assert_eq!(
            parse_netmask(
                &Field {
                    text: "ffff:ffff::",
                    bracketed: true
                },
                v6("fd00::1")
            ),
            Ok(32)
        );
        assert!(same_subnet(v4("10.9.3.3"), v4("10.9.0.5"), 16));
        assert!(!same_subnet(v4("10.9.3.3"), v4("10.8.0.5"), 16));
        assert!(same_subnet(v4("10.9.3.3"), v4("99.8.0.5"), 0));
        assert!(same_subnet(v6("fd00::1"), v6("fd00::2"), 64));
        assert!(!same_subnet(v6("fd00::1"), v4("10.0.0.1"), 0));
        assert_eq!(nth(1), "1st");
        assert_eq!(nth(12), "12th");
        assert_eq!(nth(22), "22nd");
    }
}
