//! Post-hoc EMA (EDM2, Karras et al. 2024): power-function EMA profiles tracked during
//! training and saved with every snapshot, and the least-squares reconstruction of an EMA of
//! any other length afterwards from those snapshots.
//!
//! A power-function EMA with exponent γ, read at time t (images seen), averages the weights
//! θ(τ) with the profile p_{t,γ}(τ) = (γ+1)·τ^γ / t^(γ+1) on [0, t]. Its relative standard
//! deviation σ_rel(γ) = √((γ+1) / ((γ+2)²(γ+3))) names it (`[ema] stds`). Snapshots of
//! profiles (t_i, γ_i) are combined as Σ x_i·θ̂_i, with x minimising ‖Σ x_i p_i − p_target‖²
//! in L²: the normal equations A x = b, A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_target⟩
//! ([`profile_correlation`]), after which x is scaled to sum to 1 (EDM2's Algorithm 3).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use faer::linalg::solvers::Solve;
use faer::Mat;

use crate::ema::{power_beta, power_exponent, Ema, MAX_POWER_STD};

/// Inner product ⟨p_a, p_b⟩ = ∫ p_{t_a,γ_a}(τ)·p_{t_b,γ_b}(τ) dτ of two power-function
/// profiles. With t_a ≤ t_b the integral runs over [0, t_a]:
/// (γ_a+1)(γ_b+1) / ((γ_a+γ_b+1)·t_b) · (t_a/t_b)^γ_b, and symmetrically for t_a > t_b
/// (EDM2's `power_function_correlation`).
pub fn profile_correlation(t_a: f64, gamma_a: f64, t_b: f64, gamma_b: f64) -> f64 {
    let (t_lo, t_hi, gamma_hi) = if t_a <= t_b {
        (t_a, t_b, gamma_b)
    } else {
        (t_b, t_a, gamma_a)
    };
    (gamma_a + 1.0) * (gamma_b + 1.0) / ((gamma_a + gamma_b + 1.0) * t_hi)
        * (t_lo / t_hi).powf(gamma_hi)
}

/// One stored EMA profile: read at `nimg` images with relative std `std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Images seen when the snapshot was taken (the profile's t).
    pub nimg: u64,
    /// σ_rel of its power function.
    pub std: f64,
}

/// The coefficients of a reconstruction and how well the combined profile matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconstruction {
    /// One weight per input profile, summing to 1.
    pub coefficients: Vec<f64>,
    /// ‖Σ x_i p_i − p_target‖ / ‖p_target‖ (L² over τ): the relative error of the achieved
    /// averaging profile, with the normalised coefficients.
    pub fit_error: f64,
}

/// Solves EDM2's least-squares problem for the weights of `inputs` that best reproduce the
/// profile `target` (see the module docs): x = A⁻¹b, then x / Σx. The relative profile error
/// is √(xᵀAx − 2xᵀb + c) / √c with c = ⟨p_target, p_target⟩.
pub fn solve_coefficients(inputs: &[Profile], target: &Profile) -> Result<Reconstruction> {
    if inputs.is_empty() {
        bail!("no stored profiles to reconstruct from");
    }
    for p in inputs.iter().chain([target]) {
        check_std(p.std)?;
        if p.nimg == 0 {
            bail!("a profile at 0 images has no extent");
        }
    }
    let n = inputs.len();
    let gammas: Vec<f64> = inputs.iter().map(|p| power_exponent(p.std)).collect();
    let target_gamma = power_exponent(target.std);
    let t = |p: &Profile| p.nimg as f64;
    let a = Mat::from_fn(n, n, |i, j| {
        profile_correlation(t(&inputs[i]), gammas[i], t(&inputs[j]), gammas[j])
    });
    let b = Mat::from_fn(n, 1, |i, _| {
        profile_correlation(t(&inputs[i]), gammas[i], t(target), target_gamma)
    });
    let x = a.partial_piv_lu().solve(&b);
    let sum: f64 = (0..n).map(|i| x[(i, 0)]).sum();
    if !(sum.is_finite() && sum.abs() > 0.0) {
        bail!("the profiles' correlation matrix is singular (duplicate snapshots?)");
    }
    let coefficients: Vec<f64> = (0..n).map(|i| x[(i, 0)] / sum).collect();
    let c = profile_correlation(t(target), target_gamma, t(target), target_gamma);
    let mut err2 = c;
    for i in 0..n {
        err2 -= 2.0 * coefficients[i] * b[(i, 0)];
        for j in 0..n {
            err2 += coefficients[i] * coefficients[j] * a[(i, j)];
        }
    }
    // Rounding can leave a tiny negative residual for an exact fit.
    let fit_error = (err2.max(0.0) / c).sqrt();
    if coefficients.iter().any(|x| !x.is_finite()) || !fit_error.is_finite() {
        bail!("the least-squares solve was not finite (ill-conditioned snapshot set)");
    }
    Ok(Reconstruction {
        coefficients,
        fit_error,
    })
}

/// A σ_rel must lie in (0, 1/√12]: the power profiles with γ ≥ 0.
pub fn check_std(std: f64) -> Result<()> {
    if !(std > 0.0 && std <= MAX_POWER_STD) {
        bail!(
            "std {std} is not a power-function EMA length: σ_rel must lie in (0, {MAX_POWER_STD:.4}]"
        );
    }
    Ok(())
}

/// The tracked profiles of a run: one power-function EMA of the weights per σ_rel.
#[derive(Debug)]
pub struct PowerProfiles {
    /// σ_rel of each profile (`[ema] stds`).
    pub stds: Vec<f64>,
    gammas: Vec<f64>,
    /// The EMA weights of each profile, in parameter order.
    pub emas: Vec<Ema>,
}

impl PowerProfiles {
    /// Every profile starts at the current weights.
    pub fn new(vars: &[Var], stds: &[f64]) -> Result<Self> {
        for &s in stds {
            check_std(s).context("ema.stds")?;
        }
        Ok(Self {
            stds: stds.to_vec(),
            gammas: stds.iter().map(|&s| power_exponent(s)).collect(),
            emas: stds.iter().map(|_| Ema::new(vars)).collect::<Result<_>>()?,
        })
    }

    /// Updates every profile after a step of `batch` images that ended at `nimg_after`
    /// images: β = (1 − batch/t)^(γ+1) with t = `nimg_after` ([`power_beta`]).
    pub fn update(&mut self, vars: &[Var], nimg_after: u64, batch: usize) -> Result<()> {
        for (ema, &gamma) in self.emas.iter_mut().zip(&self.gammas) {
            ema.update(vars, power_beta(gamma, nimg_after, batch))?;
        }
        Ok(())
    }
}

/// File-name prefix of profile snapshots: `power-ema-NNNNNNNNNN-S.SSS.safetensors`.
pub const PROFILE_PREFIX: &str = "power-ema-";

/// Path of profile `std`'s snapshot after `nimg` images (EDM2's `-{std:.3f}` suffix).
pub fn profile_snapshot_path(run_dir: &Path, nimg: u64, std: f64) -> PathBuf {
    run_dir.join(format!("{PROFILE_PREFIX}{nimg:010}-{std:.3}.safetensors"))
}

/// A profile snapshot found in a run directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileSnapshot {
    /// The file.
    pub path: PathBuf,
    /// Its profile.
    pub profile: Profile,
}

/// The profile snapshots in `run_dir`, sorted by (images, std).
pub fn list_profile_snapshots(run_dir: &Path) -> Result<Vec<ProfileSnapshot>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(run_dir)
        .with_context(|| format!("{}: cannot list the run directory", run_dir.display()))?;
    for e in entries {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name
            .strip_prefix(PROFILE_PREFIX)
            .and_then(|r| r.strip_suffix(".safetensors"))
        else {
            continue;
        };
        let Some((nimg, std)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(nimg), Ok(std)) = (nimg.parse::<u64>(), std.parse::<f64>()) else {
            continue;
        };
        out.push(ProfileSnapshot {
            path,
            profile: Profile { nimg, std },
        });
    }
    out.sort_by(|a, b| {
        (a.profile.nimg, a.profile.std)
            .partial_cmp(&(b.profile.nimg, b.profile.std))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(out)
}

/// The snapshots a reconstruction at `at_nimg` uses: EDM2's rule, every snapshot taken at
/// 0 < t ≤ `at_nimg`. `at_nimg` must be the time of a snapshot (its weights exist only
/// there); None means the latest.
pub fn snapshots_for(
    all: &[ProfileSnapshot],
    at_nimg: Option<u64>,
) -> Result<(u64, Vec<ProfileSnapshot>)> {
    let latest =
        all.iter().map(|s| s.profile.nimg).max().ok_or_else(|| {
            anyhow!("no power-EMA profile snapshots ({PROFILE_PREFIX}*.safetensors)")
        })?;
    let at = at_nimg.unwrap_or(latest);
    if !all.iter().any(|s| s.profile.nimg == at) {
        let mut times: Vec<u64> = all.iter().map(|s| s.profile.nimg).collect();
        times.dedup();
        bail!(
            "no profile snapshot at {at} images; snapshots exist at {} images",
            times
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let used: Vec<ProfileSnapshot> = all
        .iter()
        .filter(|s| s.profile.nimg > 0 && s.profile.nimg <= at)
        .cloned()
        .collect();
    Ok((at, used))
}

/// Σ_i x_i·tensors_i, name by name, reading one snapshot at a time: `load(i)` returns
/// snapshot i's tensors sorted by name. Tensors that are not trainable weights (buffers such
/// as resampling filters, which every snapshot holds unchanged) are taken from the last
/// snapshot, as EDM2 copies buffers.
pub fn combine(
    coefficients: &[f64],
    mut load: impl FnMut(usize) -> Result<Vec<(String, Tensor)>>,
    is_weight: impl Fn(&str) -> bool,
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    let mut acc: Option<Vec<(String, Tensor)>> = None;
    for (i, &x) in coefficients.iter().enumerate() {
        let tensors = load(i)?;
        acc = Some(match acc {
            None => tensors
                .into_iter()
                .map(|(n, t)| {
                    let t = t.to_device(device)?;
                    let t = if is_weight(&n) { t.affine(x, 0.0)? } else { t };
                    Ok((n, t))
                })
                .collect::<Result<_>>()?,
            Some(prev) => {
                if prev.len() != tensors.len() {
                    bail!(
                        "snapshot {i} holds {} tensors, the first {}",
                        tensors.len(),
                        prev.len()
                    );
                }
                prev.into_iter()
                    .zip(tensors)
                    .map(|((n, sum), (m, t))| {
                        if n != m {
                            bail!("snapshot {i} holds tensor {m} where the first holds {n}");
                        }
                        let t = t.to_device(device)?;
                        let out = if is_weight(&n) {
                            (sum + t.affine(x, 0.0)?)?
                        } else {
                            t
                        };
                        Ok((n, out))
                    })
                    .collect::<Result<_>>()?
            }
        });
    }
    acc.ok_or_else(|| anyhow!("no snapshots to combine"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ∫₀^∞ p_a p_b dτ by the composite Simpson rule on [0, min(t_a, t_b)] with `n` panels
    /// (both profiles vanish beyond their own t).
    fn correlation_by_quadrature(t_a: f64, g_a: f64, t_b: f64, g_b: f64, n: usize) -> f64 {
        let p = |t: f64, g: f64, tau: f64| (g + 1.0) * tau.powf(g) / t.powf(g + 1.0);
        let end = t_a.min(t_b);
        let h = end / n as f64;
        let f = |tau: f64| p(t_a, g_a, tau) * p(t_b, g_b, tau);
        let mut s = f(0.0) + f(end);
        for k in 1..n {
            s += f(k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0
    }

    #[test]
    fn correlation_of_uniform_profiles_by_hand() {
        // γ = 0 on both: p = 1/t on [0, t], so ⟨p_a, p_b⟩ = min(t)·(1/t_a)(1/t_b) = 1/max(t).
        assert!((profile_correlation(3.0, 0.0, 5.0, 0.0) - 0.2).abs() < 1e-15);
        assert!((profile_correlation(5.0, 0.0, 3.0, 0.0) - 0.2).abs() < 1e-15);
        // γ_a = 0, γ_b = 1, t_a = t_b = 1: ∫₀¹ 1·2τ dτ = 1.
        assert!((profile_correlation(1.0, 0.0, 1.0, 1.0) - 1.0).abs() < 1e-15);
        // γ = 1 on both, t_a = 1 ≤ t_b = 2: ∫₀¹ 2τ · 2τ/4 dτ = 1/3.
        assert!((profile_correlation(1.0, 1.0, 2.0, 1.0) - 1.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn correlation_matches_quadrature() {
        // Integer γ keep the integrands polynomial, so Simpson's rule is accurate to ~1e-12.
        for &(ta, ga, tb, gb) in &[
            (1.0, 2.0, 1.7, 5.0),
            (4.0, 6.0, 2.5, 3.0),
            (1000.0, 16.0, 800.0, 7.0),
        ] {
            let exact = profile_correlation(ta, ga, tb, gb);
            let quad = correlation_by_quadrature(ta, ga, tb, gb, 20_000);
            assert!(((exact - quad) / exact).abs() < 1e-9, "{exact} vs {quad}");
        }
    }

    #[test]
    fn exponents_are_edm2s_cubic_roots() {
        // EDM2's std_to_exp takes the largest real root of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²).
        for std in [0.01, 0.05, 0.1, 0.2, 0.28] {
            let g = power_exponent(std);
            let s2 = std.powi(-2);
            let cubic = g.powi(3) + 7.0 * g * g + (16.0 - s2) * g + (12.0 - s2);
            let scale = g.powi(3) + 7.0 * g * g + s2 * g + s2;
            assert!(
                cubic.abs() < 1e-12 * scale,
                "std {std}: γ {g}, residual {cubic}"
            );
        }
    }

    #[test]
    fn a_tracked_profile_selects_its_own_snapshot() {
        let mut inputs = Vec::new();
        for k in 1..=8u64 {
            for std in [0.05, 0.10] {
                inputs.push(Profile {
                    nimg: k * 4096,
                    std,
                });
            }
        }
        for (idx, target) in [(15, 0.10), (14, 0.05), (9, 0.10)] {
            let target = Profile {
                nimg: inputs[idx].nimg,
                std: target,
            };
            let r = solve_coefficients(&inputs, &target).unwrap();
            for (i, x) in r.coefficients.iter().enumerate() {
                let want = if i == idx { 1.0 } else { 0.0 };
                assert!(
                    (x - want).abs() < 1e-6,
                    "input {i}: {x} (target {target:?})"
                );
            }
            assert!(r.fit_error < 1e-6, "{}", r.fit_error);
        }
    }

    #[test]
    fn bad_stds_and_empty_sets_are_errors() {
        let p = |std| Profile { nimg: 10, std };
        assert!(solve_coefficients(&[p(0.05)], &p(0.5)).is_err());
        assert!(solve_coefficients(&[p(0.05)], &p(0.0)).is_err());
        assert!(solve_coefficients(&[], &p(0.05)).is_err());
    }
}
