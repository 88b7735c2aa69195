//! `lossfloor diagnose`: a training run's loss set against the optimal loss J*(σ).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use serde_json::Value;

use crate::estimate::check_output_path;
use crate::plot::{save_plot, COLOURS};

/// Draw a training run's loss against the optimal loss J*(σ), per noise level and over time.
///
/// Reads RUN_DIR/stats.jsonl (one line per tick, written by `lossfloor train` when the config
/// has an [optimal_loss] curve). Left: the per-dimension x0 loss of each σ bin at one tick
/// (the last by default) beside J*(σ) (the paper's Fig. 2 view), with ±1 standard-error bars
/// where the run logs them (`loss_se`). Right: the gap loss − J* over training, averaged over
/// the low, middle and high thirds of the σ bins. Prints a per-bin table (σ, n, loss, se, J*,
/// gap) and the mean gap per σ region at the chosen tick.
///
/// Sparse bins: a bin holds the training samples that fell into it during the tick, and the
/// rare high and low σ often hold only a handful, whose mean is noise and can sit below the
/// floor. Bins with fewer than --min-count samples are not drawn and not used in any region
/// mean; the table lists them as hidden.
///
/// RUN_DIR/eval.jsonl (optional): periodic evaluations, one JSON line each:
///   {"kimg", "step", "queries", "sigma": [..], "jstar": [..], "jstar_se": [..],
///    "train": {"raw": {"loss": [..], "se": [..]}, "ema": {"loss": [..], "se": [..]}},
///    "test": {"ema": {"loss": [..], "se": [..]}}}   ("test" optional)
/// i.e. the per-dimension x0 loss of the raw and EMA networks without dropout, at fixed σ on a
/// fixed set of queries, with standard errors, beside J*(σ) and its standard error. When it
/// exists, the left panel also draws the last evaluation (with --tick: the one nearest in
/// kimg): raw and EMA losses with ±1 se bars, and the held-out test EMA loss when present
/// (generalisation: not comparable with the floor of the training data); the right panel
/// marks every evaluation's EMA gap per region. The output adds the evaluation's gap per σ
/// (se = sqrt(se(loss)² + se(J*)²)) and its mean gap per σ region. Evaluations are unbiased,
/// so the region summary puts them first and names the source of every number.
///
/// Example: lossfloor diagnose runs/fashion-mnist-quick --out gap.png
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct DiagnoseArgs {
    /// Run directory of `lossfloor train` (holds stats.jsonl, and eval.jsonl if the run
    /// evaluates)
    run_dir: PathBuf,
    /// Output plot (PNG)
    #[arg(long, value_name = "FILE", required_unless_present = "eval")]
    out: Option<PathBuf>,
    /// Evaluate this network snapshot on the run's fixed queries (the evaluator of
    /// `[eval]`: no dropout, the run's σ̂ grid and query seed) and print its loss and gap
    /// to J* per σ̂, with standard errors, and the held-out loss where the data has a test
    /// split. With --out, the plot is drawn as well
    #[arg(long, value_name = "SNAPSHOT")]
    eval: Option<PathBuf>,
    /// Tick to draw on the left (default: the last); the evaluation drawn is the one nearest
    /// in kimg
    #[arg(long, value_name = "N")]
    tick: Option<u64>,
    /// Hide σ bins with fewer than N training samples in the tick: they are not drawn and not
    /// used in the region means (the table lists them as hidden). Bins of runs that do not
    /// log "n" are always shown
    #[arg(long, value_name = "N", default_value_t = 16)]
    min_count: u64,
}

/// One σ bin of one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Bin {
    pub sigma: f64,
    /// Training samples in the bin during the tick (`None`: not logged).
    pub n: Option<u64>,
    pub loss: Option<f64>,
    /// Standard error of `loss` (`None`: not logged, or n < 2).
    pub loss_se: Option<f64>,
    pub jstar: Option<f64>,
}

impl Bin {
    /// Whether the bin holds enough samples to be drawn and averaged.
    pub fn is_shown(&self, min_count: u64) -> bool {
        self.n.is_none_or(|n| n >= min_count)
    }

    /// Has a loss but too few samples to be shown.
    pub fn is_hidden(&self, min_count: u64) -> bool {
        self.loss.is_some() && !self.is_shown(min_count)
    }
}

/// One line of stats.jsonl, reduced to what the diagnosis needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub tick: u64,
    pub kimg: f64,
    pub bins: Vec<Bin>,
}

/// `v[key]` as a number; `None` when absent or null, an error when of another type.
fn opt_num(v: &Value, key: &str, at: &dyn Fn() -> String) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .with_context(|| format!("{}: {key:?} is not a number: {x}", at())),
    }
}

/// `v[key]` as a non-negative integer; `None` when absent or null.
fn opt_count(v: &Value, key: &str, at: &dyn Fn() -> String) -> Result<Option<u64>> {
    match opt_num(v, key, at)? {
        None => Ok(None),
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x < 2f64.powi(63) => Ok(Some(x as u64)),
        Some(x) => bail!("{}: {key:?} is not a count: {x}", at()),
    }
}

/// Reads stats.jsonl; a malformed line is an error naming the file and the line.
pub fn read_stats(path: &Path) -> Result<Vec<Tick>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (is this a run directory of `lossfloor train`?)",
            path.display()
        )
    })?;
    let mut ticks = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let num = |key: &str| {
            v.get(key)
                .and_then(Value::as_f64)
                .with_context(|| format!("{}: no number {key:?}", at()))
        };
        let bins = v
            .get("bins")
            .and_then(Value::as_array)
            .with_context(|| format!("{}: no \"bins\" array", at()))?
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let at_bin = || format!("{}: bin {j}", at());
                Ok(Bin {
                    sigma: b
                        .get("sigma")
                        .and_then(Value::as_f64)
                        .with_context(|| format!("{}: no number \"sigma\"", at_bin()))?,
                    n: opt_count(b, "n", &at_bin)?,
                    loss: opt_num(b, "loss", &at_bin)?,
                    loss_se: opt_num(b, "loss_se", &at_bin)?,
                    jstar: opt_num(b, "jstar", &at_bin)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        ticks.push(Tick {
            tick: num("tick")? as u64,
            kimg: num("kimg")?,
            bins,
        });
    }
    if ticks.is_empty() {
        bail!(
            "{} has no ticks yet: train for at least one tick",
            path.display()
        );
    }
    Ok(ticks)
}

/// The three σ regions: the low, middle and high thirds of the bins (by index).
pub const REGIONS: [&str; 3] = ["low σ", "mid σ", "high σ"];

/// The bin indices of region `r` among `k` bins.
fn region_range(r: usize, k: usize) -> std::ops::Range<usize> {
    r * k / 3..(r + 1) * k / 3
}

/// The region of bin `i` among `k` bins.
fn region_of_bin(i: usize, k: usize) -> usize {
    (0..3)
        .find(|&r| region_range(r, k).contains(&i))
        .unwrap_or(2)
}

/// Name and σ range of each region, e.g. "low σ (0.002–0.046)" (bin centres).
pub fn region_names(bins: &[Bin]) -> Vec<String> {
    (0..3)
        .map(|r| {
            let part = &bins[region_range(r, bins.len())];
            match (part.first(), part.last()) {
                (Some(a), Some(b)) => format!("{} ({:.3}–{:.3})", REGIONS[r], a.sigma, b.sigma),
                _ => REGIONS[r].to_string(),
            }
        })
        .collect()
}

/// The mean gap of one σ region of the training statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionGap {
    /// "low σ (0.002–0.046)"
    pub name: String,
    /// Mean of loss − J* over the region's shown bins; `None` if none has both values.
    pub mean: Option<f64>,
    /// Its standard error, sqrt(Σ se²)/k (the bins hold disjoint samples); `None` unless every
    /// averaged bin has an se.
    pub se: Option<f64>,
    /// Bins averaged.
    pub used: usize,
    /// Bins with a loss left out for having fewer than `min_count` samples.
    pub hidden: usize,
}

/// Mean gap (loss − J*) of each region at one tick over the bins with at least `min_count`
/// samples.
pub fn region_gaps(tick: &Tick, min_count: u64) -> Vec<RegionGap> {
    let k = tick.bins.len();
    let names = region_names(&tick.bins);
    (0..3)
        .map(|r| {
            let part = &tick.bins[region_range(r, k)];
            let used: Vec<(f64, Option<f64>)> = part
                .iter()
                .filter(|b| b.is_shown(min_count))
                .filter_map(|b| Some((b.loss? - b.jstar?, b.loss_se)))
                .collect();
            let hidden = part
                .iter()
                .filter(|b| b.is_hidden(min_count) && b.jstar.is_some())
                .count();
            let n = used.len() as f64;
            let mean = (!used.is_empty()).then(|| used.iter().map(|g| g.0).sum::<f64>() / n);
            let se = if used.is_empty() {
                None
            } else {
                used.iter()
                    .map(|g| g.1.map(|s| s * s))
                    .sum::<Option<f64>>()
                    .map(|v| v.sqrt() / n)
            };
            RegionGap {
                name: names[r].clone(),
                mean,
                se,
                used: used.len(),
                hidden,
            }
        })
        .collect()
}

/// A point of the loss panel: (σ, loss, standard error).
pub type Point = (f64, f64, Option<f64>);

/// The training-loss points drawn in the loss panel: (σ, loss, se) of the bins with a loss
/// and at least `min_count` samples.
pub fn loss_points(tick: &Tick, min_count: u64) -> Vec<Point> {
    tick.bins
        .iter()
        .filter(|b| b.is_shown(min_count))
        .filter_map(|b| Some((b.sigma, b.loss?, b.loss_se)))
        .collect()
}

/// Losses per σ of one network in one evaluation, with standard errors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LossSeries {
    pub loss: Vec<Option<f64>>,
    pub se: Vec<Option<f64>>,
}

/// One line of eval.jsonl: losses without dropout at fixed σ values on fixed queries.
#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    pub kimg: f64,
    pub step: Option<u64>,
    pub queries: Option<u64>,
    pub sigma: Vec<f64>,
    pub jstar: Vec<Option<f64>>,
    pub jstar_se: Vec<Option<f64>>,
    /// σ* of the run's curve, when the line records it.
    pub sigma_star: Option<f64>,
    /// Training data, raw network.
    pub raw: LossSeries,
    /// Training data, EMA network.
    pub ema: LossSeries,
    /// Held-out test data, EMA network (absent in runs without test data).
    pub test_ema: Option<LossSeries>,
}

/// `v` at the nested `keys`; `None` when any level is absent or null.
fn get_path<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    let mut x = v;
    for k in keys {
        x = x.get(k)?;
    }
    (!x.is_null()).then_some(x)
}

/// An array of numbers (null elements: missing values) at `keys`, of length `len` when given.
fn opt_array(
    v: &Value,
    keys: &[&str],
    len: Option<usize>,
    at: &dyn Fn() -> String,
) -> Result<Option<Vec<Option<f64>>>> {
    let name = keys.join(".");
    let Some(x) = get_path(v, keys) else {
        return Ok(None);
    };
    let arr = x
        .as_array()
        .with_context(|| format!("{}: {name:?} is not an array", at()))?;
    if let Some(len) = len {
        if arr.len() != len {
            bail!(
                "{}: {name:?} has {} values but \"sigma\" has {len}",
                at(),
                arr.len()
            );
        }
    }
    arr.iter()
        .enumerate()
        .map(|(j, e)| match e {
            Value::Null => Ok(None),
            e => e
                .as_f64()
                .map(Some)
                .with_context(|| format!("{}: {name:?} value {j} is not a number: {e}", at())),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A loss series at `prefix` ("train.raw", …): `loss` required if `required`, `se` optional.
fn loss_series(
    v: &Value,
    prefix: &[&str],
    len: usize,
    required: bool,
    at: &dyn Fn() -> String,
) -> Result<Option<LossSeries>> {
    let key = |last: &'static str| prefix.iter().copied().chain([last]).collect::<Vec<_>>();
    let Some(loss) = opt_array(v, &key("loss"), Some(len), at)? else {
        if required {
            bail!("{}: no {:?} array", at(), key("loss").join("."));
        }
        return Ok(None);
    };
    let se = opt_array(v, &key("se"), Some(len), at)?.unwrap_or_else(|| vec![None; len]);
    Ok(Some(LossSeries { loss, se }))
}

/// Parses one line of eval.jsonl; `at` names the file and line in errors.
pub fn parse_eval_line(line: &str, at: &dyn Fn() -> String) -> Result<Eval> {
    let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
    if !v.is_object() {
        bail!("{}: not a JSON object", at());
    }
    let kimg = opt_num(&v, "kimg", at)?.with_context(|| format!("{}: no number \"kimg\"", at()))?;
    let sigma: Vec<f64> = opt_array(&v, &["sigma"], None, at)?
        .with_context(|| format!("{}: no \"sigma\" array", at()))?
        .into_iter()
        .enumerate()
        .map(|(j, s)| match s {
            Some(s) if s.is_finite() && s > 0.0 => Ok(s),
            _ => bail!("{}: \"sigma\" value {j} is not a positive number", at()),
        })
        .collect::<Result<_>>()?;
    let len = sigma.len();
    let jstar = opt_array(&v, &["jstar"], Some(len), at)?
        .with_context(|| format!("{}: no \"jstar\" array", at()))?;
    let jstar_se = opt_array(&v, &["jstar_se"], Some(len), at)?.unwrap_or_else(|| vec![None; len]);
    let series = |prefix: &[&str], required| loss_series(&v, prefix, len, required, at);
    Ok(Eval {
        kimg,
        step: opt_count(&v, "step", at)?,
        queries: opt_count(&v, "queries", at)?,
        raw: series(&["train", "raw"], true)?.unwrap_or_default(),
        ema: series(&["train", "ema"], true)?.unwrap_or_default(),
        test_ema: series(&["test", "ema"], false)?,
        sigma_star: opt_num(&v, "sigma_star", at)?,
        sigma,
        jstar,
        jstar_se,
    })
}

/// Reads eval.jsonl; an absent file is no evaluations, a malformed line an error naming the
/// file and the line.
pub fn read_eval(path: &Path) -> Result<Vec<Eval>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| parse_eval_line(line, &|| format!("{} line {}", path.display(), i + 1)))
        .collect()
}

/// Standard error of a gap loss − J*: sqrt(se(loss)² + se(J*)²) (independent estimates);
/// `None` unless both are known.
pub fn gap_se(loss_se: Option<f64>, jstar_se: Option<f64>) -> Option<f64> {
    Some(loss_se?.hypot(jstar_se?))
}

/// One σ of an evaluation's gap: loss − J* and its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gap {
    pub gap: f64,
    pub se: Option<f64>,
}

impl Eval {
    /// The gap loss − J* of `series` at each σ (`None` where the loss or J* is missing).
    pub fn gaps(&self, series: &LossSeries) -> Vec<Option<Gap>> {
        (0..self.sigma.len())
            .map(|i| {
                let loss = series.loss.get(i).copied().flatten()?;
                let jstar = self.jstar.get(i).copied().flatten()?;
                Some(Gap {
                    gap: loss - jstar,
                    se: gap_se(
                        series.se.get(i).copied().flatten(),
                        self.jstar_se.get(i).copied().flatten(),
                    ),
                })
            })
            .collect()
    }

    /// Mean gap of `series` per σ region; each σ belongs to the region of the stats bin
    /// nearest to it in ln σ. The se is the mean of the per-σ se: a bound that holds however
    /// the σ values' errors correlate (they share the queries). `None` for a region without
    /// σ values or gaps.
    pub fn region_gaps(&self, series: &LossSeries, bins: &[Bin]) -> Vec<Option<Gap>> {
        let mut acc: [Vec<Gap>; 3] = Default::default();
        for (i, g) in self.gaps(series).into_iter().enumerate() {
            if let (Some(g), Some(r)) = (g, region_of_sigma(self.sigma[i], bins)) {
                acc[r].push(g);
            }
        }
        acc.iter()
            .map(|gs| {
                if gs.is_empty() {
                    return None;
                }
                let n = gs.len() as f64;
                Some(Gap {
                    gap: gs.iter().map(|g| g.gap).sum::<f64>() / n,
                    se: gs.iter().map(|g| g.se).sum::<Option<f64>>().map(|s| s / n),
                })
            })
            .collect()
    }
}

/// The region (0, 1, 2) of the stats bin nearest to `sigma` in ln σ.
fn region_of_sigma(sigma: f64, bins: &[Bin]) -> Option<usize> {
    let ln = sigma.ln();
    let nearest = bins
        .iter()
        .enumerate()
        .filter(|(_, b)| b.sigma > 0.0)
        .min_by(|a, b| {
            (a.1.sigma.ln() - ln)
                .abs()
                .total_cmp(&(b.1.sigma.ln() - ln).abs())
        })?
        .0;
    Some(region_of_bin(nearest, bins.len()))
}

/// The evaluation to show: the last one, or with `near_kimg` the one nearest to it.
pub fn pick_eval(evals: &[Eval], near_kimg: Option<f64>) -> Option<&Eval> {
    match near_kimg {
        None => evals.last(),
        Some(k) => evals
            .iter()
            .min_by(|a, b| (a.kimg - k).abs().total_cmp(&(b.kimg - k).abs())),
    }
}

/// A number for the tables, "—" when missing.
fn fmt_e(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.4e}"))
}

/// "gap ± se" for the tables.
fn fmt_gap(g: Option<Gap>) -> String {
    match g {
        None => "—".to_string(),
        Some(Gap { gap, se: None }) => format!("{gap:.4e} ± ?"),
        Some(Gap { gap, se: Some(s) }) => format!("{gap:.4e} ± {s:.2e}"),
    }
}

/// The printed report: per-bin table, evaluation table, region summary.
pub fn report(shown: &Tick, eval: Option<&Eval>, min_count: u64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "tick {} ({:.3} kimg), stats.jsonl: training loss per σ bin (raw network, training \
         forward pass with its dropout, mean over the tick's samples; se = standard error of \
         that mean)",
        shown.tick, shown.kimg
    );
    let _ = writeln!(
        o,
        "  {:>9} {:>7} {:>11} {:>11} {:>11} {:>11}",
        "σ", "n", "loss", "se", "J*", "gap"
    );
    for b in &shown.bins {
        let note = match b.n {
            Some(0) => "no samples".to_string(),
            Some(n) if n < min_count && b.loss.is_some() => {
                format!(
                    "hidden: n = {n} < --min-count {min_count} (noise; not plotted or averaged)"
                )
            }
            _ if b.loss.is_some() && b.jstar.is_none() => "no J*".to_string(),
            _ => String::new(),
        };
        let gap = b.loss.zip(b.jstar).map(|(l, j)| l - j);
        let n = b.n.map_or_else(|| "?".to_string(), |n| n.to_string());
        let line = format!(
            "  {:>9.4} {:>7} {:>11} {:>11} {:>11} {:>11}  {note}",
            b.sigma,
            n,
            fmt_e(b.loss),
            fmt_e(b.loss_se),
            fmt_e(b.jstar),
            fmt_e(gap)
        );
        let _ = writeln!(o, "{}", line.trim_end());
    }
    let hidden = shown.bins.iter().filter(|b| b.is_hidden(min_count)).count();
    if hidden > 0 {
        let _ = writeln!(
            o,
            "  {hidden} bin(s) with fewer than {min_count} samples hidden from the plot and the \
             region means (--min-count {min_count})"
        );
    }

    if let Some(e) = eval {
        let (raw, ema) = (e.gaps(&e.raw), e.gaps(&e.ema));
        let mut head = format!(
            "\neval.jsonl at {:.3} kimg{}{}: gap loss − J* per σ, no dropout, fixed queries \
             (± 1 se = sqrt(se(loss)² + se(J*)²))",
            e.kimg,
            e.step.map_or_else(String::new, |s| format!(", step {s}")),
            e.queries
                .map_or_else(String::new, |q| format!(", {q} queries per σ")),
        );
        if (e.kimg - shown.kimg).abs() > 1e-9 {
            let _ = write!(
                head,
                " [the evaluation nearest to tick {} at {:.3} kimg]",
                shown.tick, shown.kimg
            );
        }
        let _ = writeln!(o, "{head}");
        let _ = write!(
            o,
            "  {:>9} {:>11} {:>10} {:>22} {:>22}",
            "σ", "J*", "se(J*)", "raw gap ± se", "EMA gap ± se"
        );
        if e.test_ema.is_some() {
            let _ = write!(o, " {:>22}", "test EMA loss ± se");
        }
        let _ = writeln!(o);
        let at = |v: &[Option<f64>], i: usize| v.get(i).copied().flatten();
        for (i, sigma) in e.sigma.iter().enumerate() {
            let jse = at(&e.jstar_se, i).map_or_else(|| "—".to_string(), |s| format!("{s:.2e}"));
            let _ = write!(
                o,
                "  {:>9.4} {:>11} {:>10} {:>22} {:>22}",
                sigma,
                fmt_e(at(&e.jstar, i)),
                jse,
                fmt_gap(raw.get(i).copied().flatten()),
                fmt_gap(ema.get(i).copied().flatten())
            );
            if let Some(t) = &e.test_ema {
                let l = at(&t.loss, i).map(|loss| Gap {
                    gap: loss,
                    se: at(&t.se, i),
                });
                let _ = write!(o, " {:>22}", fmt_gap(l));
            }
            let _ = writeln!(o);
        }
        if e.test_ema.is_some() {
            let _ = writeln!(
                o,
                "  (test EMA loss: held-out data, a generalisation measure; J* is the floor of \
                 the training data and is not compared with it)"
            );
        }
    }

    let stats = region_gaps(shown, min_count);
    let _ = writeln!(
        o,
        "\ntick {} ({:.3} kimg): mean gap loss − J* per σ region",
        shown.tick, shown.kimg
    );
    let stats_col = |g: &RegionGap| match g.mean {
        None => format!("no data ({} bins hidden)", g.hidden),
        Some(m) => {
            let se = g.se.map_or_else(String::new, |s| format!(" ± {s:.2e}"));
            let hid = if g.hidden > 0 {
                format!(", {} hidden", g.hidden)
            } else {
                String::new()
            };
            format!("{m:.4e}{se} ({} bins{hid})", g.used)
        }
    };
    let stats_source = format!(
        "stats.jsonl tick {}: training loss (raw network, training forward pass with its \
         dropout); only bins with n ≥ {min_count}, bins below --min-count ignored",
        shown.tick
    );
    match eval {
        None => {
            let _ = writeln!(o, "  source: {stats_source}");
            for g in &stats {
                let _ = writeln!(o, "  {:<28} {}", g.name, stats_col(g));
            }
        }
        Some(e) => {
            let raw = e.region_gaps(&e.raw, &shown.bins);
            let ema = e.region_gaps(&e.ema, &shown.bins);
            let _ = writeln!(
                o,
                "  preferred source, eval: eval.jsonl at {:.3} kimg (unbiased: no dropout, \
                 fixed queries); ± bound on the se (mean of the per-σ se)",
                e.kimg
            );
            let _ = writeln!(o, "  secondary source, stats: {stats_source}");
            let _ = writeln!(
                o,
                "  {:<28} {:>24} {:>24}   stats gap (train)",
                "region", "eval EMA gap", "eval raw gap"
            );
            for (r, g) in stats.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "  {:<28} {:>24} {:>24}   {}",
                    g.name,
                    fmt_gap(ema[r]),
                    fmt_gap(raw[r]),
                    stats_col(g)
                );
            }
        }
    }
    o
}

pub fn run(args: DiagnoseArgs) -> Result<()> {
    if let Some(snapshot) = &args.eval {
        crate::diagnose_eval::run(&args.run_dir, snapshot)?;
    }
    let Some(out) = args.out.clone() else {
        return Ok(());
    };
    check_output_path(&out, "--out")?;
    let stats = args.run_dir.join("stats.jsonl");
    let ticks = read_stats(&stats)?;
    let eval_path = args.run_dir.join("eval.jsonl");
    let evals = read_eval(&eval_path)?;
    if evals.is_empty()
        && !ticks
            .iter()
            .any(|t| t.bins.iter().any(|b| b.jstar.is_some()))
    {
        bail!(
            "{} has no J* values: the run was trained without an [optimal_loss] curve \
             (compute one with `lossfloor estimate` and set [optimal_loss] curve)",
            stats.display()
        );
    }
    let (first, last) = match (ticks.first(), ticks.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => bail!("{} has no ticks yet", stats.display()),
    };
    let shown = match args.tick {
        None => last,
        Some(n) => ticks.iter().find(|t| t.tick == n).with_context(|| {
            format!(
                "--tick {n}: {} has ticks {}..={}",
                stats.display(),
                first.tick,
                last.tick
            )
        })?,
    };
    let eval = pick_eval(&evals, args.tick.map(|_| shown.kimg));
    let min_count = args.min_count;
    save_plot(
        &out,
        (1400, 600),
        Box::new(|px, size| draw(&ticks, shown, &evals, eval, min_count, px, size)),
    )?;
    print!("{}", report(shown, eval, min_count));
    eprintln!("wrote {}", out.display());
    Ok(())
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws (σ, value, se) points with ±1 se bars into the loss panel, joined by a line.
fn draw_points_with_bars<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<
            plotters::coord::combinators::LogCoord<f64>,
            plotters::coord::combinators::LogCoord<f64>,
        >,
    >,
    points: &[Point],
    colour: RGBColor,
    y_lo: f64,
    label: &str,
    filled: bool,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let clamp = |v: f64| v.max(y_lo);
    let line: Vec<(f64, f64)> = points.iter().map(|p| (p.0, clamp(p.1))).collect();
    chart
        .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (18, 0)], colour.stroke_width(2))
                + Circle::new((9, 0), 3, colour.filled())
        });
    let style = if filled {
        colour.filled()
    } else {
        colour.stroke_width(2)
    };
    chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, style)))?;
    let bars: Vec<(f64, f64, f64)> = points
        .iter()
        .filter_map(|&(s, v, se)| {
            let se = se.filter(|e| e.is_finite() && *e > 0.0)?;
            Some((s, clamp(v - se), clamp(v + se)))
        })
        .collect();
    chart
        .draw_series(bars.iter().map(|&(s, lo, hi)| {
            PathElement::new(vec![(s, lo), (s, hi)], colour.stroke_width(1))
        }))?;
    chart.draw_series(bars.iter().flat_map(|&(s, lo, hi)| {
        [lo, hi].map(|y| {
            EmptyElement::at((s, y))
                + PathElement::new(vec![(-4, 0), (4, 0)], colour.stroke_width(1))
        })
    }))?;
    Ok(())
}

/// (σ, value, se) points of an evaluation's series.
fn eval_points(e: &Eval, s: &LossSeries) -> Vec<Point> {
    e.sigma
        .iter()
        .enumerate()
        .filter_map(|(i, &sigma)| {
            Some((
                sigma,
                s.loss.get(i).copied().flatten()?,
                s.se.get(i).copied().flatten(),
            ))
        })
        .collect()
}

fn draw(
    ticks: &[Tick],
    shown: &Tick,
    evals: &[Eval],
    eval: Option<&Eval>,
    min_count: u64,
    pixels: &mut [u8],
    size: (u32, u32),
) -> DrawResult {
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(size.0 / 2);

    // Left: loss and J* per σ bin, log-log (values at or below the floor are drawn at it).
    let loss = loss_points(shown, min_count);
    let hidden = shown.bins.iter().filter(|b| b.is_hidden(min_count)).count();
    let mut jstar: Vec<(f64, f64)> = shown
        .bins
        .iter()
        .filter_map(|b| Some((b.sigma, b.jstar?)))
        .collect();
    let eval_series: Vec<(Vec<Point>, &str)> = match eval {
        None => Vec::new(),
        Some(e) => {
            if jstar.is_empty() {
                jstar = e
                    .sigma
                    .iter()
                    .zip(&e.jstar)
                    .filter_map(|(&s, j)| Some((s, (*j)?)))
                    .collect();
            }
            let mut v = vec![
                (
                    eval_points(e, &e.raw),
                    "eval (no dropout, fixed queries): raw",
                ),
                (
                    eval_points(e, &e.ema),
                    "eval (no dropout, fixed queries): EMA",
                ),
            ];
            if let Some(t) = &e.test_ema {
                v.push((
                    eval_points(e, t),
                    "held-out test, EMA (generalisation; not vs the floor)",
                ));
            }
            v
        }
    };
    let positive = jstar
        .iter()
        .map(|p| p.1)
        .chain(loss.iter().map(|p| p.1))
        .chain(eval_series.iter().flat_map(|s| s.0.iter().map(|p| p.1)))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (y_lo, y_hi) = positive.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (y_lo, y_hi) = if y_hi > 0.0 {
        (y_lo.max(y_hi * 1e-6) * 0.5, y_hi * 2.0)
    } else {
        (1e-6, 1.0)
    };
    let sigmas = shown
        .bins
        .iter()
        .map(|b| b.sigma)
        .chain(eval.iter().flat_map(|e| e.sigma.iter().copied()))
        .filter(|s| s.is_finite() && *s > 0.0);
    let (s_lo, s_hi) = sigmas.fold((f64::INFINITY, 0.0f64), |(lo, hi), s| {
        (lo.min(s), hi.max(s))
    });
    let (s_lo, s_hi) = if s_hi > 0.0 {
        (s_lo * 0.8, s_hi * 1.25)
    } else {
        (0.002 * 0.8, 80.0 * 1.25)
    };
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!(
                "loss vs optimal loss per σ · tick {} ({:.1} kimg)",
                shown.tick, shown.kimg
            ),
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((s_lo..s_hi).log_scale(), (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("σ (log scale)")
        .y_desc("per-dimension x0 loss (log scale)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .x_label_formatter(&|v| format!("{v}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    let clamp = |v: f64| v.max(y_lo);
    let c_j = COLOURS[0];
    chart
        .draw_series(LineSeries::new(
            jstar.iter().map(|&(s, j)| (s, clamp(j))),
            c_j.stroke_width(2),
        ))?
        .label("optimal loss J*(σ)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c_j.stroke_width(2)));
    let train_label = if hidden > 0 {
        format!("training loss ±1 se (tick mean; {hidden} bins with n < {min_count} hidden)")
    } else {
        "training loss ±1 se (mean over the tick)".to_string()
    };
    draw_points_with_bars(&mut chart, &loss, COLOURS[1], y_lo, &train_label, true)?;
    // Raw: brown, EMA: black, test: cyan (the right panel's region colours are not reused).
    let eval_colours = [RGBColor(140, 86, 75), BLACK, COLOURS[5]];
    for (i, (points, label)) in eval_series.iter().enumerate() {
        let label = match eval {
            Some(e) if i < 2 => format!("{label} ({:.1} kimg)", e.kimg),
            _ => label.to_string(),
        };
        draw_points_with_bars(&mut chart, points, eval_colours[i], y_lo, &label, false)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;

    // Right: mean gap per σ region over training (bins with n ≥ min_count), and the
    // evaluations' EMA gaps per region as triangles.
    let series: Vec<Vec<(f64, f64)>> = (0..3)
        .map(|r| {
            ticks
                .iter()
                .filter_map(|t| Some((t.kimg, region_gaps(t, min_count)[r].mean?)))
                .collect()
        })
        .collect();
    let eval_region: Vec<Vec<(f64, f64)>> = {
        let per_eval: Vec<(f64, Vec<Option<Gap>>)> = evals
            .iter()
            .map(|e| (e.kimg, e.region_gaps(&e.ema, &shown.bins)))
            .collect();
        (0..3)
            .map(|r| {
                per_eval
                    .iter()
                    .filter_map(|(k, g)| Some((*k, g[r]?.gap)))
                    .collect()
            })
            .collect()
    };
    let all = series
        .iter()
        .chain(&eval_region)
        .flatten()
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (g_lo, g_hi) = all.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = (g_hi - g_lo).max(1e-12) * 0.08;
    let k_hi = ticks
        .iter()
        .map(|t| t.kimg)
        .chain(evals.iter().map(|e| e.kimg))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut chart = ChartBuilder::on(&right)
        .caption("gap loss − J* over training", ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..k_hi * 1.02, (g_lo - pad)..(g_hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("kimg (thousands of training images)")
        .y_desc(format!("mean gap per bin (bins with n ≥ {min_count})"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    let names = region_names(&shown.bins);
    for (r, points) in series.into_iter().enumerate() {
        let c = COLOURS[(r + 2) % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(format!("{} (training stats)", names[r]))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    if !evals.is_empty() {
        let grey = RGBColor(90, 90, 90);
        for (r, points) in eval_region.into_iter().enumerate() {
            let c = COLOURS[(r + 2) % COLOURS.len()];
            chart.draw_series(DashedLineSeries::new(
                points.clone(),
                5,
                4,
                c.stroke_width(1),
            ))?;
            let drawn = chart.draw_series(
                points
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 5, c.filled())),
            )?;
            if r == 0 {
                drawn
                    .label("eval EMA, unbiased (▲, dashed; same colours)")
                    .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 5, grey.filled()));
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(losses: &[Option<f64>], jstars: &[Option<f64>]) -> Tick {
        Tick {
            tick: 0,
            kimg: 0.0,
            bins: losses
                .iter()
                .zip(jstars)
                .enumerate()
                .map(|(i, (&loss, &jstar))| Bin {
                    sigma: i as f64 + 1.0,
                    n: None,
                    loss,
                    loss_se: None,
                    jstar,
                })
                .collect(),
        }
    }

    /// A file under a fresh temporary folder holding `text`.
    fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn region_gaps_average_each_third_and_skip_missing_bins() {
        let t = tick(
            &[Some(1.0), Some(2.0), None, Some(4.0), Some(5.0), Some(6.0)],
            &[Some(0.5), Some(1.0), Some(0.0), Some(1.0), None, Some(5.0)],
        );
        let g = region_gaps(&t, 16);
        assert_eq!(g[0].mean, Some(0.75)); // (0.5 + 1.0) / 2
        assert_eq!(g[1].mean, Some(3.0)); // bin 2 has no loss, bin 3: 4 − 1
        assert_eq!(g[2].mean, Some(1.0)); // bin 4 has no J*, bin 5: 6 − 5
        assert!(g.iter().all(|g| g.se.is_none() && g.hidden == 0));
        assert!(g[0].name.starts_with("low σ (1.000–2.000)"));
        let empty = tick(&[None, None, None], &[Some(1.0), None, Some(2.0)]);
        assert!(region_gaps(&empty, 16).iter().all(|g| g.mean.is_none()));
    }

    /// A stats line whose bins at σ = 18 and 35 hold one sample each (the quickstart's
    /// below-the-floor points): they are neither plotted nor averaged, and the table says why.
    #[test]
    fn low_count_bins_are_hidden_from_plot_points_and_region_means() {
        let bin = |sigma: f64, n: u64, loss: f64, se: Option<f64>| {
            serde_json::json!({"sigma": sigma, "sigma_lo": sigma / 1.2, "sigma_hi": sigma * 1.2,
                "n": n, "loss": loss, "loss_se": se, "jstar": 0.5, "gap": loss - 0.5})
        };
        let bins = vec![
            bin(0.01, 100, 0.6, Some(0.01)),
            bin(0.1, 50, 0.7, Some(0.02)),
            bin(1.0, 40, 0.8, Some(0.03)),
            bin(5.0, 20, 0.9, Some(0.04)),
            bin(18.0, 1, 0.1, None), // one sample: below the floor
            bin(35.0, 1, 0.2, None),
        ];
        let line = serde_json::json!({"tick": 3, "kimg": 6.0, "bins": bins});
        let (_dir, path) = temp_file("stats.jsonl", &format!("{line}\n"));
        let ticks = read_stats(&path).unwrap();
        let t = &ticks[0];
        assert_eq!(t.bins[4].n, Some(1));
        assert_eq!(t.bins[4].loss_se, None);
        assert_eq!(t.bins[0].loss_se, Some(0.01));

        let points = loss_points(t, 16);
        let sigmas: Vec<f64> = points.iter().map(|p| p.0).collect();
        assert_eq!(sigmas, vec![0.01, 0.1, 1.0, 5.0]);
        assert_eq!(points[1].2, Some(0.02));
        // With --min-count 1 every bin is drawn.
        assert_eq!(loss_points(t, 1).len(), 6);

        let g = region_gaps(t, 16);
        assert!((g[0].mean.unwrap() - 0.15).abs() < 1e-12);
        assert!(
            (g[0].se.unwrap() - (0.01f64.powi(2) + 0.02f64.powi(2)).sqrt() / 2.0).abs() < 1e-12
        );
        assert_eq!((g[1].used, g[1].hidden), (2, 0));
        // The high region holds only the two one-sample bins: no mean, both hidden.
        assert_eq!(g[2].mean, None);
        assert_eq!((g[2].used, g[2].hidden), (0, 2));
        assert_eq!(region_gaps(t, 1)[2].mean, Some((0.1 + 0.2) / 2.0 - 0.5));

        let text = report(t, None, 16);
        let row = text.lines().find(|l| l.contains("18.0000")).unwrap();
        assert!(row.contains("hidden: n = 1 < --min-count 16"), "{text}");
        assert!(text.contains("bins below --min-count ignored"), "{text}");
        assert!(text.contains("no data (2 bins hidden)"), "{text}");
    }

    #[test]
    fn read_stats_accepts_absent_or_null_loss_se_and_n() {
        let line = r#"{"tick": 0, "kimg": 0.5, "bins": [
            {"sigma": 1.0, "loss": 2.0, "jstar": 1.0},
            {"sigma": 2.0, "n": 1, "loss": 2.0, "loss_se": null, "jstar": 1.0},
            {"sigma": 3.0, "n": 0, "loss": null, "loss_se": null, "jstar": 1.0}]}"#
            .replace('\n', " ");
        let (_dir, path) = temp_file("stats.jsonl", &line);
        let t = &read_stats(&path).unwrap()[0];
        assert_eq!(t.bins[0].n, None);
        assert!(t.bins[0].is_shown(16)); // a run without "n": shown
        assert!(t.bins.iter().all(|b| b.loss_se.is_none()));
        assert!(!t.bins[1].is_shown(16));
        assert!(!t.bins[2].is_hidden(16)); // no samples: nothing to hide
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let (_dir, path) = temp_file(
            "stats.jsonl",
            concat!(
                r#"{"tick": 0, "kimg": 0, "bins": []}"#,
                "\n",
                r#"{"tick": 1, "kimg": 1, "bins": [{"sigma": 1, "n": -2}]}"#,
                "\n"
            ),
        );
        let err = format!("{:#}", read_stats(&path).unwrap_err());
        assert!(
            err.contains("stats.jsonl line 2") && err.contains("\"n\""),
            "{err}"
        );

        let good = concat!(
            r#"{"kimg": 1, "sigma": [1, 2], "jstar": [0.1, 0.2], "#,
            r#""train": {"raw": {"loss": [1, 2]}, "ema": {"loss": [1, 2]}}}"#
        );
        for (bad, want) in [
            ("nope", "not JSON"),
            (r#"{"sigma": [1], "jstar": [1]}"#, "\"kimg\""),
            (
                &good.replace("\"jstar\": [0.1, 0.2]", "\"jstar\": [0.1]"),
                "\"jstar\" has 1 values",
            ),
            (
                &good.replace("\"raw\": {\"loss\": [1, 2]}, ", ""),
                "train.raw.loss",
            ),
            (
                &good.replace("[1, 2], \"jstar\"", "[1, -2], \"jstar\""),
                "\"sigma\" value 1",
            ),
            (
                &good.replace(
                    "\"ema\": {\"loss\": [1, 2]}",
                    "\"ema\": {\"loss\": [1, \"x\"]}",
                ),
                "train.ema.loss",
            ),
        ] {
            let (_dir, path) = temp_file("eval.jsonl", &format!("{good}\n\n{bad}\n"));
            let err = format!("{:#}", read_eval(&path).unwrap_err());
            assert!(
                err.contains("eval.jsonl line 3") && err.contains(want),
                "{err} (want {want})"
            );
        }
    }

    #[test]
    fn reads_eval_lines_with_and_without_test() {
        let with_test = r#"{"kimg": 2.0, "step": 16, "queries": 256, "sigma": [0.01, 1.0, 50.0],
            "jstar": [0.001, 0.2, 0.9], "jstar_se": [0.0001, 0.01, null],
            "train": {"raw": {"loss": [0.002, 0.3, 1.0], "se": [0.0002, 0.02, 0.05]},
                      "ema": {"loss": [0.0015, 0.25, null], "se": [0.0001, 0.01, null]}},
            "test": {"ema": {"loss": [0.003, 0.35, 1.1], "se": [0.0003, 0.03, 0.06]}}}"#
            .replace('\n', " ");
        let without_test = r#"{"kimg": 4.0, "step": 32, "queries": 256, "sigma": [0.01, 1.0, 50.0],
            "jstar": [0.001, 0.2, 0.9], "jstar_se": [0.0001, 0.01, 0.02],
            "train": {"raw": {"loss": [0.002, 0.3, 1.0], "se": [0.0002, 0.02, 0.05]},
                      "ema": {"loss": [0.0015, 0.25, 0.95], "se": [0.0001, 0.01, 0.04]}}}"#
            .replace('\n', " ");
        let test_without_ema = without_test.replace("}}}", "}}, \"test\": {}}");
        let (_dir, path) = temp_file(
            "eval.jsonl",
            &format!("{with_test}\n{without_test}\n{test_without_ema}\n"),
        );
        let evals = read_eval(&path).unwrap();
        assert_eq!(evals.len(), 3);
        let (a, b) = (&evals[0], &evals[1]);
        assert_eq!((a.kimg, a.step, a.queries), (2.0, Some(16), Some(256)));
        assert_eq!(a.sigma, vec![0.01, 1.0, 50.0]);
        assert_eq!(a.jstar_se[2], None);
        assert_eq!(a.ema.loss[2], None);
        let t = a.test_ema.as_ref().unwrap();
        assert_eq!(t.loss[1], Some(0.35));
        assert_eq!(t.se[2], Some(0.06));
        assert!(b.test_ema.is_none());
        assert!(evals[2].test_ema.is_none());
        assert_eq!(b.ema.se[2], Some(0.04));

        // An absent file is no evaluations.
        let none = path.with_file_name("missing.jsonl");
        assert!(read_eval(&none).unwrap().is_empty());

        // The evaluation shown: the last, or the nearest in kimg to the chosen tick.
        assert_eq!(pick_eval(&evals, None).unwrap().kimg, 4.0);
        assert_eq!(pick_eval(&evals[..2], Some(2.4)).unwrap().kimg, 2.0);
        assert!(pick_eval(&[], None).is_none());

        // Report: eval table with the test column, region summary prefers the eval.
        let bins: Vec<Bin> = [0.01, 0.02, 1.0, 2.0, 40.0, 60.0]
            .iter()
            .map(|&s| Bin {
                sigma: s,
                n: Some(100),
                loss: Some(1.0),
                loss_se: Some(0.1),
                jstar: Some(0.5),
            })
            .collect();
        let shown = Tick {
            tick: 1,
            kimg: 2.0,
            bins,
        };
        let text = report(&shown, Some(a), 16);
        assert!(text.contains("test EMA loss ± se"), "{text}");
        assert!(text.contains("preferred source, eval"), "{text}");
        assert!(text.contains("stats gap (train)"), "{text}");
        let text = report(&shown, Some(b), 16);
        assert!(!text.contains("test EMA loss"), "{text}");
        assert!(text.contains("nearest to tick 1"), "{text}");
    }

    #[test]
    fn gap_se_combines_loss_and_jstar_se() {
        assert_eq!(gap_se(Some(3.0), Some(4.0)), Some(5.0));
        assert_eq!(gap_se(Some(0.3), Some(0.0)), Some(0.3));
        assert_eq!(gap_se(None, Some(4.0)), None);
        assert_eq!(gap_se(Some(3.0), None), None);

        let e = Eval {
            kimg: 1.0,
            step: None,
            queries: None,
            sigma: vec![0.01, 0.02, 1.0, 50.0],
            jstar: vec![Some(0.1), Some(0.2), Some(0.5), None],
            jstar_se: vec![Some(0.03), Some(0.05), Some(0.0), Some(0.1)],
            sigma_star: None,
            raw: LossSeries {
                loss: vec![Some(0.2), Some(0.4), Some(0.6), Some(1.0)],
                se: vec![Some(0.04), Some(0.12), None, Some(0.1)],
            },
            ema: LossSeries::default(),
            test_ema: None,
        };
        let g = e.gaps(&e.raw);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(g[0].unwrap().gap, 0.1) && close(g[0].unwrap().se.unwrap(), 0.05));
        assert!(close(g[1].unwrap().gap, 0.2) && close(g[1].unwrap().se.unwrap(), 0.13));
        assert!(close(g[2].unwrap().gap, 0.1) && g[2].unwrap().se.is_none());
        assert!(g[3].is_none()); // no J*
        assert!(e.gaps(&e.ema).iter().all(Option::is_none));

        // Regions from stats bins at 0.01, 0.02 | 1, 2 | 40, 60: the eval σ 0.01 and 0.02 fall
        // in the low region, 1.0 in the middle, 50 in the high one (no J* there).
        let bins: Vec<Bin> = [0.01, 0.02, 1.0, 2.0, 40.0, 60.0]
            .iter()
            .map(|&s| Bin {
                sigma: s,
                n: None,
                loss: None,
                loss_se: None,
                jstar: None,
            })
            .collect();
        let r = e.region_gaps(&e.raw, &bins);
        assert!(close(r[0].unwrap().gap, 0.15) && close(r[0].unwrap().se.unwrap(), 0.09));
        assert!(close(r[1].unwrap().gap, 0.1) && r[1].unwrap().se.is_none());
        assert!(r[2].is_none());
    }
}
