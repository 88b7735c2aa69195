//! # lossfloor-train: EDM-style training with the optimal-loss schedule
//!
//! - [`config`]: the TOML config, overrides, validation (`docs/config.md`);
//! - [`augment_step`]: `[augment]`, EDM's augmentation pipe on each round's clean images;
//! - [`adam`]: Adam with saveable state, learning-rate schedule, gradient clean-up;
//! - [`ema`]: EDM's EMA with half-life ramp-up, and EDM2's power-function EMA;
//! - [`posthoc_ema`]: EDM2's post-hoc EMA: tracked profiles and their reconstruction;
//! - [`eval_gap`]: the evaluator: per-σ̂ loss on fixed queries without dropout, and its gap to J*;
//! - [`data_parallel`]: several ranks: each one's share of a step, summed gradients, checks;
//! - [`curve_match`]: a curve must describe the training data;
//! - [`floor_mix`]: the floor of a labelled run (conditional curve, label-dropout mixture);
//! - [`effective_weight`]: q(ln σ̂)·w(σ̂), the weight a recipe gives each noise level;
//! - [`schedule`]: the optimal-loss weight w(σ̂) and adaptive p(σ̂), per-σ̂ bin stats;
//! - [`run_dir`]: a run directory's logs and leftovers, taken over by a start or a resume;
//! - [`state`]: atomic safetensors training states;
//! - [`train`]: the loop ([`Trainer`]), deterministic data order and RNG streams;
//! - [`run_train`]: the `lossfloor train` entry point.

pub mod adam;
pub mod augment_step;
pub mod config;
pub mod curve_match;
pub mod data_parallel;
pub mod effective_weight;
pub mod ema;
pub mod eval_gap;
pub mod floor_mix;
pub mod posthoc_ema;
pub mod run_dir;
pub mod schedule;
pub mod state;
pub mod train;

use std::path::PathBuf;
use std::rc::Rc;

use lossfloor_comm::Communicator;

pub use config::Config;
pub use train::{load_dataset, train_with_dataset, train_with_dataset_in, Resume, Trainer};

/// Arguments of `lossfloor train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// The training config (TOML; see docs/config.md).
    pub config: PathBuf,
    /// Override a config key, e.g. `--set train.batch=64 --set optimizer.lr=2e-4`
    /// (the value is parsed as TOML, else taken as a string). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue a run: `auto` (the latest state in the run directory, if any) or a
    /// training-state file.
    #[arg(long, value_name = "auto|PATH")]
    pub resume: Option<String>,
    /// Run directory (default: runs/<config file stem>).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Compute device: `cpu`, `cuda` or `cuda:N` (overrides the config's `train.device`;
    /// CUDA needs a binary built by scripts/build-cuda.sh).
    #[arg(long, value_name = "cpu|cuda[:N]")]
    pub device: Option<String>,
}

/// `lossfloor train` in one process: loads the config and the data, then trains (or resumes).
pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    run_train_in(args, Rc::new(lossfloor_comm::SingleProcess))
}

/// [`run_train`] as one rank of `comm` (`mpirun -np N lossfloor train`).
pub fn run_train_in(args: TrainArgs, comm: Rc<dyn Communicator>) -> anyhow::Result<()> {
    let mut set = args.set.clone();
    if let Some(device) = &args.device {
        set.push(format!("train.device={device:?}"));
    }
    let cfg = Config::load(&args.config, &set)?;
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        let stem = args
            .config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        PathBuf::from("runs").join(stem)
    });
    let resume = match args.resume.as_deref() {
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(p) => Resume::Path(PathBuf::from(p)),
    };
    let dataset = load_dataset(&cfg)?;
    // A progress bar on a terminal; plain tick lines otherwise (logs, nohup, CI).
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    train_with_dataset_in(cfg, dataset, &run_dir, &resume, progress, comm).map(|_| ())
}
