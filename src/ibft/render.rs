//! Showing a table: for a person, as JSON for scripts, and as the dracut
//! command-line arguments that say the same thing.
//!
//! The JSON keys listed in the README are a contract; add keys, never
//! rename or remove one.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::model::*;
use super::source::Found;
use crate::secret::Secret;

const HIDDEN: &str = "<hidden>";

fn ip_json(a: Option<IpAddr>) -> Value {
    a.map(|a| Value::String(a.to_string()))
        .unwrap_or(Value::Null)
}

fn secret_json(s: &Option<Secret>, show: bool) -> Value {
    match s {
        None => Value::Null,
        Some(_) if !show => Value::String(HIDDEN.into()),
        Some(s) => Value::String(String::from_utf8_lossy(s.expose()).into_owned()),
    }
}

fn secret_text(s: &Option<Secret>, show: bool) -> String {
    match s {
        None => "(none)".into(),
        Some(_) if !show => HIDDEN.into(),
        Some(s) => format!("\"{}\"", String::from_utf8_lossy(s.expose())),
    }
}

/// The JSON document for `sanroot ibft --json`.
pub fn to_json(found: &Found, show_secrets: bool) -> Value {
    let t = &found.ibft;
    let h = &t.header;
    json!({
        "source": found.kind.name(),
        "source_detail": found.detail,
        "header": {
            "signature": h.signature.as_str(),
            "length": h.length,
            "revision": h.revision,
            "checksum_ok": h.checksum_ok,
            "oem_id": h.oem_id,
            "oem_table_id": h.oem_table_id,
        },
        "initiator": t.initiator.as_ref().map(|i| json!({
            "name": i.name,
            "index": i.index,
            "flags": i.place.flags,
            "isns": ip_json(i.isns),
            "slp": ip_json(i.slp),
            "radius": ([i.pri_radius, i.sec_radius].iter().flatten().map(|a| a.to_string()).collect::<Vec<_>>()),
        })).unwrap_or(json!({"name": null})),
        "nics": t.nics.iter().map(|n| json!({
            "index": n.index,
            "flags": n.place.flags,
            "offset": n.place.offset,
            "mac": n.mac_string(),
            "ip": ip_json(n.ip),
            "prefix_len": n.prefix_len,
            "netmask": n.netmask().map(|m| m.to_string()),
            "gateway": ip_json(n.gateway),
            "origin": n.origin.name(),
            "vlan": n.vlan,
            "hostname": n.hostname,
            "dns": n.dns().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "dhcp_server": ip_json(n.dhcp_server),
            "pci": n.pci_address(),
            "global": n.is_global(),
        })).collect::<Vec<_>>(),
        "targets": t.targets.iter().map(|g| json!({
            "index": g.index,
            "flags": g.place.flags,
            "offset": g.place.offset,
            "ip": ip_json(g.ip),
            "port": g.port,
            "lun": g.lun.number,
            "lun_raw": g.lun.raw_hex(),
            "lun_encoding": g.lun.encoding.name(),
            "name": g.name,
            "chap": g.chap.name(),
            "chap_name": g.chap_name,
            "chap_secret": secret_json(&g.chap_secret, show_secrets),
            "reverse_chap_name": g.rchap_name,
            "reverse_chap_secret": secret_json(&g.rchap_secret, show_secrets),
            "nic_index": g.nic_index,
            "boot": g.boot,
            "second_path": g.second_path,
        })).collect::<Vec<_>>(),
        "problems": t.problems.iter().map(|p| json!({
            "severity": p.severity.name(),
            "structure": p.structure,
            "field": p.field,
            "offset": p.offset,
            "message": p.message,
        })).collect::<Vec<_>>(),
        "lost_fields": t.lost_fields,
    })
}

/// The human form of `sanroot ibft`.
pub fn to_text(found: &Found, show_secrets: bool, verbose: bool) -> String {
    let t = &found.ibft;
    let h = &t.header;
    let mut s = String::new();
    let sum = match h.checksum_ok {
        Some(true) => "checksum ok",
        Some(false) => "CHECKSUM BAD (ignored)",
        None => "checksum not available",
    };
    let _ = writeln!(
        s,
        "iBFT from {} ({}): signature {}, revision {}, {} bytes, OEM \"{}\" \"{}\", {}",
        found.kind.name(),
        found.detail,
        h.signature.as_str(),
        h.revision,
        h.length,
        h.oem_id,
        h.oem_table_id,
        sum
    );
    match &t.initiator {
        Some(i) => {
            let _ = writeln!(s, "initiator  {}", i.name.as_deref().unwrap_or("(no name)"));
            for (label, a) in [
                ("iSNS", i.isns),
                ("SLP", i.slp),
                ("RADIUS", i.pri_radius),
                ("RADIUS", i.sec_radius),
            ] {
                if let Some(a) = a {
                    let _ = writeln!(s, "           {label} {a}");
                }
            }
        }
        None => {
            let _ = writeln!(s, "initiator  (none in table)");
        }
    }
    for n in &t.nics {
        let addr = match n.ip {
            Some(ip) => format!("{ip}/{}", n.prefix_len),
            None => "(no address)".into(),
        };
        let _ = writeln!(
            s,
            "nic {:<6} {}  {}  origin {}{}{}",
            n.index,
            n.mac_string(),
            addr,
            n.origin.name(),
            n.pci_address()
                .map(|p| format!("  pci {p}"))
                .unwrap_or_default(),
            if n.vlan != 0 {
                format!("  vlan {}", n.vlan)
            } else {
                String::new()
            },
        );
        let mut line = String::new();
        if let Some(g) = n.gateway {
            let _ = write!(line, "gateway {g}  ");
        }
        let dns = n.dns();
        if !dns.is_empty() {
            let _ = write!(
                line,
                "dns {}  ",
                dns.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        if let Some(d) = n.dhcp_server {
            let _ = write!(line, "dhcp-server {d}  ");
        }
        if let Some(hn) = &n.hostname {
            let _ = write!(line, "hostname {hn}");
        }
        if !line.is_empty() {
            let _ = writeln!(s, "           {}", line.trim_end());
        }
    }
    for g in &t.targets {
        let role = if g.boot {
            "  [boot]"
        } else if g.second_path {
            "  [second path]"
        } else {
            ""
        };
        let portal = match g.ip {
            Some(IpAddr::V6(a)) => format!("[{a}]:{}", g.port),
            Some(a) => format!("{a}:{}", g.port),
            None => format!("?:{}", g.port),
        };
        let _ = writeln!(
            s,
            "target {:<3} {}  {}  lun {}  via nic {}{}",
            g.index, g.name, portal, g.lun.number, g.nic_index, role
        );
        match g.chap {
            ChapType::None => {
                let _ = writeln!(s, "           auth none");
            }
            ChapType::OneWay | ChapType::Mutual => {
                let _ = writeln!(
                    s,
                    "           auth {}: name {} secret {}",
                    g.chap.name(),
                    g.chap_name.as_deref().unwrap_or("(none)"),
                    secret_text(&g.chap_secret, show_secrets)
                );
                if g.chap == ChapType::Mutual {
                    let _ = writeln!(
                        s,
                        "           target must answer as: name {} secret {}",
                        g.rchap_name.as_deref().unwrap_or("(none)"),
                        secret_text(&g.rchap_secret, show_secrets)
                    );
                }
            }
        }
        if verbose || g.lun.encoding != LunEncoding::Sam {
            let _ = writeln!(
                s,
                "           lun bytes {} ({})",
                g.lun.raw_hex(),
                g.lun.encoding.name()
            );
        }
    }
    if t.targets.is_empty() {
        let _ = writeln!(s, "target     (no usable target)");
    }
    for p in &t.problems {
        if verbose || p.severity != Severity::Note {
            let _ = writeln!(s, "{p}");
        }
    }
    if !t.lost_fields.is_empty() {
        let _ = writeln!(
            s,
            "not available from this source: {}",
            t.lost_fields.join(", ")
        );
    }
    s
}

/// The dracut arguments equivalent to the table (boot target first).
///
/// Interfaces get stable names from their MAC through `ifname=`, since the
/// table only knows MACs. A DHCP-origin NIC gets `dhcp` (dracut will ask
/// again); a manual one its static address.
pub fn to_netroot(ibft: &Ibft, show_secrets: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(name) = ibft.initiator_name() {
        out.push(format!("rd.iscsi.initiator={name}"));
    }
    let mut order: Vec<&Target> = ibft.boot_target().into_iter().collect();
    order.extend(ibft.targets.iter().filter(|t| !t.boot));
    let mut nics_done: Vec<u8> = Vec::new();
    for t in order {
        let nic = ibft.nic_for(t).or(ibft.nics.first());
        if let Some(n) = nic {
            let ifname = format!("ibft{}", n.index);
            let netdev = if n.vlan != 0 {
                format!("{ifname}.{}", n.vlan)
            } else {
                ifname.clone()
            };
            if !nics_done.contains(&n.index) {
                nics_done.push(n.index);
                out.push(format!("ifname={ifname}:{}", n.mac_string()));
                if n.vlan != 0 {
                    out.push(format!("vlan={netdev}:{ifname}"));
                }
                out.push(ip_arg(n, &netdev));
                for d in n.dns() {
                    out.push(format!("nameserver={d}"));
                }
            }
        }
        let auth = match t.chap {
            ChapType::None => String::new(),
            ChapType::OneWay => format!(
                "{}:{}@",
                t.chap_name.as_deref().unwrap_or(""),
                secret_arg(&t.chap_secret, show_secrets)
            ),
            ChapType::Mutual => format!(
                "{}:{}:{}:{}@",
                t.chap_name.as_deref().unwrap_or(""),
                secret_arg(&t.chap_secret, show_secrets),
                t.rchap_name.as_deref().unwrap_or(""),
                secret_arg(&t.rchap_secret, show_secrets)
            ),
        };
        let server = match t.ip {
            Some(IpAddr::V6(a)) => format!("[{a}]"),
            Some(a) => a.to_string(),
            None => String::new(),
        };
        // iscsi:[auth@]server:proto:port:LUN:target. The interface is bound
        // by the ip=/ifname= lines above, so the optional iface:netdev
        // fields (which dracut versions parse differently) are left out.
        out.push(format!(
            "netroot=iscsi:{auth}{server}::{}:{}:{}",
            t.port, t.lun.number, t.name
        ));
    }
    out
}

fn secret_arg(s: &Option<Secret>, show: bool) -> String {
    match s {
        None => String::new(),
        Some(_) if !show => HIDDEN.into(),
        Some(s) => String::from_utf8_lossy(s.expose()).into_owned(),
    }
}

fn ip_arg(n: &Nic, netdev: &str) -> String {
    match (n.origin, n.ip) {
        (Origin::Dhcp, _) | (_, None) => format!("ip={netdev}:dhcp"),
        (Origin::RouterAdvertisement, _) => format!("ip={netdev}:auto6"),
        (_, Some(ip)) => {
            let client = match ip {
                IpAddr::V6(a) => format!("[{a}]"),
                a => a.to_string(),
            };
            let gw = match n.gateway {
                Some(IpAddr::V6(a)) => format!("[{a}]"),
                Some(a) => a.to_string(),
                None => String::new(),
            };
            let mask = match n.netmask() {
                Some(m) => m.to_string(),
                None => n.prefix_len.to_string(),
            };
            format!(
                "ip={client}::{gw}:{mask}:{}:{netdev}:none",
                n.hostname.as_deref().unwrap_or("")
            )
        }
    }
}
