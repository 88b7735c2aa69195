//! A run directory's files, and how a fresh start or a resume takes them over: the logs a
//! resume trims back to its state, the logs a fresh start moves aside, and the temporaries an
//! interrupted write left behind.

use std::path::Path;

use anyhow::{Context, Result};

/// The file a curve estimated at start (`[optimal_loss.estimate]`) is written to.
pub const ESTIMATED_CURVE_FILE: &str = "optimal-loss-curve.json";

/// The per-tick loss statistics of a run.
pub const STATS_FILE: &str = "stats.jsonl";

/// The evaluator's lines (`[eval] ticks`).
pub const EVAL_FILE: &str = "eval.jsonl";

/// Appends one line to a log file (created if missing).
pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// Removes the temporary files that writes of processes that no longer run left in
/// `run_dir`, naming each on stderr.
pub(crate) fn remove_leftovers(run_dir: &Path) -> Result<()> {
    let removed = lossfloor_core::fs::remove_leftover_temporaries(run_dir)
        .with_context(|| format!("{}: cannot clean up temporaries", run_dir.display()))?;
    for p in removed {
        eprintln!(
            "{}: removed, a temporary file left by an interrupted write",
            p.display()
        );
    }
    Ok(())
}

/// Keeps the lines of `stats.jsonl` logged at or before `nimg` images, and drops the
/// rest: ticks logged after the state a run resumes from (the process was stopped
/// before its next state), and a last line cut short by a kill. Returns how many
/// lines were dropped; rewrites the file atomically only if there were any.
pub(crate) fn trim_stats(path: &Path, nimg: u64) -> Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let keep_line = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["kimg"].as_f64())
            .is_some_and(|kimg| (kimg * 1000.0).round() as u64 <= nimg)
    };
    let lines: Vec<&str> = text.lines().collect();
    let kept: Vec<&str> = lines.iter().copied().filter(|l| keep_line(l)).collect();
    let dropped = lines.len() - kept.len();
    if dropped > 0 {
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        crate::state::write_atomic(path, out.as_bytes())?;
    }
    Ok(dropped)
}

/// A fresh start owns its logs: lines left by an earlier start that wrote no training
/// state would otherwise be mixed with the new ones. Each such file is renamed to
/// `NAME.stale` (replacing an older one) and the move is reported.
pub(crate) fn set_aside_stale_logs(run_dir: &Path) -> Result<()> {
    for name in [STATS_FILE, EVAL_FILE] {
        let path = run_dir.join(name);
        if path.is_file() {
            let to = run_dir.join(format!("{name}.stale"));
            std::fs::rename(&path, &to)
                .with_context(|| format!("{}: cannot move the stale log aside", path.display()))?;
            eprintln!(
                "{}: left by an earlier start without a training state; moved to {}",
                path.display(),
                to.display()
            );
        }
    }
    Ok(())
}
