//! # lossfloor-sampler: EDM's sampler in candle
//!
//! - [`Denoiser`]: D(x̂; σ̂) in the VE / x0 coordinates of `lossfloor-core`;
//!   [`PrecondDenoiser`] builds one from a raw network F and a process's preconditioning.
//! - [`sample`]: EDM's Algorithm 2 (`edm_sampler` of `generate.py`), deterministic or
//!   stochastic (S_churn), Heun or Euler, on the time steps of [`edm_time_steps`].
//! - [`GuidedDenoiser`]: classifier-free guidance D_uncond + W·(D_cond − D_uncond), one
//!   batched network pass ([`guidance`]).
//! - [`SeedRng`]: one ChaCha8 stream per image seed (EDM's `StackedRandomGenerator`)
//!   for latents and churn noise; [`random_class`], [`one_hot`], [`parse_seeds`].
//! - I/O: [`latents_from_npy`], [`save_npy_f32`], [`to_uint8`], [`save_png`],
//!   [`save_grid_png`], [`image_path`]; all writes are atomic.
//!
//! Every process (VP, VE, EDM, iDDPM, flow matching) is sampled in VE coordinates
//! x̂ = x_t/α, σ̂ = σ/α: the probability-flow ODE dx̂/dσ̂ = (x̂ − D(x̂; σ̂))/σ̂ involves only
//! the denoiser, so a flow-matching model uses the same sampler through its
//! [`Denoiser`] (σ̂ = t/(1−t); σ_max = 80 corresponds to t ≈ 0.988).
//!
//! ```no_run
//! # use candle_core::Device;
//! # use lossfloor_sampler::*;
//! # fn run(net: &dyn Denoiser) -> Result<()> {
//! let dev = Device::Cpu;
//! let seeds = parse_seeds("0-63")?;
//! let mut rng = SeedRng::new(&seeds);
//! let latents = rng.randn(&[3, 32, 32], &dev)?;
//! let labels = one_hot(&rng.class_labels(10)?, 10, &dev)?;
//! let cfg = HeunConfig::default();
//! let x = sample(net, &latents, Some(&labels), &cfg, &mut |s| rng.randn_like(s, &dev))?;
//! save_grid_png("grid.png".as_ref(), &to_uint8(&x)?, 8)?;
//! # Ok(()) }
//! ```

pub mod denoiser;
pub mod error;
pub mod fused;
pub mod guidance;
pub mod image_split;
pub mod io;
pub mod net_denoiser;
pub mod sampler;
pub mod seeds;

pub use denoiser::{Denoiser, PrecondDenoiser, Preconditioned};
pub use error::{Result, SamplerError};
pub use guidance::{check_guidance, guided_output, GuidedDenoiser};
pub use io::{
    image_path, latents_from_npy, save_grid_png, save_npy_f32, save_png, to_uint8, write_atomic,
};
pub use sampler::{churn_gamma, edm_time_steps, sample, sample_composed, HeunConfig, Solver};
pub use seeds::{one_hot, parse_seeds, random_class, SeedRng};
