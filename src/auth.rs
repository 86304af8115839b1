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

/// How long a verified password is remembered (Dovecot's `auth_cache_ttl`
/// default): mail clients poll every few minutes with the same password.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Remembers the last password that verified, so that a client polling
/// every few minutes does not pay for argon2 at each login (Dovecot's
/// auth cache does the same). Only a keyed BLAKE2b hash of it is kept,
/// under a random key that lives in memory only; only successes are
/// cached, so a wrong password always costs argon2 and the delay.
pub struct PasswordCache {
    key: [u8; 32],
    /// (keyed hash of the password, the stored hash it matched, when)
    entry: Option<([u8; 32], String, std::time::Instant)>,
}

impl PasswordCache {
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        // Without randomness there is no cache: an all-zero key means off.
        if getrandom::getrandom(&mut key).is_err() {
            key = [0; 32];
        }
        PasswordCache { key, entry: None }
    }

    fn mac(&self, password: &[u8]) -> Option<[u8; 32]> {
        use blake2::digest::{consts::U32, Mac};
        if self.key == [0; 32] {
            return None;
        }
        let mut m = blake2::Blake2bMac::<U32>::new_from_slice(&self.key).ok()?;
        m.update(password);
        Some(m.finalize().into_bytes().into())
    }

    /// True when `password` is the one that last verified against `hash`
    /// within the TTL.
    pub fn hit(&self, hash: &str, password: &[u8]) -> bool {
        let (Some((mac, h, at)), Some(now)) = (&self.entry, self.mac(password)) else {
            return false;
        };
        // Compare without an early exit.
        let same = mac
            .iter()
            .zip(now.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        same && h == hash && at.elapsed() < CACHE_TTL
    }

    /// Records a password that argon2 has just verified against `hash`.
    pub fn remember(&mut self, hash: &str, password: &[u8]) {
        self.entry = self
            .mac(password)
            .map(|m| (m, hash.to_string(), std::time::Instant::now()));
    }
}

impl Default for PasswordCache {
    fn default() -> Self {
        Self::new()
    }
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
    fn password_cache_remembers_only_the_verified_password() {
        let mut c = PasswordCache::new();
        assert!(!c.hit("$h1", b"pw"));
        c.remember("$h1", b"pw");
        assert!(c.hit("$h1", b"pw"));
        assert!(!c.hit("$h1", b"pW"));
        // A changed configured hash (reload) invalidates it.
        assert!(!c.hit("$h2", b"pw"));
    }

    #[test]
    fn generated_passwords_are_distinct() {
        let a = generate_password().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, generate_password().unwrap());
    }
}
