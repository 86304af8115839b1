//! A [`Structure`] as compact bytes for the folder index, and back. The
//! index is a cache the store may find torn or stale, so the reader
//! checks everything (lengths, counts, nesting, positions in order) and
//! answers `Err` rather than panicking or allocating beyond its input.
//!
//! Layout (all numbers LEB128 varints): a version byte, the envelope,
//! then the root part. A string is its length + 1 then its bytes (0 is
//! NIL); a list is a count then its items. A part: header position
//! (stored, wire), body and end as deltas from the one before, lines,
//! type, subtype, params, id, description, encoding, md5, disposition
//! (0, or 1 + type + params), languages, location, then its kind: 0
//! single, 1 multipart (count, parts), 2 message (envelope, part).

use super::{imap, Address, Envelope, Kind, Params, Part, Pos, Structure, MAX_DEPTH};

const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    /// The bytes end inside a value.
    Truncated,
    /// A value no writer makes (version, kind, order of positions...).
    Invalid(&'static str),
}

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexError::Truncated => write!(f, "MIME index record is truncated"),
            IndexError::Invalid(what) => write!(f, "MIME index record is invalid: {what}"),
        }
    }
}

impl std::error::Error for IndexError {}

// ---- writing ----------------------------------------------------------------------------

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes(s: &[u8], out: &mut Vec<u8>) {
    varint(s.len() as u64 + 1, out);
    out.extend_from_slice(s);
}

fn nbytes(s: Option<&[u8]>, out: &mut Vec<u8>) {
    match s {
        Some(s) => bytes(s, out),
        None => out.push(0),
    }
}

fn addresses(list: &[Address], out: &mut Vec<u8>) {
    varint(list.len() as u64, out);
    for a in list {
        for f in [&a.name, &a.adl, &a.mailbox, &a.host] {
            nbytes(f.as_deref(), out);
        }
    }
}

fn envelope(e: &Envelope, out: &mut Vec<u8>) {
    nbytes(e.date.as_deref(), out);
    nbytes(e.subject.as_deref(), out);
    for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
        addresses(list, out);
    }
    nbytes(e.in_reply_to.as_deref(), out);
    nbytes(e.message_id.as_deref(), out);
}

fn params(p: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) {
    varint(p.len() as u64, out);
    for (n, v) in p {
        bytes(n, out);
        bytes(v, out);
    }
}

fn part(p: &Part, out: &mut Vec<u8>) {
    varint(p.header.stored, out);
    varint(p.header.wire, out);
    varint(p.body.stored.saturating_sub(p.header.stored), out);
    varint(p.body.wire.saturating_sub(p.header.wire), out);
    varint(p.end.stored.saturating_sub(p.body.stored), out);
    varint(p.end.wire.saturating_sub(p.body.wire), out);
    varint(p.lines, out);
    bytes(&p.ctype, out);
    bytes(&p.subtype, out);
    params(&p.params, out);
    for f in [&p.id, &p.description, &p.encoding, &p.md5] {
        nbytes(f.as_deref(), out);
    }
    match &p.disposition {
        Some((t, prm)) => {
            out.push(1);
            bytes(t, out);
            params(prm, out);
        }
        None => out.push(0),
    }
    varint(p.language.len() as u64, out);
    for l in &p.language {
        bytes(l, out);
    }
    nbytes(p.location.as_deref(), out);
    match &p.kind {
        Kind::Single => out.push(0),
        Kind::Multi(children) => {
            out.push(1);
            varint(children.len() as u64, out);
            for c in children {
                part(c, out);
            }
        }
        Kind::Message(env, inner) => {
            out.push(2);
            envelope(env, out);
            part(inner, out);
        }
    }
}

/// Appends the record for `s` to `out`.
pub fn encode(s: &Structure, out: &mut Vec<u8>) {
    out.push(VERSION);
    envelope(&s.envelope, out);
    part(&s.root, out);
}

// ---- reading ----------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, IndexError> {
        let (&first, rest) = self.b.split_first().ok_or(IndexError::Truncated)?;
        self.b = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, IndexError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let v = u64::from(b & 0x7f);
            if shift == 63 && v > 1 {
                return Err(IndexError::Invalid("number too large"));
            }
            n |= v << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(IndexError::Invalid("number too long"))
    }

    /// A count of items that each take at least one byte: never more than
    /// the bytes left, so no allocation outgrows the input.
    fn count(&mut self) -> Result<usize, IndexError> {
        let n = self.varint()?;
        if n > self.b.len() as u64 {
            return Err(IndexError::Truncated);
        }
        Ok(n as usize)
    }

    fn nbytes(&mut self) -> Result<Option<Vec<u8>>, IndexError> {
        let n = self.varint()?;
        if n == 0 {
            return Ok(None);
        }
        let len = n - 1;
        if len > self.b.len() as u64 {
            return Err(IndexError::Truncated);
        }
        let (s, rest) = self.b.split_at(len as usize);
        self.b = rest;
        Ok(Some(s.to_vec()))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, IndexError> {
        self.nbytes()?
            .ok_or(IndexError::Invalid("NIL where a string must be"))
    }

    fn addresses(&mut self) -> Result<Vec<Address>, IndexError> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(Address {
                name: self.nbytes()?,
                adl: self.nbytes()?,
                mailbox: self.nbytes()?,
                host: self.nbytes()?,
            });
        }
        Ok(out)
    }

    fn envelope(&mut self) -> Result<Envelope, IndexError> {
        Ok(Envelope {
            date: self.nbytes()?,
            subject: self.nbytes()?,
            from: self.addresses()?,
            sender: self.addresses()?,
            reply_to: self.addresses()?,
            to: self.addresses()?,
            cc: self.addresses()?,
            bcc: self.addresses()?,
            in_reply_to: self.nbytes()?,
            message_id: self.nbytes()?,
        })
    }

    fn params(&mut self) -> Result<Params, IndexError> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.bytes()?, self.bytes()?));
        }
        Ok(out)
    }

    fn after(&mut self, p: Pos) -> Result<Pos, IndexError> {
        let ds = self.varint()?;
        let dw = self.varint()?;
        Ok(Pos {
            stored: p
                .stored
                .checked_add(ds)
                .ok_or(IndexError::Invalid("position overflows"))?,
            wire: p
                .wire
                .checked_add(dw)
                .ok_or(IndexError::Invalid("position overflows"))?,
        })
    }

    /// A part that must lie within `within` (its parent's body).
    fn part(&mut self, depth: usize, within: (Pos, Pos)) -> Result<Part, IndexError> {
        // The parser nests at most MAX_DEPTH frames, plus the synthetic
        // part under the deepest.
        if depth > MAX_DEPTH + 2 {
            return Err(IndexError::Invalid("parts nested too deep"));
        }
        let header = Pos {
            stored: self.varint()?,
            wire: self.varint()?,
        };
        let body = self.after(header)?;
        let end = self.after(body)?;
        let inside = |p: Pos| {
            p.stored >= within.0.stored
                && p.wire >= within.0.wire
                && p.stored <= within.1.stored
                && p.wire <= within.1.wire
        };
        if !inside(header) || !inside(end) {
            return Err(IndexError::Invalid("part outside its parent"));
        }
        let lines = self.varint()?;
        let ctype = self.bytes()?;
        let subtype = self.bytes()?;
        let params = self.params()?;
        let id = self.nbytes()?;
        let description = self.nbytes()?;
        let encoding = self.nbytes()?;
        let md5 = self.nbytes()?;
        let disposition = match self.byte()? {
            0 => None,
            1 => Some((self.bytes()?, self.params()?)),
            _ => return Err(IndexError::Invalid("disposition tag")),
        };
        let n = self.count()?;
        let mut language = Vec::with_capacity(n);
        for _ in 0..n {
            language.push(self.bytes()?);
        }
        let location = self.nbytes()?;
        let kind = match self.byte()? {
            0 => Kind::Single,
            1 => {
                let n = self.count()?;
                if n == 0 {
                    return Err(IndexError::Invalid("multipart without parts"));
                }
                let mut children = Vec::with_capacity(n);
                for _ in 0..n {
                    children.push(self.part(depth + 1, (body, end))?);
                }
                Kind::Multi(children)
            }
            2 => {
                let env = self.envelope()?;
                let inner = self.part(depth + 1, (body, end))?;
                Kind::Message(Box::new(env), Box::new(inner))
            }
            _ => return Err(IndexError::Invalid("part kind")),
        };
        Ok(Part {
            header,
            body,
            end,
            lines,
            ctype,
            subtype,
            params,
            id,
            description,
            encoding,
            md5,
            disposition,
            language,
            location,
            kind,
        })
    }
}

/// Reads a record written by [`encode`]; the whole of `b` must be it.
pub fn decode(b: &[u8]) -> Result<Structure, IndexError> {
    let mut r = Reader { b };
    if r.byte()? != VERSION {
        return Err(IndexError::Invalid("version"));
    }
    let envelope = r.envelope()?;
    let all = (
        Pos::default(),
        Pos {
            stored: u64::MAX,
            wire: u64::MAX,
        },
    );
    let root = r.part(0, all)?;
    if root.header != Pos::default() {
        return Err(IndexError::Invalid("message does not start at 0"));
    }
    if !r.b.is_empty() {
        return Err(IndexError::Invalid("bytes after the record"));
    }
    Ok(Structure { envelope, root })
}

// ---- answering FETCH straight from the record --------------------------------------

/// Strings as slices of the record: FETCH ENVELOPE/BODYSTRUCTURE for a
/// whole folder write the response from the index without building a
/// [`Structure`] (no allocation per message).
impl<'a> Reader<'a> {
    fn nslice(&mut self) -> Result<Option<&'a [u8]>, IndexError> {
        let n = self.varint()?;
        if n == 0 {
            return Ok(None);
        }
        let len = n - 1;
        if len > self.b.len() as u64 {
            return Err(IndexError::Truncated);
        }
        let (s, rest) = self.b.split_at(len as usize);
        self.b = rest;
        Ok(Some(s))
    }

    fn slice(&mut self) -> Result<&'a [u8], IndexError> {
        self.nslice()?
            .ok_or(IndexError::Invalid("NIL where a string must be"))
    }

    fn write_nstring(&mut self, out: &mut Vec<u8>) -> Result<(), IndexError> {
        imap::nstring(self.nslice()?, out);
        Ok(())
    }

    fn write_addresses(&mut self, out: &mut Vec<u8>) -> Result<(), IndexError> {
        let n = self.count()?;
        if n == 0 {
            out.extend_from_slice(b"NIL");
            return Ok(());
        }
        out.push(b'(');
        for _ in 0..n {
            out.push(b'(');
            self.write_nstring(out)?;
            for _ in 0..3 {
                out.push(b' ');
                self.write_nstring(out)?;
            }
            out.push(b')');
        }
        out.push(b')');
        Ok(())
    }

    fn write_envelope(&mut self, out: &mut Vec<u8>) -> Result<(), IndexError> {
        out.push(b'(');
        self.write_nstring(out)?;
        out.push(b' ');
        self.write_nstring(out)?;
        for _ in 0..6 {
            out.push(b' ');
            self.write_addresses(out)?;
        }
        out.push(b' ');
        self.write_nstring(out)?;
        out.push(b' ');
        self.write_nstring(out)?;
        out.push(b')');
        Ok(())
    }

    /// Params, written (`out`) or skipped (`None`).
    fn write_params(&mut self, out: Option<&mut Vec<u8>>) -> Result<(), IndexError> {
        let n = self.count()?;
        let Some(out) = out else {
            for _ in 0..n {
                self.slice()?;
                self.slice()?;
            }
            return Ok(());
        };
        if n == 0 {
            out.extend_from_slice(b"NIL");
            return Ok(());
        }
        out.push(b'(');
        for i in 0..n {
            if i > 0 {
                out.push(b' ');
            }
            imap::string(self.slice()?, out);
            out.push(b' ');
            imap::string(self.slice()?, out);
        }
        out.push(b')');
        Ok(())
    }

    /// Disposition, language and location, written or skipped.
    fn write_dsp_lang_loc(&mut self, mut out: Option<&mut Vec<u8>>) -> Result<(), IndexError> {
        match self.byte()? {
            0 => {
                if let Some(o) = out.as_deref_mut() {
                    o.extend_from_slice(b" NIL");
                }
            }
            1 => {
                let t = self.slice()?;
                match out.as_deref_mut() {
                    Some(o) => {
                        o.extend_from_slice(b" (");
                        imap::string(t, o);
                        o.push(b' ');
                        self.write_params(Some(o))?;
                        o.push(b')');
                    }
                    None => self.write_params(None)?,
                }
            }
            _ => return Err(IndexError::Invalid("disposition tag")),
        }
        let n = self.count()?;
        if let Some(o) = out.as_deref_mut() {
            o.extend_from_slice(if n == 0 { b" NIL" } else { b" (" });
        }
        for i in 0..n {
            let l = self.slice()?;
            if let Some(o) = out.as_deref_mut() {
                if i > 0 {
                    o.push(b' ');
                }
                imap::string(l, o);
            }
        }
        if n > 0 {
            if let Some(o) = out.as_deref_mut() {
                o.push(b')');
            }
        }
        let loc = self.nslice()?;
        if let Some(o) = out {
            o.push(b' ');
            imap::nstring(loc, o);
        }
        Ok(())
    }

    /// One part as `body` (RFC 9051 7.5.2), checked as [`Reader::part`]
    /// checks it.
    fn write_part(
        &mut self,
        depth: usize,
        within: (Pos, Pos),
        ext: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), IndexError> {
        if depth > MAX_DEPTH + 2 {
            return Err(IndexError::Invalid("parts nested too deep"));
        }
        let header = Pos {
            stored: self.varint()?,
            wire: self.varint()?,
        };
        let body = self.after(header)?;
        let end = self.after(body)?;
        let inside = |p: Pos| {
            p.stored >= within.0.stored
                && p.wire >= within.0.wire
                && p.stored <= within.1.stored
                && p.wire <= within.1.wire
        };
        if !inside(header) || !inside(end) {
            return Err(IndexError::Invalid("part outside its parent"));
        }
        let lines = self.varint()?;
        let ctype = self.slice()?;
        let subtype = self.slice()?;
        // Params and the extension fields come before the kind in the
        // record; a multipart writes them after its children, so their
        // place is kept and read again then.
        let params_at = *self;
        self.write_params(None)?;
        let id = self.nslice()?;
        let description = self.nslice()?;
        let encoding = self.nslice()?;
        let md5 = self.nslice()?;
        let ext_at = *self;
        self.write_dsp_lang_loc(None)?;
        out.push(b'(');
        match self.byte()? {
            1 => {
                let n = self.count()?;
                if n == 0 {
                    return Err(IndexError::Invalid("multipart without parts"));
                }
                for _ in 0..n {
                    self.write_part(depth + 1, (body, end), ext, out)?;
                }
                out.push(b' ');
                imap::string(subtype, out);
                if ext {
                    out.push(b' ');
                    let (mut p, mut e) = (params_at, ext_at);
                    p.write_params(Some(out))?;
                    e.write_dsp_lang_loc(Some(out))?;
                }
            }
            kind @ (0 | 2) => {
                imap::string(ctype, out);
                out.push(b' ');
                imap::string(subtype, out);
                out.push(b' ');
                let mut p = params_at;
                p.write_params(Some(out))?;
                out.push(b' ');
                imap::nstring(id, out);
                out.push(b' ');
                imap::nstring(description, out);
                out.push(b' ');
                imap::string(encoding.unwrap_or(b"7bit"), out);
                out.push(b' ');
                imap::number(end.wire - body.wire, out);
                if kind == 2 {
                    out.push(b' ');
                    self.write_envelope(out)?;
                    out.push(b' ');
                    self.write_part(depth + 1, (body, end), ext, out)?;
                    out.push(b' ');
                    imap::number(lines, out);
                } else if ctype.eq_ignore_ascii_case(b"text") {
                    out.push(b' ');
                    imap::number(lines, out);
                }
                if ext {
                    out.push(b' ');
                    imap::nstring(md5, out);
                    let mut e = ext_at;
                    e.write_dsp_lang_loc(Some(out))?;
                }
            }
            _ => return Err(IndexError::Invalid("part kind")),
        }
        out.push(b')');
        Ok(())
    }
}

/// Writes the ENVELOPE of a record (RFC 9051 7.5.2), the same bytes as
/// [`imap::envelope`] of [`decode`]. On `Err`, `out` is as it was.
pub fn write_envelope(rec: &[u8], out: &mut Vec<u8>) -> Result<(), IndexError> {
    let start = out.len();
    let mut r = Reader { b: rec };
    let res = (|| {
        if r.byte()? != VERSION {
            return Err(IndexError::Invalid("version"));
        }
        r.write_envelope(out)
    })();
    if res.is_err() {
        out.truncate(start);
    }
    res
}

/// Writes BODYSTRUCTURE (`extensible`) or BODY of a record, the same
/// bytes as [`imap::body`] of [`decode`]. On `Err`, `out` is as it was.
pub fn write_body(rec: &[u8], extensible: bool, out: &mut Vec<u8>) -> Result<(), IndexError> {
    let start = out.len();
    let mut r = Reader { b: rec };
    let res = (|| {
        if r.byte()? != VERSION {
            return Err(IndexError::Invalid("version"));
        }
        // The envelope, skipped (written into a scratch that is dropped).
        let mut scratch = Vec::new();
        r.write_envelope(&mut scratch)?;
        let all = (
            Pos::default(),
            Pos {
                stored: u64::MAX,
                wire: u64::MAX,
            },
        );
        r.write_part(0, all, extensible, out)?;
        if !r.b.is_empty() {
            return Err(IndexError::Invalid("bytes after the record"));
        }
        Ok(())
    })();
    if res.is_err() {
        out.truncate(start);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_cut_fails() {
        for (name, msg) in super::super::tests::SAMPLES {
            let s = Structure::parse(msg);
            let mut rec = Vec::new();
            encode(&s, &mut rec);
            assert_eq!(decode(&rec).as_ref(), Ok(&s), "{name}");
            for ext in [true, false] {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                imap::body(&s.root, ext, &mut a);
                write_body(&rec, ext, &mut b).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&a),
                    String::from_utf8_lossy(&b),
                    "{name}"
                );
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            imap::envelope(&s.envelope, &mut a);
            write_envelope(&rec, &mut b).unwrap();
            assert_eq!(a, b, "{name}");
            for cut in 0..rec.len() {
                assert!(decode(&rec[..cut]).is_err(), "{name} cut at {cut}");
                let mut out = b"x".to_vec();
                assert!(write_body(&rec[..cut], true, &mut out).is_err());
                assert_eq!(out, b"x");
            }
            let mut longer = rec.clone();
            longer.push(0);
            assert!(decode(&longer).is_err());
            // Flipped bytes: an error or some structure, never a panic.
            for i in 0..rec.len() {
                let mut bad = rec.clone();
                bad[i] ^= 0x55;
                let (mut a, mut b) = (Vec::new(), Vec::new());
                if let Ok(s) = decode(&bad) {
                    imap::body(&s.root, true, &mut a);
                    write_body(&bad, true, &mut b).unwrap();
                    assert_eq!(a, b);
                }
            }
        }
    }

    #[test]
    fn hostile_counts_allocate_nothing_large() {
        // A count of 2^62 addresses in 10 bytes.
        let mut rec = vec![VERSION, 0, 0];
        varint(1 << 62, &mut rec);
        assert_eq!(decode(&rec), Err(IndexError::Truncated));
        assert!(decode(&[]).is_err());
        assert_eq!(decode(&[9]), Err(IndexError::Invalid("version")));
        let mut n = vec![
            VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        n.push(0);
        assert!(decode(&n).is_err());
    }
}
