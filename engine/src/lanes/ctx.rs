//! What a lane hands each batch it runs: its identity, its telemetry buffer, and the
//! deadline watch of the call it is in.
//!
//! Batches get `&LaneCtx` (shared, with interior mutability) rather than `&mut`: a call
//! running on the lane may re-enter the lane's loop while it waits for another token,
//! and no borrow is held across a user's call.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::Lanes;
use crate::admission::{OpQueue, Permit};
use crate::telemetry::{Telemetry, TokenRecord, FLUSH_ROWS};

/// The token a lane is running under a deadline, and whose permit to give back if the
/// lane is replaced meanwhile.
pub(super) struct Watch {
    pub(super) token_id: u64,
    pub(super) queue: Arc<OpQueue>,
    pub(super) permit: Permit,
}

/// A lane's own state, handed to each batch it runs.
pub(crate) struct LaneCtx {
    lanes: Arc<Lanes>,
    pub(crate) index: u16,
    /// The pinned core, or -1.
    pub(crate) core: i32,
    batches: Cell<u64>,
    records: RefCell<Vec<TokenRecord>>,
    telemetry: Option<(Arc<Telemetry>, Sender<Vec<TokenRecord>>)>,
}

impl LaneCtx {
    pub(super) fn new(lanes: Arc<Lanes>, index: usize, core: i32) -> Self {
        let telemetry =
            lanes.telemetry.as_ref().and_then(|t| t.sender().map(|sender| (Arc::clone(t), sender)));
        let records = if telemetry.is_some() { Vec::with_capacity(FLUSH_ROWS) } else { Vec::new() };
        LaneCtx {
            lanes,
            index: index as u16,
            core,
            batches: Cell::new(0),
            records: RefCell::new(records),
            telemetry,
        }
    }

    /// True once the engine is shutting down with `Abort`: queued work is cancelled.
    pub(crate) fn aborting(&self) -> bool {
        self.lanes.is_aborting()
    }

    /// Marks this lane as running `token_id` under a deadline.
    pub(crate) fn watch(&self, token_id: u64, queue: &Arc<OpQueue>, permit: Permit) {
        let lane = &self.lanes.lanes[usize::from(self.index)];
        *lane.watch.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Watch { token_id, queue: Arc::clone(queue), permit });
    }

    /// Clears the mark for `token_id`. False if the lane was replaced meanwhile (the
    /// replacement then owns the token's permit and this thread must retire). A mark
    /// for another token is the replacement's own, and is left alone.
    pub(crate) fn unwatch(&self, token_id: u64) -> bool {
        let lane = &self.lanes.lanes[usize::from(self.index)];
        let mut watch = lane.watch.lock().unwrap_or_else(|e| e.into_inner());
        if watch.as_ref().is_some_and(|w| w.token_id == token_id) {
            *watch = None;
            true
        } else {
            false
        }
    }

    /// An engine-unique batch id: the lane in the top 16 bits, a lane-local sequence below.
    pub(crate) fn next_batch_id(&self) -> u64 {
        self.batches.set(self.batches.get() + 1);
        (u64::from(self.index) << 48) | self.batches.get()
    }

    /// Log one token in `sample_every` (by token id).
    pub(crate) fn sample_every(&self) -> u64 {
        self.telemetry.as_ref().map_or(1, |(t, _)| t.sample_every)
    }

    pub(crate) fn record(&self, record: TokenRecord) {
        let full = {
            let mut records = self.records.borrow_mut();
            records.push(record);
            records.len() >= FLUSH_ROWS
        };
        if full {
            self.flush();
        }
    }

    /// Hands buffered records to the writer (never blocks).
    pub(super) fn flush(&self) {
        let Some((telemetry, sender)) = &self.telemetry else { return };
        let full = {
            let mut records = self.records.borrow_mut();
            if records.is_empty() {
                return;
            }
            std::mem::replace(&mut *records, Vec::with_capacity(FLUSH_ROWS))
        };
        telemetry.submit(sender, full);
    }
}
