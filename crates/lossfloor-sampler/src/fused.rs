//! The sampler's per-step arithmetic on the CPU in single parallel passes over plain
//! buffers: preconditioning (c_in, c_skip, c_out), the Euler step and Heun's correction.
//!
//! Composed of candle ops ([`crate::sampler::sample_composed`]) one Heun step is about
//! twenty passes over the batch, each allocating its output, most on one thread. Here each
//! of the equations below is one function on scalars, and each pass applies a few of them
//! to every element at once. Every scalar operation is the one candle performs, in the same
//! order and precision (a division by t is a multiplication by 1/t plus 0, as candle's
//! `affine`; the denoiser's arithmetic is float32, the state float64), so the fused sampler
//! gives the composed sampler's results to the bit.

use rayon::prelude::*;

/// Elements per parallel task: large enough that a task's overhead is negligible.
const CHUNK: usize = 1 << 14;

/// candle's `affine(mul, add)` of one element: v·mul + add (no fused multiply-add).
#[inline(always)]
fn affine64(v: f64, mul: f64, add: f64) -> f64 {
    v * mul + add
}

/// The network input of one element: c_in·x̂ in float32 (x̂ cast first, as EDM's
/// preconditioner does; c_in rounded to float32).
#[inline(always)]
pub fn network_input(x: f64, c_in: f64) -> f32 {
    (x as f32) * (c_in as f32) + 0.0
}

/// The preconditioned denoiser output of one element,
/// D = c_skip·x̂ + c_out·F, in float32 (x̂ cast to float32, the coefficients rounded to it).
#[inline(always)]
pub fn precond_output(x: f64, f: f32, c_skip: f64, c_out: f64) -> f32 {
    ((x as f32) * (c_skip as f32) + 0.0) + (f * (c_out as f32) + 0.0)
}

/// The ODE's slope at (x̂, t̂): d = (x̂ − D)/t̂ (computed as (x̂ − D)·(1/t̂)).
#[inline(always)]
pub fn slope(x_hat: f64, denoised: f32, t: f64) -> f64 {
    affine64(x_hat - denoised as f64, 1.0 / t, 0.0)
}

/// The Euler step x_{i+1} = x̂ + (t_{i+1} − t̂)·d.
#[inline(always)]
pub fn euler_update(x_hat: f64, d: f64, t_hat: f64, t_next: f64) -> f64 {
    x_hat + affine64(d, t_next - t_hat, 0.0)
}

/// Heun's correction x_{i+1} = x̂ + (t_{i+1} − t̂)·(½d + ½d').
#[inline(always)]
pub fn heun_update(x_hat: f64, d: f64, d_prime: f64, t_hat: f64, t_next: f64) -> f64 {
    let avg = affine64(d, 0.5, 0.0) + affine64(d_prime, 0.5, 0.0);
    x_hat + affine64(avg, t_next - t_hat, 0.0)
}

/// The churn step x̂ = x_i + s·ε with s = √(t̂² − t_i²)·S_noise.
#[inline(always)]
pub fn churn(x: f64, eps: f64, scale: f64) -> f64 {
    x + affine64(eps, scale, 0.0)
}

/// Where a pass finds D(x̂): the raw network output F with the preconditioning's c_skip and
/// c_out (D formed in the pass), or D itself.
#[derive(Clone, Copy)]
pub enum Denoised<'a> {
    /// F and (c_skip, c_out): D = [`precond_output`].
    Raw(&'a [f32], f64, f64),
    /// D.
    Direct(&'a [f32]),
}

impl Denoised<'_> {
    fn len(&self) -> usize {
        match self {
            Denoised::Raw(f, ..) => f.len(),
            Denoised::Direct(d) => d.len(),
        }
    }

    /// D at element `i` (offset `base` into the buffer) given x̂ there.
    #[inline(always)]
    fn at(&self, i: usize, x: f64) -> f32 {
        match *self {
            Denoised::Raw(f, c_skip, c_out) => precond_output(x, f[i], c_skip, c_out),
            Denoised::Direct(d) => d[i],
        }
    }
}

/// One parallel task's slices of d and x_{i+1}, and of the next network input if formed.
type EulerChunk<'a> = ((&'a mut [f64], &'a mut [f64]), Option<&'a mut [f32]>);

/// x_in = [`network_input`](x, c_in) for every element.
pub fn network_inputs(x: &[f64], c_in: f64) -> Vec<f32> {
    x.par_iter().map(|&v| network_input(v, c_in)).collect()
}

/// One pass of the Euler step: d = [`slope`](x̂, D, t̂) into `d` and
/// x_{i+1} = [`euler_update`] into `x_next`; when `next_c_in` is given, also the next
/// evaluation's network input [`network_input`](x_{i+1}, c_in) (returned).
pub fn euler_pass(
    x_hat: &[f64],
    den: Denoised,
    (t_hat, t_next): (f64, f64),
    d: &mut [f64],
    x_next: &mut [f64],
    next_c_in: Option<f64>,
) -> Option<Vec<f32>> {
    assert!(den.len() == x_hat.len() && d.len() == x_hat.len() && x_next.len() == x_hat.len());
    let mut x_in = next_c_in.map(|_| vec![0f32; x_hat.len()]);
    let c_in = next_c_in.unwrap_or(1.0);
    let body = |(k, ((d, xn), xi)): (usize, EulerChunk)| {
        let base = k * CHUNK;
        for j in 0..d.len() {
            let x = x_hat[base + j];
            d[j] = slope(x, den.at(base + j, x), t_hat);
            xn[j] = euler_update(x, d[j], t_hat, t_next);
        }
        if let Some(xi) = xi {
            for (o, &v) in xi.iter_mut().zip(xn.iter()) {
                *o = network_input(v, c_in);
            }
        }
    };
    match &mut x_in {
        Some(xi) => d
            .par_chunks_mut(CHUNK)
            .zip(x_next.par_chunks_mut(CHUNK))
            .zip(xi.par_chunks_mut(CHUNK).map(Some))
            .enumerate()
            .for_each(body),
        None => d
            .par_chunks_mut(CHUNK)
            .zip(x_next.par_chunks_mut(CHUNK))
            .map(|p| (p, None))
            .enumerate()
            .for_each(body),
    }
    x_in
}

/// One pass of Heun's correction: with D' = D(x_{i+1}; t_{i+1}), d' = [`slope`] and
/// x_{i+1} ← [`heun_update`](x̂, d, d', t̂, t_{i+1}) in place.
pub fn heun_pass(
    x_hat: &[f64],
    d: &[f64],
    den: Denoised,
    (t_hat, t_next): (f64, f64),
    x_next: &mut [f64],
) {
    assert!(den.len() == x_hat.len() && d.len() == x_hat.len() && x_next.len() == x_hat.len());
    x_next
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(k, xn)| {
            let base = k * CHUNK;
            for (j, o) in xn.iter_mut().enumerate() {
                let x = *o;
                let d_prime = slope(x, den.at(base + j, x), t_next);
                *o = heun_update(x_hat[base + j], d[base + j], d_prime, t_hat, t_next);
            }
        });
}

/// x̂ = [`churn`](x_i, ε, scale) for every element, in place.
pub fn churn_pass(x: &mut [f64], eps: &[f64], scale: f64) {
    assert_eq!(x.len(), eps.len());
    x.par_iter_mut()
        .zip(eps.par_iter())
        .for_each(|(v, &e)| *v = churn(*v, e, scale));
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn data(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| (i as f64 * 0.37 + seed as f64).sin() * 3.0)
            .collect()
    }

    /// The fused passes against the same formulas composed of candle ops (as the composed
    /// sampler writes them), to the bit, over more elements than one chunk.
    #[test]
    fn passes_equal_candle_composition() {
        let dev = Device::Cpu;
        let n = CHUNK * 2 + 77;
        let (x_hat, fv) = (data(n, 1), data(n, 2));
        let f32s: Vec<f32> = fv.iter().map(|&v| v as f32).collect();
        let (t_hat, t_next, c_skip, c_out, c_in) = (2.5, 1.25, 0.3, 0.7, 0.41);
        let xt = Tensor::from_vec(x_hat.clone(), n, &dev).unwrap();
        let ft = Tensor::from_vec(f32s.clone(), n, &dev).unwrap();
        let x32 = xt.to_dtype(candle_core::DType::F32).unwrap();
        let den = (x32.affine(c_skip, 0.0).unwrap() + ft.affine(c_out, 0.0).unwrap())
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let d_ref = ((&xt - &den).unwrap() / t_hat).unwrap();
        let xn_ref = (&xt + d_ref.affine(t_next - t_hat, 0.0).unwrap()).unwrap();
        let xin_ref = xn_ref
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .affine(c_in, 0.0)
            .unwrap();
        let (mut d, mut xn) = (vec![0.0; n], vec![0.0; n]);
        let xin = euler_pass(
            &x_hat,
            Denoised::Raw(&f32s, c_skip, c_out),
            (t_hat, t_next),
            &mut d,
            &mut xn,
            Some(c_in),
        )
        .unwrap();
        assert_eq!(d, d_ref.to_vec1::<f64>().unwrap());
        assert_eq!(xn, xn_ref.to_vec1::<f64>().unwrap());
        assert_eq!(xin, xin_ref.to_vec1::<f32>().unwrap());

        // Heun's correction with a directly given D'.
        let den2: Vec<f32> = data(n, 3).iter().map(|&v| v as f32).collect();
        let den2_t = Tensor::from_vec(den2.clone(), n, &dev)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let d_prime = ((&xn_ref - den2_t).unwrap() / t_next).unwrap();
        let slope_t =
            (d_ref.affine(0.5, 0.0).unwrap() + d_prime.affine(0.5, 0.0).unwrap()).unwrap();
        let x2_ref = (&xt + slope_t.affine(t_next - t_hat, 0.0).unwrap()).unwrap();
        heun_pass(
            &x_hat,
            &d,
            Denoised::Direct(&den2),
            (t_hat, t_next),
            &mut xn,
        );
        assert_eq!(xn, x2_ref.to_vec1::<f64>().unwrap());
    }

    /// The scalar equations against their textbook forms (to round-off), so that a wrong
    /// coefficient or sign cannot hide behind the bit-exact comparison above.
    #[test]
    fn equations_match_their_formulas() {
        let (x, f, t_hat, t_next) = (1.7, -0.4f32, 3.0, 1.5);
        let (c_skip, c_out) = (0.2, 0.9);
        let den = precond_output(x, f, c_skip, c_out);
        assert!((den as f64 - (c_skip * x + c_out * f as f64)).abs() < 1e-6);
        let d = slope(x, den, t_hat);
        assert!((d - (x - den as f64) / t_hat).abs() < 1e-12);
        let xe = euler_update(x, d, t_hat, t_next);
        assert!((xe - (x + (t_next - t_hat) * d)).abs() < 1e-12);
        let xh = heun_update(x, d, 0.25, t_hat, t_next);
        assert!((xh - (x + (t_next - t_hat) * (d + 0.25) / 2.0)).abs() < 1e-12);
        assert!((churn(1.0, 2.0, 0.5) - 2.0).abs() < 1e-15);
        assert!((network_input(2.0, 0.25) - 0.5).abs() < 1e-7);
    }
}
