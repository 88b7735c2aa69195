//! EDM's building blocks (`Linear`, `Conv2d` with resampling, `GroupNorm`,
//! `UNetBlock`) from primitive candle ops, all of which have a backward pass.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::dropout::DropoutRng;
use crate::init::{PInit, ParamCtx};
use crate::{NetsError, Result};

/// EDM's `init_mode` / `init_weight` / `init_bias` of one layer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InitKind {
    /// `xavier_uniform * weight_gain`, zero bias (SongUNet).
    Xavier { weight_gain: f64 },
    /// `kaiming_uniform`: weight and bias U(-1, 1) * sqrt(3 / fan_in), times
    /// `weight_gain` and `bias_gain` respectively (DhariwalUNet).
    KaimingUniform { weight_gain: f64, bias_gain: f64 },
    /// `kaiming_normal`: weight N(0, 1 / fan_in) * weight_gain^2, zero bias.
    KaimingNormal { weight_gain: f64 },
    /// All-zero weight and bias (`init_weight=0, init_bias=0`).
    Zero,
}

impl InitKind {
    /// Initialisation law of the weight of a layer with the given fans.
    pub(crate) fn weight(self, fan_in: usize, fan_out: usize) -> PInit {
        match self {
            InitKind::Xavier { weight_gain } => PInit::Xavier {
                fan_in,
                fan_out,
                gain: weight_gain,
            },
            InitKind::KaimingUniform { weight_gain, .. } => kaiming_uniform(fan_in, weight_gain),
            InitKind::KaimingNormal { weight_gain } => PInit::Normal {
                std: weight_gain / (fan_in as f64).sqrt(),
            },
            InitKind::Zero => PInit::Zeros,
        }
    }

    /// Initialisation law of the bias (EDM draws it with the layer's fans).
    pub(crate) fn bias(self, fan_in: usize) -> PInit {
        match self {
            InitKind::KaimingUniform { bias_gain, .. } => kaiming_uniform(fan_in, bias_gain),
            _ => PInit::Zeros,
        }
    }
}

fn kaiming_uniform(fan_in: usize, gain: f64) -> PInit {
    if gain == 0.0 {
        PInit::Zeros
    } else {
        PInit::Uniform {
            bound: gain * (3.0 / fan_in as f64).sqrt(),
        }
    }
}

/// SongUNet's `init = dict(init_mode='xavier_uniform')`.
pub(crate) const INIT: InitKind = InitKind::Xavier { weight_gain: 1.0 };
/// SongUNet's `init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)`.
pub(crate) const INIT_ZERO: InitKind = InitKind::Xavier { weight_gain: 1e-5 };

/// SongUNet's `init_attn = dict(init_mode='xavier_uniform', init_weight=sqrt(0.2))`.
pub(crate) fn init_attn() -> InitKind {
    InitKind::Xavier {
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
            init.weight(in_features, out_features),
        )?;
        let bias = if bias {
            Some(ctx.param(vb, "bias", &[out_features], init.bias(in_features))?)
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
        let rows = x.elem_count() / self.in_features.max(1);
        lossfloor_ops::macs::record_macs((rows as u64) * self.macs());
        let y = x.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

impl Linear {
    /// Multiply-adds per input row: in·out.
    pub(crate) fn macs(&self) -> u64 {
        self.weight.elem_count() as u64
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

    /// GroupNorm (fused kernel of `lossfloor-ops` on CPU).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(lossfloor_ops::group_norm(
            x,
            self.groups,
            &self.weight,
            &self.bias,
            self.eps,
            false,
        )?)
    }

    /// `silu(GroupNorm(x + shift))` with a per-image, per-channel `shift` [N, C], in one op
    /// that never forms x + shift.
    pub(crate) fn forward_silu_shifted(&self, x: &Tensor, shift: &Tensor) -> Result<Tensor> {
        Ok(lossfloor_ops::group_norm_shifted(
            x,
            shift,
            self.groups,
            &self.weight,
            &self.bias,
            self.eps,
            true,
        )?)
    }

    /// `silu(GroupNorm(x))` in one fused op.
    pub(crate) fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(lossfloor_ops::group_norm(
            x,
            self.groups,
            &self.weight,
            &self.bias,
            self.eps,
            true,
        )?)
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
            Resample::Box => Ok(lossfloor_ops::downsample2x_box(x)?),
            Resample::Fir { kernel, .. } => {
                let (n, c, h, w) = x.dims4()?;
                let y = lossfloor_ops::conv2d(&x.reshape((n * c, 1, h, w))?, kernel, None, 2, pad)?;
                let (_, _, ho, wo) = y.dims4()?;
                Ok(y.reshape((n, c, ho, wo))?)
            }
        }
    }

    /// Depthwise transposed filter (times 4) at stride 2 with the given padding.
    pub(crate) fn up(&self, x: &Tensor, pad: usize) -> Result<Tensor> {
        match self {
            // Not candle's `upsample_nearest2d`: its backward in candle 0.11.1 overwrites
            // (instead of adding to) the gradient already accumulated for its input,
            // which breaks any input that has a second consumer.
            Resample::Box => Ok(lossfloor_ops::upsample2x_nearest(x)?),
            Resample::Fir { kernel_up, .. } => {
                let (n, c, h, w) = x.dims4()?;
                lossfloor_ops::macs::record_macs((n * c * h * w * kernel_up.elem_count()) as u64);
                let y = x
                    .reshape((n * c, 1, h, w))?
                    .conv_transpose2d(kernel_up, pad, 0, 2, 1)?;
                let (_, _, ho, wo) = y.dims4()?;
                Ok(y.reshape((n, c, ho, wo))?)
            }
        }
    }
}

/// Output size of a convolution over `size` pixels with kernel `k`, padding `pad`, stride
/// `stride`: ⌊(size + 2·pad − k)/stride⌋ + 1.
fn conv_out(size: usize, k: usize, pad: usize, stride: usize) -> usize {
    (size + 2 * pad - k) / stride + 1
}

impl Resample {
    /// Multiply-adds of [`Resample::down`] on a `c`×`h`×`w` image, and the output size. The
    /// box filter (an average pool) is not counted; the FIR filter is a depthwise k×k conv.
    pub(crate) fn down_macs(
        &self,
        c: usize,
        h: usize,
        w: usize,
        pad: usize,
    ) -> (u64, usize, usize) {
        match self {
            Resample::Box => (0, h / 2, w / 2),
            Resample::Fir { kernel, .. } => {
                let k = kernel.dim(2).unwrap_or(1);
                let (ho, wo) = (conv_out(h, k, pad, 2), conv_out(w, k, pad, 2));
                ((c * ho * wo * k * k) as u64, ho, wo)
            }
        }
    }

    /// Multiply-adds of [`Resample::up`] (a transposed depthwise conv: k² per input pixel),
    /// and the output size; the box filter (nearest upsampling) is not counted.
    pub(crate) fn up_macs(&self, c: usize, h: usize, w: usize, pad: usize) -> (u64, usize, usize) {
        match self {
            Resample::Box => (0, 2 * h, 2 * w),
            Resample::Fir { kernel_up, .. } => {
                let k = kernel_up.dim(2).unwrap_or(1);
                let (ho, wo) = ((h - 1) * 2 + k - 2 * pad, (w - 1) * 2 + k - 2 * pad);
                ((c * h * w * k * k) as u64, ho, wo)
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
            let fan_in = in_channels * kernel * kernel;
            let fan_out = out_channels * kernel * kernel;
            let w = ctx.param(
                vb,
                "weight",
                &[out_channels, in_channels, kernel, kernel],
                init.weight(fan_in, fan_out),
            )?;
            let b = ctx.param(vb, "bias", &[out_channels], init.bias(fan_in))?;
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
        let bias = self.bias.as_ref();
        match (&self.resample, self.sampling) {
            (Some(r), Sampling::FusedDown) => {
                // The constructor guarantees a weight here; the bias is added
                // after the (linear, sum-1) filter, as in EDM.
                let w = self
                    .weight
                    .as_ref()
                    .ok_or_else(|| NetsError::Config("fused resampling needs a kernel".into()))?;
                let y = r.down(&lossfloor_ops::conv2d(x, w, None, 1, w_pad + r.pad())?, 0)?;
                Ok(match bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
                    None => y,
                })
            }
            (resample, sampling) => {
                let x = match resample {
                    Some(r) if sampling == Sampling::Up => r.up(x, r.pad())?,
                    Some(r) => r.down(x, r.pad())?,
                    None => x.clone(),
                };
                Ok(match &self.weight {
                    Some(w) => lossfloor_ops::conv2d(&x, w, bias, 1, w_pad)?,
                    None => x,
                })
            }
        }
    }
}

impl Conv2d {
    /// Multiply-adds of [`Conv2d::forward`] on one `c`×`h`×`w` image (the k×k conv:
    /// c_out·c_in·k² per output pixel, plus the resampling filter), and the output shape.
    pub(crate) fn macs(&self, (c, h, w): (usize, usize, usize)) -> (u64, (usize, usize, usize)) {
        let (c_out, k) = match &self.weight {
            Some(wt) => (wt.dim(0).unwrap_or(0), self.kernel),
            None => (c, 0),
        };
        let w_pad = self.kernel / 2;
        let conv = |h: usize, w: usize, pad: usize| -> (u64, usize, usize) {
            if k == 0 {
                return (0, h, w);
            }
            let (ho, wo) = (conv_out(h, k, pad, 1), conv_out(w, k, pad, 1));
            ((c_out * ho * wo * c * k * k) as u64, ho, wo)
        };
        match (&self.resample, self.sampling) {
            (Some(r), Sampling::FusedDown) => {
                let (m0, h1, w1) = conv(h, w, w_pad + r.pad());
                let (m1, h2, w2) = r.down_macs(c_out, h1, w1, 0);
                (m0 + m1, (c_out, h2, w2))
            }
            (Some(r), Sampling::Up) => {
                let (m0, h1, w1) = r.up_macs(c, h, w, r.pad());
                let (m1, h2, w2) = conv(h1, w1, w_pad);
                (m0 + m1, (c_out, h2, w2))
            }
            (Some(r), _) => {
                let (m0, h1, w1) = r.down_macs(c, h, w, r.pad());
                let (m1, h2, w2) = conv(h1, w1, w_pad);
                (m0 + m1, (c_out, h2, w2))
            }
            (None, _) => {
                let (m, h1, w1) = conv(h, w, w_pad);
                (m, (c_out, h1, w1))
            }
        }
    }
}

/// Number of attention heads of a [`UNetBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heads {
    /// A fixed count (`num_heads`; SongUNet uses 1).
    Fixed(usize),
    /// `out_channels / channels_per_head` (DhariwalUNet uses 64); zero heads
    /// (fewer channels than one head) means no attention, as in EDM.
    PerHead(usize),
}

/// Options of a [`UNetBlock`] shared by all blocks of a network (EDM's `block_kwargs`).
#[derive(Debug, Clone)]
pub(crate) struct BlockOpts {
    pub(crate) emb_channels: usize,
    pub(crate) dropout: f64,
    pub(crate) filter: Vec<f64>,
    pub(crate) heads: Heads,
    pub(crate) skip_scale: f64,
    pub(crate) eps: f64,
    /// A 1x1 skip conv also when only resampling (otherwise a parameter-free resample).
    pub(crate) resample_proj: bool,
    /// Per-block conditioning as `norm1(x) * (scale + 1) + shift` instead of `norm1(x + emb)`.
    pub(crate) adaptive_scale: bool,
    pub(crate) init: InitKind,
    pub(crate) init_zero: InitKind,
    pub(crate) init_attn: InitKind,
}

impl BlockOpts {
    /// SongUNet's blocks: `num_heads = 1`, `skip_scale = sqrt(0.5)`, `eps = 1e-6`,
    /// `resample_proj = True`, `adaptive_scale = False`, xavier init.
    pub(crate) fn song(emb_channels: usize, dropout: f64, filter: Vec<f64>) -> Self {
        Self {
            emb_channels,
            dropout,
            filter,
            heads: Heads::Fixed(1),
            skip_scale: std::f64::consts::FRAC_1_SQRT_2,
            eps: 1e-6,
            resample_proj: true,
            adaptive_scale: false,
            init: INIT,
            init_zero: INIT_ZERO,
            init_attn: init_attn(),
        }
    }
}

/// Self-attention of a [`UNetBlock`]: `norm2`, 1x1 `qkv`, 1x1 `proj`.
#[derive(Debug, Clone)]
struct Attention {
    norm2: GroupNorm,
    qkv: Conv2d,
    proj: Conv2d,
    heads: usize,
}

/// EDM's unified `UNetBlock` (DDPM++, NCSN++ and ADM).
#[derive(Debug, Clone)]
pub(crate) struct UNetBlock {
    norm0: GroupNorm,
    conv0: Conv2d,
    affine: Linear,
    norm1: GroupNorm,
    conv1: Conv2d,
    skip: Option<Conv2d>,
    attn: Option<Attention>,
    dropout: f64,
    skip_scale: f64,
    adaptive_scale: bool,
    pub(crate) in_channels: usize,
}

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
        let heads = match (attention, opts.heads) {
            (false, _) => 0,
            (true, Heads::Fixed(h)) => h,
            (true, Heads::PerHead(c)) => out_channels / c.max(1),
        };
        if heads > 0 && !out_channels.is_multiple_of(heads) {
            return Err(NetsError::Config(format!(
                "attention: {out_channels} channels cannot be split into {heads} heads"
            )));
        }
        let norm0 = GroupNorm::new(ctx, &vb.pp("norm0"), in_channels, opts.eps)?;
        let conv0 = Conv2d::new(
            ctx,
            &vb.pp("conv0"),
            in_channels,
            out_channels,
            3,
            sampling,
            f,
            opts.init,
        )?;
        let affine_out = out_channels * if opts.adaptive_scale { 2 } else { 1 };
        let affine = Linear::new(
            ctx,
            &vb.pp("affine"),
            opts.emb_channels,
            affine_out,
            true,
            opts.init,
        )?;
        let norm1 = GroupNorm::new(ctx, &vb.pp("norm1"), out_channels, opts.eps)?;
        let conv1 = Conv2d::new(
            ctx,
            &vb.pp("conv1"),
            out_channels,
            out_channels,
            3,
            Sampling::None,
            f,
            opts.init_zero,
        )?;
        // A skip layer whenever channels change or the block resamples: a 1x1
        // conv, or a parameter-free resampling (kernel 0) when only resampling
        // without `resample_proj`.
        let skip = if out_channels != in_channels || sampling != Sampling::None {
            let kernel = usize::from(opts.resample_proj || out_channels != in_channels);
            Some(Conv2d::new(
                ctx,
                &vb.pp("skip"),
                in_channels,
                out_channels,
                kernel,
                sampling,
                f,
                opts.init,
            )?)
        } else {
            None
        };
        let attn = if heads > 0 {
            let norm2 = GroupNorm::new(ctx, &vb.pp("norm2"), out_channels, opts.eps)?;
            let qkv = Conv2d::new(
                ctx,
                &vb.pp("qkv"),
                out_channels,
                out_channels * 3,
                1,
                Sampling::None,
                f,
                opts.init_attn,
            )?;
            let proj = Conv2d::new(
                ctx,
                &vb.pp("proj"),
                out_channels,
                out_channels,
                1,
                Sampling::None,
                f,
                opts.init_zero,
            )?;
            Some(Attention {
                norm2,
                qkv,
                proj,
                heads,
            })
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
            skip_scale: opts.skip_scale,
            adaptive_scale: opts.adaptive_scale,
            in_channels,
        })
    }

    /// Multiply-adds of [`UNetBlock::forward`] on one image of `shape` (convolutions, the
    /// embedding's affine layer, attention's qkv/proj convs and its two matmuls), and the
    /// output shape.
    pub(crate) fn macs(&self, shape: (usize, usize, usize)) -> (u64, (usize, usize, usize)) {
        let (m0, out) = self.conv0.macs(shape);
        let (m1, _) = self.conv1.macs(out);
        let ms = self.skip.as_ref().map_or(0, |s| s.macs(shape).0);
        let mut total = m0 + self.affine.macs() + m1 + ms;
        if let Some(attn) = &self.attn {
            let (c, h, w) = out;
            let l = h * w;
            total += attn.qkv.macs(out).0 + attn.proj.macs(out).0;
            // Per head, logits and weighted values: 2·L·L·(c/heads), over all heads.
            total += (2 * l * l * c) as u64;
        }
        (total, out)
    }

    /// `drop`: the network's dropout source in training, `None` in evaluation.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        drop: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let mut h = self.conv0.forward(&self.norm0.forward_silu(x)?)?;
        let params = {
            let _prof = lossfloor_ops::profile::scope(lossfloor_ops::profile::Category::Embedding);
            self.affine.forward(emb)?
        };
        h = if self.adaptive_scale {
            // silu(shift + norm1(h) * (scale + 1)), scale first and shift second.
            let params = params.unsqueeze(2)?.unsqueeze(3)?;
            let c = h.dim(1)?;
            let scale = (params.narrow(1, 0, c)? + 1.0)?;
            let shift = params.narrow(1, c, c)?;
            self.norm1
                .forward(&h)?
                .broadcast_mul(&scale)?
                .broadcast_add(&shift)?
                .silu()?
        } else {
            // silu(norm1(h + params)), without keeping h + params alive for the backward pass
            self.norm1.forward_silu_shifted(&h, &params)?
        };
        if let Some(rng) = drop {
            h = rng.dropout(&h, self.dropout)?;
        }
        h = self.conv1.forward(&h)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        h = lossfloor_ops::add_scaled(&h, &skip, self.skip_scale)?;

        if let Some(attn) = &self.attn {
            // The qkv channels are laid out as (head, c_head, 3).
            let (n, c, hh, ww) = h.dims4()?;
            let (b, ch, l) = (n * attn.heads, c / attn.heads, hh * ww);
            let qkv = attn
                .qkv
                .forward(&attn.norm2.forward(&h)?)?
                .reshape((b, ch, 3, l))?;
            let q = qkv.narrow(2, 0, 1)?.squeeze(2)?;
            let k = qkv.narrow(2, 1, 1)?.squeeze(2)?;
            let v = qkv.narrow(2, 2, 1)?.squeeze(2)?;
            let a = lossfloor_ops::attention(&q, &k, &v)?.reshape((n, c, hh, ww))?;
            h = lossfloor_ops::add_scaled(&attn.proj.forward(&a)?, &h, self.skip_scale)?;
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
