//! Gradient all-reduce between GPUs over NCCL. The NCCL unique id is made on rank 0 and
//! broadcast over MPI, as NCCL's own multi-process examples do; the sums then run on the
//! GPUs without passing through host memory.

use std::ffi::c_char;

use anyhow::{anyhow, bail, Result};
use candle_core::{CpuStorage, CudaStorage, Device, InplaceOp1, Layout, Tensor};
use cudarc::nccl::{Comm, Id, ReduceOp};

use crate::Communicator;

/// Bytes of an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
const ID_BYTES: usize = 128;

/// An NCCL communicator over the ranks of `world`, one GPU per rank.
pub struct NcclGradients {
    comm: Comm,
}

impl NcclGradients {
    /// Sets up NCCL on `device` (this rank's GPU). Every rank of `world` must call it.
    pub fn new(world: &dyn Communicator, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            bail!("NCCL needs a CUDA device, not {device:?}");
        };
        let mut bytes = [0u8; ID_BYTES];
        if world.rank() == 0 {
            let id = Id::new().map_err(|e| anyhow!("NCCL: cannot make a unique id: {e:?}"))?;
            for (b, &c) in bytes.iter_mut().zip(id.internal()) {
                *b = c as u8;
            }
        }
        world.broadcast(0, &mut bytes)?;
        let mut internal = [0 as c_char; ID_BYTES];
        for (c, &b) in internal.iter_mut().zip(&bytes) {
            *c = b as c_char;
        }
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            world.rank(),
            world.size(),
            Id::uninit(internal),
        )
        .map_err(|e| {
            anyhow!(
                "NCCL: rank {} of {} could not join (is libnccl.so.2 on LD_LIBRARY_PATH? \
                 scripts/gpu-env.sh finds PyTorch's): {e:?}",
                world.rank(),
                world.size()
            )
        })?;
        Ok(Self { comm })
    }

    /// Sums `tensor` (f32, contiguous) over the ranks, in place on every rank.
    pub fn sum_in_place(&self, tensor: &Tensor) -> Result<()> {
        tensor.inplace_op1(&NcclSum(&self.comm))?;
        Ok(())
    }
}

/// The in-place NCCL all-reduce (sum) as a candle op, so it runs on the tensor's storage.
struct NcclSum<'a>(&'a Comm);

impl InplaceOp1 for NcclSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-sum"
    }

    fn cpu_fwd(&self, _storage: &mut CpuStorage, _layout: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("nccl-sum: NCCL sums CUDA tensors; CPU tensors go through MPI")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            candle_core::bail!("nccl-sum: the tensor must be contiguous and start its storage");
        }
        let slice = storage.as_cuda_slice_mut::<f32>()?;
        if slice.len() != layout.shape().elem_count() {
            candle_core::bail!("nccl-sum: the tensor must span its whole storage");
        }
        self.0
            .all_reduce_in_place(slice, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("nccl-sum: {e:?}")))?;
        Ok(())
    }
}
