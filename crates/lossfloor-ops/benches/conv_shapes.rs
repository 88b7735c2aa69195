//! Times `lossfloor_ops::conv2d` (inference: no graph, bias fused) on a list of convolution
//! shapes, one JSON object per line in and out, for scripts/bench-conv. Median of repeats
//! after one warm-up call. Grouped convolutions (EDM's resampling filters) are skipped:
//! lossfloor resamples with its own ops, not convolutions.
//! Usage: cargo bench -p lossfloor-ops --bench conv_shapes -- SHAPES.jsonl [REPEATS]
//! where each line has "x": [N,C,H,W], "w": [O,C,kh,kw], "stride", "pad", "groups", "bias".

use std::time::Instant;

use candle_core::{Device, Tensor};

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
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("error: reading {path}: {e}");
        std::process::exit(1);
    });
    let dev = Device::Cpu;
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        let dims = |k: &str| -> Vec<usize> {
            v[k].as_array()
                .unwrap_or_else(|| panic!("missing {k}"))
                .iter()
                .map(|d| d.as_u64().expect("a dimension") as usize)
                .collect()
        };
        let (xs, ws) = (dims("x"), dims("w"));
        let (stride, pad) = (
            v["stride"].as_u64().unwrap() as usize,
            v["pad"].as_u64().unwrap() as usize,
        );
        if v["groups"].as_u64() != Some(1) {
            continue;
        }
        let x = Tensor::randn(0f32, 1.0, xs.as_slice(), &dev).unwrap();
        let w = (Tensor::randn(0f32, 1.0, ws.as_slice(), &dev).unwrap() * 0.05).unwrap();
        let b = Tensor::randn(0f32, 1.0, ws[0], &dev).unwrap();
        let bias = v["bias"].as_bool().unwrap_or(true).then_some(&b);
        let run = || {
            lossfloor_ops::conv2d(&x, &w, bias, stride, pad).unwrap();
        };
        run();
        let mut times: Vec<f64> = (0..repeats.max(1))
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let mut out = v.clone();
        out["lossfloor_ms"] = serde_json::json!(times[times.len() / 2]);
        println!("{out}");
    }
}
