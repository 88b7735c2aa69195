//! Shared helpers for the integration tests.
#![allow(dead_code)]

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// |a − b| ≤ tol · scale, with a message.
#[track_caller]
pub fn assert_close(a: f64, b: f64, tol: f64, scale: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * scale,
        "{what}: {a} vs {b} (|diff| = {:e}, allowed {:e})",
        (a - b).abs(),
        tol * scale
    );
}

/// Relative closeness: |a − b| ≤ tol · max(|a|, |b|).
#[track_caller]
pub fn assert_rel(a: f64, b: f64, tol: f64, what: &str) {
    assert_close(a, b, tol, a.abs().max(b.abs()), what);
}

/// `n` values log-spaced in [lo, hi].
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| (lo.ln() + (hi.ln() - lo.ln()) * i as f64 / (n - 1) as f64).exp())
        .collect()
}
