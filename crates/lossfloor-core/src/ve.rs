//! EDM's VE process (NCSN, Song et al. 2021): α = 1, σ = σ̂ = t.

use crate::noise::NoiseDistribution;
use crate::precond::Precond;
use crate::process::{Process, ProcessKind};
use crate::target::Target;

/// VE / NCSN: σ_min = 0.02, σ_max = 100 by default.
///
/// Preconditioning: c_skip = 1, c_out = +σ̂, c_in = 1, c_noise = ln(σ̂/2) (EDM's code; the
/// paper's NCSN form uses ln σ̂², an affine change of the same input).  Training:
/// ln σ̂ ~ U(ln σ_min, ln σ_max); weight 1/σ̂² on ‖D − x0‖².  Because c_out = +σ̂, the
/// network output at the optimum is F* = (x0 − x̂)/σ̂ = −ε: the native target is
/// [`Target::NegEps`] (the NCSN loss ‖F + ε‖²).
#[derive(Debug, Clone, PartialEq)]
pub struct Ve {
    sigma_min: f64,
    sigma_max: f64,
    noise: NoiseDistribution,
}

impl Ve {
    pub const SIGMA_MIN: f64 = 0.02;
    pub const SIGMA_MAX: f64 = 100.0;

    /// VE process on [σ_min, σ_max], trained log-uniformly on that range.
    pub fn new(sigma_min: f64, sigma_max: f64) -> Self {
        Ve {
            sigma_min,
            sigma_max,
            noise: NoiseDistribution::LogUniform {
                min: sigma_min,
                max: sigma_max,
            },
        }
    }
    pub fn sigma_min(&self) -> f64 {
        self.sigma_min
    }
    pub fn sigma_max(&self) -> f64 {
        self.sigma_max
    }
}

impl Default for Ve {
    fn default() -> Self {
        Ve::new(Self::SIGMA_MIN, Self::SIGMA_MAX)
    }
}

impl Process for Ve {
    fn name(&self) -> &str {
        "ve"
    }
    fn kind(&self) -> ProcessKind {
        ProcessKind::Ve
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
        (self.sigma_min, self.sigma_max)
    }
    fn precond(&self, sigma_hat: f64) -> Precond {
        Precond {
            c_skip: 1.0,
            c_out: sigma_hat,
            c_in: 1.0,
            c_noise: (0.5 * sigma_hat).ln(),
        }
    }
    fn loss_weight(&self, sigma_hat: f64) -> f64 {
        1.0 / (sigma_hat * sigma_hat)
    }
    fn noise(&self) -> &NoiseDistribution {
        &self.noise
    }
    fn native_target(&self) -> Target {
        Target::NegEps
    }
    fn sigma_hat_range(&self) -> (f64, f64) {
        (self.sigma_min, self.sigma_max)
    }
}
