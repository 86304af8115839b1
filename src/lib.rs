//! pimail: a complete mail server for one person, in one small binary.
//!
//! The folders follow a message: it is received (`receive`: SMTP on port
//! 25 and submission), checked (`trust`: SPF, DKIM, DMARC), stored
//! (`store`: the mbox and its POP3 index), read (`read`: POP3) or sent on
//! (`send`: the queue, MX delivery, bounces, `sendmail`). Beneath them lie
//! `net` (listeners' admission, the line reader, TLS, DNS), `mail` (addresses
//! and the envelope), `config` (the TOML file and the command line), `user`
//! (passwords and SASL) and `util` (small leaf helpers). `server` is the
//! top: it starts every stage.
//!
//! Dependencies point one way, down this list of floors; a module may use
//! its own folder and any floor below it, never one above:
//!
//! ```text
//!   admin             setup, status: the owner's tools over everything
//!   server            starts everything
//!   receive           smtp/
//!   read              pop3/
//!   send              queue, delivery/, sendmail
//!   trust             spf, dkim, dmarc, authres, authdns, doctor
//!   store             mbox, maildrop
//!   net               listen, line, tls, dns
//!   mail              address, envelope
//!   config            the config file, cli
//!   user              auth, sasl
//!   util              base64, timefmt, paths, sys, rt, logging, notify
//! ```
//!
//! `tests/layout.rs` checks that rule (and the absence of cycles) on every
//! test run. Protocol cores are sans-I/O (`receive::smtp::{command, data,
//! session}`, `net::line`, `read::pop3::{command, session, retr}`); their
//! async drivers are thin (`receive::smtp::conn`, `read::pop3::conn`).
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod mail;
pub mod net;
pub mod read;
pub mod receive;
pub mod send;
pub mod server;
pub mod store;
pub mod trust;
pub mod user;
pub mod util;
