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
//! UDP questions to one nameserver share one socket, kept open (see
//! [`Pending`] for how answers find their question and why that stays as
//! hard to spoof as a socket per question, RFC 5452): binding, registering
//! and closing a socket per question was most of the CPU a spam-checked
//! connection cost (bench/spam.py, issue 17).
//!
//! The decisions are pure functions ([`build_query`], [`parse_answer`],
//! [`follow`], [`mx_hosts`], [`Pending`]) tested without a network;
//! [`Resolver`] only moves bytes.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

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

/// The questions in flight on one shared socket, by id (sans-I/O).
///
/// Spoofing (RFC 5452): an answer is taken only by the question whose
/// random 16-bit id (from the OS random source, never reused while in
/// flight) *and* question (name and type, RFC 5452 9.1) it carries; the
/// socket is connected, so the kernel drops datagrams from any other
/// address or port than the nameserver's; and it is bound to a random
/// ephemeral port (Linux picks UDP ephemeral ports at random). A kept
/// socket keeps its port, so it is replaced after [`SOCKET_QUESTIONS`]
/// questions or [`SOCKET_AGE`], whichever comes first: an attacker who
/// learned the port has it for a minute at most, and still has to guess
/// the id of a question in flight. A wrong answer is dropped and the
/// question keeps waiting for the right one (RFC 5452 9.1), as before.
#[derive(Debug, Default)]
pub struct Pending {
    slots: HashMap<u16, Slot>,
}

#[derive(Debug)]
struct Slot {
    name: Name,
    rtype: RecordType,
    answer: Option<Vec<u8>>,
    waker: Option<Waker>,
}

impl Pending {
    /// Registers a question under a fresh id (`random` gives 16 random
    /// bits; ids in flight are not reused). `None`: 64 tries all hit ids
    /// in flight (cannot happen below thousands of questions in flight).
    pub fn add(
        &mut self,
        name: &Name,
        rtype: RecordType,
        mut random: impl FnMut() -> u16,
    ) -> Option<u16> {
        for _ in 0..64 {
            let id = random();
            if let std::collections::hash_map::Entry::Vacant(v) = self.slots.entry(id) {
                v.insert(Slot {
                    name: name.clone(),
                    rtype,
                    answer: None,
                    waker: None,
                });
                return Some(id);
            }
        }
        None
    }

    /// A datagram came: gives it to the question it answers, if any
    /// (matching id, a response, the same question), and returns that
    /// question's id and waker. Anything else is ignored.
    pub fn deliver(&mut self, bytes: &[u8]) -> Option<(u16, Option<Waker>)> {
        if bytes.len() < 12 {
            return None;
        }
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let slot = self.slots.get_mut(&id)?;
        if slot.answer.is_some() {
            return None;
        }
        let m = Message::from_vec(bytes).ok()?;
        let q = m.queries.first()?;
        if m.metadata.message_type != MessageType::Response
            || q.query_type() != slot.rtype
            || q.name() != &slot.name
        {
            return None;
        }
        slot.answer = Some(bytes.to_vec());
        Some((id, slot.waker.take()))
    }

    /// The answer to `id`, if it came; else remembers `waker`.
    pub fn take(&mut self, id: u16, waker: &Waker) -> Option<Vec<u8>> {
        let slot = self.slots.get_mut(&id)?;
        match slot.answer.take() {
            Some(a) => Some(a),
            None => {
                slot.waker = Some(waker.clone());
                None
            }
        }
    }

    /// The question is done (answered, timed out or dropped).
    pub fn remove(&mut self, id: u16) {
        self.slots.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// A kept socket is replaced after this many questions ...
const SOCKET_QUESTIONS: u32 = 1000;
/// ... or this long, to give the source port back its randomness.
const SOCKET_AGE: Duration = Duration::from_secs(60);

/// One connected UDP socket to one nameserver and its questions.
struct Channel {
    sock: async_net::UdpSocket,
    born: Instant,
    /// Questions given this socket; changed under the map's lock.
    asked: std::sync::atomic::AtomicU32,
    pending: Mutex<Pending>,
}

/// The open sockets of a resolver, by nameserver; clones share them.
#[derive(Default, Clone)]
struct Channels(Arc<Mutex<HashMap<SocketAddr, Arc<Channel>>>>);

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channels")
    }
}

/// The resolver: nameservers and the async exchange.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
    channels: Channels,
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
            channels: Channels::default(),
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
        let (id, q, answer) = crate::util::rt::timeout(self.timeout, self.udp(server, name, rtype))
            .await
            .ok_or_else(|| DnsError::Temporary(format!("{server}: timeout")))??;
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

    /// The kept socket to `server`, or a new one if there is none or it
    /// has served its time.
    fn channel(&self, server: SocketAddr) -> std::io::Result<Arc<Channel>> {
        let mut map = self.channels.0.lock().unwrap_or_else(|p| p.into_inner());
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(c) = map.get(&server) {
            if c.asked.load(Relaxed) < SOCKET_QUESTIONS && c.born.elapsed() < SOCKET_AGE {
                c.asked.fetch_add(1, Relaxed);
                return Ok(c.clone());
            }
        }
        let local: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let std_sock = std::net::UdpSocket::bind(local)?;
        // Connected: the kernel drops datagrams from other sources.
        std_sock.connect(server)?;
        let sock = async_net::UdpSocket::try_from(std_sock)?;
        // The replaced socket closes when its last question is done.
        let c = Arc::new(Channel {
            sock,
            born: Instant::now(),
            asked: 1.into(),
            pending: Mutex::new(Pending::default()),
        });
        map.insert(server, c.clone());
        Ok(c)
    }

    /// One question over UDP on the kept socket: returns its id, its wire
    /// form (for a TCP retry) and the answer.
    async fn udp(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<(u16, Vec<u8>, Vec<u8>), DnsError> {
        let io = |e: std::io::Error| DnsError::Temporary(format!("{server}: {e}"));
        let ch = self.channel(server).map_err(io)?;
        fn lock(ch: &Channel) -> std::sync::MutexGuard<'_, Pending> {
            ch.pending.lock().unwrap_or_else(|p| p.into_inner())
        }
        let id = lock(&ch)
            .add(name, rtype, || random_below(65536) as u16)
            .ok_or_else(|| DnsError::Temporary("too many DNS questions in flight".into()))?;
        // Removes the question however this future ends (a timeout drops it).
        struct Done<'a>(&'a Channel, u16);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(self.1);
            }
        }
        let _done = Done(&ch, id);
        let q = build_query(id, name, rtype)?;
        ch.sock.send(&q).await.map_err(io)?;
        let mine = std::future::poll_fn(|cx| match lock(&ch).take(id, cx.waker()) {
            Some(a) => Poll::Ready(Ok(a)),
            None => Poll::Pending,
        });
        // Whoever is waiting reads the socket and hands each answer to its
        // question. We advertise UDP_PAYLOAD (RFC 6891 6.2.5: the answer is
        // no bigger); an answer cut short fails to parse: no answer.
        let read = async {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = ch.sock.recv(&mut buf).await.map_err(io)?;
                let mut p = lock(&ch);
                match p.deliver(&buf[..n]) {
                    Some((got, _)) if got == id => {
                        if let Some(a) = p.slots.get_mut(&id).and_then(|s| s.answer.take()) {
                            return Ok(a);
                        }
                    }
                    Some((_, Some(w))) => {
                        drop(p);
                        w.wake();
                    }
                    _ => {}
                }
            }
        };
        let answer = smol::future::or(mine, read).await?;
        Ok((id, q, answer))
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
    fn shared_socket_answers_find_their_question() {
        let a = n("a.example");
        let b = n("b.example");
        let mut p = Pending::default();
        let mut ids = [7u16, 7, 9].into_iter();
        let ia = p.add(&a, RecordType::A, || ids.next().unwrap()).unwrap();
        // An id in flight is not given twice.
        let ib = p.add(&b, RecordType::A, || ids.next().unwrap()).unwrap();
        assert_eq!((ia, ib), (7, 9));
        let w = std::task::Waker::noop();
        assert_eq!(p.take(ia, w), None);
        let ok = |id, q: &Name, t| answer(id, q, t, ResponseCode::NoError, false, vec![]);
        // Spoofed: unknown id, right id with another name or type, a
        // query instead of a response, junk: all ignored.
        assert!(p.deliver(&ok(8, &a, RecordType::A)).is_none());
        assert!(p.deliver(&ok(7, &b, RecordType::A)).is_none());
        assert!(p.deliver(&ok(7, &a, RecordType::AAAA)).is_none());
        assert!(p
            .deliver(&build_query(7, &a, RecordType::A).unwrap())
            .is_none());
        assert!(p.deliver(b"\x00\x07junk").is_none());
        assert_eq!(p.take(ia, w), None);
        // The right answer wakes its question, once.
        let real = ok(7, &a, RecordType::A);
        assert!(matches!(p.deliver(&real), Some((7, Some(_)))));
        assert!(p.deliver(&real).is_none(), "a second answer is dropped");
        assert_eq!(p.take(ia, w), Some(real));
        p.remove(ia);
        assert!(
            p.deliver(&ok(7, &a, RecordType::A)).is_none(),
            "done: late answers dropped"
        );
        assert_eq!(p.len(), 1);
        // All 64 tries on ids in flight: no id rather than a reused one.
        assert_eq!(p.add(&a, RecordType::A, || 9), None);
    }

    #[test]
    fn shared_socket_serves_questions_in_flight_together() {
        // A fake nameserver on loopback answering in reverse order, plus
        // a spoofed answer (wrong question) first.
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            for _ in 0..3 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                got.push((Message::from_vec(&buf[..n]).unwrap(), from));
            }
            for (q, from) in got.iter().rev() {
                let name = q.queries[0].name().clone();
                let mut spoof = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                spoof.add_query(Query::query(n("evil.example"), RecordType::A));
                spoof.add_answer(Record::from_rdata(
                    n("evil.example"),
                    60,
                    RData::A(A::new(6, 6, 6, 6)),
                ));
                server.send_to(&spoof.to_vec().unwrap(), from).unwrap();
                let last = name.to_ascii().as_bytes()[0] - b'a';
                let rec = Record::from_rdata(name.clone(), 60, RData::A(A::new(192, 0, 2, last)));
                let a = answer(
                    q.metadata.id,
                    &name,
                    RecordType::A,
                    ResponseCode::NoError,
                    false,
                    vec![rec],
                );
                server.send_to(&a, from).unwrap();
            }
            got.iter().map(|(_, f)| *f).collect::<Vec<_>>()
        });
        let r = Resolver::new(&[addr]);
        let ask = |h: &'static str| {
            let r = &r;
            async move {
                let recs = r.query(&n(h), RecordType::A).await.unwrap();
                recs.iter().map(|x| x.data.clone()).collect::<Vec<_>>()
            }
        };
        let ((a, b), c) = smol::block_on(smol::future::zip(
            smol::future::zip(ask("a.example"), ask("b.example")),
            ask("c.example"),
        ));
        let froms = t.join().unwrap();
        // Each got its own answer, not the spoofed one or another's.
        assert_eq!(a, vec![RData::A(A::new(192, 0, 2, 0))]);
        assert_eq!(b, vec![RData::A(A::new(192, 0, 2, 1))]);
        assert_eq!(c, vec![RData::A(A::new(192, 0, 2, 2))]);
        assert!(
            froms.iter().all(|f| *f == froms[0]),
            "one socket: {froms:?}"
        );
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
