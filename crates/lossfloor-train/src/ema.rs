//! Exponential moving averages of the weights: EDM's (fixed half-life with ramp-up)
//! and EDM2's power-function EMA. Each EMA tensor is updated as
//! lerp(θ, ema, β) = θ + β·(ema − θ); the two differ in β.

use anyhow::Result;
use candle_core::{Tensor, Var};

use crate::config::{EmaConfig, EmaKind};

/// The largest σ_rel of a power-function EMA with γ ≥ 0: σ_rel(0) = 1/√12.
pub const MAX_POWER_STD: f64 = 0.288_675_134_594_812_9;

/// β of the EMA update for a step of `batch` images taken after `nimg` images (the count
/// before this step's batch).
pub fn ema_beta(cfg: &EmaConfig, nimg: u64, batch: usize) -> f64 {
    match cfg.kind {
        EmaKind::Halflife => halflife_beta(cfg.halflife_kimg, cfg.rampup_ratio, nimg, batch),
        EmaKind::Power => power_beta(power_exponent(cfg.std), nimg + batch as u64, batch),
    }
}

/// EDM's β: the half-life h = min(halflife_kimg·1000, rampup_ratio·nimg) images (no
/// ramp-up when rampup_ratio = 0), β = 0.5^(batch/max(h, 1e-8)).
pub fn halflife_beta(halflife_kimg: f64, rampup_ratio: f64, nimg: u64, batch: usize) -> f64 {
    let mut h = halflife_kimg * 1000.0;
    if rampup_ratio > 0.0 {
        h = h.min(nimg as f64 * rampup_ratio);
    }
    0.5f64.powf(batch as f64 / h.max(1e-8))
}

/// EDM2's power-function β at `t` images seen after the step: β_t = (1 − batch/t)^(γ+1).
/// The EMA then averages the weights with a profile ∝ τ^γ over τ ∈ [0, t]; the first step
/// (t = batch) gives β = 0, i.e. the EMA starts at the weights.
pub fn power_beta(gamma: f64, t: u64, batch: usize) -> f64 {
    (1.0 - batch as f64 / t.max(1) as f64)
        .max(0.0)
        .powf(gamma + 1.0)
}

/// Relative standard deviation of the power profile ∝ τ^γ on [0, t], in units of t:
/// σ_rel(γ) = √((γ+1) / ((γ+2)²(γ+3))).
pub fn power_std(gamma: f64) -> f64 {
    ((gamma + 1.0) / ((gamma + 2.0).powi(2) * (gamma + 3.0))).sqrt()
}

/// The exponent γ ≥ 0 with σ_rel(γ) = `std` (0 < std ≤ 1/√12), by bisection: σ_rel falls
/// monotonically as γ grows from 0, so the root is unique.
pub fn power_exponent(std: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while power_std(hi) > std {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if power_std(mid) > std {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The EMA copies of the parameters, in parameter order.
#[derive(Debug)]
pub struct Ema {
    /// One tensor per parameter.
    pub tensors: Vec<Tensor>,
}

impl Ema {
    /// Starts as a copy of the current weights.
    pub fn new(vars: &[Var]) -> Result<Self> {
        Ok(Self {
            tensors: vars
                .iter()
                .map(|v| v.as_tensor().copy())
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// ema ← θ + β·(ema − θ).
    pub fn update(&mut self, vars: &[Var], beta: f64) -> Result<()> {
        for (e, v) in self.tensors.iter_mut().zip(vars) {
            let theta = v.as_tensor();
            if lossfloor_ops::kernels_apply(&[e, theta]) {
                // In place, one parallel pass (the EMA tensors are our own copies).
                lossfloor_ops::optim::lerp_toward(e, theta, beta)?;
                continue;
            }
            *e = ((&*e - theta)?.affine(beta, 0.0)? + theta)?;
        }
        Ok(())
    }
}
