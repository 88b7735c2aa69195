#!/usr/bin/python3
"""PyTorch CPU reference for scripts/bench-ops: the same ops and shapes as
crates/lossfloor-ops/benches/ops.rs, median of repeats, one JSON object per line."""
import json, sys, time
import torch

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def timed(f):
    f()
    ts = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def bench(name, x, fn, params):
    def fwd():
        with torch.no_grad():
            fn(x)

    def fwd_bwd():
        xg = x.detach().requires_grad_(True)
        fn(xg).sum().backward()

    a, b = timed(fwd), timed(fwd_bwd)
    n = x.shape[0]
    print(json.dumps({"op": name, "impl": "pytorch", "batch": n, "fwd_s": a, "fwd_bwd_s": b,
                      "fwd_img_s": n / a, "fwd_bwd_img_s": n / b}))


n = 32
for c, hw in [(128, 32), (256, 16)]:
    conv = torch.nn.Conv2d(c, c, 3, padding=1)
    bench(f"conv3x3 {c}ch {hw}x{hw}", torch.randn(n, c, hw, hw), conv, conv.parameters())
gn = torch.nn.GroupNorm(32, 128, eps=1e-6)
bench("groupnorm32+silu 128ch 32x32", torch.randn(n, 128, 32, 32), lambda t: torch.nn.functional.silu(gn(t)), gn.parameters())
