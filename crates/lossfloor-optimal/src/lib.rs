//! Optimal (minimum achievable) diffusion loss of a dataset, per noise level.
//!
//! In VE/x0 coordinates (x̂ = x0 + σ̂ε, see `lossfloor-core`) the best possible denoiser is the
//! posterior mean E[x0 | x̂], and the loss it leaves is (Theorem 1 of arXiv 2506.13763)
//!
//!   J*(σ̂) = E_x̂ tr Cov[x0 | x̂] = A − B(σ̂),  A = E‖x0‖²,  B(σ̂) = E_x̂ ‖E[x0 | x̂]‖².
//!
//! On a dataset the posterior is a softmax over the rows. The estimators here differ in which
//! rows enter that softmax ([`Method`]); all report J* per dimension (mean over dimensions,
//! like EDM's `Loss/loss`) with a Monte-Carlo standard error. See `docs/optimal-loss.md`.

mod chunk_softmax;
mod conditional;
mod curve;
mod device_exact;
mod draws;
mod error;
mod exact;
mod gaussian;
mod kernel;
pub mod matmul;
mod method;
pub mod sigmas;
mod softmax;
mod source;
mod stats;
mod subset;

pub use conditional::{
    class_query_count, class_rows, class_seed, class_weighted_floor, conditional_query_total,
    estimate_conditional_on, estimate_conditional_ranks, ClassCurve, PerClassCurves,
};
pub use curve::{Curve, CurveError, CurvePoint, DatasetInfo};
pub use device_exact::{
    estimate_exact_on_device, estimate_exact_on_device_ranks, estimate_exact_on_device_tiled,
    DEVICE_QUERY_TILE,
};
pub use error::EstimateError;
pub use exact::{estimate_exact, estimate_exact_ranks, exact_query};
pub use gaussian::{covariance_eigenvalues, gaussian_optimal_loss};
pub use kernel::{posterior_moments, QueryTile, SourceTerm};
pub use lossfloor_core::fs::write_atomic;
pub use method::{default_c, default_subset, EstimateParams, Method};
pub use source::{per_dim_variance, row_mean, DenseRows, RowSource};
pub use stats::{mean_stderr, MeanStderr};
pub use subset::{estimate_subset, estimate_subset_ranks, SubsetRule};

/// Estimates J*(σ̂) at each σ̂ of `sigmas` with the chosen method and returns the curve.
///
/// `progress` is called with the number of queries just finished (for progress bars); the
/// total is `params.queries × 1` (all σ̂ share each query), or 1 step for `gaussian`.
pub fn estimate(
    data: &dyn RowSource,
    dataset_spec: &str,
    sigmas: &[f64],
    params: &EstimateParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Curve, EstimateError> {
    estimate_on(
        &candle_core::Device::Cpu,
        data,
        dataset_spec,
        sigmas,
        params,
        progress,
    )
}

/// Every method runs on the CPU; on any other device only `exact` does.
pub fn check_method_device(
    method: Method,
    device: &candle_core::Device,
) -> Result<(), EstimateError> {
    if device.is_cpu() || method == Method::Exact {
        Ok(())
    } else {
        Err(EstimateError::CpuOnly(method))
    }
}

/// [`estimate`] on a chosen device. On the CPU every method runs on the fused CPU kernels;
/// on a GPU the exact estimator runs through [`estimate_exact_on_device`] (same queries,
/// same result to float32 rounding) and the other methods are refused.
pub fn estimate_on(
    device: &candle_core::Device,
    data: &dyn RowSource,
    dataset_spec: &str,
    sigmas: &[f64],
    params: &EstimateParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Curve, EstimateError> {
    estimate_ranks(
        &lossfloor_comm::SingleProcess,
        device,
        data,
        dataset_spec,
        sigmas,
        params,
        progress,
    )
}

/// [`estimate_on`] with the work shared between the ranks of `comm` (`mpirun -np N
/// lossfloor estimate`): the query tiles of `exact` and the batches of the subset methods
/// are split into contiguous runs, one per rank, and the per-query terms gathered in order,
/// so the curve is bit for bit one process's. Every rank holds the whole dataset: each
/// query's posterior runs over all its rows. `gaussian` runs whole on every rank.
pub fn estimate_ranks(
    comm: &dyn lossfloor_comm::Communicator,
    device: &candle_core::Device,
    data: &dyn RowSource,
    dataset_spec: &str,
    sigmas: &[f64],
    params: &EstimateParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Curve, EstimateError> {
    check_method_device(params.method, device)?;
    let n = data.num_rows();
    let (subset, c) = params.resolve(n, sigmas)?;
    let mut sorted = sigmas.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    let mut meta = serde_json::Map::new();
    let stats: Vec<MeanStderr> = match params.method {
        Method::Exact => {
            meta.insert("queries".into(), params.queries.into());
            meta.insert("seed".into(), params.seed.into());
            if device.is_cpu() {
                estimate_exact_ranks(comm, data, &sorted, params.queries, params.seed, progress)?
            } else {
                meta.insert("device".into(), format!("{:?}", device.location()).into());
                estimate_exact_on_device_ranks(
                    comm,
                    data,
                    &sorted,
                    params.queries,
                    params.seed,
                    device,
                    progress,
                )
                .map_err(|e| EstimateError::Device(e.to_string()))?
            }
        }
        Method::Dol | Method::Cdol | Method::Snis => {
            let l = subset.expect("resolved");
            let rule = match params.method {
                Method::Dol => SubsetRule::Dol,
                Method::Cdol => SubsetRule::Cdol {
                    c: c.expect("resolved"),
                },
                _ => SubsetRule::Snis,
            };
            meta.insert("queries".into(), params.queries.into());
            meta.insert("subset".into(), l.into());
            if let Some(c) = c {
                meta.insert("c".into(), serde_json::Value::from(c));
            }
            meta.insert("seed".into(), params.seed.into());
            estimate_subset_ranks(
                comm,
                data,
                &sorted,
                params.queries,
                l,
                rule,
                params.seed,
                progress,
            )?
        }
        Method::Gaussian => {
            let eig = covariance_eigenvalues(data).map_err(EstimateError::Eigen)?;
            progress(1);
            sorted
                .iter()
                .map(|&s| MeanStderr {
                    mean: gaussian_optimal_loss(&eig, s),
                    stderr: 0.0,
                    count: 0,
                })
                .collect()
        }
    };
    let points = sorted
        .iter()
        .zip(&stats)
        .map(|(&sigma, s)| CurvePoint {
            sigma,
            loss: s.mean,
            stderr: s.stderr,
            queries: s.count,
        })
        .collect();
    Ok(Curve {
        dataset: DatasetInfo {
            spec: dataset_spec.to_string(),
            n,
            dim: data.row_dim(),
            xflip: false,
            limit: None,
            conditional: false,
        },
        method: params.method.name().to_string(),
        params: meta,
        data_variance: Some(per_dim_variance(data)),
        points,
    })
}
