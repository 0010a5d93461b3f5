//! Parquet telemetry → rows the model can learn from.
//!
//! Files are read eagerly, one at a time, with polars' `ParquetReader` (the lazy
//! engine would double the build for no gain here: the trainer reads four columns
//! and keeps them in plain vectors).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use tokengate::features::{
    CostInputs, MAX_COST_FEATURES, NO_COST, OLDEST_TELEMETRY_SCHEMA, TELEMETRY_SCHEMA_VERSION,
};

use crate::TrainError;

/// One usable record: a completed token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Index into [`Data::ops`].
    pub op: u32,
    /// The argument-size hint.
    pub arg_size: u64,
    /// The operation's cost features (0 where it declared none; their names are
    /// [`Data::op_features`]).
    pub cost: CostInputs,
    /// Measured runtime (ns).
    pub run_ns: u64,
}

/// Rows from one or more files, with the operation names they use.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// Operation names, in first-seen order.
    pub ops: Vec<String>,
    /// Per operation of `ops`: the names of its cost features (empty without any).
    pub op_features: Vec<Vec<String>>,
    /// The rows.
    pub rows: Vec<Row>,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Rows skipped (failed tokens).
    pub skipped: usize,
    /// Rows of remote runs, logged by their submitter: kept out of `rows` (their run
    /// time includes the worker's queue); what they add is in `remote_ns`.
    pub remote_rows: usize,
    /// Per batch queued onto an empty queue: admission → start of its first token (ns),
    /// the dispatch overhead a batch pays.
    pub dispatch_ns: Vec<u64>,
    /// Per completed call that ran on a remote worker, logged by its submitter:
    /// end-to-end minus the worker's run time (ns), what running remotely added.
    pub remote_ns: Vec<u64>,
}

/// Expands directories (their `*.parquet` files), files and glob patterns, sorted and
/// without duplicates.
pub fn collect_files(inputs: &[String]) -> Result<Vec<PathBuf>, TrainError> {
    let mut files = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if path.is_dir() {
            let pattern = path.join("*.parquet").to_string_lossy().into_owned();
            files.extend(glob_files(&pattern)?);
        } else if path.is_file() {
            files.push(path.to_path_buf());
        } else {
            files.extend(glob_files(input)?);
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(TrainError::NoFiles(inputs.to_vec()));
    }
    Ok(files)
}

fn glob_files(pattern: &str) -> Result<Vec<PathBuf>, TrainError> {
    let paths = glob::glob(pattern).map_err(|e| TrainError::BadPattern {
        pattern: pattern.to_string(),
        message: e.to_string(),
    })?;
    Ok(paths.filter_map(Result::ok).filter(|p| p.is_file()).collect())
}

/// Reads every file, checking its schema; `progress(i)` after file `i`.
pub fn load(files: &[PathBuf], mut progress: impl FnMut(usize)) -> Result<Data, TrainError> {
    let mut data = Data::default();
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for (i, path) in files.iter().enumerate() {
        read_file(path, &mut data, &mut vocab)?;
        data.files.push(path.clone());
        progress(i + 1);
    }
    Ok(data)
}

fn read_file(
    path: &Path,
    data: &mut Data,
    vocab: &mut HashMap<String, u32>,
) -> Result<(), TrainError> {
    let unreadable = |message: String| TrainError::Unreadable { path: path.to_path_buf(), message };
    let schema = |message: String| TrainError::Schema { path: path.to_path_buf(), message };
    let file = File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let frame = ParquetReader::new(file).finish().map_err(|e| unreadable(e.to_string()))?;
    let column =
        |name: &str| frame.column(name).map_err(|_| schema(format!("missing column {name:?}")));
    let versions = column("schema_version")?
        .u32()
        .map_err(|_| schema("column \"schema_version\" is not u32".into()))?;
    let readable = OLDEST_TELEMETRY_SCHEMA..=TELEMETRY_SCHEMA_VERSION;
    if let Some(bad) = versions.iter().flatten().find(|v| !readable.contains(v)) {
        return Err(schema(format!(
            "telemetry schema v{bad}, this trainer reads v{OLDEST_TELEMETRY_SCHEMA} to \
             v{TELEMETRY_SCHEMA_VERSION}"
        )));
    }
    let typed = |name: &str, what: &str| schema(format!("column {name:?} is not {what}"));
    let op = column("op")?.str().map_err(|_| typed("op", "a string"))?;
    let arg_size = column("arg_size")?.u64().map_err(|_| typed("arg_size", "u64"))?;
    let run_ns = column("run_ns")?.u64().map_err(|_| typed("run_ns", "u64"))?;
    let outcome = column("outcome")?.str().map_err(|_| typed("outcome", "a string"))?;
    // A submitter's row of a remote run carries the worker's whole serving time (its
    // queue too), not a lane's run time: it feeds the remote overhead, not the tree.
    let set = frame.column("lane_set").ok().and_then(|c| c.str().ok().cloned());
    let remote = |i: usize| is_remote(set.as_ref(), i);
    // Cost features (telemetry v3; older files have none).
    let cost_names = frame.column("cost_names").ok().and_then(|c| c.str().ok().cloned());
    let cost_columns: Vec<Option<Float64Chunked>> = (0..MAX_COST_FEATURES)
        .map(|k| frame.column(&format!("cost_{k}")).ok().and_then(|c| c.f64().ok().cloned()))
        .collect();
    for (i, (((op, arg_size), run_ns), outcome)) in
        op.iter().zip(arg_size.iter()).zip(run_ns.iter()).zip(outcome.iter()).enumerate()
    {
        if remote(i) {
            data.remote_rows += 1;
            continue;
        }
        // A call that overran its deadline ran at least that long: it teaches the model
        // where such calls belong (off the light lanes). Failures and cancels do not.
        let (Some(op), Some(arg_size), Some(run_ns), Some("completed" | "timed_out")) =
            (op, arg_size, run_ns, outcome)
        else {
            data.skipped += 1;
            continue;
        };
        let names: Vec<String> = cost_names
            .as_ref()
            .and_then(|c| c.get(i))
            .map(|joined| joined.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let next = vocab.len() as u32;
        let index = *vocab.entry(op.to_string()).or_insert_with(|| {
            data.ops.push(op.to_string());
            data.op_features.push(names.clone());
            next
        });
        if data.op_features[index as usize] != names {
            return Err(schema(format!(
                "operation {op:?} was logged with cost features {:?} and also {names:?}: \
                 fit the logs of each apart",
                data.op_features[index as usize]
            )));
        }
        let mut cost = NO_COST;
        for (k, value) in cost.iter_mut().enumerate().take(names.len()) {
            *value = cost_columns[k].as_ref().and_then(|c| c.get(i)).unwrap_or(0.0);
        }
        data.rows.push(Row { op: index, arg_size, cost, run_ns });
    }
    read_dispatch(&frame, set.as_ref(), data);
    read_remote(&frame, set.as_ref(), data);
    Ok(())
}

/// Whether row `i` is a submitter's row of a remote run (`lane_set` remote; files
/// without the column have none).
fn is_remote(set: Option<&StringChunked>, i: usize) -> bool {
    set.is_some_and(|set| set.get(i) == Some("remote"))
}

/// What a remote run added to each completed call a submitter logged (`lane_set`
/// remote: `queue_wait_ns` is end-to-end minus the worker's run time). Files without
/// the columns add nothing.
fn read_remote(frame: &DataFrame, set: Option<&StringChunked>, data: &mut Data) {
    let outcome = frame.column("outcome").ok().and_then(|c| c.str().ok().cloned());
    let wait = frame.column("queue_wait_ns").ok().and_then(|c| c.u64().ok().cloned());
    let (Some(outcome), Some(wait)) = (outcome, wait) else {
        return;
    };
    for (i, (outcome, wait)) in outcome.iter().zip(wait.iter()).enumerate() {
        if let (true, Some("completed"), Some(wait)) = (is_remote(set, i), outcome, wait) {
            data.remote_ns.push(wait);
        }
    }
}

/// The dispatch overhead of batches queued onto an empty queue (`lane_load` 0): the
/// smallest `queue_wait_ns` of each such batch, which is its first token's. Files
/// without the columns add nothing.
fn read_dispatch(frame: &DataFrame, set: Option<&StringChunked>, data: &mut Data) {
    let u64s = |name: &str| frame.column(name).ok().and_then(|c| c.u64().ok().cloned());
    let (Some(batch), Some(load), Some(wait)) =
        (u64s("batch_id"), u64s("lane_load"), u64s("queue_wait_ns"))
    else {
        return;
    };
    let mut first: HashMap<u64, u64> = HashMap::new();
    for (i, ((batch, load), wait)) in batch.iter().zip(load.iter()).zip(wait.iter()).enumerate() {
        // Rows of remote runs (their submitter's) ran in no local batch.
        if is_remote(set, i) {
            continue;
        }
        if let (Some(batch), Some(0), Some(wait)) = (batch, load, wait) {
            let entry = first.entry(batch).or_insert(wait);
            *entry = (*entry).min(wait);
        }
    }
    data.dispatch_ns.extend(first.into_values());
}
