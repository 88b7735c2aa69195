//! The [`Denoiser`] trait D(x̂; σ̂) and an adapter from a preconditioned raw network.

use candle_core::{DType, Tensor};
use lossfloor_core::{Precond, Process};

/// A denoiser D(x̂; σ̂) in VE / x0 coordinates: given x̂ = x0 + σ̂ ε it returns an
/// estimate of x0 (EDM's `net(x, sigma, class_labels)`).
///
/// Every process of `lossfloor-core` (VP, VE, EDM, iDDPM, flow matching) is sampled in
/// these coordinates: the sampler integrates the probability-flow ODE
/// dx̂/dσ̂ = (x̂ − D(x̂; σ̂))/σ̂, which does not depend on the process's α(t).  A
/// flow-matching model therefore needs no sampler of its own: wrap it as a
/// [`PrecondDenoiser`] (or implement D = c_skip x̂ + c_out F(c_in x̂; c_noise) directly) and
/// the EDM sampler runs on σ̂ = t/(1−t) — x_t = α x̂ is never formed.
pub trait Denoiser {
    /// D(x; σ) for a batch `x` of shape `[N, C, H, W]` (f32).  `sigma` is the noise
    /// level in float64; an implementation casts it to its own precision (EDM casts it
    /// to float32 inside the network).  `class_labels` is `[N, num_classes]` (one-hot)
    /// or `None`.  Returns a tensor of the same shape as `x`.
    fn denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        class_labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor>;
    /// Smallest σ the denoiser supports (EDM: `net.sigma_min`).
    fn sigma_min(&self) -> f64 {
        0.0
    }
    /// Largest σ the denoiser supports (EDM: `net.sigma_max`).
    fn sigma_max(&self) -> f64 {
        f64::INFINITY
    }
    /// Snaps σ to a value the network was trained on (EDM: `net.round_sigma`; only
    /// iDDPM is not the identity).
    fn round_sigma(&self, sigma: f64) -> f64 {
        sigma
    }
    /// The denoiser as c_skip·x + c_out·F(c_in·x; c_noise), when it is one: the sampler
    /// then forms c_in·x and D inside its own passes ([`crate::fused`]) and calls only F.
    fn preconditioned(&self) -> Option<&dyn Preconditioned> {
        None
    }
}

/// A denoiser of the form D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)).
pub trait Preconditioned {
    /// The coefficients at noise level σ.
    fn precond(&self, sigma: f64) -> Precond;
    /// The raw network F on its input `x_in` = c_in·x (f32 `[N, C, H, W]`); returns f32 of
    /// the same shape.
    fn raw(
        &self,
        x_in: &Tensor,
        c_noise: f64,
        class_labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor>;
}

impl<T: Denoiser + ?Sized> Denoiser for &T {
    fn denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        class_labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        (**self).denoise(x, sigma, class_labels)
    }
    fn sigma_min(&self) -> f64 {
        (**self).sigma_min()
    }
    fn sigma_max(&self) -> f64 {
        (**self).sigma_max()
    }
    fn round_sigma(&self, sigma: f64) -> f64 {
        (**self).round_sigma(sigma)
    }
    fn preconditioned(&self) -> Option<&dyn Preconditioned> {
        (**self).preconditioned()
    }
}

/// D(x̂; σ̂) = c_skip(σ̂) x̂ + c_out(σ̂) F(c_in(σ̂) x̂; c_noise(σ̂)) for a raw network F
/// (a closure `(c_in·x̂, c_noise, class_labels) -> F`) and a process of `lossfloor-core`,
/// which supplies the coefficients, the σ̂ range and `round_sigma`.
pub struct PrecondDenoiser<F> {
    process: Box<dyn Process>,
    net: F,
}

impl<F> PrecondDenoiser<F>
where
    F: Fn(&Tensor, f64, Option<&Tensor>) -> candle_core::Result<Tensor>,
{
    /// Wraps `net` with the preconditioning of `process`.
    pub fn new(process: Box<dyn Process>, net: F) -> Self {
        Self { process, net }
    }

    /// The process whose preconditioning is applied.
    pub fn process(&self) -> &dyn Process {
        self.process.as_ref()
    }
}

impl<F> Denoiser for PrecondDenoiser<F>
where
    F: Fn(&Tensor, f64, Option<&Tensor>) -> candle_core::Result<Tensor>,
{
    fn denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        class_labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        use lossfloor_ops::profile::{scope, Category};
        let p = self.process.precond(sigma);
        let prof = scope(Category::Heun);
        let x = x.to_dtype(DType::F32)?;
        let x_in = x.affine(p.c_in, 0.0)?;
        drop(prof);
        let f = (self.net)(&x_in, p.c_noise, class_labels)?;
        let _prof = scope(Category::Heun);
        let f = f.to_dtype(DType::F32)?;
        x.affine(p.c_skip, 0.0)? + f.affine(p.c_out, 0.0)?
    }
    fn sigma_min(&self) -> f64 {
        self.process.sigma_hat_range().0
    }
    fn sigma_max(&self) -> f64 {
        self.process.sigma_hat_range().1
    }
    fn round_sigma(&self, sigma: f64) -> f64 {
        self.process.round_sigma(sigma)
    }
    fn preconditioned(&self) -> Option<&dyn Preconditioned> {
        Some(self)
    }
}

impl<F> Preconditioned for PrecondDenoiser<F>
where
    F: Fn(&Tensor, f64, Option<&Tensor>) -> candle_core::Result<Tensor>,
{
    fn precond(&self, sigma: f64) -> Precond {
        self.process.precond(sigma)
    }
    fn raw(
        &self,
        x_in: &Tensor,
        c_noise: f64,
        class_labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        (self.net)(x_in, c_noise, class_labels)?.to_dtype(DType::F32)
    }
}
