//! IDX files (MNIST / Fashion-MNIST), plain or gzipped.

use std::path::{Path, PathBuf};

use crate::util::read_maybe_gz;
use crate::{DataError, Dataset, ImageShape};

/// Magic of a uint8 image file (N×H×W).
pub(crate) const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of a uint8 label file (N).
pub(crate) const LABELS_MAGIC: u32 = 0x0000_0801;

const IMAGES_EXPECTED: &str = "an IDX image file (magic 0x00000803: uint8, dims N, H, W), \
                               plain or gzipped";
const LABELS_EXPECTED: &str =
    "an IDX label file (magic 0x00000801: uint8, dim N), plain or gzipped";

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses an IDX header, checks the magic and the exact size, and returns the dims and
/// the data bytes.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let ndim = (magic & 0xff) as usize;
    let what = if magic == IMAGES_MAGIC {
        IMAGES_EXPECTED
    } else {
        LABELS_EXPECTED
    };
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!(
                "truncated: {} bytes, too short for an IDX header; expected {what}",
                bytes.len()
            ),
        ));
    }
    let found = be_u32(bytes);
    if found != magic {
        let hint = match (found, magic) {
            (LABELS_MAGIC, IMAGES_MAGIC) => {
                " (this is an IDX label file; point at the *-images-idx3-ubyte file)"
            }
            (IMAGES_MAGIC, LABELS_MAGIC) => " (this is an IDX image file, not labels)",
            _ => "",
        };
        return Err(DataError::format(
            path,
            format!("bad IDX magic 0x{found:08x}{hint}; expected {what}"),
        ));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated: expected at least {header} header bytes, found {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| be_u32(&bytes[4 + 4 * k..]) as usize)
        .collect();
    let count = dims.iter().product::<usize>();
    let expected = header + count;
    if bytes.len() != expected {
        let dims_s: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        return Err(DataError::format(
            path,
            format!(
                "{}: expected {expected} bytes ({header}-byte header + {} data bytes), \
                 found {} bytes (after gunzip)",
                if bytes.len() < expected {
                    "truncated"
                } else {
                    "size mismatch"
                },
                dims_s.join("x"),
                bytes.len()
            ),
        ));
    }
    Ok((dims, &bytes[header..]))
}

/// The label file that sits beside an image file, if any:
/// `*-images-idx3-ubyte[.gz]` → `*-labels-idx1-ubyte[.gz]` (also `images.idx3` spellings),
/// trying the name with and without `.gz`.
pub(crate) fn labels_beside(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    if !name.contains("images") {
        return None;
    }
    let base = name.strip_suffix(".gz").unwrap_or(name);
    let lbase = base.replace("images", "labels").replace("idx3", "idx1");
    [format!("{lbase}.gz"), lbase]
        .into_iter()
        .map(|n| images.with_file_name(n))
        .find(|p| p.is_file())
}

/// Loads an IDX image file and, when given, its label file (`num_classes = max + 1`).
pub(crate) fn load_idx_pair(
    images: &Path,
    labels: Option<&Path>,
    source: String,
) -> Result<Dataset, DataError> {
    let bytes = read_maybe_gz(images, IMAGES_EXPECTED)?;
    let (dims, data) = parse(images, &bytes, IMAGES_MAGIC)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if n == 0 || h == 0 || w == 0 {
        return Err(DataError::format(
            images,
            format!("holds {n} images of {h}x{w}; expected at least one non-empty image"),
        ));
    }
    let pixels = data.to_vec();
    drop(bytes);
    let labels = match labels {
        None => None,
        Some(lp) => {
            let lbytes = read_maybe_gz(lp, LABELS_EXPECTED)?;
            let (ldims, ldata) = parse(lp, &lbytes, LABELS_MAGIC)?;
            if ldims[0] != n {
                return Err(DataError::format(
                    lp,
                    format!(
                        "holds {} labels but {} holds {n} images; expected one label per image",
                        ldims[0],
                        images.display()
                    ),
                ));
            }
            Some(ldata.iter().map(|&b| u32::from(b)).collect())
        }
    };
    Dataset::from_u8(source, ImageShape::new(1, h, w), pixels, labels, None)
}

/// `idx:FILE`: the image file plus its label file beside it, when present.
pub(crate) fn load_idx(path: &Path, source: String) -> Result<Dataset, DataError> {
    let labels = labels_beside(path);
    load_idx_pair(path, labels.as_deref(), source)
}
