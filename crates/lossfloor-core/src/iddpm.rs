//! Improved DDPM (Nichol & Dhariwal 2021), cosine schedule, as in EDM's `iDDPMPrecond`.
//!
//! The network knows M discrete noise levels.  With ᾱ(j) = sin²(π/2 · j/(M(C2+1)))
//! (j = M is clean, j = 0 pure noise), the levels u_j (σ̂ values) are built from u_M = 0 by
//! u_{j−1} = √((u_j² + 1)/max(ᾱ(j−1)/ᾱ(j), C1) − 1), j = M…1.  The clamp C1 acts only at
//! j = 1 (ᾱ(0) = 0), so u_j = √(ᾱ(M)/ᾱ(j) − 1) for j ≥ 1 and u_0 = √((u_1²+1)/C1 − 1).
//! Defaults (C1 = 0.001, C2 = 0.008, M = 1000) give u_{M−1} ≈ 0.006425, u_1 ≈ 641.66 and
//! u_0 ≈ 20291.17 (EDM's samplers clamp σ_max to 80; the grid itself goes much higher).

use crate::noise::NoiseDistribution;
use crate::precond::Precond;
use crate::process::{vp_alpha, vp_sigma, Process, ProcessKind};
use crate::target::Target;

/// Cosine schedule ᾱ(j) = sin²(π/2 · j / (M (C2 + 1))).
pub fn iddpm_alpha_bar(c2: f64, m: usize, j: f64) -> f64 {
    (0.5 * std::f64::consts::PI * j / (m as f64 * (c2 + 1.0)))
        .sin()
        .powi(2)
}

/// The M+1 levels u_0 > u_1 > … > u_{M−1} > u_M = 0 from the recursion
/// u_{j−1} = √((u_j² + 1)/max(ᾱ(j−1)/ᾱ(j), C1) − 1), u_M = 0.
pub fn iddpm_sigma_grid(c1: f64, c2: f64, m: usize) -> Vec<f64> {
    let mut u = vec![0.0; m + 1];
    for j in (1..=m).rev() {
        let ratio = iddpm_alpha_bar(c2, m, (j - 1) as f64) / iddpm_alpha_bar(c2, m, j as f64);
        u[j - 1] = ((u[j] * u[j] + 1.0) / ratio.max(c1) - 1.0).sqrt();
    }
    u
}

/// iDDPM: C1 = 0.001, C2 = 0.008, M = 1000 by default.
///
/// Time variable: the DDPM timestep τ ∈ [0, M−1] (τ = 0 least noisy), σ̂(τ) = u_{M−1−τ}
/// at integers and log-linear interpolation between them; α = 1/√(1+σ̂²) (variance
/// preserving).  Preconditioning: c_skip = 1, c_out = −σ̂, c_in = 1/√(σ̂²+1),
/// c_noise = M − 1 − argmin_j |u_j − σ̂| (j over 0…M−1).  `round_sigma` snaps σ̂ to
/// the nearest u_j, j ∈ 0…M−1 (EDM also lists u_M = 0; it is left out here so that
/// c_noise ≥ 0).  Training: σ̂ uniform over the M levels u_0…u_{M−1} (the discrete
/// analogue of DDPM's t ~ U{0…M−1}); weight 1/σ̂²; native target ε.
#[derive(Debug, Clone, PartialEq)]
pub struct Iddpm {
    c1: f64,
    c2: f64,
    m: usize,
    /// u_0 … u_M (u_M = 0), decreasing
    u: Vec<f64>,
    noise: NoiseDistribution,
}

impl Iddpm {
    pub const C1: f64 = 0.001;
    pub const C2: f64 = 0.008;
    pub const M: usize = 1000;

    /// iDDPM with clamp C1, cosine offset C2 and M ≥ 2 levels.
    pub fn new(c1: f64, c2: f64, m: usize) -> Self {
        assert!(m >= 2, "iDDPM needs M >= 2");
        let u = iddpm_sigma_grid(c1, c2, m);
        let noise = NoiseDistribution::Discrete {
            sigmas: u[..m].to_vec(),
        };
        Iddpm {
            c1,
            c2,
            m,
            u,
            noise,
        }
    }
    pub fn c1(&self) -> f64 {
        self.c1
    }
    pub fn c2(&self) -> f64 {
        self.c2
    }
    pub fn m(&self) -> usize {
        self.m
    }
    /// The grid u_0 … u_M (length M+1, decreasing, u_M = 0).
    pub fn grid(&self) -> &[f64] {
        &self.u
    }

    /// argmin_j |u_j − σ̂| over j ∈ 0…M−1 (the first j on a tie, as torch's argmin).
    pub fn grid_index(&self, sigma_hat: f64) -> usize {
        let u = &self.u[..self.m];
        // u is decreasing: first index with u_j <= σ̂
        let k = u.partition_point(|x| *x > sigma_hat);
        if k == 0 {
            0
        } else if k == u.len() {
            u.len() - 1
        } else if (u[k - 1] - sigma_hat).abs() <= (sigma_hat - u[k]).abs() {
            k - 1
        } else {
            k
        }
    }

    /// σ̂ at timestep τ = M−1−j, i.e. u_j (τ must be an integer in 0…M−1 for a grid value).
    fn level_of_timestep(&self, tau: usize) -> f64 {
        self.u[self.m - 1 - tau]
    }
}

impl Default for Iddpm {
    fn default() -> Self {
        Iddpm::new(Self::C1, Self::C2, Self::M)
    }
}

impl Process for Iddpm {
    fn name(&self) -> &str {
        "iddpm"
    }
    fn kind(&self) -> ProcessKind {
        ProcessKind::Iddpm
    }
    fn alpha(&self, t: f64) -> f64 {
        vp_alpha(self.sigma_hat(t))
    }
    fn sigma(&self, t: f64) -> f64 {
        vp_sigma(self.sigma_hat(t))
    }
    /// σ̂(τ) = exp((1−f) ln u_{M−1−k} + f ln u_{M−2−k}), k = ⌊τ⌋, f = τ − k
    /// (τ clamped to [0, M−1]).
    fn sigma_hat(&self, t: f64) -> f64 {
        let top = (self.m - 1) as f64;
        let tau = t.clamp(0.0, top);
        let k = (tau.floor() as usize).min(self.m - 2);
        let f = tau - k as f64;
        let (a, b) = (self.level_of_timestep(k), self.level_of_timestep(k + 1));
        ((1.0 - f) * a.ln() + f * b.ln()).exp()
    }
    /// Inverse of the log-linear interpolation (σ̂ clamped to [u_{M−1}, u_0]).
    fn t_of_sigma_hat(&self, sigma_hat: f64) -> f64 {
        let (lo, hi) = self.sigma_hat_range();
        let s = sigma_hat.clamp(lo, hi);
        // timestep-ordered levels g[τ] = u_{M−1−τ} are increasing
        let idx = self.u[..self.m].partition_point(|x| *x > s); // first j with u_j <= s
        let j = idx.clamp(1, self.m - 1); // bracket u_j <= s <= u_{j−1}
        let k = self.m - 1 - j;
        let (a, b) = (self.u[j], self.u[j - 1]);
        k as f64 + (s.ln() - a.ln()) / (b.ln() - a.ln())
    }
    fn t_range(&self) -> (f64, f64) {
        (0.0, (self.m - 1) as f64)
    }
    fn precond(&self, sigma_hat: f64) -> Precond {
        Precond {
            c_skip: 1.0,
            c_out: -sigma_hat,
            c_in: 1.0 / (sigma_hat * sigma_hat + 1.0).sqrt(),
            c_noise: (self.m - 1 - self.grid_index(sigma_hat)) as f64,
        }
    }
    fn loss_weight(&self, sigma_hat: f64) -> f64 {
        1.0 / (sigma_hat * sigma_hat)
    }
    fn noise(&self) -> &NoiseDistribution {
        &self.noise
    }
    fn native_target(&self) -> Target {
        Target::Eps
    }
    /// (u_{M−1}, u_0)
    fn sigma_hat_range(&self) -> (f64, f64) {
        (self.u[self.m - 1], self.u[0])
    }
    fn round_sigma(&self, sigma_hat: f64) -> f64 {
        self.u[self.grid_index(sigma_hat)]
    }
}
