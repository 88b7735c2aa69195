#!/usr/bin/env python3
"""Checks lossfloor's NVRTC kernel sources on a machine without a GPU (a dev script).

1. Compiles every `const SOURCE: &str = r#"..."#` kernel source under crates/ with NVRTC for
   compute capability 9.0, as the binary does at run time (libnvrtc from the CUDA toolkit that
   scripts/build-cuda.sh unpacks into .cuda-toolkit/).
2. Runs the element-wise kernels (dropout, optimizer updates) and the chunk-softmax kernel as
   host C++ (g++; each CUDA thread of a block is a std::thread, __syncthreads a barrier) and
   compares their outputs with float64 NumPy models of the same formulas.

What it cannot check: launch configuration, memory handling and the Rust side of each
kernel; those need scripts/gpu-check.sh on a GPU.

Needs: python3-numpy (Debian's /usr/bin/python3), g++ with C++20, scripts/build-cuda.sh run once.
Usage: /usr/bin/python3 scripts/check-cuda-kernels.py
"""
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_LIB = os.environ.get("LOSSFLOOR_CUDA_TOOLKIT", os.path.join(ROOT, ".cuda-toolkit")) + "/nvidia/cu13/lib"


def kernel_source(path):
    m = re.search(r'const SOURCE: &str = r#"(.*?)"#;', open(path).read(), re.S)
    return m.group(1) if m else None


def nvrtc_compile_all():
    lib_path = os.path.join(CUDA_LIB, "libnvrtc.so.13")
    if not os.path.exists(lib_path):
        sys.exit(f"check-cuda-kernels: {lib_path} missing: run scripts/build-cuda.sh once")
    # libnvrtc loads its builtins library from the same folder.
    ctypes.CDLL(os.path.join(CUDA_LIB, "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(lib_path)
    failed = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "crates/*/src/**/*.rs"), recursive=True)):
        src = kernel_source(path)
        if src is None:
            continue
        prog = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"k.cu", 0, None, None) == 0
        opts = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_90")
        rc = nvrtc.nvrtcCompileProgram(prog, 1, opts)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        rel = os.path.relpath(path, ROOT)
        print(f"NVRTC {rel}: {'ok' if rc == 0 else 'FAILED'}")
        if rc != 0:
            print(log.value.decode())
            failed += 1
    return failed


HOST_PRELUDE = r"""
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
using std::isinf;
struct Dim { long long x; };
thread_local Dim threadIdx{0};
Dim blockIdx{0}, blockDim{1}, gridDim{1};
static std::barrier<> *block_barrier;
#define __syncthreads() block_barrier->arrive_and_wait()
#define __global__
#define __device__
#define __shared__ static
static float __int_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
// Runs kernel body F for one block of `threads` threads.
template <class F> void run_block(long long block, int threads, F f) {
    blockIdx.x = block; blockDim.x = threads;
    std::barrier<> b(threads); block_barrier = &b;
    std::vector<std::thread> ts;
    for (int i = 0; i < threads; i++) ts.emplace_back([&, i] { threadIdx.x = i; f(); });
    for (auto &t : ts) t.join();
}
"""


def run_host(kernels, main_body):
    with tempfile.TemporaryDirectory() as d:
        cpp, exe = os.path.join(d, "k.cpp"), os.path.join(d, "k")
        open(cpp, "w").write(HOST_PRELUDE + kernels + "\nint main() {\n" + main_body + "\n}\n")
        # No FMA contraction on the host: the models below round each operation.
        subprocess.run(["g++", "-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-o", exe, cpp], check=True)
        out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    return np.array([float(v) for v in out.split()])


def check(name, got, want, rtol):
    err = np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-3))
    ok = err <= rtol
    print(f"host {name}: max rel. difference {err:.1e} ({'ok' if ok else 'FAILED'}, tolerance {rtol:g})")
    return 0 if ok else 1


def splitmix_uniform(key, i):
    mask = (1 << 64) - 1
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return np.float32(z >> 40) * np.float32(1.0 / 16777216.0)


def check_dropout():
    src = kernel_source(os.path.join(ROOT, "crates/lossfloor-ops/src/dropout_cuda.rs"))
    n, key, p = 5000, 0x0123456789ABCDEF, 0.13
    got = run_host(src, f"""
        static float x[{n}], y[{n}];
        for (int i = 0; i < {n}; i++) x[i] = 1.0f + i * 0.001f;
        dropout_f32(x, y, {key}ULL, {p}f, (float)(1.0 / (1.0 - {p})), {n});
        for (int i = 0; i < {n}; i++) printf("%.9g\\n", y[i]);""")
    x = np.float32(1.0) + np.arange(n, dtype=np.float32) * np.float32(0.001)
    keep = np.array([splitmix_uniform(key, i) >= np.float32(p) for i in range(n)])
    want = np.where(keep, x * np.float32(1.0 / (1.0 - p)), np.float32(0.0))
    # 9 printed digits identify a float32 exactly: compare as float32, bit for bit.
    return check("dropout (bits)", got.astype(np.float32).astype(np.float64), want.astype(np.float64), 0.0)


def check_optimizer():
    src = kernel_source(os.path.join(ROOT, "crates/lossfloor-ops/src/optim_cuda.rs"))
    src = re.sub(r"// partial\[blockIdx.x\].*?\n}\n", "", src, flags=re.S)  # the reduction is not emulated
    got = run_host(src, r"""
        const long long n = 6;
        float g[n] = {NAN, INFINITY, -INFINITY, 0.5f, -2.0f, 1e-3f}, c[n];
        nan_to_num_f32(g, c, n);
        float m[n] = {0.1f, 0.2f, -0.3f, 0.4f, 0.0f, 1.0f}, v[n] = {0.01f, 0.02f, 0.03f, 0.04f, 0.0f, 1.0f};
        adam_moment_f32(m, c, 0.9f, 0.1f, 0, n);
        adam_moment_f32(v, c, 0.999f, 0.001f, 1, n);
        float t[n] = {1, 2, 3, 4, 5, 6}, e[n] = {0, 0, 0, 0, 0, 0};
        adam_weights_f32(t, m, v, 0.99f, 0.01f, 1.5f, 1e-8f, n);
        lerp_f32(e, t, 0.9f, n);
        for (float *a : {c, m, v, t, e}) for (int i = 0; i < n; i++) printf("%.9g\n", a[i]);""")
    g = np.array([0.0, 1e5, -1e5, 0.5, -2.0, 1e-3])
    m = 0.9 * np.array([0.1, 0.2, -0.3, 0.4, 0.0, 1.0]) + 0.1 * g
    v = 0.999 * np.array([0.01, 0.02, 0.03, 0.04, 0.0, 1.0]) + 0.001 * g * g
    t = 0.99 * np.arange(1, 7) - 0.01 * m / (np.sqrt(v) * 1.5 + 1e-8)
    e = (0 - t) * 0.9 + t
    return check("optimizer updates", got, np.concatenate([g, m, v, t, e]), 2e-6)


def check_chunk_softmax():
    src = kernel_source(os.path.join(ROOT, "crates/lossfloor-optimal/src/chunk_softmax.rs"))
    t, k, sigma = 3, 1000, 0.7
    got = run_host(src, f"""
        const int t = {t}, k = {k};
        std::vector<float> dots(2 * t * k), norms(2 * k), old(t), out(t * k + 3 * t);
        for (int i = 0; i < 2 * t * k; i++) dots[i] = sinf(i * 0.37f) * 2.0f;
        for (int n = 0; n < k; n++) {{ norms[k + n] = 1.0f + 0.5f * cosf(n * 0.11f); norms[n] = 0.5f * norms[k + n]; }}
        for (int q = 0; q < t; q++) old[q] = q == 1 ? 1e3f : -1.0f;
        for (int has_old = 0; has_old < 2; has_old++) {{
            for (int q = 0; q < t; q++)
                run_block(q, 256, [&] {{ chunk_softmax(dots.data(), norms.data(), old.data(), has_old,
                    {sigma}f, 1.0f / ({sigma}f * {sigma}f), t, k, out.data()); }});
            for (int q = 0; q < t; q++)
                printf("%.9g %.9g %.9g %.9g %.9g\\n", out[t * k + 3 * q], out[t * k + 3 * q + 1],
                       out[t * k + 3 * q + 2], out[q * k + 5], out[q * k + 777]);
        }}""")
    i = np.arange(2 * t * k, dtype=np.float32)
    dots = (np.sin(i * np.float32(0.37)) * np.float32(2)).astype(np.float64).reshape(2 * t, k)
    n = np.arange(k, dtype=np.float32)
    sq = (np.float32(1) + np.float32(0.5) * np.cos(n * np.float32(0.11))).astype(np.float64)
    old = np.array([-1.0, 1e3, -1.0])
    want = []
    for has_old in (0, 1):
        for q in range(t):
            logit = (dots[q] + sigma * dots[t + q] - 0.5 * sq) / sigma**2
            mx = max(logit.max(), old[q]) if has_old else logit.max()
            p = np.exp(logit - mx)
            want += [mx, p.sum(), (p * sq).sum(), p[5], p[777]]
    return check("chunk softmax", got, np.array(want), 1e-5)


def main():
    failed = nvrtc_compile_all()
    failed += check_dropout() + check_optimizer() + check_chunk_softmax()
    print("all kernel checks passed" if failed == 0 else f"{failed} kernel check(s) FAILED")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
