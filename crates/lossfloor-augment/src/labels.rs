//! The augmentation labels that condition the network on the transforms applied.

use crate::params::AugmentParams;

/// Number of labels per image (EDM's `augment_dim = 9`).
pub const LABEL_DIM: usize = 9;

/// Names of the labels, in the reference's order.
pub const LABEL_NAMES: [&str; LABEL_DIM] = [
    "xflip",
    "yflip",
    "scale",
    "rotate_cos_minus_1",
    "rotate_sin",
    "aniso_cos",
    "aniso_sin",
    "translate_x",
    "translate_y",
];

/// The 9 labels of one image, in the reference's order:
/// `[xflip, yflip, scale, cos(rotate) − 1, sin(rotate), aniso·cos(aniso_angle),
/// aniso·sin(aniso_angle), tx, ty]` (flips as 0/1; the draws before ×std). Every label is 0
/// when no transform is applied, so a network sees a zero vector for a clean image.
pub fn augment_labels(params: &AugmentParams) -> [f32; LABEL_DIM] {
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    [
        flag(params.xflip),
        flag(params.yflip),
        params.scale as f32,
        (params.rotate.cos() - 1.0) as f32,
        params.rotate.sin() as f32,
        (params.aniso * params.aniso_angle.cos()) as f32,
        (params.aniso * params.aniso_angle.sin()) as f32,
        params.tx as f32,
        params.ty as f32,
    ]
}
