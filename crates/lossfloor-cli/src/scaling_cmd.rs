//! `lossfloor scaling`: the paper's scaling-law analysis over several runs: loss against
//! training compute per σ̂ and in total, fitted with and without the optimal-loss floor.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lossfloor_optimal::Curve;
use lossfloor_scaling::{
    bootstrap, bootstrap_t_loglog, fit_power, fit_power_above_floor, fit_power_free_floor,
    frontier, Interval, LogLogFit, Point, Space,
};
use lossfloor_train::config::Config;

use crate::diagnose::{read_eval, Eval};
use plotters::prelude::*;
use serde_json::{json, Value};

/// Scaling-law fits of loss against training compute, with and without the floor J*.
///
/// For each run (a `lossfloor train` directory) the training compute after k images is
/// F = 3 × forward multiply-adds per image × k (lossfloor_nets::flops; one multiply-add
/// counts as one FLOP, as in the DiT paper). Per chosen σ̂ the losses are the run's
/// evaluations (eval.jsonl: the network without dropout on fixed queries, on the curve's
/// σ̂ grid); with --total, the training loss of each tick (stats.jsonl: the recipe's
/// weighted objective) against the recipe's total J*. The points of all runs are reduced
/// to their compute-optimal frontier (the lowest loss reached with at most F), and three
/// laws are fitted in log-log space:
///   plain   J = β·F^α
///   floor   J − J* = β·F^α        (the paper's; J* from the runs' curve)
///   free    J = β·F^α + c         (c fitted: does it land on J*?)
/// each with R², Pearson's ρ and residual-bootstrap 95% intervals (studentised for β and
/// α of the first two).
///
/// Example: lossfloor scaling runs/scaling/c* --total --out fit.json --plot fit.png
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ScalingArgs {
    /// Run directories (each with config.toml and eval.jsonl / stats.jsonl)
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// σ̂ values to fit (the nearest points of the curve's grid); default σ*·{1/4, 1, 4, 16}
    #[arg(long, value_delimiter = ',', value_name = "S[,S…]")]
    sigmas: Vec<f64>,
    /// Also fit the total training loss against the recipe's total J*
    #[arg(long)]
    total: bool,
    /// Which network's evaluation to use per σ̂
    #[arg(long, value_enum, default_value_t = Which::Raw)]
    network: Which,
    /// Bootstrap resamples
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
    /// Fits as JSON
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Loss against compute per run, the frontier and the fits, one panel per series
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Raw,
    Ema,
}

/// One run's points of one series.
struct RunSeries {
    name: String,
    points: Vec<Point>,
}

/// A series to fit: its label, J*, and every run's points.
struct Series {
    label: String,
    sigma: Option<f64>,
    jstar: f64,
    runs: Vec<RunSeries>,
}

/// A run as read from its directory.
struct Run {
    name: String,
    forward_macs: u64,
    /// The evaluations, in order (`diagnose`'s reader of eval.jsonl).
    evals: Vec<Eval>,
    /// Per tick: (kimg, training loss).
    ticks: Vec<(f64, f64)>,
    config: Config,
}

pub fn run(args: ScalingArgs) -> Result<()> {
    crate::estimate::check_output_path(&args.out, "--out")?;
    if let Some(p) = &args.plot {
        crate::estimate::check_output_path(p, "--plot")?;
    }
    if args.resamples < 100 {
        bail!(
            "--resamples {} is too few for 95% intervals (at least 100)",
            args.resamples
        );
    }
    if args.sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("--sigmas must be positive numbers");
    }
    let runs: Vec<Run> = args
        .runs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<_>>()?;
    let series = build_series(&runs, &args)?;
    let mut out = Vec::new();
    for s in &series {
        let all: Vec<Point> = s.runs.iter().flat_map(|r| r.points.clone()).collect();
        let front = frontier(&all);
        let fits = match fit_series(&front, s.jstar, args.resamples) {
            Ok(f) => {
                print_fits(s, &front, &f);
                f
            }
            Err(e) => {
                // One series without enough points does not stop the others.
                println!("{}: not fitted: {e:#}", s.label);
                json!({ "error": format!("{e:#}") })
            }
        };
        out.push(json!({
            "series": s.label,
            "sigma": s.sigma,
            "jstar": s.jstar,
            "points": all.len(),
            "frontier": front,
            "fits": fits,
        }));
    }
    let doc = json!({
        "runs": runs.iter().map(|r| json!({
            "run": r.name,
            "forward_flops_per_image": r.forward_macs,
        })).collect::<Vec<_>>(),
        "convention": "F = 3 x forward multiply-adds per image x images; one multiply-add = one FLOP",
        "reduction": "compute-optimal frontier over all runs' points",
        "network": match args.network { Which::Raw => "raw", Which::Ema => "ema" },
        "series": out,
    });
    lossfloor_optimal::write_atomic(&args.out, serde_json::to_string_pretty(&doc)?.as_bytes())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    if let Some(p) = &args.plot {
        draw(&series, &out, p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Reads a run's config, evaluations and ticks.
fn read_run(dir: &Path) -> Result<Run> {
    let cfg_path = dir.join("config.toml");
    if !cfg_path.is_file() {
        bail!("{}: not a run directory (no config.toml)", dir.display());
    }
    let config = Config::load(&cfg_path, &[])?;
    let forward_macs = lossfloor_nets::flops::forward_macs(&config.effective_network().spec())
        .with_context(|| format!("{}: counting the network's FLOPs", cfg_path.display()))?;
    let evals = read_eval(&dir.join(lossfloor_train::train::EVAL_FILE))?;
    let ticks = read_jsonl(&dir.join(lossfloor_train::train::STATS_FILE))?
        .into_iter()
        .filter_map(|v| Some((v["kimg"].as_f64()?, v["loss"].as_f64()?)))
        .collect();
    Ok(Run {
        name: dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
        forward_macs,
        evals,
        ticks,
        config,
    })
}

/// The JSON lines of `path` (none if it does not exist).
fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(k, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {} is not JSON", path.display(), k + 1))
        })
        .collect()
}

/// Training compute of a run after `kimg` thousand images.
fn flops(run: &Run, kimg: f64) -> f64 {
    lossfloor_nets::flops::training_macs(run.forward_macs, (kimg * 1000.0).round() as u64)
}

/// The series: one per chosen σ̂ (from the evaluations) and the total (from the ticks).
fn build_series(runs: &[Run], args: &ScalingArgs) -> Result<Vec<Series>> {
    let mut out = Vec::new();
    let with_evals: Vec<&Run> = runs.iter().filter(|r| !r.evals.is_empty()).collect();
    if let Some(first) = with_evals.first() {
        let grid = &first.evals[0].sigma;
        for r in &with_evals {
            if r.evals.iter().any(|e| {
                e.sigma.len() != grid.len()
                    || e.sigma
                        .iter()
                        .zip(grid)
                        .any(|(a, b)| (a / b - 1.0).abs() > 1e-9)
            }) {
                bail!(
                    "runs {} and {} were evaluated on different σ̂ grids (different curves)",
                    first.name,
                    r.name
                );
            }
        }
        let jstar = &first.evals[0].jstar;
        let wanted: Vec<f64> = if args.sigmas.is_empty() {
            let sigma_star = first.evals[0].sigma_star.with_context(|| {
                format!(
                    "{}: its evaluations record no σ*; pass --sigmas",
                    first.name
                )
            })?;
            [0.25, 1.0, 4.0, 16.0]
                .iter()
                .map(|m| m * sigma_star)
                .collect()
        } else {
            args.sigmas.clone()
        };
        let mut idx: Vec<usize> = wanted
            .iter()
            .map(|s| {
                (0..grid.len())
                    .min_by(|&a, &b| {
                        (grid[a].ln() - s.ln())
                            .abs()
                            .total_cmp(&(grid[b].ln() - s.ln()).abs())
                    })
                    .unwrap_or(0)
            })
            .collect();
        idx.sort_unstable();
        idx.dedup();
        for i in idx {
            let jstar = jstar[i].with_context(|| {
                format!("{}: no J* at σ̂ {} in its evaluations", first.name, grid[i])
            })?;
            out.push(Series {
                label: format!("sigma {:.3}", grid[i]),
                sigma: Some(grid[i]),
                jstar,
                runs: with_evals
                    .iter()
                    .map(|r| RunSeries {
                        name: r.name.clone(),
                        points: r
                            .evals
                            .iter()
                            .filter_map(|e| {
                                let series = match args.network {
                                    Which::Raw => &e.raw,
                                    Which::Ema => &e.ema,
                                };
                                Some(Point {
                                    flops: flops(r, e.kimg),
                                    loss: series.loss[i]?,
                                })
                            })
                            .collect(),
                    })
                    .collect(),
            });
        }
    } else if !args.total {
        bail!("no run has evaluations (eval.jsonl; [eval] ticks > 0); pass --total to fit the training loss");
    }
    if args.total {
        let first = &runs[0];
        let curve_path = first
            .config
            .optimal_loss
            .curve
            .clone()
            .context("--total needs the runs' optimal_loss.curve for the total J*")?;
        let curve = Curve::load(&curve_path)
            .with_context(|| format!("{}: the runs' curve", curve_path.display()))?;
        let process = first.config.precond.build()?;
        let jstar = lossfloor_core::total_weighted_loss(process.as_ref(), &|s| curve.loss_at(s));
        for r in runs {
            if r.config.precond != first.config.precond
                || r.config.loss_weight() != first.config.loss_weight()
            {
                bail!(
                    "runs {} and {} train different objectives; --total needs one",
                    first.name,
                    r.name
                );
            }
        }
        out.push(Series {
            label: "total".into(),
            sigma: None,
            jstar,
            runs: runs
                .iter()
                .map(|r| RunSeries {
                    name: r.name.clone(),
                    points: r
                        .ticks
                        .iter()
                        .map(|&(kimg, loss)| Point {
                            flops: flops(r, kimg),
                            loss,
                        })
                        .collect(),
                })
                .collect(),
        });
    }
    Ok(out)
}

/// A fit and its intervals as JSON.
fn fit_json(fit: &LogLogFit, ci: Option<[Interval; 2]>, r2_rho: Option<Vec<Interval>>) -> Value {
    json!({
        "beta": fit.beta, "alpha": fit.alpha, "r2": fit.r2, "rho": fit.rho, "n": fit.n,
        "beta_ci": ci.map(|c| [c[0].lo, c[0].hi]),
        "alpha_ci": ci.map(|c| [c[1].lo, c[1].hi]),
        "r2_ci": r2_rho.as_ref().map(|c| [c[0].lo, c[0].hi]),
        "rho_ci": r2_rho.as_ref().map(|c| [c[1].lo, c[1].hi]),
    })
}

/// The three fits of one series' frontier, as JSON.
fn fit_series(front: &[Point], jstar: f64, resamples: usize) -> Result<Value> {
    if front.len() < 4 {
        bail!("only {} frontier points; need at least 4", front.len());
    }
    let r2_rho = |f: LogLogFit| Some(vec![f.r2, f.rho]);
    let plain = fit_power(front).context("the plain fit failed")?;
    let curve_plain = |f: f64| plain.beta * f.powf(plain.alpha);
    let plain_json = fit_json(
        &plain,
        bootstrap_t_loglog(front, &plain, Space::Log, resamples, 1, fit_power),
        bootstrap(front, curve_plain, Space::Log, 2, resamples, 2, |s| {
            fit_power(s).and_then(r2_rho)
        }),
    );
    let (floor, dropped) = fit_power_above_floor(front, jstar);
    let floor_json = match floor {
        Some(f) => {
            let curve = |x: f64| jstar + f.beta * x.powf(f.alpha);
            let mut v = fit_json(
                &f,
                bootstrap_t_loglog(front, &f, Space::LogAbove(jstar), resamples, 3, |s| {
                    fit_power_above_floor(s, jstar).0
                }),
                bootstrap(front, curve, Space::LogAbove(jstar), 2, resamples, 4, |s| {
                    fit_power_above_floor(s, jstar).0.and_then(r2_rho)
                }),
            );
            v["dropped_at_or_below_floor"] = json!(dropped);
            v
        }
        None => json!({ "error": "too few points above J*", "dropped_at_or_below_floor": dropped }),
    };
    let free_json = match fit_power_free_floor(front) {
        Some(f) => {
            let curve = |x: f64| f.power.beta * x.powf(f.power.alpha) + f.c;
            let ci = bootstrap(front, curve, Space::Log, 3, resamples, 5, |s| {
                fit_power_free_floor(s).map(|g| vec![g.power.beta, g.power.alpha, g.c, g.r2_total])
            });
            let pair = |j: usize| ci.as_ref().map(|c| [c[j].lo, c[j].hi]);
            json!({
                "beta": f.power.beta, "alpha": f.power.alpha, "c": f.c,
                "r2": f.r2_total, "r2_loglog_of_j_minus_c": f.power.r2, "rho": f.power.rho,
                "beta_ci": pair(0), "alpha_ci": pair(1), "c_ci": pair(2), "r2_ci": pair(3),
                "c_over_jstar": if jstar > 0.0 { Some(f.c / jstar) } else { None },
            })
        }
        None => json!({ "error": "the free-offset fit failed" }),
    };
    Ok(json!({ "plain": plain_json, "floor": floor_json, "free": free_json }))
}

fn print_fits(s: &Series, front: &[Point], fits: &Value) {
    println!(
        "{} (J* = {:.4e}, {} frontier points)",
        s.label,
        s.jstar,
        front.len()
    );
    let ci = |v: &Value| match v.as_array() {
        Some(a) if a.len() == 2 => format!(
            "[{:.4}, {:.4}]",
            a[0].as_f64().unwrap_or(f64::NAN),
            a[1].as_f64().unwrap_or(f64::NAN)
        ),
        _ => "-".into(),
    };
    for (name, law) in [
        ("plain", "J = bF^a"),
        ("floor", "J - J* = bF^a"),
        ("free", "J = bF^a + c"),
    ] {
        let f = &fits[name];
        if let Some(e) = f["error"].as_str() {
            println!("  {name:<6} {law:<14} {e}");
            continue;
        }
        let num = |k: &str| f[k].as_f64().unwrap_or(f64::NAN);
        print!(
            "  {name:<6} {law:<14} a {:.4} {}  b {:.4e}  R2 {:.4} {}  rho {:.4}",
            num("alpha"),
            ci(&f["alpha_ci"]),
            num("beta"),
            num("r2"),
            ci(&f["r2_ci"]),
            num("rho"),
        );
        if name == "free" {
            print!(
                "  c {:.4e} {} (c/J* {:.3})",
                num("c"),
                ci(&f["c_ci"]),
                num("c_over_jstar")
            );
        }
        println!();
    }
}

/// One log-log panel per series: each run's loss against compute, the frontier, the plain
/// and floor fits, and J*.
fn draw(series: &[Series], fits: &[Value], out: &Path) -> Result<()> {
    let cols = series.len().min(3);
    let rows = series.len().div_ceil(cols);
    let size = (460 * cols as u32, 380 * rows as u32);
    crate::plot::save_plot(
        out,
        size,
        Box::new(move |pixels, size| {
            let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
            root.fill(&WHITE)?;
            let panels = root.split_evenly((rows, cols));
            for ((s, fit), area) in series.iter().zip(fits).zip(panels) {
                let pts: Vec<&Point> = s.runs.iter().flat_map(|r| r.points.iter()).collect();
                let x_lo = pts.iter().map(|p| p.flops).fold(f64::INFINITY, f64::min);
                let x_hi = pts.iter().map(|p| p.flops).fold(0.0, f64::max);
                let y_hi = pts.iter().map(|p| p.loss).fold(0.0, f64::max) * 1.2;
                let loss_lo = pts.iter().map(|p| p.loss).fold(f64::INFINITY, f64::min);
                // J* is drawn when it is within a decade of the losses; far below them
                // (small σ̂) it would squash the curves into a line.
                let y_lo = if s.jstar > 0.1 * loss_lo {
                    s.jstar.min(loss_lo) * 0.8
                } else {
                    loss_lo * 0.8
                };
                let mut chart = ChartBuilder::on(&area)
                    .caption(&s.label, ("sans-serif", 16))
                    .margin(8)
                    .x_label_area_size(30)
                    .y_label_area_size(56)
                    .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
                chart
                    .configure_mesh()
                    .light_line_style(WHITE)
                    .x_labels(4)
                    .y_labels(6)
                    .x_desc("training FLOPs")
                    .y_desc("loss")
                    .x_label_formatter(&|v| format!("{v:.0e}"))
                    .y_label_formatter(&|v| format!("{v:.2e}"))
                    .draw()?;
                for (k, r) in s.runs.iter().enumerate() {
                    let color = Palette99::pick(k).to_rgba();
                    chart
                        .draw_series(LineSeries::new(
                            r.points.iter().map(|p| (p.flops, p.loss)),
                            color.stroke_width(1),
                        ))?
                        .label(&r.name)
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color));
                }
                let xs: Vec<f64> = (0..=40)
                    .map(|i| (x_lo.ln() + (x_hi.ln() - x_lo.ln()) * i as f64 / 40.0).exp())
                    .collect();
                let law = |name: &str, floor: f64| -> Option<Vec<(f64, f64)>> {
                    let b = fit["fits"][name]["beta"].as_f64()?;
                    let a = fit["fits"][name]["alpha"].as_f64()?;
                    Some(xs.iter().map(|&x| (x, floor + b * x.powf(a))).collect())
                };
                if let Some(l) = law("plain", 0.0) {
                    chart
                        .draw_series(LineSeries::new(l, BLACK.stroke_width(2)))?
                        .label("J = bF^a")
                        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK));
                }
                if let Some(l) = law("floor", s.jstar) {
                    chart
                        .draw_series(LineSeries::new(l, RED.stroke_width(2)))?
                        .label("J = J* + bF^a")
                        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RED));
                }
                if s.jstar > y_lo {
                    chart.draw_series(LineSeries::new(
                        [(x_lo, s.jstar), (x_hi, s.jstar)],
                        RED.mix(0.5).stroke_width(1),
                    ))?;
                }
                let front: Vec<(f64, f64)> = fit["frontier"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| Some((p["flops"].as_f64()?, p["loss"].as_f64()?)))
                            .collect()
                    })
                    .unwrap_or_default();
                chart.draw_series(front.into_iter().map(|p| Circle::new(p, 3, BLACK.filled())))?;
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 11))
                    .draw()?;
            }
            root.present()?;
            Ok(())
        }),
    )
}
