//! Configuration of [`crate::DhariwalUNet`], with EDM's option names and defaults.

use serde::{Deserialize, Serialize};

use crate::{NetsError, Result};

fn d_model_channels() -> usize {
    192
}
fn d_channel_mult() -> Vec<usize> {
    vec![1, 2, 3, 4]
}
fn d_channel_mult_emb() -> usize {
    4
}
fn d_num_blocks() -> usize {
    3
}
fn d_attn_resolutions() -> Vec<usize> {
    vec![32, 16, 8]
}
fn d_dropout() -> f64 {
    0.10
}
fn d_channels_per_head() -> usize {
    64
}

/// Options of EDM's `DhariwalUNet` (ADM); field names and defaults follow EDM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DhariwalUNetConfig {
    /// Image resolution at input and output.
    pub img_resolution: usize,
    /// Number of input channels.
    pub in_channels: usize,
    /// Number of output channels.
    pub out_channels: usize,
    /// Number of class labels, 0 = unconditional.
    #[serde(default)]
    pub label_dim: usize,
    /// Augmentation label dimensionality, 0 = no augmentation.
    #[serde(default)]
    pub augment_dim: usize,
    /// Base multiplier for the number of channels.
    #[serde(default = "d_model_channels")]
    pub model_channels: usize,
    /// Per-resolution multipliers for the number of channels.
    #[serde(default = "d_channel_mult")]
    pub channel_mult: Vec<usize>,
    /// Multiplier for the dimensionality of the embedding vector.
    #[serde(default = "d_channel_mult_emb")]
    pub channel_mult_emb: usize,
    /// Number of residual blocks per resolution.
    #[serde(default = "d_num_blocks")]
    pub num_blocks: usize,
    /// Resolutions with self-attention.
    #[serde(default = "d_attn_resolutions")]
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability of intermediate activations.
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    /// Dropout probability of class labels (classifier-free guidance).
    #[serde(default)]
    pub label_dropout: f64,
    /// Channels per attention head (EDM fixes 64; blocks with fewer channels
    /// than one head get no attention, as in EDM). An extension for small
    /// test networks.
    #[serde(default = "d_channels_per_head")]
    pub channels_per_head: usize,
}

impl DhariwalUNetConfig {
    /// EDM's class defaults for the given resolution and channel counts.
    pub fn new(img_resolution: usize, in_channels: usize, out_channels: usize) -> Self {
        Self {
            img_resolution,
            in_channels,
            out_channels,
            label_dim: 0,
            augment_dim: 0,
            model_channels: d_model_channels(),
            channel_mult: d_channel_mult(),
            channel_mult_emb: d_channel_mult_emb(),
            num_blocks: d_num_blocks(),
            attn_resolutions: d_attn_resolutions(),
            dropout: d_dropout(),
            label_dropout: 0.0,
            channels_per_head: d_channels_per_head(),
        }
    }

    /// EDM's `--arch=adm` ImageNet-64 command: class-conditional (1000
    /// classes), 64x64x3, dropout 0.10, no augmentation.
    pub fn adm_imagenet64() -> Self {
        Self {
            label_dim: 1000,
            dropout: 0.10,
            ..Self::new(64, 3, 3)
        }
    }

    /// Channels of the conditioning embedding (`model_channels * channel_mult_emb`).
    pub fn emb_channels(&self) -> usize {
        self.model_channels * self.channel_mult_emb
    }

    /// Checks that the options describe a buildable network (group and head
    /// divisibility is checked while building).
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(NetsError::Config(m));
        if self.channel_mult.is_empty() {
            return err("channel_mult is empty".into());
        }
        if self.img_resolution == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return err("img_resolution, in_channels and out_channels must be positive".into());
        }
        let levels = self.channel_mult.len() as u32;
        let div = 1usize << (levels - 1);
        if !self.img_resolution.is_multiple_of(div) {
            return err(format!(
                "img_resolution {} is not divisible by {div} ({} levels)",
                self.img_resolution, levels
            ));
        }
        if self.model_channels < 4 || !self.model_channels.is_multiple_of(2) {
            return err("model_channels must be even and >= 4".into());
        }
        if self.channel_mult.contains(&0) || self.channel_mult_emb == 0 {
            return err("channel_mult entries and channel_mult_emb must be positive".into());
        }
        if self.channels_per_head == 0 {
            return err("channels_per_head must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) || !(0.0..1.0).contains(&self.label_dropout) {
            return err("dropout and label_dropout must lie in [0, 1)".into());
        }
        Ok(())
    }
}
