//! Serializing what the server sends (RFC 9051 section 7 and the formal
//! syntax of section 9): tagged and untagged status responses with their
//! response codes (7.1), server and mailbox data (7.2-7.4), FETCH data with
//! ENVELOPE and BODYSTRUCTURE (7.5.2), and continuation requests (7.6).
//!
//! Everything is written into a caller's `Vec<u8>` so that one buffer per
//! connection serves every response. Strings are sent quoted when they can
//! be (7-bit, without CR, LF or NUL, short), as literals
//! otherwise. Message bodies are not written here: [`literal_header`]
//! announces one and the driver streams its octets.

use super::command::{SearchReturn, StatusItem};
use std::fmt::Write as _;

/// The result of a command or an untagged condition (RFC 9051 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    PreAuth,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::Bye => "BYE",
            Status::PreAuth => "PREAUTH",
        }
    }
}

/// Response codes (RFC 9051 7.1, RFC 5530, RFC 4315 UIDPLUS, RFC 7162
/// CONDSTORE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Alert,
    AlreadyExists,
    /// RFC 4315: `APPENDUID uidvalidity uid`.
    AppendUid(u32, u32),
    AuthenticationFailed,
    Cannot,
    /// The capability list, space separated.
    Capability(String),
    ClientBug,
    Closed,
    ContactAdmin,
    /// RFC 4315: `COPYUID uidvalidity source-uids dest-uids`.
    CopyUid(u32, Vec<u32>, Vec<u32>),
    ExpungeIssued,
    HighestModSeq(u64),
    InUse,
    Limit,
    /// RFC 7162 3.1.3: the messages whose flags were not changed.
    Modified(Vec<u32>),
    NoModSeq,
    NonExistent,
    NoPerm,
    OverQuota,
    Parse,
    PermanentFlags(Vec<String>),
    PrivacyRequired,
    ReadOnly,
    ReadWrite,
    ServerBug,
    TooBig,
    TryCreate,
    UidNext(u32),
    UidValidity(u32),
    Unavailable,
    UnknownCte,
    /// RFC 3501 7.1: the first unseen message (rev1 SELECT).
    Unseen(u32),
    /// `BADCHARSET (UTF-8 US-ASCII)` (RFC 9051 7.1).
    BadCharset,
}

fn write_code(out: &mut Vec<u8>, code: &Code) {
    let s = match code {
        Code::Alert => "ALERT",
        Code::AlreadyExists => "ALREADYEXISTS",
        Code::AuthenticationFailed => "AUTHENTICATIONFAILED",
        Code::Cannot => "CANNOT",
        Code::ClientBug => "CLIENTBUG",
        Code::Closed => "CLOSED",
        Code::ContactAdmin => "CONTACTADMIN",
        Code::ExpungeIssued => "EXPUNGEISSUED",
        Code::InUse => "INUSE",
        Code::Limit => "LIMIT",
        Code::NoModSeq => "NOMODSEQ",
        Code::NonExistent => "NONEXISTENT",
        Code::NoPerm => "NOPERM",
        Code::OverQuota => "OVERQUOTA",
        Code::Parse => "PARSE",
        Code::PrivacyRequired => "PRIVACYREQUIRED",
        Code::ReadOnly => "READ-ONLY",
        Code::ReadWrite => "READ-WRITE",
        Code::ServerBug => "SERVERBUG",
        Code::TooBig => "TOOBIG",
        Code::TryCreate => "TRYCREATE",
        Code::Unavailable => "UNAVAILABLE",
        Code::UnknownCte => "UNKNOWN-CTE",
        Code::AppendUid(v, u) => return push(out, format_args!("APPENDUID {v} {u}")),
        Code::Capability(c) => return push(out, format_args!("CAPABILITY {c}")),
        Code::CopyUid(v, from, to) => {
            push(out, format_args!("COPYUID {v} "));
            write_set(out, from);
            out.push(b' ');
            write_set(out, to);
            return;
        }
        Code::HighestModSeq(m) => return push(out, format_args!("HIGHESTMODSEQ {m}")),
        Code::Modified(set) => {
            out.extend_from_slice(b"MODIFIED ");
            write_set(out, set);
            return;
        }
        Code::PermanentFlags(f) => {
            out.extend_from_slice(b"PERMANENTFLAGS (");
            join(out, f.iter().map(String::as_str).chain(["\\*"]));
            out.push(b')');
            return;
        }
        Code::UidNext(n) => return push(out, format_args!("UIDNEXT {n}")),
        Code::UidValidity(n) => return push(out, format_args!("UIDVALIDITY {n}")),
        Code::Unseen(n) => return push(out, format_args!("UNSEEN {n}")),
        Code::BadCharset => "BADCHARSET (UTF-8 US-ASCII)",
    };
    out.extend_from_slice(s.as_bytes());
}

fn push(out: &mut Vec<u8>, args: std::fmt::Arguments) {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = s.write_fmt(args);
    out.extend_from_slice(s.as_bytes());
}

/// A decimal number, written without `format!` (FETCH writes several
/// per message). Below 2^32 the division by 10 is a multiplication (a
/// 64-bit `div` per digit costs more than the rest of a FLAGS response).
pub fn number(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    while n > u64::from(u32::MAX) {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut m = n as u32;
    loop {
        // m / 10 for every u32 (Granlund & Montgomery).
        let q = ((u64::from(m) * 0xCCCC_CCCD) >> 35) as u32;
        i -= 1;
        buf[i] = b'0' + (m - q * 10) as u8;
        m = q;
        if m == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn join<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>) {
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(s.as_bytes());
    }
}

/// Human-readable text of a status response: one line, no CR/LF, and not
/// starting with `[` unless a code precedes it (RFC 9051 9 `text`).
fn write_text(out: &mut Vec<u8>, text: &str) {
    let text = if text.is_empty() { "done" } else { text };
    for b in text.bytes() {
        out.push(if b == b'\r' || b == b'\n' || b == 0 {
            b' '
        } else {
            b
        });
    }
}

fn status_line(out: &mut Vec<u8>, status: Status, code: Option<&Code>, text: &str) {
    out.extend_from_slice(status.word().as_bytes());
    out.push(b' ');
    if let Some(c) = code {
        out.push(b'[');
        write_code(out, c);
        out.extend_from_slice(b"] ");
    } else if text.starts_with('[') {
        // Not to be read as a code.
        out.push(b' ');
    }
    write_text(out, text);
    out.extend_from_slice(b"\r\n");
}

/// `tag OK [code] text`
pub fn tagged(out: &mut Vec<u8>, tag: &str, status: Status, code: Option<&Code>, text: &str) {
    out.extend_from_slice(tag.as_bytes());
    out.push(b' ');
    status_line(out, status, code, text);
}

/// `* OK [code] text`, `* BYE ...`
pub fn untagged(out: &mut Vec<u8>, status: Status, code: Option<&Code>, text: &str) {
    out.extend_from_slice(b"* ");
    status_line(out, status, code, text);
}

/// `+ text` (RFC 9051 7.6); for SASL the text is base64.
pub fn continuation(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"+ ");
    write_text(out, text);
    out.extend_from_slice(b"\r\n");
}

/// `+ ` with nothing after it: an empty SASL challenge (RFC 9051 6.2.2).
pub fn empty_continuation(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+ \r\n");
}

/// `* CAPABILITY IMAP4rev1 ...`
pub fn capability(out: &mut Vec<u8>, caps: &str) {
    push(out, format_args!("* CAPABILITY {caps}\r\n"));
}

/// `* ENABLED ...` (RFC 5161 3.2).
pub fn enabled(out: &mut Vec<u8>, caps: &[&str]) {
    out.extend_from_slice(b"* ENABLED");
    for c in caps {
        out.push(b' ');
        out.extend_from_slice(c.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `* ID ("name" "pimail" ...)` (RFC 2971 3.2).
pub fn id(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    out.extend_from_slice(b"* ID (");
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.as_bytes());
        out.push(b' ');
        string(out, v.as_bytes());
    }
    out.extend_from_slice(b")\r\n");
}

/// `* NAMESPACE (("" "/")) NIL NIL` (RFC 2342 5, RFC 9051 7.3.5): one
/// personal namespace, no other users, no shared folders.
pub fn namespace(out: &mut Vec<u8>) {
    out.extend_from_slice(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
}

/// `* n EXISTS`
pub fn exists(out: &mut Vec<u8>, n: u32) {
    push(out, format_args!("* {n} EXISTS\r\n"));
}

/// `* n RECENT` (RFC 3501 7.3.2; rev2 dropped it, rev1 clients need it).
pub fn recent(out: &mut Vec<u8>, n: u32) {
    push(out, format_args!("* {n} RECENT\r\n"));
}

/// `* n EXPUNGE`
pub fn expunge(out: &mut Vec<u8>, seq: u32) {
    push(out, format_args!("* {seq} EXPUNGE\r\n"));
}

/// `* FLAGS (...)`
pub fn flags(out: &mut Vec<u8>, flags: &[String]) {
    out.extend_from_slice(b"* FLAGS (");
    join(out, flags.iter().map(String::as_str));
    out.extend_from_slice(b")\r\n");
}

/// A `string` (RFC 9051 9): quoted when it can be, else a literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    // RFC 3501 9: quoted strings are 7-bit (rev2 allows UTF-8, but only
    // rev2 clients read it), so 8-bit text goes as a literal.
    let quotable = s.len() <= 1024
        && s.iter()
            .all(|&b| (1..0x80).contains(&b) && b != b'\r' && b != b'\n');
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal_header(out, s.len() as u64);
        out.extend_from_slice(s);
    }
}

/// `nstring`: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// `{n}` CRLF: the octets follow (the driver streams a body after it).
pub fn literal_header(out: &mut Vec<u8>, len: u64) {
    out.push(b'{');
    number(out, len);
    out.extend_from_slice(b"}\r\n");
}

/// A sorted list of numbers as a compact sequence set (`1:3,7,9:10`); the
/// empty list is written as nothing.
pub fn write_set(out: &mut Vec<u8>, nums: &[u32]) {
    let mut i = 0;
    let mut first = true;
    while i < nums.len() {
        let mut j = i;
        while j + 1 < nums.len() && nums[j + 1] == nums[j].wrapping_add(1) {
            j += 1;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        if i == j {
            push(out, format_args!("{}", nums[i]));
        } else {
            push(out, format_args!("{}:{}", nums[i], nums[j]));
        }
        i = j + 1;
    }
}

/// A mailbox name on the wire: quoted, or a literal when it must be.
pub fn mailbox(out: &mut Vec<u8>, wire_name: &str) {
    if wire_name == "INBOX" {
        out.extend_from_slice(b"INBOX");
    } else {
        string(out, wire_name.as_bytes());
    }
}

/// `* LIST (\HasNoChildren \Sent) "/" "Sent"` or `* LSUB ...`, with the
/// RFC 5258 extended data when asked (only CHILDINFO is ever sent).
pub fn list(
    out: &mut Vec<u8>,
    lsub: bool,
    attrs: &[&str],
    wire_name: &str,
    childinfo_subscribed: bool,
) {
    out.extend_from_slice(if lsub { b"* LSUB (" } else { b"* LIST (" });
    join(out, attrs.iter().copied());
    out.extend_from_slice(b") \"/\" ");
    mailbox(out, wire_name);
    if childinfo_subscribed {
        out.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
    }
    out.extend_from_slice(b"\r\n");
}

fn status_name(item: StatusItem) -> &'static str {
    match item {
        StatusItem::Messages => "MESSAGES",
        StatusItem::UidNext => "UIDNEXT",
        StatusItem::UidValidity => "UIDVALIDITY",
        StatusItem::Unseen => "UNSEEN",
        StatusItem::Deleted => "DELETED",
        StatusItem::Size => "SIZE",
        StatusItem::HighestModSeq => "HIGHESTMODSEQ",
        StatusItem::Recent => "RECENT",
    }
}

/// `* STATUS name (MESSAGES 231 UIDNEXT 44292)`
pub fn status(out: &mut Vec<u8>, wire_name: &str, items: &[(StatusItem, u64)]) {
    out.extend_from_slice(b"* STATUS ");
    mailbox(out, wire_name);
    out.extend_from_slice(b" (");
    for (i, (item, v)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        push(out, format_args!("{} {v}", status_name(*item)));
    }
    out.extend_from_slice(b")\r\n");
}

/// `* SEARCH 2 3 6` (RFC 3501 7.2.5), with `(MODSEQ n)` when a MODSEQ key
/// was used (RFC 7162 3.1.5).
pub fn search(out: &mut Vec<u8>, nums: &[u32], modseq: Option<u64>) {
    out.extend_from_slice(b"* SEARCH");
    for n in nums {
        push(out, format_args!(" {n}"));
    }
    if let Some(m) = modseq.filter(|_| !nums.is_empty()) {
        push(out, format_args!(" (MODSEQ {m})"));
    }
    out.extend_from_slice(b"\r\n");
}

/// `* ESEARCH (TAG "a") UID MIN 2 COUNT 3` (RFC 4731 3.1, RFC 9051
/// 7.3.4); `nums` sorted. An empty result has no MIN, MAX or ALL.
pub fn esearch(
    out: &mut Vec<u8>,
    tag: &str,
    uid: bool,
    ret: &[SearchReturn],
    nums: &[u32],
    modseq: Option<u64>,
) {
    out.extend_from_slice(b"* ESEARCH (TAG ");
    string(out, tag.as_bytes());
    out.push(b')');
    if uid {
        out.extend_from_slice(b" UID");
    }
    let all = ret.is_empty();
    for r in [
        SearchReturn::Min,
        SearchReturn::Max,
        SearchReturn::All,
        SearchReturn::Count,
    ] {
        if (!all || r != SearchReturn::All) && !ret.contains(&r) {
            continue;
        }
        match r {
            SearchReturn::Min => {
                if let Some(n) = nums.first() {
                    push(out, format_args!(" MIN {n}"));
                }
            }
            SearchReturn::Max => {
                if let Some(n) = nums.last() {
                    push(out, format_args!(" MAX {n}"));
                }
            }
            SearchReturn::All => {
                if !nums.is_empty() {
                    out.extend_from_slice(b" ALL ");
                    write_set(out, nums);
                }
            }
            SearchReturn::Count => push(out, format_args!(" COUNT {}", nums.len())),
            SearchReturn::Save => {}
        }
    }
    if let Some(m) = modseq.filter(|_| !nums.is_empty()) {
        push(out, format_args!(" MODSEQ {m}"));
    }
    out.extend_from_slice(b"\r\n");
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `"17-Jul-1996 02:44:25 -0700"` (RFC 9051 9 `date-time`; the day is
/// space-padded, `date-day-fixed`).
pub fn date_time(out: &mut Vec<u8>, unix: i64, zone_minutes: i16) {
    let local = unix + i64::from(zone_minutes) * 60;
    let c = crate::util::timefmt::civil(local.max(0) as u64);
    let z = i32::from(zone_minutes);
    let sign = if z < 0 { '-' } else { '+' };
    let z = z.abs();
    push(
        out,
        format_args!(
            "\"{:>2}-{}-{:04} {:02}:{:02}:{:02} {sign}{:02}{:02}\"",
            c.day,
            MONTHS[(c.month as usize).clamp(1, 12) - 1],
            c.year,
            c.hour,
            c.min,
            c.sec,
            z / 60,
            z % 60
        ),
    );
}

// ENVELOPE and BODYSTRUCTURE are written by `crate::store::mime::imap`
// (from a parsed message) and `mime::index` (from the folder index).

/// Builds one `* n FETCH (...)` response item by item.
pub struct Fetch<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Fetch<'a> {
    pub fn begin(out: &'a mut Vec<u8>, seq: u32) -> Self {
        push(out, format_args!("* {seq} FETCH ("));
        Fetch { out, first: true }
    }

    /// Starts an item (`NAME ` follows); returns the buffer for its value.
    pub fn item(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b' ');
        }
        self.first = false;
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        self.out
    }

    pub fn uid(&mut self, uid: u32) {
        push(self.item("UID"), format_args!("{uid}"));
    }

    pub fn flags(&mut self, flags: &[String]) {
        let out = self.item("FLAGS");
        out.push(b'(');
        join(out, flags.iter().map(String::as_str));
        out.push(b')');
    }

    pub fn modseq(&mut self, m: u64) {
        push(self.item("MODSEQ"), format_args!("({m})"));
    }

    pub fn number(&mut self, name: &str, n: u64) {
        push(self.item(name), format_args!("{n}"));
    }

    pub fn end(self) {
        self.out.extend_from_slice(b")\r\n");
    }
}

/// The name a body item is answered with (RFC 9051 7.5.2): `BODY[1.2]<0>`
/// for a partial fetch (the origin only), without `.PEEK`.
pub fn section_name(
    binary: bool,
    part: &[u32],
    text: &super::command::SectionText,
    partial: Option<(u32, u32)>,
) -> String {
    use super::command::SectionText as T;
    let mut s = String::from(if binary { "BINARY[" } else { "BODY[" });
    for (i, p) in part.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        let _ = write!(s, "{p}");
    }
    let dot = if part.is_empty() { "" } else { "." };
    match text {
        T::All => {}
        T::Header => s += &format!("{dot}HEADER"),
        T::Text => s += &format!("{dot}TEXT"),
        T::Mime => s += &format!("{dot}MIME"),
        T::HeaderFields(f) | T::HeaderFieldsNot(f) => {
            let not = if matches!(text, T::HeaderFieldsNot(_)) {
                ".NOT"
            } else {
                ""
            };
            let _ = write!(s, "{dot}HEADER.FIELDS{not} (");
            for (i, name) in f.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                s += name;
            }
            s.push(')');
        }
    }
    s.push(']');
    if let Some((start, _)) = partial {
        let _ = write!(s, "<{start}>");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn status_responses_rfc9051_examples() {
        assert_eq!(
            text(|o| tagged(
                o,
                "A142",
                Status::Ok,
                Some(&Code::ReadWrite),
                "SELECT completed"
            )),
            "A142 OK [READ-WRITE] SELECT completed\r\n"
        );
        assert_eq!(
            text(|o| untagged(
                o,
                Status::Ok,
                Some(&Code::UidValidity(3857529045)),
                "UIDs valid"
            )),
            "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
        );
        assert_eq!(
            text(|o| untagged(
                o,
                Status::Ok,
                Some(&Code::PermanentFlags(vec![
                    "\\Deleted".into(),
                    "\\Seen".into()
                ])),
                "Limited"
            )),
            "* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"
        );
        // RFC 4315 3.
        assert_eq!(
            text(|o| tagged(
                o,
                "A003",
                Status::Ok,
                Some(&Code::AppendUid(38505, 3955)),
                "APPEND completed"
            )),
            "A003 OK [APPENDUID 38505 3955] APPEND completed\r\n"
        );
        assert_eq!(
            text(|o| tagged(
                o,
                "A004",
                Status::Ok,
                Some(&Code::CopyUid(
                    38505,
                    vec![304, 319, 320, 321, 322],
                    vec![3956, 3957, 3958, 3959, 3960]
                )),
                "Done"
            )),
            "A004 OK [COPYUID 38505 304,319:322 3956:3960] Done\r\n"
        );
        // RFC 7162 3.1.3.
        assert_eq!(
            text(|o| tagged(
                o,
                "d105",
                Status::Ok,
                Some(&Code::Modified(vec![7, 9])),
                "Conditional STORE failed"
            )),
            "d105 OK [MODIFIED 7,9] Conditional STORE failed\r\n"
        );
        assert_eq!(
            text(|o| untagged(o, Status::Bad, None, "[x")),
            "* BAD  [x\r\n"
        );
        assert_eq!(
            text(|o| continuation(o, "Ready for literal")),
            "+ Ready for literal\r\n"
        );
    }

    #[test]
    fn strings_quoted_or_literal() {
        assert_eq!(text(|o| string(o, b"a \"b\" \\c")), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(text(|o| string(o, b"two\r\nlines")), "{10}\r\ntwo\r\nlines");
        assert_eq!(text(|o| string(o, "Grüße".as_bytes())), "{7}\r\nGrüße");
        let mut o = Vec::new();
        string(&mut o, b"\xff");
        assert_eq!(o, b"{1}\r\n\xff");
        assert_eq!(text(|o| nstring(o, None)), "NIL");
    }

    #[test]
    fn data_responses() {
        assert_eq!(
            text(|o| list(o, false, &["\\HasNoChildren", "\\Sent"], "Sent", false)),
            "* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n"
        );
        assert_eq!(
            text(|o| list(o, false, &[], "INBOX", false)),
            "* LIST () \"/\" INBOX\r\n"
        );
        assert_eq!(
            text(|o| status(
                o,
                "blurdybloop",
                &[(StatusItem::Messages, 231), (StatusItem::UidNext, 44292)]
            )),
            "* STATUS \"blurdybloop\" (MESSAGES 231 UIDNEXT 44292)\r\n"
        );
        assert_eq!(
            text(|o| search(o, &[2, 84, 882], None)),
            "* SEARCH 2 84 882\r\n"
        );
        assert_eq!(
            text(|o| search(o, &[2, 5, 6], Some(917162500))),
            "* SEARCH 2 5 6 (MODSEQ 917162500)\r\n"
        );
        // RFC 4731 3.1 examples.
        assert_eq!(
            text(|o| esearch(
                o,
                "A282",
                false,
                &[SearchReturn::Min, SearchReturn::Count],
                &[2, 10, 11],
                None
            )),
            "* ESEARCH (TAG \"A282\") MIN 2 COUNT 3\r\n"
        );
        assert_eq!(
            text(|o| esearch(o, "A283", false, &[], &[2, 10, 11], None)),
            "* ESEARCH (TAG \"A283\") ALL 2,10:11\r\n"
        );
        assert_eq!(
            text(|o| esearch(o, "A284", true, &[SearchReturn::Min], &[], None)),
            "* ESEARCH (TAG \"A284\") UID\r\n"
        );
        assert_eq!(text(|o| write_set(o, &[1, 2, 3, 5, 7, 8])), "1:3,5,7:8");
        assert_eq!(
            text(|o| date_time(o, 837_596_665, -420)),
            "\"17-Jul-1996 02:44:25 -0700\""
        );
        assert_eq!(
            text(|o| date_time(o, 0, 0)),
            "\" 1-Jan-1970 00:00:00 +0000\""
        );
        assert_eq!(
            text(|o| id(o, &[("name", "pimail")])),
            "* ID (\"name\" \"pimail\")\r\n"
        );
    }

    #[test]
    fn fetch_with_envelope_and_bodystructure() {
        // After the RFC 9051 6.4.5 / 7.5.2 examples.
        // After the RFC 9051 6.4.5 / 7.5.2 examples; the ENVELOPE and
        // BODYSTRUCTURE come from the store's MIME writers.
        let msg = b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n\
From: Terry Gray <gray@cac.washington.edu>\n\
Subject: IMAP4rev2 WG mtg summary and minutes\n\
Message-ID: <B27397-0100000@cac.washington.edu>\n\
\n\
minutes\n";
        let s = crate::store::mime::Structure::parse(msg);
        let mut out = Vec::new();
        let mut f = Fetch::begin(&mut out, 12);
        f.flags(&["\\Seen".into()]);
        f.number("RFC822.SIZE", 4286);
        crate::store::mime::imap::envelope(&s.envelope, f.item("ENVELOPE"));
        crate::store::mime::imap::body(&s.root, false, f.item("BODY"));
        f.end();
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "* 12 FETCH (FLAGS (\\Seen) RFC822.SIZE 4286 ENVELOPE (\"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\" \
\"IMAP4rev2 WG mtg summary and minutes\" ((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) \
((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) ((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) \
NIL NIL NIL NIL \"<B27397-0100000@cac.washington.edu>\") \
BODY (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 9 1))\r\n"
        );
        use crate::read::imap::command::SectionText;
        assert_eq!(
            section_name(false, &[1, 2], &SectionText::Mime, Some((0, 10))),
            "BODY[1.2.MIME]<0>"
        );
        assert_eq!(
            section_name(
                false,
                &[],
                &SectionText::HeaderFields(vec!["DATE".into(), "FROM".into()]),
                None
            ),
            "BODY[HEADER.FIELDS (DATE FROM)]"
        );
        assert_eq!(
            section_name(true, &[3], &SectionText::All, None),
            "BINARY[3]"
        );
    }
}
