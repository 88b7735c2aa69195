//! DiT, the Diffusion Transformer of Peebles & Xie (2023), as in
//! facebookresearch/DiT `models.py`: patchify, fixed 2-D sin-cos positions,
//! timestep + label conditioning and adaLN-Zero transformer blocks.
//!
//! Tensor names are exactly the keys of DiT's `state_dict` (no prefix), e.g.
//! `x_embedder.proj.weight`, `blocks.3.attn.qkv.weight`,
//! `final_layer.adaLN_modulation.1.bias`, so converted DiT checkpoints load
//! through [`DiT::from_var_builder`] (use `vb.pp("model")` for a prefixed
//! store). Every op of the forward pass has a candle backward: LayerNorm is
//! written from primitive ops and attention uses `candle_nn::ops::softmax`
//! (not the fused `layer_norm` / `softmax_last_dim` / `sdpa`, which silently
//! stop gradients).

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::dropout::DropoutRng;
use crate::init::{Entry, PInit, ParamCtx};
use crate::{NetsError, Result};

/// Size of DiT's sinusoidal frequency embedding of the timestep.
pub const FREQUENCY_EMBEDDING_SIZE: usize = 256;
/// `max_period` of DiT's timestep embedding.
pub const MAX_PERIOD: f64 = 10000.0;
/// LayerNorm epsilon of DiT (`eps=1e-6`, no affine parameters).
pub const LN_EPS: f64 = 1e-6;
/// Name of the fixed positional table in the state dict.
pub const POS_EMBED: &str = "pos_embed";

fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_class_dropout_prob() -> f64 {
    0.1
}
fn d_num_classes() -> usize {
    1000
}
fn d_true() -> bool {
    true
}

/// Hyper-parameters of [`DiT`], with DiT's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiTConfig {
    /// Spatial size (height = width) of the input: 32 for 256² images in
    /// SD-VAE latents, or the pixel resolution.
    pub input_size: usize,
    /// Patch size p (DiT uses 2, 4 or 8; any divisor of `input_size` works).
    pub patch_size: usize,
    /// Input channels (4 for SD-VAE latents, 3 for RGB).
    pub in_channels: usize,
    /// Transformer width D.
    pub hidden_size: usize,
    /// Number of DiT blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden width = `int(hidden_size * mlp_ratio)`.
    #[serde(default = "d_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Probability of replacing a label by the null class in training; when
    /// positive the label table has `num_classes + 1` rows.
    #[serde(default = "d_class_dropout_prob")]
    pub class_dropout_prob: f64,
    /// Number of classes.
    #[serde(default = "d_num_classes")]
    pub num_classes: usize,
    /// Also predict the (interpolated) variance: doubles the output channels.
    #[serde(default = "d_true")]
    pub learn_sigma: bool,
}

impl DiTConfig {
    /// Preset names, as in DiT's `DiT_models`.
    pub const PRESETS: [&'static str; 12] = [
        "DiT-XL/2", "DiT-XL/4", "DiT-XL/8", "DiT-L/2", "DiT-L/4", "DiT-L/8", "DiT-B/2", "DiT-B/4",
        "DiT-B/8", "DiT-S/2", "DiT-S/4", "DiT-S/8",
    ];

    /// A preset such as `"DiT-XL/2"` (sizes S/B/L/XL, patch 2/4/8) with
    /// DiT's defaults (mlp_ratio 4, class dropout 0.1, 1000 classes,
    /// learn_sigma) on inputs of `input_size`² × `in_channels`.
    pub fn preset(name: &str, input_size: usize, in_channels: usize) -> Result<Self> {
        let bad = || NetsError::Config(format!("unknown DiT preset {name:?}"));
        let rest = name.strip_prefix("DiT-").ok_or_else(bad)?;
        let (size, patch) = rest.split_once('/').ok_or_else(bad)?;
        let (depth, hidden_size, num_heads) = match size {
            "S" => (12, 384, 6),
            "B" => (12, 768, 12),
            "L" => (24, 1024, 16),
            "XL" => (28, 1152, 16),
            _ => return Err(bad()),
        };
        let patch_size = match patch {
            "2" => 2,
            "4" => 4,
            "8" => 8,
            _ => return Err(bad()),
        };
        let cfg = Self {
            input_size,
            patch_size,
            in_channels,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: d_mlp_ratio(),
            class_dropout_prob: d_class_dropout_prob(),
            num_classes: d_num_classes(),
            learn_sigma: true,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Output channels: `2 * in_channels` with `learn_sigma`.
    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Patches per side, `input_size / patch_size`.
    pub fn grid_size(&self) -> usize {
        self.input_size / self.patch_size
    }

    /// Number of tokens, `(input_size / patch_size)²`.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// Multiply-adds of the forward pass of one image, in closed form (what is counted:
    /// [`crate::flops`]). With T tokens, width d, MLP width m, patch p and C channels:
    /// patch embedding T·d·C·p²; timestep MLP 256·d + d²; per block adaLN d·6d, qkv T·d·3d,
    /// attention 2·T²·d, projection T·d², MLP 2·T·d·m; final adaLN d·2d and linear
    /// T·d·p²·C_out. DiT's paper counts the same (e.g. 118.6 G for DiT-XL/2 at 256×256).
    pub fn forward_macs(&self) -> u64 {
        let (t, d, m) = (
            self.num_patches() as u64,
            self.hidden_size as u64,
            self.mlp_hidden() as u64,
        );
        let p2 = (self.patch_size * self.patch_size) as u64;
        let patch = t * d * self.in_channels as u64 * p2;
        let time = FREQUENCY_EMBEDDING_SIZE as u64 * d + d * d;
        let block = d * 6 * d + t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * m;
        let last = d * 2 * d + t * d * p2 * self.out_channels() as u64;
        patch + time + self.depth as u64 * block + last
    }

    /// MLP hidden width, `int(hidden_size * mlp_ratio)` as in timm's `Mlp`.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Rows of the label table (`num_classes + 1` with class dropout).
    pub fn label_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(NetsError::Config(m));
        if self.patch_size == 0
            || self.input_size == 0
            || !self.input_size.is_multiple_of(self.patch_size)
        {
            return err(format!(
                "patch_size {} must divide input_size {}",
                self.patch_size, self.input_size
            ));
        }
        if self.in_channels == 0 || self.depth == 0 {
            return err("in_channels and depth must be positive".into());
        }
        if self.hidden_size == 0 || !self.hidden_size.is_multiple_of(4) {
            return err(format!(
                "hidden_size {} must be a positive multiple of 4 (2-D sin-cos table)",
                self.hidden_size
            ));
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return err(format!(
                "num_heads {} must divide hidden_size {}",
                self.num_heads, self.hidden_size
            ));
        }
        if self.mlp_hidden() == 0 {
            return err(format!("mlp_ratio {} gives no MLP width", self.mlp_ratio));
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return err(format!(
                "class_dropout_prob {} must lie in [0, 1)",
                self.class_dropout_prob
            ));
        }
        if self.num_classes == 0 {
            return err("num_classes must be positive".into());
        }
        Ok(())
    }
}

/// LayerNorm over the last dimension without affine parameters, from
/// primitive ops (all with backward): `(x - mean) / sqrt(var + eps)` with the
/// biased variance, as `torch.nn.LayerNorm(elementwise_affine=False)`.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(xc.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// DiT's fixed 2-D sin-cos positional table (from MAE), row-major over a
/// `grid_size`² token grid: `[grid_size², embed_dim]` (flattened, f32).
///
/// For the token in row `i`, column `j` (index `i * grid_size + j`), the first
/// half of the vector embeds the column `j` and the second half the row `i`
/// (DiT's `meshgrid(grid_w, grid_h)`: "w goes first"). Each half of width
/// `E = embed_dim / 2` is `[sin(pos·ω_k), cos(pos·ω_k)]` for
/// `ω_k = 1 / 10000^(k / (E/2))`, `k < E/2`. `embed_dim` must be a multiple of 4.
pub fn sincos_pos_embed_2d(embed_dim: usize, grid_size: usize) -> Vec<f32> {
    let half = embed_dim / 2;
    let quarter = half / 2;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity(grid_size * grid_size * embed_dim);
    for i in 0..grid_size {
        for j in 0..grid_size {
            for pos in [j as f64, i as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// DiT's sinusoidal timestep embedding `[cos(t·f_k), sin(t·f_k)]` with
/// `f_k = exp(-ln(max_period) · k / (dim/2))`, `k < dim/2` (zero-padded for
/// odd `dim`). `t`: `[N]` (may be fractional); returns `[N, dim]` in `t`'s dtype.
pub fn timestep_embedding(t: &Tensor, dim: usize, max_period: f64) -> Result<Tensor> {
    let n = t.elem_count();
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(max_period.ln()) * k as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(t.dtype())?;
    let args = t.reshape((n, 1))?.broadcast_mul(&freqs)?;
    let mut emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        emb = emb.pad_with_zeros(1, 0, 1)?;
    }
    Ok(emb)
}

/// DiT's `PatchEmbed` (a `p`×`p` conv with stride `p`, then flattened to tokens)
/// as a matmul over non-overlapping patches: `x` `[N, C, H, W]`, `weight`
/// `[D, C, p, p]`, `bias` `[D]`; returns `[N, (H/p)(W/p), D]`, tokens row-major.
pub fn patch_embed(x: &Tensor, weight: &Tensor, bias: &Tensor, p: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let d = weight.dim(0)?;
    let (gh, gw) = (h / p, w / p);
    let patches = x
        .reshape((n, c, gh, p, gw, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((n * gh * gw, c * p * p))?;
    let wm = weight.reshape((d, c * p * p))?;
    lossfloor_ops::macs::record_macs((n * gh * gw * c * p * p * d) as u64);
    Ok(patches
        .matmul(&wm.t()?)?
        .broadcast_add(bias)?
        .reshape((n, gh * gw, d))?)
}

/// DiT's `unpatchify`: tokens `[N, h·w, p·p·C]` (each token laid out as
/// `(p_row, p_col, C)`) to images `[N, C, h·p, w·p]`, for an `h`×`w` grid.
pub fn unpatchify(x: &Tensor, p: usize, c: usize, h: usize, w: usize) -> Result<Tensor> {
    let n = x.dim(0)?;
    Ok(x.reshape((n, h, w, p, p, c))?
        .permute((0, 5, 1, 3, 2, 4))?
        .reshape((n, c, h * p, w * p))?)
}

/// `x · (1 + scale) + shift`, with `shift`/`scale` `[N, D]` broadcast over tokens.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = (scale.unsqueeze(1)? + 1.0)?;
    Ok(x.broadcast_mul(&scale)?
        .broadcast_add(&shift.unsqueeze(1)?)?)
}

/// `nn.Linear` on inputs of any rank (`[..., in]`).
#[derive(Debug, Clone)]
struct Lin {
    weight: Tensor,
    bias: Tensor,
    out_features: usize,
}

/// DiT's initialisations of a linear layer.
#[derive(Debug, Clone, Copy)]
enum LinInit {
    /// `_basic_init`: xavier-uniform weight, zero bias.
    Xavier,
    /// Weight N(0, std²), zero bias (the timestep MLP).
    Normal(f64),
    /// Zero weight and bias (adaLN modulation, final linear).
    Zero,
}

impl Lin {
    fn new(
        ctx: &mut ParamCtx,
        vb: &VarBuilder,
        in_features: usize,
        out_features: usize,
        init: LinInit,
    ) -> Result<Self> {
        let w_init = match init {
            LinInit::Xavier => PInit::Xavier {
                fan_in: in_features,
                fan_out: out_features,
                gain: 1.0,
            },
            LinInit::Normal(std) => PInit::Normal { std },
            LinInit::Zero => PInit::Zeros,
        };
        let weight = ctx.param(vb, "weight", &[out_features, in_features], w_init)?;
        let bias = ctx.param(vb, "bias", &[out_features], PInit::Zeros)?;
        Ok(Self {
            weight,
            bias,
            out_features,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((&in_f, lead)) = dims.split_last() else {
            return Err(NetsError::Input("linear input must have rank >= 1".into()));
        };
        let rows: usize = lead.iter().product();
        lossfloor_ops::macs::record_macs((rows * in_f * self.out_features) as u64);
        let y = x
            .reshape((rows, in_f))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out = lead.to_vec();
        out.push(self.out_features);
        Ok(y.reshape(out)?)
    }
}

/// timm's `Attention` (fused qkv with bias, output projection).
#[derive(Debug, Clone)]
struct Attention {
    qkv: Lin,
    proj: Lin,
    num_heads: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let hd = d / self.num_heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((n, t, 3, self.num_heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = (qkv.get(0)? * (1.0 / (hd as f64).sqrt()))?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        // Logits and weighted values: 2·T·T·hd per head.
        lossfloor_ops::macs::record_macs((2 * n * self.num_heads * t * t * hd) as u64);
        let attn = q.matmul(&k.t()?.contiguous()?)?;
        let attn = candle_nn::ops::softmax(&attn, D::Minus1)?;
        let o = attn.matmul(&v)?.transpose(1, 2)?.reshape((n, t, d))?;
        self.proj.forward(&o)
    }
}

/// `DiTBlock`: adaLN-Zero conditioned attention and MLP.
#[derive(Debug, Clone)]
struct Block {
    attn: Attention,
    fc1: Lin,
    fc2: Lin,
    ada: Lin,
}

impl Block {
    fn forward(&self, x: &Tensor, c_act: &Tensor) -> Result<Tensor> {
        let m = self.ada.forward(c_act)?.chunk(6, 1)?;
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);
        let h = modulate(&layer_norm(x, LN_EPS)?, shift_msa, scale_msa)?;
        let h = self.attn.forward(&h)?;
        let x = (x + h.broadcast_mul(&gate_msa.unsqueeze(1)?)?)?;
        let h = modulate(&layer_norm(&x, LN_EPS)?, shift_mlp, scale_mlp)?;
        let h = self.fc2.forward(&self.fc1.forward(&h)?.gelu()?)?;
        Ok((&x + h.broadcast_mul(&gate_mlp.unsqueeze(1)?)?)?)
    }
}

/// DiT (`models.py`): a class-conditional diffusion transformer.
///
/// The trainable parameters are named as DiT's `state_dict` keys. The fixed
/// sin-cos table `pos_embed` `[1, T, D]` is a buffer: [`DiT::new`] writes it
/// into the VarMap (so saved checkpoints carry DiT's key), but the forward
/// pass always uses the table computed from the configuration, it is excluded
/// from [`DiT::parameters`], [`DiT::num_parameters`] and
/// [`DiT::trainable_vars`], and [`DiT::from_var_builder`] does not read it.
/// (DiT's `train.py` logs `sum(p.numel() for p in model.parameters())`, which
/// includes `pos_embed`: that figure is [`DiT::num_parameters_with_buffers`].)
#[derive(Debug, Clone)]
pub struct DiT {
    cfg: DiTConfig,
    x_proj_weight: Tensor,
    x_proj_bias: Tensor,
    pos_embed: Tensor,
    t_mlp0: Lin,
    t_mlp2: Lin,
    y_table: Tensor,
    blocks: Vec<Block>,
    final_ada: Lin,
    final_linear: Lin,
    dtype: DType,
    params: Vec<(String, Tensor)>,
    buffers: Vec<(String, Tensor)>,
    /// Dropout masks (shared by clones of this network).
    dropout_rng: Arc<DropoutRng>,
}

impl DiT {
    /// Builds DiT in `varmap` (f32 on `device`) with DiT's initialisation
    /// drawn from a generator seeded with `seed`; existing entries with the
    /// same names are overwritten. Also stores the `pos_embed` buffer.
    pub fn new(cfg: &DiTConfig, varmap: &VarMap, device: &Device, seed: u64) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let mut ctx = ParamCtx::seeded(varmap, device, seed);
        let model = Self::build(cfg, &vb, &mut ctx)?;
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| NetsError::Config("VarMap mutex poisoned".into()))?;
        match data.get(POS_EMBED) {
            Some(var) if var.shape() == model.pos_embed.shape() => var.set(&model.pos_embed)?,
            _ => {
                data.insert(POS_EMBED.into(), Var::from_tensor(&model.pos_embed)?);
            }
        }
        Ok(model)
    }

    /// Builds DiT from any `VarBuilder` (tensors looked up under its prefix,
    /// in its dtype), e.g. safetensors of a converted DiT checkpoint. Over a
    /// `VarMap`, missing tensors are created with DiT's init laws from
    /// candle's (unseeded on CPU) generator. `pos_embed` is not read.
    pub fn from_var_builder(cfg: &DiTConfig, vb: VarBuilder) -> Result<Self> {
        let mut ctx = ParamCtx::unseeded();
        Self::build(cfg, &vb, &mut ctx)
    }

    fn build(cfg: &DiTConfig, vb: &VarBuilder, ctx: &mut ParamCtx) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let (c, p) = (cfg.in_channels, cfg.patch_size);
        let dtype = vb.dtype();
        let device = vb.device().clone();

        let vx = vb.pp("x_embedder").pp("proj");
        let x_proj_weight = ctx.param(
            &vx,
            "weight",
            &[d, c, p, p],
            PInit::Xavier {
                fan_in: c * p * p,
                fan_out: d,
                gain: 1.0,
            },
        )?;
        let x_proj_bias = ctx.param(&vx, "bias", &[d], PInit::Zeros)?;

        let pos = sincos_pos_embed_2d(d, cfg.grid_size());
        let pos_embed =
            Tensor::from_vec(pos, (1, cfg.num_patches(), d), &device)?.to_dtype(dtype)?;

        let vt = vb.pp("t_embedder").pp("mlp");
        let t_mlp0 = Lin::new(
            ctx,
            &vt.pp("0"),
            FREQUENCY_EMBEDDING_SIZE,
            d,
            LinInit::Normal(0.02),
        )?;
        let t_mlp2 = Lin::new(ctx, &vt.pp("2"), d, d, LinInit::Normal(0.02))?;

        let y_table = ctx.param(
            &vb.pp("y_embedder").pp("embedding_table"),
            "weight",
            &[cfg.label_rows(), d],
            PInit::Normal { std: 0.02 },
        )?;

        let mlp_hidden = cfg.mlp_hidden();
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let vbk = vb.pp("blocks").pp(i.to_string());
            let va = vbk.pp("attn");
            let attn = Attention {
                qkv: Lin::new(ctx, &va.pp("qkv"), d, 3 * d, LinInit::Xavier)?,
                proj: Lin::new(ctx, &va.pp("proj"), d, d, LinInit::Xavier)?,
                num_heads: cfg.num_heads,
            };
            let vm = vbk.pp("mlp");
            let fc1 = Lin::new(ctx, &vm.pp("fc1"), d, mlp_hidden, LinInit::Xavier)?;
            let fc2 = Lin::new(ctx, &vm.pp("fc2"), mlp_hidden, d, LinInit::Xavier)?;
            let ada = Lin::new(
                ctx,
                &vbk.pp("adaLN_modulation").pp("1"),
                d,
                6 * d,
                LinInit::Zero,
            )?;
            blocks.push(Block {
                attn,
                fc1,
                fc2,
                ada,
            });
        }

        let vf = vb.pp("final_layer");
        let final_ada = Lin::new(
            ctx,
            &vf.pp("adaLN_modulation").pp("1"),
            d,
            2 * d,
            LinInit::Zero,
        )?;
        let final_linear = Lin::new(
            ctx,
            &vf.pp("linear"),
            d,
            p * p * cfg.out_channels(),
            LinInit::Zero,
        )?;

        let mut params: Vec<(String, Tensor)> = ctx
            .entries
            .drain(..)
            .filter(|e| !e.buffer)
            .map(|Entry { name, tensor, .. }| (name, tensor))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let pos_name = if vb.prefix().is_empty() {
            POS_EMBED.to_string()
        } else {
            format!("{}.{POS_EMBED}", vb.prefix())
        };

        Ok(Self {
            cfg: cfg.clone(),
            x_proj_weight,
            x_proj_bias,
            buffers: vec![(pos_name, pos_embed.clone())],
            pos_embed,
            t_mlp0,
            t_mlp2,
            y_table,
            blocks,
            final_ada,
            final_linear,
            dtype,
            params,
            dropout_rng: Arc::new(DropoutRng::new(0)),
        })
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &DiTConfig {
        &self.cfg
    }

    /// Trainable parameters `(name, tensor)`, sorted by name; the tensors share
    /// ids with the VarMap's `Var`s, so `GradStore::get` works on them.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Non-trainable buffers: only `pos_embed` `[1, T, D]`.
    pub fn buffers(&self) -> &[(String, Tensor)] {
        &self.buffers
    }

    /// Number of trainable scalars (`pos_embed` excluded).
    pub fn num_parameters(&self) -> usize {
        crate::network::element_count(&self.params)
    }

    /// Trainable scalars plus `pos_embed`: the figure DiT's `train.py` logs.
    pub fn num_parameters_with_buffers(&self) -> usize {
        self.num_parameters() + crate::network::element_count(&self.buffers)
    }

    /// The trainable `Var`s of `varmap` belonging to this network, sorted by
    /// name (for optimisers and EMA; `VarMap::all_vars` is in HashMap order
    /// and includes `pos_embed`).
    pub fn trainable_vars(&self, varmap: &VarMap) -> Result<Vec<(String, Var)>> {
        crate::network::vars_named(varmap, &self.params)
    }

    /// Forward pass.
    ///
    /// * `x`: `[N, in_channels, input_size, input_size]` (pixels or latents);
    ///   cast to the parameters' dtype.
    /// * `t`: `[N]`, the noise-conditioning value fed to the sinusoidal
    ///   timestep embedding (DiT: the integer DDPM step, may be fractional).
    /// * `y`: `[N]` class indices (u32; other dtypes are cast), in
    ///   `0..=num_classes` where `num_classes` is the null class; `None` means
    ///   the null class for all (requires `class_dropout_prob > 0`).
    /// * `train`: applies class dropout (labels → null class with probability
    ///   `class_dropout_prob`, from the network's [`DropoutRng`]), as DiT in training mode.
    ///
    /// Returns `[N, out_channels, input_size, input_size]` (with `learn_sigma`
    /// the first `in_channels` are the prediction, the rest the variance output).
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let n = crate::network::check_image_batch(x, t, "t", cfg.in_channels, cfg.input_size)?;
        let device = x.device();
        let x = x.to_dtype(self.dtype)?;
        let t = t.flatten_all()?.to_dtype(self.dtype)?;
        let null = cfg.num_classes as u32;
        let has_null = cfg.class_dropout_prob > 0.0;
        let mut labels = match y {
            Some(y) => {
                if y.elem_count() != n {
                    return Err(NetsError::Input(format!(
                        "y has {} elements, expected {n}",
                        y.elem_count()
                    )));
                }
                y.flatten_all()?.to_dtype(DType::U32)?
            }
            None if has_null => Tensor::full(null, n, device)?,
            None => {
                return Err(NetsError::Input(
                    "y = None (null class) needs class_dropout_prob > 0".into(),
                ))
            }
        };
        if train && has_null {
            let drop = self
                .dropout_rng
                .drop_flags(n, cfg.class_dropout_prob, device)?;
            labels = drop.where_cond(&Tensor::full(null, n, device)?, &labels)?;
        }

        // Embeddings: tokens + fixed positions; conditioning c = t_emb + y_emb.
        let mut x = patch_embed(&x, &self.x_proj_weight, &self.x_proj_bias, cfg.patch_size)?
            .broadcast_add(&self.pos_embed.detach())?;
        let t_freq = timestep_embedding(&t, FREQUENCY_EMBEDDING_SIZE, MAX_PERIOD)?;
        let t_emb = self
            .t_mlp2
            .forward(&self.t_mlp0.forward(&t_freq)?.silu()?)?;
        let y_emb = self.y_table.index_select(&labels, 0)?;
        // Every adaLN_modulation starts with SiLU, so apply it once.
        let c_act = (t_emb + y_emb)?.silu()?;

        for block in &self.blocks {
            x = block.forward(&x, &c_act)?;
        }

        let m = self.final_ada.forward(&c_act)?.chunk(2, 1)?;
        let x = modulate(&layer_norm(&x, LN_EPS)?, &m[0], &m[1])?;
        let x = self.final_linear.forward(&x)?;
        let g = cfg.grid_size();
        unpatchify(&x, cfg.patch_size, cfg.out_channels(), g, g)
    }
}

impl crate::Network for DiT {
    fn forward_macs(&self) -> u64 {
        self.cfg.forward_macs()
    }

    /// EDM-style call: `noise_labels` is DiT's `t`; `class_labels` `[N,
    /// num_classes]` (one-hot) become indices by argmax, all-zero rows (and
    /// `None`) the null class. DiT has no augmentation conditioning, so
    /// `augment_labels` must be `None`.
    fn forward(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
        augment_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        if augment_labels.is_some() {
            return Err(NetsError::Input(
                "DiT takes no augment_labels (augment_dim is 0)".into(),
            ));
        }
        let y = match class_labels {
            Some(onehot) => Some(self.labels_from_one_hot(onehot)?),
            None => None,
        };
        DiT::forward(self, x, noise_labels, y.as_ref(), train)
    }

    fn dropout_rng(&self) -> &DropoutRng {
        &self.dropout_rng
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.clone()
    }

    fn num_parameters(&self) -> usize {
        DiT::num_parameters(self)
    }
}

impl DiT {
    /// Class indices `[N]` (u32) from one-hot labels `[N, num_classes]`:
    /// argmax per row, all-zero rows give the null class `num_classes`.
    pub fn labels_from_one_hot(&self, onehot: &Tensor) -> Result<Tensor> {
        let (n, k) = onehot.dims2()?;
        if k != self.cfg.num_classes {
            return Err(NetsError::Input(format!(
                "class_labels have {k} columns, expected {}",
                self.cfg.num_classes
            )));
        }
        let onehot = onehot.to_dtype(DType::F32)?;
        let idx = onehot.argmax(1)?.to_dtype(DType::U32)?;
        let empty = onehot.abs()?.sum(1)?.eq(0f32)?;
        let null = Tensor::full(self.cfg.num_classes as u32, n, onehot.device())?;
        Ok(empty.where_cond(&null, &idx)?)
    }
}
