//! rtnetlink (NETLINK_ROUTE) messages as bytes: building requests and
//! parsing the kernel's answers. Pure: no I/O, nothing here can panic on
//! what the kernel sends (every parser is fed every truncation in the
//! tests).
//!
//! Layout (host-endian): nlmsghdr {u32 len, u16 type, u16 flags, u32 seq,
//! u32 pid}, then a family header (ifinfomsg 16 bytes, ifaddrmsg 8, rtmsg
//! 12), then attributes {u16 len, u16 type, payload, padding to 4}.
//! Attribute parsing is shared with the generic-netlink client
//! ([`crate::netlink::parse_attrs`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::netlink::{MsgBuilder, NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, attr};
use crate::netlink::{NLMSG_HDRLEN, ParseError, align4, errno_of, parse_attrs, u16_at, u32_at};

// Message types.
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;

// Request flags.
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// On a dump message: the dump was interrupted by a change, start again.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// On NLMSG_ERROR: the original request's payload was left out.
pub const NLM_F_CAPPED: u16 = 0x100;
/// On NLMSG_ERROR: extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const AF_UNSPEC: u8 = 0;

// Link flags.
pub const IFF_UP: u32 = 0x1;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_RUNNING: u32 = 0x40;
pub const IFF_LOWER_UP: u32 = 0x1_0000;

// Link attributes.
pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_OPERSTATE: u16 = 16;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_CARRIER: u16 = 33;
pub const IFLA_PERM_ADDRESS: u16 = 54;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const IFLA_VLAN_ID: u16 = 1;

/// RFC 2863 operational states (IFLA_OPERSTATE).
pub const IF_OPER_UP: u8 = 6;

// Address attributes and flags.
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_PERMANENT: u32 = 0x80;

// Routes.
pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_TABLE: u16 = 15;
pub const RT_TABLE_MAIN: u8 = 254;
/// The protocol routes are tagged with: "boot", as iproute2 and dracut do
/// for routes configured at boot time.
pub const RTPROT_BOOT: u8 = 3;
pub const RTN_UNICAST: u8 = 1;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RTNH_F_ONLINK: u32 = 4;

/// Longest interface name (IFNAMSIZ less the NUL).
pub const IFNAME_MAX: usize = 15;

/// The address family byte of an address.
pub fn family_of(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// An address attribute's payload, read as the family says.
pub fn parse_ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => {
            let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        AF_INET6 => {
            let o: [u8; 16] = b.get(..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// A NUL-terminated (or not) string attribute.
fn parse_string(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `struct ifinfomsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfInfoMsg {
    pub family: u8,
    pub ty: u16,
    pub index: u32,
    pub flags: u32,
    pub change: u32,
}

impl IfInfoMsg {
    pub const LEN: usize = 16;

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.family;
        b[2..4].copy_from_slice(&self.ty.to_ne_bytes());
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.change.to_ne_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Option<IfInfoMsg> {
        Some(IfInfoMsg {
            family: *b.first()?,
            ty: u16_at(b, 2)?,
            index: u32_at(b, 4)?,
            flags: u32_at(b, 8)?,
            change: u32_at(b, 12)?,
        })
    }
}

/// `struct ifaddrmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfAddrMsg {
    pub family: u8,
    pub prefix_len: u8,
    pub flags: u8,
    pub scope: u8,
    pub index: u32,
}

impl IfAddrMsg {
    pub const LEN: usize = 8;

    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.family;
        b[1] = self.prefix_len;
        b[2] = self.flags;
        b[3] = self.scope;
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Option<IfAddrMsg> {
        Some(IfAddrMsg {
            family: *b.first()?,
            prefix_len: *b.get(1)?,
            flags: *b.get(2)?,
            scope: *b.get(3)?,
            index: u32_at(b, 4)?,
        })
    }
}

/// `struct rtmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtMsg {
    pub family: u8,
    pub dst_len: u8,
    pub src_len: u8,
    pub tos: u8,
    pub table: u8,
    pub protocol: u8,
    pub scope: u8,
    pub ty: u8,
    pub flags: u32,
}

impl RtMsg {
    pub const LEN: usize = 12;

    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&[
            self.family,
            self.dst_len,
            self.src_len,
            self.tos,
            self.table,
            self.protocol,
            self.scope,
            self.ty,
        ]);
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Option<RtMsg> {
        let h: [u8; 8] = b.get(..8)?.try_into().ok()?;
        Some(RtMsg {
            family: h[0],
            dst_len: h[1],
            src_len: h[2],
            tos: h[3],
            table: h[4],
            protocol: h[5],
            scope: h[6],
            ty: h[7],
            flags: u32_at(b, 8)?,
        })
    }
}

// ---- Requests -------------------------------------------------------------

/// Dump every link.
pub fn get_links(seq: u32) -> Vec<u8> {
    let hdr = IfInfoMsg::default().to_bytes();
    MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, &hdr).finish()
}

/// One link by index (the link, then an ACK: without NLM_F_ACK a
/// non-dump GET ends with nothing to wait for).
pub fn get_link(seq: u32, index: u32) -> Vec<u8> {
    let hdr = IfInfoMsg {
        index,
        ..Default::default()
    }
    .to_bytes();
    MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &hdr).finish()
}

/// One link by name.
pub fn get_link_by_name(seq: u32, name: &str) -> Vec<u8> {
    let hdr = IfInfoMsg::default().to_bytes();
    MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &hdr)
        .string(IFLA_IFNAME, name)
        .finish()
}

/// Set a link administratively up (only IFF_UP changes).
pub fn set_link_up(seq: u32, index: u32) -> Vec<u8> {
    let hdr = IfInfoMsg {
        index,
        flags: IFF_UP,
        change: IFF_UP,
        ..Default::default()
    }
    .to_bytes();
    MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &hdr).finish()
}

/// Rename link `index` to `name`. The kernel refuses with EBUSY while the
/// link is up and with EEXIST when another link has the name.
pub fn set_link_name(seq: u32, index: u32, name: &str) -> Vec<u8> {
    let hdr = IfInfoMsg {
        index,
        ..Default::default()
    }
    .to_bytes();
    MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &hdr)
        .string(IFLA_IFNAME, name)
        .finish()
}

/// Create VLAN `vid` on link `parent` named `name` (fails with EEXIST if
/// the name is taken: the caller reuses an existing one first).
pub fn new_vlan(seq: u32, parent: u32, name: &str, vid: u16) -> Vec<u8> {
    let hdr = IfInfoMsg::default().to_bytes();
    MsgBuilder::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        &hdr,
    )
    .string(IFLA_IFNAME, name)
    .u32(IFLA_LINK, parent)
    .begin_nested(IFLA_LINKINFO)
    .string(IFLA_INFO_KIND, "vlan")
    .begin_nested(IFLA_INFO_DATA)
    .u16(IFLA_VLAN_ID, vid)
    .end_nested()
    .end_nested()
    .finish()
}

/// Add (or update, NLM_F_REPLACE) an address with its prefix.
pub fn new_addr(seq: u32, index: u32, addr: &IpAddr, prefix_len: u8, nodad: bool) -> Vec<u8> {
    let hdr = IfAddrMsg {
        family: family_of(addr),
        prefix_len,
        flags: 0,
        scope: RT_SCOPE_UNIVERSE,
        index,
    }
    .to_bytes();
    let mut m = MsgBuilder::new(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &hdr,
    );
    m.ip(IFA_LOCAL, addr).ip(IFA_ADDRESS, addr);
    if nodad {
        m.u32(IFA_FLAGS, IFA_F_NODAD);
    }
    m.finish()
}

/// Dump the addresses of one family (AF_UNSPEC: all).
pub fn get_addrs(seq: u32, family: u8) -> Vec<u8> {
    let hdr = IfAddrMsg {
        family,
        ..Default::default()
    }
    .to_bytes();
    MsgBuilder::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, &hdr).finish()
}

/// A route in the main table through one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination and prefix length; `None` is the default route. Its
    /// family decides the route's family when present.
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    /// The gateway is reachable on the link although outside every prefix
    /// on it (RTNH_F_ONLINK).
    pub onlink: bool,
}

impl RouteSpec {
    pub fn family(&self) -> u8 {
        match (self.dst, self.gateway) {
            (Some((d, _)), _) => family_of(&d),
            (None, Some(g)) => family_of(&g),
            (None, None) => AF_INET,
        }
    }
}

/// Add (or replace) a route in the main table.
pub fn new_route(seq: u32, r: &RouteSpec) -> Vec<u8> {
    let hdr = RtMsg {
        family: r.family(),
        dst_len: r.dst.map(|(_, l)| l).unwrap_or(0),
        table: RT_TABLE_MAIN,
        protocol: RTPROT_BOOT,
        scope: if r.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        },
        ty: RTN_UNICAST,
        flags: if r.onlink { RTNH_F_ONLINK } else { 0 },
        ..Default::default()
    }
    .to_bytes();
    let mut m = MsgBuilder::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &hdr,
    );
    m.u32(RTA_TABLE, u32::from(RT_TABLE_MAIN));
    if let Some((d, _)) = &r.dst {
        m.ip(RTA_DST, d);
    }
    if let Some(g) = &r.gateway {
        m.ip(RTA_GATEWAY, g);
    }
    m.u32(RTA_OIF, r.oif);
    m.finish()
}

// ---- Replies --------------------------------------------------------------

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// Everything after the 16-byte header.
    pub payload: &'a [u8],
}

/// Split a datagram into messages.
pub fn split(mut b: &[u8]) -> Result<Vec<NlMsg<'_>>, ParseError> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(ParseError(format!(
                "message of length {len} in {} bytes",
                b.len()
            )));
        }
        out.push(NlMsg {
            ty: u16_at(b, 4).unwrap_or(0),
            flags: u16_at(b, 6).unwrap_or(0),
            seq: u32_at(b, 8).unwrap_or(0),
            pid: u32_at(b, 12).unwrap_or(0),
            payload: &b[NLMSG_HDRLEN..len],
        });
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    if !b.is_empty() {
        return Err(ParseError(format!(
            "{} stray bytes after messages",
            b.len()
        )));
    }
    Ok(out)
}

/// What an NLMSG_ERROR says: 0 for an acknowledgement, else a positive
/// errno, with the kernel's extended-ack text when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    pub errno: i32,
    pub message: Option<String>,
}

pub fn parse_error(m: &NlMsg<'_>) -> Result<ErrorMsg, ParseError> {
    let e = u32_at(m.payload, 0).ok_or_else(|| ParseError("short NLMSG_ERROR".into()))?;
    let mut message = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // nlmsgerr: error, the request's header, its payload unless capped,
        // then the TLVs.
        let orig_len = u32_at(m.payload, 4).unwrap_or(0) as usize;
        let skip = if m.flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            4 + align4(orig_len.max(NLMSG_HDRLEN))
        };
        if let Some(tlvs) = m.payload.get(skip..)
            && let Ok(attrs) = parse_attrs(tlvs)
        {
            message = attr(&attrs, NLMSGERR_ATTR_MSG)
                .map(parse_string)
                .filter(|s| !s.is_empty());
        }
    }
    Ok(ErrorMsg {
        errno: errno_of(e),
        message,
    })
}

/// A network interface as RTM_NEWLINK describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFF_* flags.
    pub flags: u32,
    /// ARPHRD_* type.
    pub link_type: u16,
    /// The current hardware address (any length; 6 for Ethernet).
    pub address: Vec<u8>,
    /// The permanent (burnt-in) address, when the driver reports one.
    pub perm_address: Vec<u8>,
    pub mtu: Option<u32>,
    /// IFLA_CARRIER.
    pub carrier: Option<bool>,
    /// IFLA_OPERSTATE (RFC 2863: 2 down, 5 dormant, 6 up, ...).
    pub operstate: Option<u8>,
    /// IFLA_LINK: the parent (VLAN) or the peer (veth).
    pub link: Option<u32>,
    /// IFLA_INFO_KIND ("vlan", "veth", ...); `None` for physical NICs.
    pub kind: Option<String>,
    /// IFLA_VLAN_ID for a VLAN.
    pub vlan_id: Option<u16>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    /// Whether the link has carrier: IFLA_CARRIER when the kernel gives it
    /// (3.7+), else IFF_LOWER_UP, else operstate.
    pub fn has_carrier(&self) -> bool {
        match self.carrier {
            Some(c) => c,
            None => self.flags & IFF_LOWER_UP != 0 || self.operstate == Some(IF_OPER_UP),
        }
    }

    pub fn operstate_name(&self) -> &'static str {
        match self.operstate {
            None => "?",
            Some(0) => "unknown",
            Some(1) => "notpresent",
            Some(2) => "down",
            Some(3) => "lowerlayerdown",
            Some(4) => "testing",
            Some(5) => "dormant",
            Some(6) => "up",
            Some(_) => "other",
        }
    }

    /// Whether `mac` is this link's current or permanent address.
    pub fn has_mac(&self, mac: &[u8; 6]) -> bool {
        self.address == mac || self.perm_address == mac
    }

    /// A link stacked on another that shares its MAC (VLAN, macvlan,
    /// bridge, bond, ...) rather than a NIC of its own.
    pub fn is_stacked(&self) -> bool {
        matches!(
            self.kind.as_deref(),
            Some("vlan" | "macvlan" | "macvtap" | "ipvlan" | "ipvtap" | "bridge" | "bond" | "team")
        )
    }
}

/// Parse the payload of an RTM_NEWLINK message.
pub fn parse_link(payload: &[u8]) -> Result<Link, ParseError> {
    let h = IfInfoMsg::parse(payload).ok_or_else(|| ParseError("short ifinfomsg".into()))?;
    let attrs = parse_attrs(payload.get(IfInfoMsg::LEN..).unwrap_or(&[]))?;
    let mut l = Link {
        index: h.index,
        flags: h.flags,
        link_type: h.ty,
        ..Default::default()
    };
    l.name = attr(&attrs, IFLA_IFNAME)
        .map(parse_string)
        .ok_or_else(|| ParseError(format!("link {} without a name", h.index)))?;
    l.address = attr(&attrs, IFLA_ADDRESS).unwrap_or(&[]).to_vec();
    l.perm_address = attr(&attrs, IFLA_PERM_ADDRESS).unwrap_or(&[]).to_vec();
    l.mtu = attr(&attrs, IFLA_MTU).and_then(|v| u32_at(v, 0));
    l.carrier = attr(&attrs, IFLA_CARRIER).and_then(|v| v.first().map(|c| *c != 0));
    l.operstate = attr(&attrs, IFLA_OPERSTATE).and_then(|v| v.first().copied());
    l.link = attr(&attrs, IFLA_LINK).and_then(|v| u32_at(v, 0));
    if let Some(info) = attr(&attrs, IFLA_LINKINFO) {
        let info = parse_attrs(info)?;
        l.kind = attr(&info, IFLA_INFO_KIND).map(parse_string);
        if l.kind.as_deref() == Some("vlan")
            && let Some(data) = attr(&info, IFLA_INFO_DATA)
        {
            l.vlan_id = attr(&parse_attrs(data)?, IFLA_VLAN_ID).and_then(|v| u16_at(v, 0));
        }
    }
    Ok(l)
}

/// An address as RTM_NEWADDR describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub family: u8,
    pub prefix_len: u8,
    /// IFA_F_* flags (IFA_FLAGS when present: it holds all 32 bits).
    pub flags: u32,
    pub scope: u8,
    /// IFA_LOCAL, else IFA_ADDRESS.
    pub address: Option<IpAddr>,
}

/// Parse the payload of an RTM_NEWADDR message.
pub fn parse_addr(payload: &[u8]) -> Result<Addr, ParseError> {
    let h = IfAddrMsg::parse(payload).ok_or_else(|| ParseError("short ifaddrmsg".into()))?;
    let attrs = parse_attrs(payload.get(IfAddrMsg::LEN..).unwrap_or(&[]))?;
    let ip = |ty| attr(&attrs, ty).and_then(|v| parse_ip(h.family, v));
    Ok(Addr {
        index: h.index,
        family: h.family,
        prefix_len: h.prefix_len,
        flags: attr(&attrs, IFA_FLAGS)
            .and_then(|v| u32_at(v, 0))
            .unwrap_or(u32::from(h.flags)),
        scope: h.scope,
        address: ip(IFA_LOCAL).or_else(|| ip(IFA_ADDRESS)),
    })
}

/// The name of VLAN `vid` on `parent`: `<parent>.<vid>`, the parent's
/// name shortened when the whole would not fit in IFNAMSIZ.
pub fn vlan_name(parent: &str, vid: u16) -> String {
    let suffix = format!(".{vid}");
    let room = IFNAME_MAX.saturating_sub(suffix.len());
    let mut p: String = parent.chars().take(room).collect();
    while p.len() > room {
        p.pop();
    }
    p + &suffix
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NLA_F_NESTED;

    fn header(len: usize, ty: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    /// A kernel-style RTM_NEWLINK for a VLAN with carrier.
    fn link_msg() -> Vec<u8> {
        let hdr = IfInfoMsg {
            family: AF_UNSPEC,
            ty: 1,
            index: 7,
            flags: IFF_UP | IFF_LOWER_UP | IFF_RUNNING,
            change: 0,
        }
        .to_bytes();
        MsgBuilder::new(RTM_NEWLINK, NLM_F_DUMP, 9, &hdr)
            .string(IFLA_IFNAME, "eth0.42")
            .attr(IFLA_ADDRESS, &[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])
            .u32(IFLA_MTU, 1500)
            .attr(IFLA_CARRIER, &[1])
            .attr(IFLA_OPERSTATE, &[6])
            .u32(IFLA_LINK, 2)
            .begin_nested(IFLA_LINKINFO)
            .string(IFLA_INFO_KIND, "vlan")
            .begin_nested(IFLA_INFO_DATA)
            .u16(IFLA_VLAN_ID, 42)
            .finish()
    }

    fn addr_msg() -> Vec<u8> {
        let hdr = IfAddrMsg {
            family: AF_INET6,
            prefix_len: 64,
            flags: IFA_F_TENTATIVE as u8,
            scope: 0,
            index: 3,
        }
        .to_bytes();
        let a: IpAddr = "fd00::15".parse().unwrap();
        MsgBuilder::new(RTM_NEWADDR, NLM_F_DUMP, 4, &hdr)
            .ip(IFA_ADDRESS, &a)
            .u32(IFA_FLAGS, IFA_F_TENTATIVE | IFA_F_PERMANENT)
            .finish()
    }

    fn error_msg(errno: i32, text: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(-errno).to_ne_bytes());
        body.extend_from_slice(&header(40, RTM_NEWLINK, 5, 3));
        let mut flags = NLM_F_CAPPED;
        if let Some(t) = text {
            flags |= NLM_F_ACK_TLVS;
            let mut a = MsgBuilder::new(0, 0, 0, &[]);
            a.string(NLMSGERR_ATTR_MSG, t);
            body.extend_from_slice(&a.finish()[NLMSG_HDRLEN..]);
        }
        let mut m = header(NLMSG_HDRLEN + body.len(), NLMSG_ERROR, flags, 3);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn link_round_trip() {
        let m = link_msg();
        assert_eq!(m.len() % 4, 0);
        let msgs = split(&m).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].ty, msgs[0].seq), (RTM_NEWLINK, 9));
        let l = parse_link(msgs[0].payload).unwrap();
        assert_eq!(l.index, 7);
        assert_eq!(l.name, "eth0.42");
        assert!(l.is_up() && l.has_carrier());
        assert!(l.has_mac(&[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert!(!l.has_mac(&[0x52, 0x54, 0, 0xaa, 0xbb, 0xcd]));
        assert_eq!(l.mtu, Some(1500));
        assert_eq!(l.link, Some(2));
        assert_eq!(l.kind.as_deref(), Some("vlan"));
        assert_eq!(l.vlan_id, Some(42));
        assert!(l.is_stacked());
        assert_eq!(l.operstate_name(), "up");
    }

    #[test]
    fn carrier_fallbacks() {
        let mut l = Link {
            flags: IFF_UP,
            ..Default::default()
        };
        assert!(!l.has_carrier());
        l.flags |= IFF_LOWER_UP;
        assert!(l.has_carrier());
        l.carrier = Some(false);
        assert!(!l.has_carrier());
        l.carrier = None;
        l.flags = IFF_UP;
        l.operstate = Some(IF_OPER_UP);
        assert!(l.has_carrier());
    }

    #[test]
    fn addr_round_trip() {
        let m = addr_msg();
        let msgs = split(&m).unwrap();
        let a = parse_addr(msgs[0].payload).unwrap();
        assert_eq!(a.index, 3);
        assert_eq!(a.prefix_len, 64);
        assert_eq!(a.address, Some("fd00::15".parse().unwrap()));
        assert_eq!(a.flags, IFA_F_TENTATIVE | IFA_F_PERMANENT);
    }

    #[test]
    fn requests_encode_as_the_kernel_expects() {
        // RTM_NEWLINK for a VLAN: ifinfomsg zeroed, name, parent, and the
        // nested linkinfo { kind "vlan", data { id } }.
        let m = new_vlan(5, 2, "eth0.42", 42);
        assert_eq!(u32_at(&m, 0), Some(m.len() as u32));
        assert_eq!(u16_at(&m, 4), Some(RTM_NEWLINK));
        assert_eq!(
            u16_at(&m, 6),
            Some(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        );
        assert_eq!(u32_at(&m, 8), Some(5));
        assert_eq!(&m[16..32], &[0u8; 16]);
        let attrs = parse_attrs(&m[32..]).unwrap();
        assert_eq!(attr(&attrs, IFLA_IFNAME), Some(&b"eth0.42\0"[..]));
        assert_eq!(attr(&attrs, IFLA_LINK), Some(&2u32.to_ne_bytes()[..]));
        // The nested flag is set on the wire.
        let li = m[32..]
            .windows(2)
            .position(|w| w == (IFLA_LINKINFO | NLA_F_NESTED).to_ne_bytes())
            .is_some();
        assert!(li);
        let info = parse_attrs(attr(&attrs, IFLA_LINKINFO).unwrap()).unwrap();
        assert_eq!(attr(&info, IFLA_INFO_KIND), Some(&b"vlan\0"[..]));
        let data = parse_attrs(attr(&info, IFLA_INFO_DATA).unwrap()).unwrap();
        assert_eq!(attr(&data, IFLA_VLAN_ID), Some(&42u16.to_ne_bytes()[..]));

        // Link up: only IFF_UP in flags and change.
        let m = set_link_up(6, 3);
        let h = IfInfoMsg::parse(&m[16..]).unwrap();
        assert_eq!((h.index, h.flags, h.change), (3, IFF_UP, IFF_UP));
        assert_eq!(m.len(), 32);

        // Rename: the index in ifinfomsg, no flag changes, the new name as
        // IFLA_IFNAME (NUL-terminated, padded), no create flags.
        let m = set_link_name(11, 3, "ens3");
        assert_eq!(u32_at(&m, 0), Some(m.len() as u32));
        assert_eq!(u16_at(&m, 4), Some(RTM_NEWLINK));
        assert_eq!(u16_at(&m, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(u32_at(&m, 8), Some(11));
        let h = IfInfoMsg::parse(&m[16..]).unwrap();
        assert_eq!((h.index, h.flags, h.change), (3, 0, 0));
        let mut want = Vec::new();
        want.extend_from_slice(&9u16.to_ne_bytes());
        want.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        want.extend_from_slice(b"ens3\0\0\0\0");
        assert_eq!(&m[32..], &want[..]);
        assert_eq!(m.len(), 44);

        // Address: replace semantics, both IFA_LOCAL and IFA_ADDRESS.
        let a: IpAddr = "10.0.2.15".parse().unwrap();
        let m = new_addr(7, 3, &a, 24, false);
        assert_eq!(
            u16_at(&m, 6),
            Some(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
        );
        let h = IfAddrMsg::parse(&m[16..]).unwrap();
        assert_eq!((h.family, h.prefix_len, h.index), (AF_INET, 24, 3));
        let attrs = parse_attrs(&m[24..]).unwrap();
        assert_eq!(attr(&attrs, IFA_LOCAL), Some(&[10, 0, 2, 15][..]));
        assert_eq!(attr(&attrs, IFA_ADDRESS), Some(&[10, 0, 2, 15][..]));
        assert_eq!(attr(&attrs, IFA_FLAGS), None);
        let m = new_addr(7, 3, &"fd00::1".parse().unwrap(), 64, true);
        let attrs = parse_attrs(&m[24..]).unwrap();
        assert_eq!(
            attr(&attrs, IFA_FLAGS),
            Some(&IFA_F_NODAD.to_ne_bytes()[..])
        );
        assert_eq!(m[16], AF_INET6);

        // Default route via a gateway, on-link flag.
        let g: IpAddr = "10.0.2.2".parse().unwrap();
        let m = new_route(
            8,
            &RouteSpec {
                dst: None,
                gateway: Some(g),
                oif: 3,
                onlink: true,
            },
        );
        let h = RtMsg::parse(&m[16..]).unwrap();
        assert_eq!(
            (h.family, h.dst_len, h.table, h.scope, h.ty, h.flags),
            (AF_INET, 0, RT_TABLE_MAIN, RT_SCOPE_UNIVERSE, RTN_UNICAST, 4)
        );
        assert_eq!(h.protocol, RTPROT_BOOT);
        let attrs = parse_attrs(&m[28..]).unwrap();
        assert_eq!(attr(&attrs, RTA_DST), None);
        assert_eq!(attr(&attrs, RTA_GATEWAY), Some(&[10, 0, 2, 2][..]));
        assert_eq!(attr(&attrs, RTA_OIF), Some(&3u32.to_ne_bytes()[..]));

        // A host route directly on the link: scope link, no gateway.
        let t: IpAddr = "fd00::20".parse().unwrap();
        let m = new_route(
            9,
            &RouteSpec {
                dst: Some((t, 128)),
                gateway: None,
                oif: 3,
                onlink: false,
            },
        );
        let h = RtMsg::parse(&m[16..]).unwrap();
        assert_eq!(
            (h.family, h.dst_len, h.scope),
            (AF_INET6, 128, RT_SCOPE_LINK)
        );
        let attrs = parse_attrs(&m[28..]).unwrap();
        assert_eq!(
            attr(&attrs, RTA_DST).and_then(|v| parse_ip(AF_INET6, v)),
            Some(t)
        );

        // Dumps.
        let m = get_links(1);
        assert_eq!(u16_at(&m, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(m.len(), 32);
        let m = get_link_by_name(1, "eth0");
        assert_eq!(
            attr(&parse_attrs(&m[32..]).unwrap(), IFLA_IFNAME),
            Some(&b"eth0\0"[..])
        );
        assert_eq!(get_addrs(1, AF_INET6)[16], AF_INET6);
        assert_eq!(IfInfoMsg::parse(&get_link(1, 9)[16..]).unwrap().index, 9);
    }

    #[test]
    fn errors_with_and_without_extack() {
        let m = error_msg(95, Some("Unknown device type"));
        let msgs = split(&m).unwrap();
        assert_eq!(msgs[0].ty, NLMSG_ERROR);
        let e = parse_error(&msgs[0]).unwrap();
        assert_eq!(e.errno, 95);
        assert_eq!(e.message.as_deref(), Some("Unknown device type"));
        let m = error_msg(17, None);
        let e = parse_error(&split(&m).unwrap()[0]).unwrap();
        assert_eq!(
            e,
            ErrorMsg {
                errno: 17,
                message: None
            }
        );
        let m = error_msg(0, None);
        assert_eq!(parse_error(&split(&m).unwrap()[0]).unwrap().errno, 0);
        // Uncapped: the request's payload sits between header and TLVs.
        let mut body = Vec::new();
        body.extend_from_slice(&(-22i32).to_ne_bytes());
        body.extend_from_slice(&header(20, RTM_NEWADDR, 5, 3));
        body.extend_from_slice(&[1, 2, 3, 4]);
        let mut a = MsgBuilder::new(0, 0, 0, &[]);
        a.string(NLMSGERR_ATTR_MSG, "bad prefix");
        body.extend_from_slice(&a.finish()[NLMSG_HDRLEN..]);
        let mut m = header(16 + body.len(), NLMSG_ERROR, NLM_F_ACK_TLVS, 3);
        m.extend_from_slice(&body);
        let e = parse_error(&split(&m).unwrap()[0]).unwrap();
        assert_eq!((e.errno, e.message.as_deref()), (22, Some("bad prefix")));
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut d = link_msg();
        d.extend_from_slice(&addr_msg());
        d.extend_from_slice(&header(20, NLMSG_DONE, 2, 9));
        d.extend_from_slice(&[0; 4]);
        let msgs = split(&d).unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.ty).collect::<Vec<_>>(),
            vec![RTM_NEWLINK, RTM_NEWADDR, NLMSG_DONE]
        );
    }

    /// Every truncation and every single-byte corruption of every kind of
    /// message parses or fails cleanly: never a panic.
    #[test]
    fn truncations_and_corruptions_do_not_panic() {
        let samples = [
            link_msg(),
            addr_msg(),
            error_msg(95, Some("Unknown device type")),
            error_msg(0, None),
            new_route(
                1,
                &RouteSpec {
                    dst: Some(("10.1.2.3".parse().unwrap(), 32)),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    oif: 2,
                    onlink: false,
                },
            ),
        ];
        let try_all = |b: &[u8]| {
            let _ = split(b);
            let _ = parse_link(b);
            let _ = parse_addr(b);
            let _ = IfInfoMsg::parse(b);
            let _ = IfAddrMsg::parse(b);
            let _ = RtMsg::parse(b);
            if let Ok(msgs) = split(b) {
                for m in msgs {
                    let _ = parse_error(&m);
                    let _ = parse_link(m.payload);
                    let _ = parse_addr(m.payload);
                }
            }
            // Also as a bare payload with a fake error header around it.
            let m = NlMsg {
                ty: NLMSG_ERROR,
                flags: NLM_F_ACK_TLVS,
                seq: 0,
                pid: 0,
                payload: b,
            };
            let _ = parse_error(&m);
            let m = NlMsg {
                flags: NLM_F_ACK_TLVS | NLM_F_CAPPED,
                ..m
            };
            let _ = parse_error(&m);
        };
        for s in &samples {
            for cut in 0..=s.len() {
                try_all(&s[..cut]);
                try_all(&s[cut..]);
                if cut >= NLMSG_HDRLEN {
                    try_all(&s[NLMSG_HDRLEN..cut]);
                }
            }
            for i in 0..s.len() {
                for v in [0u8, 1, 3, 4, 0x7f, 0x80, 0xff] {
                    let mut c = s.clone();
                    c[i] = v;
                    try_all(&c);
                }
            }
        }
        // Lengths that lie.
        let mut m = link_msg();
        m[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(split(&m).is_err());
        m[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(split(&m).is_err());
        assert!(parse_link(&[0; 3]).is_err());
        assert!(parse_link(&[0; 16]).is_err()); // no name
        assert!(parse_addr(&[0; 7]).is_err());
        let e = NlMsg {
            ty: NLMSG_ERROR,
            flags: 0,
            seq: 0,
            pid: 0,
            payload: &[1, 2],
        };
        assert!(parse_error(&e).is_err());
        // i32::MIN as an errno does not overflow.
        let e = NlMsg {
            payload: &i32::MIN.to_ne_bytes(),
            ..e
        };
        assert_eq!(parse_error(&e).unwrap().errno, i32::MAX);
    }

    #[test]
    fn vlan_names_fit_ifnamsiz() {
        assert_eq!(vlan_name("eth0", 42), "eth0.42");
        assert_eq!(vlan_name("enp0s31f6", 4094), "enp0s31f6.4094");
        assert_eq!(vlan_name("enx525400123456", 42), "enx525400123.42");
        assert_eq!(vlan_name("enx525400123456", 4094).len(), IFNAME_MAX);
    }
}
