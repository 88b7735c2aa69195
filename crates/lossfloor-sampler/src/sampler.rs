//! EDM's sampler (Karras et al. 2022, Algorithm 2): time steps and the Heun / Euler loop.

use candle_core::{DType, Tensor};

use crate::denoiser::Denoiser;
use crate::error::{Result, SamplerError};

/// ODE solver of [`sample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Solver {
    /// Second-order Heun (EDM's default): 2N − 1 denoiser evaluations.
    #[default]
    Heun,
    /// First-order Euler: N evaluations.
    Euler,
}

/// Settings of [`sample`], with EDM's defaults (`edm_sampler` in `generate.py`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeunConfig {
    /// N, number of time steps (18); at least 1.
    pub num_steps: usize,
    /// σ_min (0.002); clamped up to the denoiser's `sigma_min`.
    pub sigma_min: f64,
    /// σ_max (80); clamped down to the denoiser's `sigma_max`.
    pub sigma_max: f64,
    /// ρ of the time-step schedule (7).
    pub rho: f64,
    /// S_churn (0 = deterministic sampling).
    pub s_churn: f64,
    /// S_min (0): churn is added only where S_min ≤ t_i ≤ S_max.
    pub s_min: f64,
    /// S_max (∞).
    pub s_max: f64,
    /// S_noise (1): scale of the churn noise.
    pub s_noise: f64,
    /// Heun (default) or Euler.
    pub solver: Solver,
}

impl Default for HeunConfig {
    fn default() -> Self {
        Self {
            num_steps: 18,
            sigma_min: 0.002,
            sigma_max: 80.0,
            rho: 7.0,
            s_churn: 0.0,
            s_min: 0.0,
            s_max: f64::INFINITY,
            s_noise: 1.0,
            solver: Solver::Heun,
        }
    }
}

impl HeunConfig {
    /// Checks the settings: `num_steps ≥ 1`, `0 < sigma_min < sigma_max < ∞`,
    /// `0 < rho < ∞`, `0 ≤ s_churn < ∞`, `0 ≤ s_min ≤ s_max` (s_max may be ∞),
    /// `0 ≤ s_noise < ∞`.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(SamplerError::Config(m));
        if self.num_steps < 1 {
            return err("num_steps must be at least 1".into());
        }
        if !(self.sigma_min.is_finite() && self.sigma_min > 0.0) {
            return err(format!(
                "sigma_min must be finite and > 0, got {}",
                self.sigma_min
            ));
        }
        if !(self.sigma_max.is_finite() && self.sigma_max > self.sigma_min) {
            return err(format!(
                "sigma_max must be finite and > sigma_min = {}, got {}",
                self.sigma_min, self.sigma_max
            ));
        }
        if !(self.rho.is_finite() && self.rho > 0.0) {
            return err(format!("rho must be finite and > 0, got {}", self.rho));
        }
        if !(self.s_churn.is_finite() && self.s_churn >= 0.0) {
            return err(format!(
                "s_churn must be finite and >= 0, got {}",
                self.s_churn
            ));
        }
        if !(self.s_min >= 0.0 && self.s_min.is_finite()) {
            return err(format!("s_min must be finite and >= 0, got {}", self.s_min));
        }
        if self.s_max.is_nan() || self.s_max < self.s_min {
            return err(format!(
                "s_max must be >= s_min = {}, got {}",
                self.s_min, self.s_max
            ));
        }
        if !(self.s_noise.is_finite() && self.s_noise >= 0.0) {
            return err(format!(
                "s_noise must be finite and >= 0, got {}",
                self.s_noise
            ));
        }
        Ok(())
    }

    /// Number of denoiser evaluations of [`sample`]: 2N − 1 for Heun, N for Euler.
    pub fn nfe(&self) -> usize {
        match self.solver {
            Solver::Heun => 2 * self.num_steps - 1,
            Solver::Euler => self.num_steps,
        }
    }
}

/// EDM's time steps t_0 > … > t_{N−1} > t_N = 0, in float64:
/// t_i = round_sigma((σmax^(1/ρ) + i/(N−1)·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ) for i < N, with
/// σmin, σmax first clamped to the denoiser's range.  For N = 1 (where EDM's formula is
/// 0/0) the single step is t_0 = σmax.  Returns N + 1 values.
pub fn edm_time_steps(cfg: &HeunConfig, denoiser: &dyn Denoiser) -> Result<Vec<f64>> {
    cfg.validate()?;
    let sigma_min = cfg.sigma_min.max(denoiser.sigma_min());
    let sigma_max = cfg.sigma_max.min(denoiser.sigma_max());
    if !(sigma_min > 0.0 && sigma_max > sigma_min) {
        return Err(SamplerError::Config(format!(
            "sigma range [{}, {}] is empty after clamping to the denoiser's range [{}, {}]",
            cfg.sigma_min,
            cfg.sigma_max,
            denoiser.sigma_min(),
            denoiser.sigma_max()
        )));
    }
    let n = cfg.num_steps;
    let inv_rho = 1.0 / cfg.rho;
    let a = sigma_max.powf(inv_rho);
    let b = sigma_min.powf(inv_rho);
    let mut t: Vec<f64> = (0..n)
        .map(|i| {
            let frac = if n == 1 {
                0.0
            } else {
                i as f64 / (n - 1) as f64
            };
            denoiser.round_sigma((a + frac * (b - a)).powf(cfg.rho))
        })
        .collect();
    t.push(0.0);
    Ok(t)
}

/// Churn γ_i of step i: min(S_churn/N, √2 − 1) where S_min ≤ t_i ≤ S_max, else 0.
pub fn churn_gamma(cfg: &HeunConfig, t_cur: f64) -> f64 {
    if cfg.s_min <= t_cur && t_cur <= cfg.s_max {
        (cfg.s_churn / cfg.num_steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
    } else {
        0.0
    }
}

fn check_shape(what: &str, t: &Tensor, dims: &[usize]) -> Result<()> {
    if t.dims() != dims {
        return Err(SamplerError::Shape {
            what: what.to_string(),
            found: t.dims().to_vec(),
            expected: format!("{dims:?}"),
        });
    }
    Ok(())
}

/// Runs `f` inside the profiler's [`Category::Heun`](lossfloor_ops::profile::Category) scope.
fn heun_scope<R>(f: impl FnOnce() -> R) -> R {
    let _prof = lossfloor_ops::profile::scope(lossfloor_ops::profile::Category::Heun);
    f()
}

fn call_denoiser(
    denoiser: &dyn Denoiser,
    x: &Tensor,
    sigma: f64,
    class_labels: Option<&Tensor>,
) -> Result<Tensor> {
    let x32 = heun_scope(|| x.to_dtype(DType::F32))?;
    let d = denoiser.denoise(&x32, sigma, class_labels)?;
    check_shape("denoiser output", &d, x.dims())?;
    Ok(heun_scope(|| d.to_dtype(DType::F64))?)
}

/// EDM's Algorithm 2 (`edm_sampler`): deterministic (S_churn = 0) or stochastic sampling
/// of the probability-flow ODE from σ = t_0 to 0.
///
/// - `latents`: `[N, C, H, W]` standard-normal noise (any float dtype); x_0 = latents·t_0.
/// - `class_labels`: passed unchanged to the denoiser (`[N, num_classes]` one-hot).
/// - `noise(shape)`: standard-normal churn noise ε_i of `shape` (= latents' shape); it is
///   called once per step in which the noise level is actually raised (t̂_i > t_i), so a
///   deterministic run never calls it.  [`crate::SeedRng::randn_like`] draws it per image.
///
/// Per step i: γ = [`churn_gamma`], t̂ = round_sigma(t_i + γ t_i),
/// x̂ = x_i + √(t̂² − t_i²)·S_noise·ε, d = (x̂ − D(x̂; t̂))/t̂, x_{i+1} = x̂ + (t_{i+1} − t̂) d,
/// and for Heun, if i < N − 1, d' = (x_{i+1} − D(x_{i+1}; t_{i+1}))/t_{i+1},
/// x_{i+1} = x̂ + (t_{i+1} − t̂)(½d + ½d').
///
/// As in EDM, the state x is kept in float64 (on the latents' device) and cast to
/// float32 only for the denoiser; σ is passed in float64.  Returns x_N as f32.
///
/// On the CPU the per-step arithmetic runs as the fused passes of [`crate::fused`] (for a
/// preconditioned denoiser, c_in·x and D = c_skip·x + c_out·F included), with the same
/// results to the bit as [`sample_composed`], which any other device uses.
pub fn sample(
    denoiser: &dyn Denoiser,
    latents: &Tensor,
    class_labels: Option<&Tensor>,
    cfg: &HeunConfig,
    noise: &mut dyn FnMut(&[usize]) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    if latents.device().is_cpu() {
        sample_fused(denoiser, latents, class_labels, cfg, noise)
    } else {
        sample_composed(denoiser, latents, class_labels, cfg, noise)
    }
}

fn check_latents(latents: &Tensor) -> Result<()> {
    if latents.rank() != 4 {
        return Err(SamplerError::Shape {
            what: "latents".into(),
            found: latents.dims().to_vec(),
            expected: "[N, C, H, W]".into(),
        });
    }
    Ok(())
}

/// One evaluation's output: the raw network output F with (c_skip, c_out) for a
/// preconditioned denoiser, or D itself with `None`.
type Evaluation = (Vec<f32>, Option<(f64, f64)>);

/// One denoiser evaluation of [`sample_fused`] at x (float64, on the CPU), with the
/// network input formed from x by `x_in` when it is already known. Returns where the
/// pass finds D: the raw output F (for a preconditioned denoiser) or D.
fn evaluate(
    denoiser: &dyn Denoiser,
    x: &[f64],
    x_in: Option<Vec<f32>>,
    sigma: f64,
    shape: &[usize],
    class_labels: Option<&Tensor>,
) -> Result<Evaluation> {
    let dev = candle_core::Device::Cpu;
    let out = match denoiser.preconditioned() {
        Some(p) => {
            let c = p.precond(sigma);
            let x_in =
                x_in.unwrap_or_else(|| heun_scope(|| crate::fused::network_inputs(x, c.c_in)));
            let f = p.raw(
                &Tensor::from_vec(x_in, shape, &dev)?,
                c.c_noise,
                class_labels,
            )?;
            check_shape("network output", &f, shape)?;
            (f, Some((c.c_skip, c.c_out)))
        }
        None => {
            let x32 = heun_scope(|| x.iter().map(|&v| v as f32).collect::<Vec<f32>>());
            let d = denoiser.denoise(&Tensor::from_vec(x32, shape, &dev)?, sigma, class_labels)?;
            check_shape("denoiser output", &d, shape)?;
            (d, None)
        }
    };
    let v = out
        .0
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((v, out.1))
}

/// [`sample`] on the CPU with the sampler's arithmetic in the fused passes of
/// [`crate::fused`]: per Heun step one pass for the Euler step (which also forms the next
/// network input) and one for the correction.
fn sample_fused(
    denoiser: &dyn Denoiser,
    latents: &Tensor,
    class_labels: Option<&Tensor>,
    cfg: &HeunConfig,
    noise: &mut dyn FnMut(&[usize]) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    use crate::fused::{churn_pass, euler_pass, heun_pass, Denoised};
    check_latents(latents)?;
    let t_steps = edm_time_steps(cfg, denoiser)?;
    let n = cfg.num_steps;
    let shape = latents.dims().to_vec();
    let len = latents.elem_count();
    let mut x_next: Vec<f64> = latents
        .to_dtype(DType::F64)?
        .affine(t_steps[0], 0.0)?
        .flatten_all()?
        .to_vec1()?;
    let (mut d, mut x_hat_buf) = (vec![0f64; len], vec![0f64; len]);
    for i in 0..n {
        let t_cur = t_steps[i];
        let t_next = t_steps[i + 1];
        // x̂ = x_i (+ churn): x_next becomes x̂, and its buffer is reused for x_{i+1}.
        std::mem::swap(&mut x_hat_buf, &mut x_next);
        let x_hat = &mut x_hat_buf;
        let gamma = churn_gamma(cfg, t_cur);
        let t_hat = denoiser.round_sigma(t_cur + gamma * t_cur);
        if t_hat > t_cur {
            let eps = noise(&shape)?;
            check_shape("churn noise", &eps, &shape)?;
            let eps: Vec<f64> = eps.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            let scale = (t_hat * t_hat - t_cur * t_cur).sqrt() * cfg.s_noise;
            heun_scope(|| churn_pass(x_hat, &eps, scale));
        }
        let x_hat: &[f64] = x_hat;

        // Euler step.
        let (den, coef) = evaluate(denoiser, x_hat, None, t_hat, &shape, class_labels)?;
        let second = cfg.solver == Solver::Heun && i < n - 1;
        let next_c_in = match (second, denoiser.preconditioned()) {
            (true, Some(p)) => Some(p.precond(t_next).c_in),
            _ => None,
        };
        let den = match coef {
            Some((c_skip, c_out)) => Denoised::Raw(&den, c_skip, c_out),
            None => Denoised::Direct(&den),
        };
        let x_in =
            heun_scope(|| euler_pass(x_hat, den, (t_hat, t_next), &mut d, &mut x_next, next_c_in));

        // Second-order correction.
        if second {
            let (den, coef) = evaluate(denoiser, &x_next, x_in, t_next, &shape, class_labels)?;
            let den = match coef {
                Some((c_skip, c_out)) => Denoised::Raw(&den, c_skip, c_out),
                None => Denoised::Direct(&den),
            };
            heun_scope(|| heun_pass(x_hat, &d, den, (t_hat, t_next), &mut x_next));
        }
    }
    let out: Vec<f32> = x_next.iter().map(|&v| v as f32).collect();
    Ok(Tensor::from_vec(out, shape, latents.device())?)
}

/// [`sample`] composed of candle ops on the latents' device: the reference form of the
/// sampler, used on devices other than the CPU.
pub fn sample_composed(
    denoiser: &dyn Denoiser,
    latents: &Tensor,
    class_labels: Option<&Tensor>,
    cfg: &HeunConfig,
    noise: &mut dyn FnMut(&[usize]) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    if latents.rank() != 4 {
        return Err(SamplerError::Shape {
            what: "latents".into(),
            found: latents.dims().to_vec(),
            expected: "[N, C, H, W]".into(),
        });
    }
    let t_steps = edm_time_steps(cfg, denoiser)?;
    let n = cfg.num_steps;
    let shape = latents.dims().to_vec();
    let mut x_next = latents.to_dtype(DType::F64)?.affine(t_steps[0], 0.0)?;
    for i in 0..n {
        let x_cur = x_next;
        let t_cur = t_steps[i];
        let t_next = t_steps[i + 1];

        // Increase the noise level temporarily.
        let gamma = churn_gamma(cfg, t_cur);
        let t_hat = denoiser.round_sigma(t_cur + gamma * t_cur);
        let x_hat = if t_hat > t_cur {
            let eps = noise(&shape)?;
            check_shape("churn noise", &eps, &shape)?;
            let scale = (t_hat * t_hat - t_cur * t_cur).sqrt() * cfg.s_noise;
            (&x_cur + eps.to_dtype(DType::F64)?.affine(scale, 0.0)?)?
        } else {
            x_cur
        };

        // Euler step.
        let denoised = call_denoiser(denoiser, &x_hat, t_hat, class_labels)?;
        let d_cur = heun_scope(|| (&x_hat - denoised)? / t_hat)?;
        x_next = heun_scope(|| &x_hat + d_cur.affine(t_next - t_hat, 0.0)?)?;

        // Second-order correction.
        if cfg.solver == Solver::Heun && i < n - 1 {
            let denoised = call_denoiser(denoiser, &x_next, t_next, class_labels)?;
            x_next = heun_scope(|| {
                let d_prime = ((&x_next - denoised)? / t_next)?;
                let slope = (d_cur.affine(0.5, 0.0)? + d_prime.affine(0.5, 0.0)?)?;
                &x_hat + slope.affine(t_next - t_hat, 0.0)?
            })?;
        }
    }
    Ok(x_next.to_dtype(DType::F32)?)
}
