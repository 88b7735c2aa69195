//! EDM's `SongUNet` (DDPM++ / NCSN++).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use std::sync::Arc;

use crate::config::{DecoderType, EmbeddingType, EncoderType, SongUNetConfig};
use crate::dropout::DropoutRng;
use crate::init::{Entry, PInit, ParamCtx};
use crate::layers::{BlockOpts, Conv2d, GroupNorm, Linear, Sampling, UNetBlock, INIT, INIT_ZERO};
use crate::network::Network;
use crate::{NetsError, Result};

/// Prefix of every tensor name, as inside EDM's preconditioners (`self.model`).
pub const PREFIX: &str = "model";

#[derive(Debug, Clone)]
enum NoiseEmbedding {
    /// Fixed frequencies `(1/1e4)^(i / (C/2 - 1))` (`endpoint=True`).
    Positional(Tensor),
    /// Buffer `map_noise.freqs ~ N(0, 16^2)`, used as `2*pi*freqs`.
    Fourier(Tensor),
}

#[derive(Debug, Clone)]
enum EncItem {
    Conv(Conv2d),
    Block(Box<UNetBlock>),
    AuxDown(Conv2d),
    AuxSkip(Conv2d),
    AuxResidual(Conv2d),
}

#[derive(Debug, Clone)]
enum DecItem {
    Block(Box<UNetBlock>),
    AuxUp(Conv2d),
    /// `silu(aux_norm(x))`, consumed by the following `AuxConv`.
    AuxNorm(GroupNorm),
    AuxConv(Conv2d),
}

/// EDM's DDPM++ / NCSN++ U-Net (`SongUNet` in `training/networks.py`).
///
/// All tensors are named as in EDM's `state_dict` of a preconditioner, e.g.
/// `model.map_layer0.weight`, `model.enc.32x32_block0.conv0.weight`. The only
/// buffer is the Fourier embedding's `model.map_noise.freqs`: it is stored in
/// the VarMap (so checkpoints round-trip) but detached in the forward pass and
/// excluded from [`SongUNet::parameters`] and [`SongUNet::num_parameters`].
/// EDM's constant `resample_filter` buffers are not stored.
#[derive(Debug, Clone)]
pub struct SongUNet {
    cfg: SongUNetConfig,
    map_noise: NoiseEmbedding,
    map_label: Option<Linear>,
    map_augment: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    enc: Vec<EncItem>,
    dec: Vec<DecItem>,
    params: Vec<(String, Tensor)>,
    buffers: Vec<(String, Tensor)>,
    /// Dropout masks (shared by clones of this network).
    dropout_rng: Arc<DropoutRng>,
}

impl SongUNet {
    /// Builds the network in `varmap` (f32 on `device`) with EDM's
    /// initialisation drawn from a generator seeded with `seed`: the same
    /// seed gives the same weights. Existing entries of `varmap` with the
    /// same names are overwritten.
    pub fn new(cfg: &SongUNetConfig, varmap: &VarMap, device: &Device, seed: u64) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let mut ctx = ParamCtx::seeded(varmap, device, seed);
        Self::build(cfg, &vb, &mut ctx)
    }

    /// Builds the network from any `VarBuilder` (names are looked up under
    /// `model.`), e.g. safetensors of a converted EDM checkpoint. Over a
    /// `VarMap`, missing tensors are created with EDM's init laws from
    /// candle's (unseeded on CPU) generator.
    pub fn from_var_builder(cfg: &SongUNetConfig, vb: VarBuilder) -> Result<Self> {
        let mut ctx = ParamCtx::unseeded();
        Self::build(cfg, &vb, &mut ctx)
    }

    fn build(cfg: &SongUNetConfig, root: &VarBuilder, ctx: &mut ParamCtx) -> Result<Self> {
        cfg.validate()?;
        let vb = root.pp(PREFIX);
        let device = vb.device().clone();
        let emb_channels = cfg.emb_channels();
        let noise_channels = cfg.noise_channels();
        let opts = BlockOpts::song(emb_channels, cfg.dropout, cfg.resample_filter.clone());
        let f = cfg.resample_filter.as_slice();

        // Mapping.
        let half = noise_channels / 2;
        let map_noise = match cfg.embedding_type {
            EmbeddingType::Positional => {
                let denom = (half - 1) as f64;
                let v: Vec<f32> = (0..half)
                    .map(|i| (1e-4f64).powf(i as f64 / denom) as f32)
                    .collect();
                NoiseEmbedding::Positional(Tensor::from_vec(v, (1, half), &device)?)
            }
            EmbeddingType::Fourier => NoiseEmbedding::Fourier(ctx.buffer(
                &vb.pp("map_noise"),
                "freqs",
                &[half],
                PInit::Normal { std: 16.0 },
            )?),
        };
        let map_label = if cfg.label_dim > 0 {
            Some(Linear::new(
                ctx,
                &vb.pp("map_label"),
                cfg.label_dim,
                noise_channels,
                true,
                INIT,
            )?)
        } else {
            None
        };
        let map_augment = if cfg.augment_dim > 0 {
            Some(Linear::new(
                ctx,
                &vb.pp("map_augment"),
                cfg.augment_dim,
                noise_channels,
                false,
                INIT,
            )?)
        } else {
            None
        };
        let map_layer0 = Linear::new(
            ctx,
            &vb.pp("map_layer0"),
            noise_channels,
            emb_channels,
            true,
            INIT,
        )?;
        let map_layer1 = Linear::new(
            ctx,
            &vb.pp("map_layer1"),
            emb_channels,
            emb_channels,
            true,
            INIT,
        )?;

        // Encoder.
        let venc = vb.pp("enc");
        let mut enc = Vec::new();
        let mut skips = Vec::new();
        let mut cout = cfg.in_channels;
        let mut caux = cfg.in_channels;
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            let res = cfg.img_resolution >> level;
            let p = |s: &str| venc.pp(format!("{res}x{res}_{s}"));
            if level == 0 {
                let cin = cout;
                cout = cfg.model_channels;
                let conv = Conv2d::new(ctx, &p("conv"), cin, cout, 3, Sampling::None, f, INIT)?;
                enc.push(EncItem::Conv(conv));
                skips.push(cout);
            } else {
                let b = UNetBlock::new(ctx, &p("down"), cout, cout, Sampling::Down, false, &opts)?;
                enc.push(EncItem::Block(Box::new(b)));
                skips.push(cout);
                match cfg.encoder_type {
                    EncoderType::Standard => {}
                    EncoderType::Skip => {
                        let d = Conv2d::new(
                            ctx,
                            &p("aux_down"),
                            caux,
                            caux,
                            0,
                            Sampling::Down,
                            f,
                            INIT,
                        )?;
                        enc.push(EncItem::AuxDown(d));
                        let s = Conv2d::new(
                            ctx,
                            &p("aux_skip"),
                            caux,
                            cout,
                            1,
                            Sampling::None,
                            f,
                            INIT,
                        )?;
                        enc.push(EncItem::AuxSkip(s));
                    }
                    EncoderType::Residual => {
                        let r = Conv2d::new(
                            ctx,
                            &p("aux_residual"),
                            caux,
                            cout,
                            3,
                            Sampling::FusedDown,
                            f,
                            INIT,
                        )?;
                        enc.push(EncItem::AuxResidual(r));
                        caux = cout;
                    }
                }
            }
            for idx in 0..cfg.num_blocks {
                let cin = cout;
                cout = cfg.model_channels * mult;
                let attn = cfg.attn_resolutions.contains(&res);
                let b = UNetBlock::new(
                    ctx,
                    &p(&format!("block{idx}")),
                    cin,
                    cout,
                    Sampling::None,
                    attn,
                    &opts,
                )?;
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
            if level == last {
                let b0 = UNetBlock::new(ctx, &p("in0"), cout, cout, Sampling::None, true, &opts)?;
                let b1 = UNetBlock::new(ctx, &p("in1"), cout, cout, Sampling::None, false, &opts)?;
                dec.push(DecItem::Block(Box::new(b0)));
                dec.push(DecItem::Block(Box::new(b1)));
            } else {
                let b = UNetBlock::new(ctx, &p("up"), cout, cout, Sampling::Up, false, &opts)?;
                dec.push(DecItem::Block(Box::new(b)));
            }
            for idx in 0..=cfg.num_blocks {
                let skip = skips
                    .pop()
                    .ok_or_else(|| NetsError::Config("encoder/decoder skip mismatch".into()))?;
                let cin = cout + skip;
                cout = cfg.model_channels * mult;
                let attn = idx == cfg.num_blocks && cfg.attn_resolutions.contains(&res);
                let b = UNetBlock::new(
                    ctx,
                    &p(&format!("block{idx}")),
                    cin,
                    cout,
                    Sampling::None,
                    attn,
                    &opts,
                )?;
                dec.push(DecItem::Block(Box::new(b)));
            }
            let skip_dec = cfg.decoder_type == DecoderType::Skip;
            if skip_dec || level == 0 {
                if skip_dec && level < last {
                    let oc = cfg.out_channels;
                    let u = Conv2d::new(ctx, &p("aux_up"), oc, oc, 0, Sampling::Up, f, INIT)?;
                    dec.push(DecItem::AuxUp(u));
                }
                dec.push(DecItem::AuxNorm(GroupNorm::new(
                    ctx,
                    &p("aux_norm"),
                    cout,
                    1e-6,
                )?));
                let c = Conv2d::new(
                    ctx,
                    &p("aux_conv"),
                    cout,
                    cfg.out_channels,
                    3,
                    Sampling::None,
                    f,
                    INIT_ZERO,
                )?;
                dec.push(DecItem::AuxConv(c));
            }
        }

        let mut params = Vec::new();
        let mut buffers = Vec::new();
        for Entry {
            name,
            tensor,
            buffer,
        } in ctx.entries.drain(..)
        {
            if buffer {
                buffers.push((name, tensor));
            } else {
                params.push((name, tensor));
            }
        }
        params.sort_by(|a, b| a.0.cmp(&b.0));
        buffers.sort_by(|a, b| a.0.cmp(&b.0));

        Ok(Self {
            cfg: cfg.clone(),
            map_noise,
            map_label,
            map_augment,
            map_layer0,
            map_layer1,
            enc,
            dec,
            params,
            buffers,
            dropout_rng: Arc::new(DropoutRng::new(0)),
        })
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &SongUNetConfig {
        &self.cfg
    }

    /// Trainable parameters `(name, tensor)`, sorted by name. The tensors share
    /// ids with the VarMap's `Var`s, so `GradStore::get` works on them.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Non-trainable buffers (only `model.map_noise.freqs` for Fourier embeddings).
    pub fn buffers(&self) -> &[(String, Tensor)] {
        &self.buffers
    }

    /// Number of trainable scalars (EDM's `sum(p.numel() for p in parameters())`;
    /// buffers excluded).
    pub fn num_parameters(&self) -> usize {
        crate::network::element_count(&self.params)
    }

    /// The trainable `Var`s of `varmap` that belong to this network, sorted by
    /// name (for optimisers and EMA; `VarMap::all_vars` is in HashMap order and
    /// would include the Fourier buffer).
    pub fn trainable_vars(&self, varmap: &VarMap) -> Result<Vec<(String, Var)>> {
        crate::network::vars_named(varmap, &self.params)
    }

    /// Multiply-adds of the forward pass of one image, walking the layers as
    /// [`SongUNet::forward`] does with their shapes (what is counted: [`crate::flops`]). The
    /// augmentation-label layer counts when the network has one (training passes labels).
    pub fn forward_macs(&self) -> u64 {
        let mut total = self.map_layer0.macs() + self.map_layer1.macs();
        total += self.map_label.as_ref().map_or(0, |l| l.macs());
        total += self.map_augment.as_ref().map_or(0, |l| l.macs());
        let r = self.cfg.img_resolution;
        let mut x = (self.cfg.in_channels, r, r);
        let mut aux = x;
        let mut skips: Vec<usize> = Vec::new();
        for item in &self.enc {
            match item {
                EncItem::AuxDown(conv) | EncItem::AuxResidual(conv) => {
                    let (m, s) = conv.macs(aux);
                    total += m;
                    aux = s;
                }
                EncItem::AuxSkip(conv) => total += conv.macs(aux).0,
                EncItem::Conv(conv) => {
                    let (m, s) = conv.macs(x);
                    total += m;
                    x = s;
                    skips.push(x.0);
                }
                EncItem::Block(block) => {
                    let (m, s) = block.macs(x);
                    total += m;
                    x = s;
                    skips.push(x.0);
                }
            }
        }
        let (mut out, mut normed) = (None, None);
        for item in &self.dec {
            match item {
                DecItem::AuxUp(conv) => {
                    if let Some(a) = out {
                        let (m, s) = conv.macs(a);
                        total += m;
                        out = Some(s);
                    }
                }
                DecItem::AuxNorm(_) => normed = Some(x),
                DecItem::AuxConv(conv) => {
                    let (m, s) = conv.macs(normed.take().unwrap_or(x));
                    total += m;
                    out = Some(s);
                }
                DecItem::Block(block) => {
                    if x.0 != block.in_channels {
                        x.0 += skips.pop().unwrap_or(0);
                    }
                    let (m, s) = block.macs(x);
                    total += m;
                    x = s;
                }
            }
        }
        total
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
        let t = noise_labels.reshape((n, 1))?;
        let prof = lossfloor_ops::profile::scope(lossfloor_ops::profile::Category::Embedding);

        // Mapping. EDM concatenates [cos, sin] and then swaps the halves.
        let arg = match &self.map_noise {
            NoiseEmbedding::Positional(freqs) => t.broadcast_mul(freqs)?,
            NoiseEmbedding::Fourier(freqs) => {
                let f = (freqs.detach() * (2.0 * std::f64::consts::PI))?;
                t.broadcast_mul(&f.unsqueeze(0)?)?
            }
        };
        let mut emb = Tensor::cat(&[arg.sin()?, arg.cos()?], 1)?;
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
            let scaled = (tmp * (map_label.in_features as f64).sqrt())?;
            emb = (emb + map_label.forward(&scaled)?)?;
        }
        if let (Some(map_augment), Some(aug)) = (&self.map_augment, augment_labels) {
            emb = (emb + map_augment.forward(aug)?)?;
        }
        let emb = self.map_layer0.forward(&emb)?.silu()?;
        let emb = self.map_layer1.forward(&emb)?.silu()?;
        drop(prof);

        let drop = train.then_some(&*self.dropout_rng);
        // Encoder.
        let mut skips: Vec<Tensor> = Vec::new();
        let mut x = x.clone();
        let mut aux = x.clone();
        for item in &self.enc {
            match item {
                EncItem::AuxDown(conv) => aux = conv.forward(&aux)?,
                EncItem::AuxSkip(conv) => {
                    x = (x + conv.forward(&aux)?)?;
                    if let Some(last) = skips.last_mut() {
                        *last = x.clone();
                    }
                }
                EncItem::AuxResidual(conv) => {
                    x = ((x + conv.forward(&aux)?)? * std::f64::consts::FRAC_1_SQRT_2)?;
                    aux = x.clone();
                    if let Some(last) = skips.last_mut() {
                        *last = x.clone();
                    }
                }
                EncItem::Conv(conv) => {
                    x = conv.forward(&x)?;
                    skips.push(x.clone());
                }
                EncItem::Block(block) => {
                    x = block.forward(&x, &emb, drop)?;
                    skips.push(x.clone());
                }
            }
        }

        // Decoder.
        let mut out: Option<Tensor> = None;
        let mut tmp: Option<Tensor> = None;
        for item in &self.dec {
            match item {
                DecItem::AuxUp(conv) => {
                    if let Some(a) = &out {
                        out = Some(conv.forward(a)?);
                    }
                }
                DecItem::AuxNorm(norm) => tmp = Some(norm.forward_silu(&x)?),
                DecItem::AuxConv(conv) => {
                    let t = tmp
                        .take()
                        .ok_or_else(|| NetsError::Config("aux_conv without aux_norm".into()))?;
                    let y = conv.forward(&t)?;
                    out = Some(match out {
                        Some(a) => (y + a)?,
                        None => y,
                    });
                }
                DecItem::Block(block) => {
                    if x.dim(1)? != block.in_channels {
                        let s = skips.pop().ok_or_else(|| {
                            NetsError::Config("decoder ran out of skip connections".into())
                        })?;
                        let _prof = lossfloor_ops::profile::scope(
                            lossfloor_ops::profile::Category::ElementwiseMemory,
                        );
                        x = Tensor::cat(&[&x, &s], 1)?;
                    }
                    x = block.forward(&x, &emb, drop)?;
                }
            }
        }
        out.ok_or_else(|| NetsError::Config("decoder produced no output".into()))
    }
}

impl Network for SongUNet {
    fn forward_macs(&self) -> u64 {
        SongUNet::forward_macs(self)
    }

    fn forward(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        SongUNet::forward(self, x, noise_labels, class_labels, augment_labels, train)
    }

    fn dropout_rng(&self) -> &DropoutRng {
        &self.dropout_rng
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.clone()
    }

    fn num_parameters(&self) -> usize {
        SongUNet::num_parameters(self)
    }
}
