//! `lossfloor diagnose`: a training run's loss set against the optimal loss J*(σ).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;

use crate::estimate::check_output_path;
use crate::plot::{save_plot, COLOURS};

/// Draw a training run's loss against the optimal loss J*(σ), per noise level and over time.
///
/// Reads RUN_DIR/stats.jsonl (one line per tick, written by `lossfloor train` when the config
/// has an [optimal_loss] curve). Left: the per-dimension x0 loss of each σ bin at one tick
/// (the last by default) beside J*(σ) (the paper's Fig. 2 view). Right: the gap
/// loss − J* over training, averaged over the low, middle and high thirds of the σ bins.
/// Also prints the gap per σ region at the chosen tick.
///
/// Example: lossfloor diagnose runs/fashion-mnist-quick --out gap.png
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct DiagnoseArgs {
    /// Run directory of `lossfloor train` (holds stats.jsonl)
    run_dir: PathBuf,
    /// Output plot (PNG)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Tick to draw on the left (default: the last)
    #[arg(long, value_name = "N")]
    tick: Option<u64>,
}

/// One σ bin of one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Bin {
    pub sigma: f64,
    pub loss: Option<f64>,
    pub jstar: Option<f64>,
}

/// One line of stats.jsonl, reduced to what the diagnosis needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub tick: u64,
    pub kimg: f64,
    pub bins: Vec<Bin>,
}

/// Reads stats.jsonl; a malformed line is an error naming the file and the line.
pub fn read_stats(path: &Path) -> Result<Vec<Tick>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (is this a run directory of `lossfloor train`?)",
            path.display()
        )
    })?;
    let mut ticks = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let num = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_f64)
                .with_context(|| format!("{}: no number {key:?}", at()))
        };
        let bins = v
            .get("bins")
            .and_then(serde_json::Value::as_array)
            .with_context(|| format!("{}: no \"bins\" array", at()))?
            .iter()
            .map(|b| {
                Ok(Bin {
                    sigma: b
                        .get("sigma")
                        .and_then(serde_json::Value::as_f64)
                        .with_context(|| format!("{}: a bin has no \"sigma\"", at()))?,
                    loss: b.get("loss").and_then(serde_json::Value::as_f64),
                    jstar: b.get("jstar").and_then(serde_json::Value::as_f64),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        ticks.push(Tick {
            tick: num("tick")? as u64,
            kimg: num("kimg")?,
            bins,
        });
    }
    if ticks.is_empty() {
        bail!(
            "{} has no ticks yet: train for at least one tick",
            path.display()
        );
    }
    Ok(ticks)
}

/// The three σ regions: the low, middle and high thirds of the bins (by index).
pub const REGIONS: [&str; 3] = ["low σ", "mid σ", "high σ"];

/// Mean gap (loss − J*) and σ range of each region at one tick; `None` where no bin of the
/// region has both a loss and a J*.
pub fn region_gaps(tick: &Tick) -> Vec<(String, Option<f64>)> {
    let k = tick.bins.len();
    (0..3)
        .map(|r| {
            let part = &tick.bins[r * k / 3..(r + 1) * k / 3];
            let gaps: Vec<f64> = part
                .iter()
                .filter_map(|b| Some(b.loss? - b.jstar?))
                .collect();
            let range = match (part.first(), part.last()) {
                (Some(a), Some(b)) => format!("{} ({:.3}–{:.3})", REGIONS[r], a.sigma, b.sigma),
                _ => REGIONS[r].to_string(),
            };
            let mean = (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64);
            (range, mean)
        })
        .collect()
}

pub fn run(args: DiagnoseArgs) -> Result<()> {
    check_output_path(&args.out, "--out")?;
    let stats = args.run_dir.join("stats.jsonl");
    let ticks = read_stats(&stats)?;
    if !ticks
        .iter()
        .any(|t| t.bins.iter().any(|b| b.jstar.is_some()))
    {
        bail!(
            "{} has no J* values: the run was trained without an [optimal_loss] curve \
             (compute one with `lossfloor estimate` and set [optimal_loss] curve)",
            stats.display()
        );
    }
    let shown = match args.tick {
        None => ticks.last().expect("non-empty"),
        Some(n) => ticks.iter().find(|t| t.tick == n).with_context(|| {
            format!(
                "--tick {n}: {} has ticks {}..={}",
                stats.display(),
                ticks[0].tick,
                ticks.last().expect("non-empty").tick
            )
        })?,
    };
    save_plot(
        &args.out,
        (1400, 600),
        Box::new(|px, size| draw(&ticks, shown, px, size)),
    )?;
    println!(
        "tick {} ({:.3} kimg): mean gap loss − J* per σ region",
        shown.tick, shown.kimg
    );
    for (name, gap) in region_gaps(shown) {
        match gap {
            Some(g) => println!("  {name:<28} {g:>12.4e}"),
            None => println!("  {name:<28} {:>12}", "no data"),
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn draw(
    ticks: &[Tick],
    shown: &Tick,
    pixels: &mut [u8],
    size: (u32, u32),
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(size.0 / 2);

    // Left: loss and J* per σ bin, log-log (values at or below the floor are drawn at it).
    let positive = shown
        .bins
        .iter()
        .flat_map(|b| [b.loss, b.jstar])
        .flatten()
        .filter(|v| *v > 0.0);
    let (y_lo, y_hi) = positive.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (y_lo, y_hi) = if y_hi > 0.0 {
        (y_lo.max(y_hi * 1e-6) * 0.5, y_hi * 2.0)
    } else {
        (1e-6, 1.0)
    };
    let s_lo = shown.bins.first().map_or(0.002, |b| b.sigma) * 0.8;
    let s_hi = shown.bins.last().map_or(80.0, |b| b.sigma) * 1.25;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!(
                "loss vs optimal loss per σ · tick {} ({:.1} kimg)",
                shown.tick, shown.kimg
            ),
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((s_lo..s_hi).log_scale(), (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("σ (log scale)")
        .y_desc("per-dimension x0 loss (log scale)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .x_label_formatter(&|v| format!("{v}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    let clamp = |v: f64| v.max(y_lo);
    let jstar: Vec<(f64, f64)> = shown
        .bins
        .iter()
        .filter_map(|b| Some((b.sigma, clamp(b.jstar?))))
        .collect();
    let loss: Vec<(f64, f64)> = shown
        .bins
        .iter()
        .filter_map(|b| Some((b.sigma, clamp(b.loss?))))
        .collect();
    let (c_j, c_l) = (COLOURS[0], COLOURS[1]);
    chart
        .draw_series(LineSeries::new(jstar.clone(), c_j.stroke_width(2)))?
        .label("optimal loss J*(σ)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c_j.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(loss.clone(), c_l.stroke_width(2)))?
        .label("training loss (mean over the tick)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c_l.stroke_width(2)));
    chart.draw_series(loss.iter().map(|&p| Circle::new(p, 3, c_l.filled())))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;

    // Right: mean gap per σ region over training.
    let series: Vec<Vec<(f64, f64)>> = (0..3)
        .map(|r| {
            ticks
                .iter()
                .filter_map(|t| Some((t.kimg, region_gaps(t)[r].1?)))
                .collect()
        })
        .collect();
    let all = series.iter().flatten().map(|p| p.1);
    let (g_lo, g_hi) = all.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = (g_hi - g_lo).max(1e-12) * 0.08;
    let k_hi = ticks.last().map_or(1.0, |t| t.kimg).max(1e-9);
    let mut chart = ChartBuilder::on(&right)
        .caption("gap loss − J* over training", ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..k_hi * 1.02, (g_lo - pad)..(g_hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("kimg (thousands of training images)")
        .y_desc("mean gap per bin")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    let names = region_gaps(shown);
    for (r, points) in series.into_iter().enumerate() {
        let c = COLOURS[(r + 2) % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(names[r].0.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(losses: &[Option<f64>], jstars: &[Option<f64>]) -> Tick {
        Tick {
            tick: 0,
            kimg: 0.0,
            bins: losses
                .iter()
                .zip(jstars)
                .enumerate()
                .map(|(i, (&loss, &jstar))| Bin {
                    sigma: i as f64 + 1.0,
                    loss,
                    jstar,
                })
                .collect(),
        }
    }

    #[test]
    fn region_gaps_average_each_third_and_skip_missing_bins() {
        let t = tick(
            &[Some(1.0), Some(2.0), None, Some(4.0), Some(5.0), Some(6.0)],
            &[Some(0.5), Some(1.0), Some(0.0), Some(1.0), None, Some(5.0)],
        );
        let g = region_gaps(&t);
        assert_eq!(g[0].1, Some(0.75)); // (0.5 + 1.0) / 2
        assert_eq!(g[1].1, Some(3.0)); // bin 2 has no loss, bin 3: 4 − 1
        assert_eq!(g[2].1, Some(1.0)); // bin 4 has no J*, bin 5: 6 − 5
        assert!(g[0].0.starts_with("low σ (1.000–2.000)"));
        let empty = tick(&[None, None, None], &[Some(1.0), None, Some(2.0)]);
        assert!(region_gaps(&empty).iter().all(|(_, v)| v.is_none()));
    }
}
