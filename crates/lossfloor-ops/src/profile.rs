//! Wall time per op category, for finding where a forward pass or a sampler spends its time.
//!
//! Off unless the environment variable `LOSSFLOOR_PROFILE` is set (then `lossfloor sample`
//! prints the totals): a disabled [`scope`] costs one relaxed atomic load. Times are summed
//! over all threads, so when images run on several threads at once a category's total can
//! exceed the wall time; compare shares, not absolute sums.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The op categories of issue 19's profile table (the PyTorch side groups aten ops the same
/// way: `scripts/bench_sample_torch.py`'s `category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The convolutions' GEMMs with im2col (bias adds excluded).
    Convolution,
    /// GroupNorm, with or without the fused SiLU.
    GroupNormSilu,
    /// Softmax attention (the qkv / proj 1×1 convolutions count as convolutions).
    Attention,
    /// 2× up / down resampling.
    Resampling,
    /// The noise / class embedding and the per-block affine layers.
    Embedding,
    /// The sampler's own arithmetic (Heun update, c_skip / c_out / c_in scaling, casts).
    Heun,
    /// Everything else that moves memory: bias adds, residual sums, concatenations, copies.
    ElementwiseMemory,
}

impl Category {
    /// Every category, in table order.
    pub const ALL: [Category; 7] = [
        Category::Convolution,
        Category::GroupNormSilu,
        Category::Attention,
        Category::Resampling,
        Category::Embedding,
        Category::Heun,
        Category::ElementwiseMemory,
    ];

    /// The category's name in the profile's JSON (the PyTorch side uses the same names).
    pub fn name(self) -> &'static str {
        match self {
            Category::Convolution => "convolution",
            Category::GroupNormSilu => "groupnorm_silu",
            Category::Attention => "attention",
            Category::Resampling => "resampling",
            Category::Embedding => "embedding",
            Category::Heun => "heun",
            Category::ElementwiseMemory => "elementwise_memory",
        }
    }
}

static TOTALS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static ENABLED: AtomicBool = AtomicBool::new(false);
static INIT: OnceLock<()> = OnceLock::new();

/// Whether profiling is on (`LOSSFLOOR_PROFILE` set, or [`enable`] called).
pub fn enabled() -> bool {
    INIT.get_or_init(|| {
        if std::env::var_os("LOSSFLOOR_PROFILE").is_some() {
            ENABLED.store(true, Ordering::Relaxed);
        }
    });
    ENABLED.load(Ordering::Relaxed)
}

/// Turns profiling on (for tests and benchmarks that do not go through the environment).
pub fn enable() {
    enabled();
    ENABLED.store(true, Ordering::Relaxed);
}

/// Times the rest of the enclosing block into `cat` (when profiling is on).
pub fn scope(cat: Category) -> Scope {
    Scope {
        start: enabled().then(Instant::now),
        cat,
    }
}

/// The guard of [`scope`]: adds its lifetime to its category when dropped.
pub struct Scope {
    start: Option<Instant>,
    cat: Category,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(t) = self.start {
            let i = Category::ALL
                .iter()
                .position(|&c| c == self.cat)
                .unwrap_or(0);
            TOTALS[i].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// The summed milliseconds of every category so far, in [`Category::ALL`] order.
pub fn totals_ms() -> Vec<(&'static str, f64)> {
    Category::ALL
        .iter()
        .zip(&TOTALS)
        .map(|(c, t)| (c.name(), t.load(Ordering::Relaxed) as f64 / 1e6))
        .collect()
}

/// The totals as one JSON object, `{"convolution": ms, ...}`.
pub fn totals_json() -> String {
    let parts: Vec<String> = totals_ms()
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v:.1}"))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_scope_adds_its_time() {
        enable();
        let before = totals_ms()[5].1;
        {
            let _s = scope(Category::Heun);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(totals_ms()[5].1 - before >= 4.0);
    }
}
