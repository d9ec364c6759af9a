//! Write an iBFT (the raw ACPI table) with sanroot's own emitter, for boots
//! whose firmware cannot describe the root: QEMU hands the file to the guest
//! with `-acpitable file=TABLE`, and the kernel and sanroot read it as they
//! read a firmware's. qemu/sanboot uses it for the VLAN and IPv6 boots
//! (issue 18): iPXE as Debian builds it has no VLAN command and writes no
//! IPv6 into its iBFT.
//!
//! ```text
//! cargo run --example ibft-table -- --out T.bin --initiator IQN \
//!     --mac 52:54:00:12:34:56 --ip fd00::15/64 --gateway fd00::2 \
//!     --target-ip fd00::2 --port 3260 --lun 1 --target IQN [--vlan 100] \
//!     [--chap-file F]
//! ```
//!
//! `--chap-file` names a file of one line, `USER SECRET` or `USER SECRET
//! TARGET-USER TARGET-SECRET` (mutual): the secrets never go on a command
//! line. The table is written 0600.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sanroot::ibft::emit::{Layout, emit};
use sanroot::ibft::*;
use sanroot::secret::Secret;

#[derive(Parser)]
#[command(about = "Write an iBFT for QEMU's -acpitable")]
struct Args {
    /// Where to write the table.
    #[arg(long)]
    out: PathBuf,
    /// The initiator's IQN.
    #[arg(long)]
    initiator: String,
    /// The boot NIC's MAC address.
    #[arg(long)]
    mac: String,
    /// The NIC's static address and prefix length (IPv4 or IPv6).
    #[arg(long)]
    ip: String,
    /// The default gateway.
    #[arg(long)]
    gateway: Option<IpAddr>,
    /// A DNS server.
    #[arg(long)]
    dns: Option<IpAddr>,
    /// The 802.1Q VLAN id (0: untagged).
    #[arg(long, default_value_t = 0)]
    vlan: u16,
    /// The host name.
    #[arg(long)]
    hostname: Option<String>,
    /// The NIC's PCI slot on bus 0, function 0 (QEMU's pc machine: the
    /// first added NIC is in slot 3).
    #[arg(long, default_value_t = 3)]
    pci_slot: u16,
    /// The portal's address.
    #[arg(long)]
    target_ip: IpAddr,
    /// The portal's TCP port.
    #[arg(long, default_value_t = 3260)]
    port: u16,
    /// The LUN.
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// The target's IQN.
    #[arg(long)]
    target: String,
    /// A file with `USER SECRET [TARGET-USER TARGET-SECRET]`.
    #[arg(long)]
    chap_file: Option<PathBuf>,
    /// EDK2's layout (a fixed 2048-byte table, strings from the end)
    /// instead of iPXE's.
    #[arg(long)]
    edk2: bool,
}

fn table(a: &Args) -> Result<Ibft, String> {
    let (ip, prefix) =
        a.ip.split_once('/')
            .ok_or_else(|| format!("--ip {}: ADDRESS/PREFIX", a.ip))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("--ip {}: not an address", a.ip))?;
    let prefix_len: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= if ip.is_ipv4() { 32 } else { 128 })
        .ok_or_else(|| format!("--ip {}: bad prefix length", a.ip))?;
    if a.vlan > 4094 {
        return Err(format!("--vlan {}: 0 to 4094", a.vlan));
    }
    let mut target = Target {
        place: Place::default(),
        index: 0,
        ip: Some(a.target_ip),
        port: a.port,
        lun: Lun::from_number(a.lun),
        chap: ChapType::None,
        nic_index: 0,
        name: a.target.clone(),
        chap_name: None,
        chap_secret: None,
        rchap_name: None,
        rchap_secret: None,
        boot: true,
        second_path: false,
    };
    if let Some(f) = &a.chap_file {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("--chap-file {}: {e}", f.display()))?;
        let w: Vec<&str> = text.split_whitespace().collect();
        match w.as_slice() {
            [u, s] => {
                target.chap = ChapType::OneWay;
                target.chap_name = Some(u.to_string());
                target.chap_secret = Some(Secret::from(*s));
            }
            [u, s, tu, ts] => {
                target.chap = ChapType::Mutual;
                target.chap_name = Some(u.to_string());
                target.chap_secret = Some(Secret::from(*s));
                target.rchap_name = Some(tu.to_string());
                target.rchap_secret = Some(Secret::from(*ts));
            }
            _ => {
                return Err(format!(
                    "--chap-file {}: one line, USER SECRET or USER SECRET TARGET-USER TARGET-SECRET",
                    f.display()
                ));
            }
        }
    }
    let nic = Nic {
        place: Place::default(),
        index: 0,
        ip: Some(ip),
        prefix_len,
        origin: Origin::Manual,
        gateway: a.gateway,
        primary_dns: a.dns,
        secondary_dns: None,
        dhcp_server: None,
        vlan: a.vlan,
        vlan_raw: a.vlan,
        mac: sanroot::net::parse_mac(&a.mac)
            .ok_or_else(|| format!("--mac {}: six hex bytes separated by colons", a.mac))?,
        pci_bdf: Some(a.pci_slot << 3),
        hostname: a.hostname.clone(),
    };
    Ok(Ibft {
        header: TableHeader {
            signature: Signature::Ibft,
            length: 0,
            revision: 1,
            checksum: 0,
            checksum_ok: None,
            oem_id: "SANRT".into(),
            oem_table_id: "QEMU".into(),
        },
        control_len: 18,
        extensions: 0,
        initiator: Some(Initiator {
            place: Place::default(),
            index: 0,
            isns: None,
            slp: None,
            pri_radius: None,
            sec_radius: None,
            name: Some(a.initiator.clone()),
        }),
        nics: vec![nic],
        targets: vec![target],
        problems: vec![],
        lost_fields: vec![],
    })
}

fn main() -> ExitCode {
    let a = Args::parse();
    let t = match table(&a) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ibft-table: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = emit(&t, if a.edk2 { Layout::Edk2 } else { Layout::Ipxe });
    // What the guest will read must be what was meant.
    match parse(&bytes, ParseOptions::default()) {
        Ok(back) if back.problems.is_empty() => {}
        Ok(back) => {
            eprintln!("ibft-table: the emitted table reads back with problems:");
            for p in back.problems {
                eprintln!("  {p}");
            }
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("ibft-table: the emitted table does not read back: {e}");
            return ExitCode::FAILURE;
        }
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&a.out)
        .and_then(|mut f| f.write_all(&bytes));
    if let Err(e) = written {
        eprintln!("ibft-table: {}: {e}", a.out.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
