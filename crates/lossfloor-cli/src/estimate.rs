//! `lossfloor estimate`: the optimal-loss curve J*(σ) of a dataset.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lossfloor_comm::Communicator;
use lossfloor_core::fs::StagedOutputs;
use lossfloor_data::{load, DataSpec};
use lossfloor_optimal::{
    conditional_query_total, estimate_conditional_ranks, estimate_ranks, write_atomic,
    EstimateParams, Method, PerClassCurves,
};

use crate::plot::{check_font, plot_curves};
use lossfloor_optimal::sigmas::parse_sigmas;

/// Estimate the optimal loss J*(σ) of a dataset, per noise level, with error bars.
///
/// J*(σ) is the minimum achievable per-dimension x0 loss E‖D(x0 + σε; σ) − x0‖²/D of any
/// denoiser at noise level σ (VE / x0 coordinates, σ = EDM's σ). It is ≈0 below a critical
/// σ* and saturates at the data variance. Methods: `exact` (full dataset, the reference),
/// `cdol` (subset with corrected self-weight: fast, small bias), `dol`, `snis` (biased
/// baselines) and `gaussian` (closed form of a Gaussian with the data covariance).
///
/// Example: lossfloor estimate --data fashion-mnist --sigmas logspace:0.002:80:32 --method exact --queries 4096 --out curve.json --plot curve.png
///
/// Under `mpirun -np N` the ranks share the queries and rank 0 writes the same curve, bit for
/// bit, as one process (docs/distributed.md).
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct EstimateArgs {
    /// Dataset: cifar10:DIR | edm:ZIP_OR_DIR | imagenet64:DIR | idx:FILE | npy:FILE | fashion-mnist[:test]
    #[arg(long, value_name = "SPEC")]
    data: String,
    /// Noise levels: a list (0.01,0.1,1) or logspace:MIN:MAX:K
    #[arg(
        long,
        value_name = "LIST",
        default_value = "logspace:0.002:80:32",
        allow_hyphen_values = true
    )]
    sigmas: String,
    /// Estimator: exact | dol | cdol | snis | gaussian
    #[arg(long, default_value = "exact")]
    method: String,
    /// Monte-Carlo queries M per σ (every σ reuses the same M sources and unit noises)
    #[arg(long, value_name = "M", default_value_t = 4096)]
    queries: usize,
    /// Subset size L for dol / cdol / snis (default: min(2048, N−1))
    #[arg(long, value_name = "L")]
    subset: Option<usize>,
    /// cDOL's correction C ≥ 1: the source's kernel weight is divided by C (default 4N/L; inf = SNIS)
    #[arg(long, value_name = "C")]
    c: Option<f64>,
    /// Random seed: the result depends only on it, not on the thread count
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (default: all cores; at most 4 × the cores, and 1024)
    #[arg(long)]
    threads: Option<usize>,
    /// Add horizontally flipped copies of every image (estimate the floor of x-flip training)
    #[arg(long)]
    xflip: bool,
    /// Compute device: cpu, or cuda[:N] (exact method only; needs a binary built by
    /// scripts/build-cuda.sh). Same queries and result (to float32 rounding) as on the CPU.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: String,
    /// Use only the first N images of the dataset
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Class-conditional floor E_c J*(σ|c): each query's posterior runs over the images of its
    /// source's class only; classes weighted by frequency N_c/N, queries stratified by class
    /// (max(2, ⌈M·N_c/N⌉) each). Needs a dataset with labels.
    #[arg(long)]
    conditional: bool,
    /// With --conditional: also write each class's curve J*(σ|c) (JSON: classes[] of label,
    /// images, weight, curve)
    #[arg(long, value_name = "FILE", requires = "conditional")]
    per_class: Option<PathBuf>,
    /// Output curve file (JSON)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write the curve as CSV (sigma,loss,stderr,queries)
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Also draw the curve (PNG, log-σ axis, 95% error bars)
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

/// Fails early (before any long computation) if an output cannot be written there.
pub fn check_output_path(path: &Path, what: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    if !dir.is_dir() {
        bail!(
            "{what} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!(
            "{what} {}: is a folder, expected a file path",
            path.display()
        );
    }
    Ok(())
}

/// The most worker threads `--threads` accepts: 4 × the cores available (1024 when that
/// is unknown), and never more than 1024. Threads beyond the cores only add switching and
/// memory (each has its own stack and scratch), and creating 100 000 of them takes minutes.
pub fn max_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_mul(4))
        .unwrap_or(1024)
        .min(1024)
}

/// Refuses a `--threads` count of 0 or above [`max_threads`], before any thread is made.
pub fn check_threads(t: usize) -> Result<()> {
    if t == 0 {
        bail!("--threads must be at least 1");
    }
    let max = max_threads();
    if t > max {
        let cores = std::thread::available_parallelism()
            .map(|n| format!("{n} cores available"))
            .unwrap_or_else(|_| "core count unknown".into());
        bail!(
            "--threads {t} is more than {max} (4 × the cores, at most 1024; {cores}); \
             more threads than cores only slow the estimate down"
        );
    }
    Ok(())
}

/// Refuses a `--queries` count whose results could not fit in memory, before the data is
/// loaded or anything is allocated.
///
/// Every estimator keeps one f64 per query and σ until the end (the per-query values behind
/// the mean and its standard error), and gathers one σ's values at a time for the statistics:
/// `queries × (K + 1) × 8` bytes for K noise levels. Queries are drawn and processed in
/// tiles of 128–1024, so the data dimension adds only a bounded working set, not a per-query
/// cost. The count is refused when that exceeds the machine's total memory (`MemTotal`; see
/// `lossfloor_data::limits`): it could never succeed there, while anything below is left to
/// run (and is bounded by the memory that is actually free).
pub fn check_queries_memory(method: Method, queries: usize, n_sigmas: usize) -> Result<()> {
    if method == Method::Gaussian {
        return Ok(()); // closed form: no queries
    }
    let need = (queries as u128)
        .checked_mul(n_sigmas as u128 + 1)
        .and_then(|v| v.checked_mul(8));
    lossfloor_data::limits::check_memory(
        &format!("--queries {queries} (one 8-byte value per query and σ, {n_sigmas} σ)"),
        need,
    )
    .map_err(|m| anyhow::anyhow!("{m}"))
}

///
/// Under `mpirun -np N` the queries (exact) or batches (subset methods) are shared between
/// the ranks and the result is bit for bit one process's; rank 0 writes the outputs.
pub fn run(args: EstimateArgs, comm: std::rc::Rc<dyn Communicator>) -> Result<()> {
    let writer = comm.rank() == 0;
    let method: Method = args.method.parse()?;
    let sigmas = parse_sigmas(&args.sigmas)?;
    check_output_path(&args.out, "--out")?;
    if let Some(p) = &args.csv {
        check_output_path(p, "--csv")?;
    }
    if let Some(p) = &args.plot {
        check_output_path(p, "--plot")?;
        check_font()?;
    }
    if let Some(p) = &args.per_class {
        check_output_path(p, "--per-class")?;
    }
    check_queries_memory(method, args.queries, sigmas.len())?;
    if let Some(t) = args.threads {
        check_threads(t)?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("cannot start the worker threads")?;
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let device = crate::open_device_flag(&args.device)?;
    lossfloor_optimal::check_method_device(method, &device)?;

    let spec: DataSpec = args.data.parse()?;
    let t0 = Instant::now();
    let mut data = load(&spec)?;
    if let Some(n) = args.limit {
        data = data.take_first(n);
    }
    data = data.with_xflip(args.xflip);
    if writer {
        eprintln!(
            "loaded {} ({} images of {}, {} rows) in {:.1}s{}",
            spec,
            data.base_len(),
            data.shape(),
            data.len(),
            t0.elapsed().as_secs_f64(),
            if comm.size() > 1 {
                format!("; the queries are shared by {}", comm.describe())
            } else {
                String::new()
            }
        );
    }

    let params = EstimateParams {
        method,
        queries: args.queries,
        subset: args.subset,
        c: args.c,
        seed: args.seed,
    };
    params.resolve(data.len(), &sigmas)?;
    let labels = if args.conditional {
        Some(row_labels(&data, &spec)?)
    } else {
        None
    };
    let total = match (&labels, method) {
        (Some(l), Method::Gaussian) => lossfloor_optimal::class_rows(l).len() as u64,
        (_, Method::Gaussian) => 1,
        (Some(l), _) => conditional_query_total(l, args.queries) as u64,
        (None, _) => args.queries as u64,
    };
    // Each rank counts its own share; rank 0's bar stands for all.
    let total = total.div_ceil(comm.size() as u64);
    let bar = if writer {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    let bar = bar.with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} queries, {elapsed_precise} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("{method} × {} σ", sigmas.len()));
    let t1 = Instant::now();
    let progress = |k: usize| bar.inc(k as u64);
    let (mut curve, per_class) = match &labels {
        Some(labels) => {
            let (curve, per_class) = estimate_conditional_ranks(
                comm.as_ref(),
                &device,
                &data,
                labels,
                &spec.to_string(),
                &sigmas,
                &params,
                &progress,
            )?;
            (curve, Some(per_class))
        }
        None => (
            estimate_ranks(
                comm.as_ref(),
                &device,
                &data,
                &spec.to_string(),
                &sigmas,
                &params,
                &progress,
            )?,
            None,
        ),
    };
    // What a trainer checks the curve against (lossfloor_train::curve_match).
    curve.dataset.xflip = args.xflip;
    curve.dataset.limit = args.limit;
    bar.finish_and_clear();
    if !writer {
        return Ok(());
    }
    eprintln!(
        "estimated {} points in {:.2}s",
        curve.points.len(),
        t1.elapsed().as_secs_f64()
    );

    // All outputs or none: each is written to a temporary sibling, and all are renamed into
    // place only once every one is complete.
    let mut staged = StagedOutputs::new();
    curve
        .save(&staged.stage(&args.out))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if let Some(p) = &args.csv {
        write_atomic(&staged.stage(p), curve.to_csv().as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let (Some(p), Some(classes)) = (&args.per_class, per_class) {
        let mut file = PerClassCurves { classes };
        for c in &mut file.classes {
            c.curve.dataset.xflip = args.xflip;
            c.curve.dataset.limit = args.limit;
        }
        let text = serde_json::to_string_pretty(&file)?;
        write_atomic(&staged.stage(p), text.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &args.plot {
        plot_curves(&[&curve], &staged.stage(p))
            .with_context(|| format!("--plot {}", p.display()))?;
    }
    staged
        .commit()
        .context("cannot move the outputs into place")?;
    print_table(&curve);
    Ok(())
}

/// The label of every row (x-flipped copies share their image's label), or a clear error
/// when the dataset has none.
fn row_labels(data: &lossfloor_data::Dataset, spec: &DataSpec) -> Result<Vec<u32>> {
    if data.labels().is_none() {
        bail!(
            "--conditional: the dataset {spec} has no class labels; the class-conditional floor \
             needs one label per image (cifar10, fashion-mnist, imagenet64, or edm with labels in dataset.json)"
        );
    }
    Ok((0..data.len())
        .map(|i| data.label(i).expect("labels present"))
        .collect())
}

/// Prints the curve as a table, with σ* and the data variance.
pub fn print_table(curve: &lossfloor_optimal::Curve) {
    println!(
        "{:>12} {:>14} {:>12} {:>8}",
        "sigma", "J*(sigma)", "stderr", "queries"
    );
    for p in &curve.points {
        println!(
            "{:>12.5} {:>14.6e} {:>12.3e} {:>8}",
            p.sigma, p.loss, p.stderr, p.queries
        );
    }
    if curve.dataset.conditional {
        println!("class-conditional floor E_c J*(σ|c), classes weighted by frequency");
    }
    if let Some(v) = curve.data_variance {
        println!("data variance per dimension (J* as σ → ∞): {v:.6}");
    }
    match curve.sigma_star(0.01) {
        Some(s) => println!("σ* (largest σ with J* ≤ 1% of the data variance): {s:.4}"),
        None => println!("σ*: below the smallest σ of the grid"),
    }
}
