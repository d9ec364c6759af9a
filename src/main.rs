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
    let cli = Cli::parse();
    sanroot::logging::init(cli.verbose);
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
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
