//! The evaluator's gap on a dataset small enough that J*(σ) is computed here by brute
//! force in float64: the exact posterior-mean denoiser of that dataset has gap ≈ 0
//! within its standard error, and the same denoiser shifted by δ has gap δ², the
//! closed form E‖D* + δ − x0‖²/d = J* + δ² (the posterior mean's error has mean zero).

use candle_core::{DType, Device, Tensor};
use lossfloor_data::{Dataset, ImageShape};
use lossfloor_sampler::Denoiser;
use lossfloor_train::eval_gap::{evaluate, EvalQueries};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const N: usize = 10;
const DIM: usize = 16;

/// N images of 1×4×4 in [-1, 1], exactly representable as u8 levels.
fn pixels() -> Vec<u8> {
    (0..N * DIM)
        .map(|k| ((k * 37 + (k / DIM) * 91) % 256) as u8)
        .collect()
}

fn dataset() -> Dataset {
    Dataset::from_u8(
        "tiny".into(),
        ImageShape::new(1, 4, 4),
        pixels(),
        None,
        None,
    )
    .unwrap()
}

/// The rows as the dataset scales them (x/127.5 − 1), in float64.
fn rows() -> Vec<f64> {
    pixels().iter().map(|&p| p as f64 / 127.5 - 1.0).collect()
}

/// E[x0 | y] over the N images: softmax-weighted mean with logits −‖y − x_j‖²/(2σ²).
fn posterior_mean(data: &[f64], y: &[f64], sigma: f64) -> Vec<f64> {
    let logits: Vec<f64> = (0..N)
        .map(|j| {
            -y.iter()
                .zip(&data[j * DIM..(j + 1) * DIM])
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                / (2.0 * sigma * sigma)
        })
        .collect();
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let z: f64 = w.iter().sum();
    (0..DIM)
        .map(|d| (0..N).map(|j| w[j] * data[j * DIM + d]).sum::<f64>() / z)
        .collect()
}

/// The ideal denoiser (plus a constant `shift`), evaluated in float64.
struct PosteriorMean {
    data: Vec<f64>,
    shift: f64,
}

impl Denoiser for PosteriorMean {
    fn denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        _labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let y: Vec<f64> = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let mut out = Vec::with_capacity(n * DIM);
        for k in 0..n {
            let m = posterior_mean(&self.data, &y[k * DIM..(k + 1) * DIM], sigma);
            out.extend(m.iter().map(|v| (v + self.shift) as f32));
        }
        Tensor::from_vec(out, x.shape(), x.device())
    }
}

/// J*(σ) by brute force: the posterior mean's error over `draws` fresh draws (its own
/// stream, independent of the evaluator's queries), with its standard error.
fn jstar(data: &[f64], sigma: f64, draws: usize, seed: u64) -> (f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut losses = Vec::with_capacity(draws);
    let mut y = vec![0f64; DIM];
    for _ in 0..draws {
        let i = rng.random_range(0..N);
        let x0 = &data[i * DIM..(i + 1) * DIM];
        for (yd, xd) in y.iter_mut().zip(x0) {
            *yd = xd + sigma * rng.sample::<f64, _>(StandardNormal);
        }
        let m = posterior_mean(data, &y, sigma);
        losses.push(m.iter().zip(x0).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / DIM as f64);
    }
    let n = draws as f64;
    let mean = losses.iter().sum::<f64>() / n;
    let var = losses.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[test]
fn exact_denoiser_has_zero_gap_and_a_shifted_one_has_delta_squared() {
    let data = rows();
    let ds = dataset();
    let sigmas = [0.05, 0.3, 1.0, 3.0, 20.0];
    let q = EvalQueries::draw(ds.len(), &sigmas, 400, 11).unwrap();
    let dev = Device::Cpu;
    let exact = PosteriorMean {
        data: data.clone(),
        shift: 0.0,
    };
    let delta = 0.2;
    let shifted = PosteriorMean {
        data: data.clone(),
        shift: delta,
    };
    let e = evaluate(&exact, &ds, &q, 0, 64, &dev).unwrap();
    let s = evaluate(&shifted, &ds, &q, 0, 64, &dev).unwrap();
    for (i, &sigma) in sigmas.iter().enumerate() {
        let (j, jse) = jstar(&data, sigma, 4000, 100 + i as u64);
        let se = (e[i].se.powi(2) + jse.powi(2)).sqrt();
        let gap = e[i].loss - j;
        assert_eq!(e[i].n, 400);
        assert!(
            gap.abs() < 4.0 * se + 1e-12,
            "σ {sigma}: exact denoiser gap {gap} (se {se}), loss {} J* {j}",
            e[i].loss
        );
        // The shifted denoiser on the same queries: the difference is exactly the cross
        // term 2δ·mean(D* − x0) + δ², whose expectation is δ².
        let gap_s = s[i].loss - j;
        let se_s = (s[i].se.powi(2) + jse.powi(2)).sqrt();
        assert!(
            gap_s > 4.0 * se_s,
            "σ {sigma}: shifted gap {gap_s} (se {se_s})"
        );
        assert!(
            (gap_s - delta * delta).abs() < 4.0 * se_s,
            "σ {sigma}: shifted gap {gap_s}, expected {} ± {se_s}",
            delta * delta
        );
    }
}
