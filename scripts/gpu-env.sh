# Sourced on the GPU machine (by scripts/gpu-check.sh, or by hand before running
# dist/cuda/lossfloor): puts the CUDA 13 libraries the binaries link on LD_LIBRARY_PATH.
#   . scripts/gpu-env.sh
# The CUDA 13 libraries the binaries link (cuBLAS, cuBLASLt, cuRAND, NVRTC, the runtime) and
# cuDNN 9 (whose front library loads its engine libraries from the same folder): found
# wherever PyTorch's wheels put them.
libdirs=""
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13 libcudnn.so.9; do
    f=$(find $(python3 -c 'import site; print(" ".join(site.getsitepackages()))') /usr/local/cuda* \
        -name "$lib" 2>/dev/null | head -1)
    [ -n "$f" ] || f=$(find / -xdev -name "$lib" 2>/dev/null | head -1)
    [ -n "$f" ] || { echo "gpu-check: $lib not found on this machine" >&2; return 2; }
    libdirs="$libdirs:$(dirname "$f")"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# float32 stays float32: no TF32 tensor-core math in cuBLAS or cuDNN (candle's own cuDNN
# convolution sets no math type, and PyTorch's reference turns TF32 off too).
export NVIDIA_TF32_OVERRIDE=0
