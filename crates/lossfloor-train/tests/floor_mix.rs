//! The floor of a labelled run: the label-dropout mixture against a brute force of the
//! mixed task, and the errors for curves of the wrong kind.

use std::path::Path;

use lossfloor_optimal::{Curve, CurvePoint, DatasetInfo};
use lossfloor_train::config::Config;
use lossfloor_train::floor_mix::{mixed_curve, mixture_floor, training_floor};

/// A 1-D dataset with interleaved classes (so knowing the class helps at every σ̂).
const XS: [f64; 6] = [-1.0, -0.6, 0.1, 0.5, 0.9, 1.0];
const LABELS: [u32; 6] = [0, 1, 0, 1, 1, 0];

/// ∫ f(y) dy over y ∈ [−1 − 12σ, 1 + 12σ] (trapezoid; the integrands below are smooth and
/// carry Gaussian tails, so the rule converges far faster than its step suggests).
fn integrate(sigma: f64, f: impl Fn(f64) -> f64) -> f64 {
    let (a, b) = (-1.0 - 12.0 * sigma, 1.0 + 12.0 * sigma);
    let k = 40_000;
    let h = (b - a) / k as f64;
    (0..=k)
        .map(|i| {
            let w = if i == 0 || i == k { 0.5 } else { 1.0 };
            w * f(a + h * i as f64)
        })
        .sum::<f64>()
        * h
}

fn normal(y: f64, mean: f64, sigma: f64) -> f64 {
    (-(y - mean).powi(2) / (2.0 * sigma * sigma)).exp()
        / (sigma * (2.0 * std::f64::consts::PI).sqrt())
}

/// Expected loss of the posterior-mean denoiser of a task whose hidden state (n, ℓ) has the
/// probabilities `prior[n][ℓ]` and whose denoiser sees x̂ = x_n + σε and the token ℓ: for each
/// token the posterior over n is ∝ prior[n][ℓ]·N(x̂; x_n, σ²), computed without assuming
/// anything about how the tokens relate to the classes.
fn brute_force_task(prior: &[Vec<f64>], tokens: usize, sigma: f64) -> f64 {
    integrate(sigma, |y| {
        let mut loss = 0.0;
        for t in 0..tokens {
            let w: Vec<f64> = prior
                .iter()
                .zip(XS)
                .map(|(row, x)| row[t] * normal(y, x, sigma))
                .collect();
            let z: f64 = w.iter().sum();
            if z == 0.0 {
                continue;
            }
            let mean = w.iter().zip(XS).map(|(w, x)| w * x).sum::<f64>() / z;
            loss += w
                .iter()
                .zip(XS)
                .map(|(w, x)| w * (mean - x).powi(2))
                .sum::<f64>();
        }
        loss
    })
}

#[test]
fn mixture_is_the_floor_of_training_with_label_dropout() {
    let n = XS.len() as f64;
    for sigma in [0.05, 0.3, 1.0, 3.0] {
        // Unconditional task: one token. Conditional: the token is the label.
        let uncond = brute_force_task(&vec![vec![1.0 / n]; XS.len()], 1, sigma);
        let cond_prior: Vec<Vec<f64>> = LABELS
            .iter()
            .map(|&l| {
                (0..2)
                    .map(|t| if t == l as usize { 1.0 / n } else { 0.0 })
                    .collect()
            })
            .collect();
        let cond = brute_force_task(&cond_prior, 2, sigma);
        assert!(cond < uncond, "σ̂={sigma}: the label must help");
        for p in [0.1, 0.5, 0.9] {
            // The label-dropout task: token = label with probability 1 − p, else null (2).
            let prior: Vec<Vec<f64>> = LABELS
                .iter()
                .map(|&l| {
                    (0..3)
                        .map(|t| match t {
                            2 => p / n,
                            t if t == l as usize => (1.0 - p) / n,
                            _ => 0.0,
                        })
                        .collect()
                })
                .collect();
            let mixed = brute_force_task(&prior, 3, sigma);
            let formula = mixture_floor(p, cond, uncond);
            // The same quadrature grid on both sides: they differ by f64 rounding only
            // (~40 000 terms of size ≤ 1 → ≲ 1e-12 absolute).
            assert!(
                (mixed - formula).abs() <= 1e-10,
                "σ̂={sigma} p={p}: brute force {mixed}, formula {formula}"
            );
        }
    }
}

fn curve(conditional: bool, scale: f64, sigmas: &[f64]) -> Curve {
    Curve {
        dataset: DatasetInfo {
            spec: "fashion-mnist".into(),
            n: 60000,
            dim: 784,
            xflip: false,
            limit: None,
            conditional,
        },
        method: "exact".into(),
        params: Default::default(),
        data_variance: Some(scale),
        points: sigmas
            .iter()
            .map(|&s| CurvePoint {
                sigma: s,
                loss: scale * s * s / (1.0 + s * s),
                stderr: 0.01 * scale,
                queries: 10,
            })
            .collect(),
    }
}

#[test]
fn mixed_curve_applies_the_formula_on_the_union_grid() {
    let cond = curve(true, 0.1, &[0.01, 0.1, 1.0, 10.0]);
    let uncond = curve(false, 0.2, &[0.01, 0.1, 1.0, 10.0, 50.0]);
    let m = mixed_curve(0.1, &cond, &uncond);
    assert_eq!(m.points.len(), 5);
    for p in &m.points {
        let want = 0.9 * cond.loss_at(p.sigma) + 0.1 * uncond.loss_at(p.sigma);
        assert_eq!(p.loss, want);
    }
    // On a common grid point: the formula applied to the two points.
    assert_eq!(
        m.points[2].loss,
        0.9 * cond.points[2].loss + 0.1 * uncond.points[2].loss
    );
    assert!((m.points[2].stderr - (0.0009f64.powi(2) + 0.0002f64.powi(2)).sqrt()).abs() < 1e-15);
    assert!((m.data_variance.unwrap() - (0.9 * 0.1 + 0.1 * 0.2)).abs() < 1e-15);
}

const MINIMAL: &str = r#"
[data]
spec = "fashion-mnist"
[network]
arch = "songunet"
img_resolution = 28
in_channels = 1
out_channels = 1
model_channels = 16
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
"#;

fn config(label_dim: usize, p: f64, keys: &str) -> Result<Config, String> {
    let text = MINIMAL.replace(
        "attn_resolutions = []",
        &format!("attn_resolutions = []\nlabel_dim = {label_dim}\nlabel_dropout = {p}"),
    );
    Config::parse(&format!("{text}\n[optimal_loss]\n{keys}\n"), &[]).map_err(|e| format!("{e:#}"))
}

#[test]
fn floor_keys_are_checked_against_the_network() {
    let both = "curve = \"c.json\"\nunconditional_curve = \"u.json\"";
    assert!(config(10, 0.1, both).is_ok());
    assert!(config(10, 0.0, "curve = \"c.json\"").is_ok());
    assert!(config(0, 0.0, "curve = \"c.json\"").is_ok());
    let e = config(10, 0.1, "curve = \"c.json\"").unwrap_err();
    assert!(
        e.contains("network.label_dropout = 0.1") && e.contains("optimal_loss.unconditional_curve"),
        "{e}"
    );
    let e = config(0, 0.0, both).unwrap_err();
    assert!(
        e.contains("optimal_loss.unconditional_curve") && e.contains("network.label_dim = 0"),
        "{e}"
    );
    let e = config(10, 0.0, both).unwrap_err();
    assert!(e.contains("network.label_dropout = 0"), "{e}");
}

#[test]
fn curves_of_the_wrong_kind_are_refused_by_key_and_file() {
    let g = [0.1, 1.0];
    let (c, u) = (Path::new("c.json"), Path::new("u.json"));
    let net = |k: usize, p: f64| {
        config(
            k,
            p,
            if k > 0 && p > 0.0 {
                "curve = \"c.json\"\nunconditional_curve = \"u.json\""
            } else {
                ""
            },
        )
        .unwrap()
        .effective_network()
    };
    // Conditional curve with an unconditional network.
    let e = training_floor(&net(0, 0.0), (curve(true, 0.1, &g), c), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("optimal_loss.curve = c.json") && e.contains("network.label_dim = 0"),
        "{e}"
    );
    // An unconditional curve alone with a conditional network.
    let e = training_floor(&net(10, 0.0), (curve(false, 0.1, &g), c), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("optimal_loss.curve = c.json") && e.contains("network.label_dim = 10"),
        "{e}"
    );
    // The two curves swapped.
    let e = training_floor(
        &net(10, 0.2),
        (curve(true, 0.1, &g), c),
        Some((curve(true, 0.2, &g), u)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("optimal_loss.unconditional_curve = u.json"),
        "{e}"
    );
    // The right kinds: the conditional curve itself (p = 0) or the mixture.
    let f = training_floor(&net(10, 0.0), (curve(true, 0.1, &g), c), None).unwrap();
    assert_eq!(f, curve(true, 0.1, &g));
    let f = training_floor(
        &net(10, 0.2),
        (curve(true, 0.1, &g), c),
        Some((curve(false, 0.2, &g), u)),
    )
    .unwrap();
    // J*_cond(1) = 0.05, J*(1) = 0.1: (1 − 0.2)·0.05 + 0.2·0.1, to f64 rounding.
    assert!(
        (f.points[1].loss - 0.06).abs() < 1e-16,
        "{}",
        f.points[1].loss
    );
}

/// A labelled toy dataset: 12 grey 4×4 images, labels k % 3.
fn labelled_dataset() -> lossfloor_data::Dataset {
    let values: Vec<f32> = (0..12 * 16)
        .map(|i| ((i as f32 * 0.37).sin() * 0.9).clamp(-1.0, 1.0))
        .collect();
    lossfloor_data::Dataset::from_f32(
        "toy".into(),
        lossfloor_data::ImageShape::new(1, 4, 4),
        values,
        Some((0..12).map(|k| k % 3).collect()),
        None,
    )
    .unwrap()
}

#[test]
fn a_labelled_run_loads_and_estimates_its_mixture_floor() {
    let dir = tempfile::tempdir().unwrap();
    let g = [0.1, 1.0, 10.0];
    let (c, u) = (dir.path().join("c.json"), dir.path().join("u.json"));
    curve(true, 0.1, &g).save(&c).unwrap();
    curve(false, 0.2, &g).save(&u).unwrap();
    let keys = format!(
        "curve = {:?}\nunconditional_curve = {:?}",
        c.display().to_string(),
        u.display().to_string()
    );
    let cfg = config(10, 0.25, &keys).unwrap();
    let floor = lossfloor_train::floor_mix::load_floor(&cfg, dir.path(), None)
        .unwrap()
        .unwrap();
    for (i, p) in floor.points.iter().enumerate() {
        let want = mixture_floor(
            0.25,
            curve(true, 0.1, &g).points[i].loss,
            curve(false, 0.2, &g).points[i].loss,
        );
        // serde_json's default float parser may be 1 ulp off after the file round trip.
        assert!(
            (p.loss - want).abs() <= 4.5e-16 * want,
            "{i}: {} {want}",
            p.loss
        );
    }

    // [optimal_loss.estimate] on labelled data: the conditional curve and (p > 0) the
    // unconditional one are estimated into the run directory, and the floor is their mixture.
    let data = labelled_dataset();
    let mut cfg = config(3, 0.25, "[optimal_loss.estimate]\nqueries = 16\npoints = 4").unwrap();
    cfg.data.spec = "toy".into();
    let run = dir.path().join("run");
    let floor =
        lossfloor_train::floor_mix::prepare_floor(&cfg, &data, &run, &candle_core::Device::Cpu)
            .unwrap()
            .unwrap();
    let cond = Curve::load(&run.join("optimal-loss-curve.json")).unwrap();
    let uncond = Curve::load(&run.join("optimal-loss-unconditional-curve.json")).unwrap();
    assert!(cond.dataset.conditional && !uncond.dataset.conditional);
    // Each curve read with `loss_at` (which clamps the f32-rounding negatives of the exact
    // estimator at the grid's first σ̂, ~−1e-8 here, to 0).
    for p in &floor.points {
        let want = mixture_floor(0.25, cond.loss_at(p.sigma), uncond.loss_at(p.sigma));
        assert!(
            (p.loss - want).abs() <= 1e-15 * want.abs(),
            "σ̂={}: {} {want}",
            p.sigma,
            p.loss
        );
    }
}
