//! GroupNorm(+SiLU) on CUDA: the same fused forward and backward as the CPU kernels (see
//! `group_norm.rs` for the equations), as two CUDA kernels compiled at first use with NVRTC.
//!
//! Why: composed of candle ops, GroupNorm+SiLU is ~12 kernels and keeps ~6 full-size
//! intermediates alive for the backward pass; fused it is one kernel each way and keeps only
//! its input. One thread block per (image, group); statistics in f64 like the CPU kernels;
//! dγ, dβ are reduced per image into a scratch buffer and summed over images in a fixed
//! order, so results do not depend on scheduling.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{CudaStorage, Layout, Result, Shape};

use crate::cuda_util::{grid, launch};

const THREADS: u32 = 256;

const SOURCE: &str = r#"
#define THREADS 256

__device__ double block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    double r = shared[0];
    __syncthreads();
    return r;
}

// Mean and 1/sqrt(var + eps) of the m values at xg (two passes, f64).
__device__ void group_stats(const float* xg, long m, float eps, double* shared,
                            double* mean, double* rstd) {
    double a = 0.0;
    for (long i = threadIdx.x; i < m; i += THREADS) a += (double)xg[i];
    double mu = block_sum(a, shared) / (double)m;
    double b = 0.0;
    for (long i = threadIdx.x; i < m; i += THREADS) { double d = (double)xg[i] - mu; b += d * d; }
    double var = block_sum(b, shared) / (double)m;
    *mean = mu;
    *rstd = 1.0 / sqrt(var + (double)eps);
}

extern "C" __global__ void gn_forward(const float* x, const float* gamma, const float* beta,
                                      float* y, int C, int HW, int G, float eps, int silu) {
    __shared__ double shared[THREADS];
    int n = blockIdx.x / G, g = blockIdx.x % G, cg = C / G;
    long off = ((long)n * C + (long)g * cg) * HW, m = (long)cg * HW;
    double mean, rstd;
    group_stats(x + off, m, eps, shared, &mean, &rstd);
    for (long i = threadIdx.x; i < m; i += THREADS) {
        int cc = g * cg + (int)(i / HW);
        float scale = (float)(gamma[cc] * rstd);
        float shift = (float)(beta[cc] - mean * gamma[cc] * rstd);
        float z = x[off + i] * scale + shift;
        y[off + i] = silu ? z / (1.0f + expf(-z)) : z;
    }
}

// dx into out[0 .. N*C*HW]; per-image (dgamma | dbeta) into partial[n * 2C ...].
extern "C" __global__ void gn_backward(const float* x, const float* dy, const float* params,
                                       float* out, double* partial,
                                       int C, int HW, int G, float eps, int silu) {
    __shared__ double shared[THREADS];
    int n = blockIdx.x / G, g = blockIdx.x % G, cg = C / G;
    long off = ((long)n * C + (long)g * cg) * HW, m = (long)cg * HW;
    const float* gamma = params;
    const float* beta = params + C;
    double mean, rstd;
    group_stats(x + off, m, eps, shared, &mean, &rstd);
    double sum_d = 0.0, sum_dx = 0.0;
    for (int ch = 0; ch < cg; ch++) {
        int cc = g * cg + ch;
        double gm = gamma[cc], bt = beta[cc], dg = 0.0, db = 0.0;
        for (long j = threadIdx.x; j < HW; j += THREADS) {
            long i = off + (long)ch * HW + j;
            double xhat = ((double)x[i] - mean) * rstd;
            double dz = dy[i];
            if (silu) {
                double z = gm * xhat + bt, s = 1.0 / (1.0 + exp(-z));
                dz *= s * (1.0 + z * (1.0 - s));
            }
            db += dz;
            dg += dz * xhat;
            double d = dz * gm;
            sum_d += d;
            sum_dx += d * xhat;
        }
        dg = block_sum(dg, shared);
        db = block_sum(db, shared);
        if (threadIdx.x == 0) {
            partial[(long)n * 2 * C + cc] = dg;
            partial[(long)n * 2 * C + C + cc] = db;
        }
    }
    double mean_d = block_sum(sum_d, shared) / (double)m;
    double mean_dx = block_sum(sum_dx, shared) / (double)m;
    for (long i = threadIdx.x; i < m; i += THREADS) {
        int cc = g * cg + (int)(i / HW);
        double gm = gamma[cc], bt = beta[cc];
        double xhat = ((double)x[off + i] - mean) * rstd;
        double dz = dy[off + i];
        if (silu) {
            double z = gm * xhat + bt, s = 1.0 / (1.0 + exp(-z));
            dz *= s * (1.0 + z * (1.0 - s));
        }
        out[off + i] = (float)(rstd * (dz * gm - mean_d - xhat * mean_dx));
    }
}

// out[base + j] = sum over images n of partial[n * cols + j], in image order.
extern "C" __global__ void sum_images(const double* partial, float* out, long base, int N, int cols) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double s = 0.0;
    for (int n = 0; n < N; n++) s += partial[(long)n * cols + j];
    out[base + j] = (float)s;
}
"#;

const MODULE: &str = "lossfloor_group_norm";

fn ptx() -> Result<&'static str> {
    static PTX: std::sync::OnceLock<std::result::Result<String, String>> =
        std::sync::OnceLock::new();
    crate::cuda_util::ptx(&PTX, SOURCE, "group_norm")
}

fn slice<'a>(
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    if !l.is_contiguous() {
        candle_core::bail!("group_norm (cuda): inputs must be contiguous");
    }
    Ok(s.as_cuda_slice::<f32>()?.slice(l.start_offset()..))
}

fn dims3(l: &Layout, groups: usize) -> Result<(usize, i32, i32, i32)> {
    let d = l.dims();
    let (n, c) = (d[0], d[1]);
    let hw: usize = d[2..].iter().product();
    let as_i32 = |v: usize| {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg("group_norm: size over 2^31".into()))
    };
    Ok((n, as_i32(c)?, as_i32(hw)?, as_i32(groups)?))
}

/// Forward: y = GN(x; γ, β) (then SiLU), same shape as x.
pub fn forward(
    x: (&CudaStorage, &Layout),
    gamma: (&CudaStorage, &Layout),
    beta: (&CudaStorage, &Layout),
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.0.device.clone();
    let (n, c, hw, g) = dims3(x.1, groups)?;
    let mut y = dev.alloc_zeros::<f32>(x.1.shape().elem_count())?;
    let func = dev.get_or_load_custom_func("gn_forward", MODULE, ptx()?)?;
    let (xv, gv, bv) = (
        slice(x.0, x.1)?,
        slice(gamma.0, gamma.1)?,
        slice(beta.0, beta.1)?,
    );
    let (eps, silu) = (eps as f32, silu as i32);
    let mut b = func.builder();
    b.arg(&xv).arg(&gv).arg(&bv).arg(&mut y);
    b.arg(&c).arg(&hw).arg(&g).arg(&eps).arg(&silu);
    launch(b, grid(n * groups, THREADS), "gn_forward")?;
    Ok((CudaStorage::wrap_cuda_slice(y, dev), x.1.shape().clone()))
}

/// Backward: [dx | dγ | dβ] as one flat f32 vector (the CPU op's layout).
pub fn backward(
    x: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
    params: (&CudaStorage, &Layout),
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.0.device.clone();
    let (n, c, hw, g) = dims3(x.1, groups)?;
    let n_x = x.1.shape().elem_count();
    let cols = 2 * c as usize;
    let mut out = dev.alloc_zeros::<f32>(n_x + cols)?;
    let mut partial = dev.alloc_zeros::<f64>(n * cols)?;
    let (xv, dv, pv) = (
        slice(x.0, x.1)?,
        slice(dy.0, dy.1)?,
        slice(params.0, params.1)?,
    );
    let (eps, silu) = (eps as f32, silu as i32);
    let func = dev.get_or_load_custom_func("gn_backward", MODULE, ptx()?)?;
    let mut b = func.builder();
    b.arg(&xv).arg(&dv).arg(&pv).arg(&mut out).arg(&mut partial);
    b.arg(&c).arg(&hw).arg(&g).arg(&eps).arg(&silu);
    launch(b, grid(n * groups, THREADS), "gn_backward")?;
    let sum = dev.get_or_load_custom_func("sum_images", MODULE, ptx()?)?;
    let (base, n_i, cols_i) = (n_x as i64, n as i32, cols as i32);
    let mut b = sum.builder();
    b.arg(&partial)
        .arg(&mut out)
        .arg(&base)
        .arg(&n_i)
        .arg(&cols_i);
    launch(b, grid(cols.div_ceil(256), 256), "sum_images")?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from(n_x + cols),
    ))
}
