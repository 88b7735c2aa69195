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


def bench_attention(name, n, c, l):
    q, k, v = (torch.randn(n, c, l) for _ in range(3))

    def att(q, k, v):
        w = torch.softmax(torch.einsum("ncq,nck->nqk", q, k / c ** 0.5), dim=2)
        return torch.einsum("nqk,nck->ncq", w, v)

    def fwd():
        with torch.no_grad():
            att(q, k, v)

    def fwd_bwd():
        qs = [t.detach().requires_grad_(True) for t in (q, k, v)]
        att(*qs).sum().backward()

    a, b = timed(fwd), timed(fwd_bwd)
    print(json.dumps({"op": name, "impl": "pytorch", "batch": n, "fwd_s": a, "fwd_bwd_s": b,
                      "fwd_img_s": n / a, "fwd_bwd_img_s": n / b}))


bench_attention("attention 256ch 16x16", n, 256, 256)
bench("up2x nearest 256ch 16->32", torch.randn(n, 256, 16, 16),
      lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest"), [])
bench("down2x box 256ch 32->16", torch.randn(n, 256, 32, 32),
      lambda t: torch.nn.functional.avg_pool2d(t, 2), [])
