//! Header rules (`[[inbound.rule]]`) and the header scan they run on.
//!
//! [`HeaderScan`] sits in the DATA stream of port 25 like the forged
//! Authentication-Results filter: it passes the message through, removes
//! every incoming `X-Spam-Reason:` field (ours is the only one the user
//! may believe, as RFC 8601 5 says of verdicts), and keeps the unfolded
//! values of the fields the rules name, plus `From` and `Message-ID` for
//! the not-junk list. Memory is bounded: [`MAX_VALUE`] bytes per field,
//! [`MAX_FIELDS`] fields.
//!
//! A rule matches when the field is present and its value contains the
//! `contains` text, or the whole value matches the `pattern` glob (`*`
//! any run, `?` one character), both without regard to case. The first
//! matching rule decides; a message whose envelope sender, From address
//! or Message-ID is in the not-junk list is exempt from all rules.

use crate::config::{HeaderRule, Matcher, RuleAction};

/// The most of one field value kept for matching.
pub const MAX_VALUE: usize = 4096;
/// The most fields kept.
pub const MAX_FIELDS: usize = 64;
/// Header lines longer than this pass through in pieces.
const MAX_LINE: usize = 8 * 1024;

/// The field a forged verdict of ours would use.
pub const SPAM_REASON: &str = "x-spam-reason";

pub struct HeaderScan {
    wanted: Vec<String>,
    in_body: bool,
    line: Vec<u8>,
    /// Continuation lines of the current field are dropped.
    dropping: bool,
    /// The field being collected: its index in `fields`.
    collecting: Option<usize>,
    /// (lower-case name, unfolded value).
    pub fields: Vec<(String, String)>,
    /// Incoming `X-Spam-Reason:` fields removed.
    pub removed: usize,
}

impl HeaderScan {
    /// Keeps the fields named in `rules`, and From and Message-ID.
    pub fn new(rules: &[HeaderRule]) -> HeaderScan {
        let names: Vec<&str> = rules.iter().map(|r| r.header.as_str()).collect();
        HeaderScan::for_fields(&names)
    }

    /// Keeps the fields `names` (lower case), and From and Message-ID.
    pub fn for_fields(names: &[&str]) -> HeaderScan {
        let mut wanted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        wanted.push("from".into());
        wanted.push("message-id".into());
        wanted.sort();
        wanted.dedup();
        HeaderScan {
            wanted,
            in_body: false,
            line: Vec::new(),
            dropping: false,
            collecting: None,
            fields: Vec::new(),
            removed: 0,
        }
    }

    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        // Line by line with memchr, not byte by byte: every message on
        // port 25 passes through here (docs/spam.md, "Cost").
        while !self.in_body && !input.is_empty() {
            let (piece, rest, ends) = match memchr::memchr(b'\n', input) {
                Some(i) => (&input[..=i], &input[i + 1..], true),
                None => (input, &input[input.len()..], false),
            };
            input = rest;
            if ends && self.line.is_empty() {
                // The usual case: a whole line in this piece, not copied.
                self.line_done(piece, out);
                continue;
            }
            self.line.extend_from_slice(piece);
            if ends {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, out);
                self.line = line;
                self.line.clear();
            } else if self.line.len() > MAX_LINE {
                // Not a header line to judge: pass it (unless dropping).
                if !self.dropping {
                    out.extend_from_slice(&self.line);
                }
                self.line.clear();
            }
        }
        out.extend_from_slice(input);
    }

    /// At the end of the message.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.in_body && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(i) = self.collecting {
                append_value(&mut self.fields[i].1, line);
            }
            if !self.dropping {
                out.extend_from_slice(line);
            }
            return;
        }
        self.collecting = None;
        self.dropping = false;
        if line == b"\r\n" || line == b"\n" {
            self.in_body = true;
            out.extend_from_slice(line);
            return;
        }
        if let Some(c) = memchr::memchr(b':', line) {
            let name = line[..c].trim_ascii();
            if name.eq_ignore_ascii_case(SPAM_REASON.as_bytes()) {
                self.removed += 1;
                self.dropping = true;
                return;
            }
            let wanted = self
                .wanted
                .iter()
                .find(|w| name.eq_ignore_ascii_case(w.as_bytes()));
            if let Some(w) = wanted.filter(|_| self.fields.len() < MAX_FIELDS) {
                let mut v = String::new();
                append_value(&mut v, &line[c + 1..]);
                self.fields.push((w.clone(), v));
                self.collecting = Some(self.fields.len() - 1);
            }
        }
        out.extend_from_slice(line);
    }

    /// The first value of field `name` (lower case).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Unfolds (RFC 5322 2.2.3) a piece of a field value onto `v`, bounded.
fn append_value(v: &mut String, piece: &[u8]) {
    if v.len() >= MAX_VALUE {
        return;
    }
    let text = String::from_utf8_lossy(piece);
    let t = text.trim_end_matches(['\r', '\n']);
    // As much as fits, cut at a character boundary.
    let mut take = t.len().min(MAX_VALUE - v.len());
    while !t.is_char_boundary(take) {
        take -= 1;
    }
    v.push_str(&t[..take]);
    let trimmed = v.trim();
    if trimmed.len() != v.len() {
        *v = trimmed.to_string();
    }
}

/// `*` any run, `?` one character; `text` and `pattern` already folded
/// to lower case. Linear backtracking on the last `*` (no blow-up).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The address inside a From value (`Name <a@b>` or `a@b`), lower case.
pub fn from_address(value: &str) -> Option<String> {
    let v = value.trim();
    let addr = match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v,
    };
    let addr = addr.trim();
    addr.contains('@').then(|| addr.to_lowercase())
}

/// A rule that matched, with the reason to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub action: RuleAction,
    pub reason: String,
}

/// The first rule that matches the scanned header.
pub fn evaluate(rules: &[HeaderRule], scan: &HeaderScan) -> Option<Hit> {
    for r in rules {
        for (name, value) in scan.fields.iter().filter(|(n, _)| *n == r.header) {
            let v = value.to_lowercase();
            let (hit, what) = match &r.matcher {
                Matcher::Contains(c) => (v.contains(c.as_str()), format!("contains {c:?}")),
                Matcher::Pattern(p) => (glob(p, &v), format!("matches {p:?}")),
            };
            if hit {
                return Some(Hit {
                    action: r.action,
                    reason: format!("rule: {name} {what}"),
                });
            }
        }
    }
    None
}

/// The not-junk list's keys for a message: the envelope sender, the From
/// address and the Message-ID.
pub fn not_junk_keys(sender: &str, scan: &HeaderScan) -> Vec<String> {
    let mut keys = Vec::new();
    if !sender.is_empty() {
        keys.push(format!("sender {}", sender.to_lowercase()));
    }
    if let Some(f) = scan.value("from").and_then(from_address) {
        keys.push(format!("sender {f}"));
    }
    if let Some(id) = scan.value("message-id") {
        keys.push(format!("message-id {}", id.trim().to_lowercase()));
    }
    keys
}

/// What goes into the not-junk list when the user says a stored message
/// is not junk (IMAP: `$NotJunk`, or moved out of Junk), given the top of
/// the message (its header; more is ignored): `sender` with its From
/// address (the `Return-Path:` address when it has no From) and
/// `message-id`, the forms [`not_junk_keys`] looks up. The From address
/// rather than the envelope sender, because that is the sender the user
/// saw, and because list and bulk mail change their envelope sender
/// (VERP) with each message.
pub fn not_junk_entries(header: &[u8]) -> Vec<String> {
    let mut scan = HeaderScan::for_fields(&["return-path"]);
    let mut sink = Vec::new();
    scan.feed(header, &mut sink);
    scan.finish(&mut sink);
    let mut out = Vec::new();
    let from = scan
        .value("from")
        .and_then(from_address)
        .or_else(|| scan.value("return-path").and_then(from_address));
    if let Some(f) = from {
        out.push(format!("sender {f}"));
    }
    if let Some(id) = scan.value("message-id").map(str::trim) {
        if !id.is_empty() {
            out.push(format!("message-id {}", id.to_lowercase()));
        }
    }
    out
}

/// An `X-Spam-Reason:` field for the stored message (LF, as in the mbox):
/// one line, printable ASCII.
pub fn reason_header(reason: &str) -> String {
    let clean: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(900)
        .collect();
    format!("X-Spam-Reason: {clean}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(h: &str, m: Matcher, a: RuleAction) -> HeaderRule {
        HeaderRule {
            header: h.into(),
            matcher: m,
            action: a,
        }
    }

    fn scan_all(rules: &[HeaderRule], msg: &[u8], step: usize) -> (HeaderScan, Vec<u8>) {
        let mut s = HeaderScan::new(rules);
        let mut out = Vec::new();
        for c in msg.chunks(step) {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        (s, out)
    }

    #[test]
    fn forged_reasons_removed_fields_collected_at_every_split() {
        let rules = [rule(
            "subject",
            Matcher::Contains("viagra".into()),
            RuleAction::Junk,
        )];
        let msg = b"X-Spam-Reason: none, trust me\n\tsecond line\nFrom: \"Sam\" <Sam@Sender.test>\nSubject: cheap\n VIAGRA now\nx-spam-reason:x\nMessage-ID: <1@s.test>\n\nX-Spam-Reason: in the body stays\n";
        for step in 1..msg.len() {
            let (s, out) = scan_all(&rules, msg, step);
            let out = String::from_utf8(out).unwrap();
            assert_eq!(
                out,
                "From: \"Sam\" <Sam@Sender.test>\nSubject: cheap\n VIAGRA now\nMessage-ID: <1@s.test>\n\nX-Spam-Reason: in the body stays\n",
                "step {step}"
            );
            assert_eq!(s.removed, 2);
            assert_eq!(s.value("subject"), Some("cheap VIAGRA now"));
            let hit = evaluate(&rules, &s).unwrap();
            assert_eq!(hit.action, RuleAction::Junk);
            assert_eq!(hit.reason, "rule: subject contains \"viagra\"");
            assert_eq!(
                not_junk_keys("bounce@sender.test", &s),
                vec![
                    "sender bounce@sender.test",
                    "sender sam@sender.test",
                    "message-id <1@s.test>"
                ]
            );
        }
    }

    #[test]
    fn not_junk_entries_name_the_from_address_and_the_message_id() {
        let head = b"X-Spam-Reason: rule: subject contains \"lottery\"\nReturn-Path: <bounce-77@lists.test>\nFrom: Winner\n <Win@Lotto.test>\nMessage-ID: <A1@lotto.test>\n\nbody From: x@y.test\n";
        let e = not_junk_entries(head);
        assert_eq!(
            e,
            vec!["sender win@lotto.test", "message-id <a1@lotto.test>"]
        );
        // The keys an incoming message from that sender is looked up by.
        let (s, _) = scan_all(&[], b"From: <win@lotto.test>\n\n", 3);
        assert!(not_junk_keys("other@x.test", &s).contains(&e[0]));
        // No From: the envelope sender; a null sender is nobody.
        let e = not_junk_entries(b"Return-Path: <Bob@B.test>\nSubject: x\n\n");
        assert_eq!(e, vec!["sender bob@b.test"]);
        assert!(not_junk_entries(b"Return-Path: <>\n\n").is_empty());
    }

    #[test]
    fn globs() {
        assert!(glob("*.ru>", "<x@spam.ru>"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*win*prize*", "you win a prize!"));
        assert!(!glob("*win*prize", "you win a prize!"));
        assert!(glob("*", ""));
        // No exponential blow-up.
        let long = "a".repeat(5000);
        assert!(!glob("*a*a*a*a*a*a*b", &long));
        let rules = [rule(
            "from",
            Matcher::Pattern("*@*.example.ru>".into()),
            RuleAction::Reject,
        )];
        let (s, _) = scan_all(&rules, b"From: X <a@b.example.ru>\n\nbody\n", 7);
        assert_eq!(evaluate(&rules, &s).unwrap().action, RuleAction::Reject);
        assert_eq!(reason_header("dmarc\nx"), "X-Spam-Reason: dmarc?x\n");
    }
}
