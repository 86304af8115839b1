//! The MIME structure of a stored message, for IMAP: ENVELOPE, BODY and
//! BODYSTRUCTURE (RFC 9051 7.5.2, RFC 3501 7.4.2) and where every part
//! is (RFC 9051 6.4.5 section numbers), computed once in one streaming
//! pass and kept in the folder index ([`index`]), so that FETCH of them
//! for a whole folder reads only the index.
//!
//! Input is the message as the mbox holds it (mboxrd quoting, usually LF
//! line ends), fed in chunks of any size; the IMAP view of it is the wire
//! form POP3 also sends: quoting undone, every line ending in CRLF
//! ([`WireWriter`]). Sizes, line counts and offsets are given in both
//! forms: the wire form for the client, the stored form to read a file
//! range. Only the header block of each part is held (at most
//! [`MAX_HEADER`] bytes; beyond that the fields are not read), plus a
//! stack of boundaries at most [`MAX_DEPTH`] deep: a message never sits
//! whole in memory.
//!
//! Boundaries are matched as Dovecot and mutt do: a line that starts with
//! `--boundary` of any open multipart, the innermost first; the line end
//! before it belongs to the delimiter (RFC 2046 5.1.1).

pub mod decode;
pub mod header;
pub mod imap;
pub mod index;

/// Bytes kept of one header block; fields past it are not seen.
pub const MAX_HEADER: usize = 64 * 1024;
/// Multiparts and message/rfc822 parts nested deeper than this are
/// taken as single parts.
pub const MAX_DEPTH: usize = 32;
/// Parts in one message beyond this are not split out (a bomb of empty
/// parts would otherwise make the index as large as the message).
pub const MAX_PARTS: usize = 2000;
/// The longest boundary taken (RFC 2046 allows 70).
const MAX_BOUNDARY: usize = 200;
/// The start of each line kept to look for boundaries.
const LINE_KEEP: usize = MAX_BOUNDARY + 4;

/// MIME parameters as (name, value) pairs, in order.
pub type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// A position in the message: in the stored (mbox) form and in the wire
/// form, counted from the start of the message's first header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub stored: u64,
    pub wire: u64,
}

/// One address of an ENVELOPE list (RFC 9051 7.5.2 `address`). A group
/// start has `mailbox` = the group name and no host; a group end has all
/// four NIL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    pub name: Option<Vec<u8>>,
    pub adl: Option<Vec<u8>>,
    pub mailbox: Option<Vec<u8>>,
    pub host: Option<Vec<u8>>,
}

/// The envelope of a message (RFC 9051 7.5.2): field values as written,
/// unfolded, with encoded words left as they are; the decoded forms are
/// [`Envelope::subject_decoded`] and [`header::decode_2047`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    pub date: Option<Vec<u8>>,
    pub subject: Option<Vec<u8>>,
    pub from: Vec<Address>,
    pub sender: Vec<Address>,
    pub reply_to: Vec<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub in_reply_to: Option<Vec<u8>>,
    pub message_id: Option<Vec<u8>>,
}

impl Envelope {
    /// The subject as a person reads it (RFC 2047 decoded), for SEARCH.
    pub fn subject_decoded(&self) -> Option<String> {
        self.subject.as_deref().map(header::decode_2047)
    }
}

/// What a part holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Single,
    /// multipart/*: at least one child.
    Multi(Vec<Part>),
    /// message/rfc822 (or message/global): the encapsulated message.
    Message(Box<Envelope>, Box<Part>),
}

/// One MIME entity: the fields BODYSTRUCTURE reports and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Start of its header (its MIME header; for a message, the message
    /// header), start of its body (after the empty line), end of its body
    /// (before the line end that precedes the next delimiter).
    pub header: Pos,
    pub body: Pos,
    pub end: Pos,
    /// Lines of the body in the wire form (text/* and message/rfc822
    /// report it).
    pub lines: u64,
    /// Type and subtype as written (defaults `text/plain`).
    pub ctype: Vec<u8>,
    pub subtype: Vec<u8>,
    /// Content-Type parameters (RFC 2231 continuations joined).
    pub params: Params,
    pub id: Option<Vec<u8>>,
    pub description: Option<Vec<u8>>,
    /// Content-Transfer-Encoding; `None` is 7bit.
    pub encoding: Option<Vec<u8>>,
    pub md5: Option<Vec<u8>>,
    pub disposition: Option<(Vec<u8>, Params)>,
    pub language: Vec<Vec<u8>>,
    pub location: Option<Vec<u8>>,
    pub kind: Kind,
}

impl Part {
    fn new(header: Pos, default_rfc822: bool) -> Part {
        let (t, s): (&[u8], &[u8]) = if default_rfc822 {
            (b"message", b"rfc822")
        } else {
            (b"text", b"plain")
        };
        Part {
            header,
            body: header,
            end: header,
            lines: 0,
            ctype: t.to_vec(),
            subtype: s.to_vec(),
            params: if default_rfc822 {
                Vec::new()
            } else {
                vec![(b"charset".to_vec(), b"us-ascii".to_vec())]
            },
            id: None,
            description: None,
            encoding: None,
            md5: None,
            disposition: None,
            language: Vec::new(),
            location: None,
            kind: Kind::Single,
        }
    }

    /// Body octets as the client receives them.
    pub fn size(&self) -> u64 {
        self.end.wire.saturating_sub(self.body.wire)
    }

    pub fn is(&self, t: &str, s: &str) -> bool {
        self.ctype.eq_ignore_ascii_case(t.as_bytes())
            && self.subtype.eq_ignore_ascii_case(s.as_bytes())
    }

    fn is_message(&self) -> bool {
        self.ctype.eq_ignore_ascii_case(b"message")
            && (self.subtype.eq_ignore_ascii_case(b"rfc822")
                || self.subtype.eq_ignore_ascii_case(b"global"))
    }

    /// The file name a person would see (Content-Disposition `filename`,
    /// else Content-Type `name`), decoded to UTF-8 (RFC 2231, RFC 2047).
    pub fn filename(&self) -> Option<String> {
        self.disposition
            .as_ref()
            .and_then(|(_, p)| header::param_decoded(p, "filename"))
            .or_else(|| header::param_decoded(&self.params, "name"))
    }

    pub fn param(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    /// Reads the MIME fields of a header block into the part.
    fn take_header(&mut self, fields: &[(&[u8], &[u8])], in_digest: bool) {
        let mut seen_type = false;
        let mut buf = [0u8; NAME_KEEP];
        for &(name, value) in fields {
            let first = |v: &Option<Vec<u8>>| v.is_none();
            match lowered(name, &mut buf) {
                b"content-type" if !seen_type => {
                    seen_type = true;
                    // RFC 2045 5.2: a type that cannot be read is text/plain.
                    if let Some(v) = header::mime_value(value, true) {
                        self.ctype = v.value;
                        self.subtype = v.subtype.unwrap_or_default();
                        self.params = v.params;
                        if self.ctype.eq_ignore_ascii_case(b"text")
                            && self.param("charset").is_none()
                        {
                            // RFC 2045 5.2's default charset, as Dovecot
                            // reports it.
                            self.params
                                .push((b"charset".to_vec(), b"us-ascii".to_vec()));
                        }
                    } else {
                        let d = Part::new(self.header, in_digest);
                        self.ctype = d.ctype;
                        self.subtype = d.subtype;
                        self.params = d.params;
                    }
                }
                b"content-transfer-encoding" if first(&self.encoding) => {
                    let v = header::trim(value);
                    let v: Vec<u8> = v
                        .iter()
                        .copied()
                        .take_while(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'(' | b';'))
                        .collect();
                    self.encoding = (!v.is_empty()).then_some(v);
                }
                b"content-id" if first(&self.id) => self.id = Some(header::unfold(value)),
                b"content-description" if first(&self.description) => {
                    self.description = Some(header::unfold(value))
                }
                b"content-md5" if first(&self.md5) => self.md5 = Some(header::unfold(value)),
                b"content-location" if first(&self.location) => {
                    // RFC 2557 4.2: folded URLs are joined without spaces.
                    let v: Vec<u8> = value
                        .iter()
                        .copied()
                        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                        .collect();
                    self.location = Some(v);
                }
                b"content-disposition" if self.disposition.is_none() => {
                    if let Some(v) = header::mime_value(value, false) {
                        self.disposition = Some((v.value, v.params));
                    }
                }
                b"content-language" if self.language.is_empty() => {
                    self.language = header::languages(value);
                }
                _ => {}
            }
        }
    }
}

/// Longer than every field name matched here.
const NAME_KEEP: usize = 32;

/// A field name in lower case, in `buf` (no allocation per field);
/// empty for a name too long to be one we read.
fn lowered<'b>(name: &[u8], buf: &'b mut [u8; NAME_KEEP]) -> &'b [u8] {
    if name.len() > NAME_KEEP {
        return &[];
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name);
    out.make_ascii_lowercase();
    out
}

/// Reads the envelope fields of a message header block's fields.
fn envelope(fields: &[(&[u8], &[u8])]) -> Envelope {
    let mut e = Envelope::default();
    let (mut from, mut sender, mut reply_to, mut to, mut cc, mut bcc) =
        (None, None, None, None, None, None);
    let mut buf = [0u8; NAME_KEEP];
    for &(name, value) in fields {
        let slot = match lowered(name, &mut buf) {
            b"date" => &mut e.date,
            b"subject" => &mut e.subject,
            b"in-reply-to" => &mut e.in_reply_to,
            b"message-id" => &mut e.message_id,
            b"from" => &mut from,
            b"sender" => &mut sender,
            b"reply-to" => &mut reply_to,
            b"to" => &mut to,
            b"cc" => &mut cc,
            b"bcc" => &mut bcc,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(header::unfold(value));
        }
    }
    let list = |v: &Option<Vec<u8>>| v.as_deref().map(header::addresses).unwrap_or_default();
    e.from = list(&from);
    e.sender = list(&sender);
    e.reply_to = list(&reply_to);
    e.to = list(&to);
    e.cc = list(&cc);
    e.bcc = list(&bcc);
    // RFC 9051 7.5.2: absent or empty Sender and Reply-To are From.
    if e.sender.is_empty() {
        e.sender = e.from.clone();
    }
    if e.reply_to.is_empty() {
        e.reply_to = e.from.clone();
    }
    e
}

/// The whole structure of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure {
    pub envelope: Envelope,
    /// The message itself: its header is the message header, its body
    /// the text (BODY[TEXT]).
    pub root: Part,
}

/// Which bytes of a part a FETCH section names (RFC 9051 6.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `BODY[1.2]`: the part's body (for message/rfc822, the whole
    /// encapsulated message); `BODY[]` with an empty path.
    Body,
    /// `HEADER` (also the base of HEADER.FIELDS): the message header.
    Header,
    /// `TEXT`: the message body.
    Text,
    /// `MIME`: the part's own MIME header.
    Mime,
}

/// A byte range of the message, in both forms ([`Pos`]); the end is
/// exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: Pos,
    pub end: Pos,
}

impl Range {
    pub fn wire_len(&self) -> u64 {
        self.end.wire.saturating_sub(self.start.wire)
    }
}

impl Structure {
    /// Parses a whole message held in memory (tests, APPEND of small
    /// messages); the driver for files uses [`Parser`] directly.
    pub fn parse(stored: &[u8]) -> Structure {
        let mut p = Parser::new();
        p.feed(stored);
        p.finish()
    }

    /// The part a section path names (`[]` is the message itself), RFC
    /// 9051 6.4.5: in a multipart, n is its nth child; a part that is no
    /// multipart has only part 1, itself; after a message/rfc822 part the
    /// numbers go on in the encapsulated message.
    pub fn part(&self, path: &[u32]) -> Option<&Part> {
        let mut node = &self.root;
        for (i, &n) in path.iter().enumerate() {
            let ctx = match &node.kind {
                Kind::Message(_, inner) if i > 0 => inner.as_ref(),
                Kind::Single if i > 0 => return None,
                _ => node,
            };
            node = match &ctx.kind {
                Kind::Multi(children) => children.get((n as usize).checked_sub(1)?)?,
                _ if n == 1 => ctx,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The bytes a section names, or `None` if the message has no such
    /// section (the server then answers with an empty string, as RFC 9051
    /// 6.4.5 allows, or NO).
    pub fn section(&self, path: &[u32], spec: Spec) -> Option<Range> {
        let node = self.part(path)?;
        let r = |a: Pos, b: Pos| Some(Range { start: a, end: b });
        match spec {
            Spec::Body if path.is_empty() => r(node.header, node.end),
            Spec::Body => r(node.body, node.end),
            Spec::Mime if path.is_empty() => None,
            Spec::Mime => r(node.header, node.body),
            Spec::Header | Spec::Text => {
                let msg = if path.is_empty() {
                    node
                } else {
                    match &node.kind {
                        Kind::Message(_, inner) => inner.as_ref(),
                        _ => return None,
                    }
                };
                if spec == Spec::Header {
                    r(msg.header, msg.body)
                } else {
                    r(msg.body, msg.end)
                }
            }
        }
    }

    /// Octets of the whole message as the client sees it (RFC822.SIZE).
    pub fn size(&self) -> u64 {
        self.root.end.wire
    }
}

/// CRLF line ends in `run` (searched by their CR: mbox files rarely
/// have any, and a byte that is not there is the fastest to look for).
pub fn count_crlf(run: &[u8]) -> u64 {
    memchr::memchr_iter(b'\r', run)
        .filter(|&j| run.get(j + 1) == Some(&b'\n'))
        .count() as u64
}

/// Lines of `run` (whole lines, from a line start) that carry mboxrd
/// quoting: `>`s, then `From ` (RFC 4155; each loses one `>` on the
/// wire). Found by their `From `, rarer than line starts.
pub fn count_quoted(run: &[u8]) -> u64 {
    from_finder()
        .find_iter(run)
        .filter(|&j| quoted_at(run, j))
        .count() as u64
}

/// A search for `From `, built once.
pub fn from_finder() -> &'static memchr::memmem::Finder<'static> {
    static FROM: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    FROM.get_or_init(|| memchr::memmem::Finder::new(b"From "))
}

/// Is the `From ` at `j` in `run` (which starts at a line start) a line
/// with mboxrd quoting: only `>`s before it on its line, at least one?
pub fn quoted_at(run: &[u8], j: usize) -> bool {
    let gts = run[..j].iter().rev().take_while(|&&b| b == b'>').count();
    let k = j - gts;
    gts > 0 && (k == 0 || run[k - 1] == b'\n')
}

// ---- the streaming parser ------------------------------------------------------

struct Frame {
    part: Part,
    header_done: bool,
    /// For an open multipart: `--` and its boundary.
    delimiter: Option<Vec<u8>>,
    /// Lines completed before its body started.
    lines0: u64,
    /// Its header is a message header (the root, or the first thing in a
    /// message/rfc822 body): read the envelope from it.
    is_message: bool,
    /// A message/rfc822 part whose body is being read as a message.
    holds_message: bool,
    in_digest: bool,
    envelope: Option<Envelope>,
}

impl Frame {
    fn new(at: Pos, is_message: bool, in_digest: bool) -> Frame {
        Frame {
            part: Part::new(at, in_digest),
            header_done: false,
            delimiter: None,
            lines0: 0,
            is_message,
            holds_message: false,
            in_digest,
            envelope: None,
        }
    }
}

/// The mboxrd quoting test for a line (`>+From ` loses one `>`, RFC 4155
/// and store::mbox), decided on its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// This many `>` so far.
    Gt(u64),
    /// `>`s, then this many bytes of `From `.
    From(u64, usize),
    Decided(bool),
}

impl Quote {
    fn step(self, b: u8) -> Quote {
        match self {
            Quote::Gt(n) if b == b'>' => Quote::Gt(n.saturating_add(1)),
            Quote::Gt(n) if n > 0 && b == b'F' => Quote::From(n, 1),
            Quote::From(n, k) if b == b"From "[k] => {
                if k == 4 {
                    Quote::Decided(true)
                } else {
                    Quote::From(n, k + 1)
                }
            }
            Quote::Decided(d) => Quote::Decided(d),
            _ => Quote::Decided(false),
        }
    }
}

/// Sans-I/O: feed the stored message in chunks of any size, then
/// [`Parser::finish`].
pub struct Parser {
    stack: Vec<Frame>,
    /// The header block being read (bounded by [`MAX_HEADER`]).
    hdr: Vec<u8>,
    /// Where the current line starts in `hdr`.
    hdr_line: usize,
    /// The first bytes of the current line (for delimiters).
    line: Vec<u8>,
    /// Bytes of the current line so far (stored form).
    line_len: u64,
    /// The line's last two bytes.
    last2: [u8; 2],
    quote: Quote,
    /// Start of the current line.
    at: Pos,
    /// Lines completed.
    lines: u64,
    /// The last completed line's line end in stored octets.
    prev_term: u64,
    parts: usize,
    root: Option<(Part, Option<Envelope>)>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

/// A finished [`Parser`]'s buffers, for the next one
/// ([`Parser::with_buffers`]): a scan of many messages then grows none of
/// them again (their growth was a tenth of a first scan's time).
#[derive(Default)]
pub struct Buffers {
    hdr: Vec<u8>,
    line: Vec<u8>,
    stack: Vec<Frame>,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::with_buffers(Buffers::default())
    }

    pub fn with_buffers(mut b: Buffers) -> Parser {
        b.hdr.clear();
        b.line.clear();
        b.line.reserve(LINE_KEEP);
        b.stack.clear();
        b.stack.push(Frame::new(Pos::default(), true, false));
        Parser {
            stack: b.stack,
            hdr: b.hdr,
            hdr_line: 0,
            line: b.line,
            line_len: 0,
            last2: [0; 2],
            quote: Quote::Gt(0),
            at: Pos::default(),
            lines: 0,
            prev_term: 0,
            parts: 1,
            root: None,
        }
    }

    fn in_header(&self) -> bool {
        self.stack.last().is_some_and(|f| !f.header_done)
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if let Some(n) = self.bulk_run(chunk) {
                self.bulk(&chunk[..n]);
                chunk = &chunk[n..];
                continue;
            }
            let (piece, rest, ends) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..=i], &chunk[i + 1..], true),
                None => (chunk, &b""[..], false),
            };
            self.piece(piece);
            if ends {
                self.end_line();
            }
            chunk = rest;
        }
    }

    /// At a line start in a body: how many bytes of `chunk` are whole
    /// lines that [`Parser::end_line`] would only count (no delimiter of
    /// an open multipart among them), so [`Parser::bulk`] can take them
    /// at once. Most of a message is such lines (attachments, text).
    fn bulk_run(&self, chunk: &[u8]) -> Option<usize> {
        if self.line_len != 0 || self.in_header() {
            return None;
        }
        let mut n = memchr::memrchr(b'\n', chunk)? + 1;
        if self.stack.iter().any(|f| f.delimiter.is_some()) {
            // A line starting with `--` may be a delimiter: line by line.
            if chunk.starts_with(b"--") {
                return None;
            }
            static DASHES: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
                std::sync::OnceLock::new();
            let dashes = DASHES.get_or_init(|| memchr::memmem::Finder::new(b"\n--"));
            if let Some(j) = dashes.find(&chunk[..n]) {
                n = j + 1;
            }
        }
        Some(n)
    }

    /// [`Parser::piece`] and [`Parser::end_line`] for each line of `run`,
    /// whole body lines none of which is a delimiter: only the counts
    /// move (lines, stored and wire octets, the last line end).
    fn bulk(&mut self, run: &[u8]) {
        let lf = memchr::memchr_iter(b'\n', run).count() as u64;
        let crlf = count_crlf(run);
        // A quoted line has a `>`: a run without one (an attachment, most
        // text) needs no search for `From ` (a single octet is the
        // fastest search).
        let quoted = if memchr::memchr(b'>', run).is_some() {
            count_quoted(run)
        } else {
            0
        };
        let len = run.len() as u64;
        self.at.stored += len;
        self.at.wire += len + lf - crlf - quoted;
        self.lines += lf;
        // The last line's end: CRLF stays two octets, a bare LF one.
        self.prev_term = if run.len() >= 2 && run[run.len() - 2] == b'\r' {
            2
        } else {
            1
        };
        self.hdr_line = self.hdr.len();
    }

    /// [`Parser::feed`] without [`Parser::bulk`]: the reference the fast
    /// path is checked against.
    #[cfg(test)]
    fn feed_lines(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let (piece, rest, ends) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..=i], &chunk[i + 1..], true),
                None => (chunk, &b""[..], false),
            };
            self.piece(piece);
            if ends {
                self.end_line();
            }
            chunk = rest;
        }
    }

    /// Bytes of the current line (the LF, if any, last).
    fn piece(&mut self, p: &[u8]) {
        for &b in p {
            if let Quote::Decided(_) = self.quote {
                break;
            }
            self.quote = self.quote.step(b);
        }
        let room = LINE_KEEP.saturating_sub(self.line.len());
        self.line.extend_from_slice(&p[..p.len().min(room)]);
        if self.in_header() {
            let room = MAX_HEADER.saturating_sub(self.hdr.len());
            self.hdr.extend_from_slice(&p[..p.len().min(room)]);
        }
        self.line_len += p.len() as u64;
        match p.len() {
            0 => {}
            1 => self.last2 = [self.last2[1], p[0]],
            n => self.last2 = [p[n - 2], p[n - 1]],
        }
    }

    /// The current line is complete (its LF seen).
    fn end_line(&mut self) {
        let quoted = self.quote == Quote::Decided(true);
        // A CRLF stays, a bare LF becomes CRLF.
        let cr = self.line_len >= 2 && self.last2[0] == b'\r';
        let term = if cr { 2 } else { 1 };
        let wire_len = self.line_len - quoted as u64 + (!cr) as u64;
        let empty = self.line_len == term;
        let next = Pos {
            stored: self.at.stored + self.line_len,
            wire: self.at.wire + wire_len,
        };

        if let Some(level) = self.delimiter_level() {
            let closing = {
                let d = self.stack[level].delimiter.as_deref().unwrap_or_default();
                self.line[d.len()..].starts_with(b"--")
            };
            self.close_above(level, self.at);
            if closing {
                // The epilogue follows; a later delimiter is not one.
                self.stack[level].delimiter = None;
            } else if self.parts < MAX_PARTS {
                let digest = self.stack[level]
                    .part
                    .subtype
                    .eq_ignore_ascii_case(b"digest");
                self.parts += 1;
                self.stack.push(Frame::new(next, false, digest));
                self.hdr.clear();
            }
        } else if self.in_header() {
            if empty {
                // The empty line ends the header and belongs to it.
                self.end_header(next);
            } else if quoted && self.hdr_line < self.hdr.len() {
                self.hdr.remove(self.hdr_line);
            }
        }
        self.hdr_line = self.hdr.len();
        self.lines += 1;
        self.prev_term = term;
        self.at = next;
        self.line.clear();
        self.line_len = 0;
        self.last2 = [0; 2];
        self.quote = Quote::Gt(0);
    }

    /// Is the current line a delimiter of an open multipart? Its index in
    /// the stack (innermost first).
    fn delimiter_level(&self) -> Option<usize> {
        if !self.line.starts_with(b"--") {
            return None;
        }
        (0..self.stack.len()).rev().find(|&i| {
            self.stack[i]
                .delimiter
                .as_deref()
                .is_some_and(|d| self.line.starts_with(d))
        })
    }

    /// Reads the top frame's header block; its body starts at `body`.
    fn take_header(&mut self, body: Pos, lines0: u64) {
        let Some(top) = self.stack.last_mut() else {
            return;
        };
        // Taken apart once for both.
        let fields = header::fields(&self.hdr);
        top.part.take_header(&fields, top.in_digest);
        if top.is_message {
            top.envelope = Some(envelope(&fields));
        }
        drop(fields);
        top.part.body = body;
        top.lines0 = lines0;
        top.header_done = true;
        self.hdr.clear();
    }

    /// The top part's header ended with the empty line; its body starts
    /// at `body`.
    fn end_header(&mut self, body: Pos) {
        let depth = self.stack.len();
        self.take_header(body, self.lines + 1);
        let parts = self.parts;
        let Some(top) = self.stack.last_mut() else {
            return;
        };
        if top.part.ctype.eq_ignore_ascii_case(b"multipart") {
            let b = top.part.param("boundary").unwrap_or_default();
            if !b.is_empty() && b.len() <= MAX_BOUNDARY && depth < MAX_DEPTH {
                let mut d = b"--".to_vec();
                d.extend_from_slice(b);
                top.delimiter = Some(d);
            }
        } else if top.part.is_message()
            && depth < MAX_DEPTH
            && parts < MAX_PARTS
            && identity(&top.part)
        {
            top.holds_message = true;
            self.parts += 1;
            self.stack.push(Frame::new(body, true, false));
        }
    }

    /// Ends every part above `level` at the delimiter line starting at `at`.
    fn close_above(&mut self, level: usize, at: Pos) {
        while self.stack.len() > level + 1 {
            let Some(frame) = self.stack.pop() else {
                return;
            };
            let done = self.finish_frame(frame, at, true);
            if let Some(parent) = self.stack.last_mut() {
                attach(parent, done);
            }
        }
    }

    /// Closes a part at `at`: a delimiter line (`by_delimiter`: the line
    /// end before it is the delimiter's) or the end of the message.
    fn finish_frame(
        &mut self,
        mut f: Frame,
        at: Pos,
        by_delimiter: bool,
    ) -> (Part, Option<Envelope>) {
        // Before a delimiter, the part ends before the line end that the
        // delimiter owns.
        let end = if by_delimiter {
            Pos {
                stored: at.stored.saturating_sub(self.prev_term),
                wire: at.wire.saturating_sub(if self.lines > 0 { 2 } else { 0 }),
            }
        } else {
            at
        };
        if !f.header_done {
            // The header never ended: what was read of it is the header,
            // up to the end of the part, and the body is empty.
            self.stack.push(f);
            self.take_header(end, self.lines);
            let Some(top) = self.stack.pop() else {
                unreachable!("pushed above");
            };
            f = top;
        }
        // A part that starts on its closing delimiter's line, or whose
        // header's empty line is the line end the delimiter owns, is empty
        // at `end`: nothing of it lies past its parent's end.
        let past = |p: Pos| p.stored > end.stored || p.wire > end.wire;
        if past(f.part.header) {
            f.part.header = end;
        }
        if past(f.part.body) {
            f.part.body = end;
        }
        let n = self.lines.saturating_sub(f.lines0);
        // Lines are the line ends in the body (as Dovecot counts them);
        // before a delimiter the last one belongs to it, and an open last
        // line at the end gets one in the wire form.
        let lines = if by_delimiter {
            n.saturating_sub(1)
        } else {
            n + (self.line_len > 0) as u64
        };
        f.part.end = end;
        f.part.lines = if f.part.end == f.part.body { 0 } else { lines };
        // A multipart without a delimiter still reports a body (RFC 9051's
        // grammar has 1*body): one plain part over its whole body, so the
        // text can be read as part 1.
        let mut inner = Part::new(f.part.body, false);
        inner.end = f.part.end;
        inner.lines = f.part.lines;
        if f.part.ctype.eq_ignore_ascii_case(b"multipart") && !matches!(f.part.kind, Kind::Multi(_))
        {
            f.part.kind = Kind::Multi(vec![inner]);
        } else if f.part.is_message() && !matches!(f.part.kind, Kind::Message(..)) {
            // Encoded or nested too deep: an empty message, as Dovecot
            // reports it.
            let inner = Part::new(f.part.body, false);
            f.part.kind = Kind::Message(Box::default(), Box::new(inner));
        }
        (f.part, f.envelope)
    }

    pub fn finish(self) -> Structure {
        self.finish_with_buffers().0
    }

    /// [`Parser::finish`], giving back the buffers.
    pub fn finish_with_buffers(mut self) -> (Structure, Buffers) {
        // An open last line gets its CRLF in the wire form, as RETR sends
        // it (store::maildrop counts the same).
        let mut end = self.at;
        end.stored += self.line_len;
        if self.line_len > 0 {
            let quoted = self.quote == Quote::Decided(true);
            end.wire += self.line_len - quoted as u64 + if self.last2[1] == b'\r' { 1 } else { 2 };
        }
        while let Some(frame) = self.stack.pop() {
            let done = self.finish_frame(frame, end, false);
            match self.stack.last_mut() {
                Some(parent) => attach(parent, done),
                None => self.root = Some(done),
            }
        }
        let (root, env) = self
            .root
            .take()
            .unwrap_or_else(|| (Part::new(Pos::default(), false), None));
        let s = Structure {
            envelope: env.unwrap_or_default(),
            root,
        };
        let b = Buffers {
            hdr: self.hdr,
            line: self.line,
            stack: self.stack,
        };
        (s, b)
    }
}

/// Only an identity encoding lets a message/rfc822 body be read as a
/// message (RFC 2046 5.2.1 allows no other).
fn identity(p: &Part) -> bool {
    p.encoding.as_deref().map_or(true, |e| {
        e.eq_ignore_ascii_case(b"7bit")
            || e.eq_ignore_ascii_case(b"8bit")
            || e.eq_ignore_ascii_case(b"binary")
    })
}

fn attach(parent: &mut Frame, (child, env): (Part, Option<Envelope>)) {
    if parent.holds_message {
        parent.part.kind = Kind::Message(Box::new(env.unwrap_or_default()), Box::new(child));
        return;
    }
    match &mut parent.part.kind {
        Kind::Multi(children) => children.push(child),
        _ => parent.part.kind = Kind::Multi(vec![child]),
    }
}

// ---- stored form to wire form ------------------------------------------------------

/// Turns the stored bytes of a range that starts at a line start into
/// what the client receives: mboxrd quoting undone and every bare LF made
/// CRLF (POP3's RETR without dot-stuffing). Call [`WireWriter::finish`]
/// after the range, or [`WireWriter::end_message`] if the range ends the
/// message (an open last line then gets its CRLF, as the sizes count).
pub struct WireWriter {
    line_start: bool,
    quote: Quote,
    prev_cr: bool,
}

impl Default for WireWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl WireWriter {
    pub fn new() -> Self {
        WireWriter {
            line_start: true,
            quote: Quote::Decided(false),
            prev_cr: false,
        }
    }

    /// The `>`s and `From` letters held back while the quoting is open.
    fn flush_held(&mut self, out: &mut Vec<u8>) {
        let (n, k) = match self.quote {
            Quote::Gt(n) => (n, 0),
            Quote::From(n, k) => (n, k),
            Quote::Decided(_) => return,
        };
        out.extend(std::iter::repeat(b'>').take(n as usize));
        out.extend_from_slice(&b"From "[..k]);
        self.quote = Quote::Decided(false);
    }

    pub fn write(&mut self, p: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < p.len() {
            if self.line_start {
                self.line_start = false;
                self.quote = Quote::Gt(0);
            }
            if !matches!(self.quote, Quote::Decided(_)) {
                let before = self.quote;
                match before.step(p[i]) {
                    Quote::Decided(true) => {
                        let Quote::From(n, _) = before else {
                            unreachable!("only From(_, 4) decides true");
                        };
                        out.extend(std::iter::repeat(b'>').take(n.saturating_sub(1) as usize));
                        out.extend_from_slice(b"From ");
                        self.quote = Quote::Decided(true);
                        self.prev_cr = false;
                        i += 1;
                    }
                    Quote::Decided(false) => self.flush_held(out),
                    q => {
                        self.quote = q;
                        i += 1;
                    }
                }
                continue;
            }
            let rest = &p[i..];
            match memchr::memchr(b'\n', rest) {
                Some(j) => {
                    out.extend_from_slice(&rest[..j]);
                    let cr = if j > 0 {
                        rest[j - 1] == b'\r'
                    } else {
                        self.prev_cr
                    };
                    out.extend_from_slice(if cr { b"\n" } else { b"\r\n" });
                    self.line_start = true;
                    self.prev_cr = false;
                    i += j + 1;
                }
                None => {
                    out.extend_from_slice(rest);
                    self.prev_cr = rest.last() == Some(&b'\r');
                    i = p.len();
                }
            }
        }
    }

    /// The range ended before a line end (a part's end).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush_held(out);
    }

    /// The range ended with the message.
    pub fn end_message(&mut self, out: &mut Vec<u8>) {
        self.flush_held(out);
        if !self.line_start {
            out.extend_from_slice(if self.prev_cr { b"\n" } else { b"\r\n" });
            self.line_start = true;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    macro_rules! sample {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!("testdata/", $name)).as_slice(),
            )
        };
    }

    /// Real-world shaped messages, as the mbox stores them.
    pub(crate) const SAMPLES: &[(&str, &[u8])] = &[
        sample!("plain.eml"),
        sample!("alternative.eml"),
        sample!("mixed.eml"),
        sample!("rfc822.eml"),
        sample!("noboundary.eml"),
        sample!("groups.eml"),
        sample!("digest.eml"),
        sample!("truncated.eml"),
        sample!("crlf.eml"),
        sample!("quoted.eml"),
        sample!("addr.eml"),
        sample!("ctbad.eml"),
        sample!("html.eml"),
    ];

    fn sample(name: &str) -> &'static [u8] {
        SAMPLES.iter().find(|s| s.0 == name).map(|s| s.1).unwrap()
    }

    fn bodystructure(s: &Structure) -> String {
        let mut out = Vec::new();
        imap::body(&s.root, true, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn envelope_of(s: &Structure) -> String {
        let mut out = Vec::new();
        imap::envelope(&s.envelope, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The expected answers were checked against Dovecot 2.3 with
    /// bench/mime_dovecot.py; where they differ, on purpose, it says so.
    #[test]
    fn bodystructure_of_samples() {
        let want: &[(&str, &str)] = &[
            (
                "plain.eml",
                r#"("text" "plain" ("charset" "utf-8" "format" "flowed") NIL NIL "8bit" 82 6 NIL NIL NIL NIL)"#,
            ),
            (
                "alternative.eml",
                r#"(("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 29 1 NIL NIL NIL NIL)("text" "html" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 71 2 NIL NIL NIL NIL) "alternative" ("boundary" "=_alt_42") NIL NIL NIL)"#,
            ),
            // Dovecot keeps the folding space in Content-Location.
            (
                "mixed.eml",
                r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 17 1 NIL NIL ("en") NIL)("application" "pdf" ("name*" "UTF-8''r%C3%A9sum%C3%A9.pdf") "<part1.abc@example.com>" "The report" "base64" 38 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("size" "12" "filename*" "UTF-8''r%C3%A9sum%C3%A9.pdf")) NIL "http://example.com/report.pdf") "mixed" ("boundary" "----=_Part_0_1") NIL NIL NIL)"#,
            ),
            (
                "rfc822.eml",
                r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 0 NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 361 ("Wed, 4 Jun 2025 12:00:00 +0000" "Report" (("Carol" NIL "carol" "example.com")) (("Carol" NIL "carol" "example.com")) (("Carol" NIL "carol" "example.com")) (("Bob" NIL "bob" "example.net")) NIL NIL NIL "<r1@example.com>") (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0 NIL NIL NIL NIL)("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 12 0 NIL NIL NIL NIL) "alternative" ("boundary" "inner") NIL NIL NIL) 17 NIL ("inline" NIL) NIL NIL) "mixed" ("boundary" "outer") NIL NIL NIL)"#,
            ),
            // Dovecot reports an empty part 1; here it holds the text.
            (
                "noboundary.eml",
                r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 44 2 NIL NIL NIL NIL) "mixed" ("boundary" "never-seen") NIL NIL NIL)"#,
            ),
            (
                "groups.eml",
                r#"("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 32 1 NIL NIL NIL NIL)"#,
            ),
            (
                "digest.eml",
                r#"(("message" "rfc822" NIL NIL NIL "7bit" 43 (NIL "one" ((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org")) NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 44 (NIL "two" ((NIL NIL "b" "example.org")) ((NIL NIL "b" "example.org")) ((NIL NIL "b" "example.org")) NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 7 0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL) "digest" ("boundary" "d") NIL NIL NIL)"#,
            ),
            // The open last line gets its CRLF (82, Dovecot 80), as RETR.
            (
                "truncated.eml",
                r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL)("image" "png" ("name" "x.png") NIL NIL "base64" 82 NIL NIL NIL NIL) "mixed" ("boundary" "b1") NIL NIL NIL)"#,
            ),
            (
                "crlf.eml",
                r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 29 2 NIL NIL NIL NIL)("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" ("boundary" "q") NIL NIL NIL)"#,
            ),
            (
                // Dovecot leaves the mboxrd quoting in (39).
                "quoted.eml",
                r#"("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 37 3 NIL NIL NIL NIL)"#,
            ),
            (
                "addr.eml",
                r#"("text" "plain" ("charset" "UTF-8") NIL NIL "8bit" 4 1 NIL NIL NIL NIL)"#,
            ),
            // Dovecot: ("garbage" "" NIL ...); RFC 2045 5.2 says text/plain.
            (
                "ctbad.eml",
                r#"("text" "plain" ("charset" "us-ascii") NIL NIL "QUOTED-PRINTABLE" 7 1 NIL ("inline" ("filename" "a.txt")) NIL NIL)"#,
            ),
            (
                "html.eml",
                r#"("TEXT" "HTML" ("format" "flowed" "charset" "us-ascii") "<x@y>" NIL "7bit" 5 1 NIL NIL NIL NIL)"#,
            ),
        ];
        assert_eq!(want.len(), SAMPLES.len());
        for (name, bs) in want {
            let s = Structure::parse(sample(name));
            assert_eq!(bodystructure(&s), *bs, "{name}");
        }
        let s = Structure::parse(sample("mixed.eml"));
        let mut body = Vec::new();
        imap::body(&s.root, false, &mut body);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 17 1)("application" "pdf" ("name*" "UTF-8''r%C3%A9sum%C3%A9.pdf") "<part1.abc@example.com>" "The report" "base64" 38) "mixed")"#
        );
    }

    #[test]
    fn envelopes() {
        let s = Structure::parse(sample("addr.eml"));
        assert_eq!(
            envelope_of(&s),
            r#"("Mon, 2 Jun 2025 11:59:58 +0200" "spaced   out" (("Pete Resnick" NIL "pete" "silly.test")) (("Pete Resnick" NIL "pete" "silly.test")) (("Pete Resnick" NIL "pete" "silly.test")) ((NIL NIL "a b" "example.com")(NIL "@a.test,@b.test" "joe" "c.test")("Joe Q. Public" NIL "john.q.public" "example.com")("Mary (nested) Smith" NIL "Mary.Smith" "x.test")) (("=?utf-8?q?J=C3=B6rg?=" NIL "jorg" "example.de")("Who Knows" NIL "MISSING_MAILBOX" "MISSING_DOMAIN")) NIL NIL NIL)"#
        );
        let s = Structure::parse(sample("groups.eml"));
        assert_eq!(
            envelope_of(&s),
            r#"(NIL "" (("Ann" NIL "ann" "example.com")("Bee" NIL "bee" "example.com")) ((NIL NIL "secretary" "example.com")) (("Ann" NIL "ann" "example.com")("Bee" NIL "bee" "example.com")) ((NIL NIL "A Group" NIL)("Ed Jones" NIL "c" "a.test")(NIL NIL "joe" "where.test")(NIL NIL NIL NIL)(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) ((NIL NIL "root" "MISSING_DOMAIN")("Odd \"quoted\" name" NIL "odd" "example.com")) NIL NIL "<g1@example.com>")"#
        );
        let s = Structure::parse(sample("alternative.eml"));
        assert_eq!(
            envelope_of(&s),
            r#"("Tue, 3 Jun 2025 08:15:00 -0400" "=?ISO-8859-1?Q?Derni=E8re_chance_=E0_Montr=E9al?=" (("Shop, Inc." NIL "news" "shop.example")) (("Shop, Inc." NIL "news" "shop.example")) ((NIL NIL "support" "shop.example")) ((NIL NIL "bob" "example.net")) NIL NIL "<prev.1@example.net>" "<abc.123@shop.example>")"#
        );
        // Encoded words stay in ENVELOPE; SEARCH reads them decoded.
        assert_eq!(
            s.envelope.subject_decoded().as_deref(),
            Some("Dernière chance à Montréal")
        );
        let s = Structure::parse(sample("plain.eml"));
        assert_eq!(
            s.envelope.subject_decoded().as_deref(),
            Some("Réunion de lundi — ordre du jour")
        );
        let name = s.envelope.from[0].name.as_deref().unwrap();
        assert_eq!(header::decode_2047(name), "Renée Dupont");
        let s = Structure::parse(sample("quoted.eml"));
        assert_eq!(
            s.envelope.subject_decoded().as_deref(),
            Some("café and =?x-unknown?q?zz?=")
        );
        let s = Structure::parse(sample("mixed.eml"));
        assert_eq!(
            s.part(&[2]).unwrap().filename().as_deref(),
            Some("résumé.pdf")
        );
    }

    /// The wire form of a whole message, written in small pieces.
    fn wire(stored: &[u8]) -> Vec<u8> {
        let mut w = WireWriter::new();
        let mut out = Vec::new();
        for c in stored.chunks(3) {
            w.write(c, &mut out);
        }
        w.end_message(&mut out);
        out
    }

    fn all_parts<'a>(p: &'a Part, out: &mut Vec<&'a Part>) {
        out.push(p);
        match &p.kind {
            Kind::Single => {}
            Kind::Multi(c) => c.iter().for_each(|c| all_parts(c, out)),
            Kind::Message(_, inner) => all_parts(inner, out),
        }
    }

    #[test]
    fn every_split_gives_the_same_structure() {
        for (name, msg) in SAMPLES {
            let whole = Structure::parse(msg);
            for i in 0..=msg.len() {
                let mut p = Parser::new();
                p.feed(&msg[..i]);
                p.feed(&msg[i..]);
                assert_eq!(p.finish(), whole, "{name} split at {i}");
            }
            let mut p = Parser::new();
            msg.iter().for_each(|b| p.feed(std::slice::from_ref(b)));
            assert_eq!(p.finish(), whole, "{name} byte by byte");
        }
    }

    /// Messages shaped like bench/imap.py's mix (text, alternative,
    /// attachments, forwarded messages), with the lines the fast path
    /// must not miss: mboxrd quoting, `--` lines that are no delimiter,
    /// CRLF and bare LF, empty lines, an open last line.
    pub(crate) fn bench_like(seed: u64) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut rnd = move |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n.max(1)
        };
        let text = |rnd: &mut dyn FnMut(u64) -> u64, lines: u64| {
            let mut t = Vec::new();
            for _ in 0..lines {
                let line: &[u8] = match rnd(14) {
                    0 => b">From the start\n",
                    1 => b">>From deeper\n",
                    2 => b"-- \n",
                    3 => b"--not-a-boundary\n",
                    4 => b"\n",
                    5 => b"a CRLF line\r\n",
                    6 => b">not quoted From\n",
                    7 => b"\r\n",
                    8 => b">From\n",
                    _ => b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do\n",
                };
                t.extend_from_slice(line);
            }
            t
        };
        let mut m = Vec::new();
        m.extend_from_slice(b"Return-Path: <a@example.com>\nFrom: A <a@example.com>\nTo: b@example.org\nSubject: test\nDate: Mon, 2 Jun 2025 11:59:58 +0200\nMIME-Version: 1.0\n");
        let kind = rnd(4);
        match kind {
            0 => {
                m.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii\n\n");
                let n = rnd(200);
                m.extend(text(&mut rnd, n));
            }
            1 => {
                m.extend_from_slice(b"Content-Type: multipart/alternative;\n\tboundary=\"=_alt_1\"\n\npreamble\n\n--=_alt_1\nContent-Type: text/plain\n\n");
                let n = rnd(100);
                m.extend(text(&mut rnd, n));
                m.extend_from_slice(b"\n--=_alt_1\r\nContent-Type: text/html\n\n<p>x</p>\n");
                let n = rnd(50);
                m.extend(text(&mut rnd, n));
                m.extend_from_slice(b"\n--=_alt_1--\nepilogue\n--=_alt_1\n");
            }
            _ => {
                m.extend_from_slice(b"Content-Type: multipart/mixed; boundary=\"=_mixed_2\"\n\n--=_mixed_2\nContent-Type: text/plain\n\n");
                let n = rnd(60);
                m.extend(text(&mut rnd, n));
                if kind == 3 {
                    m.extend_from_slice(b"\n--=_mixed_2\nContent-Type: message/rfc822\n\nFrom: c@example.net\nSubject: inner\nContent-Type: multipart/mixed; boundary=in\n\n--in\n\n");
                    let n = rnd(40);
                    m.extend(text(&mut rnd, n));
                    m.extend_from_slice(b"\n--in--\n");
                }
                for _ in 0..rnd(3) {
                    m.extend_from_slice(b"\n--=_mixed_2\nContent-Type: application/pdf; name=\"a.pdf\"\nContent-Transfer-Encoding: base64\n\n");
                    for _ in 0..rnd(400) {
                        m.extend_from_slice(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\n");
                    }
                }
                m.extend_from_slice(b"\n--=_mixed_2--\n");
            }
        }
        if rnd(4) == 0 {
            m.extend_from_slice(b"an open last line");
        }
        m
    }

    /// The fast path for body lines gives what the line-by-line parser
    /// gives, however the message is cut into chunks.
    #[test]
    fn bulk_body_lines_count_as_line_by_line() {
        let mut msgs: Vec<Vec<u8>> = SAMPLES.iter().map(|s| s.1.to_vec()).collect();
        msgs.extend((0..60).map(bench_like));
        for (k, msg) in msgs.iter().enumerate() {
            let mut slow = Parser::new();
            slow.feed_lines(msg);
            let want = slow.finish();
            for chunk in [1, 2, 3, 7, 64, 1000, 65536] {
                let mut p = Parser::new();
                msg.chunks(chunk).for_each(|c| p.feed(c));
                assert_eq!(p.finish(), want, "message {k} in chunks of {chunk}");
            }
        }
    }

    /// Each part's stored range, made wire form, is exactly the bytes the
    /// wire offsets name in the whole wire form: a section is served by
    /// reading a file range.
    #[test]
    fn offsets_name_the_wire_bytes() {
        for (name, msg) in SAMPLES {
            let s = Structure::parse(msg);
            let w = wire(msg);
            assert_eq!(s.size(), w.len() as u64, "{name}");
            assert_eq!(s.root.end.stored, msg.len() as u64, "{name}");
            let mut parts = Vec::new();
            all_parts(&s.root, &mut parts);
            for p in parts {
                for (a, b) in [(p.header, p.body), (p.body, p.end), (p.header, p.end)] {
                    let mut ww = WireWriter::new();
                    let mut out = Vec::new();
                    ww.write(&msg[a.stored as usize..b.stored as usize], &mut out);
                    if b.stored == msg.len() as u64 {
                        ww.end_message(&mut out);
                    } else {
                        ww.finish(&mut out);
                    }
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&w[a.wire as usize..b.wire as usize]),
                        "{name} {a:?}..{b:?}"
                    );
                }
            }
        }
    }

    fn text(s: &Structure, msg: &[u8], path: &[u32], spec: Spec) -> String {
        let r = s.section(path, spec).unwrap();
        let w = wire(msg);
        String::from_utf8_lossy(&w[r.start.wire as usize..r.end.wire as usize]).into_owned()
    }

    #[test]
    fn sections_by_number() {
        // RFC 9051 6.4.5.
        let msg = sample("rfc822.eml");
        let s = Structure::parse(msg);
        assert_eq!(text(&s, msg, &[1], Spec::Body), "Forwarding.");
        assert_eq!(
            text(&s, msg, &[1], Spec::Mime),
            "Content-Type: text/plain\r\n\r\n"
        );
        assert!(text(&s, msg, &[2], Spec::Body).starts_with("From: Carol"));
        assert!(text(&s, msg, &[2], Spec::Header).starts_with("From: Carol"));
        assert!(text(&s, msg, &[2], Spec::Header).ends_with("boundary=inner\r\n\r\n"));
        assert!(text(&s, msg, &[2], Spec::Text).starts_with("--inner\r\n"));
        assert_eq!(text(&s, msg, &[2, 1], Spec::Body), "Plain.");
        assert_eq!(text(&s, msg, &[2, 2], Spec::Body), "<p>HTML.</p>");
        assert_eq!(
            text(&s, msg, &[2, 2], Spec::Mime),
            "Content-Type: text/html; charset=us-ascii\r\n\r\n"
        );
        assert!(text(&s, msg, &[], Spec::Header).ends_with("boundary=outer\r\n\r\n"));
        assert!(text(&s, msg, &[], Spec::Text).starts_with("--outer\r\n"));
        assert_eq!(
            text(&s, msg, &[], Spec::Body),
            String::from_utf8_lossy(&wire(msg))
        );
        assert!(s.section(&[3], Spec::Body).is_none());
        assert!(s.section(&[1, 1], Spec::Body).is_none());
        assert!(s.section(&[1], Spec::Header).is_none());
        assert!(s.section(&[2, 3], Spec::Body).is_none());
        assert!(s.section(&[0], Spec::Body).is_none());
        // A single-part message: part 1 is its body.
        let msg = sample("plain.eml");
        let s = Structure::parse(msg);
        assert!(text(&s, msg, &[1], Spec::Body).starts_with("Bonjour Bob,\r\n"));
        assert!(s.section(&[2], Spec::Body).is_none());
        assert!(s.section(&[1, 1], Spec::Body).is_none());
        // mboxrd quoting is undone in what the client gets.
        let msg = sample("quoted.eml");
        let s = Structure::parse(msg);
        assert_eq!(
            text(&s, msg, &[1], Spec::Body),
            "From the start\r\n>From two\r\n>Fromage\r\n"
        );
    }

    #[test]
    fn bombs_stay_bounded() {
        // Nested far deeper than MAX_DEPTH.
        let mut m = Vec::new();
        for i in 0..100 {
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}x\n\n--b{i}x\n").as_bytes(),
            );
        }
        m.extend_from_slice(b"\nend\n");
        let s = Structure::parse(&m);
        let mut rec = Vec::new();
        index::encode(&s, &mut rec);
        assert_eq!(index::decode(&rec), Ok(s.clone()));
        let bs = bodystructure(&s);
        assert!(bs.matches('(').count() < 200);
        // message/rfc822 inside message/rfc822...
        let m = b"Content-Type: message/rfc822\n\n".repeat(100);
        let s = Structure::parse(&m);
        let mut rec = Vec::new();
        index::encode(&s, &mut rec);
        assert_eq!(index::decode(&rec), Ok(s));
        // Many empty parts.
        let mut m = b"Content-Type: multipart/mixed; boundary=x\n\n".to_vec();
        m.extend_from_slice(&b"--x\n".repeat(10_000));
        let s = Structure::parse(&m);
        let Kind::Multi(c) = &s.root.kind else {
            panic!()
        };
        assert!(c.len() < MAX_PARTS);
        // A header block far over MAX_HEADER, and a line with no end.
        let mut m = b"Subject: x\n".to_vec();
        m.extend_from_slice(&b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaa\n".repeat(10_000));
        m.extend_from_slice(b"\nbody\n");
        let mut p = Parser::new();
        p.feed(&m);
        assert!(p.hdr.capacity() <= 2 * MAX_HEADER);
        let s = p.finish();
        assert_eq!(s.envelope.subject.as_deref(), Some(&b"x"[..]));
        assert_eq!(s.root.size(), 6);
        let s = Structure::parse(&b"a".repeat(1 << 20));
        assert_eq!(s.size(), (1 << 20) + 2);
    }

    fn nested_inside(p: &Part) {
        let children: Vec<&Part> = match &p.kind {
            Kind::Single => vec![],
            Kind::Multi(c) => c.iter().collect(),
            Kind::Message(_, inner) => vec![inner],
        };
        for c in children {
            assert!(
                c.header.stored >= p.body.stored && c.header.wire >= p.body.wire,
                "{c:?} in {p:?}"
            );
            assert!(
                c.end.stored <= p.end.stored && c.end.wire <= p.end.wire,
                "{c:?} in {p:?}"
            );
            nested_inside(c);
        }
    }

    /// Found by fuzz/mime_parser: in a digest, a message part whose
    /// encapsulated header never ends ran past its parent's end.
    #[test]
    fn regression_unended_header_stays_inside_its_message() {
        let m = b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nFrom: a\n\nFirst.\n--dx\n\nSecond.\n--d--\n";
        let s = Structure::parse(m);
        nested_inside(&s.root);
        for (_, msg) in SAMPLES {
            nested_inside(&Structure::parse(msg).root);
        }
        let inner = s.part(&[2, 1]).unwrap();
        assert_eq!(inner.size(), 0);
        assert_eq!(text(&s, m, &[2], Spec::Header), "Second.");
        // The empty line of a header right before a delimiter: its line
        // end is the delimiter's. And a part that starts on the line that
        // closes it, in a multipart closed by its parent's delimiter.
        for m in [
            &b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nFrom: a\n\n--d--\n"[..],
            b"Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/mixed; boundary=i\n\n--i\n--o\n\nx\n--o--\n",
            b"Content-Type: multipart/mixed; boundary=o\n\n--o\n--o\n--o--",
        ] {
            let s = Structure::parse(m);
            nested_inside(&s.root);
            let mut parts = Vec::new();
            all_parts(&s.root, &mut parts);
            let w = wire(m);
            for p in parts {
                assert!(p.header.stored <= p.body.stored && p.body.stored <= p.end.stored, "{p:?}");
                assert!(p.end.wire <= w.len() as u64);
            }
        }
    }

    #[test]
    fn boundaries_and_line_ends() {
        // A delimiter with trailing space; a line that only starts with
        // the delimiter is one too (as Dovecot and mutt read it).
        let m = b"Content-Type: multipart/mixed; boundary=ab\n\n--ab  \nX: 1\n\none\n--abc\n\n--ab--\nepilogue\n";
        let s = Structure::parse(m);
        assert_eq!(
            bodystructure(&s),
            r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" ("boundary" "ab") NIL NIL NIL)"#
        );
        // No header at all: the body starts after the empty first line.
        let s = Structure::parse(b"\nbody");
        assert_eq!(
            bodystructure(&s),
            r#"("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL NIL NIL)"#
        );
        assert_eq!(Structure::parse(b"").size(), 0);
        // A header cut short by the end, and by a delimiter.
        let s = Structure::parse(b"Subject: only");
        assert_eq!(s.envelope.subject.as_deref(), Some(&b"only"[..]));
        assert_eq!(s.root.size(), 0);
        let m =
            b"Content-Type: multipart/mixed; boundary=z\n\n--z\nContent-Type: image/gif\n--z--\n";
        assert_eq!(
            bodystructure(&Structure::parse(m)),
            r#"(("image" "gif" NIL NIL NIL "7bit" 0 NIL NIL NIL NIL) "mixed" ("boundary" "z") NIL NIL NIL)"#
        );
        // A base64 message/rfc822 cannot be read as a message.
        let m =
            b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nRnJvbTogYQ==\n";
        assert_eq!(
            bodystructure(&Structure::parse(m)),
            r#"("message" "rfc822" NIL NIL NIL "base64" 14 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) 1 NIL NIL NIL NIL)"#
        );
    }
}
