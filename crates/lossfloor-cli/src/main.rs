//! `lossfloor`: diffusion training against the optimal loss.

mod curve_cmd;
mod diagnose;
mod diagnose_eval;
mod estimate;
mod fid_cmd;
mod plot;
mod sample;
mod study;
mod study_report;
mod weights_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// lossfloor — diffusion models measured against their optimal loss.
///
/// The training loss of a diffusion model never reaches zero: its floor J*(σ), the optimal
/// loss, is set by the data alone. lossfloor computes that floor per noise level and (in
/// later commands) trains, samples and evaluates models against it.
#[derive(Parser)]
#[command(
    name = "lossfloor",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Estimate(estimate::EstimateArgs),
    Curve(curve_cmd::CurveArgs),
    Plot(curve_cmd::PlotArgs),
    Fid(fid_cmd::FidArgs),
    /// Train a diffusion model from a TOML config, logging every loss against the optimal loss.
    Train(lossfloor_train::TrainArgs),
    /// Generate images from a network checkpoint with EDM's sampler.
    Sample(sample::SampleArgs),
    Diagnose(diagnose::DiagnoseArgs),
    Study(study::StudyArgs),
    Weights(weights_cmd::WeightsArgs),
}

/// Opens the device of a `--device` flag; the error names the flag and the accepted values.
pub(crate) fn open_device_flag(name: &str) -> anyhow::Result<candle_core::Device> {
    lossfloor_ops::open_device(name).map_err(|e| anyhow::anyhow!("--{e}"))
}

fn main() -> ExitCode {
    // Freed tensors stay mapped for reuse: 1.2–1.7x faster candle on the CPU (see
    // lossfloor_ops::alloc).
    lossfloor_ops::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Estimate(args) => estimate::run(args),
        Command::Curve(args) => curve_cmd::run_curve(args),
        Command::Plot(args) => curve_cmd::run_plot(args),
        Command::Fid(args) => fid_cmd::run(args),
        Command::Train(args) => lossfloor_train::run_train(args),
        Command::Sample(args) => sample::run(args),
        Command::Diagnose(args) => diagnose::run(args),
        Command::Study(args) => study::run(args),
        Command::Weights(args) => weights_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
