#!/bin/bash
# Short run of every fuzz target (default 10 s each) for CI; fails on the
# first crash. Installs the nightly toolchain and cargo-fuzz when missing.
#   fuzz/smoke.sh            # 10 s per target
#   FUZZ_SECONDS=300 fuzz/smoke.sh   # the >= 5 min local run
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-10}
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# The sanitizer build takes minutes from cold: like cross/ci.sh, build
# outside the clone so repeated CI runs on one machine stay warm.
tdir=${PIMAIL_FUZZ_TARGET:-/var/tmp/pimail-fuzz-target}
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build --target-dir "$tdir"
for t in $targets; do
    echo "== fuzz $t (${secs}s)"
    # -rss_limit_mb: the sanitizer build's baseline is ~0.5 GiB.
    log=$(mktemp)
    status=0
    cargo +nightly fuzz run --target-dir "$tdir" "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
    grep -aE '^Done|panicked|SUMMARY|crash-|Test unit written' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log"
        rm -f "$log"
        echo "fuzz $t FAILED: reproduce with: cargo +nightly fuzz run $t fuzz/artifacts/$t/<file>"
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz smoke: all targets ran ${secs}s without a crash"
