//! DDPM++ (EDM's CIFAR-10 SongUNet, 55.7 M parameters) training-step and Heun-sampling
//! throughput on a device; median of repeats; one JSON line (read by scripts/gpu-check.sh).
//!
//! The training step is the one scripts/ref_ddpmpp_torch.py times: EDM loss
//! (D = c_skip·y + c_out·F(c_in·y; ln σ/4), weight (σ²+σ_d²)/(σσ_d)², σ log-normal), backward,
//! our Adam. Sampling is EDM's deterministic Heun sampler, 18 steps = 35 network evaluations.
//!
//! Usage: cargo bench -p lossfloor-train --bench step -- [--device cuda] [--batch 128]
//!        [--repeats 5] [--sample-batch 256 (0: no sampling)] [--sample-repeats 2]
//!        [--no-sync-phases]
//!        cargo bench -p lossfloor-train --bench step -- [--device cuda] --optimizer [--repeats 5]
//! (`--optimizer`: only the trainer's work after the backward pass: nan_to_num, gradient norm,
//! Adam, EMA.)
//!        cargo bench -p lossfloor-train --bench step -- --device cuda --probe BATCH
//! (`--probe`: device memory after an inference forward, a tracked forward and its backward,
//! and the time of one 256→256 3×3 convolution each way through candle's kernels, then
//! forward and forward + backward through `lossfloor_ops::conv2d`.)

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use candle_nn::VarMap;
use lossfloor_nets::checkpoint::{varmap_tensors, NetworkSpec, PrecondSpec};
use lossfloor_nets::{Network, SongUNet, SongUNetConfig};
use lossfloor_sampler::net_denoiser::network_denoiser;
use lossfloor_sampler::{sample, HeunConfig, SeedRng};
use lossfloor_train::adam::Adam;
use lossfloor_train::config::OptimizerConfig;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Waits for queued device work, so wall-clock timings include it.
fn sync(t: &Tensor) {
    t.flatten_all()
        .unwrap()
        .narrow(0, 0, 1)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
}

/// Median seconds of `repeats` training steps (after one warm-up step) at `batch`.
#[allow(clippy::too_many_arguments)]
fn time_train_steps(
    sync_phases: bool,
    net: &SongUNet,
    vars: &[Var],
    adam: &mut Adam,
    device: &Device,
    batch: usize,
    repeats: usize,
) -> anyhow::Result<f64> {
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), device)?;
    let aug = Tensor::zeros((batch, 9), DType::F32, device)?;
    let sd = 0.5f64;
    let mut train_step = |report: bool| -> anyhow::Result<()> {
        let mib0 = if report { used_mib(device) } else { 0.0 };
        // σ = exp(1.2·z − 1.2), EDM's training distribution.
        let sigma = Tensor::randn(0f32, 1.0, (batch, 1, 1, 1), device)?
            .affine(1.2, -1.2)?
            .exp()?;
        let s2 = sigma.sqr()?;
        let s2_sd2 = s2.affine(1.0, sd * sd)?;
        let c_skip = s2_sd2.recip()?.affine(sd * sd, 0.0)?;
        let c_out = (&sigma * s2_sd2.sqrt()?.recip()?)?.affine(sd, 0.0)?;
        let c_in = s2_sd2.sqrt()?.recip()?;
        let weight = (&s2_sd2 / s2.affine(sd * sd, 0.0)?)?;
        let y = (&x + Tensor::randn_like(&x, 0.0, 1.0)?.broadcast_mul(&sigma)?)?;
        let c_noise = sigma.log()?.affine(0.25, 0.0)?.flatten_all()?;
        let f = net.forward(&y.broadcast_mul(&c_in)?, &c_noise, None, Some(&aug), true)?;
        let d = (y.broadcast_mul(&c_skip)? + f.broadcast_mul(&c_out)?)?;
        let loss = ((d - &x)?.sqr()?.broadcast_mul(&weight)?)
            .sum_all()?
            .affine(1.0 / batch as f64, 0.0)?;
        let mib_fwd = if report { used_mib(device) } else { 0.0 };
        let grads = loss.backward()?;
        let mib_bwd = if report { used_mib(device) } else { 0.0 };
        let g = vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("a weight has no gradient"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        adam.step(vars, &g, 1e-4)?;
        sync(vars[0].as_tensor());
        if report {
            eprintln!(
                "{{\"step_memory_mib\": {{\"batch\": {batch}, \"start\": {mib0:.0}, \"after_forward\": {mib_fwd:.0}, \"after_backward\": {mib_bwd:.0}, \"after_adam\": {:.0}}}}}",
                used_mib(device)
            );
        }
        Ok(())
    };
    train_step(true)?; // warm-up (kernel loading, allocator), with a memory report
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        train_step(sync_phases)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Device memory in use (MiB) after the queued work, as the driver reports it (allocations
/// plus the memory pool's reserve); 0 on the CPU.
#[allow(unused_variables)]
fn used_mib(device: &Device) -> f64 {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let stream = d.cuda_stream();
        stream.synchronize().expect("sync");
        let (free, total) = stream.context().mem_get_info().expect("mem_get_info");
        return (total - free) as f64 / 1048576.0;
    }
    0.0
}

/// Milliseconds of `f` (median of 5 after a warm-up), synchronised.
fn time_ms(device: &Device, f: &dyn Fn() -> Tensor) -> f64 {
    sync(&f());
    let mut t = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let y = f();
        sync(&y);
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let _ = device;
    median(t)
}

/// `--probe B`: where the memory of a DDPM++ step goes at batch B, and what one 3×3
/// convolution (256 → 256 channels, 32×32, candle's CUDA path) costs in each direction.
fn probe(device: &Device, batch: usize) {
    let cfg = SongUNetConfig::ddpmpp_cifar10();
    let varmap = VarMap::new();
    let net = SongUNet::new(&cfg, &varmap, device, 0).expect("DDPM++ builds");
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), device).unwrap();
    let noise = Tensor::zeros(batch, DType::F32, device).unwrap();
    let aug = Tensor::zeros((batch, 9), DType::F32, device).unwrap();
    let m_weights = used_mib(device);
    let frozen: std::collections::HashMap<String, Tensor> = varmap_tensors(&varmap)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    let inference = NetworkSpec::SongUNet(cfg.clone())
        .build_from(VarBuilder::from_tensors(frozen, DType::F32, device))
        .unwrap();
    let y = inference
        .forward(&x, &noise, None, Some(&aug), false)
        .unwrap();
    let m_inference = used_mib(device);
    drop(y);
    let y = net.forward(&x, &noise, None, Some(&aug), false).unwrap();
    let m_tracked = used_mib(device);
    let grads = y.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    let m_backward = used_mib(device);
    drop(grads);
    drop(y);
    let m_after = used_mib(device);

    let xc = Tensor::randn(0f32, 1.0, (batch, 256, 32, 32), device).unwrap();
    let w = candle_core::Var::randn(0f32, 0.02, (256, 256, 3, 3), device).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (batch, 256, 32, 32), device).unwrap();
    let fwd = time_ms(device, &|| xc.conv2d(&w, 1, 1, 1, 1).unwrap());
    let dx_transpose = time_ms(device, &|| dy.conv_transpose2d(&w, 1, 0, 1, 1).unwrap());
    let w_flip = w
        .as_tensor()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap()
        .flip(&[2, 3])
        .unwrap()
        .contiguous()
        .unwrap();
    let dx_conv = time_ms(device, &|| dy.conv2d(&w_flip, 1, 1, 1, 1).unwrap());
    // The two routes to dx are the same function: their largest difference, relative.
    let (a, b) = (
        dy.conv_transpose2d(&w, 1, 0, 1, 1).unwrap(),
        dy.conv2d(&w_flip, 1, 1, 1, 1).unwrap(),
    );
    let dx_rel_diff = ((&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        / a.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()) as f64;
    let dw = time_ms(device, &|| {
        xc.transpose(0, 1)
            .unwrap()
            .conv2d(&dy.transpose(0, 1).unwrap(), 1, 1, 1, 1)
            .unwrap()
    });
    // The same layer through lossfloor_ops::conv2d (cuDNN for all three passes in a `cudnn`
    // build, unless LOSSFLOOR_CUDA_CONV=candle): forward alone, then forward + backward.
    let ops_fwd = time_ms(device, &|| {
        lossfloor_ops::conv2d(&xc, w.as_tensor(), None, 1, 1).unwrap()
    });
    let xv = Var::from_tensor(&xc).unwrap();
    let ops_fwd_bwd = time_ms(device, &|| {
        let y = lossfloor_ops::conv2d(&xv, w.as_tensor(), None, 1, 1).unwrap();
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(xv.as_tensor()).unwrap().clone()
    });
    let route = std::env::var("LOSSFLOOR_CUDA_CONV").unwrap_or_else(|_| "default".into());
    println!(
        "{{\"probe_batch\": {batch}, \"mib_weights\": {m_weights:.0}, \"mib_after_inference_fwd\": {m_inference:.0}, \"mib_after_tracked_fwd\": {m_tracked:.0}, \"mib_after_backward\": {m_backward:.0}, \"mib_after_drop\": {m_after:.0}, \"conv_fwd_ms\": {fwd:.2}, \"conv_dx_conv_transpose2d_ms\": {dx_transpose:.2}, \"conv_dx_as_conv2d_ms\": {dx_conv:.2}, \"conv_dw_ms\": {dw:.2}, \"dx_routes_max_rel_diff\": {dx_rel_diff:.1e}, \"lossfloor_cuda_conv\": \"{route}\", \"ops_conv_fwd_ms\": {ops_fwd:.2}, \"ops_conv_fwd_bwd_ms\": {ops_fwd_bwd:.2}}}"
    );
}

/// `--optimizer`: the trainer's work after the backward pass, on DDPM++'s 55.7 M weights
/// with random gradients: nan_to_num of each gradient, the global gradient norm, Adam and the
/// EMA update (lossfloor-train's `round`); median seconds of `repeats` after one warm-up.
fn time_optimizer(vars: &[Var], device: &Device, repeats: usize) -> f64 {
    let grads: Vec<Tensor> = vars
        .iter()
        .map(|v| Tensor::randn(0f32, 1e-3, v.shape(), device).unwrap())
        .collect();
    let mut adam = Adam::new(vars, &OptimizerConfig::default()).expect("Adam");
    let mut ema = lossfloor_train::ema::Ema::new(vars).expect("EMA");
    let mut once = || {
        let g: Vec<Tensor> = grads
            .iter()
            .map(|g| lossfloor_train::adam::nan_to_num(g).unwrap())
            .collect();
        let norm = lossfloor_train::adam::global_norm(&g).unwrap();
        adam.step(vars, &g, 1e-4).unwrap();
        ema.update(vars, 0.999).unwrap();
        sync(vars[0].as_tensor());
        norm
    };
    once();
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                once();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    // As the lossfloor binary does (lossfloor_ops::alloc).
    lossfloor_ops::keep_freed_memory();
    let device = lossfloor_ops::open_device(&arg("--device", "cpu")).expect("device opens");
    if let Ok(b) = arg("--probe", "").parse::<usize>() {
        probe(&device, b);
        return;
    }
    let batch: usize = arg("--batch", "128").parse().expect("--batch N");
    let repeats: usize = arg("--repeats", "5").parse().expect("--repeats N");
    let sample_batch: usize = arg("--sample-batch", "256")
        .parse()
        .expect("--sample-batch N");
    let sample_repeats: usize = arg("--sample-repeats", "2")
        .parse()
        .expect("--sample-repeats N");

    let cfg = SongUNetConfig::ddpmpp_cifar10();
    let varmap = VarMap::new();
    let net = SongUNet::new(&cfg, &varmap, &device, 0).expect("DDPM++ builds");
    let params = Network::num_parameters(&net);
    let vars: Vec<Var> = net
        .trainable_vars(&varmap)
        .expect("vars")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let mut adam = Adam::new(&vars, &OptimizerConfig::default()).expect("Adam");

    // Wait for the GPU after the forward and backward passes of every step, as the trainer
    // does (without, memory grows step by step: see lossfloor-train's `round`).
    // --no-sync-phases measures without.
    if std::env::args().any(|a| a == "--optimizer") {
        let s = time_optimizer(&vars, &device, repeats);
        println!(
            "{{\"params\": {params}, \"tensors\": {}, \"optimizer_s\": {s:.4}}}",
            vars.len()
        );
        return;
    }
    let sync_phases = !std::env::args().any(|a| a == "--no-sync-phases");
    let step_s = time_train_steps(sync_phases, &net, &vars, &mut adam, &device, batch, repeats)
        .unwrap_or_else(|e| {
            eprintln!("bench-step: training step at batch {batch} failed: {e}");
            std::process::exit(3)
        });

    let precond = PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    };
    // Sampling needs no gradients: an inference copy built from detached tensors, so candle
    // does not keep every intermediate alive for a backward pass that never comes.
    let frozen: std::collections::HashMap<String, Tensor> = varmap_tensors(&varmap)
        .expect("weights")
        .into_iter()
        .map(|(name, t)| (name, t.detach()))
        .collect();
    let inference = NetworkSpec::SongUNet(cfg.clone())
        .build_from(VarBuilder::from_tensors(frozen, DType::F32, &device))
        .expect("inference copy builds");
    let denoiser = network_denoiser(inference.as_ref(), &precond, 3).unwrap();
    let heun = HeunConfig::default(); // 18 steps, 35 evaluations
    let seeds: Vec<u64> = (0..sample_batch as u64).collect();
    let run_sampler = || -> anyhow::Result<()> {
        let mut rng = SeedRng::new(&seeds);
        let latents = rng.randn(&[3, 32, 32], &device)?;
        let mut noise = |shape: &[usize]| rng.randn_like(shape, &device);
        let out = sample(&denoiser, &latents, None, &heun, &mut noise)?;
        sync(&out);
        Ok(())
    };
    let sample_s = if sample_batch == 0 {
        Err(anyhow::anyhow!("skipped (--sample-batch 0)"))
    } else {
        run_sampler()
    }
    .and_then(|_| {
        let mut times = Vec::new();
        for _ in 0..sample_repeats {
            let t = Instant::now();
            run_sampler()?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(median(times))
    });
    let (sample_s, sample_img_s) = match sample_s {
        Ok(t) => (format!("{t:.3}"), format!("{:.2}", sample_batch as f64 / t)),
        Err(_) if sample_batch == 0 => ("null".into(), "null".into()),
        Err(e) => {
            eprintln!("bench-step: sampling at batch {sample_batch} failed: {e}");
            ("null".into(), "null".into())
        }
    };
    println!(
        "{{\"impl\": \"lossfloor\", \"device\": \"{:?}\", \"params\": {params}, \"batch\": {batch}, \"train_step_s\": {step_s:.4}, \"train_step_img_s\": {:.2}, \"sample_batch\": {sample_batch}, \"nfe\": {}, \"sample_s\": {sample_s}, \"sample_img_s\": {sample_img_s}}}",
        device.location(),
        batch as f64 / step_s,
        2 * heun.num_steps - 1,
    );
}
