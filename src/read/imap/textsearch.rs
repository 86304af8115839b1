//! What SEARCH BODY and TEXT read of a message, and the case-insensitive
//! substring search they use (RFC 9051 6.4.4), sans-I/O: `spans` picks
//! the stretches of a message from its MIME structure (the positions in
//! its record, no re-parse), `Needle` finds a string in the pieces the
//! store reads from the folder file.
//!
//! The content of an attachment (a leaf part of a type that is not text,
//! see [`binary_type`]) is not searched, as Dovecot does not: it is most
//! of a mailbox's bytes, and a word in base64 of a PDF or a photo is
//! noise. Its MIME header (name, filename) is still searched by TEXT.

use crate::store::mime::{self, decode::Encoding, Kind, Part, Structure};

/// A stretch of a message to search, in stored offsets from the message's
/// start: the wire octets as stored, or (`decode`) a text part's body with
/// its transfer encoding undone. A match never spans two stretches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub range: mime::Range,
    pub decode: Option<Encoding>,
}

/// Whether a part's content is binary data that SEARCH skips: the
/// discrete top-level types that are not text (RFC 2046 4, RFC 8081):
/// application, image, audio, video, font, model. Dovecot searches only
/// text/* and message/* bodies; pimail also searches a part of an unknown
/// or broken type (say a multipart without a boundary) rather than hide
/// text in it.
pub fn binary_type(ctype: &[u8]) -> bool {
    const BINARY: [&[u8]; 6] = [
        b"application",
        b"image",
        b"audio",
        b"video",
        b"font",
        b"model",
    ];
    BINARY.iter().any(|t| ctype.eq_ignore_ascii_case(t))
}

/// The stretches SEARCH TEXT (`with_header`) or BODY reads, in order: the
/// message as stored (for BODY from the end of its header) less the
/// bodies of binary leaf parts; then each text part in base64 or
/// quoted-printable, decoded.
pub fn spans(s: &Structure, with_header: bool) -> Vec<Span> {
    let root = &s.root;
    let mut walk = Walk {
        cursor: root.header,
        out: Vec::new(),
        decoded: Vec::new(),
    };
    // The header on its own (a needle does not match across the empty
    // line; the store reads it with the hidden fields left out).
    if with_header {
        walk.cut(root.body);
    }
    walk.cursor = root.body;
    walk.part(root);
    walk.cut(root.end);
    walk.out.append(&mut walk.decoded);
    walk.out
}

struct Walk {
    /// Where the stretch being collected began.
    cursor: mime::Pos,
    out: Vec<Span>,
    decoded: Vec<Span>,
}

impl Walk {
    /// Ends the stretch being collected at `at`.
    fn cut(&mut self, at: mime::Pos) {
        if at.stored > self.cursor.stored {
            self.out.push(Span {
                range: mime::Range {
                    start: self.cursor,
                    end: at,
                },
                decode: None,
            });
        }
    }

    fn part(&mut self, p: &Part) {
        match &p.kind {
            Kind::Multi(children) => children.iter().for_each(|c| self.part(c)),
            Kind::Message(_, inner) => self.part(inner),
            Kind::Single if binary_type(&p.ctype) => {
                self.cut(p.body);
                if p.end.stored > self.cursor.stored {
                    self.cursor = p.end;
                }
            }
            Kind::Single => {
                let enc = Encoding::of(p.encoding.as_deref());
                if matches!(enc, Encoding::Base64 | Encoding::QuotedPrintable)
                    && p.end.stored > p.body.stored
                {
                    self.decoded.push(Span {
                        range: mime::Range {
                            start: p.body,
                            end: p.end,
                        },
                        decode: Some(enc),
                    });
                }
            }
        }
    }
}

/// A string to find, ignoring ASCII case (RFC 9051 6.4.4: SEARCH
/// compares case-insensitively; non-ASCII octets compare exactly).
/// Candidates are found with `memchr` on the needle's rarest octet (both
/// cases), so most of the text is skipped at memchr's speed and only the
/// few places with that octet are compared.
#[derive(Debug, Clone)]
pub struct Needle {
    bytes: Vec<u8>,
    /// Index of the octet looked for, and its two cases.
    at: usize,
    lo: u8,
    up: u8,
}

impl Needle {
    pub fn new(needle: &[u8]) -> Needle {
        let at = (0..needle.len())
            .min_by_key(|&i| rank(needle[i]))
            .unwrap_or(0);
        let b = needle.get(at).copied().unwrap_or(0);
        Needle {
            bytes: needle.to_vec(),
            at,
            lo: b.to_ascii_lowercase(),
            up: b.to_ascii_uppercase(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the needle is found in the octets as stored in the mbox
    /// exactly when it is in their wire form: it holds no CR, LF or `>`,
    /// the only octets the wire form adds or drops (CRLF line ends, the
    /// mboxrd `>` before `From `), so it is matched within lines whose
    /// text is the same in both. The store then searches the file's
    /// octets as they are, without making the wire form.
    pub fn same_in_stored(&self) -> bool {
        !self.bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | b'>'))
    }

    /// Whether the needle is in `hay`.
    pub fn found_in(&self, hay: &[u8]) -> bool {
        let n = self.bytes.len();
        if n == 0 {
            return true;
        }
        if hay.len() < n {
            return false;
        }
        // Where the rare octet can be: a match starts `at` before it.
        let zone = &hay[self.at..hay.len() - (n - 1 - self.at)];
        let same = |i: usize| hay[i..i + n].eq_ignore_ascii_case(&self.bytes);
        if self.lo == self.up {
            memchr::memchr_iter(self.lo, zone).any(same)
        } else {
            memchr::memchr2_iter(self.lo, self.up, zone).any(same)
        }
    }
}

/// Whether `needle` is in `hay`, ignoring ASCII case.
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    Needle::new(needle).found_in(hay)
}

/// How common an octet is in mail text, both cases counted (lower is
/// rarer): letters by their English frequency, then digits and
/// punctuation; spaces and line ends are the commonest.
fn rank(b: u8) -> u8 {
    RANK[b as usize]
}

/// [`rank`] as a table (it is asked for every octet of the needle, for
/// every message searched).
const RANK: [u8; 256] = {
    // Rarest first: 'z' gets 10 .. 'e' 35, so most letters are more
    // common than digits and punctuation, and the rare ones less.
    const LETTERS: &[u8; 26] = b"zqxjkvbpygfwmucldrhsnioate";
    let mut t = [12u8; 256];
    let mut b = 0x80;
    while b < 256 {
        t[b] = 20;
        b += 1;
    }
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = 16;
        d += 1;
    }
    let mut i = 0;
    while i < 26 {
        t[LETTERS[i] as usize] = 10 + i as u8;
        t[LETTERS[i].to_ascii_uppercase() as usize] = 10 + i as u8;
        i += 1;
    }
    t[b' ' as usize] = 60;
    t[b'\r' as usize] = 60;
    t[b'\n' as usize] = 60;
    t[b'\t' as usize] = 60;
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(hay: &[u8], needle: &[u8]) -> bool {
        needle.is_empty()
            || hay
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
    }

    #[test]
    fn finds_as_the_naive_search_does() {
        let hay = b"The Zanzibarite of ZANZIBAR, zz z, a=3D\r\nb caf\xc3\xa9 \xc3\x89t\xc3\xa9";
        let needles: [&[u8]; 14] = [
            b"zanzibarite",
            b"ZANZIBARITE",
            b"zanzibar,",
            b"the",
            b"T",
            b"\xc3\xa9t",
            b"caf\xc3\xa9",
            b"CAF\xc3\xa9",
            b"caf\xc3\x89", // non-ASCII octets compare exactly
            b"zzz",
            b"\r\nb",
            b"=3d",
            b"x",
            b"",
        ];
        for n in needles {
            for start in 0..hay.len() {
                for end in start..=hay.len() {
                    let h = &hay[start..end];
                    assert_eq!(
                        Needle::new(n).found_in(h),
                        naive(h, n),
                        "{:?} in {:?}",
                        String::from_utf8_lossy(n),
                        String::from_utf8_lossy(h)
                    );
                }
            }
        }
    }

    #[test]
    fn needles_that_the_wire_form_could_change_are_not_searched_as_stored() {
        assert!(Needle::new(b"From zanzibar").same_in_stored());
        for n in [&b">From"[..], b"a\r\nb", b"\n"] {
            assert!(!Needle::new(n).same_in_stored(), "{n:?}");
        }
    }

    #[test]
    fn the_rarest_octet_is_looked_for() {
        let n = Needle::new(b"the zebra");
        assert_eq!((n.at, n.lo, n.up), (4, b'z', b'Z'));
        let n = Needle::new(b"1-2");
        assert_eq!((n.lo, n.up), (b'-', b'-'));
    }

    fn ranges(v: &[Span]) -> Vec<(u64, u64, Option<Encoding>)> {
        v.iter()
            .map(|s| (s.range.start.stored, s.range.end.stored, s.decode))
            .collect()
    }

    #[test]
    fn attachments_are_skipped_text_parts_decoded() {
        let m = b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                  --b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                  aGVsbG8=\r\n\
                  --b\r\nContent-Type: image/png; name=a.png\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                  iVBORw0KGgo=\r\n\
                  --b\r\nContent-Type: message/rfc822\r\n\r\n\
                  Subject: inner\r\nContent-Type: application/pdf\r\n\r\nJVBERi0=\r\n\
                  --b--\r\n";
        let s = Structure::parse(m);
        let at = |needle: &[u8]| {
            m.windows(needle.len())
                .position(|w| w == needle)
                .expect("in the message") as u64
        };
        let png = at(b"iVBOR");
        let pdf = at(b"JVBER");
        let text = at(b"aGVsbG8=");
        let total = m.len() as u64;
        let want = vec![
            (0, s.root.body.stored, None),
            (s.root.body.stored, png, None),
            (png + 12, pdf, None),
            (pdf + 8, total, None),
            (text, text + 8, Some(Encoding::Base64)),
        ];
        assert_eq!(ranges(&spans(&s, true)), want);
        assert_eq!(s.root.body.stored, at(b"--b\r\nContent-Type: text"));
        assert_eq!(ranges(&spans(&s, false)), want[1..]);
    }

    #[test]
    fn a_message_that_is_one_image_has_its_header_searched() {
        let m = b"Subject: pic\r\nContent-Type: image/jpeg\r\n\r\n/9j/4AAQ\r\n";
        let s = Structure::parse(m);
        let v = spans(&s, true);
        assert_eq!(ranges(&v), [(0, s.root.body.stored, None)]);
        assert!(spans(&s, false).is_empty());
    }
}
