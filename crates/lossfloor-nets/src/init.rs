//! Seeded parameter creation with EDM's initialisation.

use candle_core::{Device, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::{NetsError, Result};

/// SplitMix64: a small, fast, seedable generator (candle's CPU RNG cannot be seeded).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// How one parameter is initialised.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PInit {
    /// EDM's `xavier_uniform * gain`: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)).
    Xavier {
        fan_in: usize,
        fan_out: usize,
        gain: f64,
    },
    /// U(-bound, bound) (EDM's `kaiming_uniform` has bound `gain * sqrt(3 / fan_in)`).
    Uniform {
        bound: f64,
    },
    Zeros,
    Ones,
    /// N(0, std^2).
    Normal {
        std: f64,
    },
}

impl PInit {
    fn candle(self) -> Init {
        match self {
            PInit::Xavier {
                fan_in,
                fan_out,
                gain,
            } => {
                let b = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
                Init::Uniform { lo: -b, up: b }
            }
            PInit::Uniform { bound } => Init::Uniform {
                lo: -bound,
                up: bound,
            },
            PInit::Zeros => Init::Const(0.0),
            PInit::Ones => Init::Const(1.0),
            PInit::Normal { std } => Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        }
    }

    fn sample(self, n: usize, rng: &mut SplitMix64) -> Vec<f32> {
        match self {
            PInit::Xavier {
                fan_in,
                fan_out,
                gain,
            } => {
                let b = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
                (0..n)
                    .map(|_| ((rng.uniform() * 2.0 - 1.0) * b) as f32)
                    .collect()
            }
            PInit::Uniform { bound } => (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect(),
            PInit::Zeros => vec![0.0; n],
            PInit::Ones => vec![1.0; n],
            PInit::Normal { std } => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
        }
    }
}

/// One named tensor of the network.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) tensor: Tensor,
    pub(crate) buffer: bool,
}

/// Creates parameters through a [`VarBuilder`]; when seeded, values are drawn
/// from a seeded generator and written into the [`VarMap`] first.
pub(crate) struct ParamCtx<'a> {
    seeded: Option<(&'a VarMap, SplitMix64, Device)>,
    pub(crate) entries: Vec<Entry>,
}

impl<'a> ParamCtx<'a> {
    pub(crate) fn seeded(varmap: &'a VarMap, device: &Device, seed: u64) -> Self {
        Self {
            seeded: Some((varmap, SplitMix64::new(seed), device.clone())),
            entries: Vec::new(),
        }
    }

    pub(crate) fn unseeded() -> Self {
        Self {
            seeded: None,
            entries: Vec::new(),
        }
    }

    fn create(
        &mut self,
        vb: &VarBuilder,
        name: &str,
        shape: &[usize],
        init: PInit,
        buffer: bool,
    ) -> Result<Tensor> {
        let prefix = vb.prefix();
        let full = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        if let Some((varmap, rng, device)) = self.seeded.as_mut() {
            let n: usize = shape.iter().product();
            let value = Tensor::from_vec(init.sample(n, rng), shape, device)?;
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| NetsError::Config("VarMap mutex poisoned".into()))?;
            match data.get(&full) {
                Some(var) => var.set(&value)?,
                None => {
                    data.insert(full.clone(), Var::from_tensor(&value)?);
                }
            }
        }
        let tensor = vb.get_with_hints(shape, name, init.candle())?;
        self.entries.push(Entry {
            name: full,
            tensor: tensor.clone(),
            buffer,
        });
        Ok(tensor)
    }

    /// A trainable parameter.
    pub(crate) fn param(
        &mut self,
        vb: &VarBuilder,
        name: &str,
        shape: &[usize],
        init: PInit,
    ) -> Result<Tensor> {
        self.create(vb, name, shape, init, false)
    }

    /// A persistent, non-trainable buffer (stored in the VarMap for checkpoints).
    pub(crate) fn buffer(
        &mut self,
        vb: &VarBuilder,
        name: &str,
        shape: &[usize],
        init: PInit,
    ) -> Result<Tensor> {
        self.create(vb, name, shape, init, true)
    }
}
