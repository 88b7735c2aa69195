//! The dropout op of `dropout.rs` on CUDA: the same counter-based mask (SplitMix64 of the key
//! and the element index, compared with p in f32), computed by one NVRTC-compiled kernel.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{CudaStorage, Layout, Result, Shape};

use crate::cuda_util::{grid, launch};

const SOURCE: &str = r#"
extern "C" __global__ void dropout_f32(const float* x, float* y, unsigned long long key,
                                       float p, float scale, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        unsigned long long z = key + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        y[i] = x[i] * (u >= p ? scale : 0.0f);
    }
}
"#;

const MODULE: &str = "lossfloor_dropout";
const THREADS: u32 = 256;
/// Enough blocks to fill any current GPU; larger tensors loop inside the kernel.
const MAX_BLOCKS: usize = 1 << 16;

fn ptx() -> Result<&'static str> {
    static PTX: std::sync::OnceLock<std::result::Result<String, String>> =
        std::sync::OnceLock::new();
    crate::cuda_util::ptx(&PTX, SOURCE, "dropout")
}

/// y = x · (u ≥ p ? scale : 0) elementwise (f32, contiguous x).
pub fn forward(
    s: &CudaStorage,
    l: &Layout,
    key: u64,
    p: f32,
    scale: f32,
) -> Result<(CudaStorage, Shape)> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("dropout (cuda): input must be contiguous");
    };
    let dev = s.device.clone();
    let x = s.as_cuda_slice::<f32>()?.slice(a..b);
    let n = b - a;
    // SAFETY: the grid-stride loop writes every element.
    let mut y = unsafe { dev.alloc::<f32>(n) }?;
    let func = dev.get_or_load_custom_func("dropout_f32", MODULE, ptx()?)?;
    let n_i = n as i64;
    let mut args = func.builder();
    args.arg(&x)
        .arg(&mut y)
        .arg(&key)
        .arg(&p)
        .arg(&scale)
        .arg(&n_i);
    launch(
        args,
        grid(n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS), THREADS),
        "dropout_f32",
    )?;
    Ok((CudaStorage::wrap_cuda_slice(y, dev), l.shape().clone()))
}
