//! Counting the multiply-adds that the ops of a forward pass perform, to check analytic
//! FLOP counts against what actually runs.
//!
//! Counting is per thread and off unless [`count_macs`] turns it on: the ops record into a
//! thread-local counter at their entry (on the calling thread, whatever threads they then
//! use), so concurrent tests do not see each other's counts.

use std::cell::Cell;

thread_local! {
    static COUNTER: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f` with counting on for this thread and returns its result with the number of
/// multiply-adds the counted ops recorded meanwhile. Nested calls count into their own
/// total only.
pub fn count_macs<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let outer = COUNTER.with(|c| c.replace(Some(0)));
    let r = f();
    let counted = COUNTER.with(|c| c.replace(outer)).unwrap_or(0);
    (r, counted)
}

/// Records `n` multiply-adds, if counting is on for this thread.
pub fn record_macs(n: u64) {
    COUNTER.with(|c| {
        if let Some(v) = c.get() {
            c.set(Some(v + n));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_inside_and_per_thread() {
        record_macs(5);
        let ((), n) = count_macs(|| {
            record_macs(3);
            std::thread::spawn(|| record_macs(100)).join().unwrap();
            let ((), inner) = count_macs(|| record_macs(7));
            assert_eq!(inner, 7);
            record_macs(4);
        });
        assert_eq!(n, 7);
    }
}
