//! Forward multiply-adds per image: the architecture walk against hand counts, the DiT
//! paper's figure, and the ops a real forward pass runs (counted by lossfloor_ops::macs).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lossfloor_nets::checkpoint::NetworkSpec;
use lossfloor_nets::flops::forward_macs;
use lossfloor_nets::{
    DecoderType, DhariwalUNet, DhariwalUNetConfig, DiT, DiTConfig, EmbeddingType, EncoderType,
    Network, SongUNet, SongUNetConfig,
};
use lossfloor_ops::macs::count_macs;

/// Multiply-adds a forward pass of `n` images of `net` runs, as the ops record them.
fn counted(net: &dyn Network, c: usize, r: usize, labels: usize, augment: usize, n: usize) -> u64 {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (n, c, r, r), &dev).unwrap();
    let sigma = Tensor::ones(n, DType::F32, &dev).unwrap();
    let y = (labels > 0).then(|| Tensor::ones((n, labels), DType::F32, &dev).unwrap());
    let a = (augment > 0).then(|| Tensor::zeros((n, augment), DType::F32, &dev).unwrap());
    let (out, macs) = count_macs(|| net.forward(&x, &sigma, y.as_ref(), a.as_ref(), false));
    out.unwrap();
    macs
}

#[test]
fn one_level_songunet_by_hand() {
    // 4x4 images, 1 channel, 4 model channels, one level, one block per level; the
    // embedding is 16 wide (channel_mult_emb 4), the noise embedding 4 (channel_mult_noise 1).
    let cfg = SongUNetConfig {
        model_channels: 4,
        channel_mult: vec![1],
        channel_mult_emb: 4,
        channel_mult_noise: 1,
        num_blocks: 1,
        attn_resolutions: vec![],
        ..SongUNetConfig::new(4, 1, 1)
    };
    let map = 4 * 16 + 16 * 16; // map_layer0, map_layer1
    let conv3 = |cin: usize, cout: usize| 16 * cout * cin * 9; // a 3x3 conv on 4x4 pixels
    let block = |cin: usize| {
        // conv0, the affine layer (16 → 4), conv1, and a 1x1 skip when channels change.
        conv3(cin, 4) + 16 * 4 + conv3(4, 4) + if cin != 4 { 16 * 4 * cin } else { 0 }
    };
    // in0 attends over L = 16 pixels: qkv 1x1 (4 → 12), proj (4 → 4), logits + values 2·L²·4.
    let attention = 16 * 12 * 4 + 16 * 4 * 4 + 2 * 16 * 16 * 4;
    let hand = map
        + conv3(1, 4) // encoder conv
        + block(4) // enc block0
        + block(4) + attention // dec in0
        + block(4) // dec in1
        + block(8) + block(8) // dec block0, block1 on [x, skip]
        + conv3(4, 1); // aux_conv
    assert_eq!(hand, 33536);
    let net = SongUNet::new(&cfg, &VarMap::new(), &Device::Cpu, 0).unwrap();
    assert_eq!(net.forward_macs(), hand as u64);
    assert_eq!(
        forward_macs(&NetworkSpec::SongUNet(cfg)).unwrap(),
        hand as u64
    );
    assert_eq!(counted(&net, 1, 4, 0, 0, 3), 3 * hand as u64);
}

#[test]
fn tiny_dit_by_hand() {
    let cfg = DiTConfig {
        input_size: 4,
        patch_size: 2,
        in_channels: 1,
        hidden_size: 8,
        depth: 1,
        num_heads: 2,
        mlp_ratio: 4.0,
        class_dropout_prob: 0.1,
        num_classes: 3,
        learn_sigma: false,
    };
    // T = 4 tokens of width 8, MLP width 32, patches of 2x2x1.
    let hand = 4 * 8 * 4 // patch embedding
        + 256 * 8 + 8 * 8 // timestep MLP
        + 8 * 48 + 4 * 8 * 24 + 2 * 4 * 4 * 8 + 4 * 8 * 8 + 2 * 4 * 8 * 32 // block
        + 8 * 16 + 4 * 8 * 4; // final adaLN and linear
    assert_eq!(hand, 6208);
    assert_eq!(cfg.forward_macs(), hand);
    let net = DiT::new(&cfg, &VarMap::new(), &Device::Cpu, 0).unwrap();
    assert_eq!(counted(&net, 1, 4, 3, 0, 2), 2 * hand);
}

#[test]
fn dit_xl_2_matches_the_papers_gflops() {
    // DiT paper, Table 4: DiT-XL/2 at 256x256 (32x32x4 latents) costs 118.6 GFLOPs.
    let cfg = DiTConfig::preset("DiT-XL/2", 32, 4).unwrap();
    let g = cfg.forward_macs() as f64 / 1e9;
    assert!((g - 118.6).abs() < 0.05, "{g}");
    // And DiT-S/2 (6.06 GFLOPs) and DiT-B/4 (5.56), other rows of the same table.
    let s2 = DiTConfig::preset("DiT-S/2", 32, 4).unwrap().forward_macs() as f64 / 1e9;
    let b4 = DiTConfig::preset("DiT-B/4", 32, 4).unwrap().forward_macs() as f64 / 1e9;
    assert!((s2 - 6.06).abs() < 0.01, "{s2}");
    assert!((b4 - 5.56).abs() < 0.01, "{b4}");
}

#[test]
fn architecture_walk_equals_the_counted_forward_pass() {
    let dev = Device::Cpu;
    // DDPM++ (box filter, attention at 4x4) and NCSN++ (FIR filter, Fourier embedding,
    // residual encoder, skip decoder, augmentation labels), both class-conditional.
    let ddpmpp = SongUNetConfig {
        label_dim: 3,
        model_channels: 8,
        channel_mult: vec![1, 2, 2],
        num_blocks: 2,
        attn_resolutions: vec![4],
        ..SongUNetConfig::new(16, 3, 3)
    };
    let ncsnpp = SongUNetConfig {
        embedding_type: EmbeddingType::Fourier,
        channel_mult_noise: 2,
        encoder_type: EncoderType::Residual,
        decoder_type: DecoderType::Skip,
        resample_filter: vec![1.0, 3.0, 3.0, 1.0],
        augment_dim: 9,
        ..ddpmpp.clone()
    };
    for (name, cfg) in [("ddpm++", ddpmpp), ("ncsn++", ncsnpp)] {
        let net = SongUNet::new(&cfg, &VarMap::new(), &dev, 0).unwrap();
        let got = counted(&net, 3, 16, cfg.label_dim, cfg.augment_dim, 2);
        assert_eq!(got, 2 * net.forward_macs(), "{name}");
    }
    let adm = DhariwalUNetConfig {
        label_dim: 3,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_blocks: 2,
        attn_resolutions: vec![8, 4],
        channels_per_head: 8,
        ..DhariwalUNetConfig::new(8, 3, 3)
    };
    let net = DhariwalUNet::new(&adm, &VarMap::new(), &dev, 0).unwrap();
    assert_eq!(counted(&net, 3, 8, 3, 0, 2), 2 * net.forward_macs());
    let dit = DiTConfig {
        input_size: 8,
        patch_size: 2,
        in_channels: 3,
        hidden_size: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 2.0,
        class_dropout_prob: 0.1,
        num_classes: 4,
        learn_sigma: true,
    };
    let net = DiT::new(&dit, &VarMap::new(), &dev, 0).unwrap();
    assert_eq!(counted(&net, 3, 8, 4, 0, 2), 2 * dit.forward_macs());
}
