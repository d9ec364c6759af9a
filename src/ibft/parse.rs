//! Validation and decoding of a raw iBFT.
//!
//! The table comes from firmware and is treated as hostile: every offset,
//! length and string is checked against the table before it is followed,
//! nothing here can panic or allocate without bound (the table is at most
//! 64 KiB by construction of its u16 offsets, and we refuse more than 1 MiB).
//!
//! Two kinds of failure:
//! - [`IbftError`]: the table as a whole cannot be trusted (signature,
//!   length, checksum, control structure). Nothing is returned.
//! - [`Problem`]: one structure or field is wrong. It is dropped (error) or
//!   used with care (warning), the rest of the table is still returned, and
//!   the problem is listed so the user sees exactly what and where.

use std::fmt;
use std::ops::Range;

use super::model::*;
use super::wire::{self, Structure, Table, control, header, id, shdr};
use crate::secret::Secret;

/// A table larger than this is refused outright.
pub const MAX_TABLE_LEN: usize = 1 << 20;

/// The whole table was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IbftError {
    /// The field at fault ("signature", "length", "checksum", "control.id").
    pub field: &'static str,
    /// Absolute byte offset of the field.
    pub offset: usize,
    pub message: String,
    /// What the user can do about it.
    pub hint: &'static str,
}

impl fmt::Display for IbftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid iBFT: {} at byte 0x{:x}: {}",
            self.field, self.offset, self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, " ({})", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for IbftError {}

/// Knobs for tables from firmware that is known to be sloppy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// Accept a table whose bytes do not sum to zero (reported as a warning).
    pub ignore_checksum: bool,
}

const HINT_FIRMWARE: &str = "the firmware wrote a broken table: update it, or boot with netroot=iscsi:... instead of the iBFT";

fn fatal(field: &'static str, offset: usize, message: String) -> IbftError {
    IbftError {
        field,
        offset,
        message,
        hint: HINT_FIRMWARE,
    }
}

/// Parse and validate a raw table. `buf` may be longer than the table (a
/// memory scan hands over the rest of the region); the header's length
/// decides what is read.
pub fn parse(buf: &[u8], opts: ParseOptions) -> Result<Ibft, IbftError> {
    let table = Table::new_checked(buf).map_err(|_| {
        fatal(
            "length",
            0,
            format!(
                "only {} bytes, the header alone needs {}",
                buf.len(),
                header::LEN
            ),
        )
    })?;
    let signature = Signature::from_bytes(&table.signature()).ok_or_else(|| {
        fatal(
            "signature",
            0,
            format!(
                "{} is not \"iBFT\", \"IBFT\" or \"BIFT\"",
                printable(&table.signature())
            ),
        )
    })?;
    let length = table.length() as usize;
    if length < header::LEN + control::MIN_LEN {
        return Err(fatal(
            "length",
            header::LENGTH.start,
            format!(
                "table length {length} is too small for the header and control structure ({})",
                header::LEN + control::MIN_LEN
            ),
        ));
    }
    if length > MAX_TABLE_LEN {
        return Err(fatal(
            "length",
            header::LENGTH.start,
            format!("table length {length} is absurd (more than {MAX_TABLE_LEN})"),
        ));
    }
    if length > buf.len() {
        return Err(fatal(
            "length",
            header::LENGTH.start,
            format!(
                "the header says {length} bytes but only {} are there (truncated table)",
                buf.len()
            ),
        ));
    }
    // From here on only the table's own bytes are looked at.
    let bytes = &buf[..length];
    let table = Table::new_unchecked(bytes);

    let mut p = Parser {
        bytes,
        used: vec![(0..header::LEN, "header".to_string())],
        problems: Vec::new(),
    };

    let sum = table.byte_sum(length);
    let checksum_ok = sum == 0;
    if !checksum_ok {
        let msg = format!(
            "bytes sum to 0x{sum:02x} instead of 0 (checksum byte is 0x{:02x})",
            table.checksum()
        );
        if opts.ignore_checksum {
            p.problem(
                Severity::Warning,
                "header",
                "checksum",
                header::CHECKSUM,
                msg,
            );
        } else {
            return Err(IbftError {
                field: "checksum",
                offset: header::CHECKSUM,
                message: msg,
                hint: "the table is corrupt; --ignore-checksum reads it anyway if you trust the firmware",
            });
        }
    }
    if table.revision() != 1 {
        p.problem(
            Severity::Warning,
            "header",
            "revision",
            header::REVISION,
            format!(
                "revision {} (spec 1.03 uses 1); reading it as 1",
                table.revision()
            ),
        );
    }

    let hdr = TableHeader {
        signature,
        length: length as u32,
        revision: table.revision(),
        checksum: table.checksum(),
        checksum_ok: Some(checksum_ok),
        oem_id: trimmed_ascii(table.oem_id()),
        oem_table_id: trimmed_ascii(table.oem_table_id()),
    };

    // Control structure: fatal when wrong, since every offset comes from it.
    let coff = control::OFFSET;
    let cview = Structure::new_checked(&bytes[coff..], control::MIN_LEN).map_err(|_| {
        fatal(
            "control",
            coff,
            "control structure runs past the end of the table".into(),
        )
    })?;
    if cview.id() != id::CONTROL {
        return Err(fatal(
            "control.id",
            coff + shdr::ID,
            format!(
                "structure id {} where the control structure (id 1) must be",
                cview.id()
            ),
        ));
    }
    let clen = usize::from(cview.length());
    if clen < control::MIN_LEN {
        return Err(fatal(
            "control.length",
            coff + shdr::LENGTH.start,
            format!(
                "control structure length {clen} is below the minimum of {}",
                control::MIN_LEN
            ),
        ));
    }
    if coff + clen > length {
        return Err(fatal(
            "control.length",
            coff + shdr::LENGTH.start,
            format!(
                "control structure of {clen} bytes at 0x{coff:x} runs past the end of the {length}-byte table"
            ),
        ));
    }
    if cview.version() != 1 {
        p.problem(
            Severity::Warning,
            "control",
            "version",
            coff + shdr::VERSION,
            format!("version {} (expected 1)", cview.version()),
        );
    }
    if clen % 2 != 0 {
        p.problem(
            Severity::Warning,
            "control",
            "length",
            coff + shdr::LENGTH.start,
            format!("odd length {clen}: the last byte is not an offset and is ignored"),
        );
    }
    p.used.push((coff..coff + clen, "control".to_string()));
    let control = Structure::new_unchecked(&bytes[coff..coff + clen]);
    let extensions = control.u16_at(control::EXTENSIONS);
    if extensions != 0 {
        p.problem(
            Severity::Note,
            "control",
            "extensions",
            coff + control::EXTENSIONS.start,
            format!("extensions offset 0x{extensions:x} present; extensions are not interpreted"),
        );
    }

    // Offsets: initiator, then NIC/target pairs for as long as the control
    // structure goes (18 bytes = 2 pairs; Linux reads longer ones too).
    let n_offsets = (clen - control::OFFSETS_START) / 2;
    let offset_at = |i: usize| {
        let at = control::OFFSETS_START + 2 * i;
        (coff + at, usize::from(control.u16_at(at..at + 2)))
    };

    let mut ibft = Ibft {
        header: hdr,
        control_len: clen as u16,
        extensions,
        initiator: None,
        nics: Vec::new(),
        targets: Vec::new(),
        problems: Vec::new(),
        lost_fields: Vec::new(),
    };

    let (field_at, ioff) = offset_at(0);
    if ioff != 0 {
        ibft.initiator = p.initiator(field_at, ioff);
    }
    let pairs = (n_offsets - 1) / 2;
    for pair in 0..pairs {
        let (nic_field, noff) = offset_at(1 + 2 * pair);
        if noff != 0 {
            let name = format!("nic{pair}");
            if let Some(nic) = p.nic(&name, nic_field, noff) {
                let known: Vec<(u8, usize)> = ibft
                    .nics
                    .iter()
                    .map(|n| (n.index, n.place.offset))
                    .collect();
                if p.unique_index(&name, noff, nic.index, &known, "NIC") {
                    ibft.nics.push(nic);
                }
            }
        }
        let (tgt_field, toff) = offset_at(2 + 2 * pair);
        if toff != 0 {
            let name = format!("target{pair}");
            if let Some(tgt) = p.target(&name, tgt_field, toff) {
                let known: Vec<(u8, usize)> = ibft
                    .targets
                    .iter()
                    .map(|t| (t.index, t.place.offset))
                    .collect();
                if p.unique_index(&name, toff, tgt.index, &known, "target") {
                    ibft.targets.push(tgt);
                }
            }
        }
    }

    // Cross-checks that need every structure.
    for t in &ibft.targets {
        if !ibft.nics.iter().any(|n| n.index == t.nic_index) {
            p.problem(
                Severity::Warning,
                &format!("target{}", t.index),
                "nic_assoc",
                t.place.offset + wire::target::NIC_ASSOC,
                format!(
                    "refers to NIC index {}, which is not in the table; the first NIC will be used",
                    t.nic_index
                ),
            );
        }
    }
    let valid_ts = ibft.targets.len();
    if valid_ts == 0 {
        p.problem(
            Severity::Warning,
            "control",
            "target0",
            coff + 12,
            "the table names no usable target: there is nothing to boot from".into(),
        );
    }
    ibft.assign_boot_roles();
    ibft.problems = p.problems;
    Ok(ibft)
}

struct Parser<'a> {
    bytes: &'a [u8],
    /// Byte ranges taken by the header and accepted structures.
    used: Vec<(Range<usize>, String)>,
    problems: Vec<Problem>,
}

impl<'a> Parser<'a> {
    fn problem(
        &mut self,
        severity: Severity,
        structure: &str,
        field: &'static str,
        offset: usize,
        message: String,
    ) {
        self.problems.push(Problem {
            severity,
            structure: structure.to_string(),
            field,
            offset,
            message,
        });
    }

    /// A structure's header index must not repeat (targets name their NIC
    /// by it; Linux drops the whole table on duplicates, we drop the later
    /// structure). `known` holds (index, offset) of those already accepted.
    fn unique_index(
        &mut self,
        name: &str,
        off: usize,
        index: u8,
        known: &[(u8, usize)],
        kind: &str,
    ) -> bool {
        match known.iter().find(|(i, _)| *i == index) {
            None => true,
            Some((_, prev)) => {
                self.problem(
                    Severity::Error,
                    name,
                    "index",
                    off + shdr::INDEX,
                    format!("index {index} is already used by the {kind} at 0x{prev:x}; this one is ignored"),
                );
                false
            }
        }
    }

    /// Locate and check the common header of a structure the control
    /// structure points at. Returns its view when it can be used.
    fn structure(
        &mut self,
        name: &str,
        pointer_at: usize,
        off: usize,
        want_id: u8,
        want_len: usize,
    ) -> Option<Structure<&'a [u8]>> {
        let len = self.bytes.len();
        if off < header::LEN || off + shdr::LEN > len {
            self.problem(
                Severity::Error,
                name,
                "offset",
                pointer_at,
                format!("offset 0x{off:x} is outside the table (0x30..0x{len:x})"),
            );
            return None;
        }
        let h = Structure::new_unchecked(&self.bytes[off..off + shdr::LEN]);
        if h.id() != want_id {
            self.problem(
                Severity::Error,
                name,
                "id",
                off + shdr::ID,
                format!(
                    "structure at 0x{off:x} has id {} where id {want_id} ({}) was expected",
                    h.id(),
                    id_name(want_id)
                ),
            );
            return None;
        }
        let flags = h.flags();
        if flags & (wire::flags::BLOCK_VALID | wire::flags::FW_BOOT_SELECTED) == 0 {
            self.problem(
                Severity::Note,
                name,
                "flags",
                off + shdr::FLAGS,
                "not marked valid by the firmware; ignored".into(),
            );
            return None;
        }
        if flags & wire::flags::BLOCK_VALID == 0 {
            self.problem(
                Severity::Note,
                name,
                "flags",
                off + shdr::FLAGS,
                "only the boot-selected bit is set; treated as valid".into(),
            );
        }
        let slen = usize::from(h.length());
        if slen < want_len {
            self.problem(
                Severity::Error,
                name,
                "length",
                off + shdr::LENGTH.start,
                format!(
                    "length {slen} is shorter than the {want_len} bytes of a {}",
                    id_name(want_id)
                ),
            );
            return None;
        }
        if off + slen > len {
            self.problem(
                Severity::Error,
                name,
                "length",
                off + shdr::LENGTH.start,
                format!("{slen} bytes at 0x{off:x} run past the end of the {len}-byte table"),
            );
            return None;
        }
        if slen > want_len {
            self.problem(
                Severity::Warning,
                name,
                "length",
                off + shdr::LENGTH.start,
                format!("length {slen} is longer than the spec's {want_len}; the extra bytes are ignored (Linux skips such a structure)"),
            );
        }
        if h.version() != 1 {
            self.problem(
                Severity::Warning,
                name,
                "version",
                off + shdr::VERSION,
                format!("version {} (expected 1); read as version 1", h.version()),
            );
        }
        let range = off..off + slen;
        if let Some((_, other)) = self
            .used
            .iter()
            .find(|(r, _)| r.start < range.end && range.start < r.end)
        {
            let other = other.clone();
            self.problem(
                Severity::Error,
                name,
                "offset",
                pointer_at,
                format!(
                    "structure at 0x{off:x}..0x{:x} overlaps the {other}; ignored",
                    range.end
                ),
            );
            return None;
        }
        self.used.push((range.clone(), name.to_string()));
        Some(Structure::new_unchecked(&self.bytes[range]))
    }

    /// Read a (length, offset) string reference. `Ok(None)` when absent,
    /// `Err(())` when broken (already reported).
    fn raw_string(
        &mut self,
        name: &str,
        field: &'static str,
        s: &Structure<&'a [u8]>,
        soff: usize,
        at: usize,
    ) -> Result<Option<&'a [u8]>, ()> {
        let (slen, off) = s.string_ref_at(at);
        let (slen, off) = (usize::from(slen), usize::from(off));
        let field_at = soff + at;
        if slen == 0 {
            return Ok(None);
        }
        let tlen = self.bytes.len();
        if off == 0 {
            self.problem(
                Severity::Error,
                name,
                field,
                field_at,
                format!("string of {slen} bytes has offset 0"),
            );
            return Err(());
        }
        if off < header::LEN || off + slen > tlen {
            self.problem(
                Severity::Error,
                name,
                field,
                field_at,
                format!("string at 0x{off:x}+{slen} lies outside the table (0x30..0x{tlen:x})"),
            );
            return Err(());
        }
        let value = &self.bytes[off..off + slen];
        if let Some(pos) = value.iter().position(|b| *b == 0) {
            self.problem(
                Severity::Error,
                name,
                field,
                field_at,
                format!(
                    "string at 0x{off:x} has a NUL at +{pos}, inside its declared length {slen}"
                ),
            );
            return Err(());
        }
        if self.bytes.get(off + slen) != Some(&0) {
            self.problem(
                Severity::Warning,
                name,
                field,
                field_at,
                format!(
                    "string at 0x{off:x}+{slen} is not NUL-terminated; its declared length is used"
                ),
            );
        }
        if let Some((_, other)) = self
            .used
            .iter()
            .find(|(r, _)| r.start < off + slen && off < r.end)
        {
            let other = other.clone();
            self.problem(
                Severity::Error,
                name,
                field,
                field_at,
                format!("string at 0x{off:x}+{slen} overlaps the {other}"),
            );
            return Err(());
        }
        Ok(Some(value))
    }

    /// A string that must be printable text (names, hostnames).
    fn text(
        &mut self,
        name: &str,
        field: &'static str,
        s: &Structure<&'a [u8]>,
        soff: usize,
        at: usize,
    ) -> Result<Option<String>, ()> {
        let Some(raw) = self.raw_string(name, field, s, soff, at)? else {
            return Ok(None);
        };
        match std::str::from_utf8(raw) {
            Ok(t) if !t.chars().any(char::is_control) => Ok(Some(t.to_string())),
            _ => {
                self.problem(
                    Severity::Error,
                    name,
                    field,
                    soff + at,
                    format!("string {} is not printable text", printable(raw)),
                );
                Err(())
            }
        }
    }

    fn secret(
        &mut self,
        name: &str,
        field: &'static str,
        s: &Structure<&'a [u8]>,
        soff: usize,
        at: usize,
    ) -> Result<Option<Secret>, ()> {
        Ok(self
            .raw_string(name, field, s, soff, at)?
            .map(|b| Secret::new(b.to_vec())))
    }

    fn initiator(&mut self, pointer_at: usize, off: usize) -> Option<Initiator> {
        use wire::initiator as f;
        let name = "initiator";
        let s = self.structure(name, pointer_at, off, id::INITIATOR, f::LEN)?;
        let iname = self.text(name, "name", &s, off, f::NAME).unwrap_or(None);
        if iname.is_none() {
            self.problem(
                Severity::Warning,
                name,
                "name",
                off + f::NAME,
                "no initiator name; one must come from the command line or /etc/iscsi/initiatorname.iscsi".into(),
            );
        }
        Some(Initiator {
            place: Place {
                offset: off,
                flags: s.flags(),
            },
            index: s.index(),
            isns: decode_addr(s.addr_at(f::ISNS)),
            slp: decode_addr(s.addr_at(f::SLP)),
            pri_radius: decode_addr(s.addr_at(f::PRI_RADIUS)),
            sec_radius: decode_addr(s.addr_at(f::SEC_RADIUS)),
            name: iname,
        })
    }

    fn nic(&mut self, name: &str, pointer_at: usize, off: usize) -> Option<Nic> {
        use wire::nic as f;
        let s = self.structure(name, pointer_at, off, id::NIC, f::LEN)?;
        let ip = decode_addr(s.addr_at(f::IP));
        let prefix_len = s.u8_at(f::PREFIX_LEN);
        let max_prefix = match ip {
            Some(std::net::IpAddr::V4(_)) => 32,
            _ => 128,
        };
        if prefix_len > max_prefix {
            self.problem(
                Severity::Error,
                name,
                "prefix_len",
                off + f::PREFIX_LEN,
                format!("prefix length {prefix_len} is impossible for this address"),
            );
            return None;
        }
        let mac: [u8; 6] = {
            let mut m = [0u8; 6];
            m.copy_from_slice(s.bytes_at(f::MAC));
            m
        };
        if mac == [0; 6] || mac == [0xff; 6] || mac[0] & 1 == 1 {
            self.problem(
                Severity::Warning,
                name,
                "mac",
                off + f::MAC.start,
                format!(
                    "MAC {} is not a unicast address; the NIC cannot be found by it",
                    format_mac(&mac)
                ),
            );
        }
        if ip.is_none() {
            self.problem(
                Severity::Warning,
                name,
                "ip",
                off + f::IP.start,
                "no IP address; the interface cannot be configured from the table".into(),
            );
        }
        let vlan_raw = s.u16_at(f::VLAN);
        let vlan = vlan_raw & 0x0fff;
        if vlan_raw != vlan {
            self.problem(
                Severity::Note,
                name,
                "vlan",
                off + f::VLAN.start,
                format!("field 0x{vlan_raw:04x} holds a whole 802.1Q tag; VLAN id {vlan}"),
            );
        }
        let hostname = self
            .text(name, "hostname", &s, off, f::HOSTNAME)
            .unwrap_or(None);
        Some(Nic {
            place: Place {
                offset: off,
                flags: s.flags(),
            },
            index: s.index(),
            ip,
            prefix_len,
            origin: Origin::from_u8(s.u8_at(f::ORIGIN)),
            gateway: decode_addr(s.addr_at(f::GATEWAY)),
            primary_dns: decode_addr(s.addr_at(f::PRIMARY_DNS)),
            secondary_dns: decode_addr(s.addr_at(f::SECONDARY_DNS)),
            dhcp_server: decode_addr(s.addr_at(f::DHCP)),
            vlan,
            vlan_raw,
            mac,
            pci_bdf: Some(s.u16_at(f::PCI_BDF)),
            hostname,
        })
    }

    fn target(&mut self, name: &str, pointer_at: usize, off: usize) -> Option<Target> {
        use wire::target as f;
        let s = self.structure(name, pointer_at, off, id::TARGET, f::LEN)?;
        let ip = decode_addr(s.addr_at(f::IP));
        let Some(ip) = ip else {
            self.problem(
                Severity::Error,
                name,
                "ip",
                off + f::IP.start,
                "no target address; this target cannot be reached".into(),
            );
            return None;
        };
        let mut port = s.u16_at(f::PORT);
        if port == 0 {
            self.problem(
                Severity::Warning,
                name,
                "port",
                off + f::PORT.start,
                "port 0; using the iSCSI default 3260".into(),
            );
            port = 3260;
        }
        let chap_raw = s.u8_at(f::CHAP_TYPE);
        let Some(chap) = ChapType::from_u8(chap_raw) else {
            self.problem(
                Severity::Error,
                name,
                "chap_type",
                off + f::CHAP_TYPE,
                format!("CHAP type {chap_raw} is not 0 (none), 1 (CHAP) or 2 (mutual CHAP)"),
            );
            return None;
        };
        let tname = match self.text(name, "name", &s, off, f::NAME) {
            Ok(Some(n)) => n,
            Ok(None) => {
                self.problem(
                    Severity::Error,
                    name,
                    "name",
                    off + f::NAME,
                    "no target name; nothing to log in to".into(),
                );
                return None;
            }
            Err(()) => return None,
        };
        let chap_name = self.text(name, "chap_name", &s, off, f::CHAP_NAME).ok()?;
        let chap_secret = self
            .secret(name, "chap_secret", &s, off, f::CHAP_SECRET)
            .ok()?;
        let rchap_name = self.text(name, "rchap_name", &s, off, f::RCHAP_NAME).ok()?;
        let rchap_secret = self
            .secret(name, "rchap_secret", &s, off, f::RCHAP_SECRET)
            .ok()?;
        let radius =
            s.flags() & (wire::flags::TGT_RADIUS_CHAP | wire::flags::TGT_RADIUS_RCHAP) != 0;
        if chap != ChapType::None && chap_secret.is_none() && !radius {
            self.problem(
                Severity::Error,
                name,
                "chap_secret",
                off + f::CHAP_SECRET,
                format!(
                    "CHAP type {} but no CHAP secret; login would fail",
                    chap.name()
                ),
            );
            return None;
        }
        if chap == ChapType::Mutual && rchap_secret.is_none() && !radius {
            self.problem(
                Severity::Error,
                name,
                "rchap_secret",
                off + f::RCHAP_SECRET,
                "mutual CHAP but no reverse CHAP secret to check the target with".into(),
            );
            return None;
        }
        let mut lun_raw = [0u8; 8];
        lun_raw.copy_from_slice(s.bytes_at(f::LUN));
        let lun = Lun::decode(lun_raw);
        if lun.encoding == LunEncoding::LittleEndian {
            self.problem(
                Severity::Note,
                name,
                "lun",
                off + f::LUN.start,
                format!(
                    "LUN bytes {} look like a little-endian quad word (u-root/FreeBSD style); read as LUN {}",
                    lun.raw_hex(),
                    lun.number
                ),
            );
        }
        Some(Target {
            place: Place {
                offset: off,
                flags: s.flags(),
            },
            index: s.index(),
            ip: Some(ip),
            port,
            lun,
            chap,
            nic_index: s.u8_at(f::NIC_ASSOC),
            name: tname,
            chap_name,
            chap_secret,
            rchap_name,
            rchap_secret,
            boot: false,
            second_path: false,
        })
    }
}

fn id_name(id: u8) -> &'static str {
    match id {
        id::CONTROL => "control",
        id::INITIATOR => "initiator",
        id::NIC => "NIC",
        id::TARGET => "target",
        id::EXTENSIONS => "extensions",
        _ => "unknown",
    }
}

/// OEM fields are space- or NUL-padded ASCII.
fn trimmed_ascii(b: &[u8]) -> String {
    let s: String = b
        .iter()
        .map(|c| {
            if c.is_ascii_graphic() || *c == b' ' {
                *c as char
            } else {
                ' '
            }
        })
        .collect();
    s.trim().to_string()
}

/// Bytes shown safely in a message: text where printable, \xNN otherwise,
/// cut at 64 bytes.
pub fn printable(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for c in b.iter().take(64) {
        if c.is_ascii_graphic() || *c == b' ' {
            s.push(*c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    if b.len() > 64 {
        s.push_str("...");
    }
    s.push('"');
    s
}
