//! Base64 (RFC 4648 section 4: the `+/` alphabet with `=` padding), the one
//! implementation for SASL (SMTP and POP3 AUTH, AUTH PLAIN to a relay), DKIM
//! and PEM.
//!
//! `decode` is strict (padding right, nothing else allowed), so a malformed
//! SASL response is a clear `501`, never a guess; `decode_lenient` skips
//! white space, as DKIM tags and PEM bodies need.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes `data` as base64 with padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The sextet an alphabet character stands for; `None` for any other byte
/// (padding, white space, ...), which each caller treats its own way.
pub fn value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes padded base64; `None` for anything malformed or not in the
/// canonical form `encode` writes.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (qi, q) in s.chunks(4).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        // Padding only at the very end, and at most two characters.
        if pad > 2 || (pad > 0 && qi + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        // The bits the padding cuts off must be zero (RFC 4648 3.5):
        // otherwise "Zh==" would be a second spelling of "Zg==" ("f"),
        // and one byte string must have one encoding.
        let spare = [0, 0x3, 0xf][pad];
        if n & spare != 0 {
            return None;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Decodes base64, ignoring whitespace; `None` on anything else invalid.
pub fn decode_lenient(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    let mut pad = 0;
    for b in text.bytes() {
        let v = match b {
            b'=' => {
                pad += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => value(b)?,
        };
        if pad > 0 {
            return None;
        }
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if pad > 2 || bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_and_round_trip() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), plain.as_bytes());
            assert_eq!(decode_lenient(enc).unwrap(), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        assert_eq!(decode_lenient("Zm9v\r\n YmFy").unwrap(), b"foobar");
        for bad in [
            "Zg=",
            "Zg===",
            "Z===",
            "Zm9v!",
            "Zm=9v",
            "Zg==Zg==",
            "Zm9v YmFy",
            // Found by fuzz/fuzz_targets/sasl.rs: non-zero bits under the
            // padding, a second spelling of "Zg==" and of "Zm8=".
            "Zh==",
            "Zm9=",
            "rrrrrrrrrrrrrrr=",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert!(decode_lenient("Zm9v!").is_none());
        assert!(decode_lenient("Zm=9v").is_none());
    }
}
