//! Fault injection against the real server: many idle or slow clients,
//! endless command lines, endless DATA. What a user would notice: their
//! mail still gets through, abusers are cut off, and the server's memory
//! does not grow with what an abuser sends. (Kill -9 during delivery is in
//! the crash-safety tests.)

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Resident memory of a process in KiB, from /proc/PID/status.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

fn many_connections() -> Options {
    Options {
        limits: "max_connections = 2000\nmax_connections_per_ip = 2000\n\
                 command_timeout = \"5m\"\ndata_timeout = \"5m\"\n"
            .into(),
        ..Options::default()
    }
}

/// Delivers one message with a fresh client and returns the final reply.
fn deliver(srv: &Server, subject: &str) -> (u16, String) {
    let mut c = srv.connect();
    c.hello();
    let body = format!("Subject: {subject}\r\n\r\nhello\r\n");
    let r = c.send_message("bob@example.com", &["alice@example.org"], body.as_bytes());
    c.expect("QUIT", 221);
    r
}

#[test]
fn slowloris_clients_do_not_stop_normal_delivery() {
    let srv = Server::with(many_connections());
    let mut idle = Vec::new();
    let mut slow_cmd = Vec::new();
    let mut slow_data = Vec::new();
    // 500 connections: idle after connect, stuck mid-command, stuck in DATA.
    for i in 0..500 {
        let mut s = TcpStream::connect(srv.smtp).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        match i % 5 {
            0 | 1 => idle.push(s),
            2 | 3 => {
                s.write_all(b"EHLO slow").unwrap();
                slow_cmd.push(s);
            }
            _ => {
                s.write_all(
                    b"EHLO slow\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<alice@example.org>\r\n\
                      DATA\r\nSubject: slow\r\n\r\npart",
                )
                .unwrap();
                slow_data.push(s);
            }
        }
    }
    // A normal client gets through while they hang on, several times,
    // with the slow ones trickling a byte now and then.
    for round in 0..3 {
        for s in slow_cmd.iter_mut().chain(slow_data.iter_mut()) {
            let _ = s.write_all(b"x");
        }
        let started = Instant::now();
        let (code, text) = deliver(&srv, &format!("normal {round}"));
        assert_eq!(code, 250, "round {round}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "round {round}: delivery took {:?} behind 500 slow clients",
            started.elapsed()
        );
    }
    // The slow clients are still being served, not dropped: each idle one
    // got its greeting.
    for s in idle.iter_mut().take(20) {
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("greeting for an idle client");
        assert_eq!(&buf[..3], b"220");
    }
    let msgs = python_mbox_messages(&srv.mbox_path());
    assert_eq!(msgs.len(), 3, "only the normal messages are stored");
    drop((idle, slow_cmd, slow_data));
}

/// Sends `chunk` repeatedly (up to `max_total` bytes) until the server
/// closes; returns bytes sent and the peak server RSS seen meanwhile.
fn flood(srv: &Server, s: &mut TcpStream, chunk: &[u8], max_total: usize) -> (usize, u64) {
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sent = 0;
    let mut peak = 0;
    let mut n = 0u32;
    while sent < max_total {
        match s.write(chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => sent += k,
        }
        n += 1;
        if n % 64 == 0 {
            peak = peak.max(vm_rss_kib(srv.pid()));
        }
    }
    (sent, peak.max(vm_rss_kib(srv.pid())))
}

#[test]
fn endless_command_line_is_cut_off_and_memory_stays_flat() {
    let srv = Server::start();
    // Warm up allocator and buffers with one normal delivery.
    assert_eq!(deliver(&srv, "before").0, 250);
    let before = vm_rss_kib(srv.pid());
    let mut s = TcpStream::connect(srv.smtp).unwrap();
    s.write_all(b"EHLO ").unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let limit = 256 << 20;
    let (sent, peak) = flood(&srv, &mut s, &chunk, limit);
    assert!(
        sent < limit,
        "the server read {sent} bytes of one endless line without closing"
    );
    let reply = read_all_within(&mut s, Duration::from_secs(10));
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.contains("500") || reply.contains("421"),
        "{reply}"
    );
    assert!(
        peak < before + 8 * 1024,
        "RSS grew from {before} KiB to {peak} KiB during an endless line"
    );
    // The server still works for everyone else.
    assert_eq!(deliver(&srv, "after").0, 250);
}

#[test]
fn endless_data_is_cut_off_and_memory_stays_flat() {
    let srv = Server::with(Options {
        limits: "max_message_size = \"1M\"\n".into(),
        ..Options::default()
    });
    assert_eq!(deliver(&srv, "before").0, 250);
    let before = vm_rss_kib(srv.pid());
    let spool = srv.data_dir().join("spool");
    for (what, line) in [
        ("text lines", &b"an endless message line of text\r\n"[..]),
        ("bare LFs", &b"\n\n\n\n\n\n\n\n"[..]),
    ] {
        let mut c = srv.connect();
        c.hello();
        c.expect("MAIL FROM:<bob@example.com>", 250);
        c.expect("RCPT TO:<alice@example.org>", 250);
        c.expect("DATA", 354);
        let chunk: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
        let limit = 512 << 20;
        let (sent, peak) = flood(&srv, &mut c.stream, &chunk, limit);
        assert!(
            sent < limit,
            "{what}: the server read {sent} bytes of endless DATA (limit 1M) without closing"
        );
        let (code, text) = c.reply();
        assert!(
            code == 552 || code == 554 || code == 0,
            "{what}: {code} {text}"
        );
        assert!(
            peak < before + 8 * 1024,
            "{what}: RSS grew from {before} KiB to {peak} KiB during endless DATA"
        );
        // Nothing of it reached the disk beyond the size limit.
        let spooled: u64 = std::fs::read_dir(&spool)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        assert!(spooled <= 2 << 20, "{what}: {spooled} bytes in the spool");
    }
    assert_eq!(deliver(&srv, "after").0, 250);
    let msgs = python_mbox_messages(&srv.mbox_path());
    assert_eq!(msgs.len(), 2, "only the normal messages are stored");
}
