//! The seam between the engine and a remote link: what the enqueue path hands the
//! link ([`PendingToken`]) and what a worker process asks of a remote-capable
//! operation ([`RemoteServe`]). Both are implemented by `op/remote.rs`; the link and
//! the worker know only these traits, the wire format and the errors.
#![cfg_attr(not(feature = "nats"), allow(dead_code))]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::wire::WireOutcome;
use crate::error::RejectReason;

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
