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

/// One message as IMAP knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub msg: Message,
    pub uid: Uid,
    pub flags: Vec<Flag>,
    pub modseq: u64,
    pub date: i64,
    /// The seal's id, when pimail wrote it.
    pub seal_id: Option<String>,
    /// Where the message starts for IMAP: after a seal that is its first
    /// line (pimail's trace field is not the client's business, and an
    /// APPENDed message must come back as it was sent).
    pub body_start: u64,
    /// RFC822.SIZE (the wire size from `body_start`).
    pub size: u64,
    structure: Option<Rc<Structure>>,
}

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
    /// UIDL -> (uid, modseq, flags) remembered from the sidecar for
    /// messages not yet seen in this run.
    known: HashMap<String, (Uid, u64, Vec<Flag>)>,
    /// Changes in order, with the handle that made them (0: others).
    log: Vec<(u64, Change)>,
}

fn io(context: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{context}: {e}"))
}

impl FolderState {
    fn load(path: PathBuf, index: PathBuf) -> Self {
        let mut st = FolderState {
            path,
            index,
            uid_validity: 0,
            uid_next: 1,
            modseq: 1,
            entries: Vec::new(),
            ino: 0,
            len: 0,
            known: HashMap::new(),
            log: Vec::new(),
        };
        if let Ok(text) = std::fs::read_to_string(&st.index) {
            let mut lines = text.lines();
            if let Some(head) = lines.next() {
                let w: Vec<&str> = head.split(' ').collect();
                if let ["v1", v, n, m] = w[..] {
                    st.uid_validity = v.parse().unwrap_or(0);
                    st.uid_next = n.parse().unwrap_or(1);
                    st.modseq = m.parse().unwrap_or(1);
                }
            }
            for line in lines {
                let mut w = line.split(' ');
                let (Some(uidl), Some(uid), Some(ms)) = (w.next(), w.next(), w.next()) else {
                    continue;
                };
                let (Ok(uid), Ok(ms)) = (uid.parse(), ms.parse()) else {
                    continue;
                };
                let flags = w.filter(|f| !f.is_empty()).map(String::from).collect();
                st.known.insert(uidl.to_string(), (uid, ms, flags));
            }
        }
        if st.uid_validity == 0 {
            // Seconds since the epoch: a new value after a lost sidecar.
            st.uid_validity = (crate::util::timefmt::unix_now() as u32).max(1);
            st.known.clear();
        }
        st
    }

    /// Writes the sidecar (a cache: no fsync; a torn one is rebuilt).
    pub fn save(&self) {
        let mut out = format!(
            "v1 {} {} {}\n",
            self.uid_validity, self.uid_next, self.modseq
        );
        for e in &self.entries {
            out += &format!("{} {} {}", e.msg.uid, e.uid, e.modseq);
            for f in &e.flags {
                out.push(' ');
                out += f;
            }
            out.push('\n');
        }
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
        let meta = file.metadata().map_err(|e| io("cannot stat folder", e))?;
        if meta.is_dir() {
            return Err(StoreError::NoSelect);
        }
        let (ino, len) = (meta.ino(), meta.len());
        if ino == self.ino && len == self.len {
            return Ok(());
        }
        let d: &dyn crate::store::disk::Disk = &file;
        let all = maildrop::scan_with(d, 0, len, CHUNK).map_err(|e| io("cannot read folder", e))?;
        let mut old: HashMap<String, Entry> = self
            .entries
            .drain(..)
            .map(|e| (e.msg.uid.clone(), e))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut dirty = false;
        for m in all {
            if !seen.insert(m.uid.clone()) {
                continue; // scan_with does not dedupe; keep the first
            }
            if let Some(mut e) = old.remove(&m.uid) {
                if e.msg.offset != m.offset {
                    e.structure = None;
                }
                e.body_start = e.body_start - e.msg.start + m.start;
                e.msg = m;
                self.entries.push(e);
                continue;
            }
            let (seal, date, skip) = read_head(&file, &m);
            let (uid, modseq, flags) = match self.known.remove(&m.uid) {
                Some((u, ms, f)) if u < self.uid_next => (u, ms, f),
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
                    (uid, self.modseq, Vec::new())
                }
            };
            // UIDs ascend in file order (RFC 9051 2.3.1.1).
            if self.entries.last().is_some_and(|l| l.uid >= uid) {
                let uid = self.uid_next;
                self.uid_next += 1;
                self.push_new(m, uid, modseq, flags, seal, date, skip);
            } else {
                self.push_new(m, uid, modseq, flags, seal, date, skip);
            }
            let u = self.entries.last().map_or(0, |e| e.uid);
            self.log.push((0, Change::Added(u)));
            dirty = true;
        }
        let mut gone: Vec<Uid> = old.values().map(|e| e.uid).collect();
        gone.sort_unstable();
        for u in gone {
            self.log.push((0, Change::Expunged(u)));
            dirty = true;
        }
        self.ino = ino;
        self.len = len;
        if dirty {
            self.save();
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
            structure: None,
        });
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

    /// The maildrop view for a rewrite: messages and the file's stamp.
    pub fn expunge_plan(&self, uids: &[Uid]) -> Result<maildrop::Expunge, StoreError> {
        let file = File::open(&self.path).map_err(|e| io("cannot open folder", e))?;
        let stamp = maildrop::stamp(&file, self.len).map_err(|e| io("cannot read folder", e))?;
        Ok(maildrop::Expunge {
            messages: self.entries.iter().map(|e| e.msg.clone()).collect(),
            deleted: self.entries.iter().map(|e| uids.contains(&e.uid)).collect(),
            stamp,
        })
    }
}

fn has(flags: &[Flag], f: &str) -> bool {
    flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}

/// The seal (first two header lines), INTERNALDATE (the `From ` line)
/// and the bytes to skip at the start (a seal on the first line).
fn read_head(file: &File, m: &Message) -> (Option<Seal>, i64, u64) {
    let n = (m.end - m.offset).min(2048) as usize;
    let mut buf = vec![0u8; n];
    if file.read_exact_at(&mut buf, m.offset).is_err() {
        return (None, 0, 0);
    }
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

/// The text/* parts of a message that are no multipart or message, in
/// order (for SEARCH BODY and TEXT).
fn text_leaves<'a>(p: &'a mime::Part, out: &mut Vec<&'a mime::Part>) {
    match &p.kind {
        mime::Kind::Multi(children) => {
            for c in children {
                text_leaves(c, out);
            }
        }
        mime::Kind::Message(_, inner) => text_leaves(inner, out),
        mime::Kind::Single => {
            if p.ctype.eq_ignore_ascii_case(b"text") {
                out.push(p);
            }
        }
    }
}

/// The account: every folder's state, shared by all sessions.
pub struct Store {
    pub inbox: PathBuf,
    pub folders: PathBuf,
    state_dir: PathBuf,
    open: RefCell<BTreeMap<String, Rc<RefCell<FolderState>>>>,
    next_handle: std::cell::Cell<u64>,
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
            state_dir,
            open: RefCell::new(BTreeMap::new()),
            next_handle: std::cell::Cell::new(1),
        }))
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
                let index = self
                    .state_dir
                    .join(format!("{}.index", name.replace('/', "%")));
                let s = Rc::new(RefCell::new(FolderState::load(path, index)));
                self.open.borrow_mut().insert(name, s.clone());
                s
            }
        };
        st.borrow_mut().refresh()?;
        Ok(st)
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
        self.state_dir
            .join(format!("{}.index", Self::canonical(name).replace('/', "%")))
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
        let seen = state.borrow().log.len();
        let handle = self.0.next_handle.get();
        self.0.next_handle.set(handle + 1);
        Ok(StoreFolder {
            state,
            handle,
            seen,
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
    seen: usize,
}

impl StoreFolder {
    /// The structure of a message (parsed once, then kept).
    fn structure(&self, uid: Uid) -> Result<(Rc<Structure>, File, Message), StoreError> {
        let mut st = self.state.borrow_mut();
        let path = st.path.clone();
        let i = st.pos(uid).ok_or(StoreError::NonExistent)?;
        let file = File::open(&path).map_err(|e| io("cannot open folder", e))?;
        let mut m = st.entries[i].msg.clone();
        m.start = st.entries[i].body_start;
        if let Some(s) = &st.entries[i].structure {
            return Ok((s.clone(), file, m));
        }
        let mut p = mime::Parser::new();
        let mut buf = vec![0u8; CHUNK];
        let mut at = m.start;
        while at < m.end {
            let n = ((m.end - at) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| io("cannot read folder", e))?;
            p.feed(&buf[..n]);
            at += n as u64;
        }
        let s = Rc::new(p.finish());
        st.entries[i].structure = Some(s.clone());
        Ok((s, file, m))
    }

    /// The wire form of a range of a message.
    fn wire(file: &File, m: &Message, r: mime::Range, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let mut w = WireWriter::new();
        let mut buf = vec![0u8; CHUNK];
        let (mut at, end) = (
            m.start + r.start.stored,
            (m.start + r.end.stored).min(m.end),
        );
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| io("cannot read folder", e))?;
            w.write(&buf[..n], out);
            at += n as u64;
        }
        if end >= m.end {
            w.end_message(out);
        } else {
            w.finish(out);
        }
        Ok(())
    }
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

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

impl Folder for StoreFolder {
    /// The section's octets (wire form). Held in memory for now; the
    /// driver writes them.
    type Body = Vec<u8>;

    fn summary(&self) -> Summary {
        self.state.borrow().summary()
    }

    fn uids(&self) -> Vec<Uid> {
        self.state.borrow().entries.iter().map(|e| e.uid).collect()
    }

    fn meta(&self, uid: Uid) -> Option<Meta> {
        let st = self.state.borrow();
        let e = st.entry(uid)?;
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
        let (s, _, _) = self.structure(uid)?;
        mime::imap::envelope(&s.envelope, out);
        Ok(())
    }

    fn body_structure(
        &self,
        uid: Uid,
        extended: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let (s, _, _) = self.structure(uid)?;
        mime::imap::body(&s.root, extended, out);
        Ok(())
    }

    fn section(
        &self,
        uid: Uid,
        section: &Section,
        binary: bool,
        partial: Option<(u32, u32)>,
    ) -> Result<(u64, Vec<u8>), StoreError> {
        let (s, file, m) = self.structure(uid)?;
        let path = &section.part[..];
        let spec = match &section.text {
            SectionText::All => Spec::Body,
            SectionText::Header
            | SectionText::HeaderFields(_)
            | SectionText::HeaderFieldsNot(_) => Spec::Header,
            SectionText::Text => Spec::Text,
            SectionText::Mime => Spec::Mime,
        };
        let mut bytes = Vec::new();
        if let Some(r) = s.section(path, spec) {
            Self::wire(&file, &m, r, &mut bytes)?;
        }
        match &section.text {
            SectionText::HeaderFields(n) => bytes = header_filter(&bytes, n, false),
            SectionText::HeaderFieldsNot(n) => bytes = header_filter(&bytes, n, true),
            _ => {}
        }
        // BINARY: the content with its transfer encoding undone (RFC
        // 3516 4.2), for a part that is not a multipart or a message.
        if binary && !path.is_empty() {
            if let Some(p) = s
                .part(path)
                .filter(|p| matches!(p.kind, mime::Kind::Single))
            {
                let enc = mime::decode::Encoding::of(p.encoding.as_deref());
                bytes = mime::decode::decode(enc, &bytes);
            }
        }
        if let Some((start, len)) = partial {
            let start = (start as usize).min(bytes.len());
            let end = start.saturating_add(len as usize).min(bytes.len());
            bytes = bytes[start..end].to_vec();
        }
        Ok((bytes.len() as u64, bytes))
    }

    fn matches(
        &self,
        uid: Uid,
        field: Option<TextField>,
        header: Option<&str>,
        needle: &[u8],
    ) -> Result<bool, StoreError> {
        let (s, file, m) = self.structure(uid)?;
        let mut head = Vec::new();
        if let Some(r) = s.section(&[], Spec::Header) {
            Self::wire(&file, &m, r, &mut head)?;
        }
        let value = |name: &str| header_filter(&head, &[name.to_string()], false);
        let body = |s: &Structure| -> Result<Vec<u8>, StoreError> {
            let mut b = Vec::new();
            if let Some(r) = s.section(&[], Spec::Text) {
                Self::wire(&file, &m, r, &mut b)?;
            }
            Ok(b)
        };
        // Text parts in base64 or quoted-printable are also searched
        // decoded (RFC 9051 6.4.4 searches the text, as Dovecot does).
        let decoded_text_has = |s: &Structure| -> Result<bool, StoreError> {
            let mut leaves = Vec::new();
            text_leaves(&s.root, &mut leaves);
            for p in leaves {
                let enc = mime::decode::Encoding::of(p.encoding.as_deref());
                if !matches!(
                    enc,
                    mime::decode::Encoding::Base64 | mime::decode::Encoding::QuotedPrintable
                ) {
                    continue;
                }
                let mut raw = Vec::new();
                let r = mime::Range {
                    start: p.body,
                    end: p.end,
                };
                Self::wire(&file, &m, r, &mut raw)?;
                if contains_ci(&mime::decode::decode(enc, &raw), needle) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
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
            (Some(TextField::Body), _) => contains_ci(&body(&s)?, needle) || decoded_text_has(&s)?,
            (Some(TextField::Text), _) => {
                contains_ci(&head, needle)
                    || contains_ci(&body(&s)?, needle)
                    || decoded_text_has(&s)?
            }
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
        let out = st.log[self.seen.min(st.log.len())..]
            .iter()
            .filter(|(h, _)| *h != self.handle)
            .map(|(_, c)| c.clone())
            .collect();
        self.seen = st.log.len();
        out
    }
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
