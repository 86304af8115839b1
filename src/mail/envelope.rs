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
        let helo: String = self
            .helo
            .chars()
            .filter(|c| !c.is_control() && *c != '(' && *c != ')')
            .take(255)
            .collect();
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
