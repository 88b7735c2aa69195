//! End-to-end tests of `lossfloor sample` on a tiny SongUNet checkpoint.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;
use common::{assert_fails, assert_ok, lossfloor, write_npy_f32};
use lossfloor_nets::checkpoint::{save_network, varmap_tensors, NetworkSpec, PrecondSpec};
use lossfloor_nets::SongUNetConfig;

fn tiny_config(label_dim: usize) -> SongUNetConfig {
    SongUNetConfig {
        label_dim,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![4],
        ..SongUNetConfig::new(8, 3, 3)
    }
}

const TINY_TOML: &str = "[network]\narch = \"songunet\"\nimg_resolution = 8\nin_channels = 3\n\
out_channels = 3\nmodel_channels = 8\nchannel_mult = [1, 2]\nnum_blocks = 1\n\
attn_resolutions = [4]\n[precond]\nprocess = \"edm\"\n";

/// A randomly initialised tiny SongUNet (EDM preconditioning) saved as a lossfloor
/// checkpoint, plus the same weights as a plain state dict.
fn checkpoint(dir: &Path, label_dim: usize) -> (PathBuf, PathBuf) {
    let spec = NetworkSpec::SongUNet(tiny_config(label_dim));
    let varmap = VarMap::new();
    spec.build(&varmap, &Device::Cpu, 11).unwrap();
    let tensors = varmap_tensors(&varmap).unwrap();
    let precond = PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    };
    let path = dir.join(format!("net{label_dim}.safetensors"));
    save_network(&path, &spec, &precond, &tensors, &[]).unwrap();
    let plain = dir.join(format!("plain{label_dim}.safetensors"));
    let map: std::collections::HashMap<_, _> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, &plain).unwrap();
    (path, plain)
}

/// Reads a little-endian f32 `.npy` (version 1): (shape text, values).
fn read_npy(path: &Path) -> (String, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + hlen]).into_owned();
    assert!(header.contains("'<f4'"), "{header}");
    let shape = header[header.find("'shape': (").unwrap() + 10..]
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    let values = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

/// A .npy array of `shape` with every value equal to `value`.
fn write_npy_filled(path: &Path, shape: &[usize], value: f32) {
    write_npy_f32(path, shape, &vec![value; shape.iter().product()]);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn grid_npy_and_per_seed_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _) = checkpoint(dir.path(), 0);
    let d = dir.path();
    let (grid, a, b, c) = (
        d.join("grid.png"),
        d.join("a.npy"),
        d.join("b.npy"),
        d.join("c.npy"),
    );
    let (out1, out2) = (d.join("imgs1"), d.join("imgs2"));
    // Batches of 3: seeds {0,1,2} and {3}.
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--seeds",
        "0-3",
        "--steps",
        "4",
        "--batch",
        "3",
        "--grid",
        s(&grid),
        "--out-npy",
        s(&a),
        "--outdir",
        s(&out1),
    ]);
    assert_ok(&o);
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (16, 16)); // 2x2 grid of 8x8
    let (shape, va) = read_npy(&a);
    assert_eq!(shape, "4, 3, 8, 8");
    assert!(va.iter().all(|v| v.is_finite()));
    for seed in 0..4 {
        assert!(out1.join(format!("{seed:06}.png")).is_file());
    }

    // Same seeds, another batch split: identical bytes.
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--seeds",
        "0-3",
        "--steps",
        "4",
        "--batch",
        "3",
        "--out-npy",
        s(&b),
    ]);
    assert_ok(&o);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // Seed 2 alone gives the image it had among 0-3.
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--seeds",
        "2",
        "--steps",
        "4",
        "--out-npy",
        s(&c),
        "--outdir",
        s(&out2),
    ]);
    assert_ok(&o);
    let (shape, vc) = read_npy(&c);
    assert_eq!(shape, "1, 3, 8, 8");
    let row = &va[2 * 192..3 * 192];
    let max_diff = row
        .iter()
        .zip(&vc)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-5, "seed 2 differs by {max_diff}");
    let p1 = image::open(out1.join("000002.png")).unwrap().to_rgb8();
    let p2 = image::open(out2.join("000002.png")).unwrap().to_rgb8();
    assert_eq!(p1.as_raw(), p2.as_raw());
}

#[test]
fn class_conditional_plain_state_dict_and_latents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ckpt, plain) = checkpoint(d, 3);
    let toml = d.join("net.toml");
    std::fs::write(
        &toml,
        TINY_TOML.replace("out_channels = 3\n", "out_channels = 3\nlabel_dim = 3\n"),
    )
    .unwrap();
    let (a, b) = (d.join("a.npy"), d.join("b.npy"));
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--seeds",
        "0-1",
        "--steps",
        "2",
        "--class",
        "1",
        "--out-npy",
        s(&a),
    ]);
    assert_ok(&o);
    // The plain state dict with its TOML gives the same samples.
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&plain),
        "--config",
        s(&toml),
        "--seeds",
        "0-1",
        "--steps",
        "2",
        "--class",
        "1",
        "--out-npy",
        s(&b),
    ]);
    assert_ok(&o);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // Class out of range.
    let c = d.join("c.npy");
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--seeds",
        "0",
        "--class",
        "3",
        "--out-npy",
        s(&c),
    ]);
    assert_fails(&o, &["--class 3 out of range"], &[&c]);

    // Latents from a file: N = 2 images, seeds 0..1 implied; classes drawn per seed.
    let lat = d.join("lat.npy");
    write_npy_filled(&lat, &[2, 3, 8, 8], 0.5);
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--latents",
        s(&lat),
        "--steps",
        "2",
        "--out-npy",
        s(&c),
    ]);
    assert_ok(&o);
    assert_eq!(read_npy(&c).0, "2, 3, 8, 8");
}

#[test]
fn bad_inputs_fail_cleanly_without_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ckpt, plain) = checkpoint(d, 0);
    let (grid, npy, outdir) = (d.join("g.png"), d.join("o.npy"), d.join("imgs"));
    let outs: [&Path; 3] = [&grid, &npy, &outdir];
    let base = |ck: &Path| -> Vec<String> {
        [
            "sample",
            "--checkpoint",
            s(ck),
            "--seeds",
            "0-1",
            "--steps",
            "2",
            "--grid",
            s(&grid),
            "--out-npy",
            s(&npy),
            "--outdir",
            s(&outdir),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        lossfloor(&refs)
    };

    // Missing checkpoint.
    let o = run(base(&d.join("missing.safetensors")));
    assert_fails(&o, &["missing.safetensors"], &outs);

    // Config / tensor mismatch: the TOML asks for 16 channels, the file has 8.
    let toml = d.join("wide.toml");
    std::fs::write(
        &toml,
        TINY_TOML.replace("model_channels = 8", "model_channels = 16"),
    )
    .unwrap();
    let mut args = base(&plain);
    args.extend(["--config".into(), s(&toml).into()]);
    let o = run(args);
    assert_fails(
        &o,
        &[
            "plain0.safetensors",
            "model.map_layer0.weight",
            "[32, 8]",
            "[64, 16]",
        ],
        &outs,
    );

    // A plain state dict without --config.
    let o = run(base(&plain));
    assert_fails(&o, &["lossfloor.format"], &outs);

    // Latents of the wrong shape.
    let lat = d.join("lat.npy");
    write_npy_filled(&lat, &[2, 3, 4, 4], 0.0);
    let mut args = base(&ckpt);
    args.extend(["--latents".into(), s(&lat).into()]);
    let o = run(args);
    assert_fails(&o, &["lat.npy", "[2, 3, 4, 4]"], &outs);

    // Latents whose count disagrees with --seeds.
    write_npy_filled(&lat, &[3, 3, 8, 8], 0.0);
    let mut args = base(&ckpt);
    args.extend(["--latents".into(), s(&lat).into()]);
    let o = run(args);
    assert_fails(&o, &["3 images", "2 seeds"], &outs);

    // Zero steps.
    let mut args = base(&ckpt);
    args[6] = "0".into();
    let o = run(args);
    assert_fails(&o, &["num_steps"], &outs);

    // No output.
    let o = lossfloor(&["sample", "--checkpoint", s(&ckpt), "--seeds", "0"]);
    assert_fails(&o, &["no output"], &[]);

    // Output folder that does not exist.
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--seeds",
        "0",
        "--grid",
        s(&d.join("nodir").join("g.png")),
    ]);
    assert_fails(&o, &["nodir"], &[]);

    // --class on an unconditional network.
    let mut args = base(&ckpt);
    args.extend(["--class".into(), "0".into()]);
    let o = run(args);
    assert_fails(&o, &["unconditional"], &outs);
}

/// `fid calc --checkpoint` measures exactly the images `lossfloor sample` draws for the
/// same seeds: against reference statistics of those very images its FID is 0.
#[test]
fn fid_calc_from_a_checkpoint_matches_the_sampled_images() {
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weights/inception-2015-12-05.pt");
    if !weights.exists() {
        eprintln!("skipped: needs scripts/fetch-inception.sh");
        return;
    }
    let w = s(&weights);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ckpt, _) = checkpoint(d, 0);
    let npy = d.join("x.npy");
    assert_ok(&lossfloor(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--seeds",
        "0-5",
        "--steps",
        "3",
        "--out-npy",
        s(&npy),
    ]));
    let reference = d.join("ref.npz");
    let npy_spec = format!("npy:{}", s(&npy));
    assert_ok(&lossfloor(&[
        "fid",
        "ref",
        "--data",
        &npy_spec,
        "--out",
        s(&reference),
        "--weights",
        w,
    ]));
    let result = d.join("fid.json");
    let calc = |seeds: &str, out: Option<&Path>| {
        let mut args = vec![
            "fid",
            "calc",
            "--checkpoint",
            s(&ckpt),
            "--seeds",
            seeds,
            "--steps",
            "3",
            "--sample-batch",
            "4",
            "--ref",
            s(&reference),
            "--weights",
            w,
        ];
        if let Some(o) = out {
            args.extend(["--out", s(o)]);
        }
        lossfloor(&args)
    };
    assert_ok(&calc("0-5", Some(&result)));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert!(json["fid"].as_f64().unwrap().abs() < 1e-6, "{json}");
    assert_eq!(json["num_images"], 6);
    assert_eq!(json["seeds"], "0-5");
    assert_eq!(json["sampler"]["steps"], 3);
    assert_eq!(json["checkpoint_sha256"].as_str().unwrap().len(), 64);
    // other seeds, other images: a positive distance
    let o = calc("6-11", None);
    assert_ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    let fid: f64 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(fid > 1e-3, "{text}");
    // --num contradicting --seeds, and --images with --checkpoint, are refused
    let o = lossfloor(&[
        "fid",
        "calc",
        "--checkpoint",
        s(&ckpt),
        "--seeds",
        "0-5",
        "--num",
        "7",
        "--ref",
        s(&reference),
        "--weights",
        w,
    ]);
    assert_fails(&o, &["lists 6 seeds", "--num is 7"], &[]);
    let o = lossfloor(&[
        "fid",
        "calc",
        "--checkpoint",
        s(&ckpt),
        "--images",
        s(&npy),
        "--ref",
        s(&reference),
    ]);
    assert_fails(&o, &["--images", "--checkpoint"], &[]);
}
