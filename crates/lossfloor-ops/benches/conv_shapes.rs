//! Times `lossfloor_ops::conv2d` (inference: no graph, bias fused) on a list of convolution
//! shapes, one JSON object per line in and out, for scripts/bench-conv. Median of repeats
//! after one warm-up call. Grouped convolutions (EDM's resampling filters) are skipped:
//! lossfloor resamples with its own ops, not convolutions.
//! Usage: cargo bench -p lossfloor-ops --bench conv_shapes -- SHAPES.jsonl [REPEATS]
//! where each line has "x": [N,C,H,W], "w": [O,C,kh,kw], "stride", "pad", "groups", "bias".

use std::time::Instant;

use candle_core::{Device, Tensor};

/// Ends the run with a message on stderr and exit status 1.
fn fail(msg: String) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}

/// The shape fields of one input line, checked.
fn parse_line(v: &serde_json::Value) -> Result<(Vec<usize>, Vec<usize>, usize, usize), String> {
    let dims = |k: &str| -> Result<Vec<usize>, String> {
        let d: Option<Vec<usize>> = v[k]
            .as_array()
            .map(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .and_then(|d: Option<Vec<usize>>| d.filter(|d| d.len() == 4));
        d.ok_or_else(|| format!("\"{k}\" is not a list of 4 non-negative integers"))
    };
    let int = |k: &str| -> Result<usize, String> {
        v[k].as_u64()
            .map(|d| d as usize)
            .ok_or_else(|| format!("\"{k}\" is not a non-negative integer"))
    };
    Ok((dims("x")?, dims("w")?, int("stride")?, int("pad")?))
}

fn main() {
    lossfloor_ops::keep_freed_memory();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(path) = args.first() else {
        eprintln!("usage: conv_shapes SHAPES.jsonl [REPEATS]");
        std::process::exit(2);
    };
    let repeats: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| fail(format!("reading {path}: {e}")));
    let dev = Device::Cpu;
    for (i, line) in text.lines().enumerate() {
        if !line.trim_start().starts_with('{') {
            continue;
        }
        let at = |e: String| format!("{path}, line {}: {e}", i + 1);
        let mut v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| fail(at(e.to_string())));
        let (xs, ws, stride, pad) = parse_line(&v).unwrap_or_else(|e| fail(at(e)));
        if v["groups"].as_u64() != Some(1) {
            continue;
        }
        let x = Tensor::randn(0f32, 1.0, xs.as_slice(), &dev).unwrap();
        let w = (Tensor::randn(0f32, 1.0, ws.as_slice(), &dev).unwrap() * 0.05).unwrap();
        let b = Tensor::randn(0f32, 1.0, ws[0], &dev).unwrap();
        let bias = v["bias"].as_bool().unwrap_or(true).then_some(&b);
        // The warm-up call also checks the shapes (the timed calls then cannot fail).
        lossfloor_ops::conv2d(&x, &w, bias, stride, pad)
            .unwrap_or_else(|e| fail(at(e.to_string())));
        let run = || {
            lossfloor_ops::conv2d(&x, &w, bias, stride, pad).unwrap();
        };
        let mut times: Vec<f64> = (0..repeats.max(1))
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        v["lossfloor_ms"] = serde_json::json!(times[times.len() / 2]);
        println!("{v}");
    }
}
