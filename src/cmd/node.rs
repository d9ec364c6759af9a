//! `sanroot node list|export`: the node records saved by discovery.
//!
//! `export` is what an installer runs to give the installed system its
//! open-iscsi node records: in the database that system's open-iscsi
//! reads (/etc/iscsi or /var/lib/iscsi, see [`nodes::detect_node_db`]),
//! and with the boot target's records `manual` so that open-iscsi there
//! never logs in to the root LUN a second time.

use std::path::PathBuf;

use serde_json::json;

use super::common::{self, CmdError};
use crate::exit;
use crate::nodes::{self, Startup};

#[derive(Debug, Clone)]
pub enum Args {
    List {
        json: bool,
    },
    Export {
        /// Write here as is; None: the database of the open-iscsi
        /// installed under `root`.
        dir: Option<PathBuf>,
        /// The installed system's root ("/" normally).
        root: PathBuf,
        /// For every target but the boot target(s).
        startup: Startup,
        target: Option<String>,
        /// `--boot-target`: boot targets besides the hand-off record's and
        /// the iBFT's.
        boot_targets: Vec<String>,
        /// Where /run/sanroot/boot.json and /sys/firmware/ibft are looked
        /// up ("/" but in tests).
        host_root: PathBuf,
    },
}

pub fn run(args: &Args) -> i32 {
    common::report(node(args))
}

fn node(args: &Args) -> Result<(), CmdError> {
    let dir = nodes::state_dir();
    let records = nodes::load_all(&dir).map_err(|e| CmdError::new(exit::FAILURE, e))?;
    match args {
        Args::List { json } => {
            if *json {
                let v: Vec<_> = records
                    .iter()
                    .map(|r| {
                        json!({"target": r.target, "host": r.host, "port": r.port, "tpgt": r.tpgt,
                               "discovery_host": r.discovery_host, "discovery_port": r.discovery_port})
                    })
                    .collect();
                crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for r in &records {
                    crate::outln!("{}", r.line());
                }
            }
        }
        Args::Export {
            dir,
            root,
            startup,
            target,
            boot_targets,
            host_root,
        } => {
            if boot_targets.iter().any(|t| t.trim().is_empty()) {
                return Err(CmdError::usage("--boot-target: empty IQN"));
            }
            let chosen: Vec<_> = records
                .into_iter()
                .filter(|r| target.as_ref().is_none_or(|t| &r.target == t))
                .collect();
            if chosen.is_empty() {
                return Err(CmdError::usage(
                    "no node records to export: run `sanroot discover` first",
                ));
            }
            let out = match dir {
                Some(d) => d.clone(),
                None => {
                    if !root.is_dir() {
                        return Err(CmdError::usage(format!(
                            "--root {}: not a directory",
                            root.display()
                        )));
                    }
                    let db = nodes::detect_node_db(root);
                    eprintln!(
                        "sanroot: node export: {}: writing to {}",
                        db.reason,
                        db.dir.display()
                    );
                    db.dir
                }
            };
            let handoff = crate::boot::handoff::read(host_root).map(|r| r.target);
            let boot = nodes::boot_targets(boot_targets, handoff.as_deref(), host_root);
            let written = nodes::export(&out, &chosen, *startup, &boot).map_err(|e| {
                CmdError::new(
                    exit::FAILURE,
                    format!("exporting to {}: {e}", out.display()),
                )
            })?;
            for w in &written {
                if let Some(b) = &w.boot {
                    let asked = if *startup == Startup::Manual {
                        String::new()
                    } else {
                        format!(" (--startup {} is for the other targets)", startup.as_str())
                    };
                    eprintln!(
                        "sanroot: node export: {}: node.startup = manual{asked}: {} is the boot target ({}); sanroot keeps its session from the initramfs",
                        w.path.display(),
                        b.iqn,
                        b.sources.join(", ")
                    );
                }
            }
            for w in written {
                crate::outln!("{}", w.path.display());
            }
        }
    }
    Ok(())
}
