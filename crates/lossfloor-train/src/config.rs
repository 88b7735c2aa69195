//! The training configuration: a TOML file with the sections `[data]`, `[network]`,
//! `[precond]`, `[loss]`, `[schedule]`, `[optimizer]`, `[ema]`, `[train]`, `[sample]`,
//! `[optimal_loss]` and `[augment]` (every key is documented in `docs/config.md`).
//!
//! Unknown keys are rejected by name, `--set key.sub=value` overrides are applied to the
//! parsed TOML before it is checked (values are parsed as TOML, falling back to a string),
//! and [`Config::to_toml`] gives the resolved config that is written into the run directory.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use lossfloor_core::{Edm, Process, ProcessKind};
use lossfloor_nets::{
    DhariwalUNet, DhariwalUNetConfig, DiT, DiTConfig, Network, SongUNet, SongUNetConfig,
};
use serde::{Deserialize, Serialize};

use crate::augment_step::AugmentConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Training data.
    pub data: DataConfig,
    /// The raw network F.
    pub network: NetworkConfig,
    /// Preconditioning (the process whose c_skip, c_out, c_in, c_noise wrap F).
    #[serde(default)]
    pub precond: PrecondConfig,
    /// Loss weighting.
    #[serde(default)]
    pub loss: LossConfig,
    /// Noise-level schedule p(σ̂).
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Adam and the learning-rate schedule.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Exponential moving average of the weights.
    #[serde(default)]
    pub ema: EmaConfig,
    /// Batch, duration, seeds, intervals, device.
    #[serde(default)]
    pub train: TrainConfig,
    /// Sample grids written during training.
    #[serde(default)]
    pub sample: SampleConfig,
    /// The optimal-loss curve J*(σ̂) of the training data.
    #[serde(default)]
    pub optimal_loss: OptimalLossConfig,
    /// The unbiased per-σ̂ evaluation of the network against J* (`eval_gap`).
    #[serde(default)]
    pub eval: EvalConfig,
    /// EDM's augmentation pipe on the clean training images (off by default).
    #[serde(default)]
    pub augment: AugmentConfig,
}

/// `[eval]`: the network's loss per σ̂ on a fixed query set, without dropout
/// ([`crate::eval_gap`]), logged to `RUN_DIR/eval.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate the raw and EMA networks every this many ticks (and at the end); 0 = never
    /// (the adaptive schedule still evaluates the raw network at each refresh when
    /// `schedule.gap_source = "eval"`).
    #[serde(default)]
    pub ticks: u64,
    /// Queries per σ̂ (M); the standard error falls as 1/√M.
    #[serde(default = "d_eval_queries")]
    pub queries: usize,
    /// Held-out data for a generalisation loss: `auto` (the spec's test split where one
    /// exists: `fashion-mnist:test`, CIFAR-10's `test_batch.bin`), `none`, or a data spec.
    #[serde(default = "d_eval_test")]
    pub test: String,
    /// Seed of the query set. It does not follow `train.seed`, so that runs of different
    /// seeds and arms of a study are measured on the same queries.
    #[serde(default)]
    pub seed: u64,
}
fn d_eval_queries() -> usize {
    64
}
fn d_eval_test() -> String {
    "auto".into()
}
impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            ticks: 0,
            queries: d_eval_queries(),
            test: d_eval_test(),
            seed: 0,
        }
    }
}

/// Where the adaptive schedule's gap J_σ̂(θ) − J*(σ̂) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GapSource {
    /// The evaluator's loss of the raw network on fixed queries, without dropout, at each
    /// refresh: unbiased, with standard error s/√M per σ̂.
    Eval,
    /// A per-bin EMA of the training batches' losses: free, but measured with dropout on
    /// and over a changing model, so it overstates the gap by the dropout penalty.
    Train,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A `lossfloor_data::DataSpec` string (`cifar10:DIR`, `fashion-mnist`, `npy:FILE`, …).
    pub spec: String,
    /// Add x-flipped copies (doubles the rows).
    #[serde(default)]
    pub xflip: bool,
    /// Use only the first N images (before x-flip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `[network]`: `arch` plus the keys of that architecture's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch")]
pub enum NetworkConfig {
    /// EDM's SongUNet (DDPM++ / NCSN++).
    #[serde(rename = "songunet")]
    SongUNet(SongUNetConfig),
    /// EDM's DhariwalUNet (ADM).
    #[serde(rename = "dhariwal")]
    Dhariwal(DhariwalUNetConfig),
    /// DiT.
    #[serde(rename = "dit")]
    DiT(DiTConfig),
}

impl NetworkConfig {
    /// Architecture name as written in configs.
    pub fn arch(&self) -> &'static str {
        match self {
            NetworkConfig::SongUNet(_) => "songunet",
            NetworkConfig::Dhariwal(_) => "dhariwal",
            NetworkConfig::DiT(_) => "dit",
        }
    }

    /// Builds the network with its parameters registered in `varmap`.
    pub fn build(&self, varmap: &VarMap, device: &Device, seed: u64) -> Result<Box<dyn Network>> {
        Ok(match self {
            NetworkConfig::SongUNet(c) => Box::new(SongUNet::new(c, varmap, device, seed)?),
            NetworkConfig::Dhariwal(c) => Box::new(DhariwalUNet::new(c, varmap, device, seed)?),
            NetworkConfig::DiT(c) => Box::new(DiT::new(c, varmap, device, seed)?),
        })
    }

    /// The network as checkpoints describe it.
    pub fn spec(&self) -> lossfloor_nets::checkpoint::NetworkSpec {
        use lossfloor_nets::checkpoint::NetworkSpec;
        match self {
            NetworkConfig::SongUNet(c) => NetworkSpec::SongUNet(c.clone()),
            NetworkConfig::Dhariwal(c) => NetworkSpec::Dhariwal(c.clone()),
            NetworkConfig::DiT(c) => NetworkSpec::DiT(c.clone()),
        }
    }

    /// (channels, resolution) of the network input.
    pub fn input_shape(&self) -> (usize, usize) {
        match self {
            NetworkConfig::SongUNet(c) => (c.in_channels, c.img_resolution),
            NetworkConfig::Dhariwal(c) => (c.in_channels, c.img_resolution),
            NetworkConfig::DiT(c) => (c.in_channels, c.input_size),
        }
    }

    /// Channels of F's output that form the prediction (DiT with `learn_sigma` outputs
    /// twice as many; the first half is used).
    pub fn output_channels(&self) -> usize {
        match self {
            NetworkConfig::SongUNet(c) => c.out_channels,
            NetworkConfig::Dhariwal(c) => c.out_channels,
            NetworkConfig::DiT(c) => c.in_channels,
        }
    }

    /// Number of classes the network is conditioned on (0 = unconditional).
    pub fn label_dim(&self) -> usize {
        match self {
            NetworkConfig::SongUNet(c) => c.label_dim,
            NetworkConfig::Dhariwal(c) => c.label_dim,
            NetworkConfig::DiT(c) => c.num_classes,
        }
    }

    /// Replaces the activation dropout probability (`[train] dropout`).
    pub fn set_dropout(&mut self, p: f64) {
        match self {
            NetworkConfig::SongUNet(c) => c.dropout = p,
            NetworkConfig::Dhariwal(c) => c.dropout = p,
            NetworkConfig::DiT(_) => {}
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            NetworkConfig::SongUNet(c) => c.validate()?,
            NetworkConfig::Dhariwal(c) => c.validate()?,
            NetworkConfig::DiT(c) => c.validate()?,
        }
        Ok(())
    }
}

/// `[precond]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecondConfig {
    /// Process: vp, ve, edm, iddpm, fm, sd3 (default edm, as when `[precond]` is absent).
    #[serde(default = "d_process")]
    pub process: ProcessKind,
    /// σ_data of EDM's preconditioning (only for `edm`; default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_data: Option<f64>,
}

fn d_process() -> ProcessKind {
    ProcessKind::Edm
}

impl Default for PrecondConfig {
    fn default() -> Self {
        Self {
            process: d_process(),
            sigma_data: None,
        }
    }
}

impl PrecondConfig {
    /// The process with its hyper-parameters.
    pub fn build(&self) -> Result<Box<dyn Process>> {
        match (self.process, self.sigma_data) {
            (ProcessKind::Edm, Some(sd)) => {
                if !(sd.is_finite() && sd > 0.0) {
                    bail!("precond.sigma_data = {sd} must be a positive number");
                }
                Ok(Box::new(Edm::new(sd, Edm::P_MEAN, Edm::P_STD)))
            }
            (_, None) => Ok(self.process.build()),
            (p, Some(_)) => bail!("precond.sigma_data applies only to process \"edm\", not {p}"),
        }
    }
}

/// Which weight multiplies ‖D − x0‖².
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossWeight {
    /// `optimal-loss` when `schedule.kind = "optimal-loss"`, else `native`.
    Auto,
    /// The process's own λ(σ̂) (EDM: (σ̂²+σ_d²)/(σ̂σ_d)²).
    Native,
    /// w(σ̂) of the optimal-loss schedule.
    OptimalLoss,
}

/// `[loss]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Weight on ‖D − x0‖²: auto, native, optimal-loss.
    #[serde(default = "d_auto")]
    pub weight: LossWeight,
}
fn d_auto() -> LossWeight {
    LossWeight::Auto
}
impl Default for LossConfig {
    fn default() -> Self {
        Self { weight: d_auto() }
    }
}

/// Schedule kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// σ̂ from the process's own training distribution.
    Native,
    /// The adaptive optimal-loss schedule (docs/optimal-loss-method.md §5).
    OptimalLoss,
}

/// `[schedule]`: the noise-level distribution and the optimal-loss weight's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// native or optimal-loss.
    #[serde(default = "d_native")]
    pub kind: ScheduleKind,
    /// a in w(σ̂) = a·min(1/J*(σ̂), w_max) + b·N(ln σ̂; μ, ς²)·1[σ̂ < σ*].
    #[serde(default = "d_one")]
    pub a: f64,
    /// Truncation w_max of 1/J*.
    #[serde(default = "d_w_max")]
    pub w_max: f64,
    /// Amplitude b of the Gaussian bump (default w_max).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bump_scale: Option<f64>,
    /// μ of the bump, in ln σ̂ (default ln σ* − 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bump_mean: Option<f64>,
    /// ς of the bump, in ln σ̂.
    #[serde(default = "d_one")]
    pub bump_std: f64,
    /// σ* = largest curve σ̂ with J* ≤ delta·variance.
    #[serde(default = "d_delta")]
    pub delta: f64,
    /// Bins of p(σ̂) in ln σ̂.
    #[serde(default = "d_bins")]
    pub bins: usize,
    /// Lower end of the binned σ̂ range.
    #[serde(default = "d_sigma_min")]
    pub sigma_min: f64,
    /// Upper end of the binned σ̂ range.
    #[serde(default = "d_sigma_max")]
    pub sigma_max: f64,
    /// p(σ̂) is recomputed every this many kimg.
    #[serde(default = "d_refresh")]
    pub refresh_kimg: f64,
    /// Decay of the per-bin loss EMA per refresh (0 = last window only).
    #[serde(default = "d_loss_ema")]
    pub loss_ema: f64,
    /// Floor on the gap J_σ − J*_σ (per-dimension x0 units).
    #[serde(default = "d_gap_floor")]
    pub gap_floor: f64,
    /// Probability of drawing σ̂ from the native distribution instead.
    #[serde(default = "d_mix")]
    pub mix: f64,
    /// Source of the gap that steers p(σ̂): `eval` (unbiased) or `train`.
    #[serde(default = "d_gap_source")]
    pub gap_source: GapSource,
}
fn d_gap_source() -> GapSource {
    GapSource::Eval
}
fn d_native() -> ScheduleKind {
    ScheduleKind::Native
}
fn d_one() -> f64 {
    1.0
}
fn d_w_max() -> f64 {
    1e4
}
fn d_delta() -> f64 {
    0.01
}
fn d_bins() -> usize {
    64
}
fn d_sigma_min() -> f64 {
    0.002
}
fn d_sigma_max() -> f64 {
    80.0
}
fn d_refresh() -> f64 {
    4.0
}
fn d_loss_ema() -> f64 {
    0.9
}
fn d_gap_floor() -> f64 {
    1e-4
}
fn d_mix() -> f64 {
    0.1
}
impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: d_native(),
            a: 1.0,
            w_max: d_w_max(),
            bump_scale: None,
            bump_mean: None,
            bump_std: 1.0,
            delta: d_delta(),
            bins: d_bins(),
            sigma_min: d_sigma_min(),
            sigma_max: d_sigma_max(),
            refresh_kimg: d_refresh(),
            loss_ema: d_loss_ema(),
            gap_floor: d_gap_floor(),
            mix: d_mix(),
            gap_source: d_gap_source(),
        }
    }
}

/// `[optimizer]`: Adam (torch.optim.Adam semantics) and the learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Base learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// (β1, β2).
    #[serde(default = "d_betas")]
    pub betas: [f64; 2],
    /// ε added to √v̂.
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Decoupled weight decay (AdamW style, θ ← θ(1 − lr·wd)); 0 = plain Adam.
    #[serde(default)]
    pub weight_decay: f64,
    /// Linear ramp-up: lr·min(kimg/rampup_kimg, 1); 0 = none.
    #[serde(default = "d_rampup")]
    pub rampup_kimg: f64,
    /// Inverse-sqrt decay lr/√max(kimg/decay_kimg, 1) (EDM2); absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_kimg: Option<f64>,
    /// Clip the global gradient norm to this value; absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
}
fn d_lr() -> f64 {
    1e-3
}
fn d_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn d_eps() -> f64 {
    1e-8
}
fn d_rampup() -> f64 {
    10000.0
}
impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: d_lr(),
            betas: d_betas(),
            eps: d_eps(),
            weight_decay: 0.0,
            rampup_kimg: d_rampup(),
            decay_kimg: None,
            grad_clip: None,
        }
    }
}

/// `[ema]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// `halflife` (EDM's, the default) or `power` (EDM2's power-function EMA).
    #[serde(default)]
    pub kind: EmaKind,
    /// Half-life in kimg (`halflife`).
    #[serde(default = "d_halflife")]
    pub halflife_kimg: f64,
    /// Ramp-up: half-life ≤ rampup_ratio·images seen; 0 = off (`halflife`).
    #[serde(default = "d_rampup_ratio")]
    pub rampup_ratio: f64,
    /// Relative standard deviation σ_rel of the averaging profile (`power`; EDM2
    /// tracked 0.05 and 0.10).
    #[serde(default = "d_ema_std")]
    pub std: f64,
    /// Power-function profiles tracked for post-hoc EMA (`power` only; EDM2's 0.050 and
    /// 0.100). Each is saved as `power-ema-NNNNNNNNNN-S.SSS.safetensors` with every network
    /// snapshot; `lossfloor phema` reconstructs other lengths from them. Empty = none.
    #[serde(default = "d_ema_stds")]
    pub stds: Vec<f64>,
}
/// The EMA's form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmaKind {
    /// EDM: a fixed half-life in images, with ramp-up.
    #[default]
    Halflife,
    /// EDM2: β_t = (1 − batch/t)^(γ+1) at t images, γ set by `std`.
    Power,
}
fn d_halflife() -> f64 {
    500.0
}
fn d_rampup_ratio() -> f64 {
    0.05
}
fn d_ema_std() -> f64 {
    0.05
}
fn d_ema_stds() -> Vec<f64> {
    vec![0.05, 0.10]
}
impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            kind: EmaKind::default(),
            halflife_kimg: d_halflife(),
            rampup_ratio: d_rampup_ratio(),
            std: d_ema_std(),
            stds: d_ema_stds(),
        }
    }
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Images per optimizer step.
    #[serde(default = "d_batch")]
    pub batch: usize,
    /// Images per forward/backward pass (gradient accumulation makes up `batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_gpu: Option<usize>,
    /// Training length in kimg.
    #[serde(default = "d_duration")]
    pub duration_kimg: f64,
    /// Seed of the network init, data order and every noise stream.
    #[serde(default)]
    pub seed: u64,
    /// A tick (stats line) every this many kimg.
    #[serde(default = "d_tick")]
    pub tick_kimg: f64,
    /// Network snapshot (EMA) every this many ticks; 0 = only at the end.
    #[serde(default = "d_snapshot_ticks")]
    pub snapshot_ticks: u64,
    /// Training state every this many ticks; 0 = only at the end.
    #[serde(default = "d_state_ticks")]
    pub state_ticks: u64,
    /// Overrides the network's activation dropout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "d_device")]
    pub device: String,
    /// Bins in ln σ̂ over [ln 0.002, ln 80] of the per-tick loss statistics.
    #[serde(default = "d_stat_bins")]
    pub stat_bins: usize,
    /// On several ranks, compare a checksum of the weights across ranks every this many
    /// ticks and stop if any rank differs; 0 = only at the end. No effect on one process.
    #[serde(default = "d_check_ticks")]
    pub check_ticks: u64,
}
fn d_check_ticks() -> u64 {
    1
}
fn d_batch() -> usize {
    512
}
fn d_duration() -> f64 {
    200000.0
}
fn d_tick() -> f64 {
    50.0
}
fn d_snapshot_ticks() -> u64 {
    50
}
fn d_state_ticks() -> u64 {
    500
}
fn d_device() -> String {
    "cpu".into()
}
fn d_stat_bins() -> usize {
    32
}
impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch: d_batch(),
            batch_gpu: None,
            duration_kimg: d_duration(),
            seed: 0,
            tick_kimg: d_tick(),
            snapshot_ticks: d_snapshot_ticks(),
            state_ticks: d_state_ticks(),
            dropout: None,
            device: d_device(),
            stat_bins: d_stat_bins(),
            check_ticks: d_check_ticks(),
        }
    }
}

impl TrainConfig {
    /// Images per forward pass.
    pub fn round_batch(&self) -> usize {
        self.batch_gpu.unwrap_or(self.batch).min(self.batch)
    }

    /// The parsed `device`: None for the CPU, Some(ordinal) for CUDA.
    pub fn device_ordinal(&self) -> Result<Option<usize>> {
        lossfloor_ops::parse_device_name(&self.device).map_err(|e| anyhow::anyhow!("train.{e}"))
    }

    /// The candle device named by `device`.
    pub fn device(&self) -> Result<Device> {
        lossfloor_ops::open_device(&self.device).map_err(|e| anyhow::anyhow!("train.{e}"))
    }
}

/// `[sample]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Seeds of the sample grid (`0-63`, `1,5,9`).
    #[serde(default = "d_seeds")]
    pub seeds: String,
    /// Heun steps.
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// A grid every this many ticks; 0 = off.
    #[serde(default)]
    pub every_ticks: u64,
    /// Classifier-free guidance weight W of the grids (class-conditional networks trained
    /// with label dropout; see `lossfloor sample --guidance`). None = plain sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
}
fn d_seeds() -> String {
    "0-63".into()
}
fn d_steps() -> usize {
    18
}
impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            seeds: d_seeds(),
            steps: d_steps(),
            every_ticks: 0,
            guidance: None,
        }
    }
}

/// `[optimal_loss]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimalLossConfig {
    /// A `lossfloor estimate` curve file of the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<PathBuf>,
    /// Or: estimate the curve of the training data when the run starts, with this budget
    /// (`[optimal_loss.estimate]`), into `RUN_DIR/optimal-loss-curve.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CurveEstimateConfig>,
    /// The unconditional curve of the training data, for a class-conditional network with
    /// label dropout 0 < p (then `curve` is the conditional one and the floor their mixture;
    /// see `floor_mix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconditional_curve: Option<PathBuf>,
    /// Accept a curve whose recorded data (spec, rows, dimension, x-flip, limit) differs
    /// from the training data's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_mismatch: bool,
}

/// `[optimal_loss.estimate]`: the estimator and budget of a curve computed at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurveEstimateConfig {
    /// Estimator: `exact`, `dol`, `cdol`, `snis` or `gaussian` (see `lossfloor estimate`).
    #[serde(default = "d_est_method")]
    pub method: String,
    /// Monte-Carlo queries per σ̂ (the budget; the exact estimator costs about
    /// 2·queries·N·D flops per σ̂).
    #[serde(default = "d_est_queries")]
    pub queries: usize,
    /// Smallest σ̂ of the log-spaced grid.
    #[serde(default = "d_est_sigma_min")]
    pub sigma_min: f64,
    /// Largest σ̂ of the grid.
    #[serde(default = "d_est_sigma_max")]
    pub sigma_max: f64,
    /// Number of grid points.
    #[serde(default = "d_est_points")]
    pub points: usize,
    /// Seed of the queries.
    #[serde(default)]
    pub seed: u64,
}
fn d_est_method() -> String {
    "exact".into()
}
fn d_est_queries() -> usize {
    256
}
fn d_est_sigma_min() -> f64 {
    0.002
}
fn d_est_sigma_max() -> f64 {
    80.0
}
fn d_est_points() -> usize {
    32
}

impl CurveEstimateConfig {
    /// The log-spaced σ̂ grid: `points` values from sigma_min to sigma_max, both included.
    pub fn sigmas(&self) -> Vec<f64> {
        let (a, b) = (self.sigma_min.ln(), self.sigma_max.ln());
        let k = self.points.max(2);
        (0..k)
            .map(|i| (a + (b - a) * i as f64 / (k - 1) as f64).exp())
            .collect()
    }

    /// The estimator parameters (subset size and C at their defaults).
    pub fn params(&self) -> Result<lossfloor_optimal::EstimateParams> {
        let method = self
            .method
            .parse()
            .map_err(|e| anyhow!("optimal_loss.estimate.method: {e}"))?;
        Ok(lossfloor_optimal::EstimateParams {
            method,
            queries: self.queries,
            subset: None,
            c: None,
            seed: self.seed,
        })
    }
}

impl Config {
    /// Reads `path`, applies `overrides` (`key.sub=value`) and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the config file", path.display()))?;
        Self::parse(&text, overrides).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    /// Parses config text, applies `overrides` and checks the result. A TOML error is
    /// blamed on what caused it: a line of `text` (`line L, column C: …`) or one `--set`.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Config> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| anyhow!("{}", toml_error_in(text, &e)))?;
        let cfg: Config = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| anyhow!("{}", toml_error_in(text, &e)))?
        } else {
            for o in overrides {
                apply_override(&mut table, o)?;
            }
            match toml::Value::Table(table.clone()).try_into::<Config>() {
                Ok(cfg) => cfg,
                Err(e) => return Err(blame_toml_error(text, overrides, &e)),
            }
        };
        check_network_keys(&table, &cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The resolved config as TOML (every key with its value, defaults included).
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// The loss weight actually used.
    pub fn loss_weight(&self) -> LossWeight {
        match (self.loss.weight, self.schedule.kind) {
            (LossWeight::Auto, ScheduleKind::OptimalLoss) => LossWeight::OptimalLoss,
            (LossWeight::Auto, ScheduleKind::Native) => LossWeight::Native,
            (w, _) => w,
        }
    }

    /// The network config with `[train] dropout` applied.
    pub fn effective_network(&self) -> NetworkConfig {
        let mut n = self.network.clone();
        if let Some(p) = self.train.dropout {
            n.set_dropout(p);
        }
        n
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        self.data
            .spec
            .parse::<lossfloor_data::DataSpec>()
            .map_err(|e| anyhow!("data.spec: {e}"))?;
        self.check_finite()?;
        self.check_sizes()?;
        self.effective_network()
            .validate()
            .map_err(|e| anyhow!("network: {e}"))?;
        self.precond.build().map_err(|e| anyhow!("precond: {e}"))?;
        let net = self.effective_network();
        let (in_channels, _) = net.input_shape();
        if net.output_channels() != in_channels {
            bail!(
                "network.out_channels = {} must equal network.in_channels = {in_channels}: the \
                 denoiser's output is an image like its input",
                net.output_channels()
            );
        }
        self.augment.validate(&net)?;
        let t = &self.train;
        if t.batch == 0 {
            bail!("train.batch must be positive");
        }
        if let Some(bg) = t.batch_gpu {
            if bg == 0 || !t.batch.is_multiple_of(bg.min(t.batch)) {
                bail!(
                    "train.batch_gpu = {bg} must be positive and divide train.batch = {}",
                    t.batch
                );
            }
        }
        if !(t.duration_kimg > 0.0 && t.tick_kimg > 0.0) {
            bail!("train.duration_kimg and train.tick_kimg must be positive");
        }
        if let Some(p) = t.dropout {
            if !(0.0..1.0).contains(&p) {
                bail!("train.dropout = {p} must lie in [0, 1)");
            }
        }
        if t.stat_bins == 0 {
            bail!("train.stat_bins must be positive");
        }
        t.device_ordinal()?;
        lossfloor_sampler::parse_seeds(&self.sample.seeds)
            .map_err(|e| anyhow!("sample.seeds = {:?}: {e}", self.sample.seeds))?;
        if self.sample.steps == 0 {
            bail!("sample.steps must be at least 1");
        }
        let o = &self.optimizer;
        if !(o.lr >= 0.0 && o.eps > 0.0 && o.weight_decay >= 0.0 && o.rampup_kimg >= 0.0) {
            bail!("optimizer: lr, weight_decay, rampup_kimg must be >= 0 and eps > 0");
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            bail!("optimizer.betas must lie in [0, 1)");
        }
        if o.decay_kimg.is_some_and(|d| d <= 0.0) || o.grad_clip.is_some_and(|c| c <= 0.0) {
            bail!("optimizer.decay_kimg and optimizer.grad_clip must be positive when set");
        }
        if !(self.ema.halflife_kimg >= 0.0 && self.ema.rampup_ratio >= 0.0) {
            bail!("ema.halflife_kimg and ema.rampup_ratio must be >= 0");
        }
        // σ_rel falls as γ grows from 0 (EDM2's range), so each σ_rel ≤ σ_rel(0) = 1/√12
        // has one γ ≥ 0.
        for (k, &std) in self.ema.stds.iter().enumerate() {
            crate::posthoc_ema::check_std(std).map_err(|e| anyhow!("ema.stds[{k}]: {e}"))?;
            if self.ema.stds[..k]
                .iter()
                .any(|&o| format!("{o:.3}") == format!("{std:.3}"))
            {
                bail!(
                    "ema.stds[{k}] = {std} repeats a profile (stds are told apart to 3 decimals)"
                );
            }
        }
        if !(self.ema.std > 0.0 && self.ema.std <= crate::ema::MAX_POWER_STD) {
            bail!(
                "ema.std = {} must lie in (0, {:.4}] (σ_rel of a power-function EMA with γ ≥ 0)",
                self.ema.std,
                crate::ema::MAX_POWER_STD
            );
        }
        let s = &self.schedule;
        if !(s.a > 0.0 && s.w_max > 0.0 && s.bump_std > 0.0 && s.delta > 0.0) {
            bail!("schedule: a, w_max, bump_std and delta must be positive");
        }
        if s.bump_scale.is_some_and(|b| b < 0.0) {
            bail!("schedule.bump_scale must be >= 0");
        }
        if !(s.sigma_min > 0.0 && s.sigma_max > s.sigma_min && s.bins > 0) {
            bail!("schedule: need 0 < sigma_min < sigma_max and bins > 0");
        }
        if !(s.refresh_kimg > 0.0 && (0.0..1.0).contains(&s.loss_ema) && s.gap_floor > 0.0) {
            bail!("schedule: refresh_kimg > 0, 0 <= loss_ema < 1 and gap_floor > 0 required");
        }
        if !(0.0..=1.0).contains(&s.mix) {
            bail!("schedule.mix must lie in [0, 1]");
        }
        if self.eval.queries < 2 {
            bail!("eval.queries = {} must be at least 2", self.eval.queries);
        }
        if self.eval.test != "auto" && self.eval.test != "none" {
            self.eval
                .test
                .parse::<lossfloor_data::DataSpec>()
                .map_err(|e| anyhow!("eval.test: expected auto, none or a data spec: {e}"))?;
        }
        let needs_curve =
            s.kind == ScheduleKind::OptimalLoss || self.loss_weight() == LossWeight::OptimalLoss;
        let ol = &self.optimal_loss;
        if needs_curve && ol.curve.is_none() && ol.estimate.is_none() {
            bail!(
                "the optimal-loss schedule / weight needs optimal_loss.curve (a curve file) or \
                 [optimal_loss.estimate] (a curve computed at start)"
            );
        }
        crate::floor_mix::check_floor_keys(self)?;
        crate::floor_mix::check_sample_guidance(self)?;
        if let Some(e) = &ol.estimate {
            if ol.curve.is_some() {
                bail!("optimal_loss: set either curve or [optimal_loss.estimate], not both");
            }
            e.params()?;
            if !(e.queries >= 1
                && e.sigma_min > 0.0
                && e.sigma_max.is_finite()
                && e.sigma_max > e.sigma_min
                && e.points >= 2)
            {
                bail!(
                    "optimal_loss.estimate: need queries >= 1, 0 < sigma_min < sigma_max and \
                     points >= 2"
                );
            }
        }
        Ok(())
    }

    /// Every float of the config must be a finite number: range checks such as `lr >= 0`
    /// let `inf` through, and NaN fails them with a message that does not name the key.
    fn check_finite(&self) -> Result<()> {
        let o = &self.optimizer;
        let (e, s, t) = (&self.ema, &self.schedule, &self.train);
        let mut keys: Vec<(String, f64)> = vec![
            ("optimizer.lr".into(), o.lr),
            ("optimizer.betas[0]".into(), o.betas[0]),
            ("optimizer.betas[1]".into(), o.betas[1]),
            ("optimizer.eps".into(), o.eps),
            ("optimizer.weight_decay".into(), o.weight_decay),
            ("optimizer.rampup_kimg".into(), o.rampup_kimg),
            ("ema.halflife_kimg".into(), e.halflife_kimg),
            ("ema.rampup_ratio".into(), e.rampup_ratio),
            ("ema.std".into(), e.std),
            ("schedule.a".into(), s.a),
            ("schedule.w_max".into(), s.w_max),
            ("schedule.bump_std".into(), s.bump_std),
            ("schedule.delta".into(), s.delta),
            ("schedule.sigma_min".into(), s.sigma_min),
            ("schedule.sigma_max".into(), s.sigma_max),
            ("schedule.refresh_kimg".into(), s.refresh_kimg),
            ("schedule.loss_ema".into(), s.loss_ema),
            ("schedule.gap_floor".into(), s.gap_floor),
            ("schedule.mix".into(), s.mix),
            ("train.duration_kimg".into(), t.duration_kimg),
            ("train.tick_kimg".into(), t.tick_kimg),
        ];
        let optional = [
            ("optimizer.decay_kimg", o.decay_kimg),
            ("optimizer.grad_clip", o.grad_clip),
            ("schedule.bump_scale", s.bump_scale),
            ("schedule.bump_mean", s.bump_mean),
            ("train.dropout", t.dropout),
            ("precond.sigma_data", self.precond.sigma_data),
        ];
        keys.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
        );
        if let Some(est) = &self.optimal_loss.estimate {
            keys.push(("optimal_loss.estimate.sigma_min".into(), est.sigma_min));
            keys.push(("optimal_loss.estimate.sigma_max".into(), est.sigma_max));
        }
        match &self.network {
            NetworkConfig::SongUNet(c) => {
                keys.push(("network.dropout".into(), c.dropout));
                keys.push(("network.label_dropout".into(), c.label_dropout));
                for (i, f) in c.resample_filter.iter().enumerate() {
                    keys.push((format!("network.resample_filter[{i}]"), *f));
                }
            }
            NetworkConfig::Dhariwal(c) => {
                keys.push(("network.dropout".into(), c.dropout));
                keys.push(("network.label_dropout".into(), c.label_dropout));
            }
            NetworkConfig::DiT(c) => {
                keys.push(("network.mlp_ratio".into(), c.mlp_ratio));
                keys.push(("network.class_dropout_prob".into(), c.class_dropout_prob));
            }
        }
        if let Some((k, v)) = keys.iter().find(|(_, v)| !v.is_finite()) {
            bail!("{k} = {v} is not allowed: expected a finite number");
        }
        Ok(())
    }

    /// Values that size memory are bounded before anything is loaded or allocated: the
    /// σ̂ grid and query counts of the estimator and evaluator, the loss-statistics bins, and
    /// a lower bound on what one training round needs ([`Config::round_memory`]), against the
    /// machine's total memory (`lossfloor_data::limits::memory_limit`).
    fn check_sizes(&self) -> Result<()> {
        use lossfloor_data::limits::check_memory;
        // Bins are a few counters each; a million is far past any use, and bounds the
        // per-tick statistics and the schedule's tables.
        const MAX_BINS: usize = 1_000_000;
        if self.train.stat_bins > MAX_BINS {
            bail!(
                "train.stat_bins = {} is more than {MAX_BINS}",
                self.train.stat_bins
            );
        }
        if self.schedule.bins > MAX_BINS {
            bail!(
                "schedule.bins = {} is more than {MAX_BINS}",
                self.schedule.bins
            );
        }
        if let Some(e) = &self.optimal_loss.estimate {
            // The same bound as `lossfloor estimate --sigmas logspace:…:K`.
            const MAX_POINTS: usize = 10_000;
            if e.points > MAX_POINTS {
                bail!(
                    "optimal_loss.estimate.points = {} is more than {MAX_POINTS}",
                    e.points
                );
            }
            // The estimator keeps one f64 per query and σ̂, and gathers one σ̂ at a time.
            let need = (e.queries as u128)
                .checked_mul(e.points as u128 + 1)
                .and_then(|v| v.checked_mul(8));
            check_memory(
                &format!(
                    "optimal_loss.estimate.queries = {} with {} points (an 8-byte value per \
                     query and σ̂)",
                    e.queries, e.points
                ),
                need,
            )
            .map_err(|m| anyhow!("{m}"))?;
        }
        // The evaluator stores a row index (8 bytes) per query and σ̂, for the training
        // and the held-out data: at least 16 bytes per query even with a single σ̂.
        check_memory(
            &format!(
                "eval.queries = {} (at least 16 bytes per query)",
                self.eval.queries
            ),
            (self.eval.queries as u128).checked_mul(16),
        )
        .map_err(|m| anyhow!("{m}"))?;
        let (what, need) = self.round_memory();
        check_memory(&what, need).map_err(|m| anyhow!("{m}"))
    }

    /// A lower bound on the memory of one training round, overflow-checked (`None` when it
    /// overflows), and a description naming the keys it depends on. It counts only what is
    /// certain to exist at once:
    /// - the round's clean and noised images as float32, `2 × round_batch × C·H·W × 4` bytes
    ///   (`round_batch` = `train.batch_gpu`, or `train.batch` without it);
    /// - the network's first feature map, float32, at full resolution for the U-Nets
    ///   (`round_batch × model_channels × H·W`) and per token for DiT
    ///   (`round_batch × (H/patch)² × hidden_size`);
    /// - the weights, their gradients, Adam's two moments and the EMA (5 float32 copies) of
    ///   one 3×3 convolution at the widest level (`(model_channels · max channel_mult)² · 9`
    ///   weights), or for DiT of the attention projections (`depth · 4 · hidden_size²`).
    ///
    /// The real need is several times larger; a config whose lower bound exceeds the
    /// machine's memory can never run, whatever is freed.
    fn round_memory(&self) -> (String, Option<u128>) {
        let net = self.effective_network();
        let t = &self.train;
        let rb = t.round_batch() as u128;
        let (ch, res) = net.input_shape();
        let (ch, res) = (ch as u128, res as u128);
        let pixels = res.checked_mul(res);
        let (width_key, width, feature, weights) = match &net {
            NetworkConfig::SongUNet(c) => unet_bounds(c.model_channels, &c.channel_mult, pixels),
            NetworkConfig::Dhariwal(c) => unet_bounds(c.model_channels, &c.channel_mult, pixels),
            NetworkConfig::DiT(c) => {
                let h = c.hidden_size as u128;
                let grid = (c.input_size / c.patch_size.max(1)) as u128;
                let tokens = grid.checked_mul(grid);
                let feature = tokens.and_then(|n| n.checked_mul(h));
                let weights = h
                    .checked_mul(h)
                    .and_then(|v| v.checked_mul(4))
                    .and_then(|v| v.checked_mul(c.depth as u128));
                ("hidden_size", c.hidden_size, feature, weights)
            }
        };
        let images = pixels
            .and_then(|p| p.checked_mul(ch))
            .and_then(|d| d.checked_mul(rb))
            .and_then(|v| v.checked_mul(2 * 4));
        let feature = feature
            .and_then(|f| f.checked_mul(rb))
            .and_then(|v| v.checked_mul(4));
        let weights = weights.and_then(|w| w.checked_mul(5 * 4));
        let need = images
            .zip(feature)
            .and_then(|(a, b)| a.checked_add(b))
            .zip(weights)
            .and_then(|(a, b)| a.checked_add(b));
        let batch = match t.batch_gpu {
            Some(bg) => format!("train.batch = {}, train.batch_gpu = {bg}", t.batch),
            None => format!("train.batch = {}", t.batch),
        };
        let what = format!(
            "one training round with {batch}, network.{width_key} = {width} and \
             {ch}x{res}x{res} images (its clean and noised images, the first feature map, and \
             weights, gradients, Adam moments and EMA of the widest layer)"
        );
        (what, need)
    }
}

/// The first feature map's values per image (`model_channels × H·W`) and the weights of one
/// 3×3 convolution at the widest level (`(model_channels · max channel_mult)² · 9`) of a
/// U-Net, overflow-checked; with the key they depend on.
fn unet_bounds(
    model_channels: usize,
    channel_mult: &[usize],
    pixels: Option<u128>,
) -> (&'static str, usize, Option<u128>, Option<u128>) {
    let mc = model_channels as u128;
    let widest = mc.checked_mul(channel_mult.iter().copied().max().unwrap_or(1) as u128);
    let feature = pixels.and_then(|p| p.checked_mul(mc));
    let weights = widest
        .and_then(|w| w.checked_mul(w))
        .and_then(|v| v.checked_mul(9));
    ("model_channels", model_channels, feature, weights)
}

/// A TOML error as one line: `line L, column C: MESSAGE (at `SOURCE LINE`)` when it has a
/// position in `text`, else the bare message (the parser's multi-line excerpt is dropped).
pub fn toml_error_in(text: &str, e: &toml::de::Error) -> String {
    let msg = one_line(e.message());
    let Some(span) = e.span() else {
        return msg;
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let source = text[line_start..].lines().next().unwrap_or("").trim();
    if source.is_empty() {
        format!("line {line}, column {column}: {msg}")
    } else {
        format!("line {line}, column {column}: {msg} (at `{source}`)")
    }
}

/// Joins a multi-line message into one line, and says "a table" where serde names a Rust
/// type ("expected struct TrainConfig").
fn one_line(msg: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut it = msg.split_whitespace();
    while let Some(w) = it.next() {
        if w == "struct" && words.last().is_some_and(|l| l == "expected") {
            let name = it.next().unwrap_or("");
            let tail = name.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            words.push("a".into());
            words.push(format!("table{tail}"));
            continue;
        }
        if words.last().is_some_and(|l| l == "expected") {
            let core = w.trim_end_matches(|c: char| !c.is_alphanumeric());
            let tail = &w[core.len()..];
            let plain = match core {
                "usize" | "u64" | "u32" | "u16" | "u8" => Some("a non-negative integer"),
                "i64" | "i32" => Some("an integer"),
                "f64" | "f32" => Some("a number"),
                "bool" => Some("true or false"),
                _ => None,
            };
            if let Some(plain) = plain {
                words.push(format!("{plain}{tail}"));
                continue;
            }
        }
        words.push(w.into());
    }
    words.join(" ")
}

/// Finds what made the config with `overrides` fail to deserialise with `err`: the file
/// itself (when it fails alone with the same message, reported at its line), or the first
/// `--set` after which it fails.
fn blame_toml_error(text: &str, overrides: &[String], err: &toml::de::Error) -> anyhow::Error {
    if let Err(e) = toml::from_str::<Config>(text) {
        if e.message() == err.message() {
            return anyhow!("{}", toml_error_in(text, &e));
        }
    }
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return anyhow!("{}", one_line(err.message()));
    };
    for o in overrides {
        if apply_override(&mut table, o).is_err() {
            break;
        }
        if let Err(e) = toml::Value::Table(table.clone()).try_into::<Config>() {
            if e.message() == err.message() {
                return anyhow!("--set {o}: {}", one_line(e.message()));
            }
        }
    }
    anyhow!("after the --set overrides: {}", one_line(err.message()))
}

/// The keys (`section.key`) whose values differ between two configs, each as
/// `key: A vs B` with the values as TOML; empty when they agree.
pub fn config_differences(a: &Config, b: &Config) -> Result<Vec<String>> {
    fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(toml::Value::Table(ta)), Some(toml::Value::Table(tb))) => {
                let mut keys: Vec<&String> = ta.keys().chain(tb.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, ta.get(k), tb.get(k), out);
                }
            }
            (a, b) if a != b => {
                let show = |v: Option<&toml::Value>| v.map_or("(unset)".into(), |v| v.to_string());
                out.push(format!("{prefix}: {} vs {}", show(a), show(b)));
            }
            _ => {}
        }
    }
    let (a, b) = (toml::Value::try_from(a)?, toml::Value::try_from(b)?);
    let mut out = Vec::new();
    walk("", Some(&a), Some(&b), &mut out);
    Ok(out)
}

/// Applies one `key.sub=value` override to a parsed TOML table.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {spec:?}: expected KEY=VALUE (e.g. train.batch=64)"))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {spec:?}: malformed key {key:?}");
    }
    let value = parse_value(raw.trim());
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| anyhow!("--set {spec:?}: {p} is not a table"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// A TOML value (`64`, `1e-3`, `true`, `[1, 2]`, `"x"`), or the raw text as a string.
fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The nets' config structs accept unknown keys; reject them here by comparing the keys
/// given under `[network]` with those the parsed config serialises to.
fn check_network_keys(input: &toml::Table, cfg: &Config) -> Result<()> {
    let Some(given) = input.get("network").and_then(|v| v.as_table()) else {
        return Ok(());
    };
    let known = toml::Value::try_from(&cfg.network)?;
    let known = known.as_table().cloned().unwrap_or_default();
    let unknown: Vec<&String> = given.keys().filter(|k| !known.contains_key(*k)).collect();
    if let Some(k) = unknown.first() {
        let mut names: Vec<&String> = known.keys().collect();
        names.sort();
        bail!(
            "unknown key network.{k} for arch {:?}; expected one of: {}",
            cfg.network.arch(),
            names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
