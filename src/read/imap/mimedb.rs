//! The MIME half of a folder's sidecar index: one `mime::index` record
//! (ENVELOPE, BODYSTRUCTURE and where every section lies) per message, in
//! `<data_dir>/imap/<folder>.mime`, so that `FETCH 1:* (ENVELOPE
//! BODYSTRUCTURE)` and section lookups read this file, never the mbox.
//!
//! The file is a cache, like the text index that points into it: records
//! are appended (no fsync) and found by (offset, length). Each record
//! names the message it belongs to (its UIDL), so a pointer left stale by
//! a crash between a compaction and the text index's rewrite, or a torn
//! record, is seen as wrong and the message is parsed again. Records of
//! expunged messages are dropped when the garbage outweighs the live
//! records ([`MimeDb::compact`]). Reads go through one 64 KiB block kept
//! in memory: a FETCH over the folder reads the records in file order.
//!
//! Each record also holds the message's ENVELOPE, BODYSTRUCTURE and BODY
//! as FETCH answers them, rendered once when the record is made: `FETCH
//! 1:* (ENVELOPE BODYSTRUCTURE)` copies bytes (issue 16, SPEC "Budgets").
//!
//! Record framing: `u32` LE length of what follows, one byte UIDL length,
//! the UIDL, the payload, and a `u32` LE check of the UIDL length, UIDL
//! and payload but its texts, which have checks of their own (a record
//! torn by a power cut is a miss). The payload: [`RENDERED`], the `u32` LE lengths of the
//! ENVELOPE, BODYSTRUCTURE and BODY texts, a `u32` LE check of each
//! text, the three texts, and the `mime::index` record. A record from
//! before the rendered texts (its payload is the `mime::index` record
//! alone, whose first byte is that format's version, never [`RENDERED`])
//! still serves its positions and is re-made when its texts are asked
//! for ([`Miss::Old`]).

use crate::store::mime::{imap, index, Structure};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where a message's record lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ptr {
    pub at: u64,
    pub len: u32,
    /// The message's RFC822.SIZE as the record computed it (kept beside
    /// the pointer, so that SELECT needs no record).
    pub wire: u64,
}

impl Ptr {
    /// `%at:len:wire` in the text index.
    pub fn token(&self) -> String {
        format!("%{}:{}:{}", self.at, self.len, self.wire)
    }

    pub fn parse(t: &str) -> Option<Ptr> {
        let mut f = t.strip_prefix('%')?.split(':');
        let p = Ptr {
            at: f.next()?.parse().ok()?,
            len: f.next()?.parse().ok()?,
            wire: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(p)
    }
}

/// The first payload byte of a record with its rendered texts; a
/// `mime::index` record (what older records hold alone) starts with its
/// version (1), which will not come near this.
pub const RENDERED: u8 = 0xF1;

/// Which rendered text of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendered {
    Envelope = 0,
    BodyStructure = 1,
    Body = 2,
}

/// Why a record's text could not be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// An older record, well framed but without the texts: re-make it
    /// from its `mime::index` part.
    Old,
    /// No record, a stale pointer, or a torn or damaged record.
    Bad,
}

const BLOCK: u64 = 64 * 1024;
/// A record longer than this is not believed (MAX_PARTS parts of a few
/// hundred bytes each stay well under it).
const MAX_RECORD: u32 = 4 << 20;

pub struct MimeDb {
    path: PathBuf,
    file: Option<File>,
    len: u64,
    /// Octets of live records (the rest is garbage).
    live: u64,
    block: RefCell<(u64, Vec<u8>)>,
    /// Records were re-made since the text index was last written.
    moved: bool,
    /// Records appended but not yet written, from file offset
    /// `pending_at` ([`MimeDb::append_framed`]).
    pending: Vec<u8>,
    pending_at: u64,
}

impl Drop for MimeDb {
    fn drop(&mut self) {
        self.flush_pending();
    }
}

/// The most held back by [`MimeDb::append_framed`] (more is written at
/// once: memory stays small whatever a first look appends).
const PENDING_MAX: usize = 8 << 20;

impl MimeDb {
    pub fn open(path: PathBuf) -> MimeDb {
        let mut db = MimeDb {
            path,
            file: None,
            len: 0,
            live: 0,
            block: RefCell::new((0, Vec::new())),
            moved: false,
            pending: Vec::new(),
            pending_at: 0,
        };
        db.reopen();
        db
    }

    fn reopen(&mut self) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path);
        match f {
            Ok(f) => {
                self.len = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => {
                log::warn!("cannot open {}: {e}", self.path.display());
                self.file = None;
                self.len = 0;
            }
        }
        self.block.borrow_mut().1.clear();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lengths of the records the text index points to.
    pub fn set_live(&mut self, lens: impl Iterator<Item = u32>) {
        self.live = lens.map(u64::from).sum();
    }

    /// Counts a record the text index points to as live.
    pub fn keep(&mut self, p: Ptr) {
        self.live += u64::from(p.len);
    }

    /// Notes that a record moved (re-made): the text index must be
    /// written ([`MimeDb::take_moved`]).
    pub fn moved(&mut self) {
        self.moved = true;
    }

    pub fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// Forgets a record (its message is gone or parsed again).
    pub fn drop_record(&mut self, p: Ptr) {
        self.live = self.live.saturating_sub(u64::from(p.len));
    }

    /// Appends a record (a [`payload`] or [`render`]) of a message of
    /// `wire` octets; `None` if the file cannot be written (the message is
    /// then parsed again when asked for).
    pub fn put(&mut self, uidl: &str, payload: &[u8], wire: u64) -> Option<Ptr> {
        self.flush_pending();
        let file = self.file.as_ref()?;
        // A record too large with its texts keeps its positions alone
        // (its texts are then rendered from them at each FETCH).
        let framed = frame(uidl, payload).or_else(|| frame(uidl, index_part(payload)?))?;
        let at = self.len;
        if let Err(e) = file.write_all_at(&framed, at) {
            log::warn!("cannot write {}: {e}", self.path.display());
            return None;
        }
        self.len += framed.len() as u64;
        let p = Ptr {
            at,
            len: framed.len() as u32,
            wire,
        };
        self.keep(p);
        Some(p)
    }

    /// Appends records already framed ([`frame`]); where they start.
    /// Their pointers are checked as any ([`MimeDb::get`]). They are held
    /// in memory (and read from there) until [`MimeDb::flush_pending`],
    /// which the IMAP driver runs after it sent its response: the first
    /// SELECT of delivered mail copies its records from the writer's log
    /// (2.3 MB for 2,000 messages) after the client has its answer. A
    /// power cut before that leaves pointers to nothing: those records
    /// are made again from the mbox.
    pub fn append_framed(&mut self, framed: Vec<u8>) -> Option<u64> {
        self.file.as_ref()?;
        let at = self.len;
        let n = framed.len() as u64;
        self.len += n;
        self.live += n;
        if self.pending.is_empty() {
            self.pending_at = at;
            self.pending = framed;
        } else {
            self.pending.extend_from_slice(&framed);
        }
        if self.pending.len() > PENDING_MAX {
            self.flush_pending();
            // Not written: no pointer to them (`flush_pending` took the
            // length back).
            if self.len < at + n {
                self.live -= n;
                return None;
            }
        }
        Some(at)
    }

    /// Writes what [`MimeDb::append_framed`] held back.
    pub fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if let Some(file) = &self.file {
            if let Err(e) = file.write_all_at(&pending, self.pending_at) {
                // The records are then misses, made again when asked for.
                log::warn!("cannot write {}: {e}", self.path.display());
                self.len = self.pending_at;
            }
        }
    }

    /// Appends every record of `part` (a first scan's part, written to a
    /// file of its own); the offset its records now start at, `None` if
    /// they could not be copied (their messages are then parsed again
    /// when asked for).
    pub fn absorb(&mut self, part: &mut MimeDb) -> Option<u64> {
        self.flush_pending();
        part.flush_pending();
        let (src, dst) = (part.file.as_ref()?, self.file.as_ref()?);
        let base = self.len;
        let mut buf = vec![0u8; (1 << 20).min(part.len as usize)];
        let mut at = 0u64;
        while at < part.len {
            let n = ((part.len - at) as usize).min(buf.len());
            let copied = src
                .read_exact_at(&mut buf[..n], at)
                .and_then(|_| dst.write_all_at(&buf[..n], base + at));
            if let Err(e) = copied {
                log::warn!("cannot copy records to {}: {e}", self.path.display());
                return None;
            }
            at += n as u64;
        }
        self.len += part.len;
        Some(base)
    }

    /// [`MimeDb::put`] for several records in one write (the first scan
    /// of a folder writes thousands): `(uidl, record, wire)` each, their
    /// pointers in order, all `None` if the write fails.
    pub fn put_many(&mut self, recs: &[(String, Vec<u8>, u64)]) -> Vec<Option<Ptr>> {
        self.flush_pending();
        let mut buf = Vec::new();
        let mut ptrs = Vec::with_capacity(recs.len());
        for (uidl, rec, wire) in recs {
            let framed = frame(uidl, rec).or_else(|| frame(uidl, index_part(rec)?));
            ptrs.push(framed.map(|framed| {
                let p = Ptr {
                    at: self.len + buf.len() as u64,
                    len: framed.len() as u32,
                    wire: *wire,
                };
                buf.extend_from_slice(&framed);
                p
            }));
        }
        let Some(file) = self.file.as_ref() else {
            return vec![None; recs.len()];
        };
        if let Err(e) = file.write_all_at(&buf, self.len) {
            log::warn!("cannot write {}: {e}", self.path.display());
            return vec![None; recs.len()];
        }
        self.len += buf.len() as u64;
        for p in ptrs.iter().flatten() {
            self.keep(*p);
        }
        ptrs
    }

    /// The `mime::index` record at `p` if it is `uidl`'s and well framed
    /// (of either format).
    pub fn get(&self, p: Ptr, uidl: &str) -> Option<Vec<u8>> {
        self.with_payload(p, uidl, true, |b| index_part(b).map(<[u8]>::to_vec))
            .flatten()
    }

    /// Appends the `which` text of the record at `p` (`uidl`'s) to `out`;
    /// `out` is left as it was on a miss.
    pub fn write_rendered(
        &self,
        p: Ptr,
        uidl: &str,
        which: Rendered,
        out: &mut Vec<u8>,
    ) -> Result<(), Miss> {
        // The text's own check vouches for it (a torn frame fails it):
        // no frame check, which tripled `FETCH 1:* (ENVELOPE
        // BODYSTRUCTURE)`.
        self.with_payload(p, uidl, false, |b| {
            rendered(b, which).map(|t| out.extend_from_slice(t))
        })
        .unwrap_or(Err(Miss::Bad))
    }

    /// Calls `f` with the payload of the record at `p` if it is `uidl`'s
    /// and well framed. Reads go through the block: one `pread` per 64 KiB
    /// of records read in file order.
    fn with_payload<R>(
        &self,
        p: Ptr,
        uidl: &str,
        verify: bool,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let file = self.file.as_ref()?;
        if p.len < 9 || p.len > MAX_RECORD || p.at.checked_add(u64::from(p.len))? > self.len {
            return None;
        }
        let end = p.at + u64::from(p.len);
        if !self.pending.is_empty() && p.at >= self.pending_at {
            let off = (p.at - self.pending_at) as usize;
            return unframe(self.pending.get(off..off + p.len as usize)?, uidl, verify).map(f);
        }
        let mut b = self.block.borrow_mut();
        let (start, data) = &mut *b;
        if p.at < *start || end > *start + data.len() as u64 {
            // A block from the record on (or the record alone if larger).
            let n = (self.len - p.at).min(BLOCK.max(u64::from(p.len))) as usize;
            data.resize(n, 0);
            if file.read_exact_at(data, p.at).is_err() {
                data.clear();
                return None;
            }
            *start = p.at;
        }
        let off = (p.at - *start) as usize;
        unframe(&data[off..off + p.len as usize], uidl, verify).map(f)
    }

    /// Rewrites the file with only the live records when the garbage
    /// outweighs them: `live` gives each live record's UIDL and pointer,
    /// updated in place. Returns whether pointers changed (the text
    /// index must then be written).
    pub fn compact<'a>(
        &mut self,
        live: impl Iterator<Item = (&'a str, &'a mut Option<Ptr>)>,
    ) -> bool {
        if self.len < 2 * self.live + BLOCK {
            return false;
        }
        self.flush_pending();
        let tmp = self.path.with_extension("mime.tmp");
        let Ok(out) = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        else {
            return false;
        };
        let mut at = 0u64;
        let mut moved = Vec::new();
        for (uidl, ptr) in live {
            let Some(p) = *ptr else { continue };
            let Some(payload) = self.with_payload(p, uidl, true, <[u8]>::to_vec) else {
                *ptr = None;
                continue;
            };
            let Some(framed) = frame(uidl, &payload) else {
                *ptr = None;
                continue;
            };
            if out.write_all_at(&framed, at).is_err() {
                let _ = std::fs::remove_file(&tmp);
                return false;
            }
            moved.push((
                ptr,
                Ptr {
                    at,
                    len: framed.len() as u32,
                    wire: p.wire,
                },
            ));
            at += framed.len() as u64;
        }
        if std::fs::rename(&tmp, &self.path).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return false;
        }
        for (ptr, p) in moved {
            *ptr = Some(p);
        }
        self.reopen();
        self.live = at;
        true
    }

    /// Starts again empty (a lost text index: every message is new).
    pub fn clear(&mut self) {
        self.pending.clear();
        if let Some(f) = &self.file {
            let _ = f.set_len(0);
        }
        self.len = 0;
        self.live = 0;
        self.block.borrow_mut().1.clear();
    }
}

/// A 32-bit check of a text: a torn record (a block of zeros where the
/// text was, after a crash) is refused rather than sent to a client.
/// Fletcher-like sums of 64-bit words (position-sensitive, and cheap
/// beside the copy: it runs on every text a FETCH sends).
fn check(b: &[u8]) -> u32 {
    let (mut s1, mut s2) = (b.len() as u64, 0u64);
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        s1 = s1.wrapping_add(u64::from_le_bytes(a));
        s2 = s2.wrapping_add(s1);
    }
    for &x in words.remainder() {
        s1 = s1.wrapping_add(u64::from(x));
        s2 = s2.wrapping_add(s1);
    }
    let h = s1 ^ s2.rotate_left(17).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h ^ (h >> 32)) as u32
}

/// Bytes of the fixed part of a payload: the tag, three lengths, three
/// checks.
pub(crate) const HEAD: usize = 1 + 12 + 12;

/// The payload of a record for a message of structure `s`: the texts
/// FETCH sends (rendered from the structure, as [`imap`] writes them),
/// then its `mime::index` record.
pub fn payload(s: &Structure) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    out.resize(HEAD, 0);
    out[0] = RENDERED;
    let mut at = [HEAD; 4];
    imap::envelope(&s.envelope, &mut out);
    at[1] = out.len();
    imap::body(&s.root, true, &mut out);
    at[2] = out.len();
    imap::body(&s.root, false, &mut out);
    at[3] = out.len();
    for i in 0..3 {
        // Longer than u32::MAX: never read back (past the record's end).
        let len = u32::try_from(at[i + 1] - at[i]).unwrap_or(u32::MAX);
        let c = check(&out[at[i]..at[i + 1]]);
        out[1 + 4 * i..5 + 4 * i].copy_from_slice(&len.to_le_bytes());
        out[13 + 4 * i..17 + 4 * i].copy_from_slice(&c.to_le_bytes());
    }
    index::encode(s, &mut out);
    out
}

/// The payload for a `mime::index` record (re-making an older record);
/// `None` if it does not decode.
pub fn render(rec: &[u8]) -> Option<Vec<u8>> {
    Some(payload(&index::decode(rec).ok()?))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Where a payload's three texts end (from its start); `Err(Old)` for a
/// payload without texts.
fn ends(b: &[u8]) -> Result<[usize; 3], Miss> {
    match b.first() {
        None => return Err(Miss::Bad),
        Some(&t) if t != RENDERED => return Err(Miss::Old),
        Some(_) => {}
    }
    if b.len() < HEAD {
        return Err(Miss::Bad);
    }
    let mut end = [0usize; 3];
    let mut at = HEAD;
    for (i, e) in end.iter_mut().enumerate() {
        at = at.saturating_add(u32_at(b, 1 + 4 * i) as usize);
        *e = at;
    }
    if at > b.len() {
        return Err(Miss::Bad);
    }
    Ok(end)
}

/// The `which` text of a payload, checked.
pub fn rendered(b: &[u8], which: Rendered) -> Result<&[u8], Miss> {
    let end = ends(b)?;
    let w = which as usize;
    let start = if w == 0 { HEAD } else { end[w - 1] };
    let t = &b[start..end[w]];
    if check(t) != u32_at(b, 13 + 4 * w) {
        return Err(Miss::Bad);
    }
    Ok(t)
}

/// The `mime::index` record of a payload of either format.
pub fn index_part(b: &[u8]) -> Option<&[u8]> {
    match ends(b) {
        Ok(end) => Some(&b[end[2]..]),
        Err(Miss::Old) => Some(b),
        Err(Miss::Bad) => None,
    }
}

/// Whether a record of `payload` for `uidl` can be stored whole.
pub fn fits(uidl: &str, payload: &[u8]) -> bool {
    uidl.len() <= 255 && 9 + uidl.len() + payload.len() <= MAX_RECORD as usize
}

/// A record as the file holds it (for records made elsewhere: the
/// writer thread's index of delivered mail, [`MimeDb::append_framed`]).
pub fn frame(uidl: &str, rec: &[u8]) -> Option<Vec<u8>> {
    let u = uidl.as_bytes();
    let n = u32::try_from(1 + u.len() + rec.len() + 4).ok()?;
    if u.len() > 255 || n.saturating_add(4) > MAX_RECORD {
        return None;
    }
    let mut out = Vec::with_capacity(n as usize + 4);
    out.extend_from_slice(&n.to_le_bytes());
    out.push(u.len() as u8);
    out.extend_from_slice(u);
    out.extend_from_slice(rec);
    let c = frame_check(&out[4..5 + u.len()], rec);
    out.extend_from_slice(&c.to_le_bytes());
    Some(out)
}

/// The frame's check: of the UIDL and the payload but its rendered texts,
/// which carry checks of their own, verified as each is copied out
/// ([`rendered`]); checking them again at every read tripled the time of
/// `FETCH 1:* (ENVELOPE BODYSTRUCTURE)`.
fn frame_check(uidl: &[u8], payload: &[u8]) -> u32 {
    let texts = match ends(payload) {
        Ok(end) => HEAD..end[2],
        Err(_) => 0..0,
    };
    let (a, b) = (&payload[..texts.start], &payload[texts.end..]);
    check(uidl) ^ check(a).rotate_left(11) ^ check(b).rotate_left(22)
}

/// The payload of a framed record if it is `uidl`'s and (with `verify`)
/// whole: the frame's check covers the UIDL and the payload but its
/// texts, so a record torn by a power cut (blocks of zeros, or of what
/// was there before) is a miss, never other positions
/// (`cache_crash.rs` builds those states). Without `verify` only a text
/// with its own check may be taken from it.
fn unframe<'a>(b: &'a [u8], uidl: &str, verify: bool) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if n + 4 != b.len() || n < 5 {
        return None;
    }
    let (body, c) = b[4..].split_at(n - 4);
    let ul = *body.first()? as usize;
    let u = body.get(1..1 + ul)?;
    let payload = &body[1 + ul..];
    if u != uidl.as_bytes() || (verify && frame_check(&body[..1 + ul], payload).to_le_bytes() != c)
    {
        return None;
    }
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(s: &Structure) -> [Vec<u8>; 3] {
        let mut t: [Vec<u8>; 3] = Default::default();
        imap::envelope(&s.envelope, &mut t[0]);
        imap::body(&s.root, true, &mut t[1]);
        imap::body(&s.root, false, &mut t[2]);
        t
    }

    /// The texts a record keeps are what FETCH rendered from the
    /// structure before (byte for byte), and its `mime::index` record
    /// comes back whole.
    #[test]
    fn stored_texts_equal_a_fresh_rendering() {
        use Rendered::*;
        for (name, msg) in crate::store::mime::tests::SAMPLES {
            let s = Structure::parse(msg);
            let mut rec = Vec::new();
            index::encode(&s, &mut rec);
            let payload = payload(&s);
            assert_eq!(render(&rec).as_ref(), Some(&payload), "{name}");
            let want = fresh(&s);
            for (i, w) in [Envelope, BodyStructure, Body].into_iter().enumerate() {
                assert_eq!(
                    String::from_utf8_lossy(rendered(&payload, w).unwrap()),
                    String::from_utf8_lossy(&want[i]),
                    "{name} {w:?}"
                );
            }
            assert_eq!(index_part(&payload), Some(&rec[..]), "{name}");
            // A record from before the texts: its positions are read as
            // they were, its texts are asked to be re-made.
            assert_eq!(rendered(&rec, Envelope), Err(Miss::Old), "{name}");
            assert_eq!(index_part(&rec), Some(&rec[..]), "{name}");
            // Cut short, or a block of zeros inside (a torn write): never
            // a text that is not the one rendered.
            for cut in 0..payload.len() {
                for w in [Envelope, BodyStructure, Body] {
                    if let Ok(t) = rendered(&payload[..cut], w) {
                        assert_eq!(t, &want[w as usize][..], "{name} cut at {cut}");
                    }
                }
            }
            for at in (HEAD..payload.len()).step_by(7) {
                let mut torn = payload.clone();
                let end = (at + 16).min(torn.len());
                if torn[at..end].iter().all(|&b| b == 0) {
                    continue;
                }
                torn[at..end].fill(0);
                for w in [Envelope, BodyStructure, Body] {
                    if let Ok(t) = rendered(&torn, w) {
                        assert_eq!(t, &want[w as usize][..], "{name} zeros at {at}");
                    }
                }
            }
        }
        // Not a record at all.
        assert_eq!(rendered(&[], Envelope), Err(Miss::Bad));
        assert_eq!(rendered(&[RENDERED, 1, 2], Envelope), Err(Miss::Bad));
        assert_eq!(index_part(&[RENDERED; 40]), None);
    }

    /// A test directory (`pimail-mimedb-<tag><pid>`) and the path of a
    /// `.mime` file in it that does not exist yet.
    fn empty_db(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("pimail-mimedb-{tag}{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("INBOX.mime");
        let _ = std::fs::remove_file(&path);
        (dir, path)
    }

    #[test]
    fn texts_are_copied_from_the_file() {
        let (dir, path) = empty_db("t-");
        let mut db = MimeDb::open(path.clone());
        let mut ptrs = Vec::new();
        for (name, msg) in crate::store::mime::tests::SAMPLES {
            let s = Structure::parse(msg);
            let mut rec = Vec::new();
            index::encode(&s, &mut rec);
            let p = db.put(name, &payload(&s), s.size()).unwrap();
            ptrs.push((name, p, fresh(&s), rec));
        }
        // Reopened (a restart), read in file order through the block.
        let db = MimeDb::open(path.clone());
        for (name, p, want, rec) in &ptrs {
            let mut out = b"x".to_vec();
            db.write_rendered(*p, name, Rendered::BodyStructure, &mut out)
                .unwrap();
            assert_eq!(out[1..], want[1][..], "{name}");
            assert_eq!(db.get(*p, name).as_ref(), Some(rec), "{name}");
            // Someone else's pointer: nothing written.
            let mut out = b"x".to_vec();
            assert_eq!(
                db.write_rendered(*p, "other", Rendered::Envelope, &mut out),
                Err(Miss::Bad)
            );
            assert_eq!(out, b"x");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A record too large with its texts is kept with its positions
    /// alone (as an older record: FETCH renders from them).
    #[test]
    fn a_record_too_large_with_its_texts_keeps_its_positions() {
        let mut msg = b"Subject: many\nContent-Type: multipart/mixed; boundary=b\n\n".to_vec();
        let name = "n".repeat(1500);
        for _ in 0..1000 {
            msg.extend_from_slice(
                format!("--b\nContent-Type: application/pdf; name=\"{name}\"\n\nx\n").as_bytes(),
            );
        }
        msg.extend_from_slice(b"--b--\n");
        let s = Structure::parse(&msg);
        let full = payload(&s);
        assert!(full.len() > MAX_RECORD as usize, "{}", full.len());
        assert!(!fits("u", &full));
        let (dir, path) = empty_db("big-");
        let mut db = MimeDb::open(path);
        let p = db.put("u", &full, 1).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            db.write_rendered(p, "u", Rendered::BodyStructure, &mut out),
            Err(Miss::Old)
        );
        assert_eq!(db.get(p, "u").as_deref(), index_part(&full));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn sample_record(n: usize) -> Vec<u8> {
        let s = Structure::parse(crate::store::mime::tests::SAMPLES[n].1);
        let mut rec = Vec::new();
        index::encode(&s, &mut rec);
        rec
    }

    #[test]
    fn records_come_back_and_stale_pointers_are_refused() {
        let (dir, path) = empty_db("");
        let mut db = MimeDb::open(path.clone());
        let (ra, rb) = (sample_record(0), sample_record(1));
        let a = db.put("uidl-a", &render(&ra).unwrap(), 8).unwrap();
        let b = db.put("uidl-b", &render(&rb).unwrap(), 16).unwrap();
        assert_eq!(db.get(a, "uidl-a").unwrap(), ra);
        assert_eq!(db.get(b, "uidl-b").unwrap(), rb);
        // Someone else's record, a pointer off by one, past the end.
        assert_eq!(db.get(a, "uidl-b"), None);
        assert_eq!(db.get(Ptr { at: a.at + 1, ..a }, "uidl-a"), None);
        assert_eq!(db.get(Ptr { at: 1 << 40, ..a }, "uidl-a"), None);
        assert_eq!(Ptr::parse(&b.token()), Some(b));
        assert_eq!(Ptr::parse("%x:1:2"), None);
        assert_eq!(Ptr::parse("%1:2"), None);
        // Several at once, one of them unframable (a UIDL too long).
        let many = db.put_many(&[
            ("uidl-c".into(), b"record c".to_vec(), 3),
            ("u".repeat(300), b"x".to_vec(), 1),
            ("uidl-d".into(), b"record d".to_vec(), 4),
        ]);
        assert_eq!(many[1], None);
        let (c, d) = (many[0].unwrap(), many[2].unwrap());
        assert_eq!(db.get(c, "uidl-c").unwrap(), b"record c");
        assert_eq!(
            (db.get(d, "uidl-d").unwrap(), d.wire),
            (b"record d".to_vec(), 4)
        );
        assert_eq!(db.get(b, "uidl-b").unwrap(), rb);
        // Reopened (a restart): the same records.
        let mut db = MimeDb::open(path.clone());
        assert_eq!(db.get(b, "uidl-b").unwrap(), rb);
        // Compaction keeps the live one (texts and all) and moves it.
        db.keep(b);
        let pa = render(&ra).unwrap();
        for i in 0..300 {
            let p = db.put(&format!("junk{i}"), &pa, 40).unwrap();
            db.drop_record(p);
        }
        let mut pb = Some(b);
        assert!(db.compact(std::iter::once(("uidl-b", &mut pb))));
        let nb = pb.unwrap();
        assert_eq!((nb.at, nb.len), (0, b.len));
        assert_eq!(db.get(nb, "uidl-b").unwrap(), rb);
        let mut out = Vec::new();
        db.write_rendered(nb, "uidl-b", Rendered::Body, &mut out)
            .unwrap();
        assert!(out.starts_with(b"("), "{out:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), u64::from(b.len));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
