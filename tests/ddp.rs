//! Several ranks under `mpirun -np 2` (Open MPI): data-parallel training gives the weights
//! of one process, bit for bit, also across a resume that changes the world size; a sharded
//! `estimate` is one process's curve bit for bit; a killed rank ends the job with its rank
//! named and `--resume auto` completes the run; bad launches are refused.
//!
//! Every process runs with `RAYON_NUM_THREADS=1`: candle's CPU kernels split reductions by
//! thread, so a result is reproducible bit for bit only at a fixed thread count per process.
//! The tests print that they did not run when `mpirun` is missing or the binary was built
//! without the `mpi` feature (CI installs Open MPI and builds with it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, newest_state_nimg, state_bits, write_npy_f32, write_tiny_config, TinyRun};

const BATCH: u64 = 8;

/// `mpirun` with the flags a root CI container needs, or None (with a note) if the tests
/// cannot run here.
fn mpirun() -> Option<Command> {
    if !cfg!(feature = "mpi") {
        eprintln!("not run: lossfloor was built without the mpi feature");
        return None;
    }
    if Command::new("mpirun").arg("--version").output().is_err() {
        eprintln!("not run: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-x",
        "RAYON_NUM_THREADS",
    ])
    .env("RAYON_NUM_THREADS", "1");
    Some(c)
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lossfloor")
}

/// One process, one thread.
fn single(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap()
}

/// `mpirun -np n lossfloor args…`.
fn ranks(mpi: &mut Command, n: usize, args: &[&str]) -> Output {
    mpi.args(["-np", &n.to_string(), bin()])
        .args(args)
        .output()
        .unwrap()
}

/// The tiny run: `steps` steps of 8 images in rounds of 4 (`batch_gpu`), a tick every
/// `tick` steps, a state on every tick.
fn write_config(dir: &Path, steps: u64, tick: u64) -> PathBuf {
    write_tiny_config(
        dir,
        &TinyRun {
            file_name: &format!("tiny-{steps}.toml"),
            batch: BATCH,
            batch_gpu: Some(4),
            steps,
            tick_steps: tick,
        },
    )
}

fn train_args<'a>(cfg: &'a Path, run: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        cfg.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    a
}

fn assert_same_state(a: &Path, b: &Path, nimg: u64) {
    let (sa, sb) = (state_bits(a, nimg), state_bits(b, nimg));
    assert_eq!(sa.len(), sb.len());
    assert!(
        sa.iter().any(|(n, _)| n.starts_with("ema")),
        "no EMA tensors"
    );
    for ((na, va), (nb, vb)) in sa.iter().zip(&sb) {
        assert_eq!(na, nb);
        assert!(
            va == vb,
            "{na} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// `stats.jsonl` without the fields that measure time or the world.
fn stats_without_timing(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("stats.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in [
                "images_per_s",
                "sec_per_kimg",
                "elapsed_s",
                "comm_s",
                "world_size",
            ] {
                assert!(o.remove(k).is_some(), "stats.jsonl lacks {k}");
            }
            v
        })
        .collect()
}

#[test]
fn two_ranks_train_the_weights_of_one_process_bit_for_bit() {
    let Some(_) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 12, 4);
    // The native recipe, and the optimal-loss schedule: a curve estimated at start (rank 0
    // writes it, rank 1 reads it), p(σ̂) refreshed every 2 steps from the evaluator's gap
    // (rank 0 evaluates and sends the losses) and from the gathered per-image statistics.
    let optimal = [
        "--set",
        "schedule.kind=\"optimal-loss\"",
        "--set",
        "schedule.refresh_kimg=0.016",
        "--set",
        "optimal_loss.estimate.queries=64",
        "--set",
        "optimal_loss.estimate.points=8",
        "--set",
        "eval.queries=8",
    ];
    for (name, extra) in [("native", &[][..]), ("optimal", &optimal[..])] {
        let one = dir.path().join(format!("{name}-one"));
        let two = dir.path().join(format!("{name}-two"));
        assert_ok(&single(&train_args(&cfg, &one, extra)));
        let out = ranks(&mut mpirun().unwrap(), 2, &train_args(&cfg, &two, extra));
        assert_ok(&out);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("data parallel: MPI, 2 ranks"), "{text}");
        // Weights, EMA and Adam moments after 12 steps.
        assert_same_state(&one, &two, 12 * BATCH);
        // The per-σ̂ statistics are gathered from both ranks in image order: same lines,
        // and with the optimal-loss schedule the same p(σ̂) at every tick.
        let stats = stats_without_timing(&one);
        assert_eq!(stats, stats_without_timing(&two));
        if name == "optimal" {
            let probs: Vec<&serde_json::Value> =
                stats.iter().map(|l| &l["schedule_probs"]).collect();
            assert!(
                probs[0].is_array() && probs[0] != probs[2],
                "p(σ̂) never refreshed"
            );
        }
        let line: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(two.join("stats.jsonl"))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(line["world_size"], 2);
        assert!(line["comm_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn a_state_resumes_bit_for_bit_on_another_world_size() {
    let Some(mut mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let half = write_config(dir.path(), 6, 3);
    let full_cfg = write_config(dir.path(), 12, 3);
    let full = dir.path().join("full");
    assert_ok(&single(&train_args(&full_cfg, &full, &[])));
    // 1 process for 6 steps, then 2 ranks to the end.
    let a = dir.path().join("one-then-two");
    assert_ok(&single(&train_args(&half, &a, &[])));
    assert_ok(&ranks(
        &mut mpi,
        2,
        &train_args(&full_cfg, &a, &["--resume", "auto"]),
    ));
    assert_same_state(&full, &a, 12 * BATCH);
    // 2 ranks for 6 steps, then 1 process to the end.
    let b = dir.path().join("two-then-one");
    let mut mpi = mpirun().unwrap();
    assert_ok(&ranks(&mut mpi, 2, &train_args(&half, &b, &[])));
    assert_ok(&single(&train_args(&full_cfg, &b, &["--resume", "auto"])));
    assert_same_state(&full, &b, 12 * BATCH);
}

#[test]
fn estimate_on_two_ranks_is_one_process_bit_for_bit() {
    if mpirun().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("data.npy");
    let values: Vec<f32> = (0..40 * 64)
        .map(|i| ((i as f32) * 0.61).sin() * 0.9)
        .collect();
    write_npy_f32(&npy, &[40, 1, 8, 8], &values);
    let data = format!("npy:{}", npy.display());
    // exact: 300 queries are 3 tiles of 128 (rank 0 takes 2, rank 1 one); cdol: 300
    // queries in batches of 16 rows (19 batches, 10 and 9).
    for (method, extra) in [("exact", vec![]), ("cdol", vec!["--subset", "16"])] {
        let one = dir.path().join(format!("{method}-1.json"));
        let two = dir.path().join(format!("{method}-2.json"));
        let mut args = vec![
            "estimate",
            "--data",
            &data,
            "--method",
            method,
            "--queries",
            "300",
            "--sigmas",
            "logspace:0.01:20:7",
        ];
        args.extend_from_slice(&extra);
        let with_out = |p: &Path| {
            let mut a = args.clone();
            a.extend_from_slice(&["--out", p.to_str().unwrap()]);
            a.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let a1 = with_out(&one);
        assert_ok(&single(&a1.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        let a2 = with_out(&two);
        let mut mpi = mpirun().unwrap();
        assert_ok(&ranks(
            &mut mpi,
            2,
            &a2.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        ));
        let (c1, c2) = (
            std::fs::read_to_string(&one).unwrap(),
            std::fs::read_to_string(&two).unwrap(),
        );
        assert_eq!(c1, c2, "{method}: the curves differ");
        assert!(c1.contains("\"loss\""), "{c1}");
    }
}

/// The pid of the process whose environment holds both `tag` and `OMPI_COMM_WORLD_RANK=rank`.
fn pid_of_rank(tag: &str, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        let has = |s: &str| vars.contains(&s.as_bytes());
        (has(tag) && has(&want)).then_some(pid)
    })
}

#[test]
fn a_killed_rank_ends_the_job_and_resume_auto_completes_it() {
    let Some(mut mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    const STEPS: u64 = 400;
    let cfg = write_config(dir.path(), STEPS, 10);
    let full = dir.path().join("full");
    assert_ok(&single(&train_args(&cfg, &full, &[])));

    let run = dir.path().join("killed");
    let tag = format!("LOSSFLOOR_TEST_TAG={}", std::process::id());
    let mut child = mpi
        .args(["-x", "LOSSFLOOR_TEST_TAG", "-np", "2", bin()])
        .args(train_args(&cfg, &run, &[]))
        .env("LOSSFLOOR_TEST_TAG", std::process::id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while newest_state_nimg(&run) < 3 * 10 * BATCH {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = pid_of_rank(&tag, 1).expect("rank 1's process");
    let killed_at = Instant::now();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    // mpirun ends rank 0 and itself, within a bounded time, naming the dead rank.
    let out = child.wait_with_output().unwrap();
    let waited = killed_at.elapsed();
    assert!(!out.status.success());
    assert!(waited < Duration::from_secs(30), "took {waited:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("rank 1"), "{text}");
    let stopped_at = newest_state_nimg(&run);
    assert!(
        stopped_at < STEPS * BATCH,
        "the run finished before the kill"
    );
    // Every state on disk is whole (written to a temporary name, then renamed).
    for e in std::fs::read_dir(&run).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(n) = name
            .strip_prefix("training-state-")
            .and_then(|s| s.strip_suffix(".safetensors"))
        {
            state_bits(&run, n.parse().unwrap());
        }
    }
    // --resume auto on 2 ranks finishes the run with the uninterrupted run's weights.
    let mut mpi = mpirun().unwrap();
    let out = ranks(&mut mpi, 2, &train_args(&cfg, &run, &["--resume", "auto"]));
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resumed from"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_state(&full, &run, STEPS * BATCH);
    let leftovers: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn ranks_with_different_configs_are_refused() {
    let Some(mut mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 4, 2);
    let run = dir.path().join("run");
    let args = train_args(&cfg, &run, &[]);
    // MPMD launch: rank 1 gets another seed.
    let out = mpi
        .args(["-np", "1", bin()])
        .args(&args)
        .args([":", "-np", "1", bin()])
        .args(&args)
        .args(["--set", "train.seed=12"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("rank 1 got a different config or dataset than rank 0"),
        "{text}"
    );
    assert!(!run.exists(), "the refused run made its directory");
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_refused() {
    let Some(mut mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 4, 2);
    let run = dir.path().join("run");
    let out = ranks(&mut mpi, 3, &train_args(&cfg, &run, &[]));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("train.batch = 8 does not split over 3 ranks"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(!run.exists());
}

#[test]
fn a_rank_that_cannot_read_its_data_ends_the_job_naming_itself() {
    let Some(mut mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 4, 2);
    let run = dir.path().join("run");
    let args = train_args(&cfg, &run, &[]);
    let missing = dir.path().join("missing.npy");
    let spec = format!("data.spec=\"npy:{}\"", missing.display());
    let t0 = Instant::now();
    let out = mpi
        .args(["-np", "1", bin()])
        .args(&args)
        .args([":", "-np", "1", bin()])
        .args(&args)
        .args(["--set", &spec])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Rank 0 was waiting for rank 1 in a collective; MPI_Abort ends it at once.
    assert!(t0.elapsed() < Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("error (rank 1 of 2)") && text.contains("missing.npy"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn a_stuck_rank_is_caught_by_the_collective_timeout() {
    let Some(mut mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 4000, 10);
    let run = dir.path().join("run");
    let tag = format!("LOSSFLOOR_TEST_TAG=stuck{}", std::process::id());
    let mut child = mpi
        .args([
            "-x",
            "LOSSFLOOR_TEST_TAG",
            "-x",
            "LOSSFLOOR_COLLECTIVE_TIMEOUT_S",
        ])
        .args(["-np", "2", bin()])
        .args(train_args(&cfg, &run, &[]))
        .env("LOSSFLOOR_TEST_TAG", format!("stuck{}", std::process::id()))
        .env("LOSSFLOOR_COLLECTIVE_TIMEOUT_S", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while newest_state_nimg(&run) < 10 * BATCH {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Rank 1 stops (SIGSTOP: alive, but never reaches the next collective).
    let pid = pid_of_rank(&tag, 1).expect("rank 1's process");
    let stopped_at = Instant::now();
    Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let waited = stopped_at.elapsed();
    assert!(!out.status.success());
    // The 3 s timeout, plus the launcher's teardown.
    assert!(waited < Duration::from_secs(30), "took {waited:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("rank 0 of 2: no answer from the other ranks for 3 s"),
        "{text}"
    );
    // If rank 1 outlived the job, end it.
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}
