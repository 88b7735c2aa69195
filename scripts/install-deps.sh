#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages lossfloor's quickstart and tests use, when missing:
#   dataset-fashion-mnist  real data (70k 28×28 images, IDX files in /usr/share/datasets)
#   fonts-dejavu-core      a TrueType font for plot labels
#   openmpi-bin            mpirun, to run several ranks (tests/ddp.rs, README "Several processes")
#   libopenmpi-dev         MPI headers and libraries for the default build's `mpi` feature
#   libclang-dev           libclang, which rsmpi's bindgen needs at build time
# Runs apt-get as root, or through sudo.
set -euo pipefail
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
for pkg in openmpi-bin libopenmpi-dev libclang-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing ${need[*]} with apt-get" >&2
$SUDO apt-get install -y "${need[@]}" >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${need[@]}" >/dev/null; }
