//! Splitting a sampler's batch across threads by images: each thread runs whole forward
//! passes on its share of the images.
//!
//! Inside one forward pass the large ops (convolutions, GroupNorm) already run images in
//! parallel, but many small ones do not: candle's element-wise ops, concatenations and the
//! embedding layers run on one thread, and the parallel ops meet at a barrier after every
//! layer. With the batch cut into one part per thread, all of that runs on every core at
//! once and each thread's working set is a fraction of the batch. Every image goes through
//! the same arithmetic as in one pass over the whole batch (all layers are per image), so
//! outputs agree with the unsplit pass to float32 round-off (the embedding GEMMs may block
//! their sums differently for fewer rows).

use candle_core::{Device, Tensor};
use lossfloor_nets::Network;
use rayon::prelude::*;

/// Fewest images a part gets: below this, per-pass overheads outweigh the parallelism.
const MIN_IMAGES_PER_PART: usize = 4;

/// How many parts a batch of `n` images on `device` is cut into: one per rayon thread on
/// the CPU (at most n / [`MIN_IMAGES_PER_PART`]), 1 elsewhere (a GPU runs the batch as one).
/// `LOSSFLOOR_IMAGE_SPLIT=K` overrides the number of parts on the CPU (1 = no split).
pub fn image_parts(n: usize, device: &Device) -> usize {
    if !device.is_cpu() {
        return 1;
    }
    let wanted = std::env::var("LOSSFLOOR_IMAGE_SPLIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(rayon::current_num_threads);
    wanted.min(n / MIN_IMAGES_PER_PART).max(1)
}

/// `network.forward(x, c_noise, labels)` in eval mode, with the batch split into
/// [`image_parts`] parts that run on separate threads; the outputs are concatenated in order.
pub fn forward_split(
    network: &dyn Network,
    x: &Tensor,
    c_noise: f64,
    labels: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let parts = image_parts(x.dim(0)?, x.device());
    forward_parts(network, x, c_noise, labels, parts)
}

/// [`forward_split`] with a given number of parts (at most one per image).
pub fn forward_parts(
    network: &dyn Network,
    x: &Tensor,
    c_noise: f64,
    labels: Option<&Tensor>,
    parts: usize,
) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let parts = parts.clamp(1, n.max(1));
    let run = |start: usize, len: usize| -> candle_core::Result<Tensor> {
        let xs = x.narrow(0, start, len)?;
        let noise = Tensor::full(c_noise as f32, len, x.device())?;
        let ls = labels.map(|l| l.narrow(0, start, len)).transpose()?;
        network
            .forward(&xs, &noise, ls.as_ref(), None, false)
            .map_err(|e| candle_core::Error::Msg(format!("network forward: {e}")))
    };
    if parts == 1 {
        return run(0, n);
    }
    let bounds: Vec<(usize, usize)> = (0..parts)
        .map(|i| (i * n / parts, (i + 1) * n / parts - i * n / parts))
        .collect();
    let outs = bounds
        .par_iter()
        .map(|&(start, len)| run(start, len))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&outs, 0)
}
