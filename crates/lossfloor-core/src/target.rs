//! Prediction targets, their values, x0 recovery and the loss ratios between them.
//!
//! All formulas are written in VE / x0 coordinates: x̂ = x0 + σ̂ ε.  Each target's
//! error is a fixed multiple of the x0 error e = x0_θ − x0, so the per-σ̂ loss of target T
//! is `J^(T)(σ̂) = r_T(σ̂) · J^(x0)(σ̂)` ([`x0_loss_ratio`]).
//!
//! | target | value | x0 from a prediction P | r_T(σ̂) |
//! |---|---|---|---|
//! | `X0` | x0 | P | 1 |
//! | `Eps` | ε | x̂ − σ̂ P | 1/σ̂² |
//! | `NegEps` | −ε (VE/NCSN: the net with c_out = +σ̂ outputs −ε) | x̂ + σ̂ P | 1/σ̂² |
//! | `V` | α ε − σ x0 with the VP α = 1/√(1+σ̂²), σ = σ̂ α | α² x̂ − σ P | (1+σ̂²)/σ̂² |
//! | `FmVelocity` | u = ε − x0 (α = 1−t, σ = t) | (x̂ − σ̂ P)/(1+σ̂) | (1+σ̂)²/σ̂² |
//! | `EdmF{σ_d}` | F = (x0 − c_skip x̂)/c_out (EDM coefficients) | c_skip x̂ + c_out P | 1/c_out² = (σ̂²+σ_d²)/(σ̂σ_d)² |
//!
//! The score target is not included: its ratio α²/σ⁴ depends on σ_t, not on σ̂ alone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::edm::{edm_loss_weight, edm_precond};
use crate::error::CoreError;
use crate::flow::flow_loss_weight;
use crate::process::{vp_alpha, vp_sigma};

/// What a network (or a loss) predicts.  Serialised as `{"kind": "eps"}`,
/// `{"kind": "edm_f", "sigma_data": 0.5}`, …; parsed from strings by [`FromStr`]
/// (`x0`, `eps`, `neg_eps`, `v`, `fm_velocity`, `edm_f` (σ_d = 0.5) or `edm_f:<σ_d>`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// the clean sample x0
    X0,
    /// the noise ε
    Eps,
    /// minus the noise, −ε: what the VE (NCSN) network outputs at the optimum, since its
    /// preconditioning has c_out = +σ̂ (σ̂ times the score of p(x̂|x0))
    NegEps,
    /// Salimans & Ho v = α ε − σ x0 of the variance-preserving process with the same σ̂
    V,
    /// rectified-flow / SD3 velocity u = ε − x0 (α = 1 − t, σ = t)
    FmVelocity,
    /// EDM's raw-network target F = (x0 − c_skip x̂)/c_out
    EdmF { sigma_data: f64 },
}

impl Target {
    /// Default EDM σ_data.
    pub const EDM_SIGMA_DATA: f64 = 0.5;

    /// Every target, with `EdmF` at the default σ_data = 0.5.
    pub fn all() -> [Target; 6] {
        [
            Target::X0,
            Target::Eps,
            Target::NegEps,
            Target::V,
            Target::FmVelocity,
            Target::EdmF {
                sigma_data: Self::EDM_SIGMA_DATA,
            },
        ]
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::X0 => write!(f, "x0"),
            Target::Eps => write!(f, "eps"),
            Target::NegEps => write!(f, "neg_eps"),
            Target::V => write!(f, "v"),
            Target::FmVelocity => write!(f, "fm_velocity"),
            Target::EdmF { sigma_data } => write!(f, "edm_f:{sigma_data}"),
        }
    }
}

impl FromStr for Target {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let t = match lower.as_str() {
            "x0" => Target::X0,
            "eps" | "epsilon" => Target::Eps,
            "neg_eps" => Target::NegEps,
            "v" => Target::V,
            "fm_velocity" | "velocity" | "u" => Target::FmVelocity,
            "edm_f" | "f" => Target::EdmF {
                sigma_data: Self::EDM_SIGMA_DATA,
            },
            other => match other.strip_prefix("edm_f:") {
                Some(sd) => {
                    let sigma_data: f64 = sd
                        .parse()
                        .map_err(|_| CoreError::UnknownTarget(s.to_string()))?;
                    if !(sigma_data.is_finite() && sigma_data > 0.0) {
                        return Err(CoreError::UnknownTarget(s.to_string()));
                    }
                    Target::EdmF { sigma_data }
                }
                None => return Err(CoreError::UnknownTarget(s.to_string())),
            },
        };
        Ok(t)
    }
}

/// Loss ratio r_T(σ̂) with `J^(T)(σ̂) = r_T(σ̂) · J^(x0)(σ̂)`:
/// x0: 1; ε and −ε: 1/σ̂²; VP v: (1+σ̂²)/σ̂²; FM velocity: (1+σ̂)²/σ̂²;
/// EDM F: 1/c_out² = (σ̂²+σ_d²)/(σ̂ σ_d)².
pub fn x0_loss_ratio(target: &Target, sigma_hat: f64) -> f64 {
    let s = sigma_hat;
    match *target {
        Target::X0 => 1.0,
        Target::Eps | Target::NegEps => 1.0 / (s * s),
        Target::V => (1.0 + s * s) / (s * s),
        Target::FmVelocity => flow_loss_weight(s),
        Target::EdmF { sigma_data } => edm_loss_weight(sigma_data, s),
    }
}

/// Converts a per-σ̂ loss value (a squared error of target `from`, e.g. J*) to the same
/// quantity for target `to`: `value · r_to(σ̂) / r_from(σ̂)`.
pub fn convert_loss(value: f64, from: &Target, to: &Target, sigma_hat: f64) -> f64 {
    value * x0_loss_ratio(to, sigma_hat) / x0_loss_ratio(from, sigma_hat)
}

/// Value of `target` for a clean sample x0 and noise ε at level σ̂ (x̂ = x0 + σ̂ ε):
/// x0 → x0; ε → ε; −ε → −ε; v → α ε − σ x0 with α = 1/√(1+σ̂²), σ = σ̂α;
/// FM velocity → ε − x0; EDM F → (x0 − c_skip x̂)/c_out.
pub fn target_value(target: &Target, x0: f64, eps: f64, sigma_hat: f64) -> f64 {
    match *target {
        Target::X0 => x0,
        Target::Eps => eps,
        Target::NegEps => -eps,
        Target::V => vp_alpha(sigma_hat) * eps - vp_sigma(sigma_hat) * x0,
        Target::FmVelocity => eps - x0,
        Target::EdmF { sigma_data } => {
            let p = edm_precond(sigma_data, sigma_hat);
            let x_hat = x0 + sigma_hat * eps;
            (x0 - p.c_skip * x_hat) / p.c_out
        }
    }
}

/// x0 estimate from a prediction `pred` of `target` at (x̂, σ̂):
/// x0 → pred; ε → x̂ − σ̂ pred; −ε → x̂ + σ̂ pred; v → α² x̂ − σ pred (x_t = α x̂,
/// x0 = α x_t − σ v); FM velocity → (x̂ − σ̂ pred)/(1+σ̂) (x0 = x_t − t u with
/// x_t = x̂/(1+σ̂), t = σ̂/(1+σ̂)); EDM F → c_skip x̂ + c_out pred.
pub fn x0_from_prediction(target: &Target, pred: f64, x_hat: f64, sigma_hat: f64) -> f64 {
    let s = sigma_hat;
    match *target {
        Target::X0 => pred,
        Target::Eps => x_hat - s * pred,
        Target::NegEps => x_hat + s * pred,
        Target::V => {
            let a = vp_alpha(s);
            a * a * x_hat - vp_sigma(s) * pred
        }
        Target::FmVelocity => (x_hat - s * pred) / (1.0 + s),
        Target::EdmF { sigma_data } => {
            let p = edm_precond(sigma_data, s);
            p.c_skip * x_hat + p.c_out * pred
        }
    }
}
