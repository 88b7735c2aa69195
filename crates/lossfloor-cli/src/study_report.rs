//! The reports of `lossfloor study`: `results.json`, `results.md` (FID per arm and point,
//! mean and min–max over seeds, and the gap per σ̂ region) and `fid.png`.

use std::path::Path;

use anyhow::{Context, Result};
use lossfloor_optimal::write_atomic;
use plotters::prelude::*;

use crate::plot::{save_plot, COLOURS};
use crate::study::{fid_summary, read_points, ArmPoints, StudySpec};

/// Reads every evaluation on disk and writes the three reports into `out`.
pub fn write_reports(spec: &StudySpec, base: &Path, out: &Path, seeds: &[u64]) -> Result<()> {
    // Report every arm of the file (not only those run this time) with whatever seeds
    // have evaluations on disk.
    let mut all: ArmPoints = Default::default();
    let mut seeds_on_disk: Vec<u64> = seeds.to_vec();
    for s in spec.seeds.iter() {
        if !seeds_on_disk.contains(s) {
            seeds_on_disk.push(*s);
        }
    }
    let runs_dir = out.join("runs");
    for arm in &spec.arms {
        // Any seed-N folder of the arm counts (a --seeds run may have added seeds).
        let mut arm_seeds = seeds_on_disk.clone();
        if let Ok(rd) = std::fs::read_dir(runs_dir.join(&arm.name)) {
            for e in rd.flatten() {
                if let Some(n) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("seed-"))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    if !arm_seeds.contains(&n) {
                        arm_seeds.push(n);
                    }
                }
            }
        }
        arm_seeds.sort();
        let mut runs = Vec::new();
        for s in arm_seeds {
            let pts = read_points(out, &arm.name, s, &spec.eval_kimg)?;
            if !pts.is_empty() {
                runs.push((s, pts));
            }
        }
        all.insert(arm.name.clone(), runs);
    }
    let json = serde_json::json!({
        "study": spec.name,
        "base_config": base.display().to_string(),
        "eval_kimg": spec.eval_kimg,
        "fid": spec.fid,
        "curve": spec.curve,
        "arms": spec.arms.iter().map(|a| serde_json::json!({
            "name": a.name,
            "overrides": a.set,
            "runs": all[&a.name].iter().map(|(seed, pts)| serde_json::json!({
                "seed": seed,
                "points": pts,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let path = out.join("results.json");
    write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    let md = markdown(spec, &all);
    let path = out.join("results.md");
    write_atomic(&path, md.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    let path = out.join("fid.png");
    plot_fid(spec, &all, &path)?;
    println!(
        "wrote {}, {} and {}",
        out.join("results.json").display(),
        out.join("results.md").display(),
        path.display()
    );
    Ok(())
}

/// The markdown tables: FID (mean, min–max, seeds) per arm and point, and the EMA gap
/// per region at the last point (mean over seeds).
pub fn markdown(spec: &StudySpec, all: &ArmPoints) -> String {
    let mut s = format!(
        "# Study {}\n\nFID-{} (EDM Heun, {} steps; reference: first {} training images) \
         per arm and evaluation point: mean over seeds, [min–max], (seeds).\n\n| arm |",
        spec.name, spec.fid.images, spec.fid.steps, spec.fid.ref_images
    );
    for k in &spec.eval_kimg {
        s.push_str(&format!(" {k} kimg |"));
    }
    s.push_str("\n|---|");
    for _ in &spec.eval_kimg {
        s.push_str("---|");
    }
    s.push('\n');
    for arm in &spec.arms {
        let pts: Vec<_> = all[&arm.name].iter().map(|(_, p)| p.clone()).collect();
        s.push_str(&format!("| {} |", arm.name));
        for cell in fid_summary(&pts, &spec.eval_kimg) {
            match cell {
                Some((m, lo, hi, n)) => s.push_str(&format!(" {m:.2} [{lo:.2}–{hi:.2}] ({n}) |")),
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    let last = *spec.eval_kimg.last().unwrap_or(&0.0);
    s.push_str(&format!(
        "\nEMA gap Ĵ − J* per σ̂ region at {last} kimg (evaluator: no dropout, fixed queries; \
         mean over seeds; below: σ̂ < σ*/2, around: σ*/2–2σ*, above: > 2σ*).\n\n\
         | arm | below | around | above |\n|---|---|---|---|\n"
    ));
    for arm in &spec.arms {
        s.push_str(&format!("| {} |", arm.name));
        for r in ["below", "around", "above"] {
            let g: Vec<f64> = all[&arm.name]
                .iter()
                .flat_map(|(_, p)| p.iter().filter(|q| q.target_kimg == last))
                .filter_map(|p| p.gap_regions[r]["gap"].as_f64())
                .collect();
            if g.is_empty() {
                s.push_str(" – |");
            } else {
                s.push_str(&format!(
                    " {:.3e} |",
                    g.iter().sum::<f64>() / g.len() as f64
                ));
            }
        }
        s.push('\n');
    }
    s
}

/// (kimg, mean FID, min, max) of one arm at one point.
type FidPoint = (f64, f64, f64, f64);

/// FID against kimg per arm: the mean over seeds as a line, the min–max as a bar.
fn plot_fid(spec: &StudySpec, all: &ArmPoints, out: &Path) -> Result<()> {
    let series: Vec<(String, Vec<FidPoint>)> = spec
        .arms
        .iter()
        .map(|a| {
            let pts: Vec<_> = all[&a.name].iter().map(|(_, p)| p.clone()).collect();
            let v = fid_summary(&pts, &spec.eval_kimg)
                .into_iter()
                .zip(&spec.eval_kimg)
                .filter_map(|(c, &k)| c.map(|(m, lo, hi, _)| (k, m, lo, hi)))
                .collect();
            (a.name.clone(), v)
        })
        .collect();
    let title = format!(
        "{}: FID-{} against training images",
        spec.name, spec.fid.images
    );
    save_plot(
        out,
        (960, 640),
        Box::new(move |px, size| {
            let root = BitMapBackend::with_buffer(px, size).into_drawing_area();
            root.fill(&WHITE)?;
            let all_pts = series.iter().flat_map(|s| s.1.iter());
            let (mut y_lo, mut y_hi) = (f64::INFINITY, 0.0f64);
            for p in all_pts {
                y_lo = y_lo.min(p.2);
                y_hi = y_hi.max(p.3);
            }
            if !y_lo.is_finite() {
                (y_lo, y_hi) = (0.0, 1.0);
            }
            let pad = 0.08 * (y_hi - y_lo).max(1e-3);
            let k_max = spec.eval_kimg.last().copied().unwrap_or(1.0);
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 22))
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(72)
                .build_cartesian_2d(0.0..k_max * 1.05, (y_lo - pad).max(0.0)..y_hi + pad)?;
            chart
                .configure_mesh()
                .x_desc("training images (kimg)")
                .y_desc("FID (mean over seeds; bars: min–max)")
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 17))
                .draw()?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                // Offset each arm a little along x so the bars do not hide each other.
                let dx = (i as f64 - series.len() as f64 / 2.0) * 0.004 * k_max;
                chart
                    .draw_series(LineSeries::new(
                        pts.iter().map(|p| (p.0 + dx, p.1)),
                        colour.stroke_width(2),
                    ))?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart.draw_series(pts.iter().map(|p| {
                    PathElement::new(
                        vec![(p.0 + dx, p.2), (p.0 + dx, p.3)],
                        colour.stroke_width(2),
                    )
                }))?;
                chart.draw_series(
                    pts.iter()
                        .map(|p| Circle::new((p.0 + dx, p.1), 4, colour.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
            root.present()?;
            Ok(())
        }),
    )
}
