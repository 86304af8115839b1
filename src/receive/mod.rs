//! Mail arriving: the SMTP server side (RFC 5321) on port 25 and for
//! submission (RFC 6409, 8314), from the command parser and the DATA
//! decoder to the driver that runs the trust checks and hands each
//! message to `store` (local recipients) or `send` (the others).

pub mod smtp;
