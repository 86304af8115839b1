//! The network under every protocol: admission of connections (limits per
//! server and per client), the bounded CRLF line reader (RFC 5321
//! 4.5.3.1), TLS for listeners (RFC 3207, RFC 2595, RFC 8314) and
//! pimail's stub DNS resolver (RFC 1035, RFC 7766), and the PROXY protocol
//! header a local proxy sends. Nothing here knows a mail protocol.

pub mod dns;
pub mod https;
pub mod line;
pub mod listen;
pub mod proxy;
pub mod selfsigned;
pub mod tls;
