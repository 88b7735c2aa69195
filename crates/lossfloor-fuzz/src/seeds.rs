//! Small valid inputs for every target, written at start-up. Where the project writes the
//! format (checkpoints, FID statistics, curves) its own writer makes the seed; formats the
//! project only reads (npy, IDX, CIFAR, ImageNet npz, EDM PNGs, TorchScript) are written here
//! byte by byte, the way the readers' tests write them.

use candle_core::Device;
use candle_nn::VarMap;
use image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder};

use crate::{unzip_members, Input, Member};

/// A `.npy` file (format 1.0) with the header padded to 64 bytes, as numpy writes it.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_le(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// A ramp of `n` bytes, so mutated pixels differ from their neighbours.
fn ramp(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 37 % 256) as u8).collect()
}

/// `npy:FILE` seeds: f32 `[N,C,H,W]`, u8 `[N,C,H,W]`, f64 `[N,D]`, big-endian f32 `[N,H,W]`.
pub fn npy_seeds() -> Vec<Input> {
    let f32_nchw = npy(
        "<f4",
        &[3, 1, 4, 4],
        &f32_le((0..48).map(|i| i as f32 / 24.0 - 1.0)),
    );
    let u8_nchw = npy("|u1", &[2, 3, 4, 4], &ramp(96));
    let f64_nd: Vec<u8> = (0..12)
        .flat_map(|i| (i as f64 * 0.1).to_le_bytes())
        .collect();
    let f64_nd = npy("<f8", &[2, 6], &f64_nd);
    let be: Vec<u8> = (0..32)
        .flat_map(|i| (i as f32 * 0.05).to_be_bytes())
        .collect();
    let be_nhw = npy(">f4", &[2, 4, 4], &be);
    [f32_nchw, u8_nchw, f64_nd, be_nhw]
        .into_iter()
        .map(|b| vec![Member::plain("data.npy", b)])
        .collect()
}

/// An IDX file: magic (0x0000_08_dims), big-endian dims, then the u8 values.
pub fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// The IDX image file name the `idx` targets load; the label file sits beside it.
pub const IDX_IMAGES: &str = "train-images-idx3-ubyte";
/// The label file name that `idx:` finds beside [`IDX_IMAGES`].
pub const IDX_LABELS: &str = "train-labels-idx1-ubyte";

/// `idx:FILE` seeds: images with labels beside, and images alone. `compressed` marks the
/// members for gzip (`.gz` names) in the `idx-gz` target.
pub fn idx_seeds(compressed: bool) -> Vec<Input> {
    let suffix = if compressed { ".gz" } else { "" };
    let member = |name: &str, bytes: Vec<u8>| Member {
        name: format!("{name}{suffix}"),
        bytes,
        compressed,
    };
    let images = idx(&[3, 4, 5], &ramp(60));
    let labels = idx(&[3], &[0, 9, 4]);
    vec![
        vec![
            member(IDX_IMAGES, images.clone()),
            member(IDX_LABELS, labels),
        ],
        vec![member(IDX_IMAGES, idx(&[1, 2, 2], &[0, 255, 128, 7]))],
        vec![member(IDX_IMAGES, images)],
    ]
}

/// `cifar10:FILE.bin` seeds: one and two 3073-byte records.
pub fn cifar_seeds() -> Vec<Input> {
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend(ramp(3 * 32 * 32));
        r
    };
    let two: Vec<u8> = [record(3), record(9)].concat();
    vec![
        vec![Member::plain("test_batch.bin", record(0))],
        vec![Member::plain("test_batch.bin", two)],
    ]
}

/// `imagenet64:FILE.npz` seeds: `data` u8 `[N, 3*S*S]` or `[N,3,H,W]`, `labels` 1..1000 as
/// int64 or uint16, one with a `mean` array that the reader ignores.
pub fn imagenet_seeds() -> Vec<Input> {
    let labels_i64: Vec<u8> = [1i64, 1000].iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels_u16: Vec<u8> = [5u16, 17, 999]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    vec![
        vec![
            Member::plain("data.npy", npy("|u1", &[2, 48], &ramp(96))),
            Member::plain("labels.npy", npy("<i8", &[2], &labels_i64)),
        ],
        vec![
            Member {
                compressed: true,
                ..Member::plain("data.npy", npy("|u1", &[3, 3, 2, 2], &ramp(36)))
            },
            Member::plain("labels.npy", npy("<u2", &[3], &labels_u16)),
            Member::plain("mean.npy", npy("<f4", &[1], &f32_le([0.5]))),
        ],
    ]
}

/// A PNG of `width×height` with `color` (L8 or Rgb8) from a byte ramp.
pub fn png(width: u32, height: u32, color: ExtendedColorType) -> Vec<u8> {
    let channels = if color == ExtendedColorType::Rgb8 {
        3
    } else {
        1
    };
    let pixels = ramp((width * height) as usize * channels);
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(&pixels, width, height, color)
        .expect("encoding a PNG into memory");
    out
}

/// EDM `dataset_tool.py` layouts: PNGs under `00000/` plus `dataset.json` with labels, with
/// `{"labels": null}`, and without `dataset.json`.
pub fn edm_seeds() -> Vec<Input> {
    let rgb = |name: &str| Member::plain(name, png(4, 4, ExtendedColorType::Rgb8));
    let gray = |name: &str| Member::plain(name, png(3, 3, ExtendedColorType::L8));
    let labels = br#"{"labels": [["00000/img00000000.png", 1], ["00000/img00000001.png", 0]]}"#;
    vec![
        vec![
            rgb("00000/img00000000.png"),
            rgb("00000/img00000001.png"),
            Member::plain("dataset.json", labels.to_vec()),
        ],
        vec![
            gray("00000/img00000000.png"),
            Member::plain("dataset.json", br#"{"labels": null}"#.to_vec()),
        ],
        vec![
            Member {
                compressed: true,
                ..rgb("img0.png")
            },
            rgb("img1.png"),
        ],
    ]
}

/// The tiny DDPM++ SongUNet of the checkpoint seeds (8×8×3, 8 channels, one level).
fn tiny_songunet() -> lossfloor_nets::SongUNetConfig {
    lossfloor_nets::SongUNetConfig {
        model_channels: 8,
        channel_mult: vec![1],
        num_blocks: 1,
        attn_resolutions: vec![],
        label_dim: 2,
        ..lossfloor_nets::SongUNetConfig::new(8, 3, 3)
    }
}

/// A `lossfloor` network checkpoint written by `save_network`, as raw safetensors bytes.
pub fn safetensors_seeds() -> Vec<Input> {
    use lossfloor_nets::checkpoint::{save_network, varmap_tensors, NetworkSpec, PrecondSpec};
    let dir = tempfile::tempdir().expect("a temporary directory for the seeds");
    let path = dir.path().join("net.safetensors");
    let spec = NetworkSpec::SongUNet(tiny_songunet());
    let varmap = VarMap::new();
    spec.build(&varmap, &Device::Cpu, 1)
        .expect("building the tiny seed network");
    let tensors = varmap_tensors(&varmap).expect("the seed network's tensors");
    let precond = PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    };
    let extra = [("lossfloor.kimg".to_string(), "12".to_string())];
    save_network(&path, &spec, &precond, &tensors, &extra).expect("saving the seed network");
    let bytes = std::fs::read(&path).expect("reading back the seed network");
    vec![vec![Member::plain("net.safetensors", bytes)]]
}

/// Network TOML configs (`[network]` + `[precond]`) as `load_network_with_config` reads.
pub fn network_toml_seeds() -> Vec<Input> {
    let songunet = "[network]\narch = \"songunet\"\nimg_resolution = 8\nin_channels = 3\n\
                    out_channels = 3\nmodel_channels = 8\nchannel_mult = [1, 2]\nnum_blocks = 1\n\
                    attn_resolutions = [4]\n\n[precond]\nprocess = \"edm\"\nsigma_data = 0.5\n";
    let dit = "[network]\narch = \"dit\"\ninput_size = 8\npatch_size = 2\nin_channels = 3\n\
               hidden_size = 16\ndepth = 1\nnum_heads = 2\nmlp_ratio = 2.0\nnum_classes = 4\n\n\
               [precond]\nprocess = \"vp\"\n";
    [songunet, dit]
        .into_iter()
        .map(|t| vec![Member::plain("network.toml", t)])
        .collect()
}

/// A protocol-2 pickle written opcode by opcode (only what TorchScript `data.pkl` uses).
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, code: u8) -> &mut Self {
        self.0.push(code);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn text(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn small_int(&mut self, v: u8) -> &mut Self {
        self.0.extend_from_slice(&[b'K', v]);
        self
    }
    fn int_tuple(&mut self, values: &[u8]) -> &mut Self {
        self.op(b'(');
        for &v in values {
            self.small_int(v);
        }
        self.op(b't')
    }
    /// `torch._utils._rebuild_tensor_v2(("storage", torch.<class>, key, "cpu", numel),
    /// offset, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, class: &str, key: &str, numel: u8, size: &[u8], stride: &[u8]) {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(')
            .op(b'(')
            .text("storage")
            .global("torch", class)
            .text(key)
            .text("cpu")
            .small_int(numel)
            .op(b't')
            .op(b'Q')
            .small_int(0)
            .int_tuple(size)
            .int_tuple(stride)
            .op(0x89)
            .global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R');
    }
    /// `NEWOBJ(class, ())`, then an empty state dict and a MARK for its items.
    fn module_begin(&mut self, name: &str) -> &mut Self {
        self.global("__torch__.seed", name)
            .op(b')')
            .op(0x81)
            .op(b'}')
            .op(b'(')
    }
    /// SETITEMS, then BUILD.
    fn module_end(&mut self) -> &mut Self {
        self.op(b'u').op(b'b')
    }
}

/// A TorchScript archive: a module with an f32 weight (and its transposed view), a
/// submodule with an f64 bias at an offset, an int and an int list.
pub fn torchscript_seeds() -> Vec<Input> {
    let mut p = Pickle::default();
    p.op(0x80).op(2).module_begin("Net");
    p.text("training").op(0x88);
    p.text("weight");
    p.tensor("FloatStorage", "0", 6, &[2, 3], &[3, 1]);
    p.text("sub").module_begin("Sub");
    p.text("bias");
    p.tensor("DoubleStorage", "1", 3, &[3], &[1]);
    p.text("stride").small_int(2);
    p.text("padding")
        .global("torch.jit._pickle", "build_intlist")
        .op(b'(')
        .op(b']')
        .op(b'(')
        .small_int(1)
        .small_int(3)
        .op(b'e')
        .op(b't')
        .op(b'R');
    p.module_end().module_end().op(b'.');
    let weight = f32_le([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let bias: Vec<u8> = [0.5f64, -1.0, 2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    vec![vec![
        Member::plain("net/version", b"3\n".to_vec()),
        Member::plain("net/data.pkl", p.0),
        Member::plain("net/data/0", weight),
        Member::plain("net/data/1", bias),
    ]]
}

/// FID statistics written by `save_stats_npz`, plus numpy's `savez` and `savez_compressed`
/// files from the FID crate's test fixtures.
pub fn fid_stats_seeds() -> Vec<Input> {
    let dir = tempfile::tempdir().expect("a temporary directory for the seeds");
    let path = dir.path().join("stats.npz");
    let mu = [0.5, -1.0, 2.0];
    let sigma = faer::Mat::from_fn(3, 3, |i, j| if i == j { 2.0 } else { 0.25 });
    lossfloor_fid::save_stats_npz(&path, &mu, sigma.as_ref()).expect("saving seed statistics");
    let ours = std::fs::read(&path).expect("reading back the seed statistics");
    let numpy: &[u8] = include_bytes!("../../lossfloor-fid/tests/fixtures/numpy_savez.npz");
    let compressed: &[u8] =
        include_bytes!("../../lossfloor-fid/tests/fixtures/numpy_savez_compressed.npz");
    [ours.as_slice(), numpy, compressed]
        .into_iter()
        .map(|b| unzip_members(b).expect("the seed .npz files are zips"))
        .collect()
}

/// A curve file written by `Curve::save`.
pub fn curve_seeds() -> Vec<Input> {
    use lossfloor_optimal::{Curve, CurvePoint, DatasetInfo};
    let point = |sigma: f64, loss: f64| CurvePoint {
        sigma,
        loss,
        stderr: loss * 0.01,
        queries: 64,
    };
    let mut params = serde_json::Map::new();
    params.insert("queries".into(), 64.into());
    params.insert("seed".into(), 0.into());
    let curve = Curve {
        dataset: DatasetInfo {
            spec: "fashion-mnist".into(),
            n: 60_000,
            dim: 784,
            xflip: false,
            limit: Some(1000),
            conditional: false,
        },
        method: "exact".into(),
        params,
        data_variance: Some(0.25),
        points: vec![point(0.01, 1e-4), point(0.1, 0.008), point(1.0, 0.2)],
    };
    let dir = tempfile::tempdir().expect("a temporary directory for the seeds");
    let path = dir.path().join("curve.json");
    curve.save(&path).expect("saving the seed curve");
    let bytes = std::fs::read(&path).expect("reading back the seed curve");
    vec![vec![Member::plain("curve.json", bytes)]]
}

/// Training configs: the shipped quick-start and ImageNet DiT configs, each with `--set`
/// overrides (the second part, one per line).
pub fn train_config_seeds() -> Vec<Input> {
    let quick = include_str!("../../../configs/fashion-mnist-quick.toml");
    let dit = include_str!("../../../configs/imagenet64-dit-b4.toml");
    let overrides = "train.batch=64\nnetwork.dropout=0.1\noptimizer.lr=2e-4";
    vec![
        vec![
            Member::plain("config.toml", quick),
            Member::plain("overrides", overrides),
        ],
        vec![
            Member::plain("config.toml", quick),
            Member::plain("overrides", ""),
        ],
        vec![
            Member::plain("config.toml", dit),
            Member::plain("overrides", "train.seed=3"),
        ],
    ]
}

/// Text seeds for the string parsers.
pub fn text_seeds(texts: &[&str]) -> Vec<Input> {
    texts
        .iter()
        .map(|t| vec![Member::plain("text", *t)])
        .collect()
}
