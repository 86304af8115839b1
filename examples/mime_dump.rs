//! Prints what pimail's IMAP reports of each message file given (one
//! stored message per file): RFC822.SIZE, ENVELOPE, BODY, BODYSTRUCTURE,
//! one FETCH-like line each. bench/mime_dovecot.py compares it with
//! Dovecot's answers for the same messages. With PIMAIL_MIME_RECORDS=DIR
//! it also writes each index record there (seeds for fuzz/mime_index).

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
        if let Some(dir) = std::env::var_os("PIMAIL_MIME_RECORDS") {
            let mut rec = Vec::new();
            pimail::store::mime::index::encode(&s, &mut rec);
            let name = std::path::Path::new(&path).file_name().unwrap_or_default();
            if let Err(e) = std::fs::write(std::path::Path::new(&dir).join(name), rec) {
                eprintln!("{path}: {e}");
            }
        }
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
