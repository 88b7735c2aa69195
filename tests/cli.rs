//! End-to-end tests of the `lossfloor` binary: real data, bad input, no partial outputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_fails, lossfloor, stderr, write_npy, write_npy_f32};

fn small_npy(dir: &Path) -> PathBuf {
    let p = dir.join("small.npy");
    let values: Vec<f32> = (0..40 * 3)
        .map(|i| ((i * 37 % 23) as f32 / 23.0) - 0.5)
        .collect();
    write_npy_f32(&p, &[40, 3], &values);
    p
}

#[test]
fn bad_input_gives_clear_errors_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("curve.json");
    let plot = dir.path().join("curve.png");
    let npy = small_npy(dir.path());
    let data = format!("npy:{}", npy.display());
    let o = out.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec!["estimate", "--out", o];
        a.extend_from_slice(extra);
        lossfloor(&a)
    };
    assert_fails(
        &run(&["--data", "npy:/nonexistent/x.npy"]),
        &["/nonexistent/x.npy"],
        &[&out],
    );
    assert_fails(
        &run(&["--data", "cifar10:/nonexistent"]),
        &["/nonexistent"],
        &[&out],
    );
    assert_fails(&run(&["--data", "bogus:1"]), &["bogus"], &[&out]);
    assert_fails(
        &run(&["--data", &data, "--device", "tpu"]),
        &[
            "--device \"tpu\"",
            "expected \"cpu\", \"cuda\" or \"cuda:N\"",
        ],
        &[&out],
    );
    // This test binary is built without the cuda feature: the error says how to get one.
    #[cfg(not(feature = "cuda"))]
    assert_fails(
        &run(&["--data", &data, "--device", "cuda:0"]),
        &["built without CUDA", "scripts/build-cuda.sh"],
        &[&out],
    );
    assert_fails(
        &run(&["--data", &data, "--sigmas", "0,1"]),
        &["σ = 0"],
        &[&out],
    );
    assert_fails(
        &run(&["--data", &data, "--sigmas", "-2"]),
        &["> 0"],
        &[&out],
    );
    assert_fails(
        &run(&["--data", &data, "--queries", "0"]),
        &["--queries"],
        &[&out],
    );
    assert_fails(
        &run(&["--data", &data, "--method", "magic"]),
        &["unknown method 'magic'"],
        &[&out],
    );
    assert_fails(
        &run(&["--data", &data, "--method", "dol", "--subset", "41"]),
        &["2 ≤ L ≤ 40"],
        &[&out],
    );
    assert_fails(
        &run(&["--data", &data, "--method", "snis", "--subset", "1"]),
        &["at least 2"],
        &[&out],
    );
    assert_fails(
        &run(&["--data", &data, "--method", "cdol", "--c", "0.5"]),
        &["C ≥ 1"],
        &[&out],
    );
    let missing_dir = dir.path().join("no/such/dir/c.json");
    assert_fails(
        &lossfloor(&[
            "estimate",
            "--data",
            &data,
            "--out",
            missing_dir.to_str().unwrap(),
        ]),
        &["does not exist"],
        &[&missing_dir],
    );

    // Non-finite values and truncated files are rejected with the file named.
    let nan = dir.path().join("nan.npy");
    write_npy_f32(&nan, &[2, 2], &[0.0, f32::NAN, 1.0, 2.0]);
    assert_fails(
        &run(&["--data", &format!("npy:{}", nan.display())]),
        &["nan.npy"],
        &[&out],
    );
    let truncated = dir.path().join("trunc.npy");
    let bytes = std::fs::read(&npy).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    assert_fails(
        &run(&["--data", &format!("npy:{}", truncated.display())]),
        &["trunc.npy"],
        &[&out],
    );

    // A good run writes the curve, the CSV and the plot.
    let csv = dir.path().join("curve.csv");
    let ok = run(&[
        "--data",
        &data,
        "--sigmas",
        "0.01,0.3,3",
        "--queries",
        "64",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let curve: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(curve["dataset"]["n"], 40);
    assert_eq!(curve["dataset"]["dim"], 3);
    assert_eq!(curve["method"], "exact");
    assert_eq!(curve["points"].as_array().unwrap().len(), 3);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 4);
    assert_eq!(&std::fs::read(&plot).unwrap()[..4], b"\x89PNG");

    // Reading a curve back: unit conversion and totals; a broken curve file is named.
    let shown = lossfloor(&["curve", o, "--target", "eps"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("edm") && text.contains("fm"), "{text}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{").unwrap();
    assert_fails(
        &lossfloor(&["curve", broken.to_str().unwrap()]),
        &["broken.json"],
        &[],
    );
}

#[test]
fn fashion_mnist_curve_has_the_expected_shape() {
    if !Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists() {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str, method: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut a = vec![
            "estimate",
            "--data",
            "fashion-mnist",
            "--sigmas",
            "0.01,0.3,3,10,80",
            "--method",
            method,
            "--queries",
            "384",
            "--out",
        ];
        a.push(out.to_str().unwrap());
        a.extend_from_slice(extra);
        let o = lossfloor(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        v
    };
    let exact = read("exact.json", "exact", &[]);
    assert_eq!(exact["dataset"]["n"], 60000);
    assert_eq!(exact["dataset"]["dim"], 784);
    let var = exact["data_variance"].as_f64().unwrap();
    let pts: Vec<(f64, f64)> = exact["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["loss"].as_f64().unwrap(), p["stderr"].as_f64().unwrap()))
        .collect();
    // Below σ* the posterior sits on the source image: J* vanishes.
    assert!(pts[0].0.abs() < 1e-6 && pts[1].0.abs() < 1e-6, "{pts:?}");
    // It increases with σ and, at σ = 80 ≫ the data scale, nearly reaches the data variance
    // (for a Gaussian with this variance J*(80) ≥ var·6400/(6400 + var) ≈ 0.99995·var).
    for w in pts.windows(2) {
        assert!(w[1].0 > w[0].0 - 3.0 * (w[0].1 + w[1].1), "{pts:?}");
    }
    assert!(
        (pts[4].0 - var).abs() < 0.02 * var,
        "J*(80) = {} vs variance {var}",
        pts[4].0
    );
    // cDOL (C = 4N/L) with L = 2048 agrees with the exact curve within a few error bars
    // plus its small bias (≤ 5% here) at σ = 3, the hard regime just above σ*.
    let cdol = read("cdol.json", "cdol", &["--subset", "2048"]);
    let c = &cdol["points"][2];
    let (cv, ce) = (c["loss"].as_f64().unwrap(), c["stderr"].as_f64().unwrap());
    assert!(
        (cv - pts[2].0).abs() < 4.0 * (ce + pts[2].1) + 0.05 * pts[2].0,
        "cdol {cv} ± {ce} vs exact {:?}",
        pts[2]
    );
}

#[test]
fn fid_of_a_set_against_itself_is_zero_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref.npz");
    let r = reference.to_str().unwrap();
    // Missing weights: the message says how to fetch them, nothing is written.
    let o = Command::new(env!("CARGO_BIN_EXE_lossfloor"))
        .args([
            "fid",
            "ref",
            "--data",
            "fashion-mnist:test",
            "--limit",
            "8",
            "--out",
            r,
        ])
        .env("LOSSFLOOR_INCEPTION", "/nonexistent/inception.pt")
        .output()
        .unwrap();
    assert_fails(&o, &["fetch-inception.sh"], &[&reference]);

    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weights/inception-2015-12-05.pt");
    let fashion = Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
    if !weights.exists() || !fashion.exists() {
        eprintln!("skipped: needs scripts/fetch-inception.sh and dataset-fashion-mnist");
        return;
    }
    let w = weights.to_str().unwrap();
    let o = lossfloor(&[
        "fid",
        "ref",
        "--data",
        "fashion-mnist:test",
        "--limit",
        "24",
        "--out",
        r,
        "--weights",
        w,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same 24 images as a uint8 .npy: FID 0 up to float64 rounding.
    let npy = dir.path().join("same.npy");
    let data = lossfloor_data::load(&"fashion-mnist:test".parse().unwrap())
        .unwrap()
        .take_first(24);
    let mut scratch = Vec::new();
    let bytes: Vec<u8> = data
        .rows(0, 24, &mut scratch)
        .iter()
        .map(|&x| ((x + 1.0) * 127.5).round() as u8)
        .collect();
    write_npy(&npy, "|u1", &[24, 1, 28, 28], &bytes);
    let result = dir.path().join("fid.json");
    let o = lossfloor(&[
        "fid",
        "calc",
        "--images",
        npy.to_str().unwrap(),
        "--ref",
        r,
        "--num",
        "24",
        "--weights",
        w,
        "--out",
        result.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert!(json["fid"].as_f64().unwrap().abs() < 1e-6, "{json}");
    assert_eq!(json["num_images"], 24);
    // Other images (training set) are a positive distance away.
    let other = dir.path().join("other.npy");
    let train = lossfloor_data::load(&"fashion-mnist".parse().unwrap())
        .unwrap()
        .take_first(24);
    let bytes: Vec<u8> = train
        .rows(0, 24, &mut scratch)
        .iter()
        .map(|&x| ((x + 1.0) * 127.5).round() as u8)
        .collect();
    write_npy(&other, "|u1", &[24, 1, 28, 28], &bytes);
    let o = lossfloor(&[
        "fid",
        "calc",
        "--images",
        other.to_str().unwrap(),
        "--ref",
        r,
        "--num",
        "24",
        "--weights",
        w,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let fid: f64 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(fid > 1.0, "{text}");
    // Asking for more images than there are is an error.
    let o = lossfloor(&[
        "fid",
        "calc",
        "--images",
        npy.to_str().unwrap(),
        "--ref",
        r,
        "--num",
        "25",
        "--weights",
        w,
    ]);
    assert_fails(&o, &["24 images found", "--num asks for 25"], &[]);
}

/// `lossfloor diagnose` on a stats.jsonl written here: the per-region gaps it prints are the
/// means of loss − J* over each third of the bins, and the plot is a PNG.
#[test]
fn diagnose_reads_stats_and_prints_region_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let line = |tick: u64, scale: f64| {
        let bins: Vec<serde_json::Value> = (0..6)
            .map(|i| {
                let sigma = 0.01 * 10f64.powi(i);
                let jstar = 0.01 * i as f64;
                serde_json::json!({
                    "sigma": sigma, "sigma_lo": sigma / 2.0, "sigma_hi": sigma * 2.0, "n": 32,
                    "loss": jstar + scale * (i + 1) as f64, "jstar": jstar, "gap": scale * (i + 1) as f64,
                })
            })
            .collect();
        serde_json::json!({"tick": tick, "kimg": tick as f64 * 0.5, "step": tick, "loss": 1.0, "bins": bins})
            .to_string()
    };
    std::fs::write(
        run.join("stats.jsonl"),
        format!("{}\n{}\n", line(0, 1.0), line(1, 0.1)),
    )
    .unwrap();
    let out = dir.path().join("gap.png");
    let diagnose = |run_dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "diagnose",
            run_dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        lossfloor(&args)
    };
    let o = diagnose(&run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    // Last tick (scale 0.1): gaps 0.1·(1..=6); thirds → 0.15, 0.35, 0.55.
    for want in ["1.5000e-1", "3.5000e-1", "5.5000e-1"] {
        assert!(text.contains(want), "{want} missing from {text}");
    }
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (1400, 600));
    // --tick 0 (scale 1): 1.5, 3.5, 5.5
    let o = diagnose(&run, &["--tick", "0"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("3.5000e0"));

    // Bad input: no stats file, a malformed line, a tick that does not exist.
    assert_fails(
        &diagnose(&dir.path().join("nothing"), &[]),
        &["stats.jsonl", "run directory"],
        &[],
    );
    std::fs::write(
        run.join("stats.jsonl"),
        format!("{}\nnot json\n", line(0, 1.0)),
    )
    .unwrap();
    assert_fails(
        &diagnose(&run, &[]),
        &["stats.jsonl line 2", "not JSON"],
        &[],
    );
    std::fs::write(run.join("stats.jsonl"), line(0, 1.0)).unwrap();
    assert_fails(&diagnose(&run, &["--tick", "9"]), &["--tick 9"], &[]);
}
