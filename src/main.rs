//! The sanroot command line. Parsing only: every command lives in `cmd`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use sanroot::cmd;
use sanroot::ibft::SourceKind;

/// Boot from an iSCSI SAN: read the iBFT, log in, serve the LUN as a block
/// device.
#[derive(Parser, Debug)]
#[command(name = "sanroot", version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Find, validate and print the iSCSI Boot Firmware Table.
    Ibft(IbftArgs),
    /// List the targets a portal offers (SendTargets), as iscsiadm prints them.
    Discover(DiscoverArgs),
    /// List a target's LUNs: type, vendor, product, size, block size, WP, thin.
    Ls(LsArgs),
    /// Copy between an iSCSI LUN and a file, block device or stdin/stdout.
    Cp(CpArgs),
    /// Measure IOPS, throughput and latency of a LUN.
    Bench(BenchArgs),
    /// Saved node records: list them, or export them for open-iscsi.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Log in and make a LUN a kernel block device (/dev/ublkbN or /dev/nbdN);
    /// prints the device and leaves a daemon serving it. Refuses the target
    /// this machine booted from (its session is already there).
    #[command(visible_alias = "login")]
    Attach(AttachArgs),
    /// Boot from the SAN: the iBFT (or dracut's netroot=/ip=) → NIC → login →
    /// block device → partitions → hand-off under /run; prints the device and
    /// leaves the daemon that owns the root disk's session.
    Boot(BootArgs),
    /// Stop serving a device attached by sanroot: flush, log out.
    Detach {
        /// /dev/nbdN or /dev/ublkbN (or just nbdN).
        device: String,
    },
    /// What this host has attached: device, target, portal, session, bridge, state.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BridgeArg {
    /// ublk when /dev/ublk-control exists and io_uring is allowed, else NBD.
    Auto,
    Ublk,
    Nbd,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum PathPolicyArg {
    /// Each command to the next usable path in turn.
    RoundRobin,
    /// Each command to the usable path with the fewest in flight.
    QueueDepth,
    /// One usable path at a time; another only when it stops being usable.
    Failover,
}

fn path_policy(p: PathPolicyArg) -> sanroot::pathset::policy::PathPolicy {
    use sanroot::pathset::policy::PathPolicy;
    match p {
        PathPolicyArg::RoundRobin => PathPolicy::RoundRobin,
        PathPolicyArg::QueueDepth => PathPolicy::QueueDepth,
        PathPolicyArg::Failover => PathPolicy::Failover,
    }
}

#[derive(clap::Args, Debug)]
struct AttachArgs {
    /// iscsi://[user@]host[:port]/target-iqn/LUN, or IQN/LUN of a discovered target.
    #[arg(required_unless_present = "recover", default_value = "")]
    target: String,
    /// Take back DEVICE, whose daemon died (killed, crashed), without the
    /// filesystem on it seeing an error: log in again with the dead
    /// session's ISID (the target drops that session), check the LU is the
    /// same, and serve the requests the kernel held (ublk user recovery,
    /// NBD reconfigure). The target defaults to the device's record.
    #[arg(long, value_name = "DEVICE")]
    recover: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    bridge: BridgeArg,
    /// Serve in this process instead of a background daemon.
    #[arg(long)]
    foreground: bool,
    /// Another portal (IP:PORT, [v6]:PORT) of the same target: with one or
    /// more, every portal gets a session at once (each its own ISID), all
    /// must reach the same LU, and I/O follows ALUA and --path-policy;
    /// a lost path's commands go to another. Repeatable.
    #[arg(long, value_name = "ADDR")]
    portal: Vec<String>,
    /// How I/O is spread over the usable paths (ALUA's active/optimized
    /// ones, or every path of a LU without ALUA).
    #[arg(long, value_enum, default_value = "round-robin")]
    path_policy: PathPolicyArg,
    /// One session at a time even with several --portal: the next portal
    /// only when the session is lost (for a target that refuses a second
    /// session from the same initiator).
    #[arg(long)]
    single_session: bool,
    #[command(flatten)]
    connect: ConnectOpts,
    /// For the daemon's SendTargets (the target's other portals).
    #[command(flatten)]
    discovery: DiscoveryOpts,
}

#[derive(clap::Args, Debug)]
struct BootArgs {
    /// Read the iBFT from this file (a raw table or a directory laid out
    /// like /sys/firmware/ibft) instead of the firmware.
    #[arg(long, value_name = "PATH")]
    ibft_file: Option<PathBuf>,
    /// Only this iBFT source.
    #[arg(long, value_enum)]
    source: Option<SourceArg>,
    /// The kernel command line to obey (default /proc/cmdline):
    /// rd.iscsi.firmware, netroot=iscsi:…, ip=, rd.iscsi.initiator=,
    /// rd.sanroot=0, rd.sanroot.bridge=, rd.sanroot.timeout=.
    #[arg(long, value_name = "PATH")]
    cmdline: Option<PathBuf>,
    /// Block-device bridge (default: rd.sanroot.bridge=, else auto).
    #[arg(long, value_enum)]
    bridge: Option<BridgeArg>,
    /// Print every step it would take and do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Serve in this process instead of leaving a daemon.
    #[arg(long)]
    foreground: bool,
    /// Accept a target that waives the CHAP the table asks for.
    #[arg(long)]
    allow_no_auth: bool,
    /// The boot daemon died: take the boot disk back (same session ISID,
    /// same device), credentials from the iBFT or command line again.
    #[arg(long)]
    recover: bool,
    /// How I/O is spread over several paths to the root LU (the iBFT's
    /// targets for the same IQN and LUN, every netroot=, SendTargets).
    #[arg(long, value_enum, default_value = "round-robin")]
    path_policy: PathPolicyArg,
    /// The real root is mounted at SYSROOT (dracut's pre-pivot hook; /init
    /// does this itself): hide the boot target's open-iscsi node records
    /// there so that nothing in the real root logs in to it again. Mounts
    /// an empty read-only tmpfs over each; writes nothing to the disk.
    #[arg(long, value_name = "SYSROOT", conflicts_with_all = ["dry_run", "foreground", "recover"])]
    pre_pivot: Option<PathBuf>,
    /// From an initramfs without a shutdown program of its own
    /// (initramfs-tools): leave a copy of this binary at
    /// /run/initramfs/shutdown, where systemd-shutdown returns at power-off
    /// so that the root's session is logged out after the root is
    /// unmounted, and remount /run exec when it is noexec. Only when this
    /// boot is sanroot's; nothing is copied when that file exists.
    #[arg(long, conflicts_with_all = ["dry_run", "foreground", "recover"])]
    install_shutdown: bool,
}

/// How to log in: shared by every command that talks to a target.
#[derive(clap::Args, Debug, Clone, Default)]
struct ConnectOpts {
    /// Initiator IQN (default: /etc/iscsi/initiatorname.iscsi, else one
    /// derived from /etc/machine-id).
    #[arg(long, value_name = "IQN")]
    initiator_name: Option<String>,
    /// CHAP user name (or SANROOT_CHAP_USER, or user@ in the URL).
    #[arg(long, value_name = "NAME")]
    chap_user: Option<String>,
    /// File holding the CHAP secret (or SANROOT_CHAP_SECRET_FILE /
    /// SANROOT_CHAP_SECRET).
    #[arg(long, value_name = "PATH")]
    chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the name the target must answer with
    /// (or SANROOT_TARGET_CHAP_USER).
    #[arg(long, value_name = "NAME")]
    target_chap_user: Option<String>,
    /// Mutual CHAP: file holding the target's secret
    /// (or SANROOT_TARGET_CHAP_SECRET_FILE / SANROOT_TARGET_CHAP_SECRET).
    #[arg(long, value_name = "PATH")]
    target_chap_secret_file: Option<PathBuf>,
    /// Header digest: none, crc32c, or prefer (offer both).
    #[arg(long, value_name = "MODE")]
    header_digest: Option<String>,
    /// Data digest: none, crc32c, or prefer (offer both).
    #[arg(long, value_name = "MODE")]
    data_digest: Option<String>,
    /// Accept a target that skips authentication although CHAP
    /// credentials are configured.
    #[arg(long)]
    allow_no_auth: bool,
}

impl ConnectOpts {
    fn into_args(self) -> cmd::common::ConnectArgs {
        cmd::common::ConnectArgs {
            initiator_name: self.initiator_name,
            chap_user: self.chap_user,
            chap_secret_file: self.chap_secret_file,
            target_chap_user: self.target_chap_user,
            target_chap_secret_file: self.target_chap_secret_file,
            header_digest: self.header_digest,
            data_digest: self.data_digest,
            allow_no_auth: self.allow_no_auth,
            discovery: None,
        }
    }
}

/// CHAP for discovery sessions (SendTargets), when the target wants other
/// credentials there than for a session. Without them, discovery uses the
/// session's CHAP. Secrets only from files or the environment, never argv.
#[derive(clap::Args, Debug, Clone, Default)]
struct DiscoveryOpts {
    /// CHAP user name for discovery sessions (or
    /// SANROOT_DISCOVERY_CHAP_USER). Default: the session's CHAP.
    #[arg(long, value_name = "NAME")]
    discovery_chap_user: Option<String>,
    /// File (0600) holding the discovery CHAP secret (or
    /// SANROOT_DISCOVERY_CHAP_SECRET_FILE / SANROOT_DISCOVERY_CHAP_SECRET).
    #[arg(long, value_name = "PATH")]
    discovery_chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP in discovery sessions: the name the target must answer
    /// with (or SANROOT_DISCOVERY_TARGET_CHAP_USER).
    #[arg(long, value_name = "NAME")]
    discovery_target_chap_user: Option<String>,
    /// Mutual CHAP in discovery sessions: file (0600) holding the target's
    /// secret (or SANROOT_DISCOVERY_TARGET_CHAP_SECRET_FILE /
    /// SANROOT_DISCOVERY_TARGET_CHAP_SECRET).
    #[arg(long, value_name = "PATH")]
    discovery_target_chap_secret_file: Option<PathBuf>,
}

impl DiscoveryOpts {
    fn into_args(self) -> cmd::common::DiscoveryArgs {
        cmd::common::DiscoveryArgs {
            chap_user: self.discovery_chap_user,
            chap_secret_file: self.discovery_chap_secret_file,
            target_chap_user: self.discovery_target_chap_user,
            target_chap_secret_file: self.discovery_target_chap_secret_file,
        }
    }
}

/// Session and discovery credentials together (`discover`, `attach`).
fn with_discovery(c: ConnectOpts, d: DiscoveryOpts) -> cmd::common::ConnectArgs {
    cmd::common::ConnectArgs {
        discovery: Some(d.into_args()),
        ..c.into_args()
    }
}

#[derive(clap::Args, Debug)]
struct DiscoverArgs {
    /// The portal to ask: HOST[:PORT] (IPv6 as [ADDR]:PORT).
    portal: String,
    /// Print JSON instead of iscsiadm's lines.
    #[arg(long)]
    json: bool,
    /// Do not save node records.
    #[arg(long)]
    no_save: bool,
    #[command(flatten)]
    connect: ConnectOpts,
    #[command(flatten)]
    discovery: DiscoveryOpts,
}

#[derive(clap::Args, Debug)]
struct LsArgs {
    /// iscsi://[user@]host[:port]/target-iqn[/lun], or a discovered IQN.
    target: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectOpts,
}

#[derive(clap::Args, Debug)]
struct CpArgs {
    /// Source: iscsi://.../target-iqn/LUN, a file or block device, or - for stdin.
    src: String,
    /// Destination: iscsi://.../target-iqn/LUN, a file or block device, or - for stdout.
    dst: String,
    /// Read the destination back and compare.
    #[arg(long)]
    verify: bool,
    /// Bytes per command (default 1 MiB, capped by the LUN's limit).
    #[arg(long, value_name = "BYTES")]
    chunk: Option<usize>,
    /// Commands in flight on the LUN (default 8).
    #[arg(long)]
    qd: Option<usize>,
    /// Copy at most this many bytes.
    #[arg(long, value_name = "N")]
    bytes: Option<u64>,
    /// Show progress even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
    #[command(flatten)]
    connect: ConnectOpts,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// iscsi://[user@]host[:port]/target-iqn/LUN
    url: String,
    /// Write instead of read (destroys the LUN's data).
    #[arg(long)]
    write: bool,
    /// Random offsets instead of sequential.
    #[arg(long)]
    random: bool,
    /// Bytes per I/O (default 4096).
    #[arg(long, value_name = "N")]
    bs: Option<usize>,
    /// I/Os in flight (default 32).
    #[arg(long, value_name = "N")]
    qd: Option<usize>,
    /// How long to run (default 10).
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectOpts,
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// List saved node records (HOST:PORT,TPGT TARGET-IQN).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write the records in open-iscsi's layout (nodes/, send_targets/)
    /// into the installed system's node database, for an installer. The
    /// records of the target this machine boots from (--boot-target,
    /// /run/sanroot/boot.json, the iBFT) are always node.startup = manual:
    /// sanroot keeps that session from the initramfs.
    Export {
        /// Write under DIR as is, e.g. /mnt/sysimage/var/lib/iscsi.
        /// Without it: the database of the open-iscsi installed under
        /// --root, as its iscsiadm names it (ROOT/var/lib/iscsi for
        /// open-iscsi 2.1.9 and later, Fedora, RHEL; ROOT/etc/iscsi
        /// before: Debian 12, SUSE); if that does not tell,
        /// ROOT/var/lib/iscsi when ROOT/var/lib/iscsi/nodes exists, else
        /// ROOT/etc/iscsi.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The installed system's root, e.g. /mnt/sysimage or /target.
        #[arg(long, value_name = "ROOT", default_value = "/")]
        root: PathBuf,
        /// node.startup in the exported records.
        #[arg(long, value_enum, default_value = "automatic")]
        startup: StartupArg,
        /// Only this target.
        #[arg(long, value_name = "IQN")]
        target: Option<String>,
        /// A target this machine boots from (repeatable): its records get
        /// node.startup = manual whatever --startup says. The target in
        /// /run/sanroot/boot.json and the iBFT's (/sys/firmware/ibft)
        /// count without it.
        #[arg(long, value_name = "IQN")]
        boot_target: Vec<String>,
        /// Look for /run/sanroot/boot.json and /sys/firmware/ibft under
        /// this directory (testing).
        #[arg(long, hide = true, value_name = "DIR", default_value = "/")]
        host_root: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum StartupArg {
    /// Only when asked (iscsiadm -m node -T IQN -l).
    Manual,
    /// At boot (iscsiadm -m node --loginall=automatic).
    Automatic,
    /// Fedora's iscsi-onboot.service (--loginall=onboot).
    Onboot,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum SourceArg {
    /// The raw ACPI table under /sys/firmware/acpi/tables.
    Acpi,
    /// A scan of low physical memory through /dev/mem (BIOS iPXE).
    Mem,
    /// The kernel's parsed view under /sys/firmware/ibft.
    Sysfs,
}

#[derive(clap::Args, Debug)]
struct IbftArgs {
    /// Read only this source (default: acpi, then mem, then sysfs).
    #[arg(long, value_enum, conflicts_with = "file")]
    source: Option<SourceArg>,
    /// Read a saved raw table (or a copy of /sys/firmware/ibft) instead.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long, conflicts_with = "netroot")]
    json: bool,
    /// Print the equivalent dracut netroot=/ip= arguments.
    #[arg(long)]
    netroot: bool,
    /// Show CHAP secrets instead of <hidden>.
    #[arg(long)]
    show_secrets: bool,
    /// Read a table whose checksum is wrong (reported as a warning).
    #[arg(long)]
    ignore_checksum: bool,
    /// Exit 4 if any part of the table was rejected.
    #[arg(long)]
    strict: bool,
    /// Look for /sys and /dev under this directory (testing).
    #[arg(long, hide = true, value_name = "DIR")]
    sysroot: Option<PathBuf>,
}

fn main() -> ExitCode {
    // PID 1 named …/init or …/shutdown: the minimal initramfs's /init, or
    // the program systemd-shutdown returns to at power-off. Their
    // arguments are the kernel's and systemd's, not ours.
    if let Some(role) = sanroot::boot::init::role() {
        let code = match role {
            sanroot::boot::init::Role::Init => sanroot::boot::init::run_init(),
            sanroot::boot::init::Role::Shutdown => sanroot::boot::init::run_shutdown(),
        };
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    let boot = matches!(&cli.command, Command::Boot(b) if !b.dry_run);
    // --pre-pivot and --install-shutdown do their work and exit: no daemon.
    let serves = match &cli.command {
        Command::Attach(_) => true,
        Command::Boot(b) => boot && b.pre_pivot.is_none() && !b.install_shutdown,
        _ => false,
    };
    if serves {
        // A daemon that may serve the root filesystem: '@' in argv[0] when
        // started from an initramfs (systemd's kill sweeps skip it). The
        // re-exec this may take costs a second start of the binary (0.06 s
        // under TCG), which the initramfs scripts avoid by starting it as
        // '@sanroot' through PATH.
        sanroot::daemon::ensure_at_argv0();
    }
    // The boot flow logs its steps (to the journal, via /dev/kmsg).
    let verbose = if boot && sanroot::daemon::in_initramfs() {
        cli.verbose.max(1)
    } else {
        cli.verbose
    };
    sanroot::logging::init(verbose);
    let code = match cli.command {
        Command::Ibft(a) => cmd::ibft::run(&cmd::ibft::Args {
            source: a.source.map(|s| match s {
                SourceArg::Acpi => SourceKind::Acpi,
                SourceArg::Mem => SourceKind::Mem,
                SourceArg::Sysfs => SourceKind::Sysfs,
            }),
            file: a.file,
            json: a.json,
            netroot: a.netroot,
            show_secrets: a.show_secrets,
            ignore_checksum: a.ignore_checksum,
            strict: a.strict,
            verbose: cli.verbose > 0,
            sysroot: a.sysroot,
        }),
        Command::Discover(a) => cmd::discover::run(&cmd::discover::Args {
            portal: a.portal,
            json: a.json,
            no_save: a.no_save,
            connect: with_discovery(a.connect, a.discovery),
        }),
        Command::Ls(a) => cmd::ls::run(&cmd::ls::Args {
            target: a.target,
            json: a.json,
            connect: a.connect.into_args(),
        }),
        Command::Cp(a) => cmd::cp::run(&cmd::cp::Args {
            src: a.src,
            dst: a.dst,
            verify: a.verify,
            chunk: a.chunk,
            qd: a.qd,
            bytes: a.bytes,
            progress: a.progress.then_some(true),
            connect: a.connect.into_args(),
        }),
        Command::Bench(a) => cmd::bench::run(&cmd::bench::Args {
            url: a.url,
            write: a.write,
            random: a.random,
            bs: a.bs,
            qd: a.qd,
            seconds: a.seconds,
            json: a.json,
            connect: a.connect.into_args(),
        }),
        Command::Attach(a) => cmd::attach::attach(&cmd::attach::AttachArgs {
            target: a.target,
            bridge: bridge_kind(a.bridge),
            foreground: a.foreground,
            portals: a.portal,
            recover: a.recover,
            policy: path_policy(a.path_policy),
            single_session: a.single_session,
            connect: with_discovery(a.connect, a.discovery),
        }),
        Command::Boot(a) if a.pre_pivot.is_some() || a.install_shutdown => {
            let hidden = a
                .pre_pivot
                .as_deref()
                .map_or(sanroot::exit::OK, sanroot::boot::hide::pre_pivot);
            let installed = if a.install_shutdown {
                sanroot::boot::init::install_shutdown_program()
            } else {
                sanroot::exit::OK
            };
            if hidden != sanroot::exit::OK {
                hidden
            } else {
                installed
            }
        }
        Command::Boot(a) => sanroot::boot::flow::run(&sanroot::boot::flow::BootOptions {
            ibft_file: a.ibft_file,
            source: a.source.map(|s| match s {
                SourceArg::Acpi => SourceKind::Acpi,
                SourceArg::Mem => SourceKind::Mem,
                SourceArg::Sysfs => SourceKind::Sysfs,
            }),
            cmdline: a.cmdline,
            bridge: a.bridge.map(bridge_kind),
            dry_run: a.dry_run,
            foreground: a.foreground,
            allow_no_auth: a.allow_no_auth,
            recover: a.recover,
            policy: path_policy(a.path_policy),
        }),
        Command::Detach { device } => cmd::attach::detach(&device),
        Command::Status { json } => cmd::attach::status(json),
        Command::Node(n) => cmd::node::run(&match n {
            NodeCmd::List { json } => cmd::node::Args::List { json },
            NodeCmd::Export {
                dir,
                root,
                startup,
                target,
                boot_target,
                host_root,
            } => cmd::node::Args::Export {
                dir,
                root,
                startup: match startup {
                    StartupArg::Manual => sanroot::nodes::Startup::Manual,
                    StartupArg::Automatic => sanroot::nodes::Startup::Automatic,
                    StartupArg::Onboot => sanroot::nodes::Startup::Onboot,
                },
                target,
                boot_targets: boot_target,
                host_root,
            },
        }),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn bridge_kind(b: BridgeArg) -> cmd::attach::BridgeKind {
    match b {
        BridgeArg::Auto => cmd::attach::BridgeKind::Auto,
        BridgeArg::Ublk => cmd::attach::BridgeKind::Ublk,
        BridgeArg::Nbd => cmd::attach::BridgeKind::Nbd,
    }
}
