#!/usr/bin/python3
"""PyTorch side of scripts/bench-sample: EDM's deterministic Heun sampler on SongUNet (DDPM++).

Written for lossfloor (not EDM's code). The network is the SongUNet of
scripts/ref_nets_torch.py (our re-implementation of EDM's `training/networks.py`, with EDM's
tensor names and EDM's own resampling: conv_transpose2d / grouped conv2d with the [1, 1]
filter, GroupNorm then a separate SiLU). On top of it, EDM's `EDMPrecond` (σ cast to float32,
c_skip = σd²/(σ²+σd²), c_out = σ·σd/√(σ²+σd²), c_in = 1/√(σ²+σd²), c_noise = ln(σ)/4) and
EDM's `edm_sampler` (float64 state, t_i = (σmax^(1/ρ) + i/(N−1)(σmin^(1/ρ) − σmax^(1/ρ)))^ρ,
Euler step and second-order correction).

Modes:
  make DIR          writes, per network, DIR/<net>.safetensors (a plain state dict with the
                    preconditioner's `model.` prefix, every tensor filled by ref_nets_torch's
                    formula of its name), DIR/<net>.toml (its lossfloor config) and
                    DIR/<net>-latents.npy (standard-normal latents, numpy seed 0).
  time DIR NET STEPS REPEATS THREADS [OUT.npy]
                    times the sampler on the latents (after one warm-up network call) and prints one
                    JSON line with the median seconds and img/s; OUT.npy receives the samples.
  profile DIR NET STEPS THREADS
                    runs the sampler once under torch.profiler and prints a JSON object of
                    milliseconds per op category (see `category`).
"""
import json
import math
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_nets_torch import SongUNet, fill  # noqa: E402

SIGMA_DATA = 0.5

# The three networks of issue 19. "ddpmpp16" is the small test network, "fmnist28" the
# quickstart's (configs/fashion-mnist-quick.toml), "cifar32" EDM's DDPM++ CIFAR-10 network.
NETS = {
    "ddpmpp16": dict(batch=128, cfg=dict(
        img_resolution=16, in_channels=3, out_channels=3, model_channels=32,
        channel_mult=[1, 2], channel_mult_emb=4, num_blocks=1, attn_resolutions=[8])),
    "fmnist28": dict(batch=128, cfg=dict(
        img_resolution=28, in_channels=1, out_channels=1, model_channels=32,
        channel_mult=[1, 2, 2], channel_mult_emb=4, num_blocks=2, attn_resolutions=[7])),
    "cifar32": dict(batch=64, cfg=dict(
        img_resolution=32, in_channels=3, out_channels=3, model_channels=128,
        channel_mult=[2, 2, 2], channel_mult_emb=4, num_blocks=4, attn_resolutions=[16])),
}


def build(net_key):
    cfg = NETS[net_key]["cfg"]
    net = SongUNet(**cfg).eval()
    with torch.no_grad():
        for name, t in net.state_dict(keep_vars=True).items():
            t.copy_(torch.from_numpy(fill("model." + name, list(t.shape))))
    return net


def write_safetensors(path, tensors):
    """A safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def make(d):
    os.makedirs(d, exist_ok=True)
    for key, spec in NETS.items():
        net = build(key)
        sd = {"model." + k: v.detach().numpy() for k, v in net.state_dict().items()}
        write_safetensors(os.path.join(d, key + ".safetensors"), sd)
        cfg = spec["cfg"]
        lines = ["[network]", 'arch = "songunet"']
        for k, v in cfg.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines += ["dropout = 0.0", "", "[precond]", 'process = "edm"', f"sigma_data = {SIGMA_DATA}", ""]
        with open(os.path.join(d, key + ".toml"), "w") as f:
            f.write("\n".join(lines))
        c, r = cfg["in_channels"], cfg["img_resolution"]
        lat = np.random.RandomState(0).standard_normal((spec["batch"], c, r, r)).astype(np.float32)
        np.save(os.path.join(d, key + "-latents.npy"), lat)
        params = sum(v.size for v in sd.values())
        print(f"{key}: {params:,} parameters, latents {list(lat.shape)}")


class EDMPrecond(torch.nn.Module):
    """EDM's EDMPrecond around a raw network (σ cast to float32, as EDM does)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, sigma):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        sd = SIGMA_DATA
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        f_x = self.model(c_in * x, c_noise.flatten(), None, None)
        return c_skip * x + c_out * f_x.to(torch.float32)


def heun_sampler(net, latents, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                 scope=None):
    """EDM's edm_sampler with S_churn = 0 (deterministic Heun); `scope(name)` labels the
    network calls and the sampler's own arithmetic for the profiler."""
    scope = scope or (lambda name: _Null())
    step_indices = torch.arange(num_steps, dtype=torch.float64)
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1)
               * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
    with scope("heun"):
        x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_hat, t_hat = x_next, t_cur
        with scope("network"):
            denoised = net(x_hat, t_hat).to(torch.float64)
        with scope("heun"):
            d_cur = (x_hat - denoised) / t_hat
            x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            with scope("network"):
                denoised = net(x_next, t_next).to(torch.float64)
            with scope("heun"):
                d_prime = (x_next - denoised) / t_next
                x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def load(d, key):
    net = EDMPrecond(build(key)).eval()
    lat = torch.from_numpy(np.load(os.path.join(d, key + "-latents.npy")))
    return net, lat


def time_mode(d, key, steps, repeats, threads, out=None):
    torch.set_num_threads(threads)
    net, lat = load(d, key)
    with torch.no_grad():
        net(lat.to(torch.float64) * 80, torch.tensor(80.0, dtype=torch.float64))  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            x = heun_sampler(net, lat, steps)
            times.append(time.perf_counter() - t)
    if out:
        np.save(out, x.to(torch.float32).numpy())
    s = statistics.median(times)
    print(json.dumps({"net": key, "batch": lat.shape[0], "steps": steps, "seconds": s,
                      "img_s": lat.shape[0] / s, "times": times}))


def category(name, shapes, in_heun):
    """The op category of a profiled aten op (by its self time)."""
    if in_heun:
        return "heun"
    if name in ("aten::native_group_norm", "aten::silu", "aten::silu_"):
        return "groupnorm_silu"
    if name in ("aten::bmm", "aten::_softmax", "aten::softmax"):
        return "attention"
    if "conv" in name:
        # EDM resamples with depthwise 2×2 filters: weight [C, 1, 2, 2].
        w = shapes[1] if len(shapes) > 1 else []
        if len(w) == 4 and w[1] == 1 and w[2] == 2 and w[3] == 2:
            return "resampling"
        return "convolution"
    if name in ("aten::mm", "aten::addmm", "aten::sin", "aten::cos", "aten::ger", "aten::outer"):
        return "embedding"
    return "elementwise_memory"


def profile_mode(d, key, steps, threads):
    from torch.profiler import ProfilerActivity, profile, record_function
    torch.set_num_threads(threads)
    net, lat = load(d, key)
    with torch.no_grad():
        net(lat.to(torch.float64) * 80, torch.tensor(80.0, dtype=torch.float64))  # warm-up
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            heun_sampler(net, lat, steps, scope=record_function)
        wall = time.perf_counter() - t
    cats = {}
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        p, in_heun = ev.cpu_parent, False
        while p is not None:
            if p.name == "heun":
                in_heun = True
            p = p.cpu_parent
        c = category(ev.name, ev.input_shapes or [], in_heun)
        cats[c] = cats.get(c, 0.0) + ev.self_cpu_time_total / 1e3
    nfe = 2 * steps - 1
    print(json.dumps({"net": key, "batch": lat.shape[0], "steps": steps, "nfe": nfe,
                      "wall_ms": wall * 1e3, "ms": cats}))


def main():
    mode = sys.argv[1]
    if mode == "make":
        make(sys.argv[2])
    elif mode == "time":
        a = sys.argv[2:]
        time_mode(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), a[5] if len(a) > 5 else None)
    elif mode == "profile":
        a = sys.argv[2:]
        profile_mode(a[0], a[1], int(a[2]), int(a[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
