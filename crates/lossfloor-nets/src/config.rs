//! Configuration of [`crate::SongUNet`], with EDM's option names and defaults.

use serde::{Deserialize, Serialize};

use crate::{NetsError, Result};

/// Timestep (noise level) embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingType {
    /// Sinusoidal positional embedding (DDPM++), `endpoint=True`, max positions 1e4.
    Positional,
    /// Random Fourier features with scale 16 (NCSN++); frequencies are a buffer.
    Fourier,
}

/// Encoder architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderType {
    /// Plain encoder (DDPM++).
    Standard,
    /// Input-skip pyramid: downsampled input added through 1x1 convs.
    Skip,
    /// Residual input pyramid (NCSN++).
    Residual,
}

/// Decoder architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderType {
    /// Output only at the finest resolution (DDPM++, NCSN++).
    Standard,
    /// Output pyramid summed over all resolutions.
    Skip,
}

fn d_model_channels() -> usize {
    128
}
fn d_channel_mult() -> Vec<usize> {
    vec![1, 2, 2, 2]
}
fn d_channel_mult_emb() -> usize {
    4
}
fn d_num_blocks() -> usize {
    4
}
fn d_attn_resolutions() -> Vec<usize> {
    vec![16]
}
fn d_dropout() -> f64 {
    0.10
}
fn d_embedding_type() -> EmbeddingType {
    EmbeddingType::Positional
}
fn d_one() -> usize {
    1
}
fn d_encoder_type() -> EncoderType {
    EncoderType::Standard
}
fn d_decoder_type() -> DecoderType {
    DecoderType::Standard
}
fn d_resample_filter() -> Vec<f64> {
    vec![1.0, 1.0]
}

/// Options of EDM's `SongUNet`; field names and defaults follow EDM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SongUNetConfig {
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
    /// Timestep embedding type.
    #[serde(default = "d_embedding_type")]
    pub embedding_type: EmbeddingType,
    /// Timestep embedding size multiplier: 1 for DDPM++, 2 for NCSN++.
    #[serde(default = "d_one")]
    pub channel_mult_noise: usize,
    /// Encoder architecture.
    #[serde(default = "d_encoder_type")]
    pub encoder_type: EncoderType,
    /// Decoder architecture.
    #[serde(default = "d_decoder_type")]
    pub decoder_type: DecoderType,
    /// Resampling filter: `[1,1]` for DDPM++, `[1,3,3,1]` for NCSN++.
    #[serde(default = "d_resample_filter")]
    pub resample_filter: Vec<f64>,
}

impl SongUNetConfig {
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
            embedding_type: d_embedding_type(),
            channel_mult_noise: 1,
            encoder_type: d_encoder_type(),
            decoder_type: d_decoder_type(),
            resample_filter: d_resample_filter(),
        }
    }

    /// EDM's `--arch=ddpmpp` for CIFAR-10 (32x32x3, unconditional, `--augment`
    /// on so `augment_dim = 9`, dropout 0.13).
    pub fn ddpmpp_cifar10() -> Self {
        Self {
            augment_dim: 9,
            model_channels: 128,
            channel_mult: vec![2, 2, 2],
            dropout: 0.13,
            embedding_type: EmbeddingType::Positional,
            channel_mult_noise: 1,
            encoder_type: EncoderType::Standard,
            decoder_type: DecoderType::Standard,
            resample_filter: vec![1.0, 1.0],
            ..Self::new(32, 3, 3)
        }
    }

    /// EDM's `--arch=ncsnpp` for CIFAR-10 (32x32x3, unconditional, `augment_dim = 9`,
    /// dropout 0.13).
    pub fn ncsnpp_cifar10() -> Self {
        Self {
            embedding_type: EmbeddingType::Fourier,
            channel_mult_noise: 2,
            encoder_type: EncoderType::Residual,
            decoder_type: DecoderType::Standard,
            resample_filter: vec![1.0, 3.0, 3.0, 1.0],
            ..Self::ddpmpp_cifar10()
        }
    }

    /// Channels of the noise embedding (`model_channels * channel_mult_noise`).
    pub fn noise_channels(&self) -> usize {
        self.model_channels * self.channel_mult_noise
    }

    /// Channels of the conditioning embedding (`model_channels * channel_mult_emb`).
    pub fn emb_channels(&self) -> usize {
        self.model_channels * self.channel_mult_emb
    }

    /// Checks that the options describe a buildable network.
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
        if self.model_channels < 4 || self.channel_mult.contains(&0) {
            return err("model_channels must be >= 4 and channel_mult entries positive".into());
        }
        if self.channel_mult_emb == 0 || self.channel_mult_noise == 0 {
            return err("channel_mult_emb and channel_mult_noise must be positive".into());
        }
        let nc = self.noise_channels();
        if !nc.is_multiple_of(2) || (self.embedding_type == EmbeddingType::Positional && nc < 4) {
            return err(format!(
                "noise_channels {nc} must be even (and >= 4 for positional)"
            ));
        }
        let f = &self.resample_filter;
        if f.is_empty() || !f.len().is_multiple_of(2) {
            return err("resample_filter must have a positive even length".into());
        }
        if f.iter().sum::<f64>() == 0.0 {
            return err("resample_filter sums to zero".into());
        }
        if !(0.0..1.0).contains(&self.dropout) || !(0.0..1.0).contains(&self.label_dropout) {
            return err("dropout and label_dropout must lie in [0, 1)".into());
        }
        Ok(())
    }
}
