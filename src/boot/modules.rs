//! Kernel modules for the minimal initramfs, without modprobe: the image's
//! generator (initramfs/sanroot-mkinitramfs) resolves dependencies with the
//! build host's modprobe and writes the files to load, in order, to
//! `/lib/modules/<release>/sanroot.modules`; /init loads them with
//! finit_module(2), passing the `module.param=value` options of the kernel
//! command line the way modprobe does.
//!
//! Parsing ([`parse_list`], [`module_name`], [`params_for`]) is pure; only
//! [`load_list`] touches the kernel.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// The list's name under `/lib/modules/<release>/`.
pub const LIST: &str = "sanroot.modules";

/// finit_module(2): the file is compressed; the kernel decompresses it
/// (CONFIG_MODULE_DECOMPRESS).
const MODULE_INIT_COMPRESSED_FILE: nix::libc::c_uint = 4;

/// The module files a list names: one path per line, relative to the
/// list's directory; blank lines and `#` comments are skipped. Paths that
/// climb out of the directory are refused.
pub fn parse_list(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with('/') || l.split('/').any(|c| c == "..") {
            return Err(format!(
                "line {}: \"{l}\" is not a path inside the modules directory",
                n + 1
            ));
        }
        if !out.iter().any(|o: &String| o == l) {
            out.push(l.to_string());
        }
    }
    Ok(out)
}

/// The module's name as the kernel knows it: the file name without
/// `.ko[.xz|.zst|.gz]`, with '-' written '_'.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// Whether the kernel must decompress the file.
fn compressed(path: &str) -> bool {
    [".xz", ".zst", ".gz"].iter().any(|s| path.ends_with(s))
}

/// The parameters the command line gives module `name`
/// (`name.key=value`, '-' and '_' alike in the module name), as
/// finit_module wants them: "key=value key2=value2".
pub fn params_for(name: &str, args: &[(&str, Option<&str>)]) -> String {
    let norm = |s: &str| s.replace('-', "_");
    let want = norm(name);
    let mut out: Vec<String> = Vec::new();
    for (key, val) in args {
        let Some((module, param)) = key.split_once('.') else {
            continue;
        };
        if norm(module) != want || param.is_empty() {
            continue;
        }
        out.push(match val {
            // Values with spaces were quoted on the command line; keep them
            // quoted for the kernel's own parser.
            Some(v) if v.contains(char::is_whitespace) => format!("{param}=\"{v}\""),
            Some(v) => format!("{param}={v}"),
            None => param.to_string(),
        });
    }
    out.join(" ")
}

/// What loading a list did.
#[derive(Debug, Default)]
pub struct Loaded {
    pub loaded: Vec<String>,
    /// Built in or loaded before (EEXIST).
    pub present: Vec<String>,
    /// Refused for want of their hardware (ENODEV).
    pub absent: Vec<String>,
    /// Name and why, for the log.
    pub failed: Vec<(String, String)>,
}

/// Load every module of the list at `dir/LIST`, in order. Missing list:
/// nothing to do. Failures are collected, not fatal: a driver for a NIC
/// this machine does not have may refuse to load, and whatever is really
/// missing shows up later as the NIC or the disk not appearing.
pub fn load_list(dir: &Path, cmdline: &str) -> Result<Loaded, String> {
    let list_path = dir.join(LIST);
    let text = match std::fs::read_to_string(&list_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(format!("reading {}: {e}", list_path.display())),
    };
    let files = parse_list(&text).map_err(|e| format!("{}: {e}", list_path.display()))?;
    let args = crate::kcmdline::split_args(cmdline);
    let mut out = Loaded::default();
    let start = Instant::now();
    for f in &files {
        let name = module_name(f);
        let params = params_for(&name, &args);
        match finit(&dir.join(f), &params, compressed(f)) {
            Ok(()) => out.loaded.push(name),
            Err(nix::errno::Errno::EEXIST) => out.present.push(name),
            // A driver for hardware this machine lacks (crc32c-intel on a
            // CPU without SSE4.2): expected in an image made for several.
            Err(nix::errno::Errno::ENODEV) => out.absent.push(name),
            Err(e) => out.failed.push((name, e.desc().to_string())),
        }
    }
    log::info!(
        "modules: {} loaded, {} already there, {} without their hardware{}, {} failed in {:.2} s",
        out.loaded.len(),
        out.present.len(),
        out.absent.len(),
        if out.absent.is_empty() {
            String::new()
        } else {
            format!(" ({})", out.absent.join(" "))
        },
        out.failed.len(),
        start.elapsed().as_secs_f64()
    );
    for (name, why) in &out.failed {
        log::warn!("modules: {name}: {why}");
    }
    Ok(out)
}

fn finit(path: &PathBuf, params: &str, compressed: bool) -> Result<(), nix::errno::Errno> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))?;
    let params = std::ffi::CString::new(params).map_err(|_| nix::errno::Errno::EINVAL)?;
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: finit_module(fd, params, flags) with an open descriptor and
    // a NUL-terminated string that outlive the call.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines() {
        let l = parse_list(
            "# deps first\nkernel/lib/crc16.ko\n\n kernel/fs/ext4/ext4.ko \nkernel/lib/crc16.ko\n",
        )
        .unwrap();
        assert_eq!(l, vec!["kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko"]);
        assert!(parse_list("/etc/shadow").unwrap_err().contains("line 1"));
        assert!(
            parse_list("a\nkernel/../../x.ko")
                .unwrap_err()
                .contains("line 2")
        );
    }

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/drivers/block/ublk_drv.ko.xz"),
            "ublk_drv"
        );
        assert_eq!(
            module_name("kernel/crypto/crc32c-generic.ko"),
            "crc32c_generic"
        );
        assert_eq!(module_name("nbd.ko.zst"), "nbd");
        assert!(compressed("a.ko.xz") && !compressed("a.ko"));
    }

    #[test]
    fn params_from_the_command_line() {
        let args = crate::kcmdline::split_args(
            "root=UUID=x virtio_net.napi_tx=1 virtio-net.csum=0 nbd.nbds_max=0 e1000.x ext4.foo=\"a b\"",
        );
        assert_eq!(params_for("virtio_net", &args), "napi_tx=1 csum=0");
        assert_eq!(params_for("nbd", &args), "nbds_max=0");
        assert_eq!(params_for("e1000", &args), "x");
        assert_eq!(params_for("ext4", &args), "foo=\"a b\"");
        assert_eq!(params_for("ublk_drv", &args), "");
    }

    #[test]
    fn a_missing_list_loads_nothing() {
        let d = std::env::temp_dir().join(format!("sr-modlist-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        let l = load_list(&d, "").unwrap();
        assert!(l.loaded.is_empty() && l.failed.is_empty());
        // Unprivileged or not: a file that is no module never loads.
        std::fs::write(d.join(LIST), "junk.ko\n").unwrap();
        std::fs::write(d.join("junk.ko"), b"not an ELF").unwrap();
        let l = load_list(&d, "").unwrap();
        assert_eq!(l.failed.len(), 1, "{l:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
