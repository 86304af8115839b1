//! Frames the client's byte stream into IMAP commands (RFC 9051 2.2.1 and
//! 4.3: a command is a line, and a line that ends in a literal `{n}`
//! continues after the literal's n octets), sans-I/O.
//!
//! The driver reads into [`Reader::spare`] and takes [`Event`]s out of
//! [`Reader::next_event`]. Literals:
//!
//! - `{n}` (synchronizing): the client waits for our `+` before sending
//!   the octets, so a literal we do not want is refused before it is sent
//!   ([`Event::Continue`] or a BAD).
//! - `{n+}` (non-synchronizing, LITERAL+ of RFC 7888): the octets follow
//!   at once; one over our limits cannot be refused, so it gets BAD and the
//!   connection is closed ([`Event::Fatal`], RFC 7888 section 4).
//! - `~{n}` (literal8, RFC 3516 BINARY) likewise.
//!
//! Non-APPEND literals are kept inline in the command (at most
//! [`MAX_LITERAL`] each, [`MAX_COMMAND`] in all). An APPEND's message
//! literal is not: the reader stops before it with [`Event::Append`], the
//! session decides (size against `max_message_size`, the folder exists),
//! and the driver either streams the octets out through
//! [`Reader::append_data`] to a spool file or has them skipped. Memory per
//! connection is therefore the read buffer plus at most one command.
//!
//! A line end is CRLF; a bare LF is taken as one too (as Dovecot does:
//! IMAP has no smuggling issue, and hand-typed sessions work). A line
//! longer than [`MAX_LINE`] gets BAD and is skipped to its end.

use super::command::{self, AppendHeader};

/// One line of a command (without literals), as Dovecot's default of 64k.
/// RFC 7162 3.1.1.1 asks servers to accept at least 8192 octets.
pub const MAX_LINE: usize = 64 * 1024;
/// A literal in any command but APPEND (SPEC: 64 KiB).
pub const MAX_LITERAL: u64 = 64 * 1024;
/// A whole command: its lines and literals.
pub const MAX_COMMAND: usize = 256 * 1024;
/// The rest of a line over [`MAX_LINE`] is dropped up to this many octets
/// more; a client still without a line end then gets BAD and BYE.
pub const MAX_DISCARD: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete command, literals inline, without its final CRLF (for
    /// [`command::parse`]); in IDLE or an AUTHENTICATE exchange, the
    /// client's line.
    Command(Vec<u8>),
    /// A synchronizing literal within the limits was announced: send a
    /// continuation request (`+ `), then read on.
    Continue,
    /// An APPEND's message literal of `size` octets was announced. Call
    /// [`Reader::accept_append`], [`Reader::skip_append`] or
    /// [`Reader::refuse_append`] before reading on.
    Append {
        tag: String,
        header: AppendHeader,
        size: u64,
        /// `{n}`: nothing is sent before our `+`.
        sync: bool,
        /// `~{n}` (RFC 3516): the message may hold NULs.
        binary: bool,
    },
    /// The APPEND message has been passed on; `Err` if its line did not
    /// end right after it (MULTIAPPEND, RFC 3502, is not offered).
    AppendEnd(Result<(), &'static str>),
    /// A command that cannot be run: answer BAD (tagged if the tag is
    /// known); `too_big` for a refused literal (`[TOOBIG]`).
    Bad {
        tag: Option<String>,
        why: &'static str,
        too_big: bool,
    },
    /// A non-synchronizing literal over the limits: BAD, then close.
    Fatal {
        tag: Option<String>,
        why: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a line of the command into `cmd`.
    Line,
    /// Copying a literal's octets into `cmd`.
    Literal(u64),
    /// Dropping the rest of a bad line; the octets dropped so far.
    Discard(u64),
    /// Dropping a literal that was sent without asking, then its line.
    Skip(u64),
    /// Waiting for the session's decision on an APPEND literal.
    AppendWait { size: u64, sync: bool },
    /// The driver is taking the APPEND octets.
    Append(u64),
    /// After the APPEND octets: the rest of the line must be empty.
    AppendTail,
}

pub struct Reader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The command read so far (lines and literals).
    cmd: Vec<u8>,
    /// Where the current line starts in `cmd`.
    line_start: usize,
    state: State,
}

/// A literal announcement at the end of a line: `{n}`, `{n+}`, `~{n}`.
struct Announce {
    /// Where `{` or `~` starts in the line.
    at: usize,
    size: u64,
    sync: bool,
    binary: bool,
}

fn announcement(line: &[u8]) -> Option<Announce> {
    let body = line.strip_suffix(b"}")?;
    let (body, sync) = match body.strip_suffix(b"+") {
        Some(b) => (b, false),
        None => (body, true),
    };
    let open = body.iter().rposition(|&b| b == b'{')?;
    let digits = &body[open + 1..];
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    let binary = open > 0 && body[open - 1] == b'~';
    Some(Announce {
        at: if binary { open - 1 } else { open },
        size,
        sync,
        binary,
    })
}

/// The tag of a (perhaps incomplete) command, for a tagged BAD.
pub fn tag_of(cmd: &[u8]) -> Option<String> {
    let end = cmd.iter().position(|&b| b == b' ')?;
    let tag = &cmd[..end];
    let ok = !tag.is_empty()
        && tag
            .iter()
            .all(|&b| b > 0x20 && b < 0x7f && !b"(){%*\"\\+".contains(&b));
    ok.then(|| String::from_utf8_lossy(tag).into_owned())
}

impl Reader {
    /// `capacity`: the read buffer (lines may be longer; they are
    /// gathered in the command buffer up to [`MAX_LINE`]).
    pub fn new(capacity: usize) -> Self {
        Reader {
            buf: vec![0; capacity.max(16)].into_boxed_slice(),
            start: 0,
            end: 0,
            cmd: Vec::new(),
            line_start: 0,
            state: State::Line,
        }
    }

    /// Free space to read into. Never empty: [`next_event`](Self::next_event) and
    /// [`append_data`](Self::append_data) always take what is buffered,
    /// except while an APPEND decision is pending (then do not read).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received and not yet taken.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Drops everything buffered and any partial command: after STARTTLS
    /// (RFC 9051 6.2.1: no pipelined plaintext is executed afterwards).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.reset();
    }

    fn reset(&mut self) {
        self.cmd = Vec::new();
        self.line_start = 0;
        self.state = State::Line;
    }

    /// The next event, or `None` when more input is needed (or an APPEND
    /// decision or the APPEND octets are pending).
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let avail = &self.buf[self.start..self.end];
            match self.state {
                State::AppendWait { .. } | State::Append(_) => return None,
                State::Literal(left) => {
                    if avail.is_empty() {
                        return None;
                    }
                    let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.cmd.extend_from_slice(&avail[..n]);
                    self.start += n;
                    let left = left - n as u64;
                    if left == 0 {
                        self.state = State::Line;
                        self.line_start = self.cmd.len();
                    } else {
                        self.state = State::Literal(left);
                    }
                }
                State::Skip(left) => {
                    if avail.is_empty() {
                        return None;
                    }
                    let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.start += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Discard(0)
                    } else {
                        State::Skip(left)
                    };
                }
                State::Discard(dropped) => match memchr::memchr(b'\n', avail) {
                    Some(i) => {
                        self.start += i + 1;
                        self.reset();
                    }
                    None => {
                        self.start = self.end;
                        let dropped = dropped + avail.len() as u64;
                        // A line that never ends is no client's command:
                        // close rather than read it forever.
                        if dropped > MAX_DISCARD {
                            self.reset();
                            return Some(Event::Fatal {
                                tag: None,
                                why: "line too long, no line end in sight",
                            });
                        }
                        self.state = State::Discard(dropped);
                        return None;
                    }
                },
                State::Line | State::AppendTail => {
                    if avail.is_empty() {
                        return None;
                    }
                    let nl = memchr::memchr(b'\n', avail);
                    let take = nl.map_or(avail.len(), |i| i + 1);
                    let part = &avail[..nl.unwrap_or(avail.len())];
                    self.cmd.extend_from_slice(part);
                    self.start += take;
                    if self.cmd.len() - self.line_start > MAX_LINE + 1 {
                        let tag = tag_of(&self.cmd);
                        self.cmd = Vec::new();
                        self.state = if nl.is_some() {
                            State::Line
                        } else {
                            State::Discard(0)
                        };
                        self.line_start = 0;
                        return Some(Event::Bad {
                            tag,
                            why: "line too long",
                            too_big: false,
                        });
                    }
                    nl?;
                    // The CR of this line's CRLF, not the last octet of a
                    // literal before a bare LF.
                    if self.cmd.len() > self.line_start && self.cmd.last() == Some(&b'\r') {
                        self.cmd.pop();
                    }
                    if let Some(e) = self.line_end() {
                        return Some(e);
                    }
                }
            }
        }
    }

    /// A line of the command is complete in `cmd`; `None`: read on (a
    /// non-synchronizing literal follows).
    fn line_end(&mut self) -> Option<Event> {
        let tail = self.state == State::AppendTail;
        let line = &self.cmd[self.line_start..];
        let Some(a) = announcement(line) else {
            if tail {
                let ok = self.cmd.is_empty();
                self.reset();
                return Some(Event::AppendEnd(if ok {
                    Ok(())
                } else {
                    Err("only one message per APPEND (no MULTIAPPEND)")
                }));
            }
            let cmd = std::mem::take(&mut self.cmd);
            self.reset();
            return Some(Event::Command(cmd));
        };
        let at = self.line_start + a.at;
        let tag = tag_of(&self.cmd);
        if tail {
            // A second message (MULTIAPPEND): refuse it.
            self.refuse(a.sync, a.size);
            return Some(Event::AppendEnd(Err(
                "only one message per APPEND (no MULTIAPPEND)",
            )));
        }
        match command::append_header(&self.cmd[..at]) {
            Ok(Some((tag, header))) => {
                self.cmd = Vec::new();
                self.line_start = 0;
                self.state = State::AppendWait {
                    size: a.size,
                    sync: a.sync,
                };
                return Some(Event::Append {
                    tag,
                    header,
                    size: a.size,
                    sync: a.sync,
                    binary: a.binary,
                });
            }
            Ok(None) => {}
            Err(e) => {
                self.refuse(a.sync, a.size);
                let why = e.reason();
                return Some(Event::Bad {
                    tag: e.tag,
                    why,
                    too_big: false,
                });
            }
        }
        if a.size > MAX_LITERAL || self.cmd.len() as u64 + a.size > MAX_COMMAND as u64 {
            if !a.sync {
                self.reset();
                return Some(Event::Fatal {
                    tag,
                    why: "literal too large (64 KiB at most outside APPEND)",
                });
            }
            self.reset();
            return Some(Event::Bad {
                tag,
                why: "literal too large (64 KiB at most outside APPEND)",
                too_big: true,
            });
        }
        // Normalise the announcement's line end for the parser.
        self.cmd.extend_from_slice(b"\r\n");
        if a.size == 0 {
            self.state = State::Line;
            self.line_start = self.cmd.len();
        } else {
            self.state = State::Literal(a.size);
        }
        a.sync.then_some(Event::Continue)
    }

    /// After a refused literal: a synchronizing one will not come, a
    /// non-synchronizing one is on its way and is dropped.
    fn refuse(&mut self, sync: bool, size: u64) {
        self.reset();
        if !sync {
            self.state = State::Skip(size);
            if size == 0 {
                self.state = State::Discard(0);
            }
        }
    }

    /// The session takes the APPEND message: the driver now moves the
    /// octets out with [`append_data`](Self::append_data).
    pub fn accept_append(&mut self) {
        if let State::AppendWait { size, .. } = self.state {
            self.state = if size == 0 {
                State::AppendTail
            } else {
                State::Append(size)
            };
        }
    }

    /// The session refuses the APPEND (too big, no such folder): a
    /// non-synchronizing literal is read and dropped, bounded in memory.
    pub fn skip_append(&mut self) {
        if let State::AppendWait { size, sync } = self.state {
            self.refuse(sync, size);
        }
    }

    /// Same as [`skip_append`](Self::skip_append); the name says that a
    /// synchronizing literal will simply not be sent.
    pub fn refuse_append(&mut self) {
        self.skip_append();
    }

    /// The APPEND octets still to come.
    pub fn append_left(&self) -> u64 {
        match self.state {
            State::Append(left) => left,
            _ => 0,
        }
    }

    /// The buffered APPEND octets (at most what is left of the literal).
    /// After writing them out, call [`append_taken`](Self::append_taken).
    pub fn append_data(&self) -> &[u8] {
        let left = usize::try_from(self.append_left()).unwrap_or(usize::MAX);
        let avail = &self.buf[self.start..self.end];
        &avail[..avail.len().min(left)]
    }

    pub fn append_taken(&mut self, n: usize) {
        if let State::Append(left) = self.state {
            let n = n
                .min(self.end - self.start)
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            self.start += n;
            let left = left - n as u64;
            self.state = if left == 0 {
                State::AppendTail
            } else {
                State::Append(left)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, collecting the events; an
    /// APPEND is accepted and its octets gathered into the event list as
    /// a `Command`.
    fn run(input: &[u8], step: usize, accept: bool) -> Vec<Event> {
        let mut r = Reader::new(16);
        let mut events = Vec::new();
        let mut msg = Vec::new();
        let mut i = 0;
        for _ in 0..100_000 {
            loop {
                if r.append_left() > 0 {
                    let d = r.append_data().to_vec();
                    if d.is_empty() {
                        break;
                    }
                    msg.extend_from_slice(&d);
                    r.append_taken(d.len());
                    continue;
                }
                match r.next_event() {
                    Some(e) => {
                        if let Event::Append { .. } = e {
                            if accept {
                                r.accept_append();
                            } else {
                                r.refuse_append();
                            }
                        }
                        if let Event::AppendEnd(_) = e {
                            events.push(Event::Command(std::mem::take(&mut msg)));
                        }
                        events.push(e);
                    }
                    None => break,
                }
            }
            if i >= input.len() {
                break;
            }
            let spare = r.spare();
            let n = step.min(spare.len()).min(input.len() - i);
            spare[..n].copy_from_slice(&input[i..i + n]);
            r.filled(n);
            i += n;
        }
        events
    }

    fn every_split(input: &[u8], accept: bool) -> Vec<Event> {
        let first = run(input, input.len(), accept);
        for step in 1..input.len() {
            assert_eq!(run(input, step, accept), first, "step {step}");
        }
        first
    }

    fn cmd(s: &[u8]) -> Event {
        Event::Command(s.to_vec())
    }

    /// The BAD for an over-long line tagged `t1`.
    fn t1_too_long() -> Event {
        Event::Bad {
            tag: Some("t1".into()),
            why: "line too long",
            too_big: false,
        }
    }

    #[test]
    fn lines_and_synchronizing_literals() {
        let ev = every_split(
            b"a1 NOOP\r\na2 LOGIN {5}\r\nalice {3}\r\nx y\r\nDONE\n",
            true,
        );
        assert_eq!(
            ev,
            vec![
                cmd(b"a1 NOOP"),
                Event::Continue,
                Event::Continue,
                cmd(b"a2 LOGIN {5}\r\nalice {3}\r\nx y"),
                cmd(b"DONE"),
            ]
        );
        // The framed command parses with its literals.
        let Event::Command(c) = &ev[3] else {
            unreachable!()
        };
        assert!(command::parse(c).is_ok());
    }

    #[test]
    fn rfc7888_non_synchronizing_literals() {
        // RFC 7888 3: no continuation request for {n+}.
        let ev = every_split(b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n", true);
        assert_eq!(
            ev,
            vec![cmd(b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man")]
        );
        // Over the limit: BAD and close (it cannot be refused).
        let ev = run(b"a LOGIN {99999+}\r\nxx", 100, true);
        assert!(matches!(ev[0], Event::Fatal { tag: Some(ref t), .. } if t == "a"));
        // A synchronizing one over the limit is refused before it is sent.
        let ev = run(b"b LOGIN {99999}\r\nc NOOP\r\n", 100, true);
        assert!(matches!(ev[0], Event::Bad { too_big: true, .. }));
        assert_eq!(ev[1], cmd(b"c NOOP"));
    }

    #[test]
    fn append_is_streamed_not_gathered() {
        let input = b"A003 APPEND saved-messages (\\Seen) {12}\r\nHello world!\r\na NOOP\r\n";
        let ev = every_split(input, true);
        assert!(
            matches!(&ev[0], Event::Append { tag, size: 12, sync: true, binary: false, .. } if tag == "A003")
        );
        assert_eq!(ev[1], cmd(b"Hello world!"));
        assert_eq!(ev[2], Event::AppendEnd(Ok(())));
        assert_eq!(ev[3], cmd(b"a NOOP"));
        // A mailbox name literal comes first, then the message.
        let ev = every_split(b"A4 APPEND {5}\r\nDraft ~{3+}\r\nx\0y\r\n", true);
        assert_eq!(ev[0], Event::Continue);
        assert!(
            matches!(&ev[1], Event::Append { header, sync: false, binary: true, .. } if header.mailbox == b"Draft")
        );
        assert_eq!(ev[2], cmd(b"x\0y"));
        // MULTIAPPEND is refused.
        let ev = run(b"A5 APPEND x {1+}\r\nm {1+}\r\nn\r\na NOOP\r\n", 100, true);
        assert_eq!(
            ev[2],
            Event::AppendEnd(Err("only one message per APPEND (no MULTIAPPEND)"))
        );
        assert_eq!(ev[3], cmd(b"a NOOP"));
    }

    #[test]
    fn refused_append_literals() {
        // Synchronizing: the client sends nothing more.
        let ev = run(b"A APPEND x {99999999}\r\nb NOOP\r\n", 100, false);
        assert!(matches!(ev[0], Event::Append { size: 99999999, .. }));
        assert_eq!(ev[1], cmd(b"b NOOP"));
        // Non-synchronizing: its octets are dropped, not executed.
        let ev = every_split(b"A APPEND x {10+}\r\nc LOGOUT\r\n\r\nb NOOP\r\n", false);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1], cmd(b"b NOOP"));
        // A bad header before a non-synchronizing literal: BAD, octets dropped.
        let ev = run(
            b"A APPEND x (\\Bogus) {10+}\r\nc LOGOUT\r\n\r\nb NOOP\r\n",
            100,
            true,
        );
        assert!(
            matches!(ev[0], Event::Bad { tag: Some(ref t), why: "unknown system flag", .. } if t == "A")
        );
        assert_eq!(ev[1], cmd(b"b NOOP"));
    }

    #[test]
    fn literal_ending_in_cr_before_a_bare_lf() {
        // Found by fuzzing: the literal's own CR is not the line's.
        let ev = every_split(b"a LOGIN {2}\r\nx\r\n", true);
        assert_eq!(ev, vec![Event::Continue, cmd(b"a LOGIN {2}\r\nx\r")]);
    }

    #[test]
    fn long_lines_are_refused_with_flat_memory() {
        let mut input = b"t1 NOOP ".to_vec();
        input.resize(MAX_LINE * 3, b'x');
        input.extend_from_slice(b"\r\nt2 NOOP\r\n");
        let ev = run(&input, 4096, true);
        assert_eq!(ev, vec![t1_too_long(), cmd(b"t2 NOOP")]);
        assert!(tag_of(b"+x NOOP").is_none());
    }

    #[test]
    fn a_line_without_end_is_cut_off() {
        let mut input = b"t1 NOOP ".to_vec();
        input.resize(2 * MAX_LINE + MAX_DISCARD as usize, b'x');
        let ev = run(&input, 4096, true);
        assert_eq!(
            ev,
            vec![
                t1_too_long(),
                Event::Fatal {
                    tag: None,
                    why: "line too long, no line end in sight"
                }
            ]
        );
    }
}
