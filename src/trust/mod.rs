//! Is this mail what it claims to be, and will ours be believed? SPF (RFC
//! 7208), DKIM signing and verification (RFC 6376, 8463, 8301), DMARC (RFC
//! 7489), the `Authentication-Results:` header (RFC 8601) written on port
//! 25, the DNS view these checks share, and `pimail doctor`, which runs
//! the same checks against the user's own domain.

pub mod authdns;
pub mod authres;
pub mod dkim;
pub mod dmarc;
pub mod doctor;
pub mod spf;
