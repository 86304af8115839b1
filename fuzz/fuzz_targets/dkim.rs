//! DKIM (`dkim`): tag lists and key records parse or fail, never panic;
//! any message verifies to some outcome against a fixed key record, the
//! same however its bytes are split into reads; and a message we sign
//! (it has a From field) verifies as `pass` with our own key record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::trust::dkim::{
    generate_ed25519, parse_key_record, parse_tags, verify_message, LookupError, MessageHasher,
    Outcome, Signer, SigningKey, Status, Verifier,
};
use std::sync::OnceLock;

const NOW: u64 = 1_700_000_000;

/// One key per process: generating one per input would be most of the work.
fn key() -> &'static (Signer, String) {
    static KEY: OnceLock<(Signer, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = generate_ed25519().expect("generate a key");
        let key = SigningKey::from_pem("sel", &pem).expect("our own key parses");
        let record = key.dns_record();
        let signer = Signer {
            domain: "example.org".into(),
            keys: vec![key],
        };
        (signer, record)
    })
}

fn lookup(name: &str) -> Result<Vec<String>, LookupError> {
    match name {
        "sel._domainkey.example.org" => Ok(vec![key().1.clone()]),
        "temp._domainkey.example.org" => Err(LookupError::Temporary("timeout".into())),
        // Whatever the message names as its selector and domain: a record
        // made from the name, so odd names reach the key parser too.
        n if n.starts_with("rec") => Ok(vec![n.to_string(), "v=DKIM1; p=".into()]),
        _ => Err(LookupError::NotFound),
    }
}

fn verify_split(msg: &[u8], split: usize) -> Option<Vec<Outcome>> {
    let mut v = Verifier::new(NOW);
    for chunk in msg.chunks(split) {
        v.update(chunk).ok()?;
    }
    Some(
        v.finish()
            .into_iter()
            .map(|p| {
                let txt = match p.key_name() {
                    Some(n) => lookup(&n),
                    None => Err(LookupError::NotFound),
                };
                p.verify(txt)
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, msg)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(msg) {
        if let Ok(tags) = parse_tags(text) {
            for (i, (t, _)) in tags.iter().enumerate() {
                assert!(!tags[..i].iter().any(|(u, _)| u == t), "duplicate tag {t}");
            }
        }
        let _ = parse_key_record(text);
    }

    let whole = verify_message(msg, NOW, lookup).ok();
    let split = verify_split(msg, usize::from(split).max(1));
    assert_eq!(whole, split, "read sizes changed the verdict");

    // Sign it, then verify: must pass. (A message starting with white
    // space would continue our DKIM-Signature field instead.)
    if msg.first().is_some_and(|b| b.is_ascii_whitespace()) {
        return;
    }
    let mut h = MessageHasher::new();
    if h.update(msg).is_err() {
        return;
    }
    let (fields, bh) = h.finish();
    let Ok(hdr) = key().0.sign(&fields, &bh, NOW) else {
        return;
    };
    let mut signed = hdr.into_bytes();
    signed.extend_from_slice(msg);
    if let Ok(out) = verify_message(&signed, NOW, lookup) {
        let first = out.first().expect("our signature is seen");
        assert_eq!(first.status, Status::Pass, "own signature: {first:?}");
    }
});
