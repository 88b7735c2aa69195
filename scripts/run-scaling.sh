#!/usr/bin/env bash
# The scaling sweep of docs/scaling.md: SongUNets of four widths on Fashion-MNIST, trained
# in two lanes of one single-threaded, low-priority
# process each. Resumable: run it again after an interruption (each run continues from its
# last training state). Then: lossfloor scaling OUT/c* --out fit.json --plot fit.png
#
#   scripts/run-scaling.sh [OUT]     (default runs/scaling-fashion-mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/scaling-fashion-mnist}
bin=${LOSSFLOOR:-target/release/lossfloor}
[ -x "$bin" ] || cargo build --release -p lossfloor-cli
mkdir -p "$out"
if [ ! -f "$out/curve.json" ]; then
  "$bin" estimate --data fashion-mnist --sigmas logspace:0.002:80:24 --method exact \
    --queries 1024 --out "$out/curve.json" > "$out/curve.log" 2>&1
fi
# model_channels duration_kimg tick_kimg. Compute per image grows about as channels², so
# the small networks see many more images; all four runs take 30–60 min on one busy core.
run() {
  local ch=$1 kimg=$2 tick=$3
  RAYON_NUM_THREADS=1 nice -n 10 "$bin" train configs/scaling-fashion-mnist.toml \
    --run-dir "$out/c$ch" --resume auto \
    --set optimal_loss.curve="\"$out/curve.json\"" \
    --set network.model_channels=$ch --set train.duration_kimg=$kimg --set train.tick_kimg=$tick \
    >> "$out/c$ch.log" 2>&1
}
{ run 32 24 0.75 && run 4 192 6; } &
a=$!
{ run 16 64 2 && run 8 96 3; } &
b=$!
status=0
wait $a || status=1
wait $b || status=1
exit $status
