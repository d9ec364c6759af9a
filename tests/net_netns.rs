//! `sanroot::net` against the real kernel, in network namespaces of our own.
//!
//! Each test makes two fresh namespaces: "host" (where the library runs, on
//! a thread moved there with setns) and "net" (the other end of a veth
//! pair, standing for the network). Both are deleted when the test ends,
//! pass or fail. Nothing is sent anywhere but between the two.
//!
//! Needs root and `ip netns`: without them every test fails with a message
//! saying so (never a silent skip). A kernel without 802.1Q (8021q, as on
//! the microVM CI runs on) cannot create the VLAN `vlan_subinterface`
//! checks: that test then checks sanroot's error for it on the host and runs
//! itself again in a QEMU guest with Debian's 6.12 kernel
//! (`qemu/net-guest`: needs `sudo qemu/install-deps`); a guest that does
//! not boot is a failure. Where a VLAN check ran is printed with the
//! kernel's release.

use std::fs::File;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use serde_json::Value;

use sanroot::net::{self, NicConfig, RtnlSocket};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const MAC: &str = "52:54:00:5a:00:01";

fn preflight() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/net_netns.rs must run as root: it creates network namespaces and veth pairs \
         (run `sudo cargo test --test net_netns`)"
    );
    let out = Command::new("ip").args(["netns", "list"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`ip netns list` failed ({}): {}; tests/net_netns.rs needs iproute2 with netns support",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run `ip` ({e}): install iproute2 for tests/net_netns.rs"),
    }
}

/// Run a command; panic with its output if it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair: "eth0" (with `mac`) in `host`,
/// "peer0" in `net`.
struct Lab {
    host: String,
    net: String,
}

impl Lab {
    fn new(mac: &str, peer_up: bool) -> Lab {
        preflight();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("sanroot-t{}-{n}", std::process::id());
        let lab = Lab {
            host: format!("{base}-host"),
            net: format!("{base}-net"),
        };
        run(&["ip", "netns", "add", &lab.host]);
        run(&["ip", "netns", "add", &lab.net]);
        run(&[
            "ip", "-n", &lab.host, "link", "add", "eth0", "address", mac, "type", "veth", "peer",
            "name", "peer0", "netns", &lab.net,
        ]);
        if peer_up {
            run(&["ip", "-n", &lab.net, "link", "set", "peer0", "up"]);
        }
        lab
    }

    /// Run `f` on a thread inside the host namespace.
    fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.host);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                setns(&fd, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `ip -j ARGS` in the host namespace, parsed.
    fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["ip", "netns", "exec", &self.host, "ip", "-j"];
        a.extend_from_slice(args);
        let out = run(&a);
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(v)) => v,
            other => panic!("`ip -j {}` gave {other:?}: {out}", args.join(" ")),
        }
    }

    /// (address, prefix) of `dev` in one family ("-4"/"-6"), global scope.
    fn addrs(&self, fam: &str, dev: &str) -> Vec<(String, u64)> {
        self.ip_json(&[fam, "addr", "show", "dev", dev])
            .iter()
            .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["scope"] == "global")
            .map(|a| {
                (
                    a["local"].as_str().unwrap_or("").to_string(),
                    a["prefixlen"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    fn routes(&self, fam: &str) -> Vec<Value> {
        // -d: iproute2 hides "proto boot" otherwise.
        self.ip_json(&["-d", fam, "route", "show", "table", "main"])
    }

    fn apply(&self, cfg: &NicConfig) -> Result<net::Applied, net::NetError> {
        self.in_host(|| net::apply(cfg))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.host, &self.net] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn mac() -> [u8; 6] {
    net::parse_mac(MAC).expect("test MAC")
}

/// The route to `dst` ("default" or an address) in `routes`, if any.
fn route<'a>(routes: &'a [Value], dst: &str) -> Vec<&'a Value> {
    routes.iter().filter(|r| r["dst"] == dst).collect()
}

fn v4_config() -> NicConfig {
    NicConfig {
        addr: Some((ip("192.0.2.15"), 24)),
        gateway: Some(ip("192.0.2.1")),
        dns: vec![ip("192.0.2.53")],
        target: Some(ip("198.51.100.20")),
        carrier_timeout: Duration::from_secs(10),
        ..NicConfig::new(mac())
    }
}

#[test]
fn ipv4_address_routes_and_idempotence() {
    let lab = Lab::new(MAC, true);
    let cfg = v4_config();
    let t = Instant::now();
    let a = lab
        .apply(&cfg)
        .unwrap_or_else(|e| panic!("first apply: {e}"));
    eprintln!("ipv4 apply: {:?}\n  {}", t.elapsed(), a.log.join("\n  "));
    assert_eq!(a.ifname, "eth0");
    assert!(a.ifindex > 0);
    assert_eq!(a.parent, None);

    let check = || {
        assert_eq!(
            lab.addrs("-4", "eth0"),
            vec![("192.0.2.15".to_string(), 24)]
        );
        let routes = lab.routes("-4");
        let d = route(&routes, "default");
        assert_eq!(d.len(), 1, "{routes:?}");
        assert_eq!(d[0]["gateway"], "192.0.2.1");
        assert_eq!(d[0]["dev"], "eth0");
        assert_eq!(d[0]["protocol"], "boot");
        let h = route(&routes, "198.51.100.20");
        assert_eq!(h.len(), 1, "{routes:?}");
        assert_eq!(h[0]["gateway"], "192.0.2.1");
        assert_eq!(h[0]["dev"], "eth0");
        routes.len()
    };
    let n_routes = check();

    // Again: nothing fails, nothing is duplicated.
    let t = Instant::now();
    let b = lab
        .apply(&cfg)
        .unwrap_or_else(|e| panic!("second apply: {e}"));
    eprintln!("ipv4 re-apply: {:?}", t.elapsed());
    assert_eq!((b.ifname.as_str(), b.ifindex), ("eth0", a.ifindex));
    assert!(b.log.iter().any(|l| l.contains("has carrier")));
    assert_eq!(check(), n_routes);

    // The link list sees it up with carrier; the plan now says so.
    let links = lab.in_host(|| RtnlSocket::open().and_then(|mut s| s.links()));
    let links = links.unwrap_or_else(|e| panic!("listing links: {e}"));
    let eth0 = links
        .iter()
        .find(|l| l.name == "eth0")
        .expect("eth0 listed");
    assert!(eth0.is_up() && eth0.has_carrier(), "{eth0:?}");
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    let plan = net::plan(&cfg, &links).unwrap_or_else(|e| panic!("plan: {e}"));
    assert_eq!(plan[1], "set eth0 up (already up)");
}

#[test]
fn ipv4_on_link_target_gets_a_direct_route() {
    let lab = Lab::new(MAC, true);
    let cfg = NicConfig {
        target: Some(ip("192.0.2.7")),
        ..v4_config()
    };
    lab.apply(&cfg).unwrap_or_else(|e| panic!("apply: {e}"));
    let routes = lab.routes("-4");
    let h = route(&routes, "192.0.2.7");
    assert_eq!(h.len(), 1, "{routes:?}");
    assert_eq!(h[0]["dev"], "eth0");
    assert!(h[0].get("gateway").is_none(), "{routes:?}");
    assert_eq!(h[0]["scope"], "link");
}

#[test]
fn plan_against_real_links_changes_nothing() {
    let lab = Lab::new(MAC, true);
    let cfg = v4_config();
    let (links, plan) = lab.in_host(|| {
        let links = RtnlSocket::open()
            .and_then(|mut s| s.links())
            .unwrap_or_else(|e| panic!("listing links: {e}"));
        let plan = net::plan(&cfg, &links).unwrap_or_else(|e| panic!("plan: {e}"));
        (links, plan)
    });
    let eth0 = links.iter().find(|l| l.name == "eth0").expect("eth0");
    assert!(!eth0.is_up() && !eth0.has_carrier(), "{eth0:?}");
    assert_eq!(
        plan[0],
        format!("use eth0 (ifindex {}), the link with MAC {MAC}", eth0.index)
    );
    assert_eq!(plan[1], "set eth0 up");
    assert_eq!(plan.len(), 6, "{plan:?}");
    // A dry run: still down, no address.
    assert!(lab.addrs("-4", "eth0").is_empty());
    assert!(route(&lab.routes("-4"), "default").is_empty());
}

#[test]
fn vlan_subinterface() {
    let lab = Lab::new(MAC, true);
    let cfg = NicConfig {
        vlan: 42,
        ..v4_config()
    };
    // Does this kernel do 802.1Q at all? (The microVM kernel CI runs on
    // has no 8021q.) Asked with iproute2, independently of the code under
    // test.
    let probe = Command::new("ip")
        .args([
            "-n", &lab.host, "link", "add", "link", "eth0", "name", "probe.9", "type", "vlan",
            "id", "9",
        ])
        .output()
        .expect("running ip");
    if probe.status.success() {
        run(&["ip", "-n", &lab.host, "link", "del", "probe.9"]);
        check_vlan(&lab, &cfg);
        return;
    }
    let reason = String::from_utf8_lossy(&probe.stderr).trim().to_string();
    assert!(
        !in_guest(),
        "the QEMU guest's kernel {} cannot create a VLAN either ({reason}): \
         are 8021q and its dependencies in qemu/net-guest's initramfs?",
        kernel_release()
    );
    // This kernel cannot: sanroot's error for it must name the step, the
    // interface and the kernel's reason...
    let e = lab.apply(&cfg).expect_err("no 8021q: apply must fail");
    assert_eq!(e.step, "creating VLAN 42 on eth0");
    assert_eq!(e.ifname.as_deref(), Some("eth0.42"));
    assert_eq!(e.errno, Some(nix::errno::Errno::EOPNOTSUPP), "{e}");
    assert!(e.to_string().contains("8021q"), "{e}");
    drop(lab);
    // ...and the VLAN itself is checked in a kernel that has 8021q: this
    // test, run again in a QEMU guest. Never a pass without a VLAN made.
    announce(&format!(
        "vlan_subinterface: this host's kernel {} cannot create VLANs ({reason}); \
         sanroot's error for it checked: {e}; now the VLAN itself in a QEMU guest",
        kernel_release()
    ));
    let out = run_in_guest("vlan_subinterface");
    assert!(
        out.contains(&format!("{VLAN_DONE} {}", out.kernel)),
        "the guest's test passed without saying it made the VLAN:\n{}",
        out.section
    );
}

/// What `check_vlan` prints (with the kernel release) once the VLAN is
/// made and checked.
const VLAN_DONE: &str = "vlan_subinterface: VLAN 42 created and checked on kernel";

/// The VLAN case proper, on a kernel that has 8021q.
fn check_vlan(lab: &Lab, cfg: &NicConfig) {
    let a = lab.apply(cfg).unwrap_or_else(|e| panic!("apply: {e}"));
    eprintln!("vlan apply:\n  {}", a.log.join("\n  "));
    assert_eq!(a.ifname, "eth0.42");
    assert_eq!(a.parent.as_deref(), Some("eth0"));
    let details = lab.ip_json(&["-d", "link", "show", "dev", "eth0.42"]);
    assert_eq!(details[0]["linkinfo"]["info_kind"], "vlan", "{details:?}");
    assert_eq!(details[0]["linkinfo"]["info_data"]["id"], 42);
    assert_eq!(details[0]["link"], "eth0");
    assert_eq!(lab.addrs("-4", "eth0.42"), vec![("192.0.2.15".into(), 24)]);
    assert!(lab.addrs("-4", "eth0").is_empty());
    let routes = lab.routes("-4");
    assert_eq!(route(&routes, "default")[0]["dev"], "eth0.42");
    assert_eq!(route(&routes, "198.51.100.20")[0]["dev"], "eth0.42");

    // Again: the VLAN is reused, not duplicated.
    let b = lab.apply(cfg).unwrap_or_else(|e| panic!("re-apply: {e}"));
    assert_eq!((b.ifname.as_str(), b.ifindex), ("eth0.42", a.ifindex));
    assert!(
        b.log
            .iter()
            .any(|l| l.contains("reuse the existing VLAN 42")),
        "{:?}",
        b.log
    );
    let vlans = lab
        .ip_json(&["-d", "link", "show"])
        .into_iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "vlan")
        .count();
    assert_eq!(vlans, 1);
    announce(&format!(
        "{VLAN_DONE} {} ({})",
        kernel_release(),
        if in_guest() {
            "QEMU guest"
        } else {
            "this host"
        }
    ));
}

// ---- tests the host's kernel cannot run: in a QEMU guest -------------------------

/// Set by qemu/guest-init/net-init for the tests it runs in the guest.
const IN_GUEST_ENV: &str = "SANROOT_NET_GUEST";

fn in_guest() -> bool {
    std::env::var_os(IN_GUEST_ENV).is_some()
}

/// The running kernel's release (`uname -r`).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("(unknown: {e})"))
}

/// A line for the test log even when the test passes: straight to the
/// process's stderr, past libtest's output capture (which only takes
/// `print!`/`eprintln!`), so that CI's log says where a check really ran.
fn announce(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// What one test printed in the guest.
struct GuestRun {
    /// The guest kernel's release.
    kernel: String,
    /// The test's output in the guest.
    section: String,
}

impl GuestRun {
    fn contains(&self, s: &str) -> bool {
        self.section.contains(s)
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Text between "===SANROOT-BEGIN name===" and "===SANROOT-END name===".
fn section<'a>(log: &'a str, name: &str) -> Option<&'a str> {
    let begin = format!("===SANROOT-BEGIN {name}===\n");
    let end = format!("===SANROOT-END {name}===");
    let i = log.find(&begin)? + begin.len();
    let j = log[i..].find(&end)? + i;
    Some(&log[i..j])
}

/// Run `test` of this very binary in a QEMU guest with Debian's 6.12
/// kernel and 8021q/veth (qemu/net-guest: one boot, a few seconds to a
/// couple of minutes under TCG); panic unless it ran and passed there. A
/// guest that cannot be booted is a failure, never a skip.
fn run_in_guest(test: &str) -> GuestRun {
    let exe = std::env::current_exe().expect("the test binary's path");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu/net-guest");
    let t = Instant::now();
    let out = Command::new(&script)
        .arg(&exe)
        .arg(test)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let took = t.elapsed();
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let dump = || {
        format!(
            "\n--- guest serial log, last lines ---\n{}\n--- qemu/net-guest stderr, last lines ---\n{}\n---\n\
             (the guest needs qemu-system-x86, linux-image-6.12-amd64, busybox-static, cpio and \
             xz-utils: `sudo qemu/install-deps`)",
            tail(&log, 80),
            tail(&err, 30)
        )
    };
    assert!(
        out.status.success(),
        "{test}: the QEMU guest did not run to its end (qemu/net-guest {}, after {took:.0?}){}",
        out.status,
        dump()
    );
    let kernel = log
        .lines()
        .find_map(|l| l.strip_prefix("===NET-GUEST-KERNEL ")?.strip_suffix("==="))
        .unwrap_or_else(|| panic!("{test}: no kernel line in the guest's log{}", dump()))
        .to_string();
    let rc_line = format!("===SANROOT-RC {test}=");
    let rc = log
        .lines()
        .find_map(|l| l.strip_prefix(&rc_line)?.strip_suffix("==="));
    let section_text = section(&log, test).unwrap_or("").to_string();
    assert_eq!(
        rc,
        Some("0"),
        "{test} failed in the QEMU guest (kernel {kernel}):\n{section_text}{}",
        dump()
    );
    assert!(
        section_text.contains("test result: ok. 1 passed;"),
        "{test} did not run in the QEMU guest (kernel {kernel}):\n{section_text}{}",
        dump()
    );
    let left = section(&log, "netns-left").unwrap_or("(missing)");
    assert!(
        left.trim().is_empty(),
        "{test} left network namespaces behind in the guest: {left}"
    );
    announce(&format!(
        "{test}: ran and passed in a QEMU guest, kernel {kernel}, guest run {took:.1?}; \
         its output:\n  {}",
        section_text.trim_end().replace('\n', "\n  ")
    ));
    GuestRun {
        kernel,
        section: section_text,
    }
}

#[test]
fn ipv6_address_routes_and_idempotence() {
    let lab = Lab::new(MAC, true);
    let cfg = NicConfig {
        addr: Some((ip("2001:db8:1::15"), 64)),
        gateway: Some(ip("2001:db8:1::1")),
        dns: vec![ip("2001:db8:1::53")],
        target: Some(ip("2001:db8:2::20")),
        carrier_timeout: Duration::from_secs(10),
        dad_timeout: Duration::from_secs(10),
        ..NicConfig::new(mac())
    };
    let t = Instant::now();
    let a = lab.apply(&cfg).unwrap_or_else(|e| panic!("apply: {e}"));
    eprintln!(
        "ipv6 apply (with DAD): {:?}\n  {}",
        t.elapsed(),
        a.log.join("\n  ")
    );
    let check = || {
        assert_eq!(
            lab.addrs("-6", "eth0"),
            vec![("2001:db8:1::15".to_string(), 64)]
        );
        let routes = lab.routes("-6");
        let d = route(&routes, "default");
        assert_eq!(d.len(), 1, "{routes:?}");
        assert_eq!(d[0]["gateway"], "2001:db8:1::1");
        assert_eq!(d[0]["dev"], "eth0");
        let h = route(&routes, "2001:db8:2::20");
        assert_eq!(h.len(), 1, "{routes:?}");
        assert_eq!(h[0]["gateway"], "2001:db8:1::1");
        routes.len()
    };
    let n = check();
    // Our address is no longer tentative (the link-local one may still be:
    // its DAD runs on its own).
    let infos = lab.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
    let ours: Vec<Value> = infos
        .iter()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["local"] == "2001:db8:1::15")
        .collect();
    assert_eq!(ours.len(), 1, "{infos:?}");
    assert!(ours[0].get("tentative").is_none(), "{infos:?}");
    assert!(ours[0].get("dadfailed").is_none(), "{infos:?}");
    let t = Instant::now();
    lab.apply(&cfg)
        .unwrap_or_else(|e| panic!("second apply: {e}"));
    eprintln!("ipv6 re-apply: {:?}", t.elapsed());
    assert_eq!(check(), n);
}

#[test]
fn unknown_mac_is_a_clear_error() {
    let lab = Lab::new(MAC, true);
    let cfg = NicConfig {
        mac: [0x02, 0, 0x5e, 0, 0, 0x99],
        ..v4_config()
    };
    let e = lab.apply(&cfg).expect_err("no such MAC");
    let s = e.to_string();
    eprintln!("unknown MAC: {s}");
    assert_eq!(e.step, "finding the boot NIC");
    assert!(s.contains("no interface has MAC 02:00:5e:00:00:99"), "{s}");
    assert!(s.contains(&format!("eth0 {MAC}")), "{s}");
}

#[test]
fn no_carrier_times_out_within_the_bound() {
    // The peer stays down: eth0 never gets carrier.
    let lab = Lab::new(MAC, false);
    let cfg = NicConfig {
        carrier_timeout: Duration::from_millis(1500),
        ..v4_config()
    };
    let t = Instant::now();
    let e = lab.apply(&cfg).expect_err("no carrier");
    let took = t.elapsed();
    let s = e.to_string();
    eprintln!("carrier timeout after {took:?}: {s}");
    assert_eq!(e.step, "waiting for carrier");
    assert_eq!(e.ifname.as_deref(), Some("eth0"));
    assert!(s.contains("no carrier after"), "{s}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // Nothing past the failed step was done.
    assert!(lab.addrs("-4", "eth0").is_empty());
}

#[test]
fn renaming_a_down_link_and_a_taken_name() {
    let lab = Lab::new(MAC, true);
    run(&[
        "ip", "-n", &lab.host, "link", "add", "taken", "type", "veth", "peer", "name", "taken-p",
    ]);
    let index = lab.ip_json(&["link", "show", "eth0"])[0]["ifindex"]
        .as_u64()
        .expect("ifindex") as u32;
    let (first, second) = lab.in_host(|| {
        let mut sock = RtnlSocket::open().expect("rtnetlink socket");
        let first = sock.rename_link(index, "eth0", "ens3");
        let second = sock.rename_link(index, "ens3", "taken");
        (first, second)
    });
    first.expect("renaming the down eth0 to ens3");
    let l = lab.ip_json(&["link", "show", "ens3"]);
    assert_eq!(l[0]["ifindex"].as_u64(), Some(u64::from(index)));
    let e = second.expect_err("the name is taken");
    eprintln!("rename to a taken name: {e}");
    assert_eq!(e.errno, Some(nix::errno::Errno::EEXIST));
    assert_eq!(e.ifname.as_deref(), Some("ens3"));
    assert!(e.to_string().contains("renaming it to taken"), "{e}");
}
