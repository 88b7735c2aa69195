//! The fits recover known laws from noisy synthetic curves within their bootstrap 95%
//! intervals on at least 90 of 100 seeds.

use lossfloor_scaling::{
    bootstrap, bootstrap_t_loglog, fit_power_above_floor, fit_power_free_floor, Point, Space,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

const BETA: f64 = 2.4;
const ALPHA: f64 = -0.12;
const FLOOR: f64 = 0.035;

/// 30 log-spaced compute values over three decades; J = J* + β·F^α·exp(ε), ε ~ N(0, 0.03²).
fn synthetic(seed: u64) -> Vec<Point> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::<f64>::new(0.0, 0.03).unwrap();
    (0..30)
        .map(|i| {
            let f = 10f64.powf(12.0 + 3.0 * i as f64 / 29.0);
            Point {
                flops: f,
                loss: FLOOR + BETA * f.powf(ALPHA) * noise.sample(&mut rng).exp(),
            }
        })
        .collect()
}

#[test]
fn intervals_cover_the_true_values_on_90_of_100_seeds() {
    let (mut beta_in, mut alpha_in, mut floor_in) = (0, 0, 0);
    for seed in 0..100 {
        let pts = synthetic(seed);
        let fit = fit_power_above_floor(&pts, FLOOR).0.unwrap();
        let ci = bootstrap_t_loglog(&pts, &fit, Space::LogAbove(FLOOR), 400, seed, |s| {
            fit_power_above_floor(s, FLOOR).0
        })
        .unwrap();
        beta_in += usize::from(ci[0].contains(BETA));
        alpha_in += usize::from(ci[1].contains(ALPHA));
        let free = fit_power_free_floor(&pts).unwrap();
        let curve = |f: f64| free.power.beta * f.powf(free.power.alpha) + free.c;
        let ci = bootstrap(&pts, curve, Space::Log, 3, 400, seed, |s| {
            fit_power_free_floor(s).map(|f| vec![f.c])
        })
        .unwrap();
        floor_in += usize::from(ci[0].contains(FLOOR));
    }
    println!("coverage of 100: beta {beta_in}, alpha {alpha_in}, J* (free c) {floor_in}");
    assert!(
        beta_in >= 90 && alpha_in >= 90,
        "beta {beta_in}, alpha {alpha_in}"
    );
    assert!(floor_in >= 90, "J* by the free fit: {floor_in}");
}
