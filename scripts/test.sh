#!/usr/bin/env bash
# The whole test suite: installs the packages the real-data tests read, then runs every
# test of the workspace (release build: the estimator tests run real computations).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --release
