//! Replies from remote SMTP servers (`delivery::client::ReplyReader`):
//! whatever a remote MX sends, in whatever packet sizes, the replies
//! parsed are the same, errors stop the reader instead of a panic, and
//! the buffer stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::send::delivery::client::ReplyReader;

fn read(input: &[u8], splits: &[u8]) -> Vec<String> {
    let mut r = ReplyReader::new();
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
        r.feed(&input[pos..end]);
        pos = end;
        loop {
            match r.next_reply() {
                Ok(Some(reply)) => out.push(format!("{} {:?}", reply.code, reply.lines)),
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("error {e:?}"));
                    return out;
                }
            }
        }
        assert!(
            r.buffered() <= 64 * 1024 + n,
            "reply buffer grew to {}",
            r.buffered()
        );
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let n = usize::from(data[0]).min(data.len() - 1).min(16);
    let splits = &data[1..1 + n];
    let input = &data[1 + n..];
    let whole = read(input, &[]);
    let split = read(input, splits);
    // An error may be found earlier or later in the stream depending on
    // where the data was cut (a too-long line), but the good replies
    // before it must be the same.
    let good = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|s| !s.starts_with("error"))
            .cloned()
            .collect()
    };
    let (a, b) = (good(&whole), good(&split));
    let k = a.len().min(b.len());
    assert_eq!(a[..k], b[..k], "packet sizes changed the replies");
});
