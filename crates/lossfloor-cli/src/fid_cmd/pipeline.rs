//! FID of generated images with sampling and Inception feature extraction overlapped.
//!
//! The sampler produces one batch at a time and the Inception network consumes them on a
//! second thread, through a queue of one batch: while Inception reads batch k the sampler
//! already draws batch k + 1, so neither stage idles while the other runs its serial parts
//! (on a GPU the two stages' kernels interleave the same way). Each stage's own time is
//! measured, so the command reports the rate of each as well as the overall rate.

use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{anyhow, Result};
use lossfloor_fid::{FeatureStats, InceptionV3, FEATURE_DIM};
use lossfloor_sampler::to_uint8;

use crate::sample::{generate, SamplingJob};

/// What one run of [`generated_stats`] measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipelineTimes {
    pub images: usize,
    /// Wall time of the whole pipeline, s.
    pub wall_s: f64,
    /// Time the sampler spent sampling (not waiting for the queue), s.
    pub sampling_s: f64,
    /// Time Inception spent on features (not waiting for batches), s.
    pub inception_s: f64,
}

impl PipelineTimes {
    /// One line with the rate of each stage and of the whole.
    pub fn summary(&self) -> String {
        let rate = |s: f64| self.images as f64 / s.max(1e-9);
        format!(
            "{} images: sampling {:.2} img/s, Inception {:.2} img/s (each on its own time), \
             overall {:.2} img/s",
            self.images,
            rate(self.sampling_s),
            rate(self.inception_s),
            rate(self.wall_s)
        )
    }
}

/// Inception feature statistics of the images `job` generates, sampled on this thread and
/// fed to `net` on another as each batch is done (no image files).
pub(crate) fn generated_stats(
    job: &SamplingJob,
    net: &InceptionV3,
) -> Result<(FeatureStats, PipelineTimes)> {
    // Pixels and their [N, C, H, W] shape of one sampled batch.
    type Batch = (Vec<u8>, [usize; 4]);
    let (tx, rx) = sync_channel::<Batch>(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        let inception = s.spawn(move || -> Result<(FeatureStats, f64)> {
            let mut stats = FeatureStats::new(FEATURE_DIM);
            let mut busy = 0.0;
            for (bytes, [m, c, h, w]) in rx {
                let t = Instant::now();
                let feats = net.features_tensor(&bytes, m, c, h, w)?;
                stats.accumulate_flat(&feats.flatten_all()?.to_vec1::<f32>()?)?;
                busy += t.elapsed().as_secs_f64();
            }
            Ok((stats, busy))
        });
        let (mut waited, mut images) = (0.0, 0);
        let sampled = generate(job, &mut |_, x| {
            let (m, c, h, w) = x.dims4()?;
            let bytes = to_uint8(&x)?.flatten_all()?.to_vec1::<u8>()?;
            let t = Instant::now();
            tx.send((bytes, [m, c, h, w]))
                .map_err(|_| anyhow!("the Inception stage stopped"))?;
            waited += t.elapsed().as_secs_f64();
            images += m;
            Ok(())
        });
        let sampling_end = start.elapsed().as_secs_f64();
        drop(tx);
        // The Inception stage's own error explains a failed send, so it is reported first.
        let (stats, inception_s) = inception
            .join()
            .map_err(|_| anyhow!("the Inception stage panicked"))??;
        sampled?;
        Ok((
            stats,
            PipelineTimes {
                images,
                wall_s: start.elapsed().as_secs_f64(),
                sampling_s: sampling_end - waited,
                inception_s,
            },
        ))
    })
}
