//! Online adaptation's re-fit: the trainer's tree fit (`trainer::adapt::TreeRefit`, the
//! one the engine's background thread runs) on windows of 10,000 rows (what the engine
//! fits by default: its window sampled evenly) and 200,000 rows. The fit is
//! single-threaded, so its wall time here is the CPU time it takes from the machine.
//!
//! Rows are synthetic but shaped like the `mixed` workload's: six operations, argument
//! sizes spread over five orders of magnitude, run times from 1 µs to 5 ms that depend
//! on the operation and the size, with noise.
//!
//! Run: `cargo bench --workspace --bench refit`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tokengate::adapt::{Refit, Sample};
use tokengate::features::{OpFeatures, NO_COST};
use tokengate::Weight;
use trainer::adapt::TreeRefit;

/// A splitmix64 stream: reproducible rows without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn samples(rows: usize) -> Vec<Sample> {
    let mut rng = Rng(7);
    (0..rows)
        .map(|_| {
            let op = (rng.next() % 6) as u32;
            let arg_size = 10f64.powf(1.0 + 5.0 * rng.unit()) as u64;
            // ns per byte differs by operation; noise ±25%.
            let per_byte = [0.5, 2.0, 8.0, 0.1, 20.0, 1.0][op as usize];
            let noise = 0.75 + 0.5 * rng.unit();
            let run_ns = (1_000.0 + per_byte * arg_size as f64 * noise).min(5e6) as u64;
            Sample { op, arg_size, cost: NO_COST, run_ns, declared: Weight::Light }
        })
        .collect()
}

fn refit(c: &mut Criterion) {
    let ops: Vec<OpFeatures> =
        ["primes", "sort", "text", "hash", "pi_term", "pi_chunk"].map(OpFeatures::named).to_vec();
    let refit = TreeRefit::default();
    let mut group = c.benchmark_group("refit");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for rows in [10_000, 200_000] {
        let samples = samples(rows);
        // The fit must produce a usable model, not just return.
        let model = refit.refit(&ops, &samples).expect("a model");
        assert!(model.header().classes.len() >= 2);
        group.bench_with_input(BenchmarkId::new("tree_fit_rows", rows), &samples, |b, s| {
            b.iter(|| refit.refit(&ops, s).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, refit);
criterion_main!(benches);
