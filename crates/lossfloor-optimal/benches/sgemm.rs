//! The machine's sgemm rate through the same GEMM the estimator uses, at the estimator's
//! benchmark shape (M × D) · (D × N); both cores, median of 5. Prints one line of JSON.
//! Usage: cargo bench -p lossfloor-optimal --bench sgemm -- [M D N]

use std::time::Instant;

use lossfloor_optimal::matmul::View;
use rayon::prelude::*;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (m, d, n) = if args.len() == 3 {
        (args[0], args[1], args[2])
    } else {
        (4096, 784, 60000)
    };
    let a: Vec<f32> = (0..m * d)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let b: Vec<f32> = (0..n * d)
        .map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    // Same parallel split as the estimator: each thread multiplies its own row block.
    let threads = rayon::current_num_threads();
    let rows = m.div_ceil(threads);
    let mut c = vec![0f32; m * n];
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        c.par_chunks_mut(rows * n).enumerate().for_each(|(i, out)| {
            let r = out.len() / n;
            let a_block = &a[i * rows * d..(i * rows + r) * d];
            lossfloor_optimal::matmul::matmul(
                View::row_major(a_block, r, d),
                View::row_major(&b, n, d).t(),
                out,
                false,
            );
        });
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let gflops = 2.0 * (m * n * d) as f64 / times[2] / 1e9;
    println!("{{\"m\": {m}, \"k\": {d}, \"n\": {n}, \"threads\": {threads}, \"median_s\": {:.4}, \"gflops\": {gflops:.1}}}", times[2]);
}
