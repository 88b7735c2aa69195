//! The effective weight of a training recipe per noise level: how much of the training
//! objective each σ̂ gets once the sampling density and the loss weight are combined.
//!
//! A recipe draws ln σ̂ from a density q and multiplies the draw's ‖D − x0‖² by w(σ̂), so
//! its expected loss is ∫ q(ln σ̂)·w(σ̂)·J_σ̂(θ) d ln σ̂. The effective weight density
//!
//! ```text
//! ρ(ln σ̂) = q(ln σ̂)·w(σ̂) / ∫ q·w d ln σ̂
//! ```
//!
//! is what a draw at σ̂ contributes per unit of per-dimension loss. For EDM, q is the
//! log-normal N(P_mean, P_std²) and w = λ = (σ̂² + σ_d²)/(σ̂σ_d)²; for the optimal-loss
//! schedule q = mix·q_native + (1 − mix)·hist(p ∝ w·gap) and w = a·min(1/J*, w_max) + bump,
//! so a bin's effective weight goes as w²·gap (Reviewer 2's point, docs/optimal-loss.md).
//! [`floor_share`] weights ρ further by J*(σ̂): the share of the objective's irreducible
//! part each region carries.

use lossfloor_core::{NoiseDistribution, Process};

use crate::schedule::{AdaptiveSchedule, OptimalWeight};

/// `k` points log-spaced over [lo, hi], returned as ln σ̂.
pub fn ln_grid(lo: f64, hi: f64, k: usize) -> Vec<f64> {
    let (a, b) = (lo.ln(), hi.ln());
    (0..k)
        .map(|i| a + (b - a) * i as f64 / (k.max(2) - 1) as f64)
        .collect()
}

/// ∫ f d ln σ̂ over the grid by the trapezoid rule.
pub fn trapezoid(ln_sigmas: &[f64], f: &[f64]) -> f64 {
    ln_sigmas
        .windows(2)
        .zip(f.windows(2))
        .map(|(x, y)| 0.5 * (x[1] - x[0]) * (y[0] + y[1]))
        .sum()
}

/// ρ(ln σ̂) = q·w / ∫ q·w at each grid point (trapezoid normalisation over the grid).
pub fn effective_weight_density(
    ln_sigmas: &[f64],
    q: impl Fn(f64) -> f64,
    w: impl Fn(f64) -> f64,
) -> Vec<f64> {
    let raw: Vec<f64> = ln_sigmas.iter().map(|&l| q(l) * w(l.exp())).collect();
    let z = trapezoid(ln_sigmas, &raw);
    raw.iter().map(|r| r / z).collect()
}

/// The sampling density q(ln σ̂) and weight w(σ̂) of a recipe.
pub enum Recipe<'a> {
    /// The process's own density and λ(σ̂).
    Native(&'a dyn Process),
    /// The optimal-loss schedule with its current histogram, mixed with the native
    /// density, and w(σ̂) of the schedule.
    Adaptive {
        native: &'a NoiseDistribution,
        schedule: &'a AdaptiveSchedule,
    },
    /// Native density, optimal-loss weight (`loss.weight = "optimal-loss"`, native p).
    NativeWithOptimalWeight {
        native: &'a NoiseDistribution,
        weight: &'a OptimalWeight,
    },
}

impl Recipe<'_> {
    /// q(ln σ̂).
    pub fn density(&self, ln_s: f64) -> f64 {
        match self {
            Recipe::Native(p) => p.noise().density_ln_sigma(ln_s),
            Recipe::Adaptive { native, schedule } => schedule.density_ln_sigma(native, ln_s),
            Recipe::NativeWithOptimalWeight { native, .. } => native.density_ln_sigma(ln_s),
        }
    }

    /// w(σ̂).
    pub fn weight(&self, sigma: f64) -> f64 {
        match self {
            Recipe::Native(p) => p.loss_weight(sigma),
            Recipe::Adaptive { schedule, .. } => schedule.weight.weight(sigma),
            Recipe::NativeWithOptimalWeight { weight, .. } => weight.weight(sigma),
        }
    }

    /// ρ on the grid.
    pub fn density_of_weight(&self, ln_sigmas: &[f64]) -> Vec<f64> {
        effective_weight_density(ln_sigmas, |l| self.density(l), |s| self.weight(s))
    }
}

/// The share of ∫ρ·J* carried by each grid point's neighbourhood, normalised: the part of
/// the objective's floor each σ̂ is weighted with.
pub fn floor_share(ln_sigmas: &[f64], rho: &[f64], jstar: impl Fn(f64) -> f64) -> Vec<f64> {
    let raw: Vec<f64> = ln_sigmas
        .iter()
        .zip(rho)
        .map(|(l, r)| r * jstar(l.exp()))
        .collect();
    let z = trapezoid(ln_sigmas, &raw);
    raw.iter().map(|r| r / z).collect()
}

/// ∫ f d ln σ̂ over σ̂ in [lo, hi], with f linear between grid points (the trapezoid rule
/// clipped to the interval).
pub fn mass_between(ln_sigmas: &[f64], f: &[f64], lo: f64, hi: f64) -> f64 {
    let (a, b) = (lo.ln(), hi.ln());
    let mut total = 0.0;
    for (x, y) in ln_sigmas.windows(2).zip(f.windows(2)) {
        let (l, r) = (x[0].max(a), x[1].min(b));
        if r <= l {
            continue;
        }
        let at = |t: f64| y[0] + (y[1] - y[0]) * (t - x[0]) / (x[1] - x[0]);
        total += 0.5 * (r - l) * (at(l) + at(r));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_weight_leaves_the_density_unchanged() {
        let g = ln_grid(1e-4, 1e4, 4001);
        let q = |l: f64| {
            (-(l + 1.2f64).powi(2) / (2.0 * 1.44)).exp()
                / (1.2 * (2.0 * std::f64::consts::PI).sqrt())
        };
        let rho = effective_weight_density(&g, q, |_| 7.0);
        for (l, r) in g.iter().zip(&rho) {
            assert!((r - q(*l)).abs() < 1e-6, "{l}: {r} vs {}", q(*l));
        }
        assert!((trapezoid(&g, &rho) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn weight_proportional_to_sigma_squared_shifts_a_log_normal_by_two_variances() {
        // q = N(ln σ; μ, s²), w = σ² = e^{2 ln σ}: q·w ∝ N(ln σ; μ + 2s², s²).
        let (mu, s) = (-1.2f64, 1.2f64);
        let g = ln_grid(1e-6, 1e6, 6001);
        let q = |l: f64| (-(l - mu).powi(2) / (2.0 * s * s)).exp();
        let rho = effective_weight_density(&g, q, |sig| sig * sig);
        let mean = trapezoid(
            &g,
            &g.iter().zip(&rho).map(|(l, r)| l * r).collect::<Vec<_>>(),
        );
        assert!((mean - (mu + 2.0 * s * s)).abs() < 1e-6, "{mean}");
        let below = mass_between(&g, &rho, 1e-6, (mu + 2.0 * s * s).exp());
        assert!((below - 0.5).abs() < 1e-6, "{below}");
    }
}
