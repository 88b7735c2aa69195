//! The class-conditional floor E_c J*(σ̂ | c).
//!
//! A class-conditional denoiser D(x̂; σ̂, c) is told the class of x0, so its best output is
//! the posterior mean over the images of that class only, and its floor is
//!
//!   J*_cond(σ̂) = Σ_c w_c · J*(σ̂ | c),   w_c = N_c / N,
//!
//! where J*(σ̂ | c) is the floor of the data restricted to class c (any estimator of this
//! crate run on those N_c rows) and w_c the class frequency (with x-flip both copies carry the
//! label, so the weights are unchanged).
//!
//! Queries are stratified by class: class c gets M_c = max(2, ⌈M·N_c/N⌉) queries (so each
//! class's share follows its frequency, as when sources are drawn uniformly over the data,
//! but with no class left without queries), drawn by the class's own estimator run with the
//! seed [`class_seed`]. The combined standard error is √(Σ_c w_c² se_c²) (the classes' query
//! streams are independent). A class of one image has J*(σ̂ | c) = 0 exactly (its posterior is
//! that image) and costs no queries.

use serde::{Deserialize, Serialize};

use crate::curve::{Curve, CurvePoint};
use crate::error::EstimateError;
use crate::method::{EstimateParams, Method};
use crate::source::{DenseRows, RowSource};

/// One class's curve in a `--per-class` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassCurve {
    /// The class label.
    pub label: u32,
    /// Rows N_c of this class.
    pub images: usize,
    /// Its weight w_c = N_c / N in the conditional floor.
    pub weight: f64,
    /// J*(σ̂ | c): the floor of the class's rows alone.
    pub curve: Curve,
}

/// The per-class curves file written by `lossfloor estimate --conditional --per-class FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerClassCurves {
    pub classes: Vec<ClassCurve>,
}

/// The rows of each class, in increasing label order, each list in increasing row order.
/// `labels[i]` is the label of row i.
pub fn class_rows(labels: &[u32]) -> Vec<(u32, Vec<usize>)> {
    let mut map: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, &l) in labels.iter().enumerate() {
        map.entry(l).or_default().push(i);
    }
    map.into_iter().collect()
}

/// Queries of a class with `n_c` of `n` rows for a total budget of `queries`:
/// M_c = max(2, ⌈M·N_c/N⌉), or 0 for a class of one row (its floor is exactly 0).
pub fn class_query_count(queries: usize, n_c: usize, n: usize) -> usize {
    if n_c < 2 {
        return 0;
    }
    ((queries as u128 * n_c as u128).div_ceil(n as u128) as usize).max(2)
}

/// The seed of the `k`-th class (in increasing label order): `seed + k·φ` (φ = 2⁶⁴/golden
/// ratio), so each class has its own query stream and with a single class the queries are
/// exactly those of the unconditional estimate.
pub fn class_seed(seed: u64, k: usize) -> u64 {
    seed.wrapping_add((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The class-frequency mixture of per-class floors at one σ̂:
/// J*_cond = Σ_c w_c J*(σ̂ | c), se = √(Σ_c w_c² se_c²), with (weight, loss, stderr) per class.
pub fn class_weighted_floor(terms: &[(f64, f64, f64)]) -> (f64, f64) {
    let loss = terms.iter().map(|&(w, l, _)| w * l).sum();
    let var: f64 = terms.iter().map(|&(w, _, s)| (w * s).powi(2)).sum();
    (loss, var.sqrt())
}

/// The rows of one class, copied out as dense f32 rows (one class at a time is in memory).
fn gather(data: &dyn RowSource, rows: &[usize]) -> DenseRows {
    let d = data.row_dim();
    let mut values = Vec::with_capacity(rows.len() * d);
    let mut scratch = Vec::new();
    for &i in rows {
        values.extend_from_slice(data.rows(i, 1, &mut scratch));
    }
    DenseRows::new(values, d)
}

/// The estimator parameters of one class: the queries of [`class_query_count`], the class's
/// seed, and a given `--subset` clamped to what the class allows (N_c, or N_c − 1 for SNIS);
/// `--c` as given, else its default for the class (4·N_c/L_c).
fn class_params(
    params: &EstimateParams,
    k: usize,
    label: u32,
    n_c: usize,
    n: usize,
) -> Result<EstimateParams, EstimateError> {
    let subset = match (params.method.uses_subset(), params.subset) {
        (true, Some(l)) => {
            let max = if params.method == Method::Snis {
                n_c - 1
            } else {
                n_c
            };
            let l = l.min(max);
            if l < 2 {
                return Err(EstimateError::ClassTooSmall {
                    label,
                    n_c,
                    method: params.method,
                });
            }
            Some(l)
        }
        (_, s) => s,
    };
    if params.method == Method::Snis && n_c < 3 {
        return Err(EstimateError::ClassTooSmall {
            label,
            n_c,
            method: params.method,
        });
    }
    Ok(EstimateParams {
        method: params.method,
        queries: class_query_count(params.queries, n_c, n),
        subset,
        c: params.c,
        seed: class_seed(params.seed, k),
    })
}

/// The total number of queries a conditional estimate runs (for progress bars).
pub fn conditional_query_total(labels: &[u32], queries: usize) -> usize {
    class_rows(labels)
        .iter()
        .map(|(_, r)| class_query_count(queries, r.len(), labels.len()))
        .sum()
}

/// Estimates the class-conditional floor Σ_c w_c J*(σ̂ | c) (see the module comment) with the
/// chosen method on `device`; returns the combined curve (`dataset.conditional = true`) and
/// the per-class curves. `labels[i]` is the label of row i of `data`.
pub fn estimate_conditional_on(
    device: &candle_core::Device,
    data: &dyn RowSource,
    labels: &[u32],
    dataset_spec: &str,
    sigmas: &[f64],
    params: &EstimateParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(Curve, Vec<ClassCurve>), EstimateError> {
    estimate_conditional_ranks(
        &lossfloor_comm::SingleProcess,
        device,
        data,
        labels,
        dataset_spec,
        sigmas,
        params,
        progress,
    )
}

/// [`estimate_conditional_on`] with each class's work shared between the ranks of `comm`
/// (see [`crate::estimate_ranks`]): bit for bit one process's curves.
#[allow(clippy::too_many_arguments)]
pub fn estimate_conditional_ranks(
    comm: &dyn lossfloor_comm::Communicator,
    device: &candle_core::Device,
    data: &dyn RowSource,
    labels: &[u32],
    dataset_spec: &str,
    sigmas: &[f64],
    params: &EstimateParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(Curve, Vec<ClassCurve>), EstimateError> {
    crate::check_method_device(params.method, device)?;
    let n = data.num_rows();
    if labels.len() != n {
        return Err(EstimateError::LabelCount {
            labels: labels.len(),
            rows: n,
        });
    }
    params.resolve(n, sigmas)?;
    let mut sorted = sigmas.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    let classes = class_rows(labels);
    let mut per_class = Vec::with_capacity(classes.len());
    for (k, (label, rows)) in classes.iter().enumerate() {
        let n_c = rows.len();
        let weight = n_c as f64 / n as f64;
        let class_spec = format!("{dataset_spec} [class {label}]");
        let curve = if n_c < 2 {
            single_image_curve(&class_spec, data.row_dim(), params.method, &sorted)
        } else {
            let p = class_params(params, k, *label, n_c, n)?;
            let rows = gather(data, rows);
            crate::estimate_ranks(comm, device, &rows, &class_spec, &sorted, &p, progress)?
        };
        per_class.push(ClassCurve {
            label: *label,
            images: n_c,
            weight,
            curve,
        });
    }
    let points = sorted
        .iter()
        .enumerate()
        .map(|(i, &sigma)| {
            let terms: Vec<(f64, f64, f64)> = per_class
                .iter()
                .map(|c| (c.weight, c.curve.points[i].loss, c.curve.points[i].stderr))
                .collect();
            let (loss, stderr) = class_weighted_floor(&terms);
            CurvePoint {
                sigma,
                loss,
                stderr,
                queries: per_class.iter().map(|c| c.curve.points[i].queries).sum(),
            }
        })
        .collect();
    let within_variance = per_class
        .iter()
        .map(|c| c.weight * c.curve.data_variance.unwrap_or(0.0))
        .sum();
    let mut meta = serde_json::Map::new();
    if params.method != Method::Gaussian {
        meta.insert("queries".into(), params.queries.into());
        meta.insert("seed".into(), params.seed.into());
    }
    if let Some(l) = params.subset {
        meta.insert("subset".into(), l.into());
    }
    if let Some(c) = params.c {
        meta.insert("c".into(), serde_json::Value::from(c));
    }
    meta.insert("classes".into(), per_class.len().into());
    meta.insert(
        "class_queries".into(),
        "max(2, ceil(queries·N_c/N)) per class, seed + k·0x9E3779B97F4A7C15 for the k-th label"
            .into(),
    );
    let curve = Curve {
        dataset: crate::curve::DatasetInfo {
            spec: dataset_spec.to_string(),
            n,
            dim: data.row_dim(),
            xflip: false,
            limit: None,
            conditional: true,
        },
        method: params.method.name().to_string(),
        params: meta,
        data_variance: Some(within_variance),
        points,
    };
    Ok((curve, per_class))
}

/// The curve of a class with a single image: J*(σ̂ | c) = 0 at every σ̂, no queries needed.
fn single_image_curve(spec: &str, dim: usize, method: Method, sigmas: &[f64]) -> Curve {
    Curve {
        dataset: crate::curve::DatasetInfo {
            spec: spec.to_string(),
            n: 1,
            dim,
            xflip: false,
            limit: None,
            conditional: false,
        },
        method: method.name().to_string(),
        params: Default::default(),
        data_variance: Some(0.0),
        points: sigmas
            .iter()
            .map(|&sigma| CurvePoint {
                sigma,
                loss: 0.0,
                stderr: 0.0,
                queries: 0,
            })
            .collect(),
    }
}
