//! Cost features end to end: an operation whose cost follows a property of its argument
//! and not its size logs that property → the trainer fits on it and reports that it
//! earned its keep → the learned router places calls by it. A model whose features do
//! not match the registered operation's does not place it.

use std::time::{Duration, Instant};

use tokengate::router::{RouteSource, StaticRouter};
use tokengate::{Engine, LaneSet, Operation, RegisterError, Weight};
use trainer::{dataset, fit};

/// (size, slow): the size says nothing; a slow call spins 400 µs, a fast one does not.
type Arg = (u64, bool);

fn scan(arg: Arg) -> u64 {
    let (size, slow) = arg;
    if slow {
        let start = Instant::now();
        while start.elapsed() < Duration::from_micros(400) {
            std::hint::spin_loop();
        }
    }
    size.wrapping_mul(31)
}

fn register(engine: &Engine, features: bool) -> Operation<Arg, u64> {
    let builder = engine.operation::<Arg>("scan", Weight::Light).size_hint(|&(size, _)| size);
    let builder = if features {
        builder.cost_features(["slow"], |&(_, slow)| [f64::from(u8::from(slow))])
    } else {
        builder
    };
    builder.register(scan).unwrap()
}

/// A seeded stream: sizes spread over two decades, a third of the calls slow, the
/// slow ones no larger than the fast ones.
fn stream(calls: u64, seed: u64) -> Vec<Arg> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..calls)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (100 + state % 10_000, state.is_multiple_of(3))
        })
        .collect()
}

fn run(op: &Operation<Arg, u64>, args: &[Arg]) {
    for token in op.submit_many(args.iter().copied()) {
        token.wait().unwrap();
    }
}

#[test]
fn a_cost_feature_is_logged_fitted_reported_and_routed_by() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");

    // 1. Log a run, routed by the tag.
    let engine = Engine::builder()
        .workers(2)
        .pin(false)
        .router(std::sync::Arc::new(StaticRouter::new(16)))
        .log_dir(&logs)
        .build()
        .unwrap();
    let logged = stream(1_500, 1);
    run(&register(&engine, true), &logged);
    engine.shutdown();

    // 2. The logs name the feature; the fit splits on it and says so.
    let files = dataset::collect_files(&[logs.display().to_string()]).unwrap();
    let data = dataset::load(&files, |_| {}).unwrap();
    assert_eq!(data.ops, ["scan"]);
    assert_eq!(data.op_features, [vec!["slow".to_string()]]);
    let slow = logged.iter().filter(|a| a.1).count();
    assert_eq!(data.rows.iter().filter(|r| r.cost[0] == 1.0).count(), slow);
    let fitted = fit::fit(&data, &fit::FitOptions::default()).unwrap();
    assert_eq!(fitted.header.op_features, [vec!["slow".to_string()]]);
    assert!(fitted.metrics.accuracy > 0.9, "held-out accuracy {}", fitted.metrics.accuracy);
    let (op, inputs) = &fitted.metrics.importance[0];
    assert_eq!(op, "scan");
    let share = |name: &str| inputs.iter().find(|(n, _)| n == name).map_or(0.0, |(_, s)| *s);
    assert!(share("slow") > 0.8, "the feature earned its keep: {inputs:?}");
    let model = dir.path().join("model.bin");
    std::fs::write(&model, &fitted.bytes).unwrap();

    // 3. The learned router computes the feature at submit and places by it.
    let learned = Engine::builder().workers(2).pin(false).model(&model).log_in_memory();
    let engine = learned.build().unwrap();
    let args = stream(300, 2);
    run(&register(&engine, true), &args);
    engine.shutdown();
    let records = engine.take_records();
    assert_eq!(records.len(), 300);
    assert!(records.iter().all(|r| r.route_source == RouteSource::Model));
    let slow: Vec<_> = records.iter().filter(|r| r.cost[0] == 1.0).collect();
    let fast: Vec<_> = records.iter().filter(|r| r.cost[0] == 0.0).collect();
    assert_eq!(slow.len(), args.iter().filter(|a| a.1).count());
    let heavy = |rs: &[&tokengate::telemetry::TokenRecord]| {
        rs.iter().filter(|r| r.lane_set == LaneSet::Heavy).count() as f64 / rs.len() as f64
    };
    assert!(heavy(&slow) > 0.9, "slow calls placed heavy: {}", heavy(&slow));
    assert!(heavy(&fast) < 0.1, "fast calls placed light: {}", heavy(&fast));

    // 4. The same model, the operation registered without the feature: the model does
    //    not place it (the running averages do).
    let engine = Engine::builder().workers(2).pin(false).model(&model).log_in_memory().build();
    let engine = engine.unwrap();
    run(&register(&engine, false), &stream(50, 3));
    engine.shutdown();
    let records = engine.take_records();
    assert_eq!(records.len(), 50);
    assert!(records.iter().all(|r| r.route_source != RouteSource::Model));
}

#[test]
fn bad_cost_feature_names_fail_registration_with_the_reason() {
    let engine = Engine::builder().workers(1).pin(false).build().unwrap();
    let bad = engine
        .operation::<u64>("bad", Weight::Light)
        .cost_features(["a b"], |&x| [x as f64])
        .register(|x| x)
        .unwrap_err();
    assert!(matches!(&bad, RegisterError::BadCostFeatures(m) if m.contains("\"a b\"")), "{bad}");
    let twice = engine
        .operation::<u64>("twice", Weight::Light)
        .cost_features(["n", "n"], |&x| [x as f64, 1.0])
        .register(|x| x)
        .unwrap_err();
    assert!(twice.to_string().contains("repeat"), "{twice}");
    // A failed registration claims no name.
    assert!(engine.operation::<u64>("bad", Weight::Light).register(|x| x).is_ok());
}
