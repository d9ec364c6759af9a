//! Replays the fuzz corpora kept in git through the fuzz targets' checks:
//! every file under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`
//! goes to the same function the fuzz target `<target>` calls (the checks
//! live in `fuzz/src/lib.rs`, included here), so an input that crashed once
//! keeps being tried by a plain `cargo test`, without cargo-fuzz.
//!
//! A crash input whose bug is not fixed yet is listed in [`KNOWN_BUGS`] and
//! has its own `#[ignore]`d test; fixing the bug means deleting both the
//! entry and the `#[ignore]`.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

/// Inputs under `fuzz/regressions/` that still fail: (target, file name).
/// Each bug has an `#[ignore]`d test below.
const KNOWN_BUGS: &[(&str, &str)] = &[];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every (target, file) under `fuzz/<kind>/<target>/`, sorted.
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let root = fuzz_dir().join(kind);
    let mut out = Vec::new();
    let Ok(dirs) = fs::read_dir(&root) else {
        return out;
    };
    for dir in dirs {
        let dir = dir.expect("read_dir entry").path();
        if !dir.is_dir() {
            continue;
        }
        let target = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 target directory name")
            .to_string();
        for f in fs::read_dir(&dir).expect("read target directory") {
            let f = f.expect("read_dir entry").path();
            if f.is_file() {
                out.push((target.clone(), f));
            }
        }
    }
    out.sort();
    out
}

/// Run `target`'s check on `file`; the panic message if it fails.
fn replay(target: &str, file: &Path) -> Result<(), String> {
    let check = checks::check_for(target)
        .unwrap_or_else(|| panic!("{}: no fuzz target named {target}", file.display()));
    let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    panic::catch_unwind(|| check(&data)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("non-string panic");
        format!("{}: {msg}", file.display())
    })
}

/// Replay every input of `kind`, skipping known bugs; report all failures.
fn replay_all(kind: &str) -> usize {
    let all = inputs(kind);
    let mut failures = Vec::new();
    let mut ran = 0;
    for (target, file) in &all {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if KNOWN_BUGS.contains(&(target.as_str(), name)) {
            continue;
        }
        ran += 1;
        if let Err(e) = replay(target, file) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} {kind} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    ran
}

#[test]
fn seeds_pass_their_checks() {
    let ran = replay_all("seeds");
    assert!(ran > 0, "no seeds found under {}", fuzz_dir().display());
    // Every fuzz target has seeds.
    let with_seeds: Vec<String> = inputs("seeds").into_iter().map(|(t, _)| t).collect();
    for (target, _) in checks::TARGETS {
        assert!(
            with_seeds.iter().any(|t| t == target),
            "fuzz target {target} has no seeds under fuzz/seeds/{target}/"
        );
    }
}

#[test]
fn fixed_crashes_stay_fixed() {
    replay_all("regressions");
}

#[test]
fn known_bugs_have_their_inputs() {
    for (target, name) in KNOWN_BUGS {
        let f = fuzz_dir().join("regressions").join(target).join(name);
        assert!(f.is_file(), "{} missing", f.display());
    }
}

/// The one seed that carries the right mutual CHAP answer is accepted
/// (so the check really reaches the success path), its forged twin not.
#[test]
fn chap_seeds_reach_both_verdicts() {
    use sanroot::iscsi::chap::{AuthConfig, ChapInitiator, MutualChallenge, MutualConfig};
    use sanroot::iscsi::text::TextKeys;
    use sanroot::secret::Secret;

    let verdict = |name: &str| {
        let data = fs::read(fuzz_dir().join("seeds/chap").join(name)).expect("seed");
        let (challenge, response) =
            data[1..].split_at(data[1..].iter().position(|&b| b == 0xff).expect("0xff"));
        let config = AuthConfig {
            user: checks::INITIATOR.to_string(),
            secret: Secret::new(checks::CHAP_SECRET.to_vec()),
            mutual: Some(MutualConfig {
                target_name: Some(checks::TARGET.to_string()),
                secret: Secret::new(checks::TARGET_SECRET.to_vec()),
            }),
        };
        let ours = MutualChallenge {
            id: checks::OUR_ID,
            challenge: checks::OUR_CHALLENGE,
        };
        let mut c = ChapInitiator::with_challenge(config, ours).expect("config");
        c.start().expect("start");
        c.on_challenge(&TextKeys::parse(challenge).expect("challenge keys"))
            .expect("challenge answered");
        c.on_target_response(&TextKeys::parse(&response[1..]).expect("response keys"))
    };
    assert_eq!(verdict("mutual_good"), Ok(()));
    assert!(verdict("mutual_forged").is_err());
}

/// Replay one input under `fuzz/regressions/`, panicking like the fuzzer.
fn regression(target: &str, name: &str) {
    let f = fuzz_dir().join("regressions").join(target).join(name);
    if let Err(e) = replay(target, &f) {
        panic!("{e}");
    }
}

/// `parse_target_address("::%]")` accepts a bare IPv6 address whose zone
/// ends in `]`; `Portal`'s Display writes `[::%]]:3260,1`, which does not
/// parse back ("unexpected text after ']'").
#[test]

fn target_address_zone_with_bracket() {
    regression("text_keys", "target-address-zone-bracket");
    regression("text_keys", "send-targets-zone-bracket");
}

/// We offer ImmediateData=No; a target that does not answer it (or
/// answers Irrelevant) leaves `Negotiated::immediate_data` at the RFC
/// default Yes, a result AND can never give: the session would then send
/// immediate data the target never agreed to.
#[test]

fn unanswered_immediate_data_stays_no() {
    regression("negotiate", "unanswered-immediate-data");
    regression("negotiate", "unanswered-immediate-data-min");
    regression("negotiate", "immediate-data-irrelevant");
}
