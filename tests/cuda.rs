//! CPU vs CUDA agreement: the estimator, the denoiser of each network, a training run and
//! the Heun sampler give the same numbers on both devices, to float32 tolerance.
//!
//! Built only with the `cuda` feature (scripts/build-cuda.sh packs this test binary as
//! dist/cuda/cuda-tests) and run on a GPU machine by scripts/gpu-check.sh. Each test builds
//! its inputs on the CPU, copies them to the GPU, runs the same code on both, and compares.
//!
//! Tolerances: every path is float32 on both devices (candle's CUDA matmuls are cuBLAS
//! SGEMM without TF32), so results differ only by summation order: relative errors of
//! ~1e-6 per op, growing with depth. We allow 1e-4 relative (L2) for network outputs, 1e-3
//! relative plus 1e-5 × data variance for J*(σ) (the sum of many exponentials at large
//! σ, and a difference of two nearly equal moments at small σ), and 2e-4 absolute on weights
//! after training steps of size ~1e-2.
#![cfg(feature = "cuda")]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lossfloor_nets::checkpoint::{varmap_tensors, NetworkSpec, PrecondSpec};
use lossfloor_nets::{DhariwalUNetConfig, DiTConfig, EmbeddingType, EncoderType, SongUNetConfig};
use lossfloor_optimal::{estimate_exact, estimate_exact_on_device, DenseRows, MeanStderr};
use lossfloor_sampler::net_denoiser::network_denoiser;
use lossfloor_sampler::{sample, HeunConfig, SeedRng};

/// One device for the whole test binary: tensors of two `Device::new_cuda(0)` calls are on
/// different candle devices and cannot be mixed.
fn gpu() -> Device {
    static GPU: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        Device::new_cuda(0)
            .expect("this test needs a CUDA GPU (run it through scripts/gpu-check.sh)")
    })
    .clone()
}

/// ‖a − b‖ / ‖b‖ over all elements, in f64.
fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let num = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let den = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    (num / den).sqrt()
}

/// A xorshift64 stream of uniform values in [−1, 1) from a non-zero seed.
fn uniform_stream(mut state: u64) -> impl FnMut() -> f64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// Clustered data: 6 centres in 48 dimensions plus small noise, so J*(σ) has a plateau, a
/// rise and saturation across the tested σ.
fn clustered(n: usize, d: usize) -> DenseRows {
    let mut uniform = uniform_stream(0x2545_F491_4F6C_DD1D);
    let centres: Vec<Vec<f64>> = (0..6)
        .map(|_| (0..d).map(|_| uniform()).collect())
        .collect();
    let values = (0..n)
        .flat_map(|i| {
            let c = centres[i % 6].clone();
            c.into_iter()
                .map(|v| (v + 0.05 * uniform()) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    DenseRows::new(values, d)
}

/// Small tiles and chunks (3000 rows in chunks of 700, tiles of 256 queries), so that the
/// fused op's running maximum from earlier chunks (`has_old`) and the rescaling across
/// chunks run on the GPU, both with the fused op and with its composed form.
#[test]
fn exact_estimator_agrees_across_chunks() {
    let data = clustered(3000, 48);
    let sigmas: Vec<f64> = (0..12).map(|i| 0.003 * 2f64.powi(i)).collect();
    let var = lossfloor_optimal::per_dim_variance(&data);
    let cpu = estimate_exact(&data, &sigmas, 600, 5, &|_| {});
    for fused in [true, false] {
        let dev = lossfloor_optimal::estimate_exact_on_device_tiled(
            &lossfloor_comm::SingleProcess,
            &data,
            &sigmas,
            600,
            5,
            &gpu(),
            256,
            700,
            fused,
            &|_| {},
        )
        .unwrap();
        for ((s, a), b) in sigmas.iter().zip(&dev).zip(&cpu) {
            let tol = 1e-3 * b.mean.abs() + 1e-5 * var;
            assert!(
                (a.mean - b.mean).abs() <= tol,
                "fused={fused} σ={s}: cuda {} vs cpu {}",
                a.mean,
                b.mean
            );
        }
    }
}

#[test]
fn exact_estimator_agrees_with_the_cpu_kernel() {
    let data = clustered(3000, 48);
    let sigmas: Vec<f64> = (0..12).map(|i| 0.003 * 2f64.powi(i)).collect();
    let var = lossfloor_optimal::per_dim_variance(&data);
    let cpu = estimate_exact(&data, &sigmas, 1500, 3, &|_| {});
    let dev = estimate_exact_on_device(&data, &sigmas, 1500, 3, &gpu(), &|_| {}).unwrap();
    for ((s, a), b) in sigmas.iter().zip(&dev).zip(&cpu) {
        let MeanStderr { mean: a, .. } = *a;
        let tol = 1e-3 * b.mean.abs() + 1e-5 * var;
        assert!(
            (a - b.mean).abs() <= tol,
            "σ={s}: cuda {a} vs cpu {}",
            b.mean
        );
    }
    assert!(
        cpu.last().unwrap().mean > 0.5 * var,
        "the σ range reaches saturation"
    );
}

fn ddpmpp() -> SongUNetConfig {
    SongUNetConfig {
        label_dim: 3,
        model_channels: 16,
        channel_mult: vec![1, 2, 2],
        num_blocks: 1,
        attn_resolutions: vec![8],
        ..SongUNetConfig::new(16, 3, 3)
    }
}

fn specs() -> Vec<(&'static str, NetworkSpec, bool)> {
    vec![
        ("ddpm++", NetworkSpec::SongUNet(ddpmpp()), true),
        (
            "ncsn++",
            NetworkSpec::SongUNet(SongUNetConfig {
                embedding_type: EmbeddingType::Fourier,
                channel_mult_noise: 2,
                encoder_type: EncoderType::Residual,
                resample_filter: vec![1.0, 3.0, 3.0, 1.0],
                ..ddpmpp()
            }),
            true,
        ),
        (
            "adm",
            NetworkSpec::Dhariwal(DhariwalUNetConfig {
                label_dim: 3,
                model_channels: 16,
                channel_mult: vec![1, 2],
                num_blocks: 1,
                attn_resolutions: vec![8],
                channels_per_head: 8,
                ..DhariwalUNetConfig::new(16, 3, 3)
            }),
            true,
        ),
        (
            "dit",
            NetworkSpec::DiT(DiTConfig {
                input_size: 16,
                patch_size: 2,
                in_channels: 3,
                hidden_size: 64,
                depth: 2,
                num_heads: 4,
                mlp_ratio: 4.0,
                class_dropout_prob: 0.1,
                num_classes: 3,
                learn_sigma: true,
            }),
            true,
        ),
    ]
}

/// The same network on the CPU and on the GPU, with the GPU's weights copied from the CPU's.
fn twin_networks(
    spec: &NetworkSpec,
) -> (
    VarMap,
    Box<dyn lossfloor_nets::Network>,
    VarMap,
    Box<dyn lossfloor_nets::Network>,
) {
    let cpu_vars = VarMap::new();
    let cpu_net = spec.build(&cpu_vars, &Device::Cpu, 5).unwrap();
    let gpu_vars = VarMap::new();
    let gpu_net = spec.build(&gpu_vars, &gpu(), 5).unwrap();
    let source: std::collections::HashMap<String, Tensor> =
        varmap_tensors(&cpu_vars).unwrap().into_iter().collect();
    for (name, var) in gpu_vars.data().lock().unwrap().iter() {
        var.set(&source[name].to_device(&gpu()).unwrap()).unwrap();
    }
    (cpu_vars, cpu_net, gpu_vars, gpu_net)
}

#[test]
fn every_network_denoiser_agrees() {
    let precond = PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    };
    for (name, spec, _) in specs() {
        let (_cv, cpu_net, _gv, gpu_net) = twin_networks(&spec);
        let x = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &Device::Cpu).unwrap();
        let labels = Tensor::new(
            &[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.], [1., 0., 0.]],
            &Device::Cpu,
        )
        .unwrap();
        let d_cpu = network_denoiser(cpu_net.as_ref(), &precond, 3).unwrap();
        let d_gpu = network_denoiser(gpu_net.as_ref(), &precond, 3).unwrap();
        for sigma in [0.01, 0.5, 20.0] {
            use lossfloor_sampler::Denoiser;
            let a = d_cpu.denoise(&x, sigma, Some(&labels)).unwrap();
            let b = d_gpu
                .denoise(
                    &x.to_device(&gpu()).unwrap(),
                    sigma,
                    Some(&labels.to_device(&gpu()).unwrap()),
                )
                .unwrap();
            let e = rel_l2(&b, &a);
            assert!(e < 1e-4, "{name} σ={sigma}: relative L2 difference {e:.2e}");
        }
    }
}

#[test]
fn heun_sampler_agrees() {
    let precond = PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    };
    let spec = NetworkSpec::SongUNet(SongUNetConfig {
        label_dim: 0,
        ..ddpmpp()
    });
    let (_cv, cpu_net, _gv, gpu_net) = twin_networks(&spec);
    let cfg = HeunConfig {
        num_steps: 6,
        ..HeunConfig::default()
    };
    let seeds = [0u64, 1, 2, 3];
    let run = |net: &dyn lossfloor_nets::Network, device: &Device| {
        let mut rng = SeedRng::new(&seeds);
        let latents = rng.randn(&[3, 16, 16], device).unwrap();
        let d = network_denoiser(net, &precond, 3).unwrap();
        let mut noise = |shape: &[usize]| rng.randn_like(shape, device);
        sample(&d, &latents, None, &cfg, &mut noise).unwrap()
    };
    let a = run(cpu_net.as_ref(), &Device::Cpu);
    let b = run(gpu_net.as_ref(), &gpu());
    let e = rel_l2(&b, &a);
    assert!(e < 1e-4, "Heun samples: relative L2 difference {e:.2e}");
}

fn train_config(curve: &Path, device: &str) -> lossfloor_train::Config {
    let text = format!(
        r#"
[data]
spec = "npy:unused.npy"
[network]
arch = "songunet"
img_resolution = 8
in_channels = 1
out_channels = 1
model_channels = 16
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = [4]
dropout = 0.1
[optimizer]
lr = 1e-2
rampup_kimg = 0
[ema]
halflife_kimg = 0.01
[train]
batch = 8
duration_kimg = 0.016
tick_kimg = 0.008
snapshot_ticks = 100
state_ticks = 1
seed = 7
device = "{device}"
[sample]
seeds = "0-3"
steps = 2
every_ticks = 0
[optimal_loss]
curve = "{}"
"#,
        curve.display()
    );
    lossfloor_train::Config::parse(&text, &[]).unwrap()
}

#[test]
fn training_steps_agree() {
    use lossfloor_train::state::{latest_state, load_state};
    let dir = tempfile::tempdir().unwrap();
    let curve_path = dir.path().join("curve.json");
    let points = (0..16)
        .map(|i| lossfloor_optimal::CurvePoint {
            sigma: 0.002 * (80.0f64 / 0.002).powf(i as f64 / 15.0),
            loss: 0.2 * (i as f64 / 15.0),
            stderr: 0.0,
            queries: 0,
        })
        .collect();
    lossfloor_optimal::Curve {
        dataset: lossfloor_optimal::DatasetInfo {
            spec: "toy".into(),
            n: 16,
            dim: 64,
            xflip: false,
            limit: None,
            conditional: false,
        },
        method: "exact".into(),
        params: Default::default(),
        data_variance: Some(0.2),
        points,
    }
    .save(&curve_path)
    .unwrap();
    let vals: Vec<f32> = (0..16 * 64)
        .map(|i| ((i as f32 * 0.731).sin() * 0.9).clamp(-1.0, 1.0))
        .collect();
    let data = lossfloor_data::Dataset::from_f32(
        "tiny".into(),
        lossfloor_data::ImageShape::new(1, 8, 8),
        vals,
        None,
        None,
    )
    .unwrap();
    let mut states = Vec::new();
    for device in ["cpu", "cuda"] {
        let run = dir.path().join(device);
        let cfg = train_config(&curve_path, device);
        lossfloor_train::train_with_dataset(
            cfg.clone(),
            data.clone(),
            &run,
            &lossfloor_train::Resume::No,
            false,
        )
        .unwrap();
        let names = lossfloor_train::Trainer::new(cfg, data.clone(), dir.path().join("names"))
            .unwrap()
            .names()
            .to_vec();
        let (t, meta) = load_state(
            &latest_state(&run).unwrap().unwrap(),
            &names,
            0,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(meta.step, 2, "{device}: two steps of 8 images");
        states.push(t);
    }
    let (cpu, cuda) = (&states[0], &states[1]);
    let init = lossfloor_train::Trainer::new(
        train_config(&curve_path, "cpu"),
        data,
        dir.path().join("init"),
    )
    .unwrap()
    .tensors();
    let mut moved = 0f32;
    let max_abs_diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    for ((a, b), w0) in cpu.net.iter().zip(&cuda.net).zip(&init.net) {
        let diff = max_abs_diff(a, b);
        assert!(diff <= 2e-4, "weights after 2 steps differ by {diff}");
        moved = moved.max(max_abs_diff(a, w0));
    }
    assert!(
        moved > 1e-3,
        "the weights moved ({moved}), so the comparison is not vacuous"
    );
}

/// The fused CUDA GroupNorm(+SiLU) kernels against the fused CPU kernels: output and the
/// gradients of x, γ and β (rel. L2 < 1e-5: both accumulate statistics in f64).
#[test]
fn fused_group_norm_agrees() {
    for silu in [false, true] {
        let x = Tensor::randn(0.3f32, 1.7, (3, 12, 5, 7), &Device::Cpu).unwrap();
        let gamma = Tensor::randn(1f32, 0.3, 12, &Device::Cpu).unwrap();
        let beta = Tensor::randn(0f32, 0.3, 12, &Device::Cpu).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (3, 12, 5, 7), &Device::Cpu).unwrap();
        let run = |device: &Device| {
            let x = candle_core::Var::from_tensor(&x.to_device(device).unwrap()).unwrap();
            let g = candle_core::Var::from_tensor(&gamma.to_device(device).unwrap()).unwrap();
            let b = candle_core::Var::from_tensor(&beta.to_device(device).unwrap()).unwrap();
            let y = lossfloor_ops::group_norm(&x, 4, &g, &b, 1e-5, silu).unwrap();
            let loss = (&y * dy.to_device(device).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let get = |v: &candle_core::Var| grads.get(v.as_tensor()).unwrap().clone();
            [y, get(&x), get(&g), get(&b)]
        };
        let (a, b) = (run(&Device::Cpu), run(&gpu()));
        for (what, (u, v)) in ["y", "dx", "dγ", "dβ"].iter().zip(a.iter().zip(&b)) {
            let e = rel_l2(v, u);
            assert!(
                e < 1e-5,
                "silu={silu} {what}: relative L2 difference {e:.2e}"
            );
        }
    }
}

/// `lossfloor_ops::conv2d` on CUDA (cuDNN with the `cudnn` feature, candle's kernels
/// without) against the CPU GEMM kernels: output, dx and dW, for the shapes the networks use
/// (3×3 same-padding, 3×3 stride 2, 1×1, a 7×7 stem-like kernel, odd sizes), plus bias.
/// Both sides are float32 FMA (cuDNN with CUDNN_FMA_MATH, no TF32), so the differences are
/// summation order over C_in·k² ≤ 1,152 terms (~1e-6) and, if cuDNN picks a Winograd or FFT
/// algorithm, its transform rounding: rel. L2 < 5e-5.
#[test]
fn convolution_agrees_each_way() {
    assert!(
        std::env::var_os("LOSSFLOOR_CUDA_CONV").is_none(),
        "unset LOSSFLOOR_CUDA_CONV: this test checks the cuDNN route"
    );
    for (n, c_in, c_out, h, w, k, stride, pad) in [
        (4, 16, 24, 12, 12, 3, 1, 1),
        (3, 8, 16, 11, 9, 3, 2, 1),
        (2, 32, 8, 8, 8, 1, 1, 0),
        (2, 3, 12, 17, 17, 7, 2, 3),
        (5, 128, 64, 6, 6, 3, 1, 1),
        // DDPM++'s downsampling shape: even size, 3×3, stride 2, pad 1 (32 + 2 − 3 is odd).
        (2, 16, 24, 16, 16, 3, 2, 1),
    ] {
        let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &Device::Cpu).unwrap();
        let wt = Tensor::randn(0f32, 0.2, (c_out, c_in, k, k), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.5, c_out, &Device::Cpu).unwrap();
        let run = |device: &Device| {
            let xv = candle_core::Var::from_tensor(&x.to_device(device).unwrap()).unwrap();
            let wv = candle_core::Var::from_tensor(&wt.to_device(device).unwrap()).unwrap();
            let bd = b.to_device(device).unwrap();
            let y = lossfloor_ops::conv2d(&xv, &wv, Some(&bd), stride, pad).unwrap();
            // A fixed, non-uniform output gradient: dy = cos(y).
            let loss = y.sin().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let dx = grads.get(xv.as_tensor()).unwrap().clone();
            let dw = grads.get(wv.as_tensor()).unwrap().clone();
            [y, dx, dw]
        };
        let (cpu, cuda) = (run(&Device::Cpu), run(&gpu()));
        for (what, (u, v)) in ["y", "dx", "dW"].iter().zip(cpu.iter().zip(&cuda)) {
            let e = rel_l2(v, u);
            assert!(
                e < 5e-5,
                "conv {n}×{c_in}×{h}×{w} → {c_out}, k={k} s={stride} p={pad}, {what}: relative L2 difference {e:.2e}"
            );
        }
    }
}

/// Dropout draws the same mask on both devices (it is a function of the key and the element
/// index, `lossfloor_ops::dropout`), so value and gradient agree bit for bit.
#[test]
fn dropout_is_the_same_on_both_devices() {
    // Over 2²⁴ elements, so the kernel's grid-stride loop runs more than once per thread; the
    // input is a narrowed view, so its storage starts at an offset.
    let x = Tensor::randn(0f32, 1.0, (5, 64, 256, 257), &Device::Cpu).unwrap();
    let r = Tensor::randn(0f32, 1.0, (4, 64, 256, 257), &Device::Cpu).unwrap();
    let run = |device: &Device| {
        let xv = candle_core::Var::from_tensor(&x.to_device(device).unwrap()).unwrap();
        let y = lossfloor_ops::dropout(&xv.narrow(0, 1, 4).unwrap(), 0xDEAD_BEEF, 0.13).unwrap();
        let g = (&y * r.to_device(device).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        (bits(&y), bits(g.get(xv.as_tensor()).unwrap()))
    };
    let (cpu, cuda) = (run(&Device::Cpu), run(&gpu()));
    assert_eq!(cpu.0, cuda.0, "dropout output differs between CPU and CUDA");
    assert_eq!(
        cpu.1, cuda.1,
        "dropout gradient differs between CPU and CUDA"
    );
    let zeros = cpu.0.iter().filter(|&&b| b & 0x7FFF_FFFF == 0).count();
    assert!(zeros > 1000, "the mask drops elements ({zeros} zeros)");
}

/// The optimizer kernels (`lossfloor_ops::optim`) on CUDA against the CPU ones: nan_to_num
/// (NaN and ±∞ included) exactly, the sum of squares to 1e-12 relative (f64 partial sums in
/// another order), and three Adam steps plus EMA updates within 1e-6 relative to the largest
/// value (CUDA contracts b·m + c·g into an FMA; the CPU rounds twice).
#[test]
fn optimizer_kernels_agree() {
    use lossfloor_ops::optim;
    let n = 300_001;
    let raw: Vec<f32> = (0..n)
        .map(|i| match i % 101 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            _ => ((i as f32) * 0.37).sin() * 0.01,
        })
        .collect();
    let g_cpu = Tensor::from_vec(raw, n, &Device::Cpu).unwrap();
    let clean_cpu = optim::nan_to_num(&g_cpu).unwrap();
    let clean_gpu = optim::nan_to_num(&g_cpu.to_device(&gpu()).unwrap()).unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&clean_cpu), bits(&clean_gpu), "nan_to_num");
    let (a, b) = (
        optim::sum_squares(&clean_cpu).unwrap(),
        optim::sum_squares(&clean_gpu).unwrap(),
    );
    assert!((a - b).abs() <= 1e-12 * a, "sum of squares {a} vs {b}");
    // The same on finite values only, where the ±10⁵ entries do not dominate the sum.
    let finite = Tensor::randn(0f32, 0.01, n, &Device::Cpu).unwrap();
    let (a, b) = (
        optim::sum_squares(&finite).unwrap(),
        optim::sum_squares(&finite.to_device(&gpu()).unwrap()).unwrap(),
    );
    assert!(
        (a - b).abs() <= 1e-12 * a,
        "sum of squares (finite) {a} vs {b}"
    );

    let theta0 = Tensor::randn(0f32, 0.3, n, &Device::Cpu).unwrap();
    let run = |device: &Device| {
        let var = candle_core::Var::from_tensor(&theta0.to_device(device).unwrap()).unwrap();
        let cfg = lossfloor_train::config::OptimizerConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut adam = lossfloor_train::adam::Adam::new(std::slice::from_ref(&var), &cfg).unwrap();
        let mut ema = lossfloor_train::ema::Ema::new(std::slice::from_ref(&var)).unwrap();
        let g = clean_cpu.to_device(device).unwrap();
        for s in 0..3 {
            let gs = g.affine(1.0 + s as f64, 0.0).unwrap();
            adam.step(std::slice::from_ref(&var), &[gs], 1e-2).unwrap();
            ema.update(std::slice::from_ref(&var), 0.9).unwrap();
        }
        [
            var.as_tensor().clone(),
            adam.m[0].clone(),
            adam.v[0].clone(),
            ema.tensors[0].clone(),
        ]
    };
    let (cpu, cuda) = (run(&Device::Cpu), run(&gpu()));
    for (what, (u, v)) in ["θ", "m", "v", "EMA"].iter().zip(cpu.iter().zip(&cuda)) {
        let u: Vec<f32> = u.to_vec1().unwrap();
        let v: Vec<f32> = v.to_device(&Device::Cpu).unwrap().to_vec1().unwrap();
        if matches!(*what, "m" | "v") {
            // Sums of same-sign terms (the gradient keeps its sign over the three steps):
            // element by element, relative.
            for (i, (p, q)) in u.iter().zip(&v).enumerate() {
                assert!(
                    (p - q).abs() <= 2e-6 * p.abs() + 1e-30,
                    "{what}[{i}]: CPU {p}, CUDA {q}"
                );
            }
        } else {
            // θ and the EMA can cancel to near 0: relative to their largest value.
            let scale = u.iter().fold(0f32, |s, x| s.max(x.abs()));
            let worst = u
                .iter()
                .zip(&v)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-6 * scale, "{what}: {worst} of {scale}");
        }
    }
}

/// The FID Inception-v3 on the GPU against the CPU, preprocessing (the resize on the
/// device) included. The real weights (87 MB) do not travel to the GPU machine, so the
/// network gets random weights of the real layer shapes (the table lossfloor-fid's tests
/// check against the real file): He-scaled so that activations keep their size through the
/// 94 ReLU layers. 48 convolutions deep, float32 on both sides: 1e-4 relative, as for the
/// denoisers.
#[test]
fn inception_features_agree() {
    use lossfloor_fid::inception::ConvParams;
    use lossfloor_fid::{InceptionV3, InceptionWeights};
    let mut uniform = uniform_stream(0x9E37_79B9_7F4A_7C15);
    let mut convs = std::collections::BTreeMap::new();
    let table = include_str!("../crates/lossfloor-fid/tests/fixtures/inception_layers.txt");
    for line in table.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n: Vec<usize> = f[1..].iter().map(|v| v.parse().unwrap()).collect();
        let (out, fan_in) = (n[0], n[1] * n[2] * n[3]);
        let scale = (6.0 / fan_in as f32).sqrt(); // uniform(±a) has variance a²/3 = 2/fan_in
        let mut vec = |len: usize, a: f32, b: f32| -> Tensor {
            let v: Vec<f32> = (0..len).map(|_| a + b * uniform() as f32).collect();
            Tensor::from_vec(v, len, &Device::Cpu).unwrap()
        };
        let weight = vec(out * fan_in, 0.0, scale)
            .reshape((out, n[1], n[2], n[3]))
            .unwrap();
        convs.insert(
            f[0].to_string(),
            ConvParams {
                weight,
                beta: vec(out, 0.0, 0.05),
                mean: vec(out, 0.0, 0.05),
                var: vec(out, 1.0, 0.1),
                stride: n[4],
                padding: (n[5], n[6]),
            },
        );
    }
    let weights = InceptionWeights { convs };
    let images: Vec<u8> = (0..6 * 3 * 32 * 32).map(|i| (i * 7 % 251) as u8).collect();
    let features = |device: &Device| {
        let mut net = InceptionV3::from_weights(&weights, device).unwrap();
        net.batch_size = 4; // two batches, the second partial
        net.features_tensor(&images, 6, 3, 32, 32).unwrap()
    };
    let (cpu, cuda) = (features(&Device::Cpu), features(&gpu()));
    let spread = cpu
        .var(0)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        spread > 1e-6,
        "features differ between images (variance {spread})"
    );
    let err = rel_l2(&cuda, &cpu);
    assert!(err < 1e-4, "Inception features: relative L2 error {err}");
}

/// NCCL on one GPU: a one-rank communicator (its unique id made and "broadcast" in this
/// process) sums a gradient-shaped tensor in place, leaving it unchanged. This is the world
/// size 1 data-parallel path of the `nccl` build; it checks that libnccl.so.2 loads and that
/// the in-place op reaches the tensor's own storage.
#[cfg(feature = "nccl")]
#[test]
fn nccl_sum_on_one_rank_is_the_identity() {
    let dev = gpu();
    let values: Vec<f32> = (0..4099).map(|i| (i as f32 * 0.013).sin()).collect();
    let t = Tensor::from_vec(values.clone(), (4099,), &dev).unwrap();
    let nccl = lossfloor_comm::nccl::NcclGradients::new(&lossfloor_comm::SingleProcess, &dev)
        .expect("NCCL on one rank (is libnccl.so.2 on LD_LIBRARY_PATH? scripts/gpu-env.sh)");
    nccl.sum_in_place(&t).unwrap();
    assert_eq!(t.to_vec1::<f32>().unwrap(), values);
}

/// Data-parallel training on two GPUs (NCCL all-reduce) against one GPU with the same
/// rounds: `mpirun -np 2 lossfloor-mpi train … --device cuda` with `batch_gpu = batch/2`
/// against one process on cuda:0. Runs where the machine has two GPUs, `mpirun`, and the
/// MPI build (`LOSSFLOOR_MPI_BIN`, set by scripts/gpu-check.sh to dist/cuda/lossfloor-mpi);
/// elsewhere it says why it did not run. Tolerance: the two sides run the same kernels on the
/// same kind of GPU; only the gradient sum (g₀ + g₁ in NCCL against the same sum in one
/// process) and cuDNN's algorithm choice may differ, so weights after 8 steps of size ~1e-2
/// agree to 2e-4 absolute, as in `training_step_matches_cpu`.
#[cfg(feature = "nccl")]
#[test]
fn two_gpus_train_the_weights_of_one() {
    use std::process::Command;
    let Ok(bin) = std::env::var("LOSSFLOOR_MPI_BIN") else {
        eprintln!("not run: LOSSFLOOR_MPI_BIN (the lossfloor-mpi binary) is not set");
        return;
    };
    let gpus = Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    if gpus < 2 || Command::new("mpirun").arg("--version").output().is_err() {
        eprintln!("not run: needs 2 GPUs ({gpus} found) and mpirun");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("data.npy");
    let values: Vec<f32> = (0..32 * 3 * 16 * 16)
        .map(|i| ((i as f32) * 0.37).cos() * 0.8)
        .collect();
    let data = Tensor::from_vec(values, (32, 3, 16, 16), &Device::Cpu).unwrap();
    lossfloor_sampler::save_npy_f32(&npy, &data).unwrap();
    let cfg = dir.path().join("ddp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nspec = \"npy:{}\"\n[network]\narch = \"songunet\"\nimg_resolution = 16\n\
             in_channels = 3\nout_channels = 3\nmodel_channels = 32\nchannel_mult = [1, 2]\n\
             num_blocks = 1\nattn_resolutions = [8]\n[optimizer]\nlr = 1e-2\n\
             [train]\nbatch = 16\nbatch_gpu = 8\nduration_kimg = 0.128\ntick_kimg = 0.064\n\
             seed = 3\ndevice = \"cuda\"\n",
            npy.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str], dir_name: &str| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .args(["train", cfg.to_str().unwrap(), "--run-dir"])
            .arg(dir.path().join(dir_name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[bin.as_str()], "one");
    run(
        &["mpirun", "--allow-run-as-root", "-np", "2", bin.as_str()],
        "two",
    );
    let load = |name: &str| {
        candle_core::safetensors::load(
            dir.path()
                .join(name)
                .join("training-state-0000000128.safetensors"),
            &Device::Cpu,
        )
        .unwrap()
    };
    let (one, two) = (load("one"), load("two"));
    assert_eq!(one.len(), two.len());
    for (name, a) in &one {
        let b = &two[name];
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 2e-4, "{name}: max |Δ| = {diff}");
    }
}
