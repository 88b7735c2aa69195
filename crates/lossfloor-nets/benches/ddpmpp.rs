//! DDPM++ (EDM's CIFAR-10 SongUNet, 55.7 M parameters) forward and forward+backward images/s
//! on this machine; median of repeats. Prints one JSON line for scripts/bench-ddpmpp.
//! Usage: cargo bench -p lossfloor-nets --bench ddpmpp -- [BATCH] [REPEATS]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lossfloor_nets::{Network, SongUNet, SongUNetConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // As the lossfloor binary does (lossfloor_ops::alloc).
    lossfloor_ops::keep_freed_memory();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let batch = args.first().copied().unwrap_or(32);
    let repeats = args.get(1).copied().unwrap_or(3);
    let dev = Device::Cpu;
    let cfg = SongUNetConfig::ddpmpp_cifar10();
    let varmap = VarMap::new();
    let net = SongUNet::new(&cfg, &varmap, &dev, 0).expect("DDPM++ builds");
    let params = Network::num_parameters(&net);
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), &dev).unwrap();
    let noise = (Tensor::randn(0f32, 1.2, batch, &dev).unwrap() - 1.2)
        .unwrap()
        .affine(0.25, 0.0)
        .unwrap();
    let aug = Tensor::zeros((batch, 9), DType::F32, &dev).unwrap();
    let fwd = || {
        net.forward(&x, &noise, None, Some(&aug), false).unwrap();
    };
    let fwd_bwd = || {
        let y = net.forward(&x, &noise, None, Some(&aug), true).unwrap();
        let grads = y.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        assert!(grads.get(&Network::parameters(&net)[0].1).is_some());
    };
    let time = |f: &dyn Fn()| {
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
    };
    let (tf, tb) = (time(&fwd), time(&fwd_bwd));
    println!(
        "{{\"impl\": \"lossfloor\", \"threads\": {}, \"batch\": {batch}, \"params\": {params}, \"fwd_s\": {tf:.4}, \"fwd_img_s\": {:.3}, \"fwd_bwd_s\": {tb:.4}, \"fwd_bwd_img_s\": {:.3}}}",
        rayon_threads(),
        batch as f64 / tf,
        batch as f64 / tb
    );
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
