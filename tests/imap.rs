//! IMAP end to end: the real server over real sockets, with Python's
//! `imaplib` and `curl imap://` as clients, over the real folder store
//! (INBOX = the mbox, folders under `[user] folders`).

mod common;
use common::imap::{deliver, imap_server, imaplib, simple};
use common::*;
use std::process::Command;

#[test]
fn login_list_select_fetch_search() {
    let srv = imap_server();
    deliver(&srv, &simple("one"));
    deliver(&srv, &simple("two"));
    let out = imaplib(
        &srv,
        r#"
# CAPABILITY after login comes in the tagged OK (clients rely on it).
print('CAPS', caps)
typ, data = M.list()
assert typ == 'OK'
for l in data: print('LIST', l.decode())
typ, data = M.select('INBOX')
print('SELECT', typ, data)
typ, data = M.fetch('1:*', '(UID FLAGS RFC822.SIZE)')
for d in data: print('FETCH', d.decode())
typ, data = M.fetch('2', '(ENVELOPE BODYSTRUCTURE)')
print('ENV', data[0].decode())
typ, data = M.fetch('1', '(BODY.PEEK[])')
sys.stdout.write('BODY ' + repr(data[0][1]) + '\n')
typ, data = M.search(None, 'SUBJECT', 'two')
print('SEARCH', data)
typ, data = M.search(None, 'UNSEEN')
print('UNSEEN', data)
M.logout()
"#,
        &[],
    );
    assert!(out.contains("SPECIAL-USE"), "{out}");
    for (name, flag) in [
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("LIST") && l.contains(flag) && l.contains(name)),
            "{name}: {out}"
        );
    }
    assert!(out.contains("LIST (\\"), "{out}");
    assert!(out.contains("SELECT OK [b'2']"), "{out}");
    // UIDs from the seals: 1 and 2.
    assert!(out.contains("FETCH 1 (UID 1 FLAGS () RFC822.SIZE"), "{out}");
    assert!(out.contains("FETCH 2 (UID 2 FLAGS () RFC822.SIZE"), "{out}");
    assert!(out.contains("\"two\""), "{out}");
    assert!(
        out.contains("(\"Bob\" NIL \"bob\" \"example.com\")"),
        "{out}"
    );
    assert!(
        out.to_lowercase()
            .contains("bodystructure (\"text\" \"plain\""),
        "{out}"
    );
    assert!(out.contains("This is one.\\r\\n"), "{out}");
    assert!(out.contains("SEARCH [b'2']"), "{out}");
    assert!(out.contains("UNSEEN [b'1 2']"), "{out}");
}

#[test]
fn seen_flag_survives_a_restart() {
    let mut srv = imap_server();
    deliver(&srv, &simple("one"));
    deliver(&srv, &simple("two"));
    let out = imaplib(
        &srv,
        r#"
M.select('INBOX')
print(M.store('1', '+FLAGS', '(\\Seen $Forwarded)'))
M.logout()
"#,
        &[],
    );
    assert!(out.contains("\\\\Seen"), "{out}");
    srv.terminate();
    srv.spawn();
    let out = imaplib(
        &srv,
        r#"
M.select('INBOX')
typ, data = M.fetch('1:*', '(UID FLAGS)')
for d in data: print(d.decode())
print(M.search(None, 'UNSEEN'))
"#,
        &[],
    );
    assert!(out.contains("1 (UID 1 FLAGS (\\Seen $Forwarded))"), "{out}");
    assert!(out.contains("2 (UID 2 FLAGS ())"), "{out}");
    assert!(out.contains("[b'2']"), "{out}");
}

#[test]
fn append_then_fetch_back_byte_exact() {
    let srv = imap_server();
    let msg = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: draft\r\n\r\nFrom the start\r\n>From quoted\r\nlast line\r\n";
    let hex: String = msg.iter().map(|b| format!("{b:02x}")).collect();
    let out = imaplib(
        &srv,
        r#"
msg = bytes.fromhex(sys.argv[3])
typ, data = M.append('Drafts', '(\\Draft)', None, msg)
print('APPEND', typ, data)
typ, data = M.select('Drafts')
print('SELECT', typ, data)
typ, data = M.fetch('1', '(FLAGS BODY.PEEK[])')
print('FLAGS', data[0][0].decode())
print('SAME', data[0][1] == msg)
"#,
        &[&hex],
    );
    assert!(out.contains("APPEND OK [b'[APPENDUID "), "{out}");
    assert!(out.contains("SELECT OK [b'1']"), "{out}");
    assert!(out.contains("\\Draft"), "{out}");
    assert!(out.contains("SAME True"), "{out}");
    // The folder is an mbox Python reads.
    let drafts = srv.dir.path().join("data/folders/Drafts");
    let msgs = python_mbox_messages(&drafts);
    assert_eq!(msgs.len(), 1);
}

#[test]
fn copy_move_expunge_keep_folders_readable() {
    let srv = imap_server();
    for s in ["one", "two", "three"] {
        deliver(&srv, &simple(s));
    }
    let out = imaplib(
        &srv,
        r#"
M.select('INBOX')
print('COPY', M.copy('1', 'Archive'))
print('MOVE', M._simple_command('MOVE', '2', 'Trash'))
print('STORE', M.store('1', '+FLAGS', '(\\Deleted)'))
print('EXPUNGE', M.expunge())
typ, data = M.fetch('1:*', '(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
for d in data:
    if isinstance(d, tuple): print('LEFT', d[1].decode().strip())
typ, data = M.status('Trash', '(MESSAGES)')
print('TRASH', data)
typ, data = M.status('Archive', '(MESSAGES)')
print('ARCHIVE', data)
"#,
        &[],
    );
    assert!(out.contains("COPY ('OK', [b'[COPYUID "), "{out}");
    assert!(out.contains("MOVE ('OK'"), "{out}");
    assert!(out.contains("EXPUNGE ('OK'"), "{out}");
    assert!(out.contains("LEFT Subject: three"), "{out}");
    assert!(!out.contains("LEFT Subject: one"), "{out}");
    assert!(out.contains("TRASH [b'\"Trash\" (MESSAGES 1)']"), "{out}");
    assert!(
        out.contains("ARCHIVE [b'\"Archive\" (MESSAGES 1)']"),
        "{out}"
    );
    let subject = |m: &[u8]| {
        String::from_utf8_lossy(m)
            .lines()
            .find(|l| l.starts_with("Subject:"))
            .unwrap_or("")
            .to_string()
    };
    let inbox: Vec<String> = python_mbox_messages(&srv.mbox_path())
        .iter()
        .map(|m| subject(m))
        .collect();
    assert_eq!(inbox, ["Subject: three"]);
    let trash = python_mbox_messages(&srv.dir.path().join("data/folders/Trash"));
    assert_eq!(trash.len(), 1);
    assert_eq!(subject(&trash[0]), "Subject: two");
    let archive = python_mbox_messages(&srv.dir.path().join("data/folders/Archive"));
    assert_eq!(subject(&archive[0]), "Subject: one");
}

#[test]
fn idle_hears_of_mail_delivered_by_smtp() {
    let srv = imap_server();
    deliver(&srv, &simple("one"));
    let a = srv.addr("imap");
    let script = r#"
import imaplib, sys, socket
M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=60)
M.login('alice', 'secret')
M.select('INBOX')
tag = M._new_tag().decode()
M.send(('%s IDLE\r\n' % tag).encode())
print(M.readline().decode().strip(), flush=True)
sys.stdin.readline()  # the test delivers a message now
line = M.readline().decode().strip()
print(line, flush=True)
M.send(b'DONE\r\n')
print(M.readline().decode().strip(), flush=True)
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(a.ip().to_string())
        .arg(a.port().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::{BufRead, Write};
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("+ "), "{line}");
    deliver(&srv, &simple("two"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "* 2 EXISTS");
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("OK"), "{line}");
    let _ = child.wait();
}

fn curl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("curl")
        .args(["-s", "--max-time", "30", "-u", "alice:secret"])
        .args(args)
        .output()
        .expect("curl");
    assert!(o.status.success(), "curl {args:?}: {o:?}");
    o.stdout
}

#[test]
fn curl_lists_and_fetches() {
    let srv = imap_server();
    deliver(&srv, &simple("one"));
    let a = srv.addr("imap");
    let list = curl(&[&format!("imap://{a}/")]);
    let list = String::from_utf8_lossy(&list);
    assert!(list.contains("INBOX") && list.contains("Trash"), "{list}");
    let body = curl(&[&format!("imap://{a}/INBOX;UID=1")]);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("Subject: one"), "{body}");
    assert!(body.contains("This is one."), "{body}");
    // SEARCH in the URL (RFC 5092) and an upload (APPEND) with -T.
    let found = curl(&[&format!("imap://{a}/INBOX?SUBJECT%20one")]);
    assert!(
        String::from_utf8_lossy(&found).contains("SEARCH 1"),
        "{found:?}"
    );
    let file = srv.dir.path().join("upload.eml");
    std::fs::write(
        &file,
        b"Subject: up
From: alice@example.org

Uploaded.
",
    )
    .unwrap();
    curl(&[
        "-T",
        &file.display().to_string(),
        &format!("imap://{a}/Drafts"),
    ]);
    let body = curl(&[&format!("imap://{a}/Drafts;UID=1")]);
    assert!(
        String::from_utf8_lossy(&body).contains("Uploaded."),
        "{body:?}"
    );
    // A custom command (-X), answered as IMAP sends it.
    let st = curl(&["-X", "STATUS Drafts (MESSAGES)", &format!("imap://{a}/")]);
    assert!(
        String::from_utf8_lossy(&st).contains("(MESSAGES 1)"),
        "{st:?}"
    );
}

#[test]
fn imapclient_folders_flags_and_uids() {
    let srv = imap_server();
    deliver(&srv, &simple("one"));
    deliver(&srv, &simple("two"));
    let a = srv.addr("imap");
    let out = python(
        r#"
import sys
try:
    from imapclient import IMAPClient
except ImportError:
    print('SKIP'); sys.exit(0)
c = IMAPClient(sys.argv[1], port=int(sys.argv[2]), ssl=False, timeout=60)
c.login('alice', 'secret')
print('FOLDERS', sorted(f[2] for f in c.list_folders()))
print('TRASH', c.find_special_folder(b'\\Trash'))
info = c.select_folder('INBOX')
print('EXISTS', info[b'EXISTS'], 'UIDNEXT', info[b'UIDNEXT'])
msgs = c.search(['ALL'])
print('UIDS', msgs)
c.add_flags(msgs[:1], [b'\\Flagged'])
r = c.fetch(msgs, ['FLAGS', 'RFC822.SIZE', 'ENVELOPE'])
for uid in sorted(r):
    print('MSG', uid, r[uid][b'FLAGS'], r[uid][b'ENVELOPE'].subject)
c.create_folder('Lists/rust')
print('FOLDERS2', sorted(f[2] for f in c.list_folders()))
c.move(msgs[1:], 'Lists/rust')
print('LEFT', c.search(['ALL']))
c.select_folder('Lists/rust')
print('RUST', c.search(['ALL']))
c.logout()
"#,
        &[&a.ip().to_string(), &a.port().to_string()],
    );
    if out.contains("SKIP") {
        eprintln!("skipped: imapclient not installed (scripts/install-test-tools.sh)");
        return;
    }
    assert!(
        out.contains("FOLDERS ['Archive', 'Drafts', 'INBOX', 'Junk', 'Sent', 'Trash']"),
        "{out}"
    );
    assert!(out.contains("TRASH Trash"), "{out}");
    assert!(out.contains("EXISTS 2 UIDNEXT 3"), "{out}");
    assert!(out.contains("UIDS [1, 2]"), "{out}");
    assert!(out.contains("MSG 1 (b'\\\\Flagged',) b'one'"), "{out}");
    assert!(out.contains("MSG 2 () b'two'"), "{out}");
    assert!(out.contains("'Lists/rust'"), "{out}");
    assert!(out.contains("LEFT [1]"), "{out}");
    assert!(out.contains("RUST [1]"), "{out}");
}

#[test]
fn oversized_append_is_refused_before_its_octets_and_bad_input_gets_bad() {
    let srv = Server::with(Options {
        listen_imap: true,
        limits: "max_message_size = \"1K\"\n".into(),
        ..Options::default()
    });
    let a = srv.addr("imap");
    let out = python(
        r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
f = s.makefile('rb')
print(f.readline().decode().strip())
def cmd(line):
    s.sendall(line)
    while True:
        l = f.readline().decode().strip()
        print(l)
        if not l.startswith('*'): return l
cmd(b'a LOGIN alice secret\r\n')
cmd(b'b FROBNICATE\r\n')
cmd(b'c APPEND INBOX {5000}\r\n')
cmd(b'd NOOP\r\n')
cmd(b'e LOGOUT\r\n')
"#,
        &[&a.ip().to_string(), &a.port().to_string()],
    );
    assert!(out.contains("a OK [CAPABILITY"), "{out}");
    assert!(out.contains("b BAD"), "{out}");
    assert!(out.contains("c NO [TOOBIG]"), "{out}");
    assert!(out.contains("d OK"), "{out}");
    assert!(out.contains("e OK"), "{out}");
    // Nothing was stored.
    assert!(python_mbox_messages(&srv.mbox_path()).is_empty());
}

#[test]
fn kill9_during_moves_loses_no_message() {
    let mut srv = imap_server();
    for i in 0..20 {
        deliver(&srv, &simple(&format!("m{i}")));
    }
    let a = srv.addr("imap");
    // Moves one message at a time until the server dies under it.
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import imaplib, sys
M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=30)
M.login('alice', 'secret')
M.select('INBOX')
print('ready', flush=True)
for i in range(20):
    try:
        M._simple_command('MOVE', '1', 'Trash')
    except Exception:
        break
"#,
        )
        .arg(a.ip().to_string())
        .arg(a.port().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    std::thread::sleep(std::time::Duration::from_millis(150));
    srv.kill9();
    let _ = child.wait();
    srv.spawn();
    let subjects = |p: &std::path::Path| -> Vec<String> {
        python_mbox_messages(p)
            .iter()
            .filter_map(|m| {
                String::from_utf8_lossy(m)
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(String::from))
            })
            .collect()
    };
    let mut all = subjects(&srv.mbox_path());
    all.extend(subjects(&srv.dir.path().join("data/folders/Trash")));
    for i in 0..20 {
        assert!(all.contains(&format!("m{i}")), "m{i} lost: {all:?}");
    }
    // Every message can still be read over IMAP, UIDs unique per folder.
    let out = imaplib(
        &srv,
        r#"
for f in ('INBOX', 'Trash'):
    typ, data = M.select(f)
    typ, uids = M.uid('SEARCH', 'ALL')
    u = uids[0].split()
    assert len(u) == len(set(u)), u
    print(f, int(data[0]))
"#,
        &[],
    );
    let n: usize = out
        .lines()
        .filter_map(|l| l.split(' ').nth(1)?.parse::<usize>().ok())
        .sum();
    assert!(n >= 20, "{out}");
}

/// The Maildir files of `dir` (cur and new), as (file name, content).
fn maildir(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = format!("{sub}/{}", e.file_name().to_string_lossy());
            v.push((name, std::fs::read(e.path()).unwrap_or_default()));
        }
    }
    v.sort();
    v
}

#[test]
fn mbsync_syncs_to_a_maildir_and_back_with_flags() {
    if !Command::new("mbsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: mbsync not installed (apt-get install isync; scripts/install-test-tools.sh does)");
        return;
    }
    let srv = imap_server();
    deliver(&srv, &simple("one"));
    deliver(&srv, &simple("two"));
    let a = srv.addr("imap");
    let home = srv.dir.path().join("home");
    let mail = home.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let rc = home.join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount pimail\nHost {}\nPort {}\nUser alice\nPass secret\nSSLType None\n\
             AuthMechs LOGIN\nTimeout 60\n\n\
             IMAPStore remote\nAccount pimail\n\n\
             MaildirStore local\nPath {}/\nInbox {}/INBOX\nSubFolders Verbatim\n\n\
             Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n\
             Expunge Both\nSyncState *\nSync All\n",
            a.ip(),
            a.port(),
            mail.display(),
            mail.display()
        ),
    )
    .unwrap();
    let sync = || {
        let o = Command::new("mbsync")
            .arg("-c")
            .arg(&rc)
            .arg("-a")
            .env("HOME", &home)
            .output()
            .expect("mbsync");
        assert!(
            o.status.success(),
            "mbsync: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sync();
    // The local INBOX Maildir, which must hold `n` messages.
    let inbox_of = |n: usize| {
        let inbox = maildir(&mail.join("INBOX"));
        assert_eq!(
            inbox.len(),
            n,
            "{:?}",
            inbox.iter().map(|m| &m.0).collect::<Vec<_>>()
        );
        inbox
    };
    let inbox = inbox_of(2);
    let has = |m: &[(String, Vec<u8>)], s: &str| {
        m.iter()
            .find(|(_, c)| {
                String::from_utf8_lossy(c).contains(&format!("Subject: {s}\r\n"))
                    || String::from_utf8_lossy(c).contains(&format!("Subject: {s}\n"))
            })
            .map(|(n, _)| n.clone())
    };
    let one = has(&inbox, "one").expect("one in the Maildir");
    let two = has(&inbox, "two").expect("two in the Maildir");
    // The special-use folders came along as Maildirs.
    for f in ["Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(mail.join(f).join("cur").is_dir(), "{f}");
    }
    // Mark one seen and two flagged locally (Maildir info ":2,S", ":2,F").
    let mark = |name: &str, flag: &str| {
        let from = mail.join("INBOX").join(name);
        let base = name
            .split_once('/')
            .map(|(_, b)| b)
            .unwrap_or(name)
            .split(":2,")
            .next()
            .unwrap()
            .to_string();
        let old: String = name.split(":2,").nth(1).unwrap_or("").to_string();
        let mut flags: Vec<char> = old.chars().chain(flag.chars()).collect();
        flags.sort();
        flags.dedup();
        let to = mail
            .join("INBOX/cur")
            .join(format!("{base}:2,{}", flags.iter().collect::<String>()));
        std::fs::rename(from, to).unwrap();
    };
    mark(&one, "S");
    mark(&two, "F");
    // Meanwhile a message is appended on the server side.
    imaplib(
        &srv,
        r#"
M.append('INBOX', None, None, b'Subject: three\r\nFrom: carol@example.net\r\n\r\nThird.\r\n')
"#,
        &[],
    );
    sync();
    let out = imaplib(
        &srv,
        r#"
M.select('INBOX')
typ, data = M.fetch('1:*', '(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
for d in data:
    if isinstance(d, tuple): print(d[0].decode(), d[1].decode().strip())
"#,
        &[],
    );
    let line = |s: &str| {
        out.lines()
            .find(|l| l.ends_with(&format!("Subject: {s}")))
            .unwrap_or_else(|| panic!("{s}: {out}"))
            .to_string()
    };
    assert!(line("one").contains("\\Seen"), "{out}");
    assert!(!line("one").contains("\\Flagged"), "{out}");
    assert!(line("two").contains("\\Flagged"), "{out}");
    assert!(!line("two").contains("\\Seen"), "{out}");
    let inbox = inbox_of(3);
    assert!(has(&inbox, "three").is_some());
    // A message deleted on the server disappears locally; one written
    // locally into Archive reaches the server.
    let arch = mail.join("Archive/new");
    std::fs::write(
        arch.join("1700000000.local.test"),
        b"Subject: four\nFrom: alice@example.org\n\nWritten locally.\n",
    )
    .unwrap();
    imaplib(
        &srv,
        r#"
M.select('INBOX')
typ, data = M.search(None, 'SUBJECT', 'three')
M.store(data[0], '+FLAGS', '(\\Deleted)')
M.expunge()
"#,
        &[],
    );
    sync();
    let inbox = inbox_of(2);
    assert!(has(&inbox, "three").is_none());
    let out = imaplib(
        &srv,
        r#"
M.select('Archive')
typ, data = M.fetch('1:*', '(BODY.PEEK[])')
for d in data:
    if isinstance(d, tuple): sys.stdout.write(d[1].decode())
"#,
        &[],
    );
    assert!(
        out.contains("Subject: four\r\n") && out.contains("Written locally."),
        "{out}"
    );
    // The server's folders stay mbox files Python reads.
    assert_eq!(python_mbox_messages(&srv.mbox_path()).len(), 2);
    assert_eq!(
        python_mbox_messages(&srv.data_dir().join("folders/Archive")).len(),
        1
    );
}
