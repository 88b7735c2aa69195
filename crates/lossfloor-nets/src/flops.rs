//! Compute per image of each network: forward multiply-adds counted from the architecture,
//! and the training-compute convention built on them.
//!
//! **What is counted:** every multiply-add of convolutions (k×k and 1×1, including the FIR
//! resampling filters of NCSN++), linear layers (the embedding MLPs, the per-block affine
//! layers, DiT's projections) and attention's two matmuls (logits and weighted values).
//! **Not counted:** normalisation, activations, softmax, additions, dropout, and the box
//! filter of DDPM++/ADM resampling (an average pool or nearest upsampling). One
//! multiply-add is one "FLOP" in the convention of the DiT paper (its 118.6 GFLOPs for
//! DiT-XL/2 are multiply-adds); training compute is 3 × forward × images (forward plus a
//! backward pass of about twice its cost, Kaplan et al.'s convention), in multiply-adds.

use crate::checkpoint::NetworkSpec;
use crate::{DhariwalUNet, SongUNet};
use candle_core::Device;
use candle_nn::VarMap;

/// Forward multiply-adds of one image through `spec`. The UNets are walked layer by layer
/// (built on the CPU once, without data; a built network answers
/// [`crate::Network::forward_macs`] directly); DiT has a closed form.
pub fn forward_macs(spec: &NetworkSpec) -> crate::Result<u64> {
    let dev = Device::Cpu;
    Ok(match spec {
        NetworkSpec::SongUNet(c) => SongUNet::new(c, &VarMap::new(), &dev, 0)?.forward_macs(),
        NetworkSpec::Dhariwal(c) => DhariwalUNet::new(c, &VarMap::new(), &dev, 0)?.forward_macs(),
        NetworkSpec::DiT(c) => c.forward_macs(),
    })
}

/// Training compute of `images` images: 3 × forward multiply-adds × images.
pub fn training_macs(forward_per_image: u64, images: u64) -> f64 {
    3.0 * forward_per_image as f64 * images as f64
}
