//! Where accepted mail lives: the user's mbox (mboxrd, dot-lock and
//! `fcntl` locks, crash-safe appends and rewrites) and the POP3 maildrop
//! index over it (sizes, UIDLs, the rewrite at QUIT; RFC 1939). Receive,
//! send (local delivery, bounces) and read all go through here; `mime` is
//! the MIME structure IMAP reports of each message (kept in the index).

#[cfg(test)]
pub(crate) mod crash;
pub mod disk;
#[cfg(test)]
pub(crate) mod explore;
#[cfg(test)]
mod imap_crash;
pub mod maildrop;
pub mod mbox;
pub mod mime;
#[cfg(test)]
mod pop3_crash;
#[cfg(test)]
pub(crate) mod simfs;
pub mod status;
