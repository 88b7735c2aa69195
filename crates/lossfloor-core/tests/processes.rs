//! Per-process checks: preconditioning, native targets, weights, time maps, names.

mod common;

use common::{assert_close, assert_rel, log_grid, normal, rng};
use lossfloor_core::*;

/// σ̂ values for a process: draws from its training law plus a log grid over its range
/// (infinite ranges are cut to [1e-3, 1e3]).
fn sigma_draws(p: &dyn Process, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    let mut v: Vec<f64> = (0..500).map(|_| p.noise().sample(&mut r)).collect();
    let (lo, hi) = p.sigma_hat_range();
    let lo = if lo > 0.0 { lo } else { 1e-3 };
    let hi = if hi.is_finite() { hi } else { 1e3 };
    v.extend(log_grid(lo, hi, 200));
    v
}

/// The native target of each process written out by hand (not via `target_value`).
fn native_by_hand(kind: ProcessKind, x0: f64, eps: f64, s: f64) -> f64 {
    match kind {
        ProcessKind::Vp | ProcessKind::Iddpm => eps,
        ProcessKind::Ve => -eps,
        ProcessKind::Fm | ProcessKind::Sd3 => eps - x0,
        ProcessKind::Edm => {
            let sd = 0.5;
            let c_skip = sd * sd / (s * s + sd * sd);
            let c_out = s * sd / (s * s + sd * sd).sqrt();
            (x0 - c_skip * (x0 + s * eps)) / c_out
        }
    }
}

#[test]
fn ideal_output_denoises_exactly_and_equals_native_target() {
    for (k, kind) in ProcessKind::ALL.iter().enumerate() {
        let p = kind.build();
        let mut r = rng(100 + k as u64);
        for s in sigma_draws(p.as_ref(), 7 + k as u64) {
            let x0 = normal(&mut r);
            let eps = normal(&mut r);
            let x_hat = ve_sample(x0, eps, s);
            let pc = p.precond(s);
            let f_star = ideal_output(&pc, x_hat, x0);
            let d = denoise(&pc, x_hat, f_star);
            // D = c_skip x̂ + c_out F* cancels terms of size |c_skip x̂|: relative 1e-12 of
            // the magnitudes involved (a few ulps of f64).
            let scale = x0.abs() + (pc.c_skip * x_hat).abs();
            assert_close(d, x0, 1e-12, scale, &format!("{kind} D(F*) at σ̂={s}"));

            // F* = (x0 − c_skip x̂)/c_out: its rounding error is ~ulp of the terms over c_out.
            let by_hand = native_by_hand(*kind, x0, eps, s);
            let fscale = by_hand.abs() + (x0.abs() + (pc.c_skip * x_hat).abs()) / pc.c_out.abs();
            assert_close(
                f_star,
                by_hand,
                1e-12,
                fscale,
                &format!("{kind} F* at σ̂={s}"),
            );
            let tv = target_value(&p.native_target(), x0, eps, s);
            assert_close(tv, by_hand, 1e-12, fscale, &format!("{kind} target_value"));
        }
    }
}

#[test]
fn loss_weight_is_unit_weight_on_native_target() {
    // w(σ̂) on ‖D − x0‖² written by hand for each process; it must equal r_T of the native
    // target (the process's loss is the plain MSE of its native target).
    for kind in ProcessKind::ALL {
        let p = kind.build();
        for s in sigma_draws(p.as_ref(), 3) {
            let w = match kind {
                ProcessKind::Vp | ProcessKind::Ve | ProcessKind::Iddpm => 1.0 / (s * s),
                ProcessKind::Edm => (s * s + 0.25) / (s * 0.5).powi(2),
                ProcessKind::Fm | ProcessKind::Sd3 => ((1.0 + s) / s).powi(2),
            };
            assert_rel(p.loss_weight(s), w, 1e-13, &format!("{kind} weight"));
            assert_rel(
                x0_loss_ratio(&p.native_target(), s),
                w,
                1e-13,
                &format!("{kind} ratio"),
            );
        }
    }
}

#[test]
fn precond_coefficients_match_the_table() {
    let s = 0.7_f64;
    let vp = Vp::default().precond(s);
    let t = ((0.01 + 2.0 * 19.9 * (1.0 + s * s).ln()).sqrt() - 0.1) / 19.9;
    assert_eq!((vp.c_skip, vp.c_out), (1.0, -s));
    assert_rel(vp.c_in, 1.0 / (s * s + 1.0).sqrt(), 1e-15, "vp c_in");
    assert_rel(vp.c_noise, 999.0 * t, 1e-13, "vp c_noise");

    let ve = Ve::default().precond(s);
    assert_eq!((ve.c_skip, ve.c_out, ve.c_in), (1.0, s, 1.0));
    assert_rel(ve.c_noise, (s / 2.0).ln(), 1e-15, "ve c_noise");

    let edm = Edm::default().precond(s);
    assert_rel(edm.c_skip, 0.25 / (s * s + 0.25), 1e-15, "edm c_skip");
    assert_rel(
        edm.c_out,
        s * 0.5 / (s * s + 0.25).sqrt(),
        1e-15,
        "edm c_out",
    );
    assert_rel(edm.c_in, 1.0 / (s * s + 0.25).sqrt(), 1e-15, "edm c_in");
    assert_rel(edm.c_noise, s.ln() / 4.0, 1e-15, "edm c_noise");

    for p in [Flow::fm(), Flow::sd3_default()] {
        let c = p.precond(s);
        assert_rel(c.c_skip, 1.0 / (1.0 + s), 1e-15, "fm c_skip");
        assert_rel(c.c_out, -s / (1.0 + s), 1e-15, "fm c_out");
        assert_rel(c.c_in, 1.0 / (1.0 + s), 1e-15, "fm c_in");
        assert_rel(c.c_noise, s / (1.0 + s), 1e-15, "fm c_noise = t");
    }

    let id = Iddpm::default();
    let c = id.precond(s);
    assert_eq!((c.c_skip, c.c_out), (1.0, -s));
    assert_rel(c.c_in, 1.0 / (s * s + 1.0).sqrt(), 1e-15, "iddpm c_in");
    assert_eq!(c.c_noise, (999 - id.grid_index(s)) as f64);
}

#[test]
fn alpha_sigma_and_sigma_hat_are_consistent() {
    for kind in ProcessKind::ALL {
        let p = kind.build();
        let (t0, t1) = p.t_range();
        let t1 = if t1.is_finite() { t1 } else { 50.0 };
        for i in 1..100 {
            let t = t0 + (t1 - t0) * i as f64 / 100.0;
            assert_rel(
                p.sigma(t) / p.alpha(t),
                p.sigma_hat(t),
                1e-13,
                &format!("{kind} σ/α"),
            );
        }
    }
    // VP: α(t) = exp(−½∫β) = exp(−¼β_d t² − ½β_min t), an independent formula.
    let vp = Vp::default();
    for i in 0..=100 {
        let t = 1e-5 + (1.0 - 1e-5) * i as f64 / 100.0;
        let a = (-0.25 * 19.9 * t * t - 0.5 * 0.1 * t).exp();
        assert_rel(vp.alpha(t), a, 1e-12, "vp α");
        assert_rel(
            vp.alpha(t).powi(2) + vp.sigma(t).powi(2),
            1.0,
            1e-14,
            "vp α²+σ²",
        );
    }
    // FM: α = 1 − t, σ = t.
    let fm = Flow::fm();
    assert_eq!((fm.alpha(0.3), fm.sigma(0.3)), (0.7, 0.3));
}

#[test]
fn sigma_hat_and_t_round_trip() {
    // t → σ̂ → t and σ̂ → t → σ̂ (1e-12 relative: both directions are closed forms).
    let cases: Vec<Box<dyn Process>> = vec![
        Box::new(Vp::default()),
        Box::new(Flow::fm()),
        Box::new(Flow::sd3(0.5, 1.3)),
        Box::new(Ve::default()),
        Box::new(Edm::default()),
        Box::new(Iddpm::default()),
    ];
    for p in &cases {
        let (t0, t1) = p.t_range();
        let (t0, t1) = if t1.is_finite() {
            (t0, t1)
        } else {
            (1e-3, 1e3)
        };
        for i in 0..=200 {
            let t = t0 + (t1 - t0) * i as f64 / 200.0;
            if matches!(p.kind(), ProcessKind::Fm | ProcessKind::Sd3) && t == 1.0 {
                continue; // σ̂(1) = ∞
            }
            let back = p.t_of_sigma_hat(p.sigma_hat(t));
            assert_close(back, t, 1e-11, t.abs().max(1.0), &format!("{} t", p.name()));
        }
        let (lo, hi) = p.sigma_hat_range();
        let lo = if lo > 0.0 { lo } else { 1e-4 };
        let hi = if hi.is_finite() { hi } else { 1e4 };
        for s in log_grid(lo, hi, 300) {
            assert_rel(
                p.sigma_hat(p.t_of_sigma_hat(s)),
                s,
                1e-11,
                &format!("{} σ̂", p.name()),
            );
        }
    }
    // Known values: VP σ̂(1) = √(e^{9.95+0.1} − 1); FM σ̂(½) = 1.
    assert_rel(
        Vp::default().sigma_hat(1.0),
        ((0.5 * 19.9 + 0.1_f64).exp() - 1.0).sqrt(),
        1e-14,
        "vp σ̂(1)",
    );
    assert_eq!(Flow::fm().sigma_hat(0.5), 1.0);
}

#[test]
fn iddpm_grid_matches_closed_form_and_endpoints() {
    let id = Iddpm::default();
    let u = id.grid();
    let m = 1000;
    assert_eq!(u.len(), m + 1);
    assert_eq!(u[m], 0.0);
    assert!(u.windows(2).all(|w| w[0] > w[1]), "grid must decrease in j");
    // Closed form (derived in iddpm.rs): u_j = √(ᾱ(M)/ᾱ(j) − 1) for j ≥ 1, because the
    // clamp C1 only acts at j = 1 → 0.  ᾱ written out here independently.
    let abar = |j: f64| {
        (0.5 * std::f64::consts::PI * j / (1000.0 * 1.008))
            .sin()
            .powi(2)
    };
    for (j, &uj) in u.iter().enumerate().take(m).skip(1) {
        let exact = (abar(1000.0) / abar(j as f64) - 1.0).sqrt();
        // the recursion accumulates ~M roundings (≈1e-13); 1e-10 leaves margin
        assert_rel(uj, exact, 1e-10, &format!("u_{j}"));
    }
    assert_rel(
        u[0],
        ((u[1] * u[1] + 1.0) / 0.001 - 1.0).sqrt(),
        1e-14,
        "u_0",
    );
    // Endpoints (computed separately in double precision with the same recursion).
    assert_rel(u[0], 20291.16961002147, 1e-9, "u_0 value");
    assert_rel(u[1], 641.6623451182552, 1e-9, "u_1 value");
    assert_rel(u[m - 1], 0.006425412771141183, 1e-9, "u_{M-1} value");
    assert_eq!(id.sigma_hat_range(), (u[m - 1], u[0]));

    // round_sigma / c_noise at and near grid points
    for j in [0, 1, 2, 10, 500, 998, 999] {
        for f in [1.0, 1.0 + 1e-6, 1.0 - 1e-6] {
            let s = u[j] * f;
            assert_eq!(id.round_sigma(s), u[j]);
            assert_eq!(id.precond(s).c_noise, (m - 1 - j) as f64);
        }
        // timestep τ = M−1−j maps to u_j exactly
        assert_rel(id.sigma_hat((m - 1 - j) as f64), u[j], 1e-14, "σ̂(τ)");
    }
    // outside the grid: snaps to the ends
    assert_eq!(id.round_sigma(1e9), u[0]);
    assert_eq!(id.round_sigma(1e-9), u[m - 1]);
    // nearest-neighbour on either side of a midpoint
    let mid = 0.5 * (u[500] + u[501]);
    assert_eq!(id.round_sigma(mid * (1.0 + 1e-9)), u[500]);
    assert_eq!(id.round_sigma(mid * (1.0 - 1e-9)), u[501]);
    // the training law is the M positive levels, uniformly
    match id.noise() {
        NoiseDistribution::Discrete { sigmas } => assert_eq!(sigmas.as_slice(), &u[..m]),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn samples_lie_in_sigma_hat_range() {
    for kind in ProcessKind::ALL {
        let p = kind.build();
        let (lo, hi) = p.sigma_hat_range();
        let mut r = rng(5);
        for _ in 0..20_000 {
            let s = p.noise().sample(&mut r);
            // exp(ln σ_min) may round one ulp below σ_min: allow 1e-12 relative slack
            assert!(
                s >= lo * (1.0 - 1e-12) && s <= hi * (1.0 + 1e-12) && s > 0.0,
                "{kind}: {s} outside [{lo}, {hi}]"
            );
        }
    }
}

#[test]
fn names_parse_display_and_serde() {
    for kind in ProcessKind::ALL {
        let name = kind.to_string();
        assert_eq!(name.parse::<ProcessKind>().unwrap(), kind);
        assert_eq!(name.to_uppercase().parse::<ProcessKind>().unwrap(), kind);
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<ProcessKind>(&json).unwrap(), kind);
        let p = kind.build();
        assert_eq!(p.name(), name);
        assert_eq!(p.kind(), kind);
        p.noise().validate().unwrap();
    }
    assert!(matches!(
        "ddim".parse::<ProcessKind>(),
        Err(CoreError::UnknownProcess(_))
    ));
    assert_eq!(Flow::sd3(0.3, 2.0).name(), "sd3");
    assert_eq!(
        Flow::sd3(0.3, 2.0).noise(),
        &NoiseDistribution::LogNormal {
            mean: 0.3,
            std: 2.0
        }
    );
}

#[test]
fn forward_maps() {
    // x_t = α x0 + σ ε ⇒ x̂ = x_t/α = x0 + σ̂ ε, for every process.
    let mut r = rng(11);
    for kind in ProcessKind::ALL {
        let p = kind.build();
        let (t0, t1) = p.t_range();
        let t1 = if t1.is_finite() { t1 } else { 10.0 };
        for i in 1..50 {
            let t = t0 + (t1 - t0) * i as f64 / 50.0;
            let (x0, eps) = (normal(&mut r), normal(&mut r));
            let x_t = p.alpha(t) * x0 + p.sigma(t) * eps;
            let x_hat = to_ve(x_t, p.alpha(t));
            let want = ve_sample(x0, eps, p.sigma_hat(t));
            assert_close(
                x_hat,
                want,
                1e-12,
                x0.abs() + (p.sigma_hat(t) * eps).abs(),
                "x̂",
            );
            assert_close(
                from_ve(x_hat, p.alpha(t)),
                x_t,
                1e-12,
                x_t.abs() + 1.0,
                "x_t",
            );
        }
    }
}
