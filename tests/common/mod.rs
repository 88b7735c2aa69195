//! Helpers shared by the end-to-end tests of the `lossfloor` binary.
// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary under test with `args`.
pub fn lossfloor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lossfloor"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// The run's standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a successful run, showing its standard error otherwise.
pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "lossfloor failed: {}", stderr(o));
}

/// Asserts a failed run: non-zero exit, the message fragments on stderr, no panic, no output.
pub fn assert_fails(o: &Output, fragments: &[&str], outputs: &[&Path]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    for f in fragments {
        assert!(err.contains(f), "stderr lacks {f:?}: {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic: {err}"
    );
    for p in outputs {
        assert!(!p.exists(), "{} was written by a failed run", p.display());
    }
}

/// Writes a version-1 .npy file: header dict with `descr` and `shape`, then raw bytes.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    // numpy's own spelling: (3,) for one dimension, (2, 3) for more.
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    let mut h = header.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Writes little-endian f32 values as a .npy array of `shape`.
pub fn write_npy_f32(path: &Path, shape: &[usize], values: &[f32]) {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<f4", shape, &data);
}

/// The shape of a tiny training run ([`write_tiny_config`]): `steps` optimizer steps of
/// `batch` images (in rounds of `batch_gpu` when given), a tick every `tick_steps` steps.
pub struct TinyRun<'a> {
    pub file_name: &'a str,
    pub batch: u64,
    pub batch_gpu: Option<u64>,
    pub steps: u64,
    pub tick_steps: u64,
}

/// Writes `dir/data.npy` (16 fixed 8×8 images, once) and `dir/<file_name>`: a 2-level
/// DDPM++-style net on them with dropout and x-flips, a training state on every tick and a
/// snapshot every 5, seed 11. The runs of `tests/train_kill.rs` and `tests/ddp.rs`.
pub fn write_tiny_config(dir: &Path, run: &TinyRun) -> std::path::PathBuf {
    let npy = dir.join("data.npy");
    if !npy.exists() {
        let values: Vec<f32> = (0..16 * 64)
            .map(|i| ((i as f32) * 0.37).cos() * 0.8)
            .collect();
        write_npy_f32(&npy, &[16, 1, 8, 8], &values);
    }
    let batch_gpu = run
        .batch_gpu
        .map(|b| format!("batch_gpu = {b}\n"))
        .unwrap_or_default();
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
batch = {}
{batch_gpu}duration_kimg = {}
tick_kimg = {}
snapshot_ticks = 5
state_ticks = 1
seed = 11
"#,
        npy.display(),
        run.batch,
        (run.steps * run.batch) as f64 / 1000.0,
        (run.tick_steps * run.batch) as f64 / 1000.0,
    );
    let cfg = dir.join(run.file_name);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// The image count of the newest training state in `run_dir` (0 if none).
pub fn newest_state_nimg(run_dir: &Path) -> u64 {
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

/// Every tensor of the training state at `nimg` images in `run_dir`, as bits, sorted by name.
pub fn state_bits(run_dir: &Path, nimg: u64) -> Vec<(String, Vec<u32>)> {
    let path = run_dir.join(format!("training-state-{nimg:010}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out: Vec<(String, Vec<u32>)> = tensors
        .into_iter()
        .map(|(name, t)| (name, tensor_bits(&t)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A tensor's values as bits: f32 as they are, other dtypes through f64 (two words each).
pub fn tensor_bits(t: &candle_core::Tensor) -> Vec<u32> {
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
