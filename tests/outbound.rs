//! Outbound delivery end to end: the real server and `pimail sendmail`,
//! a fake DNS server and fake MX servers on loopback (127.0.0.x, one port
//! for all, reached through `outbound.mx_port`). No mocks of our code.

mod common;
use common::fakes::*;
use common::*;
use hickory_proto::rr::RecordType;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

fn msg(subject: &str) -> Vec<u8> {
    format!("From: alice@example.org\nTo: someone\nSubject: {subject}\nMessage-ID: <{subject}@example.org>\nDate: Wed, 25 Nov 2026 03:00:00 +0000\n\nHello.\n.leading dot\nFrom the start\n")
        .into_bytes()
}

fn send(srv: &Server, rcpts: &[&str], subject: &str) {
    let (code, err) = srv.sendmail(rcpts, &msg(subject));
    assert_eq!(code, 0, "sendmail failed: {err}");
}

/// A port on 127.0.0.x where nothing listens (connections are refused).
fn free_port(last: u8) -> u16 {
    let l = std::net::TcpListener::bind((ip(last), 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// Parses the mbox with Python's email package; for each message: the
/// envelope sender line, Content-Type, and for reports the
/// delivery-status fields per recipient, plus the returned headers.
fn python_reports(srv: &Server) -> Vec<String> {
    let script = r#"
import mailbox, sys, json
out = []
for m in mailbox.mbox(sys.argv[1], create=False):
    d = {"from_": m.get_from(), "content_type": m.get_content_type(), "to": m["To"], "recipients": [], "returned": ""}
    if m.is_multipart():
        for part in m.walk():
            if part.get_content_type() == "message/delivery-status":
                blocks = part.get_payload()
                d["reporting_mta"] = blocks[0]["Reporting-MTA"]
                for b in blocks[1:]:
                    d["recipients"].append({k: b[k] for k in ("Final-Recipient", "Action", "Status", "Diagnostic-Code", "Remote-MTA")})
            if part.get_content_type() == "text/rfc822-headers":
                d["returned"] = part.get_payload()
    out.append(json.dumps(d))
print("\n".join(out))
"#;
    python(script, &[&srv.mbox_path()])
        .lines()
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect()
}

fn wait_reports(srv: &Server, n: usize) -> Vec<String> {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let r = if srv.mbox_path().exists() {
            python_reports(srv)
        } else {
            vec![]
        };
        if r.len() >= n || std::time::Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `queue list` once it contains `needle` (the state is saved just after
/// the log line).
fn wait_list(srv: &Server, needle: &str) -> String {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let (_, out) = srv.queue_cmd(&["list"]);
        if out.contains(needle) || std::time::Instant::now() > end {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_queue_empty(srv: &Server) -> bool {
    let end = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < end {
        let (_, out) = srv.queue_cmd(&["list"]);
        if out.contains("queue is empty") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn mx_preference_order_is_followed() {
    let w = MxWorld::start(vec![
        (ip(2), Behavior::default()),
        (ip(3), Behavior::default()),
    ]);
    // Listed worst first: the order in DNS must not matter.
    w.dns
        .mx("pref.test", &[(20, "mx2.pref.test"), (10, "mx1.pref.test")]);
    w.dns.a("mx1.pref.test", &[ip(2)]);
    w.dns.a("mx2.pref.test", &[ip(3)]);
    let srv = w.server("");
    for i in 0..3 {
        send(&srv, &["bob@pref.test"], &format!("pref{i}"));
        assert_eq!(w.mx[0].wait_messages(i + 1, WAIT).len(), i + 1);
    }
    assert!(
        w.mx[1].messages().is_empty(),
        "the less preferred MX got mail"
    );
    let got = &w.mx[0].messages()[0];
    assert_eq!(got.mail_from, "alice@example.org");
    assert_eq!(got.rcpts, vec!["bob@pref.test"]);
    assert!(srv.wait_log("delivered id=", WAIT));
    assert!(srv.wait_log("delivered id=", WAIT));
    let line = srv.log_line("delivered id=").unwrap();
    assert!(
        line.contains("rcpt=<bob@pref.test> host=mx1.pref.test ip=127.0.0.2"),
        "{line}"
    );
    assert!(wait_queue_empty(&srv));
}

#[test]
fn next_mx_is_tried_when_the_first_refuses_connections() {
    let w = MxWorld::start(vec![(ip(3), Behavior::default())]);
    w.dns.mx(
        "fallback.test",
        &[(10, "dead.fallback.test"), (20, "alive.fallback.test")],
    );
    w.dns.a("dead.fallback.test", &[ip(9)]); // nothing listens on 127.0.0.9
    w.dns.a("alive.fallback.test", &[ip(3)]);
    let srv = w.server("");
    send(&srv, &["carol@fallback.test"], "fallback");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["carol@fallback.test"]);
    assert!(srv.wait_log("host=alive.fallback.test ip=127.0.0.3", WAIT));
}

#[test]
fn equal_preference_spreads_over_hosts() {
    let w = MxWorld::start(vec![
        (ip(2), Behavior::default()),
        (ip(3), Behavior::default()),
    ]);
    w.dns.mx(
        "spread.test",
        &[(10, "a.spread.test"), (10, "b.spread.test")],
    );
    w.dns.a("a.spread.test", &[ip(2)]);
    w.dns.a("b.spread.test", &[ip(3)]);
    let srv = w.server("");
    // One at a time, so each is its own routing decision. The chance that
    // 16 fair coin flips all agree is 1 in 32768.
    for i in 0..16 {
        send(&srv, &["dave@spread.test"], &format!("spread{i}"));
        let end = std::time::Instant::now() + WAIT;
        while w.mx[0].messages().len() + w.mx[1].messages().len() < i + 1
            && std::time::Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (a, b) = (w.mx[0].messages().len(), w.mx[1].messages().len());
    assert_eq!(a + b, 16);
    assert!(a > 0 && b > 0, "all mail went to one host: {a} vs {b}");
}

#[test]
fn domain_without_mx_gets_mail_at_its_address() {
    let w = MxWorld::start(vec![(ip(4), Behavior::default())]);
    w.dns.a("nomx.test", &[ip(4)]);
    let srv = w.server("");
    send(&srv, &["erin@nomx.test"], "implicit");
    assert_eq!(w.mx[0].wait_messages(1, WAIT).len(), 1);
    assert!(w.dns.count("nomx.test", RecordType::MX, false) >= 1);
}

#[test]
fn null_mx_bounces_to_the_sender() {
    let dns = FakeDns::start();
    dns.mx("nullmx.test", &[(0, ".")]);
    let srv = Server::with(outbound_options(&dns, free_port(2), ""));
    send(&srv, &["frank@nullmx.test"], "nullmx");
    let reports = wait_reports(&srv, 1);
    assert_eq!(
        reports.len(),
        1,
        "no bounce; log:\n{}",
        srv.log().join("\n")
    );
    let r = &reports[0];
    assert!(r.contains(r#""from_": "MAILER-DAEMON"#), "{r}");
    assert!(r.contains(r#""content_type": "multipart/report""#), "{r}");
    assert!(
        r.contains(r#""Final-Recipient": "rfc822; frank@nullmx.test""#),
        "{r}"
    );
    assert!(r.contains(r#""Status": "5.1.10""#), "{r}");
    assert!(r.contains("null MX"), "{r}");
    assert!(wait_queue_empty(&srv));
}

#[test]
fn temporary_failure_is_retried_then_delivered() {
    let b = Behavior {
        data: std::sync::Arc::new(|n| {
            if n < 2 {
                (451, "4.3.0 try again later".into())
            } else {
                (250, "2.0.0 OK".into())
            }
        }),
        ..Behavior::default()
    };
    let w = MxWorld::one("retry.test", ip(2), b);
    let srv = w.server("");
    send(&srv, &["gina@retry.test"], "retry");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    assert_eq!(w.mx[0].data_phases(), 3);
    assert!(srv
        .log()
        .iter()
        .any(|l| l.contains("deferred id=") && l.contains("451 4.3.0 try again later")));
    assert!(wait_queue_empty(&srv));
    // No bounce for a message that got through.
    assert!(!srv.mbox_path().exists() || python_reports(&srv).is_empty());
}

#[test]
fn permanent_failure_bounces_with_status_and_diagnostic() {
    let b = Behavior::refusing_rcpt(
        "nobody@",
        550,
        "5.1.1 <nobody@perm.test>: Recipient address rejected",
    );
    let w = MxWorld::one("perm.test", ip(2), b);
    let srv = w.server("");
    send(&srv, &["nobody@perm.test"], "permfail");
    let reports = wait_reports(&srv, 1);
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(r.contains(r#""content_type": "multipart/report""#), "{r}");
    assert!(
        r.contains(r#""reporting_mta": "dns; mail.example.org""#),
        "{r}"
    );
    assert!(r.contains(r#""Status": "5.1.1""#), "{r}");
    assert!(
        r.contains(
            r#""Diagnostic-Code": "smtp; 550 5.1.1 <nobody@perm.test>: Recipient address rejected""#
        ),
        "{r}"
    );
    assert!(r.contains(r#""Remote-MTA": "dns; mx.perm.test""#), "{r}");
    assert!(
        r.contains("Subject: permfail"),
        "original headers returned: {r}"
    );
    assert!(r.contains(r#""to": "<alice@example.org>""#), "{r}");
    assert!(w.mx[0].messages().is_empty());
    assert!(wait_queue_empty(&srv));
}

#[test]
fn dns_timeout_defers_and_flush_retries() {
    let w = MxWorld::start(vec![(ip(2), Behavior::default())]);
    w.dns.set("slow.test", RecordType::MX, Answer::Silence);
    let srv = Server::with(w.options("").tap_retry("1h"));
    send(&srv, &["hank@slow.test"], "dnstimeout");
    assert!(
        srv.wait_log("deferred id=", WAIT),
        "log:\n{}",
        srv.log().join("\n")
    );
    let list = wait_list(&srv, "last error");
    assert!(
        list.contains("recipient: <hank@slow.test> pending"),
        "{list}"
    );
    assert!(list.contains("last error: 451 4.4.3"), "{list}");
    assert!(list.contains("timeout"), "{list}");
    assert!(list.contains("next attempt: in "), "{list}");
    // The DNS comes back; `queue flush` retries at once instead of in 1h.
    w.dns.one_mx("slow.test", ip(2));
    let (code, out) = srv.queue_cmd(&["flush"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(w.mx[0].wait_messages(1, WAIT).len(), 1);
    assert!(wait_queue_empty(&srv));
}

#[test]
fn truncated_udp_answer_is_asked_again_over_tcp() {
    let w = MxWorld::start(vec![(ip(2), Behavior::default())]);
    // The MX answer is "truncated" over UDP, complete over TCP.
    let mx_records = vec![hickory_proto::rr::Record::from_rdata(
        hickory_proto::rr::Name::from_ascii("big.test.").unwrap(),
        60,
        hickory_proto::rr::RData::MX(hickory_proto::rr::rdata::MX::new(
            10,
            hickory_proto::rr::Name::from_ascii("mx.big.test.").unwrap(),
        )),
    )];
    w.dns
        .set("big.test", RecordType::MX, Answer::Truncated(mx_records));
    w.dns.a("mx.big.test", &[ip(2)]);
    let srv = w.server("");
    send(&srv, &["ivy@big.test"], "truncated");
    assert_eq!(w.mx[0].wait_messages(1, WAIT).len(), 1);
    assert!(w.dns.count("big.test", RecordType::MX, false) >= 1);
    assert!(
        w.dns.count("big.test", RecordType::MX, true) >= 1,
        "no TCP retry"
    );
}

#[test]
fn starttls_is_used_when_offered() {
    let b = Behavior {
        starttls: Some(self_signed("mx.tls.test")),
        ..Behavior::default()
    };
    let w = MxWorld::one("tls.test", ip(2), b);
    let srv = w.server("");
    send(&srv, &["jack@tls.test"], "tls");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "message went in clear");
    // Opportunistic: the self-signed certificate is recorded, not fatal.
    assert!(srv.wait_log("tls=TLSv1.3", WAIT));
    assert!(srv.wait_log("delivered id=", WAIT));
    let line = srv.log_line("delivered id=").unwrap();
    assert!(line.contains("unverified"), "{line}");
}

fn relay_setup(ca_trusted: bool) -> (FakeDns, Vec<FakeMx>, Server, TempDir) {
    let ca = TestCa::new();
    let b = Behavior {
        starttls: Some(if ca_trusted {
            ca.server_config("relay.test")
        } else {
            self_signed("relay.test")
        }),
        auth: Some(("alice@isp.test".into(), "s3cret pass".into())),
        ..Behavior::default()
    };
    let MxWorld { dns, port, mx } = MxWorld::start(vec![(ip(5), b)]);
    dns.a("relay.test", &[ip(5)]);
    let relay = format!("relay.test:{port}");
    let (srv, files) = relay_server(&dns, &ca, &relay, "alice@isp.test", "s3cret pass\n");
    (dns, mx, srv, files)
}

/// A server that sends everything through `relay` (host:port) as `user`,
/// its password file holding `password_file`, trusting `ca` for the
/// relay's certificate; the files live in the returned directory.
fn relay_server(
    dns: &FakeDns,
    ca: &TestCa,
    relay: &str,
    user: &str,
    password_file: &str,
) -> (Server, TempDir) {
    let files = TempDir::new("relay");
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let pw = files.path().join("relay-password");
    std::fs::write(&pw, password_file).unwrap();
    let extra = format!(
        "relay = \"{relay}\"\nrelay_user = \"{user}\"\nrelay_password_file = {:?}\n",
        pw.display().to_string()
    );
    // mx_port points nowhere: everything must go through the relay.
    let srv = Server::with_env(
        outbound_options(dns, free_port(6), &extra),
        vec![("PIMAIL_RELAY_CA_FILE".into(), ca_file.display().to_string())],
    );
    (srv, files)
}

#[test]
fn relay_mode_uses_starttls_verified_certificate_and_auth() {
    let (_dns, mx, srv, _files) = relay_setup(true);
    send(&srv, &["kim@far.example", "lee@other.example"], "relayed");
    let got = mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    assert!(got[0].tls);
    assert_eq!(got[0].auth.as_deref(), Some("alice@isp.test"));
    let mut r = got[0].rcpts.clone();
    r.sort();
    assert_eq!(r, vec!["kim@far.example", "lee@other.example"]);
    assert!(srv.wait_log("delivered id=", WAIT));
    let line = srv.log_line("delivered id=").unwrap();
    assert!(line.contains(" verified"), "{line}");
}

#[test]
fn relay_with_untrusted_certificate_gets_nothing() {
    let (_dns, mx, srv, _files) = relay_setup(false);
    send(&srv, &["kim@far.example"], "notrust");
    assert!(
        srv.wait_log("deferred id=", WAIT),
        "log:\n{}",
        srv.log().join("\n")
    );
    assert!(mx[0].messages().is_empty());
    let list = wait_list(&srv, "last error");
    assert!(list.contains("TLS handshake"), "{list}");
}

/// Issue 14: an ISP smarthost that knows us by our IP address: `relay`
/// alone, no AUTH, TLS still used and verified.
#[test]
fn relay_that_authorises_by_ip_needs_no_relay_user() {
    let dns = FakeDns::start();
    let ca = TestCa::new();
    let b = Behavior {
        starttls: Some(ca.server_config("relay.test")),
        ..Behavior::default()
    };
    let (port, mx) = FakeMx::start_all(vec![(ip(5), b)]);
    dns.a("relay.test", &[ip(5)]);
    let files = TempDir::new("iprelay");
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let srv = Server::with_env(
        outbound_options(
            &dns,
            free_port(6),
            &format!("relay = \"relay.test:{port}\"\n"),
        ),
        vec![("PIMAIL_RELAY_CA_FILE".into(), ca_file.display().to_string())],
    );
    send(&srv, &["kim@far.example"], "byip");
    let got = mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    assert!(got[0].tls);
    assert_eq!(got[0].auth, None);
    assert_eq!(got[0].rcpts, vec!["kim@far.example"]);
}

#[test]
fn queue_survives_kill9_and_restart() {
    let dns = FakeDns::start();
    let port = free_port(7);
    dns.one_mx("later.test", ip(7));
    let mut srv = Server::with(outbound_options(&dns, port, ""));
    send(&srv, &["mia@later.test"], "survivor");
    assert!(srv.wait_log("deferred id=", WAIT));
    srv.kill9();
    let (_, list) = srv.queue_cmd(&["list"]);
    assert!(
        list.contains("recipient: <mia@later.test> pending"),
        "{list}"
    );
    // The MX comes up, the server restarts: the message goes out.
    let mx = FakeMx::start_all_on(port, vec![(ip(7), Behavior::default())]);
    srv.spawn();
    let got = mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("Subject: survivor\r\n") && text.ends_with("From the start\r\n"),
        "{text}"
    );
    assert!(wait_queue_empty(&srv));
}

#[test]
fn several_recipients_at_two_domains_with_mixed_results() {
    let f = Behavior::refusing_rcpt("bad@", 550, "5.1.1 no such user");
    let g = Behavior {
        pipelining: false,
        ..Behavior::refusing_rcpt("tmp@", 452, "4.2.2 mailbox full")
    };
    let w = MxWorld::start(vec![(ip(2), f), (ip(3), g)]);
    w.dns.one_mx("f.test", ip(2));
    w.dns.one_mx("g.test", ip(3));
    let srv = Server::with(w.options("").tap_retry("1h"));
    send(
        &srv,
        &["ok@f.test", "bad@f.test", "ok@g.test", "tmp@g.test"],
        "mixed",
    );
    assert_eq!(w.mx[0].wait_messages(1, WAIT)[0].rcpts, vec!["ok@f.test"]);
    assert_eq!(w.mx[1].wait_messages(1, WAIT)[0].rcpts, vec!["ok@g.test"]);
    let reports = wait_reports(&srv, 1);
    assert_eq!(reports.len(), 1);
    assert!(reports[0].contains("rfc822; bad@f.test"), "{}", reports[0]);
    assert!(
        !reports[0].contains("tmp@g.test"),
        "a deferral is not a bounce: {}",
        reports[0]
    );
    let list = wait_list(&srv, "failed");
    assert!(list.contains("recipient: <tmp@g.test> pending"), "{list}");
    assert!(
        list.contains("last error: 452 4.2.2 mailbox full"),
        "{list}"
    );
    assert!(list.contains("recipient: <ok@f.test> delivered"), "{list}");
    assert!(list.contains("recipient: <bad@f.test> failed"), "{list}");
}

const GIT_PATCH: &str = "From 1a2b3c4d5e6f Mon Sep 17 00:00:00 2001
From: Alice Example <alice@example.org>
Date: Wed, 25 Nov 2026 03:00:00 +0000
Subject: [PATCH 1/2] queue: fix the thing
To: dev@lists.test
Cc: Bob <bob@lists.test>
Message-ID: <20261125030000.1-alice@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit

The commit message, with a line that starts with
From here on, things are fixed.
.
..and a dot line above, trailing spaces:   
Signed-off-by: Alice Example <alice@example.org>
---
 src/queue.rs | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/src/queue.rs b/src/queue.rs
--- a/src/queue.rs
+++ b/src/queue.rs
@@ -1,3 +1,3 @@
-old
+new — ünïcødé
 context
>From quoted already
-- 
2.47.0
";

const CRON: &str = "From: root (Cron Daemon)
To: ops@cron.test
Bcc: secret@cron.test
Subject: Cron <root@pi> /usr/local/bin/backup
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit
X-Cron-Env: <SHELL=/bin/sh>
X-Cron-Env: <HOME=/root>

backup: 12 files, 3.4 MiB
rsync: warning: some files vanished
";

#[test]
fn sendmail_t_git_format_patch_arrives_unchanged() {
    let w = MxWorld::one("lists.test", ip(2), Behavior::default());
    let srv = w.server("");
    // git send-email runs `sendmail -i -t` (or with explicit recipients).
    let (code, err) = srv.sendmail(&["-i", "-t"], GIT_PATCH.as_bytes());
    assert_eq!(code, 0, "{err}");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    let mut r = got[0].rcpts.clone();
    r.sort();
    assert_eq!(r, vec!["bob@lists.test", "dev@lists.test"]);
    let data = String::from_utf8(got[0].data.clone()).unwrap();
    // The mbox separator line is not part of the message; the rest is
    // byte for byte what git wrote, after our trace header.
    let want = GIT_PATCH.split_once('\n').unwrap().1.replace('\n', "\r\n");
    assert!(data.ends_with(&want), "changed in transit:\n{data}");
    let added = &data[..data.len() - want.len()];
    assert!(
        added.starts_with("Received: by mail.example.org (pimail sendmail"),
        "{added}"
    );
    assert!(
        !added.contains("Message-ID") && !added.contains("Date:"),
        "{added}"
    );
}

#[test]
fn sendmail_t_cron_mail_arrives_unchanged_without_bcc() {
    let w = MxWorld::one("cron.test", ip(2), Behavior::default());
    let srv = w.server("");
    // cron: `sendmail -FCronDaemon -i -B8BITMIME -oem root` style, here -t.
    let (code, err) = srv.sendmail(
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-t"],
        CRON.as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    let got = w.mx[0].wait_messages(1, WAIT);
    let mut r = got[0].rcpts.clone();
    r.sort();
    assert_eq!(r, vec!["ops@cron.test", "secret@cron.test"]);
    let data = String::from_utf8(got[0].data.clone()).unwrap();
    let want = CRON
        .replace("Bcc: secret@cron.test\n", "")
        .replace('\n', "\r\n");
    assert!(data.ends_with(&want), "changed in transit:\n{data}");
    assert!(!data.contains("secret@"), "Bcc leaked: {data}");
    // cron gives no Date or Message-ID: added, once.
    assert_eq!(data.matches("\r\nDate: ").count(), 1, "{data}");
    assert_eq!(data.matches("\r\nMessage-ID: <").count(), 1, "{data}");
}

#[test]
fn sendmail_local_recipient_and_exit_codes() {
    let dns = FakeDns::start();
    let srv = Server::with(outbound_options(&dns, free_port(2), ""));
    // A local recipient (and a bare login name) reach the mbox.
    let (code, err) = srv.sendmail(&["alice@example.org", "root"], b"Subject: local\n\nhi\n");
    assert_eq!(code, 0, "{err}");
    let end = std::time::Instant::now() + WAIT;
    while python_reports(&srv).is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let msgs = python_mbox_messages(&srv.mbox_path());
    assert_eq!(msgs.len(), 1, "delivered once for both names");
    assert!(String::from_utf8_lossy(&msgs[0]).contains("Subject: local\n"));
    // EX_USAGE: no recipients.
    assert_eq!(srv.sendmail(&[], b"Subject: x\n\nx\n").0, 64);
    // EX_NOUSER: unknown user at our own domain.
    let (code, err) = srv.sendmail(&["nobody@example.org"], b"Subject: x\n\nx\n");
    assert_eq!(code, 67, "{err}");
    assert!(err.contains("nobody@example.org"), "{err}");
    // EX_TEMPFAIL: the queue cannot be written.
    let cfg = std::fs::read_to_string(&srv.config).unwrap();
    let blocker = srv.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let bad = cfg.replace(
        &format!("data_dir = {:?}", srv.data_dir().display().to_string()),
        &format!(
            "data_dir = {:?}",
            blocker.join("data").display().to_string()
        ),
    );
    assert_ne!(bad, cfg);
    let bad_cfg = srv.dir.path().join("bad.toml");
    std::fs::write(&bad_cfg, bad).unwrap();
    let o = run_with_stdin(
        pimail_command()
            .args(["sendmail", "--config"])
            .arg(&bad_cfg)
            .arg("x@far.example")
            .stderr(std::process::Stdio::piped()),
        b"Subject: x\n\nx\n",
    );
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn queue_delete_and_unknown_id() {
    let dns = FakeDns::start();
    dns.set("stuck.test", RecordType::MX, Answer::ServFail);
    let srv = Server::with(outbound_options(&dns, free_port(2), "").tap_retry("1h"));
    send(&srv, &["ned@stuck.test"], "stuck");
    assert!(srv.wait_log("deferred id=", WAIT));
    let list = wait_list(&srv, "last error");
    let id = list
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(list.contains("server said Server Failure"), "{list}");
    let (code, _) = srv.queue_cmd(&["delete", "NOSUCHID0000"]);
    assert_ne!(code, 0);
    let (code, out) = srv.queue_cmd(&["delete", &id]);
    assert_eq!(code, 0, "{out}");
    let (_, list) = srv.queue_cmd(&["list"]);
    assert!(list.contains("queue is empty"), "{list}");
}

trait TapRetry {
    fn tap_retry(self, r: &str) -> Self;
}

impl TapRetry for Options {
    /// Replaces the retry schedule (e.g. one long interval, so that a
    /// deferred message stays put while the test looks at it).
    fn tap_retry(mut self, r: &str) -> Self {
        self.extra = self
            .extra
            .replace("retry = [\"1s\"]", &format!("retry = [\"{r}\"]"));
        self
    }
}

#[test]
fn messages_for_one_host_share_a_connection() {
    let dns = FakeDns::start();
    let port = free_port(8);
    dns.one_mx("reuse.test", ip(8));
    let srv = Server::with(outbound_options(&dns, port, "").tap_retry("1h"));
    // The MX is down: three messages wait in the queue.
    for i in 0..3 {
        send(&srv, &[&format!("r{i}@reuse.test")], &format!("reuse{i}"));
    }
    let end = std::time::Instant::now() + WAIT;
    while srv
        .log()
        .iter()
        .filter(|l| l.contains("deferred id="))
        .count()
        < 3
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every message's state is saved (just after its log line) before
    // the flush, or a round still finishing would skip it.
    let end = std::time::Instant::now() + WAIT;
    while srv.queue_cmd(&["list"]).1.matches("last error").count() < 3
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // It comes up; one flush sends all three over one connection.
    let mx = FakeMx::start_all_on(port, vec![(ip(8), Behavior::default())]);
    let (code, out) = srv.queue_cmd(&["flush"]);
    assert_eq!(code, 0, "{out}");
    let got = mx[0].wait_messages(3, WAIT);
    assert_eq!(got.len(), 3, "log:\n{}", srv.log().join("\n"));
    assert_eq!(
        mx[0].connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(got.iter().all(|g| g.conn == 0));
}

#[test]
fn bounces_go_out_with_the_null_sender_and_are_never_bounced() {
    let reject_all = Behavior {
        rcpt: std::sync::Arc::new(|_| (550, "5.1.1 no such user".into())),
        ..Behavior::default()
    };
    let w = MxWorld::start(vec![(ip(2), reject_all), (ip(3), Behavior::default())]);
    w.dns.one_mx("reject.test", ip(2));
    w.dns.one_mx("far.test", ip(3));
    let srv = w.server("");
    // A remote sender: the bounce is queued and sent to its MX, from <>.
    let (code, err) = srv.sendmail(
        &["-f", "owner@far.test", "x@reject.test"],
        &msg("remote-sender"),
    );
    assert_eq!(code, 0, "{err}");
    let got = w.mx[1].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    assert_eq!(got[0].mail_from, "");
    assert_eq!(got[0].rcpts, vec!["owner@far.test"]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; x@reject.test"),
        "{text}"
    );
    // A message from <> that fails makes no bounce at all.
    let (code, err) = srv.sendmail(&["-f", "<>", "y@reject.test"], &msg("null-sender"));
    assert_eq!(code, 0, "{err}");
    assert!(srv.wait_log("not bouncing a bounce", WAIT));
    assert!(wait_queue_empty(&srv));
    assert_eq!(w.mx[1].messages().len(), 1);
    assert!(!srv.mbox_path().exists() || python_reports(&srv).is_empty());
}

/// In CI (and with PIMAIL_REQUIRE_POSTFIX) the tests that need root or
/// Postfix must run; on a developer's machine they may be skipped, saying
/// why.
fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("PIMAIL_REQUIRE_POSTFIX").is_some()
}

/// A Postfix instance of its own (config, queue and log in a temp dir) as
/// the receiving MX on a loopback high port, stopped when dropped.
struct Postfix {
    dir: TempDir,
}

impl Postfix {
    fn start(listen: Ipv4Addr, port: u16) -> Result<Postfix, String> {
        let postfix = "/usr/sbin/postfix";
        if !std::path::Path::new(postfix).exists() {
            return Err("postfix is not installed (apt-get install postfix)".into());
        }
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            != 0
        {
            return Err("starting a Postfix instance needs root".into());
        }
        let dir = TempDir::new("postfix");
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("queue")).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let _ = Command::new("chown")
            .arg("postfix")
            .arg(dir.path().join("data"))
            .status();
        // STARTTLS with a self-signed certificate, as many MX hosts have.
        let ck = rcgen::generate_simple_self_signed(vec!["mx.pfx.test".to_string()]).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
             mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = mx.pfx.test\n\
             mydomain = pfx.test\nmydestination =\ninet_interfaces = all\ninet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\nrelay_domains = pfx.test\ndefault_transport = discard:\n\
             relay_transport = discard:\nlocal_transport = discard:\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject\n\
             maillog_file_prefixes = {d}\nmaillog_file = {d}/maillog\nalias_maps =\nalias_database =\n\
             smtpd_tls_security_level = may\nsmtpd_tls_chain_files = {d}/key.pem, {d}/cert.pem\n"
        );
        std::fs::write(dir.path().join("main.cf"), main).unwrap();
        let master = format!(
            "{listen}:{port} inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\nrewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\nproxymap unix - - n - - proxymap\n\
             showq unix n - n - - showq\nerror unix - - n - - error\n\
             retry unix - - n - - error\ndiscard unix - - n - - discard\n\
             anvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\ntlsmgr unix - - n 1000? 1 tlsmgr\n"
        );
        std::fs::write(dir.path().join("master.cf"), master).unwrap();
        let o = Command::new(postfix)
            .arg("-c")
            .arg(dir.path())
            .arg("start")
            .output()
            .map_err(|e| format!("cannot run postfix: {e}"))?;
        let pf = Postfix { dir };
        if !o.status.success() {
            return Err(format!(
                "postfix did not start: {}{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                pf.log()
            ));
        }
        // Wait for its greeting.
        let end = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < end {
            if std::net::TcpStream::connect((listen, port)).is_ok() {
                return Ok(pf);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "postfix did not listen on {listen}:{port}\n{}",
            pf.log()
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.dir.path())
            .arg("stop")
            .output();
    }
}

#[test]
fn postfix_accepts_our_delivery() {
    let port = free_port(11);
    let pf = match Postfix::start(ip(11), port) {
        Ok(p) => p,
        Err(why) if !required() => {
            eprintln!("SKIPPED postfix_accepts_our_delivery: {why} (set CI or PIMAIL_REQUIRE_POSTFIX to make this a failure)");
            return;
        }
        Err(why) => panic!("the Postfix interop test must run here: {why}"),
    };
    let dns = FakeDns::start();
    dns.one_mx("pfx.test", ip(11));
    let srv = Server::with(outbound_options(&dns, port, ""));
    let (code, err) = srv.sendmail(
        &["-i", "-t"],
        GIT_PATCH.replace("lists.test", "pfx.test").as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        srv.wait_log("delivered id=", WAIT),
        "log:\n{}\npostfix:\n{}",
        srv.log().join("\n"),
        pf.log()
    );
    let delivered = || -> Vec<String> {
        srv.log()
            .into_iter()
            .filter(|l| l.contains("delivered id="))
            .collect()
    };
    let end = std::time::Instant::now() + WAIT;
    while delivered().len() < 2 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = delivered();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert!(l.contains("host=mx.pfx.test ip=127.0.0.11"), "{l}");
        assert!(l.contains("tls=TLSv1.3"), "STARTTLS with Postfix: {l}");
        assert!(l.contains("queued as"), "{l}");
    }
    let end = std::time::Instant::now() + WAIT;
    while !pf.log().contains("from=<alice@example.org>") && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        pf.log().contains("from=<alice@example.org>"),
        "{}",
        pf.log()
    );
    assert!(wait_queue_empty(&srv));
}

#[test]
fn old_server_without_ehlo_gets_helo() {
    let b = Behavior {
        esmtp: false,
        ..Behavior::default()
    };
    let w = MxWorld::one("old.test", ip(2), b);
    let srv = w.server("");
    send(&srv, &["olga@old.test"], "helo");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    assert_eq!(got[0].hello, "HELO mail.example.org");
}

#[test]
fn bounce_after_gives_up_on_temporary_failures() {
    let dns = FakeDns::start();
    dns.one_mx("down.test", ip(9));
    let srv = Server::with(outbound_options(
        &dns,
        free_port(9),
        "bounce_after = \"2s\"",
    ));
    send(&srv, &["pat@down.test"], "giveup");
    let reports = wait_reports(&srv, 1);
    assert_eq!(reports.len(), 1, "log:\n{}", srv.log().join("\n"));
    let r = &reports[0];
    assert!(r.contains(r#""Status": "4.4.7""#), "{r}");
    assert!(r.contains("gave up after"), "{r}");
    assert!(
        r.contains("Connection refused"),
        "the last error is given: {r}"
    );
    assert!(wait_queue_empty(&srv));
}

#[test]
fn relay_on_port_465_uses_implicit_tls() {
    let ca = TestCa::new();
    let b = Behavior {
        implicit_tls: Some(ca.server_config("smtps.relay.test")),
        auth: Some(("u".into(), "p".into())),
        ..Behavior::default()
    };
    let l = match std::net::TcpListener::bind((ip(12), 465)) {
        Ok(l) => l,
        Err(e) if !required() => {
            eprintln!("SKIPPED relay_on_port_465_uses_implicit_tls: cannot bind 127.0.0.12:465 ({e}); run as root (CI does)");
            return;
        }
        Err(e) => panic!(
            "cannot bind 127.0.0.12:465 for the implicit TLS relay ({e}); run the tests as root"
        ),
    };
    drop(l);
    let mx = FakeMx::start_all_on(465, vec![(ip(12), b)]);
    let dns = FakeDns::start();
    dns.a("smtps.relay.test", &[ip(12)]);
    let (srv, _files) = relay_server(&dns, &ca, "smtps.relay.test:465", "u", "p");
    send(&srv, &["quinn@far.example"], "smtps");
    let got = mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    assert!(got[0].tls && got[0].auth.as_deref() == Some("u"));
}

#[test]
fn binary_named_sendmail_is_sendmail() {
    let w = MxWorld::one("argv0.test", ip(2), Behavior::default());
    let srv = w.server("");
    let link = srv.dir.path().join("sendmail");
    std::os::unix::fs::symlink(bin(), &link).unwrap();
    // Through the emulator when the binary is for another CPU (cross/).
    let r = runner();
    let mut cmd = match r.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&link);
            c
        }
        None => Command::new(&link),
    };
    let o = run_with_stdin(
        cmd.args(["-oi", "--config"])
            .arg(&srv.config)
            .arg("rose@argv0.test"),
        b"Subject: argv0\n\n.\nstill here\n",
    );
    assert!(o.status.success());
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.ends_with("Subject: argv0\r\n\r\n.\r\nstill here\r\n"),
        "-oi keeps the lone dot: {text}"
    );
}

#[test]
fn a_hung_mx_does_not_hold_up_other_domains() {
    let hung = Behavior {
        silent_for: Some(Duration::from_secs(60)),
        ..Behavior::default()
    };
    let w = MxWorld::start(vec![(ip(2), hung), (ip(3), Behavior::default())]);
    w.dns.one_mx("hung.test", ip(2));
    w.dns.one_mx("quick.test", ip(3));
    let srv = w.server("");
    let start = std::time::Instant::now();
    send(&srv, &["a@hung.test", "b@quick.test"], "parallel");
    let got = w.mx[1].wait_messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "quick.test waited for hung.test");
    // The hung server is still holding its connection (it waits 60 s).
    assert!(start.elapsed() < Duration::from_secs(55));
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while w.mx[0]
        .connections
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        w.mx[0]
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "hung.test was tried at the same time"
    );
    // New mail does not wait for the round that is stuck on hung.test.
    send(&srv, &["c@quick.test"], "later");
    let got = w.mx[1].wait_messages(2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "new mail waited for the hung round");
    assert!(start.elapsed() < Duration::from_secs(55));
}

#[test]
fn relay_user_without_password_file_is_refused_at_start() {
    let dir = TempDir::new("relaycfg");
    let o = Options {
        extra: "[outbound]\nrelay = \"smtp.example.net:587\"\nrelay_user = \"alice\"\n".into(),
        ..Options::default()
    };
    let cfg = Server::write_config(dir.path(), &o);
    let out = pimail_command()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relay_password_file"), "{err}");
}

#[test]
fn broken_starttls_falls_back_to_plain_text() {
    let b = Behavior {
        broken_tls: true,
        ..Behavior::default()
    };
    let w = MxWorld::one("badtls.test", ip(2), b);
    let srv = w.server("");
    send(&srv, &["sam@badtls.test"], "badtls");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    assert!(!got[0].tls);
    assert_eq!(
        w.mx[0]
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert!(srv
        .log()
        .iter()
        .any(|l| l.contains("trying again without TLS")));
}

#[test]
fn ipv6_only_mx_is_reached() {
    let dns = FakeDns::start();
    let mx = FakeMx::start_at("[::1]:0".parse().unwrap(), Behavior::default());
    dns.mx("v6.test", &[(10, "mx6.v6.test")]);
    dns.aaaa("mx6.v6.test", &["::1".parse().unwrap()]);
    let srv = Server::with(outbound_options(&dns, mx.port, ""));
    send(&srv, &["uma@v6.test"], "ipv6");
    assert_eq!(
        mx.wait_messages(1, WAIT).len(),
        1,
        "log:\n{}",
        srv.log().join("\n")
    );
    assert!(srv.wait_log("ip=::1", WAIT));
}

#[test]
fn second_nameserver_answers_when_the_first_is_silent() {
    let dead = FakeDns::start();
    dead.set("ns2.test", RecordType::MX, Answer::Silence);
    dead.set("mx.ns2.test", RecordType::A, Answer::Silence);
    dead.set("mx.ns2.test", RecordType::AAAA, Answer::Silence);
    let w = MxWorld::one("ns2.test", ip(2), Behavior::default());
    let mut o = w.options("");
    o.extra = o.extra.replace(
        &format!("dns = [\"{}\"]", w.dns.addr),
        &format!("dns = [\"{}\", \"{}\"]", dead.addr, w.dns.addr),
    );
    let srv = Server::with(o);
    send(&srv, &["vic@ns2.test"], "ns2");
    assert_eq!(
        w.mx[0].wait_messages(1, WAIT).len(),
        1,
        "log:\n{}",
        srv.log().join("\n")
    );
    assert!(
        dead.count("ns2.test", RecordType::MX, false) >= 1,
        "the first server was not asked"
    );
}

#[test]
fn delay_notice_reaches_the_sender_once_after_warn_after() {
    let dns = FakeDns::start();
    dns.one_mx("slow.test", ip(60));
    let srv = Server::with(outbound_options(&dns, free_port(60), "warn_after = \"3s\""));
    let sent = std::time::Instant::now();
    send(&srv, &["quinn@slow.test"], "delayed");
    let reports = wait_reports(&srv, 1);
    assert_eq!(reports.len(), 1, "log:\n{}", srv.log().join("\n"));
    // Queue times are whole seconds: 3s may be a little over 2s of ours.
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "the notice waits for warn_after"
    );
    let r = &reports[0];
    assert!(r.contains(r#""Action": "delayed""#), "{r}");
    assert!(r.contains(r#""Status": "4.4.1""#), "{r}");
    assert!(r.contains(r#""from_": "MAILER-DAEMON"#), "null sender: {r}");
    // Retries go on (every second) without a second notice, and the
    // message stays queued.
    let deferred = |srv: &Server| {
        srv.log()
            .iter()
            .filter(|l| l.contains("deferred id=") && l.contains("quinn@slow.test"))
            .count()
    };
    let before = deferred(&srv);
    let end = std::time::Instant::now() + WAIT;
    while deferred(&srv) < before + 3 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        deferred(&srv) >= before + 3,
        "log:\n{}",
        srv.log().join("\n")
    );
    assert_eq!(python_reports(&srv).len(), 1, "one notice per message");
    let (_, list) = srv.queue_cmd(&["list"]);
    assert!(list.contains("quinn@slow.test"), "{list}");
}

#[test]
fn warn_after_off_sends_no_delay_notice() {
    let dns = FakeDns::start();
    dns.one_mx("slow0.test", ip(61));
    let srv = Server::with(outbound_options(
        &dns,
        free_port(61),
        "warn_after = \"off\"",
    ));
    send(&srv, &["quinn@slow0.test"], "nowarn");
    let end = std::time::Instant::now() + WAIT;
    let deferred = |srv: &Server| {
        srv.log()
            .iter()
            .filter(|l| l.contains("deferred id="))
            .count()
    };
    while deferred(&srv) < 3 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(deferred(&srv) >= 3, "log:\n{}", srv.log().join("\n"));
    assert!(!srv.mbox_path().exists() || python_reports(&srv).is_empty());
}

// ---- MTA-STS (RFC 8461), relay fallback, address family (issue 18) ----------

fn policy(mode: &str, mx: &[&str]) -> String {
    let mut p = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        p += &format!("mx: {m}\r\n");
    }
    p + "max_age: 86400\r\n"
}

/// Publishes `_mta-sts.<domain>` and points `mta-sts.<domain>` at `https`.
fn publish_sts(dns: &FakeDns, https: &FakeHttps, domain: &str) {
    dns.txt(
        &format!("_mta-sts.{domain}"),
        &["v=STSv1; id=20260101T000000;"],
    );
    let IpAddr::V4(v4) = https.addr.ip() else {
        unreachable!()
    };
    dns.a(&format!("mta-sts.{domain}"), &[v4]);
}

use std::net::IpAddr;

/// A server that trusts `ca` (for MX certificates and policy hosts) and
/// fetches policies from `https`'s port.
fn sts_server(dns: &FakeDns, port: u16, ca: &TestCa, https: &FakeHttps, dir: &TempDir) -> Server {
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    Server::with_env(
        outbound_options(dns, port, ""),
        vec![
            ("PIMAIL_RELAY_CA_FILE".into(), ca_file.display().to_string()),
            ("PIMAIL_MTA_STS_PORT".into(), https.addr.port().to_string()),
        ],
    )
}

#[test]
fn mta_sts_enforce_defers_without_verified_tls_and_delivers_to_a_good_mx() {
    let dns = FakeDns::start();
    let ca = TestCa::new();
    let (port, mx) = FakeMx::start_all(vec![
        // No STARTTLS at all.
        (ip(2), Behavior::default()),
        // STARTTLS with a certificate nobody vouches for.
        (
            ip(3),
            Behavior {
                starttls: Some(self_signed("mx.badcert.test")),
                ..Behavior::default()
            },
        ),
        // A verified certificate for its name.
        (
            ip(4),
            Behavior {
                starttls: Some(ca.server_config("mx.good.test")),
                ..Behavior::default()
            },
        ),
    ]);
    let https = FakeHttps::start(
        ip(10),
        &ca,
        vec![
            (
                "mta-sts.plain.test",
                Policy::Body(policy("enforce", &["mx.plain.test"])),
            ),
            (
                "mta-sts.badcert.test",
                Policy::Body(policy("enforce", &["*.badcert.test"])),
            ),
            (
                "mta-sts.good.test",
                Policy::Body(policy("enforce", &["mx.good.test"])),
            ),
        ],
    );
    for (d, last) in [("plain.test", 2), ("badcert.test", 3), ("good.test", 4)] {
        dns.mx(d, &[(10, &format!("mx.{d}"))]);
        dns.a(&format!("mx.{d}"), &[ip(last)]);
        publish_sts(&dns, &https, d);
    }
    let dir = TempDir::new("sts");
    let srv = sts_server(&dns, port, &ca, &https, &dir);
    send(&srv, &["ann@plain.test"], "sts-plain");
    send(&srv, &["ben@badcert.test"], "sts-badcert");
    send(&srv, &["cid@good.test"], "sts-good");
    let got = mx[2].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    assert!(got[0].tls);
    assert!(srv.wait_log("rcpt=<cid@good.test> host=mx.good.test", WAIT));
    let list = wait_list(&srv, "badcert.test (enforce) requires verified TLS");
    assert!(
        list.contains("451 4.7.5 MTA-STS policy of plain.test (enforce) requires verified TLS")
            && list.contains("no STARTTLS offered"),
        "{list}"
    );
    assert!(list.contains("MTA-STS policy of badcert.test"), "{list}");
    assert!(
        list.contains("route: direct to the MX of plain.test"),
        "{list}"
    );
    // Retries keep deferring, never in clear text.
    std::thread::sleep(Duration::from_secs(3));
    assert!(mx[0].messages().is_empty(), "sent in clear despite enforce");
    assert!(
        mx[1].messages().is_empty(),
        "sent despite a bad certificate"
    );
    // One fetch per domain: later rounds use the cache.
    let fetches = https.requests.lock().unwrap().len();
    assert_eq!(fetches, 3, "{:?}", https.requests.lock().unwrap());
    let cached = srv.data_dir().join("mta-sts").join("good.test.policy");
    assert!(cached.exists());
    // TLS-RPT counts: a success for good.test, failures for the others.
    let rpt_dir = srv.data_dir().join("tlsrpt");
    // The server rewrites its counts by rename: a temporary file listed
    // here may be gone when read (the aarch64 CI run met one).
    let rpt: String = std::fs::read_dir(&rpt_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| match std::fs::read_to_string(e.path()) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            r => Some(r.unwrap()),
        })
        .collect();
    assert!(rpt.contains("good.test sts success -"), "{rpt}");
    assert!(
        rpt.contains("plain.test sts starttls-not-supported mx.plain.test"),
        "{rpt}"
    );
    assert!(
        rpt.contains("badcert.test sts certificate-not-trusted mx.badcert.test"),
        "{rpt}"
    );
    // doctor shows the cached policies, the family and the route.
    let o = pimail_command()
        .arg("doctor")
        .arg("--config")
        .arg(&srv.config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("MTA-STS policy cached: good.test mode enforce mx mx.good.test"),
        "{out}"
    );
    assert!(out.contains("route: direct"), "{out}");
    assert!(out.contains("address family: "), "{out}");
}

#[test]
fn mta_sts_testing_only_logs() {
    let dns = FakeDns::start();
    let ca = TestCa::new();
    let (port, mx) = FakeMx::start_all(vec![(ip(2), Behavior::default())]);
    let https = FakeHttps::start(
        ip(10),
        &ca,
        vec![(
            "mta-sts.try.test",
            Policy::Body(policy("testing", &["other.try.test"])),
        )],
    );
    dns.mx("try.test", &[(10, "mx.try.test")]);
    dns.a("mx.try.test", &[ip(2)]);
    publish_sts(&dns, &https, "try.test");
    let dir = TempDir::new("sts");
    let srv = sts_server(&dns, port, &ca, &https, &dir);
    send(&srv, &["dee@try.test"], "sts-testing");
    assert_eq!(
        mx[0].wait_messages(1, WAIT).len(),
        1,
        "log:\n{}",
        srv.log().join("\n")
    );
    assert!(srv.wait_log("does not match the policy's mx patterns", WAIT));
    assert!(srv.wait_log("mta-sts: try.test (testing): mx.try.test [127.0.0.2] would be refused under enforce: no STARTTLS", WAIT));
}

#[test]
fn oversized_or_slow_policy_does_not_stall_the_queue() {
    let dns = FakeDns::start();
    let ca = TestCa::new();
    let (port, mx) = FakeMx::start_all(vec![(ip(2), Behavior::default())]);
    let mut huge = policy("enforce", &["elsewhere.huge.test"]);
    huge += &"# padding\r\n".repeat(7000); // > 64 KiB
    let https = FakeHttps::start(
        ip(10),
        &ca,
        vec![
            ("mta-sts.huge.test", Policy::Body(huge)),
            ("mta-sts.slow.test", Policy::Silent(Duration::from_secs(60))),
        ],
    );
    for d in ["huge.test", "slow.test", "plain.test"] {
        dns.mx(d, &[(10, &format!("mx.{d}"))]);
        dns.a(&format!("mx.{d}"), &[ip(2)]);
    }
    publish_sts(&dns, &https, "huge.test");
    publish_sts(&dns, &https, "slow.test");
    let dir = TempDir::new("sts");
    let srv = sts_server(&dns, port, &ca, &https, &dir);
    send(&srv, &["eve@slow.test"], "sts-slow");
    send(&srv, &["fay@huge.test"], "sts-huge");
    send(&srv, &["gus@plain.test"], "sts-plain");
    // The two others arrive while the slow policy host holds its fetch;
    // a policy over 64 KiB is no policy (mail goes as without MTA-STS).
    let got = mx[0].wait_messages(2, WAIT);
    let rcpts: Vec<String> = got.iter().map(|g| g.rcpts[0].clone()).collect();
    assert!(
        rcpts.contains(&"gus@plain.test".to_string())
            && rcpts.contains(&"fay@huge.test".to_string()),
        "{rcpts:?}\nlog:\n{}",
        srv.log().join("\n")
    );
    assert!(srv.wait_log("mta-sts: huge.test: cannot fetch the policy", WAIT));
    assert!(
        srv.log().iter().any(|l| l.contains("larger than 65536")),
        "{}",
        srv.log().join("\n")
    );
    // The slow one goes after the fetch deadline, without a policy.
    let got = mx[0].wait_messages(3, WAIT);
    assert_eq!(got.len(), 3, "log:\n{}", srv.log().join("\n"));
    assert_eq!(got[2].rcpts, vec!["eve@slow.test"]);
    assert!(srv.wait_log("mta-sts: slow.test: cannot fetch the policy", WAIT));
}

/// A listener whose accept queue is full: connections to it time out,
/// as when an ISP drops outbound port 25.
struct BlackHole {
    fd: i32,
    _fillers: Vec<std::net::TcpStream>,
}

impl BlackHole {
    fn at(addr: std::net::SocketAddrV4) -> BlackHole {
        // SAFETY: plain socket calls on a descriptor we own.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(
                libc::bind(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
                ),
                0
            );
            assert_eq!(libc::listen(fd, 0), 0);
        }
        // Fill the accept queue (backlog 0 holds one); later SYNs are dropped.
        let mut fillers = Vec::new();
        for _ in 0..2 {
            if let Ok(s) =
                std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500))
            {
                fillers.push(s);
            }
        }
        BlackHole {
            fd,
            _fillers: fillers,
        }
    }
}

impl BlackHole {
    /// Port 25 "opens": the listener starts accepting (its queue drains,
    /// new connections get through) and serves as a fake MX.
    fn open(self, b: Behavior) -> FakeMx {
        use std::os::fd::FromRawFd;
        // SAFETY: the descriptor is a listening TCP socket we own; it
        // moves into the listener here.
        let l = unsafe { std::net::TcpListener::from_raw_fd(self.fd) };
        FakeMx::start_on(l, b)
    }
}

#[test]
fn port25_timeouts_switch_to_the_relay_and_a_probe_switches_back() {
    let dns = FakeDns::start();
    let ca = TestCa::new();
    let relay_b = Behavior {
        starttls: Some(ca.server_config("relay.test")),
        auth: Some(("alice@isp.test".into(), "pw".into())),
        rcpt: std::sync::Arc::new(|a: &str| {
            if a.starts_with("stuck@") {
                (451, "4.7.1 later".into())
            } else {
                (250, "2.1.5 OK".into())
            }
        }),
        ..Behavior::default()
    };
    let (relay_port, relay) = FakeMx::start_all(vec![(ip(5), relay_b)]);
    dns.a("relay.test", &[ip(5)]);
    // Port 25 ("mx_port") of 127.0.0.20 drops connections.
    let port = free_port(20);
    let hole = BlackHole::at(std::net::SocketAddrV4::new(ip(20), port));
    for d in ["a.block.test", "b.block.test", "c.block.test"] {
        dns.mx(d, &[(10, &format!("mx.{d}"))]);
        dns.a(&format!("mx.{d}"), &[ip(20)]);
    }
    let files = TempDir::new("fallback");
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let pw = files.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    let extra = format!(
        "relay = \"relay.test:{relay_port}\"\nrelay_user = \"alice@isp.test\"\nrelay_password_file = {:?}\nrelay_fallback = true\nrelay_probe = \"2s\"\nconnect_timeout = \"2s\"\n",
        pw.display().to_string()
    );
    let srv = Server::with_env(
        outbound_options(&dns, port, &extra),
        vec![("PIMAIL_RELAY_CA_FILE".into(), ca_file.display().to_string())],
    );
    send(
        &srv,
        &["ann@a.block.test", "stuck@b.block.test", "cy@c.block.test"],
        "blocked",
    );
    assert!(
        srv.wait_log("port 25 seems blocked; sending through the relay", WAIT),
        "log:\n{}",
        srv.log().join("\n")
    );
    let got = relay[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1, "log:\n{}", srv.log().join("\n"));
    let mut r = got[0].rcpts.clone();
    r.sort();
    assert_eq!(r, vec!["ann@a.block.test", "cy@c.block.test"]);
    let list = wait_list(&srv, "route: relay");
    assert!(
        list.contains(&format!("route: relay relay.test:{relay_port}")),
        "{list}"
    );
    // Port 25 opens: the next probe finds it and direct delivery resumes.
    let direct = hole.open(Behavior::default());
    assert!(
        srv.wait_log("port 25 open again", WAIT),
        "log:\n{}",
        srv.log().join("\n")
    );
    send(&srv, &["dot@a.block.test"], "open-again");
    let got = direct.wait_messages(1, WAIT);
    assert!(
        got.iter()
            .any(|g| g.rcpts.contains(&"dot@a.block.test".to_string())),
        "log:\n{}",
        srv.log().join("\n")
    );
}

#[test]
fn auto_family_skips_ipv6_without_fcrdns_and_uses_it_once_its_ptr_exists() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no ::1 on this machine: skipped");
        return;
    }
    let dns = FakeDns::start();
    let mx = FakeMx::start_at("[::1]:0".parse().unwrap(), Behavior::default());
    dns.mx("fam.test", &[(10, "mx.fam.test")]);
    dns.aaaa("mx.fam.test", &["::1".parse().unwrap()]);
    // The IPv4 source (127.0.0.1) has FCrDNS; ::1 has no PTR yet.
    dns.ptr(IpAddr::V4(ip(1)), "v4.me.test");
    dns.a("v4.me.test", &[ip(1)]);
    let srv = Server::with_env(
        outbound_options(&dns, mx.port, "ip_family_recheck = \"1s\""),
        vec![("PIMAIL_SOURCE_PROBE".into(), "127.0.0.1:9,[::1]:9".into())],
    );
    assert!(
        srv.wait_log("direct delivery uses IPv4 only", WAIT),
        "log:\n{}",
        srv.log().join("\n")
    );
    send(&srv, &["hal@fam.test"], "family");
    let list = wait_list(&srv, "4.4.4");
    assert!(
        list.contains("IPv6 source ::1 has no forward-confirmed reverse DNS"),
        "{list}"
    );
    assert!(mx.messages().is_empty());
    // The PTR appears: the next check uses IPv6 again, the retry delivers.
    dns.ptr("::1".parse().unwrap(), "v6.me.test");
    dns.aaaa("v6.me.test", &["::1".parse().unwrap()]);
    assert!(srv.wait_log("direct delivery uses IPv4 and IPv6", WAIT));
    assert_eq!(
        mx.wait_messages(1, WAIT).len(),
        1,
        "log:\n{}",
        srv.log().join("\n")
    );
    let switches = srv
        .log()
        .iter()
        .filter(|l| l.contains("outbound: direct delivery uses"))
        .count();
    assert_eq!(switches, 2, "each switch is logged once");
}
