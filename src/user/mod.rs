//! The one user: checking a password (argon2id hashes, login throttling)
//! and the SASL messages that carry it (RFC 4616 PLAIN, the LOGIN
//! mechanism, RFC 4954 and RFC 5034 framing). Used by submission and every
//! mail reader; needs only `util`.

pub mod auth;
pub mod sasl;
