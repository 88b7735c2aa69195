//! EDM's building blocks (`Linear`, `Conv2d` with resampling, `GroupNorm`,
//! `UNetBlock`) from primitive candle ops, all of which have a backward pass.

use candle_core::{Device, Tensor, D};
use candle_nn::VarBuilder;

use crate::init::{PInit, ParamCtx};
use crate::{NetsError, Result};

/// EDM's init presets of SongUNet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InitKind {
    /// Multiplier of the xavier-uniform weights (`init_weight`).
    pub(crate) weight_gain: f64,
}

/// `init = dict(init_mode='xavier_uniform')`.
pub(crate) const INIT: InitKind = InitKind { weight_gain: 1.0 };
/// `init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)`.
pub(crate) const INIT_ZERO: InitKind = InitKind { weight_gain: 1e-5 };

/// `init_attn = dict(init_mode='xavier_uniform', init_weight=sqrt(0.2))`.
pub(crate) fn init_attn() -> InitKind {
    InitKind {
        weight_gain: 0.2f64.sqrt(),
    }
}

/// Fully connected layer `x @ W^T + b`, weight `[out, in]`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    pub(crate) in_features: usize,
}

impl Linear {
    pub(crate) fn new(
        ctx: &mut ParamCtx,
        vb: &VarBuilder,
        in_features: usize,
        out_features: usize,
        bias: bool,
        init: InitKind,
    ) -> Result<Self> {
        let weight = ctx.param(
            vb,
            "weight",
            &[out_features, in_features],
            PInit::Xavier {
                fan_in: in_features,
                fan_out: out_features,
                gain: init.weight_gain,
            },
        )?;
        let bias = if bias {
            Some(ctx.param(vb, "bias", &[out_features], PInit::Zeros)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            in_features,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Group normalisation with `num_groups = min(32, C / 4)`, affine weight and bias.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub(crate) fn new(
        ctx: &mut ParamCtx,
        vb: &VarBuilder,
        channels: usize,
        eps: f64,
    ) -> Result<Self> {
        let groups = 32.min(channels / 4);
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(NetsError::Config(format!(
                "GroupNorm: {channels} channels cannot be split into min(32, C/4) = {groups} groups"
            )));
        }
        let weight = ctx.param(vb, "weight", &[channels], PInit::Ones)?;
        let bias = ctx.param(vb, "bias", &[channels], PInit::Zeros)?;
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let xg = x.reshape((n, self.groups, (c / self.groups) * h * w))?;
        let mean = xg.mean_keepdim(2)?;
        let xc = xg.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(2)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let xn = xn.reshape((n, c, h, w))?;
        Ok(xn
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?)
    }
}

/// The fixed 2x resampling filter `f f^T / (sum f)^2` of EDM's `Conv2d`.
#[derive(Debug, Clone)]
pub(crate) enum Resample {
    /// Filter `[1,1]`: exactly 2x nearest upsampling (broadcast + reshape) and
    /// 2x2 average pooling.
    Box,
    /// Any other filter: a depthwise FIR at stride 2 (one single-channel conv
    /// over `N*C` images).
    Fir {
        /// `[1, 1, k, k]`, normalised to sum 1.
        kernel: Tensor,
        /// `kernel * 4`, for upsampling.
        kernel_up: Tensor,
        /// `(k - 1) / 2`.
        pad: usize,
    },
}

impl Resample {
    pub(crate) fn new(filter: &[f64], device: &Device) -> Result<Self> {
        if filter.len() == 2 && filter[0] == filter[1] {
            return Ok(Resample::Box);
        }
        Self::fir(filter, device)
    }

    /// The FIR form for any filter (also `[1,1]`, for testing the exact shortcut).
    pub(crate) fn fir(filter: &[f64], device: &Device) -> Result<Self> {
        let k = filter.len();
        let s: f64 = filter.iter().sum();
        let mut v = Vec::with_capacity(k * k);
        for a in filter {
            for b in filter {
                v.push((a * b / (s * s)) as f32);
            }
        }
        let kernel = Tensor::from_vec(v, (1, 1, k, k), device)?;
        let kernel_up = (&kernel * 4.0)?;
        Ok(Resample::Fir {
            kernel,
            kernel_up,
            pad: (k - 1) / 2,
        })
    }

    /// Padding EDM uses around the filter (`f_pad`).
    pub(crate) fn pad(&self) -> usize {
        match self {
            Resample::Box => 0,
            Resample::Fir { pad, .. } => *pad,
        }
    }

    /// Depthwise filter at stride 2 with the given padding.
    pub(crate) fn down(&self, x: &Tensor, pad: usize) -> Result<Tensor> {
        match self {
            Resample::Box => Ok(x.avg_pool2d(2)?),
            Resample::Fir { kernel, .. } => {
                let (n, c, h, w) = x.dims4()?;
                let y = x.reshape((n * c, 1, h, w))?.conv2d(kernel, pad, 2, 1, 1)?;
                let (_, _, ho, wo) = y.dims4()?;
                Ok(y.reshape((n, c, ho, wo))?)
            }
        }
    }

    /// Depthwise transposed filter (times 4) at stride 2 with the given padding.
    pub(crate) fn up(&self, x: &Tensor, pad: usize) -> Result<Tensor> {
        match self {
            Resample::Box => {
                // Not `upsample_nearest2d`: its backward in candle 0.11.1 overwrites
                // (instead of adding to) the gradient already accumulated for its
                // input, which breaks any input that has a second consumer.
                let (n, c, h, w) = x.dims4()?;
                Ok(x.reshape((n, c, h, 1, w, 1))?
                    .broadcast_as((n, c, h, 2, w, 2))?
                    .reshape((n, c, 2 * h, 2 * w))?)
            }
            Resample::Fir { kernel_up, .. } => {
                let (n, c, h, w) = x.dims4()?;
                let y = x
                    .reshape((n * c, 1, h, w))?
                    .conv_transpose2d(kernel_up, pad, 0, 2, 1)?;
                let (_, _, ho, wo) = y.dims4()?;
                Ok(y.reshape((n, c, ho, wo))?)
            }
        }
    }
}

/// Direction of resampling of a [`Conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sampling {
    None,
    Up,
    Down,
    /// Conv first (padding `w_pad + f_pad`), then filter at stride 2 without padding.
    FusedDown,
}

/// EDM's `Conv2d`: optional up/down resampling, then an optional `k x k` conv
/// (`kernel = 0` means resampling only), then bias.
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    sampling: Sampling,
    resample: Option<Resample>,
    kernel: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: &mut ParamCtx,
        vb: &VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        sampling: Sampling,
        filter: &[f64],
        init: InitKind,
    ) -> Result<Self> {
        let (weight, bias) = if kernel > 0 {
            let w = ctx.param(
                vb,
                "weight",
                &[out_channels, in_channels, kernel, kernel],
                PInit::Xavier {
                    fan_in: in_channels * kernel * kernel,
                    fan_out: out_channels * kernel * kernel,
                    gain: init.weight_gain,
                },
            )?;
            let b = ctx.param(vb, "bias", &[out_channels], PInit::Zeros)?;
            (Some(w), Some(b))
        } else {
            (None, None)
        };
        if sampling == Sampling::FusedDown && kernel == 0 {
            return Err(NetsError::Config("fused resampling needs a kernel".into()));
        }
        let resample = if sampling == Sampling::None {
            None
        } else {
            Some(Resample::new(filter, vb.device())?)
        };
        Ok(Self {
            weight,
            bias,
            sampling,
            resample,
            kernel,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w_pad = self.kernel / 2;
        let mut x = x.clone();
        match (&self.resample, self.sampling) {
            (Some(r), Sampling::FusedDown) => {
                if let Some(w) = &self.weight {
                    x = x.conv2d(w, w_pad + r.pad(), 1, 1, 1)?;
                }
                x = r.down(&x, 0)?;
            }
            (resample, sampling) => {
                if let Some(r) = resample {
                    x = match sampling {
                        Sampling::Up => r.up(&x, r.pad())?,
                        _ => r.down(&x, r.pad())?,
                    };
                }
                if let Some(w) = &self.weight {
                    x = x.conv2d(w, w_pad, 1, 1, 1)?;
                }
            }
        }
        if let Some(b) = &self.bias {
            let c = b.dim(0)?;
            x = x.broadcast_add(&b.reshape((1, c, 1, 1))?)?;
        }
        Ok(x)
    }
}

/// Options of a [`UNetBlock`] shared by all blocks of a SongUNet.
#[derive(Debug, Clone)]
pub(crate) struct BlockOpts {
    pub(crate) emb_channels: usize,
    pub(crate) dropout: f64,
    pub(crate) filter: Vec<f64>,
}

/// EDM's `UNetBlock` as configured by SongUNet: `num_heads = 1`,
/// `skip_scale = sqrt(0.5)`, `eps = 1e-6`, `resample_proj = True`,
/// `adaptive_scale = False`.
#[derive(Debug, Clone)]
pub(crate) struct UNetBlock {
    norm0: GroupNorm,
    conv0: Conv2d,
    affine: Linear,
    norm1: GroupNorm,
    conv1: Conv2d,
    skip: Option<Conv2d>,
    attn: Option<(GroupNorm, Conv2d, Conv2d)>,
    dropout: f64,
    pub(crate) in_channels: usize,
}

pub(crate) const SKIP_SCALE: f64 = std::f64::consts::FRAC_1_SQRT_2;
const BLOCK_EPS: f64 = 1e-6;

impl UNetBlock {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: &mut ParamCtx,
        vb: &VarBuilder,
        in_channels: usize,
        out_channels: usize,
        sampling: Sampling,
        attention: bool,
        opts: &BlockOpts,
    ) -> Result<Self> {
        let f = &opts.filter;
        let norm0 = GroupNorm::new(ctx, &vb.pp("norm0"), in_channels, BLOCK_EPS)?;
        let conv0 = Conv2d::new(
            ctx,
            &vb.pp("conv0"),
            in_channels,
            out_channels,
            3,
            sampling,
            f,
            INIT,
        )?;
        let affine = Linear::new(
            ctx,
            &vb.pp("affine"),
            opts.emb_channels,
            out_channels,
            true,
            INIT,
        )?;
        let norm1 = GroupNorm::new(ctx, &vb.pp("norm1"), out_channels, BLOCK_EPS)?;
        let conv1 = Conv2d::new(
            ctx,
            &vb.pp("conv1"),
            out_channels,
            out_channels,
            3,
            Sampling::None,
            f,
            INIT_ZERO,
        )?;
        // resample_proj = True: a 1x1 conv whenever channels change or the block resamples.
        let skip = if out_channels != in_channels || sampling != Sampling::None {
            Some(Conv2d::new(
                ctx,
                &vb.pp("skip"),
                in_channels,
                out_channels,
                1,
                sampling,
                f,
                INIT,
            )?)
        } else {
            None
        };
        let attn = if attention {
            let norm2 = GroupNorm::new(ctx, &vb.pp("norm2"), out_channels, BLOCK_EPS)?;
            let qkv = Conv2d::new(
                ctx,
                &vb.pp("qkv"),
                out_channels,
                out_channels * 3,
                1,
                Sampling::None,
                f,
                init_attn(),
            )?;
            let proj = Conv2d::new(
                ctx,
                &vb.pp("proj"),
                out_channels,
                out_channels,
                1,
                Sampling::None,
                f,
                INIT_ZERO,
            )?;
            Some((norm2, qkv, proj))
        } else {
            None
        };
        Ok(Self {
            norm0,
            conv0,
            affine,
            norm1,
            conv1,
            skip,
            attn,
            dropout: opts.dropout,
            in_channels,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = self.conv0.forward(&self.norm0.forward(x)?.silu()?)?;
        let params = self.affine.forward(emb)?.unsqueeze(2)?.unsqueeze(3)?;
        h = self.norm1.forward(&h.broadcast_add(&params)?)?.silu()?;
        if train && self.dropout > 0.0 {
            h = candle_nn::ops::dropout(&h, self.dropout as f32)?;
        }
        h = self.conv1.forward(&h)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        h = ((h + skip)? * SKIP_SCALE)?;

        if let Some((norm2, qkv, proj)) = &self.attn {
            // One head: channels of the qkv output are laid out as (c, 3).
            let (n, c, hh, ww) = h.dims4()?;
            let l = hh * ww;
            let qkv = qkv.forward(&norm2.forward(&h)?)?.reshape((n, c, 3, l))?;
            let q = qkv.narrow(2, 0, 1)?.squeeze(2)?;
            let k = (qkv.narrow(2, 1, 1)?.squeeze(2)? / (c as f64).sqrt())?;
            let v = qkv.narrow(2, 2, 1)?.squeeze(2)?.contiguous()?;
            // w[n, q, k] = softmax_k(sum_c q[n,c,q] k[n,c,k] / sqrt(c))
            let logits = q.transpose(1, 2)?.contiguous()?.matmul(&k.contiguous()?)?;
            let w = candle_nn::ops::softmax(&logits, D::Minus1)?;
            // a[n, c, q] = sum_k w[n,q,k] v[n,c,k]
            let a = v.matmul(&w.transpose(1, 2)?.contiguous()?)?;
            let a = a.reshape((n, c, hh, ww))?;
            h = ((proj.forward(&a)? + h)? * SKIP_SCALE)?;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;

    fn ramp(shape: (usize, usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn box_shortcut_equals_fir_with_filter_1_1() {
        let dev = Device::Cpu;
        let x = ramp((2, 3, 8, 8));
        let b = Resample::new(&[1.0, 1.0], &dev).unwrap();
        let f = Resample::fir(&[1.0, 1.0], &dev).unwrap();
        assert!(matches!(b, Resample::Box));
        assert_eq!(f.pad(), 0);
        let (bd, fd) = (b.down(&x, 0).unwrap(), f.down(&x, 0).unwrap());
        assert_eq!(bd.dims(), &[2, 3, 4, 4]);
        assert!(max_diff(&bd, &fd) < 1e-6);
        let (bu, fu) = (b.up(&x, 0).unwrap(), f.up(&x, 0).unwrap());
        assert_eq!(bu.dims(), &[2, 3, 16, 16]);
        assert!(max_diff(&bu, &fu) < 1e-6);
    }

    /// Gradients of the box shortcut equal those of the FIR form, also when the
    /// input has a second consumer (candle's `upsample_nearest2d` backward fails this).
    #[test]
    fn box_shortcut_gradients_equal_fir_gradients() {
        let dev = Device::Cpu;
        let b = Resample::new(&[1.0, 1.0], &dev).unwrap();
        let f = Resample::fir(&[1.0, 1.0], &dev).unwrap();
        let r_up = ramp((2, 3, 16, 16));
        let r_down = ramp((2, 3, 4, 4));
        let s = (ramp((2, 3, 8, 8)) * 0.5).unwrap();
        let grad = |r: &Resample, up: bool| {
            let x = candle_core::Var::from_tensor(&ramp((2, 3, 8, 8))).unwrap();
            let y = if up {
                (r.up(&x, 0).unwrap() * &r_up).unwrap()
            } else {
                (r.down(&x, 0).unwrap() * &r_down).unwrap()
            };
            let loss =
                (y.sum_all().unwrap() + (x.as_tensor() * &s).unwrap().sum_all().unwrap()).unwrap();
            loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
        };
        for up in [true, false] {
            assert!(max_diff(&grad(&b, up), &grad(&f, up)) < 1e-5, "up = {up}");
        }
    }

    #[test]
    fn fir_1331_shapes_and_constant_interior() {
        let dev = Device::Cpu;
        let r = Resample::new(&[1.0, 3.0, 3.0, 1.0], &dev).unwrap();
        assert_eq!(r.pad(), 1);
        let ones = Tensor::ones((1, 2, 8, 8), candle_core::DType::F32, &dev).unwrap();
        let d = r.down(&ones, 1).unwrap();
        assert_eq!(d.dims(), &[1, 2, 4, 4]);
        let v = d.i((0, 0, 1, 1)).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - 1.0).abs() < 1e-6, "{v}");
        let u = r.up(&ones, 1).unwrap();
        assert_eq!(u.dims(), &[1, 2, 16, 16]);
        let v = u.i((0, 1, 5, 6)).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - 1.0).abs() < 1e-6, "{v}");
        // Fused down (conv padding 2, filter without padding) keeps the size halving.
        let dd = r.down(
            &ones
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .pad_with_zeros(3, 1, 1)
                .unwrap(),
            0,
        );
        assert_eq!(dd.unwrap().dims(), &[1, 2, 4, 4]);
    }

    #[test]
    fn group_norm_normalises_groups() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
        let mut ctx = ParamCtx::seeded(&vm, &dev, 0);
        let gn = GroupNorm::new(&mut ctx, &vb.pp("gn"), 16, 1e-6).unwrap();
        assert_eq!(gn.groups, 4);
        let x = ramp((2, 16, 3, 3));
        let y = gn.forward(&x).unwrap().reshape((2, 4, 36)).unwrap();
        let mean = y.mean_keepdim(2).unwrap();
        let var = y
            .broadcast_sub(&mean)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_keepdim(2)
            .unwrap();
        let m = mean
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let v = (var - 1.0).unwrap().abs().unwrap().max_all().unwrap();
        assert!(m < 1e-5, "{m}");
        assert!(v.to_scalar::<f32>().unwrap() < 1e-3);
    }
}
