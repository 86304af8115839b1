//! The header text of one entity, taken apart: fields and unfolding
//! (RFC 5322 2.2), MIME parameters with RFC 2231 continuations, address
//! lists with groups (RFC 5322 3.4, the obsolete forms of 4.4 accepted),
//! and RFC 2047 encoded words decoded to UTF-8 for SEARCH and display.
//! Everything here is lenient: mail in the wild breaks every rule, and a
//! reader must still get a structure.

use super::Address;

/// The fields of a header block, in order: (name, raw value). The value
/// keeps its folding (CRLF/LF and the whitespace after it).
pub fn fields(block: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out: Vec<(&[u8], &[u8])> = Vec::with_capacity(32);
    // Lines by their LF (a vectorized search: every message's and part's
    // header is taken apart here at a first scan).
    let mut rest = block;
    while !rest.is_empty() {
        let n = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(n);
        rest = after;
        if matches!(line.first(), Some(b' ') | Some(b'\t')) {
            // A continuation (RFC 5322 2.2.3): extend the last field's value.
            if let Some(last) = out.last_mut() {
                let start = last.1.as_ptr() as usize - block.as_ptr() as usize;
                let end = line.as_ptr() as usize - block.as_ptr() as usize + line.len();
                last.1 = &block[start..end];
            }
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = trim(&line[..colon]);
        // A name is printable ASCII without spaces (RFC 5322 2.2); a line
        // that is not a field is skipped rather than ending the header.
        if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
            continue;
        }
        out.push((name, &line[colon + 1..]));
    }
    out
}

/// A field value unfolded (line breaks removed, RFC 5322 2.2.3) and
/// trimmed, as ENVELOPE returns it.
pub fn unfold(v: &[u8]) -> Vec<u8> {
    let out: Vec<u8> = v
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    trim(&out).to_vec()
}

pub fn trim(v: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

// ---- tokens (RFC 5322 3.2, RFC 2045 5.1) -------------------------------------

#[derive(Debug, PartialEq)]
enum Tok<'a> {
    /// An atom, or with `mime` a token (RFC 2045's tspecials split it).
    Atom(&'a [u8]),
    Quoted(Vec<u8>),
    Comment(Vec<u8>),
    /// `[...]` as written, brackets included.
    Literal(&'a [u8]),
    Special(u8),
}

/// RFC 5322's specials, controls, space and DEL, by octet.
static SPECIALS: [bool; 256] = specials(b"()<>@,;:\\\".[]");
/// RFC 2045's tspecials (which add `/ ? =`), controls, space and DEL.
static MIME_SPECIALS: [bool; 256] = specials(b"()<>@,;:\\\".[]/?=");

const fn specials(set: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b <= b' ' as usize {
        t[b] = true;
        b += 1;
    }
    t[127] = true;
    let mut i = 0;
    while i < set.len() {
        t[set[i] as usize] = true;
        i += 1;
    }
    t
}

/// Splits a field value into tokens; `mime` uses RFC 2045's tspecials
/// (which add `/ ? =` to RFC 5322's specials).
fn tokens(v: &[u8], mime: bool) -> Vec<Tok<'_>> {
    let table = if mime { &MIME_SPECIALS } else { &SPECIALS };
    let special = |b: u8| table[b as usize];
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                while i < v.len() && v[i] != b'"' {
                    if v[i] == b'\\' && i + 1 < v.len() {
                        i += 1;
                    }
                    if v[i] != b'\r' && v[i] != b'\n' {
                        s.push(v[i]);
                    }
                    i += 1;
                }
                i += 1;
                out.push(Tok::Quoted(s));
            }
            b'(' => {
                // Comments nest (RFC 5322 3.2.2).
                let mut depth = 0usize;
                let mut s = Vec::new();
                while i < v.len() {
                    match v[i] {
                        b'\\' if i + 1 < v.len() => {
                            i += 1;
                            s.push(v[i]);
                        }
                        b'(' => {
                            if depth > 0 {
                                s.push(b'(');
                            }
                            depth += 1;
                        }
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                            s.push(b')');
                        }
                        b'\r' | b'\n' => {}
                        c => s.push(c),
                    }
                    i += 1;
                }
                out.push(Tok::Comment(s));
            }
            b'[' if !mime => {
                let start = i;
                while i < v.len() && v[i] != b']' {
                    i += 1;
                }
                i = (i + 1).min(v.len());
                out.push(Tok::Literal(&v[start..i]));
            }
            _ if special(b) => {
                out.push(Tok::Special(b));
                i += 1;
            }
            _ => {
                let start = i;
                while i < v.len() && !special(v[i]) {
                    i += 1;
                }
                out.push(Tok::Atom(&v[start..i]));
            }
        }
    }
    out
}

// ---- Content-Type and Content-Disposition (RFC 2045 5.1, RFC 2183) -------------

/// `type/subtype; params` (Content-Type) or `type; params`
/// (Content-Disposition): the value and the parameters, with RFC 2231
/// continuations joined (`name*0*`, `name*1*` -> `name*`), values as
/// written otherwise.
pub struct MimeValue {
    pub value: Vec<u8>,
    pub subtype: Option<Vec<u8>>,
    pub params: super::Params,
}

pub fn mime_value(v: &[u8], with_subtype: bool) -> Option<MimeValue> {
    let toks: Vec<Tok> = tokens(v, true)
        .into_iter()
        .filter(|t| !matches!(t, Tok::Comment(_)))
        .collect();
    let mut it = toks.into_iter().peekable();
    let value = match it.next()? {
        Tok::Atom(a) => a.to_vec(),
        _ => return None,
    };
    let mut subtype = None;
    if with_subtype {
        if it.next() != Some(Tok::Special(b'/')) {
            return None;
        }
        match it.next() {
            Some(Tok::Atom(a)) => subtype = Some(a.to_vec()),
            _ => return None,
        }
    }
    // Parameters: `; name = value` with value a token or quoted string.
    let mut raw: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        match it.next() {
            None => break,
            Some(Tok::Special(b';')) => {}
            Some(_) => continue,
        }
        let Some(Tok::Atom(name)) = it.next() else {
            continue;
        };
        if it.peek() != Some(&Tok::Special(b'=')) {
            continue;
        }
        it.next();
        let mut val = match it.next() {
            Some(Tok::Atom(a)) => a.to_vec(),
            Some(Tok::Quoted(q)) => q,
            _ => continue,
        };
        // A token value cut by a tspecial that is no `;` (e.g. an unquoted
        // `name=a=b` or a path with `/`): take the rest as part of it.
        while let Some(t) = it.peek() {
            match t {
                Tok::Special(b';') => break,
                Tok::Special(c) => val.push(*c),
                Tok::Atom(a) => val.extend_from_slice(a),
                Tok::Quoted(q) => val.extend_from_slice(q),
                _ => {}
            }
            it.next();
        }
        if raw.len() < 64 {
            raw.push((name.to_vec(), val));
        }
    }
    Some(MimeValue {
        value,
        subtype,
        params: join_continuations(raw),
    })
}

/// RFC 2231 section 3: `name*0`, `name*1*`... joined in order into one
/// parameter, named `name*` if any piece was encoded (the value then
/// starts with `charset'lang'` and is %-encoded throughout; unencoded
/// pieces are %-escaped so the whole stays one RFC 2231 value).
fn join_continuations(raw: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    type Pieces = Vec<(u32, bool, Vec<u8>)>;
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut conts: Vec<(Vec<u8>, Pieces)> = Vec::new();
    for (name, val) in raw {
        if let Some(star) = name.iter().position(|&b| b == b'*') {
            let rest = &name[star + 1..];
            let (num, enc) = match rest.strip_suffix(b"*") {
                Some(n) => (n, true),
                None => (rest, false),
            };
            if !num.is_empty() && num.iter().all(u8::is_ascii_digit) && num.len() < 4 {
                let n: u32 = std::str::from_utf8(num)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let base = name[..star].to_vec();
                match conts
                    .iter_mut()
                    .find(|(b, _)| b.eq_ignore_ascii_case(&base))
                {
                    Some((_, p)) => p.push((n, enc, val)),
                    None => conts.push((base, vec![(n, enc, val)])),
                }
                continue;
            }
        }
        out.push((name, val));
    }
    for (base, mut pieces) in conts {
        pieces.sort_by_key(|p| p.0);
        let any_enc = pieces.iter().any(|p| p.1);
        let mut v = Vec::new();
        for (i, (_, enc, piece)) in pieces.iter().enumerate() {
            if !any_enc || *enc {
                v.extend_from_slice(piece);
            } else {
                if i == 0 {
                    // An unencoded first piece: no charset, no language.
                    v.extend_from_slice(b"''");
                }
                for &b in piece {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        v.push(b);
                    } else {
                        v.extend_from_slice(format!("%{b:02X}").as_bytes());
                    }
                }
            }
        }
        let mut name = base;
        if any_enc {
            name.push(b'*');
        }
        out.push((name, v));
    }
    out
}

/// A parameter's value decoded to UTF-8: RFC 2231 `name*` (charset'lang'
/// %-encoded), else the plain `name`, with RFC 2047 words inside it
/// decoded too (what Outlook and others send for file names).
pub fn param_decoded(params: &[(Vec<u8>, Vec<u8>)], name: &str) -> Option<String> {
    let enc = params.iter().find(|(n, _)| {
        n.len() == name.len() + 1
            && n.ends_with(b"*")
            && n[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    });
    if let Some((_, v)) = enc {
        let mut parts = v.splitn(3, |&b| b == b'\'');
        if let (Some(cs), Some(_lang), Some(text)) = (parts.next(), parts.next(), parts.next()) {
            let bytes = percent_decode(text);
            let cs = std::str::from_utf8(cs).unwrap_or("");
            let cs = if cs.is_empty() { "us-ascii" } else { cs };
            if let Some(s) = charset_decode(cs, &bytes) {
                return Some(s);
            }
        }
    }
    let (_, v) = params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))?;
    Some(decode_2047(v))
}

fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            if let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Content-Language (RFC 3282): a comma-separated list of tags.
pub fn languages(v: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for t in tokens(v, true) {
        if let Tok::Atom(a) = t {
            if out.len() < 16 {
                out.push(a.to_vec());
            }
        }
    }
    out
}

// ---- addresses (RFC 5322 3.4) ------------------------------------------------------

/// An address list as ENVELOPE wants it: mailboxes, and groups as a start
/// marker (name in `mailbox`, no host) and an end marker (all NIL), RFC
/// 9051 7.5.2. Names keep their encoded words (RFC 9051 leaves decoding
/// to the client); [`decode_2047`] gives the readable form.
pub fn addresses(v: &[u8]) -> Vec<Address> {
    let toks = tokens(v, false);
    let mut out = Vec::new();
    let mut phrase: Vec<u8> = Vec::new();
    // What follows the phrase outside `<>`: an addr-spec written bare.
    let mut bare: Vec<u8> = Vec::new();
    let mut comment: Option<Vec<u8>> = None;
    let mut in_group = false;
    let mut i = 0;
    let push_word = |phrase: &mut Vec<u8>, w: &[u8]| {
        if !phrase.is_empty() {
            phrase.push(b' ');
        }
        phrase.extend_from_slice(w);
    };
    // A bare addr-spec keeps its tokens joined without spaces; the phrase
    // keeps words apart. Which one the tokens were is known only at the end
    // (`<` makes them a phrase), so both are built.
    while i < toks.len() && out.len() < 1000 {
        match &toks[i] {
            Tok::Atom(a) => {
                push_word(&mut phrase, a);
                bare.extend_from_slice(a);
            }
            Tok::Quoted(q) => {
                push_word(&mut phrase, q);
                bare.push(b'"');
                bare.extend_from_slice(q);
                bare.push(b'"');
            }
            Tok::Literal(l) => bare.extend_from_slice(l),
            Tok::Comment(c) => {
                if comment.is_none() {
                    comment = Some(c.clone());
                }
            }
            Tok::Special(b'.') => {
                // obs-phrase allows `.` (RFC 5322 4.1): "Joe Q. Public".
                phrase.push(b'.');
                bare.push(b'.');
            }
            Tok::Special(b'@') => {
                bare.push(b'@');
                phrase.push(b'@');
            }
            Tok::Special(b':') if !in_group => {
                out.push(Address {
                    name: None,
                    adl: None,
                    mailbox: Some(phrase.clone()),
                    host: None,
                });
                in_group = true;
                phrase.clear();
                bare.clear();
                comment = None;
            }
            Tok::Special(b'<') => {
                // angle-addr, with an obsolete route `@a,@b:` (RFC 5322 4.4).
                i += 1;
                let mut spec = Vec::new();
                let mut route = Vec::new();
                while i < toks.len() {
                    match &toks[i] {
                        Tok::Special(b'>') => break,
                        Tok::Special(b':') => {
                            route = std::mem::take(&mut spec);
                        }
                        Tok::Atom(a) | Tok::Literal(a) => spec.extend_from_slice(a),
                        Tok::Quoted(q) => {
                            spec.push(b'"');
                            spec.extend_from_slice(q);
                            spec.push(b'"');
                        }
                        Tok::Special(c) => spec.push(*c),
                        Tok::Comment(_) => {}
                    }
                    i += 1;
                }
                let name = if phrase.is_empty() {
                    comment.take()
                } else {
                    Some(std::mem::take(&mut phrase))
                };
                out.push(mailbox(name, (!route.is_empty()).then_some(route), &spec));
                phrase.clear();
                bare.clear();
                comment = None;
            }
            Tok::Special(b',') | Tok::Special(b';') => {
                if !bare.is_empty() {
                    out.push(mailbox(comment.take(), None, &bare));
                }
                phrase.clear();
                bare.clear();
                comment = None;
                if toks[i] == Tok::Special(b';') && in_group {
                    out.push(Address::default());
                    in_group = false;
                }
            }
            Tok::Special(_) => {}
        }
        i += 1;
    }
    if !bare.is_empty() {
        out.push(mailbox(comment.take(), None, &bare));
    }
    if in_group {
        out.push(Address::default());
    }
    out
}

fn mailbox(name: Option<Vec<u8>>, adl: Option<Vec<u8>>, spec: &[u8]) -> Address {
    let (local, host) = match spec.iter().rposition(|&b| b == b'@') {
        Some(at) => (&spec[..at], Some(spec[at + 1..].to_vec())),
        None => (spec, None),
    };
    // The host is never NIL for a mailbox (NIL marks a group): an address
    // without a domain gets Dovecot's `MISSING_DOMAIN`, one without a
    // local part (`<>`) its `MISSING_MAILBOX`.
    let local = if local.starts_with(b"\"") && local.ends_with(b"\"") && local.len() >= 2 {
        local[1..local.len() - 1].to_vec()
    } else {
        local.to_vec()
    };
    Address {
        name: name.filter(|n| !n.is_empty()),
        adl,
        mailbox: Some(if local.is_empty() {
            b"MISSING_MAILBOX".to_vec()
        } else {
            local
        }),
        host: Some(host.unwrap_or_else(|| b"MISSING_DOMAIN".to_vec())),
    }
}

// ---- RFC 2047 encoded words and charsets ----------------------------------------------

/// A header text with its encoded words (RFC 2047) decoded to UTF-8; the
/// whitespace between two adjacent encoded words goes (section 6.2), and
/// a word in an unknown charset stays as written. Other bytes that are no
/// UTF-8 are read as Latin-1, the most common unlabelled 8-bit text.
pub fn decode_2047(v: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    let mut pending_ws: &[u8] = b"";
    let mut last_was_word = false;
    // Bytes of consecutive words in one charset are joined before
    // conversion: a UTF-8 character may be split across two words.
    let mut run: Option<(String, Vec<u8>)> = None;
    let flush = |run: &mut Option<(String, Vec<u8>)>, out: &mut String| {
        if let Some((cs, bytes)) = run.take() {
            out.push_str(&charset_decode(&cs, &bytes).unwrap_or_default());
        }
    };
    while i < v.len() {
        if v[i..].starts_with(b"=?") {
            if let Some((cs, bytes, len)) = encoded_word(&v[i..]) {
                if charset_known(&cs) {
                    let same = matches!(&run, Some((c, _)) if c.eq_ignore_ascii_case(&cs));
                    if !same {
                        flush(&mut run, &mut out);
                    }
                    if !last_was_word {
                        out.push_str(&text_decode(pending_ws));
                    }
                    match &mut run {
                        Some((_, b)) => b.extend_from_slice(&bytes),
                        None => run = Some((cs, bytes)),
                    }
                    pending_ws = b"";
                    last_was_word = true;
                    i += len;
                    continue;
                }
            }
        }
        let b = v[i];
        if b == b' ' || b == b'\t' || b == b'\r' || b == b'\n' {
            let start = i;
            while i < v.len() && matches!(v[i], b' ' | b'\t' | b'\r' | b'\n') {
                i += 1;
            }
            pending_ws = &v[start..i];
            continue;
        }
        flush(&mut run, &mut out);
        out.push_str(&text_decode(pending_ws));
        pending_ws = b"";
        last_was_word = false;
        let start = i;
        while i < v.len()
            && !matches!(v[i], b' ' | b'\t' | b'\r' | b'\n')
            && !v[i..].starts_with(b"=?")
        {
            i += 1;
        }
        if i == start {
            i += 1;
        }
        out.push_str(&text_decode(&v[start..i]));
    }
    flush(&mut run, &mut out);
    if !last_was_word {
        out.push_str(&text_decode(pending_ws));
    }
    // Folding whitespace reads as one space.
    out.replace("\r\n", "").replace('\n', "")
}

/// `=?charset?B|Q?text?=` at the start of `v`: (charset, bytes, length).
fn encoded_word(v: &[u8]) -> Option<(String, Vec<u8>, usize)> {
    let body = &v[2..];
    let q1 = body.iter().position(|&b| b == b'?')?;
    let cs = &body[..q1];
    let enc = *body.get(q1 + 1)?;
    if body.get(q1 + 2) != Some(&b'?') {
        return None;
    }
    let text_start = q1 + 3;
    let end = body[text_start..].windows(2).position(|w| w == b"?=")? + text_start;
    let text = &body[text_start..end];
    if text.iter().any(|&b| b == b' ' || b == b'\t' || b == b'\n') || cs.len() > 40 {
        return None;
    }
    // RFC 2231 section 5: `charset*language`.
    let cs = cs.split(|&b| b == b'*').next().unwrap_or(cs);
    let cs = std::str::from_utf8(cs).ok()?.to_string();
    let bytes = match enc {
        b'B' | b'b' => {
            let s = std::str::from_utf8(text).ok()?;
            crate::util::base64::decode_lenient(s)?
        }
        b'Q' | b'q' => {
            let mut out = Vec::with_capacity(text.len());
            let mut j = 0;
            while j < text.len() {
                match text[j] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        match (
                            text.get(j + 1).and_then(|&b| hex(b)),
                            text.get(j + 2).and_then(|&b| hex(b)),
                        ) {
                            (Some(h), Some(l)) => {
                                out.push(h << 4 | l);
                                j += 2;
                            }
                            _ => out.push(b'='),
                        }
                    }
                    c => out.push(c),
                }
                j += 1;
            }
            out
        }
        _ => return None,
    };
    Some((cs, bytes, 2 + end + 2))
}

fn charset_known(cs: &str) -> bool {
    charset_decode(cs, b"").is_some()
}

/// Bytes in `charset` as UTF-8, for the charsets mail mostly uses; `None`
/// for others (the caller keeps the text as written).
pub fn charset_decode(cs: &str, bytes: &[u8]) -> Option<String> {
    let cs = cs.trim().to_ascii_lowercase();
    match cs.as_str() {
        "utf-8" | "utf8" | "us-ascii" | "ascii" => {
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
        "iso-8859-1" | "latin1" | "iso8859-1" | "l1" => {
            Some(bytes.iter().map(|&b| b as char).collect())
        }
        "windows-1252" | "cp1252" => Some(bytes.iter().map(|&b| cp1252(b)).collect()),
        "iso-8859-15" | "latin-9" | "iso8859-15" => Some(
            bytes
                .iter()
                .map(|&b| match b {
                    0xa4 => '€',
                    0xa6 => 'Š',
                    0xa8 => 'š',
                    0xb4 => 'Ž',
                    0xb8 => 'ž',
                    0xbc => 'Œ',
                    0xbd => 'œ',
                    0xbe => 'Ÿ',
                    _ => b as char,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn cp1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[(b - 0x80) as usize],
        _ => b as char,
    }
}

/// Raw header bytes as text: UTF-8 (RFC 6532) if they are, else Latin-1.
fn text_decode(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => s.to_string(),
        Err(_) => v.iter().map(|&b| b as char).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: Option<&str>, m: Option<&str>, h: Option<&str>) -> Address {
        Address {
            name: n.map(|s| s.as_bytes().to_vec()),
            adl: None,
            mailbox: m.map(|s| s.as_bytes().to_vec()),
            host: h.map(|s| s.as_bytes().to_vec()),
        }
    }

    #[test]
    fn address_forms() {
        assert_eq!(
            addresses(b" \"Joe Q. Public\" <john.q.public@example.com>"),
            vec![addr(
                Some("Joe Q. Public"),
                Some("john.q.public"),
                Some("example.com")
            )]
        );
        assert_eq!(
            addresses(b"Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>"),
            vec![
                addr(Some("Mary Smith"), Some("mary"), Some("x.test")),
                addr(None, Some("jdoe"), Some("example.org")),
                addr(Some("Who?"), Some("one"), Some("y.test")),
            ]
        );
        // RFC 5322 A.1.3: a group, then an empty group.
        assert_eq!(
            addresses(b"A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;, Undisclosed recipients:;"),
            vec![
                addr(None, Some("A Group"), None),
                addr(Some("Ed Jones"), Some("c"), Some("a.test")),
                addr(None, Some("joe"), Some("where.test")),
                addr(Some("John"), Some("jdoe"), Some("one.test")),
                addr(None, None, None),
                addr(None, Some("Undisclosed recipients"), None),
                addr(None, None, None),
            ]
        );
        // The comment form, a route, and no domain at all.
        assert_eq!(
            addresses(b"pete@silly.test (Pete Resnick)"),
            vec![addr(Some("Pete Resnick"), Some("pete"), Some("silly.test"))]
        );
        let r = addresses(b"<@a.test,@b.test:joe@c.test>");
        assert_eq!(r[0].adl.as_deref(), Some(&b"@a.test,@b.test"[..]));
        assert_eq!(r[0].mailbox.as_deref(), Some(&b"joe"[..]));
        assert_eq!(
            addresses(b"root"),
            vec![addr(None, Some("root"), Some("MISSING_DOMAIN"))]
        );
        assert_eq!(addresses(b"  "), vec![]);
    }

    #[test]
    fn encoded_words() {
        assert_eq!(decode_2047(b"=?UTF-8?B?w6lsw6h2ZQ==?="), "élève");
        assert_eq!(
            decode_2047(b"=?ISO-8859-1?Q?Andr=E9?= Pirard"),
            "André Pirard"
        );
        // RFC 2047 section 8's examples.
        assert_eq!(decode_2047(b"(=?ISO-8859-1?Q?a?= b)"), "(a b)");
        assert_eq!(decode_2047(b"=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?="), "ab");
        assert_eq!(
            decode_2047(b"=?ISO-8859-1?Q?a?=\r\n   =?ISO-8859-1?Q?b?="),
            "ab"
        );
        assert_eq!(decode_2047(b"=?ISO-8859-1?Q?a_b?="), "a b");
        // A character split across two words.
        assert_eq!(
            decode_2047(b"=?utf-8?q?=C3?= =?utf-8?q?=A9t=C3=A9?="),
            "été"
        );
        // Unknown charset: as written.
        assert_eq!(decode_2047(b"=?x-foo?q?abc?= x"), "=?x-foo?q?abc?= x");
        assert_eq!(decode_2047(b"plain \xe9t\xe9"), "plain été");
        assert_eq!(decode_2047(b"=?utf-8?b?!!!?="), "=?utf-8?b?!!!?=");
        assert_eq!(decode_2047(b"=?"), "=?");
    }

    #[test]
    fn params_and_continuations() {
        let v = mime_value(b" text/plain; charset=\"utf-8\"; format=flowed (c)", true).unwrap();
        assert_eq!(v.value, b"text");
        assert_eq!(v.subtype.as_deref(), Some(&b"plain"[..]));
        assert_eq!(
            v.params,
            vec![
                (b"charset".to_vec(), b"utf-8".to_vec()),
                (b"format".to_vec(), b"flowed".to_vec())
            ]
        );
        // RFC 2231 sections 3 and 4, joined.
        let v = mime_value(
            b"attachment;\n filename*0*=UTF-8''na%C3%AF;\n filename*1=\"ve file.txt\"",
            false,
        )
        .unwrap();
        assert_eq!(
            v.params,
            vec![(
                b"filename*".to_vec(),
                b"UTF-8''na%C3%AFve%20file.txt".to_vec()
            )]
        );
        assert_eq!(
            param_decoded(&v.params, "filename").as_deref(),
            Some("naïve file.txt")
        );
        let v = mime_value(b"inline; filename*0=\"a\"; filename*1=\"b.txt\"", false).unwrap();
        assert_eq!(v.params, vec![(b"filename".to_vec(), b"ab.txt".to_vec())]);
        let v = mime_value(
            b"inline; filename=\"=?iso-8859-1?q?r=E9sum=E9.pdf?=\"",
            false,
        )
        .unwrap();
        assert_eq!(
            param_decoded(&v.params, "filename").as_deref(),
            Some("résumé.pdf")
        );
        assert!(mime_value(b"text", true).is_none());
        assert!(mime_value(b"", false).is_none());
    }

    #[test]
    fn field_split() {
        let f = fields(b"Subject: a\r\n b\r\nX-Bad line\r\nTo: c\n");
        assert_eq!(f.len(), 2);
        assert_eq!(unfold(f[0].1), b"a b");
        assert_eq!(f[1].0, b"To");
    }
}
