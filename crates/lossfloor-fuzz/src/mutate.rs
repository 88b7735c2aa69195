//! Byte mutations of valid seed files, driven by a seeded RNG so a run is reproducible.
//!
//! No coverage feedback is available on the stable toolchain, so the mutations lean on what
//! breaks readers in practice: length and count fields set to boundary values (0, 1, −1,
//! 2³¹, …, in either byte order), truncation, bytes removed or repeated in the middle, and
//! splices of two seeds of the same format.

use rand::{Rng, RngCore};

/// Integers that sit on the boundaries readers get wrong (0, 1, sign bits, all ones, powers
/// of two near allocation sizes).
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Single bytes worth setting: zero, all ones, the ASCII/sign boundary, and characters that
/// end or separate fields in text formats (quote, comma, colon, newline, brackets).
const INTERESTING_BYTES: [u8; 14] = [
    0x00, 0xff, 0x7f, 0x80, 0x01, b'"', b',', b':', b'\n', b'[', b']', b'{', b'-', b'9',
];

/// Keeps mutated inputs small: readers are fed kilobytes, and a runaway duplication would
/// only slow the run down.
const MAX_LEN: usize = 1 << 20;

/// Applies one to eight stacked mutations to `data`; `other` is another seed of the same
/// format, used for splicing.
pub fn mutate(data: &mut Vec<u8>, other: &[u8], rng: &mut impl Rng) {
    let rounds = 1 + rng.random_range(0..8u32).min(rng.random_range(0..8u32));
    for _ in 0..rounds {
        mutate_once(data, other, rng);
    }
    data.truncate(MAX_LEN);
}

fn random_offset(len: usize, rng: &mut impl Rng) -> usize {
    if len == 0 {
        0
    } else {
        rng.random_range(0..len)
    }
}

fn mutate_once(data: &mut Vec<u8>, other: &[u8], rng: &mut impl Rng) {
    let len = data.len();
    match rng.random_range(0..11u32) {
        0 if len > 0 => {
            let i = random_offset(len, rng);
            data[i] ^= 1 << rng.random_range(0..8u32);
        }
        1 if len > 0 => {
            let i = random_offset(len, rng);
            data[i] = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())];
        }
        2 if len > 0 => {
            let i = random_offset(len, rng);
            data[i] = rng.random();
        }
        3 => {
            // Insert a run of one random byte or of random bytes.
            let i = random_offset(len + 1, rng);
            let n = 1 + rng.random_range(0..16usize);
            let fill: Vec<u8> = if rng.random_bool(0.5) {
                vec![rng.random(); n]
            } else {
                (0..n).map(|_| rng.random()).collect()
            };
            data.splice(i..i, fill);
        }
        4 if len > 0 => {
            let i = random_offset(len, rng);
            let n = 1 + rng.random_range(0..(len - i).min(64));
            data.drain(i..i + n);
        }
        5 if len > 0 => {
            // Truncate: readers must notice the missing tail.
            let keep = random_offset(len, rng);
            data.truncate(keep);
        }
        6 if len > 0 => {
            // Duplicate a chunk in place (repeated records, doubled headers).
            let i = random_offset(len, rng);
            let n = 1 + rng.random_range(0..(len - i).min(256));
            let chunk = data[i..i + n].to_vec();
            let at = random_offset(len + 1, rng);
            data.splice(at..at, chunk);
        }
        7 if !other.is_empty() => {
            // Splice: our head, the other seed's tail.
            let cut = random_offset(len + 1, rng);
            let from = random_offset(other.len(), rng);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        8 | 9 if len > 0 => overwrite_integer(data, rng),
        10 if len > 0 => overwrite_ascii_number(data, rng),
        _ => {
            if len > 0 {
                let i = random_offset(len, rng);
                data[i] = data[i]
                    .wrapping_add(rng.random_range(1..=35u8))
                    .wrapping_sub(17);
            } else {
                data.push(rng.random());
            }
        }
    }
}

/// Writes a boundary integer (possibly ±1 or negated) of 1, 2, 4 or 8 bytes in little- or
/// big-endian order at a random offset: this is how length, count and offset fields go bad.
fn overwrite_integer(data: &mut [u8], rng: &mut impl Rng) {
    let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
    if data.len() < width {
        return;
    }
    let mut value = INTERESTING[rng.random_range(0..INTERESTING.len())];
    match rng.random_range(0..4u32) {
        0 => value = value.wrapping_add(1),
        1 => value = value.wrapping_sub(1),
        2 => value = value.wrapping_neg(),
        _ => {}
    }
    let at = rng.random_range(0..=data.len() - width);
    let bytes = if rng.random_bool(0.5) {
        value.to_le_bytes()
    } else {
        value.to_be_bytes()
    };
    let bytes = if rng.random_bool(0.5) {
        &bytes[..width]
    } else {
        &bytes[8 - width..]
    };
    data[at..at + width].copy_from_slice(bytes);
}

/// Replaces a run of ASCII digits with another number: text formats (npy headers, JSON,
/// TOML, seed and σ lists) declare their sizes in decimal.
fn overwrite_ascii_number(data: &mut Vec<u8>, rng: &mut impl Rng) {
    let start = random_offset(data.len(), rng);
    let Some(first) = (start..data.len()).find(|&i| data[i].is_ascii_digit()) else {
        return;
    };
    let end = (first..data.len())
        .find(|&i| !data[i].is_ascii_digit())
        .unwrap_or(data.len());
    let replacement = match rng.random_range(0..6u32) {
        0 => "0".to_string(),
        1 => "-1".to_string(),
        2 => u64::MAX.to_string(),
        3 => "18446744073709551616".to_string(),
        4 => "1e308".to_string(),
        _ => INTERESTING[rng.random_range(0..INTERESTING.len())].to_string(),
    };
    data.splice(first..end, replacement.into_bytes());
}

/// A 64-bit hash of an input, for finding file names (FNV-1a: stable across runs and builds).
pub fn input_hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A seed for the RNG of one target's run from the run's seed and the target name, so
/// targets of one `all` run do not replay the same mutation sequence.
pub fn target_seed(run_seed: u64, target: &str) -> u64 {
    let mut h = input_hash(target.as_bytes()) ^ run_seed;
    // One round of splitmix64 to spread nearby run seeds apart.
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Fills a fresh vector with `n` random bytes (for seeds of pure noise).
pub fn random_bytes(n: usize, rng: &mut impl RngCore) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn mutations_are_reproducible_and_bounded() {
        let seed: Vec<u8> = (0..200u8).collect();
        let run = |s: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(s);
            (0..500)
                .map(|_| {
                    let mut d = seed.clone();
                    mutate(&mut d, b"other seed", &mut rng);
                    assert!(d.len() <= MAX_LEN);
                    d
                })
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        assert!(a.iter().filter(|d| **d != seed).count() > 450);
    }

    #[test]
    fn empty_input_can_grow() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let grew = (0..100).any(|_| {
            let mut d = Vec::new();
            mutate(&mut d, b"", &mut rng);
            !d.is_empty()
        });
        assert!(grew);
    }
}
