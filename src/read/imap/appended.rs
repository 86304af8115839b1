//! The index of mail pimail appended (SPEC "Budgets": mail that pimail
//! delivered needs no scan at the first SELECT).
//!
//! The mbox writer thread hands each commit (after its fsync, before the
//! replies) to the indexer thread (`store::index_appended`), which reads
//! back what was appended (in the page cache), finds the messages as a
//! scan would (`maildrop::scan_with`, `read_head`), makes their MIME
//! records (`parse_record`, the code a scan runs), and
//! appends one batch to `<writer dir>/imap.appended`. At the first look
//! at the folder, [`FolderState`](super::store::FolderState) takes the
//! messages from these batches instead of reading the mbox.
//!
//! A cache, never flushed, and never believed blindly: each batch is
//! checked (a torn or zeroed one ends the log), says from which file
//! length it appended (a chain of batches must follow on from what the
//! reader already indexed, octet for octet), and carries the mbox's stamp
//! after it (`maildrop::still_holds`: same file, first and last 4 KiB
//! unchanged), so mail another program appended, a rewrite (mutt, a POP3
//! deletion), or a crash that lost a batch make the reader scan the part
//! the log does not cover. The writer starts the log again whenever the
//! mbox changed since its previous commit (another program was there)
//! and when it grows past [`MAX_LOG`].
//!
//! Batch: `PIA2` len:u32, then `len` octets: from:u64, the stamp (dev ino
//! len:u64 mtime_ns:i128 head tail:u64), count:u32, `count` records as
//! the sidecar's (`sidecar::put_record`, the MIME pointer relative to
//! the blob), blob_len:u32 and the blob (records framed as in the
//! `.mime` file); then check:u64 of those octets.

use super::entry::Entry;
use super::sidecar;
use crate::store::maildrop::Stamp;
use crate::store::mbox::Appended;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The log's name in the writer's directory.
pub const LOG: &str = "imap.appended";
/// Past this the log starts again (the folder is then scanned once): a
/// reader holds the log it reads in memory (about 8,000 messages).
pub const MAX_LOG: u64 = 4 << 20;
/// `PIA2`: batches from before the seal after `Return-Path:` was hidden
/// from IMAP (`PIAB`) end the log at its first octet (their sizes
/// counted the seal): that mail is scanned once.
const MAGIC: &[u8] = b"PIA2";

/// One commit's messages.
#[derive(Debug)]
pub struct Batch {
    /// The mbox length before it.
    pub from: u64,
    /// The mbox after it.
    pub stamp: Stamp,
    /// Its messages (UID: the seal's; MIME pointers into `mime`).
    pub entries: Vec<Entry>,
    pub mime: Vec<u8>,
}

/// Appends one batch to the log in `a.dir` (`body`: [`encode`]'s; none:
/// what was appended could not be indexed, and the log starts again).
pub fn write(a: &Appended, body: Option<Vec<u8>>) {
    let path = a.dir.join(LOG);
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path);
    let f = match f {
        Ok(f) => f,
        Err(e) => {
            log::warn!("cannot open {}: {e}", path.display());
            return;
        }
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if !a.continues || len > MAX_LOG || body.is_none() {
        // What came before no longer follows on (or cannot be told).
        let _ = f.set_len(0);
    }
    let Some(body) = body else { return };
    let out = framed(&body);
    // One write (O_APPEND): a batch is whole or torn at the end.
    if let Err(e) = (&f).write_all(&out) {
        log::warn!("cannot write {}: {e}", path.display());
        let _ = f.set_len(len);
    }
}

/// A batch as the log holds it: `PIA2`, its length, [`encode`]'s
/// octets, their check.
pub(super) fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(MAGIC);
    sidecar::put_u32(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    sidecar::put_u64(&mut out, sidecar::check(body));
    out
}

/// A batch's octets: the mbox grew from `from` to `stamp.len` with
/// `entries` (their MIME pointers into `blob`, framed records).
pub fn encode(from: u64, s: &Stamp, entries: &[Entry], blob: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128 + entries.len() * 112 + blob.len());
    sidecar::put_u64(&mut out, from);
    for v in [s.dev, s.ino, s.len] {
        sidecar::put_u64(&mut out, v);
    }
    out.extend_from_slice(&s.mtime_ns.to_le_bytes());
    sidecar::put_u64(&mut out, s.head);
    sidecar::put_u64(&mut out, s.tail);
    sidecar::put_u32(&mut out, u32::try_from(entries.len()).ok()?);
    for e in entries {
        sidecar::put_record(&mut out, e, 0);
    }
    sidecar::put_u32(&mut out, u32::try_from(blob.len()).ok()?);
    out.extend_from_slice(blob);
    Some(out)
}

/// The log's batches from octet `from` on (where a reader stopped last
/// time), up to the first that is cut short or does not check, each
/// with the log offset after it; nothing if there is no log. Their MIME
/// records are not in each [`Batch`] but end to end in [`Log::joined`]:
/// what the first look at a folder writes to its `.mime` file in one
/// go, copied once.
pub fn read(path: &Path, from: u64) -> Log {
    let mut log = Log::default();
    if let Some(b) = read_bytes(path, from) {
        log.joined.reserve(b.len());
        let mut at = 0usize;
        while let Some((batch, next, blob)) = one(&b, at) {
            log.starts.push(log.joined.len());
            log.joined.extend_from_slice(&b[blob]);
            log.batches.push((batch, from + next as u64));
            at = next;
        }
    }
    log.starts.push(log.joined.len());
    log
}

/// What [`read`] found.
#[derive(Default)]
pub struct Log {
    /// The batches (their `mime` empty), each with the log offset after it.
    pub batches: Vec<(Batch, u64)>,
    /// Their MIME records end to end.
    pub joined: Vec<u8>,
    /// Where each batch's records start in `joined`, and one more: the end.
    pub starts: Vec<usize>,
}

fn read_bytes(path: &Path, from: u64) -> Option<Vec<u8>> {
    use std::io::{Read as _, Seek as _};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if from > len || f.seek(std::io::SeekFrom::Start(from)).is_err() {
        return None;
    }
    // Sized once: grown by doubling, the copies and the fresh pages of
    // each step were a third of reading a 2.7 MB log.
    let most = MAX_LOG + (1 << 20);
    let mut b = Vec::with_capacity((len - from).min(most) as usize + 1);
    f.take(most).read_to_end(&mut b).ok()?;
    Some(b)
}

/// [`read`] on the log's octets (any: fuzz/fuzz_targets/imap_sidecar.rs).
pub fn decode(b: &[u8]) -> Vec<(Batch, usize)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some((mut batch, next, blob)) = one(b, at) {
        batch.mime = b[blob].to_vec();
        out.push((batch, next));
        at = next;
    }
    out
}

fn u64_at(b: &[u8], at: &mut usize) -> Option<u64> {
    let v = u64::from_le_bytes(b.get(*at..*at + 8)?.try_into().ok()?);
    *at += 8;
    Some(v)
}

fn u32_at(b: &[u8], at: &mut usize) -> Option<u32> {
    let v = u32::from_le_bytes(b.get(*at..*at + 4)?.try_into().ok()?);
    *at += 4;
    Some(v)
}

/// The batch at `at` (its `mime` empty: where its records are in `b` is
/// the third value) and where the next starts.
fn one(b: &[u8], at: usize) -> Option<(Batch, usize, std::ops::Range<usize>)> {
    if b.get(at..at + 4)? != MAGIC {
        return None;
    }
    let mut p = at + 4;
    let len = u32_at(b, &mut p)? as usize;
    let body = b.get(p..p.checked_add(len)?)?;
    let mut q = p + len;
    if u64_at(b, &mut q)? != sidecar::check(body) {
        return None;
    }
    let mut i = 0usize;
    let from = u64_at(body, &mut i)?;
    let (dev, ino, slen) = (
        u64_at(body, &mut i)?,
        u64_at(body, &mut i)?,
        u64_at(body, &mut i)?,
    );
    let mtime_ns = i128::from_le_bytes(body.get(i..i + 16)?.try_into().ok()?);
    i += 16;
    let (head, tail) = (u64_at(body, &mut i)?, u64_at(body, &mut i)?);
    let n = u32_at(body, &mut i)? as usize;
    let sets = [Vec::new()];
    let mut entries = Vec::with_capacity(n.min(body.len() / 64));
    let mut end = from;
    for _ in 0..n {
        let e = sidecar::get_record(body, &mut i, &sets)?;
        // In the file's order, inside what the batch appended.
        if e.msg.offset < end || e.msg.end > slen {
            return None;
        }
        end = e.msg.end;
        entries.push(e);
    }
    let blob_len = u32_at(body, &mut i)? as usize;
    if i.checked_add(blob_len)? != body.len() || from > slen {
        return None;
    }
    let blob = p + i..p + i + blob_len;
    let stamp = Stamp {
        dev,
        ino,
        len: slen,
        mtime_ns,
        head,
        tail,
    };
    Some((
        Batch {
            from,
            stamp,
            entries,
            mime: Vec::new(),
        },
        q,
        blob,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::maildrop::Message;

    #[test]
    fn batches_come_back_and_a_torn_one_ends_the_log() {
        use super::super::cache_crash::stamp;
        let e = |offset: u64, uid| Entry {
            msg: Message {
                offset,
                start: offset + 40,
                end: offset + 90,
                size: 52,
                uid: format!("ID{uid}"),
            },
            uid,
            flags: Vec::new(),
            modseq: 0,
            date: 7,
            seal_id: Some(format!("ID{uid}")),
            body_start: offset + 40,
            size: 52,
            mime: Some(crate::read::imap::mimedb::Ptr {
                at: 0,
                len: 3,
                wire: 52,
            }),
        };
        let a = framed(&encode(0, &stamp(91), &[e(0, 1)], b"abc").unwrap());
        let b = framed(&encode(91, &stamp(182), &[e(91, 2)], b"def").unwrap());
        let log = [a.clone(), b.clone()].concat();
        let got = decode(&log);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, log.len());
        assert_eq!((got[1].0.from, got[1].0.stamp.len), (91, 182));
        assert_eq!(got[1].0.entries[0].msg.uid, "ID2");
        assert_eq!(got[1].0.mime, b"def");
        // Cut anywhere in the second batch, or a byte changed: the first
        // alone.
        for cut in a.len()..log.len() {
            assert_eq!(decode(&log[..cut]).len(), 1, "cut at {cut}");
        }
        let mut bad = log.clone();
        bad[a.len() + 20] ^= 1;
        assert_eq!(decode(&bad).len(), 1);
        // A message outside what its batch appended is refused.
        let c = framed(&encode(0, &stamp(50), &[e(0, 1)], b"abc").unwrap());
        assert!(decode(&c).is_empty());
    }
}
