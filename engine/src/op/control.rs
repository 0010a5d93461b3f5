//! Each operation's control state: its manual overrides, its running count and its
//! latency histogram, in one typed place (the control port sets it; the operation's
//! enqueue path and run loop read it).
//!
//! The lanes read it once per batch: one load of [`OpControlState::flags`] says whether
//! any override touches the operation at all, so a run that no command names pays one
//! load per batch whatever commands came before. Overrides are typed at the API
//! (`Option<LaneSet>`, `Option<u32>`); their atomic encoding is private to this file.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Mutex;

use crate::lanes::{BoxJob, Lanes};
use crate::placement::LaneSet;
use crate::telemetry::histogram::LatencyHistogram;

/// The overrides in force on one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Overrides {
    /// Admitted work of the operation waits instead of running.
    pub paused: bool,
    /// Every token goes to this lane set.
    pub pin: Option<LaneSet>,
    /// Every token is batched this many at a time.
    pub batch: Option<u32>,
    /// At most this many tokens of the operation run at once.
    pub throttle: Option<u32>,
}

/// Counters of one operation, read with [`Operation::stats`](crate::Operation::stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OpStats {
    /// Tokens admitted.
    pub submitted: u64,
    /// Tokens refused at admission (overloaded, shutting down).
    pub rejected: u64,
    /// Tokens that returned a value.
    pub completed: u64,
    /// Tokens that panicked or returned an error.
    pub failed: u64,
    /// Tokens cancelled before they started.
    pub cancelled: u64,
    /// Tokens whose deadline passed.
    pub timed_out: u64,
    /// Attempts run again after a failure or a deadline.
    pub retried: u64,
    /// Queued attempts a lane skipped because they were already resolved or moved on.
    pub skipped: u64,
    /// The running-average runtime per token (ns; 0 before the first batch).
    pub recent_ns: u64,
    /// Tokens a `pin remote` override could not send remote (no link, or no live
    /// worker serving the operation): they ran on the local lanes.
    pub pin_unmet: u64,
}

impl OpStats {
    /// Tokens that reached a terminal state after admission.
    pub fn finished(&self) -> u64 {
        self.completed + self.failed + self.cancelled + self.timed_out
    }
}

/// What the controller can do to an operation without knowing its types.
pub(crate) trait OpControl: Send + Sync {
    fn name(&self) -> &str;
    fn weight(&self) -> crate::placement::Weight;
    fn stats(&self) -> OpStats;
    fn control(&self) -> &OpControlState;
}

/// Bits of [`OpControlState::flags`].
pub(crate) const PAUSED: u32 = 1;
pub(crate) const THROTTLED: u32 = 1 << 1;
pub(crate) const CANCELLING: u32 = 1 << 2;

/// One operation's overrides and activity.
pub(crate) struct OpControlState {
    /// Which overrides touch running batches (`PAUSED`, `THROTTLED`, `CANCELLING`).
    flags: AtomicU32,
    /// 0: none; else `LaneSet::index() + 1`.
    pin: AtomicU8,
    /// 0: none; else the batch size.
    batch: AtomicU32,
    /// 0: no limit; else the most batches running at once (throttled tokens are
    /// batched one at a time, so this caps running tokens).
    throttle: AtomicU32,
    /// Batches of the operation running now.
    running: AtomicU32,
    /// Tokens with a smaller id that have not started are cancelled (0: none).
    cancel_before: AtomicU64,
    /// Batches set aside while paused, with the lane set they were queued for.
    parked: Mutex<Vec<(LaneSet, BoxJob)>>,
    /// Batches waiting for a throttle slot, oldest first.
    throttled: Mutex<VecDeque<(LaneSet, BoxJob)>>,
    latency: LatencyHistogram,
}

impl OpControlState {
    /// A state with no override (paused if the whole engine is paused).
    pub(crate) fn new(paused: bool) -> Self {
        OpControlState {
            flags: AtomicU32::new(if paused { PAUSED } else { 0 }),
            pin: AtomicU8::new(0),
            batch: AtomicU32::new(0),
            throttle: AtomicU32::new(0),
            running: AtomicU32::new(0),
            cancel_before: AtomicU64::new(0),
            parked: Mutex::new(Vec::new()),
            throttled: Mutex::new(VecDeque::new()),
            latency: LatencyHistogram::default(),
        }
    }

    /// The overrides that touch running batches: the lanes' one load per batch.
    #[inline]
    pub(crate) fn flags(&self) -> u32 {
        self.flags.load(Relaxed)
    }

    pub(crate) fn overrides(&self) -> Overrides {
        Overrides {
            paused: self.flags.load(Relaxed) & PAUSED != 0,
            pin: self.pin(),
            batch: Some(self.batch.load(Relaxed)).filter(|&b| b > 0),
            throttle: Some(self.throttle.load(Relaxed)).filter(|&t| t > 0),
        }
    }

    pub(crate) fn pin(&self) -> Option<LaneSet> {
        match self.pin.load(Relaxed) {
            0 => None,
            1 => Some(LaneSet::Light),
            2 => Some(LaneSet::Heavy),
            _ => Some(LaneSet::Remote),
        }
    }

    pub(crate) fn set_pin(&self, pin: Option<LaneSet>) {
        self.pin.store(pin.map_or(0, |set| set.index() as u8 + 1), Relaxed);
    }

    pub(crate) fn set_batch(&self, batch: Option<u32>) {
        self.batch.store(batch.unwrap_or(0), Relaxed);
    }

    /// Pauses or resumes; on resume, the batches set aside go back to their queues.
    pub(crate) fn set_paused(&self, paused: bool, lanes: &Lanes) {
        let parked = {
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            if paused {
                self.flags.fetch_or(PAUSED, SeqCst);
                return;
            }
            self.flags.fetch_and(!PAUSED, SeqCst);
            std::mem::take(&mut *parked)
        };
        for (set, job) in parked {
            lanes.push(set, job);
        }
    }

    /// Sets the running limit; whatever waited for a slot is queued again under it.
    pub(crate) fn set_throttle(&self, limit: Option<u32>, lanes: &Lanes) {
        let limit = limit.unwrap_or(0);
        self.throttle.store(limit, SeqCst);
        if limit > 0 {
            self.flags.fetch_or(THROTTLED, SeqCst);
        } else {
            self.flags.fetch_and(!THROTTLED, SeqCst);
        }
        let waiting =
            std::mem::take(&mut *self.throttled.lock().unwrap_or_else(|e| e.into_inner()));
        for (set, job) in waiting {
            lanes.push(set, job);
        }
    }

    /// Marks every token with an id below `before` for cancellation when a lane
    /// reaches it, and hands back the batches set aside (paused or throttled) to be
    /// cancelled at once.
    pub(crate) fn cancel_before(&self, before: u64) -> Vec<BoxJob> {
        self.cancel_before.fetch_max(before, SeqCst);
        self.flags.fetch_or(CANCELLING, SeqCst);
        let mut held: Vec<BoxJob> =
            std::mem::take(&mut *self.parked.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .map(|(_, job)| job)
                .collect();
        held.extend(
            std::mem::take(&mut *self.throttled.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .map(|(_, job)| job),
        );
        held
    }

    /// Tokens with ids below this were cancelled by command (0: none).
    #[inline]
    pub(crate) fn cancelled_before(&self) -> u64 {
        self.cancel_before.load(Relaxed)
    }

    /// A lane picked up a batch of this operation. Returns the job if it may run now
    /// (it then holds a running slot, given back with [`OpControlState::finish_batch`]);
    /// otherwise the job is set aside, keeping its permits, until a resume or a free
    /// slot. `engine_paused`/`aborting` come from the engine (an abort runs everything
    /// so it can be cancelled).
    pub(crate) fn start_batch(&self, set: LaneSet, job: BoxJob, aborting: bool) -> Option<BoxJob> {
        let flags = self.flags();
        if flags & (PAUSED | THROTTLED) == 0 || aborting {
            self.running.fetch_add(1, SeqCst);
            return Some(job);
        }
        if flags & PAUSED != 0 {
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            // Checked again under the lock a resume takes, so nothing is parked after it.
            if self.flags.load(SeqCst) & PAUSED != 0 {
                parked.push((set, job));
                return None;
            }
        }
        let limit = self.throttle.load(SeqCst);
        if limit == 0 {
            self.running.fetch_add(1, SeqCst);
            return Some(job);
        }
        let take_slot =
            || self.running.fetch_update(SeqCst, SeqCst, |r| (r < limit).then_some(r + 1)).is_ok();
        if take_slot() {
            return Some(job);
        }
        let mut waiting = self.throttled.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock a finishing batch (or a new limit) takes to hand
        // slots on: a limit lifted meanwhile lets the batch run.
        if self.throttle.load(SeqCst) == 0 {
            self.running.fetch_add(1, SeqCst);
            return Some(job);
        }
        if take_slot() {
            return Some(job);
        }
        waiting.push_back((set, job));
        None
    }

    /// A batch that held a running slot is done: hand the slot to the oldest batch
    /// waiting at the throttle.
    pub(crate) fn finish_batch(&self, lanes: &Lanes) {
        self.running.fetch_sub(1, SeqCst);
        if self.throttle.load(SeqCst) > 0 {
            let next = self.throttled.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            if let Some((set, job)) = next {
                lanes.push(set, job);
            }
        }
    }

    /// Batches running now (a lane runs a batch's tokens one after another, so this is
    /// also the tokens running now).
    pub(crate) fn running(&self) -> u32 {
        self.running.load(Relaxed)
    }

    /// Tokens in the batches set aside now by a pause or a throttle (two short locks,
    /// one after the other: for snapshots, not the lanes).
    pub(crate) fn held(&self) -> u64 {
        let tokens = |jobs: &[(LaneSet, BoxJob)]| jobs.iter().map(|(_, job)| job.len()).sum();
        let parked: usize = tokens(&self.parked.lock().unwrap_or_else(|e| e.into_inner()));
        let throttled: usize =
            tokens(self.throttled.lock().unwrap_or_else(|e| e.into_inner()).make_contiguous());
        (parked + throttled) as u64
    }

    pub(crate) fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_and_batch_are_typed_round_trips() {
        let state = OpControlState::new(false);
        assert_eq!(state.overrides(), Overrides::default());
        for pin in [Some(LaneSet::Light), Some(LaneSet::Heavy), None] {
            state.set_pin(pin);
            assert_eq!(state.pin(), pin);
        }
        state.set_batch(Some(7));
        assert_eq!(state.overrides().batch, Some(7));
        state.set_batch(None);
        assert_eq!(state.overrides().batch, None);
        assert_eq!(state.flags(), 0, "pin and batch never touch the per-batch flags");
    }

    #[test]
    fn new_state_inherits_an_engine_wide_pause() {
        assert!(OpControlState::new(true).overrides().paused);
        assert_eq!(OpControlState::new(true).flags(), PAUSED);
    }

    #[test]
    fn cancel_before_only_grows_and_sets_its_flag() {
        let state = OpControlState::new(false);
        assert!(state.cancel_before(10).is_empty());
        assert!(state.cancel_before(5).is_empty());
        assert_eq!(state.cancelled_before(), 10);
        assert_eq!(state.flags() & CANCELLING, CANCELLING);
    }
}
