//! `lossfloor study`: several training recipes (arms) compared at equal compute.
//!
//! A study file names a base training config, the arms (each a list of `--set`-style
//! overrides), the seeds and the evaluation points in kimg. Every (arm, seed) run trains
//! from the same base, with `train.seed` = the seed and the study's curve as
//! `optimal_loss.curve`, so every arm is measured against the same floor. At each point
//! the run's EMA snapshot is evaluated: FID of generated images (EDM Heun, seeds
//! `0..fid.images`, TF Inception) against reference statistics of the training images,
//! and the evaluator's gap per σ̂ region (`lossfloor_train::eval_gap`).
//!
//! Training to a point and continuing to the next is one run: each segment resumes the
//! last training state, which is bit-exact, so a run evaluated at 8, 16 and 32 kimg
//! trains exactly as one 32-kimg run. Each evaluation is written atomically to its own
//! file; a re-run of the same command skips those and resumes the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use lossfloor_fid::{load_stats_npz, save_stats_npz, InceptionV3, DEFAULT_WEIGHTS_PATH};
use lossfloor_optimal::{write_atomic, Curve};
use lossfloor_sampler::{random_class, HeunConfig};
use lossfloor_train::config::{Config, CurveEstimateConfig};
use lossfloor_train::train::estimate_training_curve;
use lossfloor_train::{load_dataset, train_with_dataset, Resume};
use serde::{Deserialize, Serialize};

use crate::sample::{load_checkpoint, SamplingJob};

const LONG_HELP: &str = "\
STUDY.toml:

  name = \"fashion-mnist-schedule\"
  base = \"fashion-mnist-study-base.toml\"   # a training config, relative to this file
  seeds = [0, 1]
  eval_kimg = [8, 16, 32]                   # evaluation points (images seen)

  [curve]          # J* of the training data, estimated once into OUT/curve.json
  method = \"exact\"
  queries = 1024
  points = 24      # log-spaced σ̂ from sigma_min = 0.002 to sigma_max = 80

  [fid]
  images = 256     # generated per evaluation, seeds 0..images-1 (same for every arm)
  ref_images = 2000  # first N training images -> OUT/fid-ref.npz
  steps = 18       # EDM Heun steps (2N-1 network evaluations per image)

  [[arms]]
  name = \"edm\"
  set = []
  [[arms]]
  name = \"edm-optimal\"
  set = [\"schedule.kind='optimal-loss'\"]

Outputs: OUT/runs/ARM/seed-S/ (the training runs), OUT/runs/ARM/seed-S/point-KIMG.json
(one per evaluation), OUT/results.json, OUT/results.md (FID mean and min-max over
seeds per arm and point) and OUT/fid.png. Re-running the same command continues:
finished evaluations are skipped, unfinished runs resume from their last training
state. Progress: one line per finished evaluation on stdout; training ticks on stderr.";

/// Compare training recipes at equal compute: FID and the gap to the floor per arm.
#[derive(clap::Args, Debug)]
#[command(after_long_help = LONG_HELP)]
pub struct StudyArgs {
    /// The study file (TOML; see below).
    pub study: PathBuf,
    /// Output folder (runs, evaluations, results).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seeds to run instead of the file's `seeds` (e.g. `0,1,2`).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Only these arms (by name, e.g. `edm,fm`).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub arms: Option<Vec<String>>,
    /// Inception weights for FID.
    #[arg(long, value_name = "FILE", env = "LOSSFLOOR_INCEPTION", default_value = DEFAULT_WEIGHTS_PATH)]
    pub weights: PathBuf,
    /// Only write results.json/.md/.png from the evaluations already on disk.
    #[arg(long)]
    pub report_only: bool,
}

/// A study file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudySpec {
    /// The study's name.
    pub name: String,
    /// The base training config (relative to the study file).
    pub base: PathBuf,
    /// Training seeds.
    pub seeds: Vec<u64>,
    /// Evaluation points in kimg (increasing).
    pub eval_kimg: Vec<f64>,
    /// The curve estimated for all arms.
    #[serde(default)]
    pub curve: CurveSpec,
    /// FID settings.
    #[serde(default)]
    pub fid: FidSpec,
    /// The arms.
    pub arms: Vec<Arm>,
}

/// `[curve]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurveSpec {
    pub method: String,
    pub queries: usize,
    pub points: usize,
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub seed: u64,
}
impl Default for CurveSpec {
    fn default() -> Self {
        Self {
            method: "exact".into(),
            queries: 1024,
            points: 24,
            sigma_min: 0.002,
            sigma_max: 80.0,
            seed: 0,
        }
    }
}

/// `[fid]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FidSpec {
    pub images: usize,
    pub ref_images: usize,
    pub steps: usize,
    pub batch: usize,
}
impl Default for FidSpec {
    fn default() -> Self {
        Self {
            images: 256,
            ref_images: 2000,
            steps: 18,
            batch: 64,
        }
    }
}

/// `[[arms]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub name: String,
    #[serde(default)]
    pub set: Vec<String>,
}

/// One evaluation of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// The study's evaluation point.
    pub target_kimg: f64,
    /// Images actually seen (the first whole batch at or past the point).
    pub kimg: f64,
    pub fid: f64,
    pub fid_images: usize,
    /// Mean EMA gap per σ̂ region (below/around/above σ*), with standard errors.
    pub gap_regions: serde_json::Value,
    /// Training seconds of the run up to this point (over all its starts).
    pub wall_s: f64,
    /// Seconds this evaluation took (sampling, Inception, evaluator).
    pub eval_s: f64,
    pub snapshot: String,
}

impl StudySpec {
    /// Reads and checks a study file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the study file", path.display()))?;
        let spec: StudySpec =
            toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        spec.check()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        if self.arms.is_empty() {
            bail!("no [[arms]]");
        }
        let mut names: Vec<&str> = self.arms.iter().map(|a| a.name.as_str()).collect();
        for a in &self.arms {
            if a.name.is_empty()
                || !a
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                bail!(
                    "arm name {:?}: use letters, digits, '-', '_' or '.' (it names a folder)",
                    a.name
                );
            }
        }
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("two arms are named {:?}", w[0]);
        }
        if self.seeds.is_empty() {
            bail!("seeds is empty");
        }
        if self.eval_kimg.is_empty()
            || self.eval_kimg.iter().any(|k| !(k.is_finite() && *k > 0.0))
            || self.eval_kimg.windows(2).any(|w| w[1] <= w[0])
        {
            bail!("eval_kimg must be positive and increasing");
        }
        if self.fid.images < 2 || self.fid.ref_images < 2 || self.fid.steps == 0 {
            bail!("fid: images and ref_images must be at least 2, steps at least 1");
        }
        if self.fid.batch == 0 {
            bail!("fid.batch must be at least 1");
        }
        if self.curve.points < 2 || self.curve.queries == 0 {
            bail!("curve: need points >= 2 and queries >= 1");
        }
        Ok(())
    }
}

/// Folder of one run.
fn run_dir(out: &Path, arm: &str, seed: u64) -> PathBuf {
    out.join("runs").join(arm).join(format!("seed-{seed}"))
}

/// The evaluation file of a point.
fn point_path(run: &Path, kimg: f64) -> PathBuf {
    run.join(format!("point-{:09.3}.json", kimg))
}

/// The overrides of one run: the arm's, then the study's (seed, duration, curve).
fn run_overrides(arm: &Arm, seed: u64, kimg: f64, curve: &Path) -> Vec<String> {
    let mut set = arm.set.clone();
    set.push(format!("train.seed={seed}"));
    set.push(format!("train.duration_kimg={kimg}"));
    set.push(format!(
        "optimal_loss.curve={:?}",
        curve.display().to_string()
    ));
    set
}

/// Runs `lossfloor study`.
pub fn run(args: StudyArgs) -> Result<()> {
    let spec = StudySpec::load(&args.study)?;
    let base = args
        .study
        .parent()
        .unwrap_or(Path::new("."))
        .join(&spec.base);
    // Read now: a base config that does not parse fails before any work.
    Config::load(&base, &[])?;
    let arms: Vec<Arm> = match &args.arms {
        None => spec.arms.clone(),
        Some(names) => names
            .iter()
            .map(|n| {
                spec.arms
                    .iter()
                    .find(|a| &a.name == n)
                    .cloned()
                    .ok_or_else(|| {
                        anyhow!(
                            "--arms: no arm {n:?} in {} (arms: {})",
                            args.study.display(),
                            spec.arms
                                .iter()
                                .map(|a| a.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
            })
            .collect::<Result<_>>()?,
    };
    let seeds = args.seeds.clone().unwrap_or_else(|| spec.seeds.clone());
    // Every override must parse before hours of training start.
    let curve_path = args.out.join("curve.json");
    for arm in &arms {
        for &seed in &seeds {
            let kimg = *spec.eval_kimg.last().unwrap_or(&1.0);
            Config::load(&base, &run_overrides(arm, seed, kimg, &curve_path))
                .map_err(|e| anyhow!("arm {} (set = {:?}): {e:#}", arm.name, arm.set))?;
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    if !args.report_only {
        let t0 = Instant::now();
        let base_cfg = Config::load(&base, &[])?;
        let curve = study_curve(&spec, &base_cfg, &curve_path)?;
        let reference = fid_reference(&spec, &base_cfg, &args)?;
        let detector = InceptionV3::load_on(&args.weights, &Device::Cpu)?;
        eprintln!(
            "study {}: {} arm(s) x {} seed(s) x {} point(s); σ* = {}",
            spec.name,
            arms.len(),
            seeds.len(),
            spec.eval_kimg.len(),
            curve
                .sigma_star(0.01)
                .map_or("n/a".into(), |s| format!("{s:.3}"))
        );
        for arm in &arms {
            for &seed in &seeds {
                run_arm_seed(
                    &spec,
                    &base,
                    arm,
                    seed,
                    &args.out,
                    &curve_path,
                    &reference,
                    &detector,
                )?;
            }
        }
        eprintln!(
            "study {} done in {:.1} min",
            spec.name,
            t0.elapsed().as_secs_f64() / 60.0
        );
    }
    crate::study_report::write_reports(&spec, &base, &args.out, &seeds)
}

/// The study's curve: read from `path`, or estimated on the base config's data and
/// written there.
fn study_curve(spec: &StudySpec, base: &Config, path: &Path) -> Result<Curve> {
    if path.is_file() {
        return Ok(Curve::load(path)?);
    }
    let data = load_dataset(base)?;
    let c = &spec.curve;
    let est = CurveEstimateConfig {
        method: c.method.clone(),
        queries: c.queries,
        sigma_min: c.sigma_min,
        sigma_max: c.sigma_max,
        points: c.points,
        seed: c.seed,
    };
    let curve = estimate_training_curve(&est, &base.data, &data, &Device::Cpu)
        .context("the study's [curve]")?;
    curve
        .save(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(curve)
}

/// Reference statistics of the first `fid.ref_images` training images (no x-flip), in
/// `OUT/fid-ref.npz`.
fn fid_reference(
    spec: &StudySpec,
    base: &Config,
    args: &StudyArgs,
) -> Result<lossfloor_fid::Stats> {
    let path = args.out.join("fid-ref.npz");
    if !path.is_file() {
        // The training images as configured, without x-flipped copies.
        let spec_data: lossfloor_data::DataSpec = base.data.spec.parse()?;
        let mut data = lossfloor_data::load(&spec_data)?;
        if let Some(n) = base.data.limit {
            data = data.take_first(n);
        }
        let count = spec.fid.ref_images.min(data.len());
        let net = InceptionV3::load_on(&args.weights, &Device::Cpu)?;
        eprintln!("FID reference: Inception features of the first {count} training images");
        let stats = crate::fid_cmd::dataset_stats(&net, &data, count)?;
        save_stats_npz(&path, &stats.mu(), stats.sigma().as_ref())?;
    }
    let stats = load_stats_npz(&path)?;
    stats.check_reference(&path, lossfloor_fid::FEATURE_DIM)?;
    Ok(stats)
}

/// Trains one (arm, seed) run through every evaluation point, evaluating each.
#[allow(clippy::too_many_arguments)]
fn run_arm_seed(
    spec: &StudySpec,
    base: &Path,
    arm: &Arm,
    seed: u64,
    out: &Path,
    curve: &Path,
    reference: &lossfloor_fid::Stats,
    detector: &InceptionV3,
) -> Result<()> {
    let dir = run_dir(out, &arm.name, seed);
    for &kimg in &spec.eval_kimg {
        let point_file = point_path(&dir, kimg);
        if point_file.is_file() {
            continue;
        }
        let cfg = Config::load(base, &run_overrides(arm, seed, kimg, curve))?;
        let data = load_dataset(&cfg)?;
        let trainer = train_with_dataset(cfg, data, &dir, &Resume::Auto, false)
            .with_context(|| format!("arm {} seed {seed}: training to {kimg} kimg", arm.name))?;
        let t0 = Instant::now();
        let snapshot = trainer.snapshot_path();
        if !snapshot.is_file() {
            // A run resumed exactly at its end wrote no new snapshot this time.
            trainer.save_snapshot()?;
        }
        let fid = snapshot_fid(&snapshot, spec, reference, detector)?;
        let rec = trainer.evaluate(false, true, false)?;
        let regions = trainer.evaluator().regions(&rec.ema);
        let point = Point {
            target_kimg: kimg,
            kimg: trainer.nimg as f64 / 1000.0,
            fid,
            fid_images: spec.fid.images,
            gap_regions: serde_json::to_value(&regions)?,
            wall_s: trainer.elapsed_s(),
            eval_s: t0.elapsed().as_secs_f64(),
            snapshot: snapshot
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        write_atomic(
            &point_file,
            serde_json::to_string_pretty(&point)?.as_bytes(),
        )
        .with_context(|| format!("{}: cannot write", point_file.display()))?;
        let gaps: String = regions
            .iter()
            .map(|(r, g)| format!(" {r} {:.2e}±{:.1e}", g.gap, g.se))
            .collect();
        println!(
            "{} seed {seed} kimg {:.1}: FID-{} {fid:.2}, EMA gap{gaps} (train {:.0} s, eval {:.0} s)",
            arm.name, point.kimg, spec.fid.images, point.wall_s, point.eval_s
        );
    }
    Ok(())
}

/// FID of `fid.images` images generated from `snapshot` (seeds 0.., EDM Heun).
fn snapshot_fid(
    snapshot: &Path,
    spec: &StudySpec,
    reference: &lossfloor_fid::Stats,
    detector: &InceptionV3,
) -> Result<f64> {
    let device = Device::Cpu;
    let loaded = load_checkpoint(snapshot, None, &device)?;
    let seeds: Vec<u64> = (0..spec.fid.images as u64).collect();
    let k = loaded.spec.label_dim();
    let labels = if k > 0 {
        Some(
            seeds
                .iter()
                .map(|&s| random_class(s, k))
                .collect::<lossfloor_sampler::Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    let cfg = HeunConfig {
        num_steps: spec.fid.steps,
        ..HeunConfig::default()
    };
    let job = SamplingJob {
        loaded: &loaded,
        seeds: &seeds,
        labels: labels.as_deref(),
        cfg: &cfg,
        batch: spec.fid.batch,
        latents: None,
        device: &device,
        guidance: None,
    };
    let (stats, _) = crate::fid_cmd::generated_stats(&job, detector)?;
    Ok(stats.stats().frechet_distance(reference)?)
}

/// Evaluation points of a run found on disk, by kimg.
pub fn read_points(out: &Path, arm: &str, seed: u64, kimg: &[f64]) -> Result<Vec<Point>> {
    let dir = run_dir(out, arm, seed);
    let mut v = Vec::new();
    for &k in kimg {
        let p = point_path(&dir, k);
        if !p.is_file() {
            continue;
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        v.push(
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a study evaluation", p.display()))?,
        );
    }
    Ok(v)
}

/// FID mean, min, max and count over seeds at each evaluation point of an arm (None where
/// no run has reached it).
pub fn fid_summary(
    points: &[Vec<Point>],
    eval_kimg: &[f64],
) -> Vec<Option<(f64, f64, f64, usize)>> {
    eval_kimg
        .iter()
        .map(|&k| {
            let f: Vec<f64> = points
                .iter()
                .flat_map(|p| p.iter().filter(|q| q.target_kimg == k))
                .map(|p| p.fid)
                .collect();
            (!f.is_empty()).then(|| {
                let mean = f.iter().sum::<f64>() / f.len() as f64;
                let lo = f.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = f.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                (mean, lo, hi, f.len())
            })
        })
        .collect()
}

/// Arm name → per-seed points, for the reports.
pub type ArmPoints = BTreeMap<String, Vec<(u64, Vec<Point>)>>;
