//! POP3 retrieval (RFC 1939, CAPA and response codes of RFC 2449 and 3206,
//! AUTH PLAIN of RFC 5034; STLS of RFC 2595 plugs in with TLS).
//!
//! `command` parses lines, `session` is the sans-I/O state machine,
//! `retr` turns mbox lines into what RETR/TOP send, and `conn` is the thin
//! async driver. The maildrop itself (index, UIDLs, the rewrite at QUIT)
//! is `crate::store::maildrop`.

pub mod command;
pub mod conn;
pub mod retr;
pub mod session;
