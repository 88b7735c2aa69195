//! 2-D convolution on CUDA through cuDNN, all three passes (forward, input gradient, weight
//! gradient), for the `conv2d` op of `conv.rs`.
//!
//! Why: candle's CUDA conv2d is im2col + GEMM in the forward pass and a direct-loop
//! `conv_transpose2d` kernel for the input gradient; on an H100 its forward reached 1.3
//! TFLOP/s at batch 32 (docs/benchmarks.md), and a DDPM++ training step ran at a quarter of
//! PyTorch's speed. PyTorch runs all three passes through cuDNN, and so does this module.
//! candle's `cudnn` feature covers the forward pass only.
//!
//! float32 runs with `CUDNN_FMA_MATH`, i.e. without TF32 tensor cores, so CUDA results stay
//! within float32 rounding of the CPU kernels (PyTorch's reference runs with TF32 off too).
//! The algorithm of each pass is cuDNN's first heuristic choice, as PyTorch's is with
//! `cudnn.benchmark = False`, cached per shape; when its workspace cannot be allocated, a
//! workspace-free algorithm runs instead. Some of cuDNN's backward algorithms accumulate with
//! atomics, so GPU runs are not bit-reproducible (the CPU ones are).
//!
//! `LOSSFLOOR_CUDA_CONV=candle` in the environment switches back to candle's `conv2d` at run
//! time, so the two can be compared on a GPU machine (which has no Rust toolchain) without
//! rebuilding. In a build with this feature candle's forward pass is cuDNN as well (its own
//! `cudnn` feature), so the switch changes the backward pass: candle's direct-loop
//! `conv_transpose2d` for dx and its conv2d-based dW, against cuDNN's backward kernels here.
//! candle's cuDNN call sets no math type, so on Ampere and later it may use TF32; a fair
//! comparison needs `NVIDIA_TF32_OVERRIDE=0`, which `scripts/gpu-env.sh` exports.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{self, sys, Cudnn, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor};

/// Whether `conv2d` on CUDA goes through this module: f32 or f64 tensors of one dtype, and
/// `LOSSFLOOR_CUDA_CONV` not set to `candle`.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && w.dtype() == x.dtype()
        && enabled()
}

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LOSSFLOOR_CUDA_CONV").map_or(true, |v| v != "candle"))
}

thread_local! {
    // cuDNN handles are not thread-safe, so each host thread keeps one per device.
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(|e| err("creating a cuDNN handle", e))?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

fn err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("conv2d (cuDNN): {what}: {e:?}"))
}

fn dims_i32(d: [usize; 4]) -> Result<[i32; 4]> {
    let mut out = [0i32; 4];
    for (o, v) in out.iter_mut().zip(d) {
        *o = i32::try_from(v).map_err(|_| err("tensor dimension over 2^31", v))?;
    }
    Ok(out)
}

fn dims4(l: &Layout) -> Result<[usize; 4]> {
    match *l.dims() {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref other => candle_core::bail!("conv2d (cuDNN): expected a 4-d tensor, got {other:?}"),
    }
}

/// The contiguous elements of one input.
fn view<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("conv2d (cuDNN): inputs must be contiguous");
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// Which pass, with the shape of its output and of the tensor it does not receive.
#[derive(Debug, Clone, Copy)]
pub enum CudnnPass {
    /// y from (x, w).
    Forward,
    /// dx from (dy, w); the input's shape.
    GradInput([usize; 4]),
    /// dW from (dy, x); the weight's shape.
    GradWeight([usize; 4]),
}

/// The descriptors of one convolution: x [N,C,H,W], w [O,C,kh,kw], y [N,O,Ho,Wo].
struct Descriptors<T: CudnnDataType> {
    conv: cudnn::ConvDescriptor<T>,
    x: cudnn::TensorDescriptor<T>,
    w: cudnn::FilterDescriptor<T>,
    y: cudnn::TensorDescriptor<T>,
}

fn out_size(i: usize, k: usize, stride: usize, pad: usize) -> Result<usize> {
    if stride == 0 || i + 2 * pad < k {
        candle_core::bail!(
            "conv2d (cuDNN): kernel {k} does not fit input {i} with padding {pad}, stride {stride}"
        );
    }
    Ok((i + 2 * pad - k) / stride + 1)
}

impl<T: CudnnDataType> Descriptors<T> {
    fn new(
        c: &Arc<Cudnn>,
        x: [usize; 4],
        w: [usize; 4],
        stride: usize,
        pad: usize,
    ) -> Result<(Self, [usize; 4])> {
        if x[1] != w[1] {
            candle_core::bail!(
                "conv2d (cuDNN): input has {} channels, weight expects {}",
                x[1],
                w[1]
            );
        }
        let y = [
            x[0],
            w[0],
            out_size(x[2], w[2], stride, pad)?,
            out_size(x[3], w[3], stride, pad)?,
        ];
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let (s, p) = (stride as i32, pad as i32);
        let mut conv = c
            .create_conv2d::<T>(
                [p, p],
                [s, s],
                [1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(|e| err("convolution descriptor", e))?;
        conv.set_math_type(sys::cudnnMathType_t::CUDNN_FMA_MATH)
            .map_err(|e| err("math type", e))?;
        let d = Self {
            conv,
            x: c.create_4d_tensor::<T>(nchw, dims_i32(x)?)
                .map_err(|e| err("input descriptor", e))?,
            w: c.create_4d_filter::<T>(nchw, dims_i32(w)?)
                .map_err(|e| err("filter descriptor", e))?,
            y: c.create_4d_tensor::<T>(nchw, dims_i32(y)?)
                .map_err(|e| err("output descriptor", e))?,
        };
        Ok((d, y))
    }
}

/// A workspace of `bytes` (at least one byte, so that one code path serves every algorithm);
/// uninitialised, as cuDNN only uses it as scratch.
fn workspace(dev: &CudaDevice, bytes: usize) -> Result<CudaSlice<u8>> {
    // SAFETY: cuDNN writes the workspace before reading it.
    unsafe { dev.alloc::<u8>(bytes.max(1)) }
}

/// An output of `n` elements, uninitialised: every pass runs with β = 0, so cuDNN writes
/// every element without reading it.
fn output<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: see above.
    unsafe { dev.alloc::<T>(n) }
}

/// The chosen algorithm of one pass.
#[derive(Debug, Clone, Copy)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// What an algorithm choice depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    device: DeviceId,
    pass: u8,
    dtype: DType,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: usize,
}

thread_local! {
    // cuDNN's heuristic query costs host time on every call; PyTorch also caches its answer
    // per shape.
    static ALGOS: RefCell<HashMap<Key, Algo>> = RefCell::new(HashMap::new());
}

/// The cached algorithm for `key`, or `pick()`'s answer, then cached.
fn cached(key: Key, pick: impl FnOnce() -> Result<Algo>) -> Result<Algo> {
    if let Some(a) = ALGOS.with(|m| m.borrow().get(&key).copied()) {
        return Ok(a);
    }
    let a = pick()?;
    ALGOS.with(|m| m.borrow_mut().insert(key, a));
    Ok(a)
}

/// `algo` with its workspace, or, when that workspace cannot be allocated, `fallback` (an
/// algorithm that needs little or none) with its own.
fn with_workspace<A: Copy>(
    dev: &CudaDevice,
    algo: A,
    fallback: A,
    size: impl Fn(A) -> std::result::Result<usize, cudnn::CudnnError>,
    what: &str,
) -> Result<(A, CudaSlice<u8>)> {
    let bytes = size(algo).map_err(|e| err(what, e))?;
    if let Ok(ws) = workspace(dev, bytes) {
        return Ok((algo, ws));
    }
    let bytes = size(fallback).map_err(|e| err(what, e))?;
    Ok((fallback, workspace(dev, bytes)?))
}

/// Runs `pass` on the two inputs of the conv op (see [`CudnnPass`] for which they are).
pub fn run(
    pass: CudnnPass,
    stride: usize,
    pad: usize,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    match (a.0.dtype(), b.0.dtype()) {
        (DType::F32, DType::F32) => run_typed::<f32>(pass, stride, pad, a, b, (1.0, 0.0)),
        (DType::F64, DType::F64) => run_typed::<f64>(pass, stride, pad, a, b, (1.0, 0.0)),
        (da, db) => candle_core::bail!(
            "conv2d (cuDNN): expected two f32 or two f64 tensors, got {da:?} and {db:?}"
        ),
    }
}

fn run_typed<T>(
    pass: CudnnPass,
    stride: usize,
    pad: usize,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    alpha_beta: (T, T),
) -> Result<(CudaStorage, Shape)>
where
    T: CudnnDataType + CudaDType + DeviceRepr,
{
    let dev = a.0.device.clone();
    let c = handle(&dev)?;
    let (av, bv) = (view::<T>(a.0, a.1)?, view::<T>(b.0, b.1)?);
    // x and w of the convolution, whichever pass this is.
    let (x_shape, w_shape) = match pass {
        CudnnPass::Forward => (dims4(a.1)?, dims4(b.1)?),
        CudnnPass::GradInput(x) => (x, dims4(b.1)?),
        CudnnPass::GradWeight(w) => (dims4(b.1)?, w),
    };
    let (d, y_shape) = Descriptors::<T>::new(&c, x_shape, w_shape, stride, pad)?;
    if !matches!(pass, CudnnPass::Forward) {
        check_dy(a.1, y_shape)?;
    }
    let key = |pass: u8| Key {
        device: dev.id(),
        pass,
        dtype: a.0.dtype(),
        x: x_shape,
        w: w_shape,
        stride,
        pad,
    };
    let (out, shape) = match pass {
        CudnnPass::Forward => {
            let op = cudnn::ConvForward {
                conv: &d.conv,
                x: &d.x,
                w: &d.w,
                y: &d.y,
            };
            let Algo::Forward(algo) = cached(key(0), || {
                op.pick_algorithm()
                    .map(Algo::Forward)
                    .map_err(|e| err("forward algorithm", e))
            })?
            else {
                unreachable!("forward keys hold forward algorithms")
            };
            let (algo, mut ws) = with_workspace(
                &dev,
                algo,
                sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                |a| op.get_workspace_size(a),
                "forward workspace",
            )?;
            let mut y = output::<T>(&dev, y_shape.iter().product())?;
            // SAFETY: the descriptors were built from these tensors' shapes, and the views
            // and the output hold exactly that many contiguous elements.
            unsafe { op.launch(algo, Some(&mut ws), alpha_beta, &av, &bv, &mut y) }
                .map_err(|e| err("forward", e))?;
            (y, y_shape)
        }
        CudnnPass::GradInput(_) => {
            let op = cudnn::ConvBackwardData {
                conv: &d.conv,
                dx: &d.x,
                w: &d.w,
                dy: &d.y,
            };
            let Algo::Data(algo) = cached(key(1), || {
                op.pick_algorithm()
                    .map(Algo::Data)
                    .map_err(|e| err("input-gradient algorithm", e))
            })?
            else {
                unreachable!("input-gradient keys hold backward-data algorithms")
            };
            let (algo, mut ws) = with_workspace(
                &dev,
                algo,
                sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
                |a| op.get_workspace_size(a),
                "input-gradient workspace",
            )?;
            let mut dx = output::<T>(&dev, x_shape.iter().product())?;
            // SAFETY: as in the forward pass; dy (a) has the output's shape, checked above.
            unsafe { op.launch(algo, Some(&mut ws), alpha_beta, &mut dx, &bv, &av) }
                .map_err(|e| err("input gradient", e))?;
            (dx, x_shape)
        }
        CudnnPass::GradWeight(_) => {
            let op = cudnn::ConvBackwardFilter {
                conv: &d.conv,
                x: &d.x,
                dw: &d.w,
                dy: &d.y,
            };
            let Algo::Filter(algo) = cached(key(2), || {
                op.pick_algorithm()
                    .map(Algo::Filter)
                    .map_err(|e| err("weight-gradient algorithm", e))
            })?
            else {
                unreachable!("weight-gradient keys hold backward-filter algorithms")
            };
            let (algo, mut ws) = with_workspace(
                &dev,
                algo,
                sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                |a| op.get_workspace_size(a),
                "weight-gradient workspace",
            )?;
            let mut dw = output::<T>(&dev, w_shape.iter().product())?;
            // SAFETY: as in the forward pass; dy (a) has the output's shape, checked above.
            unsafe { op.launch(algo, Some(&mut ws), alpha_beta, &bv, &mut dw, &av) }
                .map_err(|e| err("weight gradient", e))?;
            (dw, w_shape)
        }
    };
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from(shape.to_vec()),
    ))
}

fn check_dy(l: &Layout, y_shape: [usize; 4]) -> Result<()> {
    if dims4(l)? != y_shape {
        candle_core::bail!(
            "conv2d (cuDNN): output gradient has shape {:?}, the convolution's output is {y_shape:?}",
            l.dims()
        );
    }
    Ok(())
}
