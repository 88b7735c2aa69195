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
