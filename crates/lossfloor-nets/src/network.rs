//! A common interface of the denoiser networks, so that trainers and
//! samplers can hold any of them (e.g. as `Box<dyn Network>`).

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::{NetsError, Result};

/// A network `F(x; noise_labels, class_labels, augment_labels)` as called by
/// EDM's preconditioners (the raw network, without c_skip / c_out / c_in).
pub trait Network {
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

    /// Trainable parameters `(name, tensor)` sorted by name; the tensors share
    /// ids with the `Var`s they were created from, so `GradStore::get` works.
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// The `Var`s of `varmap` behind [`Network::parameters`], in the same
    /// (name) order, for optimisers, EMA and checkpoints.
    fn trainable_vars(&self, varmap: &VarMap) -> Result<Vec<(String, Var)>> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| NetsError::Config("VarMap mutex poisoned".into()))?;
        self.parameters()
            .into_iter()
            .map(|(name, _)| {
                let var = data
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| NetsError::Config(format!("{name} is not in the VarMap")))?;
                Ok((name, var))
            })
            .collect()
    }
}
