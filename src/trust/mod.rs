//! Is this mail what it claims to be, and will ours be believed? SPF (RFC
//! 7208), DKIM signing and verification (RFC 6376, 8463, 8301), DMARC (RFC
//! 7489), the `Authentication-Results:` header (RFC 8601) written on port
//! 25, the DNS view these checks share, and `pimail doctor`, which runs
//! the same checks against the user's own domain. And keeping spam out
//! (docs/spam.md): DNS blocklists and reverse DNS (`dnsbl`), the greylist
//! table (`greylist`), header rules (`rules`), the address sets they
//! consult (`known`) and today's counts of their decisions (`counts`).

pub mod authdns;
pub mod authres;
pub mod counts;
pub mod dkim;
pub mod dmarc;
pub mod dnsbl;
pub mod doctor;
pub mod greylist;
pub mod known;
pub mod rules;
pub mod spf;
