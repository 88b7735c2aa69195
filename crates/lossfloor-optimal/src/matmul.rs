//! Single-threaded f32 matrix products on the `gemm` crate (AVX-512 kernels enabled by the
//! workspace's `x86-v4` feature). The estimators parallelise over query tiles instead, so
//! each product runs on one core with its operands hot in that core's cache.

/// A read-only matrix view: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols);
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
        }
    }
}

/// C = A·B (`accumulate == false`) or C += A·B, with C row-major `a.rows × b.cols`.
pub fn matmul(a: View, b: View, c: &mut [f32], accumulate: bool) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(c.len() >= m * n, "matmul: output too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    assert!(
        a.max_index() < a.data.len() && b.max_index() < b.data.len(),
        "matmul: view out of bounds"
    );
    // SAFETY: every index the product touches is inside the slices (checked above); the
    // output does not alias the inputs (it is a distinct &mut borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive_f64() {
        let (m, k, n) = (7, 13, 5);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.25)
            .collect();
        let b: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.5)
            .collect();
        let mut c = vec![1.0f32; m * n];
        // B given as n×k row-major, used transposed.
        matmul(
            View::row_major(&a, m, k),
            View::row_major(&b, n, k).t(),
            &mut c,
            true,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f64 = 1.0
                    + (0..k)
                        .map(|l| a[i * k + l] as f64 * b[j * k + l] as f64)
                        .sum::<f64>();
                assert!(
                    (c[i * n + j] as f64 - want).abs() < 1e-4,
                    "({i},{j}) {} vs {want}",
                    c[i * n + j]
                );
            }
        }
    }
}
