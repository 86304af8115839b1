#!/usr/bin/env python3
"""kill -9 soak: no acknowledged message is ever lost or torn.

What it proves (SPEC, Principles, "Nothing is lost"): while several SMTP
clients flood `pimail serve`, the server is killed with SIGKILL at a random
moment (0 to --max-delay-ms after it is listening, so kills land before a
client connects, mid-DATA, mid-append and mid-fsync), restarted with the
same config and data directory, and killed again, --cycles times (bounded
by --max-seconds). Each message carries a unique id (`X-Fault-Id:` header
and Subject); a client records the id as acknowledged only when the final
`250` after DATA arrived. At the end the server is stopped cleanly and the
mbox is read by Python's `mailbox.mbox` and by a strict raw mboxrd parser:

  acknowledged            ids that got 250
  lost                    acknowledged ids not in the mbox          must be 0
  torn                    stored messages not byte-identical to     must be 0
                          what was sent for their id (or without
                          a known id), and mbox structure faults
  duplicated              ids stored more than once                 allowed
  unacknowledged present  stored but no 250 seen (killed between    allowed
                          the fsync and the reply)

Exit status 1 if anything was lost or torn (the work directory is then
kept for inspection), 2 if too little was acknowledged to prove anything.

    bench/faults/kill9_soak.py                      # 1000 cycles or 900 s
    bench/faults/kill9_soak.py --cycles 50 --max-seconds 60   # a quick look
"""

import argparse
import os
import random
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as F  # noqa: E402


class Flood:
    """`clients` threads, each sending messages back to back on one
    connection and reconnecting (every 2 ms, while the server is down)
    after any error."""

    def __init__(self, addr, clients, big):
        self.addr = addr
        self.big = big
        self.acked = []
        self.attempted = set()
        self.current = [None] * clients  # id whose data is on the wire, per client
        self.refused = {}  # final replies other than 250
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.worker, args=(w,), daemon=True)
                        for w in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def in_flight(self):
        return [m for m in self.current if m is not None]

    def worker(self, w):
        n = 0
        while not self.stop.is_set():
            try:
                c = F.Smtp(self.addr, timeout=20)
            except OSError:
                time.sleep(0.002)
                continue
            try:
                c.hello()
                while not self.stop.is_set():
                    n += 1
                    mid = f"k9-{w}-{n}"
                    data = F.make_message(mid, self.big)
                    self.attempted.add(mid)  # before any byte of it is sent
                    self.current[w] = mid
                    code, text = c.send(data)
                    self.current[w] = None
                    if code == 250:
                        self.acked.append(mid)
                    else:
                        self.refused[code] = self.refused.get(code, 0) + 1
            except (OSError, F.ProtocolError):
                pass
            finally:
                self.current[w] = None
                c.s.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=1000, help="kill -9 / restart cycles (default 1000)")
    ap.add_argument("--max-seconds", type=float, default=900, help="stop the cycles after this long (default 900)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent SMTP connections (default 4)")
    ap.add_argument("--max-delay-ms", type=float, default=50, help="kill 0..this many ms after listening (default 50)")
    ap.add_argument("--no-big", action="store_true", help="no ~400 KiB messages (1 in 20 otherwise)")
    F.add_run_args(ap, "kill9")
    args = ap.parse_args()

    binary, seed, rng, work = F.start_run(args, "kill9")
    F.log(f"kill9_soak: {args.cycles} cycles max, {args.max_seconds:.0f} s max, "
          f"{args.clients} clients, kill 0-{args.max_delay_ms:g} ms after listening, seed {seed}, work {work}")

    srv = F.Pimail(binary, work)
    srv.start()
    flood = Flood(srv.smtp, args.clients, not args.no_big)
    flood.start()
    t0 = time.monotonic()
    soak_seconds = 0.0
    cycles = 0
    kills_in_flight = 0
    capped = False
    try:
        for cycle in range(args.cycles):
            if time.monotonic() - t0 > args.max_seconds:
                capped = True
                break
            time.sleep(rng.uniform(0, args.max_delay_ms / 1000.0))
            if flood.in_flight():
                kills_in_flight += 1
            srv.kill9()
            cycles += 1
            srv.start()
            if cycles % 100 == 0:
                F.log(f"  {cycles} cycles, {time.monotonic() - t0:.0f} s, {len(flood.acked)} acknowledged")
        soak_seconds = time.monotonic() - t0
        time.sleep(0.5)  # the last server takes some mail without a kill
    finally:
        flood.finish()
        rc = srv.stop()

    problems = []
    r = F.classify(F.iter_mbox(srv.mbox, problems), flood.acked, flood.attempted, lambda m: F.make_message(m, not args.no_big))
    repaired = srv.log_count("removing an incomplete message left by a crash")
    spool = os.path.join(srv.data_dir, "spool")
    leftover = len(os.listdir(spool)) if os.path.isdir(spool) else 0
    dotlock, lock_tmp = srv.litter()

    print(f"kill9_soak: {cycles} kill -9 cycles in {soak_seconds:.0f} s"
          + (f" (stopped by --max-seconds {args.max_seconds:g} before {args.cycles})" if capped else "")
          + f"; seed {seed}")
    print(f"  clients {args.clients}, kill 0-{args.max_delay_ms:g} ms after listening; "
          f"{kills_in_flight} kills with a message in flight; "
          f"{repaired} restarts cut back a partial append")
    print(f"  messages stored          {r['stored']}")
    print(f"  acknowledged             {r['acknowledged']}")
    print(f"  lost                     {len(r['lost'])}")
    print(f"  torn                     {len(r['torn'])}")
    print(f"  duplicated               {len(r['duplicated'])}")
    print(f"  unacknowledged present   {len(r['unacknowledged_present'])} "
          f"(of {r['attempted_unacknowledged']} sent without a 250 seen)")
    print(f"  mbox structure problems  {len(problems)}")
    if flood.refused:
        print(f"  final replies other than 250: {flood.refused}")
    print(f"  clean stop exit code {rc}; spool files left in data_dir {leftover}; "
          f"beside the mbox: dot-lock {'present' if dotlock else 'absent'}, "
          f"{lock_tmp} temporary dot-lock files (mbox.lock.PID.SEQ) left by kills")
    for mid in r["lost"][:20]:
        print(f"  LOST {mid}")
    for i, mid, what in r["torn"][:20]:
        print(f"  TORN message {i + 1} (id {mid}): {what}")
    for p in problems[:20]:
        print(f"  STRUCTURE {p}")

    failed = r["lost"] or r["torn"] or problems
    if failed:
        print(f"FAIL: kept {work} (mbox, data dir, pimail.log) for inspection")
        return 1
    if r["acknowledged"] < cycles // 10 or r["acknowledged"] == 0:
        print("INCONCLUSIVE: too few messages were acknowledged to prove anything")
        return 2
    print("PASS: no acknowledged message lost, none torn")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
