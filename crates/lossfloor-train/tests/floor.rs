//! A tiny run's loss approaches the optimal loss J*(σ) from above, on a dataset small
//! enough that J*(σ) is computed here by brute force in float64 (the exact posterior
//! mean over all training images), independently of the estimator crate.

use std::path::Path;

use candle_core::{Device, Tensor};
use lossfloor_data::{Dataset, ImageShape};
use lossfloor_nets::checkpoint::load_network;
use lossfloor_optimal::{Curve, CurvePoint, DatasetInfo};
use lossfloor_sampler::net_denoiser::loaded_denoiser;
use lossfloor_sampler::Denoiser;
use lossfloor_train::config::Config;
use lossfloor_train::{train_with_dataset, Resume, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const N: usize = 12;
const DIM: usize = 64;

/// N smooth 8×8 patterns in [-1, 1] (a sinusoid per image, each with its own
/// frequency and phase).
fn images() -> Vec<f64> {
    let mut v = Vec::with_capacity(N * DIM);
    for i in 0..N {
        let (fx, fy, ph) = (0.3 + 0.17 * i as f64, 0.5 - 0.07 * i as f64, 0.9 * i as f64);
        for r in 0..8 {
            for c in 0..8 {
                v.push((fx * c as f64 + fy * r as f64 + ph).sin() * 0.8);
            }
        }
    }
    v
}

/// The ideal denoiser's per-dimension error E‖E[x0|y] − x0‖²/d at σ over `draws` noisy
/// draws y = x_i + σε, with its standard error. E[x0|y] is the softmax-weighted mean of
/// all N images with logits −‖y − x_j‖²/(2σ²), in float64.
fn brute_force_jstar(data: &[f64], sigma: f64, draws: usize, rng: &mut ChaCha8Rng) -> (f64, f64) {
    let mut losses = Vec::with_capacity(draws);
    let mut y = [0f64; DIM];
    for k in 0..draws {
        let i = k % N;
        let x0 = &data[i * DIM..(i + 1) * DIM];
        for (yd, xd) in y.iter_mut().zip(x0) {
            *yd = xd + sigma * rng.sample::<f64, _>(StandardNormal);
        }
        let logits: Vec<f64> = (0..N)
            .map(|j| {
                let xj = &data[j * DIM..(j + 1) * DIM];
                -y.iter()
                    .zip(xj)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    / (2.0 * sigma * sigma)
            })
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let z: f64 = w.iter().sum();
        let mut loss = 0.0;
        for d in 0..DIM {
            let mean: f64 = (0..N).map(|j| w[j] * data[j * DIM + d]).sum::<f64>() / z;
            loss += (mean - x0[d]).powi(2);
        }
        losses.push(loss / DIM as f64);
    }
    mean_and_stderr(&losses)
}

fn mean_and_stderr(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// The per-dimension denoising error of a network snapshot at σ for each of `draws`
/// draws (the same cycling over images as the brute force; the same `seed` gives the
/// same draws, so two snapshots can be compared on common noise).
fn network_losses(snapshot: &Path, data: &[f64], sigma: f64, draws: usize, seed: u64) -> Vec<f64> {
    let loaded = load_network(snapshot, &Device::Cpu).unwrap();
    let den = loaded_denoiser(&loaded).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x0 = Vec::with_capacity(draws * DIM);
    let mut y = Vec::with_capacity(draws * DIM);
    for k in 0..draws {
        let i = k % N;
        for d in 0..DIM {
            let x = data[i * DIM + d];
            x0.push(x);
            y.push((x + sigma * rng.sample::<f64, _>(StandardNormal)) as f32);
        }
    }
    let yt = Tensor::from_vec(y, (draws, 1, 8, 8), &Device::Cpu).unwrap();
    let out: Vec<f32> = den
        .denoise(&yt, sigma, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (0..draws)
        .map(|k| {
            (0..DIM)
                .map(|d| (out[k * DIM + d] as f64 - x0[k * DIM + d]).powi(2))
                .sum::<f64>()
                / DIM as f64
        })
        .collect()
}

#[test]
fn training_loss_approaches_the_exact_floor_from_above() {
    let data = images();
    let dir = tempfile::tempdir().unwrap();

    // The floor on 32 σ from 0.002 to 80, brute force, written as the run's curve.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let points: Vec<CurvePoint> = (0..32)
        .map(|k| {
            let sigma = 0.002 * (80.0f64 / 0.002).powf(k as f64 / 31.0);
            let (loss, stderr) = brute_force_jstar(&data, sigma, 600, &mut rng);
            CurvePoint {
                sigma,
                loss,
                stderr,
                queries: 600,
            }
        })
        .collect();
    let curve_path = dir.path().join("curve.json");
    Curve {
        dataset: DatasetInfo {
            spec: "npy:unused.npy".into(),
            n: N,
            dim: DIM,
            xflip: false,
            limit: None,
            conditional: false,
        },
        method: "brute-force".into(),
        params: Default::default(),
        data_variance: None,
        points,
    }
    .save(&curve_path)
    .unwrap();

    let cfg = Config::parse(
        &format!(
            r#"
[data]
spec = "npy:unused.npy"
[network]
arch = "songunet"
img_resolution = 8
in_channels = 1
out_channels = 1
model_channels = 16
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
dropout = 0.0
[optimizer]
lr = 5e-3
rampup_kimg = 0.2
[ema]
halflife_kimg = 0.2
[train]
batch = 32
duration_kimg = 6.4
tick_kimg = 0.64
snapshot_ticks = 100
seed = 3
[optimal_loss]
curve = "{}"
"#,
            curve_path.display()
        ),
        &[],
    )
    .unwrap();
    let values: Vec<f32> = data.iter().map(|v| *v as f32).collect();
    let dataset = Dataset::from_f32(
        "sinusoids".into(),
        ImageShape::new(1, 8, 8),
        values,
        None,
        None,
    )
    .unwrap();
    let run = dir.path().join("run");

    // The untrained network (same seed, so the run's starting point), as a snapshot.
    let init_dir = dir.path().join("init");
    std::fs::create_dir(&init_dir).unwrap();
    let init = Trainer::new(cfg.clone(), dataset.clone(), init_dir)
        .unwrap()
        .save_snapshot()
        .unwrap();
    train_with_dataset(cfg, dataset, &run, &Resume::No, false).unwrap();
    let last = run.join("network-snapshot-0000006400.safetensors");

    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (mut gap_before, mut gap_after) = (0.0, 0.0);
    for (k, sigma) in [0.02, 0.1, 0.3, 1.0, 3.0, 10.0].into_iter().enumerate() {
        let (jstar, j_se) = brute_force_jstar(&data, sigma, 1200, &mut rng);
        let before = network_losses(&init, &data, sigma, 1200, k as u64);
        let after = network_losses(&last, &data, sigma, 1200, k as u64);
        let (b, _) = mean_and_stderr(&before);
        let (a, a_se) = mean_and_stderr(&after);
        let diff: Vec<f64> = before.iter().zip(&after).map(|(b, a)| b - a).collect();
        let (gain, gain_se) = mean_and_stderr(&diff);
        let se = (j_se * j_se + a_se * a_se).sqrt();
        eprintln!(
            "σ {sigma:5}: J* {jstar:.5} ± {j_se:.5}, untrained {b:.5}, trained {a:.5} ± {a_se:.5}"
        );
        // From above: no denoiser beats the posterior mean; 4 standard errors of slack.
        assert!(a > jstar - 4.0 * se, "σ {sigma}: {a} below J* {jstar}");
        // Closer than the untrained network on the same noise, beyond 4 standard errors.
        assert!(gain > 4.0 * gain_se, "σ {sigma}: gain {gain} ± {gain_se}");
        gap_before += b - jstar;
        gap_after += a - jstar;
    }
    // Summed over σ the gap shrank more than twofold.
    eprintln!("summed gap: untrained {gap_before:.5}, trained {gap_after:.5}");
    assert!(gap_after < 0.5 * gap_before);

    // The logged per-bin gaps fall over training too.
    let stats = std::fs::read_to_string(run.join("stats.jsonl")).unwrap();
    let mean_gap = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let g: Vec<f64> = v["bins"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["gap"].as_f64())
            .collect();
        assert!(g.len() >= 16, "too few bins with a gap: {}", g.len());
        g.iter().sum::<f64>() / g.len() as f64
    };
    let lines: Vec<&str> = stats.lines().collect();
    let (first, last) = (mean_gap(lines[0]), mean_gap(lines[lines.len() - 1]));
    eprintln!("mean logged gap: first tick {first:.5}, last tick {last:.5}");
    assert!(last < 0.6 * first, "{first} → {last}");
}
