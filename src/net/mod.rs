//! Bringing the boot NIC up over rtnetlink, as the iBFT describes it.
//!
//! - [`NicConfig`]: what to configure (from an iBFT NIC with
//!   [`NicConfig::from_ibft`], or built by hand).
//! - [`plan`] / [`plan_steps`]: the steps it takes, from a list of links
//!   ([`RtnlSocket::links`]) — a dry run, pure.
//! - [`apply`]: performs them in the calling thread's network namespace and
//!   logs each; idempotent (re-running changes nothing).
//! - [`resolv_conf`]: the text of /etc/resolv.conf (writing it is the
//!   caller's business).
//!
//! The steps, in order: find the link whose MAC (current or permanent) is
//! the NIC's; set it up; for a VLAN, reuse or create `<parent>.<vid>` and
//! set that up; wait (bounded) for carrier; add the address with
//! NLM_F_CREATE|NLM_F_REPLACE; for IPv6 wait for duplicate address
//! detection to finish; replace the main table's default route with one via
//! the gateway; add a host route to the target (via the gateway when the
//! target is off-link, else directly on the interface). Routes carry
//! protocol "boot". A gateway outside the address's prefix gets the
//! "onlink" flag (as cloud /32 set-ups need).
//!
//! Every error ([`NetError`]) names the step, the interface and the
//! kernel's errno text (with its extended-ack message when it sent one).
//! The message encoding lives in [`rtnl`] (pure, unit-tested).
//!
//! Without udev (sanroot as /init), the NIC is first renamed to the name
//! udev's default policy would give it ([`ifname`]), while it is still
//! down: the real root's configuration expects that name and its udev
//! cannot rename a link that is up.

pub mod ifname;
pub mod rtnl;

use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

pub use crate::ibft::model::parse_mac;
use crate::ibft::model::{Nic, format_mac};
pub use rtnl::{Addr, Link};

/// What the boot NIC needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    /// The NIC's MAC; the link is found by it.
    pub mac: [u8; 6],
    /// VLAN id, 0 = untagged.
    pub vlan: u16,
    /// Address and prefix length; `None` configures the link only.
    pub addr: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    /// The iSCSI target's address: it gets a host route.
    pub target: Option<IpAddr>,
    /// How long to wait for carrier after setting the link up.
    pub carrier_timeout: Duration,
    /// How long to wait for IPv6 duplicate address detection.
    pub dad_timeout: Duration,
    /// Skip IPv6 duplicate address detection (IFA_F_NODAD).
    pub nodad: bool,
    /// The NIC's PCI address ("0000:00:03.0") when the source gives one:
    /// its driver is loaded at once instead of waiting for udev's coldplug
    /// to reach it.
    pub pci: Option<String>,
}

/// Default bound on the wait for carrier (NICs take a few seconds to
/// negotiate; some switches with spanning tree take longer).
pub const DEFAULT_CARRIER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DAD_TIMEOUT: Duration = Duration::from_secs(5);

impl NicConfig {
    /// The configuration an iBFT NIC describes, with the target reached
    /// through it (its host route). A DHCP-origin NIC's address is what
    /// the firmware leased; it is applied as a static address.
    pub fn from_ibft(nic: &Nic, target: Option<IpAddr>) -> NicConfig {
        NicConfig {
            mac: nic.mac,
            vlan: nic.vlan,
            addr: nic.ip.map(|ip| (ip, nic.prefix_len)),
            gateway: nic.gateway,
            dns: nic.dns(),
            target,
            carrier_timeout: DEFAULT_CARRIER_TIMEOUT,
            dad_timeout: DEFAULT_DAD_TIMEOUT,
            nodad: false,
            pci: nic.pci_address(),
        }
    }

    /// A configuration with defaults for everything but the MAC.
    pub fn new(mac: [u8; 6]) -> NicConfig {
        NicConfig {
            mac,
            vlan: 0,
            addr: None,
            gateway: None,
            dns: Vec::new(),
            target: None,
            carrier_timeout: DEFAULT_CARRIER_TIMEOUT,
            dad_timeout: DEFAULT_DAD_TIMEOUT,
            nodad: false,
            pci: None,
        }
    }
}

/// A failure: which step, on which interface, and why. Displayed as
/// "eth0: waiting for carrier: no carrier after 30.0 s (...)" or
/// "eth0: adding address ...: Invalid argument (EINVAL) [kernel: ...]".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetError {
    /// The step, as a phrase ("adding address 10.0.2.15/24").
    pub step: String,
    /// The interface, when one was chosen.
    pub ifname: Option<String>,
    pub errno: Option<Errno>,
    /// The kernel's extended-ack text, or our own explanation.
    pub detail: Option<String>,
}

impl NetError {
    fn new(step: impl Into<String>, ifname: Option<&str>, detail: impl Into<String>) -> NetError {
        NetError {
            step: step.into(),
            ifname: ifname.map(str::to_string),
            errno: None,
            detail: Some(detail.into()),
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = &self.ifname {
            write!(f, "{i}: ")?;
        }
        write!(f, "{}", self.step)?;
        if let Some(e) = self.errno {
            write!(f, ": {} ({e:?})", e.desc())?;
        }
        if let Some(d) = &self.detail {
            if self.errno.is_some() {
                write!(f, " [kernel: {d}]")?;
            } else {
                write!(f, ": {d}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for NetError {}

/// An error from a netlink exchange, before it is tied to a step.
#[derive(Debug)]
struct RawErr {
    errno: Option<Errno>,
    detail: Option<String>,
}

impl RawErr {
    fn at(self, step: &str, ifname: Option<&str>) -> NetError {
        NetError {
            step: step.to_string(),
            ifname: ifname.map(str::to_string),
            errno: self.errno,
            detail: self.detail,
        }
    }
}

fn sys(e: Errno) -> RawErr {
    RawErr {
        errno: Some(e),
        detail: None,
    }
}

const SOL_NETLINK: nix::libc::c_int = 270;
const NETLINK_CAP_ACK: nix::libc::c_int = 10;
const NETLINK_EXT_ACK: nix::libc::c_int = 11;

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
pub struct RtnlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl RtnlSocket {
    pub fn open() -> Result<RtnlSocket, NetError> {
        let step = "opening a NETLINK_ROUTE socket";
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| sys(e).at(step, None))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| sys(e).at(step, None))?;
        // Never hang on a kernel that does not answer.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(10, 0))
            .map_err(|e| sys(e).at(step, None))?;
        // Extended acks (the kernel's text for an error) and capped error
        // payloads; both optional (Linux 4.12+), so failures are ignored.
        for opt in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            let one: nix::libc::c_int = 1;
            // SAFETY: a valid fd and a pointer to an int of the size given.
            unsafe {
                nix::libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const nix::libc::c_int).cast(),
                    std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
                );
            }
        }
        Ok(RtnlSocket {
            fd,
            seq: 1,
            buf: vec![0u8; 1 << 16],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send one request and collect the payloads of the data messages that
    /// answer it (type, flags, payload) until its ACK, error or DONE.
    fn exchange(&mut self, msg: &[u8]) -> Result<Vec<(u16, u16, Vec<u8>)>, RawErr> {
        let seq = msg
            .get(8..12)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_ne_bytes)
            .unwrap_or(0);
        send(self.fd.as_raw_fd(), msg, MsgFlags::empty()).map_err(sys)?;
        let mut got = Vec::new();
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(RawErr {
                        errno: Some(Errno::ETIMEDOUT),
                        detail: Some("no answer from the kernel in 10 s".into()),
                    });
                }
                Err(e) => return Err(sys(e)),
            };
            let msgs = rtnl::split(&self.buf[..n]).map_err(|e| RawErr {
                errno: None,
                detail: Some(e.to_string()),
            })?;
            for m in msgs {
                if m.seq != seq {
                    continue; // a late answer to an earlier request
                }
                match m.ty {
                    rtnl::NLMSG_ERROR => {
                        let e = rtnl::parse_error(&m).map_err(|e| RawErr {
                            errno: None,
                            detail: Some(e.to_string()),
                        })?;
                        if e.errno == 0 {
                            return Ok(got);
                        }
                        return Err(RawErr {
                            errno: Some(Errno::from_raw(e.errno)),
                            detail: e.message,
                        });
                    }
                    rtnl::NLMSG_DONE => return Ok(got),
                    ty => got.push((ty, m.flags, m.payload.to_vec())),
                }
            }
        }
    }

    /// A dump, retried when the kernel says it was interrupted by a change.
    fn dump(&mut self, build: impl Fn(u32) -> Vec<u8>) -> Result<Vec<Vec<u8>>, RawErr> {
        let mut tries = 0;
        loop {
            let seq = self.next_seq();
            let got = self.exchange(&build(seq))?;
            let intr = got.iter().any(|(_, f, _)| f & rtnl::NLM_F_DUMP_INTR != 0);
            tries += 1;
            if !intr || tries >= 5 {
                return Ok(got.into_iter().map(|(_, _, p)| p).collect());
            }
        }
    }

    /// A request that only wants an acknowledgement.
    fn ack(&mut self, build: impl Fn(u32) -> Vec<u8>) -> Result<(), RawErr> {
        let seq = self.next_seq();
        self.exchange(&build(seq)).map(|_| ())
    }

    /// Every link (a link the parser rejects is logged and left out).
    pub fn links(&mut self) -> Result<Vec<Link>, NetError> {
        let payloads = self
            .dump(rtnl::get_links)
            .map_err(|e| e.at("listing links", None))?;
        Ok(payloads
            .iter()
            .filter_map(|p| match rtnl::parse_link(p) {
                Ok(l) => Some(l),
                Err(e) => {
                    log::warn!("net: skipping a link: {e}");
                    None
                }
            })
            .collect())
    }

    fn one_link(&mut self, build: impl Fn(u32) -> Vec<u8>) -> Result<Link, RawErr> {
        let seq = self.next_seq();
        let got = self.exchange(&build(seq))?;
        let p = got
            .iter()
            .find(|(ty, _, _)| *ty == rtnl::RTM_NEWLINK)
            .ok_or(RawErr {
                errno: None,
                detail: Some("the kernel sent no link".into()),
            })?;
        rtnl::parse_link(&p.2).map_err(|e| RawErr {
            errno: None,
            detail: Some(e.to_string()),
        })
    }

    /// One link by index.
    pub fn link(&mut self, index: u32) -> Result<Link, NetError> {
        self.one_link(|s| rtnl::get_link(s, index))
            .map_err(|e| e.at(&format!("reading link {index}"), None))
    }

    /// One link by name.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link, NetError> {
        self.one_link(|s| rtnl::get_link_by_name(s, name))
            .map_err(|e| e.at("reading the link", Some(name)))
    }

    /// Rename link `index` (now `old`) to `new`; the link must be down.
    pub fn rename_link(&mut self, index: u32, old: &str, new: &str) -> Result<(), NetError> {
        self.ack(|s| rtnl::set_link_name(s, index, new))
            .map_err(|e| e.at(&format!("renaming it to {new}"), Some(old)))
    }

    /// Every address of a family (AF_UNSPEC: all).
    pub fn addrs(&mut self, family: u8) -> Result<Vec<Addr>, NetError> {
        let payloads = self
            .dump(|s| rtnl::get_addrs(s, family))
            .map_err(|e| e.at("listing addresses", None))?;
        Ok(payloads
            .iter()
            .filter_map(|p| rtnl::parse_addr(p).ok())
            .collect())
    }
}

/// One step of bringing the NIC up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The link the MAC matched.
    UseLink {
        name: String,
        index: u32,
        mac: [u8; 6],
    },
    LinkUp {
        name: String,
        already_up: bool,
    },
    CreateVlan {
        parent: String,
        vid: u16,
        name: String,
    },
    ReuseVlan {
        name: String,
        vid: u16,
    },
    WaitCarrier {
        name: String,
        timeout: Duration,
    },
    AddAddress {
        name: String,
        addr: IpAddr,
        prefix_len: u8,
        nodad: bool,
    },
    WaitDad {
        name: String,
        addr: IpAddr,
        timeout: Duration,
    },
    DefaultRoute {
        name: String,
        gateway: IpAddr,
        onlink: bool,
    },
    HostRoute {
        name: String,
        target: IpAddr,
        via: Option<IpAddr>,
        onlink: bool,
    },
    /// Something worth saying that needs no action.
    Note(String),
}

impl Step {
    /// The interface the step acts on.
    pub fn ifname(&self) -> Option<&str> {
        match self {
            Step::UseLink { name, .. }
            | Step::LinkUp { name, .. }
            | Step::CreateVlan { name, .. }
            | Step::ReuseVlan { name, .. }
            | Step::WaitCarrier { name, .. }
            | Step::AddAddress { name, .. }
            | Step::WaitDad { name, .. }
            | Step::DefaultRoute { name, .. }
            | Step::HostRoute { name, .. } => Some(name),
            Step::Note(_) => None,
        }
    }

    /// The step as a phrase for error messages ("setting the link up").
    pub fn what(&self) -> String {
        match self {
            Step::UseLink { .. } => "finding the boot NIC".into(),
            Step::LinkUp { .. } => "setting the link up".into(),
            Step::CreateVlan { vid, parent, .. } => format!("creating VLAN {vid} on {parent}"),
            Step::ReuseVlan { vid, .. } => format!("reusing VLAN {vid}"),
            Step::WaitCarrier { .. } => "waiting for carrier".into(),
            Step::AddAddress {
                addr, prefix_len, ..
            } => format!("adding address {addr}/{prefix_len}"),
            Step::WaitDad { addr, .. } => format!("duplicate address detection for {addr}"),
            Step::DefaultRoute { gateway, .. } => format!("adding the default route via {gateway}"),
            Step::HostRoute { target, via, .. } => match via {
                Some(g) => format!("adding the route to the target {target} via {g}"),
                None => format!("adding the route to the target {target}"),
            },
            Step::Note(n) => n.clone(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::UseLink { name, index, mac } => write!(
                f,
                "use {name} (ifindex {index}), the link with MAC {}",
                format_mac(mac)
            ),
            Step::LinkUp { name, already_up } => {
                write!(f, "set {name} up")?;
                if *already_up {
                    write!(f, " (already up)")?;
                }
                Ok(())
            }
            Step::CreateVlan { parent, vid, name } => {
                write!(f, "create VLAN {vid} on {parent} as {name}")
            }
            Step::ReuseVlan { name, vid } => write!(f, "reuse the existing VLAN {vid}: {name}"),
            Step::WaitCarrier { name, timeout } => write!(
                f,
                "wait up to {:.1} s for carrier on {name}",
                timeout.as_secs_f64()
            ),
            Step::AddAddress {
                name,
                addr,
                prefix_len,
                nodad,
            } => {
                write!(f, "add address {addr}/{prefix_len} to {name}")?;
                if *nodad {
                    write!(f, " (no duplicate address detection)")?;
                }
                Ok(())
            }
            Step::WaitDad {
                name,
                addr,
                timeout,
            } => write!(
                f,
                "wait up to {:.1} s for duplicate address detection of {addr} on {name}",
                timeout.as_secs_f64()
            ),
            Step::DefaultRoute {
                name,
                gateway,
                onlink,
            } => {
                write!(f, "set the default route via {gateway} dev {name}")?;
                if *onlink {
                    write!(f, " onlink")?;
                }
                Ok(())
            }
            Step::HostRoute {
                name,
                target,
                via,
                onlink,
            } => {
                let host = if target.is_ipv4() { 32 } else { 128 };
                match via {
                    Some(g) => write!(
                        f,
                        "route the target {target}/{host} via {g} dev {name}{}",
                        if *onlink { " onlink" } else { "" }
                    ),
                    None => write!(f, "route the target {target}/{host} directly on {name}"),
                }
            }
            Step::Note(n) => write!(f, "note: {n}"),
        }
    }
}

/// Whether `a` is inside `net`/`prefix_len` (false across families).
pub fn in_prefix(a: &IpAddr, net: &IpAddr, prefix_len: u8) -> bool {
    fn masked(bytes: &[u8], bits: u32) -> Vec<u8> {
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let start = (i as u32) * 8;
                if bits >= start + 8 {
                    *b
                } else if bits <= start {
                    0
                } else {
                    b & (0xffu8 << (8 - (bits - start)))
                }
            })
            .collect()
    }
    let bits = u32::from(prefix_len);
    match (a, net) {
        (IpAddr::V4(x), IpAddr::V4(y)) => masked(&x.octets(), bits) == masked(&y.octets(), bits),
        (IpAddr::V6(x), IpAddr::V6(y)) => masked(&x.octets(), bits) == masked(&y.octets(), bits),
        _ => false,
    }
}

pub use crate::url::is_v6_link_local;

/// The link the MAC names: the one with that current or permanent MAC,
/// ignoring links stacked on it (VLANs, bridges, bonds share its MAC).
pub fn find_link<'a>(mac: &[u8; 6], links: &'a [Link]) -> Result<&'a Link, NetError> {
    let step = "finding the boot NIC";
    if *mac == [0u8; 6] {
        return Err(NetError::new(step, None, "the NIC's MAC is all zeros"));
    }
    let mut matching: Vec<&Link> = links.iter().filter(|l| l.has_mac(mac)).collect();
    if matching.iter().any(|l| !l.is_stacked()) {
        matching.retain(|l| !l.is_stacked());
    }
    // A NIC whose burnt-in MAC is this one wins over one that copied it.
    matching.sort_by_key(|l| (l.perm_address != mac, l.index));
    match matching.first() {
        Some(l) => Ok(l),
        None => {
            let seen = links
                .iter()
                .filter(|l| l.flags & rtnl::IFF_LOOPBACK == 0)
                .map(|l| match <[u8; 6]>::try_from(l.address.as_slice()) {
                    Ok(m) => format!("{} {}", l.name, format_mac(&m)),
                    Err(_) => l.name.clone(),
                })
                .collect::<Vec<_>>();
            Err(NetError::new(
                step,
                None,
                format!(
                    "no interface has MAC {} (interfaces: {})",
                    format_mac(mac),
                    if seen.is_empty() {
                        "none but loopback".to_string()
                    } else {
                        seen.join(", ")
                    }
                ),
            ))
        }
    }
}

/// Where udev keeps its database and its control socket.
const UDEV_RUN: &str = "/run/udev";

/// Wait, bounded by the carrier timeout, until the boot NIC exists and,
/// when udev runs, udev has finished with it; return the link list then.
///
/// The boot does not wait for udev to settle (the whole coldplug, seconds
/// under a slow CPU): it loads the NIC's driver itself when the table
/// gives its PCI address, and waits for just this one interface. udev must
/// still be done with it before the link is set up: udev renames an
/// interface (eth0 -> ens3) only while it is down, and the hand-off, the
/// real root's network configuration and its `.link` files all name the
/// final name. udev writes /run/udev/data/n<ifindex> once it has processed
/// the interface; without a running udev there is nothing to wait for, but
/// the interface, still down, is given the name udev would have given it
/// ([`rename_as_udev_would`]) and the links are listed again.
fn wait_for_link(sock: &mut RtnlSocket, cfg: &NicConfig) -> Result<Vec<Link>, NetError> {
    let mut done = |index| udev_done_with(Path::new(UDEV_RUN), index);
    let udev = Path::new(UDEV_RUN).join("control").exists();
    wait_for_link_with(sock, cfg, udev.then_some(&mut done))
}

/// [`wait_for_link`] with udev's "done with link N" test given, `None`
/// when no udev runs (tests stand in for udev).
fn wait_for_link_with(
    sock: &mut RtnlSocket,
    cfg: &NicConfig,
    mut udev_done: Option<&mut dyn FnMut(u32) -> bool>,
) -> Result<Vec<Link>, NetError> {
    let start = Instant::now();
    let mut loaded = false;
    let mut naming_done = udev_done.is_some();
    let mut next_note = Duration::from_secs(2);
    loop {
        let links = sock.links()?;
        let found = find_link(&cfg.mac, &links)
            .map(|l| (l.index, l.name.clone(), l.is_up(), l.address.clone()));
        let waiting_for = match &found {
            Ok((index, name, up, address)) => {
                if !naming_done {
                    naming_done = true;
                    if *up {
                        log::debug!("net: {name} is already up: its name stays");
                    } else if rename_as_udev_would(
                        sock,
                        (*index, name, address),
                        Path::new("/sys"),
                        &crate::kcmdline::read(),
                    ) {
                        continue; // list the links again, under the new name
                    }
                }
                let udev = udev_done.is_some();
                if udev_done.as_mut().is_none_or(|done| done(*index)) {
                    // udev renames the link and then writes its database:
                    // the list above may predate the rename (a boot NIC
                    // handed off as eth0 while the real root calls it
                    // ens3). List again, now that the name is final.
                    let links = if udev { sock.links()? } else { links };
                    if start.elapsed() > Duration::from_millis(100)
                        && let Ok(l) = find_link(&cfg.mac, &links)
                    {
                        log::info!(
                            "net: {} ({}) ready after {:.2} s",
                            l.name,
                            format_mac(&cfg.mac),
                            start.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(links);
                }
                format!("udev to finish with {name}")
            }
            Err(_) => format!("the interface with MAC {}", format_mac(&cfg.mac)),
        };
        if !loaded {
            loaded = true;
            if found.is_err()
                && let Some(pci) = &cfg.pci
            {
                load_driver(Path::new("/sys/bus/pci/devices").join(pci).as_path());
            }
        }
        if start.elapsed() >= cfg.carrier_timeout {
            return match found {
                // udev never got to it: use it as it is named now.
                Ok((_, name, _, _)) => {
                    log::warn!(
                        "net: udev has not processed {name} after {:.0} s; using it under this name",
                        cfg.carrier_timeout.as_secs_f64()
                    );
                    Ok(links)
                }
                Err(e) => Err(e),
            };
        }
        if start.elapsed() >= next_note {
            next_note += Duration::from_secs(2);
            log::info!(
                "net: waiting for {waiting_for}: {:.0} s of {:.0} s",
                start.elapsed().as_secs_f64(),
                cfg.carrier_timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Without udev: rename the link (index, name, current address), down,
/// to the name udev's default policy would give it, as [`ifname::decide`]
/// works it out from the sysfs at `sys` and the kernel command line
/// `cmdline`. Whether it was renamed; a failure is logged and the kernel's
/// name kept (a name is never worth failing the boot).
fn rename_as_udev_would(
    sock: &mut RtnlSocket,
    (index, name, address): (u32, &str, &[u8]),
    sys: &Path,
    cmdline: &str,
) -> bool {
    match ifname::decide(sys, name, index, address, cmdline) {
        ifname::Naming::Keep(why) => {
            if ifname::naming_disabled(cmdline).is_some() {
                log::info!("net: keeping the name {name}: {why}");
            } else {
                log::debug!("net: keeping the name {name}: {why}");
            }
            false
        }
        ifname::Naming::Rename(new) => match sock.rename_link(index, name, &new) {
            Ok(()) => {
                log::info!("net: renamed {name} to {new} (predictable name, as udev would)");
                true
            }
            Err(e) => {
                let why = match e.errno {
                    Some(Errno::EEXIST) => "another interface has that name; ",
                    Some(Errno::EBUSY) => "the link is in use (up); ",
                    _ => "",
                };
                log::warn!("net: keeping the name {name}: {why}{e}");
                false
            }
        },
    }
}

/// The link called `name` (`ip=…:ens3:…`, netroot's netdev). Where no udev
/// runs (sanroot as /init) nothing has named the NICs yet: the down,
/// kernel-named link that udev would call `name` is renamed to it first,
/// so the command line's names mean what they mean with udev.
pub fn link_by_final_name(sock: &mut RtnlSocket, name: &str) -> Result<Link, NetError> {
    let err = match sock.link_by_name(name) {
        Ok(l) => return Ok(l),
        Err(e) => e,
    };
    if Path::new(UDEV_RUN).join("control").exists() {
        return Err(err);
    }
    let cmdline = crate::kcmdline::read();
    let sys = Path::new("/sys");
    for l in sock.links()?.iter().filter(|l| !l.is_up()) {
        let wanted = matches!(
            ifname::decide(sys, &l.name, l.index, &l.address, &cmdline),
            ifname::Naming::Rename(n) if n == name
        );
        if wanted && rename_as_udev_would(sock, (l.index, &l.name, &l.address), sys, &cmdline) {
            return sock.link_by_name(name);
        }
    }
    Err(err)
}

/// Whether udev has processed network interface `index` (its database
/// entry exists).
fn udev_done_with(udev_run: &Path, index: u32) -> bool {
    udev_run.join("data").join(format!("n{index}")).exists()
}

/// Load the driver of the PCI device at `dev` (a /sys/bus/pci/devices
/// entry) and of the devices on buses below it (virtio-net's virtioN), by
/// their modaliases, the way udev's coldplug would. Best effort: errors
/// are logged, the wait that follows decides.
fn load_driver(dev: &Path) {
    let mut aliases = Vec::new();
    let mut push = |p: &Path| {
        if let Ok(a) = std::fs::read_to_string(p.join("modalias")) {
            let a = a.trim();
            if !a.is_empty() && a.is_ascii() && !a.starts_with('-') {
                aliases.push(a.to_string());
            }
        }
    };
    push(dev);
    if let Ok(rd) = std::fs::read_dir(dev) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("virtio") {
                push(&e.path());
            }
        }
    }
    if aliases.is_empty() {
        log::debug!("net: {} has no modalias", dev.display());
        return;
    }
    for a in aliases {
        match std::process::Command::new("modprobe")
            .args(["-q", "-b", &a])
            .status()
        {
            Ok(st) if st.success() => log::debug!("net: modprobe {a}: loaded"),
            Ok(st) => log::debug!("net: modprobe {a}: {st}"),
            Err(e) => log::debug!("net: modprobe {a}: {e}"),
        }
    }
}

/// The steps [`apply`] takes for `cfg` given the current `links`.
pub fn plan_steps(cfg: &NicConfig, links: &[Link]) -> Result<Vec<Step>, NetError> {
    let mut steps = Vec::new();
    let parent = find_link(&cfg.mac, links)?;
    steps.push(Step::UseLink {
        name: parent.name.clone(),
        index: parent.index,
        mac: cfg.mac,
    });
    steps.push(Step::LinkUp {
        name: parent.name.clone(),
        already_up: parent.is_up(),
    });
    let ifname = if cfg.vlan == 0 {
        parent.name.clone()
    } else {
        if cfg.vlan > 4094 {
            return Err(NetError::new(
                format!("creating VLAN {}", cfg.vlan),
                Some(&parent.name),
                "VLAN ids are 1 to 4094",
            ));
        }
        let existing = links.iter().find(|l| {
            l.kind.as_deref() == Some("vlan")
                && l.link == Some(parent.index)
                && l.vlan_id == Some(cfg.vlan)
        });
        match existing {
            Some(v) => {
                steps.push(Step::ReuseVlan {
                    name: v.name.clone(),
                    vid: cfg.vlan,
                });
                steps.push(Step::LinkUp {
                    name: v.name.clone(),
                    already_up: v.is_up(),
                });
                v.name.clone()
            }
            None => {
                let name = rtnl::vlan_name(&parent.name, cfg.vlan);
                if let Some(other) = links.iter().find(|l| l.name == name) {
                    return Err(NetError::new(
                        format!("creating VLAN {} on {}", cfg.vlan, parent.name),
                        Some(&name),
                        format!(
                            "{name} exists but is not VLAN {} on {} (it is {})",
                            cfg.vlan,
                            parent.name,
                            match (&other.kind, other.vlan_id) {
                                (Some(k), Some(v)) => format!("{k} {v}"),
                                (Some(k), None) => k.clone(),
                                (None, _) => "a physical link".into(),
                            }
                        ),
                    ));
                }
                steps.push(Step::CreateVlan {
                    parent: parent.name.clone(),
                    vid: cfg.vlan,
                    name: name.clone(),
                });
                steps.push(Step::LinkUp {
                    name: name.clone(),
                    already_up: false,
                });
                name
            }
        }
    };
    steps.push(Step::WaitCarrier {
        name: ifname.clone(),
        timeout: cfg.carrier_timeout,
    });

    let Some((addr, prefix_len)) = cfg.addr else {
        steps.push(Step::Note(
            "the NIC has no address: nothing more to configure (DHCP is not done here)".into(),
        ));
        return Ok(steps);
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max || addr.is_unspecified() || addr.is_multicast() {
        return Err(NetError::new(
            format!("adding address {addr}/{prefix_len}"),
            Some(&ifname),
            "not a usable address and prefix length",
        ));
    }
    steps.push(Step::AddAddress {
        name: ifname.clone(),
        addr,
        prefix_len,
        nodad: cfg.nodad && addr.is_ipv6(),
    });
    if addr.is_ipv6() && !cfg.nodad {
        steps.push(Step::WaitDad {
            name: ifname.clone(),
            addr,
            timeout: cfg.dad_timeout,
        });
    }

    let gateway = match cfg.gateway {
        Some(g) if g.is_ipv4() != addr.is_ipv4() => {
            steps.push(Step::Note(format!(
                "ignoring the gateway {g}: not the family of the address {addr}"
            )));
            None
        }
        Some(g) if g == addr => {
            steps.push(Step::Note(format!(
                "ignoring the gateway {g}: it is our own address"
            )));
            None
        }
        other => other,
    };
    // A gateway outside every prefix on the link is reached "onlink".
    let gw_onlink = |g: &IpAddr| !in_prefix(g, &addr, prefix_len) && !is_v6_link_local(g);
    if let Some(g) = gateway {
        steps.push(Step::DefaultRoute {
            name: ifname.clone(),
            gateway: g,
            onlink: gw_onlink(&g),
        });
    }

    if let Some(t) = cfg.target {
        if t.is_ipv4() != addr.is_ipv4() {
            steps.push(Step::Note(format!(
                "no route to the target {t}: the NIC's address {addr} is of the other family"
            )));
        } else if t == addr {
            steps.push(Step::Note(format!(
                "the target {t} is our own address: no route"
            )));
        } else if in_prefix(&t, &addr, prefix_len) || Some(t) == gateway {
            steps.push(Step::HostRoute {
                name: ifname.clone(),
                target: t,
                via: None,
                onlink: false,
            });
        } else if let Some(g) = gateway {
            steps.push(Step::HostRoute {
                name: ifname.clone(),
                target: t,
                via: Some(g),
                onlink: gw_onlink(&g),
            });
        } else {
            steps.push(Step::Note(format!(
                "the target {t} is outside {addr}/{prefix_len} and there is no gateway: no route added"
            )));
        }
    }
    Ok(steps)
}

/// The steps [`apply`] would take, one human-readable line each.
pub fn plan(cfg: &NicConfig, links: &[Link]) -> Result<Vec<String>, NetError> {
    Ok(plan_steps(cfg, links)?
        .iter()
        .map(Step::to_string)
        .collect())
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The configured interface (the VLAN when there is one).
    pub ifname: String,
    pub ifindex: u32,
    /// The NIC under a VLAN.
    pub parent: Option<String>,
    pub addr: Option<(IpAddr, u8)>,
    /// How long carrier took.
    pub carrier_wait: Duration,
    /// One line per step, as logged.
    pub log: Vec<String>,
}

/// Bring the NIC up in the calling thread's network namespace.
pub fn apply(cfg: &NicConfig) -> Result<Applied, NetError> {
    let mut sock = RtnlSocket::open()?;
    let links = wait_for_link(&mut sock, cfg)?;
    let steps = plan_steps(cfg, &links)?;
    let mut index_of: Vec<(String, u32)> =
        links.iter().map(|l| (l.name.clone(), l.index)).collect();
    let mut out = Applied {
        ifname: String::new(),
        ifindex: 0,
        parent: None,
        addr: cfg.addr,
        carrier_wait: Duration::ZERO,
        log: Vec::new(),
    };
    for step in &steps {
        let ifname = step.ifname().unwrap_or("");
        let idx = index_of
            .iter()
            .find(|(n, _)| n == ifname)
            .map(|(_, i)| *i)
            .unwrap_or(0);
        let fail = |e: RawErr| e.at(&step.what(), step.ifname());
        let needs_index = !matches!(
            step,
            Step::UseLink { .. } | Step::CreateVlan { .. } | Step::Note(_)
        );
        if needs_index && idx == 0 {
            return Err(NetError::new(
                step.what(),
                step.ifname(),
                "the interface is not in the link list (renamed or removed meanwhile?)",
            ));
        }
        let line = match step {
            Step::UseLink { name, index, .. } => {
                out.ifname = name.clone();
                out.ifindex = *index;
                step.to_string()
            }
            Step::LinkUp { .. } => {
                sock.ack(|s| rtnl::set_link_up(s, idx)).map_err(fail)?;
                format!("set {ifname} up")
            }
            Step::CreateVlan { name, vid, .. } => {
                let parent = out.ifindex;
                match sock.ack(|s| rtnl::new_vlan(s, parent, name, *vid)) {
                    Ok(()) => {}
                    // Created by someone else between our dump and now.
                    Err(RawErr {
                        errno: Some(Errno::EEXIST),
                        ..
                    }) => {}
                    Err(e) => {
                        let mut e = fail(e);
                        if e.errno == Some(Errno::EOPNOTSUPP) {
                            let d = e.detail.take().unwrap_or_default();
                            e.detail = Some(format!(
                                "{d}{}the kernel has no 802.1Q support (module 8021q)",
                                if d.is_empty() { "" } else { "; " }
                            ));
                        }
                        return Err(e);
                    }
                }
                let l = sock.link_by_name(name).map_err(|e| NetError {
                    step: step.what(),
                    ..e
                })?;
                if l.kind.as_deref() != Some("vlan") || l.vlan_id != Some(*vid) {
                    return Err(NetError::new(
                        step.what(),
                        Some(name),
                        format!("{name} is not VLAN {vid}"),
                    ));
                }
                out.parent = Some(std::mem::take(&mut out.ifname));
                index_of.push((name.clone(), l.index));
                out.ifname = name.clone();
                out.ifindex = l.index;
                format!("created {name} (ifindex {}), VLAN {vid}", l.index)
            }
            Step::ReuseVlan { name, .. } => {
                out.parent = Some(std::mem::take(&mut out.ifname));
                out.ifname = name.clone();
                out.ifindex = idx;
                step.to_string()
            }
            Step::WaitCarrier { timeout, .. } => {
                let waited =
                    wait_carrier(&mut sock, idx, ifname, *timeout).map_err(|e| NetError {
                        step: step.what(),
                        ..e
                    })?;
                out.carrier_wait = waited;
                format!("{ifname} has carrier (after {:.2} s)", waited.as_secs_f64())
            }
            Step::AddAddress {
                addr,
                prefix_len,
                nodad,
                ..
            } => {
                sock.ack(|s| rtnl::new_addr(s, idx, addr, *prefix_len, *nodad))
                    .map_err(fail)?;
                format!("{ifname} has address {addr}/{prefix_len}")
            }
            Step::WaitDad { addr, timeout, .. } => {
                let waited = wait_dad(&mut sock, idx, addr, *timeout).map_err(|d| {
                    let mut e = d;
                    e.step = step.what();
                    e.ifname = Some(ifname.to_string());
                    e
                })?;
                format!(
                    "{addr} passed duplicate address detection (after {:.2} s)",
                    waited.as_secs_f64()
                )
            }
            Step::DefaultRoute {
                gateway, onlink, ..
            } => {
                let r = rtnl::RouteSpec {
                    dst: None,
                    gateway: Some(*gateway),
                    oif: idx,
                    onlink: *onlink,
                };
                sock.ack(|s| rtnl::new_route(s, &r)).map_err(fail)?;
                format!("default route via {gateway} dev {ifname}")
            }
            Step::HostRoute {
                target,
                via,
                onlink,
                ..
            } => {
                let host = if target.is_ipv4() { 32 } else { 128 };
                let r = rtnl::RouteSpec {
                    dst: Some((*target, host)),
                    gateway: *via,
                    oif: idx,
                    onlink: *onlink,
                };
                sock.ack(|s| rtnl::new_route(s, &r)).map_err(fail)?;
                step.to_string()
            }
            Step::Note(_) => step.to_string(),
        };
        log::info!("net: {line}");
        out.log.push(line);
    }
    Ok(out)
}

/// Poll the link until it has carrier; log progress every second.
fn wait_carrier(
    sock: &mut RtnlSocket,
    index: u32,
    ifname: &str,
    timeout: Duration,
) -> Result<Duration, NetError> {
    let start = Instant::now();
    let mut next_log = Duration::from_secs(1);
    loop {
        let l = sock
            .one_link(|s| rtnl::get_link(s, index))
            .map_err(|e| e.at("waiting for carrier", Some(ifname)))?;
        let elapsed = start.elapsed();
        if l.has_carrier() {
            return Ok(elapsed);
        }
        if elapsed >= timeout {
            return Err(NetError::new(
                "waiting for carrier",
                Some(ifname),
                format!(
                    "no carrier after {:.1} s (operstate {}; is the cable in, the switch port up?)",
                    elapsed.as_secs_f64(),
                    l.operstate_name()
                ),
            ));
        }
        if elapsed >= next_log {
            log::info!(
                "net: waiting for carrier on {ifname}: {:.0} s of {:.0} s (operstate {})",
                elapsed.as_secs_f64(),
                timeout.as_secs_f64(),
                l.operstate_name()
            );
            next_log += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(50).min(timeout.saturating_sub(elapsed)));
    }
}

/// Poll the address until it is no longer tentative.
fn wait_dad(
    sock: &mut RtnlSocket,
    index: u32,
    addr: &IpAddr,
    timeout: Duration,
) -> Result<Duration, NetError> {
    let start = Instant::now();
    loop {
        let found = sock
            .addrs(rtnl::family_of(addr))?
            .into_iter()
            .find(|a| a.index == index && a.address.as_ref() == Some(addr));
        let elapsed = start.elapsed();
        let Some(a) = found else {
            return Err(NetError::new("", None, "the address disappeared"));
        };
        if a.flags & rtnl::IFA_F_DADFAILED != 0 {
            return Err(NetError::new(
                "",
                None,
                "another host on the link has this address (duplicate address detected)",
            ));
        }
        if a.flags & rtnl::IFA_F_TENTATIVE == 0 {
            return Ok(elapsed);
        }
        if elapsed >= timeout {
            return Err(NetError::new(
                "",
                None,
                format!("still tentative after {:.1} s", elapsed.as_secs_f64()),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The text of /etc/resolv.conf for these servers (at most three: the
/// resolver reads no more; duplicates and unspecified addresses are left
/// out) and an optional search domain.
pub fn resolv_conf(dns: &[IpAddr], search: Option<&str>) -> String {
    let mut out = String::from("# Generated by sanroot from the iBFT\n");
    if let Some(s) = search.map(str::trim).filter(|s| !s.is_empty()) {
        out.push_str(&format!("search {s}\n"));
    }
    let mut seen: Vec<IpAddr> = Vec::new();
    for d in dns {
        if d.is_unspecified() || seen.contains(d) {
            continue;
        }
        seen.push(*d);
    }
    for (i, d) in seen.iter().enumerate() {
        if i < 3 {
            out.push_str(&format!("nameserver {d}\n"));
        } else {
            out.push_str(&format!(
                "# nameserver {d} (the resolver uses only three)\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnl::{IFF_LOOPBACK, IFF_LOWER_UP, IFF_UP};

    /// udev renames a new link and only then writes its database entry,
    /// so a link list taken before the rename must not be what the wait
    /// returns once udev is done (CI, run with two boots at once: a boot
    /// NIC handed off as eth0 while the real root called it ens3). The
    /// stand-in for udev renames the link when first asked and says
    /// "done" at once: the list the wait took just before is stale.
    /// Needs root (a network namespace of the test thread's own, a veth
    /// pair in it).
    #[test]
    fn a_rename_just_before_udev_is_done_is_seen() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "a_rename_just_before_udev_is_done_is_seen needs root (a network namespace): run the tests as root"
        );
        let t = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            // Children of this thread start in its namespace.
            let ip = |args: &[&str]| {
                let o = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .expect("running ip (iproute2)");
                assert!(
                    o.status.success(),
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            };
            let mac = [0x52, 0x54, 0x00, 0x5a, 0x00, 0x77];
            ip(&[
                "link",
                "add",
                "eth0",
                "address",
                "52:54:00:5a:00:77",
                "type",
                "veth",
                "peer",
                "name",
                "peer0",
            ]);
            let mut sock = RtnlSocket::open().expect("rtnetlink socket");
            let cfg = NicConfig::new(mac);
            let mut asked = 0;
            let mut udev_done = |_| {
                asked += 1;
                if asked == 1 {
                    ip(&["link", "set", "eth0", "name", "ens3"]);
                }
                true
            };
            let links = wait_for_link_with(&mut sock, &cfg, Some(&mut udev_done))
                .expect("the link is there");
            let l = find_link(&mac, &links).expect("found by its MAC");
            assert_eq!(l.name, "ens3", "the name after udev's rename");
        });
        if let Err(e) = t.join() {
            std::panic::resume_unwind(e);
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn link(index: u32, name: &str, mac: [u8; 6], flags: u32) -> Link {
        Link {
            index,
            name: name.into(),
            flags,
            link_type: 1,
            address: mac.to_vec(),
            ..Default::default()
        }
    }

    fn links() -> Vec<Link> {
        vec![
            link(1, "lo", [0; 6], IFF_UP | IFF_LOOPBACK),
            link(2, "eth0", [0x52, 0x54, 0, 0xaa, 0, 1], 0),
            link(3, "eth1", MAC, 0),
        ]
    }

    fn cfg() -> NicConfig {
        NicConfig {
            addr: Some(("10.0.2.15".parse().unwrap(), 24)),
            gateway: Some("10.0.2.2".parse().unwrap()),
            dns: vec!["10.0.2.3".parse().unwrap()],
            target: Some("192.168.7.9".parse().unwrap()),
            carrier_timeout: Duration::from_secs(5),
            ..NicConfig::new(MAC)
        }
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(MAC));
        assert_eq!(parse_mac("52-54-00-12-34-56"), Some(MAC));
        let upper = parse_mac("AA:BB:CC:DD:EE:0F").unwrap();
        assert_eq!(upper, parse_mac("aa:bb:cc:dd:ee:0f").unwrap());
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("52:54:00:12:34:5g"), None);
        assert_eq!(parse_mac("52:54:00:12:34:567"), None);
    }

    #[test]
    fn plan_ipv4_off_link_target() {
        let p = plan(&cfg(), &links()).unwrap();
        assert_eq!(
            p,
            vec![
                "use eth1 (ifindex 3), the link with MAC 52:54:00:12:34:56",
                "set eth1 up",
                "wait up to 5.0 s for carrier on eth1",
                "add address 10.0.2.15/24 to eth1",
                "set the default route via 10.0.2.2 dev eth1",
                "route the target 192.168.7.9/32 via 10.0.2.2 dev eth1",
            ]
        );
    }

    #[test]
    fn plan_on_link_target_and_up_link() {
        let mut c = cfg();
        c.target = Some("10.0.2.2".parse().unwrap());
        let mut l = links();
        l[2].flags = IFF_UP | IFF_LOWER_UP;
        let p = plan(&c, &l).unwrap();
        assert_eq!(p[1], "set eth1 up (already up)");
        assert_eq!(p[5], "route the target 10.0.2.2/32 directly on eth1");
        c.target = Some("10.0.2.200".parse().unwrap());
        c.gateway = None;
        let p = plan(&c, &l).unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(p[4], "route the target 10.0.2.200/32 directly on eth1");
        c.target = Some("10.9.9.9".parse().unwrap());
        let p = plan(&c, &l).unwrap();
        assert!(
            p[4].starts_with("note: the target 10.9.9.9 is outside"),
            "{p:?}"
        );
    }

    #[test]
    fn plan_vlan_create_and_reuse() {
        let mut c = cfg();
        c.vlan = 42;
        let p = plan(&c, &links()).unwrap();
        assert_eq!(p[1], "set eth1 up");
        assert_eq!(p[2], "create VLAN 42 on eth1 as eth1.42");
        assert_eq!(p[3], "set eth1.42 up");
        assert_eq!(p[4], "wait up to 5.0 s for carrier on eth1.42");
        assert_eq!(p[5], "add address 10.0.2.15/24 to eth1.42");
        // An existing VLAN 42 on eth1 (whatever its name, same MAC) is
        // reused, and never mistaken for the NIC itself.
        let mut l = links();
        let mut v = link(9, "vl42", MAC, IFF_UP);
        v.kind = Some("vlan".into());
        v.vlan_id = Some(42);
        v.link = Some(3);
        l.insert(0, v);
        let p = plan(&c, &l).unwrap();
        assert_eq!(
            p[0],
            "use eth1 (ifindex 3), the link with MAC 52:54:00:12:34:56"
        );
        assert_eq!(p[2], "reuse the existing VLAN 42: vl42");
        assert_eq!(p[3], "set vl42 up (already up)");
        // The name taken by something else: a clear error.
        let mut l = links();
        l.push(link(10, "eth1.42", [2, 0, 0, 0, 0, 1], 0));
        let e = plan(&c, &l).unwrap_err().to_string();
        assert!(e.contains("eth1.42 exists but is not VLAN 42"), "{e}");
        c.vlan = 4095;
        assert!(plan(&c, &links()).is_err());
    }

    #[test]
    fn plan_ipv6() {
        let c = NicConfig {
            addr: Some(("fd00::15".parse().unwrap(), 64)),
            gateway: Some("fe80::1".parse().unwrap()),
            target: Some("fd01::20".parse().unwrap()),
            carrier_timeout: Duration::from_secs(2),
            ..NicConfig::new(MAC)
        };
        let p = plan(&c, &links()).unwrap();
        assert_eq!(
            &p[3..],
            &[
                "add address fd00::15/64 to eth1",
                "wait up to 5.0 s for duplicate address detection of fd00::15 on eth1",
                "set the default route via fe80::1 dev eth1",
                "route the target fd01::20/128 via fe80::1 dev eth1",
            ]
        );
        let c = NicConfig { nodad: true, ..c };
        let p = plan(&c, &links()).unwrap();
        assert_eq!(
            p[3],
            "add address fd00::15/64 to eth1 (no duplicate address detection)"
        );
        assert!(
            !p.iter()
                .any(|l| l.contains("duplicate address detection of"))
        );
    }

    #[test]
    fn plan_onlink_gateway_and_oddities() {
        // A /32 with a gateway outside it (cloud style): onlink.
        let mut c = cfg();
        c.addr = Some(("10.0.2.15".parse().unwrap(), 32));
        let p = plan(&c, &links()).unwrap();
        assert_eq!(p[4], "set the default route via 10.0.2.2 dev eth1 onlink");
        assert_eq!(
            p[5],
            "route the target 192.168.7.9/32 via 10.0.2.2 dev eth1 onlink"
        );
        // Mixed families.
        let mut c = cfg();
        c.gateway = Some("fd00::1".parse().unwrap());
        c.target = Some("fd00::2".parse().unwrap());
        let p = plan(&c, &links()).unwrap();
        assert!(
            p[4].starts_with("note: ignoring the gateway fd00::1"),
            "{p:?}"
        );
        assert!(
            p[5].starts_with("note: no route to the target fd00::2"),
            "{p:?}"
        );
        // No address.
        let mut c = cfg();
        c.addr = None;
        let p = plan(&c, &links()).unwrap();
        assert_eq!(p.len(), 4);
        assert!(p[3].contains("no address"));
        // Bad prefix.
        let mut c = cfg();
        c.addr = Some(("10.0.2.15".parse().unwrap(), 33));
        let e = plan(&c, &links()).unwrap_err().to_string();
        assert!(
            e.contains("eth1: adding address 10.0.2.15/33: not a usable"),
            "{e}"
        );
    }

    #[test]
    fn udev_database_marks_a_processed_interface() {
        let d = std::env::temp_dir().join(format!("sanroot-udev-{}", std::process::id()));
        std::fs::create_dir_all(d.join("data")).unwrap();
        assert!(!udev_done_with(&d, 2));
        std::fs::write(d.join("data/n2"), "I:1\n").unwrap();
        assert!(udev_done_with(&d, 2));
        assert!(!udev_done_with(&d, 3));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn finding_the_nic() {
        // No match: the error lists what there is.
        let c = NicConfig::new([2, 0, 0, 0, 0, 9]);
        let e = plan(&c, &links()).unwrap_err();
        assert_eq!(e.step, "finding the boot NIC");
        let s = e.to_string();
        assert!(s.contains("no interface has MAC 02:00:00:00:00:09"), "{s}");
        assert!(s.contains("eth1 52:54:00:12:34:56"), "{s}");
        assert!(!s.contains("lo "), "{s}");
        assert!(plan(&NicConfig::new([0; 6]), &links()).is_err());
        // Permanent address: a NIC whose MAC was changed is still found.
        let mut l = links();
        l[2].address = vec![2, 2, 2, 2, 2, 2];
        l[2].perm_address = MAC.to_vec();
        assert_eq!(find_link(&MAC, &l).unwrap().name, "eth1");
        // A bridge that copied the MAC loses to the NIC.
        let mut l = links();
        let mut br = link(0, "br0", MAC, IFF_UP);
        br.kind = Some("bridge".into());
        l.push(br);
        assert_eq!(find_link(&MAC, &l).unwrap().name, "eth1");
    }

    #[test]
    fn prefixes() {
        let a: IpAddr = "10.0.2.15".parse().unwrap();
        assert!(in_prefix(&"10.0.2.200".parse().unwrap(), &a, 24));
        assert!(!in_prefix(&"10.0.3.1".parse().unwrap(), &a, 24));
        assert!(in_prefix(&"10.0.3.1".parse().unwrap(), &a, 22));
        assert!(in_prefix(&"1.2.3.4".parse().unwrap(), &a, 0));
        assert!(!in_prefix(&"10.0.2.14".parse().unwrap(), &a, 32));
        let b: IpAddr = "fd00::15".parse().unwrap();
        assert!(in_prefix(&"fd00::1".parse().unwrap(), &b, 64));
        assert!(!in_prefix(&"fd00:0:0:1::1".parse().unwrap(), &b, 64));
        assert!(in_prefix(&"fd00:0:0:1::1".parse().unwrap(), &b, 63));
        assert!(!in_prefix(&a, &b, 0));
    }

    #[test]
    fn resolv() {
        let d: Vec<IpAddr> = [
            "10.0.2.3", "fd00::3", "10.0.2.3", "0.0.0.0", "1.1.1.1", "9.9.9.9",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(
            resolv_conf(&d, Some("example.org")),
            "# Generated by sanroot from the iBFT\n\
             search example.org\n\
             nameserver 10.0.2.3\n\
             nameserver fd00::3\n\
             nameserver 1.1.1.1\n\
             # nameserver 9.9.9.9 (the resolver uses only three)\n"
        );
        assert_eq!(
            resolv_conf(&[], Some(" ")),
            "# Generated by sanroot from the iBFT\n"
        );
    }

    #[test]
    fn errors_name_step_interface_and_errno() {
        let e = NetError {
            step: "adding address 10.0.2.15/24".into(),
            ifname: Some("eth1".into()),
            errno: Some(Errno::EINVAL),
            detail: Some("Invalid prefix".into()),
        };
        assert_eq!(
            e.to_string(),
            "eth1: adding address 10.0.2.15/24: Invalid argument (EINVAL) [kernel: Invalid prefix]"
        );
    }

    #[test]
    fn from_ibft_nic() {
        use crate::ibft::model::{Origin, Place};
        let nic = Nic {
            place: Place::default(),
            index: 0,
            ip: Some("10.0.2.15".parse().unwrap()),
            prefix_len: 24,
            origin: Origin::Manual,
            gateway: Some("10.0.2.2".parse().unwrap()),
            primary_dns: Some("10.0.2.3".parse().unwrap()),
            secondary_dns: None,
            dhcp_server: None,
            vlan: 7,
            vlan_raw: 7,
            mac: MAC,
            pci_bdf: None,
            hostname: None,
        };
        let c = NicConfig::from_ibft(&nic, Some("10.0.2.2".parse().unwrap()));
        assert_eq!(c.mac, MAC);
        assert_eq!(c.vlan, 7);
        assert_eq!(c.addr, Some(("10.0.2.15".parse().unwrap(), 24)));
        assert_eq!(c.dns, vec!["10.0.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.target, Some("10.0.2.2".parse().unwrap()));
    }
}
