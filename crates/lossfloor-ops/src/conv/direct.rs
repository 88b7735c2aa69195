//! Direct convolution for the CPU forward pass (f32, AVX-512 or AVX2+FMA): output channels on
//! the vector lanes, input pixels broadcast, no im2col and no GEMM packing.
//!
//!   y[o, oy, ox] = b[o] + Σ_c Σ_{ki,kj} W[o, c, ki, kj] · x̃[c, oy + ki, ox + kj]
//!
//! where x̃ is the input zero-padded by `pad` on each side (stride 1 only). One register tile
//! holds V vectors of output channels × R neighbouring output pixels of one row (V·R
//! accumulators); for every (c, ki, kj) it loads V weight vectors and broadcasts R input
//! pixels, so each loaded value feeds V or R fused multiply-adds and the accumulators stay in
//! registers for the whole sum. This is the scheme oneDNN's direct convolution uses
//! (channel-blocked weights), and it is what closes the gap to PyTorch at small images: at
//! 7×7 and 14×14 the im2col + GEMM path spent as long unfolding and packing as multiplying
//! (issue 19).
//!
//! Per output element the sum runs over (c, ki, kj) in that order, one FMA each, so the
//! result differs from the GEMM path's blocked sums by float32 round-off only.

use super::Geom;

/// The vector instruction set a tile runs on, and its tile shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// 16-lane zmm registers (32 of them).
    Avx512,
    /// 8-lane ymm registers (16 of them) with FMA.
    Avx2,
}

impl Isa {
    /// Output channels per block: two vectors where C_out allows (AVX-512: 32 when C_out is
    /// a multiple of 32, else 16; AVX2: always 2 × 8 = 16).
    fn lanes(self, c_out: usize) -> usize {
        match self {
            Isa::Avx512 if c_out.is_multiple_of(32) => 32,
            Isa::Avx512 | Isa::Avx2 => 16,
        }
    }

    /// Widest tile in pixels, so that V·R accumulators and V weight vectors fit the register
    /// file: AVX-512 V = 2: 12 (24 + 2 of 32; R = 14 spills and was 1.7× slower), V = 1: 14;
    /// AVX2 V = 2: 6 (12 + 2 of 16).
    fn max_pixels(self, lanes: usize) -> usize {
        match (self, lanes) {
            (Isa::Avx512, 32) => 12,
            (Isa::Avx512, _) => 14,
            (Isa::Avx2, _) => 6,
        }
    }

    /// Whether this CPU can run it.
    fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The instruction set the direct kernel uses here: AVX-512F if the CPU has it, else AVX2 with
/// FMA, else none (the GEMM path runs). `LOSSFLOOR_CONV_DIRECT=0` turns it off and
/// `LOSSFLOOR_CONV_DIRECT=avx2` picks AVX2 on an AVX-512 CPU (for comparisons); unset, `1`
/// or `auto` is the default, and any other value is reported once and treated as `auto`.
fn chosen_isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let best = || {
            [Isa::Avx512, Isa::Avx2]
                .into_iter()
                .find(|isa| isa.supported())
        };
        match std::env::var("LOSSFLOOR_CONV_DIRECT").as_deref() {
            Ok("0") => None,
            Ok("avx2") => Some(Isa::Avx2).filter(|isa| isa.supported()),
            Ok("" | "1" | "auto") | Err(_) => best(),
            Ok(other) => {
                eprintln!(
                    "warning: LOSSFLOOR_CONV_DIRECT={other:?} is not one of 0, 1, auto, avx2; \
                     using auto"
                );
                best()
            }
        }
    })
}

/// Whether this CPU runs the direct kernel at all (and `LOSSFLOOR_CONV_DIRECT` allows it).
pub(super) fn available() -> bool {
    chosen_isa().is_some()
}

/// Whether the direct kernel takes this convolution: f32 data (checked by the caller), a CPU
/// with AVX-512F or AVX2+FMA, stride 1, a 3×3 kernel with padding 1, and a multiple of 16
/// output channels. (1×1 convolutions stay on the GEMM path: they need no im2col there, and
/// with only C_in multiply-adds per output the direct kernel's transposing stores made it
/// slower at 28×28, e.g. 6.7 against 4.4 ms for 64 images of 64 → 64 channels.)
pub(super) fn applies(g: &Geom) -> bool {
    shape_fits(g) && available()
}

fn shape_fits(g: &Geom) -> bool {
    g.stride == 1 && g.kh == 3 && g.kw == 3 && g.pad == 1 && g.c_out.is_multiple_of(16) && g.n > 0
}

/// The image plane the kernel reads: the input zero-padded by `pad`.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Plane {
    /// Row length of the padded plane, and elements per channel.
    row: usize,
    channel: usize,
    /// Output rows and output pixels per row.
    out_rows: usize,
    out_cols: usize,
}

impl Plane {
    fn of(g: &Geom) -> Self {
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        Self {
            row: wp,
            channel: hp * wp,
            out_rows: g.ho,
            out_cols: g.wo,
        }
    }
}

/// y = conv2d(x, w) (+ b), NCHW in and out, for a geometry that [`applies`].
pub(super) fn forward(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let isa = chosen_isa().expect("direct convolution without a vector instruction set");
    forward_on(isa, g, x, w, bias)
}

/// [`forward`] on a given instruction set (which the CPU must support).
fn forward_on(isa: Isa, g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(shape_fits(g) && isa.supported());
    let lanes = isa.lanes(g.c_out);
    let blocks = g.c_out / lanes;
    let packed = pack_weights(g, w, lanes);
    let zero_bias = vec![0f32; g.c_out];
    let bias = bias.unwrap_or(&zero_bias);
    let plane = Plane::of(g);
    let p = g.p();
    // One task per image, or per (image, channel block) when there are too few images to
    // keep every thread busy.
    let per_image = g.n >= 2 * rayon::current_num_threads() || blocks == 1;
    let blocks_per_task = if per_image { blocks } else { 1 };
    let len = g.n * g.c_out * p;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(blocks_per_task * lanes * p)
        .enumerate()
        .for_each_init(Vec::new, |padded, (task, y_task)| {
            let (image, first_block) = if per_image {
                (task, 0)
            } else {
                (task / blocks, task % blocks)
            };
            let x_n = &x[image * g.in_len()..(image + 1) * g.in_len()];
            let src = pad_image(g, &plane, x_n, padded);
            for (j, y_block) in y_task.chunks_exact_mut(lanes * p).enumerate() {
                let block = first_block + j;
                let w_block = &packed[block * lanes * g.k()..(block + 1) * lanes * g.k()];
                let b_block = &bias[block * lanes..(block + 1) * lanes];
                run_block(isa, g, &plane, src, w_block, b_block, lanes, y_block);
            }
        });
    // SAFETY: the tasks cover every channel block of every image, and `run_block` writes
    // every pixel of every output row of its block (its tiles partition each row), so all
    // `len` elements are initialised. Skipping the zero fill saves a pass over the output.
    unsafe { y.set_len(len) };
    y
}

/// W [C_out, C_in, k, k] rearranged as [C_out / lanes][C_in][k][k][lanes], so that a tile's
/// weight vectors for one (c, ki, kj) are adjacent and the next ones follow.
fn pack_weights(g: &Geom, w: &[f32], lanes: usize) -> Vec<f32> {
    let (k, kk) = (g.k(), g.kh * g.kw);
    let mut packed = vec![0f32; g.c_out * k];
    for o in 0..g.c_out {
        let (block, lane) = (o / lanes, o % lanes);
        for (ck, &v) in w[o * k..(o + 1) * k].iter().enumerate() {
            let (c, t) = (ck / kk, ck % kk);
            packed[((block * g.c_in + c) * kk + t) * lanes + lane] = v;
        }
    }
    packed
}

/// The image zero-padded into `buf`. The border is zeroed when the buffer is first sized and
/// never written after that, so later images of the same call copy only their pixels.
fn pad_image<'a>(g: &Geom, plane: &Plane, x_n: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    if buf.len() != g.c_in * plane.channel {
        buf.clear();
        buf.resize(g.c_in * plane.channel, 0.0);
    }
    for c in 0..g.c_in {
        for iy in 0..g.h {
            let dst = c * plane.channel + (iy + g.pad) * plane.row + g.pad;
            let src = (c * g.h + iy) * g.w;
            buf[dst..dst + g.w].copy_from_slice(&x_n[src..src + g.w]);
        }
    }
    buf
}

/// One block of `lanes` output channels of one image: every output row cut into tiles of at
/// most the widest tile's pixels, in near-equal parts.
#[allow(clippy::too_many_arguments)]
fn run_block(
    isa: Isa,
    g: &Geom,
    plane: &Plane,
    src: &[f32],
    w_block: &[f32],
    b_block: &[f32],
    lanes: usize,
    y_block: &mut [std::mem::MaybeUninit<f32>],
) {
    let max_pixels = isa.max_pixels(lanes);
    let p = g.p();
    assert!(src.len() >= g.c_in * plane.channel && y_block.len() >= lanes * p);
    assert!(w_block.len() >= g.c_in * g.kh * g.kw * lanes && b_block.len() >= lanes);
    let parts = plane.out_cols.div_ceil(max_pixels);
    for oy in 0..plane.out_rows {
        let mut ox = 0;
        for part in 0..parts {
            let pixels = (plane.out_cols - ox).div_ceil(parts - part);
            let at = TileAt {
                src_offset: oy * plane.row + ox,
                out_offset: oy * plane.out_cols + ox,
            };
            // SAFETY: the tile reads src[c·channel + (oy + ki)·row + ox + kj + r] for c < C_in,
            // ki, kj < k, r < pixels, all below C_in·channel because oy + ki < padded rows
            // and ox + r + kj < padded row length (ox + r < out_cols = row − k + 1); it reads
            // C_in·k²·lanes packed weights and `lanes` biases, and writes y_block[o·p +
            // out_offset + r] for o < lanes, inside lanes·p (asserted above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                x86::tile(
                    isa,
                    lanes,
                    g.kh,
                    pixels,
                    src.as_ptr(),
                    plane,
                    g.c_in,
                    w_block.as_ptr(),
                    b_block.as_ptr(),
                    y_block.as_mut_ptr().cast::<f32>(),
                    p,
                    at,
                );
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (isa, at, pixels, y_block.as_mut_ptr());
            ox += pixels;
        }
    }
}

/// Where a tile starts: in the padded input plane and in an output channel plane.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct TileAt {
    src_offset: usize,
    out_offset: usize,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Isa, Plane, TileAt};
    use std::arch::x86_64::*;

    /// Dispatches to the tile kernel compiled for this (instruction set, lanes, k, pixels).
    ///
    /// # Safety
    /// The CPU supports `isa`, and the pointers address what the kernel reads and writes
    /// (see [`avx512`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(
        isa: Isa,
        lanes: usize,
        k: usize,
        pixels: usize,
        src: *const f32,
        plane: &Plane,
        c_in: usize,
        w: *const f32,
        b: *const f32,
        out: *mut f32,
        out_channel: usize,
        at: TileAt,
    ) {
        macro_rules! by_pixels {
            ($kernel:ident, $v:literal, $k:literal, $($r:literal)*) => {
                match pixels {
                    $($r => $kernel::<$v, $r, $k>(src, plane.channel, plane.row, c_in, w, b, out, out_channel, at),)*
                    _ => unreachable!("tile of {pixels} pixels"),
                }
            };
        }
        match (isa, lanes, k) {
            (Isa::Avx512, 32, 3) => by_pixels!(avx512, 2, 3, 1 2 3 4 5 6 7 8 9 10 11 12),
            (Isa::Avx512, 16, 3) => by_pixels!(avx512, 1, 3, 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            (Isa::Avx2, 16, 3) => by_pixels!(avx2, 2, 3, 1 2 3 4 5 6),
            _ => unreachable!("direct conv: {isa:?}, {lanes} lanes, kernel {k}"),
        }
    }

    /// One tile kernel per instruction set, the same code on that set's vectors.
    macro_rules! tile_kernel {
        ($name:ident, $feature:literal, $width:literal, $zero:ident, $load:ident, $set1:ident,
         $fmadd:ident, $store:ident) => {
            /// y[o, at.out + r] = b[o] + Σ_{c,ki,kj} w[c,ki,kj,o] ·
            /// src[c·channel + at.src + ki·row + kj + r] for V·width channels o and R pixels
            /// r, the sum over (c, ki, kj) in that order.
            ///
            /// # Safety
            /// The CPU has the target features; `src` holds C_in·channel values, `w`
            /// C_in·K²·V·width, `b` V·width, and `out` has V·width channel planes of
            /// `out_channel` values with at.out + R inside each.
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
            unsafe fn $name<const V: usize, const R: usize, const K: usize>(
                src: *const f32,
                channel: usize,
                row: usize,
                c_in: usize,
                w: *const f32,
                b: *const f32,
                out: *mut f32,
                out_channel: usize,
                at: TileAt,
            ) {
                let mut acc = [[$zero(); V]; R];
                for r in 0..R {
                    for v in 0..V {
                        acc[r][v] = $load(b.add($width * v));
                    }
                }
                let mut w = w;
                let src = src.add(at.src_offset);
                for c in 0..c_in {
                    let plane = src.add(c * channel);
                    for ki in 0..K {
                        let line = plane.add(ki * row);
                        for kj in 0..K {
                            let mut wv = [$zero(); V];
                            for v in 0..V {
                                wv[v] = $load(w.add($width * v));
                            }
                            w = w.add($width * V);
                            for r in 0..R {
                                let xv = $set1(*line.add(kj + r));
                                for v in 0..V {
                                    acc[r][v] = $fmadd(wv[v], xv, acc[r][v]);
                                }
                            }
                        }
                    }
                }
                // The accumulators hold channels along lanes; the output wants pixels
                // adjacent.
                let mut tile = [[0f32; 32]; R];
                for r in 0..R {
                    for v in 0..V {
                        $store(tile[r].as_mut_ptr().add($width * v), acc[r][v]);
                    }
                }
                for o in 0..$width * V {
                    let dst = out.add(o * out_channel + at.out_offset);
                    for r in 0..R {
                        *dst.add(r) = tile[r][o];
                    }
                }
            }
        };
    }

    tile_kernel!(
        avx512,
        "avx512f",
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
    tile_kernel!(
        avx2,
        "avx2,fma",
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// y by the definition, in f64, and Σ |terms| per output (for the round-off bound).
    fn brute_force(g: &Geom, x: &[f32], w: &[f32], b: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (mut y, mut mag) = (
            vec![0f64; g.n * g.c_out * g.p()],
            vec![0f64; g.n * g.c_out * g.p()],
        );
        for n in 0..g.n {
            for o in 0..g.c_out {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let (mut s, mut m) = (b[o] as f64, (b[o] as f64).abs());
                        for c in 0..g.c_in {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy + ki) as isize - g.pad as isize;
                                    let ix = (ox + kj) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let t = w[((o * g.c_in + c) * g.kh + ki) * g.kw + kj] as f64
                                        * x[((n * g.c_in + c) * g.h + iy as usize) * g.w
                                            + ix as usize]
                                            as f64;
                                    s += t;
                                    m += t.abs();
                                }
                            }
                        }
                        let i = ((n * g.c_out + o) * g.ho + oy) * g.wo + ox;
                        y[i] = s;
                        mag[i] = m;
                    }
                }
            }
        }
        (y, mag)
    }

    #[test]
    fn direct_convolution_equals_the_definition() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|isa| isa.supported())
            .collect();
        if isas.is_empty() {
            eprintln!("neither AVX-512F nor AVX2+FMA on this CPU: the direct kernel never runs");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
        // (n, c_in, h, w, c_out, k): both lane widths, rows cut into uneven tiles (13,
        // 28 = 3 tiles, 30), one image (tasks per channel block) and several (the padded
        // buffer reused across images), a 1×1 image (all taps but one in the border).
        let cases = [
            (3, 5, 7, 7, 64, 3),
            (1, 64, 14, 14, 64, 3),
            (2, 3, 13, 28, 32, 3),
            (2, 7, 5, 30, 48, 3),
            (1, 16, 9, 9, 16, 3),
            (5, 33, 7, 7, 96, 3),
            (2, 4, 1, 1, 32, 3),
        ];
        for &(n, c_in, h, w, c_out, k) in &cases {
            let g = Geom::new(&[n, c_in, h, w], &[c_out, c_in, k, k], 1, (k - 1) / 2).unwrap();
            assert!(shape_fits(&g));
            let x: Vec<f32> = (0..n * c_in * h * w)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let wt: Vec<f32> = (0..c_out * g.k())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let b: Vec<f32> = (0..c_out).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (want, mag) = brute_force(&g, &x, &wt, &b);
            for (isa, bias) in isas.iter().flat_map(|&i| [(i, Some(&b[..])), (i, None)]) {
                let got = forward_on(isa, &g, &x, &wt, bias);
                assert_eq!(got.len(), want.len());
                for (i, (&y, &r)) in got.iter().zip(&want).enumerate() {
                    let o = (i / g.p()) % c_out;
                    let r = if bias.is_some() { r } else { r - b[o] as f64 };
                    // A sum of K + 1 f32 terms by sequential FMAs is within (K + 1)·u·Σ|terms|
                    // of the exact sum (u = 2⁻²⁴), plus the final rounding.
                    let bound = (g.k() + 2) as f64 * f32::EPSILON as f64 / 2.0 * mag[i] + 1e-30;
                    assert!(
                        (y as f64 - r).abs() <= bound,
                        "{isa:?}, case {:?}: output {i}: {y} vs {r} (bound {bound})",
                        (n, c_in, h, w, c_out, k)
                    );
                }
            }
        }
    }

    #[test]
    fn direct_convolution_takes_only_what_it_can() {
        let geom = |x: [usize; 4], w: [usize; 4], s, p| Geom::new(&x, &w, s, p).unwrap();
        let on = available();
        assert_eq!(applies(&geom([2, 3, 8, 8], [32, 3, 3, 3], 1, 1)), on);
        assert_eq!(applies(&geom([2, 3, 8, 8], [16, 3, 3, 3], 1, 1)), on);
        for (w, stride, pad, why) in [
            ([16, 3, 1, 1], 1, 0, "1×1 kernel"),
            ([3, 3, 3, 3], 1, 1, "3 output channels"),
            ([32, 3, 3, 3], 2, 1, "stride 2"),
            ([32, 3, 3, 3], 1, 0, "no padding"),
            ([32, 3, 2, 2], 1, 0, "2×2 kernel"),
            ([32, 3, 5, 5], 1, 2, "5×5 kernel"),
        ] {
            assert!(!applies(&geom([2, 3, 8, 8], w, stride, pad)), "{why}");
        }
    }
}
