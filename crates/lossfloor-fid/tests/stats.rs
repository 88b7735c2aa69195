//! Fréchet distance, feature statistics and `.npz` I/O.

use std::io::Write;

use faer::linalg::solvers::DenseSolveCore;
use faer::Mat;
use lossfloor_fid::{frechet_distance, load_stats_npz, save_stats_npz, FeatureStats, FidError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_spd(rng: &mut ChaCha8Rng, d: usize) -> Mat<f64> {
    let b = Mat::from_fn(d, d, |_, _| rng.random_range(-1.0..1.0));
    let mut a = &b * b.transpose();
    for i in 0..d {
        a[(i, i)] += 0.1 * d as f64;
    }
    a
}

/// Random orthogonal matrix: Q of a Gram–Schmidt on a random matrix.
fn random_rotation(rng: &mut ChaCha8Rng, d: usize) -> Mat<f64> {
    let mut q = Mat::from_fn(d, d, |_, _| rng.random_range(-1.0..1.0));
    for j in 0..d {
        for k in 0..j {
            let dot: f64 = (0..d).map(|i| q[(i, j)] * q[(i, k)]).sum();
            for i in 0..d {
                q[(i, j)] -= dot * q[(i, k)];
            }
        }
        let norm = (0..d).map(|i| q[(i, j)] * q[(i, j)]).sum::<f64>().sqrt();
        for i in 0..d {
            q[(i, j)] /= norm;
        }
    }
    q
}

/// tr((A·B)^½) by the Denman–Beavers iteration on the (non-symmetric) product.
fn trace_sqrt_denman_beavers(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let d = a.nrows();
    let mut y = a * b;
    let mut z = Mat::<f64>::identity(d, d);
    for _ in 0..200 {
        let y_inv = y.partial_piv_lu().inverse();
        let z_inv = z.partial_piv_lu().inverse();
        let y_next = (&y + &z_inv) * 0.5;
        let z_next = (&z + &y_inv) * 0.5;
        let delta = (&y_next - &y).norm_l2() / y_next.norm_l2();
        y = y_next;
        z = z_next;
        if delta < 1e-15 {
            break;
        }
    }
    (0..d).map(|i| y[(i, i)]).sum()
}

fn trace(m: &Mat<f64>) -> f64 {
    (0..m.nrows()).map(|i| m[(i, i)]).sum()
}

#[test]
fn identical_distributions_give_zero() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for d in [1, 7, 64] {
        let s = random_spd(&mut rng, d);
        let mu: Vec<f64> = (0..d).map(|_| rng.random_range(-3.0..3.0)).collect();
        let fid = frechet_distance(&mu, s.as_ref(), &mu, s.as_ref()).unwrap();
        assert!(fid.abs() < 1e-9 * trace(&s), "d={d}: {fid}");
    }
}

#[test]
fn diagonal_and_rotated_covariances() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for d in [3, 16, 50] {
        let a: Vec<f64> = (0..d).map(|_| rng.random_range(0.01..4.0)).collect();
        let b: Vec<f64> = (0..d).map(|_| rng.random_range(0.01..4.0)).collect();
        let mu1: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mu2: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let expected: f64 = (0..d)
            .map(|i| (mu1[i] - mu2[i]).powi(2) + (a[i].sqrt() - b[i].sqrt()).powi(2))
            .sum();
        let da = Mat::from_fn(d, d, |i, j| if i == j { a[i] } else { 0.0 });
        let db = Mat::from_fn(d, d, |i, j| if i == j { b[i] } else { 0.0 });
        let fid = frechet_distance(&mu1, da.as_ref(), &mu2, db.as_ref()).unwrap();
        assert!(
            (fid - expected).abs() <= 1e-10 * expected,
            "{fid} vs {expected}"
        );

        let r = random_rotation(&mut rng, d);
        let ra = &r * &da * r.transpose();
        let rb = &r * &db * r.transpose();
        let fid = frechet_distance(&mu1, ra.as_ref(), &mu2, rb.as_ref()).unwrap();
        assert!(
            (fid - expected).abs() <= 1e-9 * expected,
            "rotated d={d}: {fid} vs {expected}"
        );
    }
}

#[test]
fn matches_denman_beavers_on_random_spd() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for d in [2, 5, 20, 60] {
        let s1 = random_spd(&mut rng, d);
        let s2 = random_spd(&mut rng, d);
        let mu1: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mu2: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mean_term: f64 = mu1.iter().zip(&mu2).map(|(a, b)| (a - b).powi(2)).sum();
        let expected =
            mean_term + trace(&s1) + trace(&s2) - 2.0 * trace_sqrt_denman_beavers(&s1, &s2);
        let fid = frechet_distance(&mu1, s1.as_ref(), &mu2, s2.as_ref()).unwrap();
        let rel = (fid - expected).abs() / expected.abs();
        assert!(rel < 1e-9, "d={d}: {fid} vs {expected} (rel {rel:e})");
    }
}

#[test]
fn rank_deficient_covariance_is_finite() {
    // Fewer samples than dimensions: singular Σ, as with small FID sample counts.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let d = 30;
    let mut st = FeatureStats::new(d);
    let rows: Vec<Vec<f32>> = (0..10)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    st.accumulate(&rows).unwrap();
    let s = st.stats();
    let fid = s.frechet_distance(&s).unwrap();
    let tr: f64 = (0..d).map(|i| s.sigma[(i, i)]).sum();
    assert!(fid.is_finite() && fid.abs() < 1e-12 * tr, "{fid}");
}

#[test]
fn feature_stats_match_two_pass_formulas() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (n, d) = (37, 6);
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(-2.0f32..5.0)).collect())
        .collect();
    let mut st = FeatureStats::new(d);
    st.accumulate(&rows[..10]).unwrap();
    let flat: Vec<f32> = rows[10..].iter().flatten().copied().collect();
    st.accumulate_flat(&flat).unwrap();
    assert_eq!(st.count(), n as u64);
    let mu: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / n as f64)
        .collect();
    let sigma = st.sigma();
    for (j, m) in mu.iter().enumerate() {
        assert!((st.mu()[j] - m).abs() < 1e-12);
    }
    for i in 0..d {
        for j in 0..d {
            let c: f64 = rows
                .iter()
                .map(|r| (r[i] as f64 - mu[i]) * (r[j] as f64 - mu[j]))
                .sum::<f64>()
                / (n - 1) as f64;
            assert!((sigma[(i, j)] - c).abs() < 1e-10, "({i},{j})");
        }
    }
    assert!(st.accumulate(&[vec![0.0f32; d + 1]]).is_err());
}

#[test]
fn npz_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let d = 9;
    let mu: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let sigma = random_spd(&mut rng, d);
    let path = dir.path().join("ref.npz");
    save_stats_npz(&path, &mu, sigma.as_ref()).unwrap();
    let s = load_stats_npz(&path).unwrap();
    assert_eq!(s.mu, mu);
    assert_eq!(s.sigma, sigma);

    // A deflated npz (np.savez_compressed) with sigma as float32, and one without sigma.
    let npy = |data: &[f64], shape: &[u64], f32_: bool| -> Vec<u8> {
        use npyz::WriterBuilder;
        let mut buf = Vec::new();
        if f32_ {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(shape)
                .writer(&mut buf)
                .begin_nd()
                .unwrap();
            w.extend(data.iter().map(|&v| v as f32)).unwrap();
            w.finish().unwrap();
        } else {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(shape)
                .writer(&mut buf)
                .begin_nd()
                .unwrap();
            w.extend(data.iter().copied()).unwrap();
            w.finish().unwrap();
        }
        buf
    };
    let flat: Vec<f64> = (0..d)
        .flat_map(|i| (0..d).map(move |j| (i * d + j) as f64))
        .collect();
    let write_zip = |name: &str, members: Vec<(&str, Vec<u8>)>| {
        let p = dir.path().join(name);
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (n, b) in members {
            z.start_file(n, o).unwrap();
            z.write_all(&b).unwrap();
        }
        z.finish().unwrap();
        p
    };
    let p = write_zip(
        "deflated.npz",
        vec![
            ("mu.npy", npy(&mu, &[d as u64], false)),
            ("sigma.npy", npy(&flat, &[d as u64, d as u64], true)),
        ],
    );
    let s = load_stats_npz(&p).unwrap();
    assert_eq!(s.mu, mu);
    assert_eq!(s.sigma[(2, 3)], (2 * d + 3) as f64);

    let p = write_zip(
        "nosigma.npz",
        vec![("mu.npy", npy(&mu, &[d as u64], false))],
    );
    match load_stats_npz(&p) {
        Err(FidError::NpzMissingKey { key, .. }) => assert_eq!(key, "sigma"),
        other => panic!("expected NpzMissingKey, got {other:?}"),
    }
}

#[test]
fn reads_numpy_written_npz() {
    // Written by scripts/fid_npz_fixtures.py with np.savez / np.savez_compressed.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mu = vec![0.5, -1.25, 3.0];
    let sigma = [[2.0, 0.5, 0.1], [0.5, 1.0, -0.2], [0.1, -0.2, 3.0]];
    let s = load_stats_npz(dir.join("numpy_savez.npz")).unwrap();
    assert_eq!(s.mu, mu);
    for (i, row) in sigma.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            assert_eq!(s.sigma[(i, j)], *v);
        }
    }
    // Deflated, with a Fortran-ordered sigma + strict upper triangle of ones.
    let s = load_stats_npz(dir.join("numpy_savez_compressed.npz")).unwrap();
    assert_eq!(s.mu, mu);
    for (i, row) in sigma.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let want = v + if j > i { 1.0 } else { 0.0 };
            assert_eq!(s.sigma[(i, j)], want, "({i},{j})");
        }
    }
}

/// The covariance of `n` random feature rows in `d` dimensions (rank min(n − 1, d)),
/// rounded to float32 entry by entry as a float32 `.npz` would store it.
fn float32_covariance(rng: &mut ChaCha8Rng, n: usize, d: usize) -> lossfloor_fid::Stats {
    let mut acc = FeatureStats::new(d);
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(0.0f32..4.0)).collect())
        .collect();
    acc.accumulate(&rows).unwrap();
    let s = acc.stats();
    let sigma = Mat::from_fn(d, d, |i, j| s.sigma[(i, j)] as f32 as f64);
    lossfloor_fid::Stats { mu: s.mu, sigma }
}

#[test]
fn real_covariances_pass_the_reference_check() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let p = std::path::Path::new("ref.npz");
    // Full rank, and rank-deficient (fewer images than dimensions: zero eigenvalues that
    // float32 rounding may push slightly below zero, within the tolerance).
    for (n, d) in [(500, 64), (40, 256)] {
        let s = float32_covariance(&mut rng, n, d);
        s.check_reference(p, d).unwrap();
        assert!(
            s.check_reference(p, d + 1).is_err(),
            "dimension not checked"
        );
    }
}

#[test]
fn the_reference_check_refuses_what_is_no_covariance() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let p = std::path::Path::new("ref.npz");
    let d = 32;
    let good = float32_covariance(&mut rng, 200, d);
    let msg = |s: &lossfloor_fid::Stats| s.check_reference(p, d).unwrap_err().to_string();
    // Negative variances, far beyond round-off: every eigenvalue lowered by the trace.
    let mut s = good.clone();
    let top = (0..d).map(|i| s.sigma[(i, i)]).fold(0.0, f64::max);
    let shift = (0..d).map(|i| s.sigma[(i, i)]).sum::<f64>();
    for i in 0..d {
        s.sigma[(i, i)] -= shift;
    }
    assert!(msg(&s).contains("smallest eigenvalue"), "{}", msg(&s));
    let mut s = good.clone();
    s.sigma[(0, 1)] += 1e-3 * top;
    assert!(msg(&s).contains("not symmetric"), "{}", msg(&s));
    let mut s = good.clone();
    s.sigma[(3, 3)] = f64::INFINITY;
    assert!(msg(&s).contains("sigma[3, 3] is inf"), "{}", msg(&s));
    let mut s = good;
    s.mu[2] = f64::NAN;
    assert!(msg(&s).contains("mu[2] is NaN"), "{}", msg(&s));
}
