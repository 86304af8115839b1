//! POP3 over TLS: STLS (RFC 2595) on the pop3 port and implicit TLS on
//! pop3s (RFC 8314), with Python's poplib, openssl s_client and curl; the
//! STLS injection attack (CVE-2011-0411 class); passwords only over TLS
//! or loopback, throttled like SMTP AUTH.

mod common;
use common::tls::*;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Setup {
    srv: Server,
    certs: Certs,
    _dir: TempDir,
}

fn setup() -> Setup {
    let dir = TempDir::new("certs");
    let certs = make_certs(dir.path(), "p", KeyKind::Ecdsa);
    let srv = Server::with(Options {
        tls: certs.pair(),
        listen_pop3: true,
        listen_pop3s: true,
        ..Default::default()
    });
    Setup {
        srv,
        certs,
        _dir: dir,
    }
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
    let o = Command::new("python3")
        .arg("-c")
        .arg(PY_POP)
        .arg(&s.certs.ca)
        .arg(s.srv.addr("pop3").port().to_string())
        .arg(s.srv.addr("pop3s").port().to_string())
        .arg(PASSWORD)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
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
    let ca = s.certs.ca.display().to_string();
    for (addr, starttls) in [(s.srv.addr("pop3"), true), (s.srv.addr("pop3s"), false)] {
        let addr = addr.to_string();
        let mut args = vec![
            "s_client",
            "-connect",
            &addr,
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-verify_hostname",
            "mail.example.org",
            "-brief",
            "-nocommands",
        ];
        if starttls {
            args.extend(["-starttls", "pop3"]);
        }
        let mut child = Command::new("openssl")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let pw = PASSWORD.to_string();
        std::thread::spawn(move || {
            use std::io::Write;
            for l in [
                "USER alice\r\n".to_string(),
                format!("PASS {pw}\r\n"),
                "STAT\r\n".into(),
                "QUIT\r\n".into(),
            ] {
                std::thread::sleep(Duration::from_millis(300));
                let _ = stdin.write_all(l.as_bytes());
            }
            std::thread::sleep(Duration::from_millis(500));
        });
        let o = child.wait_with_output().unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{out}");
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
        let o = Command::new("curl")
            .args(["--silent", "--show-error", "--ssl-reqd", "--max-time", "60"])
            .arg("--cacert")
            .arg(&s.certs.ca)
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
