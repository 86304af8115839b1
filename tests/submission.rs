//! Submission and relaying, end to end: AUTH PLAIN/LOGIN on 587 and 465,
//! the sender rule, no open relay by any trick, and login throttling with
//! fail2ban-friendly logs that never contain a password.

mod common;
use common::tls::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn setup() -> TlsServer {
    setup_with("")
}

/// A server with an ECDSA certificate, also on a submissions (465) port,
/// with `limits` in `[limits]`.
fn setup_with(limits: &str) -> TlsServer {
    TlsServer::start(
        KeyKind::Ecdsa,
        Options {
            listen_submissions: true,
            limits: limits.into(),
            ..Default::default()
        },
    )
}

/// Remote recipients written every way that has opened relays in other
/// servers. None of them may be accepted without authentication.
const RELAY_TRICKS: &[&str] = &[
    "bob@example.com",
    "BOB@EXAMPLE.COM",
    // Source routes through our domain (RFC 5321 C.1: ignore the route).
    "@example.org:bob@example.com",
    "@example.org,@mail.example.org:bob@example.com",
    // Address literals, ours or not.
    "alice@[127.0.0.1]",
    "alice@[192.0.2.1]",
    "alice@[IPv6:::1]",
    // A look-alike of our domain.
    "alice@example.org.example.com",
    "alice@xexample.org",
];

/// Tricks that name our domain last: %-hack, UUCP bang paths, quoted local
/// parts holding a remote address. Ours, but no such user: 550, not 250.
const LOCAL_LOOKING_TRICKS: &[&str] = &[
    "bob%example.com@example.org",
    "example.com!bob@example.org",
    "\"bob@example.com\"@example.org",
    "\"bob%example.com\"@example.org",
    "\"@example.com:bob\"@example.org",
];

/// Syntax that must not be read as a remote path at all.
const MALFORMED_TRICKS: &[&str] = &[
    "bob@example.com@example.org",
    "bob@example.com>",
    "<bob@example.com>",
    "bob@example.com, alice@example.org",
];

/// One command, one reply, over whichever client.
type Cmd = Box<dyn FnMut(&str) -> (u16, String)>;

fn assert_refused(rcpt: &str, code: u16, text: &str) {
    assert!(
        code >= 500,
        "RCPT TO:<{rcpt}> accepted without AUTH: {code} {text}"
    );
}

/// Tries every relay trick on an open transaction; returns nothing, fails
/// on the first accepted one.
fn try_relay<F: FnMut(&str) -> (u16, String)>(mut cmd: F, label: &str) {
    for r in RELAY_TRICKS {
        let line = format!("RCPT TO:<{r}>");
        let (code, text) = cmd(&line);
        assert_refused(r, code, &text);
        assert!(
            text.contains("554 5.7.1") || text.starts_with("501") || text.starts_with("553"),
            "{label}: {line} -> {text}"
        );
    }
    for r in LOCAL_LOOKING_TRICKS {
        let line = format!("RCPT TO:<{r}>");
        let (code, text) = cmd(&line);
        assert_refused(r, code, &text);
        assert!(
            text.starts_with("550 5.1.1") || text.starts_with("501"),
            "{label}: {line} -> {text}"
        );
    }
    for r in MALFORMED_TRICKS {
        let line = format!("RCPT TO:<{r}>");
        let (code, text) = cmd(&line);
        assert_refused(r, code, &text);
    }
    // Pipelined DATA after only refused recipients delivers nothing.
    let (code, text) = cmd("DATA");
    assert_eq!(code, 554, "{label}: DATA -> {text}");
}

#[test]
fn no_open_relay_by_any_trick() {
    // Every trick is a refused command; keep the session open for all.
    let s = setup_with("max_errors = 1000");
    // Port 25, plain, the sender spoofing our own user's address, the
    // null sender, and a stranger.
    for from in ["alice@example.org", "", "mallory@example.com"] {
        let mut c = s.srv.connect();
        c.hello();
        c.expect(&format!("MAIL FROM:<{from}>"), 250);
        try_relay(|l| c.cmd(l), &format!("port 25 from <{from}>"));
        // AUTH is not even possible on port 25.
        c.expect("RSET", 250);
        c.expect(&format!("AUTH PLAIN {}", plain("alice", PASSWORD)), 503);
    }
    // Port 25 over TLS changes nothing.
    let config = client_config(&s.certs.ca, &[TLS13]);
    let mut t = TlsClient::starttls(s.srv.smtp, config.clone());
    let ehlo = t.expect("EHLO client.example", 250);
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    t.expect(&format!("AUTH PLAIN {}", plain("alice", PASSWORD)), 503);
    t.expect("MAIL FROM:<alice@example.org>", 250);
    try_relay(|l| t.cmd(l), "port 25 over TLS");

    // Submission without AUTH: no transaction at all.
    for tls in [false, true] {
        let sub = s.srv.addr("submission");
        let mut c: Cmd = if tls {
            let mut t = TlsClient::starttls(sub, config.clone());
            t.expect("EHLO client.example", 250);
            Box::new(move |l| t.cmd(l))
        } else {
            let mut c = Client::connect(sub);
            c.hello();
            Box::new(move |l| c.cmd(l))
        };
        let (code, text) = c("MAIL FROM:<alice@example.org>");
        assert_eq!(code, 530, "{text}");
        assert!(text.contains("5.7.0"), "{text}");
        for r in RELAY_TRICKS {
            let (code, text) = c(&format!("RCPT TO:<{r}>"));
            assert_eq!(code, 503, "{r}: {text}");
        }
        // A failed login does not open the door either.
        let (code, text) = c(&format!("AUTH PLAIN {}", plain("alice", "guess")));
        assert_eq!(code, 535, "{text}");
        let (code, _) = c("MAIL FROM:<alice@example.org>");
        assert_eq!(code, 530);
    }
    // Implicit TLS without AUTH: the same.
    let mut t = TlsClient::connect(s.srv.addr("submissions"), config);
    assert_eq!(t.reply().0, 220);
    t.expect("EHLO client.example", 250);
    t.expect("MAIL FROM:<alice@example.org>", 530);
    t.expect("RCPT TO:<bob@example.com>", 503);
    // Nothing reached the mbox, and nothing was accepted for anyone.
    assert!(s.srv.mbox().is_empty());
    assert!(!s.srv.log().iter().any(|l| l.contains("accepted id=")));
}

#[test]
fn authenticated_submission_on_587_and_465() {
    let s = setup();
    let config = client_config(&s.certs.ca, &[TLS12, TLS13]);
    // 587: STARTTLS, then AUTH is offered; PLAIN.
    let mut t = TlsClient::starttls(s.srv.addr("submission"), config.clone());
    let ehlo = t.expect("EHLO client.example", 250);
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    let text = t.expect(&format!("AUTH PLAIN {}", plain("alice", "wrong")), 535);
    assert!(text.starts_with("535 5.7.8"), "{text}");
    let text = t.expect(&format!("AUTH PLAIN {}", plain("alice", PASSWORD)), 235);
    assert!(text.starts_with("235 2.7.0"), "{text}");
    // The envelope sender must be the user's.
    for other in ["bob@example.org", "alice@example.com", ""] {
        let text = t.expect(&format!("MAIL FROM:<{other}>"), 553);
        assert!(text.contains("5.7.1"), "{text}");
    }
    t.expect("MAIL FROM:<alice+outgoing@example.org>", 250);
    // Remote recipients are accepted for the outbound queue once
    // authenticated (what happens to them is the queue's business).
    let text = t.expect("RCPT TO:<bob@example.com>", 250);
    assert!(text.contains("2.1.5"), "{text}");
    t.expect("RSET", 250);
    let (code, text) = t.send_message(
        "alice@example.org",
        &["abuse@example.org"],
        b"Subject: to myself\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250, "{text}");
    t.expect("QUIT", 221);

    // 465: implicit TLS; LOGIN with the full address as user name.
    let mut t = TlsClient::connect(s.srv.addr("submissions"), config);
    assert_eq!(t.reply().0, 220);
    t.expect("EHLO client.example", 250);
    assert_eq!(t.cmd("AUTH LOGIN").1, "334 VXNlcm5hbWU6\r\n");
    let user = pimail::user::sasl::encode_base64(b"alice@example.org");
    assert_eq!(t.cmd(&user).1, "334 UGFzc3dvcmQ6\r\n");
    t.expect(&pimail::user::sasl::encode_base64(PASSWORD.as_bytes()), 235);
    let (code, text) = t.send_message(
        "alice@example.org",
        &["alice@example.org"],
        b"Subject: via 465\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let msgs = python_mbox_messages(&s.srv.mbox_path());
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        let m = String::from_utf8_lossy(m);
        assert!(m.contains("with ESMTPSA id"), "{m}");
        assert!(m.contains("(using TLSv1.3 with cipher TLS13_"), "{m}");
    }
}

#[test]
fn auth_on_loopback_without_tls() {
    // SPEC: AUTH only after TLS, except on loopback (a local client needs
    // no TLS to keep a password secret). The non-loopback case cannot be
    // produced honestly over loopback sockets; session unit tests cover it.
    let srv = Server::start();
    let mut c = Client::connect(srv.addr("submission"));
    let (code, _) = c.reply();
    assert_eq!(code, 220);
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(
        !ehlo.contains("STARTTLS"),
        "no certificate configured: {ehlo}"
    );
    c.expect("AUTH PLAIN", 334);
    c.expect(&plain("alice", PASSWORD), 235);
    let (code, text) = c.send_message("alice@example.org", &["alice@example.org"], b"x\r\n");
    assert_eq!(code, 250, "{text}");
}

const PY_LOGIN: &str = r#"
import smtplib, sys
port, source, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=60)
s.ehlo()
try:
    s.login("alice", password)
    print("OK")
except smtplib.SMTPAuthenticationError as e:
    print("FAIL", e.smtp_code)
s.quit()
"#;

/// Logs in with Python's smtplib from `source` (any 127.x address is this
/// machine); "OK" or "FAIL <code>".
fn py_login(port: u16, source: &str, password: &str) -> String {
    let o = Command::new("python3")
        .args(["-c", PY_LOGIN, &port.to_string(), source, password])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn brute_force_is_slowed_then_blocked_per_address() {
    let srv = Server::with(Options {
        listen_pop3: true,
        ..Default::default()
    });
    let port = srv.addr("submission");
    let wrong: Vec<String> = (0..20).map(|i| format!("guess-{i}-Zq")).collect();
    let mut codes = Vec::new();
    let mut elapsed = Vec::new();
    for w in &wrong {
        // A fresh connection per guess, as a guessing bot would do.
        let mut c = Client::connect(port);
        c.hello();
        let start = Instant::now();
        let (code, text) = c.cmd(&format!("AUTH PLAIN {}", plain("alice", w)));
        elapsed.push(start.elapsed());
        codes.push(code);
        assert!(code == 535 || code == 454, "{text}");
    }
    // The first ones fail plainly, the later ones are refused outright.
    assert_eq!(codes[0], 535);
    let first_block = codes.iter().position(|&c| c == 454).expect("never blocked");
    assert!(
        first_block <= 12,
        "blocked only after {first_block}: {codes:?}"
    );
    assert!(codes[first_block..].iter().all(|&c| c == 454), "{codes:?}");
    // Slowed down: the failures before the block took noticeably longer
    // than the first two (a lower bound; no upper bound on a busy machine).
    let slowed: Duration = elapsed[2..first_block].iter().sum();
    assert!(slowed >= Duration::from_secs(2), "not slowed: {elapsed:?}");
    // Even the right password is refused from the blocked address...
    assert_eq!(py_login(port.port(), "127.0.0.1", PASSWORD), "FAIL 454");
    // ...while another address logs in fine.
    assert_eq!(py_login(port.port(), "127.0.0.2", PASSWORD), "OK");
    // The block covers every login of the address: POP3 too.
    let mut p = Client::connect(srv.addr("pop3"));
    assert!(p.line().starts_with("+OK"));
    p.send("USER alice");
    assert!(p.line().starts_with("+OK"));
    p.send(&format!("PASS {PASSWORD}"));
    let r = p.line();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    // One greppable line per failure with the peer address.
    let log = srv.log();
    let failures: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("auth failed: rhost=127.0.0.1 "))
        .collect();
    assert_eq!(failures.len(), first_block, "{log:#?}");
    assert!(log
        .iter()
        .any(|l| l.contains("auth refused: rhost=127.0.0.1 ")));
    assert!(log.iter().any(|l| l.contains("auth ok: rhost=127.0.0.2 ")));
    // Never a password, in clear or base64.
    for l in &log {
        for w in wrong.iter().map(String::as_str).chain([PASSWORD]) {
            assert!(!l.contains(w), "password in log: {l}");
            assert!(!l.contains(&plain("alice", w)), "password in log: {l}");
        }
    }
}

#[test]
fn wrong_login_names_fail_like_wrong_passwords() {
    let srv = Server::start();
    let mut c = Client::connect(srv.addr("submission"));
    c.hello();
    for login in ["bob", "alice@example.com", "root", "alice "] {
        let text = c.expect(&format!("AUTH PLAIN {}", plain(login, PASSWORD)), 535);
        assert!(text.starts_with("535 5.7.8"), "{text}");
    }
    // Someone typing the password into the user field does not get it
    // logged.
    let text = c.expect(&format!("AUTH PLAIN {}", plain(PASSWORD, PASSWORD)), 535);
    assert!(text.contains("5.7.8"));
    assert!(srv.wait_log("user=(unknown)", Duration::from_secs(10)));
    assert!(!srv.log().iter().any(|l| l.contains(PASSWORD)));
}

#[test]
fn authenticated_submission_is_queued_and_delivered_to_the_mx() {
    use common::fakes::{ip, Behavior, MxWorld};
    let w = MxWorld::one("example.com", ip(7), Behavior::default());
    let s = TlsServer::start(
        KeyKind::Ecdsa,
        Options {
            listen_submissions: true,
            ..w.options("")
        },
    );
    let (srv, certs) = (&s.srv, &s.certs);
    let mut t = TlsClient::connect(srv.addr("submissions"), client_config(&certs.ca, &[TLS13]));
    assert_eq!(t.reply().0, 220);
    t.expect("EHLO laptop.example", 250);
    t.expect(&format!("AUTH PLAIN {}", plain("alice", PASSWORD)), 235);
    let (code, text) = t.send_message(
        "alice@example.org",
        &["bob@example.com", "alice@example.org"],
        b"Subject: out and home\r\n\r\nhello\r\n",
    );
    assert_eq!(code, 250, "{text}");
    t.expect("QUIT", 221);
    // The remote copy reaches the MX, the local one the mbox.
    let got = w.mx[0].wait_messages(1, Duration::from_secs(40));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "alice@example.org");
    assert_eq!(got[0].rcpts, vec!["bob@example.com"]);
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.contains("Subject: out and home"), "{data}");
    assert!(data.contains("with ESMTPSA id"), "{data}");
    let msgs = python_mbox_messages(&srv.mbox_path());
    assert_eq!(msgs.len(), 1);
    assert!(String::from_utf8_lossy(&msgs[0]).contains("Subject: out and home"));
}
