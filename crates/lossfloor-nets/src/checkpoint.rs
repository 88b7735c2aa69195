//! Self-describing network checkpoints (safetensors) and loading with exact
//! name / shape checks.
//!
//! A checkpoint is a safetensors file whose tensors are the network's state
//! (trainable parameters and stored buffers, named as in the network's
//! VarMap) and whose header metadata describes how to rebuild it:
//!
//! | key | value |
//! |---|---|
//! | `lossfloor.format` | `network-v1` |
//! | `lossfloor.network` | JSON of [`NetworkSpec`], e.g. `{"arch":"songunet","config":{...}}` |
//! | `lossfloor.precond` | JSON of [`PrecondSpec`], e.g. `{"process":"edm","sigma_data":0.5}` |
//! | anything else | free-form extras (training step, source file, ...) |
//!
//! [`load_network`] rebuilds the network from the metadata; [`load_network_with_config`]
//! reads a plain state dict (any safetensors file, e.g. a converted EDM pickle) and
//! takes the description from a TOML file:
//!
//! ```toml
//! [network]
//! arch = "songunet"          # songunet | dhariwal | dit
//! img_resolution = 32        # then the reference implementation's option names
//! in_channels = 3
//! out_channels = 3
//! channel_mult = [2, 2, 2]
//!
//! [precond]
//! process = "vp"             # vp | ve | edm | iddpm | fm | sd3
//! # sigma_data = 0.5         # edm only
//! ```
//!
//! Loading checks that the file holds exactly the tensors the configuration
//! asks for: the first missing tensor, shape mismatch or unexpected tensor is
//! reported by name and shapes. Two kinds of extra tensors are accepted:
//! EDM's constant `*.resample_filter` buffers of the U-Nets (checked against
//! the configured filter, then dropped), and DiT's fixed `pos_embed` table
//! (checked by shape).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::{
    dit, DhariwalUNet, DhariwalUNetConfig, DiT, DiTConfig, NetsError, Network, Result, SongUNet,
    SongUNetConfig,
};

/// Metadata key of the format tag.
pub const META_FORMAT: &str = "lossfloor.format";
/// Metadata key of the network description (JSON of [`NetworkSpec`]).
pub const META_NETWORK: &str = "lossfloor.network";
/// Metadata key of the preconditioning (JSON of [`PrecondSpec`]).
pub const META_PRECOND: &str = "lossfloor.precond";
/// Value of [`META_FORMAT`] written by [`save_network`].
pub const FORMAT_NETWORK_V1: &str = "network-v1";
/// Process names accepted in [`PrecondSpec::process`].
pub const PROCESS_NAMES: [&str; 6] = ["vp", "ve", "edm", "iddpm", "fm", "sd3"];

/// Architecture and options of a network: `{"arch": "songunet" | "dhariwal" | "dit",
/// "config": {...}}` in JSON, with the reference implementations' option names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "arch", content = "config", rename_all = "lowercase")]
pub enum NetworkSpec {
    /// EDM's `SongUNet` (DDPM++ / NCSN++).
    SongUNet(SongUNetConfig),
    /// EDM's `DhariwalUNet` (ADM).
    Dhariwal(DhariwalUNetConfig),
    /// DiT (`models.py` of facebookresearch/DiT).
    DiT(DiTConfig),
}

/// Preconditioning of a network: the process whose c_skip, c_out, c_in and
/// c_noise wrap it (names of `lossfloor_core::ProcessKind`), and EDM's σ_data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PrecondSpec {
    /// `vp`, `ve`, `edm`, `iddpm`, `fm` or `sd3`.
    pub process: String,
    /// σ_data of the `edm` process (default 0.5); ignored by the others.
    #[serde(default)]
    pub sigma_data: Option<f64>,
}

impl PrecondSpec {
    /// Checks the process name and σ_data.
    pub fn validate(&self) -> Result<()> {
        if !PROCESS_NAMES.contains(&self.process.as_str()) {
            return Err(NetsError::Config(format!(
                "unknown process {:?} (expected one of {})",
                self.process,
                PROCESS_NAMES.join(", ")
            )));
        }
        if let Some(sd) = self.sigma_data {
            if !(sd.is_finite() && sd > 0.0) {
                return Err(NetsError::Config(format!(
                    "sigma_data must be positive and finite, got {sd}"
                )));
            }
        }
        Ok(())
    }
}

impl NetworkSpec {
    /// The architecture's name as written in checkpoints and configs.
    pub fn arch(&self) -> &'static str {
        match self {
            NetworkSpec::SongUNet(_) => "songunet",
            NetworkSpec::Dhariwal(_) => "dhariwal",
            NetworkSpec::DiT(_) => "dit",
        }
    }

    /// Builds a freshly initialised network in `varmap` (f32 on `device`,
    /// seeded init); see each network's `new`.
    pub fn build(&self, varmap: &VarMap, device: &Device, seed: u64) -> Result<Box<dyn Network>> {
        Ok(match self {
            NetworkSpec::SongUNet(c) => Box::new(SongUNet::new(c, varmap, device, seed)?),
            NetworkSpec::Dhariwal(c) => Box::new(DhariwalUNet::new(c, varmap, device, seed)?),
            NetworkSpec::DiT(c) => Box::new(DiT::new(c, varmap, device, seed)?),
        })
    }

    /// Builds the network from a `VarBuilder` (each network's `from_var_builder`).
    pub fn build_from(&self, vb: VarBuilder) -> Result<Box<dyn Network>> {
        Ok(match self {
            NetworkSpec::SongUNet(c) => Box::new(SongUNet::from_var_builder(c, vb)?),
            NetworkSpec::Dhariwal(c) => Box::new(DhariwalUNet::from_var_builder(c, vb)?),
            NetworkSpec::DiT(c) => Box::new(DiT::from_var_builder(c, vb)?),
        })
    }

    /// The network for inference only, built from `tensors` (name → tensor, e.g. from
    /// [`varmap_tensors`]) detached from autograd. Detached tensors share their storage with
    /// the originals, so this costs no memory; a forward pass through the copy records no
    /// graph, so each layer's intermediates are freed as soon as the next layer has used
    /// them (with `Var` weights every intermediate stays alive until the output is dropped).
    pub fn build_inference(
        &self,
        tensors: Vec<(String, Tensor)>,
        device: &Device,
    ) -> Result<Box<dyn Network>> {
        let detached: HashMap<String, Tensor> =
            tensors.into_iter().map(|(n, t)| (n, t.detach())).collect();
        self.build_from(VarBuilder::from_tensors(detached, DType::F32, device))
    }

    /// Number of classes of the one-hot `class_labels`, 0 = unconditional.
    pub fn label_dim(&self) -> usize {
        match self {
            NetworkSpec::SongUNet(c) => c.label_dim,
            NetworkSpec::Dhariwal(c) => c.label_dim,
            NetworkSpec::DiT(c) => c.num_classes,
        }
    }

    /// Channels of the images (or latents) the network denoises.
    pub fn img_channels(&self) -> usize {
        match self {
            NetworkSpec::SongUNet(c) => c.in_channels,
            NetworkSpec::Dhariwal(c) => c.in_channels,
            NetworkSpec::DiT(c) => c.in_channels,
        }
    }

    /// Height = width of the images the network denoises.
    pub fn img_resolution(&self) -> usize {
        match self {
            NetworkSpec::SongUNet(c) => c.img_resolution,
            NetworkSpec::Dhariwal(c) => c.img_resolution,
            NetworkSpec::DiT(c) => c.input_size,
        }
    }

    /// Checks the options (each config's `validate`).
    pub fn validate(&self) -> Result<()> {
        match self {
            NetworkSpec::SongUNet(c) => c.validate(),
            NetworkSpec::Dhariwal(c) => c.validate(),
            NetworkSpec::DiT(c) => c.validate(),
        }
    }

    /// The 1-D resampling filter of the U-Nets' up/down convolutions (EDM's
    /// `resample_filter`; DhariwalUNet always uses `[1, 1]`), `None` for DiT.
    fn resample_filter(&self) -> Option<Vec<f64>> {
        match self {
            NetworkSpec::SongUNet(c) => Some(c.resample_filter.clone()),
            NetworkSpec::Dhariwal(_) => Some(vec![1.0, 1.0]),
            NetworkSpec::DiT(_) => None,
        }
    }
}

/// All tensors of `varmap` (parameters and buffers), sorted by name: what
/// [`save_network`] should be given for a network built in that VarMap.
pub fn varmap_tensors(varmap: &VarMap) -> Result<Vec<(String, Tensor)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| NetsError::Config("VarMap mutex poisoned".into()))?;
    let mut out: Vec<(String, Tensor)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn file_err(what: &str, path: &Path, e: impl std::fmt::Display) -> NetsError {
    NetsError::File(format!("{what} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    lossfloor_core::fs::write_atomic(path, bytes)
        .map_err(|e| file_err("cannot write checkpoint", path, e))
}

/// Saves a network checkpoint (safetensors) with the metadata keys
/// [`META_FORMAT`] = `network-v1`, [`META_NETWORK`] = JSON of `spec`,
/// [`META_PRECOND`] = JSON of `precond`, plus `extra_meta` (whose keys must not
/// be one of those three). `tensors` should be the whole state (see
/// [`varmap_tensors`]); names must be unique. Written atomically.
pub fn save_network(
    path: &Path,
    spec: &NetworkSpec,
    precond: &PrecondSpec,
    tensors: &[(String, Tensor)],
    extra_meta: &[(String, String)],
) -> Result<()> {
    spec.validate()?;
    precond.validate()?;
    let mut meta = HashMap::new();
    meta.insert(META_FORMAT.to_string(), FORMAT_NETWORK_V1.to_string());
    meta.insert(META_NETWORK.to_string(), to_json(spec)?);
    meta.insert(META_PRECOND.to_string(), to_json(precond)?);
    for (k, v) in extra_meta {
        if meta.contains_key(k) {
            return Err(NetsError::Config(format!(
                "extra metadata key {k:?} is reserved or repeated"
            )));
        }
        meta.insert(k.clone(), v.clone());
    }
    let mut seen = std::collections::HashSet::new();
    for (name, _) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(NetsError::Config(format!(
                "tensor {name} is given twice for checkpoint {}",
                path.display()
            )));
        }
    }
    // Contiguous CPU copies, so that serialisation cannot fail half-way.
    let cpu: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.as_str(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(n, t)| (*n, t)), Some(meta))
        .map_err(|e| file_err("cannot serialise checkpoint", path, e))?;
    write_atomic(path, &bytes)
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| NetsError::Config(format!("cannot write JSON: {e}")))
}

/// A network rebuilt from a checkpoint.
pub struct LoadedNetwork {
    /// Architecture and options.
    pub spec: NetworkSpec,
    /// Preconditioning.
    pub precond: PrecondSpec,
    /// The network; its tensors are the `Var`s of `varmap`.
    pub network: Box<dyn Network>,
    /// Every stored tensor (parameters and buffers) as a `Var`, f32.
    pub varmap: VarMap,
    /// The file's whole metadata (including the `lossfloor.*` keys).
    pub meta: BTreeMap<String, String>,
}

impl LoadedNetwork {
    /// An inference copy of the network ([`NetworkSpec::build_inference`]), sharing its
    /// tensors: for sampling and feature extraction, which never differentiate.
    pub fn inference_network(&self) -> Result<Box<dyn Network>> {
        let tensors = varmap_tensors(&self.varmap)?;
        let device = match tensors.first() {
            Some((_, t)) => t.device().clone(),
            None => return Err(NetsError::Config("the network has no tensors".into())),
        };
        self.spec.build_inference(tensors, &device)
    }
}

impl std::fmt::Debug for LoadedNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedNetwork")
            .field("spec", &self.spec)
            .field("precond", &self.precond)
            .field("num_parameters", &self.network.num_parameters())
            .field("meta", &self.meta)
            .finish()
    }
}

/// Reads a safetensors file: its metadata and tensors (on `device`).
fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, String>, HashMap<String, Tensor>)> {
    let bytes = fs::read(path).map_err(|e| file_err("cannot read checkpoint", path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        file_err(
            "checkpoint",
            path,
            format!("not a valid safetensors file: {e}"),
        )
    })?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| file_err("checkpoint", path, format!("cannot read tensors: {e}")))?;
    Ok((meta, tensors))
}

/// Loads a checkpoint written by [`save_network`]: the network is rebuilt from
/// the file's metadata and its tensors must match that description exactly.
pub fn load_network(path: &Path, device: &Device) -> Result<LoadedNetwork> {
    let (meta, tensors) = read_safetensors(path, device)?;
    let get = |key: &str| {
        meta.get(key).ok_or_else(|| {
            NetsError::File(format!(
                "checkpoint {}: no {key:?} metadata, so it is not a lossfloor network file \
                 (a plain state dict needs a TOML config with [network] and [precond])",
                path.display()
            ))
        })
    };
    let format = get(META_FORMAT)?;
    if format != FORMAT_NETWORK_V1 {
        return Err(NetsError::File(format!(
            "checkpoint {}: unsupported format {format:?} (this build reads {FORMAT_NETWORK_V1:?})",
            path.display()
        )));
    }
    let bad_json = |key: &str, e: serde_json::Error| {
        NetsError::File(format!(
            "checkpoint {}: invalid {key} metadata: {e}",
            path.display()
        ))
    };
    let spec: NetworkSpec =
        serde_json::from_str(get(META_NETWORK)?).map_err(|e| bad_json(META_NETWORK, e))?;
    let precond: PrecondSpec =
        serde_json::from_str(get(META_PRECOND)?).map_err(|e| bad_json(META_PRECOND, e))?;
    precond.validate()?;
    let (network, varmap) = build_checked(&spec, path, tensors, device)?;
    Ok(LoadedNetwork {
        spec,
        precond,
        network,
        varmap,
        meta,
    })
}

/// Loads a plain state dict (safetensors; metadata is kept but not needed)
/// described by a TOML file with `[network]` (`arch` plus the reference
/// option names) and `[precond]` sections. Unknown options are an error.
pub fn load_network_with_config(
    weights: &Path,
    config_toml: &Path,
    device: &Device,
) -> Result<LoadedNetwork> {
    let (spec, precond) = read_config_toml(config_toml)?;
    let (meta, tensors) = read_safetensors(weights, device)?;
    let (network, varmap) = build_checked(&spec, weights, tensors, device)?;
    Ok(LoadedNetwork {
        spec,
        precond,
        network,
        varmap,
        meta,
    })
}

/// Parses a network TOML config (see the module docs).
pub fn read_config_toml(path: &Path) -> Result<(NetworkSpec, PrecondSpec)> {
    let text = fs::read_to_string(path).map_err(|e| file_err("cannot read config", path, e))?;
    parse_config_toml(&text).map_err(|e| NetsError::Config(format!("{}: {e}", path.display())))
}

fn parse_config_toml(text: &str) -> std::result::Result<(NetworkSpec, PrecondSpec), String> {
    let mut root: toml::Table = text.parse().map_err(|e| format!("invalid TOML: {e}"))?;
    if let Some(k) = root.keys().find(|k| *k != "network" && *k != "precond") {
        return Err(format!(
            "unknown section [{k}] (expected [network] and [precond])"
        ));
    }
    let mut network = match root.remove("network") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err("[network] must be a table".into()),
        None => return Err("missing [network] section".into()),
    };
    let precond_value = root
        .remove("precond")
        .ok_or("missing [precond] section (process = \"vp\" | \"ve\" | \"edm\" | ...)")?;
    let arch = match network.remove("arch") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err("[network] arch must be a string".into()),
        None => return Err("[network] needs arch = \"songunet\" | \"dhariwal\" | \"dit\"".into()),
    };
    let given: Vec<String> = network.keys().cloned().collect();
    let mut wrapped = toml::Table::new();
    wrapped.insert("arch".into(), toml::Value::String(arch.clone()));
    wrapped.insert("config".into(), toml::Value::Table(network));
    let spec: NetworkSpec = toml::Value::Table(wrapped)
        .try_into()
        .map_err(|e| format!("[network] (arch {arch:?}): {e}"))?;
    // serde ignores unknown fields; a misspelt option would silently take its
    // default, so compare with the fields the config actually has.
    let known = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
    let known = known
        .get("config")
        .and_then(|c| c.as_object())
        .ok_or("internal: spec has no config object")?;
    if let Some(k) = given.iter().find(|k| !known.contains_key(*k)) {
        return Err(format!(
            "[network] has unknown option {k:?} for arch {arch:?}"
        ));
    }
    spec.validate().map_err(|e| e.to_string())?;
    let precond_table = match &precond_value {
        toml::Value::Table(t) => t.clone(),
        _ => return Err("[precond] must be a table".into()),
    };
    if let Some(k) = precond_table
        .keys()
        .find(|k| *k != "process" && *k != "sigma_data")
    {
        return Err(format!(
            "[precond] has unknown option {k:?} (expected process, sigma_data)"
        ));
    }
    let precond: PrecondSpec = precond_value
        .try_into()
        .map_err(|e| format!("[precond]: {e}"))?;
    precond.validate().map_err(|e| e.to_string())?;
    Ok((spec, precond))
}

/// Shared state of [`CheckBackend`].
struct CheckState {
    file: String,
    tensors: Mutex<HashMap<String, Tensor>>,
    varmap: VarMap,
    error: Mutex<Option<String>>,
}

/// A `VarBuilder` backend that serves the file's tensors to a network being
/// built, checking each request's name and shape, and records them as `Var`s.
struct CheckBackend(Arc<CheckState>);

impl CheckBackend {
    fn fail(&self, msg: String) -> candle_core::Error {
        if let Ok(mut e) = self.0.error.lock() {
            if e.is_none() {
                *e = Some(msg.clone());
            }
        }
        candle_core::Error::Msg(msg)
    }
}

impl SimpleBackend for CheckBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let st = &self.0;
        let taken = st
            .tensors
            .lock()
            .map_err(|_| candle_core::Error::Msg("tensor map poisoned".into()))?
            .remove(name);
        let Some(t) = taken else {
            let mut msg = format!(
                "checkpoint {}: tensor {name} is missing, the config expects shape {:?}",
                st.file,
                s.dims()
            );
            if let Some(short) = name.strip_prefix("model.") {
                let has_short = st
                    .tensors
                    .lock()
                    .map(|m| m.contains_key(short))
                    .unwrap_or(false);
                if has_short {
                    msg.push_str(&format!(
                        " (the file has {short}: was it saved without the \"model.\" prefix?)"
                    ));
                }
            }
            return Err(self.fail(msg));
        };
        if t.dims() != s.dims() {
            return Err(self.fail(format!(
                "checkpoint {}: tensor {name} has shape {:?}, the config expects {:?}",
                st.file,
                t.dims(),
                s.dims()
            )));
        }
        let t = checked_weights(t, name, &st.file).map_err(|msg| self.fail(msg))?;
        let var = Var::from_tensor(&t.to_dtype(dtype)?.to_device(dev)?)?;
        st.varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap mutex poisoned".into()))?
            .insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Err(self.fail(format!(
            "checkpoint {}: internal: unchecked read of {name}",
            self.0.file
        )))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0
            .tensors
            .lock()
            .map(|m| m.contains_key(name))
            .unwrap_or(false)
    }
}

/// Floating-point dtypes a checkpoint tensor may have: F32 is used as is; F16, BF16 and F64
/// (e.g. EDM2's half-precision exports, float64 conversions) are converted to F32.
const WEIGHT_DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F64];

/// Checks a tensor read from checkpoint `file` as weight `name`: a floating-point dtype
/// (integer weights are refused rather than converted) and only finite values (a NaN or
/// an infinity would make every output NaN). Returns it as F32.
fn checked_weights(t: Tensor, name: &str, file: &str) -> std::result::Result<Tensor, String> {
    if !WEIGHT_DTYPES.contains(&t.dtype()) {
        return Err(format!(
            "checkpoint {file}: tensor {name} has dtype {:?}; weights must be F32 (F16, BF16 \
             and F64 are converted)",
            t.dtype()
        ));
    }
    let t = t
        .to_dtype(DType::F32)
        .map_err(|e| format!("checkpoint {file}: tensor {name}: {e}"))?;
    // x − x is 0 for every finite x and NaN for NaN and ±inf, so the sum is 0 exactly when
    // all values are finite (on any device, without copying the tensor to the host).
    let nonfinite = t
        .sub(&t)
        .and_then(|d| d.sum_all())
        .and_then(|d| d.to_scalar::<f32>())
        .map_err(|e| format!("checkpoint {file}: tensor {name}: {e}"))?;
    if nonfinite != 0.0 {
        return Err(format!(
            "checkpoint {file}: tensor {name} holds NaN or infinite values"
        ));
    }
    Ok(t)
}

/// EDM's stored resampling buffer `f ⊗ f / (Σf)²` of shape `[1, 1, k, k]`.
fn edm_resample_buffer(f: &[f64]) -> Vec<f32> {
    let s: f64 = f.iter().sum();
    let mut out = Vec::with_capacity(f.len() * f.len());
    for a in f {
        for b in f {
            out.push((a * b / (s * s)) as f32);
        }
    }
    out
}

/// Builds `spec` from the file's tensors, requiring an exact match of names
/// and shapes. Returns the network and the VarMap holding its tensors.
fn build_checked(
    spec: &NetworkSpec,
    path: &Path,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<(Box<dyn Network>, VarMap)> {
    spec.validate()?;
    let state = Arc::new(CheckState {
        file: path.display().to_string(),
        tensors: Mutex::new(tensors),
        varmap: VarMap::new(),
        error: Mutex::new(None),
    });
    let vb = VarBuilder::from_backend(
        Box::new(CheckBackend(state.clone())),
        DType::F32,
        device.clone(),
    );
    let network = match spec.build_from(vb) {
        Ok(n) => n,
        Err(e) => {
            let recorded = state.error.lock().ok().and_then(|mut g| g.take());
            return Err(recorded.map(NetsError::File).unwrap_or(e));
        }
    };
    let mut rest: Vec<(String, Tensor)> = state
        .tensors
        .lock()
        .map_err(|_| NetsError::Config("tensor map poisoned".into()))?
        .drain()
        .collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    let file = &state.file;
    let mismatch = |msg: String| NetsError::File(format!("checkpoint {file}: {msg}"));
    let mut pos_embed = None;
    for (name, t) in rest {
        if let NetworkSpec::DiT(cfg) = spec {
            if name == dit::POS_EMBED {
                let want = [1, cfg.num_patches(), cfg.hidden_size];
                if t.dims() != want {
                    return Err(mismatch(format!(
                        "tensor {name} has shape {:?}, the config expects {want:?}",
                        t.dims()
                    )));
                }
                pos_embed = Some(t);
                continue;
            }
        }
        if let (Some(f), true) = (spec.resample_filter(), name.ends_with(".resample_filter")) {
            let k = f.len();
            let want = edm_resample_buffer(&f);
            let ok = t.dims() == [1, 1, k, k]
                && t.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + b.abs()));
            if !ok {
                return Err(mismatch(format!(
                    "buffer {name} (shape {:?}) does not match the configured \
                     resample_filter {f:?} (expected shape [1, 1, {k}, {k}])",
                    t.dims()
                )));
            }
            continue;
        }
        return Err(mismatch(format!(
            "unexpected tensor {name} with shape {:?}: the {} config has no such tensor",
            t.dims(),
            spec.arch()
        )));
    }
    let varmap = state.varmap.clone();
    if let NetworkSpec::DiT(cfg) = spec {
        // Keep DiT's fixed table in the VarMap so that a re-save carries it.
        let t = match pos_embed {
            Some(t) => checked_weights(t, dit::POS_EMBED, file)
                .map_err(NetsError::File)?
                .to_device(device)?,
            None => Tensor::from_vec(
                dit::sincos_pos_embed_2d(cfg.hidden_size, cfg.grid_size()),
                (1, cfg.num_patches(), cfg.hidden_size),
                device,
            )?,
        };
        varmap
            .data()
            .lock()
            .map_err(|_| NetsError::Config("VarMap mutex poisoned".into()))?
            .insert(dit::POS_EMBED.to_string(), Var::from_tensor(&t)?);
    }
    Ok((network, varmap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_unknown_option_is_rejected() {
        let text = "[network]\narch = \"songunet\"\nimg_resolution = 8\nin_channels = 3\n\
                    out_channels = 3\nmodel_channel = 16\n[precond]\nprocess = \"edm\"\n";
        let err = parse_config_toml(text).unwrap_err();
        assert!(err.contains("model_channel"), "{err}");
    }

    #[test]
    fn toml_minimal_songunet() {
        let text = "[network]\narch = \"songunet\"\nimg_resolution = 8\nin_channels = 3\n\
                    out_channels = 3\n[precond]\nprocess = \"vp\"\n";
        let (spec, precond) = parse_config_toml(text).unwrap();
        assert_eq!(spec, NetworkSpec::SongUNet(SongUNetConfig::new(8, 3, 3)));
        assert_eq!(precond.process, "vp");
        assert!(parse_config_toml(&text.replace("\"vp\"", "\"xx\"")).is_err());
        assert!(parse_config_toml(&text.replace("songunet", "unet")).is_err());
    }

    #[test]
    fn resample_buffer_is_normalised_outer_product() {
        let b = edm_resample_buffer(&[1.0, 3.0, 3.0, 1.0]);
        assert_eq!(b.len(), 16);
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((b[5] - 9.0 / 64.0).abs() < 1e-7);
    }
}
