#!/usr/bin/python3
"""A small PyTorch reference of EDM's DDPM++ (SongUNet, CIFAR-10 config) for timing only.

Written for lossfloor's benchmarks (not EDM's code): same layers, channel counts, attention
and resampling as EDM's DDPM++ with augment_dim 9, so the parameter count must equal
55,733,891 (checked at start). Times forward and forward+backward, and a full training step
(EDM loss, Adam), at a given batch, median of repeats, and prints one JSON line.

On a GPU (DEVICE cuda) it also times EDM's deterministic Heun sampler (18 steps, 35
network evaluations) on SAMPLE_BATCH images, and uses float32 matmuls without TF32, like
lossfloor.

Usage: ref_ddpmpp_torch.py [BATCH] [REPEATS] [THREADS] [DEVICE] [SAMPLE_BATCH]
"""
import json, math, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F


def gn(c):
    return nn.GroupNorm(min(32, c // 4), c, eps=1e-6)


class Block(nn.Module):
    def __init__(self, cin, cout, emb, up=False, down=False, attn=False):
        super().__init__()
        self.up, self.down, self.attn = up, down, attn
        self.norm0, self.conv0 = gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, cout)
        self.norm1, self.conv1 = gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or up or down) else None
        if attn:
            self.norm2, self.qkv, self.proj = gn(cout), nn.Conv2d(cout, 3 * cout, 1), nn.Conv2d(cout, cout, 1)
        self.drop = nn.Dropout(0.13)

    def resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, emb):
        orig = x
        x = self.conv0(self.resample(F.silu(self.norm0(x))))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None]))
        x = self.conv1(self.drop(x))
        x = (x + (self.skip(self.resample(orig)) if self.skip is not None else orig)) * math.sqrt(0.5)
        if self.attn:
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n, c, 3, h * w).unbind(2)
            a = torch.softmax(torch.einsum("ncq,nck->nqk", q, k / math.sqrt(c)), dim=2)
            x = (self.proj(torch.einsum("nqk,nck->ncq", a, v).reshape(n, c, h, w)) + x) * math.sqrt(0.5)
        return x


class DDPMpp(nn.Module):
    def __init__(self, res=32, cin=3, ch=128, mult=(2, 2, 2), blocks=4, attn_res=(16,), augment_dim=9):
        super().__init__()
        emb = ch * 4
        self.ch = ch
        self.map_augment = nn.Linear(augment_dim, ch, bias=False)
        self.map_layer0, self.map_layer1 = nn.Linear(ch, emb), nn.Linear(emb, emb)
        self.enc = nn.ModuleList()
        skips, cout = [], cin
        for level, m in enumerate(mult):
            r = res >> level
            if level == 0:
                self.enc.append(nn.Conv2d(cin, ch, 3, padding=1)); cout = ch
            else:
                self.enc.append(Block(cout, cout, emb, down=True))
            skips.append(cout)
            for _ in range(blocks):
                self.enc.append(Block(cout, ch * m, emb, attn=r in attn_res)); cout = ch * m; skips.append(cout)
        self.dec = nn.ModuleList()
        self.dec_cat = []
        for level, m in reversed(list(enumerate(mult))):
            r = res >> level
            if level == len(mult) - 1:
                self.dec.append(Block(cout, cout, emb, attn=True)); self.dec_cat.append(False)
                self.dec.append(Block(cout, cout, emb)); self.dec_cat.append(False)
            else:
                self.dec.append(Block(cout, cout, emb, up=True)); self.dec_cat.append(False)
            for idx in range(blocks + 1):
                cin_b = cout + skips.pop()
                self.dec.append(Block(cin_b, ch * m, emb, attn=(idx == blocks and r in attn_res)))
                self.dec_cat.append(True); cout = ch * m
        self.out_norm, self.out_conv = gn(cout), nn.Conv2d(cout, cin, 3, padding=1)

    def forward(self, x, noise_labels, augment_labels):
        half = self.ch // 2
        freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32, device=noise_labels.device) / (half - 1))
        e = noise_labels[:, None] * freqs[None]
        emb = torch.cat([e.sin(), e.cos()], dim=1) + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        skips = []
        for i, layer in enumerate(self.enc):
            x = layer(x) if i == 0 else layer(x, emb)
            skips.append(x)
        for layer, cat in zip(self.dec, self.dec_cat):
            if cat:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


def heun(net, latents, aug, steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, sd=0.5):
    """EDM's deterministic Heun sampler (Algorithm 1) with EDM preconditioning, float64 state."""
    def denoise(x, t):
        t32 = torch.full((x.shape[0],), float(t), device=x.device)
        c_skip, c_out, c_in = sd**2 / (t**2 + sd**2), t * sd / (t**2 + sd**2) ** 0.5, 1 / (t**2 + sd**2) ** 0.5
        f = net((c_in * x).float(), t32.log() / 4, aug).double()
        return c_skip * x + c_out * f

    i = torch.arange(steps, dtype=torch.float64)
    ts = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    ts = torch.cat([ts, torch.zeros(1, dtype=torch.float64)]).tolist()
    x = latents.double() * ts[0]
    for k in range(steps):
        t, t_next = ts[k], ts[k + 1]
        d = (x - denoise(x, t)) / t
        x_next = x + (t_next - t) * d
        if k < steps - 1:
            d2 = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def main():
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    device = torch.device(sys.argv[4] if len(sys.argv) > 4 else "cpu")
    sample_batch = int(sys.argv[5]) if len(sys.argv) > 5 else 256
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    net = DDPMpp().to(device)
    count = sum(p.numel() for p in net.parameters())
    assert count == 55_733_891, count
    x = torch.randn(batch, 3, 32, 32, device=device)
    sigma = (torch.randn(batch, device=device) * 1.2 - 1.2).exp()
    aug = torch.zeros(batch, 9, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def fwd():
        with torch.no_grad():
            net(x, sigma.log() / 4, aug)
        sync()

    def fwd_bwd():
        net(x, sigma.log() / 4, aug).square().mean().backward()
        sync()

    def train_step():
        # EDM loss: D = c_skip·y_n + c_out·F(c_in·y_n; ln σ/4), weight (σ²+σd²)/(σσd)².
        sd = 0.5
        s = (torch.randn(batch, device=device) * 1.2 - 1.2).exp()[:, None, None, None]
        n = torch.randn_like(x) * s
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        d = c_skip * (x + n) + c_out * net(c_in * (x + n), s.flatten().log() / 4, aug)
        loss = ((s**2 + sd**2) / (s * sd) ** 2 * (d - x) ** 2).sum() / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    sample_aug = torch.zeros(sample_batch, 9, device=device)
    latents = torch.randn(sample_batch, 3, 32, 32, device=device)

    def sampling():
        with torch.no_grad():
            heun(net.eval(), latents, sample_aug)
        net.train()
        sync()

    out = {"impl": "pytorch", "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(), "batch": batch, "params": count}
    jobs = [("fwd", fwd, batch), ("fwd_bwd", fwd_bwd, batch), ("train_step", train_step, batch)]
    if device.type == "cuda":
        jobs.append(("sample", sampling, sample_batch))
        out["sample_batch"] = sample_batch
    for name, f, n in jobs:
        f()
        ts = []
        for _ in range(repeats if name != "sample" else 2):
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        ts.sort()
        out[name + "_s"] = ts[len(ts) // 2]
        out[name + "_img_s"] = n / ts[len(ts) // 2]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
