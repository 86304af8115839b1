//! The IMAP MIME parser (`store::mime`): whatever bytes a message holds,
//! parsing gives a structure, never a panic, and the same one however
//! the bytes are split into chunks; every part lies inside its parent,
//! each stored range turned into wire form is exactly the bytes its wire
//! offsets name (so sections are served by reading file ranges), and the
//! index record reads back as the same structure.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::store::mime::{imap, index, Kind, Parser, Part, Structure, WireWriter};

fn wire_of(stored: &[u8], ends_message: bool) -> Vec<u8> {
    let mut w = WireWriter::new();
    let mut out = Vec::new();
    w.write(stored, &mut out);
    if ends_message {
        w.end_message(&mut out);
    } else {
        w.finish(&mut out);
    }
    out
}

fn check(p: &Part, msg: &[u8], wire: &[u8], budget: &mut usize) {
    assert!(p.header.stored <= p.body.stored && p.body.stored <= p.end.stored, "{p:?}");
    assert!(p.header.wire <= p.body.wire && p.body.wire <= p.end.wire, "{p:?}");
    assert!(p.end.stored <= msg.len() as u64 && p.end.wire <= wire.len() as u64);
    if *budget > 0 {
        *budget -= 1;
        for (a, b) in [(p.header, p.body), (p.body, p.end)] {
            let got = wire_of(&msg[a.stored as usize..b.stored as usize], b.stored == msg.len() as u64);
            assert_eq!(got, &wire[a.wire as usize..b.wire as usize], "{a:?}..{b:?}");
        }
    }
    let inside = |c: &Part| {
        c.header.stored >= p.body.stored && c.end.stored <= p.end.stored && c.header.wire >= p.body.wire
    };
    match &p.kind {
        Kind::Single => {}
        Kind::Multi(children) => {
            assert!(!children.is_empty());
            for c in children {
                assert!(inside(c), "{c:?} outside {p:?}");
                check(c, msg, wire, budget);
            }
        }
        Kind::Message(_, inner) => {
            assert!(inside(inner));
            check(inner, msg, wire, budget);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = Structure::parse(data);
    // The same bytes in three chunks, cut where the first bytes say.
    let a = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let b = data.get(1).map_or(a, |&x| (a + x as usize * 7) % (data.len() + 1)).max(a);
    let mut p = Parser::new();
    p.feed(&data[..a]);
    p.feed(&data[a..b]);
    p.feed(&data[b..]);
    assert_eq!(p.finish(), whole);

    let wire = wire_of(data, true);
    assert_eq!(whole.size(), wire.len() as u64);
    assert_eq!(whole.root.end.stored, data.len() as u64);
    let mut budget = 64;
    check(&whole.root, data, &wire, &mut budget);

    let mut rec = Vec::new();
    index::encode(&whole, &mut rec);
    assert_eq!(index::decode(&rec).as_ref(), Ok(&whole));
    let mut out = Vec::new();
    imap::envelope(&whole.envelope, &mut out);
    imap::body(&whole.root, true, &mut out);
    imap::body(&whole.root, false, &mut out);
    let _ = whole.envelope.subject_decoded();
    let _ = whole.root.filename();
});
