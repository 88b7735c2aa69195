//! EDM `dataset_tool.py` output: a zip or a folder of PNGs plus optional `dataset.json`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat};

use crate::limits::{check_memory, DEFLATE_MAX_RATIO};
use crate::util::not_found;
use crate::{DataError, Dataset, ImageShape};

const EXPECTED: &str = "an EDM dataset: a .zip or folder of same-sized 8-bit grayscale or RGB \
                        PNG images (e.g. 00000/img00000000.png) with optional dataset.json";

/// Image extensions EDM would pick up that we do not decode (only PNG is supported).
const OTHER_IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "ppm"];

/// Where the files come from.
enum Source {
    Zip {
        path: PathBuf,
        archive: zip::ZipArchive<BufReader<File>>,
        /// Length of the archive file in bytes.
        len: u64,
    },
    Dir(PathBuf),
}

impl Source {
    /// Error about one file (an archive entry or a file in the folder).
    fn err(&self, name: &str, detail: impl std::fmt::Display) -> DataError {
        match self {
            Source::Zip { path, .. } => DataError::format(path, format!("entry {name}: {detail}")),
            Source::Dir(dir) => DataError::format(dir.join(name), detail.to_string()),
        }
    }

    /// All file names (relative, forward slashes).
    fn names(&self) -> Result<Vec<String>, DataError> {
        match self {
            Source::Zip { archive, .. } => Ok(archive
                .file_names()
                .filter(|n| !n.ends_with('/'))
                .map(str::to_string)
                .collect()),
            Source::Dir(dir) => {
                let mut out = Vec::new();
                walk(dir, "", &mut out)?;
                Ok(out)
            }
        }
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>, DataError> {
        match self {
            Source::Zip { path, archive, len } => {
                let mut f = archive.by_name(name).map_err(|e| {
                    DataError::format(&*path, format!("entry {name}: cannot open ({e})"))
                })?;
                // The declared size is only a hint: reserve no more than the entry's
                // compressed bytes (within the archive) can unpack to; the buffer grows
                // with the data actually read.
                let packed = f.compressed_size().min(*len);
                let ratio = match f.compression() {
                    zip::CompressionMethod::Stored => 1,
                    _ => DEFLATE_MAX_RATIO,
                };
                let hint = f.size().min(packed.saturating_mul(ratio)).min(1 << 30);
                let mut buf = Vec::with_capacity(hint as usize);
                f.read_to_end(&mut buf).map_err(|e| {
                    DataError::format(&*path, format!("entry {name}: cannot read ({e})"))
                })?;
                Ok(buf)
            }
            Source::Dir(dir) => {
                let p = dir.join(name);
                std::fs::read(&p).map_err(|e| DataError::io(p, "reading file", e))
            }
        }
    }
}

/// Recursively lists files under `dir`, as paths relative to the root joined with `/`.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, "listing directory", e))?;
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, "listing directory", e))?;
        let p = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(DataError::format(
                &p,
                "file name is not valid UTF-8; expected UTF-8 image names",
            ));
        };
        let rel = format!("{prefix}{name}");
        if p.is_dir() {
            walk(&p, &format!("{rel}/"), out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

fn extension(name: &str) -> String {
    let file = name.rsplit('/').next().unwrap_or(name);
    match file.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => String::new(),
    }
}

/// Junk that archivers add (macOS resource forks).
fn is_junk(name: &str) -> bool {
    name.starts_with("__MACOSX/") || name.rsplit('/').next().is_some_and(|f| f.starts_with("._"))
}

/// What went wrong in a PNG decoder error, in words: the decoder's own messages for corrupt
/// data print its internal structures (`ChunkType { type: IDA], critical: true, … }`).
fn png_error_text(e: &image::ImageError) -> String {
    use image::ImageError as E;
    match e {
        E::Decoding(_) => "corrupt or truncated PNG data".into(),
        E::Limits(_) => "the image exceeds the decoder's memory limits".into(),
        E::IoError(io) => io.to_string(),
        E::Unsupported(_) => "a PNG feature the decoder does not support".into(),
        E::Parameter(_) | E::Encoding(_) => "not a readable PNG".into(),
    }
}

/// Decodes one PNG into CHW bytes: L8 → 1 channel, RGB8 → 3 channels. RGBA, gray+alpha and
/// 16-bit images are rejected.
fn decode_png(src: &Source, name: &str, bytes: &[u8]) -> Result<(ImageShape, Vec<u8>), DataError> {
    check_png_size(src, name, bytes)?;
    let img = image::load_from_memory_with_format(bytes, ImageFormat::Png).map_err(|e| {
        src.err(
            name,
            format!(
                "cannot decode PNG ({}); expected {EXPECTED}",
                png_error_text(&e)
            ),
        )
    })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    match img {
        DynamicImage::ImageLuma8(g) => Ok((ImageShape::new(1, h, w), g.into_raw())),
        DynamicImage::ImageRgb8(rgb) => {
            let hwc = rgb.into_raw();
            let plane = h * w;
            let mut chw = vec![0u8; 3 * plane];
            for (p, px) in hwc.chunks_exact(3).enumerate() {
                chw[p] = px[0];
                chw[plane + p] = px[1];
                chw[2 * plane + p] = px[2];
            }
            Ok((ImageShape::new(3, h, w), chw))
        }
        other => Err(src.err(
            name,
            format!(
                "PNG color type {:?} is not supported; expected 8-bit grayscale (L) or RGB \
                 (alpha is not dropped silently: convert the image to RGB first)",
                other.color()
            ),
        )),
    }
}

/// Checks the size a PNG's header (IHDR) declares against the bytes present, before the
/// decoder allocates for it: the filtered scanlines, `height × (1 + ⌈width × bits per
/// pixel / 8⌉)` bytes, overflow-checked, must be within what the file's bytes can unpack to
/// ([`DEFLATE_MAX_RATIO`]). Files too short to hold an IHDR are left to the decoder's error.
fn check_png_size(src: &Source, name: &str, bytes: &[u8]) -> Result<(), DataError> {
    if bytes.len() < 29 || &bytes[12..16] != b"IHDR" {
        return Ok(());
    }
    let be = |o: usize| u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let (w, h) = (u64::from(be(16)), u64::from(be(20)));
    let (depth, color) = (u64::from(bytes[24]), bytes[25]);
    let samples = match color {
        0 | 3 => 1,
        4 => 2,
        2 => 3,
        6 => 4,
        _ => return Ok(()), // an invalid color type: the decoder names it
    };
    let need = w
        .checked_mul(samples * depth)
        .map(|bits| bits.div_ceil(8) + 1)
        .and_then(|row| row.checked_mul(h));
    // Slack: an interlaced image has a filter byte per row of each of its 7 passes (at most
    // 8 per image row in all), and a tiny image's zlib framing may outweigh its data.
    let bound = (bytes.len() as u64)
        .saturating_mul(DEFLATE_MAX_RATIO)
        .saturating_add(1024 + 8 * h);
    match need {
        Some(n) if n <= bound => Ok(()),
        _ => Err(src.err(
            name,
            format!(
                "PNG header declares {w}x{h} pixels of {samples} channel(s) at {depth} bits, {}, \
                 but the {}-byte file can unpack to at most {bound} bytes; the file is corrupt",
                need.map(|n| format!("{n} bytes of scanlines"))
                    .unwrap_or_else(|| "more bytes than fit in 64 bits".into()),
                bytes.len()
            ),
        )),
    }
}

/// Parses `dataset.json` into a map from image name to class label (`None` for
/// `{"labels": null}` or no `labels` key).
fn parse_labels(src: &Source, bytes: &[u8]) -> Result<Option<HashMap<String, u32>>, DataError> {
    const FORM: &str =
        r#"expected {"labels": [["00000/img00000000.png", 6], ...]} or {"labels": null}"#;
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| src.err("dataset.json", format!("invalid JSON ({e}); {FORM}")))?;
    let labels = match json.get("labels") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Array(a)) => a,
        Some(_) => return Err(src.err("dataset.json", format!("\"labels\" is not a list; {FORM}"))),
    };
    let mut map = HashMap::with_capacity(labels.len());
    for (k, item) in labels.iter().enumerate() {
        let pair = item.as_array().filter(|p| p.len() == 2);
        let (name, label) = match pair.map(|p| (p[0].as_str(), p[1].as_u64())) {
            Some((Some(n), Some(l))) if l <= u64::from(u32::MAX) => (n, l as u32),
            _ => {
                return Err(src.err(
                    "dataset.json",
                    format!(
                        "labels[{k}] = {item} is not a [file name, non-negative integer class] \
                         pair; {FORM}"
                    ),
                ))
            }
        };
        let name = name.replace('\\', "/");
        if map.insert(name.clone(), label).is_some() {
            return Err(src.err(
                "dataset.json",
                format!("labels list names {name} more than once; expected one entry per image"),
            ));
        }
    }
    Ok(Some(map))
}

/// Loads an EDM dataset (zip or folder). Images are taken in sorted order of their relative
/// paths; RGBA PNGs are rejected rather than having alpha dropped.
pub(crate) fn load_edm(path: &Path, source: String) -> Result<Dataset, DataError> {
    if !path.exists() {
        return Err(not_found(path, EXPECTED));
    }
    let mut src = if path.is_dir() {
        Source::Dir(path.to_path_buf())
    } else {
        let file = File::open(path).map_err(|e| DataError::io(path, "opening file", e))?;
        let len = file
            .metadata()
            .map_err(|e| DataError::io(path, "reading file size", e))?
            .len();
        let archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
            DataError::format(
                path,
                format!("not a readable zip archive ({e}); expected {EXPECTED}"),
            )
        })?;
        Source::Zip {
            path: path.to_path_buf(),
            archive,
            len,
        }
    };
    let mut names = Vec::new();
    let mut has_json = false;
    for name in src.names()? {
        if is_junk(&name) {
            continue;
        }
        if name == "dataset.json" {
            has_json = true;
            continue;
        }
        let ext = extension(&name);
        if ext == "png" {
            names.push(name);
        } else if OTHER_IMAGE_EXTS.contains(&ext.as_str()) {
            return Err(src.err(
                &name,
                "only PNG images are supported; expected .png files (as written by EDM's dataset_tool.py)",
            ));
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(DataError::format(
            path,
            format!("contains no .png images; expected {EXPECTED}"),
        ));
    }
    let label_map = if has_json {
        let bytes = src.read("dataset.json")?;
        parse_labels(&src, &bytes)?
    } else {
        None
    };

    let mut shape: Option<ImageShape> = None;
    let mut pixels = Vec::new();
    for name in &names {
        let bytes = src.read(name)?;
        let (s, chw) = decode_png(&src, name, &bytes)?;
        match shape {
            None => {
                shape = Some(s);
                let bytes = s.dim().checked_mul(names.len());
                check_memory(
                    &format!("the pixels of {} images of {s}", names.len()),
                    bytes.map(|b| b as u128),
                )
                .map_err(|m| DataError::format(path, m))?;
                let bytes = bytes.expect("checked by check_memory");
                pixels.try_reserve_exact(bytes).map_err(|_| {
                    DataError::format(
                        path,
                        format!(
                            "cannot allocate {bytes} bytes for {} images of {s}",
                            names.len()
                        ),
                    )
                })?;
            }
            Some(first) if first != s => {
                return Err(src.err(
                    name,
                    format!(
                        "image is {}x{} with {} channel(s) but {} is {}x{} with {} channel(s); \
                         expected all images to have the same size and channels",
                        s.width,
                        s.height,
                        s.channels,
                        names[0],
                        first.width,
                        first.height,
                        first.channels
                    ),
                ))
            }
            Some(_) => {}
        }
        pixels.extend_from_slice(&chw);
    }
    let shape = shape.expect("at least one image");

    let labels = match label_map {
        None => None,
        Some(map) => {
            let mut labels = Vec::with_capacity(names.len());
            for name in &names {
                match map.get(name) {
                    Some(&l) => labels.push(l),
                    None => {
                        return Err(src.err(
                            "dataset.json",
                            format!(
                                "has no label for image {name}; expected a label for every image"
                            ),
                        ))
                    }
                }
            }
            if map.len() != names.len() {
                let mut missing: Vec<&String> = map
                    .keys()
                    .filter(|k| names.binary_search(k).is_err())
                    .collect();
                missing.sort();
                return Err(src.err(
                    "dataset.json",
                    format!(
                        "labels name {} image(s) not in the dataset, e.g. {}; expected labels only \
                         for existing .png images",
                        missing.len(),
                        missing[0]
                    ),
                ));
            }
            Some(labels)
        }
    };
    Dataset::from_u8(source, shape, pixels, labels, None)
}
