//! TLS end to end: STARTTLS on port 25 and 587, implicit TLS on 465, with
//! real clients (rustls, Python's smtplib, openssl s_client, swaks, curl),
//! TLS 1.2 and 1.3, RSA and ECDSA certificates in every PEM key flavour,
//! the STARTTLS injection attack (CVE-2011-0411), certificate reload on
//! SIGHUP, and clear start-up errors for unusable certificates.

mod common;
use common::tls::*;
use common::*;
use std::process::Command;
use std::time::Duration;

/// A server with certificates of `kind`, also listening for implicit TLS
/// on a submissions (465) port.
fn setup(kind: KeyKind) -> TlsServer {
    TlsServer::start(
        kind,
        Options {
            listen_submissions: true,
            ..Default::default()
        },
    )
}

/// The `Received:` headers of every message in the mbox, in order.
fn received_headers(srv: &Server) -> Vec<String> {
    python_mbox_messages(&srv.mbox_path())
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m);
            let start = text.find("Received:").expect("Received header");
            let rest = &text[start..];
            let end = rest.find(";").unwrap_or(rest.len());
            rest[..end].to_string()
        })
        .collect()
}

#[test]
fn starttls_on_port_25_every_key_kind_and_version() {
    for kind in [
        KeyKind::Ecdsa,
        KeyKind::EcdsaSec1,
        KeyKind::Rsa,
        KeyKind::RsaPkcs1,
    ] {
        let s = setup(kind);
        let mut c = s.srv.connect();
        let (_, g) = c.reply();
        let ehlo = c.expect("EHLO client.example", 250);
        assert!(ehlo.contains("STARTTLS"), "{ehlo}");
        assert!(!ehlo.contains("AUTH"), "port 25 never offers AUTH: {ehlo}");
        assert!(g.starts_with("220 "), "{g}");
        for (version, name) in [(TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")] {
            let mut t = TlsClient::starttls(s.srv.smtp, client_config(&s.certs.ca, &[version]));
            assert_eq!(t.version(), name.replace('.', "_"));
            // fullchain.pem: the leaf and the intermediate are both sent.
            assert_eq!(t.peer_chain_len(), 2, "{kind:?}");
            assert_eq!(t.peer_leaf(), s.certs.leaf_der);
            // RFC 3207: start over; no STARTTLS offered twice.
            t.expect("MAIL FROM:<bob@example.com>", 503);
            let ehlo = t.expect("EHLO client.example", 250);
            assert!(
                !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
                "{ehlo}"
            );
            t.expect("STARTTLS", 503);
            let (code, text) = t.send_message(
                "bob@example.com",
                &["alice@example.org"],
                format!("Subject: {kind:?} {name}\r\n\r\nhello\r\n").as_bytes(),
            );
            assert_eq!(code, 250, "{text}");
            t.expect("QUIT", 221);
        }
        let rec = received_headers(&s.srv);
        assert_eq!(rec.len(), 2, "{kind:?}");
        let alg = match kind {
            KeyKind::Ecdsa | KeyKind::EcdsaSec1 => "ECDSA",
            KeyKind::Rsa | KeyKind::RsaPkcs1 => "RSA",
        };
        assert!(
            rec[0].contains(&format!("(using TLSv1.2 with cipher TLS_ECDHE_{alg}_WITH_")),
            "{kind:?}: {}",
            rec[0]
        );
        assert!(
            rec[1].contains("(using TLSv1.3 with cipher TLS13_"),
            "{}",
            rec[1]
        );
        assert!(rec[1].contains("with ESMTPS id"), "{}", rec[1]);
    }
}

#[test]
fn session_resumption_tls12_and_tls13() {
    // Clients that resume sessions (Outlook, Gmail) must be served both
    // ways: resumed when they offer it, full handshakes otherwise.
    let s = setup(KeyKind::Rsa);
    for version in [TLS12, TLS13] {
        // One config = one client-side session cache.
        let config = client_config(&s.certs.ca, &[version]);
        for port in [s.srv.smtp, s.srv.addr("submission")] {
            let mut first = TlsClient::starttls(port, config.clone());
            first.expect("EHLO client.example", 250);
            first.expect("QUIT", 221);
            let mut again = TlsClient::starttls(port, config.clone());
            assert!(again.resumed(), "{version:?} on {port}: not resumed");
            again.expect("EHLO client.example", 250);
            again.expect("QUIT", 221);
        }
        let mut fresh = TlsClient::starttls(s.srv.smtp, client_config(&s.certs.ca, &[version]));
        assert!(!fresh.resumed());
        fresh.expect("EHLO client.example", 250);
    }
}

#[test]
fn starttls_injection_is_not_executed() {
    // CVE-2011-0411: a man in the middle appends a command to the client's
    // STARTTLS in the same packet; if the server kept it in its buffer it
    // would run it as if the client had sent it over TLS.
    let s = setup(KeyKind::Ecdsa);
    for port in [s.srv.smtp, s.srv.addr("submission")] {
        let mut c = Client::connect(port);
        c.hello();
        c.send_raw(b"STARTTLS\r\nHELP\r\nMAIL FROM:<mallory@example.com>\r\n");
        let (code, text) = c.reply();
        assert_eq!(code, 220, "{text}");
        let mut t = TlsClient::upgrade(c, client_config(&s.certs.ca, &[TLS13]));
        // The first reply over TLS answers our NOOP, not the injected HELP.
        let (code, text) = t.cmd("NOOP");
        assert_eq!(
            code, 250,
            "injected command ran after the handshake: {text}"
        );
        assert!(!text.contains("214"), "{text}");
        // And the injected MAIL did not open a transaction (nor count as
        // EHLO'd): the session started over.
        t.expect("MAIL FROM:<bob@example.com>", 503);
        t.expect("EHLO client.example", 250);
        t.expect("QUIT", 221);
    }
}

#[test]
fn plaintext_on_the_implicit_tls_port_gets_no_smtp() {
    let s = setup(KeyKind::Ecdsa);
    let mut c = std::net::TcpStream::connect(s.srv.addr("submissions")).unwrap();
    use std::io::Write;
    let _ = c.write_all(b"EHLO client.example\r\n");
    let got = read_all_within(&mut c, Duration::from_secs(30));
    assert!(
        !String::from_utf8_lossy(&got).contains("220"),
        "plain-text greeting on 465: {got:?}"
    );
    // The server is fine afterwards.
    let mut t = TlsClient::connect(
        s.srv.addr("submissions"),
        client_config(&s.certs.ca, &[TLS12, TLS13]),
    );
    assert_eq!(t.reply().0, 220);
}

#[test]
fn failed_handshake_does_not_disturb_others() {
    let s = setup(KeyKind::Ecdsa);
    // A client that trusts another CA gives up during the handshake.
    let other = TempDir::new("other");
    let wrong = make_certs(other.path(), "b", KeyKind::Ecdsa);
    let mut c = Client::connect(s.srv.smtp);
    c.hello();
    c.expect("STARTTLS", 220);
    let err = TlsClient::try_connect(
        s.srv.addr("submissions"),
        client_config(&wrong.ca, &[TLS13]),
    );
    assert!(err.is_err(), "a certificate from the wrong CA was accepted");
    // Garbage instead of a ClientHello.
    c.send_raw(b"EHLO not-tls\r\n");
    let rest = read_all_within(&mut c.stream, Duration::from_secs(30));
    assert!(!String::from_utf8_lossy(&rest).contains("250"), "{rest:?}");
    let mut t = TlsClient::starttls(s.srv.smtp, client_config(&s.certs.ca, &[TLS13]));
    t.expect("EHLO client.example", 250);
    assert!(s
        .srv
        .wait_log("TLS handshake failed", Duration::from_secs(10)));
}

const PY_SMTPLIB: &str = r#"
import smtplib, ssl, sys
ca, smtp, sub, subs, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
    def ctx():
        c = ssl.create_default_context(cafile=ca)
        c.minimum_version = c.maximum_version = ver
        return c
    msg = "Subject: python %s\r\n\r\nhello\r\n" % ver.name
    with smtplib.SMTP("127.0.0.1", smtp) as s:
        s.starttls(context=ctx())
        s.ehlo()
        assert "auth" not in s.esmtp_features, s.esmtp_features
        s.sendmail("bob@example.com", ["alice@example.org"], msg)
        print("25", s.sock.version(), s.sock.cipher()[0])
    with smtplib.SMTP("127.0.0.1", sub) as s:
        s.starttls(context=ctx())
        s.login("alice", password)
        s.sendmail("alice@example.org", ["alice@example.org"], msg)
        print("587", s.sock.version())
    with smtplib.SMTP_SSL("127.0.0.1", subs, context=ctx()) as s:
        s.login("alice@example.org", password)
        s.sendmail("alice+tag@example.org", ["abuse@example.org"], msg)
        print("465", s.sock.version())
"#;

#[test]
fn python_smtplib_starttls_login_and_smtp_ssl() {
    let s = setup(KeyKind::Rsa);
    let out = python(
        PY_SMTPLIB,
        &[
            &s.certs.ca,
            &s.srv.smtp.port().to_string(),
            &s.srv.addr("submission").port().to_string(),
            &s.srv.addr("submissions").port().to_string(),
            &PASSWORD,
        ],
    );
    assert!(out.contains("25 TLSv1.2 ECDHE-RSA-"), "{out}");
    assert!(out.contains("465 TLSv1.3"), "{out}");
    let rec = received_headers(&s.srv);
    assert_eq!(rec.len(), 6);
    for (i, r) in rec.iter().enumerate() {
        let version = if i < 3 { "TLSv1.2" } else { "TLSv1.3" };
        assert!(r.contains(&format!("(using {version} with cipher ")), "{r}");
        let proto = if i % 3 == 0 {
            "with ESMTPS id"
        } else {
            "with ESMTPSA id"
        };
        assert!(r.contains(proto), "{i}: {r}");
    }
}

#[test]
fn openssl_s_client_starttls_and_implicit() {
    for kind in [KeyKind::RsaPkcs1, KeyKind::EcdsaSec1] {
        let s = setup(kind);
        for version in ["-tls1_2", "-tls1_3"] {
            for (port, starttls) in [
                (s.srv.smtp, true),
                (s.srv.addr("submission"), true),
                (s.srv.addr("submissions"), false),
            ] {
                let mut args = vec!["-servername", "mail.example.org", version];
                if starttls {
                    args.extend(["-starttls", "smtp"]);
                }
                let (ok, out) =
                    s_client(port, &s.certs.ca, &args, "EHLO client.example\r\nQUIT\r\n");
                assert!(ok, "{kind:?} {version} {port}: {out}");
                assert!(out.contains("Verification: OK"), "{out}");
                let want = if version == "-tls1_2" {
                    "TLSv1.2"
                } else {
                    "TLSv1.3"
                };
                assert!(out.contains(&format!("Protocol version: {want}")), "{out}");
                assert!(out.contains("250"), "no EHLO reply over TLS: {out}");
                assert!(out.contains("221"), "no QUIT reply over TLS: {out}");
            }
        }
    }
}

#[test]
fn swaks_tls_auth_plain_and_login() {
    require("swaks", "swaks");
    // swaks does TLS through these Perl modules (Debian only recommends them).
    let perl_tls = Command::new("perl")
        .args(["-MNet::SSLeay", "-MIO::Socket::SSL", "-e1"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        perl_tls,
        "swaks needs Net::SSLeay and IO::Socket::SSL for TLS: apt-get install libnet-ssleay-perl libio-socket-ssl-perl"
    );
    let s = setup(KeyKind::Ecdsa);
    let ca = s.certs.ca.display().to_string();
    let other_dir = TempDir::new("other");
    let other_ca = make_certs(other_dir.path(), "o", KeyKind::Ecdsa)
        .ca
        .display()
        .to_string();
    let run_with = |ca: &str, port: u16, tls: &str, mech: &str, password: &str| {
        let o = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &port.to_string()])
            .args([tls, "--tls-verify", "--tls-ca-path", ca])
            .args([
                "--auth",
                mech,
                "--auth-user",
                "alice",
                "--auth-password",
                password,
            ])
            .args(["--from", "alice@example.org", "--to", "alice@example.org"])
            .args(["--header", &format!("Subject: swaks {mech} {tls}")])
            .args(["--timeout", "60"])
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let run =
        |port: u16, tls: &str, mech: &str, password: &str| run_with(&ca, port, tls, mech, password);
    let sub = s.srv.addr("submission").port();
    let subs = s.srv.addr("submissions").port();
    for (port, tls) in [(sub, "--tls"), (subs, "--tls-on-connect")] {
        for mech in ["PLAIN", "LOGIN"] {
            let (ok, out) = run(port, tls, mech, PASSWORD);
            assert!(ok, "swaks {tls} {mech}: {out}");
            assert!(out.contains("235 2.7.0"), "{out}");
        }
    }
    let (ok, out) = run(sub, "--tls", "PLAIN", "wrong-password");
    assert!(!ok, "{out}");
    assert!(out.contains("535 5.7.8"), "{out}");
    // swaks really verifies: trusting another CA, it gives up before AUTH.
    let (ok, out) = run_with(&other_ca, sub, "--tls", "PLAIN", PASSWORD);
    assert!(!ok, "{out}");
    assert!(!out.contains("235 "), "{out}");
    let msgs = python_mbox_messages(&s.srv.mbox_path());
    assert_eq!(msgs.len(), 4);
    for m in &msgs {
        let m = String::from_utf8_lossy(m);
        assert!(m.contains("with ESMTPSA id"), "{m}");
        assert!(m.contains("Subject: swaks"), "{m}");
    }
}

#[test]
fn curl_ssl_reqd_submission_and_smtps() {
    require("curl", "curl");
    let s = setup(KeyKind::Rsa);
    let msg = s.srv.dir.path().join("curl-msg.txt");
    std::fs::write(&msg, "Subject: curl\r\n\r\nsent by curl\r\n").unwrap();
    let user = format!("alice:{PASSWORD}");
    for url in [
        format!("smtp://127.0.0.1:{}", s.srv.addr("submission").port()),
        format!("smtps://127.0.0.1:{}", s.srv.addr("submissions").port()),
    ] {
        let o = curl_tls(&s.certs.ca)
            .args(["--url", &url, "--user", &user])
            .args(["--mail-from", "alice@example.org"])
            .args(["--mail-rcpt", "alice@example.org"])
            .arg("--upload-file")
            .arg(&msg)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let msgs = python_mbox_messages(&s.srv.mbox_path());
    assert_eq!(msgs.len(), 2);
    assert!(String::from_utf8_lossy(&msgs[1]).contains("sent by curl"));
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections() {
    let dir = TempDir::new("reload");
    let first = make_certs(dir.path(), "first", KeyKind::Ecdsa);
    let second = make_certs(dir.path(), "second", KeyKind::Rsa);
    // The files certbot renews in place.
    let cert = dir.path().join("fullchain.pem");
    let key = dir.path().join("privkey.pem");
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let srv = Server::with(Options {
        tls: Some((cert.clone(), key.clone())),
        listen_submissions: true,
        listen_pop3: true,
        listen_pop3s: true,
        ..Default::default()
    });
    let first_config = client_config(&first.ca, &[TLS13]);
    let second_config = client_config(&second.ca, &[TLS13]);
    let mut old = TlsClient::starttls(srv.smtp, first_config.clone());
    assert_eq!(old.peer_leaf(), first.leaf_der);

    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    srv.signal("HUP");
    assert!(
        srv.wait_log("reloaded TLS certificate", Duration::from_secs(20)),
        "{:?}",
        srv.log()
    );
    for port in [srv.smtp, srv.addr("submission")] {
        let t = TlsClient::starttls(port, second_config.clone());
        assert_eq!(t.peer_leaf(), second.leaf_der);
    }
    let t = TlsClient::connect(srv.addr("submissions"), second_config.clone());
    assert_eq!(t.peer_leaf(), second.leaf_der);
    // POP3 shares the certificate: pop3s and STLS see the new one too.
    let t = TlsClient::connect(srv.addr("pop3s"), second_config.clone());
    assert_eq!(t.peer_leaf(), second.leaf_der);
    let mut p = Client::connect(srv.addr("pop3"));
    assert!(p.line().starts_with("+OK"));
    p.send("STLS");
    assert!(p.line().starts_with("+OK"));
    let t = TlsClient::upgrade(p, second_config.clone());
    assert_eq!(t.peer_leaf(), second.leaf_der);
    // The session that started before the reload goes on undisturbed.
    old.expect("EHLO client.example", 250);
    let (code, text) = old.send_message("bob@example.com", &["alice@example.org"], b"x\r\n");
    assert_eq!(code, 250, "{text}");

    // A broken renewal (key does not match) is refused; the good pair stays.
    std::fs::copy(&first.key, &key).unwrap();
    srv.signal("HUP");
    assert!(
        srv.wait_log("not reloaded, keeping the old one", Duration::from_secs(20)),
        "{:?}",
        srv.log()
    );
    let t = TlsClient::starttls(srv.smtp, second_config);
    assert_eq!(t.peer_leaf(), second.leaf_der);
}

#[test]
fn unusable_certificates_stop_the_start_with_a_clear_error() {
    let dir = TempDir::new("bad");
    let good = make_certs(dir.path(), "good", KeyKind::Ecdsa);
    let other = make_certs(dir.path(), "other", KeyKind::Ecdsa);
    let missing = dir.path().join("missing.pem");
    let cases = [
        ((missing.clone(), good.key.clone()), "missing.pem"),
        ((good.cert.clone(), missing.clone()), "missing.pem"),
        ((good.cert.clone(), other.key.clone()), "does not belong"),
        ((good.key.clone(), good.key.clone()), "no certificate found"),
        (
            (good.cert.clone(), good.cert.clone()),
            "no private key found",
        ),
    ];
    for ((cert, key), want) in cases {
        let (code, err) = Server::start_fails(Options {
            tls: Some((cert.clone(), key.clone())),
            ..Default::default()
        });
        assert_eq!(code, Some(78), "EX_CONFIG expected: {err}");
        assert!(err.contains(want), "{want:?} not in: {err}");
        // The key that names the file, with the config file and line
        // (issue 14), or the section for a pair that does not match.
        assert!(
            err.contains("tls.cert") || err.contains("tls.key") || err.contains("[tls]"),
            "{err}"
        );
        // check-config says the same.
        let cfg_dir = TempDir::new("check");
        let config = Server::write_config(
            cfg_dir.path(),
            &Options {
                tls: Some((cert, key)),
                ..Default::default()
            },
        );
        let o = pimail_command()
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(78));
        assert!(String::from_utf8_lossy(&o.stderr).contains(want));
    }
    // Unreadable (permissions) as well, unless we are root and can read
    // anything.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&good.key, std::fs::Permissions::from_mode(0o000)).unwrap();
        let (code, err) = Server::start_fails(Options {
            tls: good.pair(),
            ..Default::default()
        });
        assert_eq!(code, Some(78));
        assert!(err.contains("ermission denied"), "{err}");
    }
}
