//! A minimal, bounded HTTPS GET (HTTP/1.1, RFC 9112) for small documents
//! such as MTA-STS policies (RFC 8461 3.3): one request per connection
//! (`Connection: close`), the certificate verified by the caller's
//! verifier, no redirects followed (RFC 8461 3.3 forbids them), the body
//! capped, and the whole exchange under one deadline so that a slow or
//! hostile server costs at most that long.
//!
//! [`Response`] is the sans-I/O part: it takes bytes and says "need more",
//! "done" or why not (headers too long, body over the cap, garbled
//! framing), for `Content-Length`, `chunked` and close-delimited bodies.
//! [`get`] only moves bytes.

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Longest status line plus headers we take.
const MAX_HEADER: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Connect, TLS or I/O failure, or the deadline passed.
    Network(String),
    /// The body is longer than the cap.
    TooLarge(usize),
    /// Not HTTP, or broken framing.
    Garbled(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Network(s) => write!(f, "{s}"),
            HttpError::TooLarge(n) => write!(f, "body larger than {n} bytes"),
            HttpError::Garbled(s) => write!(f, "bad HTTP response: {s}"),
        }
    }
}

impl std::error::Error for HttpError {}

#[derive(Debug)]
enum Framing {
    Length(usize),
    /// Chunked: bytes left in the current chunk, or `None` before a size
    /// line.
    Chunked(Option<usize>),
    Close,
}

/// An HTTP response being read: status and body (headers are dropped but
/// for the framing ones).
#[derive(Debug)]
pub struct Response {
    max_body: usize,
    buf: Vec<u8>,
    pub status: Option<u16>,
    framing: Option<Framing>,
    pub body: Vec<u8>,
    done: bool,
}

fn garbled(s: &str) -> HttpError {
    HttpError::Garbled(s.into())
}

impl Response {
    pub fn new(max_body: usize) -> Response {
        Response {
            max_body,
            buf: Vec::new(),
            status: None,
            framing: None,
            body: Vec::new(),
            done: false,
        }
    }

    /// Takes more bytes; `Ok(true)` once the response is complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<bool, HttpError> {
        if self.done {
            return Ok(true);
        }
        self.buf.extend_from_slice(bytes);
        if self.framing.is_none() {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if self.buf.len() > MAX_HEADER {
                    return Err(garbled("headers too long"));
                }
                return Ok(false);
            };
            if end > MAX_HEADER {
                return Err(garbled("headers too long"));
            }
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end + 4);
            self.head(&head)?;
        }
        self.body_bytes()
    }

    /// The connection closed: complete if the body was close-delimited.
    pub fn eof(&mut self) -> Result<(), HttpError> {
        match (&self.framing, self.done) {
            (_, true) | (Some(Framing::Close), _) => {
                self.done = true;
                Ok(())
            }
            _ => Err(garbled("connection closed before the end of the response")),
        }
    }

    fn head(&mut self, head: &str) -> Result<(), HttpError> {
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or("");
        // "HTTP/1.1 200 OK" (RFC 9112 4).
        let mut parts = status.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let code = parts.next().and_then(|c| c.parse::<u16>().ok());
        if !version.starts_with("HTTP/1.") || code.is_none() {
            return Err(garbled("no HTTP/1.x status line"));
        }
        self.status = code;
        let mut framing = Framing::Close;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") {
                // RFC 9112 6.3: chunked wins over Content-Length.
                if v.to_ascii_lowercase().ends_with("chunked") {
                    framing = Framing::Chunked(None);
                } else {
                    return Err(garbled("unsupported transfer-encoding"));
                }
            } else if k.eq_ignore_ascii_case("content-length")
                && !matches!(framing, Framing::Chunked(_))
            {
                let n: usize = v.parse().map_err(|_| garbled("bad content-length"))?;
                if n > self.max_body {
                    return Err(HttpError::TooLarge(self.max_body));
                }
                framing = Framing::Length(n);
            }
        }
        self.framing = Some(framing);
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<(), HttpError> {
        if self.body.len() + n > self.max_body {
            return Err(HttpError::TooLarge(self.max_body));
        }
        self.body.extend(self.buf.drain(..n));
        Ok(())
    }

    fn body_bytes(&mut self) -> Result<bool, HttpError> {
        loop {
            match self.framing {
                Some(Framing::Length(n)) => {
                    let k = (n - self.body.len().min(n)).min(self.buf.len());
                    self.take(k)?;
                    self.done = self.body.len() >= n;
                    return Ok(self.done);
                }
                Some(Framing::Close) => {
                    let k = self.buf.len();
                    self.take(k)?;
                    return Ok(false);
                }
                Some(Framing::Chunked(None)) => {
                    let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        if self.buf.len() > 1024 {
                            return Err(garbled("chunk size line too long"));
                        }
                        return Ok(false);
                    };
                    let line = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                    self.buf.drain(..p + 2);
                    // Chunk extensions after ';' are ignored (RFC 9112 7.1.1).
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let n =
                        usize::from_str_radix(hex, 16).map_err(|_| garbled("bad chunk size"))?;
                    if n == 0 {
                        // Trailers are not needed: the body is complete.
                        self.done = true;
                        return Ok(true);
                    }
                    if self.body.len().saturating_add(n) > self.max_body {
                        return Err(HttpError::TooLarge(self.max_body));
                    }
                    self.framing = Some(Framing::Chunked(Some(n)));
                }
                Some(Framing::Chunked(Some(left))) => {
                    if left == 0 {
                        // The CRLF after the chunk data.
                        if self.buf.len() < 2 {
                            return Ok(false);
                        }
                        if &self.buf[..2] != b"\r\n" {
                            return Err(garbled("chunk not followed by CRLF"));
                        }
                        self.buf.drain(..2);
                        self.framing = Some(Framing::Chunked(None));
                        continue;
                    }
                    let k = left.min(self.buf.len());
                    if k == 0 {
                        return Ok(false);
                    }
                    self.take(k)?;
                    self.framing = Some(Framing::Chunked(Some(left - k)));
                }
                None => return Ok(false),
            }
        }
    }
}

/// `GET https://host/path` at `addr`, certificate checked by `verifier`
/// for `host`; the status and the body (at most `max_body` bytes), all
/// within `deadline`.
pub async fn get(
    host: &str,
    addr: SocketAddr,
    path: &str,
    verifier: Arc<dyn ServerCertVerifier>,
    max_body: usize,
    deadline: Duration,
) -> Result<(u16, Vec<u8>), HttpError> {
    crate::util::rt::timeout(deadline, exchange(host, addr, path, verifier, max_body))
        .await
        .unwrap_or_else(|| {
            Err(HttpError::Network(format!(
                "no complete answer within {}s",
                deadline.as_secs()
            )))
        })
}

async fn exchange(
    host: &str,
    addr: SocketAddr,
    path: &str,
    verifier: Arc<dyn ServerCertVerifier>,
    max_body: usize,
) -> Result<(u16, Vec<u8>), HttpError> {
    let net = |what: &str, e: &dyn std::fmt::Display| HttpError::Network(format!("{what}: {e}"));
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| net("TLS", &e))?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| net("TLS name", &e))?;
    let tcp = async_net::TcpStream::connect(addr)
        .await
        .map_err(|e| net("connect", &e))?;
    let mut tls = futures_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| net("TLS handshake", &e))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pimail\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| net("write", &e))?;
    tls.flush().await.map_err(|e| net("write", &e))?;
    let mut resp = Response::new(max_body);
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match tls.read(&mut buf).await {
            Ok(n) => n,
            // Servers that close without close_notify: the framing decides.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(net("read", &e)),
        };
        if n == 0 {
            resp.eof()?;
            break;
        }
        if resp.feed(&buf[..n])? {
            break;
        }
    }
    Ok((resp.status.unwrap_or(0), resp.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` split at `at`, then EOF.
    fn parse(bytes: &[u8], at: usize, max: usize) -> Result<(u16, Vec<u8>), HttpError> {
        let mut r = Response::new(max);
        let done = r.feed(&bytes[..at])? || r.feed(&bytes[at..])?;
        if !done {
            r.eof()?;
        }
        Ok((r.status.unwrap_or(0), r.body))
    }

    #[test]
    fn framings_at_every_split() {
        let cases: [(&[u8], &[u8]); 3] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
                b"hello",
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello", b"hello"),
        ];
        for (wire, body) in cases {
            for at in 0..=wire.len() {
                let (s, b) = parse(wire, at, 100).unwrap();
                assert_eq!((s, b.as_slice()), (200, body), "split at {at}");
            }
        }
    }

    #[test]
    fn caps_and_garbage() {
        let big = b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n";
        assert_eq!(parse(big, 5, 100), Err(HttpError::TooLarge(100)));
        let mut close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        close.extend(vec![b'a'; 101]);
        assert_eq!(parse(&close, 3, 100), Err(HttpError::TooLarge(100)));
        let chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfff\r\n";
        assert_eq!(parse(chunk, 3, 100), Err(HttpError::TooLarge(100)));
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH\r\n\r\n", 3, 100),
            Err(HttpError::Garbled(_))
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", 3, 100),
            Err(HttpError::Garbled(_))
        ));
        let long_head = vec![b'x'; MAX_HEADER + 10];
        assert!(matches!(
            Response::new(100).feed(&long_head),
            Err(HttpError::Garbled(_))
        ));
        let (s, _) = parse(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            0,
            10,
        )
        .unwrap();
        assert_eq!(s, 404);
    }
}
