//! pimail-loadgen: the SMTP load client of `bench/smtp.py`.
//!
//! One thread drives every connection: non-blocking sockets and epoll,
//! so the client's CPU stays a small share of the machine that also runs
//! the server under test. Each connection sends EHLO once, then messages
//! back to back: MAIL FROM, RCPT TO and DATA in one write when the server
//! advertises PIPELINING (RFC 2920), then the message after the 354. A
//! message counts as acknowledged only when its final 250 after the data
//! arrives; 4xx and 5xx are counted apart. The message is the one
//! `bench/smtp.py` makes (`make_head` / `make_body`), with a unique
//! `X-Bench-Id: <tag>-<connection>-<n>` header; `--ids FILE` writes the
//! ids of the acknowledged messages, one a line, so the benchmark can look
//! for every one of them in the mbox. `--per-connection N` closes each
//! connection (QUIT) after N messages and opens a new one in its place,
//! as remote servers on port 25 do (one message, or a few, per
//! connection): then connection set-up and the checks made per
//! connection count in the rate.
//!
//! Output: one JSON line on stdout (counts, rate, latency percentiles and
//! the client's own CPU time from getrusage(RUSAGE_SELF)).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: loadgen --addr 127.0.0.1:PORT [--connections N] \
(--seconds S | --messages N) [--size BYTES] [--tag TAG] [--ids FILE] \
[--from ADDR] [--to ADDR] [--timeout S] [--no-pipelining] [--per-connection N] \
[--dump-message]";

/// Longest reply line accepted (RFC 5321 says 512; EHLO lines are short).
const MAX_LINE: usize = 64 << 10;
/// At most this many connections.
const MAX_CONNECTIONS: usize = 10_000;
/// Latency samples kept (8 bytes each); beyond it, messages still count.
const MAX_SAMPLES: usize = 20_000_000;

struct Args {
    addr: SocketAddr,
    connections: usize,
    seconds: Option<f64>,
    messages: Option<u64>,
    size: usize,
    tag: String,
    ids: Option<String>,
    from: String,
    to: String,
    timeout: Duration,
    pipelining: bool,
    /// Messages per connection before it is replaced by a new one.
    per_connection: Option<u64>,
    dump: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut a = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 25)),
        connections: 1,
        seconds: None,
        messages: None,
        size: 2 << 10,
        tag: "loadgen".into(),
        ids: None,
        from: "bench@sender.example".into(),
        to: "alice@example.org".into(),
        timeout: Duration::from_secs(120),
        pipelining: true,
        per_connection: None,
        dump: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?),
            "--connections" | "-c" => a.connections = num(&flag, &value()?)?,
            "--seconds" => a.seconds = Some(num(&flag, &value()?)?),
            "--messages" => a.messages = Some(num(&flag, &value()?)?),
            "--size" => a.size = num(&flag, &value()?)?,
            "--tag" => a.tag = value()?,
            "--ids" => a.ids = Some(value()?),
            "--from" => a.from = value()?,
            "--to" => a.to = value()?,
            "--timeout" => a.timeout = Duration::from_secs_f64(num(&flag, &value()?)?),
            "--no-pipelining" => a.pipelining = false,
            "--per-connection" => a.per_connection = Some(num(&flag, &value()?)?),
            "--dump-message" => a.dump = true,
            "--help" | "-h" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    if a.dump {
        return Ok(a);
    }
    let addr = addr.ok_or_else(|| format!("--addr is required\n{USAGE}"))?;
    a.addr = addr
        .parse()
        .map_err(|e| format!("--addr {addr:?}: {e} (want IP:PORT)"))?;
    if !a.addr.ip().is_loopback() {
        return Err(format!(
            "--addr {}: only loopback addresses (127.0.0.0/8, ::1)",
            a.addr
        ));
    }
    if a.connections == 0 || a.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
    }
    match (a.seconds, a.messages) {
        (Some(s), None) if s > 0.0 && s <= 86_400.0 => {}
        (None, Some(n)) if n > 0 => {}
        _ => {
            return Err(format!(
                "give one of --seconds S (0 < S ≤ 86400) or --messages N (N > 0)\n{USAGE}"
            ))
        }
    }
    if a.timeout.is_zero() {
        return Err("--timeout must be > 0".into());
    }
    if a.per_connection == Some(0) {
        return Err("--per-connection must be > 0".into());
    }
    if [&a.from, &a.to, &a.tag].iter().any(|s| {
        s.bytes()
            .any(|b| b <= b' ' || b == b'<' || b == b'>' || b >= 0x7f)
    }) {
        return Err("--from, --to and --tag must be printable ASCII without spaces or <>".into());
    }
    Ok(a)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
}

// ---- the message, as bench/smtp.py makes it ----------------------------------

/// `make_body(size)`: body lines of 78 octets + CRLF, no leading dots, one
/// `From ` line; `size` is the whole message with headers (about 300
/// octets); ends with the terminating `.` line.
fn make_body(size: usize) -> Vec<u8> {
    let fox = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs ";
    let line = &fox.repeat(2).into_bytes()[..78];
    let first = b"From here on the body is filler.\r\n";
    let mut out = Vec::with_capacity(size + 128);
    out.extend_from_slice(first);
    let mut n = first.len() + 300;
    while n < size {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        n += 80;
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// `make_head(bench_id)`.
fn make_head(out: &mut Vec<u8>, from: &str, to: &str, bench_id: &str) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "From: Bench <{from}>\r\nTo: <{to}>\r\nSubject: benchmark message\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{bench_id}@bench>\r\n\
         X-Bench-Id: {bench_id}\r\n\r\n"
    );
}

// ---- one connection ----------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Greeting,
    Ehlo,
    /// EHLO answered; waiting for every connection to get here.
    Ready,
    /// Waiting for the replies to MAIL, RCPT, DATA (`step` counts them).
    Envelope,
    /// Data sent (or being sent); waiting for the final reply.
    Final,
    /// The envelope failed but DATA got 354: sent an empty message's ".".
    Abort,
    Rset,
    Quit,
    Done,
    Failed,
}

struct Conn {
    id: usize,
    sock: TcpStream,
    inbuf: Vec<u8>,
    in_start: usize,
    out: Vec<u8>,
    out_pos: usize,
    /// Some(pos): the shared body is being written after `out`.
    body_pos: Option<usize>,
    state: State,
    /// Pipelining wanted (--no-pipelining clears it) and advertised.
    pipelining: bool,
    advertised: bool,
    step: u8,
    first_fail: Option<u16>,
    /// Number of the message in flight (its id is `tag-id-n`).
    n: u64,
    t_mail: Instant,
    t_data_end: Option<Instant>,
    last_progress: Instant,
    error: Option<String>,
    /// Registered with epoll, and for EPOLLOUT too.
    registered: bool,
    watching_out: bool,
    /// Messages begun on this socket (`--per-connection`).
    on_socket: u64,
    /// Said QUIT to make room for a new connection.
    reopen: bool,
    /// A replacement connection: starts sending at once after EHLO.
    again: bool,
}

/// What the whole run counts.
struct Totals {
    acked: u64,
    temp_failed: u64,
    perm_failed: u64,
    started: u64,
    lat_us: Vec<u32>,
    data_lat_us: Vec<u32>,
    last_final: Option<Instant>,
    ids: Option<BufWriter<File>>,
    ids_error: Option<String>,
}

/// What every connection shares.
struct Job<'a> {
    args: &'a Args,
    body: &'a [u8],
    deadline: Option<Instant>,
    /// Messages still to start (`--messages`).
    remaining: Option<u64>,
    envelope: Vec<u8>,
}

impl Job<'_> {
    fn more(&mut self, now: Instant) -> bool {
        match (self.deadline, &mut self.remaining) {
            (Some(d), _) => now < d,
            (None, Some(r)) if *r > 0 => {
                *r -= 1;
                true
            }
            _ => false,
        }
    }
}

enum Reply {
    Code(u16),
    None,
}

impl Conn {
    fn new(id: usize, sock: TcpStream, pipelining: bool) -> Conn {
        let now = Instant::now();
        Conn {
            id,
            sock,
            inbuf: Vec::with_capacity(4096),
            in_start: 0,
            out: Vec::with_capacity(1024),
            out_pos: 0,
            body_pos: None,
            state: State::Greeting,
            pipelining,
            advertised: false,
            step: 0,
            first_fail: None,
            n: 0,
            t_mail: now,
            t_data_end: None,
            last_progress: now,
            error: None,
            registered: false,
            watching_out: false,
            on_socket: 0,
            reopen: false,
            again: false,
        }
    }

    /// The connection that takes this one's place (same id; message
    /// numbers go on, so ids stay unique).
    fn replacement(&self, sock: TcpStream) -> Conn {
        let mut c = Conn::new(self.id, sock, self.pipelining || !self.advertised);
        c.n = self.n;
        c.again = true;
        c
    }

    fn active(&self) -> bool {
        !matches!(self.state, State::Done | State::Failed)
    }

    fn wants_write(&self) -> bool {
        self.out_pos < self.out.len() || self.body_pos.is_some()
    }

    fn fail(&mut self, why: String) {
        if self.active() {
            self.error = Some(format!("connection {}: {why}", self.id));
            self.state = State::Failed;
        }
    }

    fn queue(&mut self, bytes: &[u8]) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Writes what is pending until the socket would block.
    fn flush(&mut self, body: &[u8]) {
        // Every pass writes at least one byte or stops, so this ends; the
        // cap keeps one connection from holding the loop.
        for _ in 0..4096 {
            if !self.wants_write() || !self.active() {
                return;
            }
            let head = &self.out[self.out_pos..];
            let rest = self.body_pos.map_or(&[][..], |p| &body[p..]);
            let r = if head.is_empty() {
                self.sock.write(rest)
            } else if rest.is_empty() {
                self.sock.write(head)
            } else {
                self.sock
                    .write_vectored(&[IoSlice::new(head), IoSlice::new(rest)])
            };
            match r {
                Ok(0) => return self.fail("write returned 0".into()),
                Ok(mut k) => {
                    self.last_progress = Instant::now();
                    let h = head.len().min(k);
                    self.out_pos += h;
                    k -= h;
                    if let Some(p) = self.body_pos {
                        let p = p + k;
                        if p >= body.len() {
                            self.body_pos = None;
                            self.t_data_end = Some(self.last_progress);
                        } else {
                            self.body_pos = Some(p);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(format!("write in {:?}: {e}", self.state)),
            }
        }
    }

    /// Reads what has arrived; false when the connection ended.
    fn fill(&mut self, chunk: &mut [u8]) -> bool {
        for _ in 0..64 {
            if self.inbuf.len() - self.in_start > MAX_LINE {
                self.fail(format!("reply line longer than {MAX_LINE} bytes"));
                return false;
            }
            match self.sock.read(chunk) {
                Ok(0) => {
                    if self.state == State::Quit {
                        self.state = State::Done;
                    } else {
                        self.fail(format!("closed by the server in {:?}", self.state));
                    }
                    return false;
                }
                Ok(k) => {
                    self.inbuf.extend_from_slice(&chunk[..k]);
                    self.last_progress = Instant::now();
                    if k < chunk.len() {
                        // Drained for now (poll is level-triggered and
                        // says if more comes): no read just for EAGAIN.
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(format!("read in {:?}: {e}", self.state));
                    return false;
                }
            }
        }
        true
    }

    /// The next complete reply in the buffer (continuation lines skipped;
    /// the EHLO keywords looked at for PIPELINING).
    fn next_reply(&mut self) -> Result<Reply, String> {
        loop {
            let buf = &self.inbuf[self.in_start..];
            let Some(i) = buf.windows(2).position(|w| w == b"\r\n") else {
                if self.in_start > 0 {
                    self.inbuf.drain(..self.in_start);
                    self.in_start = 0;
                }
                return Ok(Reply::None);
            };
            let line = &buf[..i];
            self.in_start += i + 2;
            let code = match line.get(..3) {
                Some(c) if c.iter().all(u8::is_ascii_digit) => {
                    c.iter().fold(0u16, |a, d| a * 10 + u16::from(d - b'0'))
                }
                _ => {
                    return Err(format!(
                        "not an SMTP reply: {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(80)])
                    ))
                }
            };
            if self.state == State::Ehlo && line.len() > 4 {
                let kw = &line[4..];
                if kw.len() >= 10
                    && kw[..10].eq_ignore_ascii_case(b"PIPELINING")
                    && kw.get(10).is_none_or(|b| *b == b' ')
                {
                    self.advertised = true;
                }
            }
            match line.get(3) {
                Some(b'-') => continue,
                None | Some(b' ') => return Ok(Reply::Code(code)),
                Some(_) => return Err(format!("bad reply line (code {code})")),
            }
        }
    }

    fn begin(&mut self, job: &mut Job, tot: &mut Totals, now: Instant) {
        if job.args.per_connection.is_some_and(|p| self.on_socket >= p)
            && job.deadline.is_none_or(|d| now < d)
        {
            self.queue(b"QUIT\r\n");
            self.state = State::Quit;
            self.reopen = true;
            return;
        }
        if !job.more(now) {
            self.queue(b"QUIT\r\n");
            self.state = State::Quit;
            return;
        }
        self.n += 1;
        self.on_socket += 1;
        tot.started += 1;
        self.t_mail = now;
        self.t_data_end = None;
        self.step = 0;
        self.first_fail = None;
        self.state = State::Envelope;
        if self.pipelining {
            self.queue(&job.envelope);
        } else {
            let mail = job.envelope.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let mut cmd = mail.to_vec();
            cmd.push(b'\n');
            self.queue(&cmd);
        }
    }

    fn count_failure(&mut self, tot: &mut Totals, code: u16) -> Result<(), String> {
        match code / 100 {
            4 => tot.temp_failed += 1,
            5 => tot.perm_failed += 1,
            _ => return Err(format!("unexpected reply {code} in {:?}", self.state)),
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        code: u16,
        job: &mut Job,
        tot: &mut Totals,
        now: Instant,
    ) -> Result<(), String> {
        match self.state {
            State::Greeting => {
                if code != 220 {
                    return Err(format!("greeting {code}"));
                }
                self.queue(b"EHLO bench.client\r\n");
                self.state = State::Ehlo;
            }
            State::Ehlo => {
                if code != 250 {
                    return Err(format!("EHLO got {code}"));
                }
                self.pipelining &= self.advertised;
                self.state = State::Ready;
                if self.again {
                    self.begin(job, tot, now);
                }
            }
            State::Envelope => {
                let step = self.step;
                self.step += 1;
                let ok = if step < 2 {
                    code / 100 == 2
                } else {
                    code == 354
                };
                if !ok && self.first_fail.is_none() {
                    self.first_fail = Some(code);
                }
                if !self.pipelining && step < 2 {
                    if ok {
                        let line = job
                            .envelope
                            .split(|b| *b == b'\n')
                            .nth(usize::from(step) + 1);
                        let mut cmd = line.unwrap_or(&[]).to_vec();
                        cmd.push(b'\n');
                        self.queue(&cmd);
                    } else {
                        self.count_failure(tot, code)?;
                        self.queue(b"RSET\r\n");
                        self.state = State::Rset;
                    }
                } else if step == 2 {
                    match (self.first_fail, ok) {
                        (None, true) => {
                            let mut head = Vec::with_capacity(400);
                            let id = format!("{}-{}-{}", job.args.tag, self.id, self.n);
                            make_head(&mut head, &job.args.from, &job.args.to, &id);
                            self.queue(&head);
                            self.body_pos = Some(0);
                            self.state = State::Final;
                        }
                        (Some(f), true) => {
                            self.count_failure(tot, f)?;
                            self.queue(b".\r\n");
                            self.state = State::Abort;
                        }
                        (f, false) => {
                            self.count_failure(tot, f.unwrap_or(code))?;
                            self.queue(b"RSET\r\n");
                            self.state = State::Rset;
                        }
                    }
                }
            }
            State::Final => {
                if self.wants_write() {
                    self.count_failure(tot, code)?;
                    return Err(format!("final reply {code} before the data was sent"));
                }
                match code {
                    250 => {
                        tot.acked += 1;
                        if tot.lat_us.len() < MAX_SAMPLES {
                            tot.lat_us.push(micros(now - self.t_mail));
                            let d = self.t_data_end.map_or(Duration::ZERO, |t| now - t);
                            tot.data_lat_us.push(micros(d));
                        }
                        if let Some(w) = tot.ids.as_mut() {
                            if let Err(e) = writeln!(w, "{}-{}-{}", job.args.tag, self.id, self.n) {
                                tot.ids_error.get_or_insert(e.to_string());
                            }
                        }
                    }
                    c => self.count_failure(tot, c)?,
                }
                tot.last_final = Some(now);
                self.begin(job, tot, now);
            }
            State::Abort => {
                tot.last_final = Some(now);
                self.begin(job, tot, now);
            }
            State::Rset => {
                if code != 250 {
                    return Err(format!("RSET got {code}"));
                }
                tot.last_final = Some(now);
                self.begin(job, tot, now);
            }
            State::Quit => {
                self.state = State::Done;
            }
            State::Ready | State::Done | State::Failed => {
                return Err(format!("unexpected reply {code} in {:?}", self.state));
            }
        }
        Ok(())
    }

    /// Reads and handles every reply that has arrived, then writes.
    fn on_readable(&mut self, job: &mut Job, tot: &mut Totals, chunk: &mut [u8]) {
        let open = self.fill(chunk);
        let now = Instant::now();
        loop {
            match self.next_reply() {
                Ok(Reply::Code(c)) => {
                    if let Err(e) = self.on_reply(c, job, tot, now) {
                        return self.fail(e);
                    }
                    if !self.active() {
                        return;
                    }
                }
                Ok(Reply::None) => break,
                Err(e) => return self.fail(e),
            }
        }
        if open {
            self.flush(job.body);
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass; all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

fn percentile_ms(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let k = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(f64::from(sorted[k.min(sorted.len() - 1)]) / 1000.0)
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn opt(v: Option<f64>) -> String {
    v.map_or("null".into(), |x| format!("{x:.3}"))
}

/// A level-triggered epoll set: EPOLLIN always, EPOLLOUT while a
/// connection has something to write; each ready connection costs one
/// event, however many are idle (poll(2) would look at every one).
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new() -> Result<Epoll, String> {
        // SAFETY: plain syscall; a valid fd is owned by the OwnedFd.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(Epoll(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, c: &Conn, out: bool) -> Result<(), String> {
        let mut events = libc::EPOLLIN as u32;
        if out {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: c.id as u64,
        };
        // SAFETY: both fds are open; ev is a valid epoll_event.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, c.sock.as_raw_fd(), &mut ev) };
        if r != 0 {
            return Err(format!("epoll_ctl: {}", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Brings the registration in line with the connection's state;
    /// returns 1 when the connection just ended (to count it off).
    fn sync(&self, c: &mut Conn) -> Result<usize, String> {
        if !c.active() {
            if c.registered {
                c.registered = false;
                self.ctl(libc::EPOLL_CTL_DEL, c, false)?;
                return Ok(1);
            }
            return Ok(0);
        }
        let out = c.wants_write();
        if !c.registered {
            self.ctl(libc::EPOLL_CTL_ADD, c, out)?;
            c.registered = true;
            c.watching_out = out;
        } else if out != c.watching_out {
            self.ctl(libc::EPOLL_CTL_MOD, c, out)?;
            c.watching_out = out;
        }
        Ok(0)
    }

    fn wait(&self, events: &mut [libc::epoll_event], ms: i32) -> Result<usize, String> {
        let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: events is a valid buffer of at least `max` entries.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(format!("epoll_wait: {e}"));
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let body = make_body(args.size);
    let ids = match &args.ids {
        Some(p) => Some(BufWriter::new(
            File::create(p).map_err(|e| format!("--ids {p}: {e}"))?,
        )),
        None => None,
    };
    let mut tot = Totals {
        acked: 0,
        temp_failed: 0,
        perm_failed: 0,
        started: 0,
        lat_us: Vec::new(),
        data_lat_us: Vec::new(),
        last_final: None,
        ids,
        ids_error: None,
    };
    let mut envelope = Vec::new();
    let _ = write!(
        envelope,
        "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        args.from, args.to
    );
    let mut job = Job {
        args,
        body: &body,
        deadline: None,
        remaining: args.messages,
        envelope,
    };

    let connect_timeout = args.timeout.min(Duration::from_secs(10));
    let mut conns = Vec::with_capacity(args.connections);
    for id in 0..args.connections {
        let s = TcpStream::connect_timeout(&args.addr, connect_timeout)
            .map_err(|e| format!("connect {} (connection {id}): {e}", args.addr))?;
        s.set_nodelay(true)
            .and_then(|()| s.set_nonblocking(true))
            .map_err(|e| format!("socket options: {e}"))?;
        conns.push(Conn::new(id, s, args.pipelining));
    }

    let ep = Epoll::new()?;
    for c in &mut conns {
        ep.sync(c)?;
    }
    let mut active = conns.len();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns.len().min(1024)];
    let mut chunk = vec![0u8; 16 << 10];
    let mut t_start: Option<Instant> = None;
    let mut cpu_start = (0.0, 0.0);
    let mut last_check = Instant::now();
    // The loop ends when every connection is done or failed; a connection
    // without progress for --timeout fails, so this is bounded.
    while active > 0 {
        let now = Instant::now();
        if now.duration_since(last_check) >= Duration::from_millis(100) {
            last_check = now;
            for c in conns.iter_mut().filter(|c| c.active()) {
                if now.duration_since(c.last_progress) > args.timeout {
                    let s = c.state;
                    c.fail(format!("no progress for {:?} in {s:?}", args.timeout));
                    active -= ep.sync(c)?;
                }
            }
        }
        if t_start.is_none()
            && conns
                .iter()
                .all(|c| matches!(c.state, State::Ready | State::Failed))
        {
            // Everyone has said EHLO: the clock starts.
            let now = Instant::now();
            t_start = Some(now);
            cpu_start = cpu_seconds();
            job.deadline = args.seconds.map(|s| now + Duration::from_secs_f64(s));
            for c in conns.iter_mut().filter(|c| c.state == State::Ready) {
                c.last_progress = now;
                c.begin(&mut job, &mut tot, now);
                c.flush(&body);
                active -= ep.sync(c)?;
            }
            continue;
        }
        let n = ep.wait(&mut events, 250)?;
        for ev in &events[..n] {
            let Some(c) = usize::try_from(ev.u64).ok().and_then(|i| conns.get_mut(i)) else {
                return Err(format!("epoll returned an unknown connection {}", {
                    ev.u64
                }));
            };
            let flags = ev.events;
            if flags & libc::EPOLLOUT as u32 != 0 {
                c.flush(&body);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                c.on_readable(&mut job, &mut tot, &mut chunk);
            }
            active -= ep.sync(c)?;
            if c.state == State::Done && c.reopen {
                // `--per-connection`: a new connection in its place.
                let s = TcpStream::connect_timeout(&args.addr, connect_timeout).and_then(|s| {
                    s.set_nodelay(true)
                        .and_then(|()| s.set_nonblocking(true))
                        .map(|()| s)
                });
                match s {
                    Ok(s) => {
                        *c = c.replacement(s);
                        ep.sync(c)?;
                        active += 1;
                    }
                    Err(e) => c.error = Some(format!("connection {}: reconnect: {e}", c.id)),
                }
            }
        }
    }
    let t_end = Instant::now();
    let cpu_end = cpu_seconds();
    if let Some(mut w) = tot.ids.take() {
        if let Err(e) = w.flush() {
            tot.ids_error.get_or_insert(e.to_string());
        }
    }

    let start = t_start.unwrap_or(t_end);
    let seconds = tot
        .last_final
        .unwrap_or(t_end)
        .saturating_duration_since(start)
        .as_secs_f64();
    let wall = t_end.saturating_duration_since(start).as_secs_f64();
    let user = cpu_end.0 - cpu_start.0;
    let sys = cpu_end.1 - cpu_start.1;
    tot.lat_us.sort_unstable();
    tot.data_lat_us.sort_unstable();
    let errors: Vec<String> = conns
        .iter()
        .filter_map(|c| c.error.as_deref())
        .chain(tot.ids_error.as_deref())
        .take(5)
        .map(json_str)
        .collect();
    let conn_errors = conns.iter().filter(|c| c.error.is_some()).count();
    let pipelined = conns.iter().filter(|c| c.pipelining).count();
    let rate = if seconds > 0.0 {
        tot.acked as f64 / seconds
    } else {
        0.0
    };
    let pct = |cpu: f64| if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 };
    println!(
        "{{\"acked\":{},\"temp_failed\":{},\"perm_failed\":{},\"started\":{},\
\"connections\":{},\"pipelined_connections\":{},\"conn_errors\":{},\"size\":{},\
\"seconds\":{:.4},\"rate\":{:.1},\"p50_ms\":{},\"p99_ms\":{},\
\"data_p50_ms\":{},\"data_p99_ms\":{},\"cpu_user_s\":{:.4},\"cpu_sys_s\":{:.4},\
\"cpu_ms\":{:.1},\"wall_s\":{:.4},\"cpu_pct\":{:.2},\"errors\":[{}]}}",
        tot.acked,
        tot.temp_failed,
        tot.perm_failed,
        tot.started,
        conns.len(),
        pipelined,
        conn_errors,
        body.len(),
        seconds,
        rate,
        opt(percentile_ms(&tot.lat_us, 50.0)),
        opt(percentile_ms(&tot.lat_us, 99.0)),
        opt(percentile_ms(&tot.data_lat_us, 50.0)),
        opt(percentile_ms(&tot.data_lat_us, 99.0)),
        user,
        sys,
        (user + sys) * 1000.0,
        wall,
        pct(user + sys),
        errors.join(","),
    );
    Ok(conn_errors == 0 && tot.ids_error.is_none())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if args.dump {
        let mut m = Vec::new();
        make_head(&mut m, &args.from, &args.to, &format!("{}-0-1", args.tag));
        m.extend_from_slice(&make_body(args.size));
        return match io::stdout().write_all(&m) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_as_smtp_py_makes_it() {
        for size in [2 << 10, 64 << 10, 1 << 20] {
            let b = make_body(size);
            assert!(b.starts_with(b"From here on the body is filler.\r\n"));
            assert!(b.ends_with(b"\r\n.\r\n"));
            // 34 + 300 + 80 per line until >= size
            let lines = (size - 334).div_ceil(80);
            assert_eq!(b.len(), 34 + lines * 80 + 3);
        }
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), Some(51.0));
        assert_eq!(percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }
}
