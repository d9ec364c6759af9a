//! iSCSI URLs as users know them from libiscsi:
//! `iscsi://[user[%password]@]host[:port]/target-iqn/lun`.
//!
//! A password in a URL ends up in shell history and `ps`; it is accepted
//! for compatibility, and the README points to the environment and files
//! instead. Host is an IP literal (IPv6 in brackets, with its zone as
//! `%25IFNAME` per RFC 6874, or `%IFNAME`): sanroot does no name lookups.

use std::fmt;

use crate::secret::Secret;

pub const DEFAULT_PORT: u16 = 3260;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Without brackets; an IPv6 zone as `%IFNAME`.
    pub host: String,
    pub port: u16,
    pub target: String,
    pub lun: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (expected iscsi://[user[%password]@]host[:port]/target-iqn[/lun])",
            self.0
        )
    }
}

impl std::error::Error for UrlError {}

impl IscsiUrl {
    pub fn parse(s: &str) -> Result<IscsiUrl, UrlError> {
        let rest = s
            .strip_prefix("iscsi://")
            .ok_or_else(|| UrlError(format!("\"{}\" does not start with iscsi://", shown(s))))?;
        let (auth, rest) = match rest.rfind('@') {
            // The '@' must come before the first '/', which starts the path.
            Some(at) if rest.find('/').is_none_or(|slash| at < slash) => {
                (Some(&rest[..at]), &rest[at + 1..])
            }
            _ => (None, rest),
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once('%') {
                Some((u, p)) => (Some(u.to_string()), Some(Secret::from(p))),
                None => (Some(a.to_string()), None),
            },
        };
        if user.as_deref() == Some("") {
            return Err(UrlError("empty user name before '@'".into()));
        }
        let (hostport, path) = rest
            .split_once('/')
            .ok_or_else(|| UrlError("no target name after the host".into()))?;
        let (host, port) = split_host_port(hostport).map_err(UrlError)?;
        // RFC 6874: a zone is written "%25" in a URI ([fe80::1%25eth0]).
        let host = match host.split_once("%25") {
            Some((a, zone)) if a.contains(':') => format!("{a}%{zone}"),
            _ => host,
        };
        let (target, lun) = match path.rsplit_once('/') {
            Some((t, l)) if !l.is_empty() => {
                let lun = l
                    .parse::<u64>()
                    .map_err(|_| UrlError(format!("LUN \"{}\" is not a number", shown(l))))?;
                (t, Some(lun))
            }
            Some((t, _)) => (t, None),
            None => (path, None),
        };
        if target.is_empty() {
            return Err(UrlError("empty target name".into()));
        }
        Ok(IscsiUrl {
            user,
            password,
            host,
            port,
            target: target.to_string(),
            lun,
        })
    }

    /// The portal as "host:port" ("\[v6\]:port").
    pub fn portal(&self) -> String {
        format_portal(&self.host, self.port)
    }
}

/// The URL without its password, for messages.
impl fmt::Display for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iscsi://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        // A zone goes back to its URI form (RFC 6874).
        let portal = format_portal(&self.host.replace('%', "%25"), self.port);
        write!(f, "{portal}/{}", self.target)?;
        if let Some(l) = self.lun {
            write!(f, "/{l}")?;
        }
        Ok(())
    }
}

/// fe80::/10: an address that means something only on its link (it
/// needs a zone to be reached).
pub fn is_v6_link_local(a: &std::net::IpAddr) -> bool {
    matches!(a, std::net::IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80)
}

pub fn format_portal(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// "host", "host:port", "\[v6\]", "\[v6\]:port" -> (host without brackets, port).
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    if s.is_empty() {
        return Err("empty host".into());
    }
    let (host, port) = if let Some(r) = s.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in \"{}\"", shown(s)))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("junk after ']' in \"{}\"", shown(s)))?,
                ),
            ),
        }
    } else if s.matches(':').count() > 1 {
        // A bare IPv6 address without a port.
        (s, None)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port \"{}\" is not a number from 1 to 65535", shown(p)))?,
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    Ok((host.to_string(), port))
}

fn shown(s: &str) -> String {
    s.chars().take(80).filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let u =
            IscsiUrl::parse("iscsi://alice%s3cret@10.0.0.1:3261/iqn.2026-11.org.example:disk/2")
                .unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(
            u.password.as_ref().map(|p| p.expose()),
            Some(&b"s3cret"[..])
        );
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 3261));
        assert_eq!(u.target, "iqn.2026-11.org.example:disk");
        assert_eq!(u.lun, Some(2));
        assert_eq!(
            u.to_string(),
            "iscsi://alice@10.0.0.1:3261/iqn.2026-11.org.example:disk/2"
        );
    }

    #[test]
    fn ipv6_zone() {
        let u = IscsiUrl::parse("iscsi://[fe80::1%25eth0]:3261/iqn.x:y/1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fe80::1%eth0", 3261));
        assert_eq!(u.portal(), "[fe80::1%eth0]:3261");
        assert_eq!(u.to_string(), "iscsi://[fe80::1%25eth0]:3261/iqn.x:y/1");
        // The bare form people type too.
        let u = IscsiUrl::parse("iscsi://[fe80::1%eth0]/iqn.x:y").unwrap();
        assert_eq!(u.host, "fe80::1%eth0");
    }

    #[test]
    fn minimal_and_ipv6() {
        let u = IscsiUrl::parse("iscsi://10.0.0.1/iqn.x:y").unwrap();
        assert_eq!((u.port, u.lun, u.user), (3260, None, None));
        let u = IscsiUrl::parse("iscsi://[fd00::2]:3262/iqn.x:y/0").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.lun), ("fd00::2", 3262, Some(0)));
        assert_eq!(u.portal(), "[fd00::2]:3262");
        let u = IscsiUrl::parse("iscsi://bob@[fd00::2]/iqn.x:y/").unwrap();
        assert_eq!((u.user.as_deref(), u.lun), (Some("bob"), None));
    }

    #[test]
    fn bad_urls() {
        for bad in [
            "http://x/iqn",
            "iscsi://",
            "iscsi://host",
            "iscsi://host/",
            "iscsi://host:0/iqn",
            "iscsi://host:99999/iqn",
            "iscsi://host/iqn/lun1",
            "iscsi://[fd00::1/iqn",
            "iscsi://@host/iqn",
        ] {
            assert!(IscsiUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("10.0.0.1").unwrap(),
            ("10.0.0.1".into(), 3260)
        );
        assert_eq!(
            split_host_port("10.0.0.1:3000").unwrap(),
            ("10.0.0.1".into(), 3000)
        );
        assert_eq!(
            split_host_port("fd00::1").unwrap(),
            ("fd00::1".into(), 3260)
        );
        assert_eq!(
            split_host_port("[fd00::1]:99").unwrap(),
            ("fd00::1".into(), 99)
        );
    }
}
