//! The local submission socket: how `pimail sendmail` run by any local
//! user (cron, scripts, mailx) hands a message to the running server when
//! it cannot read the config or write the queue itself, as Postfix's
//! setgid `postdrop` does. Submission only: the socket queues messages and
//! does nothing else.
//!
//! The server listens on a Unix stream socket (`[listen] local_submit`,
//! default `/run/pimail/submit.sock`, mode 0666) and learns the caller's
//! uid from the kernel (SO_PEERCRED), never from the client. Root, the
//! service user and the user's own account are trusted as on the direct
//! path; anyone else sends as `<login>@<hostname>` (see `sendmail`). The
//! message itself goes through the same code as the direct path
//! (`sendmail::submit`), streamed into the queue, never whole in memory.
//!
//! The protocol, one request per connection (client lines end in LF, at
//! most [`MAX_REQUEST_LINE`] bytes):
//!
//! ```text
//! PIMAIL-SUBMIT 1
//! OPT t | OPT i        -t, -i
//! FROM <text>          -f (may be empty: the null sender)
//! NAME <text>          -F
//! RCPT <text>          each recipient argument
//! DATA
//! <len>\n<len bytes>   chunks of at most MAX_CHUNK bytes ...
//! 0\n                  the end
//! ```
//!
//! Chunked rather than dot-stuffed: the bytes pass as they are, and a
//! client that dies half-way (no `0` chunk) is told apart from the end of
//! the message, so a truncated message is never queued. The answer, after
//! the message is fsynced in the queue: `NOTE <text>` lines, then
//! `OK <queue id>` or `ERR <sysexits code> <text>`.

use crate::config::cli::SendmailArgs;
use crate::config::Config;
use crate::send::sendmail::{self, Caller, Queued, SendmailError, EX_DATAERR, EX_TEMPFAIL};
use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable that names the socket for `pimail sendmail`
/// (when the config cannot be read, it is the only way to learn it).
pub const SOCKET_ENV: &str = "PIMAIL_SUBMIT_SOCKET";
/// Longest request line (an address argument is far shorter).
pub const MAX_REQUEST_LINE: usize = 4096;
/// Largest data chunk.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Submissions handled at once; more get a temporary failure.
pub const MAX_CONCURRENT: usize = 8;
/// Messages per hour an untrusted uid may submit (a runaway script must
/// not mail the world from our IP); trusted callers are not counted.
pub const PER_HOUR: usize = 100;
/// No read may wait longer than this, and no submission last longer
/// than [`MAX_SESSION`]: a stuck client does not hold a slot for ever.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_SESSION: Duration = Duration::from_secs(3600);

/// What the client asked for, from the request lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub args: SendmailArgs,
}

/// One request line into `req`. `Ok(true)`: `DATA`, the message follows.
pub fn parse_line(line: &str, req: &mut Request, max_rcpts: usize) -> Result<bool, String> {
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "PIMAIL-SUBMIT" if arg == "1" => {}
        "PIMAIL-SUBMIT" => return Err(format!("protocol version {arg:?} unknown")),
        "OPT" if arg == "t" => req.args.from_headers = true,
        "OPT" if arg == "i" => req.args.ignore_dots = true,
        "FROM" => req.args.sender = Some(arg.to_string()),
        "NAME" => req.args.full_name = Some(arg.to_string()),
        "RCPT" if req.args.recipients.len() >= max_rcpts => {
            return Err(format!(
                "more than {max_rcpts} recipients (limits.max_recipients)"
            ))
        }
        "RCPT" => req.args.recipients.push(arg.to_string()),
        "DATA" => return Ok(true),
        _ => return Err(format!("unknown request line {:?}", truncate(line))),
    }
    Ok(false)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The request lines for `args` (the client side). `Err`: an argument
/// with a line break or NUL, which no address or name has.
pub fn encode_request(args: &SendmailArgs) -> Result<Vec<u8>, String> {
    let mut out = b"PIMAIL-SUBMIT 1\n".to_vec();
    let mut line = |verb: &str, arg: &str| -> Result<(), String> {
        if arg.contains(['\n', '\r', '\0']) {
            return Err(format!("argument {arg:?} contains a line break"));
        }
        out.extend_from_slice(format!("{verb} {arg}\n").as_bytes());
        Ok(())
    };
    if args.from_headers {
        line("OPT", "t")?;
    }
    if args.ignore_dots {
        line("OPT", "i")?;
    }
    if let Some(f) = &args.sender {
        line("FROM", f)?;
    }
    if let Some(n) = &args.full_name {
        line("NAME", n)?;
    }
    for r in &args.recipients {
        line("RCPT", r)?;
    }
    out.extend_from_slice(b"DATA\n");
    Ok(out)
}

/// The message stream after `DATA`: undoes the chunk framing. The end
/// chunk reads as EOF; a connection that ends before it is an error (the
/// message is then not queued).
pub struct Chunks<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Chunks<R> {
    pub fn new(inner: R) -> Chunks<R> {
        Chunks {
            inner,
            left: 0,
            done: false,
        }
    }

    /// Reads the next chunk's length line.
    fn next_chunk(&mut self) -> io::Result<()> {
        let mut line = Vec::new();
        (&mut self.inner).take(12).read_until(b'\n', &mut line)?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad chunk length");
        let Some(digits) = line.strip_suffix(b"\n") else {
            return Err(if line.is_empty() {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client went away before the end of the message",
                )
            } else {
                bad()
            });
        };
        let n: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if n > MAX_CHUNK {
            return Err(bad());
        }
        self.left = n;
        self.done = n == 0;
        Ok(())
    }
}

impl<R: BufRead> Read for Chunks<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Chunks<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while !self.done && self.left == 0 {
            self.next_chunk()?;
        }
        if self.done {
            return Ok(&[]);
        }
        let left = self.left;
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client went away in the middle of the message",
            ));
        }
        Ok(&buf[..buf.len().min(left)])
    }

    fn consume(&mut self, n: usize) {
        self.left -= n.min(self.left);
        self.inner.consume(n);
    }
}

/// Frames `input` as chunks onto `out` (the client side). Without `-i`, a
/// line with a single `.` ends the message here already, so that a person
/// typing at a terminal is done when they type it. A failed write is
/// `Err(Write)`: the server may have answered early (a refusal).
pub fn send_body(
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    ignore_dots: bool,
) -> Result<(), BodyError> {
    let mut buf = Vec::with_capacity(MAX_CHUNK);
    let mut line = Vec::new();
    let mut at_line_start = true;
    loop {
        line.clear();
        let n = input
            .take(MAX_CHUNK as u64 / 2)
            .read_until(b'\n', &mut line)
            .map_err(BodyError::Read)?;
        let end = n == 0 || (!ignore_dots && at_line_start && (line == b".\n" || line == b".\r\n"));
        if !end {
            at_line_start = line.ends_with(b"\n");
            buf.extend_from_slice(&line);
        }
        if (end || buf.len() >= MAX_CHUNK / 2) && !buf.is_empty() {
            out.write_all(format!("{}\n", buf.len()).as_bytes())
                .and_then(|_| out.write_all(&buf))
                .map_err(BodyError::Write)?;
            buf.clear();
        }
        if end {
            out.write_all(b"0\n")
                .and_then(|_| out.flush())
                .map_err(BodyError::Write)?;
            return Ok(());
        }
    }
}

#[derive(Debug)]
pub enum BodyError {
    Read(io::Error),
    Write(io::Error),
}

/// Rate and concurrency state shared by the server's submissions.
#[derive(Default)]
pub struct Limiter {
    inner: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    busy: usize,
    /// Per untrusted uid: the times of its recent submissions.
    recent: HashMap<u32, Vec<Instant>>,
}

impl Limiter {
    /// A slot for one submission, or why not.
    fn enter(&self, uid: u32, trusted: bool, now: Instant) -> Result<(), String> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.busy >= MAX_CONCURRENT {
            return Err(format!(
                "{MAX_CONCURRENT} local submissions are in progress; try again shortly"
            ));
        }
        if !trusted {
            let hour = Duration::from_secs(3600);
            let times = s.recent.entry(uid).or_default();
            times.retain(|t| now.duration_since(*t) < hour);
            if times.len() >= PER_HOUR {
                return Err(format!(
                    "uid {uid} sent {PER_HOUR} messages in the last hour, the most a local user may; try again later"
                ));
            }
            times.push(now);
        }
        s.busy += 1;
        Ok(())
    }

    fn leave(&self) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.busy = s.busy.saturating_sub(1);
    }
}

/// Who is trusted: root, the service user (our own uid), and the login
/// named `[user] name` if the system has one.
pub fn is_trusted(uid: u32, config: &Config) -> bool {
    uid == 0
        || uid == crate::util::sys::euid()
        || crate::util::sys::user_ids(&config.user.name).is_some_and(|(u, _)| u == uid)
}

/// Serves one connection (blocking; the server runs it on a thread).
/// Returns the queue id when a message was queued, for the caller to wake
/// the delivery worker.
pub fn serve(
    stream: std::os::unix::net::UnixStream,
    config: &Config,
    limiter: &Limiter,
) -> Option<String> {
    let uid = match crate::util::sys::peer_uid(&stream) {
        Ok(u) => u,
        Err(e) => {
            log::error!("local submission: cannot learn the caller's uid: {e}");
            return None;
        }
    };
    let trusted = is_trusted(uid, config);
    let login = crate::util::sys::login_name(uid).unwrap_or_default();
    let caller = Caller {
        uid,
        login: login.clone(),
        trusted,
    };
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            log::error!("local submission: {e}");
            return None;
        }
    };
    if let Err(why) = limiter.enter(uid, trusted, Instant::now()) {
        log::warn!("local submission uid={uid} ({login}) refused: {why}");
        let _ = out.write_all(format!("ERR {EX_TEMPFAIL} {why}\n").as_bytes());
        return None;
    }
    let r = handle(stream, config, &caller);
    limiter.leave();
    let reply = match &r {
        Ok(q) => {
            log::info!(
                "local submission uid={uid} ({login}) id={} from=<{}> rcpts={} size={}",
                q.id,
                q.sender,
                q.rcpts,
                q.size
            );
            let mut s = String::new();
            for n in &q.notes {
                log::info!("local submission uid={uid} id={}: {n}", q.id);
                s += &format!("NOTE {}\n", n.replace('\n', " "));
            }
            s + &format!("OK {}\n", q.id)
        }
        Err(e) => {
            log::warn!(
                "local submission uid={uid} ({login}) refused ({}): {}",
                e.code,
                e.message
            );
            format!("ERR {} {}\n", e.code, e.message.replace('\n', " "))
        }
    };
    let _ = out.write_all(reply.as_bytes());
    r.ok().map(|q| q.id)
}

/// Reads the request and queues the message.
fn handle(
    stream: std::os::unix::net::UnixStream,
    config: &Config,
    caller: &Caller,
) -> Result<Queued, SendmailError> {
    let start = Instant::now();
    let timed = Deadline {
        stream,
        end: start + MAX_SESSION,
    };
    let mut input = io::BufReader::with_capacity(MAX_CHUNK, timed);
    let mut req = Request::default();
    let data_err = |m: String| SendmailError {
        code: EX_DATAERR,
        message: m,
    };
    loop {
        let mut line = Vec::new();
        (&mut input)
            .take(MAX_REQUEST_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| SendmailError {
                code: EX_TEMPFAIL,
                message: format!("cannot read the request: {e}"),
            })?;
        let Some(text) = line.strip_suffix(b"\n") else {
            return Err(data_err("request line too long or cut off".into()));
        };
        let text =
            std::str::from_utf8(text).map_err(|_| data_err("request line is not UTF-8".into()))?;
        if parse_line(text, &mut req, config.limits.max_recipients).map_err(data_err)? {
            break;
        }
    }
    let mut body = Chunks::new(input);
    sendmail::submit(config, &req.args, &mut body, caller)
}

/// A socket whose reads fail once the session's deadline has passed.
struct Deadline {
    stream: std::os::unix::net::UnixStream,
    end: Instant,
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the submission took too long",
            ));
        }
        self.stream.set_read_timeout(Some(left.min(READ_TIMEOUT)))?;
        self.stream.read(buf)
    }
}

/// Binds the socket at `path`, mode 0666 (any local user may submit; the
/// directory's mode decides who reaches it). A socket file that nobody
/// answers on is stale and replaced; one a live server answers on is left
/// alone (an error), so that a second server cannot steal it.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{} is in use by another running server",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot make {} usable by every user: {e}", path.display()))?;
    Ok(l)
}

/// The server's whole answer (the client side).
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub notes: Vec<String>,
    /// `Ok(queue id)` or `Err((sysexits code, text))`.
    pub result: Result<String, (u8, String)>,
}

/// Reads the answer lines; `None`: the connection ended without one.
pub fn read_answer(input: &mut dyn BufRead) -> Option<Answer> {
    let mut notes = Vec::new();
    for _ in 0..64 {
        let mut line = Vec::new();
        input
            .take(MAX_REQUEST_LINE as u64)
            .read_until(b'\n', &mut line)
            .ok()?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\n');
        if let Some(n) = text.strip_prefix("NOTE ") {
            notes.push(n.to_string());
        } else if let Some(id) = text.strip_prefix("OK ") {
            return Some(Answer {
                notes,
                result: Ok(id.to_string()),
            });
        } else if let Some(rest) = text.strip_prefix("ERR ") {
            let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            return Some(Answer {
                notes,
                result: Err((code.parse().unwrap_or(EX_TEMPFAIL), msg.to_string())),
            });
        } else {
            return None;
        }
    }
    None
}

/// `pimail sendmail` through the socket at `path`: the message from
/// `input`; the queue id once the server has it on disk.
pub fn client(
    path: &Path,
    args: &SendmailArgs,
    input: &mut dyn BufRead,
) -> Result<(String, Vec<String>), SendmailError> {
    let tempfail = |m: String| SendmailError {
        code: EX_TEMPFAIL,
        message: m,
    };
    let request = encode_request(args).map_err(|m| SendmailError {
        code: sendmail::EX_USAGE,
        message: m,
    })?;
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        tempfail(format!(
            "the mail server is not running or not reachable (cannot connect to {}: {e}); nothing was sent",
            path.display()
        ))
    })?;
    let mut w = io::BufWriter::new(&stream);
    let sent = w
        .write_all(&request)
        .map_err(BodyError::Write)
        .and_then(|_| send_body(input, &mut w, args.ignore_dots));
    // The server may have refused early and closed: its answer is still
    // there to read.
    let wrote = match sent {
        Err(BodyError::Read(e)) => {
            return Err(tempfail(format!("cannot read the message: {e}")));
        }
        Err(BodyError::Write(e)) => Some(e),
        Ok(()) => None,
    };
    drop(w);
    let mut r = io::BufReader::new(&stream);
    match read_answer(&mut r) {
        Some(Answer {
            notes,
            result: Ok(id),
        }) => Ok((id, notes)),
        Some(Answer {
            result: Err((code, message)),
            ..
        }) => Err(SendmailError { code, message }),
        None => Err(tempfail(format!(
            "the mail server at {} did not confirm the message{}; it was not sent",
            path.display(),
            wrote.map(|e| format!(" ({e})")).unwrap_or_default()
        ))),
    }
}

/// A limiter shared by the accept loop's threads.
pub fn limiter() -> Arc<Limiter> {
    Arc::new(Limiter::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let args = SendmailArgs {
            from_headers: true,
            ignore_dots: true,
            sender: Some("".into()),
            full_name: Some("Cron Daemon".into()),
            recipients: vec!["root".into(), "a@b.example".into()],
        };
        let wire = encode_request(&args).unwrap();
        let mut req = Request::default();
        let text = String::from_utf8(wire).unwrap();
        let mut data = false;
        for l in text.lines() {
            data = parse_line(l, &mut req, 10).unwrap();
        }
        assert!(data);
        assert_eq!(req.args, args);
        let mut r = Request::default();
        assert!(parse_line("RCPT x", &mut r, 0).is_err());
        assert!(parse_line("PIMAIL-SUBMIT 2", &mut r, 1).is_err());
        assert!(parse_line("HELO", &mut r, 1).is_err());
        assert!(encode_request(&SendmailArgs {
            recipients: vec!["a\nRCPT b".into()],
            ..SendmailArgs::default()
        })
        .is_err());
    }

    #[test]
    fn chunks_round_trip_and_truncation() {
        let msg = b"Subject: x\n\nline\n.\nmore\n";
        let mut wire = Vec::new();
        send_body(&mut &msg[..], &mut wire, true).unwrap();
        let mut got = Vec::new();
        Chunks::new(&wire[..]).read_to_end(&mut got).unwrap();
        assert_eq!(got, msg);
        // Without -i the dot line ends it.
        let mut wire2 = Vec::new();
        send_body(&mut &msg[..], &mut wire2, false).unwrap();
        let mut got = Vec::new();
        Chunks::new(&wire2[..]).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"Subject: x\n\nline\n");
        // Cut anywhere before the end chunk: an error, never a short message.
        for cut in 0..wire.len() - 1 {
            let mut got = Vec::new();
            assert!(
                Chunks::new(&wire[..cut]).read_to_end(&mut got).is_err(),
                "{cut}"
            );
        }
        assert!(Chunks::new(&b"99999999\n"[..])
            .read_to_end(&mut Vec::new())
            .is_err());
    }

    #[test]
    fn answers() {
        let a = read_answer(&mut &b"NOTE n1\nOK ABC\n"[..]).unwrap();
        assert_eq!(a.notes, vec!["n1"]);
        assert_eq!(a.result, Ok("ABC".into()));
        let a = read_answer(&mut &b"ERR 65 too long\n"[..]).unwrap();
        assert_eq!(a.result, Err((65, "too long".into())));
        assert!(read_answer(&mut &b""[..]).is_none());
    }

    #[test]
    fn rate_limit_counts_untrusted_only() {
        let l = Limiter::default();
        let now = Instant::now();
        for _ in 0..PER_HOUR {
            l.enter(1000, false, now).unwrap();
            l.leave();
        }
        assert!(l.enter(1000, false, now).is_err());
        assert!(l.enter(1001, false, now).is_ok());
        l.leave();
        assert!(l.enter(0, true, now).is_ok());
        l.leave();
        let later = now + Duration::from_secs(3601);
        assert!(l.enter(1000, false, later).is_ok());
    }
}
