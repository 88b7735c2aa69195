//! Deterministic random draws for the Monte-Carlo queries.
//!
//! Each query has its own generator seeded from `(seed, stream, index)`, so a result depends
//! only on `--seed`, never on the thread count or tile sizes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Named sub-streams, so different uses of one seed never share random numbers.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Stream {
    /// Source index and noise of query m of the exact estimator.
    ExactQuery = 1,
    /// The subset (and its order) of batch b of the subset estimators.
    SubsetBatch = 2,
    /// The noise of member i of batch b of the subset estimators.
    SubsetNoise = 3,
}

/// SplitMix64 finaliser: a bijective mix that spreads nearby integers over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of item `index` (and `sub`) of `stream` under `seed`.
pub fn rng_for(seed: u64, stream: Stream, index: u64, sub: u64) -> ChaCha8Rng {
    let key =
        mix(mix(mix(seed ^ mix(stream as u64)) ^ index) ^ sub.wrapping_mul(0xA24B_AED4_963E_E407));
    ChaCha8Rng::seed_from_u64(key)
}

/// Fills `out` with independent standard-normal values.
pub fn fill_normal(rng: &mut impl Rng, out: &mut [f32]) {
    for v in out {
        *v = rng.sample::<f32, _>(StandardNormal);
    }
}
