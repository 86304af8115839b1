//! The user's clients reading their mail: POP3 (RFC 1939, 2449, 5034,
//! 2595/8314 for TLS), over the mbox and maildrop of `store`.

pub mod pop3;
