//! 2-D convolution (groups = 1, symmetric padding, square stride) with GEMM-based forward
//! and backward passes:
//!
//!   forward      y_n  = W · im2col(x_n)                       W: [C_out, C_in·k_h·k_w]
//!   input grad   dx_n = col2im(Wᵀ · dy_n)
//!   weight grad  dW   = Σ_n dy_n · im2col(x_n)ᵀ
//!
//! Images are processed in parallel (one GEMM per image on each core); a 1×1 stride-1 conv
//! without padding skips im2col, since the image already is its column matrix.
//!
//! On CPUs with AVX-512F (or AVX2 and FMA), the f32 forward pass and input gradient of
//! stride-1 3×3 convolutions with padding 1 and a multiple of 16 output (forward) or input
//! (gradient) channels run as a direct convolution instead (`conv/direct.rs`). In DDPM++,
//! NCSN++ and ADM that is every 3×3 layer's forward pass but the last layer's, and every
//! input gradient but the first layer's.
//!
//! With the `cudnn` feature the same op runs its three passes through cuDNN on CUDA tensors
//! (`conv_cudnn.rs`); elsewhere `conv2d` falls back to candle's convolution.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::elem::{gemm, Elem};
use crate::storage::{contiguous, FromStorage};

mod direct;

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geom {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        if x.len() != 4 || w.len() != 4 {
            candle_core::bail!(
                "conv2d: expected x [N,C,H,W] and w [O,C,kh,kw], got {x:?} and {w:?}"
            );
        }
        if x[1] != w[1] {
            candle_core::bail!(
                "conv2d: input has {} channels, weight expects {}",
                x[1],
                w[1]
            );
        }
        if stride == 0 || x[2] + 2 * pad < w[2] || x[3] + 2 * pad < w[3] {
            candle_core::bail!(
                "conv2d: kernel {:?} does not fit input {:?} with padding {pad}, stride {stride}",
                &w[2..],
                &x[2..]
            );
        }
        let ho = (x[2] + 2 * pad - w[2]) / stride + 1;
        let wo = (x[3] + 2 * pad - w[3]) / stride + 1;
        Ok(Self {
            n: x[0],
            c_in: x[1],
            h: x[2],
            w: x[3],
            c_out: w[0],
            kh: w[2],
            kw: w[3],
            stride,
            pad,
            ho,
            wo,
        })
    }
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.ho * self.wo
    }
    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Output columns `ox` whose input column `ox·s + kj − pad` lies inside the image.
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let lo = (self.pad.saturating_sub(kj)).div_ceil(self.stride);
        // largest ox with ox·s + kj − pad ≤ w − 1
        let hi = if self.w + self.pad < kj + 1 {
            0
        } else {
            ((self.w + self.pad - kj - 1) / self.stride + 1).min(self.wo)
        };
        (lo.min(hi), hi)
    }
}

/// Unfolds one image [C_in, H, W] into its column matrix [C_in·kh·kw, Ho·Wo].
fn im2col<T: Elem>(g: &Geom, x: &[T], col: &mut [T]) {
    let p = g.p();
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * p..(row + 1) * p];
                let (lo, hi) = g.valid_cols(kj);
                for oy in 0..g.ho {
                    let out = &mut dst[oy * g.wo..(oy + 1) * g.wo];
                    let iy = (oy * g.stride + ki) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        out.iter_mut().for_each(|v| *v = T::ZERO);
                        continue;
                    }
                    let src = &x[(c * g.h + iy as usize) * g.w..(c * g.h + iy as usize + 1) * g.w];
                    out[..lo].iter_mut().for_each(|v| *v = T::ZERO);
                    out[hi..].iter_mut().for_each(|v| *v = T::ZERO);
                    if g.stride == 1 {
                        let start = lo + kj - g.pad;
                        out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (ox, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                            *o = src[ox * g.stride + kj - g.pad];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the pixel it came from.
fn col2im<T: Elem>(g: &Geom, col: &[T], x: &mut [T]) {
    x.iter_mut().for_each(|v| *v = T::ZERO);
    let p = g.p();
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &col[row * p..(row + 1) * p];
                let (lo, hi) = g.valid_cols(kj);
                for oy in 0..g.ho {
                    let iy = (oy * g.stride + ki) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst =
                        &mut x[(c * g.h + iy as usize) * g.w..(c * g.h + iy as usize + 1) * g.w];
                    let line = &src[oy * g.wo..(oy + 1) * g.wo];
                    if g.stride == 1 {
                        let start = lo + kj - g.pad;
                        for (d, &v) in dst[start..start + (hi - lo)].iter_mut().zip(&line[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for (ox, &v) in line.iter().enumerate().take(hi).skip(lo) {
                            dst[ox * g.stride + kj - g.pad] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The forward and input-gradient passes by element type: f32 takes the direct kernel where
/// it applies ([`direct`]), everything else the im2col + GEMM [`forward`] and [`grad_input`].
trait ConvKernels: FromStorage {
    fn conv_forward(g: &Geom, x: &[Self], w: &[Self], bias: Option<&[Self]>) -> Vec<Self>;
    fn conv_grad_input(g: &Geom, dy: &[Self], w: &[Self]) -> Vec<Self>;
}

impl ConvKernels for f32 {
    fn conv_forward(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        if direct::applies(g) {
            direct::forward(g, x, w, bias)
        } else {
            forward(g, x, w, bias)
        }
    }
    fn conv_grad_input(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
        match transposed_geom(g) {
            Some(gt) if direct::applies(&gt) => {
                direct::forward(&gt, dy, &transposed_weights(g, w), None)
            }
            _ => grad_input(g, dy, w),
        }
    }
}

impl ConvKernels for f64 {
    fn conv_forward(g: &Geom, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
        forward(g, x, w, bias)
    }
    fn conv_grad_input(g: &Geom, dy: &[f64], w: &[f64]) -> Vec<f64> {
        grad_input(g, dy, w)
    }
}

/// For stride 1, the input gradient is itself a convolution:
///   dx[c, iy, ix] = Σ_{o,ki,kj} W[o, c, ki, kj] · dy[o, iy + pad − ki, ix + pad − kj]
///                 = conv2d(dy, W′, padding k − 1 − pad)[c, iy, ix],
/// with W′[c, o, ki, kj] = W[o, c, k_h − 1 − ki, k_w − 1 − kj] ([`transposed_weights`]).
/// This is that convolution's geometry (None for other strides).
fn transposed_geom(g: &Geom) -> Option<Geom> {
    if g.stride != 1 || g.pad + 1 > g.kh || g.pad + 1 > g.kw || g.kh != g.kw {
        return None;
    }
    Geom::new(
        &[g.n, g.c_out, g.ho, g.wo],
        &[g.c_in, g.c_out, g.kh, g.kw],
        1,
        g.kh - 1 - g.pad,
    )
    .ok()
}

/// W′[c, o, ki, kj] = W[o, c, k_h − 1 − ki, k_w − 1 − kj]: the weights of the input
/// gradient's convolution ([`transposed_geom`]).
fn transposed_weights(g: &Geom, w: &[f32]) -> Vec<f32> {
    let (kh, kw) = (g.kh, g.kw);
    let mut wt = vec![0f32; w.len()];
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            for ki in 0..kh {
                for kj in 0..kw {
                    wt[((c * g.c_out + o) * kh + ki) * kw + kj] =
                        w[((o * g.c_in + c) * kh + (kh - 1 - ki)) * kw + (kw - 1 - kj)];
                }
            }
        }
    }
    wt
}

/// y_n = W · im2col(x_n) (+ b broadcast over the pixels), one image per task.
///
/// With a bias, each output row starts as its bias value and the GEMM accumulates onto it,
/// so y = b + W·col is formed in the pass that writes y instead of in a second pass over it.
/// (Unfolding several small images side by side into one wider GEMM was tried and measured
/// slower at every U-Net shape: the per-image GEMMs are not call-bound.)
fn forward<T: Elem>(g: &Geom, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (k, p, co) = (g.k(), g.p(), g.c_out);
    let mut y = vec![T::ZERO; g.n * co * p];
    y.par_chunks_mut(co * p).enumerate().for_each_init(
        || Vec::new(),
        |col, (i, y_n)| {
            if let Some(b) = bias {
                for (row, &bv) in y_n.chunks_exact_mut(p).zip(b) {
                    row.iter_mut().for_each(|v| *v = bv);
                }
            }
            let x_n = &x[i * g.in_len()..(i + 1) * g.in_len()];
            let cols: &[T] = if g.is_pointwise() {
                x_n
            } else {
                col.resize(k * p, T::ZERO);
                im2col(g, x_n, col);
                col
            };
            gemm(co, p, k, w, k, 1, cols, p, 1, y_n, bias.is_some());
        },
    );
    y
}

fn grad_input<T: Elem>(g: &Geom, dy: &[T], w: &[T]) -> Vec<T> {
    let (k, p, co) = (g.k(), g.p(), g.c_out);
    let mut dx = vec![T::ZERO; g.n * g.in_len()];
    dx.par_chunks_mut(g.in_len()).enumerate().for_each_init(
        || Vec::new(),
        |col, (i, dx_n)| {
            let dy_n = &dy[i * co * p..(i + 1) * co * p];
            if g.is_pointwise() {
                gemm(k, p, co, w, 1, k, dy_n, p, 1, dx_n, false);
            } else {
                col.resize(k * p, T::ZERO);
                gemm(k, p, co, w, 1, k, dy_n, p, 1, col, false);
                col2im(g, col, dx_n);
            }
        },
    );
    dx
}

fn grad_weight<T: Elem>(g: &Geom, dy: &[T], x: &[T]) -> Vec<T> {
    let (k, p, co) = (g.k(), g.p(), g.c_out);
    let parts = rayon::current_num_threads().min(g.n).max(1);
    let per = g.n.div_ceil(parts);
    // Accumulate dWᵀ = Σ_n im2col(x_n) · dy_nᵀ  [K × C_out]: this orientation reads both GEMM
    // operands along their contiguous axis; dW = dy·colᵀ would read col across rows, which the
    // GEMM packs ~4× slower (measured: 39 against 158 GFLOP/s at 128×1152×1024).
    let partial: Vec<Vec<T>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut dwt = vec![T::ZERO; k * co];
            let mut col = Vec::new();
            for i in part * per..((part + 1) * per).min(g.n) {
                let x_n = &x[i * g.in_len()..(i + 1) * g.in_len()];
                let cols: &[T] = if g.is_pointwise() {
                    x_n
                } else {
                    col.resize(k * p, T::ZERO);
                    im2col(g, x_n, &mut col);
                    &col
                };
                let dy_n = &dy[i * co * p..(i + 1) * co * p];
                gemm(k, co, p, cols, p, 1, dy_n, 1, p, &mut dwt, true);
            }
            dwt
        })
        .collect();
    let mut dw = vec![T::ZERO; co * k];
    for part in &partial {
        for (kk, row) in part.chunks_exact(co).enumerate() {
            for (o, &v) in row.iter().enumerate() {
                dw[o * k + kk] += v;
            }
        }
    }
    dw
}

/// Which of the three GEMM passes an op runs.
#[derive(Debug, Clone, Copy)]
enum Pass {
    Forward,
    /// dx from (dy, w); the input's shape.
    GradInput([usize; 4]),
    /// dW from (dy, x); the weight's shape.
    GradWeight([usize; 4]),
}

struct ConvOp {
    stride: usize,
    pad: usize,
    pass: Pass,
}

impl ConvOp {
    fn run<T: ConvKernels>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous::<T>(s1, l1, "conv2d")?;
        let b = contiguous::<T>(s2, l2, "conv2d")?;
        match self.pass {
            Pass::Forward => {
                let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
                Ok((
                    T::wrap(T::conv_forward(&g, a, b, None)),
                    Shape::from((g.n, g.c_out, g.ho, g.wo)),
                ))
            }
            Pass::GradInput(x_shape) => {
                let g = Geom::new(&x_shape, l2.dims(), self.stride, self.pad)?;
                Ok((
                    T::wrap(T::conv_grad_input(&g, a, b)),
                    Shape::from(x_shape.to_vec()),
                ))
            }
            Pass::GradWeight(w_shape) => {
                let g = Geom::new(l2.dims(), &w_shape, self.stride, self.pad)?;
                Ok((
                    T::wrap(grad_weight(&g, a, b)),
                    Shape::from(w_shape.to_vec()),
                ))
            }
        }
    }
}

fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let d = t.dims();
    if d.len() != 4 {
        candle_core::bail!("conv2d: expected a 4-d tensor, got {d:?}");
    }
    Ok([d[0], d[1], d[2], d[3]])
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "lossfloor-conv2d",
            Pass::GradInput(_) => "lossfloor-conv2d-grad-input",
            Pass::GradWeight(_) => "lossfloor-conv2d-grad-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => self.run::<f32>(s1, l1, s2, l2),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => self.run::<f64>(s1, l1, s2, l2),
            _ => candle_core::bail!("{}: expected two f32 or two f64 tensors", self.name()),
        }
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::conv_cudnn::CudnnPass;
        let pass = match self.pass {
            Pass::Forward => CudnnPass::Forward,
            Pass::GradInput(s) => CudnnPass::GradInput(s),
            Pass::GradWeight(s) => CudnnPass::GradWeight(s),
        };
        crate::conv_cudnn::run(pass, self.stride, self.pad, (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(
            w,
            &ConvOp {
                pass: Pass::GradInput(dims4(x)?),
                ..*self
            },
        )?;
        let dw = dy.apply_op2_no_bwd(
            x,
            &ConvOp {
                pass: Pass::GradWeight(dims4(w)?),
                ..*self
            },
        )?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The forward convolution with its bias added in the same pass, for inference: no backward
/// pass (applied only to tensors that record no autograd graph).
struct ConvBiasOp {
    stride: usize,
    pad: usize,
}

impl candle_core::CustomOp3 for ConvBiasOp {
    fn name(&self) -> &'static str {
        "lossfloor-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: ConvKernels>(
            op: &ConvBiasOp,
            (s1, l1): (&CpuStorage, &Layout),
            (s2, l2): (&CpuStorage, &Layout),
            (s3, l3): (&CpuStorage, &Layout),
        ) -> Result<(CpuStorage, Shape)> {
            let g = Geom::new(l1.dims(), l2.dims(), op.stride, op.pad)?;
            let (x, w) = (
                contiguous::<T>(s1, l1, "conv2d")?,
                contiguous::<T>(s2, l2, "conv2d")?,
            );
            let b = contiguous::<T>(s3, l3, "conv2d")?;
            if b.len() != g.c_out {
                candle_core::bail!(
                    "conv2d: bias has {} values for {} channels",
                    b.len(),
                    g.c_out
                );
            }
            Ok((
                T::wrap(T::conv_forward(&g, x, w, Some(b))),
                Shape::from((g.n, g.c_out, g.ho, g.wo)),
            ))
        }
        match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                run::<f32>(self, (s1, l1), (s2, l2), (s3, l3))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                run::<f64>(self, (s1, l1), (s2, l2), (s3, l3))
            }
            _ => candle_core::bail!("{}: expected three f32 or three f64 tensors", self.name()),
        }
    }
}

/// Whether this module's op (rather than candle's conv2d) takes these tensors: our CPU
/// kernels, or cuDNN on CUDA when built with the `cudnn` feature.
fn fast_path(x: &Tensor, w: &Tensor) -> bool {
    #[cfg(feature = "cudnn")]
    if crate::conv_cudnn::applies(x, w) {
        return true;
    }
    crate::cpu_kernels_apply(&[x, w])
}

/// y = conv2d(x, w) + b with x [N,C_in,H,W], w [C_out,C_in,kh,kw], b [C_out] (same as
/// PyTorch's `conv2d(x, w, b, stride, padding)`): GEMM-based on CPU, cuDNN on CUDA with the
/// `cudnn` feature, candle's op elsewhere.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let prof = crate::profile::scope(crate::profile::Category::Convolution);
    // Inference (nothing records a graph) on the CPU: the bias joins the GEMM's pass.
    if let Some(b) = b {
        let no_graph = !(x.track_op() || w.track_op() || b.track_op());
        if no_graph && crate::cpu_kernels_apply(&[x, w, b]) {
            let y = x.contiguous()?.apply_op3_no_bwd(
                &w.contiguous()?,
                &b.contiguous()?,
                &ConvBiasOp {
                    stride,
                    pad: padding,
                },
            )?;
            if let (Ok((n, c_out, h_out, w_out)), Ok((_, c_in, kh, kw))) = (y.dims4(), w.dims4()) {
                crate::macs::record_macs((n * c_out * h_out * w_out * c_in * kh * kw) as u64);
            }
            return Ok(y);
        }
    }
    let y = if fast_path(x, w) {
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            ConvOp {
                stride,
                pad: padding,
                pass: Pass::Forward,
            },
        )?
    } else {
        x.conv2d(w, padding, stride, 1, 1)?
    };
    if let (Ok((n, c_out, h_out, w_out)), Ok((_, c_in, kh, kw))) = (y.dims4(), w.dims4()) {
        crate::macs::record_macs((n * c_out * h_out * w_out * c_in * kh * kw) as u64);
    }
    drop(prof);
    let _prof = crate::profile::scope(crate::profile::Category::ElementwiseMemory);
    add_channel_bias(y, b)
}

/// The same function through candle's own conv2d (for tests and benchmarks).
pub fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    add_channel_bias(x.conv2d(w, padding, stride, 1, 1)?, b)
}

fn add_channel_bias(y: Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The f32 input gradient (the direct kernel on W′ where it applies) against the f64
    /// GEMM path, within the round-off of a sum of C_out·k² + 1 terms.
    #[test]
    fn input_gradient_as_a_convolution_matches_the_gemm_path() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // (n, c_in, h, w, c_out, k, pad): 3×3 with c_in a multiple of 32 or 16 (the direct
        // kernel on this CPU), with c_in = 3, and 1×1 (both GEMM).
        for &(n, c_in, h, w, c_out, k, pad) in &[
            (2, 32, 7, 9, 5, 3, 1),
            (1, 16, 14, 14, 64, 3, 1),
            (3, 48, 5, 5, 8, 1, 0),
            (2, 3, 6, 6, 32, 3, 1),
        ] {
            let g = Geom::new(&[n, c_in, h, w], &[c_out, c_in, k, k], 1, pad).unwrap();
            let gt = transposed_geom(&g).unwrap();
            assert_eq!(
                direct::applies(&gt),
                direct::available() && c_in % 16 == 0 && k == 3
            );
            let dy: Vec<f32> = (0..n * c_out * g.p())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let wt: Vec<f32> = (0..c_out * g.k())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let got = f32::conv_grad_input(&g, &dy, &wt);
            let f64s = |v: &[f32], abs: bool| -> Vec<f64> {
                v.iter()
                    .map(|&x| if abs { (x as f64).abs() } else { x as f64 })
                    .collect()
            };
            let want = grad_input(&g, &f64s(&dy, false), &f64s(&wt, false));
            let mag = grad_input(&g, &f64s(&dy, true), &f64s(&wt, true));
            assert_eq!(got.len(), want.len());
            for (i, ((&y, &r), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
                let bound = (c_out * k * k + 2) as f64 * f32::EPSILON as f64 / 2.0 * m + 1e-12 * m;
                assert!(
                    (y as f64 - r).abs() <= bound,
                    "{:?}: dx[{i}] = {y}, want {r} (bound {bound})",
                    (n, c_in, h, w, c_out, k, pad)
                );
            }
        }
    }

    #[test]
    fn valid_columns_match_brute_force() {
        for (w, k, s, p) in [
            (7, 3, 1, 1),
            (8, 3, 2, 1),
            (5, 1, 1, 0),
            (6, 4, 2, 1),
            (4, 3, 1, 2),
            (9, 5, 3, 2),
        ] {
            let g = Geom::new(&[1, 1, w, w], &[1, 1, k, k], s, p).unwrap();
            for kj in 0..k {
                let want: Vec<usize> = (0..g.wo)
                    .filter(|&ox| (ox * s + kj) >= p && ox * s + kj - p < w)
                    .collect();
                let (lo, hi) = g.valid_cols(kj);
                assert_eq!(
                    (lo..hi).collect::<Vec<_>>(),
                    want,
                    "w={w} k={k} s={s} p={p} kj={kj}"
                );
            }
        }
    }
}
