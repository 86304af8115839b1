//! Modified UTF-7 for mailbox names (RFC 3501 5.1.3; RFC 9051 keeps it for
//! clients that have not enabled UTF8=ACCEPT): printable ASCII stands for
//! itself, `&` is `&-`, and anything else is `&`, the UTF-16BE code units
//! in base64 with `,` for `/` and no padding, and `-`.
//!
//! The folder store names folders in UTF-8; the session converts at the
//! protocol edge.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|&b| b == c).map(|p| p as u32)
}

/// Encodes a UTF-8 name for the wire.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut units: Vec<u16> = Vec::new();
    let flush = |units: &mut Vec<u16>, out: &mut String| {
        if units.is_empty() {
            return;
        }
        out.push('&');
        let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_be_bytes()).collect();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            let chars = chunk.len() + 1;
            for k in 0..chars {
                out.push(B64[(n >> (18 - 6 * k) & 63) as usize] as char);
            }
        }
        out.push('-');
        units.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut units, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut units, &mut out);
    out
}

/// Decodes a name from the wire; `None` if it is not valid modified UTF-7
/// (RFC 3501 5.1.3: such names are refused, not guessed at).
pub fn decode(wire: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(wire.len());
    let mut i = 0;
    while i < wire.len() {
        let c = wire[i];
        if c != b'&' {
            if !(0x20..=0x7e).contains(&c) {
                return None;
            }
            out.push(c as char);
            i += 1;
            continue;
        }
        let end = i + 1 + wire[i + 1..].iter().position(|&b| b == b'-')?;
        let b64 = &wire[i + 1..end];
        i = end + 1;
        if b64.is_empty() {
            out.push('&');
            continue;
        }
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut units = Vec::new();
        for &b in b64 {
            bits = bits << 6 | b64_value(b)?;
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push((bits >> nbits) as u16);
                bits &= (1 << nbits) - 1;
            }
        }
        // Leftover bits must be zero padding of fewer than 6 bits.
        if nbits >= 6 || bits != 0 {
            return None;
        }
        let s = String::from_utf16(&units).ok()?;
        // Printable ASCII must not be encoded (RFC 3501 5.1.3).
        if s.is_empty() || s.chars().any(|c| (' '..='~').contains(&c)) {
            return None;
        }
        out.push_str(&s);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_example_and_round_trips() {
        // RFC 3501 5.1.3.
        assert_eq!(
            decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-").as_deref(),
            Some("~peter/mail/台北/日本語")
        );
        assert_eq!(
            encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        for s in [
            "Entwürfe",
            "A&B",
            "Gelöschte Objekte",
            "😀 x",
            "",
            "Ünïcödé/ß",
        ] {
            assert_eq!(decode(encode(s).as_bytes()).as_deref(), Some(s), "{s}");
        }
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(decode(b"&Jjo-!"), Some("☺!".into()));
    }

    #[test]
    fn invalid_names() {
        assert_eq!(decode(b"&AGE-"), None); // encodes "a"
        assert_eq!(decode(b"&U,BTFw"), None); // unterminated
        assert_eq!(decode(b"&U/BTFw-"), None); // '/' is not modified base64
        assert_eq!(decode("ü".as_bytes()), None); // 8-bit
        assert_eq!(decode(b"&2D0-"), None); // lone surrogate
    }
}
