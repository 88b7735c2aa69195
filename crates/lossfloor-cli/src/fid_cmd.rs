//! `lossfloor fid ref` / `lossfloor fid calc`: Fréchet Inception Distance with the standard
//! TF Inception-v3 (2015-12-05) network, computed like NVlabs/edm's `fid.py`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lossfloor_data::{load, DataSpec, Dataset};
use lossfloor_fid::inception::sha256_file;
use lossfloor_fid::{
    load_stats_npz, save_stats_npz, FeatureStats, InceptionV3, DEFAULT_WEIGHTS_PATH, FEATURE_DIM,
};
use lossfloor_optimal::write_atomic;
use lossfloor_sampler::parse_seeds;

pub(crate) mod pipeline;

pub(crate) use pipeline::generated_stats;

use crate::estimate::check_output_path;
use crate::sample::{load_checkpoint, SamplerOpts, SamplingJob};

/// Fréchet Inception Distance, matching NVlabs/edm's fid.py.
///
/// Images are uint8 (generated float images x in [−1, 1] become clamp(x·127.5 + 128) like EDM),
/// resized to 299×299 with TF-1-style bilinear sampling and fed to the TF Inception-v3
/// (2015-12-05) FID network; statistics are accumulated in float64 and saved as .npz with keys
/// mu and sigma (the format of EDM's reference files). The network's weights come from
/// `scripts/fetch-inception.sh`.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct FidArgs {
    #[command(subcommand)]
    command: FidCommand,
}

#[derive(Subcommand)]
enum FidCommand {
    /// Reference statistics of a whole dataset (e.g. CIFAR-10's 50k training images)
    Ref(RefArgs),
    /// FID of a set of images against reference statistics
    Calc(Box<CalcArgs>),
}

#[derive(Args)]
struct DetectorArgs {
    /// Inception weights: the TorchScript file from scripts/fetch-inception.sh, or a .safetensors copy
    #[arg(long, value_name = "FILE", env = "LOSSFLOOR_INCEPTION", default_value = DEFAULT_WEIGHTS_PATH)]
    weights: PathBuf,
    /// Images per Inception batch
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Compute device: cpu, or cuda[:N] (needs a binary built by scripts/build-cuda.sh)
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
}

#[derive(Args)]
struct RefArgs {
    /// Dataset: cifar10:DIR | edm:ZIP_OR_DIR | imagenet64:DIR | idx:FILE | npy:FILE | fashion-mnist[:test]
    #[arg(long, value_name = "SPEC")]
    data: String,
    /// Output statistics (.npz with mu, sigma)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Use only the first N images
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[command(flatten)]
    detector: DetectorArgs,
}

/// Long help of `lossfloor fid calc`.
const CALC_HELP: &str = "\
Images come either from files (--images) or straight from a network checkpoint
(--checkpoint), generated with EDM's sampler and fed to the Inception network batch by
batch, with no image files written. Each seed's image depends only on the seed, so
`fid calc --checkpoint C --seeds S` measures exactly the images that
`lossfloor sample --checkpoint C --seeds S --out-npy x.npy` writes.

With --images, --num takes the first N images (in file-name order for folders and zips),
not a random subset; EDM's fid.py does the same.

Examples:
  lossfloor fid calc --images samples/ --ref cifar10-32x32.npz
  lossfloor fid calc --checkpoint net.safetensors --seeds 0-49999 --ref cifar10-32x32.npz";

#[derive(Args)]
#[command(after_long_help = CALC_HELP)]
struct CalcArgs {
    /// Images: a folder or zip of PNGs (e.g. `lossfloor sample --outdir`), or a .npy array
    /// [N,C,H,W]: uint8, or float in [−1, 1] as written by `lossfloor sample --out-npy`
    /// (values up to ±1.5 are clamped like EDM's; beyond that, or NaN, is refused)
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "checkpoint",
        conflicts_with = "checkpoint"
    )]
    images: Option<PathBuf>,
    /// Generate the images on the fly from this network checkpoint (.safetensors)
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// TOML description of a plain state-dict checkpoint ([network], [precond])
    #[arg(long, value_name = "TOML", requires = "checkpoint")]
    config: Option<PathBuf>,
    /// With --checkpoint: the image seeds, e.g. 0-49999 (default 0..N−1 with N = --num)
    #[arg(long, value_name = "LIST", requires = "checkpoint")]
    seeds: Option<String>,
    /// With --checkpoint: images per sampling batch
    #[arg(long, value_name = "B", default_value_t = 64)]
    sample_batch: usize,
    #[command(flatten)]
    sampler: SamplerOpts,
    /// Reference statistics (.npz with mu and sigma, e.g. from `lossfloor fid ref` or EDM's published files)
    #[arg(long = "ref", value_name = "FILE")]
    reference: PathBuf,
    /// Number of images (default 50000; with --checkpoint and --seeds, the number of seeds).
    /// With --images, fewer available is an error and more uses the first N
    #[arg(long, value_name = "N")]
    num: Option<usize>,
    /// Also write the result as JSON (FID, image count, seeds, detector and reference hashes)
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    detector: DetectorArgs,
}

pub fn run(args: FidArgs) -> Result<()> {
    match args.command {
        FidCommand::Ref(a) => run_ref(a),
        FidCommand::Calc(a) => run_calc(*a),
    }
}

fn load_detector(d: &DetectorArgs, device: &Device) -> Result<InceptionV3> {
    if d.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut net = InceptionV3::load_on(&d.weights, device)?;
    net.batch_size = d.batch;
    Ok(net)
}

/// Rows of a dataset (floats in [−1, 1]) back to uint8 like EDM's sampler output:
/// clamp(⌊x·127.5 + 128⌋, 0, 255). For data stored as uint8 this returns the stored bytes.
fn rows_to_u8(rows: &[f32], out: &mut Vec<u8>) {
    out.clear();
    out.extend(
        rows.iter()
            .map(|&x| (x * 127.5 + 128.0).floor().clamp(0.0, 255.0) as u8),
    );
}

/// Largest |x| of a float image accepted by `fid calc --images`. Images are read in
/// [−1, 1] (as `lossfloor sample --out-npy` writes them; uint8 files map exactly onto it);
/// a sampler's output overshoots that range a little and is clamped as EDM does, but values
/// beyond ±1.5 mean another convention (0–255 floats, say), which clamping would silently
/// turn into a wrong FID.
const MAX_IMAGE_MAGNITUDE: f32 = 1.5;

/// Checks the first `count` images of `data` (read from `path`) before their FID is taken:
/// finite, within ±[`MAX_IMAGE_MAGNITUDE`]. Reports how many values get clamped, and warns
/// when no value is negative (images in [0, 1] read as [−1, 1] would be too bright).
fn check_image_range(data: &Dataset, count: usize, path: &Path) -> Result<()> {
    let (mut lo, mut hi, mut clamped) = (f32::INFINITY, f32::NEG_INFINITY, 0u64);
    let mut scratch = Vec::new();
    let step = 256;
    for start in (0..count).step_by(step) {
        let m = step.min(count - start);
        for &x in data.rows(start, m, &mut scratch) {
            if !x.is_finite() {
                bail!(
                    "--images {}: holds a {x} value; images must be finite",
                    path.display()
                );
            }
            lo = lo.min(x);
            hi = hi.max(x);
            clamped += u64::from(!(-1.0..=1.0).contains(&x));
        }
    }
    if lo < -MAX_IMAGE_MAGNITUDE || hi > MAX_IMAGE_MAGNITUDE {
        bail!(
            "--images {}: float values range over [{lo}, {hi}], but images are read as uint8 \
             (0–255) or as floats in [−1, 1] (values up to ±{MAX_IMAGE_MAGNITUDE} are clamped \
             like EDM's); convert 0–255 floats with x/127.5 − 1 or store them as uint8",
            path.display()
        );
    }
    if clamped > 0 {
        eprintln!(
            "{}: clamped {clamped} values outside [−1, 1] (range [{lo}, {hi}]), as EDM does",
            path.display()
        );
    }
    if lo >= 0.0 {
        eprintln!(
            "warning: {}: no value is below 0; if these images are in [0, 1] rather than \
             [−1, 1], convert them with 2x − 1 first",
            path.display()
        );
    }
    Ok(())
}

/// Inception statistics of the first `count` images of `data`, with a progress bar.
pub(crate) fn dataset_stats(
    net: &InceptionV3,
    data: &Dataset,
    count: usize,
) -> Result<FeatureStats> {
    let shape = data.shape();
    let (c, h, w) = (shape.channels, shape.height, shape.width);
    let bar = ProgressBar::new(count as u64).with_style(
        ProgressStyle::with_template(
            "inception [{bar:40}] {pos}/{len} images, {per_sec}, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut stats = FeatureStats::new(FEATURE_DIM);
    let (mut scratch, mut bytes) = (Vec::new(), Vec::new());
    let step = net.batch_size.max(1) * 4;
    for start in (0..count).step_by(step) {
        let m = step.min(count - start);
        rows_to_u8(data.rows(start, m, &mut scratch), &mut bytes);
        let feats = net.features_tensor(&bytes, m, c, h, w)?;
        stats.accumulate_flat(&feats.flatten_all()?.to_vec1::<f32>()?)?;
        bar.inc(m as u64);
    }
    bar.finish_and_clear();
    Ok(stats)
}

fn run_ref(a: RefArgs) -> Result<()> {
    check_output_path(&a.out, "--out")?;
    let device = crate::open_device_flag(&a.detector.device)?;
    let net = load_detector(&a.detector, &device)?;
    let spec: DataSpec = a.data.parse()?;
    let mut data = load(&spec)?;
    if let Some(n) = a.limit {
        data = data.take_first(n);
    }
    let count = data.len();
    if count < 2 {
        bail!("{spec}: {count} image(s); reference statistics need at least 2");
    }
    let stats = dataset_stats(&net, &data, count)?;
    save_stats_npz(&a.out, &stats.mu(), stats.sigma().as_ref())?;
    println!("wrote {} ({count} images of {spec})", a.out.display());
    Ok(())
}

fn images_spec(path: &Path) -> Result<DataSpec> {
    if !path.exists() {
        bail!("--images {}: no such file or folder", path.display());
    }
    let text = path.display().to_string();
    let spec = if path.extension().is_some_and(|e| e == "npy") {
        format!("npy:{text}")
    } else {
        format!("edm:{text}")
    };
    Ok(spec.parse()?)
}

fn run_calc(a: CalcArgs) -> Result<()> {
    if let Some(out) = &a.out {
        check_output_path(out, "--out")?;
    }
    let seeds = match (&a.checkpoint, &a.seeds) {
        (Some(_), Some(list)) => {
            let seeds = parse_seeds(list)?;
            if a.num.is_some_and(|n| n != seeds.len()) {
                bail!(
                    "--seeds {list} lists {} seeds but --num is {}; give one of them",
                    seeds.len(),
                    a.num.unwrap_or(0)
                );
            }
            Some(seeds)
        }
        (Some(_), None) => Some((0..a.num.unwrap_or(50_000) as u64).collect()),
        (None, _) => None,
    };
    let num = seeds.as_ref().map_or(a.num.unwrap_or(50_000), Vec::len);
    if num < 2 {
        bail!("--num must be at least 2 (the covariance needs two images)");
    }
    let sampler_cfg = a.sampler.heun_config()?;
    if a.images.is_some() && a.sampler.guidance.is_some() {
        bail!("--guidance applies to images generated from --checkpoint, not to --images");
    }
    if a.sample_batch == 0 {
        bail!("--sample-batch must be at least 1");
    }
    let reference = load_stats_npz(&a.reference)?;
    reference.check_reference(&a.reference, FEATURE_DIM)?;
    // The images are read and checked before the (slow to load) detector.
    let image_data = match &a.images {
        Some(images) => {
            let data = load(&images_spec(images)?)?;
            if data.len() < num {
                bail!("{}: {} images found, but --num asks for {num} (pass a smaller --num or generate more images)", images.display(), data.len());
            }
            check_image_range(&data, num, images)?;
            Some(data)
        }
        None => None,
    };
    let device = crate::open_device_flag(&a.detector.device)?;
    let net = load_detector(&a.detector, &device)?;
    let (stats, source, checkpoint_sha) = match (&a.images, &a.checkpoint) {
        (Some(images), _) => {
            let data = image_data.as_ref().context("images were loaded above")?;
            let stats = dataset_stats(&net, data, num)?;
            (stats, images.display().to_string(), None)
        }
        (None, Some(ckpt)) => {
            let seeds = seeds.as_deref().unwrap_or_default();
            let loaded = load_checkpoint(ckpt, a.config.as_deref(), &device)?;
            crate::sample::print_network(&loaded);
            let labels = a.sampler.class_labels(loaded.spec.label_dim(), seeds)?;
            let job = SamplingJob {
                loaded: &loaded,
                seeds,
                labels: labels.as_deref(),
                cfg: &sampler_cfg,
                batch: a.sample_batch,
                latents: None,
                device: &device,
                guidance: a.sampler.guidance,
            };
            let (stats, times) = generated_stats(&job, &net)?;
            eprintln!("{}", times.summary());
            (stats, ckpt.display().to_string(), Some(sha256_file(ckpt)?))
        }
        (None, None) => bail!("give --images or --checkpoint"),
    };
    let stats = stats.stats();
    if reference.mu.len() != stats.mu.len() {
        bail!(
            "{}: mu has {} values, expected {}",
            a.reference.display(),
            reference.mu.len(),
            stats.mu.len()
        );
    }
    let fid = stats.frechet_distance(&reference)?;
    println!(
        "FID {fid:.4} ({num} images of {source} against {})",
        a.reference.display()
    );
    if let Some(out) = &a.out {
        let mut json = serde_json::json!({
            "fid": fid,
            "num_images": num,
            "images": a.images.as_ref().map(|p| p.display().to_string()),
            "ref": a.reference.display().to_string(),
            "ref_sha256": sha256_file(&a.reference)?,
            "detector": a.detector.weights.display().to_string(),
            "detector_sha256": sha256_file(&a.detector.weights)?,
            "seeds": serde_json::Value::Null,
        });
        if let Some(ckpt) = &a.checkpoint {
            json["checkpoint"] = ckpt.display().to_string().into();
            json["checkpoint_sha256"] = checkpoint_sha.into();
            json["seeds"] = a
                .seeds
                .clone()
                .unwrap_or_else(|| format!("0-{}", num - 1))
                .into();
            json["sampler"] = serde_json::json!({
                "steps": sampler_cfg.num_steps,
                "solver": format!("{:?}", a.sampler.solver).to_lowercase(),
                "sigma_min": sampler_cfg.sigma_min,
                "sigma_max": sampler_cfg.sigma_max,
                "rho": sampler_cfg.rho,
                "s_churn": sampler_cfg.s_churn,
                "s_min": sampler_cfg.s_min,
                "s_max": if sampler_cfg.s_max.is_finite() { sampler_cfg.s_max.into() } else { serde_json::Value::from("inf") },
                "s_noise": sampler_cfg.s_noise,
                "class": a.sampler.class,
            });
        }
        write_atomic(out, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_rows_become_edm_uint8() {
        let mut out = Vec::new();
        // stored bytes come back exactly after x = b/127.5 − 1
        let rows: Vec<f32> = (0..=255u8).map(|b| b as f32 / 127.5 - 1.0).collect();
        rows_to_u8(&rows, &mut out);
        assert_eq!(out, (0..=255u8).collect::<Vec<_>>());
        rows_to_u8(&[-2.0, 2.0, 0.0, -1.0, 0.999], &mut out);
        assert_eq!(out, vec![0, 255, 128, 0, 255]);
    }
}
