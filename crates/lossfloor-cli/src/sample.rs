//! `lossfloor sample`: images from a network checkpoint with EDM's sampler.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use lossfloor_core::fs::StagedOutputs;
use lossfloor_nets::checkpoint::{load_network, load_network_with_config, LoadedNetwork};
use lossfloor_sampler::net_denoiser::loaded_denoiser;
use lossfloor_sampler::{
    check_guidance, image_path, latents_from_npy, one_hot, parse_seeds, random_class, sample,
    save_grid_png, save_npy_f32, save_png, to_uint8, Denoiser, GuidedDenoiser, HeunConfig, SeedRng,
    Solver,
};

/// ODE solver of the sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SolverArg {
    /// Second order (EDM's default): 2·steps − 1 network evaluations.
    Heun,
    /// First order: one evaluation per step.
    Euler,
}

/// Long help of `lossfloor sample` (shown after the options by `--help`, so that it
/// survives the one-line description `main.rs` gives the subcommand).
const LONG_HELP: &str = "\
The checkpoint is a lossfloor network file (safetensors that describe their network and
preconditioning), or a plain state dict together with --config, a TOML file with
[network] (arch = \"songunet\" | \"dhariwal\" | \"dit\" plus the reference option names) and
[precond] (process = \"vp\" | \"ve\" | \"edm\" | \"iddpm\" | \"fm\" | \"sd3\"; sigma_data for edm).

Each seed has its own random stream for its latents, churn noise and class label, so an
image depends only on its seed, not on the batch it was drawn in. Outputs (at least one):
a PNG grid, one PNG per image (EDM's file names) and the raw float32 samples [N, C, H, W]
as .npy. Pixels are clamp(x*127.5 + 128, 0, 255). Nothing is written unless sampling
succeeds; every file is written atomically. Runs on the CPU.

Example:
  lossfloor sample --checkpoint net.safetensors --seeds 0-63 --steps 18 --grid grid.png";

/// The sampler's settings (EDM's Algorithm 2), shared by `lossfloor sample` and
/// `lossfloor fid calc --checkpoint`.
#[derive(Args, Debug)]
pub struct SamplerOpts {
    /// Number of time steps N (Heun: 2N − 1 network evaluations)
    #[arg(long, default_value_t = 18)]
    pub steps: usize,
    /// Class label of every image (class-conditional networks; default: drawn per seed)
    #[arg(long, value_name = "K")]
    pub class: Option<usize>,
    /// Smallest noise level σ_min
    #[arg(long, default_value_t = 0.002)]
    pub sigma_min: f64,
    /// Largest noise level σ_max
    #[arg(long, default_value_t = 80.0)]
    pub sigma_max: f64,
    /// ρ of the time-step schedule
    #[arg(long, default_value_t = 7.0)]
    pub rho: f64,
    /// S_churn: stochasticity (0 = deterministic)
    #[arg(long, default_value_t = 0.0)]
    pub s_churn: f64,
    /// S_min: churn only for σ ≥ S_min
    #[arg(long, default_value_t = 0.0)]
    pub s_min: f64,
    /// S_max: churn only for σ ≤ S_max
    #[arg(long, default_value_t = f64::INFINITY)]
    pub s_max: f64,
    /// S_noise: scale of the churn noise
    #[arg(long, default_value_t = 1.0)]
    pub s_noise: f64,
    /// ODE solver
    #[arg(long, value_enum, default_value = "heun")]
    pub solver: SolverArg,
    /// Classifier-free guidance weight W: D = D_uncond + W·(D_cond − D_uncond), both halves in
    /// one batched pass (unconditional = zeroed label, DiT's null class). 1 = plain
    /// conditional sampling. Needs a class-conditional network trained with label dropout.
    #[arg(long, value_name = "W", allow_hyphen_values = true)]
    pub guidance: Option<f64>,
}

impl SamplerOpts {
    /// The checked sampler configuration.
    pub fn heun_config(&self) -> Result<HeunConfig> {
        let cfg = HeunConfig {
            num_steps: self.steps,
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            rho: self.rho,
            s_churn: self.s_churn,
            s_min: self.s_min,
            s_max: self.s_max,
            s_noise: self.s_noise,
            solver: match self.solver {
                SolverArg::Heun => Solver::Heun,
                SolverArg::Euler => Solver::Euler,
            },
        };
        cfg.validate().context("sampler settings")?;
        Ok(cfg)
    }

    /// The class label of each seed: `--class` for all, or drawn per seed for a
    /// class-conditional network; `None` for an unconditional one.
    pub fn class_labels(&self, label_dim: usize, seeds: &[u64]) -> Result<Option<Vec<usize>>> {
        Ok(match (label_dim, self.class) {
            (0, Some(_)) => bail!("--class given, but the network is unconditional"),
            (0, None) => None,
            (k, Some(cls)) if cls >= k => bail!("--class {cls} out of range 0..{k}"),
            (_, Some(cls)) => Some(vec![cls; seeds.len()]),
            (k, None) => Some(
                seeds
                    .iter()
                    .map(|&s| random_class(s, k))
                    .collect::<lossfloor_sampler::Result<_>>()?,
            ),
        })
    }
}

/// Generate images from a network checkpoint with EDM's sampler (Algorithm 2).
#[derive(Args, Debug)]
#[command(after_long_help = LONG_HELP)]
pub struct SampleArgs {
    /// Network checkpoint (.safetensors)
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// TOML description of a plain state-dict checkpoint ([network], [precond])
    #[arg(long, value_name = "TOML")]
    config: Option<PathBuf>,
    /// Image seeds, e.g. 0-63 or 0,5,10-19 (default 0-63; with --latents, 0..N-1)
    #[arg(long, value_name = "LIST")]
    seeds: Option<String>,
    /// Write all images as one PNG grid
    #[arg(long, value_name = "PNG")]
    grid: Option<PathBuf>,
    /// Columns of the grid (default ⌈√N⌉)
    #[arg(long, value_name = "K")]
    grid_cols: Option<usize>,
    /// Write one PNG per image, OUTDIR/<seed:06>.png (created if missing)
    #[arg(long, value_name = "DIR")]
    outdir: Option<PathBuf>,
    /// With --outdir: EDM's subfolders OUTDIR/<seed − seed % 1000:06>/<seed:06>.png
    #[arg(long)]
    subdirs: bool,
    /// Write the raw float32 samples [N, C, H, W] as .npy
    #[arg(long, value_name = "NPY")]
    out_npy: Option<PathBuf>,
    /// Start from these standard-normal latents (.npy, [N, C, H, W]) instead of the seeds'
    #[arg(long, value_name = "NPY")]
    latents: Option<PathBuf>,
    /// Images per batch
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    sampler: SamplerOpts,
    /// Compute device: cpu, or cuda[:N] (needs a binary built by scripts/build-cuda.sh).
    /// Latents are drawn on the CPU per seed, so a seed gives the same image on any device.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
}

/// Checks that `path` can be created as a file: its folder exists and is writable, and
/// `path` itself is not a folder.
fn check_output_file(path: &Path, what: &str) -> Result<()> {
    if path.is_dir() {
        bail!("{what} {} is a folder", path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_writable_dir(&dir).with_context(|| format!("{what} {}", path.display()))
}

/// Checks that `dir` is an existing folder we can create files in.
fn check_writable_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!("folder {} does not exist", dir.display());
    }
    let probe = dir.join(format!(".lossfloor-sample-probe{}", std::process::id()));
    fs::File::create(&probe)
        .with_context(|| format!("folder {} is not writable", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// The PNGs of `--outdir`, written into a hidden sibling folder first
/// ([`lossfloor_core::fs::temporary_sibling`]) and moved into place by
/// [`StagedImages::commit`]; dropped uncommitted, the staging folder is removed.
struct StagedImages {
    staging: PathBuf,
    dir: PathBuf,
    files: Vec<(PathBuf, PathBuf)>,
}

impl StagedImages {
    /// Writes image k of `pixels` ([N, C, H, W] uint8) for each of `seeds` into the staging
    /// folder of `dir`, at the path it will have under `dir`.
    fn write(dir: &Path, seeds: &[u64], pixels: &Tensor, subdirs: bool) -> Result<Self> {
        let staging = lossfloor_core::fs::temporary_sibling(dir);
        let mut staged = Self {
            staging: staging.clone(),
            dir: dir.to_path_buf(),
            files: Vec::with_capacity(seeds.len()),
        };
        fs::create_dir_all(&staging)
            .with_context(|| format!("--outdir: cannot create {}", staging.display()))?;
        for (k, &seed) in seeds.iter().enumerate() {
            let tmp = image_path(&staging, seed, subdirs);
            if let Some(parent) = tmp.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("--outdir: cannot create {}", parent.display()))?;
            }
            save_png(&tmp, &pixels.get(k)?)
                .with_context(|| format!("--outdir {}", dir.display()))?;
            staged.files.push((tmp, image_path(dir, seed, subdirs)));
        }
        Ok(staged)
    }

    /// Moves the images into `dir`: the staging folder becomes `dir` when `dir` does not
    /// exist yet, else each file is renamed into it (same file system, no space needed).
    fn commit(mut self) -> Result<()> {
        if !self.dir.exists() {
            fs::rename(&self.staging, &self.dir).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.staging.display(),
                    self.dir.display()
                )
            })?;
        } else {
            for (tmp, path) in &self.files {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                fs::rename(tmp, path).with_context(|| {
                    format!("cannot rename {} to {}", tmp.display(), path.display())
                })?;
            }
            let _ = fs::remove_dir_all(&self.staging);
        }
        self.files.clear();
        Ok(())
    }
}

impl Drop for StagedImages {
    fn drop(&mut self) {
        if !self.files.is_empty() || self.staging.exists() {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Checks that `--outdir` exists as a writable folder or can be created (its nearest
/// existing ancestor is a writable folder).
fn check_outdir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("--outdir {} exists and is not a folder", dir.display());
        }
        return check_writable_dir(dir).context("--outdir");
    }
    let mut anc = dir.parent();
    while let Some(a) = anc {
        let a = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        if a.exists() {
            if !a.is_dir() {
                bail!(
                    "--outdir {}: {} is not a folder",
                    dir.display(),
                    a.display()
                );
            }
            return check_writable_dir(a)
                .with_context(|| format!("--outdir {} cannot be created", dir.display()));
        }
        anc = a.parent();
    }
    Ok(())
}

/// Loads a network checkpoint: a lossfloor network file, or a plain state dict described
/// by a TOML `config`.
pub fn load_checkpoint(
    checkpoint: &Path,
    config: Option<&Path>,
    device: &Device,
) -> Result<LoadedNetwork> {
    if !checkpoint.is_file() {
        bail!(
            "checkpoint {} does not exist or is not a file",
            checkpoint.display()
        );
    }
    let loaded = match config {
        Some(cfg) => load_network_with_config(checkpoint, cfg, device)?,
        None => load_network(checkpoint, device)?,
    };
    Ok(loaded)
}

/// Prints one line about a loaded network (architecture, size, process, image shape),
/// once every input of the command has been checked.
pub fn print_network(loaded: &LoadedNetwork) {
    eprintln!(
        "network: {} ({:.2} M parameters), process {}, {}x{r}x{r}{}",
        loaded.spec.arch(),
        loaded.network.num_parameters() as f64 / 1e6,
        loaded.precond.process,
        loaded.spec.img_channels(),
        match loaded.spec.label_dim() {
            0 => String::new(),
            k => format!(", {k} classes"),
        },
        r = loaded.spec.img_resolution(),
    );
}

/// What [`generate`] draws: the images of `seeds` (with their class `labels` for a
/// class-conditional network) from `loaded` with sampler settings `cfg`.
#[derive(Clone, Copy)]
pub struct SamplingJob<'a> {
    pub loaded: &'a LoadedNetwork,
    pub seeds: &'a [u64],
    pub labels: Option<&'a [usize]>,
    pub cfg: &'a HeunConfig,
    /// Images per batch.
    pub batch: usize,
    /// Given latents `[N, C, H, W]` instead of the seeds' own.
    pub latents: Option<&'a Tensor>,
    pub device: &'a Device,
    /// Classifier-free guidance weight W (`--guidance`), if any.
    pub guidance: Option<f64>,
}

/// Draws the images of `seeds` in batches of `batch` and hands each batch (float32
/// `[B, C, H, W]`, about [−1, 1]) to `on_batch` with the index of its first image, under a
/// progress bar. Each seed has its own random stream (latents, churn noise), so an image
/// depends only on its seed; `latents`, when given, replaces the seeds' latents.
pub fn generate(
    job: &SamplingJob,
    on_batch: &mut dyn FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    let SamplingJob {
        loaded,
        seeds,
        labels,
        cfg,
        batch,
        latents,
        device,
        guidance,
    } = *job;
    let spec = &loaded.spec;
    let (c, r, label_dim) = (spec.img_channels(), spec.img_resolution(), spec.label_dim());
    let n = seeds.len();
    let base = loaded_denoiser(loaded)?;
    let guided;
    let denoiser: &dyn Denoiser = match guidance {
        Some(w) => {
            check_guidance(spec, w)?;
            guided = GuidedDenoiser::new(&base, w);
            &guided
        }
        None => &base,
    };
    eprintln!(
        "sampling {n} images, {} steps ({} network evaluations each), batch {batch}",
        cfg.num_steps,
        cfg.nfe(),
    );
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(
            "sample [{bar:40}] {pos}/{len} images, {elapsed_precise} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let t1 = Instant::now();
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch).min(n);
        let batch_seeds = &seeds[start..end];
        let mut rng = SeedRng::new(batch_seeds);
        let latents = match latents {
            Some(l) => l.narrow(0, start, end - start)?,
            None => rng.randn(&[c, r, r], device)?,
        };
        let class = match labels {
            Some(l) => Some(one_hot(&l[start..end], label_dim, device)?),
            None => None,
        };
        let x = sample(denoiser, &latents, class.as_ref(), cfg, &mut |s| {
            rng.randn_like(s, device)
        })
        .with_context(|| format!("sampling seeds {}..={}", seeds[start], seeds[end - 1]))?;
        on_batch(start, x)?;
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    let secs = t1.elapsed().as_secs_f64();
    eprintln!(
        "sampled {n} images in {secs:.3} s ({:.3} s per image, {:.2} img/s)",
        secs / n.max(1) as f64,
        n as f64 / secs.max(1e-9)
    );
    if lossfloor_ops::profile::enabled() {
        // Milliseconds per op category summed over threads (LOSSFLOOR_PROFILE).
        eprintln!(
            "profile: {{\"wall_ms\": {:.1}, \"ms\": {}}}",
            secs * 1e3,
            lossfloor_ops::profile::totals_json()
        );
    }
    Ok(())
}

/// Runs `lossfloor sample`.
pub fn run(args: SampleArgs) -> Result<()> {
    let device = crate::open_device_flag(&args.device)?;

    // Everything that can be checked before loading and sampling.
    if args.grid.is_none() && args.outdir.is_none() && args.out_npy.is_none() {
        bail!("no output requested: give --grid, --outdir and/or --out-npy");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.grid_cols == Some(0) {
        bail!("--grid-cols must be at least 1");
    }
    let cfg = args.sampler.heun_config()?;
    let seeds_given = match &args.seeds {
        Some(s) => Some(parse_seeds(s)?),
        None => None,
    };
    if let Some(p) = &args.grid {
        check_output_file(p, "--grid")?;
    }
    if let Some(p) = &args.out_npy {
        check_output_file(p, "--out-npy")?;
    }
    if let Some(d) = &args.outdir {
        check_outdir(d)?;
    }
    if let Some(p) = &args.latents {
        if !p.is_file() {
            bail!("latents file {} does not exist", p.display());
        }
    }

    let loaded = load_checkpoint(&args.checkpoint, args.config.as_deref(), &device)?;
    let spec = &loaded.spec;
    let (c, r) = (spec.img_channels(), spec.img_resolution());
    let label_dim = spec.label_dim();

    // Latents and seeds.
    let latents_file = match &args.latents {
        Some(p) => Some(latents_from_npy(p, [c, r, r], &device)?),
        None => None,
    };
    let seeds: Vec<u64> = match (&seeds_given, &latents_file) {
        (Some(s), Some(l)) => {
            let n = l.dim(0)?;
            if n != s.len() {
                bail!(
                    "--latents has {n} images but --seeds lists {} seeds",
                    s.len()
                );
            }
            s.clone()
        }
        (Some(s), None) => s.clone(),
        (None, Some(l)) => (0..l.dim(0)? as u64).collect(),
        (None, None) => (0..64).collect(),
    };
    let n = seeds.len();

    let labels = args.sampler.class_labels(label_dim, &seeds)?;
    print_network(&loaded);

    let mut pixels = Vec::new();
    let mut raw = Vec::new();
    let keep_raw = args.out_npy.is_some();
    let job = SamplingJob {
        loaded: &loaded,
        seeds: &seeds,
        labels: labels.as_deref(),
        cfg: &cfg,
        batch: args.batch,
        latents: latents_file.as_ref(),
        device: &device,
        guidance: args.sampler.guidance,
    };
    generate(&job, &mut |_, x| {
        pixels.push(to_uint8(&x)?);
        if keep_raw {
            raw.push(x);
        }
        Ok(())
    })?;

    // Outputs, only now that every batch succeeded; all of them or none (a full disk half
    // way leaves nothing behind).
    let pixels = Tensor::cat(&pixels, 0)?;
    let mut staged = StagedOutputs::new();
    if let Some(p) = &args.out_npy {
        save_npy_f32(&staged.stage(p), &Tensor::cat(&raw, 0)?)
            .with_context(|| format!("--out-npy {}", p.display()))?;
    }
    if let Some(p) = &args.grid {
        let cols = args
            .grid_cols
            .unwrap_or_else(|| (n as f64).sqrt().ceil() as usize);
        save_grid_png(&staged.stage(p), &pixels, cols)
            .with_context(|| format!("--grid {}", p.display()))?;
    }
    let images = match &args.outdir {
        Some(dir) => Some(StagedImages::write(dir, &seeds, &pixels, args.subdirs)?),
        None => None,
    };
    staged
        .commit()
        .context("cannot move the outputs into place")?;
    for p in [&args.out_npy, &args.grid].into_iter().flatten() {
        eprintln!("wrote {}", p.display());
    }
    if let (Some(images), Some(dir)) = (images, &args.outdir) {
        images.commit()?;
        eprintln!("wrote {n} images to {}", dir.display());
    }
    Ok(())
}
