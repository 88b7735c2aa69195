//! `.npy` latents in and out, uint8 conversion and PNG output; every file is written
//! atomically (temporary file in the same folder, fsync, rename).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use npyz::WriterBuilder;

use crate::error::{Result, SamplerError};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SamplerError + '_ {
    move |source| SamplerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file atomically: `write` fills a temporary file next to `path`, which is
/// flushed, fsynced and renamed over `path` (the folder is fsynced too where the OS
/// allows).  On error the temporary file is removed.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<()>,
) -> Result<()> {
    lossfloor_core::fs::write_atomic_with(path, write, |p, source| SamplerError::Io {
        path: p.to_path_buf(),
        source,
    })
}

/// Reads latents from a `.npy` file (f32 or f64, C or Fortran order) of shape
/// `[N, C, H, W]` (or `[C, H, W]`, read as N = 1) whose `[C, H, W]` must equal
/// `expected`.  Returns an f32 tensor `[N, C, H, W]` on `device`.
pub fn latents_from_npy(path: &Path, expected: [usize; 3], device: &Device) -> Result<Tensor> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::new(file);
    // The preamble and header are checked before npyz sees them: a declared header length
    // of gigabytes, or deeply nested brackets that npyz's parser takes minutes over.
    let head = lossfloor_data::limits::read_npy_head(&mut reader, len).map_err(|reason| {
        SamplerError::Npy {
            path: path.to_path_buf(),
            reason: format!("not a readable .npy file: {reason}"),
        }
    })?;
    let stream = std::io::Read::chain(std::io::Cursor::new(head), reader);
    let npy = npyz::NpyFile::new(stream).map_err(|e| SamplerError::Npy {
        path: path.to_path_buf(),
        reason: format!("not a readable .npy file: {e}"),
    })?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = npy.order() == npyz::Order::Fortran;
    let dtype = npy.dtype();
    let shape_ok = match shape.len() {
        4 => shape[1..] == expected,
        3 => shape[..] == expected,
        _ => false,
    };
    if !shape_ok {
        return Err(SamplerError::Shape {
            what: format!("latents file {}", path.display()),
            found: shape,
            expected: format!("[N, {}, {}, {}]", expected[0], expected[1], expected[2]),
        });
    }
    let npy_err = |reason: String| SamplerError::Npy {
        path: path.to_path_buf(),
        reason,
    };
    // The declared size must fit in the file before anything is read or allocated.
    let file_len = len;
    let declared = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .and_then(|n| n.checked_mul(dtype.num_bytes().unwrap_or(1) as u64));
    match declared {
        Some(b) if b <= file_len => {}
        Some(b) => {
            return Err(npy_err(format!(
                "shape {shape:?} of {} needs {b} bytes of data, the file has {file_len} bytes",
                dtype.descr()
            )))
        }
        None => return Err(npy_err(format!("shape {shape:?} overflows"))),
    }
    let data: Vec<f32> = match npy.try_data::<f32>() {
        Ok(r) => r
            .collect::<std::io::Result<Vec<f32>>>()
            .map_err(|e| npy_err(format!("reading f32 data: {e}")))?,
        Err(npy) => match npy.try_data::<f64>() {
            Ok(r) => r
                .map(|v| v.map(|v| v as f32))
                .collect::<std::io::Result<Vec<f32>>>()
                .map_err(|e| npy_err(format!("reading f64 data: {e}")))?,
            Err(_) => {
                return Err(npy_err(format!(
                    "dtype {} is not float32 or float64",
                    dtype.descr()
                )))
            }
        },
    };
    // A NaN or infinite latent makes its whole image NaN, written without a word.
    if let Some(k) = data.iter().position(|v| !v.is_finite()) {
        let per_image: usize = expected.iter().product();
        return Err(npy_err(format!(
            "value {k} (image {}) is {}; latents must be finite",
            k / per_image.max(1),
            data[k]
        )));
    }
    let mut dims = shape.clone();
    if dims.len() == 3 {
        dims.insert(0, 1);
    }
    let t = if fortran {
        let rev: Vec<usize> = dims.iter().rev().copied().collect();
        Tensor::from_vec(data, rev, device)?
            .permute((3, 2, 1, 0))?
            .contiguous()?
    } else {
        Tensor::from_vec(data, dims, device)?
    };
    Ok(t)
}

/// Writes `tensor` (any float dtype, any shape) as a little-endian f32 `.npy` file,
/// atomically.
pub fn save_npy_f32(path: &Path, tensor: &Tensor) -> Result<()> {
    let shape: Vec<u64> = tensor.dims().iter().map(|&d| d as u64).collect();
    let data = tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    write_atomic(path, |w| {
        let mut npy = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(w)
            .begin_nd()
            .map_err(io_err(path))?;
        npy.extend(data.iter().copied()).map_err(io_err(path))?;
        npy.finish().map_err(io_err(path))?;
        Ok(())
    })
}

/// EDM's conversion of samples to pixels: clamp(x·127.5 + 128, 0, 255) truncated to
/// u8 (`(x * 127.5 + 128).clip(0, 255).to(torch.uint8)`).  Same shape, dtype U8.
pub fn to_uint8(x: &Tensor) -> Result<Tensor> {
    let y = x
        .to_dtype(DType::F32)?
        .affine(127.5, 128.0)?
        .clamp(0f32, 255f32)?
        .floor()?;
    Ok(y.to_dtype(DType::U8)?)
}

/// EDM's output path `outdir/<seed − seed mod 1000, 6 digits>/<seed, 6 digits>.png`
/// with `subdirs`, else `outdir/<seed, 6 digits>.png`.
pub fn image_path(outdir: &Path, seed: u64, subdirs: bool) -> PathBuf {
    let file = format!("{seed:06}.png");
    if subdirs {
        outdir.join(format!("{:06}", seed - seed % 1000)).join(file)
    } else {
        outdir.join(file)
    }
}

fn color_type(c: usize) -> Result<ExtendedColorType> {
    match c {
        1 => Ok(ExtendedColorType::L8),
        3 => Ok(ExtendedColorType::Rgb8),
        _ => Err(SamplerError::Invalid(format!(
            "images must have 1 (gray) or 3 (RGB) channels, got {c}"
        ))),
    }
}

fn write_png(path: &Path, buf: &[u8], w: usize, h: usize, ct: ExtendedColorType) -> Result<()> {
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| SamplerError::Invalid("image too wide".into()))?,
        u32::try_from(h).map_err(|_| SamplerError::Invalid("image too tall".into()))?,
    );
    write_atomic(path, |out| {
        PngEncoder::new(out)
            .write_image(buf, w32, h32, ct)
            .map_err(|source| SamplerError::Image {
                path: path.to_path_buf(),
                source,
            })
    })
}

fn u8_images(images: &Tensor, rank: usize, what: &str) -> Result<Vec<u8>> {
    if images.dtype() != DType::U8 || images.rank() != rank {
        return Err(SamplerError::Shape {
            what: format!("{what} ({:?})", images.dtype()),
            found: images.dims().to_vec(),
            expected: if rank == 4 {
                "u8 [N, C, H, W]".into()
            } else {
                "u8 [C, H, W]".into()
            },
        });
    }
    Ok(images.flatten_all()?.to_vec1::<u8>()?)
}

/// Writes u8 images `[N, C, H, W]` (C = 1 gray or 3 RGB, e.g. from [`to_uint8`]) as one
/// PNG grid with `cols` columns and ⌈N/cols⌉ rows, row-major; unused cells are black.
/// The PNG is `cols·W` wide and `rows·H` tall.  Written atomically.
pub fn save_grid_png(path: &Path, images: &Tensor, cols: usize) -> Result<()> {
    let data = u8_images(images, 4, "grid images")?;
    let (n, c, h, w) = images.dims4()?;
    let ct = color_type(c)?;
    if n == 0 || cols == 0 {
        return Err(SamplerError::Invalid(format!(
            "save_grid_png: need at least one image and one column (N = {n}, cols = {cols})"
        )));
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let (gw, gh) = (cols * w, rows * h);
    let mut buf = vec![0u8; gw * gh * c];
    for k in 0..n {
        let (r0, c0) = ((k / cols) * h, (k % cols) * w);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    buf[((r0 + y) * gw + c0 + x) * c + ch] = data[((k * c + ch) * h + y) * w + x];
                }
            }
        }
    }
    write_png(path, &buf, gw, gh, ct)
}

/// Writes one u8 image `[C, H, W]` (C = 1 or 3) as a PNG, atomically.
pub fn save_png(path: &Path, image: &Tensor) -> Result<()> {
    u8_images(image, 3, "image")?;
    save_grid_png(path, &image.unsqueeze(0)?, 1)
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    /// A 4-byte header length of 3 GB in a 12-byte file: refused before npyz allocates it.
    #[test]
    fn latents_header_length_beyond_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latents.npy");
        std::fs::write(&path, b"\x93NUMPY\x02\x00\x00\x00\x00\xbb").unwrap();
        let e = latents_from_npy(&path, [3, 4, 4], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("latents.npy") && e.contains("header declares 3137339392 bytes"),
            "{e}"
        );
    }
}
