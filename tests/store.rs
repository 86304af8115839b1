//! The store against the real binary: UIDLs only pimail chooses (issue 13
//! hole 6), deletion on a full disk and temp files cleaned at start (hole 5),
//! dot-lock leftovers (hole 9), symlinks refused (hole 10).

mod common;
use common::*;

fn pop3_server() -> Server {
    Server::with(Options {
        listen_pop3: true,
        ..Options::default()
    })
}

/// One message over raw SMTP with the given HELO; the queue id from `250`.
fn deliver_with_helo(srv: &Server, helo: &str, content: &[u8]) -> String {
    let mut c = srv.connect();
    let (code, _) = c.reply();
    assert_eq!(code, 220);
    c.expect(&format!("HELO {helo}"), 250);
    let (code, text) = c.send_message(
        "bob@example.com",
        &["alice@example.org"],
        &smtp_stuff(content),
    );
    assert_eq!(code, 250, "{text}");
    c.expect("QUIT", 221);
    // "250 2.0.0 OK queued as ID" or similar: the last word.
    text.split_whitespace().last().unwrap_or("").to_string()
}

#[test]
fn uidls_come_from_our_seal_not_from_the_sender() {
    let srv = pop3_server();
    let forged = b"Subject: forged\r\nX-Pimail: id=CHOSEN uid=1 len=1 sum=0000000000000000\r\n\
                   Received: from x by y (pimail) with ESMTP id CHOSEN2;\r\n\r\nbody\r\n";
    let mut ids = Vec::new();
    for helo in ["id", "id", "with", "x"] {
        ids.push(deliver_with_helo(&srv, helo, forged));
    }
    let mut p = Pop3::login(srv.addr("pop3"));
    let uidl = p.uidl();
    assert_eq!(uidl.len(), 4);
    let uids: Vec<&str> = uidl.iter().map(|(_, u)| u.as_str()).collect();
    let mut unique = uids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{uids:?}");
    for u in &uids {
        assert!(!u.contains("CHOSEN") && !u.contains('['), "{uids:?}");
    }
    // The UIDL is the id the server gave at 250 (where the reply names it).
    let text = String::from_utf8_lossy(&srv.mbox()).to_string();
    assert_eq!(text.matches("X-Pimail: ").count(), 4, "{text}");
    assert!(!text.contains("CHOSEN uid"), "{text}");
    for u in &uids {
        assert!(text.contains(&format!("X-Pimail: id={u} ")), "{u} {text}");
    }
    if ids.iter().all(|i| i.len() == 16) {
        assert_eq!(uids, ids.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    }
    // IMAP UIDs 1..4 in order.
    for (i, u) in uids.iter().enumerate() {
        assert!(text.contains(&format!("id={u} uid={} ", i + 1)), "{text}");
    }
    p.ok("QUIT");
    // A rebuild of the index gives the same UIDLs.
    std::fs::remove_file(srv.data_dir().join("pop3.index")).unwrap();
    let mut p = Pop3::login(srv.addr("pop3"));
    assert_eq!(p.uidl(), uidl);
    p.ok("QUIT");
    // Python's mailbox reads all four.
    assert_eq!(python_mbox_messages(&srv.mbox_path()).len(), 4);
}

/// A pid that is not running: a child that has exited.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// `pimail serve` on an existing config that must refuse to start:
/// its stderr.
fn refused_start(config: &std::path::Path) -> String {
    let out = pimail_command()
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "pimail started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn dot_lock_temp_files_of_dead_processes_are_removed_at_start() {
    let mut srv = pop3_server();
    srv.terminate();
    let mbox = srv.mbox_path();
    let name = mbox.file_name().unwrap().to_string_lossy().to_string();
    let dir = mbox.parent().unwrap();
    let dead = dead_pid();
    let stale: Vec<_> = (0..3)
        .map(|seq| dir.join(format!("{name}.lock.{dead}.{seq}")))
        .collect();
    for p in &stale {
        std::fs::write(p, format!("{dead}\n")).unwrap();
    }
    // Not ours: a name that only looks alike, and a live pid's temp file.
    let other = dir.join(format!("{name}.lock.notes"));
    std::fs::write(&other, "keep").unwrap();
    let live = dir.join(format!("{name}.lock.1.0"));
    std::fs::write(&live, "1\n").unwrap();
    srv.spawn();
    for p in &stale {
        assert!(!p.exists(), "{} left", p.display());
    }
    assert!(other.exists() && live.exists());
    // And the server works: mail is delivered.
    srv.deliver(b"Subject: after\r\n\r\nhi\r\n");
    assert!(String::from_utf8_lossy(&srv.mbox()).contains("Subject: after"));
}

#[test]
fn symlinks_where_pimail_writes_are_refused() {
    let mut srv = pop3_server();
    srv.deliver(b"Subject: one\r\n\r\nhi\r\n");
    srv.terminate();
    let target = srv.dir.path().join("victim");
    std::fs::write(&target, "precious\n").unwrap();
    // 1. The mbox itself a symlink (in a group-writable /var/mail anyone
    //    in the group could plant it): pimail does not start.
    let mbox = srv.mbox_path();
    let saved = std::fs::read(&mbox).unwrap();
    std::fs::remove_file(&mbox).unwrap();
    std::os::unix::fs::symlink(&target, &mbox).unwrap();
    let err = refused_start(&srv.config);
    assert!(err.contains(&mbox.display().to_string()), "{err}");
    assert!(
        err.to_lowercase().contains("symbolic link"),
        "no clear reason: {err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    std::fs::remove_file(&mbox).unwrap();
    std::fs::write(&mbox, &saved).unwrap();
    // 2. The append journal in data_dir.
    let journal = srv.data_dir().join("mbox.journal");
    std::fs::remove_file(&journal).unwrap();
    std::os::unix::fs::symlink(&target, &journal).unwrap();
    let err = refused_start(&srv.config);
    assert!(err.contains("mbox.journal"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    std::fs::remove_file(&journal).unwrap();
    // 3. The POP3 journal, and a temp name the index is written under:
    //    refused / removed, never written through.
    let pj = srv.data_dir().join("pop3.journal");
    let _ = std::fs::remove_file(&pj);
    std::os::unix::fs::symlink(&target, &pj).unwrap();
    let tmp = srv.data_dir().join("pop3.index.tmp");
    std::os::unix::fs::symlink(&target, &tmp).unwrap();
    srv.spawn();
    assert!(
        srv.wait_log("pop3.journal", std::time::Duration::from_secs(10)),
        "{:?}",
        srv.log()
    );
    // The maildrop is not opened past a journal it cannot trust.
    let mut p = Pop3::connect(srv.addr("pop3"));
    p.ok("USER alice");
    let r = p.cmd(&format!("PASS {PASSWORD}"));
    assert!(r.starts_with("-ERR"), "{r}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(String::from_utf8_lossy(&srv.mbox()).contains("Subject: one"));
    assert!(!tmp.exists(), "the planted temp symlink was left");
}
