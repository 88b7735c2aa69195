//! The fuzz loop (run in a worker process) and its supervisor (the parent process).
//!
//! The worker mutates seeds, writes each input to `<findings>/.current-<target>.bin` before
//! running it, runs it under `catch_unwind`, and saves panics as findings. A watchdog thread
//! saves an input that runs past the time limit and ends the worker with [`HANG_EXIT_CODE`].
//! The supervisor starts the worker, relays its output, and when the worker dies without a
//! summary (an abort: failed allocation, stack overflow) saves the current input as a
//! finding.

use std::io::{BufRead, BufReader, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::mutate::{input_hash, mutate, target_seed};
use crate::{gzip, zip_members, Case, Input, Packing, Target};

/// Exit code of a worker whose watchdog caught a hang (the input is already saved).
pub const HANG_EXIT_CODE: i32 = 3;

/// Settings of one target's run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// How long to fuzz.
    pub seconds: f64,
    /// The run's RNG seed (each target derives its own from it and its name).
    pub seed: u64,
    /// Where findings are saved.
    pub findings: PathBuf,
    /// Where the worker writes the input it is running and the files it hands to readers
    /// (see [`fast_work_dir`]).
    pub work: PathBuf,
    /// The most one input may take before it counts as a hang.
    pub time_limit: Duration,
    /// The most bytes the worker may hold at once (see [`crate::alloc_guard`]).
    pub memory_limit: usize,
}

/// What one target's run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// The target's name.
    pub target: String,
    /// Inputs run (seeds included).
    pub execs: u64,
    /// Inputs the reader accepted.
    pub accepted: u64,
    /// Inputs the reader refused with an error (the expected outcome for most).
    pub refused: u64,
    /// Panics, hangs and aborts.
    pub findings: u64,
    /// Wall time of the fuzz loop.
    pub seconds: f64,
}

impl Summary {
    /// Inputs per second.
    pub fn execs_per_second(&self) -> f64 {
        self.execs as f64 / self.seconds.max(1e-9)
    }

    /// The machine-readable last line of a worker.
    pub fn to_line(&self) -> String {
        format!(
            "summary target={} execs={} execs_per_s={:.1} accepted={} refused={} findings={} seconds={:.1}",
            self.target,
            self.execs,
            self.execs_per_second(),
            self.accepted,
            self.refused,
            self.findings,
            self.seconds
        )
    }

    /// Parses [`Summary::to_line`].
    pub fn from_line(line: &str) -> Option<Summary> {
        let rest = line.strip_prefix("summary ")?;
        let mut s = Summary::default();
        for field in rest.split(' ') {
            let (key, value) = field.split_once('=')?;
            match key {
                "target" => s.target = value.to_string(),
                "execs" => s.execs = value.parse().ok()?,
                "accepted" => s.accepted = value.parse().ok()?,
                "refused" => s.refused = value.parse().ok()?,
                "findings" => s.findings = value.parse().ok()?,
                "seconds" => s.seconds = value.parse().ok()?,
                _ => {}
            }
        }
        Some(s)
    }
}

/// Packs a seed without mutating it.
pub fn pack_unmutated(packing: Packing, input: &Input) -> Case {
    match packing {
        Packing::File => Case::Bytes(input.first().map(|m| m.bytes.clone()).unwrap_or_default()),
        Packing::Zip => Case::Bytes(zip_members(input).unwrap_or_default()),
        Packing::Dir { gzip: with_gzip } => Case::Files(
            input
                .iter()
                .map(|m| {
                    let bytes = if with_gzip && m.compressed {
                        gzip(&m.bytes)
                    } else {
                        m.bytes.clone()
                    };
                    (m.name.clone(), bytes)
                })
                .collect(),
        ),
        Packing::Parts => Case::Files(
            input
                .iter()
                .map(|m| (m.name.clone(), m.bytes.clone()))
                .collect(),
        ),
    }
}

/// A mutated input: a member's contents are mutated (or its compression flipped, or a
/// member dropped), the input is packed, and for zip and gzip packings the packed bytes are
/// sometimes mutated as well.
pub fn mutated_case(packing: Packing, seeds: &[Input], rng: &mut ChaCha8Rng) -> Case {
    let mut input = seeds[rng.random_range(0..seeds.len())].clone();
    let other = &seeds[rng.random_range(0..seeds.len())];
    let edits = if rng.random_bool(0.8) { 1 } else { 2 };
    for _ in 0..edits {
        if input.is_empty() {
            break;
        }
        let i = rng.random_range(0..input.len());
        let roll: f64 = rng.random();
        if roll < 0.04 {
            input[i].compressed = !input[i].compressed;
        } else if roll < 0.07 && input.len() > 1 {
            input.remove(i);
        } else {
            let splice_with = other
                .iter()
                .find(|m| m.name == input[i].name)
                .map(|m| m.bytes.as_slice())
                .unwrap_or(&[]);
            mutate(&mut input[i].bytes, splice_with, rng);
        }
    }
    let mut case = pack_unmutated(packing, &input);
    match (packing, &mut case) {
        (Packing::Zip, Case::Bytes(bytes)) if rng.random_bool(0.25) => mutate(bytes, &[], rng),
        (Packing::Dir { gzip: true }, Case::Files(files))
            if !files.is_empty() && rng.random_bool(0.2) =>
        {
            let i = rng.random_range(0..files.len());
            mutate(&mut files[i].1, &[], rng);
        }
        _ => {}
    }
    case
}

/// The last panic's message and location, kept by the worker's panic hook (which replaces
/// the default one so expected findings do not flood stderr).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = format!("{message}{location}");
        }
    }));
}

/// Path of the input a worker is running now.
pub fn current_input_path(work: &Path, target: &str) -> PathBuf {
    work.join(format!("current-{target}.bin"))
}

/// A fresh folder for the workers' files, in memory (`/dev/shm`) where there is one: every
/// input is written at least once, and on a disk-backed overlay file system those writes
/// cut the rate from ~16 000 to ~400 inputs per second.
pub fn fast_work_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("lossfloor-fuzz-")
        .tempdir_in(root)
}

/// Saves `saved` as `<findings>/<target>-<kind>-<hash>.bin` and returns the path.
pub fn save_finding(findings: &Path, target: &str, kind: &str, saved: &[u8]) -> PathBuf {
    let path = findings.join(format!("{target}-{kind}-{:016x}.bin", input_hash(saved)));
    if let Err(e) = std::fs::write(&path, saved) {
        eprintln!("could not save finding {}: {e}", path.display());
    }
    path
}

/// The watchdog's view of the input in progress: start time in ms since the run began, or
/// `IDLE`.
struct InFlight {
    origin: Instant,
    started_ms: AtomicU64,
}

const IDLE: u64 = u64::MAX;

fn spawn_watchdog(flight: Arc<InFlight>, target: String, opts: RunOptions, seed: u64) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(50));
        let started = flight.started_ms.load(Ordering::SeqCst);
        if started == IDLE {
            continue;
        }
        let now = flight.origin.elapsed().as_millis() as u64;
        if now.saturating_sub(started) > opts.time_limit.as_millis() as u64 {
            let current = current_input_path(&opts.work, &target);
            let saved = std::fs::read(&current).unwrap_or_default();
            let path = save_finding(&opts.findings, &target, "hang", &saved);
            println!(
                "FINDING target={target} kind=hang seed={seed} limit={:?} input={}",
                opts.time_limit,
                path.display()
            );
            std::process::exit(HANG_EXIT_CODE);
        }
    });
}

/// Fuzzes `target` in this process for `opts.seconds`, printing findings as they happen and
/// progress every ten seconds; returns the summary (also printed as the last line).
pub fn run_worker(target: &Target, opts: &RunOptions) -> Summary {
    crate::alloc_guard::set_limit(opts.memory_limit);
    install_panic_hook();
    std::fs::create_dir_all(&opts.findings).expect("creating the findings folder");
    let scratch = tempfile::tempdir_in(&opts.work).expect("a scratch folder for the inputs");
    let seed = target_seed(opts.seed, target.name);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let seeds = (target.seeds)();
    let flight = Arc::new(InFlight {
        origin: Instant::now(),
        started_ms: AtomicU64::new(IDLE),
    });
    spawn_watchdog(flight.clone(), target.name.to_string(), opts.clone(), seed);
    let current = current_input_path(&opts.work, target.name);

    let mut summary = Summary {
        target: target.name.to_string(),
        ..Summary::default()
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(opts.seconds);
    let mut next_report = start + Duration::from_secs(10);
    let mut index = 0usize;
    loop {
        let now = Instant::now();
        // The seeds themselves run first, however short the run.
        if index >= seeds.len() && now >= deadline {
            break;
        }
        if now >= next_report {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "progress target={} execs={} execs_per_s={:.0} findings={}",
                target.name,
                summary.execs,
                summary.execs as f64 / secs,
                summary.findings
            );
            next_report += Duration::from_secs(10);
        }
        let case = if index < seeds.len() {
            pack_unmutated(target.packing, &seeds[index])
        } else {
            mutated_case(target.packing, &seeds, &mut rng)
        };
        index += 1;
        let saved = case.to_saved();
        // Written before the run so an abort leaves the culprit behind.
        std::fs::write(&current, &saved).expect("writing the current input");

        flight
            .started_ms
            .store(flight.origin.elapsed().as_millis() as u64, Ordering::SeqCst);
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&case, scratch.path())));
        flight.started_ms.store(IDLE, Ordering::SeqCst);

        summary.execs += 1;
        match outcome {
            Ok(Ok(())) => summary.accepted += 1,
            Ok(Err(_)) => summary.refused += 1,
            Err(_) => {
                summary.findings += 1;
                let path = save_finding(&opts.findings, target.name, "panic", &saved);
                let message = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
                println!(
                    "FINDING target={} kind=panic seed={seed} exec={} input={} message={message}",
                    target.name,
                    summary.execs,
                    path.display()
                );
            }
        }
    }
    summary.seconds = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&current);
    println!("{}", summary.to_line());
    summary
}

/// Runs `target` in a child process (`exe --worker TARGET ...`) and returns its summary;
/// a hang or an abort of the child counts as a finding of that target.
pub fn supervise(exe: &Path, target: &Target, opts: &RunOptions) -> Summary {
    std::fs::create_dir_all(&opts.findings).expect("creating the findings folder");
    let started = Instant::now();
    let child = Command::new(exe)
        .arg("--worker")
        .arg(target.name)
        .arg("--seconds")
        .arg(opts.seconds.to_string())
        .arg("--seed")
        .arg(opts.seed.to_string())
        .arg("--findings")
        .arg(&opts.findings)
        .arg("--work")
        .arg(&opts.work)
        .arg("--time-limit-ms")
        .arg(opts.time_limit.as_millis().to_string())
        .arg("--memory-limit-mib")
        .arg((opts.memory_limit >> 20).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            println!("FINDING target={} kind=spawn error={e}", target.name);
            return Summary {
                target: target.name.to_string(),
                findings: 1,
                ..Summary::default()
            };
        }
    };
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut summary = None;
    let mut findings_seen = 0u64;
    for line in BufReader::new(child.stdout.take().expect("piped stdout"))
        .lines()
        .map_while(Result::ok)
    {
        if let Some(s) = Summary::from_line(&line) {
            summary = Some(s);
        }
        if line.starts_with("FINDING ") {
            findings_seen += 1;
        }
        println!("{line}");
    }
    let status = child.wait().expect("waiting for the worker");
    let stderr_text = stderr_reader.join().unwrap_or_default();
    match summary {
        Some(s) if status.success() => s,
        _ => {
            // The worker died: a hang (already saved and reported) or an abort.
            let mut s = summary.unwrap_or_else(|| Summary {
                target: target.name.to_string(),
                findings: findings_seen,
                ..Summary::default()
            });
            s.seconds = started.elapsed().as_secs_f64();
            if status.code() != Some(HANG_EXIT_CODE) {
                let current = current_input_path(&opts.work, target.name);
                let saved = std::fs::read(&current).unwrap_or_default();
                let path = save_finding(&opts.findings, target.name, "abort", &saved);
                let tail: Vec<&str> = stderr_text.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                println!(
                    "FINDING target={} kind=abort status={status} input={} stderr={}",
                    target.name,
                    path.display(),
                    tail.join(" | ")
                );
                s.findings += 1;
            } else {
                s.findings = s.findings.max(1);
            }
            println!("{}", s.to_line());
            s
        }
    }
}

/// Runs one saved input of `target` in this process; `Ok` holds the reader's verdict.
pub fn replay(target: &Target, saved: &[u8]) -> Result<Result<(), String>, String> {
    install_panic_hook();
    let case = Case::from_saved(target.packing, saved)?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    catch_unwind(AssertUnwindSafe(|| (target.run)(&case, scratch.path()))).map_err(|_| {
        let message = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
        format!("panic: {message}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_round_trips() {
        let s = Summary {
            target: "npy".into(),
            execs: 10,
            accepted: 3,
            refused: 7,
            findings: 0,
            seconds: 2.5,
        };
        assert_eq!(Summary::from_line(&s.to_line()), Some(s));
    }
}
