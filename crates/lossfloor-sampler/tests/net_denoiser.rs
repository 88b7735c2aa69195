//! The preconditioned network denoiser: D = c_skip·x + c_out·F(c_in·x; c_noise).

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lossfloor_core::ProcessKind;
use lossfloor_nets::checkpoint::{NetworkSpec, PrecondSpec};
use lossfloor_nets::SongUNetConfig;
use lossfloor_sampler::net_denoiser::{network_denoiser, process_from_spec};
use lossfloor_sampler::Denoiser;

fn spec(out_channels: usize) -> NetworkSpec {
    NetworkSpec::SongUNet(SongUNetConfig {
        label_dim: 2,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![],
        ..SongUNetConfig::new(8, 3, out_channels)
    })
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn denoiser_applies_the_process_coefficients() {
    for (process, out_channels) in [("edm", 3), ("vp", 3), ("iddpm", 6), ("fm", 3)] {
        let spec = spec(out_channels);
        let varmap = VarMap::new();
        let net = spec.build(&varmap, &Device::Cpu, 2).unwrap();
        let precond = PrecondSpec {
            process: process.into(),
            sigma_data: None,
        };
        let d = network_denoiser(net.as_ref(), &precond, 3).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
        let labels = Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu).unwrap();
        let sigma = d.round_sigma(1.7);
        let got = d.denoise(&x, sigma, Some(&labels)).unwrap();
        assert_eq!(got.dims(), &[2, 3, 8, 8]);

        let p = process_from_spec(&precond).unwrap().precond(sigma);
        let noise = Tensor::full(p.c_noise as f32, 2, &Device::Cpu).unwrap();
        let f = net
            .forward(
                &x.affine(p.c_in, 0.0).unwrap(),
                &noise,
                Some(&labels),
                None,
                false,
            )
            .unwrap()
            .narrow(1, 0, 3)
            .unwrap();
        let want = (x.affine(p.c_skip, 0.0).unwrap() + f.affine(p.c_out, 0.0).unwrap()).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5, "{process}");
    }
}

#[test]
fn edm_sigma_data_is_used_and_unknown_process_rejected() {
    let p = process_from_spec(&PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(1.0),
    })
    .unwrap();
    assert_eq!(p.kind(), ProcessKind::Edm);
    assert!((p.precond(1.0).c_skip - 0.5).abs() < 1e-12);
    assert!(process_from_spec(&PrecondSpec {
        process: "ddim".into(),
        sigma_data: None,
    })
    .is_err());
}

/// The denoiser's output carries no autograd graph back to the network's weights: otherwise
/// every sampler step would chain the previous evaluations' graphs and keep them all alive
/// (a 64-image grid of the quick Fashion-MNIST config ran out of 24 GB that way).
#[test]
fn denoiser_output_is_detached_from_the_weights() {
    let spec = spec(3);
    let varmap = VarMap::new();
    let net = spec.build(&varmap, &Device::Cpu, 2).unwrap();
    let precond = PrecondSpec {
        process: "edm".into(),
        sigma_data: Some(0.5),
    };
    let d = network_denoiser(net.as_ref(), &precond, 3).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
    let labels = Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu).unwrap();
    // The raw network output does depend on the weights (the premise)...
    let noise = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    let raw = net.forward(&x, &noise, Some(&labels), None, false).unwrap();
    let (_, w) = &net.parameters()[0];
    assert!(raw.sum_all().unwrap().backward().unwrap().get(w).is_some());
    // ...the denoiser's output does not.
    let out = d.denoise(&x, 1.0, Some(&labels)).unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    for (name, p) in net.parameters() {
        assert!(
            grads.get(&p).is_none(),
            "{name} is still reachable from the output"
        );
    }
}
