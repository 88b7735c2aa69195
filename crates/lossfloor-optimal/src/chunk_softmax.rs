//! One chunk's step of the device estimator's online softmax, for one σ̂, as a single op:
//!
//!   ℓ_qn   = (G_src[q,n] + σ̂·G_ε[q,n] − ½‖x_n‖²) / σ̂²        (the logits)
//!   m'_q   = max(m_q, maxₙ ℓ_qn)                              (running maximum; m_q absent
//!                                                              on the first chunk)
//!   p_qn   = exp(ℓ_qn − m'_q)
//!   s_q    = Σₙ p_qn,   r_q = Σₙ p_qn‖x_n‖²                   (accumulated in f64)
//!
//! Output: p [T×K] and the per-query (m', s, r) [T×3]. The weighted sum Σₙ p_qn x_n stays a
//! GEMM (`p.matmul(rows)`) in the caller.
//!
//! Why: composed of candle ops this is ~10 kernels, seven of which write a T×K temporary
//! (T = 1024 queries, K = 65,536 rows: 268 MB each) and one more GEMV; here it is one kernel
//! that reads G twice and writes p once. On CUDA it is one NVRTC kernel (one block per
//! query); on the CPU a parallel loop over queries, which is also what the CPU tests of the
//! device path exercise. `LOSSFLOOR_CUDA_ESTIMATOR=composed` selects the composed form at run
//! time instead (to compare the two on a GPU machine).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The op: inputs `dots` [2T×K] = [G_src; G_ε], `norms` [2×K] = [½‖x‖²; ‖x‖²] and the
/// running maximum [T×1] (ignored when `has_old` is false).
#[derive(Debug, Clone, Copy)]
struct ChunkSoftmax {
    sigma: f32,
    inv_s2: f32,
    has_old: bool,
}

/// The softmax pieces of one chunk: p [T×K], and the new running maximum, Σp and Σp‖x‖²
/// (each [T×1]).
pub struct ChunkPieces {
    pub p: Tensor,
    pub max: Tensor,
    pub sum: Tensor,
    pub second: Tensor,
}

/// Whether the fused op is used (always, unless `LOSSFLOOR_CUDA_ESTIMATOR=composed`).
pub fn fused_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LOSSFLOOR_CUDA_ESTIMATOR").map_or(true, |v| v != "composed"))
}

/// Runs the op (see the module comment) on f32 tensors.
pub fn chunk_softmax(
    dots: &Tensor,
    norms: &Tensor,
    old_max: Option<&Tensor>,
    sigma: f64,
) -> Result<ChunkPieces> {
    let (two_t, k) = dots.dims2()?;
    let t = two_t / 2;
    // Any [T×1] tensor stands in for the running maximum on the first chunk.
    let placeholder;
    let old = match old_max {
        Some(m) => m,
        None => {
            placeholder = Tensor::zeros((t, 1), candle_core::DType::F32, dots.device())?;
            &placeholder
        }
    };
    let op = ChunkSoftmax {
        sigma: sigma as f32,
        inv_s2: (1.0 / (sigma * sigma)) as f32,
        has_old: old_max.is_some(),
    };
    let out = dots
        .contiguous()?
        .apply_op3_no_bwd(&norms.contiguous()?, &old.contiguous()?, &op)?;
    let p = out.narrow(0, 0, t * k)?.reshape((t, k))?;
    // A copy (12 bytes a query), not a view: the running statistics outlive this chunk, and
    // a view would keep the whole T×K buffer of p alive with them (about 0.27 GB per σ̂).
    let stats = out.narrow(0, t * k, 3 * t)?.reshape((t, 3))?.copy()?;
    Ok(ChunkPieces {
        p,
        max: stats.narrow(1, 0, 1)?,
        sum: stats.narrow(1, 1, 1)?,
        second: stats.narrow(1, 2, 1)?,
    })
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("chunk softmax: expected contiguous f32 tensors"),
    }
}

/// Shapes of the op's inputs: (T, K).
fn dims(l_dots: &Layout, l_norms: &Layout, l_old: &Layout) -> Result<(usize, usize)> {
    let (two_t, k) = l_dots.shape().dims2()?;
    if two_t % 2 != 0 || l_norms.dims() != [2, k] || l_old.dims() != [two_t / 2, 1] {
        candle_core::bail!(
            "chunk softmax: shapes {:?}, {:?}, {:?} (expected [2T,K], [2,K], [T,1])",
            l_dots.dims(),
            l_norms.dims(),
            l_old.dims()
        );
    }
    Ok((two_t / 2, k))
}

impl CustomOp3 for ChunkSoftmax {
    fn name(&self) -> &'static str {
        "lossfloor-chunk-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (t, k) = dims(l1, l2, l3)?;
        let (dots, norms, old) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (half_sq, sq) = norms.split_at(k);
        let mut out = vec![0f32; t * k + 3 * t];
        let (p, stats) = out.split_at_mut(t * k);
        p.par_chunks_mut(k)
            .zip(stats.par_chunks_mut(3))
            .enumerate()
            .for_each(|(q, (p, st))| {
                let (gs, ge) = (
                    &dots[q * k..(q + 1) * k],
                    &dots[(t + q) * k..(t + q + 1) * k],
                );
                let logit = |n: usize| (gs[n] + self.sigma * ge[n] - half_sq[n]) * self.inv_s2;
                let chunk_max = (0..k).map(logit).fold(f32::NEG_INFINITY, f32::max);
                let m = if self.has_old {
                    old[q].max(chunk_max)
                } else {
                    chunk_max
                };
                let (mut s, mut r) = (0f64, 0f64);
                for (n, pn) in p.iter_mut().enumerate() {
                    let e = (logit(n) - m).exp();
                    *pn = e;
                    s += e as f64;
                    r += e as f64 * sq[n] as f64;
                }
                st.copy_from_slice(&[m, s as f32, r as f32]);
            });
        Ok((CpuStorage::F32(out), Shape::from(t * k + 3 * t)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, (s1, l1), (s2, l2), (s3, l3))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::{CudaStorage, Layout, Result, Shape};
    use lossfloor_ops::cuda_util::{grid, launch, ptx};

    const SOURCE: &str = r#"
#define THREADS 256

extern "C" __global__ void chunk_softmax(const float* dots, const float* norms,
                                         const float* old_max, int has_old, float sigma,
                                         float inv_s2, int t, int k, float* out) {
    __shared__ float smax[THREADS];
    __shared__ double ssum[THREADS], ssec[THREADS];
    int q = blockIdx.x;
    const float* gs = dots + (long long)q * k;
    const float* ge = dots + (long long)(t + q) * k;
    const float* half_sq = norms;
    const float* sq = norms + k;
    float mx = __int_as_float(0xff800000);  // −∞ (NVRTC has no math.h macros)
    for (int n = threadIdx.x; n < k; n += THREADS) {
        float l = (gs[n] + sigma * ge[n] - half_sq[n]) * inv_s2;
        mx = fmaxf(mx, l);
    }
    smax[threadIdx.x] = mx;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) smax[threadIdx.x] = fmaxf(smax[threadIdx.x], smax[threadIdx.x + s]);
        __syncthreads();
    }
    float m = has_old ? fmaxf(old_max[q], smax[0]) : smax[0];
    float* p = out + (long long)q * k;
    double a = 0.0, b = 0.0;
    for (int n = threadIdx.x; n < k; n += THREADS) {
        float l = (gs[n] + sigma * ge[n] - half_sq[n]) * inv_s2;
        float e = expf(l - m);
        p[n] = e;
        a += (double)e;
        b += (double)e * (double)sq[n];
    }
    ssum[threadIdx.x] = a;
    ssec[threadIdx.x] = b;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            ssum[threadIdx.x] += ssum[threadIdx.x + s];
            ssec[threadIdx.x] += ssec[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float* st = out + (long long)t * k + 3LL * q;
        st[0] = m;
        st[1] = (float)ssum[0];
        st[2] = (float)ssec[0];
    }
}
"#;

    const MODULE: &str = "lossfloor_chunk_softmax";

    fn view<'a>(
        s: &'a CudaStorage,
        l: &Layout,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("chunk softmax (cuda): inputs must be contiguous");
        };
        Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
    }

    pub fn forward(
        op: &super::ChunkSoftmax,
        dots: (&CudaStorage, &Layout),
        norms: (&CudaStorage, &Layout),
        old: (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        static PTX: std::sync::OnceLock<std::result::Result<String, String>> =
            std::sync::OnceLock::new();
        let (t, k) = super::dims(dots.1, norms.1, old.1)?;
        let dev = dots.0.device.clone();
        let (dv, nv, ov) = (
            view(dots.0, dots.1)?,
            view(norms.0, norms.1)?,
            view(old.0, old.1)?,
        );
        let len = t * k + 3 * t;
        // SAFETY: the kernel writes every element: one block per query row writes its K
        // values of p and its three statistics.
        let mut out = unsafe { dev.alloc::<f32>(len) }?;
        let func = dev.get_or_load_custom_func(
            "chunk_softmax",
            MODULE,
            ptx(&PTX, SOURCE, "chunk softmax")?,
        )?;
        let (has_old, t_i, k_i) = (op.has_old as i32, t as i32, k as i32);
        let mut args = func.builder();
        args.arg(&dv).arg(&nv).arg(&ov).arg(&has_old);
        args.arg(&op.sigma)
            .arg(&op.inv_s2)
            .arg(&t_i)
            .arg(&k_i)
            .arg(&mut out);
        launch(args, grid(t, 256), "chunk_softmax")?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(len)))
    }
}
