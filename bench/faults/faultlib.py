"""Shared pieces of the fault scripts in bench/faults/ (standard library only).

- `Pimail`: writes a config (loopback, a port chosen free at run time and
  kept across restarts, so every restart is "same config, same data dir"),
  starts `pimail serve`, waits for its `listening:` line, kills it with
  SIGKILL or stops it with SIGTERM. The log goes to a file, never a pipe (a
  pipe this script lags behind on could stall the server).
- `Smtp` / `Pop3`: minimal clients over real sockets.
- `make_message(id)`: a deterministic message for an id (size and content
  follow from the id), with lines the mbox must quote (`From `, `>From `)
  and lines SMTP must dot-stuff, so "intact" is checked byte for byte.
- `iter_mbox(path, problems)` / `read_mbox(path)`: the mbox read twice, by
  Python's `mailbox.mbox` and by a strict raw mboxrd parser, streaming;
  their disagreement or any structural fault
  (a `From ` line without the empty line before it, a file not ending in an
  empty line...) is reported.
- `classify(...)`: acknowledged / lost / duplicated / torn / unacknowledged
  but present, from what the mbox holds and what the clients recorded.
"""

import collections
import mailbox
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/
from common import free_port  # noqa: E402  (bench/common.py)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_BINARY = os.path.join(REPO, "target", "release", "pimail")
DEFAULT_WORK = os.path.join(REPO, "target", "faults")  # on the real disk: fsyncs are real
RCPT = "alice@example.org"
SENDER = "faults@sender.example"
ID_HEADER = b"X-Fault-Id: "


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_binary(path, build):
    """The release binary; builds it with `cargo build --release` if asked or missing."""
    if build or not os.path.exists(path):
        if path != DEFAULT_BINARY:
            sys.exit(f"{path} does not exist")
        log("building: cargo build --release")
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    return path


def add_run_args(ap, work_name):
    """The options every fault script takes: --seed, --binary, --build,
    --work (default target/faults/<work_name>-PID) and --keep."""
    ap.add_argument("--seed", type=int, default=None, help="seed for the kill delays and other random choices")
    ap.add_argument("--binary", default=DEFAULT_BINARY)
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    ap.add_argument("--work", default=None, help=f"scratch directory (default target/faults/{work_name}-PID)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")


def start_run(args, work_name):
    """From add_run_args' options: the binary (built if asked or missing),
    the seed (random if not given), its Random, and a fresh, empty scratch
    directory. Returns (binary, seed, rng, work)."""
    binary = ensure_binary(args.binary, args.build)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    work = args.work or os.path.join(DEFAULT_WORK, f"{work_name}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    return binary, seed, rng, work


def password_hash(binary, password):
    """`pimail passwd`, the password on stdin, prints the hash for the config."""
    out = subprocess.run(
        [binary, "passwd"], input=(password + "\n").encode(), capture_output=True, check=True
    )
    h = out.stdout.decode().strip().splitlines()[-1]
    if not h.startswith("$argon2"):
        raise RuntimeError(f"pimail passwd printed {out.stdout!r}")
    return h


# A fixed hash of "unused" with tiny argon2 parameters, for scripts that never log in.
UNUSED_HASH = "$argon2id$v=19$m=64,t=1,p=1$d7bEe5+PDtR+c+lWi896vw$glblWHgdtnS/rmo83vVWocAP1oh4q0fcq6XvKfsvKO8"


class Pimail:
    def __init__(self, binary, work, pop3=False, password_hash=UNUSED_HASH,
                 mbox=None, data_dir=None, logpath=None, imap=False):
        self.binary = binary
        self.work = work
        self.mbox = mbox or os.path.join(work, "mbox")
        self.data_dir = data_dir or os.path.join(work, "data")
        self.logpath = logpath or os.path.join(work, "pimail.log")
        self.config = os.path.join(work, "pimail.toml")
        self.smtp_port = free_port()
        self.pop3_port = free_port() if pop3 else None
        self.imap_port = free_port() if imap else None
        self.folders = os.path.join(work, "folders")
        listen = f'smtp = ["127.0.0.1:{self.smtp_port}"]\n'
        if pop3:
            listen += f'pop3 = ["127.0.0.1:{self.pop3_port}"]\n'
        if imap:
            listen += f'imap = ["127.0.0.1:{self.imap_port}"]\n'
        listen += f'local_submit = "{os.path.join(work, "submit.sock")}"\n'
        with open(self.config, "w") as f:
            f.write(
                f'hostname = "mail.example.org"\ndomains = ["example.org"]\n'
                f'data_dir = "{self.data_dir}"\n\n'
                f'[user]\nname = "alice"\npassword = "{password_hash}"\n'
                f'addresses = ["alice"]\nmbox = "{self.mbox}"\nfolders = "{self.folders}"\n\n'
                f"[listen]\n{listen}\n"
                f'[limits]\nmax_message_size = "8M"\nmax_connections = 1000\n'
                f"max_connections_per_ip = 1000\n\n"
                # No DNS from loopback tests: no SPF/DKIM/DMARC on port 25.
                f"[inbound]\nauth_checks = false\n"
            )
        self.proc = None
        self.starts = 0

    @property
    def smtp(self):
        return ("127.0.0.1", self.smtp_port)

    @property
    def pop3(self):
        return ("127.0.0.1", self.pop3_port)

    @property
    def imap(self):
        return ("127.0.0.1", self.imap_port)

    def start(self, timeout=20.0):
        """Starts `pimail serve` and waits for its `listening:` log line.
        The listening socket may still be held for a moment by the killed
        process's exit: a failed start is retried, bounded."""
        for attempt in range(50):
            with open(self.logpath, "ab") as logf:
                offset = logf.tell()
                self.proc = subprocess.Popen(
                    [self.binary, "serve", "--config", self.config],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                )
            end = time.monotonic() + timeout
            while True:
                with open(self.logpath, "rb") as f:
                    f.seek(offset)
                    text = f.read()
                if b"listening:" in text:
                    self.starts += 1
                    return
                if self.proc.poll() is not None:
                    break
                if time.monotonic() > end:
                    self.kill9()
                    raise RuntimeError("pimail did not start within %.0f s:\n%s" % (timeout, text.decode(errors="replace")))
                time.sleep(0.0005)
            if b"Address already in use" in text or b"address in use" in text.lower():
                time.sleep(0.05)
                continue
            raise RuntimeError("pimail exited at start (%s):\n%s" % (self.proc.returncode, text.decode(errors="replace")))
        raise RuntimeError("pimail could not bind its ports after 50 attempts")

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()
        self.proc = None

    def stop(self, timeout=30):
        """SIGTERM and wait; SIGKILL if it does not stop in time. The exit code."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log("pimail did not stop on SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def litter(self):
        """Files a killed pimail left beside the mbox: the dot-lock itself
        (`mbox.lock`) and the temporary files it is made from
        (`mbox.lock.PID.SEQ`), as (dot-lock present?, temporary files)."""
        d, base = os.path.split(self.mbox)
        names = os.listdir(d)
        return base + ".lock" in names, sum(n.startswith(base + ".lock.") for n in names)

    def log_count(self, needle):
        with open(self.logpath, "rb") as f:
            return f.read().count(needle.encode())


# ---- messages ----------------------------------------------------------------


def make_message(mid, big=True):
    """The message (CRLF lines, not dot-stuffed) sent for id `mid`. Its size
    follows from the id: mostly 1-8 KiB, some 32-96 KiB, a few ~400 KiB (when
    `big`), so kills land in small and long appends alike."""
    rng = random.Random(mid)
    r = rng.random()
    if r < 0.70:
        size = rng.randint(1 << 10, 8 << 10)
    elif r < 0.95 or not big:
        size = rng.randint(32 << 10, 96 << 10)
    else:
        size = rng.randint(300 << 10, 500 << 10)
    head = (
        f"From: Faults <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: fault test {mid}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{mid}@faults>\r\n"
        f"X-Fault-Id: {mid}\r\n\r\n"
    ).encode()
    lines = [f"{mid} starts here\r\n".encode()]
    n = len(head) + len(lines[0])
    i = 0
    while n < size:
        k = i % 40
        if k == 7:
            line = f"From the body of {mid}, line {i}: the mbox must quote this\r\n"
        elif k == 17:
            line = f">>From already quoted twice, {mid} line {i}\r\n"
        elif k == 27:
            line = f".leading dot {mid} line {i}; SMTP must stuff this\r\n"
        elif k == 33:
            line = ".\r\n" if i % 80 == 33 else "..\r\n"
        else:
            line = f"{mid} line {i:06d} " + "abcdefghijklmnopqrstuvwxyz0123456789"[: 10 + (i * 7) % 26] + "\r\n"
        lines.append(line.encode())
        n += len(line)
        i += 1
    lines.append(f"{mid} ends here\r\n".encode())
    return head + b"".join(lines)


def dot_stuff(data):
    out = []
    for line in data.split(b"\r\n")[:-1]:
        out.append(b"." + line if line.startswith(b".") else line)
    return b"\r\n".join(out) + b"\r\n"


def id_of(original):
    """The X-Fault-Id of a message in CRLF form (header part only), or None."""
    head = original.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line.startswith(ID_HEADER):
            return line[len(ID_HEADER):].decode(errors="replace")
    return None


# ---- clients -----------------------------------------------------------------


class ProtocolError(Exception):
    pass


class Smtp:
    def __init__(self, addr, timeout=30):
        self.s = socket.create_connection(addr, timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self):
        """(code, text of the last line)."""
        while True:
            i = self.buf.find(b"\r\n")
            while i >= 0:
                line = self.buf[: i + 2]
                self.buf = self.buf[i + 2:]
                if len(line) < 4 or line[3:4] != b"-":
                    code = int(line[:3]) if line[:3].isdigit() else 0
                    return code, line.decode(errors="replace").strip()
                i = self.buf.find(b"\r\n")
            data = self.s.recv(65536)
            if not data:
                raise ProtocolError("connection closed")
            self.buf += data

    def hello(self):
        if self.reply()[0] != 220:
            raise ProtocolError("no greeting")
        self.s.sendall(b"EHLO faults.client\r\n")
        if self.reply()[0] != 250:
            raise ProtocolError("EHLO refused")

    def send(self, data, on_data_sent=None):
        """One message, MAIL/RCPT/DATA pipelined; returns (code, text) of the
        reply after the data. `on_data_sent` runs once the whole message is
        written and before the reply is read."""
        self.s.sendall(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode())
        replies = (self.reply(), self.reply(), self.reply())
        if [r[0] for r in replies] != [250, 250, 354]:
            raise ProtocolError(f"MAIL/RCPT/DATA got {replies}")
        self.s.sendall(dot_stuff(data) + b".\r\n")
        if on_data_sent:
            on_data_sent()
        return self.reply()

    def close(self):
        try:
            self.s.sendall(b"QUIT\r\n")
            self.reply()
        except (OSError, ProtocolError):
            pass
        self.s.close()


class Pop3:
    def __init__(self, addr, timeout=30):
        self.s = socket.create_connection(addr, timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")
        g = self.line()
        if not g.startswith(b"+OK"):
            raise ProtocolError(f"POP3 greeting {g!r}")

    def line(self):
        line = self.f.readline()
        if not line:
            raise ProtocolError("connection closed")
        return line.rstrip(b"\r\n")

    def cmd(self, c):
        self.s.sendall(c.encode() + b"\r\n")
        return self.line()

    def ok(self, c):
        r = self.cmd(c)
        if not r.startswith(b"+OK"):
            raise ProtocolError(f"{c.split()[0]} -> {r!r}")
        return r

    def multi(self):
        out = []
        while True:
            line = self.f.readline()
            if not line:
                raise ProtocolError("connection closed in a multi-line reply")
            if line == b".\r\n":
                return out
            out.append(line[1:] if line.startswith(b".") else line)

    def login(self, user, password):
        self.ok(f"USER {user}")
        self.ok(f"PASS {password}")

    def stat(self):
        return int(self.ok("STAT").split()[1])

    def uidl(self):
        self.ok("UIDL")
        return [l.rstrip(b"\r\n").split(b" ", 1)[1].decode() for l in self.multi()]

    def top_id(self, n):
        """The X-Fault-Id of message n (TOP n 0)."""
        self.ok(f"TOP {n} 0")
        return id_of(b"".join(self.multi()) + b"\r\n")

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


# ---- reading the mbox ----------------------------------------------------------

FROM_LINE = re.compile(rb"^From \S+ (Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}$")


def raw_mboxrd(f, problems):
    """A strict, streaming mboxrd parse of the open file `f`: yields each
    message's content (after its From line, without the empty line that
    ends it) and appends to `problems`. Every `From ` line at a line start
    begins a message (bodies are quoted, so no other line may begin so); it
    must look like `From <sender> <asctime>` and follow an empty line (or
    start the file); the file must end with an empty line."""
    cur, prev_empty, last, no = None, True, [b"", b""], 0
    for line in iter(f.readline, b""):
        no += 1
        last = [last[1], line]
        if line.startswith(b"From "):
            if no == 1:
                pass
            elif not prev_empty:
                problems.append(f"line {no}: a From line without an empty line before it "
                                "(a message cut short, then another one)")
            if not FROM_LINE.match(line.rstrip(b"\n")):
                problems.append(f"line {no}: malformed From line {line[:100]!r}")
            if cur is not None:
                yield ended(cur)
            cur = []
        elif cur is None:
            if no == 1:
                problems.append(f"the mbox does not start with a From line: {line[:100]!r}")
            cur = []
        else:
            cur.append(line)
        prev_empty = line == b"\n"
    if cur is not None:
        if last[1] != b"\n" or not last[0].endswith(b"\n"):
            problems.append("the mbox does not end with an empty line (last message cut short?) "
                            f"tail={(last[0] + last[1])[-80:]!r}")
        yield ended(cur)


def ended(lines):
    """A message's content: its lines without the empty line that ends it."""
    if lines and lines[-1] == b"\n":
        lines = lines[:-1]
    return b"".join(lines)


def python_mbox(path):
    """Each message's bytes (after the From line), one at a time, as Python's
    mailbox module reads them."""
    box = mailbox.mbox(path, create=False)
    try:
        for k in box.keys():
            yield box.get_bytes(k)
    finally:
        box.close()


def original_from_stored(stored):
    """What the client sent, from a stored message: the trace headers pimail
    adds (`Return-Path:`, its `X-Pimail:` seal, and the first `Received:`
    with its continuation lines) removed, mboxrd quoting undone (`>+From ` loses one `>`), LF ->
    CRLF."""
    out, skipping, in_received = [], True, False
    for line in stored.split(b"\n")[:-1] if stored.endswith(b"\n") else stored.split(b"\n"):
        if skipping:
            if line.startswith(b"Return-Path:") or line.startswith(b"X-Pimail:"):
                continue
            if line.startswith(b"Received:") and not in_received:
                in_received = True
                continue
            if in_received and line[:1] in (b"\t", b" "):
                continue
            skipping = False
        n = len(line) - len(line.lstrip(b">"))
        if n > 0 and line[n:].startswith(b"From "):
            line = line[1:]
        out.append(line + b"\r\n")
    return b"".join(out)


def iter_mbox(path, problems):
    """Each stored message turned back into what was sent, in mbox order,
    one at a time (the mbox of a long soak is GiBs). Every structural
    problem found by either parser, or a disagreement between them, is
    appended to `problems`."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        raw = raw_mboxrd(f, problems)
        n = 0
        for py in python_mbox(path):
            n += 1
            r = next(raw, None)
            if r != py:
                problems.append(f"Python's mailbox and the raw parse disagree on message {n}")
                if r is None:
                    break
            yield original_from_stored(py)
        rest = sum(1 for _ in raw)
        if rest:
            problems.append(f"the raw parse finds {rest} more message(s) than Python's mailbox ({n})")


def read_mbox(path):
    """(originals, problems): the whole mbox as a list (for small ones)."""
    problems = []
    originals = list(iter_mbox(path, problems))
    return originals, problems


def classify(originals, acked, attempted, expected_of):
    """Counts from the mbox's messages (in sent form) and the ids the clients
    recorded. `acked`: ids whose final 250 arrived; `attempted`: every id
    whose data was sent; `expected_of(id)`: the bytes sent for the id.

    torn: a message whose bytes are not exactly those sent for its id, or
    that carries no (known) id at all."""
    seen = collections.Counter()
    torn = []
    stored = 0
    for i, m in enumerate(originals):
        stored += 1
        mid = id_of(m)
        if mid is None or mid not in attempted:
            torn.append((i, mid, f"no known X-Fault-Id: {m[:200]!r}"))
            continue
        if m != expected_of(mid):
            torn.append((i, mid, first_difference(m, expected_of(mid))))
            continue
        seen[mid] += 1
    lost = sorted(set(acked) - set(seen))
    dup = sorted(k for k, v in seen.items() if v > 1)
    unacked_present = sorted(set(seen) - set(acked))
    return {
        "stored": stored,
        "acknowledged": len(set(acked)),
        "lost": lost,
        "duplicated": dup,
        "torn": torn,
        "unacknowledged_present": unacked_present,
        "attempted_unacknowledged": len(set(attempted) - set(acked)),
    }


def first_difference(got, want):
    i = 0
    while i < min(len(got), len(want)) and got[i] == want[i]:
        i += 1
    return (f"{len(got)} bytes stored vs {len(want)} sent; first difference at byte {i}: "
            f"stored {got[max(0, i - 40):i + 40]!r} sent {want[max(0, i - 40):i + 40]!r}")
