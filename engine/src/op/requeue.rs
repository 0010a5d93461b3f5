//! Deadlines and attempts after the first: a failed or overrun attempt goes back
//! through the one enqueue path (`enqueue.rs`) as the next attempt, so overrides apply
//! to it exactly as to a first submit.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::enqueue::Enqueue;
use super::state::OpShared;
use crate::admission::Permit;
use crate::placement::LaneSet;
use crate::token::{Chunk, Expired};

/// Starts the deadline of `attempt` of token `index`, which a lane has just started
/// running: at it, the token times out (or moves to the next attempt) even if a
/// lane is still running it, and that lane is replaced so it keeps serving.
pub(super) fn arm_deadline<A: Send + 'static, R: Send + 'static>(
    shared: &Arc<OpShared<A, R>>,
    chunk: &Arc<Chunk<R>>,
    index: u32,
    attempt: u8,
    arg: Option<A>,
) {
    let Some(timeout) = shared.options.timeout else { return };
    let op = Arc::clone(shared);
    let chunk = Arc::downgrade(chunk);
    shared.env.runtime.spawn(async move {
        tokio::time::sleep(timeout).await;
        let Some(chunk) = chunk.upgrade() else { return };
        let retry = arg.is_some() && op.retries_timeout(attempt);
        let expired = chunk.expire(index, attempt, retry);
        if let Expired::TimedOut { running: true } | Expired::Retried { running: true } = expired {
            op.env.lanes.retire_stuck(chunk.id_of(index));
        }
        if let (Expired::Retried { .. }, Some(arg)) = (expired, arg) {
            op.counters.retried.fetch_add(1, Relaxed);
            requeue(&op, chunk, index, arg, attempt + 1, Duration::ZERO);
        }
    });
}

/// Queues `attempt` of a token that already moved to it, after `delay`, through the
/// one enqueue path. Holds an admission permit meanwhile, so shutdown waits for it;
/// a shutdown ends the backoff at once, and the lane that takes the attempt then cancels
/// it (abort) or runs it (drain). A token cancelled during its backoff is resolved at
/// once; its attempt, skipped by the lane, gives the permit back when the backoff ends.
pub(super) fn requeue<A: Send + 'static, R: Send + 'static>(
    op: &Arc<OpShared<A, R>>,
    chunk: Arc<Chunk<R>>,
    index: u32,
    arg: A,
    attempt: u8,
    delay: Duration,
) {
    op.env.admission.force_acquire(Permit::new(1, op.bytes_of(&arg)), &op.queue);
    // The running attempt still holds its key's lane: the retry keeps it, even
    // across the backoff.
    let home = op.options.locality.map(|key| op.enter_home(key(&arg), LaneSet::Light));
    if delay.is_zero() {
        Enqueue::retry(op, &chunk, index, arg, attempt, home);
        return;
    }
    let op = Arc::clone(op);
    op.env.runtime.clone().spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = op.env.admission.closed() => {}
        }
        Enqueue::retry(&op, &chunk, index, arg, attempt, home);
    });
}
