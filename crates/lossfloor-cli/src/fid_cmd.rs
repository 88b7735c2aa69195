//! `lossfloor fid ref` / `lossfloor fid calc`: Fréchet Inception Distance with the standard
//! TF Inception-v3 (2015-12-05) network, computed like NVlabs/edm's `fid.py`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lossfloor_data::{load, DataSpec, Dataset};
use lossfloor_fid::inception::sha256_file;
use lossfloor_fid::{
    load_stats_npz, save_stats_npz, FeatureStats, InceptionV3, DEFAULT_WEIGHTS_PATH, FEATURE_DIM,
};
use lossfloor_optimal::write_atomic;

use crate::estimate::check_output_path;

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
    Calc(CalcArgs),
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

#[derive(Args)]
struct CalcArgs {
    /// Images: a folder or zip of PNGs (e.g. `lossfloor sample --outdir`), or a .npy array
    /// [N,C,H,W] (float in [−1, 1] as written by `lossfloor sample --out-npy`, or uint8)
    #[arg(long, value_name = "PATH")]
    images: PathBuf,
    /// Reference statistics (.npz with mu and sigma, e.g. from `lossfloor fid ref` or EDM's published files)
    #[arg(long = "ref", value_name = "FILE")]
    reference: PathBuf,
    /// Number of images to use: fewer available is an error, more uses the first N
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    num: usize,
    /// Also write the result as JSON (FID, image count, detector and reference hashes)
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    detector: DetectorArgs,
}

pub fn run(args: FidArgs) -> Result<()> {
    match args.command {
        FidCommand::Ref(a) => run_ref(a),
        FidCommand::Calc(a) => run_calc(a),
    }
}

fn load_detector(d: &DetectorArgs) -> Result<InceptionV3> {
    if d.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let device = crate::open_device_flag(&d.device)?;
    let mut net = InceptionV3::load_on(&d.weights, &device)?;
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

/// Inception statistics of the first `count` images of `data`, with a progress bar.
fn dataset_stats(net: &InceptionV3, data: &Dataset, count: usize) -> Result<FeatureStats> {
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
    let net = load_detector(&a.detector)?;
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
    if a.num < 2 {
        bail!("--num must be at least 2");
    }
    let reference = load_stats_npz(&a.reference)?;
    let net = load_detector(&a.detector)?;
    let data = load(&images_spec(&a.images)?)?;
    if data.len() < a.num {
        bail!("{}: {} images found, but --num asks for {} (pass a smaller --num or generate more images)", a.images.display(), data.len(), a.num);
    }
    let stats = dataset_stats(&net, &data, a.num)?.stats();
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
        "FID {fid:.4} ({} images of {} against {})",
        a.num,
        a.images.display(),
        a.reference.display()
    );
    if let Some(out) = &a.out {
        let json = serde_json::json!({
            "fid": fid,
            "num_images": a.num,
            "images": a.images.display().to_string(),
            "ref": a.reference.display().to_string(),
            "ref_sha256": sha256_file(&a.reference)?,
            "detector": a.detector.weights.display().to_string(),
            "detector_sha256": sha256_file(&a.detector.weights)?,
            "seeds": serde_json::Value::Null,
        });
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
