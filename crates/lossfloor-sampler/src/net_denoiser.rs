//! A [`Denoiser`] for a loaded network: D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)
//! with the coefficients of the checkpoint's process (EDM's `*Precond` classes).

use std::str::FromStr;

use candle_core::{DType, Tensor};
use lossfloor_core::{Edm, Process, ProcessKind};
use lossfloor_nets::checkpoint::{LoadedNetwork, PrecondSpec};
use lossfloor_nets::Network;

use crate::denoiser::PrecondDenoiser;
use crate::error::{Result, SamplerError};

/// The raw-network closure of a [`NetworkDenoiser`]: `(c_in·x, c_noise, class_labels) -> F`.
pub type NetFn<'a> = Box<dyn Fn(&Tensor, f64, Option<&Tensor>) -> candle_core::Result<Tensor> + 'a>;

/// A preconditioned network as a [`crate::Denoiser`].
pub type NetworkDenoiser<'a> = PrecondDenoiser<NetFn<'a>>;

/// The process of a checkpoint's preconditioning: the named process with its default
/// hyper-parameters, except EDM's σ_data (EDM's P_mean / P_std do not affect sampling).
pub fn process_from_spec(spec: &PrecondSpec) -> Result<Box<dyn Process>> {
    let kind = ProcessKind::from_str(&spec.process)
        .map_err(|e| SamplerError::Invalid(format!("checkpoint preconditioning: {e}")))?;
    Ok(match (kind, spec.sigma_data) {
        (ProcessKind::Edm, Some(sd)) => Box::new(Edm::new(sd, Edm::P_MEAN, Edm::P_STD)),
        _ => kind.build(),
    })
}

/// Wraps `network` (in eval mode, no augmentation labels) with the preconditioning of
/// `precond`. `img_channels` is the number of image channels C: networks with more
/// output channels (iDDPM and DiT with `learn_sigma` predict 2C) contribute their first
/// C, as EDM's `iDDPMPrecond` does. Class labels are passed as given (one-hot
/// `[N, label_dim]`, or `None` for an unconditional network).
pub fn network_denoiser<'a>(
    network: &'a dyn Network,
    precond: &PrecondSpec,
    img_channels: usize,
) -> Result<NetworkDenoiser<'a>> {
    denoiser_over(NetHandle::Borrowed(network), precond, img_channels)
}

/// The network a denoiser evaluates: borrowed from the caller, or owned by the denoiser.
// Sync because the image split (crate::image_split) shares it between threads.
enum NetHandle<'a> {
    Borrowed(&'a dyn Network),
    Owned(Box<dyn Network>),
}

impl NetHandle<'_> {
    fn get(&self) -> &dyn Network {
        match self {
            NetHandle::Borrowed(n) => *n,
            NetHandle::Owned(n) => n.as_ref(),
        }
    }
}

/// [`network_denoiser`] over a network it owns or borrows.
fn denoiser_over<'a>(
    network: NetHandle<'a>,
    precond: &PrecondSpec,
    img_channels: usize,
) -> Result<NetworkDenoiser<'a>> {
    let process = process_from_spec(precond)?;
    let f: NetFn<'a> = Box::new(move |x: &Tensor, c_noise: f64, labels: Option<&Tensor>| {
        let labels = labels.map(|l| l.to_dtype(DType::F32)).transpose()?;
        let out = crate::image_split::forward_split(network.get(), x, c_noise, labels.as_ref())?;
        let c = out.dim(1)?;
        if c < img_channels {
            candle_core::bail!("network output has {c} channels, expected at least {img_channels}")
        }
        // Sampling never differentiates. If the weights are candle `Var`s, the output carries
        // the autograd graph of the whole forward pass; detaching it lets that graph go now,
        // instead of chaining every evaluation of the sampler into one graph kept alive to
        // the end (64 Fashion-MNIST samples with the quick config ran out of 24 GB that way).
        // `loaded_denoiser` avoids the graph altogether with an inference copy.
        let out = if c > img_channels {
            out.narrow(1, 0, img_channels)?.contiguous()?
        } else {
            out
        };
        Ok(out.detach())
    });
    Ok(PrecondDenoiser::new(process, f))
}

/// The denoiser of a checkpoint loaded by `lossfloor_nets::checkpoint`, over an inference
/// copy of its network ([`LoadedNetwork::inference_network`]: same tensors, no autograd
/// graph, so each forward pass holds only its working set).
pub fn loaded_denoiser(loaded: &LoadedNetwork) -> Result<NetworkDenoiser<'static>> {
    let network = loaded
        .inference_network()
        .map_err(|e| SamplerError::Invalid(format!("inference copy of the network: {e}")))?;
    denoiser_over(
        NetHandle::Owned(network),
        &loaded.precond,
        loaded.spec.img_channels(),
    )
}
