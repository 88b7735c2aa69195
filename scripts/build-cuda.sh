#!/usr/bin/env bash
# Builds lossfloor with candle's CUDA backend on a machine that has no GPU and no CUDA install,
# and packs what the GPU machine needs into dist/cuda/.
#
#   scripts/build-cuda.sh            # -> dist/cuda/{lossfloor, cuda-tests, bench-step, bench-estimator, bench-fid}
#                                    #    and, where libopenmpi-dev is installed, lossfloor-mpi
#
# dist/cuda/lossfloor is built without MPI (--no-default-features), so that it starts on a GPU
# machine without Open MPI. dist/cuda/lossfloor-mpi (features cuda, cudnn, nccl) is the
# multi-GPU binary (docs/distributed.md); it needs Open MPI's libmpi.so.40 and, at run time,
# libnccl.so.2 (PyTorch's CUDA wheels ship it; gpu-env.sh finds it).
#
# Where the CUDA compiler comes from, and why: the GPU machines run driver 580 (CUDA 13.0,
# compute capability 9.0). candle compiles its kernels to PTX at build time and the driver
# JIT-compiles that PTX at run time, so the PTX must not be newer than the driver: we pin the
# CUDA 13.0 toolkit. NVIDIA publishes it as PyPI wheels (nvcc, its crt headers, nvvm/cicc,
# the CCCL headers, the runtime, cuBLAS, cuRAND, NVRTC), which pip can fetch here; Debian's nvidia-cuda-toolkit
# is 11.8 and sits in non-free. The wheels are unpacked into .cuda-toolkit/ (git-ignored;
# override with LOSSFLOOR_CUDA_TOOLKIT) and reused by later builds. Nothing else is downloaded.
#
# cudarc (candle's CUDA binding) links libcuda, libcublas, libcublasLt, libcurand and libnvrtc
# dynamically. The wheels ship only the versioned .so.N files, so the script adds the plain
# .so names the linker looks for, and a stub libcuda.so (the driver library, soname
# libcuda.so.1, which only the GPU machine has) built from the driver entry points cudarc
# declares; at run time the real driver's libcuda.so.1 is loaded instead. The other
# libraries come from PyTorch's CUDA 13 wheels on the GPU machine (scripts/gpu-check.sh puts
# them on LD_LIBRARY_PATH).
#
# First run: ~0.7 GB of toolkit wheels and the 517 MB cuDNN wheel (53 s to fetch and unpack),
# then a release build with the cuda and cudnn features (16.5 min from a clean clone on 2
# cores); later runs are incremental (1.5 min after a change to lossfloor-ops, packing included).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOOLKIT=${LOSSFLOOR_CUDA_TOOLKIT:-$ROOT/.cuda-toolkit}
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)

if [ ! -x "$TOOLKIT/nvidia/cu13/bin/nvcc" ] || [ ! -d "$TOOLKIT/nvidia/cu13/nvvm" ] || [ ! -d "$TOOLKIT/nvidia/cu13/include/cccl" ]; then
    echo "build-cuda: fetching the CUDA 13.0 toolkit wheels into $TOOLKIT/wheels"
    mkdir -p "$TOOLKIT/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
        --python-version 3.11 -d "$TOOLKIT/wheels" "${WHEELS[@]}"
    for w in "$TOOLKIT"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$TOOLKIT"
    done
    chmod +x "$TOOLKIT"/nvidia/cu13/bin/* "$TOOLKIT"/nvidia/cu13/nvvm/bin/*
fi
CUDA=$TOOLKIT/nvidia/cu13

# cuDNN (every convolution pass on CUDA goes through it; crates/lossfloor-ops/src/conv_cudnn.rs).
# Linking needs only its 137 KB front library, libcudnn.so.9, which loads the engine
# libraries at run time; PyTorch's cuDNN 9 on the GPU machine supplies all of them there. The
# 517 MB wheel is fetched once, that one file kept, the wheel deleted.
CUDNN_WHEEL=nvidia-cudnn-cu13==9.28.1.4
if [ "${LOSSFLOOR_CUDNN:-1}" != 0 ] && [ ! -f "$CUDA/lib/libcudnn.so.9" ]; then
    echo "build-cuda: fetching $CUDNN_WHEEL for libcudnn.so.9"
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --python-version 3.11 -d "$tmp" "$CUDNN_WHEEL"
    python3 - "$tmp"/nvidia_cudnn_cu13-*.whl "$CUDA/lib" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("nvidia/cudnn/lib/libcudnn.so.9") as src, \
        open(sys.argv[2] + "/libcudnn.so.9.tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    mv "$CUDA/lib/libcudnn.so.9.tmp" "$CUDA/lib/libcudnn.so.9"
    rm -rf "$tmp"
fi

# Unversioned names for the linker (-lcublas finds libcublas.so).
for lib in cublas cublasLt nvrtc cudart; do
    ln -sf "lib$lib.so.13" "$CUDA/lib/lib$lib.so"
done
ln -sf libcurand.so.10 "$CUDA/lib/libcurand.so"
[ ! -f "$CUDA/lib/libcudnn.so.9" ] || ln -sf libcudnn.so.9 "$CUDA/lib/libcudnn.so"

# Link-time stub of the driver library.
STUB=$CUDA/lib/stubs/libcuda.so
if [ ! -f "$STUB" ]; then
    mkdir -p "$CUDA/lib/stubs"
    CUDARC=$(cargo metadata --format-version 1 --features lossfloor-cli/cuda 2>/dev/null |
        python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc"))')
    SYS=$(dirname "$CUDARC")/src/driver/sys/mod.rs
    grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$SYS" | sed -E 's/^\s+fn //; s/\($//' | sort -u |
        awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$CUDA/lib/stubs/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB" "$CUDA/lib/stubs/libcuda_stub.c"
fi

export PATH=$CUDA/bin:$PATH
export CUDA_ROOT=$CUDA
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-cuda}

echo "build-cuda: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR"
start=$(date +%s)
# The cuda feature, plus cudnn unless LOSSFLOOR_CUDNN=0 (then candle's own convolution).
FEATURES=cuda
[ "${LOSSFLOOR_CUDNN:-1}" = 0 ] || FEATURES=cuda,cudnn
echo "build-cuda: features $FEATURES"
cargo build --release -p lossfloor-cli --no-default-features --features $FEATURES
# Path of the executable cargo builds for test or bench target NAME (the file name carries a
# hash). Compiler errors go to the terminal; the JSON messages are parsed here.
executable() { # NAME CARGO-ARGS... -> path
    local name=$1; shift
    cargo "$@" --message-format=json-render-diagnostics | NAME=$name python3 -c 'import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == os.environ["NAME"]:
        print(m["executable"])' | tail -1
}
# The CUDA agreement tests and the training-step/sampling benchmark, run on the GPU machine.
TESTS=$(executable cuda test --release -p lossfloor-cli --no-default-features --features $FEATURES --test cuda --no-run)
BENCH=$(executable step bench -p lossfloor-train --features $FEATURES --bench step --no-run)
EST=$(executable exact_device bench -p lossfloor-optimal --features cuda --bench exact_device --no-run)
FID=$(executable inception bench -p lossfloor-fid --features $FEATURES --bench inception --no-run)
[ -n "$TESTS" ] && [ -n "$BENCH" ] && [ -n "$EST" ] && [ -n "$FID" ] || { echo "build-cuda: the test or bench build failed" >&2; exit 1; }
# The multi-GPU build (MPI + NCCL) and its agreement tests, where Open MPI's headers are here.
MPI_BIN=""; MPI_TESTS=""
if dpkg -s libopenmpi-dev >/dev/null 2>&1; then
    cargo build --release -p lossfloor-cli --features $FEATURES,nccl
    cp "$CARGO_TARGET_DIR/release/lossfloor" "$CARGO_TARGET_DIR/release/lossfloor-mpi"
    MPI_BIN=$CARGO_TARGET_DIR/release/lossfloor-mpi
    MPI_TESTS=$(executable cuda test --release -p lossfloor-cli --features $FEATURES,nccl --test cuda --no-run)
    # The one-process binary again, so that target/release/lossfloor is the MPI-free one.
    cargo build --release -p lossfloor-cli --no-default-features --features $FEATURES
else
    echo "build-cuda: libopenmpi-dev is not installed: no lossfloor-mpi (multi-GPU) binary"
fi
echo "build-cuda: built in $(($(date +%s) - start)) s"

DIST=$ROOT/dist/cuda
rm -rf "$DIST.tmp" && mkdir -p "$DIST.tmp"
cp "$CARGO_TARGET_DIR/release/lossfloor" "$DIST.tmp/"
cp "$TESTS" "$DIST.tmp/cuda-tests"
cp "$BENCH" "$DIST.tmp/bench-step"
cp "$EST" "$DIST.tmp/bench-estimator"
cp "$FID" "$DIST.tmp/bench-fid"
[ -z "$MPI_BIN" ] || cp "$MPI_BIN" "$DIST.tmp/lossfloor-mpi"
[ -z "$MPI_TESTS" ] || cp "$MPI_TESTS" "$DIST.tmp/cuda-tests-mpi"
strip "$DIST.tmp"/*
rm -rf "$DIST" && mv "$DIST.tmp" "$DIST"
# One compressed archive (~20 MB instead of ~175 MB) to carry to the GPU machine;
# scripts/gpu-check.sh unpacks it.
(cd "$DIST" && tar -cf - * | xz -T0 -6 >"$DIST.tar.xz.tmp") && mv "$DIST.tar.xz.tmp" "$DIST.tar.xz"
ls -la "$DIST" "$DIST.tar.xz"
# A stand-in for the FID Inception weights (the real 87 MB file does not fit the GPU machine's
# transfer limit): the same TorchScript archive with random weights, 3.3 MB compressed.
# Needs the real file and Debian's python3-torch here; without them the GPU check skips FID.
if [ -f .weights/inception-2015-12-05.pt ] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    /usr/bin/python3 scripts/make-inception-stand-in.py dist/inception-stand-in.pt
else
    echo "build-cuda: no FID stand-in (needs scripts/fetch-inception.sh and python3-torch); gpu-check.sh will skip FID"
fi
