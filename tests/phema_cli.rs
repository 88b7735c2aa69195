//! `lossfloor phema` end to end: a short run with the power EMA and two tracked profiles,
//! reconstructions from its snapshots, and the refusals.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{assert_fails, assert_ok, lossfloor, stderr, write_npy_f32};

/// Trains a tiny SongUNet on 16 images for 8 one-step ticks with a snapshot per tick, with
/// `[ema] kind` = `kind`; returns the run directory.
fn tiny_run(dir: &Path, kind: &str) -> PathBuf {
    let npy = dir.join("data.npy");
    let values: Vec<f32> = (0..16 * 64)
        .map(|i| ((i * 29 % 31) as f32 / 15.5) - 1.0)
        .collect();
    write_npy_f32(&npy, &[16, 1, 8, 8], &values);
    let cfg = dir.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[data]
spec = "npy:{}"
[network]
arch = "songunet"
img_resolution = 8
in_channels = 1
out_channels = 1
model_channels = 16
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
[optimizer]
lr = 1e-2
rampup_kimg = 0
[ema]
kind = "{kind}"
[train]
batch = 16
duration_kimg = 0.128
tick_kimg = 0.016
snapshot_ticks = 1
"#,
            npy.display()
        ),
    )
    .unwrap();
    let run = dir.join("run");
    assert_ok(&lossfloor(&[
        "train",
        cfg.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]));
    run
}

/// The tensors of a safetensors file.
fn tensors(p: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn reconstructions_from_a_power_ema_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "power");
    // A tracked length at the last snapshot: the coefficients select that snapshot, so the
    // output equals it up to the other coefficients' ~1e-8 and float32 sums.
    let out = dir.path().join("phema.safetensors");
    let r = lossfloor(&[
        "phema",
        run.to_str().unwrap(),
        "--std",
        "0.1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&r);
    let got = tensors(&out);
    let want = tensors(&run.join("power-ema-0000000128-0.100.safetensors"));
    assert_eq!(got.len(), want.len());
    for (name, w) in &want {
        let d = max_abs_diff(&got[name], w);
        assert!(d < 1e-5, "{name}: {d}");
    }
    // The output is a network file that records how it was made.
    let loaded = lossfloor_nets::checkpoint::load_network(&out, &Device::Cpu).unwrap();
    let record: serde_json::Value = serde_json::from_str(&loaded.meta["lossfloor.phema"]).unwrap();
    assert_eq!(record["nimg"], 128);
    assert_eq!(record["snapshots"].as_array().unwrap().len(), 16);
    assert!(record["fit_error"].as_f64().unwrap() < 1e-6);
    let coef: f64 = record["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["coefficient"].as_f64().unwrap())
        .sum();
    assert!((coef - 1.0).abs() < 1e-9, "{coef}");

    // Two untracked lengths, at an earlier snapshot: one file each, differing from both
    // tracked snapshots there.
    let r = lossfloor(&[
        "phema",
        run.to_str().unwrap(),
        "--std",
        "0.07,0.13",
        "--at",
        "0.096",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&r);
    let text = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(text.contains("std 0.070 at 96 images"), "{text}");
    for s in ["0.070", "0.130"] {
        let p = dir.path().join(format!("phema-{s}.safetensors"));
        let got = tensors(&p);
        for tracked in ["0.050", "0.100"] {
            let t = tensors(&run.join(format!("power-ema-0000000096-{tracked}.safetensors")));
            let moved = t.iter().any(|(n, w)| max_abs_diff(&got[n], w) > 1e-6);
            assert!(moved, "{s} equals the tracked {tracked}");
        }
    }
}

#[test]
fn phema_refusals_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "power");
    let out = dir.path().join("x.safetensors");
    let go = |extra: &[&str]| {
        let mut args = vec![
            "phema",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        lossfloor(&args)
    };
    assert_fails(
        &go(&["--std", "0.5"]),
        &["--std 0.5", "(0, 0.2887]"],
        &[&out],
    );
    assert_fails(
        &go(&["--std", "0.01"]),
        &["--std 0.01", "outside their range", "--max-error 0.05"],
        &[&out],
    );
    assert_fails(
        &go(&["--std", "0.07", "--at", "0.1"]),
        &["no profile snapshot at 100 images", "16, 32"],
        &[&out],
    );
    // A run with EDM's half-life EMA has no profiles to reconstruct from.
    let other = tempfile::tempdir().unwrap();
    let plain = tiny_run(other.path(), "halflife");
    let r = lossfloor(&[
        "phema",
        plain.to_str().unwrap(),
        "--std",
        "0.07",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails(
        &r,
        &["at least two tracked profiles", "kind = \"power\""],
        &[&out],
    );
    assert!(!stderr(&r).contains("panicked"));
}
