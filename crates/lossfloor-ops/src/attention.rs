//! Self-attention, 2× resampling and the residual sum as the U-Nets use them, in one place so that the
//! networks and the benchmarks (`scripts/bench-ops`) run the same code.
//!
//! They are compositions of candle ops with working backward passes (candle's
//! `softmax_last_dim` and `upsample_nearest2d` are avoided: the first stops gradients, the
//! second's backward overwrites gradients already accumulated for its input).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::elem::Elem;
use crate::storage::{contiguous, FromStorage};

/// Single-head dot-product attention in EDM's channel-first layout: q, k, v `[B, C, L]` →
/// a[b, c, i] = Σ_j w[b, i, j] v[b, c, j] with w[b, i, ·] = softmax_j(Σ_c q[b,c,i] k[b,c,j] / √C).
/// (Several heads are B = N·heads.)
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let _prof = crate::profile::scope(crate::profile::Category::Attention);
    let c = q.dim(1)?;
    // Two matmuls of B·L·L·C multiply-adds each: the logits and the weighted values.
    if let (Ok((b, _, l)), Ok(lk)) = (q.dims3(), k.dim(2)) {
        crate::macs::record_macs((2 * b * l * lk * c) as u64);
    }
    // Inference on the CPU: one fused pass per image, reading q, k, v where they lie.
    let no_graph = !(q.track_op() || k.track_op() || v.track_op());
    if no_graph && crate::cpu_kernels_apply(&[q, k, v]) && same_shape_3d(q, k, v) {
        return q.apply_op3_no_bwd(k, v, &AttentionInference);
    }
    let k = (k / (c as f64).sqrt())?;
    // logits[b, i, j] = Σ_c q[b,c,i] k[b,c,j]
    let logits = q.transpose(1, 2)?.contiguous()?.matmul(&k.contiguous()?)?;
    let w = softmax_last(&logits)?;
    v.contiguous()?.matmul(&w.transpose(1, 2)?.contiguous()?)
}

fn same_shape_3d(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    q.rank() == 3 && q.dims() == k.dims() && q.dims() == v.dims()
}

/// [`attention`] for inference: per image b (in parallel), the logits
/// s[i, j] = Σ_c q[c,i] k[c,j] / √C into an L×L buffer (one GEMM on q and k through their
/// strides, so the views of a qkv tensor are never copied), softmax over j in place
/// (exp(s − max) / Σ), then a[c, i] = Σ_j v[c,j] w[i,j] (a second GEMM). No backward pass:
/// it is applied only to tensors that record no graph.
struct AttentionInference;

/// One image's attention (see [`AttentionInference`]); `q`, `k`, `v` start at the image's
/// first element and are addressed by (channel, position) strides.
#[allow(clippy::too_many_arguments)]
fn attention_image<T: Elem>(
    (c, l): (usize, usize),
    q: (&[T], [usize; 2]),
    k: (&[T], [usize; 2]),
    v: (&[T], [usize; 2]),
    w: &mut Vec<T>,
    out: &mut [T],
) {
    w.resize(l * l, T::ZERO);
    // s = qᵀ k: A = qᵀ [L × C], B = k [C × L].
    crate::elem::gemm(l, l, c, q.0, q.1[1], q.1[0], k.0, k.1[0], k.1[1], w, false);
    let scale = T::from_f64(1.0 / (c as f64).sqrt());
    for row in w.chunks_exact_mut(l) {
        let mut max = row[0] * scale;
        for &s in row.iter() {
            let s = s * scale;
            if s > max {
                max = s;
            }
        }
        let mut sum = 0f64;
        for s in row.iter_mut() {
            *s = (*s * scale - max).exp();
            sum += s.to_f64();
        }
        let inv = T::from_f64(1.0 / sum);
        row.iter_mut().for_each(|s| *s = *s * inv);
    }
    // a = v wᵀ: A = v [C × L], B = wᵀ [L × L].
    crate::elem::gemm(c, l, l, v.0, v.1[0], v.1[1], w, 1, l, out, false);
}

/// A 3-d tensor's elements, strides and start offset.
type View<'a, T> = (&'a [T], [usize; 3], usize);

fn view<'a, T: FromStorage>(s: &'a CpuStorage, lay: &Layout) -> Result<View<'a, T>> {
    let v =
        T::slice(s).ok_or_else(|| candle_core::Error::Msg("attention: unexpected dtype".into()))?;
    let st = lay.stride();
    Ok((v, [st[0], st[1], st[2]], lay.start_offset()))
}

/// Image `i` of a view: its elements from its first one, and its (channel, position) strides.
fn image<'a, T>((v, st, off): View<'a, T>, i: usize) -> (&'a [T], [usize; 2]) {
    (&v[off + i * st[0]..], [st[1], st[2]])
}

impl candle_core::CustomOp3 for AttentionInference {
    fn name(&self) -> &'static str {
        "lossfloor-attention-inference"
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
        fn run<T: FromStorage>(
            (s1, l1): (&CpuStorage, &Layout),
            (s2, l2): (&CpuStorage, &Layout),
            (s3, l3): (&CpuStorage, &Layout),
        ) -> Result<CpuStorage> {
            let (b, c, l) = l1.shape().dims3()?;
            let (qs, k_s, vs) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
            let mut out = vec![T::ZERO; b * c * l];
            out.par_chunks_mut(c * l)
                .enumerate()
                .for_each_init(Vec::new, |w, (i, o)| {
                    let (q, k, v) = (image(qs, i), image(k_s, i), image(vs, i));
                    attention_image((c, l), q, k, v, w, o);
                });
            Ok(T::wrap(out))
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                run::<f32>((s1, l1), (s2, l2), (s3, l3))?
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                run::<f64>((s1, l1), (s2, l2), (s3, l3))?
            }
            _ => candle_core::bail!("{}: expected f32 or f64", self.name()),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Softmax over the last dimension, exp(x − max) / Σ exp(x − max). The max is a constant
/// shift (detached: the softmax does not depend on it, so no gradient flows through it).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Nearest-neighbour 2× upsampling of `[N, C, H, W]`: each pixel becomes a 2×2 block. Its
/// gradient sums each 2×2 block of the incoming gradient (4 × 2×2 average pooling). On the
/// CPU (f32/f64) one parallel pass each way; elsewhere reshape + broadcast.
pub fn upsample2x_nearest(x: &Tensor) -> Result<Tensor> {
    let _prof = crate::profile::scope(crate::profile::Category::Resampling);
    if crate::cpu_kernels_apply(&[x]) {
        x.contiguous()?.apply_op1(Up2x)
    } else {
        upsample2x_nearest_reference(x)
    }
}

/// [`upsample2x_nearest`] by reshape and broadcast (any device; its backward is candle's sum
/// over the broadcast axes).
pub fn upsample2x_nearest_reference(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .reshape((n, c, 2 * h, 2 * w))
}

struct Up2x;

fn up2x<T: Copy + Send + Sync + Default>(x: &[T], w: usize) -> Vec<T> {
    let mut y = vec![T::default(); x.len() * 4];
    // One input row (w values) → two output rows of 2w values.
    y.par_chunks_mut(4 * w)
        .zip(x.par_chunks(w))
        .for_each(|(out, row)| {
            let (top, bottom) = out.split_at_mut(2 * w);
            for (j, &v) in row.iter().enumerate() {
                top[2 * j] = v;
                top[2 * j + 1] = v;
            }
            bottom.copy_from_slice(top);
        });
    y
}

impl CustomOp1 for Up2x {
    fn name(&self) -> &'static str {
        "lossfloor-upsample2x-nearest"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let shape = Shape::from((n, c, 2 * h, 2 * w));
        Ok(match s {
            CpuStorage::F32(_) => (
                f32::wrap(up2x(contiguous::<f32>(s, l, self.name())?, w)),
                shape,
            ),
            CpuStorage::F64(_) => (
                f64::wrap(up2x(contiguous::<f64>(s, l, self.name())?, w)),
                shape,
            ),
            _ => candle_core::bail!("{}: expected f32 or f64", self.name()),
        })
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.apply_op1_no_bwd(&Sum2x2)?))
    }
}

/// The gradient of [`Up2x`]: each 2×2 block of `[N, C, 2H, 2W]` summed into `[N, C, H, W]`.
/// It reads its input through the layout's strides, so a broadcast gradient (e.g. of a sum)
/// is never copied out first.
struct Sum2x2;

fn sum2x2<T: Elem>(v: &[T], l: &Layout) -> Result<Vec<T>> {
    let (n, c, h2, w2) = l.shape().dims4()?;
    let (h, w) = (h2 / 2, w2 / 2);
    let st = l.stride();
    let start = l.start_offset();
    let mut out = vec![T::ZERO; n * c * h * w];
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, o)| {
            let base = start + (plane / c) * st[0] + (plane % c) * st[1];
            for i in 0..h {
                for j in 0..w {
                    let at = |di: usize, dj: usize| {
                        v[base + (2 * i + di) * st[2] + (2 * j + dj) * st[3]]
                    };
                    o[i * w + j] = at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1);
                }
            }
        });
    Ok(out)
}

impl CustomOp1 for Sum2x2 {
    fn name(&self) -> &'static str {
        "lossfloor-sum2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h2, w2) = l.shape().dims4()?;
        let shape = Shape::from((n, c, h2 / 2, w2 / 2));
        Ok(match s {
            CpuStorage::F32(v) => (f32::wrap(sum2x2(v, l)?), shape),
            CpuStorage::F64(v) => (f64::wrap(sum2x2(v, l)?), shape),
            _ => candle_core::bail!("{}: expected f32 or f64", self.name()),
        })
    }
}

/// 2×2 average pooling at stride 2 of `[N, C, H, W]` (EDM's down-sampling with the [1, 1]
/// filter).
pub fn downsample2x_box(x: &Tensor) -> Result<Tensor> {
    let _prof = crate::profile::scope(crate::profile::Category::Resampling);
    x.avg_pool2d(2)
}

/// (a + b)·s for two tensors of the same shape: a U-Net block's residual sum times its skip
/// scale. On the CPU (f32/f64) one op, so training keeps only a and b for it; composed,
/// candle would also keep a + b until the backward pass ends. Both gradients are g·s.
pub fn add_scaled(a: &Tensor, b: &Tensor, s: f64) -> Result<Tensor> {
    let _prof = crate::profile::scope(crate::profile::Category::ElementwiseMemory);
    if crate::cpu_kernels_apply(&[a, b]) && a.dims() == b.dims() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddScaled(s))
    } else if s == 1.0 {
        a + b
    } else {
        (a + b)? * s
    }
}

struct AddScaled(f64);

impl candle_core::CustomOp2 for AddScaled {
    fn name(&self) -> &'static str {
        "lossfloor-add-scaled"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: FromStorage>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s: f64,
        ) -> Result<CpuStorage> {
            let a = contiguous::<T>(s1, l1, "add_scaled")?;
            let b = contiguous::<T>(s2, l2, "add_scaled")?;
            let s = T::from_f64(s);
            let mut out = vec![T::ZERO; a.len()];
            out.par_chunks_mut(1 << 16)
                .zip(a.par_chunks(1 << 16).zip(b.par_chunks(1 << 16)))
                .for_each(|(o, (a, b))| {
                    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                        *o = (x + y) * s;
                    }
                });
            Ok(T::wrap(out))
        }
        let out = match s1 {
            CpuStorage::F32(_) => run::<f32>(s1, l1, s2, l2, self.0)?,
            CpuStorage::F64(_) => run::<f64>(s1, l1, s2, l2, self.0)?,
            _ => candle_core::bail!("{}: expected f32 or f64", self.name()),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = if self.0 == 1.0 {
            dy.clone()
        } else {
            (dy * self.0)?
        };
        Ok((Some(g.clone()), Some(g)))
    }
}
