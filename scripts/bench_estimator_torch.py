#!/usr/bin/env python3
"""PyTorch reference of lossfloor's exact estimator on a GPU, for timing (scripts/gpu-check.sh).

The same algorithm as lossfloor-optimal's device path (written for this benchmark, float32,
TF32 off): the centred data resident on the GPU; per tile of 1024 queries and chunk of rows,
one shared GEMM pair [X_src; E]·X_cᵀ, then per σ the logits (G_src + σG_ε − ½‖x‖²)/σ², an
online softmax across chunks and the weighted-sum GEMM. Queries are drawn by torch (the
timing does not depend on which rows are drawn). Also measures the GPU's float32 matmul rate
(8192³, TF32 off). Prints one JSON line.

Usage: bench_estimator_torch.py DATA.npy QUERIES SIGMA_MIN SIGMA_MAX K [REPEATS]
"""
import json
import sys
import time

import numpy as np
import torch


def sgemm_rate(dev, n=8192, repeats=10):
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def estimate(x, sigmas, queries, tile=1024, block=1 << 26):
    n, d = x.shape
    chunk = max(block // tile, 1024)
    sq = (x.double() ** 2).sum(1).float()
    values = [[] for _ in sigmas]
    gen = torch.Generator(device=x.device).manual_seed(0)
    for start in range(0, queries, tile):
        t = min(tile, queries - start)
        src = x[torch.randint(0, n, (t,), device=x.device, generator=gen)]
        eps = torch.randn(t, d, device=x.device, generator=gen)
        lhs = torch.cat([src, eps], 0)
        run = [None] * len(sigmas)
        for c0 in range(0, n, chunk):
            rows, sq_c = x[c0:c0 + chunk], sq[c0:c0 + chunk]
            dots = lhs @ rows.T
            g_src, g_eps = dots[:t], dots[t:]
            for k, s in enumerate(sigmas):
                logits = (g_src + s * g_eps - 0.5 * sq_c) / (s * s)
                cmax = logits.max(1, keepdim=True).values
                if run[k] is None:
                    m = cmax
                    p = torch.exp(logits - m)
                    run[k] = [m, p.sum(1, keepdim=True), p @ sq_c[:, None], p @ rows]
                else:
                    m_old, s_old, q_old, w_old = run[k]
                    m = torch.maximum(m_old, cmax)
                    p = torch.exp(logits - m)
                    scale = torch.exp(m_old - m)
                    run[k] = [m, s_old * scale + p.sum(1, keepdim=True),
                              q_old * scale + p @ sq_c[:, None], w_old * scale + p @ rows]
        for k in range(len(sigmas)):
            _, s_, q_, w_ = run[k]
            s_ = s_.double().flatten()
            v = (q_.double().flatten() / s_ - (w_.double() ** 2).sum(1) / s_**2) / d
            values[k].append(v.cpu())
    return [torch.cat(v).mean().item() for v in values]


def main():
    path, queries = sys.argv[1], int(sys.argv[2])
    smin, smax, k = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    repeats = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    data = np.load(path)
    data = data.reshape(data.shape[0], -1)
    if data.dtype == np.uint8:
        data = data.astype(np.float32) / 127.5 - 1.0
    x = torch.from_numpy(data.astype(np.float32)).to(dev)
    x = x - x.double().mean(0).float()
    sigmas = np.geomspace(smin, smax, k).tolist()
    estimate(x, sigmas, min(queries, 1024))  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        estimate(x, sigmas, queries)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    n, d = x.shape
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
        "n": n, "d": d, "queries": queries, "sigmas": k,
        "estimator_s": times[len(times) // 2],
        "sgemm_gflops": round(sgemm_rate(dev), 1),
    }))


if __name__ == "__main__":
    main()
