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

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::elem::Elem;
use crate::storage::{contiguous, FromStorage};

#[derive(Debug, Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
    backward: bool,
}

/// Mean and 1/√(var + ε) of one group's values.
fn group_stats<T: Elem>(v: &[T], eps: f64) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|x| x.to_f64()).sum::<f64>() / n;
    let var = v.iter().map(|x| (x.to_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn forward<T: Elem>(x: &[T], gamma: &[T], beta: &[T], dims: &[usize], op: &GroupNormOp) -> Vec<T> {
    let (c, hw) = (dims[1], dims[2..].iter().product::<usize>());
    let cg = c / op.groups;
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(cg * hw)
        .zip(x.par_chunks(cg * hw))
        .enumerate()
        .for_each(|(i, (y_g, x_g))| {
            let g = i % op.groups;
            let (mean, rstd) = group_stats(x_g, op.eps);
            for ch in 0..cg {
                let cc = g * cg + ch;
                let scale = gamma[cc].to_f64() * rstd;
                let shift = beta[cc].to_f64() - mean * scale;
                let (scale, shift) = (T::from_f64(scale), T::from_f64(shift));
                for (o, &v) in y_g[ch * hw..(ch + 1) * hw]
                    .iter_mut()
                    .zip(&x_g[ch * hw..(ch + 1) * hw])
                {
                    let z = v * scale + shift;
                    *o = if op.silu {
                        z / (T::ONE + (-z).exp())
                    } else {
                        z
                    };
                }
            }
        });
    y
}

/// Returns [dx (same layout as x) | dγ (C) | dβ (C)] as one flat vector.
fn backward<T: Elem>(x: &[T], dy: &[T], params: &[T], dims: &[usize], op: &GroupNormOp) -> Vec<T> {
    let (n, c, hw) = (dims[0], dims[1], dims[2..].iter().product::<usize>());
    let cg = c / op.groups;
    let (gamma, beta) = params.split_at(c);
    let per_image: Vec<(Vec<T>, Vec<f64>)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut dx = vec![T::ZERO; c * hw];
            let mut dparams = vec![0f64; 2 * c]; // dγ then dβ
            let mut dxhat = vec![0f64; cg * hw];
            for g in 0..op.groups {
                let off = (i * c + g * cg) * hw;
                let x_g = &x[off..off + cg * hw];
                let dy_g = &dy[off..off + cg * hw];
                let (mean, rstd) = group_stats(x_g, op.eps);
                let (mut sum_dxhat, mut sum_dxhat_xhat) = (0f64, 0f64);
                for ch in 0..cg {
                    let cc = g * cg + ch;
                    let (gm, bt) = (gamma[cc].to_f64(), beta[cc].to_f64());
                    let (mut dgamma, mut dbeta) = (0f64, 0f64);
                    for j in ch * hw..(ch + 1) * hw {
                        let xhat = (x_g[j].to_f64() - mean) * rstd;
                        let mut dz = dy_g[j].to_f64();
                        if op.silu {
                            let z = gm * xhat + bt;
                            let s = sigmoid(z);
                            dz *= s * (1.0 + z * (1.0 - s));
                        }
                        dbeta += dz;
                        dgamma += dz * xhat;
                        let d = dz * gm;
                        dxhat[j] = d;
                        sum_dxhat += d;
                        sum_dxhat_xhat += d * xhat;
                    }
                    dparams[cc] += dgamma;
                    dparams[c + cc] += dbeta;
                }
                let m = (cg * hw) as f64;
                let (mean_d, mean_dx) = (sum_dxhat / m, sum_dxhat_xhat / m);
                for j in 0..cg * hw {
                    let xhat = (x_g[j].to_f64() - mean) * rstd;
                    dx[g * cg * hw + j] = T::from_f64(rstd * (dxhat[j] - mean_d - xhat * mean_dx));
                }
            }
            (dx, dparams)
        })
        .collect();
    let mut out = Vec::with_capacity(x.len() + 2 * c);
    let mut dparams = vec![0f64; 2 * c];
    for (dx, dp) in &per_image {
        out.extend_from_slice(dx);
        for (t, v) in dparams.iter_mut().zip(dp) {
            *t += v;
        }
    }
    out.extend(dparams.iter().map(|&v| T::from_f64(v)));
    out
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
        } else {
            // (x, γ, β)
            Ok((
                T::wrap(forward(a, b, c, dims, self)),
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
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let params = Tensor::cat(&[gamma, beta], 0)?;
        let flat = x.apply_op3_no_bwd(
            &dy.contiguous()?,
            &params,
            &GroupNormOp {
                backward: true,
                ..*self
            },
        )?;
        let (n_x, c) = (x.elem_count(), gamma.elem_count());
        let dx = flat.narrow(0, 0, n_x)?.reshape(x.shape())?;
        let dgamma = flat.narrow(0, n_x, c)?;
        let dbeta = flat.narrow(0, n_x + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
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
    check(x, groups, gamma)?;
    let fused = match x.device() {
        candle_core::Device::Cpu => matches!(x.dtype(), DType::F32 | DType::F64),
        candle_core::Device::Cuda(_) => cfg!(feature = "cuda") && x.dtype() == DType::F32,
        _ => false,
    };
    if fused && gamma.dtype() == x.dtype() && beta.dtype() == x.dtype() {
        x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            GroupNormOp {
                groups,
                eps,
                silu,
                backward: false,
            },
        )
    } else {
        group_norm_reference(x, groups, gamma, beta, eps, silu)
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
