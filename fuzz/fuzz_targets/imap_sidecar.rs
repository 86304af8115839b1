//! The IMAP folder index readers (`read::imap::sidecar::decode`, and
//! `read::imap::appended::decode`, the writer's index of delivered mail):
//! both are caches that a power cut may leave cut short or zeroed, and
//! older pimails wrote the sidecar as text (v1 to v4), so any bytes give
//! a result or nothing, never a panic or an allocation far beyond the
//! input; what format 5 accepts comes back the same after a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::read::imap::{appended, sidecar};

fuzz_target!(|data: &[u8]| {
    for (b, end) in appended::decode(data) {
        assert!(end <= data.len());
        assert!(b.from <= b.stamp.len);
        assert!(b.entries.iter().all(|e| e.msg.end <= b.stamp.len));
    }
    let Some(s) = sidecar::decode(data) else {
        return;
    };
    assert!(s.entries.len() <= data.len());
    if s.old_format {
        return;
    }
    let bytes = sidecar::encode(
        s.uid_validity,
        s.uid_next,
        s.modseq,
        s.stamp.as_ref(),
        &s.entries,
    );
    let again = sidecar::decode(&bytes).expect("what it wrote it reads");
    assert_eq!(format!("{:?}", again.entries), format!("{:?}", s.entries));
    assert_eq!(again.stamp, s.stamp);
    assert!(again.complete == again.stamp.is_some());
});
