//! IMAP over TLS (SPEC "Capabilities"): STARTTLS on the imap port (RFC
//! 9051 6.2.1) and implicit TLS on imaps (RFC 8314), with Python's
//! imaplib and curl; the capabilities before and after STARTTLS; the
//! STARTTLS command injection (CVE-2011-0411 class).

mod common;
use common::tls::*;
use common::*;

fn setup() -> TlsServer {
    TlsServer::start(
        KeyKind::Ecdsa,
        Options {
            listen_imap: true,
            listen_extra: "imaps = [\"127.0.0.1:0\"]\n".into(),
            ..Default::default()
        },
    )
}

#[test]
fn imaplib_starttls_and_imap4_ssl() {
    let s = setup();
    s.srv.deliver(&smtp_stuff(b"Subject: one\r\n\r\nbody\r\n"));
    let imap = s.srv.addr("imap");
    let imaps = s.srv.addr("imaps");
    let out = python(
        r#"
import imaplib, ssl, sys
ca, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
M = imaplib.IMAP4('127.0.0.1', port, timeout=60)
print('BEFORE', ' '.join(M.capabilities))
M.starttls(ssl_context=ctx)
print('AFTER', ' '.join(M.capabilities))
print('TLS', M.sock.version())
typ, data = M.login('alice', 'secret')
print('LOGIN', typ)
typ, data = M.select('INBOX')
print('SELECT', data)
M.logout()
M = imaplib.IMAP4_SSL('127.0.0.1', sport, ssl_context=ctx, timeout=60)
print('IMAPS', ' '.join(M.capabilities))
M.login('alice@example.org', 'secret')
typ, data = M.select('INBOX')
typ, data = M.fetch('1', '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
print('FETCH', data[0][1])
M.logout()
"#,
        &[
            &s.certs.ca,
            &imap.port().to_string(),
            &imaps.port().to_string(),
        ],
    );
    let line = |p: &str| {
        out.lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("{p}: {out}"))
            .to_string()
    };
    assert!(line("BEFORE").contains("STARTTLS"), "{out}");
    // After STARTTLS the list is asked again and has no STARTTLS (RFC
    // 9051 6.2.1), still AUTH=PLAIN.
    assert!(!line("AFTER").contains("STARTTLS"), "{out}");
    assert!(line("AFTER").contains("AUTH=PLAIN"), "{out}");
    assert!(line("TLS").starts_with("TLS TLSv1."), "{out}");
    assert!(line("LOGIN").contains("OK"), "{out}");
    assert!(line("SELECT").contains("[b'1']"), "{out}");
    // Implicit TLS: no STARTTLS offered, AUTH=PLAIN is.
    assert!(!line("IMAPS").contains("STARTTLS"), "{out}");
    assert!(line("IMAPS").contains("AUTH=PLAIN"), "{out}");
    assert!(line("FETCH").contains("Subject: one"), "{out}");
}

#[test]
fn starttls_drops_commands_pipelined_before_the_handshake() {
    let s = setup();
    let imap = s.srv.addr("imap");
    let out = python(
        r#"
import socket, ssl, sys
ca, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(('127.0.0.1', port), timeout=30)
f = s.makefile('rb')
print('GREETING', f.readline().decode().strip())
# The injected NOOP after STARTTLS, in the same packet, must not be run
# inside the TLS session (CVE-2011-0411 class).
s.sendall(b'a STARTTLS\r\nb NOOP\r\n')
print('STARTTLS', f.readline().decode().strip())
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(s, server_hostname='mail.example.org')
tf = t.makefile('rb')
t.sendall(b'c NOOP\r\n')
print('NEXT', tf.readline().decode().strip())
t.sendall(b'd STARTTLS\r\n')
print('AGAIN', tf.readline().decode().strip())
"#,
        &[&s.certs.ca, &imap.port().to_string()],
    );
    assert!(out.contains("STARTTLS a OK"), "{out}");
    // The first answer inside TLS is to c, not to the injected b.
    assert!(out.contains("NEXT c OK"), "{out}");
    assert!(out.contains("AGAIN d BAD"), "{out}");
}

#[test]
fn curl_over_imaps_and_starttls() {
    let s = setup();
    s.srv.deliver(&smtp_stuff(b"Subject: one\r\n\r\nbody\r\n"));
    for url in [
        format!(
            "imaps://mail.example.org:{}/INBOX;UID=1",
            s.srv.addr("imaps").port()
        ),
        format!(
            "imap://mail.example.org:{}/INBOX;UID=1",
            s.srv.addr("imap").port()
        ),
    ] {
        let o = curl_tls(&s.certs.ca)
            .args([
                "--resolve",
                &format!(
                    "mail.example.org:{}:127.0.0.1",
                    url.split(':').nth(2).unwrap().split('/').next().unwrap()
                ),
            ])
            .args(["-u", "alice:secret", &url])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{url}: {o:?}");
        assert!(body.contains("Subject: one"), "{url}: {body}");
    }
}

/// A client that is not on loopback (its address from a PROXY header):
/// `LOGINDISABLED` and no AUTH= before TLS, LOGIN refused with
/// `[PRIVACYREQUIRED]`; after STARTTLS the login works (RFC 9051 6.2.3,
/// SPEC "Capabilities").
#[test]
fn remote_clients_log_in_only_after_starttls() {
    let port = free_port();
    let s = TlsServer::start(
        KeyKind::Ecdsa,
        Options {
            listen_extra: format!(
                "imap = [\"127.0.0.1:{port}\"]\nproxy_protocol = [\"127.0.0.1:{port}\"]\n"
            ),
            ..Default::default()
        },
    );
    let out = python(
        r#"
import socket, ssl, sys
ca, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(('127.0.0.1', port), timeout=30)
s.sendall(b'PROXY TCP4 203.0.113.5 127.0.0.1 40000 143\r\n')
f = s.makefile('rb')
print('GREETING', f.readline().decode().strip())
s.sendall(b'a LOGIN alice secret\r\n')
print('LOGIN', f.readline().decode().strip())
s.sendall(b'b AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n')
print('AUTH', f.readline().decode().strip())
s.sendall(b'c STARTTLS\r\n')
print('STARTTLS', f.readline().decode().strip())
t = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname='mail.example.org')
tf = t.makefile('rb')
t.sendall(b'd CAPABILITY\r\n')
print('CAPS', tf.readline().decode().strip())
tf.readline()
t.sendall(b'e LOGIN alice secret\r\n')
print('LOGIN2', tf.readline().decode().strip())
"#,
        &[&s.certs.ca, &port.to_string()],
    );
    let line = |p: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{p} ")))
            .unwrap_or_else(|| panic!("{p}: {out}"))
            .to_string()
    };
    let g = line("GREETING");
    assert!(
        g.contains("LOGINDISABLED") && g.contains("STARTTLS"),
        "{out}"
    );
    assert!(!g.contains("AUTH="), "{out}");
    assert!(
        line("LOGIN").starts_with("LOGIN a NO [PRIVACYREQUIRED]"),
        "{out}"
    );
    assert!(line("AUTH").starts_with("AUTH b NO"), "{out}");
    assert!(line("STARTTLS").contains("c OK"), "{out}");
    let caps = line("CAPS");
    assert!(
        caps.contains("AUTH=PLAIN") && !caps.contains("LOGINDISABLED"),
        "{out}"
    );
    assert!(
        line("LOGIN2").starts_with("LOGIN2 e OK [CAPABILITY"),
        "{out}"
    );
}
