//! # lossfloor-core: the unified VE / x0 formulation of diffusion processes
//!
//! Every process x_t = α(t) x0 + σ(t) ε is mapped to EDM's noise level σ̂ = σ/α and
//! x̂ = x_t/α = x0 + σ̂ ε.  In these coordinates a model is a denoiser
//! D(x̂; σ̂) = c_skip x̂ + c_out F(c_in x̂; c_noise) trained with weight w(σ̂) on
//! ‖D − x0‖² and noise levels σ̂ ~ p(σ̂).  The optimal x0 loss J*(σ̂) depends only on σ̂, so
//! one curve serves every process, and the total optimum is J* = E_p[w(σ̂) J*(σ̂)]
//! ([`total_weighted_loss`]).
//!
//! Where each equation lives:
//! - forward map: [`ve_sample`] (x̂ = x0 + σ̂ε), [`to_ve`] (x̂ = x_t/α), [`from_ve`];
//! - preconditioning: [`denoise`], [`ideal_output`] (`precond.rs`); per-process
//!   coefficients: [`vp`], [`ve`], [`edm`], [`iddpm`], [`flow`];
//! - targets and loss conversions: [`target_value`], [`x0_from_prediction`],
//!   [`x0_loss_ratio`], [`convert_loss`] (`target.rs`);
//! - noise distributions, densities on ln σ̂, sampling, expectations: [`NoiseDistribution`];
//! - quadrature: [`quad`].
//!
//! | config name | α, σ | σ̂ | c_skip | c_out | c_in | c_noise | w(σ̂) on ‖D−x0‖² | p(σ̂) | native target |
//! |---|---|---|---|---|---|---|---|---|---|
//! | `vp` | VP-SDE | √(e^{½β_d t²+β_min t} − 1) | 1 | −σ̂ | 1/√(σ̂²+1) | (M−1) t(σ̂) | 1/σ̂² | t ~ U(ε_t, 1) | ε |
//! | `ve` | 1, t | t | 1 | σ̂ | 1 | ln(σ̂/2) | 1/σ̂² | ln σ̂ ~ U(ln 0.02, ln 100) | −ε |
//! | `edm` | 1, t | t | σ_d²/(σ̂²+σ_d²) | σ̂σ_d/√(σ̂²+σ_d²) | 1/√(σ̂²+σ_d²) | ¼ ln σ̂ | (σ̂²+σ_d²)/(σ̂σ_d)² | ln σ̂ ~ N(−1.2, 1.2²) | EDM F |
//! | `iddpm` | VP, cosine | grid u_j | 1 | −σ̂ | 1/√(σ̂²+1) | M−1−argmin_j\|u_j−σ̂\| | 1/σ̂² | uniform over u_0…u_{M−1} | ε |
//! | `fm` | 1−t, t | t/(1−t) | 1/(1+σ̂) | −σ̂/(1+σ̂) | 1/(1+σ̂) | t | (1+σ̂)²/σ̂² | ln σ̂ ~ Logistic(0,1) | ε − x0 |
//! | `sd3` | 1−t, t | t/(1−t) | as fm | as fm | as fm | t | as fm | ln σ̂ ~ N(m, s²), (0, 1) | ε − x0 |

pub mod edm;
pub mod error;
pub mod flow;
pub mod fs;
pub mod iddpm;
pub mod noise;
pub mod precond;
pub mod process;
pub mod quad;
pub mod target;
pub mod ve;
pub mod vp;

pub use edm::{edm_loss_weight, edm_precond, Edm};
pub use error::CoreError;
pub use flow::{
    flow_loss_weight, flow_precond, flow_sigma_hat, flow_t_of_sigma_hat, Flow, FlowTimeLaw,
};
pub use iddpm::{iddpm_alpha_bar, iddpm_sigma_grid, Iddpm};
pub use noise::NoiseDistribution;
pub use precond::{denoise, ideal_output, Precond};
pub use process::{total_weighted_loss, vp_alpha, vp_sigma, Process, ProcessKind};
pub use target::{convert_loss, target_value, x0_from_prediction, x0_loss_ratio, Target};
pub use ve::Ve;
pub use vp::{vp_dt_dln_sigma_hat, vp_sigma_hat, vp_t_of_sigma_hat, Vp};

/// VE-coordinate noisy sample x̂ = x0 + σ̂ ε.
pub fn ve_sample(x0: f64, eps: f64, sigma_hat: f64) -> f64 {
    x0 + sigma_hat * eps
}

/// x̂ = x_t / α: maps a sample of the original process to VE coordinates.
pub fn to_ve(x_t: f64, alpha: f64) -> f64 {
    x_t / alpha
}

/// x_t = α x̂: maps a VE-coordinate sample back to the original process.
pub fn from_ve(x_hat: f64, alpha: f64) -> f64 {
    alpha * x_hat
}
