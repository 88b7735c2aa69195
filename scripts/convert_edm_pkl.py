#!/usr/bin/env python3
"""Convert an NVlabs/edm network pickle into a lossfloor network checkpoint.

Usage (run beside an NVlabs/edm checkout, https://github.com/NVlabs/edm, whose
`dnnlib` and `torch_utils` packages must be importable so that the pickle loads):

    PYTHONPATH=/path/to/edm python convert_edm_pkl.py network-snapshot.pkl out.safetensors
    lossfloor sample --checkpoint out.safetensors --seeds 0-63 --grid grid.png

The pickle's `ema` network (a VPPrecond / VEPrecond / iDDPMPrecond / EDMPrecond
wrapping a SongUNet or DhariwalUNet) is read; its class and constructor arguments
become the checkpoint's metadata, with the same keys as lossfloor's
`save_network`:

    lossfloor.format  = "network-v1"
    lossfloor.network = {"arch": "songunet" | "dhariwal", "config": {EDM's option names}}
    lossfloor.precond = {"process": "vp" | "ve" | "iddpm" | "edm", "sigma_data": ...}

The tensors are the preconditioner's `state_dict` entries under `model.` (parameters
and the Fourier embedding's `freqs` buffer) as float32; EDM's constant
`resample_filter` buffers and iDDPM's `u` table (both recomputed from the
configuration) are left out. When the `safetensors` package is missing, the file is
written by hand (8-byte little-endian header length, JSON header, raw data).

Requirements: Python 3.8+, PyTorch and NumPy (EDM's own environment).
"""

import json
import math
import os
import pickle
import struct
import sys

# Constructor options of EDM's networks that lossfloor's configs know, by class.
SONG_OPTIONS = [
    "img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim",
    "model_channels", "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions",
    "dropout", "label_dropout", "embedding_type", "channel_mult_noise", "encoder_type",
    "decoder_type", "resample_filter",
]
DHARIWAL_OPTIONS = [
    "img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim",
    "model_channels", "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions",
    "dropout", "label_dropout",
]
ARCHS = {"SongUNet": ("songunet", SONG_OPTIONS), "DhariwalUNet": ("dhariwal", DHARIWAL_OPTIONS)}

# Preconditioners: process name and the hyper-parameters lossfloor's process assumes.
PRECONDS = {
    "VPPrecond": ("vp", {"beta_d": 19.9, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5}),
    "VEPrecond": ("ve", {"sigma_min": 0.02, "sigma_max": 100}),
    "iDDPMPrecond": ("iddpm", {"C_1": 0.001, "C_2": 0.008, "M": 1000}),
    "EDMPrecond": ("edm", {"sigma_min": 0, "sigma_max": float("inf")}),
}
# Precond arguments that do not change the network or its preconditioning.
PRECOND_IGNORED = {"img_resolution", "img_channels", "label_dim", "use_fp16", "model_type"}


def fail(msg):
    sys.exit("convert_edm_pkl: error: " + msg)


def plain(value):
    """JSON-friendly copy of a constructor argument (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return value


def network_config(model):
    """(arch, config dict) of EDM's inner SongUNet / DhariwalUNet."""
    cls = type(model).__name__
    if cls not in ARCHS:
        fail("the network class is %s; only SongUNet and DhariwalUNet are supported" % cls)
    arch, options = ARCHS[cls]
    kwargs = dict(getattr(model, "init_kwargs", None) or {})
    if not kwargs:
        fail("%s has no init_kwargs: is this a pickle written by EDM's training loop?" % cls)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        fail("%s options not supported by lossfloor: %s" % (cls, ", ".join(unknown)))
    config = {k: plain(kwargs[k]) for k in options if k in kwargs}
    if "resample_filter" in config:
        config["resample_filter"] = [float(v) for v in config["resample_filter"]]
    for k in ("img_resolution", "in_channels", "out_channels"):
        if k not in config:
            fail("%s init_kwargs lack %s" % (cls, k))
    return arch, config


def precond_spec(net):
    """lossfloor's {"process", "sigma_data"} of EDM's preconditioner."""
    cls = type(net).__name__
    if cls not in PRECONDS:
        fail("the pickle's ema is a %s; expected one of %s" % (cls, ", ".join(PRECONDS)))
    process, defaults = PRECONDS[cls]
    kwargs = dict(getattr(net, "init_kwargs", None) or {})
    for key, want in defaults.items():
        got = float(kwargs.get(key, want))
        if not (got == want or (math.isfinite(got) and abs(got - want) <= 1e-12 * abs(want))):
            fail("%s uses %s=%r, but lossfloor's %s process assumes %r" % (cls, key, got, process, want))
    known = set(defaults) | PRECOND_IGNORED | {"sigma_data"}
    extra = sorted(k for k in kwargs if k not in known)
    spec = {"process": process}
    if process == "edm":
        spec["sigma_data"] = float(kwargs.get("sigma_data", 0.5))
    return spec, extra


def state_tensors(net):
    """Sorted (name, float32 little-endian numpy array) of the tensors lossfloor stores."""
    out = []
    for name, t in net.state_dict().items():
        if not name.startswith("model."):
            continue  # iDDPMPrecond's `u` table
        if name.endswith(".resample_filter"):
            continue  # constant FIR buffers, rebuilt from the configuration
        out.append((name, t.detach().cpu().float().contiguous().numpy().astype("<f4")))
    out.sort(key=lambda item: item[0])
    if not out:
        fail("the network has no tensors under model.")
    return out


def safetensors_bytes(tensors, metadata):
    """The safetensors encoding of float32 arrays, written by hand."""
    header = {"__metadata__": metadata}
    offset = 0
    for name, a in tensors:
        n = a.size * 4
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)  # keep the data 8-byte aligned
    parts = [struct.pack("<Q", len(text)), text]
    parts.extend(a.tobytes(order="C") for _, a in tensors)
    return b"".join(parts)


def write_atomic(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.tmp%d" % (os.path.basename(path), os.getpid()))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def encode(tensors, metadata):
    try:
        from safetensors.numpy import save  # optional
    except ImportError:
        return safetensors_bytes(tensors, metadata)
    return save(dict(tensors), metadata=metadata)


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv[1:] in (["-h"], ["--help"]) else 2
    src, dst = argv[1], argv[2]
    if not os.path.isfile(src):
        fail("%s does not exist" % src)
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        fail("the folder of %s does not exist" % dst)
    try:
        with open(src, "rb") as f:
            data = pickle.load(f)
    except ModuleNotFoundError as e:
        fail("%s (put an NVlabs/edm checkout on PYTHONPATH so its pickles load)" % e)
    net = data.get("ema") if isinstance(data, dict) else None
    if net is None:
        fail("%s has no 'ema' network" % src)
    model = getattr(net, "model", None)
    if model is None:
        fail("%s has no inner .model" % type(net).__name__)
    arch, config = network_config(model)
    precond, ignored = precond_spec(net)
    tensors = state_tensors(net)
    metadata = {
        "lossfloor.format": "network-v1",
        "lossfloor.network": json.dumps({"arch": arch, "config": config}),
        "lossfloor.precond": json.dumps(precond),
        "lossfloor.source": os.path.basename(src),
        "lossfloor.converted_by": "scripts/convert_edm_pkl.py",
    }
    write_atomic(dst, encode(tensors, metadata))
    count = sum(a.size for name, a in tensors if not name.endswith(".freqs"))
    print("%s: %s %s, process %s, %d tensors, %.2f M parameters -> %s"
          % (src, type(net).__name__, arch, precond["process"], len(tensors), count / 1e6, dst))
    if ignored:
        print("note: precond options not carried over: " + ", ".join(ignored))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
