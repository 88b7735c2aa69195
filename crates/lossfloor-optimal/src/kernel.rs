//! The fused posterior kernel: for a tile of queries x̂_q = x_src(q) + σ̂ ε_q and every σ̂ of the
//! curve, streams over the data in chunks and keeps, per query and σ̂, an online softmax
//! (running max, running Σp, running Σp‖x‖², running Σp·x). Memory is O(T·D·K) for a tile of
//! T queries and K noise levels, whatever the number of data rows N.
//!
//! Per chunk of rows X_c it does one GEMM [X_src; E]·X_cᵀ, shared by all σ̂ (the queries of
//! different σ̂ use the same source and the same unit noise ε: common random numbers, so
//! ⟨x̂, x_n⟩ = ⟨x_src, x_n⟩ + σ̂⟨ε, x_n⟩ needs no GEMM per σ̂), then per σ̂ the softmax update
//! and the weighted sum P·X_c — a dense GEMM, or a sparse update when almost all weights are
//! exactly 0 (small σ̂, where the posterior sits on the source).

use crate::matmul::{matmul, View};
use crate::softmax::{row_update, RowInputs};
use crate::source::RowSource;

/// The queries of one tile, all in the same (centred) coordinates as the data.
pub struct QueryTile<'a> {
    /// Source rows x_src(q), T×D row-major.
    pub src: &'a [f32],
    /// Unit-variance noise ε_q, T×D row-major.
    pub noise: &'a [f32],
    /// Row index of each query's own source in the data, where its logit is penalised.
    pub own_row: &'a [Option<usize>],
}

/// How the query's own source enters the softmax.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SourceTerm {
    /// Like every other row (exact estimator, DOL).
    Plain,
    /// Its logit lowered by ln C: its kernel weight divided by C (cDOL, Eq. 11).
    DividedBy(f64),
    /// Left out (SNIS on the others).
    Excluded,
}

impl SourceTerm {
    fn logit_penalty(self) -> Option<f32> {
        match self {
            SourceTerm::Plain => None,
            SourceTerm::DividedBy(c) => Some(c.ln() as f32),
            SourceTerm::Excluded => Some(f32::INFINITY),
        }
    }
}

/// Per query and σ̂, the two posterior moments the estimators need.
#[derive(Debug, Clone, Default)]
pub struct TileMoments {
    /// ‖μ‖², μ = Σ_n π_n x_n, indexed `[k * T + q]` for σ̂ number k and query q.
    pub mean_sq_norm: Vec<f64>,
    /// Σ_n π_n ‖x_n‖², same indexing.
    pub second_moment: Vec<f64>,
}

/// Rows per data chunk: a chunk of f32 rows, the T×chunk dot-product block and the weights
/// stay within a core's L2 for CIFAR-sized rows.
pub const CHUNK_ROWS: usize = 512;

/// Splits `total` queries into consecutive tiles `(start, len)` of at most `size`.
pub fn tiles(total: usize, size: usize) -> Vec<(usize, usize)> {
    (0..total)
        .step_by(size)
        .map(|s| (s, size.min(total - s)))
        .collect()
}

/// Runs the kernel for one tile over all rows of `data` (centred by `center` if given).
pub fn posterior_moments(
    tile: &QueryTile,
    data: &dyn RowSource,
    center: Option<&[f32]>,
    sigmas: &[f64],
    source: SourceTerm,
) -> TileMoments {
    let d = data.row_dim();
    let t = tile.own_row.len();
    let k_count = sigmas.len();
    assert_eq!(tile.src.len(), t * d);
    assert_eq!(tile.noise.len(), t * d);

    // Stacked left operand [X_src; E], 2T×D.
    let mut lhs = Vec::with_capacity(2 * t * d);
    lhs.extend_from_slice(tile.src);
    lhs.extend_from_slice(tile.noise);

    let mut run_max = vec![f32::NEG_INFINITY; k_count * t];
    let mut run_sum = vec![0f64; k_count * t];
    let mut run_sq = vec![0f64; k_count * t];
    let mut acc = vec![0f32; k_count * t * d];

    let mut scratch = Vec::new();
    let mut centred = Vec::new();
    let mut dots = Vec::new();
    let mut weights = Vec::new();
    let mut half_sq = Vec::new();
    let mut sq = Vec::new();
    let mut nonzero = vec![0usize; t];
    let penalty = source.logit_penalty();
    let n_rows = data.num_rows();

    for start in (0..n_rows).step_by(CHUNK_ROWS) {
        let count = CHUNK_ROWS.min(n_rows - start);
        let chunk: &[f32] = match center {
            Some(mean) => {
                crate::source::centered_rows(data, mean, start, count, &mut scratch, &mut centred);
                &centred
            }
            None => data.rows(start, count, &mut scratch),
        };
        sq.clear();
        sq.extend(
            chunk
                .chunks_exact(d)
                .map(|row| row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32),
        );
        half_sq.clear();
        half_sq.extend(sq.iter().map(|&v| 0.5 * v));

        dots.resize(2 * t * count, 0.0);
        matmul(
            View::row_major(&lhs, 2 * t, d),
            View::row_major(chunk, count, d).t(),
            &mut dots,
            false,
        );
        let (dot_src, dot_noise) = dots.split_at(t * count);
        weights.resize(t * count, 0.0);

        for (k, &sigma) in sigmas.iter().enumerate() {
            let mut total_nonzero = 0usize;
            for q in 0..t {
                let idx = k * t + q;
                let own = tile.own_row[q]
                    .filter(|&r| r >= start && r < start + count)
                    .map(|r| r - start);
                let inputs = RowInputs {
                    dot_src: &dot_src[q * count..(q + 1) * count],
                    dot_noise: &dot_noise[q * count..(q + 1) * count],
                    half_sq: &half_sq,
                    sq: &sq,
                    sigma: sigma as f32,
                    penalty: own.zip(penalty),
                };
                let p = &mut weights[q * count..(q + 1) * count];
                let old_max = run_max[idx];
                let u = row_update(&inputs, old_max, p);
                if u.new_max > old_max && old_max > f32::NEG_INFINITY {
                    // Rescale the running sums to the new maximum: exp(m − m') ≤ 1.
                    let scale = crate::softmax::exp_floored(old_max - u.new_max);
                    run_sum[idx] *= scale as f64;
                    run_sq[idx] *= scale as f64;
                    acc[idx * d..(idx + 1) * d]
                        .iter_mut()
                        .for_each(|v| *v *= scale);
                }
                run_max[idx] = u.new_max;
                run_sum[idx] += u.sum_p;
                run_sq[idx] += u.sum_p_sq;
                nonzero[q] = u.nonzero;
                total_nonzero += u.nonzero;
            }
            let acc_k = &mut acc[k * t * d..(k + 1) * t * d];
            if total_nonzero == 0 {
                continue;
            }
            // A sparse update costs ~2·nnz·D flops at memory speed, the dense GEMM 2·T·count·D
            // at peak: the sparse path wins below about one non-zero in 16.
            if total_nonzero * 16 < t * count {
                for q in 0..t {
                    if nonzero[q] == 0 {
                        continue;
                    }
                    let out = &mut acc_k[q * d..(q + 1) * d];
                    for (n, &w) in weights[q * count..(q + 1) * count].iter().enumerate() {
                        if w > 0.0 {
                            for (o, &x) in out.iter_mut().zip(&chunk[n * d..(n + 1) * d]) {
                                *o += w * x;
                            }
                        }
                    }
                }
            } else {
                matmul(
                    View::row_major(&weights, t, count),
                    View::row_major(chunk, count, d),
                    acc_k,
                    true,
                );
            }
        }
    }

    let mut out = TileMoments {
        mean_sq_norm: vec![0.0; k_count * t],
        second_moment: vec![0.0; k_count * t],
    };
    for idx in 0..k_count * t {
        let s = run_sum[idx];
        if s > 0.0 {
            let mu_sq: f64 = acc[idx * d..(idx + 1) * d]
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum();
            out.mean_sq_norm[idx] = mu_sq / (s * s);
            out.second_moment[idx] = run_sq[idx] / s;
        }
    }
    out
}
