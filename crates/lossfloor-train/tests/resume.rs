mod common;

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use lossfloor_train::config::Config;
use lossfloor_train::state::{latest_state, load_state};
use lossfloor_train::{train_with_dataset, Resume, Trainer};

fn config(curve: &Path, duration_kimg: f64) -> Config {
    Config::parse(&config_text(curve, duration_kimg), &[]).unwrap()
}

/// [`config`] with EDM's augmentation pipe at p = 0.5 and the network's 9 label inputs.
fn augmented_config(curve: &Path, duration_kimg: f64) -> Config {
    let text = config_text(curve, duration_kimg)
        .replace("out_channels = 1\n", "out_channels = 1\naugment_dim = 9\n")
        + "[augment]\np = 0.5\n";
    let cfg = Config::parse(&text, &[]).unwrap();
    assert!(cfg.augment.enabled());
    cfg
}

fn config_text(curve: &Path, duration_kimg: f64) -> String {
    format!(
        r#"
[data]
spec = "npy:unused.npy"
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
[schedule]
kind = "optimal-loss"
refresh_kimg = 0.004
bins = 32
[optimizer]
lr = 1e-2
rampup_kimg = 0.01
grad_clip = 10.0
[ema]
halflife_kimg = 0.01
[train]
batch = 4
batch_gpu = 2
duration_kimg = {duration_kimg}
tick_kimg = 0.008
snapshot_ticks = 2
state_ticks = 100
seed = 7
[sample]
seeds = "0-3"
steps = 2
every_ticks = 2
[optimal_loss]
curve = "{}"
"#,
        curve.display()
    )
}

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn resumed_runs_equal_uninterrupted_run_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let curve = dir.path().join("curve.json");
    let mut toy = common::toy_curve();
    toy.dataset.n = 10; // the curve describes the 10-image data set below
    toy.save(&curve).unwrap();
    let steps = 6u64;
    let kimg = |s: u64| (s * 4) as f64 / 1000.0;
    let data = common::tiny_dataset(10); // 24 images per run: crosses epochs

    let t0 = Instant::now();
    let full = dir.path().join("full");
    train_with_dataset(
        config(&curve, kimg(steps)),
        data.clone(),
        &full,
        &Resume::No,
        false,
    )
    .unwrap();
    eprintln!("uninterrupted {steps} steps: {:.2?}", t0.elapsed());
    // starting again in the same directory without --resume is refused
    assert!(train_with_dataset(
        config(&curve, kimg(steps)),
        data.clone(),
        &full,
        &Resume::No,
        false
    )
    .is_err());
    let names = Trainer::new(config(&curve, 1.0), data.clone(), full.clone())
        .unwrap()
        .names()
        .to_vec();
    let (ref_t, ref_meta) = load_state(
        &latest_state(&full).unwrap().unwrap(),
        &names,
        0,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(ref_meta.step, steps);
    assert_eq!(ref_meta.nimg, steps * 4);
    assert!(ref_meta.schedule.as_ref().unwrap().probs.len() == 32);
    // stats.jsonl has one line per tick, with per-bin J* and gap
    let stats = std::fs::read_to_string(full.join("stats.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(stats.lines().next().unwrap()).unwrap();
    assert_eq!(first["bins"].as_array().unwrap().len(), 32);
    assert!(first["bins"][20]["jstar"].as_f64().is_some());
    assert_eq!(stats.lines().count(), 3);
    // the EMA snapshot loads with lossfloor-nets
    let snaps: Vec<_> = std::fs::read_dir(&full)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("network-snapshot-"))
        .collect();
    assert!(!snaps.is_empty());
    lossfloor_nets::checkpoint::load_network(&snaps[0], &Device::Cpu).unwrap();
    assert!(full.join("samples-0000000024.png").is_file());

    for j in [2u64, 3] {
        let part = dir.path().join(format!("part{j}"));
        train_with_dataset(
            config(&curve, kimg(j)),
            data.clone(),
            &part,
            &Resume::No,
            false,
        )
        .unwrap();
        train_with_dataset(
            config(&curve, kimg(steps)),
            data.clone(),
            &part,
            &Resume::Auto,
            false,
        )
        .unwrap();
        let (t, meta) = load_state(
            &latest_state(&part).unwrap().unwrap(),
            &names,
            0,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(meta.step, steps);
        assert_eq!(meta.adam_step, ref_meta.adam_step);
        assert_eq!(meta.schedule, ref_meta.schedule, "j = {j}");
        for (what, a, b) in [
            ("net", &t.net, &ref_t.net),
            ("ema", &t.ema, &ref_t.ema),
            ("adam_m", &t.adam_m, &ref_t.adam_m),
            ("adam_v", &t.adam_v, &ref_t.adam_v),
        ] {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                assert_eq!(bits(x), bits(y), "j = {j}: {what} {}", names[i]);
            }
        }
    }
    // the weights moved
    let fresh = Trainer::new(config(&curve, 1.0), data, dir.path().join("x")).unwrap();
    let t = fresh.tensors();
    assert!(t
        .net
        .iter()
        .zip(&ref_t.net)
        .any(|(a, b)| bits(a) != bits(b)));
}

/// A run with the power EMA and three post-hoc profiles.
fn power_config(duration_kimg: f64) -> Config {
    let text = format!(
        r#"
[data]
spec = "npy:unused.npy"
[network]
arch = "songunet"
img_resolution = 8
in_channels = 1
out_channels = 1
model_channels = 8
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
[optimizer]
lr = 1e-2
[ema]
kind = "power"
std = 0.1
stds = [0.05, 0.1, 0.2]
[train]
batch = 4
duration_kimg = {duration_kimg}
tick_kimg = 0.008
snapshot_ticks = 1
state_ticks = 100
seed = 3
"#
    );
    Config::parse(&text, &[]).unwrap()
}

#[test]
fn post_hoc_profiles_resume_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tiny_dataset(10);
    let kimg = |s: u64| (s * 4) as f64 / 1000.0;
    let full = dir.path().join("full");
    train_with_dataset(
        power_config(kimg(6)),
        data.clone(),
        &full,
        &Resume::No,
        false,
    )
    .unwrap();
    let names = Trainer::new(power_config(1.0), data.clone(), dir.path().join("x"))
        .unwrap()
        .names()
        .to_vec();
    let (ref_t, _) = load_state(
        &latest_state(&full).unwrap().unwrap(),
        &names,
        3,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(ref_t.profiles.len(), 3);
    // Every tick wrote one snapshot per profile; the 0.1 profile equals the run's EMA.
    for nimg in [8u64, 16, 24] {
        for std in [0.05, 0.1, 0.2] {
            let p = lossfloor_train::posthoc_ema::profile_snapshot_path(&full, nimg, std);
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    for (a, b) in ref_t.profiles[1].iter().zip(&ref_t.ema) {
        assert_eq!(bits(a), bits(b));
    }
    assert!(ref_t.profiles[0]
        .iter()
        .zip(&ref_t.profiles[2])
        .any(|(a, b)| bits(a) != bits(b)));
    let part = dir.path().join("part");
    train_with_dataset(
        power_config(kimg(2)),
        data.clone(),
        &part,
        &Resume::No,
        false,
    )
    .unwrap();
    train_with_dataset(power_config(kimg(6)), data, &part, &Resume::Auto, false).unwrap();
    let (t, _) = load_state(
        &latest_state(&part).unwrap().unwrap(),
        &names,
        3,
        &Device::Cpu,
    )
    .unwrap();
    for (k, (a, b)) in t.profiles.iter().zip(&ref_t.profiles).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(bits(x), bits(y), "profile {k}: {}", names[i]);
        }
    }
}

#[test]
fn resumed_runs_with_augmentation_equal_uninterrupted_run_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let curve = dir.path().join("curve.json");
    let mut toy = common::toy_curve();
    toy.dataset.n = 10;
    toy.save(&curve).unwrap();
    let steps = 4u64;
    let kimg = |s: u64| (s * 4) as f64 / 1000.0;
    let data = common::tiny_dataset(10);

    let full = dir.path().join("full");
    let cfg = augmented_config(&curve, kimg(steps));
    train_with_dataset(cfg, data.clone(), &full, &Resume::No, false).unwrap();
    let names = Trainer::new(augmented_config(&curve, 1.0), data.clone(), full.clone())
        .unwrap()
        .names()
        .to_vec();
    assert!(names.iter().any(|n| n.contains("map_augment")));
    let (ref_t, _) = load_state(
        &latest_state(&full).unwrap().unwrap(),
        &names,
        0,
        &Device::Cpu,
    )
    .unwrap();

    let part = dir.path().join("part");
    let cfg = augmented_config(&curve, kimg(2));
    train_with_dataset(cfg, data.clone(), &part, &Resume::No, false).unwrap();
    let cfg = augmented_config(&curve, kimg(steps));
    train_with_dataset(cfg, data.clone(), &part, &Resume::Auto, false).unwrap();
    let (t, meta) = load_state(
        &latest_state(&part).unwrap().unwrap(),
        &names,
        0,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(meta.step, steps);
    for (what, a, b) in [
        ("net", &t.net, &ref_t.net),
        ("ema", &t.ema, &ref_t.ema),
        ("adam_m", &t.adam_m, &ref_t.adam_m),
        ("adam_v", &t.adam_v, &ref_t.adam_v),
    ] {
        for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
            assert_eq!(bits(x), bits(y), "{what} {}", names[i]);
        }
    }
    // map_augment learned something: its Adam moment is not zero
    let i = names
        .iter()
        .position(|n| n.contains("map_augment"))
        .unwrap();
    assert!(bits(&ref_t.adam_m[i])
        .iter()
        .any(|&b| f32::from_bits(b) != 0.0));
}
