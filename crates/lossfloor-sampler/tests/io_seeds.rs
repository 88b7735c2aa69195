//! Time steps, config validation, seed lists, per-seed classes, .npy and PNG I/O.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lossfloor_sampler::*;

struct Identity;
impl Denoiser for Identity {
    fn denoise(&self, x: &Tensor, _: f64, _: Option<&Tensor>) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }
}

/// Rounds σ down to a power of 2 (a stand-in for iDDPM's grid).
struct Pow2;
impl Denoiser for Pow2 {
    fn denoise(&self, x: &Tensor, _: f64, _: Option<&Tensor>) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }
    fn round_sigma(&self, s: f64) -> f64 {
        2f64.powi(s.log2().floor() as i32)
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lossfloor-sampler-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn time_steps_match_hand_computation() {
    for (n, smin, smax, rho) in [
        (18, 0.002, 80.0, 7.0),
        (40, 0.002, 80.0, 7.0),
        (5, 0.1, 3.0, 3.0),
    ] {
        let cfg = HeunConfig {
            num_steps: n,
            sigma_min: smin,
            sigma_max: smax,
            rho,
            ..HeunConfig::default()
        };
        let t = edm_time_steps(&cfg, &Identity).unwrap();
        assert_eq!(t.len(), n + 1);
        let f64_pow = |v: f64, e: f64| v.powf(e);
        for (i, &ti) in t[..n].iter().enumerate() {
            let hand = f64_pow(
                f64_pow(smax, 1.0 / rho)
                    + i as f64 / (n - 1) as f64
                        * (f64_pow(smin, 1.0 / rho) - f64_pow(smax, 1.0 / rho)),
                rho,
            );
            assert_eq!(ti.to_bits(), hand.to_bits(), "t_{i}");
        }
        assert!((t[0] - smax).abs() <= 1e-14 * smax);
        assert!((t[n - 1] - smin).abs() <= 1e-12 * smin);
        assert_eq!(t[n], 0.0);
        assert!(t.windows(2).all(|w| w[0] > w[1]), "not decreasing: {t:?}");
    }
    // t_1 of EDM's 18-step schedule evaluated independently in the log domain.
    let t = edm_time_steps(&HeunConfig::default(), &Identity).unwrap();
    let a = 80f64.ln() / 7.0;
    let b = 0.002f64.ln() / 7.0;
    let t1 = (7.0 * (a.exp() + (b.exp() - a.exp()) / 17.0).ln()).exp();
    assert!((t[1] - t1).abs() < 1e-12 * t1);
}

#[test]
fn time_steps_are_rounded_except_the_final_zero() {
    let t = edm_time_steps(&HeunConfig::default(), &Pow2).unwrap();
    for &ti in &t[..18] {
        assert_eq!(ti, Pow2.round_sigma(ti));
    }
    assert_eq!(t[0], 64.0);
    assert_eq!(t[18], 0.0);
}

#[test]
fn config_validation() {
    let ok = HeunConfig::default();
    assert!(ok.validate().is_ok());
    assert_eq!(ok.nfe(), 35);
    let bad = [
        HeunConfig { num_steps: 0, ..ok },
        HeunConfig {
            sigma_min: 0.0,
            ..ok
        },
        HeunConfig {
            sigma_min: f64::NAN,
            ..ok
        },
        HeunConfig {
            sigma_max: 0.001,
            ..ok
        },
        HeunConfig {
            sigma_max: f64::INFINITY,
            ..ok
        },
        HeunConfig { rho: 0.0, ..ok },
        HeunConfig {
            s_churn: -1.0,
            ..ok
        },
        HeunConfig {
            s_min: 2.0,
            s_max: 1.0,
            ..ok
        },
        HeunConfig {
            s_noise: f64::NAN,
            ..ok
        },
    ];
    for cfg in bad {
        let e = cfg.validate().unwrap_err();
        assert!(matches!(e, SamplerError::Config(_)), "{e}");
        assert!(edm_time_steps(&cfg, &Identity).is_err());
    }
    let e = HeunConfig { num_steps: 0, ..ok }.validate().unwrap_err();
    assert!(e.to_string().contains("num_steps"), "{e}");
}

#[test]
fn sample_rejects_bad_shapes() {
    let z = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    let e = sample(&Identity, &z, None, &HeunConfig::default(), &mut |s| {
        Tensor::zeros(s, DType::F32, &Device::Cpu)
    })
    .unwrap_err();
    assert!(e.to_string().contains("latents"), "{e}");
}

#[test]
fn parse_seeds_ok_and_errors() {
    assert_eq!(
        parse_seeds("0-3,100, 200-202").unwrap(),
        vec![0, 1, 2, 3, 100, 200, 201, 202]
    );
    assert_eq!(parse_seeds("7").unwrap(), vec![7]);
    assert_eq!(parse_seeds("0-63").unwrap().len(), 64);
    for bad in [
        "",
        " ",
        "1,,2",
        "a",
        "5-3",
        "-3",
        "1-",
        "1-2-3",
        "18446744073709551616",
        "1.5",
    ] {
        let e = parse_seeds(bad).unwrap_err();
        assert!(matches!(e, SamplerError::Seeds { .. }), "{bad:?}: {e}");
        assert!(e.to_string().contains("invalid seed list"), "{e}");
    }
    let e = parse_seeds("5-3").unwrap_err().to_string();
    assert!(e.contains("decreasing"), "{e}");
}

#[test]
fn random_class_per_seed() {
    let n = 10usize;
    let mut counts = vec![0usize; n];
    for seed in 0..10_000u64 {
        let c = random_class(seed, n).unwrap();
        assert_eq!(c, random_class(seed, n).unwrap());
        counts[c] += 1;
    }
    // Binomial(10000, 0.1): sd 30; 5 sd.
    assert!(
        counts.iter().all(|&c| (850..=1150).contains(&c)),
        "{counts:?}"
    );
    assert!(random_class(0, 0).is_err());
    let rng = SeedRng::new(&[3, 5]);
    let labels = rng.class_labels(n).unwrap();
    assert_eq!(
        labels,
        vec![random_class(3, n).unwrap(), random_class(5, n).unwrap()]
    );
    let oh = one_hot(&labels, n, &Device::Cpu).unwrap();
    assert_eq!(oh.dims(), &[2, n]);
    assert_eq!(oh.sum_all().unwrap().to_scalar::<f32>().unwrap(), 2.0);
    assert!(one_hot(&[10], n, &Device::Cpu).is_err());
}

#[test]
fn latents_are_standard_normal() {
    let z = SeedRng::new(&(0..256).collect::<Vec<u64>>())
        .randn(&[3, 8, 8], &Device::Cpu)
        .unwrap();
    assert_eq!(z.dims(), &[256, 3, 8, 8]);
    let v = z.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    // s.e. 1/√n = 0.0036 (mean), √(2/n) = 0.0051 (variance); 5 s.e.
    assert!(
        mean.abs() < 0.018 && (var - 1.0).abs() < 0.026,
        "{mean} {var}"
    );
}

#[test]
fn npy_roundtrip_and_errors() {
    let dir = tmpdir("npy");
    let dev = Device::Cpu;
    let x = Tensor::arange(0f32, 32.0, &dev)
        .unwrap()
        .reshape((2, 1, 4, 4))
        .unwrap();
    let p = dir.join("lat.npy");
    save_npy_f32(&p, &x).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "temporary file left: {names:?}");
    let y = latents_from_npy(&p, [1, 4, 4], &dev).unwrap();
    assert_eq!(y.dims(), &[2, 1, 4, 4]);
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );

    // Wrong shape: the error names the file, the shape found and the one expected.
    let e = latents_from_npy(&p, [3, 4, 4], &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lat.npy") && e.contains("[2, 1, 4, 4]") && e.contains("[N, 3, 4, 4]"),
        "{e}"
    );

    // f64, 3-D (one image) and Fortran order.
    use npyz::WriterBuilder;
    let vals: Vec<f64> = (0..24).map(|v| v as f64 * 0.5).collect();
    let p64 = dir.join("f64.npy");
    let mut w = npyz::WriteOptions::<f64>::new()
        .default_dtype()
        .shape(&[2, 3, 4])
        .writer(std::fs::File::create(&p64).unwrap())
        .begin_nd()
        .unwrap();
    w.extend(vals.iter().copied()).unwrap();
    w.finish().unwrap();
    let y = latents_from_npy(&p64, [2, 3, 4], &dev).unwrap();
    assert_eq!(y.dims(), &[1, 2, 3, 4]);
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vals.iter().map(|&v| v as f32).collect::<Vec<_>>()
    );

    let pf = dir.join("fortran.npy");
    // Element [a,b,c] = 12a + 4b + c, stored with the first index fastest.
    let mut fdata = Vec::new();
    for c in 0..4 {
        for b in 0..3 {
            for a in 0..2 {
                fdata.push((12 * a + 4 * b + c) as f32);
            }
        }
    }
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .order(npyz::Order::Fortran)
        .shape(&[2, 3, 4])
        .writer(std::fs::File::create(&pf).unwrap())
        .begin_nd()
        .unwrap();
    w.extend(fdata).unwrap();
    w.finish().unwrap();
    let y = latents_from_npy(&pf, [2, 3, 4], &dev).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        (0..24).map(|v| v as f32).collect::<Vec<_>>()
    );

    let e = latents_from_npy(&dir.join("missing.npy"), [1, 4, 4], &dev).unwrap_err();
    assert!(e.to_string().contains("missing.npy"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn to_uint8_like_edm() {
    let x = Tensor::new(
        &[-2f32, -1.0, -0.5, 0.0, 0.5, 0.999, 1.0, 3.0],
        &Device::Cpu,
    )
    .unwrap();
    let u = to_uint8(&x).unwrap();
    assert_eq!(u.dtype(), DType::U8);
    // x·127.5 + 128 clipped to [0, 255], truncated: 0.5→191.75→191, 0.999→255.37→255.
    assert_eq!(
        u.to_vec1::<u8>().unwrap(),
        vec![0, 0, 64, 128, 191, 255, 255, 255]
    );
}

#[test]
fn grid_png_dimensions_and_pixels() {
    let dir = tmpdir("png");
    let dev = Device::Cpu;
    // 5 RGB images of H = 4, W = 6, image k filled with value 10k + channel.
    let (n, c, h, w) = (5usize, 3usize, 4usize, 6usize);
    let mut data = Vec::new();
    for k in 0..n {
        for ch in 0..c {
            data.extend(std::iter::repeat_n((10 * k + ch) as u8, h * w));
        }
    }
    let imgs = Tensor::from_vec(data, (n, c, h, w), &dev).unwrap();
    let p = dir.join("grid.png");
    save_grid_png(&p, &imgs, 2).unwrap();
    let g = image::open(&p).unwrap().to_rgb8();
    assert_eq!((g.width(), g.height()), (2 * 6, 3 * 4));
    assert_eq!(g.get_pixel(7, 5).0, [30, 31, 32]); // image 3: row 1, col 1
    assert_eq!(g.get_pixel(1, 9).0, [40, 41, 42]); // image 4: row 2, col 0
    assert_eq!(g.get_pixel(7, 9).0, [0, 0, 0]); // empty cell

    let gray = Tensor::full(200u8, (3, 1, 4, 6), &dev).unwrap();
    save_grid_png(&p, &gray, 8).unwrap(); // cols clamped to N: 3 × 1
    let g = image::open(&p).unwrap();
    assert_eq!((g.width(), g.height()), (18, 4));
    assert_eq!(g.color(), image::ColorType::L8);

    let one = dir.join("one.png");
    save_png(&one, &imgs.get(1).unwrap()).unwrap();
    let g = image::open(&one).unwrap().to_rgb8();
    assert_eq!((g.width(), g.height()), (6, 4));
    assert_eq!(g.get_pixel(0, 0).0, [10, 11, 12]);

    assert!(save_grid_png(&p, &imgs.to_dtype(DType::F32).unwrap(), 2).is_err());
    assert!(save_grid_png(
        &p,
        &Tensor::zeros((1, 2, 4, 4), DType::U8, &dev).unwrap(),
        1
    )
    .is_err());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn image_paths_like_edm() {
    let o = std::path::Path::new("out");
    assert_eq!(
        image_path(o, 1234, true),
        o.join("001000").join("001234.png")
    );
    assert_eq!(image_path(o, 7, false), o.join("000007.png"));
}

/// Found by `lossfloor-fuzz seeds`: ranges were bounded one by one (1e8 each), so a short
/// list could expand to hundreds of megabytes and take seconds. Now the whole list is
/// bounded, before anything is allocated.
#[test]
fn seed_lists_are_bounded_in_total() {
    use lossfloor_sampler::seeds::MAX_SEEDS;
    assert_eq!(
        parse_seeds(&format!("0-{}", MAX_SEEDS - 1)).unwrap().len() as u64,
        MAX_SEEDS
    );
    let t = std::time::Instant::now();
    for list in [
        "3-84467440".to_string(),
        format!("0-{}", MAX_SEEDS),
        format!("0-{},5", MAX_SEEDS - 1),
        "0-18446744073709551615".to_string(),
        ["0-9999999"; 40].join(","),
    ] {
        let e = parse_seeds(&list).unwrap_err().to_string();
        assert!(e.contains("past 10000000 seeds"), "{list}: {e}");
    }
    assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
}
