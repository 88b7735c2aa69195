//! Fast kernels for the ops that dominate a diffusion U-Net training step, as candle custom
//! ops with their own backward passes.
//!
//! candle's CPU convolution backward goes through a direct-loop `conv_transpose2d`, and its
//! GroupNorm is ~20 unfused single-threaded element-wise ops. The ops here compute the same
//! functions with GEMM-based kernels (im2col / col2im on the `gemm` crate, and a direct
//! 3×3 convolution on AVX-512 or AVX2 CPUs) and fused,
//! parallel loops; `optim` updates the optimizer state in place. With the `cuda` feature,
//! GroupNorm(+SiLU), dropout and the optimizer updates also have CUDA kernels (NVRTC), and
//! with `cudnn` every convolution pass goes through cuDNN. On any other device, or dtype, the
//! network ops fall back to plain candle ops, so networks can call them unconditionally.

pub mod alloc;
mod attention;
mod conv;
#[cfg(feature = "cudnn")]
mod conv_cudnn;
#[cfg(feature = "cuda")]
pub mod cuda_util;
pub mod device;
mod dropout;
#[cfg(feature = "cuda")]
mod dropout_cuda;
mod elem;
mod group_norm;
#[cfg(feature = "cuda")]
mod group_norm_cuda;
pub mod macs;
pub mod optim;
#[cfg(feature = "cuda")]
mod optim_cuda;
pub mod profile;
mod storage;
pub use storage::{cpu_kernels_apply, kernels_apply};

pub use alloc::keep_freed_memory;
pub use attention::{
    add_scaled, attention, downsample2x_box, softmax_last, upsample2x_nearest,
    upsample2x_nearest_reference,
};
pub use conv::{conv2d, conv2d_reference};
pub use device::{open_device, parse_device_name, DeviceError};
pub use dropout::{dropout, dropout_reference, dropout_uniform};
pub use group_norm::{group_norm, group_norm_reference, group_norm_shifted};
