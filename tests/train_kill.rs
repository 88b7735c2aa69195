//! `lossfloor train` killed with SIGKILL at arbitrary points and resumed with
//! `--resume auto` ends with the same weights, EMA and Adam moments, bit for bit, as a
//! run that was never interrupted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, lossfloor, newest_state_nimg, state_bits, write_tiny_config, TinyRun};

const STEPS: u64 = 40;
const BATCH: u64 = 4;

/// The tiny run, one step per tick and a training state written on every tick.
fn write_config(dir: &Path) -> PathBuf {
    write_tiny_config(
        dir,
        &TinyRun {
            file_name: "tiny.toml",
            batch: BATCH,
            batch_gpu: None,
            steps: STEPS,
            tick_steps: 1,
        },
    )
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
    state_bits(run_dir, STEPS * BATCH)
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
