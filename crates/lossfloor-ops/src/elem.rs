//! The element types the kernels run on (f32 for training, f64 for gradient checks).

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// A floating-point element the kernels support.
pub trait Elem:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        exp_f32(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

/// e^x for f32 in straight-line arithmetic, so that loops calling it vectorise (libm's
/// `expf` is an opaque call per element, and `floor` is one too without SSE4.1).
/// e^x = 2^k·e^r with k = round(x·log₂e) and r = x − k·ln 2 (ln 2 split in two for an exact
/// product), |r| ≤ ln2/2, and e^r from its Taylor polynomial to r⁷ (truncation error < 3e-9
/// relative). k is rounded by adding and subtracting 1.5·2²³, which leaves k in the low
/// mantissa bits. Inputs are clamped to [−87, 88], where e^x is a normal f32; the result is
/// within 2 ulp of the exact e^x.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln 2 rounded to 16 significant bits
    const LN2_LO: f32 = 1.428_606_8e-6; // ln 2 − LN2_HI
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let k_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^k from its exponent bits (k ∈ [−126, 127] after the clamp).
    let two_k = f32::from_bits(((k_int + 127) as u32) << 23);
    p * two_k
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// C = A·B (or C += A·B) for row-major A [m×k] and B [k×n] given by strides; C row-major.
///
/// # Safety contract (checked)
/// The slices must hold every element the strides address.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
    c: &mut [T],
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs
        }
    };
    assert!(
        k == 0 || (last(m, k, a_rs, a_cs) < a.len() && last(k, n, b_rs, b_cs) < b.len()),
        "gemm operand out of bounds"
    );
    assert!(c.len() >= m * n, "gemm output too small");
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|v| *v = T::ZERO);
        }
        return;
    }
    // SAFETY: bounds checked above; `c` is a distinct mutable borrow.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp() {
        // Every 97th f32 bit pattern between −87 and 88, and the ends.
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            let got = exp_f32(x) as f64;
            let ulp = (exact as f32).next_up() as f64 - exact as f32 as f64;
            worst = worst.max((got - exact).abs() / ulp);
            x = f32::from_bits(if x < 0.0 {
                x.to_bits() - 97
            } else {
                x.to_bits() + 97
            });
            if x == 0.0 || (x < 0.0 && x > -1e-30) {
                x = 1e-30;
            }
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        // clamped ends stay finite and positive
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(1000.0).is_finite());
    }
}
