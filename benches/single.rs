//! One call at a time from an outside thread: submit → `wait()` → submit again, each call
//! run on a lane (not inline), against the best peers in the same process:
//!
//! * `crossbeam_ping_pong`: a request over a crossbeam channel to a thread parked in
//!   `recv`, and the reply back (the floor for handing work to another thread);
//! * `rayon_spawn_reply`: `rayon::spawn` of a closure that replies on a channel;
//! * `tokengate_submit_wait`: `op.submit(x).wait()` on the default engine (pinned lanes).
//!
//! Run: `cargo bench --workspace --bench single`. Ratios within one run are what count.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tokengate::{Engine, Weight};

fn single_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("single_call");
    group.sample_size(30).measurement_time(Duration::from_secs(3));

    let (to_worker, requests) = crossbeam_channel::bounded::<u64>(1);
    let (to_caller, replies) = crossbeam_channel::bounded::<u64>(1);
    let worker = std::thread::spawn(move || {
        for x in requests {
            if to_caller.send(x + 1).is_err() {
                break;
            }
        }
    });
    group.bench_function("crossbeam_ping_pong", |b| {
        let mut x = 0u64;
        b.iter(|| {
            to_worker.send(x).unwrap();
            x = replies.recv().unwrap();
        })
    });
    drop(to_worker);
    worker.join().unwrap();

    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    group.bench_function("rayon_spawn_reply", |b| {
        let (reply, replies) = crossbeam_channel::bounded::<u64>(1);
        let mut x = 0u64;
        b.iter(|| {
            let reply = reply.clone();
            pool.spawn(move || reply.send(x + 1).unwrap());
            x = replies.recv().unwrap();
        })
    });
    drop(pool);

    let engine = Engine::builder().build().unwrap();
    let inc = engine.register("inc", Weight::Light, |x: u64| x + 1).unwrap();
    group.bench_function("tokengate_submit_wait", |b| {
        let mut x = 0u64;
        b.iter(|| x = inc.submit(x).wait().unwrap())
    });
    let lanes: u64 = engine.stats().lanes.iter().map(|l| l.tokens).sum();
    assert_eq!(lanes, inc.stats().completed, "every call ran on a lane");
    group.finish();
}

criterion_group!(benches, single_call);
criterion_main!(benches);
