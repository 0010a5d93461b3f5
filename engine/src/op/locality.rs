//! Locality: calls with equal keys run on one lane while any of them is in flight.
//!
//! A key's home is picked in turn among the lanes of its routed set and kept while
//! calls with that key are queued or running; such calls are queued on that lane alone
//! (`Lanes::push_to`), one per batch.

use std::collections::HashMap;

use super::state::OpShared;
use crate::placement::LaneSet;

/// Key → (lane, calls in flight), and the next lane to hand out.
#[derive(Default)]
pub(crate) struct Homes {
    by_key: HashMap<u64, (usize, usize)>,
    next: usize,
}

impl<A, R> OpShared<A, R> {
    /// The lane that runs calls with `key` (the one already running some, or the next
    /// lane of `set` in turn), counting one more call in flight there.
    pub(super) fn enter_home(&self, key: u64, set: LaneSet) -> usize {
        let lanes = &self.engine.lanes;
        let mut homes = self.homes.lock().unwrap_or_else(|e| e.into_inner());
        let Homes { by_key, next } = &mut *homes;
        let home = by_key.entry(key).or_insert_with(|| {
            let choices: Vec<usize> = lanes.lanes_of(set).collect();
            *next += 1;
            (choices[(*next - 1) % choices.len()], 0)
        });
        home.1 += 1;
        home.0
    }

    /// One call with `key` left its lane.
    fn leave_home(&self, key: u64) {
        let mut homes = self.homes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(home) = homes.by_key.get_mut(&key) {
            home.1 -= 1;
            if home.1 == 0 {
                homes.by_key.remove(&key);
            }
        }
    }
}

/// Counts a call out of its key's lane when its batch item is done, on every path out
/// of the loop.
pub(super) struct HomeGuard<'a, A, R> {
    op: &'a OpShared<A, R>,
    key: Option<u64>,
}

impl<'a, A, R> HomeGuard<'a, A, R> {
    pub(super) fn new(op: &'a OpShared<A, R>, arg: &A) -> Self {
        HomeGuard { op, key: op.options.locality.map(|key| key(arg)) }
    }
}

impl<A, R> Drop for HomeGuard<'_, A, R> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.op.leave_home(key);
        }
    }
}
