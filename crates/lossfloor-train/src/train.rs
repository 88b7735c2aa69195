//! The training loop.
//!
//! One optimizer step takes `batch` images in `batch / batch_gpu` rounds whose gradients
//! are summed (gradient accumulation). Each image gets σ̂ from the schedule, noise
//! n = σ̂ε, and the loss w(σ̂)·‖D(x + n; σ̂) − x‖² summed over pixels; the step minimises
//! the sum over the batch divided by `batch` (EDM's `loss.sum() / batch_gpu_total`).
//!
//! Determinism: the data order is a ChaCha8 permutation per epoch (key: seed, epoch), the
//! images of a step are the positions `nimg..nimg + batch` of that order, and every noise
//! draw of a round comes from a ChaCha8 stream keyed by (seed, step, round), and so do the
//! network's dropout masks (its `DropoutRng` is reseeded before each forward pass). A run
//! that is stopped at a training state and resumed therefore repeats exactly what the
//! uninterrupted run would have done, bit for bit. With `[augment] p > 0` the clean images
//! of a round go through EDM's augmentation pipe first ([`crate::augment_step`]).
//!
//! On several ranks (`mpirun`), each rank computes its share of the rounds and the ranks
//! sum their gradients before the one optimizer step ([`crate::data_parallel`]); rank 0
//! alone writes the run directory.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use lossfloor_augment::LABEL_DIM;
use lossfloor_comm::{Communicator, SingleProcess};
use lossfloor_core::Process;
use lossfloor_data::Dataset;
use lossfloor_nets::checkpoint::{save_network, varmap_tensors, NetworkSpec, PrecondSpec};
use lossfloor_nets::flops::training_macs;
use lossfloor_nets::Network;
use lossfloor_optimal::Curve;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::json;

use crate::adam::{clip_global_norm, global_norm, learning_rate, nan_to_num, Adam};
use crate::augment_step::augment_round;
use crate::config::{
    Config, CurveEstimateConfig, EmaKind, GapSource, LossWeight, NetworkConfig, ScheduleKind,
};
use crate::data_parallel::{
    check_same_config, check_same_resume, check_same_weights, rank_device, GradientReducer,
    ImageStats, RankPlan,
};
use crate::ema::{ema_beta, Ema};
use crate::eval_gap::{EvalRecord, RunEvaluator, TensorsDenoiser};
use crate::posthoc_ema::{profile_snapshot_path, PowerProfiles};
use crate::run_dir::{append_line, remove_leftovers, set_aside_stale_logs, trim_stats};
pub use crate::run_dir::{ESTIMATED_CURVE_FILE, EVAL_FILE, STATS_FILE};
use crate::schedule::{AdaptiveSchedule, BinStats, OptimalWeight};
use crate::state::{latest_state, load_state, save_state, state_path, StateMeta, StateTensors};

/// RNG stream ids.
const STREAM_PERM: u64 = 1;
const STREAM_NOISE: u64 = 2;
const STREAM_DROPOUT: u64 = 3;
/// Keyed by (seed, step, image position in the step's batch): see [`crate::augment_step`].
pub(crate) const STREAM_AUGMENT: u64 = 4;

/// A ChaCha8 stream keyed by (seed, a, b, stream).
pub fn stream_rng(seed: u64, a: u64, b: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&a.to_le_bytes());
    key[16..24].copy_from_slice(&b.to_le_bytes());
    key[24..].copy_from_slice(&stream.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// The permutation of `0..n` used in epoch `epoch`.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<u32> {
    let mut rng = stream_rng(seed, epoch, 0, STREAM_PERM);
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

/// How to continue from earlier states.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Start fresh; fail if the run directory already holds training states.
    No,
    /// Continue from the latest state in the run directory, or start fresh if none.
    Auto,
    /// Continue from this state file.
    Path(PathBuf),
}

/// The weight on ‖D − x0‖².
enum Weight {
    Native,
    Optimal(OptimalWeight),
}

/// A training run in memory.
pub struct Trainer {
    cfg: Config,
    device: Device,
    dataset: Dataset,
    run_dir: PathBuf,
    varmap: VarMap,
    net: Box<dyn Network>,
    net_cfg: NetworkConfig,
    names: Vec<String>,
    vars: Vec<Var>,
    adam: Adam,
    ema: Ema,
    /// Post-hoc EMA profiles (`[ema] kind = "power"` with `stds`).
    profiles: Option<PowerProfiles>,
    process: Box<dyn Process>,
    weight: Weight,
    adaptive: Option<AdaptiveSchedule>,
    curve: Option<Curve>,
    evaluator: RunEvaluator,
    /// Optimizer steps taken.
    pub step: u64,
    /// Images seen.
    pub nimg: u64,
    cur_tick: u64,
    tick_start_nimg: u64,
    elapsed_before: f64,
    elapsed_total: f64,
    perm: (u64, Vec<u32>),
    /// Show a progress bar (on by default; off in tests).
    pub progress: bool,
    /// The ranks this run trains on (one process: [`SingleProcess`]).
    comm: Rc<dyn Communicator>,
    /// This rank's rounds of each step.
    plan: RankPlan,
    /// How the ranks' gradients are summed.
    reducer: GradientReducer,
}

impl Trainer {
    /// Sets up a fresh run on `dataset` (already loaded, with x-flip / limit applied).
    pub fn new(cfg: Config, dataset: Dataset, run_dir: PathBuf) -> Result<Self> {
        Self::new_in(cfg, dataset, run_dir, Rc::new(SingleProcess))
    }

    /// [`Trainer::new`] as one rank of `comm`: every rank builds the same network from the
    /// same seed; rank 0 alone writes the run directory.
    pub fn new_in(
        cfg: Config,
        dataset: Dataset,
        run_dir: PathBuf,
        comm: Rc<dyn Communicator>,
    ) -> Result<Self> {
        let plan = RankPlan::new(&cfg, comm.rank(), comm.size())?;
        check_same_config(comm.as_ref(), &cfg.to_toml()?, dataset.len())?;
        let device = rank_device(&cfg, comm.as_ref())?;
        let net_cfg = cfg.effective_network();
        let (c, r) = net_cfg.input_shape();
        let shape = dataset.shape();
        if shape.channels != c || shape.height != r || shape.width != r {
            bail!(
                "data {} has images {shape} but the network takes {c}x{r}x{r}",
                dataset.source()
            );
        }
        if dataset.is_empty() {
            bail!("data {} is empty", dataset.source());
        }
        let label_dim = net_cfg.label_dim();
        if label_dim > 0 {
            match dataset.num_classes() {
                Some(k) if k <= label_dim => {}
                Some(k) => bail!("data has {k} classes but the network label_dim is {label_dim}"),
                None => bail!("the network is class-conditional but the data has no labels"),
            }
        }
        let varmap = VarMap::new();
        let net = net_cfg.build(&varmap, &device, cfg.train.seed)?;
        probe_forward(net.as_ref(), &net_cfg, &device)?;
        let tv = net.trainable_vars(&varmap)?;
        let names: Vec<String> = tv.iter().map(|(n, _)| n.clone()).collect();
        let vars: Vec<Var> = tv.into_iter().map(|(_, v)| v).collect();
        let adam = Adam::new(&vars, &cfg.optimizer)?;
        let ema = Ema::new(&vars)?;
        let profiles = match cfg.ema.kind {
            EmaKind::Power if !cfg.ema.stds.is_empty() => {
                Some(PowerProfiles::new(&vars, &cfg.ema.stds)?)
            }
            _ => None,
        };
        let process = cfg.precond.build()?;
        // The floor: the curve, or for a labelled run the label-dropout mixture (floor_mix).
        let curve =
            crate::floor_mix::prepare_floor_in(comm.as_ref(), &cfg, &dataset, &run_dir, &device)?;
        let evaluator = RunEvaluator::new(
            curve.as_ref(),
            &cfg.eval,
            &cfg.data.spec,
            dataset.len(),
            cfg.train.round_batch(),
        )?;
        let optimal = || -> Result<OptimalWeight> {
            let c = curve
                .clone()
                .ok_or_else(|| anyhow!("optimal_loss.curve is required"))?;
            OptimalWeight::new(&cfg.schedule, c)
        };
        let weight = match cfg.loss_weight() {
            LossWeight::OptimalLoss => Weight::Optimal(optimal()?),
            _ => Weight::Native,
        };
        let adaptive = match cfg.schedule.kind {
            ScheduleKind::OptimalLoss => Some(AdaptiveSchedule::new(&cfg.schedule, optimal()?)),
            ScheduleKind::Native => None,
        };
        let perm = (0, epoch_permutation(cfg.train.seed, 0, dataset.len()));
        let reducer = GradientReducer::new(&comm, &device)?;
        Ok(Self {
            cfg,
            device,
            dataset,
            run_dir,
            varmap,
            net,
            net_cfg,
            names,
            vars,
            adam,
            ema,
            profiles,
            process,
            weight,
            adaptive,
            curve,
            evaluator,
            step: 0,
            nimg: 0,
            cur_tick: 0,
            tick_start_nimg: 0,
            elapsed_before: 0.0,
            elapsed_total: 0.0,
            perm,
            progress: true,
            comm,
            plan,
            reducer,
        })
    }

    /// Whether this process writes the run directory and prints progress (rank 0).
    pub fn is_writer(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Parameter names (sorted), in the order of every per-parameter list.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Current weights, EMA and Adam moments.
    pub fn tensors(&self) -> StateTensors {
        StateTensors {
            net: self.vars.iter().map(|v| v.as_tensor().clone()).collect(),
            ema: self.ema.tensors.clone(),
            adam_m: self.adam.m.clone(),
            adam_v: self.adam.v.clone(),
            profiles: self
                .profiles
                .as_ref()
                .map(|p| p.emas.iter().map(|e| e.tensors.clone()).collect())
                .unwrap_or_default(),
        }
    }

    fn meta(&self, elapsed: f64) -> Result<StateMeta> {
        Ok(StateMeta {
            format: 1,
            step: self.step,
            nimg: self.nimg,
            adam_step: self.adam.step,
            cur_tick: self.cur_tick,
            tick_start_nimg: self.tick_start_nimg,
            seed: self.cfg.train.seed,
            elapsed_s: elapsed,
            schedule: self.adaptive.as_ref().map(|a| a.state.clone()),
            config: self.cfg.to_toml()?,
        })
    }

    /// Writes the training state of the current step; returns its path.
    pub fn save_state(&self, elapsed: f64) -> Result<PathBuf> {
        let path = state_path(&self.run_dir, self.nimg);
        save_state(&path, &self.names, &self.tensors(), &self.meta(elapsed)?)?;
        Ok(path)
    }

    /// Continues from a training state. The state's config must agree with this run's in
    /// everything but the duration, intervals, sampling and device.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let n_profiles = self.profiles.as_ref().map_or(0, |p| p.stds.len());
        let (t, meta) =
            load_state(path, &self.names, n_profiles, &self.device).with_context(|| {
                if n_profiles > 0 {
                    format!("(the run tracks {n_profiles} post-hoc EMA profiles, ema.stds)")
                } else {
                    String::new()
                }
            })?;
        let old = Config::parse(&meta.config, &[])
            .with_context(|| format!("{}: the stored config", path.display()))?;
        let comparable = |c: &Config| {
            let mut c = c.clone();
            c.train.duration_kimg = 0.0;
            c.train.tick_kimg = 1.0;
            c.train.snapshot_ticks = 0;
            c.train.state_ticks = 0;
            c.train.check_ticks = 0;
            c.train.device = String::new();
            c.sample = Default::default();
            c
        };
        if comparable(&old) != comparable(&self.cfg) {
            let diff =
                crate::config::config_differences(&comparable(&old), &comparable(&self.cfg))?;
            bail!(
                "{}: the training state was made with a different config ({}; state vs now); \
                 only train.duration_kimg, tick_kimg, snapshot_ticks, state_ticks, check_ticks, \
                 device and [sample] may change on resume",
                path.display(),
                diff.join(", ")
            );
        }
        for (v, x) in self.vars.iter().zip(&t.net) {
            v.set(x)?;
        }
        self.ema.tensors = t.ema;
        if let Some(p) = self.profiles.as_mut() {
            for (ema, tensors) in p.emas.iter_mut().zip(t.profiles) {
                ema.tensors = tensors;
            }
        }
        self.adam.m = t.adam_m;
        self.adam.v = t.adam_v;
        self.adam.step = meta.adam_step;
        self.step = meta.step;
        self.nimg = meta.nimg;
        self.cur_tick = meta.cur_tick;
        self.tick_start_nimg = meta.tick_start_nimg;
        self.elapsed_before = meta.elapsed_s;
        match (&mut self.adaptive, meta.schedule) {
            (Some(a), Some(s)) => a.set_state(s)?,
            (None, None) => {}
            _ => bail!(
                "{}: schedule state does not match the config",
                path.display()
            ),
        }
        Ok(())
    }

    fn data_index(&mut self, pos: u64) -> usize {
        let n = self.dataset.len() as u64;
        let epoch = pos / n;
        if self.perm.0 != epoch {
            self.perm = (
                epoch,
                epoch_permutation(self.cfg.train.seed, epoch, n as usize),
            );
        }
        self.perm.1[(pos % n) as usize] as usize
    }

    fn draw_sigma(&self, rng: &mut ChaCha8Rng) -> f64 {
        match &self.adaptive {
            Some(a) => a.sample(self.process.noise(), rng),
            None => self.process.noise().sample(rng),
        }
    }

    fn weight_at(&self, sigma: f64) -> f64 {
        match &self.weight {
            Weight::Native => self.process.loss_weight(sigma),
            Weight::Optimal(w) => w.weight(sigma),
        }
    }

    /// Forward + backward of global round `round` of the current step (`n` images); returns
    /// the gradients (parameter order). Its images and random streams depend only on the
    /// step and the global round, not on which rank computes it.
    fn round(&mut self, round: usize, n: usize) -> Result<(Vec<Tensor>, ImageStats)> {
        let dim = self.dataset.dim();
        let shape = self.dataset.shape();
        let start = self.nimg + (round * n) as u64;
        let label_dim = self.net_cfg.label_dim();
        let mut x = vec![0f32; n * dim];
        let mut labels = vec![0f32; n * label_dim];
        for i in 0..n {
            let idx = self.data_index(start + i as u64);
            self.dataset.read_row(idx, &mut x[i * dim..(i + 1) * dim]);
            if label_dim > 0 {
                let l = self.dataset.label(idx).unwrap_or(0) as usize;
                labels[i * label_dim + l] = 1.0;
            }
        }
        // EDM augments the clean images: the noise goes onto them and they are the target.
        let image_shape = [n, shape.channels, shape.height, shape.width];
        let augment_labels = augment_round(
            &self.cfg.augment,
            self.cfg.train.seed,
            self.step,
            round * n,
            &mut x,
            image_shape,
        )?;
        let mut rng = stream_rng(self.cfg.train.seed, self.step, round as u64, STREAM_NOISE);
        let mut y = vec![0f32; n * dim];
        let mut sigmas = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(n);
        let (mut c_skip, mut c_out, mut c_in, mut c_noise) = (vec![], vec![], vec![], vec![]);
        for i in 0..n {
            let s = self.draw_sigma(&mut rng);
            for j in i * dim..(i + 1) * dim {
                let e: f32 = rng.sample(StandardNormal);
                y[j] = x[j] + (s as f32) * e;
            }
            let p = self.process.precond(s);
            c_skip.push(p.c_skip as f32);
            c_out.push(p.c_out as f32);
            c_in.push(p.c_in as f32);
            c_noise.push(p.c_noise as f32);
            weights.push(self.weight_at(s));
            sigmas.push(s);
        }
        let dev = &self.device;
        let img = (n, shape.channels, shape.height, shape.width);
        let col = |v: Vec<f32>| Tensor::from_vec(v, (n, 1, 1, 1), dev);
        let x_t = Tensor::from_vec(x, img, dev)?;
        let y_t = Tensor::from_vec(y, img, dev)?;
        let class = if label_dim > 0 {
            Some(Tensor::from_vec(labels, (n, label_dim), dev)?)
        } else {
            None
        };
        let augment_labels = augment_labels
            .map(|l| Tensor::from_vec(l, (n, LABEL_DIM), dev))
            .transpose()?;
        let noise = Tensor::from_vec(c_noise, n, dev)?;
        // Dropout masks from their own stream of (seed, step, round): reproducible, and
        // the same after a resume.
        let dropout_seed =
            stream_rng(self.cfg.train.seed, self.step, round as u64, STREAM_DROPOUT).next_u64();
        self.net.reseed_dropout(dropout_seed);
        let f = self.net.forward(
            &y_t.broadcast_mul(&col(c_in)?)?,
            &noise,
            class.as_ref(),
            augment_labels.as_ref(),
            true,
        )?;
        let out_c = self.net_cfg.output_channels();
        let f = if f.dim(1)? > out_c {
            f.narrow(1, 0, out_c)?
        } else {
            f
        };
        let d = (y_t.broadcast_mul(&col(c_skip)?)? + f.broadcast_mul(&col(c_out)?)?)?;
        let sq = (d - x_t)?.sqr()?.flatten_from(1)?.sum(1)?;
        let w = Tensor::from_vec(
            weights.iter().map(|&w| w as f32).collect::<Vec<_>>(),
            n,
            dev,
        )?;
        let loss = ((&sq * w)?.sum_all()? / self.cfg.train.batch as f64)?;
        // On a GPU, wait for the forward pass before queueing the backward pass. Without
        // this wait, device memory grew step by step (DDPM++ at batch 64 ran out of an
        // H100's 80 GB a few steps in); with it, batch 128 stays at 44 GB. The mechanism
        // inside candle/cudarc's stream-ordered allocator is not established. A no-op on
        // the CPU.
        loss.device().synchronize()?;
        let grads = loss.backward()?;
        let g = self
            .vars
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let sq = sq.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok((
            g,
            ImageStats {
                sigmas,
                weights,
                sq,
            },
        ))
    }

    /// The gradients of round `round` of the current step (`batch_gpu` images), by parameter
    /// name, without updating anything: for tests and diagnostics of what each layer learns.
    pub fn round_gradients(&mut self, round: usize) -> Result<Vec<(String, Tensor)>> {
        let (grads, _) = self.round(round, self.plan.round_batch)?;
        Ok(self.names.iter().cloned().zip(grads).collect())
    }

    /// One optimizer step (all rounds); returns per-image stats and the gradient norm.
    fn train_step(&mut self, bins: &mut BinStats, acc: &mut TickAcc) -> Result<()> {
        let batch = self.cfg.train.batch;
        let plan = self.plan;
        let lr = learning_rate(&self.cfg.optimizer, self.nimg);
        let mut total: Option<Vec<Tensor>> = None;
        let dim = self.dataset.dim() as f64;
        let mut local = ImageStats::default();
        for r in 0..plan.rounds {
            let (g, st) = self.round(plan.global_round(r), plan.round_batch)?;
            let bad = st.sq.iter().any(|q| !q.is_finite());
            local.sigmas.extend(st.sigmas);
            local.weights.extend(st.weights);
            local.sq.extend(st.sq);
            if bad {
                break;
            }
            total = Some(match total {
                None => g,
                Some(t) => t
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        // Every rank gets every image's statistics, in global image order, so that the
        // bins, tick means and the adaptive schedule are those of one process.
        let t0 = Instant::now();
        let st = local.gather(self.comm.as_ref())?;
        acc.comm_s += t0.elapsed().as_secs_f64();
        if let Some(q) = st.sq.iter().find(|q| !q.is_finite()) {
            // Stop before the update: the weights, EMA and the states on disk stay those
            // of the last good step.
            let last = latest_state(&self.run_dir)?
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none was written yet".into());
            bail!(
                "non-finite loss ({q}) at step {} ({} images seen): training stopped; \
                 the last good training state is {last} (resume it with --resume auto, \
                 perhaps with a lower optimizer.lr or an optimizer.grad_clip)",
                self.step,
                self.nimg
            );
        }
        for ((s, w), q) in st.sigmas.iter().zip(&st.weights).zip(&st.sq) {
            let per_dim = *q as f64 / dim;
            bins.add(*s, per_dim);
            acc.loss_sum += w * per_dim;
            acc.x0_sum += per_dim;
            acc.n += 1;
            if let Some(a) = self.adaptive.as_mut() {
                a.observe(*s, per_dim);
            }
        }
        let mut total = total.unwrap_or_default();
        acc.comm_s += self.reducer.reduce_gradients(&mut total)?;
        let mut grads = total.iter().map(nan_to_num).collect::<Result<Vec<_>>>()?;
        acc.grad_norm = match self.cfg.optimizer.grad_clip {
            Some(c) => clip_global_norm(&mut grads, c)?,
            None => global_norm(&grads)?,
        };
        self.adam.step(&self.vars, &grads, lr)?;
        let beta = ema_beta(&self.cfg.ema, self.nimg, batch);
        self.ema.update(&self.vars, beta)?;
        if let Some(p) = self.profiles.as_mut() {
            p.update(&self.vars, self.nimg + batch as u64, batch)?;
        }
        self.nimg += batch as u64;
        self.step += 1;
        acc.lr = lr;
        let nimg = self.nimg;
        if self.adaptive.as_mut().is_some_and(|a| a.take_refresh(nimg)) {
            match self.cfg.schedule.gap_source {
                GapSource::Train => {
                    if let Some(a) = self.adaptive.as_mut() {
                        a.refresh_from_training();
                    }
                }
                GapSource::Eval => {
                    // Rank 0 evaluates and sends its losses to the others, so that every
                    // rank's schedule is the same even where their thread counts differ.
                    let losses: Vec<f64> = if self.is_writer() {
                        let raw = self.evaluate(true, false, false)?.raw.unwrap_or_default();
                        raw.iter().map(|l| l.loss).collect()
                    } else {
                        Vec::new()
                    };
                    let losses = self.comm.gather_f64(&losses)?;
                    let sigmas = self.evaluator.sigmas().to_vec();
                    if let Some(a) = self.adaptive.as_mut() {
                        a.refresh_from_eval(&sigmas, &losses);
                    }
                }
            }
        }
        Ok(())
    }

    /// The evaluator's per-σ̂ losses (`eval_gap`): of the raw network and of the EMA on
    /// the training queries, and of the EMA on the held-out queries, as asked. No
    /// training RNG stream or weight is touched.
    pub fn evaluate(&self, raw: bool, ema: bool, test: bool) -> Result<EvalRecord> {
        let spec = self.network_spec();
        let precond = self.precond_spec();
        let ev = &self.evaluator;
        let label_dim = self.net_cfg.label_dim();
        let dev = &self.device;
        let raw = if raw {
            let den = TensorsDenoiser::new(&spec, &precond, varmap_tensors(&self.varmap)?, dev)?;
            Some(den.evaluate(&self.dataset, &ev.train, label_dim, ev.batch, dev)?)
        } else {
            None
        };
        let (ema, test_ema) = if ema || test {
            let den = TensorsDenoiser::new(&spec, &precond, self.ema_network_tensors()?, dev)?;
            let e = if ema {
                den.evaluate(&self.dataset, &ev.train, label_dim, ev.batch, dev)?
            } else {
                Vec::new()
            };
            let t = match (&ev.test, test) {
                (Some((_, data, q)), true) => {
                    Some(den.evaluate(data, q, label_dim, ev.batch, dev)?)
                }
                _ => None,
            };
            (e, t)
        } else {
            (Vec::new(), None)
        };
        Ok(EvalRecord { raw, ema, test_ema })
    }

    /// The run's evaluator (its σ̂ grid, floor and query sets).
    pub fn evaluator(&self) -> &RunEvaluator {
        &self.evaluator
    }

    /// The path of the EMA snapshot written at the current step.
    pub fn snapshot_path(&self) -> PathBuf {
        self.run_dir
            .join(format!("network-snapshot-{:010}.safetensors", self.nimg))
    }

    /// Seconds of training so far, over all starts of the run.
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_total
    }

    /// Evaluates the raw and EMA networks (and the EMA on held-out data) and appends the
    /// line to `eval.jsonl`; returns the line.
    pub fn write_eval(&self) -> Result<serde_json::Value> {
        let rec = self.evaluate(true, true, true)?;
        let line = self.evaluator.json_line(&rec, self.nimg, self.step);
        append_line(&self.run_dir.join(EVAL_FILE), &line.to_string())?;
        Ok(line)
    }

    /// The network's architecture as checkpoints describe it.
    fn network_spec(&self) -> NetworkSpec {
        self.net_cfg.spec()
    }

    /// The preconditioning as checkpoints describe it.
    fn precond_spec(&self) -> PrecondSpec {
        PrecondSpec {
            process: self.cfg.precond.process.as_str().to_string(),
            sigma_data: self.cfg.precond.sigma_data,
        }
    }

    /// Every tensor of the network (sorted by name) with the EMA weights in place of the
    /// trainable ones; buffers as they are.
    fn ema_network_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.network_tensors_with(&self.ema.tensors)
    }

    /// Every tensor of the network (sorted by name) with `weights` (in parameter order) in
    /// place of the trainable ones; buffers as they are.
    fn network_tensors_with(&self, weights: &[Tensor]) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = varmap_tensors(&self.varmap)?;
        for (name, t) in tensors.iter_mut() {
            if let Ok(i) = self.names.binary_search(name) {
                *t = weights[i].clone();
            }
        }
        Ok(tensors)
    }

    /// Writes an EMA network snapshot readable by `lossfloor_nets::checkpoint::load_network`.
    pub fn save_snapshot(&self) -> Result<PathBuf> {
        let path = self.snapshot_path();
        let spec = self.network_spec();
        let precond = self.precond_spec();
        let tensors = self.ema_network_tensors()?;
        let extra = [
            ("lossfloor.train.nimg".to_string(), self.nimg.to_string()),
            ("lossfloor.train.step".to_string(), self.step.to_string()),
            ("lossfloor.train.config".to_string(), self.cfg.to_toml()?),
        ];
        save_network(&path, &spec, &precond, &tensors, &extra)?;
        if let Some(p) = &self.profiles {
            for (std, ema) in p.stds.iter().zip(&p.emas) {
                let mut extra = extra.to_vec();
                extra.push(("lossfloor.ema.std".to_string(), format!("{std}")));
                save_network(
                    &profile_snapshot_path(&self.run_dir, self.nimg, *std),
                    &spec,
                    &precond,
                    &self.network_tensors_with(&ema.tensors)?,
                    &extra,
                )?;
            }
        }
        Ok(path)
    }

    /// Draws a grid of `[sample] seeds` with the EMA weights (EDM Heun, `steps` steps) and
    /// writes it to `samples-NNNNNNNNNN.png`. It samples from an inference copy of the
    /// network built on the EMA tensors (no autograd graph, training weights untouched); no
    /// training RNG stream is touched.
    pub fn save_samples(&self) -> Result<PathBuf> {
        use lossfloor_sampler::net_denoiser::network_denoiser;
        use lossfloor_sampler::{
            one_hot, parse_seeds, sample, save_grid_png, to_uint8, Denoiser, GuidedDenoiser,
            HeunConfig, SeedRng,
        };
        let seeds = parse_seeds(&self.cfg.sample.seeds)?;
        let (c, r) = self.net_cfg.input_shape();
        let label_dim = self.net_cfg.label_dim();
        let spec = self.network_spec();
        let net = spec.build_inference(self.ema_network_tensors()?, &self.device)?;
        // The same denoiser `lossfloor sample` builds for the snapshot of these weights.
        let den = network_denoiser(net.as_ref(), &self.precond_spec(), spec.img_channels())?;
        let dev = &self.device;
        let mut rng = SeedRng::new(&seeds);
        let latents = rng.randn(&[c, r, r], dev)?;
        let labels = if label_dim > 0 {
            Some(one_hot(&rng.class_labels(label_dim)?, label_dim, dev)?)
        } else {
            None
        };
        let hc = HeunConfig {
            num_steps: self.cfg.sample.steps,
            ..HeunConfig::default()
        };
        // `[sample] guidance`: classifier-free guidance (checked against the network at load).
        let guided = self
            .cfg
            .sample
            .guidance
            .map(|w| GuidedDenoiser::new(&den, w));
        let den: &dyn Denoiser = match &guided {
            Some(g) => g,
            None => &den,
        };
        let x = sample(den, &latents, labels.as_ref(), &hc, &mut |s| {
            rng.randn_like(s, dev)
        })?;
        let path = self.run_dir.join(format!("samples-{:010}.png", self.nimg));
        let cols = (seeds.len() as f64).sqrt().ceil() as usize;
        save_grid_png(&path, &to_uint8(&x)?, cols.max(1))?;
        Ok(path)
    }

    fn stats_line(
        &self,
        bins: &BinStats,
        acc: &TickAcc,
        secs: f64,
        total: f64,
    ) -> serde_json::Value {
        let centres = bins.centres();
        let stderrs = bins.stderrs();
        let bin_rows: Vec<_> = bins
            .means()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let jstar = self.curve.as_ref().map(|c| c.loss_at(centres[i]).max(0.0));
                let gap = match (m, jstar) {
                    (Some(m), Some(j)) => Some(m - j),
                    _ => None,
                };
                json!({
                    "sigma": centres[i],
                    "sigma_lo": bins.ln_edges[i].exp(),
                    "sigma_hi": bins.ln_edges[i + 1].exp(),
                    "n": bins.n[i],
                    "loss": m,
                    "loss_se": stderrs[i],
                    "jstar": jstar,
                    "gap": gap,
                })
            })
            .collect();
        let imgs = (self.nimg - self.tick_start_nimg) as f64;
        json!({
            "tick": self.cur_tick,
            "kimg": self.nimg as f64 / 1000.0,
            "step": self.step,
            "loss": acc.loss_sum / acc.n.max(1) as f64,
            "loss_x0": acc.x0_sum / acc.n.max(1) as f64,
            "lr": acc.lr,
            "grad_norm": acc.grad_norm,
            "images_per_s": imgs / secs.max(1e-9),
            "sec_per_kimg": secs / (imgs / 1000.0).max(1e-9),
            "elapsed_s": total,
            "world_size": self.comm.size(),
            // Seconds of the tick spent summing gradients and gathering statistics across
            // ranks (0 on one process).
            "comm_s": acc.comm_s,
            // Training compute so far: 3 × forward multiply-adds × images seen (one
            // multiply-add counted as one FLOP, as in the DiT paper; lossfloor_nets::flops).
            "train_flops": training_macs(self.net.forward_macs(), self.nimg),
            "schedule_probs": self.adaptive.as_ref().map(|a| a.state.probs.clone()),
            "bins": bin_rows,
        })
    }

    /// Trains until `duration_kimg`, writing ticks, snapshots and states into the run dir.
    pub fn run(&mut self) -> Result<()> {
        let writer = self.is_writer();
        if writer {
            std::fs::create_dir_all(&self.run_dir)
                .with_context(|| format!("{}: cannot create", self.run_dir.display()))?;
        }
        let total_nimg = (self.cfg.train.duration_kimg * 1000.0).round() as u64;
        let tick_nimg = ((self.cfg.train.tick_kimg * 1000.0).round() as u64).max(1);
        let pb = if self.progress && writer {
            let pb = ProgressBar::new(total_nimg);
            pb.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} img  {per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb
        } else {
            ProgressBar::hidden()
        };
        pb.set_position(self.nimg.min(total_nimg));
        let mut bins = BinStats::new(self.cfg.train.stat_bins);
        let mut acc = TickAcc::default();
        let t0 = Instant::now();
        let mut tick_t0 = Instant::now();
        let stats_path = self.run_dir.join(STATS_FILE);
        while self.nimg < total_nimg {
            self.train_step(&mut bins, &mut acc)?;
            pb.set_position(self.nimg.min(total_nimg));
            let done = self.nimg >= total_nimg;
            if !done && self.nimg < self.tick_start_nimg + tick_nimg {
                continue;
            }
            // end of tick
            let secs = tick_t0.elapsed().as_secs_f64();
            let elapsed = self.elapsed_before + t0.elapsed().as_secs_f64();
            let line = self.stats_line(&bins, &acc, secs, elapsed);
            pb.set_message(format!(
                "loss {:.4}",
                line["loss"].as_f64().unwrap_or(f64::NAN)
            ));
            if writer {
                append_line(&stats_path, &line.to_string())?;
            }
            // Mean gap loss − J* over the σ bins that have both (none without a curve).
            let gaps: Vec<f64> = line["bins"]
                .as_array()
                .map(|b| b.iter().filter_map(|x| x["gap"].as_f64()).collect())
                .unwrap_or_default();
            let gap = match gaps.len() {
                0 => String::new(),
                k => format!(" gap {:.5}", gaps.iter().sum::<f64>() / k as f64),
            };
            let tick_line = format!(
                "tick {} kimg {:.3} loss {:.5} loss_x0 {:.5}{gap} lr {:.3e} {:.1} img/s",
                self.cur_tick,
                self.nimg as f64 / 1000.0,
                line["loss"].as_f64().unwrap_or(f64::NAN),
                line["loss_x0"].as_f64().unwrap_or(f64::NAN),
                acc.lr,
                line["images_per_s"].as_f64().unwrap_or(0.0),
            );
            // Above the progress bar on a terminal; plain lines in logs (a hidden bar
            // swallows its println).
            if writer && self.progress {
                pb.println(tick_line);
            } else if writer {
                eprintln!("{tick_line}");
            }
            self.cur_tick += 1;
            self.tick_start_nimg = self.nimg;
            let every = |k: u64| done || (k > 0 && self.cur_tick.is_multiple_of(k));
            if every(self.cfg.train.check_ticks) {
                check_same_weights(self.comm.as_ref(), &self.vars, &self.ema.tensors, self.step)?;
            }
            // Unlike snapshots and states, evaluations are off entirely at 0.
            if writer && self.cfg.eval.ticks > 0 && every(self.cfg.eval.ticks) {
                let line = self.write_eval()?;
                let regions = &line["regions"]["ema"];
                let text = ["below", "around", "above"]
                    .iter()
                    .filter_map(|r| {
                        let g = &regions[*r];
                        Some(format!(
                            " {r} {:.5}±{:.5}",
                            g["gap"].as_f64()?,
                            g["se"].as_f64()?
                        ))
                    })
                    .collect::<String>();
                let msg = format!(
                    "eval kimg {:.3}: EMA gap (no dropout, {} queries per σ̂){}",
                    self.nimg as f64 / 1000.0,
                    self.cfg.eval.queries,
                    if text.is_empty() {
                        " n/a (no curve)".into()
                    } else {
                        text
                    }
                );
                if self.progress {
                    pb.println(msg);
                } else {
                    eprintln!("{msg}");
                }
            }
            if writer && every(self.cfg.train.snapshot_ticks) {
                self.save_snapshot()?;
            }
            let k = self.cfg.sample.every_ticks;
            if writer && k > 0 && (done || self.cur_tick.is_multiple_of(k)) {
                self.save_samples()?;
            }
            if writer && every(self.cfg.train.state_ticks) {
                let elapsed = self.elapsed_before + t0.elapsed().as_secs_f64();
                self.save_state(elapsed)?;
            }
            bins.reset();
            acc = TickAcc::default();
            tick_t0 = Instant::now();
        }
        pb.finish_and_clear();
        self.elapsed_total = self.elapsed_before + t0.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Accumulators of one tick.
#[derive(Debug, Default)]
struct TickAcc {
    loss_sum: f64,
    x0_sum: f64,
    n: u64,
    lr: f64,
    grad_norm: f64,
    /// Seconds spent in collectives (gradient all-reduce, statistics gather).
    comm_s: f64,
}

/// Where a curve estimated at start runs: the exact estimator on the training device, the
/// others (written for the CPU) on the CPU.
pub fn estimator_device(method: lossfloor_optimal::Method, device: &Device) -> Device {
    if method == lossfloor_optimal::Method::Exact {
        device.clone()
    } else {
        Device::Cpu
    }
}

/// The optimal-loss curve of `dataset` (loaded from `data`) with the budget `est`,
/// recording the data's x-flip and limit so that [`crate::curve_match`] can check it.
/// The exact estimator runs on `device`; the others on the CPU.
pub fn estimate_training_curve(
    est: &CurveEstimateConfig,
    data: &crate::config::DataConfig,
    dataset: &Dataset,
    device: &Device,
) -> Result<Curve> {
    let params = est.params()?;
    let sigmas = est.sigmas();
    let device = estimator_device(params.method, device);
    eprintln!(
        "estimating the optimal-loss curve: {} on {} images, {} queries x {} sigmas...",
        params.method,
        dataset.len(),
        params.queries,
        sigmas.len()
    );
    let mut curve =
        lossfloor_optimal::estimate_on(&device, dataset, &data.spec, &sigmas, &params, &|_| {})
            .context("optimal_loss.estimate")?;
    curve.dataset.xflip = data.xflip;
    curve.dataset.limit = data.limit;
    Ok(curve)
}

/// Loads the dataset of a config (`[data]`: spec, limit, xflip).
pub fn load_dataset(cfg: &Config) -> Result<Dataset> {
    let spec: lossfloor_data::DataSpec = cfg.data.spec.parse()?;
    let mut ds = lossfloor_data::load(&spec)?;
    if let Some(n) = cfg.data.limit {
        ds = ds.take_first(n);
    }
    Ok(ds.with_xflip(cfg.data.xflip))
}

/// Runs the network once on one zero image at σ̂-independent labels, so that a network
/// config that cannot train (e.g. channels that do not fit the images) fails at start with
/// the key named, not at the first step.
fn probe_forward(net: &dyn Network, net_cfg: &NetworkConfig, device: &Device) -> Result<()> {
    let (c, r) = net_cfg.input_shape();
    let x = Tensor::zeros((1, c, r, r), DType::F32, device)?;
    let noise = Tensor::zeros(1, DType::F32, device)?;
    let label_dim = net_cfg.label_dim();
    let class = (label_dim > 0)
        .then(|| Tensor::zeros((1, label_dim), DType::F32, device))
        .transpose()?;
    let out = net
        .forward(&x, &noise, class.as_ref(), None, false)
        .map_err(|e| {
            anyhow!("network: a trial forward pass on one {c}x{r}x{r} image failed: {e}")
        })?;
    let dims = out.dims();
    let want = net_cfg.output_channels();
    if dims.len() != 4 || dims[0] != 1 || dims[1] < want || dims[2] != r || dims[3] != r {
        bail!(
            "network: a trial forward pass on one {c}x{r}x{r} image returned shape {dims:?}, \
             expected [1, {want}, {r}, {r}]"
        );
    }
    Ok(())
}

/// Runs (or resumes) training of `cfg` on `dataset` in `run_dir`; writes the resolved
/// config to `run_dir/config.toml`.
pub fn train_with_dataset(
    cfg: Config,
    dataset: Dataset,
    run_dir: &Path,
    resume: &Resume,
    progress: bool,
) -> Result<Trainer> {
    train_with_dataset_in(
        cfg,
        dataset,
        run_dir,
        resume,
        progress,
        Rc::new(SingleProcess),
    )
}

/// [`train_with_dataset`] as one rank of `comm`. Every rank reads the config, the dataset
/// and the training state it resumes from (the run directory must be on a file system that
/// every rank sees); rank 0 alone writes.
pub fn train_with_dataset_in(
    cfg: Config,
    dataset: Dataset,
    run_dir: &Path,
    resume: &Resume,
    progress: bool,
    comm: Rc<dyn Communicator>,
) -> Result<Trainer> {
    let writer = comm.rank() == 0;
    // Every rank looks for the latest state before any rank can write one (building the
    // trainer below takes a collective); after loading, they compare what they resumed.
    let existing = latest_state(run_dir)?;
    let from = match (resume, existing) {
        (Resume::No, Some(p)) => bail!(
            "{} already holds training state {}; pass --resume auto to continue it or choose \
             another --run-dir",
            run_dir.display(),
            p.display()
        ),
        (Resume::No, None) | (Resume::Auto, None) => None,
        (Resume::Auto, Some(p)) => Some(p),
        (Resume::Path(p), _) => Some(p.clone()),
    };
    // Everything that can fail on the config (network, curve, a trial forward pass) runs
    // before the run directory is made or touched.
    let config_text = cfg.to_toml()?;
    let mut t = Trainer::new_in(cfg, dataset, run_dir.to_path_buf(), comm)?;
    t.progress = progress;
    if writer {
        eprintln!(
            "network: {} parameters, {:.4} GFLOPs per image (forward multiply-adds)",
            t.net.num_parameters(),
            t.net.forward_macs() as f64 / 1e9
        );
        if t.comm.size() > 1 {
            eprintln!(
                "data parallel: {}, {} images per rank per step in {} round(s) of {}; \
                 gradients summed by {}",
                t.comm.describe(),
                t.plan.rounds * t.plan.round_batch,
                t.plan.rounds,
                t.plan.round_batch,
                t.reducer.name()
            );
        }
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("{}: cannot create the run directory", run_dir.display()))?;
        remove_leftovers(run_dir)?;
        crate::state::write_atomic(&run_dir.join("config.toml"), config_text.as_bytes())?;
    }
    match from {
        Some(p) => {
            t.load_state(&p)?;
            check_same_resume(t.comm.as_ref(), &p, t.nimg)?;
            if writer {
                eprintln!("resumed from {} at {} images", p.display(), t.nimg);
            }
            for name in [STATS_FILE, EVAL_FILE].iter().filter(|_| writer) {
                let dropped = trim_stats(&run_dir.join(name), t.nimg)?;
                if dropped > 0 {
                    eprintln!(
                        "{name}: dropped {dropped} line(s) logged after that state (they are \
                         logged again as training repeats those steps)"
                    );
                }
            }
        }
        None if writer => set_aside_stale_logs(run_dir)?,
        None => {}
    }
    t.run()?;
    Ok(t)
}
