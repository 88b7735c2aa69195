//! Where the estimators read data rows from.
//!
//! The estimators never hold more than a chunk of the dataset as f32 at once; a
//! [`RowSource`] hands out contiguous rows on request (converting from u8 storage,
//! applying x-flips, …), so memory stays bounded by the chunk size, not by N.

use rayon::prelude::*;

/// A dataset seen as N rows of D float32 values.
pub trait RowSource: Sync {
    /// Number of rows N.
    fn num_rows(&self) -> usize;
    /// Values per row D.
    fn row_dim(&self) -> usize;
    /// Rows `[start, start + count)` as one contiguous row-major slice of `count * D` values.
    /// Implementations may borrow their own storage or fill `scratch` and return it.
    fn rows<'a>(&'a self, start: usize, count: usize, scratch: &'a mut Vec<f32>) -> &'a [f32];
}

/// A loaded dataset (stored compactly, e.g. as u8 images) seen as rows of f32 in
/// [-1, 1], so the estimators run on exactly the data a trainer reads.
impl RowSource for lossfloor_data::Dataset {
    fn num_rows(&self) -> usize {
        self.len()
    }
    fn row_dim(&self) -> usize {
        self.dim()
    }
    fn rows<'a>(&'a self, start: usize, count: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        lossfloor_data::Dataset::rows(self, start, count, scratch)
    }
}

/// Rows held in memory as one dense row-major f32 buffer.
#[derive(Debug, Clone)]
pub struct DenseRows {
    values: Vec<f32>,
    dim: usize,
}

impl DenseRows {
    /// Wraps `values` (length must be a multiple of `dim`, `dim > 0`).
    pub fn new(values: Vec<f32>, dim: usize) -> Self {
        assert!(
            dim > 0 && values.len().is_multiple_of(dim),
            "DenseRows: {} values are not rows of {dim}",
            values.len()
        );
        Self { values, dim }
    }

    /// The whole buffer.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

impl RowSource for DenseRows {
    fn num_rows(&self) -> usize {
        self.values.len() / self.dim
    }
    fn row_dim(&self) -> usize {
        self.dim
    }
    fn rows<'a>(&'a self, start: usize, count: usize, _scratch: &'a mut Vec<f32>) -> &'a [f32] {
        &self.values[start * self.dim..(start + count) * self.dim]
    }
}

/// Per-dimension mean of all rows, accumulated in f64 (one streaming pass, chunks in
/// parallel; the partial sums are added in chunk order, so the result does not depend on
/// the thread count).
pub fn row_mean(source: &dyn RowSource) -> Vec<f64> {
    let (n, d) = (source.num_rows(), source.row_dim());
    let partials: Vec<Vec<f64>> = chunk_starts(n)
        .into_par_iter()
        .map_init(Vec::new, |scratch, start| {
            let count = CHUNK_FOR_STATS.min(n - start);
            let mut sum = vec![0f64; d];
            for row in source.rows(start, count, scratch).chunks_exact(d) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += v as f64;
                }
            }
            sum
        })
        .collect();
    let mut sum = vec![0f64; d];
    for p in &partials {
        sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
    }
    sum.iter_mut().for_each(|s| *s /= n as f64);
    sum
}

fn chunk_starts(n: usize) -> Vec<usize> {
    (0..n).step_by(CHUNK_FOR_STATS).collect()
}

/// [`row_mean`] rounded to f32, the precision the kernels centre with.
pub fn row_mean_f32(source: &dyn RowSource) -> Vec<f32> {
    row_mean(source).iter().map(|&v| v as f32).collect()
}

const CHUNK_FOR_STATS: usize = 1024;

/// Copies rows `[start, start+count)` into `out` with `mean` subtracted.
///
/// Why centre: J*(σ̂) is invariant to translating the data, and centred values make the
/// f32 dot products of the distance GEMM smaller, so their rounding error is smaller.
pub fn centered_rows(
    source: &dyn RowSource,
    mean: &[f32],
    start: usize,
    count: usize,
    scratch: &mut Vec<f32>,
    out: &mut Vec<f32>,
) {
    let d = source.row_dim();
    let rows = source.rows(start, count, scratch);
    out.clear();
    out.reserve(count * d);
    for row in rows.chunks_exact(d) {
        out.extend(row.iter().zip(mean).map(|(&v, &m)| v - m));
    }
}

/// Total per-dimension variance of the rows, (1/(N·D)) Σ_n ‖x_n − x̄‖²: the value J*(σ̂)
/// saturates at as σ̂ → ∞. Two streaming passes, f64.
pub fn per_dim_variance(source: &dyn RowSource) -> f64 {
    let (n, d) = (source.num_rows(), source.row_dim());
    let mean = row_mean(source);
    let partials: Vec<f64> = chunk_starts(n)
        .into_par_iter()
        .map_init(Vec::new, |scratch, start| {
            let count = CHUNK_FOR_STATS.min(n - start);
            source
                .rows(start, count, scratch)
                .chunks_exact(d)
                .map(|row| {
                    row.iter()
                        .zip(&mean)
                        .map(|(&v, &m)| (v as f64 - m).powi(2))
                        .sum::<f64>()
                })
                .sum()
        })
        .collect();
    partials.iter().sum::<f64>() / (n * d) as f64
}
