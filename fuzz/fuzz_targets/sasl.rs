//! SASL responses (`sasl::decode_response`, `parse_plain`,
//! `parse_login_user`) and base64: any line a client sends after AUTH
//! gives credentials or a clear error, never a panic; strict decoding
//! accepts only what `encode` produces (one spelling per byte string, so
//! nothing is smuggled past a check on the encoded form), and
//! `decode_lenient` reads what `encode` wrote, also with white space.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::util::base64;
use pimail::user::sasl::{decode_response, parse_login_user, parse_plain};

fuzz_target!(|data: &[u8]| {
    // Any bytes round-trip through encode.
    let enc = base64::encode(data);
    assert_eq!(base64::decode(&enc).as_deref(), Some(data));
    assert_eq!(base64::decode_lenient(&enc).as_deref(), Some(data));
    let spaced: String = enc
        .as_bytes()
        .chunks(7)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\r\n ");
    assert_eq!(base64::decode_lenient(&spaced).as_deref(), Some(data));

    // The bytes as a client's response line.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(bytes) = base64::decode(line) {
        assert_eq!(
            base64::encode(&bytes),
            line,
            "strict decode is not canonical"
        );
        assert_eq!(base64::decode_lenient(line).as_deref(), Some(&bytes[..]));
    }
    if let Ok(msg) = decode_response(line) {
        if let Ok(c) = parse_plain(&msg) {
            assert!(!c.login.is_empty() && !c.login.contains('\0'));
            assert!(!c.password.contains(&0));
            let mut again = c.login.as_bytes().to_vec();
            again.push(0);
            again.extend_from_slice(&c.password);
            assert!(msg.ends_with(&again), "PLAIN parts do not add up");
        }
        if let Ok(u) = parse_login_user(&msg) {
            assert_eq!(u.as_bytes(), &msg[..]);
        }
    }
});
