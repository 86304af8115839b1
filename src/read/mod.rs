//! The user's clients reading their mail: POP3 (RFC 1939, 2449, 5034,
//! 2595/8314 for TLS) and IMAP (RFC 9051/3501 and the extensions clients
//! use, RFC 8314 for TLS), over the mbox, maildrop and folders of `store`.

pub mod imap;
pub mod pop3;
