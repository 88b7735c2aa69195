#!/usr/bin/env bash
# Runs a `lossfloor study` in the background-friendly way the schedule study was run:
# one process per seed, each single-threaded (small networks use a core far better as one
# process per core than as one process over two), at low priority, logging to OUT.
# Resumable: run the same command again after an interruption; finished evaluations are
# skipped and unfinished runs resume from their last training state.
#
#   scripts/run-study.sh configs/study-fashion-mnist.toml runs/study-fashion-mnist 0,1
#
# Then the reports over every seed: lossfloor study STUDY --out OUT --report-only
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:?usage: scripts/run-study.sh STUDY.toml OUT SEEDS (e.g. 0,1)}
out=${2:?usage: scripts/run-study.sh STUDY.toml OUT SEEDS}
seeds=${3:?usage: scripts/run-study.sh STUDY.toml OUT SEEDS}
bin=${LOSSFLOOR:-target/release/lossfloor}
[ -x "$bin" ] || cargo build --release -p lossfloor-cli
mkdir -p "$out"
IFS=, read -ra list <<< "$seeds"
first=${list[0]}
# The first seed computes the shared curve and FID reference; the others wait for them.
RAYON_NUM_THREADS=1 nice -n 5 "$bin" study "$study" --out "$out" --seeds "$first" \
  >> "$out/seed$first.out" 2>> "$out/seed$first.log" &
pids=($!)
while ! { [ -f "$out/curve.json" ] && [ -f "$out/fid-ref.npz" ]; }; do
  kill -0 "${pids[0]}" 2>/dev/null || { echo "seed $first stopped early; see $out/seed$first.log" >&2; exit 1; }
  sleep 5
done
for s in "${list[@]:1}"; do
  RAYON_NUM_THREADS=1 nice -n 5 "$bin" study "$study" --out "$out" --seeds "$s" \
    >> "$out/seed$s.out" 2>> "$out/seed$s.log" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
"$bin" study "$study" --out "$out" --report-only
exit $status
