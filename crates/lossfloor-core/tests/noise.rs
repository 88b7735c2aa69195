//! Noise distributions: densities, samplers, expectations.

mod common;

use common::{assert_rel, rng};
use lossfloor_core::noise::NoiseDistribution as N;
use lossfloor_core::quad::{integrate, integrate_with};
use lossfloor_core::*;
use std::f64::consts::PI;

fn vp_default() -> N {
    N::VpUniformT {
        beta_d: 19.9,
        beta_min: 0.1,
        eps_t: 1e-5,
    }
}

fn histogram() -> N {
    N::Histogram {
        ln_edges: vec![-4.0, -2.0, -1.5, 0.0, 0.5, 3.0],
        probs: vec![1.0, 3.0, 0.0, 2.0, 0.5],
    }
}

fn continuous() -> Vec<(&'static str, N)> {
    vec![
        (
            "edm",
            N::LogNormal {
                mean: -1.2,
                std: 1.2,
            },
        ),
        (
            "sd3",
            N::LogNormal {
                mean: 0.0,
                std: 1.0,
            },
        ),
        (
            "ve",
            N::LogUniform {
                min: 0.02,
                max: 100.0,
            },
        ),
        (
            "fm",
            N::Logistic {
                loc: 0.0,
                scale: 1.0,
            },
        ),
        (
            "logistic2",
            N::Logistic {
                loc: 0.5,
                scale: 2.0,
            },
        ),
        ("vp", vp_default()),
        ("hist", histogram()),
    ]
}

#[test]
fn densities_integrate_to_one() {
    for (name, d) in continuous() {
        d.validate().unwrap();
        let (a, b) = d.ln_sigma_support();
        // over the support used by expectation(): quadrature at 1e-12, assert 1e-9
        let total = integrate(|x| d.density_ln_sigma(x), a, b);
        assert_rel(total, 1.0, 1e-9, name);
        // over a wider window (kinks at the support ends slow the quadrature: 1e-6)
        let q = integrate_with(
            |x| d.density_ln_sigma(x),
            a - 3.0,
            b + 3.0,
            1e-10,
            0.0,
            64,
            20_000,
        );
        assert_rel(q.value, 1.0, 1e-6, &format!("{name} wide"));
        // density of σ̂ itself integrates to 1 too (substitution σ̂ = e^x)
        let q = integrate(|x| d.density_sigma_hat(x.exp()) * x.exp(), a, b);
        assert_rel(q, 1.0, 1e-9, &format!("{name} σ̂-density"));
    }
}

#[test]
fn discrete_probabilities_sum_to_one() {
    let id = Iddpm::default();
    let d = id.noise();
    assert!(d.is_discrete());
    assert_eq!(d.density_ln_sigma(0.0), 0.0);
    assert_rel(d.expectation(|_| 1.0), 1.0, 1e-14, "Σ p");
    // each of the M levels has probability 1/M
    let u = id.grid();
    let p_u5 = d.expectation(|s| if s == u[5] { 1.0 } else { 0.0 });
    assert_rel(p_u5, 1e-3, 1e-12, "p(u_5)");
}

/// P(bin) of the VP law in closed form: (t(b) − t(a))/(1 − ε_t) (no quadrature involved).
fn vp_bin_prob(a: f64, b: f64) -> f64 {
    let t = |ln_s: f64| vp_t_of_sigma_hat(19.9, 0.1, ln_s.exp()).clamp(1e-5, 1.0);
    (t(b) - t(a)) / (1.0 - 1e-5)
}

#[test]
fn vp_density_change_of_variables_matches_closed_form_bins() {
    let d = vp_default();
    let (lo, hi) = d.ln_sigma_support();
    let n = 40;
    for i in 0..n {
        let a = lo + (hi - lo) * i as f64 / n as f64;
        let b = lo + (hi - lo) * (i + 1) as f64 / n as f64;
        let q = integrate(|x| d.density_ln_sigma(x), a, b);
        assert_rel(q, vp_bin_prob(a, b), 1e-9, &format!("vp bin {i}"));
    }
    // and the expectation in ln σ̂ equals the expectation computed in t
    let f = |s: f64| s / (1.0 + s) + (1.0 + s * s).ln();
    let in_t = integrate(|t| f(vp_sigma_hat(19.9, 0.1, t)), 1e-5, 1.0) / (1.0 - 1e-5);
    assert_rel(d.expectation(f), in_t, 1e-9, "vp expectation ln σ̂ vs t");
}

#[test]
fn sampler_histograms_match_densities() {
    // 200k draws, 40 bins over the bulk of each law; every bin within 4 standard errors of
    // n·p (p from quadrature of the density).  A fixed seed makes this deterministic.
    let n_draws = 200_000;
    for (k, (name, d)) in continuous().into_iter().enumerate() {
        let mut r = rng(1000 + k as u64);
        let (mut lo, mut hi) = d.ln_sigma_support();
        if let N::LogNormal { mean, std } = d {
            (lo, hi) = (mean - 4.0 * std, mean + 4.0 * std);
        }
        if let N::Logistic { loc, scale } = d {
            (lo, hi) = (loc - 8.0 * scale, loc + 8.0 * scale);
        }
        let bins = 40;
        let mut counts = vec![0usize; bins];
        for _ in 0..n_draws {
            let x = d.sample(&mut r).ln();
            if x >= lo && x < hi {
                let i = (((x - lo) / (hi - lo)) * bins as f64) as usize;
                counts[i.min(bins - 1)] += 1;
            }
        }
        for (i, c) in counts.iter().enumerate() {
            let a = lo + (hi - lo) * i as f64 / bins as f64;
            let b = lo + (hi - lo) * (i + 1) as f64 / bins as f64;
            let p = integrate(|x| d.density_ln_sigma(x), a, b);
            let mean = n_draws as f64 * p;
            let se = (n_draws as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (*c as f64 - mean).abs() <= 4.0 * se.max(1e-9),
                "{name} bin {i}: {c} vs {mean:.1} ± {se:.1}"
            );
        }
    }
}

#[test]
fn sampler_moments_of_ln_sigma() {
    // (name, law, mean, variance, excess kurtosis of ln σ̂)
    let cases = [
        (
            "edm",
            N::LogNormal {
                mean: -1.2,
                std: 1.2,
            },
            -1.2,
            1.44,
            0.0,
        ),
        (
            "sd3",
            N::LogNormal {
                mean: 0.0,
                std: 1.0,
            },
            0.0,
            1.0,
            0.0,
        ),
        (
            "fm",
            N::Logistic {
                loc: 0.0,
                scale: 1.0,
            },
            0.0,
            PI * PI / 3.0,
            1.2,
        ),
        (
            "ve",
            N::LogUniform {
                min: 0.02,
                max: 100.0,
            },
            0.5 * (0.02f64.ln() + 100f64.ln()),
            (100f64.ln() - 0.02f64.ln()).powi(2) / 12.0,
            -1.2,
        ),
    ];
    let n = 200_000;
    for (k, (name, d, mu, var, exkurt)) in cases.into_iter().enumerate() {
        let mut r = rng(77 + k as u64);
        let xs: Vec<f64> = (0..n).map(|_| d.sample(&mut r).ln()).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
        // SE(mean) = √(var/n); SE(var) ≈ var·√((2 + excess kurtosis)/n)
        let se_m = (var / n as f64).sqrt();
        let se_v = var * ((2.0 + exkurt) / n as f64).sqrt();
        assert!((m - mu).abs() <= 5.0 * se_m, "{name} mean {m} vs {mu}");
        assert!((v - var).abs() <= 5.0 * se_v, "{name} var {v} vs {var}");
    }
}

#[test]
fn expectation_matches_closed_forms() {
    // LogNormal: E[σ̂] = exp(m + s²/2)
    let d = N::LogNormal {
        mean: -1.2,
        std: 1.2,
    };
    assert_rel(
        d.expectation(|s| s),
        (-1.2f64 + 0.72).exp(),
        1e-10,
        "lognormal E[σ̂]",
    );
    // Logistic(0,1): E[σ̂^a] = Γ(1+a)Γ(1−a) = πa/sin(πa); a = ½ → π/2
    let d = N::Logistic {
        loc: 0.0,
        scale: 1.0,
    };
    assert_rel(d.expectation(f64::sqrt), PI / 2.0, 1e-10, "logistic E[√σ̂]");
    // LogUniform: E[σ̂] = (max − min)/ln(max/min)
    let d = N::LogUniform {
        min: 0.02,
        max: 100.0,
    };
    assert_rel(
        d.expectation(|s| s),
        99.98 / 5000f64.ln(),
        1e-10,
        "loguniform E[σ̂]",
    );
    // Histogram: E[ln σ̂] = Σ p_i (a_i + b_i)/2
    let h = histogram();
    let want = (1.0 * -3.0 + 3.0 * -1.75 + 2.0 * 0.25 + 0.5 * 1.75) / 6.5;
    assert_rel(h.expectation(f64::ln), want, 1e-12, "histogram E[ln σ̂]");
}

#[test]
fn expectation_agrees_with_monte_carlo() {
    let mut laws = continuous();
    laws.push(("iddpm", Iddpm::default().noise().clone()));
    type Named = (&'static str, fn(f64) -> f64);
    let fs: [Named; 2] = [
        ("s/(1+s)", |s| s / (1.0 + s)),
        ("1/(1+s²)+ln-bump", |s| {
            1.0 / (1.0 + s * s) + (-(s.ln() + 1.0).powi(2)).exp()
        }),
    ];
    let n = 200_000;
    for (k, (name, d)) in laws.into_iter().enumerate() {
        for (fname, f) in fs {
            let mut r = rng(500 + k as u64);
            let ys: Vec<f64> = (0..n).map(|_| f(d.sample(&mut r))).collect();
            let m = ys.iter().sum::<f64>() / n as f64;
            let sd = (ys.iter().map(|y| (y - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
            let e = d.expectation(f);
            assert!(
                (e - m).abs() <= 5.0 * sd / (n as f64).sqrt(),
                "{name} {fname}: quadrature {e} vs MC {m} ± {}",
                sd / (n as f64).sqrt()
            );
        }
    }
}

#[test]
fn total_weighted_loss_for_gaussian_data() {
    // Unit-variance Gaussian data: J*(σ̂) = σ̂²/(1+σ̂²) per dimension (posterior variance).
    let j = |s: f64| s * s / (1.0 + s * s);
    // FM: w·J = (1+σ̂)²/(1+σ̂²) = 1/((1−t)² + t²) in t, and ∫₀¹ dt/((1−t)²+t²) = π/2.
    assert_rel(total_weighted_loss(&Flow::fm(), &j), PI / 2.0, 1e-9, "fm");
    // EDM with σ_d = 1: w·J ≡ 1.
    assert_rel(
        total_weighted_loss(&Edm::new(1.0, -1.2, 1.2), &j),
        1.0,
        1e-10,
        "edm σd=1",
    );
    // VE: E[1/(1+σ̂²)] = [ln σ̂ − ½ ln(1+σ̂²)]_a^b / ln(b/a)
    let g = |s: f64| s.ln() - 0.5 * (1.0 + s * s).ln();
    let want = (g(100.0) - g(0.02)) / 5000f64.ln();
    assert_rel(total_weighted_loss(&Ve::default(), &j), want, 1e-10, "ve");
    // VP: E[1/(1+σ̂²)] = E_t[α(t)²] = ∫ exp(−½β_d t² − β_min t) dt/(1−ε_t), by quadrature in t
    let want = integrate(|t| (-0.5 * 19.9 * t * t - 0.1 * t).exp(), 1e-5, 1.0) / (1.0 - 1e-5);
    assert_rel(total_weighted_loss(&Vp::default(), &j), want, 1e-9, "vp");
    // iDDPM: the exact mean over the grid
    let id = Iddpm::default();
    let want = id.grid()[..1000]
        .iter()
        .map(|u| 1.0 / (1.0 + u * u))
        .sum::<f64>()
        / 1000.0;
    assert_rel(total_weighted_loss(&id, &j), want, 1e-13, "iddpm");
}

#[test]
fn validation_and_serde() {
    assert!(N::LogNormal {
        mean: 0.0,
        std: 0.0
    }
    .validate()
    .is_err());
    assert!(N::LogUniform { min: 1.0, max: 0.5 }.validate().is_err());
    assert!(N::Discrete { sigmas: vec![] }.validate().is_err());
    assert!(N::Histogram {
        ln_edges: vec![0.0, 1.0],
        probs: vec![1.0, 1.0]
    }
    .validate()
    .is_err());
    for (_, d) in continuous() {
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<N>(&json).unwrap(), d);
    }
    assert_eq!(
        serde_json::to_string(&N::LogNormal {
            mean: -1.2,
            std: 1.2
        })
        .unwrap(),
        r#"{"kind":"log_normal","mean":-1.2,"std":1.2}"#
    );
}
