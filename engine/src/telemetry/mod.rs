//! Telemetry: one record per finished token, written to Parquet segments in the
//! background.
//!
//! Lanes fill a local buffer and hand it over whole (one channel operation per 1,024
//! records) with `try_send` on a bounded channel: when the writer falls behind, the
//! buffer is dropped and counted, and the lane never waits. The writer thread turns
//! buffers into columns and writes a segment every `segment_rows` rows or
//! `segment_secs` seconds, each to a temporary name renamed into place once complete,
//! so a killed run leaves only whole Parquet files (it loses at most the open segment).
//!
//! Parquet needs the `parquet` feature (default on; it brings polars). Without it the
//! engine keeps records in memory only ([`EngineBuilder::log_in_memory`]) and a log
//! directory is a build error.
//!
//! [`EngineBuilder::log_in_memory`]: crate::EngineBuilder::log_in_memory

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::placement::{LaneSet, RouteSource, Weight};

pub(crate) mod histogram;

/// Records a lane collects before handing them to the writer.
pub(crate) const FLUSH_ROWS: usize = 1_024;
/// Buffers the channel holds before lanes start dropping.
const CHANNEL_BUFFERS: usize = 256;

/// How an attempt ended, as logged. Every attempt a lane reaches is a row: completed,
/// failed, panicked, timed out (with the time it ran), and cancelled while queued (run
/// time 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordOutcome {
    /// Returned a value.
    Completed,
    /// Returned an error.
    Failed,
    /// Panicked (caught).
    Panicked,
    /// Its deadline passed while it ran; `run_ns` is how long it ran until it returned.
    TimedOut,
    /// Cancelled before it started; `run_ns` is 0.
    Cancelled,
}

impl RecordOutcome {
    /// The logged name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordOutcome::Completed => "completed",
            RecordOutcome::Failed => "failed",
            RecordOutcome::Panicked => "panicked",
            RecordOutcome::TimedOut => "timed_out",
            RecordOutcome::Cancelled => "cancelled",
        }
    }
}

/// One finished token: what the router saw, what it decided, what happened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenRecord {
    /// The token's id.
    pub token_id: u64,
    /// The operation's engine-local id (names are written to Parquet).
    pub op: u32,
    /// The weight the token declared.
    pub declared: Weight,
    /// Who made the placement.
    pub route_source: RouteSource,
    /// The lane set the router placed it on (it may have run on a lane of the other
    /// set, which took it while idle).
    pub lane_set: LaneSet,
    /// The class the model predicted, if a model decided.
    pub predicted_class: Option<u8>,
    /// The model fingerprint (0 without a model).
    pub model_version: u32,
    /// The lane that ran it.
    pub lane: u16,
    /// That lane's core (-1 when unpinned).
    pub core: i32,
    /// Engine-unique id of its batch.
    pub batch_id: u64,
    /// Tokens in its batch.
    pub batch_size: u32,
    /// Argument-size hint.
    pub arg_size: u64,
    /// Tokens in flight engine-wide at admission.
    pub queue_depth: u64,
    /// Batches waiting in its lane set's queue at admission.
    pub lane_load: u64,
    /// Its operation's running-average runtime at admission (ns).
    pub op_recent_ns: u64,
    /// Admission → start (ns).
    pub queue_wait_ns: u64,
    /// The call's own run time on the lane (ns): from just before its function to just
    /// after it returned, less any time the call spent helping run other batches.
    pub run_ns: u64,
    /// Admission → the call's return (ns).
    pub end_to_end_ns: u64,
    /// How it ended.
    pub outcome: RecordOutcome,
    /// Attempt number (1 = first).
    pub attempt: u8,
    /// The operation's cost features for this call (0 where it declared none; see
    /// [`OperationBuilder::cost_features`](crate::OperationBuilder::cost_features)).
    pub cost: crate::features::CostInputs,
}

/// What the telemetry did over the engine's life, final after shutdown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryStats {
    /// Records handed to the writer.
    pub recorded: u64,
    /// Records dropped because the writer fell behind.
    pub dropped: u64,
    /// Rows written to Parquet.
    pub written: u64,
    /// Segment files written.
    pub files: Vec<PathBuf>,
    /// Write errors (the first few), if any.
    pub errors: Vec<String>,
    /// Rows not written because the log directory reached its size cap
    /// ([`EngineBuilder::log_max_bytes`](crate::EngineBuilder::log_max_bytes)).
    pub over_cap: u64,
}

/// Something that sees every buffer of records the writer receives (online adaptation),
/// on the writer's thread.
pub(crate) type Tap = Arc<dyn Fn(&[TokenRecord]) + Send + Sync>;

/// Where records go: Parquet segments in `dir`, memory, a tap, or several.
#[derive(Clone)]
pub(crate) struct Sink {
    pub(crate) tap: Option<Tap>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) memory: bool,
    pub(crate) segment_rows: usize,
    pub(crate) segment_secs: u64,
    /// Most bytes of Parquet the directory may hold (existing segments count).
    pub(crate) max_bytes: u64,
}

/// Where a log's rows were run: the same for every row of an engine.
#[derive(Debug, Default)]
pub struct Origin {
    /// The machine's host name.
    pub host: String,
    /// The remote worker's id when the engine serves as one
    /// ([`remote::Worker`](crate::remote)), else empty.
    pub worker: std::sync::OnceLock<String>,
}

impl Origin {
    /// This machine, not (yet) a worker.
    pub fn here() -> Self {
        Origin { host: hostname(), worker: std::sync::OnceLock::new() }
    }
}

/// This machine's host name (or `localhost`).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Tokens the writer keeps for the dashboard's "recent tokens" view.
const RECENT: usize = 32;

/// What the writer thread publishes while it runs (read by the control port).
#[derive(Default)]
pub(crate) struct Live {
    /// Rows written to Parquet so far.
    pub(crate) written: AtomicU64,
    /// The newest records received, oldest first (at most [`RECENT`]).
    pub(crate) recent: Mutex<std::collections::VecDeque<TokenRecord>>,
}

impl Live {
    fn see(&self, buffer: &[TokenRecord]) {
        let newest = &buffer[buffer.len().saturating_sub(RECENT)..];
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for record in newest {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(*record);
        }
    }
}

pub(crate) struct Telemetry {
    pub(crate) live: Arc<Live>,
    sender: Mutex<Option<Sender<Vec<TokenRecord>>>>,
    pub(crate) origin: Arc<Origin>,
    pub(crate) sample_every: u64,
    /// Whether rows are wanted fresh (a tap, online adaptation, reads them): lanes then
    /// also hand on a buffer by its age, not only when full.
    pub(crate) fresh: bool,
    recorded: AtomicU64,
    dropped: AtomicU64,
    writer: Mutex<Option<JoinHandle<WriterOutput>>>,
    finished: Mutex<Option<WriterOutput>>,
    /// Set by `finish`: the writer takes what is queued and ends once every sender is
    /// gone, or after a grace of [`STUCK_GRACE`] while a lane thread stuck in a call
    /// that has not returned still holds one.
    closing: Arc<AtomicBool>,
}

#[derive(Default)]
struct WriterOutput {
    written: u64,
    over_cap: u64,
    files: Vec<PathBuf>,
    errors: Vec<String>,
    memory: Vec<TokenRecord>,
}

impl Telemetry {
    pub(crate) fn start(
        sink: Sink,
        sample_every: u64,
        op_names: crate::features::OpNames,
    ) -> std::io::Result<Self> {
        if let Some(dir) = &sink.dir {
            std::fs::create_dir_all(dir)?;
        }
        let (sender, receiver) = crossbeam_channel::bounded(CHANNEL_BUFFERS);
        let fresh = sink.tap.is_some();
        let run_id = run_id();
        let origin = Arc::new(Origin::here());
        let writer_origin = Arc::clone(&origin);
        let live = Arc::new(Live::default());
        let writer_live = Arc::clone(&live);
        let closing = Arc::new(AtomicBool::new(false));
        let input = Input { receiver, closing: Arc::clone(&closing), until: Default::default() };
        let writer =
            std::thread::Builder::new().name("tokengate-telemetry".into()).spawn(move || {
                let (origin, live) = (writer_origin, &writer_live);
                write_loop(input, sink, run_id, sample_every.max(1), op_names, origin, live)
            })?;
        Ok(Telemetry {
            origin,
            live,
            sender: Mutex::new(Some(sender)),
            sample_every: sample_every.max(1),
            fresh,
            recorded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
            finished: Mutex::new(None),
            closing,
        })
    }

    pub(crate) fn sender(&self) -> Option<Sender<Vec<TokenRecord>>> {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Hands a full buffer to the writer, or drops and counts it. Never blocks.
    pub(crate) fn submit(&self, sender: &Sender<Vec<TokenRecord>>, buffer: Vec<TokenRecord>) {
        let rows = buffer.len() as u64;
        match sender.try_send(buffer) {
            Ok(()) => self.recorded.fetch_add(rows, Ordering::Relaxed),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(rows, Ordering::Relaxed)
            }
        };
    }

    /// Closes the channel (after the lanes have flushed and exited) and waits for the
    /// writer to write the last segment.
    pub(crate) fn finish(&self) {
        drop(self.sender.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.closing.store(true, Ordering::Release);
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let output = handle.join().unwrap_or_else(|_| WriterOutput {
                errors: vec!["the telemetry writer panicked".into()],
                ..WriterOutput::default()
            });
            *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(output);
        }
    }

    pub(crate) fn stats(&self) -> TelemetryStats {
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        let (written, over_cap, files, errors) = match finished.as_ref() {
            Some(out) => (out.written, out.over_cap, out.files.clone(), out.errors.clone()),
            None => (0, 0, Vec::new(), Vec::new()),
        };
        TelemetryStats {
            recorded: self.recorded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            written,
            files,
            errors,
            over_cap,
        }
    }

    pub(crate) fn take_records(&self) -> Vec<TokenRecord> {
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        finished.as_mut().map(|out| std::mem::take(&mut out.memory)).unwrap_or_default()
    }
}

/// Bytes of Parquet files in `dir`.
fn parquet_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// How long the writer, once the engine is closing, still waits for rows from lane
/// threads stuck in an overrun call (they flush when the call returns).
const STUCK_GRACE: Duration = Duration::from_secs(1);

/// The writer's end of the channel.
struct Input {
    receiver: Receiver<Vec<TokenRecord>>,
    closing: Arc<AtomicBool>,
    /// Set when the writer first sees `closing`: the end of the grace.
    until: std::cell::Cell<Option<Instant>>,
}

enum Next {
    Rows(Vec<TokenRecord>),
    Idle,
    Closed,
}

impl Input {
    /// The next buffer, waiting at most `wait`. Closed once every sender is gone, or,
    /// once the engine is closing, when a thread stuck in a call that has not returned
    /// still holds one after [`STUCK_GRACE`].
    fn next(&self, wait: Duration) -> Next {
        if self.closing.load(Ordering::Acquire) {
            let until = self.until.get().unwrap_or_else(|| Instant::now() + STUCK_GRACE);
            self.until.set(Some(until));
            let left = until.saturating_duration_since(Instant::now());
            return match self.receiver.recv_timeout(left) {
                Ok(rows) => Next::Rows(rows),
                Err(_) => Next::Closed,
            };
        }
        match self.receiver.recv_timeout(wait) {
            Ok(rows) => Next::Rows(rows),
            Err(RecvTimeoutError::Timeout) => Next::Idle,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }
}

fn write_loop(
    input: Input,
    sink: Sink,
    run_id: u64,
    sample_every: u64,
    op_names: crate::features::OpNames,
    origin: Arc<Origin>,
    live: &Live,
) -> WriterOutput {
    let mut out = WriterOutput::default();
    let tap = sink.tap.clone();
    let see = |buffer: &[TokenRecord]| {
        live.see(buffer);
        if let Some(tap) = &tap {
            tap(buffer);
        }
    };
    let Some(dir) = sink.dir else {
        loop {
            match input.next(Duration::from_millis(250)) {
                Next::Rows(buffer) => {
                    see(&buffer);
                    if sink.memory {
                        out.memory.extend(buffer);
                    }
                }
                Next::Idle => {}
                Next::Closed => return out,
            }
        }
    };
    let (segment_rows, segment_secs) = (sink.segment_rows, sink.segment_secs);
    // The cap counts what the directory holds already: a log directory stays bounded
    // across runs. Past it, the writer keeps what it has and writes nothing more.
    let mut dir_bytes = parquet_bytes(&dir);
    let mut open: Vec<TokenRecord> = Vec::new();
    let mut opened = Instant::now();
    let mut seq = 0u32;
    loop {
        let closed = match input.next(Duration::from_millis(250)) {
            Next::Rows(buffer) => {
                see(&buffer);
                if open.is_empty() {
                    opened = Instant::now();
                }
                open.extend(buffer);
                false
            }
            Next::Idle => false,
            Next::Closed => true,
        };
        let due = open.len() >= segment_rows
            || (!open.is_empty() && opened.elapsed() >= Duration::from_secs(segment_secs));
        if due || (closed && !open.is_empty()) {
            if sink.memory {
                out.memory.extend_from_slice(&open);
            }
            if dir_bytes >= sink.max_bytes {
                if out.over_cap == 0 {
                    tracing::warn!(
                        "log directory {} holds {} MiB, its cap: no more rows are written",
                        dir.display(),
                        dir_bytes >> 20
                    );
                }
                out.over_cap += open.len() as u64;
                open.clear();
                if closed {
                    return out;
                }
                continue;
            }
            let path = dir.join(format!("tokens-{run_id:016x}-{seq:05}.parquet"));
            seq += 1;
            let names = op_names.read().unwrap_or_else(|e| e.into_inner()).clone();
            match parquet::write_segment(&path, run_id, &open, &names, sample_every, &origin) {
                Ok(()) => {
                    out.written += open.len() as u64;
                    live.written.fetch_add(open.len() as u64, Ordering::Relaxed);
                    dir_bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
                    tracing::info!(
                        "telemetry segment {} written ({} rows)",
                        path.display(),
                        open.len()
                    );
                    out.files.push(path);
                }
                Err(e) if out.errors.len() < 8 => {
                    tracing::warn!("telemetry segment {}: {e}; its rows are lost", path.display());
                    out.errors.push(format!("{}: {e}", path.display()))
                }
                Err(_) => {}
            }
            open.clear();
        }
        if closed {
            return out;
        }
    }
}

#[cfg(feature = "parquet")]
mod parquet;
#[cfg(feature = "parquet")]
pub use parquet::{records_to_frame, COLUMNS};

/// Stands in for the Parquet writer when the `parquet` feature is off; never reached,
/// because the builder refuses a log directory then.
#[cfg(not(feature = "parquet"))]
mod parquet {
    pub(super) fn write_segment(
        _: &std::path::Path,
        _: u64,
        _: &[super::TokenRecord],
        _: &[crate::features::OpFeatures],
        _: u64,
        _: &super::Origin,
    ) -> Result<(), &'static str> {
        Err("built without the `parquet` feature")
    }
}
