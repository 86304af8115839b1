//! Inbound message authentication on port 25: SPF for the client and the
//! MAIL FROM (or HELO) domain, and for the HELO identity on its own as RFC
//! 7208 2.3 recommends, the message's DKIM signatures, DMARC for the
//! From domain, recorded in an `Authentication-Results:` header (RFC 8601;
//! `header.b` from RFC 6008).
//!
//! The SMTP driver streams DATA through a [`crate::trust::dkim::Verifier`] while it
//! spools; after the final dot it calls [`check`] (the DNS work) and puts
//! [`Results::header`] on top of the stored message. Whether a DMARC
//! `p=reject` failure is refused is the caller's policy
//! ([`Results::dmarc_reject`]).

use crate::trust::dkim::{self, LookupError, Pending};
use crate::trust::dmarc;
use crate::trust::spf::{self, Dns, DnsError};
use std::net::IpAddr;

/// Everything checked about one message.
#[derive(Debug, Clone)]
pub struct Results {
    pub spf: spf::Outcome,
    /// The MAIL FROM address (empty for the null sender).
    pub mail_from: String,
    pub helo: String,
    /// The separate check of the HELO identity (RFC 7208 2.3), when there
    /// is a MAIL FROM (without one, `spf` already is the HELO check) and
    /// the HELO is a domain name rather than an address literal.
    pub helo_spf: Option<spf::Outcome>,
    pub dkim: Vec<dkim::Outcome>,
    pub dmarc: Option<dmarc::Outcome>,
}

/// Runs the checks. `pending` are the DKIM signatures of the message (from
/// [`dkim::Verifier::finish`]), `from_header` the raw From header value.
pub async fn check<D: Dns>(
    dns: &D,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    receiver: &str,
    pending: Vec<Pending>,
    from_header: Option<&str>,
) -> Results {
    let query = |sender: &str| spf::Query {
        ip,
        sender: sender.to_string(),
        helo: helo.to_string(),
        receiver: receiver.to_string(),
    };
    let (mail_q, helo_q) = (query(mail_from), query(""));
    let helo_is_name = helo.contains('.') && !helo.starts_with('[');
    let (spf, helo_spf) = smol::future::zip(spf::check(dns, &mail_q), async {
        if mail_from.is_empty() || !helo_is_name {
            None
        } else {
            Some(spf::check(dns, &helo_q).await)
        }
    })
    .await;
    let mut outcomes = Vec::new();
    for p in pending {
        let txt = match p.key_name() {
            Some(name) => match dns.txt(&name).await {
                Ok(t) if t.is_empty() => Err(LookupError::NotFound),
                Ok(t) => Ok(t),
                Err(DnsError::NotFound) => Err(LookupError::NotFound),
                Err(DnsError::Temporary(e)) => Err(LookupError::Temporary(e)),
            },
            None => Err(LookupError::NotFound),
        };
        outcomes.push(p.verify(txt));
    }
    let dmarc = match from_header.and_then(dmarc::from_domain) {
        Some(from) => {
            let passing: Vec<String> = outcomes
                .iter()
                .filter(|o| o.status == dkim::Status::Pass)
                .map(|o| o.domain.clone())
                .collect();
            // SPF counts for DMARC only for the MAIL FROM identity.
            let spf_domain = if mail_from.is_empty() {
                ""
            } else {
                spf.domain.as_str()
            };
            Some(
                dmarc::evaluate(
                    dns,
                    &from,
                    spf.result == spf::SpfResult::Pass,
                    spf_domain,
                    &passing,
                )
                .await,
            )
        }
        None => None,
    };
    Results {
        spf,
        mail_from: mail_from.to_string(),
        helo: helo.to_string(),
        helo_spf,
        dkim: outcomes,
        dmarc,
    }
}

/// A value safe to put in a header property (RFC 8601 2.2 `pvalue`):
/// characters outside that set are dropped rather than quoted.
fn pvalue(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && !"()<>[]:;\\\",".contains(*c))
        .collect()
}

/// A reason as an RFC 5322 quoted-string.
fn reason(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .map(|c| if c == '"' || c == '\\' { '\'' } else { c })
        .collect();
    format!("reason=\"{clean}\"")
}

impl Results {
    /// The `Authentication-Results:` header, folded, ending in CRLF.
    /// `authserv_id` is our host name (RFC 8601 2.5).
    pub fn header(&self, authserv_id: &str) -> String {
        let mut parts = Vec::new();
        let spf_id = if self.mail_from.is_empty() {
            format!("smtp.helo={}", pvalue(&self.helo))
        } else {
            format!("smtp.mailfrom={}", pvalue(&self.mail_from))
        };
        parts.push(format!("spf={} {spf_id}", self.spf.result.name()));
        if let Some(h) = &self.helo_spf {
            parts.push(format!(
                "spf={} smtp.helo={}",
                h.result.name(),
                pvalue(&self.helo)
            ));
        }
        if self.dkim.is_empty() {
            parts.push("dkim=none".to_string());
        }
        for d in &self.dkim {
            let mut p = format!("dkim={}", d.status.name());
            if let Some(r) = d.status.reason() {
                p.push(' ');
                p.push_str(&reason(r));
            }
            if !d.domain.is_empty() {
                p.push_str(&format!(" header.d={}", pvalue(&d.domain)));
            }
            if !d.selector.is_empty() {
                p.push_str(&format!(" header.s={}", pvalue(&d.selector)));
            }
            if !d.algorithm.is_empty() {
                p.push_str(&format!(" header.a={}", pvalue(&d.algorithm)));
            }
            if !d.b_prefix.is_empty() {
                p.push_str(&format!(" header.b={}", pvalue(&d.b_prefix)));
            }
            parts.push(p);
        }
        match &self.dmarc {
            Some(m) => parts.push(format!(
                "dmarc={} (p={}) header.from={}",
                m.result,
                m.policy.name(),
                pvalue(&m.from_domain)
            )),
            None => parts.push("dmarc=none".to_string()),
        }
        format!(
            "Authentication-Results: {};\r\n\t{}\r\n",
            pvalue(authserv_id),
            parts.join(";\r\n\t")
        )
    }

    /// True when DMARC failed for a domain asking receivers to reject.
    pub fn dmarc_reject(&self) -> bool {
        self.dmarc
            .as_ref()
            .is_some_and(dmarc::Outcome::wants_reject)
    }
}

/// Removes `Authentication-Results:` fields that carry our own
/// authserv-id from a message's header block as it streams (RFC 8601 5:
/// a border MTA must not let a sender forge its verdicts). Everything
/// else, and the whole body, passes through unchanged. Memory is bounded:
/// one header line, or one Authentication-Results field up to
/// [`MAX_HELD_FIELD`] bytes (a longer one is dropped too).
pub struct ForgedResultsFilter {
    id: String,
    in_body: bool,
    /// The current, unfinished line.
    line: Vec<u8>,
    /// An Authentication-Results field being collected (all its lines).
    held: Option<Vec<u8>>,
    /// Whether continuation lines of the current (non-held) field are kept.
    keep_current: bool,
    /// Fields removed so far.
    pub removed: usize,
}

/// The most of one Authentication-Results field held while deciding.
pub const MAX_HELD_FIELD: usize = 16 * 1024;
/// Header lines longer than this pass through in pieces (SMTP caps lines
/// at 1000 octets anyway).
const MAX_LINE: usize = 8 * 1024;

impl ForgedResultsFilter {
    /// `authserv_id`: our host name.
    pub fn new(authserv_id: &str) -> ForgedResultsFilter {
        ForgedResultsFilter {
            id: authserv_id.trim_end_matches('.').to_ascii_lowercase(),
            in_body: false,
            line: Vec::new(),
            held: None,
            keep_current: true,
            removed: 0,
        }
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.in_body {
            out.extend_from_slice(input);
            return;
        }
        for (i, &b) in input.iter().enumerate() {
            self.line.push(b);
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(line, out);
                if self.in_body {
                    out.extend_from_slice(&input[i + 1..]);
                    return;
                }
            } else if self.line.len() > MAX_LINE {
                // Not a header line we can judge: let it through.
                self.flush_held(out);
                out.append(&mut self.line);
                self.keep_current = true;
            }
        }
    }

    /// At the end of the message: whatever is pending.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.in_body && !self.line.is_empty() {
            // A last header line without its line end.
            let line = std::mem::take(&mut self.line);
            self.line_done(line, out);
        }
        self.flush_held(out);
        out.append(&mut self.line);
    }

    fn line_done(&mut self, line: Vec<u8>, out: &mut Vec<u8>) {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if continuation {
            if let Some(h) = &mut self.held {
                h.extend_from_slice(&line);
                if h.len() > MAX_HELD_FIELD {
                    // Too big to judge, and no real verdict is this long.
                    self.held = None;
                    self.removed += 1;
                    self.keep_current = false;
                }
            } else if self.keep_current {
                out.extend_from_slice(&line);
            }
            return;
        }
        self.flush_held(out);
        if line == b"\r\n" || line == b"\n" {
            out.extend_from_slice(&line);
            self.in_body = true;
            return;
        }
        let is_ar = line.iter().position(|&c| c == b':').is_some_and(|c| {
            line[..c]
                .trim_ascii()
                .eq_ignore_ascii_case(b"authentication-results")
        });
        if is_ar {
            self.held = Some(line);
        } else {
            self.keep_current = true;
            out.extend_from_slice(&line);
        }
    }

    /// Decides on a held Authentication-Results field: ours is dropped.
    fn flush_held(&mut self, out: &mut Vec<u8>) {
        let Some(field) = self.held.take() else {
            return;
        };
        let text = String::from_utf8_lossy(&field);
        let value = text.split_once(':').map(|(_, v)| v).unwrap_or("");
        // A field whose authserv-id cannot be read might still be read as
        // ours by a lenient mail client: it goes too.
        let id = authserv_id(value).map(|id| id.trim_end_matches('.').to_ascii_lowercase());
        let ours = id.as_deref().map_or(true, |id| id == self.id);
        if ours {
            self.removed += 1;
            self.keep_current = false;
        } else {
            out.extend_from_slice(&field);
            self.keep_current = true;
        }
    }
}

/// The authserv-id at the start of an Authentication-Results value, as
/// RFC 8601 2.2 reads it: `[CFWS] authserv-id`, where authserv-id is an
/// RFC 2045 `value` (a token, or a quoted-string whose quoted-pairs are
/// undone). Comments (nested, with quoted-pairs) and folding white space
/// before it are skipped, so `(x) mx.example.org;` and
/// `"mx.example.org";` both name `mx.example.org`. `None` when no value
/// can be read (an unclosed comment or quote, nothing but CFWS, a
/// tspecial where the id should start).
pub fn authserv_id(value: &str) -> Option<String> {
    let b = value.as_bytes();
    let mut i = skip_cfws(b, 0)?;
    if b.get(i) == Some(&b'"') {
        // RFC 5322 3.2.4 quoted-string; FWS inside is unfolded.
        let mut id = Vec::new();
        i += 1;
        loop {
            match *b.get(i)? {
                b'"' => break,
                b'\\' => {
                    id.push(*b.get(i + 1)?);
                    i += 2;
                }
                b'\r' | b'\n' => i += 1,
                c => {
                    id.push(c);
                    i += 1;
                }
            }
        }
        return Some(String::from_utf8_lossy(&id).into_owned());
    }
    // RFC 2045 5.1: token := 1*<any CHAR except SPACE, CTLs, tspecials>.
    let start = i;
    while let Some(&c) = b.get(i) {
        if c <= b' ' || c == 0x7f || b"()<>@,;:\\\"/[]?=".contains(&c) {
            break;
        }
        i += 1;
    }
    (i > start).then(|| String::from_utf8_lossy(&b[start..i]).into_owned())
}

/// Skips RFC 5322 3.2.2 CFWS from `i`: white space, line ends, and
/// comments, which nest and may hold quoted-pairs. `None` for a comment
/// never closed.
fn skip_cfws(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while let Some(&c) = b.get(i) {
        match c {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => return Some(i),
        }
        i += 1;
    }
    (depth == 0).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::spf::{QType, Rr};
    use std::collections::HashMap;

    #[derive(Default)]
    struct Zone(HashMap<(String, &'static str), Vec<Rr>>);

    impl Dns for Zone {
        async fn query(&self, name: &str, qtype: QType) -> Result<Vec<Rr>, DnsError> {
            let t = match qtype {
                QType::Txt => "TXT",
                QType::A => "A",
                _ => "other",
            };
            match self.0.get(&(name.to_string(), t)) {
                Some(r) => Ok(r.clone()),
                None if self.0.keys().any(|(n, _)| n == name) => Ok(vec![]),
                None => Err(DnsError::NotFound),
            }
        }
    }

    fn txt(z: &mut Zone, name: &str, value: &str) {
        z.0.entry((name.to_string(), "TXT"))
            .or_default()
            .push(Rr::Txt(value.as_bytes().to_vec()));
    }

    /// `msg` with a signature by the test key (selector s1) for `domain`.
    fn signed(domain: &str, msg: &str) -> String {
        let mut h = dkim::MessageHasher::new();
        h.update(msg.as_bytes()).unwrap();
        let (fields, bh) = h.finish();
        let signer = dkim::Signer {
            domain: domain.into(),
            keys: vec![dkim::SigningKey::from_pem("s1", &PEM.with(|p| p.clone())).unwrap()],
        };
        signer.sign(&fields, &bh, 1_700_000_000).unwrap() + msg
    }

    thread_local! {
        static PEM: String = dkim::generate_ed25519().unwrap();
    }

    fn run(z: &Zone, ip: &str, mail_from: &str, msg: &str) -> Results {
        let mut v = dkim::Verifier::new(1_700_000_000);
        v.update(msg.as_bytes()).unwrap();
        let from = v.header("from");
        smol::block_on(check(
            z,
            ip.parse().unwrap(),
            "mail.example.net",
            mail_from,
            "mx.example.org",
            v.finish(),
            from.as_deref(),
        ))
    }

    fn filtered(id: &str, msg: &[u8], chunk: usize) -> (Vec<u8>, usize) {
        let mut f = ForgedResultsFilter::new(id);
        let mut out = Vec::new();
        for c in msg.chunks(chunk.max(1)) {
            f.feed(c, &mut out);
        }
        f.finish(&mut out);
        (out, f.removed)
    }

    #[test]
    fn forged_results_with_our_id_are_removed_others_kept() {
        let msg = b"Authentication-Results: MX.example.org.; dkim=pass\r\n\
Received: from x\r\n\tby y\r\n\
Authentication-Results:\r\n mx.example.org 1;\r\n spf=pass\r\n\
Authentication-Results: other.example; dkim=fail\r\n\
authentication-results : mx.example.org; dmarc=pass\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.example.org; in the body stays\r\n";
        let want = b"Received: from x\r\n\tby y\r\n\
Authentication-Results: other.example; dkim=fail\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.example.org; in the body stays\r\n";
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            let (out, removed) = filtered("mx.example.org", msg, chunk);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "chunk {chunk}"
            );
            assert_eq!(removed, 3);
        }
        // No header end at all, and LF-only lines, pass through too.
        let (out, removed) = filtered(
            "mx.example.org",
            b"Subject: x\nAuthentication-Results: mx.example.org; a",
            5,
        );
        assert_eq!(out, b"Subject: x\n");
        assert_eq!(removed, 1);
        let (out, _) = filtered("mx.example.org", b"Subject: only", 3);
        assert_eq!(out, b"Subject: only");
    }

    #[test]
    fn authserv_id_is_read_as_rfc_8601_says() {
        for (value, want) in [
            (" mx.example.org; dkim=pass", Some("mx.example.org")),
            (" mx.example.org 1; spf=pass", Some("mx.example.org")),
            (
                " (comment) mx.example.org; dkim=pass",
                Some("mx.example.org"),
            ),
            (
                " (a (nested \\) one)) mx.example.org;",
                Some("mx.example.org"),
            ),
            ("\r\n\t(folded)\r\n mx.example.org;", Some("mx.example.org")),
            (" \"mx.example.org\"; dkim=pass", Some("mx.example.org")),
            (" \"mx.exa\\mple.org\";", Some("mx.example.org")),
            (" mx.example.org(comment); x", Some("mx.example.org")),
            (" mx.example.org;none", Some("mx.example.org")),
            (" (unclosed mx.example.org;", None),
            (" \"unclosed; dkim=pass", None),
            ("  ", None),
            (" ; dkim=pass", None),
        ] {
            assert_eq!(authserv_id(value).as_deref(), want, "{value:?}");
        }
    }

    #[test]
    fn forged_results_hidden_behind_comments_or_quotes_are_removed() {
        let msg = b"Authentication-Results: (comment) mx.example.org; dkim=pass\r\n\
Authentication-Results: \"MX.example.org\"; dkim=pass\r\n\
Authentication-Results: (x)\r\n \"mx.example.org.\" 1; spf=pass\r\n\
Authentication-Results: (never closed mx.example.org; dkim=pass\r\n\
Authentication-Results: (ours? no) \"other.example\"; dkim=fail\r\n\
Subject: hi\r\n\r\nbody\r\n";
        let want = b"Authentication-Results: (ours? no) \"other.example\"; dkim=fail\r\n\
Subject: hi\r\n\r\nbody\r\n";
        for chunk in [1, 5, 10_000] {
            let (out, removed) = filtered("mx.example.org", msg, chunk);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "chunk {chunk}"
            );
            assert_eq!(removed, 4);
        }
    }

    #[test]
    fn an_oversized_results_field_is_dropped_not_held() {
        let mut msg = b"Authentication-Results: other.example;\r\n".to_vec();
        for _ in 0..(MAX_HELD_FIELD / 20 + 10) {
            msg.extend_from_slice(b" x=yyyyyyyyyyyyyyy\r\n");
        }
        msg.extend_from_slice(b"Subject: s\r\n\r\nbody\r\n");
        let (out, removed) = filtered("mx.example.org", &msg, 100);
        assert_eq!(out, b"Subject: s\r\n\r\nbody\r\n");
        assert_eq!(removed, 1);
    }

    #[test]
    fn aligned_dkim_passes_dmarc_and_header_says_so() {
        let key = dkim::SigningKey::from_pem("s1", &PEM.with(|p| p.clone())).unwrap();
        let mut z = Zone::default();
        txt(&mut z, "example.net", "v=spf1 ip4:192.0.2.0/24 -all");
        txt(&mut z, "s1._domainkey.example.net", &key.dns_record());
        txt(&mut z, "_dmarc.example.net", "v=DMARC1; p=reject");
        let msg = "From: Bob <bob@example.net>\r\nSubject: hi\r\n\r\nHello\r\n";
        let r = run(
            &z,
            "192.0.2.7",
            "bob@example.net",
            &signed("example.net", msg),
        );
        let h = r.header("mx.example.org");
        assert!(h.starts_with("Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.mailfrom=bob@example.net;\r\n\tspf=none smtp.helo=mail.example.net;\r\n\tdkim=pass header.d=example.net header.s=s1 header.a=ed25519-sha256 header.b="), "{h}");
        assert!(
            h.ends_with(";\r\n\tdmarc=pass (p=reject) header.from=example.net\r\n"),
            "{h}"
        );
        assert!(!r.dmarc_reject());
        // Forged: wrong IP, no signature, From at a p=reject domain.
        let r = run(&z, "203.0.113.9", "bob@example.net", msg);
        let h = r.header("mx.example.org");
        assert!(
            h.contains("spf=fail")
                && h.contains("dkim=none")
                && h.contains("dmarc=fail (p=reject)"),
            "{h}"
        );
        assert!(r.dmarc_reject());
        // A tampered body: dkim=fail with a reason, SPF still aligns.
        let bad = signed("example.net", msg).replace("Hello", "Hallo");
        let r = run(&z, "192.0.2.7", "bob@example.net", &bad);
        let h = r.header("mx.example.org");
        assert!(
            h.contains("dkim=fail reason=\"body hash did not verify\""),
            "{h}"
        );
        assert!(h.contains("dmarc=pass"), "{h}");
    }
}
