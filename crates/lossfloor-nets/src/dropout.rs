//! Seeded dropout, so that training is reproducible bit for bit.
//!
//! candle's `ops::dropout` and `Tensor::rand` draw from an unseeded thread RNG on the
//! CPU, so two runs of the same training step (or a run resumed from a checkpoint)
//! would drop different activations. Every network therefore owns a [`DropoutRng`];
//! the trainer reseeds it before each forward pass from the run seed, the step and the
//! accumulation round, and the masks are drawn in the fixed order of the forward pass.

use std::sync::Mutex;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// The source of a network's dropout masks: a ChaCha8 stream on the host, from which
/// each dropout call draws one key (the mask itself is computed on the device) and label or
/// class dropout draws its few uniforms.
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
    /// One 64-bit key is drawn from the stream per call (so masks follow the forward pass's
    /// order and the seed); the mask is a function of that key and the element index
    /// ([`lossfloor_ops::dropout`]), computed on the tensor's device and recomputed in the
    /// backward pass rather than stored.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let key = self.lock().random::<u64>();
        Ok(lossfloor_ops::dropout(x, key, p)?)
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
