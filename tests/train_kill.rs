//! `lossfloor train` killed with SIGKILL at arbitrary points and resumed with
//! `--resume auto` ends with the same weights, EMA and Adam moments, bit for bit, as a
//! run that was never interrupted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::{assert_ok, lossfloor, write_npy_f32};

const STEPS: u64 = 40;
const BATCH: u64 = 4;

/// A 2-level DDPM++-style net on 8×8 images with dropout and x-flips, one step per tick
/// and a training state written on every tick.
fn write_config(dir: &Path) -> PathBuf {
    let npy = dir.join("data.npy");
    let values: Vec<f32> = (0..16 * 64)
        .map(|i| ((i as f32) * 0.37).cos() * 0.8)
        .collect();
    write_npy_f32(&npy, &[16, 1, 8, 8], &values);
    let cfg = dir.join("tiny.toml");
    let text = format!(
        r#"
[data]
spec = "npy:{}"
xflip = true
[network]
arch = "songunet"
img_resolution = 8
in_channels = 1
out_channels = 1
model_channels = 8
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = [4]
dropout = 0.2
[optimizer]
lr = 1e-2
rampup_kimg = 0.02
[ema]
halflife_kimg = 0.02
[train]
batch = {BATCH}
duration_kimg = {}
tick_kimg = {}
snapshot_ticks = 5
state_ticks = 1
seed = 11
"#,
        npy.display(),
        (STEPS * BATCH) as f64 / 1000.0,
        BATCH as f64 / 1000.0,
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn train_cmd(cfg: &Path, run_dir: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lossfloor"));
    c.arg("train")
        .arg(cfg)
        .arg("--run-dir")
        .arg(run_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if resume {
        c.args(["--resume", "auto"]);
    }
    c
}

/// The number of images of the newest training state in `run_dir` (0 if none).
fn newest_state_nimg(run_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return 0;
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("training-state-")?
                .strip_suffix(".safetensors")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Waits until the run has written a state at `min_step` steps or later, waits `extra`
/// more, then kills the process with SIGKILL. Panics if the run ended first (the kill
/// would then test nothing).
fn kill_after(mut child: Child, run_dir: &Path, min_step: u64, extra: Duration) {
    let t0 = Instant::now();
    while newest_state_nimg(run_dir) < min_step * BATCH {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before step {min_step}; nothing to kill");
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(extra);
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(still_running, "the run ended before the kill");
}

fn final_state(run_dir: &Path) -> Vec<(String, Vec<u32>)> {
    let path = run_dir.join(format!("training-state-{:010}.safetensors", STEPS * BATCH));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out: Vec<(String, Vec<u32>)> = tensors
        .into_iter()
        .map(|(name, t)| (name, bits(&t)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn bits(t: &Tensor) -> Vec<u32> {
    let flat = t.flatten_all().unwrap();
    match flat.dtype() {
        candle_core::DType::F32 => flat
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        other => flat
            .to_dtype(candle_core::DType::F64)
            .unwrap_or_else(|e| panic!("{other:?}: {e}"))
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                [b as u32, (b >> 32) as u32]
            })
            .collect(),
    }
}

/// The `kimg` of every line of `stats.jsonl`.
fn logged_kimg(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("stats.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
            v["kimg"].as_f64().unwrap()
        })
        .collect()
}

#[test]
fn killed_and_resumed_run_equals_uninterrupted_run_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());

    let full = dir.path().join("full");
    let cfg_s = cfg.to_str().unwrap();
    assert_ok(&lossfloor(&[
        "train",
        cfg_s,
        "--run-dir",
        full.to_str().unwrap(),
    ]));
    let reference = final_state(&full);
    assert!(
        reference.iter().any(|(n, _)| n.contains("ema")),
        "{reference:?}"
    );

    // Killed twice: just after one state is written, and a few ms after another (so the
    // kill may land inside a step, a snapshot or a state write), then resumed to the end.
    let part = dir.path().join("part");
    kill_after(
        train_cmd(&cfg, &part, false).spawn().unwrap(),
        &part,
        3,
        Duration::ZERO,
    );
    let first_kill = newest_state_nimg(&part);
    kill_after(
        train_cmd(&cfg, &part, true).spawn().unwrap(),
        &part,
        first_kill / BATCH + 8,
        Duration::from_millis(7),
    );
    assert!(newest_state_nimg(&part) < STEPS * BATCH);
    let status = train_cmd(&cfg, &part, true).status().unwrap();
    assert!(status.success());

    let resumed = final_state(&part);
    assert_eq!(resumed.len(), reference.len());
    for ((name, a), (name_ref, b)) in resumed.iter().zip(&reference) {
        assert_eq!(name, name_ref);
        assert!(a == b, "{name} differs from the uninterrupted run");
    }

    // The log holds each tick once, in order, as the uninterrupted run's does.
    assert_eq!(logged_kimg(&part), logged_kimg(&full));
    assert_eq!(logged_kimg(&full).len() as u64, STEPS);
}
