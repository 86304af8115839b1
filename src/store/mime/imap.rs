//! ENVELOPE, BODY and BODYSTRUCTURE in the exact syntax of RFC 9051 9
//! (`envelope`, `body`; the same in RFC 3501 9): field order of 7.5.2,
//! NIL for what is absent, quoted strings where they may be and literals
//! for the rest (8-bit bytes, CR, LF). Values are written as the message
//! has them (case kept), with Dovecot's defaults for what it lacks
//! (`"text" "plain" ("charset" "us-ascii")`, `"7bit"`).

use super::{Address, Envelope, Kind, Part};

/// How a byte can be sent in a string: 0 as is in a quoted string, 1
/// escaped with `\\` (RFC 9051 9 `quoted-specials`), 2 only in a literal
/// (8-bit, CR, LF, NUL).
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i == 0 || i == b'\r' as usize || i == b'\n' as usize || i >= 128 {
            2
        } else if i == b'"' as usize || i == b'\\' as usize {
            1
        } else {
            0
        };
        i += 1;
    }
    t
};

/// An IMAP `string`: quoted if every byte is a 7-bit TEXT-CHAR (RFC 9051
/// 9 `quoted`), else a literal. NUL, which no string may hold, is sent as
/// a space (the length stays).
pub fn string(s: &[u8], out: &mut Vec<u8>) {
    // One pass with a table: this runs for every field of every message
    // of a FETCH 1:* (ENVELOPE BODYSTRUCTURE).
    let class = s.iter().fold(0u8, |m, &b| m | CLASS[b as usize]);
    if class == 0 {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else if class == 1 {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.push(b'{');
        number(s.len() as u64, out);
        out.extend_from_slice(b"}\r\n");
        let start = out.len();
        out.extend_from_slice(s);
        for b in &mut out[start..] {
            if *b == 0 {
                *b = b' ';
            }
        }
    }
}

pub fn nstring(s: Option<&[u8]>, out: &mut Vec<u8>) {
    match s {
        Some(s) => string(s, out),
        None => out.extend_from_slice(b"NIL"),
    }
}

pub fn number(n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn addresses(list: &[Address], out: &mut Vec<u8>) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        nstring(a.name.as_deref(), out);
        out.push(b' ');
        nstring(a.adl.as_deref(), out);
        out.push(b' ');
        nstring(a.mailbox.as_deref(), out);
        out.push(b' ');
        nstring(a.host.as_deref(), out);
        out.push(b')');
    }
    out.push(b')');
}

/// `envelope` (RFC 9051 7.5.2): date, subject, from, sender, reply-to,
/// to, cc, bcc, in-reply-to, message-id.
pub fn envelope(e: &Envelope, out: &mut Vec<u8>) {
    out.push(b'(');
    nstring(e.date.as_deref(), out);
    out.push(b' ');
    nstring(e.subject.as_deref(), out);
    for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
        out.push(b' ');
        addresses(list, out);
    }
    out.push(b' ');
    nstring(e.in_reply_to.as_deref(), out);
    out.push(b' ');
    nstring(e.message_id.as_deref(), out);
    out.push(b')');
}

fn params(p: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) {
    if p.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (n, v)) in p.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(n, out);
        out.push(b' ');
        string(v, out);
    }
    out.push(b')');
}

/// The extension data both kinds share: disposition, language, location.
fn dsp_lang_loc(p: &Part, out: &mut Vec<u8>) {
    out.push(b' ');
    match &p.disposition {
        Some((t, prm)) => {
            out.push(b'(');
            string(t, out);
            out.push(b' ');
            params(prm, out);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    if p.language.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        for (i, l) in p.language.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            string(l, out);
        }
        out.push(b')');
    }
    out.push(b' ');
    nstring(p.location.as_deref(), out);
}

/// `body` (RFC 9051 7.5.2): BODYSTRUCTURE with `extensible`, else BODY.
pub fn body(p: &Part, extensible: bool, out: &mut Vec<u8>) {
    out.push(b'(');
    match &p.kind {
        Kind::Multi(children) => {
            for c in children {
                body(c, extensible, out);
            }
            out.push(b' ');
            string(&p.subtype, out);
            if extensible {
                out.push(b' ');
                params(&p.params, out);
                dsp_lang_loc(p, out);
            }
        }
        kind => {
            string(&p.ctype, out);
            out.push(b' ');
            string(&p.subtype, out);
            out.push(b' ');
            params(&p.params, out);
            out.push(b' ');
            nstring(p.id.as_deref(), out);
            out.push(b' ');
            nstring(p.description.as_deref(), out);
            out.push(b' ');
            string(p.encoding.as_deref().unwrap_or(b"7bit"), out);
            out.push(b' ');
            number(p.size(), out);
            if let Kind::Message(env, inner) = kind {
                out.push(b' ');
                envelope(env, out);
                out.push(b' ');
                body(inner, extensible, out);
                out.push(b' ');
                number(p.lines, out);
            } else if p.ctype.eq_ignore_ascii_case(b"text") {
                out.push(b' ');
                number(p.lines, out);
            }
            if extensible {
                out.push(b' ');
                nstring(p.md5.as_deref(), out);
                dsp_lang_loc(p, out);
            }
        }
    }
    out.push(b')');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        let s = |v: &[u8]| {
            let mut o = Vec::new();
            string(v, &mut o);
            o
        };
        assert_eq!(s(b"a \"b\" \\"), b"\"a \\\"b\\\" \\\\\"");
        assert_eq!(s(b""), b"\"\"");
        assert_eq!(s("é".as_bytes()), b"{2}\r\n\xc3\xa9");
        assert_eq!(s(b"a\r\nb"), b"{4}\r\na\r\nb");
        assert_eq!(s(b"a\0b"), b"{3}\r\na b");
        let mut o = Vec::new();
        number(0, &mut o);
        number(1234567890123, &mut o);
        assert_eq!(o, b"01234567890123");
    }
}
