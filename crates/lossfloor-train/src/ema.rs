//! EDM's exponential moving average of the weights.
//!
//! Before the update at `nimg` images (the count before this step's batch), the half-life
//! is h = min(halflife_kimg·1000, rampup_ratio·nimg) images (no ramp-up when
//! rampup_ratio = 0), β = 0.5^(batch/max(h, 1e-8)), and each EMA tensor becomes
//! lerp(θ, ema, β) = θ + β·(ema − θ).

use anyhow::Result;
use candle_core::{Tensor, Var};

use crate::config::EmaConfig;

/// β of the EMA update for a step of `batch` images taken after `nimg` images.
pub fn ema_beta(cfg: &EmaConfig, nimg: u64, batch: usize) -> f64 {
    let mut h = cfg.halflife_kimg * 1000.0;
    if cfg.rampup_ratio > 0.0 {
        h = h.min(nimg as f64 * cfg.rampup_ratio);
    }
    0.5f64.powf(batch as f64 / h.max(1e-8))
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
            *e = ((&*e - theta)?.affine(beta, 0.0)? + theta)?;
        }
        Ok(())
    }
}
