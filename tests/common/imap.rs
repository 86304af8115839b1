//! A raw IMAP client for protocol tests: sends tagged commands over a
//! real socket and collects the response up to the tagged line, reading
//! server literals (`{n}`) by their octet count so binary data and CRLFs
//! inside them do not end a line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Imap {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    n: u32,
    /// The greeting line.
    pub greeting: String,
}

impl Imap {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> Imap {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Imap {
            stream,
            reader,
            n: 0,
            greeting: String::new(),
        };
        c.greeting = c.response_line();
        c
    }

    /// Connects and logs in as alice.
    pub fn login(addr: SocketAddr) -> Imap {
        let mut c = Imap::connect(addr);
        let r = c.cmd("LOGIN alice secret");
        assert!(r.contains(" OK "), "{r}");
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One response line with its literals inlined (`{n}\r\n` followed by
    /// the n octets, as text); empty when the connection ended.
    pub fn response_line(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                break;
            }
            out.extend_from_slice(&line);
            let t = line.strip_suffix(b"\r\n").unwrap_or(&line);
            let Some(open) = t.iter().rposition(|&b| b == b'{') else {
                break;
            };
            let Some(num) = t[open + 1..]
                .strip_suffix(b"}")
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
            else {
                break;
            };
            let mut lit = vec![0u8; num];
            if self.reader.read_exact(&mut lit).is_err() {
                break;
            }
            out.extend_from_slice(&lit);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The next tag this client will use.
    pub fn next_tag(&self) -> String {
        format!("t{}", self.n + 1)
    }

    /// Sends `TAG line` and returns every response line up to and
    /// including the tagged one (or until the connection ends).
    pub fn cmd(&mut self, line: &str) -> String {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.send_raw(format!("{tag} {line}\r\n").as_bytes());
        self.until_tagged(&tag)
    }

    /// Reads responses up to the line tagged `tag`.
    pub fn until_tagged(&mut self, tag: &str) -> String {
        let mut all = String::new();
        for _ in 0..1_000_000 {
            let l = self.response_line();
            if l.is_empty() {
                break;
            }
            all.push_str(&l);
            if l.starts_with(&format!("{tag} ")) {
                break;
            }
        }
        all
    }

    /// Sends `line` as a command and asserts a tagged `OK`.
    pub fn ok(&mut self, line: &str) -> String {
        let tag = self.next_tag();
        let r = self.cmd(line);
        assert!(r.contains(&format!("{tag} OK")), "{line} -> {r}");
        r
    }

    /// Sends `line` and asserts that the tagged reply starts with `status`
    /// (`NO`, `BAD`, `NO [TRYCREATE]`, ...).
    pub fn fails(&mut self, line: &str, status: &str) -> String {
        let tag = self.next_tag();
        let r = self.cmd(line);
        assert!(r.contains(&format!("{tag} {status}")), "{line} -> {r}");
        r
    }

    /// Sends an APPEND with a synchronizing literal (waits for `+`).
    pub fn append(&mut self, args: &str, msg: &[u8]) -> String {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.send_raw(format!("{tag} APPEND {args} {{{}}}\r\n", msg.len()).as_bytes());
        let l = self.response_line();
        if !l.starts_with('+') {
            return l;
        }
        self.send_raw(msg);
        self.send_raw(b"\r\n");
        self.until_tagged(&tag)
    }

    /// Reads until the connection ends (bounded by the read timeout).
    pub fn rest(&mut self) -> String {
        let mut v = Vec::new();
        let _ = self.reader.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

// ---- set-up shared by the IMAP test files --------------------------------------

/// A server with IMAP on, everything else as `Options::default()`.
pub fn imap_server() -> super::Server {
    super::Server::with(super::Options {
        listen_imap: true,
        ..super::Options::default()
    })
}

/// A small message with Subject, From, To, Date and Message-ID, whose
/// body names `subject`.
pub fn simple(subject: &str) -> Vec<u8> {
    format!(
        "Subject: {subject}\r\nFrom: Bob <bob@example.com>\r\nTo: alice@example.org\r\n\
         Date: Wed, 17 Jul 1996 02:23:25 -0700\r\nMessage-ID: <{subject}@example.com>\r\n\r\n\
         This is {subject}.\r\n"
    )
    .into_bytes()
}

/// Delivers `content` (not yet dot-stuffed) over SMTP.
pub fn deliver(srv: &super::Server, content: &[u8]) {
    srv.deliver(&super::smtp_stuff(content));
}

/// Runs a Python `imaplib` script, logged in as alice as `M`; argv[1]
/// host, argv[2] port, then `args`. Its output.
pub fn imaplib(srv: &super::Server, script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let a = srv.addr("imap");
    let (host, port) = (a.ip().to_string(), a.port().to_string());
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&host, &port];
    all.extend_from_slice(args);
    // 120 s: a generous deadline for a loaded machine, not a speed budget.
    let prelude = "import imaplib, sys, time\n\
                   M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=120)\n\
                   typ, caps = M.login('alice', 'secret')\n\
                   assert typ == 'OK', caps\n";
    super::python(&format!("{prelude}{script}"), &all)
}
