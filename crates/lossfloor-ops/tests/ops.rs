//! Each op against plain candle ops (float64, forward and every gradient) and against
//! central finite differences in float64, on odd shapes, strides and paddings.

use candle_core::{DType, Device, Tensor, Var};
use lossfloor_ops::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(shape: &[usize], rng: &mut ChaCha8Rng, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f64> = a
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f64> = b
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// Value and gradients of Σ f(inputs)·r for a fixed random r.
fn value_and_grads(
    f: &dyn Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    r_seed: u64,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let mut rng = ChaCha8Rng::seed_from_u64(r_seed);
    let r = random(y.dims(), &mut rng, y.dtype());
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    (
        y,
        vars.iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .expect("gradient reaches every input")
                    .clone()
            })
            .collect(),
    )
}

/// Central finite differences of Σ f(inputs)·r with respect to a few entries of each input.
fn check_finite_differences(
    f: &dyn Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    grads: &[Tensor],
    r_seed: u64,
) {
    let y0 = f(inputs);
    let mut rng = ChaCha8Rng::seed_from_u64(r_seed);
    let r = random(y0.dims(), &mut rng, DType::F64);
    let loss = |ins: &[Tensor]| {
        (f(ins) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-6;
    let mut pick = ChaCha8Rng::seed_from_u64(5);
    for (k, input) in inputs.iter().enumerate() {
        let flat: Vec<f64> = input.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f64> = grads[k].flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..6 {
            let j = pick.random_range(0..flat.len());
            let bumped = |delta: f64| {
                let mut v = flat.clone();
                v[j] += delta;
                let mut ins = inputs.to_vec();
                ins[k] = Tensor::from_vec(v, input.dims(), &Device::Cpu).unwrap();
                loss(&ins)
            };
            let fd = (bumped(h) - bumped(-h)) / (2.0 * h);
            // Central differences in f64 have O(h²) truncation and ~1e-16/h rounding error.
            assert!(
                (fd - g[j]).abs() <= 1e-6 * (1.0 + g[j].abs()),
                "input {k}, entry {j}: analytic {} vs finite difference {fd}",
                g[j]
            );
        }
    }
}

#[test]
fn conv2d_matches_candle_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // (N, C_in, H, W, C_out, k, stride, pad)
    for &(n, ci, h, w, co, k, s, p) in &[
        (2, 3, 7, 5, 4, 3, 1, 1),
        (3, 2, 8, 8, 5, 3, 2, 1),
        (2, 6, 5, 6, 3, 1, 1, 0),
        (1, 3, 9, 7, 2, 4, 2, 1),
        (2, 4, 6, 6, 4, 2, 2, 0),
        (1, 2, 5, 5, 3, 5, 1, 2),
        (2, 3, 6, 5, 2, 3, 3, 2),
    ] {
        let x = random(&[n, ci, h, w], &mut rng, DType::F64);
        let wt = random(&[co, ci, k, k], &mut rng, DType::F64);
        let b = random(&[co], &mut rng, DType::F64);
        let ours = |t: &[Tensor]| conv2d(&t[0], &t[1], Some(&t[2]), s, p).unwrap();
        let reference = |t: &[Tensor]| conv2d_reference(&t[0], &t[1], Some(&t[2]), s, p).unwrap();
        let inputs = [x, wt, b];
        let (y1, g1) = value_and_grads(&ours, &inputs, 3);
        let case = format!("n={n} ci={ci} {h}x{w} co={co} k={k} s={s} p={p}");
        if (h + 2 * p - k) % s != 0 || (w + 2 * p - k) % s != 0 {
            // candle's own conv2d backward returns a wrongly shaped input gradient when the
            // stride does not divide the padded extent (its conv_transpose2d lacks the output
            // padding): check the forward against candle, the gradients by finite differences.
            let y2 = reference(&inputs);
            assert!(max_rel_diff(&y1, &y2) < 1e-12, "forward {case}");
            check_finite_differences(&ours, &inputs, &g1, 3);
            continue;
        }
        let (y2, g2) = value_and_grads(&reference, &inputs, 3);
        assert!(max_rel_diff(&y1, &y2) < 1e-12, "forward {case}");
        for (a, b) in g1.iter().zip(&g2) {
            assert!(max_rel_diff(a, b) < 1e-12, "gradient {case}");
        }
        check_finite_differences(&ours, &inputs, &g1, 3);

        // f32: the same to f32 rounding (K = C_in·k² ≤ 50 products per output: ≤ ~1e-5).
        let f32_inputs: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_dtype(DType::F32).unwrap())
            .collect();
        let (y3, g3) = value_and_grads(&ours, &f32_inputs, 3);
        assert!(max_rel_diff(&y3, &y2) < 1e-5, "f32 forward {case}");
        for (a, b) in g3.iter().zip(&g2) {
            assert!(max_rel_diff(a, b) < 1e-5, "f32 gradient {case}");
        }
    }
}

#[test]
fn group_norm_matches_candle_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for &(n, c, h, w, groups) in &[
        (2, 8, 5, 3, 4),
        (3, 6, 4, 4, 3),
        (1, 4, 7, 5, 1),
        (2, 12, 3, 3, 12),
    ] {
        for silu in [false, true] {
            let x = (random(&[n, c, h, w], &mut rng, DType::F64) * 2.0).unwrap();
            let gamma = (random(&[c], &mut rng, DType::F64) + 1.0).unwrap();
            let beta = random(&[c], &mut rng, DType::F64);
            let ours = |t: &[Tensor]| group_norm(&t[0], groups, &t[1], &t[2], 1e-5, silu).unwrap();
            let reference = |t: &[Tensor]| {
                group_norm_reference(&t[0], groups, &t[1], &t[2], 1e-5, silu).unwrap()
            };
            let inputs = [x, gamma, beta];
            let (y1, g1) = value_and_grads(&ours, &inputs, 4);
            let (y2, g2) = value_and_grads(&reference, &inputs, 4);
            let case = format!("n={n} c={c} {h}x{w} groups={groups} silu={silu}");
            assert!(max_rel_diff(&y1, &y2) < 1e-12, "forward {case}");
            for (a, b) in g1.iter().zip(&g2) {
                assert!(
                    max_rel_diff(a, b) < 1e-10,
                    "gradient {case}: {}",
                    max_rel_diff(a, b)
                );
            }
            check_finite_differences(&ours, &inputs, &g1, 4);
            let f32_inputs: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.to_dtype(DType::F32).unwrap())
                .collect();
            let (y3, g3) = value_and_grads(&ours, &f32_inputs, 4);
            assert!(max_rel_diff(&y3, &y2) < 1e-5, "f32 forward {case}");
            for (a, b) in g3.iter().zip(&g2) {
                assert!(max_rel_diff(a, b) < 1e-4, "f32 gradient {case}");
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d(&x, &w, None, 1, 1)
        .unwrap_err()
        .to_string()
        .contains("channels"));
    let g = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
    assert!(group_norm(&x, 2, &g, &g, 1e-5, true)
        .unwrap_err()
        .to_string()
        .contains("groups"));
}

/// softmax(qᵀk/√C)·v by plain loops in f64, `[B, C, L]` layout.
fn attention_brute_force(q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f64> {
    let (b, c, l) = q.dims3().unwrap();
    let get = |t: &Tensor| -> Vec<f64> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let (q, k, v) = (get(q), get(k), get(v));
    let at = |t: &[f64], bb: usize, cc: usize, i: usize| t[(bb * c + cc) * l + i];
    let mut out = vec![0f64; b * c * l];
    for bb in 0..b {
        for i in 0..l {
            let logits: Vec<f64> = (0..l)
                .map(|j| {
                    (0..c)
                        .map(|cc| at(&q, bb, cc, i) * at(&k, bb, cc, j))
                        .sum::<f64>()
                        / (c as f64).sqrt()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for cc in 0..c {
                out[(bb * c + cc) * l + i] =
                    (0..l).map(|j| e[j] / z * at(&v, bb, cc, j)).sum::<f64>();
            }
        }
    }
    out
}

#[test]
fn attention_matches_brute_force_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &(b, c, l) in &[(2, 3, 5), (1, 8, 7), (3, 4, 1)] {
        let inputs: Vec<Tensor> = (0..3)
            .map(|_| (random(&[b, c, l], &mut rng, DType::F64) * 2.0).unwrap())
            .collect();
        let ours = |t: &[Tensor]| attention(&t[0], &t[1], &t[2]).unwrap();
        let (y, g) = value_and_grads(&ours, &inputs, 8);
        let want = attention_brute_force(&inputs[0], &inputs[1], &inputs[2]);
        let want = Tensor::from_vec(want, (b, c, l), &Device::Cpu).unwrap();
        assert!(max_rel_diff(&y, &want) < 1e-12, "forward {b}x{c}x{l}");
        check_finite_differences(&ours, &inputs, &g, 8);
        let f32_inputs: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_dtype(DType::F32).unwrap())
            .collect();
        let (y32, g32) = value_and_grads(&ours, &f32_inputs, 8);
        assert!(max_rel_diff(&y32, &want) < 1e-5, "f32 forward {b}x{c}x{l}");
        for (a, b64) in g32.iter().zip(&g) {
            assert!(max_rel_diff(a, b64) < 1e-4, "f32 gradient {b}x{c}x{l}");
        }
    }
}

#[test]
fn upsample2x_matches_broadcast_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for &(n, c, h, w) in &[(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 3, 2)] {
        let x = random(&[n, c, h, w], &mut rng, DType::F64);
        let ours = |t: &[Tensor]| upsample2x_nearest(&t[0]).unwrap();
        let reference = |t: &[Tensor]| upsample2x_nearest_reference(&t[0]).unwrap();
        let inputs = [x];
        let (y1, g1) = value_and_grads(&ours, &inputs, 10);
        let (y2, g2) = value_and_grads(&reference, &inputs, 10);
        // copies and 4-term sums: exact up to the order of the 4 additions
        assert_eq!(max_rel_diff(&y1, &y2), 0.0, "forward {n}x{c}x{h}x{w}");
        assert!(
            max_rel_diff(&g1[0], &g2[0]) < 1e-15,
            "gradient {n}x{c}x{h}x{w}"
        );
        check_finite_differences(&ours, &inputs, &g1, 10);
        let x32 = [inputs[0].to_dtype(DType::F32).unwrap()];
        let (y3, _) = value_and_grads(&ours, &x32, 10);
        assert!(max_rel_diff(&y3, &y2) < 1e-7);
        // A broadcast incoming gradient (that of a plain sum) is read through its strides.
        let v = Var::from_tensor(&inputs[0]).unwrap();
        let g = upsample2x_nearest(v.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f64> = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(g.iter().all(|&x| x == 4.0));
    }
}

#[test]
fn add_scaled_matches_composition_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for s in [1.0, std::f64::consts::FRAC_1_SQRT_2] {
        let inputs = [
            random(&[2, 3, 4, 5], &mut rng, DType::F64),
            random(&[2, 3, 4, 5], &mut rng, DType::F64),
        ];
        let ours = |t: &[Tensor]| add_scaled(&t[0], &t[1], s).unwrap();
        let composed = |t: &[Tensor]| ((&t[0] + &t[1]).unwrap() * s).unwrap();
        let (y1, g1) = value_and_grads(&ours, &inputs, 13);
        let (y2, g2) = value_and_grads(&composed, &inputs, 13);
        assert!(max_rel_diff(&y1, &y2) < 1e-15);
        for (a, b) in g1.iter().zip(&g2) {
            assert!(max_rel_diff(a, b) < 1e-15);
        }
        check_finite_differences(&ours, &inputs, &g1, 13);
    }
}

#[test]
fn shifted_group_norm_matches_composition_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    for &(n, c, h, w, groups) in &[(2, 8, 5, 3, 4), (3, 6, 4, 4, 3), (1, 4, 3, 5, 2)] {
        for silu in [false, true] {
            let inputs = [
                (random(&[n, c, h, w], &mut rng, DType::F64) * 2.0).unwrap(),
                random(&[n, c], &mut rng, DType::F64),
                (random(&[c], &mut rng, DType::F64) + 1.0).unwrap(),
                random(&[c], &mut rng, DType::F64),
            ];
            let ours = |t: &[Tensor]| {
                group_norm_shifted(&t[0], &t[1], groups, &t[2], &t[3], 1e-5, silu).unwrap()
            };
            let composed = |t: &[Tensor]| {
                let x = t[0]
                    .broadcast_add(&t[1].reshape((n, c, 1, 1)).unwrap())
                    .unwrap();
                group_norm_reference(&x, groups, &t[2], &t[3], 1e-5, silu).unwrap()
            };
            let case = format!("n={n} c={c} {h}x{w} groups={groups} silu={silu}");
            let (y1, g1) = value_and_grads(&ours, &inputs, 15);
            let (y2, g2) = value_and_grads(&composed, &inputs, 15);
            assert!(max_rel_diff(&y1, &y2) < 1e-12, "forward {case}");
            for (k, (a, b)) in g1.iter().zip(&g2).enumerate() {
                assert!(max_rel_diff(a, b) < 1e-10, "gradient {k} {case}");
            }
            check_finite_differences(&ours, &inputs, &g1, 15);
            let f32_inputs: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.to_dtype(DType::F32).unwrap())
                .collect();
            let (y3, g3) = value_and_grads(&ours, &f32_inputs, 15);
            assert!(max_rel_diff(&y3, &y2) < 1e-5, "f32 forward {case}");
            for (a, b) in g3.iter().zip(&g2) {
                assert!(max_rel_diff(a, b) < 1e-4, "f32 gradient {case}");
            }
        }
    }
}

/// The inference attention (inputs that record no graph: one fused kernel reading q, k, v
/// through their strides) against the loops, on views of one qkv tensor as the U-Nets pass
/// them, and against the differentiable composition.
#[test]
fn inference_attention_matches_brute_force_on_strided_views() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for &(b, c, l) in &[(2, 3, 5), (3, 8, 16), (1, 4, 1)] {
        let qkv = (random(&[b, c, 3, l], &mut rng, DType::F64) * 2.0).unwrap();
        let part = |i: usize| qkv.narrow(2, i, 1).unwrap().squeeze(2).unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        assert!(!q.is_contiguous());
        let want = attention_brute_force(
            &q.contiguous().unwrap(),
            &k.contiguous().unwrap(),
            &v.contiguous().unwrap(),
        );
        let want = Tensor::from_vec(want, (b, c, l), &Device::Cpu).unwrap();
        let y = attention(&q, &k, &v).unwrap();
        assert!(max_rel_diff(&y, &want) < 1e-12, "f64 {b}x{c}x{l}");
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let y32 = attention(&f32(&q), &f32(&k), &f32(&v)).unwrap();
        assert!(max_rel_diff(&y32, &want) < 1e-5, "f32 {b}x{c}x{l}");
        // The composed (training) path on the same values: a Var input takes it.
        let qv = Var::from_tensor(&f32(&q)).unwrap();
        let composed = attention(qv.as_tensor(), &f32(&k), &f32(&v)).unwrap();
        assert!(max_rel_diff(&y32, &composed) < 1e-5, "composed {b}x{c}x{l}");
    }
}

/// The inference convolution with its bias in the GEMM pass against candle's conv2d plus a
/// broadcast bias, in f64 and f32, with stride and padding.
#[test]
fn inference_conv_bias_matches_conv_then_bias() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for &(n, ci, h, co, k, s, p) in &[
        (2, 3, 7, 4, 3, 1, 1),
        (3, 2, 8, 5, 1, 1, 0),
        (1, 4, 9, 3, 3, 2, 1),
    ] {
        let x = random(&[n, ci, h, h], &mut rng, DType::F64);
        let w = random(&[co, ci, k, k], &mut rng, DType::F64);
        let b = (random(&[co], &mut rng, DType::F64) * 3.0).unwrap();
        let want = conv2d_reference(&x, &w, Some(&b), s, p).unwrap();
        let y = conv2d(&x, &w, Some(&b), s, p).unwrap();
        assert!(
            max_rel_diff(&y, &want) < 1e-12,
            "f64 {n}x{ci}x{h} k{k} s{s}"
        );
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let y32 = conv2d(&f32(&x), &f32(&w), Some(&f32(&b)), s, p).unwrap();
        assert!(
            max_rel_diff(&y32, &want) < 1e-5,
            "f32 {n}x{ci}x{h} k{k} s{s}"
        );
        // A bias of the wrong length is an error, not a panic.
        let bad = random(&[co + 1], &mut rng, DType::F64);
        assert!(conv2d(&x, &w, Some(&bad), s, p).is_err());
    }
}
