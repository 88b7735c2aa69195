//! A common interface of the denoiser networks, so that trainers and
//! samplers can hold any of them (e.g. as `Box<dyn Network>`).

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::dropout::DropoutRng;
use crate::{NetsError, Result};

/// A network `F(x; noise_labels, class_labels, augment_labels)` as called by
/// EDM's preconditioners (the raw network, without c_skip / c_out / c_in).
///
/// Networks are `Send + Sync` (their weights are shared, read-only tensors), so that a
/// sampler can run several parts of a batch through one network on different threads.
pub trait Network: Send + Sync {
    /// Forward pass.
    ///
    /// * `x`: `[N, in_channels, R, R]`
    /// * `noise_labels`: `[N]` (c_noise of the preconditioner)
    /// * `class_labels`: `[N, label_dim]` (one-hot or soft), required iff the
    ///   network is class-conditional
    /// * `augment_labels`: `[N, augment_dim]`, optional
    /// * `train`: enables dropout and label dropout
    ///
    /// Returns `[N, out_channels, R, R]`.
    fn forward(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor>;

    /// The source of this network's dropout and label-dropout masks.
    fn dropout_rng(&self) -> &DropoutRng;

    /// Restarts the dropout masks from `seed`. A trainer calls this before each
    /// training forward pass (with a seed derived from its run seed and step), so
    /// that the masks, and thus the whole run, are reproducible and resumable.
    fn reseed_dropout(&self, seed: u64) {
        self.dropout_rng().reseed(seed);
    }

    /// Trainable parameters `(name, tensor)` sorted by name; the tensors share
    /// ids with the `Var`s they were created from, so `GradStore::get` works.
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// Forward multiply-adds of one image (see [`crate::flops`] for what is counted).
    fn forward_macs(&self) -> u64;

    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        element_count(&self.parameters())
    }

    /// The `Var`s of `varmap` behind [`Network::parameters`], in the same
    /// (name) order, for optimisers, EMA and checkpoints.
    fn trainable_vars(&self, varmap: &VarMap) -> Result<Vec<(String, Var)>> {
        vars_named(varmap, &self.parameters())
    }
}

/// Total number of scalars in `(name, tensor)` pairs.
pub(crate) fn element_count(tensors: &[(String, Tensor)]) -> usize {
    tensors.iter().map(|(_, t)| t.elem_count()).sum()
}

/// The `Var`s of `varmap` with the names of `tensors`, in that order (`VarMap::all_vars`
/// is in HashMap order and also holds buffers, so optimisers and EMA go through this).
pub(crate) fn vars_named(
    varmap: &VarMap,
    tensors: &[(String, Tensor)],
) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| NetsError::Config("VarMap mutex poisoned".into()))?;
    tensors
        .iter()
        .map(|(name, _)| {
            data.get(name)
                .map(|v| (name.clone(), v.clone()))
                .ok_or_else(|| NetsError::Config(format!("{name} is not in the VarMap")))
        })
        .collect()
}

/// Checks a batch `x` `[N, channels, res, res]` and its per-image conditioning values
/// (`labels`, called `what` in messages, N elements); returns N.
pub(crate) fn check_image_batch(
    x: &Tensor,
    labels: &Tensor,
    what: &str,
    channels: usize,
    res: usize,
) -> Result<usize> {
    let (n, c, h, w) = x.dims4()?;
    if c != channels || h != res || w != res {
        return Err(NetsError::Input(format!(
            "x has shape {:?}, expected [N, {channels}, {res}, {res}]",
            x.dims()
        )));
    }
    if labels.elem_count() != n {
        return Err(NetsError::Input(format!(
            "{what} has {} elements, expected {n}",
            labels.elem_count()
        )));
    }
    Ok(n)
}
