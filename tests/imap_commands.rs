//! Every IMAP command of SPEC "Reading: IMAP" over a real socket against
//! the real binary, in raw protocol (tests/common/imap.rs), so that the
//! exact responses are checked: capabilities, folders (LIST with
//! LIST-EXTENDED return options, LSUB, SUBSCRIBE, CREATE, DELETE, RENAME,
//! STATUS, NAMESPACE), SELECT/EXAMINE, APPEND, FETCH items, STORE, SEARCH
//! and ESEARCH, COPY/MOVE/EXPUNGE/CLOSE/UNSELECT, IDLE, and bad input.
//! Several commands share one server start to keep the suite fast.

mod common;
use common::imap::{deliver, imap_server, simple, Imap};
use common::*;

/// A multipart/mixed message: a UTF-8 text part and a base64 attachment
/// whose 7 decoded octets include NUL and 0xFF.
fn multipart() -> Vec<u8> {
    "From: Bob <bob@example.com>\r\nTo: alice@example.org\r\nCc: carol@example.net\r\n\
     Subject: report\r\nDate: Thu, 18 Jul 1996 10:00:00 +0000\r\n\
     Message-ID: <report@example.com>\r\nMIME-Version: 1.0\r\n\
     Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
     --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
     Hello W\u{f6}rld, the report is attached.\r\n\
     --b1\r\nContent-Type: application/octet-stream; name=\"r.bin\"\r\n\
     Content-Transfer-Encoding: base64\r\n\r\nAAECAwQF/w==\r\n--b1--\r\n"
        .as_bytes()
        .to_vec()
}

/// The capability list in `text` (after `CAPABILITY `, up to `]` or the
/// line end), as words.
fn caps(text: &str) -> Vec<String> {
    let at = text.find("CAPABILITY ").expect("no CAPABILITY") + "CAPABILITY ".len();
    text[at..]
        .split([']', '\r', '\n'])
        .next()
        .unwrap_or("")
        .split(' ')
        .map(String::from)
        .collect()
}

/// SPEC "Capabilities": the full list after login.
const AFTER_LOGIN: &[&str] = &[
    "IMAP4rev1",
    "IMAP4rev2",
    "ESEARCH",
    "LIST-STATUS",
    "STATUS=SIZE",
    "BINARY",
    "LITERAL-",
    "LITERAL+",
    "ENABLE",
    "ID",
    "IDLE",
    "NAMESPACE",
    "UNSELECT",
    "UIDPLUS",
    "MOVE",
    "SPECIAL-USE",
    "CHILDREN",
    "CONDSTORE",
    "LIST-EXTENDED",
];

#[test]
fn capabilities_before_and_after_login_and_authenticate() {
    let srv = imap_server();
    let a = srv.addr("imap");
    let mut c = Imap::connect(a);
    // Before login (loopback, no TLS configured): at least the revisions,
    // the AUTH mechanism, SASL-IR, LITERAL+, ID, ENABLE and IDLE.
    let before = caps(&c.greeting);
    for want in [
        "IMAP4rev1",
        "IMAP4rev2",
        "AUTH=PLAIN",
        "SASL-IR",
        "LITERAL+",
        "ID",
        "ENABLE",
        "IDLE",
    ] {
        assert!(before.iter().any(|c| c == want), "{want}: {before:?}");
    }
    // Loopback: plaintext logins are allowed, so no LOGINDISABLED.
    assert!(!before.iter().any(|c| c == "LOGINDISABLED"), "{before:?}");
    let r = c.ok("CAPABILITY");
    assert_eq!(caps(&r), before, "{r}");
    // LOGIN's tagged OK carries the full list (RFC 9051 6.2.3).
    let r = c.ok("LOGIN alice secret");
    let after = caps(&r);
    for want in AFTER_LOGIN {
        assert!(after.iter().any(|c| c == want), "{want}: {after:?}");
    }
    let r = c.ok("CAPABILITY");
    assert_eq!(caps(&r), after, "{r}");
    // Only AUTH= before login; none of the pre-login words after.
    assert!(!after.iter().any(|c| c.starts_with("AUTH=")), "{after:?}");
    c.ok("LOGOUT");

    // AUTHENTICATE PLAIN with an initial response (SASL-IR, RFC 4959).
    let mut c = Imap::connect(a);
    let ir = b64(b"\0alice\0secret");
    let r = c.ok(&format!("AUTHENTICATE PLAIN {ir}"));
    assert_eq!(caps(&r), after, "{r}");
    // And without: a `+ ` continuation first (RFC 9051 6.2.2).
    let mut c = Imap::connect(a);
    c.send_raw(b"x AUTHENTICATE PLAIN\r\n");
    let l = c.response_line();
    assert!(l.starts_with("+"), "{l}");
    c.send_raw(format!("{ir}\r\n").as_bytes());
    let r = c.until_tagged("x");
    assert!(r.starts_with("x OK [CAPABILITY "), "{r}");
    // A wrong password: NO [AUTHENTICATIONFAILED], the session goes on.
    let mut c = Imap::connect(a);
    c.fails("LOGIN alice wrong", "NO [AUTHENTICATIONFAILED]");
    c.ok("LOGIN alice secret");
}

fn b64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for ch in data.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= ch.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn enable_id_namespace_noop_check_logout() {
    let srv = imap_server();
    let mut c = Imap::login(srv.addr("imap"));
    // Without ENABLE, a rev1 client gets RECENT at SELECT.
    let mut rev1 = Imap::login(srv.addr("imap"));
    let r = rev1.ok("SELECT INBOX");
    assert!(r.contains("* 0 RECENT"), "{r}");
    let r = c.ok("ENABLE IMAP4rev2 CONDSTORE");
    assert!(r.contains("* ENABLED"), "{r}");
    assert!(r.contains("IMAP4rev2") && r.contains("CONDSTORE"), "{r}");
    // IMAP4rev2 has no RECENT (RFC 9051 appendix E); CONDSTORE puts
    // HIGHESTMODSEQ in SELECT (RFC 7162 3.1.2.1).
    let r = c.ok("SELECT INBOX");
    assert!(!r.contains("RECENT"), "{r}");
    assert!(r.contains("[HIGHESTMODSEQ "), "{r}");
    c.ok("UNSELECT");
    // RFC 2971: the server answers with its own ID.
    let r = c.ok("ID (\"name\" \"test\" \"version\" \"1\")");
    assert!(r.starts_with("* ID ("), "{r}");
    let r = c.ok("ID NIL");
    assert!(r.starts_with("* ID "), "{r}");
    // RFC 2342: one personal namespace, "/" the separator.
    let r = c.ok("NAMESPACE");
    assert!(r.starts_with("* NAMESPACE ((\"\" \"/\")) NIL NIL"), "{r}");
    c.ok("NOOP");
    c.fails("CHECK", "BAD"); // only in the selected state
    c.ok("SELECT INBOX");
    c.ok("CHECK");
    c.ok("NOOP");
    let tag = c.next_tag();
    let r = c.cmd("LOGOUT");
    assert!(r.starts_with("* BYE"), "{r}");
    assert!(r.contains(&format!("{tag} OK")), "{r}");
    assert_eq!(c.rest(), "", "the connection ends after LOGOUT");
}

/// The LIST lines of `r` whose mailbox name is `name` (quoted or not).
fn list_line<'a>(r: &'a str, name: &str) -> Option<&'a str> {
    r.lines().find(|l| {
        (l.starts_with("* LIST ") || l.starts_with("* LSUB "))
            && (l.ends_with(&format!(" \"{name}\"")) || l.ends_with(&format!(" {name}")))
    })
}

#[test]
fn folders_list_create_delete_rename_subscribe_status() {
    let srv = imap_server();
    deliver(&srv, &simple("one"));
    deliver(&srv, &simple("two"));
    let mut c = Imap::login(srv.addr("imap"));

    // LIST: INBOX and the five special-use folders, "/" the separator.
    let r = c.ok("LIST \"\" \"*\"");
    for (name, attr) in [
        ("INBOX", "\\NoInferiors"),
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    ] {
        let l = list_line(&r, name).unwrap_or_else(|| panic!("{name}: {r}"));
        assert!(l.contains(attr), "{l}");
        assert!(l.contains(" \"/\" "), "{l}");
    }
    // The separator for an empty pattern (RFC 9051 6.3.9).
    let r = c.ok("LIST \"\" \"\"");
    assert!(r.starts_with("* LIST (\\Noselect) \"/\" \"\""), "{r}");

    // CREATE a parent with a trailing "/", then a folder below it.
    c.ok("CREATE Lists/");
    c.ok("CREATE Lists/rust");
    // A folder that holds mail is a file: no children (\NoInferiors).
    c.fails("CREATE Sent/old", "NO");
    c.fails("CREATE INBOX/sub", "NO");
    // Existing names.
    c.fails("CREATE Lists/rust", "NO");
    c.fails("CREATE inbox", "NO");
    let r = c.ok("LIST \"\" \"*\"");
    let parent = list_line(&r, "Lists").unwrap_or_else(|| panic!("{r}"));
    assert!(parent.contains("\\Noselect"), "{parent}");
    assert!(parent.contains("\\HasChildren"), "{parent}");
    let child = list_line(&r, "Lists/rust").unwrap_or_else(|| panic!("{r}"));
    assert!(child.contains("\\NoInferiors"), "{child}");
    // "%" stops at the separator.
    let r = c.ok("LIST \"\" \"%\"");
    assert!(list_line(&r, "Lists").is_some(), "{r}");
    assert!(list_line(&r, "Lists/rust").is_none(), "{r}");
    let r = c.ok("LIST \"Lists/\" \"%\"");
    assert!(list_line(&r, "Lists/rust").is_some(), "{r}");
    assert!(list_line(&r, "INBOX").is_none(), "{r}");
    c.fails("SELECT Lists", "NO");

    // LIST-EXTENDED (RFC 5258) with the return options IMAP4rev2 has:
    // SPECIAL-USE (RFC 6154) and STATUS (RFC 5819).
    let r = c.ok("LIST (SPECIAL-USE) \"\" \"*\"");
    assert!(list_line(&r, "Trash").is_some(), "{r}");
    assert!(list_line(&r, "INBOX").is_none(), "{r}");
    assert!(list_line(&r, "Lists/rust").is_none(), "{r}");
    let r = c.ok("LIST \"\" \"*\" RETURN (SPECIAL-USE STATUS (MESSAGES UIDNEXT SIZE))");
    assert!(list_line(&r, "Junk").unwrap().contains("\\Junk"), "{r}");
    let st = r
        .lines()
        .find(|l| l.starts_with("* STATUS INBOX") || l.starts_with("* STATUS \"INBOX\""))
        .unwrap_or_else(|| panic!("{r}"));
    assert!(st.contains("MESSAGES 2"), "{st}");
    assert!(st.contains("UIDNEXT 3"), "{st}");
    assert!(st.contains("SIZE "), "{st}");
    // No STATUS for a \Noselect parent (RFC 5819 2).
    assert!(
        !r.contains("* STATUS \"Lists\" ") && !r.contains("* STATUS Lists "),
        "{r}"
    );
    let r = c.ok("LIST \"\" (INBOX Trash) RETURN (CHILDREN)");
    assert!(list_line(&r, "INBOX").is_some() && list_line(&r, "Trash").is_some());
    assert!(list_line(&r, "Sent").is_none(), "{r}");
    let r = c.ok("LIST (SUBSCRIBED) \"\" \"*\"");
    assert!(
        list_line(&r, "INBOX").unwrap().contains("\\Subscribed"),
        "{r}"
    );

    // STATUS, with SIZE (RFC 9051 6.3.11): the octets of every message.
    let r = c.ok("STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE)");
    let st = r.lines().next().unwrap();
    assert!(st.starts_with("* STATUS INBOX ("), "{st}");
    for item in [
        "MESSAGES 2",
        "UIDNEXT 3",
        "UNSEEN 2",
        "DELETED 0",
        "UIDVALIDITY ",
    ] {
        assert!(st.contains(item), "{item}: {st}");
    }
    let size: u64 = st
        .split("SIZE ")
        .nth(1)
        .and_then(|s| {
            s.trim_end_matches(')')
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{st}"));
    c.ok("EXAMINE INBOX");
    let r = c.ok("FETCH 1:* RFC822.SIZE");
    let sum: u64 = r
        .lines()
        .filter_map(|l| l.split("RFC822.SIZE ").nth(1))
        .filter_map(|s| s.trim_end_matches(')').parse::<u64>().ok())
        .sum();
    assert_eq!(size, sum, "{r}");
    c.ok("UNSELECT");
    let r = c.ok("STATUS Lists/rust (MESSAGES HIGHESTMODSEQ)");
    assert!(r.contains("(MESSAGES 0 HIGHESTMODSEQ"), "{r}");
    c.fails("STATUS Nope (MESSAGES)", "NO");

    // SUBSCRIBE / UNSUBSCRIBE / LSUB.
    let r = c.ok("LSUB \"\" \"*\"");
    assert!(list_line(&r, "INBOX").is_some(), "{r}");
    c.ok("UNSUBSCRIBE Lists/rust");
    let r = c.ok("LSUB \"\" \"*\"");
    assert!(list_line(&r, "Lists/rust").is_none(), "{r}");
    c.ok("SUBSCRIBE Lists/rust");
    let r = c.ok("LSUB \"\" \"*\"");
    assert!(list_line(&r, "Lists/rust").is_some(), "{r}");
    // RECURSIVEMATCH (RFC 5258 3.5): an unsubscribed parent of a
    // subscribed folder is listed with CHILDINFO.
    c.ok("UNSUBSCRIBE Lists");
    let r = c.ok("LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\"");
    assert!(
        r.lines()
            .any(|l| l.contains("\"Lists\"") && l.contains("(\"CHILDINFO\" (\"SUBSCRIBED\"))")),
        "{r}"
    );
    let r = c.ok("LIST (REMOTE) \"\" \"*\"");
    assert!(list_line(&r, "Lists/rust").is_some(), "{r}");
    c.fails("LIST (RECURSIVEMATCH) \"\" \"*\"", "BAD"); // alone (RFC 5258 3)

    // RENAME moves the file; messages go with it.
    let msg = simple("rusty");
    let r = c.append("Lists/rust", &msg);
    assert!(r.contains("OK [APPENDUID "), "{r}");
    c.ok("RENAME Lists/rust Lists/rustlang");
    let r = c.ok("STATUS Lists/rustlang (MESSAGES)");
    assert!(r.contains("(MESSAGES 1)"), "{r}");
    c.fails("STATUS Lists/rust (MESSAGES)", "NO");
    assert!(srv.data_dir().join("folders/Lists/rustlang").is_file());
    c.fails("RENAME Nope Other", "NO");
    c.fails("RENAME Lists/rustlang Trash", "NO"); // the target exists
                                                  // RENAME INBOX moves its messages into a new folder, INBOX stays
                                                  // (RFC 9051 6.3.6).
    c.ok("RENAME INBOX Old");
    let r = c.ok("STATUS Old (MESSAGES)");
    assert!(r.contains("(MESSAGES 2)"), "{r}");
    let r = c.ok("STATUS INBOX (MESSAGES)");
    assert!(r.contains("(MESSAGES 0)"), "{r}");

    // DELETE: a folder goes; INBOX cannot; a parent with children cannot
    // go while it has them... but its children can.
    c.ok("DELETE Old");
    c.fails("STATUS Old (MESSAGES)", "NO");
    c.fails("DELETE INBOX", "NO");
    c.fails("DELETE Nope", "NO");
    c.ok("DELETE Lists/rustlang");
    c.ok("DELETE Lists");
    let r = c.ok("LIST \"\" \"*\"");
    assert!(list_line(&r, "Lists").is_none(), "{r}");
    assert!(!srv.data_dir().join("folders/Lists").exists());

    // Names with non-ASCII letters are modified UTF-7 (RFC 3501 5.1.3).
    c.ok("CREATE \"Entw&APw-rfe\"");
    let r = c.ok("LIST \"\" \"Entw*\"");
    assert!(r.contains("\"Entw&APw-rfe\""), "{r}");
    assert!(srv.data_dir().join("folders/Entwürfe").is_file());
}

#[test]
fn select_examine_append_and_fetch_items() {
    let srv = imap_server();
    deliver(&srv, &simple("one"));
    deliver(&srv, &multipart());
    let mut c = Imap::login(srv.addr("imap"));

    // SELECT (RFC 9051 6.3.2): FLAGS, EXISTS, UIDVALIDITY, UIDNEXT,
    // PERMANENTFLAGS, [READ-WRITE]; with CONDSTORE, HIGHESTMODSEQ.
    let r = c.ok("SELECT INBOX (CONDSTORE)");
    assert!(
        r.contains("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft"),
        "{r}"
    );
    assert!(r.contains("* 2 EXISTS\r\n"), "{r}");
    assert!(r.contains("* OK [UIDVALIDITY "), "{r}");
    assert!(r.contains("* OK [UIDNEXT 3]"), "{r}");
    assert!(r.contains("* OK [PERMANENTFLAGS ("), "{r}");
    assert!(r.contains("\\*)]"), "keywords allowed: {r}");
    assert!(r.contains("* OK [HIGHESTMODSEQ "), "{r}");
    assert!(r.contains("OK [READ-WRITE]"), "{r}");
    // A failed SELECT leaves no folder selected (RFC 9051 6.3.2).
    let r = c.fails("SELECT Nope", "NO");
    assert!(r.contains("* OK [CLOSED]"), "{r}");
    c.fails("FETCH 1 FLAGS", "BAD");
    c.ok("SELECT INBOX");

    // FETCH of the simple items.
    let r = c.ok("FETCH 1 (FLAGS UID INTERNALDATE RFC822.SIZE)");
    assert!(r.starts_with("* 1 FETCH ("), "{r}");
    assert!(r.contains("UID 1"), "{r}");
    assert!(r.contains("FLAGS ()"), "{r}");
    assert!(r.contains("INTERNALDATE \""), "{r}");
    let one = simple("one");
    // The seal after Return-Path is shown (SPEC); the size is the whole
    // message as sent.
    let size: usize = r
        .split("RFC822.SIZE ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(size >= one.len(), "{size} {r}");
    // Macros: FAST, ALL, FULL (RFC 9051 6.4.5).
    let r = c.ok("FETCH 1 FAST");
    assert!(r.contains("FLAGS") && r.contains("INTERNALDATE") && r.contains("RFC822.SIZE"));
    let r = c.ok("FETCH 1 ALL");
    assert!(r.contains("ENVELOPE ("), "{r}");
    let r = c.ok("FETCH 1 FULL");
    assert!(r.contains("BODY (\"text\" \"plain\""), "{r}");

    // ENVELOPE (RFC 9051 7.5.2): date, subject, from, sender, reply-to
    // (both default to From), to, cc, bcc, in-reply-to, message-id.
    let r = c.ok("FETCH 2 ENVELOPE");
    assert!(
        r.contains(
            "ENVELOPE (\"Thu, 18 Jul 1996 10:00:00 +0000\" \"report\" \
             ((\"Bob\" NIL \"bob\" \"example.com\")) ((\"Bob\" NIL \"bob\" \"example.com\")) \
             ((\"Bob\" NIL \"bob\" \"example.com\")) ((NIL NIL \"alice\" \"example.org\")) \
             ((NIL NIL \"carol\" \"example.net\")) NIL NIL \"<report@example.com>\")"
        ),
        "{r}"
    );
    // BODYSTRUCTURE: multipart/mixed with the two parts and the boundary.
    let r = c.ok("FETCH 2 BODYSTRUCTURE");
    let l = r.to_lowercase();
    assert!(
        l.contains("(\"text\" \"plain\" (\"charset\" \"utf-8\")"),
        "{r}"
    );
    assert!(
        l.contains("(\"application\" \"octet-stream\" (\"name\" \"r.bin\") nil nil \"base64\" 12"),
        "{r}"
    );
    assert!(l.contains("\"mixed\" (\"boundary\" \"b1\")"), "{r}");
    let r = c.ok("FETCH 2 BODY");
    assert!(r.contains("BODY ((\"text\" \"plain\""), "{r}");

    // BODY.PEEK does not set \Seen.
    let r = c.ok("FETCH 2 (BODY.PEEK[1] BODY.PEEK[HEADER.FIELDS (SUBJECT CC)])");
    assert!(r.contains("BODY[1] {"), "{r}");
    assert!(
        r.contains("Hello W\u{f6}rld, the report is attached. BODY["),
        "{r}"
    );
    assert!(
        r.contains("BODY[HEADER.FIELDS (SUBJECT CC)] {42}\r\nCc: carol@example.net\r\nSubject: report\r\n\r\n"),
        "{r}"
    );
    let r = c.ok("FETCH 2 FLAGS");
    assert!(r.contains("FLAGS ()"), "{r}");
    // Sections: HEADER, TEXT, MIME, a part's header, NOT, partial.
    let r = c.ok("FETCH 2 (BODY.PEEK[2.MIME] BODY.PEEK[2] BODY.PEEK[TEXT]<0.5>)");
    assert!(
        r.contains("BODY[2.MIME] {91}\r\nContent-Type: application/octet-stream; name=\"r.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"),
        "{r}"
    );
    assert!(r.contains("BODY[2] {12}\r\nAAECAwQF/w=="), "{r}");
    assert!(r.contains("BODY[TEXT]<0> {5}\r\n--b1\r"), "{r}");
    let r = c.ok("FETCH 2 BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED RETURN-PATH X-PIMAIL CC FROM TO DATE MESSAGE-ID MIME-VERSION CONTENT-TYPE)]");
    assert!(r.contains("{19}\r\nSubject: report\r\n\r\n"), "{r}");
    let r = c.ok("FETCH 1 BODY.PEEK[]<3.4>");
    assert!(r.contains("BODY[]<3> {4}\r\n"), "{r}");
    // A part beyond the end of the message is empty (docs/imap.md).
    let r = c.ok("FETCH 1 BODY.PEEK[]<100000.10>");
    assert!(
        r.contains("BODY[]<100000> {0}") || r.contains("BODY[]<100000> \"\""),
        "{r}"
    );

    // BINARY (RFC 3516): the decoded octets, NUL included (literal8).
    let r = c.ok("FETCH 2 (BINARY.SIZE[2] BINARY.PEEK[2])");
    assert!(r.contains("BINARY.SIZE[2] 7"), "{r}");
    assert!(
        r.contains("BINARY[2] ~{7}\r\n\0\u{1}\u{2}\u{3}\u{4}\u{5}"),
        "{r:?}"
    );
    let r = c.ok("FETCH 2 BINARY.PEEK[1]");
    assert!(r.contains("Hello W\u{f6}rld"), "{r}");
    let r = c.ok("FETCH 2 FLAGS");
    assert!(r.contains("FLAGS ()"), "BINARY.PEEK set no flag: {r}");

    // BODY[] (no PEEK) sets \Seen and reports it (RFC 9051 6.4.5).
    let r = c.ok("FETCH 1 BODY[HEADER]");
    assert!(r.contains("\\Seen"), "{r}");
    assert!(r.contains("Subject: one\r\n"), "{r}");
    // RFC822, RFC822.HEADER, RFC822.TEXT (RFC 3501).
    let r = c.ok("FETCH 2 (RFC822.HEADER RFC822.TEXT)");
    assert!(r.contains("RFC822.HEADER {"), "{r}");
    assert!(r.contains("RFC822.TEXT {"), "{r}");
    assert!(r.contains("Subject: report\r\n"), "{r}");
    assert!(r.contains("\\Seen"), "RFC822.TEXT sets \\Seen: {r}");
    let r = c.ok("FETCH 1 RFC822");
    assert!(
        r.contains("RFC822 {") && r.contains("This is one.\r\n"),
        "{r}"
    );

    // UID FETCH: by UID, UID always in the answer; CHANGEDSINCE
    // (RFC 7162 3.1.4).
    let r = c.ok("UID FETCH 2 FLAGS");
    assert!(r.starts_with("* 2 FETCH (") && r.contains("UID 2"), "{r}");
    let r = c.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)");
    assert!(r.contains("MODSEQ ("), "{r}");
    let r = c.ok("UID FETCH 99 FLAGS");
    assert!(!r.contains("FETCH ("), "no such UID: {r}");
    c.fails("FETCH 99 FLAGS", "BAD"); // no such sequence number
    c.fails("FETCH 1 (FLAGS BOGUS)", "BAD");

    // APPEND with flags and a date: INTERNALDATE comes back as given.
    let msg = simple("appended");
    let r = c.append(
        "INBOX (\\Flagged $Forwarded) \"05-Feb-2024 13:14:15 +0100\"",
        &msg,
    );
    assert!(r.contains("OK [APPENDUID "), "{r}");
    // The selected session hears of it, with the APPEND or at the next
    // command (RFC 9051 6.3.12).
    let r = r + &c.ok("NOOP");
    assert!(r.contains("* 3 EXISTS"), "{r}");
    let r = c.ok("FETCH 3 (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])");
    // The same instant (the mbox From_ line keeps no zone: UTC).
    assert!(
        r.contains("INTERNALDATE \" 5-Feb-2024 12:14:15 +0000\""),
        "{r}"
    );
    assert!(r.contains("\\Flagged") && r.contains("$Forwarded"), "{r}");
    assert!(r.contains(&format!("RFC822.SIZE {}", msg.len())), "{r}");
    assert!(
        r.contains(&String::from_utf8_lossy(&msg).to_string()),
        "{r}"
    );
    c.fails("APPEND Nope {3+}\r\nabc", "NO [TRYCREATE]");
    c.fails("APPEND INBOX (\\Bogus) {3+}\r\nabc", "BAD");
    c.fails(
        "APPEND INBOX \"31-Foo-2024 13:14:15 +0100\" {3+}\r\nabc",
        "BAD",
    );

    // EXAMINE: read-only, FETCH BODY[] sets no flag, STORE refused.
    let r = c.ok("EXAMINE INBOX");
    assert!(r.contains("* OK [CLOSED]"), "{r}");
    assert!(r.contains("OK [READ-ONLY]"), "{r}");
    let r = c.ok("FETCH 2 BODY[]");
    assert!(!r.contains("\\Seen") || r.contains("FLAGS (\\Seen"), "{r}");
    c.fails("STORE 1 +FLAGS (\\Deleted)", "NO");
    c.fails("EXPUNGE", "NO");
}

fn msg(subject: &str, from: &str, extra: &str, date: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: Alice <alice@example.org>\r\n{extra}Subject: {subject}\r\n\
         Date: {date}\r\nMessage-ID: <{}@example.com>\r\n\r\n{body}\r\n",
        subject.len()
    )
    .into_bytes()
}

/// The numbers of an untagged `* SEARCH` answer in `r`.
fn found(r: &str) -> Vec<u32> {
    let l = r
        .lines()
        .find(|l| l.starts_with("* SEARCH"))
        .unwrap_or_else(|| panic!("no SEARCH: {r}"));
    l["* SEARCH".len()..]
        .split_whitespace()
        .take_while(|w| !w.starts_with('('))
        .map(|w| w.parse().unwrap())
        .collect()
}

#[test]
fn store_and_search_every_key() {
    let srv = imap_server();
    let mut c = Imap::login(srv.addr("imap"));
    c.ok("CREATE S");
    // A first message, expunged, so that UIDs (2, 3, 4) differ from
    // sequence numbers (1, 2, 3).
    c.append("S", &simple("gone"));
    c.append(
        "S (\\Seen \\Answered) \"01-Jan-2020 10:00:00 +0000\"",
        &msg(
            "alpha report",
            "Bob <bob@example.com>",
            "Cc: carol@example.net\r\n",
            "Tue, 31 Dec 2019 23:00:00 +0000",
            "first body apple",
        ),
    );
    let big = format!("second banana\r\n{}", "padding line\r\n".repeat(100));
    c.append(
        "S (\\Flagged \\Draft) \"15-Jun-2021 10:00:00 +0000\"",
        &msg(
            "beta",
            "Dave <dave@example.net>",
            "Bcc: eve@example.org\r\n",
            "Mon, 14 Jun 2021 12:00:00 +0000",
            &big,
        ),
    );
    c.append(
        "S ($Work) \"10-Mar-2022 10:00:00 +0000\"",
        &msg(
            "=?utf-8?q?Gr=C3=BC=C3=9Fe?= from home",
            "Bob <bob@example.com>",
            "X-Custom: zebra\r\n",
            "Wed, 09 Mar 2022 08:00:00 +0000",
            "third cherry",
        ),
    );
    c.ok("SELECT S");
    let r = c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)");
    assert!(!r.contains("FETCH"), ".SILENT: {r}");
    let r = c.ok("EXPUNGE");
    assert!(r.contains("* 1 EXPUNGE"), "{r}");

    let s = |c: &mut Imap, q: &str| found(&c.ok(&format!("SEARCH {q}")));
    let e: Vec<u32> = vec![];
    assert_eq!(s(&mut c, "ALL"), [1, 2, 3]);
    assert_eq!(s(&mut c, "ANSWERED"), [1]);
    assert_eq!(s(&mut c, "UNANSWERED"), [2, 3]);
    assert_eq!(s(&mut c, "SEEN"), [1]);
    assert_eq!(s(&mut c, "UNSEEN"), [2, 3]);
    assert_eq!(s(&mut c, "FLAGGED"), [2]);
    assert_eq!(s(&mut c, "UNFLAGGED"), [1, 3]);
    assert_eq!(s(&mut c, "DRAFT"), [2]);
    assert_eq!(s(&mut c, "UNDRAFT"), [1, 3]);
    assert_eq!(s(&mut c, "DELETED"), e);
    assert_eq!(s(&mut c, "UNDELETED"), [1, 2, 3]);
    assert_eq!(s(&mut c, "KEYWORD $Work"), [3]);
    assert_eq!(s(&mut c, "UNKEYWORD $Work"), [1, 2]);
    assert_eq!(s(&mut c, "FROM dave"), [2]);
    assert_eq!(s(&mut c, "FROM \"Bob\""), [1, 3]);
    assert_eq!(s(&mut c, "TO alice@example.org"), [1, 2, 3]);
    assert_eq!(s(&mut c, "CC carol"), [1]);
    assert_eq!(s(&mut c, "BCC eve"), [2]);
    assert_eq!(s(&mut c, "SUBJECT BETA"), [2]);
    // The field's name is not its value.
    assert_eq!(s(&mut c, "SUBJECT subject"), e);
    assert_eq!(s(&mut c, "FROM from"), e);
    assert_eq!(s(&mut c, "BODY banana"), [2]);
    assert_eq!(s(&mut c, "BODY zebra"), e); // a header, not the body
    assert_eq!(s(&mut c, "TEXT zebra"), [3]);
    assert_eq!(s(&mut c, "TEXT apple"), [1]);
    assert_eq!(s(&mut c, "HEADER X-Custom zeb"), [3]);
    assert_eq!(s(&mut c, "HEADER X-Custom \"\""), [3]);
    assert_eq!(s(&mut c, "LARGER 1000"), [2]);
    assert_eq!(s(&mut c, "SMALLER 1000"), [1, 3]);
    // INTERNALDATE (the APPEND dates) ...
    assert_eq!(s(&mut c, "BEFORE 1-Jan-2021"), [1]);
    assert_eq!(s(&mut c, "ON 15-Jun-2021"), [2]);
    assert_eq!(s(&mut c, "SINCE 1-Jan-2022"), [3]);
    // ... and the Date: header, a day before each.
    assert_eq!(s(&mut c, "SENTBEFORE 1-Jan-2020"), [1]);
    assert_eq!(s(&mut c, "SENTON 14-Jun-2021"), [2]);
    assert_eq!(s(&mut c, "SENTON 15-Jun-2021"), e);
    assert_eq!(s(&mut c, "SENTSINCE 9-Mar-2022"), [3]);
    // \Recent is not kept (docs/imap.md).
    assert_eq!(s(&mut c, "NEW"), e);
    assert_eq!(s(&mut c, "RECENT"), e);
    assert_eq!(s(&mut c, "OLD"), [1, 2, 3]);
    // Combinations, sets, UIDs.
    assert_eq!(s(&mut c, "NOT SEEN"), [2, 3]);
    assert_eq!(s(&mut c, "OR FROM dave SUBJECT alpha"), [1, 2]);
    assert_eq!(s(&mut c, "(FROM bob UNSEEN)"), [3]);
    assert_eq!(s(&mut c, "2:3"), [2, 3]);
    assert_eq!(s(&mut c, "*"), [3]);
    assert_eq!(s(&mut c, "UID 2,4"), [1, 3]);
    assert_eq!(s(&mut c, "UID 1"), e);
    let r = c.ok("UID SEARCH FROM bob");
    assert_eq!(found(&r), [2, 4], "{r}");
    // CHARSET UTF-8 (a literal) finds the decoded encoded word.
    let tag = c.next_tag();
    let word = "Grüße";
    c.send_raw(format!("{tag} SEARCH CHARSET UTF-8 SUBJECT {{{}}}\r\n", word.len()).as_bytes());
    let l = c.response_line();
    assert!(l.starts_with('+'), "{l}");
    c.send_raw(format!("{word}\r\n").as_bytes());
    let r = c.until_tagged(&tag);
    assert_eq!(found(&r), [3], "{r}");
    let r = c.fails("SEARCH CHARSET KOI8-R SUBJECT x", "NO [BADCHARSET");
    assert!(r.contains("UTF-8"), "{r}");
    c.fails("SEARCH FROBNICATE", "BAD");
    c.fails("SEARCH BEFORE 32-Jan-2020", "BAD");

    // ESEARCH (RFC 4731, in IMAP4rev2).
    let tag = c.next_tag();
    let r = c.ok("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN");
    let l = r.lines().next().unwrap();
    assert!(l.starts_with(&format!("* ESEARCH (TAG \"{tag}\") ")), "{r}");
    for item in [" MIN 2", " MAX 3", " COUNT 2", " ALL 2:3"] {
        assert!(l.contains(item), "{item}: {r}");
    }
    let tag = c.next_tag();
    let r = c.ok("UID SEARCH RETURN () ALL");
    assert!(
        r.contains(&format!("* ESEARCH (TAG \"{tag}\") UID ALL 2:4")),
        "{r}"
    );
    let tag = c.next_tag();
    let r = c.ok("SEARCH RETURN (COUNT) DELETED");
    assert!(
        r.contains(&format!("* ESEARCH (TAG \"{tag}\") COUNT 0")),
        "{r}"
    );

    // STORE: +FLAGS, -FLAGS, FLAGS, .SILENT, UID STORE; the answer
    // carries the new flags.
    let r = c.ok("STORE 2 +FLAGS (\\Seen)");
    assert!(
        r.contains("* 2 FETCH (FLAGS (\\Flagged \\Draft \\Seen)"),
        "{r}"
    );
    let r = c.ok("STORE 2 -FLAGS (\\Draft \\Flagged)");
    assert!(r.contains("* 2 FETCH (FLAGS (\\Seen)"), "{r}");
    let r = c.ok("STORE 2 FLAGS (\\Answered $Forwarded)");
    assert!(
        r.contains("* 2 FETCH (FLAGS (\\Answered $Forwarded)"),
        "{r}"
    );
    let r = c.ok("STORE 2 FLAGS.SILENT ()");
    assert!(!r.contains("FETCH"), "{r}");
    let r = c.ok("UID STORE 4 +FLAGS (\\Flagged)");
    assert!(r.contains("* 3 FETCH (") && r.contains("UID 4"), "{r}");
    c.fails("STORE 1 +FLAGS (\\Bogus)", "BAD");
    c.fails("STORE 1 +FLAGZ (\\Seen)", "BAD");
    // UNCHANGEDSINCE (RFC 7162 3.1.3): a stale MODSEQ is refused with
    // [MODIFIED], the current one works.
    let r = c.ok("FETCH 1 (MODSEQ)");
    let modseq: u64 = r
        .split("MODSEQ (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    let r = c.ok(&format!(
        "STORE 1 (UNCHANGEDSINCE {}) +FLAGS (\\Flagged)",
        modseq - 1
    ));
    assert!(r.contains("OK [MODIFIED 1]"), "{r}");
    let r = c.ok(&format!(
        "STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Flagged)"
    ));
    assert!(r.contains("\\Flagged") && r.contains("MODSEQ ("), "{r}");
    let newer: u64 = r
        .split("MODSEQ (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    assert!(newer > modseq, "{r}");
    // The latest change is the only one at or above its MODSEQ.
    let r = c.ok(&format!("SEARCH MODSEQ {newer}"));
    assert_eq!(found(&r), [1], "{r}");
    assert!(r.contains(&format!("(MODSEQ {newer})")), "{r}");

    // Another session sees the flags at once, and after a restart they
    // are still there.
    let mut d = Imap::login(srv.addr("imap"));
    d.ok("EXAMINE S");
    let r = d.ok("FETCH 1:* FLAGS");
    assert!(
        r.contains("* 1 FETCH (FLAGS (\\Seen \\Answered \\Flagged))"),
        "{r}"
    );
    assert!(r.contains("* 2 FETCH (FLAGS ())"), "{r}");
    assert!(r.contains("* 3 FETCH (FLAGS ($Work \\Flagged))"), "{r}");
    // BODY and TEXT find words in quoted-printable and base64 text
    // parts, decoded.
    c.ok("CREATE Q");
    c.append(
        "Q",
        b"Subject: qp\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Transfer-Encoding: quoted-printable\r\n\r\nUn caf=C3=A9 cr=C3=A8=\r\nme br=C3=BBl=C3=A9e\r\n",
    );
    c.append(
        "Q",
        b"Subject: b64\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n\
          --x\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
          SGVsbG8gbW9vbg==\r\n--x--\r\n",
    );
    // An attachment's content is not searched (as Dovecot), neither
    // decoded nor as stored; its MIME header is, by TEXT (docs/imap.md).
    c.append(
        "Q",
        b"Subject: att\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n\
          --y\r\nContent-Type: text/plain\r\n\r\nsee the attached file\r\n\
          --y\r\nContent-Type: application/octet-stream; name=quarterly.bin\r\n\
          Content-Transfer-Encoding: base64\r\n\r\nc2VjcmV0IHdhbHJ1cw==\r\n--y--\r\n",
    );
    // A `From ` line is stored quoted (`>From `, mboxrd) but searched
    // as the client sees it.
    c.append("Q", b"Subject: quoted\r\n\r\nintro\r\nFrom here on\r\n");
    let mut q = Imap::login(srv.addr("imap"));
    q.ok("SELECT Q");
    let qs = |q: &mut Imap, k: &str| found(&q.ok(&format!("SEARCH {k}")));
    let tag = q.next_tag();
    let word = "crème";
    q.send_raw(format!("{tag} SEARCH CHARSET UTF-8 BODY {{{}}}\r\n", word.len()).as_bytes());
    assert!(q.response_line().starts_with('+'));
    q.send_raw(format!("{word}\r\n").as_bytes());
    assert_eq!(found(&q.until_tagged(&tag)), [1]);
    assert_eq!(qs(&mut q, "BODY moon"), [2]);
    assert_eq!(qs(&mut q, "TEXT \"hello moon\""), [2]);
    assert_eq!(qs(&mut q, "BODY SGVsbG8"), [2]); // as stored, too
    assert_eq!(qs(&mut q, "BODY sun"), e);
    assert_eq!(qs(&mut q, "BODY attached"), [3]);
    assert_eq!(qs(&mut q, "TEXT quarterly.bin"), [3]);
    assert_eq!(qs(&mut q, "TEXT walrus"), e);
    assert_eq!(qs(&mut q, "TEXT c2VjcmV0"), e);
    assert_eq!(qs(&mut q, "BODY \"From here\""), [4]);
    assert_eq!(qs(&mut q, "BODY \">From here\""), e);

    c.ok("STORE 3 -FLAGS ($Work)");
    let r = d.ok("NOOP");
    assert!(
        r.contains("* 3 FETCH (") && r.contains("FLAGS (\\Flagged))"),
        "{r}"
    );
}

#[test]
fn copy_move_expunge_close_unselect_idle() {
    let srv = imap_server();
    for s in ["m1", "m2", "m3", "m4", "m5", "m6"] {
        deliver(&srv, &simple(s));
    }
    let a = srv.addr("imap");
    let mut c = Imap::login(a);
    c.ok("SELECT INBOX");
    let validity = {
        let r = c.ok("STATUS Archive (UIDVALIDITY)");
        r.split("UIDVALIDITY ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap()
            .to_string()
    };
    // COPY / UID COPY answer [COPYUID validity source target] (RFC 4315).
    let r = c.ok("COPY 1:2 Archive");
    assert!(
        r.contains(&format!("OK [COPYUID {validity} 1:2 1:2]")),
        "{r}"
    );
    let r = c.ok("UID COPY 3 Archive");
    assert!(r.contains(&format!("[COPYUID {validity} 3 3]")), "{r}");
    c.fails("COPY 1 Nope", "NO [TRYCREATE]");
    // The copies keep their flags.
    c.ok("STORE 4 +FLAGS (\\Flagged)");
    c.ok("COPY 4 Archive");
    let mut d = Imap::login(a);
    d.ok("EXAMINE Archive");
    let r = d.ok("FETCH 4 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(r.contains("\\Flagged") && r.contains("Subject: m4"), "{r}");

    // MOVE (RFC 6851): COPYUID in an untagged OK, then EXPUNGE.
    let r = c.ok("MOVE 1 Trash");
    assert!(r.contains("* OK [COPYUID "), "{r}");
    assert!(r.contains("* 1 EXPUNGE"), "{r}");
    // UID MOVE: now m2..m6 are 1..5 with UIDs 2..6.
    let r = c.ok("UID MOVE 3 Trash");
    assert!(r.contains("* 2 EXPUNGE"), "{r}");
    c.fails("MOVE 1 INBOX", "NO");
    let r = c.ok("UID SEARCH ALL");
    assert_eq!(found(&r), [2, 4, 5, 6], "{r}");

    // EXPUNGE removes only \Deleted messages.
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)");
    let r = c.ok("EXPUNGE");
    assert!(r.contains("* 1 EXPUNGE\r\n"), "{r}");
    assert_eq!(r.matches("EXPUNGE\r\n").count(), 1, "{r}");
    // UID EXPUNGE (RFC 4315): only the named UIDs, even if others are
    // \Deleted too.
    c.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)"); // UIDs 4, 5
    let r = c.ok("UID EXPUNGE 5");
    assert!(r.contains("* 2 EXPUNGE"), "{r}");
    assert_eq!(r.matches("EXPUNGE\r\n").count(), 1, "{r}");
    let r = c.ok("UID SEARCH DELETED");
    assert_eq!(found(&r), [4], "{r}");

    // UNSELECT leaves \Deleted messages alone; CLOSE expunges them
    // silently (RFC 9051 6.4.1, 6.4.2).
    let r = c.ok("UNSELECT");
    assert!(!r.contains("EXPUNGE"), "{r}");
    c.fails("FETCH 1 FLAGS", "BAD");
    c.ok("SELECT INBOX");
    let r = c.ok("UID SEARCH DELETED");
    assert_eq!(found(&r), [4], "{r}");
    let r = c.ok("CLOSE");
    assert!(!r.contains("EXPUNGE"), "{r}");
    c.fails("CLOSE", "BAD");
    let r = c.ok("STATUS INBOX (MESSAGES)");
    assert!(r.contains("(MESSAGES 1)"), "{r}");
    // CLOSE of an EXAMINEd folder expunges nothing.
    c.ok("SELECT Archive");
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)");
    c.ok("EXAMINE Archive");
    c.ok("CLOSE");
    let r = c.ok("STATUS Archive (MESSAGES DELETED)");
    assert!(r.contains("(MESSAGES 4 DELETED 1)"), "{r}");

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
    assert_eq!(subjects(&srv.mbox_path()), ["m6"]);
    assert_eq!(
        subjects(&srv.data_dir().join("folders/Trash")),
        ["m1", "m3"]
    );
    assert_eq!(
        subjects(&srv.data_dir().join("folders/Archive")),
        ["m1", "m2", "m3", "m4"]
    );

    // IDLE (RFC 2177): another session's APPEND, flag change and
    // expunge arrive while idling; DONE ends it with OK.
    c.ok("SELECT Archive");
    let tag = c.next_tag();
    c.send_raw(format!("{tag} IDLE\r\n").as_bytes());
    let l = c.response_line();
    assert!(l.starts_with("+ "), "{l}");
    let mut e = Imap::login(a);
    e.append("Archive", &simple("m7"));
    let l = c.response_line();
    assert_eq!(l, "* 5 EXISTS\r\n");
    e.ok("SELECT Archive");
    e.ok("STORE 2 +FLAGS (\\Seen)");
    let l = c.response_line();
    assert!(l.starts_with("* 2 FETCH (") && l.contains("\\Seen"), "{l}");
    e.ok("EXPUNGE"); // message 1 is \Deleted
    let l = c.response_line();
    assert_eq!(l, "* 1 EXPUNGE\r\n");
    c.send_raw(b"DONE\r\n");
    let r = c.until_tagged(&tag);
    assert!(r.starts_with(&format!("{tag} OK")), "{r}");
    let r = c.ok("NOOP");
    assert!(!r.contains("EXISTS"), "nothing twice: {r}");
    // The connection is fine after IDLE.
    let r = c.ok("FETCH 4 BODY.PEEK[HEADER.FIELDS (SUBJECT)]");
    assert!(r.contains("Subject: m7"), "{r}");
}

#[test]
fn malformed_commands_get_bad_with_a_reason_and_the_session_goes_on() {
    let srv = imap_server();
    deliver(&srv, &simple("one"));
    let mut c = Imap::login(srv.addr("imap"));
    c.ok("SELECT INBOX");
    for bad in [
        "FROBNICATE",
        "SELECT",
        "FETCH 1:x FLAGS",
        "FETCH 1 (FLAGS",
        "FETCH 0 FLAGS",
        "STORE 1 +FLAGS",
        "SEARCH (FROM x",
        "SEARCH UID",
        "UID FROBNICATE 1",
        "LIST \"\"",
        "STATUS INBOX (BOGUS)",
        "CREATE \"unterminated",
        "COPY 1",
        "LOGIN alice secret",
        "AUTHENTICATE PLAIN",
        "ENABLE",
        "IDLE now",
        "NOOP extra",
    ] {
        let tag = c.next_tag();
        let r = c.cmd(bad);
        let line = r.lines().last().unwrap_or("");
        assert!(line.starts_with(&format!("{tag} BAD ")), "{bad} -> {r}");
        // A reason, not just BAD.
        assert!(line.len() > format!("{tag} BAD ").len() + 3, "{bad} -> {r}");
        c.ok("NOOP");
    }
    // Lines without a usable tag get an untagged BAD.
    for raw in [&b"\r\n"[..], b"+x NOOP\r\n", b"a\0b NOOP\r\n", b"   \r\n"] {
        c.send_raw(raw);
        let l = c.response_line();
        assert!(l.starts_with("* BAD ") && l.len() > 9, "{raw:?} -> {l}");
    }
    // 8-bit octets and NUL inside a command.
    let tag = c.next_tag();
    c.send_raw(format!("{tag} SELECT \u{e9}t\u{e9}\0\r\n").as_bytes());
    let r = c.until_tagged(&tag);
    assert!(
        r.contains(&format!("{tag} BAD ")) || r.contains(&format!("{tag} NO ")),
        "{r}"
    );
    // Still working.
    let r = c.ok("FETCH 1 (UID)");
    assert!(r.contains("UID 1"), "{r}");
}

#[test]
fn too_many_bad_commands_in_a_row_get_bye() {
    let srv = Server::with(Options {
        listen_imap: true,
        limits: "max_errors = 3\n".into(),
        ..Options::default()
    });
    let mut c = Imap::login(srv.addr("imap"));
    // Three in a row are tolerated, and a good command starts over.
    for _ in 0..3 {
        c.fails("BOGUS", "BAD");
    }
    c.ok("NOOP");
    for _ in 0..3 {
        c.fails("BOGUS", "BAD");
    }
    // The fourth in a row: BAD, BYE, and the connection ends.
    let tag = c.next_tag();
    let r = c.cmd("BOGUS");
    assert!(
        r.contains(&format!("{tag} BAD")) || r.contains("* BYE"),
        "{r}"
    );
    let rest = r + &c.rest();
    assert!(rest.contains("* BYE"), "{rest}");
    // Before login too (a client guessing commands).
    let mut c = Imap::connect(srv.addr("imap"));
    let mut all = String::new();
    for _ in 0..4 {
        all += &c.cmd("x");
    }
    all += &c.rest();
    assert!(all.contains("* BYE"), "{all}");
    // Three failed logins in one session: BYE (docs/imap.md "Limits").
    let mut c = Imap::connect(srv.addr("imap"));
    let mut all = String::new();
    for _ in 0..3 {
        all += &c.cmd("LOGIN alice wrong");
    }
    all += &c.rest();
    assert_eq!(all.matches("NO [AUTHENTICATIONFAILED]").count(), 3, "{all}");
    assert!(all.contains("* BYE"), "{all}");
}

#[test]
fn oversized_literals_are_refused_before_they_are_read() {
    let srv = Server::with(Options {
        listen_imap: true,
        limits: "max_message_size = \"1K\"\n".into(),
        ..Options::default()
    });
    let a = srv.addr("imap");
    let mut c = Imap::login(a);
    // A synchronizing APPEND over max_message_size: NO [TOOBIG] at once,
    // no `+`, so the client never sends the octets (RFC 7888 4).
    let tag = c.next_tag();
    let r = c.cmd("APPEND INBOX {5000}");
    assert!(r.starts_with(&format!("{tag} NO [TOOBIG]")), "{r}");
    // Within the limit: fine.
    let r = c.append("INBOX", &simple("small"));
    assert!(r.contains("OK [APPENDUID"), "{r}");
    // A synchronizing literal in another command over 64 KiB: BAD
    // [TOOBIG] before any octet, the session goes on.
    let tag = c.next_tag();
    let r = c.cmd("SEARCH SUBJECT {70000}");
    assert!(r.starts_with(&format!("{tag} BAD [TOOBIG]")), "{r}");
    c.ok("NOOP");
    // A 60 KiB literal is within the limit.
    c.ok("SELECT INBOX");
    let big = "y".repeat(60 * 1024);
    let tag = c.next_tag();
    c.send_raw(format!("{tag} SEARCH SUBJECT {{{}+}}\r\n{big}\r\n", big.len()).as_bytes());
    let r = c.until_tagged(&tag);
    assert!(
        r.contains("* SEARCH") && r.contains(&format!("{tag} OK")),
        "{r}"
    );

    // A non-synchronizing APPEND literal over the limit: BAD and the
    // connection is closed, without reading the octets (RFC 7888 4).
    let mut c = Imap::login(a);
    let tag = c.next_tag();
    c.send_raw(format!("{tag} APPEND INBOX {{5000000+}}\r\n").as_bytes());
    let r = c.rest();
    assert!(r.contains(&format!("{tag} BAD [TOOBIG]")), "{r}");
    assert!(r.contains("* BYE"), "{r}");
    // Same for another command's literal over 64 KiB.
    let mut c = Imap::login(a);
    let tag = c.next_tag();
    c.send_raw(format!("{tag} SEARCH SUBJECT {{70000+}}\r\n").as_bytes());
    let r = c.rest();
    assert!(r.contains(&format!("{tag} BAD")), "{r}");
    assert!(r.contains("* BYE"), "{r}");
    // Nothing big was stored.
    assert_eq!(python_mbox_messages(&srv.mbox_path()).len(), 1);
}

/// The server's resident memory in KiB (Linux /proc).
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn garbage_forever_is_cut_off_and_memory_stays_flat() {
    if skip_under_emulator() {
        return;
    }
    let srv = Server::with(Options {
        listen_imap: true,
        limits: "max_errors = 5\n".into(),
        ..Options::default()
    });
    let a = srv.addr("imap");
    // Warm up (first connection, login) before measuring.
    let mut c = Imap::login(a);
    c.ok("SELECT INBOX");
    c.ok("LOGOUT");
    let before = rss_kib(srv.pid());
    assert!(before > 0, "no VmRSS for {}", srv.pid());
    let chunk = vec![b'x'; 64 * 1024];

    // Four clients at once, each sending octets without a line end for
    // as long as the server reads them (at most 64 MiB each).
    let cut: Vec<_> = (0..4)
        .map(|_| {
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                let mut c = Imap::connect(a);
                c.send_raw(b"t1 LOGIN ");
                use std::io::Write;
                let mut sent = 0usize;
                for _ in 0..1024 {
                    if c.stream.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                (sent, c.rest())
            })
        })
        .collect();
    // And one sending endless short garbage lines.
    let lines = std::thread::spawn(move || {
        let mut c = Imap::connect(a);
        use std::io::Write;
        let mut n = 0;
        for _ in 0..100_000 {
            if c.stream.write_all(b"garbage garbage garbage\r\n").is_err() {
                break;
            }
            n += 1;
        }
        (n, c.rest())
    });
    for t in cut {
        let (sent, text) = t.join().unwrap();
        assert!(
            sent < 64 * 1024 * 1024,
            "the server read {sent} octets of one line"
        );
        assert!(text.contains("t1 BAD"), "{text}");
        assert!(text.contains("* BYE"), "{text}");
    }
    let (n, text) = lines.join().unwrap();
    assert!(n < 100_000, "never cut off");
    assert!(text.contains("* BYE"), "{text}");
    assert_eq!(text.matches(" BAD ").count(), 6, "{text}");

    let after = rss_kib(srv.pid());
    // Flat: a few MiB of slack for buffers and the allocator, far less
    // than the 256 MiB the clients tried to send.
    assert!(after < before + 8 * 1024, "RSS {before} KiB -> {after} KiB");
    // And the server still serves.
    let mut c = Imap::login(a);
    c.ok("NOOP");
}
