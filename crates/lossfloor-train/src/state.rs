//! Training-state checkpoints: one safetensors file holding the weights (`net/NAME`), the
//! EMA (`ema/NAME`) and Adam's moments (`adam_m/NAME`, `adam_v/NAME`), with a JSON
//! [`StateMeta`] under the header metadata key `lossfloor_state`. Files are written
//! atomically (temporary file, fsync, rename) as `training-state-NNNNNNNNNN.safetensors`,
//! NNNNNNNNNN being the number of images seen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::schedule::AdaptiveState;

/// Metadata key of the JSON state in the safetensors header.
pub const META_KEY: &str = "lossfloor_state";
/// File-name prefix of training states.
pub const STATE_PREFIX: &str = "training-state-";

/// Everything besides tensors needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    /// Format version (1).
    pub format: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Images seen; also the position in the data order.
    pub nimg: u64,
    /// Adam's step count.
    pub adam_step: u64,
    /// Ticks completed.
    pub cur_tick: u64,
    /// Images seen when the current tick began.
    pub tick_start_nimg: u64,
    /// `[train] seed` (all RNG streams derive from it and the step).
    pub seed: u64,
    /// Wall-clock seconds spent training before this state.
    pub elapsed_s: f64,
    /// State of the adaptive schedule, when used.
    #[serde(default)]
    pub schedule: Option<AdaptiveState>,
    /// The resolved config (TOML).
    pub config: String,
}

/// Tensors of a state, in parameter order.
#[derive(Debug)]
pub struct StateTensors {
    /// Network weights.
    pub net: Vec<Tensor>,
    /// EMA weights.
    pub ema: Vec<Tensor>,
    /// Adam first moments.
    pub adam_m: Vec<Tensor>,
    /// Adam second moments.
    pub adam_v: Vec<Tensor>,
    /// The post-hoc EMA profiles' weights (`phema{k}/NAME`), one list per `[ema] stds`
    /// entry; empty when none are tracked.
    pub profiles: Vec<Vec<Tensor>>,
}

/// Path of the state after `nimg` images.
pub fn state_path(run_dir: &Path, nimg: u64) -> PathBuf {
    run_dir.join(format!("{STATE_PREFIX}{nimg:010}.safetensors"))
}

/// The state with the most images in `run_dir`, if any.
pub fn latest_state(run_dir: &Path) -> Result<Option<PathBuf>> {
    if !run_dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(run_dir).with_context(|| format!("{}", run_dir.display()))? {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(num) = name
            .strip_prefix(STATE_PREFIX)
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|r| r.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| num > *b) {
            best = Some((num, p));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Writes `bytes` atomically to `path` (temporary file beside it, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    lossfloor_optimal::write_atomic(path, bytes)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Serialises a state.
pub fn save_state(path: &Path, names: &[String], t: &StateTensors, meta: &StateMeta) -> Result<()> {
    let mut data: Vec<(String, &Tensor)> = Vec::with_capacity(4 * names.len());
    let profile_prefixes: Vec<String> = (0..t.profiles.len()).map(profile_prefix).collect();
    let groups = [
        ("net", &t.net),
        ("ema", &t.ema),
        ("adam_m", &t.adam_m),
        ("adam_v", &t.adam_v),
    ]
    .into_iter()
    .chain(profile_prefixes.iter().map(String::as_str).zip(&t.profiles));
    for (prefix, list) in groups {
        if list.len() != names.len() {
            bail!("{prefix}: {} tensors for {} names", list.len(), names.len());
        }
        for (n, x) in names.iter().zip(list.iter()) {
            data.push((format!("{prefix}/{n}"), x));
        }
    }
    let info = HashMap::from([(META_KEY.to_string(), serde_json::to_string(meta)?)]);
    let bytes = safetensors::serialize(data, Some(info))
        .map_err(|e| anyhow!("serialising the training state: {e}"))?;
    write_atomic(path, &bytes)
}

/// Tensor-name prefix of post-hoc EMA profile `k` in a state.
fn profile_prefix(k: usize) -> String {
    format!("phema{k}")
}

/// Reads a state written by [`save_state`] for the parameters `names`, with `profiles`
/// post-hoc EMA profiles.
pub fn load_state(
    path: &Path,
    names: &[String],
    profiles: usize,
    device: &Device,
) -> Result<(StateTensors, StateMeta)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            anyhow!(
                "{}: no {META_KEY} metadata; not a training state",
                path.display()
            )
        })?;
    let meta: StateMeta = serde_json::from_str(meta_json)
        .with_context(|| format!("{}: bad {META_KEY} metadata", path.display()))?;
    let mut map = candle_core::safetensors::load_buffer(&bytes, device)?;
    let mut take = |prefix: &str| -> Result<Vec<Tensor>> {
        names
            .iter()
            .map(|n| {
                map.remove(&format!("{prefix}/{n}"))
                    .ok_or_else(|| anyhow!("{}: missing tensor {prefix}/{n}", path.display()))
            })
            .collect()
    };
    let t = StateTensors {
        net: take("net")?,
        ema: take("ema")?,
        adam_m: take("adam_m")?,
        adam_v: take("adam_v")?,
        profiles: (0..profiles)
            .map(|k| take(&profile_prefix(k)))
            .collect::<Result<_>>()?,
    };
    Ok((t, meta))
}
