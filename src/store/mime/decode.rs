//! Undoing a part's Content-Transfer-Encoding (RFC 2045 6.7, 6.8) for
//! IMAP's BINARY fetch (RFC 3516, RFC 9051 6.4.5), as a streaming
//! decoder: the body is fed in pieces of any size and only a few bytes
//! are held between them, so a large attachment is never in memory.

use crate::util::base64;

/// A part's transfer encoding, from its Content-Transfer-Encoding value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 7bit, 8bit, binary or none: the octets are the content.
    Identity,
    Base64,
    QuotedPrintable,
    /// An encoding RFC 2045 does not define: BINARY answers
    /// `NO [UNKNOWN-CTE]` (RFC 3516 4.3).
    Unknown,
}

impl Encoding {
    pub fn of(value: Option<&[u8]>) -> Encoding {
        let Some(v) = value else {
            return Encoding::Identity;
        };
        let is = |s: &[u8]| v.eq_ignore_ascii_case(s);
        if is(b"7bit") || is(b"8bit") || is(b"binary") {
            Encoding::Identity
        } else if is(b"base64") {
            Encoding::Base64
        } else if is(b"quoted-printable") {
            Encoding::QuotedPrintable
        } else {
            Encoding::Unknown
        }
    }
}

/// The decoder's state between pieces.
#[derive(Debug)]
pub struct Decoder {
    enc: Encoding,
    /// base64: up to three sextets not yet making whole octets.
    acc: u32,
    bits: u8,
    /// quoted-printable: bytes held back (an `=` and what followed it
    /// so far, or spaces and tabs that are dropped if the line ends).
    held: Vec<u8>,
}

impl Decoder {
    pub fn new(enc: Encoding) -> Decoder {
        Decoder {
            enc,
            acc: 0,
            bits: 0,
            held: Vec::new(),
        }
    }

    /// Decodes `input` (the next piece of the wire body, CRLF line ends)
    /// into `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self.enc {
            Encoding::Identity | Encoding::Unknown => out.extend_from_slice(input),
            Encoding::Base64 => {
                for &b in input {
                    // Padding, line ends and anything else are skipped
                    // (RFC 2045 6.8: ignore what is not in the alphabet).
                    let Some(v) = base64::value(b) else {
                        continue;
                    };
                    self.acc = (self.acc << 6) | v;
                    self.bits += 6;
                    if self.bits >= 8 {
                        self.bits -= 8;
                        out.push((self.acc >> self.bits) as u8);
                        self.acc &= (1 << self.bits) - 1;
                    }
                }
            }
            Encoding::QuotedPrintable => {
                let mut i = 0;
                while i < input.len() {
                    if self.held.is_empty() {
                        // A run of octets that stand for themselves is
                        // copied whole (SEARCH decodes every QP text).
                        let run = input[i..]
                            .iter()
                            .position(|&b| matches!(b, b'=' | b' ' | b'\t' | b'\r' | b'\n'))
                            .unwrap_or(input.len() - i);
                        out.extend_from_slice(&input[i..i + run]);
                        i += run;
                        if i == input.len() {
                            break;
                        }
                    }
                    self.qp(input[i], out);
                    i += 1;
                }
            }
        }
    }

    fn qp(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.held.first() == Some(&b'=') {
            self.held.push(b);
            let rest = &self.held[1..];
            let pad = |c: &u8| matches!(c, b' ' | b'\t');
            let n = rest.len();
            if n == 2 && rest[0].is_ascii_hexdigit() && rest[1].is_ascii_hexdigit() {
                out.push(hex(rest[0]) << 4 | hex(rest[1]));
                self.held.clear();
            } else if n == 1 && rest[0].is_ascii_hexdigit() {
                // Wait for the second digit.
            } else if rest[..n - 1].iter().all(pad) && rest[n - 1] == b'\n' {
                // A soft line break, `=` then optional padding then the
                // line end (RFC 2045 6.7 rules 3 and 5).
                self.held.clear();
            } else if rest[..n - 1].iter().all(pad) && (pad(&rest[n - 1]) || rest[n - 1] == b'\r') {
                // Maybe a soft line break: wait.
            } else if n >= 2
                && rest[..n - 2].iter().all(pad)
                && rest[n - 2] == b'\r'
                && rest[n - 1] == b'\n'
            {
                self.held.clear();
            } else {
                // Not an encoding: keep the octets as written (RFC 2045
                // 6.7 note 1, the robust reading).
                let held = std::mem::take(&mut self.held);
                out.push(b'=');
                for c in held.into_iter().skip(1) {
                    self.qp(c, out);
                }
            }
            return;
        }
        match b {
            b'=' => {
                out.append(&mut self.held);
                self.held.push(b'=');
            }
            // Whitespace is held until we know whether the line ends
            // after it (trailing whitespace is transport padding, rule 3).
            b' ' | b'\t' => self.held.push(b),
            b'\r' => {}
            b'\n' => {
                self.held.clear();
                out.extend_from_slice(b"\r\n");
            }
            _ => {
                out.append(&mut self.held);
                out.push(b);
            }
        }
    }

    /// The end of the body: whatever is held and means something.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.enc == Encoding::QuotedPrintable {
            // An `=` at the very end is a soft break; a lone `=X` stays.
            if self.held.first() == Some(&b'=') {
                if let [b'=', h] = self.held[..] {
                    if !h.is_ascii_whitespace() {
                        out.extend_from_slice(&[b'=', h]);
                    }
                }
            }
            // Trailing whitespace at the end of the body is padding.
            self.held.clear();
        }
    }
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// Decodes a whole body held in memory (a small part).
pub fn decode(enc: Encoding, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut d = Decoder::new(enc);
    d.feed(input, &mut out);
    d.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split of the input into two pieces decodes the same.
    fn all_splits(enc: Encoding, input: &[u8]) -> Vec<u8> {
        let whole = decode(enc, input);
        for i in 0..=input.len() {
            let mut out = Vec::new();
            let mut d = Decoder::new(enc);
            d.feed(&input[..i], &mut out);
            d.feed(&input[i..], &mut out);
            d.finish(&mut out);
            assert_eq!(out, whole, "split at {i}");
        }
        let mut out = Vec::new();
        let mut d = Decoder::new(enc);
        for b in input {
            d.feed(std::slice::from_ref(b), &mut out);
        }
        d.finish(&mut out);
        assert_eq!(out, whole, "byte by byte");
        whole
    }

    #[test]
    fn encodings_by_name() {
        assert_eq!(Encoding::of(None), Encoding::Identity);
        assert_eq!(Encoding::of(Some(b"BASE64")), Encoding::Base64);
        assert_eq!(
            Encoding::of(Some(b"Quoted-Printable")),
            Encoding::QuotedPrintable
        );
        assert_eq!(Encoding::of(Some(b"8bit")), Encoding::Identity);
        assert_eq!(Encoding::of(Some(b"x-uuencode")), Encoding::Unknown);
    }

    #[test]
    fn base64_with_line_ends_and_padding() {
        assert_eq!(
            all_splits(Encoding::Base64, b"AAECAwQF/w=="),
            [0, 1, 2, 3, 4, 5, 255]
        );
        assert_eq!(
            all_splits(Encoding::Base64, b"SGVsbG8s\r\nIFdvcmxk\r\nIQ==\r\n"),
            b"Hello, World!"
        );
        // Characters outside the alphabet are ignored (RFC 2045 6.8).
        assert_eq!(all_splits(Encoding::Base64, b"SG V*sbG8="), b"Hello");
    }

    #[test]
    fn quoted_printable_rfc2045_rules() {
        // Rule 1 (=XX), rule 3 (trailing whitespace dropped), rule 5
        // (soft line breaks, also with padding after the `=`).
        assert_eq!(
            all_splits(
                Encoding::QuotedPrintable,
                b"H=C3=A9llo  \r\nsoft=\r\nbreak= \t\r\nend=3D=\r\n"
            ),
            "H\u{e9}llo\r\nsoftbreakend=".as_bytes()
        );
        // Lowercase hex is accepted; a bad escape is kept as written.
        assert_eq!(
            all_splits(Encoding::QuotedPrintable, b"a=e9b =ZZ c=\r"),
            b"a\xe9b =ZZ c"
        );
        assert_eq!(
            all_splits(Encoding::QuotedPrintable, b"tab\tin"),
            b"tab\tin"
        );
        assert_eq!(all_splits(Encoding::QuotedPrintable, b"x=4"), b"x=4");
    }

    #[test]
    fn identity_is_unchanged() {
        assert_eq!(all_splits(Encoding::Identity, b"a=3D\r\n"), b"a=3D\r\n");
    }
}
