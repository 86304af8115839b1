//! The POP3 maildrop index (`maildrop::open` over an mbox): whatever bytes
//! the mbox holds (other programs write it too), indexing gives messages,
//! never a panic, and the index agrees with the file: each message starts
//! at a `From ` line, the messages are in order and inside the file, and
//! the size LIST reports is exactly what RETR then sends (before
//! dot-stuffing), so clients that check it do not reject the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pimail::read::pop3::retr::Encoder;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One scratch directory per process (tmpfs when there is one: this runs
/// thousands of times a second).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("pimail-fuzz-maildrop-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
}

/// What RETR sends for the content bytes, without the dot-stuffing and
/// the final `.` line: the octet count LIST must give.
fn retr_size(content: &[u8]) -> u64 {
    let mut e = Encoder::new(None);
    let mut out = Vec::new();
    let mut stuffed = 0u64;
    for line in content.split_inclusive(|&b| b == b'\n') {
        let n = line.iter().take_while(|&&b| b == b'>').count();
        let unquoted = if n > 0 && line[n..].starts_with(b"From ") {
            &line[1..]
        } else {
            line
        };
        if unquoted.first() == Some(&b'.') {
            stuffed += 1;
        }
        e.piece(line, &mut out);
    }
    e.finish(&mut out);
    out.len() as u64 - 3 - stuffed
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    let mbox = d.join("mbox");
    std::fs::write(&mbox, data).expect("write the mbox");
    // A fresh index every time: a cached one could match by chance
    // (same length, mtime within the clock's granularity).
    let _ = std::fs::remove_file(pimail::store::maildrop::index_path(d));
    let mut locked = pimail::store::mbox::lock(&mbox).expect("lock the mbox");
    let snap = pimail::store::maildrop::open(&mut locked, d).expect("index the mbox");
    drop(locked);
    let len = data.len() as u64;
    assert_eq!(snap.len, len);
    let from_lines = (0..data.len())
        .filter(|&i| (i == 0 || data[i - 1] == b'\n') && data[i..].starts_with(b"From "))
        .count();
    assert_eq!(snap.messages.len(), from_lines, "one message per From line");
    let mut prev_end = 0u64;
    let mut uids = std::collections::HashSet::new();
    for m in &snap.messages {
        assert!(prev_end <= m.offset, "messages overlap: {m:?}");
        assert!(
            m.offset < m.start && m.start <= m.end && m.end <= len,
            "{m:?}"
        );
        let o = m.offset as usize;
        assert!(o == 0 || data[o - 1] == b'\n', "not at a line start: {m:?}");
        assert!(data[o..].starts_with(b"From "), "not a From line: {m:?}");
        assert!(
            data[..m.start as usize].ends_with(b"\n") || m.start == len,
            "content does not start after the From line: {m:?}"
        );
        let content = &data[m.start as usize..m.end as usize];
        assert_eq!(
            m.size,
            retr_size(content),
            "LIST size differs from RETR: {m:?}"
        );
        assert!(!m.uid.is_empty() && m.uid.len() <= 70, "{m:?}");
        assert!(m.uid.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{m:?}");
        assert!(uids.insert(m.uid.clone()), "duplicate UIDL {m:?}");
        prev_end = m.end;
    }
});
