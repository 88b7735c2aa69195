//! The per-image parameter record, the pipe's configuration, and the random draw of records.

use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// The transforms applied to one image, in the units of EDM's `training/augment.py`.
///
/// A transform that is not applied has its value at 0 (flips `false`), which is what the
/// reference stores after its probability gate. The draws are kept *before* multiplication by
/// their standard deviation, because that is what the network's augmentation labels carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AugmentParams {
    /// Mirror left-right (label 1.0).
    pub xflip: bool,
    /// Mirror top-bottom (label 1.0).
    pub yflip: bool,
    /// Isotropic scale draw w: the image is magnified by 2^(w·scale_std).
    pub scale: f64,
    /// Rotation angle in radians: the content turns counter-clockwise on screen (the output
    /// pixel at centred position p, y down, samples the input at `[cos −sin; sin cos]`·p).
    pub rotate: f64,
    /// Anisotropic scale draw w: the image is stretched by 2^(w·aniso_std) along one axis of a
    /// frame turned by `aniso_angle` and squeezed by the same factor along the other.
    pub aniso: f64,
    /// Angle in radians of the anisotropic scaling's frame (0 = the image axes).
    pub aniso_angle: f64,
    /// Horizontal translation draw: the shift is tx·W·translate_frac_std pixels.
    pub tx: f64,
    /// Vertical translation draw: the shift is ty·H·translate_frac_std pixels.
    pub ty: f64,
}

impl AugmentParams {
    /// Whether every field is finite (the resampling margin and matrix need that).
    pub fn is_finite(&self) -> bool {
        [
            self.scale,
            self.rotate,
            self.aniso,
            self.aniso_angle,
            self.tx,
            self.ty,
        ]
        .iter()
        .all(|v| v.is_finite())
    }
}

/// Standard deviations that turn the draws of [`AugmentParams`] into geometry. These are the
/// only settings [`crate::apply_with`] needs besides the records.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugmentStds {
    /// Log2 standard deviation of the isotropic scale (EDM: 0.2).
    pub scale_std: f64,
    /// Log2 standard deviation of the anisotropic scale (EDM: 0.2).
    pub aniso_std: f64,
    /// Standard deviation of the translation, relative to the image size (EDM: 0.125).
    pub translate_frac_std: f64,
}

impl AugmentStds {
    /// The reference's defaults, which EDM's `train.py --augment` keeps.
    pub const EDM: AugmentStds = AugmentStds {
        scale_std: 0.2,
        aniso_std: 0.2,
        translate_frac_std: 0.125,
    };
}

impl Default for AugmentStds {
    fn default() -> Self {
        Self::EDM
    }
}

/// Probabilities of the pipe: each transform is applied with probability p × its multiplier
/// (clamped to 1 by the comparison `u < p·m`), plus the ranges only the draw needs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Overall probability multiplier (EDM's `--augment`, default 0.12).
    pub p: f64,
    /// Multiplier of the x-flip (EDM: 1e8, so that it is always eligible and then a coin flip).
    pub xflip: f64,
    /// Multiplier of the y-flip (EDM: 1).
    pub yflip: f64,
    /// Multiplier of the isotropic scale (EDM: 1).
    pub scale: f64,
    /// Multiplier of the arbitrary rotation (EDM: 1).
    pub rotate_frac: f64,
    /// Multiplier of the anisotropic scale (EDM: 1).
    pub aniso: f64,
    /// Multiplier of the fractional translation (EDM: 1).
    pub translate_frac: f64,
    /// Range of the rotation as a fraction of a half turn each way: angle ∈ [−π·max, π·max)
    /// (EDM: 1, the full circle).
    pub rotate_frac_max: f64,
    /// Probability that the anisotropic scale acts in a randomly rotated frame (EDM: 0.5).
    pub aniso_rotate_prob: f64,
    /// The standard deviations of the draws.
    pub stds: AugmentStds,
}

impl AugmentConfig {
    /// EDM's `train.py --augment=P` setting: `p=P, xflip=1e8, yflip=1, scale=1, rotate_frac=1,
    /// aniso=1, translate_frac=1` and the reference's default ranges and standard deviations.
    pub fn edm(p: f64) -> Self {
        AugmentConfig {
            p,
            xflip: 1e8,
            yflip: 1.0,
            scale: 1.0,
            rotate_frac: 1.0,
            aniso: 1.0,
            translate_frac: 1.0,
            rotate_frac_max: 1.0,
            aniso_rotate_prob: 0.5,
            stds: AugmentStds::EDM,
        }
    }
}

impl Default for AugmentConfig {
    /// [`AugmentConfig::edm`] with EDM's default p = 0.12.
    fn default() -> Self {
        Self::edm(0.12)
    }
}

/// The raw random numbers behind one [`AugmentParams`], in the order the reference draws them
/// for one transform after another: uniform numbers in [0, 1), standard normals, coin bits.
/// Kept as a record so that the mapping to parameters ([`params_from_draws`]) is a pure
/// function that the parity test can feed with the reference's own draws.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RawDraws {
    /// `randint(2)` of the x-flip.
    pub xflip_bit: bool,
    /// Gate of the x-flip.
    pub xflip_gate: f64,
    /// `randint(2)` of the y-flip.
    pub yflip_bit: bool,
    /// Gate of the y-flip.
    pub yflip_gate: f64,
    /// Normal draw of the isotropic scale.
    pub scale_normal: f64,
    /// Gate of the isotropic scale.
    pub scale_gate: f64,
    /// Uniform draw of the rotation angle.
    pub rotate_uniform: f64,
    /// Gate of the rotation.
    pub rotate_gate: f64,
    /// Normal draw of the anisotropic scale.
    pub aniso_normal: f64,
    /// Uniform draw of the anisotropic frame's angle.
    pub aniso_angle_uniform: f64,
    /// Gate of the anisotropic scale.
    pub aniso_gate: f64,
    /// Gate of the rotated frame (independent of whether the anisotropic scale is applied).
    pub aniso_angle_gate: f64,
    /// Normal draw of the horizontal translation.
    pub tx_normal: f64,
    /// Normal draw of the vertical translation.
    pub ty_normal: f64,
    /// One gate shared by both translation components.
    pub translate_gate: f64,
}

/// The reference's probability gate: `where(rand() < multiplier·p, value, 0)`. A multiplier
/// above 1/p (EDM's x-flip 1e8) makes the gate always pass.
pub fn gate(uniform: f64, multiplier: f64, p: f64) -> bool {
    uniform < multiplier * p
}

/// A uniform draw u ∈ [0, 1) mapped to an angle (2u − 1)·π·range, as the reference does for
/// the rotation (range = rotate_frac_max) and for the anisotropic frame (range = 1).
pub fn uniform_to_angle(uniform: f64, range: f64) -> f64 {
    (uniform * 2.0 - 1.0) * (std::f64::consts::PI * range)
}

/// Maps raw draws to one parameter record: every transform's value passes through its gate
/// ([`gate`] with its multiplier and p), zero otherwise; the anisotropic frame's angle has
/// its own gate with probability `aniso_rotate_prob` that does not involve p.
pub fn params_from_draws(draws: &RawDraws, cfg: &AugmentConfig) -> AugmentParams {
    let keep = |value: f64, uniform: f64, multiplier: f64| {
        if gate(uniform, multiplier, cfg.p) {
            value
        } else {
            0.0
        }
    };
    let translate_on = gate(draws.translate_gate, cfg.translate_frac, cfg.p);
    AugmentParams {
        xflip: draws.xflip_bit && gate(draws.xflip_gate, cfg.xflip, cfg.p),
        yflip: draws.yflip_bit && gate(draws.yflip_gate, cfg.yflip, cfg.p),
        scale: keep(draws.scale_normal, draws.scale_gate, cfg.scale),
        rotate: keep(
            uniform_to_angle(draws.rotate_uniform, cfg.rotate_frac_max),
            draws.rotate_gate,
            cfg.rotate_frac,
        ),
        aniso: keep(draws.aniso_normal, draws.aniso_gate, cfg.aniso),
        aniso_angle: if draws.aniso_angle_gate < cfg.aniso_rotate_prob {
            uniform_to_angle(draws.aniso_angle_uniform, 1.0)
        } else {
            0.0
        },
        tx: if translate_on { draws.tx_normal } else { 0.0 },
        ty: if translate_on { draws.ty_normal } else { 0.0 },
    }
}

/// Draws the raw numbers of one image from `rng`. Every number is drawn whether or not its
/// gate passes, so that which numbers an image gets does not depend on p or on the other gates.
pub fn draw_raw<R: Rng + ?Sized>(rng: &mut R) -> RawDraws {
    fn uniform<R: Rng + ?Sized>(rng: &mut R) -> f64 {
        rng.random::<f64>()
    }
    fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
        rng.sample::<f64, _>(StandardNormal)
    }
    let xflip_bit = uniform(rng) < 0.5;
    let xflip_gate = uniform(rng);
    let yflip_bit = uniform(rng) < 0.5;
    let yflip_gate = uniform(rng);
    let scale_normal = normal(rng);
    let scale_gate = uniform(rng);
    let rotate_uniform = uniform(rng);
    let rotate_gate = uniform(rng);
    let aniso_normal = normal(rng);
    let aniso_angle_uniform = uniform(rng);
    let aniso_gate = uniform(rng);
    let aniso_angle_gate = uniform(rng);
    let tx_normal = normal(rng);
    let ty_normal = normal(rng);
    let translate_gate = uniform(rng);
    RawDraws {
        xflip_bit,
        xflip_gate,
        yflip_bit,
        yflip_gate,
        scale_normal,
        scale_gate,
        rotate_uniform,
        rotate_gate,
        aniso_normal,
        aniso_angle_uniform,
        aniso_gate,
        aniso_angle_gate,
        tx_normal,
        ty_normal,
        translate_gate,
    }
}

/// Draws `n` parameter records from `rng` (one image after another), each a pure function of
/// the stream: a seeded RNG gives the same records on every run.
pub fn draw_params<R: Rng + ?Sized>(
    rng: &mut R,
    cfg: &AugmentConfig,
    n: usize,
) -> Vec<AugmentParams> {
    (0..n)
        .map(|_| params_from_draws(&draw_raw(rng), cfg))
        .collect()
}
