//! The fast sampling path (issue 19) against the path before it, on a small DDPM++-style
//! SongUNet with attention, class labels and weights that make every layer matter:
//!
//! - the fused sampler ([`sample`] on the CPU) equals the candle composition
//!   ([`sample_composed`]) bit for bit, deterministic, stochastic, Euler and guided;
//! - splitting a batch across threads by images gives the one-pass output to round-off;
//! - the whole fast path (inference copy with fused inference kernels, image split, fused
//!   sampler) gives the previous path's samples (network with autograd-tracked weights, so
//!   the composed attention and separate bias adds, and the composed sampler) to float32
//!   round-off.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lossfloor_nets::checkpoint::{varmap_tensors, NetworkSpec, PrecondSpec};
use lossfloor_nets::{Network, SongUNetConfig};
use lossfloor_sampler::image_split::forward_parts;
use lossfloor_sampler::net_denoiser::network_denoiser;
use lossfloor_sampler::{
    sample, sample_composed, Denoiser, GuidedDenoiser, HeunConfig, SeedRng, Solver,
};

const CLASSES: usize = 3;

fn spec() -> NetworkSpec {
    NetworkSpec::SongUNet(SongUNetConfig {
        label_dim: CLASSES,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![4],
        ..SongUNetConfig::new(8, 3, 3)
    })
}

/// The network with every tensor set by a formula of its index (EDM's initialisation
/// zeroes the blocks' last convolutions, which would hide most layers from the output).
fn network() -> (Box<dyn Network>, VarMap) {
    let varmap = VarMap::new();
    let net = spec().build(&varmap, &Device::Cpu, 0).unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let dims = var.as_tensor().dims().to_vec();
        let fan_in: usize = dims[1..].iter().product::<usize>().max(1);
        let v: Vec<f32> = (0..var.as_tensor().elem_count())
            .map(|i| {
                let s = (0.37 * i as f64 + 0.61 * k as f64).sin();
                let v = if dims.len() >= 2 {
                    1.5 * s / (fan_in as f64).sqrt()
                } else if name.contains("norm") && name.ends_with("weight") {
                    1.0 + 0.2 * s
                } else {
                    0.2 * s
                };
                v as f32
            })
            .collect();
        var.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
            .unwrap();
    }
    drop(data);
    (net, varmap)
}

/// An inference copy (detached tensors, no autograd graph) of `varmap`'s network.
fn inference_copy(varmap: &VarMap) -> Box<dyn Network> {
    let tensors = varmap_tensors(varmap)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    spec().build_inference(tensors, &Device::Cpu).unwrap()
}

fn precond() -> PrecondSpec {
    PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    }
}

fn labels(n: usize) -> Tensor {
    let classes: Vec<usize> = (0..n).map(|i| i % CLASSES).collect();
    lossfloor_sampler::one_hot(&classes, CLASSES, &Device::Cpu).unwrap()
}

/// The signature of [`sample`] and [`sample_composed`].
type Sampler = fn(
    &dyn Denoiser,
    &Tensor,
    Option<&Tensor>,
    &HeunConfig,
    &mut dyn FnMut(&[usize]) -> candle_core::Result<Tensor>,
) -> lossfloor_sampler::Result<Tensor>;

/// Samples of seeds 0..n with `sampler`, churn noise from the seeds' own streams.
fn run(sampler: Sampler, d: &dyn Denoiser, cfg: &HeunConfig, n: usize) -> Vec<f32> {
    let dev = Device::Cpu;
    let seeds: Vec<u64> = (0..n as u64).collect();
    let mut rng = SeedRng::new(&seeds);
    let latents = rng.randn(&[3, 8, 8], &dev).unwrap();
    let mut noise = |s: &[usize]| rng.randn_like(s, &dev);
    let x = sampler(d, &latents, Some(&labels(n)), cfg, &mut noise).unwrap();
    assert_eq!(x.dims(), &[n, 3, 8, 8]);
    x.flatten_all().unwrap().to_vec1().unwrap()
}

fn configs() -> Vec<(&'static str, HeunConfig)> {
    let base = HeunConfig {
        num_steps: 6,
        ..HeunConfig::default()
    };
    vec![
        ("deterministic Heun", base),
        (
            "stochastic Heun",
            HeunConfig {
                s_churn: 30.0,
                s_min: 0.05,
                s_max: 50.0,
                s_noise: 1.007,
                ..base
            },
        ),
        (
            "Euler",
            HeunConfig {
                solver: Solver::Euler,
                ..base
            },
        ),
    ]
}

#[test]
fn fused_sampler_equals_composed_sampler_bit_for_bit() {
    let (_, varmap) = network();
    let net = inference_copy(&varmap);
    let d = network_denoiser(net.as_ref(), &precond(), 3).unwrap();
    let guided = GuidedDenoiser::new(&d, 1.8);
    for (what, cfg) in configs() {
        let fused = run(sample, &d, &cfg, 5);
        let composed = run(sample_composed, &d, &cfg, 5);
        assert!(fused.iter().all(|v| v.is_finite()), "{what}");
        assert_eq!(fused, composed, "{what}");
        // A denoiser without the preconditioned form takes the pass over D itself.
        let fused = run(sample, &guided, &cfg, 4);
        let composed = run(sample_composed, &guided, &cfg, 4);
        assert_eq!(fused, composed, "{what}, guided");
    }
}

#[test]
fn image_split_matches_one_pass() {
    let (_, varmap) = network();
    let net = inference_copy(&varmap);
    let x = Tensor::randn(0f32, 1.0, (7, 3, 8, 8), &Device::Cpu).unwrap();
    let l = labels(7);
    let one = forward_parts(net.as_ref(), &x, 0.3, Some(&l), 1).unwrap();
    let scale = one
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(scale > 0.1, "the network output is not trivial: {scale}");
    for parts in [2, 3, 7, 20] {
        let split = forward_parts(net.as_ref(), &x, 0.3, Some(&l), parts).unwrap();
        let diff = (&split - &one)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-6 * scale, "{parts} parts: {diff}");
    }
}

#[test]
fn fast_path_matches_the_previous_path() {
    let (tracked, varmap) = network();
    let fast_net = inference_copy(&varmap);
    let old = network_denoiser(tracked.as_ref(), &precond(), 3).unwrap();
    let new = network_denoiser(fast_net.as_ref(), &precond(), 3).unwrap();
    for (what, cfg) in configs() {
        let a = run(sample_composed, &old, &cfg, 6);
        let b = run(sample, &new, &cfg, 6);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 0.5, "{what}: samples are not trivial ({scale})");
        // Float32 round-off of the fused kernels (softmax, bias in the GEMM), grown over the
        // steps by this deliberately large-weighted network; a wrong formula is O(1).
        assert!(
            diff <= 1e-4 * scale,
            "{what}: max difference {diff} of {scale}"
        );
        eprintln!("{what}: max |fast − previous| = {diff:.2e} (max |x| {scale:.2})");
    }
}
