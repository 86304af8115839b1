//! Prints what pimail's IMAP reports of each message file given (one
//! stored message per file): RFC822.SIZE, ENVELOPE, BODY, BODYSTRUCTURE,
//! one FETCH-like line each. bench/mime_dovecot.py compares it with
//! Dovecot's answers for the same messages.

use pimail::store::mime::{imap, Structure};

fn main() {
    for path in std::env::args().skip(1) {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(1);
            }
        };
        let s = Structure::parse(&data);
        let mut out = Vec::new();
        out.extend_from_slice(format!("RFC822.SIZE {} ENVELOPE ", s.size()).as_bytes());
        imap::envelope(&s.envelope, &mut out);
        out.extend_from_slice(b" BODY ");
        imap::body(&s.root, false, &mut out);
        out.extend_from_slice(b" BODYSTRUCTURE ");
        imap::body(&s.root, true, &mut out);
        out.push(b'\n');
        use std::io::Write;
        let _ = std::io::stdout().write_all(&out);
    }
}
