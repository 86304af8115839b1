//! MTA-STS for outbound mail (RFC 8461): does the recipient domain ask
//! for verified TLS to an MX it names?
//!
//! The `_mta-sts.<domain>` TXT record (3.1) says a policy exists and its
//! id; the policy itself comes over HTTPS from
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` (3.3: certificate
//! verified, no redirects, at most 64 KiB, one deadline) and is cached
//! on disk under `<data_dir>/mta-sts/` for its `max_age` (3.2, 5.1). The
//! delivery worker then, for `enforce`, uses only MX hosts matching the
//! policy's `mx:` patterns (4.1) and only over STARTTLS with a verified
//! certificate (4.2), deferring otherwise; `testing` only logs what would
//! fail; `none` is ignored.
//!
//! The decisions ([`parse_txt`], [`parse_policy`], [`mx_matches`],
//! [`decide`]) are pure functions; [`Sts::lookup`] moves the bytes.

use crate::net::dns::Resolver;
use crate::trust::spf::Dns;
use rustls::client::WebPkiServerVerifier;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// RFC 8461 3.2: a policy body larger than this is not one.
pub const MAX_POLICY: usize = 64 * 1024;
/// RFC 8461 3.2: max_age is at most a year.
const MAX_AGE_LIMIT: u64 = 31_557_600;
/// Test hook: the HTTPS port of policy hosts (443 in real life).
pub const PORT_ENV: &str = "PIMAIL_MTA_STS_PORT";
/// A fetch that failed is not tried again for this long (a broken
/// policy host must not cost every delivery round its deadline).
const RETRY_FAILED: u64 = 300;
/// One policy fetch (DNS of the policy host aside) takes at most this.
const FETCH_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// `mx:` patterns, lower case, without trailing dots.
    pub mx: Vec<String>,
    pub max_age: u64,
}

impl Policy {
    /// Does this MX host name match one of the policy's patterns?
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// The policy id from the `_mta-sts` TXT records (RFC 8461 3.1): exactly
/// one record must start with `v=STSv1`; several mean none.
pub fn parse_txt(records: &[String]) -> Option<String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    if sts.len() != 1 {
        return None;
    }
    let mut id = None;
    for field in sts[0].split(';').filter(|f| !f.trim().is_empty()) {
        let (k, v) = field.split_once('=')?;
        match k.trim() {
            "v" if v.trim() != "STSv1" => return None,
            "id" => id = Some(v.trim().to_string()),
            _ => {}
        }
    }
    // id: 1 to 32 letters and digits.
    id.filter(|i| !i.is_empty() && i.len() <= 32 && i.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Parses a policy body (RFC 8461 3.2): `key: value` lines, LF or CRLF;
/// `version: STSv1`, `mode`, `max_age` required, `mx` required unless
/// the mode is `none`; unknown keys ignored.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "version" => version = Some(v.to_string()),
            "mode" => {
                mode = Some(match v {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(format!("unknown mode {v:?}")),
                })
            }
            "max_age" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("max_age {v:?} is not a number"))?;
                max_age = Some(n.min(MAX_AGE_LIMIT));
            }
            "mx" => mx.push(v.trim_end_matches('.').to_ascii_lowercase()),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no \"version: STSv1\" line".into());
    }
    let mode = mode.ok_or("no mode line")?;
    let max_age = max_age.ok_or("no max_age line")?;
    if mode != Mode::None && mx.is_empty() {
        return Err("no mx line".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// RFC 8461 4.1: an `mx:` pattern is a host name, or `*.` and a domain,
/// which stands for exactly one more label on the left.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    match p.strip_prefix("*.") {
        Some(suffix) => h
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => p == h,
    }
}

/// A policy in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub fetched: u64,
    pub policy: Policy,
    /// The policy text as fetched.
    pub text: String,
}

impl Cached {
    pub fn expires(&self) -> u64 {
        self.fetched.saturating_add(self.policy.max_age)
    }
    fn fresh(&self, now: u64) -> bool {
        now < self.expires()
    }
}

/// What to do, from the TXT record's id, the cached policy and whether a
/// fetch is allowed now (RFC 8461 3.1, 5.1): use the cache, fetch, or
/// deliver without a policy.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    UseCache,
    Fetch,
    NoPolicy,
}

pub fn decide(txt_id: Option<&str>, cached: Option<&Cached>, now: u64, may_fetch: bool) -> Step {
    let fresh = cached.filter(|c| c.fresh(now));
    match (txt_id, fresh) {
        // 5.1: without a TXT record, a cached policy still applies.
        (None, Some(_)) => Step::UseCache,
        (None, None) => Step::NoPolicy,
        (Some(id), Some(c)) if c.id == id => Step::UseCache,
        (Some(_), _) if may_fetch => Step::Fetch,
        (Some(_), Some(_)) => Step::UseCache,
        (Some(_), None) => Step::NoPolicy,
    }
}

pub fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mta-sts")
}

fn cache_path(data_dir: &Path, domain: &str) -> PathBuf {
    cache_dir(data_dir).join(format!("{domain}.policy"))
}

/// The cache file: `id`, `fetched` lines, an empty line, the policy.
fn cache_text(c: &Cached) -> String {
    format!(
        "pimail-mta-sts 1\nid {}\nfetched {}\n\n{}",
        c.id, c.fetched, c.text
    )
}

fn parse_cache(text: &str) -> Option<Cached> {
    let (head, body) = text.split_once("\n\n")?;
    let mut lines = head.lines();
    if lines.next()? != "pimail-mta-sts 1" {
        return None;
    }
    let (mut id, mut fetched) = (None, None);
    for l in lines {
        match l.split_once(' ') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("fetched", v)) => fetched = v.parse().ok(),
            _ => {}
        }
    }
    Some(Cached {
        id: id?,
        fetched: fetched?,
        policy: parse_policy(body).ok()?,
        text: body.to_string(),
    })
}

pub fn load(data_dir: &Path, domain: &str) -> Option<Cached> {
    parse_cache(&std::fs::read_to_string(cache_path(data_dir, domain)).ok()?)
}

fn save(data_dir: &Path, domain: &str, c: &Cached) -> std::io::Result<()> {
    crate::util::paths::private_dir(&cache_dir(data_dir))?;
    crate::util::paths::write_atomic(&cache_path(data_dir, domain), cache_text(c).as_bytes())
}

/// Every cached policy: (domain, policy), by domain.
pub fn list(data_dir: &Path) -> Vec<(String, Cached)> {
    let mut out: Vec<(String, Cached)> = std::fs::read_dir(cache_dir(data_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let domain = name.strip_suffix(".policy")?.to_string();
            let c = parse_cache(&std::fs::read_to_string(e.path()).ok()?)?;
            Some((domain, c))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The outcome of a lookup for one domain.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// A policy in `enforce` or `testing` mode.
    pub policy: Option<Policy>,
    /// Why a fetch failed (for the log and TLS-RPT's
    /// `sts-policy-fetch-error`).
    pub fetch_error: Option<String>,
    /// A new policy was fetched (and cached).
    pub fetched: bool,
}

/// The MTA-STS state of the worker: where the cache is, how policy hosts
/// are reached, which fetches failed lately.
pub struct Sts {
    data_dir: PathBuf,
    verifier: Arc<WebPkiServerVerifier>,
    port: u16,
    failed: RefCell<HashMap<String, u64>>,
}

impl Sts {
    pub fn new(data_dir: &Path, verifier: Arc<WebPkiServerVerifier>) -> Sts {
        let port = std::env::var(PORT_ENV)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        Sts {
            data_dir: data_dir.to_path_buf(),
            verifier,
            port,
            failed: RefCell::new(HashMap::new()),
        }
    }

    /// The policy that applies to mail for `domain` now.
    pub async fn lookup(&self, resolver: &Resolver, domain: &str, now: u64) -> Lookup {
        let txt = resolver.txt(&format!("_mta-sts.{domain}")).await;
        let id = match &txt {
            Ok(r) => parse_txt(r),
            Err(_) => None,
        };
        let (dd, d) = (self.data_dir.clone(), domain.to_string());
        let cached = smol::unblock(move || load(&dd, &d)).await;
        let may_fetch = self
            .failed
            .borrow()
            .get(domain)
            .map_or(true, |t| now >= t + RETRY_FAILED);
        let usable = |c: &Option<Cached>| {
            c.as_ref()
                .filter(|c| c.fresh(now) && c.policy.mode != Mode::None)
                .map(|c| c.policy.clone())
        };
        match decide(id.as_deref(), cached.as_ref(), now, may_fetch) {
            Step::NoPolicy => Lookup::default(),
            Step::UseCache => Lookup {
                policy: usable(&cached),
                ..Lookup::default()
            },
            Step::Fetch => {
                let id = id.unwrap_or_default();
                match self.fetch(resolver, domain).await {
                    Ok((text, policy)) => {
                        self.failed.borrow_mut().remove(domain);
                        log::info!(
                            "mta-sts: {domain}: policy id {id} mode {} max_age {} mx {}",
                            policy.mode.as_str(),
                            policy.max_age,
                            policy.mx.join(",")
                        );
                        let c = Cached {
                            id,
                            fetched: now,
                            policy,
                            text,
                        };
                        let (dd, d, c2) = (self.data_dir.clone(), domain.to_string(), c.clone());
                        if let Err(e) = smol::unblock(move || save(&dd, &d, &c2)).await {
                            log::warn!("mta-sts: cannot cache the policy of {domain}: {e}");
                        }
                        Lookup {
                            policy: usable(&Some(c)),
                            fetch_error: None,
                            fetched: true,
                        }
                    }
                    Err(e) => {
                        self.failed.borrow_mut().insert(domain.to_string(), now);
                        let keep = usable(&cached);
                        log::warn!(
                            "mta-sts: {domain}: cannot fetch the policy: {e}; {}",
                            if keep.is_some() {
                                "using the cached one"
                            } else {
                                "delivering without a policy"
                            }
                        );
                        Lookup {
                            policy: keep,
                            fetch_error: Some(e),
                            fetched: false,
                        }
                    }
                }
            }
        }
    }

    async fn fetch(&self, resolver: &Resolver, domain: &str) -> Result<(String, Policy), String> {
        let host = format!("mta-sts.{domain}");
        let addrs = resolver
            .addrs(&host)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let mut last = format!("{host}: no address");
        for ip in addrs.into_iter().take(2) {
            let addr = std::net::SocketAddr::new(ip, self.port);
            match crate::net::https::get(
                &host,
                addr,
                "/.well-known/mta-sts.txt",
                self.verifier.clone(),
                MAX_POLICY,
                FETCH_DEADLINE,
            )
            .await
            {
                // RFC 8461 3.3: only a 200 counts; redirects are not followed.
                Ok((200, body)) => {
                    let text = String::from_utf8(body)
                        .map_err(|_| format!("{host}: policy is not UTF-8"))?;
                    let p = parse_policy(&text).map_err(|e| format!("{host}: bad policy: {e}"))?;
                    return Ok((text, p));
                }
                Ok((code, _)) => return Err(format!("{host} [{ip}]: HTTP status {code}")),
                Err(e) => last = format!("{host} [{ip}]: {e}"),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_txt(&s(&["v=STSv1; id=20160831085700Z;"])).as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(
            parse_txt(&s(&["spf1 junk", "v=STSv1;id=abc"])).as_deref(),
            Some("abc")
        );
        assert_eq!(parse_txt(&s(&["v=STSv1; id=a", "v=STSv1; id=b"])), None);
        assert_eq!(parse_txt(&s(&["v=STSv1;"])), None);
        assert_eq!(parse_txt(&s(&["v=STSv1; id=bad-id"])), None);
        assert_eq!(parse_txt(&s(&[])), None);
    }

    #[test]
    fn policies() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net.\r\nmax_age: 604800\r\nextra: ok\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, vec!["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 604800);
        assert!(parse_policy("version: STSv1\nmode: testing\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
        assert!(parse_policy("mode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: enforce\nmx: a\n").is_err());
        let capped = parse_policy("version: STSv1\nmode: none\nmax_age: 99999999999\n").unwrap();
        assert_eq!(capped.max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn mx_patterns() {
        assert!(mx_matches("mail.example.com", "MAIL.example.com."));
        assert!(mx_matches("*.example.com", "mx1.example.com"));
        assert!(!mx_matches("*.example.com", "a.b.example.com"));
        assert!(!mx_matches("*.example.com", "example.com"));
        assert!(!mx_matches("mail.example.com", "mail.example.com.evil"));
        assert!(!mx_matches("*.example.com", "xexample.com"));
    }

    #[test]
    fn cache_and_decisions() {
        let policy =
            parse_policy("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 100\n").unwrap();
        let c = Cached {
            id: "one".into(),
            fetched: 1000,
            policy,
            text: "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 100\n".into(),
        };
        assert_eq!(parse_cache(&cache_text(&c)), Some(c.clone()));
        assert_eq!(decide(Some("one"), Some(&c), 1050, true), Step::UseCache);
        assert_eq!(decide(Some("two"), Some(&c), 1050, true), Step::Fetch);
        assert_eq!(decide(Some("two"), Some(&c), 1050, false), Step::UseCache);
        assert_eq!(
            decide(Some("one"), Some(&c), 1100, true),
            Step::Fetch,
            "expired"
        );
        assert_eq!(decide(None, Some(&c), 1050, true), Step::UseCache);
        assert_eq!(decide(None, Some(&c), 1200, true), Step::NoPolicy);
        assert_eq!(decide(Some("one"), None, 1, false), Step::NoPolicy);
        assert_eq!(decide(None, None, 1, true), Step::NoPolicy);
    }
}
