//! `sanroot discover HOST[:PORT]`: SendTargets discovery, printed exactly
//! as `iscsiadm -m discovery -t sendtargets` prints it (installers parse
//! that), and saved as node records.

use serde_json::json;

use super::common::{self, CmdError, ConnectArgs};
use crate::exit;
use crate::iscsi::initiator;
use crate::iscsi::login::Portal;
use crate::nodes::{self, NodeRecord};
use crate::url::split_host_port;

#[derive(Debug, Clone, Default)]
pub struct Args {
    pub portal: String,
    pub json: bool,
    pub no_save: bool,
    pub connect: ConnectArgs,
}

pub fn run(args: &Args) -> i32 {
    common::report(discover(args))
}

fn discover(args: &Args) -> Result<(), CmdError> {
    let (host, port) = split_host_port(&args.portal).map_err(CmdError::usage)?;
    let cfg = common::initiator_config(&args.connect, None)?;
    let portal = Portal::new(host.clone(), port);
    let targets = initiator::discover(&portal, &cfg).map_err(common::login_error)?;
    let mut records = Vec::new();
    for t in &targets {
        if t.portals.is_empty() {
            // RFC 7143: no TargetAddress means "the portal you asked".
            records.push(NodeRecord {
                target: t.name.clone(),
                host: host.clone(),
                port,
                tpgt: 1,
                discovery_host: host.clone(),
                discovery_port: port,
            });
        }
        for p in &t.portals {
            records.push(NodeRecord {
                target: t.name.clone(),
                host: p
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: p.port,
                tpgt: p.tpgt,
                discovery_host: host.clone(),
                discovery_port: port,
            });
        }
    }
    if args.json {
        let v = json!(
            targets
                .iter()
                .map(|t| json!({
                    "name": t.name,
                    "portals": records
                        .iter()
                        .filter(|r| r.target == t.name)
                        .map(|r| json!({"host": r.host, "port": r.port, "tpgt": r.tpgt}))
                        .collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>()
        );
        crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for r in &records {
            crate::outln!("{}", r.line());
        }
    }
    if !args.no_save {
        let dir = nodes::state_dir();
        if let Err(e) = nodes::save(&dir, &records) {
            return Err(CmdError::new(
                exit::FAILURE,
                format!(
                    "found {} target(s) but cannot save node records in {}: {e} (use --no-save)",
                    targets.len(),
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}
