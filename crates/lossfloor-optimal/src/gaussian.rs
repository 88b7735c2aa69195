//! The Gaussian closed form: J* of a Gaussian with the data's mean and covariance.

use faer::{linalg::matmul::matmul, Accum, Mat, MatRef, Par, Side};

use crate::source::RowSource;

/// Eigenvalues λ_k of the data covariance Σ = (1/N) Σ_n (x_n − x̄)(x_n − x̄)ᵀ, accumulated in f64.
pub fn covariance_eigenvalues(data: &dyn RowSource) -> Result<Vec<f64>, String> {
    let (n, d) = (data.num_rows(), data.row_dim());
    let mean = crate::source::row_mean(data);
    let mut cov = Mat::<f64>::zeros(d, d);
    let mut scratch = Vec::new();
    const CHUNK: usize = 1024;
    let mut chunk64 = Vec::with_capacity(CHUNK * d);
    for start in (0..n).step_by(CHUNK) {
        let count = CHUNK.min(n - start);
        let rows = data.rows(start, count, &mut scratch);
        chunk64.clear();
        for row in rows.chunks_exact(d) {
            chunk64.extend(row.iter().zip(&mean).map(|(&v, &m)| v as f64 - m));
        }
        let x = MatRef::from_row_major_slice(&chunk64, count, d);
        matmul(
            cov.as_mut(),
            Accum::Add,
            x.transpose(),
            x,
            1.0 / n as f64,
            Par::rayon(0),
        );
    }
    cov.self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| format!("eigendecomposition of the {d}×{d} covariance failed: {e:?}"))
}

/// J*(σ̂) per dimension of N(x̄, Σ) with Σ's eigenvalues λ_k:
///
///   J*(σ̂) = (1/D) Σ_k λ_k σ̂² / (λ_k + σ̂²)
///
/// (the posterior covariance of a Gaussian prior under Gaussian noise is Σ(Σ + σ̂²I)⁻¹σ̂²).
pub fn gaussian_optimal_loss(eigenvalues: &[f64], sigma: f64) -> f64 {
    let s2 = sigma * sigma;
    let d = eigenvalues.len() as f64;
    eigenvalues
        .iter()
        .map(|&l| l.max(0.0))
        .map(|l| l * s2 / (l + s2))
        .sum::<f64>()
        / d
}
