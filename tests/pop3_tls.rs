//! POP3 over TLS: STLS (RFC 2595) on the pop3 port and implicit TLS on
//! pop3s (RFC 8314), with Python's poplib, openssl s_client and curl; the
//! STLS injection attack (CVE-2011-0411 class); passwords only over TLS
//! or loopback, throttled like SMTP AUTH.

mod common;
use common::tls::*;
use common::*;

/// A server with an ECDSA certificate, listening for POP3 (with STLS) and
/// POP3S.
fn setup() -> TlsServer {
    TlsServer::start(
        KeyKind::Ecdsa,
        Options {
            listen_pop3: true,
            listen_pop3s: true,
            ..Default::default()
        },
    )
}

fn deliver(srv: &Server, subject: &str) {
    let mut c = srv.connect();
    c.hello();
    let (code, text) = c.send_message(
        "bob@example.com",
        &["alice@example.org"],
        format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
    );
    assert_eq!(code, 250, "{text}");
}

const PY_POP: &str = r#"
import poplib, ssl, sys
ca, pop, pops, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
    c = ssl.create_default_context(cafile=ca)
    c.minimum_version = c.maximum_version = ver
    p = poplib.POP3("127.0.0.1", pop, timeout=60)
    assert "STLS" in p.capa(), p.capa()
    p.stls(context=c)
    assert "STLS" not in p.capa(), p.capa()
    p.user("alice")
    p.pass_(password)
    print("stls", p.sock.version(), p.stat()[0])
    p.quit()
    p = poplib.POP3_SSL("127.0.0.1", pops, context=c, timeout=60)
    p.user("alice@example.org")
    p.pass_(password)
    lines = p.retr(1)[1]
    print("pop3s", p.sock.version(), p.stat()[0], any(b"Subject: one" in l for l in lines))
    p.quit()
"#;

#[test]
fn poplib_stls_and_pop3_ssl() {
    let s = setup();
    deliver(&s.srv, "one");
    let out = python(
        PY_POP,
        &[
            &s.certs.ca,
            &s.srv.addr("pop3").port().to_string(),
            &s.srv.addr("pop3s").port().to_string(),
            &PASSWORD,
        ],
    );
    for want in [
        "stls TLSv1.2 1",
        "pop3s TLSv1.2 1 True",
        "stls TLSv1.3 1",
        "pop3s TLSv1.3 1 True",
    ] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
}

#[test]
fn stls_injection_is_not_executed() {
    let s = setup();
    deliver(&s.srv, "one");
    let mut c = Client::connect(s.srv.addr("pop3"));
    assert!(c.line().starts_with("+OK"));
    // A man in the middle appends USER to STLS; after the handshake the
    // client's PASS must not find it.
    c.send_raw(b"STLS\r\nUSER alice\r\n");
    let ok = c.line();
    assert!(ok.starts_with("+OK"), "{ok}");
    let mut t = TlsClient::upgrade(c, client_config(&s.certs.ca, &[TLS13]));
    t.send(&format!("PASS {PASSWORD}"));
    let reply = t.line();
    assert!(
        reply.starts_with("-ERR"),
        "injected USER ran after the handshake: {reply}"
    );
    t.send("USER alice");
    assert!(t.line().starts_with("+OK"));
    t.send(&format!("PASS {PASSWORD}"));
    assert!(t.line().starts_with("+OK"));
    t.send("QUIT");
    assert!(t.line().starts_with("+OK"));
}

#[test]
fn openssl_s_client_starttls_pop3_and_pop3s() {
    require("openssl", "openssl");
    let s = setup();
    deliver(&s.srv, "one");
    for (addr, starttls) in [(s.srv.addr("pop3"), true), (s.srv.addr("pop3s"), false)] {
        let args: &[&str] = if starttls {
            &["-starttls", "pop3"]
        } else {
            &[]
        };
        let input = format!("USER alice\r\nPASS {PASSWORD}\r\nSTAT\r\nQUIT\r\n");
        let (ok, out) = s_client(addr, &s.certs.ca, args, &input);
        assert!(ok, "{out}");
        assert!(out.contains("Verification: OK"), "{out}");
        assert!(out.contains("+OK 1 "), "no STAT over TLS: {out}");
    }
}

#[test]
fn curl_pop3s_and_stls() {
    require("curl", "curl");
    let s = setup();
    deliver(&s.srv, "fetched by curl");
    let user = format!("alice:{PASSWORD}");
    for url in [
        format!("pop3://127.0.0.1:{}/1", s.srv.addr("pop3").port()),
        format!("pop3s://127.0.0.1:{}/1", s.srv.addr("pop3s").port()),
    ] {
        let o = curl_tls(&s.certs.ca)
            .args(["--user", &user, &url])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("Subject: fetched by curl"), "{out}");
    }
}
