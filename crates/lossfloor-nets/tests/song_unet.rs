use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lossfloor_nets::{DecoderType, EmbeddingType, EncoderType, SongUNet, SongUNetConfig};

/// Small deterministic generator for test inputs.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.next()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

fn tiny_ddpmpp() -> SongUNetConfig {
    SongUNetConfig {
        augment_dim: 9,
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![4],
        ..SongUNetConfig::new(8, 3, 3)
    }
}

fn tiny_ncsnpp() -> SongUNetConfig {
    SongUNetConfig {
        embedding_type: EmbeddingType::Fourier,
        channel_mult_noise: 2,
        encoder_type: EncoderType::Residual,
        decoder_type: DecoderType::Standard,
        resample_filter: vec![1.0, 3.0, 3.0, 1.0],
        ..tiny_ddpmpp()
    }
}

/// Skip encoder + skip decoder, class-conditional with label dropout.
fn tiny_skip(filter: Vec<f64>) -> SongUNetConfig {
    SongUNetConfig {
        label_dim: 10,
        label_dropout: 0.1,
        encoder_type: EncoderType::Skip,
        decoder_type: DecoderType::Skip,
        resample_filter: filter,
        ..tiny_ddpmpp()
    }
}

struct Inputs {
    x: Tensor,
    t: Tensor,
    class: Option<Tensor>,
    aug: Option<Tensor>,
}

fn inputs(cfg: &SongUNetConfig, n: usize, seed: u64) -> Inputs {
    let mut g = Lcg(seed);
    let r = cfg.img_resolution;
    let class = (cfg.label_dim > 0).then(|| {
        let mut v = vec![0f32; n * cfg.label_dim];
        for i in 0..n {
            v[i * cfg.label_dim + (i % cfg.label_dim)] = 1.0;
        }
        Tensor::from_vec(v, (n, cfg.label_dim), &Device::Cpu).unwrap()
    });
    Inputs {
        x: g.tensor(&[n, cfg.in_channels, r, r]),
        t: g.tensor(&[n]),
        class,
        aug: (cfg.augment_dim > 0).then(|| g.tensor(&[n, cfg.augment_dim])),
    }
}

fn run(net: &SongUNet, inp: &Inputs, train: bool) -> Tensor {
    net.forward(&inp.x, &inp.t, inp.class.as_ref(), inp.aug.as_ref(), train)
        .unwrap()
}

fn all_configs() -> Vec<(&'static str, SongUNetConfig)> {
    vec![
        ("ddpmpp", tiny_ddpmpp()),
        ("ncsnpp", tiny_ncsnpp()),
        ("skip-box", tiny_skip(vec![1.0, 1.0])),
        ("skip-fir", tiny_skip(vec![1.0, 3.0, 3.0, 1.0])),
    ]
}

#[test]
fn output_shape() {
    for (label, cfg) in all_configs() {
        let vm = VarMap::new();
        let net = SongUNet::new(&cfg, &vm, &Device::Cpu, 1).unwrap();
        let inp = inputs(&cfg, 2, 3);
        for train in [false, true] {
            let y = run(&net, &inp, train);
            assert_eq!(y.dims(), &[2, 3, 8, 8], "{label}");
            let s = y
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(s.is_finite() && s > 0.0, "{label}: output sum {s}");
        }
    }
}

/// Asserts that every trainable parameter has a finite, non-zero gradient and
/// that buffers get none.
fn assert_all_grads(label: &str, net: &SongUNet, inp: &Inputs) {
    let y = run(net, inp, true);
    let target = Lcg(99).tensor(y.dims());
    let loss = (y * target).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, t) in net.parameters() {
        let g = grads
            .get(t)
            .unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
        let m = g
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            m.is_finite() && m > 0.0,
            "{label}: gradient of {name} is {m}"
        );
    }
    for (name, t) in net.buffers() {
        assert!(
            grads.get(t).is_none(),
            "{label}: buffer {name} got a gradient"
        );
    }
}

#[test]
fn every_parameter_gets_a_gradient() {
    for (label, cfg) in all_configs() {
        let vm = VarMap::new();
        let net = SongUNet::new(&cfg, &vm, &Device::Cpu, 11).unwrap();
        // Batch 8: with label_dropout 0.1 all labels are dropped with probability 1e-8.
        let inp = inputs(&cfg, 8, 5);
        // EDM's own initialisation (1e-5 last layers, zero biases).
        assert_all_grads(label, &net, &inp);
        // A few random re-initialisations of every parameter.
        for round in 0..2u64 {
            let mut g = Lcg(1000 + round);
            for (name, var) in net.trainable_vars(&vm).unwrap() {
                let v = (g.tensor(var.dims()) * 0.3).unwrap();
                var.set(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            assert_all_grads(label, &net, &inp);
        }
    }
}

#[test]
fn parameter_names_follow_edm() {
    let vm = VarMap::new();
    let net = SongUNet::new(&tiny_ncsnpp(), &vm, &Device::Cpu, 0).unwrap();
    let names: Vec<&str> = net.parameters().iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "model.map_augment.weight",
        "model.map_layer0.weight",
        "model.map_layer1.bias",
        "model.enc.8x8_conv.weight",
        "model.enc.8x8_block0.conv0.weight",
        "model.enc.4x4_down.skip.weight",
        "model.enc.4x4_aux_residual.weight",
        "model.enc.4x4_block0.qkv.weight",
        "model.enc.4x4_block0.norm2.weight",
        "model.dec.4x4_in0.proj.weight",
        "model.dec.8x8_up.conv0.weight",
        "model.dec.8x8_block1.affine.bias",
        "model.dec.8x8_aux_norm.weight",
        "model.dec.8x8_aux_conv.weight",
    ] {
        assert!(names.contains(&expected), "missing {expected}");
    }
    assert!(!names.contains(&"model.map_augment.bias"));
    assert!(!names.contains(&"model.dec.4x4_in1.qkv.weight"));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "parameters() must be sorted by name");
    let buffers: Vec<&str> = net.buffers().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(buffers, vec!["model.map_noise.freqs"]);
    // The VarMap holds the parameters plus the Fourier buffer, under the same names.
    let mut in_map: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    in_map.sort();
    let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    all.push("model.map_noise.freqs".into());
    all.sort();
    assert_eq!(in_map, all);
    assert_eq!(net.trainable_vars(&vm).unwrap().len(), names.len());

    let skip = SongUNet::new(&tiny_skip(vec![1.0, 1.0]), &VarMap::new(), &Device::Cpu, 0).unwrap();
    let names: Vec<&str> = skip.parameters().iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "model.map_label.weight",
        "model.map_label.bias",
        "model.enc.4x4_aux_skip.weight",
        "model.dec.4x4_aux_norm.bias",
        "model.dec.4x4_aux_conv.weight",
        "model.dec.8x8_aux_conv.bias",
    ] {
        assert!(names.contains(&expected), "missing {expected}");
    }
    assert!(skip.buffers().is_empty());
}

/// Full-size EDM CIFAR-10 networks (unconditional, augment_dim 9): built for
/// counting only. Counts exclude the Fourier `freqs` buffer (128 values for NCSN++).
#[test]
fn edm_cifar10_parameter_counts() {
    let ddpm = SongUNetConfig::ddpmpp_cifar10();
    assert_eq!(ddpm.augment_dim, 9);
    let net = SongUNet::new(&ddpm, &VarMap::new(), &Device::Cpu, 0).unwrap();
    assert_eq!(net.num_parameters(), 55_733_891);
    assert!(net.buffers().is_empty());
    drop(net);

    let ncsn = SongUNetConfig::ncsnpp_cifar10();
    let net = SongUNet::new(&ncsn, &VarMap::new(), &Device::Cpu, 0).unwrap();
    assert_eq!(net.num_parameters(), 56_397_827);
    let buffered: usize = net.buffers().iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(buffered, 128);
}

#[test]
fn deterministic_for_a_fixed_seed() {
    for (label, cfg) in [("ddpmpp", tiny_ddpmpp()), ("ncsnpp", tiny_ncsnpp())] {
        let inp = inputs(&cfg, 2, 8);
        let out = |seed: u64| {
            let net = SongUNet::new(&cfg, &VarMap::new(), &Device::Cpu, seed).unwrap();
            run(&net, &inp, false)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let a = out(42);
        let b = out(42);
        let c = out(43);
        assert_eq!(a, b, "{label}: same seed, different output");
        assert_ne!(a, c, "{label}: different seeds, same output");
    }
}

#[test]
fn config_serde_uses_edm_names_and_defaults() {
    let cfg: SongUNetConfig = serde_json::from_str(
        r#"{"img_resolution": 32, "in_channels": 3, "out_channels": 3,
            "embedding_type": "fourier", "encoder_type": "residual",
            "resample_filter": [1, 3, 3, 1], "channel_mult_noise": 2}"#,
    )
    .unwrap();
    assert_eq!(cfg.model_channels, 128);
    assert_eq!(cfg.channel_mult, vec![1, 2, 2, 2]);
    assert_eq!(cfg.num_blocks, 4);
    assert_eq!(cfg.attn_resolutions, vec![16]);
    assert_eq!(cfg.dropout, 0.10);
    assert_eq!(cfg.embedding_type, EmbeddingType::Fourier);
    assert_eq!(cfg.encoder_type, EncoderType::Residual);
    assert_eq!(cfg.decoder_type, DecoderType::Standard);
    let back: SongUNetConfig =
        serde_json::from_str(&serde_json::to_string(&SongUNetConfig::ncsnpp_cifar10()).unwrap())
            .unwrap();
    assert_eq!(back, SongUNetConfig::ncsnpp_cifar10());
    assert!(SongUNetConfig {
        img_resolution: 30,
        ..SongUNetConfig::ddpmpp_cifar10()
    }
    .validate()
    .is_err());
}

/// Central finite differences against `backward` for a few entries of
/// parameters on every resampling path (FIR/box down and up, fused residual
/// down, attention, embeddings), with randomised weights and no dropout.
#[test]
fn gradients_match_finite_differences() {
    let cases = [
        (
            "ncsnpp",
            tiny_ncsnpp(),
            vec![
                "model.enc.4x4_aux_residual.weight",
                "model.enc.4x4_down.conv0.weight",
                "model.enc.4x4_down.skip.weight",
                "model.dec.8x8_up.conv0.weight",
                "model.dec.4x4_in0.qkv.weight",
                "model.map_layer0.weight",
            ],
        ),
        (
            "skip-box",
            tiny_skip(vec![1.0, 1.0]),
            vec![
                "model.enc.4x4_aux_skip.weight",
                "model.dec.8x8_up.skip.weight",
                "model.dec.4x4_aux_conv.weight",
                "model.map_label.weight",
            ],
        ),
    ];
    for (label, cfg, names) in cases {
        let vm = VarMap::new();
        let net = SongUNet::new(&cfg, &vm, &Device::Cpu, 21).unwrap();
        let vars = net.trainable_vars(&vm).unwrap();
        let mut g = Lcg(77);
        for (_, var) in &vars {
            var.set(&(g.tensor(var.dims()) * 0.3).unwrap()).unwrap();
        }
        let inp = inputs(&cfg, 2, 13);
        let target = Lcg(5).tensor(&[2, 3, 8, 8]);
        let loss = || -> f64 {
            let y = run(&net, &inp, false);
            let l = (y * &target).unwrap().sum_all().unwrap();
            l.to_scalar::<f32>().unwrap() as f64
        };
        let y = run(&net, &inp, false);
        let grads = (y * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for name in names {
            let var = &vars.iter().find(|(n, _)| n == name).expect(name).1;
            let grad = grads.get(var.as_tensor()).unwrap();
            let gv = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let orig = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Check the entries with the largest gradient plus one fixed entry.
            let mut idx: Vec<usize> = (0..gv.len()).collect();
            idx.sort_by(|&a, &b| gv[b].abs().total_cmp(&gv[a].abs()));
            for &i in idx.iter().take(2).chain(std::iter::once(&(gv.len() / 3))) {
                let eps = 1e-2f32;
                let eval = |delta: f32| {
                    let mut v = orig.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps as f64);
                eval(0.0);
                let an = gv[i] as f64;
                let tol = 2e-2 * an.abs().max(fd.abs()) + 2e-3;
                assert!(
                    (fd - an).abs() <= tol,
                    "{label}: {name}[{i}]: backward {an} vs finite difference {fd}"
                );
            }
        }
    }
}
