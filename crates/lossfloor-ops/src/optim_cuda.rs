//! The optimizer kernels of `optim.rs` on CUDA (f32): the same formulas, one NVRTC-compiled
//! kernel each, so a training step's optimizer work is five launches per weight tensor
//! instead of ~25 candle ops with a fresh allocation each.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{CudaStorage, Layout, Result, Shape};

use crate::cuda_util::{grid, launch};

const SOURCE: &str = r#"
#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

__device__ float sanitize(float g) {
    if (g != g) return 0.0f;
    if (isinf(g)) return g > 0.0f ? 1e5f : -1e5f;
    return g;
}

extern "C" __global__ void nan_to_num_f32(const float* g, float* out, long long n) {
    GRID_STRIDE(i, n) { out[i] = sanitize(g[i]); }
}

// partial[blockIdx.x] = sum over this block's grid-stride elements of g², in f64.
extern "C" __global__ void sum_squares_f32(const float* g, double* partial, long long n) {
    __shared__ double s[256];
    double a = 0.0;
    GRID_STRIDE(i, n) { double x = (double)g[i]; a += x * x; }
    s[threadIdx.x] = a;
    __syncthreads();
    for (int k = 128; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// m ← b·m + c·g (or g² with square).
extern "C" __global__ void adam_moment_f32(float* m, const float* g, float b, float c,
                                           int square, long long n) {
    GRID_STRIDE(i, n) {
        float x = square ? g[i] * g[i] : g[i];
        m[i] = b * m[i] + c * x;
    }
}

// θ ← d·θ − a·m / (√v·k + e).
extern "C" __global__ void adam_weights_f32(float* t, const float* m, const float* v,
                                            float d, float a, float k, float e, long long n) {
    GRID_STRIDE(i, n) { t[i] = d * t[i] - a * m[i] / (sqrtf(v[i]) * k + e); }
}

// e ← (e − θ)·b + θ.
extern "C" __global__ void lerp_f32(float* e, const float* t, float b, long long n) {
    GRID_STRIDE(i, n) { e[i] = (e[i] - t[i]) * b + t[i]; }
}
"#;

const MODULE: &str = "lossfloor_optim";
const THREADS: u32 = 256;
/// Blocks of the sum-of-squares reduction: a fixed number, so the per-block partial sums
/// (added on the host in block order) do not depend on anything but the input.
pub const SUM_BLOCKS: usize = 1024;
const MAX_BLOCKS: usize = 1 << 16;

fn ptx() -> Result<&'static str> {
    static PTX: std::sync::OnceLock<std::result::Result<String, String>> =
        std::sync::OnceLock::new();
    crate::cuda_util::ptx(&PTX, SOURCE, "optimizer kernels")
}

fn range(l: &Layout, what: &str) -> Result<(usize, usize)> {
    l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("{what} (cuda): tensors must be contiguous"))
    })
}

fn blocks(n: usize) -> usize {
    n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS)
}

/// A read-only f32 operand of `n` elements.
fn operand<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    n: usize,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    let (a, b) = range(l, what)?;
    if b - a != n {
        candle_core::bail!("{what} (cuda): operands of {n} and {} elements", b - a);
    }
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// ĝ = nan_to_num(g).
pub fn nan_to_num(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device.clone();
    let (a, b) = range(l, "nan_to_num")?;
    let g = s.as_cuda_slice::<f32>()?.slice(a..b);
    let n = b - a;
    // SAFETY: the grid-stride loop writes every element.
    let mut out = unsafe { dev.alloc::<f32>(n) }?;
    let func = dev.get_or_load_custom_func("nan_to_num_f32", MODULE, ptx()?)?;
    let n_i = n as i64;
    let mut args = func.builder();
    args.arg(&g).arg(&mut out).arg(&n_i);
    launch(args, grid(blocks(n), THREADS), "nan_to_num_f32")?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), l.shape().clone()))
}

/// The [`SUM_BLOCKS`] partial sums of g² (f64), to be added in order.
pub fn sum_squares(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device.clone();
    let (a, b) = range(l, "sum_squares")?;
    let g = s.as_cuda_slice::<f32>()?.slice(a..b);
    // SAFETY: exactly SUM_BLOCKS blocks are launched, and block b writes partial[b].
    let mut partial = unsafe { dev.alloc::<f64>(SUM_BLOCKS) }?;
    let func = dev.get_or_load_custom_func("sum_squares_f32", MODULE, ptx()?)?;
    let n_i = (b - a) as i64;
    let mut args = func.builder();
    args.arg(&g).arg(&mut partial).arg(&n_i);
    launch(args, grid(SUM_BLOCKS, THREADS), "sum_squares_f32")?;
    Ok((
        CudaStorage::wrap_cuda_slice(partial, dev),
        Shape::from(SUM_BLOCKS),
    ))
}

/// m ← β·m + (1 − β)·g (or g²), in place.
pub fn moment(
    m: (&mut CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    beta: f64,
    square: bool,
) -> Result<()> {
    let dev = m.0.device.clone();
    let (a, b) = range(m.1, "adam moment")?;
    let n = b - a;
    let gv = operand(g.0, g.1, n, "adam moment")?;
    let mut mv = m.0.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
    let func = dev.get_or_load_custom_func("adam_moment_f32", MODULE, ptx()?)?;
    let (bb, c, sq, n_i) = (beta as f32, (1.0 - beta) as f32, square as i32, n as i64);
    let mut args = func.builder();
    args.arg(&mut mv)
        .arg(&gv)
        .arg(&bb)
        .arg(&c)
        .arg(&sq)
        .arg(&n_i);
    launch(args, grid(blocks(n), THREADS), "adam_moment_f32")
}

/// θ ← d·θ − α·m / (√v·k + ε), in place.
pub fn weights(
    t: (&mut CudaStorage, &Layout),
    m: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
    [d, alpha, k, eps]: [f64; 4],
) -> Result<()> {
    let dev = t.0.device.clone();
    let (a, b) = range(t.1, "adam weights")?;
    let n = b - a;
    let mv = operand(m.0, m.1, n, "adam weights")?;
    let vv = operand(v.0, v.1, n, "adam weights")?;
    let mut tv = t.0.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
    let func = dev.get_or_load_custom_func("adam_weights_f32", MODULE, ptx()?)?;
    let (d, alpha, k, eps, n_i) = (d as f32, alpha as f32, k as f32, eps as f32, n as i64);
    let mut args = func.builder();
    args.arg(&mut tv).arg(&mv).arg(&vv);
    args.arg(&d).arg(&alpha).arg(&k).arg(&eps).arg(&n_i);
    launch(args, grid(blocks(n), THREADS), "adam_weights_f32")
}

/// e ← (e − θ)·β + θ, in place.
pub fn lerp(e: (&mut CudaStorage, &Layout), t: (&CudaStorage, &Layout), beta: f64) -> Result<()> {
    let dev = e.0.device.clone();
    let (a, b) = range(e.1, "ema")?;
    let n = b - a;
    let tv = operand(t.0, t.1, n, "ema")?;
    let mut ev = e.0.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
    let func = dev.get_or_load_custom_func("lerp_f32", MODULE, ptx()?)?;
    let (bb, n_i) = (beta as f32, n as i64);
    let mut args = func.builder();
    args.arg(&mut ev).arg(&tv).arg(&bb).arg(&n_i);
    launch(args, grid(blocks(n), THREADS), "lerp_f32")
}
