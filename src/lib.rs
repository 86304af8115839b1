//! pimail: a complete mail server for one person, in one small binary.
//!
//! The mail flow: `smtp` receives (port 25 and submission), `mbox`
//! delivers into the user's mbox, `pop3` (with `maildrop`, the mbox
//! index) hands it to the user's clients, `server` runs listeners, limits
//! and shutdown. Sending: `queue` (the durable outbound queue), `delivery`
//! (the worker, SMTP client and bounces), `dns` (our stub resolver) and
//! `sendmail` (the local submission command). `config` and `cli` are the
//! edges a person touches. Protocol
//! cores are sans-I/O (`smtp::command`, `smtp::data`, `smtp::session`,
//! `line`, `pop3::command`, `pop3::session`, `pop3::retr`); their async
//! drivers are thin (`smtp::conn`, `pop3::conn`). `tls` loads the
//! certificate and upgrades connections; `auth` and `sasl` check logins.
#![deny(unsafe_code)]

pub mod address;
pub mod auth;
pub mod authdns;
pub mod authres;
pub mod base64;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod dmarc;
pub mod dns;
pub mod doctor;
pub mod envelope;
pub mod line;
pub mod logging;
pub mod maildrop;
pub mod mbox;
pub mod notify;
pub mod paths;
pub mod pop3;
pub mod queue;
pub mod sasl;
pub mod sendmail;
pub mod server;
pub mod smtp;
pub mod spf;
pub mod sys;
pub mod timefmt;
pub mod tls;
