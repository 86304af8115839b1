//! Test harness: starts the real `pimail` binary with a config in a fresh
//! temporary directory, on ports the kernel picks (`127.0.0.1:0`), learns
//! the bound addresses from its start-up log line, and speaks to it over
//! real sockets. Shared by every integration test file.
#![allow(dead_code)]

pub mod dkimpy;
pub mod fakes;
pub mod imap;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// argon2id of "secret" with tiny parameters, so tests log in fast.
pub const PASSWORD: &str = "secret";
pub const PASSWORD_HASH: &str =
    "$argon2id$v=19$m=64,t=1,p=1$d7bEe5+PDtR+c+lWi896vw$glblWHgdtnS/rmo83vVWocAP1oh4q0fcq6XvKfsvKO8";

/// The pimail binary under test: cargo's build of it, or
/// `$PIMAIL_TEST_BIN` (cross/ci.sh points it at the stripped release
/// cross build, so the suite tests the very binary that ships).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("PIMAIL_TEST_BIN") {
        Ok(p) if !p.is_empty() => p,
        _ => env!("CARGO_BIN_EXE_pimail").to_string(),
    })
}

/// The emulator that runs `bin()` when it is built for another
/// architecture: `$PIMAIL_TEST_RUNNER`, split on spaces (e.g.
/// `qemu-aarch64-static`, or `qemu-arm-static -cpu arm1176`). Empty when
/// unset, so the binary runs directly.
pub fn runner() -> Vec<String> {
    std::env::var("PIMAIL_TEST_RUNNER")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A `Command` that runs the pimail binary (through `runner()` when set):
/// use it for every CLI invocation (`sendmail`, `passwd`, `queue`, ...).
pub fn pimail_command() -> Command {
    wrapped_command(&[])
}

/// `wrapper` (e.g. prlimit), then the runner, then the pimail binary.
fn wrapped_command(wrapper: &[String]) -> Command {
    let mut argv: Vec<String> = wrapper.to_vec();
    argv.extend(runner());
    argv.push(bin().to_string());
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// A fresh directory under the target dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::var_os("PIMAIL_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!("pimail-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PIMAIL_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The config a test server runs with; `extra` is appended as is (more
/// sections), `limits` replaces the `[limits]` body.
pub struct Options {
    pub domains: Vec<String>,
    pub addresses: Vec<String>,
    pub limits: String,
    pub listen_submission: bool,
    pub listen_pop3: bool,
    pub extra: String,
    /// Extra lines at the top level (before any section).
    pub top: String,
    /// Also listen for implicit-TLS submission (465); needs `tls`.
    pub listen_submissions: bool,
    /// Also listen for implicit-TLS POP3 (995); needs `tls`.
    pub listen_pop3s: bool,
    /// Also listen for IMAP (STARTTLS port, on 127.0.0.1:0).
    pub listen_imap: bool,
    /// `[tls]` cert and key files (see `tls::make_certs`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More lines for `[listen]` (e.g. `proxy_protocol`, or a listener
    /// kind turned off above with a fixed address instead).
    pub listen_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            domains: vec!["example.org".into()],
            addresses: vec!["alice".into(), "abuse".into()],
            limits: String::new(),
            listen_submission: true,
            listen_pop3: false,
            extra: String::new(),
            top: String::new(),
            listen_submissions: false,
            listen_pop3s: false,
            listen_imap: false,
            tls: None,
            listen_extra: String::new(),
        }
    }
}

pub struct Server {
    pub dir: TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    pub smtp: SocketAddr,
    pub addrs: Vec<(String, SocketAddr)>,
    log: Arc<Mutex<Vec<String>>>,
    /// Runs the child under this wrapper (e.g. `prlimit --fsize=...`).
    pub wrapper: Vec<String>,
    /// Extra environment for the child.
    pub env: Vec<(String, String)>,
}

fn quote_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

impl Server {
    pub fn start() -> Server {
        Self::with(Options::default())
    }

    pub fn with(o: Options) -> Server {
        Self::build(o, vec![], vec![])
    }

    /// Writes the config and starts the child, under `wrapper` and with
    /// extra environment variables.
    fn build(o: Options, wrapper: Vec<String>, env: Vec<(String, String)>) -> Server {
        let dir = TempDir::new("srv");
        let config = Self::write_config(dir.path(), &o);
        let mut s = Server {
            dir,
            config,
            child: None,
            smtp: "127.0.0.1:0".parse().unwrap(),
            addrs: vec![],
            log: Arc::new(Mutex::new(vec![])),
            wrapper,
            env,
        };
        s.spawn();
        s
    }

    /// Runs `pimail sendmail ARGS` with this server's config and `input`
    /// on stdin; returns the exit code and stderr.
    pub fn sendmail(&self, args: &[&str], input: &[u8]) -> (i32, String) {
        let o = run_with_stdin(
            pimail_command()
                .arg("--config")
                .arg(&self.config)
                .arg("sendmail")
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            input,
        );
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Runs `pimail queue ARGS` with this server's config: exit code,
    /// stdout followed by stderr.
    pub fn queue_cmd(&self, args: &[&str]) -> (i32, String) {
        let (code, out, err) = run_pimail(&self.config, &[&["queue"], args].concat());
        (code, out + &err)
    }

    /// Like `with`, but the child runs under `wrapper` (e.g. prlimit).
    pub fn with_wrapper(o: Options, wrapper: Vec<String>) -> Server {
        Self::build(o, wrapper, vec![])
    }

    /// Like `with`, with extra environment variables for the child.
    pub fn with_env(o: Options, env: Vec<(String, String)>) -> Server {
        Self::build(o, vec![], env)
    }

    pub fn write_config(dir: &Path, o: &Options) -> PathBuf {
        let data = dir.join("data");
        let mut listen = String::from("smtp = [\"127.0.0.1:0\"]\n");
        if o.listen_submission {
            listen += "submission = [\"127.0.0.1:0\"]\n";
        }
        if o.listen_pop3 {
            listen += "pop3 = [\"127.0.0.1:0\"]\n";
        }
        if o.listen_submissions {
            listen += "submissions = [\"127.0.0.1:0\"]\n";
        }
        if o.listen_imap {
            listen += "imap = [\"127.0.0.1:0\"]\n";
        }
        if o.listen_pop3s {
            listen += "pop3s = [\"127.0.0.1:0\"]\n";
        }
        listen += &o.listen_extra;
        // Each test server its own local submission socket (the default,
        // /run/pimail/submit.sock, is the installed server's).
        if !o.listen_extra.contains("local_submit") {
            listen += &format!(
                "local_submit = {:?}\n",
                dir.join("run/submit.sock").display().to_string()
            );
        }
        let tls = match &o.tls {
            Some((cert, key)) => format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
            None => String::new(),
        };
        // Port 25 authentication checks (SPF/DKIM/DMARC) ask the DNS; tests
        // only get them when they configure `[inbound]` (and a fake DNS in
        // `[outbound] dns`), so that no test queries a real resolver.
        let inbound = if o.extra.contains("[inbound]") {
            ""
        } else {
            "[inbound]\nauth_checks = false\n"
        };
        let text = format!(
            "hostname = \"mail.example.org\"\ndomains = {}\ndata_dir = {:?}\n{}\n\
             [user]\nname = \"alice\"\npassword = \"{PASSWORD_HASH}\"\naddresses = {}\nmbox = {:?}\n\n\
             [listen]\n{listen}\n[limits]\n{}\n{tls}\n{}\n{inbound}",
            quote_list(&o.domains),
            data.display().to_string(),
            o.top,
            quote_list(&o.addresses),
            dir.join("mbox").display().to_string(),
            o.limits,
            o.extra,
        );
        let path = dir.join("pimail.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn mbox_path(&self) -> PathBuf {
        self.dir.path().join("mbox")
    }

    /// The local submission socket (`[listen] local_submit`).
    pub fn submit_socket(&self) -> PathBuf {
        self.dir.path().join("run/submit.sock")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server and waits for its "listening:" line.
    pub fn spawn(&mut self) {
        let mut cmd = wrapped_command(&self.wrapper);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            // The source-address probe of `ip_family = "auto"` stays on
            // loopback (a test may name its own targets).
            .env("PIMAIL_SOURCE_PROBE", "127.0.0.1:9,[::1]:9")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {cmd:?}: {e} (a binary built for another CPU needs \
                 PIMAIL_TEST_RUNNER, e.g. qemu-aarch64-static)"
            )
        });
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("PIMAIL_TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
                // Stored before the start-up line is announced, so that
                // `log()` after `spawn()` always has it.
                log.lock().unwrap().push(line.clone());
                if line.contains("listening:") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "server did not start ({status:?}); log:\n{}",
                    self.log().join("\n")
                );
            }
        };
        self.child = Some(child);
        // "... listening: smtp 127.0.0.1:4567, submission 127.0.0.1:4568; mbox ..."
        let list = line
            .split("listening: ")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        self.addrs = list
            .split(", ")
            .filter_map(|item| {
                let (kind, addr) = item.trim().split_once(' ')?;
                Some((kind.to_string(), addr.parse().ok()?))
            })
            .collect();
        self.smtp = self.addr("smtp");
    }

    pub fn addr(&self, kind: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", self.addrs))
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The first log line that contains `needle`.
    pub fn log_line(&self, needle: &str) -> Option<String> {
        self.log().into_iter().find(|l| l.contains(needle))
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.log().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        c.wait().unwrap()
    }

    /// Runs `pimail serve` with a config expected to be refused at start:
    /// returns the exit code and stderr. Fails if it starts serving.
    pub fn start_fails(o: Options) -> (Option<i32>, String) {
        let dir = TempDir::new("fail");
        let config = Self::write_config(dir.path(), &o);
        let mut child = pimail_command()
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pimail");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                return (status.code(), err);
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("pimail started although it should have refused:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn mbox(&self) -> Vec<u8> {
        std::fs::read(self.mbox_path()).unwrap_or_default()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.smtp)
    }

    /// Sends `data` (CRLF lines, dot-stuffed already) on port 25 from
    /// bob@example.com to alice@example.org, asserting that it is accepted
    /// (250), then says QUIT (221).
    pub fn deliver(&self, data: &[u8]) {
        let mut c = self.connect();
        c.hello();
        let (code, text) = c.send_message("bob@example.com", &["alice@example.org"], data);
        assert_eq!(code, 250, "{text}");
        c.expect("QUIT", 221);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A line-oriented protocol client over a real socket.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// A client over a stream connected some other way (e.g. from another
    /// loopback address).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// One raw line (for POP3), without CRLF.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap_or(0);
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = self.reader.read_to_end(&mut v);
        v
    }

    /// Greeting, EHLO: ready for MAIL.
    pub fn hello(&mut self) {
        let (c, g) = self.reply();
        assert_eq!(c, 220, "greeting {g}");
        self.expect("EHLO client.example", 250);
    }
}

impl Dialogue for Client {
    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn reply(&mut self) -> (u16, String) {
        read_reply(&mut self.reader)
    }
}

/// The SMTP dialogue over any line transport (`Client`, and
/// `tls::TlsClient` over TLS): each says how to send bytes and read one
/// reply; the commands are the same.
pub trait Dialogue {
    fn send_raw(&mut self, bytes: &[u8]);

    /// One (possibly multi-line) reply: code and the full text;
    /// `(0, text)` when the connection ends.
    fn reply(&mut self) -> (u16, String);

    fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    /// Sends a command and returns the reply.
    fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(line);
        self.reply()
    }

    /// Sends a command and asserts the reply code.
    fn expect(&mut self, line: &str, code: u16) -> String {
        let (c, text) = self.cmd(line);
        assert_eq!(c, code, "{line} -> {text}");
        text
    }

    /// Sends one message (raw content, CRLF line ends, dot-stuffed already
    /// by the caller if needed) and returns the final reply.
    fn send_message(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> (u16, String) {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), 250);
        }
        self.expect("DATA", 354);
        self.send_raw(data);
        self.send_raw(b".\r\n");
        self.reply()
    }
}

/// Runs `pimail ARGS --config CONFIG` (a CLI command such as `queue`,
/// `doctor` or `dkim generate`): exit code, stdout, stderr.
pub fn run_pimail(config: &Path, args: &[&str]) -> (i32, String, String) {
    let o = pimail_command()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run pimail {args:?}: {e}"));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Reads one (possibly multi-line) SMTP reply: the code and the full text;
/// `(0, text)` when the connection ends.
pub fn read_reply(r: &mut impl BufRead) -> (u16, String) {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).unwrap_or(0);
        if n == 0 {
            return (0, all);
        }
        all += &line;
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return (code, all);
        }
    }
}

/// Runs a Python 3 script with `args`; fails the test, showing its output,
/// unless it exits 0. Returns its stdout.
pub fn python_bytes(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<u8> {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// `python_bytes` with the output as text.
pub fn python(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    String::from_utf8_lossy(&python_bytes(script, args)).into_owned()
}

/// Runs `cmd` with `input` on its stdin and waits for it; stdout and
/// stderr are captured where the caller piped them.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Parses an mbox with Python's `mailbox` module (a real, independent mbox
/// reader) and returns each message's bytes as Python sees them.
pub fn python_mbox_messages(path: &Path) -> Vec<Vec<u8>> {
    let script = r#"
import mailbox, sys
box = mailbox.mbox(sys.argv[1], create=False)
out = sys.stdout.buffer
for key in box.keys():
    data = box.get_bytes(key)
    out.write(b"%d\n" % len(data))
    out.write(data)
"#;
    let out = python_bytes(script, &[&path]);
    let mut msgs = Vec::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').unwrap();
        let n: usize = std::str::from_utf8(&rest[..nl]).unwrap().parse().unwrap();
        msgs.push(rest[nl + 1..nl + 1 + n].to_vec());
        rest = &rest[nl + 1 + n..];
    }
    msgs
}

/// The body of an mboxrd message as the sender sent it: trace headers we
/// added removed, `>From ` quoting undone, LF -> CRLF.
pub fn original_from_stored(stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut skipping_trace = true;
    let mut in_received = false;
    for line in stored.split_inclusive(|&b| b == b'\n') {
        if skipping_trace {
            if line.starts_with(b"Return-Path:") || line.starts_with(b"X-Pimail:") {
                continue;
            }
            if line.starts_with(b"Received:") && !in_received {
                in_received = true;
                continue;
            }
            if in_received && line.starts_with(b"\t") {
                continue;
            }
            skipping_trace = false;
        }
        let n = line.iter().take_while(|&&b| b == b'>').count();
        let line = if n > 0 && line[n..].starts_with(b"From ") {
            &line[1..]
        } else {
            line
        };
        if let Some(l) = line.strip_suffix(b"\n") {
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Reads `r` to the end with a deadline, for tests of closed connections.
pub fn read_all_within(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

impl Server {
    /// Sends a signal (by name, as `kill -s` takes it) without waiting.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -s {sig} {} failed", self.pid());
    }

    /// Waits (bounded) for the server to exit by itself; `None` if it is
    /// still running after `within` (it is then killed).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Is the server process still running?
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// The path of an external tool a test needs; fails the test with what to
/// install when it is missing (never a silent pass).
pub fn require_tool(name: &str, apt_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("this test needs `{name}`: install it with `apt-get install {apt_package}`");
}

/// A message with a unique subject, CRLF line ends, not dot-stuffed.
pub fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.com>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@test.example>\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Dot-stuffs CRLF text for DATA (RFC 5321 4.5.2).
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// A POP3 client over a real socket (RFC 1939 framing), for tests.
pub struct Pop3 {
    pub c: Client,
}

impl Pop3 {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> Pop3 {
        let mut c = Client::connect(addr);
        let g = c.line();
        assert!(g.starts_with("+OK"), "POP3 greeting: {g}");
        Pop3 { c }
    }

    /// Connects and logs in as alice with USER/PASS.
    pub fn login(addr: SocketAddr) -> Pop3 {
        let mut p = Pop3::connect(addr);
        p.ok("USER alice");
        p.ok(&format!("PASS {PASSWORD}"));
        p
    }

    /// Sends a command, returns its one-line reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.c.send(line);
        self.c.line()
    }

    /// Sends a command and asserts `+OK`.
    pub fn ok(&mut self, line: &str) -> String {
        let r = self.cmd(line);
        assert!(r.starts_with("+OK"), "{line} -> {r}");
        r
    }

    /// Sends a command and asserts `-ERR`.
    pub fn err(&mut self, line: &str) -> String {
        let r = self.cmd(line);
        assert!(r.starts_with("-ERR"), "{line} -> {r}");
        r
    }

    /// The body of a multi-line reply, raw (still dot-stuffed, CRLF), up to
    /// and without the terminating ".\r\n".
    pub fn multi_raw(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = BufRead::read_until(&mut self.c.reader, b'\n', &mut line).unwrap_or(0);
            assert!(n > 0, "connection closed inside a multi-line reply");
            if line == b".\r\n" {
                return out;
            }
            out.extend_from_slice(&line);
        }
    }

    /// A multi-line reply's lines, dot-unstuffed, without CRLF.
    pub fn multi_lines(&mut self) -> Vec<String> {
        let raw = self.multi_raw();
        pop3_unstuff(&raw)
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
            .collect()
    }

    /// RETR n: the message bytes as sent, dot-stuffing undone.
    pub fn retr(&mut self, n: usize) -> Vec<u8> {
        self.ok(&format!("RETR {n}"));
        pop3_unstuff(&self.multi_raw())
    }

    /// UIDL listing as (number, uid).
    pub fn uidl(&mut self) -> Vec<(usize, String)> {
        self.ok("UIDL");
        self.multi_lines()
            .iter()
            .map(|l| {
                let (n, u) = l.split_once(' ').expect("UIDL line");
                (n.parse().expect("message number"), u.to_string())
            })
            .collect()
    }
}

/// Undoes POP3 dot-stuffing of a multi-line body (CRLF lines).
pub fn pop3_unstuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for line in raw.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// A free port on 127.0.0.1 for a listener the config must name exactly.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Dot-stuffs message content (CRLF lines) for SMTP DATA.
pub fn smtp_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

/// Removes the trace headers our SMTP side adds (`Return-Path:` and the
/// first `Received:` with its continuation lines) from a message in
/// CRLF form, giving what the sender sent.
pub fn strip_trace_crlf(msg: &[u8]) -> Vec<u8> {
    let mut rest = msg;
    if rest.starts_with(b"Return-Path:") {
        let i = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        rest = &rest[i + 2..];
    }
    if rest.starts_with(b"X-Pimail:") {
        let i = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        rest = &rest[i + 2..];
    }
    if rest.starts_with(b"Received:") {
        let mut i = rest.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        while rest[i..].starts_with(b"\t") || rest[i..].starts_with(b" ") {
            i += rest[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        }
        rest = &rest[i..];
    }
    rest.to_vec()
}

/// Tests that run the binary in ways an emulator cannot follow (exec of
/// the aarch64 binary without the runner, a child it starts itself, a
/// pid that is the emulator's) skip under cross/ci.sh's qemu-user run;
/// the native run covers them.
pub fn skip_under_emulator() -> bool {
    let on = std::env::var_os("PIMAIL_TEST_RUNNER").is_some();
    if on {
        eprintln!("skipped under the emulator (PIMAIL_TEST_RUNNER): the native run covers this");
    }
    on
}

/// A TCP connection to `dst` from the loopback address `src` (std cannot
/// bind before connecting). Linux routes all of 127.0.0.0/8 to lo.
pub fn connect_from(
    src: std::net::Ipv4Addr,
    dst: std::net::SocketAddr,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr
    // structs live across the calls; on error the descriptor is closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let a = sin(src, 0);
        if libc::bind(fd, &a as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let d = sin(*dst.ip(), dst.port());
        if libc::connect(fd, &d as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }
}
