//! SMTP receive -> mbox, end to end: the real server over real sockets.
//!
//! Every reply a client can see on port 25 (RFC 5321, 2920, 1870, 3463),
//! the limits and timeouts, graceful stop, and the mbox read back with
//! Python's `mailbox` and compared byte for byte with what was sent.
//! Interop with smtplib, swaks and curl is at the end.

mod common;
use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn server_with_limits(limits: &str) -> Server {
    Server::with(Options {
        limits: limits.into(),
        ..Options::default()
    })
}

/// Asserts a reply's code and enhanced status code.
fn check(reply: (u16, String), code: u16, esc: &str) -> String {
    let (c, text) = reply;
    assert_eq!(c, code, "wanted {code} {esc}, got: {text}");
    assert!(
        text.lines()
            .all(|l| l.get(4..).is_some_and(|t| t.starts_with(esc))),
        "wanted {code} {esc}, got: {text}"
    );
    text
}

/// Reads until the server closes the connection (bounded).
fn expect_closed(c: &mut Client) {
    let rest = read_all_within(&mut c.stream, Duration::from_secs(30));
    assert!(
        rest.is_empty(),
        "expected the connection closed, got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// The messages now in the mbox, as the sender sent them.
fn mbox_messages(srv: &Server) -> Vec<Vec<u8>> {
    if !srv.mbox_path().exists() {
        return vec![];
    }
    python_mbox_messages(&srv.mbox_path())
        .iter()
        .map(|m| original_from_stored(m))
        .collect()
}

fn show(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

#[test]
fn delivers_to_mbox_readable_by_python_mailbox() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    let body = b"Subject: hello\r\n\r\nFrom the start\r\n..leading dot\r\n>From quoted\r\n";
    let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], body);
    assert_eq!(code, 250, "{text}");
    c.expect("QUIT", 221);
    let msgs = python_mbox_messages(&srv.mbox_path());
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        original_from_stored(&msgs[0]),
        b"Subject: hello\r\n\r\nFrom the start\r\n.leading dot\r\n>From quoted\r\n".to_vec()
    );
}

#[test]
fn full_dialogue() {
    let srv = Server::start();
    let mut c = srv.connect();
    let (code, greeting) = c.reply();
    assert_eq!(code, 220, "{greeting}");
    assert!(greeting.contains("mail.example.org"), "{greeting}");
    let ehlo = c.expect("EHLO client.example", 250);
    for ext in [
        "SIZE ",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(
            ehlo.contains(&format!("250-{ext}")) || ehlo.contains(&format!("250 {ext}")),
            "{ext} missing in {ehlo}"
        );
    }
    check(c.cmd("NOOP"), 250, "2.0.0");
    check(c.cmd("HELP"), 214, "2.0.0");
    check(c.cmd("VRFY alice"), 252, "2.5.0");
    // Null sender (bounces) is accepted; HELO after EHLO starts over.
    check(c.cmd("HELO client.example"), 250, "");
    check(c.cmd("MAIL FROM:<>"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    // Subaddress, case-insensitive domain, and Postmaster without a domain.
    check(c.cmd("RCPT TO:<Alice+lists@EXAMPLE.ORG>"), 250, "2.1.5");
    check(c.cmd("DATA"), 354, "");
    c.send_raw(&message("dialogue", "Hi Alice.\r\n"));
    c.send_raw(b".\r\n");
    let ok = check(c.reply(), 250, "2.0.0");
    check(c.cmd("QUIT"), 221, "2.0.0");
    expect_closed(&mut c);

    let stored = python_mbox_messages(&srv.mbox_path());
    assert_eq!(stored.len(), 1);
    let text = show(&stored[0]);
    assert!(text.starts_with("Return-Path: <>\n"), "{text}");
    assert!(
        text.contains("Received: from client.example ([127.0.0.1])\n\tby mail.example.org"),
        "{text}"
    );
    // The id in the 250 reply is the one in the Received header and the log.
    let id = ok.trim_end().rsplit(' ').next().unwrap().to_string();
    assert!(text.contains(&format!("id {id}")), "{id} in {text}");
    assert!(srv.wait_log(&format!("accepted id={id}"), Duration::from_secs(10)));
    assert_eq!(
        mbox_messages(&srv),
        vec![message("dialogue", "Hi Alice.\r\n")]
    );
    let raw = show(&srv.mbox());
    assert!(raw.starts_with("From MAILER-DAEMON "), "{raw}");
}

#[test]
fn pipelined_commands_get_their_replies_in_order() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    c.send_raw(
        b"MAIL FROM:<bob@example.com>\r\nRCPT TO:<alice@example.org>\r\n\
          RCPT TO:<nobody@example.org>\r\nRCPT TO:<abuse@example.org>\r\nDATA\r\n",
    );
    check(c.reply(), 250, "2.1.0");
    check(c.reply(), 250, "2.1.5");
    check(c.reply(), 550, "5.1.1");
    check(c.reply(), 250, "2.1.5");
    check(c.reply(), 354, "");
    // End of data, and the next transaction up to DATA, in one write.
    let first = message("pipe-1", "one\r\n");
    let mut w = first.clone();
    w.extend_from_slice(
        b".\r\nMAIL FROM:<carol@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n",
    );
    c.send_raw(&w);
    check(c.reply(), 250, "2.0.0");
    check(c.reply(), 250, "2.1.0");
    check(c.reply(), 250, "2.1.5");
    check(c.reply(), 354, "");
    let second = message("pipe-2", "two\r\n");
    let mut w = second.clone();
    w.extend_from_slice(
        b".\r\nRSET\r\nMAIL FROM:<dave@example.net>\r\nRCPT TO:<x@elsewhere.example>\r\n\
          DATA\r\nNOOP\r\nQUIT\r\n",
    );
    c.send_raw(&w);
    check(c.reply(), 250, "2.0.0");
    check(c.reply(), 250, "2.0.0");
    check(c.reply(), 250, "2.1.0");
    check(c.reply(), 554, "5.7.1");
    // RFC 2920 3.1: DATA after every RCPT failed is refused.
    check(c.reply(), 554, "5.5.1");
    check(c.reply(), 250, "2.0.0");
    check(c.reply(), 221, "2.0.0");
    expect_closed(&mut c);
    assert_eq!(mbox_messages(&srv), vec![first, second]);
}

#[test]
fn whole_transactions_in_one_write() {
    let srv = Server::start();
    let mut c = srv.connect();
    let mut w = b"EHLO blaster.example\r\n".to_vec();
    let msgs: Vec<Vec<u8>> = (0..3)
        .map(|i| message(&format!("blast-{i}"), &format!("message {i}\r\n.dot\r\n")))
        .collect();
    for m in &msgs {
        w.extend_from_slice(
            b"MAIL FROM:<bob@example.com>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n",
        );
        w.extend_from_slice(&dot_stuff(m));
        w.extend_from_slice(b".\r\n");
    }
    w.extend_from_slice(b"QUIT\r\n");
    c.send_raw(&w);
    check(c.reply(), 220, "");
    check(c.reply(), 250, "");
    for _ in &msgs {
        check(c.reply(), 250, "2.1.0");
        check(c.reply(), 250, "2.1.5");
        check(c.reply(), 354, "");
        check(c.reply(), 250, "2.0.0");
    }
    check(c.reply(), 221, "2.0.0");
    assert_eq!(mbox_messages(&srv), msgs);
}

#[test]
fn forms_real_clients_use_are_accepted() {
    let srv = Server::start();
    let mut c = srv.connect();
    check(c.reply(), 220, "");
    // Lower-case verbs, a space after the colon, an address literal as
    // HELO name, Postmaster without a domain (RFC 5321 4.5.1).
    check(c.cmd("helo [192.0.2.7]"), 250, "");
    check(c.cmd("mail from: <bob@example.com>"), 250, "2.1.0");
    check(c.cmd("rcpt to: <Postmaster>"), 250, "2.1.5");
    check(c.cmd("Rcpt To:<POSTMASTER@example.org>"), 250, "2.1.5");
    check(c.cmd("data"), 354, "");
    let m = message("lenient", "x\r\n");
    c.send_raw(&m);
    c.send_raw(b".\r\n");
    check(c.reply(), 250, "2.0.0");
    check(c.cmd("quit"), 221, "2.0.0");
    assert_eq!(mbox_messages(&srv), vec![m]);
    // A plain HELO session is logged as SMTP, not ESMTP.
    assert!(
        show(&srv.mbox()).contains("with SMTP id"),
        "{}",
        show(&srv.mbox())
    );
}

#[test]
fn several_recipients_get_one_copy() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    let m = message("many-rcpts", "to all of me\r\n");
    let (code, text) = c.send_message(
        "bob@example.com",
        &[
            "alice@example.org",
            "alice+x@example.org",
            "abuse@example.org",
        ],
        &m,
    );
    assert_eq!(code, 250, "{text}");
    assert_eq!(mbox_messages(&srv), vec![m]);
}

#[test]
fn rset_forgets_the_transaction() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    check(c.cmd("MAIL FROM:<forgotten@example.com>"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("RSET"), 250, "2.0.0");
    check(c.cmd("DATA"), 503, "5.5.1");
    check(c.cmd("RCPT TO:<alice@example.org>"), 503, "5.5.1");
    let m = message("after-rset", "x\r\n");
    let (code, text) = c.send_message("kept@example.com", &["alice@example.org"], &m);
    assert_eq!(code, 250, "{text}");
    assert_eq!(mbox_messages(&srv), vec![m]);
    let raw = show(&srv.mbox());
    assert!(raw.starts_with("From kept@example.com "), "{raw}");
    assert!(!raw.contains("forgotten"), "{raw}");
}

#[test]
fn bad_sequence_gets_503() {
    let srv = Server::start();
    let mut c = srv.connect();
    check(c.reply(), 220, "");
    check(c.cmd("MAIL FROM:<bob@example.com>"), 503, "5.5.1");
    check(c.cmd("RCPT TO:<alice@example.org>"), 503, "5.5.1");
    check(c.cmd("DATA"), 503, "5.5.1");
    check(c.cmd("EHLO client.example"), 250, "");
    check(c.cmd("RCPT TO:<alice@example.org>"), 503, "5.5.1");
    check(c.cmd("DATA"), 503, "5.5.1");
    check(c.cmd("MAIL FROM:<bob@example.com>"), 250, "2.1.0");
    check(c.cmd("MAIL FROM:<bob@example.com>"), 503, "5.5.1");
    check(c.cmd("AUTH PLAIN"), 503, "5.5.1");
    check(c.cmd("QUIT"), 221, "2.0.0");
    assert!(srv.mbox().is_empty());
}

#[test]
fn syntax_errors_get_500_501_555() {
    let srv = server_with_limits("max_errors = 100");
    let mut c = srv.connect();
    check(c.reply(), 220, "");
    check(c.cmd("EHLO"), 501, "5.5.4");
    check(c.cmd("BOGUS command"), 500, "5.5.1");
    check(c.cmd(""), 500, "5.5.1");
    check(c.cmd("EHLO client.example"), 250, "");
    check(c.cmd("MAIL bob@example.com"), 501, "5.5.4");
    check(c.cmd("MAIL FROM:bob@example.com"), 501, "5.5.4");
    check(c.cmd("MAIL FROM:<bob@example.com"), 501, "5.5.4");
    check(c.cmd("MAIL FROM:<bob@@example.com>"), 501, "5.5.4");
    check(c.cmd("MAIL FROM:<bob@example.com> SIZE=lots"), 501, "5.5.4");
    check(c.cmd("MAIL FROM:<bob@example.com> FOO=BAR"), 555, "5.5.4");
    check(c.cmd("MAIL FROM:<bob@example.com> BODY=9BIT"), 555, "5.5.4");
    check(c.cmd("MAIL FROM:<jörg@example.com>"), 553, "5.6.7");
    check(
        c.cmd("MAIL FROM:<bob@example.com> BODY=8BITMIME SIZE=100"),
        250,
        "2.1.0",
    );
    check(c.cmd("RCPT TO:"), 501, "5.5.4");
    check(c.cmd("RCPT alice@example.org"), 501, "5.5.4");
    check(
        c.cmd("RCPT TO:<alice@example.org> NOTIFY=NEVER"),
        555,
        "5.5.4",
    );
    check(c.cmd("DATA now"), 501, "5.5.4");
    check(c.cmd("RSET everything"), 501, "5.5.4");
    check(c.cmd("QUIT"), 221, "2.0.0");
}

#[test]
fn unknown_users_and_relaying_are_refused() {
    let srv = server_with_limits("max_errors = 100");
    let mut c = srv.connect();
    c.hello();
    check(c.cmd("MAIL FROM:<alice@example.org>"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<nobody@example.org>"), 550, "5.1.1");
    check(c.cmd("RCPT TO:<NOBODY+alice@example.org>"), 550, "5.1.1");
    // Other domains: relay denied, even from "our" sender on port 25.
    for rcpt in [
        "bob@example.com",
        "alice@example.org.evil.example",
        "alice@sub.example.org",
        // Source route through us to another domain (RFC 5321 C.1).
        "@example.org:bob@evil.example",
        "@example.org,@mail.example.org:bob@evil.example",
        // Address literals, even our own address.
        "alice@[127.0.0.1]",
        "alice@[IPv6:::1]",
    ] {
        check(c.cmd(&format!("RCPT TO:<{rcpt}>")), 554, "5.7.1");
    }
    // Tricks that older servers routed onward: here just unknown users.
    for rcpt in [
        "bob%evil.example@example.org",
        "evil.example!bob@example.org",
        "\"bob@evil.example\"@example.org",
        "\"bob%evil.example\"@example.org",
    ] {
        check(c.cmd(&format!("RCPT TO:<{rcpt}>")), 550, "5.1.1");
    }
    for rcpt in [
        "bob@evil.example@example.org",
        "alice@example.org.",
        "alice@",
    ] {
        check(c.cmd(&format!("RCPT TO:<{rcpt}>")), 501, "5.5.4");
    }
    // Nothing was accepted, so there is nothing to send data to.
    check(c.cmd("DATA"), 554, "5.5.1");
    check(c.cmd("QUIT"), 221, "2.0.0");
    assert!(srv.mbox().is_empty());
}

#[test]
fn too_many_recipients_get_452() {
    let srv = server_with_limits("max_recipients = 2");
    let mut c = srv.connect();
    c.hello();
    check(c.cmd("MAIL FROM:<bob@example.com>"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("RCPT TO:<abuse@example.org>"), 250, "2.1.5");
    check(c.cmd("RCPT TO:<alice+3@example.org>"), 452, "4.5.3");
    check(c.cmd("DATA"), 354, "");
    let m = message("two-rcpts", "x\r\n");
    c.send_raw(&m);
    c.send_raw(b".\r\n");
    check(c.reply(), 250, "2.0.0");
    assert_eq!(mbox_messages(&srv), vec![m]);
}

#[test]
fn declared_size_too_big_is_refused_at_mail() {
    let srv = server_with_limits("max_message_size = \"10K\"");
    let mut c = srv.connect();
    let ehlo = {
        check(c.reply(), 220, "");
        c.expect("EHLO client.example", 250)
    };
    assert!(ehlo.contains("SIZE 10240"), "{ehlo}");
    check(
        c.cmd("MAIL FROM:<bob@example.com> SIZE=10241"),
        552,
        "5.3.4",
    );
    check(
        c.cmd("MAIL FROM:<bob@example.com> SIZE=99999999999999"),
        552,
        "5.3.4",
    );
    // Refused at MAIL: no transaction was opened.
    check(c.cmd("RCPT TO:<alice@example.org>"), 503, "5.5.1");
    check(
        c.cmd("MAIL FROM:<bob@example.com> SIZE=10240"),
        250,
        "2.1.0",
    );
}

#[test]
fn actual_size_too_big_is_refused_and_nothing_stored() {
    let srv = server_with_limits("max_message_size = \"10K\"");
    let mut c = srv.connect();
    c.hello();
    // The client lies about the size (or sends none).
    check(c.cmd("MAIL FROM:<bob@example.com> SIZE=1000"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("DATA"), 354, "");
    let line = format!("{}\r\n", "y".repeat(98));
    let big = message("too-big", &line.repeat(200));
    c.send_raw(&big);
    c.send_raw(b".\r\n");
    check(c.reply(), 552, "5.3.4");
    // The session goes on, and a message at the limit is fine.
    let fits = message("fits", &line.repeat(90));
    assert!(fits.len() <= 10240);
    let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], &fits);
    assert_eq!(code, 250, "{text}");
    assert_eq!(mbox_messages(&srv), vec![fits]);
    assert!(srv.wait_log("refused", Duration::from_secs(5)));
}

#[test]
fn too_long_command_line_gets_500_5_5_2() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    // 512 octets with CRLF is the limit (RFC 5321 4.5.3.1.4).
    let at_limit = format!("NOOP {}", "a".repeat(512 - 2 - 5));
    check(c.cmd(&at_limit), 250, "2.0.0");
    let over = format!("NOOP {}", "a".repeat(512 - 2 - 4));
    check(c.cmd(&over), 500, "5.5.2");
    let long_mail = format!("MAIL FROM:<{}@example.com>", "b".repeat(5000));
    check(c.cmd(&long_mail), 500, "5.5.2");
    // The rest of the long line was not taken as a command.
    check(c.cmd("RCPT TO:<alice@example.org>"), 503, "5.5.1");
    check(c.cmd("NOOP"), 250, "2.0.0");
}

#[test]
fn too_long_text_line_refuses_the_message() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    check(c.cmd("MAIL FROM:<bob@example.com>"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("DATA"), 354, "");
    // 1001 octets + CRLF: one over RFC 5321 4.5.3.1.6.
    c.send_raw(&message(
        "long-line",
        &format!("{}\r\nend\r\n", "z".repeat(1001)),
    ));
    c.send_raw(b".\r\n");
    check(c.reply(), 554, "5.6.0");
    check(c.cmd("NOOP"), 250, "2.0.0");
    assert!(srv.mbox().is_empty());
}

#[test]
fn bare_lf_and_cr_in_commands_are_refused() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    c.send_raw(b"NOOP\n");
    check(c.reply(), 500, "5.5.2");
    // A MAIL hidden behind a bare CR or LF is never executed.
    c.send_raw(b"MAIL FROM:<evil@example.com>\nRCPT TO:<alice@example.org>\r\n");
    check(c.reply(), 500, "5.5.2");
    check(c.reply(), 503, "5.5.1");
    c.send_raw(b"NOOP\rMAIL FROM:<evil@example.com>\r\n");
    check(c.reply(), 500, "5.5.2");
    check(c.cmd("RCPT TO:<alice@example.org>"), 503, "5.5.1");
    check(c.cmd("NOOP"), 250, "2.0.0");
}

#[test]
fn smuggling_attempts_in_data_deliver_nothing() {
    let srv = server_with_limits("max_errors = 100");
    let mut c = srv.connect();
    c.hello();
    // A second transaction hidden in the data, ending with the real end.
    let smuggled = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n\
                     Subject: smuggled\r\n\r\nevil\r\n.\r\n";
    // The same with LF line ends, then the real end of data.
    let smuggled_lf = b"MAIL FROM:<evil@example.com>\nRCPT TO:<alice@example.org>\nDATA\n\
                        Subject: smuggled\n\nevil\n.\n\r\n.\r\n";
    // The end-of-data forms lax servers accept (CVE-2023-51764 and kin).
    let seps: [&[u8]; 7] = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r\n.\r\r\n",
        b"\r\n.\r",
        b"\r\n\n.\n",
    ];
    for (i, sep) in seps.iter().enumerate() {
        for tail in [&smuggled[..], &smuggled_lf[..]] {
            check(c.cmd("MAIL FROM:<bob@example.com>"), 250, "2.1.0");
            check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
            check(c.cmd("DATA"), 354, "");
            let mut w = format!("Subject: outer {i}\r\n\r\nouter").into_bytes();
            w.extend_from_slice(sep);
            // Only the tail's final CRLF.CRLF ends the data: one 554 for
            // all of it.
            w.extend_from_slice(tail);
            c.send_raw(&w);
            let text = check(c.reply(), 554, "5.6.0");
            assert!(text.contains("bare"), "{text}");
            // The very next reply is this NOOP's: nothing smuggled ran.
            let (code, text) = c.cmd("NOOP");
            assert_eq!(code, 250, "after {sep:?} + {:?}: {text}", show(tail));
        }
    }
    assert!(srv.mbox().is_empty(), "{}", show(&srv.mbox()));
    assert!(!srv.log().iter().any(|l| l.contains("accepted")));
    // The session still works for honest mail.
    let m = message("honest", "ok\r\n");
    let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], &m);
    assert_eq!(code, 250, "{text}");
    assert_eq!(mbox_messages(&srv), vec![m]);
}

#[test]
fn too_many_errors_close_with_421() {
    let srv = server_with_limits("max_errors = 3");
    let mut c = srv.connect();
    c.hello();
    check(c.cmd("BOGUS"), 500, "5.5.1");
    check(c.cmd("MAIL FROM:bad"), 501, "5.5.4");
    check(c.cmd("BOGUS"), 421, "4.7.0");
    expect_closed(&mut c);
}

/// Connects and returns the first reply line (the greeting or a refusal).
fn first_line(addr: std::net::SocketAddr) -> (Client, (u16, String)) {
    let mut c = Client::connect(addr);
    let r = c.reply();
    (c, r)
}

/// Waits (bounded) until a new connection is admitted again.
fn admitted_eventually(srv: &Server) -> bool {
    for _ in 0..100 {
        let (_c, (code, _)) = first_line(srv.smtp);
        if code == 220 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn too_many_connections_get_421() {
    let srv = server_with_limits("max_connections = 3\nmax_connections_per_ip = 8");
    let held: Vec<Client> = (0..3)
        .map(|_| {
            let (c, r) = first_line(srv.smtp);
            check(r, 220, "");
            c
        })
        .collect();
    let (mut c, r) = first_line(srv.smtp);
    check(r, 421, "4.7.0");
    expect_closed(&mut c);
    drop(held);
    assert!(admitted_eventually(&srv), "slots not released");
}

/// Connects from another loopback address (Python, since std cannot bind
/// before connecting) and returns the greeting line.
fn greeting_from(src: &str, addr: std::net::SocketAddr) -> String {
    let script = r#"
import socket, sys
s = socket.socket()
s.settimeout(30)
s.bind((sys.argv[1], 0))
s.connect(("127.0.0.1", int(sys.argv[2])))
print(s.recv(512).decode().strip())
s.sendall(b"QUIT\r\n")
"#;
    let o = Command::new("python3")
        .args(["-c", script, src, &addr.port().to_string()])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", show(&o.stderr));
    show(&o.stdout)
}

#[test]
fn too_many_connections_per_ip_get_421() {
    let srv = server_with_limits("max_connections = 10\nmax_connections_per_ip = 2");
    let held: Vec<Client> = (0..2)
        .map(|_| {
            let (c, r) = first_line(srv.smtp);
            check(r, 220, "");
            c
        })
        .collect();
    let (mut c, r) = first_line(srv.smtp);
    let text = check(r, 421, "4.7.0");
    assert!(text.contains("your address"), "{text}");
    expect_closed(&mut c);
    // Another address is still served.
    let other = greeting_from("127.0.0.2", srv.smtp);
    assert!(other.starts_with("220 "), "{other}");
    drop(held);
    assert!(admitted_eventually(&srv), "slots not released");
}

#[test]
fn idle_client_times_out_with_421() {
    let srv = server_with_limits("command_timeout = \"2s\"");
    let mut c = srv.connect();
    c.hello();
    let start = Instant::now();
    let text = check(c.reply(), 421, "4.4.2");
    assert!(start.elapsed() >= Duration::from_secs(1), "{text}");
    expect_closed(&mut c);
}

#[test]
fn client_that_never_reads_its_replies_loses_its_slot() {
    let srv = server_with_limits("command_timeout = \"2s\"\nmax_connections_per_ip = 1");
    let c = srv.connect();
    let mut w = c.stream.try_clone().unwrap();
    // Pipelined NOOPs, never reading a reply: the server's writes block
    // once the socket buffers are full (several MB on loopback).
    let flooder = std::thread::spawn(move || {
        let flood = "NOOP\r\n".repeat(100_000);
        for _ in 0..100 {
            if std::io::Write::write_all(&mut w, flood.as_bytes()).is_err() {
                return;
            }
        }
    });
    // The slot comes free once the blocked write times out.
    let mut admitted = false;
    for _ in 0..600 {
        let (_d, (code, _)) = first_line(srv.smtp);
        if code == 220 {
            admitted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(admitted, "a client not reading its replies kept its slot");
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    let _ = flooder.join();
}

#[test]
fn stalled_data_times_out_with_421_and_others_are_served() {
    let srv = server_with_limits("command_timeout = \"60s\"\ndata_timeout = \"2s\"");
    let mut slow = srv.connect();
    slow.hello();
    check(slow.cmd("MAIL FROM:<slow@example.com>"), 250, "2.1.0");
    check(slow.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(slow.cmd("DATA"), 354, "");
    slow.send_raw(b"Subject: stalled\r\n\r\nhalf a li");
    // Meanwhile another client is served normally.
    let mut c = srv.connect();
    c.hello();
    let m = message("while-stalled", "x\r\n");
    let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], &m);
    assert_eq!(code, 250, "{text}");
    check(slow.reply(), 421, "4.4.2");
    expect_closed(&mut slow);
    assert_eq!(mbox_messages(&srv), vec![m]);
}

#[test]
fn sigterm_lets_a_message_in_flight_finish_and_exits_0() {
    let mut srv = Server::start();
    let mut idle = srv.connect();
    idle.hello();
    let mut c = srv.connect();
    c.hello();
    check(c.cmd("MAIL FROM:<bob@example.com>"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("DATA"), 354, "");
    let m = message("in-flight", "first half\r\n");
    c.send_raw(&m);
    srv.signal("TERM");
    assert!(srv.wait_log("stopping", Duration::from_secs(20)));
    // An idle session is told to come back later once it speaks.
    check(idle.cmd("NOOP"), 250, "2.0.0");
    check(idle.reply(), 421, "4.3.2");
    expect_closed(&mut idle);
    // No new connections once stopping.
    let mut refused = false;
    for _ in 0..100 {
        match TcpStream::connect(srv.smtp) {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(mut s) => {
                // Accepted by the kernel before the listener closed: it
                // must not be served.
                let mut buf = [0u8; 3];
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                if s.read(&mut buf)
                    .map(|n| &buf[..n] != b"220")
                    .unwrap_or(true)
                {
                    refused = true;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(refused, "still accepting connections after SIGTERM");
    c.send_raw(b".\r\n");
    check(c.reply(), 250, "2.0.0");
    let status = srv
        .wait_exit(Duration::from_secs(60))
        .expect("server did not stop");
    assert!(status.success(), "{status:?}");
    assert_eq!(mbox_messages(&srv), vec![m]);
}

#[test]
fn sigint_stops_an_idle_server_with_exit_0() {
    let mut srv = Server::start();
    let mut idle = srv.connect();
    idle.hello();
    srv.signal("INT");
    let status = srv
        .wait_exit(Duration::from_secs(60))
        .expect("server did not stop");
    assert!(status.success(), "{status:?}");
    assert!(srv.wait_log("stopped", Duration::from_secs(5)));
}

#[test]
fn mbox_round_trip_is_byte_exact() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    let mut body = Vec::new();
    for line in [
        &b"From the start of a line"[..],
        b">From already quoted",
        b">>From quoted twice",
        b"From",
        b"Fromage",
        b" From indented",
        b".",
        b"..",
        b".leading dot",
        b"...three",
        b"",
        b"8-bit: Gr\xc3\xbc\xc3\x9fe, na\xc3\xafve caf\xc3\xa9, \xe2\x82\xac, raw \xff\xfe\x80 bytes",
        b"\ttab and trailing space ",
    ] {
        body.extend_from_slice(line);
        body.extend_from_slice(b"\r\n");
    }
    // The longest lines allowed: 998 octets + CRLF.
    body.extend_from_slice(&[b'x'; 998]);
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(b"From ");
    body.extend_from_slice(&[b'f'; 993]);
    body.extend_from_slice(b"\r\n.");
    body.extend_from_slice(&[b'd'; 997]);
    body.extend_from_slice(b"\r\n\r\n\r\n");
    let mut sent = Vec::new();
    for (i, first) in [
        "Subject: round trip",
        "From nobody Mon Jan  1 00:00:00 2024",
    ]
    .iter()
    .enumerate()
    {
        let mut m = format!("{first}\r\nMessage-ID: <rt{i}@test.example>\r\n\r\n").into_bytes();
        m.extend_from_slice(&body);
        check(
            c.cmd("MAIL FROM:<bob@example.com> BODY=8BITMIME"),
            250,
            "2.1.0",
        );
        check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
        check(c.cmd("DATA"), 354, "");
        c.send_raw(&dot_stuff(&m));
        c.send_raw(b".\r\n");
        check(c.reply(), 250, "2.0.0");
        sent.push(m);
    }
    // An empty message, and one with no body.
    check(c.cmd("MAIL FROM:<bob@example.com>"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("DATA"), 354, "");
    c.send_raw(b"Subject: no body\r\n.\r\n");
    check(c.reply(), 250, "2.0.0");
    sent.push(b"Subject: no body\r\n".to_vec());
    let got = mbox_messages(&srv);
    assert_eq!(got.len(), sent.len());
    for (g, s) in got.iter().zip(&sent) {
        assert_eq!(show(g), show(s));
        assert_eq!(g, s);
    }
    // mboxrd on disk: the body's From lines carry one more '>'.
    let raw = srv.mbox();
    let text = show(&raw);
    assert!(text.contains("\n>From the start of a line\n>>From already quoted\n>>>From quoted twice\nFrom\nFromage\n"), "{text}");
    assert!(text.contains("\n>From nobody Mon Jan  1"), "{text}");
    assert!(!raw.contains(&b'\r'));
}

#[test]
fn smtputf8_mail_is_delivered() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    // Without SMTPUTF8 a UTF-8 address is refused (RFC 6531 3.4).
    check(c.cmd("MAIL FROM:<jörg@bücher.example>"), 553, "5.6.7");
    check(
        c.cmd("MAIL FROM:<jörg@bücher.example> SMTPUTF8 BODY=8BITMIME"),
        250,
        "2.1.0",
    );
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("DATA"), 354, "");
    let m =
        "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nHallo Alice, schöne Grüße!\r\n";
    c.send_raw(m.as_bytes());
    c.send_raw(b".\r\n");
    check(c.reply(), 250, "2.0.0");
    assert_eq!(mbox_messages(&srv), vec![m.as_bytes().to_vec()]);
    let raw = show(&srv.mbox());
    assert!(raw.starts_with("From jörg@bücher.example "), "{raw}");
    assert!(
        raw.contains("Return-Path: <jörg@bücher.example>\n"),
        "{raw}"
    );
}

#[test]
fn listens_on_ipv4_and_ipv6() {
    let mut srv = Server::start();
    srv.kill9();
    let text = std::fs::read_to_string(&srv.config).unwrap();
    let text = text.replace(
        "smtp = [\"127.0.0.1:0\"]",
        "smtp = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    std::fs::write(&srv.config, text).unwrap();
    srv.spawn();
    let smtp: Vec<std::net::SocketAddr> = srv
        .addrs
        .iter()
        .filter(|(k, _)| k == "smtp")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(smtp.len(), 2, "{:?}", srv.addrs);
    for (i, addr) in smtp.iter().enumerate() {
        let mut c = Client::connect(*addr);
        c.hello();
        let m = message(
            &format!("over-{}", if addr.is_ipv6() { "v6" } else { "v4" }),
            "x\r\n",
        );
        let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], &m);
        assert_eq!(code, 250, "{text}");
        assert_eq!(mbox_messages(&srv).len(), i + 1);
    }
    assert!(
        show(&srv.mbox()).contains("([::1])"),
        "{}",
        show(&srv.mbox())
    );
}

#[test]
fn client_vanishing_mid_data_stores_nothing() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    check(c.cmd("MAIL FROM:<bob@example.com>"), 250, "2.1.0");
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("DATA"), 354, "");
    c.send_raw(&message("vanished", &"half a message\r\n".repeat(2000)));
    drop(c);
    assert!(srv.wait_log("connection lost during DATA", Duration::from_secs(30)));
    assert!(srv.mbox().is_empty());
    // Its spool file is gone too; so is that of a delivered message.
    let mut c = srv.connect();
    c.hello();
    let m = message("after-vanished", "x\r\n");
    assert_eq!(
        c.send_message("bob@example.com", &["alice@example.org"], &m)
            .0,
        250
    );
    let spool: Vec<_> = std::fs::read_dir(srv.data_dir().join("spool"))
        .unwrap()
        .collect();
    assert!(spool.is_empty(), "{spool:?}");
    assert_eq!(mbox_messages(&srv), vec![m]);
}

/// The server's peak resident memory in KiB (Linux).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn big_message_is_streamed_not_held_in_memory() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    let before = peak_rss_kib(srv.pid());
    check(
        c.cmd("MAIL FROM:<bob@example.com> SIZE=20000000"),
        250,
        "2.1.0",
    );
    check(c.cmd("RCPT TO:<alice@example.org>"), 250, "2.1.5");
    check(c.cmd("DATA"), 354, "");
    c.send_raw(b"Subject: big\r\n\r\n");
    let line = format!("{}\r\n", "0123456789".repeat(9));
    let chunk = line.repeat(1000); // 92 KB
    let chunks = 200; // 18.4 MB
    for _ in 0..chunks {
        c.send_raw(chunk.as_bytes());
    }
    c.send_raw(b".\r\n");
    check(c.reply(), 250, "2.0.0");
    let after = peak_rss_kib(srv.pid());
    let size = chunk.len() * chunks;
    // Holding the message would cost at least its size; streaming costs a
    // few buffers. A generous bound still tells the two apart.
    assert!(
        (after.saturating_sub(before) as usize) * 1024 < size / 4,
        "peak RSS grew from {before} KiB to {after} KiB for a {size}-byte message"
    );
    // Stored with LF line ends: one octet less per line.
    let lines = chunks * 1000;
    assert!(srv.mbox().len() > size - lines, "{}", srv.mbox().len());
    eprintln!("peak RSS {before} KiB -> {after} KiB for {size} bytes");
}

// ---- interop: real clients ------------------------------------------------------------

fn delivered_subjects(srv: &Server) -> Vec<String> {
    mbox_messages(srv)
        .iter()
        .filter_map(|m| {
            show(m)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

#[test]
fn python_smtplib_delivers() {
    let srv = Server::start();
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "bob@example.com"
m["To"] = "alice@example.org"
m["Subject"] = "via smtplib"
m.set_content("Hello from smtplib.\n")
raw = b"Subject: raw via smtplib\r\n\r\nFrom here on, quoted.\r\n.dot line\r\n\xc3\xa9\r\n"
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    s.ehlo("python.example")
    assert s.has_extn("pipelining") and s.has_extn("8bitmime"), s.esmtp_features
    refused = s.send_message(m, to_addrs=["alice@example.org", "alice+py@example.org"])
    assert not refused, refused
    # Bytes go as they are (CRLF needed); smtplib dot-stuffs them.
    refused = s.sendmail("bob@example.com", ["alice@example.org"], raw, ["BODY=8BITMIME"])
    assert not refused, refused
    try:
        s.sendmail("bob@example.com", ["nobody@example.org"], "Subject: x\r\n\r\nx\r\n")
        raise SystemExit("unknown user accepted")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["nobody@example.org"]
        assert code == 550 and text.startswith(b"5.1.1"), e.recipients
print("sent")
"#;
    let o = Command::new("python3")
        .args(["-c", script, &srv.smtp.port().to_string()])
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "smtplib: {}{}",
        show(&o.stdout),
        show(&o.stderr)
    );
    assert_eq!(
        delivered_subjects(&srv),
        vec!["via smtplib", "raw via smtplib"]
    );
    assert_eq!(
        mbox_messages(&srv)[1],
        b"Subject: raw via smtplib\r\n\r\nFrom here on, quoted.\r\n.dot line\r\n\xc3\xa9\r\n"
    );
}

#[test]
fn swaks_delivers() {
    let swaks = require_tool("swaks", "swaks");
    let srv = Server::start();
    let o = Command::new(swaks)
        .args([
            "--server",
            &format!("127.0.0.1:{}", srv.smtp.port()),
            "--ehlo",
            "swaks.example",
            "--from",
            "bob@example.com",
            "--to",
            "alice@example.org",
            "--header",
            "Subject: via swaks",
            "--body",
            "Hello from swaks.",
            "--pipeline",
            "--timeout",
            "30",
        ])
        .output()
        .expect("run swaks");
    assert!(
        o.status.success(),
        "swaks: {}{}",
        show(&o.stdout),
        show(&o.stderr)
    );
    assert_eq!(delivered_subjects(&srv), vec!["via swaks"]);
    assert!(show(&mbox_messages(&srv)[0]).contains("Hello from swaks."));
}

#[test]
fn curl_delivers() {
    let curl = require_tool("curl", "curl");
    let srv = Server::start();
    let file = srv.dir.path().join("mail.txt");
    let m = message("via curl", "Hello from curl.\r\n.dot line\r\nFrom line\r\n");
    std::fs::write(&file, &m).unwrap();
    let o = Command::new(curl)
        .args([
            "-sS",
            "--max-time",
            "60",
            &format!("smtp://127.0.0.1:{}/curl.example", srv.smtp.port()),
            "--mail-from",
            "bob@example.com",
            "--mail-rcpt",
            "alice@example.org",
            "--upload-file",
        ])
        .arg(&file)
        .output()
        .expect("run curl");
    assert!(
        o.status.success(),
        "curl: {}{}",
        show(&o.stdout),
        show(&o.stderr)
    );
    assert_eq!(mbox_messages(&srv), vec![m]);
}
