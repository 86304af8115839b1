//! TLS for every listener: the server certificate from PEM files, its
//! reload on `SIGHUP`, and a stream that starts plain and can turn into TLS
//! (STARTTLS, RFC 3207; STLS, RFC 2595) or is TLS from the first byte
//! (submissions and pop3s, RFC 8314).
//!
//! rustls with the `ring` provider, TLS 1.2 and 1.3 only. Certificates come
//! as certbot writes them: `fullchain.pem` (leaf first, then the
//! intermediates) and `privkey.pem` (PKCS#8, or the older PKCS#1 `RSA
//! PRIVATE KEY` and SEC1 `EC PRIVATE KEY`; RSA and ECDSA). Every problem
//! with them is a start-up error that names the file, so a bad certificate
//! never shows up first as a failed handshake on a client.

use crate::mail::envelope::TlsInfo;
use futures_rustls::TlsAcceptor;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use smol::io::{AsyncRead, AsyncWrite};
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A TLS handshake that has not finished by then is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read (missing, permissions).
    Read(PathBuf, io::Error),
    /// The certificate file holds no `CERTIFICATE` block.
    NoCertificate(PathBuf),
    /// The key file holds no private key block.
    NoKey(PathBuf),
    /// A PEM block is broken.
    Pem(PathBuf, String),
    /// The key is not the certificate's.
    Mismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the pair for another reason (unsupported key type...).
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            TlsError::NoCertificate(p) => write!(
                f,
                "{}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks, e.g. certbot's fullchain.pem)",
                p.display()
            ),
            TlsError::NoKey(p) => write!(
                f,
                "{}: no private key found (expected PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\", e.g. certbot's privkey.pem)",
                p.display()
            ),
            TlsError::Pem(p, why) => write!(f, "{}: bad PEM: {why}", p.display()),
            TlsError::Mismatch { cert, key } => write!(
                f,
                "the private key {} does not belong to the certificate {}",
                key.display(),
                cert.display()
            ),
            TlsError::Rejected { cert, key, why } => write!(
                f,
                "cannot use certificate {} with key {}: {why}",
                cert.display(),
                key.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(path.to_path_buf(), e))
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(io) => TlsError::Read(path.to_path_buf(), io),
        other => TlsError::Pem(path.to_path_buf(), other.to_string()),
    }
}

/// Reads and checks a certificate chain and its key into a server config.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key_pem = read(key)?;
    let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey(key.to_path_buf())),
        Err(e) => return Err(pem_error(key, e)),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rejected = |e: rustls::Error| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            }
        }
        other => TlsError::Rejected {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            why: other.to_string(),
        },
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?
        .with_no_client_auth()
        // Checks that the key matches the leaf certificate.
        .with_single_cert(chain, private)
        .map_err(rejected)?;
    Ok(Arc::new(config))
}

/// The server's TLS configuration, re-read from its files on reload. New
/// connections take [`current`](Self::current); sessions already running
/// keep the configuration they started with.
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: RefCell<Arc<ServerConfig>>,
    /// The files' identity when last read, for [`reload_if_changed`](Self::reload_if_changed).
    seen: RefCell<Option<FileStamps>>,
}

/// Modification time, inode and size of the certificate and key files
/// (after symlinks: certbot's `live/` names point into `archive/`).
type FileStamps = [(std::time::SystemTime, u64, u64); 2];

fn stamps(cert: &Path, key: &Path) -> Option<FileStamps> {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.ino(), m.len()))
    };
    Some([one(cert)?, one(key)?])
}

impl Certificate {
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, TlsError> {
        let seen = stamps(cert, key);
        let config = load(cert, key)?;
        Ok(Certificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RefCell::new(config),
            seen: RefCell::new(seen),
        })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.borrow().clone()
    }

    /// Re-reads the files (`SIGHUP`, e.g. after a certbot renewal). A bad
    /// new pair is reported and the one in use is kept, so a half-written
    /// renewal never takes TLS down.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.seen.borrow_mut() = stamps(&self.cert, &self.key);
        let config = load(&self.cert, &self.key)?;
        *self.current.borrow_mut() = config;
        Ok(())
    }

    /// Reloads when either file changed on disk since it was last read
    /// (polled, so a renewal takes effect without `reload`): `None` when
    /// nothing changed. A change is tried once; a bad pair is reported
    /// and the one in use kept until the files change again (a renewal
    /// that writes the certificate before the key succeeds at the next
    /// poll).
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamps(&self.cert, &self.key);
        if now.is_none() || now == *self.seen.borrow() {
            return None;
        }
        Some(self.reload())
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

/// The negotiated protocol version and cipher suite, for `Received:` and
/// the logs: "TLSv1.3" and "TLS13_AES_256_GCM_SHA384".
pub fn info(conn: &ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let s = s.suite();
            s.as_str().map_or_else(|| format!("{s:?}"), str::to_string)
        })
        .unwrap_or_default();
    TlsInfo { version, cipher }
}

/// Runs the server side of the handshake on `stream` with the current
/// certificate, for `service` ("smtp", "pop3") and `peer` in the logs.
/// `None` (logged) when there is no certificate, or the handshake fails or
/// times out: the connection is then unusable and should be dropped.
pub async fn handshake<S>(
    stream: &mut Stream<S>,
    certificate: Option<&Certificate>,
    service: &str,
    peer: SocketAddr,
) -> Option<TlsInfo>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(cert) = certificate else {
        log::error!("{service} {peer}: TLS requested but no certificate is configured");
        return None;
    };
    match crate::util::rt::timeout(HANDSHAKE_TIMEOUT, stream.start_tls(cert.current())).await {
        Some(Ok(info)) => {
            log::debug!("{service} {peer}: {} {}", info.version, info.cipher);
            Some(info)
        }
        Some(Err(e)) => {
            log::info!("{service} {peer}: TLS handshake failed: {e}");
            None
        }
        None => {
            log::info!("{service} {peer}: TLS handshake timed out");
            None
        }
    }
}

/// A connection that is plain until [`start_tls`](Stream::start_tls).
pub enum Stream<S> {
    Plain(S),
    Tls(Box<futures_rustls::server::TlsStream<S>>),
    /// The handshake failed or was abandoned: the connection is gone.
    Failed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream<S> {
    /// Runs the server side of the TLS handshake. The caller must have
    /// dropped whatever plain-text input it had buffered (CVE-2011-0411).
    pub async fn start_tls(&mut self, config: Arc<ServerConfig>) -> io::Result<TlsInfo> {
        let plain = match std::mem::replace(self, Stream::Failed) {
            Stream::Plain(s) => s,
            other => {
                *self = other;
                return Err(io::Error::other("TLS is already active"));
            }
        };
        let tls = TlsAcceptor::from(config).accept(plain).await?;
        let info = info(tls.get_ref().1);
        *self = Stream::Tls(Box::new(tls));
        Ok(info)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Failed => Poll::Ready(Ok(0)),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Failed => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            // Sends close_notify, then closes the socket.
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Failed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt};

    struct Files {
        dir: PathBuf,
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn files(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("pimail-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    /// A self-signed ECDSA certificate and its PKCS#8 key, as PEM.
    fn self_signed() -> (String, String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["mail.example.org".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), key)
    }

    #[test]
    fn start_up_errors_name_the_file() {
        let f = files("errors");
        let (cert, key, _) = self_signed();
        let (_, other_key, _) = self_signed();
        let c = f.dir.join("fullchain.pem");
        let k = f.dir.join("privkey.pem");
        let missing = f.dir.join("missing.pem");
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        assert!(load(&c, &k).is_ok());

        let e = load(&missing, &k).unwrap_err();
        assert!(matches!(e, TlsError::Read(..)), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = load(&c, &missing).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");

        // Key and certificate swapped: a classic slip.
        let e = load(&k, &c).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate(_)), "{e}");
        let e = load(&c, &c).unwrap_err();
        assert!(matches!(e, TlsError::NoKey(_)), "{e}");
        assert!(e.to_string().contains("fullchain.pem"), "{e}");

        let other = f.dir.join("other.pem");
        std::fs::write(&other, &other_key).unwrap();
        let e = load(&c, &other).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("does not belong"), "{e}");

        let broken = f.dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap();
        assert!(load(&broken, &k).is_err());
    }

    #[test]
    fn reload_keeps_the_old_config_when_the_new_is_bad() {
        let f = files("reload");
        let (cert, key, _) = self_signed();
        let c = f.dir.join("fullchain.pem");
        let k = f.dir.join("privkey.pem");
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        let certificate = Certificate::load(&c, &k).unwrap();
        let before = certificate.current();
        std::fs::write(&c, "garbage").unwrap();
        assert!(certificate.reload().is_err());
        assert!(Arc::ptr_eq(&before, &certificate.current()));
        let (cert2, key2, _) = self_signed();
        std::fs::write(&c, &cert2).unwrap();
        std::fs::write(&k, &key2).unwrap();
        certificate.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &certificate.current()));
    }

    /// A handshake over an in-memory pipe with a rustls client: the stream
    /// type upgrades and reports version and cipher.
    #[test]
    fn upgrade_over_a_pipe() {
        let (cert_pem, key_pem, _) = self_signed();
        let f = files("pipe");
        let c = f.dir.join("c.pem");
        let k = f.dir.join("k.pem");
        std::fs::write(&c, &cert_pem).unwrap();
        std::fs::write(&k, &key_pem).unwrap();
        let config = load(&c, &k).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
        let client_config = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        smol::block_on(async {
            let (a, b) = pipe();
            let server = async move {
                let mut s = Stream::Plain(a);
                let info = s.start_tls(config).await.unwrap();
                assert!(s.is_tls());
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"hello");
                info
            };
            let client = async move {
                let name = rustls::pki_types::ServerName::try_from("mail.example.org").unwrap();
                let mut t = futures_rustls::TlsConnector::from(client_config)
                    .connect(name, b)
                    .await
                    .unwrap();
                t.write_all(b"hello").await.unwrap();
                t.flush().await.unwrap();
                t
            };
            let (info, _t) = smol::future::zip(server, client).await;
            assert_eq!(info.version, "TLSv1.2");
            assert!(
                info.cipher.starts_with("TLS_ECDHE_ECDSA_"),
                "{}",
                info.cipher
            );
        });
    }

    /// A duplex in-memory pipe over two unix-socket halves.
    fn pipe() -> (
        smol::Async<std::os::unix::net::UnixStream>,
        smol::Async<std::os::unix::net::UnixStream>,
    ) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (smol::Async::new(a).unwrap(), smol::Async::new(b).unwrap())
    }
}
