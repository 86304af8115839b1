#!/usr/bin/env python3
"""pimail benchmark driver (Python 3 standard library only).

Builds the release binary, runs every benchmark section found beside this
file, and writes bench/results/latest.json and latest.md with the date and
the machine. A section is a module `bench/<name>.py` with

    run(ctx) -> dict          # measures; ctx is the Context below
    markdown(result) -> str   # its part of latest.md

Sections: smtp.py (SMTP acceptance vs Postfix, disk limit, memory, start-up,
binary size); spam.py (the spam checks' cost: acceptance with them on and
off, greylist lookup at 1k..100k entries); pop3.py (POP3 vs Dovecot) when
present; imap.py (IMAP vs Dovecot's IMAP on a generated 20,000-message
~1 GiB INBOX, cached under target/bench-cache/). `--quick` is a
seconds-long smoke run for CI: pimail only, no peers (imap.py: a
300-message INBOX). `--only spam` runs one section and writes
latest-spam.* (or quick-spam.*), leaving the full report alone.
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SECTIONS = ["smtp", "spam", "pop3", "imap"]


class Context:
    def __init__(self, args):
        self.quick = args.quick
        self.repo = REPO
        self.binary = os.path.join(REPO, "target", "release", "pimail")
        # The static musl builds (cross/build.sh, zig), as shipped to a Pi:
        # x86_64 for memory and start-up, aarch64 for its size; throughput
        # uses `binary`.
        self.cross_dir = os.path.join(REPO, "target", "cross")
        self.static_binary = os.path.join(self.cross_dir, "dist", "pimail-x86_64")
        self.aarch64_binary = os.path.join(self.cross_dir, "dist", "pimail-aarch64")
        self.builds = [("glibc", self.binary)]
        # On the project's disk (not a tmpfs), so fsync costs are real.
        self.work = args.work or os.path.join(REPO, "target", "bench")
        self.keep = args.keep
        self.no_peers = args.no_peers or args.quick
        # The SMTP load client (bench/loadgen, Rust), set by build_loadgen;
        # None: bench/smtp.py uses its threaded Python client.
        self.loadgen = None
        self.loadgen_note = None

    def log(self, *a):
        print(*a, file=sys.stderr, flush=True)

    def workdir(self, name):
        d = os.path.join(self.work, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d


def sh(cmd):
    try:
        return subprocess.run(
            cmd, shell=True, capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except Exception:
        return ""


def machine(work):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_mib": mem,
        "disk": sh(f"df -T {work} | tail -1 | awk '{{print $1\" \"$2}}'"),
        "load_avg_at_start": os.getloadavg()[0],
    }


def run_script(ctx, name):
    """A section that is a stand-alone script (bench/pop3.py): run it and
    keep what it prints. Skipped in --quick and --no-peers runs (it needs
    its peer server)."""
    if ctx.no_peers:
        why = "--quick" if ctx.quick else "--no-peers"
        return {"skipped": why, "markdown": f"## {name}\n\nSkipped ({why}).\n"}
    script = os.path.join(HERE, name + ".py")
    r = subprocess.run([sys.executable, script], cwd=REPO, capture_output=True, text=True)
    out = r.stdout.strip()
    err = r.stderr.strip().splitlines()[-5:]
    failed = r.returncode != 0
    ctx.log(out)
    md = f"## {name} (`bench/{name}.py`)\n\n```\n{out}\n```\n"
    if failed:
        md += f"\nFailed (exit {r.returncode}): " + " / ".join(err) + "\n"
    return {"output": out, "exit": r.returncode, "failed": failed, "markdown": md}


def build_loadgen(ctx, client):
    """Builds bench/loadgen (a small crate of its own, std + libc) once for
    the whole run. On failure the Python client is used, and said so."""
    if client == "python":
        ctx.loadgen_note = "--client python"
        return
    manifest = os.path.join(HERE, "loadgen", "Cargo.toml")
    binary = os.path.join(HERE, "loadgen", "target", "release", "loadgen")
    ctx.log("building the load client (cargo build --release --manifest-path bench/loadgen/Cargo.toml)...")
    try:
        r = subprocess.run(
            ["cargo", "build", "--release", "-j", "2", "--manifest-path", manifest],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        ok = r.returncode == 0 and os.path.exists(binary)
        why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, why = False, str(e)
    if ok:
        ctx.loadgen = binary
    else:
        ctx.loadgen_note = f"building bench/loadgen failed: {why}"
        ctx.log(f"bench: {ctx.loadgen_note}; using the Python load client")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run, pimail only")
    p.add_argument("--only", help="comma-separated sections: " + ", ".join(SECTIONS) + " (default: all present)")
    p.add_argument("--no-build", action="store_true", help="use target/release/pimail as is")
    p.add_argument("--no-peers", action="store_true", help="skip Postfix/Dovecot")
    p.add_argument("--no-static", action="store_true", help="skip the static (cross/build.sh) builds")
    p.add_argument("--work", help="scratch directory (default target/bench)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    p.add_argument("--keep", action="store_true", help="keep scratch files")
    p.add_argument(
        "--client",
        choices=["rust", "python"],
        default="rust",
        help="SMTP load client: bench/loadgen (default) or the threaded Python one",
    )
    args = p.parse_args()
    ctx = Context(args)
    os.makedirs(ctx.work, exist_ok=True)

    if not args.no_build:
        ctx.log("building release binary (cargo build --release)...")
        r = subprocess.run(["cargo", "build", "--release", "-j", "2"], cwd=REPO)
        if r.returncode != 0:
            sys.exit("bench: cargo build --release failed")
        cross = os.path.join(REPO, "cross", "build.sh")
        if not ctx.quick and os.path.exists(cross) and not args.no_static:
            ctx.log("building static binaries (cross/build.sh x86_64 aarch64)...")
            env = dict(os.environ, CARGO_TARGET_DIR=ctx.cross_dir, CARGO_BUILD_JOBS="2")
            r = subprocess.run([cross, "x86_64", "aarch64"], cwd=REPO, env=env)
            if r.returncode != 0:
                sys.exit("bench: cross/build.sh failed (or run with --no-static)")
    if not os.path.exists(ctx.binary):
        sys.exit(f"bench: {ctx.binary} missing (run cargo build --release)")
    build_loadgen(ctx, args.client)
    if not ctx.quick and not args.no_static and os.path.exists(ctx.static_binary):
        ctx.builds.append(("static musl", ctx.static_binary))

    wanted = args.only.split(",") if args.only else SECTIONS
    started = time.time()
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": ctx.quick,
        "commit": sh(f"git -C {REPO} rev-parse --short HEAD"),
        "machine": machine(ctx.work),
        "sections": {},
    }
    md_parts = []
    for name in wanted:
        if not os.path.exists(os.path.join(HERE, name + ".py")):
            if args.only:
                sys.exit(f"bench: no section {name}")
            continue
        sys.path.insert(0, HERE)
        mod = importlib.import_module(name)
        ctx.log(f"== {name}")
        if hasattr(mod, "run") and hasattr(mod, "markdown"):
            result = mod.run(ctx)
            report["sections"][name] = result
            md_parts.append(mod.markdown(result))
        else:
            result = run_script(ctx, name)
            report["sections"][name] = result
            md_parts.append(result["markdown"])
    report["seconds"] = round(time.time() - started, 1)

    m = report["machine"]
    head = (
        f"# pimail benchmark{' (quick smoke run)' if ctx.quick else ''}\n\n"
        f"{report['date']}, commit {report['commit']}, {m['cpu']} "
        f"({m['cores']} cores, {m['mem_mib']} MiB, {m['arch']}, Linux {m['kernel']}), "
        f"disk {m['disk']}, load average at start {m['load_avg_at_start']:.2f}; "
        f"run took {report['seconds']} s (`bench/run{' --quick' if ctx.quick else ''}`).\n"
    )
    md = head + "\n" + "\n".join(md_parts)
    os.makedirs(args.out, exist_ok=True)
    base = "quick" if ctx.quick else "latest"
    if args.only:
        # One section's figures must not replace the full report.
        base += "-" + "-".join(wanted)
    with open(os.path.join(args.out, base + ".json"), "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out, base + ".md"), "w") as f:
        f.write(md)
    print(md)
    if not ctx.keep:
        shutil.rmtree(ctx.work, ignore_errors=True)
    failed = [n for n, r in report["sections"].items() if r.get("failed")]
    if failed:
        sys.exit(f"bench: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
