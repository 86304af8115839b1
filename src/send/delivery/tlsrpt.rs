//! The counts an SMTP TLS report needs (RFC 8460 4.4): per day and
//! recipient domain, how many sessions succeeded and how many failed, and
//! why (the result types of RFC 8460 4.3), with the receiving MX for
//! failures. Kept in `<data_dir>/tlsrpt/<YYYY-MM-DD>`, one line per
//! (domain, policy type, result, MX) with a count, so that a daily
//! report can be built from it; sending the report is left to a later
//! version. Files older than [`KEEP_DAYS`] are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Days of counts kept (a report covers one day).
pub const KEEP_DAYS: u64 = 14;

/// One session's result.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Session {
    pub domain: String,
    /// RFC 8460 4.4: `sts` or `no-policy-found`.
    pub policy: &'static str,
    /// `success`, or an RFC 8460 4.3 result type.
    pub result: &'static str,
    /// The MX for failures, `-` for successes.
    pub mx: String,
}

/// RFC 8460 4.3.1: the result type for a certificate the verifier
/// refused (rustls' error text).
pub fn cert_result(why: &str) -> &'static str {
    if why.contains("NotValidForName") {
        "certificate-host-mismatch"
    } else if why.contains("Expired") {
        "certificate-expired"
    } else if why.contains("UnknownIssuer") || why.contains("BadSignature") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tlsrpt")
}

fn day_name(now: u64) -> String {
    let c = crate::util::timefmt::civil(now);
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}

type Counts = BTreeMap<(String, String, String, String), u64>;

/// The lines of one day's file.
pub fn parse(text: &str) -> Counts {
    let mut out = Counts::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if let [d, p, r, mx, n] = f[..] {
            if let Ok(n) = n.parse::<u64>() {
                *out.entry((d.into(), p.into(), r.into(), mx.into()))
                    .or_default() += n;
            }
        }
    }
    out
}

fn render(c: &Counts) -> String {
    c.iter()
        .map(|((d, p, r, mx), n)| format!("{d} {p} {r} {mx} {n}\n"))
        .collect()
}

/// Adds `sessions` to today's counts.
pub fn record(data_dir: &Path, now: u64, sessions: &[Session]) -> std::io::Result<()> {
    // Delivery rounds run in parallel: one writer at a time.
    static LOCK: Mutex<()> = Mutex::new(());
    if sessions.is_empty() {
        return Ok(());
    }
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let d = dir(data_dir);
    crate::util::paths::private_dir(&d)?;
    let path = d.join(day_name(now));
    let mut counts = parse(&std::fs::read_to_string(&path).unwrap_or_default());
    for s in sessions {
        *counts
            .entry((
                s.domain.clone(),
                s.policy.into(),
                s.result.into(),
                s.mx.clone(),
            ))
            .or_default() += 1;
    }
    crate::util::paths::write_atomic(&path, render(&counts).as_bytes())?;
    let oldest = day_name(now.saturating_sub(KEEP_DAYS * 86400));
    for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.len() == 10 && name < oldest {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_survive_a_round_trip() {
        let dir = std::env::temp_dir().join(format!("pimail-tlsrpt-{}", std::process::id()));
        let s = |r: &'static str, mx: &str| Session {
            domain: "example.com".into(),
            policy: "sts",
            result: r,
            mx: mx.into(),
        };
        let now = 1_795_575_175;
        record(&dir, now, &[s("success", "-"), s("success", "-")]).unwrap();
        record(&dir, now, &[s("starttls-not-supported", "mx.example.com")]).unwrap();
        let text = std::fs::read_to_string(dir.join("tlsrpt").join(day_name(now))).unwrap();
        let c = parse(&text);
        assert_eq!(c.values().sum::<u64>(), 3);
        assert!(text.contains("example.com sts success - 2\n"), "{text}");
        assert!(text.contains("example.com sts starttls-not-supported mx.example.com 1\n"));
        // Old days go.
        record(&dir, now + 30 * 86400, &[s("success", "-")]).unwrap();
        assert!(!dir.join("tlsrpt").join(day_name(now)).exists());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            cert_result("invalid peer certificate: NotValidForName"),
            "certificate-host-mismatch"
        );
        assert_eq!(
            cert_result("invalid peer certificate: UnknownIssuer"),
            "certificate-not-trusted"
        );
    }
}
