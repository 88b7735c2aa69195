//! Classifier-free guidance: a class-conditional denoiser pushed away from its own
//! unconditional output.
//!
//! The unconditional input is what the network saw when its label was dropped in training:
//! through [`lossfloor_nets::Network`] that is an all-zero one-hot row for every
//! architecture (SongUNet and DhariwalUNet zero the label row like EDM; DiT maps an all-zero
//! row to its null class index `num_classes`). Both halves run as one network pass over the
//! batch [x; x] with labels [c; 0].

use candle_core::Tensor;
use lossfloor_nets::checkpoint::NetworkSpec;

use crate::denoiser::Denoiser;
use crate::error::{Result, SamplerError};

/// The guided denoiser output
///
///   D = D_uncond + W·(D_cond − D_uncond) = W·D_cond + (1 − W)·D_uncond,
///
/// computed in the second form, so that W = 1 returns D_cond and W = 0 returns D_uncond
/// exactly (for finite inputs).
pub fn guided_output(d_cond: &Tensor, d_uncond: &Tensor, w: f64) -> candle_core::Result<Tensor> {
    d_cond.affine(w, 0.0)? + d_uncond.affine(1.0 - w, 0.0)?
}

/// Checks that `spec` can be guided with weight `w`: a finite W, a class-conditional
/// network, trained with label dropout (else its unconditional output was never trained).
pub fn check_guidance(spec: &NetworkSpec, w: f64) -> Result<()> {
    if !w.is_finite() {
        return Err(SamplerError::Invalid(format!(
            "--guidance {w} is not allowed: expected a finite weight (1 = plain conditional sampling)"
        )));
    }
    let (label_key, dropout_key, p) = match spec {
        NetworkSpec::SongUNet(c) => ("label_dim", "label_dropout", c.label_dropout),
        NetworkSpec::Dhariwal(c) => ("label_dim", "label_dropout", c.label_dropout),
        NetworkSpec::DiT(c) => ("num_classes", "class_dropout_prob", c.class_dropout_prob),
    };
    if spec.label_dim() == 0 {
        return Err(SamplerError::Invalid(format!(
            "--guidance needs a class-conditional network, but this {} network has {label_key} = 0",
            spec.arch()
        )));
    }
    if p <= 0.0 {
        return Err(SamplerError::Invalid(format!(
            "--guidance needs a network trained with label dropout, but this {} network has \
             {dropout_key} = 0, so its unconditional output was never trained",
            spec.arch()
        )));
    }
    Ok(())
}

/// A class-conditional denoiser with classifier-free guidance weight W
/// ([`guided_output`]); W = 1 is plain conditional sampling.
pub struct GuidedDenoiser<D> {
    inner: D,
    weight: f64,
}

impl<D: Denoiser> GuidedDenoiser<D> {
    /// Guides `inner` with weight `weight` (check the network with [`check_guidance`]).
    pub fn new(inner: D, weight: f64) -> Self {
        Self { inner, weight }
    }
}

impl<D: Denoiser> Denoiser for GuidedDenoiser<D> {
    /// One pass of the inner denoiser over [x; x] with labels [c; 0], then
    /// [`guided_output`] of the two halves.
    fn denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        class_labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let Some(labels) = class_labels else {
            candle_core::bail!("classifier-free guidance needs class labels")
        };
        let n = x.dim(0)?;
        let xx = Tensor::cat(&[x, x], 0)?;
        let ll = Tensor::cat(&[labels, &labels.zeros_like()?], 0)?;
        let d = self.inner.denoise(&xx, sigma, Some(&ll))?;
        guided_output(&d.narrow(0, 0, n)?, &d.narrow(0, n, n)?, self.weight)
    }
    fn sigma_min(&self) -> f64 {
        self.inner.sigma_min()
    }
    fn sigma_max(&self) -> f64 {
        self.inner.sigma_max()
    }
    fn round_sigma(&self, sigma: f64) -> f64 {
        self.inner.round_sigma(sigma)
    }
}
