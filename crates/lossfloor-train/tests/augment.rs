//! `[augment]` in training: the config rules, what the network receives, the per-image streams.

mod common;

use lossfloor_train::augment_step::{augment_round, draw_records, AugmentConfig};
use lossfloor_train::config::Config;
use lossfloor_train::Trainer;

/// A tiny SongUNet on the 1×8×8 toy data; `network_extra` goes into `[network]`, `sections`
/// after it.
fn config_text(network_extra: &str, sections: &str) -> String {
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
{network_extra}
[train]
batch = 4
batch_gpu = 4
seed = 3
{sections}
"#
    )
}

const DIT: &str = r#"
[data]
spec = "npy:unused.npy"
[network]
arch = "dit"
input_size = 8
patch_size = 4
in_channels = 1
hidden_size = 32
depth = 1
num_heads = 2
num_classes = 10
learn_sigma = false
"#;

fn refusal(text: &str) -> String {
    match Config::parse(text, &[]) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn pipe_and_augment_dim_go_together_and_errors_name_both_keys() {
    // augmentation without the network's label input
    let e = refusal(&config_text("", "[augment]\np = 0.12"));
    assert!(
        e.contains("augment.p = 0.12") && e.contains("network.augment_dim = 9"),
        "{e}"
    );
    // the label input without augmentation: map_augment would never train
    let e = refusal(&config_text("augment_dim = 9", ""));
    assert!(
        e.contains("network.augment_dim = 9") && e.contains("augment.p"),
        "{e}"
    );
    // a label input of the wrong width
    let e = refusal(&config_text("augment_dim = 4", "[augment]\np = 0.12"));
    assert!(e.contains("augment.p = 0.12") && e.contains("not 4"), "{e}");
    // DiT has no augment input at all
    let e = refusal(&format!("{DIT}\n[augment]\np = 0.12"));
    assert!(
        e.contains("augment.p = 0.12") && e.contains("\"dit\""),
        "{e}"
    );
    // both set: accepted, with EDM's multipliers and the resolved config round-trips
    let cfg = Config::parse(&config_text("augment_dim = 9", "[augment]\np = 0.12"), &[]).unwrap();
    assert_eq!(cfg.augment.p, 0.12);
    assert_eq!(cfg.augment.xflip, 1e8);
    assert_eq!(cfg.augment.translate_frac_std, 0.125);
    assert_eq!(Config::parse(&cfg.to_toml().unwrap(), &[]).unwrap(), cfg);
    // neither set: off, DiT included
    assert!(!Config::parse(&config_text("", ""), &[])
        .unwrap()
        .augment
        .enabled());
    Config::parse(DIT, &[]).unwrap();
}

#[test]
fn out_of_range_augment_values_are_refused_by_name() {
    for (section, expected) in [
        ("p = 1.5", "augment.p = 1.5 must lie in [0, 1]"),
        ("p = -0.1", "augment.p = -0.1 must lie in [0, 1]"),
        ("p = nan", "augment.p = NaN must lie in [0, 1]"),
        (
            "p = 0.1\nxflip = -1",
            "augment.xflip = -1 must be a finite number >= 0",
        ),
        (
            "p = 0.1\nscale = inf",
            "augment.scale = inf must be a finite number >= 0",
        ),
        (
            "p = 0.1\ntranslate_frac_std = -0.5",
            "augment.translate_frac_std = -0.5",
        ),
        (
            "p = 0.1\naniso_rotate_prob = 2",
            "augment.aniso_rotate_prob = 2 must lie in [0, 1]",
        ),
        ("p = 0.1\nrotate = 1", "rotate"),
    ] {
        let e = refusal(&config_text(
            "augment_dim = 9",
            &format!("[augment]\n{section}"),
        ));
        assert!(e.contains(expected), "{section}: {e}");
    }
}

#[test]
fn every_parameter_including_map_augment_gets_a_gradient_with_augmentation() {
    let cfg = Config::parse(&config_text("augment_dim = 9", "[augment]\np = 0.5"), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(cfg, common::tiny_dataset(10), dir.path().join("run")).unwrap();
    let grads = trainer.round_gradients(0).unwrap();
    assert!(grads.iter().any(|(name, _)| name.contains("map_augment")));
    for (name, g) in &grads {
        let v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name}: non-finite gradient"
        );
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn records_are_keyed_by_step_and_position_not_by_round() {
    let cfg = AugmentConfig {
        p: 1.0,
        ..AugmentConfig::default()
    };
    let shape = [4, 1, 8, 8];
    let data = common::tiny_dataset(4);
    let mut clean = vec![0f32; 4 * 64];
    for (i, row) in clean.chunks_exact_mut(64).enumerate() {
        data.read_row(i, row);
    }
    // one round of 4 against two rounds of 2 (batch_gpu = 2)
    let mut whole = clean.clone();
    let labels = augment_round(&cfg, 3, 5, 0, &mut whole, shape)
        .unwrap()
        .unwrap();
    let mut halves = clean.clone();
    let (first, second) = halves.split_at_mut(2 * 64);
    let mut split_labels = augment_round(&cfg, 3, 5, 0, first, [2, 1, 8, 8])
        .unwrap()
        .unwrap();
    split_labels.extend(
        augment_round(&cfg, 3, 5, 2, second, [2, 1, 8, 8])
            .unwrap()
            .unwrap(),
    );
    assert_eq!(labels.len(), 4 * 9);
    assert_eq!(labels, split_labels);
    let diff = whole
        .iter()
        .zip(&halves)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-5, "split changes pixels by {diff}");
    assert!(whole.iter().zip(&clean).any(|(a, b)| (a - b).abs() > 0.1));
    // other steps and positions get other records
    assert_ne!(
        draw_records(&cfg, 3, 5, 0, 4),
        draw_records(&cfg, 3, 6, 0, 4)
    );
    assert_ne!(
        draw_records(&cfg, 3, 5, 0, 1),
        draw_records(&cfg, 3, 5, 1, 1)
    );
    // off: no labels, images untouched
    let mut untouched = clean.clone();
    let off = AugmentConfig::default();
    assert!(augment_round(&off, 3, 5, 0, &mut untouched, shape)
        .unwrap()
        .is_none());
    assert_eq!(untouched, clean);
}
