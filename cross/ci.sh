#!/usr/bin/env bash
# CI for the Raspberry Pi builds (issue 7), from a fresh clone:
#  1. static release binaries for aarch64, armv7 and armv6 (cross/build.sh,
#     which installs qemu-user, rustup targets, zig and cargo-zigbuild);
#  2. the whole test suite built for aarch64 and run under qemu-user: unit
#     tests through the cargo runner (.cargo/config.toml), integration tests
#     starting the stripped aarch64 release binary under qemu
#     ($PIMAIL_TEST_BIN, $PIMAIL_TEST_RUNNER in tests/common/mod.rs);
#  3. armv7 and armv6 (under `-cpu arm1176`, a Pi Zero's CPU): `--version`
#     and an SMTP -> mbox (-> POP3 when present) smoke test (cross/smoke.py).
# Set CARGO_TARGET_DIR to reuse a build directory; the default, outside the
# clone, keeps repeated CI runs on the same machine warm.
#   cross/ci.sh          # all of it
#   cross/ci.sh --build  # only the builds (.ci/run runs them beside others)
#   cross/ci.sh --test   # only the runs, on what --build left
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/pimail-cross-target}
tools=${PIMAIL_CROSS_HOME:-/var/tmp/pimail-cross}
t0=$SECONDS
step() { printf '\n== cross/ci.sh: %s (%ds)\n' "$*" $((SECONDS - t0)); }
mode=${1:-all}
case $mode in
all | --build | --test) ;;
*) echo "usage: cross/ci.sh [--build | --test]" >&2; exit 2 ;;
esac
export PATH="$tools/venv/bin:$PATH"
# As in build.sh: one value for all builds keeps proc macros from rebuilding.
export RUSTC_BOOTSTRAP=1
dist=$CARGO_TARGET_DIR/dist
suite() {
    PIMAIL_TEST_BIN=$dist/pimail-aarch64 PIMAIL_TEST_RUNNER=qemu-aarch64-static \
        cargo-zigbuild test --locked --target aarch64-unknown-linux-musl "$@"
}
# Runs the built suite: each test binary under qemu-user with a time
# limit. qemu-user can deadlock a forked child before its exec (a guest
# fork while another guest thread is inside qemu): once, the smtp suite's
# child waited on a futex for good and CI with it. A binary that hangs
# (no result within the limit) is run once more; a test that fails fails.
suite_run() {
    local bins b rc try
    mapfile -t bins < <(suite --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(m["executable"])')
    [[ ${#bins[@]} -gt 0 ]] || { echo "cross/ci.sh: no aarch64 test binaries" >&2; return 1; }
    for b in "${bins[@]}"; do
        echo "     Running $(basename "$b") (qemu-aarch64-static)"
        for try in 1 2; do
            PIMAIL_TEST_BIN=$dist/pimail-aarch64 PIMAIL_TEST_RUNNER=qemu-aarch64-static \
                timeout --kill-after=10 600 qemu-aarch64-static "$b" && rc=0 || rc=$?
            [[ $rc -eq 124 || $rc -eq 137 ]] || break
            echo "cross/ci.sh: $(basename "$b") hung under qemu-user (try $try of 2)" >&2
        done
        [[ $rc -eq 0 ]] || { echo "cross/ci.sh: $(basename "$b") failed ($rc)" >&2; return 1; }
    done
}

if [[ $mode != --test ]]; then
    # At once, each in a build directory of its own (cargo builds one at a
    # time in a directory): a release build ends in a single-threaded LTO
    # step, so on two cores this takes half the time of one after another.
    step "build static binaries and the aarch64 suite (at once)"
    cross/build.sh --setup aarch64 armv7 armv6
    logs=$(mktemp -d)
    (cross/build.sh aarch64 && scripts/install-test-tools.sh && suite --no-run) >"$logs/aarch64" 2>&1 &
    pids=($!)
    for t in armv7 armv6; do
        CARGO_TARGET_DIR=$CARGO_TARGET_DIR/tree-$t PIMAIL_DIST=$dist cross/build.sh "$t" >"$logs/$t" 2>&1 &
        pids+=($!)
    done
    failed=
    for i in 0 1 2; do
        t=$(echo aarch64 armv7 armv6 | cut -d' ' -f$((i + 1)))
        if wait "${pids[$i]}"; then
            grep -E 'bytes \(|Finished' "$logs/$t" || true
        else
            cat "$logs/$t"
            failed+=" $t"
        fi
    done
    rm -rf "$logs"
    [[ -z $failed ]] || { echo "cross/ci.sh: build failed:$failed" >&2; exit 1; }
fi
[[ $mode != --build ]] || { step "built"; exit 0; }

step "test suite on aarch64 under qemu-user"
suite_run

step "armv7 smoke test under qemu-user"
python3 cross/smoke.py --runner qemu-arm-static "$dist/pimail-armv7"

step "armv6 smoke test under qemu-user (arm1176)"
python3 cross/smoke.py --runner "qemu-arm-static -cpu arm1176" "$dist/pimail-armv6"

step "done"
