//! The bounded line reader (`line::LineBuffer`): for any bytes in any
//! read sizes, lines come out without CR or LF, never longer than the
//! limit, and the read sizes change nothing (no SMTP smuggling through
//! packet boundaries); the buffer never stops accepting input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::net::line::{LineBuffer, LineError};

const CAP: usize = 64;

fn run(input: &[u8], splits: &[u8], max: usize) -> Vec<Result<Vec<u8>, LineError>> {
    let mut lb = LineBuffer::new(CAP);
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    loop {
        while let Some(r) = lb.next_line(max) {
            if let Ok(line) = &r {
                assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
                assert!(line.len() + 2 <= max.min(CAP));
            }
            out.push(r.map(|l| l.to_vec()));
        }
        if rest.is_empty() {
            return out;
        }
        let spare = lb.spare();
        assert!(!spare.is_empty(), "line buffer stopped taking input");
        let want = if splits.is_empty() {
            spare.len()
        } else {
            usize::from(splits[i % splits.len()]).max(1)
        };
        i += 1;
        let n = want.min(spare.len()).min(rest.len());
        spare[..n].copy_from_slice(&rest[..n]);
        lb.filled(n);
        rest = &rest[n..];
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = usize::from(data[0] % 80).max(3);
    let n = usize::from(data[1]).min(data.len() - 2).min(16);
    let splits = &data[2..2 + n];
    let input = &data[2 + n..];
    let a = run(input, &[], max);
    let b = run(input, splits, max);
    // Errors for an over-long line are re-reported per amount skipped, which
    // depends on read sizes only in count; the good lines must agree.
    let good = |v: &[Result<Vec<u8>, LineError>]| -> Vec<Vec<u8>> {
        v.iter().filter_map(|r| r.as_ref().ok().cloned()).collect()
    };
    assert_eq!(good(&a), good(&b), "read sizes changed the lines");
});
