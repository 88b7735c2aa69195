//! Parsing a σ̂ grid spec (`lossfloor estimate --sigmas`): a list or `logspace:MIN:MAX:K`.
//! Here rather than in the command-line crate so the fuzz harness can reach it.

use anyhow::{bail, Context, Result};

/// The most noise levels one grid may hold. Every σ costs a pass of the estimator over all
/// queries and a value per query kept in memory (`queries × K × 8` bytes), and published
/// curves use 32–64 points, so 10 000 is generous; a larger K is a typo, refused before
/// anything is allocated for it.
pub const MAX_SIGMAS: usize = 10_000;

/// Parses `0.1,0.5,2` (a list) or `logspace:MIN:MAX:K` (K values log-uniform from MIN to MAX,
/// both included). Every σ must be a finite number > 0; at most [`MAX_SIGMAS`] of them.
pub fn parse_sigmas(text: &str) -> Result<Vec<f64>> {
    let values = if let Some(rest) = text.strip_prefix("logspace:") {
        let parts: Vec<&str> = rest.split(':').collect();
        if parts.len() != 3 {
            bail!("--sigmas '{text}': expected logspace:MIN:MAX:K, e.g. logspace:0.002:80:32");
        }
        let min: f64 = parts[0]
            .parse()
            .with_context(|| format!("--sigmas '{text}': MIN '{}' is not a number", parts[0]))?;
        let max: f64 = parts[1]
            .parse()
            .with_context(|| format!("--sigmas '{text}': MAX '{}' is not a number", parts[1]))?;
        let k: usize = parts[2].parse().with_context(|| {
            format!("--sigmas '{text}': K '{}' is not a whole number", parts[2])
        })?;
        if !(min > 0.0 && max.is_finite() && max > min) {
            bail!("--sigmas '{text}': expected 0 < MIN < MAX");
        }
        if k < 2 {
            bail!("--sigmas '{text}': expected K ≥ 2 points");
        }
        if k > MAX_SIGMAS {
            bail!(
                "--sigmas '{text}': K = {k} points is more than the {MAX_SIGMAS} allowed; \
                 expected e.g. logspace:0.002:80:32"
            );
        }
        let (a, b) = (min.ln(), max.ln());
        (0..k)
            .map(|i| (a + (b - a) * i as f64 / (k - 1) as f64).exp())
            .collect()
    } else {
        let count = text.split(',').count();
        if count > MAX_SIGMAS {
            bail!("--sigmas: {count} values is more than the {MAX_SIGMAS} allowed");
        }
        text.split(',')
            .map(|s| s.trim().parse::<f64>().with_context(|| format!("--sigmas: '{s}' is not a number (expected a list like 0.1,0.5,2 or logspace:MIN:MAX:K)")))
            .collect::<Result<Vec<_>>>()?
    };
    if let Some(bad) = values.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        bail!("--sigmas: σ = {bad} is not allowed: every σ must be a finite number > 0");
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_logspace() {
        assert_eq!(parse_sigmas("0.5, 1,2").unwrap(), vec![0.5, 1.0, 2.0]);
        let g = parse_sigmas("logspace:0.01:100:5").unwrap();
        for (a, b) in g.iter().zip([0.01, 0.1, 1.0, 10.0, 100.0]) {
            assert!((a - b).abs() < 1e-12 * b);
        }
        assert!(parse_sigmas("0,1")
            .unwrap_err()
            .to_string()
            .contains("σ = 0"));
        assert!(parse_sigmas("-1").unwrap_err().to_string().contains("> 0"));
        assert!(parse_sigmas("logspace:1:0.1:4").is_err());
        assert!(parse_sigmas("logspace:0.1:1").is_err());
        assert!(parse_sigmas("a,b")
            .unwrap_err()
            .to_string()
            .contains("'a' is not a number"));
        assert_eq!(parse_sigmas("logspace:0.1:1:10000").unwrap().len(), 10_000);
        let e = parse_sigmas("logspace:0.1:1:100000000000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("K = 100000000000") && e.contains("10000"), "{e}");
        let e = parse_sigmas(&vec!["1"; 10_001].join(","))
            .unwrap_err()
            .to_string();
        assert!(e.contains("10001 values"), "{e}");
    }
}
