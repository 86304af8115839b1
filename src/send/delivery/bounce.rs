//! Bounce messages and delay notices: RFC 3464 delivery status
//! notifications (`Action: failed`, or `Action: delayed` with
//! `Will-Retry-Until`, 2.3.3 and 2.3.8), in the RFC 6522 multipart/report
//! container, sent with the null sender `<>` (RFC 5321 4.5.5) so that a
//! bounce is never bounced.
//!
//! Building one is a pure function of the failure; the worker stores it.

use crate::send::queue::Entry;

/// One recipient that failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub rcpt: String,
    /// `5.1.1`: from the reply's enhanced code, or chosen by us.
    pub status: String,
    /// The remote reply or our reason, one line (`550 5.1.1 No such user`).
    pub diagnostic: String,
    /// The MX host that answered, when one did.
    pub remote_mta: Option<String>,
}

/// Which notification: the message is given up for these recipients, or
/// still being retried (until `retry_until`, Unix time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Failed,
    Delayed { retry_until: u64 },
}

/// The enhanced status code in a reply text (`550 5.1.1 ...` -> `5.1.1`),
/// else the class default (`5.0.0` / `4.0.0`).
pub fn status_of(code: u16, text: &str) -> String {
    let first = text
        .split_whitespace()
        .find(|w| w.split('.').count() == 3)
        .filter(|w| {
            let p: Vec<&str> = w.split('.').collect();
            matches!(p[0], "2" | "4" | "5")
                && p[1..]
                    .iter()
                    .all(|x| !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit()))
        });
    match first {
        Some(s) if s.starts_with(&(code / 100).to_string()) => s.to_string(),
        _ => format!("{}.0.0", code / 100),
    }
}

/// The status for a recipient still being retried, from its last error
/// (`451 4.3.0 ...` -> `4.3.0`; a connection error -> `4.4.1`, RFC 3463
/// "no answer from host").
pub fn delayed_status(last: &str) -> String {
    match last.get(..3).and_then(|c| c.parse::<u16>().ok()) {
        Some(code @ 400..=499) => status_of(code, last),
        _ => "4.4.1".to_string(),
    }
}

/// The notification's text (LF line ends; the caller quotes it for
/// storage). `headers` are the original message's headers (LF-terminated
/// lines).
#[allow(clippy::too_many_arguments)]
pub fn build(
    report: Report,
    reporting_host: &str,
    entry: &Entry,
    failures: &[Failure],
    headers: &[u8],
    boundary: &str,
    message_id: &str,
    now: u64,
) -> Vec<u8> {
    let date = crate::util::timefmt::rfc5322(now);
    let to = entry.sender();
    let mut s = String::new();
    s += &format!("From: Mail Delivery System <MAILER-DAEMON@{reporting_host}>\n");
    s += &format!("To: <{to}>\n");
    s += match report {
        Report::Failed => "Subject: Undelivered Mail Returned to Sender\n",
        Report::Delayed { .. } => "Subject: Delayed Mail (still being retried)\n",
    };
    s += &format!("Date: {date}\n");
    s += &format!("Message-ID: <{message_id}@{reporting_host}>\n");
    s += "Auto-Submitted: auto-replied\n";
    s += "MIME-Version: 1.0\n";
    s += &format!(
        "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n"
    );
    s += "\nThis is a MIME-encapsulated message.\n\n";
    s += &format!("--{boundary}\n");
    s += "Content-Description: Notification\n";
    s += "Content-Type: text/plain; charset=utf-8\n\n";
    s += &format!("This is the mail system at host {reporting_host}.\n\n");
    s += &match report {
        Report::Failed => {
            "Your message could not be delivered to one or more recipients.\n".to_string()
        }
        Report::Delayed { retry_until } => format!(
            "Your message has not been delivered yet to one or more recipients.\n\
             This is a warning only: you do not need to send it again. It will be\n\
             retried until {}.\n",
            crate::util::timefmt::rfc5322(retry_until)
        ),
    };
    s += &format!(
        "It was queued on {} with id {}.\n\n",
        crate::util::timefmt::rfc5322(entry.created),
        entry.id
    );
    for f in failures {
        s += &format!("<{}>: {}\n", f.rcpt, f.diagnostic);
        if let Some(m) = &f.remote_mta {
            s += &format!("    (reported by {m})\n");
        }
    }
    s += "\n";
    s += &format!("--{boundary}\n");
    s += "Content-Description: Delivery report\n";
    s += "Content-Type: message/delivery-status\n\n";
    s += &format!("Reporting-MTA: dns; {reporting_host}\n");
    s += &format!("X-Pimail-Queue-ID: {}\n", entry.id);
    s += &format!(
        "Arrival-Date: {}\n",
        crate::util::timefmt::rfc5322(entry.created)
    );
    for f in failures {
        s += "\n";
        s += &format!("Final-Recipient: rfc822; {}\n", f.rcpt);
        s += match report {
            Report::Failed => "Action: failed\n",
            Report::Delayed { .. } => "Action: delayed\n",
        };
        s += &format!("Status: {}\n", f.status);
        if let Some(m) = &f.remote_mta {
            s += &format!("Remote-MTA: dns; {m}\n");
        }
        let kind = if f.remote_mta.is_some() {
            "smtp"
        } else {
            "x-pimail"
        };
        s += &format!("Diagnostic-Code: {kind}; {}\n", f.diagnostic);
        s += &format!("Last-Attempt-Date: {date}\n");
        if let Report::Delayed { retry_until } = report {
            s += &format!(
                "Will-Retry-Until: {}\n",
                crate::util::timefmt::rfc5322(retry_until)
            );
        }
    }
    s += "\n";
    s += &format!("--{boundary}\n");
    s += "Content-Description: Undelivered Message Headers\n";
    s += "Content-Type: text/rfc822-headers\n\n";
    let mut out = s.into_bytes();
    out.extend_from_slice(headers);
    if !headers.ends_with(b"\n") && !headers.is_empty() {
        out.push(b'\n');
    }
    out.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::address::parse_mailbox;

    #[test]
    fn status_codes() {
        assert_eq!(status_of(550, "550 5.1.1 No such user"), "5.1.1");
        assert_eq!(status_of(550, "550 No such user"), "5.0.0");
        assert_eq!(status_of(550, "550 4.1.1 mismatched class"), "5.0.0");
        assert_eq!(status_of(452, "452 4.2.2 full"), "4.2.2");
        assert_eq!(status_of(554, "554 5.7.1"), "5.7.1");
    }

    #[test]
    fn report_has_the_rfc3464_parts() {
        let mut e = Entry::new(
            "ID1",
            Some(parse_mailbox("alice@example.org", false).unwrap()),
            0,
            10,
        );
        e.add_rcpt(parse_mailbox("bob@example.com", false).unwrap(), false);
        let f = Failure {
            rcpt: "bob@example.com".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 <bob@example.com>: no such user".into(),
            remote_mta: Some("mx.example.com".into()),
        };
        let b = build(
            Report::Failed,
            "mail.example.org",
            &e,
            &[f],
            b"Subject: hi\nTo: bob@example.com\n",
            "BOUND",
            "mid",
            0,
        );
        let t = String::from_utf8(b).unwrap();
        for needle in [
            "To: <alice@example.org>\n",
            "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"BOUND\"\n",
            "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mail.example.org\n",
            "Final-Recipient: rfc822; bob@example.com\nAction: failed\nStatus: 5.1.1\nRemote-MTA: dns; mx.example.com\nDiagnostic-Code: smtp; 550 5.1.1 <bob@example.com>: no such user\n",
            "Content-Type: text/rfc822-headers\n\nSubject: hi\nTo: bob@example.com\n\n--BOUND--\n",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }

    #[test]
    fn delay_notice_says_delayed_and_until_when() {
        let mut e = Entry::new(
            "ID2",
            Some(parse_mailbox("alice@example.org", false).unwrap()),
            0,
            10,
        );
        e.add_rcpt(parse_mailbox("bob@example.com", false).unwrap(), false);
        let f = Failure {
            rcpt: "bob@example.com".into(),
            status: delayed_status("451 4.3.0 try later"),
            diagnostic: "451 4.3.0 try later".into(),
            remote_mta: None,
        };
        let until = 5 * 86400;
        let b = build(
            Report::Delayed { retry_until: until },
            "mail.example.org",
            &e,
            &[f],
            b"Subject: hi\n",
            "B",
            "mid",
            4 * 3600,
        );
        let t = String::from_utf8(b).unwrap();
        let until = crate::util::timefmt::rfc5322(until);
        for needle in [
            "Subject: Delayed Mail (still being retried)\n".to_string(),
            "you do not need to send it again".to_string(),
            "Action: delayed\nStatus: 4.3.0\n".to_string(),
            format!("Will-Retry-Until: {until}\n"),
        ] {
            assert!(t.contains(&needle), "missing {needle:?} in\n{t}");
        }
        assert!(!t.contains("Action: failed"));
        assert_eq!(delayed_status("connect to 127.0.0.9:25: refused"), "4.4.1");
        assert_eq!(delayed_status("421 4.7.0 busy"), "4.7.0");
    }
}
