//! How long FETCH 1:* (ENVELOPE BODYSTRUCTURE) costs per message from
//! the index record (decode + render), and parsing per MB. Not a test:
//! run by hand, `cargo run --release --example mime_speed FILES...`;
//! times are CPU time.

use pimail::store::mime::{index, Structure};
use std::time::Duration;

/// CPU time of this process: the machine may be shared, wall time lies.
struct Instant(Duration);

impl Instant {
    fn now() -> Instant {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer to a timespec on our stack.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        Instant(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(&self) -> Duration {
        Instant::now().0.saturating_sub(self.0)
    }
}

fn main() {
    let msgs: Vec<Vec<u8>> = std::env::args()
        .skip(1)
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    if msgs.is_empty() {
        eprintln!("usage: mime_speed FILES...");
        return;
    }
    let avg = msgs.iter().map(|m| m.len()).sum::<usize>() / msgs.len();
    let n = (200_000_000 / avg.max(1)).clamp(1, 20_000);
    let t = Instant::now();
    let mut recs = Vec::new();
    let mut bytes = 0;
    for i in 0..n {
        let m = &msgs[i % msgs.len()];
        bytes += m.len();
        let s = Structure::parse(m);
        let mut r = Vec::new();
        index::encode(&s, &mut r);
        recs.push(r);
    }
    let parse = t.elapsed();
    let t = Instant::now();
    let mut out = Vec::with_capacity(1 << 20);
    let mut total = 0;
    for r in &recs {
        out.clear();
        let _ = index::write_envelope(r, &mut out);
        let _ = index::write_body(r, true, &mut out);
        total += out.len();
    }
    let render = t.elapsed();
    let idx: usize = recs.iter().map(|r| r.len()).sum();
    println!(
        "{n} messages: parse {:?} ({:.0} MB/s), index {} bytes ({} per message), decode+render {:?} ({:.2} us/message, {} response bytes)",
        parse,
        bytes as f64 / parse.as_secs_f64() / 1e6,
        idx,
        idx / n,
        render,
        render.as_secs_f64() * 1e6 / n as f64,
        total
    );
}
