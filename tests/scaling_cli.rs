//! `lossfloor scaling` end to end on run directories whose logs follow a known law
//! J(F) = J* + β·F^α exactly: the floor fit must recover α and β, the free fit J*.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails, assert_ok, lossfloor};
use lossfloor_core::Process;
use serde_json::{json, Value};

const ALPHA: f64 = -0.3;
const BETA: f64 = 40.0;

/// The curve: J* on three σ̂.
const GRID: [(f64, f64); 3] = [(0.5, 0.01), (2.0, 0.12), (8.0, 0.22)];

fn write_curve(dir: &Path) -> PathBuf {
    let p = dir.join("curve.json");
    let points: Vec<Value> = GRID
        .iter()
        .map(|(s, j)| json!({"sigma": s, "loss": j, "stderr": 0.0, "queries": 0}))
        .collect();
    let curve = json!({
        "dataset": {"spec": "npy:unused.npy", "n": 16, "dim": 64, "xflip": false},
        "method": "exact", "params": {}, "data_variance": 0.25, "points": points,
    });
    std::fs::write(&p, curve.to_string()).unwrap();
    p
}

/// A run directory of a SongUNet with `channels` whose evaluations and ticks lie on
/// J* + β·F^α, F its training compute; returns it.
fn write_run(dir: &Path, channels: usize, curve: &Path, total_floor: f64) -> PathBuf {
    let run = dir.join(format!("c{channels}"));
    std::fs::create_dir(&run).unwrap();
    let cfg = format!(
        r#"[data]
spec = "npy:unused.npy"
[network]
arch = "songunet"
img_resolution = 8
in_channels = 1
out_channels = 1
model_channels = {channels}
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
[optimal_loss]
curve = "{}"
"#,
        curve.display()
    );
    std::fs::write(run.join("config.toml"), &cfg).unwrap();
    let config = lossfloor_train::config::Config::parse(&cfg, &[]).unwrap();
    let macs = lossfloor_nets::flops::forward_macs(&config.effective_network().spec()).unwrap();
    let flops = |kimg: f64| 3.0 * macs as f64 * kimg * 1000.0;
    let (mut evals, mut ticks) = (String::new(), String::new());
    for k in 1..=12 {
        // Whole images, as the trainer logs them.
        let kimg = (500.0 * 1.5f64.powi(k)).round() / 1000.0;
        let f = flops(kimg);
        let losses: Vec<f64> = GRID.iter().map(|(_, j)| j + BETA * f.powf(ALPHA)).collect();
        let line = json!({
            "kimg": kimg,
            "sigma": GRID.iter().map(|g| g.0).collect::<Vec<_>>(),
            "jstar": GRID.iter().map(|g| g.1).collect::<Vec<_>>(),
            "train": {"raw": {"loss": losses}, "ema": {"loss": losses}},
        });
        evals.push_str(&format!("{line}\n"));
        let tick = json!({"kimg": kimg, "loss": total_floor + BETA * f.powf(ALPHA)});
        ticks.push_str(&format!("{tick}\n"));
    }
    std::fs::write(run.join("eval.jsonl"), evals).unwrap();
    std::fs::write(run.join("stats.jsonl"), ticks).unwrap();
    run
}

#[test]
fn fits_recover_a_known_law() {
    let dir = tempfile::tempdir().unwrap();
    let curve_path = write_curve(dir.path());
    let curve = lossfloor_optimal::Curve::load(&curve_path).unwrap();
    let edm =
        lossfloor_core::Edm::new(0.5, lossfloor_core::Edm::P_MEAN, lossfloor_core::Edm::P_STD);
    let total_floor =
        lossfloor_core::total_weighted_loss(&edm as &dyn Process, &|s| curve.loss_at(s));
    let runs: Vec<PathBuf> = [4, 8, 16]
        .iter()
        .map(|&c| write_run(dir.path(), c, &curve_path, total_floor))
        .collect();
    let (out, plot) = (dir.path().join("fit.json"), dir.path().join("fit.png"));
    let mut args = vec!["scaling"];
    args.extend(runs.iter().map(|r| r.to_str().unwrap()));
    args.extend([
        "--sigmas",
        "2",
        "--total",
        "--resamples",
        "200",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let r = lossfloor(&args);
    assert_ok(&r);
    assert!(plot.is_file());
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let series = doc["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{doc}");
    for (s, floor) in series.iter().zip([0.12, total_floor]) {
        let label = s["series"].as_str().unwrap();
        assert!(
            (s["jstar"].as_f64().unwrap() - floor).abs() < 1e-12,
            "{label}"
        );
        let fits = &s["fits"];
        let f = &fits["floor"];
        assert!(
            (f["alpha"].as_f64().unwrap() - ALPHA).abs() < 1e-9,
            "{label}: {f}"
        );
        assert!(
            (f["beta"].as_f64().unwrap() / BETA - 1.0).abs() < 1e-6,
            "{label}: {f}"
        );
        assert!(f["r2"].as_f64().unwrap() > 1.0 - 1e-9, "{label}");
        // Without the floor the data bend away from a power law: a worse log-log fit.
        assert!(
            fits["plain"]["r2"].as_f64().unwrap() < 0.999,
            "{label}: {fits}"
        );
        let c = fits["free"]["c"].as_f64().unwrap();
        assert!(
            (c / floor - 1.0).abs() < 1e-3,
            "{label}: c {c} vs J* {floor}"
        );
    }
}

#[test]
fn scaling_refuses_what_it_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fit.json");
    let o = out.to_str().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_fails(
        &lossfloor(&["scaling", d, "--out", o]),
        &["not a run directory", "config.toml"],
        &[&out],
    );
    assert_fails(
        &lossfloor(&["scaling", d, "--out", o, "--resamples", "5"]),
        &["--resamples 5"],
        &[&out],
    );
}
