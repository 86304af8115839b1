//! `pimail sendmail`: the sendmail interface local programs use (cron,
//! mailx, git send-email, logwatch, unattended-upgrades).
//!
//! The message goes straight into the outbound queue in data_dir, written
//! durably (same format and rules as the server's, see `queue`), and the
//! running server is poked through its control socket. If the server is
//! not running, the message waits in the queue for its next start; if the
//! message cannot be queued, the exit code is 75 (EX_TEMPFAIL) and the
//! caller keeps it. Exit codes follow sysexits.h.
//!
//! Input: RFC 5322 text with LF or CRLF line ends. Without `-i`, a line
//! with a single `.` ends it (classic sendmail). `-t` takes recipients from
//! To, Cc and Bcc (RFC 5322 3.6.3) and removes Bcc. A leading mbox `From `
//! line (as `git format-patch` writes) is dropped, as sendmail does. Date,
//! Message-ID and From are added when missing (RFC 5322 3.6 requires the
//! first and the last; RFC 6409 8 lets a submission server add them), and
//! every message gets our `Received:` line.

use crate::config::cli::SendmailArgs;
use crate::config::Config;
use crate::mail::address::{parse_mailbox, Address, Destination, LocalPolicy};
use crate::send::queue::{Entry, Queue};
use std::io::{BufRead, Write};

pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOUSER: u8 = 67;
pub const EX_NOPERM: u8 = 77;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_TEMPFAIL: u8 = 75;

/// A failure with its sysexits code.
#[derive(Debug)]
pub struct SendmailError {
    pub code: u8,
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> SendmailError {
    SendmailError {
        code,
        message: message.into(),
    }
}

/// Most header bytes we keep in memory to read recipients from.
const MAX_HEADER: usize = 1024 * 1024;

/// The header section as read from the input (LF line ends), split into
/// fields (each with its continuation lines).
pub fn split_fields(header: &[u8]) -> Vec<Vec<u8>> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in header.split_inclusive(|&b| b == b'\n') {
        let cont = matches!(line.first(), Some(b' ') | Some(b'\t'));
        match fields.last_mut() {
            Some(f) if cont => f.extend_from_slice(line),
            _ => fields.push(line.to_vec()),
        }
    }
    fields
}

/// The lower-case name of a header field (`To` in `To: x`).
pub fn field_name(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == b':').unwrap_or(0);
    String::from_utf8_lossy(&field[..end])
        .trim()
        .to_ascii_lowercase()
}

/// The addresses of an address-list field body (RFC 5322 3.4): display
/// names, comments, groups and quoted strings handled; unparsable items
/// skipped.
pub fn addresses(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut item = String::new();
    let mut angle: Option<String> = None;
    let (mut in_quote, mut in_angle, mut depth, mut escaped) = (false, false, 0u32, false);
    let mut flush = |item: &mut String, angle: &mut Option<String>| {
        let a = angle.take().unwrap_or_else(|| item.trim().to_string());
        let a = a.trim();
        if !a.is_empty() && a.contains('@') || !a.is_empty() && !a.contains(' ') {
            out.push(a.to_string());
        }
        item.clear();
    };
    for c in body.chars() {
        if escaped {
            escaped = false;
            if in_angle {
                if let Some(a) = angle.as_mut() {
                    a.push(c)
                }
            } else if in_quote {
                item.push(c);
            }
            continue;
        }
        match c {
            '\\' if in_quote || depth > 0 => escaped = true,
            '"' if depth == 0 => {
                in_quote = !in_quote;
                if in_angle {
                    if let Some(a) = angle.as_mut() {
                        a.push(c)
                    }
                }
            }
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '<' if !in_quote => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if !in_quote && in_angle => in_angle = false,
            // "group: a@b, c@d;" — the group name is not an address.
            ':' if !in_quote && !in_angle => item.clear(),
            ',' | ';' if !in_quote && !in_angle => flush(&mut item, &mut angle),
            '\r' | '\n' => item.push(' '),
            _ if in_angle => {
                if let Some(a) = angle.as_mut() {
                    a.push(c)
                }
            }
            _ if in_quote => {}
            _ => item.push(c),
        }
    }
    flush(&mut item, &mut angle);
    out.retain(|a| !a.is_empty());
    out
}

/// A recipient string from the command line or a header: `user@domain`,
/// or a bare local name, which means the user (root, cron's MAILTO...).
fn recipient(s: &str, policy: &LocalPolicy, domain: &str) -> Result<(Address, bool), String> {
    let s = s.trim().trim_start_matches('<').trim_end_matches('>');
    let qualified = if s.contains('@') {
        s.to_string()
    } else {
        format!("{s}@{domain}")
    };
    let a = parse_mailbox(&qualified, true).map_err(|_| format!("bad address {s:?}"))?;
    if !s.contains('@') {
        // On a one-person system every local login's mail is the user's.
        return Ok((a, true));
    }
    match policy.classify(&a) {
        Destination::Local => Ok((a, true)),
        Destination::Remote => Ok((a, false)),
        Destination::UnknownLocal => Err(format!("<{a}>: no such local user")),
    }
}

/// Longest line RFC 5322 2.1.1 allows, CRLF not counted. Longer input
/// lines are refused (EX_DATAERR), not passed on for a receiver to break
/// or refuse later (issue 18).
pub const MAX_LINE: usize = 998;

/// Who hands the message in: ourselves (`run`, the direct path), or a
/// local user through the submission socket (`send::submit`), known by
/// the kernel's SO_PEERCRED.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    /// Its login name (`getpwuid`).
    pub login: String,
    /// Root, the service user and the user's own Unix account: they may
    /// choose any envelope sender with `-f` and send as the user's
    /// addresses, as on the direct path (they can read the config anyway).
    pub trusted: bool,
}

/// A message in the queue: what the submission log line says.
#[derive(Debug)]
pub struct Queued {
    pub id: String,
    pub sender: String,
    pub rcpts: usize,
    pub size: u64,
    /// Said to the caller on stderr (an ignored `-f`).
    pub notes: Vec<String>,
}

/// Reads the message from `input`, queues it, pokes the server. Returns
/// the queue id.
pub fn run(
    config: &Config,
    args: &SendmailArgs,
    input: &mut dyn BufRead,
) -> Result<String, SendmailError> {
    let caller = Caller {
        uid: current_uid(),
        login: String::new(),
        trusted: true,
    };
    let q = submit(config, args, input, &caller)?;
    if let Err(e) = crate::send::delivery::poke(&config.data_dir, crate::send::delivery::Wake::New)
    {
        // Queued all the same: the server delivers it when it starts.
        log::debug!(
            "server not reachable ({e}); message {} waits in the queue",
            q.id
        );
    }
    Ok(q.id)
}

/// The envelope sender of an untrusted caller: always `<login>@<hostname>`
/// (Postfix's `myorigin`, Exim's rule for untrusted users); a `-f` naming
/// anyone else is ignored, with a note. `-f` with the caller's own login
/// or address is fine.
fn untrusted_sender(
    config: &Config,
    caller: &Caller,
    asked: Option<&str>,
) -> Result<(Address, Option<String>), SendmailError> {
    let own = format!("{}@{}", caller.login, config.hostname);
    let addr = parse_mailbox(&own, true).map_err(|_| {
        fail(
            EX_NOUSER,
            format!(
                "uid {} has no usable login name for a sender address",
                caller.uid
            ),
        )
    })?;
    let note = match asked.map(|s| s.trim().trim_start_matches('<').trim_end_matches('>')) {
        None => None,
        Some(s) if s == caller.login || s.eq_ignore_ascii_case(&own) => None,
        Some(s) => Some(format!(
            "-f {s:?} ignored: only root, the pimail service and {} choose the sender; this message is from <{own}>",
            config.user.name
        )),
    };
    Ok((addr, note))
}

/// Reads the message from `input` and queues it, for `caller`.
pub fn submit(
    config: &Config,
    args: &SendmailArgs,
    input: &mut dyn BufRead,
    caller: &Caller,
) -> Result<Queued, SendmailError> {
    let policy = LocalPolicy::from_config(config);
    let mut notes = Vec::new();
    let domain = config
        .domains
        .first()
        .cloned()
        .unwrap_or_else(|| config.hostname.clone());
    let user_addr = format!(
        "{}@{domain}",
        config
            .user
            .addresses
            .first()
            .cloned()
            .unwrap_or_else(|| config.user.name.clone())
    );
    let sender = match &args.sender {
        _ if !caller.trusted => {
            let (a, note) = untrusted_sender(config, caller, args.sender.as_deref())?;
            notes.extend(note);
            Some(a)
        }
        Some(s) if s.is_empty() || s == "<>" => None,
        Some(s) => {
            let s = s.trim().trim_start_matches('<').trim_end_matches('>');
            let q = if s.contains('@') {
                s.to_string()
            } else {
                format!("{s}@{domain}")
            };
            Some(
                parse_mailbox(&q, true)
                    .map_err(|_| fail(EX_USAGE, format!("bad sender address {s:?}")))?,
            )
        }
        None => Some(
            parse_mailbox(&user_addr, true)
                .map_err(|_| fail(EX_SOFTWARE, format!("bad user address {user_addr:?}")))?,
        ),
    };
    let max = config.limits.max_message_size;

    // The header section, in memory (bounded).
    let mut header = Vec::new();
    let mut line = Vec::new();
    let mut first = true;
    let mut ended = false;
    let mut body_first: Option<Vec<u8>> = None;
    let mut lineno = 0u64;
    loop {
        line.clear();
        let n = next_line(input, &mut line, &mut lineno)?;
        if n == 0 {
            ended = true;
            break;
        }
        if !args.ignore_dots && line == b".\n" {
            ended = true;
            break;
        }
        if first {
            first = false;
            if line.starts_with(b"From ") {
                continue;
            }
        }
        if line == b"\n" {
            break;
        }
        let is_field_start = line.first().is_some_and(|&b| b != b' ' && b != b'\t');
        if is_field_start && !line.contains(&b':') {
            // Not a header line: the message has no header section
            // separator; the rest is body.
            body_first = Some(line.clone());
            break;
        }
        header.extend_from_slice(&line);
        if header.len() > MAX_HEADER {
            return Err(fail(EX_DATAERR, "header section too large"));
        }
    }
    let fields = split_fields(&header);
    if !caller.trusted {
        check_from(&fields, &policy, config, caller)?;
    }
    let mut rcpts: Vec<(Address, bool)> = Vec::new();
    let mut bad = Vec::new();
    let mut add = |s: &str, rcpts: &mut Vec<(Address, bool)>| match recipient(s, &policy, &domain) {
        Ok(r) => rcpts.push(r),
        Err(e) => bad.push(e),
    };
    for r in &args.recipients {
        for a in addresses(r) {
            add(&a, &mut rcpts);
        }
    }
    if args.from_headers {
        for f in &fields {
            if matches!(field_name(f).as_str(), "to" | "cc" | "bcc") {
                let text = String::from_utf8_lossy(f);
                let body = text.split_once(':').map(|x| x.1).unwrap_or("");
                for a in addresses(body) {
                    add(&a, &mut rcpts);
                }
            }
        }
    }
    if let Some(e) = bad.first() {
        return Err(fail(EX_NOUSER, e.clone()));
    }
    // The socket's callers are bounded like an SMTP client (RFC 5321
    // 4.5.3.1.8 lets a server refuse beyond its limit), `-t` included.
    let max_rcpts = config.limits.max_recipients;
    if !caller.trusted && rcpts.len() > max_rcpts {
        return Err(fail(
            EX_DATAERR,
            format!("more than {max_rcpts} recipients (limits.max_recipients)"),
        ));
    }
    if rcpts.is_empty() {
        return Err(fail(
            EX_USAGE,
            "no recipients (give them as arguments, or use -t to read To/Cc/Bcc)",
        ));
    }
    let has = |name: &str| fields.iter().any(|f| field_name(f) == name);
    let now = crate::util::timefmt::unix_now();
    let id = crate::util::rt::new_id();
    let mut added = String::new();
    added += &format!(
        "Received: by {} (pimail sendmail, uid {})\n\tid {id}; {}\n",
        config.hostname,
        caller.uid,
        crate::util::timefmt::rfc5322(now)
    );
    if !has("date") {
        added += &format!("Date: {}\n", crate::util::timefmt::rfc5322(now));
    }
    if !has("message-id") {
        added += &format!("Message-ID: <{id}@{}>\n", config.hostname);
    }
    if !has("from") {
        let from = sender
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or(user_addr.clone());
        match &args.full_name {
            Some(n) => added += &format!("From: \"{}\" <{from}>\n", n.replace(['"', '\\'], "")),
            None => added += &format!("From: {from}\n"),
        }
    }

    // RFC 6531: an address beyond ASCII in the envelope needs SMTPUTF8.
    let utf8 = rcpts.iter().any(|(a, _)| !a.to_string().is_ascii())
        || sender.as_ref().is_some_and(|a| !a.to_string().is_ascii());
    let mut entry = Entry::new(&id, sender, now, 0);
    entry.smtputf8 = utf8;
    for (a, local) in rcpts {
        entry.add_rcpt(a, local);
    }
    let queue = Queue::new(&config.data_dir);
    queue
        .ensure_dir()
        .map_err(|e| fail(EX_TEMPFAIL, format!("cannot queue the message: {e}")))?;
    let mut st = BodyState {
        too_big: false,
        read_err: None,
    };
    let r = queue.enqueue_with(&mut entry, |w| {
        let mut b = Body {
            w,
            q: crate::store::mbox::Quoter::for_received_mail(),
            out: Vec::with_capacity(64 * 1024),
            size: 0,
        };
        b.emit(added.as_bytes())?;
        for f in &fields {
            if args.from_headers && field_name(f) == "bcc" {
                continue;
            }
            b.emit(f)?;
        }
        if let Some(l) = &body_first {
            // No blank line came: the header section ends here.
            b.emit(b"\n")?;
            b.emit(l)?;
        } else {
            b.emit(b"\n")?;
        }
        let mut last_lf = true;
        let mut line = Vec::new();
        if !ended {
            loop {
                line.clear();
                match next_line(input, &mut line, &mut lineno) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        st.read_err = Some(e);
                        return Err(std::io::Error::other("cannot read the input"));
                    }
                }
                if !args.ignore_dots && line == b".\n" {
                    break;
                }
                last_lf = line.ends_with(b"\n");
                b.emit(&line)?;
                if b.size > max {
                    st.too_big = true;
                    return Err(std::io::Error::other("message too big"));
                }
            }
        }
        if !last_lf {
            b.emit(b"\n")?;
        }
        b.finish()
    });
    if let Some(e) = st.read_err {
        return Err(e);
    }
    if st.too_big {
        return Err(fail(
            EX_DATAERR,
            format!("message larger than limits.max_message_size ({max} bytes)"),
        ));
    }
    r.map_err(|e| fail(EX_TEMPFAIL, format!("cannot queue the message: {e}")))?;
    // Replies from these people are never greylisted (docs/spam.md).
    let remote: Vec<String> = entry
        .rcpts
        .iter()
        .filter(|r| !r.local)
        .map(|r| r.addr.to_string())
        .collect();
    crate::trust::known::record_correspondents(&config.data_dir, &remote);
    Ok(Queued {
        sender: entry.sender(),
        rcpts: entry.rcpts.len(),
        size: entry.size,
        id,
        notes,
    })
}

/// An untrusted caller may not write the user's addresses into From or
/// Sender: the queue DKIM-signs mail from the user's domains, so that
/// would be a forgery with our signature. Its own `<login>@<hostname>` is
/// fine (where the hostname is one of the domains).
fn check_from(
    fields: &[Vec<u8>],
    policy: &LocalPolicy,
    config: &Config,
    caller: &Caller,
) -> Result<(), SendmailError> {
    let own = format!("{}@{}", caller.login, config.hostname);
    for f in fields {
        let name = field_name(f);
        if !matches!(name.as_str(), "from" | "sender") {
            continue;
        }
        let text = String::from_utf8_lossy(f);
        let body = text.split_once(':').map(|x| x.1).unwrap_or("");
        for a in addresses(body) {
            let Ok(addr) = parse_mailbox(&a, true) else {
                continue;
            };
            if policy.classify(&addr) != Destination::Remote
                && !addr.to_string().eq_ignore_ascii_case(&own)
            {
                return Err(fail(
                    EX_NOPERM,
                    format!(
                        "{name}: <{addr}> is the user's address: only root, the pimail service and {} may send as it; you (uid {}) send as <{own}>",
                        config.user.name, caller.uid
                    ),
                ));
            }
        }
    }
    Ok(())
}

struct BodyState {
    too_big: bool,
    read_err: Option<SendmailError>,
}

/// Writes the message mboxrd-quoted into the queue file.
struct Body<'a> {
    w: &'a mut dyn Write,
    q: crate::store::mbox::Quoter,
    out: Vec<u8>,
    size: u64,
}

impl Body<'_> {
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.q.feed(bytes, &mut self.out);
        self.size += self.out.len() as u64;
        self.w.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<u64> {
        self.q.finish(&mut self.out);
        self.size += self.out.len() as u64;
        self.w.write_all(&self.out)?;
        Ok(self.size)
    }
}

/// The next input line into `line` (LF end, CRLF normalised), counting
/// `lineno`. A line over [`MAX_LINE`] octets is EX_DATAERR; at most a
/// line's worth is read, so a huge line costs no memory.
fn next_line(
    input: &mut dyn BufRead,
    line: &mut Vec<u8>,
    lineno: &mut u64,
) -> Result<usize, SendmailError> {
    // Room for the text, CR, LF, and one more to see "too long".
    let mut take = std::io::Read::take(input, MAX_LINE as u64 + 3);
    let n = take
        .read_until(b'\n', line)
        .map_err(|e| fail(EX_TEMPFAIL, format!("cannot read the message: {e}")))?;
    if n == 0 {
        return Ok(0);
    }
    *lineno += 1;
    normalize(line);
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    if text.len() > MAX_LINE {
        return Err(fail(
            EX_DATAERR,
            format!(
                "line {lineno} is longer than {MAX_LINE} octets, the limit of RFC 5322 2.1.1; \
                 wrap it, or send the text base64 or quoted-printable encoded (e.g. with mutt or mpack)"
            ),
        ));
    }
    Ok(n)
}

/// CRLF -> LF (programs on the same host may send either).
fn normalize(line: &mut Vec<u8>) {
    if line.ends_with(b"\r\n") {
        line.truncate(line.len() - 2);
        line.push(b'\n');
    }
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        assert_eq!(
            addresses(" \"Doe, John\" <john@example.com>, jane@example.org (Jane), undisclosed-recipients:;"),
            vec!["john@example.com", "jane@example.org"]
        );
        assert_eq!(
            addresses("team: a@x.example, B <b@y.example>;, c@z.example"),
            vec!["a@x.example", "b@y.example", "c@z.example"]
        );
        assert_eq!(addresses("root"), vec!["root"]);
        assert_eq!(addresses(""), Vec::<String>::new());
        assert_eq!(
            addresses("<\"odd user\"@x.example>"),
            vec!["\"odd user\"@x.example"]
        );
    }

    #[test]
    fn fields_keep_continuations() {
        let f = split_fields(b"To: a@x,\n b@y\nSubject: s\nBcc: c@z\n");
        assert_eq!(f.len(), 3);
        assert_eq!(f[0], b"To: a@x,\n b@y\n");
        assert_eq!(field_name(&f[2]), "bcc");
    }
}
