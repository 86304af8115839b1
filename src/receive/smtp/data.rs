//! The DATA decoder (RFC 5321 4.1.1.4, 4.5.2): bytes after `354` in,
//! message bytes with LF line ends out, until `<CR><LF>.<CR><LF>`.
//!
//! All of DATA's safety is in this one small state machine:
//! - only CRLF.CRLF ends the data; a bare LF or CR anywhere marks the
//!   message as refused (SMTP smuggling, CVE-2023-51764 class) but the
//!   decoder keeps looking for the real end so the session stays in sync;
//! - leading dots are removed (transparency, 4.5.2);
//! - lines over 1000 octets and messages over the size limit are marked
//!   while reading, and their bytes are no longer emitted, so a flood
//!   never reaches the disk;
//! - a NUL octet marks the message as refused: RFC 5322 2.3 and 3.5 allow
//!   no NUL in a message, and neither does 8BITMIME (RFC 6152 3), and
//!   programs reading the mbox may take it for the end of a string.
//!
//! - a client that keeps sending far past the size limit (an endless
//!   DATA) is reported as [`DataDecoder::runaway`], so the connection can
//!   be closed instead of reading forever.
//!
//! Output uses LF line ends: it is what the mbox stores, and it is lossless
//! because a message with a bare CR or LF is never accepted.
//!
//! One exception, [`DataDecoder::accepting_bare_lf`]: after AUTH on
//! submission (never on port 25, loopback included) a bare LF is a line
//! end, as for Postfix's `smtpd_forbid_bare_newline_exclusions`: home
//! devices and scripts send LF, and an authenticated user can only smuggle
//! mail to themselves. A bare CR is still refused.

/// RFC 5321 4.5.3.1.6: text lines, including CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    BareLf,
    BareCr,
    LineTooLong,
    TooBig,
    Nul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    /// Line began with '.'.
    Dot,
    /// Saw ".\r" at a line start.
    DotCr,
    InLine,
    /// Saw '\r' inside a line.
    Cr,
}

#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    line_len: usize,
    /// Octets of the message as received (CRLF counted as two), for SIZE.
    size: u64,
    /// Every octet fed, whatever it was: the runaway measure (bare CRs or
    /// LFs do not count towards `size`).
    received: u64,
    max_size: u64,
    error: Option<DataError>,
    /// A bare LF ends a line (and `.` LF ends the data); see the module doc.
    bare_lf_ends_line: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; the end was not seen yet.
    NeedMore,
    /// The end marker was seen after `consumed` bytes of this input; the
    /// rest belongs to the next command.
    Done { consumed: usize },
}

impl DataDecoder {
    pub fn new(max_size: u64) -> Self {
        DataDecoder {
            state: State::LineStart,
            line_len: 0,
            size: 0,
            received: 0,
            max_size,
            error: None,
            bare_lf_ends_line: false,
        }
    }

    /// A decoder for authenticated submission: bare LF is normalised to a
    /// line end instead of refusing the message.
    pub fn accepting_bare_lf(max_size: u64) -> Self {
        DataDecoder {
            bare_lf_ends_line: true,
            ..DataDecoder::new(max_size)
        }
    }

    /// The first problem seen, if any: the message must then be refused.
    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    /// Octets received so far (with CRLF), the size SIZE compares against.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True once far more than the size limit arrived without the end of
    /// DATA (twice the limit plus 1 MiB): the client is not going to stop,
    /// and reading on would only tie up the connection.
    pub fn runaway(&self) -> bool {
        self.received > self.max_size.saturating_mul(2).saturating_add(1 << 20)
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Decodes `input`, appending message bytes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::InLine {
                // Fast path: the run of ordinary bytes up to the next CR or
                // LF is copied in one go (the bulk of any message).
                let rest = &input[i..];
                let k = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(rest.len());
                if k > 0 {
                    self.plain_run(&rest[..k], out);
                    i += k;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            // The dot added for transparency is not part of the line's
            // length (RFC 5321 4.5.3.1.6): a stuffed 998-octet line is fine.
            if !(self.state == State::LineStart && b == b'.') {
                self.line_len += 1;
            }
            if self.line_len > MAX_TEXT_LINE {
                self.fail(DataError::LineTooLong);
            }
            match (self.state, b) {
                (State::LineStart, b'.') => self.state = State::Dot,
                (State::Dot, b'\n') if self.bare_lf_ends_line => {
                    self.state = State::LineStart;
                    self.line_len = 0;
                    self.received += i as u64;
                    return Progress::Done { consumed: i };
                }
                (State::LineStart, b'\n') if self.bare_lf_ends_line => self.lf_line_end(out),
                (State::Dot, b'\r') => self.state = State::DotCr,
                (State::DotCr, b'\n') => {
                    self.state = State::LineStart;
                    self.line_len = 0;
                    self.received += i as u64;
                    return Progress::Done { consumed: i };
                }
                (State::DotCr, _) => {
                    // ".\rX": a bare CR after a leading dot.
                    self.fail(DataError::BareCr);
                    self.state = State::InLine;
                    self.emit(b".\r", out);
                    self.byte_in_line(b, out);
                }
                (State::LineStart, b'\r') => self.state = State::Cr,
                (State::LineStart | State::Dot | State::InLine, _) => {
                    // The leading dot of a stuffed line is dropped (4.5.2).
                    self.state = State::InLine;
                    self.byte_in_line(b, out);
                }
                (State::Cr, b'\n') => {
                    self.size += 2;
                    self.emit(b"\n", out);
                    self.state = State::LineStart;
                    self.line_len = 0;
                }
                (State::Cr, _) => {
                    self.fail(DataError::BareCr);
                    self.state = State::InLine;
                    self.byte_in_line(b, out);
                }
            }
        }
        self.received += input.len() as u64;
        Progress::NeedMore
    }

    /// What `byte_in_line` does for each byte of `run` (none a CR or LF),
    /// at once: the first byte that breaks the line or size limit fails,
    /// and only the bytes before it are emitted.
    fn plain_run(&mut self, run: &[u8], out: &mut Vec<u8>) {
        let k = run.len();
        // Index of the first byte over each limit (byte j makes the line
        // `line_len + j + 1` long and the message `size + j + 1`).
        let too_long = (self.line_len + k > MAX_TEXT_LINE)
            .then(|| MAX_TEXT_LINE.saturating_sub(self.line_len));
        let too_big = (self.size + k as u64 > self.max_size)
            .then(|| self.max_size.saturating_sub(self.size) as usize);
        let first = match (too_long, too_big) {
            // The line check comes first for the same byte.
            (Some(l), Some(b)) if b < l => Some((b, DataError::TooBig)),
            (Some(l), _) => Some((l, DataError::LineTooLong)),
            (None, Some(b)) => Some((b, DataError::TooBig)),
            (None, None) => None,
        };
        self.line_len += k;
        self.size += k as u64;
        let first = match (first, memchr::memchr(0, run)) {
            (Some((j, _)), Some(n)) if n < j => Some((n, DataError::Nul)),
            (None, Some(n)) => Some((n, DataError::Nul)),
            (f, _) => f,
        };
        if self.error.is_none() {
            out.extend_from_slice(&run[..first.map_or(k, |(j, _)| j)]);
        }
        if let Some((_, e)) = first {
            self.fail(e);
        }
    }

    /// A byte inside a line (never the LF of a CRLF).
    fn byte_in_line(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' if self.bare_lf_ends_line => self.lf_line_end(out),
            b'\n' => {
                // A bare LF is not a line end: "\n.\r\n" must not end DATA.
                self.fail(DataError::BareLf);
                self.state = State::InLine;
            }
            0 => {
                self.size += 1;
                self.fail(DataError::Nul);
            }
            _ => {
                self.size += 1;
                self.emit(&[b], out);
            }
        }
    }

    /// A bare LF taken as CRLF (counted as two octets for SIZE).
    fn lf_line_end(&mut self, out: &mut Vec<u8>) {
        self.size += 2;
        self.emit(b"\n", out);
        self.state = State::LineStart;
        self.line_len = 0;
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.size > self.max_size {
            self.fail(DataError::TooBig);
        }
        if self.error.is_none() {
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_auth_bare_lf_is_a_line_end_at_every_split() {
        let input = b"Subject: x\n\nline\r\nbare\n..dot\n.\nNEXT";
        for chunk in 1..input.len() {
            let mut d = DataDecoder::accepting_bare_lf(1 << 20);
            let mut out = Vec::new();
            let mut done = None;
            let mut pos = 0;
            for piece in input.chunks(chunk) {
                if let Progress::Done { consumed } = d.feed(piece, &mut out) {
                    done = Some(pos + consumed);
                    break;
                }
                pos += piece.len();
            }
            assert_eq!(d.error(), None);
            assert_eq!(out, b"Subject: x\n\nline\nbare\n.dot\n", "chunk {chunk}");
            assert_eq!(done, Some(input.len() - 4));
        }
        // A bare CR is still refused.
        let mut d = DataDecoder::accepting_bare_lf(1 << 20);
        d.feed(b"a\rb\r\n.\r\n", &mut Vec::new());
        assert_eq!(d.error(), Some(DataError::BareCr));
    }

    /// Runs the decoder over `input` split into pieces of `chunk` bytes.
    fn decode(input: &[u8], chunk: usize, max: u64) -> (Vec<u8>, Option<DataError>, Option<usize>) {
        let mut d = DataDecoder::new(max);
        let mut out = Vec::new();
        let mut pos = 0;
        for piece in input.chunks(chunk.max(1)) {
            if let Progress::Done { consumed } = d.feed(piece, &mut out) {
                return (out, d.error(), Some(pos + consumed));
            }
            pos += piece.len();
        }
        (out, d.error(), None)
    }

    fn all_splits(input: &[u8], max: u64) -> (Vec<u8>, Option<DataError>, Option<usize>) {
        let whole = decode(input, input.len(), max);
        for chunk in 1..input.len() {
            assert_eq!(decode(input, chunk, max), whole, "chunk {chunk}");
        }
        whole
    }

    #[test]
    fn nul_refuses_the_message_and_the_end_is_still_found() {
        for input in [
            &b"Subject: x\r\n\r\nab\0cd\r\n.\r\nQUIT\r\n"[..],
            b"\0\r\n.\r\nQUIT\r\n",
            b"x\r\n.\0\r\n.\r\nQUIT\r\n",
        ] {
            let (out, err, end) = all_splits(input, 1000);
            assert_eq!(err, Some(DataError::Nul), "{input:?}");
            assert!(!out.contains(&0), "{out:?}");
            assert_eq!(end, Some(input.len() - 6), "{input:?}");
        }
    }

    #[test]
    fn plain_message_and_pipelined_rest() {
        let input = b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, err, end) = all_splits(input, 1000);
        assert_eq!(out, b"Subject: hi\n\nbody\n");
        assert_eq!(err, None);
        assert_eq!(end, Some(input.len() - 6));
    }

    #[test]
    fn dot_unstuffing() {
        let (out, err, _) = all_splits(b"..leading\r\n...\r\n.x\r\nend.\r\n.\r\n", 1000);
        assert_eq!(out, b".leading\n..\nx\nend.\n");
        assert_eq!(err, None);
    }

    #[test]
    fn empty_message() {
        assert_eq!(all_splits(b".\r\n", 10), (vec![], None, Some(3)));
    }

    #[test]
    fn smuggling_attempts_do_not_end_data() {
        // Each would end DATA on a lax server and smuggle a second message.
        for sep in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\r\n.\r\r\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nx".to_vec();
            input.extend_from_slice(sep);
            input.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\n");
            let before_end = input.len();
            input.extend_from_slice(b"\r\n.\r\n");
            let (_, err, end) = all_splits(&input, 10_000);
            assert!(
                matches!(err, Some(DataError::BareLf | DataError::BareCr)),
                "{sep:?}: {err:?}"
            );
            assert_eq!(end, Some(before_end + 5), "{sep:?}");
        }
    }

    #[test]
    fn bare_cr_and_lf() {
        assert_eq!(all_splits(b"a\rb\r\n.\r\n", 100).1, Some(DataError::BareCr));
        assert_eq!(all_splits(b"a\nb\r\n.\r\n", 100).1, Some(DataError::BareLf));
        assert_eq!(all_splits(b".\rb\r\n.\r\n", 100).1, Some(DataError::BareCr));
        assert_eq!(all_splits(b"\n\r\n.\r\n", 100).1, Some(DataError::BareLf));
    }

    #[test]
    fn line_length_limit() {
        let mut ok = vec![b'a'; MAX_TEXT_LINE - 2];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&ok, 7, 1 << 20).1, None);
        let mut long = vec![b'a'; MAX_TEXT_LINE - 1];
        long.extend_from_slice(b"\r\n.\r\n");
        let (out, err, end) = decode(&long, 7, 1 << 20);
        assert_eq!(err, Some(DataError::LineTooLong));
        assert_eq!(end, Some(long.len()));
        assert!(out.len() <= MAX_TEXT_LINE);
        // A 998-octet line starting with '.' is 999 octets when stuffed.
        let mut stuffed = vec![b'.'; 1];
        stuffed.extend_from_slice(&[b'.'; MAX_TEXT_LINE - 2]);
        stuffed.extend_from_slice(b"\r\n.\r\n");
        let (out, err, _) = decode(&stuffed, 7, 1 << 20);
        assert_eq!((out.len(), err), (MAX_TEXT_LINE - 1, None));
        stuffed.insert(0, b'.');
        assert_eq!(decode(&stuffed, 7, 1 << 20).1, Some(DataError::LineTooLong));
    }

    #[test]
    fn size_limit_stops_output() {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(b"0123456789\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let (out, err, end) = decode(&input, 50, 1200);
        assert_eq!(err, None);
        assert_eq!(out.len(), 1100);
        let (out, err, end2) = decode(&input, 50, 1199);
        assert_eq!(err, Some(DataError::TooBig));
        assert!(out.len() <= 1200);
        assert_eq!(end, end2);
    }

    #[test]
    fn endless_data_is_a_runaway() {
        // Bare LFs add nothing to `size`, yet must count as a flood too.
        for chunk in [&b"0123456789\r\n"[..], b"\n", b"\r"] {
            let mut d = DataDecoder::new(1000);
            let mut out = Vec::new();
            let mut fed = 0u64;
            while !d.runaway() {
                assert_eq!(d.feed(chunk, &mut out), Progress::NeedMore);
                fed += chunk.len() as u64;
                assert!(fed < 4 << 20, "{chunk:?} never became a runaway");
            }
            assert!(fed > 2000 + (1 << 20));
            assert!(out.len() <= 1000);
        }
        // Just over the limit is an ordinary refusal, not a runaway.
        let mut d = DataDecoder::new(1000);
        d.feed(&[b'a'; 5000], &mut Vec::new());
        assert!(!d.runaway());
    }
}
