#!/bin/bash
# Short run of every fuzz target (default 10 s each) for CI; fails on the
# first crash. Installs the nightly toolchain and cargo-fuzz when missing.
#   fuzz/smoke.sh                    # set up, build, 10 s per target
#   FUZZ_SECONDS=300 fuzz/smoke.sh   # the >= 5 min local run
#   fuzz/smoke.sh --setup | --build | --run   # one stage (.ci/run builds
#                                    # beside the other builds, runs later)
# FUZZ_JOBS targets run at once (default 2: one per core of the CI machine;
# libFuzzer runs one process per target, single-threaded).
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-10}
jobs=${FUZZ_JOBS:-2}
mode=${1:-all}
case $mode in
all | --setup | --build | --run) ;;
*) echo "usage: fuzz/smoke.sh [--setup | --build | --run]" >&2; exit 2 ;;
esac
if [[ $mode == all || $mode == --setup ]]; then
    if ! rustup toolchain list | grep -q '^nightly'; then
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
fi
# The sanitizer build takes minutes from cold: like cross/ci.sh, build
# outside the clone so repeated CI runs on one machine stay warm.
tdir=${PIMAIL_FUZZ_TARGET:-/var/tmp/pimail-fuzz-target}
if [[ $mode == all || $mode == --build ]]; then
    cargo +nightly fuzz build --target-dir "$tdir"
fi
[[ $mode == all || $mode == --run ]] || exit 0

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# One target; its log stays in $logs/<target>.
run_one() {
    # -rss_limit_mb: the sanitizer build's baseline is ~0.5 GiB.
    cargo +nightly fuzz run --target-dir "$tdir" "$1" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 >"$logs/$1" 2>&1
}
# Reports a finished target; fails on a crash.
report() {
    local t=$1 status=$2
    echo "== fuzz $t (${secs}s)"
    grep -aE '^Done|panicked|SUMMARY|crash-|Test unit written' "$logs/$t" || true
    if [[ $status -ne 0 ]]; then
        tail -n 40 "$logs/$t"
        echo "fuzz $t FAILED: reproduce with: cargo +nightly fuzz run $t fuzz/artifacts/$t/<file>"
        exit 1
    fi
}
declare -A name_of=()
for t in $(cargo +nightly fuzz list); do
    if [[ ${#name_of[@]} -ge $jobs ]]; then
        status=0
        wait -n -p done_pid "${!name_of[@]}" || status=$?
        report "${name_of[$done_pid]}" "$status"
        unset "name_of[$done_pid]"
    fi
    run_one "$t" &
    name_of[$!]=$t
done
while [[ ${#name_of[@]} -gt 0 ]]; do
    status=0
    wait -n -p done_pid "${!name_of[@]}" || status=$?
    report "${name_of[$done_pid]}" "$status"
    unset "name_of[$done_pid]"
done
echo "fuzz smoke: all targets ran ${secs}s without a crash"
