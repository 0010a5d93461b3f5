//! Remote lanes: tokens of remote-capable operations run on workers on other machines,
//! over NATS JetStream.
//!
//! # How it works
//! - **Submitter.** An engine built with `EngineBuilder::nats` (feature `nats`) keeps a
//!   link to a NATS server. A token placed on [`LaneSet::Remote`] is claimed (like a
//!   lane claims it), its argument encoded, and published to the work-queue
//!   stream `TOKENGATE_CALLS` on subject `tokengate.tokens.<op>` with the message id
//!   `<submitter>.<token>.<attempt>` (a re-publish within two minutes is dropped by the
//!   server). The token waits in the link's pending table, holding its admission permit.
//! - **Worker.** `Worker` (feature `nats`; the `tokengate worker` command) binds one
//!   durable pull consumer per remote-capable operation (`tg-<op>`, shared by every
//!   worker: each call goes to one of them), runs each call on its own pinned lanes
//!   through the same operation, publishes the answer to
//!   `tokengate.results.<submitter>` (stream `TOKENGATE_ANSWERS`), and only then acks
//!   the call. A long call sends "in progress" every third of the ack wait so it is not
//!   redelivered; a call the worker has no room for (or is stopping) is nak'ed with a
//!   delay, for another worker; a call that failed, panicked or timed out is answered
//!   as such and terminated; a message that does not decode is terminated and counted.
//! - **Exactly once to the caller.** Delivery is at-least-once (a worker killed or hung
//!   before its ack has its calls redelivered to another worker after the ack wait,
//!   2 s by default, while a live worker reports progress on every call it holds), so
//!   the submitter resolves a token from the first answer to its pending attempt and
//!   counts the rest as duplicates. If the server is unreachable for longer than a
//!   grace period, if no worker serving the token's operation has sent a heartbeat for
//!   the worker grace (3 s), or if an answer is later than the result timeout, the
//!   pending tokens move to the local lanes (a late answer is then a duplicate, and a
//!   call left in the work queue that a returning worker runs is answered as one).
//! - **Set-up.** Streams are got or created, and a creator that loses a race with
//!   another (workers and submitters started together on a fresh server) gets the
//!   winner's stream; a stream that exists with other subjects or retention is an error
//!   naming the setting. Consumers are got or created, and re-bound after a failure.
//!
//! Placement ([`RemotePlacement`]): `auto` sends a token remote only when a worker
//! serving its operation has sent a heartbeat within the worker grace and the local
//! lanes of the token's set are backlogged (at least two queued batches per lane);
//! `remote` sends every token of a remote-capable operation while a live worker serves
//! it; `local` none. A control-port `pin <op> remote` (or a router placing on
//! [`LaneSet::Remote`]) sends the operation's tokens remote while the link is up and a
//! live worker serves it; otherwise they run on the local set the router chose.
//!
//! [`LaneSet::Remote`]: crate::LaneSet::Remote

use std::str::FromStr;

pub(crate) mod wire;

#[cfg(feature = "nats")]
pub(crate) mod link;
mod seam;

#[cfg(feature = "nats")]
pub(crate) use link::Link;
#[cfg(feature = "nats")]
pub use link::RemoteConfig;
// The worker process runs an engine, so it sits above it (`remote_worker.rs`); its
// public names live here, beside the link's.
#[cfg(feature = "nats")]
pub use crate::remote_worker::{Worker, WorkerConfig, WorkerError, WorkerStats};
pub(crate) use seam::{CallError, PendingToken, RemoteServe, Reply, ReplyFuture};

/// When tokens of remote-capable operations go to remote workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemotePlacement {
    /// Remote only when a worker is connected and the local lanes are backlogged.
    #[default]
    Auto,
    /// Never (the control port's `pin <op> remote` still can).
    Local,
    /// Every token of a remote-capable operation.
    Remote,
}

impl FromStr for RemotePlacement {
    type Err = crate::placement::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(RemotePlacement::Auto),
            "local" => Ok(RemotePlacement::Local),
            "remote" => Ok(RemotePlacement::Remote),
            other => {
                Err(crate::placement::ParseError::new("placement", other, "auto, local or remote"))
            }
        }
    }
}

/// What a submitter's link to remote workers has done.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RemoteStats {
    /// Tokens published to remote workers (each attempt counts).
    pub remote_tokens: u64,
    /// Tokens resolved by a remote answer.
    pub resolved: u64,
    /// Answers from a call the stream had delivered more than once.
    pub redelivered: u64,
    /// Answers that arrived for a token already resolved (or moved to the local lanes):
    /// dropped.
    pub duplicate_results: u64,
    /// Tokens moved back to the local lanes (server unreachable, publish failed, or no
    /// answer within the result timeout).
    pub fell_back: u64,
    /// Answers that did not decode (dropped).
    pub bad_answers: u64,
    /// Tokens waiting for an answer now.
    pub pending: u64,
    /// Workers heard from within the link's `worker_grace` (default 3 s).
    pub workers: u64,
    /// Whether the link is up (connected, and not shut off after an outage).
    pub connected: bool,
    /// Median overhead of a remote token (µs): answer received − call published − the
    /// worker's submit → resolve time.
    pub overhead_p50_us: f64,
}

/// Runs `future` to completion on `runtime`, from a thread of its own: the caller may
/// itself be inside an async runtime, where blocking on another one panics.
#[cfg(feature = "nats")]
pub(crate) fn block_on_aside<F>(runtime: &tokio::runtime::Handle, future: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| scope.spawn(|| runtime.block_on(future)).join())
        .expect("the thread blocking on the engine's runtime panicked")
}

/// What the enqueue path needs of the link.
pub(crate) trait RemotePort: Send + Sync {
    fn placement(&self) -> RemotePlacement;
    /// Connected (and not given up on after an outage).
    fn available(&self) -> bool;
    /// Workers heard from recently (serving `op`, when given).
    fn workers(&self, op: Option<&str>) -> usize;
    /// Publishes the calls of operation `op` (`payload`: the encoded argument).
    fn send(&self, op: &str, calls: Vec<(Vec<u8>, Box<dyn PendingToken>)>);
    fn stats(&self) -> RemoteStats;
    /// An aborting engine: every waiting remote token moves to the (aborting) local
    /// lanes, which cancel it, and nothing goes remote any more.
    fn close(&self);
}
