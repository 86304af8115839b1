//! IMAP command parsing (RFC 9051 section 6 and the formal syntax of
//! section 9, RFC 3501 for rev1 clients), without any state.
//!
//! [`parse`] takes one complete command as [`super::input::Reader`] framed
//! it: the tagged line, with every literal (`{n}`, `{n+}`, `~{n}`, RFC 7888
//! and RFC 3516) and the line that follows it inline, without the final
//! CRLF. The APPEND message literal never reaches this parser: the reader
//! stops at it and [`append_header`] parses what comes before it, so that
//! the message is streamed to disk and never held in memory.
//!
//! Extensions parsed: CONDSTORE (RFC 7162: SELECT/EXAMINE `(CONDSTORE)`,
//! FETCH `(CHANGEDSINCE n)`, STORE `(UNCHANGEDSINCE n)`, SEARCH `MODSEQ`),
//! ESEARCH `RETURN (...)` (RFC 4731), LIST-EXTENDED selection and return
//! options (RFC 5258, 6154 SPECIAL-USE, 5819 LIST-STATUS), ID (RFC 2971),
//! ENABLE (RFC 5161), IDLE (RFC 2177), NAMESPACE (RFC 2342), UNSELECT
//! (RFC 3691), UIDPLUS's UID EXPUNGE (RFC 4315), MOVE (RFC 6851), BINARY
//! fetch items (RFC 3516), STATUS SIZE/DELETED (RFC 9051 6.3.11).
//!
//! Everything is bounded: the input is at most the reader's command limit,
//! search keys nest at most [`MAX_DEPTH`] deep, and every list is as long
//! as the input allows and no longer. Keywords are case-insensitive (RFC
//! 9051 section 9, "Note 1").

/// Parenthesised search keys and NOT/OR chains nest at most this deep, so
/// that recursion is bounded whatever the client sends.
pub const MAX_DEPTH: usize = 32;

/// One tagged command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub tag: String,
    pub command: Command,
}

/// A message sequence number or UID of a sequence set; `*` is the largest
/// in use (RFC 9051 section 9, `seq-number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNum {
    Value(u32),
    Star,
}

/// `sequence-set`: ranges in the order given (`a:b` may have a > b, RFC
/// 9051 9: "the range 2:4 and 4:2 are equivalent").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSet(pub Vec<(SeqNum, SeqNum)>);

impl SeqSet {
    /// Whether `n` is in the set, `*` standing for `largest`.
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        let v = |s: SeqNum| match s {
            SeqNum::Value(v) => v,
            SeqNum::Star => largest,
        };
        self.0.iter().any(|&(a, b)| {
            let (lo, hi) = (v(a).min(v(b)), v(a).max(v(b)));
            (lo..=hi).contains(&n)
        })
    }

    /// The set's ranges resolved with `*` = `largest`, each as `lo..=hi`.
    pub fn ranges(&self, largest: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.0.iter().map(move |&(a, b)| {
            let v = |s: SeqNum| match s {
                SeqNum::Value(v) => v,
                SeqNum::Star => largest,
            };
            (v(a).min(v(b)), v(a).max(v(b)))
        })
    }
}

/// A flag as the client wrote it: system flags (`\Seen`) are given their
/// canonical case, keywords are kept as written (matched without case).
pub type Flag = String;

/// A date of SEARCH (`date` of RFC 9051 9): compared by day only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// Days since 1970-01-01 (negative before), H. Hinnant's algorithm.
    pub fn days(&self) -> i64 {
        let (y, m, d) = (
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        );
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The day of an RFC 5322 `Date:` value (`[Tue, ]31 Dec 2019
    /// 23:00:00 +0000`, obsolete two-digit years too, RFC 5322 4.3), as
    /// written: SENTBEFORE and friends disregard time and zone (RFC 9051
    /// 6.4.4). `None` when it cannot be read.
    pub fn from_rfc5322(value: &[u8]) -> Option<Date> {
        let text = std::str::from_utf8(value).ok()?;
        let text = text.split_once(',').map_or(text, |(_, rest)| rest);
        let mut w = text.split_ascii_whitespace();
        let day: u8 = w.next()?.parse().ok()?;
        let month = w.next()?.get(..3)?;
        let month = MONTHS
            .iter()
            .position(|m| m.eq_ignore_ascii_case(month.as_bytes()))? as u8
            + 1;
        let y = w.next()?;
        let year: u16 = y.parse().ok()?;
        let year = match (y.len(), year) {
            (2, y) if y < 50 => 2000 + y,
            (2 | 3, y) => 1900 + y,
            (_, y) => y,
        };
        (1..=31).contains(&day).then_some(Date { year, month, day })
    }
}

/// APPEND's `date-time` (RFC 9051 9): a moment and the zone it was given
/// in, so INTERNALDATE can be shown as the client set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Seconds since the epoch (UTC).
    pub unix: i64,
    /// The zone offset in minutes east of UTC.
    pub zone_minutes: i16,
}

/// A FETCH `section-spec` (RFC 9051 6.4.5): a part path and what of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    /// `1.2.3`; empty for the whole message.
    pub part: Vec<u32>,
    pub text: SectionText,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SectionText {
    /// The whole part (`BODY[]`, `BODY[1.2]`).
    #[default]
    All,
    Header,
    /// `HEADER.FIELDS (a b)`; names upper-cased.
    HeaderFields(Vec<String>),
    HeaderFieldsNot(Vec<String>),
    Text,
    /// The MIME header of a part (only with a part number).
    Mime,
}

/// One FETCH data item (RFC 9051 6.4.5; RFC 3516 BINARY; RFC 7162 MODSEQ).
/// The macros ALL, FAST and FULL are expanded by the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAtt {
    Envelope,
    Flags,
    InternalDate,
    /// `RFC822.SIZE`
    Size,
    Uid,
    /// `BODY` (the non-extensible BODYSTRUCTURE).
    Body,
    BodyStructure,
    /// `RFC822` = `BODY[]`, `RFC822.HEADER` = `BODY.PEEK[HEADER]`,
    /// `RFC822.TEXT` = `BODY[TEXT]`; kept apart because the response
    /// names them as asked.
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    /// `BODY[section]<partial>` or `BODY.PEEK[...]`.
    BodySection {
        section: Section,
        partial: Option<(u32, u32)>,
        peek: bool,
    },
    /// `BINARY[part]<partial>` or `BINARY.PEEK[...]` (RFC 3516).
    Binary {
        part: Vec<u32>,
        partial: Option<(u32, u32)>,
        peek: bool,
    },
    BinarySize(Vec<u32>),
    ModSeq,
}

/// How STORE changes flags (RFC 9051 6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// STATUS data items (RFC 9051 6.3.11, RFC 7162 3.1.8 HIGHESTMODSEQ,
/// RFC 3501 RECENT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Size,
    HighestModSeq,
    Recent,
}

/// LIST-EXTENDED selection options (RFC 5258 3.1, RFC 6154 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListSelect {
    pub subscribed: bool,
    pub remote: bool,
    pub recursive_match: bool,
    pub special_use: bool,
}

/// LIST return options (RFC 5258 3.2, RFC 6154 3, RFC 5819 STATUS).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListReturn {
    pub subscribed: bool,
    pub children: bool,
    pub special_use: bool,
    pub status: Option<Vec<StatusItem>>,
}

/// ESEARCH result options (RFC 4731 3.1, RFC 9051 6.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchReturn {
    Min,
    Max,
    All,
    Count,
    /// RFC 5182: not offered; parsed so that it gets a clear NO.
    Save,
}

/// A header or text search (the parts of a message that must be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    /// Header fields, by name.
    Bcc,
    Cc,
    From,
    Subject,
    To,
    /// The body (after the header), BODY.
    Body,
    /// Header and body, TEXT.
    Text,
}

/// RFC 9051 6.4.4 / RFC 3501 6.4.4 search keys. Several keys in a row are
/// an [`SearchKey::And`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    /// A flag set (`ANSWERED`, `KEYWORD x`, ...) or not (`UNSEEN`, ...).
    Flag(Flag, bool),
    /// `NEW` = RECENT UNSEEN, `OLD` = NOT RECENT, `RECENT`.
    New,
    Old,
    Recent,
    Text(TextField, Vec<u8>),
    Header(String, Vec<u8>),
    /// INTERNALDATE before, on, since the day (RFC 9051 6.4.4).
    Before(Date),
    On(Date),
    Since(Date),
    /// The Date: header's day.
    SentBefore(Date),
    SentOn(Date),
    SentSince(Date),
    Larger(u64),
    Smaller(u64),
    Uid(SeqSet),
    Seq(SeqSet),
    /// RFC 7162 3.1.5: MODSEQ >= n (the entry name is ignored).
    ModSeq(u64),
    Not(Box<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    And(Vec<SearchKey>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    // Any state (RFC 9051 6.1).
    Capability,
    Noop,
    Logout,
    // Not authenticated (6.2).
    StartTls,
    /// `AUTHENTICATE mech [initial-response]` (RFC 4959 SASL-IR); the
    /// initial response is the base64 text as sent (`=` is empty).
    Authenticate {
        mechanism: String,
        initial: Option<String>,
    },
    Login {
        user: Vec<u8>,
        password: Vec<u8>,
    },
    // Authenticated (6.3).
    Enable(Vec<String>),
    /// RFC 2971: NIL or field/value pairs (kept for the log).
    Id(Vec<(String, Option<String>)>),
    /// SELECT (`read_only` false) or EXAMINE; `condstore` for the
    /// `(CONDSTORE)` parameter (RFC 7162 3.1.8).
    Select {
        mailbox: Vec<u8>,
        read_only: bool,
        condstore: bool,
    },
    Create(Vec<u8>),
    Delete(Vec<u8>),
    Rename(Vec<u8>, Vec<u8>),
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
    List {
        select: ListSelect,
        reference: Vec<u8>,
        patterns: Vec<Vec<u8>>,
        ret: ListReturn,
        /// LIST-EXTENDED syntax was used (the response then carries the
        /// extended data items, RFC 5258 3).
        extended: bool,
    },
    Lsub {
        reference: Vec<u8>,
        pattern: Vec<u8>,
    },
    Namespace,
    Status {
        mailbox: Vec<u8>,
        items: Vec<StatusItem>,
    },
    /// Only from [`append_header`]: the message follows as a literal.
    Append(AppendHeader),
    Idle,
    // Selected (6.4).
    Check,
    Close,
    Unselect,
    Expunge,
    /// `UID EXPUNGE set` (RFC 4315 2.1).
    UidExpunge(SeqSet),
    Search {
        uid: bool,
        charset: Option<String>,
        /// `RETURN (...)`: the answer is an ESEARCH response (RFC 4731);
        /// an empty list means ALL.
        ret: Option<Vec<SearchReturn>>,
        key: SearchKey,
    },
    Fetch {
        uid: bool,
        set: SeqSet,
        items: Vec<FetchAtt>,
        /// RFC 7162 3.1.4.1.
        changed_since: Option<u64>,
    },
    Store {
        uid: bool,
        set: SeqSet,
        /// RFC 7162 3.1.3.
        unchanged_since: Option<u64>,
        mode: StoreMode,
        silent: bool,
        flags: Vec<Flag>,
    },
    Copy {
        uid: bool,
        set: SeqSet,
        mailbox: Vec<u8>,
    },
    Move {
        uid: bool,
        set: SeqSet,
        mailbox: Vec<u8>,
    },
}

/// What precedes an APPEND's message literal (RFC 9051 6.3.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendHeader {
    pub mailbox: Vec<u8>,
    pub flags: Vec<Flag>,
    pub date: Option<DateTime>,
}

/// Why a command was refused; the tag, when one could be read, is for the
/// tagged BAD (else the reply is `* BAD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub tag: Option<String>,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No tag could be read: `* BAD`.
    NoTag,
    /// The command name is not one we know.
    Unknown,
    /// The command is known; its arguments are not right.
    Syntax(&'static str),
}

impl ParseError {
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::NoTag => "missing or invalid tag",
            ErrorKind::Unknown => "unknown command",
            ErrorKind::Syntax(why) => why,
        }
    }
}

type Res<T> = Result<T, &'static str>;

/// A cursor over one command's bytes.
struct P<'a> {
    s: &'a [u8],
    i: usize,
}

/// RFC 9051 9 `ATOM-CHAR`: any CHAR except atom-specials.
fn atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !b"(){ %*\"\\]".contains(&b)
}

/// `ASTRING-CHAR` = ATOM-CHAR / resp-specials (`]`).
fn astring_char(b: u8) -> bool {
    atom_char(b) || b == b']'
}

/// `tag` = 1*<any ASTRING-CHAR except "+">
fn tag_char(b: u8) -> bool {
    astring_char(b) && b != b'+'
}

/// `list-char` = ATOM-CHAR / list-wildcards / resp-specials
fn list_char(b: u8) -> bool {
    atom_char(b) || b == b'%' || b == b'*' || b == b']'
}

const MONTHS: [&[u8]; 12] = [
    b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC",
];

impl<'a> P<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8, why: &'static str) -> Res<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(why)
        }
    }

    fn sp(&mut self) -> Res<()> {
        self.expect(b' ', "expected a space")
    }

    /// Takes `word` (case-insensitive) if it is next and ends there.
    fn keyword(&mut self, word: &[u8]) -> bool {
        let end = self.i + word.len();
        if end <= self.s.len()
            && self.s[self.i..end].eq_ignore_ascii_case(word)
            && !self.s.get(end).copied().is_some_and(atom_char)
        {
            self.i = end;
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn atom(&mut self) -> Res<&'a [u8]> {
        let a = self.take_while(atom_char);
        if a.is_empty() {
            Err("expected an atom")
        } else {
            Ok(a)
        }
    }

    /// An atom, upper-cased, for keywords with arguments.
    fn word(&mut self) -> Res<Vec<u8>> {
        Ok(self.atom()?.to_ascii_uppercase())
    }

    fn number64(&mut self) -> Res<u64> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 20 {
            return Err("expected a number");
        }
        // Digits only, so from_utf8 cannot fail; parse fails on overflow.
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("number too large")
    }

    /// `number` (32 bits, RFC 9051 9).
    fn number(&mut self) -> Res<u32> {
        u32::try_from(self.number64()?).map_err(|_| "number too large")
    }

    fn nz_number(&mut self) -> Res<u32> {
        match self.number()? {
            0 => Err("zero is not a valid number here"),
            n => Ok(n),
        }
    }

    /// `mod-sequence-value`: 1..2^63-1 (RFC 7162 7).
    fn modseq(&mut self) -> Res<u64> {
        match self.number64()? {
            n if n < (1 << 63) => Ok(n),
            _ => Err("mod-sequence value too large"),
        }
    }

    /// `quoted` (RFC 9051 9): `\` escapes only `"` and `\`; no CR/LF.
    fn quoted(&mut self) -> Res<Vec<u8>> {
        self.expect(b'"', "expected a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.i += 1;
                        }
                        _ => return Err("invalid escape in quoted string"),
                    }
                }
                Some(b'\r' | b'\n' | 0) => return Err("invalid character in quoted string"),
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// `literal` / `literal8`: `{n}`/`{n+}` CRLF and n octets (the reader
    /// has already made sure that they are all here).
    fn literal(&mut self) -> Res<Vec<u8>> {
        self.eat(b'~');
        self.expect(b'{', "expected a literal")?;
        let n = self.number64()?;
        self.eat(b'+');
        self.expect(b'}', "invalid literal")?;
        // The reader accepts CRLF or a bare LF as the line end.
        self.eat(b'\r');
        self.expect(b'\n', "literal must be followed by CRLF")?;
        let n = usize::try_from(n).map_err(|_| "literal too large")?;
        let end = self.i.checked_add(n).ok_or("literal too large")?;
        let data = self
            .s
            .get(self.i..end)
            .ok_or("literal shorter than announced")?;
        self.i = end;
        Ok(data.to_vec())
    }

    /// `string` = quoted / literal
    fn string(&mut self) -> Res<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{' | b'~') => self.literal(),
            _ => Err("expected a string"),
        }
    }

    /// `astring` = 1*ASTRING-CHAR / string
    fn astring(&mut self) -> Res<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(astring_char);
                if a.is_empty() {
                    Err("expected a string")
                } else {
                    Ok(a.to_vec())
                }
            }
        }
    }

    /// `mailbox`: an astring; `INBOX` in any case is INBOX (RFC 9051 5.1).
    fn mailbox(&mut self) -> Res<Vec<u8>> {
        let m = self.astring()?;
        if m.eq_ignore_ascii_case(b"INBOX") {
            Ok(b"INBOX".to_vec())
        } else {
            Ok(m)
        }
    }

    /// `list-mailbox` = 1*list-char / string
    fn list_mailbox(&mut self) -> Res<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(list_char);
                if a.is_empty() {
                    Err("expected a mailbox pattern")
                } else {
                    Ok(a.to_vec())
                }
            }
        }
    }

    /// `seq-number` / `seq-range`, comma separated (RFC 9051 9).
    fn seq_set(&mut self) -> Res<SeqSet> {
        let mut set = Vec::new();
        loop {
            let a = self.seq_number()?;
            let b = if self.eat(b':') {
                self.seq_number()?
            } else {
                a
            };
            set.push((a, b));
            if !self.eat(b',') {
                return Ok(SeqSet(set));
            }
        }
    }

    fn seq_number(&mut self) -> Res<SeqNum> {
        if self.eat(b'*') {
            Ok(SeqNum::Star)
        } else {
            self.nz_number()
                .map(SeqNum::Value)
                .map_err(|_| "invalid sequence set")
        }
    }

    /// `flag` (RFC 9051 9): `\Answered` etc., `\Recent` only as `allow_recent`
    /// (never in STORE or APPEND), keywords as atoms.
    fn flag(&mut self) -> Res<Flag> {
        if self.eat(b'\\') {
            let a = self.atom().map_err(|_| "invalid flag")?;
            for f in ["Answered", "Flagged", "Deleted", "Seen", "Draft"] {
                if a.eq_ignore_ascii_case(f.as_bytes()) {
                    return Ok(format!("\\{f}"));
                }
            }
            if a.eq_ignore_ascii_case(b"Recent") {
                return Err("\\Recent cannot be set by the client");
            }
            // RFC 9051 2.3.2: other flag-extensions may exist; they are
            // refused rather than stored as something nobody defined.
            Err("unknown system flag")
        } else {
            let a = self.atom().map_err(|_| "invalid flag")?;
            // Atoms are ASCII (atom_char), so this cannot fail.
            Ok(String::from_utf8_lossy(a).into_owned())
        }
    }

    /// `flag-list` = "(" [flag *(SP flag)] ")"
    fn flag_list(&mut self) -> Res<Vec<Flag>> {
        self.expect(b'(', "expected a flag list")?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            flags.push(self.flag()?);
            if self.eat(b')') {
                return Ok(flags);
            }
            self.sp()?;
        }
    }

    /// `date` = date-text / DQUOTE date-text DQUOTE; `d-Mon-yyyy`.
    fn date(&mut self) -> Res<Date> {
        let quoted = self.eat(b'"');
        let d = self.date_text()?;
        if quoted {
            self.expect(b'"', "invalid date")?;
        }
        Ok(d)
    }

    fn date_text(&mut self) -> Res<Date> {
        let day = self.take_while(|b| b.is_ascii_digit());
        if day.is_empty() || day.len() > 2 {
            return Err("invalid date");
        }
        let day: u8 = digits(day);
        self.expect(b'-', "invalid date")?;
        let month = self.month()?;
        self.expect(b'-', "invalid date")?;
        let year = self.take_while(|b| b.is_ascii_digit());
        if year.len() != 4 {
            return Err("invalid date");
        }
        let year: u16 = digits(year);
        if day == 0 || day > 31 {
            return Err("invalid date");
        }
        Ok(Date { year, month, day })
    }

    fn month(&mut self) -> Res<u8> {
        let m = self.s.get(self.i..self.i + 3).ok_or("invalid date")?;
        let n = MONTHS
            .iter()
            .position(|x| x.eq_ignore_ascii_case(m))
            .ok_or("invalid month")?;
        self.i += 3;
        Ok(n as u8 + 1)
    }

    /// `date-time` = DQUOTE date-day-fixed "-" date-month "-" date-year SP
    /// time SP zone DQUOTE (RFC 9051 9): `" 1-Feb-1994 21:52:25 -0800"`.
    fn date_time(&mut self) -> Res<DateTime> {
        const BAD: &str = "invalid date-time";
        self.expect(b'"', BAD)?;
        self.eat(b' ');
        let date = self.date_text().map_err(|_| BAD)?;
        self.expect(b' ', BAD)?;
        let mut hms = [0i64; 3];
        for (k, v) in hms.iter_mut().enumerate() {
            if k > 0 {
                self.expect(b':', BAD)?;
            }
            let d = self.take_while(|b| b.is_ascii_digit());
            if d.len() != 2 {
                return Err(BAD);
            }
            *v = digits::<i64>(d);
        }
        self.expect(b' ', BAD)?;
        let sign = match self.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(BAD),
        };
        self.i += 1;
        let z = self.take_while(|b| b.is_ascii_digit());
        if z.len() != 4 {
            return Err(BAD);
        }
        self.expect(b'"', BAD)?;
        let zone = digits::<i64>(&z[..2]) * 60 + digits::<i64>(&z[2..]);
        if hms[0] > 23 || hms[1] > 59 || hms[2] > 60 || zone > 24 * 60 {
            return Err(BAD);
        }
        let local = date.days() * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
        Ok(DateTime {
            unix: local - sign * zone * 60,
            zone_minutes: (sign * zone) as i16,
        })
    }

    /// A parenthesised list of header field names (`header-list`).
    fn header_list(&mut self) -> Res<Vec<String>> {
        self.expect(b'(', "expected a header list")?;
        let mut names = Vec::new();
        loop {
            let n = self.astring()?;
            names.push(String::from_utf8_lossy(&n).to_ascii_uppercase());
            if self.eat(b')') {
                return Ok(names);
            }
            self.sp()?;
        }
    }
}

fn digits<T: From<u8> + std::ops::Mul<Output = T> + std::ops::Add<Output = T>>(d: &[u8]) -> T {
    d.iter()
        .fold(T::from(0), |acc, &b| acc * T::from(10) + T::from(b - b'0'))
}

/// Parses one complete command (see the module comment for the framing).
pub fn parse(input: &[u8]) -> Result<Request, ParseError> {
    let mut p = P { s: input, i: 0 };
    let tag = p.take_while(tag_char);
    if tag.is_empty() || !p.eat(b' ') {
        return Err(ParseError {
            tag: None,
            kind: ErrorKind::NoTag,
        });
    }
    // tag_char is ASCII only.
    let tag = String::from_utf8_lossy(tag).into_owned();
    let err = |tag: &str, kind| ParseError {
        tag: Some(tag.to_string()),
        kind,
    };
    let name = p.take_while(atom_char).to_ascii_uppercase();
    let command = match command(&mut p, &name) {
        Ok(Some(c)) => c,
        Ok(None) => return Err(err(&tag, ErrorKind::Unknown)),
        Err(why) => return Err(err(&tag, ErrorKind::Syntax(why))),
    };
    if !p.at_end() {
        return Err(err(
            &tag,
            ErrorKind::Syntax("unexpected text after the command"),
        ));
    }
    Ok(Request { tag, command })
}

/// Parses `tag SP "APPEND" SP mailbox [SP flag-list] [SP date-time] SP`,
/// which the reader found before a literal. `Ok(None)`: this is not an
/// APPEND, or the literal is not its message (the mailbox name itself).
pub fn append_header(input: &[u8]) -> Result<Option<(String, AppendHeader)>, ParseError> {
    let mut p = P { s: input, i: 0 };
    let tag = p.take_while(tag_char);
    if tag.is_empty() || !p.eat(b' ') || !p.keyword(b"APPEND") || !p.eat(b' ') || p.at_end() {
        return Ok(None);
    }
    let tag = String::from_utf8_lossy(tag).into_owned();
    let fail = |why| ParseError {
        tag: Some(tag.clone()),
        kind: ErrorKind::Syntax(why),
    };
    let mailbox = p.mailbox().map_err(fail)?;
    let mut flags = Vec::new();
    let mut date = None;
    p.sp().map_err(fail)?;
    if p.peek() == Some(b'(') {
        flags = p.flag_list().map_err(fail)?;
        p.sp().map_err(fail)?;
    }
    if p.peek() == Some(b'"') {
        date = Some(p.date_time().map_err(fail)?);
        p.sp().map_err(fail)?;
    }
    if !p.at_end() {
        return Err(fail("expected flags, a date or the message literal"));
    }
    Ok(Some((
        tag,
        AppendHeader {
            mailbox,
            flags,
            date,
        },
    )))
}

/// The command after its name; `Ok(None)` for an unknown name.
fn command(p: &mut P, name: &[u8]) -> Res<Option<Command>> {
    let none = |c: Command| Ok(Some(c));
    Ok(Some(match name {
        b"CAPABILITY" => return none(Command::Capability),
        b"NOOP" => return none(Command::Noop),
        b"LOGOUT" => return none(Command::Logout),
        b"STARTTLS" => return none(Command::StartTls),
        b"NAMESPACE" => return none(Command::Namespace),
        b"IDLE" => return none(Command::Idle),
        b"CHECK" => return none(Command::Check),
        b"CLOSE" => return none(Command::Close),
        b"UNSELECT" => return none(Command::Unselect),
        b"EXPUNGE" => return none(Command::Expunge),
        b"AUTHENTICATE" => {
            p.sp()?;
            let mechanism = String::from_utf8_lossy(&p.word()?).into_owned();
            let initial = if p.eat(b' ') {
                // RFC 4959: base64 or "=" for an empty response.
                let r = p.take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                if r.is_empty() {
                    return Err("invalid initial response");
                }
                Some(String::from_utf8_lossy(r).into_owned())
            } else {
                None
            };
            Command::Authenticate { mechanism, initial }
        }
        b"LOGIN" => {
            p.sp()?;
            let user = p.astring()?;
            p.sp()?;
            let password = p.astring()?;
            Command::Login { user, password }
        }
        b"ENABLE" => {
            let mut caps = Vec::new();
            while p.eat(b' ') {
                caps.push(String::from_utf8_lossy(&p.word()?).into_owned());
            }
            if caps.is_empty() {
                return Err("ENABLE needs a capability");
            }
            Command::Enable(caps)
        }
        b"ID" => {
            p.sp()?;
            Command::Id(id_params(p)?)
        }
        b"SELECT" | b"EXAMINE" => {
            p.sp()?;
            let mailbox = p.mailbox()?;
            let mut condstore = false;
            if p.eat(b' ') {
                // RFC 4466 select-params; CONDSTORE is the one we know.
                p.expect(b'(', "expected select parameters")?;
                loop {
                    if p.keyword(b"CONDSTORE") {
                        condstore = true;
                    } else {
                        return Err("unknown select parameter");
                    }
                    if p.eat(b')') {
                        break;
                    }
                    p.sp()?;
                }
            }
            Command::Select {
                mailbox,
                read_only: name == b"EXAMINE",
                condstore,
            }
        }
        b"CREATE" => {
            p.sp()?;
            Command::Create(p.mailbox()?)
        }
        b"DELETE" => {
            p.sp()?;
            Command::Delete(p.mailbox()?)
        }
        b"RENAME" => {
            p.sp()?;
            let from = p.mailbox()?;
            p.sp()?;
            Command::Rename(from, p.mailbox()?)
        }
        b"SUBSCRIBE" => {
            p.sp()?;
            Command::Subscribe(p.mailbox()?)
        }
        b"UNSUBSCRIBE" => {
            p.sp()?;
            Command::Unsubscribe(p.mailbox()?)
        }
        b"LIST" => list(p)?,
        b"LSUB" => {
            p.sp()?;
            let reference = p.mailbox()?;
            p.sp()?;
            let pattern = p.list_mailbox()?;
            Command::Lsub { reference, pattern }
        }
        b"STATUS" => {
            p.sp()?;
            let mailbox = p.mailbox()?;
            p.sp()?;
            Command::Status {
                mailbox,
                items: status_items(p)?,
            }
        }
        b"APPEND" => {
            // The reader hands APPEND to append_header; here only when
            // the message literal is missing altogether.
            return Err("APPEND needs a message literal");
        }
        b"UID" => {
            p.sp()?;
            let sub = p.word()?;
            match sub.as_slice() {
                b"FETCH" => fetch(p, true)?,
                b"STORE" => store(p, true)?,
                b"SEARCH" => search(p, true)?,
                b"COPY" => copy(p, true, false)?,
                b"MOVE" => copy(p, true, true)?,
                b"EXPUNGE" => {
                    p.sp()?;
                    Command::UidExpunge(p.seq_set()?)
                }
                _ => return Err("unknown UID command"),
            }
        }
        b"FETCH" => fetch(p, false)?,
        b"STORE" => store(p, false)?,
        b"SEARCH" => search(p, false)?,
        b"COPY" => copy(p, false, false)?,
        b"MOVE" => copy(p, false, true)?,
        _ => return Ok(None),
    }))
}

/// RFC 2971: `"(" string SP nstring *(SP string SP nstring) ")" / nil`.
fn id_params(p: &mut P) -> Res<Vec<(String, Option<String>)>> {
    if p.keyword(b"NIL") {
        return Ok(Vec::new());
    }
    p.expect(b'(', "expected ID parameters or NIL")?;
    let mut out = Vec::new();
    if p.eat(b')') {
        return Ok(out);
    }
    loop {
        let k = p.string()?;
        p.sp()?;
        let v = if p.keyword(b"NIL") {
            None
        } else {
            Some(String::from_utf8_lossy(&p.string()?).into_owned())
        };
        // RFC 2971 3.3: at most 30 pairs.
        if out.len() >= 30 {
            return Err("too many ID parameters");
        }
        out.push((String::from_utf8_lossy(&k).into_owned(), v));
        if p.eat(b')') {
            return Ok(out);
        }
        p.sp()?;
    }
}

fn status_item(p: &mut P) -> Res<StatusItem> {
    Ok(match p.word()?.as_slice() {
        b"MESSAGES" => StatusItem::Messages,
        b"UIDNEXT" => StatusItem::UidNext,
        b"UIDVALIDITY" => StatusItem::UidValidity,
        b"UNSEEN" => StatusItem::Unseen,
        b"DELETED" => StatusItem::Deleted,
        b"SIZE" => StatusItem::Size,
        b"HIGHESTMODSEQ" => StatusItem::HighestModSeq,
        b"RECENT" => StatusItem::Recent,
        _ => return Err("unknown status item"),
    })
}

fn status_items(p: &mut P) -> Res<Vec<StatusItem>> {
    p.expect(b'(', "expected status items")?;
    let mut items = Vec::new();
    loop {
        items.push(status_item(p)?);
        if p.eat(b')') {
            return Ok(items);
        }
        p.sp()?;
    }
}

/// RFC 5258 3: `LIST [SP list-select-opts] SP mailbox SP mbox-or-pat
/// [SP list-return-opts]`.
fn list(p: &mut P) -> Res<Command> {
    p.sp()?;
    let mut select = ListSelect::default();
    let mut extended = false;
    if p.eat(b'(') {
        extended = true;
        if !p.eat(b')') {
            loop {
                match p.word()?.as_slice() {
                    b"SUBSCRIBED" => select.subscribed = true,
                    b"REMOTE" => select.remote = true,
                    b"RECURSIVEMATCH" => select.recursive_match = true,
                    b"SPECIAL-USE" => select.special_use = true,
                    _ => return Err("unknown LIST selection option"),
                }
                if p.eat(b')') {
                    break;
                }
                p.sp()?;
            }
        }
        // RFC 5258 3.1: RECURSIVEMATCH alone is an error.
        if select.recursive_match && !select.subscribed {
            return Err("RECURSIVEMATCH needs another selection option");
        }
        p.sp()?;
    }
    let reference = p.mailbox()?;
    p.sp()?;
    let mut patterns = Vec::new();
    if p.eat(b'(') {
        extended = true;
        loop {
            patterns.push(p.list_mailbox()?);
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    } else {
        patterns.push(p.list_mailbox()?);
    }
    let mut ret = ListReturn::default();
    if p.eat(b' ') {
        extended = true;
        if !p.keyword(b"RETURN") {
            return Err("expected RETURN");
        }
        p.sp()?;
        p.expect(b'(', "expected return options")?;
        if !p.eat(b')') {
            loop {
                match p.word()?.as_slice() {
                    b"SUBSCRIBED" => ret.subscribed = true,
                    b"CHILDREN" => ret.children = true,
                    b"SPECIAL-USE" => ret.special_use = true,
                    b"STATUS" => {
                        p.sp()?;
                        ret.status = Some(status_items(p)?);
                    }
                    _ => return Err("unknown LIST return option"),
                }
                if p.eat(b')') {
                    break;
                }
                p.sp()?;
            }
        }
    }
    Ok(Command::List {
        select,
        reference,
        patterns,
        ret,
        extended,
    })
}

fn copy(p: &mut P, uid: bool, is_move: bool) -> Res<Command> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mailbox = p.mailbox()?;
    Ok(if is_move {
        Command::Move { uid, set, mailbox }
    } else {
        Command::Copy { uid, set, mailbox }
    })
}

/// `section-part` and `section-text` inside `[...]` (RFC 9051 9).
fn section(p: &mut P) -> Res<Section> {
    p.expect(b'[', "expected a section")?;
    let mut s = Section::default();
    loop {
        if p.peek().is_some_and(|b| b.is_ascii_digit()) {
            s.part.push(p.nz_number()?);
            if s.part.len() > 64 {
                return Err("section too deep");
            }
            if p.eat(b'.') {
                continue;
            }
        }
        break;
    }
    if !p.eat(b']') {
        let w = p.take_while(|b| b.is_ascii_alphanumeric() || b == b'.');
        let w = w.to_ascii_uppercase();
        s.text = match w.as_slice() {
            b"HEADER" => SectionText::Header,
            b"TEXT" => SectionText::Text,
            b"MIME" if !s.part.is_empty() => SectionText::Mime,
            b"HEADER.FIELDS" => {
                p.sp()?;
                SectionText::HeaderFields(p.header_list()?)
            }
            b"HEADER.FIELDS.NOT" => {
                p.sp()?;
                SectionText::HeaderFieldsNot(p.header_list()?)
            }
            _ => return Err("invalid section"),
        };
        p.expect(b']', "invalid section")?;
    }
    Ok(s)
}

/// `<start.length>`; length must be non-zero (RFC 9051 9, `partial`).
fn partial(p: &mut P) -> Res<Option<(u32, u32)>> {
    if !p.eat(b'<') {
        return Ok(None);
    }
    let start = p.number()?;
    p.expect(b'.', "invalid partial range")?;
    let len = p.nz_number()?;
    p.expect(b'>', "invalid partial range")?;
    Ok(Some((start, len)))
}

/// `section-binary` = "[" [section-part] "]" (RFC 3516 4.1).
fn binary_part(p: &mut P) -> Res<Vec<u32>> {
    p.expect(b'[', "expected a section")?;
    let mut part = Vec::new();
    if !p.eat(b']') {
        loop {
            part.push(p.nz_number()?);
            if part.len() > 64 {
                return Err("section too deep");
            }
            if !p.eat(b'.') {
                break;
            }
        }
        p.expect(b']', "invalid section")?;
    }
    Ok(part)
}

fn fetch_att(p: &mut P, out: &mut Vec<FetchAtt>) -> Res<()> {
    let w = p.take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'8');
    let w = w.to_ascii_uppercase();
    let att = match w.as_slice() {
        b"ENVELOPE" => FetchAtt::Envelope,
        b"FLAGS" => FetchAtt::Flags,
        b"INTERNALDATE" => FetchAtt::InternalDate,
        b"RFC822.SIZE" => FetchAtt::Size,
        b"UID" => FetchAtt::Uid,
        b"BODYSTRUCTURE" => FetchAtt::BodyStructure,
        b"RFC822" => FetchAtt::Rfc822,
        b"RFC822.HEADER" => FetchAtt::Rfc822Header,
        b"RFC822.TEXT" => FetchAtt::Rfc822Text,
        b"MODSEQ" => FetchAtt::ModSeq,
        b"BODY" | b"BODY.PEEK" if p.peek() == Some(b'[') => {
            let section = section(p)?;
            FetchAtt::BodySection {
                section,
                partial: partial(p)?,
                peek: w.len() > 4,
            }
        }
        b"BODY" => FetchAtt::Body,
        b"BINARY" | b"BINARY.PEEK" => {
            let part = binary_part(p)?;
            FetchAtt::Binary {
                part,
                partial: partial(p)?,
                peek: w.len() > 6,
            }
        }
        b"BINARY.SIZE" => FetchAtt::BinarySize(binary_part(p)?),
        _ => return Err("unknown fetch item"),
    };
    if out.len() >= 64 {
        return Err("too many fetch items");
    }
    out.push(att);
    Ok(())
}

fn fetch(p: &mut P, uid: bool) -> Res<Command> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mut items = Vec::new();
    if p.eat(b'(') {
        loop {
            fetch_att(p, &mut items)?;
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    } else if p.keyword(b"ALL") {
        items = vec![
            FetchAtt::Flags,
            FetchAtt::InternalDate,
            FetchAtt::Size,
            FetchAtt::Envelope,
        ];
    } else if p.keyword(b"FAST") {
        items = vec![FetchAtt::Flags, FetchAtt::InternalDate, FetchAtt::Size];
    } else if p.keyword(b"FULL") {
        items = vec![
            FetchAtt::Flags,
            FetchAtt::InternalDate,
            FetchAtt::Size,
            FetchAtt::Envelope,
            FetchAtt::Body,
        ];
    } else {
        fetch_att(p, &mut items)?;
    }
    let mut changed_since = None;
    if p.eat(b' ') {
        // RFC 4466 fetch-modifiers; RFC 7162 3.1.4.1 CHANGEDSINCE.
        p.expect(b'(', "expected fetch modifiers")?;
        loop {
            if p.keyword(b"CHANGEDSINCE") {
                p.sp()?;
                changed_since = Some(p.modseq()?);
            } else {
                return Err("unknown fetch modifier");
            }
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    }
    Ok(Command::Fetch {
        uid,
        set,
        items,
        changed_since,
    })
}

fn store(p: &mut P, uid: bool) -> Res<Command> {
    p.sp()?;
    let set = p.seq_set()?;
    p.sp()?;
    let mut unchanged_since = None;
    if p.eat(b'(') {
        if !p.keyword(b"UNCHANGEDSINCE") {
            return Err("unknown store modifier");
        }
        p.sp()?;
        // RFC 7162 3.1.3: UNCHANGEDSINCE 0 is allowed (always fails).
        unchanged_since = Some(p.number64()?);
        p.expect(b')', "expected )")?;
        p.sp()?;
    }
    let mode = if p.eat(b'+') {
        StoreMode::Add
    } else if p.eat(b'-') {
        StoreMode::Remove
    } else {
        StoreMode::Replace
    };
    let silent = if p.keyword(b"FLAGS") {
        false
    } else if p.keyword(b"FLAGS.SILENT") {
        true
    } else {
        return Err("expected FLAGS or FLAGS.SILENT");
    };
    p.sp()?;
    // RFC 9051 9: `flag-list / (flag *(SP flag))`.
    let flags = if p.peek() == Some(b'(') {
        p.flag_list()?
    } else {
        let mut f = vec![p.flag()?];
        while p.eat(b' ') {
            f.push(p.flag()?);
        }
        f
    };
    Ok(Command::Store {
        uid,
        set,
        unchanged_since,
        mode,
        silent,
        flags,
    })
}

fn search(p: &mut P, uid: bool) -> Res<Command> {
    let mut ret = None;
    let mut charset = None;
    p.sp()?;
    if p.keyword(b"RETURN") {
        p.sp()?;
        p.expect(b'(', "expected search return options")?;
        let mut opts = Vec::new();
        if !p.eat(b')') {
            loop {
                opts.push(match p.word()?.as_slice() {
                    b"MIN" => SearchReturn::Min,
                    b"MAX" => SearchReturn::Max,
                    b"ALL" => SearchReturn::All,
                    b"COUNT" => SearchReturn::Count,
                    b"SAVE" => SearchReturn::Save,
                    _ => return Err("unknown search return option"),
                });
                if p.eat(b')') {
                    break;
                }
                p.sp()?;
            }
        }
        ret = Some(opts);
        p.sp()?;
    }
    if p.keyword(b"CHARSET") {
        p.sp()?;
        let c = p.astring()?;
        charset = Some(String::from_utf8_lossy(&c).to_ascii_uppercase());
        p.sp()?;
    }
    let mut keys = vec![search_key(p, 0)?];
    while p.eat(b' ') {
        keys.push(search_key(p, 0)?);
    }
    let key = if keys.len() == 1 {
        keys.pop().unwrap_or(SearchKey::All)
    } else {
        SearchKey::And(keys)
    };
    Ok(Command::Search {
        uid,
        charset,
        ret,
        key,
    })
}

fn search_key(p: &mut P, depth: usize) -> Res<SearchKey> {
    if depth >= MAX_DEPTH {
        return Err("search keys nested too deep");
    }
    if p.eat(b'(') {
        let mut keys = vec![search_key(p, depth + 1)?];
        while p.eat(b' ') {
            keys.push(search_key(p, depth + 1)?);
        }
        p.expect(b')', "expected ) after search keys")?;
        return Ok(if keys.len() == 1 {
            keys.pop().unwrap_or(SearchKey::All)
        } else {
            SearchKey::And(keys)
        });
    }
    if p.peek().is_some_and(|b| b.is_ascii_digit() || b == b'*') {
        return Ok(SearchKey::Seq(p.seq_set()?));
    }
    let w = p.word()?;
    let flag = |f: &str, set| Ok(SearchKey::Flag(f.to_string(), set));
    let text = |p: &mut P, f| -> Res<SearchKey> {
        p.sp()?;
        Ok(SearchKey::Text(f, p.astring()?))
    };
    let date = |p: &mut P, make: fn(Date) -> SearchKey| -> Res<SearchKey> {
        p.sp()?;
        Ok(make(p.date()?))
    };
    match w.as_slice() {
        b"ALL" => Ok(SearchKey::All),
        b"ANSWERED" => flag("\\Answered", true),
        b"DELETED" => flag("\\Deleted", true),
        b"DRAFT" => flag("\\Draft", true),
        b"FLAGGED" => flag("\\Flagged", true),
        b"SEEN" => flag("\\Seen", true),
        b"UNANSWERED" => flag("\\Answered", false),
        b"UNDELETED" => flag("\\Deleted", false),
        b"UNDRAFT" => flag("\\Draft", false),
        b"UNFLAGGED" => flag("\\Flagged", false),
        b"UNSEEN" => flag("\\Seen", false),
        b"KEYWORD" | b"UNKEYWORD" => {
            p.sp()?;
            let k = p.atom()?;
            Ok(SearchKey::Flag(
                String::from_utf8_lossy(k).into_owned(),
                w.as_slice() == b"KEYWORD",
            ))
        }
        b"NEW" => Ok(SearchKey::New),
        b"OLD" => Ok(SearchKey::Old),
        b"RECENT" => Ok(SearchKey::Recent),
        b"BCC" => text(p, TextField::Bcc),
        b"CC" => text(p, TextField::Cc),
        b"FROM" => text(p, TextField::From),
        b"SUBJECT" => text(p, TextField::Subject),
        b"TO" => text(p, TextField::To),
        b"BODY" => text(p, TextField::Body),
        b"TEXT" => text(p, TextField::Text),
        b"HEADER" => {
            p.sp()?;
            let name = p.astring()?;
            p.sp()?;
            let value = p.astring()?;
            Ok(SearchKey::Header(
                String::from_utf8_lossy(&name).to_ascii_uppercase(),
                value,
            ))
        }
        b"BEFORE" => date(p, SearchKey::Before),
        b"ON" => date(p, SearchKey::On),
        b"SINCE" => date(p, SearchKey::Since),
        b"SENTBEFORE" => date(p, SearchKey::SentBefore),
        b"SENTON" => date(p, SearchKey::SentOn),
        b"SENTSINCE" => date(p, SearchKey::SentSince),
        b"LARGER" => {
            p.sp()?;
            Ok(SearchKey::Larger(p.number64()?))
        }
        b"SMALLER" => {
            p.sp()?;
            Ok(SearchKey::Smaller(p.number64()?))
        }
        b"UID" => {
            p.sp()?;
            Ok(SearchKey::Uid(p.seq_set()?))
        }
        b"NOT" => {
            p.sp()?;
            Ok(SearchKey::Not(Box::new(search_key(p, depth + 1)?)))
        }
        b"OR" => {
            p.sp()?;
            let a = search_key(p, depth + 1)?;
            p.sp()?;
            let b = search_key(p, depth + 1)?;
            Ok(SearchKey::Or(Box::new(a), Box::new(b)))
        }
        b"MODSEQ" => {
            p.sp()?;
            // RFC 7162 3.1.5: [entry-name SP entry-type-req SP] value.
            if p.peek() == Some(b'"') {
                p.quoted()?;
                p.sp()?;
                let t = p.word()?;
                if !matches!(t.as_slice(), b"PRIV" | b"SHARED" | b"ALL") {
                    return Err("invalid MODSEQ entry type");
                }
                p.sp()?;
            }
            Ok(SearchKey::ModSeq(p.modseq()?))
        }
        _ => Err("unknown search key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Command {
        match parse(s.as_bytes()) {
            Ok(r) => r.command,
            Err(e) => panic!("{s}: {e:?}"),
        }
    }

    fn bad(s: &str) -> &'static str {
        match parse(s.as_bytes()) {
            Ok(r) => panic!("{s}: parsed as {r:?}"),
            Err(e) => e.reason(),
        }
    }

    fn set(s: &str) -> SeqSet {
        P {
            s: s.as_bytes(),
            i: 0,
        }
        .seq_set()
        .unwrap()
    }

    #[test]
    fn date_header_day() {
        let d = |s: &str| Date::from_rfc5322(s.as_bytes()).map(|d| (d.year, d.month, d.day));
        // RFC 5322 3.3 and its appendix A.1.1 example.
        assert_eq!(d("Fri, 21 Nov 1997 09:55:06 -0600"), Some((1997, 11, 21)));
        assert_eq!(d("1 Jan 2020 00:00 +0000"), Some((2020, 1, 1)));
        // Obsolete forms (RFC 5322 4.3): two-digit years, odd spacing.
        assert_eq!(d("Thu,13 Feb 69 23:32:54 -0330"), Some((1969, 2, 13)));
        assert_eq!(d("Mon, 3 Mar 05 1:02:03 GMT"), Some((2005, 3, 3)));
        assert_eq!(d("garbage"), None);
        assert_eq!(d("Mon, 32 Jan 2020 00:00 +0000"), None);
    }

    #[test]
    fn rfc9051_examples_any_and_not_authenticated() {
        // RFC 9051 6.1.1, 6.1.2, 6.1.3, 6.2.1, 6.2.3.
        assert_eq!(ok("abcd CAPABILITY"), Command::Capability);
        assert_eq!(ok("a002 NOOP"), Command::Noop);
        assert_eq!(ok("A023 LOGOUT"), Command::Logout);
        assert_eq!(ok("a001 STARTTLS"), Command::StartTls);
        assert_eq!(
            ok("a001 LOGIN SMITH SESAME"),
            Command::Login {
                user: b"SMITH".to_vec(),
                password: b"SESAME".to_vec()
            }
        );
        let r = parse(b"A001 lOgIn \"fred \\\"x\\\\\" {5}\r\nab cd").unwrap();
        assert_eq!(r.tag, "A001");
        assert_eq!(
            r.command,
            Command::Login {
                user: b"fred \"x\\".to_vec(),
                password: b"ab cd".to_vec()
            }
        );
        // RFC 4959 3 and RFC 9051 6.2.2.
        assert_eq!(
            ok("A01 AUTHENTICATE PLAIN dGVzdAB0ZXN0AHRlc3Q="),
            Command::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some("dGVzdAB0ZXN0AHRlc3Q=".into())
            }
        );
        assert_eq!(
            ok("A01 AUTHENTICATE plain"),
            Command::Authenticate {
                mechanism: "PLAIN".into(),
                initial: None
            }
        );
    }

    #[test]
    fn rfc9051_examples_authenticated() {
        assert_eq!(
            ok("A142 SELECT INBOX"),
            Command::Select {
                mailbox: b"INBOX".to_vec(),
                read_only: false,
                condstore: false
            }
        );
        assert_eq!(
            ok("A932 EXAMINE blurdybloop"),
            Command::Select {
                mailbox: b"blurdybloop".to_vec(),
                read_only: true,
                condstore: false
            }
        );
        // RFC 7162 3.1.8.
        assert_eq!(
            ok("A142 SELECT inbox (CONDSTORE)"),
            Command::Select {
                mailbox: b"INBOX".to_vec(),
                read_only: false,
                condstore: true
            }
        );
        assert_eq!(
            ok("A003 CREATE owatagusiam/"),
            Command::Create(b"owatagusiam/".to_vec())
        );
        assert_eq!(
            ok("A683 DELETE blurdybloop"),
            Command::Delete(b"blurdybloop".to_vec())
        );
        assert_eq!(
            ok("A684 RENAME Foo Zowie"),
            Command::Rename(b"Foo".to_vec(), b"Zowie".to_vec())
        );
        assert_eq!(
            ok("A002 SUBSCRIBE #news.comp.mail.mime"),
            Command::Subscribe(b"#news.comp.mail.mime".to_vec())
        );
        assert_eq!(
            ok("A002 UNSUBSCRIBE #news.comp.mail.mime"),
            Command::Unsubscribe(b"#news.comp.mail.mime".to_vec())
        );
        assert_eq!(
            ok("A101 LIST \"\" \"\""),
            Command::List {
                select: ListSelect::default(),
                reference: vec![],
                patterns: vec![vec![]],
                ret: ListReturn::default(),
                extended: false
            }
        );
        assert_eq!(
            ok("A102 LIST #news.comp.mail.misc \"\""),
            Command::List {
                select: ListSelect::default(),
                reference: b"#news.comp.mail.misc".to_vec(),
                patterns: vec![vec![]],
                ret: ListReturn::default(),
                extended: false
            }
        );
        assert_eq!(
            ok("A202 LIST ~/Mail/ %"),
            Command::List {
                select: ListSelect::default(),
                reference: b"~/Mail/".to_vec(),
                patterns: vec![b"%".to_vec()],
                ret: ListReturn::default(),
                extended: false
            }
        );
        // RFC 5258 5 examples.
        match ok("A04 LIST (SUBSCRIBED RECURSIVEMATCH) \"\" % RETURN (CHILDREN)") {
            Command::List {
                select,
                ret,
                extended,
                ..
            } => {
                assert!(select.subscribed && select.recursive_match && extended);
                assert!(ret.children && !ret.subscribed);
            }
            c => panic!("{c:?}"),
        }
        match ok("A05 LIST \"\" (\"INBOX\" \"Drafts\" Sent/%) RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))") {
            Command::List { patterns, ret, .. } => {
                assert_eq!(patterns.len(), 3);
                assert!(ret.special_use);
                assert_eq!(ret.status, Some(vec![StatusItem::Messages, StatusItem::Unseen]));
            }
            c => panic!("{c:?}"),
        }
        assert_eq!(
            bad("A06 LIST (RECURSIVEMATCH) \"\" %"),
            "RECURSIVEMATCH needs another selection option"
        );
        assert_eq!(
            ok("A002 LSUB \"#news.\" \"comp.mail.*\""),
            Command::Lsub {
                reference: b"#news.".to_vec(),
                pattern: b"comp.mail.*".to_vec()
            }
        );
        assert_eq!(ok("A001 NAMESPACE"), Command::Namespace);
        assert_eq!(
            ok("A042 STATUS blurdybloop (UIDNEXT MESSAGES size deleted HIGHESTMODSEQ)"),
            Command::Status {
                mailbox: b"blurdybloop".to_vec(),
                items: vec![
                    StatusItem::UidNext,
                    StatusItem::Messages,
                    StatusItem::Size,
                    StatusItem::Deleted,
                    StatusItem::HighestModSeq
                ]
            }
        );
        assert_eq!(
            ok("a ENABLE CONDSTORE utf8=accept"),
            Command::Enable(vec!["CONDSTORE".into(), "UTF8=ACCEPT".into()])
        );
        assert_eq!(
            ok("a023 ID (\"name\" \"sodr\" \"version\" \"19.34\" \"os\" NIL)"),
            Command::Id(vec![
                ("name".into(), Some("sodr".into())),
                ("version".into(), Some("19.34".into())),
                ("os".into(), None)
            ])
        );
        assert_eq!(ok("a ID NIL"), Command::Id(vec![]));
        assert_eq!(ok("A002 IDLE"), Command::Idle);
    }

    #[test]
    fn append_header_before_the_literal() {
        // RFC 9051 6.3.12 example: the reader stops before `{310}`.
        let (tag, h) = append_header(b"A003 APPEND saved-messages (\\Seen) ")
            .unwrap()
            .unwrap();
        assert_eq!(tag, "A003");
        assert_eq!(h.mailbox, b"saved-messages");
        assert_eq!(h.flags, vec!["\\Seen".to_string()]);
        let (_, h) =
            append_header(b"A4 append inbox (\\Seen $Junk) \" 7-Feb-1994 21:52:25 -0800\" ")
                .unwrap()
                .unwrap();
        assert_eq!(h.mailbox, b"INBOX");
        let d = h.date.unwrap();
        assert_eq!(d.zone_minutes, -480);
        // 1994-02-08 05:52:25 UTC
        assert_eq!(d.unix, 760_686_745);
        // The mailbox name itself is the literal: not the message yet.
        assert_eq!(append_header(b"A5 APPEND ").unwrap(), None);
        assert_eq!(append_header(b"A5 FETCH ").unwrap(), None);
        let (_, h) = append_header(b"A6 APPEND {5}\r\nDraft ").unwrap().unwrap();
        assert_eq!(h.mailbox, b"Draft");
        assert!(append_header(b"A7 APPEND x (\\Recent) ").is_err());
        assert!(append_header(b"A7 APPEND x \"31-Foo-2000 00:00:00 +0000\" ").is_err());
        assert_eq!(bad("A8 APPEND x"), "APPEND needs a message literal");
    }

    #[test]
    fn selected_state_examples() {
        assert_eq!(ok("FXXZ CHECK"), Command::Check);
        assert_eq!(ok("A341 CLOSE"), Command::Close);
        assert_eq!(ok("A342 UNSELECT"), Command::Unselect);
        assert_eq!(ok("A202 EXPUNGE"), Command::Expunge);
        // RFC 4315 2.1
        assert_eq!(
            ok("A003 UID EXPUNGE 3000:3002"),
            Command::UidExpunge(set("3000:3002"))
        );
        // RFC 9051 6.4.4
        assert_eq!(
            ok("A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\""),
            Command::Search {
                uid: false,
                charset: None,
                ret: Some(vec![SearchReturn::Min, SearchReturn::Count]),
                key: SearchKey::And(vec![
                    SearchKey::Flag("\\Flagged".into(), true),
                    SearchKey::Since(Date {
                        year: 1994,
                        month: 2,
                        day: 1
                    }),
                    SearchKey::Not(Box::new(SearchKey::Text(
                        TextField::From,
                        b"Smith".to_vec()
                    )))
                ])
            }
        );
        assert_eq!(
            ok("A284 SEARCH CHARSET UTF-8 TEXT {4}\r\nXXXX"),
            Command::Search {
                uid: false,
                charset: Some("UTF-8".into()),
                ret: None,
                key: SearchKey::Text(TextField::Text, b"XXXX".to_vec())
            }
        );
        match ok("a UID SEARCH OR (UNSEEN KEYWORD $Junk) 1:5,7 UID 10:* LARGER 100 HEADER X-Spam yes MODSEQ 620162338") {
            Command::Search { uid: true, key: SearchKey::And(keys), .. } => {
                assert_eq!(keys.len(), 5);
                assert_eq!(keys[4], SearchKey::ModSeq(620162338));
            }
            c => panic!("{c:?}"),
        }
        // RFC 7162 3.1.5 example with entry name.
        assert_eq!(
            ok("a SEARCH MODSEQ \"/flags/\\\\draft\" all 620162338"),
            Command::Search {
                uid: false,
                charset: None,
                ret: None,
                key: SearchKey::ModSeq(620162338)
            }
        );
        // RFC 9051 6.4.5
        match ok("A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])") {
            Command::Fetch {
                set: s,
                items,
                uid: false,
                changed_since: None,
            } => {
                assert_eq!(s, set("2:4"));
                assert_eq!(
                    items[1],
                    FetchAtt::BodySection {
                        section: Section {
                            part: vec![],
                            text: SectionText::HeaderFields(vec!["DATE".into(), "FROM".into()])
                        },
                        partial: None,
                        peek: false
                    }
                );
            }
            c => panic!("{c:?}"),
        }
        match ok("a UID FETCH 1:* (BODY.PEEK[1.2.MIME] BINARY.PEEK[1]<0.1024> BINARY.SIZE[2] RFC822.SIZE MODSEQ) (CHANGEDSINCE 12345)") {
            Command::Fetch { uid: true, items, changed_since: Some(12345), .. } => {
                assert_eq!(items.len(), 5);
                assert_eq!(
                    items[1],
                    FetchAtt::Binary { part: vec![1], partial: Some((0, 1024)), peek: true }
                );
                assert_eq!(items[2], FetchAtt::BinarySize(vec![2]));
            }
            c => panic!("{c:?}"),
        }
        match ok("a FETCH 1 full") {
            Command::Fetch { items, .. } => assert_eq!(items.len(), 5),
            c => panic!("{c:?}"),
        }
        match ok("a FETCH 1 body[]<0.2048>") {
            Command::Fetch { items, .. } => assert_eq!(
                items,
                vec![FetchAtt::BodySection {
                    section: Section::default(),
                    partial: Some((0, 2048)),
                    peek: false
                }]
            ),
            c => panic!("{c:?}"),
        }
        // RFC 9051 6.4.6, RFC 7162 3.1.3.
        assert_eq!(
            ok("A003 STORE 2:4 +FLAGS (\\Deleted)"),
            Command::Store {
                uid: false,
                set: set("2:4"),
                unchanged_since: None,
                mode: StoreMode::Add,
                silent: false,
                flags: vec!["\\Deleted".into()]
            }
        );
        assert_eq!(
            ok("d105 STORE 7,5,9 (UNCHANGEDSINCE 320162338) -FLAGS.SILENT \\seen $Foo"),
            Command::Store {
                uid: false,
                set: set("7,5,9"),
                unchanged_since: Some(320162338),
                mode: StoreMode::Remove,
                silent: true,
                flags: vec!["\\Seen".into(), "$Foo".into()]
            }
        );
        assert_eq!(
            ok("A003 COPY 2:4 MEETING"),
            Command::Copy {
                uid: false,
                set: set("2:4"),
                mailbox: b"MEETING".to_vec()
            }
        );
        // RFC 6851 4.
        assert_eq!(
            ok("a UID MOVE 42:69 foo"),
            Command::Move {
                uid: true,
                set: set("42:69"),
                mailbox: b"foo".to_vec()
            }
        );
    }

    #[test]
    fn malformed_commands_say_why() {
        assert_eq!(parse(b"").unwrap_err().kind, ErrorKind::NoTag);
        assert_eq!(parse(b"+ NOOP").unwrap_err().kind, ErrorKind::NoTag);
        assert_eq!(parse(b"a1").unwrap_err().kind, ErrorKind::NoTag);
        let e = parse(b"a1 FROB").unwrap_err();
        assert_eq!((e.tag.as_deref(), e.kind), (Some("a1"), ErrorKind::Unknown));
        assert_eq!(bad("a NOOP x"), "unexpected text after the command");
        assert_eq!(bad("a FETCH 0 FLAGS"), "invalid sequence set");
        assert_eq!(bad("a FETCH 1:x FLAGS"), "invalid sequence set");
        assert_eq!(bad("a FETCH 1 (FLAGS"), "expected a space");
        assert_eq!(bad("a FETCH 1 FOO"), "unknown fetch item");
        assert_eq!(
            bad("a STORE 1 FLAGS (\\Recent)"),
            "\\Recent cannot be set by the client"
        );
        assert_eq!(bad("a LOGIN \"a"), "unterminated quoted string");
        assert_eq!(bad("a LOGIN {5}\r\nab"), "literal shorter than announced");
        assert_eq!(bad("a SEARCH SINCE 32-Jan-2000"), "invalid date");
        assert_eq!(bad("a FETCH 99999999999 FLAGS"), "invalid sequence set");
        assert_eq!(bad("a UID FROB 1"), "unknown UID command");
        let deep = format!("a SEARCH {}ALL{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(bad(&deep), "search keys nested too deep");
        let nots = format!("a SEARCH {}ALL", "NOT ".repeat(40));
        assert_eq!(bad(&nots), "search keys nested too deep");
    }

    #[test]
    fn sequence_sets() {
        let s = set("1,3:5,9:*");
        assert!(s.contains(4, 20) && s.contains(20, 20) && !s.contains(2, 20));
        assert!(set("4:2").contains(3, 10));
        assert!(set("*").contains(7, 7));
        assert_eq!(set("*:4").ranges(2).collect::<Vec<_>>(), vec![(2, 4)]);
    }

    #[test]
    fn dates() {
        assert_eq!(
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
            .days(),
            0
        );
        assert_eq!(
            Date {
                year: 2000,
                month: 3,
                day: 1
            }
            .days(),
            11017
        );
    }
}
