//! Inbound message authentication on port 25: SPF for the client and the
//! MAIL FROM (or HELO) domain, the message's DKIM signatures, DMARC for the
//! From domain, recorded in an `Authentication-Results:` header (RFC 8601;
//! `header.b` from RFC 6008).
//!
//! The SMTP driver streams DATA through a [`crate::dkim::Verifier`] while it
//! spools; after the final dot it calls [`check`] (the DNS work) and puts
//! [`Results::header`] on top of the stored message. Whether a DMARC
//! `p=reject` failure is refused is the caller's policy
//! ([`Results::dmarc_reject`]).

use crate::dkim::{self, LookupError, Pending};
use crate::dmarc;
use crate::spf::{self, Dns, DnsError};
use std::net::IpAddr;

/// Everything checked about one message.
#[derive(Debug, Clone)]
pub struct Results {
    pub spf: spf::Outcome,
    /// The MAIL FROM address (empty for the null sender).
    pub mail_from: String,
    pub helo: String,
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
    let spf = spf::check(
        dns,
        &spf::Query {
            ip,
            sender: mail_from.to_string(),
            helo: helo.to_string(),
            receiver: receiver.to_string(),
        },
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spf::{QType, Rr};
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
        assert!(h.starts_with("Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.mailfrom=bob@example.net;\r\n\tdkim=pass header.d=example.net header.s=s1 header.a=ed25519-sha256 header.b="), "{h}");
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
