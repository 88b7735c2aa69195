//! IDX files (MNIST / Fashion-MNIST), plain or gzipped.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::limits::{check_memory, checked_product, DEFLATE_MAX_RATIO};
use crate::util::{fill, read_file, FillError};
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

/// Parses an IDX header (`head` holds at least the header bytes, or all there are) and
/// checks the magic. Returns the dims and the header's length.
fn parse_header(path: &Path, head: &[u8], magic: u32) -> Result<(Vec<usize>, usize), DataError> {
    let ndim = (magic & 0xff) as usize;
    let what = expected_of(magic);
    if head.len() < 4 {
        return Err(DataError::format(
            path,
            format!(
                "truncated: {} bytes, too short for an IDX header; expected {what}",
                head.len()
            ),
        ));
    }
    let found = be_u32(head);
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
    if head.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated: expected at least {header} header bytes, found {}",
                head.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| be_u32(&head[4 + 4 * k..]) as usize)
        .collect();
    Ok((dims, header))
}

fn expected_of(magic: u32) -> &'static str {
    if magic == IMAGES_MAGIC {
        IMAGES_EXPECTED
    } else {
        LABELS_EXPECTED
    }
}

fn dims_text(dims: &[usize]) -> String {
    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    d.join("x")
}

/// The data bytes the dims declare, overflow-checked: an overflow is an error naming the
/// dims and what the file holds (`holds`, e.g. "32 bytes").
fn declared_len(path: &Path, dims: &[usize], holds: &str) -> Result<usize, DataError> {
    checked_product(dims).ok_or_else(|| {
        DataError::format(
            path,
            format!(
                "dims {} declare more than {} data bytes (the size overflows); the file holds {holds}",
                dims_text(dims),
                usize::MAX
            ),
        )
    })
}

/// The error for data of the wrong length: `found` is the whole (unpacked) length, or
/// `None` when more than expected was found; `gz` says the length is after gunzip.
fn size_error(
    path: &Path,
    dims: &[usize],
    header: usize,
    count: usize,
    found: Option<usize>,
    gz: bool,
) -> DataError {
    let expected = header + count;
    let (kind, found) = match found {
        Some(f) if f < expected => ("truncated", format!("{f} bytes")),
        Some(f) => ("size mismatch", format!("{f} bytes")),
        None => ("size mismatch", format!("more than {expected} bytes")),
    };
    DataError::format(
        path,
        format!(
            "{kind}: expected {expected} bytes ({header}-byte header + {} data bytes), \
             found {found}{}",
            dims_text(dims),
            if gz { " (after gunzip)" } else { "" }
        ),
    )
}

/// Reads an IDX file, plain or gzipped: checks the magic, then that the data its dims
/// declare (overflow-checked) is exactly what the file holds before allocating for it. A
/// gzipped file is unpacked only up to the declared size, which must be within what its
/// bytes can unpack to ([`DEFLATE_MAX_RATIO`]) and within the machine's memory. Returns the
/// dims and the data bytes.
fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let what = expected_of(magic);
    let mut raw = read_file(path, what)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        let (dims, header) = parse_header(path, &raw, magic)?;
        let present = raw.len() - header;
        let count = declared_len(path, &dims, &format!("{present} data bytes"))?;
        if count != present {
            return Err(size_error(
                path,
                &dims,
                header,
                count,
                Some(raw.len()),
                false,
            ));
        }
        raw.drain(..header);
        return Ok((dims, raw));
    }
    let gz_err = |e: std::io::Error| {
        DataError::format(
            path,
            format!("gzip stream is corrupt or truncated ({e}); expected {what}"),
        )
    };
    let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
    let mut head = vec![0u8; 4 + 4 * (magic & 0xff) as usize];
    match fill(&mut dec, &mut head) {
        Ok(()) => {}
        Err(FillError::Eof(got)) => head.truncate(got),
        Err(FillError::Io(e)) => return Err(gz_err(e)),
    }
    let (dims, header) = parse_header(path, &head, magic)?;
    let bound = (raw.len() as u64).saturating_mul(DEFLATE_MAX_RATIO);
    let holds = format!(
        "a {}-byte gzip stream, at most {bound} bytes unpacked",
        raw.len()
    );
    let count = declared_len(path, &dims, &holds)?;
    if count as u64 > bound {
        return Err(DataError::format(
            path,
            format!(
                "truncated: dims {} declare {count} data bytes, but the file holds {holds}",
                dims_text(&dims)
            ),
        ));
    }
    check_memory(&format!("dims {}", dims_text(&dims)), Some(count as u128))
        .map_err(|m| DataError::format(path, m))?;
    let mut data = Vec::with_capacity(count);
    (&mut dec)
        .take(count as u64 + 1)
        .read_to_end(&mut data)
        .map_err(gz_err)?;
    if data.len() != count {
        let found = (data.len() <= count).then_some(header + data.len());
        return Err(size_error(path, &dims, header, count, found, true));
    }
    Ok((dims, data))
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
    let (dims, pixels) = read_idx(images, IMAGES_MAGIC)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if n == 0 || h == 0 || w == 0 {
        return Err(DataError::format(
            images,
            format!("holds {n} images of {h}x{w}; expected at least one non-empty image"),
        ));
    }
    let labels = match labels {
        None => None,
        Some(lp) => {
            let (ldims, ldata) = read_idx(lp, LABELS_MAGIC)?;
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
