//! The boot target's open-iscsi node records, hidden from the real root.
//!
//! A SAN-booted root carries a node record for its own boot target more
//! often than not: debian-installer, anaconda and any `iscsiadm -m
//! discovery … -l` during installation write one with `node.startup =
//! automatic`. In the real root `iscsiadm -m node --loginall=automatic`
//! (Debian's `open-iscsi.service`, upstream's and Fedora's `iscsi.service`,
//! SUSE's, a sysvinit script, an admin) would then log in to the root LUN a
//! second time: the same disk behind two caches that know nothing of each
//! other.
//!
//! Just before the switch to the real root (dracut's pre-pivot hook, or
//! sanroot's own /init) an empty, read-only tmpfs is mounted over the boot
//! target's directory in every node database open-iscsi may read:
//! `/etc/iscsi/nodes/<IQN>` (open-iscsi before 2.1.9: Debian 12, SUSE)
//! and `/var/lib/iscsi/nodes/<IQN>` (Debian 13's 2.1.11, Fedora, RHEL).
//! Every process of the real root, in every mount namespace made from it,
//! then sees no portal of that target: `--loginall` skips it, `iscsiadm -m
//! node -T <IQN> -l` answers "No records found", and a discovery cannot
//! write a new record for it (read-only). Other targets' records are
//! untouched and log in as before. Nothing is written to the disk: the
//! mounts go with this boot, and `umount` shows the record again.
//!
//! A target directory that does not exist (no record yet) cannot be
//! mounted over without writing to the disk; a second login made after
//! a discovery by hand is then caught by the hand-off's udev rule and by
//! `sanroot status` (see [`super::handoff`]).

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MsFlags, mount};
use nix::sys::stat::fstat;

use super::handoff;
use crate::exit;

/// Where open-iscsi keeps node records, relative to the root: before
/// 2.1.9, and since (and Fedora/RHEL all along).
pub const NODE_DBS: [&str; 2] = ["etc/iscsi/nodes", "var/lib/iscsi/nodes"];

/// The tmpfs's source name, as `findmnt` shows it.
const SOURCE: &str = "sanroot-hidden";

/// The entries of a node database directory that are `target`'s: iSCSI
/// names compare case-insensitively (RFC 3722), and an installer may
/// have written the name as the target spelled it.
pub fn target_entries<'a>(names: impl IntoIterator<Item = &'a str>, target: &str) -> Vec<&'a str> {
    let target = target.trim();
    if target.is_empty() {
        return Vec::new();
    }
    names
        .into_iter()
        .filter(|n| n.eq_ignore_ascii_case(target))
        .collect()
}

/// What [`hide_node_records`] did with one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hidden {
    /// The directory as the real root names it ("/etc/iscsi/nodes/iqn…").
    pub path: String,
    /// `Err` says why it could not be hidden.
    pub result: Result<(), String>,
}

/// Hide `target`'s node records under `sysroot` (the real root, mounted).
/// Paths are resolved inside `sysroot` (an absolute symlink such as
/// /etc/iscsi -> /var/lib/iscsi stays in it), the target directory must be
/// a directory and not a symlink, and a directory reached through both
/// databases is mounted over once.
pub fn hide_node_records(sysroot: &Path, target: &str) -> Vec<Hidden> {
    let root = match open_path(None, sysroot, ResolveFlag::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            return vec![Hidden {
                path: "/".into(),
                result: Err(format!("opening {}: {e}", sysroot.display())),
            }];
        }
    };
    // Every directory is found before any is mounted over: the same one
    // reached through both databases (/etc/iscsi -> /var/lib/iscsi) would
    // otherwise resolve to the new tmpfs the second time.
    let mut seen = HashSet::new();
    let mut found: Vec<(String, Result<OwnedFd, String>)> = Vec::new();
    let mut out = Vec::new();
    for db in NODE_DBS {
        // A database that is not there is the common case (one of the two).
        let Ok(dbfd) = open_path(Some(&root), Path::new(db), ResolveFlag::RESOLVE_IN_ROOT) else {
            continue;
        };
        let names: Vec<String> = match std::fs::read_dir(fd_path(&dbfd)) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) => {
                out.push(Hidden {
                    path: format!("/{db}"),
                    result: Err(format!("listing it: {e}")),
                });
                continue;
            }
        };
        for name in target_entries(names.iter().map(String::as_str), target) {
            let dir = open_target_dir(&dbfd, name);
            if let Ok(fd) = &dir {
                match fstat(fd) {
                    Ok(st) if !seen.insert((st.st_dev, st.st_ino)) => continue,
                    _ => {}
                }
            }
            found.push((format!("/{db}/{name}"), dir));
        }
    }
    for (path, dir) in found {
        let result = dir.and_then(|fd| {
            mount(
                Some(SOURCE),
                fd_path(&fd).as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0755,size=4k,nr_inodes=16"),
            )
            .map_err(|e| format!("mounting an empty tmpfs over it: {e}"))
        });
        out.push(Hidden { path, result });
    }
    out
}

/// The target's directory in a database: a directory of its own, not a
/// symlink to one (which could lead anywhere).
fn open_target_dir(dbfd: &OwnedFd, name: &str) -> Result<OwnedFd, String> {
    open_path(
        Some(dbfd),
        Path::new(name),
        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
    )
    .map_err(|e| format!("not a directory of its own ({e})"))
}

/// An O_PATH descriptor of the directory `p` (relative to `dir`, or as is).
fn open_path(dir: Option<&OwnedFd>, p: &Path, resolve: ResolveFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(resolve | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match dir {
        Some(d) => openat2(d, p, how),
        None => openat2(nix::fcntl::AT_FDCWD, p, how),
    }
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `sanroot boot --pre-pivot SYSROOT`: the real root is mounted at
/// `sysroot`; write back any hand-off file removed since `sanroot boot`,
/// hide the boot target's node records there and note them in the
/// hand-off record. Exit 0 when there is nothing to do (this boot was
/// not sanroot's) or everything found was hidden; 1 when a record could
/// not be hidden (the boot goes on: the log says what to do).
pub fn pre_pivot(sysroot: &Path) -> i32 {
    let run = super::handoff_root();
    let Some(mut rec) = handoff::read(&run) else {
        log::info!("pre-pivot: no sanroot hand-off record: this boot is not sanroot's");
        return exit::OK;
    };
    restore_hand_off(&run, &rec);
    let hidden = hide_node_records(sysroot, &rec.target);
    let ok = report(&hidden, &rec.target);
    rec.hidden_node_records = hidden
        .iter()
        .filter(|h| h.result.is_ok())
        .map(|h| h.path.clone())
        .collect();
    if let Err(e) = handoff::write_record(&run, &rec) {
        log::warn!("pre-pivot: updating the hand-off record: {e}");
    }
    if ok { exit::OK } else { exit::FAILURE }
}

/// Put back the hand-off files another initramfs script removed since
/// `sanroot boot` wrote them (initramfs-tools runs open-iscsi's
/// local-bottom script before ours). A failure is logged: the root boots.
fn restore_hand_off(run: &Path, rec: &handoff::BootRecord) {
    match handoff::restore_missing(run, rec) {
        Ok(paths) => {
            for p in paths {
                log::warn!(
                    "pre-pivot: {} was removed after sanroot boot wrote it (by another initramfs script); written again",
                    p.display()
                );
            }
        }
        Err(e) => log::warn!("pre-pivot: restoring the hand-off files: {e}"),
    }
}

/// Log what [`hide_node_records`] did; false when something failed.
pub fn report(hidden: &[Hidden], target: &str) -> bool {
    let mut ok = true;
    for h in hidden {
        match &h.result {
            Ok(()) => log::warn!(
                "open-iscsi's node records of the boot target {target} in {} are hidden for this boot (an empty read-only tmpfs over them): open-iscsi cannot log in to it a second time",
                h.path
            ),
            Err(e) => {
                ok = false;
                log::error!(
                    "cannot hide open-iscsi's node records in {}: {e}; open-iscsi may log in to the boot target {target} again: set node.startup = manual in them",
                    h.path
                );
            }
        }
    }
    if hidden.is_empty() {
        log::info!("pre-pivot: the real root has no open-iscsi node record of {target}");
    }
    ok
}

/// The kernel initiator's sessions to `target` (`session3`, …) under
/// `sys` (normally /sys): a second login to the boot target that the
/// hidden records did not prevent (a discovery typed by hand).
pub fn kernel_sessions_to(sys: &Path, target: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(sys.join("class/iscsi_session")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("targetname")).is_ok_and(|n| {
                !target.trim().is_empty() && n.trim().eq_ignore_ascii_case(target.trim())
            })
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_case_insensitively_and_only_whole_names() {
        let names = [
            "iqn.2026-11.org.sanroot:root",
            "IQN.2026-11.ORG.SANROOT:ROOT",
            "iqn.2026-11.org.sanroot:root2",
            "iqn.2026-11.org.sanroot:data",
        ];
        assert_eq!(
            target_entries(names, "iqn.2026-11.org.sanroot:root"),
            vec![
                "iqn.2026-11.org.sanroot:root",
                "IQN.2026-11.ORG.SANROOT:ROOT"
            ]
        );
        assert!(target_entries(names, "").is_empty());
        assert!(target_entries(names, "iqn.2026-11.org.sanroot").is_empty());
    }

    #[test]
    fn no_sysroot_is_one_error_not_a_panic() {
        let h = hide_node_records(Path::new("/nonexistent/sanroot-sysroot"), "iqn.x:y");
        assert_eq!(h.len(), 1);
        assert!(h[0].result.is_err());
    }

    #[test]
    fn kernel_sessions_of_the_boot_target() {
        let d = std::env::temp_dir().join(format!("sanroot-hide-sys-{}", std::process::id()));
        for (s, t) in [
            ("session1", "iqn.x:data"),
            ("session2", "IQN.X:ROOT"),
            ("session3", "iqn.x:root\n"),
        ] {
            std::fs::create_dir_all(d.join("class/iscsi_session").join(s)).unwrap();
            std::fs::write(d.join("class/iscsi_session").join(s).join("targetname"), t).unwrap();
        }
        assert_eq!(
            kernel_sessions_to(&d, "iqn.x:root"),
            vec!["session2", "session3"]
        );
        assert!(kernel_sessions_to(&d, "").is_empty());
        assert!(kernel_sessions_to(Path::new("/nonexistent"), "iqn.x:root").is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn nothing_to_hide_without_databases() {
        let d = std::env::temp_dir().join(format!("sanroot-hide-{}", std::process::id()));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        assert!(hide_node_records(&d, "iqn.x:y").is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}
