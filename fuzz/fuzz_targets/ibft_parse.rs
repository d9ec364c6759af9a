//! Fuzz the raw iBFT parser, the memory scan and the renderers.
//!
//! Input: the first byte picks the checksum policy; the rest is the table.
//! Invariants checked beyond "no panic": whatever parses can be rendered,
//! every problem points inside the table, and a parsed table re-emitted and
//! re-parsed keeps its targets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sanroot::ibft::emit::{Layout, emit};
use sanroot::ibft::source::{Found, SourceKind, scan_region};
use sanroot::ibft::{ParseOptions, parse, render};

fuzz_target!(|data: &[u8]| {
    let Some((first, table)) = data.split_first() else {
        return;
    };
    let opts = ParseOptions {
        ignore_checksum: first & 1 == 1,
    };
    let _ = scan_region(table, 0x80000, opts);
    let Ok(ibft) = parse(table, opts) else {
        return;
    };
    for p in &ibft.problems {
        assert!(p.offset < table.len(), "problem outside the table: {p}");
    }
    let found = Found {
        kind: SourceKind::File,
        detail: String::new(),
        ibft,
    };
    let _ = render::to_json(&found, first & 2 == 2);
    let _ = render::to_text(&found, false, true);
    let _ = render::to_netroot(&found.ibft, false);
    let again = emit(&found.ibft, Layout::Ipxe);
    if again.len() > usize::from(u16::MAX) {
        // Shared strings can make the re-emitted table outgrow the u16
        // offsets; that is a limit of the test builder, not of the parser.
        return;
    }
    let back = parse(&again, ParseOptions::default()).expect("re-emitted table must parse");
    assert_eq!(back.targets.len(), found.ibft.targets.len());
});
