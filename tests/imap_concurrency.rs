//! IMAP, POP3 and SMTP at once on one INBOX (SPEC "POP3 and IMAP
//! together", issue 16 "Concurrency"): two IMAP sessions (one in IDLE), a
//! POP3 session that deletes at QUIT, and an SMTP flood. Each sees a
//! consistent mailbox, IDLE hears of SMTP mail, POP3's deletions reach
//! IMAP as EXPUNGE, and afterwards every view agrees.

mod common;
use common::imap::Imap;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INITIAL: usize = 10;
const THREADS: usize = 4;
const PER_THREAD: usize = 75;
const POP3_DELETES: usize = 5;

fn msg(subject: &str) -> Vec<u8> {
    // Long enough to span several writes, so a torn message would show.
    let body: String = (0..40)
        .map(|i| format!("line {i} of {subject} ........................................\r\n"))
        .collect();
    format!(
        "From: Bob <bob@example.com>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.com>\r\n\r\n{body}end of {subject}\r\n"
    )
    .into_bytes()
}

/// A session's view from the untagged responses it got: the message count
/// after each `* N EXISTS` / `* N EXPUNGE`, and the expunges seen.
#[derive(Default, Debug)]
struct View {
    exists: usize,
    expunges: usize,
    max_exists: usize,
}

impl View {
    fn apply(&mut self, text: &str) {
        for l in text.lines() {
            let mut w = l.split(' ');
            if w.next() != Some("*") {
                continue;
            }
            let (Some(n), Some(what)) = (w.next(), w.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<usize>() else { continue };
            match what {
                "EXISTS" => {
                    self.exists = n;
                    self.max_exists = self.max_exists.max(n);
                }
                "EXPUNGE" => {
                    assert!(n >= 1 && n <= self.exists, "EXPUNGE {n} of {}", self.exists);
                    self.exists -= 1;
                    self.expunges += 1;
                }
                _ => {}
            }
        }
    }
}

fn uids(c: &mut Imap) -> Vec<u32> {
    let r = c.ok("UID SEARCH ALL");
    let l = r.lines().find(|l| l.starts_with("* SEARCH")).unwrap();
    l["* SEARCH".len()..]
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect()
}

#[test]
fn two_imap_sessions_pop3_and_an_smtp_flood_agree() {
    let srv = Server::with(Options {
        listen_imap: true,
        listen_pop3: true,
        ..Options::default()
    });
    for i in 0..INITIAL {
        srv.deliver(&smtp_stuff(&msg(&format!("init-{i}"))));
    }
    let imap = srv.addr("imap");
    let total = INITIAL + THREADS * PER_THREAD;

    // Session A: selected, in IDLE for the whole test.
    let mut a = Imap::login(imap);
    let r = a.ok("SELECT INBOX");
    let mut view_a = View::default();
    view_a.apply(&r);
    assert_eq!(view_a.exists, INITIAL);
    let tag = a.next_tag();
    a.send_raw(format!("{tag} IDLE\r\n").as_bytes());
    let l = a.response_line();
    assert!(l.starts_with("+ "), "{l}");
    let mut a_out = a.stream.try_clone().unwrap();
    let heard = Arc::new(std::sync::Mutex::new(String::new()));
    let idler = {
        let heard = heard.clone();
        let tag = tag.clone();
        std::thread::spawn(move || {
            // Reads until the tagged end of IDLE (after DONE); bounded by
            // the read timeout and a count.
            for _ in 0..100_000 {
                let l = a.response_line();
                if l.is_empty() {
                    break;
                }
                heard.lock().unwrap().push_str(&l);
                if l.starts_with(&format!("{tag} ")) {
                    break;
                }
            }
            a
        })
    };

    // Session B: busy with FETCH, STORE, NOOP and SEARCH while it runs.
    // It selects before POP3 starts, so that it has POP3's deletions to
    // hear of.
    let stop = Arc::new(AtomicBool::new(false));
    let mut b = Imap::login(imap);
    let mut view = View::default();
    view.apply(&b.ok("SELECT INBOX"));
    assert_eq!(view.exists, INITIAL);
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = b.ok("UID FETCH 1:* (UID FLAGS RFC822.SIZE)");
                view.apply(&r);
                if view.exists > 0 {
                    view.apply(&b.ok(&format!("STORE {} +FLAGS (\\Flagged)", view.exists)));
                }
                view.apply(&b.ok("NOOP"));
                view.apply(&b.ok("UID SEARCH UNFLAGGED"));
                rounds += 1;
            }
            (b, view, rounds)
        })
    };

    // The SMTP flood, THREADS connections at once.
    let smtp = srv.smtp;
    let flood: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(smtp);
                c.hello();
                for i in 0..PER_THREAD {
                    let data = smtp_stuff(&msg(&format!("flood-{t}-{i}")));
                    let (code, text) =
                        c.send_message("bob@example.com", &["alice@example.org"], &data);
                    assert_eq!(code, 250, "{text}");
                }
                c.expect("QUIT", 221);
            })
        })
        .collect();

    // POP3 in the middle of it: holds the maildrop, deletes the first
    // POP3_DELETES messages (the initial ones), QUIT commits.
    let mut p = Pop3::login(srv.addr("pop3"));
    let stat = p.ok("STAT");
    let n: usize = stat.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(n >= INITIAL, "{stat}");
    for i in 1..=POP3_DELETES {
        let r = p.ok(&format!("RETR {i}"));
        assert!(r.starts_with("+OK"));
        let body = p.multi_raw();
        assert!(
            String::from_utf8_lossy(&body).contains(&format!("end of init-{}", i - 1)),
            "POP3 message {i}"
        );
        p.ok(&format!("DELE {i}"));
    }
    p.ok("QUIT");

    for f in flood {
        f.join().expect("an SMTP thread failed");
    }
    let expected = total - POP3_DELETES;

    // IDLE hears of the mail (EXISTS) and of POP3's deletions (EXPUNGE)
    // without a command: wait (bounded) until its view is complete, then
    // DONE.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut v = View {
            exists: INITIAL,
            ..View::default()
        };
        v.apply(&heard.lock().unwrap());
        if (v.exists == expected && v.expunges == POP3_DELETES) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    use std::io::Write;
    a_out.write_all(b"DONE\r\n").unwrap();
    let mut a = idler.join().unwrap();
    let text = heard.lock().unwrap().clone();
    view_a.apply(&text);
    assert!(text.contains(&format!("{tag} OK")), "IDLE ended: {text}");
    assert!(
        text.lines()
            .any(|l| l.ends_with(" EXISTS") && l != format!("* {INITIAL} EXISTS")),
        "IDLE got no EXISTS for SMTP mail: {text}"
    );
    // Anything IDLE had not reported yet comes at the next commands.
    for _ in 0..50 {
        view_a.apply(&a.ok("NOOP"));
        if view_a.exists == expected && view_a.expunges == POP3_DELETES {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        text.contains(" EXPUNGE\r\n"),
        "POP3's deletions reached the idling session as EXPUNGE: {text}"
    );
    assert_eq!(view_a.expunges, POP3_DELETES, "{view_a:?}");
    assert_eq!(view_a.exists, expected, "{view_a:?}");

    stop.store(true, Ordering::Relaxed);
    let (mut b, mut view_b, rounds) = busy.join().expect("session B failed");
    for _ in 0..50 {
        view_b.apply(&b.ok("NOOP"));
        if view_b.exists == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rounds > 0);
    assert_eq!(view_b.exists, expected, "{view_b:?}");
    assert_eq!(view_b.expunges, POP3_DELETES, "{view_b:?}");

    // Both sessions list the same UIDs, each unique.
    let ua = uids(&mut a);
    let ub = uids(&mut b);
    assert_eq!(ua.len(), expected);
    assert_eq!(ua, ub);
    let mut sorted = ua.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), ua.len(), "duplicate UIDs");
    // UIDs never reused: the deleted ones (1..5) are gone for good.
    assert!(ua.iter().all(|&u| u > POP3_DELETES as u32), "{ua:?}");
    let r = a.ok("STATUS INBOX (MESSAGES UIDNEXT)");
    assert!(r.contains(&format!("MESSAGES {expected}")), "{r}");

    // POP3 agrees, and so does Python's mailbox: every message whole.
    let mut p = Pop3::login(srv.addr("pop3"));
    let stat = p.ok("STAT");
    assert_eq!(
        stat.split(' ').nth(1),
        Some(expected.to_string().as_str()),
        "{stat}"
    );
    p.ok("QUIT");
    let msgs = python_mbox_messages(&srv.mbox_path());
    assert_eq!(msgs.len(), expected);
    let mut subjects: Vec<String> = Vec::new();
    for m in &msgs {
        let t = String::from_utf8_lossy(m);
        let s = t
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("no subject: {t}"))
            .trim()
            .to_string();
        assert!(t.contains(&format!("end of {s}")), "torn message {s}: {t}");
        assert_eq!(
            t.matches("Subject: ").count(),
            1,
            "two messages in one: {t}"
        );
        subjects.push(s);
    }
    let mut want: Vec<String> = (POP3_DELETES..INITIAL)
        .map(|i| format!("init-{i}"))
        .chain((0..THREADS).flat_map(|t| (0..PER_THREAD).map(move |i| format!("flood-{t}-{i}"))))
        .collect();
    want.sort();
    subjects.sort();
    assert_eq!(subjects, want);
}
