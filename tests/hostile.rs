//! Hostile inputs (issue 15, item 1): sizes declared by files or chosen by the user are
//! checked before memory is allocated. Each case runs the built binary with
//! `RUST_BACKTRACE=1` and under a 4 GiB address-space limit (so that a regression aborts
//! quickly instead of eating the machine), and asserts exit code 1 (not an abort, 134, or a
//! panic, 101), a single `error:` line naming the file, key or value, no backtrace, no
//! output left behind, and a run time under 2 s (1 s for `--threads`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::write_npy_f32;

/// Address-space limit of the child, in KiB (`ulimit -v`).
const VMEM_KIB: u64 = 4 << 20;
/// A run still going after this long is killed and the test fails.
const KILL_AFTER: Duration = Duration::from_secs(20);

struct Run {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
}

/// Runs the binary with `args` in `cwd`, `RUST_BACKTRACE=1` set, under the memory limit.
fn run(cwd: &Path, args: &[&str]) -> Run {
    let t = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {VMEM_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_lossfloor"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > KILL_AFTER {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("lossfloor {args:?} still ran after {KILL_AFTER:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: t.elapsed(),
    }
}

/// Asserts a clean refusal: exit code 1, one `error:` line holding every fragment, no panic
/// or backtrace, within `limit`, and none of `outputs` written.
fn assert_refused(r: &Run, fragments: &[&str], outputs: &[&Path], limit: Duration) {
    let err = &r.stderr;
    // 134 = SIGABRT (a failed allocation), 101 = a panic; None = killed by a signal.
    assert_eq!(r.code, Some(1), "exit code {:?}; stderr: {err}", r.code);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {err}");
    assert!(lines[0].starts_with("error: "), "not an error line: {err}");
    for f in fragments {
        assert!(err.contains(f), "stderr lacks {f:?}: {err}");
    }
    for bad in [
        "panicked",
        "stack backtrace",
        "RUST_BACKTRACE",
        "memory allocation of",
    ] {
        assert!(!err.contains(bad), "stderr holds {bad:?}: {err}");
    }
    assert!(
        r.elapsed < limit,
        "took {:?} (limit {limit:?}); stderr: {err}",
        r.elapsed
    );
    for p in outputs {
        assert!(!p.exists(), "{} was written by a failed run", p.display());
    }
}

const TWO_S: Duration = Duration::from_secs(2);

/// 16 images of 1x8x8 as float32 `.npy`.
fn small_npy(dir: &Path) -> PathBuf {
    let p = dir.join("small.npy");
    let values: Vec<f32> = (0..16 * 64)
        .map(|i| ((i * 37 % 23) as f32 / 23.0) - 0.5)
        .collect();
    write_npy_f32(&p, &[16, 1, 8, 8], &values);
    p
}

/// `lossfloor estimate --data SPEC --out DIR/curve.json EXTRA…`; returns the run and the
/// output path.
fn estimate(dir: &Path, data: &str, extra: &[&str]) -> (Run, PathBuf) {
    let out = dir.join("curve.json");
    let mut args = vec!["estimate", "--data", data, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    (run(dir, &args), out)
}

#[test]
fn npy_shape_larger_than_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The issue's file: a header claiming 10^12 images of 1x8x8 floats (256 TB), no data.
    let p = dir.path().join("huge.npy");
    common::write_npy(&p, "<f4", &[1_000_000_000_000, 1, 8, 8], &[]);
    let (r, out) = estimate(dir.path(), &format!("npy:{}", p.display()), &[]);
    assert_refused(
        &r,
        &[
            "huge.npy",
            "[1000000000000, 1, 8, 8]",
            "256000000000000 bytes",
            "found 0 bytes",
        ],
        &[&out],
        TWO_S,
    );
}

#[test]
fn idx_dims_that_overflow() {
    let dir = tempfile::tempdir().unwrap();
    // 2^31 x 2^31 x 4 wraps to 0 in 64-bit arithmetic: once read as "0 images".
    let p = dir.path().join("wrap-images-idx3-ubyte");
    let mut bytes = vec![0, 0, 8, 3];
    for d in [1u32 << 31, 1 << 31, 4] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    std::fs::write(&p, bytes).unwrap();
    let (r, out) = estimate(dir.path(), &format!("idx:{}", p.display()), &[]);
    assert_refused(
        &r,
        &[
            "wrap-images-idx3-ubyte",
            "2147483648x2147483648x4",
            "overflows",
            "holds 0 data bytes",
        ],
        &[&out],
        TWO_S,
    );
}

#[test]
fn sigmas_logspace_count_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let npy = small_npy(dir.path());
    let (r, out) = estimate(
        dir.path(),
        &format!("npy:{}", npy.display()),
        &["--sigmas", "logspace:0.1:1:100000000000"],
    );
    assert_refused(
        &r,
        &["--sigmas", "K = 100000000000", "10000"],
        &[&out],
        TWO_S,
    );
}

#[test]
fn threads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let npy = small_npy(dir.path());
    let (r, out) = estimate(
        dir.path(),
        &format!("npy:{}", npy.display()),
        &["--threads", "100000"],
    );
    assert_refused(
        &r,
        &["--threads 100000", "cores"],
        &[&out],
        Duration::from_secs(1),
    );
}

#[test]
fn queries_beyond_memory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let npy = small_npy(dir.path());
    let (r, out) = estimate(
        dir.path(),
        &format!("npy:{}", npy.display()),
        &["--queries", "100000000000"],
    );
    assert_refused(
        &r,
        &["--queries 100000000000", "needs", "of memory"],
        &[&out],
        TWO_S,
    );
}

/// A small training config over `data` (a SongUNet on 1x8x8), plus `extra` TOML lines
/// appended to `[train]`.
fn train_config(dir: &Path, data: &Path) -> PathBuf {
    let p = dir.join("hostile.toml");
    std::fs::write(
        &p,
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

[train]
batch = 16
duration_kimg = 0.016
tick_kimg = 0.016
"#,
            data.display()
        ),
    )
    .unwrap();
    p
}

/// `lossfloor train CONFIG --run-dir DIR/run --set S…`, asserting a clean refusal with
/// `fragments` and no run directory made.
fn train_refused(sets: &[&str], fragments: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let npy = small_npy(dir.path());
    let cfg = train_config(dir.path(), &npy);
    let run_dir = dir.path().join("run");
    let mut args = vec![
        "train",
        cfg.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
    ];
    for s in sets {
        args.extend_from_slice(&["--set", s]);
    }
    let r = run(dir.path(), &args);
    let mut all = vec!["hostile.toml"];
    all.extend_from_slice(fragments);
    assert_refused(&r, &all, &[&run_dir], TWO_S);
}

#[test]
fn train_batch_beyond_memory() {
    // Once: a 4 TB allocation, exit 134.
    train_refused(
        &["train.batch=1000000000000"],
        &["train.batch = 1000000000000", "needs", "of memory"],
    );
}

#[test]
fn train_batch_i64_max() {
    // Once: "capacity overflow" panic.
    train_refused(
        &["train.batch=9223372036854775807"],
        &["train.batch = 9223372036854775807", "needs", "of memory"],
    );
}

#[test]
fn train_batch_gpu_beyond_memory() {
    train_refused(
        &["train.batch=2000000000000", "train.batch_gpu=1000000000000"],
        &["train.batch_gpu = 1000000000000", "needs", "of memory"],
    );
}

#[test]
fn model_channels_beyond_memory() {
    train_refused(
        &["network.model_channels=1000000"],
        &["network.model_channels = 1000000", "needs", "of memory"],
    );
}

#[test]
fn infinite_learning_rate() {
    train_refused(&["optimizer.lr=inf"], &["optimizer.lr = inf", "finite"]);
}
