//! The IMAP folder store end to end (issue 16): message bodies streamed
//! from the mbox, not held in memory; ENVELOPE/BODYSTRUCTURE from the
//! sidecar index; flags written into `Status:`/`X-Status:` when a folder
//! is rewritten. Real server, real sockets, Python's `imaplib` and
//! `mailbox` as the independent client and mbox reader.

mod common;
use common::*;
use std::io::Write as _;

fn imap_server() -> Server {
    Server::with(Options {
        listen_imap: true,
        ..Options::default()
    })
}

/// Runs an imaplib script, logged in; argv[1] host, argv[2] port, then
/// `args`.
fn imaplib(srv: &Server, script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let a = srv.addr("imap");
    let (host, port) = (a.ip().to_string(), a.port().to_string());
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&host, &port];
    all.extend_from_slice(args);
    let prelude = "import imaplib, sys, time\n\
                   M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=120)\n\
                   typ, caps = M.login('alice', 'secret')\n\
                   assert typ == 'OK', caps\n";
    python(&format!("{prelude}{script}"), &all)
}

/// Appends a message to an mbox as another program (a foreign MDA)
/// would: a `From ` line, mboxrd-quoted content, a blank line.
fn append_foreign(path: &std::path::Path, content: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    let mut out = b"From someone@example.com Sat Jan  3 01:05:34 2026\n".to_vec();
    for line in content.split_inclusive(|&b| b == b'\n') {
        let rest = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
        if line[rest..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\n");
    f.write_all(&out).unwrap();
}

/// A 25 MiB message of text lines, with lines that need mboxrd quoting
/// (`From `, `>From `) spread over it, so that quoting is undone across
/// the reader's chunk boundaries.
fn big_message() -> Vec<u8> {
    let mut m = b"From: Bob <bob@example.com>\nTo: alice@example.org\nSubject: big\n\
                  Message-ID: <big@example.com>\nDate: Sat, 3 Jan 2026 01:05:34 +0000\n\n"
        .to_vec();
    let mut i = 0u64;
    while m.len() < 25 * 1024 * 1024 {
        match i % 997 {
            0 => m.extend_from_slice(b"From the top, a line mbox readers quote\n"),
            500 => m.extend_from_slice(b">From an already quoted line\n"),
            _ => m.extend_from_slice(
                format!("{i:08} the quick brown fox jumps over the lazy dog 0123456789\n")
                    .as_bytes(),
            ),
        }
        i += 1;
    }
    m
}

fn vm(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Frugal (developers' guide, issue 16): fetching a 25 MiB message in
/// every whole-message form streams it from the mbox; the server's peak
/// RSS grows by less than 1 MiB, and the octets are the mailbox's, as
/// Python's `mailbox` reads them (mboxrd quoting undone, CRLF).
#[test]
fn a_25_mib_fetch_streams_from_the_mbox() {
    if skip_under_emulator() {
        return; // reads the server's /proc/<pid>/status
    }
    let srv = imap_server();
    srv.deliver(&smtp_stuff(b"Subject: small\r\n\r\nsmall one\r\n"));
    append_foreign(&srv.mbox_path(), &big_message());
    let pid = srv.pid().to_string();
    let expected = srv.dir.path().join("expected");
    // The mailbox's own bytes of message 2, as Python reads them.
    python(
        r#"
import mailbox, re, sys
box = mailbox.mbox(sys.argv[1], create=False)
data = box.get_bytes(box.keys()[1])
data = re.sub(rb'(?m)^>(>*From )', rb'\1', data).replace(b'\n', b'\r\n')
open(sys.argv[2], 'wb').write(data)
"#,
        &[&srv.mbox_path(), &expected],
    );
    let out = imaplib(
        &srv,
        r#"
def hwm():
    for l in open('/proc/%s/status' % sys.argv[3]):
        if l.startswith('VmHWM:'):
            return int(l.split()[1])
expected = open(sys.argv[4], 'rb').read()
typ, data = M.select('INBOX')
assert typ == 'OK', data
# Warm up: the index, the structure of both messages, a small body.
typ, data = M.fetch('1:2', '(RFC822.SIZE BODYSTRUCTURE BODY.PEEK[HEADER])')
assert typ == 'OK', data
typ, data = M.fetch('1', '(BODY.PEEK[])')
assert typ == 'OK', data
size = int(M.fetch('2', '(RFC822.SIZE)')[1][0].split()[-1].rstrip(b')'))
base = hwm()
print('BASE', base)
for item in ['BODY.PEEK[]', 'RFC822', 'BODY.PEEK[TEXT]', 'BINARY.PEEK[]', 'BODY.PEEK[]<1000.20000000>']:
    typ, data = M.fetch('2', '(%s)' % item)
    assert typ == 'OK', (item, data)
    got = data[0][1]
    if item == 'BODY.PEEK[TEXT]':
        want = expected[expected.index(b'\r\n\r\n') + 4:]
    elif item.endswith('>'):
        want = expected[1000:1000 + 20000000]
    else:
        want = expected
    assert got == want, (item, len(got), len(want))
    print('ITEM', item, len(got), hwm())
    del got, data
print('SIZE', size, len(expected))
print('PEAK', hwm() - base)
M.logout()
"#,
        &[&pid, &expected],
    );
    let peak: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("PEAK "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        out.contains("ITEM BODY.PEEK[]<1000.20000000> 20000000"),
        "{out}"
    );
    let size_line = out.lines().find(|l| l.starts_with("SIZE ")).unwrap();
    let w: Vec<&str> = size_line.split(' ').collect();
    assert_eq!(w[1], w[2], "RFC822.SIZE is the literal's size: {out}");
    assert!(
        peak < 1024,
        "fetching 25 MiB raised the server's peak RSS by {peak} KiB:\n{out}"
    );
    eprintln!("{out}");
    eprintln!("server VmRSS after: {} KiB", vm(srv.pid(), "VmRSS:"));
}
