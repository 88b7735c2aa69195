//! EDM's augmentation in training: the `[augment]` section and the pipe applied to each round's clean images.
//!
//! As in EDM's `training/loss.py`, the pipe (`lossfloor_augment`) acts on the clean image x0:
//! the noise is added to the augmented image, the loss target is the augmented image, and the
//! network gets the 9 augmentation labels. Evaluation and sampling pass no labels (`None`),
//! which the networks treat as "not augmented" (EDM's `generate.py` does the same).
//!
//! Each image's record is drawn from its own ChaCha8 stream keyed by (seed, step, position of
//! the image in the step's batch, [`STREAM_AUGMENT`]): the draws depend neither on how `batch`
//! is split into rounds (`batch_gpu`) nor on earlier steps, so a resumed run repeats them.

use anyhow::{bail, Context, Result};
use lossfloor_augment::{
    apply_with, draw_raw, params_from_draws, AugmentConfig as PipeConfig, AugmentParams,
    AugmentStds, LABEL_DIM,
};
use serde::{Deserialize, Serialize};

use crate::config::NetworkConfig;
use crate::train::{stream_rng, STREAM_AUGMENT};

/// `[augment]`: EDM's non-leaky augmentation. Off (`p = 0`) by default; the multipliers and
/// standard deviations default to what EDM's `train.py --augment=P` sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Overall probability (EDM's `--augment`; its CIFAR-10 recipe uses 0.12). 0 = off.
    pub p: f64,
    /// Multiplier of the left-right flip (EDM: 1e8, i.e. always eligible, then a coin flip).
    pub xflip: f64,
    /// Multiplier of the top-bottom flip.
    pub yflip: f64,
    /// Multiplier of the isotropic scale.
    pub scale: f64,
    /// Multiplier of the rotation.
    pub rotate_frac: f64,
    /// Multiplier of the anisotropic scale.
    pub aniso: f64,
    /// Multiplier of the translation.
    pub translate_frac: f64,
    /// Range of the rotation as a fraction of a half turn each way (1 = the full circle).
    pub rotate_frac_max: f64,
    /// Probability that the anisotropic scale acts in a randomly turned frame.
    pub aniso_rotate_prob: f64,
    /// Log2 standard deviation of the isotropic scale.
    pub scale_std: f64,
    /// Log2 standard deviation of the anisotropic scale.
    pub aniso_std: f64,
    /// Standard deviation of the translation, as a fraction of the image size.
    pub translate_frac_std: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        let edm = PipeConfig::edm(0.0);
        AugmentConfig {
            p: 0.0,
            xflip: edm.xflip,
            yflip: edm.yflip,
            scale: edm.scale,
            rotate_frac: edm.rotate_frac,
            aniso: edm.aniso,
            translate_frac: edm.translate_frac,
            rotate_frac_max: edm.rotate_frac_max,
            aniso_rotate_prob: edm.aniso_rotate_prob,
            scale_std: edm.stds.scale_std,
            aniso_std: edm.stds.aniso_std,
            translate_frac_std: edm.stds.translate_frac_std,
        }
    }
}

impl AugmentConfig {
    /// Whether the trainer runs the pipe.
    pub fn enabled(&self) -> bool {
        self.p > 0.0
    }

    /// The pipe's settings.
    pub fn pipe(&self) -> PipeConfig {
        PipeConfig {
            p: self.p,
            xflip: self.xflip,
            yflip: self.yflip,
            scale: self.scale,
            rotate_frac: self.rotate_frac,
            aniso: self.aniso,
            translate_frac: self.translate_frac,
            rotate_frac_max: self.rotate_frac_max,
            aniso_rotate_prob: self.aniso_rotate_prob,
            stds: AugmentStds {
                scale_std: self.scale_std,
                aniso_std: self.aniso_std,
                translate_frac_std: self.translate_frac_std,
            },
        }
    }

    /// Checks the values and that the network takes exactly the pipe's labels when, and only
    /// when, augmentation is on: a network with `augment_dim > 0` trained without the pipe
    /// would get no labels, and its `map_augment` layer would silently never train.
    pub fn validate(&self, network: &NetworkConfig) -> Result<()> {
        let p = self.p;
        if !(0.0..=1.0).contains(&p) {
            bail!("augment.p = {p} must lie in [0, 1]");
        }
        let non_negative = [
            ("xflip", self.xflip),
            ("yflip", self.yflip),
            ("scale", self.scale),
            ("rotate_frac", self.rotate_frac),
            ("aniso", self.aniso),
            ("translate_frac", self.translate_frac),
            ("rotate_frac_max", self.rotate_frac_max),
            ("scale_std", self.scale_std),
            ("aniso_std", self.aniso_std),
            ("translate_frac_std", self.translate_frac_std),
        ];
        for (key, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                bail!("augment.{key} = {value} must be a finite number >= 0");
            }
        }
        if !(0.0..=1.0).contains(&self.aniso_rotate_prob) {
            bail!(
                "augment.aniso_rotate_prob = {} must lie in [0, 1]",
                self.aniso_rotate_prob
            );
        }
        let augment_dim = match network {
            NetworkConfig::SongUNet(c) => Some(c.augment_dim),
            NetworkConfig::Dhariwal(c) => Some(c.augment_dim),
            NetworkConfig::DiT(_) => None,
        };
        match augment_dim {
            None if self.enabled() => bail!(
                "augment.p = {p} needs a network that takes augmentation labels, but \
                 network.arch = \"dit\" has no augment input: set augment.p = 0"
            ),
            Some(dim) if self.enabled() && dim != LABEL_DIM => bail!(
                "augment.p = {p} requires network.augment_dim = {LABEL_DIM} (the pipe's labels), \
                 not {dim}"
            ),
            Some(dim) if !self.enabled() && dim > 0 => bail!(
                "network.augment_dim = {dim} requires augment.p > 0 (EDM: 0.12): with augment.p = \
                 0 the network gets no augmentation labels and its map_augment layer never trains"
            ),
            _ => Ok(()),
        }
    }
}

/// Augments one round's clean images in place (NCHW, `shape = [n, c, h, w]`) and returns
/// their labels, row-major `[n, 9]`; `None` (images untouched) when augmentation is off, as
/// EDM skips the pipe then. Image `i` of the round is image `first + i` of step `step`.
///
/// The records do not depend on the split into rounds; the augmented pixels do only up to f32
/// round-off, through the pipe's batch-wide padding margin (`lossfloor_augment::apply_with`).
pub fn augment_round(
    cfg: &AugmentConfig,
    seed: u64,
    step: u64,
    first: usize,
    images: &mut [f32],
    shape: [usize; 4],
) -> Result<Option<Vec<f32>>> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let records = draw_records(cfg, seed, step, first, shape[0]);
    let pipe = cfg.pipe();
    let (augmented, labels) =
        apply_with(images, shape, &records, &pipe.stds).context("augmentation pipe")?;
    images.copy_from_slice(&augmented);
    Ok(Some(labels))
}

/// The records of images `first..first + n` of step `step`, one stream per image.
pub fn draw_records(
    cfg: &AugmentConfig,
    seed: u64,
    step: u64,
    first: usize,
    n: usize,
) -> Vec<AugmentParams> {
    let pipe = cfg.pipe();
    (first..first + n)
        .map(|position| {
            let mut rng = stream_rng(seed, step, position as u64, STREAM_AUGMENT);
            params_from_draws(&draw_raw(&mut rng), &pipe)
        })
        .collect()
}
