//! Error type of the sampler crate.

use std::path::PathBuf;

/// Errors of configuration, seed parsing, file I/O and tensor operations.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// An invalid [`crate::HeunConfig`] (or one that is empty after clamping to the
    /// denoiser's σ range).
    #[error("invalid sampler config: {0}")]
    Config(String),
    /// A seed list that [`crate::parse_seeds`] cannot read.
    #[error("invalid seed list {input:?}: {reason}")]
    Seeds {
        /// the whole input string
        input: String,
        /// what is wrong with it
        reason: String,
    },
    /// A tensor or array with the wrong shape.
    #[error("{what}: shape {found:?}, expected {expected}")]
    Shape {
        /// which tensor / file
        what: String,
        /// the shape found
        found: Vec<usize>,
        /// the shape expected (in words, e.g. `[N, 3, 32, 32]`)
        expected: String,
    },
    /// A `.npy` file that cannot be used (dtype, layout, contents).
    #[error("{path}: {reason}")]
    Npy {
        /// the file
        path: PathBuf,
        /// what is wrong
        reason: String,
    },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// the underlying error
        #[source]
        source: std::io::Error,
    },
    /// A PNG encoding error on a named file.
    #[error("{path}: {source}")]
    Image {
        /// the file
        path: PathBuf,
        /// the underlying error
        #[source]
        source: image::ImageError,
    },
    /// Any other invalid argument.
    #[error("{0}")]
    Invalid(String),
    /// An error from candle (including errors returned by a [`crate::Denoiser`]).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`SamplerError`].
pub type Result<T> = std::result::Result<T, SamplerError>;
