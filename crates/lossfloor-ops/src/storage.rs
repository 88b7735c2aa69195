//! Getting typed, contiguous slices out of candle's CPU storage.

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

use crate::elem::Elem;

/// Typed access to a CPU storage variant.
pub trait FromStorage: Elem {
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn wrap(v: Vec<Self>) -> CpuStorage;
}

impl FromStorage for f32 {
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl FromStorage for f64 {
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// The contiguous elements of a tensor (the public wrappers make inputs contiguous first).
pub fn contiguous<'a, T: FromStorage>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let v =
        T::slice(s).ok_or_else(|| candle_core::Error::Msg(format!("{what}: unexpected dtype")))?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Whether the CPU kernels of this crate can take `tensors`: the first is on the CPU in f32
/// or f64 and all share its dtype. Every fused op checks this before its kernel and falls
/// back to plain candle ops otherwise.
pub fn cpu_kernels_apply(tensors: &[&Tensor]) -> bool {
    let Some(first) = tensors.first() else {
        return false;
    };
    first.device().is_cpu()
        && matches!(first.dtype(), DType::F32 | DType::F64)
        && tensors.iter().all(|t| t.dtype() == first.dtype())
}

/// Whether an op with both CPU and CUDA kernels (GroupNorm, dropout, the optimizer updates)
/// can take `tensors`: [`cpu_kernels_apply`], or, with the `cuda` feature, all of them f32
/// on one CUDA device (the CUDA kernels are f32 only).
pub fn kernels_apply(tensors: &[&Tensor]) -> bool {
    cpu_kernels_apply(tensors)
        || (cfg!(feature = "cuda")
            && tensors
                .iter()
                .all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
            && tensors
                .windows(2)
                .all(|w| w[0].device().same_device(w[1].device())))
}
