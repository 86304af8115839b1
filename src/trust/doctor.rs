//! `pimail doctor`: is this server set up so that its mail is delivered
//! and not filed as spam? One checklist of what the big receivers look at,
//! each failing item with the exact DNS record (or other fix) to apply.
//!
//! Checks, per domain: MX pointing at our host name (RFC 5321 5.1); the
//! host name's A/AAAA; forward-confirmed reverse DNS of each address
//! (RFC 8601 "iprev", what Gmail requires); SPF allowing each address
//! (RFC 7208, evaluated by [`crate::trust::spf`]); a DMARC record (RFC 7489); the
//! DKIM records matching our keys (RFC 6376 3.6); the TLS certificate's
//! validity and names (RFC 5280 4.1.2.5, 4.2.1.6). The network probes
//! (outbound port 25, inbound reachability) are in the binary's driver;
//! everything here is lookups through [`Dns`] and plain decisions.

use crate::trust::dkim;
use crate::trust::dmarc;
use crate::trust::spf::{self, Dns, DnsError, QType, Rr};
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Works, but worth fixing (e.g. a certificate expiring soon).
    Warn,
    /// Something needed is missing or wrong: `doctor` exits non-zero.
    Fail,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub what: String,
    /// The exact record to publish or the step to take.
    pub fix: Option<String>,
}

impl Check {
    fn ok(what: String) -> Check {
        Check {
            level: Level::Ok,
            what,
            fix: None,
        }
    }
    fn fail(what: String, fix: String) -> Check {
        Check {
            level: Level::Fail,
            what,
            fix: Some(fix),
        }
    }
    fn warn(what: String, fix: String) -> Check {
        Check {
            level: Level::Warn,
            what,
            fix: Some(fix),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "[ok]  ",
            Level::Warn => "[warn]",
            Level::Fail => "[FAIL]",
        };
        write!(f, "{tag} {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

/// What the checks compare the DNS against.
pub struct Setup {
    pub hostname: String,
    pub domains: Vec<String>,
    /// (selector, TXT record we would publish) for each DKIM key.
    pub dkim: Vec<(String, String)>,
}

fn lower(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

async fn addresses<D: Dns>(dns: &D, host: &str) -> Result<Vec<IpAddr>, DnsError> {
    let mut out = Vec::new();
    let mut temp = None;
    for q in [QType::A, QType::Aaaa] {
        match dns.query(host, q).await {
            Ok(rs) => out.extend(rs.into_iter().filter_map(|r| match r {
                Rr::A(a) => Some(IpAddr::V4(a)),
                Rr::Aaaa(a) => Some(IpAddr::V6(a)),
                _ => None,
            })),
            Err(DnsError::NotFound) => {}
            Err(e) => temp = Some(e),
        }
    }
    match temp {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// The host's own checks: A/AAAA and forward-confirmed PTR. Returns the
/// addresses found, for the per-domain SPF checks.
pub async fn check_host<D: Dns>(dns: &D, setup: &Setup) -> (Vec<Check>, Vec<IpAddr>) {
    let host = lower(&setup.hostname);
    let mut out = Vec::new();
    let addrs = match addresses(dns, &host).await {
        Ok(a) if !a.is_empty() => a,
        Ok(_) | Err(DnsError::NotFound) => {
            out.push(Check::fail(
                format!("{host} has no A or AAAA record"),
                format!("publish `{host}. IN A <your public IPv4 address>` (and AAAA for IPv6)"),
            ));
            return (out, Vec::new());
        }
        Err(DnsError::Temporary(e)) => {
            out.push(Check::fail(
                format!("cannot look up {host}: {e}"),
                "check the nameservers in /etc/resolv.conf or outbound.dns".into(),
            ));
            return (out, Vec::new());
        }
    };
    let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    out.push(Check::ok(format!("{host} has address {}", list.join(", "))));
    for ip in &addrs {
        let ptrs: Vec<String> = match dns.query(&spf::reverse_name(*ip), QType::Ptr).await {
            Ok(r) => r
                .into_iter()
                .filter_map(|r| match r {
                    Rr::Ptr(p) => Some(lower(&p)),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let fix = format!(
            "ask the provider of {ip} (ISP or hosting) to set its reverse DNS (PTR) to {host}; \
             without it Gmail and Outlook refuse or junk the mail"
        );
        if ptrs.is_empty() {
            out.push(Check::fail(format!("{ip} has no reverse DNS (PTR)"), fix));
        } else if !ptrs.contains(&host) {
            out.push(Check::fail(
                format!("{ip} has reverse DNS {}, not {host}", ptrs.join(", ")),
                fix,
            ));
        } else {
            // Forward-confirmed: the PTR name resolves back to the address.
            let back = addresses(dns, &host).await.unwrap_or_default();
            if back.contains(ip) {
                out.push(Check::ok(format!(
                    "{ip} has forward-confirmed reverse DNS {host}"
                )));
            } else {
                out.push(Check::fail(
                    format!("{ip} -> {host} does not resolve back to {ip}"),
                    fix,
                ));
            }
        }
    }
    (out, addrs)
}

/// The checks of one domain.
pub async fn check_domain<D: Dns>(
    dns: &D,
    setup: &Setup,
    domain: &str,
    addrs: &[IpAddr],
) -> Vec<Check> {
    let host = lower(&setup.hostname);
    let domain = lower(domain);
    let mut out = Vec::new();

    // MX -> our host name.
    let mx: Result<Vec<String>, DnsError> = dns.query(&domain, QType::Mx).await.map(|r| {
        r.into_iter()
            .filter_map(|r| match r {
                Rr::Mx(m) => Some(lower(&m)),
                _ => None,
            })
            .collect()
    });
    let mx_fix = format!("publish `{domain}. IN MX 10 {host}.`");
    match mx {
        Ok(m) if m.contains(&host) => out.push(Check::ok(format!("MX of {domain} is {host}"))),
        Ok(m) if m.is_empty() => {
            out.push(Check::fail(format!("{domain} has no MX record"), mx_fix))
        }
        Ok(m) => out.push(Check::fail(
            format!("MX of {domain} is {}, not {host}", m.join(", ")),
            mx_fix,
        )),
        Err(DnsError::NotFound) => out.push(Check::fail(
            format!("{domain} does not exist in DNS"),
            mx_fix,
        )),
        Err(DnsError::Temporary(e)) => out.push(Check::fail(
            format!("cannot look up MX of {domain}: {e}"),
            mx_fix,
        )),
    }

    // SPF: would our addresses pass?
    let spf_fix = format!("publish `{domain}. IN TXT \"v=spf1 a:{host} -all\"`");
    for ip in addrs {
        let o = spf::check_domain(dns, &domain, *ip, &host).await;
        match o.result {
            spf::SpfResult::Pass => out.push(Check::ok(format!("SPF of {domain} allows {ip}"))),
            spf::SpfResult::None => {
                out.push(Check::fail(format!("{domain} has no SPF record"), spf_fix.clone()))
            }
            r => out.push(Check::fail(
                format!("SPF of {domain} gives {} for {ip} ({})", r.name(), o.reason),
                format!(
                    "add `a:{host}` (or `ip{}:{ip}`) before the final `all` of the SPF record, e.g. {spf_fix}",
                    if ip.is_ipv4() { 4 } else { 6 }
                ),
            )),
        }
    }

    // DMARC.
    let dmarc_fix = format!(
        "publish `_dmarc.{domain}. IN TXT \"{}\"`",
        dmarc::suggested_record(&domain)
    );
    let org = dmarc::organizational_domain(dns, &domain)
        .await
        .unwrap_or_else(|_| domain.clone());
    let mut rec = dmarc::lookup(dns, &domain).await;
    if matches!(rec, Ok(None)) && org != domain {
        rec = dmarc::lookup(dns, &org).await;
    }
    match rec {
        Ok(Some(r)) => out.push(Check::ok(format!(
            "DMARC record for {domain} (p={})",
            r.policy.name()
        ))),
        Ok(None) => out.push(Check::fail(
            format!("{domain} has no DMARC record"),
            dmarc_fix,
        )),
        Err(e) => out.push(Check::fail(
            format!("cannot look up DMARC of {domain}: {e}"),
            dmarc_fix,
        )),
    }

    // DKIM: each key's record published and matching.
    if setup.dkim.is_empty() {
        out.push(Check::fail(
            "no DKIM keys: outbound mail is not signed".into(),
            "run `pimail dkim generate` and publish the records it prints".into(),
        ));
    }
    for (selector, ours) in &setup.dkim {
        let name = dkim::record_name(selector, &domain);
        let fix = format!("publish `{name}. IN TXT {}`", dkim::txt_strings(ours));
        let want = dkim::parse_key_record(ours).ok();
        match dns.txt(&name).await {
            Ok(txts) if txts.is_empty() => {
                out.push(Check::fail(format!("no DKIM record at {name}"), fix))
            }
            Ok(txts) => {
                let matches = txts.iter().any(|t| {
                    dkim::parse_key_record(t)
                        .ok()
                        .is_some_and(|k| Some(&k) == want.as_ref())
                });
                if matches {
                    out.push(Check::ok(format!("DKIM record {name} matches our key")));
                } else {
                    out.push(Check::fail(
                        format!("DKIM record {name} does not match our key"),
                        format!("replace it: {fix}"),
                    ));
                }
            }
            Err(DnsError::NotFound) => {
                out.push(Check::fail(format!("no DKIM record at {name}"), fix))
            }
            Err(DnsError::Temporary(e)) => {
                out.push(Check::fail(format!("cannot look up {name}: {e}"), fix))
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// TLS certificate: validity and names, from the PEM chain's first
// certificate, with a minimal DER reader (no X.509 crate for two fields).

/// What the checks need from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names of the subjectAltName extension, lower-cased.
    pub names: Vec<String>,
    /// Issuer and subject are the same name: nobody vouches for it, so
    /// mail clients warn or refuse, and some servers count it as no TLS.
    pub self_signed: bool,
}

/// Parses the first certificate of a PEM file.
pub fn parse_cert_pem(pem: &str) -> Option<CertInfo> {
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let (_, der) = dkim::pem_decode(&pem[start..])?;
    parse_cert_der(&der)
}

fn parse_cert_der(der: &[u8]) -> Option<CertInfo> {
    use dkim::der_read;
    let (_, cert, _) = der_read(der)?;
    let (_, tbs, _) = der_read(cert)?;
    let mut rest = tbs;
    // [0] version is optional.
    if rest.first() == Some(&0xa0) {
        rest = der_read(rest)?.2;
    }
    let (_, _serial, r) = der_read(rest)?;
    let (_, _sigalg, r) = der_read(r)?;
    let (_, issuer, r) = der_read(r)?;
    let (_, validity, r) = der_read(r)?;
    let (t1, nb, vr) = der_read(validity)?;
    let (t2, na, _) = der_read(vr)?;
    let not_before = parse_time(t1, nb)?;
    let not_after = parse_time(t2, na)?;
    let (_, subject, r) = der_read(r)?;
    let (_, _spki, mut r) = der_read(r)?;
    let mut names = Vec::new();
    while !r.is_empty() {
        let (tag, content, next) = der_read(r)?;
        r = next;
        if tag != 0xa3 {
            continue;
        }
        let (_, mut exts, _) = der_read(content)?;
        while !exts.is_empty() {
            let (_, ext, next) = der_read(exts)?;
            exts = next;
            let (_, oid, mut e) = der_read(ext)?;
            if oid != [0x55, 0x1d, 0x11] {
                continue;
            }
            if e.first() == Some(&0x01) {
                e = der_read(e)?.2; // critical flag
            }
            let (_, octets, _) = der_read(e)?;
            let (_, mut gns, _) = der_read(octets)?;
            while !gns.is_empty() {
                let (t, v, next) = der_read(gns)?;
                gns = next;
                if t == 0x82 {
                    names.push(String::from_utf8_lossy(v).to_ascii_lowercase());
                }
            }
        }
    }
    Some(CertInfo {
        not_before,
        not_after,
        names,
        self_signed: issuer == subject,
    })
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) to Unix time.
fn parse_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (mo, d, h, mi, se) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    // Days from civil (H. Hinnant), the inverse of timefmt::civil.
    let y = if mo <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86400 + h * 3600 + mi * 60 + se)
}

fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        // A wildcard covers exactly one label (RFC 6125 6.4.3).
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// Checks a certificate for `host` at time `now`.
pub fn check_cert(info: &CertInfo, host: &str, now: i64, file: &str) -> Vec<Check> {
    let host = lower(host);
    let mut out = Vec::new();
    let renew = format!(
        "renew the certificate {file} (e.g. `certbot renew`), then `systemctl reload pimail`"
    );
    if now > info.not_after {
        out.push(Check::fail(
            format!(
                "TLS certificate expired {} days ago",
                (now - info.not_after) / 86400
            ),
            renew,
        ));
    } else if now < info.not_before {
        out.push(Check::fail(
            "TLS certificate is not valid yet (check the clock)".into(),
            renew,
        ));
    } else if info.not_after - now < 14 * 86400 {
        out.push(Check::warn(
            format!(
                "TLS certificate expires in {} days",
                (info.not_after - now) / 86400
            ),
            renew,
        ));
    } else {
        out.push(Check::ok(format!(
            "TLS certificate valid for {} more days",
            (info.not_after - now) / 86400
        )));
    }
    if info.self_signed {
        out.push(Check::warn(
            "TLS certificate is self-signed: mail clients warn about it or refuse it".into(),
            format!("get one from Let's Encrypt: `certbot certonly --standalone -d {host}` (docs/INSTALL.md step 7)"),
        ));
    }
    if info.names.iter().any(|n| name_matches(n, &host)) {
        out.push(Check::ok(format!("TLS certificate names {host}")));
    } else {
        out.push(Check::fail(
            format!(
                "TLS certificate is for {}, not {host}",
                if info.names.is_empty() {
                    "no DNS names".to_string()
                } else {
                    info.names.join(", ")
                }
            ),
            format!(
                "get a certificate for {host} (e.g. `certbot certonly --standalone -d {host}`)"
            ),
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// The driver: real DNS, files and sockets.

/// Providers whose MX `doctor` connects to, to see whether port 25 is open
/// outbound (the first that resolves is used).
pub const PORT25_PROBE_DOMAINS: &[&str] = &["gmail.com", "outlook.com"];

/// Reads one SMTP greeting line from `addr` within `limit`.
async fn greeting(
    addr: std::net::SocketAddr,
    limit: std::time::Duration,
) -> Result<String, String> {
    use smol::io::AsyncReadExt;
    let fut = async {
        let mut s = async_net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 512];
        let mut got = Vec::new();
        while !got.contains(&b'\n') && got.len() < 4096 {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok::<String, String>(
            String::from_utf8_lossy(&got)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        )
    };
    crate::util::rt::timeout(limit, fut)
        .await
        .unwrap_or_else(|| Err(format!("no answer within {}s", limit.as_secs())))
}

/// Whether outbound port 25 works: a greeting from a large provider's MX.
pub async fn check_port25<D: Dns>(dns: &D, port: u16) -> Check {
    let mut target = None;
    for d in PORT25_PROBE_DOMAINS {
        if let Ok(mx) = dns.query(d, QType::Mx).await {
            if let Some(Rr::Mx(host)) = mx.into_iter().next() {
                if let Ok(Some(ip)) = addresses(dns, &host)
                    .await
                    .map(|a| a.into_iter().find(IpAddr::is_ipv4))
                {
                    target = Some((host, ip));
                    break;
                }
            }
        }
    }
    let Some((host, ip)) = target else {
        return Check::warn(
            "cannot test outbound port 25: no MX address found for gmail.com or outlook.com".into(),
            "check the DNS servers (outbound.dns or /etc/resolv.conf)".into(),
        );
    };
    let addr = std::net::SocketAddr::new(ip, port);
    match greeting(addr, std::time::Duration::from_secs(10)).await {
        Ok(g) if g.starts_with("220") => Check::ok(format!("outbound port {port} open ({host} [{ip}] greets)")),
        Ok(g) => Check::fail(
            format!("{host} [{ip}]:{port} answered {g:?} instead of a 220 greeting"),
            "outbound port 25 may be filtered; send through a relay: set outbound.relay".into(),
        ),
        Err(e) => Check::fail(
            format!("cannot reach {host} [{ip}] on port {port}: {e}; outbound port 25 seems blocked"),
            "ask the ISP to unblock port 25, or send through a relay: set outbound.relay, relay_user, relay_password_file".into(),
        ),
    }
}

/// Whether our SMTP port answers at `probe` (host:port as seen from
/// outside, e.g. the router's public address).
pub async fn check_inbound(probe: std::net::SocketAddr, hostname: &str) -> Check {
    match greeting(probe, std::time::Duration::from_secs(10)).await {
        Ok(g) if g.starts_with("220") && g.to_ascii_lowercase().contains(&lower(hostname)) => {
            Check::ok(format!("inbound: {probe} answers with our greeting"))
        }
        Ok(g) => Check::fail(
            format!("inbound: {probe} answers {g:?}, not pimail's greeting for {hostname}"),
            format!(
                "forward TCP port {} on the router to this machine's SMTP listener",
                probe.port()
            ),
        ),
        Err(e) => Check::fail(
            format!("inbound: cannot connect to {probe}: {e}"),
            format!(
                "open/forward TCP port {} to this machine (listen.smtp)",
                probe.port()
            ),
        ),
    }
}

/// The try-it default (or a config still naming `localhost`): nothing in
/// the public DNS can point at it.
fn is_try_it(config: &crate::config::Config) -> bool {
    let local = |n: &str| {
        let n = lower(n);
        n == "localhost" || n.ends_with(".localhost")
    };
    config.source == crate::config::Source::Embedded
        || local(&config.hostname)
        || (!config.domains.is_empty() && config.domains.iter().all(|d| local(d)))
}

/// `None` when the resolver answers; else the check that says it is
/// broken. Names that certainly exist (the big providers' domains) are
/// asked for their MX: a resolver that says they do not exist lies
/// (NXDOMAIN for everything: a captive portal, a broken forwarder), and
/// one that never answers is not there.
pub async fn check_resolver<D: Dns>(dns: &D) -> Option<Check> {
    let mut nx = 0;
    let mut last = String::new();
    for d in PORT25_PROBE_DOMAINS {
        match dns.query(d, QType::Mx).await {
            Ok(_) => return None,
            Err(DnsError::NotFound) => nx += 1,
            Err(DnsError::Temporary(e)) => last = e,
        }
    }
    let fix = "fix the nameservers in /etc/resolv.conf (or [outbound] dns), e.g. `dig MX gmail.com` must answer; \
               until then no record can be checked and no mail can be sent"
        .to_string();
    Some(if nx == PORT25_PROBE_DOMAINS.len() {
        Check::fail(
            format!(
                "DNS resolution is broken: the resolver says {} do not exist",
                PORT25_PROBE_DOMAINS.join(" and ")
            ),
            fix,
        )
    } else {
        Check::fail(
            format!("DNS resolution is broken: no nameserver answers ({last})"),
            fix,
        )
    })
}

/// Each configured blocklist through the configured resolver: its test
/// entries answer as RFC 5782 5 says, or the fix (a local resolver).
async fn dnsbl_checks<D: Dns>(
    dns: &D,
    zones: &[String],
    servers: &[std::net::SocketAddr],
) -> Vec<Check> {
    let via = if servers.is_empty() {
        "the nameservers of /etc/resolv.conf".to_string()
    } else {
        format!("[outbound] dns = {servers:?}")
    };
    let mut out = Vec::new();
    for z in zones {
        out.push(match crate::trust::dnsbl::self_test(dns, z).await {
            Ok(code) => Check::ok(format!(
                "DNS blocklist {z} answers (test entry 127.0.0.2 listed as {code}, 127.0.0.1 not)"
            )),
            Err(e) => Check::fail(
                format!("DNS blocklist: {e} (asked through {via}); it is ignored until fixed"),
                "run a local recursive resolver (on the Pi: `apt install unbound`, then \
                 `nameserver 127.0.0.1` in /etc/resolv.conf or [outbound] dns = [\"127.0.0.1:53\"]), \
                 or remove the list from [inbound] dnsbl"
                    .into(),
            ),
        });
    }
    out
}

/// The address families, the route and the cached MTA-STS policies from
/// `<data_dir>/outbound.status` (written by the delivery worker).
fn outbound_status(data_dir: &std::path::Path) -> Vec<Check> {
    let lines = crate::store::status::read(data_dir);
    if lines.is_empty() {
        return vec![Check::ok(
            "not known yet: the server writes its choices when it runs".into(),
        )];
    }
    let mut out: Vec<Check> = lines
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "family" => Check::ok(format!("address family: {v}")),
            "route" => Check::ok(format!("route: {v}")),
            "mta-sts" => Check::ok(format!("MTA-STS policy cached: {v}")),
            _ => Check::ok(format!("{k}: {v}")),
        })
        .collect();
    if !out.iter().any(|c| c.what.starts_with("MTA-STS")) {
        out.push(Check::ok("MTA-STS: no policy cached".into()));
    }
    out
}

/// The whole `pimail doctor` report: the text to print and whether
/// everything needed is there.
pub async fn run(
    config: &crate::config::Config,
    probe: Option<std::net::SocketAddr>,
    now: i64,
) -> (String, bool) {
    let dns = crate::net::dns::Resolver::new(&config.outbound.dns);
    let keys = crate::trust::dkim::load_keys(&crate::trust::dkim::key_dir(&config.data_dir));
    let mut sections: Vec<(String, Vec<Check>)> = Vec::new();
    let dkim = match &keys {
        Ok(k) => k
            .iter()
            .map(|k| (k.selector.clone(), k.dns_record()))
            .collect(),
        Err(e) => {
            sections.push((
                "DKIM keys".into(),
                vec![Check::fail(
                    e.to_string(),
                    "fix or remove the file, then `pimail dkim records`".into(),
                )],
            ));
            Vec::new()
        }
    };
    let setup = Setup {
        hostname: config.hostname.clone(),
        domains: config.domains.clone(),
        dkim,
    };
    // Record advice only makes sense for a name on the Internet, and only
    // when the resolver works: with a broken one every lookup "fails" and
    // the advice to publish records that exist would mislead.
    let dns_ok = if is_try_it(config) {
        sections.push((
            "DNS records".into(),
            vec![Check::warn(
                format!(
                    "hostname {:?} is the try-it default: there are no DNS records to check",
                    setup.hostname
                ),
                "write /etc/pimail/pimail.toml with your hostname and domains (docs/INSTALL.md), then run `pimail doctor` again".into(),
            )],
        ));
        false
    } else {
        match check_resolver(&dns).await {
            Some(broken) => {
                sections.push(("DNS resolution".into(), vec![broken]));
                false
            }
            None => {
                let (host_checks, addrs) = check_host(&dns, &setup).await;
                sections.push((format!("Host {}", lower(&setup.hostname)), host_checks));
                for d in &setup.domains {
                    sections.push((
                        format!("Domain {d}"),
                        check_domain(&dns, &setup, d, &addrs).await,
                    ));
                }
                true
            }
        }
    };
    let tls = match &config.tls {
        None => vec![Check::warn(
            "no TLS certificate configured: mail to and from this server travels unencrypted"
                .into(),
            format!(
                "get one (e.g. `certbot certonly --standalone -d {}`) and set [tls] cert and key",
                setup.hostname
            ),
        )],
        Some(t) => {
            let file = t.cert.display().to_string();
            match std::fs::read_to_string(&t.cert) {
                Err(e) => vec![Check::fail(
                    format!("cannot read {file}: {e}"),
                    "check [tls] cert".into(),
                )],
                Ok(pem) => match parse_cert_pem(&pem) {
                    None => vec![Check::fail(
                        format!("{file} holds no certificate pimail can read"),
                        "check [tls] cert".into(),
                    )],
                    Some(info) => check_cert(&info, &setup.hostname, now, &file),
                },
            }
        }
    };
    sections.push(("TLS".into(), tls));
    let mut net = Vec::new();
    if config.outbound.relay.is_some() {
        net.push(Check::ok(
            "outbound mail goes through the relay (port 25 not needed)".into(),
        ));
    } else if dns_ok {
        net.push(check_port25(&dns, config.outbound.mx_port).await);
    }
    if let Some(p) = probe {
        net.push(check_inbound(p, &setup.hostname).await);
    }
    sections.push(("Network".into(), net));
    let lists = dnsbl_checks(&dns, &config.inbound.dnsbl, &config.outbound.dns).await;
    if !lists.is_empty() {
        sections.push(("DNS blocklists ([inbound] dnsbl)".into(), lists));
    }
    sections.push((
        "Outbound (as the running server chose)".into(),
        outbound_status(&config.data_dir),
    ));

    let mut text = String::new();
    let mut problems = 0;
    for (title, checks) in &sections {
        text.push_str(&format!("{title}\n"));
        for c in checks {
            problems += usize::from(c.level == Level::Fail);
            text.push_str(&format!("  {}\n", c.to_string().replace('\n', "\n  ")));
        }
        text.push('\n');
    }
    if problems == 0 {
        text.push_str("All good: nothing needed is missing.\n");
    } else {
        text.push_str(&format!(
            "{problems} problem(s) to fix; see the fix lines above.\n"
        ));
    }
    (text, problems == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Zone(HashMap<String, Vec<Rr>>);

    impl Zone {
        fn add(mut self, name: &str, rr: Rr) -> Zone {
            self.0.entry(name.to_string()).or_default().push(rr);
            self
        }
        fn txt(self, name: &str, t: &str) -> Zone {
            self.add(name, Rr::Txt(t.as_bytes().to_vec()))
        }
    }

    impl Dns for Zone {
        async fn query(&self, name: &str, qtype: QType) -> Result<Vec<Rr>, DnsError> {
            let recs = self.0.get(name).ok_or(DnsError::NotFound)?;
            Ok(recs.iter().filter(|r| r.is_type(qtype)).cloned().collect())
        }
    }

    const KEY: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn good() -> Zone {
        Zone::default()
            .add("example.org", Rr::Mx("mail.example.org".into()))
            .add("mail.example.org", Rr::A("192.0.2.10".parse().unwrap()))
            .add(
                "10.2.0.192.in-addr.arpa",
                Rr::Ptr("mail.example.org.".into()),
            )
            .txt("example.org", "v=spf1 a:mail.example.org -all")
            .txt("_dmarc.example.org", "v=DMARC1; p=quarantine")
            .txt("s1._domainkey.example.org", KEY)
    }

    fn setup() -> Setup {
        Setup {
            hostname: "mail.example.org".into(),
            domains: vec!["example.org".into()],
            dkim: vec![("s1".into(), KEY.into())],
        }
    }

    fn run(z: &Zone) -> Vec<Check> {
        let s = setup();
        smol::block_on(async {
            let (mut out, addrs) = check_host(z, &s).await;
            out.extend(check_domain(z, &s, "example.org", &addrs).await);
            out
        })
    }

    fn failures(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.level == Level::Fail)
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn good_setup_is_all_ok() {
        let checks = run(&good());
        assert!(failures(&checks).is_empty(), "{checks:#?}");
        assert_eq!(checks.len(), 6, "{checks:#?}");
    }

    #[test]
    fn each_wrong_record_is_named_with_its_fix() {
        let cases: Vec<(Zone, &str, &str)> = vec![
            (
                {
                    let mut z = good();
                    z.0.get_mut("example.org").unwrap().retain(|r| !matches!(r, Rr::Txt(_)));
                    z
                },
                "has no SPF record",
                "`example.org. IN TXT \"v=spf1 a:mail.example.org -all\"`",
            ),
            (
                {
                    let mut z = good();
                    z.0.get_mut("example.org").unwrap().retain(|r| !matches!(r, Rr::Txt(_)));
                    z.txt("example.org", "v=spf1 ip4:203.0.113.1 -all")
                },
                "SPF of example.org gives fail for 192.0.2.10",
                "add `a:mail.example.org`",
            ),
            (
                {
                    let mut z = good();
                    z.0.remove("10.2.0.192.in-addr.arpa");
                    z
                },
                "192.0.2.10 has no reverse DNS (PTR)",
                "set its reverse DNS (PTR) to mail.example.org",
            ),
            (
                {
                    let mut z = good();
                    z.0.remove("s1._domainkey.example.org");
                    z.txt("s1._domainkey.example.org", "v=DKIM1; k=ed25519; p=AAAAC3NzaC1lZDI1NTE5AAAAIGMK")
                },
                "DKIM record s1._domainkey.example.org does not match our key",
                KEY,
            ),
            (
                {
                    let mut z = good();
                    z.0.remove("_dmarc.example.org");
                    z
                },
                "example.org has no DMARC record",
                "`_dmarc.example.org. IN TXT \"v=DMARC1; p=none; rua=mailto:postmaster@example.org\"`",
            ),
            (
                {
                    let mut z = good();
                    z.0.get_mut("example.org").unwrap().retain(|r| !matches!(r, Rr::Mx(_)));
                    z.add("example.org", Rr::Mx("mx.elsewhere.example".into()))
                },
                "MX of example.org is mx.elsewhere.example, not mail.example.org",
                "`example.org. IN MX 10 mail.example.org.`",
            ),
        ];
        for (zone, problem, fix) in cases {
            let f = failures(&run(&zone));
            assert_eq!(f.len(), 1, "{problem}: {f:#?}");
            assert!(
                f[0].contains(problem) && f[0].contains(fix),
                "{problem}: {}",
                f[0]
            );
        }
    }

    #[test]
    fn no_dkim_keys_is_a_failure_with_the_command_to_run() {
        let mut s = setup();
        s.dkim.clear();
        let z = good();
        let checks = smol::block_on(check_domain(&z, &s, "example.org", &[]));
        let f = failures(&checks);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].contains("no DKIM keys") && f[0].contains("pimail dkim generate"),
            "{}",
            f[0]
        );
    }

    #[test]
    fn certificate_dates_and_names() {
        let parsed = parse_cert_pem(include_str!("../../tests/data/doctor-cert.pem")).unwrap();
        // The test certificate signs itself: a warning, not "[ok]".
        assert!(parsed.self_signed);
        let warned = check_cert(&parsed, "mail.example.org", 1_800_000_000, "cert.pem");
        assert!(warned
            .iter()
            .any(|c| c.level == Level::Warn && c.what.contains("self-signed")));
        let info = CertInfo {
            self_signed: false,
            ..parsed
        };
        assert_eq!(info.not_before, 1_795_577_147);
        assert_eq!(info.not_after, 2_110_937_147);
        assert_eq!(info.names, ["mail.example.org", "*.example.net"]);
        let now = 1_800_000_000;
        let f = |host: &str, now: i64| {
            check_cert(&info, host, now, "cert.pem")
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let ok = f("mail.example.org", now);
        assert!(!ok.contains("FAIL") && !ok.contains("warn"), "{ok}");
        assert!(!f("mx.example.net", now).contains("FAIL"));
        assert!(f("a.b.example.net", now).contains(
            "[FAIL] TLS certificate is for mail.example.org, *.example.net, not a.b.example.net"
        ));
        let expired = f("mail.example.org", 2_110_937_147 + 3 * 86400);
        assert!(
            expired.contains("[FAIL] TLS certificate expired 3 days ago")
                && expired.contains("certbot renew"),
            "{expired}"
        );
        assert!(f("mail.example.org", 2_110_937_147 - 86400 * 5)
            .contains("[warn] TLS certificate expires in 5 days"));
    }
}
