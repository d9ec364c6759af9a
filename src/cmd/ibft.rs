//! `sanroot ibft`: find the iBFT, validate it and print it.

use std::io::Write;
use std::path::PathBuf;

use crate::exit;
use crate::ibft::{self, FindError, FindOptions, ParseOptions, Severity, SourceKind};

#[derive(Debug, Clone, Default)]
pub struct Args {
    pub source: Option<SourceKind>,
    pub file: Option<PathBuf>,
    pub json: bool,
    pub netroot: bool,
    pub show_secrets: bool,
    pub ignore_checksum: bool,
    pub strict: bool,
    pub verbose: bool,
    pub sysroot: Option<PathBuf>,
}

pub fn run(args: &Args) -> i32 {
    let opts = FindOptions {
        source: args.source,
        file: args.file.clone(),
        sysroot: args.sysroot.clone().unwrap_or_else(|| PathBuf::from("/")),
        parse: ParseOptions {
            ignore_checksum: args.ignore_checksum,
        },
    };
    let found = match ibft::find(&opts) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sanroot: {e}");
            return match e {
                FindError::NotFound(_) => exit::NO_IBFT,
                FindError::Invalid { .. } => exit::INVALID_IBFT,
                FindError::Io { .. } => exit::FAILURE,
            };
        }
    };
    log::info!("iBFT read from {} ({})", found.kind.name(), found.detail);

    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&ibft::render::to_json(&found, args.show_secrets))
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        s.push('\n');
        s
    } else if args.netroot {
        let lines = ibft::render::to_netroot(&found.ibft, args.show_secrets);
        if !args.show_secrets && found.ibft.targets.iter().any(|t| t.chap_secret.is_some()) {
            eprintln!("sanroot: CHAP secrets shown as <hidden>; add --show-secrets to print them");
        }
        let mut s = lines.join("\n");
        s.push('\n');
        s
    } else {
        ibft::render::to_text(&found, args.show_secrets, args.verbose)
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush())
    {
        eprintln!("sanroot: cannot write output: {e}");
        return exit::FAILURE;
    }

    // Problems go to stderr too in the machine-readable modes, so a script
    // that only reads stdout still leaves a trace in its log.
    let errors = found.ibft.errors().count();
    if args.json || args.netroot {
        for p in found
            .ibft
            .problems
            .iter()
            .filter(|p| p.severity >= Severity::Warning)
        {
            eprintln!("sanroot: {p}");
        }
    }
    if errors > 0 {
        eprintln!(
            "sanroot: {errors} part(s) of the table were rejected (listed above); the rest was used"
        );
        if args.strict {
            return exit::INVALID_IBFT;
        }
    }
    exit::OK
}
