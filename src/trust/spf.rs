//! SPF: is this client IP allowed to send mail for this domain?
//!
//! Implements `check_host()` of RFC 7208: record lookup and selection
//! (4.4, 4.5), the whole-record syntax check before evaluation (4.6), the
//! mechanisms `all include a mx ptr ip4 ip6 exists` with qualifiers (5),
//! the `redirect=` modifier (6.1; `exp=` is syntax-checked but not
//! fetched, since an explanation never changes the result), macros (7,
//! all letters), and the processing limits: 10 DNS-querying terms, 10
//! addresses per `mx`, 10 names per `ptr`, 2 void lookups (4.6.4).
//!
//! Sans-I/O in the sense that matters for tests: every DNS question goes
//! through the [`Dns`] trait, so the evaluator runs against a table (the
//! RFC 7208 test suite's zones in tests/data) as well as against the real
//! resolver. Evaluation is async only because lookups are.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

/// The results of RFC 7208 2.6, named as in `Received-SPF` and RFC 8601.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    pub fn name(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
    Mx,
    Txt,
    Ptr,
}

/// A resource record as the evaluator needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rr {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// The exchange of an MX record (preference does not matter for SPF).
    Mx(String),
    /// One TXT record, its character-strings concatenated.
    Txt(Vec<u8>),
    Ptr(String),
}

impl Rr {
    /// Is this a record of type `qtype`? (What a zone answers for a query.)
    pub fn is_type(&self, qtype: QType) -> bool {
        matches!(
            (self, qtype),
            (Rr::A(_), QType::A)
                | (Rr::Aaaa(_), QType::Aaaa)
                | (Rr::Mx(_), QType::Mx)
                | (Rr::Txt(_), QType::Txt)
                | (Rr::Ptr(_), QType::Ptr)
        )
    }
}

/// Why a query gave no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN. (An empty answer is `Ok(vec![])`.)
    NotFound,
    /// Timeout, SERVFAIL, unreachable server.
    Temporary(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NotFound => write!(f, "no such domain"),
            DnsError::Temporary(e) => write!(f, "{e}"),
        }
    }
}

/// The DNS as SPF, DMARC and DKIM see it. Answers have CNAMEs followed.
pub trait Dns {
    fn query(&self, name: &str, qtype: QType) -> impl Future<Output = Result<Vec<Rr>, DnsError>>;

    /// TXT records as strings (lossy), for DKIM and DMARC.
    fn txt(&self, name: &str) -> impl Future<Output = Result<Vec<String>, DnsError>> {
        async move {
            Ok(self
                .query(name, QType::Txt)
                .await?
                .into_iter()
                .filter_map(|r| match r {
                    Rr::Txt(t) => Some(String::from_utf8_lossy(&t).into_owned()),
                    _ => None,
                })
                .collect())
        }
    }
}

/// What is being checked (RFC 7208 4.1).
#[derive(Debug, Clone)]
pub struct Query {
    /// The SMTP client's address.
    pub ip: IpAddr,
    /// MAIL FROM, or empty for the null sender (then `postmaster@helo`).
    pub sender: String,
    /// The EHLO/HELO name.
    pub helo: String,
    /// Our own host name, for the `%{r}` macro.
    pub receiver: String,
}

/// The outcome with a short reason for logs and Authentication-Results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: SpfResult,
    /// The domain whose policy was checked (the MAIL FROM or HELO domain).
    pub domain: String,
    pub reason: String,
}

/// Checks `q` for the MAIL FROM identity (or the HELO identity when the
/// sender is null), RFC 7208 2.4.
pub async fn check<D: Dns>(dns: &D, q: &Query) -> Outcome {
    let ip = canonical_ip(q.ip);
    let (local, domain) = match q.sender.rsplit_once('@') {
        Some((l, d)) if !q.sender.is_empty() => (
            if l.is_empty() { "postmaster" } else { l }.to_string(),
            d.to_string(),
        ),
        _ => ("postmaster".to_string(), q.helo.clone()),
    };
    let sender = format!("{local}@{domain}");
    let mut ctx = Ctx {
        dns,
        ip,
        sender,
        local,
        sender_domain: domain.clone(),
        helo: q.helo.clone(),
        receiver: q.receiver.clone(),
        lookups: 0,
        voids: 0,
    };
    let (result, reason) = ctx.check_host(domain.clone(), 0).await;
    Outcome {
        result,
        domain: domain.to_ascii_lowercase(),
        reason,
    }
}

/// IPv4-mapped IPv6 clients are treated as the IPv4 address they carry.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// RFC 7208 4.3 / 4.8: a domain we can query — at least two labels, none
/// empty (a trailing dot aside) or longer than 63, not an address literal.
pub fn valid_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    if d.is_empty() || d.len() > 253 || d.starts_with('[') {
        return false;
    }
    let labels: Vec<&str> = d.split('.').collect();
    labels.len() >= 2 && labels.iter().all(|l| !l.is_empty() && l.len() <= 63)
}

type Res = (SpfResult, String);

struct Ctx<'a, D: Dns> {
    dns: &'a D,
    ip: IpAddr,
    sender: String,
    local: String,
    sender_domain: String,
    helo: String,
    receiver: String,
    /// DNS-querying terms evaluated so far (limit 10).
    lookups: u32,
    /// Lookups that returned nothing (limit 2).
    voids: u32,
}

const MAX_LOOKUPS: u32 = 10;
const MAX_VOIDS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Record {
    directives: Vec<(Qualifier, Mechanism)>,
    redirect: Option<String>,
}

/// Parses a whole record (after `v=spf1`), so a syntax error anywhere is a
/// permerror even if an earlier mechanism would match (RFC 7208 4.6).
fn parse_record(text: &str) -> Result<Record, String> {
    let mut rec = Record::default();
    let mut exp_seen = false;
    // Terms are separated by SP only (4.6.1); other whitespace is an error.
    for term in text.split(' ').filter(|t| !t.is_empty()) {
        if !term.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("invalid character in term {term:?}"));
        }
        // A modifier is name=...; the name cannot hold ':' or '/'.
        let name_end = term.find(['=', ':', '/']).unwrap_or(term.len());
        if term[name_end..].starts_with('=') {
            let (name, value) = (&term[..name_end], &term[name_end + 1..]);
            let good_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !good_name {
                return Err(format!("invalid modifier name {name:?}"));
            }
            match name.to_ascii_lowercase().as_str() {
                "redirect" => {
                    if rec.redirect.is_some() {
                        return Err("more than one redirect=".into());
                    }
                    check_domain_spec(value)?;
                    rec.redirect = Some(value.to_string());
                }
                "exp" => {
                    if exp_seen {
                        return Err("more than one exp=".into());
                    }
                    exp_seen = true;
                    check_domain_spec(value)?;
                }
                // Unknown modifiers are ignored, but must be macro-strings.
                _ => check_macro_string(value, false)?,
            }
            continue;
        }
        let (q, mech) = match term.as_bytes()[0] {
            b'+' => (Qualifier::Pass, &term[1..]),
            b'-' => (Qualifier::Fail, &term[1..]),
            b'~' => (Qualifier::SoftFail, &term[1..]),
            b'?' => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        rec.directives.push((q, parse_mechanism(mech)?));
    }
    Ok(rec)
}

fn parse_mechanism(m: &str) -> Result<Mechanism, String> {
    let name_end = m.find([':', '/']).unwrap_or(m.len());
    let (name, rest) = (m[..name_end].to_ascii_lowercase(), &m[name_end..]);
    let arg = rest.strip_prefix(':');
    let bad = || format!("invalid mechanism {m:?}");
    match name.as_str() {
        "all" if rest.is_empty() => Ok(Mechanism::All),
        "include" | "exists" => {
            let d = arg.filter(|d| !d.is_empty()).ok_or_else(bad)?;
            check_domain_spec(d)?;
            Ok(if name == "include" {
                Mechanism::Include(d.to_string())
            } else {
                Mechanism::Exists(d.to_string())
            })
        }
        "a" | "mx" => {
            let (domain, c4, c6) = split_dual_cidr(rest)?;
            let domain = match domain {
                Some(d) => {
                    check_domain_spec(d)?;
                    Some(d.to_string())
                }
                None => None,
            };
            Ok(if name == "a" {
                Mechanism::A(domain, c4, c6)
            } else {
                Mechanism::Mx(domain, c4, c6)
            })
        }
        "ptr" => match arg {
            None if rest.is_empty() => Ok(Mechanism::Ptr(None)),
            Some(d) if !d.is_empty() => {
                check_domain_spec(d)?;
                Ok(Mechanism::Ptr(Some(d.to_string())))
            }
            _ => Err(bad()),
        },
        "ip4" => {
            let a = arg.ok_or_else(bad)?;
            let (ip, len) = match a.split_once('/') {
                Some((ip, l)) => (ip, parse_cidr(l, 32)?),
                None => (a, 32),
            };
            // RFC 7208 5.6: dotted quad only, no shorthand.
            if ip.split('.').count() != 4 {
                return Err(bad());
            }
            Ok(Mechanism::Ip4(ip.parse().map_err(|_| bad())?, len))
        }
        "ip6" => {
            let a = arg.ok_or_else(bad)?;
            let (ip, len) = match a.split_once('/') {
                Some((ip, l)) => (ip, parse_cidr(l, 128)?),
                None => (a, 128),
            };
            Ok(Mechanism::Ip6(ip.parse().map_err(|_| bad())?, len))
        }
        _ => Err(format!("unknown mechanism {m:?}")),
    }
}

fn parse_cidr(s: &str, max: u8) -> Result<u8, String> {
    // No leading zeros, no sign (ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT)).
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    match s.parse::<u8>() {
        Ok(n) if ok && n <= max => Ok(n),
        _ => Err(format!("invalid CIDR length /{s}")),
    }
}

/// `[:domain][/cidr4][//cidr6]` of `a` and `mx`. A domain-spec may itself
/// contain '/' (it is a macro-string), so the CIDR lengths are taken from
/// the end: a trailing `//digits`, then a trailing `/digits`.
fn split_dual_cidr(rest: &str) -> Result<(Option<&str>, u8, u8), String> {
    fn trailing<'a>(s: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
        let i = s.rfind(sep)?;
        let digits = &s[i + sep.len()..];
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| (&s[..i], digits))
    }
    let (mut c4, mut c6) = (32, 128);
    let mut s = rest;
    if let Some((head, d)) = trailing(s, "//") {
        c6 = parse_cidr(d, 128)?;
        s = head;
    }
    if let Some((head, d)) = trailing(s, "/") {
        // Not the second slash of a "//" pair already consumed.
        if !head.ends_with('/') {
            c4 = parse_cidr(d, 32)?;
            s = head;
        }
    }
    let domain = if s.is_empty() {
        None
    } else {
        let d = s
            .strip_prefix(':')
            .ok_or_else(|| format!("invalid mechanism argument {rest:?}"))?;
        if d.is_empty() {
            return Err("empty domain in mechanism".into());
        }
        Some(d)
    };
    Ok((domain, c4, c6))
}

/// domain-spec = macro-string domain-end (RFC 7208 7.1): after the macros,
/// it ends in a macro or in "." and a top label that is not all digits.
fn check_domain_spec(s: &str) -> Result<(), String> {
    check_macro_string(s, false)?;
    if s.ends_with('}') {
        return Ok(());
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    let (_, top) = s
        .rsplit_once('.')
        .ok_or_else(|| format!("domain {s:?} needs a top-level label"))?;
    let good = !top.is_empty()
        && top.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !top.starts_with('-')
        && !top.ends_with('-')
        && top.bytes().any(|b| b.is_ascii_alphabetic());
    if good {
        Ok(())
    } else {
        Err(format!("invalid top-level label in {s:?}"))
    }
}

/// Macro syntax (RFC 7208 7.1); `exp` allows the c, r, t letters.
fn check_macro_string(s: &str, exp: bool) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'%' | b'_' | b'-') => i += 2,
            Some(b'{') => {
                let end = s[i..].find('}').ok_or("unterminated macro")? + i;
                parse_macro(&s[i + 2..end], exp)?;
                i = end + 1;
            }
            _ => return Err(format!("invalid '%' in {s:?}")),
        }
    }
    Ok(())
}

struct Macro {
    letter: u8,
    upper: bool,
    digits: Option<usize>,
    reverse: bool,
    delims: Vec<u8>,
}

fn parse_macro(m: &str, exp: bool) -> Result<Macro, String> {
    let b = m.as_bytes();
    let bad = || format!("invalid macro %{{{m}}}");
    let letter = *b.first().ok_or_else(bad)?;
    let lower = letter.to_ascii_lowercase();
    if !(b"slodiphv".contains(&lower) || exp && b"crt".contains(&lower)) {
        return Err(bad());
    }
    let mut i = 1;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let digits = if i > start {
        let n: usize = m[start..i].parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        Some(n)
    } else {
        None
    };
    let reverse = b.get(i).is_some_and(|c| c.eq_ignore_ascii_case(&b'r'));
    if reverse {
        i += 1;
    }
    let delims = b[i..].to_vec();
    if !delims.iter().all(|c| b".-+,/_=".contains(c)) {
        return Err(bad());
    }
    Ok(Macro {
        letter: lower,
        upper: letter.is_ascii_uppercase(),
        digits,
        reverse,
        delims,
    })
}

fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The dotted form of an address for `%{i}` and reverse lookups.
fn ip_dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut parts = Vec::with_capacity(32);
            for byte in v6.octets() {
                parts.push(format!("{:x}", byte >> 4));
                parts.push(format!("{:x}", byte & 15));
            }
            parts.join(".")
        }
    }
}

/// The PTR query name of an address (`4.3.2.1.in-addr.arpa`).
pub fn reverse_name(ip: IpAddr) -> String {
    let mut parts: Vec<String> = ip_dotted(ip).split('.').map(str::to_string).collect();
    parts.reverse();
    let suffix = if ip.is_ipv4() {
        "in-addr.arpa"
    } else {
        "ip6.arpa"
    };
    format!("{}.{suffix}", parts.join("."))
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The records' names compared as DNS names: case-insensitive, no final dot.
fn name_eq(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

impl<D: Dns> Ctx<'_, D> {
    fn check_host(&mut self, domain: String, depth: u8) -> Pin<Box<dyn Future<Output = Res> + '_>> {
        Box::pin(async move {
            if !valid_domain(&domain) {
                return (SpfResult::None, format!("{domain:?} is not a valid domain"));
            }
            if depth > 20 {
                return (SpfResult::PermError, "include/redirect loop".into());
            }
            let records = match self.dns.query(&domain, QType::Txt).await {
                Ok(r) => r,
                Err(DnsError::NotFound) => {
                    return (SpfResult::None, format!("{domain} does not exist"))
                }
                Err(DnsError::Temporary(e)) => {
                    return (SpfResult::TempError, format!("DNS error for {domain}: {e}"))
                }
            };
            let spf: Vec<Vec<u8>> = records
                .into_iter()
                .filter_map(|r| match r {
                    Rr::Txt(t) if is_spf1(&t) => Some(t),
                    _ => None,
                })
                .collect();
            let text = match spf.as_slice() {
                [] => return (SpfResult::None, format!("no SPF record at {domain}")),
                [one] => one,
                _ => {
                    return (
                        SpfResult::PermError,
                        format!("several SPF records at {domain}"),
                    )
                }
            };
            let Ok(text) = std::str::from_utf8(text) else {
                return (SpfResult::PermError, "SPF record is not ASCII".into());
            };
            if !text.is_ascii() {
                return (SpfResult::PermError, "SPF record is not ASCII".into());
            }
            let record = match parse_record(&text[6..]) {
                Ok(r) => r,
                Err(e) => return (SpfResult::PermError, format!("SPF record of {domain}: {e}")),
            };
            self.evaluate(&domain, record, depth).await
        })
    }

    async fn evaluate(&mut self, domain: &str, record: Record, depth: u8) -> Res {
        for (q, mech) in &record.directives {
            match self.matches(domain, mech, depth).await {
                Ok(true) => {
                    return (q.result(), format!("{domain} matched {}", mech_name(mech)));
                }
                Ok(false) => {}
                Err(r) => return r,
            }
        }
        if let Some(target) = record.redirect {
            if let Err(r) = self.count_lookup() {
                return r;
            }
            let target = match self.expand(&target, domain, true).await {
                Ok(t) => t,
                Err(r) => return r,
            };
            let (r, why) = self.check_host(target.clone(), depth + 1).await;
            // RFC 7208 6.1: no record at the redirect target is permerror.
            if r == SpfResult::None {
                return (SpfResult::PermError, format!("redirect to {target}: {why}"));
            }
            return (r, why);
        }
        (
            SpfResult::Neutral,
            format!("no mechanism of {domain} matched"),
        )
    }

    fn count_lookup(&mut self) -> Result<(), Res> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            Err((SpfResult::PermError, "more than 10 DNS lookups".into()))
        } else {
            Ok(())
        }
    }

    /// A query whose empty answer or NXDOMAIN counts as a void lookup.
    async fn lookup(&mut self, name: &str, qtype: QType) -> Result<Vec<Rr>, Res> {
        if !valid_domain(name) {
            // Not a name we can ask about: nothing there (RFC 7208 4.8).
            return Ok(Vec::new());
        }
        match self.dns.query(name, qtype).await {
            Ok(r) if !r.is_empty() => Ok(r),
            Ok(_) | Err(DnsError::NotFound) => {
                self.voids += 1;
                if self.voids > MAX_VOIDS {
                    Err((SpfResult::PermError, "more than 2 void DNS lookups".into()))
                } else {
                    Ok(Vec::new())
                }
            }
            Err(DnsError::Temporary(e)) => {
                Err((SpfResult::TempError, format!("DNS error for {name}: {e}")))
            }
        }
    }

    async fn addresses(&mut self, name: &str) -> Result<Vec<IpAddr>, Res> {
        let qtype = if self.ip.is_ipv4() {
            QType::A
        } else {
            QType::Aaaa
        };
        Ok(self
            .lookup(name, qtype)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                Rr::A(a) => Some(IpAddr::V4(a)),
                Rr::Aaaa(a) => Some(IpAddr::V6(a)),
                _ => None,
            })
            .collect())
    }

    fn matches_any(&self, addrs: &[IpAddr], c4: u8, c6: u8) -> bool {
        let len = if self.ip.is_ipv4() { c4 } else { c6 };
        addrs.iter().any(|a| in_net(self.ip, *a, len))
    }

    async fn matches(&mut self, domain: &str, mech: &Mechanism, depth: u8) -> Result<bool, Res> {
        match mech {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(n, l) => Ok(in_net(self.ip, IpAddr::V4(*n), *l)),
            Mechanism::Ip6(n, l) => Ok(in_net(self.ip, IpAddr::V6(*n), *l)),
            Mechanism::Include(spec) => {
                self.count_lookup()?;
                let target = self.expand(spec, domain, true).await?;
                let (r, why) = self.check_host(target.clone(), depth + 1).await;
                match r {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err((r, why)),
                    // RFC 7208 5.2: none at an include target is permerror.
                    SpfResult::PermError | SpfResult::None => {
                        Err((SpfResult::PermError, format!("include:{target}: {why}")))
                    }
                }
            }
            Mechanism::A(spec, c4, c6) => {
                self.count_lookup()?;
                let target = self.target(spec, domain).await?;
                let addrs = self.addresses(&target).await?;
                Ok(self.matches_any(&addrs, *c4, *c6))
            }
            Mechanism::Mx(spec, c4, c6) => {
                self.count_lookup()?;
                let target = self.target(spec, domain).await?;
                let mxs: Vec<String> = self
                    .lookup(&target, QType::Mx)
                    .await?
                    .into_iter()
                    .filter_map(|r| match r {
                        Rr::Mx(m) => Some(m),
                        _ => None,
                    })
                    .collect();
                // RFC 7208 4.6.4: more than 10 MX names is a permerror.
                if mxs.len() > 10 {
                    return Err((
                        SpfResult::PermError,
                        format!("{target} has more than 10 MX"),
                    ));
                }
                for mx in mxs {
                    let addrs = self.addresses(&mx).await?;
                    if self.matches_any(&addrs, *c4, *c6) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                self.count_lookup()?;
                let target = self.target(spec, domain).await?;
                Ok(self
                    .validated_names()
                    .await
                    .iter()
                    .any(|n| name_eq(n, &target) || ends_with_domain(n, &target)))
            }
            Mechanism::Exists(spec) => {
                self.count_lookup()?;
                let target = self.expand(spec, domain, true).await?;
                // Always an A query, whatever the client's family (5.7).
                Ok(self
                    .lookup(&target, QType::A)
                    .await?
                    .iter()
                    .any(|r| matches!(r, Rr::A(_))))
            }
        }
    }

    async fn target(&mut self, spec: &Option<String>, domain: &str) -> Result<String, Res> {
        match spec {
            Some(s) => self.expand(s, domain, true).await,
            None => Ok(domain.to_string()),
        }
    }

    /// Forward-confirmed names of the client (RFC 7208 5.5): PTR names
    /// (at most 10) whose addresses include the client. Lookup errors just
    /// mean fewer names.
    async fn validated_names(&mut self) -> Vec<String> {
        let names: Vec<String> = match self.dns.query(&reverse_name(self.ip), QType::Ptr).await {
            Ok(r) => r
                .into_iter()
                .filter_map(|r| match r {
                    Rr::Ptr(p) => Some(p),
                    _ => None,
                })
                .take(10)
                .collect(),
            Err(_) => return Vec::new(),
        };
        let qtype = if self.ip.is_ipv4() {
            QType::A
        } else {
            QType::Aaaa
        };
        let mut out = Vec::new();
        for n in names {
            if !valid_domain(&n) {
                continue;
            }
            if let Ok(addrs) = self.dns.query(&n, qtype).await {
                let ok = addrs.iter().any(|r| match r {
                    Rr::A(a) => IpAddr::V4(*a) == self.ip,
                    Rr::Aaaa(a) => IpAddr::V6(*a) == self.ip,
                    _ => false,
                });
                if ok {
                    out.push(n.trim_end_matches('.').to_string());
                }
            }
        }
        out
    }

    /// Macro expansion (RFC 7208 7.3). For a domain name, the result is
    /// cut from the left to at most 253 characters.
    async fn expand(&mut self, spec: &str, domain: &str, is_domain: bool) -> Result<String, Res> {
        let mut out = String::new();
        let mut rest = spec;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('%') {
                out.push('%');
                rest = r;
            } else if let Some(r) = after.strip_prefix('_') {
                out.push(' ');
                rest = r;
            } else if let Some(r) = after.strip_prefix('-') {
                out.push_str("%20");
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or((SpfResult::PermError, "unterminated macro".to_string()))?;
                let m = parse_macro(&r[..end], false).map_err(|e| (SpfResult::PermError, e))?;
                out.push_str(&self.macro_value(&m, domain).await);
                rest = &r[end + 1..];
            } else {
                return Err((SpfResult::PermError, format!("invalid macro in {spec:?}")));
            }
        }
        out.push_str(rest);
        if is_domain {
            while out.len() > 253 {
                match out.split_once('.') {
                    Some((_, r)) => out = r.to_string(),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    async fn macro_value(&mut self, m: &Macro, domain: &str) -> String {
        let value = match m.letter {
            b's' => self.sender.clone(),
            b'l' => self.local.clone(),
            b'o' => self.sender_domain.clone(),
            b'd' => domain.to_string(),
            b'i' => ip_dotted(self.ip),
            b'v' => if self.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
            b'h' => self.helo.clone(),
            b'r' => self.receiver.clone(),
            b'c' => self.ip.to_string(),
            b't' => crate::util::timefmt::unix_now().to_string(),
            b'p' => {
                // RFC 7208 7.3: a validated name, preferring one within the domain.
                let names = self.validated_names().await;
                names
                    .iter()
                    .find(|n| name_eq(n, domain))
                    .or_else(|| names.iter().find(|n| ends_with_domain(n, domain)))
                    .or(names.first())
                    .cloned()
                    .unwrap_or_else(|| "unknown".into())
            }
            _ => String::new(),
        };
        let delims: &[u8] = if m.delims.is_empty() { b"." } else { &m.delims };
        let mut parts: Vec<&str> = value
            .split(|c: char| c.is_ascii() && delims.contains(&(c as u8)))
            .collect();
        if m.reverse {
            parts.reverse();
        }
        if let Some(n) = m.digits {
            if n < parts.len() {
                parts.drain(..parts.len() - n);
            }
        }
        let joined = parts.join(".");
        if m.upper {
            url_escape(&joined)
        } else {
            joined
        }
    }
}

fn ends_with_domain(name: &str, domain: &str) -> bool {
    let (n, d) = (
        name.trim_end_matches('.').to_ascii_lowercase(),
        domain.trim_end_matches('.').to_ascii_lowercase(),
    );
    n.ends_with(&format!(".{d}"))
}

fn mech_name(m: &Mechanism) -> String {
    match m {
        Mechanism::All => "all".into(),
        Mechanism::Include(d) => format!("include:{d}"),
        Mechanism::A(d, ..) => format!(
            "a{}",
            d.as_deref().map(|d| format!(":{d}")).unwrap_or_default()
        ),
        Mechanism::Mx(d, ..) => format!(
            "mx{}",
            d.as_deref().map(|d| format!(":{d}")).unwrap_or_default()
        ),
        Mechanism::Ptr(_) => "ptr".into(),
        Mechanism::Ip4(a, l) => format!("ip4:{a}/{l}"),
        Mechanism::Ip6(a, l) => format!("ip6:{a}/{l}"),
        Mechanism::Exists(d) => format!("exists:{d}"),
    }
}

/// `v=spf1` followed by a space or the end, case-insensitively (4.5).
fn is_spf1(t: &[u8]) -> bool {
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
}

/// For `pimail doctor`: would `ip` pass SPF for `domain`? The same
/// evaluation with a null-ish sender at that domain.
pub async fn check_domain<D: Dns>(dns: &D, domain: &str, ip: IpAddr, helo: &str) -> Outcome {
    check(
        dns,
        &Query {
            ip,
            sender: format!("postmaster@{domain}"),
            helo: helo.to_string(),
            receiver: helo.to_string(),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A zone table: name -> records; names in `timeout` time out.
    #[derive(Default)]
    struct Zone {
        records: HashMap<String, Vec<Rr>>,
        timeout: Vec<String>,
    }

    impl Zone {
        fn add(&mut self, name: &str, rr: Rr) -> &mut Self {
            self.records
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(rr);
            self
        }
        fn add_txt(&mut self, name: &str, t: &str) -> &mut Self {
            self.add(name, Rr::Txt(t.as_bytes().to_vec()))
        }
        fn a(&mut self, name: &str, ip: &str) -> &mut Self {
            self.add(name, Rr::A(ip.parse().unwrap()))
        }
    }

    impl Dns for Zone {
        async fn query(&self, name: &str, qtype: QType) -> Result<Vec<Rr>, DnsError> {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if self.timeout.contains(&name) {
                return Err(DnsError::Temporary("timeout".into()));
            }
            let recs = self.records.get(&name).ok_or(DnsError::NotFound)?;
            Ok(recs.iter().filter(|r| r.is_type(qtype)).cloned().collect())
        }
    }

    fn run(zone: &Zone, ip: &str, sender: &str) -> SpfResult {
        let q = Query {
            ip: ip.parse().unwrap(),
            sender: sender.into(),
            helo: "mail.example.org".into(),
            receiver: "mx.example.net".into(),
        };
        smol::block_on(check(zone, &q)).result
    }

    #[test]
    fn basic_mechanisms_and_qualifiers() {
        let mut z = Zone::default();
        z.add_txt(
            "example.org",
            "v=spf1 ip4:192.0.2.0/24 a:mail.example.org mx include:_spf.example.net ~all",
        )
        .a("mail.example.org", "198.51.100.7")
        .add("example.org", Rr::Mx("mx.example.org".into()))
        .a("mx.example.org", "198.51.100.9")
        .add_txt("_spf.example.net", "v=spf1 ip6:2001:db8::/32 -all");
        assert_eq!(run(&z, "192.0.2.200", "a@example.org"), SpfResult::Pass);
        assert_eq!(run(&z, "198.51.100.7", "a@example.org"), SpfResult::Pass);
        assert_eq!(run(&z, "198.51.100.9", "a@example.org"), SpfResult::Pass);
        assert_eq!(run(&z, "2001:db8::5", "a@example.org"), SpfResult::Pass);
        assert_eq!(run(&z, "203.0.113.1", "a@example.org"), SpfResult::SoftFail);
        assert_eq!(
            run(&z, "::ffff:192.0.2.1", "a@example.org"),
            SpfResult::Pass
        );
        assert_eq!(run(&z, "203.0.113.1", "a@nospf.example"), SpfResult::None);
    }

    #[test]
    fn lookup_limits() {
        let mut z = Zone::default();
        let mut rec = String::from("v=spf1");
        for i in 0..11 {
            rec.push_str(&format!(" a:h{i}.example.org"));
            z.a(&format!("h{i}.example.org"), "192.0.2.1");
        }
        rec.push_str(" -all");
        z.add_txt("example.org", &rec);
        // The 11th lookup is never reached when an earlier one matches...
        assert_eq!(run(&z, "192.0.2.1", "a@example.org"), SpfResult::Pass);
        // ...but is a permerror when it is.
        assert_eq!(run(&z, "192.0.2.9", "a@example.org"), SpfResult::PermError);
        let mut z = Zone::default();
        z.add_txt(
            "example.org",
            "v=spf1 a:n1.example.org a:n2.example.org a:n3.example.org -all",
        );
        assert_eq!(run(&z, "192.0.2.9", "a@example.org"), SpfResult::PermError);
    }

    #[test]
    fn macros_expand() {
        let mut z = Zone::default();
        z.add_txt(
            "example.org",
            "v=spf1 exists:%{l1r-}.%{ir}.%{v}.%{d2}.x.example.net -all",
        )
        .a(
            "alice.1.2.0.192.in-addr.example.org.x.example.net",
            "127.0.0.2",
        );
        assert_eq!(
            run(&z, "192.0.2.1", "alice-bob@example.org"),
            SpfResult::Pass
        );
        assert_eq!(
            run(&z, "192.0.2.2", "alice-bob@example.org"),
            SpfResult::Fail
        );
        let mut z = Zone::default();
        z.add_txt(
            "example.org",
            "v=spf1 exists:%{o}.%{h}.%{s}.chk.example.net -all",
        )
        .a(
            "example.org.mail.example.org.u@example.org.chk.example.net",
            "127.0.0.2",
        );
        assert_eq!(run(&z, "192.0.2.1", "u@example.org"), SpfResult::Pass);
    }

    #[test]
    fn syntax_errors_anywhere_and_redirect() {
        let mut z = Zone::default();
        z.add_txt("example.org", "v=spf1 ip4:192.0.2.1 -all bogus")
            .add_txt("r.example.org", "v=spf1 redirect=example.net")
            .add_txt("example.net", "v=spf1 ip4:192.0.2.5 -all")
            .add_txt("r2.example.org", "v=spf1 redirect=nothing.example.net");
        assert_eq!(run(&z, "192.0.2.1", "a@example.org"), SpfResult::PermError);
        assert_eq!(run(&z, "192.0.2.5", "a@r.example.org"), SpfResult::Pass);
        assert_eq!(run(&z, "192.0.2.6", "a@r.example.org"), SpfResult::Fail);
        assert_eq!(
            run(&z, "192.0.2.6", "a@r2.example.org"),
            SpfResult::PermError
        );
        z.timeout.push("t.example.org".into());
        assert_eq!(
            run(&z, "192.0.2.6", "a@t.example.org"),
            SpfResult::TempError
        );
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.0.2.1".parse().unwrap()),
            "1.2.0.192.in-addr.arpa"
        );
        assert!(reverse_name("2001:db8::1".parse().unwrap()).starts_with(
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        ));
    }
}
