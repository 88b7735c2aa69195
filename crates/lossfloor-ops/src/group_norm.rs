//! GroupNorm, optionally fused with the SiLU that follows it in every U-Net block:
//!
//!   x̂ = (x − μ_g) / √(σ²_g + ε),   z = γ_c x̂ + β_c,   y = z            (plain)
//!                                                       y = z·sigmoid(z) (fused SiLU)
//!
//! with μ_g, σ²_g the mean and (biased) variance over group g's channels and pixels. One pass
//! computes the statistics and one writes y; the backward pass is one fused pass too:
//!
//!   dz = dy·s·(1 + z(1 − s)), s = sigmoid(z)   (SiLU; dz = dy without it)
//!   dβ_c = Σ dz,  dγ_c = Σ dz·x̂,  dx̂ = γ_c dz
//!   dx = (dx̂ − mean_g(dx̂) − x̂·mean_g(dx̂·x̂)) / √(σ²_g + ε)
//!
//! Statistics are accumulated in f64. Images run in parallel.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::elem::Elem;
use crate::storage::{contiguous, FromStorage};

#[derive(Debug, Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
    backward: bool,
    /// Forward inputs are (x, [γ|β], shift [N, C]) instead of (x, γ, β).
    shifted: bool,
}

/// Lanes of the f64 accumulators: independent partial sums break the add-latency chain
/// and let the compiler vectorise the reductions (a single running sum cannot be
/// reordered without fast-math).
const LANES: usize = 8;

/// Σ f(v) over `v` in f64, in LANES partial sums.
#[inline(always)]
fn lane_sum<T: Elem>(v: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&x| f(x)).sum::<f64>()
}

/// Mean and 1/√(var + ε) of one group's values (two passes, f64 sums).
fn group_stats<T: Elem>(v: &[T], eps: f64) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = lane_sum(v, |x| x.to_f64()) / n;
    let var = lane_sum(v, |x| (x.to_f64() - mean) * (x.to_f64() - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// SiLU's derivative factor: d(z·σ(z))/dz = s·(1 + z(1 − s)), s = σ(z).
#[inline(always)]
fn silu_grad<T: Elem>(z: T) -> T {
    let s = T::ONE / (T::ONE + (-z).exp());
    s * (T::ONE + z * (T::ONE - s))
}

/// One group of one image: its input values and what the kernels need besides.
struct Group<'a, T> {
    /// The group's `cg·hw` input values, channel after channel.
    x: &'a [T],
    /// γ and β of all C channels.
    gamma: &'a [T],
    beta: &'a [T],
    /// Index of the group (its channels are g·cg .. (g+1)·cg).
    g: usize,
    /// Pixels per channel.
    hw: usize,
    op: &'a GroupNormOp,
    /// A per-channel value added to x before normalising (this image's C values), for
    /// GroupNorm(x + shift) without materialising x + shift.
    shift: Option<&'a [T]>,
}

impl<T: Elem> Group<'_, T> {
    /// The shift of channel `ch` of this group (0 without a shift).
    #[inline(always)]
    fn shift_of(&self, ch: usize) -> f64 {
        let cg = self.x.len() / self.hw;
        self.shift.map_or(0.0, |s| s[self.g * cg + ch].to_f64())
    }

    /// Mean and 1/√(var + ε) of the group's values x + shift.
    #[inline(always)]
    fn stats(&self) -> (f64, f64) {
        if self.shift.is_none() {
            return group_stats(self.x, self.op.eps);
        }
        let (hw, cg) = (self.hw, self.x.len() / self.hw);
        let m = self.x.len() as f64;
        let chan = |ch: usize| &self.x[ch * hw..(ch + 1) * hw];
        let mean = (0..cg)
            .map(|ch| lane_sum(chan(ch), |x| x.to_f64()) + hw as f64 * self.shift_of(ch))
            .sum::<f64>()
            / m;
        let var = (0..cg)
            .map(|ch| {
                let c = self.shift_of(ch) - mean;
                lane_sum(chan(ch), |x| (x.to_f64() + c) * (x.to_f64() + c))
            })
            .sum::<f64>()
            / m;
        (mean, 1.0 / (var + self.op.eps).sqrt())
    }
}

/// Calls `$kernel(args)` compiled for AVX2+FMA when the CPU has them, else for the baseline
/// target. The kernels and the helpers they inline (`exp_f32`, `lane_sum`) then vectorise 8
/// lanes wide instead of SSE2's 4; the arithmetic is the same (Rust contracts no a·b + c
/// into an FMA on its own), so both paths give the same bits.
macro_rules! dispatch_simd {
    ($kernel:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                return unsafe { avx2::$kernel($($arg),*) };
            }
        }
        $kernel($($arg),*)
    }};
}

/// One group's forward: statistics, then y = γ x̂ + β (and SiLU) into `y_g`.
#[inline(always)]
fn forward_group<T: Elem>(y_g: &mut [T], gr: &Group<T>) {
    let (x_g, hw, op) = (gr.x, gr.hw, gr.op);
    let cg = x_g.len() / hw;
    let (mean, rstd) = gr.stats();
    for ch in 0..cg {
        let cc = gr.g * cg + ch;
        // (x + s_c − mean)·γ·rstd + β = x·scale + (β − (mean − s_c)·scale)
        let mean_c = mean - gr.shift_of(ch);
        let scale = gr.gamma[cc].to_f64() * rstd;
        let shift = gr.beta[cc].to_f64() - mean_c * scale;
        let (scale, shift) = (T::from_f64(scale), T::from_f64(shift));
        let (ys, xs) = (
            &mut y_g[ch * hw..(ch + 1) * hw],
            &x_g[ch * hw..(ch + 1) * hw],
        );
        if op.silu {
            for (o, &v) in ys.iter_mut().zip(xs) {
                let z = v * scale + shift;
                *o = z / (T::ONE + (-z).exp());
            }
        } else {
            for (o, &v) in ys.iter_mut().zip(xs) {
                *o = v * scale + shift;
            }
        }
    }
}

/// One group's backward (see [`backward`]) from its output gradient `dy_g` into `dx_g`;
/// adds the group's dγ, dβ into `dparams` ([dγ (C) | dβ (C)]).
#[inline(always)]
fn backward_group<T: Elem>(
    dx_g: &mut [T],
    dy_g: &[T],
    gr: &Group<T>,
    dparams: &mut [f64],
    dshift: &mut [f64],
) {
    let (x_g, hw, op, g) = (gr.x, gr.hw, gr.op, gr.g);
    let cg = x_g.len() / hw;
    let c = gr.gamma.len();
    let (mean_g, rstd) = gr.stats();
    let rstd_t = T::from_f64(rstd);
    let (mut sum_d, mut sum_dx) = (0f64, 0f64);
    for ch in 0..cg {
        let cc = g * cg + ch;
        // x̂ = (x − mean_c)·rstd with mean_c = mean − s_c
        let mean = mean_g - gr.shift_of(ch);
        let mean_t = T::from_f64(mean);
        let (gm, bt) = (gr.gamma[cc], gr.beta[cc]);
        let range = ch * hw..(ch + 1) * hw;
        // dz into dx_g for now (pass 2 turns it into dx).
        let dz = &mut dx_g[range.clone()];
        let (xs, dys) = (&x_g[range.clone()], &dy_g[range.clone()]);
        if op.silu {
            for ((d, &xv), &g_out) in dz.iter_mut().zip(xs).zip(dys) {
                let z = gm * ((xv - mean_t) * rstd_t) + bt;
                *d = g_out * silu_grad(z);
            }
        } else {
            dz.copy_from_slice(dys);
        }
        let dbeta = lane_sum(dz, |v| v.to_f64());
        let dgamma = lane_sum_pairs(dz, xs, |d, xv| d.to_f64() * ((xv.to_f64() - mean) * rstd));
        dparams[cc] += dgamma;
        dparams[c + cc] += dbeta;
        sum_d += gm.to_f64() * dbeta;
        sum_dx += gm.to_f64() * dgamma;
    }
    let m = (cg * hw) as f64;
    let (mean_d, mean_dx) = (T::from_f64(sum_d / m), T::from_f64(sum_dx / m));
    for ch in 0..cg {
        let gm = gr.gamma[g * cg + ch];
        let mean_t = T::from_f64(mean_g - gr.shift_of(ch));
        let range = ch * hw..(ch + 1) * hw;
        let dx_c = &mut dx_g[range.clone()];
        for (d, &xv) in dx_c.iter_mut().zip(&x_g[range]) {
            let xhat = (xv - mean_t) * rstd_t;
            *d = rstd_t * (gm * *d - mean_d - xhat * mean_dx);
        }
        // d(x + s)/ds_c = 1: the shift's gradient is the channel's summed dx.
        if gr.shift.is_some() {
            dshift[g * cg + ch] += lane_sum(dx_c, |v| v.to_f64());
        }
    }
}

/// The per-group kernels compiled with AVX2 and FMA enabled (x86-64 only).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Elem, Group};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_group<T: Elem>(y_g: &mut [T], gr: &Group<T>) {
        super::forward_group(y_g, gr)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn backward_group<T: Elem>(
        dx_g: &mut [T],
        dy_g: &[T],
        gr: &Group<T>,
        dparams: &mut [f64],
        dshift: &mut [f64],
    ) {
        super::backward_group(dx_g, dy_g, gr, dparams, dshift)
    }
}

fn run_forward_group<T: Elem>(y_g: &mut [T], gr: &Group<T>) {
    dispatch_simd!(forward_group(y_g, gr))
}

fn run_backward_group<T: Elem>(
    dx_g: &mut [T],
    dy_g: &[T],
    gr: &Group<T>,
    dparams: &mut [f64],
    dshift: &mut [f64],
) {
    dispatch_simd!(backward_group(dx_g, dy_g, gr, dparams, dshift))
}

/// y = GroupNorm(x + shift) (shift: [N, C] values, or none), optionally with SiLU.
fn forward<T: Elem>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    shift: Option<&[T]>,
    dims: &[usize],
    op: &GroupNormOp,
) -> Vec<T> {
    let (c, hw) = (dims[1], dims[2..].iter().product::<usize>());
    let cg = c / op.groups;
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(cg * hw)
        .zip(x.par_chunks(cg * hw))
        .enumerate()
        .for_each(|(i, (y_g, x_g))| {
            let n = i / op.groups;
            let gr = Group {
                x: x_g,
                gamma,
                beta,
                g: i % op.groups,
                hw,
                op,
                shift: shift.map(|s| &s[n * c..(n + 1) * c]),
            };
            run_forward_group(y_g, &gr)
        });
    y
}

/// Returns [dx (same layout as x) | dγ (C) | dβ (C)] as one flat vector, followed by
/// dshift (N·C) when `params` = [γ | β | shift (N·C)] carries a shift.
///
/// Per group, pass 1 forms dz (through the SiLU) elementwise and the per-channel sums
/// dβ_c = Σ dz and dγ_c = Σ dz·x̂ (f64 lanes); the group means of dx̂ = γ dz and dx̂·x̂ follow
/// from them (Σ dx̂ = Σ_c γ_c dβ_c, Σ dx̂·x̂ = Σ_c γ_c dγ_c). Pass 2 writes dx.
fn backward<T: Elem>(x: &[T], dy: &[T], params: &[T], dims: &[usize], op: &GroupNormOp) -> Vec<T> {
    let (c, hw) = (dims[1], dims[2..].iter().product::<usize>());
    let cg = c / op.groups;
    let (gamma, rest) = params.split_at(c);
    let (beta, shift) = rest.split_at(c);
    let shift = (!shift.is_empty()).then_some(shift);
    let n = x.len() / (c * hw);
    let shift_len = if shift.is_some() { n * c } else { 0 };
    let mut out = vec![T::ZERO; x.len() + 2 * c + shift_len];
    let (dx_all, _) = out.split_at_mut(x.len());
    // Each image writes its own dx block and returns its (dγ, dβ) and dshift.
    let per_image: Vec<(Vec<f64>, Vec<f64>)> = dx_all
        .par_chunks_mut(c * hw)
        .enumerate()
        .map(|(i, dx)| {
            let mut dparams = vec![0f64; 2 * c]; // dγ then dβ
            let mut dshift = vec![0f64; if shift.is_some() { c } else { 0 }];
            for g in 0..op.groups {
                let off = (i * c + g * cg) * hw;
                let gr = Group {
                    x: &x[off..off + cg * hw],
                    gamma,
                    beta,
                    g,
                    hw,
                    op,
                    shift: shift.map(|s| &s[i * c..(i + 1) * c]),
                };
                run_backward_group(
                    &mut dx[g * cg * hw..(g + 1) * cg * hw],
                    &dy[off..off + cg * hw],
                    &gr,
                    &mut dparams,
                    &mut dshift,
                );
            }
            (dparams, dshift)
        })
        .collect();
    let mut total = vec![0f64; 2 * c];
    for (dp, _) in &per_image {
        for (t, v) in total.iter_mut().zip(dp) {
            *t += v;
        }
    }
    let tail = &mut out[x.len()..];
    for (o, v) in tail.iter_mut().zip(&total) {
        *o = T::from_f64(*v);
    }
    if shift.is_some() {
        for (i, (_, ds)) in per_image.iter().enumerate() {
            for (o, v) in tail[2 * c + i * c..(3 + i) * c].iter_mut().zip(ds) {
                *o = T::from_f64(*v);
            }
        }
    }
    out
}

/// Σ f(a_i, b_i) in f64, in LANES partial sums.
#[inline(always)]
fn lane_sum_pairs<T: Elem>(a: &[T], b: &[T], f: impl Fn(T, T) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let n = a.len().min(b.len());
    let full = n / LANES * LANES;
    for (ca, cb) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += f(ca[l], cb[l]);
        }
    }
    acc.iter().sum::<f64>() + (full..n).map(|i| f(a[i], b[i])).sum::<f64>()
}

impl GroupNormOp {
    fn run<T: FromStorage>(&self, s: [(&CpuStorage, &Layout); 3]) -> Result<(CpuStorage, Shape)> {
        let a = contiguous::<T>(s[0].0, s[0].1, "group_norm")?;
        let b = contiguous::<T>(s[1].0, s[1].1, "group_norm")?;
        let c = contiguous::<T>(s[2].0, s[2].1, "group_norm")?;
        let dims = s[0].1.dims();
        if self.backward {
            // (x, dy, [γ|β])
            let out = backward(a, b, c, dims, self);
            let len = out.len();
            Ok((T::wrap(out), Shape::from(len)))
        } else if self.shifted {
            // (x, [γ|β], shift)
            let ch = dims[1];
            let (gamma, beta) = b.split_at(ch);
            Ok((
                T::wrap(forward(a, gamma, beta, Some(c), dims, self)),
                Shape::from(dims.to_vec()),
            ))
        } else {
            // (x, γ, β)
            Ok((
                T::wrap(forward(a, b, c, None, dims, self)),
                Shape::from(dims.to_vec()),
            ))
        }
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        match (self.backward, self.silu) {
            (false, false) => "lossfloor-group-norm",
            (false, true) => "lossfloor-group-norm-silu",
            (true, _) => "lossfloor-group-norm-backward",
        }
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
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        match s1 {
            CpuStorage::F32(_) => self.run::<f32>(s),
            CpuStorage::F64(_) => self.run::<f64>(s),
            _ => candle_core::bail!("{}: expected f32 or f64", self.name()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        // The per-image shift form has no CUDA kernel (`group_norm_shifted` only builds this
        // op where the CPU kernels apply); refuse it rather than read its operands wrongly.
        if self.shifted {
            candle_core::bail!("{}: the shifted form has no CUDA kernel", self.name());
        }
        let run = if self.backward {
            crate::group_norm_cuda::backward
        } else {
            crate::group_norm_cuda::forward
        };
        run(
            (s1, l1),
            (s2, l2),
            (s3, l3),
            self.groups,
            self.eps,
            self.silu,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Inputs are (x, γ, β), or (x, [γ|β], shift) when shifted; the backward op takes
        // [γ|β] or [γ|β|shift] and returns [dx | dγ | dβ (| dshift)].
        let params = if self.shifted {
            Tensor::cat(&[a2, &a3.flatten_all()?], 0)?
        } else {
            Tensor::cat(&[a2, a3], 0)?
        };
        let flat = x.apply_op3_no_bwd(
            &dy.contiguous()?,
            &params,
            &GroupNormOp {
                backward: true,
                ..*self
            },
        )?;
        let (n_x, c) = (x.elem_count(), x.dim(1)?);
        let dx = flat.narrow(0, 0, n_x)?.reshape(x.shape())?;
        if self.shifted {
            let dparams = flat.narrow(0, n_x, 2 * c)?;
            let dshift = flat
                .narrow(0, n_x + 2 * c, a3.elem_count())?
                .reshape(a3.shape())?;
            Ok((Some(dx), Some(dparams), Some(dshift)))
        } else {
            let dgamma = flat.narrow(0, n_x, c)?;
            let dbeta = flat.narrow(0, n_x + c, c)?;
            Ok((Some(dx), Some(dgamma), Some(dbeta)))
        }
    }
}

fn check(x: &Tensor, groups: usize, gamma: &Tensor) -> Result<()> {
    let d = x.dims();
    if d.len() < 2 || groups == 0 || !d[1].is_multiple_of(groups) || gamma.dims() != [d[1]] {
        candle_core::bail!(
            "group_norm: {} channels of x {:?} cannot form {groups} groups with γ of shape {:?}",
            d.get(1).unwrap_or(&0),
            d,
            gamma.dims()
        );
    }
    Ok(())
}

/// GroupNorm over `groups` groups of x [N, C, ...] with per-channel γ, β [C], followed by SiLU
/// when `silu` is set. Fused on the CPU (f32/f64, parallel) and on CUDA (f32, built with the
/// `cuda` feature); composed of candle ops elsewhere.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let _prof = crate::profile::scope(crate::profile::Category::GroupNormSilu);
    check(x, groups, gamma)?;
    if crate::kernels_apply(&[x, gamma, beta]) {
        x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            GroupNormOp {
                groups,
                eps,
                silu,
                backward: false,
                shifted: false,
            },
        )
    } else {
        group_norm_reference(x, groups, gamma, beta, eps, silu)
    }
}

/// GroupNorm(x + shift) (then SiLU when `silu`) with a per-image, per-channel `shift`
/// [N, C] broadcast over the pixels: a U-Net block's `norm1(h + emb)`. On the CPU (f32/f64)
/// one op that never forms x + shift, so training does not keep that sum alive; elsewhere
/// the composition `group_norm(x + shift)`.
pub fn group_norm_shifted(
    x: &Tensor,
    shift: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let _prof = crate::profile::scope(crate::profile::Category::GroupNormSilu);
    check(x, groups, gamma)?;
    let d = x.dims();
    if shift.dims() != [d[0], d[1]] {
        candle_core::bail!(
            "group_norm_shifted: shift {:?} should be [N, C] = [{}, {}]",
            shift.dims(),
            d[0],
            d[1]
        );
    }
    if crate::cpu_kernels_apply(&[x, shift, gamma, beta]) {
        x.contiguous()?.apply_op3(
            &Tensor::cat(&[gamma, beta], 0)?,
            &shift.contiguous()?,
            GroupNormOp {
                groups,
                eps,
                silu,
                backward: false,
                shifted: true,
            },
        )
    } else {
        let mut shape = d.to_vec();
        shape[2..].iter_mut().for_each(|v| *v = 1);
        let x = x.broadcast_add(&shift.reshape(shape.as_slice())?)?;
        group_norm(&x, groups, gamma, beta, eps, silu)
    }
}

/// The same function composed of plain candle ops (differentiable everywhere; the reference).
pub fn group_norm_reference(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    check(x, groups, gamma)?;
    let dims = x.dims().to_vec();
    let n = dims[0];
    let g = x.reshape((n, groups, ()))?;
    let mean = g.mean_keepdim(D::Minus1)?;
    let centred = g.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape(dims.as_slice())?;
    let mut shape = vec![1usize; dims.len()];
    shape[1] = dims[1];
    let z = xhat
        .broadcast_mul(&gamma.reshape(shape.as_slice())?)?
        .broadcast_add(&beta.reshape(shape.as_slice())?)?;
    if silu {
        z.silu()
    } else {
        Ok(z)
    }
}
