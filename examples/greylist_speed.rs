//! The greylist lookup's cost at 1,000, 10,000 and 100,000 entries, to
//! show it is O(1) (issue 17: one bucket read, one slot write, whatever
//! the table holds). Not a test: `bench/spam.py` runs it,
//! `cargo run --release --example greylist_speed -- DIR [LOOKUPS]`; prints
//! one JSON object per size. Times are CPU time (user + system: the
//! lookup is two syscalls) of this process, per lookup.

use pimail::trust::greylist::{Greylist, Verdict};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to a timespec on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The i-th distinct triplet: a client network, a sender, the recipient.
fn triplet(g: &Greylist, i: u32) -> u64 {
    let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i << 8)));
    g.key(ip, &format!("sender@host{i}.test"), "alice@example.org")
}

/// A small deterministic PRNG (xorshift): which entry to look up next.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn measure(dir: &Path, entries: u32, lookups: u32) -> Result<(), String> {
    let d = dir.join(format!("greylist-{entries}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    let g = Greylist::open(&d).map_err(|e| e.to_string())?;
    let now = 1_800_000_000u64;
    let keys: Vec<u64> = (0..entries).map(|i| triplet(&g, i)).collect();
    for &k in &keys {
        g.check(k, now, 300).map_err(|e| e.to_string())?;
    }
    // Every entry passed (its retry after the delay): the bench traffic's
    // case, a known triplet at each RCPT.
    for &k in &keys {
        g.check(k, now + 301, 300).map_err(|e| e.to_string())?;
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut known, t) = (0u32, cpu_now());
    for _ in 0..lookups {
        let k = keys[(next(&mut seed) % u64::from(entries)) as usize];
        if let Verdict::Pass { .. } = g.check(k, now + 400, 300).map_err(|e| e.to_string())? {
            known += 1;
        }
    }
    let took = cpu_now().saturating_sub(t);
    println!(
        "{{\"entries\": {entries}, \"lookups\": {lookups}, \"ns_per_lookup\": {}, \"known\": {known}, \"file_bytes\": {}}}",
        took.as_nanos() / u128::from(lookups.max(1)),
        std::fs::metadata(d.join("greylist")).map_or(0, |m| m.len())
    );
    let _ = std::fs::remove_dir_all(&d);
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| std::env::temp_dir().display().to_string());
    let lookups = args.next().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    for entries in [1_000, 10_000, 100_000] {
        if let Err(e) = measure(Path::new(&dir), entries, lookups) {
            eprintln!("greylist_speed: {e}");
            std::process::exit(1);
        }
    }
}
