//! The whole IMAP session (`read::imap::session`) over the in-memory
//! account, driven as the async driver drives it: any bytes, in any
//! pieces, give responses and actions, never a panic, and the output of
//! one step stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::read::imap::memory::MemAccount;
use pimail::read::imap::session::{Action, LoginResult, Session, Settings};
use std::rc::Rc;

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 128) + 1;
    let settings = Rc::new(Settings {
        hostname: "fuzz".into(),
        user: "alice".into(),
        domains: vec![],
        tls_available: true,
        max_errors: 1000,
        max_message_size: 4096,
    });
    let mut acct = MemAccount::new();
    acct.deliver("INBOX", b"Subject: a\r\n\r\nbody\r\n");
    acct.deliver("INBOX", b"Subject: b\r\nFrom: x@y\r\n\r\nmore\r\n");
    let mut s: Session<MemAccount> = Session::new(settings, true, false);
    let mut out = Vec::new();
    let mut spool = Vec::new();
    let mut i = 0;
    let feed = |s: &mut Session<MemAccount>, i: &mut usize| {
        let spare = s.reader().spare();
        let n = step.min(spare.len()).min(data.len() - *i);
        spare[..n].copy_from_slice(&data[*i..*i + n]);
        s.reader().filled(n);
        *i += n;
    };
    for round in 0..data.len() * 4 + 16 {
        match s.step(&mut acct, &mut out) {
            Action::NeedInput | Action::Idle => {
                if i >= data.len() {
                    break;
                }
                if round % 7 == 0 {
                    acct.deliver("INBOX", b"Subject: pushed\r\n\r\nx\r\n");
                    s.idle_changes(&mut out);
                }
                feed(&mut s, &mut i);
            }
            Action::Flush => {}
            Action::Close => break,
            Action::StartTls => s.tls_started(),
            Action::Login { password, .. } => {
                let r = if password.first() == Some(&b'x') {
                    LoginResult::BadCredentials
                } else {
                    LoginResult::Ok
                };
                if s.login_done(r, &mut out).is_some() {
                    break;
                }
            }
            Action::AppendData { .. } => {
                let d = s.reader().append_data().to_vec();
                spool.extend_from_slice(&d);
                s.reader().append_taken(d.len());
                if s.reader().append_left() > 0 {
                    if i >= data.len() {
                        break;
                    }
                    feed(&mut s, &mut i);
                }
            }
            Action::AppendAbort => spool.clear(),
            Action::Write(w) => {
                let done = acct.perform(&w, &spool);
                spool.clear();
                s.write_done(done, &mut out);
            }
            Action::Body(b) => assert!(b.len() <= 1 << 20),
        }
        // The driver writes the output after every step.
        assert!(out.len() < 4 << 20);
        out.clear();
    }
});
