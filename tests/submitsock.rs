//! The local submission socket (issue 14): an ordinary user who cannot
//! read the config (INSTALL's /etc/pimail is 0750 root:pimail) sends mail
//! with `pimail sendmail` through the running server; exit code 0 only
//! when the server has the message on disk. And issue 18's leftover:
//! input lines over 998 octets are refused with EX_DATAERR, on the direct
//! path and through the socket.
//!
//! The tests run as root and start sendmail as `nobody` (uid 65534); they
//! skip themselves when not root.

mod common;
use common::fakes::*;
use common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if me != 0 {
        eprintln!("skipped: needs root to run sendmail as nobody");
    }
    me == 0
}

/// The server's config made unreadable to others, as INSTALL has it; the
/// socket's directory reachable by all (as systemd's RuntimeDirectory).
fn lock_down(srv: &Server) {
    std::fs::set_permissions(&srv.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(srv.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `pimail sendmail ARGS` as nobody with `input` on stdin and the
/// socket at `socket`: (exit code, stderr).
fn sendmail_as_nobody(config: &Path, socket: &Path, args: &[&str], input: &[u8]) -> (i32, String) {
    let mut child = pimail_command()
        .arg("--config")
        .arg(config)
        .arg("sendmail")
        .args(args)
        .env("PIMAIL_SUBMIT_SOCKET", socket)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A sendmail that fails early (no server) stops reading: no panic on
    // the broken pipe, its exit code tells.
    let _ = child.stdin.take().unwrap().write_all(input);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn wait_mbox(srv: &Server, n: usize) -> Vec<Vec<u8>> {
    let end = Instant::now() + WAIT;
    loop {
        let msgs = if srv.mbox_path().exists() {
            python_mbox_messages(&srv.mbox_path())
        } else {
            vec![]
        };
        if msgs.len() >= n || Instant::now() > end {
            return msgs;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nobody_sends_through_the_socket_to_the_mbox_and_to_an_mx() {
    if !root() {
        return;
    }
    let w = MxWorld::one("far.test", ip(2), Behavior::default());
    let srv = w.server("");
    lock_down(&srv);
    let sock = srv.submit_socket();
    assert!(srv.wait_log("local submission on", WAIT), "{:?}", srv.log());
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);

    // Nobody cannot read the config: without the socket this was exit 75.
    let (code, err) = sendmail_as_nobody(
        &srv.config,
        &sock,
        &["alice@example.org"],
        b"Subject: from cron\n\nbackup done\n",
    );
    assert_eq!(code, 0, "{err}; log:\n{}", srv.log().join("\n"));
    let msgs = wait_mbox(&srv, 1);
    assert_eq!(msgs.len(), 1, "log:\n{}", srv.log().join("\n"));
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(text.contains("Subject: from cron\n"), "{text}");
    // The sender is the caller's own address, as the kernel knows it.
    assert!(text.contains("From: nobody@mail.example.org\n"), "{text}");
    assert!(text.contains("(pimail sendmail, uid 65534)"), "{text}");
    let raw = std::fs::read_to_string(srv.mbox_path()).unwrap();
    assert!(raw.starts_with("From nobody@mail.example.org "), "{raw}");
    assert!(srv.wait_log("local submission uid=65534 (nobody) id=", WAIT));

    // A remote recipient: queued by the server and sent to the MX.
    let (code, err) = sendmail_as_nobody(
        &srv.config,
        &sock,
        &["bob@far.test"],
        b"Subject: out\n\nhello\n",
    );
    assert_eq!(code, 0, "{err}");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "nobody@mail.example.org");
    assert_eq!(got[0].rcpts, vec!["bob@far.test"]);

    // -f with the user's address is not nobody's to give: overridden,
    // and said so.
    let (code, err) = sendmail_as_nobody(
        &srv.config,
        &sock,
        &["-f", "alice@example.org", "bob@far.test"],
        b"Subject: forged?\n\nx\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ignored"), "{err}");
    let got = w.mx[0].wait_messages(2, WAIT);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].mail_from, "nobody@mail.example.org");

    // A From: header with the user's address (which we DKIM-sign) is
    // refused: EX_NOPERM.
    let (code, err) = sendmail_as_nobody(
        &srv.config,
        &sock,
        &["bob@far.test"],
        b"From: Alice <alice@example.org>\nSubject: forged\n\nx\n",
    );
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("alice@example.org"), "{err}");
    // Nothing more went out.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.mx[0].messages().len(), 2);
}

#[test]
fn no_server_is_exit_75_and_nothing_is_claimed() {
    if !root() {
        return;
    }
    let w = MxWorld::one("far.test", ip(2), Behavior::default());
    let srv = w.server("");
    lock_down(&srv);
    // No socket file at all.
    let missing = srv.dir.path().join("run/none.sock");
    let (code, err) = sendmail_as_nobody(&srv.config, &missing, &["alice@example.org"], b"x\n");
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("not running"), "{err}");
    // A stale socket file nobody listens on (a server that crashed).
    let stale = srv.dir.path().join("run/stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, err) = sendmail_as_nobody(&srv.config, &stale, &["alice@example.org"], b"x\n");
    assert_eq!(code, 75, "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!srv.mbox_path().exists() || python_mbox_messages(&srv.mbox_path()).is_empty());
}

#[test]
fn a_line_over_998_octets_is_refused_with_ex_dataerr() {
    let w = MxWorld::one("far.test", ip(2), Behavior::default());
    let srv = w.server("");
    let mut long = b"Subject: long\n\n".to_vec();
    long.extend(std::iter::repeat(b'x').take(999));
    long.extend_from_slice(b"\nend\n");
    let mut ok = b"Subject: fits\n\n".to_vec();
    ok.extend(std::iter::repeat(b'y').take(998));
    ok.extend_from_slice(b"\r\nend\n");

    // The direct path (root can write the queue).
    let (code, err) = srv.sendmail(&["alice@example.org"], &long);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("line 3") && err.contains("998"), "{err}");
    let (code, err) = srv.sendmail(&["alice@example.org"], &ok);
    assert_eq!(code, 0, "998 octets and CRLF fit: {err}");
    // A long header line too.
    let mut hdr = b"Subject: ".to_vec();
    hdr.extend(std::iter::repeat(b'h').take(1200));
    hdr.extend_from_slice(b"\n\nbody\n");
    assert_eq!(srv.sendmail(&["alice@example.org"], &hdr).0, 65);

    // Through the socket.
    if root() {
        lock_down(&srv);
        let sock = srv.submit_socket();
        let (code, err) = sendmail_as_nobody(&srv.config, &sock, &["alice@example.org"], &long);
        assert_eq!(code, 65, "{err}");
        assert!(err.contains("998"), "{err}");
        // Refused early, while the client still sends: its answer is read
        // all the same (not a lost connection, 75).
        let mut big = long.clone();
        for _ in 0..20_000 {
            big.extend_from_slice(b"more body text, line after line after line\n");
        }
        let (code, err) = sendmail_as_nobody(&srv.config, &sock, &["alice@example.org"], &big);
        assert_eq!(code, 65, "{err}");
    }
    let msgs = wait_mbox(&srv, 1);
    std::thread::sleep(Duration::from_millis(300));
    let msgs = if msgs.len() == 1 {
        python_mbox_messages(&srv.mbox_path())
    } else {
        msgs
    };
    assert_eq!(msgs.len(), 1, "only the message that fits arrives");
    assert!(String::from_utf8_lossy(&msgs[0]).contains("Subject: fits"));
    let (_, list) = srv.queue_cmd(&["list"]);
    assert!(list.contains("queue is empty"), "{list}");
}
