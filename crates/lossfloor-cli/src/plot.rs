//! Drawing optimal-loss curves (the paper's Fig. 1 view): J*(σ) against log σ with error bars.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use lossfloor_optimal::{write_atomic, Curve};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Where fonts for plot labels are looked for, after `$LOSSFLOOR_FONT`.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Finds and registers a TrueType font for plot labels; fails with the fix if none exists.
pub fn check_font() -> Result<()> {
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> =
            std::env::var_os("LOSSFLOOR_FONT").map(PathBuf::from).into_iter().chain(FONT_PATHS.iter().map(PathBuf::from)).collect();
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // Registered once per process; plotters keeps a 'static reference.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font found for plot labels: install one with `apt-get install -y fonts-dejavu-core`, \
             or point LOSSFLOOR_FONT at a .ttf file"
            .to_string())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

pub const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// A drawing routine into an RGB pixel buffer of the given size.
pub type DrawFn<'a> =
    dyn FnOnce(&mut [u8], (u32, u32)) -> std::result::Result<(), Box<dyn std::error::Error>> + 'a;

/// Runs `draw` on a white `size` canvas and writes it as a PNG at `out` (atomically).
pub fn save_plot(out: &Path, size: (u32, u32), draw: Box<DrawFn<'_>>) -> Result<()> {
    check_font()?;
    let (w, h) = size;
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    draw(&mut pixels, size).map_err(|e| anyhow!("drawing {} failed: {e}", out.display()))?;
    let img = image::RgbImage::from_raw(w, h, pixels).context("plot buffer has the wrong size")?;
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .context("PNG encoding failed")?;
    write_atomic(out, &png).with_context(|| format!("cannot write {}", out.display()))
}

/// Draws the curves into a PNG at `out` (written atomically).
pub fn plot_curves(curves: &[&Curve], out: &Path) -> Result<()> {
    save_plot(out, (960, 640), Box::new(|px, size| draw(curves, px, size)))
}

fn draw(
    curves: &[&Curve],
    pixels: &mut [u8],
    size: (u32, u32),
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    if curves.is_empty() {
        return Err("no curves to draw".into());
    }
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE)?;
    let s_min = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.sigma))
        .fold(f64::INFINITY, f64::min);
    let s_max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.sigma))
        .fold(0.0, f64::max);
    let y_max = curves
        .iter()
        .flat_map(|c| {
            c.points
                .iter()
                .map(|p| p.loss + 1.96 * p.stderr.max(0.0))
                .chain(c.data_variance)
        })
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.08;
    let title = if curves.len() == 1 {
        format!(
            "Optimal loss J*(σ) · {} · {}",
            curves[0].dataset.spec, curves[0].method
        )
    } else {
        format!("Optimal loss J*(σ) · {}", curves[0].dataset.spec)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((s_min * 0.9..s_max * 1.1).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("σ (VE / EDM noise level, log scale)")
        .y_desc("J*(σ): per-dimension x0 MSE floor")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;
    for (i, curve) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let label = match curve.params.get("queries") {
            Some(q) => format!(
                "{} (M = {q}{})",
                curve.method,
                curve
                    .params
                    .get("subset")
                    .map(|l| format!(", L = {l}"))
                    .unwrap_or_default()
            ),
            None => curve.method.clone(),
        };
        chart
            .draw_series(LineSeries::new(
                curve.points.iter().map(|p| (p.sigma, p.loss)),
                colour.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart.draw_series(
            curve
                .points
                .iter()
                .map(|p| Circle::new((p.sigma, p.loss), 3, colour.filled())),
        )?;
        // 95% error bars: ±1.96 standard errors.
        chart.draw_series(curve.points.iter().filter(|p| p.stderr > 0.0).map(|p| {
            let e = 1.96 * p.stderr;
            PathElement::new(
                vec![(p.sigma, p.loss - e), (p.sigma, p.loss + e)],
                colour.stroke_width(1),
            )
        }))?;
    }
    if let Some(var) = curves[0].data_variance {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(s_min * 0.9, var), (s_max * 1.1, var)],
                6,
                4,
                grey.stroke_width(1),
            ))?
            .label(format!("data variance {var:.4}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(1))
            });
    }
    if let Some(star) = curves[0].sigma_star(0.01) {
        let grey = RGBColor(160, 160, 160);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(star, 0.0), (star, y_max)],
                3,
                3,
                grey.stroke_width(1),
            ))?
            .label(format!("σ* ≈ {star:.3} (J* ≤ 1% of variance)"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}
