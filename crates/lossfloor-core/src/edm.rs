//! EDM (Karras et al. 2022): α = 1, σ = σ̂ = t, preconditioning designed around σ_data.

use crate::noise::NoiseDistribution;
use crate::precond::Precond;
use crate::process::{Process, ProcessKind};
use crate::target::Target;

/// EDM preconditioning at σ̂ for data standard deviation σ_d:
/// c_skip = σ_d²/(σ̂²+σ_d²), c_out = σ̂ σ_d/√(σ̂²+σ_d²), c_in = 1/√(σ̂²+σ_d²),
/// c_noise = ¼ ln σ̂.
pub fn edm_precond(sigma_data: f64, sigma_hat: f64) -> Precond {
    let (s, sd) = (sigma_hat, sigma_data);
    let r = s * s + sd * sd;
    Precond {
        c_skip: sd * sd / r,
        c_out: s * sd / r.sqrt(),
        c_in: 1.0 / r.sqrt(),
        c_noise: 0.25 * s.ln(),
    }
}

/// EDM loss weight on ‖D − x0‖²: λ(σ̂) = (σ̂² + σ_d²)/(σ̂ σ_d)² = 1/c_out².
pub fn edm_loss_weight(sigma_data: f64, sigma_hat: f64) -> f64 {
    let (s, sd) = (sigma_hat, sigma_data);
    (s * s + sd * sd) / ((s * sd) * (s * sd))
}

/// EDM: σ_data = 0.5, ln σ̂ ~ N(P_mean = −1.2, P_std² = 1.2²) by default.  Native
/// target: EDM's F = (x0 − c_skip x̂)/c_out (unit weight on ‖F_θ − F‖²).
#[derive(Debug, Clone, PartialEq)]
pub struct Edm {
    sigma_data: f64,
    p_mean: f64,
    p_std: f64,
    noise: NoiseDistribution,
}

impl Edm {
    pub const SIGMA_DATA: f64 = 0.5;
    pub const P_MEAN: f64 = -1.2;
    pub const P_STD: f64 = 1.2;

    /// EDM with data std σ_d and training law ln σ̂ ~ N(p_mean, p_std²).  (EDM2's
    /// ImageNet settings are e.g. `Edm::new(0.5, -0.8, 1.6)` and `Edm::new(0.5, -0.4, 1.0)`.)
    pub fn new(sigma_data: f64, p_mean: f64, p_std: f64) -> Self {
        Edm {
            sigma_data,
            p_mean,
            p_std,
            noise: NoiseDistribution::LogNormal {
                mean: p_mean,
                std: p_std,
            },
        }
    }
    pub fn sigma_data(&self) -> f64 {
        self.sigma_data
    }
    pub fn p_mean(&self) -> f64 {
        self.p_mean
    }
    pub fn p_std(&self) -> f64 {
        self.p_std
    }
}

impl Default for Edm {
    fn default() -> Self {
        Edm::new(Self::SIGMA_DATA, Self::P_MEAN, Self::P_STD)
    }
}

impl Process for Edm {
    fn name(&self) -> &str {
        "edm"
    }
    fn kind(&self) -> ProcessKind {
        ProcessKind::Edm
    }
    /// α(t) = 1
    fn alpha(&self, _t: f64) -> f64 {
        1.0
    }
    /// σ(t) = t
    fn sigma(&self, t: f64) -> f64 {
        t
    }
    /// σ̂(t) = t
    fn sigma_hat(&self, t: f64) -> f64 {
        t
    }
    fn t_of_sigma_hat(&self, sigma_hat: f64) -> f64 {
        sigma_hat
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, f64::INFINITY)
    }
    fn precond(&self, sigma_hat: f64) -> Precond {
        edm_precond(self.sigma_data, sigma_hat)
    }
    fn loss_weight(&self, sigma_hat: f64) -> f64 {
        edm_loss_weight(self.sigma_data, sigma_hat)
    }
    fn noise(&self) -> &NoiseDistribution {
        &self.noise
    }
    fn native_target(&self) -> Target {
        Target::EdmF {
            sigma_data: self.sigma_data,
        }
    }
    /// (0, ∞): EDM's preconditioner accepts any σ̂ > 0 (its sampler clamps to 0.002…80).
    fn sigma_hat_range(&self) -> (f64, f64) {
        (0.0, f64::INFINITY)
    }
}
