//! "Nothing is lost" under faults: the server `kill -9`ed while clients
//! send, and a full disk (a file-size limit, `RLIMIT_FSIZE`, which works
//! without privileges). Every message acknowledged with 250 must be in the
//! mbox, whole, and the mbox must parse with no partial message.

mod common;
use common::*;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The body of the message with this subject: big enough (tens of KiB) that
/// a kill often lands in the middle of its append.
fn body_for(subject: &str, lines: usize) -> String {
    let mut b = String::new();
    for i in 0..lines {
        b += &format!("{subject} line {i:05} {}\r\n", "abcdefghij".repeat(6));
        if i % 50 == 0 {
            // Lines the mbox must quote and the client must stuff.
            b += "From here, quoted in the mbox\r\n.leading dot\r\n";
        }
    }
    b
}

/// Mostly small messages, every fourth one about 1 MiB, so that kills
/// also land in the middle of long appends.
fn lines_for(n: usize) -> usize {
    if n % 4 == 3 {
        12_000
    } else {
        50 + 150 * (n % 4)
    }
}

fn reply(r: &mut BufReader<TcpStream>) -> io::Result<u16> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad reply {line:?}")));
        }
    }
}

/// Sends one message; `Ok(true)` only for a 250 after the data. Errors
/// (the server was killed) are expected.
fn try_send(addr: SocketAddr, data: &[u8]) -> io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut step = |cmd: &[u8], want: u16| -> io::Result<bool> {
        if !cmd.is_empty() {
            s.write_all(cmd)?;
        }
        Ok(reply(&mut r)? == want)
    };
    let ok = step(b"", 220)?
        && step(b"EHLO crash.example\r\n", 250)?
        && step(b"MAIL FROM:<bob@example.com>\r\n", 250)?
        && step(b"RCPT TO:<alice@example.org>\r\n", 250)?
        && step(b"DATA\r\n", 354)?;
    if !ok {
        return Ok(false);
    }
    let mut all = dot_stuff(data);
    all.extend_from_slice(b".\r\n");
    step(&all, 250)
}

fn subject_of(msg: &[u8]) -> Option<String> {
    String::from_utf8_lossy(msg)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
}

#[test]
fn kill_9_while_clients_send_loses_no_acknowledged_message() {
    const ROUNDS: u64 = 10;
    const CLIENTS: usize = 4;
    let mut srv = Server::start();
    let addr = Arc::new(Mutex::new(srv.smtp));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (addr, acked, stop) = (addr.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let subject = format!("crash-{t}-{n}");
                    let data = message(&subject, &body_for(&subject, lines_for(n)));
                    let a = *addr.lock().unwrap();
                    match try_send(a, &data) {
                        Ok(true) => acked.lock().unwrap().push(subject),
                        Ok(false) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    for round in 0..ROUNDS {
        // Varied, bounded pauses so the kill lands at different moments.
        std::thread::sleep(Duration::from_millis(150 + (round * 137) % 400));
        srv.kill9();
        srv.spawn();
        *addr.lock().unwrap() = srv.smtp;
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // One more crash and restart: the start repairs what it left.
    srv.kill9();
    srv.spawn();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= ROUNDS as usize,
        "too few messages got through to test anything: {}",
        acked.len()
    );
    let stored = python_mbox_messages(&srv.mbox_path());
    let mut seen = std::collections::HashSet::new();
    for m in &stored {
        let orig = original_from_stored(m);
        let subject = subject_of(&orig).unwrap_or_else(|| {
            panic!(
                "a message without its header (partial?): {:?}",
                String::from_utf8_lossy(&orig[..orig.len().min(300)])
            )
        });
        let (t, n) = subject
            .strip_prefix("crash-")
            .and_then(|s| s.split_once('-'))
            .unwrap_or_else(|| panic!("bad subject {subject}"));
        let n: u64 = n.parse().unwrap();
        let _ = t;
        let want = message(&subject, &body_for(&subject, lines_for(n as usize)));
        assert!(
            orig == want,
            "message {subject} is not whole ({} of {} bytes)",
            orig.len(),
            want.len()
        );
        seen.insert(subject);
    }
    let lost: Vec<&String> = acked.iter().filter(|s| !seen.contains(*s)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost: {lost:?} ({} acked, {} stored)",
        acked.len(),
        stored.len()
    );
    // The raw file agrees with Python: every message starts with "From ".
    let raw = srv.mbox();
    let starts = raw
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"From "))
        .count();
    assert_eq!(starts, stored.len());
    let log = srv.log();
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    eprintln!(
        "crash test: {} acknowledged, {} stored, {} torn appends repaired, {} stale locks",
        acked.len(),
        stored.len(),
        count("incomplete message"),
        count("stale lock"),
    );
}

/// The kill test above rarely lands inside the few milliseconds an append
/// takes, so this one makes that moment by hand: the state a crash leaves
/// half-way through an append (journal says "pending old new", the mbox
/// ends in part of a message) must be cut back at the next start.
#[test]
fn torn_append_left_by_a_crash_is_repaired_at_start() {
    let mut srv = Server::start();
    let mut c = srv.connect();
    c.hello();
    let m = message("kept", "before the crash\r\n");
    assert_eq!(
        c.send_message("bob@example.com", &["alice@example.org"], &m)
            .0,
        250
    );
    drop(c);
    srv.kill9();
    let good = srv.mbox();
    let partial = b"From bob@example.com Thu Jan  1 00:00:00 1970\nReturn-Path: <bob@example.com>\nSubject: torn\n\nhalf of th";
    let mut torn = good.clone();
    torn.extend_from_slice(partial);
    std::fs::write(srv.mbox_path(), &torn).unwrap();
    let (old, new) = (good.len(), good.len() + partial.len() + 500);
    let mut rec = format!("pending {old} {new}").into_bytes();
    rec.resize(63, b' ');
    rec.push(b'\n');
    std::fs::write(srv.data_dir().join("mbox.journal"), &rec).unwrap();
    // A dot-lock left by the killed process, too.
    std::fs::write(srv.dir.path().join("mbox.lock"), "999999999\n").unwrap();
    srv.spawn();
    assert!(srv.wait_log("incomplete message", Duration::from_secs(10)));
    assert_eq!(srv.mbox(), good, "torn append not cut back");
    // Mail flows again and the mbox parses.
    let mut c = srv.connect();
    c.hello();
    let m2 = message("after", "after the crash\r\n");
    assert_eq!(
        c.send_message("bob@example.com", &["alice@example.org"], &m2)
            .0,
        250
    );
    let got: Vec<Vec<u8>> = python_mbox_messages(&srv.mbox_path())
        .iter()
        .map(|m| original_from_stored(m))
        .collect();
    assert_eq!(got, vec![m, m2]);
}

#[test]
fn full_disk_gets_452_and_keeps_the_mbox_intact() {
    let prlimit = require_tool("prlimit", "util-linux");
    const LIMIT: usize = 64 * 1024;
    let srv = Server::with_wrapper(
        Options::default(),
        vec![
            prlimit.display().to_string(),
            format!("--fsize={LIMIT}"),
            "--".into(),
        ],
    );
    let mut c = srv.connect();
    c.hello();
    let mut sent = Vec::new();
    // Four messages of about 12 KiB fit.
    for i in 0..4 {
        let s = format!("fits-{i}");
        let m = message(&s, &body_for(&s, 140));
        let (code, text) =
            c.send_message("bob@example.com", &["alice@example.org"], &dot_stuff(&m));
        assert_eq!(code, 250, "{text}");
        sent.push(m);
    }
    let before = srv.mbox();
    assert!(before.len() > 40 * 1024 && before.len() < LIMIT - 4096);
    // This one fits the spool file but not the mbox: the append fails
    // part-way and is rolled back.
    let s = "mbox-full".to_string();
    let m = message(&s, &body_for(&s, 250));
    assert!(m.len() < LIMIT && before.len() + m.len() > LIMIT);
    let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], &dot_stuff(&m));
    assert_eq!(code, 452, "{text}");
    assert!(text.starts_with("452 4.3.1"), "{text}");
    assert_eq!(srv.mbox(), before, "mbox changed by a failed append");
    // This one does not even fit the spool file in data_dir.
    let s = "spool-full".to_string();
    let m = message(&s, &body_for(&s, 1000));
    assert!(m.len() > LIMIT);
    let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], &dot_stuff(&m));
    assert_eq!(code, 452, "{text}");
    assert!(text.starts_with("452 4.3.1"), "{text}");
    assert_eq!(srv.mbox(), before, "mbox changed by a failed spool write");
    // The log line is written before the reply, but the harness reads the
    // log on another thread: wait for it rather than race it.
    assert!(
        srv.wait_log("spool", Duration::from_secs(10)),
        "no spool error logged: {:?}",
        srv.log()
    );
    // The server lives on, and what still fits is delivered.
    let s = "small".to_string();
    let m = message(&s, "still room for this\r\n");
    let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], &m);
    assert_eq!(code, 250, "{text}");
    sent.push(m);
    let got: Vec<Vec<u8>> = python_mbox_messages(&srv.mbox_path())
        .iter()
        .map(|m| original_from_stored(m))
        .collect();
    assert_eq!(got.len(), sent.len());
    for (g, s) in got.iter().zip(&sent) {
        assert!(g == s, "stored message differs");
    }
    assert!(srv.mbox().starts_with(&before));
}

/// Issue 13 hole 5, against the real binary on a really full file system:
/// bench/faults/full_disk.py mounts a 4 MiB tmpfs for the mbox and
/// data_dir, fills it, checks `452 4.3.1` and that nothing stored is
/// harmed, then that POP3 DELE + QUIT deletes on the full disk. It needs
/// root (mount); elsewhere, and under an emulator, it says why it skips.
#[test]
fn pop3_deletes_and_nothing_is_harmed_on_a_full_tmpfs() {
    if std::env::var_os("PIMAIL_TEST_RUNNER").is_some() {
        eprintln!("skipped: the script runs the binary without the emulator");
        return;
    }
    let bin =
        std::env::var("PIMAIL_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pimail").into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/faults/full_disk.py");
    let work = TempDir::new("fulldisk");
    let o = std::process::Command::new("python3")
        .arg(script)
        .args(["--fs", "tmpfs", "--binary", &bin, "--work"])
        .arg(work.path().join("w"))
        .output()
        .expect("python3 runs");
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    match o.status.code() {
        Some(77) => eprintln!("skipped (needs root and mount): {out}"),
        Some(0) => assert!(!out.contains("KNOWN FAILURE"), "{out}"),
        _ => panic!("full disk run failed:\n{out}"),
    }
}
