//! `lossfloor diagnose RUN_DIR --eval SNAPSHOT`: one snapshot measured by the run's own
//! evaluator (`lossfloor_train::eval_gap`), on demand.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;
use lossfloor_sampler::net_denoiser::loaded_denoiser;
use lossfloor_train::config::Config;
use lossfloor_train::eval_gap::{evaluate, RunEvaluator};
use lossfloor_train::load_dataset;

/// Evaluates `snapshot` with the evaluator of the run in `run_dir` and prints the table.
pub fn run(run_dir: &Path, snapshot: &Path) -> Result<()> {
    let cfg_path = run_dir.join("config.toml");
    let cfg = Config::load(&cfg_path, &[])
        .with_context(|| format!("{}: the run's config", cfg_path.display()))?;
    let device = Device::Cpu;
    let loaded = crate::sample::load_checkpoint(snapshot, None, &device)?;
    crate::sample::print_network(&loaded);
    let data = load_dataset(&cfg)?;
    // The run's floor (its curve, or the label-dropout mixture of a labelled run), checked
    // against the data.
    let curve = lossfloor_train::floor_mix::load_floor(&cfg, run_dir, Some(&data))?;
    // The held-out split is read here even when the run does not log evaluations.
    let mut eval_cfg = cfg.eval.clone();
    eval_cfg.ticks = eval_cfg.ticks.max(1);
    let ev = RunEvaluator::new(
        curve.as_ref(),
        &eval_cfg,
        &cfg.data.spec,
        data.len(),
        cfg.train.round_batch(),
    )?;
    let den = loaded_denoiser(&loaded)?;
    let label_dim = loaded.spec.label_dim();
    let train = evaluate(&den, &data, &ev.train, label_dim, ev.batch, &device)?;
    let test = match &ev.test {
        Some((spec, d, q)) => Some((
            spec.clone(),
            evaluate(&den, d, q, label_dim, ev.batch, &device)?,
        )),
        None => None,
    };
    println!(
        "{}: loss per σ̂ on {} fixed training queries per σ̂ (no dropout); gap = loss − J*, \
         se = √(se_loss² + se_J*²)",
        snapshot.display(),
        ev.train.per_sigma
    );
    print!(
        "{:>10} {:>12} {:>10} {:>12} {:>12} {:>10}",
        "sigma", "loss", "se", "J*", "gap", "gap se"
    );
    if let Some((spec, _)) = &test {
        print!(" {:>14}", format!("{spec} loss"));
    }
    println!();
    for (i, l) in train.iter().enumerate() {
        let (j, jse) = ev.jstar.as_ref().map_or((f64::NAN, f64::NAN), |j| j[i]);
        print!(
            "{:>10.4} {:>12.5e} {:>10.2e} {:>12.5e} {:>12.4e} {:>10.2e}",
            l.sigma,
            l.loss,
            l.se,
            j,
            l.loss - j,
            (l.se.powi(2) + jse.powi(2)).sqrt()
        );
        if let Some((_, t)) = &test {
            print!(" {:>14.5e}", t[i].loss);
        }
        println!();
    }
    for (name, g) in ev.regions(&train) {
        println!(
            "{name:>6} σ* region (σ̂ {:.3}–{:.3}, {} points): mean gap {:.4e} ± {:.1e}",
            g.sigma_lo, g.sigma_hi, g.points, g.gap, g.se
        );
    }
    Ok(())
}
