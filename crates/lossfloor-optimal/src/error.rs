//! Errors of the estimators: each says what was wrong and what was expected.

use crate::method::Method;

#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    #[error("unknown method '{0}': expected one of exact, dol, cdol, snis, gaussian")]
    UnknownMethod(String),
    #[error("no noise levels given: expected at least one σ > 0")]
    NoSigmas,
    #[error("noise level σ = {0} is not allowed: every σ must be a finite number > 0")]
    BadSigma(f64),
    #[error("the dataset has {0} rows: the estimators need at least 2")]
    TooFewRows(usize),
    #[error("--queries must be at least 1 (got 0)")]
    ZeroQueries,
    #[error("--subset {0} is too small: a subset needs at least 2 rows")]
    SubsetTooSmall(usize),
    #[error("--subset {l} is larger than {method} allows on a dataset of {n} rows: expected 2 ≤ L ≤ {max}")]
    SubsetTooLarge {
        l: usize,
        n: usize,
        max: usize,
        method: Method,
    },
    #[error("--subset is only used by dol, cdol and snis, not by {0}")]
    SubsetNotUsed(Method),
    #[error("--c is only used by cdol, not by {0}")]
    CNotUsed(Method),
    #[error("--c {0} is not allowed: expected C ≥ 1 (C = 1 is DOL, C = inf is SNIS on L−1 rows)")]
    BadC(f64),
    #[error("--method {0} runs on the CPU only: on a GPU (--device cuda) use --method exact")]
    CpuOnly(Method),
    #[error("the estimator failed on the device: {0}")]
    Device(String),
    #[error("covariance eigendecomposition failed: {0}")]
    Eigen(String),
    #[error("--conditional: class {label} has {n_c} image(s), too few for --method {method} (it needs a subset of at least 2 other rows); use --method exact or cdol")]
    ClassTooSmall {
        label: u32,
        n_c: usize,
        method: Method,
    },
    #[error("sharing the work between ranks failed: {0}")]
    Ranks(String),
    #[error("--conditional: {labels} labels for {rows} rows; expected one label per row")]
    LabelCount { labels: usize, rows: usize },
}
