//! Flow matching: rectified flow (`fm`) and SD3's logit-normal variant (`sd3`).
//!
//! x_t = (1 − t) x0 + t ε, so σ̂ = t/(1−t), t = σ̂/(1+σ̂), and the velocity target is
//! u = ε − x0.  Both variants share the preconditioning; they differ only in the law of t.

use crate::noise::NoiseDistribution;
use crate::precond::Precond;
use crate::process::{Process, ProcessKind};
use crate::target::Target;

/// σ̂(t) = t/(1−t) of the flow-matching path α = 1−t, σ = t.
pub fn flow_sigma_hat(t: f64) -> f64 {
    t / (1.0 - t)
}

/// t(σ̂) = σ̂/(1+σ̂), inverse of [`flow_sigma_hat`] (= sigmoid(ln σ̂)).
pub fn flow_t_of_sigma_hat(sigma_hat: f64) -> f64 {
    sigma_hat / (1.0 + sigma_hat)
}

/// Flow-matching preconditioning: c_skip = 1/(1+σ̂), c_out = −σ̂/(1+σ̂), c_in = 1/(1+σ̂),
/// c_noise = t = σ̂/(1+σ̂) (the network is conditioned on t ∈ \[0,1\]; scale it, e.g. by
/// 1000, inside the network if its embedding expects timesteps).  D = x̂/(1+σ̂) − t·F is
/// x0 = x_t − t u with x_t = x̂/(1+σ̂).
pub fn flow_precond(sigma_hat: f64) -> Precond {
    let k = 1.0 / (1.0 + sigma_hat);
    Precond {
        c_skip: k,
        c_out: -sigma_hat * k,
        c_in: k,
        c_noise: flow_t_of_sigma_hat(sigma_hat),
    }
}

/// Flow-matching weight on ‖D − x0‖²: (1+σ̂)²/σ̂² = 1/t², i.e. unit weight on the velocity
/// loss ‖u_θ − (ε − x0)‖².
pub fn flow_loss_weight(sigma_hat: f64) -> f64 {
    let r = (1.0 + sigma_hat) / sigma_hat;
    r * r
}

/// Law of t for flow matching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlowTimeLaw {
    /// t ~ U(0, 1) ⇒ ln σ̂ = logit t ~ Logistic(0, 1)
    Uniform,
    /// t ~ logit-normal(m, s) (logit t ~ N(m, s²)) ⇒ ln σ̂ ~ N(m, s²)
    LogitNormal { m: f64, s: f64 },
}

/// Flow matching (rectified flow or SD3).  Time t ∈ (0, 1), α = 1−t, σ = t; native target
/// the velocity ε − x0 with unit weight (weight (1+σ̂)²/σ̂² on ‖D − x0‖²).
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    law: FlowTimeLaw,
    noise: NoiseDistribution,
}

impl Flow {
    /// SD3's recommended logit-normal location and scale (m = 0, s = 1).
    pub const SD3_M: f64 = 0.0;
    pub const SD3_S: f64 = 1.0;

    /// Rectified flow, t ~ U(0,1) (`fm`).
    pub fn fm() -> Self {
        Flow {
            law: FlowTimeLaw::Uniform,
            noise: NoiseDistribution::Logistic {
                loc: 0.0,
                scale: 1.0,
            },
        }
    }
    /// SD3, t ~ logit-normal(m, s) (`sd3`).
    pub fn sd3(m: f64, s: f64) -> Self {
        Flow {
            law: FlowTimeLaw::LogitNormal { m, s },
            noise: NoiseDistribution::LogNormal { mean: m, std: s },
        }
    }
    /// SD3 with m = 0, s = 1.
    pub fn sd3_default() -> Self {
        Self::sd3(Self::SD3_M, Self::SD3_S)
    }
    pub fn law(&self) -> FlowTimeLaw {
        self.law
    }
}

impl Process for Flow {
    fn name(&self) -> &str {
        match self.law {
            FlowTimeLaw::Uniform => "fm",
            FlowTimeLaw::LogitNormal { .. } => "sd3",
        }
    }
    fn kind(&self) -> ProcessKind {
        match self.law {
            FlowTimeLaw::Uniform => ProcessKind::Fm,
            FlowTimeLaw::LogitNormal { .. } => ProcessKind::Sd3,
        }
    }
    /// α(t) = 1 − t
    fn alpha(&self, t: f64) -> f64 {
        1.0 - t
    }
    /// σ(t) = t
    fn sigma(&self, t: f64) -> f64 {
        t
    }
    fn sigma_hat(&self, t: f64) -> f64 {
        flow_sigma_hat(t)
    }
    fn t_of_sigma_hat(&self, sigma_hat: f64) -> f64 {
        flow_t_of_sigma_hat(sigma_hat)
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, 1.0)
    }
    fn precond(&self, sigma_hat: f64) -> Precond {
        flow_precond(sigma_hat)
    }
    fn loss_weight(&self, sigma_hat: f64) -> f64 {
        flow_loss_weight(sigma_hat)
    }
    fn noise(&self) -> &NoiseDistribution {
        &self.noise
    }
    fn native_target(&self) -> Target {
        Target::FmVelocity
    }
    /// (0, ∞): t ∈ (0, 1).
    fn sigma_hat_range(&self) -> (f64, f64) {
        (0.0, f64::INFINITY)
    }
}
