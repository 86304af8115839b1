//! The PROXY protocol, versions 1 (text) and 2 (binary), receiver side
//! (HAProxy's "The PROXY protocol", haproxy.org/download/2.9/doc/proxy-protocol.txt),
//! sans-I/O.
//!
//! A reverse proxy or port forwarder on the same host makes every client
//! look like loopback; on listeners named in `[listen] proxy_protocol`
//! the proxy sends this header first, and the session then uses the
//! client's real address for limits, trust and logs.
//!
//! [`parse`] never asks for more bytes than the header has, so the driver
//! can read exactly what it is told and leave everything after the header
//! (a TLS ClientHello, say) in the socket for the protocol. The header is
//! bounded ([`MAX_V1`], [`MAX_V2`]); anything that is not a well-formed
//! header is an error and the connection is closed (spec section 2: a
//! receiver must not guess).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Section 2.1: a v1 line is at most 107 octets with its CRLF.
pub const MAX_V1: usize = 107;
/// The longest v2 header we take: 16 octets plus addresses and TLVs.
/// HAProxy's own TLVs (ALPN, authority, SSL, unique id) fit easily.
pub const MAX_V2: usize = 16 + 1024;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The real client (source) address.
    Proxied(SocketAddr),
    /// v2 LOCAL (the proxy's own health check) or v1 UNKNOWN / v2 UNSPEC:
    /// use the connection's own address.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither "PROXY " nor the v2 signature.
    NotProxy,
    /// A v1 line without CRLF within 107 octets.
    TooLong,
    /// A malformed header; the text says what.
    Malformed(&'static str),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::NotProxy => write!(f, "no PROXY protocol header"),
            ProxyError::TooLong => write!(f, "PROXY v1 header too long"),
            ProxyError::Malformed(w) => write!(f, "bad PROXY header: {w}"),
        }
    }
}

/// The result of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Read exactly this many more bytes (never past the header's end).
    Need(usize),
    Done(Header),
}

/// Parses the start of a connection. `buf` holds every byte read so far,
/// and only what earlier calls asked for.
pub fn parse(buf: &[u8]) -> Result<Parse, ProxyError> {
    // Both forms are told apart by their first 8 octets ("PROXY " is 6,
    // the shortest v1 line, "PROXY UNKNOWN\r\n", is 15).
    if buf.len() < 8 {
        return Ok(Parse::Need(8 - buf.len()));
    }
    if buf.starts_with(b"PROXY ") {
        v1(buf)
    } else if buf.starts_with(&V2_SIGNATURE[..8]) {
        v2(buf)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Section 2.1: `PROXY TCP4|TCP6|UNKNOWN src dst sport dport\r\n`.
fn v1(buf: &[u8]) -> Result<Parse, ProxyError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_V1 {
            return Err(ProxyError::TooLong);
        }
        // One at a time: the line's end is not known in advance.
        return Ok(Parse::Need(1));
    };
    let line = buf[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyError::Malformed("v1 line not ended by CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1 not ASCII"))?;
    let f: Vec<&str> = line.split(' ').collect();
    match f.get(1).copied() {
        // "the receiver must ignore anything presented before the CRLF".
        Some("UNKNOWN") => Ok(Parse::Done(Header::Local)),
        Some(family @ ("TCP4" | "TCP6")) => {
            let [_, _, src, dst, sport, dport] = f[..] else {
                return Err(ProxyError::Malformed("v1 needs 6 fields"));
            };
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source address"))?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 destination address"))?;
            if src.is_ipv4() != (family == "TCP4") || dst.is_ipv4() != src.is_ipv4() {
                return Err(ProxyError::Malformed("v1 address family"));
            }
            let port = |p: &str| -> Result<u16, ProxyError> {
                // Section 2.1: no leading zeroes, 0..65535.
                if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                    return Err(ProxyError::Malformed("v1 port"));
                }
                p.parse().map_err(|_| ProxyError::Malformed("v1 port"))
            };
            let sport = port(sport)?;
            port(dport)?;
            Ok(Parse::Done(Header::Proxied(SocketAddr::new(src, sport))))
        }
        _ => Err(ProxyError::Malformed(
            "v1 protocol must be TCP4, TCP6 or UNKNOWN",
        )),
    }
}

/// Section 2.2: signature, version/command, family/transport, length,
/// addresses, TLVs (ignored).
fn v2(buf: &[u8]) -> Result<Parse, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parse::Need(16 - buf.len()));
    }
    if &buf[..12] != V2_SIGNATURE {
        return Err(ProxyError::NotProxy);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + len > MAX_V2 {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    if buf.len() < 16 + len {
        return Ok(Parse::Need(16 + len - buf.len()));
    }
    let body = &buf[16..16 + len];
    match ver_cmd & 0x0f {
        // LOCAL: the proxy speaking for itself; the addresses are ignored.
        0x0 => return Ok(Parse::Done(Header::Local)),
        0x1 => {}
        _ => return Err(ProxyError::Malformed("v2 command")),
    }
    // Only TCP (STREAM, low nibble 1) over IPv4 or IPv6 carries a client
    // address we can use; UNSPEC means "unknown", as v1 UNKNOWN.
    match fam {
        0x00 => Ok(Parse::Done(Header::Local)),
        0x11 => {
            if body.len() < 12 {
                return Err(ProxyError::Malformed("v2 IPv4 addresses too short"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Parse::Done(Header::Proxied(SocketAddr::new(
                ip.into(),
                port,
            ))))
        }
        0x21 => {
            if body.len() < 36 {
                return Err(ProxyError::Malformed("v2 IPv6 addresses too short"));
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Parse::Done(Header::Proxied(SocketAddr::new(
                Ipv6Addr::from(a).into(),
                port,
            ))))
        }
        _ => Err(ProxyError::Malformed(
            "v2 family must be TCP over IPv4 or IPv6",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` the way a driver does, reading exactly what is
    /// asked for; gives the result and how many bytes were taken.
    fn drive(input: &[u8]) -> (Result<Header, ProxyError>, usize) {
        let mut buf = Vec::new();
        loop {
            match parse(&buf) {
                Ok(Parse::Done(h)) => return (Ok(h), buf.len()),
                Err(e) => return (Err(e), buf.len()),
                Ok(Parse::Need(n)) => {
                    assert!(n > 0);
                    let rest = &input[buf.len()..];
                    if rest.len() < n {
                        return (Err(ProxyError::Malformed("eof")), buf.len());
                    }
                    buf.extend_from_slice(&rest[..n]);
                }
            }
        }
    }

    fn v2_header(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v1_tcp4_tcp6_unknown_and_nothing_read_past_the_line() {
        let mut input = b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 25\r\n".to_vec();
        let header_len = input.len();
        input.extend_from_slice(b"EHLO x\r\n");
        let (h, used) = drive(&input);
        assert_eq!(h, Ok(Header::Proxied("203.0.113.5:56324".parse().unwrap())));
        assert_eq!(used, header_len);
        let (h, _) = drive(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 587\r\n");
        assert_eq!(
            h,
            Ok(Header::Proxied("[2001:db8::7]:4000".parse().unwrap()))
        );
        assert_eq!(drive(b"PROXY UNKNOWN\r\n").0, Ok(Header::Local));
        assert_eq!(
            drive(b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\n").0,
            Ok(Header::Local)
        );
    }

    #[test]
    fn v1_garbage_is_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.5 192.0.2.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 192.0.2.1 1 25\r\n",
            b"PROXY TCP6 203.0.113.5 192.0.2.1 1 25\r\n",
            b"PROXY TCP4 203.0.113.5 192.0.2.1 065535 25\r\n",
            b"PROXY TCP4 203.0.113.5 192.0.2.1 65536 25\r\n",
            b"PROXY UDP4 203.0.113.5 192.0.2.1 1 25\r\n",
            b"PROXY TCP4 203.0.113.5 192.0.2.1 1 25\n",
            b"PROXY TCP4 203.0.113.5  192.0.2.1 1 25\r\n",
        ] {
            let (h, _) = drive(bad);
            assert!(
                matches!(h, Err(ProxyError::Malformed(_))),
                "{:?}: {h:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Not a PROXY header at all: a client that speaks SMTP directly.
        assert_eq!(
            drive(b"EHLO client.example\r\n").0,
            Err(ProxyError::NotProxy)
        );
        // No line end within 107 octets: refused after 107, not more.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(drive(&long), (Err(ProxyError::TooLong), MAX_V1));
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut body = vec![203, 0, 113, 5, 192, 0, 2, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&25u16.to_be_bytes());
        // A TLV (PP2_TYPE_AUTHORITY) after the addresses is skipped.
        body.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b']);
        let mut input = v2_header(1, 0x11, &body);
        let n = input.len();
        // A TLS ClientHello right behind the header stays unread.
        input.extend_from_slice(&[0x16, 0x03, 0x01]);
        assert_eq!(
            drive(&input),
            (Ok(Header::Proxied("203.0.113.5:56324".parse().unwrap())), n)
        );
        let mut body6 = Vec::new();
        body6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&4000u16.to_be_bytes());
        body6.extend_from_slice(&995u16.to_be_bytes());
        assert_eq!(
            drive(&v2_header(1, 0x21, &body6)).0,
            Ok(Header::Proxied("[2001:db8::7]:4000".parse().unwrap()))
        );
        assert_eq!(drive(&v2_header(0, 0x11, &body)).0, Ok(Header::Local));
        assert_eq!(drive(&v2_header(1, 0x00, &[])).0, Ok(Header::Local));
    }

    #[test]
    fn v2_garbage_is_refused() {
        // UDP, UNIX sockets, short addresses, bad version or command.
        assert!(drive(&v2_header(1, 0x12, &[0; 12])).0.is_err());
        assert!(drive(&v2_header(1, 0x31, &[0; 216])).0.is_err());
        assert!(drive(&v2_header(1, 0x11, &[0; 11])).0.is_err());
        assert!(drive(&v2_header(1, 0x21, &[0; 35])).0.is_err());
        assert!(drive(&v2_header(2, 0x11, &[0; 12])).0.is_err());
        let mut bad_version = v2_header(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(drive(&bad_version).0.is_err());
        // A length beyond the bound is refused before reading it.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            drive(&huge),
            (Err(ProxyError::Malformed("v2 header too long")), 16)
        );
        // The first 8 octets of the signature, then something else.
        let mut broken = V2_SIGNATURE[..8].to_vec();
        broken.extend_from_slice(b"XXXXXXXX");
        assert_eq!(drive(&broken).0, Err(ProxyError::NotProxy));
    }

    #[test]
    fn every_prefix_asks_for_more_never_past_the_end() {
        let v1 = b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 25\r\n".to_vec();
        let v2 = v2_header(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for input in [v1, v2] {
            for k in 0..input.len() {
                match parse(&input[..k]) {
                    Ok(Parse::Need(n)) => assert!(k + n <= input.len(), "{k} + {n}"),
                    other => panic!("prefix {k}: {other:?}"),
                }
            }
            assert!(matches!(parse(&input), Ok(Parse::Done(_))));
        }
    }
}
