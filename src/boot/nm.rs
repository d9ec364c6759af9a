//! NetworkManager in the real root, the way its own initrd hands over
//! (`rd.sanroot.nm=native`). The default, `rd.sanroot.nm=unmanaged`, keeps
//! every boot NIC unmanaged instead ([`super::handoff`]'s
//! `90-sanroot.conf`): NetworkManager cannot be kept from deconfiguring a
//! device it manages at `nmcli networking off` (below).
//!
//! What NetworkManager's initrd (nm-initrd-generator, then NetworkManager
//! with `configure-and-quit=initrd`) leaves for the real root's
//! NetworkManager, and so what this writes, per boot NIC:
//!
//! | file | mode | why |
//! | --- | --- | --- |
//! | `run/NetworkManager/system-connections/sanroot-<if>.nmconnection` | 0600 | the firmware's configuration as a profile: static addresses (a DHCP lease too: nothing may restart DHCP on the root's NIC), gateway, host route to the portal, DNS servers and domain, the MAC and the interface name; a VLAN as a `vlan` profile on its parent |
//! | `run/NetworkManager/devices/<ifindex>` | 0644 | NetworkManager's own device state: `managed=true`, `connection-uuid=` that profile |
//! | `run/NetworkManager/conf.d/90-sanroot.conf` | 0644 | for every boot NIC `ignore-carrier=yes` (a carrier loss would otherwise deactivate the device after a few seconds, which removes its addresses) and `keep-configuration=yes`; a VLAN's parent `managed=0` |
//!
//! With the device state file NetworkManager *assumes* the profile on the
//! live interface at its start (1.42, src/core/nm-manager.c
//! `get_existing_connection`: the indicated UUID only has to be of the
//! device's type): the device is "connected" with that profile, its
//! addresses and routes are not flushed (an assumed activation commits
//! with `NM_L3_CFG_COMMIT_TYPE_UPDATE`, which only adds), the link is not
//! taken down, DNS reaches NetworkManager's resolv.conf. The keyfile
//! plugin ignores a keyfile that others can read, hence 0600; it holds no
//! secret. The state file's `managed=true` is what NetworkManager writes
//! for a device managed by the user's choice: it wins over
//! `[device] managed=0` in NetworkManager.conf (not over the ifupdown
//! plugin's `unmanaged-devices`, so a NIC that `/etc/network/interfaces`
//! lists stays unmanaged, and untouched). The existence of
//! `/run/NetworkManager/devices` also tells NetworkManager this is not its
//! first start, so it does not guess profiles for other interfaces that
//! something else configured before it.
//!
//! What NetworkManager does with the device afterwards (1.42, Debian 12;
//! the same in 1.52, Debian 13):
//! - stop, restart, shutdown: a device whose type can assume connections
//!   (Ethernet, VLAN) is left configured when NetworkManager quits
//!   (`unmanaged_on_quit`), and the next start assumes it again from the
//!   state file NetworkManager rewrote when it quit. 1.47+ would take
//!   devices down at power-off for `connection.down-on-poweroff=yes`
//!   (default no); the profile says `down-on-poweroff=0` (1.42 ignores a
//!   property it does not know).
//! - `nmcli networking off` (and the desktop's "Enable Networking"
//!   switch) deactivates every active device, assumed ones included: the
//!   deactivation removes the device's addresses and routes
//!   (`nm_device_cleanup(CLEANUP_TYPE_DECONFIGURE)`) and, as the device
//!   becomes unmanaged while asleep, takes its link down; no property of a
//!   profile or a device exempts one. The root's I/O stops, and `nmcli
//!   networking on` does not bring the NIC back. Seen in Debian 12 boots:
//!   without help, `networking on` fails (NetworkManager first writes its
//!   state file under /var/lib with fsync, on the root it has just cut
//!   off, and blocks); with the link, address and routes put back by hand
//!   before it (the root's pending I/O then completed), `networking on`
//!   succeeds, takes the device over as a managed one, which
//!   deconfigures it once more, and the NIC stayed down for minutes: the
//!   root was lost both times. `nmcli device disconnect` and `nmcli
//!   connection down` of the profile deactivate it the same way (not
//!   tried). Only an unmanaged device is left alone: hence the default.
//! - a carrier loss (a switch reboot, a cable): a managed Ethernet device
//!   is deactivated when its carrier stays down for a few seconds, and so
//!   deconfigured; `ignore-carrier=yes` keeps it active (the root's I/O
//!   waits for the link as it does unmanaged).
//! - a VLAN's parent carries no address: it stays unmanaged
//!   (`90-sanroot.conf`, by interface name), so NetworkManager never takes
//!   it down nor runs DHCP on it.
//!
//! Everything is a pure function of the record; [`super::handoff`] writes
//! the files.

use std::fmt::Write as _;
use std::net::IpAddr;

use md5::{Digest, Md5};

use super::handoff::{BootRecord, Nic, header};
use crate::ibft::model::format_mac;
use crate::net::in_prefix;

/// How the hand-off treats NetworkManager (`rd.sanroot.nm=`,
/// [`BootRecord::networkmanager`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NmMode {
    /// A profile per boot NIC that NetworkManager assumes.
    Native,
    /// Every boot NIC unmanaged (`90-sanroot.conf`).
    Unmanaged,
}

impl NmMode {
    /// The default where nothing asks otherwise: the only mode in which
    /// `nmcli networking off` cannot take the root away (see the module
    /// doc).
    pub const DEFAULT: NmMode = NmMode::Unmanaged;

    /// The word of `rd.sanroot.nm=` and of the record.
    pub fn name(self) -> &'static str {
        match self {
            NmMode::Native => "native",
            NmMode::Unmanaged => "unmanaged",
        }
    }

    pub fn parse(s: &str) -> Option<NmMode> {
        match s {
            "native" => Some(NmMode::Native),
            "unmanaged" => Some(NmMode::Unmanaged),
            _ => None,
        }
    }

    /// The mode a record asks for; a record's unknown word is refused.
    pub fn of_record(rec: &BootRecord) -> Result<NmMode, String> {
        NmMode::parse(&rec.networkmanager).ok_or_else(|| {
            format!(
                "networkmanager \"{}\" is neither native nor unmanaged",
                rec.networkmanager.escape_debug()
            )
        })
    }
}

/// Mode of a keyfile: NetworkManager ignores one that others can read.
pub const KEYFILE_MODE: u32 = 0o600;
/// Mode of a device state file (as NetworkManager writes them).
pub const STATE_MODE: u32 = 0o644;
/// Where the profiles go (NetworkManager's in-memory keyfile directory).
pub const CONNECTIONS_DIR: &str = "run/NetworkManager/system-connections";
/// NetworkManager's device state files.
pub const DEVICES_DIR: &str = "run/NetworkManager/devices";

/// The profile's name (`connection.id`) for an interface.
pub fn connection_id(ifname: &str) -> String {
    format!("sanroot-{ifname}")
}

/// A stable UUID (RFC 4122 version 3, MD5) for the NIC's profile: the same
/// NIC, VLAN and name give the same UUID on every boot.
pub fn connection_uuid(mac: Option<[u8; 6]>, vlan: u16, ifname: &str) -> String {
    let mut h = Md5::new();
    h.update(b"sanroot-nm\0");
    h.update(mac.map(|m| format_mac(&m)).unwrap_or_default().as_bytes());
    h.update(format!("\0{vlan}\0{ifname}").as_bytes());
    let mut b: [u8; 16] = h.finalize().into();
    b[6] = (b[6] & 0x0f) | 0x30;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A DNS domain usable as a keyfile list item: letters, digits, `-`, `_`
/// and dots between labels, at most 253 bytes. Anything else (`;` would
/// split the list, `\` starts an escape, spaces and `#` change what
/// NetworkManager reads) is refused.
fn check_domain(field: &str, d: &str) -> Result<(), String> {
    // One trailing dot (the root) is allowed.
    let labels = d.strip_suffix('.').unwrap_or(d);
    let ok = d.len() <= 253
        && labels.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} \"{}\" is not a DNS domain a NetworkManager profile can carry \
             (letters, digits, - and _ between dots); rd.sanroot.nm=unmanaged writes none",
            d.escape_debug()
        ))
    }
}

/// The files of native mode: (path relative to the root, content, mode).
/// `nics` are the record's boot NICs, checked ([`super::handoff`]), the
/// first path's first. Errors name the bad field.
pub(super) fn native_files(
    rec: &BootRecord,
    nics: &[Nic<'_>],
) -> Result<Vec<(String, String, u32)>, String> {
    let mut out = Vec::new();
    let mut parents: Vec<&str> = Vec::new();
    for (i, n) in nics.iter().enumerate() {
        let field = if i == 0 {
            "nic".to_string()
        } else {
            format!("nics[{i}]")
        };
        if let Some(d) = n.domain {
            check_domain(&format!("{field}.domain"), d)?;
        }
        let uuid = connection_uuid(n.mac, n.vlan, n.ifname);
        out.push((
            format!("{CONNECTIONS_DIR}/{}.nmconnection", connection_id(n.ifname)),
            keyfile(rec, n, i == 0, &uuid),
            KEYFILE_MODE,
        ));
        if let Some(ifindex) = n.ifindex {
            out.push((
                format!("{DEVICES_DIR}/{ifindex}"),
                device_state(rec, n, &uuid),
                STATE_MODE,
            ));
        }
        if let Some(p) = n.parent
            && !parents.contains(&p)
            && !nics.iter().any(|o| o.ifname == p)
        {
            parents.push(p);
        }
    }
    if !nics.is_empty() {
        out.push((
            "run/NetworkManager/conf.d/90-sanroot.conf".to_string(),
            device_conf(rec, nics, &parents),
            STATE_MODE,
        ));
    }
    Ok(out)
}

/// The host `n` routes to its portal: its own target, else (an older
/// record) the record's portal for the first NIC.
fn target_of(rec: &BootRecord, n: &Nic<'_>, first: bool) -> Option<IpAddr> {
    n.target.or_else(|| {
        if first {
            super::handoff::host_ip(&rec.portal).map(|a| a.to_canonical())
        } else {
            None
        }
    })
}

/// One keyfile list: "a;b;".
fn list<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("{};", i.to_string()))
        .collect()
}

fn keyfile(rec: &BootRecord, n: &Nic<'_>, first: bool, uuid: &str) -> String {
    let mut s = header(
        rec,
        "#",
        &[
            "NetworkManager's profile of the NIC carrying it, as the firmware (or the",
            "command line) configured it; the lease of a DHCP origin is static here, so",
            "that nothing restarts DHCP on it. /run/NetworkManager/devices/<ifindex>",
            "makes NetworkManager assume it on the live interface at its start: no",
            "flush, no link down. Never `nmcli networking off`, `nmcli device",
            "disconnect` or `nmcli connection down` it: the root would be lost.",
        ],
    );
    let vlan = n.parent.is_some();
    let _ = writeln!(
        s,
        "[connection]\nid={}\nuuid={uuid}\ntype={}\ninterface-name={}\n\
         autoconnect-priority=100\n# NetworkManager 1.47+: never take it down at power-off.\n\
         down-on-poweroff=0",
        connection_id(n.ifname),
        if vlan { "vlan" } else { "ethernet" },
        n.ifname,
    );
    if let Some(m) = n.mac {
        // For a VLAN profile the Ethernet MAC names the parent.
        let _ = writeln!(s, "\n[ethernet]\nmac-address={}", format_mac(&m));
    }
    if let Some(p) = n.parent {
        let _ = writeln!(s, "\n[vlan]\nid={}\nparent={p}", n.vlan);
    }
    let target = target_of(rec, n, first);
    let mut domain_done = false;
    for v4 in [true, false] {
        let addrs: Vec<(IpAddr, u8)> = n
            .addrs
            .iter()
            .copied()
            .filter(|(a, _)| a.is_ipv4() == v4)
            .collect();
        let _ = writeln!(s, "\n[{}]", if v4 { "ipv4" } else { "ipv6" });
        if addrs.is_empty() {
            // No address of this family: NetworkManager leaves IPv6 as
            // the kernel has it (link-local) and configures no IPv4.
            s.push_str(if v4 {
                "method=disabled\n"
            } else {
                "method=ignore\n"
            });
            continue;
        }
        s.push_str("method=manual\n");
        for (k, (a, p)) in addrs.iter().enumerate() {
            let _ = writeln!(s, "address{}={a}/{p}", k + 1);
        }
        let gw = n.gateway.filter(|g| g.is_ipv4() == v4);
        if first {
            if let Some(g) = gw {
                let _ = writeln!(s, "gateway={g}");
            }
        } else {
            // One default route, the first path's NIC's, as at boot.
            s.push_str("never-default=true\n");
        }
        let dns: Vec<IpAddr> = n
            .dns
            .iter()
            .copied()
            .filter(|d| d.is_ipv4() == v4)
            .collect();
        if !dns.is_empty() {
            let _ = writeln!(s, "dns={}", list(&dns));
        }
        if let Some(d) = n.domain
            && !domain_done
        {
            let _ = writeln!(s, "dns-search={}", list(&[d]));
            domain_done = true;
        }
        if let Some(t) = target.filter(|t| t.is_ipv4() == v4)
            && !addrs.iter().any(|(a, _)| *a == t)
        {
            let host = if v4 { 32 } else { 128 };
            let on_link = addrs.iter().any(|(a, p)| in_prefix(&t, a, *p));
            match (on_link, gw) {
                (true, _) => {
                    let _ = writeln!(s, "route1={t}/{host}");
                }
                (false, Some(g)) => {
                    let _ = writeln!(s, "route1={t}/{host},{g}");
                }
                (false, None) => {}
            }
        }
        s.push_str("may-fail=false\n");
        if !v4 {
            // The kernel's own link-local address, as the initramfs left it.
            s.push_str("addr-gen-mode=eui64\n");
        }
    }
    let _ = writeln!(s, "\n[user]\nsanroot.origin={}", origin_word(n.origin));
    s
}

/// The record's origin as a keyfile value (one of its known words).
fn origin_word(o: &str) -> &'static str {
    match o {
        "static" => "static",
        "dhcp" => "dhcp",
        "external" => "external",
        _ => "unknown",
    }
}

fn device_state(rec: &BootRecord, n: &Nic<'_>, uuid: &str) -> String {
    let mut s = header(
        rec,
        "#",
        &[
            "NetworkManager's own device state (as its initrd leaves it): at its start",
            "it assumes the profile below on the live interface instead of",
            "configuring it anew.",
        ],
    );
    let _ = writeln!(
        s,
        "# {}: {}.nmconnection\n[device]\nmanaged=true\nconnection-uuid={uuid}",
        n.ifname,
        connection_id(n.ifname)
    );
    s
}

/// NetworkManager's settings for the boot NICs: carrier ignored (a
/// managed Ethernet device whose carrier stays down a few seconds is
/// deactivated, which removes its addresses), existing configuration kept;
/// and a VLAN's parent, which has no address of its own and nothing for
/// NetworkManager to do but take it down or run DHCP on it, unmanaged. By
/// interface name only: a VLAN has its parent's MAC.
fn device_conf(rec: &BootRecord, nics: &[Nic<'_>], parents: &[&str]) -> String {
    let mut s = header(
        rec,
        "#",
        &[
            "NetworkManager keeps the profile of the NIC carrying it active when the",
            "carrier drops (ignore-carrier: the root's I/O waits for the link instead",
            "of losing its address) and keeps what it finds at its start.",
        ],
    );
    let names = |v: &mut dyn Iterator<Item = &str>| {
        v.map(|n| format!("interface-name:={n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let _ = writeln!(
        s,
        "[device-sanroot-boot]\nmatch-device={}\nignore-carrier=yes\nkeep-configuration=yes",
        names(&mut nics.iter().map(|n| n.ifname))
    );
    if !parents.is_empty() {
        s.push_str(
            "\n# The parent of a VLAN carrying it: left alone (no DHCP on it, never\n\
             # taken down).\n",
        );
        let _ = writeln!(
            s,
            "[device-sanroot-vlan-parent]\nmatch-device={}\nmanaged=0",
            names(&mut parents.iter().copied())
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::handoff::{NicRecord, checked_nics};

    /// handoff's test record, with these NICs, in native mode.
    fn record(nics: Vec<NicRecord>) -> BootRecord {
        let mut r = crate::boot::handoff::tests::record(nics.first().cloned());
        r.nics = nics;
        r.networkmanager = "native".into();
        r
    }

    fn nic() -> NicRecord {
        NicRecord {
            ifname: "ens3".into(),
            mac: "52:54:00:12:34:56".into(),
            vlan: 0,
            addresses: vec!["10.0.2.15/24".into()],
            gateway: Some("10.0.2.2".into()),
            dns: vec!["10.0.2.3".into(), "fd00::3".into()],
            origin: "dhcp".into(),
            hostname: Some("myhost".into()),
            domain: Some("example.org".into()),
            parent: None,
            ifindex: Some(2),
            target: Some("10.0.2.2".into()),
        }
    }

    fn files(rec: &BootRecord) -> Result<Vec<(String, String, u32)>, String> {
        native_files(rec, &checked_nics(rec)?)
    }

    const HEAD: &str = "# Written by sanroot boot in the initramfs, for this boot only.\n\
        # The root disk /dev/ublkb0 is served by the sanroot daemon (pid 4242) over its\n\
        # own iSCSI session to iqn.2026-11.org.example:root at 10.0.2.2:3260.\n";

    #[test]
    fn modes() {
        for m in [NmMode::Native, NmMode::Unmanaged] {
            assert_eq!(NmMode::parse(m.name()), Some(m));
        }
        assert_eq!(NmMode::parse("off"), None);
        assert_eq!(NmMode::DEFAULT, NmMode::Unmanaged);
        let mut rec = record(vec![nic()]);
        assert_eq!(NmMode::of_record(&rec), Ok(NmMode::Native));
        rec.networkmanager = "x\n".into();
        assert!(NmMode::of_record(&rec).unwrap_err().contains("\"x\\n\""));
    }

    #[test]
    fn uuid_is_stable_and_well_formed() {
        let u = connection_uuid(Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]), 0, "ens3");
        assert_eq!(
            u,
            connection_uuid(Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]), 0, "ens3")
        );
        assert_ne!(
            u,
            connection_uuid(Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]), 5, "ens3.5")
        );
        assert_ne!(u, connection_uuid(None, 0, "ens3"));
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('3'), "{u}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{u}");
        assert!(u.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
    }

    #[test]
    fn dhcp_nic_is_a_static_profile_assumed_by_uuid() {
        let rec = record(vec![nic()]);
        let f = files(&rec).unwrap();
        let uuid = connection_uuid(Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]), 0, "ens3");
        assert_eq!(
            f.iter()
                .map(|(p, _, m)| (p.as_str(), *m))
                .collect::<Vec<_>>(),
            [
                (
                    "run/NetworkManager/system-connections/sanroot-ens3.nmconnection",
                    0o600
                ),
                ("run/NetworkManager/devices/2", 0o644),
                ("run/NetworkManager/conf.d/90-sanroot.conf", 0o644),
            ]
        );
        assert_eq!(
            f[0].1,
            format!(
                "{HEAD}\
                 # NetworkManager's profile of the NIC carrying it, as the firmware (or the\n\
                 # command line) configured it; the lease of a DHCP origin is static here, so\n\
                 # that nothing restarts DHCP on it. /run/NetworkManager/devices/<ifindex>\n\
                 # makes NetworkManager assume it on the live interface at its start: no\n\
                 # flush, no link down. Never `nmcli networking off`, `nmcli device\n\
                 # disconnect` or `nmcli connection down` it: the root would be lost.\n\
                 [connection]\n\
                 id=sanroot-ens3\n\
                 uuid={uuid}\n\
                 type=ethernet\n\
                 interface-name=ens3\n\
                 autoconnect-priority=100\n\
                 # NetworkManager 1.47+: never take it down at power-off.\n\
                 down-on-poweroff=0\n\
                 \n\
                 [ethernet]\n\
                 mac-address=52:54:00:12:34:56\n\
                 \n\
                 [ipv4]\n\
                 method=manual\n\
                 address1=10.0.2.15/24\n\
                 gateway=10.0.2.2\n\
                 dns=10.0.2.3;\n\
                 dns-search=example.org;\n\
                 route1=10.0.2.2/32\n\
                 may-fail=false\n\
                 \n\
                 [ipv6]\n\
                 method=ignore\n\
                 \n\
                 [user]\n\
                 sanroot.origin=dhcp\n"
            )
        );
        assert_eq!(
            f[1].1,
            format!(
                "{HEAD}\
                 # NetworkManager's own device state (as its initrd leaves it): at its start\n\
                 # it assumes the profile below on the live interface instead of\n\
                 # configuring it anew.\n\
                 # ens3: sanroot-ens3.nmconnection\n\
                 [device]\n\
                 managed=true\n\
                 connection-uuid={uuid}\n"
            )
        );
        assert_eq!(
            f[2].1,
            format!(
                "{HEAD}\
                 # NetworkManager keeps the profile of the NIC carrying it active when the\n\
                 # carrier drops (ignore-carrier: the root's I/O waits for the link instead\n\
                 # of losing its address) and keeps what it finds at its start.\n\
                 [device-sanroot-boot]\n\
                 match-device=interface-name:=ens3\n\
                 ignore-carrier=yes\n\
                 keep-configuration=yes\n"
            )
        );
        for (_, text, _) in &f {
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn off_link_target_goes_via_the_gateway_and_no_ifindex_no_state() {
        let mut n = nic();
        n.target = Some("192.168.7.9".into());
        n.ifindex = None;
        n.dns.clear();
        n.domain = None;
        let f = files(&record(vec![n])).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f[1].0.ends_with("/90-sanroot.conf"));
        let k = &f[0].1;
        assert!(k.contains("route1=192.168.7.9/32,10.0.2.2\n"), "{k}");
        assert!(!k.contains("dns"), "{k}");
        // An older record: no target, the first NIC routes to the portal.
        let mut old = nic();
        old.target = None;
        let k = files(&record(vec![old])).unwrap()[0].1.clone();
        assert!(k.contains("route1=10.0.2.2/32\n"), "{k}");
    }

    #[test]
    fn ipv6_nic() {
        let mut n = nic();
        n.addresses = vec!["fd00::15/64".into()];
        n.gateway = Some("fe80::1".into());
        n.target = Some("fd01::20".into());
        n.origin = "static".into();
        let k = files(&record(vec![n])).unwrap()[0].1.clone();
        assert!(
            k.contains(
                "[ipv4]\nmethod=disabled\n\n[ipv6]\nmethod=manual\naddress1=fd00::15/64\n\
                 gateway=fe80::1\ndns=fd00::3;\ndns-search=example.org;\n\
                 route1=fd01::20/128,fe80::1\nmay-fail=false\naddr-gen-mode=eui64\n\n\
                 [user]\nsanroot.origin=static\n"
            ),
            "{k}"
        );
    }

    #[test]
    fn vlan_profile_and_unmanaged_parent() {
        let mut n = nic();
        n.ifname = "ens3.100".into();
        n.vlan = 100;
        n.parent = Some("ens3".into());
        n.ifindex = Some(7);
        let f = files(&record(vec![n])).unwrap();
        let uuid = connection_uuid(Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]), 100, "ens3.100");
        assert_eq!(
            f.iter().map(|(p, _, _)| p.as_str()).collect::<Vec<_>>(),
            [
                "run/NetworkManager/system-connections/sanroot-ens3.100.nmconnection",
                "run/NetworkManager/devices/7",
                "run/NetworkManager/conf.d/90-sanroot.conf",
            ]
        );
        let k = &f[0].1;
        assert!(
            k.contains(&format!(
                "[connection]\nid=sanroot-ens3.100\nuuid={uuid}\ntype=vlan\ninterface-name=ens3.100\n"
            )),
            "{k}"
        );
        assert!(
            k.contains("\n[ethernet]\nmac-address=52:54:00:12:34:56\n\n[vlan]\nid=100\nparent=ens3\n\n[ipv4]\n"),
            "{k}"
        );
        assert!(f[1].1.ends_with(&format!("connection-uuid={uuid}\n")));
        assert!(f[2].1.starts_with(HEAD));
        assert!(
            f[2].1.ends_with(
                "[device-sanroot-boot]\nmatch-device=interface-name:=ens3.100\n\
                 ignore-carrier=yes\nkeep-configuration=yes\n\n\
                 # The parent of a VLAN carrying it: left alone (no DHCP on it, never\n\
                 # taken down).\n\
                 [device-sanroot-vlan-parent]\nmatch-device=interface-name:=ens3\nmanaged=0\n"
            ),
            "{}",
            f[2].1
        );
    }

    #[test]
    fn second_fabric_gets_no_default_route() {
        let mut b = nic();
        b.ifname = "ens4".into();
        b.mac = "52:54:00:ab:cd:02".into();
        b.addresses = vec!["10.0.3.15/24".into()];
        b.gateway = Some("10.0.3.2".into());
        b.target = Some("10.0.9.9".into());
        b.ifindex = Some(3);
        b.domain = None;
        let f = files(&record(vec![nic(), b])).unwrap();
        assert_eq!(f.len(), 5);
        assert!(
            f[4].1
                .contains("match-device=interface-name:=ens3,interface-name:=ens4\n"),
            "{}",
            f[4].1
        );
        let k = &f[2].1;
        assert!(f[2].0.ends_with("sanroot-ens4.nmconnection"));
        assert!(
            k.contains(
                "method=manual\naddress1=10.0.3.15/24\nnever-default=true\ndns=10.0.2.3;\n\
                 route1=10.0.9.9/32,10.0.3.2\nmay-fail=false\n"
            ),
            "{k}"
        );
        assert!(!k.contains("gateway="), "{k}");
        assert_eq!(f[3].0, "run/NetworkManager/devices/3");
    }

    #[test]
    fn hostile_domain_is_refused() {
        for d in [
            "example.org;evil",
            "a b",
            "x\\y",
            "#c",
            ".",
            "a..b",
            "-=-",
            "a..",
            &"a".repeat(64),
        ] {
            let mut n = nic();
            n.domain = Some(d.to_string());
            let e = files(&record(vec![n])).unwrap_err();
            assert!(e.starts_with("nic.domain \""), "{d}: {e}");
            assert!(e.contains("rd.sanroot.nm=unmanaged"), "{e}");
        }
        for d in ["example.org", "example.org.", "my_lab-1.example"] {
            let mut n = nic();
            n.domain = Some(d.to_string());
            assert!(files(&record(vec![n])).is_ok(), "{d}");
        }
    }

    #[test]
    fn hostile_ifname_is_refused() {
        for name in ["ens3\n[x]", "a;b", "../x", "ens3 ", "x=y", ""] {
            let mut n = nic();
            n.ifname = name.to_string();
            let e = files(&record(vec![n])).unwrap_err();
            assert!(e.starts_with("nic.ifname \""), "{name:?}: {e}");
        }
    }
}
