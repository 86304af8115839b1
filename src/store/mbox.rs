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
//! Nothing lost, one flush per commit: one writer thread owns every change
//! to the mbox. Each message it appends carries a seal ([`Seal`], the
//! `X-Pimail:` field: id, IMAP UID, length and checksum of the rest). Before
//! an append it records the mbox length (a known-good offset) in a journal
//! (`<data_dir>/mbox.journal`), without fsync unless the mbox changed since
//! our last append; then it appends and fsyncs the mbox once, and only then
//! are the senders told `250`. After a crash, recovery walks from the
//! recorded offset: every sealed message that verifies is kept, the first
//! that does not (cut short, or with blocks a power cut left unwritten) is
//! cut off with all after it. Messages that finish together share the
//! append and the fsync (group commit). `crash.rs` checks this against every
//! disk state a power cut may leave.

pub use crate::store::disk::{Disk, Fnv, Version};
use crate::util::sys;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
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
    /// For mail from outside: removes `X-Pimail:` fields first.
    strip: Option<(SealStrip, Vec<u8>)>,
}

impl Quoter {
    pub fn new() -> Self {
        Quoter::default()
    }

    /// A quoter for a message from outside (SMTP, `sendmail`): any
    /// `X-Pimail:` field in its header is removed, so that only pimail
    /// writes it ([`SEAL_FIELD`]).
    pub fn for_received_mail() -> Self {
        Quoter {
            strip: Some((SealStrip::default(), Vec::new())),
            ..Quoter::default()
        }
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self.strip.take() {
            Some((strip, _)) if strip.done => self.quote(input, out),
            Some((mut strip, mut tmp)) => {
                tmp.clear();
                strip.feed(input, &mut tmp);
                self.quote(&tmp, out);
                self.strip = Some((strip, tmp));
            }
            None => self.quote(input, out),
        }
    }

    fn quote(&mut self, input: &[u8], out: &mut Vec<u8>) {
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
        if let Some((mut strip, mut tmp)) = self.strip.take() {
            tmp.clear();
            strip.finish(&mut tmp);
            self.quote(&tmp, out);
        }
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
                    clean_lock_temps(path);
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

/// Removes `<mbox>.lock.PID.SEQ` files that a killed process left behind
/// (issue 13, hole 9): those naming a process that no longer exists.
pub fn clean_lock_temps(mbox: &Path) {
    let (Some(dir), Some(name)) = (mbox.parent(), mbox.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.lock.", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix(&prefix) else {
            continue;
        };
        let mut f = rest.split('.');
        let (Some(pid), Some(seq), None) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(pid), true) = (pid.parse::<u32>(), seq.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        if pid != std::process::id() && !sys::process_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn open_mbox(path: &Path) -> Result<File, MboxError> {
    let existed = path.exists();
    let mode = new_mbox_mode(path);
    // Never through a symlink (issue 13, hole 10): in a group-writable
    // mail directory one could redirect our writes.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
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

// ---- the seal ------------------------------------------------------------------------

/// Our trace header. Each message pimail appends starts with the `From `
/// line, then `Return-Path:` (if the caller gave one), then this field:
///
/// `X-Pimail: id=<id> uid=<n> len=<bytes> sum=<16 hex digits>`
///
/// `id` is the message's id (as in the log and the `Received:` header; the
/// POP3 UIDL), `uid` the IMAP UID (one more than the last, never reused),
/// `len` the bytes after this line up to and including the blank line that
/// ends the message, `sum` their FNV-1a 64 checksum. Recovery after a crash
/// keeps a message only if its seal verifies, which is what lets a commit
/// cost one flush. Copies of this field in incoming mail are removed
/// ([`Quoter::for_received_mail`]), so only pimail writes it.
pub const SEAL_FIELD: &str = "X-Pimail";
const SEAL_PREFIX: &[u8] = b"X-Pimail: ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub id: String,
    pub uid: u64,
    pub len: u64,
    pub sum: u64,
}

impl Seal {
    pub fn line(&self) -> String {
        format!(
            "{SEAL_FIELD}: id={} uid={} len={} sum={:016x}\n",
            self.id, self.uid, self.len, self.sum
        )
    }

    /// Parses one complete seal line (its LF optional).
    pub fn parse(line: &[u8]) -> Option<Seal> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let rest = std::str::from_utf8(line.strip_prefix(SEAL_PREFIX)?).ok()?;
        let (mut id, mut uid, mut len, mut sum) = (None, None, None, None);
        for w in rest.split(' ') {
            match w.split_once('=')? {
                ("id", v) if valid_seal_id(v) => id = Some(v.to_string()),
                ("uid", v) => uid = v.parse().ok(),
                ("len", v) => len = v.parse().ok(),
                ("sum", v) if v.len() == 16 => sum = u64::from_str_radix(v, 16).ok(),
                _ => return None,
            }
        }
        Some(Seal {
            id: id?,
            uid: uid?,
            len: len?,
            sum: sum?,
        })
    }
}

/// Ids are what `util::rt::new_id` makes; also valid POP3 UIDLs (RFC 1939
/// section 7: 1 to 70 characters in 0x21..0x7E).
pub fn valid_seal_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Where our seal is in a message: the first header field, or the second
/// after `Return-Path:`. `line` is header line number `n` (0 = the first
/// after the `From ` line); `prev_return_path` whether line 0 was
/// `Return-Path:`. Anything else is not ours, whatever it says.
pub fn seal_position(n: usize, prev_return_path: bool) -> bool {
    n == 0 || (n == 1 && prev_return_path)
}

/// Fields removed from the header of mail from outside: our seal, and the
/// fields mbox readers keep flags in (`Status:`, `X-Status:`), which IMAP
/// reads as the flags of mail another program wrote: a sender must not
/// mark its own mail read or flagged, or show it so to mutt. Dovecot's
/// mbox saving drops them too.
const STRIPPED: [&[u8]; 3] = [SEAL_FIELD.as_bytes(), b"Status", b"X-Status"];

/// Streaming removal of [`STRIPPED`] fields (and their continuation
/// lines) from a message's header section; the body passes untouched.
#[derive(Debug, Default)]
struct SealStrip {
    /// The header section is over: everything passes.
    done: bool,
    /// Inside a field being dropped.
    dropping: bool,
    /// The start of the current header line, until its name is known.
    pending: Vec<u8>,
    /// The current line's fate is decided (it is passing or dropped).
    mid_line: bool,
}

impl SealStrip {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            if self.done {
                out.extend_from_slice(&input[i..]);
                return;
            }
            if self.mid_line {
                let rest = &input[i..];
                let (take, ends) = match memchr::memchr(b'\n', rest) {
                    Some(p) => (p + 1, true),
                    None => (rest.len(), false),
                };
                if !self.dropping {
                    out.extend_from_slice(&rest[..take]);
                }
                i += take;
                self.mid_line = !ends;
                continue;
            }
            let b = input[i];
            i += 1;
            self.pending.push(b);
            self.decide(out);
        }
    }

    /// With the start of a line in `pending`: can we tell its fate yet?
    fn decide(&mut self, out: &mut Vec<u8>) {
        let p = &self.pending;
        let first = p[0];
        let decided = if first == b'\n' || (first == b'\r' && p.len() >= 2) {
            // The empty line ending the header section (or a bare CR line).
            self.done = first == b'\n' || p[1] == b'\n';
            self.dropping = false;
            Some(false)
        } else if first == b' ' || first == b'\t' {
            Some(self.dropping) // a continuation line follows its field
        } else if let Some(colon) = memchr::memchr(b':', p) {
            let name = p[..colon].trim_ascii_end();
            self.dropping = STRIPPED.iter().any(|n| name.eq_ignore_ascii_case(n));
            Some(self.dropping)
        } else if p.len() > 64 || p.last() == Some(&b'\n') {
            self.dropping = false;
            Some(false)
        } else {
            None
        };
        if let Some(drop_it) = decided {
            if !drop_it {
                out.extend_from_slice(&self.pending);
            }
            self.mid_line = self.pending.last() != Some(&b'\n');
            self.pending.clear();
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.dropping || self.done {
            out.extend_from_slice(&self.pending);
        }
        self.pending.clear();
    }
}

// ---- journal and recovery ----------------------------------------------------------

/// The writer's durable record, a fixed 64 bytes rewritten in place (one
/// sector: a power cut leaves the old or the new one): `seal OLD NEXTUID`,
/// where OLD is a known-good offset (the mbox length before an append) and
/// NEXTUID the IMAP UID after it. It is fsynced only when the mbox changed
/// since our last append (another program, a POP3 rewrite, the first
/// append after start); otherwise a stale record is as good, because all
/// between it and the end is our sealed, fsynced mail.
fn journal_record(old: u64, next_uid: u64) -> [u8; 64] {
    let mut rec = [b' '; 64];
    let s = format!("seal {old} {next_uid}");
    rec[..s.len()].copy_from_slice(s.as_bytes());
    rec[63] = b'\n';
    rec
}

enum Journal {
    /// Nothing there (first start, or data_dir new).
    Empty,
    Seal {
        old: u64,
        next_uid: u64,
    },
    /// The format before seals (one fsynced record per append).
    Legacy {
        pending: bool,
        old: u64,
        new: u64,
    },
}

fn parse_journal(bytes: &[u8]) -> Journal {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return Journal::Empty;
    };
    let f: Vec<&str> = s.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    match (f.first().copied(), num(1), num(2)) {
        (Some("seal"), Some(old), Some(next_uid)) => Journal::Seal { old, next_uid },
        (Some(state @ ("pending" | "done")), Some(old), Some(new)) => Journal::Legacy {
            pending: state == "pending",
            old,
            new,
        },
        _ => Journal::Empty,
    }
}

/// Legacy recovery (a journal written by a pimail before seals): does the
/// region from `old` look like the start of our append (optional blank
/// separator lines, then a `From ` line, possibly cut short)?
fn legacy_ours(mbox: &dyn Disk, old: u64, len: u64) -> bool {
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

/// The cut a legacy `pending` record asks for, if any.
fn legacy_cut(mbox: &dyn Disk, old: u64, new: u64) -> io::Result<Option<u64>> {
    let len = mbox.len()?;
    let torn = if len > old && len < new {
        legacy_ours(mbox, old, len)
    } else if len == new && new > old {
        let mut tail = [0u8; 2];
        let whole = mbox.read_exact_at(&mut tail, new - 2).is_ok() && &tail == b"\n\n";
        legacy_ours(mbox, old, len) && !whole
    } else {
        false
    };
    Ok(torn.then_some(old))
}

/// What recovery finds at one position after the known-good offset.
enum Found {
    /// Our message, its seal verified; `end` is after its blank line.
    Good { end: u64, uid: u64 },
    /// Our append, cut short by a crash: cut here.
    Torn,
    /// Not ours (another program's mail, or ours changed by a mail
    /// reader): recovery stops and cuts nothing.
    Foreign,
}

/// How far into a message recovery looks for the seal.
const HEAD_WINDOW: usize = 8192;

fn examine(mbox: &dyn Disk, pos: u64, len: u64) -> io::Result<Found> {
    let n = ((len - pos) as usize).min(HEAD_WINDOW);
    let mut head = vec![0u8; n];
    mbox.read_exact_at(&mut head, pos)?;
    let eof = pos + n as u64 == len;
    let mut at = 0usize;
    let mut return_path = false;
    for line_no in 0..3 {
        let rest = &head[at..];
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            // A line cut off: ours if what is there fits what we write.
            let fits = |want: &[u8]| rest.starts_with(want) || want.starts_with(rest);
            let ours = match line_no {
                0 => fits(b"From "),
                _ => fits(SEAL_PREFIX) || (line_no == 1 && fits(b"Return-Path:")),
            };
            return Ok(if rest.contains(&0) || (eof && ours) {
                Found::Torn
            } else {
                Found::Foreign
            });
        };
        let line = &rest[..=nl];
        if line.contains(&0) {
            return Ok(Found::Torn); // a block a power cut left unwritten
        }
        at += nl + 1;
        match line_no {
            0 if line.starts_with(b"From ") => continue,
            0 => return Ok(Found::Foreign),
            1 if line.starts_with(b"Return-Path:") => {
                return_path = true;
                continue;
            }
            _ if seal_position(line_no - 1, return_path) && line.starts_with(SEAL_PREFIX) => {
                let Some(seal) = Seal::parse(line) else {
                    return Ok(Found::Foreign);
                };
                return verify(mbox, pos + at as u64, len, &seal);
            }
            _ => return Ok(Found::Foreign),
        }
    }
    Ok(Found::Foreign)
}

/// Checks the bytes a seal covers.
fn verify(mbox: &dyn Disk, start: u64, len: u64, seal: &Seal) -> io::Result<Found> {
    let end = start.saturating_add(seal.len);
    if end > len {
        return Ok(Found::Torn);
    }
    let mut h = Fnv::new();
    let mut zero = false;
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = start;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        mbox.read_exact_at(&mut buf[..n], at)?;
        h.feed(&buf[..n]);
        zero |= buf[..n].contains(&0);
        at += n as u64;
    }
    Ok(if h.0 == seal.sum {
        Found::Good { end, uid: seal.uid }
    } else if zero {
        Found::Torn
    } else {
        Found::Foreign
    })
}

/// Walks the mbox from the known-good offset `from`: every sealed message
/// that verifies is kept; at the first that does not (cut short, or with
/// blocks a power cut left unwritten) the mbox is cut. Returns the cut and
/// the highest UID seen.
fn walk(mbox: &dyn Disk, from: u64) -> io::Result<(Option<u64>, u64)> {
    let len = mbox.len()?;
    let mut pos = from;
    let mut max_uid = 0;
    // A rewrite (POP3) shrank it below the record: nothing of ours is open.
    while pos < len {
        // The blank separator lines an append may start with.
        let mut p = pos;
        let mut lf = [0u8; 1];
        while p < len && p < pos + 2 && mbox.read_exact_at(&mut lf, p).is_ok() && lf[0] == b'\n' {
            p += 1;
        }
        if p == len {
            break;
        }
        match examine(mbox, p, len)? {
            Found::Good { end, uid } => {
                max_uid = max_uid.max(uid);
                pos = end;
            }
            Found::Torn => return Ok((Some(pos), max_uid)),
            Found::Foreign => break,
        }
    }
    Ok((None, max_uid))
}

/// What the writer knows between appends.
#[derive(Debug, Default)]
pub struct SealState {
    /// The IMAP UID for the next message.
    pub next_uid: u64,
    /// The mbox as our last append left it; `None`: unknown.
    last: Option<Version>,
    /// An append failed and may not have been rolled back.
    dirty: bool,
}

/// Repairs what a crash left (called with the locks held, at start and
/// after a failed append): finds the known-good offset in the journal,
/// cuts a torn append, and writes a fresh record, fsynced.
pub fn recover(journal: &dyn Disk, mbox: &dyn Disk, path: &Path) -> Result<SealState, MboxError> {
    let mut buf = [0u8; 64];
    let n = journal
        .len()
        .map_err(|e| MboxError::io("cannot read mbox journal", e))?;
    let n = (n as usize).min(64);
    journal
        .read_exact_at(&mut buf[..n], 0)
        .map_err(|e| MboxError::io("cannot read mbox journal", e))?;
    let rd = |e| MboxError::io(format!("cannot read {}", path.display()), e);
    let (cut, from, uid) = match parse_journal(&buf[..n]) {
        Journal::Seal { old, next_uid } => {
            let (cut, max) = walk(mbox, old).map_err(rd)?;
            (cut, old, next_uid.max(max + 1))
        }
        Journal::Legacy { pending, old, new } => {
            let cut = if pending {
                legacy_cut(mbox, old, new).map_err(rd)?
            } else {
                None
            };
            (cut, old, 1)
        }
        Journal::Empty => {
            let (cut, max) = walk(mbox, 0).map_err(rd)?;
            (cut, 0, max + 1)
        }
    };
    if let Some(at) = cut {
        let len = mbox.len().map_err(rd)?;
        log::warn!(
            "{}: removing an incomplete message left by a crash (bytes {at}..{len}, \
             checked from {from})",
            path.display()
        );
        mbox.set_len(at)
            .and_then(|_| mbox.sync_data())
            .map_err(|e| MboxError::io(format!("cannot repair {}", path.display()), e))?;
    }
    let len = mbox.len().map_err(rd)?;
    // The record must be durable before any append. A restart after a
    // clean stop finds it already current: rewriting it would only
    // dirty the page and make the flush below a real one (two disk
    // flushes per start, INBOX and Junk); the flush alone makes sure
    // what we read is on the disk, and costs nothing when it is.
    let record = journal_record(len, uid);
    let w = if buf[..n] == record[..] {
        Ok(())
    } else {
        journal.write_all_at(&record, 0)
    };
    w.and_then(|_| journal.sync_data())
        .map_err(|e| MboxError::io("cannot write mbox journal", e))?;
    Ok(SealState {
        next_uid: uid,
        last: mbox.version().ok(),
        dirty: false,
    })
}

/// Makes the record durable and forgets the mbox's version: before a
/// rewrite, which may shrink the mbox below any offset we recorded.
fn before_rewrite(journal: &dyn Disk, mbox: &dyn Disk, st: &mut SealState) -> io::Result<()> {
    let record = journal_record(mbox.len()?, st.next_uid);
    // Unchanged (nothing appended since the last record): no write, so
    // the flush has nothing to do (see `recover`).
    let mut now = [0u8; 64];
    if journal.read_exact_at(&mut now, 0).is_err() || now != record {
        journal.write_all_at(&record, 0)?;
    }
    journal.sync_data()?;
    st.last = None;
    Ok(())
}

// ---- the writer thread ---------------------------------------------------------------

/// One message to append: the `From ` line and trace headers (the first
/// `Return-Path:`), then the already quoted body; `id` goes into the seal
/// (and so becomes the POP3 UIDL).
#[derive(Debug)]
pub struct Delivery {
    pub id: String,
    pub prefix: Vec<u8>,
    pub body: Body,
}

/// Where a message's quoted body waits for the writer.
#[derive(Debug)]
pub enum Body {
    /// A spool file (the caller removes it once the append returned).
    Spool(PathBuf),
    /// A small body kept in memory: at most [`SMALL_BODY`] bytes, so a
    /// session's memory stays bounded whatever the message's size. Most
    /// mail is this small, and skipping the spool file saves the file's
    /// creation, two reads and its removal per message: a third of the
    /// server's CPU per accepted message (issue 15).
    Memory(Vec<u8>),
}

/// The largest body kept in memory instead of a spool file.
pub const SMALL_BODY: usize = 64 * 1024;

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
    /// Notified after each append and rewrite, once the lock is released:
    /// IMAP IDLE sessions listen (RFC 2177: new mail pushed at once).
    changed: std::sync::Arc<event_listener::Event>,
}

impl MboxWriter {
    /// Repairs what a crash may have left, then starts the writer thread.
    pub fn start(mbox: &Path, data_dir: &Path) -> Result<MboxWriter, MboxError> {
        Self::start_with(mbox, data_dir, None)
    }

    /// [`MboxWriter::start`], with `after` called after each commit (the
    /// IMAP side's indexer: [`AfterAppend`]).
    pub fn start_with(
        mbox: &Path,
        data_dir: &Path,
        after: Option<AfterAppend>,
    ) -> Result<MboxWriter, MboxError> {
        if let Some(parent) = mbox.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| MboxError::io(format!("cannot create {}", parent.display()), e))?;
        }
        let jpath = data_dir.join("mbox.journal");
        let journal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&jpath)
            .map_err(|e| MboxError::io(format!("cannot open {}", jpath.display()), e))?;
        clean_lock_temps(mbox);
        let state = {
            let locked = lock(mbox)?;
            recover(&journal, &locked.file, mbox)?
        };
        let (tx, rx) = mpsc::channel();
        let path = mbox.to_path_buf();
        let p = path.clone();
        let dir = data_dir.to_path_buf();
        std::thread::Builder::new()
            .name("mbox-writer".into())
            .spawn(move || writer_loop(rx, journal, p, dir, state, after))
            .map_err(|e| MboxError::io("cannot start mbox writer thread", e))?;
        Ok(MboxWriter {
            tx,
            path,
            changed: std::sync::Arc::new(event_listener::Event::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves at the next change this writer makes to the mbox (an
    /// append acknowledged, a rewrite finished): listen before looking
    /// at the file, so that no change falls between.
    pub fn listen(&self) -> event_listener::EventListener {
        self.changed.listen()
    }

    /// Appends one message; returns once it is fsynced (or failed and was
    /// rolled back).
    pub async fn append(&self, d: Delivery) -> Result<(), MboxError> {
        let (reply, rx) = smol::channel::bounded(1);
        self.tx
            .send(Job::Append(d, reply))
            .map_err(|_| MboxError::Stopped)?;
        let r = rx.recv().await.unwrap_or(Err(MboxError::Stopped));
        if r.is_ok() {
            self.changed.notify(usize::MAX);
        }
        r
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
        let r = rx.recv().await.unwrap_or(Err(MboxError::Stopped));
        self.changed.notify(usize::MAX);
        r
    }
}

fn writer_loop(
    rx: mpsc::Receiver<Job>,
    journal: File,
    path: PathBuf,
    dir: PathBuf,
    mut st: SealState,
    after: Option<AfterAppend>,
) {
    let after = after.map(|h| (dir.as_path(), h));
    while let Ok(first) = rx.recv() {
        // Group commit: take every append already waiting.
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append(d, reply) => batch.push((d, reply)),
                Job::Exclusive(f) => {
                    run_batch(&journal, &path, after, &mut st, std::mem::take(&mut batch));
                    match lock(&path) {
                        Ok(locked) => {
                            // A rewrite may shrink the mbox below the
                            // offset recorded: the record must be current
                            // and durable first.
                            if let Err(e) = before_rewrite(&journal, &locked.file, &mut st) {
                                log::error!("cannot write mbox journal: {e}");
                                drop(f);
                            } else {
                                f(locked);
                            }
                        }
                        Err(e) => {
                            log::error!("cannot lock {}: {e}", path.display());
                            drop(f); // the caller sees the channel closed
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        run_batch(&journal, &path, after, &mut st, batch);
    }
}

fn run_batch(
    journal: &File,
    path: &Path,
    after: Option<(&Path, AfterAppend)>,
    st: &mut SealState,
    batch: Vec<(Delivery, smol::channel::Sender<Result<(), MboxError>>)>,
) {
    if batch.is_empty() {
        return;
    }
    let (deliveries, replies): (Vec<Delivery>, Vec<_>) = batch.into_iter().unzip();
    let items: Vec<&Delivery> = deliveries.iter().collect();
    let mut send = |result: &Result<(), MboxError>| reply_all(&replies, result);
    append_all_indexed(journal, path, st, &items, after, &mut send);
}

/// Tells each sender how its append went.
fn reply_all(
    replies: &[smol::channel::Sender<Result<(), MboxError>>],
    result: &Result<(), MboxError>,
) {
    for reply in replies {
        let r = match result {
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

/// What the writer appended in one commit, for the [`AfterAppend`]
/// hook: the mbox grew from `from` to `to` with our sealed messages
/// alone; `continues`: nothing changed it since our previous commit (no
/// other program's append or rewrite in between). The locks are already
/// released: another program may change the file meanwhile (the hook
/// checks that it did not).
pub struct Appended<'a> {
    pub mbox: &'a File,
    /// The writer's state directory (where its journal is).
    pub dir: &'a Path,
    pub from: u64,
    pub to: u64,
    pub continues: bool,
}

/// Called on the writer thread after each commit's fsync, before the
/// replies (so it must only hand the work on): the IMAP side indexes what
/// was appended
/// (`read::imap::store::index_appended`), so that mail pimail delivered
/// needs no scan at the first SELECT. A cache: it must not fail the
/// append, and is not flushed.
pub type AfterAppend = fn(&Appended);

/// Appends all `items` as one unit: all are stored and fsynced, or none.
pub fn append_all(
    journal: &File,
    path: &Path,
    st: &mut SealState,
    items: &[&Delivery],
) -> Result<(), MboxError> {
    append_locked(journal, path, st, items).map(|_| ())
}

/// [`append_all`]; the locks are released, the [`AfterAppend`] hook runs
/// for the writer of `dir` (it must be quick: IMAP's hands the work to
/// its indexer thread), then `done` gets the result (the senders'
/// replies: an IMAP session looking at once finds the mail).
fn append_all_indexed(
    journal: &File,
    path: &Path,
    st: &mut SealState,
    items: &[&Delivery],
    after: Option<(&Path, AfterAppend)>,
    done: &mut dyn FnMut(&Result<(), MboxError>),
) {
    let r = append_locked(journal, path, st, items);
    match r {
        Ok((locked, before, continues)) => {
            let to = Disk::len(&locked.file).unwrap_or(before);
            let file = locked.file.try_clone();
            // Unlocked before the replies: a session woken by one
            // (`listen`) must find the file free to read.
            drop(locked);
            // The hook before the replies (it only hands the work on): a
            // stop right after a 250 still finds it queued.
            if let (Some((dir, hook)), Ok(file)) = (after, file) {
                hook(&Appended {
                    mbox: &file,
                    dir,
                    from: before,
                    to,
                    continues,
                });
            }
            done(&Ok(()));
        }
        Err(e) => done(&Err(e)),
    }
}

/// The append, the locks kept; with the mbox length before it and
/// whether nothing changed the mbox since our previous commit.
fn append_locked(
    journal: &File,
    path: &Path,
    st: &mut SealState,
    items: &[&Delivery],
) -> Result<(Locked, u64, bool), MboxError> {
    let locked = lock(path)?;
    if st.dirty {
        *st = recover(journal, &locked.file, path)?;
    }
    let mut spools = Vec::with_capacity(items.len());
    for d in items {
        if let Body::Spool(path) = &d.body {
            let f = File::open(path)
                .map_err(|e| MboxError::io(format!("cannot open {}", path.display()), e))?;
            spools.push(f);
        }
    }
    let mut files = spools.iter();
    let mut batch: Vec<Item> = Vec::with_capacity(items.len());
    for d in items {
        let body: &dyn Disk = match &d.body {
            Body::Memory(v) => v,
            Body::Spool(_) => match files.next() {
                Some(f) => f,
                None => return Err(MboxError::Stopped),
            },
        };
        batch.push(Item {
            id: &d.id,
            prefix: &d.prefix,
            body,
        });
    }
    let before = Disk::version(&locked.file).ok();
    let continues = before.is_some() && st.last == before;
    append_batch(journal, &locked.file, st, &batch, path)?;
    drop(batch);
    drop(spools);
    let from = before.map_or(u64::MAX, |v| v.len);
    // Unknown length before: no hook (`from` past any end covers nothing).
    Ok((locked, from, continues && from != u64::MAX))
}

/// One message for [`append_batch`].
pub struct Item<'a> {
    pub id: &'a str,
    pub prefix: &'a [u8],
    pub body: &'a dyn Disk,
}

/// Splits a prefix into what goes before the seal (the `From ` line and a
/// first `Return-Path:`) and after it.
fn split_prefix(prefix: &[u8]) -> (&[u8], &[u8]) {
    let line_end =
        |from: usize| memchr::memchr(b'\n', &prefix[from..]).map_or(prefix.len(), |p| from + p + 1);
    let mut at = line_end(0);
    if prefix[at..].starts_with(b"Return-Path:") {
        at = line_end(at);
    }
    prefix.split_at(at)
}

const WRITE_CHUNK: usize = 64 * 1024;

/// The core of an append, on any [`Disk`]: seals, journal record (fsynced
/// only if the mbox changed since our last append), data, one fsync.
pub fn append_batch(
    journal: &dyn Disk,
    mbox: &dyn Disk,
    st: &mut SealState,
    items: &[Item],
    path: &Path,
) -> Result<(), MboxError> {
    let rd = |e| MboxError::io(format!("cannot read {}", path.display()), e);
    let version = mbox.version().map_err(rd)?;
    let old = version.len;
    // A foreign mbox whose last message lacks the blank separator line:
    // add it, so our `From ` line starts a new message.
    let mut sep: &[u8] = b"";
    if old > 0 {
        let mut tail = [0u8; 2];
        let n = if old >= 2 { 2 } else { 1 };
        mbox.read_exact_at(&mut tail[..n], old - n as u64)
            .map_err(rd)?;
        let t = &tail[..n];
        sep = if t.ends_with(b"\n\n") || (old == 1 && t == b"\n") {
            b""
        } else if t.ends_with(b"\n") {
            b"\n"
        } else {
            b"\n\n"
        };
    }
    // Seal each message: one pass over its body for the checksum (the
    // spool file is in the page cache; the copy below reads it again).
    let mut seals = Vec::with_capacity(items.len());
    let mut buf = vec![0u8; WRITE_CHUNK];
    for (k, it) in items.iter().enumerate() {
        let (_, after) = split_prefix(it.prefix);
        let body_len = it
            .body
            .len()
            .map_err(|e| MboxError::io("cannot stat spool file", e))?;
        let mut h = Fnv::new();
        h.feed(after);
        let mut at = 0;
        while at < body_len {
            let n = ((body_len - at) as usize).min(buf.len());
            it.body
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| MboxError::io("cannot read spool file", e))?;
            h.feed(&buf[..n]);
            at += n as u64;
        }
        h.feed(b"\n");
        seals.push(Seal {
            id: it.id.to_string(),
            uid: st.next_uid + k as u64,
            len: after.len() as u64 + body_len + 1,
            sum: h.0,
        });
    }
    let next_uid = st.next_uid + items.len() as u64;
    let fresh = st.last == Some(version);
    journal
        .write_all_at(&journal_record(old, next_uid), 0)
        .and_then(|_| if fresh { Ok(()) } else { journal.sync_data() })
        .map_err(|e| MboxError::io("cannot write mbox journal", e))?;
    let written = (|| -> io::Result<()> {
        let mut pos = old;
        let mut out: Vec<u8> = Vec::with_capacity(WRITE_CHUNK * 2);
        let flush = |out: &mut Vec<u8>, pos: &mut u64, force: bool| -> io::Result<()> {
            if out.len() >= WRITE_CHUNK || (force && !out.is_empty()) {
                mbox.write_all_at(out, *pos)?;
                *pos += out.len() as u64;
                out.clear();
            }
            Ok(())
        };
        out.extend_from_slice(sep);
        for (it, seal) in items.iter().zip(&seals) {
            let (before, after) = split_prefix(it.prefix);
            out.extend_from_slice(before);
            out.extend_from_slice(seal.line().as_bytes());
            out.extend_from_slice(after);
            let body_len = seal.len - after.len() as u64 - 1;
            let mut at = 0;
            while at < body_len {
                let n = ((body_len - at) as usize).min(buf.len());
                it.body.read_exact_at(&mut buf[..n], at)?;
                out.extend_from_slice(&buf[..n]);
                at += n as u64;
                flush(&mut out, &mut pos, false)?;
            }
            out.push(b'\n');
            flush(&mut out, &mut pos, false)?;
        }
        flush(&mut out, &mut pos, true)?;
        mbox.sync_data()
    })();
    if let Err(e) = written {
        // Roll back so the mbox never holds a partial message.
        let undo = mbox.set_len(old).and_then(|_| mbox.sync_data());
        if let Err(u) = undo {
            log::error!("{}: cannot roll back a failed append: {u}", path.display());
            st.dirty = true;
        }
        st.last = None;
        return Err(MboxError::io(
            format!("cannot append to {}", path.display()),
            e,
        ));
    }
    st.next_uid = next_uid;
    st.last = mbox.version().ok();
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

    #[test]
    fn lock_temps_of_dead_processes_go_and_symlinks_are_refused() {
        let d = tmp("temps");
        let mbox = d.join("mbox");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = d.join(format!("mbox.lock.{dead}.3"));
        let live = d.join(format!("mbox.lock.{}.9", std::process::id()));
        let other = d.join(format!("other.lock.{dead}.3"));
        for p in [&stale, &live, &other] {
            std::fs::write(p, "x").unwrap();
        }
        clean_lock_temps(&mbox);
        assert!(!stale.exists() && live.exists() && other.exists());
        // A symlink planted as the mbox: not followed.
        let target = d.join("elsewhere");
        std::os::unix::fs::symlink(&target, &mbox).unwrap();
        assert!(lock(&mbox).is_err());
        assert!(!target.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn delivery(dir: &Path, name: &str, body: &[u8]) -> Delivery {
        let spool = dir.join(name);
        std::fs::write(&spool, body).unwrap();
        Delivery {
            id: format!("ID{name}"),
            prefix: from_line("bob@example.com", 0).into_bytes(),
            body: Body::Spool(spool),
        }
    }

    fn journal(d: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(d.join("j"))
            .unwrap()
    }

    /// The mbox text with the seal lines' checksums masked.
    fn masked(text: &str) -> String {
        text.lines()
            .map(|l| match l.find(" sum=") {
                Some(i) if l.starts_with("X-Pimail: ") => format!("{} sum=*", &l[..i]),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn append_creates_0600_seals_and_separates_messages() {
        let d = tmp("append");
        let mbox = d.join("mbox");
        let j = journal(&d);
        let a = delivery(&d, "a", b"Subject: a\n\none\n");
        let b = delivery(&d, "b", b"Subject: b\n\ntwo\n");
        let mut st = recover(&j, &File::open(d.join("a")).unwrap(), &mbox).unwrap();
        st.next_uid = 1;
        st.last = None;
        append_all(&j, &mbox, &mut st, &[&a, &b]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&mbox).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&mbox).unwrap();
        assert_eq!(
            masked(&text),
            masked(
                "From bob@example.com Thu Jan  1 00:00:00 1970\nX-Pimail: id=IDa uid=1 len=17 sum=0\nSubject: a\n\none\n\n\
                 From bob@example.com Thu Jan  1 00:00:00 1970\nX-Pimail: id=IDb uid=2 len=17 sum=0\nSubject: b\n\ntwo\n\n"
            )
        );
        assert!(!dotlock_path(&mbox).exists());
        // Both verify.
        let f = File::open(&mbox).unwrap();
        assert_eq!(walk(&f, 0).unwrap(), (None, 2));
        // A foreign mbox without the final blank line gets one first.
        std::fs::write(&mbox, "From x Thu Jan  1 00:00:00 1970\nbody").unwrap();
        append_all(&j, &mbox, &mut st, &[&a]).unwrap();
        let text = std::fs::read_to_string(&mbox).unwrap();
        assert!(
            text.starts_with("From x Thu Jan  1 00:00:00 1970\nbody\n\nFrom bob"),
            "{text}"
        );
        assert!(text.contains("uid=3 "), "{text}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bodies_in_memory_and_in_spool_files_append_alike_in_order() {
        let d = tmp("membody");
        let mbox = d.join("mbox");
        let j = journal(&d);
        let a = delivery(&d, "a", b"Subject: a\n\none\n");
        let m = Delivery {
            id: "IDm".into(),
            prefix: from_line("bob@example.com", 0).into_bytes(),
            body: Body::Memory(b"Subject: a\n\none\n".to_vec()),
        };
        let mut st = recover(&j, &File::open(d.join("a")).unwrap(), &mbox).unwrap();
        st.next_uid = 1;
        st.last = None;
        append_all(&j, &mbox, &mut st, &[&m, &a, &m]).unwrap();
        let text = std::fs::read_to_string(&mbox).unwrap();
        let one = |id: &str, uid: u32| {
            format!("From bob@example.com Thu Jan  1 00:00:00 1970\nX-Pimail: id={id} uid={uid} len=17 sum=0\nSubject: a\n\none\n\n")
        };
        assert_eq!(
            masked(&text),
            masked(&(one("IDm", 1) + &one("IDa", 2) + &one("IDm", 3)))
        );
        // The same seal sum whichever way the body came.
        let sums: Vec<&str> = text.lines().filter(|l| l.starts_with("X-Pimail")).collect();
        assert_eq!(sums[0].rsplit(' ').next(), sums[1].rsplit(' ').next());
        let f = File::open(&mbox).unwrap();
        assert_eq!(walk(&f, 0).unwrap(), (None, 3));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn recovery_cuts_torn_append_only() {
        let d = tmp("recover");
        let mbox = d.join("mbox");
        let j = journal(&d);
        let good = "From a Thu Jan  1 00:00:00 1970\nx\n\n";
        std::fs::write(&mbox, good).unwrap();
        let a = delivery(&d, "a", b"Subject: a\n\none\n");
        let mut st = {
            let f = File::options().read(true).write(true).open(&mbox).unwrap();
            recover(&j, &f, &mbox).unwrap()
        };
        append_all(&j, &mbox, &mut st, &[&a]).unwrap();
        let whole = std::fs::read(&mbox).unwrap();
        let rec = |bytes: &[u8]| {
            std::fs::write(&mbox, bytes).unwrap();
            let f = File::options().read(true).write(true).open(&mbox).unwrap();
            let st = recover(&j, &f, &mbox).unwrap();
            // Back to the record before the append, as a crash leaves it.
            j.write_all_at(&journal_record(good.len() as u64, 1), 0)
                .unwrap();
            (std::fs::read(&mbox).unwrap(), st.next_uid)
        };
        j.write_all_at(&journal_record(good.len() as u64, 1), 0)
            .unwrap();
        // Whole: kept.
        assert_eq!(rec(&whole), (whole.clone(), 2));
        // Cut at every length, or a block zeroed: back to the old mbox.
        for cut in good.len() + 1..whole.len() {
            assert_eq!(rec(&whole[..cut]).0, good.as_bytes(), "cut at {cut}");
        }
        let mut zeroed = whole.clone();
        for b in &mut zeroed[good.len() + 40..good.len() + 44] {
            *b = 0;
        }
        assert_eq!(rec(&zeroed).0, good.as_bytes());
        // Changed by a mail reader (a Status: line): not ours to cut.
        let text = String::from_utf8(whole.clone()).unwrap();
        let edited = text.replace("Subject: a\n", "Subject: a\nStatus: RO\n");
        assert_eq!(rec(edited.as_bytes()).0, edited.as_bytes());
        // Rewritten shorter by another program: left alone.
        assert_eq!(rec(b"From z Thu\n\n").0, b"From z Thu\n\n");
        // A legacy record (before seals) still cuts a torn append.
        std::fs::write(&mbox, format!("{good}From b Thu Jan  1 00:0")).unwrap();
        let mut legacy = [b' '; 64];
        let l = format!("pending {} {}", good.len(), good.len() + 40);
        legacy[..l.len()].copy_from_slice(l.as_bytes());
        j.write_all_at(&legacy, 0).unwrap();
        let f = File::options().read(true).write(true).open(&mbox).unwrap();
        recover(&j, &f, &mbox).unwrap();
        assert_eq!(std::fs::read_to_string(&mbox).unwrap(), good);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn seal_and_status_fields_are_stripped_from_received_mail() {
        let input = b"Subject: x\nX-Pimail: id=EVIL uid=1 len=1 sum=0000000000000000\n\tmore\nx-pimail : y\nStatus: RO\nTo: a\nX-Status: AF\nStatusbar: kept\n\nX-Pimail: body\nStatus: RO\nFrom b\n";
        let want = b"Subject: x\nTo: a\nStatusbar: kept\n\nX-Pimail: body\nStatus: RO\n>From b\n";
        for chunk in 1..input.len() {
            let mut q = Quoter::for_received_mail();
            let mut out = Vec::new();
            for c in input.chunks(chunk) {
                q.feed(c, &mut out);
            }
            q.finish(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn seal_lines_round_trip() {
        let s = Seal {
            id: "0000ABCD00000001".into(),
            uid: 7,
            len: 99,
            sum: 0xdead,
        };
        assert_eq!(
            s.line(),
            "X-Pimail: id=0000ABCD00000001 uid=7 len=99 sum=000000000000dead\n"
        );
        assert_eq!(Seal::parse(s.line().as_bytes()), Some(s));
        assert_eq!(
            Seal::parse(b"X-Pimail: id=a b uid=1 len=1 sum=0000000000000000"),
            None
        );
        assert_eq!(
            Seal::parse(b"X-Pimail: id=(x) uid=1 len=1 sum=0000000000000000"),
            None
        );
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
