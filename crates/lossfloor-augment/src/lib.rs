//! EDM's non-leaky geometric augmentation pipe with its 9 conditioning labels, on the CPU.
//!
//! The semantics are those of `training/augment.py` of NVlabs/edm as configured by its
//! `train.py --augment=0.12`: `p = 0.12` with probability multipliers `xflip = 1e8,
//! yflip = 1, scale = 1, rotate_frac = 1, aniso = 1, translate_frac = 1` and the reference's
//! default standard deviations (see [`AugmentConfig::edm`]). Per image:
//!
//! 1. x-flip, then y-flip (exact pixel copies);
//! 2. one inverse matrix G⁻¹ composed of the isotropic scale, rotation, anisotropic scale
//!    and translation ([`inverse_geometric_matrix`]);
//! 3. resampling by that matrix ([`resample::resample_batch`]): reflect padding, 2× sym6
//!    upsampling, bilinear sampling with PyTorch's `grid_sample` semantics
//!    (`align_corners=False`), 2× sym6 downsampling. The reference runs this step for every
//!    batch as soon as any geometric multiplier is non-zero (its skip tests the identity of
//!    the matrix *object*, not its value), so it runs here for every batch too, even when all
//!    records are zero: then it is the identity up to f32 round-off;
//! 4. the labels ([`augment_labels`]), which tell the network what was done so that it can
//!    be asked for un-augmented images at sampling time (the pipe does not "leak").
//!
//! The pipe ([`apply`]) is a pure function of the images and explicit per-image records
//! ([`AugmentParams`]); [`draw_params`] draws the records from a caller's RNG. The colour
//! transforms of the reference are not implemented: `train.py --augment` leaves them off.
//!
//! ```
//! use lossfloor_augment::{apply, draw_params, AugmentConfig, LABEL_DIM};
//! use rand::SeedableRng;
//!
//! let shape = [2, 1, 8, 8];
//! let images = vec![0.5f32; 2 * 8 * 8];
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let params = draw_params(&mut rng, &AugmentConfig::edm(0.12), 2);
//! let (augmented, labels) = apply(&images, shape, &params).unwrap();
//! assert_eq!(augmented.len(), images.len());
//! assert_eq!(labels.len(), 2 * LABEL_DIM);
//! ```

pub mod affine;
pub mod labels;
pub mod params;
pub mod resample;
pub mod wavelet;

pub use affine::{inverse_geometric_matrix, Affine};
pub use labels::{augment_labels, LABEL_DIM, LABEL_NAMES};
pub use params::{
    draw_params, draw_raw, params_from_draws, AugmentConfig, AugmentParams, AugmentStds, RawDraws,
};

/// Errors of [`apply`]: inputs that do not describe a batch.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    /// The image buffer's length is not N·C·H·W, or a dimension is zero.
    #[error("images: {len} values do not form a batch of shape {shape:?} (NCHW, all > 0)")]
    Shape {
        /// the declared shape [N, C, H, W]
        shape: [usize; 4],
        /// the buffer's length
        len: usize,
    },
    /// The number of records differs from the number of images.
    #[error("{params} parameter records for {images} images")]
    Count {
        /// records given
        params: usize,
        /// images in the batch
        images: usize,
    },
    /// A record with a NaN or infinite value.
    #[error("parameter record {index} has a non-finite value: {params:?}")]
    NonFinite {
        /// the image's index
        index: usize,
        /// the record
        params: AugmentParams,
    },
}

/// Mirrors every row of each `h × w` plane of one image left-right, in place.
pub fn flip_x(image: &mut [f32], w: usize) {
    for row in image.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// Mirrors each `h × w` plane of one image top-bottom, in place.
pub fn flip_y(image: &mut [f32], h: usize, w: usize) {
    for plane in image.chunks_exact_mut(h * w) {
        for y in 0..h / 2 {
            let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
            top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
        }
    }
}

/// Checks that `images` is an NCHW batch of `shape` with one finite record per image.
fn validate(
    images: &[f32],
    shape: [usize; 4],
    params: &[AugmentParams],
) -> Result<(), AugmentError> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if shape.contains(&0) || expected != Some(images.len()) {
        return Err(AugmentError::Shape {
            shape,
            len: images.len(),
        });
    }
    if params.len() != shape[0] {
        return Err(AugmentError::Count {
            params: params.len(),
            images: shape[0],
        });
    }
    if let Some(index) = params.iter().position(|p| !p.is_finite()) {
        return Err(AugmentError::NonFinite {
            index,
            params: params[index],
        });
    }
    Ok(())
}

/// [`apply_with`] with EDM's standard deviations ([`AugmentStds::EDM`]).
pub fn apply(
    images: &[f32],
    shape: [usize; 4],
    params: &[AugmentParams],
) -> Result<(Vec<f32>, Vec<f32>), AugmentError> {
    apply_with(images, shape, params, &AugmentStds::EDM)
}

/// Augments an NCHW f32 batch (`shape = [N, C, H, W]`, any C) with one record per image.
/// Returns the augmented batch (same shape) and the labels, row-major `[N, LABEL_DIM]`.
///
/// The padding margin is computed over the whole batch as in the reference; the result of an
/// image does not depend on its batch-mates beyond f32 round-off, except when a transform
/// reaches past a single reflection of the image (the margin is clamped to size − 1), where
/// the reference also shows zeros.
pub fn apply_with(
    images: &[f32],
    shape: [usize; 4],
    params: &[AugmentParams],
    stds: &AugmentStds,
) -> Result<(Vec<f32>, Vec<f32>), AugmentError> {
    validate(images, shape, params)?;
    let [_, c, h, w] = shape;
    let mut flipped = images.to_vec();
    for (image, p) in flipped.chunks_exact_mut(c * h * w).zip(params) {
        if p.xflip {
            flip_x(image, w);
        }
        if p.yflip {
            flip_y(image, h, w);
        }
    }
    let inverses: Vec<Affine> = params
        .iter()
        .map(|p| inverse_geometric_matrix(p, stds, w, h))
        .collect();
    let augmented = resample::resample_batch(&flipped, shape, &inverses);
    let labels = params.iter().flat_map(augment_labels).collect();
    Ok((augmented, labels))
}
