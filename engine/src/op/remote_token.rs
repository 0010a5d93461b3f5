//! A token a remote worker is running: what the submitter keeps until the answer comes
//! ([`PendingToken`], the link's side of the seam), and how it resolves or falls back
//! to the local lanes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::record::BatchMeta;
use super::state::{nanos, OpShared};
use crate::admission::Permit;
use crate::error::TokenError;
use crate::placement::LaneSet;
use crate::remote::wire::WireOutcome;
use crate::remote::PendingToken;
use crate::telemetry::RecordOutcome;
use crate::token::{Chunk, Outcome};

/// A remote token of operation `A → R`.
pub(super) struct RemoteToken<A, R> {
    pub(super) op: Arc<OpShared<A, R>>,
    pub(super) chunk: Arc<Chunk<R>>,
    pub(super) index: u32,
    pub(super) attempt: u8,
    /// Kept for a fall-back to the local lanes.
    pub(super) arg: A,
    pub(super) bytes: usize,
    pub(super) admitted_at: Instant,
    /// With logging on: what was known at admission, and the token's place among the
    /// batch's, for its telemetry row.
    pub(super) log: Option<(Arc<BatchMeta>, usize)>,
    /// Runs the token on the local lanes instead, as its next attempt: the enqueue
    /// path's `retry_local`, handed in by it (this file needs nothing else of it).
    pub(super) run_locally: RunLocally<A, R>,
}

/// How a remote token falls back to the local lanes: (operation, chunk, index,
/// argument, attempt).
pub(super) type RunLocally<A, R> = fn(&Arc<OpShared<A, R>>, &Arc<Chunk<R>>, u32, A, u8);

impl<A: Send + 'static, R: Send + 'static> PendingToken for RemoteToken<A, R> {
    fn key(&self) -> (u64, u8) {
        (self.chunk.id_of(self.index), self.attempt)
    }

    fn resolve(self: Box<Self>, outcome: WireOutcome, payload: &[u8], run_ns: u64) -> bool {
        let RemoteToken { op, chunk, index, attempt, bytes, admitted_at, log, .. } = *self;
        let message = || String::from_utf8_lossy(payload).into_owned();
        let result = match outcome {
            WireOutcome::Completed => {
                let decode = op.remote.as_ref().expect("a remote token's op has a codec");
                (decode.decode_result)(payload).map_err(|e| {
                    TokenError::Failed(format!("remote result of {} undecodable: {e}", op.name))
                })
            }
            WireOutcome::Failed => Err(TokenError::Failed(message())),
            WireOutcome::Panicked => Err(TokenError::Panicked { message: message() }),
            WireOutcome::TimedOut => Err(TokenError::TimedOut),
            WireOutcome::BadArgument => Err(TokenError::Failed(format!(
                "the remote worker refused the argument of {}: {}",
                op.name,
                message()
            ))),
        };
        let row = match (&result, outcome) {
            (Ok(_), _) => RecordOutcome::Completed,
            (Err(_), WireOutcome::Panicked) => RecordOutcome::Panicked,
            (Err(_), WireOutcome::TimedOut) => RecordOutcome::TimedOut,
            (Err(_), _) => RecordOutcome::Failed,
        };
        let resolved = chunk.slot(index).finish(attempt, result);
        if resolved != Outcome::Skipped {
            let now = Instant::now();
            let latency = nanos(now.saturating_duration_since(admitted_at));
            op.control.latency().record(latency, 1);
            op.env.set_latency[LaneSet::Remote.index()].record(latency, 1);
            let token_id = chunk.id_of(index);
            let telemetry = op.env.lanes.telemetry();
            // Sampled like a lane's rows: one token id in `sample_every`.
            let telemetry = telemetry.filter(|t| token_id % t.sample_every == 0);
            if let (Some((meta, position)), Some(telemetry)) = (log, telemetry) {
                let record =
                    meta.remote_record(position, token_id, op.id, attempt, run_ns, now, row);
                if let Some(sender) = telemetry.sender() {
                    telemetry.submit(&sender, vec![record]);
                }
            }
        }
        match resolved {
            Outcome::Completed => op.resolutions.completed.fetch_add(1, Relaxed),
            Outcome::Failed => op.resolutions.failed.fetch_add(1, Relaxed),
            Outcome::Skipped => op.counters.skipped.fetch_add(1, Relaxed),
        };
        op.env.admission.release(Permit::new(1, bytes), &op.queue);
        resolved != Outcome::Skipped
    }

    fn fall_back(self: Box<Self>) {
        let RemoteToken { op, chunk, index, attempt, arg, bytes, run_locally, .. } = *self;
        if attempt == u8::MAX {
            let error = "remote attempts exhausted (255)".to_string();
            if chunk.slot(index).finish(attempt, Err(TokenError::Failed(error))) != Outcome::Skipped
            {
                op.resolutions.failed.fetch_add(1, Relaxed);
            }
            op.env.admission.release(Permit::new(1, bytes), &op.queue);
        } else if chunk.slot(index).retry(attempt) {
            // The permit stays with the token: the local batch gives it back.
            run_locally(&op, &chunk, index, arg, attempt + 1);
        } else {
            op.env.admission.release(Permit::new(1, bytes), &op.queue);
        }
    }
}
