//! DMARC: does the visible From domain stand behind this message?
//!
//! RFC 7489: record parsing (6.3, 6.4), policy discovery at `_dmarc.` of
//! the From domain then of its organizational domain (6.6.3), identifier
//! alignment of SPF and DKIM (3.1, relaxed or strict), and the policy to
//! apply (`p=`, `sp=` for subdomains). The organizational domain comes from
//! the DNS tree walk of DMARCbis (draft-ietf-dmarc-dmarcbis 4.10) instead of
//! the Public Suffix List, so pimail carries no list that goes stale: the
//! highest domain in the walk with a DMARC record is the organization,
//! `psd=y` / `psd=n` refine it.
//!
//! Lookups go through [`crate::trust::spf::Dns`]; the decisions are plain functions.

use crate::trust::spf::{Dns, DnsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    None,
    Quarantine,
    Reject,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }

    fn parse(s: &str) -> Option<Policy> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Policy::None),
            "quarantine" => Some(Policy::Quarantine),
            "reject" => Some(Policy::Reject),
            _ => None,
        }
    }
}

/// A parsed DMARC record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub policy: Policy,
    /// `sp=`: the policy for subdomains; `None` means "same as p=".
    pub subdomain_policy: Option<Policy>,
    pub strict_dkim: bool,
    pub strict_spf: bool,
    pub pct: u8,
    /// `psd=y` (a public suffix operator's record) / `psd=n` (an
    /// organizational domain), DMARCbis.
    pub psd: Option<bool>,
    pub rua: Option<String>,
}

/// Parses a `v=DMARC1; ...` record (RFC 7489 6.4). Unknown tags are
/// ignored; an invalid `p=` makes the record unusable.
pub fn parse_record(txt: &str) -> Result<Record, String> {
    let mut parts = txt.split(';').map(str::trim);
    let v = parts.next().unwrap_or("");
    if !v
        .split_once('=')
        .is_some_and(|(k, v)| k.trim() == "v" && v.trim() == "DMARC1")
    {
        return Err("does not start with v=DMARC1".into());
    }
    let mut rec = Record {
        policy: Policy::None,
        subdomain_policy: None,
        strict_dkim: false,
        strict_spf: false,
        pct: 100,
        psd: None,
        rua: None,
    };
    let mut have_p = false;
    for part in parts.filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("tag without '=': {part:?}"));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "p" => {
                rec.policy = Policy::parse(v).ok_or_else(|| format!("invalid p={v}"))?;
                have_p = true;
            }
            "sp" => rec.subdomain_policy = Policy::parse(v),
            "adkim" => rec.strict_dkim = v.eq_ignore_ascii_case("s"),
            "aspf" => rec.strict_spf = v.eq_ignore_ascii_case("s"),
            "pct" => rec.pct = v.parse::<u8>().ok().filter(|&n| n <= 100).unwrap_or(100),
            "psd" => rec.psd = Some(v.eq_ignore_ascii_case("y")),
            "rua" => rec.rua = Some(v.to_string()),
            _ => {}
        }
    }
    // RFC 7489 6.6.3: no valid p= but a rua= means p=none.
    if !have_p && rec.rua.is_none() {
        return Err("no p= tag".into());
    }
    Ok(rec)
}

/// `_dmarc.<domain>`'s record: `Ok(None)` if there is none (or several).
pub async fn lookup<D: Dns>(dns: &D, domain: &str) -> Result<Option<Record>, DnsError> {
    let txts = match dns.txt(&format!("_dmarc.{domain}")).await {
        Ok(t) => t,
        Err(DnsError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    let recs: Vec<Record> = txts
        .iter()
        .filter(|t| t.trim_start().starts_with("v=DMARC1"))
        .filter_map(|t| parse_record(t).ok())
        .collect();
    // RFC 7489 6.6.3: more than one record is as good as none.
    Ok(if recs.len() == 1 {
        recs.into_iter().next()
    } else {
        None
    })
}

fn labels(domain: &str) -> Vec<&str> {
    domain.trim_end_matches('.').split('.').collect()
}

/// The organizational domain of `domain` by the DMARCbis tree walk: of
/// `domain` and its parents (at most 8 labels deep), the highest one with
/// a DMARC record, stopping at `psd=n`, or one below a `psd=y`. Without
/// any record, the domain itself.
pub async fn organizational_domain<D: Dns>(dns: &D, domain: &str) -> Result<String, DnsError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let l = labels(&domain);
    let mut found: Option<String> = None;
    let mut below = domain.clone();
    // From the domain up to (not including) the top-level label.
    let start = l.len().saturating_sub(8);
    for i in start..l.len().saturating_sub(1) {
        let candidate = l[i..].join(".");
        if let Some(rec) = lookup(dns, &candidate).await? {
            match rec.psd {
                Some(false) => return Ok(candidate),
                Some(true) => return Ok(below),
                None => found = Some(candidate.clone()),
            }
        }
        below = candidate;
    }
    // `found` is the last (highest) record seen in the walk.
    Ok(found.unwrap_or(domain))
}

/// RFC 7489 3.1 alignment of an authenticated domain with the From domain.
pub fn aligned(auth: &str, from: &str, strict: bool, org_auth: &str, org_from: &str) -> bool {
    if auth
        .trim_end_matches('.')
        .eq_ignore_ascii_case(from.trim_end_matches('.'))
    {
        return true;
    }
    !strict && org_auth.eq_ignore_ascii_case(org_from)
}

/// What DMARC concluded for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `pass`, `fail`, `none` (no policy), `temperror`, `permerror`.
    pub result: &'static str,
    /// The From domain.
    pub from_domain: String,
    /// The policy the domain asks for on failure (after `sp=` and `pct=`).
    pub policy: Policy,
}

impl Outcome {
    /// Whether a receiver honouring `p=reject` should refuse the message.
    pub fn wants_reject(&self) -> bool {
        self.result == "fail" && self.policy == Policy::Reject
    }
}

/// RFC 7489 6.6.4: the policy applies to `pct` percent of failing
/// messages; a message not selected gets the next less severe one
/// (reject -> quarantine, quarantine -> none). `roll` is uniform in 0..100,
/// so `pct=0` never selects and `pct=100` always does.
pub fn sampled(policy: Policy, pct: u8, roll: u8) -> Policy {
    if roll < pct {
        return policy;
    }
    match policy {
        Policy::Reject => Policy::Quarantine,
        Policy::Quarantine | Policy::None => Policy::None,
    }
}

/// A number in 0..100 for [`sampled`] (rejection sampling: no bias).
fn roll() -> u8 {
    let mut b = [0u8; 1];
    loop {
        if getrandom::getrandom(&mut b).is_err() {
            // No randomness: treat the message as selected, the policy
            // the domain asked for.
            return 0;
        }
        if b[0] < 200 {
            return b[0] % 100;
        }
    }
}

/// Evaluates DMARC for a message whose From domain is `from`, given the
/// SPF result for `spf_domain` (the MAIL FROM domain) and the domains of
/// the passing DKIM signatures.
pub async fn evaluate<D: Dns>(
    dns: &D,
    from: &str,
    spf_pass: bool,
    spf_domain: &str,
    dkim_pass_domains: &[String],
) -> Outcome {
    let from = from.trim_end_matches('.').to_ascii_lowercase();
    let out = |result, policy| Outcome {
        result,
        from_domain: from.clone(),
        policy,
    };
    let org_from = match organizational_domain(dns, &from).await {
        Ok(o) => o,
        Err(_) => return out("temperror", Policy::None),
    };
    // Policy discovery: the From domain, else its organizational domain.
    let (rec, is_sub) = match lookup(dns, &from).await {
        Ok(Some(r)) => (r, false),
        Ok(None) if org_from != from => match lookup(dns, &org_from).await {
            Ok(Some(r)) => (r, true),
            Ok(None) => return out("none", Policy::None),
            Err(_) => return out("temperror", Policy::None),
        },
        Ok(None) => return out("none", Policy::None),
        Err(_) => return out("temperror", Policy::None),
    };
    let mut policy = if is_sub {
        rec.subdomain_policy.unwrap_or(rec.policy)
    } else {
        rec.policy
    };
    policy = sampled(policy, rec.pct, roll());
    let mut pass = false;
    for d in dkim_pass_domains {
        let org = if d.eq_ignore_ascii_case(&from) {
            org_from.clone()
        } else {
            organizational_domain(dns, d)
                .await
                .unwrap_or_else(|_| d.clone())
        };
        if aligned(d, &from, rec.strict_dkim, &org, &org_from) {
            pass = true;
            break;
        }
    }
    if !pass && spf_pass && !spf_domain.is_empty() {
        let org = organizational_domain(dns, spf_domain)
            .await
            .unwrap_or_else(|_| spf_domain.to_string());
        pass = aligned(spf_domain, &from, rec.strict_spf, &org, &org_from);
    }
    out(if pass { "pass" } else { "fail" }, policy)
}

/// The domain of the (first) address in a From header value, e.g.
/// `"Joe" <joe@Example.COM>` -> `example.com`. Comments and display names
/// are skipped crudely but safely: the last `@` inside `<>` if present,
/// else in the whole value.
pub fn from_domain(value: &str) -> Option<String> {
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    let (_, d) = addr.rsplit_once('@')?;
    let d: String = d
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    (d.contains('.') && !d.starts_with('.')).then_some(d)
}

/// The record `pimail doctor` suggests: monitoring first, reports to the
/// postmaster.
pub fn suggested_record(domain: &str) -> String {
    format!("v=DMARC1; p=none; rua=mailto:postmaster@{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::spf::{QType, Rr};
    use std::collections::HashMap;

    #[derive(Default)]
    struct Zone(HashMap<String, Vec<String>>);

    impl Dns for Zone {
        async fn query(&self, name: &str, qtype: QType) -> Result<Vec<Rr>, DnsError> {
            if qtype != QType::Txt {
                return Ok(vec![]);
            }
            self.0
                .get(name)
                .map(|v| v.iter().map(|t| Rr::Txt(t.as_bytes().to_vec())).collect())
                .ok_or(DnsError::NotFound)
        }
    }

    fn zone(entries: &[(&str, &str)]) -> Zone {
        let mut z = Zone::default();
        for (n, t) in entries {
            z.0.entry(n.to_string()).or_default().push(t.to_string());
        }
        z
    }

    #[test]
    fn records_parse() {
        let r = parse_record("v=DMARC1; p=reject; sp=quarantine; adkim=s; pct=50; rua=mailto:x@y")
            .unwrap();
        assert_eq!(r.policy, Policy::Reject);
        assert_eq!(r.subdomain_policy, Some(Policy::Quarantine));
        assert!(r.strict_dkim && !r.strict_spf);
        assert_eq!(r.pct, 50);
        assert!(parse_record("v=DMARC1; p=bogus").is_err());
        assert!(parse_record("p=reject; v=DMARC1").is_err());
        assert_eq!(
            parse_record("v=DMARC1; rua=mailto:a@b").unwrap().policy,
            Policy::None
        );
        assert!(parse_record("v=DMARC1").is_err());
    }

    #[test]
    fn from_header_domains() {
        assert_eq!(
            from_domain("\"Joe\" <joe@Example.COM>").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            from_domain("joe@example.org (Joe)").as_deref(),
            Some("example.org")
        );
        assert_eq!(from_domain("undisclosed"), None);
        assert_eq!(from_domain("a@localhost"), None);
    }

    #[test]
    fn org_domain_by_tree_walk() {
        let z = zone(&[
            ("_dmarc.example.org", "v=DMARC1; p=reject"),
            ("_dmarc.mail.example.org", "v=DMARC1; p=none"),
            ("_dmarc.co.example", "v=DMARC1; p=none; psd=y"),
        ]);
        let org = |d: &str| smol::block_on(organizational_domain(&z, d)).unwrap();
        assert_eq!(org("a.b.mail.example.org"), "example.org");
        assert_eq!(org("example.org"), "example.org");
        assert_eq!(org("shop.brand.co.example"), "brand.co.example");
        assert_eq!(org("nothing.example.net"), "nothing.example.net");
    }

    #[test]
    fn evaluation_and_alignment() {
        let z = zone(&[
            ("_dmarc.example.org", "v=DMARC1; p=reject; sp=quarantine"),
            (
                "_dmarc.strict.example",
                "v=DMARC1; p=reject; adkim=s; aspf=s",
            ),
        ]);
        let ev = |from: &str, spf: bool, spf_d: &str, dkim: &[&str]| {
            let dkim: Vec<String> = dkim.iter().map(|s| s.to_string()).collect();
            smol::block_on(evaluate(&z, from, spf, spf_d, &dkim))
        };
        // Relaxed: a subdomain's DKIM signature aligns with the org domain.
        let o = ev("example.org", false, "", &["mail.example.org"]);
        assert_eq!((o.result, o.policy), ("pass", Policy::Reject));
        let o = ev("example.org", true, "bounces.example.org", &[]);
        assert_eq!(o.result, "pass");
        let o = ev("example.org", true, "evil.example", &["evil.example"]);
        assert!(o.wants_reject(), "{o:?}");
        // A subdomain without its own record gets sp=.
        let o = ev("news.example.org", false, "", &[]);
        assert_eq!((o.result, o.policy), ("fail", Policy::Quarantine));
        assert!(!o.wants_reject());
        // Strict: only the exact domain.
        let o = ev("strict.example", false, "", &["a.strict.example"]);
        assert_eq!(o.result, "fail");
        let o = ev("strict.example", false, "", &["strict.example"]);
        assert_eq!(o.result, "pass");
        let o = ev("nodmarc.example", false, "", &[]);
        assert_eq!(o.result, "none");
    }

    #[test]
    fn pct_selects_that_share_and_softens_the_rest() {
        use Policy::*;
        assert_eq!(sampled(Reject, 100, 99), Reject);
        assert_eq!(sampled(Reject, 0, 0), Quarantine);
        assert_eq!(sampled(Reject, 30, 29), Reject);
        assert_eq!(sampled(Reject, 30, 30), Quarantine);
        assert_eq!(sampled(Quarantine, 30, 30), None);
        assert_eq!(sampled(Quarantine, 30, 5), Quarantine);
        assert_eq!(sampled(None, 50, 99), None);
        // Over every roll, pct=30 selects exactly 30 of 100.
        let n = (0..100u8)
            .filter(|&r| sampled(Reject, 30, r) == Reject)
            .count();
        assert_eq!(n, 30);
        // The random roll stays in range and is not stuck.
        let rolls: std::collections::HashSet<u8> = (0..400).map(|_| roll()).collect();
        assert!(rolls.iter().all(|&r| r < 100));
        assert!(rolls.len() > 20);
    }
}
