//! A message on its way out by RETR or TOP (RFC 1939 sections 3 and 7),
//! sans I/O: mbox lines in, POP3 octets out. Undoes the mboxrd quoting
//! (`>From ` -> `From `), ends every line with CRLF and dot-stuffs lines
//! that start with `.`. TOP stops after the headers, the blank line and
//! the asked-for number of body lines. The driver feeds line pieces (a
//! whole line with its LF, or a part of a line longer than its buffer), so
//! no message is ever held whole in memory.

pub struct Encoder {
    /// The next piece starts a line.
    line_start: bool,
    prev_cr: bool,
    in_headers: bool,
    /// Body lines TOP may still send; `None` for RETR.
    body_left: Option<u64>,
    done: bool,
}

impl Encoder {
    pub fn new(top: Option<u64>) -> Self {
        Encoder {
            line_start: true,
            prev_cr: false,
            in_headers: true,
            body_left: top,
            done: false,
        }
    }

    /// TOP has sent all it should: the driver can stop reading.
    pub fn done(&self) -> bool {
        self.done
    }

    pub fn piece(&mut self, p: &[u8], out: &mut Vec<u8>) {
        if self.done || p.is_empty() {
            return;
        }
        let mut p = p;
        if self.line_start {
            if self.in_headers {
                if p == b"\n" || p == b"\r\n" {
                    self.in_headers = false;
                }
            } else if let Some(left) = &mut self.body_left {
                if *left == 0 {
                    self.done = true;
                    return;
                }
                *left -= 1;
            }
            let n = p.iter().take_while(|&&b| b == b'>').count();
            if n > 0 && p[n..].starts_with(b"From ") {
                p = &p[1..];
            }
            if p.first() == Some(&b'.') {
                out.push(b'.');
            }
        }
        let ends_line = p.last() == Some(&b'\n');
        self.line_start = ends_line;
        if ends_line {
            let cr = if p.len() >= 2 {
                p[p.len() - 2] == b'\r'
            } else {
                self.prev_cr
            };
            if cr {
                out.extend_from_slice(p);
            } else {
                out.extend_from_slice(&p[..p.len() - 1]);
                out.extend_from_slice(b"\r\n");
            }
        } else {
            out.extend_from_slice(p);
        }
        self.prev_cr = p.last() == Some(&b'\r');
    }

    /// Ends the message: a last line without LF gets CRLF, then the
    /// terminating `.` line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line_start && !self.done {
            if self.prev_cr {
                out.push(b'\n');
            } else {
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(content: &[u8], top: Option<u64>, split: usize) -> Vec<u8> {
        let mut e = Encoder::new(top);
        let mut out = Vec::new();
        for line in content.split_inclusive(|&b| b == b'\n') {
            // Long lines arrive in parts; only the first starts the line.
            let first = line.len().min(split.max(8));
            e.piece(&line[..first], &mut out);
            for part in line[first..].chunks(split.max(1)) {
                e.piece(part, &mut out);
            }
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn retr_form() {
        let c = b"Subject: x\n\n>From a\n>>From b\n.dot\n..two\nend";
        let want = b"Subject: x\r\n\r\nFrom a\r\n>From b\r\n..dot\r\n...two\r\nend\r\n.\r\n";
        for split in 1..c.len() {
            assert_eq!(encode(c, None, split), want.to_vec(), "split {split}");
        }
        // Lines that already end in CRLF keep a single CR.
        assert_eq!(
            encode(b"a\r\nb\r\n", None, 100),
            b"a\r\nb\r\n.\r\n".to_vec()
        );
    }

    #[test]
    fn top_counts_body_lines() {
        let c = b"A: 1\nB: 2\n\none\ntwo\nthree\n";
        assert_eq!(
            encode(c, Some(0), 100),
            b"A: 1\r\nB: 2\r\n\r\n.\r\n".to_vec()
        );
        assert_eq!(
            encode(c, Some(2), 100),
            b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\n.\r\n".to_vec()
        );
        assert_eq!(encode(c, Some(9), 3), encode(c, None, 3));
    }
}
