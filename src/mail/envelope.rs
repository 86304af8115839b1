//! What a finished SMTP transaction hands to delivery: the envelope, where
//! it came from, and the trace headers every delivered message gets
//! (`Return-Path:`, RFC 5321 4.4; `Received:`, RFC 5321 4.4 and RFC 8314 for
//! the TLS clause).

use crate::mail::address::{Address, Destination};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.3"
    pub version: String,
    /// "TLS13_AES_256_GCM_SHA384"
    pub cipher: String,
}

#[derive(Debug, Clone)]
pub struct Recipient {
    pub addr: Address,
    pub dest: Destination,
}

#[derive(Debug, Clone)]
pub struct Envelope {
    /// `None` is the null sender `<>` (bounces).
    pub from: Option<Address>,
    pub rcpts: Vec<Recipient>,
    pub helo: String,
    pub esmtp: bool,
    pub peer: IpAddr,
    pub tls: Option<TlsInfo>,
    /// The authenticated login, on submission.
    pub auth: Option<String>,
    pub smtputf8: bool,
}

impl Envelope {
    pub fn sender(&self) -> String {
        self.from
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    pub fn has_local(&self) -> bool {
        self.rcpts.iter().any(|r| r.dest == Destination::Local)
    }

    pub fn remote_rcpts(&self) -> impl Iterator<Item = &Recipient> {
        self.rcpts.iter().filter(|r| r.dest == Destination::Remote)
    }

    /// The `with` protocol name of RFC 3848: ESMTP, plus S for TLS and A
    /// for an authenticated session.
    fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some(), self.auth.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// `Received:` for this message, folded over lines, LF-terminated.
    pub fn received_header(&self, hostname: &str, id: &str, now: u64) -> String {
        let helo = trace_text(&self.helo, 255);
        let mut s = format!(
            "Received: from {helo} ([{}])\n\tby {hostname} (pimail)",
            self.peer
        );
        if let Some(t) = &self.tls {
            s += &format!("\n\t(using {} with cipher {})", t.version, t.cipher);
        }
        s += &format!("\n\twith {} id {id}", self.protocol());
        if let [only] = self.rcpts.as_slice() {
            s += &format!("\n\tfor <{}>", only.addr);
        }
        s += &format!(";\n\t{}\n", crate::util::timefmt::rfc5322(now));
        s
    }

    /// `Return-Path:` as the final delivery adds it (RFC 5321 4.4).
    pub fn return_path_header(&self) -> String {
        format!("Return-Path: <{}>\n", self.sender())
    }
}

/// Client-chosen text made safe for a trace header: every character that
/// does not print as itself (controls, line and paragraph separators such
/// as U+2028, invisible format characters such as bidi overrides and
/// zero-width spaces, other spaces than U+0020) becomes `\u{hex}`, so it
/// can neither break the header nor hide in it; `\` is doubled so the
/// escape is unambiguous; parentheses, which would open or close an RFC
/// 5322 comment, are dropped. At most `max` characters are kept.
pub fn trace_text(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| *c != '(' && *c != ')').take(max) {
        if c == '\\' {
            out.push_str("\\\\");
        } else if prints_as_itself(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out
}

/// Not a control, separator (other than the space), format character,
/// private-use or non-character code point (Unicode general categories
/// Cc, Zl, Zp, Zs, Cf, Co and the noncharacters; the Cf list is Unicode
/// 15's, kept short because std has no category table).
fn prints_as_itself(c: char) -> bool {
    let u = c as u32;
    let invisible = matches!(u,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2
        | 0x1680 | 0x180e
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f
        | 0x3000 | 0xfeff | 0xfff9..=0xfffb
        | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a | 0xe0000..=0xe007f
        | 0xe000..=0xf8ff | 0xf0000..=0x10ffff
        | 0xfdd0..=0xfdef)
        || u & 0xfffe == 0xfffe;
    !invisible
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            from: Some(Address {
                local: "bob".into(),
                domain: "example.com".into(),
            }),
            rcpts: vec![Recipient {
                addr: Address {
                    local: "alice".into(),
                    domain: "example.org".into(),
                },
                dest: Destination::Local,
            }],
            helo: "mx.example.com".into(),
            esmtp: true,
            peer: "192.0.2.7".parse().unwrap(),
            tls: None,
            auth: None,
            smtputf8: false,
        }
    }

    #[test]
    fn trace_text_escapes_what_does_not_print() {
        assert_eq!(trace_text("mx.example.com", 255), "mx.example.com");
        assert_eq!(trace_text("bücher.example", 255), "bücher.example");
        assert_eq!(
            trace_text("a\u{2028}b\u{2029}c\u{202e}d\u{200b}e\u{0}f\u{1b}g", 255),
            "a\\u{2028}b\\u{2029}c\\u{202e}d\\u{200b}e\\u{0}f\\u{1b}g"
        );
        assert_eq!(trace_text("x\\u{41}(y)", 255), "x\\\\u{41}y");
        assert_eq!(
            trace_text("\u{a0}\u{3000}\u{feff}\u{fffe}", 255),
            "\\u{a0}\\u{3000}\\u{feff}\\u{fffe}"
        );
        assert_eq!(trace_text(&"z".repeat(300), 255).len(), 255);
    }

    #[test]
    fn received_plain_and_tls() {
        let e = env();
        assert_eq!(
            e.received_header("mail.example.org", "abc123", 0),
            "Received: from mx.example.com ([192.0.2.7])\n\tby mail.example.org (pimail)\n\twith ESMTP id abc123\n\tfor <alice@example.org>;\n\tThu, 1 Jan 1970 00:00:00 +0000\n"
        );
        let mut e = env();
        e.tls = Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        });
        e.helo = "evil)\r\nX-Injected: 1".into();
        let r = e.received_header("h", "i", 0);
        assert!(r.contains("(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)"));
        assert!(r.contains("with ESMTPS id i"));
        assert!(!r.contains("\r") && r.lines().all(|l| !l.starts_with("X-Injected")));
        assert_eq!(e.return_path_header(), "Return-Path: <bob@example.com>\n");
        e.from = None;
        assert_eq!(e.return_path_header(), "Return-Path: <>\n");
    }
}
