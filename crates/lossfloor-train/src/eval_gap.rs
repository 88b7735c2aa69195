//! The evaluator: a network's per-σ̂ loss on a fixed, seeded set of queries, without
//! dropout, and its gap to the optimal loss J*(σ̂).
//!
//! Why not the training loss? The per-bin mean of training batches is computed with
//! dropout on (so it can never reach J*, even for a perfect network), from a handful of
//! samples in bins the schedule rarely draws, and from a model that changes while the
//! samples are taken. Here each σ̂ of a grid gets `M` queries x̂ = x0 + σ̂ε drawn once
//! per run (x0 uniform over the training rows, ε ~ N(0, I), both from seeded streams),
//! and the network is run in eval mode. The mean per-dimension loss
//!
//! ```text
//! Ĵ_σ̂(θ) = (1/M) Σ_q ‖D_θ(x0_q + σ̂ε_q; σ̂) − x0_q‖² / D
//! ```
//!
//! is then an unbiased estimate of the network's loss J_σ̂(θ) on the training
//! distribution, the distribution J*(σ̂) is the floor of, with standard error s/√M (s the
//! sample standard deviation). Reusing the same queries at every evaluation (common
//! random numbers) makes the change of the loss over training far less noisy than each
//! value. The gap Ĵ − Ĵ* has standard error √(se² + se*²), se* being the curve's own.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use lossfloor_data::{DataSpec, Dataset};
use lossfloor_nets::checkpoint::{NetworkSpec, PrecondSpec};
use lossfloor_sampler::net_denoiser::network_denoiser;
use lossfloor_sampler::{one_hot, Denoiser};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Stream id of the evaluator's draws (distinct from the trainer's streams).
const STREAM_EVAL: u64 = 7;

/// A ChaCha8 stream keyed by (seed, a, b) on the evaluator's stream id.
fn eval_rng(seed: u64, a: u64, b: u64) -> ChaCha8Rng {
    crate::train::stream_rng(seed, a, b, STREAM_EVAL)
}

/// The fixed query set: for each σ̂ of `sigmas`, `per_sigma` training rows and their
/// noise, all functions of `seed`.
#[derive(Debug, Clone)]
pub struct EvalQueries {
    /// The σ̂ grid.
    pub sigmas: Vec<f64>,
    /// Queries per σ̂ (M).
    pub per_sigma: usize,
    /// Row of query q at σ̂ index i: `rows[i * per_sigma + q]`.
    rows: Vec<usize>,
    seed: u64,
}

impl EvalQueries {
    /// Draws the rows of every query uniformly (with replacement) from `0..n_rows`.
    pub fn draw(n_rows: usize, sigmas: &[f64], per_sigma: usize, seed: u64) -> Result<Self> {
        if n_rows == 0 {
            bail!("the evaluation data set is empty");
        }
        if per_sigma < 2 {
            bail!("eval.queries = {per_sigma}: need at least 2 queries per σ̂ for a standard error");
        }
        if sigmas.is_empty() || sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            bail!("the evaluation σ̂ grid must be non-empty, finite and positive");
        }
        let mut rng = eval_rng(seed, u64::MAX, 0);
        let rows = (0..sigmas.len() * per_sigma)
            .map(|_| rng.random_range(0..n_rows))
            .collect();
        Ok(Self {
            sigmas: sigmas.to_vec(),
            per_sigma,
            rows,
            seed,
        })
    }

    /// The training row behind query `q` of σ̂ index `i`.
    pub fn row(&self, i: usize, q: usize) -> usize {
        self.rows[i * self.per_sigma + q]
    }

    /// ε of query `q` at σ̂ index `i` (`dim` standard normals), written into `out`.
    pub fn noise(&self, i: usize, q: usize, out: &mut [f32]) {
        let mut rng = eval_rng(self.seed, i as u64, q as u64);
        for e in out.iter_mut() {
            *e = rng.sample(StandardNormal);
        }
    }
}

/// The network's loss at one σ̂.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SigmaLoss {
    /// σ̂.
    pub sigma: f64,
    /// Mean per-dimension ‖D − x0‖² over the queries.
    pub loss: f64,
    /// Its standard error s/√M.
    pub se: f64,
    /// Queries M.
    pub n: usize,
}

/// Mean and standard error s/√n (s with the n − 1 denominator) of `values`; the error is
/// NaN for fewer than two values.
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Ĵ_σ̂(θ) = (1/M) Σ_q ‖D(x0_q + σ̂ε_q; σ̂) − x0_q‖² / D for every σ̂ of `queries`, with
/// its standard error. `den` runs the network in eval mode (no dropout); class-conditional
/// networks (`label_dim > 0`) get each query's true label. Queries go through `den` in
/// batches of at most `batch`.
pub fn evaluate(
    den: &dyn Denoiser,
    data: &Dataset,
    queries: &EvalQueries,
    label_dim: usize,
    batch: usize,
    device: &Device,
) -> Result<Vec<SigmaLoss>> {
    let shape = data.shape();
    let dim = data.dim();
    let m = queries.per_sigma;
    let batch = batch.max(1);
    let mut out = Vec::with_capacity(queries.sigmas.len());
    let (mut x0, mut y, mut eps) = (Vec::new(), Vec::new(), vec![0f32; dim]);
    for (i, &sigma) in queries.sigmas.iter().enumerate() {
        let mut losses = Vec::with_capacity(m);
        for start in (0..m).step_by(batch) {
            let k = batch.min(m - start);
            x0.resize(k * dim, 0.0);
            y.resize(k * dim, 0.0);
            let mut labels = Vec::with_capacity(k);
            for j in 0..k {
                let row = queries.row(i, start + j);
                data.read_row(row, &mut x0[j * dim..(j + 1) * dim]);
                queries.noise(i, start + j, &mut eps);
                for (d, e) in eps.iter().enumerate() {
                    y[j * dim + d] = x0[j * dim + d] + sigma as f32 * e;
                }
                if label_dim > 0 {
                    let l = data
                        .label(row)
                        .with_context(|| format!("row {row} of {} has no label", data.source()))?
                        as usize;
                    labels.push(l);
                }
            }
            let img = (k, shape.channels, shape.height, shape.width);
            let y_t = Tensor::from_slice(&y, img, device)?;
            let class = if label_dim > 0 {
                Some(one_hot(&labels, label_dim, device)?)
            } else {
                None
            };
            let d = den.denoise(&y_t, sigma, class.as_ref())?;
            let x_t = Tensor::from_slice(&x0, img, device)?;
            let sq = (d - x_t)?
                .sqr()?
                .flatten_from(1)?
                .sum(1)?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            losses.extend(sq.iter().map(|s| s / dim as f64));
        }
        let (loss, se) = mean_and_stderr(&losses);
        out.push(SigmaLoss {
            sigma,
            loss,
            se,
            n: m,
        });
    }
    Ok(out)
}

/// The held-out split of a training spec, where one is known: `fashion-mnist` →
/// `fashion-mnist:test`, and a CIFAR-10 folder → its `test_batch.bin`.
pub fn test_split_of(spec: &DataSpec) -> Option<DataSpec> {
    match spec {
        DataSpec::FashionMnist { test: false } => Some(DataSpec::FashionMnist { test: true }),
        DataSpec::Cifar10(dir) if dir.is_dir() => {
            let file = dir.join("test_batch.bin");
            file.is_file().then_some(DataSpec::Cifar10(file))
        }
        _ => None,
    }
}

/// The σ̂ grid of an evaluation without a curve: 16 points log-spaced over [0.002, 80].
pub fn default_eval_sigmas() -> Vec<f64> {
    crate::schedule::ln_edges(0.002, 80.0, 15)
        .iter()
        .map(|x| x.exp())
        .collect()
}

/// A denoiser over an inference copy of a network given by its tensors (no autograd
/// graph, eval mode: no dropout).
pub struct TensorsDenoiser {
    net: Box<dyn lossfloor_nets::Network>,
    precond: PrecondSpec,
    channels: usize,
}

impl TensorsDenoiser {
    /// Builds the network of `spec` on `tensors`.
    pub fn new(
        spec: &NetworkSpec,
        precond: &PrecondSpec,
        tensors: Vec<(String, Tensor)>,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            net: spec.build_inference(tensors, device)?,
            precond: precond.clone(),
            channels: spec.img_channels(),
        })
    }

    /// Runs [`evaluate`] through this network.
    pub fn evaluate(
        &self,
        data: &Dataset,
        queries: &EvalQueries,
        label_dim: usize,
        batch: usize,
        device: &Device,
    ) -> Result<Vec<SigmaLoss>> {
        let den = network_denoiser(self.net.as_ref(), &self.precond, self.channels)?;
        evaluate(&den, data, queries, label_dim, batch, device)
    }
}

/// A run's evaluator: the query sets of the training data (and of a held-out split when
/// there is one) and the floor on the same grid.
pub struct RunEvaluator {
    /// Queries on the training rows.
    pub train: EvalQueries,
    /// Held-out data, its spec and its queries.
    pub test: Option<(String, Dataset, EvalQueries)>,
    /// J*(σ̂) and its standard error at each σ̂ of the grid (None without a curve).
    pub jstar: Option<Vec<(f64, f64)>>,
    /// σ* of the curve (δ = 0.01), for the region summary.
    pub sigma_star: Option<f64>,
    /// Images per forward pass.
    pub batch: usize,
}

/// One evaluation of a run's networks.
#[derive(Debug, Clone)]
pub struct EvalRecord {
    /// The raw (training) network on the training queries.
    pub raw: Option<Vec<SigmaLoss>>,
    /// The EMA network on the training queries.
    pub ema: Vec<SigmaLoss>,
    /// The EMA network on the held-out queries.
    pub test_ema: Option<Vec<SigmaLoss>>,
}

fn loss_json(l: &[SigmaLoss]) -> serde_json::Value {
    serde_json::json!({
        "loss": l.iter().map(|p| p.loss).collect::<Vec<_>>(),
        "se": l.iter().map(|p| if p.se.is_finite() { Some(p.se) } else { None }).collect::<Vec<_>>(),
    })
}

impl RunEvaluator {
    /// The evaluator of a run: σ̂ grid = the curve's points (or [`default_eval_sigmas`]),
    /// `cfg.queries` per σ̂ over `train_rows` training rows, all drawn from `cfg.seed`.
    /// `cfg.test` names held-out data: `auto` ([`test_split_of`] the training spec),
    /// `none`, or a spec; it is loaded only when evaluations are logged (`cfg.ticks > 0`).
    pub fn new(
        curve: Option<&lossfloor_optimal::Curve>,
        cfg: &crate::config::EvalConfig,
        train_spec: &str,
        train_rows: usize,
        batch: usize,
    ) -> Result<Self> {
        let (queries, seed) = (cfg.queries, cfg.seed);
        let sigmas: Vec<f64> = match curve {
            Some(c) => c.points.iter().map(|p| p.sigma).collect(),
            None => default_eval_sigmas(),
        };
        let train = EvalQueries::draw(train_rows, &sigmas, queries, seed)?;
        let test_spec = match cfg.test.as_str() {
            _ if cfg.ticks == 0 => None,
            "none" => None,
            "auto" => train_spec
                .parse::<DataSpec>()
                .ok()
                .and_then(|s| test_split_of(&s)),
            spec => Some(
                spec.parse::<DataSpec>()
                    .map_err(|e| anyhow::anyhow!("eval.test: {e}"))?,
            ),
        };
        let test = match test_spec {
            None => None,
            Some(spec) => {
                let data = lossfloor_data::load(&spec)
                    .with_context(|| format!("eval.test: loading {spec}"))?;
                // Its own stream: the held-out queries do not shift the training ones.
                let q = EvalQueries::draw(data.len(), &sigmas, queries, seed ^ 0x7e57)?;
                Some((spec.to_string(), data, q))
            }
        };
        let jstar = curve.map(|c| {
            c.points
                .iter()
                .map(|p| (p.loss.max(0.0), p.stderr))
                .collect::<Vec<_>>()
        });
        Ok(Self {
            train,
            test,
            jstar,
            sigma_star: curve.and_then(|c| c.sigma_star(0.01)),
            batch,
        })
    }

    /// The σ̂ grid.
    pub fn sigmas(&self) -> &[f64] {
        &self.train.sigmas
    }

    /// Mean gap per region of one evaluation (empty without a curve).
    pub fn regions(&self, losses: &[SigmaLoss]) -> std::collections::BTreeMap<String, RegionGap> {
        match (&self.jstar, self.sigma_star) {
            (Some(j), Some(s)) => region_gaps(losses, j, s),
            _ => Default::default(),
        }
    }

    /// The `eval.jsonl` line of one evaluation at `nimg` images, `step` steps.
    pub fn json_line(&self, rec: &EvalRecord, nimg: u64, step: u64) -> serde_json::Value {
        let mut train = serde_json::Map::new();
        if let Some(raw) = &rec.raw {
            train.insert("raw".into(), loss_json(raw));
        }
        train.insert("ema".into(), loss_json(&rec.ema));
        let mut line = serde_json::json!({
            "kimg": nimg as f64 / 1000.0,
            "step": step,
            "queries": self.train.per_sigma,
            "sigma": self.train.sigmas,
            "jstar": self.jstar.as_ref().map(|j| j.iter().map(|p| p.0).collect::<Vec<_>>()),
            "jstar_se": self.jstar.as_ref().map(|j| j.iter().map(|p| p.1).collect::<Vec<_>>()),
            "sigma_star": self.sigma_star,
            "train": train,
            "regions": {
                "raw": rec.raw.as_ref().map(|r| self.regions(r)),
                "ema": self.regions(&rec.ema),
            },
        });
        if let (Some(t), Some((spec, _, _))) = (&rec.test_ema, &self.test) {
            line["test"] = serde_json::json!({ "spec": spec, "ema": loss_json(t) });
        }
        line
    }
}

/// A noise-level region relative to σ*: below (σ̂ < σ*/2), around (σ*/2 ≤ σ̂ ≤ 2σ*) and
/// above (σ̂ > 2σ*).
pub fn region_of(sigma: f64, sigma_star: f64) -> &'static str {
    if sigma < 0.5 * sigma_star {
        "below"
    } else if sigma <= 2.0 * sigma_star {
        "around"
    } else {
        "above"
    }
}

/// The mean gap of one region and its standard error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionGap {
    /// Mean of (Ĵ − J*) over the region's σ̂ points.
    pub gap: f64,
    /// √(Σ (se² + se*²)) / k.
    pub se: f64,
    /// Smallest and largest σ̂ of the region.
    pub sigma_lo: f64,
    /// Largest σ̂.
    pub sigma_hi: f64,
    /// σ̂ points in the region.
    pub points: usize,
}

/// Mean gap per region ([`region_of`]) of `losses` against `jstar` (value and standard
/// error per σ̂, same order); regions without points are left out.
pub fn region_gaps(
    losses: &[SigmaLoss],
    jstar: &[(f64, f64)],
    sigma_star: f64,
) -> std::collections::BTreeMap<String, RegionGap> {
    let mut out = std::collections::BTreeMap::new();
    for name in ["below", "around", "above"] {
        let pts: Vec<(f64, f64, f64)> = losses
            .iter()
            .zip(jstar)
            .filter(|(l, _)| region_of(l.sigma, sigma_star) == name)
            .map(|(l, (j, jse))| {
                let se2 = l.se.powi(2) + jse.powi(2);
                (l.sigma, l.loss - j, se2)
            })
            .collect();
        if pts.is_empty() {
            continue;
        }
        let k = pts.len() as f64;
        out.insert(
            name.to_string(),
            RegionGap {
                gap: pts.iter().map(|p| p.1).sum::<f64>() / k,
                se: pts.iter().map(|p| p.2).sum::<f64>().sqrt() / k,
                sigma_lo: pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min),
                sigma_hi: pts.iter().map(|p| p.0).fold(0.0, f64::max),
                points: pts.len(),
            },
        );
    }
    out
}

/// Linear interpolation in ln σ̂ of `values` given at `sigmas` (increasing), held constant
/// beyond the ends.
pub fn interpolate_ln(sigmas: &[f64], values: &[f64], sigma: f64) -> f64 {
    let n = sigmas.len();
    if sigma <= sigmas[0] {
        return values[0];
    }
    if sigma >= sigmas[n - 1] {
        return values[n - 1];
    }
    let k = sigmas.partition_point(|s| *s <= sigma);
    let (a, b) = (sigmas[k - 1].ln(), sigmas[k].ln());
    let t = (sigma.ln() - a) / (b - a);
    values[k - 1] + t * (values[k] - values[k - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_matches_hand_computation() {
        let (m, se) = mean_and_stderr(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        // s² = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; se = √(5/12)
        assert!((se - (5.0f64 / 12.0).sqrt()).abs() < 1e-15);
        assert!(mean_and_stderr(&[1.0]).1.is_nan());
    }

    #[test]
    fn queries_are_a_function_of_the_seed() {
        let a = EvalQueries::draw(100, &[0.1, 1.0], 8, 5).unwrap();
        let b = EvalQueries::draw(100, &[0.1, 1.0], 8, 5).unwrap();
        let c = EvalQueries::draw(100, &[0.1, 1.0], 8, 6).unwrap();
        assert_eq!(a.rows, b.rows);
        assert_ne!(a.rows, c.rows);
        let (mut e1, mut e2) = (vec![0f32; 16], vec![0f32; 16]);
        a.noise(1, 3, &mut e1);
        b.noise(1, 3, &mut e2);
        assert_eq!(e1, e2);
        a.noise(1, 4, &mut e2);
        assert_ne!(e1, e2);
        assert!(EvalQueries::draw(0, &[1.0], 8, 0).is_err());
        assert!(EvalQueries::draw(10, &[1.0], 1, 0).is_err());
        assert!(EvalQueries::draw(10, &[0.0], 4, 0).is_err());
    }

    #[test]
    fn interpolation_is_linear_in_log_sigma() {
        let s = [1.0, 100.0];
        let v = [0.0, 2.0];
        assert!((interpolate_ln(&s, &v, 10.0) - 1.0).abs() < 1e-12);
        assert_eq!(interpolate_ln(&s, &v, 0.5), 0.0);
        assert_eq!(interpolate_ln(&s, &v, 1e3), 2.0);
    }

    #[test]
    fn regions_split_at_half_and_twice_sigma_star() {
        assert_eq!(region_of(0.49, 1.0), "below");
        assert_eq!(region_of(0.5, 1.0), "around");
        assert_eq!(region_of(2.0, 1.0), "around");
        assert_eq!(region_of(2.01, 1.0), "above");
        let l = |sigma, loss| SigmaLoss {
            sigma,
            loss,
            se: 0.3,
            n: 4,
        };
        let g = region_gaps(
            &[l(0.1, 1.0), l(0.2, 2.0), l(5.0, 3.0)],
            &[(0.5, 0.4), (0.5, 0.0), (1.0, 0.0)],
            1.0,
        );
        assert_eq!(g.len(), 2);
        assert!((g["below"].gap - 1.0).abs() < 1e-12);
        let want = (0.09f64 + 0.16 + 0.09).sqrt() / 2.0;
        assert!((g["below"].se - want).abs() < 1e-12);
        assert_eq!(g["above"].points, 1);
    }
}
