#!/usr/bin/env python3
"""PyTorch side of scripts/bench-fid: the FID Inception TorchScript (the same default_1.pt
lossfloor reads) on the same N uint8 32x32 RGB images, with the same TF-1 bilinear resize to
299x299 and (x - 128) / 128, timed per batch size; one JSON line per batch size with the
median images/s over REPEATS.

Usage: /usr/bin/python3 scripts/bench_inception_torch.py REPEATS N THREADS
"""
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fid_reference_features import tf_bilinear  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(ROOT, ".weights/inception-2015-12-05.pt")


def features(model, x_uint8, batch):
    out = []
    with torch.no_grad():
        for s in range(0, x_uint8.shape[0], batch):
            x = x_uint8[s:s + batch].to(torch.float32)
            x = (tf_bilinear(x) - 128) / 128
            out.append(model(x))
    return torch.cat(out)


def main():
    repeats, n, threads = (int(a) for a in sys.argv[1:4])
    torch.set_num_threads(threads)
    model = torch.jit.load(WEIGHTS, map_location="cpu").eval()
    # (i*7) mod 251 over [N, 3, 32, 32], as crates/lossfloor-fid/benches/inception.rs
    pixels = (np.arange(n * 3 * 32 * 32, dtype=np.int64) * 7 % 251).astype(np.uint8)
    x = torch.from_numpy(pixels.reshape(n, 3, 32, 32))
    for batch in (8, 32):
        features(model, x[:1], batch)  # warm-up
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            f = features(model, x, batch)
            assert f.shape == (n, 2048)
            rates.append(n / (time.perf_counter() - t))
        rates.sort()
        print(json.dumps({"impl": "pytorch", "batch": batch, "images": n,
                          "img_s": round(rates[len(rates) // 2], 3)}))


if __name__ == "__main__":
    main()
