//! `lossfloor augment`: EDM's augmentation pipe on a dataset preview or on given records.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use lossfloor_augment::{apply, draw_params, AugmentConfig, AugmentParams, LABEL_DIM};
use lossfloor_data::{load, DataSpec};
use lossfloor_sampler::{save_grid_png, save_npy_f32, to_uint8};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::estimate::check_output_path;

/// Long help of `lossfloor augment` (shown after the options by `--help`).
const LONG_HELP: &str = "\
The pipe is EDM's non-leaky augmentation (NVlabs/edm training/augment.py with train.py
--augment=P): x-flip (always eligible, then a coin flip), y-flip, isotropic scale (log2
std 0.2), rotation by any angle, anisotropic scale (log2 std 0.2, in a randomly turned frame
half the time) and translation (std 0.125 of the size), each applied with probability P
(the y-flip P/2). The geometric transforms are resampled together, with reflect padding and
2x sym6 wavelet up/downsampling. Each image also gets 9 labels for the network's
augment_dim input, in EDM's order: xflip, yflip, scale, cos(rotate)-1, sin(rotate),
aniso*cos(aniso_angle), aniso*sin(aniso_angle), tx, ty.

Two modes:
  --data SPEC [--p P] [--seed S] [--count N]
      draws records for the first N images of the dataset with a seeded RNG (ChaCha8);
  --images IN.npy --params PARAMS.json
      applies the given records to a float .npy batch [N, C, H, W] (or [N, H, W]).

PARAMS.json is a list with one object per image, keys xflip, yflip (0/1 or true/false),
scale, aniso (the normal draws before x std), rotate, aniso_angle (radians), tx, ty (the
draws before x size x std); a missing key means 0 (transform not applied). --params-out
writes the same format, so a preview can be replayed.

Outputs (at least one, each written atomically, nothing written on error): --grid, a PNG with
each original next to its augmented version (pixels clamp(x*127.5+128, 0, 255)); --out-npy,
the augmented float32 batch [N, C, H, W]; --labels-out, the labels float32 [N, 9];
--params-out, the records as JSON.

Examples:
  lossfloor augment --data fashion-mnist --p 0.12 --seed 0 --count 16 --grid preview.png
  lossfloor augment --images batch.npy --params params.json --out-npy out.npy --labels-out labels.npy";

/// Apply EDM's augmentation pipe (flips, scale, rotation, anisotropy, translation) and its
/// 9 labels to a dataset preview or to a batch with given parameters.
#[derive(Args, Debug)]
#[command(after_long_help = LONG_HELP)]
pub struct AugmentArgs {
    /// Dataset to preview (e.g. fashion-mnist, cifar10:DIR, npy:FILE); records are drawn
    #[arg(long, value_name = "SPEC", required_unless_present = "images", conflicts_with_all = ["images", "params"])]
    data: Option<String>,
    /// Augmentation probability p of EDM's --augment (with --data)
    #[arg(
        long = "p",
        value_name = "P",
        default_value_t = 0.12,
        conflicts_with = "images"
    )]
    p: f64,
    /// Seed of the draw (with --data)
    #[arg(long, default_value_t = 0, conflicts_with = "images")]
    seed: u64,
    /// Number of images to augment: the first N of the dataset (with --data)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        conflicts_with = "images"
    )]
    count: usize,
    /// Float .npy batch [N, C, H, W] or [N, H, W] to augment with --params
    #[arg(long, value_name = "NPY", requires = "params")]
    images: Option<PathBuf>,
    /// JSON list of per-image records (with --images)
    #[arg(long, value_name = "JSON", requires = "images")]
    params: Option<PathBuf>,
    /// Write originals and augmented images side by side as one PNG
    #[arg(long, value_name = "PNG")]
    grid: Option<PathBuf>,
    /// Write the augmented batch as float32 .npy [N, C, H, W]
    #[arg(long, value_name = "NPY")]
    out_npy: Option<PathBuf>,
    /// Write the augmentation labels as float32 .npy [N, 9]
    #[arg(long, value_name = "NPY")]
    labels_out: Option<PathBuf>,
    /// Write the records used as JSON (the --params format)
    #[arg(long, value_name = "JSON")]
    params_out: Option<PathBuf>,
}

/// The keys of one record in a params file, in [`AugmentParams`] order.
const PARAM_KEYS: [&str; 8] = [
    "xflip",
    "yflip",
    "scale",
    "rotate",
    "aniso",
    "aniso_angle",
    "tx",
    "ty",
];

/// Reads one flip value: 0/1 or false/true.
fn parse_flip(value: &Value, at: &dyn Fn() -> String) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        _ => bail!("{}: value {value} is not 0, 1, false or true", at()),
    }
}

/// Reads one finite number.
fn parse_number(value: &Value, at: &dyn Fn() -> String) -> Result<f64> {
    match value.as_f64() {
        Some(v) if v.is_finite() => Ok(v),
        _ => bail!("{}: value {value} is not a finite number", at()),
    }
}

/// Parses a params file's text: a JSON list of objects with the keys of [`PARAM_KEYS`]
/// (missing ones are 0); errors name the file, record, key and value.
pub fn parse_params(text: &str, path: &Path) -> Result<Vec<AugmentParams>> {
    let file = path.display();
    let json: Value =
        serde_json::from_str(text).with_context(|| format!("{file}: not valid JSON"))?;
    let Value::Array(records) = json else {
        bail!("{file}: expected a JSON list of records, one object per image");
    };
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let Value::Object(fields) = record else {
                bail!("{file}: record {i} is not an object: {record}");
            };
            if let Some(unknown) = fields.keys().find(|k| !PARAM_KEYS.contains(&k.as_str())) {
                bail!(
                    "{file}: record {i}: unknown key {unknown:?}; expected {}",
                    PARAM_KEYS.join(", ")
                );
            }
            let at = |key: &str| format!("{file}: record {i}: key {key:?}");
            let flip = |key: &str| match fields.get(key) {
                Some(v) => parse_flip(v, &|| at(key)),
                None => Ok(false),
            };
            let number = |key: &str| match fields.get(key) {
                Some(v) => parse_number(v, &|| at(key)),
                None => Ok(0.0),
            };
            Ok(AugmentParams {
                xflip: flip("xflip")?,
                yflip: flip("yflip")?,
                scale: number("scale")?,
                rotate: number("rotate")?,
                aniso: number("aniso")?,
                aniso_angle: number("aniso_angle")?,
                tx: number("tx")?,
                ty: number("ty")?,
            })
        })
        .collect()
}

/// The records as the params file format (flips as 0/1).
pub fn params_to_json(params: &[AugmentParams]) -> Value {
    Value::Array(
        params
            .iter()
            .map(|p| {
                serde_json::json!({
                    "xflip": u8::from(p.xflip),
                    "yflip": u8::from(p.yflip),
                    "scale": p.scale,
                    "rotate": p.rotate,
                    "aniso": p.aniso,
                    "aniso_angle": p.aniso_angle,
                    "tx": p.tx,
                    "ty": p.ty,
                })
            })
            .collect(),
    )
}

/// Interleaves originals and augmented images `[orig₀, aug₀, orig₁, aug₁, …]` for a grid with
/// the pairs side by side.
fn interleave_pairs(original: &[f32], augmented: &[f32], image_len: usize) -> Vec<f32> {
    original
        .chunks_exact(image_len)
        .zip(augmented.chunks_exact(image_len))
        .flat_map(|(o, a)| o.iter().chain(a).copied())
        .collect()
}

/// Loads the batch to augment and its records, from either mode.
fn inputs(args: &AugmentArgs) -> Result<(Vec<f32>, [usize; 4], Vec<AugmentParams>)> {
    let (images, shape) = match (&args.data, &args.images) {
        (Some(spec), _) => {
            if args.count == 0 {
                bail!("--count must be at least 1");
            }
            if !(0.0..=1.0).contains(&args.p) {
                bail!("--p {} is outside [0, 1]", args.p);
            }
            let spec: DataSpec = spec.parse()?;
            let data = load(&spec)?;
            if args.count > data.len() {
                bail!(
                    "--count {} is more than the {} images of {spec}",
                    args.count,
                    data.len()
                );
            }
            let mut scratch = Vec::new();
            let rows = data.rows(0, args.count, &mut scratch).to_vec();
            let s = data.shape();
            (rows, [args.count, s.channels, s.height, s.width])
        }
        (None, Some(path)) => {
            let data = load(&DataSpec::Npy(path.clone()))?;
            let mut scratch = Vec::new();
            let rows = data.rows(0, data.len(), &mut scratch).to_vec();
            let s = data.shape();
            (rows, [data.len(), s.channels, s.height, s.width])
        }
        (None, None) => bail!("give --data SPEC or --images NPY --params JSON"),
    };
    let params = match &args.params {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let params = parse_params(&text, path)?;
            if params.len() != shape[0] {
                bail!(
                    "{}: {} records for the {} images of {}",
                    path.display(),
                    params.len(),
                    shape[0],
                    args.images.as_deref().unwrap_or(Path::new("?")).display()
                );
            }
            params
        }
        None => {
            let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
            draw_params(&mut rng, &AugmentConfig::edm(args.p), shape[0])
        }
    };
    Ok((images, shape, params))
}

/// Runs `lossfloor augment`.
pub fn run(args: AugmentArgs) -> Result<()> {
    let outputs = [
        (&args.grid, "--grid"),
        (&args.out_npy, "--out-npy"),
        (&args.labels_out, "--labels-out"),
        (&args.params_out, "--params-out"),
    ];
    if outputs.iter().all(|(p, _)| p.is_none()) {
        bail!("no output requested: give --grid, --out-npy, --labels-out and/or --params-out");
    }
    for (path, flag) in outputs {
        if let Some(p) = path {
            check_output_path(p, flag)?;
        }
    }
    let (images, shape, params) = inputs(&args)?;
    let (augmented, labels) = apply(&images, shape, &params)?;
    let [n, c, h, w] = shape;

    // Outputs, only now that everything succeeded.
    if let Some(p) = &args.out_npy {
        save_npy_f32(
            p,
            &Tensor::from_vec(augmented.clone(), (n, c, h, w), &Device::Cpu)?,
        )?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.labels_out {
        save_npy_f32(p, &Tensor::from_vec(labels, (n, LABEL_DIM), &Device::Cpu)?)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.params_out {
        let text = serde_json::to_string_pretty(&params_to_json(&params))? + "\n";
        lossfloor_core::fs::write_atomic(p, text.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.grid {
        let pairs = interleave_pairs(&images, &augmented, c * h * w);
        let pixels = to_uint8(&Tensor::from_vec(pairs, (2 * n, c, h, w), &Device::Cpu)?)?;
        // Pairs side by side, about as many pair columns as rows.
        let pair_cols = (n as f64).sqrt().ceil() as usize;
        save_grid_png(p, &pixels, 2 * pair_cols)?;
        eprintln!(
            "wrote {} ({n} originals, each followed by its augmented version)",
            p.display()
        );
    }
    let applied = params
        .iter()
        .filter(|p| **p != AugmentParams::default())
        .count();
    eprintln!("{applied} of {n} images have at least one transform (x-flips included)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_file_round_trips_and_missing_keys_are_zero() {
        let records = vec![
            AugmentParams {
                xflip: true,
                scale: -0.5,
                rotate: 1.25,
                tx: 0.5,
                ty: -0.25,
                ..Default::default()
            },
            AugmentParams::default(),
        ];
        let text = params_to_json(&records).to_string();
        assert_eq!(parse_params(&text, Path::new("p.json")).unwrap(), records);
        let partial = parse_params(r#"[{"yflip": true, "aniso": 0.5}]"#, Path::new("p.json"));
        assert_eq!(
            partial.unwrap(),
            vec![AugmentParams {
                yflip: true,
                aniso: 0.5,
                ..Default::default()
            }]
        );
    }

    #[test]
    fn bad_params_name_file_record_key_and_value() {
        let err = |text: &str| {
            parse_params(text, Path::new("p.json"))
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("[{\"rotate\": \"x\"}]").contains("p.json: record 0: key \"rotate\": value \"x\"")
        );
        assert!(err("[{}, {\"xflip\": 2}]").contains("record 1: key \"xflip\": value 2"));
        assert!(err("[{\"rotation\": 1}]").contains("unknown key \"rotation\""));
        assert!(err("{\"xflip\": 1}").contains("expected a JSON list"));
        assert!(err("[1]").contains("record 0 is not an object"));
        assert!(err("[{\"tx\": 1e999}]").contains("p.json"));
    }
}
