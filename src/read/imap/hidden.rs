//! The header fields the IMAP view of a stored message leaves out:
//! `Status:` and `X-Status:` in the message's own header, where pimail
//! (and mutt, pine, mailx) keep flags for mbox readers (docs/imap.md),
//! and pimail's seal `X-Pimail:` (stripped from mail it receives, so
//! only ever its own).
//! They change when a folder is rewritten, and RFC 9051 2.3.1.1 wants a
//! message's content fixed for its UID: hidden, the message IMAP serves
//! stays the same octets whatever flags the file records. Dovecot's mbox
//! storage hides them too.
//!
//! [`HideFilter`] removes them from a stream of stored octets fed in any
//! pieces (a field's continuation lines with it), and counts what it
//! removed; it passes everything after the header's blank line. What it
//! removed is kept (the first [`KEPT`] octets): for mail another program
//! wrote, those fields are the flags mbox readers gave it ([`flags`]).

/// Streams stored octets minus the hidden fields of the top header.
#[derive(Debug, Clone, Default)]
pub struct HideFilter {
    /// Octets of the current line held until its name is known.
    held: Vec<u8>,
    state: State,
    /// The last field was hidden (its continuation lines are too).
    hiding: bool,
    /// Stored octets left out so far.
    pub removed: u64,
    /// What they are on the wire (a bare LF is CRLF there).
    pub removed_wire: u64,
    /// The last octet left out (a CR before the LF of the next piece).
    last_removed: u8,
    /// The first [`KEPT`] of them.
    pub text: Vec<u8>,
}

/// Octets of hidden fields kept for [`flags`]: `Status: RO` and
/// `X-Status: AFDT` are 24; more is junk.
const KEPT: usize = 256;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// At a line start, deciding (`held` has the line so far).
    #[default]
    Start,
    /// In a line being passed.
    Keep,
    /// In a line being dropped.
    Drop,
    /// Past the header: everything passes.
    Body,
}

/// `X-Pimail:` is pimail's seal (`store::mbox::Seal`), after
/// `Return-Path:` in delivered mail (as the first line it is skipped
/// before the filter): trace data of the server, not the message's.
const NAMES: [&[u8]; 3] = [b"status:", b"x-status:", b"x-pimail:"];

impl HideFilter {
    pub fn new() -> HideFilter {
        HideFilter::default()
    }

    /// Whether the header ended (the rest passes unchanged).
    pub fn done(&self) -> bool {
        self.state == State::Body
    }

    pub fn feed(&mut self, mut p: &[u8], out: &mut Vec<u8>) {
        while !p.is_empty() {
            match self.state {
                State::Body => {
                    out.extend_from_slice(p);
                    return;
                }
                State::Keep | State::Drop => {
                    let (line, rest) = match memchr::memchr(b'\n', p) {
                        Some(i) => (&p[..=i], &p[i + 1..]),
                        None => (p, &p[p.len()..]),
                    };
                    if self.state == State::Keep {
                        out.extend_from_slice(line);
                    } else {
                        self.dropped(line);
                    }
                    if line.ends_with(b"\n") {
                        self.state = State::Start;
                    }
                    p = rest;
                }
                State::Start => {
                    let b = p[0];
                    p = &p[1..];
                    self.held.push(b);
                    self.decide(out);
                }
            }
        }
    }

    /// With one more octet held at a line start: decide if possible.
    fn decide(&mut self, out: &mut Vec<u8>) {
        let h = &self.held[..];
        let verdict = if h == b"\n" || h == b"\r\n" {
            // The blank line: the header ends.
            Some(State::Body)
        } else if h == b"\r" {
            None
        } else if h[0] == b' ' || h[0] == b'\t' {
            Some(if self.hiding {
                State::Drop
            } else {
                State::Keep
            })
        } else if NAMES.iter().any(|n| n.eq_ignore_ascii_case(h)) {
            self.hiding = true;
            Some(State::Drop)
        } else if NAMES
            .iter()
            .any(|n| n.len() > h.len() && n[..h.len()].eq_ignore_ascii_case(h))
            && !h.ends_with(b"\n")
        {
            None
        } else {
            self.hiding = false;
            Some(State::Keep)
        };
        let Some(v) = verdict else { return };
        let line_done = self.held.ends_with(b"\n");
        if v == State::Drop {
            let held = std::mem::take(&mut self.held);
            self.dropped(&held);
            self.held = held;
        } else {
            out.extend_from_slice(&self.held);
        }
        self.held.clear();
        self.state = if line_done && v != State::Body {
            State::Start
        } else {
            v
        };
    }

    fn dropped(&mut self, b: &[u8]) {
        self.removed += b.len() as u64;
        let bare = memchr::memchr_iter(b'\n', b)
            .filter(|&i| {
                let before = if i == 0 { self.last_removed } else { b[i - 1] };
                before != b'\r'
            })
            .count() as u64;
        self.removed_wire += b.len() as u64 + bare;
        if let Some(&l) = b.last() {
            self.last_removed = l;
        }
        let room = KEPT.saturating_sub(self.text.len()).min(b.len());
        self.text.extend_from_slice(&b[..room]);
    }

    /// The input ended: a held line start that never got decided (a
    /// header cut short) is passed.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held);
        self.held.clear();
    }
}

/// The IMAP flags in hidden fields ([`HideFilter::text`]), as mutt,
/// mailx and pine write them and pimail's rewrites do
/// ([`crate::store::maildrop::status_lines`]): `R` in `Status:` is
/// `\Seen`; `A`, `F`, `D`, `T` in `X-Status:` are `\Answered`,
/// `\Flagged`, `\Deleted`, `\Draft`. `O` (old: not new to mutt) has no
/// flag of its own: IMAP's `\Recent` is not kept (docs/imap.md).
pub fn flags(text: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |f: &str| {
        if !out.iter().any(|x| x == f) {
            out.push(f.to_string());
        }
    };
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"status") {
            if value.contains(&b'R') {
                add("\\Seen");
            }
        } else if name.eq_ignore_ascii_case(b"x-status") {
            for (letter, flag) in [
                (b'A', "\\Answered"),
                (b'F', "\\Flagged"),
                (b'D', "\\Deleted"),
                (b'T', "\\Draft"),
            ] {
                if value.contains(&letter) {
                    add(flag);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Subject: s\nStatus: RO\nX-Status: AF\n folded\nStatusline: kept\n\
X-Statu: kept\r\nstatus:  x\n\nStatus: in the body\n";
    const WANT: &[u8] = b"Subject: s\nStatusline: kept\nX-Statu: kept\r\n\nStatus: in the body\n";

    #[test]
    fn hides_status_fields_in_any_pieces() {
        for cut in 1..MSG.len() {
            let mut f = HideFilter::new();
            let mut out = Vec::new();
            for piece in MSG.chunks(cut) {
                f.feed(piece, &mut out);
            }
            f.finish(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(WANT),
                "cut {cut}"
            );
            assert_eq!(f.removed as usize, MSG.len() - WANT.len());
            assert!(f.done());
            assert_eq!(
                flags(&f.text),
                ["\\Seen", "\\Answered", "\\Flagged"],
                "cut {cut}"
            );
        }
        // A header-only message, and one without hidden fields.
        let mut f = HideFilter::new();
        let mut out = Vec::new();
        f.feed(b"Subject: s\nStatus: O\n", &mut out);
        f.finish(&mut out);
        assert_eq!(out, b"Subject: s\n");
        let mut f = HideFilter::new();
        let mut out = Vec::new();
        f.feed(b"\nStatus: O\n", &mut out);
        assert_eq!(out, b"\nStatus: O\n");
        assert_eq!(f.removed, 0);
        assert!(flags(&f.text).is_empty());
    }

    #[test]
    fn flags_read_as_mbox_readers_write_them() {
        let of = |t: &[u8]| flags(t);
        assert_eq!(of(b"Status: RO\n"), ["\\Seen"]);
        // Old but unread: no flag (mutt shows it without the N).
        assert!(of(b"Status: O\n").is_empty());
        assert_eq!(
            of(b"Status: OR\nX-Status: DT\n"),
            ["\\Seen", "\\Deleted", "\\Draft"]
        );
        assert_eq!(of(b"x-status: F\r\n"), ["\\Flagged"]);
        // pimail's own rewrite reads back as it was written.
        let all = crate::store::maildrop::status_lines(true, true, true, true, true);
        assert_eq!(of(&all).len(), 5);
        // No colon, other text: nothing.
        assert!(of(b"garbage R A F\n").is_empty());
    }
}
