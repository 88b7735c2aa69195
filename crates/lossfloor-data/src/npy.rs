//! NumPy `.npy` parsing (headers via `npyz`, data read in bulk) and the `npy:` loader.

use std::io::{BufReader, Read};
use std::path::Path;

use npyz::{DType, Endianness, NpyHeader, Order, TypeChar};

use crate::limits::{checked_product, read_npy_head};
use crate::util::{fill, not_found, FillError};
use crate::{DataError, Dataset, ImageShape, Storage};

/// Element type of an array we know how to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    /// `f4`.
    F32,
    /// `f8`.
    F64,
    /// Integer of `size` bytes (`u1` is `Int { signed: false, size: 1 }`).
    Int { signed: bool, size: usize },
}

/// A parsed `.npy` header.
#[derive(Clone, Debug)]
pub(crate) struct NpyInfo {
    pub shape: Vec<usize>,
    pub elem: Elem,
    pub big_endian: bool,
    /// The dtype as written, e.g. `<f4`, for messages.
    pub descr: String,
}

impl NpyInfo {
    /// Total number of elements.
    pub fn count(&self) -> usize {
        self.shape.iter().product()
    }

    fn item_size(&self) -> usize {
        match self.elem {
            Elem::F32 => 4,
            Elem::F64 => 8,
            Elem::Int { size, .. } => size,
        }
    }

    /// True for `uint8` (`|u1`).
    pub fn is_u8(&self) -> bool {
        self.elem
            == Elem::Int {
                signed: false,
                size: 1,
            }
    }
}

/// Where an array lives, for error messages: a file plus an optional prefix (e.g. the
/// `.npz` entry name).
pub(crate) struct Loc<'a> {
    pub path: &'a Path,
    pub prefix: String,
}

impl Loc<'_> {
    pub fn err(&self, detail: impl std::fmt::Display) -> DataError {
        DataError::format(self.path, format!("{}{detail}", self.prefix))
    }
}

/// Counts the bytes read through it (to learn the length of an `.npy` header).
struct Counting<'a, R: Read + ?Sized> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read + ?Sized> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Parses an `.npy` header, leaving `r` at the first data byte. Rejects Fortran order
/// (for rank > 1), structured dtypes and element types other than floats and integers.
///
/// `stream_len` is the most bytes the whole stream (header included) can hold: the file's
/// length, or for an archive entry a bound from its sizes. The data the shape declares is
/// checked against what is left after the header, with overflow-checked arithmetic, so that
/// no reader allocates for data that is not there.
pub(crate) fn read_header<R: Read + ?Sized>(
    r: &mut R,
    loc: &Loc,
    stream_len: u64,
) -> Result<NpyInfo, DataError> {
    let head = read_npy_head(r, stream_len)
        .map_err(|e| loc.err(format!("not a valid .npy array: {e}")))?;
    let head_len = head.len() as u64;
    let mut stream = std::io::Cursor::new(head).chain(r);
    let mut counting = Counting {
        inner: &mut stream,
        n: 0,
    };
    let header = NpyHeader::from_reader(&mut counting).map_err(|e| {
        loc.err(format!(
            "not a valid .npy array ({e}); expected a NumPy .npy header"
        ))
    })?;
    let ts = match header.dtype() {
        DType::Plain(ts) => ts,
        other => {
            return Err(loc.err(format!(
                "structured dtype {} is not supported; expected a plain numeric array",
                other.descr()
            )))
        }
    };
    let descr = ts.to_string();
    let size = ts.size_field() as usize;
    let elem = match (ts.type_char(), size) {
        (TypeChar::Float, 4) => Elem::F32,
        (TypeChar::Float, 8) => Elem::F64,
        (TypeChar::Int, 1 | 2 | 4 | 8) => Elem::Int { signed: true, size },
        (TypeChar::Uint, 1 | 2 | 4 | 8) => Elem::Int {
            signed: false,
            size,
        },
        _ => {
            return Err(loc.err(format!(
                "dtype {descr} is not supported; expected float32, float64 or an integer type"
            )))
        }
    };
    let shape: Vec<usize> = header.shape().iter().map(|&d| d as usize).collect();
    if header.order() == Order::Fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(loc.err(
            "array is stored in Fortran order; expected C order (np.ascontiguousarray before saving)",
        ));
    }
    // npyz stops at the end of the header, which `read_npy_head` read whole.
    debug_assert_eq!(counting.n, head_len);
    let present = stream_len.saturating_sub(counting.n);
    match checked_product(&shape).and_then(|n| n.checked_mul(size)) {
        None => {
            return Err(loc.err(format!(
                "array data truncated: shape {shape:?} of {descr} declares more than {} bytes \
                 (the size overflows), found {present} bytes",
                usize::MAX
            )))
        }
        Some(want) if want as u64 > present => {
            return Err(loc.err(format!(
                "array data truncated: expected {want} bytes for shape {shape:?} of {descr}, \
                 found {present} bytes"
            )))
        }
        Some(_) => {}
    }
    Ok(NpyInfo {
        shape,
        elem,
        big_endian: ts.endianness() == Endianness::Big,
        descr,
    })
}

fn truncated(loc: &Loc, info: &NpyInfo, got: usize) -> DataError {
    let want = info.count() * info.item_size();
    loc.err(format!(
        "array data truncated: expected {want} bytes for shape {:?} of {}, found {got} bytes",
        info.shape, info.descr
    ))
}

fn fill_or_err<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    loc: &Loc,
    info: &NpyInfo,
    done: usize,
) -> Result<(), DataError> {
    fill(r, buf).map_err(|e| match e {
        FillError::Eof(got) => truncated(loc, info, done + got),
        FillError::Io(e) => loc.err(format!("read error: {e}")),
    })
}

/// Reads `uint8` data, appending it to `out` (which should have capacity reserved).
pub(crate) fn read_u8_into<R: Read + ?Sized>(
    r: &mut R,
    info: &NpyInfo,
    loc: &Loc,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    let start = out.len();
    out.resize(start + info.count(), 0);
    fill_or_err(r, &mut out[start..], loc, info, 0)
}

/// Reads integer data as `i128` (any size, either endianness).
pub(crate) fn read_ints<R: Read + ?Sized>(
    r: &mut R,
    info: &NpyInfo,
    loc: &Loc,
) -> Result<Vec<i128>, DataError> {
    let Elem::Int { signed, size } = info.elem else {
        return Err(loc.err(format!(
            "dtype {} is not an integer type; expected integer labels",
            info.descr
        )));
    };
    let mut bytes = vec![0u8; info.count() * size];
    fill_or_err(r, &mut bytes, loc, info, 0)?;
    Ok(bytes
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            let ext = if signed && (if info.big_endian { c[0] } else { c[size - 1] }) & 0x80 != 0 {
                0xff
            } else {
                0
            };
            b.fill(ext);
            if info.big_endian {
                b[8 - size..].copy_from_slice(c);
                if signed {
                    i128::from(i64::from_be_bytes(b))
                } else {
                    i128::from(u64::from_be_bytes(b))
                }
            } else {
                b[..size].copy_from_slice(c);
                if signed {
                    i128::from(i64::from_le_bytes(b))
                } else {
                    i128::from(u64::from_le_bytes(b))
                }
            }
        })
        .collect())
}

/// Reads `f32`/`f64` data as `f32` in chunks (no full byte copy), rejecting NaN/inf and naming
/// the flat index (and row, `row_len` values per row) of the first bad value.
pub(crate) fn read_floats<R: Read + ?Sized>(
    r: &mut R,
    info: &NpyInfo,
    loc: &Loc,
    row_len: usize,
) -> Result<Vec<f32>, DataError> {
    let n = info.count();
    let isz = info.item_size();
    let mut out = Vec::with_capacity(n);
    let chunk_items = (1 << 20) / isz;
    let mut buf = vec![0u8; chunk_items * isz];
    while out.len() < n {
        let k = chunk_items.min(n - out.len());
        let bytes = &mut buf[..k * isz];
        fill_or_err(r, bytes, loc, info, out.len() * isz)?;
        let base = out.len();
        match (info.elem, info.big_endian) {
            (Elem::F32, false) => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
            ),
            (Elem::F32, true) => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_be_bytes(c.try_into().unwrap())),
            ),
            (Elem::F64, false) => out.extend(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32),
            ),
            (Elem::F64, true) => out.extend(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_be_bytes(c.try_into().unwrap()) as f32),
            ),
            (Elem::Int { .. }, _) => {
                return Err(loc.err(format!(
                    "dtype {} is not a float type; expected float32 or float64",
                    info.descr
                )))
            }
        }
        if let Some(j) = out[base..].iter().position(|v| !v.is_finite()) {
            let i = base + j;
            let note = if info.elem == Elem::F64 && !out[i].is_nan() {
                " (or overflows float32)"
            } else {
                ""
            };
            return Err(loc.err(format!(
                "value {} at flat index {i} (row {}){note} is not finite; expected finite floats",
                out[i],
                i / row_len.max(1)
            )));
        }
    }
    Ok(out)
}

/// Maps an array shape `[N, ...]` to `(N, ImageShape)`: `[N,C,H,W]`, `[N,H,W]` (C=1) or
/// `[N,D]` (C=H=1, W=D).
pub(crate) fn image_shape_of(info: &NpyInfo, loc: &Loc) -> Result<(usize, ImageShape), DataError> {
    let s = &info.shape;
    let shape = match s.len() {
        2 => ImageShape::new(1, 1, s[1]),
        3 => ImageShape::new(1, s[1], s[2]),
        // Square images with at most 4 trailing channels and more leading ones are almost
        // surely channels-last (numpy/PIL/TensorFlow's layout), which read as NCHW would
        // give 1-pixel-wide images of H channels.
        4 if s[3] <= 4 && s[1] > 4 && s[1] == s[2] => {
            return Err(loc.err(format!(
                "array has shape {s:?}, which looks like channels-last [N, H, W, C]; \
                 lossfloor reads [N, C, H, W]: save x.transpose(0, 3, 1, 2) instead"
            )))
        }
        4 => ImageShape::new(s[1], s[2], s[3]),
        _ => {
            return Err(loc.err(format!(
                "array has shape {s:?}; expected [N, C, H, W], [N, H, W] or [N, D]"
            )))
        }
    };
    if s[0] == 0 || shape.dim() == 0 {
        return Err(loc.err(format!(
            "array has shape {s:?} with no data; expected at least one non-empty row"
        )));
    }
    Ok((s[0], shape))
}

/// Loads an `.npy` file: float32/float64 (taken as already scaled) or uint8 (scaled like
/// images) arrays shaped `[N,C,H,W]`, `[N,H,W]` or `[N,D]`.
pub(crate) fn load_npy(path: &Path, source: String) -> Result<Dataset, DataError> {
    const EXPECTED: &str =
        "a .npy array [N, C, H, W], [N, H, W] or [N, D] of float32/float64 (or uint8)";
    if !path.exists() {
        return Err(not_found(path, EXPECTED));
    }
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, "opening file", e))?;
    let len = file
        .metadata()
        .map_err(|e| DataError::io(path, "reading file size", e))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let loc = Loc {
        path,
        prefix: String::new(),
    };
    let info = read_header(&mut r, &loc, len)?;
    let (_, shape) = image_shape_of(&info, &loc)?;
    let storage = match info.elem {
        Elem::F32 | Elem::F64 => Storage::F32(read_floats(&mut r, &info, &loc, shape.dim())?),
        _ if info.is_u8() => {
            let mut v = Vec::new();
            read_u8_into(&mut r, &info, &loc, &mut v)?;
            Storage::U8(v)
        }
        _ => {
            return Err(loc.err(format!(
                "dtype {} is not supported; expected {EXPECTED}",
                info.descr
            )))
        }
    };
    Dataset::build(source, shape, storage, None, None)
}
