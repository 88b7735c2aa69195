//! Readers given files whose declared sizes exceed the bytes present: each is refused with
//! one line naming the file, the declared shape and the bytes present, quickly and before
//! any allocation of the declared size (which would abort the process).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder};
use zip::{write::SimpleFileOptions, CompressionMethod};

use crate::{load, DataSpec};

/// Loads `spec`, expecting an error; checks it is one line, holds every fragment and came
/// within a second.
fn refused(spec: String, fragments: &[&str]) -> String {
    let t = Instant::now();
    let spec: DataSpec = spec.parse().unwrap();
    let e = load(&spec).unwrap_err().to_string();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(!e.contains('\n'), "not one line: {e}");
    for f in fragments {
        assert!(e.contains(f), "message {e:?} lacks {f:?}");
    }
    e
}

fn npy_bytes(descr: &str, shape: &[u64], data: &[u8]) -> Vec<u8> {
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

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
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

fn idx_header(magic: u8, dims: &[u32]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, magic];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn npy_shape_larger_than_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The case: 256 TB declared, nothing present.
    let p = dir.path().join("huge.npy");
    std::fs::write(&p, npy_bytes("<f4", &[1_000_000_000_000, 1, 8, 8], &[])).unwrap();
    refused(
        format!("npy:{}", s(&p)),
        &[
            "huge.npy",
            "[1000000000000, 1, 8, 8]",
            "<f4",
            "expected 256000000000000 bytes",
            "found 0 bytes",
        ],
    );
    // uint8, with some data present.
    let p = dir.path().join("huge-u8.npy");
    std::fs::write(&p, npy_bytes("|u1", &[1 << 40, 3, 32, 32], &[7; 100])).unwrap();
    refused(
        format!("npy:{}", s(&p)),
        &[
            "huge-u8.npy",
            "[1099511627776, 3, 32, 32]",
            "found 100 bytes",
        ],
    );
    // A shape whose byte size overflows 64 bits.
    let p = dir.path().join("overflow.npy");
    std::fs::write(&p, npy_bytes("<f8", &[1 << 32, 1 << 32, 2], &[0; 16])).unwrap();
    refused(
        format!("npy:{}", s(&p)),
        &[
            "overflow.npy",
            "[4294967296, 4294967296, 2]",
            "overflows",
            "found 16 bytes",
        ],
    );
}

#[test]
fn idx_dims_that_overflow_or_exceed_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // 2^31 x 2^31 x 4 wraps to 0 in unchecked 64-bit arithmetic ("0 images").
    let dims = [1u32 << 31, 1 << 31, 4];
    let p = dir.path().join("wrap-images-idx3-ubyte");
    std::fs::write(&p, idx_header(3, &dims)).unwrap();
    refused(
        format!("idx:{}", s(&p)),
        &[
            "wrap-images-idx3-ubyte",
            "2147483648x2147483648x4",
            "overflows",
            "holds 0 data bytes",
        ],
    );
    let p = dir.path().join("wrap-images-idx3-ubyte.gz");
    std::fs::write(&p, gz(&idx_header(3, &dims))).unwrap();
    refused(
        format!("idx:{}", s(&p)),
        &[
            "wrap-images-idx3-ubyte.gz",
            "2147483648x2147483648x4",
            "overflows",
        ],
    );
    // A gzip file far too small for what its header declares: refused before unpacking.
    let p = dir.path().join("big-images-idx3-ubyte.gz");
    std::fs::write(&p, gz(&idx_header(3, &[4_000_000, 1000, 1000]))).unwrap();
    refused(
        format!("idx:{}", s(&p)),
        &[
            "big-images-idx3-ubyte.gz",
            "4000000x1000x1000",
            "declare 4000000000000 data bytes",
            "gzip stream",
        ],
    );
    // More data than declared in a gzip file: a mismatch, read no further than one byte.
    let mut bytes = idx_header(3, &[1, 2, 2]);
    bytes.extend_from_slice(&[0; 40]);
    let p = dir.path().join("long-images-idx3-ubyte.gz");
    std::fs::write(&p, gz(&bytes)).unwrap();
    refused(
        format!("idx:{}", s(&p)),
        &[
            "long-images-idx3-ubyte.gz",
            "size mismatch",
            "more than 20 bytes",
        ],
    );
}

#[test]
fn npz_entry_declaring_more_than_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    for (name, method) in [
        ("stored.npz", CompressionMethod::Stored),
        ("deflated.npz", CompressionMethod::Deflated),
    ] {
        let p = dir.path().join(name);
        write_zip(
            &p,
            &[
                (
                    "data.npy",
                    npy_bytes("|u1", &[1_000_000_000, 12288], &[0; 100]),
                    method,
                ),
                ("labels.npy", npy_bytes("<i8", &[1], &[1; 8]), method),
            ],
        );
        let e = refused(
            format!("imagenet64:{}", s(&p)),
            &[
                name,
                "array 'data'",
                "[1000000000, 12288]",
                "expected 12288000000000 bytes",
            ],
        );
        if method == CompressionMethod::Stored {
            assert!(e.contains("found 100 bytes"), "{e}");
        }
    }
}

#[test]
fn png_header_declaring_more_than_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&[0; 4], 2, 2, ExtendedColorType::L8)
        .unwrap();
    // Patch the IHDR's width and height (bytes 16..24) to 60000 x 60000.
    png[16..20].copy_from_slice(&60000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let p = dir.path().join("bomb.zip");
    write_zip(
        &p,
        &[(
            "00000/img00000000.png",
            png.clone(),
            CompressionMethod::Stored,
        )],
    );
    refused(
        format!("edm:{}", s(&p)),
        &[
            "bomb.zip",
            "img00000000.png",
            "60000x60000",
            "can unpack to at most",
        ],
    );
    let folder = dir.path().join("bombdir");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("img0.png"), &png).unwrap();
    refused(format!("edm:{}", s(&folder)), &["img0.png", "60000x60000"]);

    // A real, maximally compressible image stays within the bound.
    let mut flat = Vec::new();
    PngEncoder::new(&mut flat)
        .write_image(&vec![0; 1024 * 1024], 1024, 1024, ExtendedColorType::L8)
        .unwrap();
    let folder = dir.path().join("flat");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("img0.png"), &flat).unwrap();
    let ds = load(&format!("edm:{}", s(&folder)).parse().unwrap()).unwrap();
    assert_eq!(ds.base_len(), 1);
}

/// Found by `lossfloor-fuzz npy`: a format-2.0 preamble whose 4-byte header length says
/// 3 GB made npyz allocate the header before reading it.
#[test]
fn npy_header_length_beyond_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("long-header.npy");
    std::fs::write(&p, b"\x93NUMPY\x02\x00\x00\x00\x00\xbb").unwrap();
    refused(
        format!("npy:{}", s(&p)),
        &["long-header.npy", "header declares 3137339392 bytes"],
    );
    // The same inside an ImageNet .npz entry.
    let p = dir.path().join("long-header.npz");
    let entry = b"\x93NUMPY\x02\x00\x00\x00\x00\xbb".to_vec();
    write_zip(&p, &[("data.npy", entry, CompressionMethod::Stored)]);
    refused(
        format!("imagenet64:{}", s(&p)),
        &[
            "long-header.npz",
            "array 'data'",
            "header declares 3137339392 bytes",
        ],
    );
}

/// Found by `lossfloor-fuzz fid-stats`: stray `{` in the header dict sent npyz's parser into
/// exponential backtracking (over a minute for 14 of them); refused within the second.
#[test]
fn npy_header_nested_too_deep() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nested.npy");
    let mut bytes = npy_bytes("<f4", &[2, 2], &[0; 16]);
    let at = bytes.windows(9).position(|w| w == b"'shape': ").unwrap() + 9;
    bytes.splice(at..at, b"{{{{{{{{{{{{{{".iter().copied());
    bytes.truncate(bytes.len() - 16);
    // Keep the declared header length in step with the 14 bytes inserted.
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) + 14;
    bytes[8..10].copy_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&[0; 16]);
    std::fs::write(&p, bytes).unwrap();
    refused(
        format!("npy:{}", s(&p)),
        &["nested.npy", "nests brackets deeper than 4"],
    );
}
