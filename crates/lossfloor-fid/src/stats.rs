//! Feature statistics, `.npz` I/O and the Fréchet distance.

use std::io::{Read, Write};
use std::path::Path;

use faer::{Accum, Mat, MatRef, Side};

use crate::FidError;

/// Mean and covariance of a feature set.
#[derive(Debug, Clone)]
pub struct Stats {
    pub mu: Vec<f64>,
    pub sigma: Mat<f64>,
}

impl Stats {
    /// Fréchet distance between `self` and `other`.
    pub fn frechet_distance(&self, other: &Stats) -> Result<f64, FidError> {
        frechet_distance(
            &self.mu,
            self.sigma.as_ref(),
            &other.mu,
            other.sigma.as_ref(),
        )
    }
}

/// Relative tolerance of the reference checks: |Σᵢⱼ − Σⱼᵢ| ≤ tol·max|Σ| and
/// λ_min(Σ) ≥ −tol·λ_max(Σ). Rounding a covariance to float32 perturbs each entry by at
/// most 6e-8 relative, which moves an eigenvalue by at most ‖E‖₂ ≤ ‖E‖_F ≤
/// 6e-8·√d·λ_max ≈ 2.7e-6·λ_max at d = 2048; 1e-5 leaves room for that and for the
/// float64 rounding of the covariance itself, and still refuses any genuinely negative
/// direction.
pub const REFERENCE_TOLERANCE: f64 = 1e-5;

impl Stats {
    /// Checks statistics read from `path` before a Fréchet distance is taken against them:
    /// `mu` has `dim` values and `sigma` is `dim`×`dim`, all finite, symmetric and positive
    /// semi-definite within [`REFERENCE_TOLERANCE`]. A covariance with a negative direction
    /// makes the distance meaningless (σ = −1000·I once gave FID −2047678.8).
    pub fn check_reference(&self, path: &Path, dim: usize) -> Result<(), FidError> {
        let bad = |msg: String| FidError::Npz {
            path: path.to_owned(),
            msg,
        };
        if self.mu.len() != dim {
            return Err(bad(format!(
                "mu has {} values, expected {dim} (the Inception pool features)",
                self.mu.len()
            )));
        }
        if self.sigma.nrows() != dim || self.sigma.ncols() != dim {
            return Err(bad(format!(
                "sigma is {}x{}, expected {dim}x{dim}",
                self.sigma.nrows(),
                self.sigma.ncols()
            )));
        }
        if let Some(k) = self.mu.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "mu[{k}] is {}; expected finite values",
                self.mu[k]
            )));
        }
        let mut max_abs = 0.0f64;
        for i in 0..dim {
            for j in 0..dim {
                let v = self.sigma[(i, j)];
                if !v.is_finite() {
                    return Err(bad(format!(
                        "sigma[{i}, {j}] is {v}; expected finite values"
                    )));
                }
                max_abs = max_abs.max(v.abs());
            }
        }
        for i in 0..dim {
            for j in 0..i {
                let (a, b) = (self.sigma[(i, j)], self.sigma[(j, i)]);
                if (a - b).abs() > REFERENCE_TOLERANCE * max_abs {
                    return Err(bad(format!(
                        "sigma is not symmetric: sigma[{i}, {j}] = {a} but sigma[{j}, {i}] = {b}"
                    )));
                }
            }
        }
        let (vals, _) = sym_eigen(self.sigma.as_ref())?;
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(0.0f64, f64::max);
        if lo < -REFERENCE_TOLERANCE * hi || (hi == 0.0 && lo < 0.0) {
            return Err(bad(format!(
                "sigma is not a covariance: its smallest eigenvalue is {lo:.6e} (largest \
                 {hi:.6e}); a covariance is positive semi-definite"
            )));
        }
        Ok(())
    }
}

/// Accumulates features in float64 as EDM's `fid.py` does: `Σf` and `FᵀF`, then
/// `mu = Σf/N` and `sigma = (FᵀF − N·mu·muᵀ)/(N−1)`.
#[derive(Debug, Clone)]
pub struct FeatureStats {
    dim: usize,
    count: u64,
    sum: Vec<f64>,
    gram: Mat<f64>,
}

impl FeatureStats {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            count: 0,
            sum: vec![0.0; dim],
            gram: Mat::zeros(dim, dim),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of feature vectors accumulated so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds feature vectors (e.g. the `[f32; 2048]` rows from [`crate::InceptionV3::features`]).
    pub fn accumulate<R: AsRef<[f32]>>(&mut self, rows: &[R]) -> Result<(), FidError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut f = Mat::<f64>::zeros(rows.len(), self.dim);
        for (i, r) in rows.iter().enumerate() {
            let r = r.as_ref();
            if r.len() != self.dim {
                return Err(FidError::Input(format!(
                    "feature length {} != {}",
                    r.len(),
                    self.dim
                )));
            }
            for (j, &v) in r.iter().enumerate() {
                f[(i, j)] = v as f64;
                self.sum[j] += v as f64;
            }
        }
        faer::linalg::matmul::matmul(
            self.gram.as_mut(),
            Accum::Add,
            f.transpose(),
            f.as_ref(),
            1.0,
            faer::get_global_parallelism(),
        );
        self.count += rows.len() as u64;
        Ok(())
    }

    /// Adds row-major features, `features.len()` a multiple of [`Self::dim`].
    pub fn accumulate_flat(&mut self, features: &[f32]) -> Result<(), FidError> {
        if !features.len().is_multiple_of(self.dim) {
            return Err(FidError::Input(format!(
                "{} values is not a multiple of {}",
                features.len(),
                self.dim
            )));
        }
        let rows: Vec<&[f32]> = features.chunks_exact(self.dim).collect();
        self.accumulate(&rows)
    }

    /// Mean of the features (NaN when nothing was accumulated).
    pub fn mu(&self) -> Vec<f64> {
        let n = self.count as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// Unbiased covariance (N−1); not finite for fewer than two samples, as in numpy.
    pub fn sigma(&self) -> Mat<f64> {
        let n = self.count as f64;
        let mu = self.mu();
        Mat::from_fn(self.dim, self.dim, |i, j| {
            (self.gram[(i, j)] - n * mu[i] * mu[j]) / (n - 1.0)
        })
    }

    pub fn stats(&self) -> Stats {
        Stats {
            mu: self.mu(),
            sigma: self.sigma(),
        }
    }
}

fn sym_eigen(m: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>), FidError> {
    let evd = m
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| FidError::Linalg(format!("eigendecomposition failed: {e:?}")))?;
    let s = evd.S();
    let vals = (0..m.nrows()).map(|i| s[i]).collect();
    Ok((vals, evd.U().to_owned()))
}

/// Symmetric positive-semidefinite square root through an eigendecomposition
/// (negative eigenvalues from rounding are clamped to zero).
pub fn psd_sqrt(m: MatRef<'_, f64>) -> Result<Mat<f64>, FidError> {
    let sym = Mat::from_fn(m.nrows(), m.ncols(), |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let (vals, u) = sym_eigen(sym.as_ref())?;
    let scaled = Mat::from_fn(u.nrows(), u.ncols(), |i, j| {
        u[(i, j)] * vals[j].max(0.0).sqrt()
    });
    Ok(&scaled * u.transpose())
}

/// Fréchet distance ‖μ₁−μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^½), all in float64.
///
/// Σ₁Σ₂ is similar to the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ = AᵀA with
/// A = Σ₂^½ Σ₁^½, so tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(AᵀA) = Σᵢ sᵢ(A), the sum of the singular
/// values of A. Σ₁^½ and Σ₂^½ come from symmetric eigendecompositions (tiny negative
/// eigenvalues clamped to zero); no complex matrix square root is needed. Taking the
/// singular values of A rather than square roots of the eigenvalues of AᵀA keeps
/// rank-deficient covariances (fewer samples than dimensions) accurate, since the
/// rounding noise of a zero eigenvalue is not amplified by a square root.
pub fn frechet_distance(
    mu1: &[f64],
    sigma1: MatRef<'_, f64>,
    mu2: &[f64],
    sigma2: MatRef<'_, f64>,
) -> Result<f64, FidError> {
    let d = mu1.len();
    if mu2.len() != d
        || sigma1.nrows() != d
        || sigma1.ncols() != d
        || sigma2.nrows() != d
        || sigma2.ncols() != d
    {
        return Err(FidError::Input(format!(
            "shape mismatch: mu {} / {}, sigma {}x{} / {}x{}",
            d,
            mu2.len(),
            sigma1.nrows(),
            sigma1.ncols(),
            sigma2.nrows(),
            sigma2.ncols()
        )));
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |m: MatRef<'_, f64>| (0..d).map(|i| m[(i, i)]).sum::<f64>();
    let a = psd_sqrt(sigma2)? * psd_sqrt(sigma1)?;
    let singular = a
        .singular_values()
        .map_err(|e| FidError::Linalg(format!("SVD failed: {e:?}")))?;
    let tr_covmean: f64 = singular.iter().sum();
    Ok(mean_term + trace(sigma1) + trace(sigma2) - 2.0 * tr_covmean)
}

fn write_npy(
    w: &mut impl Write,
    data: impl IntoIterator<Item = f64>,
    shape: &[u64],
) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(w)
        .begin_nd()?;
    writer.extend(data)?;
    writer.finish()
}

/// Writes `mu` (shape `[d]`) and `sigma` (`[d, d]`) as float64 arrays into an
/// uncompressed `.npz` (what `np.savez` produces). Atomic: the archive is written to a
/// temporary file beside `path`, fsynced and renamed, so `path` is never half-written.
pub fn save_stats_npz(
    path: impl AsRef<Path>,
    mu: &[f64],
    sigma: MatRef<'_, f64>,
) -> Result<(), FidError> {
    let path = path.as_ref();
    let d = mu.len();
    if sigma.nrows() != d || sigma.ncols() != d {
        return Err(FidError::Input("sigma must be d x d".into()));
    }
    lossfloor_core::fs::write_atomic_with(
        path,
        |w| {
            let io = |e: std::io::Error| FidError::io(path, e);
            let zerr = |e: zip::result::ZipError| FidError::Npz {
                path: path.to_owned(),
                msg: e.to_string(),
            };
            let mut zip = zip::ZipWriter::new(w);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .large_file(d * d * 8 > u32::MAX as usize / 2);
            zip.start_file("mu.npy", opts).map_err(zerr)?;
            write_npy(&mut zip, mu.iter().copied(), &[d as u64]).map_err(io)?;
            zip.start_file("sigma.npy", opts).map_err(zerr)?;
            write_npy(
                &mut zip,
                (0..d).flat_map(|i| (0..d).map(move |j| sigma[(i, j)])),
                &[d as u64, d as u64],
            )
            .map_err(io)?;
            zip.finish().map_err(zerr)?;
            Ok(())
        },
        FidError::io,
    )
}

fn read_npy_f64(bytes: &[u8]) -> std::io::Result<(Vec<u64>, Vec<f64>, bool)> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    // The preamble and header are checked before npyz sees them: a declared header length
    // of gigabytes, or deeply nested brackets that npyz's parser takes minutes over.
    let head = lossfloor_data::limits::read_npy_head(&mut &bytes[..], bytes.len() as u64)
        .map_err(invalid)?;
    let npy = npyz::NpyFile::new(bytes)?;
    // The shape must fit in the bytes after the header (4 bytes per value at the least), so
    // a few bytes cannot declare an array that later code (a d×d matrix) allocates.
    let present = (bytes.len() - head.len()) as u64;
    let declared = npy
        .shape()
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(4));
    if declared.is_none_or(|b| b > present) {
        return Err(invalid(format!(
            "shape {:?} declares more data than the {present} bytes present",
            npy.shape()
        )));
    }
    let shape = npy.shape().to_vec();
    let fortran = npy.order() == npyz::Order::Fortran;
    let data = match npy.try_data::<f64>() {
        Ok(r) => r.collect::<Result<Vec<_>, _>>()?,
        Err(npy) => match npy.try_data::<f32>() {
            Ok(r) => r.map(|v| v.map(f64::from)).collect::<Result<Vec<_>, _>>()?,
            Err(npy) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("dtype {} is not float64 or float32", npy.dtype().descr()),
                ))
            }
        },
    };
    Ok((shape, data, fortran))
}

/// Reads `mu` and `sigma` from an `.npz` (stored or deflated members; float64 or float32).
pub fn load_stats_npz(path: impl AsRef<Path>) -> Result<Stats, FidError> {
    let path = path.as_ref();
    let npz_err = |msg: String| FidError::Npz {
        path: path.to_owned(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| FidError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| npz_err(format!("not a zip file: {e}")))?;
    let mut read = |key: &str| -> Result<(Vec<u64>, Vec<f64>, bool), FidError> {
        let name = [format!("{key}.npy"), key.to_owned()]
            .into_iter()
            .find(|n| zip.index_for_name(n).is_some())
            .ok_or_else(|| FidError::NpzMissingKey {
                path: path.to_owned(),
                key: key.to_owned(),
            })?;
        let mut bytes = Vec::new();
        zip.by_name(&name)
            .map_err(|e| npz_err(e.to_string()))?
            .read_to_end(&mut bytes)
            .map_err(|e| npz_err(format!("{name}: {e}")))?;
        read_npy_f64(&bytes).map_err(|e| npz_err(format!("{name}: {e}")))
    };
    let (mu_shape, mu, _) = read("mu")?;
    let (s_shape, s, fortran) = read("sigma")?;
    let d = mu.len();
    if mu_shape.len() != 1 || s_shape != [d as u64, d as u64] {
        return Err(npz_err(format!(
            "expected mu [d] and sigma [d, d], got {mu_shape:?} and {s_shape:?}"
        )));
    }
    let sigma = Mat::from_fn(
        d,
        d,
        |i, j| if fortran { s[j * d + i] } else { s[i * d + j] },
    );
    Ok(Stats { mu, sigma })
}

#[cfg(test)]
mod hostile_tests {
    use std::io::Write;

    use super::*;

    fn npz_with_mu(dir: &Path, mu_npy: &[u8]) -> std::path::PathBuf {
        let path = dir.join("stats.npz");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        z.start_file("mu.npy", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(mu_npy).unwrap();
        z.finish().unwrap();
        path
    }

    /// Found by `lossfloor-fuzz fid-stats`: nested `{` in a header hung npyz's parser.
    #[test]
    fn deeply_nested_header_is_refused_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let mut header =
            "{'descr': '<f8', 'fortran_order': False, 'shape': {{{{{{{{{{{{{{(3,), }".to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        npy.extend_from_slice(&[0; 24]);
        let path = npz_with_mu(dir.path(), &npy);
        let t = std::time::Instant::now();
        let e = load_stats_npz(&path).unwrap_err().to_string();
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        assert!(e.contains("mu.npy") && e.contains("nests brackets"), "{e}");
    }

    #[test]
    fn header_length_beyond_the_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = npz_with_mu(dir.path(), b"\x93NUMPY\x02\x00\xff\xff\xff\x7f");
        let e = load_stats_npz(&path).unwrap_err().to_string();
        assert!(e.contains("header declares 2147483647 bytes"), "{e}");
    }
}
