#!/usr/bin/env python3
"""POP3 benchmark: pimail against Dovecot's pop3 on the same mbox.

    python3 bench/pop3.py [--messages 10000] [--size 6700] [--rounds 10]

Builds (if needed) and runs target/release/pimail, and Dovecot (Debian
package dovecot-pop3d) with a private config on a loopback high port, both
as the current user, in a temporary directory; nothing on the machine is
changed. Both get the same generated mbox (default 10,000 messages, ~64
MiB, each with a Received header as pimail's SMTP side writes it).

Measured, with the mbox in the page cache (`cat` before each first login):
  first login   connect, USER/PASS, STAT answered; no index yet
  later login   the same again (median and best of --rounds), index present
  RETR          all messages, pipelined, MiB/s of POP3 octets received
                (median of 3)
Later logins and RETR runs alternate between the two servers, so that
load from elsewhere on the machine hits both alike.
The password hash for pimail is a cheap argon2 (as in the tests) so the
login times show the maildrop work; the cost of a default-strength hash
(`pimail passwd`) is printed separately.
"""

import argparse
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import dovecot_conf, dovecot_users, free_port
from common import start_dovecot as start_dovecot_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "secret"
# argon2id of "secret", m=64 KiB, t=1 (same as tests/common/mod.rs).
CHEAP_HASH = "$argon2id$v=19$m=64,t=1,p=1$d7bEe5+PDtR+c+lWi896vw$glblWHgdtnS/rmo83vVWocAP1oh4q0fcq6XvKfsvKO8"


def make_mbox(path, count, size):
    """An mboxrd file with `count` messages of about `size` bytes."""
    rnd = random.Random(42)
    words = "the quick brown fox jumps over lazy dog mail server pi raspberry message body text".split()
    t0 = 1_700_000_000
    with open(path, "wb") as f:
        for i in range(count):
            uid = "%08X%08X" % (t0 + i, 0x1000 + i)
            head = (
                "From bob@example.com Tue Nov 14 22:13:20 2023\n"
                "Return-Path: <bob@example.com>\n"
                "Received: from client.example ([192.0.2.7])\n"
                "\tby mail.example.org (pimail)\n"
                "\twith ESMTP id %s\n"
                "\tfor <alice@example.org>;\n"
                "\tTue, 14 Nov 2023 22:13:20 +0000\n"
                "From: Bob <bob@example.com>\n"
                "To: Alice <alice@example.org>\n"
                "Subject: message %d\n"
                "Message-ID: <%d@example.com>\n"
                "Date: Tue, 14 Nov 2023 22:13:20 +0000\n\n" % (uid, i, i)
            )
            body = []
            n = len(head)
            while n < size:
                line = " ".join(rnd.choice(words) for _ in range(12))
                r = rnd.random()
                if r < 0.01:
                    line = ">From " + line  # mboxrd-quoted "From "
                elif r < 0.02:
                    line = "." + line  # will be dot-stuffed
                body.append(line)
                n += len(line) + 1
            f.write(head.encode())
            f.write(("\n".join(body) + "\n\n").encode())


class Pop3:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.f = self.s.makefile("rb")
        self.expect_ok()

    def expect_ok(self):
        line = self.f.readline()
        if not line.startswith(b"+OK"):
            raise RuntimeError("POP3: %r" % line)
        return line

    def cmd(self, c):
        self.s.sendall(c.encode() + b"\r\n")
        return self.expect_ok()

    def close(self):
        try:
            self.cmd("QUIT")
        except Exception:
            pass
        self.s.close()


def login_to_stat(port):
    """Seconds from connect to the STAT answer, and the message count."""
    t = time.perf_counter()
    p = Pop3(port)
    p.cmd("USER alice")
    p.cmd("PASS " + PASSWORD)
    stat = p.cmd("STAT")
    dt = time.perf_counter() - t
    p.close()
    return dt, int(stat.split()[1])


def retr_all(port, n):
    """Pipelines RETR 1..n; returns (seconds, octets received)."""
    p = Pop3(port)
    p.cmd("USER alice")
    p.cmd("PASS " + PASSWORD)
    p.cmd("STAT")
    sock = p.s

    def writer():
        batch = []
        for i in range(1, n + 1):
            batch.append(b"RETR %d\r\n" % i)
            if len(batch) == 100:
                sock.sendall(b"".join(batch))
                batch = []
        if batch:
            sock.sendall(b"".join(batch))

    t = time.perf_counter()
    th = threading.Thread(target=writer)
    th.start()
    seen, total, tail = 0, 0, b""
    # The makefile buffer may hold bytes already: drain it first.
    while seen < n:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("connection closed after %d messages" % seen)
        total += len(chunk)
        data = tail + chunk
        seen += data.count(b"\r\n.\r\n")
        tail = data[-4:]
    dt = time.perf_counter() - t
    th.join()
    p.close()
    return dt, total


def start_pimail(work, mbox, pw_hash):
    data = os.path.join(work, "pimail-data")
    cfg = os.path.join(work, "pimail.toml")
    with open(cfg, "w") as f:
        f.write(
            'hostname = "mail.example.org"\ndomains = ["example.org"]\n'
            'data_dir = "%s"\n\n[user]\nname = "alice"\npassword = "%s"\n'
            'addresses = ["alice"]\nmbox = "%s"\n\n[listen]\nsmtp = []\n'
            'submission = []\npop3 = ["127.0.0.1:0"]\n' % (data, pw_hash, mbox)
        )
    binary = os.path.join(ROOT, "target", "release", "pimail")
    proc = subprocess.Popen(
        [binary, "serve", "--config", cfg],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        m = re.search(r"pop3 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            proc.log = []
            threading.Thread(target=lambda: proc.log.extend(proc.stderr), daemon=True).start()
            return proc, port
    raise RuntimeError("pimail did not start")


def start_dovecot(work, mbox):
    d = os.path.join(work, "dovecot")
    port = free_port()
    users = dovecot_users(d, mbox, owned=[work])
    cfg = os.path.join(d, "dovecot.conf")
    listeners = f"  inet_listener pop3 {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n"
    with open(cfg, "w") as f:
        f.write(dovecot_conf(d, mbox, PASSWORD, f"pimail-bench-{os.getpid()}", "pop3",
                             users, "pop3_uidl_format = %08Xu%08Xv\n", listeners))
    return start_dovecot_at(cfg, port, d), port


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def measure(servers, n, rounds):
    """servers: name -> (port, mbox). Later logins and RETR runs alternate
    between the servers, so that load from elsewhere on the machine hits
    both alike."""
    res = {name: {"later": [], "retr": []} for name in servers}
    for name, (port, mbox) in servers.items():
        warm(mbox)
        first, count = login_to_stat(port)
        assert count == n, f"{name}: STAT says {count} messages, wanted {n}"
        res[name]["first"] = first
    for _ in range(rounds):
        for name, (port, _) in servers.items():
            res[name]["later"].append(login_to_stat(port)[0])
    for _ in range(3):
        for name, (port, mbox) in servers.items():
            warm(mbox)
            dt, octets = retr_all(port, n)
            res[name]["retr"].append((dt, octets))
    out = {}
    for name, r in res.items():
        dt, octets = sorted(r["retr"])[1]
        out[name] = {
            "first": r["first"],
            "later": statistics.median(r["later"]),
            "later_min": min(r["later"]),
            "retr_mib_s": octets / dt / (1 << 20),
            "retr_s": dt,
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--size", type=int, default=6700)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if not os.path.exists("/usr/sbin/dovecot"):
        sys.exit("bench/pop3.py needs Dovecot: apt-get install dovecot-pop3d")
    subprocess.run(["cargo", "build", "--release", "-j", "2"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="pimail-bench-pop3-")
    procs = []
    try:
        src = os.path.join(work, "source.mbox")
        make_mbox(src, a.messages, a.size)
        size = os.path.getsize(src)
        print(f"mbox: {a.messages} messages, {size / (1 << 20):.1f} MiB")
        ours, theirs = os.path.join(work, "pimail.mbox"), os.path.join(work, "dovecot.mbox")
        shutil.copy(src, ours)
        shutil.copy(src, theirs)
        # On disk, as a real mbox would be: no writeback during the runs.
        for path in (ours, theirs):
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        os.unlink(src)

        proc, port = start_pimail(work, ours, CHEAP_HASH)
        procs.append(proc)
        dproc, dport = start_dovecot(work, theirs)
        procs.append(dproc)
        r = measure({"pimail": (port, ours), "dovecot": (dport, theirs)}, a.messages, a.rounds)
        p, d = r["pimail"], r["dovecot"]
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        # The server's own account of the maildrop work (index + scan).
        opens = [int(m.group(1)) for m in (re.search(r"maildrop (\d+) ms", l) for l in proc.log) if m]

        # A default-strength hash, as `pimail passwd` makes it.
        h = subprocess.run(
            [os.path.join(ROOT, "target", "release", "pimail"), "passwd"],
            input=PASSWORD + "\n", capture_output=True, text=True, check=True,
        ).stdout.strip()
        proc, port = start_pimail(work, ours, h)
        procs.append(proc)
        login_to_stat(port)
        strong = statistics.median(login_to_stat(port)[0] for _ in range(5))
        proc.send_signal(signal.SIGTERM)
        proc.wait()

        print(f"{'':28}{'pimail':>12}{'dovecot':>12}")
        print(f"{'first login to STAT (ms)':28}{p['first'] * 1000:12.1f}{d['first'] * 1000:12.1f}")
        print(f"{'later login to STAT (ms)':28}{p['later'] * 1000:12.1f}{d['later'] * 1000:12.1f}   median")
        print(f"{'':28}{p['later_min'] * 1000:12.1f}{d['later_min'] * 1000:12.1f}   best")
        print(f"{'RETR all, pipelined (MiB/s)':28}{p['retr_mib_s']:12.1f}{d['retr_mib_s']:12.1f}")
        print(f"{'RETR all (s)':28}{p['retr_s']:12.2f}{d['retr_s']:12.2f}")
        if opens:
            print(f"pimail's log: maildrop opened in {opens[0]} ms at the first login "
                  f"(full scan), {statistics.median(opens[1:]) if len(opens) > 1 else '-'} ms median later")
        print(f"pimail later login with a default-strength argon2 hash: {strong * 1000:.1f} ms")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.send_signal(signal.SIGTERM)
                try:
                    pr.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pr.kill()
        if a.keep:
            print("work directory:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
