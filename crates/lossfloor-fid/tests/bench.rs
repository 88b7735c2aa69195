//! Timings, run by hand: `cargo test --release -p lossfloor-fid --test bench -- --ignored --nocapture`.

use std::time::Instant;

use faer::Mat;
use lossfloor_fid::{frechet_distance, FeatureStats, FEATURE_DIM};

#[test]
#[ignore = "benchmark"]
fn bench_stats_and_frechet_2048() {
    let d = FEATURE_DIM;
    let n = 4096;
    let mut state = 1u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32) / (1u64 << 24) as f32
    };
    let rows: Vec<Vec<f32>> = (0..n).map(|_| (0..d).map(|_| next()).collect()).collect();
    let mut st = FeatureStats::new(d);
    let t = Instant::now();
    for chunk in rows.chunks(256) {
        st.accumulate(chunk).unwrap();
    }
    println!("accumulate {n}x{d}: {:.2}s", t.elapsed().as_secs_f64());
    let (mu, sigma) = (st.mu(), st.sigma());
    let sigma2 = Mat::from_fn(d, d, |i, j| sigma[(i, j)] * if i == j { 1.5 } else { 1.0 });
    let t = Instant::now();
    let fid = frechet_distance(&mu, sigma.as_ref(), &mu, sigma2.as_ref()).unwrap();
    println!(
        "frechet_distance at d={d}: {:.2}s (fid {fid:.6})",
        t.elapsed().as_secs_f64()
    );
}
