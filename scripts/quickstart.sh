#!/usr/bin/env bash
# lossfloor quickstart on Fashion-MNIST, in two parts:
#   1. the optimal-loss curve J*(σ) (exact full-dataset estimator, 32 noise levels,
#      4096 queries): out/fashion-mnist-curve.{json,csv,png}; about 30 s on 2 cores;
#   2. with --train (or QUICKSTART_TRAIN=1): trains configs/fashion-mnist-quick.toml
#      against that curve (runs/fashion-mnist-quick; about 10 minutes on 2 cores), then
#      draws the loss against the floor per σ and the gap over training
#      (out/fashion-mnist-gap.png, `lossfloor diagnose`) and a 64-image sample grid from
#      the EMA weights (out/fashion-mnist-samples.png, `lossfloor sample`).
# Usage: scripts/quickstart.sh [--train]
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${QUICKSTART_TRAIN:-0}
for a in "$@"; do
  case "$a" in
    --train) TRAIN=1 ;;
    *) echo "usage: scripts/quickstart.sh [--train]" >&2; exit 2 ;;
  esac
done
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust first (https://rustup.rs: curl -sSf https://sh.rustup.rs | sh)" >&2
  exit 1
fi
scripts/install-deps.sh
cargo build --release -p lossfloor-cli
LF=./target/release/lossfloor
mkdir -p out
$LF estimate --data fashion-mnist --sigmas logspace:0.002:80:32 \
  --method exact --queries 4096 --seed 0 \
  --out out/fashion-mnist-curve.json --csv out/fashion-mnist-curve.csv --plot out/fashion-mnist-curve.png
echo "wrote out/fashion-mnist-curve.{json,csv,png}"
[ "$TRAIN" = 1 ] || exit 0

RUN=runs/fashion-mnist-quick
start=$(date +%s)
# --resume auto continues an interrupted quickstart run instead of refusing it.
$LF train configs/fashion-mnist-quick.toml --run-dir "$RUN" --resume auto
echo "trained in $(($(date +%s) - start)) s"
$LF diagnose "$RUN" --out out/fashion-mnist-gap.png
SNAP=$(ls "$RUN"/network-snapshot-*.safetensors | sort | tail -1)
$LF sample --checkpoint "$SNAP" --seeds 0-63 --grid out/fashion-mnist-samples.png
echo "wrote out/fashion-mnist-gap.png and out/fashion-mnist-samples.png"
