//! Subset estimators: DOL (Eq. 10), cDOL (Eq. 11) and SNIS.
//!
//! All three use the batched form: draw a batch of distinct rows, noise each member to make a
//! query, and run every query's posterior over the whole batch. Each query's subset is then its
//! own source plus the batch's other members, uniform without replacement — exactly the
//! subset of Eq. 10. The estimators differ only in how the query's own source is weighted.

use lossfloor_comm::{contiguous_share, gather_in_rank_order, Communicator, SingleProcess};
use rayon::prelude::*;

use crate::draws::{fill_normal, rng_for, Stream};
use crate::error::EstimateError;
use crate::kernel::{posterior_moments, QueryTile, SourceTerm};
use crate::source::{DenseRows, RowSource};
use crate::stats::{block_mean_stderr, MeanStderr};

/// Queries per parallel tile inside one batch.
const QUERY_TILE: usize = 128;

/// Which subset estimator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SubsetRule {
    /// DOL: the source is one of the L subset members with its plain kernel weight.
    Dol,
    /// cDOL: the source's kernel weight divided by C (its logit lowered by ln C).
    Cdol { c: f64 },
    /// SNIS: the subset is L rows other than the source.
    Snis,
}

impl SubsetRule {
    /// Rows drawn per batch for a subset size `l`: DOL and cDOL use the source plus L−1 others;
    /// SNIS uses L others, so each SNIS batch has L+1 members (and `snis` with L−1 draws exactly
    /// the batches of `cdol` with L).
    pub fn batch_rows(self, l: usize) -> usize {
        match self {
            SubsetRule::Snis => l + 1,
            _ => l,
        }
    }

    fn source_term(self) -> SourceTerm {
        match self {
            SubsetRule::Dol => SourceTerm::Plain,
            SubsetRule::Cdol { c } if c.is_infinite() => SourceTerm::Excluded,
            SubsetRule::Cdol { c } => SourceTerm::DividedBy(c),
            SubsetRule::Snis => SourceTerm::Excluded,
        }
    }
}

/// Subset estimate of J*(σ̂) per dimension (Eqs. 7, 10, 11):
///
///   Ĵ*(σ̂) = (1/M) Σ_m ( ‖x0⁽ⁿᵐ⁾‖² − ‖μ_m‖² ) / D,   μ_m = Σ_{n∈S_m} softmax_n(ℓ_mn) x0⁽ⁿ⁾,
///   ℓ_mn = −‖x̂_m − x0⁽ⁿ⁾‖²/(2σ̂²), and for the source n = n_m: ℓ −= ln C (cDOL), −∞ (SNIS).
///
/// The first term is the paired estimate of Â = E‖x0‖² over the same sources (same
/// expectation as the dataset mean, far less Monte-Carlo noise below σ*).
pub fn estimate_subset(
    data: &dyn RowSource,
    sigmas: &[f64],
    queries: usize,
    subset: usize,
    rule: SubsetRule,
    seed: u64,
    progress: &(dyn Fn(usize) + Sync),
) -> Vec<MeanStderr> {
    estimate_subset_ranks(
        &SingleProcess,
        data,
        sigmas,
        queries,
        subset,
        rule,
        seed,
        progress,
    )
    .expect("one process gathers nothing")
}

/// [`estimate_subset`] with the batches shared between the ranks of `comm` (contiguous runs
/// of batches; each batch's rows and noises come from its own streams) and the per-query
/// terms gathered in batch order: bit for bit one process's result.
#[allow(clippy::too_many_arguments)]
pub fn estimate_subset_ranks(
    comm: &dyn Communicator,
    data: &dyn RowSource,
    sigmas: &[f64],
    queries: usize,
    subset: usize,
    rule: SubsetRule,
    seed: u64,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<MeanStderr>, EstimateError> {
    let (n, d) = (data.num_rows(), data.row_dim());
    let mean = crate::source::row_mean_f32(data);
    let batch_rows = rule.batch_rows(subset);
    let batches = queries.div_ceil(batch_rows);
    let in_batch = |b: usize| batch_rows.min(queries - b * batch_rows);
    let mut local: Vec<Vec<f64>> = Vec::new();
    let mut scratch = Vec::new();
    for b in contiguous_share(batches, comm.rank(), comm.size()) {
        let mut rng = rng_for(seed, Stream::SubsetBatch, b as u64, 0);
        let members = rand::seq::index::sample(&mut rng, n, batch_rows).into_vec();
        let mut rows = Vec::with_capacity(batch_rows * d);
        for &i in &members {
            let row = data.rows(i, 1, &mut scratch);
            rows.extend(row.iter().zip(&mean).map(|(&v, &c)| v - c));
        }
        let batch = DenseRows::new(rows, d);
        let tiles = crate::kernel::tiles(in_batch(b), QUERY_TILE);
        let per_tile: Vec<Vec<f64>> = tiles
            .par_iter()
            .map(|&(start, t)| {
                let src = &batch.values()[start * d..(start + t) * d];
                let mut noise = vec![0f32; t * d];
                for q in 0..t {
                    let mut rng = rng_for(seed, Stream::SubsetNoise, b as u64, (start + q) as u64);
                    fill_normal(&mut rng, &mut noise[q * d..(q + 1) * d]);
                }
                let own: Vec<Option<usize>> = (start..start + t).map(Some).collect();
                let tile = QueryTile {
                    src,
                    noise: &noise,
                    own_row: &own,
                };
                let moments = posterior_moments(&tile, &batch, None, sigmas, rule.source_term());
                progress(t);
                let src_sq: Vec<f64> = src
                    .chunks_exact(d)
                    .map(|r| r.iter().map(|&v| v as f64 * v as f64).sum())
                    .collect();
                (0..sigmas.len() * t)
                    .map(|idx| (src_sq[idx % t] - moments.mean_sq_norm[idx]) / d as f64)
                    .collect()
            })
            .collect();
        // This batch's terms, σ̂-major: [k][query].
        let mut terms = Vec::with_capacity(sigmas.len() * in_batch(b));
        for k in 0..sigmas.len() {
            for (&(_, t), v) in tiles.iter().zip(&per_tile) {
                terms.extend_from_slice(&v[k * t..(k + 1) * t]);
            }
        }
        local.push(terms);
    }
    let all = gather_in_rank_order(comm, &local, batches, |b| sigmas.len() * in_batch(b))
        .map_err(|e| EstimateError::Ranks(e.to_string()))?;
    Ok(block_mean_stderr(&all, sigmas.len()))
}
