//! Downsampled ImageNet (Chrabaszcz et al. 2017) `.npz` batches.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::limits::{check_memory, DEFLATE_MAX_RATIO};
use crate::npy::{read_header, read_ints, read_u8_into, Loc, NpyInfo};
use crate::util::{natural_key, not_found};
use crate::{DataError, Dataset, ImageShape};

const EXPECTED: &str = "a directory of downsampled-ImageNet train_data_batch_1.npz … \
                        train_data_batch_10.npz (or one .npz) holding 'data' uint8 [N, 3*S*S] and \
                        'labels' 1..1000";

/// Number of ImageNet classes.
const NUM_CLASSES: usize = 1000;

/// An open `.npz` archive and the length of its file in bytes.
struct Archive {
    zip: zip::ZipArchive<BufReader<File>>,
    len: u64,
}

fn open_archive(path: &Path) -> Result<Archive, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, "opening file", e))?;
    let len = file
        .metadata()
        .map_err(|e| DataError::io(path, "reading file size", e))?
        .len();
    let zip = zip::ZipArchive::new(BufReader::with_capacity(1 << 20, file)).map_err(|e| {
        DataError::format(
            path,
            format!("not a readable .npz (zip) archive ({e}); expected {EXPECTED}"),
        )
    })?;
    Ok(Archive { zip, len })
}

/// The most bytes a zip entry can honestly unpack to: its declared size, but no more than its
/// compressed bytes (themselves no more than the archive) can expand to.
fn entry_bound(entry: &zip::read::ZipFile<'_, BufReader<File>>, archive_len: u64) -> u64 {
    let packed = entry.compressed_size().min(archive_len);
    let ratio = match entry.compression() {
        zip::CompressionMethod::Stored => 1,
        _ => DEFLATE_MAX_RATIO,
    };
    entry.size().min(packed.saturating_mul(ratio))
}

/// Entry name of array `key` (`key.npy`, or bare `key`).
fn entry_name(archive: &Archive, path: &Path, key: &str) -> Result<String, DataError> {
    let with_ext = format!("{key}.npy");
    let names: Vec<&str> = archive.zip.file_names().collect();
    if let Some(n) = names.iter().find(|n| **n == with_ext || **n == key) {
        return Ok(n.to_string());
    }
    let mut keys: Vec<&str> = names.iter().map(|n| n.trim_end_matches(".npy")).collect();
    keys.sort();
    Err(DataError::format(
        path,
        format!(
            "no array '{key}' (arrays: {}); expected 'data' uint8 [N, 3*S*S] and 'labels'",
            keys.join(", ")
        ),
    ))
}

/// Opens array `key` and parses its header; calls `f` with the reader at the data.
fn with_array<T>(
    archive: &mut Archive,
    path: &Path,
    key: &str,
    f: impl FnOnce(&mut dyn Read, &NpyInfo, &Loc) -> Result<T, DataError>,
) -> Result<T, DataError> {
    let name = entry_name(archive, path, key)?;
    let loc = Loc {
        path,
        prefix: format!("array '{key}': "),
    };
    let archive_len = archive.len;
    let mut entry = archive
        .zip
        .by_name(&name)
        .map_err(|e| loc.err(format!("cannot open zip entry {name} ({e})")))?;
    let bound = entry_bound(&entry, archive_len);
    let info = read_header(&mut entry, &loc, bound)?;
    f(&mut entry, &info, &loc)
}

/// Checks the `data` header and returns `(N, shape)`.
fn data_shape(info: &NpyInfo, loc: &Loc) -> Result<(usize, ImageShape), DataError> {
    if !info.is_u8() {
        return Err(loc.err(format!(
            "dtype {} is not uint8; expected uint8 pixels",
            info.descr
        )));
    }
    let s = &info.shape;
    let shape = match s.len() {
        2 => {
            let side = ((s[1] / 3) as f64).sqrt().round() as usize;
            if s[1] == 0 || 3 * side * side != s[1] {
                return Err(loc.err(format!(
                    "row length {} is not 3*S*S for a square RGB image; expected e.g. 12288 = 3*64*64",
                    s[1]
                )));
            }
            ImageShape::new(3, side, side)
        }
        4 if s[1] == 3 && s[2] > 0 && s[3] > 0 => ImageShape::new(3, s[2], s[3]),
        _ => {
            return Err(loc.err(format!(
                "shape {s:?}; expected [N, 3*S*S] (channel-first rows) or [N, 3, H, W]"
            )))
        }
    };
    Ok((s[0], shape))
}

/// The `.npz` files to read: one file, or in a directory the `train_data_batch_*.npz`
/// files (all `*.npz` when there are none), in natural order.
fn batch_files(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path).map_err(|e| DataError::io(path, "listing directory", e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(path, "listing directory", e))?;
        if let Some(n) = entry.file_name().to_str() {
            if n.ends_with(".npz") && entry.path().is_file() {
                names.push(n.to_string());
            }
        }
    }
    if names.iter().any(|n| n.starts_with("train_data_batch_")) {
        names.retain(|n| n.starts_with("train_data_batch_"));
    }
    if names.is_empty() {
        return Err(DataError::format(
            path,
            format!("contains no .npz files; expected {EXPECTED}"),
        ));
    }
    names.sort_by_key(|n| natural_key(n));
    Ok(names.into_iter().map(|n| path.join(n)).collect())
}

/// Loads downsampled-ImageNet `.npz` batches. Labels are 1-based in the files and stored
/// 0-based; extra arrays such as `mean` are ignored.
pub(crate) fn load_imagenet(path: &Path, source: String) -> Result<Dataset, DataError> {
    if !path.exists() {
        return Err(not_found(path, EXPECTED));
    }
    let files = batch_files(path)?;
    // Pass 1: headers only, to size the pixel buffer exactly (the train set is ~15.7 GB).
    let mut shape: Option<(ImageShape, PathBuf)> = None;
    let mut total = 0usize;
    for file in &files {
        let mut archive = open_archive(file)?;
        let (n, s) = with_array(&mut archive, file, "data", |_, info, loc| {
            data_shape(info, loc)
        })?;
        match &shape {
            None => shape = Some((s, file.clone())),
            Some((first, first_file)) if *first != s => {
                return Err(DataError::format(
                    file,
                    format!(
                        "images are {s} but {} has {first}; expected all batches to share one resolution",
                        first_file.display()
                    ),
                ))
            }
            Some(_) => {}
        }
        // Each batch's `data` fits in its file (read_header checked it), so neither the sum
        // nor the product below can overflow in practice; they are checked all the same.
        total = total.checked_add(n).ok_or_else(|| {
            DataError::format(file, "the image counts of the batches overflow when added")
        })?;
    }
    let (shape, _) = shape.expect("at least one file");
    let bytes = total.checked_mul(shape.dim());
    check_memory(
        &format!("the pixels of {total} images of {shape} (all batches)"),
        bytes.map(|b| b as u128),
    )
    .map_err(|m| DataError::format(path, m))?;
    let bytes = bytes.expect("checked by check_memory");
    let mut pixels: Vec<u8> = Vec::new();
    pixels.try_reserve_exact(bytes).map_err(|_| {
        DataError::format(
            path,
            format!("cannot allocate {bytes} bytes for {total} images of {shape}"),
        )
    })?;
    let mut labels: Vec<u32> = Vec::with_capacity(total);
    // Pass 2: data and labels.
    for file in &files {
        let mut archive = open_archive(file)?;
        let n = with_array(&mut archive, file, "data", |r, info, loc| {
            let (n, _) = data_shape(info, loc)?;
            read_u8_into(r, info, loc, &mut pixels)?;
            Ok(n)
        })?;
        with_array(&mut archive, file, "labels", |r, info, loc| {
            if info.count() != n {
                return Err(loc.err(format!(
                    "{} labels for {n} images; expected one label per image",
                    info.count()
                )));
            }
            for (i, v) in read_ints(r, info, loc)?.into_iter().enumerate() {
                if !(1..=NUM_CLASSES as i128).contains(&v) {
                    return Err(loc.err(format!(
                        "label {v} at index {i} is out of range; expected 1-based classes 1..=1000"
                    )));
                }
                labels.push((v - 1) as u32);
            }
            Ok(())
        })?;
    }
    Dataset::from_u8(source, shape, pixels, Some(labels), Some(NUM_CLASSES))
}
