//! Keeping freed memory for reuse, which speeds up candle on the CPU by 1.2–1.7×.
//!
//! Every candle op allocates its output, and the backward pass allocates a zero-filled
//! gradient per input before adding into it. glibc's malloc serves each block of 128 KiB
//! or more with its own `mmap` and gives it back with `munmap` when freed, so every such
//! tensor costs fresh pages: one page fault per 4 KiB and the kernel zeroing them. For a
//! 16 MB activation that is 4096 faults, a few milliseconds: more than the arithmetic of
//! most element-wise ops. With mmap off and trimming raised, freed blocks stay in the heap
//! and the next tensor of the same size reuses pages already mapped.
//!
//! Measured on 2 cores (AMD EPYC, Zen 5), batch 32: DDPM++ forward+backward 28.1 → 17.9 s
//! (the forward alone is unchanged, 7.3 vs 7.2 s); GroupNorm+SiLU 128ch 32×32
//! forward+backward 35.9 → 11.7 ms. The price: memory freed during a run is not returned to
//! the system until the process ends (peak RSS of the DDPM++ benchmark 9.6 → 10.1 GB).

/// Tells glibc's malloc to serve large blocks from the heap (no `mmap`) and to keep freed
/// memory instead of trimming it. Call it first thing in `main`, before threads start.
/// Returns whether the settings took effect (false on non-glibc targets, where this does
/// nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time
        // (it takes the arena locks itself).
        unsafe {
            // Without mmap, a thread arena that cannot fit a block still falls back to mmap,
            // and the main arena to mmap if brk fails, so no allocation fails because of this.
            let no_mmap = libc::mallopt(libc::M_MMAP_MAX, 0) == 1;
            let keep = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1;
            // Grow the heap in 64 MiB steps rather than per allocation.
            let pad = libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1;
            no_mmap && keep && pad
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn settings_take_effect_and_large_blocks_still_allocate() {
        assert!(super::keep_freed_memory());
        // A block far above the old mmap threshold, written, freed and allocated again.
        for _ in 0..3 {
            let v = vec![1u8; 48 << 20];
            assert_eq!(v[v.len() - 1], 1);
        }
    }
}
