//! The async driver of one outbound SMTP connection: connect, greeting,
//! EHLO (HELO fallback), STARTTLS, AUTH for a relay, then transactions
//! (several messages over one connection), with the timeouts of RFC 5321
//! 4.5.3.2. The dialogue's decisions are in `delivery::client`.
//!
//! TLS: for MX delivery STARTTLS is used whenever offered but the
//! certificate is not required to verify (RFC 7435 opportunistic
//! security: an unverified TLS session is still better than plain text);
//! whether it verified is recorded and logged. For a relay the certificate
//! must verify against the bundled webpki roots.

use super::client::{
    auth_plain, BodyEncoder, Caps, MailParams, Next, ReplyReader, ServerReply, Transaction,
};
use async_net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// RFC 5321 4.5.3.2 timeouts.
pub struct Timeouts {
    pub connect: Duration,
    /// Greeting, EHLO, MAIL, RCPT, RSET, STARTTLS, AUTH (5 min).
    pub command: Duration,
    /// DATA's 354 (2 min).
    pub data_init: Duration,
    /// Each block of the body (3 min).
    pub data_block: Duration,
    /// The reply after the final `.` (10 min).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

/// Why a connection could not carry (more) mail: try the next address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// Connection refused, reset, timeout, garbled replies.
    Network(String),
    /// The TLS handshake after STARTTLS (or for implicit TLS) failed.
    Tls(String),
    /// The server answered the greeting, EHLO, STARTTLS or AUTH with an
    /// error reply.
    Refused(ServerReply),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Network(s) | ConnError::Tls(s) => write!(f, "{s}"),
            ConnError::Refused(r) => write!(f, "{}", r.one_line()),
        }
    }
}

/// The error text of a connection attempt that timed out (what the relay
/// fallback counts).
pub const CONNECT_TIMEOUT: &str = "connect: timeout";

/// Why a connection that must use TLS (MTA-STS enforce) cannot.
pub const NO_STARTTLS: &str = "no STARTTLS offered";

fn net(what: &str, e: impl std::fmt::Display) -> ConnError {
    ConnError::Network(format!("{what}: {e}"))
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// How to secure and authenticate a connection.
#[derive(Clone)]
pub enum Security {
    /// MX delivery: STARTTLS when offered, certificate recorded, not
    /// required.
    Opportunistic,
    /// MX delivery under an MTA-STS `enforce` policy (RFC 8461 4.2):
    /// STARTTLS required, certificate verified for the MX host name.
    Verified,
    /// Relay: STARTTLS required (or implicit TLS), verified certificate,
    /// then AUTH PLAIN.
    Relay {
        implicit_tls: bool,
        verifier: Arc<WebPkiServerVerifier>,
        user: Option<String>,
        password: Option<String>,
    },
}

/// What the TLS session of a connection was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsUsed {
    pub version: String,
    pub cipher: String,
    /// `None`: the certificate verified for the host name; else why not.
    pub unverified: Option<String>,
}

impl std::fmt::Display for TlsUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.version, self.cipher)?;
        match &self.unverified {
            None => write!(f, " verified"),
            Some(why) => write!(f, " unverified ({why})"),
        }
    }
}

/// A verifier that asks webpki, records the verdict, and accepts anyway
/// (opportunistic TLS for MX delivery).
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    verdict: Mutex<Option<String>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        if let Ok(mut v) = self.verdict.lock() {
            *v = r.err().map(|e| e.to_string());
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The webpki verifier for the bundled roots plus, for tests and private
/// relays, the PEM certificates in `extra_ca` (`PIMAIL_RELAY_CA_FILE`).
pub fn verifier(extra_ca: Option<&std::path::Path>) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(p) = extra_ca {
        let pem = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let mut n = 0;
        for der in pem_certs(&pem) {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| format!("{}: {e}", p.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no certificate found", p.display()));
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())
}

/// The DER of each `CERTIFICATE` block of a PEM file.
fn pem_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(|c| c.ok())
        .map(|c| c.to_vec())
        .collect()
}

/// An open SMTP connection, greeted and ready for transactions.
pub struct Conn {
    stream: Stream,
    reader: ReplyReader,
    pub caps: Caps,
    pub tls: Option<TlsUsed>,
    pub host: String,
    pub addr: SocketAddr,
    t: Timeouts,
}

impl Conn {
    /// Connects to `addr` (MX `host`) and does greeting, EHLO, STARTTLS
    /// and, for a relay, AUTH. `starttls: false` skips an offered STARTTLS
    /// (MX delivery only: the retry after a failed handshake).
    pub async fn open(
        host: &str,
        addr: SocketAddr,
        helo: &str,
        security: &Security,
        opportunistic_verifier: &Arc<WebPkiServerVerifier>,
        starttls: bool,
        connect_timeout: Duration,
    ) -> Result<Conn, ConnError> {
        let t = Timeouts {
            connect: connect_timeout,
            ..Timeouts::default()
        };
        let tcp = crate::util::rt::timeout(t.connect, TcpStream::connect(addr))
            .await
            .ok_or_else(|| ConnError::Network(CONNECT_TIMEOUT.into()))?
            .map_err(|e| net("connect", e))?;
        let _ = tcp.set_nodelay(true);
        let mut c = Conn {
            stream: Stream::Plain(tcp),
            reader: ReplyReader::new(),
            caps: Caps::default(),
            tls: None,
            host: host.to_string(),
            addr,
            t,
        };
        if let Security::Relay {
            implicit_tls: true,
            verifier,
            ..
        } = security
        {
            c.start_tls(verifier.clone()).await?;
        }
        let greeting = c.read(c.t.command).await?;
        if greeting.code != 220 {
            return Err(ConnError::Refused(greeting));
        }
        c.hello(helo).await?;
        match security {
            Security::Opportunistic => {
                if c.caps.starttls && starttls {
                    let v = Arc::new(Recording {
                        inner: opportunistic_verifier.clone(),
                        verdict: Mutex::new(None),
                    });
                    c.starttls(v.clone()).await?;
                    if let (Some(t), Ok(v)) = (&mut c.tls, v.verdict.lock()) {
                        t.unverified = v.clone();
                    }
                    c.hello(helo).await?;
                }
            }
            Security::Verified => {
                if !c.caps.starttls {
                    return Err(ConnError::Tls(NO_STARTTLS.into()));
                }
                c.starttls(opportunistic_verifier.clone()).await?;
                c.hello(helo).await?;
            }
            Security::Relay {
                implicit_tls,
                verifier,
                user,
                password,
            } => {
                if !implicit_tls {
                    if !c.caps.starttls {
                        return Err(ConnError::Network(
                            "relay does not offer STARTTLS; refusing to send the password in clear"
                                .into(),
                        ));
                    }
                    c.starttls(verifier.clone()).await?;
                    c.hello(helo).await?;
                }
                if let (Some(u), Some(p)) = (user, password) {
                    let r = c.command(&auth_plain(u, p), c.t.command).await?;
                    if r.code != 235 {
                        return Err(ConnError::Refused(r));
                    }
                }
            }
        }
        Ok(c)
    }

    async fn hello(&mut self, helo: &str) -> Result<(), ConnError> {
        let r = self
            .command(&format!("EHLO {helo}"), self.t.command)
            .await?;
        if r.code == 250 {
            self.caps = Caps::from_ehlo(&r);
            return Ok(());
        }
        if !r.permanent() {
            return Err(ConnError::Refused(r));
        }
        // An old server without ESMTP (RFC 5321 3.2).
        let r = self
            .command(&format!("HELO {helo}"), self.t.command)
            .await?;
        if r.code != 250 {
            return Err(ConnError::Refused(r));
        }
        self.caps = Caps::default();
        Ok(())
    }

    async fn starttls(&mut self, verifier: Arc<dyn ServerCertVerifier>) -> Result<(), ConnError> {
        let r = self.command("STARTTLS", self.t.command).await?;
        if r.code != 220 {
            return Err(ConnError::Refused(r));
        }
        if self.reader.buffered() > 0 {
            // RFC 3207 5: nothing may follow the 220 before the handshake.
            return Err(ConnError::Tls(
                "server sent data after 220 to STARTTLS".into(),
            ));
        }
        self.start_tls(verifier).await
    }

    async fn start_tls(&mut self, verifier: Arc<dyn ServerCertVerifier>) -> Result<(), ConnError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| net("TLS", e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| net(&format!("TLS name {}", self.host), e))?;
        let connector = futures_rustls::TlsConnector::from(Arc::new(config));
        // async-net streams are handles to one socket: the TLS layer takes
        // one, the plain one is dropped when replaced below.
        let tcp = match &self.stream {
            Stream::Plain(s) => s.clone(),
            Stream::Tls(_) => return Err(ConnError::Network("TLS already on".into())),
        };
        let tls = crate::util::rt::timeout(self.t.command, connector.connect(name, tcp))
            .await
            .ok_or_else(|| ConnError::Tls("TLS handshake: timeout".into()))?
            .map_err(|e| ConnError::Tls(format!("TLS handshake: {e}")))?;
        let (_, session) = tls.get_ref();
        self.tls = Some(TlsUsed {
            version: session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS")
                .replace("TLSv1_", "TLSv1.")
                .to_string(),
            cipher: session
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("?")
                .to_string(),
            unverified: None,
        });
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8], limit: Duration) -> Result<(), ConnError> {
        crate::util::rt::timeout(limit, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .ok_or_else(|| ConnError::Network("write: timeout".into()))?
        .map_err(|e| net("write", e))
    }

    async fn read(&mut self, limit: Duration) -> Result<ServerReply, ConnError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(r) = self
                .reader
                .next_reply()
                .map_err(|e| net("reply", format!("{e:?}")))?
            {
                return Ok(r);
            }
            let n = crate::util::rt::timeout(limit, self.stream.read(&mut buf))
                .await
                .ok_or_else(|| ConnError::Network("timeout waiting for a reply".into()))?
                .map_err(|e| net("read", e))?;
            if n == 0 {
                return Err(ConnError::Network("connection closed by the server".into()));
            }
            self.reader.feed(&buf[..n]);
        }
    }

    async fn command(&mut self, line: &str, limit: Duration) -> Result<ServerReply, ConnError> {
        self.write(format!("{line}\r\n").as_bytes(), limit).await?;
        self.read(limit).await
    }

    /// Sends one message to `rcpts`; one reply per recipient. An `Err`
    /// means the connection failed: nothing about these recipients is
    /// known, try elsewhere or later.
    pub async fn send(
        &mut self,
        from: &str,
        rcpts: &[String],
        params: &MailParams,
        prefix: &[u8],
        body: &std::path::Path,
    ) -> Result<Vec<ServerReply>, ConnError> {
        if let Some(max) = self.caps.size.filter(|&m| m > 0) {
            if params.size > max {
                let r = ServerReply::new(
                    552,
                    &format!(
                        "5.3.4 message size {} exceeds the server's limit {max}",
                        params.size
                    ),
                );
                return Ok(vec![r; rcpts.len()]);
            }
        }
        if params.smtputf8 && !self.caps.smtputf8 {
            let r = ServerReply::new(
                553,
                "5.6.7 the message needs SMTPUTF8 and the server does not offer it",
            );
            return Ok(vec![r; rcpts.len()]);
        }
        let mut tx = Transaction::new(from, rcpts, &self.caps, params);
        let mut next = Next::Send(tx.start());
        loop {
            match next {
                Next::Send(cmds) => {
                    let mut out = String::new();
                    for c in cmds {
                        out += &c;
                        out += "\r\n";
                    }
                    self.write(out.as_bytes(), self.t.command).await?;
                    let limit = if out.ends_with("DATA\r\n") {
                        self.t.data_init
                    } else {
                        self.t.command
                    };
                    next = tx.reply(self.read(limit).await?);
                }
                Next::Read => next = tx.reply(self.read(self.t.data_init).await?),
                Next::EndEmpty(results) => {
                    self.write(b".\r\n", self.t.data_block).await?;
                    let _ = self.read(self.t.data_end).await?;
                    return Ok(results);
                }
                Next::Done(results) => {
                    let _ = self.command("RSET", self.t.command).await;
                    return Ok(results);
                }
                Next::Body => {
                    self.body(prefix, body).await?;
                    let r = self.read(self.t.data_end).await?;
                    return Ok(tx.finish(&r));
                }
            }
        }
    }

    async fn body(&mut self, prefix: &[u8], path: &std::path::Path) -> Result<(), ConnError> {
        let mut f = smol::fs::File::open(path)
            .await
            .map_err(|e| net(&format!("cannot open {}", path.display()), e))?;
        let mut enc = BodyEncoder::new();
        let mut buf = vec![0u8; 32 * 1024];
        let mut out = Vec::with_capacity(36 * 1024);
        enc.feed(prefix, &mut out);
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| net(&format!("cannot read {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            enc.feed(&buf[..n], &mut out);
            self.write(&out, self.t.data_block).await?;
            out.clear();
        }
        enc.finish(&mut out);
        self.write(&out, self.t.data_block).await
    }

    /// Ends the session politely.
    pub async fn quit(mut self) {
        let _ = crate::util::rt::timeout(Duration::from_secs(10), async {
            let _ = self.command("QUIT", Duration::from_secs(10)).await;
            let _ = self.stream.close().await;
        })
        .await;
    }
}
