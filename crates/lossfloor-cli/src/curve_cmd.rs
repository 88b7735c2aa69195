//! `lossfloor curve` (read a curve in any loss unit, with the total J* of each recipe) and
//! `lossfloor plot` (draw one or more curves).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use lossfloor_core::{total_weighted_loss, x0_loss_ratio, ProcessKind, Target};
use lossfloor_optimal::{write_atomic, Curve};

use crate::estimate::{check_output_path, print_table};
use crate::plot::{check_font, plot_curves};

/// Show an optimal-loss curve in another loss unit, and the total J* of each training recipe.
///
/// A curve file holds J*(σ) as a per-dimension x0 loss ‖D − x0‖². A model trained to predict
/// ε, v, the flow-matching velocity or EDM's F sees the same floor multiplied by that target's
/// ratio: ε 1/σ², v (1+σ²)/σ², velocity (1+σ)²/σ², F (σ²+σ_d²)/(σσ_d)². The total floor of a
/// recipe is J* = E_p(σ)[w(σ)·J*(σ)] under its training noise distribution p and loss weight w.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct CurveArgs {
    /// Curve file written by `lossfloor estimate`
    curve: PathBuf,
    /// Loss unit: x0 | eps | v | velocity | f (EDM's F, σ_data 0.5) | edm_f:SIGMA_DATA
    #[arg(long, default_value = "x0")]
    target: String,
    /// Write the converted curve as CSV (sigma,loss,stderr,queries)
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
}

/// Draw one or more optimal-loss curves on log-σ axes with 95% error bars.
#[derive(Args)]
pub struct PlotArgs {
    /// Curve files to draw together (e.g. exact and cdol estimates of one dataset)
    #[arg(required = true)]
    curves: Vec<PathBuf>,
    /// Output PNG
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run_curve(args: CurveArgs) -> Result<()> {
    let curve = Curve::load(&args.curve)?;
    let target: Target = args
        .target
        .parse()
        .with_context(|| "--target: expected x0, eps, v, velocity, f or edm_f:SIGMA_DATA")?;
    if let Some(p) = &args.csv {
        check_output_path(p, "--csv")?;
    }
    println!(
        "{} · {} · N = {}, D = {}",
        curve.dataset.spec, curve.method, curve.dataset.n, curve.dataset.dim
    );
    let converted = Curve {
        points: curve.converted(|s| x0_loss_ratio(&target, s)),
        ..curve.clone()
    };
    if target != Target::X0 {
        println!("loss unit: {target} (x0 floor × its ratio)");
    }
    print_table(&converted);
    println!();
    println!("total optimal loss J* = E_p(σ)[w(σ)·J*(σ)] of each recipe's native noise distribution and weight:");
    for kind in ProcessKind::ALL {
        let process = kind.build();
        let total = total_weighted_loss(process.as_ref(), &|s| curve.loss_at(s));
        println!("  {:<6} {total:.6}", kind.as_str());
    }
    println!("(outside the curve's σ range: J* ∝ σ² below it, constant above it)");
    if let Some(p) = &args.csv {
        write_atomic(p, converted.to_csv().as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

pub fn run_plot(args: PlotArgs) -> Result<()> {
    check_output_path(&args.out, "--out")?;
    check_font()?;
    let curves = args
        .curves
        .iter()
        .map(|p| Curve::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&Curve> = curves.iter().collect();
    plot_curves(&refs, &args.out)
}
