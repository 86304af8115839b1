//! TLS for the tests: certificates made in the test (a root CA, an
//! intermediate, a leaf for `mail.example.org` and `127.0.0.1`, as certbot's
//! fullchain.pem/privkey.pem would hold them), a small rustls client that
//! speaks the same line protocol as `Client`, and checks for the external
//! TLS clients (openssl, swaks, curl) that fail with what to install.

use super::{Client, Dialogue, Options, Server, TempDir};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The private key's algorithm and PEM flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256, PKCS#8 ("BEGIN PRIVATE KEY"; certbot's default).
    Ecdsa,
    /// ECDSA P-256, SEC1 ("BEGIN EC PRIVATE KEY").
    EcdsaSec1,
    /// RSA 2048, PKCS#8.
    Rsa,
    /// RSA 2048, PKCS#1 ("BEGIN RSA PRIVATE KEY"; older certbot).
    RsaPkcs1,
}

pub struct Certs {
    /// The root CA clients trust.
    pub ca: PathBuf,
    /// Leaf + intermediate, like certbot's fullchain.pem.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf in DER, to recognise it on the wire.
    pub leaf_der: Vec<u8>,
}

impl Certs {
    pub fn pair(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.cert.clone(), self.key.clone()))
    }
}

/// Fails the test with what to install when `tool` is missing.
pub fn require(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs `{tool}`, which is not installed: apt-get install {package}"
    );
}

fn openssl(args: &[&str]) {
    require("openssl", "openssl");
    let o = Command::new("openssl").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ca_params(cn: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_string());
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p
}

/// Makes a fresh root CA, intermediate and leaf under `dir/name-*`.
pub fn make_certs(dir: &Path, name: &str, kind: KeyKind) -> Certs {
    let root_key = rcgen::KeyPair::generate().unwrap();
    let root_params = ca_params(&format!("pimail test root {name}"));
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);

    let mid_key = rcgen::KeyPair::generate().unwrap();
    let mid_params = ca_params(&format!("pimail test intermediate {name}"));
    let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
    let mid_issuer = rcgen::Issuer::new(mid_params, mid_key);

    let key_path = dir.join(format!("{name}-privkey.pem"));
    let leaf_key = match kind {
        KeyKind::Ecdsa | KeyKind::EcdsaSec1 => {
            let k = rcgen::KeyPair::generate().unwrap();
            std::fs::write(&key_path, k.serialize_pem()).unwrap();
            k
        }
        KeyKind::Rsa | KeyKind::RsaPkcs1 => {
            // ring cannot generate RSA keys; openssl can, rcgen signs with it.
            let p = key_path.display().to_string();
            openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &p,
            ]);
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap()
        }
    };
    if matches!(kind, KeyKind::EcdsaSec1 | KeyKind::RsaPkcs1) {
        let p = key_path.display().to_string();
        let tmp = format!("{p}.traditional");
        openssl(&["pkey", "-in", &p, "-traditional", "-out", &tmp]);
        std::fs::rename(&tmp, &key_path).unwrap();
        let text = std::fs::read_to_string(&key_path).unwrap();
        let want = if kind == KeyKind::RsaPkcs1 {
            "BEGIN RSA PRIVATE KEY"
        } else {
            "BEGIN EC PRIVATE KEY"
        };
        assert!(text.contains(want), "{text}");
    }
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["mail.example.org".to_string(), "127.0.0.1".into()])
            .unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mail.example.org");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();

    let ca = dir.join(format!("{name}-ca.pem"));
    let cert = dir.join(format!("{name}-fullchain.pem"));
    std::fs::write(&ca, root.pem()).unwrap();
    std::fs::write(&cert, format!("{}{}", leaf.pem(), mid.pem())).unwrap();
    Certs {
        ca,
        cert,
        key: key_path,
        leaf_der: leaf.der().to_vec(),
    }
}

/// A running server with a fresh certificate chain of `kind` in `[tls]`
/// (the rest of its config from `o`), and the certificates to trust it.
pub struct TlsServer {
    pub srv: Server,
    pub certs: Certs,
    _dir: TempDir,
}

impl TlsServer {
    pub fn start(kind: KeyKind, o: Options) -> TlsServer {
        let dir = TempDir::new("certs");
        let certs = make_certs(dir.path(), "srv", kind);
        let srv = Server::with(Options {
            tls: certs.pair(),
            ..o
        });
        TlsServer {
            srv,
            certs,
            _dir: dir,
        }
    }
}

/// Runs `openssl s_client` against `addr`, verifying the certificate
/// chain against `ca` and the name `mail.example.org`, plus `more`
/// arguments; feeds it `input` a line at a time (with pauses, so the
/// dialogue happens before stdin closes and s_client quits). Returns
/// whether it succeeded and its stdout+stderr.
pub fn s_client(addr: SocketAddr, ca: &Path, more: &[&str], input: &str) -> (bool, String) {
    require("openssl", "openssl");
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .args([
            "-verify_return_error",
            "-verify_hostname",
            "mail.example.org",
        ])
        // Else a line starting with Q (QUIT) makes s_client quit.
        .args(["-brief", "-nocommands"])
        .args(more)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    std::thread::spawn(move || {
        for line in input.split_inclusive("\r\n") {
            std::thread::sleep(Duration::from_millis(300));
            let _ = stdin.write_all(line.as_bytes());
        }
        std::thread::sleep(Duration::from_millis(500));
    });
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// `curl` that insists on TLS (`--ssl-reqd`) and trusts only `ca`; the
/// caller adds the URL and the rest.
pub fn curl_tls(ca: &Path) -> Command {
    let mut c = Command::new("curl");
    c.args(["--silent", "--show-error", "--ssl-reqd", "--max-time", "60"])
        .arg("--cacert")
        .arg(ca);
    c
}

pub type Version = &'static rustls::SupportedProtocolVersion;
pub const TLS12: Version = &rustls::version::TLS12;
pub const TLS13: Version = &rustls::version::TLS13;

/// A rustls client config trusting only `ca`, limited to `versions`.
pub fn client_config(ca: &Path, versions: &[Version]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// The line client of `Client`, over TLS.
pub struct TlsClient {
    reader: BufReader<Tls>,
}

impl TlsClient {
    fn handshake(sock: TcpStream, config: Arc<ClientConfig>) -> Result<TlsClient, String> {
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let name = ServerName::try_from("mail.example.org").unwrap();
        let mut conn = ClientConnection::new(config, name).unwrap();
        let mut sock = sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        Ok(TlsClient {
            reader: BufReader::new(StreamOwned::new(conn, sock)),
        })
    }

    /// Implicit TLS (port 465): handshake first, then the greeting.
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsClient {
        Self::try_connect(addr, config).unwrap()
    }

    pub fn try_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsClient, String> {
        Self::handshake(TcpStream::connect(addr).unwrap(), config)
    }

    /// Turns a plain client whose STARTTLS was just answered `220` into
    /// a TLS one.
    pub fn upgrade(c: Client, config: Arc<ClientConfig>) -> TlsClient {
        assert!(
            c.reader.buffer().is_empty(),
            "server sent more after 220 to STARTTLS"
        );
        Self::handshake(c.stream, config).unwrap()
    }

    /// Greeting, EHLO, STARTTLS on a plain connection, then TLS.
    pub fn starttls(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsClient {
        let mut c = Client::connect(addr);
        c.hello();
        c.expect("STARTTLS", 220);
        Self::upgrade(c, config)
    }

    pub fn version(&self) -> String {
        format!(
            "{:?}",
            self.reader.get_ref().conn.protocol_version().unwrap()
        )
    }

    pub fn cipher(&self) -> String {
        format!(
            "{:?}",
            self.reader
                .get_ref()
                .conn
                .negotiated_cipher_suite()
                .unwrap()
                .suite()
        )
    }

    /// Was this a resumed session (abbreviated handshake)?
    pub fn resumed(&self) -> bool {
        self.reader.get_ref().conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The leaf certificate the server presented.
    pub fn peer_leaf(&self) -> Vec<u8> {
        self.reader.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// How many certificates the server sent (leaf + intermediates).
    pub fn peer_chain_len(&self) -> usize {
        self.reader
            .get_ref()
            .conn
            .peer_certificates()
            .map_or(0, |c| c.len())
    }

    /// One raw line without CRLF (for POP3).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap_or(0);
        line.trim_end_matches(['\r', '\n']).to_string()
    }
}

impl Dialogue for TlsClient {
    fn send_raw(&mut self, bytes: &[u8]) {
        let s = self.reader.get_mut();
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
    }

    fn reply(&mut self) -> (u16, String) {
        super::read_reply(&mut self.reader)
    }
}

/// `AUTH PLAIN` initial response for `login`/`password`.
pub fn plain(login: &str, password: &str) -> String {
    pimail::user::sasl::encode_base64(format!("\0{login}\0{password}").as_bytes())
}
