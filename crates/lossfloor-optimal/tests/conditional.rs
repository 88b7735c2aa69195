//! The class-conditional floor E_c J*(σ̂ | c) against a float64 brute force of the per-class
//! posterior over the same queries, and its two limits: one class is the unconditional
//! estimate, one image per class is 0.

use lossfloor_optimal::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

fn no_progress(_: usize) {}

/// Rows around 5 centres (so posteriors are neither one-hot nor flat at moderate σ̂), with
/// labels `i % classes` that cut across the centres.
fn labelled(n: usize, d: usize, classes: u32, seed: u64) -> (DenseRows, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..5)
        .map(|_| (0..d).map(|_| rng.random_range(-0.8f32..0.8)).collect())
        .collect();
    let mut v = Vec::with_capacity(n * d);
    for i in 0..n {
        for &c in &centres[i % 5] {
            v.push(c + 0.15 * rng.sample::<f32, _>(StandardNormal));
        }
    }
    let labels = (0..n)
        .map(|i| (i as u32 * 7 + i as u32 / 3) % classes)
        .collect();
    (DenseRows::new(v, d), labels)
}

/// Float64 posterior variance per dimension of one query over `rows` (log-sum-exp).
fn posterior_variance(rows: &[&[f32]], xh: &[f64], sigma: f64) -> f64 {
    let logits: Vec<f64> = rows
        .iter()
        .map(|r| {
            -r.iter()
                .zip(xh)
                .map(|(&a, b)| (a as f64 - b).powi(2))
                .sum::<f64>()
                / (2.0 * sigma * sigma)
        })
        .collect();
    let mx = logits.iter().copied().fold(f64::MIN, f64::max);
    let w: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
    let s: f64 = w.iter().sum();
    let d = xh.len();
    let mut mu = vec![0f64; d];
    let mut second = 0f64;
    for (r, wi) in rows.iter().zip(&w) {
        let p = wi / s;
        for (m, &x) in mu.iter_mut().zip(r.iter()) {
            *m += p * x as f64;
        }
        second += p * r.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
    }
    (second - mu.iter().map(|v| v * v).sum::<f64>()) / d as f64
}

/// Float64 brute force of the conditional exact estimate from the same queries: class k (in
/// label order) draws its M_c queries with `exact_query(class_seed(seed, k), m, N_c)` over its
/// own rows, the posterior of each runs over that class only, and the class means are
/// weighted by N_c / N.
fn brute_force_conditional(
    data: &DenseRows,
    labels: &[u32],
    sigma: f64,
    queries: usize,
    seed: u64,
) -> f64 {
    let (n, d) = (data.num_rows(), data.row_dim());
    let mut noise = vec![0f32; d];
    let mut total = 0.0;
    for (k, (_, idx)) in class_rows(labels).iter().enumerate() {
        let rows: Vec<&[f32]> = idx.iter().map(|&i| data.row(i)).collect();
        let m_c = class_query_count(queries, rows.len(), n);
        let mut sum = 0.0;
        for m in 0..m_c {
            let src = exact_query(class_seed(seed, k), m, rows.len(), &mut noise);
            let xh: Vec<f64> = (0..d)
                .map(|j| rows[src][j] as f64 + sigma * noise[j] as f64)
                .collect();
            sum += posterior_variance(&rows, &xh, sigma);
        }
        if m_c > 0 {
            total += rows.len() as f64 / n as f64 * sum / m_c as f64;
        }
    }
    total
}

const SIGMAS: [f64; 7] = [0.01, 0.05, 0.2, 0.5, 1.0, 3.0, 30.0];

fn exact(queries: usize, seed: u64) -> EstimateParams {
    EstimateParams {
        method: Method::Exact,
        queries,
        subset: None,
        c: None,
        seed,
    }
}

#[test]
fn conditional_exact_matches_float64_brute_force() {
    // 2 classes of ~700 rows (more than one 512-row chunk, so the online softmax rescales
    // across chunks) and a third class of a single row (exactly 0, no queries).
    let (data, mut labels) = labelled(1400, 9, 2, 1);
    labels[1399] = 7;
    let (curve, per_class) = estimate_conditional_on(
        &candle_core::Device::Cpu,
        &data,
        &labels,
        "toy",
        &SIGMAS,
        &exact(300, 7),
        &no_progress,
    )
    .unwrap();
    assert!(curve.dataset.conditional);
    assert_eq!(per_class.len(), 3);
    assert_eq!(per_class[2].images, 1);
    assert!(per_class[2].curve.points.iter().all(|p| p.loss == 0.0));
    let var = per_dim_variance(&data);
    for (p, &s) in curve.points.iter().zip(&SIGMAS) {
        let want = brute_force_conditional(&data, &labels, s, 300, 7);
        // As for the unconditional exact estimator: f32 GEMMs on centred data round at ~6e-8
        // of the squared norms (≈ the data variance), so the error is bounded by 1e-6 of the
        // value plus 2e-6 of the variance (J* itself is ~0 at tiny σ̂).
        let tol = 1e-6 * want.abs() + 2e-6 * var;
        eprintln!(
            "σ̂={s}: conditional {:.6e}, brute force {want:.6e}, |diff| {:.1e} (tol {tol:.1e})",
            p.loss,
            (p.loss - want).abs()
        );
        assert!(
            (p.loss - want).abs() <= tol,
            "σ̂={s}: got {} want {want} (tol {tol})",
            p.loss
        );
    }
    // Knowing the class can only help: below the unconditional floor at every σ̂ (the
    // classes cut across the clusters, so the gap is large at large σ̂).
    let uncond = estimate_exact(&data, &SIGMAS, 300, 7, &no_progress);
    let top = curve.points.last().unwrap();
    assert!(top.loss < uncond.last().unwrap().mean);
    // The within-class variance is the large-σ̂ limit.
    assert!((top.loss - curve.data_variance.unwrap()).abs() < 0.02 * top.loss);
}

#[test]
fn one_class_equals_the_unconditional_estimate() {
    let (data, _) = labelled(300, 6, 1, 2);
    let labels = vec![4u32; 300];
    for method in Method::ALL {
        let params = EstimateParams {
            queries: 200,
            subset: method.uses_subset().then_some(40),
            ..exact(200, 3)
        };
        let params = EstimateParams { method, ..params };
        let uncond = estimate(&data, "toy", &SIGMAS, &params, &no_progress).unwrap();
        let (cond, _) = estimate_conditional_on(
            &candle_core::Device::Cpu,
            &data,
            &labels,
            "toy",
            &SIGMAS,
            &params,
            &no_progress,
        )
        .unwrap();
        // Same rows in the same order, the same queries (class 0's seed is the seed) and
        // weight exactly 1: the same computation, so the same numbers bit for bit.
        for (a, b) in cond.points.iter().zip(&uncond.points) {
            assert_eq!(a.loss, b.loss, "{method} σ̂={}", a.sigma);
            // The stderr passes through √((1·se)²): correctly rounded, within 2 ulp.
            assert!(
                (a.stderr - b.stderr).abs() <= 4.5e-16 * b.stderr,
                "{method} σ̂={}",
                a.sigma
            );
        }
        assert_eq!(cond.data_variance, uncond.data_variance);
    }
}

#[test]
fn one_image_per_class_is_zero() {
    let (data, _) = labelled(50, 4, 1, 3);
    let labels: Vec<u32> = (0..50).collect();
    for method in Method::ALL {
        let params = EstimateParams {
            method,
            ..exact(100, 0)
        };
        let (curve, per_class) = estimate_conditional_on(
            &candle_core::Device::Cpu,
            &data,
            &labels,
            "toy",
            &SIGMAS,
            &params,
            &no_progress,
        )
        .unwrap();
        assert_eq!(per_class.len(), 50);
        for p in &curve.points {
            assert_eq!((p.loss, p.stderr, p.queries), (0.0, 0.0, 0), "{method}");
        }
    }
}

#[test]
fn gaussian_conditional_is_the_frequency_weighted_class_closed_forms() {
    let (data, labels) = labelled(240, 5, 4, 4);
    let params = EstimateParams {
        method: Method::Gaussian,
        ..exact(1, 0)
    };
    let (curve, per_class) = estimate_conditional_on(
        &candle_core::Device::Cpu,
        &data,
        &labels,
        "toy",
        &SIGMAS,
        &params,
        &no_progress,
    )
    .unwrap();
    for (i, p) in curve.points.iter().enumerate() {
        let mut want = 0.0;
        for (label, idx) in class_rows(&labels) {
            let rows: Vec<f32> = idx.iter().flat_map(|&r| data.row(r).to_vec()).collect();
            let eig = covariance_eigenvalues(&DenseRows::new(rows, 5)).unwrap();
            let w = idx.len() as f64 / 240.0;
            let c = per_class.iter().find(|c| c.label == label).unwrap();
            assert_eq!(c.weight, w);
            want += w * gaussian_optimal_loss(&eig, p.sigma);
        }
        // Sums of the same f64 terms in the same order.
        assert!(
            (p.loss - want).abs() <= 1e-12 * want,
            "{i}: {} {want}",
            p.loss
        );
    }
}

#[test]
fn conditional_errors_name_the_problem() {
    let (data, labels) = labelled(20, 3, 10, 5);
    let snis = EstimateParams {
        method: Method::Snis,
        ..exact(10, 0)
    };
    let err = estimate_conditional_on(
        &candle_core::Device::Cpu,
        &data,
        &labels,
        "toy",
        &SIGMAS,
        &snis,
        &no_progress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("class 6 has 2 image(s)"), "{err}");
    let err = estimate_conditional_on(
        &candle_core::Device::Cpu,
        &data,
        &labels[..5],
        "toy",
        &SIGMAS,
        &exact(10, 0),
        &no_progress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("5 labels for 20 rows"), "{err}");
}

#[test]
fn old_curve_files_read_as_unconditional() {
    let text = r#"{"dataset":{"spec":"t","n":2,"dim":1},"method":"exact","params":{},
        "points":[{"sigma":1.0,"loss":0.1,"stderr":0.0,"queries":1}]}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, text).unwrap();
    assert!(!Curve::load(&path).unwrap().dataset.conditional);
}
