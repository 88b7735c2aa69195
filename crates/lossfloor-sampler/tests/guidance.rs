//! Classifier-free guidance: the formula on a toy denoiser, one batched pass, and the
//! W = 1 / W = 0 ends against plain conditional / unconditional sampling with a real network.

use std::cell::Cell;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lossfloor_nets::checkpoint::{NetworkSpec, PrecondSpec};
use lossfloor_nets::{DiTConfig, SongUNetConfig};
use lossfloor_sampler::net_denoiser::network_denoiser;
use lossfloor_sampler::{
    check_guidance, one_hot, sample, Denoiser, GuidedDenoiser, HeunConfig, SeedRng,
};

/// D(x; σ, c) = x/(1 + σ²) + Σ_k c_k·(k + 1): a label shifts the output by its class number
/// plus one; an all-zero label row adds nothing. Counts its calls and batch rows.
struct Toy {
    calls: Cell<usize>,
    rows: Cell<usize>,
}

impl Denoiser for Toy {
    fn denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        self.rows.set(self.rows.get() + x.dim(0)?);
        let (n, k) = labels.unwrap().dims2()?;
        let ramp = Tensor::arange(1f32, k as f32 + 1.0, x.device())?.reshape((k, 1))?;
        let shift = labels.unwrap().matmul(&ramp)?.reshape((n, 1, 1, 1))?;
        x.affine(1.0 / (1.0 + sigma * sigma), 0.0)?
            .broadcast_add(&shift)
    }
}

#[test]
fn guided_output_is_the_formula_in_one_batched_pass() {
    let dev = Device::Cpu;
    let toy = Toy {
        calls: Cell::new(0),
        rows: Cell::new(0),
    };
    let x = Tensor::randn(0f32, 1.0, (3, 2, 4, 4), &dev).unwrap();
    let labels = one_hot(&[0, 2, 1], 3, &dev).unwrap();
    for w in [2.5, 1.0, 0.0, -0.5] {
        let g = GuidedDenoiser::new(&toy, w);
        let before = toy.calls.get();
        let got = g.denoise(&x, 0.7, Some(&labels)).unwrap();
        assert_eq!(toy.calls.get() - before, 1, "one network pass per call");
        // D_uncond = x/(1+σ²) (zero label), D_cond = D_uncond + (class + 1), so
        // D = D_uncond + W·(class + 1).
        let base = x.affine(1.0 / (1.0 + 0.49), 0.0).unwrap();
        for (i, class) in [0f64, 2.0, 1.0].into_iter().enumerate() {
            let want = base.get(i).unwrap().affine(1.0, w * (class + 1.0)).unwrap();
            let diff = (got.get(i).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // f32: W·D_cond + (1 − W)·D_uncond vs D_uncond + W·(class + 1), values ≲ 10:
            // a few ulp of 10 (≈ 1e-6 each).
            assert!(diff <= 4e-6, "W={w} row {i}: {diff}");
        }
    }
    assert_eq!(toy.rows.get(), 4 * 6, "each pass sees [x; x]: 2N rows");
}

fn conditional_net(dropout: f64) -> NetworkSpec {
    NetworkSpec::SongUNet(SongUNetConfig {
        label_dim: 3,
        label_dropout: dropout,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![],
        ..SongUNetConfig::new(8, 3, 3)
    })
}

/// Samples 4 seeds with `den`, labels `labels` (or none), 6 Heun steps, churn on (so the
/// per-seed noise streams are used too).
fn draw(den: &dyn Denoiser, labels: Option<&Tensor>) -> Tensor {
    let dev = Device::Cpu;
    let mut rng = SeedRng::new(&[3, 1, 4, 1_000_000]);
    let latents = rng.randn(&[3, 8, 8], &dev).unwrap();
    let cfg = HeunConfig {
        num_steps: 6,
        s_churn: 10.0,
        ..HeunConfig::default()
    };
    sample(den, &latents, labels, &cfg, &mut |s| {
        rng.randn_like(s, &dev)
    })
    .unwrap()
}

#[test]
fn weight_one_is_conditional_and_weight_zero_unconditional_sampling() {
    let dev = Device::Cpu;
    let spec = conditional_net(0.1);
    let varmap = VarMap::new();
    let net = spec.build(&varmap, &dev, 5).unwrap();
    // A fresh network's output layers are zero (EDM's init), so its output ignores the label;
    // every weight is perturbed to make the labels matter.
    for var in varmap.all_vars() {
        let t = var.as_tensor();
        var.set(&(t + t.randn_like(0.0, 0.05).unwrap()).unwrap())
            .unwrap();
    }
    let precond = PrecondSpec {
        process: "edm".into(),
        sigma_data: None,
    };
    let den = network_denoiser(net.as_ref(), &precond, 3).unwrap();
    let labels = one_hot(&[0, 2, 1, 2], 3, &dev).unwrap();
    let zeros = labels.zeros_like().unwrap();
    let cond = draw(&den, Some(&labels));
    let uncond = draw(&den, Some(&zeros));
    let w1 = draw(&GuidedDenoiser::new(&den, 1.0), Some(&labels));
    let w0 = draw(&GuidedDenoiser::new(&den, 0.0), Some(&labels));
    let w3 = draw(&GuidedDenoiser::new(&den, 3.0), Some(&labels));
    let same = |a: &Tensor, b: &Tensor| {
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    // The network's rows are independent of the batch they are in (per-sample ops and
    // GEMMs whose per-element sums do not depend on the row count), and W·c + (1 − W)·u
    // is c for W = 1 and u for W = 0 exactly: bit for bit.
    assert!(same(&w1, &cond), "W = 1 must be conditional sampling");
    assert!(same(&w0, &uncond), "W = 0 must be unconditional sampling");
    assert!(!same(&w3, &cond), "W = 3 must change the samples");
}

#[test]
fn guidance_needs_labels_and_label_dropout() {
    let e = check_guidance(&conditional_net(0.0), 2.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label_dropout = 0"), "{e}");
    let uncond = NetworkSpec::SongUNet(SongUNetConfig::new(8, 3, 3));
    let e = check_guidance(&uncond, 2.0).unwrap_err().to_string();
    assert!(e.contains("label_dim = 0"), "{e}");
    let dit = NetworkSpec::DiT(DiTConfig {
        class_dropout_prob: 0.0,
        ..DiTConfig::preset("DiT-S/8", 32, 4).unwrap()
    });
    let e = check_guidance(&dit, 2.0).unwrap_err().to_string();
    assert!(e.contains("class_dropout_prob = 0"), "{e}");
    let e = check_guidance(&conditional_net(0.1), f64::NAN)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--guidance NaN"), "{e}");
    assert!(check_guidance(&conditional_net(0.1), 1.5).is_ok());
}
