//! The exact estimator's device path (`estimate_exact_on_device`) timed in one warm process,
//! the way scripts/bench_estimator_torch.py times PyTorch: one warm-up call on min(M, 1024)
//! queries first (CUDA context, NVRTC/cuBLAS initialisation), then the median of REPEATS
//! calls. Each call uploads and centres the data (the PyTorch script does that once, before
//! timing), so the upload is also timed on its own, as a call with zero queries, and the
//! rate is given both with and without it.
//!
//! Data: N rows of D uint8-like values scaled to [-1, 1] (the CIFAR-10 shape by default),
//! the same for every call; σ log-spaced in [0.002, 80].
//!
//! Executed flops per call: 4·M·N·D for the shared distance GEMM pair ([X_src; E]·Xᵀ) plus
//! 2·M·N·D per σ for the weighted sum, as in scripts/gpu-check.sh.
//!
//! Usage: cargo bench -p lossfloor-optimal --bench exact_device -- [--device cuda]
//!        [--n 50000] [--d 3072] [--queries 4096] [--k 32] [--repeats 3]
//! Prints one JSON line.

use std::time::Instant;

use lossfloor_optimal::{estimate_exact_on_device, DenseRows};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn num(name: &str, default: &str) -> usize {
    arg(name, default)
        .parse()
        .unwrap_or_else(|_| panic!("{name} takes a whole number"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let device = lossfloor_ops::open_device(&arg("--device", "cpu")).expect("device opens");
    let (n, d) = (num("--n", "50000"), num("--d", "3072"));
    let (queries, k, repeats) = (
        num("--queries", "4096"),
        num("--k", "32"),
        num("--repeats", "3"),
    );

    // Pixel-like values: a fixed hash of the index to 0..=255, scaled as images are.
    let values: Vec<f32> = (0..n * d)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as f32 / 127.5 - 1.0)
        .collect();
    let data = DenseRows::new(values, d);
    let sigmas: Vec<f64> = (0..k)
        .map(|i| {
            let t = if k > 1 {
                i as f64 / (k - 1) as f64
            } else {
                0.0
            };
            (0.002f64.ln() + t * (80f64 / 0.002).ln()).exp()
        })
        .collect();
    let run = |m: usize| {
        let t = Instant::now();
        let v = estimate_exact_on_device(&data, &sigmas, m, 0, &device, &|_| {})
            .expect("the estimate runs");
        // The values come back to the host, so the device work is finished here.
        assert_eq!(v.len(), sigmas.len());
        t.elapsed().as_secs_f64()
    };
    run(queries.min(1024));
    let upload = median((0..repeats).map(|_| run(0)).collect());
    let wall = median((0..repeats).map(|_| run(queries)).collect());
    let (m, nn, dd) = (queries as f64, n as f64, d as f64);
    let executed = (4.0 * m * nn * dd + 2.0 * m * nn * dd * k as f64) / 1e9;
    println!(
        "{{\"device\": \"{}\", \"n\": {n}, \"d\": {d}, \"queries\": {queries}, \"sigmas\": {k}, \"repeats\": {repeats}, \"wall_s\": {wall:.4}, \"upload_s\": {upload:.4}, \"executed_gflop\": {executed:.1}, \"gflops\": {:.1}, \"gflops_without_upload\": {:.1}}}",
        arg("--device", "cpu"),
        executed / wall,
        executed / (wall - upload).max(1e-9)
    );
}
