//! `lossfloor phema`: EDM2's post-hoc EMA, the network averaged with an EMA of any length,
//! reconstructed after training from the run's power-EMA profile snapshots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use lossfloor_nets::checkpoint::{
    load_network, save_network, varmap_tensors, LoadedNetwork, META_NETWORK,
};
use lossfloor_train::posthoc_ema::{
    check_std, combine, list_profile_snapshots, snapshots_for, solve_coefficients, Profile,
    PROFILE_PREFIX,
};

/// Post-hoc EMA (EDM2): reconstruct the EMA network of any length from a run's snapshots.
///
/// A run with `[ema] kind = "power"` saves every tracked profile (`[ema] stds`, by default
/// 0.050 and 0.100) as RUN_DIR/power-ema-NNNNNNNNNN-S.SSS.safetensors with each network
/// snapshot. This command solves EDM2's least-squares problem for the weights of those
/// snapshots whose combined averaging profile best matches a power-function EMA with
/// relative standard deviation --std at time --at, and writes the weighted sum of the
/// networks. The coefficients, the snapshots used and the relative L2 error of the achieved
/// profile are printed and stored in the output's metadata (`lossfloor.phema`).
///
/// Example: lossfloor phema runs/cifar10 --std 0.07,0.13 --out phema.safetensors
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct PhemaArgs {
    /// Run directory holding power-ema-*.safetensors snapshots
    run_dir: PathBuf,
    /// Target σ_rel, one or several (comma-separated); one network each
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "STD[,STD…]"
    )]
    std: Vec<f64>,
    /// Reconstruct at this snapshot time in kimg (default: the latest snapshot)
    #[arg(long, value_name = "KIMG")]
    at: Option<f64>,
    /// Output network (.safetensors); with several --std, "-S.SSS" is added before the extension
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Refuse a target whose achieved profile is further than this from the exact one
    /// (relative L2 error): such a std is outside what the stored profiles can reconstruct
    #[arg(long, default_value_t = 0.05, value_name = "E")]
    max_error: f64,
}

pub fn run(args: PhemaArgs) -> Result<()> {
    let dir = &args.run_dir;
    if !dir.is_dir() {
        bail!("{}: not a run directory", dir.display());
    }
    if !(args.max_error.is_finite() && args.max_error > 0.0) {
        bail!("--max-error {} must be a positive number", args.max_error);
    }
    for &s in &args.std {
        check_std(s).with_context(|| format!("--std {s}"))?;
    }
    let all = list_profile_snapshots(dir)?;
    let mut stds: Vec<String> = all
        .iter()
        .map(|s| format!("{:.3}", s.profile.std))
        .collect();
    stds.sort();
    stds.dedup();
    if stds.len() < 2 {
        bail!(
            "{}: post-hoc EMA needs snapshots of at least two tracked profiles, found {} \
             ({PROFILE_PREFIX}*.safetensors with std {}); train with [ema] kind = \"power\" \
             and stds = [0.05, 0.10]",
            dir.display(),
            stds.len(),
            if stds.is_empty() {
                "none".into()
            } else {
                stds.join(", ")
            }
        );
    }
    let at_nimg = args.at.map(|kimg| (kimg * 1000.0).round() as u64);
    if args.at.is_some_and(|k| !(k.is_finite() && k > 0.0)) {
        bail!(
            "--at {} must be a positive number of kimg",
            args.at.unwrap_or(0.0)
        );
    }
    let (at, used) = snapshots_for(&all, at_nimg).with_context(|| format!("{}", dir.display()))?;
    let inputs: Vec<Profile> = used.iter().map(|s| s.profile.clone()).collect();
    let outputs = output_paths(&args.out, &args.std);
    // Solve every target first: a refused one writes nothing.
    let mut solved = Vec::new();
    for (&std, out) in args.std.iter().zip(&outputs) {
        let target = Profile { nimg: at, std };
        let r = solve_coefficients(&inputs, &target)?;
        if r.fit_error > args.max_error {
            bail!(
                "--std {std}: the {} snapshots (stds {}) reconstruct it only with a relative \
                 profile error of {:.3} > --max-error {}; it is outside their range (track a \
                 profile nearer to it, or pass a larger --max-error)",
                inputs.len(),
                stds.join(", "),
                r.fit_error,
                args.max_error
            );
        }
        solved.push((std, out.clone(), r));
    }
    eprintln!(
        "{} snapshots of profiles {} up to {at} images ({:.3} kimg)",
        used.len(),
        stds.join(", "),
        at as f64 / 1000.0
    );
    let device = Device::Cpu;
    let first = load_network(&used[0].path, &device)?;
    let weights: std::collections::HashSet<String> = first
        .network
        .parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let network_json = first.meta.get(META_NETWORK).cloned();
    for (std, out, r) in solved {
        println!(
            "std {std:.3} at {at} images: relative profile error {:.2e}",
            r.fit_error
        );
        println!("  {:>12}  {:>6}  {:>12}", "images", "std", "coefficient");
        for (s, x) in used.iter().zip(&r.coefficients) {
            println!(
                "  {:>12}  {:>6.3}  {:>12.6}",
                s.profile.nimg, s.profile.std, x
            );
        }
        let tensors = combine(
            &r.coefficients,
            |i| {
                let loaded = load_network(&used[i].path, &device)?;
                check_same_network(&loaded, &network_json, &used[i].path)?;
                Ok(varmap_tensors(&loaded.varmap)?)
            },
            |name| weights.contains(name),
            &device,
        )?;
        let record = serde_json::json!({
            "std": std,
            "nimg": at,
            "fit_error": r.fit_error,
            "snapshots": used.iter().zip(&r.coefficients).map(|(s, x)| serde_json::json!({
                "file": s.path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "nimg": s.profile.nimg,
                "std": s.profile.std,
                "coefficient": x,
            })).collect::<Vec<_>>(),
        });
        let extra = [("lossfloor.phema".to_string(), record.to_string())];
        save_network(&out, &first.spec, &first.precond, &tensors, &extra)
            .with_context(|| format!("--out {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// One output path per target: `out` itself for one, else `STEM-S.SSS.EXT` for each.
fn output_paths(out: &Path, stds: &[f64]) -> Vec<PathBuf> {
    if stds.len() == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let ext = out.extension().map(|e| e.to_string_lossy().into_owned());
    stds.iter()
        .map(|s| {
            let name = match &ext {
                Some(e) => format!("{stem}-{s:.3}.{e}"),
                None => format!("{stem}-{s:.3}"),
            };
            out.with_file_name(name)
        })
        .collect()
}

/// Every snapshot combined must be the same network (architecture and options).
fn check_same_network(loaded: &LoadedNetwork, first: &Option<String>, path: &Path) -> Result<()> {
    if loaded.meta.get(META_NETWORK) != first.as_ref() {
        bail!(
            "{}: a different network than the run's other snapshots",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_targets_get_one_file_each() {
        let p = output_paths(Path::new("out/net.safetensors"), &[0.07, 0.1]);
        assert_eq!(
            p,
            vec![
                PathBuf::from("out/net-0.070.safetensors"),
                PathBuf::from("out/net-0.100.safetensors")
            ]
        );
        assert_eq!(
            output_paths(Path::new("net.safetensors"), &[0.07]),
            vec![PathBuf::from("net.safetensors")]
        );
    }
}
