//! The outbound SMTP dialogue, sans-I/O (RFC 5321 3.3, 4.1; RFC 2920
//! PIPELINING; RFC 1870 SIZE; RFC 6152 8BITMIME; RFC 6531 SMTPUTF8; RFC
//! 3207 STARTTLS; RFC 4954 AUTH PLAIN).
//!
//! Pieces the async driver (`delivery::conn`) strings together: a reply
//! reader that takes bytes and gives whole (multi-line) replies, the EHLO
//! capability parser, a [`Transaction`] state machine that says which
//! commands to send and turns the replies into one result per recipient,
//! and a streaming [`BodyEncoder`] from our queue files (mboxrd-quoted, LF)
//! to the wire (CRLF, dot-stuffed).

/// A reply from the server: code and text lines (without the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl ServerReply {
    pub fn new(code: u16, text: &str) -> ServerReply {
        ServerReply {
            code,
            lines: vec![text.to_string()],
        }
    }

    pub fn ok(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn permanent(&self) -> bool {
        self.code >= 500
    }

    /// One line for logs, queue files and bounces: `550 5.1.1 No such user`.
    pub fn one_line(&self) -> String {
        let text: Vec<&str> = self.lines.iter().map(|s| s.trim()).collect();
        crate::send::queue::one_line(&format!("{} {}", self.code, text.join(" ")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Not `NNN-text` / `NNN text`, or the code changed mid-reply.
    Syntax(String),
    /// A reply line or a whole reply beyond any sane length.
    TooLong,
}

/// Longest reply line we take (RFC 5321 4.5.3.1.5 says 512; be generous).
const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one reply (an EHLO reply has a dozen).
const MAX_REPLY_LINES: usize = 100;

/// Collects reply lines from the bytes the server sends.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    lines: Vec<String>,
    code: Option<u16>,
}

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered that are not yet part of a reply (the TLS upgrade
    /// must not find any: RFC 3207 5, the CVE-2011-0411 class).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete reply, if the buffer holds one.
    pub fn next_reply(&mut self) -> Result<Option<ServerReply>, ReplyError> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::TooLong);
                }
                return Ok(None);
            };
            let raw: Vec<u8> = self.buf.drain(..=nl).collect();
            if raw.len() > MAX_REPLY_LINE || self.lines.len() >= MAX_REPLY_LINES {
                return Err(ReplyError::TooLong);
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let b = line.as_bytes();
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| ReplyError::Syntax(line.to_string()))?;
            if self.code.is_some_and(|c| c != code) {
                return Err(ReplyError::Syntax(line.to_string()));
            }
            self.code = Some(code);
            let more = b.get(3) == Some(&b'-');
            if b.len() > 3 && !more && b[3] != b' ' {
                return Err(ReplyError::Syntax(line.to_string()));
            }
            self.lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                self.code = None;
                return Ok(Some(ServerReply {
                    code,
                    lines: std::mem::take(&mut self.lines),
                }));
            }
        }
    }
}

/// What the server's EHLO reply offers (RFC 5321 4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    pub esmtp: bool,
    pub starttls: bool,
    pub pipelining: bool,
    /// SIZE's limit; `Some(0)` is "no fixed limit".
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub auth_plain: bool,
}

impl Caps {
    pub fn from_ehlo(r: &ServerReply) -> Caps {
        let mut c = Caps {
            esmtp: true,
            ..Caps::default()
        };
        // The first line is the greeting ("mx.example.com Hello"), not a
        // keyword.
        for line in r.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "STARTTLS" => c.starttls = true,
                "PIPELINING" => c.pipelining = true,
                "8BITMIME" => c.eightbitmime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => c.auth_plain = words.any(|m| m.eq_ignore_ascii_case("PLAIN")),
                _ => {}
            }
        }
        c
    }
}

/// One message's envelope over one connection, as a state machine: feed
/// it each reply; it says what to send next; at the end it gives one reply
/// per recipient (the one that decides its fate).
#[derive(Debug)]
pub struct Transaction {
    commands: Vec<String>,
    pipelining: bool,
    rcpts: usize,
    /// Replies to MAIL, each RCPT and DATA, in order.
    replies: Vec<ServerReply>,
    /// Commands sent so far.
    sent: usize,
}

/// What to do after a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these command lines (with CRLF added), then read a reply.
    Send(Vec<String>),
    /// Read the next reply (pipelined commands already sent).
    Read,
    /// `354`: send the body, then `.`, and pass the final reply to
    /// [`Transaction::finish`].
    Body,
    /// The transaction ended without data: one reply per recipient. The
    /// server may hold a half-open transaction: send RSET before reuse.
    Done(Vec<ServerReply>),
    /// The server said 354 although it accepted no recipient (against RFC
    /// 2920 3.1): end the data at once with `.`, read that reply, and the
    /// recipients keep these replies.
    EndEmpty(Vec<ServerReply>),
}

/// Envelope parameters for MAIL FROM.
#[derive(Debug, Clone, Default)]
pub struct MailParams {
    pub size: u64,
    pub smtputf8: bool,
}

impl Transaction {
    pub fn new(from: &str, rcpts: &[String], caps: &Caps, p: &MailParams) -> Transaction {
        let mut mail = format!("MAIL FROM:<{from}>");
        if caps.size.is_some() {
            mail += &format!(" SIZE={}", p.size);
        }
        if caps.eightbitmime {
            // Declared whenever offered: harmless for 7-bit messages and
            // right for 8-bit ones, without reading the body twice.
            mail += " BODY=8BITMIME";
        }
        if p.smtputf8 && caps.smtputf8 {
            mail += " SMTPUTF8";
        }
        let mut commands = vec![mail];
        commands.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
        commands.push("DATA".into());
        Transaction {
            commands,
            pipelining: caps.pipelining,
            rcpts: rcpts.len(),
            replies: Vec::new(),
            sent: 0,
        }
    }

    /// The first commands: everything when pipelining (RFC 2920 3.1: DATA
    /// may end the group), else MAIL alone.
    pub fn start(&mut self) -> Vec<String> {
        let n = if self.pipelining {
            self.commands.len()
        } else {
            1
        };
        self.sent = n;
        self.commands[..n].to_vec()
    }

    fn all(&self, r: &ServerReply) -> Vec<ServerReply> {
        vec![r.clone(); self.rcpts]
    }

    pub fn reply(&mut self, r: ServerReply) -> Next {
        self.replies.push(r);
        let got = self.replies.len();
        if got < self.sent {
            return Next::Read;
        }
        let mail = &self.replies[0];
        if !mail.ok() && (!self.pipelining || got == self.commands.len()) {
            return Next::Done(self.all(mail));
        }
        let data_idx = self.rcpts + 1;
        if got <= self.rcpts {
            // Not pipelining: the next RCPT.
            self.sent += 1;
            return Next::Send(vec![self.commands[got].clone()]);
        }
        let rcpt_replies = &self.replies[1..=self.rcpts];
        let accepted = rcpt_replies.iter().any(|r| r.ok());
        if got == data_idx {
            // Not pipelining, all RCPTs answered.
            if !accepted {
                return Next::Done(rcpt_replies.to_vec());
            }
            self.sent += 1;
            return Next::Send(vec!["DATA".into()]);
        }
        let data = &self.replies[data_idx];
        if data.code == 354 {
            if accepted {
                return Next::Body;
            }
            return Next::EndEmpty(rcpt_replies.to_vec());
        }
        // DATA refused: the accepted recipients share the DATA reply.
        let out = rcpt_replies
            .iter()
            .map(|r| if r.ok() { data.clone() } else { r.clone() })
            .collect();
        Next::Done(out)
    }

    /// The reply after the body's final `.`: recipients accepted at RCPT
    /// get it, the others keep their RCPT reply.
    pub fn finish(&self, r: &ServerReply) -> Vec<ServerReply> {
        self.replies[1..=self.rcpts]
            .iter()
            .map(|x| if x.ok() { r.clone() } else { x.clone() })
            .collect()
    }
}

/// Streams a queue file (mboxrd-quoted, LF line ends) to the SMTP wire
/// form: quoting undone, CRLF line ends, leading dots doubled (RFC 5321
/// 4.5.2). Feed chunks of any size; call `finish` at the end.
#[derive(Debug, Default)]
pub struct BodyEncoder {
    /// Bytes at the start of the current line that may be `>+From `.
    pending: Vec<u8>,
    mid_line: bool,
    /// Anything written at all, and did it end with a line end?
    any: bool,
    ended_line: bool,
}

impl BodyEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.any = true;
            if !self.mid_line {
                if self.pending.is_empty() && b != b'>' {
                    // The common case: decide on the first byte.
                    self.mid_line = true;
                    if b == b'.' {
                        out.push(b'.');
                    }
                    self.byte(b, out);
                    continue;
                }
                self.pending.push(b);
                let n = self.pending.iter().take_while(|&&c| c == b'>').count();
                let rest = &self.pending[n..];
                let from = b"From ";
                if rest.len() < from.len() && from.starts_with(rest) {
                    continue;
                }
                let quoted = rest == from;
                let p = std::mem::take(&mut self.pending);
                let unq = if quoted { &p[1..] } else { &p[..] };
                self.mid_line = true;
                for &c in unq {
                    self.byte(c, out);
                }
                continue;
            }
            self.byte(b, out);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if b == b'\n' {
            out.extend_from_slice(b"\r\n");
            self.mid_line = false;
            self.ended_line = true;
        } else {
            out.push(b);
            self.ended_line = false;
        }
    }

    /// Flushes a pending line start and writes the final `.`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let p = std::mem::take(&mut self.pending);
        for &c in &p {
            self.byte(c, out);
        }
        if self.any && !self.ended_line {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

use crate::util::base64::encode as base64;

/// The AUTH PLAIN command (RFC 4616): authzid empty.
pub fn auth_plain(user: &str, password: &str) -> String {
    let mut v = vec![0u8];
    v.extend_from_slice(user.as_bytes());
    v.push(0);
    v.extend_from_slice(password.as_bytes());
    format!("AUTH PLAIN {}", base64(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16) -> ServerReply {
        ServerReply::new(code, "x")
    }

    #[test]
    fn replies_split_anywhere() {
        let wire = b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n220 ready\n";
        for cut in 0..wire.len() {
            let mut rr = ReplyReader::new();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                rr.feed(part);
                while let Some(x) = rr.next_reply().unwrap() {
                    got.push(x);
                }
            }
            assert_eq!(got.len(), 2, "cut {cut}");
            assert_eq!(got[0].lines.len(), 4);
            assert_eq!(got[1].one_line(), "220 ready");
            let caps = Caps::from_ehlo(&got[0]);
            assert!(caps.pipelining && caps.starttls && caps.size == Some(1000));
            assert!(!caps.eightbitmime && !caps.auth_plain);
        }
        let mut rr = ReplyReader::new();
        rr.feed(b"250-a\r\n251 b\r\n");
        assert!(rr.next_reply().is_err(), "code changed mid-reply");
        let mut rr = ReplyReader::new();
        rr.feed(b"hello\r\n");
        assert!(rr.next_reply().is_err());
        let mut rr = ReplyReader::new();
        rr.feed(&[b'2'; 3000]);
        assert_eq!(rr.next_reply(), Err(ReplyError::TooLong));
    }

    #[test]
    fn pipelined_transaction_with_mixed_recipients() {
        let caps = Caps {
            esmtp: true,
            pipelining: true,
            size: Some(0),
            eightbitmime: true,
            ..Caps::default()
        };
        let rc = vec!["a@x".to_string(), "b@x".to_string(), "c@x".to_string()];
        let mut t = Transaction::new(
            "me@y",
            &rc,
            &caps,
            &MailParams {
                size: 10,
                smtputf8: false,
            },
        );
        assert_eq!(
            t.start(),
            vec![
                "MAIL FROM:<me@y> SIZE=10 BODY=8BITMIME",
                "RCPT TO:<a@x>",
                "RCPT TO:<b@x>",
                "RCPT TO:<c@x>",
                "DATA"
            ]
        );
        for code in [250, 250, 550, 451] {
            assert_eq!(t.reply(r(code)), Next::Read);
        }
        assert_eq!(t.reply(r(354)), Next::Body);
        let codes: Vec<u16> = t.finish(&r(250)).iter().map(|x| x.code).collect();
        assert_eq!(codes, vec![250, 550, 451]);
    }

    #[test]
    fn stepwise_transaction_and_failures() {
        let caps = Caps::default();
        let rc = vec!["a@x".to_string(), "b@x".to_string()];
        let p = MailParams::default();
        let mut t = Transaction::new("", &rc, &caps, &p);
        assert_eq!(t.start(), vec!["MAIL FROM:<>"]);
        assert_eq!(t.reply(r(250)), Next::Send(vec!["RCPT TO:<a@x>".into()]));
        assert_eq!(t.reply(r(550)), Next::Send(vec!["RCPT TO:<b@x>".into()]));
        assert_eq!(t.reply(r(250)), Next::Send(vec!["DATA".into()]));
        let Next::Done(res) = t.reply(r(452)) else {
            panic!()
        };
        assert_eq!(
            res.iter().map(|x| x.code).collect::<Vec<_>>(),
            vec![550, 452]
        );
        // MAIL refused: everyone gets that reply.
        let mut t = Transaction::new("me@y", &rc, &caps, &p);
        t.start();
        let Next::Done(res) = t.reply(r(421)) else {
            panic!()
        };
        assert!(res.iter().all(|x| x.code == 421));
        // No recipient accepted: no DATA.
        let mut t = Transaction::new("me@y", &rc, &caps, &p);
        t.start();
        t.reply(r(250));
        t.reply(r(550));
        let Next::Done(res) = t.reply(r(551)) else {
            panic!()
        };
        assert_eq!(
            res.iter().map(|x| x.code).collect::<Vec<_>>(),
            vec![550, 551]
        );
        // Pipelined with MAIL refused: all replies are read first.
        let caps = Caps {
            pipelining: true,
            ..Caps::default()
        };
        let mut t = Transaction::new("me@y", &rc, &caps, &p);
        t.start();
        for code in [553, 503, 503] {
            assert_eq!(t.reply(r(code)), Next::Read);
        }
        let Next::Done(res) = t.reply(r(503)) else {
            panic!()
        };
        assert!(res.iter().all(|x| x.code == 553));
        // Pipelined, no recipient accepted, yet 354: end it empty.
        let mut t = Transaction::new("me@y", &rc, &caps, &p);
        t.start();
        for code in [250, 550, 551] {
            assert_eq!(t.reply(r(code)), Next::Read);
        }
        let Next::EndEmpty(res) = t.reply(r(354)) else {
            panic!()
        };
        assert_eq!(
            res.iter().map(|x| x.code).collect::<Vec<_>>(),
            vec![550, 551]
        );
    }

    fn encode(chunks: &[&[u8]]) -> Vec<u8> {
        let mut e = BodyEncoder::new();
        let mut out = Vec::new();
        for c in chunks {
            e.feed(c, &mut out);
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn body_encoding_at_every_split() {
        let input: &[u8] = b"Subject: x\n\n.dot\n>From a\n>>From b\n>Fromage\nFrom\n..\nlast";
        let want: &[u8] =
            b"Subject: x\r\n\r\n..dot\r\nFrom a\r\n>From b\r\n>Fromage\r\nFrom\r\n...\r\nlast\r\n.\r\n";
        for cut in 0..input.len() {
            assert_eq!(encode(&[&input[..cut], &input[cut..]]), want, "cut {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(encode(&bytes), want);
        assert_eq!(encode(&[b"a\n"]), b"a\r\n.\r\n");
        assert_eq!(encode(&[b""]), b".\r\n");
        assert_eq!(encode(&[b">Fro"]), b">Fro\r\n.\r\n");
    }

    #[test]
    fn auth_plain_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(
            auth_plain("tim", "tanstaaftanstaaf"),
            "AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
    }
}
