use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use lossfloor_nets::dit::{layer_norm, patch_embed, sincos_pos_embed_2d, unpatchify};
use lossfloor_nets::{DiT, DiTConfig, Network};

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

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }

    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(self.vec(n), shape, &Device::Cpu).unwrap()
    }
}

fn tiny() -> DiTConfig {
    DiTConfig {
        input_size: 8,
        patch_size: 2,
        in_channels: 3,
        hidden_size: 32,
        depth: 2,
        num_heads: 4,
        mlp_ratio: 4.0,
        class_dropout_prob: 0.1,
        num_classes: 10,
        learn_sigma: true,
    }
}

/// Parameter count of DiT from the architecture, by hand:
/// patch conv, timestep MLP, label table, `depth` blocks, final layer.
/// Returns (trainable, pos_embed).
fn hand_count(cfg: &DiTConfig) -> (usize, usize) {
    let d = cfg.hidden_size;
    let p = cfg.patch_size;
    let c_in = cfg.in_channels;
    let c_out = if cfg.learn_sigma { 2 * c_in } else { c_in };
    let tokens = (cfg.input_size / p) * (cfg.input_size / p);
    let mlp = (d as f64 * cfg.mlp_ratio) as usize;
    let lin = |i: usize, o: usize| i * o + o;
    let x_embedder = d * c_in * p * p + d;
    let t_embedder = lin(256, d) + lin(d, d);
    let rows = cfg.num_classes + usize::from(cfg.class_dropout_prob > 0.0);
    let y_embedder = rows * d;
    let block = lin(d, 3 * d) + lin(d, d) + lin(d, mlp) + lin(mlp, d) + lin(d, 6 * d);
    let final_layer = lin(d, 2 * d) + lin(d, p * p * c_out);
    (
        x_embedder + t_embedder + y_embedder + cfg.depth * block + final_layer,
        tokens * d,
    )
}

/// A backend that hands out zero-memory (broadcast scalar) tensors of the
/// requested shape: builds full-size models for counting without allocating.
struct ShapeOnly;

impl SimpleBackend for ShapeOnly {
    fn get(
        &self,
        s: Shape,
        _name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("ShapeOnly has no tensor {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

fn count_shape_only(cfg: &DiTConfig) -> DiT {
    let vb = VarBuilder::from_backend(Box::new(ShapeOnly), DType::F32, Device::Cpu);
    DiT::from_var_builder(cfg, vb).unwrap()
}

#[test]
fn param_count_xl2_latent() {
    let cfg = DiTConfig::preset("DiT-XL/2", 32, 4).unwrap();
    assert_eq!(
        (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size),
        (28, 1152, 16, 2)
    );
    let (trainable, pos) = hand_count(&cfg);
    // 28 blocks of 23,905,152 + embedders + final layer.
    assert_eq!(trainable, 674_834_720);
    assert_eq!(pos, 294_912);
    // DiT's train.py counts pos_embed too: 675,129,632 (paper: 675M).
    assert_eq!(trainable + pos, 675_129_632);
    let model = count_shape_only(&cfg);
    assert_eq!(model.num_parameters(), trainable);
    assert_eq!(model.num_parameters_with_buffers(), trainable + pos);
    // 7 embedder tensors (x 2, t 4, y 1) + 10 per block + 4 final.
    assert_eq!(model.parameters().len(), 7 + 10 * 28 + 4);
}

#[test]
fn param_count_b4_latent() {
    let cfg = DiTConfig::preset("DiT-B/4", 32, 4).unwrap();
    let (trainable, pos) = hand_count(&cfg);
    assert_eq!(trainable, 130_426_496);
    assert_eq!(trainable + pos, 130_475_648);
    // Both ways: structure only, and a real seeded build (~520 MB of f32).
    let model = count_shape_only(&cfg);
    assert_eq!(model.num_parameters(), trainable);
    assert_eq!(model.num_parameters_with_buffers(), trainable + pos);
    let varmap = VarMap::new();
    let model = DiT::new(&cfg, &varmap, &Device::Cpu, 0).unwrap();
    assert_eq!(model.num_parameters(), trainable);
    let in_varmap: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(in_varmap, trainable + pos);
}

/// DiT-S/2 is small enough to build for real (seeded VarMap, ~130 MB).
#[test]
fn param_count_s2_latent_real_build() {
    let cfg = DiTConfig::preset("DiT-S/2", 32, 4).unwrap();
    let (trainable, pos) = hand_count(&cfg);
    assert_eq!(trainable, 32_865_056);
    assert_eq!(trainable + pos, 32_963_360);
    let varmap = VarMap::new();
    let model = DiT::new(&cfg, &varmap, &Device::Cpu, 0).unwrap();
    assert_eq!(model.num_parameters(), trainable);
    let in_varmap: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(in_varmap, trainable + pos);
    assert_eq!(
        model.trainable_vars(&varmap).unwrap().len(),
        7 + 10 * 12 + 4
    );
}

#[test]
fn presets_and_serde() {
    for name in DiTConfig::PRESETS {
        let cfg = DiTConfig::preset(name, 32, 4).unwrap();
        assert!(cfg.learn_sigma && cfg.num_classes == 1000);
        assert_eq!(cfg.mlp_ratio, 4.0);
        assert_eq!(cfg.class_dropout_prob, 0.1);
    }
    assert!(DiTConfig::preset("DiT-M/2", 32, 4).is_err());
    assert!(DiTConfig::preset("DiT-S/3", 32, 4).is_err());
    let cfg = DiTConfig::preset("DiT-L/8", 64, 3).unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<DiTConfig>(&json).unwrap(), cfg);
    // Defaults fill the optional fields.
    let min: DiTConfig = serde_json::from_str(
        r#"{"input_size":8,"patch_size":2,"in_channels":3,"hidden_size":32,"depth":2,"num_heads":4}"#,
    )
    .unwrap();
    assert_eq!(
        min,
        DiTConfig {
            class_dropout_prob: 0.1,
            num_classes: 1000,
            ..tiny()
        }
    );
}

#[test]
fn tensor_names_follow_dit_state_dict() {
    let varmap = VarMap::new();
    let model = DiT::new(&tiny(), &varmap, &Device::Cpu, 1).unwrap();
    let names: Vec<&str> = model.parameters().iter().map(|(n, _)| n.as_str()).collect();
    for key in [
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.qkv.bias",
        "blocks.1.attn.proj.weight",
        "blocks.1.attn.proj.bias",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.bias",
        "blocks.0.adaLN_modulation.1.weight",
        "blocks.0.adaLN_modulation.1.bias",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
        "final_layer.linear.bias",
    ] {
        assert!(names.contains(&key), "missing {key}");
    }
    assert_eq!(model.buffers()[0].0, "pos_embed");
    let shapes: Vec<(String, Vec<usize>)> = model
        .parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let get = |k: &str| shapes.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(get("x_embedder.proj.weight"), [32, 3, 2, 2]);
    assert_eq!(get("y_embedder.embedding_table.weight"), [11, 32]);
    assert_eq!(get("final_layer.linear.weight"), [2 * 2 * 6, 32]);
    // pos_embed is stored in the VarMap but is not trainable.
    assert!(varmap.data().lock().unwrap().contains_key("pos_embed"));
    assert!(!names.contains(&"pos_embed"));
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn init_follows_dit() {
    let cfg = DiTConfig {
        hidden_size: 64,
        num_heads: 4,
        ..tiny()
    };
    let varmap = VarMap::new();
    let model = DiT::new(&cfg, &varmap, &Device::Cpu, 7).unwrap();
    let d = 64.0f64;
    for (name, t) in model.parameters() {
        let v = values(t);
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        let std = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        if name.ends_with("bias")
            || name.contains("adaLN_modulation")
            || name.contains("final_layer.linear")
        {
            assert_eq!(max, 0.0, "{name} should be zero");
        } else if name.starts_with("t_embedder") || name.starts_with("y_embedder") {
            assert!((std - 0.02).abs() < 0.003, "{name}: std {std}");
        } else {
            let (fan_in, fan_out) = match name.as_str() {
                "x_embedder.proj.weight" => (3.0 * 4.0, d),
                n if n.ends_with("qkv.weight") => (d, 3.0 * d),
                n if n.ends_with("fc1.weight") => (d, 4.0 * d),
                n if n.ends_with("fc2.weight") => (4.0 * d, d),
                _ => (d, d),
            };
            let bound = (6.0 / (fan_in + fan_out)).sqrt();
            assert!(
                max <= bound && max > 0.9 * bound,
                "{name}: max {max} bound {bound}"
            );
        }
    }
    // Same seed, same weights.
    let other = DiT::new(&cfg, &VarMap::new(), &Device::Cpu, 7).unwrap();
    let a = values(&model.parameters()[0].1);
    let b = values(&other.parameters()[0].1);
    assert_eq!(a, b);
}

#[test]
fn forward_shape_zero_init_and_null_class() {
    let cfg = tiny();
    let varmap = VarMap::new();
    let model = DiT::new(&cfg, &varmap, &Device::Cpu, 3).unwrap();
    let mut g = Lcg(11);
    let x = g.tensor(&[2, 3, 8, 8]);
    let t = Tensor::new(&[10f32, 500.5], &Device::Cpu).unwrap();
    let y = Tensor::new(&[3u32, 9], &Device::Cpu).unwrap();
    let out = model.forward(&x, &t, Some(&y), false).unwrap();
    assert_eq!(out.dims(), [2, 6, 8, 8]);
    // adaLN-Zero: the freshly initialised network outputs exactly zero.
    assert!(values(&out).iter().all(|v| *v == 0.0));

    // Randomise the zero-initialised layers, then y = None equals y = null.
    randomise_zero_layers(&varmap, 5);
    let a = model.forward(&x, &t, None, false).unwrap();
    let null = Tensor::new(&[10u32, 10], &Device::Cpu).unwrap();
    let b = model.forward(&x, &t, Some(&null), false).unwrap();
    assert_eq!(values(&a), values(&b));
    let c = model.forward(&x, &t, Some(&y), false).unwrap();
    assert_ne!(values(&a), values(&c));
    assert!(values(&c).iter().all(|v| v.is_finite()));
    // Training mode runs (class dropout draws from candle's RNG).
    let d = model.forward(&x, &t, Some(&y), true).unwrap();
    assert_eq!(d.dims(), [2, 6, 8, 8]);
    // Latent-shaped input of another config (4 channels, patch 4).
    let lat = DiTConfig {
        in_channels: 4,
        patch_size: 4,
        input_size: 16,
        learn_sigma: false,
        class_dropout_prob: 0.0,
        ..tiny()
    };
    let m2 = DiT::new(&lat, &VarMap::new(), &Device::Cpu, 1).unwrap();
    let out = m2
        .forward(
            &g.tensor(&[3, 4, 16, 16]),
            &g.tensor(&[3]),
            Some(&Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap()),
            false,
        )
        .unwrap();
    assert_eq!(out.dims(), [3, 4, 16, 16]);
    assert!(m2
        .forward(&g.tensor(&[1, 4, 16, 16]), &g.tensor(&[1]), None, false)
        .is_err());
    assert!(model
        .forward(&g.tensor(&[1, 4, 8, 8]), &g.tensor(&[1]), None, false)
        .is_err());
}

/// Replaces the zero-initialised adaLN and final linear layers by random values.
fn randomise_zero_layers(varmap: &VarMap, seed: u64) {
    let mut g = Lcg(seed);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        if name.contains("adaLN_modulation") || name.starts_with("final_layer.linear") {
            let var = &data[name];
            let v: Vec<f32> = g.vec(var.elem_count()).iter().map(|x| 0.2 * x).collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

#[test]
fn every_parameter_gets_a_gradient() {
    let cfg = tiny();
    let varmap = VarMap::new();
    let model = DiT::new(&cfg, &varmap, &Device::Cpu, 21).unwrap();
    randomise_zero_layers(&varmap, 2);
    let mut g = Lcg(4);
    let x = g.tensor(&[2, 3, 8, 8]);
    let t = Tensor::new(&[3f32, 700.0], &Device::Cpu).unwrap();
    let y = Tensor::new(&[1u32, 7], &Device::Cpu).unwrap();
    let out = model.forward(&x, &t, Some(&y), false).unwrap();
    let w = g.tensor(out.dims());
    let loss = (out * w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = model.trainable_vars(&varmap).unwrap();
    assert_eq!(vars.len(), model.parameters().len());
    for (name, var) in &vars {
        let gr = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let v = values(gr);
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name}: non-finite gradient"
        );
        assert!(v.iter().any(|x| *x != 0.0), "{name}: zero gradient");
    }
    // Only the used label rows get gradient.
    let table = &vars
        .iter()
        .find(|(n, _)| n == "y_embedder.embedding_table.weight")
        .unwrap()
        .1;
    let gt = grads
        .get(table.as_tensor())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (row, r) in gt.iter().enumerate() {
        let used = row == 1 || row == 7;
        assert_eq!(r.iter().any(|x| *x != 0.0), used, "row {row}");
    }
    // pos_embed is not trainable and gets no gradient.
    let pos = varmap.data().lock().unwrap()["pos_embed"].clone();
    assert!(grads.get(pos.as_tensor()).is_none());
}

#[test]
fn finite_difference_f64() {
    let cfg = tiny();
    let vm32 = VarMap::new();
    DiT::new(&cfg, &vm32, &Device::Cpu, 9).unwrap();
    randomise_zero_layers(&vm32, 3);
    // An f64 copy of all weights, so that central differences are accurate.
    let vm64 = VarMap::new();
    {
        let src = vm32.data().lock().unwrap();
        let mut dst = vm64.data().lock().unwrap();
        for (k, v) in src.iter() {
            let t = v.as_tensor().to_dtype(DType::F64).unwrap();
            dst.insert(k.clone(), Var::from_tensor(&t).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&vm64, DType::F64, &Device::Cpu);
    let model = DiT::from_var_builder(&cfg, vb).unwrap();
    let mut g = Lcg(8);
    let x = g.tensor(&[2, 3, 8, 8]).to_dtype(DType::F64).unwrap();
    let t = Tensor::new(&[0.5f64, 12.0], &Device::Cpu).unwrap();
    let y = Tensor::new(&[4u32, 10], &Device::Cpu).unwrap();
    let w = g.tensor(&[2, 6, 8, 8]).to_dtype(DType::F64).unwrap();
    let loss = |m: &DiT| -> Tensor {
        (m.forward(&x, &t, Some(&y), false).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(&model).backward().unwrap();
    let data = vm64.data().lock().unwrap().clone();
    for (name, idx) in [
        ("blocks.0.attn.qkv.weight", 37usize),
        ("blocks.1.mlp.fc1.bias", 5),
        ("x_embedder.proj.weight", 17),
        ("t_embedder.mlp.0.weight", 300),
        ("blocks.1.adaLN_modulation.1.weight", 1000),
        ("final_layer.linear.bias", 3),
    ] {
        let var = &data[name];
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[idx];
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let h = 1e-5;
        let eval = |delta: f64| -> f64 {
            let mut v = orig.clone();
            v[idx] += delta;
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            loss(&model).to_scalar::<f64>().unwrap()
        };
        let numeric = (eval(h) - eval(-h)) / (2.0 * h);
        eval(0.0);
        let err = (analytic - numeric).abs();
        assert!(
            err <= 1e-6 * (1.0 + analytic.abs()),
            "{name}[{idx}]: analytic {analytic} numeric {numeric}"
        );
        assert!(
            analytic.abs() > 1e-8,
            "{name}[{idx}]: gradient too small to test"
        );
    }
}

#[test]
fn layer_norm_matches_f64_by_hand() {
    let mut g = Lcg(5);
    let (rows, d) = (6, 10);
    let v: Vec<f32> = g.vec(rows * d).iter().map(|x| 3.0 * x + 0.5).collect();
    let x = Tensor::from_vec(v.clone(), (2, 3, d), &Device::Cpu).unwrap();
    let got = values(&layer_norm(&x, 1e-6).unwrap());
    for r in 0..rows {
        let row: Vec<f64> = v[r * d..(r + 1) * d].iter().map(|x| *x as f64).collect();
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d as f64;
        for k in 0..d {
            let want = (row[k] - mean) / (var + 1e-6).sqrt();
            let have = got[r * d + k] as f64;
            assert!(
                (want - have).abs() < 1e-5,
                "row {r} col {k}: {have} vs {want}"
            );
        }
    }
    // Constant rows: eps keeps it finite (output 0).
    let c = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(values(&layer_norm(&c, 1e-6).unwrap())
        .iter()
        .all(|x| *x == 0.0));
}

#[test]
fn sincos_table_matches_hand_computation() {
    // A 3x3 grid of 8-dim embeddings.
    let (e, gsz) = (8usize, 3usize);
    let table = sincos_pos_embed_2d(e, gsz);
    assert_eq!(table.len(), gsz * gsz * e);
    // omega = [1, 1/10000^(1/2)] = [1, 0.01]
    let om = [1.0f64, 0.01];
    for i in 0..gsz {
        for j in 0..gsz {
            let (x, yy) = (j as f64, i as f64);
            let want = [
                (x * om[0]).sin(),
                (x * om[1]).sin(),
                (x * om[0]).cos(),
                (x * om[1]).cos(),
                (yy * om[0]).sin(),
                (yy * om[1]).sin(),
                (yy * om[0]).cos(),
                (yy * om[1]).cos(),
            ];
            let tok = i * gsz + j;
            for k in 0..e {
                let have = table[tok * e + k] as f64;
                assert!((have - want[k]).abs() < 1e-6, "token ({i},{j}) dim {k}");
            }
        }
    }
    // Literal spot checks: token (row 0, col 1) starts with sin(1), sin(0.01).
    assert!((table[e] - 0.841_470_96).abs() < 1e-6);
    assert!((table[e + 1] - 0.009_999_833).abs() < 1e-6);
    // Token (row 2, col 0): second half is [sin 2, sin 0.02, cos 2, cos 0.02].
    let tok = 2 * gsz;
    assert!((table[tok * e + 4] - 0.909_297_4).abs() < 1e-6);
    assert!((table[tok * e + 6] - (-0.416_146_84)).abs() < 1e-6);
    assert_eq!(table[tok * e], 0.0);
    assert_eq!(table[tok * e + 2], 1.0);
}

#[test]
fn patch_embed_equals_strided_conv_and_unpatchify_layout() {
    let mut g = Lcg(2);
    let (n, c, r, p, d) = (2, 3, 8, 2, 5);
    let x = g.tensor(&[n, c, r, r]);
    let w = g.tensor(&[d, c, p, p]);
    let b = g.tensor(&[d]);
    let ours = patch_embed(&x, &w, &b, p).unwrap();
    let conv = x
        .conv2d(&w, 0, p, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, d, 1, 1)).unwrap())
        .unwrap()
        .flatten_from(2)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    assert_eq!(ours.dims(), conv.dims());
    let diff = (ours - conv).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);

    // unpatchify: out[n, c, hi*p+pi, wi*p+qi] = tok[n, hi*w+wi, (pi*p+qi)*C + c].
    let (gh, co) = (r / p, 4);
    let tok = g.tensor(&[n, gh * gh, p * p * co]);
    let img = unpatchify(&tok, p, co, gh, gh).unwrap();
    assert_eq!(img.dims(), [n, co, r, r]);
    let tv = values(&tok);
    let iv = values(&img);
    for bn in 0..n {
        for ch in 0..co {
            for yy in 0..r {
                for xx in 0..r {
                    let (hi, pi, wi, qi) = (yy / p, yy % p, xx / p, xx % p);
                    let t_idx =
                        (bn * gh * gh + hi * gh + wi) * p * p * co + (pi * p + qi) * co + ch;
                    let i_idx = ((bn * co + ch) * r + yy) * r + xx;
                    assert_eq!(iv[i_idx], tv[t_idx]);
                }
            }
        }
    }
}

#[test]
fn network_trait_takes_one_hot_labels() {
    let cfg = tiny();
    let varmap = VarMap::new();
    let model = DiT::new(&cfg, &varmap, &Device::Cpu, 13).unwrap();
    randomise_zero_layers(&varmap, 6);
    let mut g = Lcg(3);
    let x = g.tensor(&[3, 3, 8, 8]);
    let t = g.tensor(&[3]);
    let mut oh = vec![0f32; 3 * 10];
    oh[4] = 1.0; // class 4
    oh[10 + 9] = 1.0; // class 9; row 2 stays empty: null class
    let oh = Tensor::from_vec(oh, (3, 10), &Device::Cpu).unwrap();
    let idx = model.labels_from_one_hot(&oh).unwrap();
    assert_eq!(idx.to_vec1::<u32>().unwrap(), [4, 9, 10]);
    let net: &dyn Network = &model;
    let a = net.forward(&x, &t, Some(&oh), None, false).unwrap();
    let b = DiT::forward(&model, &x, &t, Some(&idx), false).unwrap();
    assert_eq!(values(&a), values(&b));
    assert_eq!(Network::num_parameters(&model), model.num_parameters());
    assert_eq!(
        net.trainable_vars(&varmap).unwrap().len(),
        model.parameters().len()
    );
    assert!(net
        .forward(&x, &t, Some(&oh), Some(&g.tensor(&[3, 9])), false)
        .is_err());
}

#[test]
fn train_mode_class_dropout_goes_to_null_class() {
    // Dropout probability ~1: every label becomes the null class in training.
    let cfg = DiTConfig {
        class_dropout_prob: 0.999_999_9,
        ..tiny()
    };
    let varmap = VarMap::new();
    let model = DiT::new(&cfg, &varmap, &Device::Cpu, 17).unwrap();
    randomise_zero_layers(&varmap, 9);
    let mut g = Lcg(12);
    let x = g.tensor(&[2, 3, 8, 8]);
    let t = g.tensor(&[2]);
    let y = Tensor::new(&[2u32, 5], &Device::Cpu).unwrap();
    let dropped = model.forward(&x, &t, Some(&y), true).unwrap();
    let null = model.forward(&x, &t, None, false).unwrap();
    let kept = model.forward(&x, &t, Some(&y), false).unwrap();
    assert_eq!(values(&dropped), values(&null));
    assert_ne!(values(&kept), values(&null));
}
