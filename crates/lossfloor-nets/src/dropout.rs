//! Seeded dropout, so that training is reproducible bit for bit.
//!
//! candle's `ops::dropout` and `Tensor::rand` draw from an unseeded thread RNG on the
//! CPU, so two runs of the same training step (or a run resumed from a checkpoint)
//! would drop different activations. Every network therefore owns a [`DropoutRng`];
//! the trainer reseeds it before each forward pass from the run seed, the step and the
//! accumulation round, and the masks are drawn in the fixed order of the forward pass.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// The source of a network's dropout masks (a ChaCha8 stream, drawn on the host).
#[derive(Debug)]
pub struct DropoutRng(Mutex<ChaCha8Rng>);

impl DropoutRng {
    /// A stream started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(ChaCha8Rng::seed_from_u64(seed)))
    }

    /// Restarts the stream from `seed`.
    pub fn reseed(&self, seed: u64) {
        *self.lock() = ChaCha8Rng::seed_from_u64(seed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaCha8Rng> {
        // A panic while holding the lock leaves a valid generator; keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` values uniform in [0, 1) as an f32 tensor of `shape` on `device`.
    pub fn uniform(&self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut rng = self.lock();
        let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }

    /// Inverted dropout as `torch.nn.functional.dropout` in training mode:
    /// `x · 1[u ≥ p] / (1 − p)` with `u ~ U[0, 1)` per element.
    ///
    /// On the CPU (f32/f64) this is one op that keeps its mask as bytes inside the graph
    /// node, so training holds no extra activation-sized tensors for it (the composed form
    /// below holds the f32 mask and `x · mask` until the backward pass ends). Both forms draw
    /// the same u and compare it with p in f32 (as candle's `ge` does), so they give the
    /// same bits.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        if lossfloor_ops::cpu_kernels_apply(&[x]) {
            let keep: Vec<u8> = {
                let mut rng = self.lock();
                (0..x.elem_count())
                    .map(|_| u8::from(rng.random::<f32>() >= p as f32))
                    .collect()
            };
            let op = MaskOp {
                keep: Arc::new(keep),
                scale: 1.0 / (1.0 - p),
            };
            return Ok(x.contiguous()?.apply_op1(op)?);
        }
        self.dropout_composed(x, p)
    }

    /// [`DropoutRng::dropout`] composed of candle ops (any device).
    pub fn dropout_composed(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = self
            .uniform(x.dims(), x.device())?
            .ge(p)?
            .to_dtype(x.dtype())?;
        Ok(((x * keep)? * (1.0 / (1.0 - p)))?)
    }

    /// A `[n, 1]` mask (dtype of `like`) that keeps each row with probability `1 − p`:
    /// EDM's label dropout `rand([n, 1]) >= p`.
    pub fn keep_rows(&self, n: usize, p: f64, like: &Tensor) -> Result<Tensor> {
        Ok(self
            .uniform(&[n, 1], like.device())?
            .ge(p)?
            .to_dtype(like.dtype())?)
    }

    /// `n` booleans (as u8) that are 1 with probability `p`: DiT's
    /// `rand(n) < p` class dropout.
    pub fn drop_flags(&self, n: usize, p: f64, device: &Device) -> Result<Tensor> {
        Ok(self.uniform(&[n], device)?.lt(p)?)
    }
}

/// y = x · keep · scale elementwise, with the mask held in the op; its gradient is the
/// same masking of the incoming gradient.
#[derive(Clone)]
struct MaskOp {
    keep: Arc<Vec<u8>>,
    scale: f64,
}

fn masked<T: Copy + std::ops::Mul<Output = T> + Default>(x: &[T], keep: &[u8], scale: T) -> Vec<T> {
    x.iter()
        .zip(keep)
        .map(|(&v, &k)| if k != 0 { v * scale } else { T::default() })
        .collect()
}

impl CustomOp1 for MaskOp {
    fn name(&self) -> &'static str {
        "lossfloor-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: input must be contiguous", self.name());
        };
        if b - a != self.keep.len() {
            candle_core::bail!(
                "{}: {} values for a mask of {}",
                self.name(),
                b - a,
                self.keep.len()
            );
        }
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(masked(&v[a..b], &self.keep, self.scale as f32)),
            CpuStorage::F64(v) => CpuStorage::F64(masked(&v[a..b], &self.keep, self.scale)),
            _ => candle_core::bail!("{}: expected f32 or f64", self.name()),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_mask_and_rate_near_p() {
        let x = Tensor::ones((64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let rng = DropoutRng::new(3);
        let a = rng.dropout(&x, 0.25).unwrap();
        rng.reseed(3);
        let b = rng.dropout(&x, 0.25).unwrap();
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        // kept values are scaled by 1/(1-p); the dropped fraction is ~p
        // (4096 draws: standard error 0.0068, so 0.03 is over 4 of them)
        let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "{dropped}");
        assert!(a
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        // a different seed gives a different mask
        rng.reseed(4);
        let c = rng.dropout(&x, 0.25).unwrap();
        assert_ne!(a, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}

#[cfg(test)]
mod op_tests {
    use super::*;
    use candle_core::Var;

    /// The fused CPU op equals the composed form bit for bit, value and gradient.
    #[test]
    fn fused_dropout_equals_composed() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 7), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 5, 7), &dev).unwrap();
        let rng = DropoutRng::new(11);
        let run = |fused: bool| {
            rng.reseed(11);
            let y = if fused {
                rng.dropout(x.as_tensor(), 0.3).unwrap()
            } else {
                rng.dropout_composed(x.as_tensor(), 0.3).unwrap()
            };
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            (bits(&y), bits(g.get(x.as_tensor()).unwrap()))
        };
        let (fused, composed) = (run(true), run(false));
        assert_eq!(fused, composed);
        // and it drops something
        assert!(fused.0.iter().filter(|b| **b == 0).count() > 10);
    }
}
