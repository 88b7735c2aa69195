//! Dataset readers for lossfloor.
//!
//! Every reader produces a [`Dataset`]: `N` images of one [`ImageShape`] (channel-first,
//! `C×H×W` per image), optional integer class labels, and an optional virtual horizontal
//! flip that doubles the number of rows without copying anything.
//!
//! Pixel convention: 8-bit sources are kept as `u8` in memory (ImageNet-64 is 1.28 M × 12 288
//! bytes) and turned into `f32` in `[-1, 1]` only when rows are read, via `x / 127.5 - 1`
//! (see [`u8_to_unit`]). Floating-point `.npy` arrays are stored as `f32` and taken as already
//! scaled.
//!
//! Supported sources (see [`DataSpec`] for the spec strings and [`load`] to read one):
//! CIFAR-10 binary batches, EDM `dataset_tool.py` zips/folders of PNGs, downsampled
//! ImageNet `.npz` batches, IDX files (MNIST / Fashion-MNIST, optionally gzipped), `.npy`
//! arrays, and the Debian-packaged Fashion-MNIST.

#![deny(missing_docs)]

mod cifar;
mod edm;
mod error;
#[cfg(test)]
mod hostile_tests;
mod idx;
mod imagenet;
pub mod limits;
mod npy;
mod spec;
mod util;

pub use error::DataError;
pub use spec::{load, load_fashion_mnist, DataSpec, FASHION_MNIST_DIR};

/// Shape of one image, channel-first (`C×H×W`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageShape {
    /// Number of channels (1 for grayscale, 3 for RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels (the axis mirrored by x-flip).
    pub width: usize,
}

impl ImageShape {
    /// Builds a shape from channels, height and width.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        ImageShape {
            channels,
            height,
            width,
        }
    }

    /// Number of values per image: `channels * height * width`.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `dim()` with overflow checking; `None` if the product does not fit in `usize`.
    fn checked_dim(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// Maps an 8-bit pixel value to `[-1, 1]`: `x / 127.5 - 1` (0 → -1.0, 255 → 1.0).
#[inline]
pub fn u8_to_unit(x: u8) -> f32 {
    f32::from(x) / 127.5 - 1.0
}

/// Pixel storage: raw bytes (scaled on read) or already scaled floats.
#[derive(Clone, Debug)]
enum Storage {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl Storage {
    fn len(&self) -> usize {
        match self {
            Storage::U8(v) => v.len(),
            Storage::F32(v) => v.len(),
        }
    }
}

/// An in-memory image dataset with optional labels and optional virtual x-flip.
///
/// Rows `0..base_len()` are the stored images; when x-flip is on ([`Dataset::with_xflip`]),
/// rows `base_len()..2*base_len()` are the same images mirrored along the width axis.
#[derive(Clone, Debug)]
pub struct Dataset {
    source: String,
    shape: ImageShape,
    storage: Storage,
    n: usize,
    labels: Option<Vec<u32>>,
    num_classes: Option<usize>,
    xflip: bool,
}

impl Dataset {
    /// Builds a dataset from 8-bit pixels, `N*C*H*W` values with each image stored `C×H×W`.
    ///
    /// Pixels are kept as bytes and scaled with [`u8_to_unit`] when rows are read.
    /// `labels`, when given, must hold one entry per image. `num_classes`, when given, must
    /// exceed every label; when `None` and labels are present it is inferred as `max + 1`.
    pub fn from_u8(
        source: String,
        shape: ImageShape,
        pixels: Vec<u8>,
        labels: Option<Vec<u32>>,
        num_classes: Option<usize>,
    ) -> Result<Self, DataError> {
        Self::build(source, shape, Storage::U8(pixels), labels, num_classes)
    }

    /// Builds a dataset from already scaled floats, `N*C*H*W` values with each image `C×H×W`.
    ///
    /// Rejects NaN and ±inf, naming the flat index (and row) of the first bad value.
    /// Labels and `num_classes` follow the same rules as [`Dataset::from_u8`].
    pub fn from_f32(
        source: String,
        shape: ImageShape,
        values: Vec<f32>,
        labels: Option<Vec<u32>>,
        num_classes: Option<usize>,
    ) -> Result<Self, DataError> {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let row = shape.checked_dim().filter(|&d| d > 0).map(|d| i / d);
            return Err(DataError::Invalid {
                origin: source,
                detail: format!(
                    "value {} at flat index {i}{} is not finite; expected finite floats",
                    values[i],
                    row.map(|r| format!(" (row {r})")).unwrap_or_default()
                ),
            });
        }
        Self::build(source, shape, Storage::F32(values), labels, num_classes)
    }

    fn build(
        source: String,
        shape: ImageShape,
        storage: Storage,
        labels: Option<Vec<u32>>,
        num_classes: Option<usize>,
    ) -> Result<Self, DataError> {
        let invalid = |detail: String| DataError::Invalid {
            origin: source.clone(),
            detail,
        };
        let dim = match shape.checked_dim() {
            Some(d) if d > 0 => d,
            _ => {
                return Err(invalid(format!(
                    "image shape {shape} is empty or too large; expected positive channels, height and width"
                )))
            }
        };
        let total = storage.len();
        if !total.is_multiple_of(dim) {
            return Err(invalid(format!(
                "{total} pixel values is not a multiple of the image size {shape} = {dim}"
            )));
        }
        let n = total / dim;
        let mut num_classes = num_classes;
        if let Some(labels) = &labels {
            if labels.len() != n {
                return Err(invalid(format!(
                    "{} labels for {n} images; expected one label per image",
                    labels.len()
                )));
            }
            let max = labels.iter().copied().max();
            match num_classes {
                Some(k) => {
                    if let Some(i) = labels.iter().position(|&l| l as usize >= k) {
                        return Err(invalid(format!(
                            "label {} of image {i} is out of range; expected 0..{k} ({k} classes)",
                            labels[i]
                        )));
                    }
                }
                None => num_classes = max.map(|m| m as usize + 1),
            }
        }
        Ok(Dataset {
            source,
            shape,
            storage,
            n,
            labels,
            num_classes,
            xflip: false,
        })
    }

    /// The spec string or path this dataset was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of rows, counting the mirrored copies when x-flip is on (`2 * base_len()`).
    pub fn len(&self) -> usize {
        if self.xflip {
            2 * self.n
        } else {
            self.n
        }
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Number of stored images, not counting x-flipped copies.
    pub fn base_len(&self) -> usize {
        self.n
    }

    /// Shape of one image.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// Values per row: `C*H*W`.
    pub fn dim(&self) -> usize {
        self.shape.dim()
    }

    /// Labels of the stored images (`base_len()` entries; the flipped copy of image `i`
    /// shares label `i`, see [`Dataset::label`]), or `None` for an unlabelled dataset.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// Label of row `i` (flip-aware: row `base_len() + j` has the label of image `j`).
    /// `None` when unlabelled or `i >= len()`.
    pub fn label(&self, i: usize) -> Option<u32> {
        if i >= self.len() {
            return None;
        }
        self.labels.as_ref().map(|l| l[i % self.n])
    }

    /// Number of classes (label range `0..num_classes`), if labelled.
    pub fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    /// Whether the virtual x-flip doubling is on.
    pub fn xflip(&self) -> bool {
        self.xflip
    }

    /// True when pixels are stored as bytes (scaled on read), false when stored as `f32`.
    pub fn stores_u8(&self) -> bool {
        matches!(self.storage, Storage::U8(_))
    }

    /// Turns the virtual x-flip on or off. With it on, rows `N..2N` are images `0..N`
    /// mirrored along the width axis; nothing is copied.
    pub fn with_xflip(mut self, on: bool) -> Self {
        self.xflip = on;
        self
    }

    /// Keeps only the first `n` stored images (all of them if `n >= base_len()`), e.g. for
    /// quick runs. `num_classes` is left unchanged. Frees the memory of the dropped images.
    pub fn take_first(mut self, n: usize) -> Self {
        let n = n.min(self.n);
        let keep = n * self.dim();
        match &mut self.storage {
            Storage::U8(v) => {
                v.truncate(keep);
                v.shrink_to_fit();
            }
            Storage::F32(v) => {
                v.truncate(keep);
                v.shrink_to_fit();
            }
        }
        if let Some(l) = &mut self.labels {
            l.truncate(n);
            l.shrink_to_fit();
        }
        self.n = n;
        self
    }

    /// Rows `[start, start + count)` as contiguous `f32` (row-major, each row `C*H*W`).
    ///
    /// Borrows the storage directly when it is already `f32` and the range involves no
    /// flipped row; otherwise fills `scratch` (resized to `count * dim()`) and returns it.
    ///
    /// # Panics
    /// If `start + count > len()`.
    pub fn rows<'a>(&'a self, start: usize, count: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        let end = start
            .checked_add(count)
            .filter(|&e| e <= self.len())
            .unwrap_or_else(|| {
                panic!(
                    "rows({start}, {count}) out of range for a dataset of {} rows",
                    self.len()
                )
            });
        let d = self.dim();
        if let Storage::F32(v) = &self.storage {
            if end <= self.n {
                return &v[start * d..end * d];
            }
        }
        scratch.resize(count * d, 0.0);
        for (k, out) in scratch.chunks_exact_mut(d).enumerate() {
            self.read_row(start + k, out);
        }
        &scratch[..]
    }

    /// Writes row `i` (flip-aware) into `out` as `f32`.
    ///
    /// # Panics
    /// If `i >= len()` or `out.len() != dim()`.
    pub fn read_row(&self, i: usize, out: &mut [f32]) {
        assert!(
            i < self.len(),
            "row {i} out of range for a dataset of {} rows",
            self.len()
        );
        let d = self.dim();
        assert_eq!(out.len(), d, "read_row: output length must equal dim()");
        let (base, flip) = if i >= self.n {
            (i - self.n, true)
        } else {
            (i, false)
        };
        let w = self.shape.width;
        let range = base * d..(base + 1) * d;
        match &self.storage {
            Storage::U8(v) => {
                let src = &v[range];
                if flip {
                    for (o_line, s_line) in out.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
                        for (o, &s) in o_line.iter_mut().zip(s_line.iter().rev()) {
                            *o = u8_to_unit(s);
                        }
                    }
                } else {
                    for (o, &s) in out.iter_mut().zip(src) {
                        *o = u8_to_unit(s);
                    }
                }
            }
            Storage::F32(v) => {
                let src = &v[range];
                if flip {
                    for (o_line, s_line) in out.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
                        for (o, &s) in o_line.iter_mut().zip(s_line.iter().rev()) {
                            *o = s;
                        }
                    }
                } else {
                    out.copy_from_slice(src);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        // 2 images, 2 channels, 2x3.
        let pixels: Vec<u8> = (0..24).map(|v| v * 10).collect();
        Dataset::from_u8(
            "tiny".into(),
            ImageShape::new(2, 2, 3),
            pixels,
            Some(vec![4, 1]),
            None,
        )
        .unwrap()
    }

    #[test]
    fn u8_scaling_and_flip() {
        let ds = tiny().with_xflip(true);
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.base_len(), 2);
        assert_eq!(ds.num_classes(), Some(5));
        assert_eq!(ds.label(3), Some(1));
        assert_eq!(ds.label(4), None);
        let mut row = vec![0.0; 12];
        ds.read_row(2, &mut row);
        let expect: Vec<f32> = [20u8, 10, 0, 50, 40, 30, 80, 70, 60, 110, 100, 90]
            .iter()
            .map(|&b| u8_to_unit(b))
            .collect();
        assert_eq!(row, expect);
        assert_eq!(u8_to_unit(0), -1.0);
        assert_eq!(u8_to_unit(255), 1.0);
    }

    #[test]
    fn f32_rows_borrow_and_copy() {
        let vals: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let ds = Dataset::from_f32("f".into(), ImageShape::new(1, 1, 3), vals, None, None)
            .unwrap()
            .with_xflip(true);
        let mut scratch = Vec::new();
        let r = ds.rows(1, 2, &mut scratch);
        assert_eq!(r, &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert!(scratch.is_empty(), "borrowed path must not touch scratch");
        let r = ds.rows(3, 2, &mut scratch);
        assert_eq!(r, &[9.0, 10.0, 11.0, 2.0, 1.0, 0.0]);
    }

    #[test]
    fn constructor_errors() {
        let e = Dataset::from_f32(
            "src".into(),
            ImageShape::new(1, 1, 2),
            vec![0.0, 1.0, f32::NAN, 0.0],
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("src") && e.contains("index 2") && e.contains("row 1"),
            "{e}"
        );
        let e = Dataset::from_u8("s".into(), ImageShape::new(1, 2, 2), vec![0; 7], None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple"), "{e}");
        let e = Dataset::from_u8(
            "s".into(),
            ImageShape::new(1, 1, 1),
            vec![0; 2],
            Some(vec![0, 3]),
            Some(3),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("label 3") && e.contains("0..3"), "{e}");
    }

    #[test]
    fn take_first_truncates() {
        let ds = tiny().take_first(1).with_xflip(true);
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.labels(), Some(&[4u32][..]));
        assert_eq!(ds.num_classes(), Some(5));
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn rows_out_of_range_panics() {
        let ds = tiny();
        let mut s = Vec::new();
        let _ = ds.rows(1, 2, &mut s);
    }
}
