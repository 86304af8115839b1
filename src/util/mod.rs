//! Small shared pieces that every stage may use, and that use nothing of
//! pimail above them: base64 (RFC 4648), dates for headers and `From `
//! lines (RFC 5322 3.3), the files and directories pimail owns, the few
//! system calls std lacks, the runtime helpers (a timeout, ids), logging
//! for the journal and systemd's readiness notification.

pub mod activity;
pub mod base64;
pub mod logging;
pub mod notify;
pub mod paths;
pub mod rt;
pub mod sys;
pub mod timefmt;
