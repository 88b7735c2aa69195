//! End-to-end tests of the class-conditional options: `lossfloor estimate --conditional
//! [--per-class]` and `lossfloor sample --guidance`.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;
use common::{assert_fails, assert_ok, lossfloor, write_npy_f32};
use lossfloor_nets::checkpoint::{save_network, varmap_tensors, NetworkSpec, PrecondSpec};
use lossfloor_nets::SongUNetConfig;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An EDM-style folder of 12 grey 8×8 PNGs with `dataset.json` labels 0, 1, 2 (4 each).
fn labelled_folder(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    let mut labels = Vec::new();
    for k in 0..12u32 {
        let img = image::GrayImage::from_fn(8, 8, |x, y| {
            image::Luma([((x * 31 + y * 17 + k * 53) % 256) as u8])
        });
        let name = format!("img{k:03}.png");
        img.save(images.join(&name)).unwrap();
        labels.push(format!("[\"{name}\", {}]", k % 3));
    }
    std::fs::write(
        images.join("dataset.json"),
        format!("{{\"labels\": [{}]}}", labels.join(", ")),
    )
    .unwrap();
    images
}

#[test]
fn estimate_conditional_writes_the_conditional_and_per_class_curves() {
    let dir = tempfile::tempdir().unwrap();
    let images = labelled_folder(dir.path());
    let data = format!("edm:{}", images.display());
    let (out, per) = (dir.path().join("c.json"), dir.path().join("per.json"));
    let o = lossfloor(&[
        "estimate",
        "--data",
        &data,
        "--sigmas",
        "0.1,1,10",
        "--queries",
        "64",
        "--conditional",
        "--per-class",
        s(&per),
        "--out",
        s(&out),
    ]);
    assert_ok(&o);
    let curve: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(curve["dataset"]["conditional"], true);
    assert_eq!(curve["params"]["classes"], 3);
    let per: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&per).unwrap()).unwrap();
    let classes = per["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 3);
    // Equal classes of 4 images: weight 1/3 each, and the conditional floor is their mean.
    for k in 0..3 {
        let total: f64 = classes
            .iter()
            .map(|c| {
                c["weight"].as_f64().unwrap() * c["curve"]["points"][k]["loss"].as_f64().unwrap()
            })
            .sum();
        let got = curve["points"][k]["loss"].as_f64().unwrap();
        assert!(
            (got - total).abs() <= 1e-12 * got.abs().max(1e-12),
            "{got} {total}"
        );
    }
    assert_eq!(classes[1]["images"], 4);
    assert_eq!(classes[1]["label"], 1);
}

#[test]
fn estimate_conditional_without_labels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("x.npy");
    write_npy_f32(
        &npy,
        &[10, 4],
        &(0..40).map(|i| i as f32 / 40.0).collect::<Vec<_>>(),
    );
    let out = dir.path().join("c.json");
    let o = lossfloor(&[
        "estimate",
        "--data",
        &format!("npy:{}", npy.display()),
        "--conditional",
        "--out",
        s(&out),
    ]);
    assert_fails(&o, &["--conditional", "has no class labels"], &[&out]);
}

/// A tiny class-conditional SongUNet checkpoint (3 classes) with label dropout `p`.
fn checkpoint(dir: &Path, p: f64) -> PathBuf {
    let spec = NetworkSpec::SongUNet(SongUNetConfig {
        label_dim: 3,
        label_dropout: p,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![],
        ..SongUNetConfig::new(8, 3, 3)
    });
    let varmap = VarMap::new();
    spec.build(&varmap, &Device::Cpu, 11).unwrap();
    let precond = PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    };
    // A fresh network's output layers are zero (EDM's init), so its output ignores the label;
    // every weight is perturbed to make the labels matter.
    let tensors: Vec<_> = varmap_tensors(&varmap)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let noise = t.randn_like(0.0, 0.05).unwrap();
            (name, (t + noise).unwrap())
        })
        .collect();
    let path = dir.join(format!("net-{p}.safetensors"));
    save_network(&path, &spec, &precond, &tensors, &[]).unwrap();
    path
}

#[test]
fn sample_guidance_one_is_conditional_sampling_and_needs_label_dropout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = checkpoint(d, 0.1);
    let draw = |extra: &[&str], out: &Path| {
        let mut a = vec![
            "sample",
            "--checkpoint",
            s(&ckpt),
            "--seeds",
            "0-2",
            "--steps",
            "3",
            "--out-npy",
            s(out),
        ];
        a.extend_from_slice(extra);
        lossfloor(&a)
    };
    let (plain, w1, w2) = (d.join("plain.npy"), d.join("w1.npy"), d.join("w2.npy"));
    assert_ok(&draw(&[], &plain));
    assert_ok(&draw(&["--guidance", "1"], &w1));
    assert_ok(&draw(&["--guidance", "2"], &w2));
    // Bit for bit: W·D_cond + (1 − W)·D_uncond is D_cond at W = 1, and the batched pass gives
    // each row what it gives alone.
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&w1).unwrap());
    // (assert! rather than assert_ne!: a failure would print both files byte by byte.)
    assert!(std::fs::read(&plain).unwrap() != std::fs::read(&w2).unwrap());

    let no_dropout = checkpoint(d, 0.0);
    let out = d.join("bad.npy");
    let o = lossfloor(&[
        "sample",
        "--checkpoint",
        s(&no_dropout),
        "--seeds",
        "0",
        "--steps",
        "2",
        "--guidance",
        "2",
        "--out-npy",
        s(&out),
    ]);
    assert_fails(&o, &["--guidance", "label_dropout = 0"], &[&out]);
}
