#!/usr/bin/env bash
# The test suite: unit tests of the protocol cores and integration tests
# that start the real server and talk to it with real clients.
# This is the command README.md names and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-tools.sh
cargo test --all-targets "$@"
