#!/usr/bin/env bash
# Runs on a GPU machine (x86-64, NVIDIA driver, PyTorch with its CUDA 13 libraries, no Rust
# toolchain, no internet), from the repository root, with dist/cuda/ from
# scripts/build-cuda.sh beside it:
#
#   1. the CPU-vs-CUDA agreement tests (tests/cuda.rs): the exact estimator, the denoiser of
#      each network (DDPM++, NCSN++, ADM, DiT), a training run and the Heun sampler;
#   2. a timing table, each lossfloor figure beside a PyTorch one measured in the same run on
#      the same GPU:
#      - exact estimator on CIFAR-10-shaped rows (EST_N=50,000 × 3072, synthetic uint8),
#        EST_QUERIES=4096 queries × EST_K=32 σ in [0.002, 80], median of 3, against scripts/bench_estimator_torch.py (same algorithm), and the
#        GPU's float32 matmul rate (8192³, TF32 off); lossfloor both as `lossfloor estimate`
#        (a fresh process: start-up and upload included) and in one warm process
#        (bench-estimator, timed as the PyTorch script times itself);
#      - DDPM++ CIFAR-10 training step (EDM loss, backward, Adam) at batch 128 (or the
#        largest power-of-two batch below that fits lossfloor in GPU memory, with PyTorch at
#        both batches), images/s, against scripts/ref_ddpmpp_torch.py (same network,
#        55,733,891 parameters);
#      - EDM Heun sampling, 18 steps = 35 network evaluations, batch 128, images/s;
#      - the training step again with candle's conv2d (backward) in place of ours, and one
#        256→256 3×3 convolution timed each way through both (probe-*.json);
#      - FID Inception-v3 feature extraction (32×32 images resized to 299×299 on the device),
#        images/s at batch 32 and 128 against PyTorch running the same TorchScript archive, and
#        the features of lossfloor on the GPU against PyTorch on the GPU and lossfloor on the
#        CPU (relative L2 below 1e-4, or the script fails). The archive is the stand-in
#        made by scripts/build-cuda.sh (dist/inception-stand-in.pt.xz, carried beside
#        dist/cuda.tar.xz): the real layers with random weights, since the real 87 MB file
#        cannot travel. Skipped when it is absent.
#
# Usage: scripts/gpu-check.sh [OUT_DIR]   (writes OUT_DIR/gpu-check.md and the logs; default out/gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu}
mkdir -p "$OUT"
DIST=${DIST:-dist/cuda}
EST_N=${EST_N:-50000}; EST_QUERIES=${EST_QUERIES:-4096}; EST_K=${EST_K:-32}
if [ ! -x "$DIST/lossfloor" ] && [ -f "$DIST.tar.xz" ]; then
    mkdir -p "$DIST" && tar -xJf "$DIST.tar.xz" -C "$DIST"
fi
[ -x "$DIST/lossfloor" ] || { echo "gpu-check: $DIST/lossfloor missing: run scripts/build-cuda.sh first" >&2; exit 2; }

. scripts/gpu-env.sh || exit 2
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
GPU=$(cut -d, -f1 "$OUT/gpu.txt" | head -1)

echo "== 1. CPU vs CUDA agreement tests"
"$DIST/cuda-tests" --test-threads=1 2>&1 | tee "$OUT/agreement.log"
tests_rc=${PIPESTATUS[0]}
# The multi-GPU build's tests (NCCL on one rank; two ranks where there are two GPUs and
# mpirun), when build-cuda.sh made it and this machine has Open MPI's library.
if [ -x "$DIST/cuda-tests-mpi" ] && ldconfig -p | grep -q libmpi.so.40; then
    echo "== 1b. NCCL data-parallel tests"
    LOSSFLOOR_MPI_BIN=$DIST/lossfloor-mpi "$DIST/cuda-tests-mpi" --test-threads=1 nccl two_gpus 2>&1 | tee "$OUT/nccl.log"
    [ "${PIPESTATUS[0]}" = 0 ] || tests_rc=1
else
    echo "== 1b. NCCL data-parallel tests: not run (no lossfloor-mpi build or no libmpi.so.40 here)"
fi

echo "== 2a. exact estimator"
DATA=$OUT/cifar-shaped.npy
$PY -c "import numpy as np; np.save('$DATA', np.random.default_rng(0).integers(0, 256, ($EST_N, 3, 32, 32), dtype=np.uint8))"
ours_est=()
for r in 1 2 3; do
    "$DIST/lossfloor" estimate --data "npy:$DATA" --device cuda --queries "$EST_QUERIES" \
        --sigmas "logspace:0.002:80:$EST_K" --out "$OUT/curve-cuda.json" >"$OUT/estimate.out" 2>"$OUT/estimate.err"
    ours_est+=("$(sed -n 's/^estimated .* in \([0-9.]*\)s$/\1/p' "$OUT/estimate.err")")
done
echo "lossfloor estimate times (s): ${ours_est[*]}"
"$DIST/lossfloor" estimate --data "npy:$DATA" --device cuda --queries $((EST_QUERIES / 4)) \
    --sigmas "logspace:0.002:80:$EST_K" --out "$OUT/curve-cuda-quarter.json" >/dev/null 2>"$OUT/estimate-quarter.err"
sed -n 's/^estimated .* in \([0-9.]*\)s$/\1/p' "$OUT/estimate-quarter.err" >"$OUT/estimate-quarter.txt"
# The same estimate timed in one warm process, as the PyTorch script times itself
# (crates/lossfloor-optimal/benches/exact_device.rs; pixel-like data of the same shape).
"$DIST/bench-estimator" --device cuda --n "$EST_N" --d 3072 --queries "$EST_QUERIES" --k "$EST_K" --repeats 3 \
    | tee "$OUT/estimator-ours-warm.json"
LOSSFLOOR_CUDA_ESTIMATOR=composed "$DIST/bench-estimator" --device cuda --n "$EST_N" --d 3072 \
    --queries "$EST_QUERIES" --k "$EST_K" --repeats 3 | tee "$OUT/estimator-ours-warm-composed.json"
$PY scripts/bench_estimator_torch.py "$DATA" "$EST_QUERIES" 0.002 80 "$EST_K" 3 | tee "$OUT/estimator-torch.json"

echo "== 2b/2c. DDPM++ training step and Heun sampling"
# Peak GPU memory of each process, read by nvidia-smi every 100 ms.
peak_mem() { # LOG -> MiB
    sort -n "$1" 2>/dev/null | tail -1
}
with_mem() { # LOG CMD... : runs CMD while logging used GPU memory to LOG
    local log=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" &
    local smi=$!
    "$@"; local rc=$?
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    return $rc
}
# The largest batch from 128 down that fits lossfloor in GPU memory, each try a fresh process.
B=128
until with_mem "$OUT/mem-ours.log" "$DIST/bench-step" --device cuda --batch $B --repeats 5 --sample-batch 128 --sample-repeats 2 >"$OUT/step-ours.json" 2>>"$OUT/step-ours.err"; do
    [ $B -gt 1 ] || { echo "gpu-check: bench-step failed even at batch 1" >&2; break; }
    B=$((B / 2))
done
grep -h "step_memory_mib\|failed" "$OUT/step-ours.err"
cat "$OUT/step-ours.json"
echo "lossfloor peak GPU memory: $(peak_mem "$OUT/mem-ours.log") MiB" | tee "$OUT/mem-summary.txt"
with_mem "$OUT/mem-torch.log" $PY scripts/ref_ddpmpp_torch.py "$B" 5 16 cuda 128 | tee "$OUT/step-torch.json"
echo "PyTorch peak GPU memory: $(peak_mem "$OUT/mem-torch.log") MiB" | tee -a "$OUT/mem-summary.txt"
# The same step with candle's conv2d instead of ours (run-time switch, see
# crates/lossfloor-ops/src/conv_cudnn.rs: in a cudnn build this keeps cuDNN's forward pass
# and swaps the backward for candle's conv_transpose2d and conv2d-based dW), and one
# 256→256 3×3 convolution timed each way through both routes at batch 32.
LOSSFLOOR_CUDA_CONV=candle "$DIST/bench-step" --device cuda --batch $B --repeats 5 --sample-batch 0 \
    >"$OUT/step-ours-candle-conv.json" 2>>"$OUT/step-ours.err" || echo "gpu-check: the step with candle's convolution failed" >&2
"$DIST/bench-step" --device cuda --optimizer --repeats 5 | tee "$OUT/optimizer.json"
"$DIST/bench-step" --device cuda --probe 32 | tee "$OUT/probe-cudnn.json"
LOSSFLOOR_CUDA_CONV=candle "$DIST/bench-step" --device cuda --probe 32 | tee "$OUT/probe-candle-conv.json"
if [ "$B" != 128 ]; then
    $PY scripts/ref_ddpmpp_torch.py 128 5 16 cuda 128 | tee "$OUT/step-torch-128.json"
fi

echo "== 2d. FID Inception-v3 feature extraction"
STAND_IN=${STAND_IN:-dist/inception-stand-in.pt}
if [ ! -f "$STAND_IN" ] && [ -f "$STAND_IN.xz" ]; then xz -dk "$STAND_IN.xz"; fi
fid_rc=0
if [ -f "$STAND_IN" ]; then
    "$DIST/bench-fid" 3 2048 --device cuda --batches 32,128 --weights "$STAND_IN" \
        --features-out "$OUT/fid-ours-cuda.npy" | tee "$OUT/fid-ours.json" || fid_rc=1
    "$DIST/bench-fid" 1 64 --device cpu --batches 32 --weights "$STAND_IN" \
        --features-out "$OUT/fid-ours-cpu.npy" >/dev/null || fid_rc=1
    $PY scripts/bench_inception_torch.py 3 2048 16 --device cuda --batches 32,128 \
        --weights "$STAND_IN" --features-out "$OUT/fid-torch-cuda.npy" | tee "$OUT/fid-torch.json" || fid_rc=1
else
    echo "gpu-check: no $STAND_IN(.xz): FID skipped (scripts/build-cuda.sh makes it)" | tee "$OUT/fid-skipped.txt"
fi

$PY - "$OUT" "$GPU" "${ours_est[@]}" <<'PY' | tee "$OUT/gpu-check.md"
import json, os, statistics, sys
out, gpu, times = sys.argv[1], sys.argv[2].strip(), [float(t) for t in sys.argv[3:] if t]
est = json.load(open(os.path.join(out, "estimator-torch.json")))
ours = json.load(open(os.path.join(out, "step-ours.json")))
torch_ = json.load(open(os.path.join(out, "step-torch.json")))
m, n, d, k = est["queries"], est["n"], est["d"], est["sigmas"]
nominal = 4 * m * n * d * k / 1e9            # distance GEMM + weighted sum, per σ
executed = (4 * m * n * d + 2 * m * n * d * k) / 1e9  # shared GEMM pair once + weighted sum per σ
t_ours, t_torch = statistics.median(times), est["estimator_s"]
peak = est["sgemm_gflops"]
print(f"GPU: {gpu}; PyTorch {est['torch']}; float32 matmul (8192³, TF32 off): {peak:,.0f} GFLOP/s\n")
print("| | lossfloor | PyTorch | lossfloor / PyTorch |")
print("|---|---|---|---|")
print(f"| exact estimator, {n:,}×{d}, {m} queries × {k} σ: wall s | {t_ours:.2f} | {t_torch:.2f} | {t_torch / t_ours:.2f}× speed |")
print(f"| … executed GFLOP/s (share of fp32 matmul peak) | {executed / t_ours:,.0f} ({executed / t_ours / peak:.0%}) | {executed / t_torch:,.0f} ({executed / t_torch / peak:.0%}) | |")
print(f"| … effective GFLOP/s (nominal 4·M·N·D per σ) | {nominal / t_ours:,.0f} | {nominal / t_torch:,.0f} | |")
try:
    warm = json.load(open(os.path.join(out, "estimator-ours-warm.json")))
    print(f"| … lossfloor in one warm process (bench-estimator): wall s; executed GFLOP/s (share) | {warm['wall_s']:.2f}; {warm['gflops']:,.0f} ({warm['gflops'] / peak:.0%}) | {t_torch:.2f} | {t_torch / warm['wall_s']:.2f}× speed |")
    print(f"| … the same without its data upload ({warm['upload_s']:.2f} s; PyTorch uploads before timing) | {warm['gflops_without_upload']:,.0f} ({warm['gflops_without_upload'] / peak:.0%}) | | |")
    comp = json.load(open(os.path.join(out, "estimator-ours-warm-composed.json")))
    print(f"| … the same with the composed softmax step (LOSSFLOOR_CUDA_ESTIMATOR=composed): wall s | {comp['wall_s']:.2f} | | |")
except Exception as e:
    print(f"(no warm-process estimator figure: {e})")
try:
    t_quarter = float(open(os.path.join(out, "estimate-quarter.txt")).read().split()[0])
    marginal = executed * 0.75 / (t_ours - t_quarter)
    print(f"| … lossfloor marginal GFLOP/s (4096 − 1024 queries; excludes upload and start-up) | {marginal:,.0f} ({marginal / peak:.0%}) | | |")
except Exception as e:
    print(f"(no marginal rate: {e})")
print(f"| DDPM++ training step, batch {ours['batch']}: img/s | {ours['train_step_img_s']:.0f} | {torch_['train_step_img_s']:.0f} | {ours['train_step_img_s'] / torch_['train_step_img_s']:.2f} |")
try:
    alt = json.load(open(os.path.join(out, "step-ours-candle-conv.json")))
    print(f"| … lossfloor with candle's conv2d backward (LOSSFLOOR_CUDA_CONV=candle): img/s | {alt['train_step_img_s']:.0f} | | {alt['train_step_img_s'] / torch_['train_step_img_s']:.2f} |")
except Exception as e:
    print(f"(no figure with candle's convolution: {e})")
try:
    opt = json.load(open(os.path.join(out, "optimizer.json")))
    print(f"| trainer work after the backward pass (nan_to_num, norm, Adam, EMA; bench-step --optimizer): ms per step | {opt['optimizer_s'] * 1e3:.1f} | | |")
except Exception as e:
    print(f"(no optimizer figure: {e})")
t128 = os.path.join(out, "step-torch-128.json")
if os.path.exists(t128):
    print(f"| PyTorch alone at batch 128: training step img/s | | {json.load(open(t128))['train_step_img_s']:.0f} | |")
mem = open(os.path.join(out, "mem-summary.txt")).read().split("\n")
mem = [l.split(": ")[-1].split()[0] if ": " in l else "?" for l in mem[:2]]
print(f"| … peak GPU memory (nvidia-smi), MiB | {mem[0]} | {mem[1] if len(mem) > 1 else '?'} | |")
so, st = ours.get("sample_img_s"), torch_.get("sample_img_s")
print(f"| Heun sampling, {ours['nfe']} NFE, batch {ours['sample_batch']}: img/s | {so if so is None else f'{so:.1f}'} | {st:.1f} | {'' if so is None else f'{so / st:.2f}'} |")
try:
    import numpy as np
    rates = {}
    for name in ("fid-ours.json", "fid-torch.json"):
        for line in open(os.path.join(out, name)):
            r = json.loads(line)
            rates.setdefault(r["batch"], {})[r["impl"]] = r["img_s"]
    for b, r in sorted(rates.items()):
        print(f"| FID Inception-v3 features (32×32 → 299×299), batch {b}: img/s | {r['lossfloor']:.0f} | {r['pytorch']:.0f} | {r['lossfloor'] / r['pytorch']:.2f} |")
    ours_f, torch_f, cpu_f = (np.load(os.path.join(out, f"fid-{n}.npy")).astype(np.float64)
                              for n in ("ours-cuda", "torch-cuda", "ours-cpu"))
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
    e_torch, e_cpu = rel(ours_f, torch_f), rel(ours_f, cpu_f)
    ok = e_torch < 1e-4 and e_cpu < 1e-4
    print(f"| … features of 64 images, relative L2: lossfloor CUDA vs PyTorch CUDA; vs lossfloor CPU | {e_torch:.1e}; {e_cpu:.1e} | | {'pass' if ok else 'FAIL'} |")
    open(os.path.join(out, "fid-agreement.txt"), "w").write("pass\n" if ok else "FAIL\n")
except Exception as e:
    print(f"(no FID figures: {e})")
PY
if [ -f "$OUT/fid-agreement.txt" ] && ! grep -q pass "$OUT/fid-agreement.txt"; then fid_rc=1; fi
echo "FID agreement exit code: $fid_rc"
[ "$tests_rc" = 0 ] && tests_rc=$fid_rc
echo "agreement tests exit code: $tests_rc"
exit "$tests_rc"
