//! Training distributions of the noise level σ̂, described on ln σ̂.
//!
//! | variant | law | used by |
//! |---|---|---|
//! | `LogNormal{mean, std}` | ln σ̂ ~ N(mean, std²) | EDM (−1.2, 1.2), SD3 (m, s) since logit t = ln σ̂ |
//! | `LogUniform{min, max}` | ln σ̂ ~ U(ln min, ln max) | VE / NCSN |
//! | `Logistic{loc, scale}` | ln σ̂ ~ Logistic(loc, scale) | FM: t ~ U(0,1) ⇒ ln σ̂ = logit t ~ Logistic(0,1) |
//! | `VpUniformT{β_d, β_min, ε_t}` | t ~ U(ε_t, 1), σ̂ = σ̂_VP(t) | VP-SDE |
//! | `Discrete{sigmas}` | uniform over the listed σ̂ values | iDDPM grid |
//! | `Histogram{ln_edges, probs}` | bin i with prob ∝ probs\[i\], then ln σ̂ uniform in the bin | adaptive schedules |

use rand::distr::Open01;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::quad::{integrate, integrate_with};
use crate::vp::{vp_dt_dln_sigma_hat, vp_sigma_hat, vp_t_of_sigma_hat};

/// Half-width of the integration window of `LogNormal`, in standard deviations
/// (the mass outside is 2Φ(−12) ≈ 3.6e-33).
pub const LOG_NORMAL_SUPPORT_STDS: f64 = 12.0;
/// Half-width of the integration window of `Logistic`, in scale units
/// (the mass outside is 2/(1+e^48) ≈ 2.8e-21).
pub const LOGISTIC_SUPPORT_SCALES: f64 = 48.0;

/// Distribution of σ̂ used to draw training noise levels.  Serialised with a `kind` tag
/// (`log_normal`, `log_uniform`, `logistic`, `vp_uniform_t`, `discrete`, `histogram`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoiseDistribution {
    /// ln σ̂ ~ N(mean, std²)
    LogNormal { mean: f64, std: f64 },
    /// ln σ̂ ~ U(ln min, ln max); `min`, `max` are σ̂ values
    LogUniform { min: f64, max: f64 },
    /// ln σ̂ ~ Logistic(loc, scale): density e^{−z}/(scale (1+e^{−z})²), z = (ln σ̂ − loc)/scale
    Logistic { loc: f64, scale: f64 },
    /// t ~ U(eps_t, 1) and σ̂ = √(exp(½β_d t² + β_min t) − 1) (EDM's VP-SDE)
    VpUniformT {
        beta_d: f64,
        beta_min: f64,
        eps_t: f64,
    },
    /// σ̂ uniform over a finite list of values (each with probability 1/len)
    Discrete { sigmas: Vec<f64> },
    /// piecewise-constant density on ln σ̂: bin i = [ln_edges\[i\], ln_edges\[i+1\]) has
    /// probability probs\[i\]/Σprobs, uniform in ln σ̂ inside the bin
    Histogram { ln_edges: Vec<f64>, probs: Vec<f64> },
}

/// Density of N(mean, std²) at x.
fn normal_pdf(x: f64, mean: f64, std: f64) -> f64 {
    let z = (x - mean) / std;
    (-0.5 * z * z).exp() / (std * (2.0 * std::f64::consts::PI).sqrt())
}

impl NoiseDistribution {
    /// Checks the parameters (positive scales, ordered bounds, non-empty lists, …).
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |m: &str| Err(CoreError::InvalidParameter(m.to_string()));
        match self {
            NoiseDistribution::LogNormal { mean, std } => {
                if !(mean.is_finite() && std.is_finite() && *std > 0.0) {
                    return bad("log_normal needs finite mean and std > 0");
                }
            }
            NoiseDistribution::LogUniform { min, max } => {
                if !(min.is_finite() && max.is_finite() && *min > 0.0 && max > min) {
                    return bad("log_uniform needs 0 < min < max");
                }
            }
            NoiseDistribution::Logistic { loc, scale } => {
                if !(loc.is_finite() && scale.is_finite() && *scale > 0.0) {
                    return bad("logistic needs finite loc and scale > 0");
                }
            }
            NoiseDistribution::VpUniformT {
                beta_d,
                beta_min,
                eps_t,
            } => {
                if !(*beta_d > 0.0 && *beta_min >= 0.0 && *eps_t > 0.0 && *eps_t < 1.0) {
                    return bad("vp_uniform_t needs beta_d > 0, beta_min >= 0, 0 < eps_t < 1");
                }
            }
            NoiseDistribution::Discrete { sigmas } => {
                if sigmas.is_empty() || sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return bad("discrete needs a non-empty list of positive sigmas");
                }
            }
            NoiseDistribution::Histogram { ln_edges, probs } => {
                if probs.is_empty() || ln_edges.len() != probs.len() + 1 {
                    return bad("histogram needs len(ln_edges) == len(probs) + 1 >= 2");
                }
                if ln_edges.iter().any(|e| !e.is_finite())
                    || ln_edges.windows(2).any(|w| w[1] <= w[0])
                {
                    return bad("histogram edges must be finite and strictly increasing");
                }
                if probs.iter().any(|p| !(p.is_finite() && *p >= 0.0))
                    || probs.iter().sum::<f64>() <= 0.0
                {
                    return bad("histogram probs must be >= 0 with a positive sum");
                }
            }
        }
        Ok(())
    }

    /// True for distributions with point masses (`Discrete`).
    pub fn is_discrete(&self) -> bool {
        matches!(self, NoiseDistribution::Discrete { .. })
    }

    /// Density p(ln σ̂) of ln σ̂ at `ln_s` (0 for `Discrete`, which has no density).
    ///
    /// For `VpUniformT` it is the change of variables
    /// p(ln σ̂) = p(t) · dt/d ln σ̂ = (1/(1−ε_t)) · dt/d ln σ̂ on [ln σ̂(ε_t), ln σ̂(1)].
    pub fn density_ln_sigma(&self, ln_s: f64) -> f64 {
        match self {
            NoiseDistribution::LogNormal { mean, std } => normal_pdf(ln_s, *mean, *std),
            NoiseDistribution::LogUniform { min, max } => {
                let (a, b) = (min.ln(), max.ln());
                if ln_s >= a && ln_s <= b {
                    1.0 / (b - a)
                } else {
                    0.0
                }
            }
            NoiseDistribution::Logistic { loc, scale } => {
                // symmetric form e^{−|z|}/(1+e^{−|z|})² avoids overflow in the tails
                let z = ((ln_s - loc) / scale).abs();
                let e = (-z).exp();
                e / (scale * (1.0 + e) * (1.0 + e))
            }
            NoiseDistribution::VpUniformT {
                beta_d,
                beta_min,
                eps_t,
            } => {
                let s = ln_s.exp();
                let t = vp_t_of_sigma_hat(*beta_d, *beta_min, s);
                if t >= *eps_t && t <= 1.0 {
                    vp_dt_dln_sigma_hat(*beta_d, *beta_min, s) / (1.0 - eps_t)
                } else {
                    0.0
                }
            }
            NoiseDistribution::Discrete { .. } => 0.0,
            NoiseDistribution::Histogram { ln_edges, probs } => {
                let n = probs.len();
                if ln_s < ln_edges[0] || ln_s > ln_edges[n] {
                    return 0.0;
                }
                let i = ln_edges[1..n].partition_point(|e| *e <= ln_s);
                let total: f64 = probs.iter().sum();
                probs[i] / (total * (ln_edges[i + 1] - ln_edges[i]))
            }
        }
    }

    /// Density of σ̂ itself: p(σ̂) = p(ln σ̂)/σ̂ (0 for `Discrete`).
    pub fn density_sigma_hat(&self, sigma_hat: f64) -> f64 {
        if sigma_hat <= 0.0 {
            return 0.0;
        }
        self.density_ln_sigma(sigma_hat.ln()) / sigma_hat
    }

    /// Interval of ln σ̂ that [`NoiseDistribution::expectation`] integrates over: the exact
    /// support for bounded laws, mean ± 12 std for `LogNormal`, loc ± 48 scale for `Logistic`.
    pub fn ln_sigma_support(&self) -> (f64, f64) {
        match self {
            NoiseDistribution::LogNormal { mean, std } => (
                mean - LOG_NORMAL_SUPPORT_STDS * std,
                mean + LOG_NORMAL_SUPPORT_STDS * std,
            ),
            NoiseDistribution::LogUniform { min, max } => (min.ln(), max.ln()),
            NoiseDistribution::Logistic { loc, scale } => (
                loc - LOGISTIC_SUPPORT_SCALES * scale,
                loc + LOGISTIC_SUPPORT_SCALES * scale,
            ),
            NoiseDistribution::VpUniformT {
                beta_d,
                beta_min,
                eps_t,
            } => (
                vp_sigma_hat(*beta_d, *beta_min, *eps_t).ln(),
                vp_sigma_hat(*beta_d, *beta_min, 1.0).ln(),
            ),
            NoiseDistribution::Discrete { sigmas } => {
                let lo = sigmas.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = sigmas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (lo.ln(), hi.ln())
            }
            NoiseDistribution::Histogram { ln_edges, .. } => {
                (ln_edges[0], ln_edges[ln_edges.len() - 1])
            }
        }
    }

    /// Draws one σ̂.
    ///
    /// LogNormal: exp(mean + std·z), z ~ N(0,1); LogUniform: exp(ln min + u (ln max − ln min));
    /// Logistic: exp(loc + scale · ln(u/(1−u))), u ~ U(0,1) open; VpUniformT: σ̂_VP(t),
    /// t = ε_t + (1−ε_t) u; Discrete: a uniformly chosen entry; Histogram: a bin by its
    /// probability, then ln σ̂ uniform inside it.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self {
            NoiseDistribution::LogNormal { mean, std } => {
                let z: f64 = rng.sample(StandardNormal);
                (mean + std * z).exp()
            }
            NoiseDistribution::LogUniform { min, max } => {
                let u: f64 = rng.random();
                let (a, b) = (min.ln(), max.ln());
                (a + u * (b - a)).exp()
            }
            NoiseDistribution::Logistic { loc, scale } => {
                let u: f64 = rng.sample(Open01);
                (loc + scale * (u / (1.0 - u)).ln()).exp()
            }
            NoiseDistribution::VpUniformT {
                beta_d,
                beta_min,
                eps_t,
            } => {
                let u: f64 = rng.random();
                let t = eps_t + (1.0 - eps_t) * u;
                vp_sigma_hat(*beta_d, *beta_min, t)
            }
            NoiseDistribution::Discrete { sigmas } => sigmas[rng.random_range(0..sigmas.len())],
            NoiseDistribution::Histogram { ln_edges, probs } => {
                let total: f64 = probs.iter().sum();
                let mut r = rng.random::<f64>() * total;
                let mut bin = probs.len() - 1;
                for (i, p) in probs.iter().enumerate() {
                    if r < *p {
                        bin = i;
                        break;
                    }
                    r -= p;
                }
                // guard against rounding leaving us on an empty trailing bin
                while probs[bin] == 0.0 && bin > 0 {
                    bin -= 1;
                }
                let u: f64 = rng.random();
                (ln_edges[bin] + u * (ln_edges[bin + 1] - ln_edges[bin])).exp()
            }
        }
    }

    /// E_p[f(σ̂)].  Continuous laws: ∫ f(e^x) p(x) dx over [`NoiseDistribution::ln_sigma_support`]
    /// by adaptive Gauss–Kronrod (relative tolerance 1e-12); `Histogram`: the same per bin;
    /// `Discrete`: the exact mean of f over the listed values.  Used for the total optimal
    /// loss J* = E_p[w(σ̂) J*(σ̂)].
    pub fn expectation(&self, f: impl Fn(f64) -> f64) -> f64 {
        match self {
            NoiseDistribution::Discrete { sigmas } => {
                sigmas.iter().map(|s| f(*s)).sum::<f64>() / sigmas.len() as f64
            }
            NoiseDistribution::Histogram { ln_edges, probs } => {
                let total: f64 = probs.iter().sum();
                probs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| **p > 0.0)
                    .map(|(i, p)| {
                        let (a, b) = (ln_edges[i], ln_edges[i + 1]);
                        let q = integrate_with(|x| f(x.exp()), a, b, 1e-12, 1e-300, 1, 400);
                        p / total * q.value / (b - a)
                    })
                    .sum()
            }
            _ => {
                let (a, b) = self.ln_sigma_support();
                integrate(|x| f(x.exp()) * self.density_ln_sigma(x), a, b)
            }
        }
    }
}
