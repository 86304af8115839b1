//! The real folder store behind the IMAP session: INBOX is the user's
//! mbox, other folders are mbox files under `[user] folders`. Implements
//! the session's [`Account`] and [`Folder`] traits over the files.
//!
//! Messages are found with the POP3 scanner (`store::maildrop`), so both
//! protocols agree on where a message starts and ends and on its size.
//! UIDs: a message pimail sealed keeps its seal's `uid` when that is
//! above every UID given so far (so mail pimail delivered needs no
//! bookkeeping); any other message (foreign mail, or a seal out of order)
//! gets the folder's UIDNEXT when first seen. Each message is keyed by
//! its POP3 UIDL (derived from its content, stable across rewrites), and
//! the sidecar `<data_dir>/imap/<folder>.index` remembers UIDVALIDITY,
//! UIDNEXT, HIGHESTMODSEQ and per message UIDL, UID, MODSEQ and flags. The
//! sidecar is a cache of what the files do not hold (flags, assigned
//! UIDs); if lost, UIDVALIDITY changes, as RFC 9051 2.3.1.1 requires.
//!
//! Sessions share one [`Store`] (one thread): each folder's state lives
//! once, with a change log each handle reads from its own place.
//! Another program's appends or rewrites are found at the next poll by
//! the file's size and inode.

use super::command::{DateTime, Flag, Section, SectionText, StoreMode, TextField};
use super::folder::{Account, Change, Folder, FolderInfo, Meta, StoreError, Stored, Summary, Uid};
use super::hidden::HideFilter;
use super::mimedb::{self, MimeDb, Miss, Ptr, Rendered};
use super::textsearch::{self, contains_ci, Needle};
use crate::store::maildrop::{self, Message};
use crate::store::mbox::Seal;
use crate::store::mime::{self, Spec, Structure, WireWriter};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The special-use folders created at first start (RFC 6154).
pub const SPECIAL: [(&str, &str); 5] = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
];

const CHUNK: usize = 64 * 1024;

pub use super::entry::Entry;

/// One folder's shared state.
pub struct FolderState {
    pub path: PathBuf,
    index: PathBuf,
    pub uid_validity: u32,
    pub uid_next: Uid,
    pub modseq: u64,
    pub entries: Vec<Entry>,
    /// What was scanned: inode and length.
    ino: u64,
    len: u64,
    /// The identity of what was scanned (head and tail hashes), so mail
    /// appended since is found by scanning the tail alone.
    stamp: Option<maildrop::Stamp>,
    /// Entries of the last run, from the sidecar, not yet matched to the
    /// file's messages: used whole, without a scan, when `cached` (the
    /// sidecar is complete) still holds; else turned into `known` when a
    /// scan needs them (not before: SELECT after a restart builds no map).
    sidecar: Vec<Entry>,
    cached: Option<maildrop::Stamp>,
    /// The sidecar was of an older format: written again once read.
    upgrade: bool,
    /// The folder writer's index of what it appended (`appended`), and
    /// where in it the batches not yet used start.
    appended: Option<PathBuf>,
    appended_at: u64,
    /// That log read ahead ([`Preload`]), used if it is unchanged.
    pre_log: Option<PreloadedLog>,
    /// UIDL -> (uid, modseq, flags) remembered from the sidecar for
    /// messages not yet seen in this run.
    known: HashMap<String, (Uid, u64, Vec<Flag>, Option<Ptr>)>,
    /// The MIME records (see `mimedb`).
    db: MimeDb,
    /// Changes in order, with the handle that made them (0: others);
    /// `log[0]` is change number `log_base`. Trimmed to what the
    /// slowest open handle has not read ([`FolderState::trim_log`]), so
    /// a server up for months holds no more than the changes in flight.
    log: Vec<(u64, Change)>,
    log_base: usize,
    /// Open handles and the change number each reads from next.
    readers: HashMap<u64, usize>,
    /// Counts rewrites (ours and, once seen, others'): a [`Body`] being
    /// streamed stops when it changes, as its offsets are then stale.
    generation: Rc<std::cell::Cell<u64>>,
    /// The sidecar is behind the state ([`FolderState::save`]).
    dirty: bool,
    /// The folder open for reading bodies, and its inode: one open for a
    /// FETCH of thousands of messages, not one each. No lock is taken
    /// through it (locks are OFD locks, `util::sys`: closing it releases
    /// none of the writers'); a file replaced by rename is opened again
    /// once `refresh` has seen the new inode.
    reader: RefCell<Option<(u64, Rc<File>)>>,
}

/// How long a first look at a folder waits for a writer's lock. Blocks
/// the server's one thread: a pimail append holds it for milliseconds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

fn io(context: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{context}: {e}"))
}

/// A sidecar read ahead (see [`Preload`]): its path, its length and
/// mtime when read (used only if the file is still that one), and what
/// it held.
type Preloaded = (PathBuf, Option<(u64, i64)>, Option<super::sidecar::Sidecar>);

/// The writer's log of what it appended (`appended`), read ahead with the
/// sidecar: its length and mtime when read, and what it held.
struct PreloadedLog {
    id: Option<(u64, i64)>,
    log: super::appended::Log,
}

impl PreloadedLog {
    fn read(path: &Path) -> PreloadedLog {
        let id = file_id(path);
        let log = match id {
            Some(_) => super::appended::read(path, 0),
            None => super::appended::Log::default(),
        };
        PreloadedLog { id, log }
    }
}

/// What tells a file read ahead from a file changed since: its length
/// and mtime.
fn file_id(path: &Path) -> Option<(u64, i64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000))
}

fn read_sidecar(index: &Path) -> Option<super::sidecar::Sidecar> {
    std::fs::read(index)
        .ok()
        .and_then(|b| super::sidecar::decode(&b))
}

impl FolderState {
    fn load(path: PathBuf, index: PathBuf, pre: Option<super::sidecar::Sidecar>) -> Self {
        let mime_path = index.with_extension("mime");
        let mut st = FolderState {
            path,
            index,
            uid_validity: 0,
            uid_next: 1,
            modseq: 1,
            entries: Vec::new(),
            ino: 0,
            len: 0,
            stamp: None,
            sidecar: Vec::new(),
            cached: None,
            upgrade: false,
            appended: None,
            appended_at: 0,
            pre_log: None,
            known: HashMap::new(),
            db: MimeDb::open(mime_path),
            log: Vec::new(),
            log_base: 0,
            readers: HashMap::new(),
            generation: Rc::new(std::cell::Cell::new(0)),
            dirty: false,
            reader: RefCell::new(None),
        };
        if let Some(sc) = pre.or_else(|| read_sidecar(&st.index)) {
            st.uid_validity = sc.uid_validity;
            st.uid_next = sc.uid_next.max(1);
            st.modseq = sc.modseq.max(1);
            st.cached = sc.stamp.filter(|_| sc.complete);
            st.sidecar = sc.entries;
            st.upgrade = sc.old_format;
        }
        if st.uid_validity == 0 {
            // Seconds since the epoch: a new value after a lost sidecar.
            st.uid_validity = (crate::util::timefmt::unix_now() as u32).max(1);
            st.known.clear();
            st.sidecar.clear();
            st.cached = None;
            st.db.clear();
        }
        st
    }

    /// The sidecar is to be written: at the next [`FolderState::flush`],
    /// which the IMAP driver runs before it sends a response
    /// ([`Store::flush`]), so a client never sees a UID or flag the
    /// sidecar does not hold yet, and `STORE 1:* +FLAGS (\Seen)` on
    /// 20,000 messages writes it once, not 20,000 times.
    pub fn save(&mut self) {
        self.dirty = true;
    }

    /// The folder open for reading (see `reader`).
    fn reader(&self) -> Result<Rc<File>, StoreError> {
        let mut r = self.reader.borrow_mut();
        if let Some((ino, f)) = r.as_ref() {
            if *ino == self.ino {
                return Ok(f.clone());
            }
        }
        let f = Rc::new(File::open(&self.path).map_err(|e| io("cannot open folder", e))?);
        let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
        if ino == self.ino {
            *r = Some((ino, f.clone()));
        }
        Ok(f)
    }

    /// The number the next change gets.
    fn log_end(&self) -> usize {
        self.log_base + self.log.len()
    }

    /// Drops the changes every open handle has read.
    fn trim_log(&mut self) {
        let low = self
            .readers
            .values()
            .copied()
            .min()
            .unwrap_or(self.log_end());
        let n = low.saturating_sub(self.log_base).min(self.log.len());
        if n > 0 {
            self.log.drain(..n);
            self.log_base += n;
        }
    }

    /// Writes the sidecar if [`FolderState::save`] asked for it.
    pub fn flush(&mut self) {
        if self.dirty {
            self.dirty = false;
            self.write_sidecar();
        }
    }

    /// Writes the sidecar (a cache: no fsync; a torn one is rebuilt).
    fn write_sidecar(&mut self) {
        self.db
            .set_live(self.entries.iter().filter_map(|e| e.mime).map(|p| p.len));
        self.db.compact(
            self.entries
                .iter_mut()
                .map(|e| (e.msg.uid.as_str(), &mut e.mime)),
        );
        let out = super::sidecar::encode(
            self.uid_validity,
            self.uid_next,
            self.modseq,
            self.stamp.as_ref(),
            &self.entries,
        );
        self.upgrade = false;
        let tmp = self.index.with_extension("tmp");
        let ok = std::fs::write(&tmp, out).and_then(|_| std::fs::rename(&tmp, &self.index));
        if let Err(e) = ok {
            log::warn!("cannot write {}: {e}", self.index.display());
        }
    }

    /// Brings the state up to date with the file; logs what changed.
    pub fn refresh(&mut self) -> Result<(), StoreError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NonExistent)
            }
            Err(e) => return Err(io("cannot open folder", e)),
        };
        if !self.read_lock(&file) {
            log::debug!(
                "{}: locked by another program for {LOCK_WAIT:?}; read without the lock",
                self.path.display()
            );
        }
        let meta = file.metadata().map_err(|e| io("cannot stat folder", e))?;
        if meta.is_dir() {
            return Err(StoreError::NoSelect);
        }
        let (ino, len) = (meta.ino(), meta.len());
        if ino == self.ino && len == self.len {
            return Ok(());
        }
        // The last run's view, kept in the sidecar: used as it is when the
        // file still holds what it describes (SELECT after a restart
        // reads the sidecar, not the folder).
        if let Some(stamp) = self.cached.take() {
            if self.entries.is_empty()
                && len >= stamp.len
                && maildrop::still_holds(&file, &stamp).unwrap_or(false)
            {
                self.entries = std::mem::take(&mut self.sidecar);
                self.ino = ino;
                self.len = stamp.len;
                self.stamp = Some(stamp);
                if len == self.len {
                    if self.upgrade {
                        self.save();
                    }
                    return Ok(());
                }
            }
        }
        self.spill_known();
        // Mail pimail appended: its writer's index says what it is, the
        // folder is not read (see `appended`); what the index does not
        // cover is scanned as below.
        if (self.ino == 0 || (ino == self.ino && len > self.len))
            && self.index_from_log(&file, ino, len)?
            && (len == self.len || self.tail_scan(&file, len)?)
        {
            self.len = len;
            self.stamp = maildrop::stamp(&file, len).ok();
            self.save();
            return Ok(());
        }
        // Mail appended since the last scan (a delivery, an APPEND, another
        // program's append): the file still holds what was scanned (same
        // file, its first and last 4 KiB unchanged, as POP3 checks), so
        // only what follows the last known message is read.
        if ino == self.ino && len > self.len && self.tail_scan(&file, len)? {
            self.ino = ino;
            self.len = len;
            self.stamp = maildrop::stamp(&file, len).ok();
            self.save();
            return Ok(());
        }
        let d: &dyn crate::store::disk::Disk = &file;
        // Nothing to reuse (the first look at a folder nobody indexed):
        // each message's head and MIME structure are read in the scan's
        // own pass, so the file is read once.
        let one_pass = self.entries.is_empty() && self.known.values().all(|k| k.3.is_none());
        let (all, pre) = if one_pass {
            index_all(&file, len, &mut self.db, scan_parts(len))
                .map_err(|e| io("cannot read folder", e))?
        } else {
            let all =
                maildrop::scan_with(d, 0, len, CHUNK).map_err(|e| io("cannot read folder", e))?;
            (all, Vec::new())
        };
        let mut pre = pre.into_iter();
        let mut old: HashMap<String, Entry> = self
            .entries
            .drain(..)
            .map(|e| (e.msg.uid.clone(), e))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut dirty = false;
        for m in all {
            let p = pre.next();
            if !seen.insert(m.uid.clone()) {
                if let Some(Pre { ptr: Some(r), .. }) = p {
                    self.db.drop_record(r);
                }
                continue; // scan_with does not dedupe; keep the first
            }
            if let Some(mut e) = old.remove(&m.uid) {
                if e.msg.offset != m.offset {
                    self.generation.set(self.generation.get() + 1);
                }
                // Positions in the record are from the message's start:
                // still right after a move, not after an edit (a reader
                // or our rewrite changing `Status:`).
                if e.msg.end - e.msg.start != m.end - m.start {
                    e.mime = None;
                }
                let skip = e.body_start - e.msg.start;
                e.body_start = skip + m.start;
                // Its size changes when `Status:` lines were rewritten.
                e.size = if skip > 0 {
                    m.size.saturating_sub(skip + 1)
                } else {
                    m.size
                };
                e.msg = m;
                self.entries.push(e);
                continue;
            }
            self.index_new(&file, m, p)?;
            dirty = true;
        }
        if !old.is_empty() {
            self.rewritten();
        }
        let mut gone: Vec<Uid> = old.values().map(|e| e.uid).collect();
        gone.sort_unstable();
        for u in gone {
            self.log.push((0, Change::Expunged(u)));
            dirty = true;
        }
        // ENVELOPE and BODYSTRUCTURE are computed once, when a message is
        // first indexed (or after it changed), so FETCHes read the index.
        for i in 0..self.entries.len() {
            if self.entries[i].mime.is_none() {
                let e = &self.entries[i];
                let (rec, wire) = parse_record(&file, e.body_start, e.msg.end)?;
                let p = self.db.put(&e.msg.uid, &rec, wire);
                self.entries[i].mime = p;
                self.entries[i].size = wire;
                dirty = true;
            }
        }
        // RFC822.SIZE is the record's: the message as IMAP serves it.
        for e in &mut self.entries {
            if let Some(p) = e.mime {
                e.size = p.wire;
            }
        }
        self.ino = ino;
        self.len = len;
        let stamp = maildrop::stamp(&file, len).ok();
        dirty |= stamp != self.stamp || self.upgrade;
        self.stamp = stamp;
        if dirty {
            self.save();
        }
        Ok(())
    }

    /// The sidecar's entries not used as the view: remembered by UIDL for
    /// the scan that finds their messages.
    fn spill_known(&mut self) {
        for e in self.sidecar.drain(..) {
            self.known
                .insert(e.msg.uid, (e.uid, e.modseq, e.flags, e.mime));
        }
    }

    /// Takes a read lock on the folder for the scan (released when `file`
    /// closes). Every writer (our `MboxWriter`, procmail, mutt) holds the
    /// write lock from its first byte to its fsync, so under the read lock
    /// the file ends at a message boundary: a message half written is
    /// never indexed (its UIDL would be a hash of its first part, and it
    /// would come back later as another message: a spurious EXPUNGE).
    /// Waits up to [`LOCK_WAIT`] for a writer to finish (never keeps a
    /// stale view: EXPUNGE and MOVE plan their rewrite from it, and a
    /// view that skipped a look while the lock was held let a rewrite
    /// splice messages under kill -9, `bench/faults/imap_kill9.py`).
    /// `false`: still held, the scan goes on without it (as before).
    fn read_lock(&self, file: &File) -> bool {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match crate::util::sys::try_read_lock(file) {
                Ok(true) => return true,
                // No lock support (some network file systems): as before.
                Err(_) => return true,
                Ok(false) if std::time::Instant::now() >= deadline => return false,
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(2)),
            }
        }
    }

    /// Takes the messages our writer appended after `self.len` from its
    /// index (`appended`): a chain of its batches that follows on from
    /// what is indexed, up to the last whose stamp the file still holds.
    /// `false` when it covers nothing (the caller scans).
    fn index_from_log(&mut self, file: &File, ino: u64, len: u64) -> Result<bool, StoreError> {
        let Some(path) = &self.appended else {
            return Ok(false);
        };
        let known_holds = match &self.stamp {
            None => self.len == 0 && self.entries.is_empty(),
            Some(s) => s.len == self.len && maildrop::still_holds(file, s).unwrap_or(false),
        };
        if !known_holds {
            return Ok(false);
        }
        // From where the last batch used ended, else (nothing there: the
        // log started again) from its start.
        let pre = self
            .pre_log
            .take()
            .filter(|p| self.appended_at == 0 && p.id.is_some() && p.id == file_id(path));
        let mut log = match pre {
            Some(p) => p.log,
            None => super::appended::read(path, self.appended_at),
        };
        if log.batches.is_empty() && self.appended_at > 0 {
            log = super::appended::read(path, 0);
        }
        let (batches, ends): (Vec<_>, Vec<u64>) = log.batches.into_iter().unzip();
        let Some(first) = batches.iter().position(|b| b.from == self.len) else {
            return Ok(false);
        };
        let mut last = first;
        while last + 1 < batches.len() && batches[last + 1].from == batches[last].stamp.len {
            last += 1;
        }
        let Some(last) = (first..=last).rev().find(|&k| {
            let s = &batches[k].stamp;
            s.len <= len && maildrop::still_holds(file, s).unwrap_or(false)
        }) else {
            return Ok(false);
        };
        let stamp = batches[last].stamp.clone();
        // The chain's records are end to end in the log's `joined`: they
        // go into the `.mime` file in one write.
        let st = &log.starts;
        // Usually the whole log is the chain: its records are moved, not
        // copied (a fresh 2.3 MB copy for 2,000 messages was 1.5 ms of
        // the SELECT, most of it page faults).
        let blob = if st[first] == 0 && st[last + 1] == log.joined.len() {
            std::mem::take(&mut log.joined)
        } else {
            log.joined[st[first]..st[last + 1]].to_vec()
        };
        let mut new = Vec::new();
        for (b, start) in batches.into_iter().zip(st).take(last + 1).skip(first) {
            let base = (start - st[first]) as u64;
            for mut e in b.entries {
                e.mime = e.mime.map(|p| Ptr {
                    at: p.at + base,
                    ..p
                });
                new.push(e);
            }
        }
        let at = if blob.is_empty() {
            None
        } else {
            self.db.append_framed(blob)
        };
        for mut e in new {
            let floor = self.entries.last().map_or(0, |l| l.uid);
            let seal_uid = e.uid;
            match self.known.remove(&e.msg.uid) {
                Some((u, ms, f, _)) if u < self.uid_next && floor < u => {
                    (e.uid, e.modseq, e.flags) = (u, ms, f);
                }
                _ => {
                    e.uid = if seal_uid > floor.max(self.uid_next - 1) && seal_uid < u32::MAX {
                        seal_uid
                    } else {
                        self.uid_next.max(floor + 1)
                    };
                    self.modseq += 1;
                    e.modseq = self.modseq;
                }
            }
            self.uid_next = self.uid_next.max(e.uid + 1);
            e.mime = match (e.mime, at) {
                (Some(p), Some(at)) => Some(Ptr { at: p.at + at, ..p }),
                _ => None,
            };
            if e.mime.is_none() {
                let (rec, wire) = parse_record(file, e.body_start, e.msg.end)?;
                e.mime = self.db.put(&e.msg.uid, &rec, wire);
                e.size = wire;
            }
            self.log.push((0, Change::Added(e.uid)));
            self.entries.push(e);
        }
        self.ino = ino;
        self.len = stamp.len;
        self.stamp = Some(stamp);
        self.appended_at = ends[last];
        Ok(true)
    }

    /// Indexes the messages after the last known one; `false` when the
    /// file no longer holds what was scanned (then the caller scans it
    /// whole).
    fn tail_scan(&mut self, file: &File, len: u64) -> Result<bool, StoreError> {
        let Some(stamp) = &self.stamp else {
            return Ok(false);
        };
        if stamp.len != self.len || !maildrop::still_holds(file, stamp).unwrap_or(false) {
            return Ok(false);
        }
        let from = self.entries.last().map_or(0, |e| e.msg.offset);
        let d: &dyn crate::store::disk::Disk = file;
        let tail =
            maildrop::scan_with(d, from, len, CHUNK).map_err(|e| io("cannot read folder", e))?;
        let mut tail = tail.into_iter();
        if let Some(last) = self.entries.last() {
            // The last known message must come first, where it was and as
            // long as it was (its end was the old end of the file).
            match tail.next() {
                Some(m)
                    if m.uid == last.msg.uid
                        && m.offset == last.msg.offset
                        && m.end == last.msg.end => {}
                _ => return Ok(false),
            }
        }
        for m in tail {
            if self
                .entries
                .iter()
                .rev()
                .take(64)
                .any(|e| e.msg.uid == m.uid)
            {
                // A duplicate UIDL (the scanner adds `-N` to real
                // duplicates, so this is a re-read): a full scan decides.
                return Ok(false);
            }
            self.index_new(file, m, None)?;
        }
        Ok(true)
    }

    /// Gives a message seen for the first time its UID (its seal's, the
    /// sidecar's, or UIDNEXT), and its MIME record.
    /// `pre`: what the scan's pass already read of it ([`Indexer`]).
    fn index_new(&mut self, file: &File, m: Message, pre: Option<Pre>) -> Result<(), StoreError> {
        let (seal, date, skip, made, mut stored_flags) = match pre {
            Some(p) => (p.seal, p.date, p.skip, Some((p.ptr, p.wire)), Some(p.flags)),
            None => {
                let (seal, date, skip) = read_head(file, &m);
                (seal, date, skip, None, None)
            }
        };
        let (uid, modseq, flags, ptr) = match self.known.remove(&m.uid) {
            Some((u, ms, f, p))
                if u < self.uid_next && self.entries.last().map_or(true, |l| l.uid < u) =>
            {
                // The sidecar's flags, not the file's: IMAP's are newer.
                stored_flags = Some(Vec::new());
                (u, ms, f, p)
            }
            _ => {
                let floor = self.entries.last().map_or(0, |e| e.uid);
                let uid = match &seal {
                    Some(s)
                        if s.uid > u64::from(floor.max(self.uid_next - 1))
                            && s.uid < u64::from(u32::MAX) =>
                    {
                        s.uid as Uid
                    }
                    _ => self.uid_next.max(floor + 1),
                };
                self.uid_next = uid + 1;
                self.modseq += 1;
                (uid, self.modseq, Vec::new(), None)
            }
        };
        self.push_new(m, uid, modseq, flags, seal, date, skip);
        let u = self.entries.last().map_or(0, |e| e.uid);
        self.log.push((0, Change::Added(u)));
        if let Some(e) = self.entries.last_mut() {
            e.mime = ptr;
            match made {
                // The sidecar's record is used.
                Some((Some(r), _)) if e.mime.is_some() => self.db.drop_record(r),
                Some(_) if e.mime.is_some() => {}
                Some((made, wire)) => {
                    e.mime = made;
                    e.size = wire;
                }
                None => {}
            }
            if e.mime.is_none() && made.is_none() {
                let (rec, wire, f) = parse_record_flags(file, e.body_start, e.msg.end)?;
                let p = self.db.put(&e.msg.uid, &rec, wire);
                e.mime = p;
                e.size = wire;
                stored_flags.get_or_insert(f);
            }
            if let Some(p) = e.mime {
                e.size = p.wire;
            }
            // Mail another program wrote comes with the flags its readers
            // gave it in `Status:`/`X-Status:` (a user switching from
            // mutt or Dovecot keeps what they read); pimail strips those
            // fields from mail it receives, so a sender cannot set them.
            if let Some(f) = stored_flags.filter(|f| !f.is_empty()) {
                e.flags = f;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn push_new(
        &mut self,
        msg: Message,
        uid: Uid,
        modseq: u64,
        flags: Vec<Flag>,
        seal: Option<Seal>,
        date: i64,
        skip: u64,
    ) {
        self.uid_next = self.uid_next.max(uid + 1);
        // The skipped seal line is `skip` bytes stored, one more on the
        // wire (its CRLF).
        let size = if skip > 0 {
            msg.size.saturating_sub(skip + 1)
        } else {
            msg.size
        };
        self.entries.push(Entry {
            body_start: msg.start + skip,
            size,
            msg,
            uid,
            flags,
            modseq,
            date,
            seal_id: seal.map(|s| s.id),
            mime: None,
        });
    }

    /// Called before the folder is rewritten in place (EXPUNGE, MOVE):
    /// bodies being streamed from it stop rather than send moved bytes.
    pub fn rewritten(&self) {
        self.generation.set(self.generation.get() + 1);
    }

    fn pos(&self, uid: Uid) -> Option<usize> {
        self.entries.binary_search_by_key(&uid, |e| e.uid).ok()
    }

    fn summary(&self) -> Summary {
        Summary {
            messages: self.entries.len() as u32,
            unseen: self
                .entries
                .iter()
                .filter(|e| !has(&e.flags, "\\Seen"))
                .count() as u32,
            deleted: self
                .entries
                .iter()
                .filter(|e| has(&e.flags, "\\Deleted"))
                .count() as u32,
            size: self.entries.iter().map(|e| e.size).sum(),
            uid_next: self.uid_next,
            uid_validity: self.uid_validity,
            highest_modseq: self.modseq,
        }
    }

    /// Sets flags on a message (after APPEND/COPY), logged as origin's.
    pub fn set_flags(&mut self, uid: Uid, flags: &[Flag], origin: u64) {
        if let Some(i) = self.pos(uid) {
            self.modseq += 1;
            let e = &mut self.entries[i];
            e.flags = flags
                .iter()
                .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                .cloned()
                .collect();
            e.modseq = self.modseq;
            self.log.push((origin, Change::Flags(uid)));
            self.save();
        }
    }

    /// The entry whose seal id is `id` (after our own append).
    pub fn by_seal(&self, id: &str) -> Option<Uid> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.seal_id.as_deref() == Some(id))
            .map(|e| e.uid)
    }

    pub fn entry(&self, uid: Uid) -> Option<&Entry> {
        self.pos(uid).map(|i| &self.entries[i])
    }

    /// The maildrop view for a rewrite: messages and the file's stamp,
    /// and each message's flags as `Status:`/`X-Status:` lines, which the
    /// rewrite writes into the kept messages (issue 16: mutt and other
    /// mbox readers see what was read, answered, flagged in IMAP).
    pub fn expunge_plan(
        &self,
        uids: &[Uid],
    ) -> Result<(maildrop::Expunge, StatusLines), StoreError> {
        // The identity of what this view scanned, not of the file now: the
        // rewrite (under the lock) checks the file still holds it, so a
        // view that missed a change (a look skipped while a writer held
        // the lock, another program's rewrite) is refused, not applied
        // with offsets that no longer hold (spliced messages).
        let stamp = match &self.stamp {
            Some(s) if s.len == self.len && s.ino == self.ino => s.clone(),
            _ => {
                return Err(StoreError::Unavailable(
                    "the folder changed meanwhile; try again".into(),
                ))
            }
        };
        let status = self
            .entries
            .iter()
            .map(|e| {
                let f = |name: &str| has(&e.flags, name);
                Some(maildrop::status_lines(
                    f("\\Seen"),
                    f("\\Answered"),
                    f("\\Flagged"),
                    f("\\Deleted"),
                    f("\\Draft"),
                ))
            })
            .collect();
        Ok((
            maildrop::Expunge {
                messages: self.entries.iter().map(|e| e.msg.clone()).collect(),
                deleted: self.entries.iter().map(|e| uids.contains(&e.uid)).collect(),
                stamp,
            },
            status,
        ))
    }
}

/// Parses the stored message `[start, end)` in bounded pieces into its
/// MIME record's payload and its size as IMAP serves it. The parser sees the
/// message without its hidden fields ([`HideFilter`]), so the wire
/// positions are those of what is served; the stored positions are then
/// put back into the file's terms (every position past the header moves
/// by what was hidden in it).
pub(super) fn parse_record(
    file: &File,
    start: u64,
    end: u64,
) -> Result<(Vec<u8>, u64), StoreError> {
    parse_record_flags(file, start, end).map(|(rec, wire, _)| (rec, wire))
}

/// [`parse_record`], and the flags in the message's hidden fields
/// ([`super::hidden::flags`]).
fn parse_record_flags(
    file: &File,
    start: u64,
    end: u64,
) -> Result<(Vec<u8>, u64, Vec<Flag>), StoreError> {
    let mut p = mime::Parser::new();
    let mut hide = HideFilter::new();
    let mut buf = vec![0u8; CHUNK];
    let mut shown = Vec::with_capacity(CHUNK);
    let mut at = start;
    while at < end {
        let n = ((end - at) as usize).min(CHUNK);
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| io("cannot read folder", e))?;
        shown.clear();
        hide.feed(&buf[..n], &mut shown);
        p.feed(&shown);
        at += n as u64;
    }
    shown.clear();
    hide.finish(&mut shown);
    p.feed(&shown);
    let mut s = p.finish();
    if hide.removed > 0 {
        shift_stored(&mut s.root, hide.removed, true);
    }
    // With the texts FETCH sends, rendered now (see `mimedb`).
    Ok((
        mimedb::payload(&s),
        s.size(),
        super::hidden::flags(&hide.text),
    ))
}

/// The mbox writer's hook ([`crate::store::mbox::MboxWriter::start_with`]):
/// hands what one commit appended to the indexer thread, which indexes it
/// into the writer's log (`appended`) with the code a scan runs, so that
/// the first SELECT reads the log, not the folder. The writer thread only
/// sends a message (its next commit does not wait for the MIME parse);
/// if the indexer lags too far, the batch is dropped and the log starts
/// again (the folder is then scanned).
pub fn index_appended(a: &crate::store::mbox::Appended) {
    use std::sync::mpsc;
    static INDEXER: std::sync::OnceLock<Option<std::sync::Mutex<mpsc::SyncSender<IndexJob>>>> =
        std::sync::OnceLock::new();
    let tx = INDEXER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<IndexJob>(256);
        std::thread::Builder::new()
            .name("imap-indexer".into())
            .spawn(move || {
                while let Ok(j) = rx.recv() {
                    let a = crate::store::mbox::Appended {
                        mbox: &j.mbox,
                        dir: &j.dir,
                        from: j.from,
                        to: j.to,
                        continues: j.continues,
                    };
                    super::appended::write(&a, appended_batch(&a));
                    INDEXING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .ok()
            .map(|_| std::sync::Mutex::new(tx))
    });
    let job = a.mbox.try_clone().ok().map(|mbox| IndexJob {
        mbox,
        dir: a.dir.to_path_buf(),
        from: a.from,
        to: a.to,
        continues: a.continues,
    });
    INDEXING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let sent = match (tx, job) {
        (Some(tx), Some(job)) => tx.lock().is_ok_and(|tx| tx.try_send(job).is_ok()),
        _ => false,
    };
    if !sent {
        INDEXING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    if !sent {
        // A gap in the log: what follows must not chain on.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(a.dir.join(super::appended::LOG))
            .and_then(|f| f.set_len(0));
    }
}

/// Commits handed to the indexer thread and not yet indexed.
static INDEXING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// At shutdown: waits (at most `wait`) for the indexer to finish what the
/// writers handed it, so that the next start finds the last deliveries
/// indexed.
pub fn finish_indexing(wait: std::time::Duration) {
    let deadline = std::time::Instant::now() + wait;
    while INDEXING.load(std::sync::atomic::Ordering::SeqCst) > 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// One commit for the indexer thread.
struct IndexJob {
    mbox: File,
    dir: PathBuf,
    from: u64,
    to: u64,
    continues: bool,
}

fn appended_batch(a: &crate::store::mbox::Appended) -> Option<Vec<u8>> {
    let d: &dyn crate::store::disk::Disk = a.mbox;
    // Read without the locks, maybe after the writer appended more: what
    // is read must be what the stamp says (checked again after), and our
    // commit's messages follow one another from `from` on.
    let stamp = maildrop::stamp(a.mbox, a.to).ok()?;
    let msgs = maildrop::scan_with(d, a.from, a.to, CHUNK).ok()?;
    let mut blob = Vec::new();
    let mut entries: Vec<Entry> = Vec::with_capacity(msgs.len());
    let mut next = a.from;
    for m in msgs {
        if m.offset < next || m.offset > next + 2 {
            return None;
        }
        next = m.end + 1;
        let (seal, date, skip) = read_head(a.mbox, &m);
        // Only our sealed messages are in a commit of ours.
        let seal = seal?;
        let uid = u32::try_from(seal.uid).ok().filter(|&u| u > 0)?;
        let body_start = m.start + skip;
        let (rec, wire) = parse_record(a.mbox, body_start, m.end).ok()?;
        let framed = super::mimedb::frame(&m.uid, &rec)?;
        let mime = Ptr {
            at: blob.len() as u64,
            len: framed.len() as u32,
            wire,
        };
        blob.extend_from_slice(&framed);
        entries.push(Entry {
            msg: m,
            uid,
            flags: Vec::new(),
            modseq: 0,
            date,
            seal_id: Some(seal.id),
            body_start,
            size: wire,
            mime: Some(mime),
        });
    }
    let body = super::appended::encode(a.from, &stamp, &entries, &blob)?;
    // Our writer's next commit may be under way: a write(2) that extends
    // a file sets its mtime before its length, so for a moment the file
    // looks touched at the same length, as after a rewrite in place, and
    // the log started again (the next first SELECT then scanned; one run
    // in three of bench/imap.py's 2,000 deliveries). Such a moment passes;
    // a rewrite does not.
    for _ in 0..3 {
        if maildrop::still_holds(a.mbox, &stamp).ok()? {
            return Some(body);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    None
}

/// What [`Indexer`] read of a message: what [`read_head`] and
/// [`parse_record`] give, the record already in the `.mime` file.
struct Pre {
    seal: Option<Seal>,
    date: i64,
    skip: u64,
    ptr: Option<Ptr>,
    wire: u64,
    /// From its hidden fields ([`super::hidden::flags`]).
    flags: Vec<Flag>,
}

impl Drop for FolderState {
    /// What a last command changed is not lost with the state.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Read size of the one-pass scan: large reads cost fewer calls; still
/// bounded.
const SCAN_CHUNK: usize = 128 * 1024;

/// The one-pass first scan's [`maildrop::ScanSink`]: reads each message's
/// head ([`head_of`]) and MIME structure (as [`parse_record`] does, fed
/// from the scan's own buffer) as the scan goes, and writes the records.
/// Holds at most [`HEAD`] octets of a message, and the parser's bounded
/// state.
struct Indexer<'a> {
    db: &'a mut MimeDb,
    out: Vec<Pre>,
    offset: u64,
    /// File offset of the next octet shown.
    at: u64,
    /// The first [`HEAD`] octets, until the head is read.
    head: Vec<u8>,
    head_done: bool,
    seal: Option<Seal>,
    date: i64,
    skip: u64,
    /// The first-line seal's octets on the wire (0 without one).
    skip_wire: u64,
    /// Where the parser starts: after the `From ` line and a first-line
    /// seal; `None` while the `From ` line goes on past [`HEAD`].
    body_start: Option<u64>,
    hide: HideFilter,
    /// `None` between a message's end and the next one's start.
    parser: Option<mime::Parser>,
    /// The last parser's buffers, for the next.
    spare: mime::Buffers,
    shown: Vec<u8>,
    /// Records not yet written, for `out[out.len() - batch.len()..]`;
    /// written when they reach [`BATCH`] octets and at the end.
    batch: Vec<Record>,
    batched: usize,
}

/// A MIME record to write: the message's UIDL, the record, its wire size.
type Record = (String, Vec<u8>, u64);

/// Octets of MIME records written at once by the first scan.
const BATCH: usize = 64 * 1024;

impl<'a> Indexer<'a> {
    fn new(db: &'a mut MimeDb) -> Self {
        Indexer {
            db,
            out: Vec::new(),
            offset: 0,
            at: 0,
            head: Vec::with_capacity(HEAD),
            head_done: false,
            seal: None,
            date: 0,
            skip: 0,
            skip_wire: 0,
            body_start: None,
            hide: HideFilter::new(),
            parser: None,
            spare: mime::Buffers::default(),
            shown: Vec::new(),
            batch: Vec::new(),
            batched: 0,
        }
    }

    /// Writes the batched records; their pointers go to their messages.
    fn flush(&mut self) {
        let ptrs = self.db.put_many(&self.batch);
        let first = self.out.len() - ptrs.len();
        for (pre, p) in self.out[first..].iter_mut().zip(ptrs) {
            pre.ptr = p;
        }
        self.batch.clear();
        self.batched = 0;
    }

    /// The pass is over: every record written.
    fn finish(mut self) -> Vec<Pre> {
        self.flush();
        self.out
    }

    /// The head is all there (or the message ends): read it.
    fn read_head(&mut self) {
        let (seal, date, skip) = head_of(&self.head);
        let line_end = memchr::memchr(b'\n', &self.head);
        self.body_start = line_end.map(|i| self.offset + i as u64 + 1 + skip);
        // The seal line ends in a LF (`head_of`): CRLF on the wire unless
        // it is one already.
        self.skip_wire = match line_end {
            Some(i) if skip > 0 => {
                let seal_end = i + skip as usize;
                skip + u64::from(self.head.get(seal_end - 1) != Some(&b'\r'))
            }
            _ => 0,
        };
        (self.seal, self.date, self.skip) = (seal, date, skip);
        self.head_done = true;
        let head = std::mem::take(&mut self.head);
        self.content(self.offset, &head);
        self.head = head;
    }

    /// Octets at file offset `at` on, once the head is read.
    fn content(&mut self, at: u64, b: &[u8]) {
        let start = match self.body_start {
            Some(s) => s,
            None => match memchr::memchr(b'\n', b) {
                // The end of a long `From ` line.
                Some(i) => *self.body_start.insert(at + i as u64 + 1),
                None => return,
            },
        };
        let from = start.saturating_sub(at).min(b.len() as u64) as usize;
        let b = &b[from..];
        let Some(parser) = self.parser.as_mut() else {
            return;
        };
        if b.is_empty() {
        } else if self.hide.done() {
            parser.feed(b);
        } else {
            self.shown.clear();
            self.hide.feed(b, &mut self.shown);
            parser.feed(&self.shown);
        }
    }
}

impl maildrop::ScanSink for Indexer<'_> {
    fn start(&mut self, offset: u64) {
        self.offset = offset;
        self.at = offset;
        self.head.clear();
        self.head_done = false;
        self.body_start = None;
        self.hide = HideFilter::new();
        self.parser = Some(mime::Parser::with_buffers(std::mem::take(&mut self.spare)));
    }

    fn bytes(&mut self, mut b: &[u8]) {
        if !self.head_done {
            let take = (HEAD - self.head.len()).min(b.len());
            self.head.extend_from_slice(&b[..take]);
            self.at += take as u64;
            b = &b[take..];
            if self.head.len() < HEAD {
                return;
            }
            self.read_head();
        }
        self.content(self.at, b);
        self.at += b.len() as u64;
    }

    /// The parse counted every line: the message's size (as POP3 and
    /// the scan count it) is the parsed part's, the seal's and the hidden
    /// fields'.
    fn sizes(&self) -> bool {
        true
    }

    fn end(&mut self, m: &mut Message) {
        if !self.head_done {
            self.read_head();
        }
        self.shown.clear();
        self.hide.finish(&mut self.shown);
        let mut p = self.parser.take().unwrap_or_default();
        p.feed(&self.shown);
        let (mut s, spare) = p.finish_with_buffers();
        self.spare = spare;
        if self.hide.removed > 0 {
            shift_stored(&mut s.root, self.hide.removed, true);
        }
        // With the texts FETCH sends, rendered now (see `mimedb`).
        let rec = mimedb::payload(&s);
        let wire = s.size();
        m.size = wire + self.skip_wire + self.hide.removed_wire;
        self.out.push(Pre {
            seal: self.seal.take(),
            date: self.date,
            skip: self.skip,
            ptr: None,
            wire,
            flags: super::hidden::flags(&self.hide.text),
        });
        self.batched += rec.len() + m.uid.len();
        self.batch.push((m.uid.clone(), rec, wire));
        if self.batched >= BATCH {
            self.flush();
        }
    }
}

/// Parts of a first scan done at once, one per core (up to four: a
/// Raspberry Pi's), none smaller than [`PART_MIN`]: the first look at a
/// big foreign mbox (a user's years of mail) is bound by the CPU, and a
/// second core halves it.
fn scan_parts(len: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(4).min((len / PART_MIN) as usize).max(1)
}

/// No part of a split scan is smaller (a thread costs more than this
/// takes to read).
const PART_MIN: u64 = 32 << 20;

/// How far past a part's nominal start its first message is looked for;
/// a part whose start is not found within it is joined to the one before.
const PART_SEEK: usize = 1 << 20;

/// The one-pass first scan of `file` (`len` octets) in up to `parts`
/// parts at once: each starts at a `From ` line (a message start in any
/// scan: every line that starts with `From ` is one, store::maildrop),
/// so the parts' messages, joined, are those of one scan of the whole
/// file, with the same octets each (the test `a_split_scan_is_the_whole_scan`).
/// Each part writes its records as it goes.
fn index_all(
    file: &File,
    len: u64,
    db: &mut MimeDb,
    parts: usize,
) -> std::io::Result<(Vec<Message>, Vec<Pre>)> {
    let mut starts = vec![0u64];
    for k in 1..parts {
        let nominal = len / parts as u64 * k as u64;
        if let Some(s) = message_start_after(file, nominal.max(starts[starts.len() - 1]), len)? {
            if s > starts[starts.len() - 1] && s < len {
                starts.push(s);
            }
        }
    }
    let mut ends: Vec<u64> = starts[1..].to_vec();
    ends.push(len);
    let part = |from: u64, to: u64, db: &mut MimeDb| {
        let d: &dyn crate::store::disk::Disk = file;
        let mut ix = Indexer::new(db);
        maildrop::scan_visit(d, from, to, SCAN_CHUNK, &mut ix).map(|all| (all, ix.finish()))
    };
    if starts.len() == 1 {
        return part(0, len, db);
    }
    // The other parts write their records to files of their own (memory
    // stays small whatever the folder holds), copied after the first
    // part's when all are done. Unlinked at once: a crash leaves nothing.
    let mut dbs: Vec<MimeDb> = (1..starts.len())
        .map(|k| {
            let path = db.path().with_extension(format!("mime-part{k}"));
            let _ = std::fs::remove_file(&path);
            let part_db = MimeDb::open(path.clone());
            let _ = std::fs::remove_file(&path);
            part_db
        })
        .collect();
    // Every part on a thread of its own, the first too, while this one
    // waits: glibc gives each thread that allocates an arena, from those
    // free or in turn, so the parts get their own, but this thread keeps
    // the main one, and a part beside it would share it (and its lock:
    // as slow as one part, measured).
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = std::iter::once(&mut *db)
            .chain(dbs.iter_mut())
            .zip(starts.iter().zip(&ends))
            .map(|(db, (&from, &to))| {
                let work = move || part(from, to, db);
                std::thread::Builder::new()
                    .name("imap-scan".into())
                    .spawn_scoped(scope, work)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => Some(
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("scan thread failed"))),
                ),
                // No thread to be had: the part is scanned here, after.
                Err(_) => None,
            })
            .collect()
    });
    let mut all = Vec::new();
    let mut pre = Vec::new();
    for (k, r) in results.into_iter().enumerate() {
        let target = if k == 0 { &mut *db } else { &mut dbs[k - 1] };
        let (msgs, mut p) = match r {
            Some(r) => r?,
            None => part(starts[k], ends[k], target)?,
        };
        if k > 0 {
            // Its records, now in the folder's file: pointers moved.
            let base = db.absorb(&mut dbs[k - 1]);
            for x in &mut p {
                x.ptr = match (x.ptr, base) {
                    (Some(r), Some(base)) => {
                        let r = Ptr {
                            at: r.at + base,
                            ..r
                        };
                        db.keep(r);
                        Some(r)
                    }
                    _ => None,
                };
            }
        }
        all.extend(msgs);
        pre.extend(p);
    }
    Ok((all, pre))
}

/// The offset of the first line starting with `From ` at or after `at`
/// (looked for within [`PART_SEEK`]), `None` if there is none there.
fn message_start_after(file: &File, at: u64, len: u64) -> std::io::Result<Option<u64>> {
    if at == 0 || at >= len {
        return Ok(None);
    }
    // From the octet before `at`: a line starts after its LF.
    let from = at - 1;
    let want = ((len - from) as usize).min(PART_SEEK);
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        let n = file.read_at(&mut buf[got..], from + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(memchr::memmem::find(&buf[..got], b"\nFrom ").map(|j| from + j as u64 + 1))
}

/// Moves every stored position of `part` but the message's own start.
fn shift_stored(part: &mut mime::Part, by: u64, root: bool) {
    if !root || part.header.stored > 0 {
        part.header.stored += by;
    }
    part.body.stored += by;
    part.end.stored += by;
    match &mut part.kind {
        mime::Kind::Single => {}
        mime::Kind::Multi(children) => {
            for c in children {
                shift_stored(c, by, false);
            }
        }
        mime::Kind::Message(_, inner) => shift_stored(inner, by, false),
    }
}

/// For POP3's deletion at QUIT (the INBOX): the flags IMAP keeps for
/// these messages (the sidecar `<data_dir>/imap/INBOX.index`, keyed by
/// the same UIDLs) as `Status:`/`X-Status:` lines, so that this rewrite
/// too writes them (issue 16). A message IMAP never saw: left as it is.
pub fn inbox_status_lines(data_dir: &Path, messages: &[Message]) -> StatusLines {
    let Some(sc) = std::fs::read(data_dir.join("imap").join("INBOX.index"))
        .ok()
        .and_then(|b| super::sidecar::decode(&b))
    else {
        return Vec::new();
    };
    let flags: HashMap<&str, &[Flag]> = sc
        .entries
        .iter()
        .map(|e| (e.msg.uid.as_str(), &e.flags[..]))
        .collect();
    messages
        .iter()
        .map(|m| {
            let f = flags.get(m.uid.as_str())?;
            let has = |n: &str| f.iter().any(|x| x.eq_ignore_ascii_case(n));
            Some(maildrop::status_lines(
                has("\\Seen"),
                has("\\Answered"),
                has("\\Flagged"),
                has("\\Deleted"),
                has("\\Draft"),
            ))
        })
        .collect()
}

/// Per message, the `Status:`/`X-Status:` lines a rewrite gives it.
pub type StatusLines = Vec<Option<Vec<u8>>>;

fn has(flags: &[Flag], f: &str) -> bool {
    flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}

/// The seal (first two header lines), INTERNALDATE (the `From ` line)
/// and the bytes to skip at the start (a seal on the first line).
fn read_head(file: &File, m: &Message) -> (Option<Seal>, i64, u64) {
    let n = (m.end - m.offset).min(HEAD as u64) as usize;
    let mut buf = vec![0u8; n];
    if file.read_exact_at(&mut buf, m.offset).is_err() {
        return (None, 0, 0);
    }
    head_of(&buf)
}

/// The octets of a message's start [`read_head`] looks at.
const HEAD: usize = 2048;

/// [`read_head`] of the first [`HEAD`] octets of a message (from its
/// `From ` line; fewer if the message is shorter).
fn head_of(buf: &[u8]) -> (Option<Seal>, i64, u64) {
    let mut lines = buf.split_inclusive(|&b| b == b'\n');
    let date = lines.next().map_or(0, from_line_date);
    let mut prev_rp = false;
    for (n, l) in lines.take(2).enumerate() {
        if !l.ends_with(b"\n") {
            break;
        }
        if crate::store::mbox::seal_position(n, prev_rp) {
            if let Some(s) = Seal::parse(l) {
                let skip = if n == 0 { l.len() as u64 } else { 0 };
                return (Some(s), date, skip);
            }
        }
        prev_rp = l.starts_with(b"Return-Path:");
    }
    (None, date, 0)
}

/// `From sender Thu Jan  1 00:00:00 1970` -> seconds (UTC); 0 if odd.
fn from_line_date(line: &[u8]) -> i64 {
    let s = String::from_utf8_lossy(line);
    let w: Vec<&str> = s.split_ascii_whitespace().collect();
    if w.len() < 5 {
        return 0;
    }
    let t = &w[w.len() - 4..];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (Some(mon), Ok(day), Ok(year)) = (
        MONTHS.iter().position(|m| *m == t[0]),
        t[1].parse::<u8>(),
        t[3].parse::<u16>(),
    ) else {
        return 0;
    };
    let hms: Vec<i64> = t[2].split(':').filter_map(|x| x.parse().ok()).collect();
    let [h, mi, se] = hms[..] else { return 0 };
    let d = super::command::Date {
        year,
        month: mon as u8 + 1,
        day,
    };
    d.days() * 86400 + h * 3600 + mi * 60 + se
}

/// The account: every folder's state, shared by all sessions.
pub struct Store {
    pub inbox: PathBuf,
    pub folders: PathBuf,
    /// Where the spam checks' not-junk list lives.
    pub data_dir: PathBuf,
    state_dir: PathBuf,
    open: RefCell<BTreeMap<String, Rc<RefCell<FolderState>>>>,
    next_handle: std::cell::Cell<u64>,
    /// The INBOX's sidecar, being read ahead at start ([`Preload`]).
    preload: RefCell<Option<std::sync::mpsc::Receiver<(Preloaded, PreloadedLog)>>>,
}

/// The INBOX's sidecar, read and decoded on a thread of its own from the
/// server's first moment: the first SELECT after a restart (a phone
/// reconnecting after an upgrade) then finds it decoded (SPEC "Budgets":
/// under 10 ms and no slower than Dovecot's memory-mapped index on 20,000
/// messages; decoding them is most of it). It is the state the first
/// IMAP session would load and keep anyway, only earlier; the server
/// listens without waiting for it. The INBOX writer's log of delivered
/// mail is read ahead the same way (mail delivered since the sidecar was
/// written needs no scan, and then no wait for the log either).
pub struct Preload(std::sync::mpsc::Receiver<(Preloaded, PreloadedLog)>);

impl Preload {
    /// Starts the reader (`None`: no thread could be started).
    pub fn start(data_dir: &Path) -> Option<Preload> {
        let index = Store::index_in(&data_dir.join("imap"), "INBOX");
        let log = data_dir.join(super::appended::LOG);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("imap-preload".into())
            .spawn(move || {
                let id = file_id(&index);
                let sc = id.and_then(|_| read_sidecar(&index));
                let _ = tx.send(((index, id, sc), PreloadedLog::read(&log)));
            })
            .ok()?;
        Some(Preload(rx))
    }
}

impl Store {
    /// Creates the special-use folders and the state directory.
    pub fn new(inbox: &Path, folders: &Path, data_dir: &Path) -> std::io::Result<Rc<Store>> {
        let state_dir = data_dir.join("imap");
        crate::util::paths::private_dir(&state_dir)?;
        crate::util::paths::private_dir(folders)?;
        for (name, _) in SPECIAL {
            let p = folders.join(name);
            if !p.exists() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)?;
            }
        }
        Ok(Rc::new(Store {
            inbox: inbox.to_path_buf(),
            folders: folders.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            state_dir,
            open: RefCell::new(BTreeMap::new()),
            next_handle: std::cell::Cell::new(1),
            preload: RefCell::new(None),
        }))
    }

    /// Takes the read-ahead of the INBOX's state ([`Preload::start`]).
    pub fn use_preload(&self, p: Preload) {
        *self.preload.borrow_mut() = Some(p.0);
    }

    /// The read-ahead sidecar of `index` if it is the file there now
    /// (waits for the reader: it started at start, so it is done or
    /// nearly).
    fn preloaded(&self, index: &Path) -> (Option<super::sidecar::Sidecar>, Option<PreloadedLog>) {
        let Some(rx) = self.preload.borrow_mut().take() else {
            return (None, None);
        };
        let Ok(((path, id, sc), log)) = rx.recv() else {
            return (None, None);
        };
        let sc = (path == index && id.is_some() && id == file_id(index))
            .then_some(sc)
            .flatten();
        (sc, Some(log))
    }

    /// A folder name that cannot leave the folders directory.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, StoreError> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Ok(self.inbox.clone());
        }
        let bad = name.is_empty()
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with('.'))
            || name.contains('\0');
        if bad {
            return Err(StoreError::Cannot(format!("invalid folder name {name:?}")));
        }
        Ok(self.folders.join(name))
    }

    fn canonical(name: &str) -> String {
        if name.eq_ignore_ascii_case("INBOX") {
            "INBOX".into()
        } else {
            name.to_string()
        }
    }

    /// The shared state of a folder, up to date with its file.
    pub fn folder(&self, name: &str) -> Result<Rc<RefCell<FolderState>>, StoreError> {
        let name = Self::canonical(name);
        let existing = self.open.borrow().get(&name).cloned();
        let st = match existing {
            Some(s) => s,
            None => {
                let path = self.path_of(&name)?;
                let index = Self::index_in(&self.state_dir, &name);
                let (pre, pre_log) = if name == "INBOX" {
                    self.preloaded(&index)
                } else {
                    (None, None)
                };
                let mut st = FolderState::load(path, index, pre);
                st.appended = Some(self.writer_dir(&name).join(super::appended::LOG));
                st.pre_log = pre_log;
                let s = Rc::new(RefCell::new(st));
                self.open.borrow_mut().insert(name, s.clone());
                s
            }
        };
        let r = st.borrow_mut().refresh();
        // Used by the first look or not at all (it may hold megabytes).
        st.borrow_mut().pre_log = None;
        r?;
        Ok(st)
    }

    /// Writes every open folder's sidecar that is behind its state
    /// ([`FolderState::save`]); the IMAP driver calls it before it sends.
    pub fn flush(&self) {
        self.each_open(FolderState::flush);
    }

    /// What may wait until a response is out ([`MimeDb::flush_pending`]);
    /// the IMAP driver calls it after it sent.
    pub fn flush_late(&self) {
        self.each_open(|st| st.db.flush_pending());
    }

    /// `f` on every open folder's state not in use right now.
    fn each_open(&self, f: impl Fn(&mut FolderState)) {
        for st in self.open.borrow().values() {
            if let Ok(mut st) = st.try_borrow_mut() {
                f(&mut st);
            }
        }
    }

    /// Where a folder's writer keeps its journal and its index of what it
    /// appended (as `conn::ImapContext::writer` and the SMTP side start
    /// them: INBOX in data_dir, Junk in `junk/`, others beside their
    /// sidecar).
    fn writer_dir(&self, name: &str) -> PathBuf {
        match name {
            "INBOX" => self.data_dir.clone(),
            "Junk" => self.data_dir.join("junk"),
            n => self.state_dir.join(format!("{}.d", n.replace('/', "%"))),
        }
    }

    /// The folders the user unsubscribed from (UNSUBSCRIBE); every other
    /// folder is subscribed.
    fn unsubscribed(&self) -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(self.state_dir.join("unsubscribed"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Forgets a folder's state (after DELETE or RENAME).
    pub fn forget(&self, name: &str) {
        self.open.borrow_mut().remove(&Self::canonical(name));
    }

    pub fn index_path(&self, name: &str) -> PathBuf {
        Self::index_in(&self.state_dir, name)
    }

    fn index_in(state_dir: &Path, name: &str) -> PathBuf {
        state_dir.join(format!("{}.index", Self::canonical(name).replace('/', "%")))
    }

    fn walk(&self, dir: &Path, prefix: &str, out: &mut Vec<FolderInfo>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut names: Vec<(String, bool)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                if n.starts_with('.') || n.ends_with(".lock") {
                    return None;
                }
                Some((n, e.file_type().ok()?.is_dir()))
            })
            .collect();
        names.sort();
        for (n, is_dir) in names {
            let full = format!("{prefix}{n}");
            let special = if prefix.is_empty() {
                SPECIAL.iter().find(|(s, _)| *s == n).map(|(_, u)| *u)
            } else {
                None
            };
            out.push(FolderInfo {
                name: full.clone(),
                special_use: special,
                noselect: is_dir,
                noinferiors: !is_dir,
                subscribed: true,
            });
            if is_dir {
                self.walk(&dir.join(&n), &format!("{full}/"), out);
            }
        }
    }
}

/// One session's view of the account.
pub struct StoreAccount(pub Rc<Store>);

impl Account for StoreAccount {
    type Folder = StoreFolder;

    fn list(&mut self) -> Result<Vec<FolderInfo>, StoreError> {
        let mut out = vec![FolderInfo {
            name: "INBOX".into(),
            special_use: None,
            noselect: false,
            noinferiors: true,
            subscribed: true,
        }];
        self.0.walk(&self.0.folders, "", &mut out);
        let unsub = self.0.unsubscribed();
        for f in &mut out {
            f.subscribed = !unsub.contains(&f.name);
        }
        Ok(out)
    }

    fn status(&mut self, name: &str) -> Result<Summary, StoreError> {
        let st = self.0.folder(name)?;
        let s = st.borrow().summary();
        Ok(s)
    }

    fn open(&mut self, name: &str) -> Result<StoreFolder, StoreError> {
        let state = self.0.folder(name)?;
        let handle = self.0.next_handle.get();
        self.0.next_handle.set(handle + 1);
        {
            let mut st = state.borrow_mut();
            let end = st.log_end();
            st.readers.insert(handle, end);
            st.trim_log();
        }
        Ok(StoreFolder {
            state,
            handle,
            data_dir: self.0.data_dir.clone(),
            hint: std::cell::Cell::new(0),
        })
    }

    fn subscribe(&mut self, name: &str, subscribed: bool) -> Result<(), StoreError> {
        // Folders are subscribed unless unsubscribed (a single user's own
        // folders, new ones included); the exceptions are kept in a small
        // file, replaced by rename.
        let name = Store::canonical(name);
        let mut unsub = self.0.unsubscribed();
        let changed = if subscribed {
            unsub.remove(&name)
        } else {
            unsub.insert(name)
        };
        if !changed {
            return Ok(());
        }
        let path = self.0.state_dir.join("unsubscribed");
        let tmp = self.0.state_dir.join("unsubscribed.tmp");
        let text: String = unsub.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| StoreError::Unavailable(format!("cannot save subscriptions: {e}")))
    }
}

/// A selected folder.
pub struct StoreFolder {
    pub state: Rc<RefCell<FolderState>>,
    pub handle: u64,
    data_dir: PathBuf,
    /// Where the last lookup found its message: a FETCH walks the folder
    /// in order, so the next one is most often there or one further (no
    /// binary search per message).
    hint: std::cell::Cell<usize>,
}

impl Drop for StoreFolder {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.readers.remove(&self.handle);
            st.trim_log();
        }
    }
}

impl StoreFolder {
    /// The position of `uid` in `st.entries`.
    fn find(&self, st: &FolderState, uid: Uid) -> Option<usize> {
        let h = self.hint.get();
        let i = [h.wrapping_add(1), h]
            .into_iter()
            .find(|&i| st.entries.get(i).is_some_and(|e| e.uid == uid))
            .or_else(|| st.pos(uid))?;
        self.hint.set(i);
        Some(i)
    }

    /// Copies a rendered text of a message's MIME record into `out`. An
    /// older record without the texts, or one whose texts are torn, is
    /// re-made from its `mime::index` part (the sidecar is written at the
    /// next poll, once for all that were re-made); a missing or damaged
    /// one is parsed again from the message.
    fn write_text(&self, uid: Uid, which: Rendered, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let copy = |out: &mut Vec<u8>| {
            let st = self.state.borrow();
            let i = self.find(&st, uid).ok_or(StoreError::NonExistent)?;
            let e = &st.entries[i];
            Ok(match e.mime {
                Some(p) => st.db.write_rendered(p, &e.msg.uid, which, out),
                None => Err(Miss::Bad),
            })
        };
        match copy(out)? {
            Ok(()) => return Ok(()),
            // Older (`Miss::Old`) or its texts torn: from its positions,
            // if they are whole.
            Err(_) if self.remake(uid) => {
                if copy(out)?.is_ok() {
                    return Ok(());
                }
            }
            Err(_) => {}
        }
        self.write_record(uid, out, |r, o| match which {
            Rendered::Envelope => mime::index::write_envelope(r, o),
            Rendered::BodyStructure => mime::index::write_body(r, true, o),
            Rendered::Body => mime::index::write_body(r, false, o),
        })
    }

    /// Re-makes a record from its `mime::index` part (an older record
    /// without the texts, or torn texts); `false` if that cannot be done.
    fn remake(&self, uid: Uid) -> bool {
        let mut st = self.state.borrow_mut();
        let Some(i) = self.find(&st, uid) else {
            return false;
        };
        let Some(p) = st.entries[i].mime else {
            return false;
        };
        let uidl = st.entries[i].msg.uid.clone();
        let Some(payload) = st.db.get(p, &uidl).and_then(|r| mimedb::render(&r)) else {
            return false;
        };
        if !mimedb::fits(&uidl, &payload) {
            // Stored without its texts (see `MimeDb::put`): as it is.
            return false;
        }
        let Some(n) = st.db.put(&uidl, &payload, p.wire) else {
            return false;
        };
        st.db.drop_record(p);
        st.db.moved();
        st.entries[i].mime = Some(n);
        true
    }

    /// A message's MIME record (from the `.mime` file; parsed again
    /// if that is missing or wrong), the folder file and the message as
    /// IMAP sees it (from after a leading seal).
    fn record(&self, uid: Uid) -> Result<(Vec<u8>, File, Message), StoreError> {
        self.record_or_rebuild(uid, false)
    }

    /// `rebuild`: the record read before was refused by its reader.
    fn record_or_rebuild(
        &self,
        uid: Uid,
        rebuild: bool,
    ) -> Result<(Vec<u8>, File, Message), StoreError> {
        let mut st = self.state.borrow_mut();
        let i = self.find(&st, uid).ok_or(StoreError::NonExistent)?;
        let file = File::open(&st.path).map_err(|e| io("cannot open folder", e))?;
        let mut m = st.entries[i].msg.clone();
        m.start = st.entries[i].body_start;
        let cached = st.entries[i]
            .mime
            .filter(|_| !rebuild)
            .and_then(|p| st.db.get(p, &st.entries[i].msg.uid));
        if let Some(rec) = cached {
            return Ok((rec, file, m));
        }
        log::info!("{}: MIME record of UID {uid} rebuilt", st.path.display());
        let (payload, wire) = parse_record(&file, m.start, m.end)?;
        let uidl = st.entries[i].msg.uid.clone();
        st.entries[i].mime = st.db.put(&uidl, &payload, wire);
        let rec = mimedb::index_part(&payload).unwrap_or_default().to_vec();
        st.entries[i].size = wire;
        st.save();
        Ok((rec, file, m))
    }

    /// The structure of a message, from its record.
    fn structure(&self, uid: Uid) -> Result<(Structure, File, Message), StoreError> {
        let (rec, file, m) = self.record(uid)?;
        if let Ok(s) = mime::index::decode(&rec) {
            return Ok((s, file, m));
        }
        let (rec, file, m) = self.record_or_rebuild(uid, true)?;
        let s = mime::index::decode(&rec)
            .map_err(|e| StoreError::Unavailable(format!("MIME record: {e}")))?;
        Ok((s, file, m))
    }

    /// Writes from a message's record with `w`; a record `w` refuses
    /// (a torn or stale cache) is rebuilt from the message once.
    fn write_record(
        &self,
        uid: Uid,
        out: &mut Vec<u8>,
        w: impl Fn(&[u8], &mut Vec<u8>) -> Result<(), mime::index::IndexError>,
    ) -> Result<(), StoreError> {
        let mark = out.len();
        let (rec, _, _) = self.record(uid)?;
        if w(&rec, out).is_ok() {
            return Ok(());
        }
        out.truncate(mark);
        let (rec, _, _) = self.record_or_rebuild(uid, true)?;
        w(&rec, out).map_err(|e| {
            out.truncate(mark);
            StoreError::Unavailable(format!("MIME record: {e}"))
        })
    }

    /// The wire form of a range of a message.
    fn wire(file: &File, m: &Message, r: mime::Range, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let mut w = WireWriter::new();
        let mut hide = (r.start.stored == 0).then(HideFilter::new);
        let mut buf = vec![0u8; CHUNK];
        let mut shown = Vec::new();
        let (mut at, end) = (
            m.start + r.start.stored,
            (m.start + r.end.stored).min(m.end),
        );
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| io("cannot read folder", e))?;
            match &mut hide {
                Some(h) => {
                    shown.clear();
                    h.feed(&buf[..n], &mut shown);
                    w.write(&shown, out);
                }
                None => w.write(&buf[..n], out),
            }
            at += n as u64;
        }
        if let Some(h) = &mut hide {
            shown.clear();
            h.finish(&mut shown);
            w.write(&shown, out);
        }
        if end >= m.end {
            w.end_message(out);
        } else {
            w.finish(out);
        }
        Ok(())
    }
}

/// The octets of one FETCH literal, produced in bounded pieces by
/// [`Body::fill`]: a range of the folder file turned into its wire form
/// (mboxrd quoting undone, CRLF) as it is read, cut to the partial range,
/// or a few bytes made in memory (HEADER.FIELDS). At most [`CHUNK`] bytes
/// of the file are held at a time, whatever the message's size.
pub struct Body {
    bytes: Option<Vec<u8>>,
    file: Option<Rc<File>>,
    /// The next stored offset to read, and the end of the range.
    at: u64,
    end: u64,
    /// The range ends the message (an open last line gets its CRLF).
    message_end: bool,
    /// Wire octets still to drop (the partial's start) and to send.
    skip: u64,
    left: u64,
    wire: WireWriter,
    /// For a range from the message's start: the hidden fields go.
    hide: Option<HideFilter>,
    /// BINARY and SEARCH: the transfer encoding undone as it streams.
    decode: Option<mime::decode::Decoder>,
    /// The folder's rewrite count when the length was computed: a rewrite
    /// moves the bytes under us.
    generation: (u64, Rc<std::cell::Cell<u64>>),
}

impl Body {
    fn bytes(b: Vec<u8>) -> Body {
        Body {
            left: b.len() as u64,
            bytes: Some(b),
            file: None,
            at: 0,
            end: 0,
            message_end: false,
            skip: 0,
            wire: WireWriter::new(),
            hide: None,
            decode: None,
            generation: (0, Rc::new(std::cell::Cell::new(0))),
        }
    }

    /// The wire form of range `r` of message `m`, from wire octet `skip`
    /// on, `len` octets.
    fn range(
        file: Rc<File>,
        m: &Message,
        r: mime::Range,
        skip: u64,
        len: u64,
        generation: Rc<std::cell::Cell<u64>>,
    ) -> Body {
        Body {
            bytes: None,
            file: Some(file),
            at: m.start + r.start.stored,
            end: (m.start + r.end.stored).min(m.end),
            message_end: m.start + r.end.stored >= m.end,
            skip,
            left: len,
            wire: WireWriter::new(),
            hide: (r.start.stored == 0).then(HideFilter::new),
            decode: None,
            generation: (generation.get(), generation),
        }
    }

    /// The same octets with `enc` undone.
    fn decoded(mut self, enc: mime::decode::Encoding) -> Body {
        self.decode = Some(mime::decode::Decoder::new(enc));
        self
    }

    /// Octets the range gives (for a decoded one, by decoding it all;
    /// held a piece at a time).
    fn count(mut self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        let mut piece = Vec::new();
        while self.at < self.end {
            piece.clear();
            self.fill(&mut piece)?;
            n += piece.len() as u64;
        }
        Ok(n)
    }

    /// Whether `needle` is in the octets (case-insensitive, as SEARCH),
    /// looked for piece by piece with a needle-long overlap; stops at the
    /// first match.
    fn contains(mut self, needle: &Needle) -> Result<bool, StoreError> {
        let keep = needle.len().saturating_sub(1);
        // Sized for the range (most are a few KiB: a header, a text part),
        // not for the largest piece.
        let span = (self.end.saturating_sub(self.at) as usize).min(CHUNK);
        let mut window = Vec::with_capacity(span + span / 8 + 2 + needle.len());
        loop {
            let more = self.at < self.end && self.left > 0;
            if !more {
                return Ok(needle.found_in(&window));
            }
            self.fill(&mut window)?;
            if needle.found_in(&window) {
                return Ok(true);
            }
            // Keep the tail a match may start in.
            let cut = window.len().saturating_sub(keep);
            window.drain(..cut);
        }
    }

    /// Octets still to come.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Appends the next piece (at most about 2 × [`CHUNK`] octets) to
    /// `out`; `Ok(true)` once the literal is complete. An error means the
    /// literal cannot be completed (the folder was rewritten while being
    /// read, or a read failed): the connection must be closed, since the
    /// client expects exactly the announced number of octets.
    pub fn fill(&mut self, out: &mut Vec<u8>) -> Result<bool, StoreError> {
        if self.left == 0 {
            return Ok(true);
        }
        if let Some(b) = self.bytes.take() {
            out.extend_from_slice(&b);
            self.left = 0;
            return Ok(true);
        }
        let Some(file) = &self.file else {
            return Ok(true);
        };
        if self.generation.0 != self.generation.1.get() {
            return Err(StoreError::Unavailable(
                "the folder was rewritten while a message was being sent".into(),
            ));
        }
        if self.at >= self.end {
            // The file ended before the announced length (changed by
            // another program): nothing sensible to send.
            return Err(StoreError::Unavailable(
                "the message is shorter than its index says".into(),
            ));
        }
        let n = ((self.end - self.at) as usize).min(CHUNK);
        // The thread's read buffer, used for every piece; the wire form
        // goes straight into `out` when nothing is cut from its
        // start or decoded (a whole BODY[]: the common case), so a piece
        // is copied once between the page cache and the socket's buffer.
        // (Three fresh 64 KiB buffers per piece had glibc growing and
        // trimming its heap: a fifth of BODY[]'s time in page faults.)
        let mut buf = READ_BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        // Zeroed once per thread, not per message: only a longer piece
        // than any before grows it.
        if buf.len() < n {
            buf.resize(n, 0);
        }
        let res = file.read_exact_at(&mut buf[..n], self.at);
        if let Err(e) = res {
            READ_BUF.with(|b| *b.borrow_mut() = buf);
            return Err(io("cannot read folder", e));
        }
        self.at += n as u64;
        let last = self.at >= self.end;
        let direct = self.decode.is_none() && self.skip == 0;
        let mut piece = Vec::new();
        let target: &mut Vec<u8> = if direct {
            &mut *out
        } else {
            piece.reserve(n + n / 8 + 2);
            &mut piece
        };
        let start = target.len();
        match &mut self.hide {
            Some(h) if !h.done() => {
                let mut shown = Vec::with_capacity(n);
                h.feed(&buf[..n], &mut shown);
                if last {
                    h.finish(&mut shown);
                }
                self.wire.write(&shown, target);
            }
            // Past the header the filter passes all: no copy through it.
            _ => self.wire.write(&buf[..n], target),
        }
        if last {
            if self.message_end {
                self.wire.end_message(target);
            } else {
                self.wire.finish(target);
            }
        }
        READ_BUF.with(|b| *b.borrow_mut() = buf);
        if direct {
            // A file changed under us may give more than announced.
            let made = (out.len() - start) as u64;
            if made > self.left {
                out.truncate(start + self.left as usize);
            }
            self.left -= made.min(self.left);
            return Ok(self.left == 0);
        }
        if let Some(d) = &mut self.decode {
            let mut plain = Vec::with_capacity(piece.len());
            d.feed(&piece, &mut plain);
            if last {
                d.finish(&mut plain);
            }
            piece = plain;
        }
        let drop = (self.skip.min(piece.len() as u64)) as usize;
        self.skip -= drop as u64;
        let take = ((piece.len() - drop) as u64).min(self.left) as usize;
        out.extend_from_slice(&piece[drop..drop + take]);
        self.left -= take as u64;
        Ok(self.left == 0)
    }
}

thread_local! {
    /// [`Body`]'s read buffer, taken for a piece and given back (the
    /// store has one thread).
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The whole message as a range (BODY[]): from its first stored octet,
/// after a first-line seal, to its end; on the wire, RFC822.SIZE octets.
fn whole_message(e: &Entry) -> mime::Range {
    mime::Range {
        start: mime::Pos { stored: 0, wire: 0 },
        end: mime::Pos {
            stored: e.msg.end - e.body_start,
            wire: e.size,
        },
    }
}

/// Whether `needle` is in the stored octets of range `r` of message `m`,
/// read from the file in [`CHUNK`] pieces into `buf` (a needle-long tail
/// kept between them); stops at the first match, and with an error if the
/// folder is rewritten meanwhile (`generation` moves).
fn stored_has(
    file: &File,
    m: &Message,
    r: mime::Range,
    needle: &Needle,
    buf: &mut Vec<u8>,
    generation: &Rc<std::cell::Cell<u64>>,
) -> Result<bool, StoreError> {
    let keep = needle.len().saturating_sub(1);
    let (mut at, end) = (
        m.start + r.start.stored,
        (m.start + r.end.stored).min(m.end),
    );
    let first = generation.get();
    // Zeroed once, only as large as the range needs (most are a few KiB),
    // and reused for the next piece and range.
    let need = ((end.saturating_sub(at)) as usize).min(CHUNK) + keep;
    if buf.len() < need {
        // (vec! zeroes with calloc/memset: `resize` is a slow loop at
        // opt-level "z".)
        *buf = vec![0; need];
    }
    let mut held = 0;
    while at < end {
        if generation.get() != first {
            return Err(StoreError::Unavailable(
                "the folder was rewritten while it was being searched".into(),
            ));
        }
        let n = ((end - at) as usize).min(CHUNK);
        file.read_exact_at(&mut buf[held..held + n], at)
            .map_err(|e| io("cannot read folder", e))?;
        at += n as u64;
        let len = held + n;
        if needle.found_in(&buf[..len]) {
            return Ok(true);
        }
        // Keep the tail a match may start in.
        held = len.min(keep);
        buf.copy_within(len - held..len, 0);
    }
    Ok(false)
}

fn header_filter(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            let listed = names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name));
            keep = listed != not && line.contains(&b':');
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

impl Folder for StoreFolder {
    /// Streamed from the file in bounded chunks (see [`Body`]).
    type Body = Body;

    fn summary(&self) -> Summary {
        self.state.borrow().summary()
    }

    fn uids(&self) -> Vec<Uid> {
        self.state.borrow().entries.iter().map(|e| e.uid).collect()
    }

    /// Without a copy of each message's flags (SELECT after a restart on
    /// 20,000 messages, all seen, made 20,000 of them).
    fn first_unseen(&self, uids: &[Uid]) -> Option<usize> {
        let st = self.state.borrow();
        // Entries ascend by UID as `uids` does: the first unseen entry
        // that is in `uids` (all of them at SELECT).
        st.entries
            .iter()
            .filter(|e| !has(&e.flags, "\\Seen"))
            .find_map(|e| uids.binary_search(&e.uid).ok())
    }

    fn meta_into(&self, uid: Uid, into: &mut Meta) -> bool {
        let st = self.state.borrow();
        let Some(i) = self.find(&st, uid) else {
            return false;
        };
        let e = &st.entries[i];
        into.uid = uid;
        into.flags.clone_from(&e.flags);
        into.internal_date = DateTime {
            unix: e.date,
            zone_minutes: 0,
        };
        into.size = e.size;
        into.modseq = e.modseq;
        into.sent = None;
        true
    }

    fn meta(&self, uid: Uid) -> Option<Meta> {
        let st = self.state.borrow();
        let e = &st.entries[self.find(&st, uid)?];
        Some(Meta {
            uid,
            flags: e.flags.clone(),
            internal_date: DateTime {
                unix: e.date,
                zone_minutes: 0,
            },
            size: e.size,
            modseq: e.modseq,
            sent: None,
        })
    }

    fn sent(&self, uid: Uid) -> Option<i64> {
        let (s, _, _) = self.structure(uid).ok()?;
        let d = super::command::Date::from_rfc5322(s.envelope.date.as_deref()?)?;
        Some(d.days() * 86400)
    }

    fn envelope(&self, uid: Uid, out: &mut Vec<u8>) -> Result<(), StoreError> {
        // Copied from the index record (docs/imap.md "MIME structure").
        self.write_text(uid, Rendered::Envelope, out)
    }

    fn body_structure(
        &self,
        uid: Uid,
        extended: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let which = if extended {
            Rendered::BodyStructure
        } else {
            Rendered::Body
        };
        self.write_text(uid, which, out)
    }

    fn section(
        &self,
        uid: Uid,
        section: &Section,
        binary: bool,
        partial: Option<(u32, u32)>,
    ) -> Result<(u64, Body), StoreError> {
        let path = &section.part[..];
        let cut = |len: u64| match partial {
            Some((start, n)) => {
                let start = u64::from(start).min(len);
                (start, u64::from(n).min(len - start))
            }
            None => (0, len),
        };
        if path.is_empty() && matches!(section.text, SectionText::All) && !binary {
            // BODY[] (what a client downloading mail asks for each
            // message): the range and its wire length are in the entry,
            // no record is read or decoded.
            let st = self.state.borrow();
            let i = self.find(&st, uid).ok_or(StoreError::NonExistent)?;
            let e = &st.entries[i];
            if e.mime.is_some() {
                let r = whole_message(e);
                let mut m = e.msg.clone();
                m.start = e.body_start;
                let file = st.reader()?;
                let (skip, len) = cut(r.wire_len());
                let generation = st.generation.clone();
                return Ok((len, Body::range(file, &m, r, skip, len, generation)));
            }
        }
        let (s, file, m) = self.structure(uid)?;
        let spec = match &section.text {
            SectionText::All => Spec::Body,
            SectionText::Header
            | SectionText::HeaderFields(_)
            | SectionText::HeaderFieldsNot(_) => Spec::Header,
            SectionText::Text => Spec::Text,
            SectionText::Mime => Spec::Mime,
        };
        let Some(r) = s.section(path, spec) else {
            return Ok((0, Body::bytes(Vec::new())));
        };
        let names = match &section.text {
            SectionText::HeaderFields(n) => Some((n, false)),
            SectionText::HeaderFieldsNot(n) => Some((n, true)),
            _ => None,
        };
        if let Some((names, not)) = names {
            // A header is small (the parser sees at most MAX_HEADER of
            // it, and so does HEADER.FIELDS): filtered in memory.
            let r = mime::Range {
                start: r.start,
                end: mime::Pos {
                    stored: r.end.stored.min(r.start.stored + mime::MAX_HEADER as u64),
                    wire: r.end.wire,
                },
            };
            let mut head = Vec::new();
            Self::wire(&file, &m, r, &mut head)?;
            let bytes = header_filter(&head, names, not);
            let (start, len) = cut(bytes.len() as u64);
            let bytes = bytes[start as usize..(start + len) as usize].to_vec();
            return Ok((len, Body::bytes(bytes)));
        }
        // Everything else is streamed from the file: the literal's length
        // comes from the structure (the wire positions), not from reading.
        let generation = self.state.borrow().generation.clone();
        // BINARY: the content with its transfer encoding undone (RFC
        // 3516 4.2), for a part that is not a multipart or a message. Its
        // length is only known by decoding: a first pass counts (bounded
        // memory), the second sends.
        let enc = s
            .part(path)
            .filter(|p| binary && !path.is_empty() && matches!(p.kind, mime::Kind::Single))
            .map(|p| mime::decode::Encoding::of(p.encoding.as_deref()))
            .filter(|e| {
                matches!(
                    e,
                    mime::decode::Encoding::Base64 | mime::decode::Encoding::QuotedPrintable
                )
            });
        if let Some(enc) = enc {
            let f = file.try_clone().map_err(|e| io("cannot open folder", e))?;
            let total = Body::range(Rc::new(f), &m, r, 0, u64::MAX, Rc::default())
                .decoded(enc)
                .count()?;
            let (skip, len) = cut(total);
            let body = Body::range(Rc::new(file), &m, r, skip, len, generation).decoded(enc);
            return Ok((len, body));
        }
        let (skip, len) = cut(r.wire_len());
        Ok((
            len,
            Body::range(Rc::new(file), &m, r, skip, len, generation),
        ))
    }

    fn matches(
        &self,
        uid: Uid,
        field: Option<TextField>,
        header: Option<&str>,
        needle: &[u8],
    ) -> Result<bool, StoreError> {
        let (s, file, m) = self.structure(uid)?;
        if let Some(f @ (TextField::Body | TextField::Text)) = field.filter(|_| header.is_none()) {
            // The text is searched as it streams (never held whole), the
            // stretches docs/imap.md names: as stored, less attachments'
            // content, then text parts in base64 or quoted-printable
            // decoded (RFC 9051 6.4.4 searches the text, as Dovecot does).
            let needle = Needle::new(needle);
            if needle.is_empty() {
                // In every message, even one with no text to read.
                return Ok(true);
            }
            let generation = self.state.borrow().generation.clone();
            let mut buf = Vec::new();
            for span in textsearch::spans(&s, f == TextField::Text) {
                // Past the header (no hidden fields), as stored when that
                // gives the same answer: no wire form made.
                let hit = if span.decode.is_none()
                    && span.range.start.stored > 0
                    && needle.same_in_stored()
                {
                    stored_has(&file, &m, span.range, &needle, &mut buf, &generation)?
                } else {
                    let f = file.try_clone().map_err(|e| io("cannot open folder", e))?;
                    let b =
                        Body::range(Rc::new(f), &m, span.range, 0, u64::MAX, generation.clone());
                    match span.decode {
                        Some(enc) => b.decoded(enc).contains(&needle)?,
                        None => b.contains(&needle)?,
                    }
                };
                if hit {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        let mut head = Vec::new();
        if let Some(r) = s.section(&[], Spec::Header) {
            // As for HEADER.FIELDS: at most MAX_HEADER of the header.
            let r = mime::Range {
                start: r.start,
                end: mime::Pos {
                    stored: r.end.stored.min(r.start.stored + mime::MAX_HEADER as u64),
                    wire: r.end.wire,
                },
            };
            Self::wire(&file, &m, r, &mut head)?;
        }
        let value = |name: &str| header_filter(&head, &[name.to_string()], false);
        // A header field matches as written or with its encoded words
        // (RFC 2047) decoded: SEARCH CHARSET UTF-8 SUBJECT "Grüße" finds
        // `=?utf-8?q?Gr=C3=BC=C3=9Fe?=` (RFC 9051 6.4.4).
        // The value after `Name:`, so that SUBJECT "subject" does not
        // find every message.
        let field_value = |v: &[u8]| -> Vec<u8> {
            let at = v.iter().position(|&b| b == b':').map_or(v.len(), |i| i + 1);
            v[at..].to_vec()
        };
        let field_has = |v: Vec<u8>| {
            contains_ci(&v, needle) || contains_ci(mime::header::decode_2047(&v).as_bytes(), needle)
        };
        Ok(match (field, header) {
            (_, Some(h)) => {
                let v = value(h);
                v.len() > 2 && field_has(v[h.len().min(v.len())..].to_vec())
            }
            // Searched above.
            (Some(TextField::Body | TextField::Text), _) => false,
            (Some(TextField::From), _) => field_has(field_value(&value("From"))),
            (Some(TextField::To), _) => field_has(field_value(&value("To"))),
            (Some(TextField::Cc), _) => field_has(field_value(&value("Cc"))),
            (Some(TextField::Bcc), _) => field_has(field_value(&value("Bcc"))),
            (Some(TextField::Subject), _) => field_has(field_value(&value("Subject"))),
            (None, None) => false,
        })
    }

    fn store(
        &mut self,
        uid: Uid,
        mode: StoreMode,
        flags: &[Flag],
        unchanged_since: Option<u64>,
    ) -> Stored {
        let mut st = self.state.borrow_mut();
        let Some(i) = st.pos(uid) else {
            return Stored::Gone;
        };
        if unchanged_since.is_some_and(|u| st.entries[i].modseq > u) {
            return Stored::Modified;
        }
        let old = st.entries[i].flags.clone();
        let new: Vec<Flag> = match mode {
            StoreMode::Replace => flags.to_vec(),
            StoreMode::Add => {
                let mut n = old.clone();
                for x in flags {
                    if !has(&n, x) {
                        n.push(x.clone());
                    }
                }
                n
            }
            StoreMode::Remove => old.iter().filter(|o| !has(flags, o)).cloned().collect(),
        };
        let new: Vec<Flag> = new
            .into_iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent") && !f.contains(' '))
            .collect();
        if has(&new, "$NotJunk") && !has(&old, "$NotJunk") {
            // The user says this is not junk (RFC 5788 `$NotJunk`): the
            // header rules leave its sender alone from now on.
            record_not_junk(&self.data_dir, &st.path, &st.entries[i], "imap-store");
        }
        if new != old {
            st.modseq += 1;
            let ms = st.modseq;
            let e = &mut st.entries[i];
            e.flags = new;
            e.modseq = ms;
            let h = self.handle;
            st.log.push((h, Change::Flags(uid)));
            st.save();
        }
        let e = &st.entries[i];
        Stored::Done(Meta {
            uid,
            flags: e.flags.clone(),
            internal_date: DateTime {
                unix: e.date,
                zone_minutes: 0,
            },
            size: e.size,
            modseq: e.modseq,
            sent: None,
        })
    }

    fn poll(&mut self) -> Vec<Change> {
        let mut st = self.state.borrow_mut();
        if let Err(e) = st.refresh() {
            log::warn!("imap: cannot read {}: {e:?}", st.path.display());
        }
        if st.db.take_moved() {
            // Records re-made by the last command (see `write_text`).
            st.save();
        }
        let end = st.log_end();
        let at = st.readers.get(&self.handle).copied().unwrap_or(end);
        let from = at.saturating_sub(st.log_base).min(st.log.len());
        let out = st.log[from..]
            .iter()
            .filter(|(h, _)| *h != self.handle)
            .map(|(_, c)| c.clone())
            .collect();
        st.readers.insert(self.handle, end);
        st.trim_log();
        out
    }
}

/// The most of a message's header read for the not-junk list.
const MAX_HEADER: u64 = 64 * 1024;

/// Adds what identifies a stored message's sender to the not-junk list
/// (`trust::known`, docs/spam.md): its From address and Message-ID.
pub fn record_not_junk(data_dir: &Path, path: &Path, e: &Entry, why: &str) {
    let end = e.msg.end.min(e.body_start + MAX_HEADER);
    let mut head = vec![0u8; end.saturating_sub(e.body_start) as usize];
    let read = File::open(path).and_then(|f| f.read_exact_at(&mut head, e.body_start));
    if let Err(err) = read {
        log::warn!(
            "imap: cannot read {} to record a not-junk sender: {err}",
            path.display()
        );
        return;
    }
    let entries = crate::trust::rules::not_junk_entries(&head);
    crate::trust::known::record_not_junk(data_dir, &entries, why);
}

/// Copies the stored content of a message (without its seal) to `spool`,
/// for COPY/MOVE through the folder's writer. Returns its `From ` line.
pub fn copy_to_spool(path: &Path, m: &Message, spool: &Path) -> Result<Vec<u8>, StoreError> {
    let file = File::open(path).map_err(|e| io("cannot open folder", e))?;
    let mut from = vec![0u8; (m.start - m.offset) as usize];
    file.read_exact_at(&mut from, m.offset)
        .map_err(|e| io("cannot read folder", e))?;
    let mut out = File::create(spool).map_err(|e| io("cannot create spool", e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = m.start;
    let mut first = true;
    while at < m.end {
        let n = ((m.end - at) as usize).min(CHUNK);
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| io("cannot read folder", e))?;
        let mut chunk = &buf[..n];
        if first {
            first = false;
            // Drop our seal among the first two header lines.
            let mut keep = Vec::new();
            let mut rest = chunk;
            for _ in 0..2 {
                let Some(nl) = memchr::memchr(b'\n', rest) else {
                    break;
                };
                let line = &rest[..=nl];
                if Seal::parse(line).is_none() {
                    keep.extend_from_slice(line);
                }
                rest = &rest[nl + 1..];
            }
            out.write_all(&keep)
                .map_err(|e| io("cannot write spool", e))?;
            chunk = rest;
        }
        out.write_all(chunk)
            .map_err(|e| io("cannot write spool", e))?;
        at += n as u64;
    }
    out.sync_data().map_err(|e| io("cannot write spool", e))?;
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The change log keeps only what an open handle has not read: a
    /// server up for months with flags changing all day holds no more.
    #[test]
    fn the_change_log_is_trimmed_to_what_open_handles_have_not_read() {
        let dir = std::env::temp_dir().join(format!("pimail-store-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("folders")).unwrap();
        let inbox = dir.join("inbox.mbox");
        let mut mbox = Vec::new();
        for i in 0..50 {
            mbox.extend_from_slice(
                format!("From a@b Sat Jan  3 01:05:34 2026\nSubject: {i}\n\nx\n\n").as_bytes(),
            );
        }
        std::fs::write(&inbox, &mbox).unwrap();
        let store = Store::new(&inbox, &dir.join("folders"), &dir.join("data")).unwrap();
        let mut acct = StoreAccount(store);
        let mut a = acct.open("INBOX").unwrap();
        let mut b = acct.open("INBOX").unwrap();
        // The first index's 50 additions were read by nobody: gone.
        assert_eq!(a.state.borrow().log.len(), 0);
        let seen = ["\\Seen".to_string()];
        for round in 0..100 {
            let mode = if round % 2 == 0 {
                StoreMode::Add
            } else {
                StoreMode::Remove
            };
            for uid in 1..=50 {
                assert!(matches!(a.store(uid, mode, &seen, None), Stored::Done(_)));
            }
            // b reads every other round: it sees a's changes...
            if round % 2 == 1 {
                assert_eq!(b.poll().len(), 100, "round {round}");
            }
            assert!(a.poll().is_empty());
            // ...and the log holds at most what b has not read yet.
            assert!(a.state.borrow().log.len() <= 100, "round {round}");
        }
        // The last handle closed: nothing is kept.
        drop(b);
        a.poll();
        assert_eq!(a.state.borrow().log.len(), 0);
        drop(a);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `n` messages of every kind the scan tells apart: seals on the
    /// first or second line, hidden `Status:` fields, foreign mail, long
    /// `From ` lines, an open last line.
    fn varied_mbox(n: u64) -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..n {
            let from = if i % 9 == 4 {
                format!("From {} Mon Jun  2 10:00:{:02} 2025\n", "x".repeat(3000), i)
            } else {
                format!("From a@example.com Mon Jun  2 10:00:{:02} 2025\n", i)
            };
            data.extend_from_slice(from.as_bytes());
            let seal = Seal {
                id: format!("0000ABCD{i:08X}"),
                uid: i + 1,
                len: 0,
                sum: 0,
            };
            match i % 4 {
                0 => data.extend_from_slice(seal.line().as_bytes()),
                1 => {
                    data.extend_from_slice(b"Return-Path: <a@example.com>\n");
                    data.extend_from_slice(seal.line().as_bytes());
                }
                2 if i % 8 == 6 => {
                    data.extend_from_slice(b"Status: RO\r\nX-Status: A\r\n\tcontinued\n")
                }
                2 => data.extend_from_slice(b"Status: RO\nX-Status: A\n"),
                _ => {}
            }
            data.extend_from_slice(&crate::store::mime::tests::bench_like(i));
            if i != n - 1 {
                data.extend_from_slice(b"\n");
                if !data.ends_with(b"\n\n") {
                    data.extend_from_slice(b"\n");
                }
            }
        }
        data
    }

    /// A fresh directory with an INBOX of `n` [`varied_mbox`] messages.
    fn varied_folder(name: &str, n: u64) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pimail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mbox = dir.join("INBOX");
        std::fs::write(&mbox, varied_mbox(n)).unwrap();
        (dir, mbox)
    }

    /// A first scan split into parts (one per core) finds the messages,
    /// heads, sizes and MIME records one scan of the whole file finds,
    /// wherever the parts' nominal starts fall: in a long `From ` line, a
    /// header, a body.
    #[test]
    fn a_split_scan_is_the_whole_scan() {
        let (dir, mbox) = varied_folder("split", 60);
        let file = File::open(&mbox).unwrap();
        let len = file.metadata().unwrap().len();
        let scan = |parts: usize| {
            let _ = std::fs::remove_file(dir.join("INBOX.mime"));
            let mut db = MimeDb::open(dir.join("INBOX.mime"));
            let (all, pre) = index_all(&file, len, &mut db, parts).unwrap();
            let view: Vec<_> = pre
                .iter()
                .zip(&all)
                .map(|(p, m)| {
                    let rec = p.ptr.and_then(|r| db.get(r, &m.uid));
                    let wire = p.ptr.map(|r| r.wire);
                    (
                        p.seal.clone(),
                        p.date,
                        p.skip,
                        p.wire,
                        p.flags.clone(),
                        rec,
                        wire,
                    )
                })
                .collect();
            (all, view)
        };
        let whole = scan(1);
        assert_eq!(whole.0.len(), 60);
        // The sizes the parse counted are the plain scan's (POP3's).
        let d: &dyn crate::store::disk::Disk = &file;
        assert_eq!(whole.0, maildrop::scan_with(d, 0, len, 4096).unwrap());
        assert!(whole.1.iter().all(|v| v.5.is_some()));
        for parts in [2, 3, 7, 13, 59] {
            assert_eq!(scan(parts), whole, "{parts} parts");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The one-pass first scan gives every message the head, size and
    /// MIME record the per-message reads ([`read_head`], [`parse_record`])
    /// give: for seals on the first or second line, hidden `Status:`
    /// fields, foreign mail, long `From ` lines, an open last line.
    #[test]
    fn one_pass_scan_gives_what_the_per_message_reads_give() {
        let (dir, mbox) = varied_folder("onepass", 40);
        let mut st = FolderState::load(mbox.clone(), dir.join("INBOX.index"), None);
        st.refresh().unwrap();
        assert_eq!(st.entries.len(), 40);
        let file = File::open(&mbox).unwrap();
        for e in &st.entries {
            let (seal, date, skip) = read_head(&file, &e.msg);
            assert_eq!(e.seal_id, seal.map(|s| s.id), "at {}", e.msg.offset);
            assert_eq!(e.date, date);
            assert_eq!(e.body_start, e.msg.start + skip);
            let (rec, wire) = parse_record(&file, e.body_start, e.msg.end).unwrap();
            let p = e.mime.expect("a record");
            assert_eq!(
                st.db.get(p, &e.msg.uid).unwrap(),
                mimedb::index_part(&rec).unwrap(),
                "at {}",
                e.msg.offset
            );
            assert_eq!((e.size, p.wire), (wire, wire));
            // What BODY[]'s short way takes for the whole message
            // ([`whole_message`]) is the record's own range.
            let s = crate::store::mime::index::decode(mimedb::index_part(&rec).unwrap()).unwrap();
            assert_eq!(
                s.section(&[], mime::Spec::Body),
                Some(whole_message(e)),
                "at {}",
                e.msg.offset
            );
        }
        assert!(st.entries.iter().any(|e| e.seal_id.is_some()));
        assert!(st.entries.iter().any(|e| e.date > 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use crate::store::mime::{imap, index};

    /// ENVELOPE, BODYSTRUCTURE and BODY of every message, as FETCH sends
    /// them.
    fn texts(f: &StoreFolder) -> Vec<Vec<u8>> {
        f.uids()
            .into_iter()
            .map(|u| {
                let mut t = Vec::new();
                f.envelope(u, &mut t).unwrap();
                t.push(b'|');
                f.body_structure(u, true, &mut t).unwrap();
                t.push(b'|');
                f.body_structure(u, false, &mut t).unwrap();
                t
            })
            .collect()
    }

    /// Whether every message's record holds its texts.
    fn all_rendered(f: &StoreFolder) -> bool {
        let st = f.state.borrow();
        st.entries.iter().all(|e| {
            let mut v = Vec::new();
            e.mime.is_some_and(|p| {
                st.db
                    .write_rendered(p, &e.msg.uid, Rendered::Envelope, &mut v)
                    .is_ok()
            })
        })
    }

    /// The texts kept in the `.mime` records are a fresh rendering of
    /// the structure; a record written before the texts were kept (an
    /// upgrade) is re-made, not misread, and the sidecar then points to
    /// the new one; a torn record is parsed again from the message.
    #[test]
    fn old_and_torn_mime_records_are_remade_not_misread() {
        let dir = std::env::temp_dir().join(format!("pimail-store-mime-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("folders")).unwrap();
        let inbox = dir.join("inbox.mbox");
        let mut mbox = Vec::new();
        for (_, msg) in crate::store::mime::tests::SAMPLES.iter().take(6) {
            mbox.extend_from_slice(b"From a@example.com Sat Jan  3 01:05:34 2026\n");
            mbox.extend_from_slice(msg);
            mbox.extend_from_slice(b"\n");
        }
        std::fs::write(&inbox, &mbox).unwrap();
        let open = || {
            let store = Store::new(&inbox, &dir.join("folders"), &dir.join("data")).unwrap();
            StoreAccount(store).open("INBOX").unwrap()
        };
        let f = open();
        let want = texts(&f);
        assert_eq!(want.len(), 6);
        assert!(all_rendered(&f));
        {
            // What the records keep is what rendering their structure
            // gives (what FETCH sent before the texts were kept).
            let st = f.state.borrow();
            for (e, w) in st.entries.iter().zip(&want) {
                let rec = st.db.get(e.mime.unwrap(), &e.msg.uid).unwrap();
                let s = index::decode(&rec).unwrap();
                let mut t = Vec::new();
                imap::envelope(&s.envelope, &mut t);
                t.push(b'|');
                imap::body(&s.root, true, &mut t);
                t.push(b'|');
                imap::body(&s.root, false, &mut t);
                assert_eq!(String::from_utf8_lossy(&t), String::from_utf8_lossy(w));
            }
        }
        // The records as an older pimail wrote them, and the sidecar
        // pointing to them.
        {
            let mut st = f.state.borrow_mut();
            for i in 0..st.entries.len() {
                let p = st.entries[i].mime.unwrap();
                let uidl = st.entries[i].msg.uid.clone();
                let rec = st.db.get(p, &uidl).unwrap();
                st.entries[i].mime = st.db.put(&uidl, &rec, p.wire);
            }
            st.save();
        }
        drop(f);
        let mut f = open();
        assert!(!all_rendered(&f));
        assert_eq!(texts(&f), want, "old records misread");
        assert!(all_rendered(&f));
        f.poll();
        drop(f);
        // The sidecar written at the poll points to the new records.
        let f = open();
        assert!(all_rendered(&f));
        let mime = dir.join("data").join("imap").join("INBOX.mime");
        let len = std::fs::metadata(&mime).unwrap().len();
        assert_eq!(texts(&f), want);
        assert_eq!(
            std::fs::metadata(&mime).unwrap().len(),
            len,
            "re-made again"
        );
        // A record torn by a crash (zeros in its texts): parsed again.
        let (p, ul) = {
            let st = f.state.borrow();
            (
                st.entries[2].mime.unwrap(),
                st.entries[2].msg.uid.len() as u64,
            )
        };
        drop(f);
        let file = std::fs::OpenOptions::new().write(true).open(&mime).unwrap();
        file.write_all_at(
            &[0; 8],
            p.at + 5 + ul + super::super::mimedb::HEAD as u64 + 2,
        )
        .unwrap();
        let f = open();
        assert!(!all_rendered(&f));
        assert_eq!(texts(&f), want, "a torn record misread");
        assert!(all_rendered(&f));
        // Not a record at all under a good frame: parsed again from the
        // message.
        {
            let mut st = f.state.borrow_mut();
            let uidl = st.entries[4].msg.uid.clone();
            st.entries[4].mime = st.db.put(&uidl, b"\x01\x07garbage", 9);
        }
        assert!(!all_rendered(&f));
        assert_eq!(texts(&f), want, "a bad record misread");
        assert!(all_rendered(&f));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
