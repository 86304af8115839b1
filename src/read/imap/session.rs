//! The IMAP session state machine (RFC 9051 section 3 and 6), sans I/O:
//! bytes in through its [`Reader`], responses out into a buffer, and
//! [`Action`]s for what only the driver can do (check a password, start
//! TLS, stream a spool or a body, carry out a durable [`Write`]).
//!
//! States: not authenticated, authenticated, selected, logout (RFC 9051
//! 3). Capabilities before and after login are as SPEC says; LOGIN and
//! AUTHENTICATE answer `OK [CAPABILITY ...]` with the full list because
//! some clients never ask again. Plaintext logins only over TLS or on
//! loopback (`LOGINDISABLED` otherwise, RFC 9051 6.2.3).
//!
//! Other sessions' changes reach this one through [`Folder::poll`] at the
//! end of every command and during IDLE (RFC 2177). Expunges are announced
//! only when RFC 9051 7.5.1 allows it: not during FETCH, STORE or SEARCH
//! (RFC 2180 4.1); until then the messages keep their numbers and a FETCH
//! of them answers `NO [EXPUNGEISSUED]` (RFC 2180 4.1.2, RFC 5530).
//!
//! The one place that counts bad commands is [`Session::step`]: more than
//! `max_errors` in a row and the client gets `BYE`.

use super::command::{
    self, Command, FetchAtt, ListReturn, ListSelect, SearchKey, SearchReturn, Section, SectionText,
    SeqSet, StatusItem, StoreMode,
};
use super::folder::{Account, Change, Folder, Meta, StoreError, Stored, Uid, Write, WriteDone};
use super::input::{Event, Reader};
use super::mutf7;
use super::response::{self as r, Code, Status};
use std::rc::Rc;

/// Output beyond this is handed to the driver before more is produced
/// (a FETCH of 20,000 messages is written in pieces).
pub const FLUSH_AT: usize = 64 * 1024;
/// The read buffer of the command reader.
const READ_BUFFER: usize = 8 * 1024;
/// Failed logins in one session before it is closed.
const MAX_AUTH_FAILURES: u32 = 3;

/// System flags and the keywords that SPEC names, for FLAGS and
/// PERMANENTFLAGS (`\*`: clients may make new keywords).
const FLAGS: [&str; 8] = [
    "\\Answered",
    "\\Flagged",
    "\\Deleted",
    "\\Seen",
    "\\Draft",
    "$Forwarded",
    "$Junk",
    "$NotJunk",
];

/// What a session needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    /// The one user's login name (also accepted as `name@domain`).
    pub user: String,
    pub domains: Vec<String>,
    /// A certificate is configured: STARTTLS can be offered.
    pub tls_available: bool,
    /// Bad commands in a row tolerated before `BYE`.
    pub max_errors: u32,
    /// APPEND literals above this get `NO [TOOBIG]` before they are read.
    pub max_message_size: u64,
}

/// How the driver's password check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginResult {
    Ok,
    BadCredentials,
    /// Too many failures from the client's address: refused unchecked.
    Blocked,
}

/// What the driver does after [`Session::step`] (its output buffer is
/// written first in every case).
#[derive(Debug, PartialEq, Eq)]
pub enum Action<B> {
    /// Read more input into [`Session::reader`], then step again.
    NeedInput,
    /// The output is large: write it, then step again.
    Flush,
    /// Close the connection.
    Close,
    /// Run the TLS handshake (buffered input has been dropped), then call
    /// [`Session::tls_started`] and step again.
    StartTls,
    /// Check the password (slow), then [`Session::login_done`].
    Login { login: String, password: Vec<u8> },
    /// Move the APPEND octets from [`Reader::append_data`] to a spool file
    /// until [`Reader::append_left`] is 0 (reading more as needed), then
    /// step again. `size` octets in all.
    AppendData { size: u64 },
    /// The APPEND was refused after its octets: drop the spool.
    AppendAbort,
    /// Carry out the write durably, then [`Session::write_done`].
    Write(Write),
    /// Stream this body's octets (its literal header is in the output),
    /// then step again.
    Body(B),
    /// In IDLE: wait for input (then step) or for a change in the folder
    /// (then [`Session::idle_changes`]).
    Idle,
}

/// A command waiting for the driver.
#[derive(Debug)]
enum Pending {
    Login { tag: String },
    Write { tag: String, what: WriteKind },
}

#[derive(Debug, Clone, Copy)]
enum WriteKind {
    Plain,
    Copy,
    Move,
    Expunge,
    Close,
}

struct Selected<F> {
    name: String,
    folder: F,
    read_only: bool,
    /// The session's view: sequence number n is `uids[n - 1]`.
    uids: Vec<Uid>,
    /// Expunged by others, not yet announced; ascending (looked up for
    /// every message of a FETCH).
    gone: Vec<Uid>,
}

impl<F: Folder> Selected<F> {
    fn is_gone(&self, uid: Uid) -> bool {
        !self.gone.is_empty() && self.gone.binary_search(&uid).is_ok()
    }

    fn seq_of(&self, uid: Uid) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }

    /// `(seq, uid)` of the messages a set names; UIDs not in the folder
    /// are skipped (RFC 9051 6.4.8), a sequence number past the end is an
    /// error (RFC 9051 9 "seq-number").
    fn resolve(&self, set: &SeqSet, uid: bool) -> Result<Vec<(u32, Uid)>, &'static str> {
        let n = self.uids.len() as u32;
        let largest = if uid {
            self.uids.last().copied().unwrap_or(0)
        } else {
            if n == 0 {
                return Err("no messages in the folder");
            }
            n
        };
        // Merge the ranges first, so that `1:*,1:*,...` costs no more
        // than `1:*` (memory stays one entry per message).
        let mut ranges: Vec<(u32, u32)> = set.ranges(largest).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let mut out = Vec::new();
        for (lo, hi) in merged {
            if uid {
                // Walk the view, not the range: `1:4294967295` is cheap.
                let start = self.uids.partition_point(|&u| u < lo);
                for (i, &u) in self.uids[start..].iter().enumerate() {
                    if u > hi {
                        break;
                    }
                    out.push((start as u32 + i as u32 + 1, u));
                }
            } else {
                if hi > n {
                    return Err("message sequence number out of range");
                }
                for s in lo..=hi {
                    out.push((s, self.uids[s as usize - 1]));
                }
            }
        }
        Ok(out)
    }
}

enum State<F> {
    NotAuthenticated,
    Authenticated,
    Selected(Selected<F>),
    Logout,
}

/// A FETCH being written out (it may pause for a body or a flush).
struct FetchJob {
    tag: String,
    uid: bool,
    items: Vec<FetchAtt>,
    targets: Vec<(u32, Uid)>,
    changed_since: Option<u64>,
    /// Next message in `targets`, next item in `items` (0: not begun).
    pos: usize,
    item: usize,
    expunge_issued: bool,
    /// The current message's metadata (`have_meta`), refilled in place
    /// for each message: no allocation per message.
    meta: Meta,
    have_meta: bool,
    /// Flags changed by an implicit \Seen: include FLAGS if not asked.
    flags_changed: bool,
    /// RFC 9051 6.4.5: BODY[] (not PEEK), RFC822 and RFC822.TEXT set
    /// \Seen (known from the items, so found once per FETCH).
    sets_seen: bool,
}

pub struct Session<A: Account> {
    settings: Rc<Settings>,
    loopback: bool,
    secure: bool,
    reader: Reader,
    state: State<A::Folder>,
    errors: u32,
    auth_failures: u32,
    pending: Option<Pending>,
    /// The APPEND whose octets are streaming (the reader keeps running).
    appending: Option<(String, Write)>,
    fetch: Option<FetchJob>,
    /// In IDLE, with its tag.
    idle: Option<String>,
    /// AUTHENTICATE PLAIN is waiting for the client's response line.
    sasl: Option<String>,
    /// RFC 7162 3.1: MODSEQ in FETCH responses once CONDSTORE is in use.
    condstore: bool,
    /// `ENABLE IMAP4rev2` (RFC 9051): no RECENT responses.
    rev2: bool,
    /// The login name (for logs).
    login: Option<String>,
}

fn map_err(e: &StoreError) -> (Status, Option<Code>, String) {
    match e {
        StoreError::NonExistent => (Status::No, Some(Code::NonExistent), "no such folder".into()),
        StoreError::AlreadyExists => (
            Status::No,
            Some(Code::AlreadyExists),
            "folder already exists".into(),
        ),
        StoreError::Cannot(why) => (Status::No, Some(Code::Cannot), why.clone()),
        StoreError::NoSelect => (
            Status::No,
            Some(Code::Cannot),
            "this folder holds only folders".into(),
        ),
        StoreError::Unavailable(why) => (Status::No, Some(Code::Unavailable), why.clone()),
    }
}

/// A name below INBOX (`INBOX/x`, any case): INBOX is the user's mbox, a
/// file, so it has no children (SPEC "Folders", `\NoInferiors`).
fn below_inbox(name: &str) -> bool {
    name.split('/')
        .next()
        .is_some_and(|first| first.eq_ignore_ascii_case("INBOX"))
        && name.contains('/')
}

/// CREATE's and RENAME's refusals of a new folder name: INBOX (`is_inbox`,
/// as the caller compares it) always exists, and nothing lives below it.
/// Writes the tagged NO and returns true when the name is refused.
fn refuse_new_name(out: &mut Vec<u8>, tag: &str, is_inbox: bool, name: &str) -> bool {
    let (code, text) = if is_inbox {
        (Code::AlreadyExists, "INBOX always exists")
    } else if below_inbox(name) {
        (
            Code::Cannot,
            "INBOX holds mail, not folders (\\NoInferiors)",
        )
    } else {
        return false;
    };
    r::tagged(out, tag, Status::No, Some(&code), text);
    true
}

/// A mailbox name from the wire (modified UTF-7) to the store's UTF-8.
fn folder_name(wire: &[u8]) -> Result<String, &'static str> {
    if wire.eq_ignore_ascii_case(b"INBOX") {
        return Ok("INBOX".into());
    }
    let name = mutf7::decode(wire).ok_or("invalid mailbox name (modified UTF-7 expected)")?;
    // INBOX/... keeps INBOX's case; other names are case-sensitive.
    Ok(name)
}

/// RFC 9051 6.3.9: `*` matches anything, `%` anything but the separator.
/// Iterative, O(len(name) x len(pattern)).
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    let mut cur = vec![false; name.len() + 1];
    cur[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        match p {
            b'*' | b'%' => {
                // next[j]: some cur[k], k <= j, with no separator in
                // name[k..j] for `%`.
                let mut reach = false;
                for j in 0..=name.len() {
                    reach |= cur[j];
                    next[j] = reach;
                    if p == b'%' && j < name.len() && name[j] == b'/' {
                        reach = false;
                    }
                }
            }
            _ => {
                for j in 0..name.len() {
                    if cur[j] && name[j] == p {
                        next[j + 1] = true;
                    }
                }
            }
        }
        cur = next;
        if !cur.iter().any(|&b| b) {
            return false;
        }
    }
    cur[name.len()]
}

impl<A: Account> Session<A> {
    pub fn new(settings: Rc<Settings>, loopback: bool, secure: bool) -> Self {
        Session {
            settings,
            loopback,
            secure,
            reader: Reader::new(READ_BUFFER),
            state: State::NotAuthenticated,
            errors: 0,
            auth_failures: 0,
            pending: None,
            appending: None,
            fetch: None,
            idle: None,
            sasl: None,
            condstore: false,
            rev2: false,
            login: None,
        }
    }

    pub fn reader(&mut self) -> &mut Reader {
        &mut self.reader
    }

    pub fn login(&self) -> Option<&str> {
        self.login.as_deref()
    }

    /// The selected folder's name, if any.
    pub fn selected_folder(&self) -> Option<&str> {
        match &self.state {
            State::Selected(s) => Some(s.name.as_str()),
            _ => None,
        }
    }

    fn plaintext_ok(&self) -> bool {
        self.secure || self.loopback
    }

    /// The capability list for the current state (SPEC "Capabilities").
    pub fn capabilities(&self) -> String {
        let mut c = String::from("IMAP4rev1 IMAP4rev2");
        if matches!(self.state, State::NotAuthenticated) {
            if self.settings.tls_available && !self.secure {
                c += " STARTTLS";
            }
            if self.plaintext_ok() {
                c += " AUTH=PLAIN";
            } else {
                c += " LOGINDISABLED";
            }
            c += " SASL-IR LITERAL+ LITERAL- ID ENABLE IDLE";
        } else {
            // LITERAL- by name too: IMAP4rev2 requires it (RFC 9051
            // appendix E) and SPEC lists it; LITERAL+ is its superset
            // (RFC 7888 5), so a client that knows both uses LITERAL+.
            c += " LITERAL+ LITERAL- ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE SPECIAL-USE \
                  CHILDREN CONDSTORE ESEARCH LIST-EXTENDED LIST-STATUS STATUS=SIZE BINARY";
        }
        c
    }

    pub fn greeting(&self, out: &mut Vec<u8>) {
        let caps = Code::Capability(self.capabilities());
        let text = format!("{} IMAP pimail ready", self.settings.hostname);
        r::untagged(out, Status::Ok, Some(&caps), &text);
    }

    /// RFC 9051 5.4: the autologout timer (at least 30 minutes) expired.
    pub fn timeout(&self, out: &mut Vec<u8>) {
        r::untagged(
            out,
            Status::Bye,
            None,
            "autologout timer expired, closing connection",
        );
    }

    pub fn shutting_down(&self, out: &mut Vec<u8>) {
        r::untagged(
            out,
            Status::Bye,
            Some(&Code::Unavailable),
            "server shutting down",
        );
    }

    /// After the STARTTLS handshake, or at once on port 993: nothing of
    /// before is kept (RFC 9051 6.2.1).
    pub fn tls_started(&mut self) {
        self.secure = true;
        self.reader.clear();
        self.state = State::NotAuthenticated;
    }

    /// Is `login` our user? For the driver, before it checks the password.
    pub fn is_user(&self, login: &str) -> bool {
        crate::user::auth::is_user(login, &self.settings.user, &self.settings.domains)
    }

    /// Processes input until the driver must act.
    pub fn step(&mut self, acct: &mut A, out: &mut Vec<u8>) -> Action<<A::Folder as Folder>::Body> {
        loop {
            if self.pending.is_some() {
                // The driver owes us a result; nothing else is read.
                return Action::NeedInput;
            }
            if self.fetch.is_some() {
                if let Some(a) = self.fetch_continue(out) {
                    return a;
                }
                continue;
            }
            if out.len() >= FLUSH_AT {
                return Action::Flush;
            }
            if matches!(self.state, State::Logout) {
                return Action::Close;
            }
            let Some(event) = self.reader.next_event() else {
                if self.reader.append_left() > 0 {
                    return Action::AppendData {
                        size: self.reader.append_left(),
                    };
                }
                return if self.idle.is_some() {
                    Action::Idle
                } else {
                    Action::NeedInput
                };
            };
            let before = out.len();
            let action = self.event(acct, event, out);
            // Count BAD responses in a row; anything else resets.
            let bad = is_bad(&out[before..]);
            if bad {
                self.errors += 1;
                if self.errors > self.settings.max_errors {
                    r::untagged(
                        out,
                        Status::Bye,
                        None,
                        "too many bad commands, closing connection",
                    );
                    self.state = State::Logout;
                    return Action::Close;
                }
            } else if out.len() > before {
                self.errors = 0;
            }
            if let Some(a) = action {
                return a;
            }
        }
    }

    fn event(
        &mut self,
        acct: &mut A,
        event: Event,
        out: &mut Vec<u8>,
    ) -> Option<Action<<A::Folder as Folder>::Body>> {
        match event {
            Event::Continue => {
                r::continuation(out, "ready for literal");
                None
            }
            Event::Bad { tag, why, too_big } => {
                let code = too_big.then_some(Code::TooBig);
                bad(out, tag.as_deref(), code.as_ref(), why);
                None
            }
            Event::Fatal { tag, why } => {
                bad(out, tag.as_deref(), Some(&Code::TooBig), why);
                r::untagged(out, Status::Bye, None, "closing connection");
                self.state = State::Logout;
                Some(Action::Close)
            }
            Event::Append {
                tag,
                header,
                size,
                sync,
                binary: _,
            } => {
                if self.idle.is_some() || self.sasl.is_some() {
                    // Only DONE or a SASL response may come now.
                    let t = self.idle.take().or(self.sasl.take());
                    bad(out, t.as_deref(), None, "unexpected command");
                    self.reader.skip_append();
                    return None;
                }
                self.append(acct, tag, header, size, sync, out)
            }
            Event::AppendEnd(result) => {
                let (tag, write) = self.appending.take()?;
                match result {
                    Ok(()) => {
                        self.pending = Some(Pending::Write {
                            tag,
                            what: WriteKind::Plain,
                        });
                        Some(Action::Write(write))
                    }
                    Err(why) => {
                        bad(out, Some(&tag), None, why);
                        Some(Action::AppendAbort)
                    }
                }
            }
            Event::Command(line) => self.line(acct, &line, out),
        }
    }

    fn line(
        &mut self,
        acct: &mut A,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Action<<A::Folder as Folder>::Body>> {
        if let Some(tag) = self.idle.take() {
            // RFC 2177 3: only DONE ends IDLE.
            if line.eq_ignore_ascii_case(b"DONE") {
                self.sync(out, true);
                r::tagged(out, &tag, Status::Ok, None, "IDLE terminated");
            } else {
                bad(out, Some(&tag), None, "expected DONE to end IDLE");
            }
            return None;
        }
        if let Some(tag) = self.sasl.take() {
            return self.sasl_response(&tag, line, out);
        }
        let req = match command::parse(line) {
            Ok(r) => r,
            Err(e) => {
                bad(out, e.tag.as_deref(), None, e.reason());
                return None;
            }
        };
        self.command(acct, req.tag, req.command, out)
    }

    fn command(
        &mut self,
        acct: &mut A,
        tag: String,
        cmd: Command,
        out: &mut Vec<u8>,
    ) -> Option<Action<<A::Folder as Folder>::Body>> {
        // Any state (RFC 9051 6.1).
        match cmd {
            Command::Capability => {
                r::capability(out, &self.capabilities());
                ok(out, &tag, "CAPABILITY completed");
                return None;
            }
            Command::Noop => {
                self.sync(out, true);
                ok(out, &tag, "NOOP completed");
                return None;
            }
            Command::Logout => {
                r::untagged(out, Status::Bye, None, "pimail signing off");
                ok(out, &tag, "LOGOUT completed");
                self.state = State::Logout;
                return Some(Action::Close);
            }
            Command::Id(_) => {
                r::id(
                    out,
                    &[("name", "pimail"), ("version", env!("CARGO_PKG_VERSION"))],
                );
                ok(out, &tag, "ID completed");
                return None;
            }
            _ => {}
        }
        if let State::NotAuthenticated = self.state {
            return match cmd {
                Command::StartTls => {
                    if self.secure {
                        bad(out, Some(&tag), None, "TLS is already active");
                        None
                    } else if !self.settings.tls_available {
                        r::tagged(
                            out,
                            &tag,
                            Status::No,
                            None,
                            "STARTTLS not available: no certificate configured",
                        );
                        None
                    } else {
                        ok(out, &tag, "begin TLS negotiation now");
                        self.reader.clear();
                        Some(Action::StartTls)
                    }
                }
                Command::Login { user, password } => {
                    if !self.plaintext_ok() {
                        r::tagged(
                            out,
                            &tag,
                            Status::No,
                            Some(&Code::PrivacyRequired),
                            "LOGIN only over TLS: use STARTTLS or port 993",
                        );
                        return None;
                    }
                    let login = String::from_utf8_lossy(&user).into_owned();
                    self.login = Some(login.clone());
                    self.pending = Some(Pending::Login { tag });
                    Some(Action::Login { login, password })
                }
                Command::Authenticate { mechanism, initial } => {
                    if mechanism != "PLAIN" {
                        r::tagged(
                            out,
                            &tag,
                            Status::No,
                            None,
                            "unsupported SASL mechanism, use PLAIN",
                        );
                        return None;
                    }
                    if !self.plaintext_ok() {
                        r::tagged(
                            out,
                            &tag,
                            Status::No,
                            Some(&Code::PrivacyRequired),
                            "AUTHENTICATE only over TLS: use STARTTLS or port 993",
                        );
                        return None;
                    }
                    match initial {
                        Some(i) => self.sasl_response(&tag, i.as_bytes(), out),
                        None => {
                            r::empty_continuation(out);
                            self.sasl = Some(tag);
                            None
                        }
                    }
                }
                _ => {
                    bad(
                        out,
                        Some(&tag),
                        None,
                        "not valid before login: use LOGIN or AUTHENTICATE",
                    );
                    None
                }
            };
        }
        match cmd {
            Command::StartTls | Command::Login { .. } | Command::Authenticate { .. } => {
                bad(out, Some(&tag), None, "already logged in");
                None
            }
            Command::Enable(caps) => {
                if matches!(self.state, State::Selected(_)) {
                    bad(out, Some(&tag), None, "ENABLE is valid only before SELECT");
                    return None;
                }
                let mut on = Vec::new();
                for c in &caps {
                    match c.as_str() {
                        "CONDSTORE" => {
                            self.condstore = true;
                            on.push("CONDSTORE");
                        }
                        "IMAP4REV2" => {
                            self.rev2 = true;
                            on.push("IMAP4rev2");
                        }
                        _ => {}
                    }
                }
                r::enabled(out, &on);
                ok(out, &tag, "ENABLE completed");
                None
            }
            Command::Namespace => {
                r::namespace(out);
                ok(out, &tag, "NAMESPACE completed");
                None
            }
            Command::Select {
                mailbox,
                read_only,
                condstore,
            } => {
                self.select(acct, &tag, &mailbox, read_only, condstore, out);
                None
            }
            Command::Create(m)
            | Command::Delete(m)
            | Command::Subscribe(m)
            | Command::Unsubscribe(m)
                if folder_name(&m).is_err() =>
            {
                bad(
                    out,
                    Some(&tag),
                    None,
                    "invalid mailbox name (modified UTF-7 expected)",
                );
                None
            }
            Command::Create(m) => {
                let name = folder_name(&m).unwrap_or_default();
                if refuse_new_name(out, &tag, name.eq_ignore_ascii_case("INBOX"), &name) {
                    return None;
                }
                self.write(tag, WriteKind::Plain, Write::Create(name))
            }
            Command::Delete(m) => {
                let name = folder_name(&m).unwrap_or_default();
                if name == "INBOX" {
                    r::tagged(
                        out,
                        &tag,
                        Status::No,
                        Some(&Code::Cannot),
                        "INBOX cannot be deleted",
                    );
                    return None;
                }
                if let State::Selected(s) = &self.state {
                    if s.name == name {
                        r::tagged(
                            out,
                            &tag,
                            Status::No,
                            Some(&Code::InUse),
                            "folder is selected: close it first",
                        );
                        return None;
                    }
                }
                self.write(tag, WriteKind::Plain, Write::Delete(name))
            }
            Command::Rename(from, to) => match (folder_name(&from), folder_name(&to)) {
                (Ok(from), Ok(to)) => {
                    if refuse_new_name(out, &tag, to == "INBOX", &to) {
                        return None;
                    }
                    self.write(tag, WriteKind::Plain, Write::Rename(from, to))
                }
                _ => {
                    bad(
                        out,
                        Some(&tag),
                        None,
                        "invalid mailbox name (modified UTF-7 expected)",
                    );
                    None
                }
            },
            Command::Subscribe(ref m) | Command::Unsubscribe(ref m) => {
                let name = folder_name(m).unwrap_or_default();
                let on = matches!(cmd, Command::Subscribe(_));
                match acct.subscribe(&name, on) {
                    Ok(()) => ok(
                        out,
                        &tag,
                        if on {
                            "SUBSCRIBE completed"
                        } else {
                            "UNSUBSCRIBE completed"
                        },
                    ),
                    Err(e) => no(out, &tag, &e),
                }
                self.sync(out, true);
                None
            }
            Command::List {
                select,
                reference,
                patterns,
                ret,
                extended,
            } => {
                self.list(
                    acct, &tag, select, &reference, &patterns, &ret, extended, false, out,
                );
                self.sync(out, true);
                None
            }
            Command::Lsub { reference, pattern } => {
                let select = ListSelect {
                    subscribed: true,
                    ..Default::default()
                };
                self.list(
                    acct,
                    &tag,
                    select,
                    &reference,
                    &[pattern],
                    &ListReturn::default(),
                    false,
                    true,
                    out,
                );
                self.sync(out, true);
                None
            }
            Command::Status { mailbox, items } => {
                match folder_name(&mailbox) {
                    Ok(name) => match acct.status(&name) {
                        Ok(s) => {
                            status_response(out, &name, &items, &s);
                            ok(out, &tag, "STATUS completed");
                        }
                        Err(e) => no(out, &tag, &e),
                    },
                    Err(why) => bad(out, Some(&tag), None, why),
                }
                self.sync(out, true);
                None
            }
            Command::Append(_) => {
                bad(out, Some(&tag), None, "APPEND needs a message literal");
                None
            }
            Command::Idle => {
                r::continuation(out, "idling");
                self.sync(out, true);
                self.idle = Some(tag);
                None
            }
            cmd => self.selected(tag, cmd, out),
        }
    }

    /// Commands of the selected state (RFC 9051 6.4).
    fn selected(
        &mut self,
        tag: String,
        cmd: Command,
        out: &mut Vec<u8>,
    ) -> Option<Action<<A::Folder as Folder>::Body>> {
        let State::Selected(sel) = &mut self.state else {
            bad(
                out,
                Some(&tag),
                None,
                "no folder selected: SELECT one first",
            );
            return None;
        };
        match cmd {
            Command::Check => {
                self.sync(out, true);
                r::tagged(out, &tag, Status::Ok, None, "CHECK completed");
                None
            }
            Command::Unselect => {
                self.state = State::Authenticated;
                r::tagged(out, &tag, Status::Ok, None, "UNSELECT completed");
                None
            }
            Command::Close => {
                let deleted = deleted_uids(sel, None);
                if sel.read_only || deleted.is_empty() {
                    self.state = State::Authenticated;
                    r::tagged(out, &tag, Status::Ok, None, "CLOSE completed");
                    return None;
                }
                let w = Write::Expunge {
                    folder: sel.name.clone(),
                    uids: deleted,
                };
                self.write(tag, WriteKind::Close, w)
            }
            Command::Expunge | Command::UidExpunge(_) => {
                if sel.read_only {
                    r::tagged(
                        out,
                        &tag,
                        Status::No,
                        Some(&Code::ReadOnly),
                        "folder is read-only (EXAMINE)",
                    );
                    return None;
                }
                let set = match cmd {
                    Command::UidExpunge(s) => Some(s),
                    _ => None,
                };
                let deleted = deleted_uids(sel, set.as_ref());
                if deleted.is_empty() {
                    self.sync(out, true);
                    r::tagged(
                        out,
                        &tag,
                        Status::Ok,
                        None,
                        "EXPUNGE completed (nothing to remove)",
                    );
                    return None;
                }
                let w = Write::Expunge {
                    folder: sel.name.clone(),
                    uids: deleted,
                };
                self.write(tag, WriteKind::Expunge, w)
            }
            Command::Fetch {
                uid,
                set,
                items,
                changed_since,
            } => {
                let targets = match sel.resolve(&set, uid) {
                    Ok(t) => t,
                    Err(why) => {
                        bad(out, Some(&tag), None, why);
                        return None;
                    }
                };
                let mut items = items;
                if uid && !items.contains(&FetchAtt::Uid) {
                    items.insert(0, FetchAtt::Uid);
                }
                if changed_since.is_some() || items.contains(&FetchAtt::ModSeq) {
                    // RFC 7162 3.1: this enables CONDSTORE.
                    self.condstore = true;
                    if !items.contains(&FetchAtt::ModSeq) {
                        items.push(FetchAtt::ModSeq);
                    }
                }
                let sets_seen = items.iter().any(|i| {
                    matches!(
                        i,
                        FetchAtt::BodySection { peek: false, .. }
                            | FetchAtt::Binary { peek: false, .. }
                            | FetchAtt::Rfc822
                            | FetchAtt::Rfc822Text
                    )
                });
                self.fetch = Some(FetchJob {
                    tag,
                    uid,
                    items,
                    targets,
                    changed_since,
                    pos: 0,
                    item: 0,
                    expunge_issued: false,
                    meta: Meta::empty(),
                    have_meta: false,
                    flags_changed: false,
                    sets_seen,
                });
                None
            }
            Command::Store {
                uid,
                set,
                unchanged_since,
                mode,
                silent,
                flags,
            } => {
                if sel.read_only {
                    r::tagged(
                        out,
                        &tag,
                        Status::No,
                        Some(&Code::ReadOnly),
                        "folder is read-only (EXAMINE)",
                    );
                    return None;
                }
                let targets = match sel.resolve(&set, uid) {
                    Ok(t) => t,
                    Err(why) => {
                        bad(out, Some(&tag), None, why);
                        return None;
                    }
                };
                if unchanged_since.is_some() {
                    self.condstore = true;
                }
                let condstore = self.condstore;
                let mut modified = Vec::new();
                let mut gone = false;
                for (seq, u) in targets {
                    if sel.is_gone(u) {
                        gone = true;
                        continue;
                    }
                    match sel.folder.store(u, mode, &flags, unchanged_since) {
                        Stored::Done(meta) => {
                            if !silent || unchanged_since.is_some() {
                                let mut f = r::Fetch::begin(out, seq);
                                if uid {
                                    f.uid(u);
                                }
                                if !silent {
                                    f.flags(&meta.flags);
                                }
                                if condstore {
                                    f.modseq(meta.modseq);
                                }
                                f.end();
                            }
                        }
                        Stored::Modified => modified.push(if uid { u } else { seq }),
                        Stored::Gone => gone = true,
                    }
                }
                self.sync(out, uid);
                if !modified.is_empty() {
                    r::tagged(
                        out,
                        &tag,
                        Status::Ok,
                        Some(&Code::Modified(modified)),
                        "conditional STORE failed for some messages",
                    );
                } else if gone {
                    r::tagged(
                        out,
                        &tag,
                        Status::No,
                        Some(&Code::ExpungeIssued),
                        "some messages were expunged",
                    );
                } else {
                    r::tagged(out, &tag, Status::Ok, None, "STORE completed");
                }
                None
            }
            Command::Search {
                uid,
                charset,
                ret,
                key,
            } => {
                if let Some(c) = charset.as_deref() {
                    if c != "UTF-8" && c != "US-ASCII" {
                        r::tagged(
                            out,
                            &tag,
                            Status::No,
                            Some(&Code::BadCharset),
                            "only UTF-8 and US-ASCII searches",
                        );
                        return None;
                    }
                }
                if ret
                    .as_ref()
                    .is_some_and(|r| r.contains(&SearchReturn::Save))
                {
                    bad(out, Some(&tag), None, "SEARCHRES (SAVE) is not supported");
                    return None;
                }
                let largest_uid = sel.uids.last().copied().unwrap_or(0);
                let n = sel.uids.len() as u32;
                let mut hits = Vec::new();
                let mut top_modseq = 0;
                let uses_modseq = has_modseq(&key);
                for (i, &u) in sel.uids.iter().enumerate() {
                    if sel.gone.contains(&u) {
                        continue;
                    }
                    let Some(meta) = sel.folder.meta(u) else {
                        continue;
                    };
                    let ctx = Ctx {
                        folder: &sel.folder,
                        seq: i as u32 + 1,
                        n,
                        largest_uid,
                        meta: &meta,
                    };
                    if eval(&key, &ctx) {
                        top_modseq = top_modseq.max(meta.modseq);
                        hits.push(if uid { u } else { i as u32 + 1 });
                    }
                }
                if uses_modseq {
                    self.condstore = true;
                }
                let modseq = uses_modseq.then_some(top_modseq);
                match ret {
                    Some(ret) => r::esearch(out, &tag, uid, &ret, &hits, modseq),
                    None => r::search(out, &hits, modseq),
                }
                self.sync(out, uid);
                r::tagged(out, &tag, Status::Ok, None, "SEARCH completed");
                None
            }
            Command::Copy {
                ref uid,
                ref set,
                ref mailbox,
            }
            | Command::Move {
                ref uid,
                ref set,
                ref mailbox,
            } => {
                let is_move = matches!(cmd, Command::Move { .. });
                let (uid, set, mailbox) = (*uid, set, mailbox);
                if is_move && sel.read_only {
                    r::tagged(
                        out,
                        &tag,
                        Status::No,
                        Some(&Code::ReadOnly),
                        "folder is read-only (EXAMINE)",
                    );
                    return None;
                }
                let to = match folder_name(mailbox) {
                    Ok(t) => t,
                    Err(why) => {
                        bad(out, Some(&tag), None, why);
                        return None;
                    }
                };
                let targets = match sel.resolve(set, uid) {
                    Ok(t) => t,
                    Err(why) => {
                        bad(out, Some(&tag), None, why);
                        return None;
                    }
                };
                if is_move && to == sel.name {
                    r::tagged(
                        out,
                        &tag,
                        Status::No,
                        Some(&Code::Cannot),
                        "cannot move messages into the same folder",
                    );
                    return None;
                }
                let uids: Vec<Uid> = targets
                    .iter()
                    .map(|&(_, u)| u)
                    .filter(|&u| !sel.is_gone(u))
                    .collect();
                if uids.is_empty() {
                    self.sync(out, true);
                    r::tagged(out, &tag, Status::Ok, None, "no messages to copy");
                    return None;
                }
                let w = Write::Copy {
                    from: sel.name.clone(),
                    uids,
                    to,
                    is_move,
                };
                let what = if is_move {
                    WriteKind::Move
                } else {
                    WriteKind::Copy
                };
                self.write(tag, what, w)
            }
            _ => {
                bad(out, Some(&tag), None, "not valid in this state");
                None
            }
        }
    }

    fn write(
        &mut self,
        tag: String,
        what: WriteKind,
        w: Write,
    ) -> Option<Action<<A::Folder as Folder>::Body>> {
        self.pending = Some(Pending::Write { tag, what });
        Some(Action::Write(w))
    }

    /// The driver's password check ended.
    pub fn login_done(
        &mut self,
        result: LoginResult,
        out: &mut Vec<u8>,
    ) -> Option<Action<<A::Folder as Folder>::Body>> {
        let Some(Pending::Login { tag }) = self.pending.take() else {
            return None;
        };
        match result {
            LoginResult::Ok => {
                self.state = State::Authenticated;
                let caps = Code::Capability(self.capabilities());
                r::tagged(out, &tag, Status::Ok, Some(&caps), "logged in");
                None
            }
            LoginResult::Blocked => {
                r::tagged(
                    out,
                    &tag,
                    Status::No,
                    Some(&Code::Unavailable),
                    "too many failed logins from your address, try again later",
                );
                self.failed(out)
            }
            LoginResult::BadCredentials => {
                r::tagged(
                    out,
                    &tag,
                    Status::No,
                    Some(&Code::AuthenticationFailed),
                    "invalid login or password",
                );
                self.failed(out)
            }
        }
    }

    fn failed(&mut self, out: &mut Vec<u8>) -> Option<Action<<A::Folder as Folder>::Body>> {
        self.login = None;
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            r::untagged(
                out,
                Status::Bye,
                None,
                "too many failed logins, closing connection",
            );
            self.state = State::Logout;
            return Some(Action::Close);
        }
        None
    }

    /// RFC 4616 PLAIN, base64 (RFC 9051 6.2.2; `*` cancels).
    fn sasl_response(
        &mut self,
        tag: &str,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Action<<A::Folder as Folder>::Body>> {
        use crate::user::sasl;
        if line == b"*" {
            bad(out, Some(tag), None, "authentication cancelled");
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let creds = sasl::decode_response(&text).and_then(|m| sasl::parse_plain(&m));
        match creds {
            Ok(c) => {
                self.login = Some(c.login.clone());
                self.pending = Some(Pending::Login {
                    tag: tag.to_string(),
                });
                Some(Action::Login {
                    login: c.login,
                    password: c.password,
                })
            }
            Err(sasl::SaslError::Authzid) => {
                r::tagged(
                    out,
                    tag,
                    Status::No,
                    Some(&Code::AuthenticationFailed),
                    "cannot act for another user",
                );
                None
            }
            Err(_) => {
                bad(
                    out,
                    Some(tag),
                    None,
                    "malformed PLAIN response (base64 of authzid NUL login NUL password)",
                );
                None
            }
        }
    }

    /// An APPEND's literal was announced (RFC 9051 6.3.12, RFC 7888 4).
    fn append(
        &mut self,
        acct: &mut A,
        tag: String,
        header: command::AppendHeader,
        size: u64,
        sync: bool,
        out: &mut Vec<u8>,
    ) -> Option<Action<<A::Folder as Folder>::Body>> {
        let refuse = |s: &mut Self, out: &mut Vec<u8>, status, code: Option<Code>, why: &str| {
            r::tagged(out, &tag, status, code.as_ref(), why);
            s.reader.skip_append();
            None
        };
        if matches!(self.state, State::NotAuthenticated) {
            return refuse(self, out, Status::Bad, None, "not valid before login");
        }
        if size > self.settings.max_message_size {
            let why = format!(
                "message too large ({size} octets, {} at most)",
                self.settings.max_message_size
            );
            if !sync {
                // RFC 7888 4: the octets are on their way; cannot skip
                // an unbounded amount, so the connection is closed.
                r::tagged(out, &tag, Status::Bad, Some(&Code::TooBig), &why);
                r::untagged(out, Status::Bye, None, "closing connection");
                self.state = State::Logout;
                return Some(Action::Close);
            }
            return refuse(self, out, Status::No, Some(Code::TooBig), &why);
        }
        let folder = match folder_name(&header.mailbox) {
            Ok(f) => f,
            Err(why) => return refuse(self, out, Status::Bad, None, why),
        };
        if let Err(e) = acct.status(&folder) {
            let (status, code, why) = match e {
                StoreError::NonExistent => (
                    Status::No,
                    Some(Code::TryCreate),
                    "no such folder".to_string(),
                ),
                e => map_err(&e),
            };
            return refuse(self, out, status, code, &why);
        }
        if sync {
            r::continuation(out, "ready for the message");
        }
        self.reader.accept_append();
        let write = Write::Append {
            folder,
            flags: header.flags,
            date: header.date,
        };
        // The reader yields AppendEnd after the octets; it finds this.
        self.appending = Some((tag, write));
        Some(Action::AppendData { size })
    }

    /// A [`Write`] was carried out (or failed).
    pub fn write_done(&mut self, done: WriteDone, out: &mut Vec<u8>) {
        let Some(Pending::Write { tag, what }) = self.pending.take() else {
            return;
        };
        if let WriteDone::Failed(e) = &done {
            let (status, mut code, why) = map_err(e);
            if matches!(e, StoreError::NonExistent)
                && matches!(what, WriteKind::Copy | WriteKind::Move)
            {
                code = Some(Code::TryCreate);
            }
            if let WriteKind::Close = what {
                self.state = State::Authenticated;
            }
            r::tagged(out, &tag, status, code.as_ref(), &why);
            return;
        }
        match (what, done) {
            (_, WriteDone::Appended { uid_validity, uid }) => {
                self.sync(out, true);
                r::tagged(
                    out,
                    &tag,
                    Status::Ok,
                    Some(&Code::AppendUid(uid_validity, uid)),
                    "APPEND completed",
                );
            }
            (
                WriteKind::Copy,
                WriteDone::Copied {
                    uid_validity,
                    from,
                    to,
                },
            ) => {
                self.sync(out, true);
                r::tagged(
                    out,
                    &tag,
                    Status::Ok,
                    Some(&Code::CopyUid(uid_validity, from, to)),
                    "COPY completed",
                );
            }
            (
                WriteKind::Move,
                WriteDone::Copied {
                    uid_validity,
                    from,
                    to,
                },
            ) => {
                // RFC 6851 3.3: COPYUID untagged, before the EXPUNGEs.
                r::untagged(
                    out,
                    Status::Ok,
                    Some(&Code::CopyUid(uid_validity, from.clone(), to)),
                    "moved",
                );
                self.expunged(&from, out);
                self.sync(out, true);
                r::tagged(out, &tag, Status::Ok, None, "MOVE completed");
            }
            (WriteKind::Close, _) => {
                self.state = State::Authenticated;
                r::tagged(out, &tag, Status::Ok, None, "CLOSE completed");
            }
            (WriteKind::Expunge, WriteDone::Expunged(uids)) => {
                self.expunged(&uids, out);
                self.sync(out, true);
                r::tagged(out, &tag, Status::Ok, None, "EXPUNGE completed");
            }
            _ => {
                self.sync(out, true);
                r::tagged(out, &tag, Status::Ok, None, "completed");
            }
        }
    }

    /// Announces our own expunge of `uids` (ascending) and drops them.
    fn expunged(&mut self, uids: &[Uid], out: &mut Vec<u8>) {
        let State::Selected(sel) = &mut self.state else {
            return;
        };
        for u in uids {
            if let Some(seq) = sel.seq_of(*u) {
                r::expunge(out, seq);
                sel.uids.remove(seq as usize - 1);
            }
            sel.gone.retain(|g| g != u);
        }
    }

    /// During IDLE, the folder changed: report it (RFC 2177).
    pub fn idle_changes(&mut self, out: &mut Vec<u8>) {
        if self.idle.is_some() {
            self.sync(out, true);
        }
    }

    /// Reports others' changes (RFC 9051 7.4, 7.5; RFC 2180 4.1).
    fn sync(&mut self, out: &mut Vec<u8>, allow_expunge: bool) {
        let condstore = self.condstore;
        let State::Selected(sel) = &mut self.state else {
            return;
        };
        let mut added = false;
        for change in sel.folder.poll() {
            match change {
                Change::Added(u) => {
                    if sel.uids.last().map_or(true, |&l| u > l) {
                        sel.uids.push(u);
                        added = true;
                    }
                }
                Change::Expunged(u) => {
                    if sel.seq_of(u).is_some() {
                        if let Err(at) = sel.gone.binary_search(&u) {
                            sel.gone.insert(at, u);
                        }
                    }
                }
                Change::Flags(u) => {
                    if let (Some(seq), Some(meta)) = (sel.seq_of(u), sel.folder.meta(u)) {
                        let mut f = r::Fetch::begin(out, seq);
                        f.uid(u);
                        f.flags(&meta.flags);
                        if condstore {
                            f.modseq(meta.modseq);
                        }
                        f.end();
                    }
                }
            }
        }
        // EXISTS first: an EXPUNGE may name a message that just came.
        if added {
            r::exists(out, sel.uids.len() as u32);
        }
        if allow_expunge && !sel.gone.is_empty() {
            // Each EXPUNGE lowers the count by one (RFC 9051 7.5.1).
            for u in std::mem::take(&mut sel.gone) {
                if let Some(seq) = sel.seq_of(u) {
                    r::expunge(out, seq);
                    sel.uids.remove(seq as usize - 1);
                }
            }
        }
    }

    fn select(
        &mut self,
        acct: &mut A,
        tag: &str,
        mailbox: &[u8],
        read_only: bool,
        condstore: bool,
        out: &mut Vec<u8>,
    ) {
        if let State::Selected(_) = self.state {
            // RFC 9051 6.3.2 / RFC 7162 3.2.11.
            r::untagged(
                out,
                Status::Ok,
                Some(&Code::Closed),
                "previous folder closed",
            );
            self.state = State::Authenticated;
        }
        let name = match folder_name(mailbox) {
            Ok(n) => n,
            Err(why) => return bad(out, Some(tag), None, why),
        };
        let mut folder = match acct.open(&name) {
            Ok(f) => f,
            Err(e) => return no(out, tag, &e),
        };
        if condstore {
            self.condstore = true;
        }
        // The changes before now are in the snapshot.
        folder.poll();
        let uids = folder.uids();
        let s = folder.summary();
        let flags: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
        r::flags(out, &flags);
        r::exists(out, uids.len() as u32);
        if !self.rev2 {
            r::recent(out, 0);
            // RFC 3501 6.3.1: the first unseen message.
            if let Some(i) = folder.first_unseen(&uids) {
                r::untagged(
                    out,
                    Status::Ok,
                    Some(&Code::Unseen(i as u32 + 1)),
                    "first unseen",
                );
            }
        }
        r::untagged(
            out,
            Status::Ok,
            Some(&Code::UidValidity(s.uid_validity)),
            "UIDs valid",
        );
        r::untagged(
            out,
            Status::Ok,
            Some(&Code::UidNext(s.uid_next)),
            "predicted next UID",
        );
        r::untagged(
            out,
            Status::Ok,
            Some(&Code::HighestModSeq(s.highest_modseq)),
            "highest",
        );
        if read_only {
            r::untagged(
                out,
                Status::Ok,
                Some(&Code::PermanentFlags(Vec::new())),
                "read-only",
            );
            r::tagged(
                out,
                tag,
                Status::Ok,
                Some(&Code::ReadOnly),
                "EXAMINE completed",
            );
        } else {
            r::untagged(
                out,
                Status::Ok,
                Some(&Code::PermanentFlags(flags)),
                "flags permitted",
            );
            r::tagged(
                out,
                tag,
                Status::Ok,
                Some(&Code::ReadWrite),
                "SELECT completed",
            );
        }
        self.state = State::Selected(Selected {
            name,
            folder,
            read_only,
            uids,
            gone: Vec::new(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn list(
        &mut self,
        acct: &mut A,
        tag: &str,
        select: ListSelect,
        reference: &[u8],
        patterns: &[Vec<u8>],
        ret: &ListReturn,
        extended: bool,
        lsub: bool,
        out: &mut Vec<u8>,
    ) {
        let folders = match acct.list() {
            Ok(f) => f,
            Err(e) => return no(out, tag, &e),
        };
        // RFC 9051 6.3.9: an empty pattern asks for the separator.
        if patterns.len() == 1 && patterns[0].is_empty() && !extended {
            r::list(out, lsub, &["\\Noselect"], "", false);
            r::tagged(
                out,
                tag,
                Status::Ok,
                None,
                if lsub {
                    "LSUB completed"
                } else {
                    "LIST completed"
                },
            );
            return;
        }
        let Some(reference) = mutf7::decode(reference) else {
            return bad(out, Some(tag), None, "invalid reference name");
        };
        let mut pats = Vec::new();
        for p in patterns {
            let Some(p) = mutf7::decode(p) else {
                return bad(out, Some(tag), None, "invalid mailbox pattern");
            };
            let full = format!("{reference}{p}");
            pats.push(full);
        }
        let matches = |name: &str| {
            pats.iter().any(|p| {
                // INBOX matches case-insensitively (RFC 9051 5.1).
                wildcard_match(p.as_bytes(), name.as_bytes())
                    || name == "INBOX"
                        && wildcard_match(p.to_ascii_uppercase().as_bytes(), b"INBOX")
            })
        };
        let has_children = |name: &str| {
            let prefix = format!("{name}/");
            folders.iter().any(|f| f.name.starts_with(&prefix))
        };
        for f in &folders {
            if !matches(&f.name) {
                continue;
            }
            if select.special_use && f.special_use.is_none() {
                continue;
            }
            let mut childinfo = false;
            if select.subscribed && !f.subscribed {
                // RFC 5258 3.1: RECURSIVEMATCH shows parents of
                // subscribed folders with CHILDINFO.
                let prefix = format!("{}/", f.name);
                if select.recursive_match
                    && folders
                        .iter()
                        .any(|c| c.subscribed && c.name.starts_with(&prefix))
                {
                    childinfo = true;
                } else {
                    continue;
                }
            }
            let mut attrs: Vec<&str> = Vec::new();
            if f.noselect {
                attrs.push("\\Noselect");
            }
            if f.noinferiors {
                attrs.push("\\NoInferiors");
            } else if has_children(&f.name) {
                attrs.push("\\HasChildren");
            } else {
                attrs.push("\\HasNoChildren");
            }
            if f.subscribed && (select.subscribed || ret.subscribed) && !lsub {
                attrs.push("\\Subscribed");
            }
            if let Some(u) = f.special_use {
                attrs.push(u);
            }
            r::list(out, lsub, &attrs, &mutf7::encode(&f.name), childinfo);
            if let Some(items) = &ret.status {
                if !f.noselect {
                    if let Ok(s) = acct.status(&f.name) {
                        status_response(out, &f.name, items, &s);
                    }
                }
            }
        }
        r::tagged(
            out,
            tag,
            Status::Ok,
            None,
            if lsub {
                "LSUB completed"
            } else {
                "LIST completed"
            },
        );
    }

    /// Writes FETCH responses until done, a body to stream, or a flush.
    fn fetch_continue(&mut self, out: &mut Vec<u8>) -> Option<Action<<A::Folder as Folder>::Body>> {
        let condstore = self.condstore;
        let State::Selected(sel) = &mut self.state else {
            self.fetch = None;
            return None;
        };
        let job = self.fetch.as_mut()?;
        while job.pos < job.targets.len() {
            let (seq, uid) = job.targets[job.pos];
            if job.item == 0 {
                if out.len() >= FLUSH_AT {
                    return Some(Action::Flush);
                }
                job.have_meta = !sel.is_gone(uid) && sel.folder.meta_into(uid, &mut job.meta);
                if !job.have_meta {
                    job.expunge_issued = true;
                    job.pos += 1;
                    continue;
                }
                if job.changed_since.is_some_and(|c| job.meta.modseq <= c) {
                    job.pos += 1;
                    continue;
                }
                job.flags_changed = false;
                if job.sets_seen && !sel.read_only && !job.meta.has("\\Seen") {
                    if let Stored::Done(m) =
                        sel.folder
                            .store(uid, StoreMode::Add, &["\\Seen".to_string()], None)
                    {
                        job.meta = m;
                        job.flags_changed = true;
                    }
                }
                out.extend_from_slice(b"* ");
                r::number(out, u64::from(seq));
                out.extend_from_slice(b" FETCH (");
            }
            if !job.have_meta {
                job.pos += 1;
                job.item = 0;
                continue;
            }
            while job.item < job.items.len() {
                let i = job.item;
                job.item += 1;
                if i > 0 {
                    out.push(b' ');
                }
                if let Some(body) = fetch_item(&sel.folder, &job.items[i], &job.meta, out) {
                    return Some(Action::Body(body));
                }
            }
            if job.flags_changed && !job.items.contains(&FetchAtt::Flags) {
                out.extend_from_slice(b" FLAGS (");
                flag_list(out, &job.meta.flags);
                out.push(b')');
            }
            if condstore && job.flags_changed && !job.items.contains(&FetchAtt::ModSeq) {
                out.extend_from_slice(b" MODSEQ (");
                r::number(out, job.meta.modseq);
                out.push(b')');
            }
            out.extend_from_slice(b")\r\n");
            job.pos += 1;
            job.item = 0;
        }
        let job = self.fetch.take()?;
        self.sync(out, job.uid);
        if job.expunge_issued {
            r::tagged(
                out,
                &job.tag,
                Status::No,
                Some(&Code::ExpungeIssued),
                "some messages were expunged",
            );
        } else {
            r::tagged(out, &job.tag, Status::Ok, None, "FETCH completed");
        }
        None
    }
}

/// Writes one FETCH item; a body to stream is returned (its literal
/// header is already written).
fn fetch_item<F: Folder>(
    folder: &F,
    item: &FetchAtt,
    meta: &Meta,
    out: &mut Vec<u8>,
) -> Option<F::Body> {
    let uid = meta.uid;
    let put = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
    let body = |out: &mut Vec<u8>,
                name: &str,
                section: &Section,
                binary: bool,
                partial|
     -> Option<F::Body> {
        put(out, name);
        out.push(b' ');
        match folder.section(uid, section, binary, partial) {
            Ok((0, _)) => {
                put(out, "\"\"");
                None
            }
            Ok((len, b)) => {
                // BINARY content may hold NUL: a literal8 (RFC 3516 4.3,
                // RFC 9051 7.5.2 `literal8`).
                if binary {
                    out.push(b'~');
                }
                r::literal_header(out, len);
                Some(b)
            }
            Err(_) => {
                put(out, "NIL");
                None
            }
        }
    };
    match item {
        FetchAtt::Uid => {
            put(out, "UID ");
            r::number(out, u64::from(uid));
        }
        FetchAtt::Flags => {
            put(out, "FLAGS (");
            flag_list(out, &meta.flags);
            out.push(b')');
        }
        FetchAtt::InternalDate => {
            put(out, "INTERNALDATE ");
            r::date_time(
                out,
                meta.internal_date.unix,
                meta.internal_date.zone_minutes,
            );
        }
        FetchAtt::Size => {
            put(out, "RFC822.SIZE ");
            r::number(out, meta.size);
        }
        FetchAtt::ModSeq => {
            put(out, "MODSEQ (");
            r::number(out, meta.modseq);
            out.push(b')');
        }
        FetchAtt::Envelope => {
            put(out, "ENVELOPE ");
            if folder.envelope(uid, out).is_err() {
                put(out, "NIL");
            }
        }
        FetchAtt::Body | FetchAtt::BodyStructure => {
            let ext = matches!(item, FetchAtt::BodyStructure);
            put(out, if ext { "BODYSTRUCTURE " } else { "BODY " });
            if folder.body_structure(uid, ext, out).is_err() {
                put(out, "NIL");
            }
        }
        FetchAtt::Rfc822 => return body(out, "RFC822", &Section::default(), false, None),
        FetchAtt::Rfc822Header => {
            let s = Section {
                part: vec![],
                text: SectionText::Header,
            };
            return body(out, "RFC822.HEADER", &s, false, None);
        }
        FetchAtt::Rfc822Text => {
            let s = Section {
                part: vec![],
                text: SectionText::Text,
            };
            return body(out, "RFC822.TEXT", &s, false, None);
        }
        FetchAtt::BodySection {
            section, partial, ..
        } => {
            let name = r::section_name(false, &section.part, &section.text, *partial);
            return body(out, &name, section, false, *partial);
        }
        FetchAtt::Binary { part, partial, .. } => {
            let s = Section {
                part: part.clone(),
                text: SectionText::All,
            };
            let name = r::section_name(true, part, &SectionText::All, *partial);
            return body(out, &name, &s, true, *partial);
        }
        FetchAtt::BinarySize(part) => {
            let s = Section {
                part: part.clone(),
                text: SectionText::All,
            };
            let name = r::section_name(true, part, &SectionText::All, None).replacen(
                "BINARY",
                "BINARY.SIZE",
                1,
            );
            match folder.section(uid, &s, true, None) {
                Ok((len, _)) => put(out, &format!("{name} {len}")),
                Err(_) => put(out, &format!("{name} NIL")),
            }
        }
    }
    None
}

/// Flags separated by spaces (the inside of a FLAGS list).
fn flag_list(out: &mut Vec<u8>, flags: &[command::Flag]) {
    for (i, f) in flags.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(f.as_bytes());
    }
}

fn ok(out: &mut Vec<u8>, tag: &str, text: &str) {
    r::tagged(out, tag, Status::Ok, None, text);
}

fn bad(out: &mut Vec<u8>, tag: Option<&str>, code: Option<&Code>, why: &str) {
    match tag {
        Some(t) => r::tagged(out, t, Status::Bad, code, why),
        None => r::untagged(out, Status::Bad, code, why),
    }
}

fn no(out: &mut Vec<u8>, tag: &str, e: &StoreError) {
    let (status, code, why) = map_err(e);
    r::tagged(out, tag, status, code.as_ref(), &why);
}

fn status_response(
    out: &mut Vec<u8>,
    name: &str,
    items: &[StatusItem],
    s: &super::folder::Summary,
) {
    let values: Vec<(StatusItem, u64)> = items
        .iter()
        .map(|&i| {
            let v = match i {
                StatusItem::Messages => u64::from(s.messages),
                StatusItem::UidNext => u64::from(s.uid_next),
                StatusItem::UidValidity => u64::from(s.uid_validity),
                StatusItem::Unseen => u64::from(s.unseen),
                StatusItem::Deleted => u64::from(s.deleted),
                StatusItem::Size => s.size,
                StatusItem::HighestModSeq => s.highest_modseq,
                // \Recent is not kept (rev2 dropped it; docs/imap.md).
                StatusItem::Recent => 0,
            };
            (i, v)
        })
        .collect();
    r::status(out, &mutf7::encode(name), &values);
}

/// `\Deleted` messages of the view (within `set`, by UID, if given).
fn deleted_uids<F: Folder>(sel: &Selected<F>, set: Option<&SeqSet>) -> Vec<Uid> {
    let largest = sel.uids.last().copied().unwrap_or(0);
    sel.uids
        .iter()
        .copied()
        .filter(|&u| set.map_or(true, |s| s.contains(u, largest)))
        .filter(|&u| sel.folder.meta(u).is_some_and(|m| m.has("\\Deleted")))
        .collect()
}

/// Whether a status line of this output is a BAD (`tag BAD` / `* BAD`).
fn is_bad(out: &[u8]) -> bool {
    out.split(|&b| b == b'\n').any(|line| {
        let mut words = line.splitn(3, |&b| b == b' ');
        words.next().is_some() && words.next() == Some(b"BAD")
    })
}

fn has_modseq(k: &SearchKey) -> bool {
    match k {
        SearchKey::ModSeq(_) => true,
        SearchKey::Not(k) => has_modseq(k),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::And(ks) => ks.iter().any(has_modseq),
        _ => false,
    }
}

struct Ctx<'a, F> {
    folder: &'a F,
    seq: u32,
    n: u32,
    largest_uid: Uid,
    meta: &'a Meta,
}

/// RFC 9051 6.4.4. Dates compare by day: INTERNALDATE in its own zone.
fn eval<F: Folder>(k: &SearchKey, c: &Ctx<F>) -> bool {
    let m = c.meta;
    let day =
        (m.internal_date.unix + i64::from(m.internal_date.zone_minutes) * 60).div_euclid(86400);
    // Read only for the SENT* keys: it may parse the message.
    let sent = || {
        m.sent
            .or_else(|| c.folder.sent(m.uid))
            .map(|s| s.div_euclid(86400))
    };
    match k {
        SearchKey::All => true,
        SearchKey::Flag(f, set) => m.has(f) == *set,
        // \Recent is not kept: nothing is new or recent.
        SearchKey::New | SearchKey::Recent => false,
        SearchKey::Old => true,
        SearchKey::Text(field, needle) => c
            .folder
            .matches(m.uid, Some(*field), None, needle)
            .unwrap_or(false),
        SearchKey::Header(name, needle) => c
            .folder
            .matches(m.uid, None, Some(name), needle)
            .unwrap_or(false),
        SearchKey::Before(d) => day < d.days(),
        SearchKey::On(d) => day == d.days(),
        SearchKey::Since(d) => day >= d.days(),
        SearchKey::SentBefore(d) => sent().is_some_and(|s| s < d.days()),
        SearchKey::SentOn(d) => sent().is_some_and(|s| s == d.days()),
        SearchKey::SentSince(d) => sent().is_some_and(|s| s >= d.days()),
        SearchKey::Larger(n) => m.size > *n,
        SearchKey::Smaller(n) => m.size < *n,
        SearchKey::Uid(set) => set.contains(m.uid, c.largest_uid),
        SearchKey::Seq(set) => set.contains(c.seq, c.n),
        SearchKey::ModSeq(n) => m.modseq >= *n,
        SearchKey::Not(k) => !eval(k, c),
        SearchKey::Or(a, b) => eval(a, c) || eval(b, c),
        SearchKey::And(ks) => ks.iter().all(|k| eval(k, c)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::MemAccount;
    use super::*;

    struct T {
        s: Session<MemAccount>,
        acct: MemAccount,
        closed: bool,
    }

    fn settings() -> Rc<Settings> {
        Rc::new(Settings {
            hostname: "mail.example.org".into(),
            user: "alice".into(),
            domains: vec!["example.org".into()],
            tls_available: true,
            max_errors: 3,
            max_message_size: 1000,
        })
    }

    impl T {
        fn new(acct: &MemAccount, loopback: bool) -> T {
            T {
                s: Session::new(settings(), loopback, false),
                acct: acct.clone(),
                closed: false,
            }
        }

        fn logged_in(acct: &MemAccount) -> T {
            let mut t = T::new(acct, true);
            let r = t.send("l LOGIN alice secret\r\n");
            assert!(r.contains("l OK [CAPABILITY"), "{r}");
            t
        }

        /// Feeds `input` and runs the actions as the driver would.
        fn send(&mut self, input: &str) -> String {
            let mut input = input.as_bytes();
            let mut out = Vec::new();
            let mut spool = Vec::new();
            let feed = |s: &mut Session<MemAccount>, input: &mut &[u8]| {
                let spare = s.reader().spare();
                let n = spare.len().min(input.len());
                spare[..n].copy_from_slice(&input[..n]);
                s.reader().filled(n);
                *input = &input[n..];
            };
            for _ in 0..10_000 {
                match self.s.step(&mut self.acct, &mut out) {
                    Action::NeedInput | Action::Idle => {
                        if input.is_empty() {
                            break;
                        }
                        feed(&mut self.s, &mut input);
                    }
                    Action::Flush => {}
                    Action::Close => {
                        self.closed = true;
                        break;
                    }
                    Action::StartTls => self.s.tls_started(),
                    Action::Login { login, password } => {
                        let ok = self.s.is_user(&login) && password == b"secret";
                        let r = if ok {
                            LoginResult::Ok
                        } else {
                            LoginResult::BadCredentials
                        };
                        if let Some(Action::Close) = self.s.login_done(r, &mut out) {
                            self.closed = true;
                            break;
                        }
                    }
                    Action::AppendData { .. } => loop {
                        let d = self.s.reader().append_data().to_vec();
                        spool.extend_from_slice(&d);
                        self.s.reader().append_taken(d.len());
                        if self.s.reader().append_left() == 0 || input.is_empty() {
                            break;
                        }
                        feed(&mut self.s, &mut input);
                    },
                    Action::AppendAbort => spool.clear(),
                    Action::Write(w) => {
                        let done = self.acct.perform(&w, &spool);
                        spool.clear();
                        self.s.write_done(done, &mut out);
                    }
                    Action::Body(b) => out.extend_from_slice(&b),
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }

        fn idle_changes(&mut self) -> String {
            let mut out = Vec::new();
            self.s.idle_changes(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        }
    }

    fn msg(subject: &str) -> Vec<u8> {
        format!("Subject: {subject}\r\nFrom: bob@example.net\r\nDate: Wed, 17 Jul 1996 02:23:25 -0700\r\n\r\nHello {subject}\r\n").into_bytes()
    }

    fn inbox_with(n: usize) -> MemAccount {
        let acct = MemAccount::new();
        for i in 1..=n {
            acct.deliver("INBOX", &msg(&format!("m{i}")));
        }
        acct
    }

    #[test]
    fn capabilities_before_and_after_login() {
        let acct = MemAccount::new();
        // Not loopback, no TLS yet: no plaintext login (RFC 9051 6.2.3).
        let mut t = T::new(&acct, false);
        let mut g = Vec::new();
        t.s.greeting(&mut g);
        let g = String::from_utf8(g).unwrap();
        assert!(g.starts_with("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED SASL-IR LITERAL+ LITERAL- ID ENABLE IDLE]"), "{g}");
        let r = t.send("a LOGIN alice secret\r\n");
        assert_eq!(
            r,
            "a NO [PRIVACYREQUIRED] LOGIN only over TLS: use STARTTLS or port 993\r\n"
        );
        let r = t.send("b STARTTLS\r\nc NOOP\r\n");
        // The pipelined NOOP is dropped with the plaintext buffer.
        assert_eq!(r, "b OK begin TLS negotiation now\r\n");
        let r = t.send("c CAPABILITY\r\n");
        assert!(
            r.starts_with("* CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN SASL-IR"),
            "{r}"
        );
        let r = t.send("d LOGIN alice@example.org secret\r\n");
        assert!(r.starts_with("d OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ LITERAL- ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE SPECIAL-USE CHILDREN CONDSTORE ESEARCH LIST-EXTENDED LIST-STATUS STATUS=SIZE BINARY]"), "{r}");
        let r = t.send("e STARTTLS\r\n");
        assert!(r.starts_with("e BAD"), "{r}");
    }

    #[test]
    fn login_and_authenticate_plain() {
        let acct = MemAccount::new();
        let mut t = T::new(&acct, true);
        // RFC 7888 LITERAL+ in LOGIN.
        let r = t.send("A001 LOGIN {5+}\r\nalice {6+}\r\nsecreX\r\n");
        assert_eq!(
            r,
            "A001 NO [AUTHENTICATIONFAILED] invalid login or password\r\n"
        );
        // SASL-IR (RFC 4959): "\0alice\0secret".
        let ir = crate::util::base64::encode(b"\0alice\0secret");
        let r = t.send(&format!("A002 AUTHENTICATE PLAIN {ir}\r\n"));
        assert!(r.starts_with("A002 OK [CAPABILITY IMAP4rev1"), "{r}");
        let mut t = T::new(&acct, true);
        let r = t.send("A003 AUTHENTICATE PLAIN\r\n");
        assert_eq!(r, "+ \r\n");
        let r = t.send(&format!("{ir}\r\n"));
        assert!(r.starts_with("A003 OK [CAPABILITY"), "{r}");
        let mut t = T::new(&acct, true);
        assert_eq!(
            t.send("A4 AUTHENTICATE PLAIN\r\n*\r\n"),
            "+ \r\nA4 BAD authentication cancelled\r\n"
        );
        // Three failures close the session.
        let r = t.send("a LOGIN alice x\r\nb LOGIN alice y\r\nc LOGIN alice z\r\n");
        assert!(
            r.ends_with("* BYE too many failed logins, closing connection\r\n") && t.closed,
            "{r}"
        );
    }

    #[test]
    fn select_rfc9051_example_shape() {
        let acct = inbox_with(3);
        let mut t = T::logged_in(&acct);
        let r = t.send("A142 SELECT INBOX\r\n");
        let v = acct.clone().status("INBOX").unwrap().uid_validity;
        assert_eq!(
            r,
            format!(
                "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Junk $NotJunk)\r\n\
                 * 3 EXISTS\r\n* 0 RECENT\r\n* OK [UNSEEN 1] first unseen\r\n\
                 * OK [UIDVALIDITY {v}] UIDs valid\r\n* OK [UIDNEXT 4] predicted next UID\r\n\
                 * OK [HIGHESTMODSEQ 4] highest\r\n\
                 * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Junk $NotJunk \\*)] flags permitted\r\n\
                 A142 OK [READ-WRITE] SELECT completed\r\n"
            )
        );
        let r = t.send("A932 EXAMINE Sent\r\n");
        assert!(
            r.starts_with("* OK [CLOSED] previous folder closed\r\n"),
            "{r}"
        );
        assert!(
            r.ends_with("A932 OK [READ-ONLY] EXAMINE completed\r\n"),
            "{r}"
        );
        assert!(t
            .send("s STORE 1 +FLAGS \\Seen\r\n")
            .starts_with("s NO [READ-ONLY]"));
        let r = t.send("x SELECT nosuch\r\n");
        // The previous folder is closed even when the new one fails.
        assert_eq!(
            r,
            "* OK [CLOSED] previous folder closed\r\nx NO [NONEXISTENT] no such folder\r\n"
        );
        assert!(t
            .send("y FETCH 1 FLAGS\r\n")
            .starts_with("y BAD no folder selected"));
    }

    #[test]
    fn append_literals_and_limits() {
        let acct = MemAccount::new();
        let mut t = T::logged_in(&acct);
        let m = msg("hi");
        let r = t.send(&format!(
            "A003 APPEND Drafts (\\Seen \\Draft) \" 7-Feb-1994 21:52:25 -0800\" {{{}}}\r\n{}\r\n",
            m.len(),
            String::from_utf8_lossy(&m)
        ));
        let v = acct.clone().status("Drafts").unwrap().uid_validity;
        assert_eq!(
            r,
            format!("+ ready for the message\r\nA003 OK [APPENDUID {v} 1] APPEND completed\r\n")
        );
        // LITERAL+: no continuation.
        let r = t.send("A004 APPEND Drafts {3+}\r\nabc\r\n");
        assert_eq!(r, format!("A004 OK [APPENDUID {v} 2] APPEND completed\r\n"));
        // RFC 9051 6.3.12: no such folder -> TRYCREATE, before the octets.
        assert_eq!(
            t.send("A5 APPEND Nope {3}\r\n"),
            "A5 NO [TRYCREATE] no such folder\r\n"
        );
        // Over max_message_size: refused before it is read.
        assert_eq!(
            t.send("A6 APPEND Drafts {5000}\r\nA7 NOOP\r\n"),
            "A6 NO [TOOBIG] message too large (5000 octets, 1000 at most)\r\nA7 OK NOOP completed\r\n"
        );
        let r = t.send("A8 APPEND Drafts {5000+}\r\nxxxx");
        assert!(
            r.starts_with("A8 BAD [TOOBIG]")
                && r.ends_with("* BYE closing connection\r\n")
                && t.closed,
            "{r}"
        );
        let s = acct.clone().status("Drafts").unwrap();
        assert_eq!(s.messages, 2);
    }

    #[test]
    fn append_to_selected_folder_reports_exists() {
        let acct = inbox_with(1);
        let mut t = T::logged_in(&acct);
        t.send("s SELECT INBOX\r\n");
        let r = t.send("a APPEND INBOX {3+}\r\nabc\r\n");
        assert!(r.starts_with("* 2 EXISTS\r\na OK [APPENDUID"), "{r}");
    }

    #[test]
    fn binary_answers_in_literal8_and_sent_keys_read_the_date() {
        let acct = inbox_with(2);
        let mut t = T::logged_in(&acct);
        t.send("s SELECT INBOX\r\n");
        // RFC 3516 4.3: BINARY data in a literal8 (it may hold NUL).
        let r = t.send("a FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])\r\n");
        assert_eq!(
            r,
            "* 1 FETCH (BINARY[1] ~{10}\r\nHello m1\r\n BINARY.SIZE[1] 10)\r\na OK FETCH completed\r\n"
        );
        // RFC 9051 6.4.4: SENTON compares the Date: header's day
        // (17 Jul 1996 in its own zone), not INTERNALDATE.
        assert_eq!(
            t.send("b SEARCH SENTON 17-Jul-1996\r\n"),
            "* SEARCH 1 2\r\nb OK SEARCH completed\r\n"
        );
        assert_eq!(
            t.send("c SEARCH SENTBEFORE 17-Jul-1996\r\nd SEARCH SENTSINCE 18-Jul-1996\r\n"),
            "* SEARCH\r\nc OK SEARCH completed\r\n* SEARCH\r\nd OK SEARCH completed\r\n"
        );
    }

    #[test]
    fn fetch_items_and_streamed_bodies() {
        let acct = inbox_with(2);
        let mut t = T::logged_in(&acct);
        t.send("s SELECT INBOX\r\n");
        let r = t.send("a FETCH 1:* (UID FLAGS RFC822.SIZE)\r\n");
        let n = msg("m1").len();
        assert_eq!(r, format!("* 1 FETCH (UID 1 FLAGS () RFC822.SIZE {n})\r\n* 2 FETCH (UID 2 FLAGS () RFC822.SIZE {n})\r\na OK FETCH completed\r\n"));
        let r = t.send("b FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] INTERNALDATE)\r\n");
        assert_eq!(r, "* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: m2\r\n\r\n INTERNALDATE \"14-Nov-2023 22:13:20 +0000\")\r\nb OK FETCH completed\r\n");
        // BODY[] sets \Seen and reports the new flags (RFC 9051 6.4.5).
        let r = t.send("c FETCH 1 BODY[]<0.7>\r\n");
        assert_eq!(
            r,
            "* 1 FETCH (BODY[]<0> {7}\r\nSubject FLAGS (\\Seen))\r\nc OK FETCH completed\r\n"
        );
        let r = t.send("d UID FETCH 2 (BODY[TEXT] ENVELOPE BODYSTRUCTURE)\r\n");
        assert!(r.starts_with("* 2 FETCH (UID 2 BODY[TEXT] {10}\r\nHello m2\r\n ENVELOPE (\"Wed, 17 Jul 1996 02:23:25 -0700\" \"m2\" ((NIL NIL \"bob\" \"example.net\"))"), "{r}");
        assert!(r.contains(" BODYSTRUCTURE (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 10 1 NIL NIL NIL NIL)"), "{r}");
        assert!(t
            .send("e FETCH 3 FLAGS\r\n")
            .starts_with("e BAD message sequence number out of range"));
        // Repeated ranges name each message once, in order.
        let many = vec!["2,1:*"; 2000].join(",");
        assert_eq!(
            t.send(&format!("r FETCH {many} UID\r\n")),
            "* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\nr OK FETCH completed\r\n"
        );
        // UID FETCH of UIDs that do not exist: nothing, OK (RFC 9051 6.4.8).
        assert_eq!(
            t.send("f UID FETCH 7:9 FLAGS\r\n"),
            "f OK FETCH completed\r\n"
        );
        // CONDSTORE (RFC 7162 3.1.4.1).
        let r = t.send("g FETCH 1:* (FLAGS) (CHANGEDSINCE 3)\r\n");
        assert_eq!(r, "* 1 FETCH (FLAGS (\\Seen) MODSEQ (4))\r\n* 2 FETCH (FLAGS (\\Seen) MODSEQ (5))\r\ng OK FETCH completed\r\n");
    }

    #[test]
    fn store_and_condstore_modified() {
        let acct = inbox_with(3);
        let mut t = T::logged_in(&acct);
        t.send("s SELECT INBOX (CONDSTORE)\r\n");
        let r = t.send("A003 STORE 2:3 +FLAGS (\\Deleted)\r\n");
        assert_eq!(r, "* 2 FETCH (FLAGS (\\Deleted) MODSEQ (5))\r\n* 3 FETCH (FLAGS (\\Deleted) MODSEQ (6))\r\nA003 OK STORE completed\r\n");
        assert_eq!(
            t.send("A4 STORE 2 -FLAGS.SILENT (\\Deleted)\r\n"),
            "A4 OK STORE completed\r\n"
        );
        // RFC 7162 3.1.3: message 3 changed after 5.
        let r = t.send("d105 STORE 1,3 (UNCHANGEDSINCE 5) +FLAGS.SILENT ($Junk)\r\n");
        assert_eq!(r, "* 1 FETCH (MODSEQ (8))\r\nd105 OK [MODIFIED 3] conditional STORE failed for some messages\r\n");
        let r = t.send("u UID STORE 1 FLAGS ($NotJunk)\r\n");
        assert_eq!(
            r,
            "* 1 FETCH (UID 1 FLAGS ($NotJunk) MODSEQ (9))\r\nu OK STORE completed\r\n"
        );
    }

    #[test]
    fn search_and_esearch() {
        let acct = inbox_with(5);
        let mut t = T::logged_in(&acct);
        t.send("s SELECT INBOX\r\nf STORE 2,4 +FLAGS.SILENT \\Flagged\r\n");
        assert_eq!(
            t.send("a SEARCH FLAGGED\r\n"),
            "* SEARCH 2 4\r\na OK SEARCH completed\r\n"
        );
        assert_eq!(
            t.send("b SEARCH NOT FLAGGED SUBJECT m3\r\n"),
            "* SEARCH 3\r\nb OK SEARCH completed\r\n"
        );
        assert_eq!(
            t.send("c UID SEARCH OR 1 BODY \"hello M5\"\r\n"),
            "* SEARCH 1 5\r\nc OK SEARCH completed\r\n"
        );
        assert_eq!(
            t.send("A282 SEARCH RETURN (MIN COUNT) UNFLAGGED\r\n"),
            "* ESEARCH (TAG \"A282\") MIN 1 COUNT 3\r\nA282 OK SEARCH completed\r\n"
        );
        assert_eq!(
            t.send("A283 SEARCH RETURN () ALL\r\n"),
            "* ESEARCH (TAG \"A283\") ALL 1:5\r\nA283 OK SEARCH completed\r\n"
        );
        assert_eq!(
            t.send("d SEARCH SINCE 1-Jan-2024\r\n"),
            "* SEARCH\r\nd OK SEARCH completed\r\n"
        );
        assert_eq!(
            t.send("e SEARCH ON 14-Nov-2023 LARGER 10 MODSEQ 7\r\n"),
            "* SEARCH 2 4 (MODSEQ 8)\r\ne OK SEARCH completed\r\n"
        );
        assert_eq!(
            t.send("f SEARCH CHARSET KOI8-R ALL\r\n"),
            "f NO [BADCHARSET (UTF-8 US-ASCII)] only UTF-8 and US-ASCII searches\r\n"
        );
        assert_eq!(
            t.send("g SEARCH HEADER From bob\r\n"),
            "* SEARCH 1 2 3 4 5\r\ng OK SEARCH completed\r\n"
        );
    }

    #[test]
    fn expunge_rfc9051_example() {
        // RFC 9051 6.4.3: 3, 4, 7 and 11 deleted.
        let acct = inbox_with(11);
        let mut t = T::logged_in(&acct);
        t.send("s SELECT INBOX\r\nd STORE 3,4,7,11 +FLAGS.SILENT (\\Deleted)\r\n");
        let r = t.send("A202 EXPUNGE\r\n");
        assert_eq!(r, "* 3 EXPUNGE\r\n* 3 EXPUNGE\r\n* 5 EXPUNGE\r\n* 8 EXPUNGE\r\nA202 OK EXPUNGE completed\r\n");
        // RFC 4315 2.1: UID EXPUNGE removes only the listed \Deleted.
        t.send("d STORE 1:2 +FLAGS.SILENT (\\Deleted)\r\n");
        assert_eq!(
            t.send("A003 UID EXPUNGE 2:4\r\n"),
            "* 2 EXPUNGE\r\nA003 OK EXPUNGE completed\r\n"
        );
        assert_eq!(acct.clone().status("INBOX").unwrap().messages, 6);
        // CLOSE expunges silently (RFC 9051 6.4.1).
        assert_eq!(t.send("c CLOSE\r\n"), "c OK CLOSE completed\r\n");
        assert_eq!(acct.clone().status("INBOX").unwrap().messages, 5);
    }

    #[test]
    fn copy_and_move_with_uidplus() {
        let acct = inbox_with(3);
        let mut t = T::logged_in(&acct);
        t.send("s SELECT INBOX\r\n");
        let v = acct.clone().status("Archive").unwrap().uid_validity;
        assert_eq!(
            t.send("A003 COPY 2:3 Archive\r\n"),
            format!("A003 OK [COPYUID {v} 2:3 1:2] COPY completed\r\n")
        );
        assert_eq!(
            t.send("A4 COPY 1 Nope\r\n"),
            "A4 NO [TRYCREATE] no such folder\r\n"
        );
        // RFC 6851 4.3 example shape.
        let tv = acct.clone().status("Trash").unwrap().uid_validity;
        let r = t.send("a UID MOVE 2:3 Trash\r\n");
        assert_eq!(r, format!("* OK [COPYUID {tv} 2:3 1:2] moved\r\n* 2 EXPUNGE\r\n* 2 EXPUNGE\r\na OK MOVE completed\r\n"));
        assert_eq!(acct.clone().status("INBOX").unwrap().messages, 1);
    }

    #[test]
    fn other_sessions_changes_and_rfc2180_expunges() {
        let acct = inbox_with(3);
        let mut a = T::logged_in(&acct);
        let mut b = T::logged_in(&acct);
        a.send("s SELECT INBOX\r\n");
        b.send("s SELECT INBOX\r\n");
        acct.deliver("INBOX", &msg("new"));
        b.send("x STORE 1 +FLAGS (\\Deleted)\r\n");
        let r = a.send("n NOOP\r\n");
        assert_eq!(
            r,
            "* 1 FETCH (UID 1 FLAGS (\\Deleted))\r\n* 4 EXISTS\r\nn OK NOOP completed\r\n"
        );
        b.send("e EXPUNGE\r\n");
        // Not during FETCH (RFC 2180 4.1.2): the number stays, NO.
        let r = a.send("f FETCH 1:2 UID\r\n");
        assert_eq!(
            r,
            "* 2 FETCH (UID 2)\r\nf NO [EXPUNGEISSUED] some messages were expunged\r\n"
        );
        assert_eq!(
            a.send("n NOOP\r\n"),
            "* 1 EXPUNGE\r\nn OK NOOP completed\r\n"
        );
        // New mail and its expunge in one batch: EXISTS comes first.
        let u = acct.deliver("INBOX", &msg("brief")).unwrap();
        acct.perform(
            &Write::Expunge {
                folder: "INBOX".into(),
                uids: vec![u],
            },
            b"",
        );
        assert_eq!(
            a.send("n NOOP\r\n"),
            "* 4 EXISTS\r\n* 4 EXPUNGE\r\nn OK NOOP completed\r\n"
        );
        // IDLE hears of new mail (RFC 2177).
        assert_eq!(a.send("i IDLE\r\n"), "+ idling\r\n");
        acct.deliver("INBOX", &msg("pushed"));
        assert_eq!(a.idle_changes(), "* 4 EXISTS\r\n");
        assert_eq!(a.idle_changes(), "");
        assert_eq!(a.send("DONE\r\n"), "i OK IDLE terminated\r\n");
    }

    #[test]
    fn folders_list_status_and_errors() {
        let acct = inbox_with(2);
        let mut t = T::logged_in(&acct);
        let r = t.send("a LIST \"\" *\r\n");
        assert_eq!(
            r,
            "* LIST (\\NoInferiors) \"/\" INBOX\r\n* LIST (\\NoInferiors \\Archive) \"/\" \"Archive\"\r\n\
             * LIST (\\NoInferiors \\Drafts) \"/\" \"Drafts\"\r\n* LIST (\\NoInferiors \\Junk) \"/\" \"Junk\"\r\n\
             * LIST (\\NoInferiors \\Sent) \"/\" \"Sent\"\r\n* LIST (\\NoInferiors \\Trash) \"/\" \"Trash\"\r\na OK LIST completed\r\n"
        );
        assert_eq!(
            t.send("b LIST \"\" \"\"\r\n"),
            "* LIST (\\Noselect) \"/\" \"\"\r\nb OK LIST completed\r\n"
        );
        assert_eq!(
            t.send("c CREATE Lists/\r\nd CREATE Lists/rust\r\n"),
            "c OK completed\r\nd OK completed\r\n"
        );
        assert_eq!(
            t.send("e CREATE Sent/x\r\n"),
            "e NO [CANNOT] Sent holds mail, not folders\r\n"
        );
        assert_eq!(
            t.send("f CREATE INBOX\r\n"),
            "f NO [ALREADYEXISTS] INBOX always exists\r\n"
        );
        // INBOX is the mbox, a file: nothing below it, in any case.
        assert_eq!(
            t.send("f CREATE inbox/sub\r\nf2 RENAME Lists/rust INBOX/rust\r\n"),
            "f NO [CANNOT] INBOX holds mail, not folders (\\NoInferiors)\r\n\
             f2 NO [CANNOT] INBOX holds mail, not folders (\\NoInferiors)\r\n"
        );
        assert_eq!(
            t.send("f CREATE Drafts\r\n"),
            "f NO [ALREADYEXISTS] folder already exists\r\n"
        );
        assert_eq!(
            t.send("g LIST \"\" Lists/%\r\n"),
            "* LIST (\\NoInferiors) \"/\" \"Lists/rust\"\r\ng OK LIST completed\r\n"
        );
        assert_eq!(
            t.send("h LIST \"\" % RETURN (CHILDREN)\r\n")
                .lines()
                .find(|l| l.contains("Lists")),
            Some("* LIST (\\Noselect \\HasChildren) \"/\" \"Lists\"")
        );
        assert_eq!(
            t.send("i LIST (SPECIAL-USE) \"\" * RETURN (STATUS (MESSAGES UIDNEXT))\r\n")
                .lines()
                .take(2)
                .collect::<Vec<_>>(),
            vec![
                "* LIST (\\NoInferiors \\Archive) \"/\" \"Archive\"",
                "* STATUS \"Archive\" (MESSAGES 0 UIDNEXT 1)"
            ]
        );
        assert_eq!(
            t.send("j STATUS INBOX (MESSAGES UNSEEN SIZE DELETED RECENT)\r\n"),
            format!("* STATUS INBOX (MESSAGES 2 UNSEEN 2 SIZE {} DELETED 0 RECENT 0)\r\nj OK STATUS completed\r\n", 2 * msg("m1").len())
        );
        assert_eq!(
            t.send("k UNSUBSCRIBE Junk\r\nl LSUB \"\" J*\r\n"),
            "k OK UNSUBSCRIBE completed\r\nl OK LSUB completed\r\n"
        );
        assert_eq!(
            t.send("m RENAME Lists/rust Lists/go\r\nn DELETE Lists/go\r\n"),
            "m OK completed\r\nn OK completed\r\n"
        );
        assert_eq!(
            t.send("o DELETE INBOX\r\n"),
            "o NO [CANNOT] INBOX cannot be deleted\r\n"
        );
        // Modified UTF-7 names (RFC 3501 5.1.3).
        assert_eq!(t.send("p CREATE Entw&APw-rfe\r\n"), "p OK completed\r\n");
        assert!(t.send("q LIST \"\" Entw*\r\n").contains("\"Entw&APw-rfe\""));
        assert!(t
            .send("r CREATE &U/BTFw-\r\n")
            .starts_with("r BAD invalid mailbox name"));
        assert_eq!(
            t.send("s ENABLE CONDSTORE X-FOO\r\n"),
            "* ENABLED CONDSTORE\r\ns OK ENABLE completed\r\n"
        );
        assert_eq!(
            t.send("t NAMESPACE\r\n"),
            "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\nt OK NAMESPACE completed\r\n"
        );
        assert!(t
            .send("u ID NIL\r\n")
            .starts_with("* ID (\"name\" \"pimail\""));
    }

    #[test]
    fn bad_commands_in_a_row_get_bye() {
        let acct = MemAccount::new();
        let mut t = T::logged_in(&acct);
        let r = t.send("a FROB\r\nb NOOP\r\nc FROB\r\nd FETCH\r\ne\r\n");
        assert!(!t.closed, "{r}");
        assert!(
            r.contains("a BAD unknown command\r\n")
                && r.contains("* BAD missing or invalid tag\r\n"),
            "{r}"
        );
        let r = t.send("f x\r\n");
        assert!(
            r.ends_with("* BYE too many bad commands, closing connection\r\n") && t.closed,
            "{r}"
        );
        let mut t = T::logged_in(&acct);
        assert_eq!(
            t.send("z LOGOUT\r\n"),
            "* BYE pimail signing off\r\nz OK LOGOUT completed\r\n"
        );
        assert!(t.closed);
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*", b"a/b/c"));
        assert!(wildcard_match(b"%", b"Sent"));
        assert!(!wildcard_match(b"%", b"Lists/rust"));
        assert!(wildcard_match(b"Lists/%", b"Lists/rust"));
        assert!(wildcard_match(b"L*t", b"Lists/rust"));
        assert!(!wildcard_match(b"L%t", b"Lists/rust"));
        assert!(wildcard_match(b"", b""));
        assert!(!wildcard_match(b"Sent", b"Sent2"));
        assert!(wildcard_match(b"%/%", b"a/b"));
    }
}
