//! IMAP4rev2 and IMAP4rev1 (RFC 9051, RFC 3501) for the one account, with
//! the extensions clients use (see `docs/imap.md`), sans-I/O.
//!
//! `input` frames the byte stream into commands and handles literals
//! (synchronizing, LITERAL+ of RFC 7888) with bounded sizes; `command`
//! parses a framed command; `response` serializes what the server sends;
//! `session` is the state machine (RFC 9051 section 3) that talks to the
//! folders through the traits of `folder` and returns output and actions
//! for the async driver. `mutf7` is the modified UTF-7 of mailbox names
//! (RFC 3501 5.1.3); `memory` is an in-memory account for tests.

pub mod appended;
#[cfg(test)]
mod cache_crash;
pub mod command;
pub mod conn;
pub mod entry;
pub mod folder;
pub mod hidden;
pub mod input;
pub mod memory;
pub mod mimedb;
pub mod mutf7;
pub mod response;
pub mod session;
pub mod sidecar;
pub mod store;
pub mod textsearch;
