#!/usr/bin/python3
"""PyTorch side of scripts/bench-conv: every convolution of one forward pass of a bench-sample
network, with its count, timed alone by PyTorch (oneDNN) at the given batch and threads.

Written for lossfloor. The shapes come from running the network of scripts/bench_sample_torch.py
(our SongUNet, EDM's layer structure) once with torch.nn.functional.conv2d wrapped to record
(input shape, weight shape, stride, padding, groups, bias). Each distinct shape is then timed
alone: two warm-up calls, the median of REPEATS calls.

Usage: bench_conv_torch.py NET BATCH REPEATS THREADS
Prints one JSON object per distinct shape: x, w, stride, pad, groups, bias, count, torch_ms.
"""
import collections
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sample_torch  # noqa: E402


def main():
    net_key, batch, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    cfg = bench_sample_torch.NETS[net_key]["cfg"]
    net = bench_sample_torch.build(net_key)
    seen = collections.Counter()
    conv2d = F.conv2d

    def recording(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        first = lambda v: v if isinstance(v, int) else v[0]
        seen[(tuple(x.shape), tuple(w.shape), first(stride), first(padding), groups, bias is not None)] += 1
        return conv2d(x, w, bias, stride, padding, dilation, groups)

    F.conv2d = recording
    try:
        r, c = cfg["img_resolution"], cfg["in_channels"]
        with torch.no_grad():
            net(torch.randn(batch, c, r, r), torch.zeros(batch), None, None)
    finally:
        F.conv2d = conv2d
    for (xs, ws, stride, pad, groups, has_bias), count in seen.items():
        x, w = torch.randn(*xs), torch.randn(*ws) * 0.05
        b = torch.randn(ws[0]) if has_bias else None
        with torch.no_grad():
            for _ in range(2):
                conv2d(x, w, b, stride, pad, 1, groups)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                conv2d(x, w, b, stride, pad, 1, groups)
                times.append(time.perf_counter() - t)
        print(json.dumps(dict(x=list(xs), w=list(ws), stride=stride, pad=pad, groups=groups,
                              bias=has_bias, count=count, torch_ms=statistics.median(times) * 1e3)))


if __name__ == "__main__":
    main()
