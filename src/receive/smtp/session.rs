//! The SMTP session state machine (RFC 5321 3 and 4.1.4), sans I/O: lines
//! in, replies and actions out. The async driver in `conn` does the reading,
//! writing, spooling and delivery it is told to.
//!
//! It decides everything a client can observe: command order (503), syntax
//! (500/501/555), who may receive mail here (550 5.1.1 unknown user, 554
//! 5.7.1 no relaying), limits (452 4.5.3, 552 5.3.4) and, in one place,
//! the count of errors after which an abusive client is dropped (421).
//!
//! Submission (RFC 6409) adds AUTH PLAIN and LOGIN (RFC 4954): offered only
//! on submission ports and only after TLS or from loopback, required before
//! MAIL, and the sender must be one of the user's addresses. The password
//! check itself is the driver's ([`Action::Authenticate`]): it is slow and
//! throttled per client address, which is not session state.

use super::command::{self, Command, MailParams, ParseError};
use super::data::DataError;
use super::Reply;
use crate::mail::address::{Address, Destination, LocalPolicy};
use crate::mail::envelope::{Envelope, Recipient, TlsInfo};
use crate::net::line::LineError;
use crate::user::sasl::{self, Credentials, SaslError};
use std::net::IpAddr;
use std::rc::Rc;

/// Which listener a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Port 25: mail for our domains only, never relaying.
    Smtp,
    /// Port 587 (STARTTLS) or 465 (implicit TLS): the user's own clients.
    Submission,
}

/// What a session needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub policy: LocalPolicy,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_errors: u32,
    /// A certificate is configured: STARTTLS can be offered.
    pub tls_available: bool,
    /// The configured login name, recorded as the authenticated identity.
    pub user: String,
}

/// RFC 5321 4.5.3.1.4: command lines, including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 4: an AUTH command with its initial response, or a SASL
/// response line, may be up to 12288 octets.
pub const MAX_AUTH_LINE: usize = 12288;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// Write the reply, then close the connection.
    Close,
    /// Write the reply (354), then read message data until CRLF.CRLF.
    ReceiveData,
    /// Write the reply (220), discard buffered input, run the TLS handshake,
    /// then call [`Session::tls_started`].
    StartTls,
    /// There is no reply yet: check these credentials (throttled, off the
    /// network thread), then send what [`Session::auth_finished`] answers.
    Authenticate(Credentials),
    /// There is no reply yet: decide whether this recipient is greylisted
    /// (SPF, reverse DNS, the greylist file), then send what
    /// [`Session::greylist_finished`] answers.
    Greylist {
        sender: String,
        rcpt: String,
    },
}

#[derive(Debug)]
pub struct Step {
    /// `None` only with [`Action::Authenticate`] and [`Action::Greylist`].
    pub reply: Option<Reply>,
    pub action: Action,
}

impl Step {
    fn reply(reply: Reply) -> Self {
        Step {
            reply: Some(reply),
            action: Action::None,
        }
    }

    fn with(reply: Reply, action: Action) -> Self {
        Step {
            reply: Some(reply),
            action,
        }
    }

    fn code(&self) -> u16 {
        self.reply.as_ref().map_or(0, |r| r.code)
    }
}

/// An AUTH exchange in progress: the next line is a SASL response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sasl {
    /// `AUTH PLAIN` without initial response; `334` sent.
    Plain,
    /// `AUTH LOGIN`; "Username:" asked.
    LoginUser,
    /// "Password:" asked.
    LoginPassword { login: String },
    /// Credentials handed to the driver; waiting for `auth_finished`.
    Checking,
}

pub use crate::user::auth::Outcome as AuthOutcome;

/// How a finished DATA phase goes on.
#[derive(Debug)]
pub enum DataOutcome {
    /// Refused (bare LF, too big...): the reply to send; nothing is stored.
    Refused(Reply),
    /// Store the spooled message for this envelope, then call
    /// [`Session::delivered`].
    Deliver(Envelope),
}

/// Why storing a message failed, as far as the client must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// ENOSPC/EDQUOT: `452 4.3.1`.
    DiskFull,
    /// Mailbox locked by another program for too long: `451 4.2.0`... the
    /// client retries later.
    Busy,
    /// Any other local failure: `451 4.3.0`.
    Local,
}

struct Transaction {
    from: Option<Address>,
    params: MailParams,
    rcpts: Vec<Recipient>,
}

pub struct Session {
    settings: Rc<Settings>,
    port: Port,
    peer: IpAddr,
    /// A DNSBL listing: every RCPT is refused with this `554` text.
    listed: Option<String>,
    /// Local recipients on port 25 go through the greylist decision.
    greylisting: bool,
    /// The recipient waiting for [`Session::greylist_finished`].
    pending_rcpt: Option<Recipient>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    auth: Option<String>,
    sasl: Option<Sasl>,
    tx: Option<Transaction>,
    errors: u32,
}

impl Session {
    pub fn new(settings: Rc<Settings>, port: Port, peer: IpAddr) -> Self {
        Session {
            settings,
            port,
            peer,
            listed: None,
            greylisting: false,
            pending_rcpt: None,
            helo: None,
            esmtp: false,
            tls: None,
            auth: None,
            sasl: None,
            tx: None,
            errors: 0,
        }
    }

    /// The longest input line accepted now (with CRLF): longer on
    /// submission ports before login, for AUTH with an initial response.
    pub fn max_line(&self) -> usize {
        if self.port == Port::Submission && self.auth.is_none() {
            MAX_AUTH_LINE
        } else {
            MAX_COMMAND_LINE
        }
    }

    /// Is the peer this machine? Then AUTH needs no TLS (nobody can listen
    /// in on loopback).
    fn peer_is_loopback(&self) -> bool {
        match self.peer {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        }
    }

    /// May this session authenticate? Submission ports only, and only
    /// over TLS or from loopback, so a password never crosses a network in
    /// the clear.
    fn auth_offered(&self) -> bool {
        self.port == Port::Submission && (self.tls.is_some() || self.peer_is_loopback())
    }

    /// The client is on a DNS blocklist: `554 5.7.1 <rcpt>: why` refuses
    /// each of its recipients, so the refusal is logged with the envelope
    /// (as Postfix's `smtpd_delay_reject`). Port 25 only.
    pub fn set_listed(&mut self, why: String) {
        if self.port == Port::Smtp {
            self.listed = Some(why);
        }
    }

    /// Local recipients on port 25 must pass the greylist decision
    /// ([`Action::Greylist`]).
    pub fn set_greylisting(&mut self, on: bool) {
        self.greylisting = on && self.port == Port::Smtp;
    }

    /// The reply once the driver decided on [`Action::Greylist`]: `None`
    /// accepts the recipient, `Some(wait)` defers it (`451 4.7.1`).
    pub fn greylist_finished(&mut self, defer: Option<u64>) -> Reply {
        let Some(r) = self.pending_rcpt.take() else {
            return Reply::new(503, "5.5.1 No recipient pending");
        };
        match (defer, self.tx.as_mut()) {
            (None, Some(tx)) => {
                let reply = Reply::new(250, format!("2.1.5 Recipient <{}> OK", r.addr));
                tx.rcpts.push(r);
                reply
            }
            (None, None) => Reply::new(503, "5.5.1 Need MAIL before RCPT"),
            (Some(wait), _) => Reply::new(
                451,
                format!(
                    "4.7.1 <{}>: Greylisted, please try again in {wait} seconds",
                    r.addr
                ),
            ),
        }
    }

    /// The authenticated user, if any.
    pub fn authenticated_user(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    pub fn greeting(&self) -> Reply {
        Reply::new(220, format!("{} ESMTP pimail", self.settings.hostname))
    }

    /// RFC 5321 4.5.3.2: the reply before closing an idle connection.
    pub fn timeout(&self) -> Reply {
        Reply::new(
            421,
            format!(
                "4.4.2 {} Timeout, closing connection",
                self.settings.hostname
            ),
        )
    }

    /// The reply when the server shuts down.
    pub fn shutting_down(&self) -> Reply {
        Reply::new(
            421,
            format!(
                "4.3.2 {} Service shutting down, try again later",
                self.settings.hostname
            ),
        )
    }

    /// Marks the session as using TLS (after the STARTTLS handshake, or from
    /// the start on an implicit-TLS port). RFC 3207 4.2: the client must
    /// start over with EHLO, and nothing of before is kept.
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.auth = None;
        self.sasl = None;
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Handles one input line (or a line-level error); the one place where
    /// errors are counted and an abusive client is dropped.
    pub fn line(&mut self, line: Result<&[u8], LineError>) -> Step {
        let mut step = match line {
            Ok(l) if self.sasl.is_some() => self.sasl_response(l),
            Ok(l) => self.command(l),
            Err(_) if self.sasl.is_some() => {
                // A broken response ends the exchange like a bad one.
                self.sasl = None;
                Step::reply(Reply::new(501, "5.5.2 Malformed authentication response"))
            }
            Err(LineError::TooLong) => Step::reply(Reply::new(
                500,
                format!("5.5.2 Line too long (at most {} octets)", self.max_line()),
            )),
            Err(LineError::BareLf) => Step::reply(Reply::new(
                500,
                "5.5.2 Bare LF in command refused: lines must end with CRLF",
            )),
            Err(LineError::BareCr) => Step::reply(Reply::new(
                500,
                "5.5.2 Bare CR in command refused: lines must end with CRLF",
            )),
        };
        if step.code() >= 500 {
            self.errors += 1;
            if self.errors >= self.settings.max_errors && step.action == Action::None {
                step = Step::with(
                    Reply::new(421, "4.7.0 Too many errors, closing connection"),
                    Action::Close,
                );
            }
        }
        step
    }

    fn command(&mut self, line: &[u8]) -> Step {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(ParseError::Unknown) => {
                return Step::reply(Reply::new(500, "5.5.1 Command unrecognized"))
            }
            Err(ParseError::Syntax(why)) => {
                return Step::reply(Reply::new(501, format!("5.5.4 Syntax error: {why}")))
            }
            Err(ParseError::NeedsUtf8) => {
                return Step::reply(Reply::new(
                    553,
                    "5.6.7 Non-ASCII address needs the SMTPUTF8 parameter",
                ))
            }
            Err(ParseError::UnknownParam) => {
                return Step::reply(Reply::new(555, "5.5.4 Unsupported MAIL or RCPT parameter"))
            }
        };
        match cmd {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => {
                self.tx = None;
                Step::reply(Reply::new(250, "2.0.0 OK"))
            }
            Command::Noop => Step::reply(Reply::new(250, "2.0.0 OK")),
            Command::Quit => Step::with(
                Reply::new(
                    221,
                    format!("2.0.0 {} closing connection", self.settings.hostname),
                ),
                Action::Close,
            ),
            Command::Help => Step::reply(Reply::new(
                214,
                "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY STARTTLS",
            )),
            // RFC 5321 3.5.3: 252 rather than disclose who exists.
            Command::Vrfy => Step::reply(Reply::new(
                252,
                "2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn => Step::reply(Reply::new(502, "5.5.1 EXPN not available")),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial.as_deref()),
        }
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Step {
        if self.port == Port::Smtp {
            // Port 25 is for other servers; it never authenticates, so it
            // can never be talked into relaying.
            return Step::reply(Reply::new(
                503,
                "5.5.1 AUTH is not available on this port; use submission (587/465)",
            ));
        }
        if self.helo.is_none() {
            return Step::reply(Reply::new(503, "5.5.1 Say EHLO first"));
        }
        if self.auth.is_some() {
            return Step::reply(Reply::new(503, "5.5.1 Already authenticated"));
        }
        if self.tx.is_some() {
            return Step::reply(Reply::new(
                503,
                "5.5.1 AUTH not allowed during a mail transaction",
            ));
        }
        if !self.auth_offered() {
            // RFC 4954 6: 538 when the mechanism needs an encrypted link.
            return Step::reply(Reply::new(
                538,
                "5.7.11 Encryption required for authentication: use STARTTLS first",
            ));
        }
        match (mechanism, initial) {
            ("PLAIN", None) => {
                self.sasl = Some(Sasl::Plain);
                Step::reply(Reply::new(334, ""))
            }
            ("PLAIN", Some(r)) => self.plain(r),
            ("LOGIN", None) => {
                self.sasl = Some(Sasl::LoginUser);
                Step::reply(Reply::new(334, sasl::LOGIN_USER_PROMPT))
            }
            // Some clients send the user name along with AUTH LOGIN.
            ("LOGIN", Some(r)) => self.login_user(r),
            _ => Step::reply(Reply::new(
                504,
                "5.5.4 Unrecognized authentication type; use PLAIN or LOGIN",
            )),
        }
    }

    /// A line while an AUTH exchange waits for the client.
    fn sasl_response(&mut self, line: &[u8]) -> Step {
        let state = self.sasl.take();
        let Ok(line) = std::str::from_utf8(line) else {
            return Self::sasl_error(SaslError::Base64);
        };
        if line == "*" {
            return Step::reply(Reply::new(501, "5.0.0 Authentication cancelled"));
        }
        match state {
            Some(Sasl::Plain) => self.plain(line),
            Some(Sasl::LoginUser) => self.login_user(line),
            Some(Sasl::LoginPassword { login }) => match sasl::decode_response(line) {
                Ok(password) => self.check(Credentials { login, password }),
                Err(e) => Self::sasl_error(e),
            },
            // The driver never feeds lines while it checks a password.
            Some(Sasl::Checking) | None => {
                Step::reply(Reply::new(503, "5.5.1 No authentication in progress"))
            }
        }
    }

    fn plain(&mut self, response: &str) -> Step {
        match sasl::decode_response(response).and_then(|m| sasl::parse_plain(&m)) {
            Ok(c) => self.check(c),
            Err(e) => Self::sasl_error(e),
        }
    }

    fn login_user(&mut self, response: &str) -> Step {
        match sasl::decode_response(response).and_then(|m| sasl::parse_login_user(&m)) {
            Ok(login) => {
                self.sasl = Some(Sasl::LoginPassword { login });
                Step::reply(Reply::new(334, sasl::LOGIN_PASSWORD_PROMPT))
            }
            Err(e) => Self::sasl_error(e),
        }
    }

    fn check(&mut self, credentials: Credentials) -> Step {
        self.sasl = Some(Sasl::Checking);
        Step {
            reply: None,
            action: Action::Authenticate(credentials),
        }
    }

    fn sasl_error(e: SaslError) -> Step {
        Step::reply(match e {
            SaslError::Base64 | SaslError::Malformed => {
                Reply::new(501, "5.5.2 Malformed authentication response")
            }
            SaslError::Authzid => Reply::new(
                535,
                "5.7.8 Authentication credentials invalid (no authorization identity allowed)",
            ),
        })
    }

    /// The reply once the driver has checked the credentials of
    /// [`Action::Authenticate`].
    pub fn auth_finished(&mut self, outcome: AuthOutcome) -> Reply {
        self.sasl = None;
        match outcome {
            AuthOutcome::Success => {
                self.auth = Some(self.settings.user.clone());
                Reply::new(235, "2.7.0 Authentication successful")
            }
            AuthOutcome::Failure => {
                self.errors += 1;
                Reply::new(535, "5.7.8 Authentication credentials invalid")
            }
            AuthOutcome::Blocked => Reply::new(
                454,
                "4.7.0 Too many failed logins from your address, try again later",
            ),
        }
    }

    fn hello(&mut self, name: String, esmtp: bool) -> Step {
        self.helo = Some(name);
        self.esmtp = esmtp;
        self.tx = None;
        let greet = format!("{} Hello {}", self.settings.hostname, self.peer);
        if !esmtp {
            return Step::reply(Reply::new(250, greet));
        }
        let mut lines: Vec<std::borrow::Cow<'static, str>> = vec![
            greet.into(),
            format!("SIZE {}", self.settings.max_message_size).into(),
            "8BITMIME".into(),
            "PIPELINING".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
        ];
        if self.settings.tls_available && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Step::reply(Reply::multi(250, lines))
    }

    fn starttls(&mut self) -> Step {
        if self.tls.is_some() {
            return Step::reply(Reply::new(503, "5.5.1 TLS is already active"));
        }
        if !self.settings.tls_available {
            return Step::reply(Reply::new(
                502,
                "5.5.1 STARTTLS not available: no certificate configured",
            ));
        }
        if self.tx.is_some() {
            return Step::reply(Reply::new(
                503,
                "5.5.1 STARTTLS not allowed during a mail transaction",
            ));
        }
        Step::with(
            Reply::new(220, "2.0.0 Ready to start TLS"),
            Action::StartTls,
        )
    }

    fn mail(&mut self, from: Option<Address>, params: MailParams) -> Step {
        if self.helo.is_none() {
            return Step::reply(Reply::new(503, "5.5.1 Say EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return Step::reply(Reply::new(
                503,
                "5.5.1 Nested MAIL command: RSET or finish the transaction first",
            ));
        }
        if self.port == Port::Submission {
            if self.auth.is_none() {
                return Step::reply(Reply::new(
                    530,
                    if self.auth_offered() {
                        "5.7.0 Authentication required"
                    } else {
                        "5.7.0 Authentication required: use STARTTLS, then AUTH"
                    },
                ));
            }
            // RFC 6409 8.1: the user sends as themselves, not as anyone.
            let own = from
                .as_ref()
                .is_some_and(|a| self.settings.policy.classify(a) == Destination::Local);
            if !own {
                return Step::reply(Reply::new(
                    553,
                    format!(
                        "5.7.1 Sender <{}> is not one of your addresses",
                        from.as_ref().map(|a| a.to_string()).unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(size) = params.size {
            if size > self.settings.max_message_size {
                return Step::reply(Reply::new(
                    552,
                    format!(
                        "5.3.4 Message size exceeds fixed maximum message size ({} bytes)",
                        self.settings.max_message_size
                    ),
                ));
            }
        }
        let text = format!(
            "2.1.0 Sender <{}> OK",
            from.as_ref().map(|a| a.to_string()).unwrap_or_default()
        );
        self.tx = Some(Transaction {
            from,
            params,
            rcpts: Vec::new(),
        });
        Step::reply(Reply::new(250, text))
    }

    fn rcpt(&mut self, mut to: Address) -> Step {
        let authenticated = self.auth.is_some();
        let Some(tx) = self.tx.as_mut() else {
            return Step::reply(Reply::new(503, "5.5.1 Need MAIL before RCPT"));
        };
        if let Some(why) = &self.listed {
            return Step::reply(Reply::new(554, format!("5.7.1 <{to}>: {why}")));
        }
        let ascii = to.local.is_ascii() && to.domain.is_ascii();
        if !tx.params.smtputf8 && !ascii {
            return Step::reply(Reply::new(
                553,
                "5.6.7 Non-ASCII address needs SMTPUTF8 in MAIL FROM",
            ));
        }
        if tx.rcpts.len() >= self.settings.max_recipients {
            return Step::reply(Reply::new(452, "4.5.3 Too many recipients"));
        }
        if to.domain.is_empty() {
            // <Postmaster> without a domain (RFC 5321 4.5.1).
            to.domain = self
                .settings
                .policy
                .domains
                .first()
                .cloned()
                .unwrap_or_default();
        }
        let dest = self.settings.policy.classify(&to);
        if dest == Destination::Local && self.greylisting {
            let sender = tx.from.as_ref().map(|a| a.to_string()).unwrap_or_default();
            let rcpt = to.to_string();
            self.pending_rcpt = Some(Recipient { addr: to, dest });
            return Step {
                reply: None,
                action: Action::Greylist { sender, rcpt },
            };
        }
        let reply = match dest {
            Destination::Local => Reply::new(250, format!("2.1.5 Recipient <{to}> OK")),
            Destination::UnknownLocal => {
                return Step::reply(Reply::new(550, format!("5.1.1 <{to}>: no such user here")))
            }
            Destination::Remote if self.port == Port::Submission && authenticated => {
                Reply::new(250, format!("2.1.5 Recipient <{to}> OK, will be relayed"))
            }
            Destination::Remote => {
                return Step::reply(Reply::new(
                    554,
                    format!("5.7.1 <{to}>: Relay access denied"),
                ))
            }
        };
        tx.rcpts.push(Recipient { addr: to, dest });
        Step::reply(reply)
    }

    fn data(&mut self) -> Step {
        match &self.tx {
            None => Step::reply(Reply::new(503, "5.5.1 Need MAIL and RCPT before DATA")),
            // RFC 2920 3.1: with pipelining, all RCPTs may have failed.
            Some(tx) if tx.rcpts.is_empty() => {
                Step::reply(Reply::new(554, "5.5.1 No valid recipients"))
            }
            Some(_) => Step::with(
                Reply::new(354, "End data with <CR><LF>.<CR><LF>"),
                Action::ReceiveData,
            ),
        }
    }

    /// After the DATA decoder saw the end: refuse, or hand over the envelope.
    /// Either way the transaction is over.
    pub fn data_finished(&mut self, error: Option<DataError>) -> DataOutcome {
        let Some(tx) = self.tx.take() else {
            return DataOutcome::Refused(Reply::new(503, "5.5.1 No transaction"));
        };
        let refuse = |code, text: &'static str| DataOutcome::Refused(Reply::new(code, text));
        match error {
            Some(DataError::BareLf) => {
                self.errors += 1;
                refuse(
                    554,
                    "5.6.0 Message refused: bare LF in data, lines must end with CRLF",
                )
            }
            Some(DataError::BareCr) => {
                self.errors += 1;
                refuse(
                    554,
                    "5.6.0 Message refused: bare CR in data, lines must end with CRLF",
                )
            }
            Some(DataError::LineTooLong) => refuse(
                554,
                "5.6.0 Message refused: a line is longer than 1000 octets (RFC 5321 4.5.3.1.6)",
            ),
            Some(DataError::Nul) => refuse(
                554,
                "5.6.0 Message refused: NUL character in data (RFC 5322 2.3, RFC 6152 3)",
            ),
            Some(DataError::TooBig) => DataOutcome::Refused(Reply::new(
                552,
                format!(
                    "5.3.4 Message size exceeds fixed maximum message size ({} bytes)",
                    self.settings.max_message_size
                ),
            )),
            None => DataOutcome::Deliver(Envelope {
                from: tx.from,
                rcpts: tx.rcpts,
                helo: self.helo.clone().unwrap_or_default(),
                esmtp: self.esmtp,
                peer: self.peer,
                tls: self.tls.clone(),
                auth: self.auth.clone(),
                smtputf8: tx.params.smtputf8,
            }),
        }
    }

    /// The reply after storing the message (or failing to).
    pub fn delivered(&self, result: Result<&str, StoreError>) -> Reply {
        match result {
            Ok(id) => Reply::new(250, format!("2.0.0 OK: queued as {id}")),
            Err(StoreError::DiskFull) => {
                Reply::new(452, "4.3.1 Insufficient system storage, try again later")
            }
            Err(StoreError::Busy) => Reply::new(451, "4.2.0 Mailbox busy, try again later"),
            Err(StoreError::Local) => {
                Reply::new(451, "4.3.0 Local error in processing, try again later")
            }
        }
    }

    /// The refusal of a message that a sender's policy asks us to reject
    /// (DMARC `p=reject`, RFC 7489 6.6.4 / 10.3).
    pub fn policy_refused(&self, why: &str) -> Reply {
        Reply::new(550, format!("5.7.1 Message refused: {why}"))
    }

    pub fn port(&self) -> Port {
        self.port
    }

    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// Is the client on a DNS blocklist (every RCPT refused)?
    pub fn is_listed(&self) -> bool {
        self.listed.is_some()
    }

    /// The MAIL FROM of the open transaction (empty for `<>`).
    pub fn sender(&self) -> Option<String> {
        self.tx
            .as_ref()
            .map(|tx| tx.from.as_ref().map(|a| a.to_string()).unwrap_or_default())
    }

    /// Is a transaction open (MAIL accepted, message not yet finished)?
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Rc<Settings> {
        Rc::new(Settings {
            hostname: "mail.example.org".into(),
            policy: LocalPolicy {
                domains: vec!["example.org".into()],
                addresses: vec!["alice".into()],
                catch_all: false,
            },
            max_message_size: 1000,
            max_recipients: 2,
            max_errors: 50,
            tls_available: false,
            user: "alice".into(),
        })
    }

    fn session() -> Session {
        Session::new(settings(), Port::Smtp, "192.0.2.1".parse().unwrap())
    }

    fn say(s: &mut Session, line: &str) -> (u16, String, Action) {
        let step = s.line(Ok(line.as_bytes()));
        let reply = step.reply.unwrap_or(Reply::new(0, ""));
        (reply.code, reply.to_wire(), step.action)
    }

    fn code(s: &mut Session, line: &str) -> u16 {
        say(s, line).0
    }

    #[test]
    fn full_dialogue() {
        let mut s = session();
        assert_eq!(
            s.greeting().to_wire(),
            "220 mail.example.org ESMTP pimail\r\n"
        );
        let (c, ehlo, _) = say(&mut s, "EHLO client.example");
        assert_eq!(c, 250);
        for ext in [
            "SIZE 1000",
            "8BITMIME",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
        ] {
            assert!(ehlo.contains(ext), "{ext} in {ehlo}");
        }
        assert!(!ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"));
        assert_eq!(code(&mut s, "MAIL FROM:<bob@example.com> SIZE=500"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<alice@example.org>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<Alice+tag@EXAMPLE.org>"), 250);
        assert_eq!(say(&mut s, "DATA").2, Action::ReceiveData);
        let DataOutcome::Deliver(env) = s.data_finished(None) else {
            panic!()
        };
        assert_eq!(env.sender(), "bob@example.com");
        assert_eq!(env.rcpts.len(), 2);
        assert_eq!(env.helo, "client.example");
        assert!(env.esmtp);
        assert_eq!(
            s.delivered(Ok("X1")).to_wire(),
            "250 2.0.0 OK: queued as X1\r\n"
        );
        // The transaction is over; a new one can start.
        assert_eq!(code(&mut s, "MAIL FROM:<>"), 250);
        assert_eq!(
            say(&mut s, "QUIT"),
            (
                221,
                "221 2.0.0 mail.example.org closing connection\r\n".into(),
                Action::Close
            )
        );
    }

    #[test]
    fn every_reply_code() {
        let mut s = session();
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 503);
        assert_eq!(code(&mut s, "RCPT TO:<alice@example.org>"), 503);
        assert_eq!(code(&mut s, "DATA"), 503);
        assert_eq!(code(&mut s, "HELO client"), 250);
        assert_eq!(code(&mut s, "NOOP"), 250);
        assert_eq!(code(&mut s, "HELP"), 214);
        assert_eq!(code(&mut s, "VRFY alice"), 252);
        assert_eq!(code(&mut s, "EXPN x"), 502);
        assert_eq!(code(&mut s, "STARTTLS"), 502);
        assert_eq!(code(&mut s, "AUTH PLAIN"), 503);
        let mut s = session();
        code(&mut s, "EHLO c");
        assert_eq!(code(&mut s, "BOGUS"), 500);
        assert_eq!(code(&mut s, "MAIL FROM:bad"), 501);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example> FOO=1"), 555);
        assert_eq!(code(&mut s, "MAIL FROM:<jörg@b.example>"), 553);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example> SIZE=1001"), 552);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 250);
        let mut s = session();
        code(&mut s, "EHLO c");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 503);
        assert_eq!(code(&mut s, "DATA"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<bob@example.org>"), 550);
        assert_eq!(code(&mut s, "RCPT TO:<bob@example.com>"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<alice@[192.0.2.1]>"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<jörg@example.org>"), 553);
        let mut s = session();
        code(&mut s, "EHLO c");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "RCPT TO:<alice@example.org>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<postmaster>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<alice@example.org>"), 452);
        assert_eq!(code(&mut s, "RSET"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<alice@example.org>"), 503);
    }

    #[test]
    fn line_errors() {
        let mut s = session();
        assert_eq!(s.line(Err(LineError::TooLong)).code(), 500);
        let r = s.line(Err(LineError::BareLf)).reply.unwrap();
        assert_eq!((r.code, r.lines[0].starts_with("5.5.2")), (500, true));
        assert_eq!(s.line(Err(LineError::BareCr)).code(), 500);
    }

    #[test]
    fn too_many_errors_close() {
        let mut st = (*settings()).clone();
        st.max_errors = 5;
        let mut s = Session::new(Rc::new(st), Port::Smtp, "192.0.2.1".parse().unwrap());
        for _ in 0..4 {
            assert_eq!(say(&mut s, "BOGUS").2, Action::None);
        }
        let (c, text, action) = say(&mut s, "BOGUS");
        assert_eq!((c, action), (421, Action::Close));
        assert!(text.contains("4.7.0"), "{text}");
    }

    #[test]
    fn data_refusals() {
        for (err, code, esc) in [
            (DataError::BareLf, 554, "5.6.0"),
            (DataError::BareCr, 554, "5.6.0"),
            (DataError::LineTooLong, 554, "5.6.0"),
            (DataError::Nul, 554, "5.6.0"),
            (DataError::TooBig, 552, "5.3.4"),
        ] {
            let mut s = session();
            code_of(&mut s);
            let DataOutcome::Refused(r) = s.data_finished(Some(err)) else {
                panic!()
            };
            assert_eq!(r.code, code);
            assert!(r.lines[0].starts_with(esc));
            assert!(!s.in_transaction());
        }
        fn code_of(s: &mut Session) {
            code(s, "EHLO c");
            code(s, "MAIL FROM:<a@b.example>");
            code(s, "RCPT TO:<alice@example.org>");
            code(s, "DATA");
        }
        let s = session();
        assert_eq!(s.delivered(Err(StoreError::DiskFull)).code, 452);
        assert!(s.delivered(Err(StoreError::DiskFull)).lines[0].starts_with("4.3.1"));
        assert_eq!(s.delivered(Err(StoreError::Busy)).code, 451);
        assert_eq!(s.delivered(Err(StoreError::Local)).code, 451);
        assert_eq!(s.timeout().code, 421);
    }

    #[test]
    fn submission_requires_auth_and_port25_never_relays() {
        let mut s = Session::new(settings(), Port::Submission, "192.0.2.1".parse().unwrap());
        code(&mut s, "EHLO c");
        assert_eq!(code(&mut s, "MAIL FROM:<alice@example.org>"), 530);
        let mut s = session();
        code(&mut s, "EHLO c");
        // Claiming to be our user changes nothing on port 25.
        code(&mut s, "MAIL FROM:<alice@example.org>");
        assert_eq!(code(&mut s, "RCPT TO:<x@example.com>"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<@example.org:x@example.com>"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<x%example.com@example.org>"), 550);
        assert_eq!(code(&mut s, "RCPT TO:<\"x@example.com\"@example.org>"), 550);
    }

    #[test]
    fn remaining_reply_codes() {
        let s = session();
        let r = s.shutting_down();
        assert_eq!((r.code, r.lines[0].starts_with("4.3.2")), (421, true));
        assert!(s.timeout().lines[0].starts_with("4.4.2"));
        // The end of data without a transaction (the driver's bug) is
        // refused rather than delivered to nobody.
        let mut s = session();
        let DataOutcome::Refused(r) = s.data_finished(None) else {
            panic!()
        };
        assert_eq!(r.code, 503);
        // Bare CR/LF in data count towards the error limit.
        let mut st = (*settings()).clone();
        st.max_errors = 2;
        let mut s = Session::new(Rc::new(st), Port::Smtp, "192.0.2.1".parse().unwrap());
        code(&mut s, "EHLO c");
        code(&mut s, "MAIL FROM:<a@b.example>");
        code(&mut s, "RCPT TO:<alice@example.org>");
        code(&mut s, "DATA");
        let _ = s.data_finished(Some(DataError::BareLf));
        assert_eq!(say(&mut s, "BOGUS").2, Action::Close);
        // STARTTLS inside a transaction is a sequence error.
        let mut st = (*settings()).clone();
        st.tls_available = true;
        let mut s = Session::new(Rc::new(st), Port::Smtp, "192.0.2.1".parse().unwrap());
        code(&mut s, "EHLO c");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "STARTTLS"), 503);
    }

    #[test]
    fn starttls_resets_state() {
        let mut st = (*settings()).clone();
        st.tls_available = true;
        let mut s = Session::new(Rc::new(st), Port::Smtp, "192.0.2.1".parse().unwrap());
        assert!(say(&mut s, "EHLO c").1.contains("STARTTLS"));
        assert_eq!(say(&mut s, "STARTTLS").2, Action::StartTls);
        s.tls_started(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "X".into(),
        });
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 503);
        assert!(!say(&mut s, "EHLO c").1.contains("STARTTLS"));
        assert_eq!(code(&mut s, "STARTTLS"), 503);
    }

    fn submission(peer: &str, tls: bool) -> Session {
        let mut st = (*settings()).clone();
        st.tls_available = true;
        let mut s = Session::new(Rc::new(st), Port::Submission, peer.parse().unwrap());
        if tls {
            s.tls_started(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "X".into(),
            });
        }
        s
    }

    fn plain(login: &str, pw: &str) -> String {
        sasl::encode_base64(format!("\0{login}\0{pw}").as_bytes())
    }

    /// Runs AUTH to the credentials check and returns them.
    fn expect_check(s: &mut Session, line: &str) -> Credentials {
        match say(s, line).2 {
            Action::Authenticate(c) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn auth_not_offered_before_tls_except_on_loopback() {
        // A remote peer without TLS: no AUTH in EHLO, and AUTH is refused
        // with 538 before any credentials are read.
        let mut s = submission("192.0.2.1", false);
        let ehlo = say(&mut s, "EHLO c").1;
        assert!(
            ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
            "{ehlo}"
        );
        let (c, text, action) = say(&mut s, &format!("AUTH PLAIN {}", plain("alice", "pw")));
        assert_eq!((c, action), (538, Action::None));
        assert!(text.contains("5.7.11"), "{text}");
        let (c, text, _) = say(&mut s, "MAIL FROM:<alice@example.org>");
        assert_eq!(c, 530);
        assert!(text.contains("STARTTLS"), "{text}");
        // The same peer after TLS: offered.
        let mut s = submission("192.0.2.1", true);
        assert!(say(&mut s, "EHLO c").1.contains("AUTH PLAIN LOGIN"));
        // Loopback, v4, v6 and v4-mapped, without TLS: offered.
        for lo in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            let mut s = submission(lo, false);
            assert!(say(&mut s, "EHLO c").1.contains("AUTH PLAIN LOGIN"), "{lo}");
        }
        // Port 25 never, even over TLS.
        let mut st = (*settings()).clone();
        st.tls_available = true;
        let mut s = Session::new(Rc::new(st), Port::Smtp, "127.0.0.1".parse().unwrap());
        s.tls_started(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "X".into(),
        });
        assert!(!say(&mut s, "EHLO c").1.contains("AUTH"));
        assert_eq!(
            code(&mut s, &format!("AUTH PLAIN {}", plain("alice", "pw"))),
            503
        );
    }

    #[test]
    fn auth_plain_and_login_exchanges() {
        // PLAIN with an initial response.
        let mut s = submission("192.0.2.1", true);
        code(&mut s, "EHLO c");
        let c = expect_check(&mut s, &format!("AUTH PLAIN {}", plain("alice", "pw")));
        assert_eq!(
            (c.login.as_str(), c.password.as_slice()),
            ("alice", &b"pw"[..])
        );
        let r = s.auth_finished(AuthOutcome::Success);
        assert_eq!(r.to_wire(), "235 2.7.0 Authentication successful\r\n");
        assert_eq!(s.authenticated_user(), Some("alice"));
        assert_eq!(
            code(&mut s, &format!("AUTH PLAIN {}", plain("alice", "pw"))),
            503
        );
        // PLAIN with an empty challenge first, lower-case mechanism.
        let mut s = submission("192.0.2.1", true);
        code(&mut s, "EHLO c");
        assert_eq!(say(&mut s, "AUTH plain").1, "334 \r\n");
        let c = expect_check(&mut s, &plain("alice@example.org", "pw"));
        assert_eq!(c.login, "alice@example.org");
        let r = s.auth_finished(AuthOutcome::Failure);
        assert_eq!(
            r.to_wire(),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
        assert_eq!(s.authenticated_user(), None);
        // After a failure, the next line is a command again.
        assert_eq!(code(&mut s, "NOOP"), 250);
        // LOGIN: user name prompt, password prompt.
        assert_eq!(say(&mut s, "AUTH LOGIN").1, "334 VXNlcm5hbWU6\r\n");
        assert_eq!(say(&mut s, "YWxpY2U=").1, "334 UGFzc3dvcmQ6\r\n");
        let c = expect_check(&mut s, "cHc=");
        assert_eq!(
            (c.login.as_str(), c.password.as_slice()),
            ("alice", &b"pw"[..])
        );
        assert_eq!(s.auth_finished(AuthOutcome::Blocked).code, 454);
        // LOGIN with the user name on the command line.
        assert_eq!(say(&mut s, "AUTH LOGIN YWxpY2U=").1, "334 UGFzc3dvcmQ6\r\n");
        // "*" cancels.
        assert_eq!(code(&mut s, "*"), 501);
        assert_eq!(code(&mut s, "NOOP"), 250);
    }

    #[test]
    fn auth_refusals() {
        let mut s = submission("192.0.2.1", true);
        assert_eq!(code(&mut s, "AUTH PLAIN"), 503, "before EHLO");
        code(&mut s, "EHLO c");
        assert_eq!(code(&mut s, "AUTH CRAM-MD5"), 504);
        assert_eq!(code(&mut s, "AUTH PLAIN not!base64"), 501);
        assert_eq!(
            code(
                &mut s,
                &format!("AUTH PLAIN {}", sasl::encode_base64(b"nonul"))
            ),
            501
        );
        // An authorization identity other than oneself.
        let other = sasl::encode_base64(b"root\0alice\0pw");
        assert_eq!(code(&mut s, &format!("AUTH PLAIN {other}")), 535);
        // A bad line inside the exchange ends it.
        code(&mut s, "AUTH PLAIN");
        assert_eq!(s.line(Err(LineError::BareLf)).code(), 501);
        assert_eq!(code(&mut s, "NOOP"), 250);
        // Long lines are allowed for AUTH before login, not after.
        assert_eq!(s.max_line(), MAX_AUTH_LINE);
        expect_check(&mut s, &format!("AUTH PLAIN {}", plain("alice", "pw")));
        s.auth_finished(AuthOutcome::Success);
        assert_eq!(s.max_line(), MAX_COMMAND_LINE);
        // STARTTLS forgets a login (RFC 3207 4.2); here TLS is already on.
        assert_eq!(code(&mut s, "STARTTLS"), 503);
    }

    #[test]
    fn submission_sender_must_be_the_users() {
        let mut s = submission("192.0.2.1", true);
        code(&mut s, "EHLO c");
        expect_check(&mut s, &format!("AUTH PLAIN {}", plain("alice", "pw")));
        s.auth_finished(AuthOutcome::Success);
        for other in [
            "MAIL FROM:<bob@example.org>",
            "MAIL FROM:<alice@example.com>",
            "MAIL FROM:<alice@[192.0.2.1]>",
            "MAIL FROM:<>",
        ] {
            let (c, text, _) = say(&mut s, other);
            assert_eq!(c, 553, "{other}");
            assert!(text.contains("5.7.1"), "{text}");
        }
        assert_eq!(code(&mut s, "MAIL FROM:<Alice+lists@EXAMPLE.org>"), 250);
        // Authenticated: remote recipients are accepted for relaying,
        // local ones as always, unknown local ones still refused.
        let (c, text, _) = say(&mut s, "RCPT TO:<bob@example.com>");
        assert_eq!(c, 250);
        assert!(text.contains("relayed"), "{text}");
        assert_eq!(code(&mut s, "RCPT TO:<nobody@example.org>"), 550);
        assert_eq!(code(&mut s, "RCPT TO:<alice@example.org>"), 250);
        let DataOutcome::Deliver(env) = ({
            code(&mut s, "DATA");
            s.data_finished(None)
        }) else {
            panic!()
        };
        assert_eq!(env.auth.as_deref(), Some("alice"));
        assert_eq!(env.remote_rcpts().count(), 1);
    }

    #[test]
    fn starttls_forgets_authentication() {
        let mut s = submission("127.0.0.1", false);
        code(&mut s, "EHLO c");
        expect_check(&mut s, &format!("AUTH PLAIN {}", plain("alice", "pw")));
        s.auth_finished(AuthOutcome::Success);
        assert_eq!(say(&mut s, "STARTTLS").2, Action::StartTls);
        s.tls_started(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "X".into(),
        });
        assert_eq!(s.authenticated_user(), None);
        code(&mut s, "EHLO c");
        assert_eq!(code(&mut s, "MAIL FROM:<alice@example.org>"), 530);
    }

    #[test]
    fn a_listed_client_is_refused_at_each_rcpt_after_ehlo_and_mail() {
        let mut s = session();
        s.set_listed("Service unavailable; client [192.0.2.1] blocked using bl.example".into());
        assert!(s.is_listed());
        assert_eq!(code(&mut s, "EHLO c"), 250);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 250);
        assert_eq!(s.sender().as_deref(), Some("a@b.example"));
        let (c, text, _) = say(&mut s, "RCPT TO:<alice@example.org>");
        assert_eq!(c, 554);
        assert_eq!(
            text,
            "554 5.7.1 <alice@example.org>: Service unavailable; client [192.0.2.1] blocked using bl.example\r\n"
        );
        assert_eq!(code(&mut s, "DATA"), 554);
        // Never on submission.
        let mut s = Session::new(settings(), Port::Submission, "192.0.2.1".parse().unwrap());
        s.set_listed("x".into());
        s.set_greylisting(true);
        assert!(!s.is_listed() && !s.greylisting);
    }

    #[test]
    fn greylisted_recipients_wait_for_the_drivers_decision() {
        let mut s = session();
        s.set_greylisting(true);
        code(&mut s, "EHLO c");
        code(&mut s, "MAIL FROM:<a@b.example>");
        let (_, _, action) = say(&mut s, "RCPT TO:<Alice@example.org>");
        assert_eq!(
            action,
            Action::Greylist {
                sender: "a@b.example".into(),
                rcpt: "Alice@example.org".into()
            }
        );
        let r = s.greylist_finished(Some(120));
        assert_eq!(
            r.to_wire(),
            "451 4.7.1 <Alice@example.org>: Greylisted, please try again in 120 seconds\r\n"
        );
        assert_eq!(
            code(&mut s, "DATA"),
            554,
            "the deferred recipient is not taken"
        );
        // Unknown users and relaying are refused before any greylisting.
        assert_eq!(code(&mut s, "RCPT TO:<bob@example.org>"), 550);
        assert_eq!(code(&mut s, "RCPT TO:<x@example.com>"), 554);
        say(&mut s, "RCPT TO:<alice@example.org>");
        assert_eq!(s.greylist_finished(None).code, 250);
        assert_eq!(code(&mut s, "DATA"), 354);
    }
}
