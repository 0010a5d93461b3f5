//! A batch: tokens of one operation queued together, which one queue operation runs.
//! What it holds is here; how it runs is `run.rs`'s, how it is built `enqueue.rs`'s.

use std::sync::Arc;
use std::time::Instant;

use super::record::BatchMeta;
use super::state::OpShared;
use crate::placement::LaneSet;
use crate::token::Chunk;

/// A batch's tokens (slot index, argument): a `Vec`, or for a single call an array of
/// one, which saves it the `Vec`'s allocation. Each is its own monomorphised run loop,
/// so bulk batches pay nothing for the single calls' case (an inline first item in a
/// `Vec`-like type cost bulk tokens ~20 instructions each).
pub(super) type Items<A> = Vec<(u32, A)>;

/// A batch of one call, held inline.
pub(super) type One<A> = [(u32, A); 1];

/// What a batch keeps its tokens in (see [`Items`]).
pub(super) trait ItemList<A>:
    AsRef<[(u32, A)]> + IntoIterator<Item = (u32, A)> + Send + 'static
{
}

impl<A, T> ItemList<A> for T where
    T: AsRef<[(u32, A)]> + IntoIterator<Item = (u32, A)> + Send + 'static
{
}

/// Tokens of one operation queued together; one queue operation runs them all.
pub(super) struct Batch<A, R, I = Items<A>> {
    pub(super) head: BatchHead<A, R>,
    pub(super) chunk: Arc<Chunk<R>>,
    pub(super) items: I,
}

/// What a batch holds besides its chunk and its calls (a single call's chunk carries
/// this and its call: see [`Single`]).
pub(super) struct BatchHead<A, R> {
    pub(super) op: Arc<OpShared<A, R>>,
    pub(super) meta: Option<Box<BatchMeta>>,
    /// The attempt every item of the batch is on.
    pub(super) attempt: u8,
    /// The items' estimated bytes, given back with their permits.
    pub(super) bytes: usize,
    /// The lane set it was queued for (where it goes back after a pause).
    pub(super) set: LaneSet,
    /// When it was admitted, for the latency histogram.
    pub(super) admitted_at: Instant,
    /// Its predicted runtime (ns), for the lanes' choice of what to run.
    pub(super) predicted_ns: u64,
    /// The size cell all its calls fell in (`state::NO_CELL`: none, or several), whose
    /// running average its run updates.
    pub(super) cell: u8,
}

// SAFETY: a queued batch has one holder at a time (the queue entry's owner), the only
// thread that touches it; `Job: Sync` only lets the entry be an `Arc` (see `Job`).
unsafe impl<A: Send, R: Send, I: Send> Sync for Batch<A, R, I> {}
