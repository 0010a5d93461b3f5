//! The learning loop from code: run a workload that logs Parquet telemetry, fit a cost
//! model on it with the trainer's library, and run again routed by that model. The
//! operation declares a cost feature: whether its text has non-ASCII bytes, which its
//! length does not tell (the slow path of a Unicode-aware scan).
//!
//! `cargo run --release --example learning_loop`

use std::time::{Duration, Instant};

use tokengate::router::{RouteSource, StaticRouter};
use tokengate::{Engine, LaneSet, Operation, Weight};
use trainer::{dataset, fit};

/// A call's argument: its text, and whether it is the slow kind.
type Doc = (String, bool);

fn scan((text, slow): Doc) -> usize {
    // Stands for real work whose cost follows the content: 300 µs for the slow kind.
    let until = Instant::now() + Duration::from_micros(if slow { 300 } else { 2 });
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    text.len()
}

fn register(engine: &Engine) -> Result<Operation<Doc, usize>, tokengate::RegisterError> {
    engine
        .operation::<Doc>("scan", Weight::Light) // declared light: wrong for the slow kind
        .size_hint(|(text, _)| text.len() as u64)
        .cost_features(["non_ascii"], |(text, _)| [f64::from(u8::from(!text.is_ascii()))])
        .register(scan)
}

fn docs(n: usize) -> Vec<Doc> {
    (0..n)
        .map(|i| {
            let slow = i % 5 == 0;
            let text = if slow { "naïve ".repeat(1 + i % 7) } else { "plain ".repeat(1 + i % 7) };
            (text, slow)
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let logs = std::env::temp_dir().join(format!("tokengate-example-{}", std::process::id()));

    // 1. Collect: route by the tags, log every call.
    let tags = std::sync::Arc::new(StaticRouter::new(64));
    let engine = Engine::builder().router(tags).log_dir(&logs).build()?;
    let op = register(&engine)?;
    for token in op.submit_many(docs(2_000)) {
        token.wait()?;
    }
    engine.shutdown();

    // 2. Fit, as `tokengate trainer fit --data DIR --out FILE` does.
    let files = dataset::collect_files(&[logs.display().to_string()])?;
    let data = dataset::load(&files, |_| {})?;
    let fitted = fit::fit(&data, &fit::FitOptions::default())?;
    println!("{}", fitted.metrics);
    let model = logs.join("model.bin");
    std::fs::write(&model, &fitted.bytes)?;

    // 3. Route by the model: the slow kind goes to the heavy lanes.
    let engine = Engine::builder().model(&model).log_in_memory().build()?;
    let op = register(&engine)?;
    for token in op.submit_many(docs(500)) {
        token.wait()?;
    }
    engine.shutdown();
    let records = engine.take_records();
    let heavy = |slow: bool| {
        let rows: Vec<_> = records.iter().filter(|r| (r.cost[0] == 1.0) == slow).collect();
        let placed = rows.iter().filter(|r| r.lane_set == LaneSet::Heavy).count();
        format!("{placed} of {}", rows.len())
    };
    println!("placed heavy by the model: slow kind {}, fast kind {}", heavy(true), heavy(false));
    assert!(records.iter().all(|r| r.route_source == RouteSource::Model));
    std::fs::remove_dir_all(&logs)?;
    Ok(())
}
