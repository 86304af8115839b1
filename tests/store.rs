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
