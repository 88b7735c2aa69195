//! Monte-Carlo summaries of per-query values.

/// Mean, standard error of the mean and count of a list of per-query values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStderr {
    pub mean: f64,
    pub stderr: f64,
    pub count: usize,
}

/// [`mean_stderr`] per σ̂ of per-query terms that arrive in blocks (tiles or batches of
/// queries), each block σ̂-major (`[k][query]`, `sigmas` rows): σ̂ k's values are the k-th
/// row of every block, in block order.
pub fn block_mean_stderr(blocks: &[Vec<f64>], sigmas: usize) -> Vec<MeanStderr> {
    (0..sigmas)
        .map(|k| {
            let values: Vec<f64> = blocks
                .iter()
                .flat_map(|b| {
                    let t = b.len() / sigmas;
                    b[k * t..(k + 1) * t].iter().copied()
                })
                .collect();
            mean_stderr(&values)
        })
        .collect()
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
