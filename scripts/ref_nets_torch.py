#!/usr/bin/python3
"""PyTorch reference outputs of EDM's SongUNet and DhariwalUNet, and of DiT, for lossfloor's
weight-compatibility test.

An independent PyTorch implementation (written for lossfloor, not EDM's code) of the
architectures of SongUNet and DhariwalUNet (ADM) in NVlabs/edm `training/networks.py`, with EDM's module names, so
its `state_dict` keys are EDM's (`enc.16x16_conv.weight`, ...; lossfloor adds the
preconditioner's `model.` prefix). For a few small configurations covering every option
(positional/Fourier embedding, standard/skip/residual encoder, standard/skip decoder,
resample filters [1,1] and [1,3,3,1], attention, class and augment conditioning), for ADM,
and for a small DiT (facebookresearch/DiT's models.py names: `x_embedder.proj`,
`blocks.0.adaLN_modulation.1`, ...) it fills
every tensor with values from a fixed formula of its name (`fill` below, mirrored in
crates/lossfloor-nets/tests/torch_parity.rs), runs one forward pass on formula inputs and
writes crates/lossfloor-nets/tests/fixtures/torch_parity.json: per config the options,
the names and shapes of all stored tensors, and the output.

Needs torch (Debian: apt-get install -y python3-torch; run with /usr/bin/python3).
Usage: /usr/bin/python3 scripts/ref_songunet_torch.py [OUT]
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    ROOT, "crates/lossfloor-nets/tests/fixtures/torch_parity.json")


class Conv2d(nn.Module):
    """EDM's Conv2d: optional weight (kernel 0 = none), up/down resampling with a FIR filter."""

    def __init__(self, cin, cout, kernel, bias=True, up=False, down=False,
                 resample_filter=(1, 1), fused_resample=False):
        super().__init__()
        self.cin, self.cout, self.up, self.down, self.fused = cin, cout, up, down, fused_resample
        self.weight = nn.Parameter(torch.zeros(cout, cin, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(cout)) if kernel and bias else None
        f = torch.tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None, persistent=False)

    def forward(self, x):
        w, b, f = self.weight, self.bias, self.resample_filter
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused and self.up and w is not None:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.cin, 1, 1, 1]), groups=self.cin,
                                   stride=2, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.cout, 1, 1, 1]), groups=self.cout, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.cin, 1, 1, 1]), groups=self.cin,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.cin, 1, 1, 1]), groups=self.cin, stride=2,
                             padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.groups, self.eps = min(32, c // 4), eps
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class Linear(nn.Module):
    def __init__(self, cin, cout, bias=True):
        super().__init__()
        self.in_features = cin
        self.weight = nn.Parameter(torch.zeros(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

    def forward(self, x):
        x = x @ self.weight.t()
        return x + self.bias if self.bias is not None else x


class UNetBlock(nn.Module):
    """EDM's UNetBlock. SongUNet: skip_scale √½, eps 1e-6, one head, projecting skips.
    DhariwalUNet (`adm=True`): skip_scale 1, eps 1e-5, adaptive scale/shift, out // 64 heads,
    parameter-free skips when only resampling."""

    def __init__(self, cin, cout, emb, up=False, down=False, attention=False, filt=(1, 1),
                 adm=False):
        super().__init__()
        self.cin, self.cout, self.adm = cin, cout, adm
        eps = 1e-5 if adm else 1e-6
        self.skip_scale = 1.0 if adm else math.sqrt(0.5)
        self.heads = (cout // 64 if adm else 1) if attention else 0
        self.norm0 = GroupNorm(cin, eps)
        self.conv0 = Conv2d(cin, cout, 3, up=up, down=down, resample_filter=filt)
        self.affine = Linear(emb, cout * (2 if adm else 1))
        self.norm1 = GroupNorm(cout, eps)
        self.conv1 = Conv2d(cout, cout, 3)
        self.skip = None
        if cout != cin or up or down:
            kernel = 1 if not adm or cout != cin else 0
            self.skip = Conv2d(cin, cout, kernel, up=up, down=down, resample_filter=filt)
        if self.heads:
            self.norm2 = GroupNorm(cout, eps)
            self.qkv = Conv2d(cout, cout * 3, 1)
            self.proj = Conv2d(cout, cout, 1)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None]
        if self.adm:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(x)
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.heads:
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.heads, c // self.heads, 3, -1).unbind(2)
            a = torch.softmax(torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])), dim=2)
            y = torch.einsum("nqk,nck->ncq", a, v)
            x = (self.proj(y.reshape(n, c, h, w)) + x) * self.skip_scale
        return x


class DhariwalUNet(nn.Module):
    """EDM's re-implementation of ADM (Dhariwal & Nichol 2021)."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_emb=4,
                 num_blocks=3, attn_resolutions=(32, 16, 8)):
        super().__init__()
        emb_ch = model_channels * channel_mult_emb
        self.model_channels = model_channels
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        self.map_label = Linear(label_dim, emb_ch, bias=False) if label_dim else None
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, emb_ch, down=True, adm=True)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, emb_ch, attention=res in attn_resolutions, adm=True)
        skips = [b.cout if isinstance(b, UNetBlock) else b.cout for b in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, emb_ch, attention=True, adm=True)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, emb_ch, adm=True)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, emb_ch, up=True, adm=True)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, emb_ch, attention=res in attn_resolutions, adm=True)
        self.out_norm = GroupNorm(cout, 1e-5)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels, augment_labels):
        half = self.model_channels // 2
        freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32) / half)
        arg = noise_labels.ger(freqs)
        emb = torch.cat([arg.cos(), arg.sin()], dim=1)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        emb = F.silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.cin:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


class SongUNet(nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4,
                 num_blocks=4, attn_resolutions=(16,), embedding_type="positional",
                 channel_mult_noise=1, encoder_type="standard", decoder_type="standard",
                 resample_filter=(1, 1)):
        super().__init__()
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        self.embedding_type, self.noise_ch = embedding_type, noise_ch
        if embedding_type == "fourier":
            self.map_noise = nn.Module()
            self.map_noise.register_buffer("freqs", torch.zeros(noise_ch // 2))
        self.map_label = Linear(label_dim, noise_ch) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        filt = resample_filter
        self.enc = nn.ModuleDict()
        cout, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, emb_ch, down=True, filt=filt)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=filt)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=filt, fused_resample=True)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, emb_ch, attention=res in attn_resolutions, filt=filt)
        skips = [b.cout for name, b in self.enc.items() if "aux" not in name]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, emb_ch, attention=True, filt=filt)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, emb_ch, filt=filt)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, emb_ch, up=True, filt=filt)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, emb_ch, attention=(idx == num_blocks and res in attn_resolutions),
                    filt=filt)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=filt)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels, augment_labels):
        if self.embedding_type == "fourier":
            arg = noise_labels.ger(2 * np.pi * self.map_noise.freqs)
        else:
            half = self.noise_ch // 2
            freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
            arg = noise_labels.ger(freqs)
        emb = torch.cat([arg.cos(), arg.sin()], dim=1)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # sin first
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        aux, tmp = None, None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.cin:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


def sincos_1d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim, grid_size):
    """DiT's fixed positional embedding: the first half of the channels encodes the column
    (meshgrid(w, h) puts w first), the second the row; tokens in row-major order."""
    gh = np.arange(grid_size, dtype=np.float32)
    gw = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid_size, grid_size)
    return np.concatenate([sincos_1d(dim // 2, grid[0]), sincos_1d(dim // 2, grid[1])], axis=1)


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio):
        super().__init__()
        self.heads = heads
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn.proj = nn.Linear(hidden, hidden)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(hidden, int(hidden * mlp_ratio))
        self.mlp.fc2 = nn.Linear(int(hidden * mlp_ratio), hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def attention(self, x):
        b, t, c = x.shape
        qkv = self.attn.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = torch.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5, dim=-1)
        return self.attn.proj((a @ v).transpose(1, 2).reshape(b, t, c))

    def forward(self, x, c):
        sm, cm, gm, sp, cp, gp = self.adaLN_modulation(c).chunk(6, dim=1)
        ln = lambda z: F.layer_norm(z, z.shape[-1:], eps=1e-6)
        x = x + gm[:, None] * self.attention(ln(x) * (1 + cm[:, None]) + sm[:, None])
        h = ln(x) * (1 + cp[:, None]) + sp[:, None]
        return x + gp[:, None] * self.mlp.fc2(F.gelu(self.mlp.fc1(h), approximate="tanh"))


class DiT(nn.Module):
    """DiT (Peebles & Xie 2023) as facebookresearch/DiT's models.py defines it."""

    def __init__(self, input_size, patch_size, in_channels, hidden_size, depth, num_heads,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True):
        super().__init__()
        self.p, self.out_ch = patch_size, in_channels * (2 if learn_sigma else 1)
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(),
                                            nn.Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(
            num_classes + int(class_dropout_prob > 0), hidden_size)
        grid = input_size // patch_size
        pos = torch.from_numpy(sincos_2d(hidden_size, grid)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(hidden_size, patch_size * patch_size * self.out_ch)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, t, y):
        n = x.shape[0]
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        c = self.t_embedder.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        c = c + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
        x = self.final_layer.linear(x)
        h = int(x.shape[1] ** 0.5)
        x = x.reshape(n, h, h, self.p, self.p, self.out_ch)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, self.out_ch, h * self.p, h * self.p)


def fnv1a(name):
    h = 0xcbf29ce484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def fill(name, shape):
    """Deterministic tensor values from the tensor's name (mirrored in torch_parity.rs)."""
    n = int(np.prod(shape))
    phase = (fnv1a(name) % 1000) * 0.01
    s = np.sin(0.37 * np.arange(n, dtype=np.float64) + phase + 0.3)
    if len(shape) >= 2:
        v = s / math.sqrt(np.prod(shape[1:]))
    elif name.endswith("freqs"):
        v = 2.0 * s
    elif "norm" in name and name.endswith(".weight"):
        v = 1.0 + 0.2 * s
    else:
        v = 0.2 * s
    return v.astype(np.float32).reshape(shape)


def inputs(n, c, r, label_dim, augment_dim):
    """Formula inputs (mirrored in torch_parity.rs)."""
    x = np.sin(0.11 * np.arange(n * c * r * r, dtype=np.float64)).astype(np.float32)
    noise = np.array([-1.2, 0.45][:n], dtype=np.float32)
    labels = np.zeros((n, label_dim), dtype=np.float32)
    for i in range(n):
        if label_dim:
            labels[i, (2 * i + 1) % label_dim] = 1.0
    aug = (0.1 * np.sin(np.arange(n * augment_dim, dtype=np.float64))).astype(np.float32)
    return (torch.from_numpy(x.reshape(n, c, r, r)), torch.from_numpy(noise),
            torch.from_numpy(labels), torch.from_numpy(aug.reshape(n, augment_dim)))


DIT_CONFIGS = {
    "dit": dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=5, learn_sigma=True),
}

ADM_CONFIGS = {
    "adm": dict(img_resolution=16, in_channels=3, out_channels=3, label_dim=5, augment_dim=2,
                model_channels=32, channel_mult=[1, 2, 2], channel_mult_emb=2, num_blocks=1,
                attn_resolutions=[16, 8]),
}

CONFIGS = {
    "ddpmpp": dict(img_resolution=16, in_channels=3, out_channels=3, label_dim=4, augment_dim=2,
                   model_channels=8, channel_mult=[1, 2, 2], channel_mult_emb=2, num_blocks=1,
                   attn_resolutions=[8], embedding_type="positional", channel_mult_noise=1,
                   encoder_type="standard", decoder_type="standard", resample_filter=[1, 1]),
    "ncsnpp": dict(img_resolution=16, in_channels=3, out_channels=3, label_dim=0, augment_dim=0,
                   model_channels=8, channel_mult=[1, 2, 2], channel_mult_emb=2, num_blocks=1,
                   attn_resolutions=[8], embedding_type="fourier", channel_mult_noise=2,
                   encoder_type="residual", decoder_type="standard", resample_filter=[1, 3, 3, 1]),
    "skip": dict(img_resolution=16, in_channels=2, out_channels=2, label_dim=0, augment_dim=0,
                 model_channels=8, channel_mult=[1, 2], channel_mult_emb=4, num_blocks=2,
                 attn_resolutions=[16], embedding_type="positional", channel_mult_noise=1,
                 encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
}


def main():
    torch.set_num_threads(1)
    out = {}
    cases = [(k, c, SongUNet) for k, c in CONFIGS.items()]
    cases += [(k, c, DhariwalUNet) for k, c in ADM_CONFIGS.items()]
    for key, cfg, arch in cases:
        net = arch(**cfg).eval()
        tensors = {}
        with torch.no_grad():
            # state_dict: parameters and Fourier freqs. EDM also stores each resampling
            # conv's constant `resample_filter`; lossfloor rebuilds those from the config
            # (scripts/convert_edm_pkl.py drops them), so they are non-persistent here.
            for name, t in net.state_dict(keep_vars=True).items():
                v = fill("model." + name, list(t.shape))
                with torch.no_grad():
                    t.copy_(torch.from_numpy(v))
                tensors["model." + name] = list(t.shape)
            n, c, r = 2, cfg["in_channels"], cfg["img_resolution"]
            x, noise, labels, aug = inputs(n, c, r, cfg["label_dim"], cfg["augment_dim"])
            y = net(x, noise, labels if cfg["label_dim"] else None,
                    aug if cfg["augment_dim"] else None)
        out[key] = {
            "config": cfg,
            "tensors": dict(sorted(tensors.items())),
            "output_shape": list(y.shape),
            "output": [float(v) for v in y.flatten().numpy()],
        }
        print(f"{key}: {sum(np.prod(s) for s in tensors.values())} values in {len(tensors)} "
              f"tensors, output {list(y.shape)}, |y| max {y.abs().max():.4f}")
    for key, cfg in DIT_CONFIGS.items():
        net = DiT(**cfg).eval()
        tensors = {}
        for name, t in net.state_dict(keep_vars=True).items():
            tensors[name] = list(t.shape)
            if name == "pos_embed":
                continue  # fixed sin-cos table, computed by each side
            with torch.no_grad():
                t.copy_(torch.from_numpy(fill(name, list(t.shape))))
        n, c, r = 2, cfg["in_channels"], cfg["input_size"]
        x, _, _, _ = inputs(n, c, r, 0, 0)
        t = torch.tensor([3.5, 640.0])  # DiT's timesteps, 0..999
        y = torch.tensor([1, cfg["num_classes"]])  # a class and the null class
        with torch.no_grad():
            out_t = net(x, t, y)
        out[key] = {
            "config": cfg,
            "tensors": dict(sorted(tensors.items())),
            "output_shape": list(out_t.shape),
            "output": [float(v) for v in out_t.flatten().numpy()],
        }
        print(f"{key}: {len(tensors)} tensors, output {list(out_t.shape)}, "
              f"|y| max {out_t.abs().max():.4f}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
