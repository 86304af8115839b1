#!/usr/bin/env python3
"""IMAP benchmark: pimail against Dovecot's IMAP on copies of the same mbox.

    python3 bench/imap.py [--messages 20000] [--mib 1024] [--no-peers]
    bench/run --only imap            # as a section of bench/run
    bench/run --quick                # a small mailbox, pimail only

A section of bench/run (`run(ctx)`, `markdown(result)`) that also runs on
its own. Python 3 standard library only.

The INBOX is generated once, deterministically (seed 16), and cached under
target/bench-cache/ (outside bench/run's scratch directory, which is
removed after a run): by default 20,000 messages, ~1 GiB, a realistic mix
of plain text, multipart/alternative (text + HTML), multipart/mixed with
base64 attachments (a few KiB to a few MiB), forwarded message/rfc822
parts, RFC 2047 encoded words in Subject and From, RFC 2231 file names,
folded DKIM signatures and Received chains, and body lines the mbox must
quote (`From ` -> `>From `, mboxrd). Python's `mailbox` reads the cached
file once and the expected hash of every message is cached beside it.

pimail (target/release/pimail) and a private Dovecot (Debian's
dovecot-imapd, mbox storage, its own config, index and base directory in
the scratch directory, on free 127.0.0.1 ports, as the current user or
the `dovecot` user when run as root) each get a copy of the file, in the
same run. Measured for both, with the mbox in the page cache:

  SELECT first      after LOGIN, on a fresh server without any index
  SELECT restarted  the server restarted (its index kept), median of 3
  UID FETCH 1:* (UID FLAGS RFC822.SIZE)            median of 5
  FETCH 1:* (ENVELOPE BODYSTRUCTURE)  first (right after the first
                    SELECT) and cached (later, median of 3); for both
                    FETCH rows the client reads the answer in large
                    pieces and counts the responses (Imap.bulk): reading
                    it line by line in Python took ~30 ms of client CPU
                    for the 20,000 FLAGS lines, more than pimail's part
                    (its CPU share is printed)
  BODY[]            `FETCH 1:* (BODY.PEEK[])`, MB/s (10^6 bytes) of
                    literal octets, median of 3; the client is a raw
                    socket that counts literal lengths (its CPU share is
                    printed, so it is seen not to be the bottleneck)
  SEARCH TEXT       one word that is in ~1% of the plain-text bodies; the
                    result must be those messages
  IDLE push         SMTP `250` (pimail) / the MTA's append to the mbox
                    (Dovecot has no SMTP: an fcntl-locked append, as
                    Postfix's local(8) does) -> `* n EXISTS` in an IDLE
                    session; and APPEND's `OK` on another session ->
                    EXISTS; median of 20
  RSS               added by 10 sessions in IDLE (pimail: VmRSS of the
                    process; Dovecot: summed over all its processes)
  guard             every message's BODY[] octets hashed and compared
                    with Python's mailbox reading the source file: pimail
                    must serve exactly the message, mboxrd quoting undone
                    and LF -> CRLF (as POP3 does); Dovecot is checked the
                    same way but without undoing the quoting, which it
                    does not do (its guard failing does not fail the run)

Dovecot and pimail take turns within each phase, so load from elsewhere
on the machine hits both alike. Budgets from SPEC "Budgets" (IMAP) are
printed beside each row with "ok" or "MISS".
"""

import argparse
import base64
import glob
import hashlib
import json
import mailbox
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

from common import anon_kib, dovecot_conf, dovecot_users, free_port, rss_kib, start_dovecot, stop_process, tree_pids, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PASSWORD = "secret"
# argon2id of "secret", m=64 KiB, t=1 (as in tests/common/mod.rs): cheap, so
# login times show the mailbox work, not the password hash.
CHEAP_HASH = "$argon2id$v=19$m=64,t=1,p=1$d7bEe5+PDtR+c+lWi896vw$glblWHgdtnS/rmo83vVWocAP1oh4q0fcq6XvKfsvKO8"
SEED = 16
SEARCH_WORD = "zanzibarite"
GEN_VERSION = 1
MIB = 1 << 20


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---- the mailbox ----------------------------------------------------------------

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "if will more no out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take "
    "three meeting invoice report draft schedule project budget review update release server "
    "mail message folder backup raspberry garden weekend holiday photos tickets train "
    "dinner birthday school homework doctor appointment insurance contract"
).split()
NAMES = [
    ("Alice Martin", "alice.martin@example.org"), ("Bob Stone", "bob@example.com"),
    ("Carol Jones", "carol@example.net"), ("Dave", "dave@lists.example.com"),
    ("Eve Adams", "eve@example.co.uk"), ("Frank Müller", "frank@example.de"),
    ("Zoë Lefèvre", "zoe@example.fr"), ("Søren Kierkegaard", "soren@example.dk"),
    ("José García", "jose@example.es"), ("Łukasz Nowak", "lukasz@example.pl"),
    ("GitHub", "noreply@github.example"), ("Bank Statements", "statements@bank.example"),
]
SUBJECT_UTF8 = ["Grüße aus München", "Réunion de l'équipe — ordre du jour", "Café ☕ demain ?",
                "Ångström measurements", "Zażółć gęślą jaźń", "日本語のテスト", "Übersicht Q3"]
ATTACHMENTS = [("application/pdf", "report", "pdf"), ("image/jpeg", "IMG_", "jpg"),
               ("application/zip", "archive", "zip"), ("image/png", "screenshot", "png"),
               ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "budget", "xlsx")]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def encoded_word(text, rnd):
    """RFC 2047: B or Q encoding of UTF-8 (or Latin-1 where it fits)."""
    if rnd.random() < 0.5:
        return "=?UTF-8?B?%s?=" % base64.b64encode(text.encode()).decode()
    try:
        raw, cs = text.encode("iso-8859-1"), "ISO-8859-1"
    except UnicodeEncodeError:
        raw, cs = text.encode(), "UTF-8"
    q = "".join(chr(b) if (48 <= b < 58 or 65 <= b < 91 or 97 <= b < 123) else
                ("_" if b == 32 else "=%02X" % b) for b in raw)
    return "=?%s?Q?%s?=" % (cs, q)


def address(name, addr, rnd):
    if any(ord(c) > 127 for c in name):
        return "%s <%s>" % (encoded_word(name, rnd), addr)
    return '"%s" <%s>' % (name, addr) if rnd.random() < 0.3 else "%s <%s>" % (name, addr)


def text_lines(rnd, size, word=None):
    """LF lines of prose about `size` bytes; some begin with "From " (the
    mbox must quote them), the search word in one line if given."""
    out, n = [], 0
    while n < size:
        k = rnd.randint(6, 14)
        line = " ".join(rnd.choice(WORDS) for _ in range(k))
        r = rnd.random()
        if r < 0.004:
            line = "From " + line
        elif r < 0.006:
            line = ">From " + line
        elif r < 0.05:
            line = "> " + line
        elif r < 0.08:
            line = ""
        out.append(line)
        n += len(line) + 1
    if word:
        i = rnd.randrange(len(out))
        out[i] = (out[i] + " " + word).strip()
    return "\n".join(out) + "\n"


def b64_lines(data):
    return base64.encodebytes(data).decode()  # 76-character lines, LF


def date_of(i, count):
    """A date two years back for message 0, now-ish for the last."""
    t = 1_700_000_000 + (i * 63_072_000) // max(count, 1)
    tm = time.gmtime(t)
    return tm, t


def make_message(i, count, rnd, attach_scale, word):
    """(kind, message text with LF line ends, mbox From line)."""
    tm, t = date_of(i, count)
    fname, faddr = NAMES[rnd.randrange(len(NAMES))]
    tname, taddr = "Alice", "alice@example.org"
    r = rnd.random()
    kind = ("plain" if r < 0.50 else "alternative" if r < 0.75 else
            "attachment" if r < 0.94 else "rfc822")
    date = "%s, %d %s %d %02d:%02d:%02d +0000" % (
        DAYS[tm.tm_wday], tm.tm_mday, MONTHS[tm.tm_mon - 1], tm.tm_year, tm.tm_hour, tm.tm_min, tm.tm_sec)
    if rnd.random() < 0.2:
        subject = encoded_word(rnd.choice(SUBJECT_UTF8), rnd)
    else:
        subject = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 8))).capitalize()
        if rnd.random() < 0.2:
            subject = "Re: " + subject
    h = [
        "Return-Path: <%s>" % faddr,
        "Received: from mx.%s (mx.%s [192.0.2.%d])\n\tby mail.example.org (pimail) with ESMTPS id %08X%04X\n"
        "\tfor <alice@example.org>; %s" % (faddr.split("@")[1], faddr.split("@")[1], i % 250 + 1, t, i % 65536, date),
    ]
    if rnd.random() < 0.5:
        h.append("Received: from [10.0.0.%d] (unknown [198.51.100.%d])\n\tby mx.%s with ESMTPSA; %s"
                 % (i % 200, i % 200, faddr.split("@")[1], date))
    if rnd.random() < 0.4:
        sig = base64.b64encode(rnd.randbytes(180)).decode()
        h.append("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=%s; s=sel1;\n"
                 "\th=from:to:subject:date:message-id; bh=%s;\n\tb=%s\n\t%s"
                 % (faddr.split("@")[1], base64.b64encode(rnd.randbytes(32)).decode(), sig[:70], sig[70:]))
    h += ["From: " + address(fname, faddr, rnd), "To: " + address(tname, taddr, rnd)]
    if rnd.random() < 0.2:
        h.append("Cc: Bob Stone <bob@example.com>, carol@example.net")
    h += ["Subject: " + subject, "Date: " + date, "Message-ID: <%d.%08x@%s>" % (i, t, faddr.split("@")[1])]
    if rnd.random() < 0.3:
        h.append("In-Reply-To: <%d.%08x@example.org>\nReferences: <%d.%08x@example.org>"
                 % (i - 1, t - 99, i - 2, t - 199))
    if rnd.random() < 0.15:
        h.append("List-Id: Project discussion <project.lists.example.com>")
    h.append("MIME-Version: 1.0")
    text_size = int(rnd.lognormvariate(8.0, 0.8))  # median ~3 KB
    body_word = word if kind != "attachment" or True else None
    if kind == "plain":
        if rnd.random() < 0.2:
            h.append('Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: quoted-printable')
            body = text_lines(rnd, text_size, body_word).replace("the ", "th=C3=A9 ")
        else:
            h.append("Content-Type: text/plain; charset=us-ascii; format=flowed")
            body = text_lines(rnd, text_size, body_word)
    elif kind == "alternative":
        b = "=_alt_%08x_%d" % (t, i)
        h.append('Content-Type: multipart/alternative;\n\tboundary="%s"' % b)
        txt = text_lines(rnd, text_size, body_word)
        html = "<html><head><meta charset=\"utf-8\"></head><body>\n" + "".join(
            "<p>%s</p>\n" % p for p in txt.split("\n") if p) + "</body></html>\n"
        body = ("This is a multi-part message in MIME format.\n\n--%s\n"
                "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n%s\n--%s\n"
                "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n%s\n--%s--\n"
                % (b, txt, b, html, b))
    else:
        b = "=_mixed_%08x_%d" % (t, i)
        h.append('Content-Type: multipart/mixed; boundary="%s"' % b)
        parts = ["Content-Type: text/plain; charset=utf-8\n\n" + text_lines(rnd, text_size // 2 + 200, body_word)]
        if kind == "rfc822":
            iname, iaddr = NAMES[rnd.randrange(len(NAMES))]
            inner = ("From: %s\nTo: Bob <bob@example.com>\nSubject: %s\nDate: %s\nMessage-ID: <fwd%d@example.net>\n"
                     "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n%s"
                     % (address(iname, iaddr, rnd), encoded_word(rnd.choice(SUBJECT_UTF8), rnd), date, i,
                        text_lines(rnd, int(rnd.lognormvariate(8.5, 0.7)))))
            parts.append("Content-Type: message/rfc822\nContent-Disposition: inline\n\n" + inner)
        n_att = 1 if kind == "rfc822" and rnd.random() < 0.7 else rnd.choice([1, 1, 1, 2, 2, 3])
        if kind == "rfc822" and rnd.random() < 0.7:
            n_att = 0
        for k in range(n_att):
            ctype, stem, ext = ATTACHMENTS[rnd.randrange(len(ATTACHMENTS))]
            size = max(2000, int(rnd.lognormvariate(11.6, 1.1) * attach_scale))  # median ~110 KB
            size = min(size, 6 * MIB)
            if rnd.random() < 0.15:
                name = "Übersicht %d.%s" % (k + 1, ext)
                disp = "attachment;\n filename*=utf-8''%s" % "".join(
                    "%%%02X" % c if c > 127 or c == 32 else chr(c) for c in name.encode())
                cparams = '; name="%s"' % encoded_word(name, rnd)
            else:
                name = "%s%04d.%s" % (stem, i % 10000, ext)
                disp = 'attachment; filename="%s"' % name
                cparams = '; name="%s"' % name
            parts.append("Content-Type: %s%s\nContent-Transfer-Encoding: base64\nContent-Disposition: %s\n\n%s"
                         % (ctype, cparams, disp, b64_lines(rnd.randbytes(size * 3 // 4))))
        body = "This is a multi-part message in MIME format.\n" + "".join(
            "\n--%s\n%s" % (b, p) for p in parts) + "\n--%s--\n" % b
    msg = "\n".join(h) + "\n\n" + body
    from_line = "From %s %s %s %2d %02d:%02d:%02d %d" % (
        faddr, DAYS[tm.tm_wday], MONTHS[tm.tm_mon - 1], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year)
    return kind, msg, from_line


def mboxrd_quote(msg):
    """`>*From ` at a line start gets one more `>` (mboxrd)."""
    return re.sub(r"(?m)^(>*From )", r">\1", msg)


def generate(path, count, target_bytes, seed):
    """Writes the mbox; returns its facts (kinds, messages with the word)."""
    # A first pass with scale 1 estimates the attachment share; the real
    # pass scales attachment sizes so that the file comes out near target.
    scale = 1.0
    for attempt in range(2):
        rnd = random.Random(seed)
        tmp = path + ".tmp"
        kinds = {}
        words = []
        total = 0
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for i in range(count):
                word = SEARCH_WORD if rnd.random() < 0.01 else None
                kind, msg, from_line = make_message(i, count, rnd, scale, word)
                if word:
                    words.append(i + 1)
                kinds[kind] = kinds.get(kind, 0) + 1
                text = from_line + "\n" + mboxrd_quote(msg) + "\n"
                f.write(text)
                total += len(text.encode())
                if attempt == 0 and i >= min(count, 2000) - 1:
                    break
        if attempt == 0:
            done = i + 1
            est = total * count / done
            scale = max(0.01, target_bytes / est)
    os.replace(tmp, path)
    return {"messages": count, "bytes": os.path.getsize(path), "kinds": kinds, "search_hits": words,
            "scale": scale}


def wire_hashes(path):
    """sha1 of each message as an IMAP server should serve BODY[], from
    Python's mailbox: (pimail's form: mboxrd quoting undone, CRLF; the
    form without undoing the quoting, CRLF)."""
    box = mailbox.mbox(path, create=False)
    rd, raw = [], []
    unq = re.compile(rb"(?m)^>(>*From )")
    try:
        for k in box.keys():
            b = box.get_bytes(k)
            if not b.endswith(b"\n"):
                b += b"\n"
            crlf = b.replace(b"\n", b"\r\n")
            raw.append(hashlib.sha1(crlf).hexdigest())
            rd.append(hashlib.sha1(unq.sub(rb"\1", b).replace(b"\n", b"\r\n")).hexdigest())
    finally:
        box.close()
    return rd, raw


def cached_mbox(cache_dir, count, mib, seed=SEED):
    """The generated mbox and its facts, from the cache or made now."""
    os.makedirs(cache_dir, exist_ok=True)
    name = "imap-%d-%dMiB-seed%d-v%d" % (count, mib, seed, GEN_VERSION)
    path = os.path.join(cache_dir, name + ".mbox")
    meta_path = os.path.join(cache_dir, name + ".json")
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("bytes") == os.path.getsize(path):
            return path, meta
    log(f"imap: generating {count} messages, ~{mib} MiB (seed {seed}) into {path} ...")
    t = time.time()
    meta = generate(path, count, mib * MIB, seed)
    log(f"imap: generated {meta['bytes'] / MIB:.0f} MiB in {time.time() - t:.0f} s; hashing with Python's mailbox ...")
    t = time.time()
    meta["sha1_rd"], meta["sha1_raw"] = wire_hashes(path)
    log(f"imap: hashed in {time.time() - t:.0f} s")
    if len(meta["sha1_rd"]) != count:
        raise RuntimeError(f"Python's mailbox reads {len(meta['sha1_rd'])} messages, generated {count}")
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f)
    os.replace(meta_path + ".tmp", meta_path)
    return path, meta


# ---- a raw IMAP client ---------------------------------------------------------

LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class ImapError(Exception):
    pass


class Imap:
    """A minimal pipelining IMAP client on a raw socket: responses are read
    line by line, literals by their length, straight into a scratch buffer
    (a sink may see them), never parsed."""

    def __init__(self, port, timeout=300):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.scratch = bytearray(4 * MIB)
        self.n = 0
        g = self.line()
        if not g.startswith(b"* OK"):
            raise ImapError(f"greeting {g!r}")

    def more(self):
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.s.recv(4 * MIB)
        if not chunk:
            raise ImapError("connection closed")
        self.buf += chunk

    def line(self):
        while True:
            i = self.buf.find(b"\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos: i + 1])
                self.pos = i + 1
                return line
            self.more()

    def literal(self, n, sink=None):
        take = min(n, len(self.buf) - self.pos)
        if take:
            if sink:
                sink(self.buf[self.pos: self.pos + take])
            self.pos += take
            n -= take
        mv = memoryview(self.scratch)
        while n > 0:
            k = self.s.recv_into(mv, min(n, len(mv)))
            if k == 0:
                raise ImapError("connection closed in a literal")
            if sink:
                sink(mv[:k])
            n -= k
        mv.release()

    def response(self, on_literal=None):
        """One whole response (a line and its literals): (text without the
        literals' octets, number of literal octets)."""
        parts, octets = [], 0
        while True:
            line = self.line()
            parts.append(line)
            m = LITERAL.search(line)
            if not m:
                return b"".join(parts), octets
            n = int(m.group(1))
            octets += n
            self.literal(n, on_literal(n) if on_literal else None)

    def send(self, text):
        self.n += 1
        tag = b"a%d" % self.n
        self.s.sendall(tag + b" " + text.encode() + b"\r\n")
        return tag

    def cmd(self, text, on_untagged=None, on_literal=None):
        """Sends a command, reads to its tagged reply; returns (tagged line,
        untagged responses unless on_untagged takes them, literal octets)."""
        tag = self.send(text)
        return self.finish(tag, on_untagged, on_literal)

    def finish(self, tag, on_untagged=None, on_literal=None):
        untagged, octets = [], 0
        while True:
            resp, n = self.response(on_literal)
            octets += n
            if resp.startswith(tag + b" "):
                if not resp.startswith(tag + b" OK"):
                    raise ImapError(f"{resp!r}")
                return resp, untagged, octets
            if on_untagged:
                on_untagged(resp)
            else:
                untagged.append(resp)

    def bulk(self, text):
        """Sends a command answered by many untagged responses (FETCH
        1:*) and reads the answer in large pieces, not line by line: the
        line reader costs ~1.5 µs of Python per response, as much as the
        server's work for a FLAGS response, so it would time the client.
        Literals are skipped by their length. Returns (tagged line, number
        of FETCH responses)."""
        tag = self.send(text)
        # Received straight into `data` (no copy in Python); a CRLF in
        # front, so that every line follows one. Each byte is looked at by
        # C loops only: memchr for `}` (a literal's `{n}` CRLF), a count
        # of " FETCH (", and the last line for the tagged one.
        left = self.buf[self.pos:]
        self.buf, self.pos = bytearray(), 0
        data = self.big = getattr(self, "big", None) or bytearray(8 * MIB)
        if len(data) < 2 * len(left) + 2:
            data.extend(bytes(2 * len(left) + 2))
        data[: 2 + len(left)] = b"\r\n" + left
        fill, pos, count = 2 + len(left), 2, 0  # before pos: counted, no literal open
        while True:
            end = max(data.rfind(b"\r\n", pos - 2, fill) + 2, pos)  # past the last whole line
            lit = data.find(b"}", pos, end)
            while lit >= 0:  # a `{n}` CRLF literal announcement?
                k = lit
                while k > pos and 48 <= data[k - 1] <= 57:
                    k -= 1
                if pos < k < lit and data[k - 1] == 123 and data[lit + 1: lit + 3] == b"\r\n":
                    break
                lit = data.find(b"}", lit + 1, end)
            if lit >= 0:
                count += data.count(b" FETCH (", pos, k - 1)
                skip = lit + 3 + int(data[k:lit])
                if skip <= fill:
                    pos = skip
                    continue
                pos = k - 1  # the literal is not all here: from its `{`
            elif end > pos:
                # The tagged line ends the answer: the last line, if it
                # is outside any literal.
                t = data.rfind(b"\r\n", pos - 2, end - 2) + 2
                if data.startswith(tag + b" ", t):
                    count += data.count(b" FETCH (", pos, t)
                    tagged = bytes(data[t:end])
                    self.buf = data[end:fill]
                    if not tagged.startswith(tag + b" OK"):
                        raise ImapError(f"{tagged!r}")
                    return tagged, count
                count += data.count(b" FETCH (", pos, end)
                pos = end
            if fill == len(data):
                if pos > len(data) // 2:  # what is done moves out
                    data[: fill - pos + 2] = data[pos - 2: fill]
                    fill, pos = fill - pos + 2, 2
                else:  # a literal larger than the buffer
                    data.extend(bytes(len(data)))
            with memoryview(data) as mv:
                n = self.s.recv_into(mv[fill:])
            if n == 0:
                raise ImapError("connection closed")
            fill += n

    def login(self):
        self.cmd(f"LOGIN alice {PASSWORD}")
        return self

    def close(self):
        try:
            self.cmd("LOGOUT")
        except (OSError, ImapError):
            pass
        self.s.close()


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


# ---- the servers ------------------------------------------------------------------


class Pimail:
    name = "pimail"

    def __init__(self, binary, work, mbox):
        self.binary = binary
        self.work = work
        self.mbox = mbox
        self.port = free_port()
        self.smtp_port = free_port()
        self.data = os.path.join(work, "pimail-data")
        self.cfg = os.path.join(work, "pimail.toml")
        self.logpath = os.path.join(work, "pimail.log")
        with open(self.cfg, "w") as f:
            f.write(
                f'hostname = "mail.example.org"\ndomains = ["example.org"]\ndata_dir = "{self.data}"\n\n'
                f'[user]\nname = "alice"\npassword = "{CHEAP_HASH}"\naddresses = ["alice"]\n'
                f'mbox = "{mbox}"\nfolders = "{os.path.join(work, "pimail-folders")}"\n\n'
                f'[listen]\nsmtp = ["127.0.0.1:{self.smtp_port}"]\nsubmission = []\npop3 = []\n'
                f'imap = ["127.0.0.1:{self.port}"]\nlocal_submit = "{os.path.join(work, "submit.sock")}"\n\n'
                f'[limits]\nmax_connections = 1000\nmax_connections_per_ip = 1000\n\n'
                f"[inbound]\nauth_checks = false\n"
            )
        self.proc = None

    def start(self):
        logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", self.cfg],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf)
        logf.close()
        wait_port(self.port, self.proc)

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def rss_kib(self):
        return rss_kib(self.proc.pid)

    def anon_kib(self):
        return anon_kib(self.proc.pid)

    def cpu_ticks(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            st = f.read()
        v = st[st.rfind(")") + 2:].split()
        return int(v[11]) + int(v[12])

    def new_mail(self, i):
        """Delivers one message by SMTP; returns the time of the 250."""
        s = socket.create_connection(("127.0.0.1", self.smtp_port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line:
                    raise RuntimeError("SMTP connection closed")
                if line[3:4] != b"-":
                    return line

        reply()
        s.sendall(b"EHLO bench.example\r\n")
        reply()
        s.sendall(b"MAIL FROM:<push@example.com>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        for _ in range(3):
            reply()
        s.sendall(push_message(i).replace(b"\n", b"\r\n") + b".\r\n")
        r = reply()
        t = time.perf_counter()
        if not r.startswith(b"250"):
            raise RuntimeError(f"SMTP: {r!r}")
        s.sendall(b"QUIT\r\n")
        s.close()
        return t


def push_message(i):
    return (b"From: Push <push@example.com>\nTo: alice@example.org\nSubject: push %d\n"
            b"Date: Tue, 01 Dec 2026 12:00:00 +0000\nMessage-ID: <push%d@example.com>\n\nnew mail %d\n" % (i, i, i))


class Dovecot:
    name = "dovecot"

    def __init__(self, work, mbox):
        self.work = work
        self.mbox = mbox
        d = self.dir = os.path.join(work, "dovecot")
        self.port = free_port()
        users = dovecot_users(d, mbox, owned=[os.path.dirname(mbox)])
        if os.getuid() == 0:
            # mkdtemp's 0700 would keep the `dovecot` user out of the
            # directories above the mbox.
            p = os.path.dirname(mbox)
            while p != "/" and p.startswith(work):
                os.chmod(p, os.stat(p).st_mode | 0o711)
                p = os.path.dirname(p)
        self.cfg = os.path.join(d, "dovecot.conf")
        listeners = (f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {self.port}\n  }}\n"
                     "  inet_listener imaps {\n    port = 0\n  }\n")
        with open(self.cfg, "w") as f:
            f.write(dovecot_conf(d, mbox, PASSWORD, f"pimail-bench-imap-{os.getpid()}", "imap",
                                 users, "mbox_read_locks = fcntl\n", listeners))
        self.proc = None
        self.uid, self.gid = users[0], users[1]

    def start(self):
        self.proc = start_dovecot(self.cfg, self.port, self.dir)

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def restart(self):
        self.stop()
        time.sleep(0.3)  # its children finish
        self.start()

    def rss_kib(self):
        return sum(rss_kib(p) for p in tree_pids(self.proc.pid))

    def anon_kib(self):
        return sum(anon_kib(p) for p in tree_pids(self.proc.pid))

    def new_mail(self, i):
        """An MTA's mbox delivery (Postfix local(8)): fcntl lock, append the
        message with its From line, fsync, unlock. Returns when done."""
        import fcntl

        data = (b"From push@example.com Tue Dec  1 12:00:00 2026\n" + push_message(i) + b"\n")
        fd = os.open(self.mbox, os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.write(fd, data)
            os.fsync(fd)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return time.perf_counter()


# ---- measurements -----------------------------------------------------------------


def warm(path):
    with open(path, "rb") as f:
        while f.read(4 * MIB):
            pass


def read_once(path):
    """Seconds to read the file once from the page cache, 1 MiB reads (the
    median of 3)."""
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(MIB)
            while f.readinto(buf):
                pass
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def select(c):
    t, (resp, untagged, _) = timed(lambda: c.cmd("SELECT INBOX"))
    exists = None
    for u in untagged:
        m = re.match(rb"\* (\d+) EXISTS", u)
        if m:
            exists = int(m.group(1))
    return t, exists


def fetch_flags(c):
    """(seconds, FETCH responses, client CPU seconds)."""
    cpu = time.process_time()
    t, (_, k) = timed(lambda: c.bulk("UID FETCH 1:* (UID FLAGS RFC822.SIZE)"))
    return t, k, time.process_time() - cpu


def fetch_envelope(c):
    cpu = time.process_time()
    t, (_, k) = timed(lambda: c.bulk("FETCH 1:* (ENVELOPE BODYSTRUCTURE)"))
    return t, k, time.process_time() - cpu


def fetch_bodies(c, hashes=None):
    """FETCH 1:* (BODY.PEEK[]): (seconds, literal octets, messages, client
    CPU seconds); with `hashes`, each message's sha1 appended to it."""
    count = [0]

    def on_literal(n):
        count[0] += 1
        if hashes is None:
            return None
        h = hashlib.sha1()
        hashes.append(h)
        return h.update

    cpu = time.process_time()
    t, (_, _, octets) = timed(lambda: c.cmd("FETCH 1:* (BODY.PEEK[])", on_untagged=lambda r: None,
                                            on_literal=on_literal))
    return t, octets, count[0], time.process_time() - cpu


def search_text(c):
    t, (_, untagged, _) = timed(lambda: c.cmd(f"SEARCH TEXT {SEARCH_WORD}"))
    hits = []
    for u in untagged:
        if u.startswith(b"* SEARCH"):
            hits += [int(x) for x in u[8:].split()]
    return t, sorted(hits)


class Idler:
    """A session in IDLE; a thread notes when each `* n EXISTS` arrives."""

    def __init__(self, port):
        self.c = Imap(port).login()
        self.c.cmd("SELECT INBOX")
        self.tag = self.c.send("IDLE")
        line = self.c.line()
        if not line.startswith(b"+"):
            raise ImapError(f"IDLE: {line!r}")
        self.cond = threading.Condition()
        self.events = []  # (time, exists)
        self.stopped = False
        self.th = threading.Thread(target=self.reader, daemon=True)
        self.th.start()

    def reader(self):
        try:
            while True:
                resp, _ = self.c.response()
                now = time.perf_counter()
                m = re.match(rb"\* (\d+) EXISTS", resp)
                if m:
                    with self.cond:
                        self.events.append((now, int(m.group(1))))
                        self.cond.notify_all()
                if resp.startswith(self.tag + b" "):
                    return
        except (OSError, ImapError):
            pass
        finally:
            with self.cond:
                self.stopped = True
                self.cond.notify_all()

    def wait_exists(self, at_least, timeout=10):
        end = time.perf_counter() + timeout
        with self.cond:
            while True:
                for t, n in self.events:
                    if n >= at_least:
                        return t
                left = end - time.perf_counter()
                if left <= 0 or self.stopped:
                    return None
                self.cond.wait(left)

    def close(self):
        try:
            self.c.s.sendall(b"DONE\r\n")
            self.th.join(timeout=10)
        except OSError:
            pass
        self.c.close()


def idle_latency(server, exists, rounds, appender=None):
    """Median seconds from new mail (server.new_mail, or an APPEND on a
    second session when `appender`) to EXISTS in an IDLE session."""
    idler = Idler(server.port)
    lat, missed = [], 0
    try:
        for i in range(rounds):
            time.sleep(0.05 + random.random() * 0.1)  # not in step with a poll
            if appender:
                msg = push_message(10_000 + i).replace(b"\n", b"\r\n")
                tag = appender.send("APPEND INBOX {%d+}" % len(msg))
                appender.s.sendall(msg + b"\r\n")
                appender.finish(tag)
                t0 = time.perf_counter()
            else:
                t0 = server.new_mail(i)
            exists += 1
            t1 = idler.wait_exists(exists)
            if t1 is None:
                missed += 1
                with idler.cond:
                    if idler.events:
                        exists = max(exists, idler.events[-1][1])
                continue
            lat.append(max(0.0, t1 - t0))
    finally:
        idler.close()
    return (statistics.median(lat) if lat else None), max(lat) if lat else None, missed, exists


def idle_rss(server, n=10):
    """RSS added by n sessions that logged in, selected INBOX and idle: on
    a restarted server, after one session has selected INBOX and left (so
    the folder's index is loaded: that is the folder's memory, not the
    sessions')."""
    server.restart()
    # pimail drops the code pages start-up touched 2 s after listening
    # (issue 15): the baseline is taken after that.
    time.sleep(3.0)
    c = Imap(server.port).login()
    select(c)
    c.close()
    time.sleep(1.0)
    before = server.rss_kib()
    anon0 = server.anon_kib()
    idlers = [Idler(server.port) for _ in range(n)]
    time.sleep(1.5)
    during = server.rss_kib()
    server.anon_during = server.anon_kib() - anon0
    for x in idlers:
        x.close()
    return before, during


def measure(servers, meta, quick, idle_rounds):
    n = meta["messages"]
    res = {s.name: {} for s in servers}
    # Phase 1: fresh servers, no index: first SELECT, then the first
    # FETCH of ENVELOPE BODYSTRUCTURE in the same session.
    for s in servers:
        warm(s.mbox)
        c = Imap(s.port)
        t_login, _ = timed(c.login)
        t, exists = select(c)
        if exists != n:
            raise RuntimeError(f"{s.name}: SELECT says {exists} EXISTS, the mbox holds {n}")
        r = res[s.name]
        r["select_first"] = t
        r["login_first"] = t_login
        r["env_first"], k, _ = fetch_envelope(c)
        if k != n:
            raise RuntimeError(f"{s.name}: FETCH ENVELOPE returned {k} of {n}")
        c.close()
    log("imap: first SELECT and FETCH done")
    # Phase 2: restarts; the first SELECT after each, and later SELECTs.
    for s in servers:
        res[s.name]["select_restart"] = []
        res[s.name]["select_later"] = []
    for _ in range(3):
        for s in servers:
            s.restart()
            c = Imap(s.port).login()
            res[s.name]["select_restart"].append(select(c)[0])
            c.close()
            for _ in range(3):
                c = Imap(s.port).login()
                res[s.name]["select_later"].append(select(c)[0])
                c.close()
    log("imap: restarts done")
    # Phase 3: one session each; the servers take turns.
    conns = {}
    for s in servers:
        c = Imap(s.port).login()
        select(c)
        conns[s.name] = c
    for s in servers:
        res[s.name].update(flags=[], env=[], body=[], search=[])
    for _ in range(5):
        for s in servers:
            t, k, cpu = fetch_flags(conns[s.name])
            if k != n:
                raise RuntimeError(f"{s.name}: UID FETCH FLAGS returned {k} of {n}")
            res[s.name]["flags"].append(t)
            res[s.name].setdefault("fetch_cpu", []).append(cpu / t)
    for _ in range(3):
        for s in servers:
            t, k, cpu = fetch_envelope(conns[s.name])
            if k != n:
                raise RuntimeError(f"{s.name}: FETCH ENVELOPE returned {k} of {n}")
            res[s.name]["env"].append(t)
            res[s.name].setdefault("fetch_cpu", []).append(cpu / t)
    for _ in range(1 if quick else 3):
        for s in servers:
            t, hits = search_text(conns[s.name])
            res[s.name]["search"].append(t)
            res[s.name]["search_hits"] = hits
    for _ in range(3):
        for s in servers:
            t, octets, k, cpu = fetch_bodies(conns[s.name])
            if k != n:
                raise RuntimeError(f"{s.name}: FETCH BODY[] returned {k} of {n}")
            res[s.name]["body"].append((t, octets, cpu))
    log("imap: FETCH, SEARCH and BODY[] done")
    # The guard: every message's octets against Python's mailbox.
    for s in servers:
        hashes = []
        fetch_bodies(conns[s.name], hashes)
        got = [h.hexdigest() for h in hashes]
        want = meta["sha1_rd"] if s.name == "pimail" else meta["sha1_raw"]
        bad = [i + 1 for i in range(max(len(got), len(want)))
               if i >= len(got) or i >= len(want) or got[i] != want[i]]
        res[s.name]["guard_bad"] = bad[:20]
        res[s.name]["guard_bad_count"] = len(bad)
        if s.name != "pimail" and bad:
            # Dovecot keeps mboxrd quoting: the other form is checked too.
            bad2 = [i + 1 for i in range(min(len(got), len(meta["sha1_rd"]))) if got[i] != meta["sha1_rd"][i]]
            res[s.name]["guard_bad_rd_count"] = len(bad2)
    for c in conns.values():
        c.close()
    log("imap: guard done")
    # Phase 4: IDLE push latency.
    for s in servers:
        exists = n
        med, mx, missed, exists = idle_latency(s, exists, idle_rounds)
        res[s.name]["idle_new"] = (med, mx, missed)
        app = Imap(s.port).login()
        med, mx, missed, exists = idle_latency(s, exists, idle_rounds, appender=app)
        app.close()
        res[s.name]["idle_append"] = (med, mx, missed)
    log("imap: IDLE latency done")
    # Phase 5: memory of 10 IDLE sessions.
    for s in servers:
        res[s.name]["rss_before"], res[s.name]["rss_idle10"] = idle_rss(s)
        res[s.name]["anon_added"] = s.anon_during
    return res


def delivered_select(binary, work, src, count):
    """SPEC: "mail that pimail delivered needs no scan at first SELECT".
    A fresh pimail (empty INBOX, no IMAP index) gets the first `count`
    messages of the generated mbox by SMTP (one connection, pipelined
    MAIL/RCPT/DATA), is restarted, and the first SELECT is timed; also the
    time to read that mbox once, to see whether SELECT read it."""
    d = os.path.join(work, "delivered")
    os.makedirs(d)
    mbox = os.path.join(d, "inbox.mbox")
    srv = Pimail(binary, d, mbox)
    srv.start()
    box = mailbox.mbox(src, create=False)
    s = socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=120)
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("SMTP connection closed")
            if line[3:4] != b"-":
                return line

    try:
        reply()
        s.sendall(b"EHLO bench.example\r\n")
        reply()
        sent = 0
        t = time.perf_counter()
        for k in box.keys()[:count]:
            data = box.get_bytes(k)
            data = re.sub(rb"(?m)^>(>*From )", rb"\1", data)  # as the sender had it
            data = re.sub(rb"(?m)^\.", b"..", data).replace(b"\n", b"\r\n")
            s.sendall(b"MAIL FROM:<bench@example.com>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
            for _ in range(3):
                reply()
            s.sendall(data + (b"" if data.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            r = reply()
            if not r.startswith(b"250"):
                raise RuntimeError(f"SMTP: {r!r}")
            sent += 1
        t_smtp = time.perf_counter() - t
        s.sendall(b"QUIT\r\n")
    finally:
        s.close()
        box.close()
    # Three first SELECTs, the median (one sample on a shared machine is
    # mostly its noise): before each, the IMAP index (sidecar and MIME
    # records) is removed, so each is a first look at the delivered mail
    # with the writer's log of it, as after the deliveries.
    times = []
    for _ in range(3):
        srv.stop()
        for name in ("INBOX.index", "INBOX.mime"):
            for f in glob.glob(os.path.join(d, "**", name), recursive=True):
                os.remove(f)
        srv.start()
        warm(mbox)
        c = Imap(srv.port).login()
        t_sel, exists = select(c)
        c.close()
        times.append(t_sel)
    srv.stop()
    return {"messages": sent, "bytes": os.path.getsize(mbox), "select_first": sorted(times)[1],
            "select_first_all": times, "exists": exists,
            "read_once": read_once(mbox), "smtp_s": t_smtp}


# ---- the table ---------------------------------------------------------------------


def summarize(res, meta, read_s):
    p = res["pimail"]
    d = res.get("dovecot")
    rows = []

    def row(label, pv, dv, unit, fmt, budget, ok, ratio=None):
        rows.append({"row": label, "pimail": pv, "dovecot": dv, "unit": unit, "fmt": fmt,
                     "budget": budget, "ok": ok, "ratio": ratio})

    def med(x):
        return statistics.median(x)

    def body_mbs(r):
        t, octets, cpu = sorted(r["body"])[len(r["body"]) // 2]
        return octets / t / 1e6, cpu / t

    sp = p["select_first"]
    row("SELECT first (no index)", sp * 1e3, d and d["select_first"] * 1e3, "ms", "%.0f",
        f"≤ 1.5× reading the file once ({read_s * 1e3:.0f} ms): ≤ {1.5 * read_s * 1e3:.0f} ms",
        sp <= 1.5 * read_s, d and d["select_first"] / sp)
    sr = med(p["select_restart"])
    dr = d and med(d["select_restart"])
    row("SELECT after a restart", sr * 1e3, d and dr * 1e3, "ms", "%.1f",
        "< 10 ms and ≤ Dovecot's", sr < 0.010 and (not d or sr <= dr), d and dr / sr)
    dv = p.get("delivered")
    if dv:
        row(f"SELECT first, {dv['messages']} messages pimail delivered ({dv['bytes'] / MIB:.0f} MiB)",
            dv["select_first"] * 1e3, None, "ms", "%.1f",
            f"no scan: < 10 ms and < reading the file once ({dv['read_once'] * 1e3:.0f} ms)",
            dv["select_first"] < min(0.010, dv["read_once"]) and dv["exists"] == dv["messages"])
    sl = med(p["select_later"])
    row("SELECT, later sessions", sl * 1e3, d and med(d["select_later"]) * 1e3, "ms", "%.1f",
        "(no budget)", None, d and med(d["select_later"]) / sl)
    fp = med(p["flags"])
    fd = d and med(d["flags"])
    row("UID FETCH 1:* (UID FLAGS RFC822.SIZE)", fp * 1e3, d and fd * 1e3, "ms", "%.1f",
        "≥ 5× faster than Dovecot", (None if not d else fd / fp >= 5), d and fd / fp)
    ep, ec = p["env_first"], med(p["env"])
    dc = d and med(d["env"])
    row("FETCH 1:* (ENVELOPE BODYSTRUCTURE), first", ep * 1e3, d and d["env_first"] * 1e3, "ms", "%.0f",
        "≥ 3× faster than Dovecot's cached run", (None if not d else dc / ep >= 3), d and d["env_first"] / ep)
    row("FETCH 1:* (ENVELOPE BODYSTRUCTURE), cached", ec * 1e3, d and dc * 1e3, "ms", "%.0f",
        "≥ 3× faster than Dovecot's cached run", (None if not d else dc / ec >= 3), d and dc / ec)
    bp, cpu_p = body_mbs(p)
    bd, cpu_d = body_mbs(d) if d else (None, None)
    row("BODY[] of every message", bp, bd, "MB/s", "%.0f", "≥ 2× Dovecot's MB/s",
        (None if not d else bp / bd >= 2), d and bp / bd)
    sp_ = med(p["search"])
    sd = d and med(d["search"])
    row(f"SEARCH TEXT {SEARCH_WORD}", sp_ * 1e3, d and sd * 1e3, "ms", "%.0f", "≥ 2× faster than Dovecot",
        (None if not d else sd / sp_ >= 2), d and sd / sp_)
    for key, label in (("idle_new", "new mail (SMTP 250 / MTA append) -> EXISTS in IDLE"),
                       ("idle_append", "APPEND OK on another session -> EXISTS in IDLE")):
        pm = p[key][0]
        dm = d and d[key][0]
        row(label, pm and pm * 1e3, dm and dm * 1e3, "ms", "%.0f", "≤ 100 ms (median)",
            pm is not None and pm <= 0.100 and p[key][2] == 0, (dm / pm) if (d and pm and dm) else None)
    ip = (p["rss_idle10"] - p["rss_before"]) / 1024
    idd = d and (d["rss_idle10"] - d["rss_before"]) / 1024
    row("RSS added by 10 IDLE sessions", ip, idd, "MiB", "%.2f", "< 1 MiB", ip < 1,
        (idd / ip) if (d and ip > 0) else None)
    return rows


def table_text(rows, meta, res, read_s):
    p, d = res["pimail"], res.get("dovecot")
    out = []
    out.append(f"INBOX: {meta['messages']} messages, {meta['bytes'] / MIB:.0f} MiB "
               f"({', '.join(f'{k} {v}' for k, v in sorted(meta['kinds'].items()))}); "
               f"reading it once from the page cache: {read_s * 1e3:.0f} ms")
    w = 60
    out.append(f"{'':{w}}{'pimail':>10}{'Dovecot':>10}{'ratio':>8}  budget (SPEC)")
    for r in rows:
        pv = (r["fmt"] % r["pimail"]) if r["pimail"] is not None else "-"
        dv = (r["fmt"] % r["dovecot"]) if r["dovecot"] is not None else "-"
        ratio = ("%.1f×" % r["ratio"]) if r["ratio"] else ""
        verdict = "" if r["ok"] is None else ("ok" if r["ok"] else "MISS")
        out.append(f"{r['row'] + ' (' + r['unit'] + ')':{w}}{pv:>10}{dv:>10}{ratio:>8}  {r['budget']} {verdict}")
    out.append("ratio: how many times pimail is faster (times for times, MB/s for MB/s), "
               "or Dovecot's memory over pimail's")

    def body_cpu(r):
        t, octets, cpu = sorted(r["body"])[len(r["body"]) // 2]
        return 100 * cpu / t

    out.append(f"BODY[] client CPU (share of the wall time): pimail run {body_cpu(p):.0f} %"
               + (f", Dovecot run {body_cpu(d):.0f} %" if d else ""))

    def fetch_cpu(r):
        return 100 * max(r["fetch_cpu"])

    out.append(f"UID FETCH / FETCH ENVELOPE client CPU (share of the wall time, at most): "
               f"pimail run {fetch_cpu(p):.0f} %" + (f", Dovecot run {fetch_cpu(d):.0f} %" if d else ""))
    want = meta["search_hits"]
    for name, r in res.items():
        hits = r.get("search_hits")
        out.append(f"{name}: SEARCH TEXT found {len(hits)} of the {len(want)} messages with the word"
                   + ("" if hits == want else f" (DIFFERENT: {hits[:10]}...)"))
        g = r["guard_bad_count"]
        extra = ""
        if name != "pimail" and "guard_bad_rd_count" in r:
            extra = f" ({r['guard_bad_rd_count']} differ from the form with quoting undone)"
        out.append(f"{name}: guard, BODY[] octets equal to Python's mailbox reading the file: "
                   + ("all %d messages" % meta["messages"] if g == 0 else f"{g} DIFFER{extra}, first {r['guard_bad'][:5]}"))
        for key, label in (("idle_new", "new mail"), ("idle_append", "APPEND")):
            med, mx, missed = r[key]
            out.append(f"{name}: IDLE {label} -> EXISTS: median {med * 1e3 if med is not None else float('nan'):.0f} ms, "
                       f"max {mx * 1e3 if mx is not None else float('nan'):.0f} ms, {missed} not seen within 10 s")
        out.append(f"{name}: RSS before the 10 IDLE sessions {r['rss_before'] / 1024:.1f} MiB, "
                   f"with them {r['rss_idle10'] / 1024:.1f} MiB (RssAnon {r['anon_added'] / 1024:+.2f} MiB); first LOGIN {r['login_first'] * 1e3:.0f} ms")
    out.append(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return "\n".join(out)


def bench(binary, work, count, mib, peers, quick, cache_dir, idle_rounds=20):
    src, meta = cached_mbox(cache_dir, count, mib)
    servers = []
    try:
        ours = os.path.join(work, "pimail", "inbox.mbox")
        os.makedirs(os.path.dirname(ours))
        shutil.copyfile(src, ours)
        servers.append(Pimail(binary, work, ours))
        if peers:
            theirs = os.path.join(work, "dovecot-mail", "inbox.mbox")
            os.makedirs(os.path.dirname(theirs))
            shutil.copyfile(src, theirs)
            servers.append(Dovecot(work, theirs))
        for s in servers:
            fd = os.open(s.mbox, os.O_RDONLY)
            os.fsync(fd)  # on disk, as a real mbox: no writeback during the runs
            os.close(fd)
            s.start()
        read_s = read_once(ours)
        res = measure(servers, meta, quick, idle_rounds)
        for s in servers:
            s.stop()
        log("imap: SELECT on mail pimail delivered")
        res["pimail"]["delivered"] = delivered_select(binary, work, src, 100 if quick else 2000)
    finally:
        for s in servers:
            s.stop()
    rows = summarize(res, meta, read_s)
    text = table_text(rows, meta, res, read_s)
    failed = res["pimail"]["guard_bad_count"] != 0 or res["pimail"]["search_hits"] != meta["search_hits"]
    return {"mbox": {k: v for k, v in meta.items() if not k.startswith("sha1")},
            "read_once_s": read_s, "raw": res, "rows": rows, "text": text, "failed": failed,
            "misses": [r["row"] for r in rows if r["ok"] is False]}


# ---- bench/run section ------------------------------------------------------------


def run(ctx):
    quick = ctx.quick
    peers = not ctx.no_peers and os.path.exists("/usr/sbin/dovecot")
    count, mib = (300, 8) if quick else (20000, 1024)
    work = ctx.workdir("imap")
    cache = os.path.join(ctx.repo, "target", "bench-cache")
    r = bench(ctx.binary, work, count, mib, peers, quick, cache, idle_rounds=5 if quick else 20)
    if not peers and not ctx.no_peers:
        r["note"] = "Dovecot not installed (apt-get install dovecot-imapd): pimail only"
    ctx.log(r["text"])
    return r


def markdown(r):
    md = "## IMAP (`bench/imap.py`)\n\n"
    if r.get("note"):
        md += r["note"] + "\n\n"
    md += "```\n" + r["text"] + "\n```\n"
    if r["misses"]:
        md += "\nBudgets missed: " + "; ".join(r["misses"]) + " (docs/bench.md, IMAP, says why).\n"
    if r["failed"]:
        md += "\n**FAILED**: pimail served bytes that differ from the mailbox, or SEARCH found the wrong messages.\n"
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--mib", type=int, default=1024, help="size of the generated INBOX (default 1024)")
    ap.add_argument("--no-peers", action="store_true", help="pimail only")
    ap.add_argument("--quick", action="store_true", help="300 messages, 8 MiB, fewer rounds")
    ap.add_argument("--idle-rounds", type=int, default=20)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "pimail"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "target", "bench-cache"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    if a.quick:
        a.messages, a.mib, a.idle_rounds = 300, 8, 5
    peers = not a.no_peers
    if peers and not os.path.exists("/usr/sbin/dovecot"):
        sys.exit("bench/imap.py needs Dovecot: apt-get install dovecot-imapd (or --no-peers)")
    if not os.path.exists(a.binary):
        sys.exit(f"{a.binary} missing: cargo build --release")
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="imap-", dir=os.path.join(ROOT, "target"))
    try:
        r = bench(a.binary, work, a.messages, a.mib, peers, a.quick, a.cache, a.idle_rounds)
        print(r["text"])
        if a.json:
            with open(a.json, "w") as f:
                json.dump(r, f, indent=1)
        sys.exit(1 if r["failed"] else 0)
    finally:
        if a.keep:
            print("work directory:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
