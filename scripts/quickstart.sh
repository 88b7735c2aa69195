#!/usr/bin/env bash
# lossfloor quickstart: builds the tool and computes the optimal-loss curve J*(σ) of
# Fashion-MNIST (exact full-dataset estimator, 32 noise levels, 4096 queries), writing
#   out/fashion-mnist-curve.json, out/fashion-mnist-curve.csv and out/fashion-mnist-curve.png
# About 1–2 minutes on 2 cores after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust first (https://rustup.rs: curl -sSf https://sh.rustup.rs | sh)" >&2
  exit 1
fi
scripts/install-deps.sh
cargo build --release -p lossfloor-cli
mkdir -p out
./target/release/lossfloor estimate --data fashion-mnist --sigmas logspace:0.002:80:32 \
  --method exact --queries 4096 --seed 0 \
  --out out/fashion-mnist-curve.json --csv out/fashion-mnist-curve.csv --plot out/fashion-mnist-curve.png
echo "wrote out/fashion-mnist-curve.{json,csv,png}"
