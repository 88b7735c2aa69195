//! End-to-end tests of `lossfloor augment`: given records, a dataset preview, bad input.

mod common;

use std::path::Path;

use common::{assert_fails, assert_ok, lossfloor, write_npy_f32};
use lossfloor_augment::{apply, AugmentParams, LABEL_DIM};

const PARAMS_JSON: &str = r#"[
  {"xflip": 1, "yflip": 0, "scale": 0.5, "rotate": 0.3, "aniso": 0, "aniso_angle": 0, "tx": 0.2, "ty": -0.1},
  {"xflip": 0, "yflip": 1, "scale": 0, "rotate": 0, "aniso": -1.0, "aniso_angle": 0.7, "tx": 0, "ty": 0},
  {}
]"#;

fn read_rows(path: &Path) -> (usize, Vec<f32>) {
    let data = lossfloor_data::load(&lossfloor_data::DataSpec::Npy(path.to_path_buf())).unwrap();
    let mut scratch = Vec::new();
    let rows = data.rows(0, data.len(), &mut scratch).to_vec();
    (data.len(), rows)
}

#[test]
fn given_records_give_the_library_result_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [3, 1, 8, 8];
    let images: Vec<f32> = (0..3 * 64)
        .map(|i| ((i * 29 % 17) as f32) / 8.5 - 1.0)
        .collect();
    let input = dir.path().join("in.npy");
    write_npy_f32(&input, &shape, &images);
    let params_path = dir.path().join("params.json");
    std::fs::write(&params_path, PARAMS_JSON).unwrap();
    let out = dir.path().join("out.npy");
    let labels = dir.path().join("labels.npy");
    let grid = dir.path().join("grid.png");
    let run = lossfloor(&[
        "augment",
        "--images",
        input.to_str().unwrap(),
        "--params",
        params_path.to_str().unwrap(),
        "--out-npy",
        out.to_str().unwrap(),
        "--labels-out",
        labels.to_str().unwrap(),
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert_ok(&run);
    let params = [
        AugmentParams {
            xflip: true,
            scale: 0.5,
            rotate: 0.3,
            tx: 0.2,
            ty: -0.1,
            ..Default::default()
        },
        AugmentParams {
            yflip: true,
            aniso: -1.0,
            aniso_angle: 0.7,
            ..Default::default()
        },
        AugmentParams::default(),
    ];
    let (want_images, want_labels) = apply(&images, shape, &params).unwrap();
    // Same code on the same f32 input: bit-identical.
    assert_eq!(read_rows(&out), (3, want_images));
    assert_eq!(read_rows(&labels), (3, want_labels));
    assert_eq!(read_rows(&labels).1.len(), 3 * LABEL_DIM);
    assert!(grid.exists());
}

#[test]
fn bad_input_gives_one_line_errors_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.npy");
    write_npy_f32(&input, &[2, 1, 4, 4], &[0.5; 32]);
    let inp = input.to_str().unwrap();
    let out = dir.path().join("out.npy");
    let o = out.to_str().unwrap();
    let with_params = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let run = |params: &str| {
        lossfloor(&[
            "augment",
            "--images",
            inp,
            "--params",
            params,
            "--out-npy",
            o,
        ])
    };
    let bad_value = with_params("bad_value.json", r#"[{}, {"rotate": "north"}]"#);
    assert_fails(
        &run(&bad_value),
        &["bad_value.json: record 1: key \"rotate\": value \"north\""],
        &[&out],
    );
    let bad_key = with_params("bad_key.json", r#"[{"angle": 1}, {}]"#);
    assert_fails(&run(&bad_key), &["unknown key \"angle\""], &[&out]);
    let bad_flip = with_params("bad_flip.json", r#"[{"yflip": 0.5}, {}]"#);
    assert_fails(&run(&bad_flip), &["key \"yflip\": value 0.5"], &[&out]);
    let too_few = with_params("too_few.json", "[{}]");
    assert_fails(
        &run(&too_few),
        &["too_few.json: 1 records for the 2 images"],
        &[&out],
    );
    let not_json = with_params("not_json.json", "[{");
    assert_fails(&run(&not_json), &["not_json.json: not valid JSON"], &[&out]);
    assert_fails(
        &run("/nonexistent/p.json"),
        &["/nonexistent/p.json"],
        &[&out],
    );
    let ok = with_params("ok.json", "[{}, {}]");
    assert_fails(
        &lossfloor(&[
            "augment",
            "--images",
            "/nonexistent/x.npy",
            "--params",
            &ok,
            "--out-npy",
            o,
        ]),
        &["/nonexistent/x.npy"],
        &[&out],
    );
    assert_fails(
        &lossfloor(&["augment", "--images", inp, "--params", &ok]),
        &["no output requested"],
        &[],
    );
    assert_fails(
        &lossfloor(&[
            "augment",
            "--images",
            inp,
            "--params",
            &ok,
            "--out-npy",
            "/nonexistent/o.npy",
        ]),
        &["--out-npy /nonexistent/o.npy"],
        &[],
    );
    let spec = format!("npy:{inp}");
    assert_fails(
        &lossfloor(&["augment", "--data", &spec, "--count", "3", "--out-npy", o]),
        &["--count 3 is more than the 2 images"],
        &[&out],
    );
    assert_fails(
        &lossfloor(&["augment", "--data", &spec, "--p", "1.5", "--out-npy", o]),
        &["--p 1.5 is outside [0, 1]"],
        &[&out],
    );
    assert_fails(
        &lossfloor(&["augment", "--data", &spec, "--params", &ok, "--out-npy", o]),
        &["cannot be used with"],
        &[&out],
    );
}

#[test]
fn fashion_mnist_preview_is_reproducible() {
    if !Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists() {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let preview = |tag: &str| {
        let out = dir.path().join(format!("{tag}.npy"));
        let params = dir.path().join(format!("{tag}.json"));
        let grid = dir.path().join(format!("{tag}.png"));
        assert_ok(&lossfloor(&[
            "augment",
            "--data",
            "fashion-mnist",
            "--p",
            "0.5",
            "--seed",
            "3",
            "--count",
            "6",
            "--out-npy",
            out.to_str().unwrap(),
            "--params-out",
            params.to_str().unwrap(),
            "--grid",
            grid.to_str().unwrap(),
        ]));
        (
            read_rows(&out),
            std::fs::read_to_string(&params).unwrap(),
            grid,
        )
    };
    let (first, params, grid) = preview("a");
    let (second, params_again, _) = preview("b");
    assert_eq!(first, second);
    assert_eq!(params, params_again);
    assert_eq!(first.0, 6);
    // The grid holds each 28×28 original next to its augmented version: 3 pairs per row.
    let png = image::open(&grid).unwrap();
    assert_eq!((png.width(), png.height()), (6 * 28, 2 * 28));
}
