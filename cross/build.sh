#!/usr/bin/env bash
# Builds stripped, static release binaries of pimail for the Raspberry Pi
# (and x86_64), from a fresh Debian/Ubuntu machine or Raspberry Pi OS.
#
#   cross/build.sh                 # all: aarch64 armv7 armv6 x86_64
#   cross/build.sh aarch64 armv6   # some
#   cross/build.sh --setup aarch64 # only install what those builds need
#
# Installs what it lacks, and only that (fast when all is there):
#   apt: qemu-user-static file python3-venv (unless present)
#   rustup: musl std for aarch64/x86_64, rust-src for the 32-bit targets
#   a venv with zig (PyPI ziglang) and cargo-zigbuild, in $PIMAIL_CROSS_HOME
# Environment:
#   CARGO_TARGET_DIR   build directory (default /var/tmp/pimail-cross-target,
#                      outside the clone, so repeated builds are warm)
#   PIMAIL_CROSS_HOME  tool directory (default /var/tmp/pimail-cross)
#   CARGO_BUILD_JOBS   parallel jobs, as cargo reads it
#   PIMAIL_DIST        where the binaries go (default $CARGO_TARGET_DIR/dist;
#                      cross/ci.sh builds targets at once, each in a build
#                      directory of its own, into one dist)
# Output: $PIMAIL_DIST/pimail-<arch> and one line per binary with
# its size. Fails if a binary is not statically linked.
set -euo pipefail

ZIGLANG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.0

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/pimail-cross-target}
tools=${PIMAIL_CROSS_HOME:-/var/tmp/pimail-cross}

log() { printf 'cross/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

triple() {
    case $1 in
    aarch64) echo aarch64-unknown-linux-musl ;;        # Pi 3/4/5, 64-bit OS
    armv7) echo armv7-unknown-linux-musleabihf ;;      # Pi 2/3, 32-bit OS
    armv6) echo arm-unknown-linux-musleabihf ;;        # Pi Zero/1
    x86_64) echo x86_64-unknown-linux-musl ;;
    *) die "unknown target '$1' (use aarch64, armv7, armv6, x86_64)" ;;
    esac
}

# Prebuilt std where the toolchain has one; the 32-bit musl std may be
# missing from the mirror, so those rebuild std from rust-src.
needs_build_std() { [[ $1 == armv7 || $1 == armv6 ]]; }

setup_only=
if [[ ${1:-} == --setup ]]; then
    setup_only=1
    shift
fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(aarch64 armv7 armv6 x86_64)
for t in "${targets[@]}"; do triple "$t" >/dev/null; done

# --- tools ---------------------------------------------------------------

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
    local sudo=
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    log "installing ${missing[*]} (apt)"
    # Wait for another apt (unattended-upgrades, a parallel job) to finish.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 \
        install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pkgs=(file)
command -v python3 >/dev/null || pkgs+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
for t in "${targets[@]}"; do
    [[ $t == x86_64 ]] || { pkgs+=(qemu-user-static); break; }
done
apt_install "${pkgs[@]}"

command -v rustup >/dev/null || die "rustup not found: install Rust from https://rustup.rs"
installed=$(rustup target list --installed)
want_targets=()
for t in "${targets[@]}"; do
    needs_build_std "$t" && continue
    tr=$(triple "$t")
    grep -qx "$tr" <<<"$installed" || want_targets+=("$tr")
done
if [[ ${#want_targets[@]} -gt 0 ]]; then
    log "rustup target add ${want_targets[*]}"
    rustup target add "${want_targets[@]}" >/dev/null
fi
for t in "${targets[@]}"; do
    if needs_build_std "$t"; then
        components=$(rustup component list --installed)
        if ! grep -q '^rust-src' <<<"$components"; then
            log "rustup component add rust-src"
            rustup component add rust-src >/dev/null
        fi
        break
    fi
done

venv=$tools/venv
if ! "$venv/bin/python" -m ziglang version 2>/dev/null | grep -qx "$ZIGLANG_VERSION" ||
    ! "$venv/bin/cargo-zigbuild" --version 2>/dev/null | grep -q " $ZIGBUILD_VERSION\$"; then
    log "installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION into $venv (pip, ~400 MB)"
    mkdir -p "$tools"
    [[ -x $venv/bin/pip ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
fi
# cargo-zigbuild finds zig through `python -m ziglang` on PATH.
export PATH="$venv/bin:$PATH"

# --- build ---------------------------------------------------------------

# The 32-bit targets need -Zbuild-std, so RUSTC_BOOTSTRAP=1 (the documented
# switch for unstable flags on stable). Set for every target: proc-macro2's
# build script reruns when it changes, so toggling it would rebuild the
# proc macros (and all that depends on them) on every target switch.
export RUSTC_BOOTSTRAP=1

[[ -z $setup_only ]] || { log "set up for: ${targets[*]}"; exit 0; }

dist=${PIMAIL_DIST:-$CARGO_TARGET_DIR/dist}
mkdir -p "$dist"
results=()
for t in "${targets[@]}"; do
    tr=$(triple "$t")
    log "building $t ($tr)"
    start=$SECONDS
    if needs_build_std "$t"; then
        cargo zigbuild --locked --release --target "$tr" \
            -Zbuild-std=std,panic_abort
    else
        cargo zigbuild --locked --release --target "$tr"
    fi
    bin=$CARGO_TARGET_DIR/$tr/release/pimail
    info=$(file -b "$bin")
    case $info in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$bin is not statically linked: $info" ;;
    esac
    case $info in
    *", stripped"*) ;;
    *) die "$bin is not stripped: $info" ;;
    esac
    cp "$bin" "$dist/pimail-$t"
    size=$(stat -c %s "$bin")
    results+=("$(printf '%-8s %9d bytes (%5.2f MiB)  %s  [%ds]' "$t" "$size" \
        "$(awk "BEGIN{print $size/1048576}")" "$dist/pimail-$t" $((SECONDS - start)))")
done

echo "pimail $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1): static, stripped release binaries"
printf '%s\n' "${results[@]}"
