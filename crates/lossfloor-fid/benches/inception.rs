//! Inception feature extraction throughput (32×32 RGB images resized to 299×299), printed
//! as one JSON line per batch size: `{"impl":"lossfloor","batch":B,"img_s":…}` with the
//! median over repeats. Run by `scripts/bench-fid` beside PyTorch running the same
//! TorchScript; alone: `cargo bench -p lossfloor-fid --bench inception -- [REPEATS] [N]`.

use std::path::Path;
use std::time::Instant;

use lossfloor_fid::InceptionV3;

fn main() {
    // As the lossfloor binary does (lossfloor_ops::alloc).
    lossfloor_ops::keep_freed_memory();
    // cargo bench passes `--bench`; numbers are the repeats and the image count.
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let repeats = nums.first().copied().unwrap_or(3).max(1);
    let n = nums.get(1).copied().unwrap_or(32).max(1);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weights/inception-2015-12-05.pt");
    let mut net = match InceptionV3::load(&path) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("bench inception: {e}");
            std::process::exit(1);
        }
    };
    // The same pixels as scripts/bench_inception_torch.py: (i·7) mod 251 over [N, 3, 32, 32].
    let images: Vec<u8> = (0..n * 3 * 32 * 32).map(|i| (i * 7 % 251) as u8).collect();
    for batch in [8, 32] {
        net.batch_size = batch;
        net.features(&images[..3 * 32 * 32], 1, 3, 32, 32).unwrap(); // warm-up
        let mut rates: Vec<f64> = (0..repeats)
            .map(|_| {
                let t = Instant::now();
                let f = net.features(&images, n, 3, 32, 32).unwrap();
                assert_eq!(f.len(), n);
                n as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "{{\"impl\":\"lossfloor\",\"batch\":{batch},\"images\":{n},\"img_s\":{:.3}}}",
            rates[rates.len() / 2]
        );
    }
}
