//! Netlink messages (one builder, one attribute parser) and a small
//! generic-netlink client: enough to resolve a family by name and send
//! commands with attributes, as the NBD driver's interface needs. The
//! rtnetlink client (`net::rtnl`) builds on the same pieces. Message building and parsing are pure and unit-tested; only
//! [`GenlSocket`] does I/O.
//!
//! Layout (all host-endian): nlmsghdr {u32 len, u16 type, u16 flags, u32
//! seq, u32 pid}, genlmsghdr {u8 cmd, u8 version, u16 reserved}, then
//! attributes {u16 len, u16 type, payload, padding to 4}.

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

pub const NLMSG_HDRLEN: usize = 16;
pub const GENL_HDRLEN: usize = 4;
pub const NLA_HDRLEN: usize = 4;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 1 << 15;
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink request under construction: the 16-byte nlmsghdr, the
/// family's fixed header (genlmsghdr, ifinfomsg, rtmsg, ...) padded to 4
/// bytes, then attributes. Shared by the NBD (generic netlink) and
/// rtnetlink clients.
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
    /// Start offsets of open nested attributes.
    nests: Vec<usize>,
}

impl MsgBuilder {
    pub fn new(ty: u16, flags: u16, seq: u32, fixed: &[u8]) -> MsgBuilder {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        MsgBuilder {
            buf,
            nests: Vec::new(),
        }
    }

    /// A generic-netlink request: the genlmsghdr is {cmd, version, 0, 0}.
    pub fn genl(family: u16, cmd: u8, version: u8, flags: u16, seq: u32) -> MsgBuilder {
        MsgBuilder::new(family, flags, seq, &[cmd, version, 0, 0])
    }

    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = NLA_HDRLEN + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn u16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn string(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut p = s.as_bytes().to_vec();
        p.push(0);
        self.attr(ty, &p)
    }

    /// An address attribute: 4 bytes for IPv4, 16 for IPv6.
    pub fn ip(&mut self, ty: u16, a: &std::net::IpAddr) -> &mut Self {
        match a {
            std::net::IpAddr::V4(v) => self.attr(ty, &v.octets()),
            std::net::IpAddr::V6(v) => self.attr(ty, &v.octets()),
        }
    }

    pub fn begin_nested(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nested(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        while !self.nests.is_empty() {
            self.end_nested();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf.clone()
    }
}

/// One message received from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// NLMSG_ERROR with error 0: an acknowledgement.
    Ack {
        seq: u32,
    },
    /// NLMSG_ERROR with a negative errno.
    Error {
        seq: u32,
        errno: i32,
    },
    /// A generic-netlink message: its command and attributes.
    Genl {
        seq: u32,
        ty: u16,
        cmd: u8,
        attrs: Vec<(u16, Vec<u8>)>,
    },
    Done {
        seq: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad netlink message from the kernel: {}", self.0)
    }
}

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// Attributes of a payload (type with the nested/byte-order bits masked).
pub fn parse_attrs(mut b: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, ParseError> {
    let mut out = Vec::new();
    while b.len() >= NLA_HDRLEN {
        let len = usize::from(u16_at(b, 0).unwrap_or(0));
        let ty = u16_at(b, 2).unwrap_or(0) & 0x3fff;
        if len < NLA_HDRLEN || len > b.len() {
            return Err(ParseError(format!(
                "attribute of length {len} in {} bytes",
                b.len()
            )));
        }
        out.push((ty, b[NLA_HDRLEN..len].to_vec()));
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The positive errno of an NLMSG_ERROR's error field (the kernel sends
/// -errno). A value with no positive counterpart (i32::MIN, from a
/// corrupt message) becomes i32::MAX instead of overflowing.
pub fn errno_of(error_field: u32) -> i32 {
    (error_field as i32).checked_neg().unwrap_or(i32::MAX)
}

/// Every message in one datagram.
pub fn parse_replies(mut b: &[u8]) -> Result<Vec<Reply>, ParseError> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).unwrap_or(0) as usize;
        let ty = u16_at(b, 4).unwrap_or(0);
        let seq = u32_at(b, 8).unwrap_or(0);
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(ParseError(format!(
                "message of length {len} in {} bytes",
                b.len()
            )));
        }
        let body = &b[NLMSG_HDRLEN..len];
        out.push(match ty {
            NLMSG_ERROR => {
                let e = u32_at(body, 0).ok_or_else(|| ParseError("short NLMSG_ERROR".into()))?;
                if e == 0 {
                    Reply::Ack { seq }
                } else {
                    Reply::Error {
                        seq,
                        errno: errno_of(e),
                    }
                }
            }
            NLMSG_DONE => Reply::Done { seq },
            _ => {
                let cmd = *body
                    .first()
                    .ok_or_else(|| ParseError("message without genl header".into()))?;
                Reply::Genl {
                    seq,
                    ty,
                    cmd,
                    attrs: parse_attrs(body.get(GENL_HDRLEN..).unwrap_or(&[]))?,
                }
            }
        });
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Find an attribute's payload.
pub fn attr(attrs: &[(u16, Vec<u8>)], ty: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v.as_slice())
}

/// A netlink failure, with the operation it belongs to.
#[derive(Debug)]
pub struct NetlinkError {
    pub what: String,
    pub errno: Option<nix::errno::Errno>,
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{}: {}", self.what, e.desc()),
            None => write!(f, "{}", self.what),
        }
    }
}

impl std::error::Error for NetlinkError {}

/// A NETLINK_GENERIC socket.
pub struct GenlSocket {
    fd: OwnedFd,
    seq: u32,
}

impl GenlSocket {
    pub fn open() -> Result<GenlSocket, NetlinkError> {
        let err = |what: &str, e| NetlinkError {
            what: what.to_string(),
            errno: Some(e),
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkGeneric,
        )
        .map_err(|e| err("opening a generic netlink socket", e))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| err("binding the netlink socket", e))?;
        Ok(GenlSocket { fd, seq: 1 })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send a request and collect replies until the ACK (or error) for it.
    pub fn request(&mut self, msg: &[u8], what: &str) -> Result<Vec<Reply>, NetlinkError> {
        let seq = u32_at(msg, 8).unwrap_or(0);
        send(self.fd.as_raw_fd(), msg, MsgFlags::empty()).map_err(|e| NetlinkError {
            what: format!("{what}: sending"),
            errno: Some(e),
        })?;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| {
                NetlinkError {
                    what: format!("{what}: receiving"),
                    errno: Some(e),
                }
            })?;
            let replies = parse_replies(&buf[..n]).map_err(|e| NetlinkError {
                what: format!("{what}: {e}"),
                errno: None,
            })?;
            for r in replies {
                match r {
                    Reply::Ack { seq: s } if s == seq => return Ok(got),
                    Reply::Error { seq: s, errno } if s == seq => {
                        return Err(NetlinkError {
                            what: what.to_string(),
                            errno: Some(nix::errno::Errno::from_raw(errno)),
                        });
                    }
                    Reply::Done { seq: s } if s == seq => return Ok(got),
                    other => got.push(other),
                }
            }
        }
    }

    /// The id of generic-netlink family `name` ("nbd").
    pub fn family_id(&mut self, name: &str) -> Result<u16, NetlinkError> {
        let seq = self.next_seq();
        let msg = MsgBuilder::genl(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            1,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        )
        .string(CTRL_ATTR_FAMILY_NAME, name)
        .finish();
        let what = format!("looking up the \"{name}\" netlink family (is the module loaded?)");
        let replies = self.request(&msg, &what)?;
        replies
            .iter()
            .find_map(|r| match r {
                Reply::Genl { attrs, .. } => {
                    attr(attrs, CTRL_ATTR_FAMILY_ID).and_then(|v| u16_at(v, 0))
                }
                _ => None,
            })
            .ok_or(NetlinkError { what, errno: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_field_of_i32_min_does_not_overflow() {
        assert_eq!(errno_of((-22i32) as u32), 22);
        assert_eq!(errno_of(0x8000_0000), i32::MAX);
        let mut m = vec![0u8; 36];
        m[0..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&0x8000_0000u32.to_ne_bytes());
        assert!(matches!(
            parse_replies(&m).unwrap()[..],
            [Reply::Error {
                errno: i32::MAX,
                ..
            }]
        ));
    }

    #[test]
    fn build_and_parse() {
        let msg = MsgBuilder::genl(0x20, 1, 1, NLM_F_REQUEST | NLM_F_ACK, 7)
            .u32(1, 5)
            .u64(2, 1 << 30)
            .begin_nested(7)
            .begin_nested(1)
            .u32(1, 9)
            .end_nested()
            .end_nested()
            .string(10, "sanroot")
            .finish();
        assert_eq!(msg.len() % 4, 0);
        assert_eq!(u32_at(&msg, 0), Some(msg.len() as u32));
        let r = parse_replies(&msg).unwrap();
        let Reply::Genl {
            seq,
            ty,
            cmd,
            attrs,
        } = &r[0]
        else {
            panic!("{r:?}")
        };
        assert_eq!((*seq, *ty, *cmd), (7, 0x20, 1));
        assert_eq!(attr(attrs, 1), Some(&5u32.to_ne_bytes()[..]));
        assert_eq!(attr(attrs, 2), Some(&(1u64 << 30).to_ne_bytes()[..]));
        let nested = parse_attrs(attr(attrs, 7).unwrap()).unwrap();
        let inner = parse_attrs(attr(&nested, 1).unwrap()).unwrap();
        assert_eq!(attr(&inner, 1), Some(&9u32.to_ne_bytes()[..]));
        assert_eq!(attr(attrs, 10), Some(&b"sanroot\0"[..]));
    }

    #[test]
    fn errors_and_garbage() {
        let mut e = Vec::new();
        e.extend_from_slice(&36u32.to_ne_bytes());
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e.extend_from_slice(&0u16.to_ne_bytes());
        e.extend_from_slice(&3u32.to_ne_bytes());
        e.extend_from_slice(&0u32.to_ne_bytes());
        e.extend_from_slice(&(-16i32).to_ne_bytes());
        e.resize(36, 0);
        assert_eq!(
            parse_replies(&e).unwrap(),
            vec![Reply::Error { seq: 3, errno: 16 }]
        );
        assert!(parse_replies(&[0xff; 20]).is_err());
        for cut in 0..e.len() {
            let _ = parse_replies(&e[..cut]);
        }
    }
}
