//! Per-token routing cost: the learned router (flat-tree walk over the shipped model)
//! against the tag router, in the same process. 1,024 tokens per iteration; divide the
//! time by 1,024 for the per-token figure.
//!
//! Run: `cargo bench --workspace --bench routing`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokengate::model::Model;
use tokengate::router::{Features, LearnedRouter, Router, StaticRouter};
use tokengate::Weight;

fn features() -> Vec<Features> {
    (0..1024u64)
        .map(|i| Features::new((i % 4) as u32, Weight::Light, (i * 7919) % 2_000_000))
        .collect()
}

/// Uses every part of a placement the lanes use, so none of it is optimised away.
fn cost(p: tokengate::router::Placement) -> u64 {
    u64::from(p.batch) + p.predicted_ns + p.lanes as u64
}

fn routing(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.bin");
    let model = Model::load(path).expect("the shipped model");
    let learned = LearnedRouter::new(model.clone(), StaticRouter::new(128));
    for (i, name) in model.header().ops.iter().take(4).enumerate() {
        learned.register_op(i as u32, name, &[]);
    }
    let tags = StaticRouter::new(128);
    let features = features();
    let mut group = c.benchmark_group("route_1024_tokens");
    group.throughput(Throughput::Elements(features.len() as u64));
    group.bench_function("tags", |b| {
        b.iter(|| features.iter().map(|f| cost(tags.route(std::hint::black_box(f)))).sum::<u64>())
    });
    group.bench_function("learned", |b| {
        b.iter(|| {
            features.iter().map(|f| cost(learned.route(std::hint::black_box(f)))).sum::<u64>()
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
