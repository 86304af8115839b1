//! The POP3 session state machine (RFC 1939 sections 3-6), sans I/O: lines
//! in, replies and actions out. The async driver in `conn` checks
//! passwords, opens the maildrop, streams messages and rewrites the mbox
//! when told to.
//!
//! States: AUTHORIZATION (USER/PASS, AUTH PLAIN of RFC 5034, CAPA of RFC
//! 2449, STLS of RFC 2595), TRANSACTION, and UPDATE (entered by QUIT only:
//! a dropped connection deletes nothing). Error replies carry the response
//! codes of RFC 2449 and RFC 3206 (`[AUTH]`, `[IN-USE]`, `[SYS/TEMP]`).

use super::command::{self, Command, ParseError};
use crate::net::line::LineError;
use crate::store::maildrop::{Expunge, Message, Stamp};
use std::borrow::Cow;
use std::rc::Rc;

/// What a session needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    /// The one user's login name (also accepted as `name@domain`).
    pub user: String,
    pub domains: Vec<String>,
    /// A certificate is configured: STLS can be offered.
    pub tls_available: bool,
    /// Bad commands tolerated before the connection is closed.
    pub max_errors: u32,
}

/// Failed logins in one session before it is closed.
const MAX_AUTH_FAILURES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(Cow<'static, str>),
    Err(Cow<'static, str>),
    /// `+OK first`, then `body` (CRLF-terminated lines, none starting with
    /// a dot), then the terminating `.`.
    Multi {
        first: String,
        body: String,
    },
    /// A SASL challenge (`+ ` and base64; RFC 5034 section 4).
    Challenge(String),
}

impl Reply {
    fn ok(s: impl Into<Cow<'static, str>>) -> Self {
        Reply::Ok(s.into())
    }
    fn err(s: impl Into<Cow<'static, str>>) -> Self {
        Reply::Err(s.into())
    }

    pub fn is_err(&self) -> bool {
        matches!(self, Reply::Err(_))
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut line = |s: &str| {
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        match self {
            Reply::Ok(t) if t.is_empty() => line("+OK"),
            Reply::Ok(t) => line(&format!("+OK {t}")),
            Reply::Err(t) => line(&format!("-ERR {t}")),
            Reply::Challenge(t) => line(&format!("+ {t}")),
            Reply::Multi { first, body } => {
                line(&format!("+OK {first}"));
                out.extend_from_slice(body.as_bytes());
                out.extend_from_slice(b".\r\n");
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// Write the reply, then close the connection.
    Close,
    /// Write the reply, discard buffered input (RFC 2595 section 4), run
    /// the TLS handshake, then call [`Session::tls_started`].
    StartTls,
    /// Check the password (slow: argon2), take the maildrop, then call
    /// [`Session::login_result`]. No reply is written before that.
    Authenticate {
        login: String,
        password: Vec<u8>,
    },
    /// Write the reply, then message `index` (0-based): all of it, or its
    /// headers and `top` body lines; then the terminating `.`.
    Send {
        index: usize,
        top: Option<u64>,
    },
    /// Remove the deleted messages (UPDATE state), then call
    /// [`Session::updated`]. No reply is written before that.
    Update(Expunge),
}

#[derive(Debug)]
pub struct Step {
    /// `None` only with `Authenticate` and `Update`.
    pub reply: Option<Reply>,
    pub action: Action,
}

impl Step {
    fn reply(r: Reply) -> Self {
        Step {
            reply: Some(r),
            action: Action::None,
        }
    }
    fn close(r: Reply) -> Self {
        Step {
            reply: Some(r),
            action: Action::Close,
        }
    }
    fn action(action: Action) -> Self {
        Step {
            reply: None,
            action,
        }
    }
}

/// How the driver's login attempt ended.
#[derive(Debug)]
pub enum LoginResult {
    /// Wrong name or password (the driver has already delayed).
    BadCredentials,
    /// Too many failures from the client's address: refused unchecked.
    Blocked,
    /// Another session holds the maildrop.
    InUse,
    /// The maildrop could not be opened (locked too long, I/O error).
    Failed(String),
    Opened {
        messages: Vec<Message>,
        stamp: Stamp,
    },
}

struct Maildrop {
    messages: Vec<Message>,
    stamp: Stamp,
    deleted: Vec<bool>,
}

impl Maildrop {
    fn live(&self) -> impl Iterator<Item = (usize, &Message)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
    }

    fn totals(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size))
    }

    /// The 0-based index of message `n`, or the error reply.
    fn find(&self, n: u32) -> Result<usize, Reply> {
        let i = n as usize - 1;
        if i >= self.messages.len() {
            Err(Reply::err(format!(
                "no such message, only {} in maildrop",
                self.messages.len()
            )))
        } else if self.deleted[i] {
            Err(Reply::err(format!("message {n} already deleted")))
        } else {
            Ok(i)
        }
    }
}

enum State {
    Authorization {
        user: Option<String>,
    },
    /// AUTH PLAIN sent without an initial response: the next line is it.
    SaslPlain,
    /// Waiting for [`Session::login_result`].
    Authenticating,
    Transaction(Maildrop),
    /// Waiting for [`Session::updated`].
    Update,
}

pub struct Session {
    settings: Rc<Settings>,
    /// Plaintext passwords are allowed: over TLS or on loopback (SPEC).
    loopback: bool,
    secure: bool,
    state: State,
    errors: u32,
    auth_failures: u32,
    /// The login name of the current attempt or session (for logs).
    login: Option<String>,
}

impl Session {
    pub fn new(settings: Rc<Settings>, loopback: bool, secure: bool) -> Self {
        Session {
            settings,
            loopback,
            secure,
            state: State::Authorization { user: None },
            errors: 0,
            auth_failures: 0,
            login: None,
        }
    }

    pub fn greeting(&self) -> Reply {
        Reply::ok(format!("{} POP3 pimail ready", self.settings.hostname))
    }

    /// RFC 1939 section 3: the autologout timer expired (no UPDATE state).
    pub fn timeout(&self) -> Reply {
        Reply::err("[SYS/TEMP] autologout timer expired, closing connection")
    }

    pub fn shutting_down(&self) -> Reply {
        Reply::err("[SYS/TEMP] server shutting down, try again later")
    }

    /// After the STLS handshake (or from the start on port 995): nothing of
    /// before is kept (RFC 2595 section 4).
    pub fn tls_started(&mut self) {
        self.secure = true;
        self.state = State::Authorization { user: None };
    }

    pub fn login(&self) -> Option<&str> {
        self.login.as_deref()
    }

    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Transaction(_))
    }

    fn plaintext_ok(&self) -> bool {
        self.secure || self.loopback
    }

    /// Handles one input line (or line-level error); the one place where
    /// errors are counted and an abusive client is dropped.
    pub fn line(&mut self, line: Result<&[u8], LineError>) -> Step {
        let mut step = match line {
            Ok(l) => self.command(l),
            Err(LineError::TooLong) => Step::reply(Reply::err("line too long")),
            Err(LineError::BareLf) | Err(LineError::BareCr) => {
                Step::reply(Reply::err("lines must end with CRLF"))
            }
        };
        if step.reply.as_ref().is_some_and(Reply::is_err) && step.action == Action::None {
            self.errors += 1;
            if self.errors >= self.settings.max_errors {
                step = Step::close(Reply::err("too many errors, closing connection"));
            }
        }
        step
    }

    fn command(&mut self, line: &[u8]) -> Step {
        if let State::SaslPlain = self.state {
            self.state = State::Authorization { user: None };
            if line == b"*" {
                return Step::reply(Reply::err("authentication cancelled"));
            }
            let Ok(text) = std::str::from_utf8(line) else {
                return Step::reply(Reply::err("invalid base64"));
            };
            return self.sasl_plain(text);
        }
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(ParseError::Unknown) => return Step::reply(Reply::err("unknown command")),
            Err(ParseError::Syntax(why)) => return Step::reply(Reply::err(why)),
        };
        match cmd {
            Command::Capa => return Step::reply(self.capa()),
            Command::Noop => return Step::reply(Reply::ok("")),
            _ => {}
        }
        match &mut self.state {
            State::Authorization { user } => match cmd {
                Command::Quit => Step::close(Reply::ok(format!(
                    "{} POP3 pimail signing off",
                    self.settings.hostname
                ))),
                Command::Stls => self.stls(),
                Command::User(name) => {
                    if !(self.secure || self.loopback) {
                        return Step::reply(plaintext_refused());
                    }
                    *user = Some(name);
                    Step::reply(Reply::ok("send PASS"))
                }
                Command::Pass(password) => {
                    let Some(login) = user.take() else {
                        return Step::reply(Reply::err("send USER first"));
                    };
                    self.authenticate(login, password)
                }
                Command::Auth { mechanism, initial } => match mechanism.as_deref() {
                    // Not in RFC 5034, but clients probe with it.
                    None => Step::reply(Reply::Multi {
                        first: "SASL mechanisms follow".into(),
                        body: "PLAIN\r\n".into(),
                    }),
                    Some("PLAIN") => {
                        if !self.plaintext_ok() {
                            return Step::reply(plaintext_refused());
                        }
                        match initial {
                            Some(i) => self.sasl_plain(&i),
                            None => {
                                self.state = State::SaslPlain;
                                Step::reply(Reply::Challenge(String::new()))
                            }
                        }
                    }
                    Some(_) => Step::reply(Reply::err("unsupported SASL mechanism, use PLAIN")),
                },
                _ => Step::reply(Reply::err(
                    "not valid before login: use USER/PASS or AUTH PLAIN",
                )),
            },
            State::Transaction(md) => transaction(md, cmd, &self.settings),
            // The driver feeds no lines while it works on an action.
            State::SaslPlain | State::Authenticating | State::Update => {
                Step::reply(Reply::err("[SYS/TEMP] busy"))
            }
        }
    }

    fn capa(&self) -> Reply {
        let mut body =
            String::from("TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        if matches!(self.state, State::Authorization { .. }) {
            if self.plaintext_ok() {
                body += "USER\r\nSASL PLAIN\r\n";
            }
            if self.settings.tls_available && !self.secure {
                body += "STLS\r\n";
            }
        }
        body += "EXPIRE NEVER\r\nIMPLEMENTATION pimail\r\n";
        Reply::Multi {
            first: "capability list follows".into(),
            body,
        }
    }

    fn stls(&mut self) -> Step {
        if self.secure {
            Step::reply(Reply::err("already using TLS"))
        } else if !self.settings.tls_available {
            Step::reply(Reply::err("STLS not available: no certificate configured"))
        } else {
            Step {
                reply: Some(Reply::ok("begin TLS negotiation")),
                action: Action::StartTls,
            }
        }
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`, base64-encoded.
    fn sasl_plain(&mut self, b64: &str) -> Step {
        // RFC 5034 section 4: "=" is an empty initial response.
        let decoded = if b64 == "=" {
            Some(Vec::new())
        } else {
            crate::util::base64::decode(b64)
        };
        let Some(raw) = decoded else {
            return Step::reply(Reply::err("invalid base64"));
        };
        let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        let [authz, authc, password] = parts.as_slice() else {
            return Step::reply(Reply::err("malformed PLAIN response"));
        };
        let (Ok(authz), Ok(authc)) = (std::str::from_utf8(authz), std::str::from_utf8(authc))
        else {
            return Step::reply(Reply::err("[AUTH] invalid login or password"));
        };
        if !authz.is_empty() && authz != authc {
            return Step::reply(Reply::err("[AUTH] cannot act for another user"));
        }
        self.authenticate(authc.to_string(), password.to_vec())
    }

    fn authenticate(&mut self, login: String, password: Vec<u8>) -> Step {
        self.state = State::Authenticating;
        self.login = Some(login.clone());
        Step::action(Action::Authenticate { login, password })
    }

    /// Is `login` our user? For the driver, before it checks the password.
    pub fn is_user(&self, login: &str) -> bool {
        crate::user::auth::is_user(login, &self.settings.user, &self.settings.domains)
    }

    pub fn login_result(&mut self, r: LoginResult) -> Step {
        let (reply, failure) = match r {
            LoginResult::BadCredentials => (Reply::err("[AUTH] invalid login or password"), true),
            // RFC 3206: temporary, so clients retry later instead of
            // asking the user for another password.
            LoginResult::Blocked => (
                Reply::err("[SYS/TEMP] too many failed logins from your address, try again later"),
                true,
            ),
            LoginResult::InUse => (
                Reply::err("[IN-USE] maildrop in use by another session, try again later"),
                false,
            ),
            LoginResult::Failed(why) => (
                Reply::err(format!("[SYS/TEMP] cannot open maildrop: {why}")),
                false,
            ),
            LoginResult::Opened { messages, stamp } => {
                let deleted = vec![false; messages.len()];
                let md = Maildrop {
                    messages,
                    stamp,
                    deleted,
                };
                let (n, size) = md.totals();
                self.state = State::Transaction(md);
                return Step::reply(Reply::ok(format!(
                    "maildrop has {n} messages ({size} octets)"
                )));
            }
        };
        self.state = State::Authorization { user: None };
        if failure {
            self.auth_failures += 1;
            if self.auth_failures >= MAX_AUTH_FAILURES {
                return Step::close(Reply::err(
                    "[AUTH] too many failed logins, closing connection",
                ));
            }
        }
        Step::reply(reply)
    }

    /// The UPDATE state's outcome: how many messages were removed, or why
    /// none were. The connection closes either way (RFC 1939 section 6).
    pub fn updated(&mut self, r: Result<usize, String>) -> Step {
        self.state = State::Update;
        match r {
            Ok(n) => Step::close(Reply::ok(format!(
                "{} POP3 pimail signing off ({n} messages deleted)",
                self.settings.hostname
            ))),
            Err(why) => Step::close(Reply::err(format!(
                "[SYS/TEMP] deleted messages not removed: {why}"
            ))),
        }
    }

    /// The message a `Send` action refers to.
    pub fn message(&self, index: usize) -> Option<&Message> {
        match &self.state {
            State::Transaction(md) => md.messages.get(index),
            _ => None,
        }
    }
}

fn plaintext_refused() -> Reply {
    Reply::err("[AUTH] plaintext login is allowed only over TLS: use STLS or port 995")
}

fn transaction(md: &mut Maildrop, cmd: Command, settings: &Settings) -> Step {
    match cmd {
        Command::Stat => {
            let (n, size) = md.totals();
            Step::reply(Reply::ok(format!("{n} {size}")))
        }
        Command::List(None) => {
            let (n, size) = md.totals();
            let mut body = String::with_capacity(n * 12);
            for (i, m) in md.live() {
                body += &format!("{} {}\r\n", i + 1, m.size);
            }
            Step::reply(Reply::Multi {
                first: format!("{n} messages ({size} octets)"),
                body,
            })
        }
        Command::List(Some(n)) => match md.find(n) {
            Ok(i) => Step::reply(Reply::ok(format!("{n} {}", md.messages[i].size))),
            Err(r) => Step::reply(r),
        },
        Command::Uidl(None) => {
            let mut body = String::with_capacity(md.messages.len() * 24);
            for (i, m) in md.live() {
                body += &format!("{} {}\r\n", i + 1, m.uid);
            }
            Step::reply(Reply::Multi {
                first: "unique-id listing follows".into(),
                body,
            })
        }
        Command::Uidl(Some(n)) => match md.find(n) {
            Ok(i) => Step::reply(Reply::ok(format!("{n} {}", md.messages[i].uid))),
            Err(r) => Step::reply(r),
        },
        Command::Retr(n) => match md.find(n) {
            Ok(i) => Step {
                reply: Some(Reply::ok(format!("{} octets", md.messages[i].size))),
                action: Action::Send {
                    index: i,
                    top: None,
                },
            },
            Err(r) => Step::reply(r),
        },
        Command::Top(n, lines) => match md.find(n) {
            Ok(i) => Step {
                reply: Some(Reply::ok("top of message follows")),
                action: Action::Send {
                    index: i,
                    top: Some(lines),
                },
            },
            Err(r) => Step::reply(r),
        },
        Command::Dele(n) => match md.find(n) {
            Ok(i) => {
                md.deleted[i] = true;
                Step::reply(Reply::ok(format!("message {n} deleted")))
            }
            Err(r) => Step::reply(r),
        },
        Command::Rset => {
            md.deleted.iter_mut().for_each(|d| *d = false);
            let (n, size) = md.totals();
            Step::reply(Reply::ok(format!(
                "maildrop has {n} messages ({size} octets)"
            )))
        }
        Command::Quit => {
            if !md.deleted.iter().any(|&d| d) {
                return Step::close(Reply::ok(format!(
                    "{} POP3 pimail signing off (0 messages deleted)",
                    settings.hostname
                )));
            }
            Step::action(Action::Update(Expunge {
                messages: std::mem::take(&mut md.messages),
                stamp: md.stamp.clone(),
                deleted: std::mem::take(&mut md.deleted),
            }))
        }
        Command::Stls => Step::reply(Reply::err("STLS only before login")),
        Command::User(_) | Command::Pass(_) | Command::Auth { .. } => {
            Step::reply(Reply::err("already logged in"))
        }
        Command::Capa | Command::Noop => Step::reply(Reply::ok("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(tls: bool) -> Rc<Settings> {
        Rc::new(Settings {
            hostname: "mail.example.org".into(),
            user: "alice".into(),
            domains: vec!["example.org".into()],
            tls_available: tls,
            max_errors: 10,
        })
    }

    fn wire(step: &Step) -> String {
        let mut out = Vec::new();
        if let Some(r) = &step.reply {
            r.write_to(&mut out);
        }
        String::from_utf8(out).unwrap()
    }

    fn run(s: &mut Session, line: &str) -> Step {
        s.line(Ok(line.as_bytes()))
    }

    fn msg(size: u64, uid: &str) -> Message {
        Message {
            offset: 0,
            start: 0,
            end: 0,
            size,
            uid: uid.into(),
        }
    }

    fn logged_in() -> Session {
        let mut s = Session::new(settings(false), true, false);
        run(&mut s, "USER alice");
        let step = run(&mut s, "PASS secret");
        assert_eq!(
            step.action,
            Action::Authenticate {
                login: "alice".into(),
                password: b"secret".to_vec()
            }
        );
        let stamp = Stamp::default();
        let step = s.login_result(LoginResult::Opened {
            messages: vec![msg(100, "a"), msg(200, "b")],
            stamp,
        });
        assert_eq!(wire(&step), "+OK maildrop has 2 messages (300 octets)\r\n");
        s
    }

    #[test]
    fn transaction_commands() {
        let mut s = logged_in();
        assert_eq!(wire(&run(&mut s, "STAT")), "+OK 2 300\r\n");
        assert_eq!(
            wire(&run(&mut s, "LIST")),
            "+OK 2 messages (300 octets)\r\n1 100\r\n2 200\r\n.\r\n"
        );
        assert_eq!(wire(&run(&mut s, "UIDL 2")), "+OK 2 b\r\n");
        assert_eq!(wire(&run(&mut s, "DELE 1")), "+OK message 1 deleted\r\n");
        assert_eq!(
            wire(&run(&mut s, "DELE 1")),
            "-ERR message 1 already deleted\r\n"
        );
        assert_eq!(
            wire(&run(&mut s, "RETR 1")),
            "-ERR message 1 already deleted\r\n"
        );
        assert_eq!(
            wire(&run(&mut s, "LIST 3")),
            "-ERR no such message, only 2 in maildrop\r\n"
        );
        assert_eq!(
            wire(&run(&mut s, "UIDL")),
            "+OK unique-id listing follows\r\n2 b\r\n.\r\n"
        );
        assert_eq!(wire(&run(&mut s, "STAT")), "+OK 1 200\r\n");
        let step = run(&mut s, "RETR 2");
        assert_eq!(
            step.action,
            Action::Send {
                index: 1,
                top: None
            }
        );
        assert_eq!(wire(&step), "+OK 200 octets\r\n");
        assert_eq!(
            run(&mut s, "TOP 2 5").action,
            Action::Send {
                index: 1,
                top: Some(5)
            }
        );
        assert_eq!(
            wire(&run(&mut s, "RSET")),
            "+OK maildrop has 2 messages (300 octets)\r\n"
        );
        run(&mut s, "DELE 2");
        match run(&mut s, "QUIT").action {
            Action::Update(x) => assert_eq!(x.deleted, vec![false, true]),
            a => panic!("{a:?}"),
        }
        assert_eq!(s.updated(Ok(1)).action, Action::Close);
    }

    #[test]
    fn quit_without_deletions_needs_no_update() {
        let mut s = logged_in();
        assert_eq!(run(&mut s, "QUIT").action, Action::Close);
    }

    #[test]
    fn authorization_errors() {
        let mut s = Session::new(settings(false), true, false);
        assert_eq!(wire(&run(&mut s, "PASS x")), "-ERR send USER first\r\n");
        assert!(wire(&run(&mut s, "STAT")).starts_with("-ERR not valid before login"));
        assert_eq!(wire(&run(&mut s, "XYZZY")), "-ERR unknown command\r\n");
        run(&mut s, "USER alice");
        run(&mut s, "PASS wrong");
        assert_eq!(
            wire(&s.login_result(LoginResult::BadCredentials)),
            "-ERR [AUTH] invalid login or password\r\n"
        );
        run(&mut s, "USER alice");
        run(&mut s, "PASS x");
        assert!(wire(&s.login_result(LoginResult::InUse)).starts_with("-ERR [IN-USE]"));
        for _ in 0..2 {
            run(&mut s, "USER alice");
            run(&mut s, "PASS wrong");
            let step = s.login_result(LoginResult::BadCredentials);
            if step.action == Action::Close {
                return;
            }
        }
        panic!("three failed logins must close the session");
    }

    #[test]
    fn plaintext_needs_tls_or_loopback() {
        let mut s = Session::new(settings(true), false, false);
        assert!(wire(&run(&mut s, "USER alice")).starts_with("-ERR [AUTH] plaintext"));
        assert!(wire(&run(&mut s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==")).starts_with("-ERR [AUTH]"));
        let capa = wire(&run(&mut s, "CAPA"));
        assert!(
            capa.contains("STLS\r\n") && !capa.contains("USER\r\n"),
            "{capa}"
        );
        let step = run(&mut s, "STLS");
        assert_eq!(step.action, Action::StartTls);
        s.tls_started();
        let capa = wire(&run(&mut s, "CAPA"));
        assert!(
            !capa.contains("STLS") && capa.contains("USER\r\n") && capa.contains("SASL PLAIN\r\n")
        );
        assert_eq!(wire(&run(&mut s, "USER alice")), "+OK send PASS\r\n");
        // Without a certificate there is no STLS.
        let mut s = Session::new(settings(false), true, false);
        assert!(!wire(&run(&mut s, "CAPA")).contains("STLS"));
        assert!(wire(&run(&mut s, "STLS")).starts_with("-ERR"));
    }

    #[test]
    fn auth_plain_with_and_without_initial_response() {
        let mut s = Session::new(settings(false), true, false);
        let step = run(&mut s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==");
        assert_eq!(
            step.action,
            Action::Authenticate {
                login: "alice".into(),
                password: b"secret".to_vec()
            }
        );
        let mut s = Session::new(settings(false), true, false);
        assert_eq!(wire(&run(&mut s, "AUTH PLAIN")), "+ \r\n");
        assert_eq!(wire(&run(&mut s, "*")), "-ERR authentication cancelled\r\n");
        run(&mut s, "AUTH PLAIN");
        let step = run(&mut s, "YWxpY2UAYWxpY2UAc2VjcmV0");
        assert!(matches!(step.action, Action::Authenticate { .. }));
        let mut s = Session::new(settings(false), true, false);
        assert!(wire(&run(&mut s, "AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==")).contains("another user"));
        assert!(wire(&run(&mut s, "AUTH PLAIN !!!!")).contains("invalid base64"));
        assert!(wire(&run(&mut s, "AUTH CRAM-MD5")).contains("unsupported"));
    }

    #[test]
    fn too_many_errors_close() {
        let mut s = Session::new(settings(false), true, false);
        for _ in 0..9 {
            assert_eq!(run(&mut s, "BAD").action, Action::None);
        }
        assert_eq!(run(&mut s, "BAD").action, Action::Close);
    }
}
