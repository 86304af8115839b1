//! The message in transit: addresses as SMTP carries them (RFC 5321
//! 4.1.2, RFC 6531), the one policy question "is this recipient ours?",
//! and the envelope with the trace headers every delivered message gets
//! (RFC 5321 4.4). Every stage from receive to send speaks these types.

pub mod address;
pub mod envelope;
