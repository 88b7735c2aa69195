//! Choosing and validating an estimator.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::EstimateError;

/// The five estimators of J*(σ̂).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Full dataset (Eq. 9): unbiased, O(M·N·D) per σ̂.
    Exact,
    /// Subset containing the query's source (Eq. 10): biased low.
    Dol,
    /// DOL with the source's weight divided by C (Eq. 11).
    Cdol,
    /// Subset without the source: biased high at small σ̂.
    Snis,
    /// Closed form of a Gaussian with the data's covariance.
    Gaussian,
}

impl Method {
    /// All methods, in the order `--help` lists them.
    pub const ALL: [Method; 5] = [
        Method::Exact,
        Method::Dol,
        Method::Cdol,
        Method::Snis,
        Method::Gaussian,
    ];

    /// The name used on the command line and in curve files.
    pub fn name(self) -> &'static str {
        match self {
            Method::Exact => "exact",
            Method::Dol => "dol",
            Method::Cdol => "cdol",
            Method::Snis => "snis",
            Method::Gaussian => "gaussian",
        }
    }

    /// Whether the method draws subsets (and so takes `--subset`).
    pub fn uses_subset(self) -> bool {
        matches!(self, Method::Dol | Method::Cdol | Method::Snis)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = EstimateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| EstimateError::UnknownMethod(s.to_string()))
    }
}

/// Everything an estimate depends on besides the data and the σ̂ grid.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateParams {
    pub method: Method,
    /// Monte-Carlo queries M per σ̂ (ignored by `gaussian`).
    pub queries: usize,
    /// Subset size L (subset methods); `None` picks [`default_subset`].
    pub subset: Option<usize>,
    /// cDOL's C; `None` picks C = 4N/L.
    pub c: Option<f64>,
    pub seed: u64,
}

/// Default subset size: 2048 rows, or fewer on small data (at most N−1, which SNIS needs).
pub fn default_subset(n: usize) -> usize {
    2048.min(n.saturating_sub(1)).max(2)
}

/// Default cDOL correction C = 4N/L, the paper's empirical optimum (Fig. 1(c)).
pub fn default_c(n: usize, l: usize) -> f64 {
    4.0 * n as f64 / l as f64
}

impl EstimateParams {
    /// Checks the parameters against a dataset of `n` rows and a σ̂ grid; returns the subset size
    /// and C actually used (for subset methods).
    pub fn resolve(
        &self,
        n: usize,
        sigmas: &[f64],
    ) -> Result<(Option<usize>, Option<f64>), EstimateError> {
        if sigmas.is_empty() {
            return Err(EstimateError::NoSigmas);
        }
        if let Some(&s) = sigmas.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(EstimateError::BadSigma(s));
        }
        if n < 2 {
            return Err(EstimateError::TooFewRows(n));
        }
        if self.method != Method::Gaussian && self.queries == 0 {
            return Err(EstimateError::ZeroQueries);
        }
        if !self.method.uses_subset() {
            if self.subset.is_some() {
                return Err(EstimateError::SubsetNotUsed(self.method));
            }
            if self.c.is_some() {
                return Err(EstimateError::CNotUsed(self.method));
            }
            return Ok((None, None));
        }
        let l = self.subset.unwrap_or_else(|| default_subset(n));
        let max = if self.method == Method::Snis {
            n - 1
        } else {
            n
        };
        if l < 2 {
            return Err(EstimateError::SubsetTooSmall(l));
        }
        if l > max {
            return Err(EstimateError::SubsetTooLarge {
                l,
                n,
                max,
                method: self.method,
            });
        }
        let c = match self.method {
            Method::Cdol => {
                let c = self.c.unwrap_or_else(|| default_c(n, l));
                if c.is_nan() || c < 1.0 {
                    return Err(EstimateError::BadC(c));
                }
                Some(c)
            }
            _ if self.c.is_some() => return Err(EstimateError::CNotUsed(self.method)),
            _ => None,
        };
        Ok((Some(l), c))
    }
}
