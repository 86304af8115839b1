//! The IMAP folder store end to end (issue 16): message bodies streamed
//! from the mbox, not held in memory; ENVELOPE/BODYSTRUCTURE from the
//! sidecar index; flags written into `Status:`/`X-Status:` when a folder
//! is rewritten. Real server, real sockets, Python's `imaplib` and
//! `mailbox` as the independent client and mbox reader.

mod common;
use common::imap::{imap_server, imaplib};
use common::*;
use std::io::Write as _;

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

/// Frugal (issue 16): the first SELECT of a folder nobody indexed reads
/// each message's MIME structure in the scan's own pass; a 25 MiB
/// foreign message goes through it in bounded pieces (the server's peak
/// RSS grows by less than 1 MiB), and its ENVELOPE and RFC822.SIZE right
/// after are the mailbox's.
#[test]
fn a_first_select_scans_a_25_mib_message_in_bounded_memory() {
    if skip_under_emulator() {
        return; // reads the server's /proc/<pid>/status
    }
    let srv = imap_server();
    assert!(
        srv.wait_log("code pages", std::time::Duration::from_secs(30)),
        "{:?}",
        srv.log()
    );
    let big = big_message();
    append_foreign(&srv.mbox_path(), b"Subject: small\n\nsmall one\n");
    append_foreign(&srv.mbox_path(), &big);
    let pid = srv.pid().to_string();
    let out = imaplib(
        &srv,
        r#"
def hwm():
    for l in open('/proc/%s/status' % sys.argv[3]):
        if l.startswith('VmHWM:'):
            return int(l.split()[1])
base = hwm()
typ, data = M.select('INBOX')
assert typ == 'OK', data
print('PEAK', hwm() - base)
typ, data = M.fetch('2', '(RFC822.SIZE ENVELOPE)')
assert typ == 'OK', data
print('FETCH', data[0])
M.logout()
"#,
        &[&pid],
    );
    let peak: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("PEAK "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // The wire form is the message as sent (append_foreign's quoting
    // undone), each LF a CRLF.
    let size = big.len() + big.iter().filter(|&&b| b == b'\n').count();
    assert!(
        out.contains(&format!("RFC822.SIZE {size} ")),
        "want RFC822.SIZE {size}: {out}"
    );
    assert!(out.contains("\"big\""), "{out}");
    assert!(
        peak < 1024,
        "the first SELECT of a 25 MiB message raised the server's peak RSS by {peak} KiB:\n{out}"
    );
}

/// Frugal (developers' guide, issue 16): fetching a 25 MiB message in
/// every whole-message form, and searching its text, streams it from the
/// mbox; the server's peak
/// RSS grows by less than 1 MiB, and the octets are the mailbox's, as
/// Python's `mailbox` reads them (mboxrd quoting undone, CRLF).
#[test]
fn a_25_mib_fetch_streams_from_the_mbox() {
    if skip_under_emulator() {
        return; // reads the server's /proc/<pid>/status
    }
    let srv = imap_server();
    // The server drops its start-up code pages 2 s after it listens, and
    // VmHWM (a lazily kept maximum) may then read lower than before: the
    // baseline is taken after that.
    assert!(
        srv.wait_log("code pages", std::time::Duration::from_secs(30)),
        "{:?}",
        srv.log()
    );
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
# SEARCH in the text streams too: a line near the end, and nothing.
last = expected.rstrip(b'\r\n').rsplit(b'\r\n', 1)[1][:8].decode()
typ, data = M.search(None, 'BODY', last)
print('SEARCH', last, data, hwm())
assert data == [b'2'], data
typ, data = M.search(None, 'TEXT', 'no-such-words-anywhere')
assert data == [b''], data
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

fn rchar(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rchar in /proc/{pid}/io"))
}

fn wchar(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wchar in /proc/{pid}/io"))
}

/// "Mark all as read" on a big folder: the sidecar is written once per
/// command, not once per message (each write is the whole folder's
/// index, so that was quadratic: minutes on 20,000 messages). Measured
/// as the octets the server wrote during the STORE, against the
/// sidecar's size. The flags are in the sidecar when the OK comes.
#[test]
fn store_on_every_message_writes_the_sidecar_once() {
    let srv = imap_server();
    let mut mbox = Vec::new();
    for i in 0..600 {
        mbox.extend_from_slice(
            format!("From a@example.com Sat Jan  3 01:05:34 2026\nSubject: {i}\n\nbody {i}\n\n")
                .as_bytes(),
        );
    }
    std::fs::write(srv.mbox_path(), &mbox).unwrap();
    let mut c = common::imap::Imap::login(srv.addr("imap"));
    let r = c.cmd("SELECT INBOX");
    assert!(r.contains("* 600 EXISTS"), "{r}");
    let sidecar = srv.data_dir().join("imap").join("INBOX.index");
    let size = std::fs::metadata(&sidecar).unwrap().len();
    let before = wchar(srv.pid());
    let r = c.cmd("STORE 1:* +FLAGS.SILENT (\\Seen \\Flagged)");
    assert!(r.contains("OK"), "{r}");
    let wrote = wchar(srv.pid()) - before;
    let after = std::fs::metadata(&sidecar).unwrap().len();
    assert!(
        wrote < 3 * after.max(size) + 64 * 1024,
        "STORE on 600 messages wrote {wrote} octets; the sidecar is {after}"
    );
    // Written before the OK: a restart (or POP3, which reads it) sees them.
    drop(c);
    let mut c = common::imap::Imap::login(srv.addr("imap"));
    let r = c.cmd("EXAMINE INBOX");
    assert!(r.contains("* 600 EXISTS"), "{r}");
    let r = c.cmd("SEARCH UNSEEN");
    assert!(
        r.contains("* SEARCH\r\n") || r.contains("* SEARCH \r\n"),
        "{r}"
    );
    let r = c.cmd("SEARCH FLAGGED");
    assert!(r.matches(' ').count() >= 600, "{r}");
}

const STRUCTURE_FETCH: &str = r#"
typ, data = M.select('INBOX')
assert typ == 'OK', data
step()
typ, data = M.fetch('1:*', '(ENVELOPE BODYSTRUCTURE)')
assert typ == 'OK', data
for d in data:
    sys.stdout.write('ANSWER %r\n' % (d,))
sys.stdout.flush()
"#;

/// Runs STRUCTURE_FETCH and returns the answer and the octets the server
/// read (rchar) while it answered the FETCH.
fn structure_fetch(srv: &mut Server) -> (String, u64) {
    let mut steps = stepped(srv, STRUCTURE_FETCH, |_, _| {});
    assert_eq!(steps.len(), 1, "{steps:?}");
    steps.remove(0)
}

/// ENVELOPE and BODYSTRUCTURE are computed once, when pimail first
/// indexes a message, and kept in the sidecar index: `FETCH 1:*
/// (ENVELOPE BODYSTRUCTURE)` reads the index, not the mbox (the server
/// reads far fewer octets than the 6 MiB message holds), and after a
/// restart the answer is the same, still without reading the mbox.
#[test]
fn envelope_and_bodystructure_come_from_the_index_and_survive_a_restart() {
    if skip_under_emulator() {
        return; // reads the server's /proc/<pid>/io
    }
    let mut srv = imap_server();
    srv.deliver(&smtp_stuff(
        b"From: =?UTF-8?Q?J=C3=B6rg?= <jorg@example.com>\r\nTo: alice@example.org, \
          Team: a@example.net, b@example.net;\r\nSubject: =?UTF-8?B?w6l0w6k=?=\r\n\
          Message-ID: <one@example.com>\r\nDate: Sat, 3 Jan 2026 01:05:34 +0000\r\n\r\nplain\r\n",
    ));
    srv.deliver(&smtp_stuff(
        b"From: bob@example.com\r\nSubject: mixed\r\nMIME-Version: 1.0\r\n\
          Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\n\
          Content-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\n\
          Content-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n--b2\r\n\
          Content-Type: text/html\r\n\r\n<p>hi</p>\r\n--b2--\r\n--b1\r\n\
          Content-Type: message/rfc822\r\n\r\nFrom: carol@example.com\r\nSubject: inner\r\n\r\n\
          inner body\r\n--b1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n\
          Content-Disposition: attachment; filename=\"a.pdf\"\r\n\
          Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b1--\r\n",
    ));
    srv.deliver(&smtp_stuff(b"Subject: third\r\n\r\nthree\r\n"));
    // A big foreign message: parsing it again would read its 6 MiB.
    let mut big = b"From: dave@example.com\nSubject: big\n\n".to_vec();
    while big.len() < 6 << 20 {
        big.extend_from_slice(b"a line of a big message, nothing to see here\n");
    }
    append_foreign(&srv.mbox_path(), &big);

    let (first, _) = structure_fetch(&mut srv);
    assert!(
        first.contains("multipart") || first.contains("\"mixed\""),
        "{first}"
    );
    assert!(first.contains("\"rfc822\""), "{first}");
    assert!(first.contains("=?UTF-8?B?w6l0w6k=?="), "{first}");
    assert!(first.contains("\"big\""), "{first}");
    // Again in the same run: from the index.
    let (again, read) = structure_fetch(&mut srv);
    assert_eq!(again, first);
    assert!(read < 1 << 20, "FETCH read {read} octets");

    srv.terminate();
    srv.spawn();
    let (after, read) = structure_fetch(&mut srv);
    assert_eq!(after, first, "the answer after a restart");
    assert!(
        read < 1 << 20,
        "FETCH (ENVELOPE BODYSTRUCTURE) after a restart read {read} octets: not the index"
    );
    assert!(
        !srv.log().iter().any(|l| l.contains("MIME record")),
        "records rebuilt: {:?}",
        srv.log()
    );
    let mime = srv.data_dir().join("imap").join("INBOX.mime");
    assert!(std::fs::metadata(&mime).unwrap().len() > 0, "{mime:?}");
}

/// EXPUNGE rewrites the folder, and the rewrite writes IMAP's flags into
/// the kept messages' `Status:`/`X-Status:` lines (mutt's convention), so
/// an mbox reader sees them: Python's `mailbox` reads `\Seen \Answered`
/// as "ROA", `\Flagged \Draft` as "FT", no flags as none. IMAP clients
/// never see these fields, so what they are served for a UID (BODY[],
/// RFC822.SIZE, ENVELOPE, BODYSTRUCTURE) is the same before and after
/// the rewrite (RFC 9051 2.3.1.1).
#[test]
fn expunge_writes_flags_into_status_headers() {
    let srv = imap_server();
    for s in ["one", "two", "three", "four"] {
        srv.deliver(&smtp_stuff(
            format!("Subject: {s}\r\nStatus: O\r\nX-Status: F\r\n\r\nThis is {s}.\r\n").as_bytes(),
        ));
    }
    let out = imaplib(
        &srv,
        r#"
def view():
    typ, data = M.uid('FETCH', '1:*', '(RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[])')
    assert typ == 'OK', data
    got = {}
    for d in data:
        if isinstance(d, tuple):
            head = d[0].decode()
            uid = head.split('UID ')[1].split()[0] if 'UID ' in head else head.split()[0]
            size = int(head.split('RFC822.SIZE ')[1].split()[0])
            assert size == len(d[1]), (size, len(d[1]))
            assert b'Status:' not in d[1], d[1]
            got[uid] = (head.split(' BODY[]')[0].split('RFC822.SIZE')[1], d[1])
    return got
M.select('INBOX')
before = view()
M.store('1', '+FLAGS', '(\\Seen \\Answered)')
M.store('2', '+FLAGS', '(\\Flagged \\Draft $Label1)')
M.store('3', '+FLAGS', '(\\Deleted)')
typ, data = M.expunge()
print('EXPUNGE', typ, data)
after = view()
print('KEPT', len(after))
for uid in after:
    assert after[uid] == before[uid], (uid, before[uid], after[uid])
print('SAME VIEW')
typ, data = M.fetch('1:*', '(FLAGS)')
print('FLAGS', data)
M.logout()
"#,
        &[],
    );
    assert!(out.contains("EXPUNGE OK [b'3']"), "{out}");
    assert!(out.contains("KEPT 3") && out.contains("SAME VIEW"), "{out}");
    let flags = python(
        r#"
import mailbox, sys
box = mailbox.mbox(sys.argv[1], create=False)
for key in box.keys():
    m = box[key]
    print(m['Subject'], repr(m.get_flags()))
"#,
        &[&srv.mbox_path()],
    );
    let lines: Vec<&str> = flags.lines().collect();
    assert_eq!(
        lines,
        ["one 'ROA'", "two 'FT'", "four ''"],
        "{flags}\n{}",
        String::from_utf8_lossy(&srv.mbox())
    );
    // The flags themselves survived the rewrite (keyed by UIDL).
    assert!(out.contains("\\Seen") && out.contains("$Label1"), "{out}");
}

/// A user switching from mutt or Dovecot keeps what they read: mail
/// another program wrote comes into IMAP with the flags its readers left
/// in `Status:`/`X-Status:` at the first look. And a sender cannot use
/// those fields: pimail strips them from mail it receives, so mail that
/// arrives saying `Status: RO` is new, in IMAP and to mutt.
#[test]
fn flags_of_foreign_mail_are_read_and_senders_cannot_set_them() {
    let srv = imap_server();
    append_foreign(
        &srv.mbox_path(),
        b"Subject: read\nStatus: RO\n\nread in mutt\n",
    );
    append_foreign(
        &srv.mbox_path(),
        b"Subject: old\nStatus: O\n\nseen as old only\n",
    );
    append_foreign(
        &srv.mbox_path(),
        b"Subject: replied\nStatus: RO\nX-Status: AF\n\nanswered, flagged\n",
    );
    srv.deliver(&smtp_stuff(
        b"Subject: sneaky\r\nStatus: RO\r\nX-Status: F\r\n\r\nI want to look read.\r\n",
    ));
    let out = imaplib(
        &srv,
        r#"
typ, data = M.select('INBOX')
print('SELECT', typ, data)
typ, data = M.fetch('1:*', '(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
for d in data:
    if isinstance(d, tuple):
        print('MSG', d[1].decode().strip(), d[0].decode().split('FLAGS ')[1].split(')')[0] + ')')
typ, data = M.search(None, 'UNSEEN')
print('UNSEEN', data)
M.logout()
"#,
        &[],
    );
    assert!(out.contains("SELECT OK [b'4']"), "{out}");
    assert!(out.contains("MSG Subject: read (\\Seen)"), "{out}");
    assert!(out.contains("MSG Subject: old ()"), "{out}");
    assert!(
        out.contains("MSG Subject: replied (\\Seen \\Answered \\Flagged)"),
        "{out}"
    );
    assert!(out.contains("MSG Subject: sneaky ()"), "{out}");
    assert!(out.contains("UNSEEN [b'2 4']"), "{out}");
    // Not in the file either: mutt shows the delivered one as new.
    let mbox = String::from_utf8_lossy(&srv.mbox()).to_string();
    let sneaky = &mbox[mbox.find("Subject: sneaky").unwrap()..];
    assert!(!sneaky.contains("Status:"), "{mbox}");
}

/// pimail's seal after `Return-Path:` (how SMTP delivery writes it) is
/// the server's trace data: IMAP clients (mutt's pager) do not see it,
/// and the sizes they are told are of what they get.
#[test]
fn the_seal_after_return_path_is_not_shown_to_imap_clients() {
    let srv = imap_server();
    srv.deliver(&smtp_stuff(
        b"Subject: sealed\r\nFrom: bob@example.com\r\n\r\nHello.\r\n",
    ));
    let mbox = String::from_utf8_lossy(&srv.mbox()).to_string();
    let mut lines = mbox.lines().skip(1);
    assert!(lines.next().unwrap().starts_with("Return-Path:"), "{mbox}");
    assert!(lines.next().unwrap().starts_with("X-Pimail: "), "{mbox}");
    let out = imaplib(
        &srv,
        r#"
M.select('INBOX')
typ, data = M.fetch('1', '(RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER] BODYSTRUCTURE)')
head = data[0][0].decode()
size = int(head.split('RFC822.SIZE ')[1].split()[0])
body = data[0][1]
print('SIZE', size == len(body))
print('SEAL', b'X-Pimail' in body, b'X-Pimail' in data[1][1])
print('RETURN', body.startswith(b'Return-Path:'))
typ, data = M.fetch('1', '(BODY.PEEK[HEADER.FIELDS (X-PIMAIL)])')
print('FIELD', data[0][1])
M.logout()
"#,
        &[],
    );
    assert!(out.contains("SIZE True"), "{out}");
    assert!(out.contains("SEAL False False"), "{out}");
    assert!(out.contains("RETURN True"), "{out}");
    assert!(out.contains("FIELD b'\\r\\n'"), "{out}");
}

/// POP3's deletion at QUIT rewrites the INBOX too, and writes the flags
/// IMAP keeps for the messages it keeps: an mbox reader sees a message
/// read in IMAP as read (`Status: RO`), one flagged as flagged.
#[test]
fn pop3_deletion_writes_imap_flags_into_status_headers() {
    let srv = Server::with(Options {
        listen_imap: true,
        listen_pop3: true,
        ..Options::default()
    });
    for s in ["one", "two", "three"] {
        srv.deliver(&smtp_stuff(
            format!("Subject: {s}\r\n\r\nThis is {s}.\r\n").as_bytes(),
        ));
    }
    let out = imaplib(
        &srv,
        r#"
M.select('INBOX')
M.store('2', '+FLAGS', '(\\Seen)')
M.store('3', '+FLAGS', '(\\Flagged \\Answered)')
M.logout()
print('STORED')
"#,
        &[],
    );
    assert!(out.contains("STORED"), "{out}");
    let mut p = Pop3::login(srv.addr("pop3"));
    p.ok("DELE 1");
    p.ok("QUIT");
    let flags = python(
        r#"
import mailbox, sys
box = mailbox.mbox(sys.argv[1], create=False)
for key in box.keys():
    m = box[key]
    print(m['Subject'], repr(m.get_flags()))
"#,
        &[&srv.mbox_path()],
    );
    let lines: Vec<&str> = flags.lines().collect();
    assert_eq!(lines, ["two 'RO'", "three 'AF'"], "{flags}");
}

/// Runs an imaplib script that prints `STEP` and waits for a line on its
/// stdin before each of its steps; `between(k)` runs before step k is let
/// go. Returns the script's output lines after each step and the octets
/// the server read (rchar) during each step.
fn stepped(
    srv: &mut Server,
    script: &str,
    mut between: impl FnMut(usize, &mut Server),
) -> Vec<(String, u64)> {
    use std::io::{BufRead, BufReader};
    let a = srv.addr("imap");
    let prelude = "import imaplib, sys\n\
                   def step():\n    sys.stdout.write('STEP\\n'); sys.stdout.flush(); sys.stdin.readline()\n\
                   M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=120)\n\
                   typ, caps = M.login('alice', 'secret')\n\
                   assert typ == 'OK', caps\n";
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}\nstep()\nM.logout()\n"))
        .arg(a.ip().to_string())
        .arg(a.port().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    let mut k = 0;
    let mut text = String::new();
    let mut before = 0;
    while let Some(Ok(l)) = lines.next() {
        if l != "STEP" {
            text += &l;
            text.push('\n');
            continue;
        }
        if k > 0 {
            out.push((std::mem::take(&mut text), rchar(srv.pid()) - before));
        }
        between(k, srv);
        before = rchar(srv.pid());
        stdin.write_all(b"go\n").unwrap();
        k += 1;
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "{out:?} {text}");
    out
}

/// SELECT after a restart and new mail while a folder is selected read
/// pimail's sidecar and the new message, not the whole folder (SPEC
/// "Budgets": SELECT after a restart under 10 ms, mail pimail delivered
/// needs no scan): with a 6 MiB message in the INBOX the server reads
/// well under 1 MiB for each, and UIDs and flags are what they were.
#[test]
fn select_after_a_restart_and_new_mail_read_the_index_not_the_folder() {
    if skip_under_emulator() {
        return; // reads the server's /proc/<pid>/io
    }
    let mut srv = imap_server();
    let mut big = b"From: dave@example.com\nSubject: big\n\n".to_vec();
    while big.len() < 6 << 20 {
        big.extend_from_slice(b"a line of a big message, nothing to see here\n");
    }
    append_foreign(&srv.mbox_path(), &big);
    srv.deliver(&smtp_stuff(b"Subject: one\r\n\r\none\r\n"));
    srv.deliver(&smtp_stuff(b"Subject: two\r\n\r\ntwo\r\n"));
    let list = "step()\n\
                typ, d = M.select('INBOX'); assert typ == 'OK', d\n\
                typ, d = M.uid('STORE', '2', '+FLAGS', '(\\\\Flagged)'); assert typ == 'OK', d\n\
                typ, d = M.fetch('1:*', '(UID FLAGS RFC822.SIZE)'); assert typ == 'OK', d\n\
                print(d)\n";
    let first = stepped(&mut srv, list, |_, _| {});
    assert!(first[0].0.contains("Flagged"), "{first:?}");

    srv.terminate();
    srv.spawn();
    let script = "step()\n\
                  typ, d = M.select('INBOX'); assert typ == 'OK', d\n\
                  typ, d = M.fetch('1:*', '(UID FLAGS RFC822.SIZE)'); assert typ == 'OK', d\n\
                  print(d)\n\
                  step()\n\
                  typ, d = M.noop(); assert typ == 'OK', d\n\
                  typ, d = M.fetch('1:*', '(UID FLAGS RFC822.SIZE)'); assert typ == 'OK', d\n\
                  print(d)\n";
    let steps = stepped(&mut srv, script, |k, s| {
        if k == 1 {
            s.deliver(&smtp_stuff(b"Subject: three\r\n\r\nthree\r\n"));
        }
    });
    let (after, read) = &steps[0];
    assert_eq!(
        after.trim(),
        first[0]
            .0
            .trim()
            .replace("\\\\Flagged \\\\Seen", "\\\\Seen \\\\Flagged"),
        "UIDs, flags and sizes after a restart"
    );
    assert!(
        *read < 1 << 20,
        "SELECT after a restart read {read} octets: the folder, not the index"
    );
    let (new, read) = &steps[1];
    assert!(new.contains("(UID 4 ") || new.contains("UID 4 "), "{new}");
    assert_eq!(new.matches("UID ").count(), 4, "{new}");
    assert!(
        *read < 1 << 20,
        "new mail in a selected folder read {read} octets: the folder again"
    );
}

/// Mail pimail delivered needs no scan at the first SELECT (SPEC
/// "Budgets"): the writer indexed it as it appended it, so a first SELECT
/// on a folder IMAP never saw reads well under 1 MiB with a 6 MiB message
/// in it, and shows exactly what a scan finds (UIDs, sizes, ENVELOPE,
/// BODYSTRUCTURE; a hidden `Status:` field left out). Mail another
/// program appended after it is scanned.
#[test]
fn mail_pimail_delivered_needs_no_scan_at_the_first_select() {
    if skip_under_emulator() {
        return; // reads the server's /proc/<pid>/io
    }
    let mut srv = imap_server();
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < 6 << 20 {
        big.extend_from_slice(b"a line of a big message, nothing to see here\r\n");
    }
    srv.deliver(&smtp_stuff(b"Subject: one\r\n\r\none\r\n"));
    srv.deliver(&smtp_stuff(&big));
    srv.deliver(&smtp_stuff(
        b"Subject: two\r\nStatus: RO\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n\
          --x\r\nContent-Type: text/plain\r\n\r\npart\r\n--x--\r\n",
    ));
    srv.terminate();
    srv.spawn();
    let script = "step()\n\
                  typ, d = M.select('INBOX'); assert typ == 'OK', d\n\
                  typ, d = M.fetch('1:*', '(UID RFC822.SIZE ENVELOPE BODYSTRUCTURE)'); assert typ == 'OK', d\n\
                  print(d)\n";
    let steps = stepped(&mut srv, script, |_, _| {});
    let (view, read) = &steps[0];
    assert!(view.contains("UID 3 "), "{view}");
    assert!(
        *read < 1 << 20,
        "the first SELECT on delivered mail read {read} octets: the folder"
    );
    // A scan (index, MIME records and the writer's log removed) finds
    // the same.
    srv.terminate();
    let imap = srv.data_dir().join("imap");
    for p in [
        imap.join("INBOX.index"),
        imap.join("INBOX.mime"),
        srv.data_dir().join("imap.appended"),
    ] {
        std::fs::remove_file(&p).unwrap();
    }
    srv.spawn();
    let scanned = stepped(&mut srv, script, |_, _| {});
    assert_eq!(view, &scanned[0].0);
    assert!(scanned[0].1 > 4 << 20, "no scan: {}", scanned[0].1);
    // Mail from another program after ours: found by a scan of it alone.
    srv.deliver(&smtp_stuff(b"Subject: three\r\n\r\nthree\r\n"));
    append_foreign(
        &srv.mbox_path(),
        b"From: x@example.com\nSubject: four\n\nfour\n",
    );
    srv.deliver(&smtp_stuff(b"Subject: five\r\n\r\nfive\r\n"));
    srv.terminate();
    srv.spawn();
    let script = "step()\n\
                  typ, d = M.select('INBOX'); assert typ == 'OK', d\n\
                  typ, d = M.fetch('1:*', '(UID ENVELOPE)'); assert typ == 'OK', d\n\
                  print(d)\n";
    let after = stepped(&mut srv, script, |_, _| {});
    for s in ["big", "two", "three", "four", "five"] {
        assert!(
            after[0].0.contains(&format!("\"{s}\"")),
            "{s}: {}",
            after[0].0
        );
    }
    assert_eq!(after[0].0.matches("ENVELOPE").count(), 6, "{}", after[0].0);
}

/// The sidecar is a cache written without a flush, so a power cut can
/// leave it cut short, with records lost. SELECT after such a restart
/// still shows every message: a short sidecar is not taken as the
/// folder's view.
#[test]
fn a_sidecar_cut_short_hides_no_message() {
    use common::imap::Imap;
    let mut srv = imap_server();
    for s in ["one", "two", "three", "four"] {
        srv.deliver(&smtp_stuff(
            format!("Subject: {s}\r\n\r\n{s}\r\n").as_bytes(),
        ));
    }
    let view = |srv: &Server| {
        let mut c = Imap::login(srv.addr("imap"));
        let sel = c.ok("SELECT INBOX");
        let f = c.ok("FETCH 1:* (UID FLAGS)");
        c.ok("LOGOUT");
        (sel, f)
    };
    {
        let mut c = Imap::login(srv.addr("imap"));
        c.ok("SELECT INBOX");
        c.ok("STORE 1 +FLAGS (\\Flagged)");
        c.ok("LOGOUT");
    }
    let (sel, before) = view(&srv);
    assert!(sel.contains("* 4 EXISTS"), "{sel}");
    srv.terminate();
    let index = srv.data_dir().join("imap").join("INBOX.index");
    let bytes = std::fs::read(&index).unwrap();
    // The last two messages' records lost, as a torn write leaves it: a
    // header, then four records of about the same length (a few times the
    // header's), so 70% of the file ends inside the third record.
    std::fs::write(&index, &bytes[..bytes.len() * 7 / 10]).unwrap();
    srv.spawn();
    let (sel, after) = view(&srv);
    assert!(
        sel.contains("* 4 EXISTS"),
        "a short sidecar hid mail: {sel}"
    );
    // The messages whose lines were kept keep UID and flags; the two lost
    // get new UIDs above every UID given before (a UID is never reused:
    // the seal's UID is below UIDNEXT, so it cannot be trusted here).
    let kept: Vec<&str> = before.lines().take(2).collect();
    assert_eq!(after.lines().take(2).collect::<Vec<_>>(), kept, "{after}");
    assert!(
        after.contains("* 3 FETCH (UID 5 FLAGS ())")
            && after.contains("* 4 FETCH (UID 6 FLAGS ())"),
        "{after}"
    );
}

/// A sidecar an older pimail wrote (text, format v1 to v4) is read, its
/// UIDVALIDITY, UIDs and flags kept (a client's cache stays valid across
/// the upgrade), and written again in the current format.
#[test]
fn a_sidecar_of_an_older_format_keeps_uidvalidity_uids_and_flags() {
    use common::imap::Imap;
    let mut srv = imap_server();
    for s in ["one", "two"] {
        srv.deliver(&smtp_stuff(
            format!("Subject: {s}\r\n\r\n{s}\r\n").as_bytes(),
        ));
    }
    let mbox = std::fs::read_to_string(srv.mbox_path()).unwrap();
    let ids: Vec<&str> = mbox
        .lines()
        .filter_map(|l| l.strip_prefix("X-Pimail: id="))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{mbox}");
    srv.terminate();
    let index = srv.data_dir().join("imap").join("INBOX.index");
    let old = format!("v1 4242 10 5\n{} 7 1 \\Seen\n{} 8 2\n", ids[0], ids[1]);
    std::fs::write(&index, old).unwrap();
    for round in 0..2 {
        srv.spawn();
        let mut c = Imap::login(srv.addr("imap"));
        let sel = c.ok("SELECT INBOX");
        assert!(sel.contains("[UIDVALIDITY 4242]"), "round {round}: {sel}");
        let f = c.ok("FETCH 1:* (UID FLAGS)");
        assert!(
            f.contains("* 1 FETCH (UID 7 FLAGS (\\Seen))")
                && f.contains("* 2 FETCH (UID 8 FLAGS ())"),
            "round {round}: {f}"
        );
        c.ok("LOGOUT");
        srv.terminate();
        let now = std::fs::read(&index).unwrap();
        assert!(!now.starts_with(b"v1 "), "not written again");
    }
}

/// Another program appending to the INBOX (procmail, mutt) holds the
/// mbox's fcntl lock from its first byte to its last, as pimail's own
/// writer does. A message half written is not shown to an IMAP session:
/// it appears once, whole, after the lock is released (before, its first
/// part got a UID, then the whole one another: a spurious EXPUNGE).
#[test]
fn a_message_half_appended_under_a_lock_is_not_shown_until_whole() {
    use common::imap::Imap;
    use std::io::{BufRead, BufReader};
    let srv = imap_server();
    srv.deliver(&smtp_stuff(b"Subject: one\r\n\r\none\r\n"));
    let mut c = Imap::login(srv.addr("imap"));
    assert!(c.ok("SELECT INBOX").contains("* 1 EXISTS"));
    let script = r#"
import fcntl, sys
f = open(sys.argv[1], 'ab')
fcntl.lockf(f, fcntl.LOCK_EX)
f.write(b'From procmail@example.com Sat Jan  3 01:05:34 2026\nSubject: two\n\nfirst half\n')
f.flush()
print('HALF', flush=True)
sys.stdin.readline()
f.write(b'second half\n\n')
f.flush()
fcntl.lockf(f, fcntl.LOCK_UN)
print('DONE', flush=True)
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(srv.mbox_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "HALF\n");
    // The look waits for the lock, then finds the whole message.
    let during = c.ok("NOOP");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "DONE\n");
    assert!(child.wait().unwrap().success());
    let after = during + &c.ok("NOOP");
    assert!(after.contains("* 2 EXISTS"), "{after}");
    assert!(!after.contains("EXPUNGE"), "{after}");
    assert!(!after.contains("* 3 EXISTS"), "{after}");
    let body = c.ok("FETCH 2 (UID BODY[TEXT])");
    assert!(body.contains("first half\r\nsecond half"), "{body}");
    assert!(body.contains("UID 2 "), "{body}");
}
