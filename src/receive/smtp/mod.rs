//! SMTP (RFC 5321) for receiving on port 25 and for submission (RFC 6409).
//!
//! `command` parses command lines, `data` decodes the DATA stream,
//! `session` is the sans-I/O state machine that decides every reply, and
//! `conn` is the thin async layer that moves bytes between a socket, the
//! session, the spool file and the delivery.

pub mod command;
pub mod conn;
pub mod data;
pub mod reply;
pub mod session;

pub use reply::Reply;
