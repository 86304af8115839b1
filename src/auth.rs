//! Passwords: argon2id hashes in the config (`pimail passwd`), checked
//! against what a client sends (SMTP AUTH, POP3 USER/PASS, AUTH PLAIN).
//!
//! The parameters are chosen to fit a Pi Zero (12 MiB, 3 passes, one lane —
//! one of the OWASP-recommended argon2id settings); verification takes the
//! parameters from the stored PHC string, so stronger hashes also work.
//! The comparison inside `argon2` is constant-time.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Hashes `password` into a PHC string for `user.password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no random numbers: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let params = Params::new(12 * 1024, 3, 1, None).map_err(|e| e.to_string())?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks that a configured hash can be used, so that a typo is a config
/// error at start and not a login that can never succeed.
pub fn check_hash_syntax(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("not a valid argon2 hash: {e}"))?;
    Params::try_from(&parsed).map_err(|e| format!("unusable argon2 parameters: {e}"))?;
    Ok(())
}

/// True when `password` matches the stored hash. Wrong or malformed input is
/// simply "no"; the caller logs the failure and throttles.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Is `login` the configured user? Accepts `name` and `name@domain` for any
/// local domain, case-insensitively in the domain (SPEC "Configuration").
pub fn is_user(login: &str, name: &str, domains: &[String]) -> bool {
    match login.rsplit_once('@') {
        None => login == name,
        Some((local, domain)) => {
            local == name && domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
        }
    }
}

/// A fresh random password for the embedded try-it default: 16 characters
/// from an unambiguous alphabet (~93 bits).
pub fn generate_password() -> Result<String, String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no random numbers: {e}"))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=12288,t=3,p=1$"));
        check_hash_syntax(&h).unwrap();
        assert!(verify_password(&h, b"correct horse"));
        assert!(!verify_password(&h, b"correct hors"));
        assert!(!verify_password("garbage", b"correct horse"));
        // A salt is random: the same password hashes differently.
        assert_ne!(h, hash_password("correct horse").unwrap());
    }

    #[test]
    fn login_names() {
        let d = vec!["example.org".to_string()];
        assert!(is_user("alice", "alice", &d));
        assert!(is_user("alice@EXAMPLE.org", "alice", &d));
        assert!(!is_user("alice@example.net", "alice", &d));
        assert!(!is_user("bob", "alice", &d));
        assert!(!is_user("", "alice", &d));
    }

    #[test]
    fn generated_passwords_are_distinct() {
        let a = generate_password().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, generate_password().unwrap());
    }
}
