//! The user's mbox (mboxrd): crash-safe appends with the locks other mbox
//! programs honour, and exclusive access for programs that rewrite it.
//!
//! Format (the mboxrd variant, as mutt and Python's `mailbox` read it): each
//! message starts with `From <sender> <asctime>`, body lines matching
//! `^>*From ` get one more `>`, each message ends with an empty line, line
//! ends are LF.
//!
//! Locking: `<mbox>.lock` (dot-lock, created with O_EXCL) and an `fcntl`
//! write lock, both held only while appending or rewriting.
//!
//! Nothing lost: one writer thread owns every change to the mbox. Before an
//! append it records the old and the new length in a journal
//! (`<data_dir>/mbox.journal`) and fsyncs it; then it appends and fsyncs the
//! mbox, and only then are the senders told `250`. After a crash, an append
//! that did not complete (length between old and new, or a torn tail) is
//! cut back to the old length at the next start. Messages that finish
//! together share one journal write and one fsync (group commit).

use crate::util::sys;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug)]
pub enum MboxError {
    /// ENOSPC or EDQUOT: the disk (or quota) is full.
    DiskFull,
    /// Another program held the mbox locks for longer than we wait.
    Locked(PathBuf),
    Io {
        context: String,
        source: io::Error,
    },
    /// The writer thread is gone (only at shutdown).
    Stopped,
}

impl std::fmt::Display for MboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MboxError::DiskFull => write!(f, "disk full"),
            MboxError::Locked(p) => write!(f, "{} is locked by another program", p.display()),
            MboxError::Io { context, source } => write!(f, "{context}: {source}"),
            MboxError::Stopped => write!(f, "mbox writer stopped"),
        }
    }
}

impl std::error::Error for MboxError {}

impl MboxError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        if is_disk_full(&source) {
            MboxError::DiskFull
        } else {
            MboxError::Io {
                context: context.into(),
                source,
            }
        }
    }
}

pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    )
}

// ---- mboxrd quoting ----------------------------------------------------------

/// Streaming mboxrd `From ` quoting: feed message bytes (LF line ends) in
/// any chunks; lines matching `^>*From ` come out with one more `>`.
#[derive(Debug, Default)]
pub struct Quoter {
    /// Bytes at the start of the current line that may still become
    /// `>*From ` (empty when nothing is pending; reused, not reallocated).
    pending: Vec<u8>,
    mid_line: bool,
}

impl Quoter {
    pub fn new() -> Self {
        Quoter::default()
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            if self.mid_line {
                // The rest of a decided line goes out as it is, in one go.
                let rest = &input[i..];
                match rest.iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        out.extend_from_slice(&rest[..=p]);
                        self.mid_line = false;
                        i += p + 1;
                    }
                    None => {
                        out.extend_from_slice(rest);
                        return;
                    }
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.pending.push(b);
            match from_prefix(&self.pending) {
                Prefix::Maybe => continue,
                Prefix::Yes => {
                    out.push(b'>');
                    out.extend_from_slice(&self.pending);
                }
                Prefix::No => out.extend_from_slice(&self.pending),
            }
            self.pending.clear();
            self.mid_line = b != b'\n';
        }
    }

    /// Flushes a pending line start at the end of the message.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pending);
        self.pending.clear();
        self.mid_line = false;
    }
}

enum Prefix {
    Yes,
    No,
    Maybe,
}

/// Is `s` (the start of a line) `>*From `, not that, or undecided yet?
fn from_prefix(s: &[u8]) -> Prefix {
    let rest = &s[s.iter().take_while(|&&b| b == b'>').count()..];
    const FROM: &[u8] = b"From ";
    if rest.len() >= FROM.len() {
        if rest.starts_with(FROM) {
            Prefix::Yes
        } else {
            Prefix::No
        }
    } else if FROM.starts_with(rest) {
        Prefix::Maybe
    } else {
        Prefix::No
    }
}

/// Undoes the quoting of one line (LF-terminated or not): `>From ` -> `From `.
pub fn unquote_line(line: &[u8]) -> &[u8] {
    let n = line.iter().take_while(|&&b| b == b'>').count();
    if n > 0 && line[n..].starts_with(b"From ") {
        &line[1..]
    } else {
        line
    }
}

/// The `From ` separator line for a message from `sender` (empty: bounce).
pub fn from_line(sender: &str, unix_time: u64) -> String {
    let s: String = if sender.is_empty() {
        "MAILER-DAEMON".into()
    } else {
        sender
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    format!("From {s} {}\n", crate::util::timefmt::asctime(unix_time))
}

// ---- locking -------------------------------------------------------------------

/// How long to wait for another program's lock before giving up (451).
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// A dot-lock older than this is a leftover of a crashed program
/// (procmail and mutt use similar ages).
const STALE_DOTLOCK: Duration = Duration::from_secs(300);

/// The mbox, open, with both locks held; released on drop.
pub struct Locked {
    pub file: File,
    pub path: PathBuf,
    dotlock: Option<PathBuf>,
}

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = sys::unlock(&self.file);
        if let Some(d) = &self.dotlock {
            let _ = std::fs::remove_file(d);
        }
    }
}

fn dotlock_path(mbox: &Path) -> PathBuf {
    let mut s = mbox.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Creates the dot-lock with our pid in it, never visible empty: the pid
/// is written to a file of our own, which is then hard-linked to the lock
/// name (the way liblockfile does it). A crash at any moment thus leaves
/// either no lock or one that names a dead process. Where hard links are
/// not supported, falls back to an exclusive create.
fn create_dotlock(dot: &Path) -> io::Result<()> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let mut tmp = dot.as_os_str().to_owned();
    tmp.push(format!(".{pid}.{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    let tmp = PathBuf::from(tmp);
    // A leftover of an earlier process that had our pid.
    let _ = std::fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| writeln!(f, "{pid}"));
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, dot));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e)
            if e.kind() != io::ErrorKind::AlreadyExists
                && e.kind() != io::ErrorKind::PermissionDenied
                && e.raw_os_error() != Some(libc::ENOSPC) =>
        {
            // No hard links here (some FUSE or FAT file systems).
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dot)?;
            let _ = writeln!(f, "{pid}");
            Ok(())
        }
        r => r,
    }
}

/// Is this dot-lock a leftover? Yes if it names a process that no longer
/// exists (a pimail killed while appending: we must not wait minutes after
/// a restart), or if it is older than [`STALE_DOTLOCK`] (other programs
/// may leave it empty). The mbox is assumed local, not shared over NFS.
fn dotlock_stale(dot: &Path) -> bool {
    let dead_owner = std::fs::read_to_string(dot)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|pid| !sys::process_alive(pid));
    dead_owner
        || std::fs::metadata(dot)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_DOTLOCK)
}

/// Opens (creating with mode 0600 if needed) and locks the mbox.
pub fn lock(path: &Path) -> Result<Locked, MboxError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let dot = dotlock_path(path);
    let dotlock = loop {
        match create_dotlock(&dot) {
            Ok(()) => break Some(dot.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // One thread per process takes this lock (the writer), so a
                // lock naming our own pid is a previous life's (a restart
                // in a container, where pimail is pid 1 every time).
                let ours = std::fs::read_to_string(&dot)
                    .is_ok_and(|t| t.trim() == std::process::id().to_string());
                if ours || dotlock_stale(&dot) {
                    log::warn!("removing stale lock {}", dot.display());
                    let _ = std::fs::remove_file(&dot);
                    continue;
                }
            }
            // The mbox directory may not be ours to write (a root-owned
            // /var/mail): like Postfix, fall back to the fcntl lock alone.
            // (EROFS: systemd's ProtectSystem without ReadWritePaths for it.)
            Err(e)
                if e.kind() == io::ErrorKind::PermissionDenied
                    || e.raw_os_error() == Some(libc::EROFS) =>
            {
                break None
            }
            Err(e) => return Err(MboxError::io(format!("cannot create {}", dot.display()), e)),
        }
        if Instant::now() > deadline {
            return Err(MboxError::Locked(path.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut locked = Locked {
        file: open_mbox(path)?,
        path: path.to_path_buf(),
        dotlock,
    };
    loop {
        match sys::try_write_lock(&locked.file) {
            Ok(true) => return Ok(locked),
            Ok(false) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(false) => {
                locked.dotlock.take().map(std::fs::remove_file);
                return Err(MboxError::Locked(path.to_path_buf()));
            }
            Err(e) => return Err(MboxError::io(format!("cannot lock {}", path.display()), e)),
        }
    }
}

/// The mode of a new mbox: 0660 in a setgid directory (Debian's
/// `/var/mail`, root:mail 2775, or any directory an admin gave a group the
/// user shares with the service: the kernel gives the file that group), so
/// the user's own mutt can read and rewrite it; 0600 elsewhere. Never
/// readable by others. An existing mbox keeps its owner and mode.
fn new_mbox_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o2000 != 0 => 0o660,
        _ => 0o600,
    }
}

fn open_mbox(path: &Path) -> Result<File, MboxError> {
    let existed = path.exists();
    let mode = new_mbox_mode(path);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
        .map_err(|e| MboxError::io(format!("cannot open {}", path.display()), e))?;
    if !existed {
        // The unit's UMask=0077 would take the group bits off again.
        if mode != 0o600 {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| MboxError::io(format!("cannot chmod {}", path.display()), e))?;
        }
        // The new directory entry must survive a crash too.
        sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(|e| {
            MboxError::io(format!("cannot sync directory of {}", path.display()), e)
        })?;
    }
    Ok(f)
}

use crate::util::paths::sync_dir;

// ---- journal and recovery ----------------------------------------------------------

/// A fixed-size record, rewritten in place: `pending` before an append,
/// `done` after it (the `done` write need not be durable, see `recover`).
fn journal_record(state: &str, old: u64, new: u64) -> [u8; 64] {
    let mut rec = [b' '; 64];
    let s = format!("{state} {old} {new}");
    rec[..s.len()].copy_from_slice(s.as_bytes());
    rec[63] = b'\n';
    rec
}

fn parse_journal(bytes: &[u8]) -> Option<(bool, u64, u64)> {
    let s = std::str::from_utf8(bytes).ok()?;
    let mut it = s.split_whitespace();
    let pending = match it.next()? {
        "pending" => true,
        "done" => false,
        _ => return None,
    };
    Some((pending, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Do the bytes from `old` look like the start of our append (optional
/// blank separator lines, then a `From ` line, possibly cut short)? If not,
/// another program rewrote the mbox since, and recovery leaves it alone.
fn ours(mbox: &File, old: u64, len: u64) -> bool {
    let mut head = [0u8; 7];
    let n = (len - old).min(7) as usize;
    if mbox.read_exact_at(&mut head[..n], old).is_err() {
        return false;
    }
    let skip = head[..n]
        .iter()
        .take(2)
        .take_while(|&&b| b == b'\n')
        .count();
    let rest = &head[skip..n];
    let from = b"From ";
    rest.len() >= from.len() && rest.starts_with(from) || from.starts_with(rest)
}

/// Cuts back an append that a crash interrupted. Called with the locks held.
fn recover(journal: &mut File, mbox: &mut File, path: &Path) -> Result<(), MboxError> {
    let mut buf = Vec::new();
    journal
        .seek(SeekFrom::Start(0))
        .and_then(|_| journal.read_to_end(&mut buf))
        .map_err(|e| MboxError::io("cannot read mbox journal", e))?;
    let Some((true, old, new)) = parse_journal(&buf) else {
        return Ok(());
    };
    let len = mbox
        .metadata()
        .map_err(|e| MboxError::io(format!("cannot stat {}", path.display()), e))?
        .len();
    let torn = if len > old && len < new {
        ours(mbox, old, len)
    } else if len == new && new > old {
        // Complete in length; make sure the tail is whole (a power cut may
        // leave the right size with unwritten blocks).
        let mut tail = [0u8; 2];
        let whole = mbox.read_exact_at(&mut tail, new - 2).is_ok() && &tail == b"\n\n";
        ours(mbox, old, len) && !whole
    } else {
        // Not our append's shape: another program changed the mbox since.
        false
    };
    if torn {
        log::warn!(
            "{}: removing an incomplete message left by a crash (bytes {old}..{len})",
            path.display()
        );
        mbox.set_len(old)
            .and_then(|_| mbox.sync_all())
            .map_err(|e| MboxError::io(format!("cannot repair {}", path.display()), e))?;
    }
    journal
        .write_all_at(&journal_record("done", old, new), 0)
        .and_then(|_| journal.sync_data())
        .map_err(|e| MboxError::io("cannot write mbox journal", e))
}

// ---- the writer thread ---------------------------------------------------------------

/// One message to append: the `From ` line and trace headers, then the
/// spooled, already quoted body.
#[derive(Debug)]
pub struct Delivery {
    pub prefix: Vec<u8>,
    pub spool: PathBuf,
}

type Exclusive = Box<dyn FnOnce(Locked) + Send>;

enum Job {
    Append(Delivery, smol::channel::Sender<Result<(), MboxError>>),
    Exclusive(Exclusive),
}

/// The handle sessions use; cheap to clone.
#[derive(Clone)]
pub struct MboxWriter {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

impl MboxWriter {
    /// Repairs what a crash may have left, then starts the writer thread.
    pub fn start(mbox: &Path, data_dir: &Path) -> Result<MboxWriter, MboxError> {
        if let Some(parent) = mbox.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| MboxError::io(format!("cannot create {}", parent.display()), e))?;
        }
        let jpath = data_dir.join("mbox.journal");
        let mut journal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&jpath)
            .map_err(|e| MboxError::io(format!("cannot open {}", jpath.display()), e))?;
        {
            let mut locked = lock(mbox)?;
            recover(&mut journal, &mut locked.file, mbox)?;
        }
        let (tx, rx) = mpsc::channel();
        let path = mbox.to_path_buf();
        let p = path.clone();
        std::thread::Builder::new()
            .name("mbox-writer".into())
            .spawn(move || writer_loop(rx, journal, p))
            .map_err(|e| MboxError::io("cannot start mbox writer thread", e))?;
        Ok(MboxWriter { tx, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one message; returns once it is fsynced (or failed and was
    /// rolled back).
    pub async fn append(&self, d: Delivery) -> Result<(), MboxError> {
        let (reply, rx) = smol::channel::bounded(1);
        self.tx
            .send(Job::Append(d, reply))
            .map_err(|_| MboxError::Stopped)?;
        rx.recv().await.unwrap_or(Err(MboxError::Stopped))
    }

    /// Runs `f` on the writer thread with the mbox locked (dot-lock and
    /// fcntl) and no append in progress: for rewriting it (POP3 deletions).
    pub async fn exclusive<T, F>(&self, f: F) -> Result<T, MboxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Locked) -> Result<T, MboxError> + Send + 'static,
    {
        let (reply, rx) = smol::channel::bounded(1);
        let job: Exclusive = Box::new(move |mut locked: Locked| {
            let result = f(&mut locked);
            // Unlock before the caller goes on.
            drop(locked);
            let _ = reply.send_blocking(result);
        });
        self.tx
            .send(Job::Exclusive(job))
            .map_err(|_| MboxError::Stopped)?;
        rx.recv().await.unwrap_or(Err(MboxError::Stopped))
    }
}

fn writer_loop(rx: mpsc::Receiver<Job>, mut journal: File, path: PathBuf) {
    while let Ok(first) = rx.recv() {
        // Group commit: take every append already waiting.
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append(d, reply) => batch.push((d, reply)),
                Job::Exclusive(f) => {
                    run_batch(&mut journal, &path, std::mem::take(&mut batch));
                    // The last append's `done` record was written without
                    // fsync; a rewrite may shrink the mbox below its
                    // lengths, so make it durable first, or recovery after
                    // a power cut could mistake the rewritten mbox for a
                    // torn append.
                    let _ = journal.sync_data();
                    match lock(&path) {
                        Ok(locked) => f(locked),
                        Err(e) => {
                            log::error!("cannot lock {}: {e}", path.display());
                            drop(f); // the caller sees the channel closed
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        run_batch(&mut journal, &path, batch);
    }
}

fn run_batch(
    journal: &mut File,
    path: &Path,
    batch: Vec<(Delivery, smol::channel::Sender<Result<(), MboxError>>)>,
) {
    if batch.is_empty() {
        return;
    }
    let items: Vec<&Delivery> = batch.iter().map(|(d, _)| d).collect();
    let result = append_all(journal, path, &items);
    for (_, reply) in batch {
        let r = match &result {
            Ok(()) => Ok(()),
            Err(MboxError::DiskFull) => Err(MboxError::DiskFull),
            Err(MboxError::Locked(p)) => Err(MboxError::Locked(p.clone())),
            Err(MboxError::Stopped) => Err(MboxError::Stopped),
            Err(MboxError::Io { context, source }) => Err(MboxError::Io {
                context: context.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            }),
        };
        let _ = reply.send_blocking(r);
    }
}

/// Appends all `items` as one unit: all are stored and fsynced, or none.
pub fn append_all(journal: &mut File, path: &Path, items: &[&Delivery]) -> Result<(), MboxError> {
    let mut locked = lock(path)?;
    // A previous failure in this process may have left a pending record.
    recover(journal, &mut locked.file, path)?;
    let mut spools = Vec::with_capacity(items.len());
    let mut total = 0u64;
    for d in items {
        let f = File::open(&d.spool)
            .map_err(|e| MboxError::io(format!("cannot open {}", d.spool.display()), e))?;
        let len = f
            .metadata()
            .map_err(|e| MboxError::io("cannot stat spool file", e))?
            .len();
        total += d.prefix.len() as u64 + len + 1;
        spools.push(f);
    }
    let file = &mut locked.file;
    let old = file
        .metadata()
        .map_err(|e| MboxError::io(format!("cannot stat {}", path.display()), e))?
        .len();
    // A foreign mbox whose last message lacks the blank separator line:
    // add it, so our `From ` line starts a new message.
    let mut sep: &[u8] = b"";
    if old > 0 {
        let mut tail = [0u8; 2];
        let n = if old >= 2 { 2 } else { 1 };
        file.read_exact_at(&mut tail[..n], old - n as u64)
            .map_err(|e| MboxError::io(format!("cannot read {}", path.display()), e))?;
        let t = &tail[..n];
        sep = if t.ends_with(b"\n\n") || (old == 1 && t == b"\n") {
            b""
        } else if t.ends_with(b"\n") {
            b"\n"
        } else {
            b"\n\n"
        };
    }
    let new = old + sep.len() as u64 + total;
    journal
        .write_all_at(&journal_record("pending", old, new), 0)
        .and_then(|_| journal.sync_data())
        .map_err(|e| MboxError::io("cannot write mbox journal", e))?;
    let written = (|| -> io::Result<()> {
        file.seek(SeekFrom::Start(old))?;
        let mut w = io::BufWriter::with_capacity(64 * 1024, &mut *file);
        w.write_all(sep)?;
        for (d, spool) in items.iter().zip(spools.iter_mut()) {
            w.write_all(&d.prefix)?;
            io::copy(spool, &mut w)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        drop(w);
        file.sync_data()
    })();
    if let Err(e) = written {
        // Roll back so the mbox never holds a partial message.
        let undo = file.set_len(old).and_then(|_| file.sync_data());
        if let Err(u) = undo {
            log::error!("{}: cannot roll back a failed append: {u}", path.display());
        } else {
            let _ = journal.write_all_at(&journal_record("done", old, old), 0);
        }
        return Err(MboxError::io(
            format!("cannot append to {}", path.display()),
            e,
        ));
    }
    // Not synced: if lost, recovery finds the append whole and keeps it.
    let _ = journal.write_all_at(&journal_record("done", old, new), 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut q = Quoter::new();
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            q.feed(c, &mut out);
        }
        q.finish(&mut out);
        out
    }

    #[test]
    fn mboxrd_quoting_at_every_split() {
        let input = b"From a\nFrom: header\n>From b\n>>From c\nx From d\nFro\n>Fro\nFrom ";
        let want = b">From a\nFrom: header\n>>From b\n>>>From c\nx From d\nFro\n>Fro\n>From ";
        for chunk in 1..input.len() {
            assert_eq!(quote(input, chunk), want.to_vec(), "chunk {chunk}");
        }
        for line in want.split_inclusive(|&b| b == b'\n') {
            let un = unquote_line(line);
            assert!(input.windows(un.len()).any(|w| w == un));
        }
        assert_eq!(unquote_line(b">>From x\n"), b">From x\n");
        assert_eq!(unquote_line(b">Fromx\n"), b">Fromx\n");
    }

    #[test]
    fn from_lines() {
        assert_eq!(
            from_line("bob@example.com", 0),
            "From bob@example.com Thu Jan  1 00:00:00 1970\n"
        );
        assert_eq!(
            from_line("", 0),
            "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n"
        );
        assert!(from_line("a b@c", 0).starts_with("From a_b@c "));
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pimail-mbox-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn dotlock_of_a_dead_process_is_taken_over_at_once() {
        let d = tmp("deadlock");
        let mbox = d.join("mbox");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(dotlock_path(&mbox), format!("{dead}\n")).unwrap();
        let start = Instant::now();
        let locked = lock(&mbox).unwrap();
        assert!(start.elapsed() < LOCK_WAIT / 2);
        // Our lock names us, and only the lock file is left beside the mbox.
        let text = std::fs::read_to_string(dotlock_path(&mbox)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        assert!(!dotlock_stale(&dotlock_path(&mbox)));
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["mbox", "mbox.lock"]);
        drop(locked);
        assert!(!dotlock_path(&mbox).exists());
        // An empty lock of another program is respected until it is old.
        std::fs::write(dotlock_path(&mbox), "").unwrap();
        assert!(!dotlock_stale(&dotlock_path(&mbox)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn delivery(dir: &Path, name: &str, body: &[u8]) -> Delivery {
        let spool = dir.join(name);
        std::fs::write(&spool, body).unwrap();
        Delivery {
            prefix: from_line("bob@example.com", 0).into_bytes(),
            spool,
        }
    }

    #[test]
    fn append_creates_0600_and_separates_messages() {
        let d = tmp("append");
        let mbox = d.join("mbox");
        let mut journal = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(d.join("j"))
            .unwrap();
        let a = delivery(&d, "a", b"Subject: a\n\none\n");
        let b = delivery(&d, "b", b"Subject: b\n\ntwo\n");
        append_all(&mut journal, &mbox, &[&a, &b]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&mbox).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&mbox).unwrap();
        assert_eq!(
            text,
            "From bob@example.com Thu Jan  1 00:00:00 1970\nSubject: a\n\none\n\n\
             From bob@example.com Thu Jan  1 00:00:00 1970\nSubject: b\n\ntwo\n\n"
        );
        assert!(!dotlock_path(&mbox).exists());
        // A foreign mbox without the final blank line gets one first.
        std::fs::write(&mbox, "From x Thu Jan  1 00:00:00 1970\nbody").unwrap();
        append_all(&mut journal, &mbox, &[&a]).unwrap();
        let text = std::fs::read_to_string(&mbox).unwrap();
        assert!(
            text.starts_with("From x Thu Jan  1 00:00:00 1970\nbody\n\nFrom bob"),
            "{text}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn recovery_cuts_torn_append_only() {
        let d = tmp("recover");
        let mbox = d.join("mbox");
        let jpath = d.join("j");
        let good = "From a Thu Jan  1 00:00:00 1970\nx\n\n";
        let mut journal = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&jpath)
            .unwrap();
        // Torn: a crash after writing part of the new message.
        std::fs::write(&mbox, format!("{good}From b Thu Jan  1 00:0")).unwrap();
        let old = good.len() as u64;
        journal
            .write_all_at(&journal_record("pending", old, old + 40), 0)
            .unwrap();
        let mut f = File::options().read(true).write(true).open(&mbox).unwrap();
        recover(&mut journal, &mut f, &mbox).unwrap();
        assert_eq!(std::fs::read_to_string(&mbox).unwrap(), good);
        // Complete: kept even though the journal still says pending.
        let second = "From b Thu Jan  1 00:00:00 1970\ny\n\n";
        std::fs::write(&mbox, format!("{good}{second}")).unwrap();
        journal
            .write_all_at(
                &journal_record("pending", old, old + second.len() as u64),
                0,
            )
            .unwrap();
        recover(&mut journal, &mut f, &mbox).unwrap();
        assert_eq!(
            std::fs::read_to_string(&mbox).unwrap(),
            format!("{good}{second}")
        );
        // Rewritten by another program since: left alone.
        std::fs::write(&mbox, "From z Thu Jan  1 00:00:00 1970\nzz\n\n").unwrap();
        journal
            .write_all_at(&journal_record("pending", 5, 500), 0)
            .unwrap();
        recover(&mut journal, &mut f, &mbox).unwrap();
        assert_eq!(
            std::fs::read_to_string(&mbox).unwrap(),
            "From z Thu Jan  1 00:00:00 1970\nzz\n\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writer_thread_appends_and_gives_exclusive_access() {
        let d = tmp("writer");
        let mbox = d.join("sub").join("mbox");
        let w = MboxWriter::start(&mbox, &d).unwrap();
        let a = delivery(&d, "a", b"one\n");
        smol::block_on(w.append(a)).unwrap();
        let (len, dotlocked) = smol::block_on(w.exclusive(|l| {
            Ok((
                l.file.metadata().unwrap().len(),
                dotlock_path(&l.path).exists(),
            ))
        }))
        .unwrap();
        assert_eq!(len, std::fs::metadata(&mbox).unwrap().len());
        assert!(len > 0 && dotlocked, "{len} {dotlocked}");
        assert!(!dotlock_path(&mbox).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
