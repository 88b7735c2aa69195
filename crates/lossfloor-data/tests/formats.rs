//! Writes small files in each real on-disk format and reads them back.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder};
use lossfloor_data::{load, u8_to_unit, DataSpec, Dataset, ImageShape};
use zip::{write::SimpleFileOptions, CompressionMethod};

// ---------- helpers that write the real formats ----------

fn spec(s: String) -> DataSpec {
    s.parse().unwrap()
}

fn load_str(s: String) -> Dataset {
    load(&spec(s)).unwrap()
}

fn load_err(s: String) -> String {
    load(&spec(s)).unwrap_err().to_string()
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

/// A `.npy` v1.0 file: magic, version, header dict padded to 64 bytes, data.
fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

fn write_zip(path: &Path, entries: &[(&str, Vec<u8>, CompressionMethod)]) {
    let mut zw = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes, method) in entries {
        zw.start_file(
            *name,
            SimpleFileOptions::default().compression_method(*method),
        )
        .unwrap();
        zw.write_all(bytes).unwrap();
    }
    zw.finish().unwrap();
}

fn png(w: u32, h: u32, color: ExtendedColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(data, w, h, color)
        .unwrap();
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_images(n: usize, h: usize, w: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Every row of `ds` via `read_row`.
fn all_rows(ds: &Dataset) -> Vec<Vec<f32>> {
    (0..ds.len())
        .map(|i| {
            let mut r = vec![0.0; ds.dim()];
            ds.read_row(i, &mut r);
            r
        })
        .collect()
}

/// Mirrors a CHW image along the width axis.
fn mirror(row: &[f32], shape: ImageShape) -> Vec<f32> {
    row.chunks(shape.width)
        .flat_map(|line| line.iter().rev().copied())
        .collect()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---------- CIFAR-10 ----------

/// Pixel byte `k` of CIFAR image with global index `img`.
fn cifar_px(img: usize, k: usize) -> u8 {
    ((img * 51 + k) % 256) as u8
}

fn cifar_batch(first_img: usize, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in first_img..first_img + count {
        out.push((i % 10) as u8);
        out.extend((0..3072).map(|k| cifar_px(i, k)));
    }
    out
}

#[test]
fn cifar10_directory_and_single_file() {
    let dir = tempfile::tempdir().unwrap();
    for b in 0..5 {
        std::fs::write(
            dir.path().join(format!("data_batch_{}.bin", b + 1)),
            cifar_batch(b * 2, 2),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), cifar_batch(100, 3)).unwrap();

    let ds = load_str(format!("cifar10:{}", s(dir.path())));
    assert_eq!(ds.base_len(), 10);
    assert_eq!(ds.shape(), ImageShape::new(3, 32, 32));
    assert_eq!(ds.dim(), 3072);
    assert_eq!(ds.num_classes(), Some(10));
    assert_eq!(ds.labels().unwrap(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(ds.source(), format!("cifar10:{}", s(dir.path())));
    let rows = all_rows(&ds);
    for (i, r) in rows.iter().enumerate() {
        for k in [0, 1, 1023, 1024, 2048, 3071] {
            assert_eq!(r[k], cifar_px(i, k) as f32 / 127.5 - 1.0);
        }
    }
    // image 0 starts 0,1,2..; image 1 starts 51; byte 255 at k = 255 of image 0.
    assert_eq!(rows[0][0], -1.0);
    assert_eq!(rows[0][255], 1.0);
    assert_eq!(rows[1][0], 51.0 / 127.5 - 1.0);
    // R plane then G plane: byte 1024 of the record body is G(0,0).
    assert_eq!(rows[0][1024], u8_to_unit((1024 % 256) as u8));

    let flipped = ds.clone().with_xflip(true);
    assert_eq!(flipped.len(), 20);
    let mut row = vec![0.0; 3072];
    flipped.read_row(13, &mut row);
    assert_eq!(row, mirror(&rows[3], flipped.shape()));
    // Channel 1 (G), y = 2, x = 0 comes from x = 31.
    assert_eq!(row[1024 + 2 * 32], rows[3][1024 + 2 * 32 + 31]);
    assert_eq!(flipped.label(13), Some(3));

    let test = load_str(format!("cifar10:{}", s(&dir.path().join("test_batch.bin"))));
    assert_eq!(test.base_len(), 3);
    assert_eq!(test.labels().unwrap(), &[0, 1, 2]);
    let mut r = vec![0.0; 3072];
    test.read_row(2, &mut r);
    assert_eq!(r[7], u8_to_unit(cifar_px(102, 7)));
}

#[test]
fn cifar10_truncated_and_missing_batches() {
    let dir = tempfile::tempdir().unwrap();
    for b in 1..=2 {
        std::fs::write(
            dir.path().join(format!("data_batch_{b}.bin")),
            cifar_batch(0, 1),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("data_batch_3.bin"), vec![0u8; 30000]).unwrap();
    let e = load_err(format!("cifar10:{}", s(dir.path())));
    assert_has(
        &e,
        &[
            "data_batch_3.bin",
            "size 30000 bytes",
            "3073-byte CIFAR-10 record",
        ],
    );

    std::fs::write(dir.path().join("data_batch_3.bin"), cifar_batch(0, 1)).unwrap();
    std::fs::write(dir.path().join("data_batch_4.bin"), cifar_batch(0, 1)).unwrap();
    let e = load_err(format!("cifar10:{}", s(dir.path())));
    assert_has(&e, &["data_batch_5.bin", "not found", "CIFAR-10"]);

    let mut bad = cifar_batch(0, 2);
    bad[3073] = 12;
    std::fs::write(dir.path().join("bad.bin"), bad).unwrap();
    let e = load_err(format!("cifar10:{}", s(&dir.path().join("bad.bin"))));
    assert_has(&e, &["bad.bin", "record 1", "offset 3073", "label 12"]);
}

#[test]
fn missing_paths_name_the_path_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nowhere");
    for (kind, what) in [
        ("cifar10", "data_batch_1.bin"),
        ("edm", "PNG"),
        ("imagenet64", "train_data_batch_1.npz"),
        ("idx", "0x00000803"),
        ("npy", ".npy"),
    ] {
        let e = load_err(format!("{kind}:{}", s(&p)));
        assert_has(&e, &["nowhere", "not found", "expected", what]);
    }
}

// ---------- EDM ----------

/// RGB image `i` (w=4, h=3) as HWC bytes.
fn edm_rgb(i: u8) -> Vec<u8> {
    (0..36u8)
        .map(|k| k.wrapping_mul(7).wrapping_add(i * 40))
        .collect()
}

/// Expected CHW f32 row of `edm_rgb(i)`.
fn edm_rgb_chw(i: u8) -> Vec<f32> {
    let hwc = edm_rgb(i);
    let mut out = Vec::new();
    for c in 0..3 {
        for p in 0..12 {
            out.push(u8_to_unit(hwc[p * 3 + c]));
        }
    }
    out
}

const EDM_JSON: &str = r#"{"labels": [["00001/img00001000.png", 2], ["00000/img00000001.png", 5], ["00000/img00000000.png", 0]]}"#;

fn edm_entries(method: CompressionMethod) -> Vec<(&'static str, Vec<u8>, CompressionMethod)> {
    // Deliberately out of order; sorted order is img0, img1, img1000.
    vec![
        (
            "00001/img00001000.png",
            png(4, 3, ExtendedColorType::Rgb8, &edm_rgb(2)),
            method,
        ),
        ("dataset.json", EDM_JSON.as_bytes().to_vec(), method),
        (
            "00000/img00000001.png",
            png(4, 3, ExtendedColorType::Rgb8, &edm_rgb(1)),
            method,
        ),
        (
            "00000/img00000000.png",
            png(4, 3, ExtendedColorType::Rgb8, &edm_rgb(0)),
            method,
        ),
    ]
}

fn check_edm(ds: &Dataset) {
    assert_eq!(ds.shape(), ImageShape::new(3, 3, 4));
    assert_eq!(ds.base_len(), 3);
    assert_eq!(ds.labels().unwrap(), &[0, 5, 2]);
    assert_eq!(ds.num_classes(), Some(6));
    let rows = all_rows(ds);
    for i in 0..3u8 {
        assert_eq!(rows[i as usize], edm_rgb_chw(i));
    }
}

#[test]
fn edm_zip_stored_deflated_and_folder() {
    let dir = tempfile::tempdir().unwrap();
    for (name, method) in [
        ("stored.zip", CompressionMethod::Stored),
        ("deflated.zip", CompressionMethod::Deflated),
    ] {
        let p = dir.path().join(name);
        write_zip(&p, &edm_entries(method));
        check_edm(&load_str(format!("edm:{}", s(&p))));
    }
    let folder = dir.path().join("folder");
    for (name, bytes, _) in edm_entries(CompressionMethod::Stored) {
        let p = folder.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let ds = load_str(format!("edm:{}", s(&folder)));
    check_edm(&ds);
    let ds = ds.with_xflip(true);
    let mut r = vec![0.0; ds.dim()];
    ds.read_row(4, &mut r);
    assert_eq!(r, mirror(&edm_rgb_chw(1), ds.shape()));
}

#[test]
fn edm_grayscale_without_labels() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gray.zip");
    let a: Vec<u8> = vec![0, 255, 51, 10, 20, 30];
    let b: Vec<u8> = vec![1, 2, 3, 4, 5, 6];
    write_zip(
        &p,
        &[
            (
                "b.png",
                png(3, 2, ExtendedColorType::L8, &b),
                CompressionMethod::Stored,
            ),
            (
                "a.png",
                png(3, 2, ExtendedColorType::L8, &a),
                CompressionMethod::Stored,
            ),
            (
                "dataset.json",
                br#"{"labels": null}"#.to_vec(),
                CompressionMethod::Stored,
            ),
        ],
    );
    let ds = load_str(format!("edm:{}", s(&p)));
    assert_eq!(ds.shape(), ImageShape::new(1, 2, 3));
    assert!(ds.labels().is_none());
    assert_eq!(ds.num_classes(), None);
    let rows = all_rows(&ds);
    assert_eq!(&rows[0][..3], &[-1.0, 1.0, 51.0 / 127.5 - 1.0]);
    assert_eq!(rows[1][5], u8_to_unit(6));
}

#[test]
fn edm_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.zip");
    write_zip(
        &p,
        &[
            (
                "00000/img00000000.png",
                png(4, 3, ExtendedColorType::Rgb8, &edm_rgb(0)),
                CompressionMethod::Stored,
            ),
            (
                "00000/img00000001.png",
                png(2, 2, ExtendedColorType::Rgb8, &[9; 12]),
                CompressionMethod::Stored,
            ),
        ],
    );
    let e = load_err(format!("edm:{}", s(&p)));
    assert_has(
        &e,
        &["mixed.zip", "img00000001.png", "2x2", "4x3", "same size"],
    );

    let p = dir.path().join("ghost.zip");
    let json = r#"{"labels": [["00000/img00000000.png", 1], ["00000/ghost.png", 3]]}"#;
    write_zip(
        &p,
        &[
            (
                "00000/img00000000.png",
                png(4, 3, ExtendedColorType::Rgb8, &edm_rgb(0)),
                CompressionMethod::Stored,
            ),
            (
                "dataset.json",
                json.as_bytes().to_vec(),
                CompressionMethod::Stored,
            ),
        ],
    );
    let e = load_err(format!("edm:{}", s(&p)));
    assert_has(
        &e,
        &[
            "ghost.zip",
            "dataset.json",
            "00000/ghost.png",
            "not in the dataset",
        ],
    );

    let p = dir.path().join("unlabelled.zip");
    write_zip(
        &p,
        &[
            (
                "x.png",
                png(1, 1, ExtendedColorType::L8, &[0]),
                CompressionMethod::Stored,
            ),
            (
                "y.png",
                png(1, 1, ExtendedColorType::L8, &[0]),
                CompressionMethod::Stored,
            ),
            (
                "dataset.json",
                br#"{"labels": [["x.png", 1]]}"#.to_vec(),
                CompressionMethod::Stored,
            ),
        ],
    );
    let e = load_err(format!("edm:{}", s(&p)));
    assert_has(
        &e,
        &["unlabelled.zip", "dataset.json", "no label for image y.png"],
    );

    let p = dir.path().join("rgba.zip");
    write_zip(
        &p,
        &[(
            "a.png",
            png(1, 1, ExtendedColorType::Rgba8, &[1, 2, 3, 4]),
            CompressionMethod::Stored,
        )],
    );
    let e = load_err(format!("edm:{}", s(&p)));
    assert_has(&e, &["rgba.zip", "a.png", "Rgba8", "grayscale (L) or RGB"]);

    let p = dir.path().join("notzip.zip");
    std::fs::write(&p, b"hello").unwrap();
    let e = load_err(format!("edm:{}", s(&p)));
    assert_has(&e, &["notzip.zip", "zip"]);
}

// ---------- ImageNet-64 .npz ----------

fn inet_data(first: usize, n: usize, side: usize) -> Vec<u8> {
    (0..n * 3 * side * side)
        .map(|k| ((first * 3 + k) % 256) as u8)
        .collect()
}

fn inet_npz(
    path: &Path,
    first: usize,
    n: usize,
    side: usize,
    labels: &[i64],
    method: CompressionMethod,
) {
    let lab: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let mean = vec![0u8; 4 * 3 * side * side];
    write_zip(
        path,
        &[
            (
                "data.npy",
                npy_bytes("|u1", &[n, 3 * side * side], &inet_data(first, n, side)),
                method,
            ),
            ("labels.npy", npy_bytes("<i8", &[n], &lab), method),
            (
                "mean.npy",
                npy_bytes("<f4", &[3 * side * side], &mean),
                method,
            ),
        ],
    );
}

#[test]
fn imagenet_npz_batches_in_natural_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    inet_npz(
        &d.join("train_data_batch_10.npz"),
        3,
        1,
        8,
        &[1000],
        CompressionMethod::Deflated,
    );
    inet_npz(
        &d.join("train_data_batch_2.npz"),
        2,
        1,
        8,
        &[7],
        CompressionMethod::Stored,
    );
    inet_npz(
        &d.join("train_data_batch_1.npz"),
        0,
        2,
        8,
        &[1, 2],
        CompressionMethod::Stored,
    );
    inet_npz(
        &d.join("val_data.npz"),
        50,
        1,
        8,
        &[3],
        CompressionMethod::Stored,
    );

    let ds = load_str(format!("imagenet64:{}", s(d)));
    assert_eq!(ds.shape(), ImageShape::new(3, 8, 8));
    assert_eq!(ds.base_len(), 4);
    assert_eq!(ds.labels().unwrap(), &[0, 1, 6, 999]);
    assert_eq!(ds.num_classes(), Some(1000));
    let rows = all_rows(&ds);
    let expect = |first: usize, k: usize| u8_to_unit(((first * 3 + k) % 256) as u8);
    assert_eq!(rows[0][0], -1.0);
    assert_eq!(rows[0][191], expect(0, 191));
    assert_eq!(rows[1][0], expect(0, 192)); // second image of batch 1
    assert_eq!(rows[2][5], expect(2, 5));
    assert_eq!(rows[3][64], expect(3, 64));

    let single = load_str(format!("imagenet64:{}", s(&d.join("val_data.npz"))));
    assert_eq!(single.base_len(), 1);
    assert_eq!(single.labels().unwrap(), &[2]);
}

#[test]
fn imagenet_npz_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zero.npz");
    inet_npz(&p, 0, 2, 4, &[1, 0], CompressionMethod::Stored);
    let e = load_err(format!("imagenet64:{}", s(&p)));
    assert_has(
        &e,
        &["zero.npz", "'labels'", "label 0 at index 1", "1..=1000"],
    );

    let p = dir.path().join("nolabels.npz");
    write_zip(
        &p,
        &[(
            "data.npy",
            npy_bytes("|u1", &[1, 48], &[0; 48]),
            CompressionMethod::Stored,
        )],
    );
    let e = load_err(format!("imagenet64:{}", s(&p)));
    assert_has(&e, &["nolabels.npz", "no array 'labels'", "data"]);

    let p = dir.path().join("odd.npz");
    write_zip(
        &p,
        &[(
            "data.npy",
            npy_bytes("|u1", &[1, 50], &[0; 50]),
            CompressionMethod::Stored,
        )],
    );
    let e = load_err(format!("imagenet64:{}", s(&p)));
    assert_has(&e, &["odd.npz", "row length 50", "12288"]);

    let p = dir.path().join("short.npz");
    write_zip(
        &p,
        &[
            (
                "data.npy",
                npy_bytes("|u1", &[2, 48], &[0; 60]),
                CompressionMethod::Stored,
            ),
            (
                "labels.npy",
                npy_bytes("<i8", &[2], &[1; 16]),
                CompressionMethod::Stored,
            ),
        ],
    );
    let e = load_err(format!("imagenet64:{}", s(&p)));
    assert_has(
        &e,
        &["short.npz", "truncated", "expected 96 bytes", "found 60"],
    );
}

// ---------- IDX ----------

#[test]
fn idx_plain_and_gz_with_labels_beside() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..3 * 2 * 4).map(|k| (k * 11) as u8).collect();
    let imgs = idx_images(3, 2, 4, &pixels);
    // gzipped images, plain labels, names ending in .gz only for images
    let ip = dir.path().join("train-images-idx3-ubyte.gz");
    std::fs::write(&ip, gz(&imgs)).unwrap();
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        idx_labels(&[3, 0, 7]),
    )
    .unwrap();
    let ds = load_str(format!("idx:{}", s(&ip)));
    assert_eq!(ds.shape(), ImageShape::new(1, 2, 4));
    assert_eq!(ds.base_len(), 3);
    assert_eq!(ds.labels().unwrap(), &[3, 0, 7]);
    assert_eq!(ds.num_classes(), Some(8));
    let rows = all_rows(&ds);
    for (i, r) in rows.iter().enumerate() {
        for (k, v) in r.iter().enumerate() {
            assert_eq!(*v, u8_to_unit(pixels[i * 8 + k]));
        }
    }

    // plain images with a gz extension mismatch: detection is by magic, not name
    let plain = dir.path().join("t10k-images-idx3-ubyte.gz");
    std::fs::write(&plain, &imgs).unwrap();
    let ds = load_str(format!("idx:{}", s(&plain)));
    assert!(ds.labels().is_none(), "no t10k labels beside");
    assert_eq!(ds.base_len(), 3);
}

#[test]
fn idx_bad_magic_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("weird-images-idx3-ubyte");
    let mut bytes = idx_images(1, 2, 2, &[0; 4]);
    bytes[3] = 4;
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(format!("idx:{}", s(&p)));
    assert_has(
        &e,
        &[
            "weird-images-idx3-ubyte",
            "bad IDX magic 0x00000804",
            "0x00000803",
        ],
    );

    let p = dir.path().join("short-images-idx3-ubyte.gz");
    let bytes = idx_images(5, 28, 28, &[0; 100]);
    std::fs::write(&p, gz(&bytes)).unwrap();
    let e = load_err(format!("idx:{}", s(&p)));
    assert_has(
        &e,
        &[
            "short-images-idx3-ubyte.gz",
            "truncated",
            "expected 3936 bytes",
            "found 116",
        ],
    );

    let p = dir.path().join("cut.gz");
    let mut g = gz(&idx_images(1, 2, 2, &[0; 4]));
    g.truncate(g.len() / 2);
    std::fs::write(&p, g).unwrap();
    let e = load_err(format!("idx:{}", s(&p)));
    assert_has(&e, &["cut.gz", "gzip"]);

    let p = dir.path().join("a-labels-idx1-ubyte");
    std::fs::write(&p, idx_labels(&[1, 2])).unwrap();
    let e = load_err(format!("idx:{}", s(&p)));
    assert_has(&e, &["a-labels-idx1-ubyte", "label file", "0x00000803"]);

    // labels beside with the wrong count
    let ip = dir.path().join("m-images-idx3-ubyte");
    std::fs::write(&ip, idx_images(2, 1, 1, &[0, 0])).unwrap();
    std::fs::write(dir.path().join("m-labels-idx1-ubyte"), idx_labels(&[1])).unwrap();
    let e = load_err(format!("idx:{}", s(&ip)));
    assert_has(&e, &["m-labels-idx1-ubyte", "1 labels", "2 images"]);
}

// ---------- .npy ----------

#[test]
fn npy_float_and_u8_arrays() {
    let dir = tempfile::tempdir().unwrap();
    // f32 [2, 2, 1, 3]
    let vals: Vec<f32> = (0..12).map(|k| k as f32 * 0.25 - 1.0).collect();
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = dir.path().join("a.npy");
    std::fs::write(&p, npy_bytes("<f4", &[2, 2, 1, 3], &bytes)).unwrap();
    let ds = load_str(format!("npy:{}", s(&p)));
    assert_eq!(ds.shape(), ImageShape::new(2, 1, 3));
    assert!(!ds.stores_u8());
    let mut scratch = Vec::new();
    assert_eq!(ds.rows(0, 2, &mut scratch), &vals[..]);
    assert!(scratch.is_empty(), "f32 rows are borrowed");
    let ds = ds.with_xflip(true);
    let r = ds.rows(1, 2, &mut scratch).to_vec();
    assert_eq!(&r[..6], &vals[6..]);
    assert_eq!(&r[6..], &[-0.5, -0.75, -1.0, 0.25, 0.0, -0.25]);

    // f64 [3, 2, 2] -> C=1
    let v64: Vec<f64> = (0..12).map(|k| k as f64 / 8.0).collect();
    let bytes: Vec<u8> = v64.iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = dir.path().join("b.npy");
    std::fs::write(&p, npy_bytes("<f8", &[3, 2, 2], &bytes)).unwrap();
    let ds = load_str(format!("npy:{}", s(&p)));
    assert_eq!(ds.shape(), ImageShape::new(1, 2, 2));
    let mut r = vec![0.0; 4];
    ds.read_row(2, &mut r);
    assert_eq!(r, [1.0, 1.125, 1.25, 1.375]);

    // f32 [4, 5] -> 1x1x5
    let p = dir.path().join("c.npy");
    std::fs::write(&p, npy_bytes("<f4", &[4, 5], &[0u8; 80])).unwrap();
    let ds = load_str(format!("npy:{}", s(&p)));
    assert_eq!(ds.shape(), ImageShape::new(1, 1, 5));
    assert_eq!(ds.base_len(), 4);

    // u8 [1, 1, 2, 2] scaled like images
    let p = dir.path().join("d.npy");
    std::fs::write(&p, npy_bytes("|u1", &[1, 1, 2, 2], &[0, 255, 51, 128])).unwrap();
    let ds = load_str(format!("npy:{}", s(&p)));
    assert!(ds.stores_u8());
    let mut r = vec![0.0; 4];
    ds.read_row(0, &mut r);
    assert_eq!(r, [-1.0, 1.0, 51.0 / 127.5 - 1.0, 128.0 / 127.5 - 1.0]);
}

#[test]
fn npy_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut vals = [0.5f32; 8];
    vals[5] = f32::NAN;
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = dir.path().join("nan.npy");
    std::fs::write(&p, npy_bytes("<f4", &[2, 4], &bytes)).unwrap();
    let e = load_err(format!("npy:{}", s(&p)));
    assert_has(&e, &["nan.npy", "NaN", "flat index 5", "row 1", "finite"]);

    let p = dir.path().join("short.npy");
    std::fs::write(&p, npy_bytes("<f4", &[2, 4], &[0u8; 20])).unwrap();
    let e = load_err(format!("npy:{}", s(&p)));
    assert_has(
        &e,
        &["short.npy", "truncated", "expected 32 bytes", "found 20"],
    );

    let p = dir.path().join("rank1.npy");
    std::fs::write(&p, npy_bytes("<f4", &[2], &[0u8; 8])).unwrap();
    let e = load_err(format!("npy:{}", s(&p)));
    assert_has(&e, &["rank1.npy", "[N, C, H, W]"]);

    let p = dir.path().join("junk.npy");
    std::fs::write(&p, b"not numpy at all").unwrap();
    let e = load_err(format!("npy:{}", s(&p)));
    assert_has(&e, &["junk.npy", ".npy"]);
}

// ---------- rows(), specs, Fashion-MNIST ----------

#[test]
fn rows_across_chunk_boundaries() {
    let shape = ImageShape::new(2, 2, 3);
    let n = 7;
    let bytes: Vec<u8> = (0..n * shape.dim()).map(|k| (k * 37 % 256) as u8).collect();
    let floats: Vec<f32> = bytes.iter().map(|&b| u8_to_unit(b)).collect();
    let a = Dataset::from_u8("u8".into(), shape, bytes, None, None)
        .unwrap()
        .with_xflip(true);
    let b = Dataset::from_f32("f32".into(), shape, floats, None, None)
        .unwrap()
        .with_xflip(true);
    for ds in [&a, &b] {
        let expect: Vec<f32> = all_rows(ds).concat();
        for chunk in [1, 3, 4, 5, 14] {
            let mut scratch = Vec::new();
            let mut got = Vec::new();
            let mut start = 0;
            while start < ds.len() {
                let count = chunk.min(ds.len() - start);
                let rows = ds.rows(start, count, &mut scratch);
                assert_eq!(rows.len(), count * ds.dim());
                got.extend_from_slice(rows);
                start += count;
            }
            assert_eq!(got, expect, "chunk {chunk} for {}", ds.source());
        }
        // a window straddling the base/flipped boundary
        let mut scratch = Vec::new();
        let w = ds.rows(6, 2, &mut scratch);
        assert_eq!(w, &expect[6 * 12..8 * 12]);
    }
    assert_eq!(all_rows(&a), all_rows(&b));
    let mut row7 = vec![0.0; 12];
    a.read_row(7, &mut row7);
    assert_eq!(row7, mirror(&all_rows(&a)[0], shape));
}

#[test]
fn spec_parsing_round_trip() {
    for text in [
        "cifar10:/data/cifar-10-batches-bin",
        "cifar10:/data/cifar-10-batches-bin/test_batch.bin",
        "edm:/data/cifar10-32x32.zip",
        "edm:relative/folder",
        "imagenet64:/data/Imagenet64_train_npz",
        "idx:/x/train-images-idx3-ubyte.gz",
        "npy:C:/odd:name.npy",
        "fashion-mnist",
        "fashion-mnist:test",
    ] {
        let sp: DataSpec = text.parse().unwrap();
        assert_eq!(sp.to_string(), text);
        assert_eq!(sp.to_string().parse::<DataSpec>().unwrap(), sp);
    }
    assert_eq!(
        "npy:C:/odd:name.npy".parse::<DataSpec>().unwrap(),
        DataSpec::Npy(PathBuf::from("C:/odd:name.npy"))
    );
    assert_eq!(
        "fashion-mnist:train".parse::<DataSpec>().unwrap(),
        DataSpec::FashionMnist { test: false }
    );
    let e = "mnist:/x".parse::<DataSpec>().unwrap_err().to_string();
    assert_has(
        &e,
        &[
            "mnist:/x",
            "unknown dataset kind",
            "cifar10:DIR",
            "edm:PATH",
            "fashion-mnist:test",
        ],
    );
    let e = "/just/a/path".parse::<DataSpec>().unwrap_err().to_string();
    assert_has(&e, &["/just/a/path", "imagenet64:DIR"]);
    let e = "npy:".parse::<DataSpec>().unwrap_err().to_string();
    assert_has(&e, &["empty path"]);
    let e = "fashion-mnist:val"
        .parse::<DataSpec>()
        .unwrap_err()
        .to_string();
    assert_has(&e, &["fashion-mnist:test"]);
}

#[test]
fn fashion_mnist_missing_says_how_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let e = lossfloor_data::load_fashion_mnist(dir.path(), false, "fashion-mnist".into())
        .unwrap_err()
        .to_string();
    assert_has(
        &e,
        &[
            "train-images-idx3-ubyte.gz",
            "apt-get install -y dataset-fashion-mnist",
        ],
    );
}

#[test]
fn fashion_mnist_real_data() {
    if !Path::new(lossfloor_data::FASHION_MNIST_DIR).is_dir() {
        eprintln!(
            "skipping: {} not present (apt-get install -y dataset-fashion-mnist)",
            lossfloor_data::FASHION_MNIST_DIR
        );
        return;
    }
    for (text, n) in [("fashion-mnist", 60_000), ("fashion-mnist:test", 10_000)] {
        let ds = load_str(text.to_string());
        assert_eq!(ds.source(), text);
        assert_eq!(ds.base_len(), n);
        assert_eq!(ds.shape(), ImageShape::new(1, 28, 28));
        assert_eq!(ds.num_classes(), Some(10));
        let labels = ds.labels().unwrap();
        assert_eq!(labels.len(), n);
        for c in 0..10 {
            assert!(labels.contains(&c), "class {c} missing");
        }
        let mut scratch = Vec::new();
        let rows = ds.rows(0, 1000, &mut scratch);
        let (lo, hi) = rows
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!((-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi));
        assert_eq!(lo, -1.0, "background pixels are 0");
        assert!(hi > 0.9);
    }
}
