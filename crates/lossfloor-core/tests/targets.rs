//! Prediction targets: values, x0 recovery, loss ratios and conversions.

mod common;

use common::{assert_close, assert_rel, log_grid, normal, rng};
use lossfloor_core::*;

fn targets() -> Vec<Target> {
    let mut v = Target::all().to_vec();
    v.push(Target::EdmF { sigma_data: 1.3 });
    v
}

#[test]
fn convert_loss_round_trips_between_every_pair() {
    for s in log_grid(1e-3, 1e3, 61) {
        for a in targets() {
            for b in targets() {
                let v = 0.37;
                let there = convert_loss(v, &a, &b, s);
                let back = convert_loss(there, &b, &a, s);
                // two multiplications and two divisions: a few ulps
                assert_rel(back, v, 1e-14, &format!("{a} → {b} → {a} at σ̂={s}"));
            }
            assert_rel(
                convert_loss(2.0, &Target::X0, &a, s),
                2.0 * x0_loss_ratio(&a, s),
                1e-15,
                "from x0",
            );
        }
    }
}

#[test]
fn ratios_written_out() {
    // r_T by hand at σ̂ = 0.3 (σ_d = 0.5 for EDM F)
    let s = 0.3_f64;
    let want = [
        (Target::X0, 1.0),
        (Target::Eps, 1.0 / 0.09),
        (Target::NegEps, 1.0 / 0.09),
        (Target::V, 1.09 / 0.09),
        (Target::FmVelocity, 1.69 / 0.09),
        (
            Target::EdmF { sigma_data: 0.5 },
            (0.09 + 0.25) / (0.15 * 0.15),
        ),
    ];
    for (t, w) in want {
        assert_rel(x0_loss_ratio(&t, s), w, 1e-14, &t.to_string());
    }
}

/// For each target: predictions built from a perturbed x0 (pred_x0 = x0 + e, with the ε
/// that reproduces the same x̂) have squared error r_T · Σe² and map back to pred_x0.
#[test]
fn conversion_equals_actual_loss_ratio_on_samples() {
    let mut r = rng(42);
    for s in log_grid(1e-2, 1e2, 25) {
        for t in targets() {
            let (mut num, mut den) = (0.0, 0.0);
            for _ in 0..2000 {
                let x0 = normal(&mut r);
                let eps = normal(&mut r);
                let e = 0.3 * normal(&mut r);
                let x_hat = ve_sample(x0, eps, s);
                let pred_x0 = x0 + e;
                // the noise that, with pred_x0, gives the same x̂
                let pred_eps = (x_hat - pred_x0) / s;
                let pred_t = target_value(&t, pred_x0, pred_eps, s);
                let true_t = target_value(&t, x0, eps, s);
                num += (pred_t - true_t).powi(2);
                den += e * e;
                // x0 recovery: rounding ~ulp(x̂)·(factor ≤ 1) on a value of size |x̂|
                let back = x0_from_prediction(&t, pred_t, x_hat, s);
                assert_close(back, pred_x0, 1e-12, x_hat.abs() + pred_x0.abs(), "x0 back");
                let back_true = x0_from_prediction(&t, true_t, x_hat, s);
                assert_close(back_true, x0, 1e-12, x_hat.abs() + x0.abs(), "x0 back");
            }
            // target errors are exact multiples of e up to rounding of x̂/σ̂ (≤ 1e-13
            // relative here since |e| ≳ 1e-3·|x̂|/σ̂ on average): 1e-10 is a safe bound.
            assert_rel(
                num / den,
                x0_loss_ratio(&t, s),
                1e-10,
                &format!("{t} σ̂={s}"),
            );
        }
    }
}

#[test]
fn target_values_by_hand() {
    let (x0, eps, s) = (0.8_f64, -1.1_f64, 2.5_f64);
    let a = 1.0 / (1.0 + s * s).sqrt();
    let sig = s * a;
    assert_eq!(target_value(&Target::X0, x0, eps, s), x0);
    assert_eq!(target_value(&Target::Eps, x0, eps, s), eps);
    assert_eq!(target_value(&Target::NegEps, x0, eps, s), -eps);
    assert_rel(
        target_value(&Target::V, x0, eps, s),
        a * eps - sig * x0,
        1e-15,
        "v",
    );
    assert_eq!(target_value(&Target::FmVelocity, x0, eps, s), eps - x0);
    // v in the original VP coordinates: x_t = α x0 + σ ε and x0 = α x_t − σ v
    let x_t = a * x0 + sig * eps;
    let v = target_value(&Target::V, x0, eps, s);
    assert_rel(a * x_t - sig * v, x0, 1e-14, "VP x0 from v");
    // FM in original coordinates: t = σ̂/(1+σ̂), x_t = (1−t) x0 + t ε, x0 = x_t − t u
    let t = s / (1.0 + s);
    let x_t = (1.0 - t) * x0 + t * eps;
    let u = target_value(&Target::FmVelocity, x0, eps, s);
    assert_rel(x_t - t * u, x0, 1e-14, "FM x0 from u");
    assert_rel(
        x0_from_prediction(&Target::FmVelocity, u, x_t / (1.0 - t), s),
        x0,
        1e-14,
        "FM x0_from_prediction",
    );
}

#[test]
fn parse_display_and_serde() {
    for t in targets() {
        let s = t.to_string();
        assert_eq!(s.parse::<Target>().unwrap(), t, "{s}");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), t);
    }
    assert_eq!(
        serde_json::to_string(&Target::Eps).unwrap(),
        r#"{"kind":"eps"}"#
    );
    assert_eq!(
        serde_json::to_string(&Target::EdmF { sigma_data: 0.5 }).unwrap(),
        r#"{"kind":"edm_f","sigma_data":0.5}"#
    );
    assert_eq!(
        "edm_f".parse::<Target>().unwrap(),
        Target::EdmF { sigma_data: 0.5 }
    );
    assert!("edm_f:-1".parse::<Target>().is_err());
    assert!("score".parse::<Target>().is_err());
}
