//! Parquet segments: the columns and the one function that writes a segment.

use std::path::Path;

use polars::prelude::*;

use super::{Origin, TokenRecord};
use crate::features::OpFeatures;
use crate::features::TELEMETRY_SCHEMA_VERSION;

/// The Parquet columns, in order (see ARCHITECTURE.md "Telemetry").
pub const COLUMNS: [&str; 30] = [
    "schema_version",
    "run_id",
    "token_id",
    "op",
    "declared_weight",
    "route_source",
    "lane_set",
    "predicted_class",
    "model_version",
    "lane",
    "core",
    "batch_id",
    "batch_size",
    "arg_size",
    "queue_depth",
    "lane_load",
    "op_recent_ns",
    "queue_wait_ns",
    "run_ns",
    "end_to_end_ns",
    "outcome",
    "attempt",
    "sample_every",
    "host",
    "worker",
    "cost_names",
    "cost_0",
    "cost_1",
    "cost_2",
    "cost_3",
];

/// Builds the segment's frame from records.
pub fn records_to_frame(
    run_id: u64,
    records: &[TokenRecord],
    op_names: &[OpFeatures],
    sample_every: u64,
    origin: &Origin,
) -> PolarsResult<DataFrame> {
    fn col<T, I>(name: &str, values: I) -> Column
    where
        I: Iterator<Item = T>,
        Series: NamedFrom<Vec<T>, [T]>,
    {
        Column::new(name.into(), values.collect::<Vec<T>>())
    }
    let r = records;
    let op_name = |op: u32| op_names.get(op as usize).map_or("?", |o| o.name.as_str());
    // Per operation: its cost features' names joined by commas (null without any).
    let joined: Vec<Option<String>> =
        op_names.iter().map(|o| (!o.cost.is_empty()).then(|| o.cost.join(","))).collect();
    let has_cost = |op: u32| joined.get(op as usize).is_some_and(Option::is_some);
    let cost = |k: usize| {
        let values: Vec<Option<f64>> =
            r.iter().map(|x| has_cost(x.op).then_some(x.cost[k])).collect();
        Column::new(format!("cost_{k}").into(), values)
    };
    let columns = vec![
        col("schema_version", r.iter().map(|_| TELEMETRY_SCHEMA_VERSION)),
        col("run_id", r.iter().map(|_| run_id)),
        col("token_id", r.iter().map(|x| x.token_id)),
        col("op", r.iter().map(|x| op_name(x.op))),
        col("declared_weight", r.iter().map(|x| x.declared.as_str())),
        col("route_source", r.iter().map(|x| x.route_source.as_str())),
        col("lane_set", r.iter().map(|x| x.lane_set.as_str())),
        col("predicted_class", r.iter().map(|x| x.predicted_class.map_or(-1, i32::from))),
        col("model_version", r.iter().map(|x| x.model_version)),
        col("lane", r.iter().map(|x| u32::from(x.lane))),
        col("core", r.iter().map(|x| x.core)),
        col("batch_id", r.iter().map(|x| x.batch_id)),
        col("batch_size", r.iter().map(|x| x.batch_size)),
        col("arg_size", r.iter().map(|x| x.arg_size)),
        col("queue_depth", r.iter().map(|x| x.queue_depth)),
        col("lane_load", r.iter().map(|x| x.lane_load)),
        col("op_recent_ns", r.iter().map(|x| x.op_recent_ns)),
        col("queue_wait_ns", r.iter().map(|x| x.queue_wait_ns)),
        col("run_ns", r.iter().map(|x| x.run_ns)),
        col("end_to_end_ns", r.iter().map(|x| x.end_to_end_ns)),
        col("outcome", r.iter().map(|x| x.outcome.as_str())),
        col("attempt", r.iter().map(|x| u32::from(x.attempt))),
        col("sample_every", r.iter().map(|_| sample_every)),
        col("host", r.iter().map(|_| origin.host.as_str())),
        col("worker", r.iter().map(|_| origin.worker.get().map_or("", String::as_str))),
        Column::new(
            "cost_names".into(),
            r.iter()
                .map(|x| joined.get(x.op as usize).and_then(|j| j.as_deref()))
                .collect::<Vec<Option<&str>>>(),
        ),
        cost(0),
        cost(1),
        cost(2),
        cost(3),
    ];
    DataFrame::new(records.len(), columns)
}

pub(super) fn write_segment(
    path: &Path,
    run_id: u64,
    records: &[TokenRecord],
    op_names: &[OpFeatures],
    sample_every: u64,
    origin: &Origin,
) -> PolarsResult<()> {
    let mut frame = records_to_frame(run_id, records, op_names, sample_every, origin)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("segment");
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let file = std::fs::File::create(&tmp)?;
    ParquetWriter::new(file).with_compression(ParquetCompression::Lz4Raw).finish(&mut frame)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
