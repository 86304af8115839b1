//! pimail's own stub resolver: MX, A and AAAA lookups for outbound
//! delivery, on hickory-proto's message encoding and a small UDP/TCP
//! exchange (RFC 1035 4.2, RFC 7766 for the TCP retry of truncated
//! answers).
//!
//! The nameservers come from `outbound.dns` or `/etc/resolv.conf`; each is
//! asked in turn, with a timeout, and a truncated UDP answer is asked again
//! over TCP. What callers branch on is in [`DnsError`]: NXDOMAIN is
//! permanent (the domain does not exist), SERVFAIL, refusals and timeouts
//! are temporary (try again later, RFC 5321 5.1).
//!
//! The decisions are pure functions ([`build_query`], [`parse_answer`],
//! [`follow`], [`mx_hosts`]) tested without a network; [`Resolver`] only
//! moves bytes.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN): permanent.
    NoSuchDomain(String),
    /// SERVFAIL, REFUSED, timeouts, garbled answers: temporary.
    Temporary(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NoSuchDomain(n) => write!(f, "domain {n} does not exist (NXDOMAIN)"),
            DnsError::Temporary(s) => write!(f, "DNS lookup failed: {s}"),
        }
    }
}

impl std::error::Error for DnsError {}

/// How long to wait for one answer from one server. Several servers and
/// two rounds keep the whole lookup within about half a minute.
const QUERY_TIMEOUT: Duration = Duration::from_secs(4);
const ROUNDS: usize = 2;
/// The UDP payload we advertise (EDNS0, RFC 6891); the DNS flag day 2020
/// value that avoids IP fragmentation.
const UDP_PAYLOAD: u16 = 1232;
/// CNAME chains longer than this are a loop or an attack.
const MAX_CNAMES: usize = 8;

/// A query's wire form.
pub fn build_query(id: u16, name: &Name, rtype: RecordType) -> Result<Vec<u8>, DnsError> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    m.set_edns(edns);
    m.to_vec()
        .map_err(|e| DnsError::Temporary(format!("cannot encode query: {e}")))
}

/// What one answer says.
#[derive(Debug)]
pub enum Answer {
    /// TC bit set: ask again over TCP.
    Truncated,
    /// NOERROR: the answer section (possibly empty: no such record type).
    Records(Vec<Record>),
}

/// Checks an answer against our query (id, question) and classifies it.
pub fn parse_answer(
    bytes: &[u8],
    id: u16,
    name: &Name,
    rtype: RecordType,
) -> Result<Answer, DnsError> {
    let m = Message::from_vec(bytes)
        .map_err(|e| DnsError::Temporary(format!("garbled answer: {e}")))?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return Err(DnsError::Temporary(
            "answer does not match the query".into(),
        ));
    }
    if let Some(q) = m.queries.first() {
        if q.query_type() != rtype || q.name() != name {
            return Err(DnsError::Temporary("answer is for another question".into()));
        }
    }
    if m.metadata.truncation {
        return Ok(Answer::Truncated);
    }
    match m.metadata.response_code {
        ResponseCode::NoError => Ok(Answer::Records(m.answers)),
        ResponseCode::NXDomain => Err(DnsError::NoSuchDomain(name.to_ascii())),
        other => Err(DnsError::Temporary(format!("{name}: server said {other}"))),
    }
}

/// Follows CNAMEs from `name` through `records`; returns the final name
/// and the records of type `rtype` found for it (empty: the chain leaves
/// the answer, ask again for the final name).
pub fn follow(records: &[Record], name: &Name, rtype: RecordType) -> (Name, Vec<RData>) {
    let mut current = name.clone();
    for _ in 0..=MAX_CNAMES {
        let here: Vec<&Record> = records.iter().filter(|r| r.name == current).collect();
        let found: Vec<RData> = here
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r| r.data.clone())
            .collect();
        if !found.is_empty() {
            return (current, found);
        }
        match here.iter().find_map(|r| match &r.data {
            RData::CNAME(c) => Some(c.0.clone()),
            _ => None,
        }) {
            Some(next) => current = next,
            None => break,
        }
    }
    (current, Vec::new())
}

/// Where mail for a domain goes, as the MX records say (RFC 5321 5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mx {
    /// Host names, best preference first, each group of equal preference
    /// shuffled.
    Hosts(Vec<String>),
    /// No MX records: the domain itself is the host (implicit MX).
    Implicit,
    /// RFC 7505 null MX ("0 ."): the domain accepts no mail.
    Null,
}

/// Orders MX records: by preference, random among equal preference
/// (`random` picks an index below its argument).
pub fn mx_hosts(records: &[(u16, String)], mut random: impl FnMut(usize) -> usize) -> Mx {
    if records.is_empty() {
        return Mx::Implicit;
    }
    if records.iter().any(|(_, h)| h.is_empty() || h == ".") {
        return Mx::Null;
    }
    let mut v = records.to_vec();
    v.sort_by_key(|(p, _)| *p);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let j = v[i..].iter().take_while(|(p, _)| *p == v[i].0).count() + i;
        let mut group: Vec<String> = v[i..j].iter().map(|(_, h)| h.clone()).collect();
        // Fisher-Yates.
        for k in (1..group.len()).rev() {
            group.swap(k, random(k + 1));
        }
        for h in group {
            if !out.contains(&h) {
                out.push(h);
            }
        }
        i = j;
    }
    Mx::Hosts(out)
}

/// A random index below `n`, for shuffling equal-preference MX hosts.
pub fn random_below(n: usize) -> usize {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    (u32::from_le_bytes(b) as usize) % n.max(1)
}

/// `nameserver` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "nameserver").then_some(())?;
            // "fe80::1%eth0": the zone is not for us.
            let ip: IpAddr = it.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

fn name_of(s: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_ascii(s).map_err(|e| DnsError::NoSuchDomain(format!("{s} ({e})")))?;
    n.set_fqdn(true);
    Ok(n)
}

/// The resolver: nameservers and the async exchange.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

impl Resolver {
    /// From `outbound.dns`, else `/etc/resolv.conf`, else the local host.
    pub fn new(configured: &[SocketAddr]) -> Resolver {
        let mut servers = configured.to_vec();
        if servers.is_empty() {
            servers = std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| parse_resolv_conf(&t))
                .unwrap_or_default();
        }
        if servers.is_empty() {
            servers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        Resolver {
            servers,
            timeout: QUERY_TIMEOUT,
        }
    }

    /// One question, asked of each server in turn until one answers.
    pub async fn query(&self, name: &Name, rtype: RecordType) -> Result<Vec<Record>, DnsError> {
        let mut last = DnsError::Temporary("no nameserver".into());
        for _ in 0..ROUNDS {
            for server in &self.servers {
                match self.ask(*server, name, rtype).await {
                    Ok(r) => return Ok(r),
                    Err(e @ DnsError::NoSuchDomain(_)) => return Err(e),
                    Err(e) => {
                        log::debug!("dns {server}: {name} {rtype}: {e}");
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Vec<Record>, DnsError> {
        let id = random_below(65536) as u16;
        let q = build_query(id, name, rtype)?;
        let answer = crate::util::rt::timeout(self.timeout, udp(server, &q))
            .await
            .ok_or_else(|| DnsError::Temporary(format!("{server}: timeout")))?
            .map_err(|e| DnsError::Temporary(format!("{server}: {e}")))?;
        match parse_answer(&answer, id, name, rtype)? {
            Answer::Records(r) => Ok(r),
            Answer::Truncated => {
                log::debug!("dns {server}: {name} {rtype}: truncated, asking over TCP");
                let answer = crate::util::rt::timeout(self.timeout, tcp(server, &q))
                    .await
                    .ok_or_else(|| DnsError::Temporary(format!("{server}: TCP timeout")))?
                    .map_err(|e| DnsError::Temporary(format!("{server} over TCP: {e}")))?;
                match parse_answer(&answer, id, name, rtype)? {
                    Answer::Records(r) => Ok(r),
                    Answer::Truncated => Err(DnsError::Temporary("truncated over TCP".into())),
                }
            }
        }
    }

    /// Records of `rtype` for `name`, following CNAMEs (also across
    /// queries, when a server gives only the alias).
    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, DnsError> {
        let mut current = name_of(name)?;
        for _ in 0..MAX_CNAMES {
            let records = self.query(&current, rtype).await?;
            let (last, found) = follow(&records, &current, rtype);
            if !found.is_empty() || last == current {
                return Ok(found);
            }
            current = last;
        }
        Err(DnsError::Temporary(format!("{name}: CNAME chain too long")))
    }

    /// MX lookup for a mail domain.
    pub async fn mx(&self, domain: &str) -> Result<Mx, DnsError> {
        let rdata = self.lookup(domain, RecordType::MX).await?;
        let records: Vec<(u16, String)> = rdata
            .iter()
            .filter_map(|d| match d {
                RData::MX(mx) => {
                    let h = mx.exchange.to_ascii();
                    let h = h.strip_suffix('.').filter(|s| !s.is_empty()).unwrap_or(&h);
                    Some((mx.preference, h.to_ascii_lowercase()))
                }
                _ => None,
            })
            .collect();
        Ok(mx_hosts(&records, random_below))
    }

    /// A and AAAA of a host: IPv4 first. Home lines rarely have reverse
    /// DNS for IPv6, and big providers refuse IPv6 senders without it
    /// (a permanent 550), while IPv4 usually works; IPv6 is the fallback.
    pub async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let v4 = self.lookup(host, RecordType::A).await;
        let v6 = self.lookup(host, RecordType::AAAA).await;
        let mut out = Vec::new();
        if let Ok(r) = &v4 {
            out.extend(r.iter().filter_map(|d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            }));
        }
        if let Ok(r) = &v6 {
            out.extend(r.iter().filter_map(|d| match d {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
        if !out.is_empty() {
            return Ok(out);
        }
        // Nothing found: the more hopeful error wins (temporary over
        // NXDOMAIN), and "no address records" is NXDOMAIN-like.
        match (v4, v6) {
            (Err(e @ DnsError::Temporary(_)), _) | (_, Err(e @ DnsError::Temporary(_))) => Err(e),
            (Err(e), _) => Err(e),
            _ => Err(DnsError::NoSuchDomain(format!(
                "{host} has no A/AAAA records"
            ))),
        }
    }
}

async fn udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = async_net::UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from other sources.
    sock.connect(server).await?;
    sock.send(query).await?;
    // We advertise UDP_PAYLOAD (RFC 6891 6.2.5: the answer is no bigger);
    // a 64 KiB buffer zeroed per question was 2-3 % of the CPU of a
    // spam-checked server taking one message per connection (perf,
    // bench/spam.py). An answer cut short fails to parse: no answer.
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        // A stray or spoofed answer with another id: keep waiting.
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = async_net::TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut msg = len.to_be_bytes().to_vec();
    msg.extend_from_slice(query);
    s.write_all(&msg).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, CNAME, MX};

    fn n(s: &str) -> Name {
        name_of(s).unwrap()
    }

    fn answer(
        id: u16,
        q: &Name,
        rtype: RecordType,
        code: ResponseCode,
        tc: bool,
        recs: Vec<Record>,
    ) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.metadata.response_code = code;
        m.metadata.truncation = tc;
        m.add_query(Query::query(q.clone(), rtype));
        m.add_answers(recs);
        m.to_vec().unwrap()
    }

    #[test]
    fn answers_are_classified() {
        let q = n("example.com");
        let mx = Record::from_rdata(q.clone(), 60, RData::MX(MX::new(10, n("mx.example.com"))));
        let ok = answer(
            7,
            &q,
            RecordType::MX,
            ResponseCode::NoError,
            false,
            vec![mx],
        );
        assert!(
            matches!(parse_answer(&ok, 7, &q, RecordType::MX), Ok(Answer::Records(r)) if r.len() == 1)
        );
        assert!(
            matches!(
                parse_answer(&ok, 8, &q, RecordType::MX),
                Err(DnsError::Temporary(_))
            ),
            "wrong id"
        );
        assert!(
            matches!(
                parse_answer(&ok, 7, &q, RecordType::A),
                Err(DnsError::Temporary(_))
            ),
            "wrong question"
        );
        let tc = answer(7, &q, RecordType::MX, ResponseCode::NoError, true, vec![]);
        assert!(matches!(
            parse_answer(&tc, 7, &q, RecordType::MX),
            Ok(Answer::Truncated)
        ));
        let nx = answer(7, &q, RecordType::MX, ResponseCode::NXDomain, false, vec![]);
        assert!(matches!(
            parse_answer(&nx, 7, &q, RecordType::MX),
            Err(DnsError::NoSuchDomain(_))
        ));
        let sf = answer(7, &q, RecordType::MX, ResponseCode::ServFail, false, vec![]);
        assert!(matches!(
            parse_answer(&sf, 7, &q, RecordType::MX),
            Err(DnsError::Temporary(_))
        ));
        assert!(matches!(
            parse_answer(b"\x00\x07junk", 7, &q, RecordType::MX),
            Err(DnsError::Temporary(_))
        ));
        let built = build_query(9, &q, RecordType::MX).unwrap();
        let m = Message::from_vec(&built).unwrap();
        assert!(m.metadata.recursion_desired && m.metadata.id == 9);
    }

    #[test]
    fn cname_chains_are_followed() {
        let recs = vec![
            Record::from_rdata(
                n("www.example.com"),
                60,
                RData::CNAME(CNAME(n("a.example.net"))),
            ),
            Record::from_rdata(
                n("a.example.net"),
                60,
                RData::CNAME(CNAME(n("b.example.net"))),
            ),
            Record::from_rdata(n("b.example.net"), 60, RData::A(A::new(192, 0, 2, 1))),
        ];
        let (last, found) = follow(&recs, &n("www.example.com"), RecordType::A);
        assert_eq!(last, n("b.example.net"));
        assert_eq!(found, vec![RData::A(A::new(192, 0, 2, 1))]);
        let (last, found) = follow(&recs[..1], &n("www.example.com"), RecordType::A);
        assert_eq!((last, found.len()), (n("a.example.net"), 0));
        let looped = vec![
            Record::from_rdata(n("x.example"), 60, RData::CNAME(CNAME(n("y.example")))),
            Record::from_rdata(n("y.example"), 60, RData::CNAME(CNAME(n("x.example")))),
        ];
        assert!(follow(&looped, &n("x.example"), RecordType::A).1.is_empty());
    }

    #[test]
    fn mx_order_null_and_implicit() {
        let recs = vec![
            (20, "c.example".to_string()),
            (10, "a.example".to_string()),
            (10, "b.example".to_string()),
            (30, "d.example".to_string()),
        ];
        assert_eq!(
            mx_hosts(&recs, |_| 0),
            Mx::Hosts(vec![
                "b.example".into(),
                "a.example".into(),
                "c.example".into(),
                "d.example".into()
            ])
        );
        assert_eq!(
            mx_hosts(&recs, |k| k - 1),
            Mx::Hosts(vec![
                "a.example".into(),
                "b.example".into(),
                "c.example".into(),
                "d.example".into()
            ])
        );
        assert_eq!(mx_hosts(&[], |_| 0), Mx::Implicit);
        assert_eq!(mx_hosts(&[(0, ".".into())], |_| 0), Mx::Null);
        assert_eq!(mx_hosts(&[(0, "".into())], |_| 0), Mx::Null);
        // Both orders of an equal pair show up with a real random source.
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            if let Mx::Hosts(h) = mx_hosts(&recs, random_below) {
                firsts.insert(h[0].clone());
            }
        }
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn resolv_conf() {
        let t = "# c\nsearch lan\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver bogus\noptions x\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
