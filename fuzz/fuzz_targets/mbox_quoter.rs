//! The mboxrd quoter (`mbox::Quoter`): for any message bytes in any chunks,
//! no output line starts with `From ` (it would split the message), and
//! `unquote_line` of every output line gives back the input exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::store::mbox::{unquote_line, Quoter};

fn quote(input: &[u8], splits: &[u8]) -> Vec<u8> {
    let mut q = Quoter::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = if splits.is_empty() {
            input.len()
        } else {
            usize::from(splits[i % splits.len()]).max(1)
        };
        i += 1;
        let end = (pos + n).min(input.len());
        q.feed(&input[pos..end], &mut out);
        pos = end;
    }
    q.finish(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let n = usize::from(data[0]).min(data.len() - 1).min(16);
    let splits = &data[1..1 + n];
    let input = &data[1 + n..];
    let out = quote(input, &[]);
    assert_eq!(out, quote(input, splits), "chunking changed the quoting");
    let mut back = Vec::new();
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(!line.starts_with(b"From "), "unquoted From line {line:?}");
        back.extend_from_slice(unquote_line(line));
    }
    assert_eq!(back, input, "unquoting did not give the input back");
});
