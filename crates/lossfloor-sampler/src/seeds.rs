//! Per-image random streams (EDM's `StackedRandomGenerator`) and seed lists.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::error::{Result, SamplerError};

/// ChaCha stream of a seed that [`random_class`] draws from; latents and churn noise
/// use stream 0 of the same key.
const CLASS_STREAM: u64 = 1;

/// One random generator per image seed, like EDM's `StackedRandomGenerator`: image k of
/// a batch draws its latents and its churn noise only from the stream of `seeds[k]`
/// (ChaCha8 seeded with `seed_from_u64(seed)`), so an image depends only on its own
/// seed, never on which other seeds share its batch.
#[derive(Debug, Clone)]
pub struct SeedRng {
    seeds: Vec<u64>,
    rngs: Vec<ChaCha8Rng>,
}

impl SeedRng {
    /// One stream per seed, in order.
    pub fn new(seeds: &[u64]) -> Self {
        Self {
            seeds: seeds.to_vec(),
            rngs: seeds
                .iter()
                .map(|&s| ChaCha8Rng::seed_from_u64(s))
                .collect(),
        }
    }

    /// The seeds, in batch order.
    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    /// Number of images (seeds).
    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    /// True if there are no seeds.
    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty()
    }

    /// Standard-normal f32 tensor `[N, *per_image]`; image k's values come from its own
    /// stream (EDM: `rnd.randn([batch, C, H, W])`).
    pub fn randn(&mut self, per_image: &[usize], device: &Device) -> Result<Tensor> {
        let numel: usize = per_image.iter().product();
        let mut data = Vec::with_capacity(numel * self.rngs.len());
        for rng in &mut self.rngs {
            data.extend((0..numel).map(|_| rng.sample::<f32, _>(StandardNormal)));
        }
        let mut shape = Vec::with_capacity(per_image.len() + 1);
        shape.push(self.rngs.len());
        shape.extend_from_slice(per_image);
        Ok(Tensor::from_vec(data, shape, device)?)
    }

    /// Standard-normal f32 tensor of `shape`, whose first dimension must be the number
    /// of seeds (EDM: `rnd.randn_like(x)`); the churn-noise callback of
    /// [`crate::sample`].
    pub fn randn_like(&mut self, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        if shape.first() != Some(&self.rngs.len()) {
            candle_core::bail!(
                "SeedRng::randn_like: shape {shape:?} does not start with the number of seeds {}",
                self.rngs.len()
            );
        }
        self.randn(&shape[1..], device)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// A class label per seed, from [`random_class`].
    pub fn class_labels(&self, num_classes: usize) -> Result<Vec<usize>> {
        self.seeds
            .iter()
            .map(|&s| random_class(s, num_classes))
            .collect()
    }
}

/// The class label of image `seed` when none is given: uniform on 0..num_classes, drawn
/// from the seed's own ChaCha8 key (stream 1, so it does not depend on the image size
/// or on how many latents were drawn before; EDM draws it from the seed's generator
/// after the latents).
pub fn random_class(seed: u64, num_classes: usize) -> Result<usize> {
    if num_classes == 0 {
        return Err(SamplerError::Invalid(
            "random_class: num_classes must be at least 1".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(CLASS_STREAM);
    Ok(rng.random_range(0..num_classes))
}

/// One-hot f32 class labels `[N, num_classes]` (EDM's `class_labels` argument).
pub fn one_hot(labels: &[usize], num_classes: usize, device: &Device) -> Result<Tensor> {
    let mut data = vec![0f32; labels.len() * num_classes];
    for (k, &c) in labels.iter().enumerate() {
        if c >= num_classes {
            return Err(SamplerError::Invalid(format!(
                "class label {c} out of range 0..{num_classes}"
            )));
        }
        data[k * num_classes + c] = 1.0;
    }
    Ok(Tensor::from_vec(data, (labels.len(), num_classes), device)?)
}

/// The most seeds one list may name, counting every item and range together. Each seed is
/// an image to generate (an FID run uses 50 000), so ten million is far beyond any real run;
/// the bound keeps a short list such as `0-99999999,0-99999999,…` from allocating gigabytes
/// or taking seconds to expand (found by `lossfloor-fuzz seeds`).
pub const MAX_SEEDS: u64 = 10_000_000;

/// Parses a seed list such as `"0-63,100,200-202"` (EDM's `parse_int_list`): comma
/// separated non-negative integers or inclusive ranges `a-b` with a ≤ b; spaces are
/// ignored; order and repeats are kept. At most [`MAX_SEEDS`] seeds in all.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let bad = |reason: String| SamplerError::Seeds {
        input: s.to_string(),
        reason,
    };
    let parse = |p: &str| -> Result<u64> {
        let p = p.trim();
        if p.is_empty() {
            return Err(bad("missing number".into()));
        }
        p.parse::<u64>()
            .map_err(|e| bad(format!("{p:?} is not a non-negative integer ({e})")))
    };
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Err(bad("empty".into()));
    }
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad("empty item between commas".into()));
        }
        let (a, b) = match part.split_once('-') {
            None => {
                let v = parse(part)?;
                (v, v)
            }
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(bad(format!("range {part:?} is decreasing")));
                }
                (a, b)
            }
        };
        // Counted before anything is allocated; `b - a + 1` cannot overflow past the check.
        let count = (b - a).saturating_add(1);
        if count > MAX_SEEDS - out.len() as u64 {
            return Err(bad(format!(
                "{part:?} brings the list past {MAX_SEEDS} seeds; expected at most \
                 {MAX_SEEDS} in all"
            )));
        }
        out.extend(a..=b);
    }
    Ok(out)
}
