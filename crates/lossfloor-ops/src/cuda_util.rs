//! What the NVRTC-compiled CUDA kernels of this crate share: compiling a kernel source once
//! per process, launch shapes, and launching with errors that name the kernel.

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{LaunchArgs, LaunchConfig};
use candle_core::cuda_backend::cudarc::nvrtc::compile_ptx;
use candle_core::Result;

/// The PTX of `source`, compiled by NVRTC on first use and kept in `cell`.
pub fn ptx(
    cell: &'static OnceLock<std::result::Result<String, String>>,
    source: &str,
    what: &str,
) -> Result<&'static str> {
    cell.get_or_init(|| {
        compile_ptx(source)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("{what}: NVRTC failed: {e}")))
}

/// `blocks` thread blocks of `threads` threads each.
pub fn grid(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches a kernel whose arguments are already pushed, naming it in any error.
pub fn launch(mut args: LaunchArgs<'_>, cfg: LaunchConfig, name: &str) -> Result<()> {
    // SAFETY: every caller pushes exactly the arguments its kernel declares, with buffers
    // sized for the grid it launches.
    unsafe { args.launch(cfg) }
        .map(|_| ())
        .map_err(|e| candle_core::Error::Msg(format!("{name}: {e:?}")))
}
