//! The Leibniz pyramid (N term tasks, chunk sums of 1,000, partials of 100 chunks, a
//! final ×4) run as one task per node through tokengate and, in the same process,
//! through the usual Rust baselines:
//!
//! * `serial`: a plain loop (the floor; no scheduling at all);
//! * `rayon_par_iter`: data-parallel iterators, one level at a time;
//! * `rayon_scope_spawn`: one `rayon::Scope::spawn` per task;
//! * `tokio_spawn`: one `tokio::spawn` per task, collected with a `JoinSet`;
//! * `tokio_spawn_blocking`: one `spawn_blocking` per task (smaller N: it is slow);
//! * `tokengate`: one token per task, through admission, routing, batching and pinned
//!   lanes, every token individually awaitable.
//!
//! Run: `cargo bench --workspace --bench pyramid`. Compare within one run: the machines
//! are shared and noisy, so only the ratios mean anything.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rayon::prelude::*;
use rust_decimal::Decimal;
use tokengate::Engine;
use tokengate_workloads::leibniz::{term, Pyramid, CHUNK_TERMS, PARTIAL_CHUNKS};

const N: u64 = 1_000_000;
const N_BLOCKING: u64 = 100_000;

fn sum(values: &[Decimal]) -> Decimal {
    values.iter().sum()
}

fn serial(n: u64) -> Decimal {
    let terms: Vec<Decimal> = (0..n).map(term).collect();
    let chunks: Vec<Decimal> = terms.chunks(CHUNK_TERMS as usize).map(sum).collect();
    let partials: Vec<Decimal> = chunks.chunks(PARTIAL_CHUNKS).map(sum).collect();
    sum(&partials) * Decimal::from(4)
}

fn rayon_par_iter(n: u64) -> Decimal {
    let terms: Vec<Decimal> = (0..n).into_par_iter().map(term).collect();
    let chunks: Vec<Decimal> = terms.par_chunks(CHUNK_TERMS as usize).map(sum).collect();
    let partials: Vec<Decimal> = chunks.par_chunks(PARTIAL_CHUNKS).map(sum).collect();
    sum(&partials) * Decimal::from(4)
}

fn rayon_scope_spawn(n: u64) -> Decimal {
    let mut terms = vec![Decimal::ZERO; n as usize];
    rayon::scope(|s| {
        for (i, slot) in terms.iter_mut().enumerate() {
            s.spawn(move |_| *slot = term(i as u64));
        }
    });
    let mut chunks = vec![Decimal::ZERO; terms.len().div_ceil(CHUNK_TERMS as usize)];
    rayon::scope(|s| {
        for (slot, part) in chunks.iter_mut().zip(terms.chunks(CHUNK_TERMS as usize)) {
            s.spawn(move |_| *slot = sum(part));
        }
    });
    let mut partials = vec![Decimal::ZERO; chunks.len().div_ceil(PARTIAL_CHUNKS)];
    rayon::scope(|s| {
        for (slot, part) in partials.iter_mut().zip(chunks.chunks(PARTIAL_CHUNKS)) {
            s.spawn(move |_| *slot = sum(part));
        }
    });
    let mut pi = Decimal::ZERO;
    rayon::scope(|s| s.spawn(|_| pi = sum(&partials) * Decimal::from(4)));
    pi
}

/// Runs one task per element of `inputs` with `spawn`, returning results in order.
async fn tokio_level<T, F>(inputs: Vec<T>, blocking: bool, f: F) -> Vec<Decimal>
where
    T: Send + 'static,
    F: Fn(T) -> Decimal + Send + Sync + Copy + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let len = inputs.len();
    for (i, input) in inputs.into_iter().enumerate() {
        if blocking {
            set.spawn_blocking(move || (i, f(input)));
        } else {
            set.spawn(async move { (i, f(input)) });
        }
    }
    let mut out = vec![Decimal::ZERO; len];
    while let Some(joined) = set.join_next().await {
        let (i, value) = joined.expect("task panicked");
        out[i] = value;
    }
    out
}

async fn tokio_pyramid(n: u64, blocking: bool) -> Decimal {
    let terms = tokio_level((0..n).collect(), blocking, term).await;
    let chunk_inputs: Vec<Vec<Decimal>> =
        terms.chunks(CHUNK_TERMS as usize).map(<[Decimal]>::to_vec).collect();
    let chunks = tokio_level(chunk_inputs, blocking, |v: Vec<Decimal>| sum(&v)).await;
    let partial_inputs: Vec<Vec<Decimal>> =
        chunks.chunks(PARTIAL_CHUNKS).map(<[Decimal]>::to_vec).collect();
    let partials = tokio_level(partial_inputs, blocking, |v: Vec<Decimal>| sum(&v)).await;
    tokio_level(vec![partials], blocking, |v: Vec<Decimal>| sum(&v) * Decimal::from(4)).await[0]
}

fn pyramid(c: &mut Criterion) {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).build().unwrap();
    rayon::ThreadPoolBuilder::new().num_threads(workers).build_global().ok();
    let engine = Engine::builder().build().unwrap();
    let pyramid = Pyramid::register(&engine).unwrap();
    let expected = serial(N);
    assert_eq!(rayon_par_iter(N), expected);
    assert_eq!(rayon_scope_spawn(N), expected);
    assert_eq!(runtime.block_on(tokio_pyramid(N, false)), expected);
    assert_eq!(pyramid.run(&engine, N, |_| {}).unwrap().pi, expected);

    let mut group = c.benchmark_group("leibniz_pyramid_1M");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.bench_function("serial", |b| b.iter(|| serial(N)));
    group.bench_function("rayon_par_iter", |b| b.iter(|| rayon_par_iter(N)));
    group.bench_function("rayon_scope_spawn", |b| b.iter(|| rayon_scope_spawn(N)));
    group.bench_function("tokio_spawn", |b| b.iter(|| runtime.block_on(tokio_pyramid(N, false))));
    group.bench_function("tokengate", |b| b.iter(|| pyramid.run(&engine, N, |_| {}).unwrap().pi));
    group.finish();

    let mut group = c.benchmark_group("leibniz_pyramid_100k");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.bench_function(BenchmarkId::new("tokio_spawn_blocking", N_BLOCKING), |b| {
        b.iter(|| runtime.block_on(tokio_pyramid(N_BLOCKING, true)))
    });
    group.bench_function(BenchmarkId::new("tokengate", N_BLOCKING), |b| {
        b.iter(|| pyramid.run(&engine, N_BLOCKING, |_| {}).unwrap().pi)
    });
    group.finish();
}

criterion_group!(benches, pyramid);
criterion_main!(benches);
