#!/usr/bin/env python3
"""kill -9 during POP3 QUIT: a deletion is all or nothing, and no mail is lost.

What it proves (SPEC, "Nothing is lost" and the POP3 section): deletions
happen at QUIT and are crash-safe, and mail that arrives during a POP3
session is never lost when the session deletes messages. Each of --cycles
cycles (bounded by --max-seconds):

  1. tops the mbox up to --messages messages by SMTP (each with a unique
     `X-Fault-Id:`; sizes 1-96 KiB, with lines to quote and to dot-stuff);
  2. logs in by POP3 (USER/PASS; the password's hash comes from
     `pimail passwd`), checks STAT, that message n is the mbox's n-th
     message (TOP n 0) and that every UIDL is what it was in earlier
     sessions;
  3. DELEs some messages, while a second client keeps delivering by SMTP
     (and a few messages are delivered synchronously mid-session);
  4. sends QUIT and kills the server with SIGKILL 0 to --max-delay-ms later
     (during or just after the mbox rewrite), restarts it (same config,
     same data dir);
  5. reads the mbox (Python's `mailbox.mbox` and a strict mboxrd parse).

It must hold: the messages of the session's maildrop are either all there
or exactly the non-deleted ones, in order (never a partial deletion); every
message acknowledged with 250 during the session is there; nothing is torn
(every stored message is byte-identical to what was sent for its id); the
mbox structure is sound. A QUIT answered `+OK` whose deletion is undone
after the crash is counted and printed as a warning (mail comes back; not
a loss). Exit status 1 on any failure (the work directory is kept).

    bench/faults/pop3_quit_kill.py                  # 200 cycles or 600 s
    bench/faults/pop3_quit_kill.py --cycles 20      # a quick look
"""

import argparse
import os
import random
import secrets
import shutil
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as F  # noqa: E402


class Sender:
    """One SMTP client delivering messages back to back until stopped,
    recording what it sent and what got 250."""

    def __init__(self, addr, prefix):
        self.addr, self.prefix = addr, prefix
        self.acked, self.attempted = [], set()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        n = 0
        try:
            c = F.Smtp(self.addr, timeout=20)
            c.hello()
            while not self.stop.is_set():
                n += 1
                mid = f"{self.prefix}-{n}"
                self.attempted.add(mid)
                if c.send(F.make_message(mid, big=False))[0] == 250:
                    self.acked.append(mid)
        except (OSError, F.ProtocolError):
            pass  # the server was killed

    def start(self):
        self.t.start()

    def finish(self):
        self.stop.set()
        self.t.join(timeout=60)


def deliver(addr, ids):
    """Delivers `ids` synchronously; every one must get 250."""
    c = F.Smtp(addr)
    c.hello()
    for mid in ids:
        code, text = c.send(F.make_message(mid, big=False))
        if code != 250:
            raise F.ProtocolError(f"delivery of {mid} got {text}")
    c.close()


def quit_reply(sock):
    """What the server answered to QUIT before it died (b'' if nothing)."""
    sock.settimeout(2)
    got = b""
    try:
        while b"\r\n" not in got:
            d = sock.recv(4096)
            if not d:
                break
            got += d
    except OSError:
        pass
    return got.split(b"\r\n")[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=200, help="QUIT + kill -9 cycles (default 200)")
    ap.add_argument("--max-seconds", type=float, default=600, help="stop the cycles after this long (default 600)")
    ap.add_argument("--messages", type=int, default=30, help="messages in the mbox at each login (default 30)")
    ap.add_argument("--max-delay-ms", type=float, default=25, help="kill 0..this many ms after QUIT (default 25)")
    F.add_run_args(ap, "pop3")
    args = ap.parse_args()

    binary, seed, rng, work = F.start_run(args, "pop3")
    password = secrets.token_urlsafe(12)
    srv = F.Pimail(binary, work, pop3=True, password_hash=F.password_hash(binary, password))
    F.log(f"pop3_quit_kill: {args.cycles} cycles max, {args.max_seconds:.0f} s max, "
          f"{args.messages} messages, kill 0-{args.max_delay_ms:g} ms after QUIT, seed {seed}, work {work}")

    alive = []       # ids in mbox order, as last read from the mbox
    uidl_of = {}     # id -> UIDL, from every session so far
    seq = 0
    c = dict(cycles=0, deleted=0, undone=0, partial=0, quit_ok=0, quit_ok_undone=0,
             smtp_acked=0, smtp_lost=0, smtp_unacked_present=0, duplicated=0, torn=0,
             unknown=0, uidl_changed=0, view_mismatch=0, structure=0)
    failures = []
    t0 = time.monotonic()
    capped = False
    srv.start()
    try:
        for cycle in range(args.cycles):
            if time.monotonic() - t0 > args.max_seconds:
                capped = True
                break
            # 1. top up
            fill = []
            while len(alive) + len(fill) < args.messages:
                seq += 1
                fill.append(f"p3-{seq}")
            deliver(srv.smtp, fill)
            alive += fill

            # 2. log in, check the view
            p = F.Pop3(srv.pop3)
            p.login("alice", password)
            n = p.stat()
            view = [p.top_id(k) for k in range(1, n + 1)]
            uidls = p.uidl()
            if view != alive:
                c["view_mismatch"] += 1
                failures.append(f"cycle {cycle}: POP3 shows {len(view)} messages {view[:5]}..., "
                                f"the mbox {len(alive)} {alive[:5]}...")
                break
            for mid, u in zip(view, uidls):
                if uidl_of.setdefault(mid, u) != u:
                    c["uidl_changed"] += 1
                    failures.append(f"cycle {cycle}: UIDL of {mid} changed from {uidl_of[mid]} to {u}")

            # 3. DELE, with mail arriving meanwhile
            bg = Sender(srv.smtp, f"bg{cycle}")
            bg.start()
            ndel = rng.randint(1, max(1, n // 3)) if n <= 2 * args.messages else n - args.messages
            doomed = sorted(rng.sample(range(1, n + 1), ndel))
            for k in doomed:
                p.ok(f"DELE {k}")
            during = [f"s{cycle}-{i}" for i in range(rng.randint(1, 3))]
            deliver(srv.smtp, during)

            # 4. QUIT, kill -9 at a random moment, restart
            p.s.sendall(b"QUIT\r\n")
            time.sleep(rng.uniform(0, args.max_delay_ms / 1000.0))
            srv.kill9()
            reply = quit_reply(p.s)
            p.close()
            bg.finish()
            srv.start()
            c["cycles"] += 1

            # 5. check
            originals, problems = F.read_mbox(srv.mbox)
            c["structure"] += len(problems)
            failures += [f"cycle {cycle}: {x}" for x in problems]
            gone = {alive[k - 1] for k in doomed}
            kept = [m for m in alive if m not in gone]
            before = set(alive)
            new_sent = bg.attempted | set(during)
            new_acked = set(bg.acked) | set(during)
            ids = []
            for i, m in enumerate(originals):
                mid = F.id_of(m)
                if mid is None or (mid not in before and mid not in new_sent):
                    c["unknown"] += 1
                    failures.append(f"cycle {cycle}: message {i + 1} has an unknown id {mid}: {m[:200]!r}")
                    continue
                if m != F.make_message(mid, big=False):
                    c["torn"] += 1
                    failures.append(f"cycle {cycle}: TORN {mid}: {F.first_difference(m, F.make_message(mid, big=False))}")
                    continue
                ids.append(mid)
            old = [m for m in ids if m in before]
            quit_ok = reply.startswith(b"+OK")
            c["quit_ok"] += quit_ok
            if old == kept:
                c["deleted"] += 1
            elif old == alive:
                c["undone"] += 1
                if quit_ok:
                    c["quit_ok_undone"] += 1
            else:
                c["partial"] += 1
                failures.append(f"cycle {cycle}: PARTIAL deletion: {len(alive)} messages before, "
                                f"DELE {doomed}, {len(old)} of them after: "
                                f"missing {sorted(before - set(old))[:10]} (QUIT reply {reply!r})")
            present = set(ids)
            lost = sorted(new_acked - present)
            c["smtp_acked"] += len(new_acked)
            c["smtp_lost"] += len(lost)
            c["smtp_unacked_present"] += len((present & new_sent) - new_acked)
            c["duplicated"] += len(ids) - len(present)
            for mid in lost:
                failures.append(f"cycle {cycle}: LOST {mid} (250 during the POP3 session)")
            alive = ids
            if failures:
                break
            if c["cycles"] % 20 == 0:
                F.log(f"  {c['cycles']} cycles, {time.monotonic() - t0:.0f} s: "
                      f"{c['deleted']} deletions done, {c['undone']} undone")
    except (OSError, F.ProtocolError) as e:
        failures.append(f"cycle {c['cycles']}: {type(e).__name__}: {e}")
    finally:
        rc = srv.stop()
    secs = time.monotonic() - t0
    redone = srv.log_count("finishing a POP3 deletion that a crash interrupted")
    abandoned = srv.log_count("a POP3 deletion was interrupted, but the mbox has changed")

    print(f"pop3_quit_kill: {c['cycles']} QUIT + kill -9 cycles in {secs:.0f} s"
          + (f" (stopped by --max-seconds {args.max_seconds:g} before {args.cycles})" if capped else "")
          + f"; seed {seed}")
    print(f"  {args.messages} messages per login, kill 0-{args.max_delay_ms:g} ms after QUIT")
    print(f"  deletion complete after restart     {c['deleted']} "
          f"({redone} of them finished by the restart from the redo journal)")
    print(f"  deletion undone (all messages kept) {c['undone']}")
    print(f"  partial deletion                    {c['partial']}")
    print(f"  QUIT answered +OK before the kill   {c['quit_ok']}; of those undone: {c['quit_ok_undone']}")
    print(f"  interrupted deletions abandoned     {abandoned}")
    print(f"  SMTP during sessions: acknowledged {c['smtp_acked']}, lost {c['smtp_lost']}, "
          f"unacknowledged present {c['smtp_unacked_present']}, duplicated {c['duplicated']}")
    print(f"  torn {c['torn']}, unknown {c['unknown']}, UIDL changed {c['uidl_changed']}, "
          f"POP3 view != mbox {c['view_mismatch']}, mbox structure problems {c['structure']}")
    dotlock, lock_tmp = srv.litter()
    print(f"  clean stop exit code {rc}; beside the mbox: dot-lock {'present' if dotlock else 'absent'}, "
          f"{lock_tmp} temporary dot-lock files (mbox.lock.PID.SEQ) left by kills")
    if c["quit_ok_undone"]:
        print(f"  WARNING: {c['quit_ok_undone']} QUIT(s) answered +OK, yet the deleted messages were back "
              "after the crash (no loss, but the +OK came before the deletion was durable)")
    for f_ in failures[:20]:
        print(f"  FAILURE {f_}")
    if failures or rc != 0:
        print(f"FAIL: kept {work} (mbox, data dir, pimail.log) for inspection")
        return 1
    if c["deleted"] == 0 or c["undone"] == 0:
        print("NOTE: the kills never (or always) came before the deletion was durable; "
              "adjust --max-delay-ms for a stronger test")
    print("PASS: no partial deletion, nothing lost, nothing torn")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
