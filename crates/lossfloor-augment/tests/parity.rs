//! Parity with NVlabs/edm's `training/augment.py`, run by `scripts/gen-augment-fixtures.py`
//! with scripted random numbers: the same draws must give the same parameters, and the same
//! parameters the same images and labels.

use std::path::PathBuf;

use lossfloor_augment::{
    apply, inverse_geometric_matrix, params_from_draws, resample::padding_margin, AugmentConfig,
    AugmentParams, AugmentStds, RawDraws, LABEL_DIM,
};
use serde_json::Value;

/// Largest |ours − reference| allowed on images with values in [−1, 1]. Both sides compute
/// in f32 (ours keeps coordinates in f64): the reference's grid coordinates carry a relative
/// error of ~6e-8 on positions of up to ~80 upsampled pixels, i.e. up to ~5e-6 px, which moves
/// a bilinear sample of a random image (neighbour differences up to ~2) by up to ~1e-5 in the
/// worst case; the 12-tap filter passes add a few 1e-7. Measured: 4.2e-6 at most (rgb16),
/// 4e-7 for the identity.
const IMAGE_TOLERANCE: f32 = 1e-5;

/// Labels are the reference's f32 of cos/sin/products of f32 inputs; ours are f64 rounded to
/// f32: a few ulps of values ≤ 2.
const LABEL_TOLERANCE: f32 = 1e-6;

const CASES: [&str; 5] = ["rgb8", "gray12", "rgb16", "gray6x10", "identity8"];

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn read_npy(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture_path(name)).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// One fixture: input and reference output, the draws, the parameters and labels.
struct Case {
    shape: [usize; 4],
    p: f64,
    draws: Vec<RawDraws>,
    params: Vec<AugmentParams>,
    labels: Vec<f32>,
    input: Vec<f32>,
    output: Vec<f32>,
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("fixture key {key}: {v}"))
}

fn load_case(name: &str) -> Case {
    let text = std::fs::read_to_string(fixture_path(&format!("{name}.json"))).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let shape: Vec<usize> = json["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let shape: [usize; 4] = shape.try_into().unwrap();
    let draws = json["draws"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| RawDraws {
            xflip_bit: number(d, "xflip_bit") == 1.0,
            xflip_gate: number(d, "xflip_gate"),
            yflip_bit: number(d, "yflip_bit") == 1.0,
            yflip_gate: number(d, "yflip_gate"),
            scale_normal: number(d, "scale_normal"),
            scale_gate: number(d, "scale_gate"),
            rotate_uniform: number(d, "rotate_uniform"),
            rotate_gate: number(d, "rotate_gate"),
            aniso_normal: number(d, "aniso_normal"),
            aniso_angle_uniform: number(d, "aniso_angle_uniform"),
            aniso_gate: number(d, "aniso_gate"),
            aniso_angle_gate: number(d, "aniso_angle_gate"),
            tx_normal: number(d, "tx_normal"),
            ty_normal: number(d, "ty_normal"),
            translate_gate: number(d, "translate_gate"),
        })
        .collect();
    let params = json["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| AugmentParams {
            xflip: number(d, "xflip") == 1.0,
            yflip: number(d, "yflip") == 1.0,
            scale: number(d, "scale"),
            rotate: number(d, "rotate"),
            aniso: number(d, "aniso"),
            aniso_angle: number(d, "aniso_angle"),
            tx: number(d, "tx"),
            ty: number(d, "ty"),
        })
        .collect();
    let labels = json["labels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let (in_shape, input) = read_npy(&format!("{name}-input.npy"));
    let (out_shape, output) = read_npy(&format!("{name}-output.npy"));
    assert_eq!(in_shape, shape.to_vec());
    assert_eq!(out_shape, shape.to_vec());
    Case {
        shape,
        p: number(&json, "p"),
        draws,
        params,
        labels,
        input,
        output,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn draws_map_to_the_reference_parameters() {
    // The reference's angles are (2u − 1)·π in f32, ours in f64: they differ by ~1 ulp of π.
    const ANGLE_TOLERANCE: f64 = 1e-6;
    for name in CASES {
        let case = load_case(name);
        let cfg = AugmentConfig::edm(case.p);
        for (i, (draws, want)) in case.draws.iter().zip(&case.params).enumerate() {
            let got = params_from_draws(draws, &cfg);
            let ctx = format!("{name} image {i}: ours {got:?}, reference {want:?}");
            assert_eq!((got.xflip, got.yflip), (want.xflip, want.yflip), "{ctx}");
            assert_eq!(
                (got.scale, got.aniso, got.tx, got.ty),
                (want.scale, want.aniso, want.tx, want.ty),
                "{ctx}"
            );
            assert!((got.rotate - want.rotate).abs() < ANGLE_TOLERANCE, "{ctx}");
            assert!(
                (got.aniso_angle - want.aniso_angle).abs() < ANGLE_TOLERANCE,
                "{ctx}"
            );
        }
    }
}

#[test]
fn images_match_reference() {
    let mut worst = 0f32;
    for name in CASES {
        let case = load_case(name);
        let (ours, _) = apply(&case.input, case.shape, &case.params).unwrap();
        let max_error = max_abs_diff(&ours, &case.output);
        println!("{name}: max |ours − reference| = {max_error:.3e}");
        assert!(
            max_error < IMAGE_TOLERANCE,
            "{name}: max error {max_error:e} ≥ {IMAGE_TOLERANCE:e}"
        );
        worst = worst.max(max_error);
    }
    println!("max_error over all cases: {worst:.3e}");
}

#[test]
fn labels_match_reference() {
    for name in CASES {
        let case = load_case(name);
        let (_, ours) = apply(&case.input, case.shape, &case.params).unwrap();
        assert_eq!(ours.len(), case.shape[0] * LABEL_DIM);
        let max_error = max_abs_diff(&ours, &case.labels);
        assert!(
            max_error < LABEL_TOLERANCE,
            "{name}: labels {ours:?} vs reference {:?}",
            case.labels
        );
    }
}

#[test]
fn fixtures_cover_the_clamped_margin() {
    // The rgb16 case is meant to reach past one reflection of the image, where the padding
    // stops at W − 1 and the reference samples zeros; check that it does.
    let case = load_case("rgb16");
    let [_, _, h, w] = case.shape;
    let inverses: Vec<_> = case
        .params
        .iter()
        .map(|p| inverse_geometric_matrix(p, &AugmentStds::EDM, w, h))
        .collect();
    let margin = padding_margin(&inverses, w, h);
    assert!(
        [margin.left, margin.right].contains(&(w - 1))
            || [margin.top, margin.bottom].contains(&(h - 1)),
        "{margin:?}"
    );
}
