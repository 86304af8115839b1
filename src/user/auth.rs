//! Passwords: argon2id hashes in the config (`pimail passwd`), checked
//! against what a client sends (SMTP AUTH, POP3 USER/PASS, AUTH PLAIN).
//!
//! The parameters are chosen to fit a Pi Zero (12 MiB, 3 passes, one lane —
//! one of the OWASP-recommended argon2id settings); verification takes the
//! parameters from the stored PHC string, so stronger hashes also work.
//! The comparison inside `argon2` is constant-time.
//!
//! [`Throttle`] slows and then blocks password guessing per client address
//! (IPv6 by /64, since one host commonly holds a whole /64): two free
//! failures, then a delay from 250 ms doubling to 4 s before each `535`,
//! and after 10 failures in a row the address is refused for 15 minutes
//! without its password being looked at. [`check`] is the one place where
//! a login is verified, for SMTP AUTH and POP3 alike (one argon2 run at a
//! time, off the network thread, skipped when [`PasswordCache`] knows the
//! password; see [`Logins`]) and where failures are logged in one
//! greppable line for fail2ban:
//! `auth failed: rhost=192.0.2.7 service=submission user=alice failures=3`.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

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
///
/// The argon2 memory (12 MiB by default) is one allocation made and freed
/// here, which the allocator hands back to the system at once (see
/// [`crate::util::sys::tune_allocator`]; issue 13: each thread that ever
/// checked a password used to keep its 12 MiB).
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    argon2_matches(hash, password).unwrap_or(false)
}

/// What `Argon2::verify_password` does, with the memory blocks in our hands.
fn argon2_matches(hash: &str, password: &[u8]) -> Option<bool> {
    let parsed = PasswordHash::new(hash).ok()?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).ok()?;
    let expected = parsed.hash?;
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let mut out = vec![0u8; expected.len()];
    let mut blocks = vec![argon2::Block::new(); params.block_count()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut blocks)
        .ok()?;
    drop(blocks);
    // Without an early exit, as argon2's own comparison.
    Some(
        out.len() == expected.len()
            && out
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0,
    )
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

/// Failures that cost nothing: typos happen.
const FREE_FAILURES: u32 = 2;
/// The delay after the first costly failure; doubles with each further one.
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(4);
/// After this many failures in a row, logins from the address are refused
/// without looking at the password...
const BLOCK_AFTER: u32 = 10;
/// ...for this long.
const BLOCK_FOR: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Addresses remembered at most, so a spray of sources cannot eat memory.
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Per-address login failure counts: a growing delay, then a temporary
/// block. Pure policy: the clock is passed in.
#[derive(Debug, Default)]
pub struct Throttle {
    entries: HashMap<IpAddr, Entry>,
}

/// What a failed login costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    /// Failures in a row from this address, this one included.
    pub failures: u32,
    /// Wait this long before answering.
    pub delay: Duration,
    /// This failure started a block.
    pub blocked: bool,
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Some(remaining)` while the address is blocked.
    pub fn blocked(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let k = key(ip);
        let e = self.entries.get(&k)?;
        match e.blocked_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                // The block is over: start afresh.
                self.entries.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Records a failure and says what it costs.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> Penalty {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.last) < FORGET_AFTER);
            if self.entries.len() >= MAX_ENTRIES {
                // Still full: forget the stalest, never a blocked one first.
                if let Some(k) = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.blocked_until.is_none())
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&k);
                }
            }
        }
        let e = self.entries.entry(key(ip)).or_insert(Entry {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(e.last) >= FORGET_AFTER {
            e.failures = 0;
        }
        e.failures += 1;
        e.last = now;
        let blocked = e.failures >= BLOCK_AFTER && e.blocked_until.is_none();
        if blocked {
            e.blocked_until = Some(now + BLOCK_FOR);
        }
        Penalty {
            failures: e.failures,
            delay: delay_after(e.failures),
            blocked,
        }
    }

    /// A good login clears the address's record.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.entries.remove(&key(ip));
    }
}

/// 0, 0, then 250 ms doubling up to 4 s.
fn delay_after(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let shift = (failures - FREE_FAILURES - 1).min(16);
    (FIRST_DELAY * (1u32 << shift)).min(MAX_DELAY)
}

/// Login state shared by every service with logins (SMTP AUTH, POP3):
/// the per-address throttle, and a limit on concurrent argon2 runs, since
/// each takes the hash's memory (12 MiB by default) and a flood of logins
/// from many addresses must not exhaust a Pi's RAM.
pub struct Logins {
    pub throttle: RefCell<Throttle>,
    /// The last verified password, so polling clients skip argon2.
    pub cache: RefCell<PasswordCache>,
    slots: smol::lock::Semaphore,
}

/// Password checks running at once.
const CONCURRENT_VERIFICATIONS: usize = 1;

impl Default for Logins {
    fn default() -> Self {
        Logins {
            throttle: RefCell::new(Throttle::new()),
            cache: RefCell::new(PasswordCache::new()),
            slots: smol::lock::Semaphore::new(CONCURRENT_VERIFICATIONS),
        }
    }
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Wrong login or password (the penalty delay has already been served).
    Failure,
    /// The address is blocked; the password was not even looked at.
    Blocked,
}

/// Everything [`check`] needs to know about the account.
pub struct Account<'a> {
    pub name: &'a str,
    pub domains: &'a [String],
    pub password_hash: &'a str,
}

/// Checks a login from `peer`: refuses at once while the address is
/// blocked, otherwise runs argon2 on a blocking thread (it takes tens of
/// milliseconds and must not stall other sessions) unless the password
/// cache vouches for it, and on failure logs one line and waits out the
/// penalty (at least `min_delay`) before returning. The password is never
/// logged; the login only when it is the configured user's, since people
/// sometimes type their password into the user field.
pub async fn check(
    logins: &Logins,
    account: &Account<'_>,
    service: &str,
    peer: IpAddr,
    login: &str,
    password: Vec<u8>,
    min_delay: Duration,
) -> Outcome {
    let throttle = &logins.throttle;
    if let Some(left) = throttle.borrow_mut().blocked(peer, Instant::now()) {
        log::warn!(
            "auth refused: rhost={peer} service={service} blocked for {}s more",
            left.as_secs()
        );
        return Outcome::Blocked;
    }
    let known = is_user(login, account.name, account.domains);
    let hash = account.password_hash.to_string();
    // Every failure pays for argon2, whatever was wrong: the cache only
    // speaks for the configured login. (It used to answer for any name,
    // so the right password under a wrong name failed at once while a
    // wrong one took the argon2 time: a password could be confirmed
    // without knowing the login, issue 13.) For an unknown login argon2
    // runs all the same, so that timing does not tell either.
    let good = if known && logins.cache.borrow().hit(&hash, &password) {
        true
    } else {
        let _slot = logins.slots.acquire().await;
        let (h, pw) = (hash.clone(), password.clone());
        let good = smol::unblock(move || verify_password(&h, &pw)).await;
        if good && known {
            logins.cache.borrow_mut().remember(&hash, &password);
        }
        good
    };
    if good && known {
        throttle.borrow_mut().succeeded(peer);
        log::info!(
            "auth ok: rhost={peer} service={service} user={}",
            account.name
        );
        return Outcome::Success;
    }
    let p = throttle.borrow_mut().failed(peer, Instant::now());
    log::warn!(
        "auth failed: rhost={peer} service={service} user={} failures={}{}",
        if known { account.name } else { "(unknown)" },
        p.failures,
        if p.blocked {
            format!(", blocking the address for {}s", BLOCK_FOR.as_secs())
        } else {
            String::new()
        }
    );
    let delay = p.delay.max(min_delay);
    if !delay.is_zero() {
        smol::Timer::after(delay).await;
    }
    Outcome::Failure
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
    fn our_verification_agrees_with_argon2s_own() {
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        for (alg, ver, out_len) in [
            (Algorithm::Argon2id, Version::V0x13, 32),
            (Algorithm::Argon2i, Version::V0x13, 16),
            (Algorithm::Argon2d, Version::V0x10, 64),
        ] {
            let params = Params::new(64, 2, 1, Some(out_len)).unwrap();
            let h = Argon2::new(alg, ver, params)
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string();
            assert!(verify_password(&h, b"pw"), "{h}");
            assert!(!verify_password(&h, b"pW"), "{h}");
        }
        // The tests' stored hash (m=64, t=1) and a truncated one.
        let h = "$argon2id$v=19$m=64,t=1,p=1$d7bEe5+PDtR+c+lWi896vw$glblWHgdtnS/rmo83vVWocAP1oh4q0fcq6XvKfsvKO8";
        assert!(verify_password(h, b"secret"));
        assert!(!verify_password(&h[..h.len() - 4], b"secret"));
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

    #[test]
    fn throttle_slows_then_blocks_per_address() {
        let mut t = Throttle::new();
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let delays: Vec<Duration> = (1..=BLOCK_AFTER)
            .map(|i| {
                assert_eq!(t.blocked(a, now), None, "attempt {i}");
                t.failed(a, now).delay
            })
            .collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[1], Duration::ZERO);
        assert_eq!(delays[2], Duration::from_millis(250));
        assert_eq!(delays[3], Duration::from_millis(500));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        assert_eq!(t.blocked(a, now), Some(BLOCK_FOR));
        // Another address is not affected.
        assert_eq!(t.blocked(b, now), None);
        // The block ends, and the count starts afresh.
        assert_eq!(t.blocked(a, now + BLOCK_FOR), None);
        assert_eq!(t.failed(a, now + BLOCK_FOR).failures, 1);
        // Success clears; old failures are forgotten.
        t.failed(b, now);
        t.succeeded(b);
        assert_eq!(t.failed(b, now).failures, 1);
        assert_eq!(t.failed(b, now + FORGET_AFTER).failures, 1);
    }

    #[test]
    fn throttle_counts_ipv6_by_prefix_and_stays_bounded() {
        let mut t = Throttle::new();
        let now = Instant::now();
        for i in 0..BLOCK_AFTER {
            let ip: IpAddr = format!("2001:db8::{i:x}").parse().unwrap();
            t.failed(ip, now);
        }
        assert!(t.blocked("2001:db8::ffff".parse().unwrap(), now).is_some());
        assert!(t.blocked("2001:db8:0:1::1".parse().unwrap(), now).is_none());
        assert!(t
            .blocked("::ffff:192.0.2.9".parse().unwrap(), now)
            .is_none());
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            t.failed(IpAddr::V4(i.into()), now);
        }
        assert!(t.entries.len() <= MAX_ENTRIES);
        // The blocked prefix survived the flood.
        assert!(t.blocked("2001:db8::1".parse().unwrap(), now).is_some());
    }
}
