//! The checks behind every fuzz target, shared with
//! `tests/fuzz_regressions.rs` (which includes this file with `#[path]`),
//! so a crash input replayed by `cargo test` runs exactly the code the
//! fuzzer ran.
//!
//! Each check takes the raw fuzz input, must never panic on any input, and
//! asserts invariants beyond "no panic": parse/emit round trips, bounds,
//! agreement between related entry points. Where a first byte selects a
//! variant, the rest is the data under test. Where one input carries
//! several segments (login rounds, challenge and response), they are
//! separated by 0xff, a byte that never occurs in UTF-8 text.

use sanroot::boot::rootdev::{self, RootSpec};
use sanroot::boot::{cmdline, init, modules, parts};
use sanroot::ibft::emit::{Layout, emit};
use sanroot::ibft::source::{Found, SourceKind, scan_region};
use sanroot::ibft::{ParseOptions, parse, render};
use sanroot::iscsi::chap::{
    self, AuthConfig, ChapInitiator, MutualChallenge, MutualConfig, chap_response,
};
use sanroot::iscsi::conn::{ConnError, FrameParams, PduReader};
use sanroot::iscsi::negotiate::{DigestOffer, OperationalParams, SessionType};
use sanroot::iscsi::pdu::{BHS_LEN, Bhs, Framing, Pdu, PduError, Stage};
use sanroot::iscsi::text::{
    self, DiscoveredTarget, MAX_KEY_LEN, MAX_PAIRS, MAX_VALUE_LEN, TextError, TextKeys, encode_hex,
    parse_binary, parse_bool, parse_list, parse_number, parse_send_targets, parse_target_address,
};
use sanroot::scsi::alua::{AccessState, TargetPortGroups};
use sanroot::scsi::data::{
    BlockLimits, DeviceId, Inquiry, LogicalBlockProvisioning, ModeSense, ReadCapacity10,
    ReadCapacity16, ReportLuns, SupportedPages, UnitSerial, lun_number, lun_to_bytes,
};
use sanroot::scsi::sense::{Disposition, Sense, Status, disposition};
use sanroot::secret::Secret;

/// A fuzz target's check: panics on a bug.
pub type Check = fn(&[u8]);

/// Every target: its name (the fuzz target, the directory under
/// `fuzz/seeds/` and `fuzz/regressions/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("ibft_parse", ibft_parse),
    ("pdu_parse", pdu_parse),
    ("conn_reader", conn_reader),
    ("text_keys", text_keys),
    ("negotiate", negotiate),
    ("chap", chap),
    ("scsi_parse", scsi_parse),
    ("boot_parse", boot_parse),
    ("root_probe", root_probe),
    ("login_exchange", login_exchange),
    ("ffp_reader", ffp_reader),
    ("netlink_parse", netlink_parse),
];

/// The check for a target name.
pub fn check_for(target: &str) -> Option<Check> {
    TARGETS.iter().find(|(n, _)| *n == target).map(|(_, f)| *f)
}

/// The segments of an input separated by 0xff.
fn segments(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == 0xff)
}

// ---------------------------------------------------------------------------
// ibft_parse
// ---------------------------------------------------------------------------

/// The raw iBFT parser, the memory scan and the renderers. The first byte
/// picks the checksum policy; the rest is the table. Whatever parses can
/// be rendered, every problem points inside the table, and a parsed table
/// re-emitted and re-parsed keeps its targets.
pub fn ibft_parse(data: &[u8]) {
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
}

// ---------------------------------------------------------------------------
// pdu_parse
// ---------------------------------------------------------------------------

/// What must survive `to_bytes` + `parse`. The NSG field of a Login
/// request/response is reserved when T=0 (RFC 7143 §11.12.3, §11.13.3):
/// `emit` writes 0 there, so it is compared only when T=1.
fn pdu_canonical(p: &Pdu) -> Pdu {
    let mut p = p.clone();
    match &mut p {
        Pdu::LoginRequest(l) if !l.transit => l.nsg = Stage::Security,
        Pdu::LoginResponse(l) if !l.transit => l.nsg = Stage::Security,
        _ => {}
    }
    p
}

/// `Pdu::parse` and `Pdu::parse_from_target` agree; whatever parses is
/// emitted and parsed back to the same value, emitting is idempotent, and
/// the data segment length survives.
pub fn pdu_parse(data: &[u8]) {
    let any = Pdu::parse(data);
    let from_target = Pdu::parse_from_target(data);
    match (&any, &from_target) {
        (Ok(p), Ok(q)) => {
            assert_eq!(p, q);
            assert!(!p.opcode().is_initiator());
            assert!(p.target_sn().is_some());
        }
        (Ok(p), Err(PduError::WrongDirection(op))) => {
            assert_eq!(p.opcode(), *op);
            assert!(op.is_initiator());
        }
        (Err(e), Err(f)) => assert_eq!(e, f),
        (a, b) => panic!("parse {a:?} but parse_from_target {b:?}"),
    }
    if data.len() < BHS_LEN {
        assert_eq!(any, Err(PduError::Truncated(data.len())));
    }
    let p = match any {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = p.to_string();
    let bytes = p.to_bytes(0);
    let back = Pdu::parse(&bytes).expect("an emitted PDU parses");
    assert_eq!(
        pdu_canonical(&back),
        pdu_canonical(&p),
        "PDU changed in emit/parse"
    );
    assert_eq!(back.to_bytes(0), bytes, "emit is not idempotent");
    // The data segment length of the input, as the header declares it.
    let data_len = Framing::of(&Bhs::new_unchecked(data)).data_len;
    let with_len = p.to_bytes(data_len);
    let framing = Framing::of(&Bhs::new_unchecked(&with_len[..]));
    assert_eq!(framing.data_len, data_len);
    assert_eq!(framing.ahs_len, 0);
    assert_eq!(
        pdu_canonical(&Pdu::parse(&with_len).expect("an emitted PDU parses")),
        pdu_canonical(&p)
    );
}

// ---------------------------------------------------------------------------
// conn_reader
// ---------------------------------------------------------------------------

/// First byte: bit 0 header digest, bit 1 data digest, bit 2 a 256 KiB
/// (else 8 KiB) maximum data segment, bits 3..8 how each PDU's data is
/// consumed (two bits per PDU, cycling): read into a vector, skipped,
/// read into a buffer of the wrong length, or left for `read_header` to
/// skip. The rest is the byte stream from the target.
pub fn conn_reader(data: &[u8]) {
    let Some((&cfg, stream)) = data.split_first() else {
        return;
    };
    let params = FrameParams {
        header_digest: cfg & 1 != 0,
        data_digest: cfg & 2 != 0,
        max_recv_data_segment: if cfg & 4 != 0 { 262_144 } else { 8192 },
    };
    let mut r = PduReader::new(stream, params);
    let mut headers = 0usize;
    loop {
        let h = match r.read_header() {
            Ok(h) => h,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        };
        headers += 1;
        // Every header consumed at least its 48 bytes: the loop ends.
        assert!(headers * BHS_LEN <= stream.len(), "more headers than bytes");
        assert!(h.data_len <= params.max_recv_data_segment);
        assert_eq!(
            Framing::of(&Bhs::new_unchecked(&h.raw[..])).data_len,
            h.data_len
        );
        assert_eq!(
            Pdu::parse_from_target(&h.raw).as_ref(),
            Ok(&h.pdu),
            "header value differs from its raw bytes"
        );
        let mode = (cfg >> (3 + 2 * (headers % 3))) & 3;
        let res = match mode {
            0 => r.read_data_vec().map(|v| assert_eq!(v.len(), h.data_len)),
            1 => r.skip_data(),
            2 => {
                let mut wrong = vec![0u8; h.data_len + 1];
                match r.read_data(&mut wrong) {
                    // A mismatch consumes the segment and keeps framing.
                    Err(ConnError::LengthMismatch { len, buffer, .. }) => {
                        assert_eq!(len, h.data_len);
                        assert_eq!(buffer, wrong.len());
                        Ok(())
                    }
                    Ok(()) => panic!("a {}-byte buffer took {} bytes", wrong.len(), h.data_len),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(()),
        };
        if let Err(e) = res {
            let _ = e.to_string();
            break;
        }
    }
}

// ---------------------------------------------------------------------------
// text_keys
// ---------------------------------------------------------------------------

/// The value decoders on one key=value pair: whatever decodes re-encodes
/// to the same value.
fn check_value(key: &str, value: &str) {
    if let Ok(n) = parse_number(key, value) {
        assert_eq!(parse_number(key, &n.to_string()), Ok(n));
        assert_eq!(parse_number(key, &format!("0x{n:x}")), Ok(n));
        assert_eq!(parse_number(key, &format!("0X{n:X}")), Ok(n));
    }
    if let Ok(b) = parse_bool(key, value) {
        assert_eq!(parse_bool(key, text::format_bool(b)), Ok(b));
    }
    if let Ok(items) = parse_list(key, value) {
        assert!(items.iter().all(|i| !i.is_empty()));
        assert_eq!(items.join(","), value);
    }
    for max in [1, 16, 1024] {
        match parse_binary(key, value, max) {
            Ok(b) => {
                assert!(!b.is_empty() && b.len() <= max, "{} bytes", b.len());
                assert_eq!(parse_binary(key, &encode_hex(&b), max), Ok(b));
            }
            Err(e) => {
                let _ = e.to_string();
                // A CHAP_R value is never shown, not even in an error.
                assert!(key != "CHAP_R" || e.value.ends_with("bytes, not shown>"));
            }
        }
    }
    match parse_target_address(value) {
        Ok(p) => {
            assert!(!p.host.is_empty() && p.port != 0);
            let again = p.to_string();
            assert_eq!(
                parse_target_address(&again).as_ref(),
                Ok(&p),
                "TargetAddress {value:?} shown as {again:?} does not parse back"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The pairs of a parsed segment are what `parse_multi` promises.
fn check_pairs(keys: &TextKeys) {
    assert!(keys.len() <= MAX_PAIRS);
    for (k, v) in keys.iter() {
        assert!(!k.is_empty() && k.len() <= MAX_KEY_LEN);
        assert!(k.bytes().all(|b| b.is_ascii_graphic() && b != b'='));
        assert!(v.len() <= MAX_VALUE_LEN && !v.contains('\0'));
    }
}

/// First byte: unused (room for variants). The rest: a data segment for
/// `parse_multi`/`parse`/`parse_send_targets`, and as one string for the
/// value decoders.
pub fn text_keys(data: &[u8]) {
    let Some((_, seg)) = data.split_first() else {
        return;
    };
    match TextKeys::parse_multi(seg) {
        Ok(keys) => {
            check_pairs(&keys);
            let bytes = keys.to_bytes();
            assert_eq!(bytes.len(), keys.buffer_len());
            assert_eq!(TextKeys::parse_multi(&bytes).as_ref(), Ok(&keys));
            let _ = format!("{keys:?} {keys}");
            match TextKeys::parse(seg) {
                Ok(unique) => {
                    assert_eq!(unique, keys);
                    assert_eq!(TextKeys::parse(&bytes).as_ref(), Ok(&keys));
                }
                Err(TextError::DuplicateKey { .. }) => {}
                Err(e) => panic!("parse_multi accepted what parse refuses with {e:?}"),
            }
            for (k, v) in keys.iter() {
                assert_eq!(keys.get(k).is_some(), keys.contains(k));
                check_value(k, v);
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(TextKeys::parse(seg).is_err());
        }
    }
    if let Ok(targets) = parse_send_targets(seg) {
        let mut again = TextKeys::new();
        for t in &targets {
            assert!(!t.name.is_empty());
            again.push("TargetName", t.name.as_str());
            for p in &t.portals {
                again.push("TargetAddress", p.to_string());
            }
        }
        {
            let back: Result<Vec<DiscoveredTarget>, _> = parse_send_targets(&again.to_bytes());
            assert_eq!(
                back.as_ref(),
                Ok(&targets),
                "SendTargets re-emitted differs"
            );
        }
    }
    if let Ok(s) = std::str::from_utf8(seg) {
        check_value("X", s);
        check_value("CHAP_R", s);
    }
}

// ---------------------------------------------------------------------------
// negotiate
// ---------------------------------------------------------------------------

pub const INITIATOR: &str = "iqn.2026-11.org.sanroot:fuzz";
pub const TARGET: &str = "iqn.2026-11.org.sanroot:disk0";

/// First byte: our offer (bits 0-1 HeaderDigest, 2-3 DataDigest, 4
/// InitialR2T=Yes, 5 ImmediateData=No, 6 a Discovery session). The rest:
/// login response segments separated by 0xff, each fed to
/// `Negotiated::receive` until one is refused.
pub fn negotiate(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let digest = |b: u8| match b & 3 {
        0 => DigestOffer::None,
        1 => DigestOffer::PreferCrc32c,
        _ => DigestOffer::RequireCrc32c,
    };
    let mut ours = OperationalParams::new(INITIATOR);
    ours.target_name = Some(TARGET.to_string());
    ours.header_digest = digest(cfg);
    ours.data_digest = digest(cfg >> 2);
    ours.initial_r2t = cfg & 0x10 != 0;
    ours.immediate_data = cfg & 0x20 == 0;
    let session = if cfg & 0x40 != 0 {
        SessionType::Discovery
    } else {
        SessionType::Normal
    };
    let mut n = ours.start(session).expect("our parameters are valid");
    for seg in segments(rest) {
        let Ok(keys) = TextKeys::parse(seg) else {
            continue;
        };
        match n.receive(&keys) {
            Ok(reply) => {
                // Answers only to keys the target sent, each once, and
                // never a special value as a key.
                let bytes = reply.to_bytes();
                assert_eq!(TextKeys::parse(&bytes).as_ref(), Ok(&reply));
                for (k, v) in reply.iter() {
                    assert!(keys.contains(k), "answered {k}, which was not sent");
                    assert!(!v.is_empty());
                }
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
    let _ = n.unanswered();
    n.finish();
    let _ = n.to_string();
    assert!(n.max_send_data_segment_length >= 512);
    assert!(n.max_send_data_segment_length < 1 << 24);
    assert_eq!(
        n.max_recv_data_segment_length,
        ours.max_recv_data_segment_length
    );
    // FirstBurstLength only matters (and is only used) when unsolicited
    // data can be sent; then it must not exceed MaxBurstLength.
    if n.first_burst_relevant() {
        assert!(
            n.first_burst_length <= n.max_burst_length,
            "FirstBurstLength {} > MaxBurstLength {}",
            n.first_burst_length,
            n.max_burst_length
        );
    }
    assert!(n.first_burst_length >= 512 && n.max_burst_length >= 512);
    assert!(n.max_burst_length <= ours.max_burst_length.max(262_144));
    assert!(n.first_burst_length <= ours.first_burst_length.max(65_536));
    assert_eq!(n.error_recovery_level, 0);
    assert_eq!(n.max_connections, 1);
    assert_eq!(n.max_outstanding_r2t, 1);
    assert!(n.default_time2wait <= 3600 && n.default_time2retain <= 3600);
    assert!(!n.header_digest || ours.header_digest != DigestOffer::None);
    assert!(!n.data_digest || ours.data_digest != DigestOffer::None);
    assert!(
        !n.immediate_data || ours.immediate_data,
        "ImmediateData=Yes negotiated though we offered No"
    );
    assert!(n.initial_r2t || !ours.initial_r2t);
    assert!(n.data_pdu_in_order && n.data_sequence_in_order);
    assert!(n.target_alias.as_ref().is_none_or(|a| a.len() <= 255));
}

// ---------------------------------------------------------------------------
// chap
// ---------------------------------------------------------------------------

pub const CHAP_SECRET: &[u8] = b"initiator-secret-0123";
pub const TARGET_SECRET: &[u8] = b"target-secret-456789";
/// Our fixed mutual challenge (the library draws a random one; a fixed one
/// keeps runs reproducible).
pub const OUR_ID: u8 = 0x2a;
pub const OUR_CHALLENGE: [u8; 16] = *b"sanroot-fuzz-chl";
/// A challenge "sent on an earlier connection" when bit 2 is set.
const EARLIER_CHALLENGE: &[u8] = &[0xde, 0xad, 0xbe, 0xef];

/// First byte: bit 0 mutual CHAP, bit 1 a required target CHAP_N, bit 2
/// an earlier challenge to refuse. The rest: the target's challenge keys
/// (CHAP_A, CHAP_I, CHAP_C) and, after 0xff, its response keys (CHAP_N,
/// CHAP_R). A target response is accepted only if it is the right one.
pub fn chap(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let mutual = cfg & 1 != 0;
    let config = AuthConfig {
        user: INITIATOR.to_string(),
        secret: Secret::new(CHAP_SECRET.to_vec()),
        mutual: mutual.then(|| MutualConfig {
            target_name: (cfg & 2 != 0).then(|| TARGET.to_string()),
            secret: Secret::new(TARGET_SECRET.to_vec()),
        }),
    };
    let ours = MutualChallenge {
        id: OUR_ID,
        challenge: OUR_CHALLENGE,
    };
    let mut c = ChapInitiator::with_challenge(config, ours).expect("valid CHAP config");
    if cfg & 4 != 0 {
        c.remember_sent_challenge(EARLIER_CHALLENGE);
    }
    let mut parts = rest.splitn(2, |&b| b == 0xff);
    let challenge = parts.next().unwrap_or_default();
    let response = parts.next().unwrap_or_default();

    let first = c.start().expect("start");
    assert_eq!(first.get("CHAP_A"), Some(chap::CHAP_A_MD5));
    assert!(c.start().is_err(), "start twice");
    assert!(!c.is_done());

    let Ok(ck) = TextKeys::parse(challenge) else {
        return;
    };
    // No error or Debug output shows a secret (unless the target itself
    // sent it in a value, which errors may echo).
    let no_secret = |s: String| {
        for secret in [CHAP_SECRET, TARGET_SECRET] {
            let has = |b: &[u8]| b.windows(secret.len()).any(|w| w == secret);
            assert!(!has(s.as_bytes()) || has(data), "secret shown: {s}");
        }
    };
    match c.on_challenge(&ck) {
        Ok(out) => {
            let id = parse_number("CHAP_I", ck.get("CHAP_I").expect("CHAP_I was required"))
                .expect("CHAP_I parsed");
            let id = u8::try_from(id).expect("CHAP_I below 256");
            let their = parse_binary("CHAP_C", ck.get("CHAP_C").expect("CHAP_C"), 1024)
                .expect("CHAP_C parsed");
            assert!(their.as_slice() != OUR_CHALLENGE.as_slice() || !mutual);
            assert!(their.as_slice() != EARLIER_CHALLENGE || cfg & 4 == 0);
            let want = chap_response(id, &Secret::new(CHAP_SECRET.to_vec()), &their);
            assert_eq!(out.get("CHAP_N"), Some(INITIATOR));
            assert_eq!(out.get("CHAP_R"), Some(encode_hex(&want).as_str()));
            if mutual {
                assert!(!c.is_done());
                assert_eq!(out.get("CHAP_I"), Some(OUR_ID.to_string().as_str()));
                assert_eq!(out.get("CHAP_C"), Some(encode_hex(&OUR_CHALLENGE).as_str()));
            } else {
                assert!(c.is_done());
            }
            // CHAP_R never shows in logs.
            let r = encode_hex(&want);
            assert!(!format!("{out:?} {out}").contains(&r[2..]));
        }
        Err(e) => {
            assert!(!c.is_done());
            no_secret(format!("{e} {e:?} {c:?}"));
            return;
        }
    }
    let Ok(rk) = TextKeys::parse(response) else {
        return;
    };
    let verdict = c.on_target_response(&rk);
    match (&verdict, mutual) {
        (Ok(()), true) => {
            // Only the right answer passes: MD5(our id, target secret, our
            // challenge), under the configured name when one is required.
            let got = parse_binary("CHAP_R", rk.get("CHAP_R").expect("CHAP_R"), 1024)
                .expect("CHAP_R parsed");
            let want = chap_response(OUR_ID, &Secret::new(TARGET_SECRET.to_vec()), &OUR_CHALLENGE);
            assert_eq!(got.as_slice(), want.as_slice(), "forged CHAP_R accepted");
            if cfg & 2 != 0 {
                assert_eq!(rk.get("CHAP_N"), Some(TARGET));
            }
            assert!(c.is_done());
        }
        (Ok(()), false) => assert!(c.is_done()),
        (Err(e), true) => {
            assert!(!c.is_done());
            no_secret(format!("{e} {e:?}"));
        }
        (Err(e), false) => panic!("one-way CHAP refused the target's last answer: {e}"),
    }
}

// ---------------------------------------------------------------------------
// scsi_parse
// ---------------------------------------------------------------------------

/// Every status byte `disposition` distinguishes.
const STATUSES: [u8; 9] = [0x00, 0x02, 0x04, 0x08, 0x18, 0x28, 0x30, 0x40, 0x22];

fn check_sense(buf: &[u8], status: Status) {
    let _ = disposition(status, None);
    let Ok(s) = Sense::parse(buf) else {
        return;
    };
    let _ = (s.to_string(), s.description());
    for st in STATUSES.map(Status::from_u8).into_iter().chain([status]) {
        let d = disposition(st, Some(&s));
        match st {
            Status::Good | Status::ConditionMet => assert_eq!(d, Disposition::Done),
            Status::CheckCondition if s.deferred => assert_eq!(d, Disposition::Fatal),
            _ => {}
        }
    }
    assert!((0x70..=0x73).contains(&s.response_code));
    if let Some(sks) = s.sense_key_specific {
        let _ = (sks.field_pointer(), sks.progress());
    }
    let mut out = Vec::new();
    s.emit(&mut out);
    let back = Sense::parse(&out).expect("emitted sense parses");
    let norm = |s: &Sense| Sense {
        truncated: false,
        ..s.clone()
    };
    assert_eq!(norm(&back), norm(&s), "sense changed in emit/parse");
    assert!(!back.truncated);
}

fn check_data(buf: &[u8]) {
    if let Ok(i) = Inquiry::parse(buf) {
        let _ = (i.to_string(), i.peripheral.name(), i.peripheral.is_disk());
        let mut out = Vec::new();
        i.emit(&mut out);
        assert_eq!(out.len(), 36);
        let back = Inquiry::parse(&out).expect("emitted INQUIRY parses");
        assert_eq!(
            back,
            Inquiry {
                additional_len: 31,
                ..i.clone()
            }
        );
    }
    if let Ok(p) = SupportedPages::parse(buf) {
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(SupportedPages::parse(&out).as_ref(), Ok(&p));
    }
    if let Ok(p) = UnitSerial::parse(buf) {
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(UnitSerial::parse(&out).as_ref(), Ok(&p));
    }
    if let Ok(p) = DeviceId::parse(buf) {
        for d in &p.designators {
            let _ = (d.to_string(), d.id_string(), d.port_or_group());
        }
        if let Some(id) = p.lu_id() {
            assert!(!id.is_empty());
        }
        let mut out = Vec::new();
        p.emit(&mut out);
        let back = DeviceId::parse(&out).expect("emitted 0x83 parses");
        assert_eq!(back, p);
        assert_eq!(back.lu_id(), p.lu_id());
    }
    if let Ok(p) = BlockLimits::parse(buf) {
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(BlockLimits::parse(&out).as_ref(), Ok(&p));
    }
    if let Ok(p) = LogicalBlockProvisioning::parse(buf) {
        let _ = (p.unmapped_reads_zero(), p.provisioning_type.name());
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(LogicalBlockProvisioning::parse(&out).as_ref(), Ok(&p));
    }
    if let Ok(p) = ReadCapacity10::parse(buf) {
        match p.capacity() {
            Ok(c) => {
                assert!(!p.needs_16());
                assert_eq!(c.blocks, u64::from(p.last_lba) + 1);
                assert!(c.block_size != 0);
                let _ = (c.to_string(), c.bytes(), c.physical_block_size());
            }
            Err(e) => assert!(p.needs_16() || p.block_len == 0, "{e}"),
        }
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(ReadCapacity10::parse(&out).as_ref(), Ok(&p));
    }
    if let Ok(p) = ReadCapacity16::parse(buf) {
        match p.capacity() {
            Ok(c) => {
                assert_eq!(c.blocks, p.last_lba + 1);
                assert!(c.block_size != 0);
                let _ = (c.to_string(), c.bytes(), c.physical_block_size());
            }
            Err(e) => assert!(p.last_lba == u64::MAX || p.block_len == 0, "{e}"),
        }
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(ReadCapacity16::parse(&out).as_ref(), Ok(&p));
    }
    if let Ok(r) = ReportLuns::parse(buf) {
        assert!(r.luns.len() * 8 <= buf.len() - ReportLuns::HEADER_LEN);
        assert!(r.luns.len() as u64 * 8 <= u64::from(r.list_len));
        let _ = r.alloc_len_needed();
        for lun in &r.luns {
            assert_eq!(lun.number, lun_number(&lun.raw));
            let _ = lun.to_string();
            // lun_to_bytes inverts lun_number except on 0x4000..=0x7fff
            // (documented: the flat encoding of n - 0x4000).
            if !(0x4000..=0x7fff).contains(&lun.number) {
                assert_eq!(lun_number(&lun_to_bytes(lun.number)), lun.number);
            }
        }
        let mut out = Vec::new();
        r.emit(&mut out);
        let back = ReportLuns::parse(&out).expect("emitted REPORT LUNS parses");
        assert_eq!(back.luns, r.luns);
        assert!(!back.truncated);
    }
    if let Ok(t) = TargetPortGroups::parse(buf) {
        assert!(t.alloc_len_needed() >= 4);
        for g in &t.groups {
            let _ = (g.state.name(), g.state.serves_io());
            assert_eq!(AccessState::from_u8(g.state.to_u8()), g.state);
        }
        let mut out = Vec::new();
        t.emit(&mut out);
        let back = TargetPortGroups::parse(&out).expect("emitted RTPG data parses");
        assert_eq!(back.groups, t.groups);
        assert_eq!(back.transition_time, t.transition_time);
        assert!(!back.truncated);
    }
    let mode_norm = |m: &ModeSense| {
        (
            m.medium_type,
            m.device_specific,
            m.long_lba,
            m.block_descriptors.clone(),
            m.pages.clone(),
            m.caching,
        )
    };
    if let Ok(m) = ModeSense::parse_6(buf) {
        let _ = (m.write_protected(), m.dpofua());
        let mut out = Vec::new();
        m.emit_6(&mut out);
        let back = ModeSense::parse_6(&out).expect("emitted MODE SENSE(6) parses");
        assert_eq!(mode_norm(&back), mode_norm(&m));
        assert!(!back.truncated);
    }
    if let Ok(m) = ModeSense::parse_10(buf) {
        let mut out = Vec::new();
        m.emit_10(&mut out);
        let back = ModeSense::parse_10(&out).expect("emitted MODE SENSE(10) parses");
        assert_eq!(mode_norm(&back), mode_norm(&m));
        assert!(!back.truncated);
    }
}

/// First byte: the status byte for `disposition`. The rest goes to every
/// parser (sense, INQUIRY, each VPD page, READ CAPACITY, REPORT LUNS,
/// MODE SENSE); each result is emitted and parsed back.
pub fn scsi_parse(data: &[u8]) {
    let Some((&status, buf)) = data.split_first() else {
        return;
    };
    check_sense(buf, Status::from_u8(status));
    check_data(buf);
}

// ---------------------------------------------------------------------------
// boot_parse
// ---------------------------------------------------------------------------

/// What `sanroot boot` reads that someone else wrote. First byte bit 1
/// set: the rest is a kernel command line (dracut's netroot=, ip=,
/// rd.iscsi.*, open-iscsi's iscsi_*), parsed and turned into boot paths;
/// errors must render. With bit 2 too, an /etc/iscsi.initramfs, a NUL,
/// then the command line.
/// Otherwise the boot disk's partition table (from the target: hostile):
/// bit 0 picks the block size (512 or 4096), the rest is the disk's first
/// bytes; every partition number found is one the kernel could create
/// (1..=1024 for GPT, 1..=4 for MBR), in increasing order.
pub fn boot_parse(data: &[u8]) {
    let Some((&sel, head)) = data.split_first() else {
        return;
    };
    if sel & 2 != 0 {
        let text = String::from_utf8_lossy(head);
        // Bit 2: the text before the first NUL is Debian open-iscsi's
        // /etc/iscsi.initramfs, its settings the command line's defaults.
        let parsed = if sel & 4 != 0 {
            let (file, line) = text.split_once('\0').unwrap_or((&text, ""));
            match cmdline::parse_open_iscsi_initramfs(file) {
                Ok(f) => cmdline::parse_with_defaults(cmdline::OPEN_ISCSI_FILE, &f.words, line),
                Err(e) => {
                    assert!(!e.is_empty());
                    return;
                }
            }
        } else {
            cmdline::parse(&text)
        };
        match parsed {
            Ok(c) => {
                let _ = c.wants_iscsi();
                if let Err(e) = c.boot_paths() {
                    assert!(!e.to_string().is_empty());
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        return;
    }
    let bs = if sel & 1 == 0 { 512 } else { 4096 };
    let t = parts::expected(head, bs);
    let nums = t.numbers();
    assert!(
        nums.windows(2).all(|w| w[0] < w[1]),
        "partition numbers out of order"
    );
    match &t {
        parts::Table::Mbr(v) => assert!(v.iter().all(|n| (1..=4).contains(n))),
        parts::Table::Gpt(v) => assert!(v.iter().all(|n| (1..=1024).contains(n))),
        parts::Table::None => {}
    }
    for n in nums {
        let name = parts::part_name("ublkb0", *n);
        assert!(name.starts_with("ublkb0p"));
    }
}

/// `root_probe`: what the minimal initramfs's /init reads from disks and
/// the kernel. The first byte selects:
/// - bit 0 clear: the rest is a device's first bytes: the filesystem
///   probe (a UUID it reports is canonical, a label has no NUL, the type is
///   one mount(2) knows) and the partition entries (GPT entry numbers, the
///   MBR signature's PARTUUID form);
/// - bit 0 set: the rest is text for `root=` (a spec that parses prints
///   back to something that parses to the same spec), the command-line
///   options of /init, /proc/self/mountinfo, and a module list.
pub fn root_probe(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        if let Some(fs) = rootdev::probe(rest) {
            assert!(["ext2", "ext3", "ext4", "xfs", "btrfs"].contains(&fs.fstype));
            if let Some(u) = &fs.uuid {
                assert_eq!(u.len(), 36, "uuid {u:?}");
                assert!(
                    u.bytes()
                        .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                );
            }
            if let Some(l) = &fs.label {
                assert!(!l.contains('\0'));
            }
        }
        let bs = parts::gpt_block_size(rest).unwrap_or(512);
        for n in [1, 2, 128, 129] {
            if let Some(e) = parts::gpt_entry(rest, bs, n) {
                assert!(e.name.chars().count() <= 36);
            }
        }
        if let Some(sig) = parts::mbr_disk_signature(rest) {
            assert_eq!(parts::mbr_partuuid(sig, 1).len(), 11);
        }
        return;
    }
    let text = String::from_utf8_lossy(rest);
    if let Ok(spec) = RootSpec::parse(&text) {
        let again = RootSpec::parse(&spec.to_string());
        assert_eq!(again.as_ref(), Ok(&spec), "{spec} does not parse back");
    }
    if let Ok(o) = init::InitOptions::parse(&text) {
        assert!(o.retries >= 1);
        let _ = init::mount_flags(o.read_only, &o.rootflags);
    }
    for m in init::mounts_under(&text, "/oldroot") {
        assert!(m == "/oldroot" || m.starts_with("/oldroot/"));
    }
    if let Ok(list) = modules::parse_list(&text) {
        assert!(
            list.iter()
                .all(|l| !l.starts_with('/') && !l.split('/').any(|c| c == ".."))
        );
        for l in &list {
            let _ = modules::params_for(&modules::module_name(l), &cmdline::split_args(&text));
        }
    }
}

/// SIGPIPE ignored, as in sanroot's own binary (Rust's runtime does that
/// for a `main`; libFuzzer's C++ main does not): a write to a socket the
/// fuzzed peer closed must be an EPIPE error, not the end of the process.
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs the SIG_IGN disposition, no handler code runs.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigIgn,
            )
        };
    });
}

/// A peer on loopback that, once connected to, sends `stream`, closes its
/// sending side and reads until we close: a fuzzed target's whole answer,
/// there at once. Its address, and the thread to join.
fn fake_peer(stream: &[u8]) -> Option<(std::net::SocketAddr, std::thread::JoinHandle<()>)> {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    let addr = listener.local_addr().ok()?;
    let stream = stream.to_vec();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&stream);
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = [0u8; 4096];
            while s.read(&mut sink).is_ok_and(|n| n > 0) {}
        }
    });
    Some((addr, server))
}

// ---------------------------------------------------------------------------
// login_exchange
// ---------------------------------------------------------------------------

/// A whole login driven by what a target sends: the input after its first
/// byte is the target's side of the TCP stream, served over loopback by a
/// thread that writes it all and then closes its sending side. The first
/// byte picks the session (normal or discovery) and our credentials
/// (none, CHAP, mutual CHAP). The login must end (its deadline bounds it;
/// libFuzzer's -timeout catches a hang) with a result or an error that
/// can be printed and names no secret; it follows no redirection (a
/// fuzzed TargetAddress is never dialled).
pub fn login_exchange(data: &[u8]) {
    use sanroot::iscsi::login::{self, LoginConfig, Portal};
    use std::time::Duration;

    ignore_sigpipe();
    let Some((&cfg_byte, stream)) = data.split_first() else {
        return;
    };
    let Some((addr, server)) = fake_peer(stream) else {
        return;
    };
    let port = addr.port();
    let discovery = cfg_byte & 1 != 0;
    let mut params = OperationalParams::new("iqn.2026-11.org.sanroot.fuzz:initiator");
    if !discovery {
        params.target_name = Some("iqn.2026-11.org.sanroot.fuzz:target".into());
    }
    let session = if discovery {
        SessionType::Discovery
    } else {
        SessionType::Normal
    };
    let mut cfg = LoginConfig::new(params, session, [0x80, 1, 2, 3, 4, 5]);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.io_timeout = Duration::from_secs(2);
    cfg.max_redirects = 0;
    cfg.allow_no_auth = cfg_byte & 8 != 0;
    cfg.auth = match (cfg_byte >> 1) & 3 {
        0 => None,
        1 => Some(AuthConfig {
            user: "alice".into(),
            secret: Secret::from("alice-secret-12"),
            mutual: None,
        }),
        _ => Some(AuthConfig {
            user: "alice".into(),
            secret: Secret::from("alice-secret-12"),
            mutual: Some(MutualConfig {
                target_name: None,
                secret: Secret::from("target-secret-34"),
            }),
        }),
    };
    match login::login(&Portal::new("127.0.0.1", port), &cfg) {
        Ok(l) => drop(l),
        Err(e) => {
            let m = e.to_string();
            for secret in ["alice-secret-12", "target-secret-34"] {
                assert!(!m.contains(secret), "a secret in an error: {m}");
            }
        }
    }
    let _ = server.join();
}

// ---------------------------------------------------------------------------
// ffp_reader
// ---------------------------------------------------------------------------

/// The full-feature phase driven by what a target sends: a session
/// (Session::start, as after a login) on a loopback connection whose
/// target side writes the input after its first byte and closes. The first
/// byte turns the header and data digests on (bits 0 and 1). Three commands
/// are in flight: a 4 KiB READ (task tag 0x00010000), a 4 KiB WRITE
/// (0x00020001, by R2T or unsolicited data) and a TEST UNIT READY
/// (0x00030002). Every command completes (the session fails at the latest
/// when the stream ends), and a READ that completes GOOD received exactly
/// its transfer less the underflow it reported: no byte the target did
/// not send is handed back as data.
pub fn ffp_reader(data: &[u8]) {
    use sanroot::iscsi::session::{
        Command, DataDir, FfpParams, Residual, Session, SessionOptions, SnState,
    };
    use std::net::TcpStream;
    use std::sync::mpsc;
    use std::time::Duration;

    ignore_sigpipe();
    let Some((&cfg, stream)) = data.split_first() else {
        return;
    };
    let Some((addr, server)) = fake_peer(stream) else {
        return;
    };
    let Ok(socket) = TcpStream::connect(addr) else {
        return;
    };
    let params = FfpParams {
        header_digest: cfg & 1 != 0,
        data_digest: cfg & 2 != 0,
        max_recv_data_segment: 8192,
        max_send_data_segment: 8192,
        max_burst: 65536,
        first_burst: 2048,
        initial_r2t: cfg & 4 != 0,
        immediate_data: cfg & 8 != 0,
        max_outstanding_r2t: 1,
    };
    let frame = FrameParams {
        header_digest: params.header_digest,
        data_digest: params.data_digest,
        max_recv_data_segment: 8192,
    };
    let Ok(clone) = socket.try_clone() else {
        return;
    };
    let sn = SnState {
        cmd_sn: 1,
        exp_cmd_sn: 1,
        max_cmd_sn: 32,
        exp_stat_sn: 1,
    };
    let opts = SessionOptions {
        queue_depth: 4,
        nop_interval: None,
        nop_timeout: Duration::from_secs(2),
        cmd_timeout: Some(Duration::from_secs(2)),
        tmf_timeout: Duration::from_secs(1),
    };
    let Ok(session) = Session::start(socket, PduReader::new(clone, frame), params, sn, opts, None)
    else {
        return;
    };
    let (tx, rx) = mpsc::channel();
    let cmds = [
        (0x28u8, DataDir::Read(4096)),
        (0x2a, DataDir::Write(4096)),
        (0x00, DataDir::None),
    ];
    for (i, (op, dir)) in cmds.into_iter().enumerate() {
        let mut cdb = [0u8; 16];
        cdb[0] = op;
        if op != 0 {
            cdb[8] = 8; // 8 blocks of 512
        }
        let tx = tx.clone();
        let buf = vec![0xee; if op == 0 { 0 } else { 4096 }];
        session.submit(
            Command {
                lun: 0,
                cdb,
                dir,
                attr: 1,
            },
            buf,
            sanroot::completion::Done::new(move |r, b| {
                let _ = tx.send((i, r, b.len()));
            }),
        );
    }
    drop(tx);
    for _ in 0..3 {
        // Liveness, not speed: the stream is all there and then closed, so
        // anything near this long is a hang.
        let Ok((i, r, _len)) = rx.recv_timeout(Duration::from_secs(20)) else {
            panic!("a command never completed");
        };
        if let (0, Ok(res)) = (i, &r)
            && res.status == 0
        {
            let under = match res.residual {
                Residual::Under(n) => n as usize,
                _ => 0,
            };
            assert_eq!(
                res.data_in + under,
                4096,
                "a GOOD read with data the target did not account for: {res:?}"
            );
        }
        if let Err(e) = &r {
            let _ = e.to_string();
        }
    }
    drop(session);
    let _ = server.join();
}

// ---------------------------------------------------------------------------
// netlink_parse
// ---------------------------------------------------------------------------

/// Replies from the kernel over netlink, as NBD's generic-netlink family
/// and rtnetlink send them: the datagram splitters and every payload
/// parser. The first byte picks the reader; the rest is the datagram (or
/// the payload). Nothing may panic, and what parses stays within the
/// bytes it came from.
pub fn netlink_parse(data: &[u8]) {
    use sanroot::net::rtnl;
    use sanroot::netlink::{Reply, parse_attrs, parse_replies};

    let Some((&which, b)) = data.split_first() else {
        return;
    };
    match which % 4 {
        // A generic-netlink reply datagram (NBD's family, CTRL_CMD_GETFAMILY).
        0 => {
            if let Ok(replies) = parse_replies(b) {
                for r in replies {
                    if let Reply::Genl { attrs, .. } = r {
                        let total: usize = attrs.iter().map(|(_, v)| v.len()).sum();
                        assert!(total <= b.len(), "attributes longer than the datagram");
                        for (_, v) in &attrs {
                            let _ = parse_attrs(v);
                        }
                    }
                }
            }
        }
        // An rtnetlink datagram: each message by its type.
        1 => {
            if let Ok(msgs) = rtnl::split(b) {
                for m in &msgs {
                    let _ = rtnl::parse_error(m);
                    let _ = rtnl::parse_link(m.payload);
                    let _ = rtnl::parse_addr(m.payload);
                }
            }
        }
        // RTM_NEWLINK / RTM_NEWADDR payloads on their own.
        2 => {
            if let Ok(l) = rtnl::parse_link(b) {
                // The name is lossy UTF-8 (a bad byte becomes a 3-byte
                // U+FFFD): count characters, not bytes.
                assert!(l.name.chars().count() <= b.len() && l.address.len() <= b.len());
            }
            let _ = rtnl::parse_addr(b);
        }
        // Attributes and addresses.
        _ => {
            if let Ok(attrs) = parse_attrs(b) {
                let total: usize = attrs.iter().map(|(_, v)| v.len()).sum();
                assert!(total <= b.len(), "attributes longer than their bytes");
            }
            for family in [2u8, 10, 0] {
                let _ = rtnl::parse_ip(family, b);
            }
        }
    }
}
