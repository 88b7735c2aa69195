//! Network architectures for lossfloor, written on candle.
//!
//! The crate provides [`SongUNet`], the DDPM++ / NCSN++ U-Net of EDM
//! (Karras et al. 2022, `training/networks.py`), with EDM's parameter names
//! (prefixed `model.` as inside EDM's preconditioners), EDM's initialisation
//! and a forward pass built only from candle ops that have a backward pass.

mod adm_config;
pub mod checkpoint;
mod config;
mod dhariwal_unet;
pub mod dit;
mod dropout;
pub mod flops;
mod init;
mod layers;
mod network;
mod song_unet;

pub use adm_config::DhariwalUNetConfig;
pub use config::{DecoderType, EmbeddingType, EncoderType, SongUNetConfig};
pub use dhariwal_unet::DhariwalUNet;
pub use dit::{DiT, DiTConfig};
pub use dropout::DropoutRng;
pub use network::Network;
pub use song_unet::SongUNet;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum NetsError {
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An invalid network configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file that cannot be read or written, or whose content is not what it should be
    /// (the message names the file).
    #[error("{0}")]
    File(String),
    /// A missing or malformed forward input.
    #[error("invalid input: {0}")]
    Input(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, NetsError>;
