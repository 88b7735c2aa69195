//! EDM-style preconditioning in VE / x0 coordinates.
//!
//! Every model is written as a denoiser of x̂ = x0 + σ̂ ε:
//!
//! ```text
//! D(x̂; σ̂) = c_skip(σ̂) · x̂ + c_out(σ̂) · F( c_in(σ̂) · x̂ ; c_noise(σ̂) )
//! ```
//!
//! where F is the raw network.  The coefficients for each process live with the process
//! (`vp.rs`, `ve.rs`, `edm.rs`, `iddpm.rs`, `flow.rs`).

use serde::{Deserialize, Serialize};

/// Preconditioning coefficients at one noise level σ̂.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Precond {
    /// weight of the skip connection on x̂
    pub c_skip: f64,
    /// scale of the network output F
    pub c_out: f64,
    /// scale of the network input: the network sees c_in · x̂
    pub c_in: f64,
    /// noise conditioning value passed to the network (process-specific units)
    pub c_noise: f64,
}

/// Denoiser output `D = c_skip · x̂ + c_out · F` (the x0 estimate) from the network output F.
pub fn denoise(p: &Precond, x_hat: f64, f: f64) -> f64 {
    p.c_skip * x_hat + p.c_out * f
}

/// Ideal network output `F* = (x0 − c_skip · x̂) / c_out`: the value of F for which
/// [`denoise`] returns exactly x0 (the regression target the preconditioning implies).
pub fn ideal_output(p: &Precond, x_hat: f64, x0: f64) -> f64 {
    (x0 - p.c_skip * x_hat) / p.c_out
}
