//! The element-wise half of the fused kernel: logits and online-softmax weights of one
//! query against one chunk of data rows, vectorised for AVX-512 / AVX2 when the CPU has them.

/// Weights whose logit lies more than this below the running maximum are set to exactly 0.
///
/// exp(−80) ≈ 1.8e−35 relative to the largest weight (which is 1): dropping such terms changes
/// no result at f32 precision, keeps exp() out of the slow denormal range (below e^−87.3),
/// and lets the weighted-sum step skip rows that are all zero.
pub const LOGIT_FLOOR: f32 = -80.0;

/// What one row update returns.
#[derive(Debug, Clone, Copy)]
pub struct RowUpdate {
    /// Running maximum logit after this chunk.
    pub new_max: f32,
    /// Σ_n p_n over the chunk, p_n = exp(ℓ_n − new_max).
    pub sum_p: f64,
    /// Σ_n p_n ‖x_n‖² over the chunk.
    pub sum_p_sq: f64,
    /// Number of non-zero p_n.
    pub nonzero: usize,
}

/// Inputs of one row update: a query's dot products with a chunk of rows.
pub struct RowInputs<'a> {
    /// ⟨x_src, x_n⟩ for the chunk's rows n.
    pub dot_src: &'a [f32],
    /// ⟨ε, x_n⟩ for the chunk's rows n.
    pub dot_noise: &'a [f32],
    /// ½‖x_n‖².
    pub half_sq: &'a [f32],
    /// ‖x_n‖².
    pub sq: &'a [f32],
    /// σ̂.
    pub sigma: f32,
    /// Position in the chunk of the query's own source and the amount subtracted from its
    /// logit (ln C; +∞ removes it), if the source lies in this chunk and is penalised.
    pub penalty: Option<(usize, f32)>,
}

/// Computes the Gaussian-kernel logits of query x̂ = x_src + σ̂ε against the chunk,
///
///   ℓ_n = (⟨x̂, x_n⟩ − ½‖x_n‖²) / σ̂²  = −‖x̂ − x_n‖²/(2σ̂²) + const(x̂),
///
/// (the constant ‖x̂‖²/(2σ̂²) cancels in the softmax), then the online-softmax weights
/// p_n = exp(ℓ_n − m') with m' = max(running_max, max_n ℓ_n), written into `p`.
pub fn row_update(inputs: &RowInputs, running_max: f32, p: &mut [f32]) -> RowUpdate {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { row_update_avx512(inputs, running_max, p) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { row_update_avx2(inputs, running_max, p) };
        }
    }
    row_update_generic(inputs, running_max, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn row_update_avx512(inputs: &RowInputs, running_max: f32, p: &mut [f32]) -> RowUpdate {
    row_update_generic(inputs, running_max, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_update_avx2(inputs: &RowInputs, running_max: f32, p: &mut [f32]) -> RowUpdate {
    row_update_generic(inputs, running_max, p)
}

const LANES: usize = 16;

#[inline(always)]
fn row_update_generic(inputs: &RowInputs, running_max: f32, p: &mut [f32]) -> RowUpdate {
    let n = p.len();
    let sigma = inputs.sigma;
    let inv_s2 = 1.0 / (sigma * sigma);
    let (dot_src, dot_noise, half_sq) = (
        &inputs.dot_src[..n],
        &inputs.dot_noise[..n],
        &inputs.half_sq[..n],
    );

    // Pass 1: logits and their maximum (lane-wise maxima so the loop vectorises).
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let mut p_chunks = p.chunks_exact_mut(LANES);
    let mut offset = 0;
    for out in &mut p_chunks {
        for l in 0..LANES {
            let i = offset + l;
            let v = (dot_src[i] + sigma * dot_noise[i] - half_sq[i]) * inv_s2;
            out[l] = v;
            lane_max[l] = if v > lane_max[l] { v } else { lane_max[l] };
        }
        offset += LANES;
    }
    for (l, out) in p_chunks.into_remainder().iter_mut().enumerate() {
        let i = offset + l;
        let v = (dot_src[i] + sigma * dot_noise[i] - half_sq[i]) * inv_s2;
        *out = v;
        lane_max[l] = if v > lane_max[l] { v } else { lane_max[l] };
    }
    if let Some((j, amount)) = inputs.penalty {
        p[j] -= amount; // may become −∞ (source removed): never the maximum unless all are.
    }
    let mut chunk_max = lane_max.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if inputs.penalty.is_some() {
        // The penalised entry may have held the maximum: recompute exactly.
        chunk_max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
    let new_max = running_max.max(chunk_max);
    if new_max == f32::NEG_INFINITY {
        p.iter_mut().for_each(|v| *v = 0.0);
        return RowUpdate {
            new_max,
            sum_p: 0.0,
            sum_p_sq: 0.0,
            nonzero: 0,
        };
    }

    // Pass 2: weights, their sum, their ‖x‖²-weighted sum and the count of non-zeros.
    let sq = &inputs.sq[..n];
    let mut lane_sum = [0f32; LANES];
    let mut lane_sq = [0f32; LANES];
    let mut lane_nz = [0u32; LANES];
    let mut p_chunks = p.chunks_exact_mut(LANES);
    let mut offset = 0;
    for out in &mut p_chunks {
        for l in 0..LANES {
            let w = exp_floored(out[l] - new_max);
            out[l] = w;
            lane_sum[l] += w;
            lane_sq[l] += w * sq[offset + l];
            lane_nz[l] += (w > 0.0) as u32;
        }
        offset += LANES;
    }
    for (l, out) in p_chunks.into_remainder().iter_mut().enumerate() {
        let w = exp_floored(*out - new_max);
        *out = w;
        lane_sum[l] += w;
        lane_sq[l] += w * sq[offset + l];
        lane_nz[l] += (w > 0.0) as u32;
    }
    RowUpdate {
        new_max,
        sum_p: lane_sum.iter().map(|&v| v as f64).sum(),
        sum_p_sq: lane_sq.iter().map(|&v| v as f64).sum(),
        nonzero: lane_nz.iter().map(|&v| v as usize).sum(),
    }
}

/// e^x for x ≤ 0, with 0 below [`LOGIT_FLOOR`]; about 1 ulp of f32.
///
/// Range reduction x = k·ln2 + r, |r| ≤ ln2/2, then a degree-7 polynomial for e^r (the Cephes
/// `expf` minimax coefficients) and 2^k put straight into the exponent bits. Written without
/// branches or library calls so the loops above compile to vector instructions.
#[inline(always)]
pub fn exp_floored(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to an integer
    let keep = x >= LOGIT_FLOOR;
    let xc = if keep { x } else { LOGIT_FLOOR };
    let k = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let mut y = 1.987_569_1e-4f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    let e_r = y * r * r + r + 1.0;
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    if keep {
        e_r * scale
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_two_ulp() {
        let mut worst = 0f64;
        for i in 0..=80_000 {
            let x = -(i as f32) * 1e-3;
            let (a, b) = (exp_floored(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        // f32 has 2^-24 ≈ 6e-8 unit round-off: the polynomial plus rounding stays within ~2 ulp.
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_floored(-80.5), 0.0);
        assert_eq!(exp_floored(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_floored(0.0), 1.0);
    }

    #[test]
    fn row_update_matches_scalar_reference() {
        let n = 37; // odd length exercises the remainder loop
        let dot_src: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let dot_noise: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let sq: Vec<f32> = (0..n).map(|i| 1.0 + (i as f32 * 0.05)).collect();
        let half_sq: Vec<f32> = sq.iter().map(|v| 0.5 * v).collect();
        for penalty in [None, Some((5usize, 1.5f32)), Some((0usize, f32::INFINITY))] {
            let inputs = RowInputs {
                dot_src: &dot_src,
                dot_noise: &dot_noise,
                half_sq: &half_sq,
                sq: &sq,
                sigma: 0.7,
                penalty,
            };
            let mut p = vec![0f32; n];
            let u = row_update(&inputs, -1.0, &mut p);
            let mut logits: Vec<f64> = (0..n)
                .map(|i| {
                    (dot_src[i] as f64 + 0.7 * dot_noise[i] as f64 - half_sq[i] as f64)
                        / (0.7f64 * 0.7)
                })
                .collect();
            if let Some((j, a)) = penalty {
                logits[j] -= a as f64;
            }
            let m = logits.iter().copied().fold(-1.0f64, f64::max);
            assert!((u.new_max as f64 - m).abs() < 1e-5);
            let sum: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            let sum_sq: f64 = logits
                .iter()
                .zip(&sq)
                .map(|(l, &s)| (l - m).exp() * s as f64)
                .sum();
            assert!((u.sum_p - sum).abs() < 1e-5 * sum, "{} vs {}", u.sum_p, sum);
            assert!((u.sum_p_sq - sum_sq).abs() < 1e-5 * sum_sq);
            for i in 0..n {
                assert!((p[i] as f64 - (logits[i] - m).exp()).abs() < 1e-6);
            }
        }
    }
}
