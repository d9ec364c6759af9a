//! A CHAP secret: bytes that must never reach a log, an error message, a
//! process title or a world-readable file.
//!
//! `Debug` prints `<hidden>`, there is no `Display`, and the bytes are wiped
//! when the value is dropped. Code that really needs the bytes (the CHAP
//! response, `--show-secrets`) calls [`Secret::expose`], which is easy to grep.

use std::fmt;
use std::ops::Range;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The secret bytes. Every caller is a place a secret can leak: keep
    /// them few.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the wipe is not optimised away as a dead store.
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// The environment variables that may hold a CHAP secret.
pub const SECRET_ENV: [&str; 5] = [
    "SANROOT_CHAP_SECRET",
    "SANROOT_TARGET_CHAP_SECRET",
    "LIBISCSI_CHAP_PASSWORD",
    "SANROOT_DISCOVERY_CHAP_SECRET",
    "SANROOT_DISCOVERY_TARGET_CHAP_SECRET",
];

/// Where, in a NUL-separated environment block, the values of `names`
/// are (`NAME=value`: the value's bytes).
pub fn env_value_ranges(area: &[u8], names: &[&str]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    for entry in area.split(|&b| b == 0) {
        if let Some(eq) = entry.iter().position(|&b| b == b'=')
            && names.iter().any(|n| n.as_bytes() == &entry[..eq])
            && eq + 1 < entry.len()
        {
            out.push(at + eq + 1..at + entry.len());
        }
        at += entry.len() + 1;
    }
    out
}

/// Where, in a NUL-separated argument block, the passwords of
/// `iscsi://user%password@host/…` arguments are.
pub fn url_password_ranges(area: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    for arg in area.split(|&b| b == 0) {
        if let Some(rest) = arg.strip_prefix(b"iscsi://") {
            let auth_end = rest.iter().position(|&b| b == b'@');
            let host_start = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            if let Some(amp) = auth_end.filter(|&a| a < host_start)
                && let Some(pct) = rest[..amp].iter().position(|&b| b == b'%')
                && pct + 1 < amp
            {
                let base = at + "iscsi://".len();
                out.push(base + pct + 1..base + amp);
            }
        }
        at += arg.len() + 1;
    }
    out
}

/// Wipe every secret this process was handed in its environment (the
/// variables of [`SECRET_ENV`]) or argv (an iscsi:// URL's password) where
/// the kernel keeps them, so that /proc/PID/environ and /proc/PID/cmdline
/// show zeros instead, for this process and every process it forks. Read
/// the secrets first. Returns how many values were wiped.
///
/// The values are overwritten in place (through /proc/self/mem, between
/// the bounds /proc/self/stat gives), which `remove_var` does not do: it
/// only drops libc's pointer, and the bytes stay in the block the kernel
/// shows. A wiped variable reads as empty afterwards.
pub fn wipe_from_proc() -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let bounds = proc_areas(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/self/stat: no argument and environment bounds",
        )
    })?;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    let mut wiped = 0;
    for (i, (start, end)) in bounds.into_iter().enumerate() {
        let len = usize::try_from(end.saturating_sub(start)).unwrap_or(0);
        if len == 0 || len > MAX_AREA {
            continue;
        }
        let mut area = vec![0u8; len];
        mem.read_exact_at(&mut area, start)?;
        let ranges = if i == 0 {
            url_password_ranges(&area)
        } else {
            env_value_ranges(&area, &SECRET_ENV)
        };
        for r in &ranges {
            let zeros = vec![0u8; r.len()];
            mem.write_all_at(&zeros, start + r.start as u64)?;
            wiped += 1;
        }
        area.fill(0);
    }
    Ok(wiped)
}

/// The kernel keeps argv and the environment in one block each, at most
/// a few MiB (ARG_MAX).
const MAX_AREA: usize = 32 << 20;

/// (arg_start, arg_end) and (env_start, env_end) from /proc/PID/stat
/// (fields 48 to 51, counted after the parenthesised command name).
fn proc_areas(stat: &str) -> Option<[(u64, u64); 2]> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts with field 3 (state).
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some([(field(48)?, field(49)?), (field(50)?, field(51)?)])
}

/// Keep a process that holds secrets out of core dumps and out of other
/// users' reach: PR_SET_DUMPABLE 0 (no core, /proc/PID owned by root, no
/// ptrace by non-root) and RLIMIT_CORE 0.
pub fn no_core_dumps() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        log::warn!("PR_SET_DUMPABLE 0: {e}");
    }
    if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0) {
        log::warn!("RLIMIT_CORE 0: {e}");
    }
}

/// This process's PR_GET_DUMPABLE (None if the kernel will not say): what
/// [`no_core_dumps`] achieved, as the kernel sees it.
pub fn dumpable() -> Option<bool> {
    nix::sys::prctl::get_dumpable().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_are_found_by_name_only() {
        let area = b"PATH=/bin\0SANROOT_CHAP_SECRET=s3cret-value\0X_SANROOT_CHAP_SECRET=no\0SANROOT_CHAP_SECRET_FILE=/f\0LIBISCSI_CHAP_PASSWORD=pw\0SANROOT_TARGET_CHAP_SECRET=\0";
        let r = env_value_ranges(area, &SECRET_ENV);
        let got: Vec<&[u8]> = r.iter().map(|r| &area[r.clone()]).collect();
        assert_eq!(got, [&b"s3cret-value"[..], b"pw"]);
        let area = b"SANROOT_DISCOVERY_CHAP_SECRET=d1sc\0SANROOT_DISCOVERY_CHAP_SECRET_FILE=/f\0SANROOT_DISCOVERY_CHAP_USER=u\0SANROOT_DISCOVERY_TARGET_CHAP_SECRET=t4rg\0";
        let r = env_value_ranges(area, &SECRET_ENV);
        let got: Vec<&[u8]> = r.iter().map(|r| &area[r.clone()]).collect();
        assert_eq!(got, [&b"d1sc"[..], b"t4rg"]);
    }

    #[test]
    fn url_passwords_are_found_in_arguments() {
        let area = b"sanroot\0attach\0iscsi://alice%pa55word@10.0.0.2/iqn.x:y/1\0iscsi://bob@h/iqn.x%z/0\0iscsi://h/t/0\0";
        let r = url_password_ranges(area);
        let got: Vec<&[u8]> = r.iter().map(|r| &area[r.clone()]).collect();
        assert_eq!(got, [&b"pa55word"[..]]);
    }

    #[test]
    fn stat_bounds_survive_odd_command_names() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let stat = format!("42 (a) (b c) {}\n", fields.join(" "));
        assert_eq!(proc_areas(&stat), Some([(48, 49), (50, 51)]));
        assert_eq!(proc_areas("42 (x) S 1 2"), None);
    }

    #[test]
    fn debug_hides_the_bytes() {
        let s = Secret::from("swordfish-12");
        assert_eq!(format!("{s:?}"), "<hidden>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<hidden>)");
        assert_eq!(s.expose(), b"swordfish-12");
    }
}
