use candle_core::{Device, Tensor, Var};
use lossfloor_train::adam::{clip_global_norm, learning_rate, nan_to_num, Adam};
use lossfloor_train::config::{EmaConfig, EmaKind, OptimizerConfig};
use lossfloor_train::ema::{ema_beta, power_exponent, power_std, Ema};

/// torch.optim.Adam in f64, with decoupled weight decay.
fn adam_ref(
    theta: &mut [f64],
    grads: &[Vec<f64>],
    lrs: &[f64],
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
) {
    let mut m = vec![0.0; theta.len()];
    let mut v = vec![0.0; theta.len()];
    for (t, (g, lr)) in grads.iter().zip(lrs).enumerate() {
        let t = (t + 1) as i32;
        for i in 0..theta.len() {
            theta[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let denom = (v[i] / (1.0 - b2.powi(t))).sqrt() + eps;
            theta[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
        }
    }
}

fn check_adam(wd: f64) {
    let dev = Device::Cpu;
    let init = [0.5f64, -1.25, 3.0, 1e-3, -0.02, 7.5];
    let grads: Vec<Vec<f64>> = (0..5)
        .map(|s| {
            init.iter()
                .enumerate()
                .map(|(i, _)| ((s * 7 + i * 3) as f64 * 0.37).sin() * (1.0 + i as f64))
                .collect()
        })
        .collect();
    let lrs = [1e-2, 2e-2, 5e-3, 1e-2, 3e-2];
    let cfg = OptimizerConfig {
        weight_decay: wd,
        betas: [0.9, 0.99],
        ..OptimizerConfig::default()
    };
    let var = Var::from_tensor(
        &Tensor::from_vec(
            init.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (2, 3),
            &dev,
        )
        .unwrap(),
    )
    .unwrap();
    let vars = vec![var];
    let mut adam = Adam::new(&vars, &cfg).unwrap();
    for (g, lr) in grads.iter().zip(lrs) {
        let gt = Tensor::from_vec(
            g.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (2, 3),
            &dev,
        )
        .unwrap();
        adam.step(&vars, &[gt], lr).unwrap();
    }
    let mut reference = init.to_vec();
    adam_ref(&mut reference, &grads, &lrs, 0.9, 0.99, 1e-8, wd);
    let got: Vec<f32> = vars[0]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (g, r) in got.iter().zip(&reference) {
        assert!((*g as f64 - r).abs() < 1e-5 * (1.0 + r.abs()), "{g} vs {r}");
    }
    assert_eq!(adam.step, 5);
}

#[test]
fn adam_matches_torch_formula() {
    check_adam(0.0);
    check_adam(0.1);
}

#[test]
fn learning_rate_ramp_and_decay() {
    let mut cfg = OptimizerConfig::default();
    assert_eq!(learning_rate(&cfg, 0), 0.0);
    assert!((learning_rate(&cfg, 5_000_000) - 5e-4).abs() < 1e-15);
    assert_eq!(learning_rate(&cfg, 20_000_000), 1e-3);
    cfg.rampup_kimg = 0.0;
    assert_eq!(learning_rate(&cfg, 0), 1e-3);
    cfg.decay_kimg = Some(1000.0);
    assert_eq!(learning_rate(&cfg, 500_000), 1e-3);
    assert!((learning_rate(&cfg, 4_000_000) - 5e-4).abs() < 1e-15);
}

#[test]
fn nan_to_num_and_clip() {
    let dev = Device::Cpu;
    let g = Tensor::new(
        &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0, -3e6],
        &dev,
    )
    .unwrap();
    let c: Vec<f32> = nan_to_num(&g).unwrap().to_vec1().unwrap();
    assert_eq!(c, vec![0.0, 1e5, -1e5, 2.0, -3e6]);
    let mut gs = vec![
        Tensor::new(&[3.0f32], &dev).unwrap(),
        Tensor::new(&[4.0f32], &dev).unwrap(),
    ];
    let norm = clip_global_norm(&mut gs, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-12);
    let a: Vec<f32> = gs[0].to_vec1().unwrap();
    assert!((a[0] - 0.6).abs() < 1e-5);
}

#[test]
fn ema_follows_edm_formula() {
    let cfg = EmaConfig {
        halflife_kimg: 500.0,
        rampup_ratio: 0.05,
        ..Default::default()
    };
    // first step: half-life 0 → β = 0 (EMA = weights)
    assert_eq!(ema_beta(&cfg, 0, 512), 0.0);
    // ramp-up: h = 0.05 · 1e6 = 5e4 images
    let b = ema_beta(&cfg, 1_000_000, 512);
    assert!((b - 0.5f64.powf(512.0 / 5e4)).abs() < 1e-15);
    // saturated: h = 5e5
    let b = ema_beta(&cfg, 100_000_000, 512);
    assert!((b - 0.5f64.powf(512.0 / 5e5)).abs() < 1e-15);
    let no_ramp = EmaConfig {
        halflife_kimg: 10.0,
        rampup_ratio: 0.0,
        ..Default::default()
    };
    assert!((ema_beta(&no_ramp, 0, 100) - 0.5f64.powf(0.01)).abs() < 1e-15);

    let dev = Device::Cpu;
    let var = Var::new(&[1.0f32, 2.0], &dev).unwrap();
    let vars = vec![var];
    let mut ema = Ema::new(&vars).unwrap();
    vars[0]
        .set(&Tensor::new(&[3.0f32, -2.0], &dev).unwrap())
        .unwrap();
    ema.update(&vars, 0.75).unwrap();
    let e: Vec<f32> = ema.tensors[0].to_vec1().unwrap();
    // θ + β(ema − θ)
    assert_eq!(e, vec![3.0 + 0.75 * (1.0 - 3.0), -2.0 + 0.75 * (2.0 + 2.0)]);
}

#[test]
fn power_ema_matches_edm2() {
    // EDM2's pairs: σ_rel 0.10 ↔ γ = 6.94 and σ_rel 0.05 ↔ γ = 16.97 (Karras et al. 2024).
    assert!((power_exponent(0.10) - 6.94).abs() < 0.01);
    assert!((power_exponent(0.05) - 16.97).abs() < 0.01);
    for std in [0.01, 0.05, 0.1, 0.2, 0.28] {
        assert!((power_std(power_exponent(std)) - std).abs() < 1e-12);
    }
    let cfg = EmaConfig {
        kind: EmaKind::Power,
        std: 0.10,
        ..Default::default()
    };
    // β = (1 − batch/t)^(γ+1) with t counted after the step; 0 on the first step
    assert_eq!(ema_beta(&cfg, 0, 64), 0.0);
    let g = power_exponent(0.10);
    assert!((ema_beta(&cfg, 6400 - 64, 64) - (1.0 - 0.01f64).powf(g + 1.0)).abs() < 1e-15);

    // After T unit steps the EMA is Σ w_i θ_i, w_i = (1 − β_i)·Π_{j>i} β_j. Its profile over
    // i/T has the requested relative standard deviation (the continuous profile ∝ τ^γ has
    // σ_rel exactly; the discrete one differs by O(1/T)).
    let steps = 20_000u64;
    let mut w = vec![0f64; steps as usize];
    let mut tail = 1.0;
    for i in (1..=steps).rev() {
        let b = ema_beta(&cfg, i - 1, 1);
        w[i as usize - 1] = (1.0 - b) * tail;
        tail *= b;
    }
    let total: f64 = w.iter().sum();
    assert!((total - 1.0).abs() < 1e-9, "weights sum to {total}");
    let tau = |i: usize| (i + 1) as f64 / steps as f64;
    let mean: f64 = w.iter().enumerate().map(|(i, w)| w * tau(i)).sum();
    let var: f64 = w
        .iter()
        .enumerate()
        .map(|(i, w)| w * (tau(i) - mean).powi(2))
        .sum();
    assert!((var.sqrt() - 0.10).abs() < 1e-3, "σ_rel = {}", var.sqrt());
    // the profile's mean is (γ+1)/(γ+2)
    assert!((mean - (g + 1.0) / (g + 2.0)).abs() < 1e-3, "mean = {mean}");
}
