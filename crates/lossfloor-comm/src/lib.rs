//! The communicator: which rank this process is, how many ranks there are, and the
//! collectives that data-parallel training and sharded estimation need.
//!
//! A plain `lossfloor train` is one process, the world of size 1 ([`SingleProcess`]): every
//! collective is the identity and nothing is copied. Under `mpirun` (or SLURM's `srun`) each
//! process is one rank of an MPI world ([`init`] finds out from the launcher's environment);
//! the collectives then run over MPI on the CPU, and gradients between GPUs over NCCL
//! (feature `nccl`, [`nccl`]).
//!
//! Faults: MPI's default error handler ends the whole job when a rank dies, and `mpirun`
//! names the rank that died. A rank that is alive but stuck is caught by [`Watchdog`]: a
//! collective that waits longer than [`collective_timeout`] ends this process with a message,
//! and the launcher then ends the others.

use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "nccl")]
pub mod nccl;
mod shard;

#[cfg(feature = "mpi")]
pub use mpi_world::MpiWorld;
pub use shard::{contiguous_share, gather_in_rank_order};

/// Ranks, world size and the collectives; every rank calls each collective in the same order.
pub trait Communicator {
    /// This process's rank, 0..size.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// This process's rank among the ranks on its own machine (which GPU it takes).
    fn local_rank(&self) -> usize;
    /// Number of ranks on this machine.
    fn local_size(&self) -> usize;
    /// Element-wise sum over the ranks, in place: afterwards every rank holds Σ_r values_r.
    fn sum_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Every rank's `local` concatenated in rank order, on every rank (lengths may differ).
    fn gather_f64(&self, local: &[f64]) -> Result<Vec<f64>>;
    /// Every rank's `value`, in rank order, on every rank.
    fn gather_u64(&self, value: u64) -> Result<Vec<u64>>;
    /// Copies `root`'s `bytes` to every rank (all ranks pass buffers of the same length).
    fn broadcast(&self, root: usize, bytes: &mut [u8]) -> Result<()>;
    /// Ends every rank of the job with `code` (after a rank's own error, so that the others
    /// do not wait for it in a collective).
    fn abort(&self, code: i32) -> !;
    /// What the world is, for logs: "1 process" or "MPI, 4 ranks on 2 machines".
    fn describe(&self) -> String;
}

/// The world of one process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn gather_f64(&self, local: &[f64]) -> Result<Vec<f64>> {
        Ok(local.to_vec())
    }
    fn gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
    fn broadcast(&self, _root: usize, _bytes: &mut [u8]) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "1 process".into()
    }
}

/// The environment variables by which MPI launchers tell a process it is one rank of a job:
/// Open MPI's `mpirun`, PMIx (Open MPI 4+, SLURM's `srun --mpi=pmix`) and PMI (MPICH's
/// hydra, `srun --mpi=pmi2`).
const LAUNCHER_VARIABLES: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"];

/// The launcher variable that is set (`NAME=value`), if this process was started by an MPI
/// launcher.
pub fn launcher_variable() -> Option<String> {
    LAUNCHER_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok().map(|v| format!("{name}={v}")))
}

/// Whether this build can join an MPI job (the `mpi` feature).
pub const MPI_BUILT: bool = cfg!(feature = "mpi");

/// The world this process belongs to: an MPI world when an MPI launcher started it, else
/// [`SingleProcess`]. A build without the `mpi` feature started by `mpirun` is refused: its
/// ranks would each train alone and write the same files.
pub fn init() -> Result<Rc<dyn Communicator>> {
    match launcher_variable() {
        None => Ok(Rc::new(SingleProcess)),
        Some(var) => join_mpi(&var),
    }
}

#[cfg(feature = "mpi")]
fn join_mpi(_var: &str) -> Result<Rc<dyn Communicator>> {
    Ok(Rc::new(MpiWorld::join()?))
}

#[cfg(not(feature = "mpi"))]
fn join_mpi(var: &str) -> Result<Rc<dyn Communicator>> {
    anyhow::bail!(
        "started by an MPI launcher ({var}), but this lossfloor was built without the `mpi` \
         feature: every rank would run alone and write the same files. Build it with \
         `cargo build --release --features lossfloor-cli/mpi` (needs libopenmpi-dev and \
         libclang-dev), or run it without mpirun"
    )
}

/// Seconds a rank waits in one collective before it gives up (environment variable
/// `LOSSFLOOR_COLLECTIVE_TIMEOUT_S`, default 1800). A collective waits for the slowest rank,
/// and rank 0 also writes snapshots, evaluations and sample grids between steps, so the
/// default leaves room for those on large networks.
pub fn collective_timeout() -> Result<Duration> {
    match std::env::var("LOSSFLOOR_COLLECTIVE_TIMEOUT_S") {
        Err(_) => Ok(Duration::from_secs(1800)),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            _ => anyhow::bail!(
                "LOSSFLOOR_COLLECTIVE_TIMEOUT_S = {text:?}: expected a positive number of seconds"
            ),
        },
    }
}

/// Ends the process when a collective outlasts its deadline: a rank whose peer hangs (alive
/// but not calling the collective) would otherwise wait forever. Exiting without MPI's
/// finalize makes `mpirun` (and `srun`) end the other ranks too.
pub struct Watchdog {
    state: Arc<(Mutex<WatchState>, Condvar)>,
    timeout: Duration,
}

#[derive(Default)]
struct WatchState {
    /// The collective in progress and when it must end.
    armed: Option<(&'static str, Instant)>,
    stop: bool,
}

impl Watchdog {
    /// Starts the watching thread; `who` names this rank in the message.
    pub fn start(timeout: Duration, who: String) -> Self {
        let state = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let watched = Arc::clone(&state);
        std::thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(move || watch(&watched, timeout, &who))
            .expect("spawning the collective watchdog thread");
        Self { state, timeout }
    }

    /// Runs `f` (one collective) under the deadline.
    pub fn guard<T>(&self, what: &'static str, f: impl FnOnce() -> T) -> T {
        self.set(Some((what, Instant::now() + self.timeout)));
        let out = f();
        self.set(None);
        out
    }

    fn set(&self, armed: Option<(&'static str, Instant)>) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|e| e.into_inner()).armed = armed;
        cv.notify_all();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
    }
}

fn watch(state: &(Mutex<WatchState>, Condvar), timeout: Duration, who: &str) {
    let (lock, cv) = state;
    let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if s.stop {
            return;
        }
        match s.armed {
            None => s = cv.wait(s).unwrap_or_else(|e| e.into_inner()),
            Some((what, deadline)) => {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!(
                        "error: {who}: no answer from the other ranks for {:.0} s in {what} \
                         (LOSSFLOOR_COLLECTIVE_TIMEOUT_S); a rank is stuck or gone. Ending \
                         this rank; the last complete training state stays the one \
                         --resume auto picks",
                        timeout.as_secs_f64()
                    );
                    std::process::exit(3);
                }
                s = cv
                    .wait_timeout(s, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

/// FNV-1a (64-bit) of `bytes`, continuing from `hash` (start at [`FNV_OFFSET`]): the
/// checksums that ranks compare to find one whose config or weights differ. Not
/// cryptographic; any single changed bit changes it.
pub fn fnv1a64(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// FNV-1a's offset basis, the starting value of [`fnv1a64`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The ranks whose `values` differ from rank 0's.
pub fn ranks_differing_from_root(values: &[u64]) -> Vec<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| Some(*v) != values.first())
        .map(|(r, _)| r)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_collectives_are_identities() {
        let c = SingleProcess;
        let mut v = vec![1.5f32, -2.0];
        c.sum_f32(&mut v).unwrap();
        assert_eq!(v, vec![1.5, -2.0]);
        assert_eq!(c.gather_f64(&[3.0, 4.0]).unwrap(), vec![3.0, 4.0]);
        assert_eq!(c.gather_u64(7).unwrap(), vec![7]);
        assert_eq!(
            (c.rank(), c.size(), c.local_rank(), c.local_size()),
            (0, 1, 0, 1)
        );
    }

    #[test]
    fn fnv_matches_the_published_test_vectors() {
        // The FNV reference test suite: FNV-1a 64 of "" and of "a" and "foobar".
        assert_eq!(fnv1a64(b"", FNV_OFFSET), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a", FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar", FNV_OFFSET), 0x8594_4171_f739_67e8);
        // Feeding in pieces is feeding at once; a flipped bit changes the checksum.
        assert_eq!(
            fnv1a64(b"bar", fnv1a64(b"foo", FNV_OFFSET)),
            fnv1a64(b"foobar", FNV_OFFSET)
        );
        assert_ne!(
            fnv1a64(b"foobas", FNV_OFFSET),
            fnv1a64(b"foobar", FNV_OFFSET)
        );
    }

    #[test]
    fn differing_ranks_are_named() {
        assert_eq!(ranks_differing_from_root(&[5, 5, 6, 5, 7]), vec![2, 4]);
        assert!(ranks_differing_from_root(&[1]).is_empty());
    }

    #[test]
    fn the_watchdog_lets_prompt_collectives_through() {
        let w = Watchdog::start(Duration::from_secs(5), "rank 0".into());
        let v = w.guard("a test", || 41 + 1);
        assert_eq!(v, 42);
    }
}
