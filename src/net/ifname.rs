//! The name systemd-udevd would give a network interface, for boots
//! without udev.
//!
//! When sanroot is /init and no udev runs, the boot NIC keeps the kernel's
//! name (eth0). Once it is up, the real root's udev can no longer rename
//! it, yet the real root's configuration names the predictable name (ens3,
//! enp0s3, eno1). So before the link goes up, sanroot renames it the way
//! udev's default policy would: this module works out that name, purely
//! from sysfs (read below a root directory, so tests use a fake tree).
//!
//! What is followed: the `net_id` builtin and `99-default.link`
//! (`NamePolicy=keep kernel database onboard slot path`) of systemd 252
//! (Debian 12), with naming scheme v252 unless `net.naming-scheme=` picks
//! an older one. This is an independent implementation of the rules
//! systemd.net-naming-scheme(7) describes, for PCI devices only:
//!
//! - which interfaces: not stacked (`ifindex` = `iflink`), ARP type 1
//!   (Ethernet, "en"; DEVTYPE wlan → "wl", wwan → "ww"), 32 (InfiniBand,
//!   "ib", from v240) or 256 (SLIP, "sl"); the device directly under the
//!   interface (virtio buses skipped, as for virtio-net) must be PCI.
//! - onboard `o<index>`: the PCI device's `acpi_index`, else its SMBIOS
//!   `index`; 0 only from v240; at most 16383 before v249, 65535 since.
//! - slot `s<n>`: a `/sys/bus/pci/slots/<n>` whose `address` starts the
//!   PCI device's name, else its upstream bridges'; s390 `function_id`
//!   slots from v249 (their domain is left out). A slot found on a bridge
//!   is not used from v247, and from v251 used only when the device is
//!   multi-function.
//! - path `p<bus>s<dev>`.
//! - slot and path get a `P<domain>` prefix for a domain other than 0 and
//!   `f<function>` when the function is not 0 or the device is
//!   multi-function (header type bit 7 in `config`); with ARI enabled
//!   (v239+) the function is slot*8+function.
//! - all three end in `n<phys_port_name>` when the driver names the port,
//!   else `d<dev_port>` when `dev_port` is above 0 (slot and path: for
//!   InfiniBand `dev_id` stands in for a 0 `dev_port`).
//! - an SR-IOV virtual function (v239+) is named after its physical
//!   function, with `v<n>` appended.
//!
//! The policy: only a kernel-enumerated name (`name_assign_type` 1) is
//! replaced; `keep` (3, 4) and `kernel` (2) keep theirs, and an unknown
//! origin (0 or unreadable) is left alone too, more cautious than udev.
//! Then the first valid name of onboard, slot, path. `database` (the hwdb's
//! ID_NET_NAME_FROM_DATABASE, empty by default) is not consulted.
//! `net.ifnames=0` disables renaming, and so does `biosdevname=1` (that
//! naming is not done here).
//!
//! Not done: USB, BCMA, CCW, VIO, Xen, platform, netdevsim and devicetree
//! names (those interfaces keep their kernel name), hwdb, `.link` files
//! other than the default, and any udev other than 252's (a real root with
//! another systemd may expect another name).

use std::path::{Path, PathBuf};

/// A naming scheme: the `net_id` features that change PCI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    pub name: &'static str,
    flags: u32,
}

const SR_IOV_V: u32 = 1 << 0;
const NPAR_ARI: u32 = 1 << 1;
const INFINIBAND: u32 = 1 << 2;
const ZERO_ACPI_INDEX: u32 = 1 << 3;
const BRIDGE_NO_SLOT: u32 = 1 << 9;
const SLOT_FUNCTION_ID: u32 = 1 << 10;
const INDEX_16BIT: u32 = 1 << 11;
const BRIDGE_MULTIFUNCTION_SLOT: u32 = 1 << 14;

const V239: u32 = SR_IOV_V | NPAR_ARI;
const V240: u32 = V239 | INFINIBAND | ZERO_ACPI_INDEX;
const V247: u32 = V240 | BRIDGE_NO_SLOT;
const V249: u32 = V247 | SLOT_FUNCTION_ID | INDEX_16BIT;
const V251: u32 = V249 | BRIDGE_MULTIFUNCTION_SLOT;

/// The schemes systemd 252 knows (those between differ from their
/// predecessor only in things that do not touch PCI names).
const SCHEMES: &[(&str, u32)] = &[
    ("v238", 0),
    ("v239", V239),
    ("v240", V240),
    ("v241", V240),
    ("v243", V240),
    ("v245", V240),
    ("v247", V247),
    ("v249", V249),
    ("v250", V249),
    ("v251", V251),
    ("v252", V251),
];

impl Scheme {
    /// v252, the default (latest) scheme of systemd 252.
    pub const V252: Scheme = Scheme {
        name: "v252",
        flags: V251,
    };

    /// A scheme by its name ("v247", "latest").
    pub fn from_name(name: &str) -> Option<Scheme> {
        if name == "latest" {
            return Some(Scheme::V252);
        }
        SCHEMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(name, flags)| Scheme { name, flags })
    }

    fn has(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }
}

// ---- The kernel command line ------------------------------------------

/// The value of the last `key=value` (or bare `key`: "") on the command
/// line; '-' and '_' are alike in keys, as systemd takes them.
fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    let norm = |s: &str| s.replace('_', "-");
    let key = norm(key);
    crate::kcmdline::split_args(cmdline)
        .into_iter()
        .rev()
        .find_map(|(k, v)| (norm(k) == key).then(|| v.unwrap_or("").to_string()))
}

/// A boolean as systemd parses it (a bare key is true).
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// Why the kernel command line rules out renaming, if it does:
/// `net.ifnames=0` (as udev honours it), or `biosdevname=1` (the
/// biosdevname naming it asks for is not done here, so the kernel name is
/// left to whatever runs later).
pub fn naming_disabled(cmdline: &str) -> Option<&'static str> {
    if cmdline_value(cmdline, "net.ifnames").and_then(|v| parse_bool(&v)) == Some(false) {
        return Some("net.ifnames=0 is on the kernel command line");
    }
    if cmdline_value(cmdline, "biosdevname").and_then(|v| parse_bool(&v)) == Some(true) {
        return Some(
            "biosdevname=1 is on the kernel command line and sanroot does not do biosdevname naming",
        );
    }
    None
}

/// The scheme `net.naming-scheme=` picks, else v252. An unknown name is
/// logged and ignored, as udev does.
pub fn scheme_from_cmdline(cmdline: &str) -> Scheme {
    match cmdline_value(cmdline, "net.naming-scheme") {
        None => Scheme::V252,
        Some(n) => Scheme::from_name(&n).unwrap_or_else(|| {
            log::warn!(
                "net: unknown naming scheme net.naming-scheme={n} on the kernel command line; using {}",
                Scheme::V252.name
            );
            Scheme::V252
        }),
    }
}

// ---- sysfs ---------------------------------------------------------------

/// A sysfs attribute's first line, without its newline; `None` when it
/// cannot be read.
fn attr(dir: &Path, name: &str) -> Option<String> {
    let s = std::fs::read_to_string(dir.join(name)).ok()?;
    Some(s.lines().next().unwrap_or("").to_string())
}

/// An attribute read as a decimal number.
fn attr_num(dir: &Path, name: &str) -> Option<u64> {
    attr(dir, name)?.trim().parse().ok()
}

/// A device's subsystem (the name its `subsystem` link points to).
fn subsystem(dev: &Path) -> Option<String> {
    let l = std::fs::read_link(dev.join("subsystem")).ok()?;
    Some(l.file_name()?.to_string_lossy().into_owned())
}

fn sysname(dev: &Path) -> String {
    dev.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The nearest directory above `dev` that is a device (has `uevent`),
/// within the sysfs root.
fn parent(root: &Path, dev: &Path) -> Option<PathBuf> {
    let mut p = dev.parent()?;
    loop {
        if !p.starts_with(root) || p == root {
            return None;
        }
        if p.join("uevent").exists() {
            return Some(p.to_path_buf());
        }
        p = p.parent()?;
    }
}

/// The nearest device above `dev` in `subsys`.
fn parent_in(root: &Path, dev: &Path, subsys: &str) -> Option<PathBuf> {
    let mut p = parent(root, dev)?;
    loop {
        if subsystem(&p).as_deref() == Some(subsys) {
            return Some(p);
        }
        p = parent(root, &p)?;
    }
}

/// PCI configuration space says multi-function (header type bit 7).
fn is_multifunction(pci: &Path) -> bool {
    const PCI_HEADER_TYPE: usize = 0x0e;
    match std::fs::read(pci.join("config")) {
        Ok(c) if c.len() >= 64 => c.get(PCI_HEADER_TYPE).is_some_and(|b| b & 0x80 != 0),
        _ => false,
    }
}

/// The modalias names PCI subclass 04 (a PCI bridge).
fn is_bridge(pci: &Path) -> bool {
    let Some(m) = attr(pci, "modalias") else {
        return false;
    };
    if !m.starts_with("pci:") {
        return false;
    }
    match m.rfind('s').and_then(|i| m.get(i..)) {
        Some(rest) => rest.get(1..2) == Some("c") && rest.get(2..4) == Some("04"),
        None => false,
    }
}

/// "0000:00:03.0" → (domain, bus, device, function).
fn parse_bdf(name: &str) -> Option<(u32, u32, u32, u32)> {
    let mut p = name.splitn(3, ':');
    let domain = u32::from_str_radix(p.next()?, 16).ok()?;
    let bus = u32::from_str_radix(p.next()?, 16).ok()?;
    let (dev, func) = p.next()?.split_once('.')?;
    Some((
        domain,
        bus,
        u32::from_str_radix(dev, 16).ok()?,
        func.parse().ok()?,
    ))
}

/// What the interface itself says about its port.
struct Port {
    /// `phys_port_name`, when the driver gives a non-empty one.
    name: Option<String>,
    /// `dev_port` (0 when absent or unreadable).
    dev_port: u64,
    /// `dev_port`, or for InfiniBand with a 0 `dev_port` its `dev_id`.
    dev_port_or_id: u64,
}

impl Port {
    fn suffix(&self, dev_port: u64) -> String {
        match &self.name {
            Some(n) => format!("n{n}"),
            None if dev_port > 0 => format!("d{dev_port}"),
            None => String::new(),
        }
    }
}

/// The names `net_id` exports for an interface, with their prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// ID_NET_NAME_ONBOARD ("eno1").
    pub onboard: Option<String>,
    /// ID_NET_NAME_SLOT ("ens3").
    pub slot: Option<String>,
    /// ID_NET_NAME_PATH ("enp0s3").
    pub path: Option<String>,
}

impl Names {
    /// The name `NamePolicy=… onboard slot path` picks: the first valid.
    pub fn pick(&self) -> Option<&str> {
        [&self.onboard, &self.slot, &self.path]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|n| ifname_valid(n))
    }
}

/// What the kernel accepts as a name and udev would use: 1 to 15
/// printable ASCII characters, none of ':', '/', '%', not "." or "..",
/// not all digits.
pub fn ifname_valid(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= super::rtnl::IFNAME_MAX
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b'/' | b'%'))
        && !n.bytes().all(|b| b.is_ascii_digit())
}

/// The onboard name ("o1", without prefix) of `pci`.
fn onboard(pci: &Path, port: &Port, scheme: Scheme) -> Option<String> {
    let v = attr(pci, "acpi_index").or_else(|| attr(pci, "index"))?;
    let idx: u64 = v.trim().parse().ok()?;
    if idx == 0 && !scheme.has(ZERO_ACPI_INDEX) {
        return None;
    }
    // Firmware reports rubbish indexes (VMware: 2^24-1); the cut-off.
    let max = if scheme.has(INDEX_16BIT) {
        (1 << 16) - 1
    } else {
        (1 << 14) - 1
    };
    if idx > max {
        return None;
    }
    Some(format!("o{idx}{}", port.suffix(port.dev_port)))
}

/// The slot and path names ("s3", "p0s3", without prefix) of `pci`.
fn slot_and_path(
    root: &Path,
    pci: &Path,
    port: &Port,
    scheme: Scheme,
) -> (Option<String>, Option<String>) {
    let Some((domain, bus, dev, mut func)) = parse_bdf(&sysname(pci)) else {
        return (None, None);
    };
    if scheme.has(NPAR_ARI) && attr(pci, "ari_enabled").as_deref() == Some("1") {
        // ARI: up to 256 functions, the device number is their top bits.
        func += dev * 8;
    }
    let multi = is_multifunction(pci);
    let domain_part = |domain: u32| {
        if domain > 0 {
            format!("P{domain}")
        } else {
            String::new()
        }
    };
    let func_and_port = || {
        let mut s = String::new();
        if func > 0 || multi {
            s.push_str(&format!("f{func}"));
        }
        s.push_str(&port.suffix(port.dev_port_or_id));
        s
    };
    let path = format!("{}p{bus}s{dev}{}", domain_part(domain), func_and_port());
    let slot = hotplug_slot(root, pci, scheme, multi).map(|(n, with_domain)| {
        let d = if with_domain { domain } else { 0 };
        format!("{}s{n}{}", domain_part(d), func_and_port())
    });
    (slot, Some(path))
}

/// The hotplug slot number of `pci` or of a bridge above it, and whether
/// the domain belongs in the name (not for s390 function ids).
fn hotplug_slot(root: &Path, pci: &Path, scheme: Scheme, multi: bool) -> Option<(u32, bool)> {
    let slots = root.join("bus/pci/slots");
    let entries: Vec<(u32, PathBuf)> = std::fs::read_dir(&slots)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('+') {
                return None;
            }
            let i: u32 = n.parse().ok()?;
            (i > 0).then(|| (i, e.path()))
        })
        .collect();
    let mut cur = pci.to_path_buf();
    loop {
        if scheme.has(SLOT_FUNCTION_ID)
            && let Some(f) = attr(&cur, "function_id")
        {
            // s390: the slot directory is the function id in 8 hex digits.
            let f = f.trim();
            let id = match f.strip_prefix("0x").or_else(|| f.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16).ok()?,
                None => f.parse::<u64>().ok()?,
            };
            let id = u32::try_from(id).ok().filter(|i| *i > 0)?;
            if !slots.join(format!("{id:08x}")).exists() {
                return None;
            }
            return Some((id, false));
        }
        let name = sysname(&cur);
        let found = entries
            .iter()
            .find(|(_, p)| attr(p, "address").is_some_and(|a| name.starts_with(a.as_str())));
        if let Some((i, _)) = found {
            // A bridge's slot would be claimed by every device behind it.
            if scheme.has(BRIDGE_NO_SLOT)
                && is_bridge(&cur)
                && !(scheme.has(BRIDGE_MULTIFUNCTION_SLOT) && multi)
            {
                return None;
            }
            return Some((*i, true));
        }
        cur = parent_in(root, &cur, "pci")?;
    }
}

/// For an SR-IOV virtual function: its physical function and "v<n>".
fn virtfn(pci: &Path) -> Option<(PathBuf, String)> {
    let pf = std::fs::canonicalize(pci.join("physfn")).ok()?;
    if !pf.join("uevent").exists() {
        return None;
    }
    std::fs::read_dir(&pf).ok()?.flatten().find_map(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        let num = n.strip_prefix("virtfn")?;
        let target = std::fs::canonicalize(e.path()).ok()?;
        (target == pci).then(|| (pf.clone(), format!("v{num}")))
    })
}

/// The names `net_id` of systemd 252 would export for interface `ifname`
/// under `scheme`, from the sysfs mounted at `sys`. An error says why
/// there are none (for the debug log).
pub fn names(sys: &Path, ifname: &str, scheme: Scheme) -> Result<Names, String> {
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(format!("{ifname:?} is not an interface name"));
    }
    let root = std::fs::canonicalize(sys).map_err(|e| format!("{}: {e}", sys.display()))?;
    let class = root.join("class/net").join(ifname);
    let dev = std::fs::canonicalize(&class).map_err(|e| format!("{}: {e}", class.display()))?;
    if let (Some(i), Some(l)) = (attr_num(&dev, "ifindex"), attr_num(&dev, "iflink"))
        && i != l
    {
        return Err(format!("{ifname} is stacked on another link (iflink {l})"));
    }
    let iftype =
        attr_num(&dev, "type").ok_or_else(|| format!("{}/type is unreadable", dev.display()))?;
    let devtype = std::fs::read_to_string(dev.join("uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVTYPE=").map(str::to_string))
        });
    let prefix = match (iftype, devtype.as_deref()) {
        (1, Some("wlan")) => "wl",
        (1, Some("wwan")) => "ww",
        (1, _) => "en",
        (32, _) if scheme.has(INFINIBAND) => "ib",
        (256, _) => "sl",
        (t, _) => return Err(format!("{ifname} has link type {t}: not named by udev")),
    };
    let mut up = parent(&root, &dev).ok_or_else(|| format!("{ifname} has no parent device"))?;
    while subsystem(&up).as_deref() == Some("virtio") {
        up = parent(&root, &up).ok_or_else(|| format!("{ifname}: nothing above its virtio"))?;
    }
    if subsystem(&up).as_deref() != Some("pci") {
        return Err(format!(
            "{ifname} is not directly on a PCI device (on {}): only PCI names are given here",
            up.display()
        ));
    }
    let dev_port = attr_num(&dev, "dev_port");
    let dev_port_or_id = match dev_port {
        Some(0) if iftype == 32 => attr_num(&dev, "dev_id").unwrap_or(0),
        p => p.unwrap_or(0),
    };
    let port = Port {
        name: attr(&dev, "phys_port_name").filter(|n| !n.is_empty()),
        dev_port: dev_port.unwrap_or(0),
        dev_port_or_id,
    };
    let (pci, suffix) = match virtfn(&up).filter(|_| scheme.has(SR_IOV_V)) {
        Some((pf, v)) => (pf, v),
        None => (up, String::new()),
    };
    let (slot, path) = slot_and_path(&root, &pci, &port, scheme);
    let whole = |n: Option<String>| n.map(|n| format!("{prefix}{n}{suffix}"));
    Ok(Names {
        onboard: whole(onboard(&pci, &port, scheme)),
        slot: whole(slot),
        path: whole(path),
    })
}

/// The name udev's default policy (scheme v252) would give `ifname`,
/// whatever its current name's origin; `None` when there is none.
pub fn predictable_name(sys: &Path, ifname: &str) -> Option<String> {
    names(sys, ifname, Scheme::V252)
        .ok()?
        .pick()
        .map(str::to_string)
}

/// NET_NAME_ENUM: the kernel numbered the interface (eth0).
pub const NET_NAME_ENUM: u8 = 1;
/// NET_NAME_PREDICTABLE: the kernel named it predictably (policy `kernel`).
pub const NET_NAME_PREDICTABLE: u8 = 2;

/// `name_assign_type` of an interface; `None` when unreadable (the kernel
/// refuses to show NET_NAME_UNKNOWN).
pub fn name_assign_type(sys: &Path, ifname: &str) -> Option<u8> {
    if ifname.contains('/') {
        return None;
    }
    attr(&sys.join("class/net").join(ifname), "name_assign_type")?
        .trim()
        .parse()
        .ok()
}

/// Whether the sysfs at `sys` shows this very link: its `ifindex` and
/// `address` are the link's. sysfs shows the network namespace it was
/// mounted in, which need not be the caller's (a thread moved into another
/// namespace): there, a same-named interface is another one.
fn same_link(sys: &Path, ifname: &str, index: u32, mac: &[u8]) -> Result<(), String> {
    let dir = sys.join("class/net").join(ifname);
    let seen_index = attr_num(&dir, "ifindex");
    let want = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let seen_mac = attr(&dir, "address").map(|a| a.trim().to_ascii_lowercase());
    if seen_index == Some(u64::from(index)) && seen_mac.as_deref() == Some(want.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "{} is not this link (ifindex {index}, address {want}) but {}: \
             sysfs shows another network namespace",
            dir.display(),
            match (seen_index, seen_mac) {
                (Some(i), Some(m)) => format!("ifindex {i}, address {m}"),
                _ => "absent or unreadable".to_string(),
            }
        ))
    }
}

/// What to do with an interface's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// Rename it to this.
    Rename(String),
    /// Leave it, for this reason.
    Keep(String),
}

/// The whole decision, when no udev runs, for the link `ifname` (ifindex
/// `index`, current address `mac`): the kernel command line, whether the
/// sysfs at `sys` shows this link, the name's origin, then the predictable
/// name.
pub fn decide(sys: &Path, ifname: &str, index: u32, mac: &[u8], cmdline: &str) -> Naming {
    if let Some(why) = naming_disabled(cmdline) {
        return Naming::Keep(why.to_string());
    }
    if let Err(why) = same_link(sys, ifname, index, mac) {
        return Naming::Keep(why);
    }
    match name_assign_type(sys, ifname) {
        Some(NET_NAME_ENUM) => {}
        Some(NET_NAME_PREDICTABLE) => {
            return Naming::Keep("the kernel named it predictably (name_assign_type 2)".into());
        }
        Some(t) => {
            return Naming::Keep(format!("it was named by userspace (name_assign_type {t})"));
        }
        None => {
            return Naming::Keep("the origin of its name is unknown (no name_assign_type)".into());
        }
    }
    let scheme = scheme_from_cmdline(cmdline);
    match names(sys, ifname, scheme) {
        Err(why) => Naming::Keep(why),
        Ok(n) => match n.pick() {
            Some(new) if new == ifname => {
                Naming::Keep("it already has its predictable name".into())
            }
            Some(new) => Naming::Rename(new.to_string()),
            None => Naming::Keep(format!(
                "no predictable name under scheme {} ({n:?})",
                scheme.name
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A fake sysfs tree in a temporary directory.
    struct Fake {
        root: PathBuf,
    }

    impl Fake {
        fn new(tag: &str) -> Fake {
            let root =
                std::env::temp_dir().join(format!("sanroot-ifname-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("class/net")).unwrap();
            fs::create_dir_all(root.join("bus/pci/slots")).unwrap();
            Fake { root }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }

        fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
            let p = self.path(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }

        /// A device directory under devices/ in `subsys`.
        fn device(&self, rel: &str, subsys: &str) {
            let d = self.path(&format!("devices/{rel}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("uevent"), "").unwrap();
            let s = d.join("subsystem");
            let _ = fs::remove_file(&s);
            let target = if subsys == "net" {
                self.path("class/net")
            } else {
                self.path(&format!("bus/{subsys}"))
            };
            std::os::unix::fs::symlink(target, s).unwrap();
        }

        fn pci(&self, rel: &str) {
            self.device(rel, "pci");
            self.write(
                &format!("devices/{rel}/modalias"),
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
            );
        }

        fn multifunction(&self, rel: &str) {
            let mut c = vec![0u8; 256];
            c[0x0e] = 0x80;
            self.write(&format!("devices/{rel}/config"), c);
        }

        /// An Ethernet interface under device `parent`, kernel-named.
        fn netdev(&self, parent: &str, name: &str) {
            let rel = format!("{parent}/net/{name}");
            self.device(&rel, "net");
            for (a, v) in [
                ("type", "1"),
                ("ifindex", "2"),
                ("iflink", "2"),
                ("name_assign_type", "1"),
                ("address", "52:54:00:12:34:56"),
                ("uevent", "INTERFACE=eth0\nIFINDEX=2\n"),
            ] {
                self.write(&format!("devices/{rel}/{a}"), format!("{v}\n"));
            }
            std::os::unix::fs::symlink(
                self.path(&format!("devices/{rel}")),
                self.path(&format!("class/net/{name}")),
            )
            .unwrap();
        }

        fn set(&self, name: &str, attr: &str, v: &str) {
            let p = fs::canonicalize(self.path(&format!("class/net/{name}"))).unwrap();
            fs::write(p.join(attr), format!("{v}\n")).unwrap();
        }

        fn slot(&self, n: &str, address: &str) {
            self.write(
                &format!("bus/pci/slots/{n}/address"),
                format!("{address}\n"),
            );
        }

        fn name(&self, ifname: &str) -> Option<String> {
            predictable_name(&self.root, ifname)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    /// virtio-net on 0000:00:03.0, as QEMU's i440fx shows it.
    fn virtio(tag: &str) -> Fake {
        let f = Fake::new(tag);
        f.pci("pci0000:00/0000:00:03.0");
        f.device("pci0000:00/0000:00:03.0/virtio0", "virtio");
        f.netdev("pci0000:00/0000:00:03.0/virtio0", "eth0");
        f
    }

    #[test]
    fn virtio_net_with_an_acpi_slot_is_ens3() {
        let f = virtio("slot");
        f.slot("1", "0000:00:01");
        f.slot("3", "0000:00:03");
        let n = names(&f.root, "eth0", Scheme::V252).unwrap();
        assert_eq!(n.slot.as_deref(), Some("ens3"));
        assert_eq!(n.path.as_deref(), Some("enp0s3"));
        assert_eq!(n.onboard, None);
        assert_eq!(f.name("eth0").as_deref(), Some("ens3"));
        assert_eq!(
            decide(&f.root, "eth0", 2, &MAC, "console=ttyS0 quiet"),
            Naming::Rename("ens3".into())
        );
    }

    #[test]
    fn without_a_slot_the_path_name() {
        let f = virtio("path");
        assert_eq!(f.name("eth0").as_deref(), Some("enp0s3"));
        // A slot elsewhere, or an unnumbered slot directory, changes nothing.
        f.slot("4", "0000:00:04");
        f.slot("0", "0000:00:03");
        f.slot("abc", "0000:00:03");
        assert_eq!(f.name("eth0").as_deref(), Some("enp0s3"));
        // Without a slots directory at all.
        fs::remove_dir_all(f.path("bus/pci/slots")).unwrap();
        assert_eq!(f.name("eth0").as_deref(), Some("enp0s3"));
    }

    #[test]
    fn multifunction_gets_the_function_even_when_0() {
        let f = Fake::new("mf");
        for func in ["0", "1"] {
            let dev = format!("pci0000:00/0000:00:1c.0/0000:02:00.{func}");
            f.pci(&dev);
            f.multifunction(&dev);
        }
        f.pci("pci0000:00/0000:00:1c.0");
        f.netdev("pci0000:00/0000:00:1c.0/0000:02:00.0", "eth0");
        f.netdev("pci0000:00/0000:00:1c.0/0000:02:00.1", "eth1");
        assert_eq!(f.name("eth0").as_deref(), Some("enp2s0f0"));
        assert_eq!(f.name("eth1").as_deref(), Some("enp2s0f1"));
        // Function 1 of a device whose config space cannot be read (not
        // marked multi-function) still gets f1.
        fs::remove_file(f.path("devices/pci0000:00/0000:00:1c.0/0000:02:00.1/config")).unwrap();
        assert_eq!(f.name("eth1").as_deref(), Some("enp2s0f1"));
        // A single-function device: no f0.
        fs::remove_file(f.path("devices/pci0000:00/0000:00:1c.0/0000:02:00.0/config")).unwrap();
        assert_eq!(f.name("eth0").as_deref(), Some("enp2s0"));
    }

    #[test]
    fn onboard_index_wins_acpi_index_first() {
        let f = virtio("onboard");
        f.slot("3", "0000:00:03");
        let pci = "devices/pci0000:00/0000:00:03.0";
        f.write(&format!("{pci}/acpi_index"), "1\n");
        f.write(&format!("{pci}/index"), "7\n");
        assert_eq!(f.name("eth0").as_deref(), Some("eno1"));
        fs::remove_file(f.path(&format!("{pci}/acpi_index"))).unwrap();
        assert_eq!(f.name("eth0").as_deref(), Some("eno7"));
        // 0 is allowed since v240, not before.
        f.write(&format!("{pci}/index"), "0\n");
        assert_eq!(f.name("eth0").as_deref(), Some("eno0"));
        let v238 = Scheme::from_name("v238").unwrap();
        let n = names(&f.root, "eth0", v238).unwrap();
        assert_eq!(n.onboard, None);
        assert_eq!(n.slot.as_deref(), Some("ens3"));
        // The cut-off: 65535 since v249, 16383 before.
        f.write(&format!("{pci}/index"), "20000\n");
        assert_eq!(f.name("eth0").as_deref(), Some("eno20000"));
        let v247 = Scheme::from_name("v247").unwrap();
        assert_eq!(names(&f.root, "eth0", v247).unwrap().onboard, None);
        f.write(&format!("{pci}/index"), "16777215\n");
        assert_eq!(f.name("eth0").as_deref(), Some("ens3"));
        f.write(&format!("{pci}/index"), "junk\n");
        assert_eq!(f.name("eth0").as_deref(), Some("ens3"));
    }

    #[test]
    fn domain_prefix() {
        let f = Fake::new("domain");
        f.pci("pci0001:00/0001:00:02.0");
        f.netdev("pci0001:00/0001:00:02.0", "eth0");
        assert_eq!(f.name("eth0").as_deref(), Some("enP1p0s2"));
        f.slot("5", "0001:00:02");
        assert_eq!(f.name("eth0").as_deref(), Some("enP1s5"));
        // Hex domains and buses print in decimal.
        let f = Fake::new("domain-hex");
        f.pci("pci0010:1a/0010:1a:1f.0");
        f.netdev("pci0010:1a/0010:1a:1f.0", "eth0");
        assert_eq!(f.name("eth0").as_deref(), Some("enP16p26s31"));
    }

    #[test]
    fn dev_port_and_phys_port_name_suffixes() {
        let f = virtio("port");
        f.set("eth0", "dev_port", "1");
        assert_eq!(f.name("eth0").as_deref(), Some("enp0s3d1"));
        f.slot("3", "0000:00:03");
        f.write("devices/pci0000:00/0000:00:03.0/acpi_index", "2\n");
        let n = names(&f.root, "eth0", Scheme::V252).unwrap();
        assert_eq!(
            (n.onboard.as_deref(), n.slot.as_deref(), n.path.as_deref()),
            (Some("eno2d1"), Some("ens3d1"), Some("enp0s3d1"))
        );
        // dev_port 0 adds nothing; a port name wins over dev_port.
        f.set("eth0", "dev_port", "0");
        assert_eq!(f.name("eth0").as_deref(), Some("eno2"));
        f.set("eth0", "dev_port", "1");
        f.set("eth0", "phys_port_name", "p1");
        assert_eq!(f.name("eth0").as_deref(), Some("eno2np1"));
    }

    #[test]
    fn name_assign_type_decides() {
        let f = virtio("assign");
        assert_eq!(name_assign_type(&f.root, "eth0"), Some(1));
        assert_eq!(
            decide(&f.root, "eth0", 2, &MAC, ""),
            Naming::Rename("enp0s3".into())
        );
        f.set("eth0", "name_assign_type", "4");
        assert!(
            matches!(decide(&f.root, "eth0", 2, &MAC, ""), Naming::Keep(w) if w.contains("userspace"))
        );
        f.set("eth0", "name_assign_type", "2");
        assert!(
            matches!(decide(&f.root, "eth0", 2, &MAC, ""), Naming::Keep(w) if w.contains("predictably"))
        );
        f.set("eth0", "name_assign_type", "0");
        assert!(matches!(
            decide(&f.root, "eth0", 2, &MAC, ""),
            Naming::Keep(_)
        ));
        fs::remove_file(
            f.path("devices/pci0000:00/0000:00:03.0/virtio0/net/eth0/name_assign_type"),
        )
        .unwrap();
        assert!(
            matches!(decide(&f.root, "eth0", 2, &MAC, ""), Naming::Keep(w) if w.contains("unknown"))
        );
        assert!(matches!(
            decide(&f.root, "eth9", 2, &MAC, ""),
            Naming::Keep(_)
        ));
        // sysfs of another network namespace: same name, another link.
        f.set("eth0", "name_assign_type", "1");
        assert_eq!(
            decide(&f.root, "eth0", 2, &MAC, ""),
            Naming::Rename("enp0s3".into())
        );
        let other = decide(&f.root, "eth0", 7, &MAC, "");
        assert!(
            matches!(&other, Naming::Keep(w) if w.contains("another network namespace")),
            "{other:?}"
        );
        let other = decide(&f.root, "eth0", 2, &[2, 0, 0, 0, 0, 1], "");
        assert!(
            matches!(&other, Naming::Keep(w) if w.contains("ifindex 2, address 52:54:00:12:34:56")),
            "{other:?}"
        );
    }

    #[test]
    fn kernel_command_line() {
        let f = virtio("cmdline");
        for off in [
            "net.ifnames=0",
            "quiet net.ifnames=off",
            "net.ifnames=1 net.ifnames=0",
            "net.ifnames=no",
        ] {
            assert_eq!(
                naming_disabled(off),
                Some("net.ifnames=0 is on the kernel command line"),
                "{off}"
            );
            assert!(
                matches!(decide(&f.root, "eth0", 2, &MAC, off), Naming::Keep(w) if w.contains("net.ifnames=0"))
            );
        }
        for on in [
            "",
            "net.ifnames=1",
            "net.ifnames",
            "net.ifnames=0 net.ifnames=1",
            "xnet.ifnames=0",
            "net.ifnames=maybe",
            "biosdevname=0",
            "root=\"LABEL=a net.ifnames=0\"",
        ] {
            assert_eq!(naming_disabled(on), None, "{on}");
        }
        let why = naming_disabled("biosdevname=1").unwrap();
        assert!(why.contains("does not do biosdevname"), "{why}");
        // The scheme can be picked; an unknown one is ignored.
        assert_eq!(scheme_from_cmdline("net.naming-scheme=v247").name, "v247");
        assert_eq!(scheme_from_cmdline("net.naming_scheme=v240").name, "v240");
        assert_eq!(
            scheme_from_cmdline("net.naming-scheme=latest"),
            Scheme::V252
        );
        assert_eq!(
            scheme_from_cmdline("net.naming-scheme=rhel-9.0"),
            Scheme::V252
        );
        assert_eq!(scheme_from_cmdline(""), Scheme::V252);
    }

    #[test]
    fn bridges_and_their_slots() {
        // A single-function NIC behind a switch whose upstream port sits in
        // slot 6: the bridge's slot is not used (v247+), but was before.
        let f = Fake::new("bridge");
        let br = "pci0000:00/0000:00:1c.0";
        let nic = "pci0000:00/0000:00:1c.0/0000:05:00.0";
        f.pci(br);
        f.write(
            &format!("devices/{br}/modalias"),
            "pci:v00008086d00009D10sv00000000sd00000000bc06sc04i00\n",
        );
        f.pci(nic);
        f.netdev(nic, "eth0");
        f.slot("6", "0000:00:1c");
        assert_eq!(f.name("eth0").as_deref(), Some("enp5s0"));
        let v245 = Scheme::from_name("v245").unwrap();
        assert_eq!(
            names(&f.root, "eth0", v245).unwrap().slot.as_deref(),
            Some("ens6")
        );
        // Multi-function: the bridge's slot again from v251, not in v249.
        f.multifunction(nic);
        assert_eq!(f.name("eth0").as_deref(), Some("ens6f0"));
        let v249 = Scheme::from_name("v249").unwrap();
        assert_eq!(names(&f.root, "eth0", v249).unwrap().slot, None);
        // The device's own slot is found first.
        f.slot("2", "0000:05:00");
        assert_eq!(f.name("eth0").as_deref(), Some("ens2f0"));
    }

    #[test]
    fn sr_iov_virtual_function() {
        let f = Fake::new("sriov");
        let pf = "pci0000:00/0000:00:02.0/0000:03:00.0";
        let vf = "pci0000:00/0000:00:02.0/0000:03:10.2";
        f.pci("pci0000:00/0000:00:02.0");
        f.pci(pf);
        f.pci(vf);
        f.netdev(vf, "eth0");
        std::os::unix::fs::symlink(
            f.path(&format!("devices/{pf}")),
            f.path(&format!("devices/{vf}/physfn")),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            f.path(&format!("devices/{vf}")),
            f.path(&format!("devices/{pf}/virtfn5")),
        )
        .unwrap();
        assert_eq!(f.name("eth0").as_deref(), Some("enp3s0v5"));
        let v238 = Scheme::from_name("v238").unwrap();
        assert_eq!(
            names(&f.root, "eth0", v238).unwrap().path.as_deref(),
            Some("enp3s16f2")
        );
    }

    #[test]
    fn ari_and_s390_function_id() {
        let f = Fake::new("ari");
        let d = "pci0000:00/0000:00:02.0/0000:04:01.2";
        f.pci("pci0000:00/0000:00:02.0");
        f.pci(d);
        f.write(&format!("devices/{d}/ari_enabled"), "1\n");
        f.netdev(d, "eth0");
        assert_eq!(f.name("eth0").as_deref(), Some("enp4s1f10"));
        let f = Fake::new("s390");
        let d = "pci0002:00/0002:00:00.0";
        f.pci(d);
        f.write(&format!("devices/{d}/function_id"), "0x00000011\n");
        f.netdev(d, "eth0");
        fs::create_dir_all(f.path("bus/pci/slots/00000011")).unwrap();
        // The slot's name is the function id; the domain is left out.
        assert_eq!(f.name("eth0").as_deref(), Some("ens17"));
        assert_eq!(
            names(&f.root, "eth0", Scheme::from_name("v247").unwrap())
                .unwrap()
                .slot,
            None
        );
    }

    #[test]
    fn what_is_not_named() {
        let f = virtio("unnamed");
        // Not Ethernet.
        f.set("eth0", "type", "772");
        assert!(names(&f.root, "eth0", Scheme::V252).is_err());
        // InfiniBand: "ib" since v240.
        f.set("eth0", "type", "32");
        assert_eq!(f.name("eth0").as_deref(), Some("ibp0s3"));
        assert!(names(&f.root, "eth0", Scheme::from_name("v239").unwrap()).is_err());
        // Wireless.
        f.set("eth0", "type", "1");
        f.set("eth0", "uevent", "DEVTYPE=wlan\nINTERFACE=eth0");
        assert_eq!(f.name("eth0").as_deref(), Some("wlp0s3"));
        // Stacked.
        f.set("eth0", "iflink", "5");
        assert!(names(&f.root, "eth0", Scheme::V252).is_err());
        // USB (the parent is not PCI).
        let f = Fake::new("usb");
        f.pci("pci0000:00/0000:00:14.0");
        f.device("pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0", "usb");
        f.netdev("pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0", "eth0");
        let e = names(&f.root, "eth0", Scheme::V252).unwrap_err();
        assert!(e.contains("not directly on a PCI device"), "{e}");
        assert!(matches!(
            decide(&f.root, "eth0", 2, &MAC, ""),
            Naming::Keep(_)
        ));
        assert!(names(&f.root, "../x", Scheme::V252).is_err());
    }

    #[test]
    fn names_are_checked_and_policy_order_holds() {
        assert!(ifname_valid("enp0s3"));
        assert!(!ifname_valid("enP65535p255s31f7d9"));
        assert!(!ifname_valid("en:1"));
        assert!(!ifname_valid("123"));
        assert!(!ifname_valid(""));
        let n = Names {
            onboard: Some("eno1np0-too-long-name".into()),
            slot: None,
            path: Some("enp0s3".into()),
        };
        assert_eq!(n.pick(), Some("enp0s3"));
        assert_eq!(parse_bdf("0000:00:03.0"), Some((0, 0, 3, 0)));
        assert_eq!(parse_bdf("0000:00:03"), None);
    }
}
