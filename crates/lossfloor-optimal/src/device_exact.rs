//! The full-dataset estimator on a candle device (a CUDA GPU; it also runs on the CPU, which
//! is how it is tested without a GPU).
//!
//! It computes the same quantity from the same queries as [`crate::estimate_exact`]
//! (Eq. 9, Rao–Blackwellised, queries from [`crate::exact_query`]), so the two agree to
//! float32 rounding for a given seed. The data (centred by its mean, f32) stays resident on
//! the device. Per tile of T queries and chunk of K rows it runs:
//!
//! - one shared GEMM pair per chunk, G_src = X_src·X_cᵀ and G_ε = E·X_cᵀ (common random
//!   numbers: ⟨x̂, x_n⟩ = ⟨x_src, x_n⟩ + σ̂⟨ε, x_n⟩ for every σ̂);
//! - per σ̂, the logits ℓ_qn = (G_src + σ̂ G_ε − ½‖x_n‖²)/σ̂² (the −‖x̂‖²/2σ̂² term is the
//!   same for every n and cancels in the softmax), an online softmax across chunks (running
//!   max m, Σp, Σp‖x_n‖²) and the weighted-sum GEMM Σ_n p_qn x_n. The logits-to-p step is
//!   one op ([`crate::chunk_softmax`]; a CUDA kernel on the GPU) unless
//!   `LOSSFLOOR_CUDA_ESTIMATOR=composed` asks for candle ops.
//!
//! Per query it returns (Σp‖x‖²/Σp − ‖Σp x/Σp‖²)/D, the posterior variance per dimension.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::chunk_softmax::ChunkPieces;
use crate::exact::draw_queries;
use crate::source::RowSource;
use crate::stats::{block_mean_stderr, MeanStderr};

/// Queries per tile on a device: tall enough for the GEMMs to reach the device's peak.
pub const DEVICE_QUERY_TILE: usize = 1024;

/// Logit elements per (T×K) block: bounds the device memory of the per-σ̂ temporaries
/// (about five such blocks live at once: 5 × 4 B × 2²⁶ ≈ 1.3 GB).
const BLOCK_ELEMENTS: usize = 1 << 26;

/// Rows uploaded per host→device copy while the data is staged.
const UPLOAD_ROWS: usize = 8192;

type CandleResult<T> = candle_core::Result<T>;

/// One chunk of K resident rows and their norms, computed once at upload.
struct Chunk {
    /// The centred rows, K×D.
    rows: Tensor,
    /// ‖x_n‖², K×1.
    sq: Tensor,
    /// [½‖x_n‖²; ‖x_n‖²], 2×K (the input of the chunk-softmax op; its first row is the
    /// logits' offset in the composed form).
    norms: Tensor,
}

/// The centred data resident on the device, in chunks of at most `chunk_rows` rows.
struct DeviceData {
    chunks: Vec<Chunk>,
    mean: Vec<f32>,
    dim: usize,
}

impl DeviceData {
    fn upload(data: &dyn RowSource, device: &Device, chunk_rows: usize) -> CandleResult<Self> {
        let (n, d) = (data.num_rows(), data.row_dim());
        // Rows converted to f32 on the host in parallel, centred on the device by the same
        // f32 mean the CPU kernel uses (summed in f64 chunk by chunk, then rounded).
        let staged = (0..n)
            .step_by(UPLOAD_ROWS)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map_init(Vec::new, |scratch, start| {
                let count = UPLOAD_ROWS.min(n - start);
                data.rows(start, count, scratch).to_vec()
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|rows| {
                let r = rows.len() / d;
                Tensor::from_vec(rows, (r, d), device)
            })
            .collect::<CandleResult<Vec<_>>>()?;
        let mut sum = Tensor::zeros((1, d), DType::F64, device)?;
        for chunk in &staged {
            sum = (sum + chunk.to_dtype(DType::F64)?.sum_keepdim(0)?)?;
        }
        let mean_t = sum.affine(1.0 / n as f64, 0.0)?.to_dtype(DType::F32)?;
        let centred = staged
            .into_iter()
            .map(|c| c.broadcast_sub(&mean_t))
            .collect::<CandleResult<Vec<_>>>()?;
        let all = Tensor::cat(&centred, 0)?;
        drop(centred);
        let mean: Vec<f32> = mean_t.flatten_all()?.to_vec1()?;
        let mut chunks = Vec::new();
        for start in (0..n).step_by(chunk_rows) {
            let rows = all
                .narrow(0, start, chunk_rows.min(n - start))?
                .contiguous()?;
            // ‖x_n‖² summed in f64, as the CPU kernel does.
            let sq = rows
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_keepdim(1)?
                .to_dtype(DType::F32)?;
            let norms = Tensor::cat(&[&sq.t()?.affine(0.5, 0.0)?, &sq.t()?], 0)?;
            chunks.push(Chunk { rows, sq, norms });
        }
        Ok(Self {
            chunks,
            mean,
            dim: d,
        })
    }
}

/// The running online-softmax state of one σ̂ for a tile.
struct Running {
    max: Tensor,
    sum: Tensor,
    second: Tensor,
    weighted: Tensor,
}

/// Full-dataset estimate of J*(σ̂) per dimension for each σ̂ on `device` (Eq. 9; see the
/// module comment). Same queries, same result up to float32 rounding as
/// [`crate::estimate_exact`].
pub fn estimate_exact_on_device(
    data: &dyn RowSource,
    sigmas: &[f64],
    queries: usize,
    seed: u64,
    device: &Device,
    progress: &(dyn Fn(usize) + Sync),
) -> CandleResult<Vec<MeanStderr>> {
    estimate_exact_on_device_ranks(
        &lossfloor_comm::SingleProcess,
        data,
        sigmas,
        queries,
        seed,
        device,
        progress,
    )
}

/// [`estimate_exact_on_device`] with the query tiles shared between the ranks of `comm`
/// (each rank on its own GPU), gathered in tile order: one process's result bit for bit on
/// the same kind of device.
pub fn estimate_exact_on_device_ranks(
    comm: &dyn lossfloor_comm::Communicator,
    data: &dyn RowSource,
    sigmas: &[f64],
    queries: usize,
    seed: u64,
    device: &Device,
    progress: &(dyn Fn(usize) + Sync),
) -> CandleResult<Vec<MeanStderr>> {
    let tile = DEVICE_QUERY_TILE.min(queries.max(1));
    let chunk_rows = (BLOCK_ELEMENTS / tile).max(1024);
    // The op has a CUDA kernel only in builds with this crate's `cuda` feature.
    let fused =
        crate::chunk_softmax::fused_enabled() && (device.is_cpu() || cfg!(feature = "cuda"));
    estimate_exact_on_device_tiled(
        comm, data, sigmas, queries, seed, device, tile, chunk_rows, fused, progress,
    )
}

/// [`estimate_exact_on_device`] with explicit tile and chunk sizes (tests use small ones so
/// that the online rescaling across chunks runs on small data), and the choice between the
/// fused chunk-softmax op and its composed form.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn estimate_exact_on_device_tiled(
    comm: &dyn lossfloor_comm::Communicator,
    data: &dyn RowSource,
    sigmas: &[f64],
    queries: usize,
    seed: u64,
    device: &Device,
    tile: usize,
    chunk_rows: usize,
    fused: bool,
    progress: &(dyn Fn(usize) + Sync),
) -> CandleResult<Vec<MeanStderr>> {
    let (n, d) = (data.num_rows(), data.row_dim());
    let tile = tile.max(1);
    let chunk_rows = chunk_rows.clamp(1, n.max(1));
    let resident = DeviceData::upload(data, device, chunk_rows)?;
    let starts: Vec<usize> = (0..queries).step_by(tile).collect();
    let len = |i: usize| tile.min(queries - starts[i]);
    let mut local = Vec::new();
    for i in lossfloor_comm::contiguous_share(starts.len(), comm.rank(), comm.size()) {
        let (start, t) = (starts[i], len(i));
        let (src, noise) = draw_queries(data, &resident.mean, seed, start, t);
        let src = Tensor::from_vec(src, (t, d), device)?;
        let noise = Tensor::from_vec(noise, (t, d), device)?;
        let per_sigma = tile_variances(&resident, &src, &noise, sigmas, fused)?;
        local.push(per_sigma.concat());
        progress(t);
    }
    let all =
        lossfloor_comm::gather_in_rank_order(comm, &local, starts.len(), |i| sigmas.len() * len(i))
            .map_err(|e| {
                candle_core::Error::Msg(format!("sharing the tiles between ranks: {e}"))
            })?;
    Ok(block_mean_stderr(&all, sigmas.len()))
}

/// Posterior variance per dimension of each query of the tile, per σ̂: `[k][q]`. With
/// `fused`, each chunk's softmax step is one op ([`crate::chunk_softmax`]); otherwise it is
/// composed of candle ops (same values up to float32 rounding).
fn tile_variances(
    data: &DeviceData,
    src: &Tensor,
    noise: &Tensor,
    sigmas: &[f64],
    fused: bool,
) -> CandleResult<Vec<Vec<f64>>> {
    let t = src.dim(0)?;
    let lhs = Tensor::cat(&[src, noise], 0)?;
    let mut running: Vec<Option<Running>> = (0..sigmas.len()).map(|_| None).collect();
    for chunk in &data.chunks {
        // [G_src; G_ε] = [X_src; E]·X_cᵀ, shared by every σ̂.
        let dots = lhs.matmul(&chunk.rows.t()?)?;
        for (k, &sigma) in sigmas.iter().enumerate() {
            let old = running[k].take();
            let old_max = old.as_ref().map(|r| &r.max);
            let pieces = if fused {
                crate::chunk_softmax::chunk_softmax(&dots, &chunk.norms, old_max, sigma)?
            } else {
                composed_pieces(&dots, t, chunk, sigma, old_max)?
            };
            running[k] = Some(fold_chunk(old, pieces, &chunk.rows)?);
        }
    }
    running
        .into_iter()
        .map(|r| posterior_variance(&r.expect("at least one chunk"), data.dim))
        .collect()
}

/// [`crate::chunk_softmax::chunk_softmax`] composed of candle ops: the logits
/// ℓ = (G_src + σ̂G_ε − ½‖x‖²)/σ̂², the new running maximum, p = exp(ℓ − max), Σp, Σp‖x‖².
fn composed_pieces(
    dots: &Tensor,
    t: usize,
    chunk: &Chunk,
    sigma: f64,
    old_max: Option<&Tensor>,
) -> CandleResult<ChunkPieces> {
    let g_src = dots.narrow(0, 0, t)?;
    let g_noise = dots.narrow(0, t, t)?;
    let half_sq_row = chunk.norms.narrow(0, 0, 1)?;
    let logits = (&g_src + g_noise.affine(sigma, 0.0)?)?
        .broadcast_sub(&half_sq_row)?
        .affine(1.0 / (sigma * sigma), 0.0)?;
    let chunk_max = logits.max_keepdim(1)?;
    let max = match old_max {
        Some(m) => m.maximum(&chunk_max)?,
        None => chunk_max,
    };
    let p = logits.broadcast_sub(&max)?.exp()?;
    Ok(ChunkPieces {
        sum: p.sum_keepdim(1)?,
        second: p.matmul(&chunk.sq)?,
        p,
        max,
    })
}

/// Folds one chunk's softmax pieces into the running sums (rescaling the old sums to the new
/// running maximum, so no exponential overflows); the weighted sum Σp x is a GEMM.
fn fold_chunk(old: Option<Running>, c: ChunkPieces, rows: &Tensor) -> CandleResult<Running> {
    let weighted = c.p.matmul(rows)?;
    Ok(match old {
        None => Running {
            max: c.max,
            sum: c.sum,
            second: c.second,
            weighted,
        },
        Some(r) => {
            let scale = (r.max - &c.max)?.exp()?;
            Running {
                sum: ((r.sum * &scale)? + c.sum)?,
                second: ((r.second * &scale)? + c.second)?,
                weighted: (r.weighted.broadcast_mul(&scale)? + weighted)?,
                max: c.max,
            }
        }
    })
}

/// (Σp‖x‖²/Σp − ‖Σp x‖²/(Σp)²)/D per query, the difference taken in f64 on the host.
fn posterior_variance(r: &Running, dim: usize) -> CandleResult<Vec<f64>> {
    let mu_sq: Vec<f64> = r.weighted.to_dtype(DType::F64)?.sqr()?.sum(1)?.to_vec1()?;
    let sum: Vec<f32> = r.sum.flatten_all()?.to_vec1()?;
    let second: Vec<f32> = r.second.flatten_all()?.to_vec1()?;
    Ok(sum
        .iter()
        .zip(&second)
        .zip(&mu_sq)
        .map(|((&s, &s2), &m2)| {
            let s = s as f64;
            if s > 0.0 {
                (s2 as f64 / s - m2 / (s * s)) / dim as f64
            } else {
                0.0
            }
        })
        .collect())
}
