//! A global allocator that refuses oversized requests, so a reader that trusts a declared
//! size is caught even where the kernel would overcommit and let `vec![0; huge]` succeed.
//!
//! The fuzz inputs are at most a megabyte, so no honest read of one needs more than a few
//! megabytes; the caps below are far above that and far below what would disturb the other
//! processes of a shared machine. A refused request makes Rust's allocation-error handler
//! abort the process, which the supervisor reports as a finding with the input it was on.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static MAX_LIVE_BYTES: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Sets the most bytes the process may hold at once (default: unlimited).
pub fn set_limit(bytes: usize) {
    MAX_LIVE_BYTES.store(bytes, Ordering::Relaxed);
}

/// Bytes currently allocated through [`CappedAllocator`].
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// The system allocator with a cap on live bytes (see [`set_limit`]).
pub struct CappedAllocator;

impl CappedAllocator {
    /// Accounts `size` new bytes; false (and nothing accounted) when that would pass the cap.
    fn reserve(size: usize) -> bool {
        let limit = MAX_LIVE_BYTES.load(Ordering::Relaxed);
        let before = LIVE_BYTES.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > limit {
            LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

// SAFETY: every method forwards to `System` with the caller's layout unchanged; the counter
// only decides whether to forward at all, and a refusal is a null pointer, which the
// `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Self::reserve(new_size - old) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > old {
                LIVE_BYTES.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            LIVE_BYTES.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}
