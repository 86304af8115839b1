//! What any first IMAP index of an mbox costs before it parses a header:
//! reading the file (128 KiB `pread`s from the page cache, as the scan
//! reads) and the vector searches it cannot skip — LFs (sizes and line
//! counts), `\n--` (MIME delimiters), `From ` (message starts), CRs (the
//! wire size) — each a pass of its own over the buffer, as the scan does
//! them, on 1 and on 2 threads (each half of the file). Not a test: the
//! floor under SPEC's "a foreign mbox is indexed within 1.5× the time of
//! reading it once" (docs/bench.md), wall times in ms, best of 3.
//! `cargo run --release --example scan_floor -- MBOX`

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// Reads `from..to` and runs the first `passes` searches over each read.
fn pass(f: &File, from: u64, to: u64, passes: usize) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 128 * 1024];
    let dashes = memchr::memmem::Finder::new(b"\n--");
    let from_line = memchr::memmem::Finder::new(b"From ");
    let mut found = 0u64;
    let mut pos = from;
    while pos < to {
        let want = ((to - pos) as usize).min(buf.len());
        let n = f.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        let b = &buf[..n];
        if passes >= 1 {
            found += memchr::memchr_iter(b'\n', b).count() as u64;
        }
        if passes >= 2 {
            found += dashes.find_iter(b).count() as u64;
        }
        if passes >= 3 {
            found += from_line.find_iter(b).count() as u64;
        }
        if passes >= 4 {
            found += memchr::memchr_iter(b'\r', b).count() as u64;
        }
        pos += n as u64;
    }
    Ok(found)
}

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: scan_floor MBOX");
        std::process::exit(2);
    };
    let f = File::open(&path)?;
    let len = f.metadata()?.len();
    let names = ["read", "+ LF count", "+ \\n--", "+ From", "+ CR"];
    println!("{:<12} {:>10} {:>10}", "pass", "1 thread", "2 threads");
    for (passes, name) in names.iter().enumerate() {
        let mut best = [f64::MAX; 2];
        for _ in 0..3 {
            for (i, threads) in [1u64, 2].into_iter().enumerate() {
                let t = Instant::now();
                std::thread::scope(|s| {
                    let parts: Vec<_> = (0..threads)
                        .map(|k| {
                            let f = &f;
                            s.spawn(move || {
                                pass(f, len * k / threads, len * (k + 1) / threads, passes)
                            })
                        })
                        .collect();
                    for p in parts {
                        if let Ok(Err(e)) = p.join() {
                            eprintln!("scan_floor: {e}");
                        }
                    }
                });
                best[i] = best[i].min(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        println!("{name:<12} {:>10.0} {:>10.0}", best[0], best[1]);
    }
    Ok(())
}
