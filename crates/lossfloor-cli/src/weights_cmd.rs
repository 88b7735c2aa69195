//! `lossfloor weights RUN_DIR… --out weights.png`: the effective weight per noise level of
//! each run's recipe (`lossfloor_train::effective_weight`), drawn together, with the share
//! each σ* region gets.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lossfloor_train::config::{Config, LossWeight, ScheduleKind};
use lossfloor_train::effective_weight::{floor_share, ln_grid, mass_between, Recipe};
use lossfloor_train::schedule::{AdaptiveSchedule, OptimalWeight};
use plotters::prelude::*;

use crate::plot::{save_plot, COLOURS};

/// Draw the effective weight ρ(ln σ̂) ∝ q(ln σ̂)·w(σ̂) of training runs.
///
/// q is the run's sampling density of ln σ̂ and w its loss weight; for the optimal-loss
/// schedule q uses the histogram p(σ̂) logged at the run's last tick (stats.jsonl,
/// schedule_probs). Each curve integrates to 1 over ln σ̂ in [0.002, 80]. The table gives
/// the share of ρ, and of ρ·J* (the part of the loss floor each region is weighted
/// with), below σ*/2, around σ* (σ*/2–2σ*) and above 2σ*.
#[derive(clap::Args, Debug)]
pub struct WeightsArgs {
    /// Run directories of `lossfloor train` or `lossfloor study` (config.toml, stats.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output plot (PNG).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

struct RunWeights {
    label: String,
    rho: Vec<f64>,
    sigma_star: f64,
    shares: [f64; 3],
    floor_shares: [f64; 3],
}

/// The schedule histogram logged at the last tick of `run`.
fn last_probs(run: &Path) -> Result<Option<Vec<f64>>> {
    let path = run.join(lossfloor_train::train::STATS_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("{}: the last line is not JSON", path.display()))?;
    Ok(v["schedule_probs"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect::<Vec<_>>()))
}

fn run_weights(run: &Path, grid: &[f64]) -> Result<RunWeights> {
    let cfg = Config::load(&run.join("config.toml"), &[])?;
    let process = cfg.precond.build()?;
    let curve = lossfloor_train::floor_mix::load_floor(&cfg, run, None)
        .with_context(|| format!("{}: the run's curve", run.display()))?
        .ok_or_else(|| anyhow::anyhow!("{}: the run has no optimal-loss curve", run.display()))?;
    let sigma_star = curve.sigma_star(0.01).unwrap_or(curve.points[0].sigma);
    let weight = OptimalWeight::new(&cfg.schedule, curve.clone())?;
    let mut schedule = AdaptiveSchedule::new(&cfg.schedule, weight.clone());
    let recipe = match (cfg.schedule.kind, cfg.loss_weight()) {
        (ScheduleKind::OptimalLoss, _) => {
            let probs = last_probs(run)?.unwrap_or_default();
            if probs.len() != cfg.schedule.bins {
                bail!(
                    "{}: no schedule histogram of {} bins at the last tick",
                    run.display(),
                    cfg.schedule.bins
                );
            }
            schedule.state.probs = probs;
            Recipe::Adaptive {
                native: process.noise(),
                schedule: &schedule,
            }
        }
        (ScheduleKind::Native, LossWeight::OptimalLoss) => Recipe::NativeWithOptimalWeight {
            native: process.noise(),
            weight: &weight,
        },
        _ => Recipe::Native(process.as_ref()),
    };
    let rho = recipe.density_of_weight(grid);
    let fl = floor_share(grid, &rho, |s| curve.loss_at(s).max(0.0));
    let bounds = [
        (0.0, 0.5 * sigma_star),
        (0.5 * sigma_star, 2.0 * sigma_star),
        (2.0 * sigma_star, f64::INFINITY),
    ];
    let share = |f: &[f64]| bounds.map(|(lo, hi)| mass_between(grid, f, lo.max(1e-300), hi));
    let label = run
        .components()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    Ok(RunWeights {
        label,
        shares: share(&rho),
        floor_shares: share(&fl),
        rho,
        sigma_star,
    })
}

/// Runs `lossfloor weights`.
pub fn run(args: WeightsArgs) -> Result<()> {
    crate::estimate::check_output_path(&args.out, "--out")?;
    let grid = ln_grid(0.002, 80.0, 801);
    let runs: Vec<RunWeights> = args
        .runs
        .iter()
        .map(|r| run_weights(r, &grid))
        .collect::<Result<_>>()?;
    println!(
        "{:<36} {:>8} | {:>22} | {:>22}",
        "run", "σ*", "share of ρ: below/around/above", "share of ρ·J*: b/a/a"
    );
    for r in &runs {
        println!(
            "{:<36} {:>8.3} | {:>6.3} {:>6.3} {:>6.3}   | {:>6.3} {:>6.3} {:>6.3}",
            r.label,
            r.sigma_star,
            r.shares[0],
            r.shares[1],
            r.shares[2],
            r.floor_shares[0],
            r.floor_shares[1],
            r.floor_shares[2]
        );
    }
    let sigma_star = runs.first().map_or(1.0, |r| r.sigma_star);
    save_plot(
        &args.out,
        (960, 640),
        Box::new(move |px, size| {
            let root = BitMapBackend::with_buffer(px, size).into_drawing_area();
            root.fill(&WHITE)?;
            let y_max = runs
                .iter()
                .flat_map(|r| r.rho.iter())
                .cloned()
                .fold(1e-6, f64::max)
                * 2.0;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "Effective weight ρ(ln σ̂) ∝ q(ln σ̂)·w(σ̂) (each integrates to 1)",
                    ("sans-serif", 20),
                )
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(72)
                .build_cartesian_2d(
                    (0.002f64..80.0).log_scale(),
                    (y_max * 1e-6..y_max).log_scale(),
                )?;
            chart
                .configure_mesh()
                .x_desc("σ̂ (log scale)")
                .y_desc("ρ per unit ln σ̂ (log scale)")
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 17))
                .draw()?;
            for (i, r) in runs.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                chart
                    .draw_series(LineSeries::new(
                        grid.iter()
                            .zip(&r.rho)
                            .map(|(l, v)| (l.exp(), v.max(y_max * 1e-6))),
                        colour.stroke_width(2),
                    ))?
                    .label(r.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(sigma_star, y_max * 1e-6), (sigma_star, y_max)],
                    BLACK.mix(0.5).stroke_width(1),
                )))?
                .label(format!("σ* = {sigma_star:.3}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .position(SeriesLabelPosition::LowerLeft)
                .draw()?;
            root.present()?;
            Ok(())
        }),
    )?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
