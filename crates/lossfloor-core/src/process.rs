//! The [`Process`] trait, the [`ProcessKind`] names used in configs, and helpers shared
//! by the variance-preserving processes.
//!
//! Every process x_t = α(t) x0 + σ(t) ε is described in VE / x0 coordinates by
//! σ̂(t) = σ(t)/α(t) and x̂ = x_t/α(t) = x0 + σ̂ ε ([`crate::to_ve`]).  Since
//! p(x0|x_t) = p(x0|x̂), the optimal x0 loss J*(σ̂) is shared by all processes; they
//! differ only in the weight w(σ̂) on ‖D − x0‖² and the training distribution of σ̂.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::edm::Edm;
use crate::error::CoreError;
use crate::flow::Flow;
use crate::iddpm::Iddpm;
use crate::noise::NoiseDistribution;
use crate::precond::Precond;
use crate::target::Target;
use crate::ve::Ve;
use crate::vp::Vp;

/// A diffusion process in the unified VE / x0 formulation.
///
/// `t` is the process's own time variable (documented per implementation); σ̂ is
/// EDM's σ.  All quantities are scalars; networks apply them element-wise.
pub trait Process: Send + Sync + fmt::Debug {
    /// Config name (`vp`, `ve`, `edm`, `iddpm`, `fm`, `sd3`).
    fn name(&self) -> &str;
    /// Which kind this is.
    fn kind(&self) -> ProcessKind;
    /// Signal scale α(t) of x_t = α x0 + σ ε.
    fn alpha(&self, t: f64) -> f64;
    /// Noise scale σ(t) of x_t = α x0 + σ ε.
    fn sigma(&self, t: f64) -> f64;
    /// σ̂(t) = σ(t)/α(t).
    fn sigma_hat(&self, t: f64) -> f64;
    /// Inverse of [`Process::sigma_hat`]: the t with σ̂(t) = `sigma_hat`.
    fn t_of_sigma_hat(&self, sigma_hat: f64) -> f64;
    /// Domain (t_min, t_max) of t used by the process.
    fn t_range(&self) -> (f64, f64);
    /// Preconditioning coefficients at σ̂.
    fn precond(&self, sigma_hat: f64) -> Precond;
    /// Weight w(σ̂) the process's training loss puts on ‖D(x̂; σ̂) − x0‖².
    fn loss_weight(&self, sigma_hat: f64) -> f64;
    /// Training distribution of σ̂.
    fn noise(&self) -> &NoiseDistribution;
    /// The target the raw network F approximates at the optimum, i.e.
    /// `ideal_output(precond(σ̂), x̂, x0) == target_value(native_target(), x0, ε, σ̂)`.
    fn native_target(&self) -> Target;
    /// Range of σ̂ the process is defined on (its preconditioner's sigma_min..sigma_max).
    fn sigma_hat_range(&self) -> (f64, f64);
    /// Snaps σ̂ to the values the network was trained on (identity except for iDDPM).
    fn round_sigma(&self, sigma_hat: f64) -> f64 {
        sigma_hat
    }
}

/// Total weighted loss `E_{σ̂~p}[ w(σ̂) · J(σ̂) ]` of a per-σ̂ x0 loss J (e.g. the optimal
/// loss J*) under the process's training distribution p and weight w: the total J* of
/// the paper, `J* = E_{p(t)}[ w_t^(x0) J*_t ]`.
pub fn total_weighted_loss(process: &dyn Process, j_x0: &dyn Fn(f64) -> f64) -> f64 {
    process
        .noise()
        .expectation(|s| process.loss_weight(s) * j_x0(s))
}

/// α of the variance-preserving process (α² + σ² = 1) with ratio σ̂:
/// α = 1/√(1+σ̂²).
pub fn vp_alpha(sigma_hat: f64) -> f64 {
    1.0 / (1.0 + sigma_hat * sigma_hat).sqrt()
}

/// σ of the variance-preserving process (α² + σ² = 1) with ratio σ̂:
/// σ = σ̂ α = σ̂/√(1+σ̂²).
pub fn vp_sigma(sigma_hat: f64) -> f64 {
    sigma_hat * vp_alpha(sigma_hat)
}

/// Process names as written in configs (serde: lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessKind {
    /// EDM's VP-SDE (β_d = 19.9, β_min = 0.1, ε_t = 1e-5, M = 1000)
    Vp,
    /// EDM's VE / NCSN (σ ∈ [0.02, 100], log-uniform)
    Ve,
    /// EDM (σ_data = 0.5, ln σ ~ N(−1.2, 1.2²))
    Edm,
    /// improved DDPM, cosine schedule on a discrete grid of M = 1000 levels
    Iddpm,
    /// rectified flow, t ~ U(0, 1)
    Fm,
    /// SD3 flow matching, t ~ logit-normal(0, 1)
    Sd3,
}

impl ProcessKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ProcessKind; 6] = [
        ProcessKind::Vp,
        ProcessKind::Ve,
        ProcessKind::Edm,
        ProcessKind::Iddpm,
        ProcessKind::Fm,
        ProcessKind::Sd3,
    ];

    /// Config name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProcessKind::Vp => "vp",
            ProcessKind::Ve => "ve",
            ProcessKind::Edm => "edm",
            ProcessKind::Iddpm => "iddpm",
            ProcessKind::Fm => "fm",
            ProcessKind::Sd3 => "sd3",
        }
    }

    /// The process with its default hyper-parameters.
    pub fn build(&self) -> Box<dyn Process> {
        match self {
            ProcessKind::Vp => Box::new(Vp::default()),
            ProcessKind::Ve => Box::new(Ve::default()),
            ProcessKind::Edm => Box::new(Edm::default()),
            ProcessKind::Iddpm => Box::new(Iddpm::default()),
            ProcessKind::Fm => Box::new(Flow::fm()),
            ProcessKind::Sd3 => Box::new(Flow::sd3_default()),
        }
    }
}

impl fmt::Display for ProcessKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProcessKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        ProcessKind::ALL
            .into_iter()
            .find(|k| k.as_str() == lower)
            .ok_or_else(|| CoreError::UnknownProcess(s.to_string()))
    }
}
