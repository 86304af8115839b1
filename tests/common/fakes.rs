//! Fakes for outbound delivery tests: a DNS server answering from a zone
//! table (UDP and TCP on 127.0.0.1, messages encoded with hickory-proto)
//! and scriptable SMTP servers ("MX") on loopback addresses 127.0.0.x, all
//! on one port so that `outbound.mx_port` reaches every one of them.
#![allow(dead_code)]

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- DNS ----------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum Answer {
    Records(Vec<Record>),
    NxDomain,
    ServFail,
    /// Never answer (a dead nameserver).
    Silence,
    /// Over UDP: an empty answer with the TC bit; over TCP: these records.
    Truncated(Vec<Record>),
    /// These records, after this long (a slow DNS blocklist).
    Slow(Duration, Vec<Record>),
}

pub struct FakeDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<HashMap<(String, RecordType), Answer>>>,
    /// (name, type, over TCP) of every query received.
    pub queries: Arc<Mutex<Vec<(String, RecordType, bool)>>>,
}

fn name(s: &str) -> Name {
    let mut n = Name::from_ascii(s).unwrap();
    n.set_fqdn(true);
    n
}

fn key(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

impl FakeDns {
    pub fn start() -> FakeDns {
        // UDP and TCP on the same port.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
                break (udp, tcp);
            }
        };
        let dns = FakeDns {
            addr: udp.local_addr().unwrap(),
            zone: Arc::new(Mutex::new(HashMap::new())),
            queries: Arc::new(Mutex::new(Vec::new())),
        };
        let (zone, queries) = (dns.zone.clone(), dns.queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                match answer(&zone, &queries, &buf[..n], false) {
                    Some((None, reply)) => {
                        let _ = udp.send_to(&reply, peer);
                    }
                    // Slow answers from a thread of their own, so that
                    // other queries are answered meanwhile.
                    Some((Some(after), reply)) => {
                        if let Ok(u) = udp.try_clone() {
                            std::thread::spawn(move || {
                                std::thread::sleep(after);
                                let _ = u.send_to(&reply, peer);
                            });
                        }
                    }
                    None => {}
                }
            }
        });
        let (zone, queries) = (dns.zone.clone(), dns.queries.clone());
        std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                let (zone, queries) = (zone.clone(), queries.clone());
                std::thread::spawn(move || {
                    let mut s = s;
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if s.read_exact(&mut q).is_err() {
                        return;
                    }
                    if let Some((after, reply)) = answer(&zone, &queries, &q, true) {
                        if let Some(d) = after {
                            std::thread::sleep(d);
                        }
                        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&reply);
                        let _ = s.write_all(&out);
                    }
                });
            }
        });
        dns
    }

    pub fn set(&self, n: &str, t: RecordType, a: Answer) {
        self.zone.lock().unwrap().insert((key(n), t), a);
    }

    pub fn mx(&self, domain: &str, hosts: &[(u16, &str)]) {
        let recs = hosts
            .iter()
            .map(|(p, h)| Record::from_rdata(name(domain), 60, RData::MX(MX::new(*p, name(h)))))
            .collect();
        self.set(domain, RecordType::MX, Answer::Records(recs));
    }

    pub fn a(&self, host: &str, ips: &[Ipv4Addr]) {
        self.set(host, RecordType::A, Answer::Records(a_records(host, ips)));
    }

    pub fn aaaa(&self, host: &str, ips: &[std::net::Ipv6Addr]) {
        let recs = ips
            .iter()
            .map(|ip| Record::from_rdata(name(host), 60, RData::AAAA(AAAA(*ip))))
            .collect();
        self.set(host, RecordType::AAAA, Answer::Records(recs));
    }

    pub fn cname(&self, alias: &str, target: &str, t: RecordType) {
        let r = Record::from_rdata(name(alias), 60, RData::CNAME(CNAME(name(target))));
        self.set(alias, t, Answer::Records(vec![r]));
    }

    pub fn count(&self, n: &str, t: RecordType, tcp: bool) -> usize {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|(q, qt, tc)| *q == key(n) && *qt == t && *tc == tcp)
            .count()
    }
}

pub fn a_records(host: &str, ips: &[Ipv4Addr]) -> Vec<Record> {
    ips.iter()
        .map(|ip| Record::from_rdata(name(host), 60, RData::A(A(*ip))))
        .collect()
}

fn answer(
    zone: &Mutex<HashMap<(String, RecordType), Answer>>,
    queries: &Mutex<Vec<(String, RecordType, bool)>>,
    bytes: &[u8],
    tcp: bool,
) -> Option<(Option<Duration>, Vec<u8>)> {
    let q = Message::from_vec(bytes).ok()?;
    let query = q.queries.first()?.clone();
    let qname = key(&query.name().to_ascii());
    let qtype = query.query_type();
    queries.lock().unwrap().push((qname.clone(), qtype, tcp));
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(query);
    let zone = zone.lock().unwrap();
    let mut delay = None;
    match zone.get(&(qname.clone(), qtype)).cloned() {
        Some(Answer::Records(r)) => {
            m.add_answers(r);
        }
        Some(Answer::Slow(d, r)) => {
            delay = Some(d);
            m.add_answers(r);
        }
        Some(Answer::Truncated(r)) => {
            if tcp {
                m.add_answers(r);
            } else {
                m.metadata.truncation = true;
            }
        }
        Some(Answer::NxDomain) => m.metadata.response_code = ResponseCode::NXDomain,
        Some(Answer::ServFail) => m.metadata.response_code = ResponseCode::ServFail,
        Some(Answer::Silence) => return None,
        None => {
            // NODATA when the name has other records, else NXDOMAIN.
            if !zone.keys().any(|(n, _)| *n == qname) {
                m.metadata.response_code = ResponseCode::NXDomain;
            }
        }
    }
    m.to_vec().ok().map(|b| (delay, b))
}

// ---- TLS material --------------------------------------------------------------

pub struct TestCa {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pimail test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server config with a certificate for `host` signed by this CA.
    pub fn server_config(&self, host: &str) -> Arc<rustls::ServerConfig> {
        self.server_config_names(&[host])
    }

    /// A server config with one certificate for all of `hosts`.
    pub fn server_config_names(&self, hosts: &[&str]) -> Arc<rustls::ServerConfig> {
        let names = hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        server_config(cert.der().to_vec(), key.serialize_der())
    }
}

/// A self-signed certificate for `host` (what many MX hosts have).
pub fn self_signed(host: &str) -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    server_config(ck.cert.der().to_vec(), ck.signing_key.serialize_der())
}

fn server_config(cert: Vec<u8>, key: Vec<u8>) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .unwrap(),
    )
}

// ---- SMTP ----------------------------------------------------------------------

type RcptFn = dyn Fn(&str) -> (u16, String) + Send + Sync;
/// Gets the 0-based number of the DATA phase on this server.
type DataFn = dyn Fn(usize) -> (u16, String) + Send + Sync;

/// How a fake MX behaves.
#[derive(Clone)]
pub struct Behavior {
    pub greeting: (u16, String),
    /// false: an old server that answers EHLO with 502.
    pub esmtp: bool,
    /// Offer STARTTLS, say 220, then answer the handshake with garbage.
    pub broken_tls: bool,
    /// Accept connections but say nothing for this long (a hung server).
    pub silent_for: Option<Duration>,
    pub pipelining: bool,
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    pub implicit_tls: Option<Arc<rustls::ServerConfig>>,
    /// AUTH PLAIN required, with these credentials.
    pub auth: Option<(String, String)>,
    pub rcpt: Arc<RcptFn>,
    pub data: Arc<DataFn>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            greeting: (220, "fake ESMTP".into()),
            esmtp: true,
            broken_tls: false,
            silent_for: None,
            pipelining: true,
            starttls: None,
            implicit_tls: None,
            auth: None,
            rcpt: Arc::new(|_| (250, "2.1.5 OK".into())),
            data: Arc::new(|_| (250, "2.0.0 OK queued".into())),
        }
    }
}

impl Behavior {
    /// Refuses recipients that start with `prefix` with `code` and `text`,
    /// accepts the others.
    pub fn refusing_rcpt(prefix: &str, code: u16, text: &str) -> Behavior {
        let (prefix, text) = (prefix.to_string(), text.to_string());
        Behavior {
            rcpt: Arc::new(move |a| {
                if a.starts_with(&prefix) {
                    (code, text.clone())
                } else {
                    (250, "2.1.5 OK".into())
                }
            }),
            ..Behavior::default()
        }
    }
}

/// What a fake MX received in one transaction that ended in 250.
#[derive(Clone, Debug)]
pub struct Got {
    pub mail_from: String,
    /// Accepted recipients.
    pub rcpts: Vec<String>,
    /// The message as sent, dot-stuffing undone, CRLF line ends.
    pub data: Vec<u8>,
    pub tls: bool,
    pub auth: Option<String>,
    /// The client's EHLO or HELO line.
    pub hello: String,
    /// Which connection (0-based, per server) carried it.
    pub conn: usize,
}

pub struct FakeMx {
    pub ip: IpAddr,
    pub port: u16,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub connections: Arc<AtomicUsize>,
    data_count: Arc<AtomicUsize>,
}

impl FakeMx {
    /// Starts one fake per (ip, behavior), all on one port.
    pub fn start_all(specs: Vec<(Ipv4Addr, Behavior)>) -> (u16, Vec<FakeMx>) {
        'again: loop {
            let first = TcpListener::bind((specs[0].0, 0)).unwrap();
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            for (ip, _) in &specs[1..] {
                match TcpListener::bind((*ip, port)) {
                    Ok(l) => listeners.push(l),
                    Err(_) => continue 'again,
                }
            }
            let fakes = listeners
                .into_iter()
                .zip(specs)
                .map(|(l, (ip, b))| FakeMx::run(l, IpAddr::V4(ip), port, b))
                .collect();
            return (port, fakes);
        }
    }

    /// Starts one fake on any address (e.g. `[::1]:port`).
    pub fn start_at(addr: SocketAddr, b: Behavior) -> FakeMx {
        let l = TcpListener::bind(addr).unwrap();
        let a = l.local_addr().unwrap();
        FakeMx::run(l, a.ip(), a.port(), b)
    }

    /// Starts a fake on a listener made elsewhere (e.g. one that was a
    /// black hole until now).
    pub fn start_on(l: TcpListener, b: Behavior) -> FakeMx {
        let a = l.local_addr().unwrap();
        FakeMx::run(l, a.ip(), a.port(), b)
    }

    /// Starts fakes on a given port (e.g. after a restart).
    pub fn start_all_on(port: u16, specs: Vec<(Ipv4Addr, Behavior)>) -> Vec<FakeMx> {
        specs
            .into_iter()
            .map(|(ip, b)| {
                let l = TcpListener::bind((ip, port)).unwrap();
                FakeMx::run(l, IpAddr::V4(ip), port, b)
            })
            .collect()
    }

    fn run(l: TcpListener, ip: IpAddr, port: u16, b: Behavior) -> FakeMx {
        let mx = FakeMx {
            ip,
            port,
            got: Arc::new(Mutex::new(Vec::new())),
            connections: Arc::new(AtomicUsize::new(0)),
            data_count: Arc::new(AtomicUsize::new(0)),
        };
        let (got, conns, datas) = (
            mx.got.clone(),
            mx.connections.clone(),
            mx.data_count.clone(),
        );
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let n = conns.fetch_add(1, Ordering::SeqCst);
                let (got, datas, b) = (got.clone(), datas.clone(), b.clone());
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = session(s, &b, &got, &datas, n);
                });
            }
        });
        mx
    }

    pub fn messages(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` messages arrived here (bounded).
    pub fn wait_messages(&self, n: usize, within: Duration) -> Vec<Got> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.messages()
    }

    pub fn data_phases(&self) -> usize {
        self.data_count.load(Ordering::SeqCst)
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Io {
    fn tls(s: TcpStream, cfg: &Arc<rustls::ServerConfig>) -> std::io::Result<Io> {
        let conn = rustls::ServerConnection::new(cfg.clone()).map_err(std::io::Error::other)?;
        let mut t = rustls::StreamOwned::new(conn, s);
        // Drive the handshake now, so failures show here.
        while t.conn.is_handshaking() {
            t.conn.complete_io(&mut t.sock)?;
        }
        Ok(Io::Tls(Box::new(t)))
    }
}

impl Read for Io {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(b),
            Io::Tls(s) => s.read(b),
        }
    }
}

impl Write for Io {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(b),
            Io::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(s) => s.flush(),
        }
    }
}

struct Lines {
    io: Io,
    buf: Vec<u8>,
}

impl Lines {
    fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Ok(l[..p].to_vec());
            }
            let mut b = [0u8; 4096];
            let n = self.io.read(&mut b)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    fn send(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        self.io.write_all(format!("{code} {text}\r\n").as_bytes())?;
        self.io.flush()
    }
}

fn session(
    s: TcpStream,
    b: &Behavior,
    got: &Mutex<Vec<Got>>,
    datas: &AtomicUsize,
    conn: usize,
) -> std::io::Result<()> {
    let io = match &b.implicit_tls {
        Some(cfg) => Io::tls(s, cfg)?,
        None => Io::Plain(s),
    };
    if let Some(d) = b.silent_for {
        std::thread::sleep(d);
        return Ok(());
    }
    let mut tls = matches!(io, Io::Tls(_));
    let mut l = Lines {
        io,
        buf: Vec::new(),
    };
    l.send(b.greeting.0, &b.greeting.1)?;
    if b.greeting.0 != 220 {
        let _ = l.line();
        return Ok(());
    }
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut auth: Option<String> = None;
    let mut hello = String::new();
    loop {
        let line = l.line()?;
        let text = String::from_utf8_lossy(&line).to_string();
        let upper = text.to_ascii_uppercase();
        if upper.starts_with("EHLO") && !b.esmtp {
            l.send(502, "5.5.1 EHLO not implemented")?;
        } else if upper.starts_with("EHLO") {
            hello = text.clone();
            let mut caps = vec![
                "fake.example greets you".to_string(),
                "SIZE 10000000".into(),
                "8BITMIME".into(),
            ];
            if b.pipelining {
                caps.push("PIPELINING".into());
            }
            if (b.starttls.is_some() || b.broken_tls) && !tls {
                caps.push("STARTTLS".into());
            }
            if b.auth.is_some() && tls {
                caps.push("AUTH PLAIN".into());
            }
            let n = caps.len();
            let mut out = String::new();
            for (i, c) in caps.iter().enumerate() {
                out += &format!("250{}{c}\r\n", if i + 1 == n { ' ' } else { '-' });
            }
            l.io.write_all(out.as_bytes())?;
            l.io.flush()?;
        } else if upper.starts_with("HELO") {
            hello = text.clone();
            l.send(250, "fake")?;
        } else if upper == "STARTTLS" && b.broken_tls {
            l.send(220, "2.0.0 go ahead")?;
            l.io.write_all(b"this is not TLS at all\r\n")?;
            return Ok(());
        } else if upper == "STARTTLS" {
            let Some(cfg) = &b.starttls else {
                l.send(502, "5.5.1 no")?;
                continue;
            };
            l.send(220, "2.0.0 go ahead")?;
            // A second handle to the socket goes into TLS; the plain one
            // is dropped when replaced (the socket stays open).
            let Io::Plain(plain) = &l.io else {
                return Ok(());
            };
            let s = plain.try_clone()?;
            l.io = Io::tls(s, cfg)?;
            l.buf.clear();
            tls = true;
        } else if upper.starts_with("AUTH PLAIN ") {
            let want = b.auth.clone().unwrap_or_default();
            let got_b64 = text[11..].trim();
            let expect = b64(&format!("\0{}\0{}", want.0, want.1));
            if got_b64 == expect {
                auth = Some(want.0.clone());
                l.send(235, "2.7.0 Authentication successful")?;
            } else {
                l.send(535, "5.7.8 bad credentials")?;
            }
        } else if upper.starts_with("MAIL FROM:") {
            if b.auth.is_some() && auth.is_none() {
                l.send(530, "5.7.0 Authentication required")?;
                continue;
            }
            let addr = text[10..]
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<')
                .to_string();
            from = Some(addr);
            rcpts.clear();
            l.send(250, "2.1.0 OK")?;
        } else if upper.starts_with("RCPT TO:") {
            let addr = text[8..]
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<')
                .to_string();
            let (code, t) = (b.rcpt)(&addr);
            if code == 250 {
                rcpts.push(addr);
            }
            l.send(code, &t)?;
        } else if upper == "DATA" {
            if from.is_none() || rcpts.is_empty() {
                l.send(503, "5.5.1 no valid recipients")?;
                continue;
            }
            l.send(354, "go ahead")?;
            let mut data = Vec::new();
            loop {
                let line = l.line()?;
                if line == b"." {
                    break;
                }
                let line = line.strip_prefix(b".").unwrap_or(&line);
                data.extend_from_slice(line);
                data.extend_from_slice(b"\r\n");
            }
            let n = datas.fetch_add(1, Ordering::SeqCst);
            let (code, t) = (b.data)(n);
            if code == 250 {
                got.lock().unwrap().push(Got {
                    mail_from: from.clone().unwrap_or_default(),
                    rcpts: rcpts.clone(),
                    data,
                    tls,
                    auth: auth.clone(),
                    hello: hello.clone(),
                    conn,
                });
            }
            from = None;
            rcpts.clear();
            l.send(code, &t)?;
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            l.send(250, "2.0.0 OK")?;
        } else if upper == "QUIT" {
            l.send(221, "2.0.0 bye")?;
            return Ok(());
        } else if upper == "NOOP" {
            l.send(250, "2.0.0 OK")?;
        } else {
            l.send(500, "5.5.2 what?")?;
        }
    }
}

pub fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let d = s.as_bytes();
    let mut out = String::new();
    for c in d.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- records for deliverability tests (SPF, DKIM, DMARC, reverse DNS) ----------

impl FakeDns {
    /// TXT records at `n`, one per value (each value one character-string,
    /// split at 255 bytes as DNS requires).
    pub fn txt(&self, n: &str, values: &[&str]) {
        let recs = values
            .iter()
            .map(|v| {
                let parts: Vec<&[u8]> = v.as_bytes().chunks(255).collect();
                Record::from_rdata(
                    name(n),
                    60,
                    RData::TXT(hickory_proto::rr::rdata::TXT::from_bytes(parts)),
                )
            })
            .collect();
        self.set(n, RecordType::TXT, Answer::Records(recs));
    }

    /// `ip` listed in the DNS blocklist `zone` with answer `code` (RFC
    /// 5782 name forms, IPv4 and IPv6).
    pub fn dnsbl(&self, zone: &str, ip: IpAddr, code: Ipv4Addr) {
        let n = pimail::trust::dnsbl::query_name(ip, zone);
        self.a(&n, &[code]);
    }

    /// The PTR record of `ip`.
    pub fn ptr(&self, ip: IpAddr, host: &str) {
        let n = pimail::trust::spf::reverse_name(ip);
        let r = Record::from_rdata(
            name(&n),
            60,
            RData::PTR(hickory_proto::rr::rdata::PTR(name(host))),
        );
        self.set(&n, RecordType::PTR, Answer::Records(vec![r]));
    }
}

// ---- a world of fakes a test server delivers into -------------------------------

/// How long outbound tests wait for mail to arrive or a log line to show:
/// generous, since the machine is shared (a liveness bound, not a budget).
pub const WAIT: Duration = Duration::from_secs(40);

/// 127.0.0.`last`: every fake host gets a loopback address of its own.
pub fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Options for a server that resolves with `dns` and delivers to `port`
/// on every MX, retrying after 1 s; `extra` is appended to `[outbound]`.
pub fn outbound_options(dns: &FakeDns, port: u16, extra: &str) -> super::Options {
    super::Options {
        extra: format!(
            "[outbound]\ndns = [\"{}\"]\nmx_port = {port}\nretry = [\"1s\"]\n{extra}\n",
            dns.addr
        ),
        ..super::Options::default()
    }
}

impl FakeDns {
    /// `domain` has one MX, `mx.<domain>` (preference 10), at `ip`.
    pub fn one_mx(&self, domain: &str, ip: Ipv4Addr) {
        let host = format!("mx.{domain}");
        self.mx(domain, &[(10, &host)]);
        self.a(&host, &[ip]);
    }
}

/// A fake DNS and fake MX servers on one port: what an outbound test
/// delivers into. The DNS starts empty (see `one` for the common case).
pub struct MxWorld {
    pub dns: FakeDns,
    /// The port every fake MX listens on (`outbound.mx_port`).
    pub port: u16,
    /// One per (ip, behaviour) given to `start`, in that order.
    pub mx: Vec<FakeMx>,
}

impl MxWorld {
    pub fn start(hosts: Vec<(Ipv4Addr, Behavior)>) -> MxWorld {
        let dns = FakeDns::start();
        let (port, mx) = FakeMx::start_all(hosts);
        MxWorld { dns, port, mx }
    }

    /// The common case: `domain` has one MX, `mx.<domain>` at `ip`, that
    /// behaves as `b`.
    pub fn one(domain: &str, ip: Ipv4Addr, b: Behavior) -> MxWorld {
        let w = MxWorld::start(vec![(ip, b)]);
        w.dns.one_mx(domain, ip);
        w
    }

    /// Options for a server that delivers into this world.
    pub fn options(&self, extra: &str) -> super::Options {
        outbound_options(&self.dns, self.port, extra)
    }

    /// A running server that delivers into this world.
    pub fn server(&self, extra: &str) -> super::Server {
        super::Server::with(self.options(extra))
    }
}

// ---- HTTPS (MTA-STS policy hosts, RFC 8461 3.3) ----------------------------------

/// What a fake policy host answers for one `Host:`.
#[derive(Clone)]
pub enum Policy {
    /// 200 with this body (close-delimited, as many servers do).
    Body(String),
    /// Accept, read the request, and say nothing for this long.
    Silent(Duration),
}

/// An HTTPS server on `ip` answering `GET /.well-known/mta-sts.txt` per
/// `Host:` header; its certificate (from `ca`) names every host.
pub struct FakeHttps {
    pub addr: SocketAddr,
    /// Host of every request received.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHttps {
    pub fn start(ip: Ipv4Addr, ca: &TestCa, policies: Vec<(&str, Policy)>) -> FakeHttps {
        let hosts: Vec<&str> = policies.iter().map(|(h, _)| *h).collect();
        let cfg = ca.server_config_names(&hosts);
        let table: HashMap<String, Policy> = policies
            .into_iter()
            .map(|(h, p)| (h.to_string(), p))
            .collect();
        let l = TcpListener::bind((ip, 0)).unwrap();
        let https = FakeHttps {
            addr: l.local_addr().unwrap(),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let reqs = https.requests.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (cfg, table, reqs) = (cfg.clone(), table.clone(), reqs.clone());
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let Ok(mut io) = Io::tls(s, &cfg) else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                        match io.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    let host = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Host: "))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    reqs.lock().unwrap().push(host.clone());
                    match table.get(&host) {
                        Some(Policy::Body(body)) => {
                            let _ = io.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n");
                            for chunk in body.as_bytes().chunks(4096) {
                                if io.write_all(chunk).is_err() {
                                    return;
                                }
                            }
                            let _ = io.flush();
                            if let Io::Tls(t) = &mut io {
                                t.conn.send_close_notify();
                                let _ = t.conn.complete_io(&mut t.sock);
                            }
                        }
                        Some(Policy::Silent(d)) => std::thread::sleep(*d),
                        None => {
                            let _ = io
                                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                        }
                    }
                });
            }
        });
        https
    }
}
