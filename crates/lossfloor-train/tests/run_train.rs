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

#[test]
fn run_train_end_to_end_with_overrides_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("tiny.npy");
    write_npy(&npy, 12);
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(
        &cfg,
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
dropout = 0.1
[train]
batch = 4
duration_kimg = 0.008
tick_kimg = 0.004
"#,
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    let args = |duration: &str, resume: Option<&str>| TrainArgs {
        config: cfg.clone(),
        set: vec![
            format!("data.spec=npy:{}", npy.display()),
            "train.dropout=0".to_string(),
            format!("train.duration_kimg={duration}"),
        ],
        resume: resume.map(str::to_string),
        run_dir: Some(run_dir.clone()),
        // --device cpu: exercises the flag, which overrides train.device
        device: Some("cpu".to_string()),
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
