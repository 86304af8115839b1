#!/usr/bin/env python3
"""Compares pimail's ENVELOPE, BODY and BODYSTRUCTURE with Dovecot's.

Feeds the same messages (default: src/store/mime/testdata/*.eml, one
stored message per file) to a private Dovecot (mbox storage, loopback,
a temporary directory) and to pimail's parser (`cargo run --example
mime_dump`), and prints each field that differs. Needs dovecot-imapd
(`apt-get install dovecot-imapd`); exits 0 when all agree, 1 otherwise.

    python3 bench/mime_dovecot.py [FILES...]
"""
import glob
import imaplib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from common import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Where pimail differs on purpose (docs/imap.md "MIME structure").
KNOWN = {
    ("mixed.eml", "BODYSTRUCTURE"): "Content-Location unfolded without spaces (RFC 2557 4.2)",
    ("noboundary.eml", "BODY"): "a multipart without delimiters: its text is part 1",
    ("noboundary.eml", "BODYSTRUCTURE"): "a multipart without delimiters: its text is part 1",
    ("quoted.eml", "RFC822.SIZE"): "mboxrd quoting undone (>From -> From), as POP3 sends it",
    ("quoted.eml", "BODY"): "mboxrd quoting undone (>From -> From), as POP3 sends it",
    ("quoted.eml", "BODYSTRUCTURE"): "mboxrd quoting undone (>From -> From), as POP3 sends it",
    ("addr.eml", "ENVELOPE"): "header text as written; Dovecot squeezes runs of spaces",
    ("ctbad.eml", "BODY"): "an unreadable Content-Type is text/plain (RFC 2045 5.2)",
    ("ctbad.eml", "BODYSTRUCTURE"): "an unreadable Content-Type is text/plain (RFC 2045 5.2)",
    ("truncated.eml", "RFC822.SIZE"): "an open last line gets CRLF, as POP3 sends it",
    ("truncated.eml", "BODY"): "an open last line gets CRLF, as POP3 sends it",
    ("truncated.eml", "BODYSTRUCTURE"): "an open last line gets CRLF, as POP3 sends it",
}


def start_dovecot(tmp, mbox_bytes):
    port = free_port()
    os.makedirs(f"{tmp}/mail", exist_ok=True)
    os.makedirs(f"{tmp}/run", exist_ok=True)
    with open(f"{tmp}/inbox", "wb") as f:
        f.write(mbox_bytes)
    for p in (tmp, f"{tmp}/mail", f"{tmp}/inbox"):
        os.chmod(p, 0o777 if os.path.isdir(p) else 0o666)
    conf = f"""
base_dir = {tmp}/run
log_path = {tmp}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = mbox:{tmp}/mail:INBOX={tmp}/inbox
mbox_read_locks = fcntl
mbox_write_locks = fcntl
passdb {{
  driver = static
  args = password=test
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={tmp}/mail
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""
    with open(f"{tmp}/dovecot.conf", "w") as f:
        f.write(conf)
    proc = subprocess.Popen(["dovecot", "-F", "-c", f"{tmp}/dovecot.conf"])
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("dovecot did not start; see " + f"{tmp}/dovecot.log")


def split_fetch(data):
    """imaplib's FETCH data (tuples for literals) back to one line."""
    out = []
    for item in data:
        if isinstance(item, tuple):
            head, lit = item
            out.append(head + b"\r\n" + lit)
        else:
            out.append(item)
    return b"".join(out)


def normalize(v):
    """Literals as quoted strings: both forms mean the same string."""
    if v is None:
        return None
    out = b""
    i = 0
    while i < len(v):
        m = re.match(rb"\{(\d+)\}\r\n", v[i:])
        if m:
            n = int(m.group(1))
            s = v[i + m.end():i + m.end() + n]
            out += b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            i += m.end() + n
        elif v[i:i + 1] == b'"':
            j = i + 1
            while j < len(v) and v[j:j + 1] != b'"':
                j += 2 if v[j:j + 1] == b"\\" else 1
            out += v[i:j + 1]
            i = j + 1
        else:
            out += v[i:i + 1]
            i += 1
    return out


def fields(line):
    """RFC822.SIZE n ENVELOPE (...) BODY (...) BODYSTRUCTURE (...) -> dict."""
    got = {}
    i = 0
    names = [b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE", b"BODY"]
    while i < len(line):
        for n in names:
            if line.startswith(n + b" ", i):
                i += len(n) + 1
                start = i
                depth = 0
                while i < len(line):
                    c = line[i:i + 1]
                    if c == b'"':
                        i += 1
                        while i < len(line) and line[i:i + 1] != b'"':
                            i += 2 if line[i:i + 1] == b"\\" else 1
                    elif c == b"{":
                        m = re.match(rb"\{(\d+)\}\r\n", line[i:])
                        if m:
                            i += m.end() + int(m.group(1)) - 1
                    elif c == b"(":
                        depth += 1
                    elif c == b")":
                        depth -= 1
                        if depth < 0:
                            break
                        if depth == 0:
                            i += 1
                            break
                    elif c == b" " and depth == 0:
                        break
                    i += 1
                got[n.decode()] = line[start:i]
                break
        else:
            i += 1
    return got


def main():
    files = sys.argv[1:] or sorted(glob.glob(f"{ROOT}/src/store/mime/testdata/*.eml"))
    if not shutil.which("dovecot"):
        sys.exit("dovecot is not installed (apt-get install dovecot-imapd)")
    mbox = b""
    for i, f in enumerate(files):
        data = open(f, "rb").read()
        mbox += b"From test@example.org Mon Jun  2 10:00:00 2025\n" + data
        # The blank separator line; a message without a last line end
        # stays open at the end of the file.
        if data.endswith(b"\n"):
            mbox += b"\n"
        elif i + 1 < len(files):
            mbox += b"\n\n"
    ours = subprocess.run(
        ["cargo", "run", "-q", "--example", "mime_dump", "--"] + files,
        cwd=ROOT, check=True, capture_output=True).stdout.split(b"\n")
    tmp = tempfile.mkdtemp(prefix="pimail-mime-dovecot-")
    proc, port = start_dovecot(tmp, mbox)
    bad = 0
    try:
        m = imaplib.IMAP4("127.0.0.1", port)
        m.login("test", "test")
        m.select("INBOX", readonly=True)
        for i, f in enumerate(files):
            typ, data = m.fetch(str(i + 1), "(RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE)")
            theirs = fields(split_fetch(data))
            mine = fields(ours[i])
            for k in ("RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE"):
                if normalize(theirs.get(k)) != normalize(mine.get(k)):
                    why = KNOWN.get((os.path.basename(f), k))
                    if why:
                        print(f"{os.path.basename(f)} {k}: differs as intended ({why})")
                        continue
                    bad += 1
                    print(f"{os.path.basename(f)} {k}:\n  dovecot {theirs.get(k)!r}\n  pimail  {mine.get(k)!r}")
        m.logout()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(files)} messages, {bad} fields differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
