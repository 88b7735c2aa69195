use std::path::Path;

use candle_core::Device;
use candle_nn::VarMap;
use lossfloor_train::config::{apply_override, Config, LossWeight};

fn configs_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

const MINIMAL: &str = r#"
[data]
spec = "fashion-mnist"
[network]
arch = "songunet"
img_resolution = 28
in_channels = 1
out_channels = 1
model_channels = 16
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
"#;

#[test]
fn every_shipped_config_parses_and_builds() {
    let mut n = 0;
    let mut paths: Vec<_> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        // Study files (`lossfloor study`, top-level [[arms]]) are not training configs;
        // their base config must be one, and is checked as such in this loop.
        let text = std::fs::read_to_string(&p).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        if let Some(base) = table.get("arms").and(table.get("base")) {
            let base = configs_dir().join(base.as_str().unwrap());
            assert!(
                base.is_file(),
                "{}: base {} missing",
                p.display(),
                base.display()
            );
            continue;
        }
        let cfg = Config::load(&p, &[]).unwrap_or_else(|e| panic!("{e:#}"));
        // the resolved config parses back to the same config
        let again = Config::parse(&cfg.to_toml().unwrap(), &[]).unwrap();
        assert_eq!(again, cfg, "{}", p.display());
        let varmap = VarMap::new();
        let net = cfg
            .effective_network()
            .build(&varmap, &Device::Cpu, 0)
            .unwrap();
        // GPU recipes split their batch for an 80 GB GPU (docs/config.md, `batch_gpu`)
        if cfg.train.device.starts_with("cuda") {
            assert!(
                cfg.train.batch_gpu.is_some_and(|bg| bg < cfg.train.batch),
                "{}: no batch_gpu below batch",
                p.display()
            );
        }
        // EDM's CIFAR-10 recipes augment with p = 0.12 (train.py's default --augment)
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("cifar10-") {
            assert_eq!(cfg.augment.p, 0.12, "{name}");
        }
        let params = net.num_parameters();
        eprintln!("{}: {} parameters", p.display(), params);
        assert!(params > 100_000, "{}", p.display());
        n += 1;
    }
    assert!(n >= 6, "expected at least 6 configs, found {n}");
}

#[test]
fn defaults_follow_edm() {
    let cfg = Config::parse(MINIMAL, &[]).unwrap();
    assert_eq!(cfg.optimizer.lr, 1e-3);
    assert_eq!(cfg.optimizer.betas, [0.9, 0.999]);
    assert_eq!(cfg.optimizer.rampup_kimg, 10000.0);
    assert_eq!(cfg.ema.halflife_kimg, 500.0);
    assert_eq!(cfg.ema.rampup_ratio, 0.05);
    assert_eq!(cfg.train.batch, 512);
    assert_eq!(cfg.loss_weight(), LossWeight::Native);
    assert_eq!(cfg.precond.process.as_str(), "edm");
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let e = Config::parse(&format!("{MINIMAL}\n[train]\nbatchsize = 3\n"), &[]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("batchsize"), "{msg}");
    let e = Config::parse(&MINIMAL.replace("num_blocks", "num_blokcs"), &[]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("network.num_blokcs"), "{msg}");
    let e = Config::parse(&format!("{MINIMAL}\n[trian]\nbatch = 3\n"), &[]).unwrap_err();
    assert!(format!("{e:#}").contains("trian"));
    // a wrong type names the key and its line
    let e = Config::parse(&format!("{MINIMAL}\n[train]\nbatch = \"x\"\n"), &[]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("batch") && msg.contains("line"), "{msg}");
}

#[test]
fn power_ema_is_configurable_and_checked() {
    let cfg = Config::parse(
        &format!("{MINIMAL}\n[ema]\nkind = \"power\"\nstd = 0.1\n"),
        &[],
    )
    .unwrap();
    assert_eq!(cfg.ema.kind, lossfloor_train::config::EmaKind::Power);
    for bad in ["std = 0.3", "std = 0", "kind = \"powr\""] {
        let e = Config::parse(&format!("{MINIMAL}\n[ema]\n{bad}\n"), &[]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("std") || msg.contains("powr"), "{bad}: {msg}");
    }
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, format!("{MINIMAL}\n[optimizer]\nlr = -1\n")).unwrap();
    let msg = format!("{:#}", Config::load(&p, &[]).unwrap_err());
    assert!(msg.contains("bad.toml") && msg.contains("lr"), "{msg}");
}

#[test]
fn overrides_apply_as_toml_values() {
    let sets = [
        "train.batch=64".to_string(),
        "optimizer.lr = 2e-4".to_string(),
        "optimizer.betas=[0.9, 0.99]".to_string(),
        "network.channel_mult=[1,1]".to_string(),
        "data.spec=npy:/tmp/x.npy".to_string(),
        "train.device=cpu".to_string(),
    ];
    let cfg = Config::parse(MINIMAL, &sets).unwrap();
    assert_eq!(cfg.train.batch, 64);
    assert_eq!(cfg.optimizer.lr, 2e-4);
    assert_eq!(cfg.optimizer.betas, [0.9, 0.99]);
    assert_eq!(cfg.data.spec, "npy:/tmp/x.npy");
    let e = Config::parse(MINIMAL, &["train.bogus=1".to_string()]).unwrap_err();
    assert!(format!("{e:#}").contains("bogus"));
    let mut t = toml::Table::new();
    assert!(apply_override(&mut t, "novalue").is_err());
}

#[test]
fn optimal_loss_needs_a_curve() {
    let e = Config::parse(MINIMAL, &["schedule.kind=optimal-loss".to_string()]).unwrap_err();
    assert!(format!("{e:#}").contains("optimal_loss.curve"));
    let cfg = Config::parse(
        MINIMAL,
        &[
            "schedule.kind=optimal-loss".to_string(),
            "optimal_loss.curve=c.json".to_string(),
        ],
    )
    .unwrap();
    assert_eq!(cfg.loss_weight(), LossWeight::OptimalLoss);
}

#[test]
fn precond_section_without_process_uses_the_documented_default() {
    let cfg = Config::parse(&format!("{MINIMAL}\n[precond]\nsigma_data = 0.25\n"), &[]).unwrap();
    assert_eq!(cfg.precond.process, lossfloor_core::ProcessKind::Edm);
    assert_eq!(cfg.precond.sigma_data, Some(0.25));
    assert_eq!(cfg.precond, {
        let mut p = Config::parse(MINIMAL, &[]).unwrap().precond;
        p.sigma_data = Some(0.25);
        p
    });
}

#[test]
fn toml_errors_are_blamed_on_the_line_or_the_set() {
    // A wrong type in the file: its line and column, and the source line.
    let text = format!("{MINIMAL}[train]\nbatch = -3\n");
    let e = format!("{:#}", Config::parse(&text, &[]).unwrap_err());
    let line = text.lines().count();
    assert!(e.starts_with(&format!("line {line}, column 9: ")), "{e}");
    assert!(e.contains("(at `batch = -3`)") && !e.contains('\n'), "{e}");
    // The same value from a --set: the --set is named, with no line of a rewritten file.
    let e = format!(
        "{:#}",
        Config::parse(MINIMAL, &["train.seed=1".into(), "train.batch=-3".into()]).unwrap_err()
    );
    assert!(e.starts_with("--set train.batch=-3: "), "{e}");
    assert!(!e.contains("line "), "{e}");
    // A file error stays the file's, even when --set options are given.
    let e = format!(
        "{:#}",
        Config::parse(&text, &["train.seed=1".into()]).unwrap_err()
    );
    assert!(e.starts_with(&format!("line {line}, ")), "{e}");
}

#[test]
fn config_differences_name_each_key() {
    let a = Config::parse(MINIMAL, &[]).unwrap();
    let b = Config::parse(MINIMAL, &["optimizer.lr=0.5".into(), "train.seed=3".into()]).unwrap();
    let d = lossfloor_train::config::config_differences(&a, &b).unwrap();
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[0].starts_with("optimizer.lr: ") && d[0].ends_with(" vs 0.5"),
        "{d:?}"
    );
    assert_eq!(d[1], "train.seed: 0 vs 3");
    assert!(lossfloor_train::config::config_differences(&a, &a)
        .unwrap()
        .is_empty());
}
