//! 2-D homogeneous matrices and the inverse geometric transform of one image.
//!
//! The pipe works with the *inverse* transform G⁻¹: it maps a pixel of the output image to
//! the point of the input image it is sampled from. Coordinates are in pixels, centred on the
//! image centre ((W−1)/2, (H−1)/2), x to the right and y down, as in the reference.

use crate::params::{AugmentParams, AugmentStds};

/// A 3×3 matrix acting on homogeneous 2-D points `[x, y, 1]` (row-major).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine(pub [[f64; 3]; 3]);

impl Affine {
    /// The identity.
    pub const IDENTITY: Affine = Affine([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);

    /// Translation by (tx, ty): `[1 0 tx; 0 1 ty; 0 0 1]`.
    pub fn translate(tx: f64, ty: f64) -> Affine {
        Affine([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    }

    /// Axis-aligned scaling: `[sx 0 0; 0 sy 0; 0 0 1]`.
    pub fn scale(sx: f64, sy: f64) -> Affine {
        Affine([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])
    }

    /// Rotation by θ: `[cos θ, −sin θ, 0; sin θ, cos θ, 0; 0 0 1]`.
    pub fn rotate(theta: f64) -> Affine {
        let (s, c) = theta.sin_cos();
        Affine([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    }

    /// The matrix product `self · rhs` (apply `rhs` first).
    pub fn then_after(&self, rhs: &Affine) -> Affine {
        let (a, b) = (&self.0, &rhs.0);
        let mut out = [[0.0; 3]; 3];
        for (i, row) in out.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
            }
        }
        Affine(out)
    }

    /// The image of the point (x, y).
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.0;
        (
            m[0][0] * x + m[0][1] * y + m[0][2],
            m[1][0] * x + m[1][1] * y + m[1][2],
        )
    }
}

impl std::ops::Mul for Affine {
    type Output = Affine;
    fn mul(self, rhs: Affine) -> Affine {
        self.then_after(&rhs)
    }
}

/// G⁻¹ of one image of width `w` and height `h` (flips excluded: they are pixel copies done
/// before). The reference builds it by right-multiplying, in this order, the inverses of
///
/// - the isotropic scale s = 2^(scale·scale_std): `scale(1/s, 1/s)`;
/// - the rotation by `rotate`: `rotate(rotate)` (the inverse of a rotation by −angle);
/// - the anisotropic scale a = 2^(aniso·aniso_std) in the frame at angle r = `aniso_angle`:
///   `rotate(−r) · scale(1/a, a) · rotate(r)`;
/// - the translation by (tx·W·std, ty·H·std): `translate(−tx·W·std, −ty·H·std)`.
pub fn inverse_geometric_matrix(
    params: &AugmentParams,
    stds: &AugmentStds,
    w: usize,
    h: usize,
) -> Affine {
    let s = (params.scale * stds.scale_std).exp2();
    let a = (params.aniso * stds.aniso_std).exp2();
    let r = params.aniso_angle;
    let shift_x = params.tx * w as f64 * stds.translate_frac_std;
    let shift_y = params.ty * h as f64 * stds.translate_frac_std;
    Affine::scale(1.0 / s, 1.0 / s)
        * Affine::rotate(params.rotate)
        * Affine::rotate(-r)
        * Affine::scale(1.0 / a, a)
        * Affine::rotate(r)
        * Affine::translate(-shift_x, -shift_y)
}
