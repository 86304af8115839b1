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
//! Record framing: `u32` LE length of what follows, one byte UIDL length,
//! the UIDL, the `mime::index` record.

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
}

impl MimeDb {
    pub fn open(path: PathBuf) -> MimeDb {
        let mut db = MimeDb {
            path,
            file: None,
            len: 0,
            live: 0,
            block: RefCell::new((0, Vec::new())),
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

    /// Forgets a record (its message is gone or parsed again).
    pub fn drop_record(&mut self, p: Ptr) {
        self.live = self.live.saturating_sub(u64::from(p.len));
    }

    /// Appends a record of a message of `wire` octets; `None` if the
    /// file cannot be written (the message is then parsed again when
    /// asked for).
    pub fn put(&mut self, uidl: &str, rec: &[u8], wire: u64) -> Option<Ptr> {
        let file = self.file.as_ref()?;
        let framed = frame(uidl, rec)?;
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

    /// Appends records already framed ([`frame`]) in one write; where
    /// they start. Their pointers are checked as any ([`MimeDb::get`]).
    pub fn append_framed(&mut self, framed: &[u8]) -> Option<u64> {
        let file = self.file.as_ref()?;
        let at = self.len;
        if let Err(e) = file.write_all_at(framed, at) {
            log::warn!("cannot write {}: {e}", self.path.display());
            return None;
        }
        self.len += framed.len() as u64;
        self.live += framed.len() as u64;
        Some(at)
    }

    /// [`MimeDb::put`] for several records in one write (the first scan
    /// of a folder writes thousands): `(uidl, record, wire)` each, their
    /// pointers in order, all `None` if the write fails.
    pub fn put_many(&mut self, recs: &[(String, Vec<u8>, u64)]) -> Vec<Option<Ptr>> {
        let mut buf = Vec::new();
        let mut ptrs = Vec::with_capacity(recs.len());
        for (uidl, rec, wire) in recs {
            ptrs.push(frame(uidl, rec).map(|framed| {
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

    /// The record at `p` if it is `uidl`'s and well framed.
    pub fn get(&self, p: Ptr, uidl: &str) -> Option<Vec<u8>> {
        let file = self.file.as_ref()?;
        if p.len < 5 || p.len > MAX_RECORD || p.at.checked_add(u64::from(p.len))? > self.len {
            return None;
        }
        let end = p.at + u64::from(p.len);
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
        unframe(&data[off..off + p.len as usize], uidl).map(<[u8]>::to_vec)
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
            let Some(rec) = self.get(p, uidl) else {
                *ptr = None;
                continue;
            };
            let Some(framed) = frame(uidl, &rec) else {
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
        if let Some(f) = &self.file {
            let _ = f.set_len(0);
        }
        self.len = 0;
        self.live = 0;
        self.block.borrow_mut().1.clear();
    }
}

/// A record as the file holds it (for records made elsewhere: the
/// writer thread's index of delivered mail, [`MimeDb::append_framed`]).
pub fn frame(uidl: &str, rec: &[u8]) -> Option<Vec<u8>> {
    let u = uidl.as_bytes();
    let n = u32::try_from(1 + u.len() + rec.len()).ok()?;
    if u.len() > 255 || n + 4 > MAX_RECORD {
        return None;
    }
    let mut out = Vec::with_capacity(n as usize + 4);
    out.extend_from_slice(&n.to_le_bytes());
    out.push(u.len() as u8);
    out.extend_from_slice(u);
    out.extend_from_slice(rec);
    Some(out)
}

fn unframe<'a>(b: &'a [u8], uidl: &str) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if n + 4 != b.len() {
        return None;
    }
    let ul = *b.get(4)? as usize;
    let u = b.get(5..5 + ul)?;
    (u == uidl.as_bytes()).then(|| &b[5 + ul..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_and_stale_pointers_are_refused() {
        let dir = std::env::temp_dir().join(format!("pimail-mimedb-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("INBOX.mime");
        let _ = std::fs::remove_file(&path);
        let mut db = MimeDb::open(path.clone());
        let a = db.put("uidl-a", b"record a", 8).unwrap();
        let b = db.put("uidl-b", b"record b, longer", 16).unwrap();
        assert_eq!(db.get(a, "uidl-a").unwrap(), b"record a");
        assert_eq!(db.get(b, "uidl-b").unwrap(), b"record b, longer");
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
        assert_eq!(db.get(b, "uidl-b").unwrap(), b"record b, longer");
        // Reopened (a restart): the same records.
        let mut db = MimeDb::open(path.clone());
        assert_eq!(db.get(b, "uidl-b").unwrap(), b"record b, longer");
        // Compaction keeps the live one and moves it.
        db.keep(b);
        for i in 0..3000 {
            let p = db.put(&format!("junk{i}"), &[7u8; 40], 40).unwrap();
            db.drop_record(p);
        }
        let mut pb = Some(b);
        assert!(db.compact(std::iter::once(("uidl-b", &mut pb))));
        let nb = pb.unwrap();
        assert_eq!(nb.at, 0);
        assert_eq!(db.get(nb, "uidl-b").unwrap(), b"record b, longer");
        assert!(std::fs::metadata(&path).unwrap().len() < 100);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
