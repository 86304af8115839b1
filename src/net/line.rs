//! A bounded CRLF line reader shared by SMTP and POP3 (sans-I/O).
//!
//! The I/O layer reads into [`LineBuffer::spare`]; the protocol takes
//! complete lines out with [`LineBuffer::next_line`]. Only CRLF ends a line
//! (RFC 5321 2.3.8): a bare LF or CR is reported, never taken as a line end,
//! so that no SMTP smuggling is possible. A line longer than the limit is
//! reported once and then discarded up to its end, so memory stays fixed
//! whatever the client sends.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// The line (with CRLF) exceeded the limit; reported as soon as that is
    /// known, and again for every further limit's worth of bytes without a
    /// line end, so an endless line keeps counting as errors.
    TooLong,
    /// LF not preceded by CR.
    BareLf,
    /// CR not followed by LF.
    BareCr,
}

/// While discarding a too-long line, report it again after this many
/// limits' worth of bytes, so that an endless line is counted as errors.
const REREPORT: usize = 32;

pub struct LineBuffer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Discarding the rest of a too-long line: bytes skipped so far.
    discarding: Option<usize>,
}

impl LineBuffer {
    /// `capacity` must exceed the longest line the protocol allows.
    pub fn new(capacity: usize) -> Self {
        LineBuffer {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            discarding: None,
        }
    }

    /// Free space to read into, after moving unread bytes to the front.
    /// Never empty: `next_line` always consumes or discards a full buffer.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`spare`](Self::spare) as filled.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received but not yet taken (e.g. the start of DATA content).
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Takes `n` bytes from the front of [`buffered`](Self::buffered).
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Drops everything buffered: after STARTTLS/STLS, bytes a client sent
    /// before the handshake must not be executed (CVE-2011-0411).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.discarding = None;
    }

    /// The next complete line without its CRLF, an error for a bad line
    /// (which is consumed), or `None` when more input is needed.
    /// `max` is the longest allowed line including CRLF.
    pub fn next_line(&mut self, max: usize) -> Option<Result<&[u8], LineError>> {
        let max = max.min(self.buf.len());
        let data = &self.buf[self.start..self.end];
        let newline = data.iter().position(|&b| b == b'\n');
        if let Some(skipped) = self.discarding {
            return match newline {
                Some(i) => {
                    self.start += i + 1;
                    self.discarding = None;
                    self.next_line(max)
                }
                None => {
                    // Keep a trailing CR: it may pair with the next LF.
                    let keep = usize::from(data.last() == Some(&b'\r'));
                    let dropped = data.len() - keep;
                    self.start += dropped;
                    let total = skipped + dropped;
                    let every = max * REREPORT;
                    if total / every > skipped / every {
                        self.discarding = Some(total);
                        Some(Err(LineError::TooLong))
                    } else {
                        self.discarding = Some(total);
                        None
                    }
                }
            };
        }
        let Some(i) = newline else {
            if data.len() >= max {
                // No line end within the limit: report now, skip to its end.
                self.discarding = Some(0);
                return Some(Err(LineError::TooLong));
            }
            return None;
        };
        let start = self.start;
        self.start += i + 1;
        if i + 1 > max {
            return Some(Err(LineError::TooLong));
        }
        if i == 0 || self.buf[start + i - 1] != b'\r' {
            return Some(Err(LineError::BareLf));
        }
        let line = &self.buf[start..start + i - 1];
        if line.contains(&b'\r') {
            return Some(Err(LineError::BareCr));
        }
        Some(Ok(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at `split` and collects what comes out.
    fn run(input: &[u8], split: usize, max: usize) -> Vec<Result<Vec<u8>, LineError>> {
        let mut lb = LineBuffer::new(64);
        let mut out = Vec::new();
        let mut rest = input;
        let mut first = true;
        loop {
            while let Some(r) = lb.next_line(max) {
                out.push(r.map(|l| l.to_vec()));
            }
            if rest.is_empty() {
                return out;
            }
            let spare = lb.spare();
            let want = if first { split.max(1) } else { spare.len() };
            first = false;
            let n = want.min(spare.len()).min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            lb.filled(n);
            rest = &rest[n..];
        }
    }

    #[test]
    fn lines_at_every_split() {
        let input = b"EHLO x\r\nMAIL FROM:<a@b>\r\n\r\nQUIT\r\n";
        for split in 0..input.len() {
            let got = run(input, split, 32);
            let want: Vec<Result<Vec<u8>, LineError>> = vec![
                Ok(b"EHLO x".to_vec()),
                Ok(b"MAIL FROM:<a@b>".to_vec()),
                Ok(b"".to_vec()),
                Ok(b"QUIT".to_vec()),
            ];
            assert_eq!(got, want, "split {split}");
        }
    }

    #[test]
    fn bare_lf_and_cr_are_errors_not_line_ends() {
        for split in 0..20 {
            let got = run(b"NOOP\nQUIT\r\nA\rB\r\nOK\r\n", split, 32);
            assert_eq!(
                got,
                vec![
                    Err(LineError::BareLf),
                    Ok(b"QUIT".to_vec()),
                    Err(LineError::BareCr),
                    Ok(b"OK".to_vec())
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn too_long_reported_and_skipped() {
        let mut input = vec![b'x'; 40];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        for split in 0..input.len() {
            let got = run(&input, split, 16);
            assert_eq!(
                got,
                vec![Err(LineError::TooLong), Ok(b"NOOP".to_vec())],
                "split {split}"
            );
        }
        // Exactly at the limit is fine (14 + CRLF = 16).
        let mut ok = vec![b'y'; 14];
        ok.extend_from_slice(b"\r\n");
        assert_eq!(run(&ok, 3, 16), vec![Ok(vec![b'y'; 14])]);
        let mut over = vec![b'y'; 15];
        over.extend_from_slice(b"\r\n");
        assert_eq!(run(&over, 20, 16), vec![Err(LineError::TooLong)]);
    }

    #[test]
    fn endless_line_keeps_reporting() {
        let input = vec![b'z'; 64 * REREPORT * 4];
        let got = run(&input, 64, 64);
        assert!(got.len() >= 4, "{}", got.len());
        assert!(got.iter().all(|r| *r == Err(LineError::TooLong)));
    }

    #[test]
    fn clear_drops_pipelined_bytes() {
        let mut lb = LineBuffer::new(64);
        let s = b"STARTTLS\r\nMAIL FROM:<evil>\r\n";
        lb.spare()[..s.len()].copy_from_slice(s);
        lb.filled(s.len());
        assert_eq!(lb.next_line(64), Some(Ok(&b"STARTTLS"[..])));
        lb.clear();
        assert_eq!(lb.next_line(64), None);
        assert!(lb.buffered().is_empty());
    }
}
