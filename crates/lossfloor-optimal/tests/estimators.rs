//! Estimators against independent computations: float64 brute force, the Gaussian closed form,
//! the C = 1 / C = ∞ identities of cDOL and the bias directions of the method.

use lossfloor_optimal::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

fn no_progress(_: usize) {}

/// A small dataset with clusters (so posteriors are neither one-hot nor flat at moderate σ̂).
fn clustered(n: usize, d: usize, seed: u64) -> DenseRows {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..5)
        .map(|_| (0..d).map(|_| rng.random_range(-0.8f32..0.8)).collect())
        .collect();
    let mut v = Vec::with_capacity(n * d);
    for i in 0..n {
        let c = &centres[i % 5];
        for &ci in c {
            v.push(ci + 0.15 * rng.sample::<f32, _>(StandardNormal));
        }
    }
    DenseRows::new(v, d)
}

/// Float64 brute force of the same Monte-Carlo estimate: the same queries (source, noise), the
/// full posterior over all rows in f64 with log-sum-exp, and the posterior variance per query.
fn brute_force_exact(data: &DenseRows, sigma: f64, queries: usize, seed: u64) -> f64 {
    let (n, d) = (data.num_rows(), data.row_dim());
    let mut noise = vec![0f32; d];
    let mut total = 0f64;
    for m in 0..queries {
        let src = exact_query(seed, m, n, &mut noise);
        let xh: Vec<f64> = (0..d)
            .map(|j| data.row(src)[j] as f64 + sigma * noise[j] as f64)
            .collect();
        let logits: Vec<f64> = (0..n)
            .map(|i| {
                -data
                    .row(i)
                    .iter()
                    .zip(&xh)
                    .map(|(&a, b)| (a as f64 - b).powi(2))
                    .sum::<f64>()
                    / (2.0 * sigma * sigma)
            })
            .collect();
        let mx = logits.iter().copied().fold(f64::MIN, f64::max);
        let w: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
        let s: f64 = w.iter().sum();
        let mut mu = vec![0f64; d];
        let mut second = 0f64;
        for (i, wi) in w.iter().enumerate() {
            let p = wi / s;
            for (m, &x) in mu.iter_mut().zip(data.row(i)) {
                *m += p * x as f64;
            }
            second += p * data.row(i).iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
        }
        total += second - mu.iter().map(|v| v * v).sum::<f64>();
    }
    total / (queries * d) as f64
}

#[test]
fn exact_matches_float64_brute_force() {
    let data = clustered(700, 9, 1); // 700 rows: more than one 512-row chunk, so the online rescale runs
    let sigmas = [0.01, 0.05, 0.2, 0.5, 1.0, 3.0, 30.0];
    let got = estimate_exact(&data, &sigmas, 300, 7, &no_progress);
    let var = per_dim_variance(&data);
    for (&s, g) in sigmas.iter().zip(&got) {
        let want = brute_force_exact(&data, s, 300, 7);
        // f32 GEMMs on centred data round at ~6e-8 relative to the squared norms (≈ the data
        // variance) they are built from; J* is a difference of such terms, so the error is
        // bounded relative to the variance, not to J* itself (which is 0 at tiny σ̂).
        let tol = 1e-6 * want.abs() + 2e-6 * var;
        assert!(
            (g.mean - want).abs() <= tol,
            "σ̂={s}: got {} want {want} (tol {tol})",
            g.mean
        );
    }
}

/// The device estimator (candle ops; the GPU path), run here on the CPU with small chunks so
/// the online softmax rescales across chunks, against the same float64 brute force.
#[test]
fn device_exact_matches_float64_brute_force() {
    let data = clustered(700, 9, 1);
    let sigmas = [0.01, 0.05, 0.2, 0.5, 1.0, 3.0, 30.0];
    let dev = candle_core::Device::Cpu;
    let cpu_kernel = estimate_exact(&data, &sigmas, 300, 7, &no_progress);
    let var = per_dim_variance(&data);
    // The fused chunk-softmax op and its composed form; 700 rows in chunks of 256, so the
    // running maximum is rescaled across chunks.
    for fused in [true, false] {
        let got = estimate_exact_on_device_tiled(
            &lossfloor_comm::SingleProcess,
            &data,
            &sigmas,
            300,
            7,
            &dev,
            128,
            256,
            fused,
            &no_progress,
        )
        .unwrap();
        check_device_estimate(&data, &sigmas, &got, &cpu_kernel, var);
    }
}

fn check_device_estimate(
    data: &DenseRows,
    sigmas: &[f64],
    got: &[lossfloor_optimal::MeanStderr],
    cpu_kernel: &[lossfloor_optimal::MeanStderr],
    var: f64,
) {
    for ((&s, g), f) in sigmas.iter().zip(got).zip(cpu_kernel) {
        let want = brute_force_exact(data, s, 300, 7);
        let tol = 1e-6 * want.abs() + 2e-6 * var;
        assert!(
            (g.mean - want).abs() <= tol,
            "σ̂={s}: got {} want {want} (tol {tol})",
            g.mean
        );
        assert!((g.stderr - f.stderr).abs() <= 1e-3 * f.stderr + 2e-6 * var);
        assert_eq!(g.count, 300);
    }
}

#[test]
fn exact_is_independent_of_thread_count() {
    let data = clustered(600, 7, 2);
    let sigmas = [0.05, 0.4, 2.0];
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| estimate_exact(&data, &sigmas, 500, 11, &no_progress))
    };
    let (a, b) = (run(1), run(2));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.mean.to_bits(), y.mean.to_bits());
        assert_eq!(x.stderr.to_bits(), y.stderr.to_bits());
    }
}

#[test]
fn exact_agrees_with_gaussian_closed_form_above_memorisation() {
    // 20 000 draws of an 8-d Gaussian with unequal variances. From σ̂ ≈ 2 no single row
    // dominates a posterior, and the empirical J* is the Gaussian one up to O(1/N).
    let d = 8;
    let scales = [1.0f32, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let v: Vec<f32> = (0..20_000 * d)
        .map(|i| scales[i % d] * rng.sample::<f32, _>(StandardNormal))
        .collect();
    let data = DenseRows::new(v, d);
    let eig = covariance_eigenvalues(&data).unwrap();
    let sigmas = [2.0, 4.0, 8.0];
    let got = estimate_exact(&data, &sigmas, 3000, 5, &no_progress);
    for (&s, g) in sigmas.iter().zip(&got) {
        let want = gaussian_optimal_loss(&eig, s);
        assert!(
            (g.mean - want).abs() <= 3.0 * g.stderr,
            "σ̂={s}: exact {} ± {} vs Gaussian {want}",
            g.mean,
            g.stderr
        );
    }
}

#[test]
fn gaussian_closed_form_limits() {
    let eig = [0.5, 0.25, 0.0, 1.0];
    // σ̂ → 0: J* ≈ σ̂²·(rank)/D ; σ̂ → ∞: J* → mean eigenvalue.
    let small = gaussian_optimal_loss(&eig, 1e-4);
    assert!((small - 1e-8 * 3.0 / 4.0).abs() < 1e-14);
    let large = gaussian_optimal_loss(&eig, 1e4);
    assert!((large - 1.75 / 4.0).abs() < 1e-7);
}

fn subset(
    data: &DenseRows,
    sigmas: &[f64],
    m: usize,
    l: usize,
    rule: SubsetRule,
    seed: u64,
) -> Vec<MeanStderr> {
    estimate_subset(data, sigmas, m, l, rule, seed, &no_progress)
}

#[test]
fn cdol_with_c_one_is_dol_and_with_c_infinite_is_snis_on_l_minus_one() {
    let data = clustered(400, 6, 4);
    let sigmas = [0.02, 0.1, 0.3, 1.0, 5.0];
    let dol = subset(&data, &sigmas, 300, 64, SubsetRule::Dol, 9);
    let c1 = subset(&data, &sigmas, 300, 64, SubsetRule::Cdol { c: 1.0 }, 9);
    assert_eq!(dol, c1);
    let cinf = subset(
        &data,
        &sigmas,
        300,
        64,
        SubsetRule::Cdol { c: f64::INFINITY },
        9,
    );
    let snis = subset(&data, &sigmas, 300, 63, SubsetRule::Snis, 9);
    assert_eq!(cinf, snis);
    // A huge finite C approaches the limit wherever the source's logit lead is below ln C.
    let big = subset(
        &data,
        &sigmas[2..],
        300,
        64,
        SubsetRule::Cdol { c: 1e30 },
        9,
    );
    for (b, s) in big.iter().zip(&snis[2..]) {
        assert!((b.mean - s.mean).abs() < 1e-9, "{} vs {}", b.mean, s.mean);
    }
}

#[test]
fn bias_directions_dol_below_exact_below_snis() {
    // At an intermediate σ̂ the source's over-weighting makes DOL too low and its absence makes
    // SNIS too high (method doc §3.4–3.5); cDOL with C = 4N/L lies between the two.
    let data = clustered(2000, 6, 5);
    let sigmas = [0.12];
    let exact = estimate_exact(&data, &sigmas, 4000, 1, &no_progress)[0];
    let l = 50;
    let dol = subset(&data, &sigmas, 4000, l, SubsetRule::Dol, 2)[0];
    let snis = subset(&data, &sigmas, 4000, l - 1, SubsetRule::Snis, 2)[0];
    let cdol = subset(
        &data,
        &sigmas,
        4000,
        l,
        SubsetRule::Cdol {
            c: default_c(2000, l),
        },
        2,
    )[0];
    let sep = |a: MeanStderr, b: MeanStderr| {
        (b.mean - a.mean) / (a.stderr.powi(2) + b.stderr.powi(2)).sqrt()
    };
    assert!(
        sep(dol, exact) > 3.0,
        "DOL {dol:?} not below exact {exact:?}"
    );
    assert!(
        sep(exact, snis) > 3.0,
        "SNIS {snis:?} not above exact {exact:?}"
    );
    assert!(
        dol.mean < cdol.mean && cdol.mean < snis.mean,
        "cDOL {cdol:?} not between DOL {dol:?} and SNIS {snis:?}"
    );
    assert!(
        (cdol.mean - exact.mean).abs() < (dol.mean - exact.mean).abs(),
        "cDOL should correct DOL's bias"
    );
}

#[test]
fn stable_from_tiny_to_huge_sigma() {
    let data = clustered(1000, 16, 6);
    let sigmas = [0.002, 0.01, 0.1, 1.0, 10.0, 80.0];
    let var = per_dim_variance(&data);
    for stats in [
        estimate_exact(&data, &sigmas, 256, 3, &no_progress),
        subset(
            &data,
            &sigmas,
            256,
            128,
            SubsetRule::Cdol {
                c: default_c(1000, 128),
            },
            3,
        ),
        subset(&data, &sigmas, 256, 128, SubsetRule::Snis, 3),
    ] {
        for (s, st) in sigmas.iter().zip(&stats) {
            assert!(
                st.mean.is_finite() && st.stderr.is_finite(),
                "σ̂={s}: {st:?}"
            );
            assert!(
                st.mean >= -3.0 * st.stderr - 1e-9,
                "σ̂={s}: negative beyond its error bar: {st:?}"
            );
            assert!(
                st.mean <= var * 1.2 + 3.0 * st.stderr,
                "σ̂={s}: above the data variance {var}: {st:?}"
            );
        }
    }
    // Far below σ* the posterior sits on the source: J* = 0 up to the f32 rounding of ‖x‖²
    // (relative 6e-8 of the squared norm, itself ≈ D·variance).
    let exact = estimate_exact(&data, &[0.002], 64, 3, &no_progress)[0];
    assert!(exact.mean.abs() < 1e-7 * var, "{exact:?}");
}

#[test]
fn parameter_validation_names_the_problem() {
    let p = |method, queries, subset, c| EstimateParams {
        method,
        queries,
        subset,
        c,
        seed: 0,
    };
    let err = |r: Result<_, EstimateError>| r.unwrap_err().to_string();
    assert!(err(p(Method::Exact, 10, None, None).resolve(100, &[0.0])).contains("σ = 0"));
    assert!(err(p(Method::Exact, 10, None, None).resolve(100, &[-1.0])).contains("> 0"));
    assert!(err(p(Method::Exact, 0, None, None).resolve(100, &[1.0])).contains("--queries"));
    assert!(err(p(Method::Dol, 10, Some(101), None).resolve(100, &[1.0])).contains("2 ≤ L ≤ 100"));
    assert!(err(p(Method::Snis, 10, Some(100), None).resolve(100, &[1.0])).contains("2 ≤ L ≤ 99"));
    assert!(err(p(Method::Dol, 10, Some(1), None).resolve(100, &[1.0])).contains("at least 2"));
    assert!(err(p(Method::Cdol, 10, Some(10), Some(0.5)).resolve(100, &[1.0])).contains("C ≥ 1"));
    assert!(err(p(Method::Exact, 10, Some(10), None).resolve(100, &[1.0])).contains("--subset"));
    assert!("nope"
        .parse::<Method>()
        .unwrap_err()
        .to_string()
        .contains("exact, dol, cdol, snis, gaussian"));
    assert_eq!(
        p(Method::Cdol, 10, Some(10), None)
            .resolve(100, &[1.0])
            .unwrap(),
        (Some(10), Some(40.0))
    );
}

#[test]
fn curve_interpolation_and_sigma_star() {
    let pts = [(0.01, 0.0), (0.1, 0.001), (1.0, 0.1), (10.0, 0.2)];
    let curve = Curve {
        dataset: DatasetInfo {
            spec: "t".into(),
            n: 1,
            dim: 1,
            xflip: false,
            limit: None,
            conditional: false,
        },
        method: "exact".into(),
        params: Default::default(),
        data_variance: Some(0.2),
        points: pts
            .iter()
            .map(|&(sigma, loss)| CurvePoint {
                sigma,
                loss,
                stderr: 0.0,
                queries: 1,
            })
            .collect(),
    };
    assert!((curve.loss_at(0.1f64.sqrt()) - 0.0505).abs() < 1e-12); // halfway in ln σ̂
    assert_eq!(curve.loss_at(100.0), 0.2);
    assert_eq!(curve.sigma_star(0.01), Some(0.1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    curve.save(&path).unwrap();
    assert_eq!(Curve::load(&path).unwrap(), curve);
    std::fs::write(&path, "{\"points\": 3}").unwrap();
    assert!(Curve::load(&path)
        .unwrap_err()
        .to_string()
        .contains("not a lossfloor curve file"));
}
