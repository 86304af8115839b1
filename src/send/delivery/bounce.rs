//! Bounce messages: RFC 3464 delivery status notifications, in the RFC
//! 6522 multipart/report container, sent with the null sender `<>` (RFC
//! 5321 4.5.5) so that a bounce is never bounced.
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

/// The bounce's text (LF line ends; the caller quotes it for storage).
/// `headers` are the original message's headers (LF-terminated lines).
pub fn build(
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
    s += "Subject: Undelivered Mail Returned to Sender\n";
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
    s += &format!(
        "This is the mail system at host {reporting_host}.\n\n\
         Your message could not be delivered to one or more recipients.\n\
         It was queued on {} with id {}.\n\n",
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
        s += "Action: failed\n";
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
}
