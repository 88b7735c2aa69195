#!/usr/bin/python3
"""NumPy (OpenBLAS) reference for scripts/bench-estimator.

1. sgemm of the estimator's shape (M x D) @ (D x N), median of 5.
2. The same exact estimator written in NumPy: float32 GEMMs for the logits and the weighted
   sum, max-subtracted softmax, float64 sums; queries in tiles of 256; the posterior variance
   per query, like lossfloor's.
Prints one line of JSON. Usage: bench_estimator_numpy.py IDX_GZ M SIGMA... 
"""
import gzip, json, sys, time
import numpy as np


def load_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
    x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h * w)
    return x.astype(np.float32) / 127.5 - 1.0


def exact_numpy(x, sigmas, m, seed=0):
    rng = np.random.default_rng(seed)
    n, d = x.shape
    x = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    half = (0.5 * sq).astype(np.float32)
    out = []
    src = rng.integers(0, n, size=m)
    eps = rng.standard_normal((m, d), dtype=np.float32)
    for s in sigmas:
        vals = []
        for t in range(0, m, 256):
            q = x[src[t:t + 256]] + np.float32(s) * eps[t:t + 256]
            logits = (q @ x.T - half) * np.float32(1.0 / (s * s))
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            z = p.sum(axis=1, dtype=np.float64)
            mu = (p @ x) / z[:, None]
            second = (p @ sq) / z
            vals.append(second - np.einsum("ij,ij->i", mu, mu, dtype=np.float64))
        out.append(float(np.concatenate(vals).mean() / d))
    return out


def main():
    path, m = sys.argv[1], int(sys.argv[2])
    sigmas = [float(s) for s in sys.argv[3:]]
    x = load_idx(path)
    n, d = x.shape
    a = np.random.default_rng(1).standard_normal((m, d), dtype=np.float32)
    a @ x.T  # warm-up
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ x.T
        times.append(time.perf_counter() - t)
    times.sort()
    sgemm = 2.0 * m * n * d / times[2] / 1e9
    t = time.perf_counter()
    curve = exact_numpy(x, sigmas, m)
    est_s = time.perf_counter() - t
    print(json.dumps({"sgemm_gflops": round(sgemm, 1), "sgemm_median_s": round(times[2], 4),
                      "estimator_s": round(est_s, 2), "curve": curve}))


if __name__ == "__main__":
    main()
