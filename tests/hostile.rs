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

// ---- Item 2: no silently wrong results ----

/// Trains the tiny config of [`train_config`] for one tick in `dir/run` and returns its
/// network snapshot.
fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let npy = small_npy(dir);
    let cfg = train_config(dir, &npy);
    let run_dir = dir.join("run");
    let r = common::lossfloor(&[
        "train",
        cfg.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    common::assert_ok(&r);
    let snap = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("network-snapshot-"))
        .expect("a network snapshot");
    snap
}

/// Copies safetensors file `src` to `dst`, letting `edit` change the header entry and the
/// data bytes of the alphabetically first tensor whose name holds `conv` and `weight`.
/// Returns that tensor's name.
fn edit_first_conv(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut serde_json::Value, &mut [u8]),
) -> String {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    let mut names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.contains("conv") && k.contains("weight"))
        .cloned()
        .collect();
    names.sort();
    let name = names[0].clone();
    let entry = &mut header[&name];
    let off = entry["data_offsets"].as_array().unwrap().clone();
    let (s, e) = (
        off[0].as_u64().unwrap() as usize,
        off[1].as_u64().unwrap() as usize,
    );
    edit(entry, &mut data[s..e]);
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(dst, out).unwrap();
    name
}

/// `lossfloor sample --checkpoint CKPT --seeds 0-3 --grid DIR/grid.png`, asserting a clean
/// refusal with `fragments` and no grid.
fn sample_refused(dir: &Path, ckpt: &Path, extra: &[&str], fragments: &[&str]) {
    let grid = dir.join("grid.png");
    let mut args = vec![
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--grid",
        grid.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = run(dir, &args);
    assert_refused(&r, fragments, &[&grid], TWO_S);
}

#[test]
fn checkpoint_with_nan_or_inf_weights() {
    let dir = tempfile::tempdir().unwrap();
    let snap = tiny_checkpoint(dir.path());
    for (file, value) in [
        ("nan.safetensors", f32::NAN),
        ("inf.safetensors", f32::INFINITY),
    ] {
        let bad = dir.path().join(file);
        let name = edit_first_conv(&snap, &bad, |_, data| {
            data[..4].copy_from_slice(&value.to_le_bytes())
        });
        sample_refused(
            dir.path(),
            &bad,
            &["--seeds", "0-3"],
            &[file, &name, "NaN or infinite"],
        );
    }
}

#[test]
fn checkpoint_with_integer_weights() {
    let dir = tempfile::tempdir().unwrap();
    let snap = tiny_checkpoint(dir.path());
    let bad = dir.path().join("i32.safetensors");
    let name = edit_first_conv(&snap, &bad, |entry, _| {
        entry["dtype"] = serde_json::json!("I32");
    });
    sample_refused(
        dir.path(),
        &bad,
        &["--seeds", "0-3"],
        &["i32.safetensors", &name, "dtype I32", "F32"],
    );
}

#[test]
fn latents_with_nan() {
    let dir = tempfile::tempdir().unwrap();
    let snap = tiny_checkpoint(dir.path());
    let lat = dir.path().join("latents.npy");
    let mut values = vec![0.5f32; 2 * 64];
    values[64 + 10] = f32::NAN;
    write_npy_f32(&lat, &[2, 1, 8, 8], &values);
    sample_refused(
        dir.path(),
        &snap,
        &["--latents", lat.to_str().unwrap()],
        &["latents.npy", "value 74 (image 1) is NaN", "finite"],
    );
}

/// Writes FID statistics `mu`, `sigma` (d×d, row-major) as `.npz` like EDM's files.
fn write_ref(path: &Path, mu: &[f64], sigma: &[f64]) {
    let d = mu.len();
    let s = faer::Mat::from_fn(d, d, |i, j| sigma[i * d + j]);
    lossfloor_fid::save_stats_npz(path, mu, s.as_ref()).unwrap();
}

/// `fid calc --images IMAGES --ref REF --num 8`, asserting a clean refusal naming `file`
/// and holding `fragments`, with no `--out` written. These refusals come before the
/// Inception weights are loaded, so the test needs none.
fn fid_refused(dir: &Path, images: &Path, reference: &Path, fragments: &[&str]) {
    let out = dir.join("fid.json");
    let r = run(
        dir,
        &[
            "fid",
            "calc",
            "--images",
            images.to_str().unwrap(),
            "--ref",
            reference.to_str().unwrap(),
            "--num",
            "8",
            "--weights",
            "no-weights-needed.pt",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    // Not an allocation case: reading a 32 MB float64 reference and the eigenvalues of its
    // 2048x2048 sigma take about 2 s on 2 busy cores.
    assert_refused(&r, fragments, &[&out], Duration::from_secs(10));
}

/// 8 images of 1x8x8 with values `value(i)`.
fn images_npy(dir: &Path, name: &str, value: impl Fn(usize) -> f32) -> PathBuf {
    let p = dir.join(name);
    let values: Vec<f32> = (0..8 * 64).map(value).collect();
    write_npy_f32(&p, &[8, 1, 8, 8], &values);
    p
}

#[test]
fn fid_reference_that_is_not_a_covariance() {
    let dir = tempfile::tempdir().unwrap();
    let d = 2048;
    let images = images_npy(dir.path(), "ok.npy", |i| (i % 7) as f32 / 3.5 - 1.0);
    let eye = |scale: f64| -> Vec<f64> {
        (0..d * d)
            .map(|k| if k / d == k % d { scale } else { 0.0 })
            .collect()
    };
    // The issue's file: σ = −1000·I once printed "FID -2047678.8212".
    let neg = dir.path().join("negative.npz");
    write_ref(&neg, &vec![0.0; d], &eye(-1000.0));
    fid_refused(
        dir.path(),
        &images,
        &neg,
        &[
            "negative.npz",
            "smallest eigenvalue is -1.000000e3",
            "positive semi-definite",
        ],
    );
    let mut mu = vec![0.0; d];
    mu[5] = f64::NAN;
    let nan = dir.path().join("nan-mu.npz");
    write_ref(&nan, &mu, &eye(1.0));
    fid_refused(dir.path(), &images, &nan, &["nan-mu.npz", "mu[5] is NaN"]);
    let mut s = eye(1.0);
    s[1] = 0.5; // sigma[0, 1]
    let asym = dir.path().join("asymmetric.npz");
    write_ref(&asym, &vec![0.0; d], &s);
    fid_refused(
        dir.path(),
        &images,
        &asym,
        &["asymmetric.npz", "not symmetric", "sigma[0, 1] = 0.5"],
    );
    let small = dir.path().join("dim64.npz");
    write_ref(&small, &[0.0; 64], &eye(1.0)[..64 * 64]);
    fid_refused(
        dir.path(),
        &images,
        &small,
        &["dim64.npz", "64 values, expected 2048"],
    );
}

#[test]
fn fid_images_in_another_range() {
    let dir = tempfile::tempdir().unwrap();
    let d = 2048;
    let reference = dir.path().join("ref.npz");
    let eye: Vec<f64> = (0..d * d)
        .map(|k| if k / d == k % d { 1.0 } else { 0.0 })
        .collect();
    write_ref(&reference, &vec![0.0; d], &eye);
    // 0–255 floats, once clamped into a meaningless FID without a word.
    let bytes = images_npy(dir.path(), "floats255.npy", |i| (i % 256) as f32);
    fid_refused(
        dir.path(),
        &bytes,
        &reference,
        &["floats255.npy", "[0, 255]", "[−1, 1]", "x/127.5 − 1"],
    );
    let nan = images_npy(
        dir.path(),
        "nan.npy",
        |i| if i == 9 { f32::NAN } else { 0.0 },
    );
    fid_refused(dir.path(), &nan, &reference, &["nan.npy", "NaN", "finite"]);
}

// ---- Item 3: nothing half-written ----

/// A 64 KiB tmpfs mounted on a fresh folder, to run out of space on purpose; unmounted on
/// drop. None where mounting is not allowed (not root, or a container without the
/// capability), and the calling test then says it did not run.
struct FullDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl FullDisk {
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("full");
        std::fs::create_dir(&path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { _dir: dir, path })
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Asserts that a run failed cleanly on a full disk: exit 1, no panic or backtrace, every
/// line distinct (no "caused by" repeating the line above), "No space left" named (not
/// "invalid input"), and `disk` left empty.
fn assert_failed_for_space(r: &Run, disk: &Path) {
    let err = &r.stderr;
    assert_eq!(r.code, Some(1), "exit code {:?}; stderr: {err}", r.code);
    assert!(err.contains("No space left"), "stderr: {err}");
    assert!(!err.contains("invalid input"), "stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "stderr: {err}"
    );
    let lines: Vec<&str> = err
        .lines()
        .map(|l| l.trim_start_matches("  caused by: "))
        .collect();
    for w in lines.windows(2) {
        assert!(
            !w[0].contains(w[1]),
            "a cause repeats the line above: {err}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(disk)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind on the full disk: {left:?}");
}

#[test]
fn sample_outdir_on_a_full_disk_leaves_nothing() {
    let Some(disk) = FullDisk::mount() else {
        eprintln!("not run: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let snap = tiny_checkpoint(dir.path());
    // tmpfs gives each file at least a 4 KiB page, so 100 PNGs need more than 64 KiB: once,
    // the first 16 stayed behind.
    let out = disk.path.join("samples");
    let r = run(
        dir.path(),
        &[
            "sample",
            "--checkpoint",
            snap.to_str().unwrap(),
            "--seeds",
            "0-99",
            "--outdir",
            out.to_str().unwrap(),
            "--grid",
            disk.path.join("grid.png").to_str().unwrap(),
        ],
    );
    assert_failed_for_space(&r, &disk.path);
}

#[test]
fn estimate_outputs_appear_together_or_not_at_all() {
    let Some(disk) = FullDisk::mount() else {
        eprintln!("not run: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let npy = small_npy(dir.path());
    // The curve and its CSV fit in 64 KiB, the 960x640 plot does not: once, the JSON and
    // CSV were left without the plot.
    let out = |n: &str| disk.path.join(n).to_str().unwrap().to_string();
    let (json, csv, png) = (out("c.json"), out("c.csv"), out("c.png"));
    let r = run(
        dir.path(),
        &[
            "estimate",
            "--data",
            &format!("npy:{}", npy.display()),
            "--sigmas",
            "logspace:0.01:10:64",
            "--out",
            &json,
            "--csv",
            &csv,
            "--plot",
            &png,
        ],
    );
    assert_failed_for_space(&r, &disk.path);
}

#[test]
fn leftover_temporaries_are_removed_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let npy = small_npy(dir.path());
    let cfg = train_config(dir.path(), &npy);
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    // Pid 4194304 is above Linux's largest pid (2^22), so its writer is surely gone.
    let leftover = run_dir.join(".training-state-0000000016.safetensors.tmp4194304");
    std::fs::write(&leftover, b"half a file").unwrap();
    let r = common::lossfloor(&[
        "train",
        cfg.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    common::assert_ok(&r);
    assert!(!leftover.exists(), "the leftover is still there");
    assert!(common::stderr(&r).contains("tmp4194304: removed"));
}

// ---- Items 4 and 5: checked at start, messages a user can act on ----

#[test]
fn bad_sample_seeds_are_refused_at_start() {
    // Once: refused only after the first tick, with no key named and a snapshot left.
    train_refused(&["sample.seeds=z-q"], &["sample.seeds = \"z-q\"", "\"z\""]);
}

#[test]
fn output_channels_that_differ_from_the_input() {
    // Once: a candle shape error and a backtrace at the first step.
    train_refused(
        &["network.out_channels=2"],
        &["network.out_channels = 2", "network.in_channels = 1"],
    );
}

#[test]
fn set_errors_name_the_set_and_file_errors_the_line() {
    train_refused(
        &["train.batch=abc"],
        &["--set train.batch=abc", "expected a non-negative integer"],
    );
    let dir = tempfile::tempdir().unwrap();
    let npy = small_npy(dir.path());
    let cfg = train_config(dir.path(), &npy);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n[optimizer]\nlr = \"fast\"\n")).unwrap();
    let run_dir = dir.path().join("run");
    let r = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    );
    let line = text.lines().count() + 3;
    assert_refused(
        &r,
        &[
            "hostile.toml",
            &format!("line {line}, column 6"),
            "expected a number",
            "(at `lr = \"fast\"`)",
        ],
        &[&run_dir],
        TWO_S,
    );
    // A section given a value: serde once said "expected struct TrainConfig".
    std::fs::write(&cfg, format!("train = 3\n{text}")).unwrap();
    let r = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    );
    assert_refused(&r, &["hostile.toml", "line 1"], &[&run_dir], TWO_S);
    assert!(!r.stderr.contains("struct"), "{}", r.stderr);
}

#[test]
fn refused_resume_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let cfg = dir.path().join("hostile.toml");
    let run_dir = dir.path().join("run");
    let r = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--resume",
            "auto",
            "--set",
            "train.duration_kimg=0.032",
            "--set",
            "optimizer.lr=0.0005",
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("optimizer.lr: ") && r.stderr.contains("vs 0.0005"),
        "{}",
        r.stderr
    );
}

#[test]
fn channels_last_arrays_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nhwc.npy");
    write_npy_f32(&p, &[16, 8, 8, 3], &vec![0.25; 16 * 8 * 8 * 3]);
    let (r, out) = estimate(dir.path(), &format!("npy:{}", p.display()), &[]);
    assert_refused(
        &r,
        &[
            "nhwc.npy",
            "[16, 8, 8, 3]",
            "channels-last",
            "transpose(0, 3, 1, 2)",
        ],
        &[&out],
        TWO_S,
    );
}

#[test]
fn corrupt_png_chunks_are_described_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for k in 0..3u8 {
        let img = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 8 + y) as u8 + k]));
        img.save(images.join(format!("img{k:03}.png"))).unwrap();
    }
    // The issue's file: an IDAT chunk renamed IDA], whose decoder error once printed as
    // `ChunkType { type: IDA], critical: true, … }`.
    let bad = images.join("img001.png");
    let mut bytes = std::fs::read(&bad).unwrap();
    let at = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
    bytes[at + 3] = b']';
    std::fs::write(&bad, bytes).unwrap();
    let (r, out) = estimate(dir.path(), &format!("edm:{}", images.display()), &[]);
    assert_refused(&r, &["img001.png", "PNG"], &[&out], TWO_S);
    assert!(
        !r.stderr.contains('{') && !r.stderr.contains("ChunkType"),
        "{}",
        r.stderr
    );
}
