//! Greylisting state (as postgrey keeps it): which (client network,
//! sender, recipient) triplets were seen when, and which passed.
//!
//! The file `<data_dir>/greylist` is a fixed-size hash table, so a lookup
//! is one positioned read of one bucket and an update one positioned write
//! of one slot, whatever the number of entries, and the file never grows:
//!
//! ```text
//! header (64 bytes): "pimail-greylist1", buckets u32, slots u32, salt u64,
//!                    zero padding, FNV checksum of bytes 0..56 (u64 at 56)
//! BUCKETS x SLOTS slots of 24 bytes, little-endian:
//!   key u64 (0 = empty), first seen u32, last seen u32 (unix seconds),
//!   passes u32 (0 = still being delayed; counted at most once an hour),
//!   check u32 (of the 20 bytes before)
//! ```
//!
//! A full bucket gives up its least recently seen entry. The state is safe
//! to lose: a forgotten triplet costs one more delay. So nothing is
//! fsynced; a torn slot fails its check and reads as empty, and a file
//! with a bad header or the wrong size is replaced by an empty table.
//!
//! Keys: IPv4 clients by /24 and IPv6 by /64 (big senders retry from
//! another address of the same network), sender and recipient in lower
//! case, with runs of digits in the sender's local part folded to `#` so
//! that VERP and SRS senders (a new address per message) are one sender
//! (postgrey's sender substitution).

use std::fs::{File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 16] = b"pimail-greylist1";
const HEADER: u64 = 64;
const SLOT: usize = 24;
/// 16384 buckets of 8 slots: 131072 triplets in a 3 MiB file.
pub const BUCKETS: u32 = 16384;
pub const SLOTS: u32 = 8;
/// A passed triplet is remembered this long after it was last seen.
pub const PASS_TTL: u32 = 35 * 86400;
/// A delayed triplet must be retried within this long after its first
/// attempt, or it starts over (postgrey's retry window).
pub const RETRY_WINDOW: u32 = 2 * 86400;
/// A known triplet's "last seen" is written again only after this long.
const LAST_SEEN_STEP: u32 = 3600;

/// What the greylist says about one triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accept. `first`: the retry that got through just now.
    Pass { first: bool },
    /// `451 4.7.1`: try again in this many seconds.
    Defer { wait: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key: u64,
    first: u32,
    last: u32,
    passes: u32,
}

fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finaliser: spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Slot {
    fn encode(&self, salt: u64) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[0..8].copy_from_slice(&self.key.to_le_bytes());
        b[8..12].copy_from_slice(&self.first.to_le_bytes());
        b[12..16].copy_from_slice(&self.last.to_le_bytes());
        b[16..20].copy_from_slice(&self.passes.to_le_bytes());
        let check = fnv(salt, &b[..20]) as u32;
        b[20..24].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// `None` for an empty or torn slot.
    fn decode(b: &[u8], salt: u64) -> Option<Slot> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let key = u64::from_le_bytes(b[0..8].try_into().ok()?);
        if key == 0 || u32_at(20) != fnv(salt, &b[..20]) as u32 {
            return None;
        }
        Some(Slot {
            key,
            first: u32_at(8),
            last: u32_at(12),
            passes: u32_at(16),
        })
    }
}

/// The client network a triplet is keyed on: /24 or /64.
pub fn network(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The sender as a greylist key: lower case, digit runs of the local
/// part folded to `#`.
pub fn sender_key(sender: &str) -> String {
    let s = sender.to_lowercase();
    let (local, domain) = s.rsplit_once('@').unwrap_or((&s, ""));
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    for c in local.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    if !domain.is_empty() {
        out.push('@');
        out.push_str(domain);
    }
    out
}

/// The open table.
pub struct Greylist {
    file: File,
    salt: u64,
    pub path: PathBuf,
}

fn header(salt: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..16].copy_from_slice(MAGIC);
    h[16..20].copy_from_slice(&BUCKETS.to_le_bytes());
    h[20..24].copy_from_slice(&SLOTS.to_le_bytes());
    h[24..32].copy_from_slice(&salt.to_le_bytes());
    let c = fnv(0, &h[..56]);
    h[56..64].copy_from_slice(&c.to_le_bytes());
    h
}

/// The file size of a table.
pub const FILE_SIZE: u64 = HEADER + BUCKETS as u64 * SLOTS as u64 * SLOT as u64;

impl Greylist {
    /// Opens `<data_dir>/greylist`, or starts an empty table when there is
    /// none or it cannot be trusted (logged).
    pub fn open(data_dir: &Path) -> io::Result<Greylist> {
        let path = data_dir.join("greylist");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        let mut h = [0u8; HEADER as usize];
        let len = file.metadata()?.len();
        let valid = len == FILE_SIZE
            && file.read_exact_at(&mut h, 0).is_ok()
            && h == header(u64::from_le_bytes(h[24..32].try_into().unwrap_or_default()));
        let salt = if valid {
            u64::from_le_bytes(h[24..32].try_into().unwrap_or_default())
        } else {
            if len > 0 {
                log::warn!(
                    "greylist {}: not a table this pimail wrote (or torn), starting empty",
                    path.display()
                );
            }
            let mut b = [0u8; 8];
            let _ = getrandom::getrandom(&mut b);
            let salt = u64::from_le_bytes(b);
            // Zero slots are empty: a sparse file is an empty table.
            file.set_len(0)?;
            file.set_len(FILE_SIZE)?;
            file.write_all_at(&header(salt), 0)?;
            salt
        };
        Ok(Greylist { file, salt, path })
    }

    /// The 64-bit key of a triplet (never 0, which marks an empty slot).
    pub fn key(&self, ip: IpAddr, sender: &str, rcpt: &str) -> u64 {
        let text = format!(
            "{}\0{}\0{}",
            network(ip),
            sender_key(sender),
            rcpt.to_lowercase()
        );
        fnv(self.salt, text.as_bytes()).max(1)
    }

    /// Looks the triplet up at time `now` (unix seconds) and records the
    /// attempt: one read and at most one write of the file.
    pub fn check(&self, key: u64, now: u64, delay: u32) -> io::Result<Verdict> {
        let now = u32::try_from(now).unwrap_or(u32::MAX);
        let bucket = (key >> 32) % u64::from(BUCKETS);
        let at = HEADER + bucket * u64::from(SLOTS) * SLOT as u64;
        let mut buf = [0u8; SLOTS as usize * SLOT];
        self.file.read_exact_at(&mut buf, at)?;
        let slots: Vec<Option<Slot>> = buf
            .chunks(SLOT)
            .map(|c| Slot::decode(c, self.salt))
            .collect();
        let write = |i: usize, s: Slot| {
            self.file
                .write_all_at(&s.encode(self.salt), at + (i * SLOT) as u64)
        };
        let expired = |s: &Slot| {
            if s.passes > 0 {
                now.saturating_sub(s.last) > PASS_TTL
            } else {
                now.saturating_sub(s.first) > RETRY_WINDOW
            }
        };
        if let Some(i) = slots.iter().position(|s| s.is_some_and(|s| s.key == key)) {
            let Some(mut s) = slots[i] else {
                return Ok(Verdict::Defer { wait: delay });
            };
            if expired(&s) {
                s = Slot {
                    key,
                    first: now,
                    last: now,
                    passes: 0,
                };
                write(i, s)?;
                return Ok(Verdict::Defer { wait: delay });
            }
            let waited = now.saturating_sub(s.first);
            if s.passes > 0 && now.saturating_sub(s.last) < LAST_SEEN_STEP {
                // Seen within the hour: "last seen" is only for expiry
                // (weeks) and eviction, so the slot is not written again
                // for every message of a busy correspondent.
                return Ok(Verdict::Pass { first: false });
            }
            s.last = now;
            let v = if s.passes > 0 {
                s.passes = s.passes.saturating_add(1);
                Verdict::Pass { first: false }
            } else if waited >= delay {
                s.passes = 1;
                Verdict::Pass { first: true }
            } else {
                Verdict::Defer {
                    wait: delay - waited,
                }
            };
            write(i, s)?;
            return Ok(v);
        }
        // A new triplet: an empty or expired slot, else the least
        // recently seen one of the bucket.
        let victim = slots
            .iter()
            .position(|s| s.map_or(true, |s| expired(&s)))
            .unwrap_or_else(|| {
                (0..slots.len())
                    .min_by_key(|&i| slots[i].map_or(0, |s| s.last))
                    .unwrap_or(0)
            });
        write(
            victim,
            Slot {
                key,
                first: now,
                last: now,
                passes: 0,
            },
        )?;
        Ok(Verdict::Defer { wait: delay })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pimail-grey-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn keys_fold_networks_and_verp_senders() {
        assert_eq!(network("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            network("::ffff:192.0.2.77".parse().unwrap()),
            "192.0.2.0/24"
        );
        assert_eq!(
            network("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            sender_key("Bounce-1234-5678@Lists.Example"),
            "bounce-#-#@lists.example"
        );
        assert_eq!(sender_key(""), "");
        let d = dir("keys");
        let g = Greylist::open(&d).unwrap();
        let a = g.key(
            "192.0.2.1".parse().unwrap(),
            "x1@a.example",
            "alice@example.org",
        );
        let b = g.key(
            "192.0.2.200".parse().unwrap(),
            "x22@a.example",
            "Alice@example.org",
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            g.key(
                "192.0.3.1".parse().unwrap(),
                "x1@a.example",
                "alice@example.org"
            )
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A table in `d` with one triplet (key `k`) delayed at `t` and
    /// passed after the 300 s delay.
    fn passed_triplet(d: &std::path::Path) -> (Greylist, u64, u64) {
        let g = Greylist::open(d).unwrap();
        let k = g.key(
            "192.0.2.1".parse().unwrap(),
            "a@b.example",
            "alice@example.org",
        );
        let t = 1_700_000_000;
        assert_eq!(g.check(k, t, 300).unwrap(), Verdict::Defer { wait: 300 });
        assert_eq!(
            g.check(k, t + 300, 300).unwrap(),
            Verdict::Pass { first: true }
        );
        (g, k, t)
    }

    #[test]
    fn a_busy_known_triplet_is_written_at_most_once_an_hour_and_still_expires() {
        let d = dir("busy");
        let (g, k, t) = passed_triplet(&d);
        let file = || std::fs::read(d.join("greylist")).unwrap();
        let before = file();
        for i in 1..100 {
            assert_eq!(
                g.check(k, t + 300 + i, 300).unwrap(),
                Verdict::Pass { first: false }
            );
        }
        assert_eq!(file(), before, "the slot was rewritten within the hour");
        // An hour on, "last seen" moves: the triplet lives PASS_TTL from it.
        let later = t + 300 + u64::from(LAST_SEEN_STEP);
        assert_eq!(
            g.check(k, later, 300).unwrap(),
            Verdict::Pass { first: false }
        );
        assert_ne!(file(), before);
        let near_end = later + u64::from(PASS_TTL);
        assert_eq!(
            g.check(k, near_end, 300).unwrap(),
            Verdict::Pass { first: false }
        );
        // Unseen for longer than PASS_TTL: delayed again.
        let gone = near_end + u64::from(PASS_TTL) + 1;
        assert_eq!(g.check(k, gone, 300).unwrap(), Verdict::Defer { wait: 300 });
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn delay_then_pass_then_remembered_across_reopen() {
        let d = dir("flow");
        let g = Greylist::open(&d).unwrap();
        let k = g.key(
            "192.0.2.1".parse().unwrap(),
            "a@b.example",
            "alice@example.org",
        );
        let t = 1_700_000_000;
        assert_eq!(g.check(k, t, 300).unwrap(), Verdict::Defer { wait: 300 });
        assert_eq!(
            g.check(k, t + 100, 300).unwrap(),
            Verdict::Defer { wait: 200 }
        );
        assert_eq!(
            g.check(k, t + 300, 300).unwrap(),
            Verdict::Pass { first: true }
        );
        assert_eq!(
            g.check(k, t + 301, 300).unwrap(),
            Verdict::Pass { first: false }
        );
        drop(g);
        let g = Greylist::open(&d).unwrap();
        assert_eq!(
            g.check(k, t + 86400, 300).unwrap(),
            Verdict::Pass { first: false }
        );
        // Remembered for weeks after it was last seen, not for ever.
        let later = t + 86400 + u64::from(PASS_TTL) + 1;
        assert_eq!(
            g.check(k, later, 300).unwrap(),
            Verdict::Defer { wait: 300 }
        );
        // A delayed triplet not retried within the window starts over.
        let k2 = g.key(
            "192.0.2.1".parse().unwrap(),
            "c@b.example",
            "alice@example.org",
        );
        g.check(k2, t, 300).unwrap();
        let late = t + u64::from(RETRY_WINDOW) + 1;
        assert_eq!(
            g.check(k2, late, 300).unwrap(),
            Verdict::Defer { wait: 300 }
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_or_foreign_file_is_reset_not_trusted() {
        let d = dir("torn");
        let (g, k, t) = passed_triplet(&d);
        // A torn slot: garbage over the entry reads as empty.
        let bucket = (k >> 32) % u64::from(BUCKETS);
        let at = HEADER + bucket * u64::from(SLOTS) * SLOT as u64;
        g.file.write_all_at(&[0xAB; 12], at + 8).unwrap();
        assert_eq!(
            g.check(k, t + 400, 300).unwrap(),
            Verdict::Defer { wait: 300 }
        );
        drop(g);
        // A truncated file is replaced by an empty table of the full size.
        let p = d.join("greylist");
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(1000).unwrap();
        drop(f);
        let g = Greylist::open(&d).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), FILE_SIZE);
        assert_eq!(
            g.check(k, t + 500, 300).unwrap(),
            Verdict::Defer { wait: 300 }
        );
        // A garbled header too.
        g.file.write_all_at(b"XXXX", 0).unwrap();
        drop(g);
        let g = Greylist::open(&d).unwrap();
        assert_eq!(
            g.check(k, t + 600, 300).unwrap(),
            Verdict::Defer { wait: 300 }
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// 100,000 distinct triplets: the file keeps its size, every lookup is
    /// one bucket, and recent triplets are still known.
    #[test]
    fn stays_bounded_under_100000_triplets() {
        let d = dir("bound");
        let g = Greylist::open(&d).unwrap();
        let t = 1_700_000_000u64;
        let n = 100_000u64;
        let keys: Vec<u64> = (0..n)
            .map(|i| {
                let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, 1]);
                g.key(
                    ip,
                    &format!("s{}@x{}.example", i % 7, i),
                    "alice@example.org",
                )
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            g.check(*k, t + i as u64 / 100, 300).unwrap();
        }
        assert_eq!(
            std::fs::metadata(d.join("greylist")).unwrap().len(),
            FILE_SIZE
        );
        // The last 10,000 (about 8% of the table) were all kept; passing
        // them now needs the delay to have passed since their first try.
        let later = t + n / 100 + 300;
        let kept = keys[(n as usize - 10_000)..]
            .iter()
            .filter(|k| g.check(**k, later, 300).unwrap() == Verdict::Pass { first: true })
            .count();
        assert!(kept >= 9_900, "{kept}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
