use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lossfloor_nets::{DhariwalUNet, DhariwalUNetConfig, Network, SongUNet, SongUNetConfig};

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

/// 8x8, two levels, attention at 4x4 with 4 heads of 8 channels, class- and
/// augmentation-conditional, with label dropout.
fn tiny() -> DhariwalUNetConfig {
    DhariwalUNetConfig {
        label_dim: 3,
        augment_dim: 9,
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![4],
        label_dropout: 0.1,
        channels_per_head: 8,
        ..DhariwalUNetConfig::new(8, 3, 3)
    }
}

struct Inputs {
    x: Tensor,
    t: Tensor,
    class: Option<Tensor>,
    aug: Option<Tensor>,
}

fn inputs(cfg: &DhariwalUNetConfig, n: usize, seed: u64) -> Inputs {
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

fn run(net: &DhariwalUNet, inp: &Inputs, train: bool) -> Tensor {
    net.forward(&inp.x, &inp.t, inp.class.as_ref(), inp.aug.as_ref(), train)
        .unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn randomise(net: &DhariwalUNet, vm: &VarMap, seed: u64) {
    let mut g = Lcg(seed);
    for (name, var) in net.trainable_vars(vm).unwrap() {
        let v = (g.tensor(var.dims()) * 0.3).unwrap();
        var.set(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// EDM zero-initialises `out_conv`, so a fresh network outputs exactly zero;
/// after re-initialisation the output is non-trivial.
#[test]
fn output_shape_and_zero_output_at_init() {
    let cfg = tiny();
    let vm = VarMap::new();
    let net = DhariwalUNet::new(&cfg, &vm, &Device::Cpu, 1).unwrap();
    let inp = inputs(&cfg, 2, 3);
    for train in [false, true] {
        let y = run(&net, &inp, train);
        assert_eq!(y.dims(), &[2, 3, 8, 8]);
        assert_eq!(max_abs(&y), 0.0);
    }
    randomise(&net, &vm, 4);
    for train in [false, true] {
        let y = run(&net, &inp, train);
        assert_eq!(y.dims(), &[2, 3, 8, 8]);
        let m = max_abs(&y);
        assert!(m.is_finite() && m > 0.0, "{m}");
    }
    // Wrong inputs are errors, not panics.
    assert!(net
        .forward(&inp.x, &inp.t, None, inp.aug.as_ref(), false)
        .is_err());
    assert!(net
        .forward(
            &inp.x.narrow(1, 0, 2).unwrap(),
            &inp.t,
            inp.class.as_ref(),
            None,
            false
        )
        .is_err());
}

fn assert_all_grads(label: &str, net: &DhariwalUNet, inp: &Inputs) {
    let y = run(net, inp, true);
    let target = Lcg(99).tensor(y.dims());
    let grads = (y * target).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, t) in net.parameters() {
        let g = grads
            .get(t)
            .unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
        let m = max_abs(g);
        assert!(
            m.is_finite() && m > 0.0,
            "{label}: gradient of {name} is {m}"
        );
    }
}

#[test]
fn every_parameter_gets_a_gradient() {
    let cfg = tiny();
    let vm = VarMap::new();
    let net = DhariwalUNet::new(&cfg, &vm, &Device::Cpu, 11).unwrap();
    // Batch 8: with label_dropout 0.1 all labels are dropped with probability 1e-8.
    let inp = inputs(&cfg, 8, 5);
    // At EDM's init only the zero-initialised output layer gets a gradient.
    let y = run(&net, &inp, true);
    let target = Lcg(99).tensor(y.dims());
    let grads = (y * target).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, t) in net.parameters() {
        if name.starts_with("model.out_conv.") {
            assert!(max_abs(grads.get(t).unwrap()) > 0.0, "{name}");
        }
    }
    for round in 0..2u64 {
        randomise(&net, &vm, 1000 + round);
        assert_all_grads(&format!("round {round}"), &net, &inp);
    }
}

#[test]
fn parameter_names_and_shapes_follow_edm() {
    let vm = VarMap::new();
    let net = DhariwalUNet::new(&tiny(), &vm, &Device::Cpu, 0).unwrap();
    let shape = |n: &str| -> Option<Vec<usize>> {
        net.parameters()
            .iter()
            .find(|(name, _)| name == n)
            .map(|(_, t)| t.dims().to_vec())
    };
    for (name, dims) in [
        ("model.map_augment.weight", vec![16, 9]),
        ("model.map_layer0.weight", vec![64, 16]),
        ("model.map_layer0.bias", vec![64]),
        ("model.map_layer1.weight", vec![64, 64]),
        ("model.map_label.weight", vec![64, 3]),
        ("model.enc.8x8_conv.weight", vec![16, 3, 3, 3]),
        ("model.enc.8x8_block0.norm0.weight", vec![16]),
        ("model.enc.8x8_block0.affine.weight", vec![32, 64]),
        ("model.enc.8x8_block0.affine.bias", vec![32]),
        ("model.enc.4x4_down.conv0.weight", vec![16, 16, 3, 3]),
        ("model.enc.4x4_block0.skip.weight", vec![32, 16, 1, 1]),
        ("model.enc.4x4_block0.qkv.weight", vec![96, 32, 1, 1]),
        ("model.enc.4x4_block0.norm2.bias", vec![32]),
        ("model.enc.4x4_block0.proj.bias", vec![32]),
        ("model.dec.4x4_in0.qkv.weight", vec![96, 32, 1, 1]),
        ("model.dec.4x4_in1.conv1.weight", vec![32, 32, 3, 3]),
        ("model.dec.4x4_block0.conv0.weight", vec![32, 64, 3, 3]),
        ("model.dec.4x4_block1.qkv.weight", vec![96, 32, 1, 1]),
        ("model.dec.4x4_block1.skip.weight", vec![32, 48, 1, 1]),
        ("model.dec.8x8_up.conv0.weight", vec![32, 32, 3, 3]),
        ("model.dec.8x8_block0.skip.weight", vec![16, 48, 1, 1]),
        ("model.dec.8x8_block1.affine.weight", vec![32, 64]),
        ("model.out_norm.weight", vec![16]),
        ("model.out_conv.weight", vec![3, 16, 3, 3]),
        ("model.out_conv.bias", vec![3]),
    ] {
        assert_eq!(shape(name), Some(dims), "{name}");
    }
    for absent in [
        "model.map_label.bias",
        "model.map_augment.bias",
        "model.map_noise.freqs",
        "model.enc.4x4_down.skip.weight",
        "model.dec.8x8_up.skip.weight",
        "model.dec.4x4_in1.qkv.weight",
        "model.enc.8x8_block0.qkv.weight",
        "model.enc.8x8_block0.skip.weight",
    ] {
        assert_eq!(shape(absent), None, "{absent}");
    }
    let names: Vec<&str> = net.parameters().iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "parameters() must be sorted by name");
    let mut in_map: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    in_map.sort();
    assert_eq!(in_map, names);
    assert_eq!(net.trainable_vars(&vm).unwrap().len(), names.len());
}

/// kaiming_uniform(sqrt(1/3)) weights and biases lie in ±1/sqrt(fan_in) and
/// are not all zero; zero-initialised layers are exactly zero; `map_label`
/// is N(0, 1).
#[test]
fn edm_initialisation() {
    let cfg = DhariwalUNetConfig {
        label_dim: 100,
        ..tiny()
    };
    let net = DhariwalUNet::new(&cfg, &VarMap::new(), &Device::Cpu, 3).unwrap();
    let get = |n: &str| -> Vec<f32> {
        let t = &net
            .parameters()
            .iter()
            .find(|(name, _)| name == n)
            .unwrap()
            .1;
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let max = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (name, fan_in) in [
        ("model.map_layer0.weight", 16),
        ("model.map_layer0.bias", 16),
        ("model.map_layer1.bias", 64),
        ("model.enc.8x8_conv.weight", 27),
        ("model.enc.8x8_conv.bias", 27),
        ("model.enc.4x4_block0.conv0.weight", 144),
        ("model.enc.4x4_block0.affine.bias", 64),
        ("model.enc.4x4_block0.qkv.weight", 32),
        ("model.enc.4x4_block0.skip.bias", 16),
    ] {
        let v = get(name);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let m = max(&v);
        assert!(
            m <= bound && m > 0.5 * bound,
            "{name}: max {m}, bound {bound}"
        );
    }
    for name in [
        "model.map_augment.weight",
        "model.enc.8x8_block0.conv1.weight",
        "model.enc.8x8_block0.conv1.bias",
        "model.enc.4x4_block0.proj.weight",
        "model.enc.4x4_block0.proj.bias",
        "model.out_conv.weight",
        "model.out_conv.bias",
    ] {
        assert_eq!(max(&get(name)), 0.0, "{name}");
    }
    let v = get("model.map_label.weight");
    let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
    assert!((var - 1.0).abs() < 0.1, "map_label variance {var}");
    assert_eq!(get("model.out_norm.weight"), vec![1.0; 16]);
    assert_eq!(get("model.out_norm.bias"), vec![0.0; 16]);
}

/// EDM's ADM for conditional ImageNet-64 (label_dim 1000), built for counting only.
#[test]
fn adm_imagenet64_parameter_count() {
    let cfg = DhariwalUNetConfig::adm_imagenet64();
    assert_eq!(
        (cfg.model_channels, cfg.channel_mult.clone(), cfg.num_blocks),
        (192, vec![1, 2, 3, 4], 3)
    );
    assert_eq!(cfg.attn_resolutions, vec![32, 16, 8]);
    let net = DhariwalUNet::new(&cfg, &VarMap::new(), &Device::Cpu, 0).unwrap();
    assert_eq!(net.num_parameters(), 295_899_267);
    assert_eq!(Network::num_parameters(&net), 295_899_267);
}

#[test]
fn deterministic_for_a_fixed_seed() {
    let cfg = tiny();
    let out = |seed: u64| {
        let vm = VarMap::new();
        let net = DhariwalUNet::new(&cfg, &vm, &Device::Cpu, seed).unwrap();
        net.parameters()
            .iter()
            .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect::<Vec<f32>>()
    };
    assert_eq!(out(42), out(42));
    assert_ne!(out(42), out(43));
}

#[test]
fn config_serde_uses_edm_names_and_defaults() {
    let cfg: DhariwalUNetConfig = serde_json::from_str(
        r#"{"img_resolution": 64, "in_channels": 3, "out_channels": 3, "label_dim": 1000}"#,
    )
    .unwrap();
    assert_eq!(cfg, DhariwalUNetConfig::adm_imagenet64());
    assert_eq!(cfg.channel_mult_emb, 4);
    assert_eq!(cfg.dropout, 0.10);
    assert_eq!(cfg.channels_per_head, 64);
    assert_eq!(cfg.emb_channels(), 768);
    let back: DhariwalUNetConfig =
        serde_json::from_str(&serde_json::to_string(&tiny()).unwrap()).unwrap();
    assert_eq!(back, tiny());
    assert!(DhariwalUNetConfig {
        img_resolution: 60,
        ..DhariwalUNetConfig::adm_imagenet64()
    }
    .validate()
    .is_err());
}

/// Both networks behind the shared trait.
#[test]
fn networks_behind_the_trait() {
    let song_cfg = SongUNetConfig {
        augment_dim: 9,
        label_dim: 3,
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![4],
        ..SongUNetConfig::new(8, 3, 3)
    };
    let vm = VarMap::new();
    let song = SongUNet::new(&song_cfg, &vm, &Device::Cpu, 1).unwrap();
    let vm2 = VarMap::new();
    let adm = DhariwalUNet::new(&tiny(), &vm2, &Device::Cpu, 1).unwrap();
    randomise(&adm, &vm2, 7);
    let nets: Vec<(Box<dyn Network>, &VarMap)> = vec![(Box::new(song), &vm), (Box::new(adm), &vm2)];
    let inp = inputs(&tiny(), 2, 3);
    for (net, varmap) in &nets {
        let y = net
            .forward(&inp.x, &inp.t, inp.class.as_ref(), inp.aug.as_ref(), false)
            .unwrap();
        assert_eq!(y.dims(), &[2, 3, 8, 8]);
        assert!(max_abs(&y) > 0.0);
        let params = net.parameters();
        let total: usize = params.iter().map(|(_, t)| t.elem_count()).sum();
        assert_eq!(net.num_parameters(), total);
        let vars = net.trainable_vars(varmap).unwrap();
        assert_eq!(vars.len(), params.len());
        for ((pn, pt), (vn, v)) in params.iter().zip(&vars) {
            assert_eq!(pn, vn);
            assert_eq!(pt.id(), v.as_tensor().id(), "{pn}");
        }
    }
}

/// Central finite differences against `backward` for a few entries of
/// parameters on every path: box down / up resampling, parameter-free skips,
/// multi-head attention, scale/shift conditioning, the embeddings and the
/// fused GroupNorm(+SiLU), with randomised weights and no dropout.
#[test]
fn gradients_match_finite_differences() {
    let cfg = tiny();
    let names = [
        "model.enc.4x4_down.conv0.weight",
        "model.enc.4x4_block0.qkv.weight",
        "model.enc.4x4_block0.norm1.weight",
        "model.dec.4x4_in0.affine.weight",
        "model.dec.4x4_block1.norm2.bias",
        "model.dec.8x8_up.conv0.weight",
        "model.dec.8x8_block0.skip.weight",
        "model.map_label.weight",
        "model.map_augment.weight",
        "model.out_norm.weight",
    ];
    let vm = VarMap::new();
    let net = DhariwalUNet::new(&cfg, &vm, &Device::Cpu, 21).unwrap();
    let vars = net.trainable_vars(&vm).unwrap();
    randomise(&net, &vm, 77);
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
        // The entries with the largest gradient plus one fixed entry.
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
                "{name}[{i}]: backward {an} vs finite difference {fd}"
            );
        }
    }
}
