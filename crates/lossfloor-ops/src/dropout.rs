//! Inverted dropout whose mask is a pure function of a 64-bit key and the element index, so
//! it is the same on every device and thread count, is computed where the tensor lives, and
//! is never stored: the backward pass recomputes it.
//!
//!   u_i    = top 24 bits of SplitMix64(key + (i + 1)·φ) / 2²⁴      (φ = 0x9E3779B97F4A7C15)
//!   y_i    = x_i · (u_i ≥ p ? 1/(1 − p) : 0)                        (u and p compared in f32)
//!   ∂L/∂x_i = ∂L/∂y_i · (u_i ≥ p ? 1/(1 − p) : 0)
//!
//! u_i is SplitMix64's (i + 1)-th output for the state `key`: a counter-based generator, so
//! any element's value is computed on its own, in parallel, on the host or on a GPU.
//!
//! Why not a sequential stream: drawing one uniform per activation element on one host thread
//! and copying the mask to the GPU cost, for a DDPM++ step at batch 128 (3.54 M dropped-out
//! activations per image), 4.5·10⁸ draws and a 1.8 GB upload per forward pass; the op also
//! had to keep the mask for the backward pass.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// SplitMix64's increment (2⁶⁴/φ, φ the golden ratio).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The uniform of element `i` under `key`, in [0, 1) with 24 random bits (exact in f32).
pub fn dropout_uniform(key: u64, i: u64) -> f32 {
    let mut z = key.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// The factor element `i` is multiplied by: 1/(1 − p) if kept, 0 if dropped.
fn factor(key: u64, i: u64, p: f32, scale: f32) -> f32 {
    if dropout_uniform(key, i) >= p {
        scale
    } else {
        0.0
    }
}

/// The dropout op: the same masking applies to the input and to the incoming gradient.
#[derive(Debug, Clone, Copy)]
struct DropoutOp {
    key: u64,
    p: f32,
    /// 1/(1 − p), rounded to f32 (so f32 and f64 tensors drop the same elements and f32
    /// results are the same on every device).
    scale: f32,
}

/// Elements per parallel task.
const TASK: usize = 1 << 16;

fn masked_cpu<T: Copy + Send + Sync + std::ops::Mul<Output = T>>(
    x: &[T],
    op: &DropoutOp,
    to_t: fn(f32) -> T,
) -> Vec<T> {
    let mut y = x.to_vec();
    y.par_chunks_mut(TASK).enumerate().for_each(|(c, out)| {
        let base = (c * TASK) as u64;
        for (j, v) in out.iter_mut().enumerate() {
            *v = *v * to_t(factor(op.key, base + j as u64, op.p, op.scale));
        }
    });
    y
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "lossfloor-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: input must be contiguous", self.name());
        };
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(masked_cpu(&v[a..b], self, |f| f)),
            CpuStorage::F64(v) => CpuStorage::F64(masked_cpu(&v[a..b], self, f64::from)),
            _ => candle_core::bail!("{}: expected f32 or f64", self.name()),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::dropout_cuda::forward(s, l, self.key, self.p, self.scale)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Inverted dropout as `torch.nn.functional.dropout` in training mode, with the mask given by
/// `key` (see the module comment): `x · 1[u ≥ p] / (1 − p)`. `p ≤ 0` returns `x`.
pub fn dropout(x: &Tensor, key: u64, p: f64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 || p.is_nan() {
        candle_core::bail!("dropout: p must be below 1, got {p}");
    }
    let op = DropoutOp {
        key,
        p: p as f32,
        scale: (1.0 / (1.0 - p)) as f32,
    };
    if crate::kernels_apply(&[x]) {
        x.contiguous()?.apply_op1(op)
    } else {
        dropout_reference(x, key, p)
    }
}

/// [`dropout`] composed of candle ops, with the factors computed on the host (any device and
/// dtype; for tests and as the fallback).
pub fn dropout_reference(x: &Tensor, key: u64, p: f64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let (p32, scale) = (p as f32, (1.0 / (1.0 - p)) as f32);
    let f: Vec<f32> = (0..x.elem_count() as u64)
        .map(|i| factor(key, i, p32, scale))
        .collect();
    let f = Tensor::from_vec(f, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * f
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// SplitMix64 as its authors define it (state += φ; then the mix), run as a sequential
    /// stream: the counter form must give the same numbers.
    #[test]
    fn uniform_is_splitmix64_stream() {
        let key = 0x1234_5678_9ABC_DEF0u64;
        let mut state = key;
        for i in 0..1000u64 {
            state = state.wrapping_add(GOLDEN);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            assert_eq!(dropout_uniform(key, i), (z >> 40) as f32 / 16_777_216.0);
        }
    }

    /// Mean, spread and lag-1 correlation of 2²⁰ uniforms, and the kept fraction at p = 0.13,
    /// within 5 standard errors of a true U[0, 1).
    #[test]
    fn uniforms_look_uniform() {
        let n = 1usize << 20;
        let u: Vec<f64> = (0..n as u64)
            .map(|i| dropout_uniform(42, i) as f64)
            .collect();
        let mean = u.iter().sum::<f64>() / n as f64;
        let var = u.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let lag = u
            .windows(2)
            .map(|w| (w[0] - 0.5) * (w[1] - 0.5))
            .sum::<f64>()
            / n as f64;
        let se = (1.0 / 12.0 / n as f64).sqrt();
        assert!((mean - 0.5).abs() < 5.0 * se, "mean {mean}");
        // Var of (u − ½)² is 1/180; the sample variance's standard error is √(1/180/n).
        assert!(
            (var - 1.0 / 12.0).abs() < 5.0 * (1.0 / 180.0 / n as f64).sqrt(),
            "var {var}"
        );
        assert!(
            lag.abs() < 5.0 / 12.0 / (n as f64).sqrt(),
            "lag-1 covariance {lag}"
        );
        let kept = u.iter().filter(|&&v| v >= 0.13).count() as f64 / n as f64;
        let se_kept = (0.13 * 0.87 / n as f64).sqrt();
        assert!((kept - 0.87).abs() < 5.0 * se_kept, "kept {kept}");
        assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
    }

    /// The parallel kernel equals the host-composed form bit for bit, value and gradient,
    /// for f32 and f64, across several parallel tasks; and the gradient is the same mask.
    #[test]
    fn kernel_equals_composed_and_gradient_is_the_mask() {
        let dev = Device::Cpu;
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let n = 2 * TASK + 123;
            let x = Tensor::randn(0f32, 1.0, n, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let r = Tensor::randn(0f32, 1.0, n, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let run = |fused: bool| {
                let y = if fused {
                    dropout(x.as_tensor(), 7, 0.3).unwrap()
                } else {
                    dropout_reference(x.as_tensor(), 7, 0.3).unwrap()
                };
                let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let f64s = |t: &Tensor| -> Vec<f64> {
                    t.to_dtype(candle_core::DType::F64)
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                };
                (f64s(&y), f64s(g.get(x.as_tensor()).unwrap()))
            };
            let (fused, composed) = (run(true), run(false));
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fused.0), bits(&composed.0), "{dtype:?} value");
            assert_eq!(bits(&fused.1), bits(&composed.1), "{dtype:?} gradient");
            // y = x · f and dL/dx = r · f with the same factors f ∈ {0, 1/(1−p)}.
            let xs: Vec<f64> = x
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let rs: Vec<f64> = r
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let scale = (1.0f64 / 0.7) as f32 as f64;
            let mut dropped = 0;
            for i in 0..n {
                let keep = dropout_uniform(7, i as u64) >= 0.3;
                let f = if keep { scale } else { 0.0 };
                dropped += usize::from(!keep);
                assert!((fused.0[i] - xs[i] * f).abs() <= 1e-6 * xs[i].abs().max(1.0));
                assert!((fused.1[i] - rs[i] * f).abs() <= 1e-6 * rs[i].abs().max(1.0));
            }
            let rate = dropped as f64 / n as f64;
            assert!((rate - 0.3).abs() < 0.01, "dropped fraction {rate}");
        }
    }

    #[test]
    fn keys_give_different_masks_and_p_is_checked() {
        let x = Tensor::ones(4096, candle_core::DType::F32, &Device::Cpu).unwrap();
        let a: Vec<f32> = dropout(&x, 1, 0.5).unwrap().to_vec1().unwrap();
        let b: Vec<f32> = dropout(&x, 2, 0.5).unwrap().to_vec1().unwrap();
        assert_ne!(a, b);
        assert_eq!(
            dropout(&x, 1, 0.0).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0; 4096]
        );
        assert!(dropout(&x, 1, 1.0).is_err());
    }
}
