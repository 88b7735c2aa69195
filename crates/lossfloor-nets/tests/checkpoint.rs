//! Checkpoint round trips and the exact-match checks of `lossfloor_nets::checkpoint`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lossfloor_nets::checkpoint::{
    load_network, load_network_with_config, save_network, varmap_tensors, NetworkSpec, PrecondSpec,
    META_FORMAT, META_NETWORK,
};
use lossfloor_nets::{
    DhariwalUNetConfig, DiTConfig, EmbeddingType, EncoderType, NetsError, SongUNetConfig,
};

fn tiny_songunet(label_dim: usize) -> SongUNetConfig {
    SongUNetConfig {
        label_dim,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![4],
        ..SongUNetConfig::new(8, 3, 3)
    }
}

/// NCSN++-style: Fourier embedding (a stored buffer), residual encoder, [1,3,3,1] filter.
fn tiny_ncsnpp() -> SongUNetConfig {
    SongUNetConfig {
        embedding_type: EmbeddingType::Fourier,
        channel_mult_noise: 2,
        encoder_type: EncoderType::Residual,
        resample_filter: vec![1.0, 3.0, 3.0, 1.0],
        augment_dim: 9,
        ..tiny_songunet(0)
    }
}

fn tiny_dhariwal() -> DhariwalUNetConfig {
    DhariwalUNetConfig {
        label_dim: 3,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![4],
        channels_per_head: 8,
        ..DhariwalUNetConfig::new(8, 3, 3)
    }
}

fn tiny_dit() -> DiTConfig {
    DiTConfig {
        input_size: 8,
        patch_size: 2,
        in_channels: 3,
        hidden_size: 16,
        depth: 1,
        num_heads: 2,
        mlp_ratio: 2.0,
        class_dropout_prob: 0.1,
        num_classes: 4,
        learn_sigma: true,
    }
}

fn precond() -> PrecondSpec {
    PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    }
}

/// Fixed inputs: x [2, C, R, R], noise labels [2], one-hot labels when conditional.
fn inputs(spec: &NetworkSpec) -> (Tensor, Tensor, Option<Tensor>) {
    let (c, r) = (spec.img_channels(), spec.img_resolution());
    let n = 2 * c * r * r;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let x = Tensor::from_vec(x, (2, c, r, r), &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.3f32, -0.7], &Device::Cpu).unwrap();
    let k = spec.label_dim();
    let labels = (k > 0).then(|| {
        let mut v = vec![0f32; 2 * k];
        v[1] = 1.0;
        v[k] = 1.0;
        Tensor::from_vec(v, (2, k), &Device::Cpu).unwrap()
    });
    (x, t, labels)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn round_trip(spec: NetworkSpec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    let varmap = VarMap::new();
    let net = spec.build(&varmap, &Device::Cpu, 7).unwrap();
    let tensors = varmap_tensors(&varmap).unwrap();
    let extra = vec![("lossfloor.kimg".to_string(), "123".to_string())];
    save_network(&path, &spec, &precond(), &tensors, &extra).unwrap();

    let loaded = load_network(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.spec, spec);
    assert_eq!(loaded.precond, precond());
    assert_eq!(loaded.meta[META_FORMAT], "network-v1");
    assert_eq!(loaded.meta["lossfloor.kimg"], "123");
    let again = varmap_tensors(&loaded.varmap).unwrap();
    assert_eq!(again.len(), tensors.len(), "{}", spec.arch());
    for ((n0, t0), (n1, t1)) in tensors.iter().zip(&again) {
        assert_eq!(n0, n1);
        assert_eq!(t0.dims(), t1.dims(), "{n0}");
        assert_eq!(bits(t0), bits(t1), "{n0}");
    }
    assert_eq!(net.num_parameters(), loaded.network.num_parameters());
    assert_eq!(
        loaded.network.parameters().len(),
        loaded.network.trainable_vars(&loaded.varmap).unwrap().len()
    );

    let (x, t, labels) = inputs(&spec);
    let y0 = net.forward(&x, &t, labels.as_ref(), None, false).unwrap();
    let y1 = loaded
        .network
        .forward(&x, &t, labels.as_ref(), None, false)
        .unwrap();
    assert_eq!(bits(&y0), bits(&y1), "{} output", spec.arch());
    // The inference copy gives the same bits without recording an autograd graph (the Var
    // network's output does record one).
    assert!(
        y1.track_op(),
        "{}: the Var network records a graph",
        spec.arch()
    );
    let inference = loaded.inference_network().unwrap();
    let y2 = inference
        .forward(&x, &t, labels.as_ref(), None, false)
        .unwrap();
    assert!(
        !y2.track_op(),
        "{}: inference output records a graph",
        spec.arch()
    );
    assert_eq!(bits(&y1), bits(&y2), "{} inference output", spec.arch());
    // Re-saving the loaded state gives a file that loads to the same tensors.
    let path2 = dir.path().join("again.safetensors");
    save_network(&path2, &loaded.spec, &loaded.precond, &again, &extra).unwrap();
    let twice = load_network(&path2, &Device::Cpu).unwrap();
    let twice = varmap_tensors(&twice.varmap).unwrap();
    assert_eq!(twice.len(), tensors.len());
    for ((n0, t0), (n1, t1)) in tensors.iter().zip(&twice) {
        assert_eq!((n0, bits(t0)), (n1, bits(t1)));
    }
}

#[test]
fn round_trip_songunet_ddpmpp_conditional() {
    round_trip(NetworkSpec::SongUNet(tiny_songunet(5)));
}

#[test]
fn round_trip_songunet_ncsnpp_with_fourier_buffer() {
    round_trip(NetworkSpec::SongUNet(tiny_ncsnpp()));
}

#[test]
fn round_trip_dhariwal() {
    round_trip(NetworkSpec::Dhariwal(tiny_dhariwal()));
}

#[test]
fn round_trip_dit() {
    round_trip(NetworkSpec::DiT(tiny_dit()));
}

fn save_tiny(path: &Path, spec: &NetworkSpec) -> Vec<(String, Tensor)> {
    let varmap = VarMap::new();
    spec.build(&varmap, &Device::Cpu, 1).unwrap();
    let tensors = varmap_tensors(&varmap).unwrap();
    save_network(path, spec, &precond(), &tensors, &[]).unwrap();
    tensors
}

fn err_text(e: NetsError) -> String {
    e.to_string()
}

#[test]
fn mismatched_config_names_first_tensor_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    save_tiny(&weights, &NetworkSpec::SongUNet(tiny_songunet(0)));
    // A TOML with twice the channels: the first tensor built is the label-free
    // mapping layer map_layer0 [emb, noise] = [32, 8] vs [64, 16].
    let toml = dir.path().join("net.toml");
    std::fs::write(
        &toml,
        "[network]\narch = \"songunet\"\nimg_resolution = 8\nin_channels = 3\nout_channels = 3\n\
         model_channels = 16\nchannel_mult = [1, 2]\nnum_blocks = 1\nattn_resolutions = [4]\n\
         [precond]\nprocess = \"edm\"\n",
    )
    .unwrap();
    let e = err_text(load_network_with_config(&weights, &toml, &Device::Cpu).unwrap_err());
    assert!(e.contains("w.safetensors"), "{e}");
    assert!(
        e.contains("tensor model.map_layer0.weight has shape [32, 8], the config expects [64, 16]"),
        "{e}"
    );

    // Metadata says one thing, a hand-edited file another: label_dim 5 expects map_label.
    let spec_meta = NetworkSpec::SongUNet(tiny_songunet(5));
    let tensors = {
        let varmap = VarMap::new();
        NetworkSpec::SongUNet(tiny_songunet(0))
            .build(&varmap, &Device::Cpu, 1)
            .unwrap();
        varmap_tensors(&varmap).unwrap()
    };
    let lying = dir.path().join("lying.safetensors");
    save_network(&lying, &spec_meta, &precond(), &tensors, &[]).unwrap();
    let e = err_text(load_network(&lying, &Device::Cpu).unwrap_err());
    assert!(
        e.contains("tensor model.map_label.weight is missing, the config expects shape [8, 5]"),
        "{e}"
    );

    // An extra tensor is reported as unexpected.
    let mut extra = tensors.clone();
    extra.push((
        "model.zzz.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    ));
    let extra_path = dir.path().join("extra.safetensors");
    save_network(
        &extra_path,
        &NetworkSpec::SongUNet(tiny_songunet(0)),
        &precond(),
        &extra,
        &[],
    )
    .unwrap();
    let e = err_text(load_network(&extra_path, &Device::Cpu).unwrap_err());
    assert!(
        e.contains("unexpected tensor model.zzz.weight with shape [2, 2]"),
        "{e}"
    );
}

#[test]
fn truncated_missing_and_foreign_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    save_tiny(&path, &NetworkSpec::SongUNet(tiny_songunet(0)));
    let bytes = std::fs::read(&path).unwrap();

    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = err_text(load_network(&cut, &Device::Cpu).unwrap_err());
    assert!(e.contains("cut.safetensors"), "{e}");

    let head = dir.path().join("head.safetensors");
    std::fs::write(&head, &bytes[..5]).unwrap();
    assert!(load_network(&head, &Device::Cpu).is_err());

    let missing = dir.path().join("nope.safetensors");
    let e = err_text(load_network(&missing, &Device::Cpu).unwrap_err());
    assert!(e.contains("nope.safetensors"), "{e}");

    // A plain state dict without metadata needs a config.
    let plain = dir.path().join("plain.safetensors");
    let varmap = VarMap::new();
    NetworkSpec::SongUNet(tiny_songunet(0))
        .build(&varmap, &Device::Cpu, 1)
        .unwrap();
    let map: std::collections::HashMap<String, Tensor> =
        varmap_tensors(&varmap).unwrap().into_iter().collect();
    candle_core::safetensors::save(&map, &plain).unwrap();
    let e = err_text(load_network(&plain, &Device::Cpu).unwrap_err());
    assert!(e.contains(META_FORMAT) && e.contains("TOML"), "{e}");
}

#[test]
fn plain_state_dict_with_toml_config() {
    let dir = tempfile::tempdir().unwrap();
    let spec = NetworkSpec::SongUNet(tiny_ncsnpp());
    let varmap = VarMap::new();
    let net = spec.build(&varmap, &Device::Cpu, 3).unwrap();
    let mut map: std::collections::HashMap<String, Tensor> =
        varmap_tensors(&varmap).unwrap().into_iter().collect();
    // EDM's state dicts carry constant FIR buffers on the resampling convs; they are
    // accepted when they match the configured filter.
    let f = [1f32, 3., 3., 1.];
    let fir: Vec<f32> = f
        .iter()
        .flat_map(|a| f.iter().map(move |b| a * b / 64.0))
        .collect();
    let fir = Tensor::from_vec(fir, (1, 1, 4, 4), &Device::Cpu).unwrap();
    map.insert("model.enc.4x4_down.conv0.resample_filter".into(), fir);
    let weights = dir.path().join("state.safetensors");
    candle_core::safetensors::save(&map, &weights).unwrap();
    let toml = dir.path().join("net.toml");
    std::fs::write(
        &toml,
        "[network]\narch = \"songunet\"\nimg_resolution = 8\nin_channels = 3\nout_channels = 3\n\
         augment_dim = 9\nmodel_channels = 8\nchannel_mult = [1, 2]\nnum_blocks = 1\n\
         attn_resolutions = [4]\nembedding_type = \"fourier\"\nchannel_mult_noise = 2\n\
         encoder_type = \"residual\"\nresample_filter = [1, 3, 3, 1]\n\
         [precond]\nprocess = \"vp\"\n",
    )
    .unwrap();
    let loaded = load_network_with_config(&weights, &toml, &Device::Cpu).unwrap();
    assert_eq!(loaded.spec, spec);
    assert_eq!(loaded.precond.process, "vp");
    assert!(!loaded.meta.contains_key(META_NETWORK));
    let (x, t, _) = inputs(&spec);
    let y0 = net.forward(&x, &t, None, None, false).unwrap();
    let y1 = loaded.network.forward(&x, &t, None, None, false).unwrap();
    assert_eq!(bits(&y0), bits(&y1));

    // A filter buffer that disagrees with the config is an error.
    let bad = Tensor::full(0.25f32, (1, 1, 2, 2), &Device::Cpu).unwrap();
    map.insert("model.enc.4x4_down.conv0.resample_filter".into(), bad);
    candle_core::safetensors::save(&map, &weights).unwrap();
    let e = err_text(load_network_with_config(&weights, &toml, &Device::Cpu).unwrap_err());
    assert!(e.contains("resample_filter"), "{e}");

    // A missing config file is named.
    let e = err_text(
        load_network_with_config(&weights, &dir.path().join("no.toml"), &Device::Cpu).unwrap_err(),
    );
    assert!(e.contains("no.toml"), "{e}");
}

#[test]
fn spec_json_uses_arch_tags_and_reference_names() {
    let spec = NetworkSpec::Dhariwal(tiny_dhariwal());
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v["arch"], "dhariwal");
    assert_eq!(v["config"]["model_channels"], 8);
    let dit: NetworkSpec = serde_json::from_value(serde_json::json!({
        "arch": "dit",
        "config": {"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 16,
                   "depth": 1, "num_heads": 2}
    }))
    .unwrap();
    assert_eq!(dit.label_dim(), 1000);
    assert_eq!(dit.img_channels(), 4);
    assert_eq!(dit.img_resolution(), 8);
    assert_eq!(
        serde_json::to_value(NetworkSpec::SongUNet(tiny_songunet(0))).unwrap()["arch"],
        "songunet"
    );
}

#[test]
fn bad_precond_and_reserved_meta_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let spec = NetworkSpec::SongUNet(tiny_songunet(0));
    let varmap = VarMap::new();
    spec.build(&varmap, &Device::Cpu, 1).unwrap();
    let tensors = varmap_tensors(&varmap).unwrap();
    let path = dir.path().join("x.safetensors");
    let bad = PrecondSpec {
        process: "ddim".into(),
        sigma_data: None,
    };
    assert!(save_network(&path, &spec, &bad, &tensors, &[]).is_err());
    let reserved = vec![(META_FORMAT.to_string(), "x".to_string())];
    assert!(save_network(&path, &spec, &precond(), &tensors, &reserved).is_err());
    assert!(!path.exists());
}
