//! Checks that an optimal-loss curve describes the training data it is used with.
//!
//! J*(σ̂) is a property of one empirical distribution: the same images, the same count,
//! the same x-flip. A curve of other data gives a floor that is wrong by an unknown
//! amount, and the gap, the diagnostics and the adaptive schedule inherit the error
//! without a sign of it. So a trainer compares the curve's record (`dataset` in the curve
//! file) with the data it loaded, and refuses a mismatch unless
//! `optimal_loss.allow_mismatch = true`.

use std::path::Path;

use anyhow::{bail, Result};
use lossfloor_data::{DataSpec, Dataset};
use lossfloor_optimal::Curve;

use crate::config::DataConfig;

/// One difference between a curve's data and the training data: (what, curve, training).
pub type Mismatch = (&'static str, String, String);

/// Data specs compare by their parsed form, so `fashion-mnist` equals
/// `fashion-mnist:train`; specs naming paths compare by the canonical path where both
/// exist.
fn same_spec(a: &str, b: &str) -> bool {
    let (Ok(pa), Ok(pb)) = (a.parse::<DataSpec>(), b.parse::<DataSpec>()) else {
        return a == b;
    };
    if pa.to_string() == pb.to_string() {
        return true;
    }
    let path = |s: &DataSpec| -> Option<std::path::PathBuf> {
        let text = s.to_string();
        let (_, p) = text.split_once(':')?;
        std::fs::canonicalize(p).ok()
    };
    let kind = |s: &DataSpec| s.to_string().split(':').next().map(str::to_string);
    kind(&pa) == kind(&pb) && path(&pa).is_some() && path(&pa) == path(&pb)
}

/// The differences between the data `curve` was estimated on and the training data
/// (`data` as configured, `dataset` as loaded).
pub fn curve_mismatches(curve: &Curve, data: &DataConfig, dataset: &Dataset) -> Vec<Mismatch> {
    let (spec, xflip, limit) = curve.dataset.normalized();
    let mut out = Vec::new();
    if !same_spec(&spec, &data.spec) {
        out.push(("data spec", spec, data.spec.clone()));
    }
    if xflip != data.xflip {
        out.push(("x-flip", xflip.to_string(), data.xflip.to_string()));
    }
    if limit != data.limit {
        let show = |l: Option<usize>| l.map_or("none".to_string(), |n| n.to_string());
        out.push(("limit", show(limit), show(data.limit)));
    }
    if curve.dataset.n != dataset.len() {
        out.push((
            "rows N",
            curve.dataset.n.to_string(),
            dataset.len().to_string(),
        ));
    }
    if curve.dataset.dim != dataset.dim() {
        out.push((
            "dimension",
            curve.dataset.dim.to_string(),
            dataset.dim().to_string(),
        ));
    }
    out
}

/// Fails with every difference named, both sides, unless `allow` (then each is printed
/// as a warning).
pub fn check_curve_matches(
    curve: &Curve,
    curve_path: &Path,
    data: &DataConfig,
    dataset: &Dataset,
    allow: bool,
) -> Result<()> {
    let diffs = curve_mismatches(curve, data, dataset);
    if diffs.is_empty() {
        return Ok(());
    }
    let list = diffs
        .iter()
        .map(|(what, c, t)| format!("{what}: curve {c}, training data {t}"))
        .collect::<Vec<_>>()
        .join("; ");
    if allow {
        eprintln!(
            "warning: {}: the curve describes other data than the training data ({list}); \
             used anyway (optimal_loss.allow_mismatch = true)",
            curve_path.display()
        );
        return Ok(());
    }
    bail!(
        "{}: the optimal-loss curve does not describe the training data ({list}); estimate \
         the curve on the training data (lossfloor estimate --data {}{}{}) or set \
         optimal_loss.allow_mismatch = true",
        curve_path.display(),
        data.spec,
        if data.xflip { " --xflip" } else { "" },
        data.limit
            .map(|n| format!(" --limit {n}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossfloor_data::ImageShape;
    use lossfloor_optimal::{CurvePoint, DatasetInfo};

    fn dataset(n: usize) -> Dataset {
        Dataset::from_u8(
            "toy".into(),
            ImageShape::new(1, 2, 2),
            vec![7; n * 4],
            None,
            None,
        )
        .unwrap()
    }

    fn curve(spec: &str, n: usize, dim: usize) -> Curve {
        Curve {
            dataset: DatasetInfo {
                spec: spec.into(),
                n,
                dim,
                xflip: false,
                limit: None,
                conditional: false,
            },
            method: "exact".into(),
            params: Default::default(),
            data_variance: None,
            points: vec![CurvePoint {
                sigma: 1.0,
                loss: 0.1,
                stderr: 0.0,
                queries: 1,
            }],
        }
    }

    fn data(spec: &str) -> DataConfig {
        DataConfig {
            spec: spec.into(),
            xflip: false,
            limit: None,
        }
    }

    #[test]
    fn matching_curve_passes_and_train_alias_is_the_same_spec() {
        let ds = dataset(8);
        assert!(
            curve_mismatches(&curve("fashion-mnist", 8, 4), &data("fashion-mnist"), &ds).is_empty()
        );
        assert!(curve_mismatches(
            &curve("fashion-mnist:train", 8, 4),
            &data("fashion-mnist"),
            &ds
        )
        .is_empty());
    }

    #[test]
    fn every_difference_is_named_with_both_sides() {
        let ds = dataset(16);
        let c = curve("fashion-mnist:test", 8, 192);
        let d = curve_mismatches(&c, &data("fashion-mnist"), &ds);
        let what: Vec<&str> = d.iter().map(|m| m.0).collect();
        assert_eq!(what, ["data spec", "rows N", "dimension"]);
        assert_eq!(d[2].1, "192");
        assert_eq!(d[2].2, "4");
        let err = check_curve_matches(&c, Path::new("c.json"), &data("fashion-mnist"), &ds, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.json"), "{err}");
        assert!(
            err.contains("dimension: curve 192, training data 4"),
            "{err}"
        );
        assert!(err.contains("allow_mismatch"), "{err}");
        assert!(
            check_curve_matches(&c, Path::new("c.json"), &data("fashion-mnist"), &ds, true).is_ok()
        );
    }

    #[test]
    fn legacy_suffixes_carry_xflip_and_limit() {
        let mut c = curve("fashion-mnist +xflip (first 4)", 8, 4);
        let (spec, xflip, limit) = c.dataset.normalized();
        assert_eq!(
            (spec.as_str(), xflip, limit),
            ("fashion-mnist", true, Some(4))
        );
        let ds = dataset(8);
        let mut d = data("fashion-mnist");
        let what: Vec<&str> = curve_mismatches(&c, &d, &ds).iter().map(|m| m.0).collect();
        assert_eq!(what, ["x-flip", "limit"]);
        d.xflip = true;
        d.limit = Some(4);
        assert!(curve_mismatches(&c, &d, &ds).is_empty());
        c.dataset.spec = "fashion-mnist".into();
        c.dataset.xflip = true;
        c.dataset.limit = Some(4);
        assert!(curve_mismatches(&c, &d, &ds).is_empty());
    }
}
