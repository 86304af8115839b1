//! An in-memory account implementing [`Account`] and [`Folder`], for the
//! session's unit tests (and the driver's, until the folder store lands).
//! Several handles share one account, so that two sessions see each
//! other's changes. [`MemAccount::perform`] carries out a [`Write`] the way
//! the driver will: all of it or nothing.
//!
//! Bodies are whole messages in memory here, which the real store never
//! does; sections are simple: HEADER and TEXT split at the first empty
//! line, part 1 of a single-part message is its text.

use super::command::{DateTime, Flag, Section, SectionText, StoreMode, TextField};
use super::folder::{
    Account, Change, Folder, FolderInfo, Meta, StoreError, Stored, Summary, Uid, Write, WriteDone,
};
use crate::store::mime;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

struct Msg {
    meta: Meta,
    data: Vec<u8>,
}

struct MemFolder {
    uid_validity: u32,
    uid_next: Uid,
    modseq: u64,
    msgs: Vec<Msg>,
    /// (origin handle, change); handles skip their own.
    log: Vec<(u64, Change)>,
    noselect: bool,
}

impl MemFolder {
    fn new(uid_validity: u32, noselect: bool) -> Self {
        MemFolder {
            uid_validity,
            uid_next: 1,
            modseq: 1,
            msgs: Vec::new(),
            log: Vec::new(),
            noselect,
        }
    }
}

#[derive(Default)]
struct Inner {
    folders: BTreeMap<String, MemFolder>,
    subscribed: BTreeSet<String>,
    next_handle: u64,
    next_validity: u32,
}

/// The account; clone it for another session.
#[derive(Clone)]
pub struct MemAccount(Rc<RefCell<Inner>>);

const SPECIAL: [(&str, &str); 5] = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
];

impl Default for MemAccount {
    fn default() -> Self {
        Self::new()
    }
}

impl MemAccount {
    /// INBOX and the special-use folders of SPEC, all subscribed.
    pub fn new() -> Self {
        let acct = MemAccount(Rc::new(RefCell::new(Inner {
            next_validity: 1000,
            ..Default::default()
        })));
        for name in ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"] {
            let _ = acct.perform(&Write::Create(name.into()), &[]);
            acct.0.borrow_mut().subscribed.insert(name.into());
        }
        acct
    }

    /// Delivers a message to a folder as another program would.
    pub fn deliver(&self, folder: &str, data: &[u8]) -> Option<Uid> {
        let w = Write::Append {
            folder: folder.into(),
            flags: vec![],
            date: None,
        };
        match self.perform_from(0, &w, data) {
            WriteDone::Appended { uid, .. } => Some(uid),
            _ => None,
        }
    }

    pub fn perform(&self, w: &Write, data: &[u8]) -> WriteDone {
        self.perform_from(0, w, data)
    }

    fn perform_from(&self, origin: u64, w: &Write, data: &[u8]) -> WriteDone {
        let mut inner = self.0.borrow_mut();
        let inner = &mut *inner;
        let fail = WriteDone::Failed;
        match w {
            Write::Create(name) => {
                let name = name.trim_end_matches('/');
                if inner.folders.contains_key(name) {
                    return fail(StoreError::AlreadyExists);
                }
                // A folder that holds mail has no children.
                if let Some((parent, _)) = name.rsplit_once('/') {
                    if inner.folders.get(parent).is_some_and(|f| !f.noselect) {
                        return fail(StoreError::Cannot(format!(
                            "{parent} holds mail, not folders"
                        )));
                    }
                }
                inner.next_validity += 1;
                let noselect = w_is_parent(w);
                inner.folders.insert(
                    name.to_string(),
                    MemFolder::new(inner.next_validity, noselect),
                );
                WriteDone::Done
            }
            Write::Delete(name) => match inner.folders.remove(name) {
                Some(_) => WriteDone::Done,
                None => fail(StoreError::NonExistent),
            },
            Write::Rename(from, to) => {
                if inner.folders.contains_key(to) {
                    return fail(StoreError::AlreadyExists);
                }
                match inner.folders.remove(from) {
                    Some(f) => {
                        inner.folders.insert(to.clone(), f);
                        WriteDone::Done
                    }
                    None => fail(StoreError::NonExistent),
                }
            }
            Write::Append {
                folder,
                flags,
                date,
            } => {
                let Some(f) = inner.folders.get_mut(folder) else {
                    return fail(StoreError::NonExistent);
                };
                let uid = add(f, origin, flags.clone(), *date, data.to_vec());
                WriteDone::Appended {
                    uid_validity: f.uid_validity,
                    uid,
                }
            }
            Write::Copy {
                from,
                uids,
                to,
                is_move,
            } => {
                let Some(src) = inner.folders.get(from) else {
                    return fail(StoreError::NonExistent);
                };
                let copies: Vec<(Uid, Vec<Flag>, DateTime, Vec<u8>)> = src
                    .msgs
                    .iter()
                    .filter(|m| uids.contains(&m.meta.uid))
                    .map(|m| {
                        (
                            m.meta.uid,
                            m.meta.flags.clone(),
                            m.meta.internal_date,
                            m.data.clone(),
                        )
                    })
                    .collect();
                let Some(dst) = inner.folders.get_mut(to) else {
                    return fail(StoreError::NonExistent);
                };
                let mut pairs = (Vec::new(), Vec::new());
                for (old, flags, date, data) in copies {
                    pairs.0.push(old);
                    pairs.1.push(add(dst, origin, flags, Some(date), data));
                }
                let uid_validity = dst.uid_validity;
                if *is_move {
                    if let Some(src) = inner.folders.get_mut(from) {
                        remove(src, origin, &pairs.0);
                    }
                }
                WriteDone::Copied {
                    uid_validity,
                    from: pairs.0,
                    to: pairs.1,
                }
            }
            Write::Expunge { folder, uids } => {
                let Some(f) = inner.folders.get_mut(folder) else {
                    return fail(StoreError::NonExistent);
                };
                WriteDone::Expunged(remove(f, origin, uids))
            }
        }
    }
}

fn w_is_parent(w: &Write) -> bool {
    matches!(w, Write::Create(n) if n.ends_with('/'))
}

fn add(
    f: &mut MemFolder,
    origin: u64,
    flags: Vec<Flag>,
    date: Option<DateTime>,
    data: Vec<u8>,
) -> Uid {
    let uid = f.uid_next;
    f.uid_next += 1;
    f.modseq += 1;
    f.msgs.push(Msg {
        meta: Meta {
            uid,
            flags,
            internal_date: date.unwrap_or(DateTime {
                unix: 1_700_000_000,
                zone_minutes: 0,
            }),
            size: data.len() as u64,
            modseq: f.modseq,
            sent: sent_day(&data),
        },
        data,
    });
    f.log.push((origin, Change::Added(uid)));
    uid
}

fn remove(f: &mut MemFolder, origin: u64, uids: &[Uid]) -> Vec<Uid> {
    let mut removed = Vec::new();
    f.msgs.retain(|m| {
        let go = uids.contains(&m.meta.uid);
        if go {
            removed.push(m.meta.uid);
        }
        !go
    });
    for &u in &removed {
        f.log.push((origin, Change::Expunged(u)));
    }
    removed
}

/// A selected folder: the account, the name and a place in the log.
pub struct MemHandle {
    acct: MemAccount,
    name: String,
    id: u64,
    cursor: usize,
}

impl MemHandle {
    fn with<T>(&self, f: impl FnOnce(&MemFolder) -> T) -> Option<T> {
        self.acct.0.borrow().folders.get(&self.name).map(f)
    }

    fn data(&self, uid: Uid) -> Option<Vec<u8>> {
        self.with(|f| {
            f.msgs
                .iter()
                .find(|m| m.meta.uid == uid)
                .map(|m| m.data.clone())
        })
        .flatten()
    }
}

/// The Date: header's day, as the store reads it (SENTON and friends).
fn sent_day(data: &[u8]) -> Option<i64> {
    let head = &data[..split_header(data)];
    let line = head
        .split(|&b| b == b'\n')
        .find(|l| l.len() > 5 && l[..5].eq_ignore_ascii_case(b"date:"))?;
    let d = super::command::Date::from_rfc5322(&line[5..])?;
    Some(d.days() * 86400)
}

fn split_header(data: &[u8]) -> usize {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 4)
}

fn header_value(data: &[u8], name: &str) -> Option<Vec<u8>> {
    let header = &data[..split_header(data)];
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            if line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
                return Some(line[colon + 1..].trim_ascii().to_vec());
            }
        }
    }
    None
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

impl Folder for MemHandle {
    type Body = Vec<u8>;

    fn summary(&self) -> Summary {
        self.with(|f| Summary {
            messages: f.msgs.len() as u32,
            unseen: f.msgs.iter().filter(|m| !m.meta.has("\\Seen")).count() as u32,
            deleted: f.msgs.iter().filter(|m| m.meta.has("\\Deleted")).count() as u32,
            size: f.msgs.iter().map(|m| m.meta.size).sum(),
            uid_next: f.uid_next,
            uid_validity: f.uid_validity,
            highest_modseq: f.modseq,
        })
        .unwrap_or_default()
    }

    fn uids(&self) -> Vec<Uid> {
        self.with(|f| f.msgs.iter().map(|m| m.meta.uid).collect())
            .unwrap_or_default()
    }

    fn meta(&self, uid: Uid) -> Option<Meta> {
        self.with(|f| {
            f.msgs
                .iter()
                .find(|m| m.meta.uid == uid)
                .map(|m| m.meta.clone())
        })
        .flatten()
    }

    fn envelope(&self, uid: Uid, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let data = self.data(uid).ok_or(StoreError::NonExistent)?;
        mime::imap::envelope(&mime::Structure::parse(&data).envelope, out);
        Ok(())
    }

    fn body_structure(
        &self,
        uid: Uid,
        extended: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let data = self.data(uid).ok_or(StoreError::NonExistent)?;
        mime::imap::body(&mime::Structure::parse(&data).root, extended, out);
        Ok(())
    }

    fn section(
        &self,
        uid: Uid,
        section: &Section,
        _binary: bool,
        partial: Option<(u32, u32)>,
    ) -> Result<(u64, Vec<u8>), StoreError> {
        let data = self.data(uid).ok_or(StoreError::NonExistent)?;
        let split = split_header(&data);
        let mut bytes = match (&section.part[..], &section.text) {
            ([], SectionText::All) => data.clone(),
            ([], SectionText::Header) => data[..split].to_vec(),
            ([], SectionText::Text) | ([1], SectionText::All) => data[split..].to_vec(),
            ([], SectionText::HeaderFields(names)) | ([], SectionText::HeaderFieldsNot(names)) => {
                let not = matches!(section.text, SectionText::HeaderFieldsNot(_));
                let mut out = Vec::new();
                for line in data[..split].split_inclusive(|&b| b == b'\n') {
                    let name = line.split(|&b| b == b':').next().unwrap_or(b"");
                    let listed = names
                        .iter()
                        .any(|n| n.as_bytes().eq_ignore_ascii_case(name));
                    if listed != not && line.contains(&b':') {
                        out.extend_from_slice(line);
                    }
                }
                out.extend_from_slice(b"\r\n");
                out
            }
            _ => Vec::new(),
        };
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
        let data = self.data(uid).ok_or(StoreError::NonExistent)?;
        let split = split_header(&data);
        let value = |name| header_value(&data, name).unwrap_or_default();
        Ok(match (field, header) {
            (_, Some(h)) => header_value(&data, h).is_some_and(|v| contains_ci(&v, needle)),
            (Some(TextField::Body), _) => contains_ci(&data[split..], needle),
            (Some(TextField::Text), _) => contains_ci(&data, needle),
            (Some(TextField::From), _) => contains_ci(&value("From"), needle),
            (Some(TextField::To), _) => contains_ci(&value("To"), needle),
            (Some(TextField::Cc), _) => contains_ci(&value("Cc"), needle),
            (Some(TextField::Bcc), _) => contains_ci(&value("Bcc"), needle),
            (Some(TextField::Subject), _) => contains_ci(&value("Subject"), needle),
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
        let mut inner = self.acct.0.borrow_mut();
        let Some(f) = inner.folders.get_mut(&self.name) else {
            return Stored::Gone;
        };
        let Some(i) = f.msgs.iter().position(|m| m.meta.uid == uid) else {
            return Stored::Gone;
        };
        if unchanged_since.is_some_and(|u| f.msgs[i].meta.modseq > u) {
            return Stored::Modified;
        }
        let old = f.msgs[i].meta.flags.clone();
        let has = |set: &[Flag], x: &str| set.iter().any(|f| f.eq_ignore_ascii_case(x));
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
        if new != old {
            f.modseq += 1;
            let m = &mut f.msgs[i].meta;
            m.flags = new;
            m.modseq = f.modseq;
            f.log.push((self.id, Change::Flags(uid)));
        }
        Stored::Done(f.msgs[i].meta.clone())
    }

    fn poll(&mut self) -> Vec<Change> {
        let inner = self.acct.0.borrow();
        let Some(f) = inner.folders.get(&self.name) else {
            return Vec::new();
        };
        let changes = f.log[self.cursor.min(f.log.len())..]
            .iter()
            .filter(|(o, c)| *o != self.id || !matches!(c, Change::Flags(_)))
            .map(|(_, c)| c.clone())
            .collect();
        self.cursor = f.log.len();
        changes
    }
}

impl Account for MemAccount {
    type Folder = MemHandle;

    fn list(&mut self) -> Result<Vec<FolderInfo>, StoreError> {
        let inner = self.0.borrow();
        let mut v: Vec<FolderInfo> = inner
            .folders
            .iter()
            .map(|(name, f)| FolderInfo {
                name: name.clone(),
                special_use: SPECIAL.iter().find(|(n, _)| n == name).map(|(_, u)| *u),
                noselect: f.noselect,
                noinferiors: !f.noselect,
                subscribed: inner.subscribed.contains(name),
            })
            .collect();
        v.sort_by_key(|f| (f.name != "INBOX", f.name.clone()));
        Ok(v)
    }

    fn status(&mut self, name: &str) -> Result<Summary, StoreError> {
        let h = self.open(name)?;
        Ok(h.summary())
    }

    fn open(&mut self, name: &str) -> Result<MemHandle, StoreError> {
        let mut inner = self.0.borrow_mut();
        let f = inner.folders.get(name).ok_or(StoreError::NonExistent)?;
        if f.noselect {
            return Err(StoreError::NoSelect);
        }
        let cursor = f.log.len();
        inner.next_handle += 1;
        Ok(MemHandle {
            acct: self.clone(),
            name: name.to_string(),
            id: inner.next_handle,
            cursor,
        })
    }

    fn subscribe(&mut self, name: &str, subscribed: bool) -> Result<(), StoreError> {
        let mut inner = self.0.borrow_mut();
        if subscribed {
            inner.subscribed.insert(name.to_string());
        } else {
            inner.subscribed.remove(name);
        }
        Ok(())
    }
}
