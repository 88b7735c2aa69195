//! 2× up- and down-sampling of image rows and columns with the sym6 wavelet's low-pass filter.
//!
//! sym6 is an orthogonal wavelet: Σⱼ h[j]·h[j+2m] = δₘ, so upsampling by zero insertion and
//! filtering, followed by filtering and keeping every second sample, is the identity (away
//! from the ends). The pipe resamples at twice the resolution between the two to suppress the
//! aliasing of bilinear interpolation, as the reference does.

/// Low-pass decomposition filter of the sym6 wavelet (12 taps), the values of the reference's
/// table. Their sum is √2.
pub const SYM6: [f64; 12] = [
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
];

/// Extra border, in input pixels, that the resampling keeps around the image on each side so
/// that the downsampling filter sees real samples: a quarter of the filter length (3).
pub const FILTER_BORDER: usize = SYM6.len() / 4;

/// The taps in f32, as the reference converts them before convolving.
fn taps_f32() -> [f32; 12] {
    SYM6.map(|t| t as f32)
}

/// Upsamples one line of `len` samples (stride `src_stride` in `src`) to `2·len` samples
/// (stride `dst_stride` in `dst`):
/// `out[n] = Σₖ x[k]·h[n + 5 − 2k]` over the k with 0 ≤ n + 5 − 2k < 12.
///
/// That is the reference's zero insertion (x[k] at position 2k of a 2·len − 1 line)
/// followed by a convolution with h, zero-padded by 6 on both sides.
fn upsample_line(src: &[f32], len: usize, src_stride: usize, dst: &mut [f32], dst_stride: usize) {
    let h = taps_f32();
    let taps = h.len() as isize;
    for n in 0..2 * len as isize {
        // k ranges over ⌈(n + 5 − 11)/2⌉ ..= ⌊(n + 5)/2⌋, clipped to the line.
        let k_lo = ((n - 6) as f64 / 2.0).ceil().max(0.0) as isize;
        let k_hi = ((n + 5) / 2).min(len as isize - 1);
        let mut acc = 0f32;
        for k in k_lo..=k_hi {
            let tap = n + 5 - 2 * k;
            debug_assert!((0..taps).contains(&tap));
            acc += src[k as usize * src_stride] * h[tap as usize];
        }
        dst[n as usize * dst_stride] = acc;
    }
}

/// Downsamples one line of `len_in` samples to `len_out` samples, keeping the centre:
/// `out[n] = Σⱼ v[2n + 1 + j]·h[j]` (v = 0 outside the line).
///
/// That is the reference's correlation with h at stride 2 with zero padding 5, followed by
/// dropping [`FILTER_BORDER`] samples at each end.
fn downsample_line(
    src: &[f32],
    len_in: usize,
    src_stride: usize,
    dst: &mut [f32],
    len_out: usize,
    dst_stride: usize,
) {
    let h = taps_f32();
    for n in 0..len_out {
        let mut acc = 0f32;
        for (j, &tap) in h.iter().enumerate() {
            let i = 2 * n + 1 + j;
            if i < len_in {
                acc += src[i * src_stride] * tap;
            }
        }
        dst[n * dst_stride] = acc;
    }
}

/// Upsamples a `rows × cols` plane to `2·rows × 2·cols`: rows first, then columns, in the
/// reference's order.
pub fn upsample_plane(plane: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let wide_cols = 2 * cols;
    let mut wide = vec![0f32; rows * wide_cols];
    for r in 0..rows {
        upsample_line(&plane[r * cols..], cols, 1, &mut wide[r * wide_cols..], 1);
    }
    let mut out = vec![0f32; 2 * rows * wide_cols];
    for c in 0..wide_cols {
        upsample_line(&wide[c..], rows, wide_cols, &mut out[c..], wide_cols);
    }
    out
}

/// Downsamples a `rows × cols` plane (the resampled image at twice the resolution, with
/// [`FILTER_BORDER`] extra input pixels each side) to `out_rows × out_cols`: rows first, then
/// columns, in the reference's order.
pub fn downsample_plane(
    plane: &[f32],
    rows: usize,
    cols: usize,
    out_rows: usize,
    out_cols: usize,
) -> Vec<f32> {
    let mut narrow = vec![0f32; rows * out_cols];
    for r in 0..rows {
        downsample_line(
            &plane[r * cols..],
            cols,
            1,
            &mut narrow[r * out_cols..],
            out_cols,
            1,
        );
    }
    let mut out = vec![0f32; out_rows * out_cols];
    for c in 0..out_cols {
        downsample_line(
            &narrow[c..],
            rows,
            out_cols,
            &mut out[c..],
            out_rows,
            out_cols,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sym6_is_orthogonal_with_sum_sqrt2() {
        // The perfect-reconstruction property the identity test relies on; 1e-12 is the f64
        // round-off of 12-term sums of O(1) products (the table has 16–17 digits).
        for m in 0..6 {
            let dot: f64 = (0..12 - 2 * m).map(|j| SYM6[j] * SYM6[j + 2 * m]).sum();
            let expected = if m == 0 { 1.0 } else { 0.0 };
            assert!((dot - expected).abs() < 1e-12, "shift {m}: {dot}");
        }
        let sum: f64 = SYM6.iter().sum();
        assert!((sum - std::f64::consts::SQRT_2).abs() < 1e-12, "{sum}");
    }

    #[test]
    fn up_then_down_line_returns_the_interior_shifted_by_the_border() {
        // out[n] = x[n + 3] away from the ends (see the module doc); f32 round-off of 12-tap
        // sums of values ≤ 1 is below 1e-6.
        let x: Vec<f32> = (0..20)
            .map(|i| ((i * 7 % 11) as f32) / 11.0 - 0.5)
            .collect();
        let mut up = vec![0f32; 40];
        upsample_line(&x, 20, 1, &mut up, 1);
        let mut down = vec![0f32; 14];
        downsample_line(&up, 40, 1, &mut down, 14, 1);
        for n in 3..11 {
            assert!(
                (down[n] - x[n + 3]).abs() < 1e-6,
                "n {n}: {} vs {}",
                down[n],
                x[n + 3]
            );
        }
    }
}
