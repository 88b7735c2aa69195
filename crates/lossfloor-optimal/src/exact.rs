//! The full-dataset estimator (the paper's Eqs. 7 and 9).

use lossfloor_comm::{contiguous_share, gather_in_rank_order, Communicator, SingleProcess};
use rayon::prelude::*;

use crate::draws::{fill_normal, rng_for, Stream};
use crate::error::EstimateError;
use crate::kernel::{posterior_moments, QueryTile, SourceTerm};
use crate::source::RowSource;
use crate::stats::{block_mean_stderr, MeanStderr};
use rand::Rng;

/// Queries per tile: each tile is one unit of parallel work; 128 queries make the shared
/// distance GEMM 256 rows tall, which the GEMM kernels run at full speed.
pub const QUERY_TILE: usize = 128;

/// Draws query m: a uniform source index n_m and unit noise ε_m (the query is x̂_m = x0⁽ⁿᵐ⁾ + σ̂ε_m).
pub fn exact_query(seed: u64, m: usize, n: usize, noise: &mut [f32]) -> usize {
    let mut rng = rng_for(seed, Stream::ExactQuery, m as u64, 0);
    let source = rng.random_range(0..n);
    fill_normal(&mut rng, noise);
    source
}

/// Sources (centred by `mean`) and unit noises of queries `start..start + t`, T×D row-major
/// each: the queries of both the CPU and the device estimator.
pub(crate) fn draw_queries(
    data: &dyn RowSource,
    mean: &[f32],
    seed: u64,
    start: usize,
    t: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (n, d) = (data.num_rows(), data.row_dim());
    let mut src = vec![0f32; t * d];
    let mut noise = vec![0f32; t * d];
    src.par_chunks_mut(d)
        .zip(noise.par_chunks_mut(d))
        .enumerate()
        .for_each_init(Vec::new, |scratch, (q, (s, e))| {
            let source = exact_query(seed, start + q, n, e);
            let row = data.rows(source, 1, scratch);
            for ((o, &v), &c) in s.iter_mut().zip(row).zip(mean) {
                *o = v - c;
            }
        });
    (src, noise)
}

/// Full-dataset estimate of J*(σ̂) per dimension for each σ̂ (Eq. 9, Rao–Blackwellised):
///
///   J*(σ̂) = E_x̂ tr Cov[x0 | x̂] ≈ (1/M) Σ_m ( Σ_n π_mn ‖x_n‖² − ‖Σ_n π_mn x_n‖² ) / D,
///   π_mn = softmax_n(−‖x̂_m − x0⁽ⁿ⁾‖² / (2σ̂²)),  x̂_m = x0⁽ⁿᵐ⁾ + σ̂ ε_m,  n_m ~ U{1..N}.
///
/// Each term is the exact posterior variance given x̂_m. Its expectation equals the paper's
/// Â − B̂ (Theorem 1), with less variance and never below 0. The posterior runs over all N rows.
pub fn estimate_exact(
    data: &dyn RowSource,
    sigmas: &[f64],
    queries: usize,
    seed: u64,
    progress: &(dyn Fn(usize) + Sync),
) -> Vec<MeanStderr> {
    estimate_exact_ranks(&SingleProcess, data, sigmas, queries, seed, progress)
        .expect("one process gathers nothing")
}

/// [`estimate_exact`] with the query tiles shared between the ranks of `comm`: each rank
/// computes a contiguous run of tiles (every rank holds the whole dataset, since every
/// query's posterior runs over all N rows), and the per-query terms are gathered in tile
/// order. A tile's terms do not depend on which rank computes it, so the result is bit for
/// bit one process's.
pub fn estimate_exact_ranks(
    comm: &dyn Communicator,
    data: &dyn RowSource,
    sigmas: &[f64],
    queries: usize,
    seed: u64,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<MeanStderr>, EstimateError> {
    let d = data.row_dim();
    let mean = crate::source::row_mean_f32(data);
    let tiles = crate::kernel::tiles(queries, QUERY_TILE);
    let mine = contiguous_share(tiles.len(), comm.rank(), comm.size());
    let local: Vec<Vec<f64>> = tiles[mine]
        .par_iter()
        .map(|&(start, t)| {
            let (src, noise) = draw_queries(data, &mean, seed, start, t);
            let own = vec![None; t];
            let tile = QueryTile {
                src: &src,
                noise: &noise,
                own_row: &own,
            };
            let moments = posterior_moments(&tile, data, Some(&mean), sigmas, SourceTerm::Plain);
            progress(t);
            moments
                .second_moment
                .iter()
                .zip(&moments.mean_sq_norm)
                .map(|(s, m)| (s - m) / d as f64)
                .collect()
        })
        .collect();
    let per_tile = gather_in_rank_order(comm, &local, tiles.len(), |i| sigmas.len() * tiles[i].1)
        .map_err(|e| EstimateError::Ranks(e.to_string()))?;
    Ok(block_mean_stderr(&per_tile, sigmas.len()))
}
