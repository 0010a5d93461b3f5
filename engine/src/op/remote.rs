//! Remote-capable operations: the codec of their arguments and results, their tokens
//! while a worker on another machine runs them, and the worker's side of a call.
//!
//! A remote token holds its admission permit until it resolves, so remote work counts
//! against the same capacity as local work (backpressure, not an unbounded backlog).
//!
//! Without the `nats` feature there is no link: the codec is kept (registration is
//! the same in every build) but nothing crosses a wire.
#![cfg_attr(not(feature = "nats"), allow(dead_code))]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::OperationBuilder;
use super::enqueue::Enqueue;
use super::run::BatchMeta;
use super::state::{nanos, BoxFn, Context, OpShared};
use super::Operation;
use crate::admission::Permit;
use crate::error::{RegisterError, RejectReason, TokenError};
use crate::placement::LaneSet;
use crate::remote::wire::{self, WireOutcome};
use crate::telemetry::RecordOutcome;
use crate::token::{Chunk, Outcome, Start};

/// How a remote-capable operation's arguments and results cross the wire (bincode).
pub(crate) struct Codec<A, R> {
    pub(crate) encode_arg: fn(&A) -> Result<Vec<u8>, String>,
    pub(crate) decode_arg: fn(&[u8]) -> Result<A, String>,
    pub(crate) encode_result: fn(&R) -> Result<Vec<u8>, String>,
    pub(crate) decode_result: fn(&[u8]) -> Result<R, String>,
}

impl<A, R> Codec<A, R>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    fn new() -> Self {
        Codec {
            encode_arg: wire::encode::<A>,
            decode_arg: wire::decode::<A>,
            encode_result: wire::encode::<R>,
            decode_result: wire::decode::<R>,
        }
    }
}

/// Registers a remote-capable operation: made by
/// [`OperationBuilder::remote`](crate::OperationBuilder::remote). Its argument and result
/// must be serde-serializable; the registration methods mirror the local ones.
pub struct RemoteBuilder<'e, A> {
    pub(super) inner: OperationBuilder<'e, A>,
}

impl<A> std::fmt::Debug for RemoteBuilder<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBuilder").field("operation", &self.inner).finish()
    }
}

impl<A> RemoteBuilder<'_, A>
where
    A: Serialize + DeserializeOwned + Send + 'static,
{
    /// Tags the operation "remote": where the tags decide (no model, no override), its
    /// tokens go to remote workers whenever the link can take them, whatever the
    /// placement policy. A model's placement and the control port's pin still win.
    pub fn preferred(mut self) -> Self {
        self.inner.options.remote_preferred = true;
        self
    }

    /// Registers `f`; see [`OperationBuilder::register`](crate::OperationBuilder::register).
    pub fn register<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.finish(Box::new(move |a, _| Ok(f(a))))
    }

    /// Registers a fallible `f`; see
    /// [`OperationBuilder::register_fallible`](crate::OperationBuilder::register_fallible).
    pub fn register_fallible<R, E, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        E: std::fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        self.finish(Box::new(move |a, _| f(a).map_err(|e| TokenError::Failed(e.to_string()))))
    }

    /// Registers `f` with its [`Context`]; see
    /// [`OperationBuilder::register_with_context`](crate::OperationBuilder::register_with_context).
    pub fn register_with_context<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A, &Context<'_>) -> R + Send + Sync + 'static,
    {
        self.finish(Box::new(move |a, cx| Ok(f(a, cx))))
    }

    fn finish<R>(self, f: BoxFn<A, R>) -> Result<Operation<A, R>, RegisterError>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let OperationBuilder { engine, name, weight, options } = self.inner;
        // The name becomes a NATS subject token and a consumer name.
        if !name.chars().all(wire::name_char) {
            return Err(RegisterError::BadName(format!(
                "{name} (a remote-capable operation's name may hold only ASCII letters, digits, \
                 '_' and '-')"
            )));
        }
        Operation::register_full(engine, &name, weight, options, f, None, Some(Codec::new()))
    }
}

/// A token a remote worker is running: what the submitter keeps until the answer.
pub(crate) trait PendingToken: Send {
    /// The token's id (engine-wide) and the attempt that went remote.
    fn key(&self) -> (u64, u8);
    /// Resolves the token with a worker's answer. False if it had moved on (the
    /// answer is a duplicate).
    /// `run_ns`: the worker's run time of the call.
    fn resolve(self: Box<Self>, outcome: WireOutcome, payload: &[u8], run_ns: u64) -> bool;
    /// Runs the token on the local lanes instead: the remote attempt is abandoned and
    /// a late answer to it counts as a duplicate.
    fn fall_back(self: Box<Self>);
}

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
}

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
            op.engine.set_latency[LaneSet::Remote.index()].record(latency, 1);
            let token_id = chunk.id_of(index);
            let telemetry = op.engine.lanes.telemetry();
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
        op.engine.admission.release(Permit::new(1, bytes), &op.queue);
        resolved != Outcome::Skipped
    }

    fn fall_back(self: Box<Self>) {
        let RemoteToken { op, chunk, index, attempt, arg, bytes, .. } = *self;
        if attempt == u8::MAX {
            let error = "remote attempts exhausted (255)".to_string();
            if chunk.slot(index).finish(attempt, Err(TokenError::Failed(error))) != Outcome::Skipped
            {
                op.resolutions.failed.fetch_add(1, Relaxed);
            }
            op.engine.admission.release(Permit::new(1, bytes), &op.queue);
        } else if chunk.slot(index).retry(attempt) {
            // The permit stays with the token: the local batch gives it back.
            Enqueue::retry_local(&op, &chunk, index, arg, attempt + 1);
        } else {
            op.engine.admission.release(Permit::new(1, bytes), &op.queue);
        }
    }
}

/// The answer a worker sends for one call.
pub(crate) struct Reply {
    pub(crate) outcome: WireOutcome,
    pub(crate) payload: Vec<u8>,
    pub(crate) run_ns: u64,
    /// The operation's retry policy wants another attempt: the worker naks the
    /// message with this delay instead of answering.
    pub(crate) retry_after: Option<Duration>,
}

/// Why a worker could not take a call.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The argument did not decode: a permanent failure, answered as such.
    BadArgument(String),
    /// The worker's engine has no room now, or is stopping: another worker (or this
    /// one, later) should take it.
    Rejected(RejectReason),
}

pub(crate) type ReplyFuture = Pin<Box<dyn Future<Output = Option<Reply>> + Send>>;

/// A worker's side of a remote-capable operation.
pub(crate) trait RemoteServe: Send + Sync {
    fn name(&self) -> &str;
    /// Decodes `arg` and submits it to the local lanes as attempt `delivery` (the
    /// message's delivery count), which is not retried here. The future gives the
    /// answer, or `None` if the local token was cancelled (the worker is shutting down:
    /// the call should go to another worker).
    fn call(&self, arg: &[u8], delivery: u64) -> Result<ReplyFuture, CallError>;
}

impl<A: Send + 'static, R: Send + 'static> RemoteServe for Operation<A, R> {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn call(&self, arg: &[u8], delivery: u64) -> Result<ReplyFuture, CallError> {
        let codec = self.inner.remote.as_ref().expect("served operations have a codec");
        let arg = (codec.decode_arg)(arg).map_err(CallError::BadArgument)?;
        if self.inner.engine.admission.is_closed() {
            return Err(CallError::Rejected(RejectReason::ShuttingDown));
        }
        let encode = codec.encode_result;
        let op = self.clone();
        Ok(Box::pin(async move {
            // Waits for room like any async caller (the worker reports progress
            // meanwhile); a stopping engine rejects it, and the call goes back.
            let started = Instant::now();
            let delivery = delivery.clamp(1, u64::from(u8::MAX)) as u8;
            let permit = Permit::new(1, op.inner.bytes_of(&arg));
            let admitted = op.inner.engine.admission.acquire(permit, &op.inner.queue).await;
            let result = op.admit_one_at(admitted, arg, Start::Served { delivery }).await;
            let run_ns = nanos(started.elapsed());
            let retry_after =
                result.as_ref().err().and_then(|e| op.inner.redelivery_delay(delivery, e));
            let (outcome, payload) = match result {
                Ok(value) => match encode(&value) {
                    Ok(bytes) => (WireOutcome::Completed, bytes),
                    Err(e) => (WireOutcome::Failed, format!("result not encodable: {e}").into()),
                },
                Err(TokenError::Failed(message)) => (WireOutcome::Failed, message.into_bytes()),
                Err(TokenError::Panicked { message }) => {
                    (WireOutcome::Panicked, message.into_bytes())
                }
                Err(TokenError::TimedOut) => (WireOutcome::TimedOut, Vec::new()),
                Err(TokenError::Cancelled { .. } | TokenError::Rejected { .. }) => return None,
            };
            Some(Reply { outcome, payload, run_ns, retry_after })
        }))
    }
}
