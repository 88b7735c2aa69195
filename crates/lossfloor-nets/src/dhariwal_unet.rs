//! EDM's `DhariwalUNet`: the ADM architecture of Dhariwal & Nichol (2021) as
//! re-implemented in EDM's `training/networks.py`.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use std::sync::Arc;

use crate::adm_config::DhariwalUNetConfig;
use crate::dropout::DropoutRng;
use crate::init::ParamCtx;
use crate::layers::{BlockOpts, Conv2d, GroupNorm, Heads, InitKind, Linear, Sampling, UNetBlock};
use crate::network::Network;
use crate::song_unet::PREFIX;
use crate::{NetsError, Result};

/// `init = dict(init_mode='kaiming_uniform', init_weight=sqrt(1/3), init_bias=sqrt(1/3))`:
/// weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn adm_init() -> InitKind {
    let g = (1.0f64 / 3.0).sqrt();
    InitKind::KaimingUniform {
        weight_gain: g,
        bias_gain: g,
    }
}

/// `init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)`.
const ADM_INIT_ZERO: InitKind = InitKind::Zero;

/// GroupNorm eps of ADM (EDM's `GroupNorm` default).
const ADM_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
enum EncItem {
    Conv(Conv2d),
    Block(Box<UNetBlock>),
}

/// EDM's ADM U-Net (`DhariwalUNet` in `training/networks.py`).
///
/// Tensors are named as in EDM's `state_dict` of a preconditioner, e.g.
/// `model.map_label.weight`, `model.enc.64x64_block0.affine.weight`,
/// `model.dec.8x8_in0.qkv.weight`, `model.out_conv.bias`. The network has no
/// buffers (EDM's constant `resample_filter` buffers are not stored).
///
/// Blocks use scale/shift conditioning (`adaptive_scale=True`), skip scale 1,
/// GroupNorm eps 1e-5, `channels_per_head` channels per attention head,
/// parameter-free skips on resampling blocks, kaiming-uniform init with gain
/// sqrt(1/3) and zero init of `conv1`, `proj`, `out_conv` and `map_augment`.
#[derive(Debug, Clone)]
pub struct DhariwalUNet {
    cfg: DhariwalUNetConfig,
    /// `(1/1e4)^(i / (C/2))`, `[1, C/2]` (`endpoint=False`).
    freqs: Tensor,
    map_augment: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    map_label: Option<Linear>,
    enc: Vec<EncItem>,
    dec: Vec<UNetBlock>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    params: Vec<(String, Tensor)>,
    /// Dropout masks (shared by clones of this network).
    dropout_rng: Arc<DropoutRng>,
}

impl DhariwalUNet {
    /// Builds the network in `varmap` (f32 on `device`) with EDM's
    /// initialisation drawn from a generator seeded with `seed`: the same
    /// seed gives the same weights. Existing entries of `varmap` with the
    /// same names are overwritten.
    pub fn new(
        cfg: &DhariwalUNetConfig,
        varmap: &VarMap,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let mut ctx = ParamCtx::seeded(varmap, device, seed);
        Self::build(cfg, &vb, &mut ctx)
    }

    /// Builds the network from any `VarBuilder` (names are looked up under
    /// `model.`), e.g. safetensors of a converted EDM checkpoint. Over a
    /// `VarMap`, missing tensors are created with EDM's init laws from
    /// candle's (unseeded on CPU) generator.
    pub fn from_var_builder(cfg: &DhariwalUNetConfig, vb: VarBuilder) -> Result<Self> {
        let mut ctx = ParamCtx::unseeded();
        Self::build(cfg, &vb, &mut ctx)
    }

    fn build(cfg: &DhariwalUNetConfig, root: &VarBuilder, ctx: &mut ParamCtx) -> Result<Self> {
        cfg.validate()?;
        let vb = root.pp(PREFIX);
        let device = vb.device().clone();
        let mc = cfg.model_channels;
        let emb_channels = cfg.emb_channels();
        let init = adm_init();
        let opts = BlockOpts {
            emb_channels,
            dropout: cfg.dropout,
            filter: vec![1.0, 1.0],
            heads: Heads::PerHead(cfg.channels_per_head),
            skip_scale: 1.0,
            eps: ADM_EPS,
            resample_proj: false,
            adaptive_scale: true,
            init,
            init_zero: ADM_INIT_ZERO,
            init_attn: init,
        };
        let f = opts.filter.clone();

        // Mapping.
        let half = mc / 2;
        let v: Vec<f32> = (0..half)
            .map(|i| (1e-4f64).powf(i as f64 / half as f64) as f32)
            .collect();
        let freqs = Tensor::from_vec(v, (1, half), &device)?;
        let map_augment = if cfg.augment_dim > 0 {
            Some(Linear::new(
                ctx,
                &vb.pp("map_augment"),
                cfg.augment_dim,
                mc,
                false,
                ADM_INIT_ZERO,
            )?)
        } else {
            None
        };
        let map_layer0 = Linear::new(ctx, &vb.pp("map_layer0"), mc, emb_channels, true, init)?;
        let map_layer1 = Linear::new(
            ctx,
            &vb.pp("map_layer1"),
            emb_channels,
            emb_channels,
            true,
            init,
        )?;
        // kaiming_normal with init_weight sqrt(label_dim): N(0, 1).
        let map_label = if cfg.label_dim > 0 {
            Some(Linear::new(
                ctx,
                &vb.pp("map_label"),
                cfg.label_dim,
                emb_channels,
                false,
                InitKind::KaimingNormal {
                    weight_gain: (cfg.label_dim as f64).sqrt(),
                },
            )?)
        } else {
            None
        };

        // Encoder.
        let venc = vb.pp("enc");
        let mut enc = Vec::new();
        let mut skips = Vec::new();
        let mut cout = cfg.in_channels;
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            let res = cfg.img_resolution >> level;
            let p = |s: &str| venc.pp(format!("{res}x{res}_{s}"));
            let attn = cfg.attn_resolutions.contains(&res);
            if level == 0 {
                let cin = cout;
                cout = mc * mult;
                let conv = Conv2d::new(ctx, &p("conv"), cin, cout, 3, Sampling::None, &f, init)?;
                enc.push(EncItem::Conv(conv));
            } else {
                let b = UNetBlock::new(ctx, &p("down"), cout, cout, Sampling::Down, false, &opts)?;
                enc.push(EncItem::Block(Box::new(b)));
            }
            skips.push(cout);
            for idx in 0..cfg.num_blocks {
                let cin = cout;
                cout = mc * mult;
                let name = format!("block{idx}");
                let b = UNetBlock::new(ctx, &p(&name), cin, cout, Sampling::None, attn, &opts)?;
                enc.push(EncItem::Block(Box::new(b)));
                skips.push(cout);
            }
        }

        // Decoder.
        let vdec = vb.pp("dec");
        let mut dec = Vec::new();
        let last = cfg.channel_mult.len() - 1;
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            let res = cfg.img_resolution >> level;
            let p = |s: &str| vdec.pp(format!("{res}x{res}_{s}"));
            let attn = cfg.attn_resolutions.contains(&res);
            if level == last {
                dec.push(UNetBlock::new(
                    ctx,
                    &p("in0"),
                    cout,
                    cout,
                    Sampling::None,
                    true,
                    &opts,
                )?);
                dec.push(UNetBlock::new(
                    ctx,
                    &p("in1"),
                    cout,
                    cout,
                    Sampling::None,
                    false,
                    &opts,
                )?);
            } else {
                dec.push(UNetBlock::new(
                    ctx,
                    &p("up"),
                    cout,
                    cout,
                    Sampling::Up,
                    false,
                    &opts,
                )?);
            }
            for idx in 0..=cfg.num_blocks {
                let skip = skips
                    .pop()
                    .ok_or_else(|| NetsError::Config("encoder/decoder skip mismatch".into()))?;
                let cin = cout + skip;
                cout = mc * mult;
                let name = format!("block{idx}");
                dec.push(UNetBlock::new(
                    ctx,
                    &p(&name),
                    cin,
                    cout,
                    Sampling::None,
                    attn,
                    &opts,
                )?);
            }
        }
        let out_norm = GroupNorm::new(ctx, &vb.pp("out_norm"), cout, ADM_EPS)?;
        let out_conv = Conv2d::new(
            ctx,
            &vb.pp("out_conv"),
            cout,
            cfg.out_channels,
            3,
            Sampling::None,
            &f,
            ADM_INIT_ZERO,
        )?;

        let mut params: Vec<(String, Tensor)> = ctx
            .entries
            .drain(..)
            .filter(|e| !e.buffer)
            .map(|e| (e.name, e.tensor))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));

        Ok(Self {
            cfg: cfg.clone(),
            freqs,
            map_augment,
            map_layer0,
            map_layer1,
            map_label,
            enc,
            dec,
            out_norm,
            out_conv,
            params,
            dropout_rng: Arc::new(DropoutRng::new(0)),
        })
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &DhariwalUNetConfig {
        &self.cfg
    }

    /// Trainable parameters `(name, tensor)`, sorted by name. The tensors share
    /// ids with the VarMap's `Var`s, so `GradStore::get` works on them.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Number of trainable scalars (EDM's `sum(p.numel() for p in parameters())`).
    pub fn num_parameters(&self) -> usize {
        crate::network::element_count(&self.params)
    }

    /// The trainable `Var`s of `varmap` that belong to this network, sorted by name.
    pub fn trainable_vars(&self, varmap: &VarMap) -> Result<Vec<(String, Var)>> {
        crate::network::vars_named(varmap, &self.params)
    }

    /// Multiply-adds of the forward pass of one image, walking the layers as
    /// [`DhariwalUNet::forward`] does with their shapes (what is counted: [`crate::flops`]).
    pub fn forward_macs(&self) -> u64 {
        let mut total = self.map_layer0.macs() + self.map_layer1.macs();
        total += self.map_label.as_ref().map_or(0, |l| l.macs());
        total += self.map_augment.as_ref().map_or(0, |l| l.macs());
        let r = self.cfg.img_resolution;
        let mut x = (self.cfg.in_channels, r, r);
        let mut skips: Vec<usize> = Vec::new();
        for item in &self.enc {
            let (m, s) = match item {
                EncItem::Conv(conv) => conv.macs(x),
                EncItem::Block(block) => block.macs(x),
            };
            total += m;
            x = s;
            skips.push(x.0);
        }
        for block in &self.dec {
            if x.0 != block.in_channels {
                x.0 += skips.pop().unwrap_or(0);
            }
            let (m, s) = block.macs(x);
            total += m;
            x = s;
        }
        total + self.out_conv.macs(x).0
    }

    /// Forward pass `F(x; noise_labels, class_labels, augment_labels)`.
    ///
    /// * `x`: `[N, in_channels, R, R]` (f32)
    /// * `noise_labels`: `[N]` (c_noise of the preconditioner)
    /// * `class_labels`: `[N, label_dim]`, required iff `label_dim > 0`
    /// * `augment_labels`: `[N, augment_dim]`, optional (as in EDM)
    /// * `train`: enables dropout and label dropout (drawn from the network's
    ///   [`DropoutRng`], see [`Network::reseed_dropout`]).
    ///
    /// Returns `[N, out_channels, R, R]`.
    pub fn forward(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let n = crate::network::check_image_batch(
            x,
            noise_labels,
            "noise_labels",
            self.cfg.in_channels,
            self.cfg.img_resolution,
        )?;

        // Mapping: [cos, sin] positional embedding (no swap in ADM).
        let arg = noise_labels
            .reshape((n, 1))?
            .to_dtype(self.freqs.dtype())?
            .broadcast_mul(&self.freqs)?;
        let mut emb = Tensor::cat(&[arg.cos()?, arg.sin()?], 1)?;
        if let (Some(map_augment), Some(aug)) = (&self.map_augment, augment_labels) {
            emb = (emb + map_augment.forward(aug)?)?;
        }
        emb = self.map_layer0.forward(&emb)?.silu()?;
        emb = self.map_layer1.forward(&emb)?;
        if let Some(map_label) = &self.map_label {
            let labels = class_labels.ok_or_else(|| {
                NetsError::Input("class_labels are required when label_dim > 0".into())
            })?;
            let mut tmp = labels.clone();
            if train && self.cfg.label_dropout > 0.0 {
                let keep = self
                    .dropout_rng
                    .keep_rows(n, self.cfg.label_dropout, &tmp)?;
                tmp = tmp.broadcast_mul(&keep)?;
            }
            emb = (emb + map_label.forward(&tmp)?)?;
        }
        let emb = emb.silu()?;
        let drop = train.then_some(&*self.dropout_rng);

        // Encoder.
        let mut skips: Vec<Tensor> = Vec::with_capacity(self.enc.len());
        let mut x = x.clone();
        for item in &self.enc {
            x = match item {
                EncItem::Conv(conv) => conv.forward(&x)?,
                EncItem::Block(block) => block.forward(&x, &emb, drop)?,
            };
            skips.push(x.clone());
        }

        // Decoder.
        for block in &self.dec {
            if x.dim(1)? != block.in_channels {
                let s = skips.pop().ok_or_else(|| {
                    NetsError::Config("decoder ran out of skip connections".into())
                })?;
                x = Tensor::cat(&[&x, &s], 1)?;
            }
            x = block.forward(&x, &emb, drop)?;
        }
        self.out_conv.forward(&self.out_norm.forward_silu(&x)?)
    }
}

impl Network for DhariwalUNet {
    fn forward_macs(&self) -> u64 {
        DhariwalUNet::forward_macs(self)
    }

    fn forward(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        DhariwalUNet::forward(self, x, noise_labels, class_labels, augment_labels, train)
    }

    fn dropout_rng(&self) -> &DropoutRng {
        &self.dropout_rng
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.clone()
    }

    fn num_parameters(&self) -> usize {
        DhariwalUNet::num_parameters(self)
    }
}
