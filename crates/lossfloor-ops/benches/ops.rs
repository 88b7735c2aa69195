//! Times each op at DDPM++ CIFAR-10 shapes (batch 32), ours and candle's own, forward and
//! forward+backward; median of repeats. Prints one JSON object per line for scripts/bench-ops.
//! Usage: cargo bench -p lossfloor-ops --bench ops -- [REPEATS]

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use lossfloor_ops::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn report(name: &str, impl_name: &str, batch: usize, fwd: f64, fwd_bwd: f64) {
    println!(
        "{{\"op\": \"{name}\", \"impl\": \"{impl_name}\", \"batch\": {batch}, \"fwd_s\": {fwd:.6}, \"fwd_bwd_s\": {fwd_bwd:.6}, \"fwd_img_s\": {:.1}, \"fwd_bwd_img_s\": {:.1}}}",
        batch as f64 / fwd,
        batch as f64 / fwd_bwd
    );
}

type Op = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

fn bench(name: &str, impl_name: &str, repeats: usize, x: &Tensor, a: &Tensor, b: &Tensor, op: Op) {
    let (xv, av, bv) = (
        Var::from_tensor(x).unwrap(),
        Var::from_tensor(a).unwrap(),
        Var::from_tensor(b).unwrap(),
    );
    let fwd = time(repeats, || {
        op(x, a, b).unwrap();
    });
    let fwd_bwd = time(repeats, || {
        let y = op(xv.as_tensor(), av.as_tensor(), bv.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(xv.as_tensor()).is_some());
    });
    report(name, impl_name, x.dims()[0], fwd, fwd_bwd);
}

fn main() {
    // As the lossfloor binary does (lossfloor_ops::alloc).
    lossfloor_ops::keep_freed_memory();
    let repeats = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let dev = Device::Cpu;
    let n = 32;
    for &(c, hw) in &[(128usize, 32usize), (256, 16)] {
        let x = Tensor::randn(0f32, 1.0, (n, c, hw, hw), &dev).unwrap();
        let w = (Tensor::randn(0f32, 1.0, (c, c, 3, 3), &dev).unwrap() * 0.03).unwrap();
        let b = Tensor::zeros(c, DType::F32, &dev).unwrap();
        let name = format!("conv3x3 {c}ch {hw}x{hw}");
        bench(&name, "lossfloor", repeats, &x, &w, &b, |x, w, b| {
            conv2d(x, w, Some(b), 1, 1)
        });
        bench(
            &format!("{name} no bias"),
            "lossfloor",
            repeats,
            &x,
            &w,
            &b,
            |x, w, _| conv2d(x, w, None, 1, 1),
        );
        bench(&name, "candle", repeats.min(3), &x, &w, &b, |x, w, b| {
            conv2d_reference(x, w, Some(b), 1, 1)
        });
    }
    // DDPM++'s attention (16×16 tokens, 256 channels, one head) and its 2× resampling of
    // 256-channel maps.
    let qkv: Vec<Tensor> = (0..3)
        .map(|_| Tensor::randn(0f32, 1.0, (n, 256, 256), &dev).unwrap())
        .collect();
    bench(
        "attention 256ch 16x16",
        "lossfloor",
        repeats,
        &qkv[0],
        &qkv[1],
        &qkv[2],
        attention,
    );
    let x16 = Tensor::randn(0f32, 1.0, (n, 256, 16, 16), &dev).unwrap();
    let x32 = Tensor::randn(0f32, 1.0, (n, 256, 32, 32), &dev).unwrap();
    bench(
        "up2x nearest 256ch 16->32",
        "lossfloor",
        repeats,
        &x16,
        &x16,
        &x16,
        |x, _, _| upsample2x_nearest(x),
    );
    bench(
        "down2x box 256ch 32->16",
        "lossfloor",
        repeats,
        &x32,
        &x32,
        &x32,
        |x, _, _| downsample2x_box(x),
    );

    let x = Tensor::randn(0f32, 1.0, (n, 128, 32, 32), &dev).unwrap();
    let g = Tensor::ones(128, DType::F32, &dev).unwrap();
    let b = Tensor::zeros(128, DType::F32, &dev).unwrap();
    bench(
        "groupnorm32+silu 128ch 32x32",
        "lossfloor",
        repeats,
        &x,
        &g,
        &b,
        |x, g, b| group_norm(x, 32, g, b, 1e-6, true),
    );
    bench(
        "groupnorm32+silu 128ch 32x32",
        "candle",
        repeats.min(3),
        &x,
        &g,
        &b,
        |x, g, b| group_norm_reference(x, 32, g, b, 1e-6, true),
    );
}
