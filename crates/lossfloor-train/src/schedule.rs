//! Noise-level schedules: the process's native p(σ̂), and the optimal-loss schedule of
//! docs/optimal-loss-method.md §5:
//!
//! ```text
//! w(σ̂) = a·min(1/J*(σ̂), w_max) + b·N(ln σ̂; μ, ς²)·1[σ̂ < σ*]
//! p(σ̂) ∝ w(σ̂)·max(J_σ̂(θ) − J*(σ̂), floor)
//! ```
//!
//! p is a histogram over `bins` equal bins of ln σ̂ in [ln sigma_min, ln sigma_max]
//! (uniform in ln σ̂ inside a bin), refreshed every `refresh_kimg`. J(θ) (per-dimension
//! ‖D − x0‖², x0 units, the same units as J*) is by default the evaluator's unbiased loss
//! of the raw network on fixed queries without dropout (`crate::eval_gap`, interpolated
//! in ln σ̂ to the bin centres); with `gap_source = "train"` it is a per-bin EMA of the
//! training batches' losses, which overstates the gap by the dropout penalty and lags
//! the model. w and J* are evaluated at the bin's centre in ln σ̂. A draw comes from
//! the native distribution with probability `mix` (and always before the first refresh),
//! else from the histogram. Bins that were never observed get the largest observed gap.
//! No importance correction is applied: the loss of a draw is weighted by w alone, as in
//! the paper's formula.

use anyhow::{bail, Result};
use lossfloor_core::NoiseDistribution;
use lossfloor_optimal::Curve;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::ScheduleConfig;

/// Density of N(mean, std²) at x.
fn normal_pdf(x: f64, mean: f64, std: f64) -> f64 {
    let z = (x - mean) / std;
    (-0.5 * z * z).exp() / (std * (2.0 * std::f64::consts::PI).sqrt())
}

/// The optimal-loss weight w(σ̂).
#[derive(Debug, Clone)]
pub struct OptimalWeight {
    /// a
    pub a: f64,
    /// w_max
    pub w_max: f64,
    /// b (bump amplitude)
    pub bump_scale: f64,
    /// μ (ln σ̂)
    pub bump_mean: f64,
    /// ς (ln σ̂)
    pub bump_std: f64,
    /// σ*
    pub sigma_star: f64,
    /// J*(σ̂)
    pub curve: Curve,
}

impl OptimalWeight {
    /// Builds w from the schedule parameters and a curve; σ* = largest curve σ̂ with
    /// J* ≤ delta·variance (`Curve::sigma_star`), or the first point when none is.
    pub fn new(cfg: &ScheduleConfig, curve: Curve) -> Result<Self> {
        let sigma_star = curve.sigma_star(cfg.delta).unwrap_or(curve.points[0].sigma);
        Ok(Self {
            a: cfg.a,
            w_max: cfg.w_max,
            bump_scale: cfg.bump_scale.unwrap_or(cfg.w_max),
            bump_mean: cfg.bump_mean.unwrap_or(sigma_star.ln() - 1.0),
            bump_std: cfg.bump_std,
            sigma_star,
            curve,
        })
    }

    /// J*(σ̂) from the curve.
    pub fn j_star(&self, sigma: f64) -> f64 {
        self.curve.loss_at(sigma).max(0.0)
    }

    /// w(σ̂) = a·min(1/J*(σ̂), w_max) + b·N(ln σ̂; μ, ς²)·1[σ̂ < σ*].
    pub fn weight(&self, sigma: f64) -> f64 {
        let j = self.j_star(sigma);
        let inv = if j > 0.0 { 1.0 / j } else { f64::INFINITY };
        let mut w = self.a * inv.min(self.w_max);
        if sigma < self.sigma_star {
            w += self.bump_scale * normal_pdf(sigma.ln(), self.bump_mean, self.bump_std);
        }
        w
    }
}

/// Floats stored as their IEEE-754 bit patterns, so that a JSON round trip is exact.
mod bits {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn ser<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
            .serialize(s)
    }
    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?
            .into_iter()
            .map(f64::from_bits)
            .collect())
    }
    pub fn ser_opt<S: Serializer>(v: &[Option<f64>], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|x| x.map(f64::to_bits))
            .collect::<Vec<_>>()
            .serialize(s)
    }
    pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<f64>>, D::Error> {
        Ok(Vec::<Option<u64>>::deserialize(d)?
            .into_iter()
            .map(|x| x.map(f64::from_bits))
            .collect())
    }
}

/// The part of the adaptive schedule that changes during training (saved in checkpoints;
/// floats are serialised as IEEE-754 bit patterns so that resumes are exact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveState {
    /// Per-bin estimate of the network's per-dimension x0 loss J(θ): an EMA of training
    /// losses (`gap_source = "train"`) or the last evaluation (`"eval"`); None = none yet.
    #[serde(serialize_with = "bits::ser_opt", deserialize_with = "bits::de_opt")]
    pub loss_ema: Vec<Option<f64>>,
    /// Loss sums since the last refresh.
    #[serde(serialize_with = "bits::ser", deserialize_with = "bits::de")]
    pub acc_sum: Vec<f64>,
    /// Observations since the last refresh.
    pub acc_n: Vec<u64>,
    /// Current bin probabilities (empty before the first refresh).
    #[serde(serialize_with = "bits::ser", deserialize_with = "bits::de")]
    pub probs: Vec<f64>,
    /// Images seen at which the next refresh happens.
    pub next_refresh_nimg: u64,
}

/// The adaptive p(σ̂) of the optimal-loss schedule.
#[derive(Debug, Clone)]
pub struct AdaptiveSchedule {
    /// w(σ̂) and J*.
    pub weight: OptimalWeight,
    /// Bin edges in ln σ̂ (bins + 1).
    pub ln_edges: Vec<f64>,
    /// w at the bin centres.
    pub w_bins: Vec<f64>,
    /// J* at the bin centres.
    pub jstar_bins: Vec<f64>,
    refresh_nimg: u64,
    loss_ema: f64,
    gap_floor: f64,
    mix: f64,
    /// Mutable state.
    pub state: AdaptiveState,
}

/// `bins + 1` equally spaced edges from ln lo to ln hi.
pub fn ln_edges(lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let (a, b) = (lo.ln(), hi.ln());
    (0..=bins)
        .map(|i| a + (b - a) * i as f64 / bins as f64)
        .collect()
}

/// Bin of ln σ̂ among `edges` (None outside).
pub fn bin_of(edges: &[f64], sigma: f64) -> Option<usize> {
    let x = sigma.ln();
    let n = edges.len() - 1;
    if !(x >= edges[0] && x <= edges[n]) {
        return None;
    }
    Some(edges[1..n].partition_point(|e| *e <= x))
}

impl AdaptiveSchedule {
    /// A fresh schedule.
    pub fn new(cfg: &ScheduleConfig, weight: OptimalWeight) -> Self {
        let ln_edges = ln_edges(cfg.sigma_min, cfg.sigma_max, cfg.bins);
        let centres: Vec<f64> = ln_edges
            .windows(2)
            .map(|w| (0.5 * (w[0] + w[1])).exp())
            .collect();
        let w_bins = centres.iter().map(|&s| weight.weight(s)).collect();
        let jstar_bins = centres.iter().map(|&s| weight.j_star(s)).collect();
        let refresh_nimg = ((cfg.refresh_kimg * 1000.0).round() as u64).max(1);
        Self {
            weight,
            ln_edges,
            w_bins,
            jstar_bins,
            refresh_nimg,
            loss_ema: cfg.loss_ema,
            gap_floor: cfg.gap_floor,
            mix: cfg.mix,
            state: AdaptiveState {
                loss_ema: vec![None; cfg.bins],
                acc_sum: vec![0.0; cfg.bins],
                acc_n: vec![0; cfg.bins],
                probs: Vec::new(),
                next_refresh_nimg: refresh_nimg,
            },
        }
    }

    /// Replaces the state (from a checkpoint), checking its size.
    pub fn set_state(&mut self, state: AdaptiveState) -> Result<()> {
        let n = self.w_bins.len();
        if state.loss_ema.len() != n || state.acc_sum.len() != n || state.acc_n.len() != n {
            bail!("schedule state has the wrong number of bins (config has {n})");
        }
        self.state = state;
        Ok(())
    }

    /// Records one training loss (per-dimension ‖D − x0‖²) at σ̂.
    pub fn observe(&mut self, sigma: f64, loss: f64) {
        if let Some(b) = bin_of(&self.ln_edges, sigma) {
            if loss.is_finite() {
                self.state.acc_sum[b] += loss;
                self.state.acc_n[b] += 1;
            }
        }
    }

    /// Whether `nimg` has reached the next refresh point (then the point moves on to the
    /// next multiple of `refresh_kimg`).
    pub fn take_refresh(&mut self, nimg: u64) -> bool {
        if nimg < self.state.next_refresh_nimg {
            return false;
        }
        while self.state.next_refresh_nimg <= nimg {
            self.state.next_refresh_nimg += self.refresh_nimg;
        }
        true
    }

    /// Refreshes p from the training losses observed since the last refresh
    /// (`schedule.gap_source = "train"`) when `nimg` has reached the next refresh point.
    pub fn maybe_refresh(&mut self, nimg: u64) {
        if self.take_refresh(nimg) {
            self.refresh_from_training();
        }
    }

    /// J(θ) per bin ← EMA of the mean training loss observed in the bin since the last
    /// refresh; then p is recomputed.
    pub fn refresh_from_training(&mut self) {
        let s = &mut self.state;
        for b in 0..s.acc_n.len() {
            if s.acc_n[b] > 0 {
                let mean = s.acc_sum[b] / s.acc_n[b] as f64;
                s.loss_ema[b] = Some(match s.loss_ema[b] {
                    Some(e) => self.loss_ema * e + (1.0 - self.loss_ema) * mean,
                    None => mean,
                });
            }
            s.acc_sum[b] = 0.0;
            s.acc_n[b] = 0;
        }
        self.state.probs = self.probabilities();
    }

    /// J(θ) per bin ← the evaluator's loss of the current network (`eval_gap`), given at
    /// `sigmas` (increasing) and interpolated linearly in ln σ̂ to the bin centres
    /// (constant beyond the grid); then p is recomputed (`schedule.gap_source = "eval"`).
    pub fn refresh_from_eval(&mut self, sigmas: &[f64], losses: &[f64]) {
        for (b, w) in self.ln_edges.windows(2).enumerate() {
            let centre = (0.5 * (w[0] + w[1])).exp();
            let loss = crate::eval_gap::interpolate_ln(sigmas, losses, centre);
            self.state.loss_ema[b] = loss.is_finite().then_some(loss);
            self.state.acc_sum[b] = 0.0;
            self.state.acc_n[b] = 0;
        }
        self.state.probs = self.probabilities();
    }

    /// Gap per bin max(J − J*, floor); unobserved bins get the largest observed gap.
    pub fn gaps(&self) -> Vec<f64> {
        let g: Vec<Option<f64>> = self
            .state
            .loss_ema
            .iter()
            .zip(&self.jstar_bins)
            .map(|(e, j)| e.map(|e| (e - j).max(self.gap_floor)))
            .collect();
        let top = g.iter().flatten().copied().fold(self.gap_floor, f64::max);
        g.into_iter().map(|x| x.unwrap_or(top)).collect()
    }

    /// Normalised bin probabilities p_b ∝ w_b·gap_b.
    pub fn probabilities(&self) -> Vec<f64> {
        let raw: Vec<f64> = self
            .w_bins
            .iter()
            .zip(self.gaps())
            .map(|(w, g)| w * g)
            .collect();
        let total: f64 = raw.iter().sum();
        raw.iter().map(|r| r / total).collect()
    }

    /// The histogram part of p (None before the first refresh).
    pub fn histogram(&self) -> Option<NoiseDistribution> {
        (!self.state.probs.is_empty()).then(|| NoiseDistribution::Histogram {
            ln_edges: self.ln_edges.clone(),
            probs: self.state.probs.clone(),
        })
    }

    /// Density of ln σ̂ under the full mixture.
    pub fn density_ln_sigma(&self, native: &NoiseDistribution, ln_s: f64) -> f64 {
        match self.histogram() {
            None => native.density_ln_sigma(ln_s),
            Some(h) => {
                self.mix * native.density_ln_sigma(ln_s)
                    + (1.0 - self.mix) * h.density_ln_sigma(ln_s)
            }
        }
    }

    /// Draws σ̂: native with probability `mix` (always before the first refresh), else the
    /// histogram.
    pub fn sample<R: Rng + ?Sized>(&self, native: &NoiseDistribution, rng: &mut R) -> f64 {
        let u: f64 = rng.random();
        match self.histogram() {
            Some(h) if u >= self.mix => h.sample(rng),
            _ => native.sample(rng),
        }
    }
}

/// Per-σ̂-bin loss statistics of one tick.
#[derive(Debug, Clone)]
pub struct BinStats {
    /// Edges in ln σ̂.
    pub ln_edges: Vec<f64>,
    /// Sums of the per-dimension x0 loss.
    pub sum: Vec<f64>,
    /// Sums of its squares (for the standard error of the mean).
    pub sum_sq: Vec<f64>,
    /// Counts.
    pub n: Vec<u64>,
}

impl BinStats {
    /// `bins` bins over [ln 0.002, ln 80].
    pub fn new(bins: usize) -> Self {
        Self {
            ln_edges: ln_edges(0.002, 80.0, bins),
            sum: vec![0.0; bins],
            sum_sq: vec![0.0; bins],
            n: vec![0; bins],
        }
    }

    /// Adds one observation.
    pub fn add(&mut self, sigma: f64, loss: f64) {
        if let Some(b) = bin_of(&self.ln_edges, sigma) {
            self.sum[b] += loss;
            self.sum_sq[b] += loss * loss;
            self.n[b] += 1;
        }
    }

    /// Clears the counts.
    pub fn reset(&mut self) {
        self.sum.iter_mut().for_each(|s| *s = 0.0);
        self.sum_sq.iter_mut().for_each(|s| *s = 0.0);
        self.n.iter_mut().for_each(|n| *n = 0);
    }

    /// Geometric bin centres.
    pub fn centres(&self) -> Vec<f64> {
        self.ln_edges
            .windows(2)
            .map(|w| (0.5 * (w[0] + w[1])).exp())
            .collect()
    }

    /// Standard error s/√n of each bin's mean (None below two samples).
    pub fn stderrs(&self) -> Vec<Option<f64>> {
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .zip(&self.n)
            .map(|((s, q), &n)| {
                (n > 1).then(|| {
                    let nf = n as f64;
                    let var = ((q - s * s / nf) / (nf - 1.0)).max(0.0);
                    (var / nf).sqrt()
                })
            })
            .collect()
    }

    /// Mean per bin (None where empty).
    pub fn means(&self) -> Vec<Option<f64>> {
        self.sum
            .iter()
            .zip(&self.n)
            .map(|(s, &n)| (n > 0).then(|| s / n as f64))
            .collect()
    }
}
