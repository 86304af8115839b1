#!/usr/bin/env python3
"""IMAP kill -9 flood: no message that got `OK` is lost, none torn.

What it proves (SPEC "Reading: IMAP", nothing lost; issue 16 "Crash
safety"): while several IMAP clients flood `pimail serve` with APPEND,
MOVE and EXPUNGE, the server is killed with SIGKILL at a random moment (0
to --max-delay-ms after it is listening), restarted with the same config
and data directory, and killed again, --cycles times (bounded by
--max-seconds). The clients:

  appenders (--appenders, 2)  APPEND messages with unique ids
                              (`X-Fault-Id:`) to INBOX or Work; "k" ids
                              are kept, "d" ids (a third of INBOX's) are
                              for the expunger
  mover                       UID MOVE of up to 5 kept messages INBOX ->
                              Archive, then Archive -> INBOX, and so on
  expunger                    UID STORE +FLAGS (\\Deleted) and UID
                              EXPUNGE of the "d" messages in INBOX

Each message's expected place is the folder it was appended to, plus every
folder a MOVE of it was sent to (acknowledged or not). At the end the
server is stopped cleanly, every folder file is read by Python's
`mailbox.mbox` and a strict raw mboxrd parser (bench/faults/faultlib.py),
then the server is started once more and every folder is listed over IMAP
(UID FETCH 1:* of the X-Fault-Id header):

  acknowledged     APPENDs that got OK                            (count)
  lost             an acknowledged "k" message in none of its     must be 0
                   possible folders
  torn             a stored message not byte-identical to what    must be 0
                   was sent for its id (or without a known id),
                   or a folder file's structure faults
  misplaced        a message in a folder it was never sent to     must be 0
  duplicated       a message stored more than once (a MOVE cut    allowed
                   by the kill: in both folders)
  UID faults       a UID twice in one folder, a folder's IMAP     must be 0
                   listing not what its file holds, or a
                   (folder, UIDVALIDITY, UID) that named another
                   message earlier in the run (APPENDUID/COPYUID)
  resurrected      a "d" message whose UID EXPUNGE got OK, back   warning
                   after the restart

Exit status 1 on loss, tear, misplacement or a UID fault (the work
directory is then kept), 2 if too little was acknowledged to prove
anything.

    bench/faults/imap_kill9.py                       # 200 cycles or 600 s
    bench/faults/imap_kill9.py --cycles 10 --max-seconds 60
"""

import argparse
import collections
import os
import random
import re
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import faultlib as F  # noqa: E402
from imap import Imap, ImapError  # noqa: E402  (bench/imap.py's raw client)

PASSWORD = "secret"  # F.UNUSED_HASH is argon2id("secret"), m=64 KiB
FOLDERS = ["INBOX", "Work", "Archive"]
SERVER_FIELDS = (b"status:", b"x-status:", b"x-keywords:", b"x-uid:")
UNQUOTE = re.compile(rb"(?m)^>(>*From )")


def stored_to_sent(stored):
    """What the client APPENDed, from a stored message: the fields the
    server keeps flags in (Status:, X-Status:, X-Keywords:) and its seal
    (X-Pimail:) dropped from the header, mboxrd quoting undone, LF ->
    CRLF."""
    head, sep, body = stored.partition(b"\n\n")
    keep, skip = [], False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skip:
                keep.append(line)
            continue
        low = line.lower()
        skip = low.startswith(SERVER_FIELDS) or low.startswith(b"x-pimail:")
        if not skip:
            keep.append(line)
    msg = b"\n".join(keep) + sep + body
    if not msg.endswith(b"\n"):
        msg += b"\n"
    return UNQUOTE.sub(rb"\1", msg).replace(b"\n", b"\r\n")


def uid_set(text):
    out = []
    for part in text.split(","):
        if ":" in part:
            a, b = part.split(":")
            a, b = int(a), int(b)
            out += list(range(min(a, b), max(a, b) + 1))
        elif part:
            out.append(int(part))
    return out


class Flood:
    def __init__(self, addr, appenders, big):
        self.port = addr[1]
        self.big = big
        self.lock = threading.Lock()
        self.acked = {}  # id -> folder appended to
        self.attempted = set()
        self.places = collections.defaultdict(set)  # id -> folders it may be in
        self.uids = {}  # (folder, uidvalidity, uid) -> id, from APPENDUID/COPYUID
        self.uid_conflicts = []
        self.expunged_ok = set()
        self.expunge_sent = set()
        self.unnamed = 0
        self.history = collections.defaultdict(list)  # id -> events, for a post-mortem
        self.expunge_log = []  # (UIDVALIDITY, {uid: id or None}) per UID EXPUNGE sent
        self.moves_ok = 0
        self.moves_sent = 0
        self.expunges_ok = 0
        self.in_flight = {}  # thread -> what it is doing
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.appender, args=(w,), daemon=True)
                        for w in range(appenders)]
        self.threads.append(threading.Thread(target=self.mover, daemon=True))
        self.threads.append(threading.Thread(target=self.expunger, daemon=True))

    def start(self):
        for t in self.threads:
            t.start()

    def note_uid(self, folder, uv, uid, mid):
        key = (folder, uv, uid)
        with self.lock:
            old = self.uids.get(key)
            if old is not None and old != mid:
                self.uid_conflicts.append((key, old, mid))
            self.uids[key] = mid

    def connect(self):
        while not self.stop.is_set():
            try:
                c = Imap(self.port, timeout=20)
                c.login()
                return c
            except (OSError, ImapError):
                time.sleep(0.005)
        return None

    def session(self, name, body):
        """Runs body(c) on a connection, reconnecting after any error."""
        while not self.stop.is_set():
            c = self.connect()
            if c is None:
                return
            try:
                while not self.stop.is_set():
                    body(c)
            except (OSError, ImapError, ValueError):
                pass
            finally:
                self.in_flight.pop(name, None)
                try:
                    c.s.close()
                except OSError:
                    pass

    def appender(self, w):
        rng = random.Random(w)
        n = [0]

        def body(c):
            n[0] += 1
            folder = "INBOX" if rng.random() < 0.7 else "Work"
            kind = "d" if folder == "INBOX" and rng.random() < 0.33 else "k"
            mid = f"{kind}{w}-{n[0]}"
            data = F.make_message(mid, self.big)
            with self.lock:
                self.attempted.add(mid)
                self.places[mid].add(folder)
            self.in_flight[f"a{w}"] = mid
            tag = c.send(f"APPEND {folder} (\\Flagged) {{{len(data)}+}}")
            c.s.sendall(data + b"\r\n")
            resp, _, _ = c.finish(tag)
            self.in_flight.pop(f"a{w}", None)
            with self.lock:
                self.acked[mid] = folder
            m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", resp)
            if m:
                self.note_uid(folder, int(m.group(1)), int(m.group(2)), mid)
                with self.lock:
                    self.history[mid].append(f"APPEND OK {folder} UIDVALIDITY {m.group(1).decode()} UID {m.group(2).decode()}")

        self.session(f"a{w}", body)

    def ids_by_uid(self, c, uids):
        """UID -> X-Fault-Id for the given UIDs of the selected folder."""
        rows = fetch_fault_ids(c, ",".join(map(str, uids)))
        return {uid: mid for uid, mid in rows if mid is not None}

    def search(self, c, what):
        _, untagged, _ = c.cmd(f"UID SEARCH HEADER X-Fault-Id {what}")
        uids = []
        for u in untagged:
            if u.startswith(b"* SEARCH"):
                uids += [int(x) for x in u[8:].split()]
        return uids

    def mover(self):
        rng = random.Random(99)
        leg = [0]

        def body(c):
            src, dst = ("INBOX", "Archive") if leg[0] % 2 == 0 else ("Archive", "INBOX")
            leg[0] += 1
            c.cmd(f"SELECT {src}")
            uids = self.search(c, "k")
            if not uids:
                time.sleep(0.01)
                return
            pick = sorted(rng.sample(uids, min(len(uids), rng.randint(1, 5))))
            ids = self.ids_by_uid(c, pick)
            with self.lock:
                for u, mid in ids.items():
                    self.places[mid].add(dst)  # before the MOVE: it may land
                    self.history[mid].append(f"MOVE sent {src} UID {u} -> {dst}")
                self.moves_sent += 1
            self.in_flight["mover"] = list(ids.values())
            resp, untagged, _ = c.cmd("UID MOVE %s %s" % (",".join(map(str, pick)), dst))
            self.in_flight.pop("mover", None)
            with self.lock:
                self.moves_ok += 1
            for u in untagged + [resp]:
                m = re.search(rb"\[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]", u)
                if m:
                    uv = int(m.group(1))
                    for s, d in zip(uid_set(m.group(2).decode()), uid_set(m.group(3).decode())):
                        if s in ids:
                            self.note_uid(dst, uv, d, ids[s])

        self.session("mover", body)

    def expunger(self):
        def body(c):
            _, untagged, _ = c.cmd("SELECT INBOX")
            uv = None
            for u in untagged:
                m = re.search(rb"\[UIDVALIDITY (\d+)\]", u)
                if m:
                    uv = int(m.group(1))
            uids = self.search(c, "d")
            if not uids:
                time.sleep(0.01)
                return
            found = uids[:20]
            ids = self.ids_by_uid(c, found)
            with self.lock:
                self.expunge_log.append((uv, {u: ids.get(u) for u in found}))
                # SEARCH found it but FETCH did not name it: not expunged,
                # and counted (the server's FETCH and SEARCH disagree).
                self.unnamed += len([u for u in found if u not in ids])
            uids = [u for u in found if ids.get(u, "").startswith("d")]
            if not uids:
                time.sleep(0.01)
                return
            s = ",".join(map(str, uids))
            self.in_flight["expunger"] = list(ids.values())
            with self.lock:
                self.expunge_sent.update(ids.values())
            c.cmd(f"UID STORE {s} +FLAGS.SILENT (\\Deleted)")
            c.cmd(f"UID EXPUNGE {s}")
            self.in_flight.pop("expunger", None)
            with self.lock:
                self.expunged_ok.update(ids.values())
                self.expunges_ok += 1
            time.sleep(0.005)

        self.session("expunger", body)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def folder_path(srv, name):
    return srv.mbox if name == "INBOX" else os.path.join(srv.folders, name)


def read_folders(srv, attempted, big):
    """Per folder: the ids stored in file order, and problems (torn
    messages, structure faults)."""
    found, problems = {}, []
    for name in FOLDERS:
        path = folder_path(srv, name)
        ids = []
        found[name] = ids
        if not os.path.exists(path):
            continue
        probs = []
        with open(path, "rb") as f:
            raw = F.raw_mboxrd(f, probs)
            for i, stored in enumerate(F.python_mbox(path)):
                r = next(raw, None)
                if r != stored:
                    probs.append(f"message {i + 1}: Python's mailbox and the raw parse disagree")
                sent = stored_to_sent(stored)
                mid = F.id_of(sent)
                if mid is None or mid not in attempted:
                    problems.append(f"TORN {name} message {i + 1}: no known X-Fault-Id: {stored[:200]!r}")
                    ids.append(None)
                    continue
                want = F.make_message(mid, big)
                if sent != want:
                    problems.append(f"TORN {name} message {i + 1} (id {mid}): {F.first_difference(sent, want)}")
                ids.append(mid)
            rest = sum(1 for _ in raw)
            if rest:
                probs.append(f"the raw parse finds {rest} more message(s) than Python's mailbox")
        problems += [f"STRUCTURE {name}: {p}" for p in probs]
    return found, problems


def fetch_fault_ids(c, uid_set):
    """[(uid, X-Fault-Id or None)] for the messages of the selected folder
    in uid_set, from their FETCH responses."""
    rows = []
    cur = [None]

    def on_literal(n):
        buf = bytearray()
        cur[0] = buf
        return buf.extend

    def on_untagged(resp):
        m = re.search(rb"UID (\d+)", resp)
        if m and b" FETCH " in resp:
            mm = re.search(rb"X-Fault-Id: (\S+)", bytes(cur[0] or b""))
            rows.append((int(m.group(1)), mm.group(1).decode() if mm else None))
        cur[0] = None

    c.cmd(f"UID FETCH {uid_set} (UID BODY.PEEK[HEADER.FIELDS (X-Fault-Id)])",
          on_untagged=on_untagged, on_literal=on_literal)
    return rows


def imap_listing(srv):
    """Per folder over IMAP after a restart: (UIDVALIDITY, [(uid, id)])."""
    c = Imap(srv.imap_port, timeout=120)
    c.login()
    out = {}
    for name in FOLDERS:
        _, untagged, _ = c.cmd(f"SELECT {name}")
        uv = None
        for u in untagged:
            m = re.search(rb"\[UIDVALIDITY (\d+)\]", u)
            if m:
                uv = int(m.group(1))
        rows = fetch_fault_ids(c, "1:*")
        out[name] = (uv, rows)
    c.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=200, help="kill -9 / restart cycles (default 200)")
    ap.add_argument("--max-seconds", type=float, default=600, help="stop the cycles after this long (default 600)")
    ap.add_argument("--appenders", type=int, default=2, help="APPEND clients (default 2; plus a mover and an expunger)")
    ap.add_argument("--max-delay-ms", type=float, default=200, help="kill 0..this many ms after listening (default 200)")
    ap.add_argument("--big", action="store_true", help="also ~400 KiB messages (1 in 20)")
    F.add_run_args(ap, "imap-kill9")
    args = ap.parse_args()

    binary, seed, rng, work = F.start_run(args, "imap-kill9")
    F.log(f"imap_kill9: {args.cycles} cycles max, {args.max_seconds:.0f} s max, {args.appenders} appenders "
          f"+ mover + expunger, kill 0-{args.max_delay_ms:g} ms after listening, seed {seed}, work {work}")

    srv = F.Pimail(binary, work, imap=True)
    srv.start()
    c = Imap(srv.imap_port)
    c.login()
    try:
        c.cmd("CREATE Work")
    except ImapError:
        pass  # exists
    c.close()
    flood = Flood(srv.imap, args.appenders, args.big)
    flood.start()
    t0 = time.monotonic()
    cycles, in_flight, capped = 0, collections.Counter(), False
    try:
        for _ in range(args.cycles):
            if time.monotonic() - t0 > args.max_seconds:
                capped = True
                break
            time.sleep(rng.uniform(0, args.max_delay_ms / 1000.0))
            for k in list(flood.in_flight):
                in_flight[k[0]] += 1
            srv.kill9()
            cycles += 1
            srv.start()
            if cycles % 50 == 0:
                F.log(f"  {cycles} cycles, {time.monotonic() - t0:.0f} s, {len(flood.acked)} appends acknowledged, "
                      f"{flood.moves_ok} moves, {flood.expunges_ok} expunges")
        soak = time.monotonic() - t0
        time.sleep(0.5)  # the last server works a little without a kill
    finally:
        flood.finish()
        rc = srv.stop()

    found, problems = read_folders(srv, flood.attempted, args.big)
    srv.start()
    try:
        listing = imap_listing(srv)
    finally:
        srv.stop()

    where = collections.defaultdict(list)
    for name, ids in found.items():
        for mid in ids:
            if mid is not None:
                where[mid].append(name)
    lost = sorted(m for m, f in flood.acked.items() if m.startswith("k") and not where.get(m))
    lost_d = sorted(m for m, f in flood.acked.items()
                    if m.startswith("d") and not where.get(m) and m not in flood.expunge_sent)
    misplaced = sorted((m, n) for m, names in where.items() for n in names if n not in flood.places[m])
    dup = sorted(m for m, names in where.items() if len(names) > 1)
    resurrected = sorted(m for m in flood.expunged_ok if where.get(m))
    unacked_present = sorted(m for m in where if m not in flood.acked)

    uid_faults = []
    for name in FOLDERS:
        uv, rows = listing[name]
        uids = [u for u, _ in rows]
        if len(set(uids)) != len(uids):
            uid_faults.append(f"{name}: a UID twice: {[u for u, k in collections.Counter(uids).items() if k > 1][:10]}")
        if [m for _, m in rows] != found[name]:
            uid_faults.append(f"{name}: IMAP lists {len(rows)} messages, the file holds {len(found[name])} "
                              "(or in another order)")
        for u, m in rows:
            old = flood.uids.get((name, uv, u))
            if old is not None and m is not None and old != m:
                uid_faults.append(f"{name}: UID {u} (UIDVALIDITY {uv}) was {old} in the run, now {m}")
    for key, old, new in flood.uid_conflicts:
        uid_faults.append(f"{key[0]}: UID {key[2]} (UIDVALIDITY {key[1]}) given to {old} and later to {new}")
    validities = {n: listing[n][0] for n in FOLDERS}
    uv_seen = collections.defaultdict(set)
    for (name, uv, _) in flood.uids:
        uv_seen[name].add(uv)

    dotlock, lock_tmp = srv.litter()
    print(f"imap_kill9: {cycles} kill -9 cycles in {soak:.0f} s"
          + (f" (stopped by --max-seconds {args.max_seconds:g} before {args.cycles})" if capped else "")
          + f"; seed {seed}")
    print(f"  {args.appenders} appenders + mover + expunger, kill 0-{args.max_delay_ms:g} ms after listening; "
          f"kills during: APPEND {in_flight['a']}, MOVE {in_flight['m']}, EXPUNGE {in_flight['e']}")
    print(f"  appends acknowledged     {len(flood.acked)} (of {len(flood.attempted)} sent)")
    print(f"  moves acknowledged       {flood.moves_ok} (of {flood.moves_sent} sent); "
          f"expunges acknowledged {flood.expunges_ok} ({len(flood.expunged_ok)} messages)")
    print(f"  stored at the end        " + ", ".join(f"{n} {len(found[n])}" for n in FOLDERS))
    print(f"  lost                     {len(lost)}" + (f" (+{len(lost_d)} 'd' messages never expunged)" if lost_d else ""))
    print(f"  torn                     {sum(p.startswith('TORN') for p in problems)}")
    print(f"  structure problems       {sum(p.startswith('STRUCTURE') for p in problems)}")
    print(f"  misplaced                {len(misplaced)}")
    print(f"  duplicated               {len(dup)}")
    print(f"  UID faults               {len(uid_faults)}")
    print(f"  resurrected (warning)    {len(resurrected)}")
    print(f"  SEARCH hits FETCH did not name (warning) {flood.unnamed}")
    print(f"  unacknowledged present   {len(unacked_present)}")
    print(f"  UIDVALIDITY at the end   {validities}; seen in the run {dict((k, sorted(v)) for k, v in uv_seen.items())}")
    print(f"  clean stop exit code {rc}; beside the INBOX: dot-lock {'present' if dotlock else 'absent'}, "
          f"{lock_tmp} temporary dot-lock files")
    for m in (lost + lost_d)[:20]:
        print(f"  LOST {m} (appended to {flood.acked[m]}, may be in {sorted(flood.places[m])})")
        for h in flood.history[m]:
            print(f"    {h}")
            mm = re.match(r"APPEND OK INBOX UIDVALIDITY (\d+) UID (\d+)", h)
            if mm:
                uv, uid = int(mm.group(1)), int(mm.group(2))
                for euv, umap in flood.expunge_log:
                    if euv == uv and uid in umap:
                        print(f"    UID EXPUNGE sent for UID {uid}, which the expunger's FETCH named {umap[uid]}")
    for p in problems[:20]:
        print(f"  {p}")
    for m, n in misplaced[:20]:
        print(f"  MISPLACED {m} in {n} (sent only to {sorted(flood.places[m])})")
    for u in uid_faults[:20]:
        print(f"  UID {u}")
    for m in resurrected[:10]:
        print(f"  WARNING: {m} came back after its UID EXPUNGE got OK")

    if lost or lost_d or problems or misplaced or uid_faults:
        print(f"FAIL: kept {work} (folders, data dir, pimail.log) for inspection")
        return 1
    if len(flood.acked) < max(1, cycles // 10):
        print("INCONCLUSIVE: too few messages were acknowledged to prove anything")
        return 2
    print("PASS: no acknowledged message lost, none torn, UIDs unique")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
