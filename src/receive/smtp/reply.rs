//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 3463, 2034).

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// One entry per reply line; each already starts with the enhanced
    /// status code where one applies ("2.1.0 Sender OK").
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    pub fn multi(code: u16, lines: Vec<Cow<'static, str>>) -> Self {
        Reply { code, lines }
    }

    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form: `250-first\r\n250 last\r\n`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, line).as_bytes());
        }
        if n == 0 {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
        }
    }

    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        assert_eq!(Reply::new(250, "2.0.0 OK").to_wire(), "250 2.0.0 OK\r\n");
        let r = Reply::multi(250, vec!["a".into(), "SIZE 10".into(), "8BITMIME".into()]);
        assert_eq!(r.to_wire(), "250-a\r\n250-SIZE 10\r\n250 8BITMIME\r\n");
        assert!(Reply::new(421, "x").is_error());
        assert!(!Reply::new(354, "x").is_error());
    }
}
