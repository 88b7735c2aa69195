mod common;

use lossfloor_core::{NoiseDistribution, ProcessKind};
use lossfloor_train::config::ScheduleConfig;
use lossfloor_train::schedule::{bin_of, AdaptiveSchedule, OptimalWeight};
use rand::SeedableRng;

fn normal_pdf(x: f64, m: f64, s: f64) -> f64 {
    (-0.5 * ((x - m) / s).powi(2)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
}

fn cfg() -> ScheduleConfig {
    ScheduleConfig {
        a: 2.0,
        w_max: 300.0,
        bump_scale: Some(50.0),
        bump_std: 0.7,
        bins: 40,
        mix: 0.2,
        ..ScheduleConfig::default()
    }
}

#[test]
fn weight_matches_formula() {
    let curve = common::toy_curve();
    let w = OptimalWeight::new(&cfg(), curve.clone()).unwrap();
    let star = curve.sigma_star(0.01).unwrap();
    assert_eq!(w.sigma_star, star);
    assert_eq!(w.bump_mean, star.ln() - 1.0);
    for &s in &[0.002, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 80.0, 200.0] {
        let j = curve.loss_at(s).max(0.0);
        let mut expect = 2.0 * (1.0 / j).min(300.0);
        if s < star {
            expect += 50.0 * normal_pdf(s.ln(), star.ln() - 1.0, 0.7);
        }
        let got = w.weight(s);
        assert!(
            (got - expect).abs() <= 1e-12 * expect,
            "σ={s}: {got} vs {expect}"
        );
    }
    // far above σ*: a/J*_∞ = 2/0.25
    assert!((w.weight(80.0) - 8.0).abs() < 1e-3);
}

#[test]
fn adaptive_p_matches_formula_and_is_a_distribution() {
    let c = cfg();
    let w = OptimalWeight::new(&c, common::toy_curve()).unwrap();
    let mut s = AdaptiveSchedule::new(&c, w.clone());
    let native = ProcessKind::Edm.build().noise().clone();
    // before the first refresh: the native law
    assert!(s.histogram().is_none());
    // feed losses J* + 0.01·σ̂ into every bin
    let centres: Vec<f64> = s
        .ln_edges
        .windows(2)
        .map(|e| (0.5 * (e[0] + e[1])).exp())
        .collect();
    for (b, &sig) in centres.iter().enumerate() {
        if b == 3 {
            continue; // one bin never observed
        }
        s.observe(sig, w.j_star(sig) + 0.01 * sig);
        s.observe(sig, w.j_star(sig) + 0.01 * sig);
    }
    s.maybe_refresh(1); // not yet
    assert!(s.state.probs.is_empty());
    s.maybe_refresh(4000);
    let p = s.state.probs.clone();
    assert_eq!(p.len(), 40);
    assert!(p.iter().all(|&x| x >= 0.0 && x.is_finite()));
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // p_b ∝ w_b · max(J_b − J*_b, floor); bin 3 gets the largest observed gap
    let gaps: Vec<f64> = centres
        .iter()
        .map(|&sig| (0.01 * sig).max(c.gap_floor))
        .collect();
    let top = gaps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, g)| *g)
        .fold(0.0, f64::max);
    let raw: Vec<f64> = (0..40)
        .map(|b| s.w_bins[b] * if b == 3 { top } else { gaps[b] })
        .collect();
    let total: f64 = raw.iter().sum();
    for b in 0..40 {
        let expect = raw[b] / total;
        assert!((p[b] - expect).abs() < 1e-9 * expect.max(1e-300), "bin {b}");
        assert!((s.w_bins[b] - w.weight(centres[b])).abs() < 1e-12 * s.w_bins[b]);
    }
    // EMA of the per-bin loss: second window
    let sig = centres[10];
    s.observe(sig, 1.0);
    s.maybe_refresh(8000);
    let old = w.j_star(sig) + 0.01 * sig;
    let e = s.state.loss_ema[10].unwrap();
    assert!((e - (0.9 * old + 0.1 * 1.0)).abs() < 1e-12);
    // the mixture density integrates to ~1 over ln σ̂ (native mass outside the range is
    // what is missing)
    let (lo, hi) = (s.ln_edges[0] - 10.0, s.ln_edges[40] + 10.0);
    let n = 200_000;
    let h = (hi - lo) / n as f64;
    let integral: f64 = (0..n)
        .map(|i| s.density_ln_sigma(&native, lo + (i as f64 + 0.5) * h) * h)
        .sum();
    assert!((integral - 1.0).abs() < 1e-3, "{integral}");
    // draws fall into the bins with about the right frequency
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut counts = vec![0usize; 40];
    let m = 200_000;
    for _ in 0..m {
        let x = s.sample(&native, &mut rng);
        if let Some(b) = bin_of(&s.ln_edges, x) {
            counts[b] += 1;
        }
    }
    let hist = NoiseDistribution::Histogram {
        ln_edges: s.ln_edges.clone(),
        probs: s.state.probs.clone(),
    };
    let _ = hist;
    let b = 25;
    let expect = 0.8 * s.state.probs[b]
        + 0.2
            * native.expectation(|x| {
                if bin_of(&s.ln_edges, x) == Some(b) {
                    1.0
                } else {
                    0.0
                }
            });
    let freq = counts[b] as f64 / m as f64;
    assert!((freq - expect).abs() < 0.01, "{freq} vs {expect}");
}
