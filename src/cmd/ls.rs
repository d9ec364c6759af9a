//! `sanroot ls URL-or-target`: the LUNs a target offers and what they are.

use std::sync::Arc;

use serde_json::{Value, json};

use super::common::{self, CmdError, ConnectArgs};
use crate::exit;
use crate::iscsi::initiator;
use crate::iscsi::session::DataDir;
use crate::lun::{self, Lun, RetryPolicy};
use crate::scsi::cdb;
use crate::scsi::data::Inquiry;

#[derive(Debug, Clone, Default)]
pub struct Args {
    pub target: String,
    pub json: bool,
    pub connect: ConnectArgs,
}

pub fn run(args: &Args) -> i32 {
    common::report(ls(args))
}

struct Row {
    lun: u64,
    inquiry: Option<Inquiry>,
    info: Option<lun::LunInfo>,
    error: Option<String>,
}

fn ls(args: &Args) -> Result<(), CmdError> {
    let (url, portal) = common::resolve_target(&args.target)?;
    let cfg = common::initiator_config(&args.connect, Some(&url))?;
    let conn = initiator::connect(&portal, &url.target, &cfg, None).map_err(common::login_error)?;
    let session = Arc::new(conn.session);
    let luns = match url.lun {
        Some(l) => vec![l],
        None => lun::report_luns(&session).map_err(|e| CmdError::new(exit::IO, e.to_string()))?,
    };
    let mut rows = Vec::new();
    for l in luns {
        // A failed INQUIRY (a protocol error, the session lost) is this
        // LUN's error, not an unknown device type.
        let (inquiry, inquiry_error) = {
            let (r, b) = lun::run_command(
                &session,
                l,
                &cdb::inquiry(96),
                DataDir::Read(96),
                vec![0u8; 96],
                &RetryPolicy::default(),
                |_| {},
            );
            match r {
                Ok(res) => (Inquiry::parse(&b[..res.data_in.min(b.len())]).ok(), None),
                Err(e) => (None, Some(format!("INQUIRY: {e}"))),
            }
        };
        let is_disk = inquiry.as_ref().is_some_and(|i| i.peripheral.is_disk());
        let (info, error) = if is_disk {
            match Lun::open(Arc::clone(&session), l) {
                Ok(x) => (Some(x.info), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, inquiry_error)
        };
        rows.push(Row {
            lun: l,
            inquiry,
            info,
            error,
        });
    }
    if let Ok(s) = Arc::try_unwrap(session) {
        let _ = s.logout(std::time::Duration::from_secs(5));
    }
    if args.json {
        let v: Vec<Value> = rows.iter().map(row_json).collect();
        crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        crate::outln!(
            "{:<5} {:<13} {:<8} {:<16} {:>8} {:>6} {:<3} {:<4}",
            "LUN",
            "TYPE",
            "VENDOR",
            "PRODUCT",
            "SIZE",
            "BLOCK",
            "WP",
            "THIN"
        );
        for r in &rows {
            let (ty, vendor, product) = match &r.inquiry {
                Some(i) => (
                    i.peripheral.name().to_string(),
                    i.vendor.clone(),
                    i.product.clone(),
                ),
                None => ("?".into(), "?".into(), "?".into()),
            };
            let (size, bs, wp, thin) = match &r.info {
                Some(i) => (
                    human_size(i.capacity.bytes().unwrap_or(u64::MAX)),
                    i.block_size().to_string(),
                    yes_no(i.write_protected),
                    yes_no(i.thin()),
                ),
                None => ("-".into(), "-".into(), "-", "-"),
            };
            crate::outln!(
                "{:<5} {:<13} {:<8} {:<16} {:>8} {:>6} {:<3} {:<4}",
                r.lun,
                ty,
                vendor,
                product,
                size,
                bs,
                wp,
                thin
            );
            if let Some(e) = &r.error {
                eprintln!("sanroot: LUN {}: {e}", r.lun);
            }
        }
    }
    // A listing with holes is no success: say so in the exit code.
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        return Err(CmdError::new(
            exit::IO,
            format!("{failed} of {} LUN(s) could not be read", rows.len()),
        ));
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn row_json(r: &Row) -> Value {
    let i = r.inquiry.as_ref();
    let d = r.info.as_ref();
    json!({
        "lun": r.lun,
        "type": i.map(|i| i.peripheral.name()),
        "vendor": i.map(|i| i.vendor.clone()),
        "product": i.map(|i| i.product.clone()),
        "revision": i.map(|i| i.revision.clone()),
        "size_bytes": d.and_then(|d| d.capacity.bytes()),
        "blocks": d.map(|d| d.blocks()),
        "block_size": d.map(|d| d.block_size()),
        "write_protected": d.map(|d| d.write_protected),
        "thin_provisioned": d.map(|d| d.thin()),
        "unmap": d.map(|d| d.can_unmap()),
        "write_same": d.map(|d| d.can_write_same()),
        "fua": d.map(|d| d.fua),
        "serial": d.and_then(|d| d.serial.clone()),
        "id": d.and_then(|d| d.lu_id.clone()),
        "error": r.error,
    })
}

/// 1.5G, 64M, 512K: binary units, as lsblk.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else if v >= 10.0 || (v - v.round()).abs() < 0.05 {
        format!("{:.0}{}", v, UNITS[u])
    } else {
        format!("{:.1}{}", v, UNITS[u])
    }
}
