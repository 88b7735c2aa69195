//! The floor of a class-conditional run: which curve(s) it needs and how they combine.
//!
//! A network given the class label c of x0 can reach the conditional floor J*(σ̂ | c), whose
//! class-frequency average E_c J*(σ̂ | c) is what `lossfloor estimate --conditional` writes.
//! Trained with label dropout p (`network.label_dropout`; DiT: `network.class_dropout_prob`)
//! it is shown the null label on a fraction p of the samples, where the best it can do is
//! the unconditional posterior mean, so its floor is the mixture (see [`mixture_floor`])
//!
//!   J*_mix(σ̂) = (1 − p)·E_c J*(σ̂ | c) + p·J*(σ̂).
//!
//! Keys: `optimal_loss.curve` is the conditional curve of a class-conditional network
//! (label_dim > 0) and the unconditional curve of an unconditional one; with 0 < p < 1,
//! `optimal_loss.unconditional_curve` is the unconditional curve the mixture needs. The
//! diagnostics, the gap and the schedule all use the mixed curve ([`training_floor`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use lossfloor_data::Dataset;
use lossfloor_optimal::{Curve, CurvePoint};

use crate::config::{Config, CurveEstimateConfig, NetworkConfig};
use crate::curve_match::check_curve_matches;
use crate::train::{estimate_training_curve, ESTIMATED_CURVE_FILE};

/// The file the unconditional curve estimated at start is written to, for a
/// class-conditional network with label dropout under `[optimal_loss.estimate]`
/// (`optimal-loss-curve.json` then holds the conditional curve).
pub const ESTIMATED_UNCONDITIONAL_CURVE_FILE: &str = "optimal-loss-unconditional-curve.json";

/// The label-dropout probability p of a network, and the key that sets it.
pub fn label_dropout(net: &NetworkConfig) -> (f64, &'static str) {
    match net {
        NetworkConfig::SongUNet(c) => (c.label_dropout, "network.label_dropout"),
        NetworkConfig::Dhariwal(c) => (c.label_dropout, "network.label_dropout"),
        NetworkConfig::DiT(c) => (c.class_dropout_prob, "network.class_dropout_prob"),
    }
}

/// The key that makes a network class-conditional.
fn label_key(net: &NetworkConfig) -> &'static str {
    match net {
        NetworkConfig::DiT(_) => "network.num_classes",
        _ => "network.label_dim",
    }
}

/// The floor of a class-conditional network trained with label dropout p at one σ̂:
///
///   J*_mix = (1 − p)·J*_cond + p·J*_uncond,
///
/// where J*_cond = E_c J*(σ̂ | c) (the label is kept, probability 1 − p; the best denoiser is
/// the posterior mean within the class) and J*_uncond = J*(σ̂) (the label is dropped; the best
/// denoiser is the posterior mean over all data). The expected loss is linear in the two cases.
pub fn mixture_floor(p: f64, j_cond: f64, j_uncond: f64) -> f64 {
    (1.0 - p) * j_cond + p * j_uncond
}

/// Standard error of [`mixture_floor`] from the two curves' independent standard errors:
/// √(((1 − p)·se_cond)² + (p·se_uncond)²).
pub fn mixture_stderr(p: f64, se_cond: f64, se_uncond: f64) -> f64 {
    (((1.0 - p) * se_cond).powi(2) + (p * se_uncond).powi(2)).sqrt()
}

/// The standard error of `curve` at σ̂: that of the grid point nearest in ln σ̂.
fn stderr_near(curve: &Curve, sigma: f64) -> f64 {
    curve
        .points
        .iter()
        .min_by(|a, b| {
            (a.sigma.ln() - sigma.ln())
                .abs()
                .total_cmp(&(b.sigma.ln() - sigma.ln()).abs())
        })
        .map_or(0.0, |p| p.stderr)
}

/// The mixed curve J*_mix on the union of the two σ̂ grids (each curve read with
/// [`Curve::loss_at`], so on a common grid the points are the formula applied to the points),
/// with data variance (1 − p)·v_cond + p·v_uncond (the σ̂ → ∞ limit of the mixture).
pub fn mixed_curve(p: f64, cond: &Curve, uncond: &Curve) -> Curve {
    let mut sigmas: Vec<f64> = cond
        .points
        .iter()
        .chain(&uncond.points)
        .map(|q| q.sigma)
        .collect();
    sigmas.sort_by(f64::total_cmp);
    sigmas.dedup();
    let points = sigmas
        .iter()
        .map(|&sigma| CurvePoint {
            sigma,
            loss: mixture_floor(p, cond.loss_at(sigma), uncond.loss_at(sigma)),
            stderr: mixture_stderr(p, stderr_near(cond, sigma), stderr_near(uncond, sigma)),
            queries: 0,
        })
        .collect();
    let mut params = serde_json::Map::new();
    params.insert("label_dropout".into(), p.into());
    params.insert("conditional_method".into(), cond.method.clone().into());
    params.insert("unconditional_method".into(), uncond.method.clone().into());
    Curve {
        dataset: cond.dataset.clone(),
        method: "label-dropout mixture".into(),
        params,
        data_variance: match (cond.data_variance, uncond.data_variance) {
            (Some(a), Some(b)) => Some(mixture_floor(p, a, b)),
            _ => None,
        },
        points,
    }
}

/// Config-time checks of the floor keys against the network (no files read): an
/// `unconditional_curve` only for a class-conditional network with 0 < p, and then
/// required next to `curve`.
pub fn check_floor_keys(cfg: &Config) -> Result<()> {
    let net = &cfg.network;
    let ol = &cfg.optimal_loss;
    let (p, p_key) = label_dropout(net);
    let k = net.label_dim();
    if ol.unconditional_curve.is_none() {
        if k > 0 && p > 0.0 && ol.curve.is_some() {
            bail!(
                "optimal_loss.curve with {p_key} = {p}: a class-conditional network trained with \
                 label dropout has the floor (1 − p)·E_c J*(σ|c) + p·J*(σ); set \
                 optimal_loss.unconditional_curve to the unconditional curve (lossfloor \
                 estimate without --conditional) next to the conditional optimal_loss.curve"
            );
        }
        return Ok(());
    }
    if k == 0 {
        bail!(
            "optimal_loss.unconditional_curve is only used by a class-conditional network, and \
             {} = 0; remove it (optimal_loss.curve is the floor of an unconditional network)",
            label_key(net)
        );
    }
    if p == 0.0 {
        bail!(
            "optimal_loss.unconditional_curve is not used when {p_key} = 0 (the network never \
             sees the unconditional task); remove it"
        );
    }
    if ol.curve.is_none() {
        bail!(
            "optimal_loss.unconditional_curve needs optimal_loss.curve (the conditional curve, \
             lossfloor estimate --conditional) next to it"
        );
    }
    Ok(())
}

/// `[sample] guidance`: a finite W, for a class-conditional network trained with label
/// dropout (its unconditional output is what guidance extrapolates from).
pub fn check_sample_guidance(cfg: &Config) -> Result<()> {
    let Some(w) = cfg.sample.guidance else {
        return Ok(());
    };
    let net = &cfg.network;
    let (p, p_key) = label_dropout(net);
    if !w.is_finite() {
        bail!("sample.guidance = {w} is not allowed: expected a finite weight");
    }
    if net.label_dim() == 0 {
        bail!(
            "sample.guidance needs a class-conditional network, but {} = 0",
            label_key(net)
        );
    }
    if p <= 0.0 {
        bail!(
            "sample.guidance needs a network trained with label dropout, but {p_key} = 0 (its \
             unconditional output is never trained)"
        );
    }
    Ok(())
}

/// Checks that `curve` (read from `path`, set by `key`) is conditional exactly when `want`.
fn check_kind(
    curve: &Curve,
    path: &Path,
    key: &str,
    want: bool,
    net: &NetworkConfig,
) -> Result<()> {
    let k = net.label_dim();
    match (curve.dataset.conditional, want) {
        (true, false) if k == 0 => bail!(
            "{key} = {}: a class-conditional floor (lossfloor estimate --conditional), but the \
             network is unconditional ({} = 0); use an unconditional curve",
            path.display(),
            label_key(net)
        ),
        (true, false) => bail!(
            "{key} = {}: a class-conditional floor (lossfloor estimate --conditional); expected \
             the unconditional curve here",
            path.display()
        ),
        (false, true) => bail!(
            "{key} = {}: an unconditional floor, but the network is class-conditional ({} = {k}); \
             use the conditional curve (lossfloor estimate --conditional){}",
            path.display(),
            label_key(net),
            if label_dropout(net).0 > 0.0 {
                " and this one as optimal_loss.unconditional_curve"
            } else {
                ""
            }
        ),
        _ => Ok(()),
    }
}

/// The floor a run is measured against, from the configured curve (`cond`, from
/// `optimal_loss.curve`) and, for label dropout 0 < p < 1, the unconditional curve
/// (`uncond`, from `optimal_loss.unconditional_curve`): the curve itself for an unconditional
/// network or p = 0, else [`mixed_curve`]. Each curve must be of the kind its key names.
pub fn training_floor(
    net: &NetworkConfig,
    cond: (Curve, &Path),
    uncond: Option<(Curve, &Path)>,
) -> Result<Curve> {
    let conditional_net = net.label_dim() > 0;
    check_kind(&cond.0, cond.1, "optimal_loss.curve", conditional_net, net)?;
    let (p, p_key) = label_dropout(net);
    match uncond {
        None if conditional_net && p > 0.0 => bail!(
            "optimal_loss.curve with {p_key} = {p}: the mixture floor needs \
             optimal_loss.unconditional_curve too"
        ),
        None => Ok(cond.0),
        Some((u, path)) => {
            check_kind(&u, path, "optimal_loss.unconditional_curve", false, net)?;
            Ok(mixed_curve(p, &cond.0, &u))
        }
    }
}

/// The curve files of a run: `optimal_loss.curve` (or, under `[optimal_loss.estimate]`,
/// `RUN_DIR/optimal-loss-curve.json`) and the unconditional curve where the floor is a
/// mixture (`optimal_loss.unconditional_curve`, or `RUN_DIR/`[`ESTIMATED_UNCONDITIONAL_CURVE_FILE`]).
/// `None` when the run has no curve.
pub fn curve_paths(cfg: &Config, run_dir: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let ol = &cfg.optimal_loss;
    let net = cfg.effective_network();
    match (&ol.curve, &ol.estimate) {
        (Some(p), _) => Some((p.clone(), ol.unconditional_curve.clone())),
        (None, Some(_)) => {
            let mixed = net.label_dim() > 0 && label_dropout(&net).0 > 0.0;
            Some((
                run_dir.join(ESTIMATED_CURVE_FILE),
                mixed.then(|| run_dir.join(ESTIMATED_UNCONDITIONAL_CURVE_FILE)),
            ))
        }
        (None, None) => None,
    }
}

/// The floor of a run from its curve files ([`curve_paths`]): each checked against the
/// training data `dataset` when given ([`check_curve_matches`]) and for its kind, then
/// combined by [`training_floor`]. `None` when the run has no curve.
pub fn load_floor(
    cfg: &Config,
    run_dir: &Path,
    dataset: Option<&Dataset>,
) -> Result<Option<Curve>> {
    let Some((main, uncond)) = curve_paths(cfg, run_dir) else {
        return Ok(None);
    };
    let load = |p: &Path| -> Result<Curve> {
        let c = Curve::load(p)?;
        if let Some(d) = dataset {
            check_curve_matches(&c, p, &cfg.data, d, cfg.optimal_loss.allow_mismatch)?;
        }
        Ok(c)
    };
    let c = load(&main)?;
    let u = match &uncond {
        Some(q) => Some((load(q)?, q.as_path())),
        None => None,
    };
    training_floor(&cfg.effective_network(), (c, &main), u).map(Some)
}

/// The floor of a starting run: under `[optimal_loss.estimate]` the curve(s) are first
/// estimated into the run directory (or read back there when an earlier start wrote them, so a
/// resumed run uses the same floor): the conditional curve for a class-conditional network,
/// plus the unconditional one when its label dropout is > 0. Then [`load_floor`].
pub fn prepare_floor(
    cfg: &Config,
    dataset: &Dataset,
    run_dir: &Path,
    device: &Device,
) -> Result<Option<Curve>> {
    if let (Some(est), Some((main, uncond))) =
        (&cfg.optimal_loss.estimate, curve_paths(cfg, run_dir))
    {
        let conditional = cfg.effective_network().label_dim() > 0;
        ensure_curve(&main, run_dir, || {
            estimate_run_curve(est, cfg, dataset, device, conditional)
        })?;
        if let Some(u) = uncond {
            ensure_curve(&u, run_dir, || {
                estimate_run_curve(est, cfg, dataset, device, false)
            })?;
        }
    }
    load_floor(cfg, run_dir, Some(dataset))
}

/// [`prepare_floor`] on one rank of `comm`: rank 0 estimates and writes a missing curve
/// first; the other ranks then read it (or, without a shared file system, estimate their own
/// into their own run directory).
pub fn prepare_floor_in(
    comm: &dyn lossfloor_comm::Communicator,
    cfg: &Config,
    dataset: &Dataset,
    run_dir: &Path,
    device: &Device,
) -> Result<Option<Curve>> {
    if comm.rank() == 0 {
        let curve = prepare_floor(cfg, dataset, run_dir, device)?;
        comm.gather_u64(0)?;
        Ok(curve)
    } else {
        comm.gather_u64(0)?;
        prepare_floor(cfg, dataset, run_dir, device)
    }
}

/// Writes `make()` to `path` atomically unless the file is already there.
fn ensure_curve(path: &Path, run_dir: &Path, make: impl FnOnce() -> Result<Curve>) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    let t0 = Instant::now();
    let curve = make()?;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("{}: cannot create the run directory", run_dir.display()))?;
    curve
        .save(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    eprintln!(
        "optimal-loss curve done in {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}

/// One curve of the training data with the budget `est`: the class-conditional floor
/// (`lossfloor estimate --conditional`) when `conditional`, else the unconditional one.
fn estimate_run_curve(
    est: &CurveEstimateConfig,
    cfg: &Config,
    dataset: &Dataset,
    device: &Device,
    conditional: bool,
) -> Result<Curve> {
    if !conditional {
        return estimate_training_curve(est, &cfg.data, dataset, device);
    }
    let Some(labels) = dataset.labels().map(|_| {
        (0..dataset.len())
            .map(|i| dataset.label(i).expect("labels present"))
            .collect::<Vec<u32>>()
    }) else {
        bail!(
            "[optimal_loss.estimate]: the network is class-conditional but the data has no labels"
        );
    };
    let params = est.params()?;
    let device = crate::train::estimator_device(params.method, device);
    eprintln!(
        "estimating the class-conditional optimal-loss curve: {} on {} images...",
        params.method,
        dataset.len()
    );
    let (mut curve, _) = lossfloor_optimal::estimate_conditional_on(
        &device,
        dataset,
        &labels,
        &cfg.data.spec,
        &est.sigmas(),
        &params,
        &|_| {},
    )
    .context("optimal_loss.estimate (conditional)")?;
    curve.dataset.xflip = cfg.data.xflip;
    curve.dataset.limit = cfg.data.limit;
    Ok(curve)
}
