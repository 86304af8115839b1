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

if [[ $mode != --test ]]; then
    step "build static binaries (at once)"
    PIMAIL_CROSS_PARALLEL=1 cross/build.sh aarch64 armv7 armv6
    # The tests' python3 is now the venv's: give it the test tools too (dkimpy).
    scripts/install-test-tools.sh
    step "build the test suite for aarch64"
    suite --no-run
fi
[[ $mode != --build ]] || { step "built"; exit 0; }

step "test suite on aarch64 under qemu-user"
suite

step "armv7 smoke test under qemu-user"
python3 cross/smoke.py --runner qemu-arm-static "$dist/pimail-armv7"

step "armv6 smoke test under qemu-user (arm1176)"
python3 cross/smoke.py --runner "qemu-arm-static -cpu arm1176" "$dist/pimail-armv6"

step "done"
