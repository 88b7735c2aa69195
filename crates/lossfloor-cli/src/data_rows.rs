//! A loaded dataset seen by the estimators as rows of f32.

use lossfloor_data::Dataset;
use lossfloor_optimal::RowSource;

/// Adapter: [`Dataset`] (which stores u8 images compactly) as a [`RowSource`].
pub struct DataRows<'a>(pub &'a Dataset);

impl RowSource for DataRows<'_> {
    fn num_rows(&self) -> usize {
        self.0.len()
    }
    fn row_dim(&self) -> usize {
        self.0.dim()
    }
    fn rows<'a>(&'a self, start: usize, count: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        self.0.rows(start, count, scratch)
    }
}
