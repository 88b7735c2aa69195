//! Post-hoc EMA on synthetic weight trajectories: the reconstruction from tracked profiles
//! against the power-function EMA of the target length computed directly.

use candle_core::{Device, Tensor, Var};
use lossfloor_train::ema::{power_exponent, power_std};
use lossfloor_train::posthoc_ema::{
    profile_correlation, solve_coefficients, PowerProfiles, Profile,
};

/// A smooth, drifting trajectory θ(step) of 3 weights.
fn theta(step: u64) -> [f32; 3] {
    let s = step as f64;
    [
        (s / 40.0).sin() as f32,
        (1.0 - (-s / 700.0).exp()) as f32,
        ((s / 211.0).cos() * (1.0 + s / 3000.0)) as f32,
    ]
}

#[test]
fn reconstruction_matches_the_direct_power_ema_within_its_fit_error() {
    let dev = Device::Cpu;
    let var = Var::from_tensor(&Tensor::new(&theta(0), &dev).unwrap()).unwrap();
    let vars = [var];
    let batch = 4usize;
    let (steps, every) = (3000u64, 150u64);
    let tracked = [0.05, 0.10];
    let targets = [0.04, 0.07, 0.13, 0.2];
    let mut profiles = PowerProfiles::new(&vars, &tracked).unwrap();
    let mut direct = PowerProfiles::new(&vars, &targets).unwrap();
    let mut snapshots: Vec<(Profile, Vec<f32>)> = Vec::new();
    let mut sum_sq = [0.0f64; 3];
    for step in 1..=steps {
        let th = theta(step);
        vars[0].set(&Tensor::new(&th, &dev).unwrap()).unwrap();
        let nimg = step * batch as u64;
        profiles.update(&vars, nimg, batch).unwrap();
        direct.update(&vars, nimg, batch).unwrap();
        for k in 0..3 {
            sum_sq[k] += (th[k] as f64).powi(2) * batch as f64;
        }
        if step % every == 0 {
            for (std, ema) in tracked.iter().zip(&profiles.emas) {
                let w = ema.tensors[0].to_vec1::<f32>().unwrap();
                snapshots.push((Profile { nimg, std: *std }, w));
            }
        }
    }
    let at = steps * batch as u64;
    let inputs: Vec<Profile> = snapshots.iter().map(|(p, _)| p.clone()).collect();
    for (target, ema) in targets.iter().zip(&direct.emas) {
        let r = solve_coefficients(
            &inputs,
            &Profile {
                nimg: at,
                std: *target,
            },
        )
        .unwrap();
        let mut rec = [0.0f64; 3];
        for ((_, w), x) in snapshots.iter().zip(&r.coefficients) {
            for k in 0..3 {
                rec[k] += x * w[k] as f64;
            }
        }
        let want = ema.tensors[0].to_vec1::<f32>().unwrap();
        // |Σ x_i θ̂_i − θ̂_target| = |∫ (p_rec − p_target) θ dτ| ≤ ‖p_rec − p_target‖·‖θ‖ by
        // Cauchy–Schwarz, and ‖p_rec − p_target‖ = fit_error·‖p_target‖. The discrete EMAs
        // follow their continuous profiles only up to O(batch/t) at the start of training;
        // 1e-3 covers that and float32 round-off.
        let g = power_exponent(*target);
        let p_norm = profile_correlation(at as f64, g, at as f64, g).sqrt();
        for k in 0..3 {
            let bound = r.fit_error * p_norm * sum_sq[k].sqrt() + 1e-3;
            let err = (rec[k] - want[k] as f64).abs();
            println!(
                "std {target}: weight {k}: |rec − direct| = {err:.2e}, bound {bound:.2e} \
                 (fit error {:.2e})",
                r.fit_error
            );
            assert!(err <= bound, "std {target}, weight {k}: {err} > {bound}");
        }
        // The check has teeth: the tracked profiles themselves differ from the target by
        // more than the reconstruction does.
        let nearest = snapshots
            .iter()
            .filter(|(p, _)| p.nimg == at)
            .map(|(_, w)| {
                (0..3)
                    .map(|k| (w[k] - want[k]).abs() as f64)
                    .fold(0.0, f64::max)
            })
            .fold(f64::INFINITY, f64::min);
        let worst = (0..3)
            .map(|k| (rec[k] - want[k] as f64).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < nearest,
            "std {target}: {worst} vs tracked {nearest}"
        );
    }
    // σ_rel of the exponents used is the one asked for.
    assert!((power_std(power_exponent(0.07)) - 0.07).abs() < 1e-12);
}
