//! Will power-off log the root's session out? (`sanroot status`)
//!
//! The root's session can only be logged out once the root is unmounted,
//! so power-off must come back to an initramfs: systemd-shutdown pivots
//! into /run/initramfs and runs /run/initramfs/shutdown when it is there
//! and executable. Who puts it there:
//! - sanroot's own /init and the initramfs-tools scripts: a copy of sanroot,
//!   at boot;
//! - dracut: `dracut-shutdown.service` unpacks an initramfs into
//!   /run/initramfs at power-off, when the boot asked for it (`need_shutdown`
//!   leaves /run/initramfs/.need_shutdown), and only an image with the name
//!   its restore script looks for: `/boot/initrd.img-KVER` on Debian,
//!   `/boot/initramfs-KVER.img` elsewhere, `/lib/modules/KVER/initrd`, or
//!   the boot loader entries' `/boot/MACHINE-ID/KVER/initrd`; dracut-ng
//!   (Debian 13) then takes the first `/boot/initr*KVER*` in glob order,
//!   whichever initramfs that is. An image under any other name boots fine
//!   and then powers off without the logout, and nothing else says so
//!   (dracut/90sanroot warns when it builds one).
//!
//! [`judge`] is the rule, a pure function of [`Facts`]; [`facts`] reads them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What decides it, read from the running system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// /run/initramfs/shutdown: None when absent, else whether executable.
    pub shutdown_program: Option<bool>,
    /// /run is mounted noexec.
    pub run_noexec: bool,
    /// /run/initramfs/.need_shutdown (dracut's request).
    pub need_shutdown: bool,
    /// The images dracut's restore would look for, in its order, each with
    /// whether it exists.
    pub restore_images: Vec<(PathBuf, bool)>,
}

/// The verdict, for `status` (JSON key `poweroff`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerOff {
    /// Power-off comes back to an initramfs that logs the session out.
    pub logout: bool,
    /// How, or why not and what to do.
    pub how: String,
}

/// The rule.
pub fn judge(f: &Facts) -> PowerOff {
    let no = |how: String| PowerOff { logout: false, how };
    let noexec = "/run is mounted noexec, so systemd-shutdown will not run /run/initramfs/shutdown: remount it exec (mount -o remount,exec /run)";
    if let Some(exec) = f.shutdown_program {
        return if !exec {
            no("/run/initramfs/shutdown is not executable: systemd-shutdown will skip it".into())
        } else if f.run_noexec {
            no(noexec.into())
        } else {
            PowerOff {
                logout: true,
                how: "power-off returns to /run/initramfs/shutdown".into(),
            }
        };
    }
    if !f.need_shutdown {
        return no("nothing brings power-off back to an initramfs (no /run/initramfs/shutdown, and dracut's need_shutdown was not asked for): the root's session will not be logged out".into());
    }
    match f.restore_images.iter().find(|(_, exists)| *exists) {
        Some(_) if f.run_noexec => no(noexec.into()),
        Some((img, _)) => PowerOff {
            logout: true,
            how: format!(
                "dracut-shutdown unpacks {} into /run/initramfs at power-off",
                img.display()
            ),
        },
        None => no(format!(
            "dracut-shutdown finds no initramfs to unpack at power-off (it looks for {}): the root's session will not be logged out; build the initramfs under the distribution's name",
            f.restore_images
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The images dracut-initramfs-restore looks for, for kernel `kver`: the
/// boot loader entries' (with the machine id), the kernel package's, then
/// the distribution's name (Debian's dracut looks for `initrd.img-KVER`,
/// upstream's for `initramfs-KVER.img`).
pub fn restore_candidates(kver: &str, machine_id: Option<&str>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(id) = machine_id.filter(|s| !s.is_empty()) {
        for dir in ["/efi", "/boot", "/boot/efi"] {
            v.push(PathBuf::from(format!("{dir}/{id}/{kver}/initrd")));
        }
    }
    v.push(PathBuf::from(format!("/lib/modules/{kver}/initrd")));
    v.push(PathBuf::from(format!("/boot/initrd.img-{kver}")));
    v.push(PathBuf::from(format!("/boot/initramfs-{kver}.img")));
    v
}

/// The first name in `boot` (sorted as the shell's glob sorts in the C
/// locale) matching `initr*KVER*`: what dracut-ng unpacks when none of the
/// names above exists (it may be another initramfs than dracut's).
fn first_initr_glob(boot: &Path, kver: &str) -> Option<String> {
    if kver.is_empty() {
        return None;
    }
    let mut names: Vec<String> = std::fs::read_dir(boot)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("initr") && n["initr".len()..].contains(kver))
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The facts of this system, under `root` ("/" but for tests).
pub fn facts(root: &Path) -> Facts {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let shutdown_program = std::fs::metadata(at("/run/initramfs/shutdown"))
        .ok()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let run_noexec = nix::sys::statvfs::statvfs(&at("/run"))
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC))
        .unwrap_or(false);
    let kver = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let machine_id = std::fs::read_to_string(at("/etc/machine-id")).ok();
    let mut restore_images: Vec<(PathBuf, bool)> =
        restore_candidates(&kver, machine_id.as_deref().map(str::trim))
            .into_iter()
            .map(|p| {
                let exists = at(&p.to_string_lossy()).is_file();
                (p, exists)
            })
            .collect();
    // dracut-ng's last resort: the first /boot/initr*KVER* in glob order.
    if let Some(p) = first_initr_glob(&at("/boot"), &kver) {
        restore_images.push((Path::new("/boot").join(p), true));
    }
    Facts {
        shutdown_program,
        run_noexec,
        need_shutdown: at("/run/initramfs/.need_shutdown").exists(),
        restore_images,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(exists: &[bool]) -> Vec<(PathBuf, bool)> {
        restore_candidates("6.12.1", None)
            .into_iter()
            .zip(exists.iter().copied())
            .collect()
    }

    #[test]
    fn sanroots_own_shutdown_program() {
        let f = Facts {
            shutdown_program: Some(true),
            ..Facts::default()
        };
        assert!(judge(&f).logout);
        let f = Facts {
            run_noexec: true,
            ..f
        };
        let v = judge(&f);
        assert!(!v.logout && v.how.contains("noexec"), "{v:?}");
        let v = judge(&Facts {
            shutdown_program: Some(false),
            ..Facts::default()
        });
        assert!(!v.logout && v.how.contains("not executable"), "{v:?}");
    }

    #[test]
    fn dracut_restores_only_the_distributions_name() {
        let f = Facts {
            need_shutdown: true,
            restore_images: images(&[false, true, false]),
            ..Facts::default()
        };
        let v = judge(&f);
        assert!(
            v.logout && v.how.contains("/boot/initrd.img-6.12.1"),
            "{v:?}"
        );
        let v = judge(&Facts {
            restore_images: images(&[false, false, false]),
            ..f.clone()
        });
        assert!(!v.logout, "{v:?}");
        for name in [
            "/boot/initrd.img-6.12.1",
            "/boot/initramfs-6.12.1.img",
            "/lib/modules/6.12.1/initrd",
        ] {
            assert!(v.how.contains(name), "{name}: {v:?}");
        }
        let v = judge(&Facts {
            run_noexec: true,
            ..f
        });
        assert!(!v.logout && v.how.contains("noexec"), "{v:?}");
    }

    #[test]
    fn nothing_asked_for() {
        let v = judge(&Facts::default());
        assert!(!v.logout && v.how.contains("not be logged out"), "{v:?}");
    }

    #[test]
    fn boot_loader_entries_first() {
        let c = restore_candidates("6.1", Some("abc"));
        assert_eq!(c[0], PathBuf::from("/efi/abc/6.1/initrd"));
        assert_eq!(c[2], PathBuf::from("/boot/efi/abc/6.1/initrd"));
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn dracut_ngs_glob() {
        let d = std::env::temp_dir().join(format!("sanroot-glob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(first_initr_glob(&d, "6.12.1"), None);
        for n in [
            "vmlinuz-6.12.1",
            "initrd.img-6.12.1",
            "initrd-itools.img-6.12.1",
            "initrd.img-6.1",
        ] {
            std::fs::write(d.join(n), "").unwrap();
        }
        // '-' sorts before '.': the initramfs-tools image would come back.
        assert_eq!(
            first_initr_glob(&d, "6.12.1").as_deref(),
            Some("initrd-itools.img-6.12.1")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn facts_of_a_tree() {
        let d = std::env::temp_dir().join(format!("sanroot-poweroff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("run/initramfs")).unwrap();
        std::fs::write(d.join("run/initramfs/.need_shutdown"), "").unwrap();
        std::fs::write(d.join("run/initramfs/shutdown"), "").unwrap();
        let f = facts(&d);
        assert!(f.need_shutdown);
        assert_eq!(f.shutdown_program, Some(false));
        assert!(f.restore_images.iter().all(|(_, e)| !e));
        let _ = std::fs::remove_dir_all(&d);
    }
}
