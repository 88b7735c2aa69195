use std::path::Path;

use lossfloor_train::{run_train, TrainArgs};

/// Writes a little-endian f32 `.npy` of shape [n, 1, 8, 8].
fn write_npy(path: &Path, n: usize) {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, 1, 8, 8), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for i in 0..n * 64 {
        let v = ((i as f32) * 0.37).cos() * 0.8;
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Writes `dir/name`: a tiny SongUNet on 8×8 single-channel images (data given later with
/// `--set data.spec=…`), followed by `rest` (more sections).
fn write_config(dir: &Path, name: &str, rest: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!(
        r#"
[data]
spec = "npy:PLACEHOLDER"
[network]
arch = "songunet"
img_resolution = 8
in_channels = 1
out_channels = 1
model_channels = 8
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
{rest}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `lossfloor train CFG --set data.spec=npy:NPY --set …(set) --run-dir RUN [--resume …]` on
/// the CPU, as TrainArgs.
fn train_args(
    cfg: &Path,
    npy: &Path,
    run_dir: &Path,
    set: &[String],
    resume: Option<&str>,
) -> TrainArgs {
    let mut all = vec![format!("data.spec=npy:{}", npy.display())];
    all.extend_from_slice(set);
    TrainArgs {
        config: cfg.to_path_buf(),
        set: all,
        resume: resume.map(str::to_string),
        run_dir: Some(run_dir.to_path_buf()),
        device: None,
    }
}

#[test]
fn run_train_end_to_end_with_overrides_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("tiny.npy");
    write_npy(&npy, 12);
    let cfg = write_config(
        dir.path(),
        "tiny.toml",
        r#"dropout = 0.1
[train]
batch = 4
duration_kimg = 0.008
tick_kimg = 0.004
"#,
    );
    let run_dir = dir.path().join("run");
    let args = |duration: &str, resume: Option<&str>| TrainArgs {
        // --device cpu: exercises the flag, which overrides train.device
        device: Some("cpu".to_string()),
        ..train_args(
            &cfg,
            &npy,
            &run_dir,
            &[
                "train.dropout=0".into(),
                format!("train.duration_kimg={duration}"),
            ],
            resume,
        )
    };
    run_train(args("0.008", None)).unwrap();
    let resolved = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(resolved.contains("dropout = 0.0"), "{resolved}");
    assert!(run_dir
        .join("training-state-0000000008.safetensors")
        .is_file());
    // a second start without --resume is refused; with --resume auto it continues
    assert!(run_train(args("0.016", None)).is_err());
    run_train(args("0.016", Some("auto"))).unwrap();
    assert!(run_dir
        .join("training-state-0000000016.safetensors")
        .is_file());
    let stats = std::fs::read_to_string(run_dir.join("stats.jsonl")).unwrap();
    assert_eq!(stats.lines().count(), 4);
    // changing the network on resume is refused
    let mut a = args("0.024", Some("auto"));
    a.set.push("network.model_channels=16".into());
    let e = run_train(a).unwrap_err();
    assert!(format!("{e:#}").contains("different config") || format!("{e:#}").contains("shape"));
}

#[test]
fn curve_estimated_at_start_drives_the_schedule_and_is_reused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("tiny.npy");
    write_npy(&npy, 12);
    let cfg = write_config(
        dir.path(),
        "est.toml",
        r#"[schedule]
kind = "optimal-loss"
refresh_kimg = 0.004
bins = 32
[train]
batch = 4
tick_kimg = 0.004
[optimal_loss.estimate]
queries = 24
points = 9
seed = 5
"#,
    );
    let run_dir = dir.path().join("run");
    let args = |duration: &str, resume: Option<&str>| {
        let set = [format!("train.duration_kimg={duration}")];
        train_args(&cfg, &npy, &run_dir, &set, resume)
    };
    run_train(args("0.008", None)).unwrap();
    let path = run_dir.join(lossfloor_train::train::ESTIMATED_CURVE_FILE);
    let curve = lossfloor_optimal::Curve::load(&path).unwrap();
    assert_eq!(curve.points.len(), 9);
    assert_eq!(curve.method, "exact");
    // the same estimate computed directly from the data gives the same numbers
    let data = lossfloor_data::load(&format!("npy:{}", npy.display()).parse().unwrap()).unwrap();
    let sigmas: Vec<f64> = curve.points.iter().map(|p| p.sigma).collect();
    assert!((sigmas[0] - 0.002).abs() < 1e-15 && (sigmas[8] - 80.0).abs() < 1e-12);
    let params = lossfloor_optimal::EstimateParams {
        method: lossfloor_optimal::Method::Exact,
        queries: 24,
        subset: None,
        c: None,
        seed: 5,
    };
    let direct = lossfloor_optimal::estimate(&data, "x", &sigmas, &params, &|_| {}).unwrap();
    // (to the last few bits: the file's JSON numbers are parsed back with up to an ulp of
    // error, and σ moves the result by that much)
    for (a, b) in curve.points.iter().zip(&direct.points) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-12 * b.loss.abs(),
            "σ {}",
            a.sigma
        );
    }
    // the stats carry J* from it
    let stats = std::fs::read_to_string(run_dir.join("stats.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(stats.lines().next().unwrap()).unwrap();
    assert!(first["bins"][31]["jstar"].as_f64().unwrap() > 0.0);
    // a resumed run reads the file instead of estimating again
    let written = std::fs::metadata(&path).unwrap().modified().unwrap();
    run_train(args("0.016", Some("auto"))).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        written
    );
    // curve and estimate together are refused
    let mut a = args("0.024", Some("auto"));
    a.set.push("optimal_loss.curve=\"x.json\"".into());
    let msg = format!("{:#}", run_train(a).unwrap_err());
    assert!(msg.contains("not both"), "{msg}");
}

#[test]
fn non_finite_loss_stops_the_run_and_keeps_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("tiny.npy");
    write_npy(&npy, 12);
    let cfg = write_config(
        dir.path(),
        "blowup.toml",
        r#"[train]
batch = 4
tick_kimg = 0.004
state_ticks = 1
duration_kimg = 0.04
"#,
    );
    let run_dir = dir.path().join("run");
    // an absurd learning rate drives the weights, then the loss, to infinity
    let set = ["optimizer.lr=1e36".into(), "optimizer.rampup_kimg=0".into()];
    let msg = format!(
        "{:#}",
        run_train(train_args(&cfg, &npy, &run_dir, &set, None)).unwrap_err()
    );
    assert!(msg.contains("non-finite loss"), "{msg}");
    let state = lossfloor_train::state::latest_state(&run_dir)
        .unwrap()
        .expect("a state from before the blow-up");
    assert!(msg.contains(&state.display().to_string()), "{msg}");
    // the states on disk hold finite weights only
    let tensors = candle_core::safetensors::load(&state, &candle_core::Device::Cpu).unwrap();
    for (name, t) in tensors {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}");
    }
}
