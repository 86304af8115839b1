//! Small sets of addresses (and message ids) that the spam checks consult,
//! kept as append-only text files under data_dir, one entry a line:
//!
//! - `correspondents`: every remote recipient of mail the user sent
//!   (submission and `pimail sendmail` append to it when they queue a
//!   message). Their mail is never greylisted.
//! - `notjunk`: what the user said is not junk: lines `sender <address>`
//!   or `message-id <id>`. Header rules never junk or refuse a message
//!   whose envelope sender, From address or Message-ID is listed. The IMAP
//!   side appends here ([`record_not_junk`]) when the user marks a message
//!   `$NotJunk` or moves or copies it out of Junk; a person may add lines
//!   by hand.
//!
//! Appends use `O_APPEND`, so the server and a `sendmail` process can
//! write at once. The server holds the set in memory and reads only what
//! was appended since: an `fstat` of the file it holds open per lookup
//! (a message on port 25 asks two or three times), and a `stat` of the
//! path at most once a second, to notice a file replaced by an editor;
//! a file over [`MAX_FILE`] is compacted at open to its last [`KEEP`]
//! distinct entries.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Files larger than this are compacted when opened.
pub const MAX_FILE: u64 = 1 << 20;
/// Entries kept by compaction (the most recent).
pub const KEEP: usize = 20_000;

/// One append-only set file.
pub struct LineSet {
    pub path: PathBuf,
    set: RefCell<HashSet<String>>,
    /// Bytes of the file read so far (and its inode, to notice a rewrite).
    read_to: Cell<u64>,
    inode: Cell<u64>,
    /// The file as last opened, and when its path was last looked up.
    file: RefCell<Option<std::fs::File>>,
    path_checked: Cell<Option<std::time::Instant>>,
}

/// How long a replaced file may go unnoticed (appends are seen at once).
const PATH_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The normal form of an entry: trimmed, lower case.
fn norm(s: &str) -> String {
    let s = s.trim();
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

impl LineSet {
    /// Loads `<data_dir>/<name>` (missing: empty), compacting a big file.
    pub fn open(data_dir: &Path, name: &str) -> LineSet {
        let s = LineSet {
            path: data_dir.join(name),
            set: RefCell::new(HashSet::new()),
            read_to: Cell::new(0),
            inode: Cell::new(0),
            file: RefCell::new(None),
            path_checked: Cell::new(None),
        };
        if std::fs::metadata(&s.path).is_ok_and(|m| m.len() > MAX_FILE) {
            if let Err(e) = compact(&s.path) {
                log::warn!("cannot compact {}: {e}", s.path.display());
            }
        }
        s.refresh();
        s
    }

    /// Reads what was appended since the last look.
    fn refresh(&self) {
        let now = std::time::Instant::now();
        let fresh = self
            .path_checked
            .get()
            .is_some_and(|t| now.duration_since(t) < PATH_CHECK);
        let mut held = self.file.borrow_mut();
        let meta = match held.as_ref().filter(|_| fresh) {
            Some(f) => f.metadata(),
            None => {
                // The path: the file may be new, or replaced.
                *held = None;
                let m = std::fs::metadata(&self.path);
                if m.is_ok() {
                    self.path_checked.set(Some(now));
                }
                m
            }
        };
        let Ok(meta) = meta else {
            return;
        };
        if meta.ino() != self.inode.get() || meta.len() < self.read_to.get() {
            // Replaced (compacted) or truncated: read it all again.
            self.set.borrow_mut().clear();
            self.read_to.set(0);
            self.inode.set(meta.ino());
            *held = None;
        }
        if meta.len() == self.read_to.get() && held.is_some() {
            return;
        }
        if held.is_none() {
            match std::fs::File::open(&self.path) {
                Ok(f) if f.metadata().is_ok_and(|m| m.ino() == meta.ino()) => *held = Some(f),
                // Replaced between the two looks: the next lookup sees it.
                _ => return,
            }
        }
        let Some(f) = held.as_mut() else {
            return;
        };
        let mut text = String::new();
        if f.seek(SeekFrom::Start(self.read_to.get())).is_err()
            || Read::by_ref(f)
                .take(meta.len().saturating_sub(self.read_to.get()))
                .read_to_string(&mut text)
                .is_err()
        {
            return;
        }
        // Only whole lines: a line being appended right now waits.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        let mut set = self.set.borrow_mut();
        for line in text[..whole].lines() {
            let l = norm(line);
            if !l.is_empty() && !l.starts_with('#') {
                set.insert(l);
            }
        }
        self.read_to.set(self.read_to.get() + whole as u64);
    }

    pub fn contains(&self, entry: &str) -> bool {
        self.refresh();
        self.set.borrow().contains(&norm(entry))
    }

    pub fn len(&self) -> usize {
        self.refresh();
        self.set.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends entries to `<data_dir>/<name>`, creating it private. When a
/// root `sendmail` creates it, it is given to the owner of data_dir, so
/// the server can still read it.
pub fn append(data_dir: &Path, name: &str, entries: &[String]) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let path = data_dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)?;
    let mut text = String::new();
    for e in entries {
        // One entry a line: no line breaks inside.
        let e: String = norm(e).chars().filter(|c| !c.is_control()).collect();
        if !e.is_empty() {
            text.push_str(&e);
            text.push('\n');
        }
    }
    // One write: O_APPEND puts it at the end in one piece.
    f.write_all(text.as_bytes())?;
    if let (Ok(mine), Ok(dir)) = (f.metadata(), std::fs::metadata(data_dir)) {
        if mine.uid() != dir.uid() {
            let _ = std::os::unix::fs::chown(&path, Some(dir.uid()), Some(dir.gid()));
        }
    }
    Ok(())
}

/// Rewrites the file with its last [`KEEP`] distinct entries.
fn compact(path: &Path) -> io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut seen = HashSet::new();
    let mut keep: Vec<&str> = Vec::new();
    for l in text.lines().rev() {
        let t = l.trim();
        if !t.is_empty() && seen.insert(t) {
            keep.push(t);
            if keep.len() >= KEEP {
                break;
            }
        }
    }
    keep.reverse();
    let mut out = keep.join("\n");
    out.push('\n');
    crate::util::paths::write_atomic(path, out.as_bytes())
}

pub const CORRESPONDENTS: &str = "correspondents";
pub const NOT_JUNK: &str = "notjunk";

/// Records the remote recipients of a message the user is sending.
pub fn record_correspondents(data_dir: &Path, rcpts: &[String]) {
    if let Err(e) = append(data_dir, CORRESPONDENTS, rcpts) {
        log::warn!(
            "cannot record correspondents in {}: {e} (their replies may be greylisted)",
            data_dir.join(CORRESPONDENTS).display()
        );
    }
}

/// Records what the user said is not junk (entries from
/// `rules::not_junk_entries`); `why` names the user's act, for the log.
pub fn record_not_junk(data_dir: &Path, entries: &[String], why: &str) {
    if entries.is_empty() {
        return;
    }
    match append(data_dir, NOT_JUNK, entries) {
        Ok(()) => log::info!(
            "spam notjunk recorded={} by={why}",
            crate::util::logging::quoted(&entries.join(", "))
        ),
        Err(e) => log::warn!(
            "cannot record not-junk mail in {}: {e} (the rules may junk its sender again)",
            data_dir.join(NOT_JUNK).display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_entries_show_up_and_big_files_are_compacted() {
        let d = std::env::temp_dir().join(format!("pimail-known-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let s = LineSet::open(&d, CORRESPONDENTS);
        assert!(!s.contains("bob@example.com"));
        record_correspondents(&d, &["Bob@Example.com".into()]);
        assert!(s.contains("bob@example.com"));
        // Another process appending a half line: not yet an entry.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join(CORRESPONDENTS))
            .unwrap();
        f.write_all(b"carol@exa").unwrap();
        assert!(!s.contains("carol@exa"));
        f.write_all(b"mple.net\n").unwrap();
        assert!(s.contains("carol@example.net"));
        // Compaction keeps the most recent distinct entries.
        let many: Vec<String> = (0..60_000).map(|i| format!("u{i}@example.com")).collect();
        append(&d, CORRESPONDENTS, &many).unwrap();
        let s = LineSet::open(&d, CORRESPONDENTS);
        assert_eq!(s.len(), KEEP);
        assert!(s.contains("u59999@example.com") && !s.contains("bob@example.com"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The open file is what is read between looks at the path: a file
    /// replaced by an editor (a new file renamed over it) is seen within
    /// [`PATH_CHECK`], appends at once.
    #[test]
    fn a_replaced_file_is_read_again() {
        let d = std::env::temp_dir().join(format!("pimail-known-r-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        record_correspondents(&d, &["old@example.com".into()]);
        let s = LineSet::open(&d, CORRESPONDENTS);
        assert!(s.contains("old@example.com"));
        let tmp = d.join("edited");
        std::fs::write(&tmp, "new@example.com\n").unwrap();
        std::fs::rename(&tmp, d.join(CORRESPONDENTS)).unwrap();
        std::thread::sleep(PATH_CHECK + std::time::Duration::from_millis(100));
        assert!(s.contains("new@example.com"));
        assert!(!s.contains("old@example.com"));
        record_correspondents(&d, &["later@example.com".into()]);
        assert!(s.contains("later@example.com"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
