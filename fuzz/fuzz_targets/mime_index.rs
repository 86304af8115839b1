//! The MIME index record reader (`store::mime::index::decode`): the index
//! is a cache that may be torn or stale, so any bytes give a structure or
//! an error, never a panic or an allocation beyond the input; what it
//! accepts renders as ENVELOPE/BODYSTRUCTURE (the same bytes from the
//! structure and straight from the record) and survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::store::mime::{imap, index};

fuzz_target!(|data: &[u8]| {
    // The direct writers (FETCH's path) run on anything.
    let mut direct = Vec::new();
    let env_ok = index::write_envelope(data, &mut direct).is_ok();
    let body_ok = index::write_body(data, true, &mut direct).is_ok();
    let Ok(s) = index::decode(data) else {
        return;
    };
    // What decode accepts they accept, and they write the same bytes.
    assert!(env_ok && body_ok);
    let mut out = Vec::new();
    imap::envelope(&s.envelope, &mut out);
    imap::body(&s.root, true, &mut out);
    assert_eq!(out, direct);
    imap::body(&s.root, false, &mut out);
    let _ = s.part(&[1, 2, 1]);
    let _ = s.section(&[2], pimail::store::mime::Spec::Text);
    let mut rec = Vec::new();
    index::encode(&s, &mut rec);
    assert_eq!(index::decode(&rec).as_ref(), Ok(&s));
});
