//! Data parallelism: how a step's global batch is split across ranks, and how gradients and
//! per-image statistics are put back together so that every rank takes the same step.
//!
//! Rank k of N takes the contiguous share `k·B/N .. (k+1)·B/N` of each global batch of B
//! images, in rounds of `batch_gpu` images. Round j of rank k is global round
//! `k·(B/N/batch_gpu) + j`, and everything random in a round (its images, σ̂, noise,
//! dropout masks, augmentation) is keyed to the step and that global round, never to the
//! rank. A run on N ranks therefore computes the same per-round gradients as one process
//! with the same `batch_gpu`; only the order in which they are summed differs (see
//! [`reduce_gradients`]).

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor, Var};
use lossfloor_comm::{fnv1a64, ranks_differing_from_root, Communicator, FNV_OFFSET};

use crate::config::Config;

/// Which rounds of a step this rank computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankPlan {
    pub rank: usize,
    pub size: usize,
    /// Images per round (`batch_gpu`, or the whole share of a rank without it).
    pub round_batch: usize,
    /// Rounds per rank per step.
    pub rounds: usize,
}

impl RankPlan {
    /// The plan of `rank` of `size` for `cfg`: B/N images per rank in rounds of `batch_gpu`.
    /// Errors name the keys: N must divide `train.batch`, and `train.batch_gpu` must divide
    /// each rank's share.
    pub fn new(cfg: &Config, rank: usize, size: usize) -> Result<Self> {
        let batch = cfg.train.batch;
        if !batch.is_multiple_of(size) {
            bail!(
                "train.batch = {batch} does not split over {size} ranks: the number of ranks \
                 must divide the global batch"
            );
        }
        let share = batch / size;
        // `batch_gpu` caps a round; a rank whose share is smaller does it in one round (as one
        // process does when batch_gpu ≥ batch).
        let round_batch = cfg.train.batch_gpu.unwrap_or(share).min(share);
        if round_batch == 0 || !share.is_multiple_of(round_batch) {
            bail!(
                "train.batch_gpu = {round_batch} does not divide each rank's share of the batch \
                 (train.batch {batch} / {size} ranks = {share})"
            );
        }
        Ok(Self {
            rank,
            size,
            round_batch,
            rounds: share / round_batch,
        })
    }

    /// The global index of this rank's round `local` (the key of its random streams).
    pub fn global_round(&self, local: usize) -> usize {
        self.rank * self.rounds + local
    }
}

/// The device of this rank: `train.device = "cuda"` puts local rank r on `cuda:r`; one
/// named GPU (`cuda:N`) is refused when several ranks share a machine.
pub fn rank_device(cfg: &Config, comm: &dyn Communicator) -> Result<Device> {
    if comm.size() == 1 {
        return cfg.train.device();
    }
    let name = cfg.train.device.trim();
    if name == "cpu" {
        return cfg.train.device();
    }
    let (rank, local, local_size) = (comm.rank(), comm.local_rank(), comm.local_size());
    if name != "cuda" {
        if local_size > 1 {
            bail!(
                "train.device = {name:?} names one GPU, but {local_size} ranks run on this \
                 machine; use \"cuda\": local rank r then takes cuda:r"
            );
        }
        return cfg.train.device();
    }
    lossfloor_ops::open_device(&format!("cuda:{local}")).map_err(|e| {
        anyhow!(
            "rank {rank} (local rank {local} of {local_size} on this machine) cannot open \
             cuda:{local}: {e}; a machine needs one GPU per rank"
        )
    })
}

/// Ranks whose value differs from rank 0's, with the first such rank's value and rank 0's.
struct Disagreement {
    ranks: Vec<usize>,
    theirs: u64,
    root: u64,
}

/// Gathers every rank's `value` and compares it with rank 0's: the checks below differ only
/// in what they compare and what they say.
fn disagreement(comm: &dyn Communicator, value: u64) -> Result<Option<Disagreement>> {
    let all = comm.gather_u64(value)?;
    let ranks = ranks_differing_from_root(&all);
    Ok(ranks.first().map(|&r| Disagreement {
        theirs: all[r],
        root: all[0],
        ranks: ranks.clone(),
    }))
}

/// Refuses to start when the ranks were given different configs (or data): each rank
/// compares a checksum of its resolved config and dataset size with rank 0's.
pub fn check_same_config(comm: &dyn Communicator, cfg_text: &str, data_len: usize) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let hash = fnv1a64(
        &(data_len as u64).to_le_bytes(),
        fnv1a64(cfg_text.as_bytes(), FNV_OFFSET),
    );
    if let Some(d) = disagreement(comm, hash)? {
        bail!(
            "rank{} {} got a different config or dataset than rank 0 (config checksum \
             {:016x} vs {:016x}): every rank must get the same config file, --set options \
             and data",
            if d.ranks.len() > 1 { "s" } else { "" },
            d.ranks
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            d.theirs,
            d.root
        );
    }
    Ok(())
}

/// Refuses to go on when the ranks resumed different training states (a run directory
/// that is not shared between machines, say): each compares its images seen with rank 0's.
pub fn check_same_resume(comm: &dyn Communicator, state: &Path, nimg: u64) -> Result<()> {
    if let Some(d) = disagreement(comm, nimg)? {
        bail!(
            "{}: rank(s) {:?} resumed at {} images, rank 0 at {}: every rank must see the \
             same run directory (a shared file system)",
            state.display(),
            d.ranks,
            d.theirs,
            d.root
        );
    }
    Ok(())
}

/// Stops with an error naming the ranks whose weights (and EMA) differ from rank 0's; run
/// every `train.check_ticks` ticks. Ranks that took different steps would otherwise drift
/// apart without a sign.
pub fn check_same_weights(
    comm: &dyn Communicator,
    vars: &[Var],
    ema: &[Tensor],
    step: u64,
) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut hash = FNV_OFFSET;
    for t in vars.iter().map(|v| v.as_tensor()).chain(ema) {
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        for v in values {
            hash = fnv1a64(&v.to_bits().to_le_bytes(), hash);
        }
    }
    if let Some(d) = disagreement(comm, hash)? {
        bail!(
            "after step {step} the weights of rank(s) {:?} differ from rank 0's (checksums \
             {:016x} vs {:016x}): the ranks no longer train one model; stopping",
            d.ranks,
            d.theirs,
            d.root
        );
    }
    Ok(())
}

/// Per-image outputs of a step's rounds (σ̂, loss weight, ‖D − x0‖²), for the statistics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ImageStats {
    pub sigmas: Vec<f64>,
    pub weights: Vec<f64>,
    pub sq: Vec<f32>,
}

impl ImageStats {
    /// Every rank's images, concatenated in rank order (= global image order), on every
    /// rank; one process keeps its own.
    pub fn gather(self, comm: &dyn Communicator) -> Result<Self> {
        if comm.size() == 1 {
            return Ok(self);
        }
        // f32 → f64 → f32 is exact, so the losses arrive bit for bit.
        let sq: Vec<f64> = self.sq.iter().map(|&q| q as f64).collect();
        Ok(Self {
            sigmas: comm.gather_f64(&self.sigmas)?,
            weights: comm.gather_f64(&self.weights)?,
            sq: comm.gather_f64(&sq)?.iter().map(|&q| q as f32).collect(),
        })
    }
}

/// How gradients are summed across ranks.
pub enum GradientReducer {
    /// One process: nothing to sum.
    Single,
    /// MPI all-reduce on the CPU (GPU gradients are copied to host memory and back).
    Mpi(Rc<dyn Communicator>),
    /// NCCL all-reduce between GPUs.
    #[cfg(feature = "nccl")]
    Nccl(lossfloor_comm::nccl::NcclGradients),
}

impl GradientReducer {
    /// The reducer for this world and device: NCCL for GPUs when built with it, else MPI.
    pub fn new(comm: &Rc<dyn Communicator>, device: &Device) -> Result<Self> {
        if comm.size() == 1 {
            return Ok(Self::Single);
        }
        #[cfg(feature = "nccl")]
        if device.is_cuda() {
            return Ok(Self::Nccl(lossfloor_comm::nccl::NcclGradients::new(
                comm.as_ref(),
                device,
            )?));
        }
        let _ = device;
        Ok(Self::Mpi(Rc::clone(comm)))
    }

    /// Which engine sums the gradients, for the start-up line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Single => "none (1 process)",
            Self::Mpi(_) => "MPI all-reduce (host memory)",
            #[cfg(feature = "nccl")]
            Self::Nccl(_) => "NCCL all-reduce (GPU)",
        }
    }

    /// Replaces every rank's gradients by their sum over the ranks, Σ_k g_k; returns the
    /// seconds spent. With two ranks the sum is one float32 addition per element, which
    /// commutes, so it equals one process's g₀ + g₁ bit for bit; with more ranks or
    /// rounds the summation order differs from one process's, within float32 rounding.
    pub fn reduce_gradients(&self, grads: &mut [Tensor]) -> Result<f64> {
        let t0 = Instant::now();
        match self {
            Self::Single => return Ok(0.0),
            Self::Mpi(comm) => {
                let mut flat = Vec::with_capacity(grads.iter().map(|g| g.elem_count()).sum());
                for g in grads.iter() {
                    flat.extend(g.flatten_all()?.to_vec1::<f32>()?);
                }
                comm.sum_f32(&mut flat)?;
                let mut at = 0;
                for g in grads.iter_mut() {
                    let n = g.elem_count();
                    *g = Tensor::from_slice(&flat[at..at + n], g.shape(), g.device())?;
                    at += n;
                }
            }
            #[cfg(feature = "nccl")]
            Self::Nccl(nccl) => {
                for g in grads.iter_mut() {
                    // The in-place sum needs its own contiguous storage.
                    let own = g.copy()?;
                    nccl.sum_in_place(&own)?;
                    *g = own;
                }
                if let Some(g) = grads.first() {
                    g.device().synchronize()?;
                }
            }
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch: usize, batch_gpu: Option<usize>) -> Config {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/fashion-mnist-quick.toml"
        ))
        .unwrap();
        let mut c = Config::parse(&text, &[]).unwrap();
        c.train.batch = batch;
        c.train.batch_gpu = batch_gpu;
        c
    }

    #[test]
    fn ranks_cover_the_global_rounds_once_in_order() {
        // 2 ranks × 2 rounds of 8 = one process's 4 rounds of 8.
        let c = cfg(32, Some(8));
        let one = RankPlan::new(&c, 0, 1).unwrap();
        assert_eq!((one.round_batch, one.rounds), (8, 4));
        let rounds: Vec<usize> = (0..2)
            .flat_map(|r| {
                let p = RankPlan::new(&c, r, 2).unwrap();
                (0..p.rounds).map(move |j| p.global_round(j))
            })
            .collect();
        assert_eq!(rounds, vec![0, 1, 2, 3]);
        // Without batch_gpu, or with a larger one, each rank does its share in one round.
        let p = RankPlan::new(&cfg(32, None), 1, 4).unwrap();
        assert_eq!((p.round_batch, p.rounds, p.global_round(0)), (8, 1, 1));
        let p = RankPlan::new(&cfg(32, Some(128)), 1, 4).unwrap();
        assert_eq!((p.round_batch, p.rounds), (8, 1));
        // One process keeps the config's rounds.
        let c = cfg(32, Some(128));
        assert_eq!(
            RankPlan::new(&c, 0, 1).unwrap().round_batch,
            c.train.round_batch()
        );
    }

    #[test]
    fn bad_splits_name_the_keys() {
        let e = RankPlan::new(&cfg(30, None), 0, 4).unwrap_err().to_string();
        assert!(
            e.contains("train.batch = 30") && e.contains("4 ranks"),
            "{e}"
        );
        let e = RankPlan::new(&cfg(48, Some(8)), 0, 4)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.batch_gpu = 8") && e.contains("= 12"),
            "{e}"
        );
    }

    #[test]
    fn one_process_reduction_leaves_gradients_alone() {
        let g = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let mut grads = vec![g.clone()];
        GradientReducer::Single
            .reduce_gradients(&mut grads)
            .unwrap();
        assert_eq!(grads[0].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }
}
