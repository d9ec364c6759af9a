//! `sanroot node list|export`: the node records saved by discovery.

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
        dir: PathBuf,
        startup: Startup,
        target: Option<String>,
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
            dir: out,
            startup,
            target,
        } => {
            let chosen: Vec<_> = records
                .into_iter()
                .filter(|r| target.as_ref().is_none_or(|t| &r.target == t))
                .collect();
            if chosen.is_empty() {
                return Err(CmdError::usage(
                    "no node records to export: run `sanroot discover` first",
                ));
            }
            let files = nodes::export(out, &chosen, *startup).map_err(|e| {
                CmdError::new(
                    exit::FAILURE,
                    format!("exporting to {}: {e}", out.display()),
                )
            })?;
            for f in files {
                crate::outln!("{}", f.display());
            }
        }
    }
    Ok(())
}
