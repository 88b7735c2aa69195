#![allow(dead_code)]
use lossfloor_data::{Dataset, ImageShape};
use lossfloor_optimal::{Curve, CurvePoint, DatasetInfo};

/// A smooth toy curve: J*(σ) = v·σ²/(σ² + s²) shifted to be ~0 below σ = 0.05.
pub fn toy_curve() -> Curve {
    let v = 0.25;
    let points = (0..32)
        .map(|i| {
            let sigma = 0.002 * (80.0f64 / 0.002).powf(i as f64 / 31.0);
            let loss = v * sigma.powi(4) / (sigma.powi(4) + 0.3f64.powi(4));
            CurvePoint {
                sigma,
                loss,
                stderr: 0.0,
                queries: 0,
            }
        })
        .collect();
    Curve {
        dataset: DatasetInfo {
            spec: "npy:unused.npy".into(),
            n: 16,
            dim: 64,
            xflip: false,
            limit: None,
            conditional: false,
        },
        method: "exact".into(),
        params: Default::default(),
        data_variance: Some(v),
        points,
    }
}

/// n images 1×8×8 with values in [-1, 1] from a fixed formula.
pub fn tiny_dataset(n: usize) -> Dataset {
    let vals: Vec<f32> = (0..n * 64)
        .map(|i| ((i as f32 * 0.731).sin() * 0.9).clamp(-1.0, 1.0))
        .collect();
    Dataset::from_f32("tiny".into(), ImageShape::new(1, 8, 8), vals, None, None).unwrap()
}
