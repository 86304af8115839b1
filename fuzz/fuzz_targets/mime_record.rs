//! The `.mime` record payload reader (`read::imap::mimedb`): the file is a
//! cache that may be torn or stale, so any bytes give a text, `Old` or
//! `Bad`, never a panic; a text it gives lies within the input; and a
//! payload made from what the index reader accepts gives back exactly the
//! texts rendered from the structure, and the index record itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::read::imap::mimedb::{self, Rendered};
use pimail::store::mime::{imap, index};

fuzz_target!(|data: &[u8]| {
    for w in [Rendered::Envelope, Rendered::BodyStructure, Rendered::Body] {
        if let Ok(t) = mimedb::rendered(data, w) {
            assert!(t.len() <= data.len());
        }
    }
    let _ = mimedb::index_part(data);
    let Some(payload) = mimedb::render(data) else {
        return;
    };
    let s = index::decode(data).expect("render decodes");
    let mut want = [Vec::new(), Vec::new(), Vec::new()];
    imap::envelope(&s.envelope, &mut want[0]);
    imap::body(&s.root, true, &mut want[1]);
    imap::body(&s.root, false, &mut want[2]);
    for (i, w) in [Rendered::Envelope, Rendered::BodyStructure, Rendered::Body]
        .into_iter()
        .enumerate()
    {
        assert_eq!(mimedb::rendered(&payload, w).ok(), Some(&want[i][..]));
    }
    let rec = mimedb::index_part(&payload).expect("the index part");
    assert_eq!(index::decode(rec).as_ref(), Ok(&s));
});
