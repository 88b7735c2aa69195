//! End-to-end tests of `lossfloor study` on real data (Fashion-MNIST, the Debian package)
//! with the real FID network (`scripts/fetch-inception.sh`): a whole tiny study, a study
//! killed with SIGKILL and resumed, bad study input, and a training run given a curve of
//! other data.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_fails, assert_ok, lossfloor, stderr};

const FASHION: &str = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";
const ARMS: [&str; 2] = ["edm", "edm-optimal"];
const EVAL_KIMG: [f64; 2] = [0.128, 0.256];
const BATCH: f64 = 32.0;

/// True when Fashion-MNIST is installed; otherwise prints why the test is skipped.
fn have_fashion() -> bool {
    if Path::new(FASHION).exists() {
        return true;
    }
    eprintln!("skipped: Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)");
    false
}

/// The FID weights, or None (with a message) when they are absent.
fn inception_weights() -> Option<PathBuf> {
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weights/inception-2015-12-05.pt");
    if w.exists() {
        Some(w)
    } else {
        eprintln!("skipped: needs scripts/fetch-inception.sh");
        None
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny version of configs/study-fashion-mnist-base.toml: 512 training images, a
/// 2-level SongUNet with 8 channels, batch 32, a tick and a training state every 4 steps.
fn base_config(limit: usize) -> String {
    format!(
        r#"
[data]
spec = "fashion-mnist"
xflip = false
limit = {limit}

[network]
arch = "songunet"
img_resolution = 28
in_channels = 1
out_channels = 1
label_dim = 0
model_channels = 8
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
dropout = 0.0

[precond]
process = "edm"

[optimizer]
lr = 2e-3
rampup_kimg = 2

[ema]
halflife_kimg = 2
rampup_ratio = 0.05

[train]
batch = {BATCH}
duration_kimg = 0.256
tick_kimg = 0.128
snapshot_ticks = 1000
state_ticks = 1
seed = 0
device = "cpu"

[schedule]
refresh_kimg = 2

[eval]
queries = 4
"#
    )
}

/// Writes `base.toml` and `study.toml` (2 arms, 1 seed, `eval_kimg`, plus `extra_arms`,
/// TOML `[[arms]]` tables) into `dir`; returns the study file.
fn write_study(dir: &Path, eval_kimg: &str, extra_arms: &str) -> PathBuf {
    std::fs::write(dir.join("base.toml"), base_config(512)).unwrap();
    let study = dir.join("study.toml");
    let text = format!(
        r#"
name = "tiny-schedule"
base = "base.toml"
seeds = [0]
eval_kimg = {eval_kimg}

[curve]
method = "exact"
queries = 64
points = 8

[fid]
images = 16
ref_images = 64
steps = 4
batch = 16

[[arms]]
name = "edm"
set = []

[[arms]]
name = "edm-optimal"
set = ["schedule.kind='optimal-loss'", "schedule.refresh_kimg=0.064"]
{extra_arms}
"#
    );
    std::fs::write(&study, text).unwrap();
    study
}

fn eval_kimg_toml() -> String {
    format!("[{}, {}]", EVAL_KIMG[0], EVAL_KIMG[1])
}

fn study_cmd(study: &Path, out: &Path, weights: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lossfloor"));
    c.arg("study")
        .arg(study)
        .arg("--out")
        .arg(out)
        .arg("--weights")
        .arg(weights);
    c
}

/// The evaluation lines of a study's stdout (one per finished evaluation).
fn eval_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.contains("FID-16"))
        .map(str::to_string)
        .collect()
}

/// Every `point-*.json` under `OUT/runs`, as (arm, kimg, path), sorted.
fn point_files(out: &Path) -> Vec<(String, f64, PathBuf)> {
    let mut v = Vec::new();
    let Ok(arms) = std::fs::read_dir(out.join("runs")) else {
        return v;
    };
    for arm in arms.flatten() {
        let arm_name = arm.file_name().to_string_lossy().into_owned();
        for seed in std::fs::read_dir(arm.path()).unwrap().flatten() {
            for f in std::fs::read_dir(seed.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(k) = name
                    .strip_prefix("point-")
                    .and_then(|n| n.strip_suffix(".json"))
                {
                    v.push((arm_name.clone(), k.parse::<f64>().unwrap(), f.path()));
                }
            }
        }
    }
    v.sort_by(|a, b| a.2.cmp(&b.2));
    v
}

fn finite(v: &serde_json::Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite(), "{what} = {x}");
    x
}

/// Checks results.json: every arm of the study, one run (seed 0) with both points.
fn check_results(out: &Path) {
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["study"], "tiny-schedule", "{r}");
    assert!(
        r["base_config"].as_str().unwrap().ends_with("base.toml"),
        "{r}"
    );
    let arms = r["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2, "{r}");
    for (arm, want) in arms.iter().zip(ARMS) {
        assert_eq!(arm["name"], want);
        let overrides = arm["overrides"].as_array().unwrap();
        if want == "edm" {
            assert!(overrides.is_empty(), "{arm}");
        } else {
            assert!(
                overrides
                    .iter()
                    .any(|o| o.as_str().unwrap().contains("optimal-loss")),
                "{arm}"
            );
        }
        let runs = arm["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{arm}");
        assert_eq!(runs[0]["seed"], 0);
        let points = runs[0]["points"].as_array().unwrap();
        assert_eq!(points.len(), 2, "{arm}");
        for (p, target) in points.iter().zip(EVAL_KIMG) {
            let kimg = finite(&p["kimg"], "kimg");
            // The first whole batch at or past the point.
            assert!(
                kimg >= target - 1e-9 && kimg < target + BATCH / 1000.0,
                "{want}: kimg {kimg} for the point {target}"
            );
            let fid = finite(&p["fid"], "fid");
            assert!(fid > 0.0, "{want}: FID {fid}");
            assert_eq!(p["fid_images"], 16, "{p}");
            let wall = finite(&p["wall_s"], "wall_s");
            assert!(wall >= 0.0, "{p}");
            let regions = p["gap_regions"].as_object().unwrap();
            let known: Vec<&String> = regions
                .keys()
                .filter(|k| ["below", "around", "above"].contains(&k.as_str()))
                .collect();
            assert!(!known.is_empty(), "{want}: gap_regions {p}");
            for k in known {
                finite(&regions[k]["gap"], &format!("{k}.gap"));
                let se = finite(&regions[k]["se"], &format!("{k}.se"));
                assert!(se >= 0.0, "{k}: se {se}");
            }
        }
        // Later points saw more images.
        assert!(
            points[1]["kimg"].as_f64().unwrap() > points[0]["kimg"].as_f64().unwrap(),
            "{arm}"
        );
    }
}

fn check_reports(out: &Path) {
    check_results(out);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for arm in ARMS {
        let row = format!("| {arm} |");
        assert!(
            md.lines().any(|l| l.starts_with(&row)),
            "no table row for {arm} in results.md:\n{md}"
        );
    }
    let png = std::fs::read(out.join("fid.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "fid.png is not a PNG");
}

#[test]
fn smoke_study_writes_results() {
    if !have_fashion() {
        return;
    }
    let Some(weights) = inception_weights() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let study = write_study(dir.path(), &eval_kimg_toml(), "");
    let out = dir.path().join("out");
    let o = study_cmd(&study, &out, &weights).output().unwrap();
    assert_ok(&o);
    check_reports(&out);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines = eval_lines(&stdout);
    assert_eq!(lines.len(), 4, "one line per evaluation:\n{stdout}");
    for arm in ARMS {
        let prefix = format!("{arm} seed 0 kimg ");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(&prefix)).count(),
            2,
            "{arm}:\n{stdout}"
        );
    }
    assert!(out.join("curve.json").is_file());
    assert!(out.join("fid-ref.npz").is_file());
}

#[test]
fn killed_study_resumes_without_redoing_finished_evaluations() {
    if !have_fashion() {
        return;
    }
    let Some(weights) = inception_weights() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let study = write_study(dir.path(), &eval_kimg_toml(), "");
    let out = dir.path().join("out");
    let log = std::fs::File::create(dir.path().join("killed.stderr")).unwrap();
    let mut child = study_cmd(&study, &out, &weights)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    let first = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l.contains("FID-16") => break l,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(t0.elapsed() < Duration::from_secs(240), "no evaluation");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                let err =
                    std::fs::read_to_string(dir.path().join("killed.stderr")).unwrap_or_default();
                panic!("the study ended ({status}) before its first evaluation: {err}");
            }
        }
    };
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap();
    assert!(still_running, "the study ended before the kill");
    assert!(first.starts_with("edm seed 0 kimg 0.1:"), "{first}");

    let finished: Vec<(String, f64, PathBuf, Vec<u8>)> = point_files(&out)
        .into_iter()
        .map(|(a, k, p)| {
            let bytes = std::fs::read(&p).unwrap();
            (a, k, p, bytes)
        })
        .collect();
    assert!(
        !finished.is_empty(),
        "no point file after the first evaluation"
    );
    assert!(
        finished.len() < 4,
        "every evaluation finished before the kill: nothing to resume"
    );
    assert!(!out.join("results.json").exists());
    let curve = std::fs::read(out.join("curve.json")).unwrap();
    let reference = std::fs::read(out.join("fid-ref.npz")).unwrap();

    let o = study_cmd(&study, &out, &weights).output().unwrap();
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines = eval_lines(&stdout);
    assert_eq!(
        lines.len(),
        4 - finished.len(),
        "the re-run evaluates only what was left:\n{stdout}"
    );
    for (arm, kimg, path, bytes) in &finished {
        let prefix = format!("{arm} seed 0 kimg {kimg:.1}:");
        assert!(
            !lines.iter().any(|l| l.starts_with(&prefix)),
            "{} was evaluated again:\n{stdout}",
            path.display()
        );
        assert!(
            &std::fs::read(path).unwrap() == bytes,
            "{} was rewritten",
            path.display()
        );
    }
    assert_eq!(std::fs::read(out.join("curve.json")).unwrap(), curve);
    assert_eq!(std::fs::read(out.join("fid-ref.npz")).unwrap(), reference);
    assert_eq!(point_files(&out).len(), 4);
    check_reports(&out);
}

/// Exactly one `error:` line; no panic, no backtrace.
fn one_error_line(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(!err.contains("stack backtrace"), "{err}");
    lines[0].to_string()
}

#[test]
fn study_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("no-weights.pt");
    let out = dir.path().join("out");
    let results = out.join("results.json");
    let timed = |study: &Path, extra: &[&str]| {
        let t0 = Instant::now();
        let mut c = study_cmd(study, &out, &weights);
        c.args(extra);
        let o = c.output().unwrap();
        let t = t0.elapsed();
        assert!(t < Duration::from_secs(10), "took {t:?}: {}", stderr(&o));
        o
    };

    // An arm name that the study file lacks.
    let study = write_study(dir.path(), &eval_kimg_toml(), "");
    let o = timed(&study, &["--arms", "edm,nope"]);
    assert_fails(&o, &["nope"], &[&results]);
    let line = one_error_line(&o);
    assert!(
        line.contains("--arms") && line.contains("\"nope\""),
        "{line}"
    );
    assert!(line.contains("edm, edm-optimal"), "{line}");
    assert!(!out.exists(), "the output folder was created");

    // An arm override with a key the config does not have.
    let sub = dir.path().join("key");
    std::fs::create_dir(&sub).unwrap();
    let study = write_study(
        &sub,
        &eval_kimg_toml(),
        "[[arms]]\nname = \"bad-key\"\nset = [\"schedule.nonsense=1\"]\n",
    );
    let o = timed(&study, &[]);
    assert_fails(&o, &["nonsense"], &[&results]);
    let line = one_error_line(&o);
    assert!(line.contains("bad-key"), "{line}");
    assert!(!out.exists(), "the output folder was created");

    // Evaluation points that do not increase.
    let sub = dir.path().join("order");
    std::fs::create_dir(&sub).unwrap();
    let study = write_study(&sub, "[0.256, 0.128]", "");
    let o = timed(&study, &[]);
    assert_fails(&o, &["eval_kimg"], &[&results]);
    let line = one_error_line(&o);
    assert!(
        line.contains("eval_kimg") && line.contains("study.toml"),
        "{line}"
    );
    assert!(!out.exists(), "the output folder was created");
}

#[test]
fn training_refuses_a_curve_of_other_data() {
    if !have_fashion() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let curve = dir.path().join("c.json");
    assert_ok(&lossfloor(&[
        "estimate",
        "--data",
        "fashion-mnist",
        "--limit",
        "64",
        "--method",
        "exact",
        "--queries",
        "16",
        "--sigmas",
        "logspace:0.01:10:4",
        "--out",
        s(&curve),
    ]));
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, base_config(128)).unwrap();
    let run_dir = dir.path().join("run");
    let curve_set = format!("optimal_loss.curve={:?}", s(&curve));
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            s(&cfg),
            "--run-dir",
            s(&run_dir),
            "--set",
            &curve_set,
            "--set",
            "train.duration_kimg=0.032",
        ];
        a.extend_from_slice(extra);
        let t0 = Instant::now();
        let o = lossfloor(&a);
        (o, t0.elapsed())
    };
    let (o, t) = train(&[]);
    assert_fails(
        &o,
        &[
            s(&curve),
            "rows N: curve 64, training data 128",
            "allow_mismatch",
        ],
        &[],
    );
    let line = one_error_line(&o);
    assert!(line.contains("c.json"), "{line}");
    assert!(t < Duration::from_secs(30), "took {t:?}");
    let snapshots = std::fs::read_dir(&run_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(snapshots, 0, "a refused run wrote a checkpoint");

    // Allowed: a warning names both sides, then the run trains its one step.
    let (o, _) = train(&["--set", "optimal_loss.allow_mismatch=true"]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("warning:") && err.contains("rows N: curve 64, training data 128"),
        "{err}"
    );
}
