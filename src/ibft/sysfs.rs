//! The kernel's parsed view of the iBFT: /sys/firmware/ibft (iscsi_ibft).
//!
//! A last resort: the raw table is better. This view cannot express
//! everything, and what it cannot is listed in [`Ibft::lost_fields`]:
//! - the header's length, revision and checksum, and the control structure;
//! - the LUN, printed byte by byte with unpadded `%x` (LUN 1 reads
//!   "01000000"), which is ambiguous as soon as a byte is 16 or more;
//! - structures the kernel skipped (wrong length) and the whole tree when
//!   indexes repeat.
//!
//! The PCI function of a NIC is recovered from its `device` link.
//!
//! Each file is one value; a missing file means the kernel hid it (zero
//! addresses are hidden).

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use super::model::*;
use crate::secret::Secret;

/// Read a directory laid out like /sys/firmware/ibft.
pub fn read_dir(dir: &Path) -> io::Result<Ibft> {
    let mut entries: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    entries.sort_by_key(|n| {
        (
            n.trim_end_matches(|c: char| c.is_ascii_digit()).to_string(),
            index_suffix(n),
        )
    });

    let mut ibft = Ibft {
        header: TableHeader {
            signature: Signature::Ibft,
            length: 0,
            revision: 1,
            checksum: 0,
            checksum_ok: None,
            oem_id: String::new(),
            oem_table_id: String::new(),
        },
        control_len: 0,
        extensions: 0,
        initiator: None,
        nics: Vec::new(),
        targets: Vec::new(),
        problems: Vec::new(),
        lost_fields: vec![
            "header.length".into(),
            "header.revision".into(),
            "header.checksum".into(),
            "control".into(),
            "structure offsets".into(),
        ],
    };
    let mut problems = Vec::new();

    for name in &entries {
        let sub = dir.join(name);
        let v = Values { dir: &sub };
        if name == "acpi_header" {
            if let Some(sig) = v.text("signature")
                && let Some(s) = Signature::from_bytes(sig.as_bytes())
            {
                ibft.header.signature = s;
            }
            ibft.header.oem_id = v.text("oem_id").unwrap_or_default();
            ibft.header.oem_table_id = v.text("oem_table_id").unwrap_or_default();
        } else if name == "initiator" {
            ibft.initiator = Some(Initiator {
                place: Place {
                    offset: 0,
                    flags: v.num("flags").unwrap_or(1) as u8,
                },
                index: v.num("index").unwrap_or(0) as u8,
                isns: v.addr("isns-server"),
                slp: v.addr("slp-server"),
                pri_radius: v.addr("pri-radius-server"),
                sec_radius: v.addr("sec-radius-server"),
                name: v.text("initiator-name"),
            });
        } else if let Some(i) = name.strip_prefix("ethernet") {
            let index = v.num("index").or_else(|| i.parse().ok()).unwrap_or(0) as u8;
            let ip = v.addr("ip-addr");
            let prefix_len = match v.num("prefix-len") {
                Some(p) => p as u8,
                None => v
                    .text("subnet-mask")
                    .and_then(|m| m.parse::<std::net::Ipv4Addr>().ok())
                    .map(|m| u32::from(m).count_ones() as u8)
                    .unwrap_or(0),
            };
            let vlan_raw = v.num("vlan").unwrap_or(0) as u16;
            let mac = v.text("mac").and_then(|m| parse_mac(&m)).unwrap_or([0; 6]);
            let pci_bdf = fs::read_link(sub.join("device")).ok().and_then(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .and_then(parse_pci_name)
            });
            if pci_bdf.is_none() {
                ibft.lost_fields.push(format!("nics[{index}].pci"));
            }
            ibft.nics.push(Nic {
                place: Place {
                    offset: 0,
                    flags: v.num("flags").unwrap_or(1) as u8,
                },
                index,
                ip,
                prefix_len,
                origin: Origin::from_u8(v.num("origin").unwrap_or(0) as u8),
                gateway: v.addr("gateway"),
                primary_dns: v.addr("primary-dns"),
                secondary_dns: v.addr("secondary-dns"),
                dhcp_server: v.addr("dhcp"),
                vlan: vlan_raw & 0x0fff,
                vlan_raw,
                mac,
                pci_bdf,
                hostname: v.text("hostname"),
            });
        } else if let Some(i) = name.strip_prefix("target") {
            let index = v.num("index").or_else(|| i.parse().ok()).unwrap_or(0) as u8;
            let Some(tname) = v.text("target-name") else {
                problems.push(Problem {
                    severity: Severity::Error,
                    structure: name.clone(),
                    field: "target-name",
                    offset: 0,
                    message: "no target-name file; target ignored".into(),
                });
                continue;
            };
            let lun = match v.text("lun") {
                Some(s) => {
                    let (lun, exact) = lun_from_sysfs(&s);
                    if !exact {
                        ibft.lost_fields.push(format!(
                            "targets[{index}].lun (sysfs prints \"{s}\", which is ambiguous)"
                        ));
                    }
                    lun
                }
                None => Lun::from_number(0),
            };
            let chap = v
                .num("chap-type")
                .and_then(|c| ChapType::from_u8(c as u8))
                .unwrap_or(ChapType::None);
            ibft.targets.push(Target {
                place: Place {
                    offset: 0,
                    flags: v.num("flags").unwrap_or(1) as u8,
                },
                index,
                ip: v.addr("ip-addr"),
                port: v.num("port").unwrap_or(3260) as u16,
                lun,
                chap,
                nic_index: v.num("nic-assoc").unwrap_or(0) as u8,
                name: tname,
                chap_name: v.text("chap-name"),
                chap_secret: v.bytes("chap-secret").map(Secret::new),
                rchap_name: v.text("rev-chap-name"),
                rchap_secret: v.bytes("rev-chap-name-secret").map(Secret::new),
                boot: false,
                second_path: false,
            });
        }
    }
    if ibft.initiator.is_none() && ibft.nics.is_empty() && ibft.targets.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no initiator, ethernetN or targetN entries",
        ));
    }
    ibft.problems = problems;
    ibft.assign_boot_roles();
    Ok(ibft)
}

fn index_suffix(name: &str) -> u32 {
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

struct Values<'a> {
    dir: &'a Path,
}

impl Values<'_> {
    /// The file's bytes without the trailing newline the kernel adds; None
    /// when missing or empty.
    fn bytes(&self, file: &str) -> Option<Vec<u8>> {
        let mut b = fs::read(self.dir.join(file)).ok()?;
        if b.last() == Some(&b'\n') {
            b.pop();
        }
        if b.is_empty() { None } else { Some(b) }
    }
    fn text(&self, file: &str) -> Option<String> {
        self.bytes(file)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty())
    }
    fn num(&self, file: &str) -> Option<u64> {
        let t = self.text(file)?;
        match t.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => t.parse().ok(),
        }
    }
    fn addr(&self, file: &str) -> Option<IpAddr> {
        let a: IpAddr = self.text(file)?.parse().ok()?;
        // Normalise through the table encoding so ::ffff:0.0.0.0 and
        // 0.0.0.0 read as absent, as in a raw table.
        decode_addr(encode_addr(Some(a)))
    }
}

/// "0000:00:03.0" -> bus << 8 | dev << 3 | fn.
pub fn parse_pci_name(s: &str) -> Option<u16> {
    let mut it = s.rsplitn(3, ':');
    let devfn = it.next()?;
    let bus = u16::from_str_radix(it.next()?, 16).ok()?;
    let (dev, func) = devfn.split_once('.')?;
    let dev = u16::from_str_radix(dev, 16).ok()?;
    let func = u16::from_str_radix(func, 16).ok()?;
    if bus > 0xff || dev > 0x1f || func > 7 {
        return None;
    }
    Some(bus << 8 | dev << 3 | func)
}

/// Every way `s` splits into 8 bytes printed with unpadded `%x`: each byte
/// is one hex digit (< 16) or two digits not starting with 0.
pub fn unpadded_hex_candidates(s: &str) -> Vec<[u8; 8]> {
    fn go(d: &[u8], i: usize, cur: &mut [u8; 8], out: &mut Vec<[u8; 8]>) {
        if out.len() > 64 {
            return;
        }
        if i == 8 {
            if d.is_empty() {
                out.push(*cur);
            }
            return;
        }
        let left = 8 - i;
        if d.len() < left || d.len() > 2 * left {
            return;
        }
        if let Some(v) = d.first().and_then(|c| (*c as char).to_digit(16)) {
            cur[i] = v as u8;
            go(&d[1..], i + 1, cur, out);
            if v != 0
                && let Some(w) = d.get(1).and_then(|c| (*c as char).to_digit(16))
            {
                cur[i] = (v * 16 + w) as u8;
                go(&d[2..], i + 1, cur, out);
            }
        }
    }
    let mut out = Vec::new();
    go(s.trim().as_bytes(), 0, &mut [0u8; 8], &mut out);
    out
}

/// The LUN from sysfs's `lun` file, and whether it was unambiguous. When it
/// is ambiguous the reading with the most trailing zero bytes is taken.
pub fn lun_from_sysfs(s: &str) -> (Lun, bool) {
    let c = unpadded_hex_candidates(s);
    match c.as_slice() {
        [one] => (Lun::decode(*one), true),
        [] => (Lun::from_number(0), false),
        many => {
            let best = many
                .iter()
                .max_by_key(|b| b.iter().rev().take_while(|x| **x == 0).count())
                .copied()
                .unwrap_or([0; 8]);
            let mut l = Lun::decode(best);
            l.encoding = LunEncoding::Guessed;
            (l, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_strings() {
        let (l, exact) = lun_from_sysfs("01000000");
        assert!(exact);
        assert_eq!(l.raw, [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(l.number, 1);
        let (_, exact) = lun_from_sysfs("12c000000");
        assert!(!exact);
        assert!(unpadded_hex_candidates("12c000000").contains(&[1, 0x2c, 0, 0, 0, 0, 0, 0]));
        assert!(unpadded_hex_candidates("zz").is_empty());
    }

    #[test]
    fn pci_and_mac() {
        assert_eq!(parse_pci_name("0000:00:03.0"), Some(3 << 3));
        assert_eq!(parse_pci_name("0000:01:1f.7"), Some(1 << 8 | 0x1f << 3 | 7));
        assert_eq!(parse_pci_name("nonsense"), None);
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
    }
}
