//! Execution of the geometric transforms: reflect padding, 2× sym6 upsampling, bilinear
//! sampling along the transformed grid (PyTorch's `affine_grid` + `grid_sample`,
//! `align_corners=False`, zero padding), sym6 downsampling and cropping.

use crate::affine::Affine;
use crate::wavelet::{downsample_plane, upsample_plane, FILTER_BORDER};

/// Reflect padding added on each side of every image of a batch, in input pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Margin {
    /// Columns added on the left.
    pub left: usize,
    /// Rows added on top.
    pub top: usize,
    /// Columns added on the right.
    pub right: usize,
    /// Rows added at the bottom.
    pub bottom: usize,
}

/// The padding one batch needs, shared by all its images as in the reference: the farthest
/// any image's transformed corner reaches beyond the image on each side, plus twice
/// [`FILTER_BORDER`] for the filters, clamped to [0, size − 1] (the most a single reflection
/// can supply) and rounded up.
///
/// Per side: left = ⌈clamp(maxᵢ,corners(−x′) − cx + 6, 0, W−1)⌉, right with +x′, top/bottom
/// with y′ and cy, where (x′, y′) = G⁻¹·corner over the corners (±cx, ±cy), cx = (W−1)/2,
/// cy = (H−1)/2.
pub fn padding_margin(inverses: &[Affine], w: usize, h: usize) -> Margin {
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let corners = [(-cx, -cy), (cx, -cy), (cx, cy), (-cx, cy)];
    // Reaches to the left (−x), top (−y), right (+x), bottom (+y).
    let mut reach = [f64::NEG_INFINITY; 4];
    for g in inverses {
        for &(x, y) in &corners {
            let (xt, yt) = g.apply(x, y);
            for (r, v) in reach.iter_mut().zip([-xt, -yt, xt, yt]) {
                *r = r.max(v);
            }
        }
    }
    let border = 2.0 * FILTER_BORDER as f64;
    let side = |reach: f64, centre: f64, size: usize| -> usize {
        let limit = size as f64 - 1.0;
        (reach + border - centre).max(0.0).min(limit).ceil() as usize
    };
    Margin {
        left: side(reach[0], cx, w),
        top: side(reach[1], cy, h),
        right: side(reach[2], cx, w),
        bottom: side(reach[3], cy, h),
    }
}

/// Index into a line of `len` samples for position `i` (possibly outside) under reflect
/// padding without repeating the edge sample (PyTorch's and NumPy's `reflect`):
/// −1 ↦ 1, len ↦ len − 2. Valid for |overshoot| ≤ len − 1, which [`padding_margin`] ensures.
pub fn reflect_index(i: isize, len: usize) -> usize {
    let last = len as isize - 1;
    let r = if i < 0 {
        -i
    } else if i > last {
        2 * last - i
    } else {
        i
    };
    r as usize
}

/// Pads an `h × w` plane by `margin` with reflection.
pub fn reflect_pad(plane: &[f32], h: usize, w: usize, margin: Margin) -> Vec<f32> {
    let (ph, pw) = (
        h + margin.top + margin.bottom,
        w + margin.left + margin.right,
    );
    let mut out = Vec::with_capacity(ph * pw);
    for y in 0..ph {
        let sy = reflect_index(y as isize - margin.top as isize, h);
        for x in 0..pw {
            let sx = reflect_index(x as isize - margin.left as isize, w);
            out.push(plane[sy * w + sx]);
        }
    }
    out
}

/// The 2×3 `theta` of `affine_grid` for one image: G⁻¹ re-expressed from centred input pixels
/// to the normalised coordinates ([−1, 1] over the whole image) of the upsampled padded
/// input (`up_w × up_h`) and of the upsampled output (`out_w × out_h`). In order, as the
/// reference:
///
/// 1. `translate((left − right)/2, (top − bottom)/2) · G⁻¹` — the padded image's centre
///    moves;
/// 2. `scale(2, 2) · G · scale(½, ½)` — twice the resolution;
/// 3. `translate(−½, −½) · G · translate(½, ½)` — the half-pixel phase of the upsampling
///    filter;
/// 4. `scale(2/up_w, 2/up_h) · G · scale(out_w/2, out_h/2)` — pixels to normalised units.
pub fn normalized_sampling_matrix(
    inverse: &Affine,
    margin: Margin,
    up_size: (usize, usize),
    out_size: (usize, usize),
) -> Affine {
    let (up_w, up_h) = (up_size.0 as f64, up_size.1 as f64);
    let (out_w, out_h) = (out_size.0 as f64, out_size.1 as f64);
    let g = Affine::translate(
        (margin.left as f64 - margin.right as f64) / 2.0,
        (margin.top as f64 - margin.bottom as f64) / 2.0,
    ) * *inverse;
    let g = Affine::scale(2.0, 2.0) * g * Affine::scale(0.5, 0.5);
    let g = Affine::translate(-0.5, -0.5) * g * Affine::translate(0.5, 0.5);
    Affine::scale(2.0 / up_w, 2.0 / up_h) * g * Affine::scale(out_w / 2.0, out_h / 2.0)
}

/// Up to four (index, weight) pairs of one output pixel; taps outside the input are dropped
/// (zero padding).
#[derive(Clone, Debug, Default)]
struct PixelTaps {
    taps: [(usize, f32); 4],
    count: u8,
}

/// Bilinear taps of every output pixel for one image, shared by its channels.
///
/// Output pixel (i, j) of an `out_w × out_h` grid sits at the normalised point
/// ((2j+1)/out_w − 1, (2i+1)/out_h − 1) (`affine_grid`, `align_corners=False`); `theta` maps
/// it to (gx, gy), read at input position ix = ((gx+1)·in_w − 1)/2, iy likewise
/// (`grid_sample`, `align_corners=False`), with weights (1−fx)(1−fy), fx(1−fy), (1−fx)fy,
/// fx·fy on the four neighbours of ⌊ix⌋, ⌊iy⌋.
fn bilinear_taps(
    theta: &Affine,
    in_size: (usize, usize),
    out_size: (usize, usize),
) -> Vec<PixelTaps> {
    let (in_w, in_h) = in_size;
    let (out_w, out_h) = out_size;
    let mut all = Vec::with_capacity(out_w * out_h);
    for i in 0..out_h {
        let yn = (2 * i + 1) as f64 / out_h as f64 - 1.0;
        for j in 0..out_w {
            let xn = (2 * j + 1) as f64 / out_w as f64 - 1.0;
            let (gx, gy) = theta.apply(xn, yn);
            let ix = ((gx + 1.0) * in_w as f64 - 1.0) / 2.0;
            let iy = ((gy + 1.0) * in_h as f64 - 1.0) / 2.0;
            let (x0, y0) = (ix.floor(), iy.floor());
            let (fx, fy) = (ix - x0, iy - y0);
            let mut px = PixelTaps::default();
            for (dy, wy) in [(0.0, 1.0 - fy), (1.0, fy)] {
                for (dx, wx) in [(0.0, 1.0 - fx), (1.0, fx)] {
                    let (x, y) = (x0 + dx, y0 + dy);
                    if x >= 0.0 && y >= 0.0 && x < in_w as f64 && y < in_h as f64 {
                        px.taps[px.count as usize] =
                            (y as usize * in_w + x as usize, (wx * wy) as f32);
                        px.count += 1;
                    }
                }
            }
            all.push(px);
        }
    }
    all
}

/// Samples one plane at the precomputed taps.
fn sample_plane(plane: &[f32], taps: &[PixelTaps]) -> Vec<f32> {
    taps.iter()
        .map(|px| {
            px.taps[..px.count as usize]
                .iter()
                .map(|&(idx, wgt)| plane[idx] * wgt)
                .sum()
        })
        .collect()
}

/// Applies the inverse transforms (one per image) to an NCHW batch: pad by the batch's
/// [`padding_margin`] with reflection, upsample 2× with sym6, sample bilinearly on the
/// transformed grid of the output plus [`FILTER_BORDER`] pixels each side at twice the
/// resolution, downsample 2× with sym6 and crop back to H × W.
pub fn resample_batch(images: &[f32], shape: [usize; 4], inverses: &[Affine]) -> Vec<f32> {
    let [n, c, h, w] = shape;
    let margin = padding_margin(inverses, w, h);
    let (pad_h, pad_w) = (
        h + margin.top + margin.bottom,
        w + margin.left + margin.right,
    );
    let up_size = (2 * pad_w, 2 * pad_h);
    let out_size = (2 * (w + 2 * FILTER_BORDER), 2 * (h + 2 * FILTER_BORDER));
    let mut out = Vec::with_capacity(images.len());
    for (image, inverse) in images.chunks_exact(c * h * w).zip(inverses).take(n) {
        let theta = normalized_sampling_matrix(inverse, margin, up_size, out_size);
        let taps = bilinear_taps(&theta, up_size, out_size);
        for plane in image.chunks_exact(h * w) {
            let padded = reflect_pad(plane, h, w, margin);
            let up = upsample_plane(&padded, pad_h, pad_w);
            let sampled = sample_plane(&up, &taps);
            out.extend(downsample_plane(&sampled, out_size.1, out_size.0, h, w));
        }
    }
    out
}
