//! The learning loop end to end: a workload logs Parquet → the trainer fits a model on
//! those files → the engine loads it and places mislabelled heavy work on the heavy
//! lane, which the tag router does not.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use polars::prelude::{ParquetReader, SerReader};
use tokengate::adapt::Adaptation;
use tokengate::router::RouteSource;
use tokengate::router::{AdaptiveRouter, StaticRouter};
use tokengate::telemetry::{TokenRecord, COLUMNS};
use tokengate::{Engine, EngineBuilder, LaneSet, Weight};
use tokengate_workloads::mixed::{self, MixedConfig, MixedOps};
use trainer::{dataset, fit};

/// Runs a mislabelled stream and returns the records with each token's (truth, tag).
fn run_stream(
    builder: EngineBuilder,
    seed: u64,
) -> (Engine, Vec<TokenRecord>, HashMap<u64, (Weight, Weight)>) {
    let config =
        MixedConfig { tokens: 3_000, seed, mislabel_share: 0.25, rate: 50_000.0, drift_at: None };
    let plan = mixed::plan(&config);
    let engine = builder.build().expect("engine");
    let ops = MixedOps::register(&engine).unwrap();
    let run = mixed::drive(&ops, &plan, config.rate, None);
    assert_eq!(run.failures, 0);
    engine.shutdown();
    let records = engine.take_records();
    let tags = run.truths.iter().zip(&run.declared).map(|(&(id, truth), &tag)| (id, (truth, tag)));
    (engine, records, tags.collect())
}

#[test]
fn logged_runs_train_a_model_that_routes_mislabelled_heavy_work_to_the_heavy_lane() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");

    // 1. Collect data with the tag router, logging every token to Parquet.
    let tag_router = || std::sync::Arc::new(tokengate::router::StaticRouter::new(128));
    let builder =
        Engine::builder().pin(false).workers(2).router(tag_router()).log_dir(&logs).log_in_memory();
    let (engine, records, _) = run_stream(builder, 1);
    let stats = engine.stats().telemetry.unwrap();
    assert_eq!((stats.recorded, stats.dropped), (3_000, 0));
    assert_eq!(stats.written, 3_000);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(records.len(), 3_000);

    // Every segment is a complete Parquet file with the documented columns.
    let mut rows = 0;
    for path in &stats.files {
        let frame = ParquetReader::new(File::open(path).unwrap()).finish().unwrap();
        let names: Vec<String> = frame.get_column_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, COLUMNS);
        rows += frame.height();
    }
    assert_eq!(rows, 3_000);

    // 2. Fit on those files, as `trainer fit --data DIR` does.
    let files = dataset::collect_files(&[logs.display().to_string()]).unwrap();
    let data = dataset::load(&files, |_| {}).unwrap();
    assert_eq!(data.rows.len(), 3_000);
    let fitted = fit::fit(&data, &fit::FitOptions::default()).unwrap();
    assert_eq!(fitted.flat_mismatches, 0, "flat tree and linfa agree");
    // Labels are measured run times: when other tests load the 2 cores, some shift a
    // class; the routing below is the behaviour that must hold.
    assert!(fitted.metrics.accuracy > 0.8, "held-out accuracy {}", fitted.metrics.accuracy);
    let model = dir.path().join("model.bin");
    std::fs::write(&model, &fitted.bytes).unwrap();

    // 3. Run a new stream (another seed) under the learned and the tag router. Heavy
    //    lanes are isolated so "ran on the heavy lane" follows from placement alone.
    let learned = Engine::builder().pin(false).workers(2).isolate_heavy(true).model(&model);
    let tags = Engine::builder().pin(false).workers(2).isolate_heavy(true).router(tag_router());
    let (learned_engine, learned_records, truths) = run_stream(learned.log_in_memory(), 2);
    let (tags_engine, tags_records, _) = run_stream(tags.log_in_memory(), 2);
    assert_ne!(learned_engine.stats().model_version, 0);
    assert_eq!(tags_engine.stats().model_version, 0);

    let heavy_lanes: Vec<usize> = learned_engine
        .lanes()
        .iter()
        .filter(|l| l.set == LaneSet::Heavy)
        .map(|l| l.index)
        .collect();
    let mislabelled_heavy = |records: &[TokenRecord]| -> Vec<TokenRecord> {
        records
            .iter()
            .filter(|r| truths.get(&r.token_id) == Some(&(Weight::Heavy, Weight::Light)))
            .copied()
            .collect()
    };
    let learned_heavy = mislabelled_heavy(&learned_records);
    let tags_heavy = mislabelled_heavy(&tags_records);
    assert!(learned_heavy.len() >= 10, "the stream has mislabelled heavy tokens");
    assert_eq!(learned_heavy.len(), tags_heavy.len());

    let share = |records: &[TokenRecord], pred: &dyn Fn(&TokenRecord) -> bool| {
        records.iter().filter(|r| pred(r)).count() as f64 / records.len() as f64
    };
    let placed_heavy = |r: &TokenRecord| r.lane_set == LaneSet::Heavy;
    let ran_heavy = |r: &TokenRecord| heavy_lanes.contains(&usize::from(r.lane));
    // Runtimes in a shared test process are noisy, so the model that learned them is
    // not perfect; the tag router, by construction, gets none of these right.
    let placed = share(&learned_heavy, &placed_heavy);
    assert!(placed >= 0.8, "learned router places them heavy: {placed}");
    let ran = share(&learned_heavy, &ran_heavy);
    assert!(ran >= 0.8, "and they run on a heavy lane: {ran}");
    assert!(learned_heavy.iter().all(|r| r.route_source == RouteSource::Model));
    assert_eq!(share(&tags_heavy, &placed_heavy), 0.0, "the tag router believes the tag");
    assert!(tags_heavy.iter().all(|r| r.route_source == RouteSource::Tag));
    assert!(share(&tags_heavy, &ran_heavy) < 0.5, "so they mostly run among light work");
}

#[test]
fn logging_accounts_for_every_token_written_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder().log_dir(dir.path()).build().unwrap();
    let pyramid = tokengate_workloads::leibniz::Pyramid::register(&engine).unwrap();
    let outcome = pyramid.run(&engine, 200_000, |_| {}).unwrap();
    engine.shutdown();
    let stats = engine.stats().telemetry.unwrap();
    // Workers never wait for the writer: whatever it could not take is counted, not lost.
    assert_eq!(stats.recorded + stats.dropped, outcome.tokens);
    assert_eq!(stats.written, stats.recorded);
    let on_disk: usize = stats
        .files
        .iter()
        .map(|p| ParquetReader::new(File::open(p).unwrap()).finish().unwrap().height())
        .sum();
    assert_eq!(on_disk as u64, stats.written);
    // No half-written segment is left behind.
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);
}

/// An unpinned engine, logging in memory, adapting the shipped model with the
/// trainer's re-fit as `tune` sets it.
fn adaptive_engine(tune: impl FnOnce(Adaptation) -> Adaptation) -> Engine {
    let model =
        tokengate::model::Model::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.bin"))
            .unwrap();
    let router = Arc::new(AdaptiveRouter::new(model, StaticRouter::new(128)));
    let adaptation = Adaptation::new(router, Arc::new(trainer::adapt::TreeRefit::default()));
    Engine::builder().pin(false).adapt(tune(adaptation)).log_in_memory().build().unwrap()
}

/// Online adaptation: an operation the starting model has never seen, whose cost
/// follows its size, is learned from the engine's own telemetry and a model that knows
/// it is swapped in (version raised, reported by the controller).
#[test]
fn adaptation_learns_an_unseen_operation_and_swaps_its_model_in() {
    let engine = adaptive_engine(|adaptation| {
        adaptation.every(Duration::from_millis(50)).horizon(Duration::from_secs(30))
    });
    let spin = engine
        .operation("spin_unseen", Weight::Medium)
        .size_hint(|micros: &u64| *micros)
        .register(|micros: u64| crate::spin_for(Duration::from_micros(micros)))
        .unwrap();
    let version = engine.stats().model_version;
    assert_eq!(engine.stats().adaptation.unwrap().swaps, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.stats().adaptation.unwrap().swaps == 0 {
        assert!(std::time::Instant::now() < deadline, "no swap: {:?}", engine.stats().adaptation);
        let sizes = (0..200u64).map(|i| if i % 4 == 0 { 400 } else { 1 });
        spin.submit_many(sizes).into_iter().for_each(|t| t.wait().unwrap());
    }
    let status = engine.controller().model_status();
    assert!(status.enabled && status.swaps >= 1 && status.rows_seen > 0, "{status:?}");
    assert_ne!(engine.stats().model_version, version, "a swap raises the model version");
    // From now on the model places the operation itself.
    spin.submit(1).wait().unwrap();
    engine.shutdown();
    let last = engine.take_records().into_iter().max_by_key(|r| r.token_id).unwrap();
    assert_eq!(last.route_source, RouteSource::Model);
    assert_eq!(last.model_version, engine.stats().model_version);
}

/// The cost watch: calls of a size the model places on the light lanes start running
/// as long as heavy work; within a few calls, and before any re-fit, that size goes to
/// the heavy lanes, and other sizes stay where they were.
#[test]
fn the_cost_watch_moves_sizes_whose_calls_turned_heavy_before_any_refit() {
    // No re-fit within the test: only the watch moves anything.
    let engine = adaptive_engine(|adaptation| adaptation.every(Duration::from_secs(3_600)));
    // The shipped model places `sort` of sizes below 4,025 on the light lanes.
    let sort = engine
        .operation("sort", Weight::Light)
        .size_hint(|n: &u64| *n)
        .register(|n: u64| {
            if n == 300 {
                crate::spin_for(Duration::from_millis(1));
            }
            n
        })
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.stats().adaptation.unwrap().cells_moved == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing moved: {:?}",
            engine.stats().adaptation
        );
        assert_eq!(sort.submit(300).wait().unwrap(), 300);
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = engine.controller().model_status();
    assert_eq!((status.swaps, status.cells_moved), (0, 1), "{status:?}");
    assert!(status.cell_moves >= 1, "{status:?}");
    let [moved, kept] = [300, 100].map(|size| {
        let token = sort.submit(size);
        let id = token.id();
        assert_eq!(token.wait().unwrap(), size);
        id
    });
    engine.shutdown();
    let records = engine.take_records();
    let record = |id| records.iter().find(|r| r.token_id == id).unwrap();
    let first = records.iter().min_by_key(|r| r.token_id).unwrap();
    assert_eq!((first.arg_size, first.lane_set), (300, LaneSet::Light));
    assert_eq!(
        (record(moved).lane_set, record(moved).route_source),
        (LaneSet::Heavy, RouteSource::Model)
    );
    assert_eq!(record(kept).lane_set, LaneSet::Light);
}
