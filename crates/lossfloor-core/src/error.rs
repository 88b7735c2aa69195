//! Error type of the crate.

use thiserror::Error;

/// Errors from parsing names and checking parameters.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    #[error("unknown process `{0}` (expected one of: vp, ve, edm, iddpm, fm, sd3)")]
    UnknownProcess(String),
    #[error("unknown prediction target `{0}` (expected x0, eps, neg_eps, v, fm_velocity, edm_f or edm_f:<sigma_data>)")]
    UnknownTarget(String),
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}
