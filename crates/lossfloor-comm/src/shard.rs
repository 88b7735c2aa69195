//! How work is split across ranks and put back together in one order.

use anyhow::{bail, Result};

use crate::Communicator;

/// Rank `rank`'s share of `total` work items when `size` ranks split them into contiguous
/// runs: the first `total mod size` ranks take ⌈total/size⌉ items, the rest ⌊total/size⌋.
pub fn contiguous_share(total: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let base = total / size;
    let extra = total % size;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

/// Every rank's blocks (`local`, this rank's contiguous share of `total` blocks of
/// `block_len(i)` values each) in block order, on every rank: the per-block results of one
/// process, whatever the number of ranks.
pub fn gather_in_rank_order(
    comm: &dyn Communicator,
    local: &[Vec<f64>],
    total: usize,
    block_len: impl Fn(usize) -> usize,
) -> Result<Vec<Vec<f64>>> {
    let flat: Vec<f64> = local.iter().flatten().copied().collect();
    let all = comm.gather_f64(&flat)?;
    let mut out = Vec::with_capacity(total);
    let mut at = 0;
    for i in 0..total {
        let n = block_len(i);
        if at + n > all.len() {
            bail!(
                "gathered {} values from the ranks, fewer than the blocks need",
                all.len()
            );
        }
        out.push(all[at..at + n].to_vec());
        at += n;
    }
    if at != all.len() {
        bail!(
            "gathered {} values from the ranks, {at} expected",
            all.len()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once_in_order() {
        for total in [0, 1, 5, 7, 64, 129] {
            for size in 1..6 {
                let mut next = 0;
                for rank in 0..size {
                    let r = contiguous_share(total, rank, size);
                    assert_eq!(r.start, next);
                    let len = r.len();
                    assert!(len == total / size || len == total.div_ceil(size));
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn one_rank_gets_its_blocks_back() {
        let blocks = vec![vec![1.0, 2.0], vec![3.0], vec![]];
        let lens = [2, 1, 0];
        let out = gather_in_rank_order(&crate::SingleProcess, &blocks, 3, |i| lens[i]).unwrap();
        assert_eq!(out, blocks);
        assert!(gather_in_rank_order(&crate::SingleProcess, &blocks, 3, |_| 2).is_err());
        assert!(gather_in_rank_order(&crate::SingleProcess, &blocks, 2, |_| 1).is_err());
    }
}
