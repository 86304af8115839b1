//! Keeping spam out (issue 17, SPEC "Keeping spam out", docs/spam.md),
//! against the real binary and the fake DNS: pregreet, DNS blocklists
//! (IPv4, IPv6 through a PROXY header, slow lists, lists refusing the
//! resolver), greylisting and who is never greylisted, the Junk folder
//! (DMARC quarantine, SPF fail, header rules, the not-junk list; Junk read
//! with Python's imaplib and mailbox, the user's "not junk" given over
//! IMAP), and the doctor's blocklist check. The checks run from loopback because these
//! servers set `trusted = []`.

mod common;

use common::fakes::{Answer, FakeDns, WAIT};
use common::*;
use hickory_proto::rr::RecordType;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const LISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A server resolving with `dns`, checks on for loopback clients;
/// `inbound` adds to (or overrides, TOML keys once) the `[inbound]` keys.
fn server(dns: &FakeDns, inbound: &str) -> Server {
    Server::with(options(dns, inbound))
}

fn options(dns: &FakeDns, inbound: &str) -> Options {
    let mut keys = String::new();
    for (k, v) in [
        ("auth_checks", "false"),
        ("trusted", "[]"),
        ("pregreet", "\"0s\""),
        ("dnsbl", "[]"),
        ("greylist", "false"),
        ("greylist_delay", "\"2s\""),
    ] {
        if !inbound.lines().any(|l| l.trim_start().starts_with(k)) {
            keys += &format!("{k} = {v}\n");
        }
    }
    let (plain, rules) = match inbound.find("[[inbound.rule]]") {
        Some(i) => (&inbound[..i], &inbound[i..]),
        None => (inbound, ""),
    };
    Options {
        extra: format!(
            "[outbound]\ndns = [\"{}\"]\n[inbound]\n{keys}{plain}\n{rules}\n",
            dns.addr
        ),
        ..Options::default()
    }
}

fn junk_path(srv: &Server) -> std::path::PathBuf {
    srv.data_dir().join("folders/Junk")
}

fn msg(from: &str, subject: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: alice@example.org\r\nSubject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nHello.\r\n")
        .into_bytes()
}

fn swaks(srv: &Server, from: &str, extra: &[&str]) -> (bool, String) {
    let swaks = require_tool("swaks", "swaks");
    let o = Command::new(swaks)
        .args(["--server", &srv.smtp.ip().to_string()])
        .args(["--port", &srv.smtp.port().to_string()])
        .args(["--ehlo", "client.example", "--from", from])
        .args(["--to", "alice@example.org", "--timeout", "30"])
        .args(extra)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), out)
}

#[test]
fn a_client_that_talks_before_the_greeting_is_refused_and_a_polite_one_is_not() {
    let dns = FakeDns::start();
    let srv = server(&dns, "pregreet = \"700ms\"");
    let mut s = TcpStream::connect(srv.smtp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"EHLO bot.example\r\n").unwrap();
    let got = read_all_within(&mut s, WAIT);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("554 5.7.1 "), "{text}");
    assert!(!text.contains("220"), "no greeting for a bot: {text}");
    assert!(srv.wait_log("spam check=pregreet client=127.0.0.1 result=refused", WAIT));
    // A real client (swaks waits for the greeting) gets through.
    let (ok, out) = swaks(&srv, "sam@sender.test", &[]);
    assert!(ok, "{out}");
    assert_eq!(python_mbox_messages(&srv.mbox_path()).len(), 1);
    // Counted for `pimail status`.
    let counts = std::fs::read_to_string(srv.data_dir().join("spam-counts")).unwrap();
    assert!(counts.contains("pregreet 1"), "{counts}");
    let (_, status, err) = run_pimail(&srv.config, &["status"]);
    assert!(
        status.contains("refused:     today pregreet 1"),
        "{status}{err}"
    );
    // Submission never waits: its greeting comes at once, even to a
    // client that talks first.
    let mut c = Client::connect(srv.addr("submission"));
    c.send("EHLO laptop");
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.reply().0, 250);
}

#[test]
fn a_listed_ipv4_client_is_refused_at_rcpt_with_the_list_named() {
    let dns = FakeDns::start();
    dns.dnsbl("bl.test", "127.0.0.1".parse().unwrap(), LISTED);
    let srv = server(&dns, "dnsbl = [\"clean.test\", \"bl.test\"]");
    let (ok, out) = swaks(&srv, "sam@sender.test", &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("<-  250 2.1.0 Sender <sam@sender.test> OK"),
        "EHLO and MAIL are answered: {out}"
    );
    assert!(
        out.contains("554 5.7.1 <alice@example.org>: Service unavailable; client [127.0.0.1] blocked using bl.test (returned 127.0.0.2)"),
        "{out}"
    );
    assert!(srv.wait_log(
        "spam check=dnsbl client=127.0.0.1 result=refused from=\"<sam@sender.test>\"",
        WAIT
    ));
    assert!(python_mbox_messages(&srv.mbox_path()).is_empty());
    // Both lists were asked, in reversed-octet form.
    assert_eq!(dns.count("1.0.0.127.clean.test", RecordType::A, false), 1);
    assert_eq!(dns.count("1.0.0.127.bl.test", RecordType::A, false), 1);
}

/// IPv6: the client's address comes from a PROXY header (the only way to
/// show a loopback server an address other than ::1); the list is asked
/// for its 32 reversed nibbles (RFC 5782 2.4).
#[test]
fn a_listed_ipv6_client_is_refused_too() {
    let dns = FakeDns::start();
    let client: IpAddr = "2001:db8:1:2::25".parse().unwrap();
    dns.dnsbl("bl6.test", client, Ipv4Addr::new(127, 0, 0, 3));
    let mut o = options(&dns, "dnsbl = [\"bl6.test\"]");
    o.listen_extra = "proxy_protocol = [\"127.0.0.1:0\"]\n".into();
    let srv = Server::with(o);
    let mut s = TcpStream::connect(srv.smtp).unwrap();
    s.write_all(b"PROXY TCP6 2001:db8:1:2::25 ::1 4000 25\r\n")
        .unwrap();
    let mut c = Client::from_stream(s);
    c.hello();
    c.expect("MAIL FROM:<x@sender.test>", 250);
    let (code, text) = c.cmd("RCPT TO:<alice@example.org>");
    assert_eq!(code, 554, "{text}");
    assert!(
        text.contains("client [2001:db8:1:2::25] blocked using bl6.test (returned 127.0.0.3)"),
        "{text}"
    );
    let name = pimail::trust::dnsbl::query_name(client, "bl6.test");
    assert!(name.starts_with("5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2."));
    assert_eq!(dns.count(&name, RecordType::A, false), 1);
}

#[test]
fn a_list_that_does_not_answer_in_time_does_not_block_mail() {
    let dns = FakeDns::start();
    let name = pimail::trust::dnsbl::query_name("127.0.0.1".parse().unwrap(), "slow.test");
    dns.set(
        &name,
        RecordType::A,
        Answer::Slow(
            Duration::from_secs(8),
            common::fakes::a_records(&name, &[LISTED]),
        ),
    );
    let srv = server(&dns, "dnsbl = [\"slow.test\"]");
    let t = Instant::now();
    let mut c = srv.connect();
    c.hello();
    // The greeting waited for the list at most its timeout (2 s), not 8.
    assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());
    let (code, text) = c.send_message(
        "sam@sender.test",
        &["alice@example.org"],
        &msg("sam@sender.test", "slow"),
    );
    assert_eq!(code, 250, "{text}");
    assert!(srv.wait_log(
        "spam check=dnsbl client=127.0.0.1 list=slow.test result=unanswered",
        WAIT
    ));
}

#[test]
fn a_list_refusing_the_resolver_does_not_block_mail_and_is_warned_about_once() {
    let dns = FakeDns::start();
    dns.dnsbl(
        "zen.test",
        "127.0.0.1".parse().unwrap(),
        Ipv4Addr::new(127, 255, 255, 254),
    );
    let srv = server(&dns, "dnsbl = [\"zen.test\"]");
    for i in 0..2 {
        let mut c = srv.connect();
        c.hello();
        let (code, text) = c.send_message(
            "sam@sender.test",
            &["alice@example.org"],
            &msg("sam@sender.test", &format!("public{i}")),
        );
        assert_eq!(code, 250, "{text}");
    }
    assert_eq!(python_mbox_messages(&srv.mbox_path()).len(), 2);
    let warnings: Vec<String> = srv
        .log()
        .into_iter()
        .filter(|l| l.contains("dnsbl zen.test: answered 127.255.255.254, an error of the list"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn greylisting_defers_an_unknown_client_then_accepts_its_retry_and_remembers_it() {
    let dns = FakeDns::start();
    let mut srv = server(&dns, "greylist = true");
    let m = msg("news@far.test", "grey");
    let mut c = srv.connect();
    c.hello();
    c.expect("MAIL FROM:<news1234@far.test>", 250);
    let (code, text) = c.cmd("RCPT TO:<alice@example.org>");
    assert_eq!(code, 451, "{text}");
    assert!(
        text.contains("4.7.1") && text.contains("Greylisted"),
        "{text}"
    );
    assert!(srv.wait_log("spam check=greylist client=127.0.0.1 result=deferred", WAIT));
    c.expect("RSET", 250);
    // Too early: still deferred.
    c.expect("MAIL FROM:<news1234@far.test>", 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.org>").0, 451);
    c.expect("RSET", 250);
    std::thread::sleep(Duration::from_millis(2500));
    // The retry after the delay (a new VERP sender counts as the same).
    let (code, text) = c.send_message("news5678@far.test", &["alice@example.org"], &m);
    assert_eq!(code, 250, "{text}");
    assert_eq!(python_mbox_messages(&srv.mbox_path()).len(), 1);
    drop(c);
    // After a restart the triplet is still known: no new delay.
    srv.terminate();
    srv.spawn();
    let mut c = srv.connect();
    c.hello();
    let (code, text) = c.send_message("news1@far.test", &["alice@example.org"], &m);
    assert_eq!(code, 250, "{text}");
    let size = std::fs::metadata(srv.data_dir().join("greylist"))
        .unwrap()
        .len();
    assert_eq!(size, pimail::trust::greylist::FILE_SIZE);
    // Another recipient is another triplet.
    c.expect("MAIL FROM:<news1@far.test>", 250);
    assert_eq!(c.cmd("RCPT TO:<abuse@example.org>").0, 451);
}

#[test]
fn spf_pass_with_forward_confirmed_reverse_dns_is_never_delayed() {
    let dns = FakeDns::start();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    dns.ptr(lo, "mx.big.test");
    dns.a("mx.big.test", &[Ipv4Addr::LOCALHOST]);
    dns.txt("big.test", &["v=spf1 ip4:127.0.0.0/8 -all"]);
    let srv = server(&dns, "greylist = true");
    let (ok, out) = swaks(&srv, "notify@big.test", &[]);
    assert!(ok, "SPF pass + FCrDNS: no delay\n{out}");
    assert!(srv.wait_log("spam check=greylist client=127.0.0.1 result=exempt", WAIT));
    // The same client with a sender whose SPF does not pass: delayed.
    dns.txt("other.test", &["v=spf1 -all"]);
    let (ok, out) = swaks(&srv, "x@other.test", &[]);
    assert!(!ok && out.contains("451 4.7.1"), "{out}");
}

#[test]
fn replies_from_people_the_user_wrote_to_are_never_delayed() {
    let dns = FakeDns::start();
    let srv = server(&dns, "greylist = true");
    let (code, err) = srv.sendmail(
        &["-f", "alice@example.org", "bob@remote.test"],
        b"Subject: hi Bob\n\nHello.\n",
    );
    assert_eq!(code, 0, "{err}");
    let mut c = srv.connect();
    c.hello();
    let (code, text) = c.send_message(
        "Bob@remote.test",
        &["alice@example.org"],
        &msg("bob@remote.test", "re"),
    );
    assert_eq!(code, 250, "{text}");
    assert!(srv.wait_log("result=exempt", WAIT));
    // Someone else from the same network is delayed.
    c.expect("MAIL FROM:<carol@remote.test>", 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.org>").0, 451);
}

#[test]
fn dmarc_quarantine_failures_go_to_junk_with_the_reason() {
    let dns = FakeDns::start();
    dns.txt("_dmarc.shop.test", &["v=DMARC1; p=quarantine"]);
    dns.txt("shop.test", &["v=spf1 ip4:192.0.2.1 -all"]);
    // Trusted loopback (the default): the verdicts still apply.
    let srv = Server::with(Options {
        extra: format!(
            "[outbound]\ndns = [\"{}\"]\n[inbound]\nauth_checks = true\n",
            dns.addr
        ),
        ..Options::default()
    });
    let mut c = srv.connect();
    c.hello();
    let forged = b"X-Spam-Reason: none, this is fine\r\nFrom: Shop <deals@shop.test>\r\nTo: alice@example.org\r\nSubject: deals\r\n\r\nBuy.\r\n";
    let (code, text) = c.send_message("deals@shop.test", &["alice@example.org"], forged);
    assert_eq!(code, 250, "{text}");
    assert!(srv.wait_log("folder=Junk", WAIT));
    assert!(python_mbox_messages(&srv.mbox_path()).is_empty());
    let junk = python_mbox_messages(&junk_path(&srv));
    assert_eq!(junk.len(), 1);
    let m = String::from_utf8_lossy(&junk[0]).into_owned();
    assert!(
        m.contains("X-Spam-Reason: dmarc: shop.test asks to quarantine mail that fails DMARC"),
        "{m}"
    );
    assert!(m.contains("spf: shop.test does not allow 127.0.0.1"), "{m}");
    assert_eq!(
        m.matches("X-Spam-Reason:").count(),
        1,
        "the forged one is gone:\n{m}"
    );
    assert!(m.contains("Buy."));
}

#[test]
fn header_rules_send_to_junk_or_refuse_and_not_junk_marks_are_honoured() {
    let dns = FakeDns::start();
    let srv = server(
        &dns,
        "[[inbound.rule]]\nheader = \"Subject\"\ncontains = \"LOTTERY\"\naction = \"junk\"\n\
         [[inbound.rule]]\nheader = \"From\"\npattern = \"*@bad.test>\"\naction = \"reject\"\n",
    );
    let mut c = srv.connect();
    c.hello();
    let (code, text) = c.send_message(
        "win@lotto.test",
        &["alice@example.org"],
        &msg("Winner <win@lotto.test>", "You won the Lottery"),
    );
    assert_eq!(code, 250, "{text}");
    let (code, text) = c.send_message(
        "x@bad.test",
        &["alice@example.org"],
        &msg("X <x@bad.test>", "hello"),
    );
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.7.1"), "{text}");
    let (code, _) = c.send_message(
        "sam@ok.test",
        &["alice@example.org"],
        &msg("sam@ok.test", "fine"),
    );
    assert_eq!(code, 250);
    let junk = python_mbox_messages(&junk_path(&srv));
    assert_eq!(junk.len(), 1);
    let j = String::from_utf8_lossy(&junk[0]).into_owned();
    // Among the trace fields on top, above Return-Path.
    let reason = j.find("X-Spam-Reason: rule: subject contains \"lottery\"\n");
    assert!(
        reason.is_some_and(|r| j.find("Return-Path:").is_some_and(|rp| r < rp)),
        "{j}"
    );
    let inbox = python_mbox_messages(&srv.mbox_path());
    assert_eq!(inbox.len(), 1);
    assert!(String::from_utf8_lossy(&inbox[0]).contains("Subject: fine"));
    // The user marks the lottery sender "not junk": the rules leave it be.
    std::fs::write(
        srv.data_dir().join("notjunk"),
        "sender win@lotto.test\nsender x@bad.test\n",
    )
    .unwrap();
    let (code, _) = c.send_message(
        "win@lotto.test",
        &["alice@example.org"],
        &msg("Winner <win@lotto.test>", "Lottery again"),
    );
    assert_eq!(code, 250);
    let (code, _) = c.send_message(
        "x@bad.test",
        &["alice@example.org"],
        &msg("X <x@bad.test>", "hello again"),
    );
    assert_eq!(code, 250);
    assert_eq!(python_mbox_messages(&srv.mbox_path()).len(), 3);
    assert_eq!(python_mbox_messages(&junk_path(&srv)).len(), 1);
    assert!(
        srv.wait_log("spam check=rule", WAIT) && srv.log_line("result=exempt-not-junk").is_some()
    );
}

#[test]
fn doctor_reports_a_blocklist_that_refuses_the_resolver() {
    let dns = FakeDns::start();
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    dns.dnsbl("good.test", two, LISTED);
    dns.dnsbl("zen.test", two, Ipv4Addr::new(127, 255, 255, 254));
    let dir = TempDir::new("doctor");
    let config = Server::write_config(
        dir.path(),
        &options(&dns, "dnsbl = [\"good.test\", \"zen.test\"]"),
    );
    let (code, out, err) = run_pimail(&config, &["doctor"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("[ok]   DNS blocklist good.test answers (test entry 127.0.0.2 listed as 127.0.0.2, 127.0.0.1 not)"),
        "{out}"
    );
    assert!(
        out.contains(
            "[FAIL] DNS blocklist: zen.test refuses this resolver (answered 127.255.255.254"
        ),
        "{out}"
    );
    assert!(out.contains("apt install unbound"), "{out}");
}

/// A server as [`server`], with IMAP on.
fn imap_server(dns: &FakeDns, inbound: &str) -> Server {
    Server::with(Options {
        listen_imap: true,
        ..options(dns, inbound)
    })
}

/// Runs a Python `imaplib` script logged in as the user; its output.
fn imaplib(srv: &Server, script: &str) -> String {
    let a = srv.addr("imap");
    let (host, port) = (a.ip().to_string(), a.port().to_string());
    let prelude = "import imaplib, sys\n\
                   M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=60)\n\
                   typ, caps = M.login('alice', 'secret')\n\
                   assert typ == 'OK', caps\n";
    python(&format!("{prelude}{script}"), &[&host, &port])
}

const LOTTERY_RULE: &str =
    "[[inbound.rule]]\nheader = \"Subject\"\ncontains = \"lottery\"\naction = \"junk\"\n";

/// Sends a message with `subject` from `from` (envelope and From:) by swaks.
fn swaks_subject(srv: &Server, from: &str, subject: &str) {
    let header = format!("Subject: {subject}");
    let (ok, out) = swaks(srv, from, &["--header", &header]);
    assert!(ok, "{out}");
}

#[test]
fn junk_is_readable_over_imap_and_with_python_mailbox() {
    let dns = FakeDns::start();
    dns.txt("_dmarc.shop.test", &["v=DMARC1; p=quarantine"]);
    dns.txt("shop.test", &["v=spf1 ip4:192.0.2.1 -all"]);
    let srv = imap_server(&dns, &format!("auth_checks = true\n{LOTTERY_RULE}"));
    // A DMARC quarantine failure and a rule match, by swaks.
    let (ok, out) = swaks(
        &srv,
        "deals@shop.test",
        &[
            "--header",
            "Subject: deals",
            "--header",
            "From: Shop <deals@shop.test>",
        ],
    );
    assert!(ok, "{out}");
    swaks_subject(&srv, "win@lotto.test", "You won the Lottery");
    assert!(python_mbox_messages(&srv.mbox_path()).is_empty());
    let out = imaplib(
        &srv,
        r#"
typ, data = M.list()
print('LIST', [l.decode() for l in data])
typ, data = M.select('Junk', readonly=True)
assert typ == 'OK', data
print('EXISTS', data[0].decode())
typ, data = M.fetch('1:*', '(FLAGS BODY.PEEK[HEADER.FIELDS (X-SPAM-REASON SUBJECT)])')
assert typ == 'OK', data
for d in data:
    if isinstance(d, tuple):
        sys.stdout.write('FETCH ' + d[1].decode().replace('\r\n', ' | ') + '\n')
typ, data = M.fetch('2', '(BODY.PEEK[])')
sys.stdout.write('WHOLE ' + repr(data[0][1]) + '\n')
M.logout()
"#,
    );
    assert!(out.contains("\\\\Junk) \"/\" \"Junk\""), "{out}");
    assert!(out.contains("EXISTS 2"), "{out}");
    assert!(
        out.contains("X-Spam-Reason: dmarc: shop.test asks to quarantine mail that fails DMARC")
            && out.contains("Subject: deals"),
        "{out}"
    );
    assert!(
        out.contains(
            "X-Spam-Reason: rule: subject contains \"lottery\" | Subject: You won the Lottery"
        ),
        "{out}"
    );
    assert!(out.contains("WHOLE b'X-Spam-Reason: rule:"), "{out}");
    // The same file through Python's mailbox module, as any mbox reader.
    let out = python(
        r#"
import mailbox, sys
box = mailbox.mbox(sys.argv[1], create=False)
for m in box:
    print('MSG', m['Subject'], '|', m['X-Spam-Reason'], '|', m.get_payload().strip()[:20])
"#,
        &[&junk_path(&srv)],
    );
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("MSG ")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("MSG deals | dmarc: shop.test"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(
            "MSG You won the Lottery | rule: subject contains \"lottery\" | This is a test"
        ),
        "{out}"
    );
}

/// The user's verdict over IMAP reaches the rules: a message moved out of
/// Junk (or flagged `$NotJunk`) records its sender in `notjunk`, and that
/// sender's next message that the rule matches lands in the INBOX; one
/// moved to Trash is deleted spam, not a verdict.
#[test]
fn mail_moved_out_of_junk_or_marked_not_junk_over_imap_is_not_junked_again() {
    let dns = FakeDns::start();
    let srv = imap_server(&dns, LOTTERY_RULE);
    swaks_subject(&srv, "win@lotto.test", "Lottery club minutes");
    swaks_subject(&srv, "club@raffle.test", "Lottery results");
    swaks_subject(&srv, "bot@spam.test", "Lottery winner");
    assert_eq!(python_mbox_messages(&junk_path(&srv)).len(), 3);
    let out = imaplib(
        &srv,
        r#"
M.select('Junk')
typ, data = M.uid('MOVE', '1', 'INBOX')
print('MOVE', typ, data)
typ, data = M.uid('STORE', '2', '+FLAGS', '($NotJunk)')
print('STORE', typ, data)
typ, data = M.uid('MOVE', '3', 'Trash')
print('TRASH', typ, data)
M.select('INBOX')
typ, data = M.fetch('1', '(FLAGS)')
print('INBOX', data)
M.logout()
"#,
    );
    assert!(out.contains("MOVE OK"), "{out}");
    assert!(
        out.contains("STORE OK") && out.contains("$NotJunk"),
        "{out}"
    );
    assert!(out.contains("INBOX [b'1 (FLAGS ($NotJunk"), "{out}");
    let notjunk = std::fs::read_to_string(srv.data_dir().join("notjunk")).unwrap();
    assert!(
        notjunk.contains("sender win@lotto.test\n")
            && notjunk.contains("sender club@raffle.test\n"),
        "{notjunk}"
    );
    assert!(
        !notjunk.contains("spam.test"),
        "Trash is no verdict: {notjunk}"
    );
    assert!(srv.wait_log("spam notjunk recorded=\"sender win@lotto.test", WAIT));
    // The same kind of message again, from each of them.
    swaks_subject(&srv, "win@lotto.test", "Lottery club minutes, March");
    swaks_subject(&srv, "club@raffle.test", "Lottery results, March");
    swaks_subject(&srv, "bot@spam.test", "Lottery winner again");
    let inbox = python_mbox_messages(&srv.mbox_path());
    let subjects: Vec<String> = inbox
        .iter()
        .filter_map(|m| {
            String::from_utf8_lossy(m)
                .lines()
                .find(|l| l.starts_with("Subject: "))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        subjects,
        [
            "Subject: Lottery club minutes",
            "Subject: Lottery club minutes, March",
            "Subject: Lottery results, March"
        ],
        "{subjects:?}"
    );
    let junk = python_mbox_messages(&junk_path(&srv));
    assert_eq!(
        junk.len(),
        2,
        "the flagged one stays, the bot's new one comes"
    );
    assert!(String::from_utf8_lossy(&junk[1]).contains("Subject: Lottery winner again"));
    assert!(srv.log_line("result=exempt-not-junk").is_some());
}
