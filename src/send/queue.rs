//! The durable outbound queue: one message is two files in
//! `<data_dir>/queue`, `<id>.msg` (the body, mboxrd-quoted with LF line
//! ends, exactly like a spool file, so local recipients can be appended to
//! the mbox from it) and `<id>.env` (the envelope and the state of each
//! recipient, as text a person can read with `less`).
//!
//! Nothing lost (SPEC "Principles", RFC 5321 6.1): the body is linked or
//! copied into the queue and fsynced, then the `.env` file is written to a
//! temp file, fsynced, renamed and the directory fsynced; only then does the
//! caller say `250`: 3 flushes per message, the least that is safe for two
//! files with new data and two new names in one directory (docs/outbound.md
//! has the reasoning; `queue_crash.rs` replays every crash state and finds
//! lost mail with either flush removed). A `.msg` without a `.env`, or a
//! `.env` without its `.msg` (the rename survived the crash, the link did
//! not), was never acknowledged and is removed at start. File operations go
//! through [`crate::store::disk::Fs`], so the explorer can record them. State updates rewrite the `.env` the same way, so a
//! crash leaves the old or the new state, never a torn one; a crash between
//! a remote `250` and the state update delivers that recipient twice, which
//! RFC 5321 prefers to losing it.
//!
//! The retry policy is a pure function of the attempt count
//! ([`retry_delay`]), and giving up is a pure function of the age
//! ([`expired`]), so both are tested without a clock.

use crate::mail::address::{parse_mailbox, Address};
use crate::store::disk::{write_atomic, Disk, Fs, RealFs, Writer};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// First line of every `.env` file: the format and its version.
const MAGIC: &str = "pimail-queue 1";

#[derive(Debug)]
pub enum QueueError {
    Io {
        context: String,
        source: io::Error,
    },
    /// A `.env` file we cannot read back: names the file and line.
    Corrupt(String),
    /// `queue delete` of an id that is not queued.
    NotFound(String),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Io { context, source } => write!(f, "{context}: {source}"),
            QueueError::Corrupt(s) => write!(f, "corrupt queue file: {s}"),
            QueueError::NotFound(id) => write!(f, "no queued message with id {id}"),
        }
    }
}

impl std::error::Error for QueueError {}

impl QueueError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        QueueError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, QueueError::Io { source, .. } if crate::store::mbox::is_disk_full(source))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Delivered,
    /// Failed permanently (5xx, null MX, or `bounce_after`); the bounce for
    /// it has been sent when this is on disk.
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    pub addr: Address,
    /// For the user's mbox rather than a remote server.
    pub local: bool,
    pub state: State,
    pub attempts: u32,
    /// Unix time of the next attempt (pending only).
    pub next: u64,
    /// The last error, or the remote reply on delivery; one line.
    pub last: String,
}

/// One queued message's envelope and recipient states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    /// `None`: the null sender (a bounce).
    pub from: Option<Address>,
    /// Unix time it was queued.
    pub created: u64,
    /// Body size in bytes (as stored).
    pub size: u64,
    pub smtputf8: bool,
    /// Trace header lines to send before the body (our `Received:`), one
    /// physical line each, without the LF.
    pub headers: Vec<String>,
    pub rcpts: Vec<Rcpt>,
    /// The sender has been sent a "delayed" notice (`[outbound]
    /// warn_after`); it is sent once per message.
    pub warned: bool,
}

impl Entry {
    pub fn new(id: &str, from: Option<Address>, created: u64, size: u64) -> Entry {
        Entry {
            id: id.to_string(),
            from,
            created,
            size,
            smtputf8: false,
            headers: Vec::new(),
            rcpts: Vec::new(),
            warned: false,
        }
    }

    pub fn add_rcpt(&mut self, addr: Address, local: bool) {
        // The same address twice (To and Cc) is delivered once.
        if self.rcpts.iter().any(|r| r.addr == addr) {
            return;
        }
        self.rcpts.push(Rcpt {
            addr,
            local,
            state: State::Pending,
            attempts: 0,
            next: self.created,
            last: String::new(),
        });
    }

    pub fn sender(&self) -> String {
        self.from
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    pub fn pending(&self) -> impl Iterator<Item = &Rcpt> {
        self.rcpts.iter().filter(|r| r.state == State::Pending)
    }

    /// Is every recipient done (delivered or failed and bounced)?
    pub fn finished(&self) -> bool {
        self.pending().next().is_none()
    }

    /// The earliest next attempt among pending recipients.
    pub fn next_attempt(&self) -> Option<u64> {
        self.pending().map(|r| r.next).min()
    }

    /// The `.env` file's text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{MAGIC}");
        let _ = writeln!(s, "id {}", self.id);
        let _ = writeln!(s, "from <{}>", self.sender());
        let _ = writeln!(s, "created {}", self.created);
        let _ = writeln!(s, "size {}", self.size);
        let _ = writeln!(s, "smtputf8 {}", u8::from(self.smtputf8));
        if self.warned {
            let _ = writeln!(s, "warned 1");
        }
        for h in &self.headers {
            let _ = writeln!(s, "header {}", one_line_keep_tab(h));
        }
        for r in &self.rcpts {
            // Tab-separated: the reply text may contain spaces.
            let _ = writeln!(
                s,
                "rcpt\t<{}>\t{}\t{}\t{}\t{}\t{}",
                r.addr,
                if r.local { "local" } else { "remote" },
                r.state.as_str(),
                r.attempts,
                r.next,
                one_line(&r.last)
            );
        }
        s
    }

    /// Parses a `.env` file's text; `name` is for error messages.
    pub fn decode(text: &str, name: &str) -> Result<Entry, QueueError> {
        let corrupt = |n: usize, what: &str| QueueError::Corrupt(format!("{name}:{n}: {what}"));
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, MAGIC)) => {}
            _ => return Err(corrupt(1, "not a pimail queue file")),
        }
        let mut e = Entry::new("", None, 0, 0);
        for (n, line) in lines {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("rcpt\t") {
                let f: Vec<&str> = rest.splitn(6, '\t').collect();
                if f.len() != 6 {
                    return Err(corrupt(n, "rcpt needs 6 fields"));
                }
                let addr = parse_addr(f[0]).ok_or_else(|| corrupt(n, "bad recipient"))?;
                let addr = addr.ok_or_else(|| corrupt(n, "empty recipient"))?;
                let state = match f[2] {
                    "pending" => State::Pending,
                    "delivered" => State::Delivered,
                    "failed" => State::Failed,
                    _ => return Err(corrupt(n, "bad state")),
                };
                e.rcpts.push(Rcpt {
                    addr,
                    local: f[1] == "local",
                    state,
                    attempts: f[3].parse().map_err(|_| corrupt(n, "bad attempts"))?,
                    next: f[4].parse().map_err(|_| corrupt(n, "bad next"))?,
                    last: f[5].to_string(),
                });
                continue;
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "id" => e.id = value.to_string(),
                "from" => e.from = parse_addr(value).ok_or_else(|| corrupt(n, "bad sender"))?,
                "created" => e.created = value.parse().map_err(|_| corrupt(n, "bad created"))?,
                "size" => e.size = value.parse().map_err(|_| corrupt(n, "bad size"))?,
                "smtputf8" => e.smtputf8 = value == "1",
                "warned" => e.warned = value == "1",
                "header" => e.headers.push(value.to_string()),
                // Unknown keys from a newer version: keep going.
                _ => {}
            }
        }
        if e.id.is_empty() || !valid_id(&e.id) {
            return Err(corrupt(0, "missing or bad id"));
        }
        Ok(e)
    }
}

/// `<a@b>` -> Some(Some(a@b)); `<>` -> Some(None); garbage -> None.
fn parse_addr(s: &str) -> Option<Option<Address>> {
    let inner = s.strip_prefix('<')?.strip_suffix('>')?;
    if inner.is_empty() {
        return Some(None);
    }
    parse_mailbox(inner, true).ok().map(Some)
}

/// Reply texts go on one line of the `.env` file.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect()
}

/// A header line keeps its folding tab; other controls go.
fn one_line_keep_tab(s: &str) -> String {
    s.chars()
        .filter(|&c| c == '\t' || !c.is_control())
        .collect()
}

/// The trace header lines as bytes to send before the body.
pub fn header_bytes(lines: &[String]) -> Vec<u8> {
    let mut v = Vec::new();
    for l in lines {
        v.extend_from_slice(l.as_bytes());
        v.push(b'\n');
    }
    v
}

/// Queue ids are what `util::rt::new_id` makes: safe in file names.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Seconds to wait after the `attempts`-th failed attempt (1-based): the
/// configured schedule, then its last interval again and again.
pub fn retry_delay(schedule: &[Duration], attempts: u32) -> Duration {
    let i = (attempts.max(1) - 1) as usize;
    schedule
        .get(i)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(300))
}

/// Is a "delayed" notice due for `e` (`warn_after`, once per message, only
/// while recipients are still pending, never for a bounce)?
pub fn warning_due(e: &Entry, now: u64, warn_after: Option<Duration>) -> bool {
    let Some(w) = warn_after else { return false };
    !e.warned && e.from.is_some() && !e.finished() && now.saturating_sub(e.created) >= w.as_secs()
}

/// Has a message queued at `created` been tried long enough (`bounce_after`)?
pub fn expired(created: u64, now: u64, bounce_after: Duration) -> bool {
    now.saturating_sub(created) >= bounce_after.as_secs()
}

/// How old an orphaned queue file must be before start-up removes it.
pub const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// The queue directory and the file operations on it.
#[derive(Clone)]
pub struct Queue {
    pub dir: PathBuf,
    /// The real file system, or the crash explorer's recorded one.
    fs: Arc<dyn Fs>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("dir", &self.dir).finish()
    }
}

impl Queue {
    pub fn new(data_dir: &Path) -> Queue {
        Queue::with_fs(data_dir, Arc::new(RealFs))
    }

    pub fn with_fs(data_dir: &Path, fs: Arc<dyn Fs>) -> Queue {
        Queue {
            dir: data_dir.join("queue"),
            fs,
        }
    }

    /// Creates the directory (private) if needed; for `sendmail`, which
    /// must not clean up after others.
    pub fn ensure_dir(&self) -> Result<(), QueueError> {
        self.fs
            .ensure_dir(&self.dir)
            .map_err(|e| QueueError::io(format!("cannot create {}", self.dir.display()), e))?;
        // Created by a root `sendmail`: it belongs to the server (the
        // owner of data_dir) all the same.
        if let Some(data_dir) = self.dir.parent() {
            adopt_owner(&self.dir, data_dir);
        }
        Ok(())
    }

    /// At server start: creates the directory and removes what a crash
    /// left: bodies without an envelope were never acknowledged, temp
    /// files are half-written state. Only files older than
    /// [`LEFTOVER_AGE`] count, because a `sendmail` running right now
    /// writes its body before its envelope.
    pub fn prepare(&self) -> Result<(), QueueError> {
        self.ensure_dir()?;
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| QueueError::io(format!("cannot read {}", self.dir.display()), e))?;
        for name in names {
            let p = self.dir.join(&name);
            // An envelope without its body is a crash before the
            // directory flush that made both names durable, so before the
            // 250: never acknowledged, like a body without an envelope.
            let orphan = if let Some(id) = name.strip_suffix(".msg") {
                !self.fs.exists(&self.env_path(id))
            } else if let Some(id) = name.strip_suffix(".env") {
                !self.fs.exists(&self.msg_path(id))
            } else {
                name.ends_with(".tmp") || name.ends_with(".part")
            };
            let old = self.fs.age(&p).is_some_and(|age| age >= LEFTOVER_AGE);
            if orphan && old {
                log::info!("queue: removing {} left by a crash", p.display());
                let _ = self.fs.remove(&p);
            }
        }
        Ok(())
    }

    pub fn msg_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    pub fn env_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.env"))
    }

    /// Queues `entry` with the body in `body` (a spool file in the same
    /// file system: hard-linked; else copied). Durable when it returns.
    /// Blocking: call it off the network thread.
    pub fn enqueue(&self, entry: &Entry, body: &Path) -> Result<(), QueueError> {
        let msg = self.msg_path(&entry.id);
        let ctx = |what: &str| format!("cannot {what} {}", msg.display());
        let fs = &*self.fs;
        let linked = fs.hard_link(body, &msg).is_ok();
        let r = (|| {
            // Linked: the spool file's data (written without a flush) is
            // flushed here. Copied: written and flushed under a temp name.
            let part = self.dir.join(format!("{}.part", entry.id));
            let f = if linked {
                fs.open(&msg, false)
            } else {
                (|| {
                    let src = fs.open(body, false)?;
                    let f = fs.create(&part, false)?;
                    copy(&*src, &*f)?;
                    Ok(f)
                })()
            }
            .map_err(|e| QueueError::io(ctx("write"), e))?;
            f.sync_data().map_err(|e| QueueError::io(ctx("sync"), e))?;
            if !linked {
                fs.rename(&part, &msg)
                    .map_err(|e| QueueError::io(ctx("write"), e))?;
            }
            // The .env's directory flush also makes the .msg name durable.
            self.save(entry)
        })();
        if r.is_err() {
            let _ = fs.remove(&msg);
            let _ = fs.remove(&self.dir.join(format!("{}.part", entry.id)));
        }
        r
    }

    /// Queues a message whose body the caller writes through `write`
    /// (quoted, LF line ends): bounces and `sendmail`.
    pub fn enqueue_with(
        &self,
        entry: &mut Entry,
        write: impl FnOnce(&mut dyn io::Write) -> io::Result<u64>,
    ) -> Result<(), QueueError> {
        let part = self.dir.join(format!("{}.part", entry.id));
        let ctx = |what: &str| format!("cannot {what} {}", part.display());
        let fs = &*self.fs;
        let r = (|| {
            let f = fs
                .create(&part, true)
                .map_err(|e| QueueError::io(ctx("create"), e))?;
            let mut w = io::BufWriter::new(Writer { disk: &*f, at: 0 });
            entry.size = write(&mut w).map_err(|e| QueueError::io(ctx("write"), e))?;
            io::Write::flush(&mut w).map_err(|e| QueueError::io(ctx("write"), e))?;
            drop(w);
            f.sync_data().map_err(|e| QueueError::io(ctx("sync"), e))?;
            adopt_owner(&part, &self.dir);
            fs.rename(&part, &self.msg_path(&entry.id))
                .map_err(|e| QueueError::io(ctx("rename"), e))?;
            self.save(entry)
        })();
        if r.is_err() {
            let _ = fs.remove(&part);
            let _ = fs.remove(&self.msg_path(&entry.id));
        }
        r
    }

    /// Writes the `.env` file durably (temp, fsync, rename, fsync dir).
    pub fn save(&self, entry: &Entry) -> Result<(), QueueError> {
        let path = self.env_path(&entry.id);
        write_atomic(&*self.fs, &path, entry.encode().as_bytes())
            .map_err(|e| QueueError::io(format!("cannot write {}", path.display()), e))?;
        adopt_owner(&path, &self.dir);
        Ok(())
    }

    /// Saves new state of a message being delivered, unless `queue delete`
    /// removed it meanwhile (then it stays deleted).
    pub fn update(&self, entry: &Entry) -> Result<(), QueueError> {
        if !self.fs.exists(&self.env_path(&entry.id)) {
            return Ok(());
        }
        if entry.finished() {
            return self.remove(&entry.id);
        }
        self.save(entry)
    }

    pub fn load(&self, id: &str) -> Result<Entry, QueueError> {
        if !valid_id(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        let path = self.env_path(id);
        let text = self.fs.read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                QueueError::NotFound(id.to_string())
            } else {
                QueueError::io(format!("cannot read {}", path.display()), e)
            }
        })?;
        let text = String::from_utf8(text)
            .map_err(|_| QueueError::Corrupt(format!("{}: not UTF-8", path.display())))?;
        Entry::decode(&text, &path.display().to_string())
    }

    /// Every queued message, oldest first. Unreadable files are logged and
    /// skipped (left in place for a person to look at).
    pub fn list(&self) -> Result<Vec<Entry>, QueueError> {
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| QueueError::io(format!("cannot read {}", self.dir.display()), e))?;
        let mut ids: Vec<String> = names
            .into_iter()
            .filter_map(|n| n.strip_suffix(".env").map(|s| s.to_string()))
            .filter(|id| valid_id(id))
            .collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.load(&id) {
                Ok(e) => out.push(e),
                Err(QueueError::NotFound(_)) => {}
                Err(e) => log::error!("queue: {e}"),
            }
        }
        Ok(out)
    }

    /// Removes a message: the `.env` first, so that a crash in between
    /// leaves an orphan body (cleaned at start), never an envelope without
    /// a body.
    pub fn remove(&self, id: &str) -> Result<(), QueueError> {
        if !valid_id(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        let env = self.env_path(id);
        match self.fs.remove(&env) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(QueueError::NotFound(id.to_string()))
            }
            Err(e) => {
                return Err(QueueError::io(
                    format!("cannot remove {}", env.display()),
                    e,
                ))
            }
        }
        let _ = self.fs.remove(&self.msg_path(id));
        let _ = self.fs.sync_dir(&self.dir);
        Ok(())
    }
}

/// Copies a whole file.
fn copy(from: &dyn Disk, to: &dyn Disk) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        let n = from.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
}

/// When `sendmail` runs as root (cron) and the server as its own user, the
/// files must belong to the server: give them the queue directory's owner.
fn adopt_owner(path: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(d), Ok(f)) = (std::fs::metadata(dir), std::fs::metadata(path)) {
        if d.uid() != f.uid() || d.gid() != f.gid() {
            let _ = std::os::unix::fs::chown(path, Some(d.uid()), Some(d.gid()));
        }
    }
}

/// `3d 4h`, `5m 10s`, `0s`: ages and waits for `queue list`.
pub fn fmt_age(secs: u64) -> String {
    let units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (u, n) in units {
        if rest >= n || (parts.is_empty() && n == 1) {
            parts.push(format!("{}{u}", rest / n));
            rest %= n;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// `pimail queue list`'s text: per message an unindented line starting
/// with the id, then indented details.
pub fn list_text(entries: &[Entry], now: u64) -> String {
    list_text_routed(entries, now, None)
}

/// [`list_text`] with a `route:` line per message: `route` is the
/// worker's current route (`direct`, or `relay host:port ...`, from
/// `<data_dir>/outbound.status`).
pub fn list_text_routed(entries: &[Entry], now: u64, route: Option<&str>) -> String {
    let mut s = String::new();
    for e in entries {
        let pending = e.pending().count();
        let _ = writeln!(
            s,
            "{}  <{}>  {} recipient(s), {} pending",
            e.id,
            e.sender(),
            e.rcpts.len(),
            pending
        );
        let _ = writeln!(s, "    sender: <{}>", e.sender());
        let _ = writeln!(s, "    size: {} bytes", e.size);
        let _ = writeln!(
            s,
            "    age: {} (queued {})",
            fmt_age(now.saturating_sub(e.created)),
            crate::util::timefmt::rfc5322(e.created)
        );
        if let Some(route) = route {
            let mut domains: Vec<&str> = e
                .pending()
                .filter(|r| !r.local)
                .map(|r| r.addr.domain.as_str())
                .collect();
            domains.sort_unstable();
            domains.dedup();
            let how = if domains.is_empty() {
                "mbox".to_string()
            } else if route.starts_with("relay ") {
                route.split(" (").next().unwrap_or(route).to_string()
            } else {
                format!("direct to the MX of {}", domains.join(", "))
            };
            let _ = writeln!(s, "    route: {how}");
        }
        for r in &e.rcpts {
            let _ = writeln!(
                s,
                "    recipient: <{}> {}{}",
                r.addr,
                r.state.as_str(),
                if r.local { " (local)" } else { "" }
            );
            let _ = writeln!(s, "        attempts: {}", r.attempts);
            if !r.last.is_empty() {
                let what = if r.state == State::Delivered {
                    "result"
                } else {
                    "last error"
                };
                let _ = writeln!(s, "        {what}: {}", r.last);
            }
            if r.state == State::Pending {
                let when = if r.next <= now {
                    "now".to_string()
                } else {
                    format!("in {}", fmt_age(r.next - now))
                };
                let _ = writeln!(
                    s,
                    "        next attempt: {when} ({})",
                    crate::util::timefmt::rfc5322(r.next)
                );
            }
        }
    }
    s
}

/// The body of a queued message, for tests and bounces: its headers with
/// the mboxrd quoting undone, at most `max` bytes, LF line ends.
pub fn read_headers(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path)?;
    let mut r = io::BufReader::new(f);
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = io::Read::take(&mut r, 1001).read_until(b'\n', &mut line)?;
        if n == 0 || line == b"\n" || line == b"\r\n" {
            break;
        }
        if out.len() + line.len() > max {
            break;
        }
        out.extend_from_slice(crate::store::mbox::unquote_line(&line));
        if !line.ends_with(b"\n") {
            // An over-long line: cut here, end it, skip its rest.
            out.push(b'\n');
            let mut skip = Vec::new();
            r.read_until(b'\n', &mut skip)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        parse_mailbox(s, true).unwrap()
    }

    fn entry() -> Entry {
        let mut e = Entry::new(
            "0000ABCD00000001",
            Some(addr("alice@example.org")),
            1000,
            42,
        );
        e.add_rcpt(addr("bob@example.com"), false);
        e.add_rcpt(addr("carol@example.net"), false);
        e.add_rcpt(addr("bob@example.com"), false);
        e.add_rcpt(addr("alice@example.org"), true);
        e
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut e = entry();
        assert_eq!(e.rcpts.len(), 3, "duplicates are dropped");
        e.rcpts[0].state = State::Delivered;
        e.rcpts[0].last = "250 2.0.0 Ok\tqueued\r\nX".into();
        e.rcpts[1].attempts = 3;
        e.rcpts[1].next = 99999;
        e.smtputf8 = true;
        e.headers = vec!["Received: from x".into(), "\tby y; date".into()];
        let text = e.encode();
        assert!(text.starts_with("pimail-queue 1\nid 0000ABCD00000001\nfrom <alice@example.org>\n"));
        let d = Entry::decode(&text, "x").unwrap();
        assert_eq!(d.rcpts[0].last, "250 2.0.0 Ok queued  X");
        e.rcpts[0].last = d.rcpts[0].last.clone();
        assert_eq!(d, e);
        let mut b = Entry::new("B1", None, 5, 1);
        b.add_rcpt(addr("x@y.example"), false);
        assert_eq!(Entry::decode(&b.encode(), "x").unwrap().from, None);
    }

    #[test]
    fn decode_errors_name_the_line() {
        let text = "pimail-queue 1\nid A1\nfrom <>\nrcpt\t<bad>\tremote\tpending\t0\t0\t\n";
        let err = Entry::decode(text, "q/A1.env").unwrap_err().to_string();
        assert!(err.contains("q/A1.env:4: bad recipient"), "{err}");
        assert!(Entry::decode("hello\n", "f").is_err());
        assert!(Entry::decode("pimail-queue 1\nid ../x\n", "f").is_err());
    }

    #[test]
    fn list_shows_id_then_details() {
        let mut e = entry();
        e.rcpts[0].attempts = 2;
        e.rcpts[0].last = "451 4.7.1 later".into();
        e.rcpts[0].next = 1000 + 3600 + 300;
        let t = list_text(&[e], 1000 + 3600);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("0000ABCD00000001  <alice@example.org>"),
            "{t}"
        );
        assert!(lines[1..].iter().all(|l| l.starts_with("    ")), "{t}");
        for needle in [
            "sender: <alice@example.org>",
            "size: 42 bytes",
            "age: 1h (",
            "recipient: <bob@example.com> pending",
            "attempts: 2",
            "last error: 451 4.7.1 later",
            "next attempt: in 5m",
            "recipient: <alice@example.org> pending (local)",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
        assert_eq!(fmt_age(0), "0s");
        assert_eq!(fmt_age(90061), "1d 1h");
    }

    #[test]
    fn retry_schedule() {
        let s: Vec<Duration> = [60, 300, 900]
            .iter()
            .map(|&n| Duration::from_secs(n))
            .collect();
        let d: Vec<u64> = (1..=5).map(|a| retry_delay(&s, a).as_secs()).collect();
        assert_eq!(d, vec![60, 300, 900, 900, 900]);
        assert_eq!(retry_delay(&s, 0).as_secs(), 60);
        assert_eq!(retry_delay(&[], 3).as_secs(), 300);
        assert!(!expired(1000, 1000 + 86399, Duration::from_secs(86400)));
        assert!(expired(1000, 1000 + 86400, Duration::from_secs(86400)));
        assert!(
            !expired(1000, 10, Duration::from_secs(1)),
            "clock went back"
        );
    }

    #[test]
    fn enqueue_list_update_remove_and_crash_leftovers() {
        let dir = std::env::temp_dir().join(format!("pimail-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let q = Queue::new(&dir);
        q.prepare().unwrap();
        let spool = dir.join("spool.msg");
        std::fs::write(&spool, b"Subject: x\n\n>From here\n").unwrap();
        let mut e = entry();
        q.enqueue(&e, &spool).unwrap();
        assert_eq!(
            std::fs::read(q.msg_path(&e.id)).unwrap(),
            std::fs::read(&spool).unwrap()
        );
        assert_eq!(q.list().unwrap(), vec![e.clone()]);
        // A body without an envelope (crash before the .env) is removed.
        std::fs::write(q.msg_path("DEAD"), b"x").unwrap();
        std::fs::write(dir.join("queue/DEAD.env.tmp"), b"x").unwrap();
        // A young one may be a sendmail at work: left alone.
        q.prepare().unwrap();
        assert!(q.msg_path("DEAD").exists());
        let old = std::time::SystemTime::now() - LEFTOVER_AGE - Duration::from_secs(1);
        for p in [q.msg_path("DEAD"), dir.join("queue/DEAD.env.tmp")] {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        q.prepare().unwrap();
        assert!(!q.msg_path("DEAD").exists());
        assert!(!dir.join("queue/DEAD.env.tmp").exists());
        assert_eq!(q.list().unwrap().len(), 1);
        // Deleted while delivering: the update does not bring it back.
        q.remove(&e.id).unwrap();
        e.rcpts[1].attempts = 1;
        q.update(&e).unwrap();
        assert!(q.list().unwrap().is_empty());
        assert!(matches!(q.remove(&e.id), Err(QueueError::NotFound(_))));
        assert!(matches!(q.remove("../etc"), Err(QueueError::NotFound(_))));
        // Finished messages leave the queue.
        q.enqueue(&e, &spool).unwrap();
        for r in &mut e.rcpts {
            r.state = State::Delivered;
        }
        q.update(&e).unwrap();
        assert!(!q.env_path(&e.id).exists() && !q.msg_path(&e.id).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn headers_are_read_unquoted_and_bounded() {
        let dir = std::env::temp_dir().join(format!("pimail-qh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m");
        std::fs::write(&p, b"Subject: a\n>From b\n\nbody\n").unwrap();
        assert_eq!(read_headers(&p, 1000).unwrap(), b"Subject: a\nFrom b\n");
        assert_eq!(read_headers(&p, 12).unwrap(), b"Subject: a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
