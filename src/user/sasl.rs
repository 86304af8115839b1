//! SASL pieces shared by SMTP AUTH (RFC 4954) and POP3 AUTH (RFC 5034):
//! base64 (RFC 4648 section 4, the alphabet with `+/` and `=` padding),
//! the PLAIN mechanism's message (RFC 4616) and the LOGIN mechanism's
//! prompts (draft-murchison-sasl-login).
//!
//! Decoding is strict: padding must be right and no other characters may
//! appear, so a malformed response is a clear `501`, never a guess.

/// LOGIN's first server challenge, "Username:".
pub const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
/// LOGIN's second server challenge, "Password:".
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

pub use crate::util::base64::{decode as decode_base64, encode as encode_base64};

/// What a client presented: who it says it is and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub login: String,
    pub password: Vec<u8>,
}

// Never print a password, not even in a debug log.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .field("password", &"<hidden>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// Not base64: `501 5.5.2`.
    Base64,
    /// Decoded, but not `[authzid] NUL authcid NUL passwd` in UTF-8 names:
    /// `501 5.5.2`.
    Malformed,
    /// The client asked to act as someone else (an authzid other than the
    /// login): we have one user and no proxy rights, `535 5.7.8`.
    Authzid,
}

/// A base64 SASL response as the client sent it. RFC 4954 4: a lone `=`
/// is an empty response.
pub fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_end_matches(' ');
    if line == "=" {
        return Ok(Vec::new());
    }
    decode_base64(line).ok_or(SaslError::Base64)
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let authzid = std::str::from_utf8(authzid).map_err(|_| SaslError::Malformed)?;
    let login = std::str::from_utf8(authcid).map_err(|_| SaslError::Malformed)?;
    if login.is_empty() || password.contains(&0) {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != login {
        return Err(SaslError::Authzid);
    }
    Ok(Credentials {
        login: login.to_string(),
        password: password.to_vec(),
    })
}

/// A LOGIN user name response, decoded.
pub fn parse_login_user(message: &[u8]) -> Result<String, SaslError> {
    match std::str::from_utf8(message) {
        Ok(s) if !s.is_empty() && !s.contains('\0') => Ok(s.to_string()),
        _ => Err(SaslError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode_base64(plain.as_bytes()), enc);
            assert_eq!(decode_base64(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode_base64(b"Username:"), LOGIN_USER_PROMPT);
        assert_eq!(encode_base64(b"Password:"), LOGIN_PASSWORD_PROMPT);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_base64(&encode_base64(&all)).unwrap(), all);
    }

    #[test]
    fn base64_rejects_malformed() {
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!", "Zm 9v", "Zm9vY", "=Zm9"] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_messages() {
        let c = parse_plain(b"\0alice\0secret").unwrap();
        assert_eq!(
            (c.login.as_str(), c.password.as_slice()),
            ("alice", &b"secret"[..])
        );
        let c = parse_plain(b"alice\0alice\0pw").unwrap();
        assert_eq!(c.login, "alice");
        assert_eq!(parse_plain(b"bob\0alice\0pw"), Err(SaslError::Authzid));
        assert_eq!(parse_plain(b"alice\0pw"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0\0pw"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0a\xff\0pw"), Err(SaslError::Malformed));
        assert_eq!(decode_response("="), Ok(vec![]));
        assert_eq!(
            decode_response("AGFsaWNlAHNlY3JldA=="),
            Ok(b"\0alice\0secret".to_vec())
        );
        assert_eq!(decode_response("***"), Err(SaslError::Base64));
        // The password is never in a debug print.
        let dbg = format!("{:?}", parse_plain(b"\0alice\0hunter2").unwrap());
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
