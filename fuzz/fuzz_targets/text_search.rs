//! SEARCH BODY/TEXT's pieces (`read::imap::textsearch`): for any message,
//! the stretches searched lie inside it, the as-stored ones in order and
//! never overlapping, none inside an attachment's content; and the
//! case-insensitive finder answers as a naive window-by-window compare,
//! for a needle cut from the input's first bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::read::imap::textsearch::{binary_type, spans, Needle};
use pimail::store::mime::{Kind, Part, Structure};

fn binary_leaves(p: &Part, out: &mut Vec<(u64, u64)>) {
    match &p.kind {
        Kind::Multi(c) => c.iter().for_each(|c| binary_leaves(c, out)),
        Kind::Message(_, inner) => binary_leaves(inner, out),
        Kind::Single if binary_type(&p.ctype) => out.push((p.body.stored, p.end.stored)),
        Kind::Single => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let n = data.first().map_or(0, |&b| (b as usize % 8).min(data.len().saturating_sub(1)));
    let (needle, hay) = data.get(1..).unwrap_or_default().split_at(n);
    let naive = needle.is_empty() || hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
    assert_eq!(Needle::new(needle).found_in(hay), naive);

    let s = Structure::parse(data);
    let mut skipped = Vec::new();
    binary_leaves(&s.root, &mut skipped);
    for with_header in [true, false] {
        let mut last = 0;
        for sp in spans(&s, with_header) {
            let (a, b) = (sp.range.start.stored, sp.range.end.stored);
            assert!(a < b && b <= data.len() as u64, "{sp:?}");
            if sp.decode.is_none() {
                assert!(a >= last, "{sp:?} before {last}");
                last = b;
                for &(x, y) in &skipped {
                    assert!(b <= x || a >= y || x == y, "{sp:?} in an attachment {x}..{y}");
                }
            }
        }
    }
});
