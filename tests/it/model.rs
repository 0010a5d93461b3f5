//! The model file and the trainer's refusals: every bad input is a clear error.

use std::fs::File;

use polars::prelude::*;
use tokengate::features::{model_inputs, OpFeatures, MODEL_FEATURES, NO_COST};
use tokengate::model::{self, Model, ModelError};
use tokengate::router::RouteSource;
use tokengate::telemetry::{records_to_frame, Origin, RecordOutcome, TokenRecord};
use tokengate::{Engine, LaneSet, Weight};
use trainer::dataset::{self, Data, Row};
use trainer::{fit, TrainError};

/// Two operations whose runtime grows with size, across the 10 µs and 200 µs edges.
fn synthetic() -> Data {
    let mut rows = Vec::new();
    for i in 0..3_000u64 {
        let size = 1 + (i * 7919) % 100_000;
        let run_ns = size * (3 + 5 * (i % 2));
        rows.push(Row { op: (i % 2) as u32, arg_size: size, cost: NO_COST, run_ns });
    }
    Data { ops: vec!["a".into(), "b".into()], rows, ..Data::default() }
}

#[test]
fn the_flat_tree_predicts_exactly_what_linfa_predicts() {
    let fitted = fit::fit(&synthetic(), &fit::FitOptions::default()).unwrap();
    assert_eq!(fitted.flat_mismatches, 0);
    assert!(fitted.metrics.accuracy > 0.95, "{}", fitted.metrics);
    let (header, tree) = model::linfa::decode(&fitted.bytes).unwrap();
    let compiled = Model::from_bytes(&fitted.bytes).unwrap();
    assert_eq!(header.ops, vec!["a", "b"]);
    assert_eq!(header.feature_names, MODEL_FEATURES);
    // On a grid of inputs that includes every split threshold's neighbourhood.
    let mut inputs = Vec::new();
    for op in 0..2u32 {
        for size in (0..200_000u64).step_by(97) {
            inputs.push(model_inputs(op, size, &NO_COST));
        }
    }
    let x = ndarray::Array2::from_shape_fn((inputs.len(), 2), |(r, c)| inputs[r][c]);
    use linfa::prelude::Predict;
    let linfa: ndarray::Array1<usize> = tree.predict(&x);
    for (row, expected) in inputs.iter().zip(linfa.iter()) {
        assert_eq!(compiled.predict(row), *expected, "input {row:?}");
    }
    // Placements follow the class table: the slowest class goes heavy.
    let slow = compiled.predict(&model_inputs(1, 150_000, &NO_COST));
    assert_eq!(header.classes[slow].lanes, LaneSet::Heavy);
}

#[test]
fn bad_model_files_are_refused_with_the_reason() {
    let bytes = fit::fit(&synthetic(), &fit::FitOptions::default()).unwrap().bytes;
    assert!(matches!(Model::from_bytes(b"nope"), Err(ModelError::NotAModel)));
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'X';
    assert!(matches!(Model::from_bytes(&wrong_magic), Err(ModelError::NotAModel)));
    let mut future_format = bytes.clone();
    future_format[8] = 99;
    assert!(matches!(
        Model::from_bytes(&future_format),
        Err(ModelError::UnsupportedFormat { found: 99 })
    ));
    let mut other_schema = bytes.clone();
    other_schema[10] = 77;
    let err = Model::from_bytes(&other_schema).unwrap_err();
    assert!(matches!(err, ModelError::FeatureSchema { found: 77, .. }));
    assert!(err.to_string().contains("trainer fit"));
    for cut in [20, bytes.len() / 2, bytes.len() - 1] {
        let err = Model::from_bytes(&bytes[..cut]).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt(_)), "cut at {cut}: {err}");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(Model::from_bytes(&trailing), Err(ModelError::Corrupt(_))));

    // An explicitly requested model that is bad stops the engine from starting.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.bin");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Engine::builder().model(&path).build().unwrap_err().to_string();
    assert!(err.contains("broken.bin") && err.contains("corrupt"), "{err}");
    let missing = Engine::builder().model(dir.path().join("missing.bin")).build().unwrap_err();
    assert!(missing.to_string().contains("missing.bin"));
}

fn record(op: u32, arg_size: u64, run_ns: u64) -> TokenRecord {
    TokenRecord {
        token_id: u64::from(op) << 32 | arg_size,
        op,
        declared: Weight::Light,
        route_source: RouteSource::Tag,
        lane_set: LaneSet::Light,
        predicted_class: None,
        model_version: 0,
        lane: 0,
        core: -1,
        batch_id: 1,
        batch_size: 1,
        arg_size,
        queue_depth: 0,
        lane_load: 0,
        op_recent_ns: 0,
        queue_wait_ns: 0,
        run_ns,
        end_to_end_ns: run_ns,
        outcome: RecordOutcome::Completed,
        attempt: 1,
        cost: NO_COST,
    }
}

fn write(path: &std::path::Path, frame: &mut DataFrame) {
    ParquetWriter::new(File::create(path).unwrap()).finish(frame).unwrap();
}

#[test]
fn trainer_refuses_bad_data_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec![OpFeatures::named("op")];
    let inputs = |p: &std::path::Path| vec![p.display().to_string()];

    // No files.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = dataset::collect_files(&inputs(&empty)).unwrap_err();
    assert!(matches!(err, TrainError::NoFiles(_)));
    assert!(err.to_string().contains("no Parquet files"));

    // A corrupt file.
    let corrupt = dir.path().join("corrupt.parquet");
    std::fs::write(&corrupt, b"PAR1 this is not parquet").unwrap();
    let err = dataset::load(std::slice::from_ref(&corrupt), |_| {}).unwrap_err();
    assert!(matches!(err, TrainError::Unreadable { .. }), "{err}");
    assert!(err.to_string().contains("corrupt.parquet"));

    // A wrong schema version, and a missing column.
    let records: Vec<_> = (1..200).map(|i| record(0, i, i * 100)).collect();
    let mut frame = records_to_frame(7, &records, &names, 1, &Origin::here()).unwrap();
    let versions = Column::new("schema_version".into(), vec![99u32; frame.height()]);
    frame.with_column(versions).unwrap();
    let future = dir.path().join("future.parquet");
    write(&future, &mut frame);
    let err = dataset::load(&[future], |_| {}).unwrap_err();
    assert!(err.to_string().contains("schema v99"), "{err}");
    let mut frame = records_to_frame(7, &records, &names, 1, &Origin::here()).unwrap();
    let _ = frame.drop_in_place("run_ns").unwrap();
    let partial = dir.path().join("partial.parquet");
    write(&partial, &mut frame);
    let err = dataset::load(&[partial], |_| {}).unwrap_err();
    assert!(err.to_string().contains("missing column \"run_ns\""), "{err}");

    // Too few rows, then a single class.
    let few: Vec<_> = (1..20).map(|i| record(0, i, i * 1_000)).collect();
    let mut frame = records_to_frame(7, &few, &names, 1, &Origin::here()).unwrap();
    let few_path = dir.path().join("few.parquet");
    write(&few_path, &mut frame);
    let data = dataset::load(&[few_path], |_| {}).unwrap();
    let err = fit::fit(&data, &fit::FitOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::TooFewRows { rows: 19, needed: 100 }), "{err}");
    let same: Vec<_> = (1..500).map(|i| record(0, i, 500)).collect();
    let mut frame = records_to_frame(7, &same, &names, 1, &Origin::here()).unwrap();
    let same_path = dir.path().join("same.parquet");
    write(&same_path, &mut frame);
    let data = dataset::load(&[same_path], |_| {}).unwrap();
    let err = fit::fit(&data, &fit::FitOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::SingleClass { class: 0, .. }), "{err}");
    assert!(err.to_string().contains("at least two classes"));

    // Bad options.
    let options = fit::FitOptions { max_depth: 0, ..Default::default() };
    assert!(fit::fit(&synthetic(), &options).unwrap_err().to_string().contains("max depth"));
    let options = fit::FitOptions { edges_ns: Some(vec![5, 5]), ..Default::default() };
    assert!(fit::fit(&synthetic(), &options).unwrap_err().to_string().contains("edges"));
}
