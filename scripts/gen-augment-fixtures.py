#!/usr/bin/python3
"""Parity fixtures for crates/lossfloor-augment, computed by NVlabs/edm's own training/augment.py.

Usage (Debian's python3 with torch and numpy: apt-get install -y python3-torch python3-numpy):

    /usr/bin/python3 scripts/gen-augment-fixtures.py [--edm-git-dir DIR] [--out DIR]

DIR is a git directory of NVlabs/edm (default: the mirror the `fetch` tool makes,
/work/.mirror/NVlabs+edm/repo, or $EDM_GIT_DIR). The reference files (training/augment.py and
the torch_utils/dnnlib modules it imports) are extracted from HEAD into a temporary folder at
run time and imported from there; nothing of the reference is copied into this repository.

The pipe is built with the arguments of EDM's `train.py --augment=P`
(p=P, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1). To make it use
chosen random numbers, torch.rand / torch.randn / torch.randint are replaced during the call by
a script that hands out prepared values in the reference's call order and checks the shape of
every request, so the reference itself turns the draws into parameters, images and labels.

Per case the output folder gets:
  <case>.json        shape, p, per-image raw draws (the order of RawDraws in the crate),
                     the parameters the reference ends up using (its float32 arithmetic,
                     stored as exact decimal of those float32 values), its labels [N, 9]
  <case>-input.npy   the input batch, float32 NCHW
  <case>-output.npy  the reference's augmented batch, float32 NCHW
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

DEFAULT_GIT_DIR = os.environ.get("EDM_GIT_DIR", "/work/.mirror/NVlabs+edm/repo")

# Field order of one image's raw draws (= lossfloor_augment::RawDraws).
RAW_FIELDS = [
    "xflip_bit", "xflip_gate", "yflip_bit", "yflip_gate",
    "scale_normal", "scale_gate", "rotate_uniform", "rotate_gate",
    "aniso_normal", "aniso_angle_uniform", "aniso_gate", "aniso_angle_gate",
    "tx_normal", "ty_normal", "translate_gate",
]

PASS, FAIL = 0.01, 0.9  # gate values that pass / fail at p = 0.12 with multiplier 1


def extract_reference(git_dir, dest):
    """Extracts the reference's augment.py and the modules it imports into dest."""
    archive = subprocess.run(
        ["git", "--git-dir", git_dir, "archive", "HEAD",
         "training/augment.py", "torch_utils", "dnnlib"],
        check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    # Import only augment.py (training/__init__.py would pull in the networks).
    open(os.path.join(dest, "training", "__init__.py"), "w").close()


@contextlib.contextmanager
def scripted_rng(requests):
    """Replaces torch.rand/randn/randint by a queue of (kind, shape, values); each request of
    the reference must match the next entry's kind and shape."""
    queue = list(requests)
    saved = torch.rand, torch.randn, torch.randint

    def serve(kind, shape, dtype):
        assert queue, f"reference asked for an extra torch.{kind}{list(shape)}"
        want_kind, want_shape, values = queue.pop(0)
        assert (kind, list(shape)) == (want_kind, list(want_shape)), \
            f"reference asked for torch.{kind}{list(shape)}, script has {want_kind}{want_shape}"
        return torch.tensor(np.asarray(values).reshape(shape), dtype=dtype)

    def rand(shape, device=None):
        return serve("rand", shape, torch.float32)

    def randn(shape, device=None):
        return serve("randn", shape, torch.float32)

    def randint(high, shape, device=None):
        assert high == 2, "only the flips' randint(2) is scripted"
        return serve("randint", shape, torch.int64)

    torch.rand, torch.randn, torch.randint = rand, randn, randint
    try:
        yield
        assert not queue, f"reference left {len(queue)} scripted draws unused"
    finally:
        torch.rand, torch.randn, torch.randint = saved


def requests_for(draws):
    """The reference's sequence of RNG calls for a batch with per-image raw draws."""
    n = len(draws)
    col = lambda k: [d[k] for d in draws]
    return [
        ("randint", [n, 1, 1, 1], col("xflip_bit")),
        ("rand", [n, 1, 1, 1], col("xflip_gate")),
        ("randint", [n, 1, 1, 1], col("yflip_bit")),
        ("rand", [n, 1, 1, 1], col("yflip_gate")),
        ("randn", [n], col("scale_normal")),
        ("rand", [n], col("scale_gate")),
        ("rand", [n], col("rotate_uniform")),
        ("rand", [n], col("rotate_gate")),
        ("randn", [n], col("aniso_normal")),
        ("rand", [n], col("aniso_angle_uniform")),
        ("rand", [n], col("aniso_gate")),
        ("rand", [n], col("aniso_angle_gate")),
        ("randn", [2, n], [col("tx_normal"), col("ty_normal")]),
        ("rand", [1, n], col("translate_gate")),
    ]


def effective_params(draws, p):
    """The parameters the reference computes from the draws, with its float32 arithmetic
    (`(u*2-1)*pi`, gates `u < multiplier*p`)."""
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)
    angle = lambda u: float((f32(u) * 2 - 1) * np.pi)
    gate = lambda u, mult: bool(f32(u) < mult * p)
    out = []
    for d in draws:
        on_t = gate(d["translate_gate"], 1)
        out.append({
            "xflip": int(d["xflip_bit"] and gate(d["xflip_gate"], 1e8)),
            "yflip": int(d["yflip_bit"] and gate(d["yflip_gate"], 1)),
            "scale": float(f32(d["scale_normal"])) if gate(d["scale_gate"], 1) else 0.0,
            "rotate": angle(d["rotate_uniform"]) if gate(d["rotate_gate"], 1) else 0.0,
            "aniso": float(f32(d["aniso_normal"])) if gate(d["aniso_gate"], 1) else 0.0,
            "aniso_angle": angle(d["aniso_angle_uniform"]) if bool(f32(d["aniso_angle_gate"]) < 0.5) else 0.0,
            "tx": float(f32(d["tx_normal"])) if on_t else 0.0,
            "ty": float(f32(d["ty_normal"])) if on_t else 0.0,
        })
    return out


def draw(**kw):
    """One image's raw draws: every gate fails and every value is zero unless given."""
    d = {k: 0.0 for k in RAW_FIELDS}
    d.update(xflip_bit=0, yflip_bit=0, rotate_uniform=0.5, aniso_angle_uniform=0.5)
    for k in ["xflip_gate", "yflip_gate", "scale_gate", "rotate_gate", "aniso_gate",
              "aniso_angle_gate", "translate_gate"]:
        d[k] = FAIL
    d["xflip_gate"] = PASS  # multiplier 1e8: the x-flip gate always passes at any p > 0
    d.update(kw)
    return d


def angle_uniform(theta):
    """The uniform u with (2u - 1)·pi = theta."""
    return (theta / np.pi + 1) / 2


CASES = {
    # 4 RGB 8x8 images: the identity, and the transforms alone and together.
    "rgb8": ([4, 3, 8, 8], 0.12, [
        draw(),
        draw(xflip_bit=1, rotate_uniform=angle_uniform(0.7), rotate_gate=PASS,
             tx_normal=0.3, ty_normal=-0.5, translate_gate=PASS),
        draw(yflip_bit=1, yflip_gate=PASS, scale_normal=-1.2, scale_gate=PASS,
             aniso_normal=0.8, aniso_gate=PASS,
             aniso_angle_uniform=angle_uniform(0.9), aniso_angle_gate=0.2),
        draw(xflip_bit=1, yflip_bit=1, yflip_gate=PASS, scale_normal=0.6, scale_gate=PASS,
             rotate_uniform=angle_uniform(-2.5), rotate_gate=PASS,
             aniso_normal=-1.1, aniso_gate=PASS,
             aniso_angle_uniform=angle_uniform(2.0), aniso_angle_gate=0.7,
             tx_normal=-0.4, ty_normal=0.9, translate_gate=PASS),
    ]),
    # 4 grey 12x12 images: gates just either side of p = 0.12, failed gates with values set.
    "gray12": ([4, 1, 12, 12], 0.12, [
        draw(xflip_bit=1, xflip_gate=0.999, scale_normal=1.5, scale_gate=0.119,
             rotate_uniform=0.3, rotate_gate=0.121),
        draw(yflip_bit=1, yflip_gate=0.121, aniso_normal=2.0, aniso_gate=0.119,
             aniso_angle_uniform=0.85, aniso_angle_gate=0.499),
        draw(tx_normal=1.7, ty_normal=0.2, translate_gate=0.119,
             aniso_normal=-0.7, aniso_gate=0.5, aniso_angle_uniform=0.1, aniso_angle_gate=0.1),
        draw(xflip_bit=1, yflip_bit=1, yflip_gate=0.05, scale_normal=-0.4, scale_gate=0.05,
             rotate_uniform=0.91, rotate_gate=0.05, aniso_normal=0.35, aniso_gate=0.05,
             aniso_angle_uniform=0.4, aniso_angle_gate=0.6,
             tx_normal=-1.1, ty_normal=-0.3, translate_gate=0.05),
    ]),
    # 2 RGB 16x16 images with large transforms: the padding margin reaches its clamp W - 1.
    "rgb16": ([2, 3, 16, 16], 0.12, [
        draw(scale_normal=-3.0, scale_gate=PASS, rotate_uniform=angle_uniform(np.pi / 4),
             rotate_gate=PASS, tx_normal=1.5, ty_normal=-2.0, translate_gate=PASS),
        draw(scale_normal=2.5, scale_gate=PASS, aniso_normal=-2.0, aniso_gate=PASS,
             aniso_angle_uniform=angle_uniform(-0.6), aniso_angle_gate=PASS),
    ]),
    # 2 grey 6x10 images (non-square): x and y conventions.
    "gray6x10": ([2, 1, 6, 10], 0.12, [
        draw(rotate_uniform=angle_uniform(0.4), rotate_gate=PASS, tx_normal=0.8,
             ty_normal=0.0, translate_gate=PASS),
        draw(yflip_bit=1, yflip_gate=PASS, aniso_normal=1.3, aniso_gate=PASS,
             ty_normal=-1.0, tx_normal=0.5, translate_gate=PASS),
    ]),
    # 2 grey 8x8 images with every transform off: the resampling alone.
    "identity8": ([2, 1, 8, 8], 0.12, [draw(), draw()]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edm-git-dir", default=DEFAULT_GIT_DIR)
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lossfloor-augment",
        "tests", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    commit = subprocess.run(["git", "--git-dir", args.edm_git_dir, "rev-parse", "HEAD"],
                            check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as ref_dir:
        extract_reference(args.edm_git_dir, ref_dir)
        sys.path.insert(0, ref_dir)
        from training.augment import AugmentPipe  # noqa: E402 (the extracted reference)

        for case_index, (name, (shape, p, draws)) in enumerate(CASES.items()):
            assert len(draws) == shape[0]
            # Store draws as the float32 values the reference sees.
            draws = [{k: (int(v) if k.endswith("_bit") else float(np.float32(v)))
                      for k, v in d.items()} for d in draws]
            rng = np.random.default_rng(1000 + case_index)
            images = rng.uniform(-1, 1, size=shape).astype(np.float32)
            pipe = AugmentPipe(p=p, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
                               translate_frac=1)
            with torch.no_grad(), scripted_rng(requests_for(draws)):
                out, labels = pipe(torch.from_numpy(images.copy()))
            np.save(os.path.join(args.out, f"{name}-input.npy"), images)
            np.save(os.path.join(args.out, f"{name}-output.npy"),
                    out.numpy().astype(np.float32))
            record = {
                "reference": f"NVlabs/edm {commit} training/augment.py",
                "torch": torch.__version__,
                "shape": shape,
                "p": p,
                "draws": draws,
                "params": effective_params(draws, p),
                "labels": labels.numpy().astype(np.float64).tolist(),
            }
            with open(os.path.join(args.out, f"{name}.json"), "w") as f:
                json.dump(record, f, indent=1)
            print(f"{name}: shape {shape}, |out - in| max "
                  f"{np.abs(out.numpy() - images).max():.3g}")


if __name__ == "__main__":
    main()
