//! The MPI world: one rank per process, collectives over rsmpi on the CPU.

use anyhow::{anyhow, bail, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
// The glob brings rsmpi's own `Communicator` trait, which ours shadows by name.
use mpi::topology::Communicator as _;
use mpi::Threading;

use crate::{collective_timeout, Communicator, Watchdog};

/// Elements per MPI call: counts are C ints, so large buffers go in pieces.
const MAX_COUNT: usize = 1 << 28;

/// This process's place in an MPI job.
pub struct MpiWorld {
    // Field order is drop order: the communicators are freed before the universe finalizes.
    watchdog: Watchdog,
    local: SimpleCommunicator,
    world: SimpleCommunicator,
    machines: usize,
    _universe: mpi::environment::Universe,
}

impl MpiWorld {
    /// Initializes MPI (MPI calls come from the main thread only: `MPI_THREAD_FUNNELED`)
    /// and finds this rank's machine-local rank.
    pub fn join() -> Result<Self> {
        let timeout = collective_timeout()?;
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| anyhow!("MPI was already initialized in this process"))?;
        let world = universe.world();
        let local = world.split_shared(world.rank());
        let mut first = [0u64; 1];
        world.all_reduce_into(
            &[u64::from(local.rank() == 0)][..],
            &mut first[..],
            SystemOperation::sum(),
        );
        let who = format!("rank {} of {}", world.rank(), world.size());
        Ok(Self {
            watchdog: Watchdog::start(timeout, who),
            local,
            world,
            machines: first[0] as usize,
            _universe: universe,
        })
    }
}

impl Communicator for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn local_rank(&self) -> usize {
        self.local.rank() as usize
    }

    fn local_size(&self) -> usize {
        self.local.size() as usize
    }

    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.watchdog.guard("the gradient all-reduce", || {
            for chunk in values.chunks_mut(MAX_COUNT) {
                let send = chunk.to_vec();
                self.world
                    .all_reduce_into(&send[..], chunk, SystemOperation::sum());
            }
        });
        Ok(())
    }

    fn gather_f64(&self, local: &[f64]) -> Result<Vec<f64>> {
        if local.len() > MAX_COUNT {
            bail!(
                "{} values to gather from one rank, more than one MPI call carries",
                local.len()
            );
        }
        self.watchdog.guard("a gather", || {
            let size = self.size();
            let mut counts = vec![0i32; size];
            self.world
                .all_gather_into(&(local.len() as i32), &mut counts[..]);
            let displs: Vec<i32> = counts
                .iter()
                .scan(0i32, |at, &c| {
                    let d = *at;
                    *at += c;
                    Some(d)
                })
                .collect();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut out = vec![0f64; total];
            {
                let mut part = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
                self.world.all_gather_varcount_into(local, &mut part);
            }
            Ok(out)
        })
    }

    fn gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        self.watchdog.guard("a gather", || {
            let mut out = vec![0u64; self.size()];
            self.world.all_gather_into(&value, &mut out[..]);
            Ok(out)
        })
    }

    fn broadcast(&self, root: usize, bytes: &mut [u8]) -> Result<()> {
        self.watchdog.guard("a broadcast", || {
            self.world
                .process_at_rank(root as i32)
                .broadcast_into(bytes);
        });
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn describe(&self) -> String {
        format!(
            "MPI, {} ranks on {} machine{}",
            self.size(),
            self.machines,
            if self.machines == 1 { "" } else { "s" }
        )
    }
}
