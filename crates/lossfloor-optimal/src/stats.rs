//! Monte-Carlo summaries of per-query values.

/// Mean, standard error of the mean and count of a list of per-query values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStderr {
    pub mean: f64,
    pub stderr: f64,
    pub count: usize,
}

/// Two-pass mean and standard error s/√M (s with M−1), in f64, in the values' order.
pub fn mean_stderr(values: &[f64]) -> MeanStderr {
    let m = values.len();
    if m == 0 {
        return MeanStderr {
            mean: f64::NAN,
            stderr: f64::NAN,
            count: 0,
        };
    }
    let mean = values.iter().sum::<f64>() / m as f64;
    let stderr = if m > 1 {
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (m - 1) as f64;
        (var / m as f64).sqrt()
    } else {
        f64::NAN
    };
    MeanStderr {
        mean,
        stderr,
        count: m,
    }
}
