//! Inception feature extraction throughput (32×32 RGB images resized to 299×299), printed
//! as one JSON line per batch size: `{"impl":"lossfloor","batch":B,"img_s":…}` with the
//! median over repeats. Run by `scripts/bench-fid` beside PyTorch running the same
//! TorchScript, and on a GPU by `scripts/gpu-check.sh` (packed as `bench-fid`).
//!
//! Usage: cargo bench -p lossfloor-fid --bench inception -- [REPEATS] [N]
//!          [--device cpu|cuda] [--batches 8,32] [--weights FILE] [--features-out FILE.npy]
//!
//! `--weights` reads the archive without its sha256 check, so that a stand-in with the
//! same layers (scripts/make-inception-stand-in.py) can be timed where the real file is
//! not at hand; `--features-out` writes the features of the first (up to 64) images, from
//! the last batch size, as float32 `.npy` `[rows, 2048]` for comparison with PyTorch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use lossfloor_fid::{InceptionV3, InceptionWeights};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bench inception: {msg}");
    std::process::exit(1);
}

fn option(args: &[String], name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    Some(
        args.get(i + 1)
            .cloned()
            .unwrap_or_else(|| fail(format!("{name} needs a value"))),
    )
}

/// Waits for queued device work (a one-element read), so wall-clock timings include it.
fn sync(t: &candle_core::Tensor) {
    t.flatten_all()
        .and_then(|t| t.narrow(0, 0, 1))
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| fail(e));
}

fn main() {
    // As the lossfloor binary does (lossfloor_ops::alloc).
    lossfloor_ops::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    // Positional numbers (cargo bench also passes `--bench`): the repeats and the image count.
    let mut nums = Vec::new();
    let mut i = 1;
    while i < args.len() {
        if args[i].starts_with("--") {
            i += if args[i] == "--bench" { 1 } else { 2 };
            continue;
        }
        nums.push(
            args[i]
                .parse::<usize>()
                .unwrap_or_else(|_| fail(format!("`{}` is not a count", args[i]))),
        );
        i += 1;
    }
    let repeats = nums.first().copied().unwrap_or(3).max(1);
    let n = nums.get(1).copied().unwrap_or(32).max(1);
    let device = lossfloor_ops::open_device(&option(&args, "--device").unwrap_or("cpu".into()))
        .unwrap_or_else(|e| fail(e));
    let batches: Vec<usize> = option(&args, "--batches")
        .unwrap_or("8,32".into())
        .split(',')
        .map(|b| match b.parse() {
            Ok(b) if b > 0 => b,
            _ => fail(format!("--batches: `{b}` is not a batch size")),
        })
        .collect();
    let mut net = match option(&args, "--weights") {
        Some(path) => InceptionWeights::load_unverified(&path)
            .and_then(|w| InceptionV3::from_weights(&w, &device)),
        None => InceptionV3::load_on(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weights/inception-2015-12-05.pt"),
            &device,
        ),
    }
    .unwrap_or_else(|e| fail(e));
    let features_out = option(&args, "--features-out").map(PathBuf::from);
    // The same pixels as scripts/bench_inception_torch.py: (i·7) mod 251 over [N, 3, 32, 32].
    let images: Vec<u8> = (0..n * 3 * 32 * 32).map(|i| (i * 7 % 251) as u8).collect();
    let mut last = None;
    for &batch in &batches {
        net.batch_size = batch;
        // Warm-up at the full batch: the first pass chooses and caches the convolution
        // algorithms (cuDNN) and grows the allocator's pools.
        let warm = batch.min(n);
        sync(
            &net.features_tensor(&images[..warm * 3 * 32 * 32], warm, 3, 32, 32)
                .unwrap_or_else(|e| fail(e)),
        );
        let mut rates: Vec<f64> = (0..repeats)
            .map(|_| {
                let t = Instant::now();
                let f = net
                    .features_tensor(&images, n, 3, 32, 32)
                    .unwrap_or_else(|e| fail(e));
                sync(&f);
                let rate = n as f64 / t.elapsed().as_secs_f64();
                last = Some(f);
                rate
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "{{\"impl\":\"lossfloor\",\"batch\":{batch},\"images\":{n},\"img_s\":{:.3}}}",
            rates[rates.len() / 2]
        );
    }
    if let (Some(path), Some(f)) = (features_out, last) {
        let rows = f.narrow(0, 0, n.min(64)).unwrap_or_else(|e| fail(e));
        lossfloor_sampler::io::save_npy_f32(&path, &rows).unwrap_or_else(|e| fail(e));
    }
}
