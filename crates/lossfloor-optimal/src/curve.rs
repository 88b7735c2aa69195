//! The optimal-loss curve J*(σ̂): its file format, interpolation, σ*, unit conversions and
//! the total J* of a training recipe.

use std::path::Path;

use lossfloor_core::fs::write_atomic;
use serde::{Deserialize, Serialize};

/// Which dataset a curve was computed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The data spec string (e.g. `fashion-mnist`, `cifar10:/data/cifar`).
    pub spec: String,
    /// Rows N.
    pub n: usize,
    /// Values per row D.
    pub dim: usize,
    /// Whether the rows include x-flipped copies (`--xflip`; then N counts both).
    #[serde(default)]
    pub xflip: bool,
    /// The first `limit` images of the spec only (`--limit`), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Whether this is the class-conditional floor E_c J*(σ̂ | c) (`--conditional`); files
    /// without the field are unconditional.
    #[serde(default)]
    pub conditional: bool,
}

impl DatasetInfo {
    /// The spec and (x-flip, limit) of this record. Curve files written before these
    /// fields existed carried them in the spec string as ` +xflip` and ` (first N)`
    /// suffixes; those are read back here.
    pub fn normalized(&self) -> (String, bool, Option<usize>) {
        let mut spec = self.spec.trim().to_string();
        let mut limit = self.limit;
        if let Some(open) = spec.rfind(" (first ") {
            if let Some(n) = spec[open + 8..]
                .strip_suffix(')')
                .and_then(|n| n.parse::<usize>().ok())
            {
                limit = limit.or(Some(n));
                spec.truncate(open);
            }
        }
        let mut xflip = self.xflip;
        if let Some(base) = spec.strip_suffix(" +xflip") {
            xflip = true;
            spec = base.to_string();
        }
        (spec, xflip, limit)
    }
}

/// One point of the curve: the per-dimension x0-MSE floor at σ̂.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub sigma: f64,
    /// J*(σ̂): minimum achievable E‖D(x̂;σ̂) − x0‖² / D.
    pub loss: f64,
    /// Monte-Carlo standard error of `loss` (0 for the closed form).
    pub stderr: f64,
    /// Queries M behind this point (0 for the closed form).
    pub queries: usize,
}

/// A curve file (`curve.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub dataset: DatasetInfo,
    pub method: String,
    /// Parameters that produced the curve (queries, subset, c, seed, …).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Per-dimension data variance, the level J* saturates at (when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_variance: Option<f64>,
    /// Points in increasing σ̂.
    pub points: Vec<CurvePoint>,
}

/// Errors reading a curve file.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    #[error("{path}: cannot read the curve file: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a lossfloor curve file (expected JSON with dataset, method, params, points): {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

impl Curve {
    /// Reads and checks a curve file: at least one point, σ̂ > 0 strictly increasing, finite losses.
    pub fn load(path: &Path) -> Result<Curve, CurveError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CurveError::Io {
            path: p.clone(),
            source,
        })?;
        let curve: Curve = serde_json::from_str(&text).map_err(|source| CurveError::Parse {
            path: p.clone(),
            source,
        })?;
        curve
            .check()
            .map_err(|what| CurveError::Invalid { path: p, what })?;
        Ok(curve)
    }

    fn check(&self) -> Result<(), String> {
        if self.points.is_empty() {
            return Err("the curve has no points".into());
        }
        for (i, pt) in self.points.iter().enumerate() {
            if !(pt.sigma.is_finite() && pt.sigma > 0.0) {
                return Err(format!(
                    "points[{i}].sigma = {} is not a finite σ > 0",
                    pt.sigma
                ));
            }
            if !pt.loss.is_finite() {
                return Err(format!("points[{i}].loss = {} is not finite", pt.loss));
            }
            if i > 0 && pt.sigma <= self.points[i - 1].sigma {
                return Err(format!(
                    "points[{i}].sigma = {} does not increase (previous {})",
                    pt.sigma,
                    self.points[i - 1].sigma
                ));
            }
        }
        Ok(())
    }

    /// J*(σ̂) at any σ̂ > 0: linear in ln σ̂ between points; below the grid J(σ̂₀)·(σ̂/σ̂₀)²
    /// (the small-σ̂ law J* ∝ σ̂², and J* ≤ σ̂² always holds since x̂ itself has error σ̂²);
    /// above the grid the last value (J* saturates at the data variance).
    pub fn loss_at(&self, sigma: f64) -> f64 {
        let pts = &self.points;
        let first = &pts[0];
        let last = &pts[pts.len() - 1];
        if sigma <= first.sigma {
            return first.loss.max(0.0) * (sigma / first.sigma).powi(2);
        }
        if sigma >= last.sigma {
            return last.loss;
        }
        let i = pts.partition_point(|p| p.sigma <= sigma);
        let (a, b) = (&pts[i - 1], &pts[i]);
        let u = (sigma.ln() - a.sigma.ln()) / (b.sigma.ln() - a.sigma.ln());
        a.loss + u * (b.loss - a.loss)
    }

    /// The critical noise level σ*: the largest grid σ̂ with J*(σ̂) ≤ δ·J*_max, where J*_max is
    /// the data variance if known, else the curve's largest value. `None` if even the first
    /// point exceeds it.
    pub fn sigma_star(&self, delta: f64) -> Option<f64> {
        let top = self
            .data_variance
            .unwrap_or_else(|| self.points.iter().map(|p| p.loss).fold(f64::MIN, f64::max));
        self.points
            .iter()
            .take_while(|p| p.loss <= delta * top)
            .last()
            .map(|p| p.sigma)
    }

    /// The curve in another loss unit: each point's loss and stderr multiplied by `ratio(σ̂)`
    /// (e.g. `lossfloor_core::x0_loss_ratio` of a prediction target).
    pub fn converted(&self, ratio: impl Fn(f64) -> f64) -> Vec<CurvePoint> {
        self.points
            .iter()
            .map(|p| {
                let r = ratio(p.sigma);
                CurvePoint {
                    sigma: p.sigma,
                    loss: p.loss * r,
                    stderr: p.stderr * r,
                    queries: p.queries,
                }
            })
            .collect()
    }

    /// Writes the curve as pretty JSON to `path` atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, text.as_bytes())
    }

    /// CSV text `sigma,loss,stderr,queries`.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("sigma,loss,stderr,queries\n");
        for p in &self.points {
            out.push_str(&format!(
                "{},{},{},{}\n",
                p.sigma, p.loss, p.stderr, p.queries
            ));
        }
        out
    }
}
