//! The POP3 view of the mbox: where each message is, its size as POP3
//! reports it, and its UIDL; kept in an index under data_dir so that a login
//! costs in proportion to the mail that arrived since the last one (SPEC
//! "Budgets"); and the rewrite that removes deleted messages at QUIT
//! (RFC 1939 section 6, the UPDATE state), in place and crash-safe with
//! a redo journal.
//!
//! Message boundaries follow what Python's `mailbox` and mutt read: a line
//! starting with `From ` starts a message; the empty line before it (and
//! before the end of the file) is the separator, not part of the message.
//! The size is the octets RETR sends before dot-stuffing: mboxrd quoting
//! undone, every line ending in CRLF (RFC 1939 section 11 asks for the
//! exact size a client will receive).
//!
//! UIDLs (RFC 1939 section 7) come from the message itself, so any rebuild
//! of the index gives the same values: the id our SMTP side writes in the
//! first `Received:` header (`by HOST (pimail) ... id ID`), or, for mail
//! another program wrote, a hash of the message without the headers mail
//! readers change (`Status:`, `X-Status:`...). Duplicates get `-2`, `-3`.
//!
//! The index is a cache: validated on every use against the mbox (device,
//! inode, length, mtime and hashes of the first and last 4 KiB it covers),
//! extended when mail was appended, rebuilt when another program rewrote
//! the mbox. It is written without fsync; a torn or stale index is simply
//! rebuilt.

use crate::store::disk::{self, Fnv, Fs, RealFs};
use crate::store::mbox::{seal_position, Locked, MboxError, Seal, SEAL_FIELD};
use crate::store::mime;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum MaildropError {
    /// Locking or opening the mbox failed.
    Mbox(MboxError),
    Io {
        context: String,
        source: io::Error,
    },
    /// Another program changed the mbox during the session: deleting by
    /// our offsets would hit the wrong messages, so nothing is deleted.
    Changed,
}

impl std::fmt::Display for MaildropError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaildropError::Mbox(e) => write!(f, "{e}"),
            MaildropError::Io { context, source } => write!(f, "{context}: {source}"),
            MaildropError::Changed => write!(f, "the mbox was changed by another program"),
        }
    }
}

impl std::error::Error for MaildropError {}

impl From<MboxError> for MaildropError {
    fn from(e: MboxError) -> Self {
        MaildropError::Mbox(e)
    }
}

fn io_fn(context: String) -> impl Fn(io::Error) -> MaildropError {
    move |source| MaildropError::Io {
        context: context.clone(),
        source,
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> MaildropError {
    let context = context.into();
    move |source| MaildropError::Io { context, source }
}

/// One message of the mbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Start of its `From ` line.
    pub offset: u64,
    /// Start of its content (after the `From ` line).
    pub start: u64,
    /// End of its content (exclusive; the separator line is not content).
    pub end: u64,
    /// Octets as RETR sends them, before dot-stuffing.
    pub size: u64,
    /// The UIDL: derived from the content, `-N` added to duplicates.
    pub uid: String,
}

/// The maildrop as a session sees it: fixed at login (RFC 1939 section 8:
/// later mail shows in the next session).
#[derive(Debug)]
pub struct Snapshot {
    pub messages: Vec<Message>,
    /// The mbox length the snapshot covers.
    pub len: u64,
    /// The mbox open for reading: RETR reads from this file even if another
    /// program replaces the mbox meanwhile.
    pub file: File,
    /// Identity of what was indexed, checked again before deleting.
    pub stamp: Stamp,
}

/// Identifies the indexed part of one mbox file (`Default`: no file, the
/// all-zero stamp the binary sidecar writes when it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
    pub head: u64,
    pub tail: u64,
}

// ---- hashing ----------------------------------------------------------------------

const CHECK_SPAN: u64 = 4096;

fn hash_range(file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; (to - from) as usize];
    FileExt::read_exact_at(file, &mut buf, from)?;
    let mut h = Fnv::new();
    h.feed(&buf);
    Ok(h.0)
}

/// The stamp of `file` covering its first `len` bytes.
pub(crate) fn stamp(file: &File, len: u64) -> io::Result<Stamp> {
    let meta = file.metadata()?;
    Ok(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len,
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        head: hash_range(file, 0, len.min(CHECK_SPAN))?,
        tail: hash_range(file, len.saturating_sub(CHECK_SPAN), len)?,
    })
}

/// Does `file` still hold, unchanged, the part that `s` describes (perhaps
/// followed by appended mail)?
pub(crate) fn still_holds(file: &File, s: &Stamp) -> io::Result<bool> {
    let meta = file.metadata()?;
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    if meta.dev() != s.dev || meta.ino() != s.ino || meta.len() < s.len {
        return Ok(false);
    }
    // Same length but touched: rewritten in place (mutt does that).
    if meta.len() == s.len && mtime_ns != s.mtime_ns {
        return Ok(false);
    }
    Ok(hash_range(file, 0, s.len.min(CHECK_SPAN))? == s.head
        && hash_range(file, s.len.saturating_sub(CHECK_SPAN), s.len)? == s.tail)
}

// ---- scanning ------------------------------------------------------------------------

/// Headers that mail readers add or change when they rewrite an mbox; left
/// out of the content hash so that UIDLs survive them.
const VOLATILE: &[&[u8]] = &[
    b"status",
    b"x-status",
    b"x-keywords",
    b"x-uid",
    b"x-imap",
    b"x-imapbase",
    b"content-length",
    b"lines",
    b"x-mozilla-status",
    b"x-mozilla-status2",
];

/// Longest first `Received:` header we look into for our id.
const MAX_RECEIVED: usize = 2048;

enum Received {
    NotSeen,
    Collecting(Vec<u8>),
    Done(Option<String>),
}

struct Current {
    offset: u64,
    start: u64,
    /// Still inside the `From ` line (only if it spans read chunks).
    in_from_line: bool,
    size: u64,
    /// An empty line seen last: the separator if a `From ` line or the end
    /// follows, else content. Its length (1 for "\n").
    pending_empty: u64,
    /// The last line had no LF yet.
    open_line: bool,
    in_headers: bool,
    skip_header: bool,
    received: Received,
    /// Header fields seen so far, and whether the first was `Return-Path:`
    /// (our seal is the first field, or the second after it).
    fields: usize,
    return_path_first: bool,
    /// The id in our seal ([`crate::store::mbox::Seal`]).
    seal_id: Option<String>,
    hash: Fnv,
    hash_body: bool,
}

impl Current {
    fn uid_known(&self) -> bool {
        self.seal_id.is_some() || matches!(self.received, Received::Done(Some(_)))
    }

    fn finish_received(&mut self) {
        if let Received::Collecting(text) = &self.received {
            self.received = Received::Done(pimail_id(text));
        }
    }

    /// `last_cr`: the content's last byte is a CR. RETR ends an open
    /// last line with CRLF, or with just the LF after a CR
    /// ([`crate::read::pop3::retr::Encoder::finish`]); LIST must count the same.
    fn into_message(mut self, end: u64, last_cr: bool) -> Message {
        self.finish_received();
        if self.open_line {
            self.size += if last_cr { 1 } else { 2 };
        }
        let uid = match (self.seal_id, self.received) {
            (Some(id), _) => id,
            (None, Received::Done(Some(id))) => id,
            _ => format!("h{:016x}", self.hash.0),
        };
        Message {
            offset: self.offset,
            start: self.start,
            end,
            size: self.size,
            uid,
        }
    }
}

/// Our SMTP side's id in a `Received:` header written before seals:
/// `... by HOST (pimail) [(using ...)] with PROTO id ID`. Only words after
/// the `(pimail)` token count: the HELO name comes before it and has its
/// parentheses removed, so a client cannot reach this position (issue 13:
/// `HELO id` once gave a UIDL the client chose).
fn pimail_id(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    let after = &text[text.find("(pimail)")? + "(pimail)".len()..];
    let words: Vec<&str> = after.split_ascii_whitespace().collect();
    words.windows(4).find_map(|w| {
        let proto = matches!(w[1], "SMTP" | "ESMTP" | "ESMTPS" | "ESMTPA" | "ESMTPSA");
        let id = w[3].trim_end_matches(';');
        (w[0] == "with" && proto && w[2] == "id" && crate::store::mbox::valid_seal_id(id))
            .then(|| id.to_string())
    })
}

/// Finds messages in a stream of line pieces: a piece is a whole line with
/// its LF, or a part of a line too long for the read buffer.
struct Scanner {
    messages: Vec<Message>,
    current: Option<Current>,
    /// The next piece starts a line.
    line_start: bool,
    prev_cr: bool,
    /// Body runs taken at once ([`Scanner::bulk`]) are not counted: the
    /// sink sets the sizes ([`ScanSink::sizes`]).
    uncounted: bool,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            messages: Vec::new(),
            current: None,
            line_start: true,
            prev_cr: false,
            uncounted: false,
        }
    }

    fn piece(&mut self, pos: u64, p: &[u8]) {
        let starts_line = self.line_start;
        let ends_line = p.last() == Some(&b'\n');
        self.line_start = ends_line;
        let cr_before_lf = if p.len() >= 2 {
            p[p.len() - 2] == b'\r'
        } else {
            self.prev_cr
        };
        self.prev_cr = p.last() == Some(&b'\r');
        if starts_line && p.starts_with(b"From ") {
            if let Some(cur) = self.current.take() {
                let end = pos - cur.pending_empty;
                // A `From ` line starts a line: the previous one is closed.
                self.messages.push(cur.into_message(end, false));
            }
            let mut hash = Fnv::new();
            hash.feed(p);
            self.current = Some(Current {
                offset: pos,
                start: pos + p.len() as u64,
                in_from_line: !ends_line,
                size: 0,
                pending_empty: 0,
                open_line: false,
                in_headers: true,
                skip_header: false,
                received: Received::NotSeen,
                fields: 0,
                return_path_first: false,
                seal_id: None,
                hash,
                hash_body: true,
            });
            return;
        }
        let Some(cur) = self.current.as_mut() else {
            return; // bytes before the first message
        };
        if cur.in_from_line {
            cur.start = pos + p.len() as u64;
            cur.in_from_line = !ends_line;
            cur.hash.feed(p);
            return;
        }
        if starts_line {
            if cur.pending_empty > 0 {
                cur.pending_empty = 0;
                cur.size += 2;
                if cur.hash_body {
                    cur.hash.feed(b"\n");
                }
            }
            if p == b"\n" {
                cur.pending_empty = 1;
                if cur.in_headers {
                    cur.in_headers = false;
                    cur.finish_received();
                    cur.hash_body = !cur.uid_known();
                }
                return;
            }
            if cur.in_headers {
                if p == b"\r\n" {
                    cur.in_headers = false;
                    cur.finish_received();
                    cur.hash_body = !cur.uid_known();
                } else if p[0] != b' ' && p[0] != b'\t' {
                    // A new header field: its name decides.
                    cur.finish_received();
                    let name_end = p.iter().position(|&b| b == b':').unwrap_or(p.len());
                    let name = &p[..name_end];
                    cur.skip_header = VOLATILE.iter().any(|v| v.eq_ignore_ascii_case(name));
                    if seal_position(cur.fields, cur.return_path_first)
                        && name.eq_ignore_ascii_case(SEAL_FIELD.as_bytes())
                    {
                        cur.seal_id = Seal::parse(p).map(|s| s.id);
                        // Not hashed: a UIDL from the hash (if the seal is
                        // damaged) stays the same without it.
                        cur.skip_header = true;
                    }
                    if cur.fields == 0 && name.eq_ignore_ascii_case(b"return-path") {
                        cur.return_path_first = true;
                    }
                    cur.fields += 1;
                    if name.eq_ignore_ascii_case(b"received")
                        && matches!(cur.received, Received::NotSeen)
                    {
                        cur.received = Received::Collecting(Vec::new());
                    }
                }
            }
            let n = p.iter().take_while(|&&b| b == b'>').count();
            if n > 0 && p[n..].starts_with(b"From ") {
                cur.size += p.len() as u64 - 1; // mboxrd quoting is undone on the way out
            } else {
                cur.size += p.len() as u64;
            }
        } else {
            cur.size += p.len() as u64;
        }
        if ends_line && !cr_before_lf {
            cur.size += 1;
        }
        cur.open_line = !ends_line;
        if let Received::Collecting(text) = &mut cur.received {
            if cur.in_headers && text.len() + p.len() <= MAX_RECEIVED {
                text.extend_from_slice(p);
            }
        }
        if (cur.in_headers && !cur.skip_header) || (!cur.in_headers && cur.hash_body) {
            cur.hash.feed(p);
        }
    }

    /// At a line start in the body of a message whose UIDL is known:
    /// whole runs of lines can be taken at once ([`Scanner::bulk`]).
    fn fast_body(&self) -> bool {
        self.line_start
            && matches!(&self.current, Some(c) if !c.in_headers && !c.hash_body && !c.in_from_line)
    }

    /// The same as [`Scanner::piece`] for each line of `r`, for a run of
    /// whole body lines none of which starts with `From `: the size is
    /// counted with a few vectorized searches instead of line by line
    /// (the first login on a big mbox is mostly this).
    /// `quoted`: its lines with mboxrd quoting (found by the caller).
    fn bulk(&mut self, r: &[u8], quoted: u64) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if r.is_empty() {
            return;
        }
        if cur.pending_empty > 0 {
            cur.pending_empty = 0;
            cur.size += 2;
        }
        cur.size += if self.uncounted {
            // What the separator below may take back; the sink sets the
            // true size.
            2
        } else {
            let lf = memchr::memchr_iter(b'\n', r).count() as u64;
            let crlf = crate::store::mime::count_crlf(r);
            r.len() as u64 + lf - crlf - quoted
        };
        // A last empty line may be the separator: pending, as in `piece`.
        if r.len() == 1 || r[r.len() - 2] == b'\n' {
            cur.size -= 2;
            cur.pending_empty = 1;
        }
        cur.open_line = false;
        self.prev_cr = false;
        self.line_start = true;
    }

    fn finish(mut self, len: u64) -> Vec<Message> {
        if let Some(cur) = self.current.take() {
            let end = len - cur.pending_empty;
            self.messages.push(cur.into_message(end, self.prev_cr));
        }
        self.messages
    }
}

/// Read buffer for scanning and copying.
const CHUNK: usize = 256 * 1024;

/// Scans `file` from `from` (a line start) to `to`.
fn scan(file: &File, from: u64, to: u64) -> io::Result<Vec<Message>> {
    let file: &dyn crate::store::disk::Disk = file;
    scan_with(file, from, to, CHUNK)
}

/// [`scan`] with a given buffer size (small in tests, to cut lines at
/// every place).
pub(crate) fn scan_with(
    file: &dyn crate::store::disk::Disk,
    from: u64,
    to: u64,
    chunk: usize,
) -> io::Result<Vec<Message>> {
    scan_visit(file, from, to, chunk, &mut NoSink)
}

/// Sees each message's octets as [`scan_visit`] reads them, so that a
/// caller needing more of each message (IMAP's MIME structure) reads the
/// file once: for each message in order, [`ScanSink::start`], then
/// exactly the octets of `offset..end` (its `From ` line, its content;
/// not the separator line) in pieces of any size, then [`ScanSink::end`].
pub(crate) trait ScanSink {
    fn start(&mut self, offset: u64);
    fn bytes(&mut self, b: &[u8]);
    /// The message is over; a sink that [`ScanSink::sizes`] sets its size.
    fn end(&mut self, m: &mut Message);
    /// Whether the sink counts each message's size itself (IMAP's MIME
    /// parse counts every line anyway): the scan then leaves its bodies'
    /// lines uncounted, one pass over them fewer.
    fn sizes(&self) -> bool {
        false
    }
}

struct NoSink;

impl ScanSink for NoSink {
    fn start(&mut self, _: u64) {}
    fn bytes(&mut self, _: &[u8]) {}
    fn end(&mut self, _: &mut Message) {}
}

/// Hands a [`ScanSink`] what the scanner decided about the bytes of the
/// read window `window` (file offset `wpos`): the messages completed in
/// it and the current message's bytes so far. A last empty line may be
/// the separator, so it is held back (`fed` stays before it) until the
/// next line tells; then it is given as the LF it is.
struct Router {
    /// Messages of the scanner already ended at the sink.
    done: usize,
    /// File offset up to which bytes were given.
    fed: u64,
    /// The offset of the message the sink is in.
    open: Option<u64>,
}

impl Router {
    fn give(&mut self, sink: &mut dyn ScanSink, offset: u64, to: u64, window: &[u8], wpos: u64) {
        if self.open != Some(offset) {
            sink.start(offset);
            self.open = Some(offset);
            self.fed = offset;
        }
        let mut a = self.fed;
        if a >= to {
            return;
        }
        if a < wpos {
            // Only the held-back empty line's LF lies before the window.
            sink.bytes(b"\n");
            a += 1;
        }
        if a < to {
            let (i, j) = ((a - wpos) as usize, (to - wpos) as usize);
            sink.bytes(&window[i..j]);
        }
        self.fed = to;
    }

    fn route(&mut self, sc: &mut Scanner, sink: &mut dyn ScanSink, window: &[u8], wpos: u64) {
        while self.done < sc.messages.len() {
            let m = &mut sc.messages[self.done];
            let (offset, end) = (m.offset, m.end);
            self.give(sink, offset, end, window, wpos);
            sink.end(&mut sc.messages[self.done]);
            self.open = None;
            self.done += 1;
        }
        if let Some(cur) = &sc.current {
            let to = wpos + window.len() as u64 - cur.pending_empty;
            self.give(sink, cur.offset, to, window, wpos);
        }
    }
}

/// [`scan_with`], showing each message to `sink` as it goes.
pub(crate) fn scan_visit(
    file: &dyn crate::store::disk::Disk,
    from: u64,
    to: u64,
    chunk: usize,
    sink: &mut dyn ScanSink,
) -> io::Result<Vec<Message>> {
    let mut sc = Scanner::new();
    sc.uncounted = sink.sizes();
    let mut router = Router {
        done: 0,
        fed: from,
        open: None,
    };
    let mut buf = vec![0u8; chunk];
    let mut pos = from; // file offset of buf[0]
    let mut filled = 0usize;
    while pos + (filled as u64) < to {
        let want = ((to - pos) as usize).min(chunk) - filled;
        let n = file.read_at(&mut buf[filled..filled + want], pos + filled as u64)?;
        if n == 0 {
            break; // shorter than we were told: scan what is there
        }
        filled += n;
        let mut i = 0;
        loop {
            if sc.fast_body() {
                let rest = &buf[i..filled];
                let undecided = rest.len() < 5 && b"From ".starts_with(rest);
                if !rest.starts_with(b"From ") && !undecided {
                    // Up to the next `From ` line, or the last whole line.
                    // One search for `From `: at a line start it is the
                    // next message, after `>`s at one a quoted line.
                    let (mut next, mut quoted) = (None, 0u64);
                    for j in mime::from_finder().find_iter(rest) {
                        if j == 0 || rest[j - 1] == b'\n' {
                            next = Some(j);
                            break;
                        }
                        if !sc.uncounted {
                            quoted += u64::from(mime::quoted_at(rest, j));
                        }
                    }
                    let end = match next {
                        Some(j) => Some(j),
                        None => memchr::memrchr(b'\n', rest).map(|k| k + 1),
                    };
                    if let Some(e) = end {
                        if next.is_none() && !sc.uncounted {
                            // Not those in the open last line.
                            quoted -= mime::count_quoted(&rest[e..]);
                        }
                        sc.bulk(&rest[..e], quoted);
                        i += e;
                        continue;
                    }
                }
            }
            let Some(nl) = memchr::memchr(b'\n', &buf[i..filled]) else {
                break;
            };
            sc.piece(pos + i as u64, &buf[i..i + nl + 1]);
            i += nl + 1;
        }
        if i == 0 && filled == chunk {
            // A line longer than the buffer: hand it on in parts.
            sc.piece(pos, &buf[..filled]);
            i = filled;
        }
        router.route(&mut sc, sink, &buf[..i], pos);
        buf.copy_within(i..filled, 0);
        filled -= i;
        pos += i as u64;
    }
    if filled > 0 {
        sc.piece(pos, &buf[..filled]);
    }
    router.route(&mut sc, sink, &buf[..filled], pos);
    let len = pos + filled as u64;
    let last = sc.current.as_ref().map(|c| c.offset);
    let mut messages = sc.finish(len);
    // The last message (ended by the end of the file).
    if let (Some(offset), Some(m)) = (last, messages.last_mut()) {
        if m.offset == offset {
            router.give(sink, offset, m.end, &buf[..filled], pos);
            sink.end(m);
        }
    }
    Ok(messages)
}

/// Makes UIDLs unique: the first of equal ones keeps its UIDL, later ones
/// get `-2`, `-3`... (the index keeps the result, so they stay stable).
fn make_unique(messages: &mut [Message]) {
    let dups: Vec<usize> = {
        let mut seen: HashSet<&str> = HashSet::with_capacity(messages.len());
        (0..messages.len())
            .filter(|&i| !seen.insert(messages[i].uid.as_str()))
            .collect()
    };
    if dups.is_empty() {
        return; // the common case, without allocating
    }
    let mut all: HashSet<String> = messages.iter().map(|m| m.uid.clone()).collect();
    for i in dups {
        let base = messages[i].uid.clone();
        let mut k = 2;
        let mut candidate = format!("{base}-{k}");
        while all.contains(&candidate) {
            k += 1;
            candidate = format!("{base}-{k}");
        }
        all.insert(candidate.clone());
        messages[i].uid = candidate;
    }
}

// ---- the index file -------------------------------------------------------------------

const MAGIC: &str = "pimail-pop3-index 1";

/// The index file for an mbox, under data_dir.
pub fn index_path(data_dir: &Path) -> PathBuf {
    data_dir.join("pop3.index")
}

fn parse_index(text: &str) -> Option<(Stamp, Vec<Message>)> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let n: Vec<&str> = lines.next()?.split(' ').collect();
    let [dev, ino, len, mtime, head, tail] = n.as_slice() else {
        return None;
    };
    let stamp = Stamp {
        dev: dev.parse().ok()?,
        ino: ino.parse().ok()?,
        len: len.parse().ok()?,
        mtime_ns: mtime.parse().ok()?,
        head: u64::from_str_radix(head, 16).ok()?,
        tail: u64::from_str_radix(tail, 16).ok()?,
    };
    let mut messages = Vec::new();
    let mut complete = false;
    for line in lines {
        if line == "end" {
            complete = true;
            break;
        }
        let mut f = line.split(' ');
        let m = Message {
            offset: f.next()?.parse().ok()?,
            start: f.next()?.parse().ok()?,
            end: f.next()?.parse().ok()?,
            size: f.next()?.parse().ok()?,
            uid: f.next()?.to_string(),
        };
        if f.next().is_some() || m.end > stamp.len || m.start > m.end {
            return None;
        }
        messages.push(m);
    }
    complete.then_some((stamp, messages))
}

fn format_index(stamp: &Stamp, messages: &[Message]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64 + messages.len() * 48);
    let _ = writeln!(
        s,
        "{MAGIC}\n{} {} {} {} {:016x} {:016x}",
        stamp.dev, stamp.ino, stamp.len, stamp.mtime_ns, stamp.head, stamp.tail
    );
    for m in messages {
        let _ = writeln!(s, "{} {} {} {} {}", m.offset, m.start, m.end, m.size, m.uid);
    }
    s.push_str("end\n");
    s.into_bytes()
}

/// Writes the index (temp + rename; no fsync: it is a cache).
fn save_index(path: &Path, stamp: &Stamp, messages: &[Message]) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let r = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW) // issue 13, hole 10
        .open(&tmp)
        .and_then(|mut f| f.write_all(&format_index(stamp, messages)))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        // Only costs time at the next login.
        log::warn!("cannot write {}: {e}", path.display());
    }
}

/// Opens the maildrop: an interrupted deletion finished, the index
/// checked, extended or rebuilt. Called with the
/// mbox locked (from [`crate::store::mbox::MboxWriter::exclusive`]), so no append
/// is half-written while we look.
pub fn open(locked: &mut Locked, data_dir: &Path) -> Result<Snapshot, MaildropError> {
    recover(locked, data_dir)?;
    let index = &index_path(data_dir);
    let path = locked.path.clone();
    let file = &locked.file;
    let len = file
        .metadata()
        .map_err(io_err(format!("cannot stat {}", path.display())))?
        .len();
    let cached = std::fs::read_to_string(index)
        .ok()
        .and_then(|t| parse_index(&t));
    let (mut messages, resume) = match cached {
        Some((s, mut msgs)) if still_holds(file, &s).unwrap_or(false) => {
            // A last message without the blank separator line may grow by
            // the line an append adds first: scan it again.
            let mut tail = [0u8; 2];
            let clean = s.len < 2
                || (FileExt::read_exact_at(file, &mut tail, s.len - 2).is_ok() && &tail == b"\n\n");
            match msgs.last() {
                Some(last) if !clean && len > s.len => {
                    let from = last.offset;
                    msgs.pop();
                    (msgs, from)
                }
                _ => (msgs, s.len),
            }
        }
        Some(_) => {
            log::info!(
                "{} was changed by another program; re-indexing it",
                path.display()
            );
            (Vec::new(), 0)
        }
        None => (Vec::new(), 0),
    };
    let indexed = messages.len();
    if resume < len {
        let new =
            scan(file, resume, len).map_err(io_err(format!("cannot read {}", path.display())))?;
        messages.extend(new);
        make_unique(&mut messages);
    }
    let st = stamp(file, len).map_err(io_err(format!("cannot read {}", path.display())))?;
    if resume < len || indexed == 0 {
        log::debug!(
            "{}: indexed {} new message(s) from offset {resume}",
            path.display(),
            messages.len() - indexed
        );
        save_index(index, &st, &messages);
    }
    let reader = File::open(&path).map_err(io_err(format!("cannot open {}", path.display())))?;
    Ok(Snapshot {
        messages,
        len,
        file: reader,
        stamp: st,
    })
}

/// What a session hands to the rewrite at QUIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expunge {
    pub messages: Vec<Message>,
    pub stamp: Stamp,
    pub deleted: Vec<bool>,
}

/// Removes the deleted messages (RFC 1939 UPDATE state), under the locks.
///
/// The mbox is rewritten in place, so it keeps its inode, owner, group and
/// mode (a `/var/mail/alice` owned by alice, read by mutt, stays hers), and
/// its directory need not be writable. Crash-safe with a redo journal in
/// data_dir, `pop3.journal`: created once (two 32 KiB slots, written in
/// turn, each record checksummed, so a torn record leaves the one before)
/// and then only overwritten, so that it needs no new disk space. Two ways:
///
/// - **copy** (when the disk has room): the new content from the first
///   deleted message on (kept messages, then any mail appended after the
///   session's login) goes to `pop3.expunge.data`, flushed with its
///   directory; the journal records it; the data is copied over the mbox,
///   which is cut and flushed; the journal says done. 5 flushes.
/// - **move** (the disk is full, issue 13 hole 5: deleting is how the user
///   frees space): the kept mail is moved down inside the mbox, in steps
///   no longer than the gap in front of it, so that a step never
///   overwrites bytes a later step still reads; after each step the mbox
///   is flushed and the journal records how far it got. No new space is
///   needed; 2 flushes per step (a step is as long as the deleted mail
///   before it).
///
/// A crash before the journal's record leaves the mbox untouched; after
/// it, [`recover`] at the next start redoes the copy or resumes the move.
/// At worst deleted messages come back; a message that was not deleted is
/// never lost.
pub fn expunge(locked: &mut Locked, x: &Expunge, data_dir: &Path) -> Result<usize, MaildropError> {
    expunge_with_status(locked, x, &[], data_dir)
}

/// [`expunge`], also giving the kept messages the `Status:`/`X-Status:`
/// lines `status` names (per message of `x`; `None` or missing: left as
/// they are), so that mbox readers see IMAP's flags (issue 16, mutt's
/// convention; [`status_lines`]). The rewrite then starts at the first
/// message that is deleted or edited. Edits need the copy way; on a full
/// disk the move way deletes without them.
pub fn expunge_with_status(
    locked: &mut Locked,
    x: &Expunge,
    status: &[Option<Vec<u8>>],
    data_dir: &Path,
) -> Result<usize, MaildropError> {
    let count = x.deleted.iter().filter(|&&d| d).count();
    if count == 0 {
        return Ok(0);
    }
    // A deletion a crash interrupted must be finished first.
    recover(locked, data_dir)?;
    let path = locked.path.clone();
    let rd = |e| MaildropError::Io {
        context: format!("cannot read {}", path.display()),
        source: e,
    };
    if !still_holds(&locked.file, &x.stamp).map_err(rd)? {
        return Err(MaildropError::Changed);
    }
    let edits = status_edits(&locked.file, x, status).map_err(rd)?;
    let plan = plan_edits(x, locked.file.metadata().map_err(rd)?.len(), edits);
    let edited = rewrite(&RealFs, &locked.file, &path, &plan, data_dir)?;
    // The index for the rewritten mbox; mail after the kept part is
    // indexed at the next login. Without the planned edits (full disk)
    // the offsets are not the plan's: the next login scans again.
    if edited || plan.edits.is_empty() {
        if let Ok(st) = stamp(&locked.file, plan.kept_len) {
            save_index(&index_path(data_dir), &st, &plan.kept);
        }
    } else {
        let _ = std::fs::remove_file(index_path(data_dir));
    }
    Ok(count)
}

/// The rewrite itself, on any [`Fs`] (the crash explorer's too).
/// Returns whether the plan's edits were made (not on a full disk).
pub(crate) fn rewrite(
    fs: &dyn Fs,
    mbox: &dyn disk::Disk,
    path: &Path,
    plan: &Plan,
    data_dir: &Path,
) -> Result<bool, MaildropError> {
    let mut journal = Journal::open(fs, data_dir)?.0;
    let v = mbox
        .version()
        .map_err(io_err(format!("cannot stat {}", path.display())))?;
    match prepare(fs, mbox, plan, data_dir) {
        Ok((len, hash)) => {
            let job = Job::Copy {
                dev: v.dev,
                ino: v.ino,
                from: plan.from,
                old_len: plan.old_len,
                len,
                hash,
            };
            journal.write(fs, Some(&job))?;
            if let Err(e) = apply(fs, mbox, &job, data_dir, path) {
                // Half-copied: finish it now if the disk lets us, else at
                // the next start (the journal stays pending).
                log::error!("{e}; trying again");
                apply(fs, mbox, &job, data_dir, path)?;
            }
            finish(fs, &mut journal, data_dir)?;
            Ok(true)
        }
        Err(e) if e.is_disk_full() => {
            log::warn!(
                "{}: no room for a copy of the kept mail ({e}); deleting in place",
                path.display()
            );
            let mut job = Job::Move {
                dev: v.dev,
                ino: v.ino,
                from: plan.plain.from,
                old_len: plan.old_len,
                done: 0,
                ranges: plan.plain.ranges.clone(),
            };
            journal.write(fs, Some(&job))?;
            step_moves(fs, mbox, &mut journal, &mut job, path)?;
            finish(fs, &mut journal, data_dir)?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// What the rewrite does: the new content from `from` on is `ranges` of
/// the old file, in order.
pub(crate) struct Plan {
    pub from: u64,
    pub old_len: u64,
    pub ranges: Vec<(u64, u64)>,
    /// Replacements inside `ranges`, ascending: `(start, end, bytes)`
    /// puts `bytes` where `start..end` was (the copy way only).
    pub edits: Vec<Edit>,
    pub kept: Vec<Message>,
    pub kept_len: u64,
    /// The same deletion without edits, for the move way (a full disk).
    pub plain: Box<PlainPlan>,
}

/// What the move way needs.
#[derive(Debug, Clone)]
pub(crate) struct PlainPlan {
    pub from: u64,
    pub ranges: Vec<(u64, u64)>,
}

#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn plan(x: &Expunge, len: u64) -> Plan {
    plan_edits(x, len, Vec::new())
}

/// `edits`: per message of `x` (or fewer), its replacements, ascending
/// and inside its content (see [`status_edits`]).
pub(crate) fn plan_edits(x: &Expunge, len: u64, edits: Vec<Vec<Edit>>) -> Plan {
    let plain = if edits.iter().any(|e| !e.is_empty()) {
        let p = plan_edits(x, len, Vec::new());
        PlainPlan {
            from: p.from,
            ranges: p.ranges,
        }
    } else {
        PlainPlan {
            from: 0,
            ranges: Vec::new(),
        }
    };
    let first_deleted = x.deleted.iter().position(|&d| d).unwrap_or(0);
    let first_edited = edits
        .iter()
        .enumerate()
        .position(|(i, e)| !e.is_empty() && !x.deleted.get(i).copied().unwrap_or(false))
        .unwrap_or(usize::MAX);
    let from = x
        .messages
        .get(first_deleted.min(first_edited))
        .map_or(x.stamp.len, |m| m.offset);
    let mut all_edits = Vec::new();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut push = |a: u64, b: u64| match ranges.last_mut() {
        Some(last) if last.1 == a => last.1 = b,
        _ if a < b => ranges.push((a, b)),
        _ => {}
    };
    let mut kept = Vec::new();
    let mut new_pos = from;
    for (i, m) in x.messages.iter().enumerate() {
        if m.offset < from {
            kept.push(m.clone());
            continue;
        }
        let next = x.messages.get(i + 1).map_or(x.stamp.len, |n| n.offset);
        if x.deleted[i] {
            continue;
        }
        let shift = m.offset as i64 - new_pos as i64;
        let mine = edits.get(i).map(Vec::as_slice).unwrap_or(&[]);
        // Octets the edits add, stored and as RETR sends them (CRLF).
        let (mut grow, mut grow_wire) = (0i64, 0i64);
        for e in mine {
            grow += e.bytes.len() as i64 - (e.end - e.start) as i64;
            grow_wire += wire_len(&e.bytes) as i64 - e.old_wire as i64;
        }
        kept.push(Message {
            offset: (m.offset as i64 - shift) as u64,
            start: (m.start as i64 - shift) as u64,
            end: (m.end as i64 - shift + grow) as u64,
            size: (m.size as i64 + grow_wire).max(0) as u64,
            uid: m.uid.clone(),
        });
        all_edits.extend(mine.iter().cloned());
        new_pos = (new_pos as i64 + (next - m.offset) as i64 + grow) as u64;
        push(m.offset, next);
    }
    let kept_len = new_pos;
    // Mail that arrived during the session.
    push(x.stamp.len, len);
    let plain = if all_edits.is_empty() {
        PlainPlan {
            from,
            ranges: ranges.clone(),
        }
    } else {
        plain
    };
    Plan {
        from,
        old_len: len,
        ranges,
        edits: all_edits,
        kept,
        kept_len,
        plain: Box::new(plain),
    }
}

/// Octets of lines once every line ends in CRLF (RETR's size).
fn wire_len(lines: &[u8]) -> u64 {
    let lf = memchr::memchr_iter(b'\n', lines).count() as u64;
    let crlf = memchr::memmem::find_iter(lines, b"\r\n").count() as u64;
    lines.len() as u64 + lf - crlf
}

/// One replacement in a rewrite: `bytes` where `start..end` was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edit {
    pub start: u64,
    pub end: u64,
    pub bytes: Vec<u8>,
    /// The replaced octets' size as RETR sends them.
    pub old_wire: u64,
}

/// The `Status:`/`X-Status:` lines mbox readers (mutt, mailx, pine)
/// read flags from, for IMAP's system flags: `\Seen` is `Status: RO`
/// (read, old); `\Answered`, `\Flagged`, `\Deleted`, `\Draft` are the
/// letters A, F, D, T of `X-Status:`. An unseen message gets no
/// `Status:` (mutt shows it as new); no letters, no `X-Status:`.
pub fn status_lines(
    seen: bool,
    answered: bool,
    flagged: bool,
    deleted: bool,
    draft: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    if seen {
        out.extend_from_slice(b"Status: RO\n");
    }
    let letters: String = [
        (answered, 'A'),
        (flagged, 'F'),
        (deleted, 'D'),
        (draft, 'T'),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, c)| *c)
    .collect();
    if !letters.is_empty() {
        out.extend_from_slice(format!("X-Status: {letters}\n").as_bytes());
    }
    out
}

/// The most of a header looked at for `Status:` lines.
const STATUS_HEADER: usize = 64 * 1024;

/// For each kept message whose `Status:`/`X-Status:` lines differ from
/// `status[i]`: remove them (with their continuation lines) and put the
/// new ones last in the header. A message whose header does not end
/// within [`STATUS_HEADER`] is left as it is.
pub(crate) fn status_edits(
    file: &dyn disk::Disk,
    x: &Expunge,
    status: &[Option<Vec<u8>>],
) -> io::Result<Vec<Vec<Edit>>> {
    let mut out = Vec::new();
    for (i, m) in x.messages.iter().enumerate() {
        let want = match status.get(i) {
            Some(Some(w)) if !x.deleted.get(i).copied().unwrap_or(false) => w,
            _ => {
                out.push(Vec::new());
                continue;
            }
        };
        let n = ((m.end - m.start) as usize).min(STATUS_HEADER);
        let mut head = vec![0u8; n];
        file.read_exact_at(&mut head, m.start)?;
        out.push(edits_for(&head, m, want));
    }
    Ok(out)
}

fn edits_for(head: &[u8], m: &Message, want: &[u8]) -> Vec<Edit> {
    let mut removed = Vec::new();
    let mut have = Vec::new();
    let mut end = None;
    let mut at = 0usize;
    let mut in_status = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        if line == b"\n" || line == b"\r\n" {
            end = Some(at);
            break;
        }
        let cont = line[0] == b' ' || line[0] == b'\t';
        if !cont {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            in_status = line.contains(&b':')
                && (name.eq_ignore_ascii_case(b"Status") || name.eq_ignore_ascii_case(b"X-Status"));
        }
        if in_status {
            removed.push((at, at + line.len()));
            have.extend_from_slice(line);
        }
        at += line.len();
    }
    // A message that is only a header ends with it.
    let end = match end {
        Some(e) => e,
        None if (m.end - m.start) as usize == head.len() && head.ends_with(b"\n") => head.len(),
        None => return Vec::new(),
    };
    if have == want {
        return Vec::new();
    }
    let mut edits: Vec<Edit> = removed
        .into_iter()
        .map(|(a, b)| Edit {
            start: m.start + a as u64,
            end: m.start + b as u64,
            bytes: Vec::new(),
            old_wire: wire_len(&head[a..b]),
        })
        .collect();
    edits.push(Edit {
        start: m.start + end as u64,
        end: m.start + end as u64,
        bytes: want.to_vec(),
        old_wire: 0,
    });
    edits
}

/// The journal of the rewrite (see [`expunge`]).
const JOURNAL: &str = "pop3.journal";
/// The journal of versions before 2: a pending copy is finished, then
/// the file goes.
const OLD_JOURNAL: &str = "pop3.expunge";
const JOURNAL_DATA: &str = "pop3.expunge.data";
/// One journal slot; the file holds two.
const SLOT: usize = 32 * 1024;

/// A redo record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    /// Copy the data file (`len` bytes, hash `hash`) over the mbox
    /// identified by dev/ino at `from`, then cut it to `from + len`. Valid
    /// while the mbox is `old_len` long (before the cut) or `from + len`
    /// (after it).
    Copy {
        dev: u64,
        ino: u64,
        from: u64,
        old_len: u64,
        len: u64,
        hash: u64,
    },
    /// Move `ranges` of the mbox, in order, down to `from`; the first
    /// `done` bytes of that are in place and flushed.
    Move {
        dev: u64,
        ino: u64,
        from: u64,
        old_len: u64,
        done: u64,
        ranges: Vec<(u64, u64)>,
    },
}

fn format_record(seq: u64, job: Option<&Job>) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut s = format!("pimail-journal 2 {seq}\n");
    match job {
        None => s.push_str("idle\n"),
        Some(Job::Copy {
            dev,
            ino,
            from,
            old_len,
            len,
            hash,
        }) => {
            let _ = writeln!(s, "copy {dev} {ino} {from} {old_len} {len} {hash:016x}");
        }
        Some(Job::Move {
            dev,
            ino,
            from,
            old_len,
            done,
            ranges,
        }) => {
            let _ = writeln!(s, "move {dev} {ino} {from} {old_len} {done}");
            for (a, b) in ranges {
                let _ = writeln!(s, "r {a} {b}");
            }
        }
    }
    let mut h = Fnv::new();
    h.feed(s.as_bytes());
    let _ = writeln!(s, "sum {:016x}", h.0);
    s.into_bytes()
}

/// A slot's record if it is whole: `(seq, job)`.
fn parse_record(slot: &[u8]) -> Option<(u64, Option<Job>)> {
    let sum_at = memchr::memmem::find(slot, b"\nsum ")? + 1;
    let line_end = sum_at + memchr::memchr(b'\n', &slot[sum_at..])?;
    let text = std::str::from_utf8(&slot[..sum_at]).ok()?;
    let sum = std::str::from_utf8(&slot[sum_at + 4..line_end]).ok()?;
    let mut h = Fnv::new();
    h.feed(text.as_bytes());
    if u64::from_str_radix(sum, 16).ok()? != h.0 {
        return None;
    }
    let mut lines = text.lines();
    let seq = lines
        .next()?
        .strip_prefix("pimail-journal 2 ")?
        .parse()
        .ok()?;
    let head: Vec<&str> = lines.next()?.split(' ').collect();
    let n = |i: usize| -> Option<u64> { head.get(i)?.parse().ok() };
    let job = match head[0] {
        "idle" => None,
        "copy" => Some(Job::Copy {
            dev: n(1)?,
            ino: n(2)?,
            from: n(3)?,
            old_len: n(4)?,
            len: n(5)?,
            hash: u64::from_str_radix(head.get(6)?, 16).ok()?,
        }),
        "move" => {
            let mut ranges = Vec::new();
            for l in lines {
                let f: Vec<&str> = l.split(' ').collect();
                let [_, a, b] = f.as_slice() else {
                    return None;
                };
                ranges.push((a.parse().ok()?, b.parse().ok()?));
            }
            Some(Job::Move {
                dev: n(1)?,
                ino: n(2)?,
                from: n(3)?,
                old_len: n(4)?,
                done: n(5)?,
                ranges,
            })
        }
        _ => return None,
    };
    Some((seq, job))
}

/// The pre-2 journal: `pimail-expunge 1 pending` and a copy job.
fn parse_old_job(text: &str) -> Option<Job> {
    let mut lines = text.lines();
    if lines.next()? != "pimail-expunge 1 pending" {
        return None;
    }
    let f: Vec<&str> = lines.next()?.split(' ').collect();
    let [dev, ino, from, old_len, len, hash] = f.as_slice() else {
        return None;
    };
    Some(Job::Copy {
        dev: dev.parse().ok()?,
        ino: ino.parse().ok()?,
        from: from.parse().ok()?,
        old_len: old_len.parse().ok()?,
        len: len.parse().ok()?,
        hash: u64::from_str_radix(hash, 16).ok()?,
    })
}

struct Journal {
    file: Box<dyn disk::Disk>,
    seq: u64,
    path: PathBuf,
}

impl Journal {
    /// Opens the journal, creating it (with its full size, so that later
    /// records need no new space) if missing or short; and its latest
    /// whole record.
    fn open(fs: &dyn Fs, data_dir: &Path) -> Result<(Journal, Option<Job>), MaildropError> {
        let path = data_dir.join(JOURNAL);
        let err = io_fn(format!("cannot open {}", path.display()));
        let existing = match fs.open(&path, true) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e)),
        };
        let mut best: Option<(u64, Option<Job>)> = None;
        let file = match existing {
            Some(f) if f.len().map_err(io_err("journal"))? >= 2 * SLOT as u64 => {
                let mut buf = vec![0u8; SLOT];
                for k in 0..2 {
                    f.read_exact_at(&mut buf, (k * SLOT) as u64)
                        .map_err(io_err(format!("cannot read {}", path.display())))?;
                    if let Some(r) = parse_record(&buf) {
                        if best.as_ref().map_or(true, |b| r.0 > b.0) {
                            best = Some(r);
                        }
                    }
                }
                f
            }
            // Missing, or its creation was cut short (then no record was
            // ever written to it).
            other => {
                drop(other);
                let f = fs.create(&path, false).map_err(&err)?;
                let mut content = format_record(0, None);
                content.resize(2 * SLOT, b'\n');
                f.write_all_at(&content, 0)
                    .and_then(|()| f.sync_data())
                    .and_then(|()| fs.sync_dir(data_dir))
                    .map_err(io_err(format!("cannot write {}", path.display())))?;
                f
            }
        };
        let (seq, job) = best.unwrap_or((0, None));
        Ok((Journal { file, seq, path }, job))
    }

    /// Writes a record into the slot not holding the latest, flushed.
    fn write(&mut self, _fs: &dyn Fs, job: Option<&Job>) -> Result<(), MaildropError> {
        let rec = format_record(self.seq + 1, job);
        if rec.len() > SLOT {
            return Err(MaildropError::Io {
                context: format!("cannot write {}", self.path.display()),
                source: io::Error::other(
                    "too many separate messages to delete at once; delete fewer",
                ),
            });
        }
        let slot = ((self.seq + 1) % 2) as usize * SLOT;
        self.file
            .write_all_at(&rec, slot as u64)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err(format!("cannot write {}", self.path.display())))?;
        self.seq += 1;
        Ok(())
    }
}

fn hash_disk(f: &dyn disk::Disk, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut h = Fnv::new();
    let mut at = 0;
    while at < len {
        let n = ((len - at) as usize).min(CHUNK);
        f.read_exact_at(&mut buf[..n], at)?;
        h.feed(&buf[..n]);
        at += n as u64;
    }
    Ok(h.0)
}

/// The copy's first step: the new content in the data file, flushed with
/// its directory entry. Returns its length and hash.
fn prepare(
    fs: &dyn Fs,
    mbox: &dyn disk::Disk,
    plan: &Plan,
    data_dir: &Path,
) -> Result<(u64, u64), MaildropError> {
    let data_path = data_dir.join(JOURNAL_DATA);
    let mut hash = Fnv::new();
    let mut len = 0u64;
    let copied = (|| -> io::Result<()> {
        let out = fs.create(&data_path, false)?;
        let total: u64 = plan.ranges.iter().map(|(a, b)| b - a).sum();
        let mut buf = vec![0u8; CHUNK.min(total as usize)];
        let mut edits = plan.edits.iter().peekable();
        for &(a, b) in &plan.ranges {
            let mut at = a;
            loop {
                // Edits that start here (an insertion, then nothing, or
                // a replacement), then the bytes up to the next edit.
                while let Some(e) = edits.next_if(|e| e.start == at && e.start < b) {
                    out.write_all_at(&e.bytes, len)?;
                    hash.feed(&e.bytes);
                    len += e.bytes.len() as u64;
                    at = e.end;
                }
                // An insertion at the range's very end (a header-only
                // message) belongs to it too.
                while let Some(e) = edits.next_if(|e| e.start == b && e.end == b && at == b) {
                    out.write_all_at(&e.bytes, len)?;
                    hash.feed(&e.bytes);
                    len += e.bytes.len() as u64;
                }
                if at >= b {
                    break;
                }
                let stop = edits.peek().map_or(b, |e| e.start.clamp(at, b));
                let n = ((stop - at) as usize).min(CHUNK);
                if n == 0 {
                    // An edit inside a range that was already passed
                    // (not made by status_edits): skip it.
                    edits.next();
                    continue;
                }
                mbox.read_exact_at(&mut buf[..n], at)?;
                out.write_all_at(&buf[..n], len)?;
                hash.feed(&buf[..n]);
                at += n as u64;
                len += n as u64;
            }
        }
        out.sync_data()?;
        fs.sync_dir(data_dir)
    })();
    if let Err(e) = copied {
        let _ = fs.remove(&data_path);
        return Err(MaildropError::Io {
            context: format!("cannot write {}", data_path.display()),
            source: e,
        });
    }
    Ok((len, hash.0))
}

impl MaildropError {
    fn is_disk_full(&self) -> bool {
        matches!(self, MaildropError::Io { source, .. } if crate::store::mbox::is_disk_full(source))
    }
}

/// The copy's redo: the data over the mbox, cut, flushed.
fn apply(
    fs: &dyn Fs,
    mbox: &dyn disk::Disk,
    job: &Job,
    data_dir: &Path,
    path: &Path,
) -> Result<(), MaildropError> {
    let Job::Copy { from, len, .. } = *job else {
        return Ok(());
    };
    let done = (|| -> io::Result<()> {
        let data = fs.open(&data_dir.join(JOURNAL_DATA), false)?;
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut at = 0u64;
        while at < len {
            let n = ((len - at) as usize).min(CHUNK);
            data.read_exact_at(&mut buf[..n], at)?;
            mbox.write_all_at(&buf[..n], from + at)?;
            at += n as u64;
        }
        mbox.set_len(from + len)?;
        mbox.sync_data()
    })();
    done.map_err(io_err(format!("cannot rewrite {}", path.display())))
}

/// The move, from where the journal says it got to: each step moves at
/// most as many bytes as the gap in front of them, so it writes only below
/// every byte it and later steps read (a step cut short is simply done
/// again).
fn step_moves(
    fs: &dyn Fs,
    mbox: &dyn disk::Disk,
    journal: &mut Journal,
    job: &mut Job,
    path: &Path,
) -> Result<(), MaildropError> {
    let Job::Move {
        from,
        ref ranges,
        mut done,
        ..
    } = *job
    else {
        return Ok(());
    };
    let ranges = ranges.clone();
    let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    // Where byte `d` of the new content comes from, and how much of its
    // range follows it.
    let src = |d: u64| -> (u64, u64) {
        let mut acc = 0;
        for &(a, b) in &ranges {
            if d < acc + (b - a) {
                return (a + d - acc, b - (a + d - acc));
            }
            acc += b - a;
        }
        (u64::MAX, 0)
    };
    let werr = io_fn(format!("cannot rewrite {}", path.display()));
    let mut buf = vec![0u8; CHUNK.min(total as usize)];
    while done < total {
        let gap = src(done).0 - (from + done);
        let limit = total.min(done + gap);
        let mut d = done;
        while d < limit {
            let (s, run) = src(d);
            let n = run.min(limit - d).min(CHUNK as u64) as usize;
            mbox.read_exact_at(&mut buf[..n], s).map_err(&werr)?;
            mbox.write_all_at(&buf[..n], from + d).map_err(&werr)?;
            d += n as u64;
        }
        mbox.sync_data().map_err(&werr)?;
        done = limit;
        if let Job::Move { done: jd, .. } = job {
            *jd = done;
        }
        journal.write(fs, Some(job))?;
    }
    mbox.set_len(from + total)
        .and_then(|()| mbox.sync_data())
        .map_err(werr)
}

/// The journal says done, durably; the data file goes.
fn finish(fs: &dyn Fs, journal: &mut Journal, data_dir: &Path) -> Result<(), MaildropError> {
    journal.write(fs, None)?;
    let _ = fs.remove(&data_dir.join(JOURNAL_DATA));
    Ok(())
}

/// Finishes a deletion a crash interrupted (see [`expunge`]), and removes
/// the temp files a crash may have left (issue 13, hole 5). Called with the
/// mbox locked, at start and before every rewrite; creates the journal if
/// it is missing, so that its space is taken before the disk fills.
pub fn recover(locked: &mut Locked, data_dir: &Path) -> Result<(), MaildropError> {
    let path = locked.path.clone();
    recover_on(&RealFs, &locked.file, &path, data_dir)
}

pub(crate) fn recover_on(
    fs: &dyn Fs,
    mbox: &dyn disk::Disk,
    path: &Path,
    data_dir: &Path,
) -> Result<(), MaildropError> {
    for tmp in ["pop3.index.tmp", "pop3.expunge.tmp", "pop3.journal.tmp"] {
        let p = data_dir.join(tmp);
        if fs.exists(&p) {
            log::info!("removing {} left by a crash", p.display());
            let _ = fs.remove(&p);
        }
    }
    // A journal of an older version: its pending copy is finished first.
    let old = data_dir.join(OLD_JOURNAL);
    let old_job = fs
        .read(&old)
        .ok()
        .and_then(|t| parse_old_job(&String::from_utf8_lossy(&t)));
    let (mut journal, job) = match Journal::open(fs, data_dir) {
        Ok(j) => j,
        Err(e) if old_job.is_none() && !fs.exists(&data_dir.join(JOURNAL)) => {
            // No journal and no room to create one: nothing to recover;
            // deleting will say why it cannot run.
            log::warn!("{e}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let job = old_job.or(job);
    let Some(mut job) = job else {
        if fs.exists(&data_dir.join(JOURNAL_DATA)) {
            let _ = fs.remove(&data_dir.join(JOURNAL_DATA));
        }
        let _ = fs.remove(&old);
        return Ok(());
    };
    let v = mbox
        .version()
        .map_err(io_err(format!("cannot stat {}", path.display())))?;
    let ok = match &mut job {
        Job::Copy {
            dev,
            ino,
            from,
            old_len,
            len,
            hash,
        } => {
            let data_ok = fs
                .open(&data_dir.join(JOURNAL_DATA), false)
                .and_then(|f| Ok(f.len()? == *len && hash_disk(&*f, *len)? == *hash))
                .unwrap_or(false);
            data_ok
                && v.dev == *dev
                && v.ino == *ino
                && (v.len == *old_len || v.len == *from + *len)
        }
        Job::Move {
            dev,
            ino,
            from,
            old_len,
            done,
            ranges,
        } => {
            let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
            let same = v.dev == *dev && v.ino == *ino;
            if same && v.len > *old_len && *done < total {
                // Another program appended after the crash: that mail
                // moves down too.
                ranges.push((*old_len, v.len));
                *old_len = v.len;
            }
            same && (v.len == *old_len || (v.len == *from + total && *done == total))
        }
    };
    if ok {
        log::warn!(
            "{}: finishing a POP3 deletion that a crash interrupted",
            path.display()
        );
        match job {
            Job::Copy { .. } => apply(fs, mbox, &job, data_dir, path)?,
            Job::Move { .. } => step_moves(fs, mbox, &mut journal, &mut job, path)?,
        }
    } else {
        log::error!(
            "{}: a POP3 deletion was interrupted, but the mbox has changed since \
             (or its saved data is damaged); leaving the mbox as it is",
            path.display()
        );
    }
    finish(fs, &mut journal, data_dir)?;
    let _ = fs.remove(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_bytes(data: &[u8]) -> Vec<Message> {
        let d = std::env::temp_dir().join(format!(
            "pimail-maildrop-{}-{}",
            std::process::id(),
            data.len()
        ));
        std::fs::write(&d, data).unwrap();
        let f = File::open(&d).unwrap();
        let m = scan(&f, 0, data.len() as u64).unwrap();
        std::fs::remove_file(&d).unwrap();
        m
    }

    /// What RETR sends for a message, the slow obvious way.
    fn pop_form(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in content.split_inclusive(|&b| b == b'\n') {
            let line = crate::store::mbox::unquote_line(line);
            match line.strip_suffix(b"\n") {
                Some(l) => {
                    let l = l.strip_suffix(b"\r").unwrap_or(l);
                    out.extend_from_slice(l);
                    out.extend_from_slice(b"\r\n");
                }
                None => {
                    out.extend_from_slice(line);
                    // As RETR: a last line cut after its CR gets the LF.
                    if !line.ends_with(b"\r") {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                }
            }
        }
        out
    }

    const RECEIVED: &str = "Received: from a ([127.0.0.1])\n\tby mail.example.org (pimail)\n\twith ESMTP id 0000ABCD00000001\n\tfor <alice@example.org>;\n\tThu, 1 Jan 1970 00:00:00 +0000\n";

    #[test]
    fn boundaries_sizes_and_uids() {
        let m1 = format!("Return-Path: <b@c>\n{RECEIVED}Subject: one\n\n>From quoted\n\nlast\n");
        let m2 = "Subject: foreign\nStatus: RO\n\nbody\n";
        let m3 = "Subject: no final newline\n\nx";
        let mbox = format!(
            "junk before\nFrom b@c Thu Jan  1 00:00:00 1970\n{m1}\nFrom x Thu Jan  1 00:00:00 1970\n{m2}\nFrom y Thu Jan  1 00:00:00 1970\n{m3}"
        );
        let msgs = scan_bytes(mbox.as_bytes());
        assert_eq!(msgs.len(), 3);
        for (m, content) in msgs.iter().zip([m1.as_str(), m2, m3]) {
            assert_eq!(
                &mbox.as_bytes()[m.start as usize..m.end as usize],
                content.as_bytes()
            );
            assert_eq!(
                m.size,
                pop_form(content.as_bytes()).len() as u64,
                "{content:?}"
            );
        }
        assert_eq!(msgs[0].uid, "0000ABCD00000001");
        assert!(msgs[1].uid.starts_with('h') && msgs[1].uid.len() == 17);
        // A reader that adds or changes Status: keeps the UIDL.
        let edited = mbox.replace("Status: RO\n", "Status: O\nX-Status: A\n");
        let again = scan_bytes(edited.as_bytes());
        assert_eq!(again[1].uid, msgs[1].uid);
        // Changing the body changes it.
        let other = mbox.replace("body\n", "bodz\n");
        assert_ne!(scan_bytes(other.as_bytes())[1].uid, msgs[1].uid);
    }

    /// Found by fuzz/fuzz_targets/maildrop.rs: a mbox ending in a bare CR
    /// made LIST say one octet more than RETR sent ("\r" goes out as
    /// "\r\n", not "\r\r\n").
    #[test]
    fn size_of_a_last_line_cut_after_cr_matches_retr() {
        for (mbox, content) in [
            (&b"\nFrom \n\r"[..], &b"\r"[..]),
            (b"From x\nSubject: a\n\nbody\r", b"Subject: a\n\nbody\r"),
            (b"From x\nSubject: a\n\nbody", b"Subject: a\n\nbody"),
        ] {
            let msgs = scan_bytes(mbox);
            assert_eq!(msgs.len(), 1);
            let mut retr = Vec::new();
            let mut enc = crate::read::pop3::retr::Encoder::new(None);
            for line in content.split_inclusive(|&b| b == b'\n') {
                enc.piece(line, &mut retr);
            }
            enc.finish(&mut retr);
            assert!(retr.ends_with(b"\r\n.\r\n"));
            assert_eq!(msgs[0].size, retr.len() as u64 - 3, "{mbox:?}");
            assert_eq!(msgs[0].size, pop_form(content).len() as u64);
        }
    }

    /// Collects what a [`ScanSink`] is shown.
    #[derive(Default)]
    struct Collect {
        open: Option<(u64, Vec<u8>)>,
        got: Vec<(Message, Vec<u8>)>,
        bad: bool,
    }

    impl ScanSink for Collect {
        fn start(&mut self, offset: u64) {
            self.bad |= self.open.is_some();
            self.open = Some((offset, Vec::new()));
        }
        fn bytes(&mut self, b: &[u8]) {
            match &mut self.open {
                Some((_, v)) => v.extend_from_slice(b),
                None => self.bad = true,
            }
        }
        fn end(&mut self, m: &mut Message) {
            match self.open.take() {
                Some((o, v)) if o == m.offset => self.got.push((m.clone(), v)),
                _ => self.bad = true,
            }
        }
    }

    /// A sink sees exactly each message's octets, from its `From ` line
    /// to its end, whatever the read size; and the messages are those
    /// of the plain scan.
    #[test]
    fn a_sink_sees_each_message_exactly() {
        let mboxes: &[&[u8]] = &[
            b"junk\nFrom a\nS: 1\n\nbody\n\n\nFrom b\nS: 2\n\n\n\nFrom c x\n\n",
            b"From a\nS: 1\n\nno end",
            b"From a\nS: 1\n\nx\n\nFrom b",
            b"From a\r\nS: 1\r\n\r\nbody\r\n\r\nFrom b\r\n\r\n",
            b"From aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa long\nS: 1\n\n\n\nFrom b\n\n\n",
            b"\n\nFrom a\nS: 1\n\n>From x\n\n\n\n\n",
        ];
        let mut all: Vec<Vec<u8>> = mboxes.iter().map(|m| m.to_vec()).collect();
        let mut big = Vec::new();
        for i in 0..30u64 {
            big.extend_from_slice(b"From x Thu Jan  1 00:00:00 1970\n");
            if i % 2 == 0 {
                big.extend_from_slice(
                    format!("Received: by h (pimail)\n\twith ESMTP id ID{i}\n").as_bytes(),
                );
            }
            big.extend_from_slice(b"Subject: s\n\n");
            let msg = crate::store::mime::tests::bench_like(i);
            big.extend_from_slice(&msg); // already in stored form
            big.extend_from_slice(b"\n\n");
        }
        all.push(big);
        for (k, mbox) in all.iter().enumerate() {
            let path = tmpdir("sink").join(format!("mbox{k}"));
            std::fs::write(&path, mbox).unwrap();
            let f = File::open(&path).unwrap();
            let want = scan(&f, 0, mbox.len() as u64).unwrap();
            assert!(!want.is_empty());
            for chunk in (8..90).chain([1000, 4096, 256 * 1024]) {
                let mut c = Collect::default();
                let got = scan_visit(&f, 0, mbox.len() as u64, chunk, &mut c).unwrap();
                assert_eq!(got, want, "mbox {k} chunk {chunk}");
                assert!(!c.bad && c.open.is_none(), "mbox {k} chunk {chunk}");
                assert_eq!(c.got.len(), want.len(), "mbox {k} chunk {chunk}");
                for (m, bytes) in &c.got {
                    assert_eq!(
                        bytes.as_slice(),
                        &mbox[m.offset as usize..m.end as usize],
                        "mbox {k} chunk {chunk} message at {}",
                        m.offset
                    );
                }
            }
        }
    }

    #[test]
    fn small_buffers_find_the_same_messages() {
        let mut mbox = String::new();
        for i in 0..6 {
            mbox += &format!(
                "From x Thu Jan  1 00:00:00 1970\nReceived: by h (pimail)\n\twith ESMTP id ID{i}\nSubject: {}\n\n>From q\n{}\n\n\ncr\r\n\r\n>>From r\nx From y\n>Fro\n\n\n",
                "s".repeat(i * 7),
                "b".repeat(i * 13)
            );
        }
        let path = tmpdir("chunks").join("mbox");
        std::fs::write(&path, &mbox).unwrap();
        let f = File::open(&path).unwrap();
        let want = scan(&f, 0, mbox.len() as u64).unwrap();
        assert_eq!(want.len(), 6);
        assert_eq!(want[5].uid, "ID5");
        for chunk in 12..80 {
            assert_eq!(
                scan_with(&f, 0, mbox.len() as u64, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
        for m in &want {
            let content = &mbox.as_bytes()[m.start as usize..m.end as usize];
            assert_eq!(m.size, pop_form(content).len() as u64);
            assert!(
                content.ends_with(b">Fro\n\n"),
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
    }

    #[test]
    fn long_lines_span_chunks() {
        let long = "a".repeat(CHUNK * 2 + 17);
        let content = format!("Subject: long\n\n{long}\n>From x\n");
        let mbox = format!("From x Thu Jan  1 00:00:00 1970\n{content}\n");
        let msgs = scan_bytes(mbox.as_bytes());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].size, pop_form(content.as_bytes()).len() as u64);
        assert_eq!(msgs[0].end as usize, mbox.len() - 1);
    }

    #[test]
    fn duplicate_uids_are_made_unique() {
        let m = |uid: &str| Message {
            offset: 0,
            start: 0,
            end: 0,
            size: 0,
            uid: uid.into(),
        };
        let mut v = vec![m("a"), m("a"), m("a-2"), m("b"), m("a")];
        make_unique(&mut v);
        let u: Vec<&str> = v.iter().map(|m| m.uid.as_str()).collect();
        assert_eq!(u, ["a", "a-3", "a-2", "b", "a-4"]);
    }

    #[test]
    fn index_round_trip() {
        let s = Stamp {
            dev: 1,
            ino: 2,
            len: 100,
            mtime_ns: 5,
            head: 7,
            tail: 8,
        };
        let msgs = vec![Message {
            offset: 0,
            start: 10,
            end: 90,
            size: 85,
            uid: "abc".into(),
        }];
        let text = String::from_utf8(format_index(&s, &msgs)).unwrap();
        assert_eq!(parse_index(&text), Some((s, msgs)));
        // Torn: no end marker.
        assert_eq!(parse_index(text.trim_end_matches("end\n")), None);
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pimail-maildrop-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn five() -> (String, String) {
        let m = |i: usize| format!("From a Thu Jan  1 00:00:00 1970\nSubject: {i}\n\nbody {i}\n\n");
        let all: String = (0..5).map(m).collect();
        let kept: String = [0, 2, 4].into_iter().map(m).collect();
        (all, kept)
    }

    #[test]
    fn expunge_writes_status_lines_and_an_index_that_fits() {
        let d = tmpdir("status");
        let mbox = d.join("mbox");
        let all = "From a Thu Jan  1 00:00:00 1970\nSubject: 0\n\nbody 0\n\n\
                   From a Thu Jan  1 00:00:00 1970\nSubject: 1\nStatus: O\nX-Status: F\n\n\
                   body 1\n\n\
                   From a Thu Jan  1 00:00:00 1970\nSubject: 2\n\nbody 2\n\n\
                   From a Thu Jan  1 00:00:00 1970\nStatus: RO\nSubject: 3\n \
                   folded\n\nbody 3\n\n\
                   From a Thu Jan  1 00:00:00 1970\nSubject: 4 header only\n";
        std::fs::write(&mbox, all).unwrap();
        let mut l = crate::store::mbox::lock(&mbox).unwrap();
        let snap = open(&mut l, &d).unwrap();
        assert_eq!(snap.messages.len(), 5);
        let x = Expunge {
            messages: snap.messages.clone(),
            stamp: snap.stamp,
            deleted: vec![false, false, true, false, false],
        };
        let status = vec![
            Some(status_lines(true, true, false, false, false)),
            Some(status_lines(false, false, false, false, false)),
            None,
            Some(status_lines(true, false, false, false, false)),
            Some(status_lines(false, false, true, false, true)),
        ];
        assert_eq!(expunge_with_status(&mut l, &x, &status, &d).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(&mbox).unwrap(),
            "From a Thu Jan  1 00:00:00 1970\nSubject: 0\nStatus: RO\nX-Status: A\n\nbody 0\n\n\
             From a Thu Jan  1 00:00:00 1970\nSubject: 1\n\nbody 1\n\n\
             From a Thu Jan  1 00:00:00 1970\nStatus: RO\nSubject: 3\n folded\n\nbody 3\n\n\
             From a Thu Jan  1 00:00:00 1970\nSubject: 4 header only\nX-Status: FT\n"
        );
        // The saved index is what a fresh scan finds; UIDLs are kept.
        let saved = std::fs::read_to_string(index_path(&d)).unwrap();
        let (_, msgs) = parse_index(&saved).unwrap();
        let file = std::fs::File::open(&mbox).unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(msgs, scan(&file, 0, len).unwrap());
        let uidls: Vec<&str> = msgs.iter().map(|m| m.uid.as_str()).collect();
        let want: Vec<&str> = [0, 1, 3, 4]
            .iter()
            .map(|&i| x.messages[i].uid.as_str())
            .collect();
        assert_eq!(uidls, want);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn expunge_keeps_mail_that_arrived_during_the_session() {
        let d = tmpdir("expunge");
        let mbox = d.join("mbox");
        let (all, kept) = five();
        std::fs::write(&mbox, &all).unwrap();
        let mut l = crate::store::mbox::lock(&mbox).unwrap();
        let snap = open(&mut l, &d).unwrap();
        assert_eq!(snap.messages.len(), 5);
        drop(l);
        let late = "From b Thu Jan  1 00:00:00 1970\nSubject: late\n\nnew\n\n";
        std::fs::OpenOptions::new()
            .append(true)
            .open(&mbox)
            .unwrap()
            .write_all(late.as_bytes())
            .unwrap();
        let x = Expunge {
            messages: snap.messages,
            stamp: snap.stamp,
            deleted: vec![false, true, false, true, false],
        };
        let mut l = crate::store::mbox::lock(&mbox).unwrap();
        assert_eq!(expunge(&mut l, &x, &d).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(&mbox).unwrap(),
            format!("{kept}{late}")
        );
        // The saved index fits the new mbox: the next open scans only "late".
        let again = open(&mut l, &d).unwrap();
        let subjects: Vec<u64> = again.messages.iter().map(|m| m.offset).collect();
        assert_eq!(again.messages.len(), 4, "{subjects:?}");
        assert_eq!(again.messages[0].uid, x.messages[0].uid);
        assert_eq!(again.messages[1].uid, x.messages[2].uid);
        assert!(!d.join(JOURNAL_DATA).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_interrupted_rewrite_is_finished_by_recover() {
        let d = tmpdir("recover");
        let mbox = d.join("mbox");
        let (all, kept) = five();
        std::fs::write(&mbox, &all).unwrap();
        let mut l = crate::store::mbox::lock(&mbox).unwrap();
        let snap = open(&mut l, &d).unwrap();
        let x = Expunge {
            messages: snap.messages,
            stamp: snap.stamp,
            deleted: vec![false, true, false, true, false],
        };
        // A crash in the middle of the copy, journaled by a version
        // before 2 (`pop3.expunge`): finished, and the old journal goes.
        let p = plan(&x, all.len() as u64);
        let (len, hash) = prepare(&RealFs, &l.file, &p, &d).unwrap();
        let meta = l.file.metadata().unwrap();
        std::fs::write(
            d.join(OLD_JOURNAL),
            format!(
                "pimail-expunge 1 pending\n{} {} {} {} {len} {hash:016x}\n",
                meta.dev(),
                meta.ino(),
                p.from,
                p.old_len
            ),
        )
        .unwrap();
        let data = std::fs::read(d.join(JOURNAL_DATA)).unwrap();
        FileExt::write_all_at(&l.file, &data[..data.len() / 2], p.from).unwrap();
        drop(l);
        let mut l = crate::store::mbox::lock(&mbox).unwrap();
        recover(&mut l, &d).unwrap();
        assert_eq!(std::fs::read_to_string(&mbox).unwrap(), kept);
        assert!(!d.join(OLD_JOURNAL).exists() && !d.join(JOURNAL_DATA).exists());
        // Done: a second recovery changes nothing.
        std::fs::write(&mbox, &all).unwrap();
        recover(&mut l, &d).unwrap();
        assert_eq!(std::fs::read_to_string(&mbox).unwrap(), all);
        // An mbox another program changed after the crash is left alone.
        let p = plan(&x, all.len() as u64);
        let (len, hash) = prepare(&RealFs, &l.file, &p, &d).unwrap();
        let meta = l.file.metadata().unwrap();
        let (mut j, _) = Journal::open(&RealFs, &d).unwrap();
        let job = Job::Copy {
            dev: meta.dev(),
            ino: meta.ino(),
            from: p.from,
            old_len: p.old_len,
            len,
            hash,
        };
        j.write(&RealFs, Some(&job)).unwrap();
        drop(j);
        std::fs::write(&mbox, "From z Thu Jan  1 00:00:00 1970\n\nother\n\n").unwrap();
        recover(&mut l, &d).unwrap();
        assert!(std::fs::read_to_string(&mbox).unwrap().contains("other"));
        assert_eq!(Journal::open(&RealFs, &d).unwrap().1, None);
        // Temp files a crash left are removed at start (issue 13 hole 5).
        std::fs::write(d.join("pop3.index.tmp"), "x").unwrap();
        recover(&mut l, &d).unwrap();
        assert!(!d.join("pop3.index.tmp").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn journal_records_survive_a_torn_write() {
        let job = Job::Move {
            dev: 1,
            ino: 2,
            from: 3,
            old_len: 100,
            done: 7,
            ranges: vec![(10, 20), (30, 100)],
        };
        let rec = format_record(5, Some(&job));
        assert_eq!(parse_record(&rec), Some((5, Some(job.clone()))));
        let mut torn = rec.clone();
        torn[30] ^= 1;
        assert_eq!(parse_record(&torn), None);
        assert_eq!(parse_record(&rec[..rec.len() - 3]), None);
        assert_eq!(parse_record(&format_record(1, None)), Some((1, None)));
    }

    #[test]
    fn pimail_ids() {
        assert_eq!(
            pimail_id(RECEIVED.as_bytes()).as_deref(),
            Some("0000ABCD00000001")
        );
        assert_eq!(pimail_id(b"Received: by x (postfix) id ABC;"), None);
        assert_eq!(
            pimail_id(b"Received: by x (pimail) with ESMTP id ABC;"),
            Some("ABC".into())
        );
        // `HELO id` and `HELO with ESMTP id X` cannot choose the UIDL.
        assert_eq!(
            pimail_id(b"Received: from id ([127.0.0.1])\n\tby h (pimail)\n\twith SMTP id R1;"),
            Some("R1".into())
        );
        assert_eq!(
            pimail_id(b"Received: from with ESMTP id CHOSEN ([127.0.0.1])\n\tby h (pimail)\n\t(using TLSv1.3 with cipher X)\n\twith ESMTPS id R2;"),
            Some("R2".into())
        );
    }
}
