//! `lossfloor-fuzz <target|all> --seconds N [--seed S] [--findings DIR]`: fuzzes readers and
//! parsers, each target in its own child process; exits 1 when anything panicked, hung or
//! aborted. `--list` names the targets; `--replay FILE --target T` reruns a saved input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lossfloor_fuzz::alloc_guard::CappedAllocator;
use lossfloor_fuzz::engine::{fast_work_dir, replay, run_worker, supervise, RunOptions, Summary};
use lossfloor_fuzz::{all_targets, find_target};

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

#[derive(Parser, Debug)]
#[command(
    name = "lossfloor-fuzz",
    about = "Mutation fuzzing of every lossfloor reader and parser (docs/reliability.md)"
)]
struct Args {
    /// A target name (see --list) or `all`.
    target: Option<String>,
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// RNG seed of the run; the same seed replays the same inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where panicking, hanging or aborting inputs are saved.
    #[arg(long, default_value = "fuzz-findings")]
    findings: PathBuf,
    /// An input running longer than this is a hang.
    #[arg(long, default_value_t = 2000)]
    time_limit_ms: u64,
    /// The most memory a worker may hold; a reader asking for more aborts, which is a
    /// finding (inputs are at most 1 MiB, so honest reads stay far below this).
    #[arg(long, default_value_t = 2048)]
    memory_limit_mib: usize,
    /// List the targets and what each feeds.
    #[arg(long)]
    list: bool,
    /// Run one saved input (a finding) of --target instead of fuzzing.
    #[arg(long, requires = "target")]
    replay: Option<PathBuf>,
    /// Internal: the worker's folder for its current input and reader files.
    #[arg(long, hide = true)]
    work: Option<PathBuf>,
    /// Internal: fuzz the target in this process (the supervisor starts workers this way).
    #[arg(long, hide = true)]
    worker: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for t in all_targets() {
            println!("{:<14} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    let Some(name) = args.target.clone() else {
        eprintln!("lossfloor-fuzz: name a target or `all` (see --list)");
        return ExitCode::from(2);
    };
    // The supervisor owns the work folder (removed when it returns); a worker is given it.
    let work_dir = match &args.work {
        Some(_) => None,
        None => match fast_work_dir() {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("lossfloor-fuzz: cannot create a work folder: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let work = match (&args.work, &work_dir) {
        (Some(w), _) => w.clone(),
        (None, Some(d)) => d.path().to_path_buf(),
        (None, None) => unreachable!("one of the two is set above"),
    };
    let opts = RunOptions {
        seconds: args.seconds,
        seed: args.seed,
        findings: args.findings.clone(),
        work,
        time_limit: Duration::from_millis(args.time_limit_ms),
        memory_limit: args.memory_limit_mib << 20,
    };
    let targets = if name == "all" {
        all_targets()
    } else {
        match find_target(&name) {
            Some(t) => vec![t],
            None => {
                eprintln!("lossfloor-fuzz: unknown target {name:?}; see --list");
                return ExitCode::from(2);
            }
        }
    };

    if let Some(file) = &args.replay {
        let saved = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("lossfloor-fuzz: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        lossfloor_fuzz::alloc_guard::set_limit(opts.memory_limit);
        return match replay(&targets[0], &saved) {
            Ok(Ok(())) => {
                println!("accepted");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                println!("refused: {e}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::FAILURE
            }
        };
    }

    if args.worker {
        let summary = run_worker(&targets[0], &opts);
        return if summary.findings == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    let exe = std::env::current_exe().expect("the path of this executable");
    let summaries: Vec<Summary> = targets.iter().map(|t| supervise(&exe, t, &opts)).collect();
    println!(
        "\n{:<14} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "target", "execs", "execs/s", "accepted", "refused", "findings", "seconds"
    );
    for s in &summaries {
        println!(
            "{:<14} {:>9} {:>9.0} {:>9} {:>9} {:>8} {:>8.1}",
            s.target,
            s.execs,
            s.execs_per_second(),
            s.accepted,
            s.refused,
            s.findings,
            s.seconds
        );
    }
    let total: u64 = summaries.iter().map(|s| s.findings).sum();
    println!("total findings: {total}");
    if total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
