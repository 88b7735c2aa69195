#!/usr/bin/env python3
"""Writes a stand-in for the FID Inception TorchScript: the same archive (the same modules,
code and layer shapes, so both lossfloor and PyTorch run it exactly as they run the real one)
with the weights replaced, for timing and CPU-vs-GPU-vs-PyTorch agreement on a GPU machine
that cannot fetch the real file (scripts/gpu-check.sh). Its features mean nothing for FID.

Each convolution weight is a random sign times sqrt(2 / fan_in) (He scaling, so activations
keep their size through the 94 ReLU layers), each batch-norm shift, mean and variance a
random value near 0, 0 and 1. Weights of two values per layer compress: the .xz file is a
few MB where the real weights are 87 MB, which is what lets it travel to the GPU machine.

Needs the real file (scripts/fetch-inception.sh) and torch (Debian: apt-get install -y
python3-torch; run with /usr/bin/python3).
Usage: /usr/bin/python3 scripts/make-inception-stand-in.py [OUT.pt]   (default
dist/inception-stand-in.pt, then compressed to OUT.pt.xz)
"""
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(ROOT, ".weights/inception-2015-12-05.pt")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "dist/inception-stand-in.pt")


def main():
    if not os.path.isfile(REAL):
        sys.exit(f"make-inception-stand-in: {REAL} missing: run scripts/fetch-inception.sh")
    model = torch.jit.load(REAL, map_location="cpu").eval()
    g = torch.Generator().manual_seed(20151205)
    state = model.state_dict()
    convs = 0
    with torch.no_grad():
        for name, t in state.items():
            if name.endswith(".weight"):
                fan_in = t[0].numel()
                sign = torch.randint(0, 2, t.shape, generator=g).to(t.dtype) * 2 - 1
                t.copy_(sign * (2.0 / fan_in) ** 0.5)
                convs += 1
            elif name.endswith(".beta") or name.endswith(".mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
            elif name.endswith(".var"):
                t.copy_(1 + torch.rand(t.shape, generator=g) * 0.2 - 0.1)
            else:
                sys.exit(f"make-inception-stand-in: unexpected tensor {name}")
    if convs != 94:
        sys.exit(f"make-inception-stand-in: {convs} convolutions, expected 94")
    os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
    torch.jit.save(model, OUT + ".tmp")
    os.replace(OUT + ".tmp", OUT)
    subprocess.run(["xz", "-T0", "-6", "-k", "-f", OUT], check=True)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 2**20:.1f} MiB) and {OUT}.xz "
          f"({os.path.getsize(OUT + '.xz') / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
