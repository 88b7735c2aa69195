//! EDM's VP-SDE (Song et al. 2021) in VE / x0 coordinates.
//!
//! Time t ∈ [ε_t, 1]; β(t) = β_min + β_d t; α(t) = exp(−½∫₀ᵗβ) so that
//! σ̂(t) = √(exp(½β_d t² + β_min t) − 1), α = 1/√(1+σ̂²), σ = σ̂ α.

use crate::noise::NoiseDistribution;
use crate::precond::Precond;
use crate::process::{vp_alpha, vp_sigma, Process, ProcessKind};
use crate::target::Target;

/// σ̂(t) = √(exp(½ β_d t² + β_min t) − 1) of the VP-SDE (computed with `exp_m1`).
pub fn vp_sigma_hat(beta_d: f64, beta_min: f64, t: f64) -> f64 {
    (0.5 * beta_d * t * t + beta_min * t).exp_m1().sqrt()
}

/// Inverse of [`vp_sigma_hat`]:
/// t(σ̂) = (√(β_min² + 2 β_d ln(1+σ̂²)) − β_min) / β_d.
pub fn vp_t_of_sigma_hat(beta_d: f64, beta_min: f64, sigma_hat: f64) -> f64 {
    ((beta_min * beta_min + 2.0 * beta_d * (sigma_hat * sigma_hat).ln_1p()).sqrt() - beta_min)
        / beta_d
}

/// Jacobian dt/d ln σ̂ = 2σ̂² / ((1+σ̂²) · √(β_min² + 2β_d ln(1+σ̂²))), the derivative of
/// [`vp_t_of_sigma_hat`] times σ̂ (note √(…) = β_d t + β_min = β(t)).
pub fn vp_dt_dln_sigma_hat(beta_d: f64, beta_min: f64, sigma_hat: f64) -> f64 {
    let s2 = sigma_hat * sigma_hat;
    2.0 * s2 / ((1.0 + s2) * (beta_min * beta_min + 2.0 * beta_d * s2.ln_1p()).sqrt())
}

/// EDM's VP-SDE: β_d = 19.9, β_min = 0.1, ε_t = 1e-5, M = 1000 by default.
///
/// Preconditioning: c_skip = 1, c_out = −σ̂, c_in = 1/√(σ̂²+1),
/// c_noise = (M−1) · t(σ̂).  Training: t ~ U(ε_t, 1); weight 1/σ̂² on ‖D − x0‖²
/// (unit weight on the ε loss); native target ε.
#[derive(Debug, Clone, PartialEq)]
pub struct Vp {
    beta_d: f64,
    beta_min: f64,
    eps_t: f64,
    m: f64,
    noise: NoiseDistribution,
}

impl Vp {
    pub const BETA_D: f64 = 19.9;
    pub const BETA_MIN: f64 = 0.1;
    pub const EPS_T: f64 = 1e-5;
    pub const M: f64 = 1000.0;

    /// VP-SDE with the given β_d, β_min, ε_t and M (M: the number of steps the network's
    /// noise embedding was designed for; c_noise = (M−1)·t).
    pub fn new(beta_d: f64, beta_min: f64, eps_t: f64, m: f64) -> Self {
        Vp {
            beta_d,
            beta_min,
            eps_t,
            m,
            noise: NoiseDistribution::VpUniformT {
                beta_d,
                beta_min,
                eps_t,
            },
        }
    }
}

impl Vp {
    pub fn beta_d(&self) -> f64 {
        self.beta_d
    }
    pub fn beta_min(&self) -> f64 {
        self.beta_min
    }
    pub fn eps_t(&self) -> f64 {
        self.eps_t
    }
    pub fn m(&self) -> f64 {
        self.m
    }
}

impl Default for Vp {
    fn default() -> Self {
        Vp::new(Self::BETA_D, Self::BETA_MIN, Self::EPS_T, Self::M)
    }
}

impl Process for Vp {
    fn name(&self) -> &str {
        "vp"
    }
    fn kind(&self) -> ProcessKind {
        ProcessKind::Vp
    }
    fn alpha(&self, t: f64) -> f64 {
        vp_alpha(self.sigma_hat(t))
    }
    fn sigma(&self, t: f64) -> f64 {
        vp_sigma(self.sigma_hat(t))
    }
    fn sigma_hat(&self, t: f64) -> f64 {
        vp_sigma_hat(self.beta_d, self.beta_min, t)
    }
    fn t_of_sigma_hat(&self, sigma_hat: f64) -> f64 {
        vp_t_of_sigma_hat(self.beta_d, self.beta_min, sigma_hat)
    }
    fn t_range(&self) -> (f64, f64) {
        (self.eps_t, 1.0)
    }
    fn precond(&self, sigma_hat: f64) -> Precond {
        Precond {
            c_skip: 1.0,
            c_out: -sigma_hat,
            c_in: 1.0 / (sigma_hat * sigma_hat + 1.0).sqrt(),
            c_noise: (self.m - 1.0) * self.t_of_sigma_hat(sigma_hat),
        }
    }
    fn loss_weight(&self, sigma_hat: f64) -> f64 {
        1.0 / (sigma_hat * sigma_hat)
    }
    fn noise(&self) -> &NoiseDistribution {
        &self.noise
    }
    fn native_target(&self) -> Target {
        Target::Eps
    }
    fn sigma_hat_range(&self) -> (f64, f64) {
        (self.sigma_hat(self.eps_t), self.sigma_hat(1.0))
    }
}
