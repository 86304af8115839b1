//! DNS blocklists (RFC 5782) and the client's forward-confirmed reverse
//! DNS: the connection-time lookups of port 25, run while the pregreet
//! wait goes on.
//!
//! A client `192.0.2.99` is looked up as `99.2.0.192.<zone>` (A record);
//! an IPv6 client as its 32 nibbles, reversed (RFC 5782 2.4). An answer
//! in `127.0.0.0/8` lists the client, with the code saying why (Spamhaus
//! ZEN: `127.0.0.2` SBL, `.4`-`.7` XBL, `.10`/`.11` PBL). Answers in
//! `127.255.255.0/24` are errors of the list itself (Spamhaus:
//! `127.255.255.254` "query via public resolver", `.255` "excessive
//! queries"), and answers outside `127/8` come from resolvers that rewrite
//! NXDOMAIN: neither is a listing, both are warned about once per list. A
//! list that does not answer in time counts as not listed: a dead list
//! must never block mail.
//!
//! A spam bot reconnects many times a minute: answers (listed or not)
//! are kept for [`CACHE_TTL`] in a small [`Cache`], and so is its
//! forward-confirmed reverse DNS, so its reconnections ask the DNS no more
//! questions. Errors and timeouts are not kept.
//!
//! The lookups go through [`Dns`], so the decisions are tested against a
//! table; [`Checker`] holds the "warned once" memory of the process.

use crate::trust::spf::{reverse_name, Dns, DnsError, QType, Rr};
use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What one list says about one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    NotListed,
    /// Listed, with the (first) return code.
    Listed(Ipv4Addr),
    /// The list refused or garbled the query (127.255.255.x, or an
    /// answer outside 127/8): counts as not listed.
    ListError(Ipv4Addr),
    /// No answer in time, SERVFAIL: counts as not listed.
    Failed(String),
}

/// A listing that refuses the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub zone: String,
    pub code: Ipv4Addr,
}

/// The query name of `ip` in `zone` (RFC 5782 2.1 and 2.4).
/// IPv4-mapped IPv6 clients are looked up as IPv4.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    // `reverse_name` gives `<reversed>.in-addr.arpa` / `.ip6.arpa`.
    let r = reverse_name(ip);
    let reversed = r
        .strip_suffix(".in-addr.arpa")
        .or_else(|| r.strip_suffix(".ip6.arpa"))
        .unwrap_or(&r);
    format!("{reversed}.{}", zone.trim_end_matches('.'))
}

/// Classifies the A records of an answer (RFC 5782 2.3: any `127/8`
/// address lists; Spamhaus' 127.255.255.x are errors).
pub fn classify(addrs: &[Ipv4Addr]) -> Answer {
    if let Some(bad) = addrs
        .iter()
        .find(|a| a.octets()[0] != 127 || a.octets()[1..3] == [255, 255])
    {
        return Answer::ListError(*bad);
    }
    match addrs.iter().min() {
        Some(a) => Answer::Listed(*a),
        None => Answer::NotListed,
    }
}

/// Asks one list about `ip`.
pub async fn ask<D: Dns>(dns: &D, ip: IpAddr, zone: &str) -> Answer {
    match dns.query(&query_name(ip, zone), QType::A).await {
        Ok(rrs) => {
            let v: Vec<Ipv4Addr> = rrs
                .iter()
                .filter_map(|r| match r {
                    Rr::A(a) => Some(*a),
                    _ => None,
                })
                .collect();
            classify(&v)
        }
        Err(DnsError::NotFound) => Answer::NotListed,
        Err(DnsError::Temporary(e)) => Answer::Failed(e),
    }
}

/// Polls every future to its end; outputs in the order given. (A tiny
/// `join_all`, so that lists are asked in parallel on one thread.)
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    struct JoinAll<F: Future> {
        futs: Vec<Option<Pin<Box<F>>>>,
        out: Vec<Option<F::Output>>,
    }
    impl<F: Future> Future for JoinAll<F> {
        type Output = Vec<F::Output>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.get_mut();
            let mut pending = false;
            for (slot, out) in this.futs.iter_mut().zip(this.out.iter_mut()) {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(v) => {
                            *out = Some(v);
                            *slot = None;
                        }
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                return Poll::Pending;
            }
            Poll::Ready(this.out.iter_mut().filter_map(Option::take).collect())
        }
    }
    // The futures are boxed and the outputs never pinned: `JoinAll` may
    // move whatever F is.
    impl<F: Future> Unpin for JoinAll<F> {}
    let n = futures.len();
    JoinAll {
        futs: futures.into_iter().map(|f| Some(Box::pin(f))).collect(),
        out: (0..n).map(|_| None).collect(),
    }
    .await
}

/// Forward-confirmed reverse DNS (RFC 8601 2.7.3 "iprev"): a PTR name of
/// `ip` whose A/AAAA records include `ip`. At most 3 PTR names are tried.
pub async fn fcrdns<D: Dns>(dns: &D, ip: IpAddr) -> Option<String> {
    fcrdns_sure(dns, ip).await.ok().flatten()
}

/// [`fcrdns`], saying whether the answer is the DNS's (`Ok`) or missing
/// for a temporary error (`Err`, not to be kept in a cache).
async fn fcrdns_sure<D: Dns>(dns: &D, ip: IpAddr) -> Result<Option<String>, ()> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let names: Vec<String> = match dns.query(&reverse_name(ip), QType::Ptr).await {
        Ok(rrs) => rrs
            .into_iter()
            .filter_map(|r| match r {
                Rr::Ptr(n) => Some(n),
                _ => None,
            })
            .take(3)
            .collect(),
        Err(DnsError::NotFound) => return Ok(None),
        Err(DnsError::Temporary(_)) => return Err(()),
    };
    let qtype = if ip.is_ipv4() { QType::A } else { QType::Aaaa };
    let mut sure = true;
    for n in names {
        match dns.query(&n, qtype).await {
            Ok(rrs) => {
                let hit = rrs.iter().any(|r| match (r, ip) {
                    (Rr::A(a), IpAddr::V4(v4)) => *a == v4,
                    (Rr::Aaaa(a), IpAddr::V6(v6)) => *a == v6,
                    _ => false,
                });
                if hit {
                    return Ok(Some(n));
                }
            }
            Err(DnsError::NotFound) => {}
            Err(DnsError::Temporary(_)) => sure = false,
        }
    }
    if sure {
        Ok(None)
    } else {
        Err(())
    }
}

/// How long an answer of a list is kept. Postfix's postscreen keeps them
/// for the DNS TTL but at least `postscreen_dnsbl_min_ttl` = 60 s; our
/// resolver's answers carry no TTL to us, so this is the floor alone:
/// never longer than postscreen would keep it. (Spamhaus ZEN's TTLs are
/// 60 s for listings and more for NXDOMAIN.)
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many (list, client) answers are kept (~100 bytes each).
pub const CACHE_SIZE: usize = 4096;

/// Answers of the lists by (zone, client), each until it expires.
#[derive(Default)]
pub struct Cache {
    map: std::collections::HashMap<(String, IpAddr), (Answer, Instant)>,
}

impl Cache {
    /// The kept answer, if it has not expired at `now`.
    pub fn get(&mut self, zone: &str, ip: IpAddr, now: Instant) -> Option<Answer> {
        let key = (zone.to_string(), ip);
        match self.map.get(&key) {
            Some((a, until)) if now < *until => Some(a.clone()),
            Some(_) => {
                self.map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer` for [`CACHE_TTL`] if it is an answer of the list
    /// (listed or not); a full cache first drops what expired, and if
    /// that is not enough, everything (a flood of new clients: the next
    /// minute asks again, as without a cache).
    pub fn put(&mut self, zone: &str, ip: IpAddr, answer: &Answer, now: Instant) {
        if !matches!(answer, Answer::Listed(_) | Answer::NotListed) {
            return;
        }
        if self.map.len() >= CACHE_SIZE {
            self.map.retain(|_, (_, until)| now < *until);
            if self.map.len() >= CACHE_SIZE {
                self.map.clear();
            }
        }
        self.map
            .insert((zone.to_string(), ip), (answer.clone(), now + CACHE_TTL));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The configured lists and what the process has warned about.
pub struct Checker {
    pub zones: Vec<String>,
    /// How long the lists together may take; later answers count as
    /// "not listed".
    pub timeout: Duration,
    warned: RefCell<HashSet<String>>,
    cache: RefCell<Cache>,
    /// Forward-confirmed reverse DNS by client, kept like the lists'
    /// answers (a reconnecting client is not looked up again).
    rdns: RefCell<std::collections::HashMap<IpAddr, (Option<String>, Instant)>>,
}

/// Default for [`Checker::timeout`]: a local resolver answers a cached
/// name in a millisecond and an uncached one in well under a second.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Checker {
    pub fn new(zones: Vec<String>, timeout: Duration) -> Checker {
        Checker {
            zones,
            timeout,
            warned: RefCell::new(HashSet::new()),
            cache: RefCell::new(Cache::default()),
            rdns: RefCell::new(std::collections::HashMap::new()),
        }
    }

    /// The client's forward-confirmed reverse DNS name ([`fcrdns`]) within
    /// [`Checker::timeout`], kept for [`CACHE_TTL`] when the DNS answered
    /// (a name, or none); a timeout or SERVFAIL counts as none and is
    /// asked again next time. Bounded as [`Cache`] is.
    pub async fn fcrdns<D: Dns>(&self, dns: &D, ip: IpAddr) -> Option<String> {
        let now = Instant::now();
        if let Some((name, until)) = self.rdns.borrow().get(&ip) {
            if now < *until {
                return name.clone();
            }
        }
        let found = crate::util::rt::timeout(self.timeout, fcrdns_sure(dns, ip)).await;
        let Some(Ok(name)) = found else {
            return None;
        };
        let mut m = self.rdns.borrow_mut();
        let now = Instant::now();
        if m.len() >= CACHE_SIZE {
            m.retain(|_, (_, until)| now < *until);
            if m.len() >= CACHE_SIZE {
                m.clear();
            }
        }
        m.insert(ip, (name.clone(), now + CACHE_TTL));
        name
    }

    /// Asks every list in parallel; the first listing (in config order)
    /// wins. Errors of a list are logged once per list and zone answer.
    pub async fn check<D: Dns>(&self, dns: &D, ip: IpAddr) -> Option<Listing> {
        if self.zones.is_empty() {
            return None;
        }
        let asks = self.zones.iter().map(|z| async move {
            if let Some(a) = self.cache.borrow_mut().get(z, ip, Instant::now()) {
                return a;
            }
            let a = crate::util::rt::timeout(self.timeout, ask(dns, ip, z))
                .await
                .unwrap_or_else(|| Answer::Failed("no answer in time".into()));
            self.cache.borrow_mut().put(z, ip, &a, Instant::now());
            a
        });
        let answers = join_all(asks.collect()).await;
        let mut found = None;
        for (zone, a) in self.zones.iter().zip(answers) {
            match a {
                Answer::Listed(code) if found.is_none() => {
                    found = Some(Listing {
                        zone: zone.clone(),
                        code,
                    })
                }
                Answer::ListError(code)
                    if self.warned.borrow_mut().insert(format!("{zone} {code}")) =>
                {
                    log::warn!(
                        "dnsbl {zone}: answered {code}, an error of the list, not a listing \
                         (127.255.255.254 means \"query via public resolver\": use a local \
                         resolver such as unbound; run `pimail doctor`); counted as not listed"
                    );
                }
                Answer::Failed(e) => {
                    log::info!(
                        "spam check=dnsbl client={ip} list={zone} result=unanswered error={}",
                        crate::util::logging::quoted(&e)
                    );
                }
                _ => {}
            }
        }
        found
    }
}

/// `pimail doctor`: does `zone` answer properly through `dns`? RFC 5782
/// 5: `127.0.0.2` must be listed and `127.0.0.1` must not. `Err` says
/// what is wrong.
pub async fn self_test<D: Dns>(dns: &D, zone: &str) -> Result<Ipv4Addr, String> {
    let two = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let listed = match ask(dns, two, zone).await {
        Answer::Listed(c) => c,
        Answer::ListError(c) => {
            return Err(format!(
                "{zone} refuses this resolver (answered {c} for the test entry 127.0.0.2); \
                 public resolvers are refused by Spamhaus and others"
            ))
        }
        Answer::NotListed => {
            return Err(format!(
                "{zone} does not list its test entry 127.0.0.2 (NXDOMAIN): \
                 the resolver may hide the answer, or the zone name is wrong"
            ))
        }
        Answer::Failed(e) => return Err(format!("{zone} does not answer: {e}")),
    };
    match ask(dns, one, zone).await {
        Answer::NotListed => Ok(listed),
        Answer::Listed(c) | Answer::ListError(c) => Err(format!(
            "{zone} lists 127.0.0.1 (answered {c}): the list or the resolver is broken \
             and would refuse everyone"
        )),
        Answer::Failed(e) => Err(format!("{zone} does not answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Zone(HashMap<String, Vec<Ipv4Addr>>);

    impl Dns for Zone {
        async fn query(&self, name: &str, qtype: QType) -> Result<Vec<Rr>, DnsError> {
            assert_eq!(qtype, QType::A);
            match self.0.get(name) {
                Some(v) => Ok(v.iter().map(|a| Rr::A(*a)).collect()),
                None if name.contains("slow") => {
                    smol::Timer::after(Duration::from_secs(30)).await;
                    Err(DnsError::NotFound)
                }
                None => Err(DnsError::NotFound),
            }
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn query_names_of_rfc_5782() {
        assert_eq!(
            query_name(ip("192.0.2.99"), "bl.example"),
            "99.2.0.192.bl.example"
        );
        assert_eq!(
            query_name(ip("::ffff:192.0.2.99"), "bl.example."),
            "99.2.0.192.bl.example"
        );
        // RFC 5782 2.4's example.
        assert_eq!(
            query_name(ip("2001:db8:1:2:3:4:567:89ab"), "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
        assert_eq!(
            query_name(ip("::1"), "bl.example"),
            format!("1{}.bl.example", ".0".repeat(31))
        );
    }

    #[test]
    fn cache_keeps_answers_until_they_expire() {
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let listed = Answer::Listed(Ipv4Addr::new(127, 0, 0, 2));
        let mut c = Cache::default();
        c.put("bl.example", a, &listed, t0);
        c.put("other.example", a, &Answer::NotListed, t0);
        // Errors and timeouts are asked again next time.
        c.put("x.example", a, &Answer::Failed("timeout".into()), t0);
        c.put(
            "y.example",
            a,
            &Answer::ListError(Ipv4Addr::new(127, 255, 255, 254)),
            t0,
        );
        assert_eq!(c.len(), 2);
        let later = t0 + CACHE_TTL - Duration::from_secs(1);
        assert_eq!(c.get("bl.example", a, later), Some(listed.clone()));
        assert_eq!(c.get("other.example", a, later), Some(Answer::NotListed));
        assert_eq!(c.get("bl.example", ip("192.0.2.2"), later), None);
        assert_eq!(c.get("x.example", a, later), None);
        // Expired: gone.
        assert_eq!(c.get("bl.example", a, t0 + CACHE_TTL), None);
        assert_eq!(c.len(), 1);
        // Bounded: a flood of clients never grows it past CACHE_SIZE.
        for i in 0..(CACHE_SIZE as u32 + 10) {
            c.put(
                "bl.example",
                IpAddr::V4(Ipv4Addr::from(i)),
                &Answer::NotListed,
                t0,
            );
        }
        assert!(c.len() <= CACHE_SIZE);
    }

    #[test]
    fn a_reconnecting_client_is_not_asked_about_again() {
        use std::cell::Cell;
        struct Counting(Cell<u32>);
        impl Dns for Counting {
            async fn query(&self, _: &str, _: QType) -> Result<Vec<Rr>, DnsError> {
                self.0.set(self.0.get() + 1);
                Ok(vec![Rr::A(Ipv4Addr::new(127, 0, 0, 4))])
            }
        }
        let dns = Counting(Cell::new(0));
        let c = Checker::new(vec!["bl.example".into()], Duration::from_secs(2));
        for _ in 0..5 {
            let r = smol::block_on(c.check(&dns, ip("192.0.2.7")));
            assert_eq!(r.map(|l| l.code), Some(Ipv4Addr::new(127, 0, 0, 4)));
        }
        assert_eq!(dns.0.get(), 1);
    }

    #[test]
    fn reverse_dns_is_kept_but_not_its_failures() {
        use std::cell::Cell;
        struct Rdns {
            asked: Cell<u32>,
            fail: Cell<bool>,
        }
        impl Dns for Rdns {
            async fn query(&self, name: &str, q: QType) -> Result<Vec<Rr>, DnsError> {
                self.asked.set(self.asked.get() + 1);
                if self.fail.get() {
                    return Err(DnsError::Temporary("SERVFAIL".into()));
                }
                match q {
                    QType::Ptr if name == "7.2.0.192.in-addr.arpa" => {
                        Ok(vec![Rr::Ptr("mx.example.net".into())])
                    }
                    QType::A if name == "mx.example.net" => {
                        Ok(vec![Rr::A(Ipv4Addr::new(192, 0, 2, 7))])
                    }
                    _ => Err(DnsError::NotFound),
                }
            }
        }
        let dns = Rdns {
            asked: Cell::new(0),
            fail: Cell::new(true),
        };
        let c = Checker::new(vec![], Duration::from_secs(2));
        // A failure is not kept: asked again, and then the answer is kept.
        assert_eq!(smol::block_on(c.fcrdns(&dns, ip("192.0.2.7"))), None);
        assert_eq!(dns.asked.get(), 1);
        dns.fail.set(false);
        for _ in 0..3 {
            assert_eq!(
                smol::block_on(c.fcrdns(&dns, ip("192.0.2.7"))).as_deref(),
                Some("mx.example.net")
            );
        }
        assert_eq!(dns.asked.get(), 3, "PTR and A once, then from the cache");
        // No PTR record is an answer too, kept.
        assert_eq!(smol::block_on(c.fcrdns(&dns, ip("192.0.2.8"))), None);
        assert_eq!(smol::block_on(c.fcrdns(&dns, ip("192.0.2.8"))), None);
        assert_eq!(dns.asked.get(), 4);
    }

    #[test]
    fn answers_are_classified() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(classify(&[]), Answer::NotListed);
        assert_eq!(
            classify(&[a("127.0.0.4"), a("127.0.0.2")]),
            Answer::Listed(a("127.0.0.2"))
        );
        assert_eq!(
            classify(&[a("127.255.255.254")]),
            Answer::ListError(a("127.255.255.254"))
        );
        assert_eq!(
            classify(&[a("198.51.100.7")]),
            Answer::ListError(a("198.51.100.7"))
        );
    }

    #[test]
    fn lists_in_parallel_errors_and_timeouts_do_not_list() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let mut z = HashMap::new();
        z.insert("9.2.0.192.bl.example".to_string(), vec![a("127.0.0.10")]);
        z.insert(
            "9.2.0.192.public.example".to_string(),
            vec![a("127.255.255.254")],
        );
        z.insert("2.0.0.127.bl.example".to_string(), vec![a("127.0.0.2")]);
        z.insert(
            "2.0.0.127.public.example".to_string(),
            vec![a("127.255.255.254")],
        );
        let dns = Zone(z);
        let c = Checker::new(
            vec![
                "slow.example".into(),
                "public.example".into(),
                "bl.example".into(),
            ],
            Duration::from_millis(200),
        );
        let t = std::time::Instant::now();
        let r = smol::block_on(c.check(&dns, ip("192.0.2.9")));
        assert_eq!(
            r,
            Some(Listing {
                zone: "bl.example".into(),
                code: a("127.0.0.10")
            })
        );
        // The slow list was cut at the timeout, not waited for.
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(smol::block_on(c.check(&dns, ip("192.0.2.8"))), None);
        let c = Checker::new(vec!["public.example".into()], Duration::from_millis(200));
        assert_eq!(smol::block_on(c.check(&dns, ip("192.0.2.9"))), None);
        assert_eq!(
            smol::block_on(self_test(&dns, "bl.example")),
            Ok(a("127.0.0.2"))
        );
        let e = smol::block_on(self_test(&dns, "public.example")).unwrap_err();
        assert!(e.contains("refuses this resolver"), "{e}");
        let e = smol::block_on(self_test(&dns, "none.example")).unwrap_err();
        assert!(e.contains("does not list its test entry"), "{e}");
    }
}
