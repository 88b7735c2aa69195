#!/usr/bin/env python3
"""PyTorch side of scripts/bench-fid (CPU) and of scripts/gpu-check.sh (GPU): the FID Inception
TorchScript (the same default_1.pt lossfloor reads, or a stand-in with the same layers from
scripts/make-inception-stand-in.py) on the same N uint8 32x32 RGB images, with the same TF-1
bilinear resize to 299x299 and (x - 128) / 128, timed per batch size; one JSON line per batch
size with the median images/s over REPEATS. On CUDA, float32 without TF32, as lossfloor runs.

Usage: python3 scripts/bench_inception_torch.py REPEATS N THREADS
           [--device cpu|cuda] [--batches 8,32] [--weights FILE] [--features-out FILE.npy]
(--features-out: the features of the first, up to 64, images from the last batch size.)
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fid_reference_features import tf_bilinear  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def features(model, x_uint8, batch, device):
    out = []
    with torch.no_grad():
        for s in range(0, x_uint8.shape[0], batch):
            x = x_uint8[s:s + batch].to(device).to(torch.float32)
            x = (tf_bilinear(x) - 128) / 128
            out.append(model(x))
    return torch.cat(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("repeats", type=int)
    p.add_argument("n", type=int)
    p.add_argument("threads", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="8,32")
    p.add_argument("--weights", default=os.path.join(ROOT, ".weights/inception-2015-12-05.pt"))
    p.add_argument("--features-out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = torch.jit.load(a.weights, map_location=a.device).eval()
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    # (i*7) mod 251 over [N, 3, 32, 32], as crates/lossfloor-fid/benches/inception.rs
    pixels = (np.arange(a.n * 3 * 32 * 32, dtype=np.int64) * 7 % 251).astype(np.uint8)
    x = torch.from_numpy(pixels.reshape(a.n, 3, 32, 32))
    f = None
    for batch in (int(b) for b in a.batches.split(",")):
        features(model, x[:min(batch, a.n)], batch, a.device)  # warm-up at the full batch
        sync()
        rates = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            f = features(model, x, batch, a.device)
            sync()
            assert f.shape == (a.n, 2048)
            rates.append(a.n / (time.perf_counter() - t))
        rates.sort()
        print(json.dumps({"impl": "pytorch", "batch": batch, "images": a.n,
                          "img_s": round(rates[len(rates) // 2], 3)}), flush=True)
    if a.features_out and f is not None:
        np.save(a.features_out, f[:64].cpu().numpy().astype(np.float32))


if __name__ == "__main__":
    main()
