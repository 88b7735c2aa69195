//! Inception features against torch (`scripts/fid_reference_features.py`) when the real
//! weights are present, plus the weight-file error paths and preprocessing checks.

use std::path::PathBuf;

use lossfloor_fid::{
    preprocess, preprocess_tensor, resize_tf_bilinear, FidError, InceptionV3, InceptionWeights,
    FEATURE_DIM, INPUT_SIZE,
};

fn weights_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.weights/inception-2015-12-05.pt")
}

/// Mirrors `image()` in scripts/fid_reference_features.py: uint8 [3, size, size].
fn image(kind: usize, size: usize) -> Vec<u8> {
    let mut img = vec![0u8; 3 * size * size];
    if kind == 3 {
        let mut state: u64 = 12345;
        for v in img.iter_mut() {
            state = (state * 1103515245 + 12345) % (1 << 31);
            *v = ((state >> 16) & 255) as u8;
        }
        return img;
    }
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let (xi, yi) = (x as i64, y as i64);
                let v: i64 = match kind {
                    0 => [xi * 8, yi * 8, (xi + yi) * 4][c],
                    1 => {
                        let chk = ((xi / 4 + yi / 4) % 2) * 255;
                        [chk, 255 - chk, 128][c]
                    }
                    2 => (((xi - 16).pow(2) + (yi - 16).pow(2)) * (c as i64 + 1)) % 256,
                    4 => (xi + 2 * yi + 50 * c as i64) % 256,
                    _ => unreachable!(),
                };
                img[(c * size + y) * size + x] = v.min(255) as u8;
            }
        }
    }
    img
}

fn reference() -> Vec<Vec<f32>> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception_ref_features.npy");
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[5, FEATURE_DIM as u64]);
    let v: Vec<f32> = npy.into_vec().unwrap();
    v.chunks(FEATURE_DIM).map(<[f32]>::to_vec).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let norm = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let max_ref = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!(
        "{what}: relative L2 error {:.3e}, max abs error {max_abs:.3e}",
        err / norm
    );
    assert!(
        err / norm < 1e-4,
        "{what}: relative L2 error {}",
        err / norm
    );
    assert!(max_abs < 1e-4 * max_ref, "{what}: max abs error {max_abs}");
}

#[test]
fn features_match_torch_reference() {
    let path = weights_path();
    if !path.is_file() {
        println!(
            "SKIP features_match_torch_reference: {} absent (run scripts/fetch-inception.sh)",
            path.display()
        );
        return;
    }
    let weights = InceptionWeights::load(&path).unwrap();
    let net = InceptionV3::from_weights(&weights, &candle_core::Device::Cpu).unwrap();
    let want = reference();

    let small: Vec<u8> = (0..4).flat_map(|k| image(k, 32)).collect();
    let got = net.features(&small, 4, 3, 32, 32).unwrap();
    for k in 0..4 {
        assert_close(&got[k], &want[k], &format!("32x32 image {k}"));
    }
    // 299x299 input: no resize.
    let big = image(4, INPUT_SIZE);
    let got_big = net.features(&big, 1, 3, INPUT_SIZE, INPUT_SIZE).unwrap();
    assert_close(&got_big[0], &want[4], "299x299 image");

    // Grayscale input equals the same plane repeated to 3 channels.
    let gray = &small[..32 * 32];
    let rgb: Vec<u8> = gray.iter().chain(gray).chain(gray).copied().collect();
    let g1 = net.features(gray, 1, 1, 32, 32).unwrap();
    let g3 = net.features(&rgb, 1, 3, 32, 32).unwrap();
    assert_eq!(g1[0].to_vec(), g3[0].to_vec());

    // Safetensors round trip gives the same network.
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("inception.safetensors");
    weights.save_safetensors(&st).unwrap();
    let net2 = InceptionV3::load(&st).unwrap();
    let got2 = net2.features(&small[..3 * 32 * 32], 1, 3, 32, 32).unwrap();
    assert_eq!(got2[0].to_vec(), got[0].to_vec());
}

#[test]
fn missing_weights_error_points_to_fetch_script() {
    let err = InceptionV3::load("/nonexistent/inception.pt").unwrap_err();
    assert!(matches!(err, FidError::WeightsMissing { .. }));
    assert!(
        err.to_string().contains("scripts/fetch-inception.sh"),
        "{err}"
    );
}

#[test]
fn wrong_sha256_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fake.pt");
    // Starts with the zip magic, so it is treated as a TorchScript archive.
    std::fs::write(&p, b"PK\x03\x04 not really an inception archive").unwrap();
    match InceptionV3::load(&p) {
        Err(FidError::WrongSha256 { actual, .. }) => assert_eq!(actual.len(), 64),
        other => panic!("expected WrongSha256, got {other:?}"),
    }
}

#[test]
fn tf_bilinear_resize_samples_i_times_w_over_out() {
    // 1-D check through a 2-row image: source coordinate i·4/10, clamped at 3.
    let src = [0.0f32, 10.0, 20.0, 30.0, 0.0, 10.0, 20.0, 30.0];
    let out = resize_tf_bilinear(&src, 2, 4, 2, 10);
    let want = [0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 30.0, 30.0];
    for (a, b) in out[..10].iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{out:?}");
    }
    // Identity size is a no-op; preprocessing scales (x − 128)/128.
    let img: Vec<u8> = (0..3 * INPUT_SIZE * INPUT_SIZE)
        .map(|i| (i % 256) as u8)
        .collect();
    let x = preprocess(&img, 1, 3, INPUT_SIZE, INPUT_SIZE).unwrap();
    for (a, b) in x.iter().zip(&img).take(1000) {
        assert_eq!(*a, (*b as f32 - 128.0) / 128.0);
    }
    assert!(preprocess(&img, 1, 2, 10, 10).is_err());
}

/// The device preprocessing (two matrix products per plane) against the host loop it
/// replaces in `features`, on gray and RGB images, square and not, up- and down-sizing and
/// the 299×299 identity. Both compute the same two-tap lerps in float32 in another order,
/// so they differ by a few ulps of 255 (1.5e-5), scaled by 1/128: 2e-6 allows about 16.
#[test]
fn device_preprocessing_equals_the_host_loop() {
    let mut state = 7u64;
    let mut bytes = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    };
    for (n, c, h, w) in [
        (3, 3, 32, 32),
        (2, 1, 28, 28),
        (1, 3, 17, 40),
        (1, 3, 400, 320),
        (2, 3, INPUT_SIZE, INPUT_SIZE),
    ] {
        let img = bytes(n * c * h * w);
        let want = preprocess(&img, n, c, h, w).unwrap();
        let got = preprocess_tensor(&img, n, c, h, w, &candle_core::Device::Cpu).unwrap();
        assert_eq!(got.dims(), &[n, 3, INPUT_SIZE, INPUT_SIZE]);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 2e-6, "{n}x{c}x{h}x{w}: max |diff| {worst}");
    }
    let dev = candle_core::Device::Cpu;
    assert!(preprocess_tensor(&[0; 200], 2, 1, 10, 10, &dev).is_ok());
    assert!(preprocess_tensor(&[0; 200], 1, 2, 10, 10, &dev).is_err());
    assert!(preprocess_tensor(&[0; 199], 2, 1, 10, 10, &dev).is_err());
}

/// The layer table that tests/cuda.rs builds random Inception weights from is the real
/// archive's: same layers, weight shapes, strides and paddings.
#[test]
fn layer_table_matches_the_weights() {
    let path = weights_path();
    if !path.is_file() {
        println!(
            "SKIP layer_table_matches_the_weights: {} absent (run scripts/fetch-inception.sh)",
            path.display()
        );
        return;
    }
    let weights = InceptionWeights::load(&path).unwrap();
    let table = include_str!("fixtures/inception_layers.txt");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), weights.convs.len());
    for row in rows {
        let n: Vec<usize> = row[1..].iter().map(|v| v.parse().unwrap()).collect();
        let p = &weights.convs[row[0]];
        assert_eq!(p.weight.dims(), &n[..4], "{}", row[0]);
        assert_eq!((p.stride, p.padding), (n[4], (n[5], n[6])), "{}", row[0]);
    }
}
